//! OTLP's JSON encoding of `ExportTraceServiceRequest`, read into the prost
//! types by hand.
//!
//! The encoding is protobuf's JSON mapping with OTLP's changes: trace and
//! span ids are hex strings (case-insensitive) instead of base64, and enums
//! are integers. As the protobuf mapping allows, this reader also accepts
//! the original snake_case field names, enum names such as
//! `"SPAN_KIND_SERVER"`, and 64-bit integers as JSON numbers or decimal
//! strings. Unknown fields are ignored. A span with an invalid field is
//! returned as a rejection instead of failing the request, which a serde
//! derive could not do. A malformed envelope (resource, scope or the lists
//! that contain spans) fails the whole request.

use base64::Engine;
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtlpValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Map, Value};

use super::{ExportTraceServiceRequest, Rejection};

type Object = Map<String, Value>;

pub(super) fn decode(bytes: &[u8]) -> Result<(ExportTraceServiceRequest, Vec<Rejection>), String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|err| format!("The body is not valid UTF-8 (at byte {}).", err.valid_up_to()))?;
    let value: Value = serde_json::from_str(text).map_err(|err| format!("The body is not valid JSON: {err}."))?;
    let root = object(&value, "the body").map_err(|reason| format!("Invalid request: {reason}."))?;

    let mut request = ExportTraceServiceRequest::default();
    let mut rejections = Vec::new();
    let resource_spans = list(root, "resourceSpans", "resource_spans").map_err(|reason| format!("Invalid request: {reason}."))?;
    for (index, item) in resource_spans.iter().enumerate() {
        let path = format!("resourceSpans[{index}]");
        let decoded = resource_spans_of(item, &path, &mut rejections).map_err(|reason| format!("Invalid {path}: {reason}."))?;
        request.resource_spans.push(decoded);
    }
    Ok((request, rejections))
}

fn resource_spans_of(value: &Value, path: &str, rejections: &mut Vec<Rejection>) -> Result<ResourceSpans, String> {
    let fields = object(value, "the entry")?;
    let resource = match get(fields, "resource", "resource") {
        None => None,
        Some(resource) => {
            let resource = object(resource, "resource")?;
            Some(Resource {
                attributes: key_values(resource, "attributes", "attributes")
                    .map_err(|reason| format!("resource.{reason}"))?,
                dropped_attributes_count: uint32(resource, "droppedAttributesCount", "dropped_attributes_count")?,
                entity_refs: Vec::new(),
            })
        }
    };
    let mut scope_spans = Vec::new();
    for (index, item) in list(fields, "scopeSpans", "scope_spans")?.iter().enumerate() {
        let scope_path = format!("{path}.scopeSpans[{index}]");
        scope_spans.push(scope_spans_of(item, &scope_path, rejections).map_err(|reason| format!("scopeSpans[{index}]: {reason}"))?);
    }
    Ok(ResourceSpans { resource, scope_spans, schema_url: string(fields, "schemaUrl", "schema_url")? })
}

fn scope_spans_of(value: &Value, path: &str, rejections: &mut Vec<Rejection>) -> Result<ScopeSpans, String> {
    let fields = object(value, "the entry")?;
    let scope = match get(fields, "scope", "scope") {
        None => None,
        Some(scope) => {
            let scope = object(scope, "scope")?;
            Some(InstrumentationScope {
                name: string(scope, "name", "name")?,
                version: string(scope, "version", "version")?,
                attributes: key_values(scope, "attributes", "attributes").map_err(|reason| format!("scope.{reason}"))?,
                dropped_attributes_count: uint32(scope, "droppedAttributesCount", "dropped_attributes_count")?,
            })
        }
    };
    let mut spans = Vec::new();
    for (index, item) in list(fields, "spans", "spans")?.iter().enumerate() {
        match span(item) {
            Ok(span) => spans.push(span),
            Err(reason) => rejections.push(Rejection { span: describe_span(item, &format!("{path}.spans[{index}]")), reason }),
        }
    }
    Ok(ScopeSpans { scope, spans, schema_url: string(fields, "schemaUrl", "schema_url")? })
}

/// Names a rejected span by its position, and its name when it has one.
fn describe_span(value: &Value, path: &str) -> String {
    match value.get("name").and_then(Value::as_str) {
        Some(name) if name.len() <= 64 => format!("{path} (\"{name}\")"),
        _ => path.to_string(),
    }
}

fn span(value: &Value) -> Result<Span, String> {
    let fields = object(value, "the span")?;
    let mut events = Vec::new();
    for (index, item) in list(fields, "events", "events")?.iter().enumerate() {
        events.push(event(item).map_err(|reason| format!("events[{index}].{reason}"))?);
    }
    let mut links = Vec::new();
    for (index, item) in list(fields, "links", "links")?.iter().enumerate() {
        links.push(link(item).map_err(|reason| format!("links[{index}].{reason}"))?);
    }
    let status = match get(fields, "status", "status") {
        None => None,
        Some(status) => {
            let status = object(status, "status")?;
            Some(Status {
                message: string(status, "message", "message").map_err(|reason| format!("status.{reason}"))?,
                code: enumeration(status, "code", "code", |name| StatusCode::from_str_name(name).map(|code| code as i32))
                    .map_err(|reason| format!("status.{reason}"))?,
            })
        }
    };
    Ok(Span {
        trace_id: hex_id(fields, "traceId", "trace_id", 16, true)?,
        span_id: hex_id(fields, "spanId", "span_id", 8, true)?,
        trace_state: string(fields, "traceState", "trace_state")?,
        parent_span_id: hex_id(fields, "parentSpanId", "parent_span_id", 8, false)?,
        flags: uint32(fields, "flags", "flags")?,
        name: string(fields, "name", "name")?,
        kind: enumeration(fields, "kind", "kind", |name| SpanKind::from_str_name(name).map(|kind| kind as i32))?,
        start_time_unix_nano: uint64(fields, "startTimeUnixNano", "start_time_unix_nano")?,
        end_time_unix_nano: uint64(fields, "endTimeUnixNano", "end_time_unix_nano")?,
        attributes: key_values(fields, "attributes", "attributes")?,
        dropped_attributes_count: uint32(fields, "droppedAttributesCount", "dropped_attributes_count")?,
        events,
        dropped_events_count: uint32(fields, "droppedEventsCount", "dropped_events_count")?,
        links,
        dropped_links_count: uint32(fields, "droppedLinksCount", "dropped_links_count")?,
        status,
    })
}

fn event(value: &Value) -> Result<Event, String> {
    let fields = object(value, "the event")?;
    Ok(Event {
        time_unix_nano: uint64(fields, "timeUnixNano", "time_unix_nano")?,
        name: string(fields, "name", "name")?,
        attributes: key_values(fields, "attributes", "attributes")?,
        dropped_attributes_count: uint32(fields, "droppedAttributesCount", "dropped_attributes_count")?,
    })
}

fn link(value: &Value) -> Result<Link, String> {
    let fields = object(value, "the link")?;
    Ok(Link {
        trace_id: hex_id(fields, "traceId", "trace_id", 16, true)?,
        span_id: hex_id(fields, "spanId", "span_id", 8, true)?,
        trace_state: string(fields, "traceState", "trace_state")?,
        attributes: key_values(fields, "attributes", "attributes")?,
        dropped_attributes_count: uint32(fields, "droppedAttributesCount", "dropped_attributes_count")?,
        flags: uint32(fields, "flags", "flags")?,
    })
}

/// Looks a field up by its JSON name, then its original name. `null` counts as absent.
fn get<'a>(fields: &'a Object, json_name: &str, proto_name: &str) -> Option<&'a Value> {
    fields.get(json_name).or_else(|| fields.get(proto_name)).filter(|value| !value.is_null())
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Object, String> {
    value.as_object().ok_or_else(|| format!("{what} must be a JSON object, got {}", type_name(value)))
}

/// Reads a repeated field, empty when absent.
fn list<'a>(fields: &'a Object, json_name: &str, proto_name: &str) -> Result<&'a [Value], String> {
    match get(fields, json_name, proto_name) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!("{json_name} must be a list, got {}", type_name(other))),
    }
}

fn string(fields: &Object, json_name: &str, proto_name: &str) -> Result<String, String> {
    match get(fields, json_name, proto_name) {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(format!("{json_name} must be a string, got {}", type_name(other))),
    }
}

/// Reads an unsigned integer sent as a JSON number or a decimal string.
fn unsigned(value: &Value, json_name: &str) -> Result<u64, String> {
    let parsed = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse::<u64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{json_name} must be a non-negative integer, got {}", describe(value)))
}

fn uint64(fields: &Object, json_name: &str, proto_name: &str) -> Result<u64, String> {
    get(fields, json_name, proto_name).map_or(Ok(0), |value| unsigned(value, json_name))
}

fn uint32(fields: &Object, json_name: &str, proto_name: &str) -> Result<u32, String> {
    let number = uint64(fields, json_name, proto_name)?;
    u32::try_from(number).map_err(|_| format!("{json_name} must fit in 32 bits, got {number}"))
}

/// Reads an enum field: its number, or its name as `parse_name` reads it.
fn enumeration(
    fields: &Object,
    json_name: &str,
    proto_name: &str,
    parse_name: impl Fn(&str) -> Option<i32>,
) -> Result<i32, String> {
    match get(fields, json_name, proto_name) {
        None => Ok(0),
        Some(Value::Number(number)) => number
            .as_i64()
            .and_then(|number| i32::try_from(number).ok())
            .ok_or_else(|| format!("{json_name} must be an integer, got {number}")),
        Some(Value::String(name)) => parse_name(name).ok_or_else(|| format!("{json_name} \"{name}\" is not a known value")),
        Some(other) => Err(format!("{json_name} must be an integer, got {}", type_name(other))),
    }
}

/// Reads a hex id of `bytes` bytes. An absent or empty optional id is empty.
fn hex_id(fields: &Object, json_name: &str, proto_name: &str, bytes: usize, required: bool) -> Result<Vec<u8>, String> {
    let text = match get(fields, json_name, proto_name) {
        None => "",
        Some(Value::String(text)) => text.as_str(),
        Some(other) => return Err(format!("{json_name} must be a hex string, got {}", type_name(other))),
    };
    if text.is_empty() && !required {
        return Ok(Vec::new());
    }
    if text.is_empty() {
        return Err(format!("{json_name} is missing"));
    }
    let expected = bytes * 2;
    if text.len() != expected {
        return Err(format!("{json_name} must be {expected} hex characters, got {} characters", text.chars().count()));
    }
    hex::decode(text).map_err(|_| format!("{json_name} must be {expected} hex characters, got \"{text}\", which is not hex"))
}

fn key_values(fields: &Object, json_name: &str, proto_name: &str) -> Result<Vec<KeyValue>, String> {
    list(fields, json_name, proto_name)?
        .iter()
        .enumerate()
        .map(|(index, item)| key_value(item).map_err(|reason| format!("{json_name}[{index}]: {reason}")))
        .collect()
}

fn key_value(value: &Value) -> Result<KeyValue, String> {
    let fields = object(value, "an attribute")?;
    let key = string(fields, "key", "key")?;
    let value = match get(fields, "value", "value") {
        None => None,
        Some(value) => Some(any_value(value).map_err(|reason| format!("attribute \"{key}\": {reason}"))?),
    };
    Ok(KeyValue { key, value, key_strindex: 0 })
}

/// Reads an `AnyValue`: an object with one of `stringValue`, `boolValue`,
/// `intValue`, `doubleValue`, `arrayValue`, `kvlistValue` or `bytesValue`.
/// An object with none of them is a value with nothing set.
fn any_value(value: &Value) -> Result<AnyValue, String> {
    let fields = object(value, "the value")?;
    let wrong = |name: &str, expected: &str, got: &Value| format!("{name} must be {expected}, got {}", describe(got));
    let value = if let Some(text) = get(fields, "stringValue", "string_value") {
        match text {
            Value::String(text) => OtlpValue::StringValue(text.clone()),
            other => return Err(wrong("stringValue", "a string", other)),
        }
    } else if let Some(flag) = get(fields, "boolValue", "bool_value") {
        match flag {
            Value::Bool(flag) => OtlpValue::BoolValue(*flag),
            other => return Err(wrong("boolValue", "a boolean", other)),
        }
    } else if let Some(number) = get(fields, "intValue", "int_value") {
        let parsed = match number {
            Value::Number(number) => number.as_i64(),
            Value::String(text) => text.parse::<i64>().ok(),
            _ => None,
        };
        OtlpValue::IntValue(parsed.ok_or_else(|| wrong("intValue", "a 64-bit integer", number))?)
    } else if let Some(number) = get(fields, "doubleValue", "double_value") {
        let parsed = match number {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => match text.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                other => other.parse::<f64>().ok(),
            },
            _ => None,
        };
        OtlpValue::DoubleValue(parsed.ok_or_else(|| wrong("doubleValue", "a number", number))?)
    } else if let Some(array) = get(fields, "arrayValue", "array_value") {
        let array = object(array, "arrayValue")?;
        let values = list(array, "values", "values")?
            .iter()
            .enumerate()
            .map(|(index, item)| any_value(item).map_err(|reason| format!("arrayValue.values[{index}]: {reason}")))
            .collect::<Result<Vec<_>, _>>()?;
        OtlpValue::ArrayValue(ArrayValue { values })
    } else if let Some(list) = get(fields, "kvlistValue", "kvlist_value") {
        let list = object(list, "kvlistValue")?;
        OtlpValue::KvlistValue(KeyValueList {
            values: key_values(list, "values", "values").map_err(|reason| format!("kvlistValue.{reason}"))?,
        })
    } else if let Some(bytes) = get(fields, "bytesValue", "bytes_value") {
        let Value::String(text) = bytes else {
            return Err(wrong("bytesValue", "a base64 string", bytes));
        };
        let engines = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE];
        let decoded = engines.iter().find_map(|engine| engine.decode(text).ok());
        OtlpValue::BytesValue(decoded.ok_or_else(|| "bytesValue is not valid base64".to_string())?)
    } else {
        return Ok(AnyValue { value: None });
    };
    Ok(AnyValue { value: Some(value) })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Describes a value for a message: short scalars in full, else its type.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(number) => number.to_string(),
        Value::String(text) if text.len() <= 32 => format!("\"{text}\""),
        other => type_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_value(value: Value) -> Result<(ExportTraceServiceRequest, Vec<Rejection>), String> {
        decode(value.to_string().as_bytes())
    }

    fn one_span(span: Value) -> Value {
        json!({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    }

    #[test]
    fn span_fields_read_in_both_spellings() {
        let span = json!({"traceId": "5B8EFFF798038103D269B633813FC60C", "span_id": "eee19b7ec3c1b174",
            "parentSpanId": "", "name": "call", "kind": "SPAN_KIND_CLIENT", "startTimeUnixNano": "1544712660000000000",
            "end_time_unix_nano": 1544712661000000000u64, "status": {"code": 2, "message": "boom"},
            "attributes": [{"key": "n", "value": {"intValue": "-7"}}, {"key": "d", "value": {"doubleValue": "NaN"}}]});
        let (request, rejections) = decode_value(one_span(span)).unwrap();
        assert!(rejections.is_empty(), "{rejections:?}");
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(hex::encode(&span.trace_id), "5b8efff798038103d269b633813fc60c");
        assert_eq!(hex::encode(&span.span_id), "eee19b7ec3c1b174");
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(span.attributes[0].value.as_ref().unwrap().value, Some(OtlpValue::IntValue(-7)));
        assert!(matches!(span.attributes[1].value.as_ref().unwrap().value, Some(OtlpValue::DoubleValue(d)) if d.is_nan()));
    }

    #[test]
    fn bad_span_is_rejected_alone() {
        let good = json!({"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "ok"});
        let short = json!({"traceId": "5b8efff798038103d269b633813fc60", "spanId": "eee19b7ec3c1b174", "name": "short"});
        let not_hex = json!({"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b17z", "name": "zz"});
        let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [good, short, not_hex]}]}]});
        let (request, rejections) = decode_value(body).unwrap();
        assert_eq!(request.resource_spans[0].scope_spans[0].spans.len(), 1);
        assert_eq!(rejections.len(), 2);
        assert_eq!(rejections[0].span, "resourceSpans[0].scopeSpans[0].spans[1] (\"short\")");
        assert_eq!(rejections[0].reason, "traceId must be 32 hex characters, got 31 characters");
        assert!(rejections[1].reason.contains("not hex"), "{}", rejections[1].reason);
    }

    #[test]
    fn malformed_envelope_fails_request() {
        let error = decode_value(json!({"resourceSpans": {"scopeSpans": []}})).unwrap_err();
        assert_eq!(error, "Invalid request: resourceSpans must be a list, got an object.");
        let error = decode(b"{\"resourceSpans\": [").unwrap_err();
        assert!(error.starts_with("The body is not valid JSON"), "{error}");
    }
}

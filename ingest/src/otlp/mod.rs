//! OTLP traces: turns an `ExportTraceServiceRequest` (decoded from protobuf
//! or from OTLP's JSON encoding) into bedrock's trace and span writes.
//!
//! Each OTLP span becomes one span create, and each OTLP trace id one trace
//! create, so a span whose root arrives in a later request still has its
//! trace. The root span (no parent) also writes a trace update with its name,
//! agent, times, error and texts: the update layer wins over every create, so
//! a later non-root span of the same trace never replaces what the root set.
//! Re-sending a span is an upsert on its id, and usage derived from an `llm`
//! span is keyed by the span id, so it is counted once.
//!
//! A span that cannot be mapped is rejected on its own, with a reason: an id
//! of the wrong length, a text or its metadata over the size limit, or a
//! timestamp out of range. The other spans of the request are still written.
//! The README's "OpenTelemetry (OTLP)" section has the full mapping table.

mod json;

use std::collections::HashMap;

use base64::Engine;
use bedrock_store::events::model::{Op, SpanFields, TraceFields, Write};
use bedrock_store::events::usage::{token_count, Money};
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtlpValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Map, Value};

use crate::validate::{Limits, MAX_ID_BYTES};

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// Attributes whose value becomes a span's `input_text`, in order of preference.
const INPUT_ATTRIBUTES: [&str; 3] = ["input.value", "gen_ai.input.messages", "gen_ai.prompt"];
/// Attributes whose value becomes a span's `output_text`, in order of preference.
const OUTPUT_ATTRIBUTES: [&str; 3] = ["output.value", "gen_ai.output.messages", "gen_ai.completion"];
const MODEL_ATTRIBUTES: [&str; 3] = ["gen_ai.response.model", "gen_ai.request.model", "llm.model_name"];
const INPUT_TOKEN_ATTRIBUTES: [&str; 3] = ["gen_ai.usage.input_tokens", "llm.token_count.prompt", "gen_ai.usage.prompt_tokens"];
const OUTPUT_TOKEN_ATTRIBUTES: [&str; 3] =
    ["gen_ai.usage.output_tokens", "llm.token_count.completion", "gen_ai.usage.completion_tokens"];
// NOTE: token counts are stored as sent, and usage reads cached tokens as
// part of the input tokens. An exporter whose input count leaves cache reads
// out is priced as if fewer input tokens were uncached.
const CACHED_TOKEN_ATTRIBUTES: [&str; 2] =
    ["gen_ai.usage.cache_read_input_tokens", "llm.token_count.prompt_details.cache_read"];
const REASONING_TOKEN_ATTRIBUTES: [&str; 2] =
    ["gen_ai.usage.reasoning_tokens", "llm.token_count.completion_details.reasoning"];
const COST_ATTRIBUTES: [&str; 1] = ["llm.cost.total"];

/// The attributes read for a span's agent id unless configured otherwise.
pub const DEFAULT_AGENT_ATTRIBUTES: [&str; 3] = ["agent.id", "gen_ai.agent.id", "service.name"];

/// How many rejection reasons `partial_success.error_message` lists.
const MAX_LISTED_REJECTIONS: usize = 10;

/// Settings of the mapping.
#[derive(Debug, Clone)]
pub struct Options {
    /// Attribute names tried in order for the agent id; each is looked up
    /// among the span's attributes, then among its resource's.
    pub agent_attributes: Vec<String>,
    pub limits: Limits,
}

/// One span that was not written, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The span's ids when they are valid, else its position in the request.
    pub span: String,
    pub reason: String,
}

/// The writes of one export request and the spans it rejected.
#[derive(Debug, Default)]
pub struct Conversion {
    pub writes: Vec<Write>,
    pub spans: usize,
    pub traces: usize,
    pub rejections: Vec<Rejection>,
}

/// Decodes a protobuf `ExportTraceServiceRequest`. Prost rejects the whole
/// message when any string field is not valid UTF-8.
pub fn decode_protobuf(bytes: &[u8]) -> Result<ExportTraceServiceRequest, String> {
    ExportTraceServiceRequest::decode(bytes)
        .map_err(|err| format!("The body is not a valid protobuf ExportTraceServiceRequest: {err}."))
}

/// Decodes an `ExportTraceServiceRequest` in OTLP's JSON encoding. Spans
/// whose ids are not hex strings of the right length, or whose fields have
/// the wrong type, are left out and returned as rejections.
pub fn decode_json(bytes: &[u8]) -> Result<(ExportTraceServiceRequest, Vec<Rejection>), String> {
    json::decode(bytes)
}

/// Builds the response: `partial_success` only when spans were rejected.
pub fn response(rejections: &[Rejection]) -> ExportTraceServiceResponse {
    let partial_success = (!rejections.is_empty()).then(|| ExportTracePartialSuccess {
        rejected_spans: rejections.len() as i64,
        error_message: rejection_message(rejections),
    });
    ExportTraceServiceResponse { partial_success }
}

/// Encodes a response as protobuf.
pub fn response_protobuf(response: &ExportTraceServiceResponse) -> Vec<u8> {
    response.encode_to_vec()
}

/// Encodes a response in OTLP's JSON encoding, where 64-bit integers are strings.
pub fn response_json(response: &ExportTraceServiceResponse) -> Value {
    match &response.partial_success {
        Some(partial) => json!({"partialSuccess": {
            "rejectedSpans": partial.rejected_spans.to_string(),
            "errorMessage": partial.error_message,
        }}),
        None => json!({}),
    }
}

/// Encodes a `google.rpc.Status` (field 1 `code`, field 2 `message`), the
/// body OTLP/HTTP prescribes for a failed protobuf request. The message is
/// not in the OTLP definitions, so it is written with prost's field encoders.
pub fn status_protobuf(code: i32, message: &str) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(message.len() + 8);
    if code != 0 {
        prost::encoding::int32::encode(1, &code, &mut buffer);
    }
    if !message.is_empty() {
        prost::encoding::string::encode(2, &message.to_string(), &mut buffer);
    }
    buffer
}

fn rejection_message(rejections: &[Rejection]) -> String {
    let listed: Vec<String> = rejections
        .iter()
        .take(MAX_LISTED_REJECTIONS)
        .map(|rejection| format!("{}: {}", rejection.span, rejection.reason))
        .collect();
    let mut message = format!("{} span(s) rejected. {}", rejections.len(), listed.join("; "));
    if rejections.len() > MAX_LISTED_REJECTIONS {
        message.push_str(&format!("; and {} more", rejections.len() - MAX_LISTED_REJECTIONS));
    }
    message
}

/// Trace fields gathered from the spans of one trace id in one request.
#[derive(Default)]
struct TraceSummary {
    root: Option<TraceFields>,
    /// The best-ranked agent among the spans: the one found by the earliest
    /// name of `Options::agent_attributes`, the first span winning a tie.
    agent: Option<(usize, String)>,
    earliest_start: Option<i64>,
}

/// Maps every span of `request`. `received_at` (microseconds) replaces a
/// missing start time, as for REST creates.
pub fn convert(request: ExportTraceServiceRequest, options: &Options, received_at: i64) -> Conversion {
    let mut conversion = Conversion::default();
    let mut span_writes = Vec::new();
    let mut trace_order: Vec<String> = Vec::new();
    let mut summaries: HashMap<String, TraceSummary> = HashMap::new();

    for resource_spans in request.resource_spans {
        let resource_attributes =
            resource_spans.resource.map(|resource| attributes_json(resource.attributes)).unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|scope| {
                let mut object = Map::new();
                if !scope.name.is_empty() {
                    object.insert("name".into(), json!(scope.name));
                }
                if !scope.version.is_empty() {
                    object.insert("version".into(), json!(scope.version));
                }
                if !scope.attributes.is_empty() {
                    object.insert("attributes".into(), Value::Object(attributes_json(scope.attributes)));
                }
                object
            });
            let context = SpanContext { resource: &resource_attributes, scope: scope.as_ref(), options, received_at };
            for span in scope_spans.spans {
                match map_span(span, &context) {
                    Ok(mapped) => {
                        let summary = summaries.entry(mapped.trace_id.clone()).or_insert_with(|| {
                            trace_order.push(mapped.trace_id.clone());
                            TraceSummary::default()
                        });
                        summary.summarize(&mapped);
                        conversion.spans += 1;
                        span_writes.push(Write::Span { id: mapped.id, op: Op::Create, fields: mapped.fields });
                    }
                    Err(rejection) => conversion.rejections.push(rejection),
                }
            }
        }
    }

    conversion.traces = trace_order.len();
    for trace_id in trace_order {
        let summary = summaries.remove(&trace_id).unwrap_or_default();
        let mut create = summary.root.clone().unwrap_or_default();
        create.agent_id = create.agent_id.or(summary.agent.map(|(_, agent_id)| agent_id));
        create.started_at = create.started_at.or(summary.earliest_start);
        conversion.writes.push(Write::Trace { id: trace_id.clone(), op: Op::Create, fields: create });
        if let Some(root) = summary.root {
            conversion.writes.push(Write::Trace { id: trace_id, op: Op::Update, fields: root });
        }
    }
    conversion.writes.extend(span_writes);
    conversion
}

impl TraceSummary {
    fn summarize(&mut self, span: &MappedSpan) {
        if let Some((rank, agent_id)) = &span.agent {
            if self.agent.as_ref().is_none_or(|(best, _)| rank < best) {
                self.agent = Some((*rank, agent_id.clone()));
            }
        }
        if let Some(start) = span.fields.started_at {
            self.earliest_start = Some(self.earliest_start.map_or(start, |earliest| earliest.min(start)));
        }
        if span.fields.parent_id == Some(None) {
            self.root = Some(TraceFields {
                name: span.fields.name.clone(),
                agent_id: span.agent.as_ref().map(|(_, agent_id)| agent_id.clone()),
                started_at: span.fields.started_at,
                ended_at: span.fields.ended_at,
                error: span.fields.error.clone(),
                input_text: span.fields.input_text.clone(),
                output_text: span.fields.output_text.clone(),
                metadata: None,
            });
        }
    }
}

/// The resource and scope that a span was exported under.
struct SpanContext<'a> {
    resource: &'a Map<String, Value>,
    scope: Option<&'a Map<String, Value>>,
    options: &'a Options,
    received_at: i64,
}

struct MappedSpan {
    id: String,
    trace_id: String,
    /// The agent id and the position in `Options::agent_attributes` of the name that gave it.
    agent: Option<(usize, String)>,
    fields: SpanFields,
}

fn map_span(mut span: Span, context: &SpanContext) -> Result<MappedSpan, Rejection> {
    let trace_id = id_hex(&span.trace_id, 16, "trace_id");
    let span_id = id_hex(&span.span_id, 8, "span_id");
    let (trace_id, span_id) = match (trace_id, span_id) {
        (Ok(trace_id), Ok(span_id)) => (trace_id, span_id),
        (Err(reason), _) | (_, Err(reason)) => {
            let name = if span.name.len() <= 64 { span.name.as_str() } else { "(long name)" };
            return Err(Rejection { span: format!("span \"{name}\""), reason });
        }
    };
    let reject = |reason: String| Rejection { span: format!("span {span_id} of trace {trace_id}"), reason };

    let parent_id = if span.parent_span_id.is_empty() {
        None
    } else {
        Some(id_hex(&span.parent_span_id, 8, "parent_span_id").map_err(reject)?)
    };
    let started_at = nanos_to_micros(span.start_time_unix_nano, "start_time_unix_nano").map_err(reject)?;
    let ended_at = nanos_to_micros(span.end_time_unix_nano, "end_time_unix_nano").map_err(reject)?;

    let mut metadata = attributes_json(std::mem::take(&mut span.attributes));
    let span_type = span_type(&metadata);
    let agent = agent_id(&metadata, context.resource, &context.options.agent_attributes);
    let llm_cost = if span_type == "llm" { llm_cost(&metadata) } else { None };
    let input_text = take_text(&mut metadata, &INPUT_ATTRIBUTES);
    let output_text = take_text(&mut metadata, &OUTPUT_ATTRIBUTES);
    let error = error_text(&span);

    insert_otel_fields(&mut metadata, &span, context);
    if let Some(llm_cost) = llm_cost {
        metadata.insert("llm_cost".into(), llm_cost);
    }

    let limits = context.options.limits;
    check_size("name", &span.name, limits).map_err(reject)?;
    for (field, text) in [("input_text", &input_text), ("output_text", &output_text), ("error", &error)] {
        if let Some((attribute, text)) = text {
            if text.len() > limits.max_text_bytes {
                return Err(reject(size_error(&format!("{field} ({attribute})"), text, limits)));
            }
        }
    }
    let metadata_size = json_size(&metadata);
    if metadata_size > limits.max_text_bytes {
        return Err(reject(format!(
            "its attributes are {metadata_size} bytes as JSON metadata, more than the limit of {} bytes",
            limits.max_text_bytes
        )));
    }

    let fields = SpanFields {
        trace_id: Some(trace_id.clone()),
        parent_id: Some(parent_id),
        name: Some(span.name),
        span_type: Some(span_type.to_string()),
        started_at: Some(started_at.unwrap_or(context.received_at)),
        ended_at,
        input_text: input_text.map(|(_, text)| text).filter(|text| !text.is_empty()),
        output_text: output_text.map(|(_, text)| text).filter(|text| !text.is_empty()),
        error: error.map(|(_, text)| text),
        metadata: Some(metadata),
        flag: None,
    };
    Ok(MappedSpan { id: span_id, trace_id, agent, fields })
}

/// Adds what the span carries besides its attributes, under `otel.` keys.
fn insert_otel_fields(metadata: &mut Map<String, Value>, span: &Span, context: &SpanContext) {
    if !context.resource.is_empty() {
        metadata.insert("otel.resource".into(), Value::Object(context.resource.clone()));
    }
    if let Some(scope) = context.scope.filter(|scope| !scope.is_empty()) {
        metadata.insert("otel.scope".into(), Value::Object(scope.clone()));
    }
    if let Ok(kind) = SpanKind::try_from(span.kind) {
        if kind != SpanKind::Unspecified {
            metadata.insert("otel.span_kind".into(), json!(kind.as_str_name().trim_start_matches("SPAN_KIND_")));
        }
    }
    if !span.trace_state.is_empty() {
        metadata.insert("otel.trace_state".into(), json!(span.trace_state));
    }
    if !span.events.is_empty() {
        let events: Vec<Value> = span
            .events
            .iter()
            .map(|event| {
                json!({"name": event.name, "time_unix_nano": event.time_unix_nano,
                    "attributes": attributes_json(event.attributes.clone())})
            })
            .collect();
        metadata.insert("otel.events".into(), Value::Array(events));
    }
    if !span.links.is_empty() {
        let links: Vec<Value> = span
            .links
            .iter()
            .map(|link| {
                json!({"trace_id": hex::encode(&link.trace_id), "span_id": hex::encode(&link.span_id),
                    "attributes": attributes_json(link.attributes.clone())})
            })
            .collect();
        metadata.insert("otel.links".into(), Value::Array(links));
    }
}

/// Lower-case hex of an id of `length` bytes; all zeros is invalid, as in OTLP.
fn id_hex(bytes: &[u8], length: usize, field: &str) -> Result<String, String> {
    if bytes.len() != length {
        return Err(format!("{field} must be {length} bytes ({} hex characters), got {} bytes", length * 2, bytes.len()));
    }
    if bytes.iter().all(|byte| *byte == 0) {
        return Err(format!("{field} is all zeros, which OTLP defines as invalid"));
    }
    Ok(hex::encode(bytes))
}

/// Converts a time in nanoseconds to microseconds; 0 means not set.
fn nanos_to_micros(nanos: u64, field: &str) -> Result<Option<i64>, String> {
    if nanos == 0 {
        return Ok(None);
    }
    let micros = (nanos / 1000) as i64;
    if chrono::DateTime::from_timestamp_micros(micros).is_none() {
        return Err(format!("{field} {nanos} is out of the supported range of dates"));
    }
    Ok(Some(micros))
}

fn check_size(field: &str, text: &str, limits: Limits) -> Result<(), String> {
    if text.len() > limits.max_text_bytes {
        return Err(size_error(field, text, limits));
    }
    Ok(())
}

fn size_error(field: &str, text: &str, limits: Limits) -> String {
    format!("its {field} is {} bytes, more than the limit of {} bytes", text.len(), limits.max_text_bytes)
}

/// Returns the length of a value's JSON without keeping the JSON.
fn json_size(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Converts attributes to a JSON object, the later of two equal keys winning.
pub fn attributes_json(attributes: Vec<KeyValue>) -> Map<String, Value> {
    attributes
        .into_iter()
        .map(|attribute| (attribute.key, attribute.value.map_or(Value::Null, any_value_json)))
        .collect()
}

/// Converts an attribute value to JSON. Strings, booleans and integers stay
/// as they are, and doubles become numbers (`"NaN"`, `"Infinity"` or
/// `"-Infinity"` when not finite). Arrays become lists, key-value lists
/// objects, bytes a standard base64 string, and a value with nothing set
/// `null`.
pub fn any_value_json(value: AnyValue) -> Value {
    match value.value {
        None => Value::Null,
        Some(OtlpValue::StringValue(text)) => Value::String(text),
        Some(OtlpValue::BoolValue(flag)) => Value::Bool(flag),
        Some(OtlpValue::IntValue(number)) => json!(number),
        Some(OtlpValue::DoubleValue(number)) => match serde_json::Number::from_f64(number) {
            Some(number) => Value::Number(number),
            None if number.is_nan() => json!("NaN"),
            None if number > 0.0 => json!("Infinity"),
            None => json!("-Infinity"),
        },
        Some(OtlpValue::ArrayValue(array)) => Value::Array(array.values.into_iter().map(any_value_json).collect()),
        Some(OtlpValue::KvlistValue(list)) => Value::Object(attributes_json(list.values)),
        Some(OtlpValue::BytesValue(bytes)) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        // An index into a string table, which trace exports do not carry.
        Some(OtlpValue::StringValueStrindex(index)) => json!({ "string_index": index }),
    }
}

/// Reads the span type from `openinference.span.kind`, else from `gen_ai.operation.name`.
fn span_type(attributes: &Map<String, Value>) -> &'static str {
    if let Some(kind) = attributes.get("openinference.span.kind").and_then(Value::as_str) {
        return match kind.to_ascii_uppercase().as_str() {
            "LLM" => "llm",
            "TOOL" => "tool",
            _ => "text",
        };
    }
    match attributes.get("gen_ai.operation.name").and_then(Value::as_str) {
        Some("chat" | "text_completion" | "generate_content") => "llm",
        Some("execute_tool") => "tool",
        _ => "text",
    }
}

/// Finds the first of `names` that the span, else its resource, sets to a
/// non-empty string or an integer of at most [`MAX_ID_BYTES`] bytes. Returns
/// the index of that name with the value.
fn agent_id(span: &Map<String, Value>, resource: &Map<String, Value>, names: &[String]) -> Option<(usize, String)> {
    for (rank, name) in names.iter().enumerate() {
        for attributes in [span, resource] {
            let candidate = match attributes.get(name) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Number(number)) if number.is_i64() => number.to_string(),
                _ => continue,
            };
            if !candidate.is_empty() && candidate.len() <= MAX_ID_BYTES {
                return Some((rank, candidate));
            }
        }
    }
    None
}

/// Removes the first of `names` that is set and returns it with its text: a
/// string as it is, any other value as its JSON.
fn take_text(attributes: &mut Map<String, Value>, names: &[&str]) -> Option<(String, String)> {
    let name = names.iter().find(|name| attributes.get(**name).is_some_and(|value| !value.is_null()))?;
    let text = match attributes.remove(*name)? {
        Value::String(text) => text,
        other => other.to_string(),
    };
    Some((name.to_string(), text))
}

/// Builds the error of a span whose status code is ERROR: the status
/// message, else the first `exception` event as `type: message`, else `ERROR`.
fn error_text(span: &Span) -> Option<(String, String)> {
    let status = span.status.as_ref()?;
    if status.code != StatusCode::Error as i32 {
        return None;
    }
    if !status.message.is_empty() {
        return Some(("status.message".into(), status.message.clone()));
    }
    let exception = span.events.iter().find(|event| event.name == "exception").map(|event| {
        let attributes = attributes_json(event.attributes.clone());
        let text = |key: &str| attributes.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        let (kind, message) = (text("exception.type"), text("exception.message"));
        match (kind.is_empty(), message.is_empty()) {
            (false, false) => format!("{kind}: {message}"),
            (true, _) => message,
            (false, true) => kind,
        }
    });
    let text = exception.filter(|text| !text.is_empty()).unwrap_or_else(|| "ERROR".into());
    Some(("exception event".into(), text))
}

/// Builds the `llm_cost` object that usage records are derived from, when
/// the span reports a model, a token count or a cost.
fn llm_cost(attributes: &Map<String, Value>) -> Option<Value> {
    let first_count = |names: &[&str]| names.iter().find_map(|name| token_count(attributes.get(*name)));
    let model = MODEL_ATTRIBUTES
        .iter()
        .find_map(|name| attributes.get(*name).and_then(Value::as_str).filter(|model| !model.is_empty()));
    let input = first_count(&INPUT_TOKEN_ATTRIBUTES);
    let output = first_count(&OUTPUT_TOKEN_ATTRIBUTES);
    let cached = first_count(&CACHED_TOKEN_ATTRIBUTES);
    let reasoning = first_count(&REASONING_TOKEN_ATTRIBUTES);
    let cost = COST_ATTRIBUTES.iter().find_map(|name| {
        let value = attributes.get(*name)?;
        Money::from_json(value).filter(|money| money.0 >= 0).map(|_| value.clone())
    });
    if model.is_none() && input.is_none() && output.is_none() && cached.is_none() && reasoning.is_none() && cost.is_none() {
        return None;
    }
    let mut object = Map::new();
    if let Some(model) = model {
        object.insert("model".into(), json!(model));
    }
    object.insert("input_tokens".into(), json!(input.unwrap_or(0)));
    object.insert("output_tokens".into(), json!(output.unwrap_or(0)));
    object.insert("cached_tokens".into(), json!(cached.unwrap_or(0)));
    object.insert("reasoning_tokens".into(), json!(reasoning.unwrap_or(0)));
    if let Some(cost) = cost {
        object.insert("total_cost_usd".into(), cost);
    }
    Some(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_message_lists_first_ten() {
        let rejections: Vec<Rejection> =
            (0..12).map(|index| Rejection { span: format!("span {index}"), reason: "bad".into() }).collect();
        let message = rejection_message(&rejections);
        assert!(message.starts_with("12 span(s) rejected. span 0: bad; span 1: bad; "), "{message}");
        assert!(message.contains("span 9: bad; and 2 more"), "{message}");
        assert!(!message.contains("span 10"), "{message}");
    }

    #[test]
    fn status_encodes_code_and_message() {
        // Field 1 varint 3, then field 2 length-delimited "no".
        assert_eq!(status_protobuf(3, "no"), vec![0x08, 0x03, 0x12, 0x02, b'n', b'o']);
        assert_eq!(status_protobuf(0, ""), Vec::<u8>::new());
    }
}

//! Validation and normalisation of trace and span writes from JSON bodies.
//!
//! Rules, as real clients need them: ids are client strings of 1 to 255
//! bytes (a UUID v4 is generated when a create has none); timestamps are ISO
//! 8601 with any offset or none (UTC); `metadata` is an object (`null` means
//! none); an empty `error`, `input_text` or `output_text` means "not
//! mentioned", so it never erases an earlier value; text fields are limited
//! to a configured size. Unknown fields are ignored. Every problem is
//! reported on the field that has it.

use std::collections::BTreeMap;

use bedrock_store::events::model::{Flag, Op, SpanFields, TraceFields, SPAN_TYPES};
use bedrock_store::time::parse_timestamp;
use serde_json::{Map, Value};

pub const MAX_ID_BYTES: usize = 255;

/// Field name → messages, as DRF reports validation errors.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Invalid(pub BTreeMap<String, Vec<String>>);

impl Invalid {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.entry(field.to_string()).or_default().push(message.into());
    }

    fn finish<T>(self, value: T) -> Result<T, Invalid> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum bytes of one text field, and of the serialized `metadata`.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_text_bytes: 1024 * 1024 }
    }
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

struct Reader<'a> {
    body: &'a Map<String, Value>,
    errors: Invalid,
    limits: Limits,
}

impl<'a> Reader<'a> {
    fn new(body: &'a Value, limits: Limits) -> Result<Reader<'a>, Invalid> {
        match body {
            Value::Object(map) => Ok(Reader { body: map, errors: Invalid::default(), limits }),
            other => {
                let mut errors = Invalid::default();
                errors.add(
                    "non_field_errors",
                    format!("Invalid data. Expected a JSON object, but got {}.", type_name(other)),
                );
                Err(errors)
            }
        }
    }

    /// A string field; absent and null are `None`.
    fn string(&mut self, field: &str, max_bytes: usize) -> Option<String> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => {
                if text.len() > max_bytes {
                    self.errors.add(
                        field,
                        format!("Ensure this field has no more than {max_bytes} bytes (it has {}).", text.len()),
                    );
                    return None;
                }
                Some(text.clone())
            }
            Some(other) => {
                self.errors.add(field, format!("Not a valid string: got {}.", type_name(other)));
                None
            }
        }
    }

    fn required_string(&mut self, field: &str, max_bytes: usize) -> Option<String> {
        if matches!(self.body.get(field), None | Some(Value::Null)) {
            self.errors.add(field, "This field is required.");
            return None;
        }
        self.string(field, max_bytes)
    }

    /// A text field where `""` means "not mentioned".
    fn text(&mut self, field: &str) -> Option<String> {
        let max = self.limits.max_text_bytes;
        self.string(field, max).filter(|text| !text.is_empty())
    }

    fn id(&mut self, field: &str) -> Option<String> {
        let id = self.string(field, MAX_ID_BYTES)?;
        if id.is_empty() {
            self.errors.add(field, "This field may not be blank.");
            return None;
        }
        Some(id)
    }

    fn timestamp(&mut self, field: &str) -> Option<i64> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => match parse_timestamp(text) {
                Some(micros) => Some(micros),
                None => {
                    self.errors.add(
                        field,
                        "Datetime has wrong format. Use ISO 8601, e.g. 2026-03-01T09:30:12.123456+00:00.",
                    );
                    None
                }
            },
            Some(other) => {
                self.errors.add(
                    field,
                    format!("Datetime has wrong format: got {}, expected an ISO 8601 string.", type_name(other)),
                );
                None
            }
        }
    }

    fn metadata(&mut self) -> Option<Map<String, Value>> {
        match self.body.get("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                let max = self.limits.max_text_bytes;
                let size = serde_json::to_vec(map).map(|bytes| bytes.len()).unwrap_or(usize::MAX);
                if size > max {
                    self.errors.add(
                        "metadata",
                        format!("Ensure this field has no more than {max} bytes of JSON (it has {size})."),
                    );
                    return None;
                }
                Some(map.clone())
            }
            Some(other) => {
                self.errors.add("metadata", format!("Expected an object, but got {}.", type_name(other)));
                None
            }
        }
    }
}

/// Reads a trace create or update. A create returns the client's id, if any.
pub fn trace_write(body: &Value, op: Op, limits: Limits) -> Result<(Option<String>, TraceFields), Invalid> {
    let mut reader = Reader::new(body, limits)?;
    let id = if op == Op::Create { reader.id("id") } else { None };
    let max = limits.max_text_bytes;
    let name = match op {
        Op::Create => reader.required_string("name", max),
        Op::Update => reader.string("name", max),
    };
    let fields = TraceFields {
        name,
        agent_id: reader.string("agent_id", MAX_ID_BYTES),
        started_at: reader.timestamp("started_at"),
        ended_at: reader.timestamp("ended_at"),
        error: reader.text("error"),
        input_text: reader.text("input_text"),
        output_text: reader.text("output_text"),
        metadata: reader.metadata(),
    };
    reader.errors.finish((id, fields))
}

/// Reads a span create or update. A create returns the client's id, if any.
pub fn span_write(body: &Value, op: Op, limits: Limits) -> Result<(Option<String>, SpanFields), Invalid> {
    let mut reader = Reader::new(body, limits)?;
    let id = if op == Op::Create { reader.id("id") } else { None };
    let max = limits.max_text_bytes;
    let (trace_id, name) = match op {
        Op::Create => {
            let trace_id = if matches!(reader.body.get("trace_id"), None | Some(Value::Null)) {
                reader.errors.add("trace_id", "This field is required.");
                None
            } else {
                reader.id("trace_id")
            };
            (trace_id, reader.required_string("name", max))
        }
        Op::Update => (reader.id("trace_id"), reader.string("name", max)),
    };
    let parent_id = match (op, reader.body.get("parent_id")) {
        (Op::Create, None | Some(Value::Null)) => Some(None),
        (Op::Update, None | Some(Value::Null)) => None,
        _ => reader.id("parent_id").map(Some),
    };
    let span_type = match reader.string("span_type", 64) {
        Some(kind) if SPAN_TYPES.contains(&kind.as_str()) => Some(kind),
        Some(kind) => {
            reader.errors.add(
                "span_type",
                format!("\"{kind}\" is not a valid choice. Use one of: {}.", SPAN_TYPES.join(", ")),
            );
            None
        }
        None if op == Op::Create => Some("text".to_string()),
        None => None,
    };
    let fields = SpanFields {
        trace_id,
        parent_id,
        name,
        span_type,
        started_at: reader.timestamp("started_at"),
        ended_at: reader.timestamp("ended_at"),
        input_text: reader.text("input_text"),
        output_text: reader.text("output_text"),
        error: reader.text("error"),
        metadata: reader.metadata(),
        flag: None,
    };
    reader.errors.finish((id, fields))
}

/// Reads the optional body of a flag request: `{"reason": "..."}`.
pub fn flag(body: Option<&Value>, now: i64, limits: Limits) -> Result<SpanFields, Invalid> {
    let empty = Value::Object(Map::new());
    let mut reader = Reader::new(body.unwrap_or(&empty), limits)?;
    let reason = reader.text("reason");
    let flag = Flag { flagged: true, reason, at: Some(now) };
    reader.errors.finish(SpanFields { flag: Some(flag), ..Default::default() })
}

pub fn unflag() -> SpanFields {
    SpanFields { flag: Some(Flag { flagged: false, reason: None, at: None }), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields_of(result: Result<(Option<String>, SpanFields), Invalid>) -> Invalid {
        result.err().unwrap_or_default()
    }

    #[test]
    fn span_create_reads_harness_open() {
        let body = json!({"id": "s1", "trace_id": "t1", "parent_id": null, "name": "run_agent", "span_type": "text",
            "started_at": "2026-03-01T09:30:00", "input_text": null, "metadata": {"run_id": "r"}});
        let (id, fields) = span_write(&body, Op::Create, Limits::default()).unwrap();
        assert_eq!(id.as_deref(), Some("s1"));
        assert_eq!(fields.parent_id, Some(None));
        assert_eq!(fields.input_text, None);
        assert_eq!(fields.started_at, Some(1_772_357_400_000_000));
        assert_eq!(fields.metadata.unwrap()["run_id"], json!("r"));
    }

    #[test]
    fn span_close_treats_empty_strings_as_absent() {
        let body = json!({"ended_at": "2026-03-01T09:30:01+00:00", "input_text": "", "output_text": "", "error": ""});
        let (_, fields) = span_write(&body, Op::Update, Limits::default()).unwrap();
        assert_eq!(fields.error, None);
        assert_eq!(fields.output_text, None);
        assert_eq!(fields.parent_id, None);
    }

    #[test]
    fn bad_fields_are_named() {
        let long_id = "x".repeat(256);
        let body = json!({"id": long_id, "trace_id": 5, "name": "n", "span_type": "video",
            "started_at": "noon", "metadata": [1]});
        let errors = fields_of(span_write(&body, Op::Create, Limits::default()));
        for field in ["id", "trace_id", "span_type", "started_at", "metadata"] {
            assert!(errors.0.contains_key(field), "missing error for {field}: {errors:?}");
        }
    }

    #[test]
    fn oversized_text_is_rejected_not_truncated() {
        let body = json!({"output_text": "y".repeat(11)});
        let errors = fields_of(span_write(&body, Op::Update, Limits { max_text_bytes: 10 }));
        assert_eq!(errors.0["output_text"], vec!["Ensure this field has no more than 10 bytes (it has 11).".to_string()]);
    }
}

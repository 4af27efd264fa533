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

use bedrock_store::events::model::{Flag, Op, SpanFields, TraceFields, UsageFields, SPAN_TYPES};
use bedrock_store::events::usage::Money;
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

    /// Reads a token count: a non-negative integer. An integral float such as
    /// `12.0` is accepted, since some clients serialize every number as one.
    fn token_count(&mut self, field: &str) -> Option<i64> {
        let value = self.body.get(field)?;
        let count = match value {
            Value::Null => return None,
            Value::Number(number) => number
                .as_i64()
                .or_else(|| number.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64)),
            _ => None,
        };
        match count {
            Some(count) if count >= 0 => Some(count),
            Some(_) => {
                self.errors.add(field, "Ensure this value is greater than or equal to 0.");
                None
            }
            None => {
                self.errors.add(field, format!("A valid integer is required: got {}.", describe(value)));
                None
            }
        }
    }

    /// Reads an amount of US dollars: a JSON number or a decimal string, read
    /// exactly to the nano-dollar, from 0 up to [`MAX_COST_USD`].
    fn cost(&mut self, field: &str) -> Option<i64> {
        let value = self.body.get(field)?;
        if value.is_null() {
            return None;
        }
        let money = match value {
            Value::Number(_) | Value::String(_) => Money::from_json(value),
            _ => None,
        };
        match money {
            Some(money) if money.0 < 0 => {
                self.errors.add(field, "Ensure this value is greater than or equal to 0.");
                None
            }
            Some(money) if money.0 > MAX_COST_USD as i128 * Money::NANOS_PER_DOLLAR => {
                self.errors.add(field, format!("Ensure this value is at most {MAX_COST_USD}."));
                None
            }
            Some(money) => Some(money.0 as i64),
            None => {
                self.errors.add(field, format!("A valid finite number is required: got {}.", describe(value)));
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

/// The largest cost one usage record may carry, in US dollars.
pub const MAX_COST_USD: i64 = 1_000_000_000;

/// Describes a value for an error message: its type, and short scalars in full.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) if text.len() <= 32 => format!("the string \"{text}\""),
        other => type_name(other).to_string(),
    }
}

/// Reads a usage record posted by a client. Returns the client's id, if any.
pub fn usage_write(body: &Value, limits: Limits) -> Result<(Option<String>, UsageFields), Invalid> {
    let mut reader = Reader::new(body, limits)?;
    let id = reader.id("id");
    let fields = UsageFields {
        agent_id: reader.string("agent_id", MAX_ID_BYTES),
        trace_id: reader.string("trace_id", MAX_ID_BYTES),
        span_id: reader.string("span_id", MAX_ID_BYTES),
        model: reader.string("model", MAX_ID_BYTES),
        input_tokens: reader.token_count("input_tokens"),
        output_tokens: reader.token_count("output_tokens"),
        cached_tokens: reader.token_count("cached_tokens"),
        reasoning_tokens: reader.token_count("reasoning_tokens"),
        cost_nanos: reader.cost("cost_usd"),
        timestamp: reader.timestamp("timestamp"),
        metadata: None,
    };
    if let (Some(cached), Some(input)) = (fields.cached_tokens, fields.input_tokens) {
        if cached > input {
            reader.errors.add("cached_tokens", "Cached tokens are part of the input tokens: ensure this value is at most input_tokens.");
        }
    }
    if let (Some(reasoning), Some(output)) = (fields.reasoning_tokens, fields.output_tokens) {
        if reasoning > output {
            reader.errors.add("reasoning_tokens", "Reasoning tokens are part of the output tokens: ensure this value is at most output_tokens.");
        }
    }
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
    fn usage_rejects_bad_counts_and_costs() {
        let body = json!({"input_tokens": -1, "output_tokens": 1.5, "cached_tokens": "3", "reasoning_tokens": true,
            "cost_usd": -0.1});
        let errors = usage_write(&body, Limits::default()).err().unwrap();
        for field in ["input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cost_usd"] {
            assert!(errors.0.contains_key(field), "missing error for {field}: {errors:?}");
        }
        let (_, fields) = usage_write(&json!({"input_tokens": 12.0, "cost_usd": "0.1"}), Limits::default()).unwrap();
        assert_eq!(fields.input_tokens, Some(12));
        assert_eq!(fields.cost_nanos, Some(100_000_000));
        let errors = usage_write(&json!({"cost_usd": 1e12}), Limits::default()).err().unwrap();
        assert!(errors.0.contains_key("cost_usd"));
    }

    #[test]
    fn oversized_text_is_rejected_not_truncated() {
        let body = json!({"output_text": "y".repeat(11)});
        let errors = fields_of(span_write(&body, Op::Update, Limits { max_text_bytes: 10 }));
        assert_eq!(errors.0["output_text"], vec!["Ensure this field has no more than 10 bytes (it has 11).".to_string()]);
    }
}

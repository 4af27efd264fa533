//! The event model: traces and spans as versioned partial states.
//!
//! Every write is a create or an update of one object. Objects are kept as a
//! [`Layered`] state with two layers of optional fields:
//!
//! - the **create layer** holds what creates sent; a re-sent create replaces
//!   the fields it carries (an upsert);
//! - the **update layer** holds what updates sent; a later update replaces the
//!   fields it carries, and its `metadata` is a JSON Merge Patch (RFC 7396)
//!   composed with the earlier ones.
//!
//! The visible value of a field is the update layer's if set, else the create
//! layer's, and the visible metadata is the create metadata with the composed
//! patch applied. So a late create fills only fields no update has set, and
//! merging is associative: two partial states of one object, from the buffer,
//! two segments or two instances, merge into the same result in any grouping
//! as long as their order is kept.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::merge_patch::{apply_merge_patch, compose_merge_patches};

/// The span kinds the API accepts.
pub const SPAN_TYPES: [&str; 6] = ["text", "audio", "tool", "function", "llm", "checkpoint"];

/// A span's review flag, replaced as a whole by flag and unflag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub flagged: bool,
    pub reason: Option<String>,
    pub at: Option<i64>,
}

/// Fields of a trace; `None` means "not set by this write".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Deserializes a present field, `null` included, as `Some`. By default serde
/// reads `null` as the outer `None` of a double option, which loses a root
/// span's explicit null parent.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Fields of a span; `None` means "not set by this write".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// `Some(None)` is an explicit null: a root span.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub parent_id: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<Flag>,
}

/// Fields of a usage record posted by a client; `None` means "not set by this
/// write". Records derived from `llm` spans are not stored: they are read off
/// the spans' merged metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<i64>,
    /// The client's cost in nano-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_nanos: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Never stored: usage records have no metadata, and the slot exists so
    /// that they merge through the same [`Layered`] code as traces and spans.
    #[serde(skip)]
    pub metadata: Option<Map<String, Value>>,
}

/// Field sets that merge field by field, newer over older.
pub trait Fields: Clone + Default {
    /// Overwrites every field that `newer` sets, except `metadata`.
    fn overwrite_scalars(&mut self, newer: &Self);
    fn metadata(&self) -> Option<&Map<String, Value>>;
    fn metadata_mut(&mut self) -> &mut Option<Map<String, Value>>;
    /// Rough heap size in bytes, for the buffer's memory bound.
    fn heap_bytes(&self) -> usize;
}

macro_rules! overwrite {
    ($target:ident, $newer:ident, $($field:ident),+) => {
        $(if $newer.$field.is_some() { $target.$field = $newer.$field.clone(); })+
    };
}

fn text_bytes(text: &Option<String>) -> usize {
    text.as_ref().map_or(0, String::len)
}

fn metadata_bytes(metadata: &Option<Map<String, Value>>) -> usize {
    // Serializing to count is exact but slow; keys and strings dominate, so
    // sum those, with a fixed charge per value.
    fn value_bytes(value: &Value) -> usize {
        match value {
            Value::String(s) => s.len() + 24,
            Value::Array(items) => 24 + items.iter().map(value_bytes).sum::<usize>(),
            Value::Object(map) => 48 + map.iter().map(|(k, v)| k.len() + 24 + value_bytes(v)).sum::<usize>(),
            _ => 16,
        }
    }
    metadata.as_ref().map_or(0, |m| 48 + m.iter().map(|(k, v)| k.len() + 24 + value_bytes(v)).sum::<usize>())
}

impl Fields for TraceFields {
    fn overwrite_scalars(&mut self, newer: &Self) {
        overwrite!(self, newer, name, agent_id, started_at, ended_at, error, input_text, output_text);
    }
    fn metadata(&self) -> Option<&Map<String, Value>> {
        self.metadata.as_ref()
    }
    fn metadata_mut(&mut self) -> &mut Option<Map<String, Value>> {
        &mut self.metadata
    }
    fn heap_bytes(&self) -> usize {
        text_bytes(&self.name)
            + text_bytes(&self.agent_id)
            + text_bytes(&self.error)
            + text_bytes(&self.input_text)
            + text_bytes(&self.output_text)
            + metadata_bytes(&self.metadata)
    }
}

impl Fields for SpanFields {
    fn overwrite_scalars(&mut self, newer: &Self) {
        overwrite!(
            self, newer, trace_id, parent_id, name, span_type, started_at, ended_at, input_text, output_text,
            error, flag
        );
    }
    fn metadata(&self) -> Option<&Map<String, Value>> {
        self.metadata.as_ref()
    }
    fn metadata_mut(&mut self) -> &mut Option<Map<String, Value>> {
        &mut self.metadata
    }
    fn heap_bytes(&self) -> usize {
        text_bytes(&self.trace_id)
            + self.parent_id.as_ref().map_or(0, text_bytes)
            + text_bytes(&self.name)
            + text_bytes(&self.span_type)
            + text_bytes(&self.input_text)
            + text_bytes(&self.output_text)
            + text_bytes(&self.error)
            + metadata_bytes(&self.metadata)
            + self.flag.as_ref().map_or(0, |f| text_bytes(&f.reason))
    }
}

impl Fields for UsageFields {
    fn overwrite_scalars(&mut self, newer: &Self) {
        overwrite!(
            self, newer, agent_id, trace_id, span_id, model, input_tokens, output_tokens, cached_tokens,
            reasoning_tokens, cost_nanos, timestamp
        );
    }
    fn metadata(&self) -> Option<&Map<String, Value>> {
        self.metadata.as_ref()
    }
    fn metadata_mut(&mut self) -> &mut Option<Map<String, Value>> {
        &mut self.metadata
    }
    fn heap_bytes(&self) -> usize {
        text_bytes(&self.agent_id) + text_bytes(&self.trace_id) + text_bytes(&self.span_id) + text_bytes(&self.model) + 64
    }
}

/// Whether a write creates (or re-creates) an object or updates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
}

/// The merged partial state of one object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Layered<F> {
    pub create: F,
    pub update: F,
    /// Whether any create has been seen.
    pub created: bool,
    /// Server time of the first write seen, in microseconds.
    pub first_seen: i64,
    /// Log sequence number of the newest write merged in.
    pub seq: u64,
}

impl<F: Fields> Layered<F> {
    /// The state after one write.
    pub fn from_write(op: Op, fields: F, seq: u64, now: i64) -> Self {
        // Applying one write to an empty state sets its layer to exactly the
        // write's fields, so they move in without a copy.
        match op {
            Op::Create => Layered { create: fields, created: true, first_seen: now, seq, ..Default::default() },
            Op::Update => Layered { update: fields, first_seen: now, seq, ..Default::default() },
        }
    }

    /// Applies one write, newer than everything merged so far.
    pub fn apply(&mut self, op: Op, fields: F, seq: u64) {
        match op {
            Op::Create => {
                self.created = true;
                self.create.overwrite_scalars(&fields);
                if let Some(metadata) = fields.metadata() {
                    *self.create.metadata_mut() = Some(metadata.clone());
                }
            }
            Op::Update => {
                self.update.overwrite_scalars(&fields);
                if let Some(patch) = fields.metadata() {
                    let composed = match self.update.metadata() {
                        Some(earlier) => compose_merge_patches(earlier, patch),
                        None => patch.clone(),
                    };
                    *self.update.metadata_mut() = Some(composed);
                }
            }
        }
        self.seq = self.seq.max(seq);
    }

    /// Merges a newer partial state of the same object into this one.
    pub fn merge_newer(&mut self, newer: &Layered<F>) {
        self.created |= newer.created;
        self.create.overwrite_scalars(&newer.create);
        if let Some(metadata) = newer.create.metadata() {
            *self.create.metadata_mut() = Some(metadata.clone());
        }
        self.update.overwrite_scalars(&newer.update);
        if let Some(patch) = newer.update.metadata() {
            let composed = match self.update.metadata() {
                Some(earlier) => compose_merge_patches(earlier, patch),
                None => patch.clone(),
            };
            *self.update.metadata_mut() = Some(composed);
        }
        if self.first_seen == 0 || (newer.first_seen != 0 && newer.first_seen < self.first_seen) {
            self.first_seen = newer.first_seen;
        }
        self.seq = self.seq.max(newer.seq);
    }

    /// The visible fields: update over create, metadata patched.
    pub fn resolve(&self) -> F {
        let mut visible = self.create.clone();
        visible.overwrite_scalars(&self.update);
        let base = self.create.metadata().cloned().unwrap_or_default();
        let metadata = match self.update.metadata() {
            Some(patch) => apply_merge_patch(base, patch),
            None => base,
        };
        *visible.metadata_mut() = Some(metadata);
        visible
    }

    /// Returns the visible fields as [`Layered::resolve`] does, but borrows
    /// the create layer when no update has set anything, as with most spans.
    /// A borrowed `metadata` may be `None` where `resolve` gives an empty map.
    pub fn resolved(&self) -> Cow<'_, F>
    where
        F: PartialEq,
    {
        if self.update == F::default() {
            Cow::Borrowed(&self.create)
        } else {
            Cow::Owned(self.resolve())
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.create.heap_bytes() + self.update.heap_bytes() + 64
    }
}

pub type TraceState = Layered<TraceFields>;
pub type SpanState = Layered<SpanFields>;
pub type UsageState = Layered<UsageFields>;

/// One write of one object, as logged and applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Write {
    Trace { id: String, op: Op, fields: TraceFields },
    Span { id: String, op: Op, fields: SpanFields },
    Usage { id: String, op: Op, fields: UsageFields },
}

/// The unit of the write-ahead log: the writes of one request, all of one organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub organization_id: String,
    /// Server time of receipt, in microseconds.
    pub received_at: i64,
    pub writes: Vec<Write>,
}

impl Batch {
    /// Serializes the batch as its write-ahead log record. The JSON is written
    /// by sonic-rs, which escapes long texts with vector instructions, into a
    /// buffer allocated once at about its final size.
    pub fn to_log_record(&self) -> Result<Vec<u8>, String> {
        let mut record = Vec::with_capacity(self.json_size_hint());
        sonic_rs::to_writer(&mut record, self).map_err(|err| err.to_string())?;
        Ok(record)
    }

    /// Estimates the size of the batch as JSON.
    fn json_size_hint(&self) -> usize {
        let write_bytes = |write: &Write| match write {
            Write::Trace { id, fields, .. } => id.len() + fields.heap_bytes(),
            Write::Span { id, fields, .. } => id.len() + fields.heap_bytes(),
            Write::Usage { id, fields, .. } => id.len() + fields.heap_bytes(),
        };
        64 + self.organization_id.len() + self.writes.iter().map(|write| 160 + write_bytes(write)).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Log records and segment states are written by sonic-rs and read by
    /// serde_json, so every value must come back exactly as it went in.
    #[test]
    fn sonic_rs_output_reads_back_equal() {
        let text = "quote \" backslash \\ tab \t newline \n nul \u{0} escape \u{1b} del \u{7f} \
                    line separator \u{2028} accents é ñ 日本 emoji 🦀 and a long tail "
            .repeat(40);
        let metadata = json!({
            "text": text,
            "numbers": [0, -1, 9007199254740993u64, u64::MAX, i64::MIN, 0.1, -0.0, 1e300, 5e-324, 123456.789],
            "nested": {"empty": {}, "list": [], "null": null, "flag": false, "key \"quoted\"\n": "v"},
        });
        let span = SpanFields {
            trace_id: Some("trace-ü".into()),
            parent_id: Some(None),
            name: Some(text.clone()),
            input_text: Some(text.clone()),
            started_at: Some(i64::MAX),
            ended_at: Some(-1),
            metadata: Some(metadata.as_object().unwrap().clone()),
            flag: Some(Flag { flagged: true, reason: Some("r\u{0}".into()), at: Some(7) }),
            ..SpanFields::default()
        };
        let batch = Batch {
            organization_id: "org".into(),
            received_at: 1_733_000_000_000_000,
            writes: vec![
                Write::Span { id: "s\"1".into(), op: Op::Create, fields: span.clone() },
                Write::Usage {
                    id: "u".into(),
                    op: Op::Update,
                    fields: UsageFields { cost_nanos: Some(i64::MAX), input_tokens: Some(0), ..UsageFields::default() },
                },
            ],
        };
        let record = batch.to_log_record().unwrap();
        assert_eq!(serde_json::from_slice::<Batch>(&record).unwrap(), batch);
        assert_eq!(serde_json::from_slice::<Value>(&record).unwrap(), serde_json::to_value(&batch).unwrap());

        let state = SpanState::from_write(Op::Create, span, 3, 4);
        let mut json = Vec::new();
        sonic_rs::to_writer(&mut json, &state).unwrap();
        assert_eq!(serde_json::from_slice::<SpanState>(&json).unwrap(), state);
    }
}

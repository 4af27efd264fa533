//! Typed columns of a segment row: the fields that queries filter, sort and
//! sum, resolved from the row's own partial state.
//!
//! They describe the whole object only when the row is the object's one
//! row, which is what compaction makes of most objects. The store tracks the
//! objects with rows in several segments or in memory (see
//! [`super::FastScan`]). Queries merge those exactly, and read the typed
//! columns of every other row as they are, with no JSON to decode.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::bloom;
use super::model::{Fields, Layered, SpanState, TraceState, UsageState};
use super::segment::{KIND_SPAN, KIND_TRACE, KIND_USAGE};
use super::usage::llm_usage;
use crate::StoreError;

/// The typed columns of one row; `None` is a null.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Typed {
    pub name: Option<String>,
    /// A trace's agent, a posted record's agent, or a span's `metadata.agent_id`.
    pub agent_id: Option<String>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub first_seen: Option<i64>,
    /// Whether the object carries a non-empty `error`.
    pub has_error: Option<bool>,
    pub span_type: Option<String>,
    pub flagged: Option<bool>,
    /// Whether a checkpoint span passed (`metadata.passed` is `true`).
    pub passed: Option<bool>,
    /// A trace's top-level metadata as [`metadata_entry`] strings.
    pub meta: Option<String>,
    /// Whether the row is a usage record: posted, or an `llm` span with `metadata.llm_cost`.
    pub has_usage: Option<bool>,
    pub model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    /// The client's cost in nano-dollars, null when absent; a span's cost of
    /// exactly 0 counts as absent, because the harness sends 0.0 for "unknown".
    pub cost_nanos: Option<i64>,
    /// The usage record's timestamp.
    pub usage_at: Option<i64>,
    /// The span a posted usage record names.
    pub span_id: Option<String>,
}

const ENTRY: char = '\u{1}';
const VALUE: char = '\u{2}';
const ESCAPE: char = '\u{3}';

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            ENTRY => out.push_str("\u{3}1"),
            VALUE => out.push_str("\u{3}2"),
            ESCAPE => out.push_str("\u{3}3"),
            c => out.push(c),
        }
    }
}

/// Returns the text of a metadata value that filters compare: a string's own
/// text, any other value's JSON.
pub fn metadata_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Returns one top-level metadata pair as the `meta` column contains it. The
/// column's entries follow each other and it ends with a separator, so a
/// substring match on this text matches exactly that key with that value.
pub fn metadata_entry(key: &str, value: &str) -> String {
    let mut out = String::with_capacity(key.len() + value.len() + 3);
    out.push(ENTRY);
    escape_into(&mut out, key);
    out.push(VALUE);
    escape_into(&mut out, value);
    out.push(ENTRY);
    out
}

/// Escapes a metadata key as the entries of the `meta` column contain it.
pub fn metadata_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    escape_into(&mut out, key);
    out
}

/// Maximum number of distinct values of a key in one segment whose entries
/// go to `meta_low`.
const LOW_VALUES_PER_KEY: usize = 64;
/// Maximum length, in bytes, of a value in `meta_low`.
const LOW_VALUE_BYTES: usize = 64;
/// Maximum number of keys whose values a segment counts. Any other key is high.
const LOW_KEYS: usize = 256;
/// Maximum number of high keys a segment lists. Past it, every key is high.
const HIGH_KEYS_LISTED: usize = 4096;
/// Maximum bytes of the high keys a segment lists in its footer. Past it,
/// every key is high.
const HIGH_KEY_BYTES: usize = 64 * 1024;

/// Splits the `meta` column of a segment's trace rows by key cardinality.
///
/// Entries whose key takes few short values in the segment (an environment,
/// a scenario, a release) also go to the `meta_low` column. That column is a
/// dictionary with few distinct values, so a filter searches it once per
/// distinct value instead of once per row. The segment lists the keys that went
/// high (too many values, or a long one): a filter on such a key searches
/// the full `meta` column, which contains every entry. Rows written before a
/// key went high keep its entries in `meta_low`, which such a filter never
/// reads.
///
/// NOTE: the limits count the values of all the segment's organizations
/// together, so one organization's many values make a key high for all.
/// A row's `meta_low` joins all its low entries, so several low keys
/// multiply the distinct values of the column.
#[derive(Debug, Default)]
pub struct MetaSplit {
    values: HashMap<String, HashSet<String>>,
    high: BTreeSet<String>,
    /// The bytes of the keys in `high`.
    high_bytes: usize,
    /// Set once `high` would pass [`HIGH_KEYS_LISTED`] keys or
    /// [`HIGH_KEY_BYTES`]: every key is then high, and neither set grows.
    all_high: bool,
}

impl MetaSplit {
    /// Returns the `meta_low` text of a row whose `meta` is `meta`: its
    /// entries whose key is still low, in the same format.
    pub fn low_entries(&mut self, meta: &str) -> String {
        let mut out = String::with_capacity(meta.len().min(128));
        out.push(ENTRY);
        for entry in meta.split(ENTRY).filter(|entry| !entry.is_empty()) {
            let Some((key, value)) = entry.split_once(VALUE) else { continue };
            if self.is_low(key, value) {
                out.push_str(entry);
                out.push(ENTRY);
            }
        }
        out
    }

    fn is_low(&mut self, key: &str, value: &str) -> bool {
        if self.all_high || self.high.contains(key) {
            return false;
        }
        if value.len() > LOW_VALUE_BYTES || (!self.values.contains_key(key) && self.values.len() >= LOW_KEYS) {
            self.values.remove(key);
            self.mark_high(key);
            return false;
        }
        let values = self.values.entry(key.to_string()).or_default();
        if values.contains(value) {
            return true;
        }
        if values.len() < LOW_VALUES_PER_KEY {
            values.insert(value.to_string());
            return true;
        }
        self.values.remove(key);
        self.mark_high(key);
        false
    }

    /// Lists `key` as high, or makes every key high once the list is full.
    fn mark_high(&mut self, key: &str) {
        if self.high.len() >= HIGH_KEYS_LISTED || self.high_bytes + key.len() > HIGH_KEY_BYTES {
            self.all_high = true;
            self.values.clear();
            self.high.clear();
            return;
        }
        self.high_bytes += key.len();
        self.high.insert(key.to_string());
    }

    /// Returns the keys (as [`metadata_key`] spells them) whose filters must
    /// read `meta`, or `None` when there are too many to list and every
    /// filter must.
    pub fn high_keys(&self) -> Option<&BTreeSet<String>> {
        (!self.all_high).then_some(&self.high)
    }
}

fn meta_column(metadata: &Map<String, Value>) -> String {
    let mut out = String::new();
    for (key, value) in metadata {
        out.push(ENTRY);
        escape_into(&mut out, key);
        out.push(VALUE);
        escape_into(&mut out, &metadata_text(value));
    }
    out.push(ENTRY);
    out
}

fn non_empty(text: &Option<String>) -> bool {
    text.as_ref().is_some_and(|t| !t.is_empty())
}

/// Returns the stable 64-bit hash of an object's key, as the `key_hash` column stores it.
pub fn key_hash(organization_id: &str, kind: &str, id: &str) -> u64 {
    bloom::stable_hash(&[organization_id, kind, id])
}

impl Typed {
    pub fn of_trace(state: &TraceState) -> Typed {
        let f = state.resolved();
        Typed {
            has_error: Some(non_empty(&f.error)),
            meta: Some(meta_column(f.metadata.as_ref().unwrap_or(&Map::new()))),
            name: f.name.clone(),
            agent_id: f.agent_id.clone(),
            started_at: f.started_at,
            ended_at: f.ended_at,
            first_seen: Some(state.first_seen),
            ..Typed::default()
        }
    }

    pub fn of_span(state: &SpanState) -> Typed {
        let f = state.resolved();
        let empty = Map::new();
        let metadata = f.metadata.as_ref().unwrap_or(&empty);
        let mut typed = Typed {
            has_error: Some(non_empty(&f.error)),
            flagged: Some(f.flag.as_ref().is_some_and(|flag| flag.flagged)),
            started_at: f.started_at,
            ended_at: f.ended_at,
            first_seen: Some(state.first_seen),
            agent_id: metadata.get("agent_id").and_then(Value::as_str).map(str::to_string),
            has_usage: Some(false),
            span_type: f.span_type.clone(),
            ..Typed::default()
        };
        match f.span_type.as_deref() {
            Some("checkpoint") => typed.passed = Some(matches!(metadata.get("passed"), Some(Value::Bool(true)))),
            Some("llm") => {
                if let Some(usage) = llm_usage(metadata) {
                    typed.has_usage = Some(true);
                    typed.model = usage.model;
                    typed.input_tokens = Some(usage.input_tokens);
                    typed.output_tokens = Some(usage.output_tokens);
                    typed.cached_tokens = Some(usage.cached_tokens);
                    typed.reasoning_tokens = Some(usage.reasoning_tokens);
                    typed.cost_nanos = usage.cost.filter(|cost| cost.0 != 0).map(|cost| clamp_nanos(cost.0));
                    typed.usage_at = Some(f.ended_at.or(f.started_at).unwrap_or(state.first_seen));
                }
            }
            _ => {}
        }
        typed
    }

    /// Reports whether a span's row is a usage record, as
    /// [`Typed::of_span`] sets `has_usage`, without computing the rest.
    pub fn span_has_usage(state: &SpanState) -> bool {
        let f = state.resolved();
        f.span_type.as_deref() == Some("llm") && f.metadata.as_ref().is_some_and(|metadata| llm_usage(metadata).is_some())
    }

    pub fn of_usage(state: &UsageState) -> Typed {
        let f = state.resolved();
        Typed {
            has_usage: Some(true),
            agent_id: f.agent_id.clone(),
            model: f.model.clone(),
            input_tokens: Some(f.input_tokens.unwrap_or(0)),
            output_tokens: Some(f.output_tokens.unwrap_or(0)),
            cached_tokens: Some(f.cached_tokens.unwrap_or(0)),
            reasoning_tokens: Some(f.reasoning_tokens.unwrap_or(0)),
            cost_nanos: f.cost_nanos,
            usage_at: Some(f.timestamp.unwrap_or(state.first_seen)),
            first_seen: Some(state.first_seen),
            span_id: f.span_id.clone(),
            ..Typed::default()
        }
    }

    /// Computes the typed columns of a row from its JSON state, as segments store it.
    pub fn of_json(kind: &str, state: &str) -> Result<Typed, StoreError> {
        fn decode<F: Fields + DeserializeOwned>(state: &str) -> Result<Layered<F>, StoreError> {
            serde_json::from_str(state).map_err(|err| StoreError::Internal(format!("corrupt state: {err}")))
        }
        match kind {
            KIND_TRACE => Ok(Typed::of_trace(&decode(state)?)),
            KIND_SPAN => Ok(Typed::of_span(&decode(state)?)),
            KIND_USAGE => Ok(Typed::of_usage(&decode(state)?)),
            other => Err(StoreError::Internal(format!("row of unknown kind {other:?}"))),
        }
    }
}

fn clamp_nanos(nanos: i128) -> i64 {
    nanos.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_entries_match_only_whole_pairs() {
        let metadata = json!({"a": "x\u{1}y", "b": 2, "c\u{2}": "z"});
        let column = meta_column(metadata.as_object().unwrap());
        assert!(column.contains(&metadata_entry("a", "x\u{1}y")));
        assert!(column.contains(&metadata_entry("b", "2")));
        assert!(column.contains(&metadata_entry("c\u{2}", "z")));
        assert!(!column.contains(&metadata_entry("a", "x")));
        assert!(!column.contains(&metadata_entry("b", "22")));
        assert!(!column.contains(&metadata_entry("c", "z")));
    }

    #[test]
    fn meta_split_lists_high_keys() {
        let mut split = MetaSplit::default();
        let long = "v".repeat(LOW_VALUE_BYTES + 1);
        let mut lows = Vec::new();
        for index in 0..LOW_VALUES_PER_KEY + 10 {
            let metadata = json!({"env": format!("e{}", index % 3), "run": format!("r{index}"), "long": long});
            lows.push(split.low_entries(&meta_column(metadata.as_object().unwrap())));
        }
        // `env` has 3 values: every row keeps it. `long` never fits.
        for (index, low) in lows.iter().enumerate() {
            assert!(low.contains(&metadata_entry("env", &format!("e{}", index % 3))), "{low:?}");
            assert!(!low.contains(&metadata_entry("long", &long)));
        }
        // `run` goes high at its 65th distinct value, and stays high.
        assert!(lows[LOW_VALUES_PER_KEY - 1].contains(&metadata_entry("run", &format!("r{}", LOW_VALUES_PER_KEY - 1))));
        assert!(!lows[LOW_VALUES_PER_KEY].contains(&metadata_entry("run", &format!("r{LOW_VALUES_PER_KEY}"))));
        assert!(!lows[LOW_VALUES_PER_KEY + 9].contains("run"));
        let high: Vec<&str> = split.high_keys().unwrap().iter().map(String::as_str).collect();
        assert_eq!(high, ["long", "run"]);
        assert_eq!(split.low_entries(&meta_column(&Map::new())), "\u{1}");
    }

    #[test]
    fn meta_split_caps_high_keys() {
        let mut split = MetaSplit::default();
        let long = "v".repeat(LOW_VALUE_BYTES + 1);
        for index in 0..HIGH_KEYS_LISTED {
            split.low_entries(&meta_column(json!({ format!("k{index}"): long }).as_object().unwrap()));
        }
        assert_eq!(split.high_keys().map(BTreeSet::len), Some(HIGH_KEYS_LISTED));
        assert!(split.high_bytes < HIGH_KEY_BYTES);
        // One more high key: every key counts as high from then on.
        split.low_entries(&meta_column(json!({"extra": long}).as_object().unwrap()));
        assert!(split.high_keys().is_none());
        assert_eq!(split.low_entries(&meta_column(json!({"env": "prod"}).as_object().unwrap())), "\u{1}");
        assert!(split.high.is_empty());
        assert!(split.values.is_empty());
    }

    #[test]
    fn meta_split_caps_high_key_bytes() {
        let mut split = MetaSplit::default();
        let long = "v".repeat(LOW_VALUE_BYTES + 1);
        let key = "k".repeat(HIGH_KEY_BYTES / 2);
        split.low_entries(&meta_column(json!({ format!("{key}1"): long }).as_object().unwrap()));
        assert_eq!(split.high_keys().map(BTreeSet::len), Some(1));
        split.low_entries(&meta_column(json!({ format!("{key}2"): long }).as_object().unwrap()));
        assert!(split.high_keys().is_none());
    }

    #[test]
    fn meta_split_escapes_keys() {
        let mut split = MetaSplit::default();
        let metadata = json!({"a\u{1}b": "x".repeat(LOW_VALUE_BYTES + 1)});
        split.low_entries(&meta_column(metadata.as_object().unwrap()));
        assert!(split.high_keys().unwrap().contains(&metadata_key("a\u{1}b")));
        assert!(!split.high_keys().unwrap().contains("a\u{1}b"));
    }
}

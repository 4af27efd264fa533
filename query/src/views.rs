//! API views of traces and spans: the merged state resolved to visible
//! fields, plus the computed ones (durations, status, usage totals, pass rate).

use bedrock_evals::{checkpoint_passed, pass_rate};
use bedrock_store::events::model::{SpanFields, SpanState, TraceFields, TraceState};
use bedrock_store::events::pricing::{cost_of, PriceBook};
use bedrock_store::events::typed::Typed;
use bedrock_store::events::usage::{Money, UsageRecord};
use bedrock_store::time::format_micros;
use serde_json::{json, Map, Value};

fn timestamp(micros: Option<i64>) -> Value {
    micros.map_or(Value::Null, |m| Value::String(format_micros(m)))
}

/// Milliseconds with microsecond precision; negative when the end precedes the start.
pub fn duration_ms(started: Option<i64>, ended: Option<i64>) -> Option<f64> {
    match (started, ended) {
        (Some(start), Some(end)) => Some((end - start) as f64 / 1000.0),
        _ => None,
    }
}

fn text(value: &Option<String>) -> Value {
    match value {
        Some(text) if !text.is_empty() => Value::String(text.clone()),
        _ => Value::Null,
    }
}

/// A span resolved for the API.
pub struct SpanView {
    pub id: String,
    pub fields: SpanFields,
    pub first_seen: i64,
}

impl SpanView {
    pub fn new(id: &str, state: &SpanState) -> SpanView {
        SpanView { id: id.to_string(), fields: state.resolve(), first_seen: state.first_seen }
    }

    pub fn to_json(&self) -> Value {
        let f = &self.fields;
        let flag = f.flag.as_ref();
        json!({
            "id": self.id,
            "trace_id": f.trace_id,
            "parent_id": f.parent_id.clone().flatten(),
            "name": f.name,
            "span_type": f.span_type,
            "started_at": timestamp(f.started_at),
            "ended_at": timestamp(f.ended_at),
            "duration_ms": duration_ms(f.started_at, f.ended_at),
            "input_text": text(&f.input_text),
            "output_text": text(&f.output_text),
            "error": text(&f.error),
            "metadata": f.metadata.clone().unwrap_or_default(),
            "flagged": flag.is_some_and(|flag| flag.flagged),
            "flag_reason": flag.and_then(|flag| flag.reason.clone()),
            "flagged_at": timestamp(flag.and_then(|flag| flag.at)),
            "created_at": format_micros(self.first_seen),
        })
    }

    pub fn started_at(&self) -> Option<i64> {
        self.fields.started_at
    }
}

/// Totals over a trace's spans.
#[derive(Debug, Default, Clone)]
pub struct SpanTotals {
    pub span_count: u64,
    pub flagged_span_count: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Money,
    pub checkpoints: u64,
    pub checkpoints_passed: u64,
    /// Spans with a non-empty `error`.
    pub error_count: u64,
    /// The distinct span types, in the order first seen.
    pub span_types: Vec<String>,
}

impl SpanTotals {
    /// Adds one span. An `llm` span's usage counts as its usage record
    /// does, priced from `prices` when the client sent no cost.
    pub fn add(&mut self, span: &SpanFields, prices: &PriceBook) {
        self.span_count += 1;
        if span.flag.as_ref().is_some_and(|flag| flag.flagged) {
            self.flagged_span_count += 1;
        }
        if span.error.as_ref().is_some_and(|error| !error.is_empty()) {
            self.error_count += 1;
        }
        if let Some(kind) = span.span_type.as_deref() {
            if !self.span_types.iter().any(|known| known == kind) {
                self.span_types.push(kind.to_string());
            }
        }
        let empty = Map::new();
        let metadata = span.metadata.as_ref().unwrap_or(&empty);
        match span.span_type.as_deref() {
            Some("llm") => {
                if let Some(mut usage) = UsageRecord::from_span("", span, None, 0) {
                    usage.price(prices);
                    self.input_tokens = self.input_tokens.saturating_add(usage.input_tokens);
                    self.output_tokens = self.output_tokens.saturating_add(usage.output_tokens);
                    self.cached_tokens = self.cached_tokens.saturating_add(usage.cached_tokens);
                    self.reasoning_tokens = self.reasoning_tokens.saturating_add(usage.reasoning_tokens);
                    self.cost = self.cost + usage.cost.unwrap_or_default();
                }
            }
            Some("checkpoint") => {
                self.checkpoints += 1;
                if checkpoint_passed(metadata) {
                    self.checkpoints_passed += 1;
                }
            }
            _ => {}
        }
    }
}

impl SpanTotals {
    /// Adds one span from its typed segment columns, as [`SpanTotals::add`]
    /// adds its fields.
    pub fn add_typed(&mut self, span: &Typed, prices: &PriceBook) {
        self.span_count += 1;
        if span.flagged == Some(true) {
            self.flagged_span_count += 1;
        }
        if span.has_error == Some(true) {
            self.error_count += 1;
        }
        if let Some(kind) = span.span_type.as_deref() {
            if !self.span_types.iter().any(|known| known == kind) {
                self.span_types.push(kind.to_string());
            }
        }
        match span.span_type.as_deref() {
            Some("llm") if span.has_usage == Some(true) => {
                let (input, output) = (span.input_tokens.unwrap_or(0), span.output_tokens.unwrap_or(0));
                let (cached, reasoning) = (span.cached_tokens.unwrap_or(0), span.reasoning_tokens.unwrap_or(0));
                self.input_tokens = self.input_tokens.saturating_add(input);
                self.output_tokens = self.output_tokens.saturating_add(output);
                self.cached_tokens = self.cached_tokens.saturating_add(cached);
                self.reasoning_tokens = self.reasoning_tokens.saturating_add(reasoning);
                let cost = match span.cost_nanos {
                    Some(nanos) => Money(nanos as i128),
                    None => span
                        .model
                        .as_deref()
                        .and_then(|model| prices.lookup(model))
                        .map(|price| cost_of(&price, input, cached, output))
                        .unwrap_or_default(),
                };
                self.cost = self.cost + cost;
            }
            Some("checkpoint") => {
                self.checkpoints += 1;
                if span.passed == Some(true) {
                    self.checkpoints_passed += 1;
                }
            }
            _ => {}
        }
    }
}

/// A trace resolved for the API.
pub struct TraceView {
    pub id: String,
    pub fields: TraceFields,
    pub first_seen: i64,
    pub totals: SpanTotals,
}

impl TraceView {
    pub fn new<'a>(
        id: &str,
        state: &TraceState,
        spans: impl IntoIterator<Item = &'a SpanFields>,
        prices: &PriceBook,
    ) -> TraceView {
        let mut totals = SpanTotals::default();
        for span in spans {
            totals.add(span, prices);
        }
        TraceView::with_totals(id, state, totals)
    }

    /// Builds a trace whose span totals are already summed.
    pub fn with_totals(id: &str, state: &TraceState, totals: SpanTotals) -> TraceView {
        TraceView { id: id.to_string(), fields: state.resolve(), first_seen: state.first_seen, totals }
    }

    /// `running` until the trace is closed, then `error` when it carries an
    /// error, else `ok`.
    pub fn status(&self) -> &'static str {
        if self.fields.ended_at.is_none() {
            "running"
        } else if self.fields.error.as_ref().is_some_and(|e| !e.is_empty()) {
            "error"
        } else {
            "ok"
        }
    }

    /// Reports whether the trace or any of its spans carries an error.
    pub fn has_error(&self) -> bool {
        self.fields.error.as_ref().is_some_and(|e| !e.is_empty()) || self.totals.error_count > 0
    }

    pub fn duration_ms(&self) -> Option<f64> {
        duration_ms(self.fields.started_at, self.fields.ended_at)
    }

    pub fn to_json(&self) -> Value {
        let f = &self.fields;
        let t = &self.totals;
        json!({
            "id": self.id,
            "name": f.name,
            "agent_id": f.agent_id,
            "started_at": timestamp(f.started_at),
            "ended_at": timestamp(f.ended_at),
            "duration_ms": self.duration_ms(),
            "status": self.status(),
            "error": text(&f.error),
            "input_text": text(&f.input_text),
            "output_text": text(&f.output_text),
            "metadata": f.metadata.clone().unwrap_or_default(),
            "span_count": t.span_count,
            "flagged_span_count": t.flagged_span_count,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "cached_tokens": t.cached_tokens,
            "reasoning_tokens": t.reasoning_tokens,
            "total_tokens": t.input_tokens.saturating_add(t.output_tokens),
            "cost_usd": t.cost.to_json(),
            "checkpoint_pass_rate": pass_rate(t.checkpoints_passed, t.checkpoints),
            "created_at": format_micros(self.first_seen),
        })
    }
}

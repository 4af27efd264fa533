//! Usage derived from `llm` spans: token counts and cost from the span's
//! `metadata.llm_cost`, with money in fixed-point nano-dollars so sums are
//! exact and do not depend on grouping.

use serde_json::{json, Map, Value};

use super::model::{SpanFields, UsageFields};
use super::pricing::{cost_of, PriceBook};

/// An amount of US dollars in nano-dollars (10^-9 USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(pub i128);

impl Money {
    pub const NANOS_PER_DOLLAR: i128 = 1_000_000_000;

    /// Parses a decimal number such as `0.000123`, `-1.5e-05` or `12` exactly,
    /// rounding half away from zero at the ninth decimal.
    pub fn parse_decimal(text: &str) -> Option<Money> {
        let text = text.trim();
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i32>().ok()?),
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        if !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        // digits × 10^(exponent - fraction_len) dollars = digits × 10^(exponent - fraction_len + 9) nanos.
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        let shift = exponent as i64 - fraction.len() as i64 + 9;
        if digits.len() > 30 || shift > 20 {
            return None;
        }
        let value: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
        let nanos = if shift >= 0 {
            value.checked_mul(10i128.checked_pow(shift as u32)?)?
        } else {
            let divisor = 10i128.checked_pow((-shift) as u32).unwrap_or(i128::MAX);
            let quotient = value / divisor;
            let remainder = value % divisor;
            if remainder * 2 >= divisor { quotient + 1 } else { quotient }
        };
        Some(Money(if negative { -nanos } else { nanos }))
    }

    /// Reads a JSON number (by its decimal text, never through f64 sums) or a numeric string.
    pub fn from_json(value: &Value) -> Option<Money> {
        match value {
            Value::Number(number) => Money::parse_decimal(&number.to_string()),
            Value::String(text) => Money::parse_decimal(text),
            _ => None,
        }
    }

    /// Dollars as a JSON number, rounded to nine decimals.
    pub fn to_json(self) -> Value {
        let text = self.to_decimal_string();
        serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
    }

    /// Dollars as an exact decimal string with nine decimals, e.g. `0.000123000`.
    pub fn to_decimal_string(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let per = Self::NANOS_PER_DOLLAR as u128;
        format!("{sign}{}.{:09}", magnitude / per, magnitude % per)
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::default(), |a, b| a + b)
    }
}

/// Token counts and cost of one model call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmUsage {
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    /// `None` when the client sent no cost.
    pub cost: Option<Money>,
}

impl LlmUsage {
    pub fn total_tokens(&self) -> i64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Reads a token count: a non-negative integer, an integral float such as
/// `12.0`, or a string of digits. Anything else counts as absent.
pub fn token_count(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(number) => {
            if let Some(count) = number.as_i64() {
                return (count >= 0).then_some(count);
            }
            let float = number.as_f64()?;
            (float >= 0.0 && float.fract() == 0.0 && float < 9.0e15).then_some(float as i64)
        }
        Value::String(text) => text.trim().parse::<i64>().ok().filter(|count| *count >= 0),
        _ => None,
    }
}

/// The usage an `llm` span reports in `metadata.llm_cost`, if any.
pub fn llm_usage(metadata: &Map<String, Value>) -> Option<LlmUsage> {
    let cost = metadata.get("llm_cost")?.as_object()?;
    let model = cost
        .get("model")
        .or_else(|| metadata.get("model"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Some(LlmUsage {
        model,
        input_tokens: token_count(cost.get("input_tokens")).unwrap_or(0),
        output_tokens: token_count(cost.get("output_tokens")).unwrap_or(0),
        cached_tokens: token_count(cost.get("cached_tokens")).unwrap_or(0),
        reasoning_tokens: token_count(cost.get("reasoning_tokens")).unwrap_or(0),
        cost: cost.get("total_cost_usd").or_else(|| cost.get("cost_usd")).and_then(Money::from_json),
    })
}

/// The origin of a usage record's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostSource {
    /// Sent by the client.
    Client,
    /// Computed from the price table.
    Computed,
}

impl CostSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CostSource::Client => "client",
            CostSource::Computed => "computed",
        }
    }
}

/// One usage record as the API shows it: posted by a client, or derived
/// from an `llm` span's `metadata.llm_cost` (then its id is the span's id).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub id: String,
    pub agent_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    /// `None` when the client sent no cost and the model has no price.
    pub cost: Option<Money>,
    pub cost_source: Option<CostSource>,
    /// Microseconds since the Unix epoch.
    pub timestamp: i64,
    /// Whether a client posted it (`false`: derived from a span).
    pub posted: bool,
}

impl UsageRecord {
    pub fn total_tokens(&self) -> i64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Derives the record of an `llm` span that reports `metadata.llm_cost`.
    /// `trace_agent` is the agent of the span's trace, when known. A cost of
    /// exactly 0 counts as none, since the harness sends 0.0 when the
    /// provider returned no cost.
    pub fn from_span(span_id: &str, span: &SpanFields, trace_agent: Option<&str>, first_seen: i64) -> Option<UsageRecord> {
        if span.span_type.as_deref() != Some("llm") {
            return None;
        }
        let metadata = span.metadata.as_ref()?;
        let usage = llm_usage(metadata)?;
        let agent_id = trace_agent
            .map(str::to_string)
            .or_else(|| metadata.get("agent_id").and_then(Value::as_str).map(str::to_string));
        let cost = usage.cost.filter(|cost| cost.0 != 0);
        Some(UsageRecord {
            id: span_id.to_string(),
            agent_id,
            trace_id: span.trace_id.clone(),
            span_id: Some(span_id.to_string()),
            model: usage.model,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            cost_source: cost.map(|_| CostSource::Client),
            cost,
            timestamp: span.ended_at.or(span.started_at).unwrap_or(first_seen),
            posted: false,
        })
    }

    /// Builds the record of a usage state posted by a client.
    pub fn from_posted(id: &str, fields: &UsageFields, first_seen: i64) -> UsageRecord {
        let cost = fields.cost_nanos.map(|nanos| Money(nanos as i128));
        UsageRecord {
            id: id.to_string(),
            agent_id: fields.agent_id.clone(),
            trace_id: fields.trace_id.clone(),
            span_id: fields.span_id.clone(),
            model: fields.model.clone(),
            input_tokens: fields.input_tokens.unwrap_or(0),
            output_tokens: fields.output_tokens.unwrap_or(0),
            cached_tokens: fields.cached_tokens.unwrap_or(0),
            reasoning_tokens: fields.reasoning_tokens.unwrap_or(0),
            cost_source: cost.map(|_| CostSource::Client),
            cost,
            timestamp: fields.timestamp.unwrap_or(first_seen),
            posted: true,
        }
    }

    /// Fills in the cost from `prices` when the client sent none.
    pub fn price(&mut self, prices: &PriceBook) {
        if self.cost.is_some() {
            return;
        }
        let Some(price) = self.model.as_deref().and_then(|model| prices.lookup(model)) else {
            return;
        };
        self.cost = Some(cost_of(&price, self.input_tokens, self.cached_tokens, self.output_tokens));
        self.cost_source = Some(CostSource::Computed);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "agent_id": self.agent_id,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens(),
            "cost_usd": self.cost.map_or(Value::Null, Money::to_json),
            "cost_usd_decimal": self.cost.map(Money::to_decimal_string),
            "cost_source": self.cost_source.map(CostSource::as_str),
            "timestamp": crate::time::format_micros(self.timestamp),
            "source": if self.posted { "client" } else { "span" },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn money_parses_decimals_exactly() {
        assert_eq!(Money::parse_decimal("0.000123"), Some(Money(123_000)));
        assert_eq!(Money::parse_decimal("1.5e-05"), Some(Money(15_000)));
        assert_eq!(Money::parse_decimal("12"), Some(Money(12_000_000_000)));
        assert_eq!(Money::parse_decimal("-0.0000000015"), Some(Money(-2)));
        assert_eq!(Money::parse_decimal("0.0000000004"), Some(Money(0)));
        assert_eq!(Money::parse_decimal("abc"), None);
        assert_eq!(Money::parse_decimal("1e400"), None);
    }

    #[test]
    fn money_sums_do_not_drift() {
        let total: Money = (0..1000).map(|_| Money::parse_decimal("0.1").unwrap()).sum();
        assert_eq!(total.to_decimal_string(), "100.000000000");
        assert_eq!(Money(123_000).to_json(), json!(0.000123));
    }

    #[test]
    fn llm_usage_reads_harness_metadata() {
        let metadata = json!({"llm_cost": {"model": "openai/gpt-4o-mini", "input_tokens": 1200, "output_tokens": 80.0,
            "cached_tokens": 1000, "reasoning_tokens": "5", "total_cost_usd": 0.000243}});
        let usage = llm_usage(metadata.as_object().unwrap()).unwrap();
        assert_eq!(usage.model.as_deref(), Some("openai/gpt-4o-mini"));
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.reasoning_tokens), (1200, 80, 1000, 5));
        assert_eq!(usage.cost, Some(Money(243_000)));
        assert_eq!(usage.total_tokens(), 1280);
    }
}

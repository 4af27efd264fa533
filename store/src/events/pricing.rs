//! Model prices and the cost of one model call.
//!
//! Prices are in nano-dollars per million tokens, for uncached input, cached
//! input and output. A model name is matched exactly first, then in its
//! normalised form: lower case, without a provider prefix (`openai/`), a
//! variant suffix (`:free`) or a date suffix (`-2024-08-06`, `-20241022`,
//! `-latest`). An organization's overrides win over the built-in table at
//! each step.

use super::usage::Money;

/// The price of one model, per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: Money,
    pub cached_input: Money,
    pub output: Money,
}

/// One row of a price table.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    pub model: String,
    pub price: Price,
}

/// List prices in USD per million tokens (uncached input, cached input,
/// output) that the providers published for these models, as of 2025.
/// NOTE: providers change prices; an organization corrects a stale row with
/// an override at `/api/cloud/model-prices/`.
const BUILT_IN: &[(&str, &str, &str, &str)] = &[
    ("gpt-4o", "2.50", "1.25", "10.00"),
    ("gpt-4o-mini", "0.15", "0.075", "0.60"),
    ("gpt-4.1", "2.00", "0.50", "8.00"),
    ("gpt-4.1-mini", "0.40", "0.10", "1.60"),
    ("gpt-4.1-nano", "0.10", "0.025", "0.40"),
    ("gpt-5", "1.25", "0.125", "10.00"),
    ("gpt-5-mini", "0.25", "0.025", "2.00"),
    ("gpt-5-nano", "0.05", "0.005", "0.40"),
    ("o3", "2.00", "0.50", "8.00"),
    ("o4-mini", "1.10", "0.275", "4.40"),
    ("claude-opus-4", "15.00", "1.50", "75.00"),
    ("claude-opus-4-1", "15.00", "1.50", "75.00"),
    ("claude-sonnet-4", "3.00", "0.30", "15.00"),
    ("claude-sonnet-4-5", "3.00", "0.30", "15.00"),
    ("claude-3-7-sonnet", "3.00", "0.30", "15.00"),
    ("claude-3-5-sonnet", "3.00", "0.30", "15.00"),
    ("claude-haiku-4-5", "1.00", "0.10", "5.00"),
    ("claude-3-5-haiku", "0.80", "0.08", "4.00"),
    ("gemini-2.5-pro", "1.25", "0.31", "10.00"),
    ("gemini-2.5-flash", "0.30", "0.075", "2.50"),
    ("gemini-2.0-flash", "0.10", "0.025", "0.40"),
];

fn parse_price(input: &str, cached_input: &str, output: &str) -> Price {
    let money = |text: &str| Money::parse_decimal(text).expect("built-in prices are decimal numbers");
    Price { input: money(input), cached_input: money(cached_input), output: money(output) }
}

static BUILT_IN_PRICES: std::sync::LazyLock<Vec<ModelPrice>> = std::sync::LazyLock::new(|| {
    BUILT_IN
        .iter()
        .map(|(model, input, cached, output)| ModelPrice { model: (*model).to_string(), price: parse_price(input, cached, output) })
        .collect()
});

/// Returns the built-in price table.
pub fn built_in_prices() -> &'static [ModelPrice] {
    &BUILT_IN_PRICES
}

/// Normalises a model name for the second matching step.
pub fn normalize_model(name: &str) -> String {
    let mut name = name.trim().to_lowercase();
    if let Some(at) = name.rfind('/') {
        name = name[at + 1..].to_string();
    }
    if let Some(at) = name.find(':') {
        name.truncate(at);
    }
    if let Some(stripped) = name.strip_suffix("-latest") {
        name = stripped.to_string();
    }
    // `-YYYY-MM-DD` (OpenAI) or `-YYYYMMDD` (Anthropic).
    let bytes = name.as_bytes();
    let is_digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    let n = bytes.len();
    let dashed_date = n > 11
        && bytes[n - 11] == b'-'
        && bytes[n - 6] == b'-'
        && bytes[n - 3] == b'-'
        && is_digits(n - 10..n - 6)
        && is_digits(n - 5..n - 3)
        && is_digits(n - 2..n);
    if dashed_date {
        name.truncate(n - 11);
    } else if n > 9 && bytes[n - 9] == b'-' && is_digits(n - 8..n) {
        name.truncate(n - 9);
    }
    name
}

/// A built-in table plus one organization's overrides.
#[derive(Debug, Clone)]
pub struct PriceBook {
    overrides: Vec<ModelPrice>,
}

impl PriceBook {
    pub fn new(overrides: Vec<ModelPrice>) -> PriceBook {
        PriceBook { overrides }
    }

    /// Finds the price of `model`: exact name, then normalised name, with
    /// overrides first at each step.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        let tables: [&[ModelPrice]; 2] = [&self.overrides, &BUILT_IN_PRICES];
        for table in tables {
            if let Some(row) = table.iter().find(|row| row.model == model) {
                return Some(row.price);
            }
        }
        let wanted = normalize_model(model);
        for table in tables {
            if let Some(row) = table.iter().find(|row| normalize_model(&row.model) == wanted) {
                return Some(row.price);
            }
        }
        None
    }
}

/// Computes the cost of a call. Cached tokens are part of the input tokens
/// and are charged once, at the cached rate. Rounds half away from zero to
/// the nano-dollar, once for the whole call.
pub fn cost_of(price: &Price, input_tokens: i64, cached_tokens: i64, output_tokens: i64) -> Money {
    let cached = cached_tokens.clamp(0, input_tokens.max(0)) as i128;
    let uncached = input_tokens.max(0) as i128 - cached;
    let output = output_tokens.max(0) as i128;
    let scaled = uncached * price.input.0 + cached * price.cached_input.0 + output * price.output.0;
    let per_million = 1_000_000i128;
    let quotient = scaled / per_million;
    let remainder = scaled % per_million;
    Money(if remainder * 2 >= per_million { quotient + 1 } else { quotient })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_prefixes_variants_and_dates() {
        assert_eq!(normalize_model("openai/gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(normalize_model("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(normalize_model("anthropic/claude-3-5-sonnet-20241022"), "claude-3-5-sonnet");
        assert_eq!(normalize_model("meta-llama/llama-3:free"), "llama-3");
        assert_eq!(normalize_model("claude-3-5-haiku-latest"), "claude-3-5-haiku");
        assert_eq!(normalize_model("GPT-4.1"), "gpt-4.1");
        assert_eq!(normalize_model("o3"), "o3");
    }

    #[test]
    fn built_in_prices_convert_exactly() {
        let book = PriceBook::new(Vec::new());
        let price = book.lookup("openai/gpt-4o-mini").unwrap();
        assert_eq!(price.input, Money(150_000_000));
        assert_eq!(price.cached_input, Money(75_000_000));
        assert_eq!(price.output, Money(600_000_000));
        assert_eq!(book.lookup("unknown-model"), None);
    }

    #[test]
    fn overrides_win_at_each_step() {
        let cheap = Price { input: Money(1), cached_input: Money(1), output: Money(1) };
        let book = PriceBook::new(vec![ModelPrice { model: "openai/gpt-4o".into(), price: cheap }]);
        assert_eq!(book.lookup("openai/gpt-4o"), Some(cheap));
        assert_eq!(book.lookup("gpt-4o-2024-08-06"), Some(cheap), "normalised names match overrides first");
        assert_eq!(book.lookup("gpt-4o"), Some(parse_price("2.50", "1.25", "10.00")), "an exact built-in row beats a normalised override");
    }

    #[test]
    fn cached_tokens_are_charged_once_at_the_cached_rate() {
        let p = parse_price("2.50", "1.25", "10.00");
        // 1000 input of which 800 cached, 100 output:
        // 200 × 2.50/M + 800 × 1.25/M + 100 × 10/M = 0.0005 + 0.001 + 0.001 = 0.0025 USD.
        assert_eq!(cost_of(&p, 1000, 800, 100), Money(2_500_000));
        assert_eq!(cost_of(&p, 1, 0, 0), Money(2_500), "one token at 2.50 USD per million is 2500 nano-dollars");
        let tiny = parse_price("0.0001", "0", "0");
        assert_eq!(cost_of(&tiny, 4, 0, 0), Money(0), "0.4 nano-dollars round down");
        assert_eq!(cost_of(&tiny, 5, 0, 0), Money(1), "0.5 nano-dollars round half away from zero");
    }
}

//! Evaluation semantics, with no I/O: checkpoint outcomes and pass rates,
//! rubrics, criterion scores and the weighted review score.
//!
//! A review's `criterion_scores` maps each criterion to a score, either a
//! number or `{"score": s, "weight": w, "max": m}`. The weighted score is
//! Σ w·(s/m) / Σ w. Weight and max come from the score itself, else from the
//! rubric of the review's eval case, else default to 1.

use std::collections::BTreeMap;

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{ToPrimitive, Zero};
use serde_json::{json, Map, Value};

/// Whether a checkpoint span passed: its `metadata.passed` is `true`.
/// Anything else (false, absent, a string) counts as not passed.
pub fn checkpoint_passed(metadata: &Map<String, Value>) -> bool {
    matches!(metadata.get("passed"), Some(Value::Bool(true)))
}

/// Returns the scenario a checkpoint belongs to: its `metadata.scenario`
/// when that is a non-empty string.
pub fn checkpoint_scenario(metadata: &Map<String, Value>) -> Option<&str> {
    match metadata.get("scenario") {
        Some(Value::String(scenario)) if !scenario.is_empty() => Some(scenario),
        _ => None,
    }
}

/// passed / total, or `None` for an empty set.
pub fn pass_rate(passed: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| passed as f64 / total as f64)
}

/// Returns the value a tag gives for an `agent_tag:<prefix>` grouping: the
/// text after `<prefix>:`, so `git-sha:abc` gives `abc` for the prefix `git-sha`.
pub fn tag_value<'a>(tag: &'a str, prefix: &str) -> Option<&'a str> {
    tag.strip_prefix(prefix)?.strip_prefix(':')
}

/// Maximum length of a criterion name, in bytes.
pub const MAX_CRITERION_BYTES: usize = 255;
/// Maximum number of criteria in one review or one rubric.
pub const MAX_CRITERIA: usize = 200;

/// A problem with an input value, at a dotted field path such as
/// `criterion_scores.accuracy.weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
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

/// Reads a finite JSON number, or returns the reason it is not one.
fn finite_number(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(number) => match number.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err("Must be a finite number.".into()),
        },
        other => Err(format!("A valid number is required: got {}.", type_name(other))),
    }
}

/// Reads an optional weight: a finite number of at least 0.
fn read_weight(value: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<f64> {
    match value {
        None | Some(Value::Null) => None,
        Some(value) => match finite_number(value) {
            Ok(weight) if weight >= 0.0 => Some(weight),
            Ok(_) => {
                errors.push(error(field, "Ensure this value is greater than or equal to 0."));
                None
            }
            Err(message) => {
                errors.push(error(field, message));
                None
            }
        },
    }
}

/// Reads an optional maximum score: a finite number above 0.
fn read_max(value: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<f64> {
    match value {
        None | Some(Value::Null) => None,
        Some(value) => match finite_number(value) {
            Ok(max) if max > 0.0 => Some(max),
            Ok(_) => {
                errors.push(error(field, "Ensure this value is greater than 0."));
                None
            }
            Err(message) => {
                errors.push(error(field, message));
                None
            }
        },
    }
}

fn check_criterion_name(name: &str, field: &str, errors: &mut Vec<FieldError>) -> bool {
    if name.trim().is_empty() {
        errors.push(error(field, "Criterion names may not be blank."));
        false
    } else if name.len() > MAX_CRITERION_BYTES {
        errors.push(error(field, format!("Criterion names are at most {MAX_CRITERION_BYTES} bytes long.")));
        false
    } else {
        true
    }
}

/// One criterion of a rubric.
#[derive(Debug, Clone, PartialEq)]
pub struct RubricItem {
    pub criterion: String,
    pub weight: f64,
    pub max: f64,
    pub description: String,
}

impl RubricItem {
    pub fn to_json(&self) -> Value {
        json!({
            "criterion": self.criterion,
            "weight": self.weight,
            "max": self.max,
            "description": self.description,
        })
    }
}

/// Reads a rubric: a list of `{"criterion", "weight", "max", "description"}`
/// with unique criterion names; weight defaults to 1 and max to 1. `null`
/// is the empty rubric. Errors name `rubric.<index>.<key>`.
pub fn parse_rubric(value: &Value) -> Result<Vec<RubricItem>, Vec<FieldError>> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(vec![error("rubric", format!("Expected a list of criteria, but got {}.", type_name(other)))]),
    };
    if items.len() > MAX_CRITERIA {
        return Err(vec![error("rubric", format!("Ensure this list has no more than {MAX_CRITERIA} criteria."))]);
    }
    let mut errors = Vec::new();
    let mut rubric: Vec<RubricItem> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = |key: &str| format!("rubric.{index}.{key}");
        let Value::Object(item) = item else {
            errors.push(error(format!("rubric.{index}"), format!("Expected an object, but got {}.", type_name(item))));
            continue;
        };
        for key in item.keys() {
            if !["criterion", "weight", "max", "description"].contains(&key.as_str()) {
                errors.push(error(at(key), "Unknown key: use criterion, weight, max and description."));
            }
        }
        let criterion = match item.get("criterion") {
            Some(Value::String(name)) => {
                if check_criterion_name(name, &at("criterion"), &mut errors) {
                    if rubric.iter().any(|known| known.criterion == *name) {
                        errors.push(error(at("criterion"), format!("The criterion \"{name}\" appears twice.")));
                    }
                    Some(name.clone())
                } else {
                    None
                }
            }
            None | Some(Value::Null) => {
                errors.push(error(at("criterion"), "This field is required."));
                None
            }
            Some(other) => {
                errors.push(error(at("criterion"), format!("Not a valid string: got {}.", type_name(other))));
                None
            }
        };
        let weight = read_weight(item.get("weight"), &at("weight"), &mut errors);
        let max = read_max(item.get("max"), &at("max"), &mut errors);
        let description = match item.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => {
                errors.push(error(at("description"), format!("Not a valid string: got {}.", type_name(other))));
                String::new()
            }
        };
        if let Some(criterion) = criterion {
            rubric.push(RubricItem { criterion, weight: weight.unwrap_or(1.0), max: max.unwrap_or(1.0), description });
        }
    }
    if errors.is_empty() {
        Ok(rubric)
    } else {
        Err(errors)
    }
}

/// One criterion's score as the review gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionScore {
    pub score: f64,
    pub weight: Option<f64>,
    pub max: Option<f64>,
}

/// Reads `criterion_scores`: an object from criterion name to a number or to
/// `{"score", "weight", "max", "comment"}`. `null` is no scores. Errors name
/// `criterion_scores.<criterion>` or `criterion_scores.<criterion>.<key>`.
pub fn parse_criterion_scores(value: &Value) -> Result<BTreeMap<String, CriterionScore>, Vec<FieldError>> {
    let entries = match value {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(entries) => entries,
        other => {
            return Err(vec![error(
                "criterion_scores",
                format!("Expected an object of criterion scores, but got {}.", type_name(other)),
            )])
        }
    };
    if entries.len() > MAX_CRITERIA {
        return Err(vec![error("criterion_scores", format!("Ensure there are no more than {MAX_CRITERIA} criteria."))]);
    }
    let mut errors = Vec::new();
    let mut scores = BTreeMap::new();
    for (name, entry) in entries {
        let field = format!("criterion_scores.{name}");
        if !check_criterion_name(name, &field, &mut errors) {
            continue;
        }
        let parsed = match entry {
            Value::Object(parts) => {
                for key in parts.keys() {
                    if !["score", "weight", "max", "comment"].contains(&key.as_str()) {
                        errors.push(error(format!("{field}.{key}"), "Unknown key: use score, weight, max and comment."));
                    }
                }
                if let Some(comment) = parts.get("comment").filter(|c| !c.is_null() && !c.is_string()) {
                    errors.push(error(format!("{field}.comment"), format!("Not a valid string: got {}.", type_name(comment))));
                }
                let weight = read_weight(parts.get("weight"), &format!("{field}.weight"), &mut errors);
                let max = read_max(parts.get("max"), &format!("{field}.max"), &mut errors);
                match parts.get("score") {
                    None | Some(Value::Null) => {
                        errors.push(error(format!("{field}.score"), "This field is required."));
                        None
                    }
                    Some(score) => match finite_number(score) {
                        Ok(score) => Some(CriterionScore { score, weight, max }),
                        Err(message) => {
                            errors.push(error(format!("{field}.score"), message));
                            None
                        }
                    },
                }
            }
            Value::Number(_) => match finite_number(entry) {
                Ok(score) => Some(CriterionScore { score, weight: None, max: None }),
                Err(message) => {
                    errors.push(error(&field, message));
                    None
                }
            },
            other => {
                errors.push(error(
                    &field,
                    format!("Expected a number or {{\"score\", \"weight\", \"max\"}}, but got {}.", type_name(other)),
                ));
                None
            }
        };
        if let Some(parsed) = parsed {
            scores.insert(name.clone(), parsed);
        }
    }
    if errors.is_empty() {
        Ok(scores)
    } else {
        Err(errors)
    }
}

/// Checks that every scored criterion is one of the rubric's. Used when a
/// review is written against an eval case.
pub fn check_against_rubric(scores: &BTreeMap<String, CriterionScore>, rubric: &[RubricItem]) -> Result<(), Vec<FieldError>> {
    let names: Vec<&str> = rubric.iter().map(|item| item.criterion.as_str()).collect();
    let errors: Vec<FieldError> = scores
        .keys()
        .filter(|name| !names.contains(&name.as_str()))
        .map(|name| {
            error(
                format!("criterion_scores.{name}"),
                format!("Not a criterion of the eval case's rubric; its criteria are: {}.", names.join(", ")),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A criterion with the weight and max that apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedScore {
    pub criterion: String,
    pub score: f64,
    pub weight: f64,
    pub max: f64,
}

impl ResolvedScore {
    /// Returns the score as a fraction of its max.
    pub fn normalized(&self) -> f64 {
        self.score / self.max
    }
}

/// Gives each score its weight and max: the score's own, else the rubric's
/// for that criterion, else 1. Criteria come out in name order.
pub fn resolve_scores(scores: &BTreeMap<String, CriterionScore>, rubric: &[RubricItem]) -> Vec<ResolvedScore> {
    scores
        .iter()
        .map(|(name, given)| {
            let item = rubric.iter().find(|item| item.criterion == *name);
            ResolvedScore {
                criterion: name.clone(),
                score: given.score,
                weight: given.weight.or(item.map(|item| item.weight)).unwrap_or(1.0),
                max: given.max.or(item.map(|item| item.max)).unwrap_or(1.0),
            }
        })
        .collect()
}

/// Σ w·(s/m) / Σ w, or `None` when there are no criteria or every weight is 0.
///
/// Every number is taken as the decimal it was written as (the shortest
/// decimal that reads back as the same double), the sums are exact rational
/// arithmetic, and only the result is rounded, once, to the nearest double.
/// So 0.1, 0.2 and 0.3 weigh as those decimals, and the order the criteria
/// were sent in cannot change the last bit. A score above its max or below 0
/// is kept as given, so the result can leave [0, 1]; a result too large for a
/// double is `None`.
pub fn weighted_score(scores: &[ResolvedScore]) -> Option<f64> {
    let mut weighted = BigRational::zero();
    let mut weights = BigRational::zero();
    for item in scores {
        let weight = exact_decimal(item.weight);
        weighted += &weight * exact_decimal(item.score) / exact_decimal(item.max);
        weights += weight;
    }
    if weights.is_zero() {
        return None;
    }
    let score = (weighted / weights).to_f64()?;
    score.is_finite().then_some(score)
}

/// Returns the shortest decimal that reads back as `x`, as an exact fraction.
/// `x` must be finite.
fn exact_decimal(x: f64) -> BigRational {
    // `{:e}` prints the shortest round-trip digits: "-1.25e-3", "8e-1".
    let text = format!("{x:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: BigInt = format!("{whole}{fraction}").parse().unwrap_or_default();
    let scale = exponent - fraction.len() as i64;
    let ten = BigInt::from(10u8);
    let power = num_traits::pow(ten, scale.unsigned_abs() as usize);
    let value = if scale >= 0 {
        BigRational::from_integer(digits * power)
    } else {
        BigRational::new(digits, power)
    };
    if negative {
        -value
    } else {
        value
    }
}

/// Returns the `q`-quantile (0 ≤ q ≤ 1) of `sorted` values by linear interpolation
/// between closest ranks (the default of NumPy and of `percentile_cont`), or
/// `None` for no values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lower = position.floor() as usize;
    let upper = position.ceil() as usize;
    let fraction = position - lower as f64;
    Some(sorted[lower] + (sorted[upper] - sorted[lower]) * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn score_of(scores: Value, rubric: Value) -> Option<f64> {
        let scores = parse_criterion_scores(&scores).expect("valid scores");
        let rubric = parse_rubric(&rubric).expect("valid rubric");
        weighted_score(&resolve_scores(&scores, &rubric))
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn checkpoint_passes_only_on_true() {
        let passed = json!({"passed": true});
        let failed = json!({"passed": "true"});
        assert!(checkpoint_passed(passed.as_object().unwrap()));
        assert!(!checkpoint_passed(failed.as_object().unwrap()));
        assert!(!checkpoint_passed(&Map::new()));
    }

    #[test]
    fn pass_rate_of_empty_set_is_none() {
        assert_eq!(pass_rate(0, 0), None);
        assert_eq!(pass_rate(2, 3), Some(2.0 / 3.0));
    }

    #[test]
    fn tag_value_takes_the_text_after_the_prefix_and_colon() {
        assert_eq!(tag_value("git-sha:abc", "git-sha"), Some("abc"));
        assert_eq!(tag_value("git-sha:", "git-sha"), Some(""));
        assert_eq!(tag_value("git-shaX:abc", "git-sha"), None);
        assert_eq!(tag_value("git-sha", "git-sha"), None);
        assert_eq!(tag_value("env:prod:eu", "env"), Some("prod:eu"));
    }

    #[test]
    fn no_criteria_gives_no_score() {
        assert_eq!(score_of(json!({}), json!(null)), None);
        assert_eq!(score_of(json!(null), json!([])), None);
    }

    #[test]
    fn all_weights_zero_gives_no_score() {
        assert_eq!(score_of(json!({"a": {"score": 1, "weight": 0}, "b": {"score": 0.5, "weight": 0}}), json!(null)), None);
    }

    #[test]
    fn number_form_uses_weight_one_and_max_one() {
        assert_eq!(score_of(json!({"a": 1, "b": 0.5}), json!(null)), Some(0.75));
    }

    #[test]
    fn object_form_weighs_and_scales() {
        // (3 * 4/5 + 1 * 1/2) / 4 = 2.9 / 4
        let score = score_of(json!({"a": {"score": 4, "max": 5, "weight": 3}, "b": {"score": 0.5}}), json!(null));
        assert_eq!(score, Some(0.725));
    }

    #[test]
    fn score_above_max_and_negative_scores_are_kept() {
        assert_eq!(score_of(json!({"a": {"score": 10, "max": 5}}), json!(null)), Some(2.0));
        assert_eq!(score_of(json!({"a": -1, "b": 1}), json!(null)), Some(0.0));
        assert_eq!(score_of(json!({"a": -2}), json!(null)), Some(-2.0));
    }

    #[test]
    fn weights_and_max_come_from_the_rubric_unless_the_score_gives_them() {
        let rubric = json!([
            {"criterion": "accuracy", "weight": 3, "max": 10},
            {"criterion": "style", "weight": 1, "max": 5},
        ]);
        // accuracy: 3 * 0.8; style: own weight 2, rubric max 5 -> 2 * 0.6.
        let score = score_of(json!({"accuracy": 8, "style": {"score": 3, "weight": 2}}), rubric);
        // (2.4 + 1.2) / 5 = 0.72
        assert_eq!(score, Some(0.72));
    }

    #[test]
    fn a_criterion_missing_from_the_rubric_uses_the_defaults_on_read() {
        let rubric = json!([{"criterion": "accuracy", "weight": 3, "max": 10}]);
        assert_eq!(score_of(json!({"accuracy": 10, "other": 0}), rubric), Some(0.75));
    }

    #[test]
    fn unknown_criteria_are_reported_against_a_rubric() {
        let rubric = parse_rubric(&json!([{"criterion": "accuracy"}])).unwrap();
        let scores = parse_criterion_scores(&json!({"accuracy": 1, "speed": 1, "tone": 0})).unwrap();
        let errors = check_against_rubric(&scores, &rubric).unwrap_err();
        assert_eq!(fields(errors), vec!["criterion_scores.speed", "criterion_scores.tone"]);
    }

    #[test]
    fn strings_and_other_types_are_rejected_with_their_field() {
        let errors = parse_criterion_scores(&json!({"a": "0.5", "b": true, "c": [1], "d": {"score": "1"}})).unwrap_err();
        assert_eq!(fields(errors), vec!["criterion_scores.a", "criterion_scores.b", "criterion_scores.c", "criterion_scores.d.score"]);
        let errors = parse_criterion_scores(&json!([1, 2])).unwrap_err();
        assert_eq!(fields(errors), vec!["criterion_scores"]);
    }

    #[test]
    fn weights_must_be_non_negative_and_max_positive() {
        let errors = parse_criterion_scores(&json!({"a": {"score": 1, "weight": -1}, "b": {"score": 1, "max": 0}})).unwrap_err();
        assert_eq!(fields(errors), vec!["criterion_scores.a.weight", "criterion_scores.b.max"]);
        let errors = parse_rubric(&json!([{"criterion": "a", "weight": -0.5, "max": -1}])).unwrap_err();
        assert_eq!(fields(errors), vec!["rubric.0.weight", "rubric.0.max"]);
    }

    #[test]
    fn object_scores_need_a_score_and_known_keys() {
        let errors = parse_criterion_scores(&json!({"a": {"weight": 1}, "b": {"score": 1, "wieght": 2}})).unwrap_err();
        assert_eq!(fields(errors), vec!["criterion_scores.a.score", "criterion_scores.b.wieght"]);
    }

    #[test]
    fn huge_finite_numbers_are_accepted_and_overflow_gives_no_score() {
        // 1e308 * 1e308 overflows: the score is not a finite number, so none is given.
        let scores = parse_criterion_scores(&json!({"a": {"score": 1e308, "weight": 1e308, "max": 1e-308}})).unwrap();
        assert_eq!(weighted_score(&resolve_scores(&scores, &[])), None);
        assert_eq!(score_of(json!({"a": 1e300}), json!(null)), Some(1e300));
    }

    #[test]
    fn non_finite_values_cannot_be_parsed_from_numbers() {
        // serde_json never stores NaN in a Number; a Value made from NaN is null,
        // which an object score reports as a missing score.
        let nan = serde_json::to_value(f64::NAN).unwrap();
        let errors = parse_criterion_scores(&json!({"a": {"score": nan}})).unwrap_err();
        assert_eq!(fields(errors), vec!["criterion_scores.a.score"]);
        let errors = parse_criterion_scores(&json!({"a": nan})).unwrap_err();
        assert_eq!(fields(errors), vec!["criterion_scores.a"]);
    }

    #[test]
    fn the_score_does_not_depend_on_the_order_criteria_were_sent() {
        let a: Value = serde_json::from_str(r#"{"x": 0.1, "y": 0.2, "z": 0.3}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"z": 0.3, "y": 0.2, "x": 0.1}"#).unwrap();
        assert_eq!(score_of(a, json!(null)).unwrap().to_bits(), score_of(b, json!(null)).unwrap().to_bits());
    }

    #[test]
    fn sums_are_exact_and_rounded_once() {
        // In doubles, 1e16 + 1 - 1e16 is 0 and 3 * (4 / 5) is 2.4000000000000004.
        let scores = [
            ResolvedScore { criterion: "a".into(), score: 1.0, weight: 1e16, max: 1.0 },
            ResolvedScore { criterion: "b".into(), score: 1.0, weight: 1.0, max: 1.0 },
            ResolvedScore { criterion: "c".into(), score: -1.0, weight: 1e16, max: 1.0 },
        ];
        assert_eq!(weighted_score(&scores), Some(1.0 / (2e16 + 1.0)));
        assert_eq!(score_of(json!({"a": 0.1, "b": 0.2, "c": 0.3}), json!(null)), Some(0.2));
        assert_eq!(score_of(json!({"a": {"score": 1, "max": 3}, "b": {"score": 2, "max": 3}}), json!(null)), Some(0.5));
    }

    #[test]
    fn decimals_are_read_as_written() {
        assert_eq!(exact_decimal(0.8), BigRational::new(BigInt::from(4), BigInt::from(5)));
        assert_eq!(exact_decimal(-1.25e-3), BigRational::new(BigInt::from(-1), BigInt::from(800)));
        assert_eq!(exact_decimal(1e20), BigRational::from_integer(BigInt::from(100_000_000_000_000_000_000u128)));
        assert_eq!(exact_decimal(0.0), BigRational::zero());
    }

    #[test]
    fn rubrics_need_unique_named_criteria() {
        let errors = parse_rubric(&json!([{"criterion": "a"}, {"criterion": "a"}, {"weight": 1}, {"criterion": " "}, 5])).unwrap_err();
        assert_eq!(fields(errors), vec!["rubric.1.criterion", "rubric.2.criterion", "rubric.3.criterion", "rubric.4"]);
        let rubric = parse_rubric(&json!([{"criterion": "a", "description": "Is it right?"}])).unwrap();
        assert_eq!(rubric[0], RubricItem { criterion: "a".into(), weight: 1.0, max: 1.0, description: "Is it right?".into() });
    }

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let values = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&values, 0.0), Some(1.0));
        assert_eq!(quantile(&values, 0.25), Some(1.75));
        assert_eq!(quantile(&values, 0.5), Some(2.5));
        assert_eq!(quantile(&values, 0.75), Some(3.25));
        assert_eq!(quantile(&values, 1.0), Some(4.0));
        assert_eq!(quantile(&[7.0], 0.25), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}

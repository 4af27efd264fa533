//! Evaluation semantics, with no I/O: checkpoint outcomes and pass rates.

use serde_json::{Map, Value};

/// Whether a checkpoint span passed: its `metadata.passed` is `true`.
/// Anything else (false, absent, a string) counts as not passed.
pub fn checkpoint_passed(metadata: &Map<String, Value>) -> bool {
    matches!(metadata.get("passed"), Some(Value::Bool(true)))
}

/// passed / total, or `None` for an empty set.
pub fn pass_rate(passed: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| passed as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}

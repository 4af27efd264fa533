//! JSON Merge Patch (RFC 7396) for `metadata`, and the composition of two
//! patches into one, so that partial states can be merged before their base
//! (the create) has arrived.

use serde_json::{Map, Value};

/// Applies `patch` to `target`: objects merge recursively, `null` removes a
/// key, and any other value replaces.
pub fn apply_merge_patch(mut target: Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    for (key, change) in patch {
        match change {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner_patch) => {
                let inner_target = match target.remove(key) {
                    Some(Value::Object(existing)) => existing,
                    _ => Map::new(),
                };
                target.insert(key.clone(), Value::Object(apply_merge_patch(inner_target, inner_patch)));
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
    target
}

/// Returns one patch with the effect of applying `first`, then `second`.
///
/// NOTE: exact except in one case that RFC 7396 cannot express: when `first`
/// sets a key to a non-object or removes it, and `second` patches that key
/// with an object,
/// the composed patch merges into the target's value instead of replacing
/// it. Real clients send whole metadata objects on every close, so the case
/// needs a key that changes from a scalar to an object between two updates.
pub fn compose_merge_patches(first: &Map<String, Value>, second: &Map<String, Value>) -> Map<String, Value> {
    let mut composed = first.clone();
    for (key, change) in second {
        match (composed.get_mut(key), change) {
            (Some(Value::Object(earlier)), Value::Object(later)) => {
                let merged = compose_merge_patches(earlier, later);
                *earlier = merged;
            }
            (Some(earlier), Value::Object(later)) if !earlier.is_object() => {
                // `first` replaced the key with a scalar; applying `second` to it
                // gives the object with second's nulls dropped.
                *earlier = Value::Object(apply_merge_patch(Map::new(), later));
            }
            _ => {
                composed.insert(key.clone(), change.clone());
            }
        }
    }
    composed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7396_examples() {
        let target = object(json!({"a": "b", "c": {"d": "e", "f": "g"}}));
        let patch = object(json!({"a": "z", "c": {"f": null}}));
        assert_eq!(Value::Object(apply_merge_patch(target, &patch)), json!({"a": "z", "c": {"d": "e"}}));

        let target = object(json!({"a": [1, 2], "b": 1}));
        let patch = object(json!({"a": {"x": 1}, "b": null, "n": {"k": null}}));
        assert_eq!(Value::Object(apply_merge_patch(target, &patch)), json!({"a": {"x": 1}, "n": {}}));
    }

    #[test]
    fn composed_patch_equals_sequential_application() {
        let target = object(json!({"a": 1, "b": {"x": 1, "y": 2}, "c": "keep", "d": {"deep": {"v": 1}}}));
        let first = object(json!({"a": null, "b": {"x": 9}, "e": 5, "d": {"deep": {"w": 2}}}));
        let second = object(json!({"a": 3, "b": {"y": null}, "e": null, "d": {"deep": null}}));
        let sequential = apply_merge_patch(apply_merge_patch(target.clone(), &first), &second);
        let composed = apply_merge_patch(target, &compose_merge_patches(&first, &second));
        assert_eq!(sequential, composed);
        assert_eq!(Value::Object(sequential), json!({"a": 3, "b": {"x": 9}, "c": "keep", "d": {}}));
    }
}

//! What the property tests of outside input share: the proptest settings, any
//! JSON document, and edits that mutate a real document somewhere down its tree
//! (a sample of what a platform sends, with one member replaced or removed).

use proptest::prelude::*;
use serde_json::Value;

/// The settings of every fuzz suite: `PROPTEST_CASES` sets the count (`default()`
/// reads it); a failure is kept as a regular test, not in a file beside the source.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, `depth` levels deep with up to `width` members per level; its
/// strings are any text or, as often, what `strings` makes (the alphabet of the
/// format under test: ids, mentions, paths).
pub fn json_value(
    strings: impl Strategy<Value = String> + 'static,
    depth: u32,
    width: usize,
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        strings.prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 4 << depth, width as u32, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..width).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..width)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Edits of a JSON document for [`edit`]: where (a path picked by the number) and
/// what goes there (`None` removes it).
pub fn edits(
    values: impl Strategy<Value = Value> + 'static,
) -> impl Strategy<Value = Vec<(usize, Option<Value>)>> {
    prop::collection::vec((any::<usize>(), prop::option::of(values)), 1..4)
}

/// Replaces (or removes) one member, somewhere down the document `pick` leads to.
pub fn edit(v: &mut Value, pick: usize, new: Option<Value>) {
    let here = pick.is_multiple_of(3);
    match v {
        Value::Object(map) if !map.is_empty() => {
            let Some(key) = map.keys().nth(pick % map.len()).cloned() else {
                return;
            };
            match (here, new) {
                (true, Some(n)) => drop(map.insert(key, n)),
                (true, None) => drop(map.remove(&key)),
                (false, new) => {
                    if let Some(child) = map.get_mut(&key) {
                        edit(child, pick / 3, new);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = pick % items.len();
            match (here, new) {
                (true, Some(n)) => items[i] = n,
                (true, None) => drop(items.remove(i)),
                (false, new) => edit(&mut items[i], pick / 3, new),
            }
        }
        _ => {
            if let Some(n) = new {
                *v = n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_edit_reaches_the_member_its_number_picks() {
        let mut doc = json!({"a": 1, "b": {"c": [1, 2]}});
        // 0: here, the first key ("a").
        edit(&mut doc, 0, Some(json!("x")));
        assert_eq!(doc, json!({"a": "x", "b": {"c": [1, 2]}}));
        // 1 = not here (1 % 3 != 0), key 1 % 2 = "b"; then 1 / 3 = 0: here, its first key.
        edit(&mut doc, 1, None);
        assert_eq!(doc, json!({"a": "x", "b": {}}));
    }
}

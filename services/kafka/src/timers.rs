//! Due times of a stateful stage's entities: an ordered set of `(due_ms, key)` per partition,
//! from which the engine takes every key that came due.

use std::collections::BTreeSet;

/// Takes the keys due by `now_ms` out of `timers`, earliest first, each key once.
pub fn take_due<K: Ord>(timers: &mut BTreeSet<(i64, K)>, now_ms: i64) -> Vec<K> {
    let mut due: Vec<K> = Vec::new();
    while let Some((at, key)) = timers.pop_first() {
        if at > now_ms {
            timers.insert((at, key));
            break;
        }
        if !due.contains(&key) {
            due.push(key);
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_due_are_taken_once_each_in_order() {
        let mut timers: BTreeSet<(i64, &str)> = [(5, "b"), (1, "a"), (3, "b"), (9, "c")]
            .into_iter()
            .collect();
        assert_eq!(take_due(&mut timers, 5), vec!["a", "b"]);
        assert_eq!(timers.into_iter().collect::<Vec<_>>(), vec![(9, "c")]);
    }
}

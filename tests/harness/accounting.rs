//! The exact accounting every fault test prints and asserts on: what a client sent, what was
//! acknowledged (2xx) or refused (by status), and what Kafka holds afterwards, matched by id, so
//! a loss or a duplicate is named rather than hidden in a count.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One fault scenario's books. `lost` and `duplicated` come from [`Accounting::reconcile`].
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    /// The scenario's name, printed first (`faults/broker-frozen`).
    pub name: String,
    pub sent: u64,
    /// Answered 2xx (for consumers: inputs the broker acknowledged).
    pub acknowledged: u64,
    /// Answered with another status, by status code.
    pub refused: BTreeMap<u16, u64>,
    /// Requests that got no answer at all (connection reset, client timeout).
    pub unanswered: u64,
    /// Records found in Kafka (every copy counted).
    pub found_in_kafka: u64,
    /// Acknowledged (or expected) ids found nowhere in Kafka.
    pub lost: u64,
    /// Extra copies of ids found more than once.
    pub duplicated: u64,
    /// Ids found in Kafka that were never acknowledged: allowed (at-least-once: a publish can
    /// succeed after its answer was lost), but shown.
    pub unacknowledged_found: u64,
    /// A few lost and duplicated ids, to start the investigation from.
    pub examples: Vec<String>,
}

impl Accounting {
    pub fn new(name: impl Into<String>) -> Accounting {
        Accounting {
            name: name.into(),
            ..Accounting::default()
        }
    }

    /// Matches the ids that must be in Kafka (`expected`: acknowledged webhook ids, or the
    /// deterministic ids of the outputs a consumer owes) against the ids found there, one entry
    /// per record, and fills `found_in_kafka`, `lost`, `duplicated` and `unacknowledged_found`.
    pub fn reconcile<'a>(
        &mut self,
        expected: impl IntoIterator<Item = &'a str>,
        found: impl IntoIterator<Item = &'a str>,
    ) -> &mut Self {
        let expected: BTreeSet<&str> = expected.into_iter().collect();
        let mut copies = BTreeMap::<&str, u64>::new();
        for id in found {
            *copies.entry(id).or_default() += 1;
        }
        self.found_in_kafka = copies.values().sum();
        let lost: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|id| !copies.contains_key(id))
            .collect();
        self.lost = lost.len() as u64;
        let duplicated: Vec<(&str, u64)> = copies
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (*id, *n))
            .collect();
        self.duplicated = duplicated.iter().map(|(_, n)| n - 1).sum();
        self.unacknowledged_found =
            copies.keys().filter(|id| !expected.contains(*id)).count() as u64;
        self.examples = lost
            .iter()
            .take(5)
            .map(|id| format!("lost {id}"))
            .chain(
                duplicated
                    .iter()
                    .take(5)
                    .map(|(id, n)| format!("{n} copies of {id}")),
            )
            .collect();
        self
    }

    /// Prints the line (captured by the test harness, shown with `--nocapture`) and fails the
    /// test on any loss or duplicate.
    pub fn assert_exact(&self) {
        eprintln!("{self}");
        assert!(
            self.lost == 0 && self.duplicated == 0,
            "{self}; for example: {:?}",
            self.examples
        );
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

impl fmt::Display for Accounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: sent {} / acknowledged {}",
            self.name, self.sent, self.acknowledged
        )?;
        if !self.refused.is_empty() {
            let by_status: Vec<String> = self
                .refused
                .iter()
                .map(|(status, n)| format!("{status}×{n}"))
                .collect();
            write!(
                f,
                " / refused {} ({})",
                self.refused_total(),
                by_status.join(", ")
            )?;
        }
        if self.unanswered > 0 {
            write!(f, " / unanswered {}", self.unanswered)?;
        }
        write!(
            f,
            " / found in Kafka {} / lost {} / duplicates {}",
            self.found_in_kafka, self.lost, self.duplicated
        )?;
        if self.unacknowledged_found > 0 {
            write!(
                f,
                " / published unacknowledged {}",
                self.unacknowledged_found
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_id_is_lost_and_an_extra_copy_is_a_duplicate() {
        let mut books = Accounting::new("faults/example");
        books.sent = 4;
        books.acknowledged = 3;
        books.refused.insert(503, 1);
        books.reconcile(["a", "b", "c"], ["a", "a", "b", "d"]);
        assert_eq!(
            (
                books.found_in_kafka,
                books.lost,
                books.duplicated,
                books.unacknowledged_found
            ),
            (4, 1, 1, 1)
        );
        assert_eq!(
            books.to_string(),
            "faults/example: sent 4 / acknowledged 3 / refused 1 (503×1) / found in Kafka 4 / lost 1 / duplicates 1 / published unacknowledged 1"
        );
    }

    #[test]
    fn exact_books_print_the_short_line() {
        let mut books = Accounting::new("faults/broker-frozen");
        books.sent = 2;
        books.acknowledged = 2;
        books.reconcile(["a", "b"], ["b", "a"]);
        books.assert_exact();
        assert_eq!(
            books.to_string(),
            "faults/broker-frozen: sent 2 / acknowledged 2 / found in Kafka 2 / lost 0 / duplicates 0"
        );
    }
}

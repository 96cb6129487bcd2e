//! State kept across a rebalance that hands a partition straight back. The range assignor is
//! eager: every rebalance revokes every partition of every member, and most come back to the
//! member that had them. Reading their changelogs again would stop those partitions for as long
//! as the reads take (minutes for a large state), so a revoked partition's state is set aside
//! with where this member left its changelog and output partitions (where its restore read to,
//! then just past each of its own acknowledged writes), and taken back without a read when they
//! still end there: nobody else wrote to them since, so the state set aside is current.
//!
//! The ends are this member's own account, never asked of the broker at the revoke: the loop
//! hears a revoke between batches, after librdkafka has already rejoined the group, so the next
//! owner may have written by then, and the broker's ends would count its writes as this
//! member's.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};

use super::checkpoint::Checkpoint;

/// Where a state partition's changelog and output partitions end (their high watermarks, in
/// the order of the topics asked), as one comparable value.
pub type Ends = Vec<i64>;

/// The high watermarks of `topics`' partition `partition`, asked of the broker. Blocking: run
/// it on the blocking pool.
pub fn ends_of(
    producer: &FutureProducer,
    topics: &[String],
    partition: i32,
    timeout: Duration,
) -> Result<Ends, KafkaError> {
    topics
        .iter()
        .map(|topic| {
            producer
                .client()
                .fetch_watermarks(topic, partition, timeout)
                .map(|(_, high)| high)
        })
        .collect()
}

/// Where this member left each partition it owns: the ends its restore read to, raised past
/// each of its own acknowledged writes. A partition absent here cannot be kept.
#[derive(Debug, Default)]
pub struct LeftEnds {
    ends: HashMap<i32, Ends>,
}

impl LeftEnds {
    /// The partition's state reflects its partitions up to `ends` (restored, or taken back).
    pub fn set(&mut self, partition: i32, ends: Ends) {
        self.ends.insert(partition, ends);
    }

    /// This member's write at `offset` of topic `topic` (0: the changelog, 1 + n: output n) was
    /// acknowledged. Partitions without known ends stay unknown.
    pub fn wrote(&mut self, partition: i32, topic: usize, offset: i64) {
        if let Some(end) = self
            .ends
            .get_mut(&partition)
            .and_then(|ends| ends.get_mut(topic))
        {
            *end = (*end).max(offset + 1);
        }
    }

    /// Forgets a partition (revoked), handing back where it was left.
    pub fn take(&mut self, partition: i32) -> Option<Ends> {
        self.ends.remove(&partition)
    }

    pub fn clear(&mut self) {
        self.ends.clear();
    }
}

struct Kept<E> {
    entities: HashMap<String, E>,
    checkpoint: Checkpoint,
    ends: Ends,
}

/// Revoked partitions' state, until the next assignment says whether it comes back.
pub struct KeptStates<E> {
    kept: HashMap<i32, Kept<E>>,
}

impl<E> Default for KeptStates<E> {
    fn default() -> Self {
        KeptStates {
            kept: HashMap::new(),
        }
    }
}

impl<E> KeptStates<E> {
    /// Sets a revoked partition's state aside, with where this member left its partitions.
    pub fn keep(
        &mut self,
        partition: i32,
        entities: HashMap<String, E>,
        checkpoint: Checkpoint,
        ends: Ends,
    ) {
        self.kept.insert(
            partition,
            Kept {
                entities,
                checkpoint,
                ends,
            },
        );
    }

    /// The partitions whose state is set aside.
    pub fn partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.kept.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Takes a partition's state back when its partitions still end where they did at the
    /// revoke; `None` (the state dropped) when anything was written meanwhile, or nothing was
    /// kept.
    pub fn take_back(
        &mut self,
        partition: i32,
        ends_now: &Ends,
    ) -> Option<(HashMap<String, E>, Checkpoint)> {
        let kept = self.kept.remove(&partition)?;
        (kept.ends == *ends_now).then_some((kept.entities, kept.checkpoint))
    }

    /// Drops every state set aside (the rest of an assignment, or a fenced member's).
    pub fn clear(&mut self) {
        self.kept.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept_one() -> KeptStates<u32> {
        let mut kept = KeptStates::default();
        let checkpoint = Checkpoint {
            outputs: HashMap::from([("out".to_string(), 4)]),
        };
        kept.keep(
            2,
            HashMap::from([("a".to_string(), 1)]),
            checkpoint,
            vec![10, 5],
        );
        kept
    }

    #[test]
    fn a_partition_handed_back_untouched_gets_its_state_back_without_a_read() {
        let mut kept = kept_one();
        let (entities, checkpoint) = kept.take_back(2, &vec![10, 5]).expect("kept");
        assert_eq!(entities, HashMap::from([("a".to_string(), 1)]));
        assert_eq!(checkpoint.read_from("out"), Some(5));
        assert!(kept.take_back(2, &vec![10, 5]).is_none(), "taken once");
    }

    #[test]
    fn a_partition_written_meanwhile_is_read_again() {
        // Another member owned it in between and wrote to its changelog, or only an output
        // (it stopped before its changelog write): either way the kept state is stale.
        for ends_now in [vec![11, 5], vec![10, 6]] {
            let mut kept = kept_one();
            assert!(kept.take_back(2, &ends_now).is_none());
            assert!(kept.partitions().is_empty(), "the stale state is dropped");
        }
    }

    #[test]
    fn left_ends_follow_restores_and_own_writes_only() {
        let mut left = LeftEnds::default();
        left.set(2, vec![10, 5]);
        left.wrote(2, 0, 10);
        left.wrote(2, 1, 3); // an older offset never lowers an end
        left.wrote(2, 7, 99); // no such topic
        left.wrote(3, 0, 99); // never restored here
        assert_eq!(left.take(2), Some(vec![11, 5]));
        assert_eq!(left.take(2), None);
        assert_eq!(left.take(3), None);
    }

    #[test]
    fn a_partition_never_kept_is_read() {
        let mut kept = kept_one();
        assert!(kept.take_back(1, &vec![10, 5]).is_none());
        kept.clear();
        assert!(kept.partitions().is_empty());
    }
}

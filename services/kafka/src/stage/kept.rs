//! State kept across a rebalance that hands a partition straight back. The range assignor is
//! eager: every rebalance revokes every partition of every member, and most come back to the
//! member that had them. Reading their changelogs again would stop those partitions for as long
//! as the reads take (minutes for a large state), so a revoked partition's state is set aside
//! with where its changelog and output partitions ended, and taken back without a read when
//! they still end there: nobody wrote to them meanwhile, so the state set aside is current.

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
    /// Sets a revoked partition's state aside, with where its partitions ended at the revoke
    /// (every write of this member acknowledged).
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
    fn a_partition_never_kept_is_read() {
        let mut kept = kept_one();
        assert!(kept.take_back(1, &vec![10, 5]).is_none());
        kept.clear();
        assert!(kept.partitions().is_empty());
    }
}

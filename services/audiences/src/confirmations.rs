//! Confirmation of removals: which batch records each destination's exporter has passed. The
//! exporter commits an offset of the batches topic only once the batch before it is accepted
//! (removals are never dead-lettered), so its group's committed offset says what the platform
//! took. Every few seconds this reads, without joining any group, the end of each batches
//! partition and then each exporter group's committed offsets there; a record written before a
//! round began lies before that round's end offsets, so once a group's committed offset reaches
//! them, every batch written before the round is confirmed for that destination. "Before" is
//! told by a count of rounds begun, not by a clock (a wall-clock step back would misplace a
//! write). The engine clears pending removals from what this publishes
//! ([`crate::domain::engine::Engine::confirm`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::config::AudiencesConfig;
use crate::orphans::{committed_each, consumer};

/// How often the offsets are read (a metadata, a watermark per partition and one offset
/// fetch per destination: cheap).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Rounds remembered: an exporter catching up is matched against the round it reached.
const ROUNDS: usize = 64;

/// (destination, batches partition) → every batch record written (acknowledged) before this
/// round began ([`Confirmations::mark`] below it) is behind the destination's committed offset.
pub type Confirmed = BTreeMap<(String, i32), i64>;

/// What the checker publishes and the engine reads; `version` changes with `through`.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub version: u64,
    pub through: Confirmed,
}

/// Shared between the checker task and the engine loop.
#[derive(Debug, Default, Clone)]
pub struct Confirmations {
    published: Arc<Mutex<Published>>,
    /// Rounds begun (each numbered by the count after it began).
    rounds: Arc<AtomicI64>,
}

impl Confirmations {
    /// What is confirmed, when it changed since `seen` (a version).
    pub fn since(&self, seen: u64) -> Option<Published> {
        let published = self.published.lock().expect("not poisoned");
        (published.version != seen).then(|| published.clone())
    }

    /// The rounds begun so far. Read after a record was acknowledged, it is below the number
    /// of every round that begins later, whose end offsets are read after the record landed.
    pub fn mark(&self) -> i64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Numbers a round that begins now, before its end offsets are read.
    fn begin_round(&self) -> i64 {
        self.rounds.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn publish(&self, found: &Confirmed) {
        let mut published = self.published.lock().expect("not poisoned");
        let mut changed = false;
        for (at, &through) in found {
            let known = published.through.entry(at.clone()).or_insert(i64::MIN);
            if through > *known {
                *known = through;
                changed = true;
            }
        }
        if changed {
            published.version += 1;
        }
    }
}

/// One round: its number, and the end offset of each batches partition when it began.
struct Round {
    began: i64,
    ends: BTreeMap<i32, i64>,
}

/// The checker's clients and the rounds it remembers.
struct Checker {
    topic: String,
    timeout: Duration,
    ends: BaseConsumer,
    /// Destination → a client named after its exporter group.
    groups: Vec<(String, BaseConsumer)>,
    rounds: VecDeque<Round>,
}

impl Checker {
    fn new(config: &AudiencesConfig) -> Result<Checker, KafkaError> {
        let mut groups = Vec::new();
        for name in config.destinations.keys() {
            let group = config.exporter_group(name);
            groups.push((name.clone(), consumer(&config.kafka, &group)?));
        }
        Ok(Checker {
            topic: config.batches_topic.clone(),
            timeout: config.kafka.request_timeout(),
            ends: consumer(&config.kafka, &format!("{}-confirmations", config.group))?,
            groups,
            rounds: VecDeque::new(),
        })
    }

    /// Reads the ends, then the committed offsets; blocking.
    fn round(&mut self, confirmations: &Confirmations) -> Result<Confirmed, KafkaError> {
        // Taken before the ends are read: what was written before it lies before them.
        let began = confirmations.begin_round();
        let metadata = self.ends.fetch_metadata(Some(&self.topic), self.timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = BTreeMap::new();
        for &partition in &partitions {
            let (_, high) = self
                .ends
                .fetch_watermarks(&self.topic, partition, self.timeout)?;
            ends.insert(partition, high);
        }
        self.rounds.push_back(Round { began, ends });
        if self.rounds.len() > ROUNDS {
            self.rounds.pop_front();
        }
        let mut found = Confirmed::new();
        for (destination, group) in &self.groups {
            for (partition, committed) in
                committed_each(group, &self.topic, &partitions, self.timeout)?
            {
                // Never committed, or answered with an error: not confirmed this round.
                let Ok(Some(committed)) = committed else {
                    continue;
                };
                let reached = self
                    .rounds
                    .iter()
                    .filter(|r| r.ends.get(&partition).is_some_and(|&end| end <= committed))
                    .map(|r| r.began)
                    .max();
                if let Some(through) = reached {
                    found.insert((destination.clone(), partition), through);
                }
            }
        }
        Ok(found)
    }
}

/// Reads the exporters' progress every [`CHECK_EVERY`] until `stop`, publishing it to
/// `confirmations`. A failed round is logged and tried again: removals then only wait longer.
pub async fn run(config: AudiencesConfig, confirmations: Confirmations, stop: CancellationToken) {
    let mut checker: Option<Checker> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let config = config.clone();
        let shared = confirmations.clone();
        let mut held = checker.take();
        let joined = tokio::task::spawn_blocking(move || {
            let result = match held.as_mut() {
                Some(checker) => checker.round(&shared),
                None => Checker::new(&config).and_then(|mut c| {
                    let found = c.round(&shared);
                    held = Some(c);
                    found
                }),
            };
            (held, result)
        })
        .await;
        let (held, result) = match joined {
            Ok(done) => done,
            Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
        };
        checker = held;
        match result {
            Ok(found) => {
                if failing {
                    tracing::info!("Reading the exporters' committed offsets works again.");
                }
                failing = false;
                confirmations.publish(&found);
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "Cannot read the exporters' committed offsets: removals stay pending (and are emitted again past AFTERCART_AUDIENCES_REMOVAL_REEMIT_AFTER) until it works.");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_marked_after_a_round_began_is_below_only_the_later_rounds() {
        let confirmations = Confirmations::default();
        let first = confirmations.begin_round();
        // A removal acknowledged now, after the first round's ends may have been read.
        let written = confirmations.mark();
        assert!(written >= first, "the first round may not confirm it");
        let second = confirmations.begin_round();
        assert!(
            written < second,
            "a later round reads the ends after it landed"
        );
    }

    #[test]
    fn published_confirmations_only_move_forward_and_version_each_change() {
        let confirmations = Confirmations::default();
        assert!(confirmations.since(0).is_none());
        let at = ("meta".to_string(), 0);
        confirmations.publish(&[(at.clone(), 10)].into());
        let first = confirmations.since(0).expect("changed");
        assert_eq!(first.through[&at], 10);
        confirmations.publish(&[(at.clone(), 5)].into());
        assert!(confirmations.since(first.version).is_none(), "never back");
        confirmations.publish(&[(at.clone(), 20)].into());
        assert_eq!(confirmations.since(first.version).unwrap().through[&at], 20);
    }
}

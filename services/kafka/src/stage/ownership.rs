//! What this member owns at this moment, and when it must stop trusting that: the partitions
//! assigned to it (offsets are stored only for those), and a fence that trips when the member may
//! have been expelled (the process was frozen past half its session timeout, librdkafka reports
//! the assignment lost, or a rebalance is pending), so a stale member never writes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// The (topic, partition) pairs assigned to this member, as its rebalance events said.
#[derive(Debug, Default)]
pub struct Assignment {
    held: HashSet<(String, i32)>,
}

impl Assignment {
    pub fn assign(&mut self, list: &[(String, i32)]) {
        self.held.extend(list.iter().cloned());
    }

    pub fn revoke(&mut self, list: &[(String, i32)]) {
        for pair in list {
            self.held.remove(pair);
        }
    }

    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// Every (topic, partition) held.
    pub fn pairs(&self) -> impl Iterator<Item = &(String, i32)> {
        self.held.iter()
    }

    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        // A lookup without allocating a key: assignments hold a few dozen pairs at most.
        self.held.iter().any(|(t, p)| *p == partition && t == topic)
    }
}

/// The last offset read of each input partition in a batch. A batch spans a few dozen
/// partitions at most, so a list beats hashing a topic name per record.
#[derive(Debug, Default)]
pub struct LatestOffsets(Vec<(String, i32, i64)>);

impl LatestOffsets {
    pub fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .0
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, latest)) => *latest = (*latest).max(offset),
            None => self.0.push((topic.to_string(), partition, offset)),
        }
    }

    /// (topic, partition, latest offset) of each partition recorded.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().map(|(t, p, o)| (t.as_str(), *p, *o))
    }
}

/// Stores the offsets of the partitions this member holds now; the rest are skipped, their new
/// owner reads them again. librdkafka refusing a store (a partition lost between the check and
/// the store) is logged, never fatal: the records are simply read again. Returns the skipped.
pub fn store_owned<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    assignment: &Assignment,
    offsets: LatestOffsets,
) -> usize {
    let mut skipped = 0;
    for (topic, partition, offset) in offsets.0 {
        if !assignment.holds(&topic, partition) {
            skipped += 1;
            continue;
        }
        if let Err(error @ KafkaError::StoreOffset(_)) =
            consumer.store_offset(&topic, partition, offset)
        {
            skipped += 1;
            tracing::info!(%error, partition, "Not storing the offset of a partition no longer assigned.");
        }
    }
    skipped
}

/// Whether a member may still write for the partitions it holds. Notices the process being
/// frozen (SIGSTOP, a stalled VM): a thread ticks every [`Fence::TICK`]; a gap between ticks
/// longer than `limit` is a stall, and so is a last tick older than that (a stall in progress
/// that the thread has not noticed yet). A stall not yet answered by a reset trips the fence.
pub struct Fence {
    ticks: Arc<Ticks>,
    limit_ms: u64,
    /// Stalls already answered by a reset.
    answered: u64,
    /// Test only: checks made so far, and the one at which a stall shows (as if the process
    /// had been frozen just before it).
    #[cfg(test)]
    checks: AtomicU64,
    #[cfg(test)]
    stall_at_check: Option<u64>,
}

struct Ticks {
    base: Instant,
    /// Milliseconds from `base` to the last tick.
    last_ms: AtomicU64,
    stalls: AtomicU64,
    stop: AtomicBool,
}

impl Ticks {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}

/// Why a member stopped trusting its assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// The process was frozen long enough that the group may have moved on without it.
    Stalled,
    /// librdkafka says the assignment was lost (session timed out, member fenced).
    Lost,
    /// A write was not acknowledged within the producer's delivery timeout: it may have
    /// landed or not, and the member may have been frozen meanwhile.
    Undelivered,
}

impl Tripped {
    pub fn as_label(self) -> &'static str {
        match self {
            Tripped::Stalled => "stalled",
            Tripped::Lost => "lost",
            Tripped::Undelivered => "undelivered",
        }
    }
}

impl Fence {
    const TICK: Duration = Duration::from_millis(100);

    /// A fence for a member whose group session times out after `session_timeout`: a stall of
    /// half of it trips it, well before the group could have handed its partitions on.
    pub fn new(session_timeout: Duration) -> Fence {
        Self::tripping_after(session_timeout / 2)
    }

    fn tripping_after(limit: Duration) -> Fence {
        let ticks = Arc::new(Ticks {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let limit_ms = limit.as_millis() as u64;
        let state = ticks.clone();
        let spawned = std::thread::Builder::new()
            .name("stage-fence".into())
            .spawn(move || {
                while !state.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Self::TICK);
                    let now = state.now_ms();
                    if now.saturating_sub(state.last_ms.swap(now, Ordering::SeqCst)) > limit_ms {
                        state.stalls.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        if let Err(error) = spawned {
            // Without the thread, the age of the last tick still reveals every stall.
            tracing::warn!(%error, "Could not start the stall watch thread.");
        }
        Fence {
            ticks,
            limit_ms,
            answered: 0,
            #[cfg(test)]
            checks: AtomicU64::new(0),
            #[cfg(test)]
            stall_at_check: None,
        }
    }

    /// A fence that has seen one stall and will see no other (no watch thread): it trips once.
    #[cfg(test)]
    pub fn tripping_once() -> Fence {
        Self::stalling_at_check(1)
    }

    /// A fence that sees one stall, at its `n`th check (counting from 1), as if the process
    /// had been frozen just before that check, and no other (no watch thread).
    #[cfg(test)]
    pub fn stalling_at_check(n: u64) -> Fence {
        let ticks = Arc::new(Ticks {
            base: Instant::now(),
            // A last tick in the future: no stall in progress, ever.
            last_ms: AtomicU64::new(u64::MAX / 2),
            stalls: AtomicU64::new(0),
            stop: AtomicBool::new(true),
        });
        Fence {
            ticks,
            limit_ms: 0,
            answered: 0,
            checks: AtomicU64::new(0),
            stall_at_check: Some(n),
        }
    }

    /// Stalls seen so far, counting one in progress that the thread has not noticed yet.
    fn stalls(&self) -> u64 {
        let age = self
            .ticks
            .now_ms()
            .saturating_sub(self.ticks.last_ms.load(Ordering::SeqCst));
        let stalls = self.ticks.stalls.load(Ordering::SeqCst) + u64::from(age > self.limit_ms);
        #[cfg(test)]
        let stalls = stalls
            + u64::from(
                self.stall_at_check
                    .is_some_and(|n| self.checks.load(Ordering::SeqCst) >= n),
            );
        stalls
    }

    /// `Some` when the member must not write: it then drops what it holds and rejoins.
    pub fn check<C: ConsumerContext>(&self, consumer: &impl Consumer<C>) -> Option<Tripped> {
        #[cfg(test)]
        self.checks.fetch_add(1, Ordering::SeqCst);
        if self.stalls() > self.answered {
            Some(Tripped::Stalled)
        } else if consumer.assignment_lost() {
            Some(Tripped::Lost)
        } else {
            None
        }
    }

    /// The member reset: stalls so far are answered.
    pub fn answered(&mut self) {
        self.answered = self.stalls();
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.ticks.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_follows_its_events() {
        let mut assignment = Assignment::default();
        assignment.assign(&[("a".into(), 0), ("a".into(), 1), ("b".into(), 0)]);
        assignment.revoke(&[("a".into(), 1)]);
        assert!(assignment.holds("a", 0) && assignment.holds("b", 0));
        assert!(!assignment.holds("a", 1) && !assignment.holds("c", 0));
        assignment.clear();
        assert!(!assignment.holds("a", 0));
    }

    #[test]
    fn latest_offsets_keep_the_highest_per_partition() {
        let mut offsets = LatestOffsets::default();
        offsets.record("a", 0, 5);
        offsets.record("a", 0, 3);
        offsets.record("a", 1, 1);
        offsets.record("b", 0, 9);
        assert_eq!(
            offsets.0,
            [("a".into(), 0, 5), ("a".into(), 1, 1), ("b".into(), 0, 9)]
        );
    }

    #[test]
    fn a_running_process_counts_no_stall() {
        let fence = Fence::tripping_after(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(fence.stalls(), 0);
    }

    #[test]
    fn a_tick_older_than_the_limit_is_a_stall_at_once_until_answered() {
        let mut fence = Fence::tripping_after(Duration::from_millis(250));
        // As if frozen: the thread stops ticking, so its last tick grows old.
        fence.ticks.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(600));
        assert!(fence.stalls() > fence.answered);
        fence.answered();
        assert_eq!(fence.stalls(), fence.answered);
    }
}

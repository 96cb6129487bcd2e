//! The broker's answers about where the stage's input partitions end, asked off the stage's
//! loop. An ask is a few blocking requests (metadata, committed offsets, list offsets), each
//! up to [`ASK_TIMEOUT`]; made on the loop they held up its records, its rebalance callbacks
//! and its flushes for as long (measured in the fault suite: 0.3–1 s after every assignment,
//! a list-offsets request for the log start alone taking 500 ms). A thread of its own, with a
//! client of its own, answers one ask at a time; the stage takes the answer at a later tick.
//!
//! An answer describes the moment it was asked: it carries that wall time, and the stage
//! drops answers asked before its last rebalance (the partitions they are about may have
//! moved and come back with a backlog since) or taken while no timer needed them.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::horizon::{Answers, Pair};
use super::sources;
use crate::{ClientKind, KafkaSettings, LoopError};

/// The longest the asks' thread waits for one of the broker's answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the idle thread serves its client's events (its log lines and errors), and for
/// how long each time.
const EVENTS_EVERY: Duration = Duration::from_secs(1);
const EVENTS_FOR: Duration = Duration::from_millis(10);

/// One question: where `held` ends, where the group starts `unplaced`, and for a by-shop stage
/// where `sources` end and how far they were routed (after learning the partitions of
/// `learn`, the source topics, when not known yet).
pub struct Ask {
    /// The wall time (ms) the question was put: the answer is as of no earlier.
    pub asked_at: i64,
    pub held: Vec<Pair>,
    pub unplaced: Vec<Pair>,
    pub sources: Vec<Pair>,
    pub learn: Vec<String>,
    /// What this member itself routed and saw acknowledged by then: counted as routed.
    pub routed_here: HashMap<Pair, i64>,
}

/// An answer, and the source partitions learned on the way (when asked to learn them).
pub struct Answered {
    pub answers: Answers,
    pub learned: Option<Vec<Pair>>,
}

/// The stage's handle on the asks' thread.
pub struct Asks {
    requests: std_mpsc::Sender<(u64, Ask)>,
    answers: mpsc::UnboundedReceiver<(u64, Answered)>,
    /// Bumped at every rebalance and reset: answers to older asks are dropped.
    epoch: u64,
    in_flight: bool,
}

impl Asks {
    /// Starts the thread with a client named after the stage's `client` that never joins
    /// `group`: it reads the group's committed offsets and the partitions' ends.
    pub fn start(kafka: &KafkaSettings, client: &str, group: &str) -> Result<Asks, KafkaError> {
        let mut config = kafka.client_config(&format!("{client}-asks"));
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        kafka.apply_overrides(&mut config, ClientKind::Consumer);
        let consumer: BaseConsumer = config.create()?;
        let (requests, asked) = std_mpsc::channel::<(u64, Ask)>();
        let (answer, answers) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("stage-asks".into())
            .spawn(move || loop {
                // The client's own events (librdkafka's log lines, broker errors) wait in its
                // queue until served: served between asks, and once a second while idle. A
                // poll serves events until its timeout ends (with none, one at most).
                let _ = consumer.poll(EVENTS_FOR);
                match asked.recv_timeout(EVENTS_EVERY) {
                    Ok((epoch, ask)) => {
                        if answer.send((epoch, answer_to(&consumer, ask))).is_err() {
                            break;
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    // The stage dropped its handle: the client closes on this thread.
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            })
            .map_err(|error| {
                KafkaError::ClientCreation(format!("cannot start the asks' thread: {error}"))
            })?;
        Ok(Asks {
            requests,
            answers,
            epoch: 0,
            in_flight: false,
        })
    }

    /// Whether an ask is out (one at a time: a slow broker is not asked again meanwhile).
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Puts `ask` to the thread, unless one is out. `Err`: the thread is gone.
    pub fn ask(&mut self, ask: Ask) -> Result<(), AsksGone> {
        if !self.in_flight {
            self.requests
                .send((self.epoch, ask))
                .map_err(|_| AsksGone)?;
            self.in_flight = true;
        }
        Ok(())
    }

    /// The assignment changed: answers to asks put before are about partitions that may have
    /// moved since, and are dropped.
    pub fn invalidate(&mut self) {
        self.epoch += 1;
    }

    /// The answer to the ask out, if it came and is about the current assignment. `Err`: the
    /// thread is gone (no answer would ever come, and timers would wait on the stall bound).
    pub fn answered(&mut self) -> Result<Option<Answered>, AsksGone> {
        match self.answers.try_recv() {
            Ok((epoch, answered)) => {
                self.in_flight = false;
                Ok((epoch == self.epoch).then_some(answered))
            }
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(AsksGone),
        }
    }
}

/// The asks' thread ended (it panicked): the stage stops rather than hold timers blind.
#[derive(Debug)]
pub struct AsksGone;

impl From<AsksGone> for LoopError {
    fn from(_: AsksGone) -> LoopError {
        LoopError::Kafka(KafkaError::ClientCreation(
            "the thread asking where partitions end has stopped".into(),
        ))
    }
}

fn answer_to(consumer: &BaseConsumer, ask: Ask) -> Answered {
    let learned = if ask.learn.is_empty() {
        None
    } else {
        sources::partitions_of(consumer, &ask.learn, ASK_TIMEOUT)
    };
    let sources = learned.as_deref().unwrap_or(&ask.sources);
    let mut answers = ask_ends(consumer, &ask.held, &ask.unplaced, sources);
    answers.asked_at = Some(ask.asked_at);
    answers.routed_here = ask.routed_here;
    Answered { answers, learned }
}

/// Where each of `held` ends (one ListOffsets request per broker for all of them) and, for
/// `unplaced`, where the group starts reading it: its committed offset, or for a partition the
/// group never committed the log start (the stage's `auto.offset.reset=earliest`; one more
/// ListOffsets request), as far as the broker answers within [`ASK_TIMEOUT`]. For a by-shop
/// stage, first where each of `sources` ends and then where the group is in it (committed, or
/// the log start), in that order and before the by-shop ends: a source record routed
/// by then is in the by-shop end asked after.
pub(super) fn ask_ends<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    held: &[Pair],
    unplaced: &[Pair],
    sources: &[Pair],
) -> Answers {
    let list = |pairs: &[Pair], offset: Offset| {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in pairs {
            // Only an offset librdkafka cannot represent fails; End and stored ones never do.
            let _ = list.add_partition_offset(topic, *partition, offset);
        }
        list
    };
    let offsets = |answer: Option<TopicPartitionList>| -> HashMap<Pair, i64> {
        answer
            .map(|list| {
                list.elements()
                    .iter()
                    .filter(|e| e.error().is_ok())
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(at) => Some(((e.topic().to_string(), e.partition()), at)),
                        Offset::Beginning => Some(((e.topic().to_string(), e.partition()), 0)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // Where the group starts (or went on) reading each of `pairs`: its committed offset, or
    // for one never committed the log start (records before it are gone, never to be read).
    // One never committed that `empty` says ends at 0 starts there: no request (each costs a
    // round trip, and most source partitions of a quiet shop are empty).
    let group_starts = |pairs: &[Pair], empty: &HashMap<Pair, i64>| -> HashMap<Pair, i64> {
        if pairs.is_empty() {
            return HashMap::new();
        }
        let committed = consumer
            .committed_offsets(list(pairs, Offset::Invalid), ASK_TIMEOUT)
            .ok();
        let (at_zero, never): (Vec<Pair>, Vec<Pair>) = committed
            .as_ref()
            .map(|list| {
                list.elements()
                    .iter()
                    .filter(|e| e.error().is_ok() && e.offset() == Offset::Invalid)
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .partition(|pair| empty.get(pair) == Some(&0))
            })
            .unwrap_or_default();
        let mut starts = offsets(committed);
        starts.extend(at_zero.into_iter().map(|pair| (pair, 0)));
        if !never.is_empty() {
            // A timestamp of -2 (`Offset::Beginning`) asks for the log start.
            starts.extend(offsets(
                consumer
                    .offsets_for_times(list(&never, Offset::Beginning), ASK_TIMEOUT)
                    .ok(),
            ));
        }
        starts
    };
    let (source_ends, routed) = if sources.is_empty() {
        (HashMap::new(), HashMap::new())
    } else {
        let ends = offsets(
            consumer
                .offsets_for_times(list(sources, Offset::End), ASK_TIMEOUT)
                .ok(),
        );
        let routed = group_starts(sources, &ends);
        (ends, routed)
    };
    // A timestamp of -1 (`Offset::End`) asks for each partition's end: its high watermark.
    let ends = offsets(
        consumer
            .offsets_for_times(list(held, Offset::End), ASK_TIMEOUT)
            .ok(),
    );
    let starts = group_starts(unplaced, &HashMap::new());
    Answers {
        ends,
        starts,
        source_ends,
        routed,
        ..Answers::default()
    }
}

//! How far the stage's timers may run: never past a record this member has not read yet.
//!
//! Timers run on receive time (the record timestamp). A member catching up (restarted, or
//! handed partitions in a rebalance) reads its input topics at different paces: a partition's
//! checkouts may arrive before its carts' and orders' of the same seconds. Ticking with the wall
//! clock then fires a cart's abandonment whose checkout is in the next fetch, or a checkout's
//! whose order is: outputs that depend on the member's lag, not on the inputs. So while an
//! input partition it holds has records left to read, timers run only to the timestamp of the
//! last record read from it; caught up everywhere, to the wall clock.
//!
//! Where the member is comes from the consumer itself (the records it handed the stage, its
//! position); where a partition ends from one request for every held partition, made only
//! while a timer is due, at most every [`HOLDING_REFRESH`] while holding and
//! [`STEADY_REFRESH`] otherwise, by a thread of the stage's (`asks`): an answer is as of the
//! time its question was put, and timers run on it to the wall clock only while it is recent
//! ([`FRESH_FOR`]), else no further than when it was asked. Not known is not caught up: a partition whose end or place
//! the broker has not told yet (no answer in time) holds timers as one with records left does.
//! The group's start in a partition it never committed is the log start (`earliest`). A
//! partition that stays below its end (or unknown) without advancing for [`STALL_AFTER`]
//! (transaction markers, a read that stopped, a broker that never answers) no longer holds
//! anything: a timer is never held forever.
//!
//! A by-shop stage's inputs are routed: records of its source topics are copied to the by-shop
//! topic by whichever member holds their source partition, then read by the member holding the
//! by-shop partition. After a restart with a backlog in a source topic (an order not routed
//! yet), the by-shop partitions may be read to their end while the record that stops a
//! sequence is still in the source. So timers also wait for the router: each ask notes the
//! wall time and where every source partition ends; once an ask finds the group has routed
//! every source partition to an earlier ask's ends (its committed offset, or what this member
//! routed and saw acknowledged), every record received before that earlier time is in the
//! by-shop topic below the by-shop ends of the finding ask, and timers may run to that time
//! once the held by-shop partitions are read to those ends. Reading past a record says
//! nothing of the ones after it: a by-shop partition mixes sources routed at different lags,
//! so its timestamps do not grow with its offsets. A source partition that stays behind
//! without moving is released by the same stall bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How often the ends are asked again while timers are held (catching up).
pub const HOLDING_REFRESH: Duration = Duration::from_millis(250);
/// How often the ends are asked again while caught up and a timer is due.
pub const STEADY_REFRESH: Duration = Duration::from_secs(1);
/// How long an answer is current: on ends asked no longer ago, timers run to the wall clock
/// (ends a refresh old, as when they were asked on the stage's loop, and up to 500 ms for the
/// next answer to come); on older ones, no further than when they were asked.
pub const FRESH_FOR: Duration = Duration::from_millis(1_500);
/// A partition below its end whose read position has not moved for this long stops holding
/// timers back.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// Source asks remembered while not yet routed (older ones are dropped: the wait for a newer
/// one is the safe side).
const SOURCE_ASKS: usize = 64;

/// (topic, partition).
pub type Pair = (String, i32);

/// Where one held input partition stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The next offset to read, if known.
    pub next: Option<i64>,
    /// The timestamp of the last record read (ms), if one was.
    pub last_at: Option<i64>,
    /// Where the partition ends (its high watermark) as last asked, if known.
    pub end: Option<i64>,
    /// Below its end without advancing for [`STALL_AFTER`].
    pub stalled: bool,
}

impl Reading {
    /// Whether records may be left to read: below its end, or where it stands or ends is not
    /// known (the broker did not answer in time). A stalled partition never is: the stall
    /// bound, not a guess, is what keeps timers from waiting forever.
    fn behind(&self) -> bool {
        !self.stalled
            && match (self.next, self.end) {
                (Some(next), Some(end)) => next < end,
                _ => true,
            }
    }
}

/// The time timers may run to: `now`, or earlier while a partition may have records left to
/// read (then the timestamp of the last record read from it; with none read yet, nothing may
/// fire).
pub fn horizon(now: i64, partitions: impl IntoIterator<Item = Reading>) -> Option<i64> {
    let mut to = now;
    for reading in partitions {
        if reading.behind() {
            to = to.min(reading.last_at?);
        }
    }
    Some(to)
}

/// What the broker said: each partition's end, and where the group starts reading the ones
/// the member has no position for yet (its committed offset). For a by-shop stage, also where
/// each source partition ends and how far the group routed it (its committed offset, the log
/// start when never committed), asked before the by-shop ends.
#[derive(Debug, Default)]
pub struct Answers {
    pub ends: HashMap<Pair, i64>,
    pub starts: HashMap<Pair, i64>,
    pub source_ends: HashMap<Pair, i64>,
    pub routed: HashMap<Pair, i64>,
    /// The wall time (ms) the question was put, when before the time the answer is used:
    /// records received after it may be missing from the ends. `None`: asked at that time.
    pub asked_at: Option<i64>,
    /// What this member had routed itself when the question was put
    /// ([`Horizons::routed_here`]): routed as much as the group's committed offsets.
    pub routed_here: HashMap<Pair, i64>,
}

/// The stage's side: what was read from each held input partition, and the broker's answers.
#[derive(Debug, Default)]
pub struct Horizons {
    /// The last record handed to the stage, by topic then partition: (offset, timestamp).
    /// Keyed by topic first so that noting a record (once per record read) looks the topic
    /// up by `&str` instead of allocating a key.
    read: HashMap<String, HashMap<i32, (i64, i64)>>,
    /// Where the group starts each partition not read yet, when asked.
    starts: HashMap<Pair, i64>,
    ends: HashMap<Pair, i64>,
    /// When each of `ends` was asked (wall time, ms): an answer that left a partition out (a
    /// timeout, a partition error) leaves its end as old as it was.
    ends_asked: HashMap<Pair, i64>,
    /// For partitions behind: the next offset to read and since when it has stood there
    /// behind.
    moved: HashMap<Pair, (Option<i64>, Instant)>,
    /// Partitions reported stalled (once each, until they move again).
    stalled: HashSet<Pair>,
    /// When the last answer taken was asked (wall time, ms): the refresh counts from it.
    asked_at: Option<i64>,
    /// Partitions included in an ask, answered or not.
    asked: HashSet<Pair>,
    /// Whether the last time given held timers back.
    holding: bool,
    /// Whether records left to read or to route held them (not only an old answer).
    waiting_for_records: bool,
    /// By-shop stages: how far the group routed each source partition (the next offset), as
    /// of the last answer.
    routed: HashMap<Pair, i64>,
    /// What this member routed itself and saw acknowledged, for the next ask to carry.
    routed_here: HashMap<Pair, i64>,
    /// Asks not yet routed to their ends: (wall time ms, source ends then), oldest first.
    source_asks: VecDeque<(i64, HashMap<Pair, i64>)>,
    /// Ask times found routed, each with the held by-shop ends asked after the routing was
    /// seen: the time counts once the held partitions are read to those ends (a by-shop
    /// partition's timestamps do not grow with its offsets, so reading past a later-stamped
    /// record says nothing of an earlier-stamped one after it). Oldest first.
    releases: VecDeque<(i64, HashMap<Pair, i64>)>,
    /// The latest ask time routed and read: timers may run to it.
    routed_to: Option<i64>,
    /// By-shop stages: when the last answer taken was asked.
    last_source_ask: Option<i64>,
}

impl Horizons {
    pub fn read(&mut self, topic: &str, partition: i32, offset: i64, at: i64) {
        match self.read.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, (offset, at));
            }
            None => {
                self.read.insert(
                    topic.to_string(),
                    HashMap::from([(partition, (offset, at))]),
                );
            }
        }
    }

    /// This member routed `partition` of source `topic` up to `next` (its forwards were
    /// acknowledged): known here before the group commits it, weighed with the answer to the
    /// next ask put (whose by-shop ends include the forwards), never with one already out.
    pub fn routed(&mut self, topic: &str, partition: i32, next: i64) {
        further(&mut self.routed_here, (topic.to_string(), partition), next);
    }

    /// What this member routed so far ([`Horizons::routed`]): an ask carries it, and its
    /// answer counts it as routed (`Answers::routed`).
    pub fn routed_here(&self) -> HashMap<Pair, i64> {
        self.routed_here.clone()
    }

    /// The last record read from `pair`: (offset, timestamp).
    fn last_read(&self, pair: &Pair) -> Option<(i64, i64)> {
        self.read.get(&pair.0)?.get(&pair.1).copied()
    }

    /// Forgets partitions no longer held (their next owner reads them from its own start).
    pub fn forget(&mut self, list: &[Pair]) {
        for pair in list {
            if let Some(partitions) = self.read.get_mut(&pair.0) {
                partitions.remove(&pair.1);
            }
            self.starts.remove(pair);
            self.ends.remove(pair);
            self.ends_asked.remove(pair);
            self.moved.remove(pair);
            self.stalled.remove(pair);
            self.asked.remove(pair);
        }
    }

    pub fn clear(&mut self) {
        *self = Horizons::default();
    }

    /// Whether the last time given held timers back: the stage then polls for records
    /// instead of sleeping until a due time that has passed.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Whether the broker is to be asked: for a partition newly held (its backlog must hold
    /// timers at once), else at most every [`HOLDING_REFRESH`] while holding and
    /// [`STEADY_REFRESH`] while caught up. One the broker did not answer for waits for the
    /// refresh like the rest (each ask takes the asks' thread up to its timeout; the unknown
    /// end holds timers meanwhile).
    /// Counted at `now` (wall time, ms) from when the last answer was asked.
    pub fn wants_answers(&self, held: &[Pair], now: i64) -> bool {
        let every = if self.holding {
            HOLDING_REFRESH
        } else {
            STEADY_REFRESH
        };
        self.asked_at
            .is_none_or(|at| now - at >= every.as_millis() as i64)
            || held.iter().any(|pair| !self.asked.contains(pair))
    }

    /// Whether records left to read (or, by-shop, to route) held the timers at the last time
    /// given, rather than only an answer grown old.
    pub fn waiting_for_records(&self) -> bool {
        self.waiting_for_records
    }

    /// The held partitions with no known position: their committed offsets are asked too.
    pub fn unplaced(&self, held: &[Pair], positions: &HashMap<Pair, i64>) -> Vec<Pair> {
        held.iter()
            .filter(|pair| {
                self.last_read(pair).is_none()
                    && !positions.contains_key(*pair)
                    && !self.starts.contains_key(*pair)
            })
            .cloned()
            .collect()
    }

    /// No timer due and none held: the wall clock.
    pub fn running(&mut self, now: i64) -> i64 {
        self.holding = false;
        self.waiting_for_records = false;
        now
    }

    /// The time for the timers at `now` (`None`: no timer may fire yet) over the `held` input
    /// partitions, given the consumer's `positions` (next offset to hand over) and the broker's
    /// fresh `answers`, if asked. Not monotonic on purpose: after a partition with a backlog is
    /// taken (back), its timers wait for its records, however far the wall clock ran. Returns
    /// too the partitions newly found stalled (to be reported).
    /// `answers` are the broker's to a question about every one of `held` (and of `sources`,
    /// every partition of a by-shop stage's source topics; none for other stages), asked at
    /// `answers.asked_at` (no later than `now`) with the assignment unchanged since.
    pub fn at(
        &mut self,
        now: i64,
        held: &[Pair],
        sources: &[Pair],
        positions: &HashMap<Pair, i64>,
        answers: Option<Answers>,
    ) -> (Option<i64>, Vec<Pair>) {
        self.at_on(now, Instant::now(), held, sources, positions, answers)
    }

    /// [`Horizons::at`] on the monotonic `clock` (tests move it on).
    fn at_on(
        &mut self,
        now: i64,
        clock: Instant,
        held: &[Pair],
        sources: &[Pair],
        positions: &HashMap<Pair, i64>,
        answers: Option<Answers>,
    ) -> (Option<i64>, Vec<Pair>) {
        let mut newly_stalled = Vec::new();
        // By-shop stages: this ask's by-shop ends, asked after the routing it brings.
        let mut asked_ends = None;
        if let Some(answers) = answers {
            if !sources.is_empty() {
                asked_ends = Some(
                    held.iter()
                        .filter_map(|pair| Some((pair.clone(), *answers.ends.get(pair)?)))
                        .collect::<HashMap<_, _>>(),
                );
            }
            let asked_at = answers.asked_at.map_or(now, |at| at.min(now));
            for pair in answers.ends.keys() {
                self.ends_asked.insert(pair.clone(), asked_at);
            }
            self.ends.extend(answers.ends);
            self.starts.extend(answers.starts);
            self.asked_at = Some(asked_at);
            self.asked.extend(held.iter().cloned());
            for (pair, next) in answers.routed.into_iter().chain(answers.routed_here) {
                further(&mut self.routed, pair, next);
            }
            if !sources.is_empty() {
                if self.source_asks.len() == SOURCE_ASKS {
                    self.source_asks.pop_front();
                }
                self.source_asks.push_back((asked_at, answers.source_ends));
                self.last_source_ask = Some(asked_at);
            }
        }
        let mut readings = Vec::with_capacity(held.len());
        for pair in held {
            let read = self.last_read(pair);
            let next = [
                read.map(|(offset, _)| offset + 1),
                positions.get(pair).copied(),
            ]
            .into_iter()
            .flatten()
            .max()
            .or_else(|| self.starts.get(pair).copied());
            let reading = Reading {
                next,
                last_at: read.map(|(_, at)| at),
                end: self.ends.get(pair).copied(),
                stalled: false,
            };
            readings.push(self.watched(pair, reading, clock, &mut newly_stalled));
        }
        // Ends are as of when they were asked: all current, timers may run to the wall clock;
        // one older, no further than when it was asked (the next answer moves them on). A
        // partition with no end known holds them on its own (`Reading`).
        let oldest = held
            .iter()
            .filter_map(|pair| self.ends_asked.get(pair))
            .min()
            .copied();
        let known_to = match oldest {
            Some(at) if now - at > FRESH_FOR.as_millis() as i64 => at,
            _ => now,
        };
        // Not routed yet, nothing may fire; routed to a time, nothing past it (never the wall
        // clock: a source record received since the last ask may be in no member's hands yet).
        let routed_to = if sources.is_empty() {
            Some(now)
        } else {
            if let Some(asked_ends) = asked_ends {
                self.note_routed(clock, sources, asked_ends, &mut newly_stalled);
            }
            self.released(held, &readings)
        };
        let read_to = horizon(now, readings);
        let to = read_to.zip(routed_to).map(|(a, b)| a.min(known_to).min(b));
        // Records are left when a held partition is below its end, or (by-shop) when the last
        // answer found source records not routed or not read yet; a by-shop stage's timers
        // trailing the wall clock by the time since its last ask is no backlog.
        self.waiting_for_records = read_to.is_none_or(|to| to < now)
            || (!sources.is_empty() && (routed_to.is_none() || routed_to < self.last_source_ask));
        self.holding = to.is_none_or(|to| to < now);
        (to, newly_stalled)
    }

    /// `reading` of `pair`, marked stalled once it stood behind at one place for
    /// [`STALL_AFTER`] (newly stalled ones are added to `newly_stalled`). A stall is counted
    /// only while behind, from the first look that found the partition behind at this place:
    /// a quiet partition that just got a record holds timers like any other, however long ago
    /// it was last looked at.
    fn watched(
        &mut self,
        pair: &Pair,
        mut reading: Reading,
        clock: Instant,
        newly_stalled: &mut Vec<Pair>,
    ) -> Reading {
        if !reading.behind() {
            self.moved.remove(pair);
            self.stalled.remove(pair);
            return reading;
        }
        let moved = self
            .moved
            .entry(pair.clone())
            .or_insert((reading.next, clock));
        if moved.0 != reading.next {
            *moved = (reading.next, clock);
            self.stalled.remove(pair);
        }
        if clock.saturating_duration_since(moved.1) >= STALL_AFTER {
            reading.stalled = true;
            if self.stalled.insert(pair.clone()) {
                newly_stalled.push(pair.clone());
            }
        }
        reading
    }

    /// At an ask: the latest ask time whose source ends the group has routed (a stalled
    /// source partition counts as routed), if any, becomes a release at `asked_ends`: every
    /// record received before that time is in the by-shop topic below those ends.
    fn note_routed(
        &mut self,
        clock: Instant,
        sources: &[Pair],
        asked_ends: HashMap<Pair, i64>,
        newly_stalled: &mut Vec<Pair>,
    ) {
        let latest = self.source_asks.back().map(|(_, ends)| ends.clone());
        let mut stalled = HashSet::new();
        for pair in sources {
            let reading = Reading {
                next: self.routed.get(pair).copied(),
                last_at: None,
                end: latest.as_ref().and_then(|ends| ends.get(pair).copied()),
                stalled: false,
            };
            if self.watched(pair, reading, clock, newly_stalled).stalled {
                stalled.insert(pair);
            }
        }
        let routed = |ends: &HashMap<Pair, i64>| {
            sources.iter().all(|pair| {
                stalled.contains(pair)
                    || matches!(
                        (self.routed.get(pair), ends.get(pair)),
                        (Some(next), Some(end)) if next >= end
                    )
            })
        };
        if let Some(newest) = self.source_asks.iter().rposition(|(_, ends)| routed(ends)) {
            let at = self.source_asks[newest].0;
            // Kept: a later ask pairs it with fresher by-shop ends (a partition held since).
            self.source_asks.drain(..newest);
            if self.releases.len() == SOURCE_ASKS {
                self.releases.pop_front();
            }
            self.releases.push_back((at, asked_ends));
        }
    }

    /// The latest ask time routed whose by-shop ends every `held` partition (`readings`, in
    /// that order) was read to, or stalled below: timers may run to it. `None` while none was.
    fn released(&mut self, held: &[Pair], readings: &[Reading]) -> Option<i64> {
        let read_to = |ends: &HashMap<Pair, i64>| {
            held.iter().zip(readings).all(|(pair, reading)| {
                reading.stalled
                    || matches!(
                        (reading.next, ends.get(pair)),
                        (Some(next), Some(end)) if next >= *end
                    )
            })
        };
        if let Some(newest) = self.releases.iter().rposition(|(_, ends)| read_to(ends)) {
            let at = self.releases[newest].0;
            self.routed_to = Some(self.routed_to.map_or(at, |to| to.max(at)));
            self.releases.drain(..=newest);
        }
        self.routed_to
    }
}

/// Moves `pair`'s offset in `offsets` on to `next`, never back.
fn further(offsets: &mut HashMap<Pair, i64>, pair: Pair, next: i64) {
    let at = offsets.entry(pair).or_insert(next);
    *at = (*at).max(next);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(next: i64, last_at: Option<i64>, end: i64) -> Reading {
        Reading {
            next: Some(next),
            last_at,
            end: Some(end),
            stalled: false,
        }
    }

    fn pair(topic: &str, partition: i32) -> Pair {
        (topic.to_string(), partition)
    }

    /// As if `pair`'s position had stood at `next` for [`STALL_AFTER`].
    fn stood_still(horizons: &mut Horizons, pair: &Pair, next: i64) {
        let since = Instant::now()
            .checked_sub(STALL_AFTER)
            .expect("a monotonic clock this far from its start");
        horizons.moved.insert(pair.clone(), (Some(next), since));
    }

    fn ends(list: &[(Pair, i64)]) -> Answers {
        Answers {
            ends: list.iter().cloned().collect(),
            ..Answers::default()
        }
    }

    #[test]
    fn caught_up_everywhere_the_timers_run_to_now() {
        let partitions = [reading(10, Some(500), 10), reading(3, Some(900), 3)];
        assert_eq!(horizon(1_000, partitions), Some(1_000));
    }

    #[test]
    fn a_partition_with_records_left_holds_the_timers_at_its_last_read_record() {
        // Carts read up to 400 with more to come; checkouts caught up.
        let partitions = [reading(10, Some(400), 25), reading(3, Some(900), 3)];
        assert_eq!(horizon(1_000, partitions), Some(400));
    }

    #[test]
    fn a_partition_with_records_left_and_none_read_yet_holds_every_timer() {
        let partitions = [reading(7, None, 25), reading(3, Some(900), 3)];
        assert_eq!(horizon(1_000, partitions), None);
    }

    #[test]
    fn an_unknown_position_or_end_holds_the_timers_as_records_left_would() {
        // The broker did not answer in time, or the member has no place in the partition yet:
        // records may be left, so the timers wait (the stall bound ends the wait).
        let unknown = Reading {
            next: None,
            last_at: Some(400),
            end: Some(25),
            stalled: false,
        };
        assert_eq!(horizon(1_000, [unknown]), Some(400));
        let no_end = Reading {
            next: Some(3),
            last_at: None,
            end: None,
            stalled: false,
        };
        assert_eq!(horizon(1_000, [no_end]), None);
    }

    #[test]
    fn a_stalled_partition_does_not_hold_the_timers() {
        let stalled = Reading {
            stalled: true,
            ..reading(3, Some(10), 25)
        };
        let unknown = Reading {
            next: None,
            end: None,
            ..stalled
        };
        assert_eq!(horizon(1_000, [stalled, unknown]), Some(1_000));
    }

    #[test]
    fn a_partition_taken_with_a_backlog_holds_timers_the_clock_already_passed() {
        let mut horizons = Horizons::default();
        let carts = pair("carts", 0);
        let held = [carts.clone()];
        let none = HashMap::new();
        // Holding nothing, the timers ran on the wall clock.
        assert_eq!(horizons.running(1_000), 1_000);
        assert!(horizons.wants_answers(&held, 1_000));
        assert_eq!(horizons.unplaced(&held, &none), vec![carts.clone()]);
        let mut behind = ends(&[(carts.clone(), 25)]);
        behind.starts.insert(carts.clone(), 5);
        assert_eq!(
            horizons.at(2_000, &held, &[], &none, Some(behind)).0,
            None,
            "nothing read yet of a backlog: no timer fires"
        );
        horizons.read("carts", 0, 9, 400);
        assert_eq!(horizons.at(2_000, &held, &[], &none, None).0, Some(400));
        assert!(horizons.holding());
        assert!(!horizons.wants_answers(&held, 2_000));
        assert!(
            horizons.wants_answers(&held, 2_000 + HOLDING_REFRESH.as_millis() as i64),
            "held: asked again a refresh after the last ask"
        );
        let more = [carts.clone(), pair("checkouts", 0)];
        assert!(
            horizons.wants_answers(&more, 2_000),
            "a partition newly held is asked about"
        );
        horizons.read("carts", 0, 24, 1_900);
        assert_eq!(
            horizons.at(2_100, &held, &[], &none, None).0,
            Some(2_100),
            "caught up"
        );
        assert!(!horizons.holding());
    }

    /// A broker that did not answer for a partition (timeout, partition error) is asked again
    /// at the refresh pace, not at every step: each ask costs the broker a few requests, and
    /// the asks' thread up to `ASK_TIMEOUT` per request. The unknown end holds timers
    /// meanwhile.
    #[test]
    fn a_partition_the_broker_did_not_answer_for_is_asked_again_at_the_refresh_pace() {
        let mut horizons = Horizons::default();
        let carts = pair("carts", 0);
        let held = [carts.clone()];
        let none = HashMap::new();
        assert!(horizons.wants_answers(&held, 1_000));
        let (at, _) = horizons.at(1_000, &held, &[], &none, Some(Answers::default()));
        assert_eq!(at, None, "unknown: held");
        assert!(
            !horizons.wants_answers(&held, 1_100),
            "asked just now: not again before the refresh"
        );
        assert!(
            horizons.wants_answers(&[carts, pair("carts", 1)], 1_100),
            "a partition never asked about is asked at once"
        );
    }

    #[test]
    fn the_consumers_position_counts_as_read_so_far() {
        let mut horizons = Horizons::default();
        let orders = pair("orders", 1);
        let held = [orders.clone()];
        horizons.read("orders", 1, 4, 700);
        // Records past 4 were skipped by the consumer (e.g. transaction markers): its position
        // is the end, so nothing is left to read.
        let positions = HashMap::from([(orders.clone(), 7)]);
        let answers = ends(&[(orders.clone(), 7)]);
        assert_eq!(
            horizons.at(1_000, &held, &[], &positions, Some(answers)).0,
            Some(1_000)
        );
    }

    #[test]
    fn a_partition_that_never_reaches_its_end_holds_timers_no_longer_than_the_stall_bound() {
        let mut horizons = Horizons::default();
        let orders = pair("orders", 2);
        let held = [orders.clone()];
        let none = HashMap::new();
        horizons.read("orders", 2, 4, 700);
        // The end counts a marker the consumer never hands over: 6, never reached.
        let answers = ends(&[(orders.clone(), 6)]);
        let (at, stalled) = horizons.at(1_000, &held, &[], &none, Some(answers));
        assert_eq!((at, stalled), (Some(700), Vec::new()));
        // As if STALL_AFTER had passed without the position moving.
        stood_still(&mut horizons, &orders, 5);
        let (at, stalled) = horizons.at(9_000, &held, &[], &none, None);
        assert_eq!(
            at,
            Some(1_000),
            "the last answer is old: no further than it was asked"
        );
        assert_eq!(stalled, vec![orders.clone()], "reported once");
        let answers = ends(&[(orders.clone(), 6)]);
        let (at, stalled) = horizons.at(9_000, &held, &[], &none, Some(answers));
        assert_eq!(at, Some(9_000), "released: timers run on");
        assert_eq!(stalled, Vec::<Pair>::new());
        assert_eq!(
            horizons.at(9_100, &held, &[], &none, None).1,
            Vec::<Pair>::new()
        );
        // A record read again: the partition holds again while behind.
        horizons.read("orders", 2, 5, 8_000);
        let answers = ends(&[(orders.clone(), 9)]);
        assert_eq!(
            horizons.at(9_200, &held, &[], &none, Some(answers)).0,
            Some(8_000)
        );
    }

    /// No timer due for longer than the stall bound (the stage asks nothing then): a record
    /// that arrives meanwhile, not read yet, holds timers like any other. The stall clock
    /// starts when the partition is first seen behind, not at the last look that found it
    /// caught up; it used to, and such a partition was released on sight.
    #[test]
    fn a_partition_caught_up_when_last_looked_at_holds_timers_when_it_falls_behind_later() {
        let mut horizons = Horizons::default();
        let checkouts = pair("checkouts", 0);
        let held = [checkouts.clone()];
        let none = HashMap::new();
        let start = Instant::now();
        horizons.read("checkouts", 0, 4, 700);
        let answers = ends(&[(checkouts.clone(), 5)]);
        assert_eq!(
            horizons
                .at_on(1_000, start, &held, &[], &none, Some(answers))
                .0,
            Some(1_000),
            "caught up"
        );
        // Next look a minute later: a record arrived that this member has not read yet.
        let later = start + Duration::from_secs(60);
        let answers = ends(&[(checkouts.clone(), 6)]);
        let (at, stalled) = horizons.at_on(61_000, later, &held, &[], &none, Some(answers));
        assert_eq!(
            (at, stalled),
            (Some(700), Vec::new()),
            "behind since this look only: held, not released"
        );
        // Standing still behind for the stall bound from then on releases it.
        let answers = ends(&[(checkouts.clone(), 6)]);
        let (at, stalled) = horizons.at_on(
            66_000,
            later + STALL_AFTER,
            &held,
            &[],
            &none,
            Some(answers),
        );
        assert_eq!((at, stalled), (Some(66_000), vec![checkouts.clone()]));
    }

    #[test]
    fn a_quiet_partition_that_gets_a_record_holds_timers_like_any_other() {
        let mut horizons = Horizons::default();
        let carts = pair("carts", 0);
        let held = [carts.clone()];
        let none = HashMap::new();
        horizons.read("carts", 0, 4, 700);
        let answers = ends(&[(carts.clone(), 5)]);
        assert_eq!(
            horizons.at(1_000, &held, &[], &none, Some(answers)).0,
            Some(1_000)
        );
        // Caught up for long: the position stood still, but nothing was left to read.
        stood_still(&mut horizons, &carts, 5);
        let answers = ends(&[(carts.clone(), 5)]);
        assert_eq!(
            horizons.at(9_000, &held, &[], &none, Some(answers)).0,
            Some(9_000)
        );
        // A new record, not read yet: it holds timers at the last one read.
        let answers = ends(&[(carts.clone(), 6)]);
        let (at, stalled) = horizons.at(9_100, &held, &[], &none, Some(answers));
        assert_eq!((at, stalled), (Some(700), Vec::new()));
    }

    fn sources(list: &[(Pair, i64)], routed: &[(Pair, i64)]) -> Answers {
        Answers {
            source_ends: list.iter().cloned().collect(),
            routed: routed.iter().cloned().collect(),
            ..Answers::default()
        }
    }

    /// A by-shop stage holding by-shop partition 0, read to offset 9 (stamped 0.9 s), with
    /// one source partition, orders 0.
    fn by_shop_read_to_9() -> (Horizons, [Pair; 1], [Pair; 1]) {
        let mut horizons = Horizons::default();
        horizons.read("by-shop", 0, 9, 900);
        (horizons, [pair("by-shop", 0)], [pair("orders", 0)])
    }

    /// An answer: orders 0 ends at `end`, routed to `routed`; by-shop 0 ends at `by_shop_end`.
    fn by_shop_answer(end: i64, routed: i64, by_shop_end: i64) -> Answers {
        let orders = pair("orders", 0);
        let mut asked = sources(&[(orders.clone(), end)], &[(orders, routed)]);
        asked.ends = HashMap::from([(pair("by-shop", 0), by_shop_end)]);
        asked
    }

    /// Issue 15 (by-shop timers): an order still in its source topic at a restart, not yet
    /// routed to the by-shop topic, while the by-shop partition is read to its end. Its
    /// customer's due step used to fire (the by-shop side was caught up): now the timers wait
    /// until the group routed the source to where it ended when asked.
    #[test]
    fn a_source_backlog_holds_the_timers_until_the_group_routed_it() {
        let mut horizons = Horizons::default();
        let by_shop = pair("by-shop", 0);
        let held = [by_shop.clone()];
        let orders = [pair("orders", 0), pair("orders", 1)];
        let none = HashMap::new();
        horizons.read("by-shop", 0, 9, 900);
        let mut asked = sources(
            &[(orders[0].clone(), 12), (orders[1].clone(), 4)],
            &[(orders[0].clone(), 10), (orders[1].clone(), 4)],
        );
        asked.ends = HashMap::from([(by_shop.clone(), 10)]);
        let (at, _) = horizons.at(1_000, &held, &orders, &none, Some(asked));
        assert_eq!(at, None, "two orders not routed yet: no timer fires");
        assert!(horizons.holding());
        // Routed (committed) up to where orders 0 ended at the first ask, to another by-shop
        // partition; more arrived since.
        let mut asked = sources(
            &[(orders[0].clone(), 15), (orders[1].clone(), 4)],
            &[(orders[0].clone(), 12)],
        );
        asked.ends = HashMap::from([(by_shop.clone(), 10)]);
        let (at, _) = horizons.at(2_000, &held, &orders, &none, Some(asked));
        assert_eq!(at, Some(1_000), "up to the first ask, not past it");
        // What this member routed itself counts before the group commits it.
        horizons.routed("orders", 0, 15);
        let mut asked = sources(&[(orders[0].clone(), 15), (orders[1].clone(), 4)], &[]);
        asked.ends = HashMap::from([(by_shop.clone(), 10)]);
        asked.routed_here = horizons.routed_here();
        let (at, _) = horizons.at(3_000, &held, &orders, &none, Some(asked));
        assert_eq!(at, Some(3_000), "routed everywhere: the wall clock");
        assert!(!horizons.holding());
    }

    /// A source partition nobody routes (its member gone, a read that stopped) holds the
    /// timers no longer than the stall bound, and is reported once.
    #[test]
    fn a_source_partition_that_is_never_routed_holds_timers_no_longer_than_the_stall_bound() {
        let mut horizons = Horizons::default();
        let orders = [pair("orders", 0)];
        let none = HashMap::new();
        let start = Instant::now();
        let asked = sources(&[(orders[0].clone(), 3)], &[(orders[0].clone(), 1)]);
        let (at, stalled) = horizons.at_on(1_000, start, &[], &orders, &none, Some(asked));
        assert_eq!((at, stalled), (None, Vec::new()));
        let later = start + STALL_AFTER;
        let asked = sources(&[(orders[0].clone(), 3)], &[(orders[0].clone(), 1)]);
        let (at, stalled) = horizons.at_on(6_000, later, &[], &orders, &none, Some(asked));
        assert_eq!((at, stalled), (Some(6_000), orders.to_vec()));
    }

    /// A source record this member routes itself lands in the by-shop topic past the by-shop
    /// ends last asked. Counting that routing at once (before the next ask) let the timers run
    /// to the ask's time while the by-shop partition looked read to its (stale) end: the
    /// order that stops a sequence was routed but unread, and the step fired. What the member
    /// routed counts from the next ask on, whose by-shop ends are asked after the forwards were
    /// acknowledged.
    #[test]
    fn a_record_this_member_routed_holds_the_timers_until_the_by_shop_ends_are_asked_again() {
        let (mut horizons, held, orders) = by_shop_read_to_9();
        let none = HashMap::new();
        let asked = by_shop_answer(5, 4, 10);
        let (at, _) = horizons.at(1_000, &held, &orders, &none, Some(asked));
        assert_eq!(at, None, "one order not routed yet: no timer fires");
        // This member routes that order (offset 4) to by-shop offset 10, acknowledged.
        horizons.routed("orders", 0, 5);
        let (at, _) = horizons.at(1_100, &held, &orders, &none, None);
        assert_eq!(
            at, None,
            "the routed order is past the by-shop end last asked: still held"
        );
        // An answer to an ask put before the routing (out meanwhile, answered now) does not
        // count it: its by-shop end may be below the forward.
        let asked = by_shop_answer(5, 4, 10);
        let (at, _) = horizons.at(1_200, &held, &orders, &none, Some(asked));
        assert_eq!(at, None, "asked before the routing: still held");
        // The next ask, put after it, carries it and sees the by-shop end past the order: held
        // at the last record read.
        let mut asked = by_shop_answer(5, 4, 11);
        asked.routed_here = horizons.routed_here();
        let (at, _) = horizons.at(1_400, &held, &orders, &none, Some(asked));
        assert_eq!(at, None, "routed, not read yet: held");
        horizons.read("by-shop", 0, 10, 950);
        let (at, _) = horizons.at(1_500, &held, &orders, &none, None);
        assert_eq!(at, Some(1_400), "read: up to the ask that saw it routed");
    }

    /// A by-shop partition mixes records of several source partitions, routed at different
    /// lags, so its timestamps do not grow with its offsets: after a restart one source's
    /// backlog (abandonments, received up to 1.9 s) is routed before another's (an order
    /// received at 0.5 s). Once the order was routed, its by-shop partition was held at the
    /// last record read (1.9 s) although the order sat unread after it: steps due between
    /// 0.5 s and 1.9 s fired past the order that stops them. Routed to an ask's time counts
    /// only once the held partitions are read to the by-shop ends asked with the routing seen.
    #[test]
    fn a_routed_record_behind_later_stamped_ones_holds_the_timers_until_it_is_read() {
        let mut horizons = Horizons::default();
        let by_shop = pair("by-shop", 0);
        let held = [by_shop.clone()];
        let orders = pair("orders", 0);
        let abandonments = pair("abandonments", 0);
        let sources_held = [orders.clone(), abandonments.clone()];
        let none = HashMap::new();
        horizons.read("by-shop", 0, 9, 400);
        // At 1 s the order (orders 4, received at 0.5 s) is not routed yet.
        let mut asked = sources(
            &[(orders.clone(), 5), (abandonments.clone(), 10)],
            &[(orders.clone(), 4), (abandonments.clone(), 10)],
        );
        asked.ends = HashMap::from([(by_shop.clone(), 10)]);
        let (at, _) = horizons.at(1_000, &held, &sources_held, &none, Some(asked));
        assert_eq!(at, None, "the order is not routed: no timer fires");
        // Ten abandonments (received up to 1.9 s) were routed to by-shop 10..19, then the
        // order to by-shop 20; this member read up to 19.
        horizons.read("by-shop", 0, 19, 1_900);
        let mut asked = sources(
            &[(orders.clone(), 5), (abandonments.clone(), 20)],
            &[(orders.clone(), 5), (abandonments.clone(), 20)],
        );
        asked.ends = HashMap::from([(by_shop.clone(), 21)]);
        let (at, _) = horizons.at(2_000, &held, &sources_held, &none, Some(asked));
        assert_eq!(
            at, None,
            "routed, not read yet: nothing past the order may fire"
        );
        horizons.read("by-shop", 0, 20, 500);
        let (at, _) = horizons.at(2_100, &held, &sources_held, &none, None);
        assert_eq!(at, Some(2_000), "read: up to the ask that saw it routed");
    }

    /// Issue 15 (answers asked off the loop): ends asked a while ago say nothing of records
    /// received since. A member caught up when last answered, then handed a burst it has read
    /// only part of, ran the timers to the wall clock on the old ends: a checkout's
    /// abandonment fired while its order sat unread. On an old answer timers run no further
    /// than when it was asked; a current one shows the burst.
    #[test]
    fn an_old_answer_lets_timers_run_no_further_than_when_it_was_asked() {
        let mut horizons = Horizons::default();
        let orders = pair("orders", 0);
        let held = [orders.clone()];
        let none = HashMap::new();
        horizons.read("orders", 0, 19, 900);
        let mut answers = ends(&[(orders.clone(), 20)]);
        answers.asked_at = Some(1_000);
        assert_eq!(
            horizons.at(1_100, &held, &[], &none, Some(answers)).0,
            Some(1_100),
            "caught up on a current answer: the wall clock"
        );
        // A minute on: 40 records came, this member read one of them (stamped 59 s).
        horizons.read("orders", 0, 20, 59_000);
        let (at, _) = horizons.at(59_500, &held, &[], &none, None);
        assert_eq!(
            at,
            Some(1_000),
            "an old answer: no further than when it was asked"
        );
        assert!(horizons.holding());
        let mut answers = ends(&[(orders.clone(), 60)]);
        answers.asked_at = Some(59_500);
        let (at, _) = horizons.at(59_520, &held, &[], &none, Some(answers));
        assert_eq!(
            at,
            Some(59_000),
            "the burst holds them at the last record read"
        );
    }

    /// An answer that leaves a held partition out (its request timed out, or a partition
    /// error) says nothing new of it: that partition's end stays as old as it was, and timers
    /// run no further than when it was asked, although the answer itself is new.
    #[test]
    fn a_partition_an_answer_left_out_keeps_the_timers_to_its_older_end() {
        let mut horizons = Horizons::default();
        let orders = pair("orders", 0);
        let carts = pair("carts", 0);
        let held = [orders.clone(), carts.clone()];
        let none = HashMap::new();
        horizons.read("orders", 0, 19, 900);
        horizons.read("carts", 0, 4, 950);
        let mut answers = ends(&[(orders.clone(), 20), (carts.clone(), 5)]);
        answers.asked_at = Some(1_000);
        assert_eq!(
            horizons.at(1_000, &held, &[], &none, Some(answers)).0,
            Some(1_000)
        );
        // A minute on, the orders' end was not answered: read 20 of what may be 60 by now.
        horizons.read("orders", 0, 20, 59_000);
        let mut answers = ends(&[(carts.clone(), 5)]);
        answers.asked_at = Some(60_000);
        let (at, _) = horizons.at(60_100, &held, &[], &none, Some(answers));
        assert_eq!(at, Some(1_000), "no further than the orders' end was asked");
        assert!(horizons.holding() && !horizons.waiting_for_records());
        let mut answers = ends(&[(orders.clone(), 21), (carts.clone(), 5)]);
        answers.asked_at = Some(60_300);
        let (at, _) = horizons.at(60_400, &held, &[], &none, Some(answers));
        assert_eq!(at, Some(60_400), "answered, caught up: the wall clock");
    }

    /// A by-shop stage's answer counts as of when it was asked, not when it is taken: a source
    /// record received in between may be routed to no by-shop partition yet.
    #[test]
    fn a_routed_answer_releases_the_timers_to_when_it_was_asked() {
        let (mut horizons, held, orders) = by_shop_read_to_9();
        let none = HashMap::new();
        let mut asked = by_shop_answer(5, 5, 10);
        asked.asked_at = Some(1_000);
        let (at, _) = horizons.at(1_300, &held, &orders, &none, Some(asked));
        assert_eq!(
            at,
            Some(1_000),
            "routed and read as of the ask, not of its answer"
        );
        assert!(
            !horizons.waiting_for_records(),
            "trailing the wall clock by the ask's age is no backlog: nothing asked while no timer is due"
        );
        // The next answer finds an order not routed yet: records are left.
        let mut asked = by_shop_answer(6, 5, 10);
        asked.asked_at = Some(2_000);
        let (at, _) = horizons.at(2_100, &held, &orders, &none, Some(asked));
        assert_eq!(at, Some(1_000));
        assert!(horizons.waiting_for_records());
    }

    /// Stages that route nothing ask about no source and wait for none.
    #[test]
    fn without_sources_nothing_waits_for_a_router() {
        let mut horizons = Horizons::default();
        let (at, _) = horizons.at(1_000, &[], &[], &HashMap::new(), Some(Answers::default()));
        assert_eq!(at, Some(1_000));
    }
}

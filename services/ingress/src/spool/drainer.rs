//! The drainer: publishes spooled events to Kafka in arrival order, then moves the checkpoint
//! and deletes what is drained. Runs beside the ingress, and alone under `aftercart spool drain`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aftercart_kafka::StatsContext;
use aftercart_runtime::health::Readiness;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::entry::Entry;
use super::refused::{self, SetAside};
use super::segment::{self, FrameReader, Step};
use super::{Shared, Spool};
use crate::publish::{classify, is_size_refusal, ErrorClass};
use crate::readiness::KafkaHealth;

/// Most entries published per batch (and per checkpoint write).
const BATCH_ENTRIES: usize = 2000;
/// Most frame bytes read per batch.
const BATCH_BYTES: u64 = 16 << 20;
/// Gauges (oldest age above all) are refreshed at least this often.
const TICK: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often (in gauge ticks) the events held in `refused/` are counted again.
const HELD_ASIDE_EVERY_TICKS: u64 = 60;

/// Why a refused record goes to quarantine instead of being retried forever.
const REFUSED_REASON: &str = "spool_publish_refused";

/// Publishes a spool's events to Kafka.
pub struct Drainer {
    spool: Spool,
    producer: FutureProducer<StatsContext>,
    quarantine_topic: String,
    /// Publishing waits until the topics are known to exist.
    kafka_ready: Readiness,
    /// Told of every outcome, for readiness (the ingress's; none under `aftercart spool drain`).
    kafka_health: Option<std::sync::Arc<KafkaHealth>>,
    /// How many bytes `refused/` may hold; `None`: nothing is set aside (`aftercart spool
    /// drain`, whose events Kafka still refuses stay where they are).
    set_aside_limit: Option<u64>,
    /// Events of the batch in progress set aside rather than published.
    set_aside: AtomicU64,
}

/// Where the drainer reads next.
#[derive(Default)]
pub(super) struct Cursor {
    /// The sequence number of the next entry to read.
    pub(super) want: u64,
    /// The open segment: its first sequence number and a reader on it.
    reader: Option<(u64, FrameReader)>,
}

/// One spooled entry on its way to Kafka.
struct Pending {
    entry: Entry,
    /// The delivery of the first attempt, still in the producer.
    original: Option<DeliveryFuture>,
}

impl Drainer {
    pub fn new(
        spool: Spool,
        producer: FutureProducer<StatsContext>,
        quarantine_topic: String,
        kafka_ready: Readiness,
    ) -> Self {
        Self {
            spool,
            producer,
            quarantine_topic,
            kafka_ready,
            kafka_health: None,
            set_aside_limit: None,
            set_aside: AtomicU64::new(0),
        }
    }

    /// Sets aside in `refused/`, up to `max_bytes` there, an event Kafka refuses for its size
    /// on its topic and on the quarantine topic ([`refused`]), instead of retrying it for ever.
    pub fn setting_aside(mut self, max_bytes: u64) -> Self {
        self.set_aside_limit = Some(max_bytes);
        self
    }

    /// Reports every publish outcome to `health`.
    pub fn with_kafka_health(mut self, health: std::sync::Arc<KafkaHealth>) -> Self {
        self.kafka_health = Some(health);
        self
    }

    fn outcome(&self, ok: bool) {
        match (&self.kafka_health, ok) {
            (Some(health), true) => health.succeeded(),
            (Some(health), false) => health.failed(),
            (None, _) => {}
        }
    }

    /// Drains until `stop`; after `finish` it returns as soon as the spool is empty. What is
    /// not drained by then stays on disk for the next start.
    pub async fn run(self, finish: CancellationToken, stop: CancellationToken) {
        let shared = &self.spool.shared;
        let mut durable = shared.durable.subscribe();
        let mut cursor = Cursor {
            want: shared.drained_seq(),
            reader: None,
        };
        // The gauges (the oldest age above all) keep moving while a batch waits on Kafka.
        let gauges = tokio::spawn({
            let shared = std::sync::Arc::clone(shared);
            async move {
                let mut tick = tokio::time::interval(TICK);
                // A slow count must not be followed by a burst of the ticks it missed.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut ticks = 0u64;
                loop {
                    tick.tick().await;
                    shared.refresh_gauges();
                    // An operator may have drained or moved `refused/` meanwhile.
                    if ticks.is_multiple_of(HELD_ASIDE_EVERY_TICKS) {
                        let shared = std::sync::Arc::clone(&shared);
                        let _ =
                            tokio::task::spawn_blocking(move || shared.count_held_aside()).await;
                    }
                    ticks += 1;
                }
            }
        });
        loop {
            shared.refresh_gauges();
            let empty = self.spool.pending_events() == 0;
            if stop.is_cancelled() || (finish.is_cancelled() && empty) {
                break;
            }
            let has_work = cursor.want < *durable.borrow_and_update() || !empty;
            if has_work && self.kafka_ready.is_ready() {
                match self.step(cursor, &stop).await {
                    (next, true) => {
                        cursor = next;
                        continue;
                    }
                    (next, false) => cursor = next,
                }
            }
            tokio::select! {
                _ = durable.changed() => {}
                () = tokio::time::sleep(TICK) => {}
                () = finish.cancelled(), if !finish.is_cancelled() => {}
                () = stop.cancelled() => {}
            }
        }
        gauges.abort();
        shared.refresh_gauges();
    }

    /// Reads and publishes one batch. Returns the cursor and whether anything was drained.
    async fn step(&self, cursor: Cursor, stop: &CancellationToken) -> (Cursor, bool) {
        let shared = std::sync::Arc::clone(&self.spool.shared);
        let read = tokio::task::spawn_blocking(move || {
            let mut cursor = cursor;
            let batch = read_batch(&shared, &mut cursor);
            (cursor, batch)
        })
        .await;
        let Ok((cursor, batch)) = read else {
            return (Cursor::default(), false);
        };
        let batch = match batch {
            Ok(batch) if batch.entries.is_empty() && batch.lost_events == 0 => {
                return (cursor, false)
            }
            Ok(batch) => batch,
            // A drained segment deleted by the writer between the snapshot and the open.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return (Cursor::default_at(&self.spool), false);
            }
            Err(error) => {
                self.spool.metrics().error("read");
                tracing::error!(%error, "Cannot read the spool; retrying.");
                return (Cursor::default_at(&self.spool), false);
            }
        };
        let end = cursor.want;
        let (lost_events, lost_bytes) = (batch.lost_events, batch.lost_bytes);
        self.set_aside.store(0, Ordering::Relaxed);
        let drained = self.publish(batch.entries, stop).await;
        match drained {
            Some((events, bytes)) => {
                self.advance(end, events + lost_events, bytes + lost_bytes)
                    .await;
                let set_aside = self.set_aside.load(Ordering::Relaxed);
                self.spool
                    .metrics()
                    .drained(events.saturating_sub(set_aside));
                (cursor, true)
            }
            // Stopped before Kafka took everything: start over from the checkpoint next time.
            None => (Cursor::default_at(&self.spool), false),
        }
    }

    /// Publishes a batch, retrying what Kafka does not take, until all is in or `stop`.
    /// Returns the events and frame bytes drained, or `None` if stopped first.
    async fn publish(
        &self,
        batch: Vec<(Entry, usize)>,
        stop: &CancellationToken,
    ) -> Option<(u64, u64)> {
        let events = batch.len() as u64;
        let bytes: u64 = batch.iter().map(|(_, len)| *len as u64).sum();
        let mut todo: Vec<Pending> = {
            let mut originals = self.spool.shared.lock_originals();
            batch
                .into_iter()
                .map(|(entry, _)| Pending {
                    original: originals.remove(&entry.seq),
                    entry,
                })
                .collect()
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            // Waiting on Kafka (an original delivery can take a minute to time out) must not
            // hold up a shutdown: what is not in Kafka stays on disk.
            todo = tokio::select! {
                left = self.attempt(todo) => left,
                () = stop.cancelled() => return None,
            };
            if todo.is_empty() {
                return Some((events, bytes));
            }
            tracing::warn!(waiting = todo.len(), retry_in = ?backoff, "Kafka did not take spooled events yet; retrying.");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt at every entry, in order; returns those Kafka did not take.
    async fn attempt(&self, todo: Vec<Pending>) -> Vec<Pending> {
        let mut sent: Vec<(Pending, DeliveryFuture)> = Vec::with_capacity(todo.len());
        let mut failed = Vec::new();
        for mut pending in todo {
            if let Some(original) = pending.original.take() {
                // The first attempt may still land: waiting for it avoids a second copy.
                if let Ok(Ok(_)) = original.await {
                    continue;
                }
            }
            loop {
                match self.send(&pending.entry, None) {
                    Ok(delivery) => {
                        sent.push((pending, delivery));
                        break;
                    }
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                        if !sent.is_empty() =>
                    {
                        // Let the queue empty before queueing more.
                        failed.extend(settle(std::mem::take(&mut sent), self).await);
                    }
                    Err(error) if classify(&error) == ErrorClass::Permanent => {
                        // Refused before sending (larger than the producer's message.max.bytes):
                        // retrying would hold up every event behind it for ever.
                        self.spool.metrics().publish_error(ErrorClass::Permanent);
                        failed.extend(self.refused_for_good(pending, &error).await);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "The producer refused a spooled event; retrying.");
                        failed.push(pending);
                        break;
                    }
                }
            }
        }
        failed.extend(settle(sent, self).await);
        failed.sort_by_key(|p| p.entry.seq);
        failed
    }

    fn send(&self, entry: &Entry, reason: Option<&str>) -> Result<DeliveryFuture, KafkaError> {
        let record = &entry.record;
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 1);
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let topic = match reason {
            Some(reason) => {
                headers = headers.insert(Header {
                    key: "aftercart-quarantine-reason",
                    value: Some(reason),
                });
                self.quarantine_topic.as_str()
            }
            None => record.topic.as_str(),
        };
        // The time it was received, not drained: consumers' timers (abandonment delays,
        // review windows) must not shift by the length of an outage.
        let kafka_record = FutureRecord::to(topic)
            .key(&record.key)
            .payload(record.body.as_ref())
            .headers(headers)
            .timestamp(record.received_unix_ms as i64);
        self.producer
            .send_result(kafka_record)
            .map_err(|(error, _)| error)
    }

    /// A record no retry gets into its topic: a copy goes to the quarantine topic, and when that
    /// refuses it for good too (the record's size: the quarantine topic has the same limit), the
    /// entry is set aside in `refused/`. Either way it leaves the backlog; returned when it must
    /// be tried again (the quarantine topic failed for another reason, or the disk did).
    async fn refused_for_good(&self, pending: Pending, error: &KafkaError) -> Option<Pending> {
        let topic = &pending.entry.record.topic;
        tracing::error!(%error, %topic, seq = pending.entry.seq, "Kafka refuses a spooled event for good; sending it to the quarantine topic.");
        let quarantine_error = match self.send(&pending.entry, Some(REFUSED_REASON)) {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => return None,
                Ok(Err((error, _))) => error,
                Err(_canceled) => return Some(pending),
            },
            Err(error) => error,
        };
        // Only a size refusal is the record's own: any other (a cluster setting refusing every
        // record) is retried until an operator fixes it, never a whole backlog set aside.
        let sized = is_size_refusal(error) && is_size_refusal(&quarantine_error);
        let Some(max_bytes) = self.set_aside_limit.filter(|_| sized) else {
            tracing::error!(error = %quarantine_error, %topic, seq = pending.entry.seq, "The quarantine topic did not take a refused spooled event either; retrying.");
            return Some(pending);
        };
        let shared = std::sync::Arc::clone(&self.spool.shared);
        let entry = pending.entry.clone();
        let written = tokio::task::spawn_blocking(move || {
            let written = refused::set_aside(shared.disk.as_ref(), &shared.dir, &entry, max_bytes);
            shared.count_held_aside();
            written
        })
        .await;
        let seq = pending.entry.seq;
        match written {
            Ok(Ok(SetAside::Written(path))) => {
                self.spool.metrics().set_aside();
                self.set_aside.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %quarantine_error, %topic, seq, path = %path.display(), "The quarantine topic refuses the event for its size too: set aside on disk. Publish that directory with `aftercart spool drain --ingress-spool-dir` once the topics take it.");
                None
            }
            Ok(Ok(SetAside::AlreadyThere)) => {
                self.set_aside.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(Ok(SetAside::Full)) => {
                tracing::error!(%topic, seq, max_bytes, "The refused/ directory is full: the event Kafka refuses stays in the spool, and the events behind it wait.");
                Some(pending)
            }
            Ok(Err(busy)) if busy.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::warn!(seq, "A drain holds the refused/ directory; setting the event aside when it is done.");
                Some(pending)
            }
            Ok(Err(io)) => {
                self.spool.metrics().error("write");
                tracing::error!(error = %io, seq, "Cannot set a refused spooled event aside; retrying.");
                Some(pending)
            }
            Err(_panicked) => Some(pending),
        }
    }

    /// Records the batch as drained (published or lost to damage): checkpoint, counters, and
    /// drained segments deleted.
    async fn advance(&self, end: u64, events: u64, bytes: u64) {
        let shared = std::sync::Arc::clone(&self.spool.shared);
        let _ = tokio::task::spawn_blocking(move || shared.mark_drained(end, events, bytes)).await;
    }
}

/// Waits for the deliveries in order; returns the entries Kafka did not take. A record Kafka
/// refuses for good (too large, invalid) goes to the quarantine topic instead, or is set aside
/// on disk ([`Drainer::refused_for_good`]); an authorisation
/// error is the operator's to fix (counted and alerted on), so the events stay in the spool.
async fn settle(sent: Vec<(Pending, DeliveryFuture)>, drainer: &Drainer) -> Vec<Pending> {
    let mut failed = Vec::new();
    for (pending, delivery) in sent {
        let error = match delivery.await {
            Ok(Ok(_)) => {
                drainer.outcome(true);
                continue;
            }
            Ok(Err((error, _))) => {
                // A record refused for its own sake says nothing of Kafka's health, either way
                // (as on the live path).
                if classify(&error) != ErrorClass::Permanent {
                    drainer.outcome(false);
                }
                error
            }
            Err(_canceled) => {
                failed.push(pending);
                continue;
            }
        };
        let class = classify(&error);
        drainer.spool.metrics().publish_error(class);
        match class {
            ErrorClass::Permanent => failed.extend(drainer.refused_for_good(pending, &error).await),
            ErrorClass::Authorization => {
                tracing::error!(%error, topic = %pending.entry.record.topic, "Kafka refuses the ingress's credentials or ACLs: spooled events wait until an operator fixes them.");
                failed.push(pending);
            }
            ErrorClass::Retriable => failed.push(pending),
        }
    }
    failed
}

impl Cursor {
    /// A cursor at the first entry not yet drained.
    fn default_at(spool: &Spool) -> Cursor {
        Cursor {
            want: spool.shared.drained_seq(),
            reader: None,
        }
    }
}

/// What one read gives the drainer.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) entries: Vec<(Entry, usize)>,
    /// Entries counted in the backlog that damage found while running destroyed, and an
    /// estimate of their bytes (the damaged region): they leave the counters with the batch.
    pub(super) lost_events: u64,
    pub(super) lost_bytes: u64,
}

/// Reads the next entries (in sequence order) that are durable, up to the batch limits. Damage
/// found while running is skipped to the next valid frame: counted, logged, the segment copied
/// to `damaged/`, and the entries it destroyed released from the backlog counters.
pub(super) fn read_batch(shared: &Shared, cursor: &mut Cursor) -> std::io::Result<Batch> {
    let segments: Vec<_> = shared.lock_state().segments.iter().cloned().collect();
    let disk = shared.disk.as_ref();
    let mut batch = Batch::default();
    let mut bytes = 0u64;
    while batch.entries.len() < BATCH_ENTRIES && bytes < BATCH_BYTES {
        let Some(index) = segments.iter().rposition(|s| s.first_seq <= cursor.want) else {
            // Entries below every segment were lost to damage at open: skip to what exists.
            match segments.first() {
                Some(first) if first.first_seq > cursor.want => {
                    cursor.want = first.first_seq;
                    continue;
                }
                _ => break,
            }
        };
        let segment = &segments[index];
        if cursor.reader.as_ref().map(|(first, _)| *first) != Some(segment.first_seq) {
            cursor.reader = Some((
                segment.first_seq,
                FrameReader::open(disk, &segment.path, 0)?,
            ));
        }
        let (_, reader) = cursor.reader.as_mut().expect("opened above");
        match reader.next_frame(segment.len)? {
            Step::Entry(entry, _) if entry.seq < cursor.want => {}
            Step::Entry(entry, frame_len) => {
                cursor.want = entry.seq + 1;
                bytes += frame_len as u64;
                batch.entries.push((entry, frame_len));
            }
            Step::Damage(why) => {
                let at = reader.offset;
                let found = reader.resync(segment.len, cursor.want)?;
                let skipped_bytes = reader.offset - at;
                // The entries the damage covered: up to the next intact frame, else to the end
                // of this segment.
                let resume =
                    found.unwrap_or_else(|| segment.last_seq.map_or(cursor.want, |last| last + 1));
                let found = found.is_some();
                let lost = resume.saturating_sub(cursor.want);
                cursor.want = cursor.want.max(resume);
                batch.lost_events += lost;
                batch.lost_bytes += skipped_bytes;
                shared.metrics.error("read");
                shared.metrics.corrupt(skipped_bytes);
                shared.metrics.damaged_events(lost);
                let copy = segment::keep_damaged_copy(disk, &shared.dir, &segment.path)
                    .map(|p| match p {
                        Some(p) => p.display().to_string(),
                        None => "not kept: damaged/ holds enough copies".to_string(),
                    })
                    .unwrap_or_else(|error| format!("not kept: {error}"));
                tracing::error!(segment = %segment.path.display(), reason = why, skipped_bytes, lost_events = lost, intact_frame_after = found, copy = %copy, "Spool segment damaged while running (the disk is failing): skipped to the next intact frame.");
                if !found && !segment.sealed {
                    // The active segment: appends continue after the damage.
                    break;
                }
            }
            Step::End => match segments.get(index + 1) {
                Some(next) if segment.sealed => {
                    cursor.want = cursor.want.max(next.first_seq);
                    cursor.reader = None;
                }
                _ => break,
            },
        }
    }
    Ok(batch)
}

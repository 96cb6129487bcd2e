//! The durable spool: a write-ahead log on local disk for webhooks Kafka did not acknowledge in
//! time. A request is answered 200 only after its event is fsynced here (group commit); the
//! drainer publishes spooled events to Kafka in arrival order and truncates the log behind it.
//!
//! Layout of the directory: `LOCK` (one process per directory), numbered segment files
//! (`<first seq>.wal`, frames with sequence numbers and checksums), `checkpoint` (every entry
//! below it is in Kafka), `damaged/` (copies of damaged segments, for inspection) and
//! `refused/` (events Kafka refused for good on their topic and on the quarantine topic). Opening
//! replays nothing by itself: it counts what is left, cuts a torn tail back to the last intact
//! frame, rewrites a segment damaged in its middle around the damage, and the drainer then
//! publishes the rest. Every file operation goes through [`disk::Disk`].

pub mod crash_disk;
pub mod disk;
pub mod drainer;
pub mod entry;
pub mod metrics;
pub mod refused;
pub mod segment;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aftercart_runtime::Event as _;
use rdkafka::producer::future_producer::DeliveryFuture;
use tokio::sync::{oneshot, watch};

use crate::events::CheckpointNotWritten;

pub use disk::{Disk, RealDisk};
pub use entry::{Entry, SpoolRecord};
pub use metrics::{Rejection, SpoolMetrics};

/// A group commit (segment creation, write, fsync) running longer than this marks the spool
/// stalled: a local disk answers in milliseconds, and a request has seconds in all.
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// Segments roll at this size (or at an eighth of the limit, if smaller), so a drained prefix
/// is deleted without waiting for a huge file to empty.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("another process holds the spool lock in {0} (one ingress per spool directory)")]
    Locked(PathBuf),
    #[error("cannot open the spool in {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Why an event was not spooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("the spool is full (AFTERCART_INGRESS_SPOOL_MAX_BYTES)")]
    Full,
    #[error("the spool disk failed")]
    Disk,
    /// Only from [`Spool::trouble`]: a group commit has hung past [`STALLED_AFTER`].
    #[error("the spool disk is not answering")]
    Stalled,
}

impl AppendError {
    pub fn rejection(self) -> Rejection {
        match self {
            AppendError::Full => Rejection::Full,
            AppendError::Disk => Rejection::DiskError,
            AppendError::Stalled => Rejection::Stalled,
        }
    }
}

/// The answer to an append: the entry's sequence number once fsynced. On failure the original
/// delivery (if any) comes back, so the caller can still learn whether Kafka took it.
pub type AppendResult = Result<u64, (AppendError, Option<DeliveryFuture>)>;

/// What a spool held when it was opened.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub events: u64,
    pub bytes: u64,
    pub segments: usize,
    /// Bytes cut from damaged or torn segments.
    pub discarded_bytes: u64,
}

/// One segment file as the spool tracks it.
#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Durable length: every byte before it was fsynced.
    len: u64,
    /// No more appends: the writer moved on to a newer segment.
    sealed: bool,
    /// The last entry written, if any.
    last_seq: Option<u64>,
}

/// Shared bookkeeping, guarded by one mutex. The writer holds it across a segment's creation
/// and the deletion of drained ones (file system calls that a stalled volume can make last
/// seconds), so it is taken only on blocking threads: the runtime's tasks read [`Mirror`].
#[derive(Debug, Default)]
struct State {
    segments: VecDeque<Segment>,
    /// The number the next appended entry gets.
    next_seq: u64,
    /// Every entry numbered below this is in Kafka.
    drained_seq: u64,
    /// `(first seq, arrival in Unix ms)` per group commit still (partly) in the spool: the
    /// oldest age without reading the disk.
    arrivals: VecDeque<(u64, u64)>,
    /// Undrained frame bytes per entry count, released as the drainer advances.
    pending_events: u64,
    pending_bytes: u64,
}

/// The parts of [`State`] read on the runtime (every request, the drainer's loop, the gauges),
/// kept as atomics so that no task there waits on a lock the writer may hold across disk I/O.
#[derive(Debug, Default)]
struct Mirror {
    pending_events: AtomicU64,
    pending_bytes: AtomicU64,
    drained_seq: AtomicU64,
    /// Arrival (Unix ms) of the oldest group commit still in the spool; 0 for none.
    oldest_arrival_ms: AtomicU64,
}

struct Shared {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    /// What the runtime's tasks read of `state`, without its lock.
    mirror: Mirror,
    /// Pending bytes plus bytes reserved by appends in progress: checked against the limit.
    reserved_bytes: AtomicU64,
    /// The delivery still in the producer for entries spooled after a late acknowledgement:
    /// the drainer awaits it instead of publishing a second copy.
    originals: Mutex<HashMap<u64, DeliveryFuture>>,
    /// Advanced after every fsync to the next unwritten sequence number.
    durable: watch::Sender<u64>,
    metrics: SpoolMetrics,
    /// False after a disk error, true again after the next write that works.
    disk_ok: AtomicBool,
    /// An append was refused for room and nothing was drained since.
    full: AtomicBool,
    /// When the writer's group commit in progress began ([`Shared::clock_ms`]); 0 while it
    /// waits for work.
    commit_since_ms: AtomicU64,
    /// The monotonic clock's origin (wall-clock steps must not fake or hide a stall).
    opened: std::time::Instant,
    /// Held for the spool's lifetime: the lock is released when the file is closed.
    _lock: Option<File>,
}

/// A handle on an open spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    writer: std::sync::mpsc::Sender<writer::Request>,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, takes its lock, cuts damaged tails back to their
    /// intact prefix, and starts the group-commit writer thread.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        metrics: SpoolMetrics,
    ) -> Result<(Spool, Recovered), OpenError> {
        Self::open_in(Arc::new(RealDisk), dir, max_bytes, metrics)
    }

    /// Opens the spool on `disk` with the production segment size.
    pub fn open_in(
        disk: Arc<dyn Disk>,
        dir: &Path,
        max_bytes: u64,
        metrics: SpoolMetrics,
    ) -> Result<(Spool, Recovered), OpenError> {
        let segment_bytes = SEGMENT_BYTES.min(max_bytes / 8).max(1 << 20);
        Self::open_on(disk, dir, max_bytes, segment_bytes, metrics)
    }

    /// Opens the spool on any [`Disk`] with a chosen segment size (tests roll segments often
    /// and cut the power under it). Blocking: call it off the async runtime.
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        metrics: SpoolMetrics,
    ) -> Result<(Spool, Recovered), OpenError> {
        let io = |source| OpenError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        // The spool directory and every parent created for it must survive a power cut: a new
        // directory is only an entry in its parent until the parent is fsynced.
        disk::create_dir_durably(disk.as_ref(), dir).map_err(io)?;
        let lock = match disk.lock(dir) {
            Ok(lock) => lock,
            Err(None) => return Err(OpenError::Locked(dir.to_path_buf())),
            Err(Some(source)) => return Err(io(source)),
        };
        let (state, recovered) = recover(disk.as_ref(), dir, &metrics).map_err(io)?;
        metrics.set_limit(max_bytes);
        metrics.set_available(true);
        let (durable, _) = watch::channel(state.next_seq);
        let shared = Arc::new(Shared {
            disk,
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            mirror: Mirror::default(),
            reserved_bytes: AtomicU64::new(state.pending_bytes),
            state: Mutex::new(state),
            originals: Mutex::new(HashMap::new()),
            durable,
            metrics,
            disk_ok: AtomicBool::new(true),
            full: AtomicBool::new(false),
            commit_since_ms: AtomicU64::new(0),
            opened: std::time::Instant::now(),
            _lock: lock,
        });
        shared.mirror(&shared.lock_state());
        shared.refresh_gauges();
        shared.count_held_aside();
        let writer = writer::start(Arc::clone(&shared)).map_err(io)?;
        Ok((Spool { shared, writer }, recovered))
    }

    /// Whether events are waiting: new events must queue behind them to keep arrival order.
    pub fn has_backlog(&self) -> bool {
        self.pending_events() > 0
    }

    pub fn pending_events(&self) -> u64 {
        self.shared.mirror.pending_events.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> &SpoolMetrics {
        &self.shared.metrics
    }

    /// `AFTERCART_INGRESS_SPOOL_MAX_BYTES`.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What keeps the spool from taking events now, if anything.
    pub fn trouble(&self) -> Option<AppendError> {
        if !self.shared.disk_ok.load(Ordering::Acquire) {
            Some(AppendError::Disk)
        } else if self.shared.full.load(Ordering::Acquire) {
            Some(AppendError::Full)
        } else if self.is_stalled() {
            Some(AppendError::Stalled)
        } else {
            None
        }
    }

    /// Whether the spool can take events now: its disk works and it has room. A sick spool
    /// with Kafka healthy is bypassed; with Kafka down too, the replica is not ready.
    pub fn is_healthy(&self) -> bool {
        self.shared.disk_ok.load(Ordering::Acquire)
            && !self.shared.full.load(Ordering::Acquire)
            && !self.is_stalled()
    }

    /// Whether a group commit has been writing or fsyncing for longer than [`STALLED_AFTER`]:
    /// the volume hangs rather than fails, and events that need the spool meet their deadline
    /// first, so the replica should not be ready on the spool's account.
    pub fn is_stalled(&self) -> bool {
        match self.shared.commit_since_ms.load(Ordering::Acquire) {
            0 => false,
            since => {
                self.shared.clock_ms().saturating_sub(since) > STALLED_AFTER.as_millis() as u64
            }
        }
    }

    /// Queues `record` for the next group commit; the receiver answers once it is fsynced (or
    /// refused). `original` is the record's delivery still pending in the producer, if any.
    pub fn append(
        &self,
        record: SpoolRecord,
        original: Option<DeliveryFuture>,
    ) -> oneshot::Receiver<AppendResult> {
        let (reply, answer) = oneshot::channel();
        let bytes = record.frame_len() as u64;
        if !record.is_encodable() || !self.shared.reserve(bytes) {
            // An unencodable record (a 64 KiB key) is as unspoolable as one past the limit.
            if record.is_encodable() {
                self.shared.full.store(true, Ordering::Release);
            }
            let _ = reply.send(Err((AppendError::Full, original)));
            return answer;
        }
        let request = writer::Request {
            record,
            bytes,
            original,
            reply,
        };
        if let Err(std::sync::mpsc::SendError(request)) = self.writer.send(request) {
            // The writer thread is gone (it only stops when every handle is dropped).
            self.shared.release(bytes);
            let _ = request
                .reply
                .send(Err((AppendError::Disk, request.original)));
        }
        answer
    }
}

impl Shared {
    /// Reserves room for `bytes` under the limit.
    fn reserve(&self, bytes: u64) -> bool {
        self.reserved_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.max_bytes).then_some(used + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.reserved_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Records that every entry below `end` is in Kafka or lost to damage: `events` and frame
    /// `bytes` leave the backlog, the checkpoint moves, and drained segments are deleted.
    /// Blocking (a file write and fsyncs).
    fn mark_drained(&self, end: u64, events: u64, bytes: u64) {
        if let Err(error) = segment::write_checkpoint(self.disk.as_ref(), &self.dir, end) {
            // Not fatal: after a restart these events are published once more.
            CheckpointNotWritten { error: &error }.emit(&self.metrics);
        }
        let mut state = self.lock_state();
        state.drained_seq = state.drained_seq.max(end);
        let mut events = events.min(state.pending_events);
        let mut bytes = bytes.min(state.pending_bytes);
        if state.drained_seq >= state.next_seq {
            // Everything written is behind the reader: whatever the counters still hold is
            // damage they could not see entry by entry. Nothing is pending, by definition.
            events = state.pending_events;
            bytes = state.pending_bytes;
        }
        state.pending_events -= events;
        state.pending_bytes -= bytes;
        while state.arrivals.get(1).is_some_and(|&(seq, _)| seq <= end) {
            state.arrivals.pop_front();
        }
        if state.pending_events == 0 {
            state.arrivals.clear();
        }
        self.mirror(&state);
        self.release(bytes);
        if bytes > 0 {
            self.full.store(false, Ordering::Release);
        }
        writer::remove_drained(&mut state, self);
        drop(state);
        self.refresh_gauges();
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // loses events (the files are the truth), so a poisoned lock is still used.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_originals(&self) -> std::sync::MutexGuard<'_, HashMap<u64, DeliveryFuture>> {
        self.originals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Copies what the runtime's tasks read of `state` into the mirror: after every change of
    /// the backlog or the checkpoint, under the lock.
    fn mirror(&self, state: &State) {
        let mirror = &self.mirror;
        mirror
            .pending_bytes
            .store(state.pending_bytes, Ordering::Release);
        mirror
            .drained_seq
            .store(state.drained_seq, Ordering::Release);
        let oldest = state.arrivals.front().map_or(0, |&(_, ms)| ms.max(1));
        mirror.oldest_arrival_ms.store(oldest, Ordering::Release);
        mirror
            .pending_events
            .store(state.pending_events, Ordering::Release);
    }

    /// Every entry numbered below this is in Kafka.
    fn drained_seq(&self) -> u64 {
        self.mirror.drained_seq.load(Ordering::Acquire)
    }

    /// Milliseconds since the spool was opened, at least 1 (0 means "no commit running").
    fn clock_ms(&self) -> u64 {
        (self.opened.elapsed().as_millis() as u64).max(1)
    }

    /// Counts the events waiting in `refused/` into their gauge (logged when unreadable).
    /// Blocking: it reads the directory.
    fn count_held_aside(&self) {
        match refused::held(self.disk.as_ref(), &self.dir) {
            Ok(held) => self.metrics.set_held_aside(held.events),
            Err(error) => {
                tracing::warn!(%error, "Cannot count the events in the spool's refused/ directory.")
            }
        }
    }

    /// Sets the backlog gauges from the mirror: never waits on the lock.
    fn refresh_gauges(&self) {
        let mirror = &self.mirror;
        let oldest_age = match mirror.oldest_arrival_ms.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            ms => Duration::from_millis(unix_ms().saturating_sub(ms)),
        };
        self.metrics.set_backlog(
            mirror.pending_events.load(Ordering::Acquire),
            mirror.pending_bytes.load(Ordering::Acquire),
            oldest_age,
        );
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads every segment: counts the entries not yet drained, cuts torn tails, rewrites segments
/// damaged in the middle around the damage (keeping a copy), deletes segments that hold nothing
/// left to drain.
fn recover(
    disk: &dyn Disk,
    dir: &Path,
    metrics: &SpoolMetrics,
) -> std::io::Result<(State, Recovered)> {
    let drained_seq = segment::read_checkpoint(disk, dir);
    let mut state = State {
        next_seq: drained_seq,
        drained_seq,
        ..State::default()
    };
    let mut recovered = Recovered::default();
    for (first_seq, path) in segment::list_segments(disk, dir)? {
        let scan = segment::scan(disk, &path, drained_seq)?;
        let mut len = scan.good_len;
        if let Some(why) = scan.damage {
            let cut = scan.damaged_bytes;
            metrics.corrupt(cut);
            recovered.discarded_bytes += cut;
            len = repair(disk, dir, &path, &scan, why, metrics);
        }
        if let Some(last) = scan.last_seq {
            state.next_seq = state.next_seq.max(last + 1);
        }
        if scan.entries == 0 {
            disk.remove_file(&path)?;
            continue;
        }
        state.pending_events += scan.entries;
        state.pending_bytes += scan.bytes;
        state.arrivals.push_back((
            first_seq.max(drained_seq),
            scan.oldest_unix_ms.unwrap_or_else(unix_ms),
        ));
        state.segments.push_back(Segment {
            first_seq,
            path,
            len,
            sealed: true,
            last_seq: scan.last_seq,
        });
    }
    disk.sync_dir(dir)?;
    recovered.events = state.pending_events;
    recovered.bytes = state.pending_bytes;
    recovered.segments = state.segments.len();
    Ok((state, recovered))
}

/// Keeps a copy of a damaged segment (not of a torn tail), then rewrites it around damage in
/// its middle or cuts it back to its intact prefix. Returns the length the drainer may read.
/// A disk that refuses (full, failing) must not keep the spool and the acknowledged events in
/// it closed: without a copy the segment is left as it is, the evidence with it; without a
/// rewrite or cut the drainer reads up to the intact prefix, or skips damage in the middle.
fn repair(
    disk: &dyn Disk,
    dir: &Path,
    path: &Path,
    scan: &segment::SegmentScan,
    why: &'static str,
    metrics: &SpoolMetrics,
) -> u64 {
    let whole = if scan.damaged_in_middle {
        scan.file_len
    } else {
        scan.good_len
    };
    // A torn final frame is what a power cut leaves: expected, not worth a copy.
    let copy = if why == segment::TORN_TAIL {
        Ok(None)
    } else {
        segment::keep_damaged_copy(disk, dir, path)
    };
    let copy = match copy {
        Ok(copy) => copy.map(|p| p.display().to_string()),
        Err(error) => {
            metrics.error("write");
            tracing::error!(segment = %path.display(), %error, reason = why, discarded_bytes = scan.damaged_bytes, "Spool segment damaged and no copy can be kept: left as it is; the drainer skips the damage.");
            return whole;
        }
    };
    tracing::error!(segment = %path.display(), kept_bytes = scan.good_len, discarded_bytes = scan.damaged_bytes, intact_frames_after_damage = scan.damaged_in_middle, copy = copy.as_deref().unwrap_or("none (torn tail, or damaged/ holds enough copies)"), reason = why, "Spool segment damaged (torn write or disk corruption): keeping every intact frame.");
    let repaired = if scan.damaged_in_middle {
        segment::rewrite_intact(disk, dir, path).and_then(|()| disk.open_read(path)?.size())
    } else {
        segment::truncate(disk, path, scan.good_len).map(|()| scan.good_len)
    };
    repaired.unwrap_or_else(|error| {
        metrics.error("write");
        tracing::error!(segment = %path.display(), %error, "Cannot rewrite a damaged spool segment: left as it is; the drainer skips the damage.");
        whole
    })
}

#[cfg(test)]
mod tests;

/// What `aftercart spool inspect` reports: read-only, without the lock, so it can look at a
/// spool an ingress is using (a snapshot that may already be out of date).
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Every entry numbered below it is in Kafka.
    pub checkpoint: u64,
    pub segments: Vec<SegmentReport>,
    pub pending_events: u64,
    pub pending_bytes: u64,
    pub oldest_unix_ms: Option<u64>,
    /// Pending entries per Kafka topic.
    pub per_topic: std::collections::BTreeMap<String, u64>,
    /// Events set aside in `refused/` (Kafka refused them for their size), not counted above.
    pub held_aside: refused::Held,
}

/// One segment file as inspected.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub file: String,
    pub file_bytes: u64,
    pub pending_events: u64,
    /// Damage after the intact prefix, and how many bytes it covers.
    pub damage: Option<(&'static str, u64)>,
}

/// Reads a spool directory without changing it.
pub fn inspect(dir: &Path) -> std::io::Result<Inspection> {
    let disk = &RealDisk;
    let checkpoint = segment::read_checkpoint(disk, dir);
    let mut report = Inspection {
        checkpoint,
        ..Inspection::default()
    };
    for (_, path) in segment::list_segments(disk, dir)? {
        let scan = segment::scan(disk, &path, checkpoint)?;
        report.pending_events += scan.entries;
        report.pending_bytes += scan.bytes;
        report.oldest_unix_ms = match (report.oldest_unix_ms, scan.oldest_unix_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (topic, count) in &scan.per_topic {
            *report.per_topic.entry(topic.clone()).or_default() += count;
        }
        report.segments.push(SegmentReport {
            file: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file_bytes: scan.file_len,
            pending_events: scan.entries,
            damage: scan.damage.map(|why| (why, scan.damaged_bytes)),
        });
    }
    report.held_aside = refused::held(disk, dir)?;
    Ok(report)
}

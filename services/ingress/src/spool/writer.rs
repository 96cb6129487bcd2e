//! The group-commit writer: one thread takes every append waiting in its queue, writes them in
//! one go, fsyncs once, and only then answers them all. One fsync per group, not per event, is
//! what keeps throughput up while every 200 still means "on disk".

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::future_producer::DeliveryFuture;
use tokio::sync::oneshot;

use aftercart_runtime::Event as _;

use super::disk::{self, WriteFile};
use super::entry::{self, SpoolRecord};
use super::segment::segment_path;
use super::{unix_ms, AppendError, AppendResult, Segment, Shared};
use crate::events::{SegmentNotDeleted, SpoolDiskFailed};

/// Most appends written by one group commit; bounds the latency of the last one in a group.
const MAX_GROUP: usize = 4096;

/// While the disk is failing, it is tried this often even without appends, so readiness sees
/// it recover while traffic goes around the spool.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_FILE: &str = "probe";

/// One append waiting for the writer.
pub(super) struct Request {
    pub record: SpoolRecord,
    /// Frame size, reserved against the limit by the caller.
    pub bytes: u64,
    pub original: Option<DeliveryFuture>,
    pub reply: oneshot::Sender<AppendResult>,
}

/// Starts the writer thread; it ends when every `Spool` handle is dropped.
pub(super) fn start(shared: Arc<Shared>) -> io::Result<std::sync::mpsc::Sender<Request>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("aftercart-spool-writer".into())
        .spawn(move || Writer::new(shared).run(receiver))?;
    Ok(sender)
}

struct Writer {
    shared: Arc<Shared>,
    /// The segment being appended to, if one is open.
    active: Option<Box<dyn WriteFile>>,
    buf: Vec<u8>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            active: None,
            buf: Vec::new(),
        }
    }

    fn run(mut self, requests: Receiver<Request>) {
        loop {
            let first = match requests.recv_timeout(PROBE_EVERY) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => {
                    if !self.shared.disk_ok.load(Ordering::Acquire) {
                        self.probe();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            // Watched by readiness: a commit that hangs marks the spool stalled.
            let shared = Arc::clone(&self.shared);
            shared
                .commit_since_ms
                .store(shared.clock_ms(), Ordering::Release);
            self.commit(group);
            shared.commit_since_ms.store(0, Ordering::Release);
        }
    }

    /// Writes and fsyncs one group, then answers every request in it.
    fn commit(&mut self, group: Vec<Request>) {
        let started = Instant::now();
        let first_seq = match self.prepare_segment() {
            Ok(first_seq) => first_seq,
            Err((op, error)) => return self.fail(group, op, &error),
        };
        self.buf.clear();
        for (i, request) in group.iter().enumerate() {
            entry::encode(first_seq + i as u64, &request.record, &mut self.buf);
        }
        if let Err((op, error)) = self.write_and_sync() {
            return self.fail(group, op, &error);
        }
        let events = group.len() as u64;
        let bytes = self.buf.len() as u64;
        let arrived = group
            .iter()
            .map(|r| r.record.received_unix_ms)
            .min()
            .unwrap_or_else(unix_ms);
        let mut group = group;
        {
            // Originals go into the shared map before the drainer can see their entries.
            let mut originals = self.shared.lock_originals();
            for (i, request) in group.iter_mut().enumerate() {
                if let Some(original) = request.original.take() {
                    originals.insert(first_seq + i as u64, original);
                }
            }
        }
        {
            let mut state = self.shared.lock_state();
            let active = state
                .segments
                .back_mut()
                .expect("prepare_segment opened one");
            active.len += bytes;
            active.last_seq = Some(first_seq + events - 1);
            state.next_seq = first_seq + events;
            state.pending_events += events;
            state.pending_bytes += bytes;
            state.arrivals.push_back((first_seq, arrived));
            self.shared.mirror(&state);
        }
        // The reservation made by each caller is now part of the pending bytes: the frame sizes
        // were computed the same way, so nothing is released here.
        self.shared.metrics.appended(events, started.elapsed());
        self.shared.metrics.set_available(true);
        self.shared.disk_ok.store(true, Ordering::Release);
        self.shared.refresh_gauges();
        self.shared.durable.send_replace(first_seq + events);
        for (i, request) in group.into_iter().enumerate() {
            let _ = request.reply.send(Ok(first_seq + i as u64));
        }
    }

    /// Makes sure a segment is open for appending and returns the next sequence number. Rolls
    /// to a new segment when the active one is big, or when everything in it is already in
    /// Kafka (so the drained file can be deleted at once).
    fn prepare_segment(&mut self) -> Result<u64, (&'static str, io::Error)> {
        let mut state = self.shared.lock_state();
        let next_seq = state.next_seq;
        let roll = match (&self.active, state.segments.back()) {
            (Some(_), Some(active)) => {
                active.len >= self.shared.segment_bytes
                    || (active.len > 0 && state.drained_seq >= next_seq)
            }
            _ => true,
        };
        if !roll {
            return Ok(next_seq);
        }
        if self.active.take().is_some() {
            if let Some(active) = state.segments.back_mut() {
                active.sealed = true;
            }
        }
        // A drained, sealed front segment is deleted here too, not only by the drainer.
        let dir = self.shared.dir.clone();
        remove_drained(&mut state, &self.shared);
        let path = segment_path(&dir, next_seq);
        let disk = self.shared.disk.as_ref();
        // O_EXCL: never reopen (and truncate) a file that exists. Only an empty regular file
        // no entry knows (left by a failed first write) is ours to replace; anything else there
        // (data, a symlink) is refused, and the append fails instead of clobbering it.
        let file = match disk.create_new(&path) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let known = state.segments.iter().any(|s| s.path == path);
                let empty_leftover = disk.is_plain_file(&path)
                    && disk.open_read(&path).and_then(|f| f.size()).ok() == Some(0);
                if known || !empty_leftover {
                    return Err(("open", error));
                }
                disk.remove_file(&path).map_err(|e| ("remove", e))?;
                disk.create_new(&path)
            }
            other => other,
        }
        .map_err(|e| ("open", e))?;
        disk.sync_dir(&dir).map_err(|e| ("fsync", e))?;
        state.segments.push_back(Segment {
            first_seq: next_seq,
            path,
            len: 0,
            sealed: false,
            last_seq: None,
        });
        self.active = Some(file);
        Ok(next_seq)
    }

    /// Writes, fsyncs and deletes a small file: a disk that takes it is healthy again.
    fn probe(&mut self) {
        let path = self.shared.dir.join(PROBE_FILE);
        let disk = self.shared.disk.as_ref();
        if disk.exists(&path) {
            let _ = disk.remove_file(&path);
        }
        let healthy = disk::write_new(disk, &path, &[0; 4096]).is_ok();
        let _ = disk.remove_file(&path);
        if healthy {
            tracing::info!("The spool disk takes writes again.");
            self.shared.disk_ok.store(true, Ordering::Release);
            self.shared.metrics.set_available(true);
        }
    }

    fn write_and_sync(&mut self) -> Result<(), (&'static str, io::Error)> {
        let file = self.active.as_mut().expect("prepare_segment opened one");
        file.write_all(&self.buf).map_err(|e| ("write", e))?;
        file.sync_data().map_err(|e| ("fsync", e))
    }

    /// Answers the group with a disk error, and seals the segment at its durable length so a
    /// partial write is never read back. A segment that never held a durable entry is dropped
    /// (its file too), so no stale entry can later delete a path a new segment reuses.
    fn fail(&mut self, group: Vec<Request>, op: &'static str, error: &io::Error) {
        SpoolDiskFailed {
            op,
            error,
            events: group.len(),
        }
        .emit(&self.shared.metrics);
        self.shared.metrics.set_available(false);
        self.shared.disk_ok.store(false, Ordering::Release);
        if let Some(mut file) = self.active.take() {
            let mut state = self.shared.lock_state();
            if let Some(active) = state.segments.back_mut() {
                active.sealed = true;
                // Best effort: the drainer never reads past `len` anyway.
                let _ = file.set_len(active.len);
                if active.len == 0 {
                    let path = active.path.clone();
                    state.segments.pop_back();
                    drop(file);
                    if self.shared.disk.remove_file(&path).is_ok() {
                        let _ = self.shared.disk.sync_dir(&self.shared.dir);
                    }
                }
            }
        }
        for request in group {
            self.shared.release(request.bytes);
            let _ = request
                .reply
                .send(Err((AppendError::Disk, request.original)));
        }
    }
}

/// Deletes sealed segments at the front whose every entry is in Kafka. A path another entry
/// still uses is never deleted (only the entry is dropped).
pub(super) fn remove_drained(state: &mut super::State, shared: &Shared) {
    while let Some(front) = state.segments.front() {
        if state.segments.iter().skip(1).any(|s| s.path == front.path) {
            state.segments.pop_front();
            continue;
        }
        let next_first = state.segments.get(1).map(|s| s.first_seq);
        let drained = front.sealed
            && match (front.last_seq, next_first) {
                (Some(last), _) => last < state.drained_seq,
                (None, _) => true,
            };
        if !drained {
            break;
        }
        if let Err(error) = shared.disk.remove_file(&front.path) {
            if error.kind() != io::ErrorKind::NotFound {
                SegmentNotDeleted {
                    segment: &front.path,
                    error: &error,
                }
                .emit(&shared.metrics);
                break;
            }
        }
        state.segments.pop_front();
    }
}

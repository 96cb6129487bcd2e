//! `<spool dir>/refused/`: where the drainer sets aside a spooled event Kafka refuses for its
//! size on its own topic and on the quarantine topic, so that it neither blocks every
//! acknowledged event behind it nor is lost.
//!
//! Each event is a segment file of one frame, so the directory is a spool of its own: once the
//! topics take the records, `aftercart spool drain --ingress-spool-dir <dir>/refused` publishes
//! them (that drain never sets anything aside: what Kafka still refuses stays). A drain holds
//! the directory's lock, and setting aside waits for it.

use std::io;
use std::path::{Path, PathBuf};

use super::disk::{self, Disk};
use super::entry::Entry;
use super::segment::{self, FrameReader, Step};

/// The directory under the spool's.
pub const REFUSED_DIR: &str = "refused";

/// What became of an event to set aside.
#[derive(Debug, PartialEq, Eq)]
pub enum SetAside {
    /// Written, fsynced, at this path.
    Written(PathBuf),
    /// Already there, byte for byte (set aside before a crash moved the checkpoint past it).
    AlreadyThere,
    /// `refused/` holds `max_bytes` already: the event stays in the spool.
    Full,
}

/// Events waiting in a `refused/` directory and their frame bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub events: u64,
    pub bytes: u64,
}

/// What `refused/` under `dir` holds (nothing when it does not exist).
pub fn held(disk: &dyn Disk, dir: &Path) -> io::Result<Held> {
    let refused = dir.join(REFUSED_DIR);
    if !disk.exists(&refused) {
        return Ok(Held::default());
    }
    let checkpoint = segment::read_checkpoint(disk, &refused);
    let mut held = Held::default();
    for (_, path) in segment::list_segments(disk, &refused)? {
        let scan = segment::scan(disk, &path, checkpoint)?;
        held.events += scan.entries;
        held.bytes += scan.bytes;
    }
    Ok(held)
}

/// Writes `entry` to `<dir>/refused/` durably (a temporary file fsynced, renamed into place,
/// the directory fsynced), unless the same record is there already or the directory holds
/// `max_bytes`. Numbered above everything the directory holds and above its checkpoint (an
/// earlier drain's), so that no event set aside is written over or taken for drained. An
/// error (the disk, or a drain holding the directory's lock) leaves the entry in the spool.
pub fn set_aside(
    disk: &dyn Disk,
    dir: &Path,
    entry: &Entry,
    max_bytes: u64,
) -> io::Result<SetAside> {
    let refused = dir.join(REFUSED_DIR);
    disk::create_dir_durably(disk, &refused)?;
    let _lock = match disk.lock(&refused) {
        Ok(lock) => lock,
        Err(None) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "a drain holds the refused/ directory",
            ))
        }
        Err(Some(error)) => return Err(error),
    };
    let checkpoint = segment::read_checkpoint(disk, &refused);
    let (mut next_seq, mut bytes) = (entry.seq.max(checkpoint), 0u64);
    for (first_seq, path) in segment::list_segments(disk, &refused)? {
        next_seq = next_seq.max(first_seq + 1);
        let mut reader = FrameReader::open(disk, &path, 0)?;
        if let Step::Entry(kept, frame_len) = reader.next_frame(u64::MAX)? {
            next_seq = next_seq.max(kept.seq + 1);
            if kept.seq >= checkpoint {
                if kept.record == entry.record {
                    return Ok(SetAside::AlreadyThere);
                }
                bytes += frame_len as u64;
            }
        }
    }
    let frame_len = entry.record.frame_len() as u64;
    if bytes + frame_len > max_bytes {
        return Ok(SetAside::Full);
    }
    let numbered = Entry {
        seq: next_seq,
        record: entry.record.clone(),
    };
    let path = segment::segment_path(&refused, numbered.seq);
    let tmp = path.with_extension("wal.tmp");
    if disk.exists(&tmp) {
        disk.remove_file(&tmp)?;
    }
    let mut frame = Vec::with_capacity(frame_len as usize);
    numbered.encode(&mut frame);
    disk::write_new(disk, &tmp, &frame)?;
    disk.rename(&tmp, &path)?;
    disk.sync_dir(&refused)?;
    Ok(SetAside::Written(path))
}

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

/// What `refused/` under `dir` holds (nothing when it does not exist). From the names and
/// sizes alone (one frame a file): cheap enough to count every minute.
pub fn held(disk: &dyn Disk, dir: &Path) -> io::Result<Held> {
    let refused = dir.join(REFUSED_DIR);
    if !disk.exists(&refused) {
        return Ok(Held::default());
    }
    let checkpoint = segment::read_checkpoint(disk, &refused);
    let mut held = Held::default();
    for (seq, path) in segment::list_segments(disk, &refused)? {
        if seq >= checkpoint {
            held.events += 1;
            held.bytes += disk.open_read(&path)?.size()?;
        }
    }
    Ok(held)
}

/// Writes `entry` to `<dir>/refused/` durably (a temporary file fsynced, renamed into place,
/// the directory fsynced), unless it is there already or the directory holds `max_bytes`.
/// Numbered as in the spool when that number is free, else above everything the directory
/// holds and above its checkpoint (an earlier drain's), so that no event set aside is written
/// over or taken for drained; the same entry set aside again (a crash before the checkpoint
/// moved) finds its own number taken by itself. An error (the disk; a drain holding the
/// directory's lock: [`io::ErrorKind::WouldBlock`]) leaves the entry in the spool.
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
    // A crash between a temporary file's write and its rename leaves it (a whole webhook).
    for path in disk.read_dir(&refused)? {
        if path.extension().is_some_and(|e| e == "tmp") {
            disk.remove_file(&path)?;
        }
    }
    let checkpoint = segment::read_checkpoint(disk, &refused);
    let own = segment::segment_path(&refused, entry.seq);
    let mut own_taken = false;
    let (mut above, mut bytes) = (checkpoint, 0u64);
    for (seq, path) in segment::list_segments(disk, &refused)? {
        above = above.max(seq + 1);
        if seq >= checkpoint {
            bytes += disk.open_read(&path)?.size()?;
        }
        if path == own && seq >= checkpoint {
            let mut reader = FrameReader::open(disk, &path, 0)?;
            if let Step::Entry(kept, _) = reader.next_frame(u64::MAX)? {
                if kept.record == entry.record {
                    return Ok(SetAside::AlreadyThere);
                }
            }
            own_taken = true;
        }
    }
    let renumbered = own_taken || entry.seq < checkpoint;
    if renumbered && holds_record(disk, &refused, checkpoint, entry)? {
        // Set aside under a new number before a crash kept the checkpoint from moving.
        return Ok(SetAside::AlreadyThere);
    }
    let frame_len = entry.record.frame_len() as u64;
    if bytes + frame_len > max_bytes {
        return Ok(SetAside::Full);
    }
    let seq = if renumbered { above } else { entry.seq };
    let numbered = Entry {
        seq,
        record: entry.record.clone(),
    };
    let path = segment::segment_path(&refused, numbered.seq);
    let tmp = path.with_extension("wal.tmp");
    let mut frame = Vec::with_capacity(frame_len as usize);
    numbered.encode(&mut frame);
    disk::write_new(disk, &tmp, &frame)?;
    disk.rename(&tmp, &path)?;
    disk.sync_dir(&refused)?;
    Ok(SetAside::Written(path))
}

/// Whether any event at or above `checkpoint` in `refused` is `entry`'s record (read only when
/// its own number is taken: the rare case, and `refused/` holds few, large, events).
fn holds_record(
    disk: &dyn Disk,
    refused: &Path,
    checkpoint: u64,
    entry: &Entry,
) -> io::Result<bool> {
    for (seq, path) in segment::list_segments(disk, refused)? {
        if seq < checkpoint {
            continue;
        }
        let mut reader = FrameReader::open(disk, &path, 0)?;
        if let Step::Entry(kept, _) = reader.next_frame(u64::MAX)? {
            if kept.record == entry.record {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

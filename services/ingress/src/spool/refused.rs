//! `<spool dir>/refused/`: where the drainer sets aside a spooled event Kafka refuses for good on
//! its own topic and on the quarantine topic (a record larger than both topics take), so that
//! it neither blocks every acknowledged event behind it nor is lost.
//!
//! Each event is a segment file of one frame named after its sequence number, so the directory
//! is a spool of its own: once the cause is fixed, `aftercart spool drain --dir <dir>/refused`
//! publishes what it holds.

use std::io;
use std::path::{Path, PathBuf};

use super::disk::{self, Disk};
use super::entry::Entry;
use super::segment;

/// The directory under the spool's.
pub const REFUSED_DIR: &str = "refused";

/// Writes `entry` to `<dir>/refused/` durably: a temporary file fsynced, renamed into place,
/// the directory fsynced. A crash before the rename leaves the entry in the spool, where the
/// drainer finds it again; an entry set aside twice (a crash after the rename, before the
/// checkpoint moved) is written over with the same bytes.
pub fn set_aside(disk: &dyn Disk, dir: &Path, entry: &Entry) -> io::Result<PathBuf> {
    let refused = dir.join(REFUSED_DIR);
    disk::create_dir_durably(disk, &refused)?;
    let path = segment::segment_path(&refused, entry.seq);
    let tmp = path.with_extension("wal.tmp");
    if disk.exists(&tmp) {
        disk.remove_file(&tmp)?;
    }
    let mut bytes = Vec::with_capacity(entry.record.frame_len());
    entry.encode(&mut bytes);
    disk::write_new(disk, &tmp, &bytes)?;
    disk.rename(&tmp, &path)?;
    disk.sync_dir(&refused)?;
    Ok(path)
}

//! The spool's files: numbered segment files of frames, the drain checkpoint, and the scan that
//! finds how much of each segment is intact after a crash, resynchronising past damage on the
//! next valid frame.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::disk::{self, Disk, ReadFile};
use super::entry::{self, Decoded, Entry};

const SEGMENT_SUFFIX: &str = ".wal";
const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
/// Where damaged segments are copied for inspection before the spool changes them.
pub const DAMAGED_DIR: &str = "damaged";
/// Most copies kept in `damaged/`.
pub const MAX_DAMAGED_COPIES: usize = 4;

/// The damage a power cut mid-append leaves: an incomplete last frame, nothing after it.
pub const TORN_TAIL: &str = "torn final frame";
/// A frame that claims more bytes than there are before the end (of the file, or of what is
/// durable): a torn tail if nothing valid follows, else a damaged length field.
const RUNS_PAST_END: &str = "frame runs past the end";

/// Read size while scanning or draining.
const READ_CHUNK: usize = 1 << 20;

/// A segment file is named after the sequence number of its first entry.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// The segment files of `dir`, oldest first, as `(first_seq, path)`. Only regular files: the
/// spool never writes anything else under a segment name, so a symlink or device there (an
/// operator's or a fault test's) is left alone, neither read (a device may never end) nor
/// cut or deleted.
pub fn list_segments(disk: &dyn Disk, dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for path in disk.read_dir(dir)? {
        let first_seq = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok());
        let Some(first_seq) = first_seq else { continue };
        if !disk.is_plain_file(&path) {
            tracing::warn!(path = %path.display(), "Not a regular file under a spool segment name: left alone.");
            continue;
        }
        segments.push((first_seq, path));
    }
    segments.sort();
    Ok(segments)
}

/// What a segment holds, read from its start.
#[derive(Debug, Default, Clone)]
pub struct SegmentScan {
    /// End of the last intact frame.
    pub good_len: u64,
    pub file_len: u64,
    /// Why some bytes were not read as frames, if any were skipped.
    pub damage: Option<&'static str>,
    /// Bytes skipped as damage, in the middle and at the end.
    pub damaged_bytes: u64,
    /// Intact frames follow damage: the segment must be rewritten, not cut.
    pub damaged_in_middle: bool,
    /// Entries with `seq >= from_seq`, their frame bytes, the oldest arrival among them.
    pub entries: u64,
    pub bytes: u64,
    pub oldest_unix_ms: Option<u64>,
    pub last_seq: Option<u64>,
    /// Entries per Kafka topic (inspection only).
    pub per_topic: BTreeMap<String, u64>,
}

/// Reads a whole segment, counting the entries numbered `from_seq` or later. Damage is skipped:
/// reading resumes at the next valid frame.
pub fn scan(disk: &dyn Disk, path: &Path, from_seq: u64) -> io::Result<SegmentScan> {
    let mut reader = FrameReader::open(disk, path, 0)?;
    let mut scan = SegmentScan {
        file_len: reader.file.size()?,
        ..SegmentScan::default()
    };
    loop {
        match reader.next_frame(u64::MAX)? {
            Step::Entry(entry, frame_len) => {
                scan.last_seq = Some(entry.seq);
                scan.good_len = reader.offset;
                if entry.seq >= from_seq {
                    scan.entries += 1;
                    scan.bytes += frame_len as u64;
                    let arrived = entry.record.received_unix_ms;
                    scan.oldest_unix_ms =
                        Some(scan.oldest_unix_ms.map_or(arrived, |o| o.min(arrived)));
                    *scan.per_topic.entry(entry.record.topic).or_default() += 1;
                }
            }
            Step::End => break,
            Step::Damage(why) => {
                let at = reader.offset;
                let found = reader.resync(u64::MAX, scan.last_seq.map_or(0, |s| s + 1))?;
                scan.damaged_bytes += reader.offset - at;
                if found.is_none() {
                    // A frame running past the end with nothing valid after it is what a
                    // power cut mid-append leaves: a torn tail, not damage worth a copy.
                    if why != RUNS_PAST_END {
                        scan.damage.get_or_insert(why);
                    }
                    break;
                }
                scan.damage.get_or_insert(why);
                scan.damaged_in_middle = true;
            }
        }
    }
    if scan.good_len < scan.file_len && scan.damage.is_none() {
        scan.damage = Some(TORN_TAIL);
    }
    scan.damaged_bytes = scan.damaged_bytes.max(scan.file_len - scan.good_len);
    Ok(scan)
}

/// Copies a damaged segment into `<dir>/damaged/` for inspection (named after the segment and
/// the time, once per segment), made durable before the spool changes the original. At most
/// [`MAX_DAMAGED_COPIES`] are kept: a dying disk damages segment after segment, and copies
/// (not counted against the spool's limit) must not fill the volume the spool needs. `None`
/// when no copy was made for that reason.
pub fn keep_damaged_copy(disk: &dyn Disk, dir: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    let damaged = dir.join(DAMAGED_DIR);
    disk::create_dir_durably(disk, &damaged)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // One copy per segment: damage in several places must not copy it (and fill the volume)
    // once per place.
    let prefix = format!("{name}.");
    let kept = disk.read_dir(&damaged)?;
    if let Some(kept) = kept.iter().find(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
    }) {
        return Ok(Some(kept.clone()));
    }
    if kept.len() >= MAX_DAMAGED_COPIES {
        return Ok(None);
    }
    let copy = damaged.join(format!("{name}.{}", super::unix_ms()));
    let bytes = disk::read_all(disk, path)?;
    if disk.exists(&copy) {
        disk.remove_file(&copy)?;
    }
    disk::write_new(disk, &copy, &bytes)?;
    disk.sync_dir(&damaged)?;
    Ok(Some(copy))
}

/// Rewrites a segment with damage in its middle so it holds only its intact frames: a new file
/// beside it, fsynced, renamed over it, directory fsynced.
pub fn rewrite_intact(disk: &dyn Disk, dir: &Path, path: &Path) -> io::Result<()> {
    let mut reader = FrameReader::open(disk, path, 0)?;
    let mut bytes = Vec::new();
    let mut last: Option<u64> = None;
    loop {
        match reader.next_frame(u64::MAX)? {
            Step::Entry(entry, _) => {
                last = Some(entry.seq);
                entry.encode(&mut bytes);
            }
            Step::End => break,
            Step::Damage(_) => {
                if reader
                    .resync(u64::MAX, last.map_or(0, |s| s + 1))?
                    .is_none()
                {
                    break;
                }
            }
        }
    }
    let tmp = path.with_extension("wal.tmp");
    if disk.exists(&tmp) {
        disk.remove_file(&tmp)?;
    }
    disk::write_new(disk, &tmp, &bytes)?;
    disk.rename(&tmp, path)?;
    disk.sync_dir(dir)
}

/// One step of reading a segment.
pub enum Step {
    Entry(Entry, usize),
    /// No complete frame before the limit (or the end of the file).
    End,
    /// The bytes at the current offset are not a frame.
    Damage(&'static str),
}

/// Reads frames from a segment file, from an offset, never past a limit.
pub struct FrameReader {
    file: Box<dyn ReadFile>,
    buf: Vec<u8>,
    /// Start of `buf` in the file.
    buf_offset: u64,
    /// Offset of the next frame.
    pub offset: u64,
}

impl FrameReader {
    pub fn open(disk: &dyn Disk, path: &Path, offset: u64) -> io::Result<Self> {
        let mut file = disk.open_read(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            file,
            buf: Vec::new(),
            buf_offset: offset,
            offset,
        })
    }

    /// The next frame ending at or before `limit` (a byte offset). Bytes before `limit` that
    /// hold no complete frame are damage, not the end: frames are whole up to any durable
    /// limit, so a frame running past it (or past the end of the file) has a damaged length,
    /// or is a torn tail if nothing valid follows; [`FrameReader::resync`] tells which.
    pub fn next_frame(&mut self, limit: u64) -> io::Result<Step> {
        loop {
            let start = (self.offset - self.buf_offset) as usize;
            match entry::decode(&self.buf[start..]) {
                Decoded::Entry { entry, frame_len } => {
                    if self.offset + frame_len as u64 > limit {
                        return Ok(self.short_of(limit));
                    }
                    self.offset += frame_len as u64;
                    return Ok(Step::Entry(entry, frame_len));
                }
                Decoded::Corrupt(why) => return Ok(Step::Damage(why)),
                Decoded::Incomplete => {
                    if !self.fill()? {
                        return Ok(self.short_of(limit));
                    }
                }
            }
        }
    }

    /// No complete frame at the offset before `limit`: the end if nothing is left to read
    /// there, else damage.
    fn short_of(&self, limit: u64) -> Step {
        let unread = self.buf_offset + self.buf.len() as u64 > self.offset;
        if unread && self.offset < limit {
            Step::Damage(RUNS_PAST_END)
        } else {
            Step::End
        }
    }

    /// After damage at `offset`: moves to the next offset holding a valid frame numbered
    /// `min_seq` or later that ends by `limit` (frames carry their number and a checksum, so a
    /// false match is a 1 in 2^32 accident that must also fall in sequence). `false` when none
    /// is left: the offset is then at the end of what was read (or at `limit`). Returns the
    /// found frame's sequence number; the next [`FrameReader::next_frame`] reads it.
    pub fn resync(&mut self, limit: u64, min_seq: u64) -> io::Result<Option<u64>> {
        let mut at_eof = false;
        self.offset += 1;
        loop {
            if self.offset >= limit {
                self.offset = limit;
                return Ok(None);
            }
            let start = (self.offset - self.buf_offset) as usize;
            if start >= self.buf.len() && (at_eof || !self.fill()?) {
                // Past the last byte: nothing more to find.
                self.offset = self.buf_offset + self.buf.len() as u64;
                return Ok(None);
            }
            let start = (self.offset - self.buf_offset) as usize;
            match entry::decode(&self.buf[start..]) {
                Decoded::Entry { entry, frame_len }
                    if entry.seq >= min_seq && self.offset + frame_len as u64 <= limit =>
                {
                    return Ok(Some(entry.seq));
                }
                Decoded::Incomplete if !at_eof => {
                    // Maybe a frame longer than what is buffered: read more before judging.
                    if !self.fill()? {
                        at_eof = true;
                    }
                }
                _ => self.offset += 1,
            }
        }
    }

    /// Drops consumed bytes and reads more; `false` at the end of the file.
    fn fill(&mut self) -> io::Result<bool> {
        let consumed = (self.offset - self.buf_offset) as usize;
        self.buf.drain(..consumed.min(self.buf.len()));
        self.buf_offset = self.offset;
        let have = self.buf.len();
        self.buf.resize(have + READ_CHUNK, 0);
        let read = self.file.read(&mut self.buf[have..])?;
        self.buf.truncate(have + read);
        Ok(read > 0)
    }
}

/// Cuts a damaged segment back to its intact prefix and makes that durable.
pub fn truncate(disk: &dyn Disk, path: &Path, len: u64) -> io::Result<()> {
    let mut file = disk.open_write(path)?;
    file.set_len(len)?;
    file.sync_data()
}

/// The drain checkpoint: every entry numbered below it is in Kafka. Missing or damaged reads as
/// 0, which replays the whole spool: at least once, never lost.
pub fn read_checkpoint(disk: &dyn Disk, dir: &Path) -> u64 {
    let Ok(bytes) = disk::read_all(disk, &dir.join(CHECKPOINT_FILE)) else {
        return 0;
    };
    let Ok(bytes) = <[u8; 12]>::try_from(bytes.as_slice()) else {
        return 0;
    };
    let seq = &bytes[..8];
    if crc32c::crc32c(seq).to_le_bytes() != bytes[8..] {
        return 0;
    }
    u64::from_le_bytes(seq.try_into().expect("8 bytes"))
}

/// Writes the checkpoint atomically: temporary file, fsync, rename, directory fsync.
pub fn write_checkpoint(disk: &dyn Disk, dir: &Path, next_seq: u64) -> io::Result<()> {
    let mut bytes = next_seq.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&next_seq.to_le_bytes()).to_le_bytes());
    let tmp = dir.join(CHECKPOINT_TMP);
    if disk.exists(&tmp) {
        // Left by a crash between its creation and the rename.
        disk.remove_file(&tmp)?;
    }
    let mut file = disk.create_new(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    drop(file);
    disk.rename(&tmp, &dir.join(CHECKPOINT_FILE))?;
    disk.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::disk::{RealDisk, LOCK_FILE};
    use crate::spool::entry::tests::sample;
    use std::fs;

    const DISK: &RealDisk = &RealDisk;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "aftercart-segment-{name}-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fastrand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn write_segment(path: &Path, entries: &[Entry]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in entries {
            entry.encode(&mut bytes);
        }
        fs::write(path, &bytes).unwrap();
        bytes
    }

    #[test]
    fn a_torn_tail_keeps_the_good_prefix() {
        let dir = temp_dir("torn");
        let path = segment_path(&dir, 0);
        let bytes = write_segment(&path, &[sample(0, "{}"), sample(1, r#"{"a":1}"#)]);
        let first_len = sample(0, "{}").record.frame_len() as u64;
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let scan = scan(DISK, &path, 0).unwrap();
        assert_eq!(scan.entries, 1);
        assert_eq!(scan.good_len, first_len);
        assert_eq!(scan.damage, Some(TORN_TAIL));
        truncate(DISK, &path, scan.good_len).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), first_len);
    }

    #[test]
    fn a_flipped_byte_is_skipped_to_the_next_intact_frame() {
        let dir = temp_dir("flip");
        let path = segment_path(&dir, 5);
        let mut bytes = write_segment(&path, &[sample(5, "{}"), sample(6, "{}"), sample(7, "{}")]);
        let frame = sample(5, "{}").record.frame_len();
        bytes[frame + 20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let scan = scan(DISK, &path, 0).unwrap();
        assert_eq!(scan.entries, 2, "the frame after the damage is still read");
        assert_eq!(scan.damage, Some("checksum mismatch"));
        assert!(scan.damaged_in_middle);
        assert_eq!(scan.damaged_bytes, frame as u64);
        assert_eq!(scan.last_seq, Some(7));
        rewrite_intact(DISK, &dir, &path).unwrap();
        let rewritten = super::scan(DISK, &path, 0).unwrap();
        assert_eq!((rewritten.entries, rewritten.damage), (2, None));
    }

    #[test]
    fn a_damaged_length_claiming_past_the_end_is_skipped_not_taken_for_a_torn_tail() {
        // A flipped bit in a length field can make a frame claim more bytes than the file
        // holds: the intact frames after it must be kept, not cut off as a torn tail.
        let dir = temp_dir("length");
        let path = segment_path(&dir, 0);
        let entries: Vec<Entry> = (0..4).map(|seq| sample(seq, "{}")).collect();
        let mut bytes = write_segment(&path, &entries);
        let frame = sample(0, "{}").record.frame_len();
        bytes[frame + 2] ^= 0x01; // frame 1 now claims 64 KiB more than it has
        fs::write(&path, &bytes).unwrap();
        let scan = scan(DISK, &path, 0).unwrap();
        assert_eq!(scan.entries, 3, "frames 0, 2 and 3 are intact");
        assert_eq!(scan.last_seq, Some(3));
        assert!(scan.damaged_in_middle);
        assert_eq!(scan.damaged_bytes, frame as u64);
        assert_ne!(scan.damage, Some(TORN_TAIL));
        rewrite_intact(DISK, &dir, &path).unwrap();
        let rewritten = super::scan(DISK, &path, 0).unwrap();
        assert_eq!((rewritten.entries, rewritten.damage), (3, None));
    }

    #[test]
    fn a_damaged_length_before_the_durable_limit_is_damage_not_the_end() {
        // Below the durable length every frame is whole: one that runs past it is damage.
        let dir = temp_dir("length-limit");
        let path = segment_path(&dir, 0);
        let mut bytes = write_segment(&path, &[sample(0, "{}"), sample(1, "{}")]);
        let frame = sample(0, "{}").record.frame_len();
        bytes[2] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let mut reader = FrameReader::open(DISK, &path, 0).unwrap();
        assert!(matches!(
            reader.next_frame(bytes.len() as u64).unwrap(),
            Step::Damage(_)
        ));
        assert_eq!(reader.resync(bytes.len() as u64, 0).unwrap(), Some(1));
        assert_eq!(reader.offset, frame as u64);
    }

    #[test]
    fn damage_at_the_end_is_not_mistaken_for_a_frame_in_the_middle() {
        let dir = temp_dir("tail");
        let path = segment_path(&dir, 0);
        let mut bytes = write_segment(&path, &[sample(0, "{}"), sample(1, "{}")]);
        bytes.extend_from_slice(&[0xAB; 300]);
        fs::write(&path, &bytes).unwrap();
        let scan = scan(DISK, &path, 0).unwrap();
        assert_eq!(scan.entries, 2);
        assert!(!scan.damaged_in_middle);
        assert_eq!(scan.damaged_bytes, 300);
        assert_eq!(scan.good_len, bytes.len() as u64 - 300);
    }

    #[test]
    fn entries_before_the_checkpoint_are_not_counted() {
        let dir = temp_dir("from");
        let path = segment_path(&dir, 0);
        write_segment(&path, &[sample(0, "{}"), sample(1, "{}"), sample(2, "{}")]);
        let scan = scan(DISK, &path, 2).unwrap();
        assert_eq!((scan.entries, scan.last_seq), (1, Some(2)));
        assert_eq!(scan.per_topic.get("aftercart.checkouts"), Some(&1));
    }

    #[test]
    fn segments_are_listed_in_order_and_other_files_ignored() {
        let dir = temp_dir("list");
        for seq in [10, 2, 300] {
            fs::write(segment_path(&dir, seq), b"").unwrap();
        }
        fs::write(dir.join(LOCK_FILE), b"").unwrap();
        let seqs: Vec<u64> = list_segments(DISK, &dir)
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(seqs, vec![2, 10, 300]);
    }

    #[test]
    fn the_checkpoint_round_trips_and_damage_reads_as_zero() {
        let dir = temp_dir("checkpoint");
        assert_eq!(read_checkpoint(DISK, &dir), 0);
        write_checkpoint(DISK, &dir, 123_456).unwrap();
        assert_eq!(read_checkpoint(DISK, &dir), 123_456);
        let mut bytes = fs::read(dir.join(CHECKPOINT_FILE)).unwrap();
        bytes[0] ^= 1;
        fs::write(dir.join(CHECKPOINT_FILE), bytes).unwrap();
        assert_eq!(read_checkpoint(DISK, &dir), 0);
    }

    #[test]
    fn a_reader_stops_at_the_durable_limit() {
        let dir = temp_dir("limit");
        let path = segment_path(&dir, 0);
        write_segment(&path, &[sample(0, "{}"), sample(1, "{}")]);
        let frame = sample(0, "{}").record.frame_len() as u64;
        let mut reader = FrameReader::open(DISK, &path, 0).unwrap();
        assert!(matches!(reader.next_frame(frame).unwrap(), Step::Entry(e, _) if e.seq == 0));
        assert!(matches!(reader.next_frame(frame).unwrap(), Step::End));
        assert!(matches!(reader.next_frame(2 * frame).unwrap(), Step::Entry(e, _) if e.seq == 1));
    }
}

//! The spool's files: numbered segment files of frames, the drain checkpoint, and the scan that
//! finds how much of each segment is intact after a crash.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::entry::{self, Decoded, Entry};

const SEGMENT_SUFFIX: &str = ".wal";
const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
/// The lock file: one process per spool directory.
pub const LOCK_FILE: &str = "LOCK";

/// Read size while scanning or draining.
const READ_CHUNK: usize = 1 << 20;

/// A segment file is named after the sequence number of its first entry.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// The segment files of `dir`, oldest first, as `(first_seq, path)`.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for item in fs::read_dir(dir)? {
        let path = item?.path();
        let first_seq = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(first_seq) = first_seq {
            segments.push((first_seq, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// What a segment holds, read from its start.
#[derive(Debug, Default, Clone)]
pub struct SegmentScan {
    /// Length of the intact prefix: every frame in it decodes.
    pub good_len: u64,
    pub file_len: u64,
    /// Why the bytes after the intact prefix were not read, if any are left.
    pub damage: Option<&'static str>,
    /// Entries with `seq >= from_seq`, their frame bytes, the oldest arrival among them.
    pub entries: u64,
    pub bytes: u64,
    pub oldest_unix_ms: Option<u64>,
    pub last_seq: Option<u64>,
    /// Entries per Kafka topic (inspection only).
    pub per_topic: BTreeMap<String, u64>,
}

/// Reads a whole segment, counting the entries numbered `from_seq` or later.
pub fn scan(path: &Path, from_seq: u64) -> io::Result<SegmentScan> {
    let mut reader = FrameReader::open(path, 0)?;
    let mut scan = SegmentScan {
        file_len: reader.file.metadata()?.len(),
        ..SegmentScan::default()
    };
    loop {
        match reader.next_frame(u64::MAX)? {
            Step::Entry(entry, frame_len) => {
                scan.last_seq = Some(entry.seq);
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
                scan.damage = Some(why);
                break;
            }
        }
    }
    scan.good_len = reader.offset;
    if scan.damage.is_none() && scan.good_len < scan.file_len {
        scan.damage = Some("torn final frame");
    }
    Ok(scan)
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
    file: File,
    buf: Vec<u8>,
    /// Start of `buf` in the file.
    buf_offset: u64,
    /// Offset of the next frame.
    pub offset: u64,
}

impl FrameReader {
    pub fn open(path: &Path, offset: u64) -> io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            file,
            buf: Vec::new(),
            buf_offset: offset,
            offset,
        })
    }

    /// The next frame ending at or before `limit` (a byte offset).
    pub fn next_frame(&mut self, limit: u64) -> io::Result<Step> {
        loop {
            let start = (self.offset - self.buf_offset) as usize;
            match entry::decode(&self.buf[start..]) {
                Decoded::Entry { entry, frame_len } => {
                    if self.offset + frame_len as u64 > limit {
                        return Ok(Step::End);
                    }
                    self.offset += frame_len as u64;
                    return Ok(Step::Entry(entry, frame_len));
                }
                Decoded::Corrupt(why) => return Ok(Step::Damage(why)),
                Decoded::Incomplete => {
                    if !self.fill()? {
                        return Ok(Step::End);
                    }
                }
            }
        }
    }

    /// Drops consumed bytes and reads more; `false` at the end of the file.
    fn fill(&mut self) -> io::Result<bool> {
        let consumed = (self.offset - self.buf_offset) as usize;
        self.buf.drain(..consumed);
        self.buf_offset = self.offset;
        let have = self.buf.len();
        self.buf.resize(have + READ_CHUNK, 0);
        let read = self.file.read(&mut self.buf[have..])?;
        self.buf.truncate(have + read);
        Ok(read > 0)
    }
}

/// Cuts a damaged segment back to its intact prefix and makes that durable.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// The drain checkpoint: every entry numbered below it is in Kafka. Missing or damaged reads as
/// 0, which replays the whole spool: at least once, never lost.
pub fn read_checkpoint(dir: &Path) -> u64 {
    let Ok(bytes) = fs::read(dir.join(CHECKPOINT_FILE)) else {
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
pub fn write_checkpoint(dir: &Path, next_seq: u64) -> io::Result<()> {
    let mut bytes = next_seq.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&next_seq.to_le_bytes()).to_le_bytes());
    let tmp = dir.join(CHECKPOINT_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
    sync_dir(dir)
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::entry::tests::sample;

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
        let scan = scan(&path, 0).unwrap();
        assert_eq!(scan.entries, 1);
        assert_eq!(scan.good_len, first_len);
        assert_eq!(scan.damage, Some("torn final frame"));
        truncate(&path, scan.good_len).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), first_len);
    }

    #[test]
    fn a_flipped_byte_stops_the_scan_there() {
        let dir = temp_dir("flip");
        let path = segment_path(&dir, 5);
        let mut bytes = write_segment(&path, &[sample(5, "{}"), sample(6, "{}"), sample(7, "{}")]);
        let frame = sample(5, "{}").record.frame_len();
        bytes[frame + 20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let scan = scan(&path, 0).unwrap();
        assert_eq!(scan.entries, 1);
        assert_eq!(scan.damage, Some("checksum mismatch"));
        assert_eq!(scan.last_seq, Some(5));
    }

    #[test]
    fn entries_before_the_checkpoint_are_not_counted() {
        let dir = temp_dir("from");
        let path = segment_path(&dir, 0);
        write_segment(&path, &[sample(0, "{}"), sample(1, "{}"), sample(2, "{}")]);
        let scan = scan(&path, 2).unwrap();
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
        let seqs: Vec<u64> = list_segments(&dir)
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(seqs, vec![2, 10, 300]);
    }

    #[test]
    fn the_checkpoint_round_trips_and_damage_reads_as_zero() {
        let dir = temp_dir("checkpoint");
        assert_eq!(read_checkpoint(&dir), 0);
        write_checkpoint(&dir, 123_456).unwrap();
        assert_eq!(read_checkpoint(&dir), 123_456);
        let mut bytes = fs::read(dir.join(CHECKPOINT_FILE)).unwrap();
        bytes[0] ^= 1;
        fs::write(dir.join(CHECKPOINT_FILE), bytes).unwrap();
        assert_eq!(read_checkpoint(&dir), 0);
    }

    #[test]
    fn a_reader_stops_at_the_durable_limit() {
        let dir = temp_dir("limit");
        let path = segment_path(&dir, 0);
        write_segment(&path, &[sample(0, "{}"), sample(1, "{}")]);
        let frame = sample(0, "{}").record.frame_len() as u64;
        let mut reader = FrameReader::open(&path, 0).unwrap();
        assert!(matches!(reader.next_frame(frame).unwrap(), Step::Entry(e, _) if e.seq == 0));
        assert!(matches!(reader.next_frame(frame).unwrap(), Step::End));
        assert!(matches!(reader.next_frame(2 * frame).unwrap(), Step::Entry(e, _) if e.seq == 1));
    }
}

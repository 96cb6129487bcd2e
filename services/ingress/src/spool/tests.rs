//! Spool tests on a real directory: appends answered after the fsync, limits, the lock, and
//! recovery from torn tails. Draining needs a broker and is tested in tests/ingress.rs.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use std::fs;

use super::crash_disk;
use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "aftercart-spool-{name}-{}-{nanos}",
        std::process::id()
    ))
}

fn record(n: u32) -> SpoolRecord {
    SpoolRecord {
        topic: "aftercart.checkouts".into(),
        key: format!("shop.myshopify.com/{n}"),
        headers: vec![("shopify-webhook-id".into(), n.to_string().into_bytes())],
        body: Bytes::from(format!(r#"{{"id":{n}}}"#)),
        received_unix_ms: unix_ms(),
    }
}

async fn append(spool: &Spool, n: u32) -> Result<u64, AppendError> {
    spool
        .append(record(n), None)
        .await
        .expect("the writer answers")
        .map_err(|(error, _)| error)
}

/// Opens a spool, retrying while the previous handle's writer thread is still letting go of
/// the lock.
fn reopen(dir: &Path, max_bytes: u64) -> (Spool, Recovered) {
    for _ in 0..100 {
        match Spool::open(dir, max_bytes, SpoolMetrics::unregistered()) {
            Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            other => return other.expect("the spool opens"),
        }
    }
    panic!("the spool lock was never released");
}

#[tokio::test]
async fn appends_are_numbered_in_order_and_survive_a_reopen() {
    let dir = temp_dir("order");
    let (spool, recovered) = reopen(&dir, 1 << 20);
    assert_eq!(recovered.events, 0);
    let answers: Vec<_> = (0..50).map(|n| spool.append(record(n), None)).collect();
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.await.unwrap().map_err(|e| e.0), Ok(n as u64));
    }
    assert!(spool.has_backlog());
    assert_eq!(spool.pending_events(), 50);
    drop(spool);
    let (spool, recovered) = reopen(&dir, 1 << 20);
    assert_eq!(recovered.events, 50);
    assert_eq!(recovered.discarded_bytes, 0);
    // Numbering continues after what is on disk.
    assert_eq!(append(&spool, 99).await, Ok(50));
}

#[tokio::test]
async fn a_full_spool_refuses_and_frees_nothing_it_holds() {
    let dir = temp_dir("full");
    let (spool, _) = reopen(&dir, 1 << 20);
    // Same-size records (the limit counts frame bytes), big enough to fill it in ~100 fsyncs.
    let big = SpoolRecord {
        body: Bytes::from(vec![b'x'; 10_000]),
        ..record(0)
    };
    let fits = (1 << 20) / big.frame_len() as u64;
    for n in 0..fits {
        let answer = spool.append(big.clone(), None).await.unwrap();
        assert!(answer.is_ok(), "append {n}");
    }
    let refused = spool.append(big, None).await.unwrap();
    assert_eq!(refused.map_err(|e| e.0), Err(AppendError::Full));
    assert_eq!(spool.pending_events(), fits);
}

#[tokio::test]
async fn one_process_per_directory() {
    let dir = temp_dir("lock");
    let (_spool, _) = reopen(&dir, 1 << 20);
    assert!(matches!(
        Spool::open(&dir, 1 << 20, SpoolMetrics::unregistered()),
        Err(OpenError::Locked(_))
    ));
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_counted_and_the_rest_kept() {
    let dir = temp_dir("torn");
    let (spool, _) = reopen(&dir, 1 << 20);
    for n in 0..3 {
        append(&spool, n).await.unwrap();
    }
    drop(spool);
    let (_, path) = segment::list_segments(&RealDisk, &dir)
        .unwrap()
        .pop()
        .unwrap();
    let len = fs::metadata(&path).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 5).unwrap();
    drop(file);
    let metrics = SpoolMetrics::unregistered();
    let (spool, recovered) = loop {
        match Spool::open(&dir, 1 << 20, metrics.clone()) {
            Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            other => break other.unwrap(),
        }
    };
    assert_eq!(recovered.events, 2);
    assert_eq!(
        recovered.discarded_bytes,
        len - 5 - 2 * record(0).frame_len() as u64
    );
    // The damaged entry's number is reused: it was never answered 200.
    assert_eq!(append(&spool, 7).await, Ok(2));
}

#[tokio::test]
async fn drained_segments_are_deleted_on_open() {
    let dir = temp_dir("drained");
    let (spool, _) = reopen(&dir, 1 << 20);
    for n in 0..3 {
        append(&spool, n).await.unwrap();
    }
    drop(spool);
    segment::write_checkpoint(&RealDisk, &dir, 3).unwrap();
    let (spool, recovered) = reopen(&dir, 1 << 20);
    assert_eq!(recovered.events, 0);
    assert!(!spool.has_backlog());
    assert!(segment::list_segments(&RealDisk, &dir).unwrap().is_empty());
    assert_eq!(append(&spool, 3).await, Ok(3));
}

#[tokio::test]
async fn a_disk_that_refuses_writes_fails_closed_and_recovers_when_it_is_back() {
    let dir = temp_dir("full-disk");
    let metrics = SpoolMetrics::unregistered();
    let (spool, _) = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    // The next segment file leads to a device where every write fails with ENOSPC.
    let next_segment = segment::segment_path(&dir, 0);
    std::os::unix::fs::symlink("/dev/full", &next_segment).unwrap();
    assert_eq!(append(&spool, 1).await, Err(AppendError::Disk));
    assert_eq!(
        spool.pending_events(),
        0,
        "nothing refused is counted as waiting"
    );
    fs::remove_file(&next_segment).unwrap();
    // The disk is back: the same number is used, nothing was answered 200 for it.
    assert_eq!(append(&spool, 2).await, Ok(0));
    assert_eq!(spool.pending_events(), 1);
}

/// Opens a spool on `disk` whose every group commit starts a new segment.
fn open_rolling(disk: Arc<dyn Disk>, dir: &Path) -> (Spool, Recovered) {
    for _ in 0..100 {
        match Spool::open_on(
            Arc::clone(&disk),
            dir,
            64 << 20,
            1,
            SpoolMetrics::unregistered(),
        ) {
            Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            other => return other.expect("the spool opens"),
        }
    }
    panic!("the spool lock was never released");
}

/// Every entry the drainer would read, in order, with what damage it skipped: read batches
/// and mark them drained until the reader has caught up with the writer.
fn drain_all(spool: &Spool) -> (Vec<Entry>, u64) {
    let shared = &spool.shared;
    let mut cursor = drainer::Cursor::default();
    cursor.want = shared.lock_state().drained_seq;
    let (mut read, mut lost) = (Vec::new(), 0);
    loop {
        let batch = drainer::read_batch(shared, &mut cursor).expect("readable");
        if batch.entries.is_empty() && batch.lost_events == 0 {
            return (read, lost);
        }
        let bytes: u64 = batch.entries.iter().map(|(_, len)| *len as u64).sum();
        let events = batch.entries.len() as u64;
        shared.mark_drained(
            cursor.want,
            events + batch.lost_events,
            bytes + batch.lost_bytes,
        );
        lost += batch.lost_events;
        read.extend(batch.entries.into_iter().map(|(entry, _)| entry));
    }
}

/// Appends records `0..count` at once, so they share a group commit (and a segment).
async fn append_together(spool: &Spool, count: u32) {
    let answers: Vec<_> = (0..count).map(|n| spool.append(record(n), None)).collect();
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.await.unwrap().map_err(|e| e.0), Ok(n as u64));
    }
}

fn frame_bytes(n: u32) -> u64 {
    record(n).frame_len() as u64
}

#[tokio::test]
async fn a_failed_first_write_never_lets_a_drained_entry_delete_a_live_segment() {
    // The issue's repro: two segments with data, the next segment's path a symlink to
    // /dev/full, one failed append, one good append, the first two drained.
    let dir = temp_dir("path-reuse");
    let (spool, _) = open_rolling(Arc::new(RealDisk), &dir);
    assert_eq!(append(&spool, 0).await, Ok(0));
    assert_eq!(append(&spool, 1).await, Ok(1));
    let next = segment::segment_path(&dir, 2);
    std::os::unix::fs::symlink("/dev/full", &next).unwrap();
    assert_eq!(append(&spool, 2).await, Err(AppendError::Disk));
    assert!(!spool.is_healthy());
    fs::remove_file(&next).unwrap();
    assert_eq!(append(&spool, 3).await, Ok(2), "acknowledged");
    spool.shared.mark_drained(2, 2, 2 * frame_bytes(0));
    assert!(
        next.exists(),
        "the segment holding the acknowledged event is still there"
    );
    drop(spool);
    let (_, recovered) = reopen(&dir, 64 << 20);
    assert_eq!(recovered.events, 1, "the acknowledged event survives");
}

#[tokio::test]
async fn a_segment_whose_first_write_failed_is_dropped_with_its_file() {
    let disk = crash_disk::CrashDisk::new();
    let dir = Path::new("/spool");
    let (spool, _) = open_rolling(Arc::new(disk.clone()), dir);
    assert_eq!(append(&spool, 0).await, Ok(0));
    assert_eq!(append(&spool, 1).await, Ok(1));
    disk.set_full(true);
    assert_eq!(append(&spool, 2).await, Err(AppendError::Disk));
    disk.set_full(false);
    // The empty file of the failed segment is gone, so the same number gets a fresh file.
    assert_eq!(append(&spool, 3).await, Ok(2));
    spool.shared.mark_drained(2, 2, 2 * frame_bytes(0));
    assert!(spool.is_healthy());
    let (entries, lost) = drain_all(&spool);
    assert_eq!(lost, 0);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(spool.pending_events(), 0);
}

/// Flips a byte inside frame `index` of a segment holding same-size frames.
fn damage_frame(path: &Path, index: u64, frame: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[(index * frame + frame / 2) as usize] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn damage_found_while_draining_is_skipped_counted_and_kept_for_inspection() {
    let dir = temp_dir("damage-running");
    let (spool, _) = reopen(&dir, 1 << 20);
    // One group commit of five entries: one sealed-to-be segment.
    append_together(&spool, 5).await;
    let (_, path) = segment::list_segments(&RealDisk, &dir)
        .unwrap()
        .pop()
        .unwrap();
    damage_frame(&path, 1, frame_bytes(0));
    let (entries, lost) = drain_all(&spool);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 2, 3, 4],
        "every intact frame after the damage is drained"
    );
    assert_eq!(lost, 1);
    assert_eq!(
        spool.pending_events(),
        0,
        "the backlog counters do not leak"
    );
    assert!(!spool.has_backlog());
    assert_eq!(spool.shared.reserved_bytes.load(Ordering::Acquire), 0);
    let copies = fs::read_dir(dir.join(segment::DAMAGED_DIR))
        .unwrap()
        .count();
    assert_eq!(copies, 1, "a copy of the damaged segment is kept");
    // The drainer is not stuck: later appends drain as usual.
    assert_eq!(append(&spool, 9).await, Ok(5));
    let (entries, lost) = drain_all(&spool);
    assert_eq!((entries.len(), lost), (1, 0));
}

#[tokio::test]
async fn a_damaged_length_found_while_draining_neither_stalls_nor_leaks_the_backlog() {
    let dir = temp_dir("damage-length-running");
    let (spool, _) = reopen(&dir, 1 << 20);
    append_together(&spool, 5).await;
    let (_, path) = segment::list_segments(&RealDisk, &dir)
        .unwrap()
        .pop()
        .unwrap();
    // Frame 1 claims 64 KiB more than the segment holds after it.
    let mut bytes = fs::read(&path).unwrap();
    bytes[frame_bytes(0) as usize + 2] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let (entries, lost) = drain_all(&spool);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 2, 3, 4],
        "every intact frame after the damage is drained"
    );
    assert_eq!(lost, 1);
    assert_eq!(
        spool.pending_events(),
        0,
        "the backlog counters do not leak"
    );
    assert_eq!(append(&spool, 9).await, Ok(5));
    let (entries, lost) = drain_all(&spool);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
    assert_eq!(lost, 0);
}

#[tokio::test]
async fn a_damaged_length_found_at_open_keeps_every_intact_frame_after_it() {
    let dir = temp_dir("damage-length-open");
    let (spool, _) = reopen(&dir, 1 << 20);
    append_together(&spool, 6).await;
    drop(spool);
    let (_, path) = segment::list_segments(&RealDisk, &dir)
        .unwrap()
        .pop()
        .unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[2 * frame_bytes(0) as usize + 2] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let (spool, recovered) = reopen(&dir, 1 << 20);
    assert_eq!(recovered.events, 5, "only the damaged frame is lost");
    assert_eq!(
        dir.join(segment::DAMAGED_DIR).read_dir().unwrap().count(),
        1,
        "a copy of the damaged segment is kept"
    );
    let (entries, _) = drain_all(&spool);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 1, 3, 4, 5]
    );
}

#[test]
fn a_segment_name_that_is_not_a_plain_file_is_left_alone_at_open() {
    // The disk-error fault (and its checker) symlinks the next segment names to /dev/full: a
    // restart must neither read that device forever nor count it as a segment.
    let dir = temp_dir("symlink-open");
    fs::create_dir_all(&dir).unwrap();
    let (spool, _) = reopen(&dir, 1 << 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        append(&spool, 0).await.unwrap();
    });
    drop(spool);
    let device = segment::segment_path(&dir, 7);
    std::os::unix::fs::symlink("/dev/full", &device).unwrap();
    let (opened, answer) = std::sync::mpsc::channel();
    let opening = dir.clone();
    std::thread::spawn(move || {
        let _ = opened.send(reopen(&opening, 1 << 20).1);
    });
    let recovered = answer
        .recv_timeout(Duration::from_secs(30))
        .expect("the spool opens (it does not read /dev/full forever)");
    assert_eq!((recovered.events, recovered.segments), (1, 1));
    assert!(fs::symlink_metadata(&device)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[tokio::test]
async fn damaged_copies_are_bounded_however_many_segments_a_failing_disk_damages() {
    // A dying disk damages segment after segment: copies of each would fill the volume the
    // spool needs (they are not counted against AFTERCART_INGRESS_SPOOL_MAX_BYTES).
    let dir = temp_dir("damage-copies");
    fs::create_dir_all(&dir).unwrap();
    // Segments of two frames each, the first one damaged.
    for k in 0..(segment::MAX_DAMAGED_COPIES as u64 + 3) {
        let mut bytes = Vec::new();
        for seq in [2 * k, 2 * k + 1] {
            entry::encode(seq, &record(seq as u32), &mut bytes);
        }
        let path = segment::segment_path(&dir, 2 * k);
        fs::write(&path, bytes).unwrap();
        damage_frame(&path, 0, frame_bytes(0));
    }
    let (spool, recovered) = open_rolling(Arc::new(RealDisk), &dir);
    assert_eq!(
        recovered.events,
        segment::MAX_DAMAGED_COPIES as u64 + 3,
        "the intact second frame of every segment is kept"
    );
    let copies = fs::read_dir(dir.join(segment::DAMAGED_DIR))
        .unwrap()
        .count();
    assert_eq!(copies, segment::MAX_DAMAGED_COPIES);
    let (entries, _) = drain_all(&spool);
    assert_eq!(entries.len() as u64, recovered.events);
}

#[tokio::test]
async fn frames_a_failed_group_may_leave_behind_never_share_a_number_with_an_acknowledged_event() {
    // A group written into the page cache whose fsync fails, and whose truncation fails too,
    // stays in its segment. If the next group reused its numbers, the drainer (after a
    // restart) would read the failed group's frames and skip the acknowledged ones as already
    // read.
    let disk = crash_disk::CrashDisk::new();
    let dir = Path::new("/spool");
    let (spool, _) = reopen_on(&disk, dir);
    assert_eq!(append(&spool, 0).await, Ok(0));
    disk.set_flush_failing(true);
    assert_eq!(
        append(&spool, 1).await,
        Err(AppendError::Disk),
        "answered 503"
    );
    disk.set_flush_failing(false);
    let acknowledged = append(&spool, 2).await.expect("acknowledged");
    drop(spool);
    // A restart (no power cut: what the page cache holds is what a reader sees).
    let (spool, _) = loop {
        match Spool::open_in(
            Arc::new(disk.clone()),
            dir,
            1 << 20,
            SpoolMetrics::unregistered(),
        ) {
            Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            other => break other.expect("the spool opens"),
        }
    };
    let (entries, lost) = drain_all(&spool);
    assert_eq!(lost, 0);
    let keys: Vec<&str> = entries.iter().map(|e| e.record.key.as_str()).collect();
    assert!(
        keys.contains(&record(2).key.as_str()),
        "the acknowledged event (seq {acknowledged}) is drained, got {keys:?}"
    );
    assert!(keys.contains(&record(0).key.as_str()));
    assert_eq!(spool.pending_events(), 0);
}

#[tokio::test]
async fn damage_found_at_open_on_a_full_disk_still_opens_the_spool() {
    // No room for the damaged/ copy or a rewritten segment must not keep the spool (and every
    // acknowledged event in it) closed: the segment stays as it is and the drainer skips the
    // damage while running.
    let disk = crash_disk::CrashDisk::new();
    let dir = Path::new("/spool");
    let (spool, _) = reopen_on(&disk, dir);
    append_together(&spool, 4).await;
    drop(spool);
    let (_, path) = segment::list_segments(&disk, dir).unwrap().pop().unwrap();
    let mut bytes = disk::read_all(&disk, &path).unwrap();
    bytes[(frame_bytes(0) + frame_bytes(1) / 2) as usize] ^= 0x55;
    disk.open_write(&path).unwrap().write_all(&bytes).unwrap();
    disk.set_full(true);
    let (spool, recovered) = loop {
        match Spool::open_in(
            Arc::new(disk.clone()),
            dir,
            1 << 20,
            SpoolMetrics::unregistered(),
        ) {
            Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            other => break other.expect("the spool opens on a full disk"),
        }
    };
    assert_eq!(recovered.events, 3);
    let (entries, _) = drain_all(&spool);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 2, 3]
    );
    assert_eq!(spool.pending_events(), 0);
}

#[tokio::test]
async fn damage_at_the_end_of_the_active_segment_does_not_stall_the_drainer() {
    let dir = temp_dir("damage-active");
    let (spool, _) = reopen(&dir, 1 << 20);
    for n in 0..3 {
        append(&spool, n).await.unwrap();
    }
    let (_, path) = segment::list_segments(&RealDisk, &dir)
        .unwrap()
        .pop()
        .unwrap();
    damage_frame(&path, 2, frame_bytes(0));
    let (entries, lost) = drain_all(&spool);
    assert_eq!(entries.len(), 2);
    assert_eq!(lost, 1);
    assert_eq!(spool.pending_events(), 0);
    // Appends continue in the same segment, after the damage, and are drained.
    assert_eq!(append(&spool, 3).await, Ok(3));
    let (entries, lost) = drain_all(&spool);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(lost, 0);
    assert_eq!(spool.pending_events(), 0);
}

#[tokio::test]
async fn damage_in_the_middle_of_a_sealed_segment_keeps_every_intact_frame_after_it() {
    let dir = temp_dir("damage-open");
    let (spool, _) = reopen(&dir, 1 << 20);
    append_together(&spool, 6).await;
    drop(spool);
    let (_, path) = segment::list_segments(&RealDisk, &dir)
        .unwrap()
        .pop()
        .unwrap();
    damage_frame(&path, 2, frame_bytes(0));
    let (spool, recovered) = reopen(&dir, 1 << 20);
    assert_eq!(recovered.events, 5, "only the damaged frame is lost");
    assert_eq!(recovered.discarded_bytes, frame_bytes(0));
    assert!(dir.join(segment::DAMAGED_DIR).read_dir().unwrap().count() == 1);
    let (entries, lost) = drain_all(&spool);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 1, 3, 4, 5]
    );
    assert_eq!(lost, 0, "damage found at open is not counted twice");
    assert_eq!(spool.pending_events(), 0);
}

/// The sequence numbers every segment on `disk` holds from `from` on.
fn seqs_on(disk: &dyn Disk, dir: &Path, from: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for (_, path) in segment::list_segments(disk, dir).unwrap() {
        let mut reader = segment::FrameReader::open(disk, &path, 0).unwrap();
        while let segment::Step::Entry(entry, _) = reader.next_frame(u64::MAX).unwrap() {
            if entry.seq >= from {
                seqs.push(entry.seq);
            }
        }
    }
    seqs
}

#[tokio::test]
async fn a_power_cut_loses_nothing_acknowledged_across_roll_checkpoint_and_new_directories() {
    let disk = crash_disk::CrashDisk::new();
    // Neither the spool directory nor its parent exists yet.
    let dir = Path::new("/var/lib/aftercart/spool");
    disk.create_dir(Path::new("/var")).unwrap();
    disk.create_dir(Path::new("/var/lib")).unwrap();
    disk.sync_dir(Path::new("/")).unwrap();
    disk.sync_dir(Path::new("/var")).unwrap();
    let shared_disk: Arc<dyn Disk> = Arc::new(disk.clone());
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut drained_to = 0;
    for round in 0..3u32 {
        let (spool, recovered) = open_rolling(Arc::clone(&shared_disk), dir);
        let checkpoint = spool.shared.lock_state().drained_seq;
        assert!(checkpoint <= drained_to, "the checkpoint never runs ahead");
        let expected: Vec<u64> = acknowledged
            .iter()
            .copied()
            .filter(|&seq| seq >= checkpoint)
            .collect();
        assert_eq!(
            seqs_on(&disk, dir, checkpoint),
            expected,
            "round {round}: every acknowledged entry past the checkpoint survived the power cut"
        );
        assert_eq!(recovered.events, expected.len() as u64);
        // New segments (one per commit), then a drain (checkpoint rename), then more.
        for n in 0..6 {
            acknowledged.push(append(&spool, round * 10 + n).await.unwrap());
        }
        let (entries, _) = drain_all(&spool);
        drained_to = entries.last().map_or(drained_to, |e| e.seq + 1);
        for n in 6..9 {
            acknowledged.push(append(&spool, round * 10 + n).await.unwrap());
        }
        drop(spool);
        disk.crash();
    }
    assert_eq!(disk.crashes(), 3);
}

#[tokio::test]
async fn a_disk_full_mid_segment_keeps_what_was_acknowledged_and_recovers() {
    let disk = crash_disk::CrashDisk::new();
    let dir = Path::new("/spool");
    let (spool, _) = reopen_on(&disk, dir);
    assert_eq!(append(&spool, 0).await, Ok(0));
    disk.set_full(true);
    assert_eq!(append(&spool, 1).await, Err(AppendError::Disk));
    assert_eq!(spool.trouble(), Some(AppendError::Disk));
    disk.set_full(false);
    // The segment that failed is sealed at its durable length; the next append starts another.
    assert_eq!(append(&spool, 2).await, Ok(1));
    let (entries, lost) = drain_all(&spool);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(lost, 0);
    assert_eq!(spool.pending_events(), 0);
    drop(spool);
    disk.crash();
    let (_, recovered) = reopen_on(&disk, dir);
    assert_eq!(
        recovered.discarded_bytes, 0,
        "no torn write was left behind"
    );
}

/// Opens a spool with production-sized segments on a test disk.
fn reopen_on(disk: &crash_disk::CrashDisk, dir: &Path) -> (Spool, Recovered) {
    Spool::open_in(
        Arc::new(disk.clone()),
        dir,
        1 << 20,
        SpoolMetrics::unregistered(),
    )
    .expect("the spool opens")
}

/// Events set aside in `refused/` (Kafka refused them for their size on their topic and the
/// quarantine topic) form a spool of their own that `aftercart spool drain --ingress-spool-dir
/// <dir>/refused` reads back in order, records intact. Setting one aside twice (a crash before
/// the checkpoint moved) keeps one copy; a different event under a number already taken, or
/// below the checkpoint an earlier drain left there, is numbered above them, never written over
/// or taken for drained; the directory holds at most its limit.
#[tokio::test]
async fn events_set_aside_in_refused_are_a_spool_of_their_own() {
    use refused::{SetAside, REFUSED_DIR};
    let dir = temp_dir("refused");
    // Records made once: each carries the time it was made.
    let records: std::collections::HashMap<u32, SpoolRecord> = [2, 3, 7, 8, 20, 70]
        .into_iter()
        .map(|n| (n, record(n)))
        .collect();
    let record = |n: u32| records[&n].clone();
    let entry = |seq: u64, n: u32| Entry {
        seq,
        record: record(n),
    };
    for (seq, n) in [(3, 3), (7, 7), (8, 8)] {
        let written = set_aside_when_free(&dir, &entry(seq, n), u64::MAX);
        assert!(matches!(written, SetAside::Written(_)), "{written:?}");
    }
    let again = refused::set_aside(&RealDisk, &dir, &entry(7, 7), u64::MAX).unwrap();
    assert_eq!(again, SetAside::AlreadyThere);
    // Sequence numbers start again when a spool is new: 7 is taken by another event.
    let other = refused::set_aside(&RealDisk, &dir, &entry(7, 70), u64::MAX).unwrap();
    assert_eq!(
        other,
        SetAside::Written(segment::segment_path(&dir.join(REFUSED_DIR), 9))
    );
    // And that one set aside again (a crash before the checkpoint moved) is found under its
    // new number, not written a second time.
    let other_again = set_aside_when_free(&dir, &entry(7, 70), u64::MAX);
    assert_eq!(other_again, SetAside::AlreadyThere);
    assert_eq!(refused::held(&RealDisk, &dir).unwrap().events, 4);
    let refused_dir = dir.join(REFUSED_DIR);
    {
        let (spool, recovered) = reopen(&refused_dir, 1 << 20);
        assert_eq!(recovered.events, 4);
        let (read, lost) = drain_all(&spool);
        assert_eq!(lost, 0);
        let read: Vec<(u64, SpoolRecord)> = read.into_iter().map(|e| (e.seq, e.record)).collect();
        assert_eq!(
            read,
            vec![
                (3, record(3)),
                (7, record(7)),
                (8, record(8)),
                (9, record(70))
            ]
        );
    }
    // Drained in place: its checkpoint (10) stays. A later event numbered 2 is still pending.
    let later = set_aside_when_free(&dir, &entry(2, 2), u64::MAX);
    assert!(matches!(later, SetAside::Written(_)), "{later:?}");
    let held = refused::held(&RealDisk, &dir).unwrap();
    assert_eq!(held.events, 1);
    let (spool, recovered) = reopen(&refused_dir, 1 << 20);
    assert_eq!(recovered.events, 1, "not taken for drained");
    // While a drain holds the directory, nothing is set aside (the entry stays in the spool).
    let busy = refused::set_aside(&RealDisk, &dir, &entry(21, 20), u64::MAX).unwrap_err();
    assert_eq!(busy.kind(), std::io::ErrorKind::WouldBlock);
    drop(spool);
    // The limit counts what is held: one frame more than fits is refused, one that fits is not.
    let frame = record(20).frame_len() as u64;
    let full = set_aside_when_free(&dir, &entry(20, 20), held.bytes + frame - 1);
    assert_eq!(full, SetAside::Full);
    let fits = set_aside_when_free(&dir, &entry(20, 20), held.bytes + frame);
    assert!(matches!(fits, SetAside::Written(_)), "{fits:?}");
}

/// Sets `entry` aside, waiting while a closing spool's writer thread still holds the lock.
fn set_aside_when_free(dir: &Path, entry: &Entry, max_bytes: u64) -> refused::SetAside {
    for _ in 0..100 {
        match refused::set_aside(&RealDisk, dir, entry, max_bytes) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.expect("set aside"),
        }
    }
    panic!("the refused/ lock was never released");
}

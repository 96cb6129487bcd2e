//! Spool tests on a real directory: appends answered after the fsync, limits, the lock, and
//! recovery from torn tails. Draining needs a broker and is tested in tests/ingress.rs.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

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
    let (_, path) = segment::list_segments(&dir).unwrap().pop().unwrap();
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
    segment::write_checkpoint(&dir, 3).unwrap();
    let (spool, recovered) = reopen(&dir, 1 << 20);
    assert_eq!(recovered.events, 0);
    assert!(!spool.has_backlog());
    assert!(segment::list_segments(&dir).unwrap().is_empty());
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

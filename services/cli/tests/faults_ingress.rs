//! Fault suite, ingress part (`make test-faults`): the real `aftercart ingress` binary and a real
//! Tansu broker process under steady load, with the broker frozen (SIGSTOP), the ingress killed
//! (SIGKILL), the spool filled, and the spool's disk failing mid-spool; plus a power cut under
//! load, which needs the in-process ingress on a disk that forgets unsynced writes (a real
//! process's page cache cannot be dropped here). Each prints its books: sent / acknowledged /
//! found in Kafka / lost, where lost must be 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aftercart_ingress::spool::crash_disk::CrashDisk;
use aftercart_ingress::spool::disk::SpoolDisk;
use aftercart_ingress::spool::segment::segment_path;
use aftercart_tests::broker::TansuProcess;
use aftercart_tests::http::Webhook;
use aftercart_tests::ingress::{test_config, TestIngress};
use aftercart_tests::load::{webhook_ids_in, LoadClient, LoadReport, LoadSpec};
use aftercart_tests::process::{ingress_env, ServiceProcess};
use aftercart_tests::{eventually, unique_prefix, Accounting, Broker};

const BIN: &str = env!("CARGO_BIN_EXE_aftercart");
const SECRET: &str = "faults-secret";

/// Longer than the publish deadline (3 s): without a spool every request in it would be a 503.
const FREEZE: Duration = Duration::from_secs(8);

struct Setup {
    broker: Broker,
    ingress: ServiceProcess,
    addr: std::net::SocketAddr,
    prefix: String,
}

fn tansu(broker: &Broker) -> &TansuProcess {
    match broker {
        Broker::Tansu(process) => process,
        Broker::Mock(_) => unreachable!("the fault suite runs on a broker process"),
    }
}

/// Tansu plus an ingress whose spool takes over after 500 ms without an acknowledgement.
async fn setup(name: &str, extra: &[(&str, &str)]) -> Option<Setup> {
    let broker = Broker::tansu().await?;
    let prefix = unique_prefix();
    let (mut env, addr) = ingress_env(&broker, &prefix, SECRET);
    env.push(("AFTERCART_INGRESS_SPOOL_DIR".into(), spool_dir(&prefix)));
    env.push(("AFTERCART_INGRESS_SPOOL_AFTER".into(), "500ms".into()));
    env.push(("AFTERCART_INGRESS_PUBLISH_DEADLINE".into(), "3s".into()));
    for (key, value) in extra {
        env.push((key.to_string(), value.to_string()));
    }
    let ingress = ServiceProcess::start(name, BIN, &["ingress"], env).await;
    Some(Setup {
        broker,
        ingress,
        addr,
        prefix,
    })
}

fn spool_dir(prefix: &str) -> String {
    let dir: PathBuf = aftercart_tests::scratch(&format!("faults-spool-{prefix}"));
    dir.to_string_lossy().into_owned()
}

impl Setup {
    async fn wait_drained(&self) {
        eventually(
            "the spool drained into Kafka",
            Duration::from_secs(90),
            || async {
                (self
                    .ingress
                    .metric("aftercart_ingress_spool_pending_events")
                    .await
                    == 0.0)
                    .then_some(())
            },
        )
        .await;
    }

    /// The books: the client's answers against every record in the orders topic.
    async fn books(&self, name: &str, report: &LoadReport) -> Accounting {
        let found = webhook_ids_in(
            &self.broker.bootstrap(),
            &[format!("{}orders", self.prefix)],
        )
        .await;
        let mut books = report.accounting(name);
        books.reconcile(
            report.acknowledged.iter().map(String::as_str),
            found.iter().map(String::as_str),
        );
        eprintln!("{books}");
        books
    }
}

/// 1. The broker frozen for longer than the response budget under steady load, then thawed:
/// every request answered 2xx, every acknowledged webhook in Kafka, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn broker_frozen_longer_than_the_budget_loses_nothing() {
    let Some(setup) = setup("ingress-frozen-broker", &[]).await else {
        return;
    };
    let load = LoadClient::start(LoadSpec {
        rate: 150.0,
        ..LoadSpec::orders(setup.addr, SECRET)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    tansu(&setup.broker).sigstop();
    tokio::time::sleep(FREEZE).await;
    let spooled = setup
        .ingress
        .metric("aftercart_ingress_spool_pending_events")
        .await;
    tansu(&setup.broker).sigcont();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    setup.wait_drained().await;
    let books = setup.books("faults/broker-frozen", &report).await;
    eprintln!(
        "  spooled while frozen: {spooled}; slowest answer {:?}",
        report.slowest
    );
    assert!(
        spooled > 0.0,
        "the freeze was long enough to need the spool"
    );
    assert_eq!(
        books.refused_total() + books.unanswered,
        0,
        "every request answered 2xx"
    );
    assert!(books.acknowledged > 500, "{books}");
    books.assert_exact();
}

/// 2. The ingress SIGKILLed under load while events wait in its spool, restarted on the same
/// spool: every acknowledged webhook in Kafka. (A copy may appear twice: the killed producer's
/// last request can still land. Consumers dedupe by webhook id.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn ingress_killed_under_load_keeps_every_acknowledged_event() {
    let Some(mut setup) = setup("ingress-killed", &[]).await else {
        return;
    };
    let load = LoadClient::start(LoadSpec {
        rate: 150.0,
        request_timeout: Duration::from_secs(5),
        ..LoadSpec::orders(setup.addr, SECRET)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    tansu(&setup.broker).sigstop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spooled = setup
        .ingress
        .metric("aftercart_ingress_spool_pending_events")
        .await;
    setup.ingress.sigkill().await;
    tansu(&setup.broker).sigcont();
    setup.ingress.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    setup.wait_drained().await;
    let books = setup.books("faults/ingress-killed", &report).await;
    eprintln!("  spooled when killed: {spooled}");
    assert!(spooled > 0.0, "the kill hit a spool holding events");
    assert_eq!(books.lost, 0, "{books}; for example {:?}", books.examples);
    assert!(books.acknowledged > 300, "{books}");
}

/// 3. The spool full while the broker is frozen: 503s (Shopify retries them), nothing
/// acknowledged lost, and 200s again once the broker drains the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn a_full_spool_answers_503_and_recovers_after_the_drain() {
    let Some(setup) = setup(
        "ingress-spool-full",
        &[
            ("AFTERCART_INGRESS_SPOOL_MAX_BYTES", "1MiB"),
            ("AFTERCART_INGRESS_MAX_BODY_BYTES", "512KiB"),
        ],
    )
    .await
    else {
        return;
    };
    let load = LoadClient::start(padded(LoadSpec::orders(setup.addr, SECRET), 20_000));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tansu(&setup.broker).sigstop();
    tokio::time::sleep(FREEZE).await;
    let full = setup
        .ingress
        .metric(r#"aftercart_ingress_spool_rejected_total{reason="full"}"#)
        .await;
    tansu(&setup.broker).sigcont();
    setup.wait_drained().await;
    let acknowledged_before = load.acknowledged();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recovered = load.acknowledged() - acknowledged_before;
    let report = load.stop().await;
    setup.wait_drained().await;
    let books = setup.books("faults/spool-full", &report).await;
    eprintln!("  refused as full: {full}; acknowledged after the drain: {recovered}");
    assert!(
        full > 0.0 && books.refused.get(&503).copied().unwrap_or(0) > 0,
        "{books}"
    );
    assert!(
        recovered > 100,
        "answers 200 again once drained: {recovered}"
    );
    books.assert_exact();
}

/// `spec` at 100 requests/s with `bytes` of padding in every body, so the spool rolls segments
/// (and fills) within seconds.
fn padded(mut spec: LoadSpec, bytes: usize) -> LoadSpec {
    let padding = "p".repeat(bytes);
    let small = Arc::clone(&spec.webhook);
    spec.rate = 100.0;
    spec.webhook = Arc::new(move |n| {
        let base: Webhook = small(n);
        let mut body = base.body.clone();
        body.pop(); // the closing brace
        body.extend_from_slice(format!(r#","note":"{padding}"}}"#).as_bytes());
        Webhook { body, ..base }
    });
    spec
}

/// How a fault case breaks the spool's disk.
enum DiskFault {
    /// Every segment name the spool can take next becomes a symlink to /dev/full (writes fail
    /// with ENOSPC; O_EXCL refuses the name): segment creation fails, the active segment works.
    SymlinkedSegments,
    /// The spool lives on a tmpfs this small: the disk fills (ENOSPC on appends, the checkpoint
    /// and new segments) long before AFTERCART_INGRESS_SPOOL_MAX_BYTES.
    FullTmpfs(&'static str),
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`, or `None` where mounting is not allowed (not root).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// 4. The spool's disk fails mid-spool under load while the broker is frozen, then the broker
/// thaws: 503s only while neither Kafka nor the spool can take an event, 200s again as soon as
/// Kafka can (the sick spool is gone around), nothing acknowledged lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn a_spool_disk_failing_mid_spool_loses_nothing_and_kafka_takes_over() {
    disk_fails_mid_spool("spool-disk-error", DiskFault::SymlinkedSegments).await;
}

/// 4b. The same with the spool on a tmpfs that fills up (needs root to mount; skipped without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn a_spool_disk_filling_up_mid_spool_loses_nothing_and_kafka_takes_over() {
    disk_fails_mid_spool("spool-disk-full", DiskFault::FullTmpfs("3m")).await;
}

async fn disk_fails_mid_spool(name: &str, fault: DiskFault) {
    let tmpfs_dir =
        std::env::temp_dir().join(format!("aftercart-faults-tmpfs-{}", unique_prefix()));
    let _tmpfs = match fault {
        DiskFault::FullTmpfs(size) => match Tmpfs::mount(&tmpfs_dir, size) {
            Some(tmpfs) => Some(tmpfs),
            None => {
                eprintln!("skipped faults/{name}: cannot mount a tmpfs here (not root?)");
                return;
            }
        },
        DiskFault::SymlinkedSegments => None,
    };
    let mut extra = vec![
        // 1 MiB segments: the spool needs a new one about every second of the padded load.
        ("AFTERCART_INGRESS_SPOOL_MAX_BYTES", "8MiB".to_string()),
        ("AFTERCART_INGRESS_MAX_BODY_BYTES", "512KiB".to_string()),
    ];
    if let DiskFault::FullTmpfs(_) = fault {
        extra.push((
            "AFTERCART_INGRESS_SPOOL_DIR",
            tmpfs_dir.join("spool").to_string_lossy().into_owned(),
        ));
    }
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Some(setup) = setup(&format!("ingress-{name}"), &extra).await else {
        return;
    };
    let load = LoadClient::start(padded(LoadSpec::orders(setup.addr, SECRET), 10_000));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tansu(&setup.broker).sigstop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let DiskFault::SymlinkedSegments = fault {
        // The spool names a segment after its first entry: every name it can take next
        // becomes a symlink to a device where writes fail.
        let appended = setup
            .ingress
            .metric("aftercart_ingress_spool_appended_total")
            .await as u64;
        let dir = PathBuf::from(spool_dir(&setup.prefix));
        for seq in appended..appended + 20_000 {
            std::os::unix::fs::symlink("/dev/full", segment_path(&dir, seq)).unwrap();
        }
    }
    eventually(
        "the spool hits the broken disk",
        Duration::from_secs(20),
        || async {
            let mut errors = 0.0;
            for op in ["open", "write", "fsync"] {
                errors += setup
                    .ingress
                    .metric(&format!(
                        r#"aftercart_ingress_spool_errors_total{{op="{op}"}}"#
                    ))
                    .await;
            }
            (errors > 0.0).then_some(())
        },
    )
    .await;
    let spooled = setup
        .ingress
        .metric("aftercart_ingress_spool_pending_events")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tansu(&setup.broker).sigcont();
    eventually("Kafka seen back", Duration::from_secs(30), || async {
        (setup
            .ingress
            .metric("aftercart_ingress_kafka_healthy")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    let backlog_at_thaw = setup
        .ingress
        .metric("aftercart_ingress_spool_pending_events")
        .await;
    // From the first webhook Kafka takes (the producer may still be reconnecting).
    let thawed = load.acknowledged();
    eventually(
        "a webhook taken after the thaw",
        Duration::from_secs(30),
        || async { (load.acknowledged() > thawed).then_some(()) },
    )
    .await;
    let acknowledged_before = load.acknowledged();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recovered = load.acknowledged() - acknowledged_before;
    let report = load.stop().await;
    setup.wait_drained().await;
    let books = setup.books(&format!("faults/{name}"), &report).await;
    let metric = |series: &'static str| setup.ingress.metric(series);
    eprintln!(
        "  spooled when the disk broke: {spooled}; still spooled when Kafka was back: {backlog_at_thaw}; refused on disk errors: {}; published around the sick spool: {}; acknowledged in the 3 s after Kafka was back: {recovered}",
        metric(r#"aftercart_ingress_spool_rejected_total{reason="disk_error"}"#).await,
        metric(r#"aftercart_ingress_spool_bypassed_total{reason="disk_error"}"#).await,
    );
    assert!(spooled > 0.0, "the disk broke under a backlog");
    assert!(
        recovered > 100,
        "Kafka takes over from the sick spool: {recovered}"
    );
    books.assert_exact();
}

/// 5. A power cut under load, mid-drain: the in-process ingress (the same code as the binary)
/// on a disk that drops every write, rename and directory entry not fsynced when the power
/// goes, the spool directory and its parent created by the ingress itself, segments rolling
/// (1 MiB) and the checkpoint moving. After the cut a new ingress opens what the disk kept:
/// every acknowledged webhook in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn a_power_cut_under_load_loses_nothing_acknowledged() {
    let Some(broker) = Broker::tansu().await else {
        return;
    };
    let disk = CrashDisk::new();
    let mut config = test_config(&broker);
    config.spool_after = Duration::from_millis(500);
    config.publish_deadline = Duration::from_secs(3);
    // The old ingress stops while Kafka is frozen: it must not wait long for it.
    config.shutdown_timeout = Duration::from_secs(2);
    let spool = config.spool.as_mut().expect("spool on");
    spool.dir = "/var/lib/aftercart/spool".into();
    spool.max_bytes = 8 << 20;
    spool.disk = SpoolDisk(Arc::new(disk.clone()));
    let ingress = TestIngress::start(config.clone()).await;
    let secret = aftercart_tests::ingress::SECRET;
    let load = LoadClient::start(padded(LoadSpec::orders(ingress.addr, secret), 10_000));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tansu(&broker).sigstop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spooled = ingress
        .metric("aftercart_ingress_spool_pending_events")
        .await;
    tansu(&broker).sigcont();
    eventually(
        "the drain under way (checkpoint moved)",
        Duration::from_secs(30),
        || async {
            (ingress
                .metric("aftercart_ingress_spool_drained_total")
                .await
                > 0.0)
                .then_some(())
        },
    )
    .await;
    let pending_at_cut = ingress
        .metric("aftercart_ingress_spool_pending_events")
        .await;
    // The cut: the disk keeps only what was fsynced, and the old ingress must do nothing
    // more, neither on the disk (dead from now on) nor to Kafka (frozen while it stops, so
    // records it still had queued cannot hide a loss from the spool).
    disk.crash();
    disk.set_broken(true);
    tansu(&broker).sigstop();
    let report = load.stop().await;
    let _ = ingress.shutdown().await;
    disk.set_broken(false);
    tansu(&broker).sigcont();
    let restarted = TestIngress::start(config.clone()).await;
    eventually(
        "the spool drained into Kafka",
        Duration::from_secs(90),
        || async {
            (restarted
                .metric("aftercart_ingress_spool_pending_events")
                .await
                == 0.0)
                .then_some(())
        },
    )
    .await;
    let found = webhook_ids_in(
        &broker.bootstrap(),
        &[format!("{}orders", config.kafka.topic_prefix)],
    )
    .await;
    let mut books = report.accounting("faults/power-cut");
    books.reconcile(
        report.acknowledged.iter().map(String::as_str),
        found.iter().map(String::as_str),
    );
    eprintln!("{books}");
    eprintln!(
        "  spooled while frozen: {spooled}; pending at the power cut: {pending_at_cut}; recovered after it: {}",
        restarted
            .metric("aftercart_ingress_spool_drained_total")
            .await
    );
    assert!(spooled > 0.0, "the cut hit a spool that had held events");
    // A record in flight when the power went may land twice (consumers dedupe by id); none
    // acknowledged may be missing.
    assert_eq!(books.lost, 0, "{books}; for example {:?}", books.examples);
    assert!(books.acknowledged > 200, "{books}");
}

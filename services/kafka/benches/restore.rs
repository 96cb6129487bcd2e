//! Restore benchmark (`make bench`): a partition's changelog of a million records (ten thousand
//! entities, each written a hundred times, as an uncompacted changelog grows) applied as the
//! stage's restore applies it, and the stage's own restore reading a partition through
//! librdkafka's in-process mock cluster (which keeps at most 100,000 records or 5 MB of a
//! partition, so that read is shorter). Reports times and the peak memory each added: bounded
//! by the live state, not by the records read. Numbers, not assertions.

use std::time::{Duration, Instant};

use aftercart_kafka::stage::{
    restore_partition, ChangelogState, RestoreSource, Restored, CHECKPOINT_KEY,
};
use aftercart_kafka::{KafkaSettings, StoredRecord};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};

/// The allocator the consumer services restore with (`aftercart-allocator`).
#[global_allocator]
static GLOBAL: aftercart_allocator::ConsumerAllocator = aftercart_allocator::ConsumerAllocator {};

/// Changelog records in the partition.
const RECORDS: u64 = 1_000_000;
/// Distinct entities among them (the live state).
const ENTITIES: u64 = 10_000;

/// About the size of an abandonment journey's changelog record.
#[derive(Serialize, Deserialize)]
struct Entity {
    shop: String,
    customer: String,
    email: String,
    total: String,
    items: Vec<String>,
    updated_ms: i64,
}

fn entity(n: u64, version: u64) -> Vec<u8> {
    serde_json::to_vec(&Entity {
        shop: "jsmith.myshopify.com".into(),
        customer: format!("customer-{n}"),
        email: format!("buyer{n}@example.com"),
        total: "129.90".into(),
        items: vec!["sku-1 x1".into(), "sku-2 x2".into()],
        updated_ms: 1_700_000_000_000 + version as i64,
    })
    .expect("encodes")
}

/// A `/proc/self/status` figure in bytes (Linux; 0 elsewhere).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Writes the changelog: every entity updated in turn, a checkpoint last.
fn fill(bootstrap: &str, topic: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let send = |key: &str, payload: &[u8]| loop {
        let record = BaseRecord::<str, [u8]>::to(topic)
            .partition(0)
            .key(key)
            .payload(payload);
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => panic!("produce failed: {error}"),
        }
    };
    for i in 0..RECORDS {
        let n = i % ENTITIES;
        send(&format!("entity-{n}"), &entity(n, i / ENTITIES));
    }
    send(CHECKPOINT_KEY, br#"{"outputs":{}}"#);
    producer.flush(Duration::from_secs(300)).expect("flushed");
}

/// Peak memory added while `work` runs, above the process before it (`None` where the peak
/// cannot be reset), and what it returned.
fn peak_added<T>(work: impl FnOnce() -> T) -> (Option<u64>, T) {
    let before = status_bytes("VmRSS:");
    // Resets the peak (VmHWM) to the current size, so the peak after is the work's.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let out = work();
    let peak = status_bytes("VmHWM:");
    (reset.then(|| peak.saturating_sub(before)), out)
}

fn shown(bytes: Option<u64>) -> String {
    bytes.map_or("unknown (the peak cannot be reset here)".into(), |b| {
        format!("{:.1} MiB", mib(b))
    })
}

/// The million records applied one by one, decoded as a restore decodes them.
fn apply_million(rows: &mut Vec<(String, String)>) {
    let keys: Vec<String> = (0..ENTITIES).map(|n| format!("entity-{n}")).collect();
    let started = Instant::now();
    let (peak, state) = peak_added(|| {
        let mut state = ChangelogState::<Entity>::default();
        for i in 0..RECORDS {
            let n = i % ENTITIES;
            let value = entity(n, i / ENTITIES);
            state.apply(&StoredRecord {
                key: Some(keys[n as usize].as_bytes()),
                value: Some(&value),
                offset: i as i64,
            });
        }
        state
    });
    let took = started.elapsed();
    assert_eq!(state.entities.len() as u64, ENTITIES);
    rows.push((
        format!("a restore's apply of {RECORDS} changelog records, {ENTITIES} live entities (no broker; each record encoded on the fly, then decoded and applied)"),
        format!(
            "{:.2} s, {:.0} records/s; peak memory added {}",
            took.as_secs_f64(),
            RECORDS as f64 / took.as_secs_f64(),
            shown(peak)
        ),
    ));
}

/// The stage's restore of one partition through the mock cluster.
fn restore_through_the_broker(rows: &mut Vec<(String, String)>) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let (state, output) = ("bench-state", "bench-output");
    cluster.create_topic(state, 1, 1).expect("topic");
    cluster.create_topic(output, 1, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();
    fill(&bootstrap, state);
    let source = RestoreSource {
        kafka: KafkaSettings::new(&bootstrap, "bench."),
        client: "aftercart-bench-restore".into(),
        state: state.into(),
        outputs: vec![output.into()],
    };
    let started = Instant::now();
    let (peak, restored) = peak_added(|| {
        let restored: Restored<Entity, serde_json::Value> =
            restore_partition(&source, 0).expect("restored");
        restored
    });
    let took = started.elapsed();
    assert_eq!(restored.entities.len() as u64, ENTITIES);
    rows.push((
        format!(
            "restore of one partition through the broker: the {} records the mock keeps of {RECORDS} written, {ENTITIES} live entities",
            restored.records
        ),
        format!(
            "{:.2} s, {:.0} records/s; peak memory added {} (the broker's copy of the log excluded)",
            took.as_secs_f64(),
            restored.records as f64 / took.as_secs_f64(),
            shown(peak)
        ),
    ));
}

fn main() {
    let mut rows = Vec::new();
    apply_million(&mut rows);
    restore_through_the_broker(&mut rows);
    rows.push((
        "live state, as JSON".into(),
        format!("{:.1} MiB", mib(ENTITIES * entity(0, 0).len() as u64)),
    ));
    println!("\n| restore benchmark | result |\n|---|---|");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
}

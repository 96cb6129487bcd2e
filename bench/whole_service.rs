//! The whole-service benchmark shared by the consumer benches (abandonment, referrals,
//! audiences; each includes this file with `#[path]`, so the three measure the same way): an
//! embedded broker (librdkafka's mock cluster), input topics pre-filled as the ingress writes
//! them (lz4), then the service's own `serve` (Kafka in, state, changelog, outputs, offsets),
//! with start-up (topics, group join, restore) reported apart from the steady state and the
//! CPU of every thread of the process per 1,000 records. Numbers, not assertions.

use std::future::Future;
use std::time::{Duration, Instant};

use aftercart_kafka::KafkaArgs;
use prometheus::proto::MetricFamily;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub const PARTITIONS: i32 = 12;

/// CPU time used so far by every thread of this process (service, librdkafka, embedded
/// broker), in seconds: unlike wall time, barely moved by other work on a shared machine.
pub fn cpu_seconds() -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// The embedded broker's thread: librdkafka's mock cluster serves every mock broker from one
/// thread, named `rdk:mock`. In production the broker runs on other machines, so the service's
/// own CPU is the process's less this thread's (threads that ended are counted in the process's
/// total, never here: the mock thread lives as long as its cluster).
pub struct BrokerThread {
    stat: std::path::PathBuf,
}

impl BrokerThread {
    /// Looks the thread up once per run (a scan of every thread at every 5 ms sample would
    /// itself be CPU charged to the service); a run's one cluster exists before it starts. A
    /// process that runs several clusters one after the other (the abandonment bench) finds
    /// each run's own: an earlier cluster's thread has ended.
    pub fn find() -> BrokerThread {
        let stat = std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(Result::ok)
            // Dropping a cluster joins its thread, so an earlier run's is gone by now.
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.trim_end() == "rdk:mock")
            })
            .map(|task| task.path().join("stat"))
            // Not a silent 0: the split would charge the broker to the service unseen.
            .expect("the embedded broker's thread (rdk:mock) runs before the measuring starts");
        BrokerThread { stat }
    }

    /// CPU time the thread used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        stat_cpu_seconds(&std::fs::read_to_string(&self.stat).expect("the broker thread's stat"))
    }
}

/// utime + stime of a `/proc/.../stat` line, in seconds (fields 14 and 15, counted after the
/// command name, which may hold spaces).
fn stat_cpu_seconds(stat: &str) -> f64 {
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// How many records a whole-service run feeds (`AFTERCART_BENCH_RECORDS`, else `default`).
pub fn record_count(default: usize) -> usize {
    std::env::var("AFTERCART_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The Kafka settings of a service under test on `cluster` (topic prefix `bench.`), with the
/// librdkafka properties of `BENCH_KAFKA_PROPERTIES` when set (for experiments only: the
/// report's figures are taken without it).
pub fn kafka_args<C: rdkafka::ClientContext>(cluster: &MockCluster<'_, C>) -> KafkaArgs {
    KafkaArgs {
        brokers: Some(cluster.bootstrap_servers()),
        topic_prefix: "bench.".into(),
        topic_partitions: PARTITIONS.to_string(),
        topic_replication: "1".into(),
        topic_min_insync_replicas: None,
        topic_retention: "7d".into(),
        topic_compaction_lag: "1d".into(),
        kafka_properties_file: None,
        kafka_properties: std::env::var("BENCH_KAFKA_PROPERTIES").unwrap_or_default(),
        instance_id: Some("bench".into()),
    }
}

/// Creates a service's topics (its `topic_specs`) on the cluster.
pub fn create_topics<C: rdkafka::ClientContext>(
    cluster: &MockCluster<'_, C>,
    specs: &[aftercart_kafka::topics::TopicSpec],
) {
    for spec in specs {
        cluster
            .create_topic(&spec.name, spec.partitions, spec.replication)
            .expect("topic");
    }
}

/// Whether `records` input records were processed (`<prefix>records_processed_total`), in
/// one sample of the registry.
pub fn processed_all(families: &[MetricFamily], prefix: &str, records: usize) -> bool {
    counter(families, &format!("{prefix}records_processed_total")) >= records as f64
}

/// One input record: topic, key, body and headers, as the ingress (or an upstream service)
/// writes it.
pub struct Input {
    pub topic: String,
    pub key: String,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Writes `inputs` to the cluster in lz4 batches and checks the mock cluster kept them all (it
/// keeps only ~5 MB per partition and drops the oldest beyond: a run that lost records would
/// measure nothing).
pub fn prefill<C: rdkafka::ClientContext>(
    cluster: &MockCluster<'_, C>,
    inputs: impl IntoIterator<Item = Input>,
) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    let mut topics = std::collections::BTreeSet::new();
    for input in inputs {
        let headers = input
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value.as_str()),
                })
            });
        loop {
            match producer.send(
                BaseRecord::to(&input.topic)
                    .key(&input.key)
                    .payload(&input.body)
                    .headers(headers.clone()),
            ) {
                Ok(()) => break,
                Err(_) => producer.poll(Duration::from_millis(10)),
            }
        }
        topics.insert(input.topic);
    }
    producer.flush(Duration::from_secs(60)).expect("pre-filled");
    for topic in &topics {
        for partition in 0..PARTITIONS {
            let (low, _) = producer
                .client()
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            assert_eq!(
                low, 0,
                "the mock cluster dropped records of {topic}/{partition}"
            );
        }
    }
}

/// Sum of every series of the counter `name` in one sample of a registry (`gather()`).
pub fn counter(families: &[MetricFamily], name: &str) -> f64 {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// What one run measured.
pub struct Measured {
    pub records: usize,
    pub startup: Duration,
    pub steady: Duration,
    pub steady_records: f64,
    pub took: Duration,
    /// CPU seconds of the steady state, every thread.
    pub cpu: f64,
    /// The part of `cpu` the embedded broker's thread used.
    pub broker_cpu: f64,
    /// Seconds all partition restores took, summed.
    pub restoring: f64,
}

/// Runs `serve` (a service's `serve` on `registry`, stopped by the token), polling every 5 ms.
/// `prefix` is the service's metric prefix (`aftercart_referrals_`). Start-up ends at the first
/// sample with a record processed (`<prefix>records_processed_total`); the steady state runs from
/// there until the last change of any `settle` counter (changelog writes, outputs) once `done`
/// holds and those counters stayed still for `quiet` (the idle wait is not counted, neither in
/// time nor in CPU).
pub fn measure<F, Fut>(
    records: usize,
    prefix: &str,
    serve: F,
    done: impl Fn(&[MetricFamily]) -> bool,
    settle: &[&str],
    quiet: Duration,
) -> Measured
where
    F: FnOnce(prometheus::Registry, tokio_util::sync::CancellationToken) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let registry = prometheus::Registry::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let broker = BrokerThread::find();
        let started = Instant::now();
        let task = tokio::spawn(serve(registry.clone(), stop.clone()));
        let processed_name = format!("{prefix}records_processed_total");
        let mut first: Option<(Instant, f64, (f64, f64))> = None;
        // (the settle counters' sum, when it last changed, the CPU then: all, broker)
        let mut last = (-1.0, Instant::now(), (0.0, 0.0));
        loop {
            // One sample of the registry per poll: the sampling is counted in the CPU too.
            let families = registry.gather();
            let processed = counter(&families, &processed_name);
            let now = (Instant::now(), (cpu_seconds(), broker.cpu_seconds()));
            if first.is_none() && processed > 0.0 {
                first = Some((now.0, processed, now.1));
            }
            let settled: f64 = settle
                .iter()
                .map(|name| counter(&families, name))
                .sum::<f64>()
                + processed;
            if settled != last.0 {
                last = (settled, now.0, now.1);
            } else if first.is_some() && done(&families) && last.1.elapsed() >= quiet {
                break;
            }
            assert!(
                !task.is_finished(),
                "the service stopped before the run ended"
            );
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "service too slow: {processed} of {records} processed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_, ended, ended_cpu) = last;
        let restoring: f64 = registry
            .gather()
            .iter()
            .filter(|f| f.name() == format!("{prefix}state_restore_duration_seconds"))
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_histogram().get_sample_sum())
                    .collect::<Vec<_>>()
            })
            .sum();
        let (first_at, first_processed, first_cpu) = first.expect("records were processed");
        stop.cancel();
        let _ = task.await;
        Measured {
            records,
            startup: first_at - started,
            steady: ended - first_at,
            steady_records: records as f64 - first_processed,
            took: ended - started,
            cpu: ended_cpu.0 - first_cpu.0,
            broker_cpu: ended_cpu.1 - first_cpu.1,
            restoring,
        }
    })
}

impl Measured {
    /// CPU seconds of the steady state the service itself used (the broker's excluded).
    pub fn service_cpu(&self) -> f64 {
        (self.cpu - self.broker_cpu).max(0.0)
    }

    /// The report's rows; `what` names the input and outputs (`pre-filled orders topic → …`).
    pub fn rows(&self, what: &str) -> Vec<(String, String)> {
        vec![
            (
                format!("whole service: {what} (embedded broker, incl. start-up)"),
                format!(
                    "{:.0} records/s ({} records in {:.2} s)",
                    self.records as f64 / self.took.as_secs_f64(),
                    self.records,
                    self.took.as_secs_f64()
                ),
            ),
            (
                "whole service: start-up (topics, global tables, group join, restore) until the first record".into(),
                format!(
                    "{:.2} s; partition restores took {:.2} s summed (they overlap) and the mock broker delays a new group's first join by 3 s",
                    self.startup.as_secs_f64(),
                    self.restoring
                ),
            ),
            (
                "whole service: steady state, one consumer (excl. start-up)".into(),
                format!(
                    "{:.0} records/s ({:.0} records in {:.2} s)",
                    self.steady_records / self.steady.as_secs_f64(),
                    self.steady_records,
                    self.steady.as_secs_f64()
                ),
            ),
            (
                "whole service: steady-state CPU per 1,000 records, all threads incl. the embedded broker".into(),
                format!(
                    "{:.1} ms ({:.2} s of CPU)",
                    self.cpu * 1e6 / self.steady_records,
                    self.cpu
                ),
            ),
            (
                "whole service: steady-state CPU per 1,000 records, the service's threads (the embedded broker's excluded)".into(),
                format!(
                    "{:.1} ms ({:.2} s of CPU; the broker's thread {:.2} s)",
                    self.service_cpu() * 1e6 / self.steady_records,
                    self.service_cpu(),
                    self.broker_cpu
                ),
            ),
            (
                "whole service: steady state per core of the service's own CPU (records ÷ the service's CPU seconds)".into(),
                format!(
                    "{:.0} records/s",
                    self.steady_records / self.service_cpu().max(1e-9)
                ),
            ),
        ]
    }
}

/// The allocator the consumer services run with in the `aftercart` binary (`aftercart-allocator`
/// chooses it by subcommand there), so that the figures are those of the code that ships.
#[global_allocator]
static GLOBAL: aftercart_allocator::ConsumerAllocator = aftercart_allocator::ConsumerAllocator {};

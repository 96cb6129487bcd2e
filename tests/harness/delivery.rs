//! Running a delivery forwarder in-process against a test broker and a local receiver, and the
//! Kafka helpers its tests need: producing input records, reading committed offsets.

use std::time::Duration;

use aftercart_delivery::{
    DeliveryConfig, DeliveryFlags, DeliveryMetrics, Forwarder, ForwarderError, Secret, SinkFlags,
};
use aftercart_kafka::{KafkaSettings, TopicSpec};
use aftercart_runtime::config::ConfigErrors;
use aftercart_runtime::Health;
use prometheus::{Encoder, Registry, TextEncoder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually, Broker};

pub const SECRET: &str = "delivery-test-secret";
pub const METRICS_PREFIX: &str = "aftercart_test";

/// Kafka settings on `broker` with fresh topic names and short group sessions (quick takeovers
/// after a crash), and a forwarder config for `<prefix>referrals` to `url`.
pub fn test_config(broker: &Broker, url: &str, partitions: i32) -> (KafkaSettings, DeliveryConfig) {
    let mut kafka = KafkaSettings::new(broker.bootstrap(), crate::unique_prefix());
    kafka.partitions = partitions;
    kafka.properties = broker.client_properties().into();
    kafka.properties.extend([
        ("session.timeout.ms".to_string(), "6000".to_string()),
        ("heartbeat.interval.ms".to_string(), "500".to_string()),
    ]);
    let prefix = kafka.topic_prefix.clone();
    let flags = DeliveryFlags {
        sink: SinkFlags {
            url: Some(url.to_string()),
            secret: Some(Secret::new(SECRET)),
            timeout: "2s".into(),
            backoff_initial: "50ms".into(),
            backoff_max: "200ms".into(),
            max_retry_duration: "60s".into(),
            ..SinkFlags::default()
        },
        topics: format!("{prefix}referrals,{prefix}rewards"),
        group: format!("{prefix}delivery"),
        dead_letter_topic: format!("{prefix}delivery-dead-letter"),
    };
    let mut errors = ConfigErrors::new();
    // The test's receiver is a local plain-http server.
    aftercart_runtime::outbound::allow_insecure_http();
    let config = flags
        .validate("AFTERCART_TEST_WEBHOOK", &mut errors)
        .unwrap_or_else(|| panic!("valid test config: {errors}"));
    (kafka, config)
}

/// Creates the forwarded and dead-letter topics: through the mock cluster's own API there,
/// through the admin API on a real broker.
pub async fn create_topics(broker: &Broker, kafka: &KafkaSettings, config: &DeliveryConfig) {
    let mut specs: Vec<TopicSpec> = config
        .topics
        .iter()
        .map(|t| TopicSpec::new(t, kafka))
        .collect();
    specs.extend(aftercart_delivery::topic_specs(kafka, config));
    if broker.is_mock() {
        broker.precreate_for_mock(&specs);
    } else {
        aftercart_kafka::ensure_topics(kafka, &specs, &[])
            .await
            .expect("topics created");
    }
}

/// A record to produce: key, value, headers.
pub struct Input<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a str)],
}

/// Produces `records` in order and returns where each landed (partition, offset).
pub async fn produce(broker: &Broker, topic: &str, records: &[Input<'_>]) -> Vec<(i32, i64)> {
    produce_with(
        &broker.bootstrap(),
        &broker.client_properties(),
        topic,
        records,
    )
    .await
}

/// [`produce`] with each record's timestamp (ms since the epoch), e.g. an ingress time in the
/// past.
pub async fn produce_at(broker: &Broker, topic: &str, records: &[(Input<'_>, i64)]) {
    let timed: Vec<(&Input<'_>, Option<i64>)> =
        records.iter().map(|(r, at)| (r, Some(*at))).collect();
    send(
        &broker.bootstrap(),
        &broker.client_properties(),
        topic,
        &timed,
    )
    .await;
}

/// [`produce`] through `bootstrap` with these client properties (e.g. a TLS broker's).
pub async fn produce_with(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
    records: &[Input<'_>],
) -> Vec<(i32, i64)> {
    let untimed: Vec<(&Input<'_>, Option<i64>)> = records.iter().map(|r| (r, None)).collect();
    send(bootstrap, properties, topic, &untimed).await
}

async fn send(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
    records: &[(&Input<'_>, Option<i64>)],
) -> Vec<(i32, i64)> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3");
    for (key, value) in properties {
        config.set(key, value);
    }
    let producer: FutureProducer = config.create().expect("test producer");
    let mut landed = Vec::new();
    for (record, at) in records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let mut future = FutureRecord::to(topic)
            .key(record.key)
            .payload(record.value)
            .headers(headers);
        if let Some(at) = at {
            future = future.timestamp(*at);
        }
        let sent = producer
            .send(future, Duration::from_secs(10))
            .await
            .expect("produced");
        landed.push((sent.partition, sent.offset));
    }
    landed
}

/// The group's committed offset of `topic`/`partition` (the next offset to read), if any.
pub async fn committed(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let (bootstrap, group, topic) = (kafka.brokers.clone(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("log_level", "3")
            .create()
            .expect("offset reader");
        let mut list = TopicPartitionList::new();
        list.add_partition(&topic, partition);
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        match committed.find_partition(&topic, partition)?.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    })
    .await
    .expect("offset reader does not panic")
}

/// A forwarder running in a task, as an embedding service runs it.
pub struct TestForwarder {
    pub registry: Registry,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), ForwarderError>>>,
}

impl TestForwarder {
    /// Starts the forwarder and waits until it has partitions.
    pub async fn start(kafka: &KafkaSettings, config: &DeliveryConfig) -> TestForwarder {
        crate::init_logs();
        let registry = Registry::new();
        let health = Health::new();
        let metrics = DeliveryMetrics::register(&registry, METRICS_PREFIX).expect("metrics");
        let forwarder = Forwarder::new(kafka, config, metrics, health.component("delivery"))
            .expect("forwarder builds");
        let stop = CancellationToken::new();
        let task = tokio::spawn(forwarder.run(stop.clone()));
        eventually("partitions assigned", Duration::from_secs(60), || {
            let health = health.clone();
            async move { health.readiness().ok() }
        })
        .await;
        TestForwarder {
            registry,
            stop,
            task: Some(task),
        }
    }

    pub fn metric(&self, series: &str) -> f64 {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encode");
        crate::metric_value(&String::from_utf8(buffer).expect("utf-8"), series)
    }

    /// Graceful stop (as SIGTERM), returning the loop's result.
    pub async fn stop(mut self) -> Result<(), ForwarderError> {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        crate::join_within(task, "the forwarder").await
    }

    /// A crash: the loop's task is dropped mid-work, with no final commit from the loop.
    pub async fn crash(mut self) {
        let task = self.task.take().expect("running");
        task.abort();
        let _ = task.await;
    }
}

impl Drop for TestForwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

//! Reading a topic exactly: every record up to each partition's high watermark, with an
//! independent consumer (manual assignment, no group), so tests see precisely what is in Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One record as read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Header name to value; a repeated name would be a contract violation, so it panics.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// The record's Kafka timestamp (ms since the epoch), if it has one.
    pub timestamp: Option<i64>,
}

impl Record {
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(self.key.as_deref().unwrap_or_default()).expect("keys are UTF-8")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| std::str::from_utf8(v).expect("UTF-8 header"))
    }

    /// Headers as a JSON object of strings (the shape `record-headers.schema.json` describes).
    pub fn headers_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect(),
        )
    }
}

/// Every record of `topic` (all partitions, up to their high watermarks). A topic that does not
/// exist reads as empty.
pub async fn read_topic(bootstrap: &str, topic: &str) -> Vec<Record> {
    read_topic_with(bootstrap, &[], topic).await
}

/// [`read_topic`] with extra client properties (e.g. TLS settings).
pub async fn read_topic_with(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
) -> Vec<Record> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    let properties = properties.to_vec();
    tokio::task::spawn_blocking(move || read_topic_blocking(&bootstrap, &properties, &topic))
        .await
        .expect("reader does not panic")
}

fn read_topic_blocking(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
) -> Vec<Record> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("log_level", "3");
    for (key, value) in properties {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().expect("reader client");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let Some(found) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        return Vec::new();
    };
    let mut targets = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .expect("watermarks");
        if high > low {
            targets.insert(partition.id(), high);
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(low))
                .expect("assignment");
        }
    }
    if targets.is_empty() {
        return Vec::new();
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_error = None;
    while !targets.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} timed out; still waiting on {targets:?} (last error: {last_error:?})"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        // librdkafka hands transient states to poll as errors (all brokers down for a moment,
        // a transport error on a loaded machine): the deadline decides, not the first one.
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                last_error = Some(error.to_string());
                continue;
            }
        };
        let mut headers = BTreeMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let previous = headers.insert(
                    header.key.to_string(),
                    header.value.unwrap_or_default().to_vec(),
                );
                assert!(
                    previous.is_none(),
                    "header {} repeated in one record",
                    header.key
                );
            }
        }
        let partition = message.partition();
        if targets
            .get(&partition)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            targets.remove(&partition);
        }
        records.push(Record {
            topic: message.topic().to_string(),
            partition,
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp: message.timestamp().to_millis(),
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// How many records `topic` holds (the sum over partitions of high minus low watermark), cheap
/// enough to poll while a service writes; 0 when the topic does not exist yet.
pub async fn count_records(bootstrap: &str, topic: &str) -> u64 {
    watermarks(bootstrap, topic)
        .await
        .values()
        .map(|(low, high)| (high - low).max(0) as u64)
        .sum()
}

/// Each partition's (low, high) watermark as the broker answers ListOffsets; empty when the
/// topic does not exist yet.
pub async fn watermarks(bootstrap: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("log_level", "3")
            .create()
            .expect("counting client");
        let timeout = Duration::from_secs(10);
        let Ok(metadata) = consumer.fetch_metadata(Some(&topic), timeout) else {
            return BTreeMap::new();
        };
        let Some(found) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return BTreeMap::new();
        };
        found
            .partitions()
            .iter()
            .map(|partition| {
                let marks = consumer
                    .fetch_watermarks(&topic, partition.id(), timeout)
                    .expect("watermarks");
                (partition.id(), marks)
            })
            .collect()
    })
    .await
    .expect("counter does not panic")
}

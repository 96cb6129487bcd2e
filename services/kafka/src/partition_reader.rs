//! Reading one partition of a topic to its high watermark: how consumer services restore state
//! from a changelog and find the events they already emitted in an output topic.

use std::time::{Duration, Instant};

use crate::{ClientKind, KafkaSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// One record read back: key, value (`None` for a tombstone), offset.
pub struct StoredRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {topic}[{partition}] failed: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error(
        "reading {topic}[{partition}] made no progress towards offset {target} for {stalled:?}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        target: i64,
        stalled: Duration,
    },
}

/// How long a read may go without a single record before it gives up: a read that is making
/// progress never does, however long the partition.
const STALLED_AFTER: Duration = Duration::from_secs(60);

/// What a read of one partition covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTo {
    /// Records handed to the visitor.
    pub records: u64,
    /// The high watermark read up to: everything before it was seen.
    pub end: i64,
}

/// Hands every record of `topic[partition]` from `from` (inclusive; `None` = the beginning) up
/// to the high watermark at the time of the call to `visit`, one at a time, so a caller keeps
/// only what it needs (memory bounded by live state, not by history). Returns the records read
/// and that watermark. Blocking: run it on the blocking pool.
pub fn for_each_record(
    settings: &KafkaSettings,
    client_id: &str,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    mut visit: impl FnMut(StoredRecord<'_>),
) -> Result<ReadTo, StoreError> {
    let kafka = |source| StoreError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    };
    let mut config = settings.client_config(client_id);
    config
        .set("enable.auto.commit", "false")
        .set("group.id", client_id)
        // The end of the partition is reported, so a read never waits on a watermark it
        // cannot reach (e.g. one that counts transaction markers).
        .set("enable.partition.eof", "true");
    settings.apply_overrides(&mut config, ClientKind::Consumer);
    // A group id is required by librdkafka but unused: the partition is assigned, not subscribed.
    let consumer: BaseConsumer = config.create().map_err(kafka)?;
    let timeout = settings.request_timeout();
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(kafka)?;
    let start = from.map_or(low, |offset| offset.max(low));
    if start >= high {
        return Ok(ReadTo {
            records: 0,
            end: high,
        });
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka)?;
    consumer.assign(&assignment).map_err(kafka)?;
    let mut read = 0;
    let mut last_progress = Instant::now();
    let mut next = start;
    while next < high {
        if last_progress.elapsed() > STALLED_AFTER {
            return Err(StoreError::Stalled {
                topic: topic.to_string(),
                partition,
                target: high,
                stalled: STALLED_AFTER,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(kafka(error)),
            Some(Ok(message)) => {
                next = message.offset() + 1;
                last_progress = Instant::now();
                read += 1;
                visit(StoredRecord {
                    key: message.key(),
                    value: message.payload(),
                    offset: message.offset(),
                });
            }
        }
    }
    Ok(ReadTo {
        records: read,
        end: high,
    })
}

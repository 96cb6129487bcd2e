//! Global tables: topics every instance reads whole (customers, compliance), because their
//! records are not keyed like the stage's state. Until every partition has been read to the end
//! it had at start-up the stage holds back: no input is applied half-informed (an event for a
//! customer whose redaction is still unread). Reads never give up; errors are retried.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::{ClientKind, KafkaSettings};

pub struct GlobalTables {
    consumer: BaseConsumer,
    topics: Vec<String>,
    /// Partitions not yet read up to the end they had at start-up, and that end.
    behind: HashMap<(String, i32), i64>,
    assigned: bool,
}

impl GlobalTables {
    pub fn new(
        kafka: &KafkaSettings,
        client: &str,
        group: &str,
        topics: Vec<String>,
    ) -> Result<Self, KafkaError> {
        let mut config = kafka.client_config(&format!("{client}-global"));
        config
            .set("group.id", format!("{group}-global"))
            .set("enable.auto.commit", "false");
        kafka.apply_overrides(&mut config, ClientKind::Consumer);
        Ok(GlobalTables {
            consumer: config.create()?,
            topics,
            behind: HashMap::new(),
            assigned: false,
        })
    }

    /// Whether every partition is assigned (an error may have left it unassigned).
    pub fn assigned(&self) -> bool {
        self.assigned
    }

    /// Whether every partition was read to its start-up end.
    pub fn caught_up(&self) -> bool {
        self.assigned && self.behind.is_empty()
    }

    /// Assigns every partition from the beginning and notes its current end. Blocking for up to
    /// the request timeout per call; an error leaves it unassigned, to be tried again.
    pub fn assign(&mut self, kafka: &KafkaSettings) -> Result<(), KafkaError> {
        let timeout = kafka.request_timeout();
        let mut assignment = TopicPartitionList::new();
        let mut behind = HashMap::new();
        for topic in &self.topics {
            let metadata = self.consumer.fetch_metadata(Some(topic), timeout)?;
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                if t.partitions().is_empty() {
                    // Not there yet (or the broker answered without it): try again.
                    return Err(KafkaError::MetadataFetch(
                        rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                    ));
                }
                for p in t.partitions() {
                    assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                    let (_, high) = self.consumer.fetch_watermarks(topic, p.id(), timeout)?;
                    if high > 0 {
                        behind.insert((topic.clone(), p.id()), high);
                    }
                }
            }
        }
        self.consumer.assign(&assignment)?;
        self.behind = behind;
        self.assigned = true;
        Ok(())
    }

    /// The next record already fetched, without waiting. Errors (a broker away) are logged
    /// and read past: librdkafka retries by itself.
    pub fn next(&mut self) -> Option<OwnedMessage> {
        match self.consumer.poll(Duration::ZERO)? {
            Ok(message) => {
                let message = message.detach();
                let key = (message.topic().to_string(), message.partition());
                if self
                    .behind
                    .get(&key)
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    self.behind.remove(&key);
                }
                Some(message)
            }
            Err(error) => {
                tracing::warn!(%error, "Global table read failed; retrying.");
                None
            }
        }
    }

    pub fn into_consumer(self) -> BaseConsumer {
        self.consumer
    }
}

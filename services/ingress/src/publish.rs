//! Publishing one delivery to Kafka and waiting for its delivery report within the deadline.

use std::time::Instant;

use aftercart_kafka::StatsContext;
use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::metrics::IngressMetrics;
use crate::spool::SpoolRecord;

/// One Kafka record: the exact body bytes, under the journey key, with the delivery's headers.
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub body: &'a Bytes,
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// When the ingress received the delivery: the record's Kafka timestamp.
    pub received_unix_ms: u64,
}

impl<'a> Record<'a> {
    /// The record as the spool keeps it.
    pub fn to_spool(&self) -> SpoolRecord {
        SpoolRecord {
            topic: self.topic.to_string(),
            key: self.key.to_string(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_vec()))
                .collect(),
            body: self.body.clone(),
            received_unix_ms: self.received_unix_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The producer queue is full: Kafka is slower than the traffic. Answer 503 at once.
    #[error("the producer queue is full")]
    QueueFull,
    /// No delivery report before the deadline. The record may still be delivered later; the
    /// future lets the caller learn the outcome.
    #[error("no delivery report before the deadline")]
    Timeout(PendingDelivery),
    #[error("Kafka refused the record: {0}")]
    Kafka(KafkaError),
}

/// A delivery report still to come, for a record that missed the deadline.
pub struct PendingDelivery(pub DeliveryFuture);

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingDelivery")
    }
}

impl PublishError {
    pub fn as_label(&self) -> &'static str {
        match self {
            PublishError::QueueFull => "queue_full",
            PublishError::Timeout(_) => "timeout",
            PublishError::Kafka(_) => "kafka",
        }
    }
}

/// Kafka errors no retry fixes (the record is too large or invalid, or the topic is off-limits):
/// spooling such a record would only hold up the records behind it.
pub fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidArgument
        )
    )
}

/// The ingress producer and what it needs to report on itself.
pub struct Publisher {
    producer: FutureProducer<StatsContext>,
    metrics: IngressMetrics,
}

impl Publisher {
    pub fn new(producer: FutureProducer<StatsContext>, metrics: IngressMetrics) -> Self {
        Self { producer, metrics }
    }

    /// Hands the record to the producer and waits for Kafka's acknowledgement until `deadline`.
    /// `Ok` means every in-sync replica has the record (`acks=all`).
    pub async fn publish(
        &self,
        record: &Record<'_>,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let headers = record.headers.iter().fold(
            OwnedHeaders::new_with_capacity(record.headers.len()),
            |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(*value),
                })
            },
        );
        let kafka_record = FutureRecord::to(record.topic)
            .key(record.key)
            .payload(record.body.as_ref())
            .headers(headers)
            .timestamp(record.received_unix_ms as i64);
        let delivery = match self.producer.send_result(kafka_record) {
            Ok(delivery) => delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(self.failed(PublishError::QueueFull));
            }
            Err((error, _)) => return Err(self.failed(PublishError::Kafka(error))),
        };
        let mut delivery = Box::pin(delivery);
        let result = tokio::time::timeout_at(deadline.into(), &mut delivery).await;
        match result {
            Ok(Ok(Ok(_))) => {
                self.metrics.published(started.elapsed());
                Ok(())
            }
            Ok(Ok(Err((error, _)))) => Err(self.failed(PublishError::Kafka(error))),
            // The producer was dropped: only during shutdown.
            Ok(Err(_canceled)) => Err(self.failed(PublishError::Kafka(KafkaError::Canceled))),
            Err(_elapsed) => {
                let delivery = std::pin::Pin::into_inner(delivery);
                Err(self.failed(PublishError::Timeout(PendingDelivery(*delivery))))
            }
        }
    }

    fn failed(&self, error: PublishError) -> PublishError {
        self.metrics.publish_error(error.as_label());
        error
    }

    /// Waits for every queued record's delivery report, up to `timeout`.
    pub fn flush(&self, timeout: std::time::Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Records still waiting for a delivery report.
    pub fn in_flight_count(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// The producer's client, for metadata calls.
    pub fn producer(&self) -> &FutureProducer<StatsContext> {
        &self.producer
    }
}

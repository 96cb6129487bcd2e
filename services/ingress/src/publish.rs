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
            PublishError::Kafka(error) if classify(error) == ErrorClass::Authorization => {
                "authorization"
            }
            PublishError::Kafka(_) => "kafka",
        }
    }
}

/// What a Kafka error means for the record that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A retry may succeed (broker trouble, a corrupt transfer, timeouts): keep the record
    /// (spool it, or retry it from the spool).
    Retriable,
    /// The cluster refuses the ingress's credentials or ACLs: an operator must act. Nothing is
    /// wrong with the record, so it is kept (spooled) and an alert fires; never quarantined.
    Authorization,
    /// No retry can fix this record (too large, invalid, bad topic): holding it would only
    /// hold up the records behind it, so a copy goes to the quarantine topic.
    Permanent,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 3] = [
        ErrorClass::Retriable,
        ErrorClass::Authorization,
        ErrorClass::Permanent,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            ErrorClass::Retriable => "retriable",
            ErrorClass::Authorization => "authorization",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// Classifies a Kafka error. `CORRUPT_MESSAGE` (`InvalidMessage`) is the broker seeing a bad
/// CRC in transit: retriable, not the record's fault.
pub fn classify(error: &KafkaError) -> ErrorClass {
    classify_code(error.rdkafka_error_code())
}

fn classify_code(code: Option<RDKafkaErrorCode>) -> ErrorClass {
    use RDKafkaErrorCode as Code;
    match code {
        Some(
            Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::TransactionalIdAuthorizationFailed
            | Code::DelegationTokenAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::Authentication
            | Code::SecurityDisabled,
        ) => ErrorClass::Authorization,
        Some(
            Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::MessageBatchTooLarge
            | Code::InvalidRecord
            | Code::InvalidTopic
            | Code::InvalidArgument
            | Code::InvalidRequiredAcks
            | Code::UnsupportedCompressionType
            | Code::UnsupportedForMessageFormat,
        ) => ErrorClass::Permanent,
        _ => ErrorClass::Retriable,
    }
}

/// A refusal for the record's size: the one permanent refusal the quarantine topic (same
/// limits) repeats for a record, not for a cluster's setting that would refuse every record.
pub fn is_size_refusal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Kafka errors no retry fixes: see [`ErrorClass::Permanent`].
pub fn is_permanent(error: &KafkaError) -> bool {
    classify(error) == ErrorClass::Permanent
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

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as Code;

    #[test]
    fn kafka_errors_are_classified_by_what_fixes_them() {
        let table = [
            (Some(Code::InvalidMessage), ErrorClass::Retriable),
            (Some(Code::NotEnoughReplicas), ErrorClass::Retriable),
            (Some(Code::NotLeaderForPartition), ErrorClass::Retriable),
            (Some(Code::RequestTimedOut), ErrorClass::Retriable),
            (Some(Code::MessageTimedOut), ErrorClass::Retriable),
            (Some(Code::UnknownTopicOrPartition), ErrorClass::Retriable),
            (Some(Code::BrokerTransportFailure), ErrorClass::Retriable),
            (Some(Code::QueueFull), ErrorClass::Retriable),
            (None, ErrorClass::Retriable),
            (
                Some(Code::TopicAuthorizationFailed),
                ErrorClass::Authorization,
            ),
            (
                Some(Code::ClusterAuthorizationFailed),
                ErrorClass::Authorization,
            ),
            (
                Some(Code::SaslAuthenticationFailed),
                ErrorClass::Authorization,
            ),
            (Some(Code::Authentication), ErrorClass::Authorization),
            (Some(Code::MessageSizeTooLarge), ErrorClass::Permanent),
            (Some(Code::InvalidRecord), ErrorClass::Permanent),
            (Some(Code::InvalidTopic), ErrorClass::Permanent),
            (Some(Code::MessageBatchTooLarge), ErrorClass::Permanent),
        ];
        for (code, class) in table {
            assert_eq!(classify_code(code), class, "{code:?}");
        }
        let delivery = KafkaError::MessageProduction(Code::TopicAuthorizationFailed);
        assert_eq!(classify(&delivery), ErrorClass::Authorization);
        assert!(!is_permanent(&KafkaError::MessageProduction(
            Code::InvalidMessage
        )));
    }
}

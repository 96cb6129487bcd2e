//! The consumer loop: reads the configured topics in its own group, delivers each record through
//! a sink (the HTTP sink, or any [`RecordSink`]), dead-letters those that fail for good, and
//! stores an offset only after.

use std::future::Future;
use std::time::Duration;

use aftercart_kafka::{ClientKind, KafkaSettings, TopicSpec};
use aftercart_runtime::health::Readiness;
use bytes::Bytes;
use prometheus::IntGauge;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::dead_letter;
use crate::metrics::DeliveryMetrics;
use crate::sink::{Failure, HttpSink, Outcome, Outgoing, SinkError};

/// The record header whose value becomes `X-Aftercart-Event-Id`, when present.
pub const EVENT_ID_HEADER: &str = "aftercart-event-id";
/// How long Kafka may take to acknowledge a dead-letter record before the loop fails.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("Kafka failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("a dead-letter record could not be written: {0}")]
    DeadLetter(KafkaError),
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Delivered,
    DeadLettered,
    /// The sink chose not to send it ([`Outcome::Skipped`]): its offset is stored.
    Skipped,
    /// Stopped before either: the offset must not be stored.
    Stopped,
}

/// The topics the forwarder writes, to create at start-up (the topics it reads are their
/// producers' to create).
pub fn topic_specs(kafka: &KafkaSettings, config: &DeliveryConfig) -> Vec<TopicSpec> {
    vec![TopicSpec::new(&config.dead_letter_topic, kafka)]
}

/// Delivers one record somewhere, retrying as it sees fit; the forwarder dead-letters a
/// [`Outcome::Failed`] record and stores the offset of a delivered or dead-lettered one.
pub trait RecordSink {
    /// `message` has a payload.
    fn deliver(
        &self,
        message: &OwnedMessage,
        stop: &CancellationToken,
    ) -> impl Future<Output = Outcome> + Send;
}

impl RecordSink for HttpSink {
    async fn deliver(&self, message: &OwnedMessage, stop: &CancellationToken) -> Outcome {
        let outgoing = Outgoing::new(
            Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            &event_id(message),
            message.topic(),
        )
        .expect("topic names and offsets are valid header values");
        HttpSink::deliver(self, &outgoing, stop).await
    }
}

/// Where a forwarder reads and dead-letters, and how long its sink may hold one record.
#[derive(Debug, Clone)]
pub struct ForwarderSpec {
    pub group: String,
    pub topics: Vec<String>,
    pub dead_letter_topic: String,
    /// The longest one record may take in the sink (retries included).
    pub record_budget: Duration,
    pub shutdown_timeout: Duration,
    /// Set every 5 s to the records behind the end of the assigned partitions, when given.
    pub lag: Option<IntGauge>,
}

/// Commits on revocation (every stored offset is of a finished record); ready once assigned.
struct ForwarderContext {
    ready: Readiness,
    lag: Option<IntGauge>,
}

impl ClientContext for ForwarderContext {
    fn stats(&self, statistics: Statistics) {
        let Some(lag) = &self.lag else { return };
        let behind: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        lag.set(behind);
    }
}

impl ConsumerContext for ForwarderContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.ready.set_ready(true);
        }
    }
}

/// Closing a consumer can block for as long as the broker is away, so the clients are always
/// closed on a plain thread, never on the async runtime.
struct Clients {
    consumer: StreamConsumer<ForwarderContext>,
    producer: FutureProducer,
}

pub struct Forwarder<S: RecordSink = HttpSink> {
    /// `Some` until the loop closes them.
    clients: Option<Clients>,
    sink: S,
    metrics: DeliveryMetrics,
    dead_letter_topic: String,
    shutdown_timeout: Duration,
}

impl<S: RecordSink> Drop for Forwarder<S> {
    fn drop(&mut self) {
        // Dropped without `run` finishing (its task was dropped): still never block the runtime.
        if let Some(clients) = self.clients.take() {
            std::thread::spawn(move || drop(clients));
        }
    }
}

impl Forwarder {
    /// Subscribes to `config.topics` in `config.group`. `ready` turns true once partitions are
    /// assigned. Operator overrides (`AFTERCART_KAFKA_PROPERTIES`) apply to both clients.
    pub fn new(
        kafka: &KafkaSettings,
        config: &DeliveryConfig,
        metrics: DeliveryMetrics,
        ready: Readiness,
    ) -> Result<Forwarder, ForwarderError> {
        let sink = HttpSink::new(&config.sink, metrics.clone())?;
        let spec = ForwarderSpec {
            group: config.group.clone(),
            topics: config.topics.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            record_budget: config.sink.retry.max_duration + config.sink.timeout,
            shutdown_timeout: config.shutdown_timeout,
            lag: None,
        };
        Forwarder::with_sink(kafka, &spec, sink, metrics, ready)
    }
}

impl<S: RecordSink> Forwarder<S> {
    /// A forwarder through any sink, reading `spec.topics` in `spec.group`.
    pub fn with_sink(
        kafka: &KafkaSettings,
        spec: &ForwarderSpec,
        sink: S,
        metrics: DeliveryMetrics,
        ready: Readiness,
    ) -> Result<Forwarder<S>, ForwarderError> {
        // The loop does not poll while it retries a record, so librdkafka must not take that
        // for a hung consumer: allow the whole retry budget, the last request and a dead letter.
        let max_poll = spec.record_budget + DEAD_LETTER_TIMEOUT + Duration::from_secs(60);
        // A new group starts at the beginning: receivers dedupe on the event id.
        let mut consumer_config = kafka.group_consumer_config(&spec.group, &spec.group);
        consumer_config.set(
            "max.poll.interval.ms",
            max_poll.as_millis().clamp(300_000, 86_400_000).to_string(),
        );
        if spec.lag.is_some() {
            consumer_config.set("statistics.interval.ms", "5000");
        }
        kafka.apply_overrides(&mut consumer_config, ClientKind::Consumer);
        let consumer: StreamConsumer<ForwarderContext> =
            consumer_config.create_with_context(ForwarderContext {
                ready,
                lag: spec.lag.clone(),
            })?;
        let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;

        let mut producer_config = kafka.client_config(&spec.group);
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                DEAD_LETTER_TIMEOUT.as_millis().to_string(),
            );
        kafka.apply_overrides(&mut producer_config, ClientKind::Producer);
        let producer: FutureProducer = producer_config.create()?;
        Ok(Forwarder {
            clients: Some(Clients { consumer, producer }),
            sink,
            metrics,
            dead_letter_topic: spec.dead_letter_topic.clone(),
            shutdown_timeout: spec.shutdown_timeout,
        })
    }

    fn clients(&self) -> &Clients {
        self.clients
            .as_ref()
            .expect("clients are open until run ends")
    }

    /// Runs until `stop`, then commits what was stored and closes the clients within the
    /// shutdown timeout. An error (Kafka refusing a dead letter) ends it the same way.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), ForwarderError> {
        let result = self.consume(&stop).await;
        self.close().await;
        result
    }

    async fn consume(&self, stop: &CancellationToken) -> Result<(), ForwarderError> {
        loop {
            let message = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                received = self.clients().consumer.recv() => match received {
                    Ok(message) => message.detach(),
                    Err(error) => {
                        tracing::warn!(%error, "Consumer error; continuing.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if self.handle(&message, stop).await? == Handled::Stopped {
                return Ok(());
            }
            let (topic, partition, offset) =
                (message.topic(), message.partition(), message.offset());
            if let Err(error) = self
                .clients()
                .consumer
                .store_offset(topic, partition, offset)
            {
                // Revoked meanwhile: the partition's new owner delivers the record again.
                tracing::warn!(topic, partition, offset, %error, "Could not store an offset; the record will be delivered again.");
            }
        }
    }

    /// Delivers one record, or dead-letters it. Does not store its offset.
    pub async fn handle(
        &self,
        message: &OwnedMessage,
        stop: &CancellationToken,
    ) -> Result<Handled, ForwarderError> {
        if message.payload().is_none() {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "Dead-lettering a record without a value."
            );
            return self.dead_letter(message, "no_payload", None, stop).await;
        }
        match self.sink.deliver(message, stop).await {
            Outcome::Delivered { .. } => Ok(Handled::Delivered),
            Outcome::Stopped => Ok(Handled::Stopped),
            Outcome::Skipped => Ok(Handled::Skipped),
            Outcome::Failed(failure) => {
                self.dead_letter(message, &failure.reason(), Some(&failure), stop)
                    .await
            }
        }
    }

    /// Writes the record to the dead-letter topic and waits for Kafka's acknowledgement.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        failure: Option<&Failure>,
        stop: &CancellationToken,
    ) -> Result<Handled, ForwarderError> {
        let headers = dead_letter::headers(message, reason, failure);
        let mut record = FutureRecord::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        let delivery = self
            .clients()
            .producer
            .send_result(record)
            .map_err(|(error, _)| ForwarderError::DeadLetter(error))?;
        tokio::select! {
            acknowledged = delivery => match acknowledged {
                Ok(Ok(_)) => {
                    self.metrics.dead_lettered();
                    Ok(Handled::DeadLettered)
                }
                Ok(Err((error, _))) => Err(ForwarderError::DeadLetter(error)),
                Err(_) => Err(ForwarderError::DeadLetter(KafkaError::Canceled)),
            },
            // Not known to be written: the record stays uncommitted and is handled again.
            () = stop.cancelled() => Ok(Handled::Stopped),
        }
    }

    /// Commits the stored offsets, leaves the group and flushes the producer on a plain thread,
    /// waiting at most the shutdown timeout.
    async fn close(&mut self) {
        let Some(clients) = self.clients.take() else {
            return;
        };
        let deadline = self.shutdown_timeout.max(Duration::from_secs(1));
        let (closed, wait) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            match clients.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => {
                    tracing::warn!(%error, "Final offset commit failed; the last records may be delivered again.")
                }
            }
            clients.consumer.unsubscribe();
            let _ = clients.producer.flush(deadline);
            drop(clients);
            let _ = closed.send(());
        });
        if tokio::time::timeout(deadline + Duration::from_secs(1), wait)
            .await
            .is_err()
        {
            tracing::warn!("Kafka clients did not close before the shutdown deadline.");
        }
    }
}

/// Runs a service's main loop (`main`, given the token that stops it) and, when there is one,
/// its forwarder, until `stop`. One failing stops the other: both are the one service. Returns
/// both results, the loop's first.
pub async fn alongside<S, E, Fut>(
    stop: &CancellationToken,
    main: impl FnOnce(CancellationToken) -> Fut,
    forwarder: Option<Forwarder<S>>,
) -> (Result<(), E>, Result<(), ForwarderError>)
where
    S: RecordSink,
    Fut: Future<Output = Result<(), E>>,
{
    let inner = stop.child_token();
    tokio::join!(
        async {
            let result = main(inner.clone()).await;
            inner.cancel();
            result
        },
        async {
            let result = match forwarder {
                Some(forwarder) => forwarder.run(inner.clone()).await,
                None => Ok(()),
            };
            if result.is_err() {
                inner.cancel();
            }
            result
        }
    )
}

/// The record's `aftercart-event-id` header when it is printable ASCII, else its source.
pub fn event_id(message: &OwnedMessage) -> String {
    message
        .headers()
        .and_then(|headers| headers.iter().find(|h| h.key == EVENT_ID_HEADER))
        .and_then(|h| h.value)
        .filter(|v| !v.is_empty() && v.len() <= 256 && v.iter().all(|b| (0x20..0x7f).contains(b)))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or_else(|| dead_letter::source(message), str::to_string)
}

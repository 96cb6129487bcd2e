//! The producer configuration every aftercart producer shares: idempotent, `acks=all`,
//! compressed, and the Java-compatible murmur2 partitioner so keys land where any client expects.

use std::time::Duration;

use rdkafka::error::KafkaResult;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::{ClientKind, KafkaSettings, StatsContext};

/// Tunables of a producer; the durability settings are not among them on purpose.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    pub client_id: String,
    /// How long librdkafka keeps trying to deliver one message.
    pub message_timeout: Duration,
    /// The largest record the producer accepts (body plus headers).
    pub max_message_bytes: usize,
    /// How long to wait to fill a batch: a small price in latency for far fewer requests.
    pub linger: Duration,
}

/// The largest record a consumer service writes: copies of raw records (by-shop forwards, dead
/// letters) with a few headers added. Twice the ingress's default body limit (4 MiB), so a copy
/// of any raw record fits; the topics holding copies are created to accept it too.
pub const COPY_MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// The output producer's `linger.ms`: its message timeout must be longer (librdkafka).
pub const OUTPUT_LINGER: Duration = Duration::from_millis(5);

/// The producer of a consumer service's outputs, changelog, forwards and dead letters: the
/// shared durability settings, sized for copies of raw records.
pub fn build_output_producer(
    settings: &KafkaSettings,
    client_id: &str,
    message_timeout: Duration,
) -> KafkaResult<FutureProducer> {
    let options = ProducerOptions {
        client_id: client_id.to_string(),
        message_timeout,
        max_message_bytes: COPY_MAX_RECORD_BYTES,
        linger: OUTPUT_LINGER,
    };
    let mut config = producer_config(settings, &options);
    settings.apply_overrides(&mut config, ClientKind::Producer);
    config.create()
}

/// Builds a producer that reports librdkafka statistics. The operator's
/// `AFTERCART_KAFKA_PROPERTIES` are applied last.
pub fn build_producer(
    settings: &KafkaSettings,
    options: &ProducerOptions,
    context: StatsContext,
) -> KafkaResult<FutureProducer<StatsContext>> {
    let mut config = producer_config(settings, options);
    config.set("statistics.interval.ms", "5000");
    settings.apply_overrides(&mut config, ClientKind::Producer);
    config.create_with_context(context)
}

/// The durability settings every producer shares; never overridable through `options`.
pub fn producer_config(settings: &KafkaSettings, options: &ProducerOptions) -> ClientConfig {
    let mut config = settings.client_config(&options.client_id);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", options.linger.as_millis().to_string())
        // murmur2 for keyed records, as the Java client does: same key, same partition number.
        .set("partitioner", "murmur2_random")
        .set(
            "message.timeout.ms",
            options.message_timeout.as_millis().max(1).to_string(),
        )
        .set("message.max.bytes", options.max_message_bytes.to_string());
    config
}

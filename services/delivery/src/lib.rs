//! Forwards Kafka records to an HTTP endpoint as signed JSON POSTs, with retries and a
//! dead-letter topic: [`HttpSink`] does one record's HTTP delivery, [`Forwarder`] runs it over
//! a consumer group.
//!
//! # Delivery semantics
//!
//! **At least once.** The forwarder stores a record's offset only after the receiver answered
//! 2xx, or after the record's dead-letter copy was acknowledged by Kafka; it commits stored
//! offsets every second, on partition revocation and on shutdown. A crash, a shutdown during a
//! retry or a rebalance can therefore deliver a record again, never skip one.
//!
//! **Idempotency.** Every request carries `X-Aftercart-Event-Id`, the same on every redelivery
//! of a record: the record's `aftercart-event-id` header when it has one, else
//! `<topic>/<partition>/<offset>`. Receivers dedupe on it.
//!
//! **Order.** Records are delivered one at a time, in order within a partition; a record being
//! retried holds back the records after it (of every partition: these are low-volume event
//! streams to one endpoint, and when that endpoint fails it fails for all of them). The
//! `<prefix>_http_in_retry` gauge is 1 while that happens.
//!
//! # The request
//!
//! `POST <url>` with the record's value as the body, byte for byte, and the headers
//! `Content-Type: application/json`, `User-Agent: aftercart/<version>`,
//! `X-Aftercart-Event-Id`, `X-Aftercart-Topic` (the Kafka topic) and, when a secret is
//! configured, `X-Aftercart-Hmac-Sha256`.
//!
//! **Verifying the signature** (the scheme of Shopify's `X-Shopify-Hmac-Sha256`, so a Shopify
//! webhook verifier works unchanged): compute HMAC-SHA256 over the raw request body bytes, as
//! received and before any JSON parsing, keyed with the shared secret's UTF-8 bytes; encode it
//! as standard padded base64 (44 characters) and compare it with the header in constant time.
//!
//! # Retries
//!
//! - 2xx: delivered. 408, 425, 429, 5xx, timeouts and connection errors: retried. Any other
//!   status (3xx included: redirects are not followed) is a permanent refusal: dead-lettered at
//!   once.
//! - Backoff is exponential with full jitter: the n-th wait is uniformly random in
//!   `0..=min(backoff_max, backoff_initial * 2^(n-1))`.
//! - `Retry-After` (delay-seconds or HTTP-date) is a floor: the next try is never earlier than
//!   the receiver asked, even above `backoff_max`.
//! - `max_retry_duration` bounds the time from a record's first try to its last. When the
//!   backoff overshoots it, the last try happens at its end; when `Retry-After` points past it,
//!   the record waits it out and is dead-lettered without another try. Either way a failing
//!   receiver sees a record at most every `max_retry_duration`, and no one record holds the
//!   stream longer than that plus one request timeout.
//! - A shutdown during a wait stops at once; the record is not committed and is delivered again
//!   by the next owner of its partition.
//!
//! # Dead letters
//!
//! A refused or exhausted record is copied to the dead-letter topic with its key, value and
//! headers, plus `aftercart-dead-letter-reason` (`http_status_<code>`, `retries_exhausted` or `refused`),
//! `aftercart-dead-letter-source` (`<topic>/<partition>/<offset>`), `aftercart-http-status`
//! (the last status, when there was an answer), `aftercart-http-error` (`timeout`, `connect` or
//! `transport`, when the last try got no answer), `aftercart-http-attempts` and
//! `aftercart-http-response` (the first KiB of the last answer's body, as UTF-8 with invalid
//! bytes replaced). `schemas/kafka/delivery-dead-letter.md` is the contract.
//!
//! # Embedding it
//!
//! The service declares the sink's flags under its own names with [`sink_args!`], adds its
//! topics, group and dead-letter topic, and runs a [`Forwarder`] until shutdown:
//!
//! ```no_run
//! use aftercart_delivery::{DeliveryConfig, DeliveryFlags, DeliveryMetrics, Forwarder};
//! use aftercart_kafka::{ensure_topics_with_retry, KafkaSettings};
//! use aftercart_runtime::{config::ConfigErrors, Health};
//! use tokio_util::sync::CancellationToken;
//!
//! aftercart_delivery::sink_args!(
//!     /// Where the referrals service POSTs its events (`--referrals-webhook-*`).
//!     pub struct WebhookArgs, "referrals-webhook", "AFTERCART_REFERRALS_WEBHOOK"
//! );
//!
//! fn config(webhook: &WebhookArgs, errors: &mut ConfigErrors) -> Option<DeliveryConfig> {
//!     DeliveryFlags {
//!         sink: webhook.flags(),
//!         topics: "aftercart.referrals".into(),
//!         group: "aftercart-referrals-delivery".into(),
//!         dead_letter_topic: "aftercart.referrals-dead-letter".into(),
//!     }
//!     .validate("AFTERCART_REFERRALS_WEBHOOK", errors)
//! }
//!
//! async fn serve(
//!     kafka: &KafkaSettings,
//!     config: &DeliveryConfig,
//!     registry: &prometheus::Registry,
//!     health: &Health,
//!     stop: CancellationToken,
//! ) -> Result<(), Box<dyn std::error::Error>> {
//!     let metrics = DeliveryMetrics::register(registry, "aftercart_referrals")?;
//!     let specs = aftercart_delivery::topic_specs(kafka, config);
//!     if !ensure_topics_with_retry(kafka, &specs, &[], &stop).await? {
//!         return Ok(()); // stopped while Kafka was unreachable
//!     }
//!     let forwarder = Forwarder::new(kafka, config, metrics, health.component("delivery"))?;
//!     forwarder.run(stop).await?;
//!     Ok(())
//! }
//! ```
//!
//! The audiences service's `webhook` destination uses [`HttpSink`] alone:
//! `HttpSink::new(&sink_config, metrics)?.deliver(&Outgoing::new(body, event_id, topic)?, &stop)`.
//!
//! Bodies and response bodies may hold personal data: they are never logged. Secrets never
//! print, and the URL's query string (which may hold a token) is left out of `Debug`.

pub mod args;
pub mod config;
pub mod dead_letter;
pub mod forwarder;
pub mod message;
pub mod metrics;
pub mod retry;
pub mod shop_keys;
pub mod sink;

pub use aftercart_runtime::config::ConfigErrors;
pub use config::{
    defaults, DeliveryConfig, DeliveryFlags, Endpoint, Secret, SinkConfig, SinkFlags,
};
pub use forwarder::{
    alongside, topic_specs, Forwarder, ForwarderError, ForwarderSpec, Handled, RecordSink,
};
pub use metrics::DeliveryMetrics;
pub use retry::RetryPolicy;
pub use sink::{
    deliver_with, Answer, Failure, FailureKind, HttpClient, HttpSink, Labels, Outcome, Outgoing,
    SinkError,
};

//! Message destinations: one person-addressed event (a recovery nudge, a post-purchase
//! touchpoint) sent to Klaviyo's Events API, a signed webhook, or a file, with the same retry
//! rules and the same idempotency key (`event_id`) everywhere.
//!
//! The API is small: build a [`Message`] from a record, pick a [`Destination`]
//! ([`Destination::klaviyo`], [`Destination::webhook`], [`Destination::file`]) and call
//! [`Destination::send`]; or hand the destination and a record parser to [`MessageSink`] and run
//! it under the [`Forwarder`](crate::Forwarder), which stores an offset only once the message was
//! accepted or dead-lettered.
//!
//! ```no_run
//! use aftercart_delivery::message::{Destination, Message, MessageSink, Profile};
//! use rdkafka::message::{Message as _, OwnedMessage};
//!
//! /// A record whose JSON value carries `event_id`, `shop`, `email` and `at`.
//! fn parse(record: &OwnedMessage) -> Result<Message, String> {
//!     let body = record.payload().unwrap_or_default();
//!     let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
//!     let text = |field: &str| value[field].as_str().map(str::to_string);
//!     Ok(Message {
//!         event_id: text("event_id").ok_or("no event_id")?,
//!         topic: record.topic().to_string(),
//!         shop: text("shop").ok_or("no shop")?,
//!         metric: "Aftercart Example".to_string(),
//!         time: text("at").ok_or("no time")?,
//!         value: None,
//!         profile: Profile { email: text("email"), ..Profile::default() },
//!         properties: value.clone(),
//!         body: bytes::Bytes::copy_from_slice(body),
//!     })
//! }
//!
//! let destination = Destination::file("/var/lib/aftercart/nudges".into());
//! let sink = MessageSink::new(destination, parse);
//! ```
//!
//! A message holds personal data (its profile and body): `Debug` leaves both out, and nothing
//! here logs them.

pub mod file;
pub mod klaviyo;

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::OwnedMessage;
use tokio_util::sync::CancellationToken;

use crate::config::SinkConfig;
use crate::forwarder::RecordSink;
use crate::metrics::DeliveryMetrics;
use crate::sink::{Failure, FailureKind, HttpSink, Outcome, Outgoing, SinkError};
pub use file::FileDestination;
pub use klaviyo::{KlaviyoConfig, KlaviyoDestination};

/// Who a message is for. At least one field is needed by Klaviyo; webhook and file
/// destinations take the message body as it is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub email: Option<String>,
    /// E.164 (`+15555550123`).
    pub phone: Option<String>,
    /// The shop's customer id, when known.
    pub external_id: Option<String>,
}

impl Profile {
    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.phone.is_none() && self.external_id.is_none()
    }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("email", &self.email.is_some())
            .field("phone", &self.phone.is_some())
            .field("external_id", &self.external_id.is_some())
            .finish()
    }
}

/// One event for one person.
#[derive(Clone)]
pub struct Message {
    /// The idempotency key: Klaviyo's `unique_id`, the webhook's `X-Aftercart-Event-Id`, the
    /// file's name. The same on every redelivery. Printable ASCII.
    pub event_id: String,
    /// The Kafka topic it came from (`X-Aftercart-Topic`).
    pub topic: String,
    /// `shop.myshopify.com`: picks the shop's Klaviyo key and the file's directory.
    pub shop: String,
    /// The event's name in Klaviyo (its metric), e.g. `Aftercart Recovery Nudge`.
    pub metric: String,
    /// When it happened, RFC 3339.
    pub time: String,
    /// A monetary value for Klaviyo's revenue reporting (e.g. the cart total).
    pub value: Option<f64>,
    pub profile: Profile,
    /// What the message template needs (Klaviyo event properties).
    pub properties: serde_json::Value,
    /// The record as the webhook and file destinations send it, byte for byte.
    pub body: Bytes,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("event_id", &self.event_id)
            .field("topic", &self.topic)
            .field("shop", &self.shop)
            .field("metric", &self.metric)
            .field("profile", &self.profile)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Where messages go. Cheap to clone.
#[derive(Clone)]
pub enum Destination {
    Klaviyo(Arc<KlaviyoDestination>),
    Webhook(Box<HttpSink>),
    File(FileDestination),
}

impl Destination {
    /// Klaviyo's Events API, with each shop's private key from `config.keys_file`.
    pub fn klaviyo(
        config: &KlaviyoConfig,
        metrics: DeliveryMetrics,
    ) -> Result<Destination, DestinationError> {
        Ok(Destination::Klaviyo(Arc::new(KlaviyoDestination::new(
            config, metrics,
        )?)))
    }

    /// The signed webhook of the delivery crate: the message body POSTed as it is.
    pub fn webhook(
        config: &SinkConfig,
        metrics: DeliveryMetrics,
    ) -> Result<Destination, DestinationError> {
        Ok(Destination::Webhook(Box::new(HttpSink::new(
            config, metrics,
        )?)))
    }

    /// One JSON file per message under `<dir>/<shop>/`.
    pub fn file(dir: std::path::PathBuf) -> Destination {
        Destination::File(FileDestination::new(dir))
    }

    /// `klaviyo`, `webhook` or `file`: a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Klaviyo(_) => "klaviyo",
            Destination::Webhook(_) => "webhook",
            Destination::File(_) => "file",
        }
    }

    /// Sends `message`, retrying as the destination's policy says, until it is accepted,
    /// refused for good, out of budget, or `stop` fires.
    pub async fn send(&self, message: &Message, stop: &CancellationToken) -> Outcome {
        match self {
            Destination::Klaviyo(klaviyo) => klaviyo.send(message, stop).await,
            Destination::Webhook(sink) => {
                match Outgoing::new(message.body.clone(), &message.event_id, &message.topic) {
                    Some(outgoing) => sink.deliver(&outgoing, stop).await,
                    None => refused("the event id or topic is not printable ASCII"),
                }
            }
            Destination::File(file) => file.send(message, stop).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot read the per-shop keys file {path}: {error}")]
    Keys {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the Klaviyo base URL {0}")]
    BaseUrl(String),
}

/// A refusal decided before sending (a message that cannot be sent as it is): dead-letter it.
pub fn refused(why: &str) -> Outcome {
    Outcome::Failed(Failure {
        kind: FailureKind::Rejected,
        status: None,
        error: None,
        response: Bytes::copy_from_slice(why.as_bytes()),
        attempts: 0,
    })
}

/// A [`RecordSink`] for the forwarder: parses each record into a [`Message`] with `parse` (an
/// `Err` is refused and dead-lettered with its reason) and sends it to the destination.
pub struct MessageSink<P> {
    destination: Destination,
    parse: P,
}

impl<P> MessageSink<P>
where
    P: Fn(&OwnedMessage) -> Result<Message, String> + Send + Sync,
{
    pub fn new(destination: Destination, parse: P) -> MessageSink<P> {
        MessageSink { destination, parse }
    }
}

impl<P> RecordSink for MessageSink<P>
where
    P: Fn(&OwnedMessage) -> Result<Message, String> + Send + Sync,
{
    async fn deliver(&self, record: &OwnedMessage, stop: &CancellationToken) -> Outcome {
        match (self.parse)(record) {
            Ok(message) => self.destination.send(&message, stop).await,
            Err(why) => refused(&why),
        }
    }
}

#[cfg(test)]
mod tests;

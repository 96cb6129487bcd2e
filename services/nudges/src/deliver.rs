//! Sends each record of `aftercart.nudges` to the configured destination (the delivery crate's
//! message destinations: Klaviyo, signed webhook, file) under the delivery forwarder, which
//! stores an offset only once the nudge was accepted or dead-lettered. Counts what was sent, by
//! step and destination, and how long after its due time.

use aftercart_delivery::message::{Destination, Message, Profile};
use aftercart_delivery::{Outcome, RecordSink};
use aftercart_shopify::time::{now_ms, parse_time_ms};
use bytes::Bytes;
use rdkafka::message::{Message as _, OwnedMessage};
use tokio_util::sync::CancellationToken;

use aftercart_runtime::Event as _;

use crate::domain::nudge::Nudge;
use crate::events::{NudgeRefused, NudgeSent};
use crate::metrics::NudgesMetrics;

/// A nudge record as a message: the person's profile from its contact details, the rest as
/// event properties, the record itself as the webhook and file body.
pub fn message_of(record: &OwnedMessage, metric: &str) -> Result<(Message, Nudge), String> {
    let body = record.payload().unwrap_or_default();
    let nudge: Nudge =
        serde_json::from_slice(body).map_err(|e| format!("not a nudge record: {e}"))?;
    let mut properties =
        serde_json::to_value(&nudge).map_err(|e| format!("cannot re-encode the nudge: {e}"))?;
    if let Some(object) = properties.as_object_mut() {
        // Contact details belong to the profile, not to the event.
        object.remove("customer");
    }
    let value = nudge
        .value
        .as_ref()
        .and_then(|v| v.amount.parse::<f64>().ok());
    let message = Message {
        event_id: nudge.event_id.clone(),
        topic: record.topic().to_string(),
        shop: nudge.shop.clone(),
        metric: metric.to_string(),
        time: nudge.due_at.clone(),
        value,
        profile: Profile {
            email: nudge.customer.email.clone(),
            phone: nudge.customer.phone.clone(),
            external_id: nudge.customer.customer_id.map(|id| id.to_string()),
        },
        properties,
        body: Bytes::copy_from_slice(body),
    };
    Ok((message, nudge))
}

pub struct NudgeSink {
    destination: Destination,
    metric: String,
    metrics: NudgesMetrics,
}

impl NudgeSink {
    pub fn new(destination: Destination, metric: String, metrics: NudgesMetrics) -> NudgeSink {
        NudgeSink {
            destination,
            metric,
            metrics,
        }
    }
}

impl RecordSink for NudgeSink {
    async fn deliver(&self, record: &OwnedMessage, stop: &CancellationToken) -> Outcome {
        let kind = self.destination.kind();
        let (message, nudge) = match message_of(record, &self.metric) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.metrics.failed(kind);
                return aftercart_delivery::message::refused(&why);
            }
        };
        let outcome = self.destination.send(&message, stop).await;
        match &outcome {
            Outcome::Delivered { .. } => {
                let late_ms = parse_time_ms(&nudge.due_at).map_or(0, |due| now_ms() - due);
                NudgeSent {
                    nudge: &nudge,
                    destination: kind,
                    late_seconds: late_ms as f64 / 1000.0,
                }
                .emit(&self.metrics);
            }
            Outcome::Failed(failure) => {
                NudgeRefused {
                    nudge: &nudge,
                    destination: kind,
                    reason: &failure.reason(),
                }
                .emit(&self.metrics);
            }
            Outcome::Stopped => {}
        }
        outcome
    }
}

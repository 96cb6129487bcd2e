//! Sends each record of `aftercart.nudges` to the configured destination (the delivery crate's
//! message destinations: Klaviyo, signed webhook, file) under the delivery forwarder, which
//! stores an offset only once the nudge was accepted or dead-lettered. Counts what was sent, by
//! step and destination, and how long after its due time; a nudge written to the topic too long
//! ago is not sent (skipped, counted as stale).

use aftercart_delivery::message::{Destination, Message, Profile};
use aftercart_delivery::{Outcome, RecordSink};
use aftercart_shopify::time::{now_ms, parse_time_ms};
use bytes::Bytes;
use rdkafka::message::{Message as _, OwnedMessage};
use tokio_util::sync::CancellationToken;

use aftercart_runtime::Event as _;

use crate::domain::nudge::Nudge;
use crate::events::{NudgeRefused, NudgeSent, NudgeStale};
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
            // As typed at checkout; Klaviyo takes E.164 only and refuses the whole event for
            // another form. A number that is not plausibly international is left out (the email
            // still names the person; the record keeps the phone as typed).
            phone: nudge
                .customer
                .phone
                .as_deref()
                .and_then(|raw| aftercart_shopify::phone::e164(raw, None))
                .map(|number| number.with_plus()),
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
    /// A nudge written longer ago than this is not sent.
    max_send_delay: std::time::Duration,
    metrics: NudgesMetrics,
}

impl NudgeSink {
    pub fn new(
        destination: Destination,
        metric: String,
        max_send_delay: std::time::Duration,
        metrics: NudgesMetrics,
    ) -> NudgeSink {
        NudgeSink {
            destination,
            metric,
            max_send_delay,
            metrics,
        }
    }

    /// How long ago `record` was written to the topic, when that is past the send delay. By
    /// the record's own time (the stage writes a step when it is sent, so a step the stage
    /// itself sent late is not stale), not the step's due time.
    fn stale(&self, record: &OwnedMessage) -> Option<i64> {
        let written_ms = record.timestamp().to_millis()?;
        let ago_ms = now_ms().saturating_sub(written_ms);
        let limit_ms = i64::try_from(self.max_send_delay.as_millis()).unwrap_or(i64::MAX);
        (ago_ms > limit_ms).then_some(ago_ms)
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
        if let Some(ago_ms) = self.stale(record) {
            NudgeStale {
                nudge: &nudge,
                destination: kind,
                written_seconds_ago: ago_ms as f64 / 1000.0,
            }
            .emit(&self.metrics);
            return Outcome::Skipped;
        }
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
            Outcome::Stopped | Outcome::Skipped => {}
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use std::time::Duration;

    fn nudge_record(written_ms: i64) -> OwnedMessage {
        nudge_record_with_phone(written_ms, None)
    }

    fn nudge_record_with_phone(written_ms: i64, phone: Option<&str>) -> OwnedMessage {
        let nudge = serde_json::json!({
            "event_id": "e1", "shop": "s.myshopify.com", "journey_key": "s.myshopify.com/c1",
            "abandonment_event_id": "a1", "checkout_token": "c1", "step": 1, "steps": 3,
            "due_at": "2026-11-23T11:00:00Z", "abandoned_at": "2026-11-23T10:00:00Z",
            "contact_basis": "marketing",
            "customer": {"customer_id": 42, "email": "ann@example.com", "phone": phone,
                         "first_name": "Ann", "last_name": null},
            "recovery_url": null, "discount_code": null, "value": null, "line_items": null,
            "segments": {}
        });
        OwnedMessage::new(
            Some(nudge.to_string().into_bytes()),
            Some(b"s.myshopify.com/c1".to_vec()),
            "aftercart.nudges".into(),
            Timestamp::CreateTime(written_ms),
            0,
            7,
            None,
        )
    }

    /// Klaviyo takes E.164 only, and refuses the whole event for another form: the profile
    /// carries the phone in E.164, or leaves out one that is not plausibly international.
    #[test]
    fn the_profile_phone_is_e164_or_left_out() {
        let phone_of = |raw: Option<&str>| {
            let record = nudge_record_with_phone(now_ms(), raw);
            let (message, _) = message_of(&record, "metric").expect("a nudge");
            assert_eq!(message.profile.email.as_deref(), Some("ann@example.com"));
            message.profile.phone
        };
        assert_eq!(
            phone_of(Some("+1 (555) 625-1199")).as_deref(),
            Some("+15556251199")
        );
        assert_eq!(phone_of(Some("555-625-1199")), None, "national, no country");
        assert_eq!(phone_of(None), None);
    }

    /// A nudge written longer ago than the send delay (a destination down that long, or added
    /// later and reading the topic from its start) is skipped and counted, never sent; one
    /// within it is sent.
    #[tokio::test]
    async fn a_nudge_written_too_long_ago_is_skipped_not_sent() {
        let dir = std::env::temp_dir().join(format!("nudges-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let registry = prometheus::Registry::new();
        let metrics = NudgesMetrics::register(&registry, Some("file")).unwrap();
        let sink = NudgeSink::new(
            Destination::file(dir.clone()),
            "metric".into(),
            Duration::from_secs(6 * 3600),
            metrics,
        );
        let stop = CancellationToken::new();
        let old = sink
            .deliver(&nudge_record(now_ms() - 7 * 3_600_000), &stop)
            .await;
        assert!(matches!(old, Outcome::Skipped), "{old:?}");
        assert!(!dir.exists(), "nothing written");
        let stale = registry
            .gather()
            .iter()
            .find(|f| f.name() == "aftercart_nudges_suppressed_total")
            .and_then(|f| {
                f.get_metric().iter().find(|m| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "reason" && l.value() == "stale")
                })
            })
            .map(|m| m.get_counter().get_value());
        assert_eq!(stale, Some(1.0));

        let fresh = sink.deliver(&nudge_record(now_ms() - 60_000), &stop).await;
        assert!(matches!(fresh, Outcome::Delivered { .. }), "{fresh:?}");
        assert!(dir.join("s.myshopify.com").join("e1.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

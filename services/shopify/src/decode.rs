//! Decoding webhook bodies read back from Kafka by the consumer services: typed decoding with a
//! dead-letter reason when a record cannot be used, and the helpers payloads share.

use serde::Deserialize;
use serde_json::Value;

use crate::time::parse_time_ms;

/// Why a record cannot be used: it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonRecord {
    #[error("missing shopify-topic header")]
    MissingTopic,
    #[error("body does not decode as {topic}: {reason}")]
    Undecodable { topic: String, reason: String },
    #[error("impossible value: {0}")]
    Impossible(&'static str),
    /// A `customers/redact` in which nothing identifies anyone: kept (dead-lettered under its
    /// own reason, counted and alerted on) for an operator to apply by hand, never dropped.
    #[error("customers/redact names no one (no readable customer id, email, phone or order)")]
    UnidentifiedRedaction,
}

impl PoisonRecord {
    /// Bounded metric label.
    pub fn as_label(&self) -> &'static str {
        match self {
            PoisonRecord::MissingTopic => "missing_topic",
            PoisonRecord::Undecodable { .. } => "undecodable",
            PoisonRecord::Impossible(_) => "impossible_value",
            PoisonRecord::UnidentifiedRedaction => "unidentified_redaction",
        }
    }
}

/// The record's Shopify topic, trimmed and lower-cased.
pub fn shopify_topic(topic: Option<&str>) -> Result<String, PoisonRecord> {
    Ok(topic
        .ok_or(PoisonRecord::MissingTopic)?
        .trim()
        .to_ascii_lowercase())
}

/// Decodes `body` as `T`, or says why it cannot be used as `topic`.
pub fn decode<'a, T: Deserialize<'a>>(topic: &str, body: &'a [u8]) -> Result<T, PoisonRecord> {
    serde_json::from_slice(body).map_err(|error| PoisonRecord::Undecodable {
        topic: topic.to_string(),
        reason: error.to_string(),
    })
}

/// Discount codes from `[{"code": "X", ...}]` or `["X"]`.
pub fn discount_codes(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| v.get("code").and_then(Value::as_str).or_else(|| v.as_str()))
        .filter(|code| !code.is_empty())
        .map(str::to_string)
        .collect()
}

/// A marketing consent as Shopify states it (`email_marketing_consent`, `sms_marketing_consent`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ConsentState {
    pub state: Option<String>,
    pub consent_updated_at: Option<String>,
}

/// Marketing consent stated by an order, with the time it was stated: the customer's
/// email-marketing consent when it has a state, else the order's `buyer_accepts_marketing` at
/// the order's creation.
pub fn order_consent(
    stated: Option<&ConsentState>,
    buyer_accepts_marketing: Option<bool>,
    created_at: Option<&str>,
) -> Option<(bool, Option<i64>)> {
    if let Some(state) = stated.and_then(|c| c.state.as_deref()) {
        let at = stated
            .and_then(|c| c.consent_updated_at.as_deref())
            .and_then(parse_time_ms);
        return Some((state == "subscribed", at));
    }
    buyer_accepts_marketing.map(|accepts| (accepts, created_at.and_then(parse_time_ms)))
}

/// The buyer's email of an order: the customer's, else the order's, else the contact email;
/// only a value that looks like an address.
pub fn order_email<'a>(
    customer: Option<&'a str>,
    email: Option<&'a str>,
    contact_email: Option<&'a str>,
) -> Option<&'a str> {
    customer
        .or(email)
        .or(contact_email)
        .filter(|e| e.contains('@'))
}

#[derive(Deserialize)]
struct OrderId {
    id: u64,
}

/// The order id of an `orders/delete` record (its body holds only the id).
pub fn deleted_order_id(topic: &str, body: &[u8]) -> Result<u64, PoisonRecord> {
    Ok(decode::<OrderId>(topic, body)?.id)
}

/// A customer's email-marketing consent changed (`customers/create|update`,
/// `customers_email_marketing_consent/update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentChange {
    pub customer_id: u64,
    pub subscribed: bool,
    /// When the consent changed: its own time, else the record's `updated_at`.
    pub at_ms: Option<i64>,
}

#[derive(Deserialize)]
struct ConsentPayload {
    customer_id: Option<u64>,
    id: Option<u64>,
    email_marketing_consent: Option<ConsentState>,
    updated_at: Option<String>,
}

/// The email-marketing consent a customer record states, if it names the customer and a state.
pub fn consent_change(topic: &str, body: &[u8]) -> Result<Option<ConsentChange>, PoisonRecord> {
    let payload: ConsentPayload = decode(topic, body)?;
    let consent = payload.email_marketing_consent;
    Ok(
        match (
            payload.customer_id.or(payload.id),
            consent.as_ref().and_then(|c| c.state.as_deref()),
        ) {
            (Some(customer_id), Some(state)) => Some(ConsentChange {
                customer_id,
                subscribed: state == "subscribed",
                at_ms: consent
                    .as_ref()
                    .and_then(|c| c.consent_updated_at.as_deref())
                    .or(payload.updated_at.as_deref())
                    .and_then(parse_time_ms),
            }),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consent_record_names_its_customer_state_and_time() {
        let body = br#"{"customer_id":7,"email_marketing_consent":{"state":"subscribed"},"updated_at":"2026-01-01T00:00:00Z"}"#;
        let change = consent_change("customers/update", body).unwrap().unwrap();
        assert_eq!(change.customer_id, 7);
        assert!(change.subscribed);
        assert!(change.at_ms.is_some(), "the record's time stands in");
        assert_eq!(
            consent_change("customers/update", br#"{"id":7}"#).unwrap(),
            None
        );
        assert!(consent_change("customers/update", b"[]").is_err());
    }

    #[test]
    fn an_order_states_consent_by_its_customer_first_then_its_buyer_flag() {
        let stated = ConsentState {
            state: Some("unsubscribed".into()),
            consent_updated_at: None,
        };
        assert_eq!(
            order_consent(Some(&stated), Some(true), None),
            Some((false, None))
        );
        assert_eq!(
            order_consent(None, Some(true), Some("2026-01-01T00:00:00Z")).map(|c| c.0),
            Some(true)
        );
        assert_eq!(order_consent(None, None, None), None);
    }

    #[test]
    fn an_order_email_must_look_like_an_address() {
        assert_eq!(order_email(None, Some("x"), Some("a@b.c")), None);
        assert_eq!(order_email(None, None, Some("a@b.c")), Some("a@b.c"));
        assert_eq!(deleted_order_id("orders/delete", br#"{"id":4}"#), Ok(4));
    }
}

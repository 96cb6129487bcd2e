//! The records written to `aftercart.abandonments` (schema: `schemas/aftercart/abandonments.schema.json`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::segments::Segments;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Abandoned,
    Recovered,
}

/// Which abandonment: a cart that never reached checkout, or a checkout with contact details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Cart,
    Checkout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerOut {
    pub id: Option<u64>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub country: Option<String>,
    pub accepts_email_marketing: bool,
    pub accepts_sms_marketing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    /// Decimal string, as Shopify sends it.
    pub amount: String,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineItemsOut {
    pub count: usize,
    pub quantity: u64,
    pub items: Vec<crate::domain::journey::ItemSummary>,
}

/// One output record. `segments` and the line items are present on `abandoned`; `order_id` and
/// the recovery facts on `recovered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub kind: Kind,
    /// Deterministic: the same abandonment (or recovery) of a journey always has this id.
    pub event_id: String,
    pub shop: String,
    pub journey_key: String,
    pub checkout_token: Option<String>,
    pub cart_token: Option<String>,
    pub customer: Option<CustomerOut>,
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_items: Option<LineItemsOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Segments>,
    pub abandoned_at: String,
    pub last_activity_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_after_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_recovery_url: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_discount: Option<bool>,
}

/// What reconciliation needs from an output record read back at restore.
#[derive(Debug, Clone, Deserialize)]
pub struct EmittedEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub kind: Kind,
    pub journey_key: String,
    pub abandoned_at: String,
}

/// `sha256("aftercart/abandonment/<type>/<kind>/<journey key>")`, 32 hex characters.
pub fn event_id(event_type: EventType, kind: Kind, journey_key: &str) -> String {
    let type_name = match event_type {
        EventType::Abandoned => "abandoned",
        EventType::Recovered => "recovered",
    };
    let kind_name = match kind {
        Kind::Cart => "cart",
        Kind::Checkout => "checkout",
    };
    let digest = Sha256::digest(
        format!("aftercart/abandonment/{type_name}/{kind_name}/{journey_key}").as_bytes(),
    );
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Milliseconds since the epoch of an RFC 3339 timestamp with any offset (`2021-12-31T19:00:00-05:00`).
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    // humantime only reads UTC: fold a numeric offset into the time first.
    let (base, offset_minutes) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((base, offset))
            if (offset.starts_with('+') || offset.starts_with('-'))
                && offset.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..6].parse().ok()?;
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (format!("{base}Z"), sign * (hours * 60 + minutes))
        }
        _ => (text.to_string(), 0),
    };
    let utc = humantime::parse_rfc3339_weak(base.trim_end_matches('Z')).ok()?;
    let ms = utc.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(ms - offset_minutes * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let a = event_id(EventType::Abandoned, Kind::Checkout, "shop/c1");
        assert_eq!(a, event_id(EventType::Abandoned, Kind::Checkout, "shop/c1"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, event_id(EventType::Recovered, Kind::Checkout, "shop/c1"));
        assert_ne!(a, event_id(EventType::Abandoned, Kind::Cart, "shop/c1"));
        assert_ne!(a, event_id(EventType::Abandoned, Kind::Checkout, "shop/c2"));
    }

    #[test]
    fn shopify_timestamps_with_offsets_parse_to_utc() {
        let utc = parse_time_ms("2022-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_time_ms("2021-12-31T19:00:00-05:00"), Some(utc));
        assert_eq!(parse_time_ms("2022-01-01T01:00:00+01:00"), Some(utc));
        assert_eq!(parse_time_ms("2022-01-01T00:00:00.000Z"), Some(utc));
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(rfc3339(utc), "2022-01-01T00:00:00.000Z");
    }
}

//! The records written to `aftercart.abandonments` (schema: `schemas/aftercart/abandonments.schema.json`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::segments::Segments;
pub use aftercart_shopify::time::{parse_time_ms, rfc3339};

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

/// Why contact details are carried: the person's marketing consent, or the merchant's explicit
/// transactional-reminder setting. Absent: the person may not be contacted, and the event carries
/// ids and segments only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactBasis {
    Marketing,
    Transactional,
}

/// The customer. Email, phone and names are present only for a channel the person may be
/// contacted on (see [`ContactBasis`]); otherwise they are `null`.
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
    /// The subtotal before shipping and taxes, decimal string, when Shopify sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtotal: Option<String>,
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
    /// Present when contact details are carried, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_basis: Option<ContactBasis>,
    /// Shopify's `abandoned_checkout_url`, on `abandoned` checkout events of people who may be
    /// contacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_url: Option<String>,
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
    /// The journey's shop, for a journey known only from this event (see `Engine::reconcile`).
    #[serde(default)]
    pub shop: String,
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
}

//! The state kept per shop, one changelog record per entity: customers (first-order facts,
//! consent, who referred them, their advocate code), orders (invite and reward lifecycles, and
//! whether they were refunded, cancelled or deleted), referred-order times per browser IP, and
//! the redactions still remembered.

use serde::{Deserialize, Serialize};

use crate::domain::code::Source;
use crate::domain::input::Negation;

/// Changelog key prefixes: `c/<shop>/<customer key>`, `o/<shop>/<order id>`,
/// `i/<shop>/<ip fingerprint>`, `r/<shop>/<redaction id>`.
pub fn customer_entity(shop: &str, customer_key: &str) -> String {
    format!("c/{shop}/{customer_key}")
}

pub fn order_entity(shop: &str, order_id: u64) -> String {
    format!("o/{shop}/{order_id}")
}

pub fn ip_entity(shop: &str, ip_fingerprint: &str) -> String {
    format!("i/{shop}/{ip_fingerprint}")
}

/// A redaction of one person (`id` a fingerprint of who it names) or, with `shop`, of the shop.
pub fn redaction_entity(shop: &str, id: &str) -> String {
    format!("r/{shop}/{id}")
}

/// The shop of an entity key.
pub fn shop_of_entity(key: &str) -> &str {
    key.split('/').nth(1).unwrap_or_default()
}

/// One changelog value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entity", rename_all = "snake_case")]
pub enum Entity {
    Customer(CustomerState),
    Order(OrderState),
    Ip(IpState),
    Redaction(Redaction),
}

/// A `customers/redact` (or, with every field empty, a `shop/redact`) remembered for the
/// redaction retention period: a fact about that person read later, however late it was sent,
/// is dropped instead of bringing them back. Holds fingerprints, never the email or phone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Redaction {
    pub customer_id: Option<u64>,
    pub email_fp: Option<String>,
    pub phone_fp: Option<String>,
    #[serde(default)]
    pub orders: Vec<u64>,
    /// The whole shop is redacted.
    #[serde(default)]
    pub shop: bool,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Consent {
    pub subscribed: bool,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstOrder {
    pub order_id: u64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferredBy {
    pub advocate: String,
    pub order_id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advocate {
    pub code: String,
    pub invited_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CustomerState {
    pub customer_id: Option<u64>,
    /// Fingerprints of the recent canonical emails (never the emails themselves).
    #[serde(default)]
    pub email_fps: Vec<String>,
    /// Fingerprints of the recent name + address combinations.
    #[serde(default)]
    pub name_address_fps: Vec<String>,
    pub consent: Option<Consent>,
    /// The earliest order seen, by its `created_at`.
    pub first_order: Option<FirstOrder>,
    /// Shopify said this customer had earlier orders (before aftercart saw any).
    #[serde(default)]
    pub has_history: bool,
    pub referred_by: Option<ReferredBy>,
    pub advocate: Option<Advocate>,
}

/// Who receives an invite: kept only while the invite waits for its delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteTo {
    pub customer_id: Option<u64>,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Invite {
    /// Decided at payment, waiting for the delivery to start the delay (trigger `delivered`).
    AwaitingDelivery {
        to: InviteTo,
    },
    Scheduled {
        due_ms: i64,
        to: InviteTo,
    },
    Sent,
    Skipped {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardStatus {
    Pending,
    Granted,
    Voided,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub advocate: String,
    pub advocate_id: Option<u64>,
    pub code: String,
    pub via: Source,
    pub status: RewardStatus,
    pub attributed_ms: i64,
    pub due_ms: i64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OrderState {
    pub customer: Option<String>,
    pub customer_id: Option<u64>,
    pub name: Option<String>,
    pub value: Option<String>,
    pub currency: Option<String>,
    pub created_ms: Option<i64>,
    #[serde(default)]
    pub test: bool,
    pub negated: Option<Negation>,
    /// Attribution is decided once, at the first snapshot of the order.
    #[serde(default)]
    pub attribution_checked: bool,
    pub invite: Option<Invite>,
    pub reward: Option<Reward>,
    pub last_seen_ms: i64,
    /// When a shipment of the order was first delivered (fulfilment webhooks).
    #[serde(default)]
    pub delivered_ms: Option<i64>,
}

impl OrderState {
    /// Nothing left to do for this order: no waiting invite, no reward under review.
    pub fn settled(&self) -> bool {
        !matches!(self.invite, Some(Invite::Scheduled { .. }))
            && !matches!(
                self.reward,
                Some(Reward {
                    status: RewardStatus::Pending,
                    ..
                })
            )
    }
}

/// Times of referred orders from one browser IP, within the burst window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct IpState {
    pub referred_ms: Vec<i64>,
}

//! What the journey keeps per order and per customer (the compacted changelog's values), and
//! the entity keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::domain::input::{Progress, Stop};
use crate::domain::touchpoint::Kind;

/// `order/<shop>/<order id>`.
pub fn order_entity(shop: &str, order_id: u64) -> String {
    format!("order/{shop}/{order_id}")
}

/// `customer/<shop>/<customer id>`.
pub fn customer_entity(shop: &str, customer_id: u64) -> String {
    format!("customer/{shop}/{customer_id}")
}

/// The shop of an entity key.
pub fn shop_of_entity(key: &str) -> &str {
    let rest = key.split_once('/').map_or(key, |(_, rest)| rest);
    if key.starts_with("shop/") {
        return rest;
    }
    rest.rsplit_once('/').map_or(rest, |(shop, _)| shop)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Entities move boxed through the stage; the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Entity {
    Order(OrderJourney),
    Customer(CustomerConsent),
    /// Orders seen of a customer (repeat purchases).
    Buyer(BuyerOrders),
    /// A shop's days of KPI facts.
    Shop(ShopKpis),
    /// A redaction remembered (`redacted/...` keys, [`aftercart_shopify::privacy::markers`]):
    /// pseudonyms only.
    Redaction(aftercart_shopify::privacy::markers::RedactionMarker),
}

/// `buyer/<shop>/<customer id>`.
pub fn buyer_entity(shop: &str, customer_id: u64) -> String {
    format!("buyer/{shop}/{customer_id}")
}

/// `shop/<shop>`.
pub fn shop_entity(shop: &str) -> String {
    format!("shop/{shop}")
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BuyerOrders {
    pub orders: u32,
    /// The input offset of the last order counted here (see [`ShopKpis::tallied_through`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_through: Option<i64>,
    /// The input offset of the first order counted here (`i64::MIN`: counted before offsets
    /// were kept), so that an order read again is a repeat only if an earlier one was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_counted: Option<i64>,
}

/// A shop's KPI days and when its next report is due.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ShopKpis {
    pub days: crate::domain::kpis::ShopDays,
    pub next_report_ms: Option<i64>,
    /// The input offset (in the shop's by-shop partition) of the last fact tallied here. A
    /// crash can leave a prefix of a batch's changelog writes, this record's among them but
    /// not the order's that made it final; the batch is then read again from its first
    /// offset, and a fact at or below this one is already in the days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tallied_through: Option<i64>,
}

/// A customer's email marketing consent, the latest statement winning.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CustomerConsent {
    pub subscribed: bool,
    pub at_ms: i64,
}

/// One shipment of an order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Shipment {
    /// How far it got (never goes back: a late `in_transit` after `delivered` changes nothing).
    pub progress: Option<ProgressState>,
    /// The latest problem status not followed by progress, told when an order that arrives
    /// after it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub tracking_company: Option<String>,
    pub tracking_number: Option<String>,
    pub tracking_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressState {
    Shipped,
    OutForDelivery,
    Delivered,
}

impl From<Progress> for ProgressState {
    fn from(p: Progress) -> Self {
        match p {
            Progress::Shipped => ProgressState::Shipped,
            Progress::OutForDelivery => ProgressState::OutForDelivery,
            Progress::Delivered => ProgressState::Delivered,
        }
    }
}

impl ProgressState {
    pub fn rank(self) -> u8 {
        match self {
            ProgressState::Shipped => 1,
            ProgressState::OutForDelivery => 2,
            ProgressState::Delivered => 3,
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            ProgressState::Shipped => Kind::Shipped,
            ProgressState::OutForDelivery => Kind::OutForDelivery,
            ProgressState::Delivered => Kind::Delivered,
        }
    }
}

/// A touchpoint waiting for its time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timer {
    pub due_ms: i64,
    pub kind: Kind,
    /// The product of a replenishment reminder.
    pub product_id: Option<u64>,
}

/// A product an order bought that has a usage period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bought {
    pub product_id: u64,
    pub title: Option<String>,
    pub quantity: u64,
}

/// Everything the journey knows about one order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OrderJourney {
    pub order_id: u64,
    /// False until an order snapshot arrived (a fulfilment can come first).
    pub known: bool,
    pub name: Option<String>,
    pub customer_id: Option<u64>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    /// Consent stated on the order itself (the customer's own statement wins when newer).
    pub consent: Option<CustomerConsent>,
    pub total: Option<String>,
    /// Refunded so far, decimal string.
    pub refunded: Option<String>,
    /// The refunds counted in `refunded` (Shopify may deliver a refund twice).
    #[serde(default)]
    pub refunds: BTreeSet<u64>,
    /// The currency refunds were stated in, when they said; `refunded` compares with `total`
    /// only in the total's currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_currency: Option<String>,
    pub currency: Option<String>,
    pub test: bool,
    pub created_ms: Option<i64>,
    pub bought: Vec<Bought>,
    pub shipments: BTreeMap<u64, Shipment>,
    pub delivered_ms: Option<i64>,
    pub stopped: Option<Stop>,
    pub timers: BTreeSet<Timer>,
    /// Marks of the touchpoints already out (`touchpoint::mark`).
    pub sent: BTreeSet<String>,
    pub last_seen_ms: i64,
}

impl OrderJourney {
    /// Nothing left to do: no timer waits.
    pub fn settled(&self) -> bool {
        self.timers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_name_their_shop() {
        assert_eq!(
            shop_of_entity(&order_entity("a.myshopify.com", 5)),
            "a.myshopify.com"
        );
        assert_eq!(
            shop_of_entity(&customer_entity("b.myshopify.com", 7)),
            "b.myshopify.com"
        );
    }
}

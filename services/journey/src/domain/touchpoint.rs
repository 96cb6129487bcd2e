//! The records written to `aftercart.touchpoints` (schema: `schemas/aftercart/touchpoints.schema.json`)
//! and their deterministic ids.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `sha256("aftercart/journey/<what>")`, 32 hex characters: the same facts always give the same
/// id, so a destination can drop a duplicate delivery.
pub fn event_id(what: &str) -> String {
    let digest = Sha256::digest(format!("aftercart/journey/{what}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a touchpoint tells the customer. Also a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    OrderConfirmed,
    Shipped,
    OutForDelivery,
    Delivered,
    DeliveryProblem,
    ReviewRequest,
    ReplenishmentReminder,
    ReferralInvitation,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::OrderConfirmed,
        Kind::Shipped,
        Kind::OutForDelivery,
        Kind::Delivered,
        Kind::DeliveryProblem,
        Kind::ReviewRequest,
        Kind::ReplenishmentReminder,
        Kind::ReferralInvitation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderConfirmed => "order_confirmed",
            Kind::Shipped => "shipped",
            Kind::OutForDelivery => "out_for_delivery",
            Kind::Delivered => "delivered",
            Kind::DeliveryProblem => "delivery_problem",
            Kind::ReviewRequest => "review_request",
            Kind::ReplenishmentReminder => "replenishment_reminder",
            Kind::ReferralInvitation => "referral_invitation",
        }
    }

    /// Marketing touchpoints need the customer's email marketing consent when they fire; the
    /// others are service messages about an order the customer placed.
    pub fn is_marketing(self) -> bool {
        matches!(
            self,
            Kind::ReviewRequest | Kind::ReplenishmentReminder | Kind::ReferralInvitation
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderOut {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// Decimal string, as Shopify sends it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerOut {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FulfillmentOut {
    pub id: u64,
    /// The shipment status that caused the touchpoint (`in_transit`, `delivered`, `failure`, ...).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tracking_company: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tracking_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tracking_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductOut {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferralOut {
    pub code: String,
    pub share_url: String,
}

/// One touchpoint of a customer's journey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Touchpoint {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub shop: String,
    /// When the fact happened (a timed touchpoint: when it came due).
    pub occurred_at: String,
    pub order: OrderOut,
    pub customer: CustomerOut,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fulfillment: Option<FulfillmentOut>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub product: Option<ProductOut>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub referral: Option<ReferralOut>,
}

impl Touchpoint {
    /// The mark the order keeps once this touchpoint is out (see `OrderJourney::sent`).
    pub fn mark(&self) -> String {
        match (&self.fulfillment, &self.product) {
            (Some(f), _) if self.kind == Kind::DeliveryProblem => {
                mark(self.kind, Some(&format!("{}/{}", f.id, f.status)))
            }
            (Some(f), _) => mark(self.kind, Some(&f.id.to_string())),
            (None, Some(p)) => mark(self.kind, Some(&p.id.to_string())),
            (None, None) => mark(self.kind, None),
        }
    }
}

/// `<kind>` or `<kind>/<what>` (a fulfilment id, a product id, a fulfilment id and problem
/// status): what was sent for an order. Part of the event id, so stable across versions.
pub fn mark(kind: Kind, of: Option<&str>) -> String {
    match of {
        Some(what) => format!("{}/{what}", kind.as_str()),
        None => kind.as_str().to_string(),
    }
}

/// What the journey writes: a touchpoint (`aftercart.touchpoints`), a daily KPI record
/// (`aftercart.kpis`) or an answer to a data request (`aftercart.data_requests`, shared with the
/// other services). Read back untagged on restore: a KPI record has no order, a report neither.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    Touchpoint(Box<Touchpoint>),
    Kpis(Box<crate::domain::kpis::KpiRecord>),
    Answer(Box<aftercart_shopify::privacy::DataRequestReport>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use aftercart_shopify::privacy::{DataRequest, DataRequestReport};

    /// On restore the stage reads the data requests topic back, with the other services'
    /// reports in it: each reads as an answer, never as a touchpoint or a KPI record.
    #[test]
    fn a_report_reads_back_as_an_answer() {
        let report = DataRequestReport::new("referrals", "s", &DataRequest::default(), 0, vec![]);
        let bytes = serde_json::to_vec(&report).unwrap();
        let read: Output = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read, Output::Answer(Box::new(report)));
    }
}

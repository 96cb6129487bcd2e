//! Decoding the records the journey reads (by their `shopify-topic` header, or the referral
//! invites topic) into the facts the engine uses.

pub use aftercart_shopify::decode::ConsentState;
use aftercart_shopify::decode::{
    consent_change, decode, deleted_order_id, order_consent, order_email, shopify_topic,
    ConsentChange, PoisonRecord,
};
use aftercart_shopify::money::Amount;
use aftercart_shopify::privacy::DataRequest;
use aftercart_shopify::time::parse_time_ms;
use serde::Deserialize;

/// The Shopify topics the journey acts on; the router forwards only these.
pub const TOPICS: [&str; 17] = [
    "checkouts/create",
    "orders/create",
    "orders/updated",
    "orders/paid",
    "orders/cancelled",
    "orders/delete",
    "refunds/create",
    "fulfillments/create",
    "fulfillments/update",
    "fulfillment_events/create",
    "customers/create",
    "customers/update",
    "customers_email_marketing_consent/update",
    "customers/redact",
    "customers/data_request",
    "shop/redact",
    "app/uninstalled",
];

/// Whether records of a Shopify topic matter to the journey (case-insensitive).
pub fn is_relevant(topic: &str) -> bool {
    let topic = topic.trim().to_ascii_lowercase();
    TOPICS.contains(&topic.as_str())
}

/// Where a shipment stands, in the order it normally goes; problems are apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    Shipped,
    OutForDelivery,
    Delivered,
}

/// What a carrier status says: progress, a problem, or nothing a customer needs to hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shipment {
    Progress(Progress),
    Problem,
    Quiet,
}

/// Shopify's shipment statuses (REST `shipment_status` and fulfillment event `status`, which
/// share their values) and fulfilment statuses.
pub fn shipment(status: &str) -> Shipment {
    match status.trim().to_ascii_lowercase().as_str() {
        "in_transit" | "carrier_picked_up" | "confirmed" | "success" => {
            Shipment::Progress(Progress::Shipped)
        }
        "out_for_delivery" => Shipment::Progress(Progress::OutForDelivery),
        // Picked up by the customer at a pickup point is delivered too.
        "delivered" | "picked_up" => Shipment::Progress(Progress::Delivered),
        "attempted_delivery" | "delayed" | "failure" | "error" => Shipment::Problem,
        _ => Shipment::Quiet,
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Customer {
    pub id: Option<u64>,
    /// Present in older API versions: more than 1 means this is not the first order.
    pub orders_count: Option<u64>,
    pub email: Option<String>,
    /// Only to match a redaction by phone: never kept.
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub email_marketing_consent: Option<ConsentState>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct LineItem {
    pub product_id: Option<u64>,
    pub sku: Option<String>,
    pub title: Option<String>,
    pub quantity: Option<u64>,
}

/// An order snapshot: the fields touchpoints use.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct OrderFact {
    /// From the record's topic, not the body.
    #[serde(skip)]
    pub cancelled_topic: bool,
    /// `orders/updated`: may be about an order created long before (see the engine's `stale`).
    #[serde(skip)]
    pub updated_topic: bool,
    pub id: u64,
    pub name: Option<String>,
    pub email: Option<String>,
    pub contact_email: Option<String>,
    /// Only to match a redaction by phone: never kept.
    pub phone: Option<String>,
    pub customer: Option<Customer>,
    pub buyer_accepts_marketing: Option<bool>,
    pub financial_status: Option<String>,
    pub cancelled_at: Option<String>,
    pub total_price: Option<String>,
    pub currency: Option<String>,
    #[serde(default)]
    pub test: bool,
    pub created_at: Option<String>,
    #[serde(default)]
    pub line_items: Vec<LineItem>,
}

impl OrderFact {
    pub fn email(&self) -> Option<&str> {
        order_email(
            self.customer.as_ref().and_then(|c| c.email.as_deref()),
            self.email.as_deref(),
            self.contact_email.as_deref(),
        )
    }

    /// The buyer's phone (the order's, else the customer's), to match a redaction.
    pub fn phone(&self) -> Option<&str> {
        [
            self.phone.as_deref(),
            self.customer.as_ref().and_then(|c| c.phone.as_deref()),
        ]
        .into_iter()
        .flatten()
        .find(|p| !p.trim().is_empty())
    }

    /// Cancelled, or refunded in full, according to this snapshot.
    pub fn stopped(&self) -> Option<Stop> {
        if self.cancelled_topic || self.cancelled_at.is_some() {
            return Some(Stop::Cancelled);
        }
        match self.financial_status.as_deref() {
            Some("refunded") | Some("voided") => Some(Stop::Refunded),
            _ => None,
        }
    }

    /// Marketing consent stated by this order, with the time it was stated.
    pub fn consent(&self) -> Option<(bool, Option<i64>)> {
        let customer = self.customer.as_ref();
        let stated = customer.and_then(|c| c.email_marketing_consent.as_ref());
        let created_at = self.created_at.as_deref();
        order_consent(stated, self.buyer_accepts_marketing, created_at)
    }
}

/// Why an order's timed touchpoints stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Cancelled,
    Refunded,
    Deleted,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Cancelled => "cancelled",
            Stop::Refunded => "refunded",
            Stop::Deleted => "deleted",
        }
    }
}

/// A shipment fact: a fulfilment (create/update) or a carrier event.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipmentFact {
    pub order_id: u64,
    pub fulfillment_id: u64,
    /// The status the touchpoint is about (`in_transit`, `delivered`, `failure`, ...).
    pub status: String,
    pub shipment: Shipment,
    /// When the carrier says it happened, if it says.
    pub happened_ms: Option<i64>,
    pub tracking_company: Option<String>,
    pub tracking_number: Option<String>,
    pub tracking_url: Option<String>,
}

/// A referral invite of the referrals service, to relay as a touchpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct InviteFact {
    pub invite: aftercart_referrals::domain::event::InviteEvent,
}

/// One fact about a shop's orders or customers.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Order(Box<OrderFact>),
    /// `refunds/create`: the amount refunded by this refund.
    Refund {
        order_id: u64,
        /// The refund's id: a second delivery of the same refund adds nothing.
        refund_id: Option<u64>,
        amount: Amount,
        /// The transactions' currency: the customer's (presentment) one, which is not the
        /// order total's when the shop sells in several currencies.
        currency: Option<String>,
    },
    Deleted {
        order_id: u64,
    },
    Shipment(Box<ShipmentFact>),
    Consent(ConsentChange),
    RedactCustomer {
        customer_id: Option<u64>,
        email: Option<String>,
        phone: Option<String>,
        orders: Vec<u64>,
    },
    RedactShop,
    /// `customers/data_request`: report what is held about the customer.
    DataRequest(Box<DataRequest>),
    Invite(Box<InviteFact>),
    /// A fact that only counts towards the shop's KPIs.
    Kpi(crate::domain::kpis::Fact),
    /// A topic the journey does not act on.
    Ignored,
}

#[derive(Deserialize)]
struct Transaction {
    kind: Option<String>,
    currency: Option<String>,
    status: Option<String>,
    amount: Option<String>,
}

#[derive(Deserialize)]
struct RefundPayload {
    id: Option<u64>,
    order_id: u64,
    #[serde(default)]
    transactions: Vec<Transaction>,
}

#[derive(Deserialize)]
struct FulfillmentPayload {
    id: u64,
    order_id: u64,
    status: Option<String>,
    shipment_status: Option<String>,
    updated_at: Option<String>,
    tracking_company: Option<String>,
    tracking_number: Option<String>,
    tracking_url: Option<String>,
}

#[derive(Deserialize)]
struct FulfillmentEventPayload {
    fulfillment_id: u64,
    order_id: u64,
    status: Option<String>,
    happened_at: Option<String>,
}

/// The value of an output event, as (amount, currency).
fn value_of(amount: Option<&str>, currency: Option<&str>) -> Option<(Amount, String)> {
    Some((
        Amount::parse(amount?)?,
        currency.unwrap_or("XXX").to_string(),
    ))
}

#[derive(Deserialize)]
struct EventValue {
    amount: Option<String>,
    currency: Option<String>,
}

#[derive(Deserialize)]
struct AbandonmentEvent {
    #[serde(rename = "type")]
    kind: String,
    value: Option<EventValue>,
}

/// Decodes an abandonment event (`aftercart.abandonments`): abandoned or recovered.
pub fn decode_abandonment(body: &[u8]) -> Result<Input, PoisonRecord> {
    use crate::domain::kpis::Fact;
    let event: AbandonmentEvent = decode("abandonment event", body)?;
    let value = event
        .value
        .as_ref()
        .and_then(|v| value_of(v.amount.as_deref(), v.currency.as_deref()));
    Ok(match event.kind.as_str() {
        "abandoned" => Input::Kpi(Fact::Abandoned),
        "recovered" => Input::Kpi(Fact::Recovered { value }),
        _ => Input::Ignored,
    })
}

#[derive(Deserialize)]
struct RewardOrder {
    value: Option<String>,
    currency: Option<String>,
}

#[derive(Deserialize)]
struct RewardFriend {
    order: RewardOrder,
}

#[derive(Deserialize)]
struct RewardEvent {
    #[serde(rename = "type")]
    kind: String,
    friend: RewardFriend,
}

/// Decodes a referral reward event (`aftercart.referral-rewards`).
pub fn decode_reward(body: &[u8]) -> Result<Input, PoisonRecord> {
    use crate::domain::kpis::Fact;
    let event: RewardEvent = decode("referral reward", body)?;
    let order = &event.friend.order;
    Ok(match event.kind.as_str() {
        "reward.pending" => Input::Kpi(Fact::Referred {
            value: value_of(order.value.as_deref(), order.currency.as_deref()),
        }),
        "reward.granted" => Input::Kpi(Fact::RewardGranted),
        "reward.voided" => Input::Kpi(Fact::RewardVoided),
        _ => Input::Ignored,
    })
}

/// Decodes a referral invite record (`aftercart.referral-invites`).
pub fn decode_invite(body: &[u8]) -> Result<Input, PoisonRecord> {
    let invite = decode("referral invite", body)?;
    Ok(Input::Invite(Box::new(InviteFact { invite })))
}

/// Decodes a Shopify record by its topic.
pub fn decode_input(topic: Option<&str>, body: &[u8]) -> Result<Input, PoisonRecord> {
    let topic = shopify_topic(topic)?;
    Ok(match topic.as_str() {
        "checkouts/create" => {
            decode::<serde::de::IgnoredAny>(&topic, body)?;
            Input::Kpi(crate::domain::kpis::Fact::CheckoutStarted)
        }
        "orders/create" | "orders/updated" | "orders/paid" | "orders/cancelled" => {
            let mut order: OrderFact = decode(&topic, body)?;
            if let Some(total) = &order.total_price {
                if Amount::parse(total).is_none() {
                    return Err(PoisonRecord::Impossible("an order total is not a decimal"));
                }
            }
            order.cancelled_topic = topic == "orders/cancelled";
            order.updated_topic = topic == "orders/updated";
            Input::Order(Box::new(order))
        }
        "orders/delete" => Input::Deleted {
            order_id: deleted_order_id(&topic, body)?,
        },
        "refunds/create" => {
            let refund: RefundPayload = decode(&topic, body)?;
            let mut amount = Amount::ZERO;
            let mut currency = None;
            for t in &refund.transactions {
                let refunded = t.kind.as_deref() == Some("refund")
                    && matches!(t.status.as_deref(), Some("success") | None);
                if refunded {
                    let value = t
                        .amount
                        .as_deref()
                        .and_then(Amount::parse)
                        .ok_or(PoisonRecord::Impossible("a refund amount is not a decimal"))?;
                    amount = amount.saturating_add(value);
                    currency = currency.or(t.currency.clone());
                }
            }
            Input::Refund {
                order_id: refund.order_id,
                refund_id: refund.id,
                amount,
                currency,
            }
        }
        "fulfillments/create" | "fulfillments/update" => {
            let f: FulfillmentPayload = decode(&topic, body)?;
            // The carrier's status when there is one, else the fulfilment's own.
            let status = f
                .shipment_status
                .clone()
                .filter(|s| !s.is_empty())
                .or(f.status.clone())
                .unwrap_or_default()
                .to_ascii_lowercase();
            let shipment = if f.status.as_deref() == Some("cancelled") {
                Shipment::Quiet
            } else {
                shipment(&status)
            };
            Input::Shipment(Box::new(ShipmentFact {
                order_id: f.order_id,
                fulfillment_id: f.id,
                status,
                shipment,
                happened_ms: f.updated_at.as_deref().and_then(parse_time_ms),
                tracking_company: f.tracking_company,
                tracking_number: f.tracking_number,
                tracking_url: f.tracking_url,
            }))
        }
        "fulfillment_events/create" => {
            let e: FulfillmentEventPayload = decode(&topic, body)?;
            let status = e.status.unwrap_or_default().to_ascii_lowercase();
            Input::Shipment(Box::new(ShipmentFact {
                order_id: e.order_id,
                fulfillment_id: e.fulfillment_id,
                shipment: shipment(&status),
                status,
                happened_ms: e.happened_at.as_deref().and_then(parse_time_ms),
                tracking_company: None,
                tracking_number: None,
                tracking_url: None,
            }))
        }
        "customers/create" | "customers/update" | "customers_email_marketing_consent/update" => {
            consent_change(&topic, body)?.map_or(Input::Ignored, Input::Consent)
        }
        "customers/redact" => {
            // Read as every service reads it: leniently, and refused only when it names no one.
            let redact = aftercart_shopify::privacy::Person::decode_redaction(&topic, body)?;
            Input::RedactCustomer {
                customer_id: redact.customer_id,
                email: redact.email,
                phone: redact.phone,
                orders: redact.orders,
            }
        }
        "customers/data_request" => {
            Input::DataRequest(Box::new(DataRequest::decode(&topic, body)?))
        }
        // An uninstalled app will get shop/redact 48 hours later; until then nothing changes.
        "shop/redact" => {
            decode::<serde::de::IgnoredAny>(&topic, body)?;
            Input::RedactShop
        }
        _ => Input::Ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/shopify");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
    }

    #[test]
    fn the_fulfilment_samples_decode_to_shipments_of_the_sample_order() {
        let Input::Shipment(event) = decode_input(
            Some("fulfillment_events/create"),
            &fixture("fulfillment_events_create.json"),
        )
        .unwrap() else {
            panic!("not a shipment")
        };
        assert_eq!(event.order_id, 820982911946154508);
        assert_eq!(event.fulfillment_id, 123456);
        assert_eq!(event.shipment, Shipment::Progress(Progress::Shipped));
        let Input::Shipment(created) = decode_input(
            Some("fulfillments/create"),
            &fixture("fulfillments_create.json"),
        )
        .unwrap() else {
            panic!("not a shipment")
        };
        assert_eq!(created.order_id, 820982911946154508);
        assert_eq!(created.status, "pending");
        assert_eq!(created.shipment, Shipment::Quiet, "pending tells nobody");
        assert_eq!(created.tracking_company.as_deref(), Some("UPS"));
    }

    #[test]
    fn carrier_statuses_map_to_progress_and_problems() {
        assert_eq!(
            shipment("OUT_FOR_DELIVERY"),
            Shipment::Progress(Progress::OutForDelivery)
        );
        assert_eq!(
            shipment("delivered"),
            Shipment::Progress(Progress::Delivered)
        );
        assert_eq!(shipment("attempted_delivery"), Shipment::Problem);
        assert_eq!(shipment("failure"), Shipment::Problem);
        assert_eq!(shipment("label_printed"), Shipment::Quiet);
        assert_eq!(shipment(""), Shipment::Quiet);
    }

    #[test]
    fn a_cancelled_fulfilment_says_nothing() {
        let body = br#"{"id":1,"order_id":2,"status":"cancelled","shipment_status":"in_transit"}"#;
        let Input::Shipment(f) = decode_input(Some("fulfillments/update"), body).unwrap() else {
            panic!("not a shipment")
        };
        assert_eq!(f.shipment, Shipment::Quiet);
    }

    #[test]
    fn refunds_sum_their_successful_refund_transactions() {
        let body = br#"{"id":9,"order_id":5,"transactions":[
            {"kind":"refund","status":"success","amount":"10.50"},
            {"kind":"refund","status":"failure","amount":"99.00"},
            {"kind":"refund","status":"success","amount":"4.50"}]}"#;
        assert_eq!(
            decode_input(Some("refunds/create"), body).unwrap(),
            Input::Refund {
                order_id: 5,
                refund_id: Some(9),
                amount: Amount::parse("15").unwrap(),
                currency: None
            }
        );
        let bad = br#"{"order_id":5,"transactions":[{"kind":"refund","amount":"1e3"}]}"#;
        assert!(decode_input(Some("refunds/create"), bad).is_err());
    }

    #[test]
    fn the_sample_order_is_cancelled_and_undecodable_bodies_are_poison() {
        let Input::Order(order) =
            decode_input(Some("orders/create"), &fixture("orders_create.json")).unwrap()
        else {
            panic!("not an order")
        };
        assert_eq!(order.stopped(), Some(Stop::Cancelled));
        assert!(decode_input(Some("orders/paid"), b"{\"id\":\"x\"}").is_err());
        assert!(decode_input(None, b"{}").is_err());
        assert_eq!(
            decode_input(Some("products/update"), b"{}").unwrap(),
            Input::Ignored
        );
    }

    #[test]
    fn a_data_request_is_read_with_who_it_names_and_its_id() {
        assert!(is_relevant("Customers/Data_Request"));
        let Input::DataRequest(request) = decode_input(
            Some("customers/data_request"),
            &fixture("customers_data_request.json"),
        )
        .unwrap() else {
            panic!("a data request")
        };
        assert_eq!(request.person.customer_id, Some(191167));
        assert_eq!(request.person.orders, vec![220458, 280263, 299938]);
        assert_eq!(request.id, Some(9999));
        assert!(decode_input(Some("customers/data_request"), b"[1]").is_err());
    }

    #[test]
    fn a_malformed_redaction_is_applied_by_what_it_names_and_one_naming_no_one_is_kept() {
        let body = br#"{"customer":{"id":"42","email":7,"phone":15556251199},"orders_to_redact":[7,"8","x",null]}"#;
        let Input::RedactCustomer {
            customer_id,
            orders,
            ..
        } = decode_input(Some("customers/redact"), body).unwrap()
        else {
            panic!("a redaction")
        };
        assert_eq!(customer_id, Some(42));
        assert_eq!(orders, vec![7, 8]);
        let none = decode_input(
            Some("customers/redact"),
            br#"{"customer":{"id":null,"email":""},"orders_to_redact":"none"}"#,
        );
        assert_eq!(none.unwrap_err().as_label(), "unidentified_redaction");
    }
}

//! Decoding raw Shopify records (by their `shopify-topic` header) into the facts the engine uses.

pub use aftercart_shopify::decode::ConsentState;
use aftercart_shopify::decode::{
    consent_change, decode, deleted_order_id, order_consent, order_email, shopify_topic,
    ConsentChange,
};
pub use aftercart_shopify::decode::{discount_codes, PoisonRecord};
use serde::Deserialize;
use serde_json::Value;

use aftercart_shopify::money::Amount;
use aftercart_shopify::privacy::{DataRequest, Person};
use aftercart_shopify::time::parse_time_ms;

/// The Shopify topics the service acts on; the router forwards only these.
pub const TOPICS: [&str; 15] = [
    "orders/create",
    "orders/paid",
    "orders/fulfilled",
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
];

/// Whether records of a Shopify topic matter to the service (case-insensitive).
pub fn is_relevant(topic: &str) -> bool {
    let topic = topic.trim().to_ascii_lowercase();
    TOPICS.contains(&topic.as_str())
}

/// Why an order no longer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Negation {
    Refunded,
    Cancelled,
    Deleted,
}

impl Negation {
    pub fn as_str(self) -> &'static str {
        match self {
            Negation::Refunded => "refunded",
            Negation::Cancelled => "cancelled",
            Negation::Deleted => "deleted",
        }
    }
}

/// One fact about a shop's orders or customers.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `orders/create|paid|fulfilled|cancelled`: a full order snapshot.
    Order(Box<OrderFact>),
    /// `orders/delete` or `refunds/create`: only the order id is known.
    Negated {
        order_id: u64,
        negation: Negation,
    },
    /// A shipment of the order was delivered (a fulfilment or carrier event), at the time the
    /// carrier states if it does.
    Delivered {
        order_id: u64,
        at_ms: Option<i64>,
    },
    /// A customer's email-marketing consent changed.
    Consent(ConsentChange),
    /// `customers/redact`: by customer id, email, phone and the orders it lists.
    RedactCustomer(Person),
    RedactShop,
    /// `customers/data_request`: report what is held about the customer.
    DataRequest(Box<DataRequest>),
    /// A topic the service does not act on.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Customer {
    pub id: Option<u64>,
    pub email: Option<String>,
    /// Read only to match redactions; never kept.
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Present in older API versions: more than 1 means this is not the first order.
    pub orders_count: Option<u64>,
    pub email_marketing_consent: Option<ConsentState>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Address {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub address1: Option<String>,
    pub zip: Option<String>,
    pub country_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct NoteAttribute {
    pub name: Option<Value>,
    pub value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ClientDetails {
    pub browser_ip: Option<String>,
}

/// An order: the fields invites, attribution and fraud checks use.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct OrderFact {
    /// Set from the record's topic, not the body.
    #[serde(skip)]
    pub topic: OrderTopic,
    pub id: u64,
    pub name: Option<String>,
    pub email: Option<String>,
    pub contact_email: Option<String>,
    /// Read only to match redactions; never kept.
    pub phone: Option<String>,
    pub customer: Option<Customer>,
    pub buyer_accepts_marketing: Option<bool>,
    pub financial_status: Option<String>,
    pub fulfillment_status: Option<String>,
    pub cancelled_at: Option<String>,
    pub total_price: Option<String>,
    pub subtotal_price: Option<String>,
    pub current_subtotal_price: Option<String>,
    pub currency: Option<String>,
    #[serde(default)]
    pub discount_codes: Vec<Value>,
    pub landing_site: Option<String>,
    #[serde(default)]
    pub note_attributes: Vec<NoteAttribute>,
    pub browser_ip: Option<String>,
    pub client_details: Option<ClientDetails>,
    #[serde(default)]
    pub test: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub shipping_address: Option<Address>,
    pub billing_address: Option<Address>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderTopic {
    #[default]
    Create,
    Paid,
    Fulfilled,
    Cancelled,
}

impl OrderFact {
    /// Paid: the `orders/paid` topic or a paid financial status on any snapshot.
    pub fn is_paid(&self) -> bool {
        self.topic == OrderTopic::Paid || self.financial_status.as_deref() == Some("paid")
    }

    pub fn is_fulfilled(&self) -> bool {
        self.topic == OrderTopic::Fulfilled
            || self.fulfillment_status.as_deref() == Some("fulfilled")
    }

    /// Cancelled or refunded according to this snapshot.
    pub fn negation(&self) -> Option<Negation> {
        if self.topic == OrderTopic::Cancelled || self.cancelled_at.is_some() {
            return Some(Negation::Cancelled);
        }
        match self.financial_status.as_deref() {
            Some("refunded") | Some("voided") => Some(Negation::Refunded),
            _ => None,
        }
    }

    /// The value rewards and invites compare with their minimum: the subtotal after discounts
    /// (before shipping and tax), falling back to the total.
    pub fn value(&self) -> Option<&str> {
        self.current_subtotal_price
            .as_deref()
            .or(self.subtotal_price.as_deref())
            .or(self.total_price.as_deref())
    }

    pub fn email(&self) -> Option<&str> {
        order_email(
            self.customer.as_ref().and_then(|c| c.email.as_deref()),
            self.email.as_deref(),
            self.contact_email.as_deref(),
        )
    }

    pub fn browser_ip(&self) -> Option<&str> {
        self.browser_ip
            .as_deref()
            .or(self
                .client_details
                .as_ref()
                .and_then(|c| c.browser_ip.as_deref()))
            .filter(|ip| !ip.trim().is_empty())
    }

    /// Marketing consent stated by this order, with the time it was stated.
    pub fn consent(&self) -> Option<(bool, Option<i64>)> {
        let customer = self.customer.as_ref();
        let stated = customer.and_then(|c| c.email_marketing_consent.as_ref());
        let created_at = self.created_at.as_deref();
        order_consent(stated, self.buyer_accepts_marketing, created_at)
    }

    pub fn created_ms(&self) -> Option<i64> {
        self.created_at.as_deref().and_then(parse_time_ms)
    }
}

#[derive(Deserialize)]
struct RefundPayload {
    order_id: u64,
}

/// The fields of a fulfilment or fulfilment event that tell a delivery.
#[derive(Deserialize)]
struct ShipmentPayload {
    order_id: u64,
    status: Option<String>,
    shipment_status: Option<String>,
    happened_at: Option<String>,
    updated_at: Option<String>,
}

/// Delivered, or picked up by the customer (Shopify's shipment statuses).
fn is_delivered(status: Option<&str>) -> bool {
    status.is_some_and(|s| {
        let s = s.trim();
        s.eq_ignore_ascii_case("delivered") || s.eq_ignore_ascii_case("picked_up")
    })
}

/// Decodes a record by its Shopify topic.
pub fn decode_input(topic: Option<&str>, body: &[u8]) -> Result<Input, PoisonRecord> {
    let topic = shopify_topic(topic)?;
    let order_topic = match topic.as_str() {
        "orders/create" => Some(OrderTopic::Create),
        "orders/paid" => Some(OrderTopic::Paid),
        "orders/fulfilled" => Some(OrderTopic::Fulfilled),
        "orders/cancelled" => Some(OrderTopic::Cancelled),
        _ => None,
    };
    if let Some(order_topic) = order_topic {
        let mut order: OrderFact = decode(&topic, body)?;
        for amount in [
            &order.total_price,
            &order.subtotal_price,
            &order.current_subtotal_price,
        ]
        .into_iter()
        .flatten()
        {
            if Amount::parse(amount).is_none() {
                return Err(PoisonRecord::Impossible("an order amount is not a decimal"));
            }
        }
        order.topic = order_topic;
        return Ok(Input::Order(Box::new(order)));
    }
    Ok(match topic.as_str() {
        "orders/delete" => Input::Negated {
            order_id: deleted_order_id(&topic, body)?,
            negation: Negation::Deleted,
        },
        "refunds/create" => Input::Negated {
            order_id: decode::<RefundPayload>(&topic, body)?.order_id,
            negation: Negation::Refunded,
        },
        "fulfillments/create" | "fulfillments/update" | "fulfillment_events/create" => {
            let shipment: ShipmentPayload = decode(&topic, body)?;
            // A fulfilment carries the carrier's status in shipment_status; an event in status.
            let status = if topic.starts_with("fulfillment_events/") {
                shipment.status.as_deref()
            } else {
                shipment.shipment_status.as_deref()
            };
            if is_delivered(status) {
                Input::Delivered {
                    order_id: shipment.order_id,
                    at_ms: shipment
                        .happened_at
                        .as_deref()
                        .or(shipment.updated_at.as_deref())
                        .and_then(parse_time_ms),
                }
            } else {
                Input::Ignored
            }
        }
        "customers/create" | "customers/update" | "customers_email_marketing_consent/update" => {
            consent_change(&topic, body)?.map_or(Input::Ignored, Input::Consent)
        }
        "customers/redact" => Input::RedactCustomer(Person::decode_redaction(&topic, body)?),
        "customers/data_request" => {
            Input::DataRequest(Box::new(DataRequest::decode(&topic, body)?))
        }
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
    fn the_sample_paid_order_decodes_with_its_buyer_and_consent() {
        let Input::Order(order) =
            decode_input(Some("orders/paid"), &fixture("orders_paid.json")).unwrap()
        else {
            panic!("an order");
        };
        assert!(order.is_paid());
        assert!(order.test, "Shopify's sample is a test order");
        assert_eq!(order.email(), Some("john@example.com"));
        assert_eq!(
            order.customer.as_ref().unwrap().id,
            Some(115310627314723954)
        );
        assert_eq!(order.consent().map(|c| c.0), Some(true));
        assert!(order.value().is_some());
    }

    #[test]
    fn refunds_and_deletes_name_only_the_order() {
        assert_eq!(
            decode_input(Some("refunds/create"), br#"{"id":1,"order_id":42}"#).unwrap(),
            Input::Negated {
                order_id: 42,
                negation: Negation::Refunded
            }
        );
        assert_eq!(
            decode_input(Some("ORDERS/DELETE"), br#"{"id":42}"#).unwrap(),
            Input::Negated {
                order_id: 42,
                negation: Negation::Deleted
            }
        );
    }

    #[test]
    fn consent_updates_and_redacts_decode() {
        let consent = br#"{"customer_id":7,"email_address":"a@b.c","email_marketing_consent":{"state":"unsubscribed","consent_updated_at":"2026-01-01T00:00:00Z"}}"#;
        assert!(matches!(
            decode_input(Some("customers_email_marketing_consent/update"), consent).unwrap(),
            Input::Consent(ConsentChange {
                customer_id: 7,
                subscribed: false,
                at_ms: Some(_)
            })
        ));
        assert!(matches!(
            decode_input(Some("customers/redact"), &fixture("customers_redact.json")).unwrap(),
            Input::RedactCustomer(Person {
                customer_id: Some(_),
                email: Some(_),
                phone: Some(_),
                ..
            })
        ));
        assert_eq!(
            decode_input(Some("shop/redact"), &fixture("shop_redact.json")).unwrap(),
            Input::RedactShop
        );
    }

    #[test]
    fn broken_records_are_poison_with_a_reason() {
        assert_eq!(
            decode_input(None, b"{}").unwrap_err(),
            PoisonRecord::MissingTopic
        );
        assert_eq!(
            decode_input(Some("orders/paid"), b"{\"id\":\"x\"}")
                .unwrap_err()
                .as_label(),
            "undecodable"
        );
        assert_eq!(
            decode_input(Some("orders/paid"), br#"{"id":1,"total_price":"1e9"}"#)
                .unwrap_err()
                .as_label(),
            "impossible_value"
        );
        assert_eq!(
            decode_input(Some("refunds/create"), b"[]")
                .unwrap_err()
                .as_label(),
            "undecodable"
        );
    }

    #[test]
    fn only_the_topics_that_matter_are_relevant() {
        assert!(is_relevant("orders/paid"));
        assert!(is_relevant(" Refunds/Create"));
        assert!(!is_relevant("orders/updated"));
        assert!(!is_relevant("checkouts/create"));
    }

    #[test]
    fn a_malformed_redaction_is_applied_by_what_it_names_and_one_naming_no_one_is_kept() {
        let body = br#"{"customer":{"id":"42","email":7,"phone":15556251199},"orders_to_redact":[7,"8","x",null]}"#;
        let Input::RedactCustomer(person) = decode_input(Some("customers/redact"), body).unwrap()
        else {
            panic!("a redaction")
        };
        assert_eq!(person.customer_id, Some(42));
        assert!(person.phone.is_some());
        assert_eq!(person.orders, vec![7, 8]);
        let none = decode_input(
            Some("customers/redact"),
            br#"{"customer":{"id":null,"email":""},"orders_to_redact":"none"}"#,
        );
        assert_eq!(none.unwrap_err().as_label(), "unidentified_redaction");
    }
}

//! Decoding raw Shopify records (by their `shopify-topic` header) into the facts the engine uses.

use aftercart_shopify::decode::{decode, shopify_topic, ConsentState};
pub use aftercart_shopify::decode::{discount_codes, PoisonRecord};
use aftercart_shopify::privacy::{DataRequest, Person};
use serde::Deserialize;
use serde_json::Value;

/// A journey-partitioned fact.
#[derive(Debug, Clone, PartialEq)]
pub enum JourneyInput {
    Checkout(Box<Checkout>),
    CheckoutDeleted,
    Cart,
    Order(Box<Order>),
    /// A topic the service does not act on (e.g. `orders/fulfilled` after `orders/create`).
    Ignored,
}

/// A fact about customers or shops, read by every instance.
#[derive(Debug, Clone, PartialEq)]
pub enum GlobalInput {
    Consent {
        customer_id: u64,
        email: Option<bool>,
        sms: Option<bool>,
    },
    /// `customers/redact`: by customer id, email, phone and the orders it lists.
    RedactCustomer(Person),
    RedactShop,
    /// `customers/data_request`: report the journeys held about the customer.
    DataRequest(Box<DataRequest>),
    Uninstalled,
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Customer {
    pub id: Option<u64>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub orders_count: Option<u64>,
    pub default_address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Address {
    pub country_code: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LineItem {
    pub product_id: Option<u64>,
    pub variant_id: Option<u64>,
    pub title: Option<String>,
    #[serde(default)]
    pub quantity: u64,
    pub price: Option<String>,
    /// The variant's picture, when the payload has one (message content).
    pub image_url: Option<String>,
}

/// A checkout snapshot: only the fields segments and events use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Checkout {
    pub token: Option<String>,
    pub cart_token: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub customer: Option<Customer>,
    pub buyer_accepts_marketing: Option<bool>,
    pub buyer_accepts_sms_marketing: Option<bool>,
    #[serde(default)]
    pub line_items: Vec<LineItem>,
    pub currency: Option<String>,
    pub presentment_currency: Option<String>,
    pub subtotal_price: Option<String>,
    pub total_price: Option<String>,
    #[serde(default)]
    pub discount_codes: Vec<Value>,
    pub shipping_address: Option<Address>,
    pub billing_address: Option<Address>,
    pub shipping_lines: Option<Vec<Value>>,
    pub gateway: Option<String>,
    pub completed_at: Option<String>,
    pub updated_at: Option<String>,
    /// The link that reopens the checkout: holds a secret, so it is only passed on for people
    /// who may be contacted.
    pub abandoned_checkout_url: Option<String>,
}

/// An order: what matching and recovery need.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Order {
    pub id: u64,
    pub checkout_token: Option<String>,
    pub cart_token: Option<String>,
    pub email: Option<String>,
    pub customer: Option<Customer>,
    #[serde(default)]
    pub discount_codes: Vec<Value>,
    pub landing_site: Option<String>,
    pub referring_site: Option<String>,
}

/// Decodes a record of the checkouts, carts or orders topic.
pub fn journey_input(topic: Option<&str>, body: &[u8]) -> Result<JourneyInput, PoisonRecord> {
    let topic = shopify_topic(topic)?;
    Ok(match topic.as_str() {
        "checkouts/create" | "checkouts/update" => {
            let checkout: Checkout = decode(&topic, body)?;
            if checkout
                .line_items
                .iter()
                .any(|item| item.quantity > 1_000_000)
            {
                return Err(PoisonRecord::Impossible(
                    "line item quantity above 1,000,000",
                ));
            }
            if let Some(total) = &checkout.total_price {
                if crate::domain::money::Amount::parse(total).is_none() {
                    return Err(PoisonRecord::Impossible("total_price is not a decimal"));
                }
            }
            JourneyInput::Checkout(Box::new(checkout))
        }
        "checkouts/delete" => {
            decode::<serde::de::IgnoredAny>(&topic, body)?;
            JourneyInput::CheckoutDeleted
        }
        "carts/create" | "carts/update" => {
            decode::<serde::de::IgnoredAny>(&topic, body)?;
            JourneyInput::Cart
        }
        "orders/create" | "orders/updated" | "orders/paid" => {
            JourneyInput::Order(Box::new(decode(&topic, body)?))
        }
        _ => JourneyInput::Ignored,
    })
}

#[derive(Deserialize)]
struct ConsentPayload {
    customer_id: Option<u64>,
    id: Option<u64>,
    email_marketing_consent: Option<ConsentState>,
    sms_marketing_consent: Option<ConsentState>,
}

fn subscribed(consent: Option<ConsentState>) -> Option<bool> {
    consent
        .and_then(|c| c.state)
        .map(|state| state == "subscribed")
}

/// Decodes a record of the customers or compliance topic.
pub fn global_input(topic: Option<&str>, body: &[u8]) -> Result<GlobalInput, PoisonRecord> {
    let topic = shopify_topic(topic)?;
    Ok(match topic.as_str() {
        "customers/create"
        | "customers/update"
        | "customers_email_marketing_consent/update"
        | "customers_marketing_consent/update" => {
            let payload: ConsentPayload = decode(&topic, body)?;
            match payload.customer_id.or(payload.id) {
                Some(customer_id) => GlobalInput::Consent {
                    customer_id,
                    email: subscribed(payload.email_marketing_consent),
                    sms: subscribed(payload.sms_marketing_consent),
                },
                None => GlobalInput::Ignored,
            }
        }
        "customers/redact" => GlobalInput::RedactCustomer(Person::decode_redaction(&topic, body)?),
        "customers/data_request" => {
            GlobalInput::DataRequest(Box::new(DataRequest::decode(&topic, body)?))
        }
        "shop/redact" => GlobalInput::RedactShop,
        "app/uninstalled" => GlobalInput::Uninstalled,
        _ => GlobalInput::Ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/shopify");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    #[test]
    fn sample_checkouts_orders_and_carts_decode() {
        let JourneyInput::Checkout(checkout) =
            journey_input(Some("checkouts/create"), &fixture("checkouts_create.json")).unwrap()
        else {
            panic!("checkout")
        };
        assert_eq!(checkout.token.as_deref(), Some("123123123"));
        assert_eq!(
            checkout.customer.as_ref().unwrap().id,
            Some(603851970716743426)
        );
        assert_eq!(checkout.total_price.as_deref(), Some("421.88"));
        let JourneyInput::Order(order) =
            journey_input(Some("orders/paid"), &fixture("orders_paid.json")).unwrap()
        else {
            panic!("order")
        };
        assert_eq!(order.id, 820982911946154508);
        assert_eq!(
            journey_input(Some("carts/update"), &fixture("carts_update.json")).unwrap(),
            JourneyInput::Cart
        );
        assert_eq!(
            journey_input(Some("checkouts/delete"), &fixture("checkouts_delete.json")).unwrap(),
            JourneyInput::CheckoutDeleted
        );
        assert_eq!(
            journey_input(Some("orders/fulfilled"), b"{}").unwrap(),
            JourneyInput::Ignored
        );
    }

    #[test]
    fn broken_records_are_poison_with_a_reason() {
        assert_eq!(journey_input(None, b"{}"), Err(PoisonRecord::MissingTopic));
        assert!(matches!(
            journey_input(Some("checkouts/update"), b"{not json"),
            Err(PoisonRecord::Undecodable { .. })
        ));
        assert!(matches!(
            journey_input(Some("orders/create"), br#"{"id":"12"}"#),
            Err(PoisonRecord::Undecodable { .. })
        ));
        assert_eq!(
            journey_input(
                Some("checkouts/update"),
                br#"{"token":"t","total_price":"1e9"}"#
            ),
            Err(PoisonRecord::Impossible("total_price is not a decimal"))
        );
    }

    #[test]
    fn compliance_and_consent_decode() {
        assert_eq!(
            global_input(Some("customers/redact"), &fixture("customers_redact.json")).unwrap(),
            GlobalInput::RedactCustomer(Person {
                customer_id: Some(191167),
                email: Some("john@example.com".into()),
                phone: Some("5556251199".into()),
                orders: vec![220458, 280263, 299938],
            })
        );
        assert_eq!(
            global_input(Some("shop/redact"), &fixture("shop_redact.json")).unwrap(),
            GlobalInput::RedactShop
        );
        let consent = br#"{"customer_id":5,"email_address":"a@b.c","email_marketing_consent":{"state":"unsubscribed"}}"#;
        assert_eq!(
            global_input(Some("customers_email_marketing_consent/update"), consent).unwrap(),
            GlobalInput::Consent {
                customer_id: 5,
                email: Some(false),
                sms: None
            }
        );
    }

    #[test]
    fn discount_codes_come_from_objects_or_strings() {
        let values: Vec<Value> =
            serde_json::from_str(r#"[{"code":"SAVE10","amount":"10.00"},"RAW",{"amount":"1"},""]"#)
                .unwrap();
        assert_eq!(discount_codes(&values), vec!["SAVE10", "RAW"]);
    }

    #[test]
    fn a_malformed_redaction_is_applied_by_what_it_names_and_one_naming_no_one_is_kept() {
        let body = br#"{"customer":{"id":"42","email":7,"phone":15556251199},"orders_to_redact":[7,"8","x",null]}"#;
        let GlobalInput::RedactCustomer(person) =
            global_input(Some("customers/redact"), body).unwrap()
        else {
            panic!("a redaction")
        };
        assert_eq!(person.customer_id, Some(42));
        assert!(person.phone.is_some());
        assert_eq!(person.orders, vec![7, 8]);
        let none = global_input(
            Some("customers/redact"),
            br#"{"customer":{"id":null,"email":""},"orders_to_redact":"none"}"#,
        );
        assert_eq!(none.unwrap_err().as_label(), "unidentified_redaction");
    }
}

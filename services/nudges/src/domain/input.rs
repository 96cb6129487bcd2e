//! Decoding the records the nudges service reads (abandonment events, orders, checkouts,
//! customers and compliance) into the facts the engine acts on.

use aftercart_abandonment::domain::event::{EventType, Kind, OutputEvent};
pub use aftercart_shopify::decode::PoisonRecord;
use aftercart_shopify::decode::{decode, shopify_topic, ConsentState};
use aftercart_shopify::privacy::DataRequest;
use serde::Deserialize;

/// One fact, of one shop.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A checkout abandonment (only checkout abandonments have someone to remind).
    Abandoned(Box<OutputEvent>),
    /// A recovered abandonment (checkout or cart): what stops its sequence and what the
    /// nudge-attributed recovery KPI needs (who, when, how much).
    Recovered(Box<OutputEvent>),
    Order(Box<OrderFacts>),
    /// A deleted checkout, by its token and its cart token (the ingress keys a checkout by its
    /// cart token first, so the sample `checkouts/delete` without a token still names it).
    CheckoutDeleted {
        token: Option<String>,
        cart_token: Option<String>,
    },
    /// A consent change: `false` is an unsubscribe on that channel.
    Consent(ContactFacts, Channels),
    /// `customers/redact`: who, and the orders it lists (`orders_to_redact`).
    RedactCustomer(ContactFacts, Vec<u64>),
    RedactShop,
    /// `customers/data_request`: report what is held about the customer.
    DataRequest(Box<DataRequest>),
    /// Relevant topic, nothing to do (a cart abandonment, an unknown Shopify topic).
    Ignored,
}

/// Who a record is about: any of a customer id, an email, a phone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactFacts {
    pub customer_id: Option<u64>,
    pub email: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Channels {
    pub email: Option<bool>,
    pub sms: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderFacts {
    pub order_id: u64,
    pub buyer: ContactFacts,
    pub checkout_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CustomerJson {
    id: Option<u64>,
    email: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize)]
struct OrderJson {
    /// Required: an order without an id is not an order.
    id: u64,
    checkout_token: Option<String>,
    email: Option<String>,
    contact_email: Option<String>,
    phone: Option<String>,
    customer: Option<CustomerJson>,
}

#[derive(Deserialize)]
struct CheckoutJson {
    token: Option<String>,
    cart_token: Option<String>,
}

#[derive(Deserialize)]
struct CustomerConsentJson {
    customer_id: Option<u64>,
    id: Option<u64>,
    email: Option<String>,
    email_address: Option<String>,
    phone: Option<String>,
    email_marketing_consent: Option<ConsentState>,
    sms_marketing_consent: Option<ConsentState>,
}

/// `None` for an absent or blank field: Shopify sends `""` for a detail the buyer left out, and
/// a blank must not hide the next candidate (`order.email` `""` before `contact_email`).
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `subscribed` is a (re)subscribe, `unsubscribed` or `redacted` an opt-out; other states
/// (`not_subscribed`, `pending`, `invalid`) say nothing new: a customer record created at
/// checkout without marketing consent must not stop the merchant's transactional reminders.
fn subscribed(consent: Option<ConsentState>) -> Option<bool> {
    match consent.and_then(|c| c.state)?.to_ascii_lowercase().as_str() {
        "subscribed" => Some(true),
        "unsubscribed" | "redacted" => Some(false),
        _ => None,
    }
}

/// The source families read, and which Shopify topics of each matter.
pub fn is_relevant(family: &str, shopify_topic: Option<&str>) -> bool {
    if family == "abandonments" {
        return true;
    }
    matches!(
        shopify_topic.map(str::to_ascii_lowercase).as_deref(),
        Some(
            "orders/create"
                | "orders/paid"
                | "checkouts/delete"
                | "customers/create"
                | "customers/update"
                | "customers_email_marketing_consent/update"
                | "customers_marketing_consent/update"
                | "customers/redact"
                | "customers/data_request"
                | "shop/redact"
        )
    )
}

/// Decodes a by-shop record of `family` (`abandonments`, or a Shopify family with its
/// `shopify-topic` header).
pub fn decode_input(family: &str, topic: Option<&str>, body: &[u8]) -> Result<Input, PoisonRecord> {
    if family == "abandonments" {
        let event: OutputEvent = decode("abandonments", body)?;
        return Ok(match (event.event_type, event.kind) {
            (EventType::Abandoned, Kind::Checkout) => Input::Abandoned(Box::new(event)),
            (EventType::Recovered, _) => Input::Recovered(Box::new(event)),
            (EventType::Abandoned, Kind::Cart) => Input::Ignored,
        });
    }
    let topic = shopify_topic(topic)?;
    Ok(match topic.as_str() {
        "orders/create" | "orders/paid" => {
            let order: OrderJson = decode(&topic, body)?;
            let customer = order.customer.unwrap_or_default();
            Input::Order(Box::new(OrderFacts {
                order_id: order.id,
                buyer: ContactFacts {
                    customer_id: customer.id,
                    email: given(order.email)
                        .or(given(order.contact_email))
                        .or(given(customer.email)),
                    phone: given(order.phone).or(given(customer.phone)),
                },
                checkout_token: order.checkout_token,
            }))
        }
        "checkouts/delete" => {
            let checkout: CheckoutJson = decode(&topic, body)?;
            match (given(checkout.token), given(checkout.cart_token)) {
                (None, None) => Input::Ignored,
                (token, cart_token) => Input::CheckoutDeleted { token, cart_token },
            }
        }
        "customers/create"
        | "customers/update"
        | "customers_email_marketing_consent/update"
        | "customers_marketing_consent/update" => {
            let payload: CustomerConsentJson = decode(&topic, body)?;
            let channels = Channels {
                email: subscribed(payload.email_marketing_consent),
                sms: subscribed(payload.sms_marketing_consent),
            };
            let facts = ContactFacts {
                customer_id: payload.customer_id.or(payload.id),
                email: given(payload.email_address).or(given(payload.email)),
                phone: payload.phone,
            };
            if channels == Channels::default() {
                Input::Ignored
            } else {
                Input::Consent(facts, channels)
            }
        }
        "customers/redact" => {
            // Read as every service reads it: leniently, and refused only when it names no one.
            let redact = aftercart_shopify::privacy::Person::decode_redaction(&topic, body)?;
            Input::RedactCustomer(
                ContactFacts {
                    customer_id: redact.customer_id,
                    email: redact.email,
                    phone: redact.phone,
                },
                redact.orders,
            )
        }
        "customers/data_request" => {
            Input::DataRequest(Box::new(DataRequest::decode(&topic, body)?))
        }
        "shop/redact" => Input::RedactShop,
        _ => Input::Ignored,
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
    fn orders_name_their_buyer_by_id_email_and_phone() {
        let Input::Order(order) = decode_input(
            "orders",
            Some("orders/create"),
            &fixture("orders_create.json"),
        )
        .unwrap() else {
            panic!("an order")
        };
        assert!(order.buyer.customer_id.is_some() || order.buyer.email.is_some());
    }

    #[test]
    fn compliance_and_consent_decode() {
        assert_eq!(
            decode_input(
                "compliance",
                Some("shop/redact"),
                &fixture("shop_redact.json")
            )
            .unwrap(),
            Input::RedactShop
        );
        let Input::RedactCustomer(facts, orders) = decode_input(
            "compliance",
            Some("customers/redact"),
            &fixture("customers_redact.json"),
        )
        .unwrap() else {
            panic!("a redaction")
        };
        assert_eq!(facts.customer_id, Some(191167));
        assert!(!orders.is_empty());
        let consent = br#"{"customer_id":5,"email_address":"a@b.c","email_marketing_consent":{"state":"unsubscribed"}}"#;
        assert_eq!(
            decode_input(
                "customers",
                Some("customers_email_marketing_consent/update"),
                consent
            )
            .unwrap(),
            Input::Consent(
                ContactFacts {
                    customer_id: Some(5),
                    email: Some("a@b.c".into()),
                    phone: None
                },
                Channels {
                    email: Some(false),
                    sms: None
                }
            )
        );
    }

    #[test]
    fn a_data_request_is_read_with_who_it_names_and_its_id() {
        assert!(is_relevant("compliance", Some("customers/data_request")));
        let Input::DataRequest(request) = decode_input(
            "compliance",
            Some("customers/data_request"),
            &fixture("customers_data_request.json"),
        )
        .unwrap() else {
            panic!("a data request")
        };
        assert_eq!(request.person.customer_id, Some(191167));
        assert!(request.id.is_some());
        assert!(
            decode_input("compliance", Some("customers/data_request"), b"[1]").is_err(),
            "a body that is not an object is poison"
        );
    }

    #[test]
    fn only_an_explicit_unsubscribe_is_an_opt_out() {
        let update = |state: &str| {
            decode_input(
                "customers",
                Some("customers/update"),
                format!(r#"{{"id":5,"email_marketing_consent":{{"state":"{state}"}}}}"#).as_bytes(),
            )
            .unwrap()
        };
        assert!(matches!(update("unsubscribed"), Input::Consent(_, c) if c.email == Some(false)));
        assert!(matches!(update("subscribed"), Input::Consent(_, c) if c.email == Some(true)));
        assert_eq!(update("not_subscribed"), Input::Ignored);
    }

    #[test]
    fn broken_records_are_poison() {
        assert!(decode_input("orders", Some("orders/create"), b"{").is_err());
        assert!(decode_input("abandonments", None, b"{}").is_err());
        assert_eq!(
            decode_input("orders", None, b"{}"),
            Err(PoisonRecord::MissingTopic)
        );
    }

    #[test]
    fn a_malformed_redaction_is_applied_by_what_it_names_and_one_naming_no_one_is_kept() {
        let body = br#"{"customer":{"id":"42","email":7,"phone":15556251199},"orders_to_redact":[7,"8","x",null]}"#;
        let Input::RedactCustomer(facts, orders) =
            decode_input("compliance", Some("customers/redact"), body).unwrap()
        else {
            panic!("a redaction")
        };
        assert_eq!(facts.customer_id, Some(42));
        assert!(facts.phone.is_some());
        assert_eq!(orders, vec![7, 8]);
        let none = decode_input(
            "compliance",
            Some("customers/redact"),
            br#"{"customer":{"id":null,"email":""},"orders_to_redact":"none"}"#,
        );
        assert_eq!(none.unwrap_err().as_label(), "unidentified_redaction");
    }
}

//! What the audiences engine learns from a by-shop record: an abandonment or recovery (from
//! `aftercart.abandonments`), a purchase, a customer or consent change, or a redaction. Pure
//! decoding; a record that cannot be used gets a [`PoisonRecord`] reason.

use aftercart_shopify::decode::{decode, shopify_topic, PoisonRecord};
use aftercart_shopify::money::Amount;
use aftercart_shopify::privacy::DataRequest;
use aftercart_shopify::time::parse_time_ms;
use serde::Deserialize;

use crate::domain::consent::OptInLevel;
use crate::platform::Contact;

/// Who a fact is about: a customer id when Shopify has one, else an email address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonRef {
    pub customer_id: Option<u64>,
    pub email: Option<String>,
}

impl PersonRef {
    pub fn is_known(&self) -> bool {
        self.customer_id.is_some() || self.email.as_deref().is_some_and(|e| !e.trim().is_empty())
    }
}

/// A consent statement and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsentFact {
    pub subscribed: bool,
    pub at_ms: i64,
    /// Shopify's `opt_in_level`, when the statement has one.
    pub level: Option<OptInLevel>,
    pub channel: Channel,
}

/// The marketing channel a consent is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channel {
    #[default]
    Email,
    Sms,
}

/// The segment facts of an abandonment, as the abandonment service decided them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Abandonment {
    pub kind: String,
    pub stage: String,
    pub value_tier: String,
    pub customer_type: String,
    pub value: Option<Amount>,
    pub discount: bool,
    pub fence_sitter: bool,
}

/// A purchase's facts that order audiences filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// The order's id: a redaction's `orders_to_redact` names orders.
    pub order_id: Option<u64>,
    pub total: Option<Amount>,
    pub financial_status: String,
    pub test: bool,
    pub cancelled: bool,
}

/// A customer record's facts that customer audiences filter on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerFacts {
    pub orders_count: u64,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Abandoned {
        person: PersonRef,
        contact: Contact,
        consent: Option<ConsentFact>,
        at_ms: i64,
        facts: Abandonment,
    },
    Recovered {
        person: PersonRef,
        at_ms: i64,
    },
    Purchased {
        person: PersonRef,
        contact: Contact,
        consent: Option<ConsentFact>,
        at_ms: i64,
        purchase: Purchase,
    },
    Customer {
        person: PersonRef,
        contact: Contact,
        consent: Option<ConsentFact>,
        /// The customer's SMS marketing consent (Google's consent signals read it too).
        sms_consent: Option<ConsentFact>,
        facts: CustomerFacts,
    },
    CustomerDeleted {
        customer_id: u64,
    },
    Consent {
        person: PersonRef,
        consent: ConsentFact,
    },
    /// `customers/redact`: the person, their phone, and the orders to redact.
    Redact {
        person: PersonRef,
        phone: Option<String>,
        orders: Vec<u64>,
    },
    ShopRedact,
    /// `customers/data_request`: report what is held about the person.
    DataRequest(Box<DataRequest>),
    /// Relevant topic, nothing to do (e.g. a guest order without email or customer).
    Nothing,
}

/// Whether a source record matters to audiences, by family and Shopify topic.
pub fn is_relevant(family: &str, topic: Option<&str>) -> bool {
    let topic = topic
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match family {
        "abandonments" => true,
        "orders" => matches!(
            topic.as_str(),
            "orders/create" | "orders/paid" | "orders/updated" | "orders/cancelled"
        ),
        "customers" => matches!(
            topic.as_str(),
            "customers/create"
                | "customers/update"
                | "customers/delete"
                | "customers_email_marketing_consent/update"
                | "customers_marketing_consent/update"
        ),
        "compliance" => matches!(
            topic.as_str(),
            "customers/redact" | "shop/redact" | "customers/data_request"
        ),
        _ => false,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConsentJson {
    state: Option<String>,
    opt_in_level: Option<String>,
    consent_updated_at: Option<String>,
}

impl ConsentJson {
    fn fact(&self, fallback_ms: i64) -> Option<ConsentFact> {
        let state = self.state.as_deref()?;
        Some(ConsentFact {
            subscribed: state.eq_ignore_ascii_case("subscribed"),
            at_ms: self
                .consent_updated_at
                .as_deref()
                .and_then(parse_time_ms)
                .unwrap_or(fallback_ms),
            level: self.opt_in_level.as_deref().and_then(OptInLevel::parse),
            channel: Channel::Email,
        })
    }

    fn sms_fact(&self, fallback_ms: i64) -> Option<ConsentFact> {
        self.fact(fallback_ms).map(|fact| ConsentFact {
            channel: Channel::Sms,
            ..fact
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AddressJson {
    first_name: Option<String>,
    last_name: Option<String>,
    country_code: Option<String>,
    zip: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CustomerJson {
    id: Option<u64>,
    email: Option<String>,
    phone: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    email_marketing_consent: Option<ConsentJson>,
    sms_marketing_consent: Option<ConsentJson>,
    default_address: Option<AddressJson>,
    orders_count: Option<u64>,
    tags: Option<String>,
    updated_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OrderJson {
    id: Option<u64>,
    email: Option<String>,
    contact_email: Option<String>,
    phone: Option<String>,
    customer: Option<CustomerJson>,
    buyer_accepts_marketing: Option<bool>,
    financial_status: Option<String>,
    total_price: Option<String>,
    test: bool,
    cancelled_at: Option<String>,
    processed_at: Option<String>,
    created_at: Option<String>,
    billing_address: Option<AddressJson>,
    shipping_address: Option<AddressJson>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AbandonedCustomerJson {
    id: Option<u64>,
    email: Option<String>,
    phone: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    country: Option<String>,
    accepts_email_marketing: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ValueJson {
    amount: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SegmentsJson {
    stage: String,
    value_tier: String,
    customer: String,
    discount: bool,
    fence_sitter: bool,
}

#[derive(Deserialize)]
struct AbandonmentJson {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    customer: Option<AbandonedCustomerJson>,
    #[serde(default)]
    value: Option<ValueJson>,
    #[serde(default)]
    segments: Option<SegmentsJson>,
    #[serde(default)]
    abandoned_at: Option<String>,
    #[serde(default)]
    last_activity_at: Option<String>,
    #[serde(default)]
    recovered_at: Option<String>,
}

#[derive(Deserialize)]
struct ConsentUpdateJson {
    customer_id: Option<u64>,
    email_address: Option<String>,
    email_marketing_consent: Option<ConsentJson>,
}

/// `customers_marketing_consent/update`: a customer's SMS marketing consent.
#[derive(Deserialize)]
struct SmsConsentUpdateJson {
    id: Option<u64>,
    sms_marketing_consent: Option<ConsentJson>,
}

#[derive(Deserialize)]
struct DeletedJson {
    id: u64,
}

/// Decodes a by-shop record of `family` (the source topic family) received at `received_ms`.
pub fn decode_input(
    family: &str,
    topic: Option<&str>,
    body: &[u8],
    received_ms: i64,
) -> Result<Input, PoisonRecord> {
    if family == "abandonments" {
        return abandonment(body, received_ms);
    }
    let topic = shopify_topic(topic)?;
    match topic.as_str() {
        "orders/create" | "orders/paid" | "orders/updated" | "orders/cancelled" => {
            let order: OrderJson = decode(&topic, body)?;
            Ok(purchase(order, received_ms))
        }
        "customers/create" | "customers/update" => {
            let customer: CustomerJson = decode(&topic, body)?;
            Ok(customer_input(customer, received_ms))
        }
        "customers/delete" => {
            let deleted: DeletedJson = decode(&topic, body)?;
            Ok(Input::CustomerDeleted {
                customer_id: deleted.id,
            })
        }
        "customers_email_marketing_consent/update" => {
            let update: ConsentUpdateJson = decode(&topic, body)?;
            let person = PersonRef {
                customer_id: update.customer_id,
                email: update.email_address,
            };
            match update
                .email_marketing_consent
                .and_then(|c| c.fact(received_ms))
            {
                Some(consent) if person.is_known() => Ok(Input::Consent { person, consent }),
                _ => Ok(Input::Nothing),
            }
        }
        "customers_marketing_consent/update" => {
            let update: SmsConsentUpdateJson = decode(&topic, body)?;
            let person = PersonRef {
                customer_id: update.id,
                email: None,
            };
            match update
                .sms_marketing_consent
                .and_then(|c| c.sms_fact(received_ms))
            {
                Some(consent) if person.is_known() => Ok(Input::Consent { person, consent }),
                _ => Ok(Input::Nothing),
            }
        }
        "customers/redact" => {
            // Read as every service reads it: leniently, and refused only when it names no one.
            let redact = aftercart_shopify::privacy::Person::decode_redaction(&topic, body)?;
            Ok(Input::Redact {
                person: PersonRef {
                    customer_id: redact.customer_id,
                    email: redact.email,
                },
                phone: redact.phone,
                orders: redact.orders,
            })
        }
        "shop/redact" => Ok(Input::ShopRedact),
        "customers/data_request" => Ok(Input::DataRequest(Box::new(DataRequest::decode(
            &topic, body,
        )?))),
        _ => Ok(Input::Nothing),
    }
}

fn abandonment(body: &[u8], received_ms: i64) -> Result<Input, PoisonRecord> {
    let event: AbandonmentJson = decode("abandonments", body)?;
    let customer = event.customer.unwrap_or_default();
    let person = PersonRef {
        customer_id: customer.id,
        email: customer.email.clone(),
    };
    let time = |value: &Option<String>| value.as_deref().and_then(parse_time_ms);
    match event.event_type.as_str() {
        "abandoned" => {
            let at_ms = time(&event.abandoned_at).unwrap_or(received_ms);
            let consent = customer
                .accepts_email_marketing
                .map(|subscribed| ConsentFact {
                    subscribed,
                    at_ms: time(&event.last_activity_at).unwrap_or(at_ms),
                    ..ConsentFact::default()
                });
            let segments = event.segments.unwrap_or_default();
            Ok(Input::Abandoned {
                contact: Contact {
                    email: customer.email,
                    phone: customer.phone,
                    first_name: customer.first_name,
                    last_name: customer.last_name,
                    country: customer.country,
                    zip: None,
                },
                person,
                consent,
                at_ms,
                facts: Abandonment {
                    kind: event.kind,
                    stage: segments.stage,
                    value_tier: segments.value_tier,
                    customer_type: segments.customer,
                    value: event
                        .value
                        .and_then(|v| v.amount)
                        .and_then(|a| Amount::parse(&a)),
                    discount: segments.discount,
                    fence_sitter: segments.fence_sitter,
                },
            })
        }
        "recovered" => Ok(Input::Recovered {
            person,
            at_ms: time(&event.recovered_at).unwrap_or(received_ms),
        }),
        _ => Err(PoisonRecord::Impossible("unknown abandonment event type")),
    }
}

fn contact_of(
    customer: &CustomerJson,
    address: Option<&AddressJson>,
    email: Option<String>,
) -> Contact {
    let address_field = |f: fn(&AddressJson) -> &Option<String>| address.and_then(|a| f(a).clone());
    Contact {
        email: email.or_else(|| customer.email.clone()),
        phone: customer
            .phone
            .clone()
            .or_else(|| address_field(|a| &a.phone)),
        first_name: customer
            .first_name
            .clone()
            .or_else(|| address_field(|a| &a.first_name)),
        last_name: customer
            .last_name
            .clone()
            .or_else(|| address_field(|a| &a.last_name)),
        country: address_field(|a| &a.country_code),
        zip: address_field(|a| &a.zip),
    }
}

fn purchase(order: OrderJson, received_ms: i64) -> Input {
    let customer = order.customer.unwrap_or_default();
    let email = order
        .email
        .filter(|e| !e.trim().is_empty())
        .or(order.contact_email)
        .or_else(|| customer.email.clone());
    let person = PersonRef {
        customer_id: customer.id,
        email: email.clone(),
    };
    if !person.is_known() {
        return Input::Nothing;
    }
    let at_ms = order
        .processed_at
        .as_deref()
        .or(order.created_at.as_deref())
        .and_then(parse_time_ms)
        .unwrap_or(received_ms);
    let address = order
        .billing_address
        .as_ref()
        .or(order.shipping_address.as_ref());
    let mut contact = contact_of(&customer, address, email);
    if contact.phone.is_none() {
        contact.phone = order.phone;
    }
    // The customer's own consent record is the latest word; the checkout box is the fallback.
    let consent = customer
        .email_marketing_consent
        .as_ref()
        .and_then(|c| c.fact(at_ms))
        .or(order.buyer_accepts_marketing.map(|subscribed| ConsentFact {
            subscribed,
            at_ms,
            ..Default::default()
        }));
    Input::Purchased {
        person,
        contact,
        consent,
        at_ms,
        purchase: Purchase {
            order_id: order.id,
            total: order.total_price.as_deref().and_then(Amount::parse),
            financial_status: order.financial_status.unwrap_or_default(),
            test: order.test,
            cancelled: order.cancelled_at.is_some(),
        },
    }
}

fn customer_input(customer: CustomerJson, received_ms: i64) -> Input {
    let at_ms = customer
        .updated_at
        .as_deref()
        .and_then(parse_time_ms)
        .unwrap_or(received_ms);
    let consent = customer
        .email_marketing_consent
        .as_ref()
        .and_then(|c| c.fact(at_ms));
    let sms_consent = customer
        .sms_marketing_consent
        .as_ref()
        .and_then(|c| c.sms_fact(at_ms));
    let contact = contact_of(&customer, customer.default_address.as_ref(), None);
    Input::Customer {
        person: PersonRef {
            customer_id: customer.id,
            email: customer.email.clone(),
        },
        contact,
        consent,
        sms_consent,
        facts: CustomerFacts {
            orders_count: customer.orders_count.unwrap_or(0),
            tags: customer
                .tags
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../../shared/fixtures/shopify/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap_or_default()
    }

    #[test]
    fn an_abandonment_event_carries_contact_consent_and_segments() {
        let body = br#"{"type":"abandoned","kind":"checkout","event_id":"x","shop":"s","customer":{"id":7,"email":"Ann@Example.com","phone":null,"first_name":"Ann","last_name":"Lee","country":"GB","accepts_email_marketing":true,"accepts_sms_marketing":false},"value":{"amount":"120.00","currency":"GBP"},"segments":{"stage":"payment","value_tier":"high","customer":"new","contactable":{},"consent":{},"discount":false,"fence_sitter":true,"repeat":0},"abandoned_at":"2026-01-01T10:00:00Z","last_activity_at":"2026-01-01T09:00:00Z"}"#;
        let Input::Abandoned {
            person,
            contact,
            consent,
            facts,
            ..
        } = decode_input("abandonments", None, body, 0).unwrap()
        else {
            panic!("not an abandonment");
        };
        assert_eq!(person.customer_id, Some(7));
        assert_eq!(contact.country.as_deref(), Some("GB"));
        assert!(consent.unwrap().subscribed);
        assert_eq!(facts.value_tier, "high");
        assert_eq!(facts.value, Amount::parse("120"));
        assert!(facts.fence_sitter);
    }

    #[test]
    fn a_recovery_names_the_person() {
        let body = br#"{"type":"recovered","kind":"checkout","customer":{"id":7,"email":"a@b.c"},"recovered_at":"2026-01-01T10:00:00Z"}"#;
        assert!(matches!(
            decode_input("abandonments", None, body, 0).unwrap(),
            Input::Recovered {
                person: PersonRef {
                    customer_id: Some(7),
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn the_sample_order_is_a_purchase_with_a_customer_and_an_address() {
        let body = fixture("orders_create.json");
        if body.is_empty() {
            return; // fixtures live outside the repository on some machines
        }
        let input = decode_input("orders", Some("orders/create"), &body, 0).unwrap();
        let Input::Purchased {
            person, contact, ..
        } = input
        else {
            panic!("not a purchase: {input:?}");
        };
        assert!(person.is_known());
        assert!(contact.email.is_some() || contact.phone.is_some());
    }

    #[test]
    fn a_consent_update_says_who_and_when() {
        let body = br#"{"customer_id":706405506930370084,"email_address":"bob@biller.com","email_marketing_consent":{"state":"unsubscribed","opt_in_level":null,"consent_updated_at":"2026-03-01T00:00:00Z"}}"#;
        let input = decode_input(
            "customers",
            Some("customers_email_marketing_consent/update"),
            body,
            0,
        )
        .unwrap();
        let Input::Consent { person, consent } = input else {
            panic!("not consent");
        };
        assert_eq!(person.customer_id, Some(706405506930370084));
        assert!(!consent.subscribed);
        assert_eq!(
            consent.at_ms,
            parse_time_ms("2026-03-01T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn a_customer_brings_both_consents_with_their_opt_in_levels() {
        let body = br#"{"id":1,"email":"a@b.c",
            "email_marketing_consent":{"state":"subscribed","opt_in_level":"single_opt_in","consent_updated_at":"2026-03-01T00:00:00Z"},
            "sms_marketing_consent":{"state":"subscribed","opt_in_level":"confirmed_opt_in","consent_updated_at":"2026-03-02T00:00:00Z","consent_collected_from":"SHOPIFY"}}"#;
        let Input::Customer {
            consent,
            sms_consent,
            ..
        } = decode_input("customers", Some("customers/update"), body, 0).unwrap()
        else {
            panic!("not a customer");
        };
        let email = consent.unwrap();
        assert_eq!(email.level, Some(OptInLevel::SingleOptIn));
        assert_eq!(email.channel, Channel::Email);
        let sms = sms_consent.unwrap();
        assert!(sms.subscribed);
        assert_eq!(sms.level, Some(OptInLevel::ConfirmedOptIn));
        assert_eq!(sms.channel, Channel::Sms);
    }

    #[test]
    fn an_sms_consent_update_and_the_orders_to_redact_are_read() {
        let body = br#"{"id":5,"phone":"+13125551212","sms_marketing_consent":{"state":"unsubscribed","opt_in_level":"single_opt_in"}}"#;
        let Input::Consent { person, consent } = decode_input(
            "customers",
            Some("customers_marketing_consent/update"),
            body,
            7,
        )
        .unwrap() else {
            panic!("not a consent");
        };
        assert_eq!(person.customer_id, Some(5));
        assert_eq!(consent.channel, Channel::Sms);
        assert!(!consent.subscribed);
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/shopify/customers_redact.json"
        );
        let body = std::fs::read(fixture).unwrap();
        let Input::Redact { orders, phone, .. } =
            decode_input("compliance", Some("customers/redact"), &body, 0).unwrap()
        else {
            panic!("not a redaction");
        };
        // Read by the shared decoder: orders sorted, the phone as its compared digits.
        assert_eq!(orders, [220458, 280263, 299938]);
        assert_eq!(phone.as_deref(), Some("5556251199"));
    }

    #[test]
    fn ids_above_two_to_the_53_stay_exact() {
        let body = br#"{"id":9007199254740993,"email":"x@y.z"}"#;
        let Input::Customer { person, .. } =
            decode_input("customers", Some("customers/update"), body, 0).unwrap()
        else {
            panic!("not a customer");
        };
        assert_eq!(person.customer_id, Some(9007199254740993));
    }

    #[test]
    fn a_body_that_is_not_json_is_poison_and_an_unknown_event_type_too() {
        assert!(decode_input("customers", Some("customers/update"), b"nope", 0).is_err());
        assert!(decode_input("abandonments", None, br#"{"type":"weird"}"#, 0).is_err());
        assert!(decode_input("orders", None, b"{}", 0).is_err());
    }

    #[test]
    fn only_the_topics_audiences_use_are_routed() {
        assert!(is_relevant("orders", Some("orders/paid")));
        assert!(!is_relevant("orders", Some("orders/fulfilled")));
        assert!(is_relevant("compliance", Some("shop/redact")));
        assert!(is_relevant("compliance", Some("customers/data_request")));
        assert!(is_relevant("abandonments", None));
        assert!(!is_relevant("checkouts", Some("checkouts/create")));
    }

    #[test]
    fn a_malformed_redaction_is_applied_by_what_it_names_and_one_naming_no_one_is_kept() {
        let body = br#"{"customer":{"id":"42","email":7,"phone":15556251199},"orders_to_redact":[7,"8","x",null]}"#;
        let Input::Redact {
            person,
            phone,
            orders,
        } = decode_input("compliance", Some("customers/redact"), body, 0).unwrap()
        else {
            panic!("a redaction")
        };
        assert_eq!(person.customer_id, Some(42));
        assert!(phone.is_some());
        assert_eq!(orders, vec![7, 8]);
        let none = decode_input(
            "compliance",
            Some("customers/redact"),
            br#"{"customer":{"id":null,"email":""},"orders_to_redact":"none"}"#,
            0,
        );
        assert_eq!(none.unwrap_err().as_label(), "unidentified_redaction");
    }
}

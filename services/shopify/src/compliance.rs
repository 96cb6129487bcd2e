//! The compliance topics are authenticated by their body, not their headers.
//!
//! Shopify's HMAC covers only the body, so the `X-Shopify-Topic` and `X-Shopify-Shop-Domain`
//! headers of an authentic delivery can be changed at will by whoever replays it: a
//! `customers/redact` body resent as `shop/redact` would wipe a whole shop, and one shop's body
//! sent under another shop's domain would act on the wrong shop. For `customers/redact`,
//! `shop/redact` and `customers/data_request` the body itself names the shop and has a shape of
//! its own, so those must agree with the headers before the delivery is acted on.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use crate::PayloadError;

/// The compliance topics whose body must agree with the headers.
const CHECKED: [&str; 3] = ["customers/redact", "customers/data_request", "shop/redact"];

/// Checks an authentic JSON object body against its headers: `topic` (`X-Shopify-Topic`, any
/// case) and `shop` (`X-Shopify-Shop-Domain`). Only the three compliance topics above are
/// checked; every other topic passes. The body's `shop_domain` must name the header's shop, a
/// `shop_id` (where present) must be a positive integer, and the body's fields must be those of
/// its topic:
///
/// - `customers/redact`: a `customer` object and an `orders_to_redact` array, no `data_request`
///   or `orders_requested`;
/// - `customers/data_request`: a `customer` object and a `data_request` object, no
///   `orders_to_redact`;
/// - `shop/redact`: none of `customer`, `orders_to_redact`, `orders_requested`, `data_request`.
pub fn check_compliance_body(topic: &str, shop: &str, body: &[u8]) -> Result<(), PayloadError> {
    let topic = topic.trim().to_ascii_lowercase();
    if !CHECKED.contains(&topic.as_str()) {
        return Ok(());
    }
    // A body journey_key accepted is a JSON object; anything unreadable here is not the shape.
    let fields: Fields = serde_json::from_slice(body).map_err(|_| PayloadError::ComplianceShape)?;
    if fields.repeated {
        // Which of two `shop_domain`s would a consumer read? Neither is trusted.
        return Err(PayloadError::ComplianceShape);
    }
    match &fields.shop_domain {
        Kind::String(domain) if domain.trim().eq_ignore_ascii_case(shop.trim()) => {}
        _ => return Err(PayloadError::ComplianceShopMismatch),
    }
    if !matches!(fields.shop_id, Kind::Absent | Kind::PositiveInteger) {
        return Err(PayloadError::ComplianceShape);
    }
    let customer = matches!(fields.customer, Kind::Object);
    let fits = match topic.as_str() {
        "customers/redact" => {
            customer
                && matches!(fields.orders_to_redact, Kind::Array)
                && fields.data_request.is_absent()
                && fields.orders_requested.is_absent()
        }
        "customers/data_request" => {
            customer
                && matches!(fields.data_request, Kind::Object)
                && fields.orders_to_redact.is_absent()
        }
        _ => {
            fields.customer.is_absent()
                && fields.orders_to_redact.is_absent()
                && fields.orders_requested.is_absent()
                && fields.data_request.is_absent()
        }
    };
    if fits {
        Ok(())
    } else {
        Err(PayloadError::ComplianceShape)
    }
}

/// What a top-level field holds; only the shop domain's value is kept.
#[derive(Debug, Default, PartialEq)]
enum Kind {
    #[default]
    Absent,
    String(String),
    PositiveInteger,
    Object,
    Array,
    /// null, a boolean, a float, zero or a negative number.
    Other,
}

impl Kind {
    fn is_absent(&self) -> bool {
        matches!(self, Kind::Absent)
    }
}

#[derive(Default)]
struct Fields {
    shop_domain: Kind,
    shop_id: Kind,
    customer: Kind,
    orders_to_redact: Kind,
    orders_requested: Kind,
    data_request: Kind,
    /// One of the fields above appears twice.
    repeated: bool,
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        while let Some(name) = map.next_key::<String>()? {
            let slot = match name.as_str() {
                "shop_domain" => &mut fields.shop_domain,
                "shop_id" => &mut fields.shop_id,
                "customer" => &mut fields.customer,
                "orders_to_redact" => &mut fields.orders_to_redact,
                "orders_requested" => &mut fields.orders_requested,
                "data_request" => &mut fields.data_request,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            fields.repeated |= !slot.is_absent();
            *slot = map.next_value::<KindOf>()?.0;
        }
        Ok(fields)
    }
}

/// Reads any JSON value as its [`Kind`], skipping nested contents unbuilt.
struct KindOf(Kind);

impl<'de> Deserialize<'de> for KindOf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KindVisitor).map(KindOf)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::String(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(if v > 0 {
            Kind::PositiveInteger
        } else {
            Kind::Other
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(if v > 0 {
            Kind::PositiveInteger
        } else {
            Kind::Other
        })
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Kind::Array)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Kind::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = "jsmith.myshopify.com";

    fn sample(name: &str, shop: &str) -> Vec<u8> {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/shopify");
        std::fs::read_to_string(format!("{fixtures}/{name}"))
            .unwrap()
            .replace("{shop}.myshopify.com", shop)
            .into_bytes()
    }

    #[test]
    fn the_samples_fit_their_own_topics_whatever_the_header_case() {
        for (file, topic) in [
            ("customers_redact.json", "customers/redact"),
            ("customers_data_request.json", "customers/data_request"),
            ("shop_redact.json", "shop/redact"),
        ] {
            let body = sample(file, SHOP);
            assert_eq!(check_compliance_body(topic, SHOP, &body), Ok(()), "{file}");
            assert_eq!(
                check_compliance_body(&topic.to_uppercase(), "JSmith.myshopify.com", &body),
                Ok(()),
                "{file}"
            );
        }
    }

    #[test]
    fn a_body_replayed_under_another_compliance_topic_is_refused() {
        let redact = sample("customers_redact.json", SHOP);
        let request = sample("customers_data_request.json", SHOP);
        let shop = sample("shop_redact.json", SHOP);
        for (topic, body) in [
            ("shop/redact", &redact),
            ("shop/redact", &request),
            ("customers/redact", &request),
            ("customers/redact", &shop),
            ("customers/data_request", &redact),
            ("customers/data_request", &shop),
        ] {
            assert_eq!(
                check_compliance_body(topic, SHOP, body),
                Err(PayloadError::ComplianceShape),
                "{topic}"
            );
        }
    }

    #[test]
    fn a_body_naming_another_shop_or_none_is_refused() {
        let other = sample("shop_redact.json", "victim.myshopify.com");
        for body in [
            &other[..],
            br#"{"shop_id":954889}"#,
            br#"{"shop_id":954889,"shop_domain":null}"#,
            br#"{"shop_id":954889,"shop_domain":["jsmith.myshopify.com"]}"#,
        ] {
            assert_eq!(
                check_compliance_body("shop/redact", SHOP, body),
                Err(PayloadError::ComplianceShopMismatch)
            );
        }
    }

    #[test]
    fn odd_shop_ids_and_repeated_fields_are_not_the_shape() {
        for body in [
            r#"{"shop_id":"954889","shop_domain":"jsmith.myshopify.com"}"#,
            r#"{"shop_id":-1,"shop_domain":"jsmith.myshopify.com"}"#,
            r#"{"shop_id":1.5,"shop_domain":"jsmith.myshopify.com"}"#,
            r#"{"shop_domain":"jsmith.myshopify.com","shop_domain":"victim.myshopify.com"}"#,
            r#"{"shop_domain":"jsmith.myshopify.com","customer":null}"#,
        ] {
            assert_eq!(
                check_compliance_body("shop/redact", SHOP, body.as_bytes()),
                Err(PayloadError::ComplianceShape),
                "{body}"
            );
        }
        assert_eq!(
            check_compliance_body(
                "shop/redact",
                SHOP,
                br#"{"shop_domain":"jsmith.myshopify.com","extra":{"a":[1]}}"#
            ),
            Ok(()),
            "fields Shopify may add are ignored"
        );
    }

    #[test]
    fn other_topics_are_not_checked() {
        for topic in ["app/uninstalled", "orders/create", "shop/update"] {
            assert_eq!(check_compliance_body(topic, SHOP, b"{}"), Ok(()));
        }
    }
}

//! Who a `customers/redact` or `customers/data_request` names, read the same way by every
//! consumer service: the customer id, email, phone and the orders the request lists, with the
//! comparisons that decide whether a fact is about that person; and the report record each
//! service writes to answer a data request (`schemas/aftercart/data-requests.schema.json`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::{decode, PoisonRecord};

pub mod markers;

/// The person a compliance request is about. Emails are trimmed and lower-cased; phones are
/// kept as `+<digits>` when written with their country code, else as their last digits
/// ([`canonical_phone`]), and compared with [`same_phone`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Person {
    pub customer_id: Option<u64>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// `orders_to_redact` of a redaction, `orders_requested` of a data request.
    pub orders: Vec<u64>,
}

impl Person {
    /// Reads a `customers/redact` or `customers/data_request` body, leniently: each identifier
    /// is taken where it can be read (an id or order id as a number or a string of digits, a
    /// phone as a string or a number) and a malformed one is skipped, so that one bad field
    /// never costs the rest of a redaction. Only a body that is not a JSON object is poison.
    pub fn decode(topic: &str, body: &[u8]) -> Result<Person, PoisonRecord> {
        let payload: serde_json::Value = decode(topic, body)?;
        let Some(payload) = payload.as_object() else {
            return Err(PoisonRecord::Undecodable {
                topic: topic.to_string(),
                reason: "the body is not a JSON object".to_string(),
            });
        };
        let customer = payload.get("customer");
        let field = |name: &str| customer.and_then(|c| c.get(name));
        let mut orders: Vec<u64> = ["orders_to_redact", "orders_requested"]
            .iter()
            .filter_map(|name| payload.get(*name)?.as_array())
            .flatten()
            .filter_map(lenient_id)
            .collect();
        orders.sort_unstable();
        orders.dedup();
        Ok(Person {
            customer_id: field("id").and_then(lenient_id),
            email: field("email")
                .and_then(serde_json::Value::as_str)
                .and_then(normal_email),
            phone: field("phone")
                .and_then(lenient_text)
                .as_deref()
                .and_then(canonical_phone),
            orders,
        })
    }

    /// Reads a `customers/redact` for applying it: as [`Person::decode`], and refused as
    /// [`PoisonRecord::UnidentifiedRedaction`] when nothing in it identifies anyone (it is kept
    /// in the dead-letter topic, counted and alerted on: never dropped silently).
    pub fn decode_redaction(topic: &str, body: &[u8]) -> Result<Person, PoisonRecord> {
        match Person::decode(topic, body) {
            Ok(person) if !person.is_empty() => Ok(person),
            _ => Err(PoisonRecord::UnidentifiedRedaction),
        }
    }

    /// True when nothing identifies anyone: such a request matches no fact.
    pub fn is_empty(&self) -> bool {
        self.customer_id.is_none()
            && self.email.is_none()
            && self.phone.is_none()
            && self.orders.is_empty()
    }

    /// True when a fact naming this customer id, email, phone or order is about this person.
    pub fn matches(
        &self,
        customer_id: Option<u64>,
        email: Option<&str>,
        phone: Option<&str>,
        order_id: Option<u64>,
    ) -> bool {
        (self.customer_id.is_some() && customer_id == self.customer_id)
            || same(&self.email, email, normal_email)
            || self
                .phone
                .as_deref()
                .zip(phone)
                .is_some_and(|(want, have)| same_phone(want, have))
            || order_id.is_some_and(|id| self.orders.contains(&id))
    }

    /// True when a held record naming this customer id, email, phone or order is this
    /// person's own, for answering their data request: as [`Person::matches`], except that a
    /// record of another customer id is never theirs (a household sharing an email or a phone
    /// must not read each other's data; a redaction, by contrast, errs towards forgetting).
    pub fn owns(
        &self,
        customer_id: Option<u64>,
        email: Option<&str>,
        phone: Option<&str>,
        order_id: Option<u64>,
    ) -> bool {
        let other = self
            .customer_id
            .zip(customer_id)
            .is_some_and(|(a, b)| a != b);
        !other && self.matches(customer_id, email, phone, order_id)
    }
}

/// Both present and equal once normalised (a `Person` built by hand may hold raw values).
fn same(want: &Option<String>, have: Option<&str>, normal: fn(&str) -> Option<String>) -> bool {
    let want = want.as_deref().and_then(normal);
    want.is_some() && have.and_then(normal) == want
}

/// A `customers/data_request`: who, and the id Shopify gave the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataRequest {
    pub person: Person,
    pub id: Option<u64>,
}

impl DataRequest {
    pub fn decode(topic: &str, body: &[u8]) -> Result<DataRequest, PoisonRecord> {
        Ok(DataRequest {
            person: Person::decode(topic, body)?,
            id: data_request_id(topic, body)?,
        })
    }
}

/// Shopify expects the merchant to answer a data request within 30 days.
pub const DATA_REQUEST_DEADLINE_MS: i64 = 30 * 86_400_000;

/// One thing a service holds about the customer: its kind (`customer`, `order`, `journey`,
/// `audience`...), the service's key for it, and what is held, as the service stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holding {
    pub kind: String,
    pub key: String,
    pub data: serde_json::Value,
}

impl Holding {
    pub fn new(kind: &str, key: impl Into<String>, data: serde_json::Value) -> Holding {
        Holding {
            kind: kind.to_string(),
            key: key.into(),
            data,
        }
    }
}

/// The names of the contact fields a record holds (those with a value), for a report to say
/// which personal data is kept without a reader having to know the record's shape.
pub fn contact_fields<'a>(fields: impl IntoIterator<Item = (&'a str, bool)>) -> Vec<&'a str> {
    fields
        .into_iter()
        .filter(|(_, held)| *held)
        .map(|(name, _)| name)
        .collect()
}

/// One service's answer to a `customers/data_request`, written to `aftercart.data_requests`:
/// everything it holds about the customer (empty `holdings`: nothing). It holds personal data by
/// design: it is the customer's own data, for the merchant to pass on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRequestReport {
    /// Deterministic ([`report_event_id`]): a redelivered request gives the same id.
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `abandonment`, `referrals`, `audiences`.
    pub service: String,
    pub shop: String,
    pub data_request_id: Option<u64>,
    pub customer_id: Option<u64>,
    pub answered_at: String,
    /// 30 days after the request was read: Shopify's deadline for the merchant's answer.
    pub respond_by: String,
    pub holdings: Vec<Holding>,
}

impl DataRequestReport {
    /// The report of `service` for `request` of `shop`, read at `at_ms`.
    pub fn new(
        service: &str,
        shop: &str,
        request: &DataRequest,
        at_ms: i64,
        holdings: Vec<Holding>,
    ) -> DataRequestReport {
        DataRequestReport {
            event_id: report_event_id(service, shop, request),
            event_type: "data_request.answered".to_string(),
            service: service.to_string(),
            shop: shop.to_string(),
            data_request_id: request.id,
            customer_id: request.person.customer_id,
            answered_at: crate::time::rfc3339(at_ms),
            respond_by: crate::time::rfc3339(at_ms + DATA_REQUEST_DEADLINE_MS),
            holdings,
        }
    }
}

/// `sha256("aftercart/data-request/<service>/<shop>/<request id or customer id>")`, 32 hex.
pub fn report_event_id(service: &str, shop: &str, request: &DataRequest) -> String {
    let who = match (request.id, request.person.customer_id) {
        (Some(id), _) => format!("request:{id}"),
        (None, Some(customer)) => format!("customer:{customer}"),
        (None, None) => "unknown".to_string(),
    };
    let digest = Sha256::digest(format!("aftercart/data-request/{service}/{shop}/{who}"));
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The id Shopify gave a data request (`data_request.id`), for the report's event id.
/// Read as leniently as the person ([`Person::decode`]).
pub fn data_request_id(topic: &str, body: &[u8]) -> Result<Option<u64>, PoisonRecord> {
    let payload: serde_json::Value = decode(topic, body)?;
    Ok(payload
        .get("data_request")
        .and_then(|d| d.get("id"))
        .and_then(lenient_id))
}

/// An id written as a number or as a string of digits (a positive integer either way).
fn lenient_id(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|id| *id > 0)
}

/// Text written as a string or a whole number (a phone sent as digits); a fraction or a
/// negative number is no phone (`5556251199.0` would read as other digits, another person).
fn lenient_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}

/// An email as compared: trimmed, lower-cased; `None` when empty.
pub fn normal_email(email: &str) -> Option<String> {
    let email = email.trim().to_ascii_lowercase();
    (!email.is_empty()).then_some(email)
}

/// Whether two phones are one number: with both written internationally (`+` or `00` and the
/// country code), all their digits agree, so `+1 770 090 0123` is not `+44 7700 900123`;
/// otherwise their last 10 digits ([`normal_phone`]) do.
pub fn same_phone(a: &str, b: &str) -> bool {
    match (international_phone(a), international_phone(b)) {
        (Some(a), Some(b)) => a == b,
        _ => normal_phone(a).is_some_and(|a| normal_phone(b) == Some(a)),
    }
}

/// A phone written with its country code (`+44 7700 900123`, `0044 7700 900123`) as
/// `+<digits>`; `None` for a national form or fewer than 8 digits.
pub fn international_phone(phone: &str) -> Option<String> {
    let phone = phone.trim();
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    let digits = if phone.starts_with('+') {
        digits.as_str()
    } else if phone.starts_with("00") {
        &digits[2..]
    } else {
        return None;
    };
    (digits.len() >= 8).then(|| format!("+{digits}"))
}

/// How a request's phone is kept: [`international_phone`] when it has its country code, else
/// [`normal_phone`]; both forms still compare with [`same_phone`] and [`normal_phone`].
pub fn canonical_phone(phone: &str) -> Option<String> {
    international_phone(phone).or_else(|| normal_phone(phone))
}

/// The national numbers a phone may be, so that a phone typed nationally is found under its
/// international form where [`normal_phone`]'s last 10 digits disagree (a country whose
/// numbers have fewer than 10 national digits: `06 12 34 56 78` is `+33 6 12 34 56 78`,
/// `612 34 56 78` is `+34 612 34 56 78`): written with its country code, the digits after a
/// country code of 1, 2 or 3 digits (which one is unknown without a numbering plan); written
/// nationally, the digits as written and without a trunk prefix `0`. Each has at least 7
/// digits. Two numbers may be one when their lists share a value.
pub fn national_phones(phone: &str) -> Vec<String> {
    let mut national: Vec<String> = match international_phone(phone) {
        Some(international) => (1..=3)
            .filter_map(|code| international.get(1 + code..))
            .map(str::to_string)
            .collect(),
        None => {
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            let trunkless = digits.strip_prefix('0').map(str::to_string);
            std::iter::once(digits).chain(trunkless).collect()
        }
    };
    national.retain(|n| n.len() >= 7);
    national.dedup();
    national
}

/// A phone as compared: its last 10 digits, so a number with and without its country code or
/// trunk prefix is one (`555-625-1199` is `+1 555 625 1199`, `07700 900123` is
/// `+44 7700 900123`); `None` with fewer than 7 digits (no real number is shorter).
pub fn normal_phone(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 7 {
        return None;
    }
    Some(digits[digits.len().saturating_sub(10)..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDACT: &str = r#"{"shop_id":954889,"shop_domain":"s.myshopify.com",
        "customer":{"id":191167,"email":" John@Example.com","phone":"555-625-1199"},
        "orders_to_redact":[299938,280263]}"#;

    #[test]
    fn a_redaction_names_the_customer_by_id_email_phone_and_orders() {
        let person = Person::decode("customers/redact", REDACT.as_bytes()).unwrap();
        assert_eq!(person.customer_id, Some(191167));
        assert_eq!(person.email.as_deref(), Some("john@example.com"));
        assert_eq!(person.phone.as_deref(), Some("5556251199"));
        assert_eq!(
            normal_phone("+44 7700 900123"),
            normal_phone("07700 900123")
        );
        assert_eq!(person.orders, vec![280263, 299938]);
        assert!(person.matches(Some(191167), None, None, None));
        assert!(person.matches(None, Some("JOHN@example.com "), None, None));
        assert!(person.matches(None, None, Some("+1 (555) 625-1199"), None));
        assert!(person.matches(None, None, None, Some(280263)));
        assert!(!person.matches(
            Some(1),
            Some("jane@example.com"),
            Some("555-625-1198"),
            Some(1)
        ));
        assert!(!person.matches(None, None, Some("1199"), None));
    }

    #[test]
    fn a_phone_typed_nationally_shares_a_national_number_with_its_international_form() {
        let shared = |a: &str, b: &str| {
            let b = national_phones(b);
            national_phones(a).iter().any(|n| b.contains(n))
        };
        for (international, national) in [
            ("+33612345678", "06 12 34 56 78"),
            ("+34 612 345 678", "612 34 56 78"),
            ("+45 12 34 56 78", "12 34 56 78"),
            ("+39 06 1234 5678", "06 1234 5678"),
            ("0044 7700 900123", "07700 900123"),
        ] {
            assert!(
                shared(international, national),
                "{international} {national}"
            );
            assert!(
                shared(national, international),
                "{national} {international}"
            );
        }
        assert!(!shared("+33612345678", "06 12 34 56 79"));
        assert!(!shared("+33612345678", "12"));
        assert!(national_phones("123456").is_empty());
    }

    #[test]
    fn phones_in_two_countries_with_the_same_last_ten_digits_are_two_people() {
        let body = br#"{"customer":{"id":1,"phone":"+1 770-090-0123"}}"#;
        let person = Person::decode("customers/redact", body).unwrap();
        // The same number, written nationally or internationally.
        for same in [
            "770-090-0123",
            "+1 (770) 090-0123",
            "001 770 090 0123",
            "17700900123",
        ] {
            assert!(person.matches(None, None, Some(same), None), "{same}");
        }
        // A UK mobile whose last ten digits are the same: someone else.
        for other in ["+44 7700 900123", "0044 7700 900123"] {
            assert!(!person.matches(None, None, Some(other), None), "{other}");
        }
    }

    #[test]
    fn a_data_request_lists_its_orders_and_its_id() {
        let body = br#"{"customer":{"id":7},"orders_requested":[3],"data_request":{"id":9999}}"#;
        let person = Person::decode("customers/data_request", body).unwrap();
        assert_eq!(person.orders, vec![3]);
        assert_eq!(
            data_request_id("customers/data_request", body).unwrap(),
            Some(9999)
        );
    }

    #[test]
    fn a_report_has_a_deterministic_id_and_the_30_day_deadline() {
        let body = br#"{"customer":{"id":7},"orders_requested":[3],"data_request":{"id":9999}}"#;
        let request = DataRequest::decode("customers/data_request", body).unwrap();
        let report = DataRequestReport::new("referrals", "s.myshopify.com", &request, 0, vec![]);
        assert_eq!(
            report.event_id,
            report_event_id("referrals", "s.myshopify.com", &request)
        );
        assert_eq!(report.event_id.len(), 32);
        assert_ne!(
            report.event_id,
            report_event_id("abandonment", "s.myshopify.com", &request)
        );
        assert_eq!(report.respond_by, "1970-01-31T00:00:00.000Z");
        assert_eq!(report.data_request_id, Some(9999));
    }

    #[test]
    fn a_malformed_redaction_still_names_whoever_it_can() {
        // Ids as strings, the phone as a number, a bad order id among good ones, an email that
        // is not a string: what can be read is kept.
        let body = br#"{"customer":{"id":"191167","email":5,"phone":15556251199},
            "orders_to_redact":["299938",280263,"x",null,-1]}"#;
        let person = Person::decode_redaction("customers/redact", body).unwrap();
        assert_eq!(person.customer_id, Some(191167));
        assert_eq!(person.email, None);
        assert!(person.matches(None, None, Some("555-625-1199"), None));
        assert_eq!(person.orders, vec![280263, 299938]);
        let body = br#"{"customer":[1,2],"orders_to_redact":{"id":3}}"#;
        let person = Person::decode("customers/redact", body).unwrap();
        assert!(person.is_empty());
    }

    #[test]
    fn a_phone_written_as_a_fraction_or_negative_number_names_no_one() {
        // 5556251199.0 would read as the digits 55562511990: another number, another person.
        for phone in ["5.556251199e9", "5556251199.0", "-5556251199"] {
            let body = format!(r#"{{"customer":{{"id":1,"phone":{phone}}}}}"#);
            let person = Person::decode("customers/redact", body.as_bytes()).unwrap();
            assert_eq!(person.phone, None, "{phone}");
        }
    }

    #[test]
    fn a_redaction_that_names_no_one_is_refused_with_its_own_label() {
        for body in [
            &br#"{"customer":{}}"#[..],
            br#"{"customer":{"id":"abc","email":""}}"#,
            br#"[1]"#,
            b"not json",
        ] {
            let error = Person::decode_redaction("customers/redact", body).unwrap_err();
            assert_eq!(error.as_label(), "unidentified_redaction");
        }
    }

    #[test]
    fn an_empty_request_matches_nothing() {
        let person = Person::decode("customers/redact", br#"{"customer":{}}"#).unwrap();
        assert!(person.is_empty());
        assert!(!person.matches(None, None, None, None));
    }
}

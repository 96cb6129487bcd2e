//! Redaction markers shared by the services that remember a `customers/redact` or `shop/redact`
//! after deleting the person (nudges, journey): the keys a redaction is remembered under
//! (pseudonyms only: customer and order ids, the service's keyed hashes of the email and the
//! phone, the shop), whether a later fact is about someone redacted, and when a marker expires.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{national_phones, normal_email, normal_phone};

/// Every marker's changelog key starts with this.
pub const PREFIX: &str = "redacted/";

/// One identifier a redaction is remembered by. Emails and phones come as the service's keyed
/// hashes (never the value): a marker outlives the person and must not name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark<'a> {
    Customer(u64),
    EmailHash(&'a str),
    PhoneHash(&'a str),
    /// A national number the phone may be ([`national_phones`]): a phone typed nationally
    /// and its international form share one.
    NationalPhoneHash(&'a str),
    Order(u64),
}

/// Who a fact or a redaction names, as pseudonyms: the customer id, the service's keyed hashes
/// of the email and the phone (normalised as every consumer compares them: [`normal_email`],
/// [`normal_phone`]), and the orders. What markers are keyed and matched by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pseudonyms {
    pub customer_id: Option<u64>,
    pub email_hash: Option<String>,
    pub phone_hash: Option<String>,
    /// The keyed hashes of the national numbers the phone may be ([`national_phones`]).
    pub national_phone_hashes: Vec<String>,
    pub orders: Vec<u64>,
}

impl Pseudonyms {
    /// `hash(kind, value)` is the service's keyed hash of a normalised `email` or `phone`.
    pub fn new(
        customer_id: Option<u64>,
        email: Option<&str>,
        phone: Option<&str>,
        orders: &[u64],
        hash: impl Fn(&str, &str) -> String,
    ) -> Pseudonyms {
        Pseudonyms {
            customer_id,
            email_hash: email.and_then(normal_email).map(|e| hash("email", &e)),
            phone_hash: phone.and_then(normal_phone).map(|p| hash("phone", &p)),
            national_phone_hashes: phone
                .map(national_phones)
                .unwrap_or_default()
                .iter()
                .map(|n| hash("national-phone", n))
                .collect(),
            orders: orders.to_vec(),
        }
    }

    /// The marks these pseudonyms are remembered and matched by.
    pub fn marks(&self) -> Vec<Mark<'_>> {
        let mut marks: Vec<Mark<'_>> = self.customer_id.map(Mark::Customer).into_iter().collect();
        marks.extend(self.email_hash.as_deref().map(Mark::EmailHash));
        marks.extend(self.phone_hash.as_deref().map(Mark::PhoneHash));
        marks.extend(
            self.national_phone_hashes
                .iter()
                .map(|h| Mark::NationalPhoneHash(h)),
        );
        marks.extend(self.orders.iter().map(|id| Mark::Order(*id)));
        marks
    }
}

/// `redacted/<shop>/<kind>/<pseudonym>`; shop domains hold no `/`.
pub fn marker_key(shop: &str, mark: Mark<'_>) -> String {
    match mark {
        Mark::Customer(id) => format!("{PREFIX}{shop}/customer/{id}"),
        Mark::EmailHash(hash) => format!("{PREFIX}{shop}/email/{hash}"),
        Mark::PhoneHash(hash) => format!("{PREFIX}{shop}/phone/{hash}"),
        Mark::NationalPhoneHash(hash) => format!("{PREFIX}{shop}/national-phone/{hash}"),
        Mark::Order(id) => format!("{PREFIX}{shop}/order/{id}"),
    }
}

/// `redacted/<shop>`: the shop's own `shop/redact`.
pub fn shop_marker_key(shop: &str) -> String {
    format!("{PREFIX}{shop}")
}

/// A marker as a changelog value: whose shop, and when the redaction was received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactionMarker {
    pub shop: String,
    pub redacted_ms: i64,
}

/// The markers of one partition, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedactionMarkers {
    held: HashMap<String, RedactionMarker>,
}

impl RedactionMarkers {
    /// Takes a restored marker; false (and ignored) when `key` is not a marker's.
    pub fn restore(&mut self, key: &str, marker: RedactionMarker) -> bool {
        let ours = key.starts_with(PREFIX);
        if ours {
            self.held.insert(key.to_string(), marker);
        }
        ours
    }

    /// Remembers `marks` (and the shop itself when `whole_shop`) as redacted at `at_ms`; answers
    /// the markers to persist (a marker already held keeps the later time).
    pub fn mark(
        &mut self,
        shop: &str,
        marks: &[Mark<'_>],
        whole_shop: bool,
        at_ms: i64,
    ) -> Vec<(String, RedactionMarker)> {
        let keys = marks
            .iter()
            .map(|m| marker_key(shop, *m))
            .chain(whole_shop.then(|| shop_marker_key(shop)));
        keys.map(|key| {
            let marker = self
                .held
                .entry(key.clone())
                .or_insert_with(|| RedactionMarker {
                    shop: shop.to_string(),
                    redacted_ms: at_ms,
                });
            marker.redacted_ms = marker.redacted_ms.max(at_ms);
            (key, marker.clone())
        })
        .collect()
    }

    /// Whether a fact of `shop` naming `marks`, received at `received_ms`, is about someone
    /// redacted: one of its identifiers is marked, or the shop was redacted at or after it was
    /// received (a shop that reinstalls after its `shop/redact` starts afresh).
    pub fn forbids(&self, shop: &str, marks: &[Mark<'_>], received_ms: i64) -> bool {
        self.held
            .get(&shop_marker_key(shop))
            .is_some_and(|m| received_ms <= m.redacted_ms)
            || self.names(shop, marks)
    }

    /// Whether one of `marks` of `shop` is marked (the shop's own marker aside).
    pub fn names(&self, shop: &str, marks: &[Mark<'_>]) -> bool {
        marks
            .iter()
            .any(|m| self.held.contains_key(&marker_key(shop, *m)))
    }

    /// The markers held under `marks` of `shop` (and the shop's own), for a data request.
    pub fn held(&self, shop: &str, marks: &[Mark<'_>]) -> Vec<(String, RedactionMarker)> {
        let mut held: Vec<(String, RedactionMarker)> = marks
            .iter()
            .map(|m| marker_key(shop, *m))
            .chain(std::iter::once(shop_marker_key(shop)))
            .filter_map(|key| Some((key.clone(), self.held.get(&key)?.clone())))
            .collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        held.dedup();
        held
    }

    /// Forgets the markers `retention_ms` old at `now_ms`; answers their keys (to tombstone).
    pub fn expire(&mut self, now_ms: i64, retention_ms: i64) -> Vec<String> {
        let mut old: Vec<String> = self
            .held
            .iter()
            .filter(|(_, m)| now_ms.saturating_sub(m.redacted_ms) >= retention_ms)
            .map(|(k, _)| k.clone())
            .collect();
        old.sort();
        for key in &old {
            self.held.remove(key);
        }
        old
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_identifier_forbids_any_later_fact_naming_it() {
        let mut markers = RedactionMarkers::default();
        let persisted = markers.mark("s", &[Mark::Customer(7), Mark::Order(9)], false, 100);
        assert_eq!(persisted.len(), 2);
        assert!(markers.forbids("s", &[Mark::Order(9)], 5_000));
        assert!(markers.forbids("s", &[Mark::EmailHash("e"), Mark::Customer(7)], 5_000));
        assert!(!markers.forbids("s", &[Mark::Customer(8)], 5_000));
        assert!(!markers.forbids("t", &[Mark::Customer(7)], 5_000));
    }

    #[test]
    fn pseudonyms_hash_the_normalised_email_and_phone() {
        let hash = |kind: &str, value: &str| format!("{kind}:{}", value.len());
        let who = Pseudonyms::new(
            Some(7),
            Some(" Ann@Example.com"),
            Some("+1 555 625 1199"),
            &[9],
            hash,
        );
        assert_eq!(who.email_hash.as_deref(), Some("email:15"));
        assert_eq!(who.phone_hash.as_deref(), Some("phone:10"));
        assert_eq!(
            who.marks(),
            [
                Mark::Customer(7),
                Mark::EmailHash("email:15"),
                Mark::PhoneHash("phone:10"),
                // +1 555 625 1199 without a country code of 1, 2 or 3 digits.
                Mark::NationalPhoneHash("national-phone:10"),
                Mark::NationalPhoneHash("national-phone:9"),
                Mark::NationalPhoneHash("national-phone:8"),
                Mark::Order(9)
            ]
        );
        assert!(Pseudonyms::new(None, Some(" "), Some("12"), &[], hash)
            .marks()
            .is_empty());
    }

    #[test]
    fn a_shop_marker_forbids_what_was_received_before_it() {
        let mut markers = RedactionMarkers::default();
        markers.mark("s", &[], true, 100);
        assert!(markers.forbids("s", &[], 100));
        assert!(!markers.forbids("s", &[], 101));
        assert!(!markers.forbids("t", &[], 50));
    }

    #[test]
    fn markers_expire_after_the_retention_and_restore_by_their_keys() {
        let mut markers = RedactionMarkers::default();
        let persisted = markers.mark("s", &[Mark::PhoneHash("p")], false, 100);
        let mut restored = RedactionMarkers::default();
        for (key, marker) in persisted {
            assert!(key.starts_with(PREFIX) && !key.contains('+'));
            assert!(restored.restore(&key, marker));
        }
        let other = RedactionMarker {
            shop: "s".into(),
            redacted_ms: 0,
        };
        assert!(!restored.restore("order/s/1", other));
        assert_eq!(restored, markers);
        assert!(restored.expire(199, 100).is_empty());
        assert_eq!(restored.expire(200, 100).len(), 1);
        assert!(restored.is_empty());
    }
}

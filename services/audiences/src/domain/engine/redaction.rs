//! Redaction markers: what `customers/redact` and `shop/redact` leave behind once the people
//! are gone, so that a fact arriving later (or in flight on another topic) cannot bring them
//! back. A marker is keyed by a pseudonym (customer id, or a hash of the email or phone, an
//! order id, the shop), never by the value itself, and expires after the redaction retention.

use super::{customer_key, email_hash, forget, guest_key, retire, Effect, Partition, Rules};
use crate::domain::input::{Input, PersonRef};
use crate::domain::person::Person;
use crate::platform::{hash, phone, tiktok, Contact};

/// Every marker key starts with this (people's keys start with `p/`).
pub(super) const PREFIX: &str = "r/";

fn customer_marker(shop: &str, id: u64) -> String {
    format!("r/{shop}/c/{id}")
}

fn email_marker(shop: &str, email: &str) -> String {
    format!("r/{shop}/e/{}", email_hash(email))
}

/// The markers an email is matched by: as written, and as the mailbox without its `+tag`
/// (TikTok sends `ann+shop@…` as the hash of `ann@…`, so they are one person there).
fn email_markers(shop: &str, email: &str) -> Vec<String> {
    let mut markers = vec![email_marker(shop, email)];
    if let Some(mailbox) = tiktok::normalise_email(email) {
        markers.push(email_marker(shop, &mailbox));
    }
    markers.dedup();
    markers
}

fn phone_marker(shop: &str, digits: &str) -> String {
    format!("r/{shop}/t/{}", &hash::sha256_hex(digits)[..32])
}

fn order_marker(shop: &str, id: u64) -> String {
    format!("r/{shop}/o/{id}")
}

fn shop_marker(shop: &str) -> String {
    format!("r/{shop}/s")
}

/// The digit strings a phone may be matched by: as typed (leading zeros dropped), as E.164,
/// and, when `loose`, E.164 without a 1 to 3 digit country code, so that a national number in
/// the redaction (`555-625-1199`) still meets the international one of an order. `country` is
/// the contact's: the platforms are sent the E.164 it makes of a national number, so an
/// international redaction must meet it too.
fn phone_forms(raw: &str, country: Option<&str>, loose: bool) -> Vec<String> {
    let typed: String = raw.chars().filter(char::is_ascii_digit).collect();
    let typed = typed.trim_start_matches('0').to_string();
    let mut forms = Vec::new();
    if typed.len() >= 7 {
        forms.push(typed);
    }
    if let Some(e164) = phone::e164(raw, country) {
        let digits = e164.digits();
        if loose {
            for cut in 1..=3 {
                if digits.len() - cut >= 7 {
                    forms.push(digits[cut..].to_string());
                }
            }
        }
        forms.push(digits.to_string());
    }
    forms.sort();
    forms.dedup();
    forms
}

/// The marker keys a data request's person would be remembered under, had they been redacted.
pub(super) fn markers_of(shop: &str, who: &aftercart_shopify::privacy::Person) -> Vec<String> {
    let mut keys = Vec::new();
    keys.extend(who.customer_id.map(|id| customer_marker(shop, id)));
    if let Some(email) = present(who.email.as_deref()) {
        keys.extend(email_markers(shop, email));
    }
    if let Some(phone) = present(who.phone.as_deref()) {
        keys.extend(
            phone_forms(phone, None, false)
                .iter()
                .map(|d| phone_marker(shop, d)),
        );
    }
    keys.extend(who.orders.iter().map(|id| order_marker(shop, *id)));
    keys
}

fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// A marker as a changelog entity: the shop and when the redaction was received.
fn marker_entity(shop: &str, at_ms: i64) -> Person {
    let mut marker = Person::new(shop, None, at_ms);
    marker.redacted = true;
    marker
}

/// The markers as the changelog holds them: key → the entity [`Partition::mark`] wrote.
pub(super) fn marker_entities(
    markers: std::collections::HashMap<String, i64>,
) -> impl Iterator<Item = (String, Person)> {
    markers.into_iter().map(|(key, at_ms)| {
        let shop = key
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_string();
        (key, marker_entity(&shop, at_ms))
    })
}

impl Partition {
    fn mark(&mut self, key: String, shop: &str, at_ms: i64, effects: &mut Vec<Effect>) {
        let at = self.markers.entry(key.clone()).or_insert(at_ms);
        *at = (*at).max(at_ms);
        effects.push(Effect::Persist {
            key,
            person: Some(Box::new(marker_entity(shop, *at))),
        });
    }

    /// Whether a fact received at `received_ms` is about someone redacted: any of its
    /// identifiers is marked, or the shop was redacted after it was received.
    pub(super) fn forbids(&self, shop: &str, input: &Input, received_ms: i64) -> bool {
        if self
            .markers
            .get(&shop_marker(shop))
            .is_some_and(|at| received_ms <= *at)
        {
            return true;
        }
        let (who, contact, order) = match input {
            Input::Abandoned {
                person, contact, ..
            }
            | Input::Customer {
                person, contact, ..
            } => (Some(person), Some(contact), None),
            Input::Purchased {
                person,
                contact,
                purchase,
                ..
            } => (Some(person), Some(contact), purchase.order_id),
            Input::Recovered { person, .. } | Input::Consent { person, .. } => {
                (Some(person), None, None)
            }
            Input::CustomerDeleted { .. }
            | Input::Redact { .. }
            | Input::ShopRedact
            | Input::DataRequest(_)
            | Input::Nothing => return false,
        };
        let marked = |key: String| self.markers.contains_key(&key);
        let by_person = who.is_some_and(|who: &PersonRef| {
            who.customer_id
                .is_some_and(|id| marked(customer_marker(shop, id)))
                || present(who.email.as_deref())
                    .is_some_and(|e| email_markers(shop, e).into_iter().any(marked))
        });
        let by_contact = contact.is_some_and(|c: &Contact| {
            present(c.email.as_deref())
                .is_some_and(|e| email_markers(shop, e).into_iter().any(marked))
                || present(c.phone.as_deref()).is_some_and(|p| {
                    phone_forms(p, c.country.as_deref(), true)
                        .iter()
                        .any(|d| marked(phone_marker(shop, d)))
                })
        });
        let by_order = order.is_some_and(|id| marked(order_marker(shop, id)));
        by_person || by_contact || by_order
    }

    /// `customers/redact`: marks the customer's id, email, phone and orders, and the emails and
    /// phones the state knew that customer by, and retires everyone held under any of them
    /// (destinations drop them, then they are deleted).
    /// Returns the people retired.
    pub(super) fn redact_person(
        &mut self,
        shop: &str,
        (who, phone, orders): (&PersonRef, Option<&str>, &[u64]),
        received_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Vec<String> {
        let email = present(who.email.as_deref());
        let phones = present(phone)
            .map(|p| phone_forms(p, None, false))
            .unwrap_or_default();
        if let Some(id) = who.customer_id {
            self.mark(customer_marker(shop, id), shop, received_ms, effects);
        }
        if let Some(email) = email {
            for marker in email_markers(shop, email) {
                self.mark(marker, shop, received_ms, effects);
            }
        }
        for digits in &phones {
            self.mark(phone_marker(shop, digits), shop, received_ms, effects);
        }
        for id in orders {
            self.mark(order_marker(shop, *id), shop, received_ms, effects);
        }
        let wanted: Vec<String> = email.map(|e| email_markers(shop, e)).unwrap_or_default();
        // (key, whether it is the customer the redaction names rather than someone sharing
        // only the phone).
        let mut matched: Vec<(String, bool)> = self
            .people
            .iter()
            .filter(|(_, p)| p.shop == shop && !p.redacted)
            .filter_map(|(key, p)| {
                let same_customer = who.customer_id.is_some() && p.customer_id == who.customer_id;
                let emails = [
                    p.contact.email.as_deref(),
                    p.held_contact().email.as_deref(),
                ];
                let same_email = emails
                    .into_iter()
                    .flatten()
                    .flat_map(|e| email_markers(shop, e))
                    .any(|m| wanted.contains(&m));
                let same_phone = !phones.is_empty()
                    && [&p.contact, p.held_contact()].into_iter().any(|c| {
                        c.phone.as_deref().is_some_and(|held| {
                            phone_forms(held, c.country.as_deref(), true)
                                .iter()
                                .any(|d| phones.contains(d))
                        })
                    });
                let keyed = who
                    .customer_id
                    .is_some_and(|id| **key == customer_key(shop, id))
                    || email.is_some_and(|e| **key == guest_key(shop, e));
                let named = same_customer || same_email || keyed;
                (named || same_phone).then(|| ((*key).clone(), named))
            })
            .collect();
        matched.sort();
        // The addresses and phones the state knew the customer by are theirs too (an email
        // changed since, an old checkout still in flight under it): marked as well.
        let mut known = std::collections::BTreeSet::new();
        for (key, _) in matched.iter().filter(|(_, named)| *named) {
            let Some(person) = self.people.get(key) else {
                continue;
            };
            for contact in [&person.contact, person.held_contact()] {
                if let Some(email) = present(contact.email.as_deref()) {
                    known.extend(email_markers(shop, email));
                }
                if let Some(phone) = present(contact.phone.as_deref()) {
                    for digits in phone_forms(phone, contact.country.as_deref(), false) {
                        known.insert(phone_marker(shop, &digits));
                    }
                }
            }
        }
        for marker in known {
            self.mark(marker, shop, received_ms, effects);
        }
        let keys: Vec<String> = matched.into_iter().map(|(key, _)| key).collect();
        for key in &keys {
            retire(self, key, effects);
        }
        keys
    }

    /// `shop/redact`: marks the shop; facts received before it are kept out.
    pub(super) fn redact_shop(&mut self, shop: &str, received_ms: i64, effects: &mut Vec<Effect>) {
        self.mark(shop_marker(shop), shop, received_ms, effects);
    }

    /// Forgets markers older than the retention.
    pub(super) fn expire_markers(&mut self, now_ms: i64, rules: &Rules) -> Vec<Effect> {
        let old: Vec<String> = self
            .markers
            .iter()
            .filter(|(_, at)| now_ms - **at >= rules.redaction_retention_ms)
            .map(|(k, _)| k.clone())
            .collect();
        old.into_iter()
            .map(|key| {
                self.markers.remove(&key);
                forget(&key)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_national_number_meets_the_international_one() {
        let redacted = phone_forms("555-625-1199", None, false);
        let later = phone_forms("+1 (555) 625-1199", None, true);
        assert!(later.iter().any(|d| redacted.contains(d)));
    }

    #[test]
    fn marker_keys_hold_no_email_or_phone() {
        let key = email_marker("s", "ann@example.com");
        assert!(!key.contains("ann"));
        let key = phone_marker("s", "15556251199");
        assert!(!key.contains("5556251199"));
    }
}

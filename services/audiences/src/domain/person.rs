//! A person's state: contact (latest), consent (latest by time), and per audience whether they
//! are a candidate member and which destinations already hold them. One changelog entity each.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::domain::consent::{AdConsent, ChannelConsent, ConsentMapping, OptInLevel};
use crate::domain::input::{Channel, ConsentFact};
use crate::platform::Contact;

/// Latest consent statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub subscribed: bool,
    pub at_ms: i64,
    /// Shopify's opt-in level, when a statement gave one (Google's signals are read from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<OptInLevel>,
}

impl Consent {
    fn channel(&self) -> ChannelConsent {
        ChannelConsent {
            subscribed: self.subscribed,
            level: self.level,
        }
    }
}

/// One audience's view of a person.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The facts make them a member (consent aside).
    pub candidate: bool,
    /// When the fact that made them a candidate happened (a purchase before it does not end
    /// an abandoner membership).
    #[serde(default)]
    pub since_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// Destinations that hold them (an add was emitted, no remove since).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub synced: BTreeSet<String>,
}

/// A removal emitted to the batches topic that its destination's exporter has not confirmed
/// yet (its committed offset has not passed the record). Kept, with the row it removes, so that
/// it is emitted again if it waits too long: the batches topic's retention cannot take it away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRemoval {
    pub audience: String,
    pub destination: String,
    /// The batch that carries it (the latest, when emitted again).
    pub batch_id: String,
    /// When that batch was made (the re-emit threshold counts from it).
    pub emitted_ms: i64,
    /// The row the destination is told to remove (what it was sent).
    pub row: serde_json::Value,
    /// By which confirmation mark the batch was surely in the topic (the stage had written
    /// it): set at the first tick after it was emitted, or after the state is restored.
    /// Not stored: a restored removal was written before its person's record, and the marks
    /// count this process's check rounds.
    #[serde(skip)]
    pub written_mark: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub shop: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<u64>,
    #[serde(default)]
    pub contact: Contact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// Latest SMS marketing consent: not a reason to export (email consent is), but read for
    /// Google's consent signals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_consent: Option<Consent>,
    /// The contact the destinations were sent, when it differs from `contact`: removals must
    /// name what was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_contact: Option<Contact>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memberships: BTreeMap<String, Membership>,
    /// Google destination → the consent signals it was last sent with this person: a change
    /// (a withdrawal above all) is sent again as an addition, which updates them there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ad_consent_sent: BTreeMap<String, AdConsent>,
    /// When they last bought (an abandonment from before it does not make them an abandoner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_purchase_ms: Option<i64>,
    /// Retired (redacted, or a guest merged into a customer): every destination must drop
    /// them, then the entity is deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    /// Known only from batches found after the checkpoint on restore: the crash came before
    /// their first changelog record, so what made them a member (contact, consent, the fact) is
    /// not known yet and is about to be read again. Not compared until a fact is heard, or
    /// the destinations holding them would be told to drop them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_facts: bool,
    /// Removals emitted and not yet confirmed by their destination's exporter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_removals: Vec<PendingRemoval>,
    pub seen_ms: i64,
}

impl Person {
    pub fn new(shop: &str, customer_id: Option<u64>, now_ms: i64) -> Person {
        Person {
            shop: shop.to_string(),
            customer_id,
            seen_ms: now_ms,
            ..Person::default()
        }
    }

    /// Later facts win field by field; a missing field keeps what was known.
    pub fn learn(&mut self, contact: &Contact) {
        let take = |mine: &mut Option<String>, theirs: &Option<String>| {
            if let Some(value) = theirs.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                *mine = Some(value.to_string());
            }
        };
        take(&mut self.contact.email, &contact.email);
        take(&mut self.contact.phone, &contact.phone);
        take(&mut self.contact.first_name, &contact.first_name);
        take(&mut self.contact.last_name, &contact.last_name);
        take(&mut self.contact.country, &contact.country);
        take(&mut self.contact.zip, &contact.zip);
    }

    /// Learns what a fact says about the person: contact fields and, when it has one, consent.
    pub fn hear(&mut self, contact: &Contact, consent: Option<ConsentFact>) {
        self.learn(contact);
        if let Some(consent) = consent {
            self.consent_to(consent);
        }
    }

    /// Keeps the latest statement of the fact's channel; on a tie, a withdrawal wins. A newer
    /// statement without a level (a checkout's box) keeps the level known for the same state.
    pub fn consent_to(&mut self, fact: ConsentFact) {
        let slot = match fact.channel {
            Channel::Email => &mut self.consent,
            Channel::Sms => &mut self.sms_consent,
        };
        let newer = match *slot {
            None => true,
            Some(known) => {
                fact.at_ms > known.at_ms || (fact.at_ms == known.at_ms && !fact.subscribed)
            }
        };
        if newer {
            let kept = slot
                .filter(|known| known.subscribed == fact.subscribed)
                .and_then(|known| known.level);
            *slot = Some(Consent {
                subscribed: fact.subscribed,
                at_ms: fact.at_ms,
                level: fact.level.or(kept),
            });
        }
    }

    /// Google's consent signals for this person under `mapping`.
    pub fn ad_consent(&self, mapping: &ConsentMapping) -> AdConsent {
        mapping.read(&[
            self.consent.map(|c| c.channel()),
            self.sms_consent.map(|c| c.channel()),
        ])
    }

    pub fn consented(&self) -> bool {
        self.consent.is_some_and(|c| c.subscribed)
    }

    fn reachable(&self) -> bool {
        let present = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
        present(&self.contact.email) || present(&self.contact.phone)
    }

    /// Whether destinations should hold them in `audience`.
    pub fn wanted_in(&self, audience: &str) -> bool {
        !self.redacted
            && self.consented()
            && self.reachable()
            && self.memberships.get(audience).is_some_and(|m| m.candidate)
    }

    /// The contact destinations hold.
    pub fn held_contact(&self) -> &Contact {
        self.exported_contact.as_ref().unwrap_or(&self.contact)
    }

    pub fn holds_anything(&self) -> bool {
        self.memberships.values().any(|m| !m.synced.is_empty())
    }

    /// Nothing held and no removal waiting for its destination: the entity may be deleted.
    pub fn settled(&self) -> bool {
        !self.holds_anything() && self.pending_removals.is_empty()
    }

    /// A redacted person who is held nowhere keeps no contact: the removals still waiting for
    /// their destinations carry the rows they send (hashed, but for the country and postal code
    /// Google takes in the clear), so the changelog holds nothing more while they wait.
    pub fn minimise_if_redacted(&mut self) {
        if self.redacted && !self.holds_anything() {
            self.contact = Contact::default();
            self.exported_contact = None;
            self.consent = None;
        }
    }

    /// Memberships neither wanted nor held are dropped.
    pub fn prune(&mut self) {
        self.memberships
            .retain(|_, m| m.candidate || !m.synced.is_empty());
        let memberships = &self.memberships;
        self.ad_consent_sent
            .retain(|destination, _| memberships.values().any(|m| m.synced.contains(destination)));
        if !self.holds_anything() {
            self.exported_contact = None;
        }
    }

    /// Takes over what a guest entity (known by email) knew: contact, consent, candidacies and
    /// purchases. Not what destinations hold: those rows name the guest, so the guest entity
    /// removes them itself (it is retired) and this one is added under its own name.
    pub fn absorb(&mut self, guest: &Person) {
        let guest_contact = guest.contact.clone();
        let mine = std::mem::take(&mut self.contact);
        self.contact = guest_contact;
        self.learn(&mine);
        if let Some(consent) = guest.consent {
            self.consent_to(ConsentFact {
                subscribed: consent.subscribed,
                at_ms: consent.at_ms,
                level: consent.level,
                channel: Channel::Email,
            });
        }
        self.last_purchase_ms = self.last_purchase_ms.max(guest.last_purchase_ms);
        for (audience, theirs) in &guest.memberships {
            let mine = self.memberships.entry(audience.clone()).or_default();
            mine.candidate |= theirs.candidate;
            mine.since_ms = mine.since_ms.max(theirs.since_ms);
            mine.expires_ms = match (mine.expires_ms, theirs.expires_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        self.seen_ms = self.seen_ms.max(guest.seen_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(subscribed: bool, at_ms: i64) -> ConsentFact {
        ConsentFact {
            subscribed,
            at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn the_latest_consent_wins_and_a_tie_withdraws() {
        let mut person = Person::new("s", Some(1), 0);
        person.consent_to(consent(true, 10));
        person.consent_to(consent(false, 5));
        assert!(person.consented(), "an older withdrawal does not win");
        person.consent_to(consent(false, 10));
        assert!(!person.consented(), "a withdrawal at the same time wins");
    }

    #[test]
    fn later_contact_fields_win_and_missing_ones_keep_what_was_known() {
        let mut person = Person::new("s", Some(1), 0);
        person.learn(&Contact {
            email: Some("a@x.com".into()),
            zip: Some("1".into()),
            ..Default::default()
        });
        person.learn(&Contact {
            email: Some(" b@x.com ".into()),
            zip: Some("   ".into()),
            ..Default::default()
        });
        assert_eq!(person.contact.email.as_deref(), Some("b@x.com"));
        assert_eq!(person.contact.zip.as_deref(), Some("1"));
    }

    #[test]
    fn only_consented_reachable_candidates_are_wanted() {
        let mut person = Person::new("s", Some(1), 0);
        person.memberships.insert(
            "a".into(),
            Membership {
                candidate: true,
                ..Default::default()
            },
        );
        assert!(!person.wanted_in("a"), "no consent");
        person.consent_to(consent(true, 1));
        assert!(!person.wanted_in("a"), "no email or phone");
        person.learn(&Contact {
            phone: Some("+441234567890".into()),
            ..Default::default()
        });
        assert!(person.wanted_in("a"));
        person.redacted = true;
        assert!(!person.wanted_in("a"));
    }

    #[test]
    fn absorbing_a_guest_unions_memberships_and_keeps_the_latest_consent() {
        let mut customer = Person::new("s", Some(1), 0);
        customer.consent_to(consent(false, 5));
        let mut guest = Person::new("s", None, 0);
        guest.consent_to(consent(true, 9));
        guest.memberships.insert(
            "a".into(),
            Membership {
                candidate: true,
                since_ms: 1,
                expires_ms: Some(100),
                synced: ["meta".to_string()].into(),
            },
        );
        customer.absorb(&guest);
        assert!(customer.consented());
        assert!(customer.memberships["a"].candidate);
        assert!(
            customer.memberships["a"].synced.is_empty(),
            "what destinations hold names the guest, who removes it"
        );
    }
}

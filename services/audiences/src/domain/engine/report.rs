//! Answers to `customers/data_request`: everything the audiences state holds about the person
//! the request names (matched by customer id, email and phone, never a record of another
//! customer id: [`aftercart_shopify::privacy::Person::owns`]), as one [`DataRequestReport`] on the shared data requests topic: each person record as
//! stored, the audiences they are in, the destinations holding them, the removals still due,
//! the contact fields held, and the redaction markers kept under their ids.

use std::collections::{BTreeMap, BTreeSet};

use aftercart_shopify::privacy::{DataRequest, DataRequestReport, Holding};
use serde_json::json;

use super::redaction::markers_of;
use super::{Effect, Partition, Rules};
use crate::domain::person::Person;

/// The service name a report is written under (and its event id derived from).
const SERVICE: &str = "audiences";

impl Partition {
    /// The report for `request` about `shop`, read at `at_ms`.
    pub(super) fn data_request(
        &self,
        rules: &Rules,
        shop: &str,
        request: &DataRequest,
        at_ms: i64,
    ) -> Effect {
        let who = &request.person;
        let mut people: Vec<(&String, &Person)> = self
            .people
            .iter()
            .filter(|(_, p)| p.shop == shop)
            .filter(|(_, p)| {
                [&p.contact, p.held_contact()]
                    .into_iter()
                    .any(|c| who.owns(p.customer_id, c.email.as_deref(), c.phone.as_deref(), None))
            })
            .collect();
        people.sort_by_key(|(key, _)| *key);
        let mut holdings: Vec<Holding> = people
            .into_iter()
            .map(|(key, person)| Holding {
                kind: "person".to_string(),
                key: key.clone(),
                data: held(rules, person),
            })
            .collect();
        let mut markers: Vec<(&String, &i64)> = markers_of(shop, who)
            .into_iter()
            .filter_map(|key| self.markers.get_key_value(&key))
            .collect();
        markers.sort();
        markers.dedup();
        holdings.extend(markers.into_iter().map(|(key, at)| Holding {
            kind: "redaction".to_string(),
            key: key.clone(),
            data: json!({ "redacted_at": aftercart_shopify::time::rfc3339(*at) }),
        }));
        Effect::Report {
            key: format!("{shop}/data-request"),
            report: Box::new(DataRequestReport::new(
                SERVICE, shop, request, at_ms, holdings,
            )),
        }
    }
}

/// What is held about one person: the record as stored, and what it means.
fn held(rules: &Rules, person: &Person) -> serde_json::Value {
    let mut audiences = Vec::new();
    let mut destinations = BTreeMap::new();
    let mut removals = BTreeMap::new();
    for (name, membership) in &person.memberships {
        let wanted = !person.redacted
            && rules.audiences.iter().any(|a| &a.name == name)
            && person.wanted_in(name);
        if wanted {
            audiences.push(name.clone());
        }
        if !membership.synced.is_empty() {
            destinations.insert(name.clone(), membership.synced.clone());
            if !wanted {
                // Held there, no longer wanted: a removal is due (or waits to be confirmed).
                removals.insert(name.clone(), membership.synced.clone());
            }
        }
    }
    for removal in &person.pending_removals {
        // Emitted, not yet confirmed by the destination: still held there until it is.
        removals
            .entry(removal.audience.clone())
            .or_insert_with(BTreeSet::new)
            .insert(removal.destination.clone());
    }
    let contact = person.held_contact();
    let fields = [
        ("country", &person.contact.country, &contact.country),
        ("email", &person.contact.email, &contact.email),
        (
            "first_name",
            &person.contact.first_name,
            &contact.first_name,
        ),
        ("last_name", &person.contact.last_name, &contact.last_name),
        ("phone", &person.contact.phone, &contact.phone),
        ("zip", &person.contact.zip, &contact.zip),
    ];
    let contact_fields: Vec<&str> = fields
        .into_iter()
        .filter(|(_, now, sent)| now.is_some() || sent.is_some())
        .map(|(name, _, _)| name)
        .collect();
    json!({
        "stored": person,
        "audiences": audiences,
        "destinations": destinations,
        "pending_removals": removals,
        "contact_fields": contact_fields,
    })
}

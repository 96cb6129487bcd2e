//! Answers to `customers/data_request`: what the nudges state holds about the person the
//! request names, as one [`DataRequestReport`] on the shared data requests topic. Their running
//! sequences (matched by customer id, email and phone, never one of another customer id:
//! [`aftercart_shopify::privacy::Person::owns`]) with the steps sent and still scheduled and the
//! contact fields held; and what is remembered under each of their keyed-hash identities
//! (orders, unsubscribes, when their last sequence started; under a shared email or phone only
//! when it is tied to them, [`attributable`]). Nothing held: a report without
//! holdings, so the merchant sees that the service answered. After a redaction only its
//! markers are left (ids and keyed hashes, with the time): they are listed as `redaction`.

use aftercart_shopify::privacy::{contact_fields, DataRequest, DataRequestReport, Holding};
use aftercart_shopify::time::rfc3339;
use serde_json::json;

use super::{person_key, sequence_key, Effect, Engine, Sequence};
use crate::domain::identity;
use crate::domain::input::ContactFacts;

/// The service name a report is written under (and its event id derived from).
const SERVICE: &str = "nudges";

impl Engine {
    /// The report for `request` of `shop`, read at `at_ms` in by-shop `partition` (the shop's).
    pub(super) fn data_request(
        &self,
        partition: i32,
        shop: &str,
        request: &DataRequest,
        at_ms: i64,
    ) -> Effect {
        let who = &request.person;
        // Each identity apart, so a remembered person says which of them it is kept under.
        let identities: Vec<(&str, String)> = [
            (
                "customer_id",
                who.customer_id.map(|id| (Some(id), None, None)),
            ),
            ("email", who.email.clone().map(|e| (None, Some(e), None))),
            ("phone", who.phone.clone().map(|p| (None, None, Some(p)))),
        ]
        .into_iter()
        .filter_map(|(kind, facts)| {
            let (customer_id, email, phone) = facts?;
            let facts = ContactFacts {
                customer_id,
                email,
                phone,
            };
            let hash = identity::hashes(&self.rules.hasher, shop, &facts).pop()?;
            Some((kind, hash))
        })
        .collect();
        let mut holdings = Vec::new();
        if let Some(state) = self.partitions.get(&partition) {
            let mut sequences: Vec<&Sequence> = state
                .sequences
                .values()
                .filter(|s| s.shop == shop)
                .filter(|s| {
                    let c = &s.customer;
                    let other = who
                        .customer_id
                        .zip(c.customer_id)
                        .is_some_and(|(a, b)| a != b);
                    // The stored hashes too: an unsubscribe may have cleared the email they
                    // came from, and the sequence is still theirs.
                    who.owns(c.customer_id, c.email.as_deref(), c.phone.as_deref(), None)
                        || (!other && identities.iter().any(|(_, h)| s.identities.contains(h)))
                })
                .collect();
            sequences.sort_by(|a, b| a.journey_key.cmp(&b.journey_key));
            holdings.extend(
                sequences.into_iter().map(|s| {
                    Holding::new("sequence", sequence_key(&s.journey_key), sequence_held(s))
                }),
            );
            holdings.extend(identities.iter().filter_map(|(kind, hash)| {
                if !attributable(who.customer_id, kind, hash, state.sequences.values()) {
                    return None;
                }
                let person = state.people.get(hash)?;
                let data = json!({ "stored": person, "identified_by": kind });
                Some(Holding::new("person", person_key(hash), data))
            }));
            let contact = ContactFacts {
                customer_id: who.customer_id,
                email: who.email.clone(),
                phone: who.phone.clone(),
            };
            let named = identity::pseudonyms(&self.rules.hasher, shop, &contact, &who.orders);
            holdings.extend(state.markers.held(shop, &named.marks()).into_iter().map(
                |(key, marker)| {
                    let at = rfc3339(marker.redacted_ms);
                    Holding::new("redaction", key, json!({ "redacted_at": at }))
                },
            ));
        }
        Effect::Answer {
            key: format!("{shop}/data-request"),
            report: Box::new(DataRequestReport::new(
                SERVICE, shop, request, at_ms, holdings,
            )),
        }
    }
}

/// Whether what is remembered under `hash` (the requester's identity of `kind`) may be
/// reported to a requester with `customer_id`. A person record names no customer id: under an
/// email or a phone it merges every customer using it (a household), so for a requester with an
/// id it is theirs only when one of their own sequences carries the hash and no sequence of
/// another customer id does. Their id's record, and any record for a requester without an id
/// (who is matched by email and phone everywhere), are theirs.
fn attributable<'a>(
    customer_id: Option<u64>,
    kind: &str,
    hash: &str,
    sequences: impl Iterator<Item = &'a Sequence>,
) -> bool {
    let Some(id) = customer_id else {
        return true;
    };
    if kind == "customer_id" {
        return true;
    }
    let mut own = false;
    for sequence in sequences.filter(|s| s.identities.iter().any(|h| h == hash)) {
        match sequence.customer.customer_id {
            Some(theirs) if theirs == id => own = true,
            Some(_) => return false,
            None => {}
        }
    }
    own
}

/// A sequence as stored, with what it means: steps sent and still scheduled, contact fields held.
fn sequence_held(sequence: &Sequence) -> serde_json::Value {
    let done = (sequence.done as usize).min(sequence.due_ms.len());
    let c = &sequence.customer;
    json!({
        "stored": sequence,
        "steps": sequence.due_ms.len(),
        // Steps skipped as late were never sent.
        "steps_sent": sequence.steps_sent(),
        "steps_scheduled": sequence.due_ms[done..].iter().map(|d| rfc3339(*d)).collect::<Vec<_>>(),
        "contact_fields": contact_fields([
            ("email", c.email.is_some()),
            ("phone", c.phone.is_some()),
            ("first_name", c.first_name.is_some()),
            ("last_name", c.last_name.is_some()),
        ]),
    })
}

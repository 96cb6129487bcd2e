//! Redactions that stick: `customers/redact` and `shop/redact` delete what the journey holds
//! and leave markers ([`aftercart_shopify::privacy::markers`]: customer and order ids, keyed
//! hashes of the email and phone, the shop), so that a fact about the person arriving later, or
//! in flight on another topic, never brings their orders back nor sends them a touchpoint.

use aftercart_runtime::state_hash::StateHasher;
use aftercart_shopify::privacy::markers::{Mark, Pseudonyms, RedactionMarker};

use super::{tombstone, Counted, Effect, Engine, Step};
use crate::domain::input::Input;
use crate::domain::state::{buyer_entity, customer_entity, order_entity, Entity};

/// The hashes' domain: keeps them apart from other services' hashes of the same value.
const DOMAIN: &str = "journey";

/// Who these identifiers of `shop` name, as markers key them.
pub(super) fn pseudonyms(
    hasher: &StateHasher,
    shop: &str,
    (customer_id, email, phone, orders): (Option<u64>, Option<&str>, Option<&str>, &[u64]),
) -> Pseudonyms {
    // Shop domains hold no `/`, so `<shop>/<value>` names one shop and one value.
    Pseudonyms::new(customer_id, email, phone, orders, |kind, value| {
        hasher.fingerprint(DOMAIN, kind, &format!("{shop}/{value}"))
    })
}

/// Who a fact that could re-create someone names; `None` for those that cannot (redactions,
/// data requests, ignored topics). A KPI count names no one but is of the shop.
fn named(hasher: &StateHasher, shop: &str, input: &Input) -> Option<Pseudonyms> {
    let who = match input {
        Input::Order(fact) => {
            let id = fact.customer.as_ref().and_then(|c| c.id);
            return Some(pseudonyms(
                hasher,
                shop,
                (id, fact.email(), fact.phone(), &[fact.id]),
            ));
        }
        Input::Refund { order_id, .. } | Input::Deleted { order_id } => (None, None, *order_id),
        Input::Shipment(fact) => (None, None, fact.order_id),
        Input::Consent(change) => {
            return Some(pseudonyms(
                hasher,
                shop,
                (Some(change.customer_id), None, None, &[]),
            ))
        }
        Input::Invite(fact) => {
            let invite = &fact.invite;
            (
                invite.advocate.customer_id,
                invite.advocate.email.as_deref(),
                invite.order.id,
            )
        }
        Input::Kpi(_) => return Some(Pseudonyms::default()),
        Input::RedactCustomer { .. }
        | Input::RedactShop
        | Input::DataRequest(_)
        | Input::Ignored => return None,
    };
    let (customer_id, email, order_id) = who;
    Some(pseudonyms(
        hasher,
        shop,
        (customer_id, email, None, &[order_id]),
    ))
}

/// The changelog writes of markers just remembered.
pub(super) fn remember(markers: Vec<(String, RedactionMarker)>) -> impl Iterator<Item = Effect> {
    markers.into_iter().map(|(key, marker)| Effect::Persist {
        key,
        entity: Some(Box::new(Entity::Redaction(marker))),
    })
}

impl Engine {
    /// The effects of dropping `input`, received at `at_ms`, when it is about someone redacted
    /// (or of a shop redacted after it was received); `None` to apply it. A dropped order's id
    /// is remembered too, so that its fulfilments and refunds, which name only the order, are
    /// dropped as well; and what those left before it (held under the order id alone, naming
    /// no one, so the redaction could not tell it was theirs) is forgotten.
    pub(super) fn drop_redacted(
        &mut self,
        partition: i32,
        shop: &str,
        input: &Input,
        at_ms: i64,
    ) -> Option<Vec<Effect>> {
        let named = named(&self.rules.hasher, shop, input)?;
        let state = self.partitions.entry(partition).or_default();
        let marks = named.marks();
        if !state.markers.forbids(shop, &marks, at_ms) {
            return None;
        }
        let mut effects = vec![Effect::Count(Counted::Redacted)];
        if let Input::Order(fact) = input {
            if state.markers.names(shop, &marks) {
                let marked = state
                    .markers
                    .mark(shop, &[Mark::Order(fact.id)], false, at_ms);
                effects.extend(remember(marked));
                let mut step = Step {
                    rules: &self.rules,
                    state,
                    shop,
                    effects: &mut effects,
                    offset: None,
                };
                step.forget_order(&order_entity(shop, fact.id));
            }
        }
        Some(effects)
    }
}

impl Step<'_> {
    /// `customers/redact`: forgets the customer's orders (by order id, customer id or email),
    /// consent and order count, and remembers the redaction under what it names and under the
    /// ids and emails of the orders forgotten (a changed address, a checkout in flight under it).
    pub(super) fn redact_customer(
        &mut self,
        who: (Option<u64>, Option<&str>, Option<&str>, &[u64]),
        at_ms: i64,
    ) {
        let (customer_id, email, _, orders) = who;
        let prefix = format!("order/{}/", self.shop);
        let doomed: Vec<String> = self
            .state
            .orders
            .iter()
            .filter(|(key, order)| {
                key.starts_with(&prefix)
                    && (orders.contains(&order.order_id)
                        || (customer_id.is_some() && order.customer_id == customer_id)
                        || email.is_some_and(|e| {
                            order
                                .email
                                .as_deref()
                                .is_some_and(|o| o.trim().eq_ignore_ascii_case(e.trim()))
                        }))
            })
            .map(|(key, _)| key.clone())
            .collect();
        let hasher = &self.rules.hasher;
        let mut named = vec![pseudonyms(hasher, self.shop, who)];
        for key in &doomed {
            if let Some(order) = self.state.orders.get(key) {
                // An order's customer id only when the redaction names none: another customer
                // id sharing the email (a household) is someone else.
                let id = customer_id.map_or(order.customer_id, |_| None);
                named.push(pseudonyms(
                    hasher,
                    self.shop,
                    (id, order.email.as_deref(), None, &[order.order_id]),
                ));
            }
        }
        let marks: Vec<Mark<'_>> = named.iter().flat_map(Pseudonyms::marks).collect();
        let marked = self.state.markers.mark(self.shop, &marks, false, at_ms);
        self.effects.extend(remember(marked));
        for key in doomed {
            self.forget_order(&key);
        }
        let ids = named.iter().filter_map(|n| n.customer_id);
        let mut ids: Vec<u64> = ids.collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let key = customer_entity(self.shop, id);
            if self.state.customers.remove(&key).is_some() {
                self.effects.push(tombstone(&key));
            }
            let key = buyer_entity(self.shop, id);
            if self.state.buyers.remove(&key).is_some() {
                self.effects.push(tombstone(&key));
            }
        }
    }
}

//! The abandonment state machine. Pure: it is fed inputs with their receive time and the clock,
//! and answers with effects (records to emit, journey states to persist) for the I/O layer.

use std::collections::{BTreeSet, HashMap};

use crate::domain::event::{
    event_id, rfc3339, ContactBasis, CustomerOut, EmittedEvent, EventType, Kind, LineItemsOut,
    OutputEvent, Value,
};
use aftercart_shopify::privacy::Person;

use crate::domain::consent::{self, Consent, Stored};
use crate::domain::input::{GlobalInput, JourneyInput};
use crate::domain::journey::{customer_ref, Journey, OrderRef, Snapshot};
use crate::domain::segments::{self, SegmentRules, Segments, Stage};

/// Timing and segment rules.
#[derive(Debug, Clone)]
pub struct Rules {
    pub abandon_after_ms: i64,
    pub cart_abandon_after_ms: i64,
    /// Journeys without activity for this long are forgotten.
    pub retention_ms: i64,
    /// After `app/uninstalled`, a shop's state is dropped once this grace period passes.
    pub uninstall_grace_ms: i64,
    /// An order whose landing or referring site contains this used the recovery URL.
    pub recovery_marker: String,
    /// Contact details travel for every buyer (the merchant's transactional reminders), not
    /// only for those with marketing consent.
    pub transactional_reminders: bool,
    pub segments: SegmentRules,
}

/// What the I/O layer must do, in order: emit records, then persist journey states.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Emit {
        key: String,
        event: Box<OutputEvent>,
    },
    /// `None` deletes the journey (a changelog tombstone).
    Persist {
        key: String,
        journey: Option<Box<Journey>>,
    },
    /// A customer's consent copy in the partition's changelog (`None` deletes it).
    Consent {
        key: String,
        consent: Option<Consent>,
    },
}

/// The journeys of one input partition and their timers.
#[derive(Debug, Default)]
pub struct Partition {
    journeys: HashMap<String, Journey>,
    timers: BTreeSet<(i64, String)>,
    due: HashMap<String, i64>,
    /// Customer → keys of their journeys, so history lookups never scan the partition.
    by_customer: HashMap<String, BTreeSet<String>>,
    /// Customer → the consent copy this partition's changelog holds ([`consent`]).
    consents: HashMap<String, Consent>,
}

impl Partition {
    pub fn len(&self) -> usize {
        self.journeys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.journeys.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Journey> {
        self.journeys.get(key)
    }

    fn schedule(&mut self, key: &str, due: Option<i64>) {
        if let Some(previous) = self.due.remove(key) {
            self.timers.remove(&(previous, key.to_string()));
        }
        if let Some(due) = due {
            self.timers.insert((due, key.to_string()));
            self.due.insert(key.to_string(), due);
        }
    }

    fn remove(&mut self, key: &str) -> Option<Journey> {
        self.schedule(key, None);
        let removed = self.journeys.remove(key);
        if let Some(journey) = &removed {
            self.reindex(key, journey.customer_ref(), None);
        }
        removed
    }

    /// Moves a journey's key from its previous customer to its current one.
    fn reindex(&mut self, key: &str, before: Option<String>, after: Option<String>) {
        if before == after {
            return;
        }
        if let Some(customer) = before {
            if let Some(keys) = self.by_customer.get_mut(&customer) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_customer.remove(&customer);
                }
            }
        }
        if let Some(customer) = after {
            self.by_customer
                .entry(customer)
                .or_default()
                .insert(key.to_string());
        }
    }
}

/// All partitions an instance owns, plus the customer facts shared by them.
#[derive(Debug)]
pub struct Engine {
    rules: Rules,
    partitions: HashMap<i32, Partition>,
    /// Latest marketing consent per customer, from the customers topic and the consent copies
    /// restored with owned partitions.
    consent: HashMap<String, Consent>,
    /// Shop → when `app/uninstalled` arrived.
    uninstalled: HashMap<String, i64>,
    /// Every redaction seen, applied again to partitions restored later (their previous owner
    /// may have crashed before applying it).
    /// Indexed by shop: records from other topics can arrive before what they redact.
    redactions: HashMap<String, Vec<Redaction>>,
}

#[derive(Debug, Clone)]
struct Redaction {
    shop: String,
    /// `None` redacts the whole shop.
    customer: Option<Person>,
    at_ms: i64,
}

impl Redaction {
    /// Every journey of the person (or shop), whenever its facts arrive: a fact read after the
    /// redaction (late, or in flight on another topic) never brings the person back while the
    /// redaction is remembered.
    fn covers(&self, journey: &Journey) -> bool {
        journey.shop == self.shop
            && match &self.customer {
                None => true,
                Some(person) => belongs_to(journey, person),
            }
    }
}

impl Engine {
    pub fn new(rules: Rules) -> Self {
        Engine {
            rules,
            partitions: HashMap::new(),
            consent: HashMap::new(),
            uninstalled: HashMap::new(),
            redactions: HashMap::new(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    pub fn partition(&self, partition: i32) -> Option<&Partition> {
        self.partitions.get(&partition)
    }

    /// Journeys held, across partitions.
    pub fn journeys(&self) -> usize {
        self.partitions.values().map(Partition::len).sum()
    }

    /// Takes ownership of a partition with its restored journeys.
    /// Journeys covered by a redaction seen meanwhile are dropped; the returned effects
    /// tombstone them.
    pub fn assign(
        &mut self,
        partition: i32,
        journeys: impl IntoIterator<Item = (String, Journey)>,
    ) -> Vec<Effect> {
        let mut state = Partition::default();
        let mut effects = Vec::new();
        for (key, journey) in journeys {
            if self.redacted(&journey) {
                effects.push(Effect::Persist { key, journey: None });
                continue;
            }
            let due = self.due_of(&journey);
            state.reindex(&key, None, journey.customer_ref());
            state.journeys.insert(key.clone(), journey);
            state.schedule(&key, due);
        }
        self.partitions.insert(partition, state);
        effects
    }

    /// Takes ownership of a partition with everything its changelog held: journeys (as
    /// [`Engine::assign`]) and consent copies. A copy is merged with what is known
    /// ([`Consent::merge`]: the customers topic may no longer hold what it says); one of a redacted customer is deleted; consent
    /// known here and newer than the partition's copy is written to it.
    pub fn restore(&mut self, partition: i32, stored: HashMap<String, Stored>) -> Vec<Effect> {
        let mut journeys = Vec::new();
        let mut copies = HashMap::new();
        for (key, entity) in stored {
            match (entity, consent::customer_of(&key)) {
                (Stored::Consent(c), Some(customer)) => {
                    copies.insert(customer.to_string(), c);
                }
                (Stored::Journey(journey), None) => journeys.push((key, *journey)),
                // A key and a value that do not agree: dropped, as an undecodable record is.
                _ => {}
            }
        }
        let mut effects = self.assign(partition, journeys);
        for (customer, copy) in &copies {
            if self.consent_redacted(customer) {
                effects.push(Effect::Consent {
                    key: consent::key(customer),
                    consent: None,
                });
                continue;
            }
            self.consent
                .entry(customer.clone())
                .or_default()
                .merge(*copy);
        }
        copies.retain(|customer, _| !self.consent_redacted(customer));
        for (customer, known) in &self.consent {
            if copies.get(customer) != Some(known) {
                effects.push(Effect::Consent {
                    key: consent::key(customer),
                    consent: Some(*known),
                });
                copies.insert(customer.clone(), *known);
            }
        }
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.consents = copies;
        }
        effects
    }

    /// Whether a redaction remembered here names this customer (`<shop>/id:<id>`).
    fn consent_redacted(&self, customer: &str) -> bool {
        let Some((shop, id)) = customer.rsplit_once("/id:") else {
            return false;
        };
        let id = id.parse::<u64>().ok();
        self.redactions.get(shop).is_some_and(|list| {
            list.iter().any(|r| match &r.customer {
                None => true,
                Some(person) => person.customer_id.is_some() && person.customer_id == id,
            })
        })
    }

    /// Writes a customer's consent (or its deletion) to the copy of every owned partition.
    fn copy_consent(&mut self, customer: &str) -> Vec<(i32, Effect)> {
        let known = self.consent.get(customer).copied();
        let mut effects = Vec::new();
        for (partition, state) in &mut self.partitions {
            let changed = match known {
                Some(c) => state.consents.insert(customer.to_string(), c) != Some(c),
                None => state.consents.remove(customer).is_some(),
            };
            if changed {
                effects.push((
                    *partition,
                    Effect::Consent {
                        key: consent::key(customer),
                        consent: known,
                    },
                ));
            }
        }
        effects
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Revokes a partition and hands its journeys back (for [`Engine::assign`] later).
    pub fn release(&mut self, partition: i32) -> Option<HashMap<String, Journey>> {
        self.partitions
            .remove(&partition)
            .map(|state| state.journeys)
    }

    /// Revokes a partition and hands back everything its changelog holds (for
    /// [`Engine::restore`] later).
    pub fn release_stored(&mut self, partition: i32) -> Option<HashMap<String, Stored>> {
        let state = self.partitions.remove(&partition)?;
        let mut stored: HashMap<String, Stored> = state
            .journeys
            .into_iter()
            .map(|(key, journey)| (key, Stored::Journey(Box::new(journey))))
            .collect();
        stored.extend(
            state
                .consents
                .into_iter()
                .map(|(customer, c)| (consent::key(&customer), Stored::Consent(c))),
        );
        Some(stored)
    }

    /// When the journey's next abandonment is due, if any.
    fn due_of(&self, journey: &Journey) -> Option<i64> {
        if journey.is_closed() || self.uninstalled.contains_key(&journey.shop) {
            return None;
        }
        match &journey.checkout {
            Some(_) if journey.abandoned_at_ms.is_none() && journey.has_contact() => {
                Some(journey.last_activity_ms + self.rules.abandon_after_ms)
            }
            Some(_) => None,
            None if journey.cart_at_ms.is_some() && journey.cart_abandoned_at_ms.is_none() => {
                Some(journey.last_activity_ms + self.rules.cart_abandon_after_ms)
            }
            None => None,
        }
    }

    /// Applies one journey-partitioned record received at `at_ms`.
    pub fn apply(
        &mut self,
        partition: i32,
        key: &str,
        shop: &str,
        input: JourneyInput,
        at_ms: i64,
    ) -> Vec<Effect> {
        if matches!(input, JourneyInput::Ignored) {
            return Vec::new();
        }
        let recovery_marker = self.rules.recovery_marker.clone();
        let transactional = self.rules.transactional_reminders;
        let state = self.partitions.entry(partition).or_default();
        let journey = state
            .journeys
            .entry(key.to_string())
            .or_insert_with(|| Journey::new(shop, at_ms));
        // The index holds each journey under its current customer: note it before changes.
        let indexed_as = journey.customer_ref();
        let mut effects = Vec::new();
        let changed = match input {
            JourneyInput::Checkout(checkout) => {
                let updated_ms = checkout
                    .updated_at
                    .as_deref()
                    .and_then(crate::domain::event::parse_time_ms)
                    .unwrap_or(at_ms);
                if journey.checkout.is_some()
                    && journey
                        .checkout_updated_ms
                        .is_some_and(|seen| seen >= updated_ms)
                {
                    false // an older (or the same) update never overwrites newer state
                } else {
                    journey.checkout = Some(Snapshot::from_checkout(&checkout));
                    journey.checkout_updated_ms = Some(updated_ms);
                    journey.visits += 1;
                    journey.last_activity_ms = journey.last_activity_ms.max(at_ms);
                    true
                }
            }
            JourneyInput::Cart => {
                journey.cart_at_ms.get_or_insert(at_ms);
                journey.last_activity_ms = journey.last_activity_ms.max(at_ms);
                true
            }
            JourneyInput::CheckoutDeleted => !std::mem::replace(&mut journey.deleted, true),
            JourneyInput::Order(order) => {
                if journey.order.is_some() {
                    false // orders/paid after orders/create, or a redelivery
                } else {
                    let order = OrderRef::from_order(&order, at_ms, &recovery_marker);
                    if let Some(event) = recovered_event(key, journey, &order, transactional) {
                        journey.recovered = true;
                        effects.push(Effect::Emit {
                            key: key.to_string(),
                            event: Box::new(event),
                        });
                    }
                    journey.order = Some(order);
                    true
                }
            }
            JourneyInput::Ignored => false,
        };
        if changed {
            let snapshot = journey.clone();
            if self.redacted(&snapshot) {
                // Redacted before this record was read (another topic, another order): forget
                // the journey instead of reviving it, and emit nothing for it.
                let state = self.partitions.get_mut(&partition).expect("entry above");
                state.remove(key);
                return vec![Effect::Persist {
                    key: key.to_string(),
                    journey: None,
                }];
            }
            let due = self.due_of(&snapshot);
            let state = self.partitions.get_mut(&partition).expect("entry above");
            state.schedule(key, due);
            state.reindex(key, indexed_as, snapshot.customer_ref());
            effects.push(Effect::Persist {
                key: key.to_string(),
                journey: Some(Box::new(snapshot)),
            });
        }
        effects
    }

    /// Applies a customer or shop fact (read by every instance) to the partitions owned here.
    pub fn apply_global(
        &mut self,
        shop: &str,
        input: GlobalInput,
        at_ms: i64,
    ) -> Vec<(i32, Effect)> {
        match input {
            GlobalInput::Consent {
                customer_id,
                email,
                sms,
            } => match customer_ref(shop, Some(customer_id), None) {
                // Read after their redaction (in flight, or replayed first on a restart): no
                // copy of a redacted customer is made again.
                Some(customer) if self.consent_redacted(&customer) => Vec::new(),
                Some(customer) => {
                    self.consent
                        .entry(customer.clone())
                        .or_default()
                        .hear(email, sms, at_ms);
                    self.copy_consent(&customer)
                }
                None => Vec::new(),
            },
            GlobalInput::RedactCustomer(person) => {
                let mut effects = Vec::new();
                if let Some(customer) = customer_ref(shop, person.customer_id, None) {
                    self.consent.remove(&customer);
                    effects.extend(self.copy_consent(&customer));
                }
                if person.is_empty() {
                    return effects;
                }
                effects.extend(self.redact(Redaction {
                    shop: shop.to_string(),
                    customer: Some(person),
                    at_ms,
                }));
                effects
            }
            GlobalInput::RedactShop => {
                let prefix = format!("{shop}/");
                let mut gone: BTreeSet<String> = self
                    .consent
                    .keys()
                    .filter(|customer| customer.starts_with(&prefix))
                    .cloned()
                    .collect();
                for state in self.partitions.values() {
                    gone.extend(
                        state
                            .consents
                            .keys()
                            .filter(|customer| customer.starts_with(&prefix))
                            .cloned(),
                    );
                }
                let mut effects = Vec::new();
                for customer in gone {
                    self.consent.remove(&customer);
                    effects.extend(self.copy_consent(&customer));
                }
                effects.extend(self.redact(Redaction {
                    shop: shop.to_string(),
                    customer: None,
                    at_ms,
                }));
                effects
            }
            // Answered by the I/O layer from `held_about`: it is not a change of state.
            GlobalInput::DataRequest(_) => Vec::new(),
            GlobalInput::Uninstalled => {
                self.uninstalled.insert(shop.to_string(), at_ms);
                // Disarm the shop's timers: nothing is emitted for an uninstalled shop.
                for state in self.partitions.values_mut() {
                    let keys: Vec<String> = state
                        .journeys
                        .iter()
                        .filter(|(_, j)| j.shop == shop)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        state.schedule(&key, None);
                    }
                }
                Vec::new()
            }
            GlobalInput::Ignored => Vec::new(),
        }
    }

    /// Per owned partition, the journeys of `shop` that belong to `person` (sorted by key).
    pub fn held_about(&self, shop: &str, person: &Person) -> Vec<(i32, Vec<(String, Journey)>)> {
        let mut held: Vec<(i32, Vec<(String, Journey)>)> = self
            .partitions
            .iter()
            .map(|(partition, state)| {
                let mut journeys: Vec<(String, Journey)> = state
                    .journeys
                    .iter()
                    .filter(|(_, j)| j.shop == shop && owned_by(j, person))
                    .map(|(k, j)| (k.clone(), j.clone()))
                    .collect();
                journeys.sort_by(|a, b| a.0.cmp(&b.0));
                (*partition, journeys)
            })
            .collect();
        held.sort_by_key(|(partition, _)| *partition);
        held
    }

    /// The consent copy a partition's changelog holds for the customer `person` names by id,
    /// with its changelog key.
    pub fn consent_held(
        &self,
        partition: i32,
        shop: &str,
        person: &Person,
    ) -> Option<(String, Consent)> {
        let customer = customer_ref(shop, Some(person.customer_id?), None)?;
        let copy = self.partitions.get(&partition)?.consents.get(&customer)?;
        Some((consent::key(&customer), *copy))
    }

    /// True when a redaction seen earlier covers this journey's data.
    fn redacted(&self, journey: &Journey) -> bool {
        self.redactions
            .get(&journey.shop)
            .is_some_and(|list| list.iter().any(|r| r.covers(journey)))
    }

    fn redact(&mut self, redaction: Redaction) -> Vec<(i32, Effect)> {
        let effects = self.purge(|journey| redaction.covers(journey));
        self.redactions
            .entry(redaction.shop.clone())
            .or_default()
            .push(redaction);
        effects
    }

    fn purge(&mut self, doomed: impl Fn(&Journey) -> bool) -> Vec<(i32, Effect)> {
        let mut effects = Vec::new();
        for (partition, state) in &mut self.partitions {
            let keys: Vec<String> = state
                .journeys
                .iter()
                .filter(|(_, j)| doomed(j))
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                state.remove(&key);
                effects.push((*partition, Effect::Persist { key, journey: None }));
            }
        }
        effects
    }

    /// When the earliest abandonment timer of any owned partition is due, if any: the loop
    /// waits for input no longer than that, so a timer fires on time after an idle spell.
    pub fn next_due(&self) -> Option<i64> {
        self.partitions
            .values()
            .filter_map(|state| state.timers.first().map(|(due, _)| *due))
            .min()
    }

    /// Fires every abandonment due at `now_ms`.
    pub fn fire_due(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        let mut due_now: Vec<(i32, String)> = Vec::new();
        for (partition, state) in &mut self.partitions {
            while let Some((due, key)) = state.timers.first().cloned() {
                if due > now_ms {
                    break;
                }
                state.timers.pop_first();
                state.due.remove(&key);
                due_now.push((*partition, key));
            }
        }
        let mut effects = Vec::new();
        for (partition, key) in due_now {
            effects.extend(
                self.abandon(partition, &key)
                    .into_iter()
                    .map(|e| (partition, e)),
            );
        }
        effects
    }

    fn abandon(&mut self, partition: i32, key: &str) -> Vec<Effect> {
        let Some(journey) = self
            .partitions
            .get(&partition)
            .and_then(|p| p.journeys.get(key))
            .cloned()
        else {
            return Vec::new();
        };
        let Some(due) = self.due_of(&journey) else {
            return Vec::new();
        };
        let kind = if journey.checkout.is_some() {
            Kind::Checkout
        } else {
            Kind::Cart
        };
        let segments = self.segments(&journey, kind, due);
        let event = abandoned_event(
            key,
            &journey,
            kind,
            segments,
            due,
            self.rules.transactional_reminders,
        );
        let mut updated = journey;
        match kind {
            Kind::Checkout => updated.abandoned_at_ms = Some(due),
            Kind::Cart => updated.cart_abandoned_at_ms = Some(due),
        }
        let state = self.partitions.get_mut(&partition).expect("owned");
        state.journeys.insert(key.to_string(), updated.clone());
        let next = self.due_of(&updated);
        self.partitions
            .get_mut(&partition)
            .expect("owned")
            .schedule(key, next);
        vec![
            Effect::Emit {
                key: key.to_string(),
                event: Box::new(event),
            },
            Effect::Persist {
                key: key.to_string(),
                journey: Some(Box::new(updated)),
            },
        ]
    }

    fn segments(&self, journey: &Journey, kind: Kind, at_ms: i64) -> Segments {
        let checkout = journey.checkout.as_ref();
        let customer = journey.customer_ref();
        let (orders_seen, earlier_abandonments) = match &customer {
            Some(customer) => self.history(customer, at_ms),
            None => (0, Vec::new()),
        };
        let consent_event = customer
            .as_ref()
            .filter(|c| c.contains("/id:"))
            .and_then(|c| self.consent.get(c))
            .map_or((None, None), Consent::channels);
        let rules = &self.rules.segments;
        Segments {
            stage: if kind == Kind::Cart {
                Stage::Cart
            } else {
                segments::stage(checkout)
            },
            value_tier: segments::value_tier(
                checkout.and_then(|c| c.total_price.as_deref()),
                rules,
            ),
            customer: segments::customer_kind(checkout.and_then(|c| c.orders_count), orders_seen),
            contactable: segments::contactable(checkout),
            consent: segments::consent(checkout, consent_event),
            discount: segments::discount(checkout),
            fence_sitter: segments::fence_sitter(journey, rules),
            repeat: segments::repeat(&earlier_abandonments, at_ms, rules),
        }
    }

    /// Orders seen and earlier checkout abandonments of a customer, across owned partitions
    /// (through the customer index: a full scan here made mass abandonment quadratic).
    fn history(&self, customer: &str, before_ms: i64) -> (u32, Vec<i64>) {
        let mut orders = 0;
        let mut abandonments = Vec::new();
        for state in self.partitions.values() {
            let keys = state.by_customer.get(customer).into_iter().flatten();
            for journey in keys.filter_map(|key| state.journeys.get(key)) {
                if journey.order.as_ref().is_some_and(|o| o.at_ms < before_ms) {
                    orders += 1;
                }
                if let Some(at) = journey.abandoned_at_ms {
                    abandonments.push(at);
                }
            }
        }
        (orders, abandonments)
    }

    /// Brings a restored journey in line with an event found in the output topic (emitted before
    /// a crash, but not yet in the changelog), so it is never emitted twice.
    pub fn reconcile(&mut self, partition: i32, emitted: &EmittedEvent) -> Option<Effect> {
        let at = crate::domain::event::parse_time_ms(&emitted.abandoned_at)?;
        let state = self.partitions.get_mut(&partition)?;
        // A crash after the event was written but before its journey's first state was (a new
        // journey abandoned in the same batch) leaves no journey to mark. Keep one holding just
        // the mark: the input records read again then update it instead of starting a fresh
        // journey that would be abandoned a second time.
        let journey = state
            .journeys
            .entry(emitted.journey_key.clone())
            .or_insert_with(|| Journey::new(&emitted.shop, at));
        let before = journey.clone();
        match (emitted.event_type, emitted.kind) {
            (EventType::Abandoned, Kind::Checkout) => {
                journey.abandoned_at_ms.get_or_insert(at);
            }
            (EventType::Abandoned, Kind::Cart) => {
                journey.cart_abandoned_at_ms.get_or_insert(at);
            }
            (EventType::Recovered, _) => journey.recovered = true,
        }
        if *journey == before {
            return None;
        }
        let snapshot = journey.clone();
        let due = self.due_of(&snapshot);
        let state = self.partitions.get_mut(&partition).expect("owned");
        state.schedule(&emitted.journey_key, due);
        Some(Effect::Persist {
            key: emitted.journey_key.clone(),
            journey: Some(Box::new(snapshot)),
        })
    }

    /// Forgets journeys idle beyond retention, and shops uninstalled beyond the grace period.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        let retention = self.rules.retention_ms;
        let grace = self.rules.uninstall_grace_ms;
        let gone: Vec<(String, i64)> = self
            .uninstalled
            .iter()
            .filter(|(_, at)| now_ms - **at >= grace)
            .map(|(shop, at)| (shop.clone(), *at))
            .collect();
        for (shop, _) in &gone {
            self.uninstalled.remove(shop);
        }
        // A redaction older than retention covers nothing a restore could bring back.
        for list in self.redactions.values_mut() {
            list.retain(|r| now_ms - r.at_ms < retention);
        }
        self.redactions.retain(|_, list| !list.is_empty());
        self.purge(|journey| {
            now_ms - journey.last_activity_ms >= retention
                || gone
                    .iter()
                    .any(|(shop, at)| journey.shop == *shop && journey.last_activity_ms <= *at)
        })
    }
}

fn belongs_to(journey: &Journey, person: &Person) -> bool {
    names(journey, |id, email, phone, order| {
        person.matches(id, email, phone, order)
    })
}

/// A journey a data request may report: [`Person::owns`] (never another customer id's).
fn owned_by(journey: &Journey, person: &Person) -> bool {
    names(journey, |id, email, phone, order| {
        person.owns(id, email, phone, order)
    })
}

/// Whether the journey's checkout or order is named by `test` (customer id, email, phone,
/// order id).
fn names(
    journey: &Journey,
    test: impl Fn(Option<u64>, Option<&str>, Option<&str>, Option<u64>) -> bool,
) -> bool {
    journey
        .checkout
        .as_ref()
        .is_some_and(|c| test(c.customer_id, c.email.as_deref(), c.phone.as_deref(), None))
        || journey
            .order
            .as_ref()
            .is_some_and(|o| test(o.customer_id, o.email.as_deref(), None, Some(o.id)))
}

/// Why the person may be contacted, if they may: marketing consent on a channel wins; else the
/// merchant's transactional-reminder setting.
fn contact_basis(consent: &segments::Channels, transactional: bool) -> Option<ContactBasis> {
    if consent.email || consent.sms {
        Some(ContactBasis::Marketing)
    } else if transactional {
        Some(ContactBasis::Transactional)
    } else {
        None
    }
}

/// The customer as events show them: email only with email consent, phone only with SMS
/// consent (either with the transactional setting), names only when some channel is open; the
/// id and country always (they address no one).
fn customer_out(
    checkout: &Snapshot,
    consent: &segments::Channels,
    basis: Option<ContactBasis>,
) -> CustomerOut {
    let transactional = basis == Some(ContactBasis::Transactional);
    let open = |allowed: bool, value: &Option<String>| {
        if allowed || transactional {
            value.clone()
        } else {
            None
        }
    };
    let any = basis.is_some();
    CustomerOut {
        id: checkout.customer_id,
        email: open(consent.email, &checkout.email),
        phone: open(consent.sms, &checkout.phone),
        first_name: open(any, &checkout.first_name),
        last_name: open(any, &checkout.last_name),
        country: checkout.country.clone(),
        accepts_email_marketing: consent.email,
        accepts_sms_marketing: consent.sms,
    }
}

/// An event with every field that comes from the journey; callers add what is specific.
fn journey_event(
    key: &str,
    journey: &Journey,
    event_type: EventType,
    kind: Kind,
    consent: &segments::Channels,
    abandoned_at_ms: i64,
    transactional: bool,
) -> OutputEvent {
    let checkout = journey.checkout.as_ref();
    let basis = checkout.and(contact_basis(consent, transactional));
    OutputEvent {
        event_type,
        kind,
        event_id: event_id(event_type, kind, key),
        shop: journey.shop.clone(),
        journey_key: key.to_string(),
        checkout_token: checkout.and_then(|c| c.token.clone()),
        cart_token: checkout
            .and_then(|c| c.cart_token.clone())
            .or_else(|| cart_token_of(key, journey)),
        customer: checkout.map(|c| customer_out(c, consent, basis)),
        value: checkout.and_then(|c| {
            c.total_price.clone().map(|amount| Value {
                amount,
                currency: c.currency.clone(),
                subtotal: c.subtotal_price.clone(),
            })
        }),
        line_items: None,
        segments: None,
        contact_basis: basis,
        recovery_url: None,
        abandoned_at: rfc3339(abandoned_at_ms),
        last_activity_at: rfc3339(journey.last_activity_ms),
        order_id: None,
        recovered_at: None,
        recovered_after_seconds: None,
        used_recovery_url: None,
        used_discount: None,
    }
}

fn abandoned_event(
    key: &str,
    journey: &Journey,
    kind: Kind,
    segments: Segments,
    at_ms: i64,
    transactional: bool,
) -> OutputEvent {
    let mut event = journey_event(
        key,
        journey,
        EventType::Abandoned,
        kind,
        &segments.consent,
        at_ms,
        transactional,
    );
    if event.contact_basis.is_some() && kind == Kind::Checkout {
        event.recovery_url = journey
            .checkout
            .as_ref()
            .and_then(|c| c.recovery_url.clone());
    }
    event.line_items = journey.checkout.as_ref().map(|c| LineItemsOut {
        count: c.items.len(),
        quantity: c.items.iter().map(|i| i.quantity).sum(),
        items: c.items.clone(),
    });
    event.segments = Some(segments);
    event
}

/// A cart-only journey's key is `<shop>/<cart token>`.
fn cart_token_of(key: &str, journey: &Journey) -> Option<String> {
    journey.cart_at_ms?;
    key.split_once('/').map(|(_, token)| token.to_string())
}

fn recovered_event(
    key: &str,
    journey: &Journey,
    order: &OrderRef,
    transactional: bool,
) -> Option<OutputEvent> {
    if journey.recovered {
        return None;
    }
    let (kind, abandoned_at) = match (journey.abandoned_at_ms, journey.cart_abandoned_at_ms) {
        (Some(at), _) => (Kind::Checkout, at),
        (None, Some(at)) => (Kind::Cart, at),
        (None, None) => return None,
    };
    let checkout_consent = journey.checkout.as_ref().map_or(
        segments::Channels {
            email: false,
            sms: false,
        },
        |c| segments::Channels {
            email: c.accepts_email,
            sms: c.accepts_sms,
        },
    );
    let mut event = journey_event(
        key,
        journey,
        EventType::Recovered,
        kind,
        &checkout_consent,
        abandoned_at,
        transactional,
    );
    event.order_id = Some(order.id);
    event.recovered_at = Some(rfc3339(order.at_ms));
    event.recovered_after_seconds = Some(((order.at_ms - abandoned_at) / 1000).max(0));
    event.used_recovery_url = Some(order.used_recovery_url);
    event.used_discount = Some(order.used_discount);
    Some(event)
}

#[cfg(test)]
pub(crate) mod tests;

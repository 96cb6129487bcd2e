//! The nudge state machine. Pure: fed inputs with their receive time and the clock, it answers
//! with effects (nudges to emit, state to persist, counts) for the I/O layer.
//!
//! A checkout abandonment of a person who may be contacted starts a sequence: one nudge per
//! step of the shop's cadence. Any order by the same person (customer id, email or phone, as
//! keyed hashes: not only the same cart), a recovery, an unsubscribe, a redaction or the
//! checkout's deletion stops it. One sequence per person per frequency-cap window.

use std::collections::{BTreeSet, HashMap};

use aftercart_abandonment::domain::event::{parse_time_ms, rfc3339, ContactBasis, OutputEvent};
use aftercart_runtime::state_hash::StateHasher;
use aftercart_shopify::privacy::markers::{Pseudonyms, RedactionMarker, RedactionMarkers};
use aftercart_shopify::privacy::{national_phones, DataRequestReport};
use serde::{Deserialize, Serialize};

use crate::domain::cadence::{postpone, schedule, QuietHours, Steps};
use crate::domain::identity;
use crate::domain::input::{Channels, ContactFacts, Input, OrderFacts};
use crate::domain::nudge::{event_id, Contact, EmittedNudge, Nudge};

/// How long past its due time a step is still sent when a later step is due too. A crash, a
/// restart, a rebalance or a broker outage of a minute delays a step by seconds to minutes: it
/// is still sent (with the later one, in order), so no customer misses a step over it. Only an
/// outage longer than this (far shorter than any real cadence's gaps, hours) skips the stale
/// step: a burst of old reminders is worse than the latest alone.
pub const LATE_AFTER_MS: i64 = 15 * 60_000;

/// A shop's own cadence, quiet hours and switch.
#[derive(Debug, Clone, PartialEq)]
pub struct ShopPolicy {
    pub enabled: bool,
    pub steps: Steps,
    pub quiet_hours: Option<QuietHours>,
}

/// The service's rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Shops without a policy of their own.
    pub default: ShopPolicy,
    pub shops: HashMap<String, ShopPolicy>,
    /// At most one sequence per person within this window.
    pub cap_ms: i64,
    /// How long orders, unsubscribes and sequence starts of a person are remembered (at least
    /// the cap window, and the delay before an abandonment is reported).
    pub memory_ms: i64,
    /// How long a `customers/redact` or `shop/redact` is remembered (its markers).
    pub redaction_retention_ms: i64,
    /// The shared state hash the people are hashed with.
    pub hasher: StateHasher,
}

impl Rules {
    fn policy(&self, shop: &str) -> &ShopPolicy {
        self.shops.get(shop).unwrap_or(&self.default)
    }
}

/// Why a sequence (or a step of one) is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// The person ordered (any cart, any device), before or during the sequence.
    Purchased,
    /// The abandoned checkout was recovered.
    Recovered,
    /// No marketing consent and no transactional setting, or an unsubscribe.
    Consent,
    /// The person already had a sequence within the frequency cap.
    Cap,
    /// `customers/redact` or `shop/redact`.
    Redacted,
    /// The checkout was deleted.
    Deleted,
    /// Nudges are switched off for the shop.
    Disabled,
    /// Overdue past [`LATE_AFTER_MS`] with a later step due too (a long outage): skipped.
    Late,
    /// Written to the nudges topic longer ago than the destination may still send it (the
    /// destination was down that long, or was added later): not sent.
    Stale,
}

impl Suppressed {
    pub const ALL: [Suppressed; 9] = [
        Suppressed::Purchased,
        Suppressed::Recovered,
        Suppressed::Consent,
        Suppressed::Cap,
        Suppressed::Redacted,
        Suppressed::Deleted,
        Suppressed::Disabled,
        Suppressed::Late,
        Suppressed::Stale,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Suppressed::Purchased => "purchased",
            Suppressed::Recovered => "recovered",
            Suppressed::Consent => "consent",
            Suppressed::Cap => "cap",
            Suppressed::Redacted => "redacted",
            Suppressed::Deleted => "deleted",
            Suppressed::Disabled => "disabled",
            Suppressed::Late => "late",
            Suppressed::Stale => "stale",
        }
    }
}

/// What the I/O layer must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Emit {
        key: String,
        nudge: Box<Nudge>,
    },
    /// `None` deletes the entity (a changelog tombstone).
    Persist {
        key: String,
        entity: Option<Box<Entity>>,
    },
    Scheduled,
    Suppressed(Suppressed),
    /// A checkout recovered after at least one nudge of its sequence was sent, with the
    /// recovered amount and currency when the event carries them.
    Attributed {
        revenue: Option<(f64, String)>,
    },
    /// The answer to a `customers/data_request` ([`report`]).
    Answer {
        key: String,
        report: Box<DataRequestReport>,
    },
}

/// A running sequence: what every step's message needs, and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    pub shop: String,
    pub journey_key: String,
    pub abandonment_event_id: String,
    pub checkout_token: Option<String>,
    /// Keyed hashes of the person (id, email, phone).
    pub identities: Vec<String>,
    pub basis: ContactBasis,
    pub customer: Contact,
    pub recovery_url: Option<String>,
    pub value: Option<aftercart_abandonment::domain::event::Value>,
    pub line_items: Option<aftercart_abandonment::domain::event::LineItemsOut>,
    pub segments: serde_json::Value,
    pub abandoned_at_ms: i64,
    /// Due time of every step.
    pub due_ms: Vec<i64>,
    /// Steps done (sent, or skipped as late).
    pub done: u32,
    /// Steps skipped as late before the first step sent (also while that first step waits for
    /// the end of quiet hours). The sequence has sent something once `done` is past them, and
    /// its first sent step is the one at this index.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_unsent: u32,
    /// Every step skipped as late, before a send or after one: `done` less these were sent.
    /// Sequences stored before this count are restored with `skipped_unsent` here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u32,
    /// When the first step was sent, by the wall clock it went out on (the stage's own clock
    /// trails it while catching up): a recovery after it is the nudges' doing. Without it (sequences stored before it was kept, or a first step known only from
    /// the output topic after a crash) that step's due time stands in, which is earlier by as
    /// much as the send was late (up to [`LATE_AFTER_MS`] while catching up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sent_ms: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Sequence {
    fn next_due(&self) -> Option<i64> {
        self.due_ms.get(self.done as usize).copied()
    }

    /// Whether a step of the sequence was sent.
    fn sent_any(&self) -> bool {
        self.done > self.skipped_unsent
    }

    /// How many steps were sent: those done, less those skipped as late.
    pub fn steps_sent(&self) -> u32 {
        let done = self.done.min(self.due_ms.len() as u32);
        done.saturating_sub(self.skipped)
    }
}

/// What is remembered of one identity hash of a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Person {
    pub shop: String,
    /// When the person's last sequence sent its first nudge, by the wall clock it went out on
    /// (the frequency cap counts from it; a recovery after it is attributed to the nudges).
    pub started_ms: Option<i64>,
    /// The abandonment event id of that sequence: the same abandonment read again after a
    /// crash (the person written to the changelog, the sequence not) is that sequence, not
    /// another one the cap keeps out.
    #[serde(default)]
    pub started_by: Option<String>,
    pub ordered_ms: Option<i64>,
    #[serde(default)]
    pub unsubscribed_email: bool,
    #[serde(default)]
    pub unsubscribed_sms: bool,
    pub seen_ms: i64,
}

/// One changelog entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entity", rename_all = "snake_case")]
pub enum Entity {
    Sequence(Box<Sequence>),
    Person(Person),
    /// A redaction remembered ([`aftercart_shopify::privacy::markers`]): pseudonyms only.
    Redaction(RedactionMarker),
}

fn sequence_key(journey_key: &str) -> String {
    format!("sequence/{journey_key}")
}

fn person_key(hash: &str) -> String {
    format!("person/{hash}")
}

/// The sequences and people of one by-shop partition, with their indexes.
#[derive(Debug, Default)]
struct Partition {
    sequences: HashMap<String, Sequence>,
    people: HashMap<String, Person>,
    timers: BTreeSet<(i64, String)>,
    by_identity: HashMap<String, BTreeSet<String>>,
    by_checkout: HashMap<String, String>,
    markers: RedactionMarkers,
}

impl Partition {
    fn insert(&mut self, sequence: Sequence) {
        let key = sequence.journey_key.clone();
        self.remove(&key);
        if let Some(due) = sequence.next_due() {
            self.timers.insert((due, key.clone()));
        }
        for hash in &sequence.identities {
            self.by_identity
                .entry(hash.clone())
                .or_default()
                .insert(key.clone());
        }
        if let Some(token) = &sequence.checkout_token {
            self.by_checkout.insert(token.clone(), key.clone());
        }
        self.sequences.insert(key, sequence);
    }

    fn remove(&mut self, journey_key: &str) -> Option<Sequence> {
        let sequence = self.sequences.remove(journey_key)?;
        if let Some(due) = sequence.next_due() {
            self.timers.remove(&(due, journey_key.to_string()));
        }
        for hash in &sequence.identities {
            if let Some(keys) = self.by_identity.get_mut(hash) {
                keys.remove(journey_key);
                if keys.is_empty() {
                    self.by_identity.remove(hash);
                }
            }
        }
        if let Some(token) = &sequence.checkout_token {
            self.by_checkout.remove(token);
        }
        Some(sequence)
    }

    /// Ends `sequence` (removed already): its deletion, and `started_by` cleared on the people
    /// it started (their cap window stays), so that only a running sequence lost from the
    /// changelog is taken up again when its abandonment is read again, never an ended one.
    /// The people are written before the deletion: a crash between the two leaves the
    /// sequence running in the changelog (its stop read again ends it), never deleted with a
    /// person still naming it (taken up again as lost).
    fn end(&mut self, sequence: &Sequence) -> Vec<Effect> {
        let mut effects = Vec::new();
        for hash in &sequence.identities {
            if let Some(person) = self.people.get_mut(hash) {
                if person.started_by.as_deref() == Some(sequence.abandonment_event_id.as_str()) {
                    person.started_by = None;
                    effects.push(persist_person(hash, person));
                }
            }
        }
        effects.push(delete_sequence(&sequence.journey_key));
        effects
    }

    /// Journey keys of the sequences of anyone with one of `hashes`.
    fn matching(&self, hashes: &[String]) -> BTreeSet<String> {
        hashes
            .iter()
            .filter_map(|h| self.by_identity.get(h))
            .flatten()
            .cloned()
            .collect()
    }
}

pub struct Engine {
    rules: Rules,
    partitions: HashMap<i32, Partition>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

fn persist_sequence(sequence: &Sequence) -> Effect {
    Effect::Persist {
        key: sequence_key(&sequence.journey_key),
        entity: Some(Box::new(Entity::Sequence(Box::new(sequence.clone())))),
    }
}

fn delete_sequence(journey_key: &str) -> Effect {
    Effect::Persist {
        key: sequence_key(journey_key),
        entity: None,
    }
}

fn persist_person(hash: &str, person: &Person) -> Effect {
    Effect::Persist {
        key: person_key(hash),
        entity: Some(Box::new(Entity::Person(person.clone()))),
    }
}

impl Engine {
    pub fn new(rules: Rules) -> Engine {
        Engine {
            rules,
            partitions: HashMap::new(),
        }
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Running sequences, and those whose next step is overdue by `late_ms` at `now_ms`.
    pub fn sizes(&self, now_ms: i64, late_ms: i64) -> (usize, usize) {
        let running = self.partitions.values().map(|p| p.sequences.len()).sum();
        // Each partition's timers are sorted, not their concatenation: count per partition.
        let overdue = self
            .partitions
            .values()
            .map(|p| {
                p.timers
                    .iter()
                    .take_while(|(due, _)| *due <= now_ms - late_ms)
                    .count()
            })
            .sum();
        (running, overdue)
    }

    /// Takes a restored partition.
    pub fn assign(&mut self, partition: i32, entities: HashMap<String, Entity>) {
        let mut state = Partition::default();
        for (key, entity) in entities {
            match entity {
                Entity::Sequence(mut sequence) => {
                    // Stored before every late skip was counted: those before the first send
                    // were (the count only grows past them, so the two agree from here on).
                    sequence.skipped = sequence.skipped.max(sequence.skipped_unsent);
                    self.rehash(&mut sequence);
                    state.insert(*sequence);
                }
                Entity::Person(person) => {
                    if let Some(hash) = key.strip_prefix("person/") {
                        state.people.insert(hash.to_string(), person);
                    }
                }
                Entity::Redaction(marker) => {
                    state.markers.restore(&key, marker);
                }
            }
        }
        self.partitions.insert(partition, state);
    }

    /// Adds the current key's hashes of a restored sequence's contact to the stored ones: a
    /// sequence written under another key (the nudges' former identity key, or before a key
    /// change) is then still found by a redaction or an order. The stored ones are kept: an
    /// unsubscribe may have cleared the email or phone they came from.
    fn rehash(&self, sequence: &mut Sequence) {
        let facts = ContactFacts {
            customer_id: sequence.customer.customer_id,
            email: sequence.customer.email.clone(),
            phone: sequence.customer.phone.clone(),
        };
        for hash in identity::hashes(&self.rules.hasher, &sequence.shop, &facts) {
            if !sequence.identities.contains(&hash) {
                sequence.identities.push(hash);
            }
        }
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// The earliest due step of any partition.
    pub fn next_due(&self) -> Option<i64> {
        self.partitions
            .values()
            .filter_map(|p| p.timers.first().map(|(due, _)| *due))
            .min()
    }

    /// Applies one record of `shop` received at `at_ms` in by-shop partition `partition`.
    pub fn apply(&mut self, partition: i32, shop: &str, input: Input, at_ms: i64) -> Vec<Effect> {
        if self.redacted(partition, shop, &input, at_ms) {
            // About someone redacted (or a redacted shop): it must not bring them back.
            let mut effects = vec![Effect::Suppressed(Suppressed::Redacted)];
            effects.extend(self.stops_of_dropped(partition, shop, &input));
            return effects;
        }
        match input {
            Input::Abandoned(event) => self.abandoned(partition, shop, *event, at_ms),
            Input::Recovered(event) => self.recovered(partition, shop, *event),
            Input::Order(order) => self.ordered(partition, shop, *order, at_ms),
            Input::CheckoutDeleted { token, cart_token } => {
                let keys: BTreeSet<String> = match self.partitions.get(&partition) {
                    Some(state) => token
                        .and_then(|t| state.by_checkout.get(&t).cloned())
                        .into_iter()
                        .chain(cart_token.and_then(|c| checkout_journey_key(shop, &c)))
                        .collect(),
                    None => BTreeSet::new(),
                };
                self.stop(partition, keys, Suppressed::Deleted)
            }
            Input::Consent(facts, channels) => {
                self.consent(partition, shop, &facts, channels, at_ms)
            }
            Input::RedactCustomer(facts, orders) => {
                self.redact_customer(partition, shop, &facts, &orders, at_ms)
            }
            Input::RedactShop => self.redact_shop(partition, shop, at_ms),
            Input::DataRequest(request) => {
                vec![self.data_request(partition, shop, &request, at_ms)]
            }
            Input::Ignored => Vec::new(),
        }
    }

    fn abandoned(
        &mut self,
        partition: i32,
        shop: &str,
        event: OutputEvent,
        at_ms: i64,
    ) -> Vec<Effect> {
        let policy = self.rules.policy(shop).clone();
        let cap_ms = self.rules.cap_ms;
        let customer =
            event
                .customer
                .clone()
                .unwrap_or(aftercart_abandonment::domain::event::CustomerOut {
                    id: None,
                    email: None,
                    phone: None,
                    first_name: None,
                    last_name: None,
                    country: None,
                    accepts_email_marketing: false,
                    accepts_sms_marketing: false,
                });
        let facts = ContactFacts {
            customer_id: customer.id,
            email: customer.email.clone(),
            phone: customer.phone.clone(),
        };
        let identities = identity::hashes(&self.rules.hasher, shop, &facts);
        let state = self.partitions.entry(partition).or_default();
        if state.sequences.contains_key(&event.journey_key) {
            return Vec::new(); // a redelivery
        }
        if !policy.enabled {
            return vec![Effect::Suppressed(Suppressed::Disabled)];
        }
        let Some(basis) = event.contact_basis else {
            return vec![Effect::Suppressed(Suppressed::Consent)];
        };
        let mut contact = Contact {
            customer_id: customer.id,
            email: customer.email,
            phone: customer.phone,
            first_name: customer.first_name,
            last_name: customer.last_name,
        };
        let people: Vec<&Person> = identities
            .iter()
            .filter_map(|h| state.people.get(h))
            .collect();
        if people.iter().any(|p| p.unsubscribed_email) {
            contact.email = None;
        }
        if people.iter().any(|p| p.unsubscribed_sms) {
            contact.phone = None;
        }
        if !contact.reachable() {
            return vec![Effect::Suppressed(Suppressed::Consent)];
        }
        let last_activity_ms = parse_time_ms(&event.last_activity_at).unwrap_or(at_ms);
        if people
            .iter()
            .any(|p| p.ordered_ms.is_some_and(|o| o >= last_activity_ms))
        {
            return vec![Effect::Suppressed(Suppressed::Purchased)];
        }
        // A running sequence, or a first nudge within the window: a sequence stopped before
        // it sent anything (a purchase ten minutes later) does not count, nor the first nudge
        // of this very abandonment's sequence, lost from the changelog by a crash (see
        // `Person::started_by`).
        if people.iter().any(|p| {
            p.started_ms.is_some_and(|s| at_ms - s < cap_ms)
                && p.started_by.as_deref() != Some(event.event_id.as_str())
        }) || !state.matching(&identities).is_empty()
        {
            return vec![Effect::Suppressed(Suppressed::Cap)];
        }
        let abandoned_at_ms = parse_time_ms(&event.abandoned_at).unwrap_or(at_ms);
        let due_ms = schedule(&policy.steps, abandoned_at_ms, policy.quiet_hours);
        let sequence = Sequence {
            shop: shop.to_string(),
            journey_key: event.journey_key.clone(),
            abandonment_event_id: event.event_id,
            checkout_token: event.checkout_token,
            identities: identities.clone(),
            basis,
            customer: contact,
            recovery_url: event.recovery_url,
            value: event.value,
            line_items: event.line_items,
            segments: serde_json::to_value(&event.segments).unwrap_or_default(),
            abandoned_at_ms,
            due_ms,
            done: 0,
            skipped_unsent: 0,
            first_sent_ms: None,
            skipped: 0,
        };
        let effects = vec![Effect::Scheduled, persist_sequence(&sequence)];
        state.insert(sequence);
        effects
    }

    /// A recovery stops its sequence; it counts as nudge-attributed when a nudge of it was
    /// sent before the recovery: the running sequence sent a step, or (the sequence is gone
    /// once its last step is sent, or an order of the buyer stopped it first) the person's
    /// first nudge falls between the abandonment and the recovery.
    fn recovered(&mut self, partition: i32, shop: &str, event: OutputEvent) -> Vec<Effect> {
        let facts = event
            .customer
            .as_ref()
            .map(|c| ContactFacts {
                customer_id: c.id,
                email: c.email.clone(),
                phone: c.phone.clone(),
            })
            .unwrap_or_default();
        let hashes = identity::hashes(&self.rules.hasher, shop, &facts);
        let abandoned_ms = parse_time_ms(&event.abandoned_at);
        let recovered_ms = event.recovered_at.as_deref().and_then(parse_time_ms);
        let attributed = self.partitions.get(&partition).is_some_and(|state| {
            let before_recovery = |sent: i64| recovered_ms.is_none_or(|r| sent <= r);
            let running = state.sequences.get(&event.journey_key).is_some_and(|s| {
                let first_sent = s
                    .first_sent_ms
                    .or_else(|| s.due_ms.get(s.skipped_unsent as usize).copied());
                s.sent_any() && first_sent.is_some_and(before_recovery)
            });
            let nudged = |started: i64| {
                abandoned_ms.is_some_and(|a| started >= a) && before_recovery(started)
            };
            running
                || hashes
                    .iter()
                    .filter_map(|h| state.people.get(h))
                    .any(|p| p.started_ms.is_some_and(nudged))
        });
        let mut effects = self.stop(partition, [event.journey_key], Suppressed::Recovered);
        if attributed && event.kind == aftercart_abandonment::domain::event::Kind::Checkout {
            let revenue = event.value.and_then(|v| {
                let amount = v.amount.trim().parse::<f64>().ok()?;
                (amount.is_finite() && amount >= 0.0).then_some((amount, v.currency?))
            });
            effects.push(Effect::Attributed { revenue });
        }
        effects
    }

    /// Ends the sequences of `keys` (those running), counting each as `why`.
    fn stop(
        &mut self,
        partition: i32,
        keys: impl IntoIterator<Item = String>,
        why: Suppressed,
    ) -> Vec<Effect> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        for key in keys {
            if let Some(sequence) = state.remove(&key) {
                effects.push(Effect::Suppressed(why));
                effects.extend(state.end(&sequence));
            }
        }
        effects
    }

    fn ordered(
        &mut self,
        partition: i32,
        shop: &str,
        order: OrderFacts,
        at_ms: i64,
    ) -> Vec<Effect> {
        let hashes = identity::hashes(&self.rules.hasher, shop, &order.buyer);
        let state = self.partitions.entry(partition).or_default();
        let mut effects = Vec::new();
        for hash in &hashes {
            let person = state.people.entry(hash.clone()).or_insert_with(|| Person {
                shop: shop.to_string(),
                ..Person::default()
            });
            person.ordered_ms = Some(person.ordered_ms.unwrap_or(at_ms).max(at_ms));
            person.seen_ms = person.seen_ms.max(at_ms);
            effects.push(persist_person(hash, person));
        }
        let mut keys = state.matching(&hashes);
        if let Some(key) = order
            .checkout_token
            .as_ref()
            .and_then(|t| state.by_checkout.get(t))
        {
            keys.insert(key.clone());
        }
        effects.extend(self.stop(partition, keys, Suppressed::Purchased));
        effects
    }

    fn consent(
        &mut self,
        partition: i32,
        shop: &str,
        facts: &ContactFacts,
        channels: Channels,
        at_ms: i64,
    ) -> Vec<Effect> {
        let hashes = identity::hashes(&self.rules.hasher, shop, facts);
        let state = self.partitions.entry(partition).or_default();
        let mut effects = Vec::new();
        let unsubscribing = channels.email == Some(false) || channels.sms == Some(false);
        for hash in &hashes {
            if !unsubscribing && !state.people.contains_key(hash) {
                continue; // nothing to remember about a subscribe of someone unknown
            }
            let person = state.people.entry(hash.clone()).or_insert_with(|| Person {
                shop: shop.to_string(),
                ..Person::default()
            });
            if let Some(email) = channels.email {
                person.unsubscribed_email = !email;
            }
            if let Some(sms) = channels.sms {
                person.unsubscribed_sms = !sms;
            }
            person.seen_ms = person.seen_ms.max(at_ms);
            effects.push(persist_person(hash, person));
        }
        let mut unreachable = Vec::new();
        for key in state.matching(&hashes) {
            let Some(mut sequence) = state.remove(&key) else {
                continue;
            };
            if channels.email == Some(false) {
                sequence.customer.email = None;
            }
            if channels.sms == Some(false) {
                sequence.customer.phone = None;
            }
            if sequence.customer.reachable() {
                effects.push(persist_sequence(&sequence));
                state.insert(sequence);
            } else {
                unreachable.push(sequence);
            }
        }
        for sequence in unreachable {
            effects.push(Effect::Suppressed(Suppressed::Consent));
            effects.extend(state.end(&sequence));
        }
        effects
    }

    /// Whether `input` names someone (or a shop) whose redaction is remembered: an
    /// abandonment, an order or a consent change would re-create them. Stops (recoveries,
    /// deleted checkouts) and data requests only read or delete, and pass.
    fn redacted(&self, partition: i32, shop: &str, input: &Input, at_ms: i64) -> bool {
        let Some(state) = self.partitions.get(&partition) else {
            return false;
        };
        let hasher = &self.rules.hasher;
        let named = match input {
            Input::Abandoned(event) => {
                let facts = event.customer.as_ref().map(|c| ContactFacts {
                    customer_id: c.id,
                    email: c.email.clone(),
                    phone: c.phone.clone(),
                });
                let orders: Vec<u64> = event.order_id.into_iter().collect();
                identity::pseudonyms(hasher, shop, &facts.unwrap_or_default(), &orders)
            }
            Input::Order(order) => {
                identity::pseudonyms(hasher, shop, &order.buyer, &[order.order_id])
            }
            Input::Consent(facts, _) => identity::pseudonyms(hasher, shop, facts, &[]),
            _ => return false,
        };
        state.markers.forbids(shop, &named.marks(), at_ms)
    }

    /// What a dropped order or unsubscribe still stops: it may be of someone sharing a redacted
    /// email or phone (a household) whose own sequence must not outlive their purchase or
    /// opt-out. Stopping only deletes; nothing of the fact is remembered. An unsubscribe stops
    /// the whole sequence (its contact details are not rewritten: nothing is persisted).
    fn stops_of_dropped(&mut self, partition: i32, shop: &str, input: &Input) -> Vec<Effect> {
        let (facts, checkout_token, why) = match input {
            Input::Order(order) => (
                &order.buyer,
                order.checkout_token.as_deref(),
                Suppressed::Purchased,
            ),
            Input::Consent(facts, channels)
                if channels.email == Some(false) || channels.sms == Some(false) =>
            {
                (facts, None, Suppressed::Consent)
            }
            _ => return Vec::new(),
        };
        let hashes = identity::hashes(&self.rules.hasher, shop, facts);
        let Some(state) = self.partitions.get(&partition) else {
            return Vec::new();
        };
        let mut keys = state.matching(&hashes);
        keys.extend(checkout_token.and_then(|t| state.by_checkout.get(t).cloned()));
        self.stop(partition, keys, why)
    }

    /// `customers/redact`: deletes what is held about the person and remembers the redaction
    /// (their id, email and phone hashes, the orders it lists, and the contacts of the
    /// sequences that are theirs), so that no later or in-flight fact brings them back.
    fn redact_customer(
        &mut self,
        partition: i32,
        shop: &str,
        facts: &ContactFacts,
        orders: &[u64],
        at_ms: i64,
    ) -> Vec<Effect> {
        let named = identity::pseudonyms(&self.rules.hasher, shop, facts, orders);
        let hashes = identity::hashes(&self.rules.hasher, shop, facts);
        let state = self.partitions.entry(partition).or_default();
        let mut effects = Vec::new();
        for hash in &hashes {
            if state.people.remove(hash).is_some() {
                effects.push(Effect::Persist {
                    key: person_key(hash),
                    entity: None,
                });
            }
        }
        let mut keys = state.matching(&hashes);
        // A sequence knowing their phone written another way (nationally, `06 12 34 56 78`
        // for `+33 6 12 34 56 78`) has other hashes: found by a national number they share
        // (compared as held, without hashing every running sequence's phone).
        let phones = facts
            .phone
            .as_deref()
            .map(national_phones)
            .unwrap_or_default();
        if !phones.is_empty() {
            keys.extend(
                state
                    .sequences
                    .values()
                    .filter(|s| s.shop == shop)
                    .filter(|s| {
                        let phone = s.customer.phone.as_deref();
                        phone.is_some_and(|p| national_phones(p).iter().any(|n| phones.contains(n)))
                    })
                    .map(|s| s.journey_key.clone()),
            );
        }
        // The emails and phones their own sequences knew them by are theirs too (a changed
        // address, another checkout in flight under it); not those of someone sharing only a
        // phone or an email with another customer id.
        let theirs: Vec<&Sequence> = keys
            .iter()
            .filter_map(|key| state.sequences.get(key))
            .filter(|s| {
                facts.customer_id.is_none()
                    || s.customer.customer_id.is_none()
                    || s.customer.customer_id == facts.customer_id
            })
            .collect();
        let known: Vec<Pseudonyms> = theirs
            .iter()
            .map(|s| {
                let contact = ContactFacts {
                    customer_id: s.customer.customer_id,
                    email: s.customer.email.clone(),
                    phone: s.customer.phone.clone(),
                };
                identity::pseudonyms(&self.rules.hasher, shop, &contact, &[])
            })
            .collect();
        // What is remembered of them under those other contacts goes too.
        let other_hashes: Vec<String> = theirs
            .iter()
            .flat_map(|s| s.identities.iter().cloned())
            .collect();
        for hash in &other_hashes {
            if state.people.remove(hash).is_some() {
                effects.push(Effect::Persist {
                    key: person_key(hash),
                    entity: None,
                });
            }
        }
        let mut marks = named.marks();
        marks.extend(known.iter().flat_map(Pseudonyms::marks));
        effects.extend(remember(state.markers.mark(shop, &marks, false, at_ms)));
        effects.extend(self.stop(partition, keys, Suppressed::Redacted));
        effects
    }

    /// `shop/redact`: deletes the shop's people and sequences, and remembers it: a fact of the
    /// shop received before the redaction (in flight on another topic) is dropped.
    fn redact_shop(&mut self, partition: i32, shop: &str, at_ms: i64) -> Vec<Effect> {
        let state = self.partitions.entry(partition).or_default();
        let mut effects: Vec<Effect> =
            remember(state.markers.mark(shop, &[], true, at_ms)).collect();
        let people: Vec<String> = state
            .people
            .iter()
            .filter(|(_, p)| p.shop == shop)
            .map(|(h, _)| h.clone())
            .collect();
        for hash in people {
            state.people.remove(&hash);
            effects.push(Effect::Persist {
                key: person_key(&hash),
                entity: None,
            });
        }
        let keys: Vec<String> = state
            .sequences
            .values()
            .filter(|s| s.shop == shop)
            .map(|s| s.journey_key.clone())
            .collect();
        effects.extend(self.stop(partition, keys, Suppressed::Redacted));
        effects
    }

    /// [`Engine::fire_due_sending_at`] with the steps sent at `now_ms`.
    pub fn fire_due(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        self.fire_due_sending_at(now_ms, now_ms)
    }

    /// Sends every step due at `now_ms` (the stage's clock), in order; of several due steps of
    /// one sequence those overdue past [`LATE_AFTER_MS`] (a long outage) are skipped and
    /// counted as late, so the customer gets the latest, not a burst of stale reminders.
    ///
    /// `sending_at_ms` is when the nudges go out (the wall clock; later than `now_ms` while
    /// the stage catches up). A step to be sent while its shop is in its quiet hours is
    /// postponed to their end, and the later steps with it as [`postpone`] moves them: a step
    /// delayed into them by an outage or a restart is not sent in them, nor skipped as late
    /// for the wait.
    pub fn fire_due_sending_at(&mut self, now_ms: i64, sending_at_ms: i64) -> Vec<(i32, Effect)> {
        let sending_at_ms = sending_at_ms.max(now_ms);
        let mut effects = Vec::new();
        for (&partition, state) in &mut self.partitions {
            while let Some((due, key)) = state.timers.first().cloned() {
                if due > now_ms {
                    break;
                }
                let Some(mut sequence) = state.remove(&key) else {
                    state.timers.remove(&(due, key));
                    continue;
                };
                // A shop switched off (`enabled = false`) after its sequences started: none of
                // their remaining steps is sent.
                if !self.rules.policy(&sequence.shop).enabled {
                    effects.push((partition, Effect::Suppressed(Suppressed::Disabled)));
                    effects.extend(state.end(&sequence).into_iter().map(|e| (partition, e)));
                    continue;
                }
                let latest = sequence
                    .due_ms
                    .iter()
                    .rposition(|d| *d <= now_ms)
                    .expect("its next step is due");
                // The first step not overdue past the bound is sent; the rest of the due ones
                // follow in this same loop (the sequence is due again at once).
                let send = (sequence.done as usize..latest)
                    .find(|i| sequence.due_ms[*i] >= now_ms - LATE_AFTER_MS)
                    .unwrap_or(latest);
                let quiet = self.rules.policy(&sequence.shop).quiet_hours;
                let quiet_end = quiet.map_or(sending_at_ms, |q| q.defer(sending_at_ms));
                for _ in sequence.done as usize..send {
                    effects.push((partition, Effect::Suppressed(Suppressed::Late)));
                }
                sequence.skipped += (send as u32).saturating_sub(sequence.done);
                if quiet_end > sending_at_ms {
                    // The step to send falls due again when the quiet hours end, in the stage's
                    // time (behind the wall clock while it catches up; checked again then). The
                    // late rule's choice is final: the steps before it are skipped now.
                    if !sequence.sent_any() {
                        sequence.skipped_unsent = send as u32;
                    }
                    sequence.done = send as u32;
                    let until = now_ms.saturating_add(quiet_end - sending_at_ms);
                    postpone(&mut sequence.due_ms, send, until, quiet);
                    effects.push((partition, persist_sequence(&sequence)));
                    state.insert(sequence);
                    continue;
                }
                if !sequence.sent_any() {
                    // The steps skipped before this first send were never sent (a recovery
                    // is the nudges' doing only from this send on).
                    sequence.skipped_unsent = send as u32;
                    sequence.first_sent_ms = Some(sending_at_ms);
                    // The first nudge of the sequence starts the person's frequency-cap window.
                    for hash in &sequence.identities {
                        let person = state.people.entry(hash.clone()).or_insert_with(|| Person {
                            shop: sequence.shop.clone(),
                            ..Person::default()
                        });
                        person.started_ms = Some(sending_at_ms);
                        person.started_by = Some(sequence.abandonment_event_id.clone());
                        person.seen_ms = person.seen_ms.max(now_ms);
                        effects.push((partition, persist_person(hash, person)));
                    }
                }
                let step = send as u32 + 1;
                let nudge = nudge_of(&sequence, step);
                sequence.done = step;
                effects.push((
                    partition,
                    Effect::Emit {
                        key: sequence.journey_key.clone(),
                        nudge: Box::new(nudge),
                    },
                ));
                if sequence.next_due().is_some() {
                    effects.push((partition, persist_sequence(&sequence)));
                    state.insert(sequence);
                } else {
                    effects.extend(state.end(&sequence).into_iter().map(|e| (partition, e)));
                }
            }
        }
        effects
    }

    /// Brings a restored sequence in line with a nudge found in the output topic (written
    /// before a crash, but not yet in the changelog), so no step is sent twice.
    pub fn reconcile(&mut self, partition: i32, emitted: &EmittedNudge) -> Vec<Effect> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let Some(sequence) = state.sequences.get(&emitted.journey_key) else {
            return Vec::new();
        };
        let another = emitted
            .abandonment_event_id
            .as_deref()
            .is_some_and(|id| id != sequence.abandonment_event_id);
        if another || sequence.done >= emitted.step {
            return Vec::new();
        }
        let mut sequence = state.remove(&emitted.journey_key).expect("present");
        // Read back in order, so steps between the last done and this one were skipped as late
        // in the lost batch (a step sent there is read back, and reconciled, before it).
        sequence.skipped += emitted.step.saturating_sub(1).saturating_sub(sequence.done);
        if !sequence.sent_any() {
            sequence.skipped_unsent = emitted.step.saturating_sub(1);
        }
        sequence.done = emitted.step;
        if sequence.next_due().is_some() {
            let effect = persist_sequence(&sequence);
            state.insert(sequence);
            vec![effect]
        } else {
            state.end(&sequence)
        }
    }

    /// Forgets people not seen within the memory window, and redactions older than their
    /// retention.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        let memory = self.rules.memory_ms;
        let mut effects = Vec::new();
        for (&partition, state) in &mut self.partitions {
            for key in state
                .markers
                .expire(now_ms, self.rules.redaction_retention_ms)
            {
                effects.push((partition, Effect::Persist { key, entity: None }));
            }
            let old: Vec<String> = state
                .people
                .iter()
                .filter(|(_, p)| now_ms - p.seen_ms >= memory)
                .map(|(h, _)| h.clone())
                .collect();
            for hash in old {
                state.people.remove(&hash);
                effects.push((
                    partition,
                    Effect::Persist {
                        key: person_key(&hash),
                        entity: None,
                    },
                ));
            }
        }
        effects
    }
}

/// The changelog writes of markers just remembered.
fn remember(markers: Vec<(String, RedactionMarker)>) -> impl Iterator<Item = Effect> {
    markers.into_iter().map(|(key, marker)| Effect::Persist {
        key,
        entity: Some(Box::new(Entity::Redaction(marker))),
    })
}

/// The journey key the ingress gave a checkout with `cart_token` (the one mechanism,
/// [`aftercart_shopify::journey_key`], asked with just that field).
fn checkout_journey_key(shop: &str, cart_token: &str) -> Option<String> {
    let body = serde_json::json!({ "cart_token": cart_token }).to_string();
    aftercart_shopify::journey_key(aftercart_shopify::Family::Checkouts, shop, body.as_bytes()).ok()
}

fn nudge_of(sequence: &Sequence, step: u32) -> Nudge {
    Nudge {
        event_id: event_id(&sequence.abandonment_event_id, step),
        shop: sequence.shop.clone(),
        journey_key: sequence.journey_key.clone(),
        abandonment_event_id: sequence.abandonment_event_id.clone(),
        checkout_token: sequence.checkout_token.clone(),
        step,
        steps: sequence.due_ms.len() as u32,
        due_at: rfc3339(sequence.due_ms[step as usize - 1]),
        abandoned_at: rfc3339(sequence.abandoned_at_ms),
        contact_basis: sequence.basis,
        customer: sequence.customer.clone(),
        recovery_url: sequence.recovery_url.clone(),
        discount_code: None,
        value: sequence.value.clone(),
        line_items: sequence.line_items.clone(),
        segments: sequence.segments.clone(),
    }
}

mod report;
#[cfg(test)]
pub(crate) mod tests;

//! The audiences state machine. Pure: it is fed one shop's facts with their time and the clock,
//! and answers with effects (batches to emit, people to persist). All of a shop's people live in
//! one partition, so identity, consent and membership are decided locally.
//!
//! Membership is desired state: a person is *wanted* in an audience when a fact made them a
//! candidate within the window, they consented to marketing, they are reachable (email or
//! phone) and not redacted. Each membership remembers which destinations hold the person. A
//! flush compares the two and emits the difference as batches: removals first, then additions,
//! per shop, audience, destination and operation, chunked to the destination's request limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aftercart_shopify::privacy::DataRequestReport;
use aftercart_shopify::time::{parse_time_ms, rfc3339};

use crate::domain::audience::{Audience, Source};
use crate::domain::batch::{batch_id, Batch, Member};
use crate::domain::consent::{AdConsent, ConsentMapping};
use crate::domain::input::{Abandonment, ConsentFact, CustomerFacts, Input, PersonRef, Purchase};
use crate::domain::person::{PendingRemoval, Person};
use crate::platform::{hash, Contact, Op, Platform};

/// How often people with nothing left are forgotten.
const SWEEP_EVERY_MS: i64 = 60_000;

/// The engine's configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub audiences: Vec<Audience>,
    /// Destination name → the codec of its rows.
    pub destinations: BTreeMap<String, Platform>,
    /// Pending changes are emitted at least this often...
    pub flush_interval_ms: i64,
    /// ...or as soon as this many people changed; also the most members in one batch record.
    pub batch_rows: usize,
    /// People with no membership, unseen this long, are forgotten (their consent with them).
    pub person_retention_ms: i64,
    /// A redaction is remembered this long, so that later facts cannot bring the person back.
    pub redaction_retention_ms: i64,
    /// Google destination name → how its consent signals are read from marketing consent.
    pub google_consent: BTreeMap<String, ConsentMapping>,
    /// A removal its destination has not confirmed this long after it was emitted is emitted
    /// again (well inside the batches topic's retention, so it never ages out unrepresented).
    pub removal_reemit_after_ms: i64,
}

/// What the I/O layer must do: emit batches, then persist people.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Emit {
        key: String,
        batch: Box<Batch>,
    },
    /// `None` deletes the person (a changelog tombstone).
    Persist {
        key: String,
        person: Option<Box<Person>>,
    },
    /// The answer to a `customers/data_request`, for the data requests topic.
    Report {
        key: String,
        report: Box<DataRequestReport>,
    },
}

/// The people of one partition, an email index, expiry timers, and who changed since the
/// last flush.
#[derive(Debug, Default)]
pub struct Partition {
    people: HashMap<String, Person>,
    /// `<shop>/<email hash>` → person key.
    by_email: HashMap<String, String>,
    /// (expiry, person key, audience).
    timers: BTreeSet<(i64, String, String)>,
    dirty: BTreeSet<String>,
    /// Redaction marker key → when the redaction was received (see [`redaction`]).
    markers: HashMap<String, i64>,
    /// When the oldest unflushed change was made: the flush interval counts from it.
    dirty_since_ms: Option<i64>,
    last_sweep_ms: i64,
    /// When unconfirmed removals were last looked at.
    last_reemit_ms: i64,
    flushes: u64,
    /// People with removals waiting for confirmation.
    pending: BTreeSet<String>,
    /// People with a removal emitted since the last tick (not known to be written yet).
    unwritten: BTreeSet<String>,
}

pub struct Engine {
    rules: Rules,
    partitions: HashMap<i32, Partition>,
    suppressed: u64,
    /// Destination no longer configured → removals found due there (and kept), since start.
    stranded: BTreeMap<String, u64>,
    /// Destination → unconfirmed removals emitted again there, since start.
    reemitted: BTreeMap<String, u64>,
}

/// The person key of a customer: `p/<shop>/c/<id>`.
fn customer_key(shop: &str, id: u64) -> String {
    format!("p/{shop}/c/{id}")
}

fn email_hash(email: &str) -> String {
    hash::sha256_hex(&email.trim().to_lowercase())[..32].to_string()
}

/// The person key of a guest known only by email: `p/<shop>/e/<hash>`.
fn guest_key(shop: &str, email: &str) -> String {
    format!("p/{shop}/e/{}", email_hash(email))
}

/// The pseudonym a batch names a person by: the key without `p/<shop>/`.
fn pseudonym<'a>(key: &'a str, shop: &str) -> &'a str {
    key.strip_prefix("p/")
        .and_then(|k| k.strip_prefix(shop))
        .and_then(|k| k.strip_prefix('/'))
        .unwrap_or(key)
}

fn persist(key: &str, person: &Person) -> Effect {
    Effect::Persist {
        key: key.to_string(),
        person: Some(Box::new(person.clone())),
    }
}

fn forget(key: &str) -> Effect {
    Effect::Persist {
        key: key.to_string(),
        person: None,
    }
}

impl Partition {
    fn index(&mut self, key: &str) {
        let Some(person) = self.people.get(key) else {
            return;
        };
        if let Some(email) = person.contact.email.as_deref() {
            self.by_email.insert(
                format!("{}/{}", person.shop, email_hash(email)),
                key.to_string(),
            );
        }
        for (audience, membership) in &person.memberships {
            if let (true, Some(at)) = (membership.candidate, membership.expires_ms) {
                self.timers.insert((at, key.to_string(), audience.clone()));
            }
        }
        if !person.pending_removals.is_empty() {
            self.pending.insert(key.to_string());
            if person
                .pending_removals
                .iter()
                .any(|r| r.written_mark.is_none())
            {
                self.unwritten.insert(key.to_string());
            }
        }
    }

    fn drop_person(&mut self, key: &str) {
        if let Some(person) = self.people.remove(key) {
            if let Some(email) = person.contact.email.as_deref() {
                let index = format!("{}/{}", person.shop, email_hash(email));
                if self.by_email.get(&index).is_some_and(|k| k == key) {
                    self.by_email.remove(&index);
                }
            }
        }
        self.dirty.remove(key);
        self.pending.remove(key);
        self.unwritten.remove(key);
    }

    /// The person a fact is about, created when new; merges a guest into the customer they
    /// turn out to be. Effects for merged-away guests go to `effects`.
    fn resolve(
        &mut self,
        shop: &str,
        who: &PersonRef,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Option<String> {
        let email = who
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        let indexed = email.and_then(|e| {
            self.by_email
                .get(&format!("{shop}/{}", email_hash(e)))
                .cloned()
        });
        let key = match (who.customer_id, email) {
            (Some(id), _) => {
                let key = customer_key(shop, id);
                if !self.people.contains_key(&key) {
                    self.people
                        .insert(key.clone(), Person::new(shop, Some(id), now_ms));
                }
                // A guest seen before under this email is this customer: the customer takes
                // over what the guest knew, and the guest is retired (destinations drop rows
                // under its name, then it is deleted).
                let guest = email.map(|e| guest_key(shop, e));
                let live = |g: &String| self.people.get(g).is_some_and(|p| !p.redacted);
                if let Some(guest) = guest.filter(live) {
                    let known = self.people[&guest].clone();
                    self.people
                        .get_mut(&key)
                        .expect("inserted above")
                        .absorb(&known);
                    retire(self, &guest, effects);
                    if let Some(retired) = self.people.get(&guest) {
                        self.dirty.insert(guest.clone());
                        self.dirty_since_ms.get_or_insert(now_ms);
                        effects.push(persist(&guest, retired));
                    }
                }
                key
            }
            (None, Some(email)) => {
                let key = indexed.unwrap_or_else(|| guest_key(shop, email));
                if !self.people.contains_key(&key) {
                    self.people
                        .insert(key.clone(), Person::new(shop, None, now_ms));
                }
                key
            }
            (None, None) => return None,
        };
        if let Some(person) = self.people.get_mut(&key) {
            person.seen_ms = person.seen_ms.max(now_ms);
        }
        Some(key)
    }

    /// Counts of people wanted per audience.
    fn wanted(&self, audiences: &[Audience], into: &mut BTreeMap<String, usize>) {
        for person in self.people.values() {
            for audience in audiences {
                if person.wanted_in(&audience.name) {
                    *into.entry(audience.name.clone()).or_default() += 1;
                }
            }
        }
    }
}

impl Engine {
    pub fn new(rules: Rules) -> Self {
        Engine {
            rules,
            partitions: HashMap::new(),
            suppressed: 0,
            stranded: BTreeMap::new(),
            reemitted: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    pub fn assign(&mut self, partition: i32, entities: HashMap<String, Person>) {
        let (markers, people): (HashMap<_, _>, HashMap<_, _>) = entities
            .into_iter()
            .partition(|(key, _)| key.starts_with(redaction::PREFIX));
        let mut state = Partition {
            people,
            markers: markers.into_iter().map(|(k, m)| (k, m.seen_ms)).collect(),
            ..Partition::default()
        };
        let keys: Vec<String> = state.people.keys().cloned().collect();
        for key in &keys {
            state.index(key);
        }
        // Everyone is compared once: a crash may have come between a change and its flush.
        state.dirty = keys.into_iter().collect();
        self.partitions.insert(partition, state);
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Revokes a partition and hands back everything its changelog holds, people and
    /// redaction markers (for [`Engine::assign`] later: a partition the rebalance returns
    /// unchanged is not restored, so what is left out here is forgotten).
    pub fn release(&mut self, partition: i32) -> Option<HashMap<String, Person>> {
        let state = self.partitions.remove(&partition)?;
        let mut entities = state.people;
        entities.extend(redaction::marker_entities(state.markers));
        Some(entities)
    }

    /// People held by this instance.
    pub fn people(&self) -> usize {
        self.partitions.values().map(|p| p.people.len()).sum()
    }

    /// People wanted in each configured audience (0 for empty ones).
    pub fn members(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = self
            .rules
            .audiences
            .iter()
            .map(|a| (a.name.clone(), 0))
            .collect();
        for state in self.partitions.values() {
            state.wanted(&self.rules.audiences, &mut counts);
        }
        counts
    }

    /// Applies one fact about `shop` received at `now_ms`.
    pub fn apply(&mut self, partition: i32, shop: &str, input: Input, now_ms: i64) -> Vec<Effect> {
        self.apply_received(partition, shop, input, now_ms, now_ms)
    }

    /// Facts kept out because they are about someone redacted.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Removals found due at destinations no longer configured, per destination, since start:
    /// they wait in the state until the destination is configured again.
    pub fn stranded_removals(&self) -> &BTreeMap<String, u64> {
        &self.stranded
    }

    /// Unconfirmed removals emitted again since start, per destination.
    pub fn reemitted(&self) -> &BTreeMap<String, u64> {
        &self.reemitted
    }

    /// Clears the removals their destination's exporter has passed. `confirmed` maps
    /// (destination, batches partition) to a mark: every batch record written (acknowledged)
    /// before the mark was reached is behind the exporter group's committed offset (accepted
    /// by the platform); a removal is cleared when its written mark is below it.
    pub fn confirm(&mut self, confirmed: &BTreeMap<(String, i32), i64>) -> Vec<(i32, Effect)> {
        let mut out = Vec::new();
        for (&partition, state) in &mut self.partitions {
            let keys: Vec<String> = state.pending.iter().cloned().collect();
            for key in keys {
                let Some(person) = state.people.get_mut(&key) else {
                    state.pending.remove(&key);
                    continue;
                };
                let before = person.pending_removals.len();
                person.pending_removals.retain(|removal| {
                    let through = confirmed.get(&(removal.destination.clone(), partition));
                    !matches!((removal.written_mark, through), (Some(w), Some(t)) if w < *t)
                });
                if person.pending_removals.len() == before {
                    continue;
                }
                if person.pending_removals.is_empty() {
                    state.pending.remove(&key);
                }
                if person.redacted && person.settled() {
                    state.drop_person(&key);
                    out.push((partition, forget(&key)));
                } else {
                    out.push((partition, persist(&key, person)));
                }
            }
        }
        out
    }

    /// Applies one fact about `shop`, received (by the ingress) at `received_ms`, at `now_ms`.
    pub fn apply_received(
        &mut self,
        partition: i32,
        shop: &str,
        input: Input,
        received_ms: i64,
        now_ms: i64,
    ) -> Vec<Effect> {
        let rules = &self.rules;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        if state.forbids(shop, &input, received_ms) {
            self.suppressed += 1;
            return effects;
        }
        let mut touched = Vec::new();
        match input {
            Input::Nothing => {}
            Input::Abandoned {
                person,
                contact,
                consent,
                at_ms,
                facts,
            } => {
                let fact = Fact::Abandoned(&facts);
                let heard = (&contact, consent, at_ms);
                touched.extend(observe(
                    state,
                    rules,
                    shop,
                    &person,
                    heard,
                    fact,
                    now_ms,
                    &mut effects,
                ));
            }
            Input::Recovered { person, at_ms } => {
                if let Some(key) = state.resolve(shop, &person, now_ms, &mut effects) {
                    let p = state.people.get_mut(&key).expect("resolved");
                    leave_abandoners(p, &rules.audiences, at_ms);
                    touched.push(key);
                }
            }
            Input::Purchased {
                person,
                contact,
                consent,
                at_ms,
                purchase,
            } => {
                let fact = Fact::Purchased(&purchase);
                let heard = (&contact, consent, at_ms);
                touched.extend(observe(
                    state,
                    rules,
                    shop,
                    &person,
                    heard,
                    fact,
                    now_ms,
                    &mut effects,
                ));
            }
            Input::Customer {
                person,
                contact,
                consent,
                sms_consent,
                facts,
            } => {
                let fact = Fact::Customer(&facts);
                let heard = (&contact, consent, now_ms);
                let key = observe(
                    state,
                    rules,
                    shop,
                    &person,
                    heard,
                    fact,
                    now_ms,
                    &mut effects,
                );
                if let (Some(key), Some(sms)) = (&key, sms_consent) {
                    if let Some(p) = state.people.get_mut(key) {
                        p.consent_to(sms);
                    }
                }
                touched.extend(key);
            }
            Input::CustomerDeleted { customer_id } => {
                let key = customer_key(shop, customer_id);
                if let Some(p) = state.people.get_mut(&key) {
                    for audience in &rules.audiences {
                        if let (Source::Customers(_), Some(m)) =
                            (&audience.source, p.memberships.get_mut(&audience.name))
                        {
                            m.candidate = false;
                        }
                    }
                    touched.push(key);
                }
            }
            Input::Consent { person, consent } => {
                if let Some(key) = state.resolve(shop, &person, now_ms, &mut effects) {
                    state
                        .people
                        .get_mut(&key)
                        .expect("resolved")
                        .consent_to(consent);
                    touched.push(key);
                }
            }
            Input::Redact {
                person,
                phone,
                orders,
            } => {
                let who = (&person, phone.as_deref(), orders.as_slice());
                touched.extend(state.redact_person(shop, who, received_ms, &mut effects));
            }
            Input::DataRequest(request) => {
                effects.push(state.data_request(rules, shop, &request, received_ms));
            }
            Input::ShopRedact => {
                state.redact_shop(shop, received_ms, &mut effects);
                let keys: Vec<String> = state
                    .people
                    .iter()
                    .filter(|(_, p)| p.shop == shop)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    retire(state, &key, &mut effects);
                    touched.push(key);
                }
            }
        }
        for key in touched {
            if let Some(person) = state.people.get_mut(&key) {
                person.awaiting_facts = false;
                state.index(&key);
                state.dirty.insert(key.clone());
                state.dirty_since_ms.get_or_insert(now_ms);
                effects.push(persist(&key, &state.people[&key]));
            }
        }
        effects
    }

    /// Expiry, forgetting, and flushes that are due; removals emitted before are marked
    /// written at `now_ms` (tests: one clock for both).
    pub fn tick(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        self.tick_marking(now_ms, now_ms)
    }

    /// [`Engine::tick`], marking the removals emitted before it as written at `written_mark`:
    /// the confirmation checker's count of rounds begun, read after the stage had them
    /// acknowledged ([`crate::confirmations::Confirmations::mark`]). A count, not a clock: a
    /// wall-clock step back could otherwise place a write before a round that read the ends
    /// without it.
    pub fn tick_marking(&mut self, now_ms: i64, written_mark: i64) -> Vec<(i32, Effect)> {
        let mut out = Vec::new();
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for partition in partitions {
            let state = self.partitions.get_mut(&partition).expect("listed");
            // What was emitted before this tick is in the topic: the stage wrote it (and had
            // it acknowledged) before asking for more.
            for key in std::mem::take(&mut state.unwritten) {
                if let Some(person) = state.people.get_mut(&key) {
                    for removal in &mut person.pending_removals {
                        removal.written_mark.get_or_insert(written_mark);
                    }
                }
            }
            let mut effects = expire(state, now_ms);
            if now_ms - state.last_sweep_ms >= SWEEP_EVERY_MS {
                state.last_sweep_ms = now_ms;
                effects.extend(sweep(state, now_ms, self.rules.person_retention_ms));
                effects.extend(state.expire_markers(now_ms, &self.rules));
            }
            // Often enough that a removal is emitted again soon after its threshold.
            let every = SWEEP_EVERY_MS.min(self.rules.removal_reemit_after_ms / 4);
            if now_ms - state.last_reemit_ms >= every.max(1) {
                state.last_reemit_ms = now_ms;
                let rules = &self.rules;
                effects.extend(reemit(state, rules, partition, now_ms, &mut self.reemitted));
            }
            if state.dirty.is_empty() {
                state.dirty_since_ms = None;
                out.extend(effects.into_iter().map(|e| (partition, e)));
                continue;
            }
            let since = *state.dirty_since_ms.get_or_insert(now_ms);
            let due = now_ms - since >= self.rules.flush_interval_ms
                || state.dirty.len() >= self.rules.batch_rows;
            if due {
                effects.extend(self.flush(partition, now_ms));
            }
            out.extend(effects.into_iter().map(|e| (partition, e)));
        }
        out
    }

    /// Emits what the changed people's destinations are missing or must drop.
    pub fn flush(&mut self, partition: i32, now_ms: i64) -> Vec<Effect> {
        let rules = &self.rules;
        let stranded = &mut self.stranded;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        state.dirty_since_ms = None;
        state.flushes += 1;
        let dirty = std::mem::take(&mut state.dirty);
        // (shop, audience, destination, op) → members, in a stable order.
        let mut groups: BTreeMap<(String, String, String, Op), Vec<Member>> = BTreeMap::new();
        let mut effects = Vec::new();
        for key in dirty {
            let Some(person) = state.people.get_mut(&key) else {
                continue;
            };
            if person.awaiting_facts {
                continue;
            }
            let current = person.contact.clone();
            let held = person.held_contact().clone();
            let customer_id = person.customer_id;
            let shop = person.shop.clone();
            // Google's consent signals, per Google destination, as this person's consent reads.
            let ad_consents: BTreeMap<&str, AdConsent> = rules
                .google_consent
                .iter()
                .map(|(name, mapping)| (name.as_str(), person.ad_consent(mapping)))
                .collect();
            let name = pseudonym(&key, &shop).to_string();
            let mut changed = false;
            // Every membership the person has, including of audiences no longer configured
            // (their destinations must drop the person).
            let names: Vec<String> = person.memberships.keys().cloned().collect();
            for audience_name in names {
                let audience = rules.audiences.iter().find(|a| a.name == audience_name);
                let wanted = audience.is_some() && person.wanted_in(&audience_name);
                let membership = person
                    .memberships
                    .get_mut(&audience_name)
                    .expect("listed above");
                if audience.is_none() && membership.candidate {
                    membership.candidate = false;
                    changed = true;
                }
                let mut targets: BTreeSet<String> = membership.synced.clone();
                if let (true, Some(audience)) = (wanted, audience) {
                    targets.extend(audience.destinations.iter().cloned());
                }
                for destination in targets {
                    let Some(platform) = rules.destinations.get(&destination).copied() else {
                        // No longer configured: nothing can be sent there. A removal due there
                        // is kept (the person stays marked as held) until the destination is
                        // configured again, never dropped; one that is not due is let go.
                        if wanted {
                            changed |= membership.synced.remove(&destination);
                        } else {
                            *stranded.entry(destination).or_default() += 1;
                        }
                        continue;
                    };
                    let holds = membership.synced.contains(&destination);
                    // Compared as this platform's rows: a change it does not see (a zip for
                    // TikTok) is no reason to remove and re-add.
                    let held_row = if holds { platform.row(&held) } else { None };
                    let current_row = if wanted { platform.row(&current) } else { None };
                    let moved = holds && held_row != current_row;
                    let signals = ad_consents.get(destination.as_str()).copied();
                    // Held and still wanted, but the consent signals changed: the addition is
                    // sent again with the new ones (Google updates them; a row is not enough).
                    let resignal = holds
                        && wanted
                        && !moved
                        && signals.is_some()
                        && person.ad_consent_sent.get(&destination).copied() != signals;
                    let mut push = |op: Op, row: serde_json::Value| {
                        // A removal states no consent: people often leave because they withdrew it.
                        let consent = (op == Op::Add).then_some(signals).flatten();
                        if let Some(consent) = consent {
                            person.ad_consent_sent.insert(destination.clone(), consent);
                        }
                        groups
                            .entry((shop.clone(), audience_name.clone(), destination.clone(), op))
                            .or_default()
                            .push(Member {
                                person: name.clone(),
                                customer_id,
                                row,
                                consent,
                            });
                    };
                    if holds && (!wanted || moved) {
                        if let Some(row) = held_row {
                            push(Op::Remove, row.clone());
                            // Kept until the exporter confirms it (its batch id is set below).
                            person.pending_removals.push(PendingRemoval {
                                audience: audience_name.clone(),
                                destination: destination.clone(),
                                batch_id: String::new(),
                                emitted_ms: now_ms,
                                row,
                                written_mark: None,
                            });
                        }
                        membership.synced.remove(&destination);
                        changed = true;
                    }
                    if resignal {
                        if let Some(row) = current_row.clone() {
                            push(Op::Add, row);
                            changed = true;
                        }
                    }
                    if let (true, false, Some(row)) = (
                        wanted,
                        membership.synced.contains(&destination),
                        current_row,
                    ) {
                        // Wanted again before a removal of this row was confirmed: it is not
                        // emitted again (it would undo this addition, which follows it).
                        person.pending_removals.retain(|r| {
                            r.audience != audience_name
                                || r.destination != destination
                                || r.row != row
                        });
                        push(Op::Add, row);
                        membership.synced.insert(destination);
                        changed = true;
                    }
                }
            }
            if person.holds_anything() {
                person.exported_contact = Some(current);
            }
            person.prune();
            person.minimise_if_redacted();
            if person.redacted && person.settled() {
                state.drop_person(&key);
                effects.push(forget(&key));
            } else if changed {
                effects.push(persist(&key, person));
            }
        }
        let mut batches = batches_of(rules, partition, state.flushes, groups, now_ms);
        // Removals go first, so a person whose contact changed is removed under the old one
        // before being added under the new one.
        batches.sort_by_key(|b| b.op != Op::Remove);
        effects.extend(note_removals(state, &batches));
        let mut out = emits(batches);
        out.extend(effects);
        out
    }

    /// Brings state up to date with a batch found after the checkpoint on restore: it was
    /// emitted, but the membership change behind it did not reach the changelog.
    pub fn reconcile(&mut self, partition: i32, batch: &Batch) -> Vec<Effect> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        for member in &batch.members {
            let key = format!("p/{}/{}", batch.shop, member.person);
            if batch.op == Op::Add && !state.people.contains_key(&key) {
                // Added, then killed before the person's first changelog record: the fact is
                // read again (its offset was not committed) and must find them held, not add
                // them a second time. Kept, persisted and not compared until then.
                let mut person = Person::new(&batch.shop, member.customer_id, 0);
                person.awaiting_facts = true;
                person
                    .memberships
                    .entry(batch.audience.clone())
                    .or_default()
                    .synced
                    .insert(batch.destination.clone());
                state.people.insert(key.clone(), person);
            }
            let Some(person) = state.people.get_mut(&key) else {
                continue;
            };
            let membership = person
                .memberships
                .entry(batch.audience.clone())
                .or_default();
            match batch.op {
                Op::Add => membership.synced.insert(batch.destination.clone()),
                Op::Remove => membership.synced.remove(&batch.destination),
            };
            let noted = |r: &PendingRemoval| r.batch_id == batch.batch_id;
            if batch.op == Op::Remove && !person.pending_removals.iter().any(noted) {
                // Emitted, so it waits for confirmation like any other (it is in the topic).
                person.pending_removals.push(PendingRemoval {
                    audience: batch.audience.clone(),
                    destination: batch.destination.clone(),
                    batch_id: batch.batch_id.clone(),
                    emitted_ms: parse_time_ms(&batch.created_at).unwrap_or(0),
                    row: member.row.clone(),
                    written_mark: None,
                });
                state.pending.insert(key.clone());
                state.unwritten.insert(key.clone());
            }
            if let (Op::Add, Some(consent)) = (batch.op, member.consent) {
                // The signals went with it: they are not sent again.
                person
                    .ad_consent_sent
                    .insert(batch.destination.clone(), consent);
            }
            if person.awaiting_facts {
                // Their contact is not known yet: what was added is what the fact read again
                // will say, and they are compared only then.
                person.prune();
                effects.push(persist(&key, person));
                continue;
            }
            if batch.op == Op::Add {
                // What was added is the person's contact as it is now (the batch was made from it).
                person.exported_contact = Some(person.contact.clone());
            }
            person.prune();
            state.dirty.insert(key.clone());
            effects.push(persist(&key, person));
        }
        effects
    }
}

/// (shop, audience, destination, op) → members, in a stable order.
type Groups = BTreeMap<(String, String, String, Op), Vec<Member>>;

/// The batches of one flush (or re-emission): each group chunked to its destination's limit,
/// with ids unique to the partition, flush and chunk.
fn batches_of(
    rules: &Rules,
    partition: i32,
    flushes: u64,
    groups: Groups,
    now_ms: i64,
) -> Vec<Batch> {
    let created_at = rfc3339(now_ms);
    let mut batches = Vec::new();
    for ((shop, audience, destination, op), members) in groups {
        let platform = rules.destinations[&destination];
        let size = rules.batch_rows.min(platform.max_rows()).max(1);
        for (chunk, members) in members.chunks(size).enumerate() {
            let origin = format!(
                "{partition}/{now_ms}/{flushes}/{shop}/{audience}/{destination}/{op:?}/{chunk}"
            );
            batches.push(Batch {
                batch_id: batch_id(&origin, members),
                shop: shop.clone(),
                audience: audience.clone(),
                destination: destination.clone(),
                platform,
                op,
                created_at: created_at.clone(),
                members: members.to_vec(),
            });
        }
    }
    batches
}

fn emits(batches: Vec<Batch>) -> Vec<Effect> {
    batches
        .into_iter()
        .map(|batch| Effect::Emit {
            key: format!("{}/{}/{}", batch.shop, batch.audience, batch.destination),
            batch: Box::new(batch),
        })
        .collect()
}

/// Names the batch of each removal just emitted (a pending removal without a batch id) and
/// persists the people again with it.
fn note_removals(state: &mut Partition, batches: &[Batch]) -> Vec<Effect> {
    let mut touched = BTreeSet::new();
    for batch in batches.iter().filter(|b| b.op == Op::Remove) {
        for member in &batch.members {
            let key = format!("p/{}/{}", batch.shop, member.person);
            let Some(person) = state.people.get_mut(&key) else {
                continue;
            };
            let removal = person.pending_removals.iter_mut().find(|r| {
                r.batch_id.is_empty()
                    && r.audience == batch.audience
                    && r.destination == batch.destination
                    && r.row == member.row
            });
            if let Some(removal) = removal {
                removal.batch_id = batch.batch_id.clone();
                touched.insert(key);
            }
        }
    }
    touched
        .into_iter()
        .filter_map(|key| {
            state.pending.insert(key.clone());
            state.unwritten.insert(key.clone());
            state.people.get(&key).map(|person| persist(&key, person))
        })
        .collect()
}

/// Emits again the removals waiting longer than the threshold for their destination (still
/// configured: one that is not cannot be sent, and the service refuses to start while its
/// exporter group has removals left). A removal is idempotent at the platforms.
fn reemit(
    state: &mut Partition,
    rules: &Rules,
    partition: i32,
    now_ms: i64,
    counts: &mut BTreeMap<String, u64>,
) -> Vec<Effect> {
    let mut groups = Groups::new();
    for key in &state.pending {
        let Some(person) = state.people.get_mut(key) else {
            continue;
        };
        let shop = person.shop.clone();
        for removal in &mut person.pending_removals {
            let due = now_ms - removal.emitted_ms >= rules.removal_reemit_after_ms;
            if !due || !rules.destinations.contains_key(&removal.destination) {
                continue;
            }
            removal.batch_id.clear();
            removal.emitted_ms = now_ms;
            removal.written_mark = None;
            *counts.entry(removal.destination.clone()).or_default() += 1;
            groups
                .entry((
                    shop.clone(),
                    removal.audience.clone(),
                    removal.destination.clone(),
                    Op::Remove,
                ))
                .or_default()
                .push(Member {
                    person: pseudonym(key, &shop).to_string(),
                    customer_id: person.customer_id,
                    row: removal.row.clone(),
                    consent: None,
                });
        }
    }
    if groups.is_empty() {
        return Vec::new();
    }
    let readds = held_rows_sharing_an_identifier(state, rules, &groups);
    groups.extend(readds);
    state.flushes += 1;
    let mut batches = batches_of(rules, partition, state.flushes, groups, now_ms);
    // The removals first: the additions after them are what the platform keeps.
    batches.sort_by_key(|b| b.op != Op::Remove);
    let persisted = note_removals(state, &batches);
    let mut out = emits(batches);
    out.extend(persisted);
    out
}

/// The rows held now at a destination (by anyone in the partition, the removed person too)
/// that share an email or phone with a removal emitted again: a platform matches people by
/// those, so the late removal would take away someone wanted there (a guest's rows removed
/// after the same contact was added as the customer; an old address sharing the phone). They
/// are added again after it, with the consent signals they were last sent with.
fn held_rows_sharing_an_identifier(state: &Partition, rules: &Rules, removals: &Groups) -> Groups {
    let mut readds = Groups::new();
    for ((shop, audience, destination, _), removed) in removals {
        let Some(platform) = rules.destinations.get(destination).copied() else {
            continue;
        };
        let removed: Vec<BTreeSet<(String, String)>> =
            removed.iter().map(|m| identifiers(&m.row)).collect();
        for (key, person) in &state.people {
            let holds = person
                .memberships
                .get(audience)
                .is_some_and(|m| m.synced.contains(destination));
            if &person.shop != shop || !holds {
                continue;
            }
            let Some(row) = platform.row(person.held_contact()) else {
                continue;
            };
            let held = identifiers(&row);
            if removed.iter().any(|r| !r.is_disjoint(&held)) {
                readds
                    .entry((shop.clone(), audience.clone(), destination.clone(), Op::Add))
                    .or_default()
                    .push(Member {
                        person: pseudonym(key, shop).to_string(),
                        customer_id: person.customer_id,
                        row,
                        consent: person.ad_consent_sent.get(destination).copied(),
                    });
            }
        }
    }
    readds
}

/// The (field, value) pairs of a row that name a person to a platform: its emails and phones,
/// at any depth (Google nests them), whatever the platform calls the field.
fn identifiers(row: &serde_json::Value) -> BTreeSet<(String, String)> {
    fn walk(value: &serde_json::Value, field: &str, out: &mut BTreeSet<(String, String)>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, inner) in fields {
                    walk(inner, name, out);
                }
            }
            serde_json::Value::Array(items) => {
                for inner in items {
                    walk(inner, field, out);
                }
            }
            serde_json::Value::String(text) => {
                let lower = field.to_ascii_lowercase();
                if lower.contains("mail") || lower.contains("phone") {
                    out.insert((field.to_string(), text.clone()));
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(row, "", &mut out);
    out
}

/// A fact an audience may draw members from.
#[derive(Clone, Copy)]
enum Fact<'a> {
    Abandoned(&'a Abandonment),
    Purchased(&'a Purchase),
    Customer(&'a CustomerFacts),
}

impl Source {
    /// `Some(matches)` when `fact` is of this source's kind, else `None`.
    fn judge(&self, fact: Fact<'_>) -> Option<bool> {
        match (self, fact) {
            (Source::Abandonments(filter), Fact::Abandoned(facts)) => Some(filter.matches(facts)),
            (Source::Orders(filter), Fact::Purchased(purchase)) => Some(filter.matches(purchase)),
            (Source::Customers(filter), Fact::Customer(facts)) => Some(filter.matches(facts)),
            _ => None,
        }
    }
}

/// Applies a fact about a person, made at `at_ms`: what it says of their contact and consent,
/// and of each audience (a purchase also ends abandoner memberships; a customer record no
/// longer matching ends a customer-audience membership). Returns the person's key.
#[allow(clippy::too_many_arguments)]
fn observe(
    state: &mut Partition,
    rules: &Rules,
    shop: &str,
    who: &PersonRef,
    (contact, consent, at_ms): (&Contact, Option<ConsentFact>, i64),
    fact: Fact<'_>,
    now_ms: i64,
    effects: &mut Vec<Effect>,
) -> Option<String> {
    let key = state.resolve(shop, who, now_ms, effects)?;
    let person = state.people.get_mut(&key).expect("resolved");
    let old_email = person.contact.email.clone();
    person.hear(contact, consent);
    if old_email.is_some() && old_email != person.contact.email {
        // An old address no longer leads to them (a guest fact under it is someone else now).
        let old = format!(
            "{shop}/{}",
            email_hash(old_email.as_deref().unwrap_or_default())
        );
        if state.by_email.get(&old) == Some(&key) {
            state.by_email.remove(&old);
        }
    }
    let person = state.people.get_mut(&key).expect("resolved");
    if let Fact::Purchased(purchase) = fact {
        if !purchase.cancelled && !purchase.test {
            leave_abandoners(person, &rules.audiences, at_ms);
            person.last_purchase_ms = person.last_purchase_ms.max(Some(at_ms));
        }
    }
    let bought_since = person_bought_since(person.last_purchase_ms, at_ms);
    for audience in rules.audiences.iter().filter(|a| a.admits_shop(shop)) {
        match (audience.source.judge(fact), fact) {
            // An abandonment delivered after a later purchase: they are not an abandoner.
            (Some(true), Fact::Abandoned(_)) if audience.leave_on_purchase && bought_since => {}
            (Some(true), _) => join(person, audience, at_ms, now_ms),
            (Some(false), Fact::Customer(_)) => {
                if let Some(membership) = person.memberships.get_mut(&audience.name) {
                    membership.candidate = false;
                }
            }
            _ => {}
        }
    }
    Some(key)
}

fn person_bought_since(last_purchase_ms: Option<i64>, at_ms: i64) -> bool {
    last_purchase_ms.is_some_and(|bought| bought >= at_ms)
}

/// Makes `person` a candidate of `audience` from a fact at `at_ms`, unless it is already out
/// of the window.
fn join(person: &mut Person, audience: &Audience, at_ms: i64, now_ms: i64) {
    let expires = audience.expiry(at_ms);
    if expires.is_some_and(|e| e <= now_ms) {
        return;
    }
    let membership = person.memberships.entry(audience.name.clone()).or_default();
    membership.candidate = true;
    membership.since_ms = membership.since_ms.max(at_ms);
    membership.expires_ms = match (membership.expires_ms, expires) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => expires,
    };
}

/// A recovery or purchase at `at_ms` ends the abandoner memberships it follows.
fn leave_abandoners(person: &mut Person, audiences: &[Audience], at_ms: i64) {
    for audience in audiences {
        if !matches!(audience.source, Source::Abandonments(_)) || !audience.leave_on_purchase {
            continue;
        }
        if let Some(membership) = person.memberships.get_mut(&audience.name) {
            if at_ms >= membership.since_ms {
                membership.candidate = false;
            }
        }
    }
}

/// Retires a person (redacted, or a guest merged into a customer): destinations drop them at
/// the next flush, then they are deleted. Someone no destination holds is deleted at once.
fn retire(state: &mut Partition, key: &str, effects: &mut Vec<Effect>) {
    let Some(person) = state.people.get_mut(key) else {
        return;
    };
    let held = person.held_contact().clone();
    person.redacted = true;
    for membership in person.memberships.values_mut() {
        membership.candidate = false;
    }
    person.prune();
    if !person.settled() {
        // Only what removal needs is kept, until the removal is emitted.
        person.exported_contact = Some(held.clone());
        person.contact = held;
        person.consent = None;
        person.minimise_if_redacted();
    } else {
        state.drop_person(key);
        effects.push(forget(key));
    }
}

/// Ends memberships whose window has passed.
fn expire(state: &mut Partition, now_ms: i64) -> Vec<Effect> {
    let mut effects = Vec::new();
    while let Some((at, key, audience)) = state.timers.first().cloned() {
        if at > now_ms {
            break;
        }
        state.timers.pop_first();
        let Some(person) = state.people.get_mut(&key) else {
            continue;
        };
        let Some(membership) = person.memberships.get_mut(&audience) else {
            continue;
        };
        // A later fact may have pushed the expiry: only the current one counts.
        if membership.candidate && membership.expires_ms.is_some_and(|e| e <= now_ms) {
            membership.candidate = false;
            state.dirty.insert(key.clone());
            effects.push(persist(&key, person));
        }
    }
    effects
}

/// Forgets people with nothing wanted or held, unseen for the retention.
fn sweep(state: &mut Partition, now_ms: i64, retention_ms: i64) -> Vec<Effect> {
    let stale: Vec<String> = state
        .people
        .iter()
        .filter(|(k, p)| {
            p.memberships.is_empty()
                && p.pending_removals.is_empty()
                && now_ms - p.seen_ms >= retention_ms
                && !state.dirty.contains(*k)
        })
        .map(|(k, _)| k.clone())
        .collect();
    stale
        .into_iter()
        .map(|key| {
            state.drop_person(&key);
            forget(&key)
        })
        .collect()
}

mod redaction;
mod report;

#[cfg(test)]
mod tests;

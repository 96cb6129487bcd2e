//! The referral state machine. Pure: it is fed one shop's facts with their receive time and the
//! clock, and answers with effects (records to emit, entities to persist) for the I/O layer.
//! All of a shop's state lives in one partition, so every rule is decided locally.

use std::collections::{BTreeSet, HashMap};

use aftercart_kafka::timers::take_due;
use aftercart_runtime::state_hash::StateHasher;
use aftercart_shopify::decode::ConsentChange;
use aftercart_shopify::money::Amount;
use aftercart_shopify::privacy::{
    international_phone, normal_phone, DataRequest, DataRequestReport, Holding, Person,
};

use crate::domain::code::{CodeRules, Source};
use crate::domain::event::{
    event_id, rfc3339, AdvocateOut, EmittedEvent, FriendOut, InviteEvent, OrderOut, Output,
    RewardEvent,
};
use crate::domain::identity::{
    self, customer_key, customer_key_of_email, customer_key_of_id, email_fingerprint_of,
    fingerprint,
};
use crate::domain::input::{Input, Negation, OrderFact};
use crate::domain::state::{
    customer_entity, ip_entity, order_entity, redaction_entity, shop_of_entity, Advocate, Consent,
    CustomerState, Entity, FirstOrder, Invite, InviteTo, IpState, OrderState, Redaction,
    ReferredBy, Reward, RewardStatus,
};

/// Which purchase step makes the buyer an advocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Paid,
    Fulfilled,
    /// Decided at payment, sent the invite delay after the first delivered shipment.
    Delivered,
}

/// The programme's rules.
#[derive(Debug, Clone)]
pub struct Rules {
    pub codes: CodeRules,
    pub trigger: Trigger,
    pub invite_delay_ms: i64,
    pub invite_min_value: Amount,
    pub cooldown_ms: i64,
    pub reward_min_value: Amount,
    pub review_window_ms: i64,
    /// More referred orders than this from one browser IP within the window are fraud.
    pub ip_burst_max: usize,
    pub ip_burst_window_ms: i64,
    /// Settled orders unseen for this long are forgotten.
    pub order_retention_ms: i64,
    /// Redactions are remembered this long (at least as long as any state is kept).
    pub redaction_retention_ms: i64,
    /// Keys the fingerprints of emails, phones, names with addresses and IPs.
    pub hasher: StateHasher,
}

/// Something to count: why an invite was skipped, how an attribution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    InviteSkipped(&'static str),
    Attribution(&'static str),
    /// A fact about a redacted customer or shop, dropped.
    Redacted,
}

impl Counted {
    /// Every reason an invite is skipped: the metric starts with each at zero.
    pub const INVITE_SKIP_REASONS: &'static [&'static str] = &[
        "test_order",
        "negated",
        "below_minimum",
        "no_email",
        "no_consent",
        "cooldown",
    ];
    /// Every way an attribution ends.
    pub const ATTRIBUTION_OUTCOMES: &'static [&'static str] = &[
        "pending",
        "rejected",
        "unknown_code",
        "test_order",
        "unknown_customer",
        "not_first_order",
        "already_referred",
        "below_minimum",
    ];

    fn is_listed(&self) -> bool {
        match self {
            Counted::InviteSkipped(reason) => Self::INVITE_SKIP_REASONS.contains(reason),
            Counted::Attribution(outcome) => Self::ATTRIBUTION_OUTCOMES.contains(outcome),
            Counted::Redacted => true,
        }
    }
}

/// Why a reward is rejected (the fraud rules), each a `reward.rejected` reason.
pub const REJECT_REASONS: &[&str] = &[
    "same_customer",
    "same_email",
    "same_name_address",
    "ip_burst",
];
/// Why a reward in review is voided, each a `reward.voided` reason.
pub const VOID_REASONS: &[&str] = &[
    "not_first_order",
    "refunded",
    "cancelled",
    "deleted",
    "friend_redacted",
    "advocate_redacted",
];

/// What the I/O layer must do, in order: emit records, then persist entities.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Emit {
        key: String,
        output: Output,
    },
    /// `None` deletes the entity (a changelog tombstone).
    Persist {
        key: String,
        entity: Option<Box<Entity>>,
    },
    Count(Counted),
}

/// The entities of one partition, an index of codes, and the timers.
#[derive(Debug, Default)]
pub struct Partition {
    customers: HashMap<String, CustomerState>,
    orders: HashMap<String, OrderState>,
    ips: HashMap<String, IpState>,
    /// `<shop>/<code>` → the advocate's customer entity key.
    codes: HashMap<String, String>,
    /// (due, order entity key): a waiting invite or a reward under review.
    timers: BTreeSet<(i64, String)>,
    /// Redaction entity key → the redaction, remembered for the redaction retention period.
    redactions: HashMap<String, Redaction>,
}

impl Partition {
    pub fn customers(&self) -> usize {
        self.customers.len()
    }

    pub fn orders(&self) -> usize {
        self.orders.len()
    }

    /// Rewards under review.
    pub fn pending_rewards(&self) -> usize {
        self.orders
            .values()
            .filter(|o| matches!(&o.reward, Some(r) if r.status == RewardStatus::Pending))
            .count()
    }

    fn insert(&mut self, key: String, entity: Entity) {
        match entity {
            Entity::Customer(customer) => {
                if let Some(advocate) = &customer.advocate {
                    let shop = shop_of_entity(&key);
                    self.codes
                        .insert(format!("{shop}/{}", advocate.code), key.clone());
                }
                self.customers.insert(key, customer);
            }
            Entity::Order(order) => {
                self.schedule(&key, &order);
                self.orders.insert(key, order);
            }
            Entity::Ip(ip) => {
                self.ips.insert(key, ip);
            }
            Entity::Redaction(redaction) => {
                self.redactions.insert(key, redaction);
            }
        }
    }

    /// True when a remembered `shop/redact` covers a fact of `shop` received at `received_ms`:
    /// one received up to the redaction (late, replayed, in flight). A shop that reinstalls
    /// after its `shop/redact` starts afresh.
    fn shop_redacted(&self, shop: &str, received_ms: i64) -> bool {
        self.redactions
            .get(&redaction_entity(shop, "shop"))
            .is_some_and(|r| r.shop && received_ms <= r.at_ms)
    }

    /// True when a remembered `customers/redact` of `shop` covers a fact naming this customer
    /// id, these emails and phones, or this order.
    fn redacted(
        &self,
        hasher: &StateHasher,
        shop: &str,
        customer_id: Option<u64>,
        emails: &[&str],
        phones: &[&str],
        order_id: Option<u64>,
    ) -> bool {
        let prefix = redaction_entity(shop, "");
        let mut mine = self
            .redactions
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, r)| r)
            .peekable();
        if mine.peek().is_none() {
            return false;
        }
        let email_fps: Vec<String> = emails
            .iter()
            .map(|e| email_fingerprint_of(hasher, e))
            .collect();
        let phone_fps: Vec<(Option<String>, Option<String>)> = phones
            .iter()
            .map(|p| (phone_fp(hasher, p), intl_phone_fp(hasher, p)))
            .collect();
        mine.any(|r| {
            (r.customer_id.is_some() && r.customer_id == customer_id)
                || r.email_fp.as_ref().is_some_and(|fp| email_fps.contains(fp))
                || phone_fps
                    .iter()
                    .any(|(national, intl)| match (&r.phone_intl_fp, intl) {
                        (Some(want), Some(have)) => want == have,
                        _ => r.phone_fp.is_some() && r.phone_fp == *national,
                    })
                || order_id.is_some_and(|id| r.orders.contains(&id))
        })
    }

    /// True when a redaction covers the people an order fact names.
    fn redacted_order(&self, hasher: &StateHasher, shop: &str, fact: &OrderFact) -> bool {
        let customer = fact.customer.as_ref();
        let emails: Vec<&str> = [
            customer.and_then(|c| c.email.as_deref()),
            fact.email.as_deref(),
            fact.contact_email.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let phones: Vec<&str> = [
            customer.and_then(|c| c.phone.as_deref()),
            fact.phone.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.redacted(
            hasher,
            shop,
            customer.and_then(|c| c.id),
            &emails,
            &phones,
            Some(fact.id),
        )
    }

    /// The person's customer entities (by id or email fingerprint) and the orders that are
    /// theirs, that they referred, or that `person.orders` lists; both sorted. `owned`: only
    /// what is theirs to read (a data request), never another customer id's entity that shares
    /// their email (a redaction, by contrast, forgets those too).
    fn held_about(
        &self,
        hasher: &StateHasher,
        shop: &str,
        person: &Person,
        owned: bool,
    ) -> (Vec<String>, Vec<String>) {
        let email_fp = person
            .email
            .as_deref()
            .map(|e| email_fingerprint_of(hasher, e));
        let by_id = person
            .customer_id
            .map(|id| customer_entity(shop, &customer_key_of_id(id)));
        let by_email = person
            .email
            .as_deref()
            .map(|e| customer_entity(shop, &customer_key_of_email(hasher, e)));
        let prefix = customer_entity(shop, "");
        let mut customers: Vec<String> = self
            .customers
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .filter(|(key, c)| {
                let other = owned
                    && person
                        .customer_id
                        .zip(c.customer_id)
                        .is_some_and(|(a, b)| a != b);
                Some(*key) == by_id.as_ref()
                    || (person.customer_id.is_some() && c.customer_id == person.customer_id)
                    || (!other
                        && (Some(*key) == by_email.as_ref()
                            || email_fp.as_ref().is_some_and(|fp| c.email_fps.contains(fp))))
            })
            .map(|(key, _)| key.clone())
            .collect();
        customers.sort();
        let order_prefix = format!("o/{shop}/");
        let mut orders: Vec<String> = self
            .orders
            .iter()
            .filter(|(k, _)| k.starts_with(&order_prefix))
            .filter(|(k, o)| {
                person.orders.contains(&order_id_of(k))
                    || o.customer.as_ref().is_some_and(|c| customers.contains(c))
                    || o.reward
                        .as_ref()
                        .is_some_and(|r| customers.contains(&r.advocate))
            })
            .map(|(k, _)| k.clone())
            .collect();
        orders.sort();
        (customers, orders)
    }

    fn schedule(&mut self, key: &str, order: &OrderState) {
        if let Some(Invite::Scheduled { due_ms, .. }) = &order.invite {
            self.timers.insert((*due_ms, key.to_string()));
        }
        if let Some(reward) = &order.reward {
            if reward.status == RewardStatus::Pending {
                self.timers.insert((reward.due_ms, key.to_string()));
            }
        }
    }
}

fn phone_fp(hasher: &StateHasher, phone: &str) -> Option<String> {
    normal_phone(phone).map(|p| fingerprint(hasher, "phone", &p))
}

/// The keyed hash of a phone written with its country code (see [`same_phone`]'s rule).
///
/// [`same_phone`]: aftercart_shopify::privacy::same_phone
fn intl_phone_fp(hasher: &StateHasher, phone: &str) -> Option<String> {
    international_phone(phone).map(|p| fingerprint(hasher, "phone-intl", &p))
}

fn persist(key: &str, entity: Entity) -> Effect {
    Effect::Persist {
        key: key.to_string(),
        entity: Some(Box::new(entity)),
    }
}

fn tombstone(key: &str) -> Effect {
    Effect::Persist {
        key: key.to_string(),
        entity: None,
    }
}

fn at_least(value: Option<&str>, minimum: Amount) -> bool {
    value
        .and_then(Amount::parse)
        .is_some_and(|amount| amount >= minimum)
}

pub struct Engine {
    rules: Rules,
    partitions: HashMap<i32, Partition>,
}

impl Engine {
    pub fn new(rules: Rules) -> Self {
        Engine {
            rules,
            partitions: HashMap::new(),
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

    /// Totals over owned partitions: (customers, orders, pending rewards).
    pub fn sizes(&self) -> (usize, usize, usize) {
        self.partitions.values().fold((0, 0, 0), |(c, o, r), p| {
            (c + p.customers(), o + p.orders(), r + p.pending_rewards())
        })
    }

    /// Takes ownership of a partition with its restored entities.
    pub fn assign(&mut self, partition: i32, entities: HashMap<String, Entity>) {
        let mut state = Partition::default();
        for (key, entity) in entities {
            state.insert(key, entity);
        }
        self.partitions.insert(partition, state);
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Revokes a partition and hands back every entity its changelog holds, redactions
    /// included (for [`Engine::assign`] later: a partition the rebalance returns unchanged is
    /// not restored, so what is left out here is forgotten).
    pub fn release(&mut self, partition: i32) -> Option<HashMap<String, Entity>> {
        let state = self.partitions.remove(&partition)?;
        let customers = state
            .customers
            .into_iter()
            .map(|(k, c)| (k, Entity::Customer(c)));
        let orders = state.orders.into_iter().map(|(k, o)| (k, Entity::Order(o)));
        let ips = state.ips.into_iter().map(|(k, i)| (k, Entity::Ip(i)));
        let redactions = state
            .redactions
            .into_iter()
            .map(|(k, r)| (k, Entity::Redaction(r)));
        Some(
            customers
                .chain(orders)
                .chain(ips)
                .chain(redactions)
                .collect(),
        )
    }

    /// Applies one fact of `shop` received at `at_ms`.
    pub fn apply(&mut self, partition: i32, shop: &str, input: Input, at_ms: i64) -> Vec<Effect> {
        let rules = &self.rules;
        let state = self.partitions.entry(partition).or_default();
        let mut effects = Vec::new();
        let covered = match &input {
            Input::Order(fact) => {
                state.shop_redacted(shop, at_ms) || state.redacted_order(&rules.hasher, shop, fact)
            }
            Input::Negated { order_id, .. } | Input::Delivered { order_id, .. } => {
                state.shop_redacted(shop, at_ms)
                    || state.redacted(&rules.hasher, shop, None, &[], &[], Some(*order_id))
            }
            Input::Consent(ConsentChange { customer_id, .. }) => {
                state.shop_redacted(shop, at_ms)
                    || state.redacted(&rules.hasher, shop, Some(*customer_id), &[], &[], None)
            }
            Input::RedactCustomer(_)
            | Input::RedactShop
            | Input::DataRequest(_)
            | Input::Ignored => false,
        };
        if covered {
            // Late or in flight on another topic: the person stays forgotten.
            return vec![Effect::Count(Counted::Redacted)];
        }
        let mut step = Step {
            rules,
            state,
            shop,
            effects: &mut effects,
        };
        match input {
            Input::Order(order) => step.order(&order, at_ms),
            Input::Delivered {
                order_id,
                at_ms: happened,
            } => step.delivered(order_id, happened.unwrap_or(at_ms), at_ms),
            Input::Negated { order_id, negation } => {
                let key = order_entity(shop, order_id);
                let mut order = step.state.orders.remove(&key).unwrap_or_default();
                order.last_seen_ms = order.last_seen_ms.max(at_ms);
                step.negate(&key, &mut order, negation, at_ms);
                step.put_order(key, order);
            }
            Input::Consent(ConsentChange {
                customer_id,
                subscribed,
                at_ms: stated_at,
            }) => {
                let key = customer_entity(shop, &customer_key_of_id(customer_id));
                if let Some(customer) = step.state.customers.get_mut(&key) {
                    if merge_consent(customer, subscribed, stated_at.unwrap_or(at_ms)) {
                        let entity = Entity::Customer(customer.clone());
                        step.effects.push(persist(&key, entity));
                    }
                }
            }
            Input::RedactCustomer(person) => step.redact_customer(&person, at_ms),
            Input::RedactShop => step.redact_shop(at_ms),
            Input::DataRequest(request) => step.data_request(&request, at_ms),
            Input::Ignored => {}
        }
        effects
    }

    /// When the next timer is due, over every owned partition: the stage holds it while
    /// records are left to read.
    pub fn next_due(&self) -> Option<i64> {
        self.partitions
            .values()
            .filter_map(|p| p.timers.first().map(|timer| timer.0))
            .min()
    }

    /// Sends invites whose delay passed and grants rewards whose review window passed.
    pub fn fire_due(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        let mut out = Vec::new();
        for (partition, state) in &mut self.partitions {
            for key in take_due(&mut state.timers, now_ms) {
                let mut effects = Vec::new();
                let shop = shop_of_entity(&key).to_string();
                let mut step = Step {
                    rules: &self.rules,
                    state,
                    shop: &shop,
                    effects: &mut effects,
                };
                step.fire(&key, now_ms);
                out.extend(effects.into_iter().map(|e| (*partition, e)));
            }
        }
        out
    }

    /// Forgets settled orders unseen for the retention period, IP times outside the window, and
    /// redactions older than their retention.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        let mut out = Vec::new();
        for (partition, state) in &mut self.partitions {
            let forgotten: Vec<String> = state
                .redactions
                .iter()
                .filter(|(_, r)| r.at_ms.saturating_add(self.rules.redaction_retention_ms) < now_ms)
                .map(|(k, _)| k.clone())
                .collect();
            for key in forgotten {
                state.redactions.remove(&key);
                out.push((*partition, tombstone(&key)));
            }
            let old: Vec<String> = state
                .orders
                .iter()
                .filter(|(_, o)| {
                    o.settled() && o.last_seen_ms + self.rules.order_retention_ms < now_ms
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in old {
                state.orders.remove(&key);
                out.push((*partition, tombstone(&key)));
            }
            let horizon = now_ms - self.rules.ip_burst_window_ms;
            let mut changed = Vec::new();
            for (key, ip) in &mut state.ips {
                let before = ip.referred_ms.len();
                ip.referred_ms.retain(|at| *at > horizon);
                if ip.referred_ms.len() != before {
                    changed.push(key.clone());
                }
            }
            for key in changed {
                if state.ips[&key].referred_ms.is_empty() {
                    state.ips.remove(&key);
                    out.push((*partition, tombstone(&key)));
                } else {
                    out.push((
                        *partition,
                        persist(&key, Entity::Ip(state.ips[&key].clone())),
                    ));
                }
            }
        }
        out
    }

    /// Brings state up to date with an event found in an output topic after the checkpoint:
    /// it was emitted, but the state change behind it did not reach the changelog.
    pub fn reconcile(&mut self, partition: i32, emitted: &EmittedEvent) -> Vec<Effect> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        let at = aftercart_shopify::time::parse_time_ms(&emitted.occurred_at).unwrap_or(0);
        let shop = emitted.shop.as_str();
        let code = &emitted.advocate.referral_code;
        let hasher = &self.rules.hasher;
        let about_redacted = |id: Option<u64>, order: Option<u64>| {
            (id.is_some() || order.is_some()) && state.redacted(hasher, shop, id, &[], &[], order)
        };
        let friend_order = emitted.friend.as_ref().map(|f| f.order.id);
        if state.shop_redacted(shop, at)
            || about_redacted(emitted.advocate.customer_id, None)
            || about_redacted(
                emitted.friend.as_ref().and_then(|f| f.customer_id),
                friend_order,
            )
            || about_redacted(None, emitted.order.as_ref().map(|o| o.id))
        {
            // Redacted since: the state behind the event is gone for good.
            return effects;
        }
        if emitted.event_type == "invite" {
            let Some(order_out) = &emitted.order else {
                return effects;
            };
            let key = order_entity(shop, order_out.id);
            // A crash after the invite was written but before the order's and the advocate's
            // first state was (both new in that batch) leaves nothing to mark. Keep an order
            // and a customer holding just the facts of the invite: the order read again then
            // finds its invite sent, and the advocate's code keeps working for friends.
            let order = state.orders.entry(key.clone()).or_default();
            order.last_seen_ms = order.last_seen_ms.max(at);
            if order.customer.is_none() {
                let advocate = &emitted.advocate;
                order.customer = advocate
                    .customer_id
                    .map(customer_key_of_id)
                    .or_else(|| {
                        advocate
                            .email
                            .as_deref()
                            .map(|e| customer_key_of_email(hasher, e))
                    })
                    .map(|k| customer_entity(shop, &k));
                order.customer_id = advocate.customer_id;
            }
            order.invite = Some(Invite::Sent);
            let order_snapshot = order.clone();
            effects.push(persist(&key, Entity::Order(order_snapshot.clone())));
            if let Some(customer_key) = order_snapshot.customer {
                let customer = state.customers.entry(customer_key.clone()).or_default();
                if customer.customer_id.is_none() {
                    customer.customer_id = emitted.advocate.customer_id;
                }
                customer.advocate = Some(Advocate {
                    code: code.clone(),
                    invited_ms: at,
                });
                state
                    .codes
                    .insert(format!("{shop}/{code}"), customer_key.clone());
                effects.push(persist(&customer_key, Entity::Customer(customer.clone())));
            }
            return effects;
        }
        let Some(friend) = &emitted.friend else {
            return effects;
        };
        let key = order_entity(shop, friend.order.id);
        let status = match emitted.event_type.as_str() {
            "reward.pending" => RewardStatus::Pending,
            "reward.granted" => RewardStatus::Granted,
            "reward.voided" => RewardStatus::Voided,
            "reward.rejected" => RewardStatus::Rejected,
            _ => return effects,
        };
        let advocate = state.codes.get(&format!("{shop}/{code}")).cloned();
        let order = state.orders.entry(key.clone()).or_default();
        order.attribution_checked = true;
        match &mut order.reward {
            // Statuses only move forward: pending, then one final status.
            Some(reward) => {
                if reward.status == RewardStatus::Pending {
                    reward.status = status;
                    reward.reason = emitted.reason.clone().or(reward.reason.take());
                }
            }
            None => {
                order.reward = Some(Reward {
                    advocate: advocate.clone().unwrap_or_default(),
                    advocate_id: emitted.advocate.customer_id,
                    code: code.clone(),
                    via: Source::parse(&emitted.attributed_via).unwrap_or(Source::DiscountCode),
                    status,
                    attributed_ms: at,
                    due_ms: emitted
                        .review_ends_at
                        .as_deref()
                        .and_then(aftercart_shopify::time::parse_time_ms)
                        .unwrap_or(at + self.rules.review_window_ms),
                    reason: emitted.reason.clone(),
                });
            }
        }
        let order = order.clone();
        state.schedule(&key, &order);
        effects.push(persist(&key, Entity::Order(order.clone())));
        if status == RewardStatus::Pending {
            if let (Some(friend_key), Some(advocate)) = (&order.customer, advocate) {
                if let Some(customer) = state.customers.get_mut(friend_key) {
                    if customer.referred_by.is_none() {
                        customer.referred_by = Some(ReferredBy {
                            advocate,
                            order_id: friend.order.id,
                        });
                        effects.push(persist(friend_key, Entity::Customer(customer.clone())));
                    }
                }
            }
        }
        effects
    }
}

/// Updates consent if the statement is at least as recent; true when it changed.
fn merge_consent(customer: &mut CustomerState, subscribed: bool, at_ms: i64) -> bool {
    match &customer.consent {
        Some(current) if current.at_ms > at_ms => false,
        Some(current) if current.subscribed == subscribed && current.at_ms == at_ms => false,
        _ => {
            customer.consent = Some(Consent { subscribed, at_ms });
            true
        }
    }
}

/// One application of facts to a partition, collecting effects.
struct Step<'a> {
    rules: &'a Rules,
    state: &'a mut Partition,
    shop: &'a str,
    effects: &'a mut Vec<Effect>,
}

impl Step<'_> {
    fn put_order(&mut self, key: String, order: OrderState) {
        self.state.schedule(&key, &order);
        self.effects
            .push(persist(&key, Entity::Order(order.clone())));
        self.state.orders.insert(key, order);
    }

    fn put_customer(&mut self, key: &str, customer: CustomerState) {
        self.effects
            .push(persist(key, Entity::Customer(customer.clone())));
        self.state.customers.insert(key.to_string(), customer);
    }

    fn count(&mut self, counted: Counted) {
        // The lists feed the metrics' zero series; the engine tests catch a reason left out.
        debug_assert!(counted.is_listed(), "{counted:?} is missing from its list");
        self.effects.push(Effect::Count(counted));
    }

    fn order(&mut self, fact: &OrderFact, at_ms: i64) {
        let key = order_entity(self.shop, fact.id);
        let mut order = self.state.orders.remove(&key).unwrap_or_default();
        let customer =
            customer_key(&self.rules.hasher, fact).map(|k| customer_entity(self.shop, &k));
        order.last_seen_ms = order.last_seen_ms.max(at_ms);
        order.customer = customer.clone().or(order.customer);
        order.customer_id = fact
            .customer
            .as_ref()
            .and_then(|c| c.id)
            .or(order.customer_id);
        order.name = fact.name.clone().or(order.name);
        order.value = fact.value().map(str::to_string).or(order.value);
        order.currency = fact.currency.clone().or(order.currency);
        order.test |= fact.test;
        let created_ms = fact.created_ms().or(order.created_ms).unwrap_or(at_ms);
        order.created_ms = Some(created_ms);
        if let Some(customer_key) = &customer {
            self.update_customer(customer_key, fact, created_ms, at_ms);
        }
        // Decided at the first snapshot that names a code (a cancellation or refund snapshot
        // delivered first may carry none).
        if !order.attribution_checked && !self.rules.codes.candidates(fact).is_empty() {
            order.attribution_checked = true;
            self.attribute(&key, &mut order, fact, at_ms);
        }
        let triggered = match self.rules.trigger {
            Trigger::Paid | Trigger::Delivered => fact.is_paid(),
            Trigger::Fulfilled => fact.is_fulfilled(),
        };
        if triggered && order.invite.is_none() {
            order.invite = Some(self.decide_invite(&order, fact, at_ms));
            // Without a delay the invite goes now, so a friend's order right behind it in the
            // same batch already finds the code.
            if matches!(order.invite, Some(Invite::Scheduled { due_ms, .. }) if due_ms <= at_ms) {
                self.send_invite(&key, &mut order);
            }
        }
        if let Some(negation) = fact.negation() {
            self.negate(&key, &mut order, negation, at_ms);
        }
        self.put_order(key, order);
    }

    fn update_customer(&mut self, key: &str, fact: &OrderFact, created_ms: i64, at_ms: i64) {
        let mut customer = self.state.customers.remove(key).unwrap_or_default();
        let before = customer.clone();
        customer.customer_id = fact
            .customer
            .as_ref()
            .and_then(|c| c.id)
            .or(customer.customer_id);
        let rules = self.rules;
        let hasher = &rules.hasher;
        remember(
            &mut customer.email_fps,
            identity::email_fingerprint(hasher, fact),
        );
        remember(
            &mut customer.name_address_fps,
            identity::name_address_fingerprint(hasher, fact),
        );
        customer.has_history |= fact
            .customer
            .as_ref()
            .and_then(|c| c.orders_count)
            .is_some_and(|count| count > 1);
        if let Some((subscribed, stated_at)) = fact.consent() {
            merge_consent(&mut customer, subscribed, stated_at.unwrap_or(at_ms));
        }
        let replaced = match &customer.first_order {
            Some(first) if first.order_id == fact.id => None,
            Some(first) if first.created_ms <= created_ms => None,
            previous => Some(previous.as_ref().map(|p| p.order_id)),
        };
        if let Some(previous) = replaced {
            customer.first_order = Some(FirstOrder {
                order_id: fact.id,
                created_ms,
            });
            // A late-delivered earlier order: the order thought first was not, and the friend
            // is no longer referred through it.
            if let Some(previous) = previous {
                if customer
                    .referred_by
                    .as_ref()
                    .is_some_and(|r| r.order_id == previous)
                {
                    customer.referred_by = None;
                }
                let previous_key = order_entity(self.shop, previous);
                if let Some(mut earlier) = self.state.orders.remove(&previous_key) {
                    self.void(&previous_key, &mut earlier, "not_first_order", at_ms);
                    self.put_order(previous_key, earlier);
                }
            }
        }
        if customer != before {
            self.put_customer(key, customer);
        } else {
            self.state.customers.insert(key.to_string(), customer);
        }
    }

    fn decide_invite(&mut self, order: &OrderState, fact: &OrderFact, at_ms: i64) -> Invite {
        let consent = order
            .customer
            .as_ref()
            .and_then(|k| self.state.customers.get(k))
            .and_then(|c| c.consent.as_ref())
            .is_some_and(|c| c.subscribed);
        let reason = if order.test {
            Some("test_order")
        } else if order.negated.is_some() || fact.negation().is_some() {
            Some("negated")
        } else if !at_least(order.value.as_deref(), self.rules.invite_min_value) {
            Some("below_minimum")
        } else if order.customer.is_none() || fact.email().is_none() {
            Some("no_email")
        } else if !consent {
            Some("no_consent")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.count(Counted::InviteSkipped(reason));
            return Invite::Skipped {
                reason: reason.to_string(),
            };
        }
        let customer = fact.customer.as_ref();
        let to = InviteTo {
            customer_id: customer.and_then(|c| c.id),
            email: fact.email().unwrap_or_default().to_string(),
            first_name: customer.and_then(|c| c.first_name.clone()),
            last_name: customer.and_then(|c| c.last_name.clone()),
        };
        let start = match self.rules.trigger {
            Trigger::Delivered => order.delivered_ms,
            Trigger::Paid | Trigger::Fulfilled => Some(at_ms),
        };
        match start {
            Some(start) => Invite::Scheduled {
                due_ms: start + self.rules.invite_delay_ms,
                to,
            },
            None => Invite::AwaitingDelivery { to },
        }
    }

    /// A shipment of the order was delivered: an invite waiting for it starts its delay.
    fn delivered(&mut self, order_id: u64, happened_ms: i64, at_ms: i64) {
        let key = order_entity(self.shop, order_id);
        let mut order = self.state.orders.remove(&key).unwrap_or_default();
        if order.delivered_ms.is_some() {
            self.state.orders.insert(key, order);
            return;
        }
        order.delivered_ms = Some(happened_ms);
        order.last_seen_ms = order.last_seen_ms.max(at_ms);
        if let Some(Invite::AwaitingDelivery { to }) = order.invite.take() {
            let due_ms = happened_ms + self.rules.invite_delay_ms;
            order.invite = Some(Invite::Scheduled { due_ms, to });
            if due_ms <= at_ms {
                self.send_invite(&key, &mut order);
            }
        }
        self.put_order(key, order);
    }

    /// Finds the advocate whose code the order names, and decides the reward.
    fn attribute(&mut self, key: &str, order: &mut OrderState, fact: &OrderFact, at_ms: i64) {
        let candidates = self.rules.codes.candidates(fact);
        if candidates.is_empty() {
            return;
        }
        let found = candidates.iter().find_map(|(source, code)| {
            let advocate = self.state.codes.get(&format!("{}/{code}", self.shop))?;
            Some((*source, code.clone(), advocate.clone()))
        });
        let Some((via, code, advocate_key)) = found else {
            self.count(Counted::Attribution("unknown_code"));
            return;
        };
        if order.test {
            self.count(Counted::Attribution("test_order"));
            return;
        }
        let advocate = self
            .state
            .customers
            .get(&advocate_key)
            .cloned()
            .unwrap_or_default();
        let friend = order
            .customer
            .as_ref()
            .and_then(|k| self.state.customers.get(k))
            .cloned();
        let burst = fact.browser_ip().is_some_and(|ip| self.ip_burst(ip, at_ms));
        let fraud = if order.customer.as_deref() == Some(advocate_key.as_str()) {
            Some("same_customer")
        } else if friend
            .as_ref()
            .is_some_and(|f| shares(&f.email_fps, &advocate.email_fps))
        {
            Some("same_email")
        } else if friend
            .as_ref()
            .is_some_and(|f| shares(&f.name_address_fps, &advocate.name_address_fps))
        {
            Some("same_name_address")
        } else if burst {
            Some("ip_burst")
        } else {
            None
        };
        let mut reward = Reward {
            advocate: advocate_key.clone(),
            advocate_id: advocate.customer_id,
            code,
            via,
            status: RewardStatus::Pending,
            attributed_ms: at_ms,
            due_ms: at_ms + self.rules.review_window_ms,
            reason: None,
        };
        if let Some(reason) = fraud {
            self.count(Counted::Attribution("rejected"));
            reward.status = RewardStatus::Rejected;
            reward.reason = Some(reason.to_string());
            order.reward = Some(reward);
            self.emit_reward(order, fact.id, "reward.rejected", at_ms);
            return;
        }
        let Some(friend_key) = order.customer.clone() else {
            self.count(Counted::Attribution("unknown_customer"));
            return;
        };
        let friend = friend.unwrap_or_default();
        let first = friend
            .first_order
            .as_ref()
            .is_some_and(|f| f.order_id == fact.id)
            && !friend.has_history;
        let ineligible = if !first {
            Some("not_first_order")
        } else if friend.referred_by.is_some() {
            Some("already_referred")
        } else if !at_least(order.value.as_deref(), self.rules.reward_min_value) {
            Some("below_minimum")
        } else {
            None
        };
        if let Some(reason) = ineligible {
            self.count(Counted::Attribution(reason));
            return;
        }
        self.count(Counted::Attribution("pending"));
        let mut friend = friend;
        friend.referred_by = Some(ReferredBy {
            advocate: advocate_key,
            order_id: fact.id,
        });
        self.put_customer(&friend_key, friend);
        order.reward = Some(reward);
        self.emit_reward(order, fact.id, "reward.pending", at_ms);
        if let Some(negation) = order.negated {
            self.void(key, order, negation.as_str(), at_ms);
        }
    }

    /// Records a referred order from `ip`; true when it makes more than the allowed burst.
    fn ip_burst(&mut self, ip: &str, at_ms: i64) -> bool {
        let key = ip_entity(self.shop, &fingerprint(&self.rules.hasher, "ip", ip.trim()));
        let mut state = self.state.ips.remove(&key).unwrap_or_default();
        let horizon = at_ms - self.rules.ip_burst_window_ms;
        state.referred_ms.retain(|at| *at > horizon);
        state.referred_ms.push(at_ms);
        let burst = state.referred_ms.len() > self.rules.ip_burst_max;
        self.effects.push(persist(&key, Entity::Ip(state.clone())));
        self.state.ips.insert(key, state);
        burst
    }

    fn negate(&mut self, key: &str, order: &mut OrderState, negation: Negation, at_ms: i64) {
        if order.negated.is_none() {
            order.negated = Some(negation);
        }
        if matches!(
            order.invite,
            Some(Invite::Scheduled { .. } | Invite::AwaitingDelivery { .. })
        ) {
            self.count(Counted::InviteSkipped("negated"));
            order.invite = Some(Invite::Skipped {
                reason: negation.as_str().to_string(),
            });
        }
        self.void(key, order, negation.as_str(), at_ms);
    }

    /// Voids a reward under review.
    fn void(&mut self, _key: &str, order: &mut OrderState, reason: &str, at_ms: i64) {
        let Some(reward) = &mut order.reward else {
            return;
        };
        if reward.status != RewardStatus::Pending {
            return;
        }
        reward.status = RewardStatus::Voided;
        reward.reason = Some(reason.to_string());
        let order_id = order_id_of(_key);
        self.emit_reward(order, order_id, "reward.voided", at_ms);
    }

    fn fire(&mut self, key: &str, now_ms: i64) {
        let Some(mut order) = self.state.orders.remove(key) else {
            return;
        };
        let mut changed = false;
        if let Some(Invite::Scheduled { due_ms, .. }) = &order.invite {
            if *due_ms <= now_ms {
                self.send_invite(key, &mut order);
                changed = true;
            }
        }
        let review_over = order
            .reward
            .as_ref()
            .is_some_and(|r| r.status == RewardStatus::Pending && r.due_ms <= now_ms);
        if review_over {
            let reward = order.reward.as_mut().expect("checked");
            reward.status = RewardStatus::Granted;
            let due = reward.due_ms;
            self.emit_reward(&order, order_id_of(key), "reward.granted", due);
            changed = true;
        }
        if changed {
            self.put_order(key.to_string(), order);
        } else {
            self.state.orders.insert(key.to_string(), order);
        }
    }

    fn send_invite(&mut self, key: &str, order: &mut OrderState) {
        let Some(Invite::Scheduled { due_ms, to }) = order.invite.take() else {
            return;
        };
        let customer_key = order.customer.clone().unwrap_or_default();
        let mut customer = self
            .state
            .customers
            .remove(&customer_key)
            .unwrap_or_default();
        let consent = customer.consent.as_ref().is_some_and(|c| c.subscribed);
        let cooling = customer
            .advocate
            .as_ref()
            .is_some_and(|a| a.invited_ms + self.rules.cooldown_ms > due_ms);
        let reason = if order.negated.is_some() {
            Some("negated")
        } else if !consent {
            Some("no_consent")
        } else if cooling {
            Some("cooldown")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.count(Counted::InviteSkipped(reason));
            order.invite = Some(Invite::Skipped {
                reason: reason.to_string(),
            });
            self.state.customers.insert(customer_key, customer);
            return;
        }
        let local_key = customer_key
            .splitn(3, '/')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let code = customer
            .advocate
            .as_ref()
            .map(|a| a.code.clone())
            .unwrap_or_else(|| self.rules.codes.code_for(self.shop, &local_key));
        customer.advocate = Some(Advocate {
            code: code.clone(),
            invited_ms: due_ms,
        });
        self.state
            .codes
            .insert(format!("{}/{code}", self.shop), customer_key.clone());
        self.put_customer(&customer_key, customer);
        order.invite = Some(Invite::Sent);
        let order_id = order_id_of(key);
        let event = InviteEvent {
            event_id: event_id(&format!("invite/{}/{order_id}", self.shop)),
            event_type: "invite".to_string(),
            shop: self.shop.to_string(),
            occurred_at: rfc3339(due_ms),
            advocate: AdvocateOut {
                customer_id: to.customer_id,
                email: Some(to.email),
                first_name: to.first_name,
                last_name: to.last_name,
                referral_code: code.clone(),
            },
            order: order_out(order, order_id),
            share_url: self.rules.codes.share_url(self.shop, &code),
            referral_code: code,
        };
        self.effects.push(Effect::Emit {
            key: format!("{}/{local_key}", self.shop),
            output: Output::Invite(Box::new(event)),
        });
    }

    fn emit_reward(&mut self, order: &OrderState, order_id: u64, event_type: &str, at_ms: i64) {
        let Some(reward) = &order.reward else {
            return;
        };
        debug_assert!(
            match event_type {
                "reward.rejected" => reward
                    .reason
                    .as_deref()
                    .is_some_and(|r| REJECT_REASONS.contains(&r)),
                "reward.voided" => reward
                    .reason
                    .as_deref()
                    .is_some_and(|r| VOID_REASONS.contains(&r)),
                _ => true,
            },
            "{event_type} reason {:?} is missing from its list",
            reward.reason
        );
        let advocate_local = reward.advocate.splitn(3, '/').nth(2).unwrap_or_default();
        let event = RewardEvent {
            event_id: event_id(&format!("{event_type}/{}/{order_id}", self.shop)),
            event_type: event_type.to_string(),
            shop: self.shop.to_string(),
            occurred_at: rfc3339(at_ms),
            advocate: AdvocateOut {
                customer_id: reward.advocate_id,
                email: None,
                first_name: None,
                last_name: None,
                referral_code: reward.code.clone(),
            },
            friend: FriendOut {
                customer_id: order.customer_id,
                order: order_out(order, order_id),
            },
            attributed_via: reward.via.as_str().to_string(),
            reason: reward.reason.clone(),
            review_ends_at: (event_type == "reward.pending").then(|| rfc3339(reward.due_ms)),
            issued: None,
        };
        self.effects.push(Effect::Emit {
            key: format!("{}/{advocate_local}", self.shop),
            output: Output::Reward(Box::new(event)),
        });
    }

    fn redact_customer(&mut self, person: &Person, at_ms: i64) {
        if person.is_empty() {
            return;
        }
        let customer_id = person.customer_id;
        let rules = self.rules;
        let hasher = &rules.hasher;
        let email_fp = person
            .email
            .as_deref()
            .map(|e| email_fingerprint_of(hasher, e));
        let (keys, orders) = self.state.held_about(hasher, self.shop, person, false);
        for key in orders {
            let Some(mut order) = self.state.orders.remove(&key) else {
                continue;
            };
            let own = order.customer.as_ref().is_some_and(|c| keys.contains(c))
                || person.orders.contains(&order_id_of(&key));
            let reason = if own {
                "friend_redacted"
            } else {
                "advocate_redacted"
            };
            self.void(&key, &mut order, reason, at_ms);
            if own {
                self.state.timers.retain(|(_, k)| *k != key);
                self.effects.push(tombstone(&key));
            } else {
                self.put_order(key, order);
            }
        }
        for key in keys {
            if let Some(customer) = self.state.customers.remove(&key) {
                if let Some(advocate) = customer.advocate {
                    self.state
                        .codes
                        .remove(&format!("{}/{}", self.shop, advocate.code));
                }
                self.effects.push(tombstone(&key));
            }
        }
        let redaction = Redaction {
            customer_id,
            email_fp,
            phone_fp: person.phone.as_deref().and_then(|p| phone_fp(hasher, p)),
            phone_intl_fp: person
                .phone
                .as_deref()
                .and_then(|p| intl_phone_fp(hasher, p)),
            orders: person.orders.clone(),
            shop: false,
            at_ms,
        };
        let id = fingerprint(
            hasher,
            "redaction",
            &format!(
                "{:?}|{:?}|{:?}|{:?}",
                redaction.customer_id, redaction.email_fp, redaction.phone_fp, redaction.orders
            ),
        );
        self.remember_redaction(redaction_entity(self.shop, &id), redaction);
    }

    /// Reports everything held about the person: their customer entities and the orders that
    /// are theirs, that they referred, or that the request lists.
    fn data_request(&mut self, request: &DataRequest, at_ms: i64) {
        let (customers, orders) =
            self.state
                .held_about(&self.rules.hasher, self.shop, &request.person, true);
        let holding = |kind: &str, key: &str, data: serde_json::Value| Holding {
            kind: kind.to_string(),
            key: key.to_string(),
            data,
        };
        let mut holdings: Vec<Holding> = customers
            .iter()
            .filter_map(|key| Some((key, self.state.customers.get(key)?)))
            .map(|(key, c)| holding("customer", key, serde_json::to_value(c).unwrap_or_default()))
            .collect();
        // An order they only referred is the friend's: of it, only their reward is theirs.
        let own = |key: &str, o: &OrderState| {
            o.customer.as_ref().is_some_and(|c| customers.contains(c))
                || request.person.orders.contains(&order_id_of(key))
        };
        holdings.extend(
            orders
                .iter()
                .filter_map(|key| Some((key, self.state.orders.get(key)?)))
                .map(|(key, o)| {
                    let data = if own(key, o) {
                        serde_json::to_value(o).unwrap_or_default()
                    } else {
                        serde_json::json!({ "reward": o.reward })
                    };
                    holding("order", key, data)
                }),
        );
        let report = DataRequestReport::new("referrals", self.shop, request, at_ms, holdings);
        self.effects.push(Effect::Emit {
            key: format!("{}/data-request", self.shop),
            output: Output::DataRequest(Box::new(report)),
        });
    }

    fn remember_redaction(&mut self, key: String, redaction: Redaction) {
        self.effects
            .push(persist(&key, Entity::Redaction(redaction.clone())));
        self.state.redactions.insert(key, redaction);
    }

    fn redact_shop(&mut self, at_ms: i64) {
        let shop = self.shop;
        let mine = |key: &String| shop_of_entity(key) == shop;
        let keys: Vec<String> = self
            .state
            .customers
            .keys()
            .chain(self.state.orders.keys())
            .chain(self.state.ips.keys())
            .filter(|k| mine(k))
            .cloned()
            .collect();
        // The shop's customer redactions stay (pseudonyms only): the shop marker covers facts
        // received up to it, and a customer redacted before it stays forgotten after a
        // reinstall, for the redaction retention, as any other.
        for key in keys {
            self.state.customers.remove(&key);
            self.state.orders.remove(&key);
            self.state.ips.remove(&key);
            self.effects.push(tombstone(&key));
        }
        self.state.timers.retain(|(_, key)| !mine(key));
        let code_prefix = format!("{shop}/");
        self.state
            .codes
            .retain(|code, _| !code.starts_with(&code_prefix));
        let redaction = Redaction {
            shop: true,
            at_ms,
            ..Redaction::default()
        };
        self.remember_redaction(redaction_entity(shop, "shop"), redaction);
    }
}

/// Fingerprints kept per customer: people change email and address, and fraud checks compare
/// against every recent one.
const FINGERPRINTS_KEPT: usize = 4;

/// Adds a fingerprint (most recent last), keeping the last few distinct ones.
fn remember(fingerprints: &mut Vec<String>, fingerprint: Option<String>) {
    let Some(fingerprint) = fingerprint else {
        return;
    };
    fingerprints.retain(|f| *f != fingerprint);
    fingerprints.push(fingerprint);
    if fingerprints.len() > FINGERPRINTS_KEPT {
        fingerprints.remove(0);
    }
}

fn shares(a: &[String], b: &[String]) -> bool {
    a.iter().any(|f| b.contains(f))
}

fn order_id_of(key: &str) -> u64 {
    key.rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

fn order_out(order: &OrderState, order_id: u64) -> OrderOut {
    OrderOut {
        id: order_id,
        name: order.name.clone(),
        value: order.value.clone(),
        currency: order.currency.clone(),
    }
}

#[cfg(test)]
mod tests;

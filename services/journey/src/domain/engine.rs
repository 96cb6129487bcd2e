//! The journey state machine. Pure: it is fed one shop's facts with their receive time and the
//! clock, and answers with effects (touchpoints to emit, entities to persist) for the I/O layer.
//! All of a shop's state lives in one partition (the by-shop topic), so an order and its
//! fulfilments meet whatever their record keys.

use std::collections::{BTreeSet, HashMap};

use aftercart_kafka::timers::take_due;
use aftercart_runtime::state_hash::StateHasher;
use aftercart_shopify::decode::ConsentChange;
use aftercart_shopify::money::Amount;
use aftercart_shopify::privacy::markers::RedactionMarkers;
use aftercart_shopify::privacy::DataRequestReport;
use aftercart_shopify::time::rfc3339;

use crate::domain::input::{Input, InviteFact, OrderFact, Shipment, ShipmentFact, Stop};
use crate::domain::kpis::{report, Fact, KpiRecord, KpiRules};
use crate::domain::state::{
    buyer_entity, customer_entity, order_entity, shop_entity, shop_of_entity, Bought, BuyerOrders,
    CustomerConsent, Entity, OrderJourney, ProgressState, ShopKpis, Timer,
};
use crate::domain::touchpoint::{
    event_id, mark, CustomerOut, FulfillmentOut, Kind, OrderOut, ProductOut, ReferralOut,
    Touchpoint,
};

/// The journey's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Review request this long after delivery; `None`: never.
    pub review_after_ms: Option<i64>,
    /// Product id → usage period: a replenishment reminder comes at delivery plus the period
    /// times the quantity bought.
    pub replenish_every_ms: HashMap<u64, i64>,
    /// Relay the referrals service's invites as `referral_invitation` touchpoints (it invites at
    /// delivery: `AFTERCART_REFERRALS_INVITE_TRIGGER=delivered`).
    pub relay_invites: bool,
    /// Orders with nothing left to do are forgotten when unseen this long.
    pub order_retention_ms: i64,
    /// How long a `customers/redact` or `shop/redact` is remembered (its markers).
    pub redaction_retention_ms: i64,
    /// The shared state hash: redaction markers hold emails and phones as hashes keyed with it.
    pub hasher: StateHasher,
    /// How the daily KPI record cuts days.
    pub kpis: KpiRules,
}

/// Something to count.
#[derive(Debug, Clone, PartialEq)]
pub enum Counted {
    /// A business fact of the KPI record (also a metric).
    Kpi(Fact),
    /// A touchpoint not sent, and why (`no_contact`, `no_consent`, `stopped`, `test_order`).
    Skipped(Kind, &'static str),
    /// An order's timed touchpoints stopped (cancelled, refunded, deleted).
    Stopped(Stop),
    /// Days from order to first delivery.
    DeliveredAfter { seconds: f64 },
    /// A fact dropped: it is about a redacted customer or shop.
    Redacted,
}

/// What the I/O layer must do, in order: emit records, then persist entities.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Emit {
        key: String,
        output: Box<Touchpoint>,
    },
    /// A shop's daily KPI record (key: the shop).
    Report {
        key: String,
        record: Box<KpiRecord>,
    },
    /// `None` deletes the entity (a changelog tombstone).
    Persist {
        key: String,
        entity: Option<Box<Entity>>,
    },
    Count(Counted),
    /// The answer to a `customers/data_request` ([`report`]).
    Answer {
        key: String,
        report: Box<DataRequestReport>,
    },
}

/// The entities of one partition and its timers.
#[derive(Debug, Default)]
struct Partition {
    orders: HashMap<String, OrderJourney>,
    customers: HashMap<String, CustomerConsent>,
    buyers: HashMap<String, BuyerOrders>,
    shops: HashMap<String, ShopKpis>,
    /// (due, order entity key).
    timers: BTreeSet<(i64, String)>,
    markers: RedactionMarkers,
}

impl Partition {
    fn insert(&mut self, key: String, entity: Entity) {
        match entity {
            Entity::Order(order) => {
                for timer in &order.timers {
                    self.timers.insert((timer.due_ms, key.clone()));
                }
                self.orders.insert(key, order);
            }
            Entity::Customer(consent) => {
                self.customers.insert(key, consent);
            }
            Entity::Buyer(buyer) => {
                self.buyers.insert(key, buyer);
            }
            Entity::Shop(shop) => {
                if let Some(due) = shop.next_report_ms {
                    self.timers.insert((due, key.clone()));
                }
                self.shops.insert(key, shop);
            }
            Entity::Redaction(marker) => {
                self.markers.restore(&key, marker);
            }
        }
    }
}

pub struct Engine {
    rules: Rules,
    partitions: HashMap<i32, Partition>,
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

/// Whether a fact read at `offset` is one a record already holds, which was written through
/// `through`: the batch is being read again after a crash that kept that record's write.
fn read_again(offset: Option<i64>, through: Option<i64>) -> bool {
    matches!((offset, through), (Some(offset), Some(through)) if offset <= through)
}

/// The record key of an order's touchpoints: `<shop>/<order id>`, like its fulfilments.
fn output_key(shop: &str, order_id: u64) -> String {
    format!("{shop}/{order_id}")
}

impl Engine {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            partitions: HashMap::new(),
        }
    }

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

    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Orders and customers held, over every owned partition.
    pub fn sizes(&self) -> (usize, usize, usize) {
        self.partitions.values().fold((0, 0, 0), |(o, c, t), p| {
            (
                o + p.orders.len(),
                c + p.customers.len(),
                t + p.timers.len(),
            )
        })
    }

    /// When the next timer is due, over every owned partition.
    pub fn next_due(&self) -> Option<i64> {
        self.partitions
            .values()
            .filter_map(|p| p.timers.first().map(|(due, _)| *due))
            .min()
    }

    /// When the next order timer is due (shop reports left out).
    #[cfg(test)]
    fn order_due(&self) -> Option<i64> {
        self.partitions
            .values()
            .flat_map(|p| p.timers.iter())
            .filter(|(_, key)| key.starts_with("order/"))
            .map(|(due, _)| *due)
            .min()
    }

    /// Applies one fact of `shop` received at `at_ms`, with no input offset (tests, tools).
    pub fn apply(&mut self, partition: i32, shop: &str, input: Input, at_ms: i64) -> Vec<Effect> {
        self.apply_from(partition, shop, input, at_ms, None)
    }

    /// Applies one fact of `shop` received at `at_ms`, read at `offset` of the partition's
    /// input: a fact read again after a crash is not counted twice in the KPIs (see
    /// [`ShopKpis::tallied_through`]).
    pub fn apply_from(
        &mut self,
        partition: i32,
        shop: &str,
        input: Input,
        at_ms: i64,
        offset: Option<i64>,
    ) -> Vec<Effect> {
        if let Some(dropped) = self.drop_redacted(partition, shop, &input, at_ms) {
            return dropped;
        }
        let rules = &self.rules;
        let state = self.partitions.entry(partition).or_default();
        let mut effects = Vec::new();
        let mut step = Step {
            rules,
            state,
            shop,
            effects: &mut effects,
            offset,
        };
        match input {
            Input::Order(fact) => step.order(&fact, at_ms),
            Input::Refund {
                order_id,
                refund_id,
                amount,
                currency,
            } => step.refund(order_id, refund_id, amount, currency, at_ms),
            Input::Deleted { order_id } => {
                let key = order_entity(shop, order_id);
                let mut order = step.take(&key, order_id, at_ms);
                step.stop(&key, &mut order, Stop::Deleted);
                step.put(key, order);
            }
            Input::Shipment(fact) => step.shipment(&fact, at_ms),
            Input::Consent(ConsentChange {
                customer_id,
                subscribed,
                at_ms: stated,
            }) => {
                let key = customer_entity(shop, customer_id);
                let stated = stated.unwrap_or(at_ms);
                let known = step.state.customers.get(&key);
                if known.is_none_or(|k| k.at_ms <= stated) {
                    let consent = CustomerConsent {
                        subscribed,
                        at_ms: stated,
                    };
                    step.effects
                        .push(persist(&key, Entity::Customer(consent.clone())));
                    step.state.customers.insert(key, consent);
                }
            }
            Input::RedactCustomer {
                customer_id,
                email,
                phone,
                orders,
            } => step.redact_customer(
                (customer_id, email.as_deref(), phone.as_deref(), &orders),
                at_ms,
            ),
            Input::RedactShop => step.redact_shop(at_ms),
            Input::DataRequest(request) => step.data_request(&request, at_ms),
            Input::Invite(invite) => {
                step.tally(Fact::Invite, at_ms);
                step.relay(&invite, at_ms);
            }
            Input::Kpi(fact) => step.tally(fact, at_ms),
            Input::Ignored => {}
        }
        effects
    }

    /// Timed touchpoints that came due by `now_ms`.
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
                    offset: None,
                };
                step.fire(&key, now_ms);
                out.extend(effects.into_iter().map(|e| (*partition, e)));
            }
        }
        out
    }

    /// Forgets orders with nothing left to do, unseen for the retention, and redactions older
    /// than theirs.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        let mut out = Vec::new();
        let retention = self.rules.order_retention_ms;
        for (partition, state) in &mut self.partitions {
            for key in state
                .markers
                .expire(now_ms, self.rules.redaction_retention_ms)
            {
                out.push((*partition, tombstone(&key)));
            }
            let old: Vec<String> = state
                .orders
                .iter()
                .filter(|(_, o)| o.settled() && now_ms - o.last_seen_ms > retention)
                .map(|(k, _)| k.clone())
                .collect();
            for key in old {
                state.orders.remove(&key);
                out.push((*partition, tombstone(&key)));
            }
        }
        out
    }

    /// Brings the state up to date with a KPI record found after the checkpoint on restore.
    pub fn reconcile_report(&mut self, partition: i32, record: &KpiRecord) -> Vec<Effect> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let Some(start) = aftercart_shopify::time::parse_time_ms(&record.period_start) else {
            return Vec::new();
        };
        let key = shop_entity(&record.shop);
        let day = self.rules.kpis.day_of(&record.shop, start);
        let shop = state.shops.entry(key.clone()).or_default();
        if shop.days.reported.is_some_and(|r| r >= day) {
            return Vec::new();
        }
        shop.days.reported = Some(day);
        vec![persist(&key, Entity::Shop(shop.clone()))]
    }

    /// Brings the state up to date with a touchpoint found after the checkpoint on restore.
    pub fn reconcile(&mut self, partition: i32, emitted: &Touchpoint) -> Vec<Effect> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let key = order_entity(&emitted.shop, emitted.order.id);
        let Some(order) = state.orders.get_mut(&key) else {
            return Vec::new();
        };
        let marked = order.sent.insert(emitted.mark());
        let before = order.timers.len();
        order.timers.retain(|t| {
            !(t.kind == emitted.kind && t.product_id == emitted.product.as_ref().map(|p| p.id))
        });
        if marked || order.timers.len() != before {
            vec![persist(&key, Entity::Order(order.clone()))]
        } else {
            Vec::new()
        }
    }
}

/// One fact's work on one partition.
struct Step<'a> {
    rules: &'a Rules,
    state: &'a mut Partition,
    shop: &'a str,
    effects: &'a mut Vec<Effect>,
    /// The fact's offset in the partition's input; `None` for timers and tools.
    offset: Option<i64>,
}

impl Step<'_> {
    fn take(&mut self, key: &str, order_id: u64, at_ms: i64) -> OrderJourney {
        let mut order = self.state.orders.remove(key).unwrap_or_default();
        order.order_id = order_id;
        order.last_seen_ms = order.last_seen_ms.max(at_ms);
        order
    }

    fn put(&mut self, key: String, order: OrderJourney) {
        for timer in &order.timers {
            self.state.timers.insert((timer.due_ms, key.clone()));
        }
        self.effects
            .push(persist(&key, Entity::Order(order.clone())));
        self.state.orders.insert(key, order);
    }

    fn count(&mut self, counted: Counted) {
        self.effects.push(Effect::Count(counted));
    }

    fn order(&mut self, fact: &OrderFact, at_ms: i64) {
        let key = order_entity(self.shop, fact.id);
        let mut order = self.take(&key, fact.id, at_ms);
        // An update of an order created longer ago than orders are kept: one forgotten since
        // (or from before the journey ran) that the merchant archived or tagged, not a new one
        // to confirm or count. orders/create and orders/paid always announce a live order.
        let stale = !order.known
            && fact.updated_topic
            && fact
                .created_at
                .as_deref()
                .and_then(aftercart_shopify::time::parse_time_ms)
                .is_some_and(|created| {
                    at_ms.saturating_sub(created) > self.rules.order_retention_ms
                });
        if stale {
            order.sent.insert(mark(Kind::OrderConfirmed, None));
        } else if !order.known && !fact.test {
            self.count_order(fact, at_ms);
        }
        order.known = true;
        order.name = fact.name.clone().or(order.name);
        order.customer_id = fact
            .customer
            .as_ref()
            .and_then(|c| c.id)
            .or(order.customer_id);
        order.email = fact.email().map(str::to_string).or(order.email);
        order.first_name = fact
            .customer
            .as_ref()
            .and_then(|c| c.first_name.clone())
            .or(order.first_name);
        order.total = fact.total_price.clone().or(order.total);
        order.currency = fact.currency.clone().or(order.currency);
        order.test |= fact.test;
        order.created_ms = fact
            .created_at
            .as_deref()
            .and_then(aftercart_shopify::time::parse_time_ms)
            .or(order.created_ms)
            .or(Some(at_ms));
        if let Some((subscribed, stated)) = fact.consent() {
            let stated = stated.unwrap_or(at_ms);
            if order.consent.as_ref().is_none_or(|c| c.at_ms <= stated) {
                order.consent = Some(CustomerConsent {
                    subscribed,
                    at_ms: stated,
                });
            }
        }
        if order.bought.is_empty() {
            order.bought = fact
                .line_items
                .iter()
                .filter_map(|item| {
                    let product_id = item.product_id?;
                    self.rules
                        .replenish_every_ms
                        .contains_key(&product_id)
                        .then(|| Bought {
                            product_id,
                            title: item.title.clone(),
                            quantity: item.quantity.unwrap_or(1).max(1),
                        })
                })
                .collect();
        }
        if let Some(stop) = fact.stopped() {
            self.stop(&key, &mut order, stop);
        }
        if self.refunded_in_full(&order) {
            self.stop(&key, &mut order, Stop::Refunded);
        }
        if order.stopped.is_none() {
            let created = order.created_ms.unwrap_or(at_ms);
            self.send(&mut order, Kind::OrderConfirmed, None, None, created);
        }
        // Shipments that arrived before their order: tell where they stand now.
        let shipments: Vec<(u64, ProgressState)> = order
            .shipments
            .iter()
            .filter_map(|(id, s)| s.progress.map(|p| (*id, p)))
            .collect();
        for (fulfillment_id, progress) in shipments {
            let out = self.fulfillment_out(&order, fulfillment_id, progress.kind().as_str());
            self.send(&mut order, progress.kind(), Some(out), None, at_ms);
        }
        // And a problem no progress came after (told once: the mark names the status).
        let problems: Vec<(u64, String)> = order
            .shipments
            .iter()
            .filter_map(|(id, s)| s.problem.clone().map(|p| (*id, p)))
            .collect();
        for (fulfillment_id, status) in problems {
            let out = self.fulfillment_out(&order, fulfillment_id, &status);
            self.send(&mut order, Kind::DeliveryProblem, Some(out), None, at_ms);
        }
        if order.delivered_ms.is_some() && order.timers.is_empty() {
            self.schedule(&mut order);
        }
        self.put(key, order);
    }

    /// A new order counts towards the day: a repeat purchase when the customer ordered before.
    fn count_order(&mut self, fact: &OrderFact, at_ms: i64) {
        let customer = fact.customer.as_ref();
        let mut repeat = customer.and_then(|c| c.orders_count).is_some_and(|n| n > 1);
        if let Some(id) = customer.and_then(|c| c.id) {
            let key = buyer_entity(self.shop, id);
            let buyer = self.state.buyers.entry(key.clone()).or_default();
            let offset = self.offset;
            if read_again(offset, buyer.counted_through) {
                // Counted in a batch whose order record a crash lost: this order is in it, a
                // repeat if an earlier order was counted before it.
                repeat |= match (buyer.first_counted, offset) {
                    (Some(first), Some(offset)) => offset > first,
                    _ => buyer.orders > 1,
                };
            } else {
                repeat |= buyer.orders > 0;
                if buyer.first_counted.is_none() {
                    buyer.first_counted = if buyer.orders == 0 {
                        offset
                    } else {
                        offset.map(|_| i64::MIN)
                    };
                }
                buyer.orders = buyer.orders.saturating_add(1);
                buyer.counted_through = offset.or(buyer.counted_through);
                let entity = Entity::Buyer(buyer.clone());
                self.effects.push(persist(&key, entity));
            }
        }
        let value = fact
            .total_price
            .as_deref()
            .and_then(Amount::parse)
            .map(|a| (a, fact.currency.clone().unwrap_or_else(|| "XXX".into())));
        self.tally(Fact::Order { repeat, value }, at_ms);
    }

    fn refunded_in_full(&self, order: &OrderJourney) -> bool {
        // Refunds are in the customer's currency, the total in the shop's: when they differ
        // the amounts do not compare, and the order's `financial_status: refunded` tells.
        let comparable = match (&order.refund_currency, &order.currency) {
            (Some(refund), Some(total)) => refund.eq_ignore_ascii_case(total),
            _ => true,
        };
        if !comparable {
            return false;
        }
        match (
            order.total.as_deref().and_then(Amount::parse),
            order.refunded.as_deref().and_then(Amount::parse),
        ) {
            (Some(total), Some(refunded)) => total > Amount::ZERO && refunded >= total,
            _ => false,
        }
    }

    fn refund(
        &mut self,
        order_id: u64,
        refund_id: Option<u64>,
        amount: Amount,
        currency: Option<String>,
        at_ms: i64,
    ) {
        let key = order_entity(self.shop, order_id);
        let mut order = self.take(&key, order_id, at_ms);
        if refund_id.is_some_and(|id| !order.refunds.insert(id)) {
            // Counted already: a partial refund delivered twice is not a full refund.
            self.state.orders.insert(key, order);
            return;
        }
        let before = order
            .refunded
            .as_deref()
            .and_then(Amount::parse)
            .unwrap_or(Amount::ZERO);
        order.refunded = Some(before.saturating_add(amount).to_string());
        if currency.is_some() {
            order.refund_currency = currency;
        }
        if self.refunded_in_full(&order) {
            self.stop(&key, &mut order, Stop::Refunded);
        }
        self.put(key, order);
    }

    /// Cancels every timed touchpoint of the order, once.
    fn stop(&mut self, key: &str, order: &mut OrderJourney, stop: Stop) {
        if order.stopped.is_some() {
            return;
        }
        order.stopped = Some(stop);
        for timer in std::mem::take(&mut order.timers) {
            self.state.timers.remove(&(timer.due_ms, key.to_string()));
        }
        self.count(Counted::Stopped(stop));
    }

    fn shipment(&mut self, fact: &ShipmentFact, at_ms: i64) {
        let key = order_entity(self.shop, fact.order_id);
        let mut order = self.take(&key, fact.order_id, at_ms);
        let happened = fact.happened_ms.unwrap_or(at_ms);
        let advanced = {
            let shipment = order.shipments.entry(fact.fulfillment_id).or_default();
            for (known, new) in [
                (&mut shipment.tracking_company, &fact.tracking_company),
                (&mut shipment.tracking_number, &fact.tracking_number),
                (&mut shipment.tracking_url, &fact.tracking_url),
            ] {
                if new.is_some() {
                    known.clone_from(new);
                }
            }
            match &fact.shipment {
                Shipment::Progress(progress) => {
                    let progress = ProgressState::from(*progress);
                    let advanced = shipment.progress.is_none_or(|p| p.rank() < progress.rank());
                    if advanced {
                        shipment.progress = Some(progress);
                        shipment.problem = None;
                    }
                    advanced.then_some(progress)
                }
                Shipment::Problem => {
                    shipment.problem = Some(fact.status.clone());
                    None
                }
                Shipment::Quiet => None,
            }
        };
        if let Some(progress) = advanced {
            if progress == ProgressState::Delivered && order.delivered_ms.is_none() {
                order.delivered_ms = Some(happened);
                let after_seconds = order
                    .created_ms
                    .map(|created| (happened - created).max(0) as f64 / 1000.0);
                if let Some(seconds) = after_seconds {
                    self.count(Counted::DeliveredAfter { seconds });
                }
                self.tally(Fact::Delivered { after_seconds }, at_ms);
                self.schedule(&mut order);
            }
            let out = self.fulfillment_out(&order, fact.fulfillment_id, &fact.status);
            self.send(&mut order, progress.kind(), Some(out), None, happened);
        } else if fact.shipment == Shipment::Problem {
            let out = self.fulfillment_out(&order, fact.fulfillment_id, &fact.status);
            self.send(&mut order, Kind::DeliveryProblem, Some(out), None, happened);
        }
        self.put(key, order);
    }

    fn fulfillment_out(&self, order: &OrderJourney, id: u64, status: &str) -> FulfillmentOut {
        let shipment = order.shipments.get(&id).cloned().unwrap_or_default();
        FulfillmentOut {
            id,
            status: status.to_string(),
            tracking_company: shipment.tracking_company,
            tracking_number: shipment.tracking_number,
            tracking_url: shipment.tracking_url,
        }
    }

    /// The timed touchpoints of a delivered order.
    fn schedule(&mut self, order: &mut OrderJourney) {
        let Some(delivered) = order.delivered_ms else {
            return;
        };
        if order.stopped.is_some() || !order.known || order.test {
            return;
        }
        if let Some(after) = self.rules.review_after_ms {
            if !order.sent.contains(&mark(Kind::ReviewRequest, None)) {
                order.timers.insert(Timer {
                    due_ms: delivered + after,
                    kind: Kind::ReviewRequest,
                    product_id: None,
                });
            }
        }
        for bought in &order.bought {
            let Some(every) = self.rules.replenish_every_ms.get(&bought.product_id) else {
                continue;
            };
            let id = bought.product_id.to_string();
            if order
                .sent
                .contains(&mark(Kind::ReplenishmentReminder, Some(&id)))
            {
                continue;
            }
            let quantity = i64::try_from(bought.quantity).unwrap_or(i64::MAX);
            order.timers.insert(Timer {
                due_ms: delivered.saturating_add(every.saturating_mul(quantity)),
                kind: Kind::ReplenishmentReminder,
                product_id: Some(bought.product_id),
            });
        }
    }

    /// Whether the customer may get marketing now: their latest statement, on the customer
    /// record or on an order, decides.
    fn consents(&self, order: &OrderJourney) -> bool {
        let customer = order
            .customer_id
            .and_then(|id| self.state.customers.get(&customer_entity(self.shop, id)));
        let latest = match (customer, order.consent.as_ref()) {
            (Some(c), Some(o)) if o.at_ms > c.at_ms => Some(o),
            (Some(c), _) => Some(c),
            (None, o) => o,
        };
        latest.is_some_and(|c| c.subscribed)
    }

    /// Emits a touchpoint unless it is out already or may not be sent (counted).
    fn send(
        &mut self,
        order: &mut OrderJourney,
        kind: Kind,
        fulfillment: Option<FulfillmentOut>,
        product: Option<ProductOut>,
        occurred_ms: i64,
    ) {
        let touchpoint = Touchpoint {
            event_id: String::new(),
            kind,
            shop: self.shop.to_string(),
            occurred_at: rfc3339(occurred_ms),
            order: OrderOut {
                id: order.order_id,
                name: order.name.clone(),
                total: order.total.clone(),
                currency: order.currency.clone(),
            },
            customer: CustomerOut {
                id: order.customer_id,
                email: order.email.clone(),
                first_name: order.first_name.clone(),
            },
            fulfillment,
            product,
            referral: None,
        };
        self.emit(order, touchpoint);
    }

    fn emit(&mut self, order: &mut OrderJourney, mut touchpoint: Touchpoint) {
        let mark = touchpoint.mark();
        if order.sent.contains(&mark) || !order.known {
            // Not known: the order's own snapshot sends it when it comes.
            return;
        }
        let kind = touchpoint.kind;
        let skipped = if order.test {
            Some("test_order")
        } else if kind.is_marketing() && order.stopped.is_some() {
            Some("stopped")
        } else if order.email.is_none() {
            Some("no_contact")
        } else if kind.is_marketing() && !self.consents(order) {
            Some("no_consent")
        } else {
            None
        };
        order.sent.insert(mark.clone());
        if let Some(reason) = skipped {
            self.count(Counted::Skipped(kind, reason));
            return;
        }
        touchpoint.event_id = event_id(&format!("{}/{}/{mark}", self.shop, order.order_id));
        self.effects.push(Effect::Emit {
            key: output_key(self.shop, order.order_id),
            output: Box::new(touchpoint),
        });
    }

    fn fire(&mut self, key: &str, now_ms: i64) {
        if key.starts_with("shop/") {
            return self.report(key, now_ms);
        }
        let Some(mut order) = self.state.orders.remove(key) else {
            return;
        };
        let due: Vec<Timer> = order
            .timers
            .iter()
            .filter(|t| t.due_ms <= now_ms)
            .cloned()
            .collect();
        if due.is_empty() {
            self.state.orders.insert(key.to_string(), order);
            return;
        }
        for timer in due {
            order.timers.remove(&timer);
            let product = timer.product_id.map(|id| ProductOut {
                id,
                title: order
                    .bought
                    .iter()
                    .find(|b| b.product_id == id)
                    .and_then(|b| b.title.clone()),
            });
            self.send(&mut order, timer.kind, None, product, timer.due_ms);
        }
        self.put(key.to_string(), order);
    }

    /// Counts a fact towards the shop's day, and makes sure its next report is scheduled.
    fn tally(&mut self, fact: Fact, at_ms: i64) {
        let rules = &self.rules.kpis;
        let key = shop_entity(self.shop);
        let mut shop = self.state.shops.remove(&key).unwrap_or_default();
        if read_again(self.offset, shop.tallied_through) {
            self.state.shops.insert(key, shop);
            return;
        }
        shop.tallied_through = self.offset.or(shop.tallied_through);
        // A fact stamped in a day already reported (read just after its midnight) counts
        // towards the first day not reported yet: late, but in exactly one record.
        let open = shop.days.reported.map_or(i64::MIN, |r| r.saturating_add(1));
        let today = rules.day_of(self.shop, at_ms).max(open);
        shop.days.days.entry(today).or_default().count(&fact);
        self.effects.push(Effect::Count(Counted::Kpi(fact)));
        shop.days.prune(today);
        if shop.next_report_ms.is_none() {
            let due = rules.start_of(self.shop, today + 1);
            shop.next_report_ms = Some(due);
            self.state.timers.insert((due, key.clone()));
        }
        self.effects.push(persist(&key, Entity::Shop(shop.clone())));
        self.state.shops.insert(key, shop);
    }

    /// The daily KPI record of the day that just ended (once), then the next one scheduled
    /// while the shop had facts in the last week.
    fn report(&mut self, key: &str, now_ms: i64) {
        let Some(mut shop) = self.state.shops.remove(key) else {
            return;
        };
        let rules = &self.rules.kpis;
        let today = rules.day_of(self.shop, now_ms);
        let yesterday = today - 1;
        if shop.next_report_ms.is_some_and(|due| due > now_ms) {
            self.state.shops.insert(key.to_string(), shop);
            return;
        }
        shop.days.prune(today);
        if shop.days.reported.is_none_or(|r| r < yesterday) {
            let record = report(rules, self.shop, &shop.days, yesterday);
            shop.days.reported = Some(yesterday);
            self.effects.push(Effect::Report {
                key: self.shop.to_string(),
                record: Box::new(record),
            });
        }
        shop.next_report_ms = None;
        if !shop.days.days.is_empty() {
            let due = rules.start_of(self.shop, today + 1);
            shop.next_report_ms = Some(due);
            self.state.timers.insert((due, key.to_string()));
            self.effects.push(persist(key, Entity::Shop(shop.clone())));
            self.state.shops.insert(key.to_string(), shop);
        } else {
            self.effects.push(tombstone(key));
        }
    }

    fn relay(&mut self, fact: &InviteFact, at_ms: i64) {
        if !self.rules.relay_invites {
            return;
        }
        let invite = &fact.invite;
        let key = order_entity(self.shop, invite.order.id);
        let mut order = self.take(&key, invite.order.id, at_ms);
        if !order.known {
            // The invite names its order and advocate: enough to reach them.
            order.known = true;
            order.name = invite.order.name.clone();
            order.total = invite.order.value.clone();
            order.currency = invite.order.currency.clone();
            order.customer_id = invite.advocate.customer_id;
            order.email = invite.advocate.email.clone();
            order.first_name = invite.advocate.first_name.clone();
            // The referrals service invites only with consent.
            order.consent = Some(CustomerConsent {
                subscribed: true,
                at_ms: 0,
            });
        }
        let touchpoint = Touchpoint {
            event_id: String::new(),
            kind: Kind::ReferralInvitation,
            shop: self.shop.to_string(),
            occurred_at: invite.occurred_at.clone(),
            order: OrderOut {
                id: order.order_id,
                name: order.name.clone(),
                total: order.total.clone(),
                currency: order.currency.clone(),
            },
            customer: CustomerOut {
                id: invite.advocate.customer_id.or(order.customer_id),
                email: invite.advocate.email.clone().or(order.email.clone()),
                first_name: invite
                    .advocate
                    .first_name
                    .clone()
                    .or(order.first_name.clone()),
            },
            fulfillment: None,
            product: None,
            referral: Some(ReferralOut {
                code: invite.referral_code.clone(),
                share_url: invite.share_url.clone(),
            }),
        };
        self.emit(&mut order, touchpoint);
        self.put(key, order);
    }

    fn forget_order(&mut self, key: &str) {
        if let Some(order) = self.state.orders.remove(key) {
            for timer in &order.timers {
                self.state.timers.remove(&(timer.due_ms, key.to_string()));
            }
            self.effects.push(tombstone(key));
        }
    }

    /// `shop/redact`: forgets everything of the shop and remembers the redaction.
    fn redact_shop(&mut self, at_ms: i64) {
        let marked = self.state.markers.mark(self.shop, &[], true, at_ms);
        self.effects.extend(redaction::remember(marked));
        let orders = format!("order/{}/", self.shop);
        let customers = format!("customer/{}/", self.shop);
        let doomed: Vec<String> = self
            .state
            .orders
            .keys()
            .filter(|k| k.starts_with(&orders))
            .cloned()
            .collect();
        for key in doomed {
            self.forget_order(&key);
        }
        let doomed: Vec<String> = self
            .state
            .customers
            .keys()
            .filter(|k| k.starts_with(&customers))
            .cloned()
            .collect();
        for key in doomed {
            self.state.customers.remove(&key);
            self.effects.push(tombstone(&key));
        }
        let buyers = format!("buyer/{}/", self.shop);
        let doomed: Vec<String> = self
            .state
            .buyers
            .keys()
            .filter(|k| k.starts_with(&buyers))
            .cloned()
            .collect();
        for key in doomed {
            self.state.buyers.remove(&key);
            self.effects.push(tombstone(&key));
        }
        let key = shop_entity(self.shop);
        if let Some(shop) = self.state.shops.remove(&key) {
            if let Some(due) = shop.next_report_ms {
                self.state.timers.remove(&(due, key.clone()));
            }
            self.effects.push(tombstone(&key));
        }
    }
}

mod redaction;
mod report;
#[cfg(test)]
mod tests;

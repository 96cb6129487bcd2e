//! Realistic Shopify traffic: journeys of cart → checkout → order built from Shopify's sample
//! payloads, with fresh tokens and ids, bodies grown from the sample's size up to a limit, each
//! signed once up front so the generator spends its CPU on sending, not on HMAC.
//!
//! Every id in a journey (tokens, order, customer, event id) is derived from the run id and the
//! journey's number, so a run's journeys never collide with each other's or another run's, and a
//! checker can count outputs against them. Past the pool, journeys are built on demand for
//! `live_orders` (fresh ids: a replay would repeat orders the consumers already acted on), or
//! replayed as they are otherwise (the ingress benchmarks only need fresh webhook ids).

use std::borrow::Cow;

use aftercart_shopify::{sign, Secret};
use bytes::Bytes;
use serde_json::{json, Value};

const CART: &[u8] = include_bytes!("../../../fixtures/shopify/carts_update.json");
const CHECKOUT: &[u8] = include_bytes!("../../../fixtures/shopify/checkouts_create.json");
const ORDER: &[u8] = include_bytes!("../../../fixtures/shopify/orders_create.json");

/// What the pool of deliveries is made of.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// Journeys in the pool; the pool is replayed (with fresh webhook ids) when exhausted.
    pub journeys: usize,
    /// Distinct shop domains the journeys are spread over.
    pub shops: usize,
    /// Largest body, in bytes: each body is grown to a size drawn between the sample's compact
    /// size and this.
    pub max_body_bytes: usize,
    /// Share of journeys that end in an order (the others are abandoned checkouts).
    pub completed_share: f64,
    /// The secret the ingress verifies with.
    pub secret: String,
    /// Seed, so that the same options give the same bodies (the micro-benchmarks rely on it).
    pub seed: u64,
    /// Orders as a live shop sends them (not `test`; `pending` when created, `paid` in
    /// `orders/paid`) and buyers who accept marketing, so that the consumer services act on
    /// them (referral invites, audience memberships). Off, the samples' own values are kept (a
    /// voided test order, a checkout without consent).
    pub live_orders: bool,
    /// Part of every id a journey carries, so two runs against one pipeline never share one.
    pub run_id: u32,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        Self {
            journeys: 1000,
            shops: 50,
            max_body_bytes: 15 * 1024,
            completed_share: 0.7,
            secret: "aftercart-dev-secret".into(),
            seed: 42,
            live_orders: false,
            run_id: 0,
        }
    }
}

/// One signed webhook, ready to send any number of times.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: &'static str,
    pub shop: String,
    pub body: Bytes,
    /// base64(HMAC-SHA256(secret, body)).
    pub signature: String,
    /// A well-formed signature made with another secret: the ingress must answer 401.
    pub bad_signature: String,
    /// `X-Shopify-Triggered-At` and the event id, as Shopify sends them.
    pub triggered_at: String,
    pub event_id: String,
    /// The journey's number in the run (0, 1, …; past the pool, counting on).
    pub journey: u64,
    /// The delivery's place in its journey: 0 (the cart) starts it.
    pub step: usize,
    /// Whether the journey ends in an order; without one its checkout is abandoned.
    pub completed: bool,
}

/// Journey steps: the first three always, the orders only for completed journeys.
const STEPS: [&str; 5] = [
    "carts/update",
    "checkouts/create",
    "checkouts/update",
    "orders/create",
    "orders/paid",
];

/// The deliveries, in journey order.
#[derive(Debug, Clone)]
pub struct Pool {
    pub deliveries: Vec<Delivery>,
    builder: Builder,
}

impl Pool {
    pub fn build(options: &TrafficOptions) -> Pool {
        let builder = Builder {
            options: options.clone(),
            templates: Templates::parse(options.live_orders),
            secret: Secret::new(options.secret.clone()),
            wrong: Secret::new(format!("not-{}", options.secret)),
        };
        let mut deliveries = Vec::with_capacity(options.journeys * 5);
        for journey in 0..options.journeys as u64 {
            let completed = builder.completed(journey);
            let steps = if completed { 5 } else { 3 };
            deliveries.extend((0..steps).map(|step| builder.delivery(journey, step, completed)));
        }
        Pool {
            deliveries,
            builder,
        }
    }

    /// The `index`-th delivery of the run. Past the pool, the same layout again, with the
    /// journeys numbered on (`live_orders`: built now, new ids) or replayed (otherwise).
    pub fn delivery(&self, index: u64) -> Cow<'_, Delivery> {
        let len = self.deliveries.len() as u64;
        let slot = &self.deliveries[(index % len) as usize];
        if index < len || !self.builder.options.live_orders {
            return Cow::Borrowed(slot);
        }
        let journey = index / len * self.builder.options.journeys as u64 + slot.journey;
        // The slot's journey shape (with or without an order) carries over.
        Cow::Owned(self.builder.delivery(journey, slot.step, slot.completed))
    }

    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// Mean body size, for the report (and to compare with the micro-benchmark floor).
    pub fn mean_body_bytes(&self) -> f64 {
        let total: usize = self.deliveries.iter().map(|d| d.body.len()).sum();
        total as f64 / self.deliveries.len().max(1) as f64
    }
}

/// What builds any delivery of the run, in the pool or past it.
#[derive(Debug, Clone)]
struct Builder {
    options: TrafficOptions,
    templates: Templates,
    secret: Secret,
    wrong: Secret,
}

impl Builder {
    /// Whether `journey` of the pool ends in an order.
    fn completed(&self, journey: u64) -> bool {
        let mut rng = fastrand::Rng::with_seed(self.options.seed ^ mix(journey));
        rng.f64() < self.options.completed_share
    }

    fn delivery(&self, journey: u64, step: usize, completed: bool) -> Delivery {
        let options = &self.options;
        let ids = JourneyIds::new(options.run_id, journey);
        let mut value = match step {
            0 => self.templates.cart(&ids),
            1 | 2 => self.templates.checkout(&ids, step as u32 - 1),
            3 => self.templates.order(&ids, "pending"),
            _ => self.templates.order(&ids, "paid"),
        };
        // Sizes drawn per step, so any step is built alone the same way.
        let mut rng = fastrand::Rng::with_seed(options.seed ^ mix(journey * 8 + step as u64));
        let body = grown(&mut value, options.max_body_bytes, &mut rng);
        Delivery {
            topic: STEPS[step],
            shop: format!(
                "loadgen-{:03}.myshopify.com",
                journey % options.shops.max(1) as u64
            ),
            signature: sign(&self.secret, &body),
            bad_signature: sign(&self.wrong, &body),
            body: Bytes::from(body),
            triggered_at: format!("2026-11-23T10:{:02}:{:02}Z", journey % 60, step * 7),
            event_id: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                options.run_id,
                (journey >> 24) & 0xffff,
                (journey >> 12) & 0xfff,
                journey & 0xfff,
                step
            ),
            journey,
            step,
            completed,
        }
    }
}

/// A well-mixed 64-bit hash (splitmix64), so draws are reproducible from a number alone.
pub(crate) fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ids one purchase shares across its webhooks: the run id in the high bits, the journey's
/// number in the low 28, so they are distinct within a run (up to 2^28 journeys) and between
/// runs with different run ids.
struct JourneyIds {
    cart_token: String,
    checkout_token: String,
    order_id: u64,
    customer_id: u64,
    email: String,
}

impl JourneyIds {
    fn new(run_id: u32, journey: u64) -> Self {
        let unique = (u64::from(run_id) << 28) | (journey & ((1 << 28) - 1));
        // Shopify ids are above 2^53: keep them there so float-decoding bugs show.
        let customer_id = (1 << 61) | unique;
        Self {
            cart_token: format!("{run_id:08x}0000000a{journey:016x}"),
            checkout_token: format!("{run_id:08x}0000000b{journey:016x}"),
            order_id: (1 << 53) | unique,
            customer_id,
            email: format!("buyer{customer_id}@example.com"),
        }
    }
}

#[derive(Debug, Clone)]
struct Templates {
    cart: Value,
    checkout: Value,
    order: Value,
    live_orders: bool,
}

impl Templates {
    fn parse(live_orders: bool) -> Self {
        let parse = |bytes: &[u8]| serde_json::from_slice(bytes).expect("the fixtures are JSON");
        let mut templates = Self {
            cart: parse(CART),
            checkout: parse(CHECKOUT),
            order: parse(ORDER),
            live_orders,
        };
        if live_orders {
            // Recent, as a live order is: audiences keep only purchases within their window.
            let now =
                json!(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
            for field in ["created_at", "processed_at", "updated_at"] {
                set(&mut templates.order, field, now.clone());
            }
            set(
                &mut templates.checkout,
                "buyer_accepts_marketing",
                json!(true),
            );
            set(&mut templates.order, "buyer_accepts_marketing", json!(true));
            set(&mut templates.order, "test", json!(false));
        }
        templates
    }

    fn cart(&self, ids: &JourneyIds) -> Value {
        let mut cart = self.cart.clone();
        set(&mut cart, "id", json!(ids.cart_token));
        set(&mut cart, "token", json!(ids.cart_token));
        cart
    }

    fn checkout(&self, ids: &JourneyIds, update: u32) -> Value {
        let mut checkout = self.checkout.clone();
        set(&mut checkout, "token", json!(ids.checkout_token));
        set(&mut checkout, "cart_token", json!(ids.cart_token));
        set(&mut checkout, "email", json!(ids.email));
        set(&mut checkout, "completed_at", Value::Null);
        set(
            &mut checkout,
            "updated_at",
            json!(format!("2026-11-23T10:0{update}:00Z")),
        );
        if let Some(customer) = checkout.get_mut("customer") {
            set(customer, "id", json!(ids.customer_id));
            set(customer, "email", json!(ids.email));
        }
        checkout
    }

    /// The journey's order; `financial_status` is set only for live orders.
    fn order(&self, ids: &JourneyIds, financial_status: &str) -> Value {
        let mut order = self.order.clone();
        if self.live_orders {
            set(&mut order, "financial_status", json!(financial_status));
        }
        set(&mut order, "id", json!(ids.order_id));
        set(&mut order, "checkout_token", json!(ids.checkout_token));
        set(&mut order, "cart_token", json!(ids.cart_token));
        set(&mut order, "email", json!(ids.email));
        set(&mut order, "cancelled_at", Value::Null);
        if let Some(customer) = order.get_mut("customer") {
            set(customer, "id", json!(ids.customer_id));
            set(customer, "email", json!(ids.email));
        }
        order
    }
}

fn set(value: &mut Value, field: &str, to: Value) {
    if let Some(object) = value.as_object_mut() {
        object.insert(field.to_string(), to);
    }
}

/// Compact JSON of `value`, grown by repeating its line items towards a size drawn between its
/// own size and `max_bytes` (bigger carts are bigger bodies, as in real traffic).
fn grown(value: &mut Value, max_bytes: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let base = serde_json::to_vec(value).expect("a Value serialises");
    let Some(items) = value
        .get("line_items")
        .and_then(Value::as_array)
        .filter(|items| !items.is_empty())
        .cloned()
    else {
        return base;
    };
    if base.len() >= max_bytes {
        return base;
    }
    let target = rng.usize(base.len()..=max_bytes);
    let item_bytes = items
        .iter()
        .map(|item| serde_json::to_vec(item).map_or(0, |v| v.len()) + 1)
        .sum::<usize>()
        / items.len();
    let extra = (target - base.len()) / item_bytes.max(1);
    if let Some(list) = value.get_mut("line_items").and_then(Value::as_array_mut) {
        list.extend(items.iter().cycle().take(extra).cloned());
    }
    serde_json::to_vec(value).expect("a Value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_pool() -> Pool {
        Pool::build(&TrafficOptions {
            journeys: 40,
            ..TrafficOptions::default()
        })
    }

    #[test]
    fn every_body_is_json_within_the_size_limit() {
        for delivery in small_pool().deliveries {
            assert!(
                delivery.body.len() <= 15 * 1024 + 2048,
                "{}",
                delivery.body.len()
            );
            let _: Value = serde_json::from_slice(&delivery.body).unwrap();
        }
    }

    #[test]
    fn a_journey_shares_its_cart_token_from_cart_to_order() {
        let pool = small_pool();
        let cart: Value = serde_json::from_slice(&pool.deliveries[0].body).unwrap();
        let checkout: Value = serde_json::from_slice(&pool.deliveries[1].body).unwrap();
        assert_eq!(pool.deliveries[0].topic, "carts/update");
        assert_eq!(cart["token"], checkout["cart_token"]);
    }

    #[test]
    fn signatures_verify_with_the_secret_and_bad_ones_do_not() {
        let pool = small_pool();
        let verifier = aftercart_shopify::Verifier::new(
            vec![Secret::new("aftercart-dev-secret")],
            Default::default(),
        );
        let d = &pool.deliveries[3];
        assert!(verifier
            .verify(None, Some(d.signature.as_bytes()), &d.body)
            .is_ok());
        assert!(verifier
            .verify(None, Some(d.bad_signature.as_bytes()), &d.body)
            .is_err());
    }

    #[test]
    fn live_orders_are_paid_real_orders_from_buyers_who_accept_marketing() {
        let pool = Pool::build(&TrafficOptions {
            journeys: 40,
            live_orders: true,
            ..TrafficOptions::default()
        });
        let body = |topic: &str| -> Value {
            let d = pool.deliveries.iter().find(|d| d.topic == topic).unwrap();
            serde_json::from_slice(&d.body).unwrap()
        };
        let (created, paid) = (body("orders/create"), body("orders/paid"));
        assert_eq!(created["financial_status"], "pending");
        assert_eq!(paid["financial_status"], "paid");
        assert_eq!(paid["test"], false);
        assert_eq!(paid["buyer_accepts_marketing"], true);
        let processed = paid["processed_at"].as_str().unwrap();
        let age = humantime::parse_rfc3339(processed)
            .unwrap()
            .elapsed()
            .unwrap();
        assert!(age.as_secs() < 600, "{processed}");
        assert_eq!(body("checkouts/update")["buyer_accepts_marketing"], true);
    }

    #[test]
    fn without_live_orders_the_samples_values_are_kept() {
        let order = small_pool()
            .deliveries
            .into_iter()
            .find(|d| d.topic == "orders/paid")
            .unwrap();
        let order: Value = serde_json::from_slice(&order.body).unwrap();
        assert_eq!(order["test"], true);
        assert_eq!(order["financial_status"], "voided");
    }

    fn ids(delivery: &Delivery) -> (String, String) {
        let body: Value = serde_json::from_slice(&delivery.body).unwrap();
        let id = body.get("id").map(Value::to_string).unwrap_or_default();
        // A cart's own token is its cart token.
        let cart = body.get("cart_token").or(body.get("token"));
        (id, cart.map(Value::to_string).unwrap_or_default())
    }

    #[test]
    fn live_journeys_past_the_pool_are_new_and_keep_the_pools_layout() {
        let pool = Pool::build(&TrafficOptions {
            journeys: 10,
            live_orders: true,
            ..TrafficOptions::default()
        });
        let len = pool.len() as u64;
        let mut orders = std::collections::BTreeSet::new();
        let mut carts = std::collections::BTreeSet::new();
        for index in 0..3 * len {
            let (slot, d) = (
                &pool.deliveries[(index % len) as usize],
                pool.delivery(index),
            );
            assert_eq!(
                (d.topic, d.step, d.completed),
                (slot.topic, slot.step, slot.completed)
            );
            assert_eq!(d.journey, index / len * 10 + slot.journey);
            let (id, cart) = ids(&d);
            if d.topic == "orders/paid" {
                assert!(orders.insert(id), "order repeated at {index}");
            }
            if d.step == 0 {
                assert!(carts.insert(cart), "cart repeated at {index}");
            }
        }
        assert_eq!(carts.len(), 30);
        assert!(!orders.is_empty());
    }

    #[test]
    fn without_live_orders_the_pool_is_replayed() {
        let pool = small_pool();
        let len = pool.len() as u64;
        assert_eq!(pool.delivery(len + 3).body, pool.deliveries[3].body);
    }

    #[test]
    fn two_run_ids_share_no_journey_id() {
        let build = |run_id| {
            Pool::build(&TrafficOptions {
                journeys: 20,
                live_orders: true,
                run_id,
                ..TrafficOptions::default()
            })
        };
        let (a, b) = (build(1), build(2));
        let all = |pool: &Pool| -> std::collections::BTreeSet<String> {
            pool.deliveries
                .iter()
                .flat_map(|d| {
                    let (id, cart) = ids(d);
                    [id, cart, d.event_id.clone()]
                })
                .filter(|id| !id.is_empty() && id != "null")
                .collect()
        };
        assert!(all(&a).is_disjoint(&all(&b)));
    }

    #[test]
    fn the_same_seed_builds_the_same_pool() {
        let (a, b) = (small_pool(), small_pool());
        assert_eq!(a.deliveries[7].body, b.deliveries[7].body);
    }
}

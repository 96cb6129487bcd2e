//! Fuzz target: a short sequence of arbitrary Kafka records through the abandonment service's
//! per-record logic, as its poll loop runs it: decode by family (journey topics need a UTF-8
//! key), apply to a fresh engine, fire timers, expire; every output and changelog value must
//! serialise, and the changelog must read back equal and restore into a new engine.
//!
//! Input: records as described in `aftercart_fuzz::Record`; the family is `checkouts`, `carts`,
//! `orders`, `customers` or `compliance` (anything else is a topic the service never reads).

#![no_main]

use std::collections::HashMap;

use aftercart_abandonment::domain::engine::{Effect, Engine, Rules};
use aftercart_abandonment::domain::event::EmittedEvent;
use aftercart_abandonment::domain::input::{global_input, journey_input, PoisonRecord};
use aftercart_abandonment::domain::journey::Journey;
use aftercart_abandonment::domain::money::Amount;
use aftercart_abandonment::domain::segments::SegmentRules;
use aftercart_fuzz::{records, round_trip, Record, BASE_MS};
use aftercart_kafka::{header, shop_of};
use libfuzzer_sys::fuzz_target;
use rdkafka::message::Message;

const MIN: i64 = 60_000;
const DAY: i64 = 24 * 60 * MIN;

fn rules() -> Rules {
    Rules {
        abandon_after_ms: 60 * MIN,
        cart_abandon_after_ms: 30 * MIN,
        retention_ms: 30 * DAY,
        uninstall_grace_ms: 2 * DAY,
        recovery_marker: "/recover".into(),
        transactional_reminders: false,
        segments: SegmentRules {
            value_medium: Amount::parse("50").expect("decimal"),
            value_high: Amount::parse("200").expect("decimal"),
            fence_sitter_visits: 3,
            fence_sitter_span_ms: DAY,
            repeat_window_ms: 30 * DAY,
        },
    }
}

/// Checks what the I/O layer would write and remembers the latest changelog per key.
fn settle(
    engine: &mut Engine,
    effects: Vec<(i32, Effect)>,
    changelog: &mut HashMap<String, Option<Journey>>,
) {
    for (partition, effect) in effects {
        match effect {
            Effect::Emit { event, .. } => {
                let bytes = serde_json::to_vec(&event).expect("events serialise");
                let emitted: EmittedEvent = serde_json::from_slice(&bytes).expect("reads back");
                // A restore finds the event in the output topic: reconciling is harmless.
                let _ = engine.reconcile(partition, &emitted);
            }
            Effect::Persist { key, journey } => {
                let journey = journey.map(|j| round_trip(j.as_ref()));
                changelog.insert(key, journey);
            }
            // Consent copies are customer facts, not journeys: the restore below reads journeys.
            Effect::Consent { .. } => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(rules());
    engine.assign(0, Vec::new());
    engine.assign(1, Vec::new());
    let mut changelog = HashMap::new();
    let mut now = BASE_MS;
    for (offset, bytes) in records(data).enumerate() {
        let record = Record::parse(bytes, now);
        now = now.max(record.at_ms);
        let partition = i32::from(record.key.is_some_and(|k| k.len() % 2 == 1));
        let message = record.message(
            &format!("shopify.{}", record.family),
            partition,
            offset as i64,
        );
        let topic = header(&message, "shopify-topic");
        let body = message.payload().unwrap_or_default();
        let shop = shop_of(&message);
        let effects = match record.family.as_str() {
            "checkouts" | "carts" | "orders" => {
                let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
                let decoded = match key {
                    None => Err(PoisonRecord::Impossible("record without a UTF-8 key")),
                    Some(_) => journey_input(topic, body),
                };
                match (decoded, key) {
                    (Ok(input), Some(key)) => engine
                        .apply(partition, key, &shop, input, record.at_ms)
                        .into_iter()
                        .map(|e| (partition, e))
                        .collect(),
                    (Err(error), _) => {
                        let _ = (error.as_label(), error.to_string());
                        Vec::new()
                    }
                    (Ok(_), None) => unreachable!("decoded only with a key"),
                }
            }
            "customers" | "compliance" => match global_input(topic, body) {
                Ok(input) => engine.apply_global(&shop, input, record.at_ms),
                Err(error) => {
                    let _ = (error.as_label(), error.to_string());
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        settle(&mut engine, effects, &mut changelog);
        let due = engine.fire_due(now);
        settle(&mut engine, due, &mut changelog);
    }
    // Let every timer fire, then let everything expire.
    for later in [now + DAY, now + 40 * DAY] {
        let due = engine.fire_due(later);
        settle(&mut engine, due, &mut changelog);
        let expired = engine.expire(later);
        settle(&mut engine, expired, &mut changelog);
    }

    // What the changelog holds restores into a fresh engine, which keeps working.
    let mut restored = Engine::new(rules());
    let journeys = changelog
        .into_iter()
        .filter_map(|(key, journey)| journey.map(|j| (key, j)));
    let _ = restored.assign(0, journeys);
    let _ = restored.fire_due(now + 41 * DAY);
    let _ = restored.expire(now + 80 * DAY);
});

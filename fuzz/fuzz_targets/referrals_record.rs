//! Fuzz target: a short sequence of arbitrary by-shop records through the referrals service's
//! per-record logic (`Referrals::apply` minus its Kafka clients): decode by Shopify topic,
//! apply to a fresh engine, fire review and invite timers, expire; every output must serialise
//! and every changelog value read back equal and restore into a new engine.
//!
//! Input: records as described in `aftercart_fuzz::Record` (the family field is unused: the
//! by-shop topic carries every source family).

#![no_main]

use std::collections::HashMap;

use aftercart_fuzz::{records, round_trip, Record, BASE_MS};
use aftercart_kafka::{header, shop_of};
use aftercart_referrals::domain::code::{CodeRules, Source};
use aftercart_referrals::domain::engine::{Effect, Engine, Rules, Trigger};
use aftercart_referrals::domain::event::EmittedEvent;
use aftercart_referrals::domain::input::{decode_input, is_relevant};
use aftercart_referrals::domain::state::Entity;
use aftercart_shopify::money::Amount;
use libfuzzer_sys::fuzz_target;
use rdkafka::message::Message;

const DAY: i64 = 86_400_000;

fn rules() -> Rules {
    Rules {
        codes: CodeRules {
            secret: b"fuzz-secret".to_vec(),
            prefix: "REF-".into(),
            sources: vec![
                Source::DiscountCode,
                Source::LandingSite,
                Source::NoteAttribute,
            ],
            url_parameter: "ref".into(),
            note_attributes: vec!["ref".into(), "referral_code".into()],
            share_url: "https://{shop}/?ref={code}".into(),
        },
        trigger: Trigger::Paid,
        invite_delay_ms: 0,
        invite_min_value: Amount::parse("0").expect("decimal"),
        cooldown_ms: 90 * DAY,
        reward_min_value: Amount::parse("20").expect("decimal"),
        review_window_ms: 30 * DAY,
        ip_burst_max: 3,
        ip_burst_window_ms: DAY,
        order_retention_ms: 60 * DAY,
        redaction_retention_ms: 400 * DAY,
        hasher: aftercart_runtime::state_hash::StateHasher::new("fuzz-state-hash-key")
            .expect("a valid key"),
    }
}

fn settle(
    engine: &mut Engine,
    effects: Vec<(i32, Effect)>,
    changelog: &mut HashMap<String, Option<Entity>>,
) {
    for (partition, effect) in effects {
        match effect {
            Effect::Emit { output, .. } => {
                let bytes = serde_json::to_vec(&output).expect("outputs serialise");
                if let Ok(emitted) = serde_json::from_slice::<EmittedEvent>(&bytes) {
                    let _ = engine.reconcile(partition, &emitted);
                }
            }
            Effect::Persist { key, entity } => {
                let entity = entity.map(|e| round_trip(e.as_ref()));
                changelog.insert(key, entity);
            }
            Effect::Count(_) => {}
        }
    }
}

fn at(partition: i32, effects: Vec<Effect>) -> Vec<(i32, Effect)> {
    effects.into_iter().map(|e| (partition, e)).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(rules());
    engine.assign(0, HashMap::new());
    let mut changelog = HashMap::new();
    let mut now = BASE_MS;
    for (offset, bytes) in records(data).enumerate() {
        let record = Record::parse(bytes, now);
        now = now.max(record.at_ms);
        let message = record.message("aftercart.referrals-by-shop", 0, offset as i64);
        let topic = header(&message, "shopify-topic");
        let _ = topic.map(is_relevant);
        match decode_input(topic, message.payload().unwrap_or_default()) {
            Ok(input) => {
                let shop = shop_of(&message);
                let effects = engine.apply(0, &shop, input, record.at_ms);
                settle(&mut engine, at(0, effects), &mut changelog);
            }
            Err(error) => {
                let _ = (error.as_label(), error.to_string());
            }
        }
        let due = engine.fire_due(now);
        settle(&mut engine, due, &mut changelog);
    }
    for later in [now + DAY, now + 31 * DAY, now + 120 * DAY] {
        let due = engine.fire_due(later);
        settle(&mut engine, due, &mut changelog);
        let expired = engine.expire(later);
        settle(&mut engine, expired, &mut changelog);
    }
    let _ = engine.sizes();

    let mut restored = Engine::new(rules());
    let entities: HashMap<String, Entity> = changelog
        .into_iter()
        .filter_map(|(key, entity)| entity.map(|e| (key, e)))
        .collect();
    restored.assign(0, entities);
    let _ = restored.fire_due(now + 200 * DAY);
    let _ = restored.expire(now + 300 * DAY);
});

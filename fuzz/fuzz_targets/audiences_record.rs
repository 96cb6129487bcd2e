//! Fuzz target: a short sequence of arbitrary by-shop records through the audiences service's
//! per-record logic (`Audiences::apply` minus its Kafka clients): the family from the
//! `aftercart-source` header, decode, apply to a fresh engine with every platform codec as a
//! destination, tick and flush; every batch must be well formed, serialise and read back equal,
//! and every person too.
//!
//! Input: records as described in `aftercart_fuzz::Record` (the family field is unused: the
//! source family is the `aftercart-source` header, as on the real by-shop topic).

#![no_main]

use std::collections::HashMap;

use aftercart_audiences::domain::audience::{
    AbandonmentFilter, Audience, CustomerFilter, OrderFilter, Source,
};
use aftercart_audiences::domain::engine::{Effect, Engine, Rules};
use aftercart_audiences::domain::input::{decode_input, is_relevant};
use aftercart_audiences::domain::person::Person;
use aftercart_audiences::platform::Platform;
use aftercart_fuzz::{records, round_trip, Record, BASE_MS};
use aftercart_kafka::stage::source_family;
use aftercart_kafka::{header, shop_of};
use libfuzzer_sys::fuzz_target;
use rdkafka::message::Message;

const DAY: i64 = 86_400_000;
const FAMILIES: [&str; 4] = ["abandonments", "orders", "customers", "compliance"];

fn audience(name: &str, source: Source, window_ms: Option<i64>, leave: bool) -> Audience {
    Audience {
        name: name.into(),
        source,
        window_ms,
        leave_on_purchase: leave,
        destinations: vec![
            "meta".into(),
            "google".into(),
            "tiktok".into(),
            "files".into(),
        ],
        shops: vec![],
    }
}

fn rules() -> Rules {
    Rules {
        audiences: vec![
            audience(
                "abandoned-checkouts",
                Source::Abandonments(AbandonmentFilter::default()),
                Some(30 * DAY),
                true,
            ),
            audience(
                "recent-purchasers",
                Source::Orders(OrderFilter::default()),
                Some(30 * DAY),
                false,
            ),
            audience(
                "customers",
                Source::Customers(CustomerFilter::default()),
                None,
                false,
            ),
        ],
        destinations: [
            ("meta".to_string(), Platform::Meta),
            ("google".to_string(), Platform::Google),
            ("tiktok".to_string(), Platform::Tiktok),
            ("files".to_string(), Platform::Plain),
        ]
        .into(),
        flush_interval_ms: 1_000,
        // Small batches, so chunking is exercised by a handful of people.
        batch_rows: 2,
        person_retention_ms: 90 * DAY,
        redaction_retention_ms: 400 * DAY,
        removal_reemit_after_ms: DAY,
        // The Google destination reads consent through the default mapping.
        google_consent: [(
            "google".to_string(),
            aftercart_audiences::domain::consent::ConsentMapping::default(),
        )]
        .into_iter()
        .collect(),
    }
}

fn settle(
    engine: &mut Engine,
    effects: Vec<(i32, Effect)>,
    changelog: &mut HashMap<String, Option<Person>>,
) {
    for (partition, effect) in effects {
        match effect {
            Effect::Emit { batch, .. } => {
                assert!(batch.is_well_formed(), "{batch:?}");
                let batch = round_trip(batch.as_ref());
                // A restore finds the batch in the output topic: reconciling is harmless.
                let _ = engine.reconcile(partition, &batch);
            }
            Effect::Persist { key, person } => {
                let person = person.map(|p| {
                    // Written marks count this process's confirmation rounds and are never
                    // stored (`#[serde(skip)]`): a restore reads the person back without them.
                    let mut stored = p.as_ref().clone();
                    for removal in &mut stored.pending_removals {
                        removal.written_mark = None;
                    }
                    round_trip(&stored)
                });
                changelog.insert(key, person);
            }
            Effect::Report { report, .. } => {
                assert_eq!(report.service, "audiences");
            }
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
        let message = record.message("aftercart.audiences-by-shop", 0, offset as i64);
        let family = source_family(&message, &FAMILIES);
        let topic = header(&message, "shopify-topic");
        let _ = is_relevant(family, topic);
        let body = message.payload().unwrap_or_default();
        match decode_input(family, topic, body, record.at_ms) {
            Ok(input) => {
                let shop = shop_of(&message);
                let effects = engine.apply(0, &shop, input, now);
                settle(&mut engine, at(0, effects), &mut changelog);
            }
            Err(error) => {
                let _ = (error.as_label(), error.to_string());
            }
        }
        let ticked = engine.tick(now + 2_000);
        settle(&mut engine, ticked, &mut changelog);
    }
    for later in [now + DAY, now + 31 * DAY, now + 200 * DAY] {
        let flushed = engine.flush(0, later);
        settle(&mut engine, at(0, flushed), &mut changelog);
        let ticked = engine.tick(later);
        settle(&mut engine, ticked, &mut changelog);
    }
    let _ = (engine.members(), engine.people());

    let mut restored = Engine::new(rules());
    let people: HashMap<String, Person> = changelog
        .into_iter()
        .filter_map(|(key, person)| person.map(|p| (key, p)))
        .collect();
    restored.assign(0, people);
    let _ = restored.tick(now + 300 * DAY);
});

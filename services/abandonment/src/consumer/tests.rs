//! The abandonment logic on the stage: data requests answered once per partition, whatever the
//! restarts and rebalances (the compliance topic is read from its start at every start).

use std::collections::HashMap;

use rdkafka::message::{Header, OwnedHeaders, Timestamp};

use super::*;
use crate::domain::engine::tests::rules;

const SHOP: &str = "shop.myshopify.com";

fn logic() -> Abandonment {
    Abandonment {
        engine: Engine::new(rules()),
        metrics: AbandonmentMetrics::register(&prometheus::Registry::new()).unwrap(),
        last_expiry: Instant::now(),
        data_requests: DataRequests::default(),
    }
}

/// A `customers/data_request` on the compliance topic, read now.
fn request(id: u64) -> OwnedMessage {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "shopify-topic",
            value: Some("customers/data_request"),
        })
        .insert(Header {
            key: "shopify-shop-domain",
            value: Some(SHOP),
        });
    let body = serde_json::json!({"customer": {"id": 4242}, "data_request": {"id": id}});
    OwnedMessage::new(
        Some(body.to_string().into_bytes()),
        Some(b"4242".to_vec()),
        "shopify.compliance".into(),
        Timestamp::CreateTime(now_ms()),
        0,
        0,
        Some(headers),
    )
}

fn answers(effects: &[EffectOf<Abandonment>]) -> usize {
    effects
        .iter()
        .filter(|e| {
            matches!(
                e,
                StageEffect::Emit {
                    topic: DATA_REQUESTS,
                    ..
                }
            )
        })
        .count()
}

/// Reads data request `id` from the compliance topic as at start, before any partition is
/// owned: remembered, answered only once a partition is assigned.
fn remember_unanswered(logic: &mut Abandonment, id: u64) {
    let effects = logic.apply_global("compliance", &request(id)).ok().unwrap();
    assert!(effects.is_empty());
}

/// The changelog after `effects`: what a restore hands back.
fn changelog(effects: Vec<EffectOf<Abandonment>>) -> HashMap<String, Stored> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            StageEffect::Persist {
                key,
                entity: Some(entity),
            } => Some((key, *entity)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_data_request_is_answered_once_per_partition_across_rebalances_and_restarts() {
    let mut first = logic();
    // Read at start, before any partition is owned: answered as each is assigned.
    remember_unanswered(&mut first, 77);
    let assigned = adopt(&mut first, 0, HashMap::new(), &[]);
    assert_eq!(answers(&assigned), 1);
    let state = changelog(assigned);
    // A rebalance hands the partition back, restored from its changelog.
    first.revoke(0);
    assert_eq!(
        answers(&adopt(&mut first, 0, state.clone(), &[])),
        0,
        "answered again"
    );
    // Kept across a rebalance (no restore): the same.
    let kept = first.release(0).unwrap();
    assert_eq!(
        answers(&adopt(&mut first, 0, kept, &[])),
        0,
        "answered again"
    );
    // A restart reads the compliance topic from its start again.
    let mut second = logic();
    remember_unanswered(&mut second, 77);
    assert_eq!(
        answers(&adopt(&mut second, 0, state, &[])),
        0,
        "answered again"
    );
    // A partition that never answered it still does, and a new request is answered live.
    assert_eq!(answers(&adopt(&mut second, 1, HashMap::new(), &[])), 1);
    let live = second
        .apply_global("compliance", &request(78))
        .ok()
        .unwrap();
    assert_eq!(
        live.iter()
            .filter(|(_, e)| answers(std::slice::from_ref(e)) == 1)
            .count(),
        2
    );
}

/// As the stage adopts a restored partition: the logic takes its entities, reconciles the
/// outputs read back after its checkpoint, then the loop ticks.
fn adopt(
    logic: &mut Abandonment,
    partition: i32,
    entities: HashMap<String, Stored>,
    written: &[Vec<u8>],
) -> Vec<EffectOf<Abandonment>> {
    let mut effects = logic.assign(partition, entities);
    for bytes in written {
        if let Ok(emitted) = serde_json::from_slice::<<Abandonment as StageLogic>::Emitted>(bytes) {
            effects.extend(logic.reconcile(partition, &emitted));
        }
    }
    effects.extend(logic.tick(now_ms()).into_iter().map(|(_, e)| e));
    effects
}

/// The answers among `effects` as the broker holds them.
fn written(effects: &[EffectOf<Abandonment>]) -> Vec<Vec<u8>> {
    effects
        .iter()
        .filter_map(|e| match e {
            StageEffect::Emit {
                topic: DATA_REQUESTS,
                output,
                ..
            } => Some(serde_json::to_vec(output).unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_data_request_answered_just_before_a_crash_is_not_answered_again_after_it() {
    let mut first = logic();
    remember_unanswered(&mut first, 77);
    let answered = adopt(&mut first, 0, HashMap::new(), &[]);
    let on_the_topic = written(&answered);
    assert_eq!(on_the_topic.len(), 1);
    // The crash comes after the answer is acknowledged, before the changelog (with its mark)
    // is written: the restore finds no mark, and reads the answer back after the checkpoint.
    // Another service's report in the shared topic is no answer of this partition.
    let anyone = aftercart_shopify::privacy::DataRequest::default();
    let other = DataRequestReport::new("referrals", SHOP, &anyone, now_ms(), vec![]);
    let mut read_back = vec![serde_json::to_vec(&other).unwrap()];
    read_back.extend(on_the_topic);
    let mut second = logic();
    remember_unanswered(&mut second, 77);
    let restored = adopt(&mut second, 0, HashMap::new(), &read_back);
    assert_eq!(answers(&restored), 0, "answered again after the crash");
    // The mark is written now: the next restart does not answer it either.
    let mut third = logic();
    remember_unanswered(&mut third, 77);
    assert_eq!(
        answers(&adopt(&mut third, 0, changelog(restored), &[])),
        0,
        "answered again after a restart"
    );
}

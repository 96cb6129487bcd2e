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
    assert!(first
        .apply_global("compliance", &request(77))
        .ok()
        .unwrap()
        .is_empty());
    let assigned = first.assign(0, HashMap::new());
    assert_eq!(answers(&assigned), 1);
    let state = changelog(assigned);
    // A rebalance hands the partition back, restored from its changelog.
    first.revoke(0);
    assert_eq!(
        answers(&first.assign(0, state.clone())),
        0,
        "answered again"
    );
    // Kept across a rebalance (no restore): the same.
    let kept = first.release(0).unwrap();
    assert_eq!(answers(&first.assign(0, kept)), 0, "answered again");
    // A restart reads the compliance topic from its start again.
    let mut second = logic();
    assert!(second
        .apply_global("compliance", &request(77))
        .ok()
        .unwrap()
        .is_empty());
    assert_eq!(answers(&second.assign(0, state)), 0, "answered again");
    // A partition that never answered it still does, and a new request is answered live.
    assert_eq!(answers(&second.assign(1, HashMap::new())), 1);
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

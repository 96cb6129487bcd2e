//! The nudge logic on the stage: after a restore (or while stale input is read) due steps wait
//! for the backlog, so an order that arrived while the service was down stops them first.

use std::collections::HashMap;

use aftercart_shopify::time::rfc3339;
use rdkafka::message::{Header, OwnedHeaders, Timestamp};

use super::*;
use crate::domain::engine::tests::rules;

const SHOP: &str = "shop.myshopify.com";
const MIN: i64 = 60_000;

fn logic() -> Nudges {
    logic_on(&prometheus::Registry::new())
}

fn logic_on(registry: &prometheus::Registry) -> Nudges {
    Nudges::new(
        Engine::new(rules()),
        NudgesMetrics::register(registry, None).unwrap(),
        None,
    )
}

/// The abandonment of journey `cart` two hours before `now`, by a customer with consent.
fn abandonment(cart: &str, now: i64) -> serde_json::Value {
    serde_json::json!({
        "type": "abandoned", "kind": "checkout", "event_id": format!("abandon-{cart}"),
        "shop": SHOP, "journey_key": format!("{SHOP}/{cart}"),
        "checkout_token": format!("chk-{cart}"), "cart_token": cart,
        "customer": {"id": 42, "email": "ann@example.com", "phone": null, "first_name": "Ann",
            "last_name": null, "country": "FR", "accepts_email_marketing": true,
            "accepts_sms_marketing": false},
        "value": null, "line_items": null,
        "segments": {"stage": "contact", "value_tier": "medium", "customer": "new",
            "contactable": {"email": true, "sms": false}, "consent": {"email": true, "sms": false},
            "discount": false, "fence_sitter": false, "repeat": 0},
        "contact_basis": "marketing", "recovery_url": format!("https://shop/{cart}/recover?key=k"),
        "abandoned_at": rfc3339(now - 120 * MIN), "last_activity_at": rfc3339(now - 180 * MIN),
    })
}

/// The state as the changelog holds it: one sequence of an abandonment two hours ago (step 1
/// due an hour ago), never sent because the service was down.
fn restored(now: i64) -> HashMap<String, Entity> {
    let event = abandonment("a", now);
    let input = decode_input("abandonments", None, event.to_string().as_bytes()).unwrap();
    let mut engine = Engine::new(rules());
    engine.assign(0, HashMap::new());
    engine
        .apply(0, SHOP, input, now - 120 * MIN)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Persist {
                key,
                entity: Some(entity),
            } => Some((key, *entity)),
            _ => None,
        })
        .collect()
}

/// A by-shop record of `family`, received by the ingress at `at`.
fn record(family: &str, topic: &str, body: serde_json::Value, at: i64) -> OwnedMessage {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "shopify-topic",
            value: Some(topic),
        })
        .insert(Header {
            key: aftercart_kafka::stage::SOURCE_HEADER,
            value: Some(family),
        });
    OwnedMessage::new(
        Some(body.to_string().into_bytes()),
        Some(SHOP.as_bytes().to_vec()),
        "aftercart.nudges.by-shop".into(),
        Timestamp::CreateTime(at),
        0,
        0,
        Some(headers),
    )
}

fn emitted(effects: &[(i32, Staged)]) -> usize {
    effects
        .iter()
        .filter(|(_, e)| matches!(e, StageEffect::Emit { .. }))
        .count()
}

#[test]
fn after_a_restore_a_due_step_waits_for_the_orders_that_arrived_meanwhile() {
    let now = now_ms();
    let mut logic = logic();
    logic.assign(0, restored(now));
    // The first batch after a restore is often empty: the backlog is still being fetched.
    assert_eq!(
        emitted(&logic.tick(now)),
        0,
        "sent before the backlog was read"
    );
    // No busy loop meanwhile: the stage waits until the hold ends.
    assert!(logic.next_due().unwrap() > now);
    // The backlog: she bought through another cart 90 minutes ago, while the service was down.
    let order = record(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "checkout_token": "other", "email": "ann@example.com"}),
        now - 90 * MIN,
    );
    assert!(logic.apply(0, "orders", &order).is_ok());
    let later = now_ms() + CATCH_UP_HOLD_MS + 1;
    assert_eq!(emitted(&logic.tick(later)), 0, "a nudge after the purchase");
    assert_eq!(logic.next_due(), None, "the purchase ended the sequence");
}

#[test]
fn without_a_backlog_the_due_step_goes_out_once_the_hold_is_over() {
    let now = now_ms();
    let mut logic = logic();
    logic.assign(0, restored(now));
    assert_eq!(emitted(&logic.tick(now)), 0);
    assert_eq!(emitted(&logic.tick(now_ms() + CATCH_UP_HOLD_MS + 1)), 1);
}

#[test]
fn fresh_input_does_not_hold_due_steps() {
    let now = now_ms();
    let mut logic = logic();
    logic.assign(0, HashMap::new());
    let mut entities = restored(now);
    logic.assign(1, std::mem::take(&mut entities));
    // Long after the restore, fresh records keep flowing: due steps are not held by them.
    let fresh = record(
        "orders",
        "orders/create",
        serde_json::json!({"id": 10, "email": "bob@example.com"}),
        now_ms(),
    );
    assert!(logic.apply(0, "orders", &fresh).is_ok());
    assert_eq!(emitted(&logic.tick(now_ms() + CATCH_UP_HOLD_MS + 1)), 1);
}

#[test]
fn nothing_restored_means_no_hold() {
    let now = now_ms();
    let mut logic = logic();
    logic.assign(0, HashMap::new());
    // A fresh record of an abandonment whose first step is already due: sent at once.
    let fresh = record("abandonments", "none", abandonment("b", now), now_ms());
    assert!(logic.apply(0, "abandonments", &fresh).is_ok());
    assert_eq!(emitted(&logic.tick(now_ms())), 1);
}

#[test]
fn a_data_request_is_written_to_the_data_requests_topic_and_counted_once_acknowledged() {
    let registry = prometheus::Registry::new();
    let mut logic = logic_on(&registry);
    let answered = || {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "aftercart_nudges_data_requests_answered_total")
            .map(|f| f.get_metric()[0].get_counter().get_value())
    };
    assert_eq!(answered(), Some(0.0), "registered at zero");
    logic.assign(0, HashMap::new());
    let request = record(
        "compliance",
        "customers/data_request",
        serde_json::json!({"customer": {"id": 42}, "data_request": {"id": 9}}),
        now_ms(),
    );
    assert!(logic.routes("compliance", &request));
    let effects = logic.apply(0, "compliance", &request).ok().unwrap();
    let [StageEffect::Emit {
        topic,
        event_id,
        output: Output::Answer(report),
        ..
    }] = effects.as_slice()
    else {
        panic!("one answer")
    };
    assert_eq!(*topic, DATA_REQUESTS);
    assert_eq!(event_id, &report.event_id);
    let record: serde_json::Value = serde_json::to_value(Output::Answer(report.clone())).unwrap();
    assert_eq!(
        record["type"], "data_request.answered",
        "written as the report itself"
    );
    assert!(
        serde_json::from_value::<EmittedNudge>(record).is_err(),
        "read back on restore, a report is no nudge"
    );
    logic.emitted(&Output::Answer(report.clone()));
    assert_eq!(answered(), Some(1.0));
}

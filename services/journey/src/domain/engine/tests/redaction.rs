//! Redactions that stick: a fact about a redacted customer (or shop), arriving after the
//! redaction or in flight before it, never brings their orders back nor sends a touchpoint.

use super::*;

const HOUR: i64 = 3_600_000;

fn redact(body: serde_json::Value) -> Input {
    input("customers/redact", body)
}

/// An order of another customer, unless `fields` say otherwise.
fn order_by(id: u64, fields: serde_json::Value) -> Input {
    let mut body = serde_json::json!({"id": id, "name": "#2001", "email": "cy@example.com",
        "buyer_accepts_marketing": true, "total_price": "10.00", "currency": "EUR",
        "created_at": "2026-11-01T10:00:00Z", "financial_status": "paid",
        "customer": {"id": 99, "first_name": "Cy"}});
    for (name, value) in fields.as_object().unwrap() {
        body[name] = value.clone();
    }
    input("orders/paid", body)
}

/// Dropped: counted, nothing emitted, no order held; at most an order id remembered.
fn assert_dropped(engine: &Engine, effects: &[Effect]) {
    assert_eq!(effects.first(), Some(&Effect::Count(Counted::Redacted)));
    for effect in &effects[1..] {
        assert!(
            matches!(effect, Effect::Persist { key, entity: Some(e) }
                if key.starts_with("redacted/") && matches!(**e, Entity::Redaction(_))),
            "{effect:?}"
        );
    }
    assert_eq!(engine.sizes().0, 0, "no order held");
}

/// What the changelog holds after these writes (a tombstone deletes).
fn changelog(effects: &[Effect]) -> HashMap<String, Entity> {
    let mut held = HashMap::new();
    for effect in effects {
        if let Effect::Persist { key, entity } = effect {
            match entity {
                Some(entity) => held.insert(key.clone(), (**entity).clone()),
                None => held.remove(key),
            };
        }
    }
    held
}

fn bea() -> serde_json::Value {
    serde_json::json!({"customer": {"id": 42, "email": "bea@example.com",
        "phone": "+1 555 625 1199"}})
}

#[test]
fn an_order_after_the_redaction_is_dropped_and_so_are_its_fulfilments() {
    let mut engine = engine();
    let effects = engine.apply(0, SHOP, redact(bea()), AT);
    let held = changelog(&effects);
    // Id, email, phone, and the three national numbers the phone may be.
    assert_eq!(held.len(), 6, "{held:?}");
    let text = format!("{held:?}");
    assert!(!text.contains("bea") && !text.contains("625"), "{text}");
    let effects = engine.apply(0, SHOP, order(5, true), AT + HOUR);
    assert_dropped(&engine, &effects);
    assert_eq!(
        changelog(&effects).keys().collect::<Vec<_>>(),
        [&format!("redacted/{SHOP}/order/5")]
    );
    let effects = engine.apply(0, SHOP, event(5, "delivered"), AT + HOUR);
    assert_eq!(effects, [Effect::Count(Counted::Redacted)]);
    assert_eq!(
        engine.next_due().filter(|_| engine.order_due().is_some()),
        None
    );
}

#[test]
fn a_fact_after_the_redaction_does_not_bring_the_customer_back() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    // By id alone: the order's id and email are remembered too.
    let effects = engine.apply(
        0,
        SHOP,
        redact(serde_json::json!({"customer": {"id": 42}})),
        AT,
    );
    assert!(effects.contains(&Effect::Persist {
        key: order_entity(SHOP, 5),
        entity: None
    }));
    assert_eq!(engine.sizes().0, 0);
    // The order replayed, its fulfilment, a guest order under the same email, a consent
    // change: none re-creates them or sends anything.
    for fact in [
        order(5, true),
        event(5, "delivered"),
        order_by(
            6,
            serde_json::json!({"email": "BEA@example.com", "customer": null}),
        ),
        input(
            "customers/update",
            serde_json::json!({"id": 42, "email_marketing_consent": {"state": "subscribed"}}),
        ),
    ] {
        let effects = engine.apply(0, SHOP, fact, AT + HOUR);
        assert_dropped(&engine, &effects);
    }
    assert!(fired(&mut engine, AT + 400 * DAY).is_empty());
}

#[test]
fn a_redaction_matches_by_phone_and_by_its_orders() {
    let mut engine = engine();
    engine.apply(
        0,
        SHOP,
        redact(serde_json::json!({"customer": {"phone": "555-625-1199"}})),
        AT,
    );
    let by_phone = order_by(7, serde_json::json!({"phone": "+1 (555) 625-1199"}));
    let effects = engine.apply(0, SHOP, by_phone, AT + HOUR);
    assert_dropped(&engine, &effects);

    let mut engine = super::engine();
    let listed = serde_json::json!({"customer": {"id": 1}, "orders_to_redact": [8]});
    engine.apply(0, SHOP, redact(listed), AT);
    let effects = engine.apply(0, SHOP, order(8, true), AT + HOUR);
    assert_dropped(&engine, &effects);
    let effects = engine.apply(0, SHOP, event(8, "delivered"), AT + HOUR);
    assert_dropped(&engine, &effects);
    // Another order of the same customer (42 is not redacted) is told as before.
    assert_eq!(
        kinds(&engine.apply(0, SHOP, order(9, true), AT + HOUR)),
        [Kind::OrderConfirmed]
    );
}

#[test]
fn a_shop_redaction_drops_the_facts_in_flight_before_it() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(
        0,
        SHOP,
        input("shop/redact", serde_json::json!({"shop_id": 1})),
        AT + HOUR,
    );
    for fact in [
        order(6, true),
        event(5, "delivered"),
        input("checkouts/create", serde_json::json!({"token": "t"})),
    ] {
        let effects = engine.apply(0, SHOP, fact, AT + HOUR);
        assert_eq!(effects, [Effect::Count(Counted::Redacted)]);
    }
    assert_eq!(engine.sizes().0, 0);
    // Another shop, and the shop reinstalled after its redaction, are told.
    let other = engine.apply(0, "other.myshopify.com", order(6, true), AT);
    assert_eq!(kinds(&other), [Kind::OrderConfirmed]);
    let later = engine.apply(0, SHOP, order(7, true), AT + 2 * HOUR);
    assert_eq!(kinds(&later), [Kind::OrderConfirmed]);
}

#[test]
fn markers_expire_after_the_redaction_retention() {
    let mut engine = engine();
    let written = changelog(&engine.apply(0, SHOP, redact(bea()), AT));
    let retention = rules().redaction_retention_ms;
    assert!(engine.expire(AT + retention - 1).is_empty());
    let mut gone: Vec<String> = engine
        .expire(AT + retention)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Effect::Persist { key, entity: None } => Some(key),
            _ => None,
        })
        .collect();
    gone.sort();
    let mut keys: Vec<String> = written.into_keys().collect();
    keys.sort();
    assert_eq!(gone, keys);
    assert_eq!(
        kinds(&engine.apply(0, SHOP, order(5, true), AT + retention)),
        [Kind::OrderConfirmed]
    );
}

#[test]
fn markers_survive_a_restore_from_the_changelog() {
    let mut engine = engine();
    let mut written = engine.apply(0, SHOP, redact(bea()), AT);
    written.extend(engine.apply(
        0,
        SHOP,
        input("shop/redact", serde_json::json!({"shop_id": 1})),
        AT + HOUR,
    ));
    let mut restored = Engine::new(rules());
    restored.assign(0, changelog(&written));
    let by_phone = order_by(7, serde_json::json!({"phone": "5556251199"}));
    let effects = restored.apply(0, SHOP, by_phone, AT + 2 * HOUR);
    assert_dropped(&restored, &effects);
    let in_flight = restored.apply(0, SHOP, order_by(8, serde_json::json!({})), AT);
    assert_eq!(in_flight, [Effect::Count(Counted::Redacted)]);
    // The restored markers (six of the customer's, the shop's, order 7's) still expire.
    let expired = restored.expire(AT + 2 * HOUR + rules().redaction_retention_ms);
    assert_eq!(expired.len(), 8);
}

#[test]
fn a_dropped_order_forgets_what_its_fulfilments_left_before_it() {
    let mut engine = engine();
    // A fulfilment read before its order: held under the order id alone, naming no one, so
    // the redaction cannot tell it is the customer's.
    let shipped = input(
        "fulfillments/update",
        serde_json::json!({"id": 77, "order_id": 5, "status": "success",
            "shipment_status": "delivered", "tracking_company": "UPS",
            "tracking_number": "1Z999AA10123456784"}),
    );
    engine.apply(0, SHOP, shipped, AT);
    assert_eq!(engine.sizes().0, 1);
    let redaction = redact(serde_json::json!({"customer": {"id": 42}}));
    engine.apply(0, SHOP, redaction, AT + HOUR);
    // The order names the customer: dropped, and what its fulfilment left goes with it.
    let effects = engine.apply(0, SHOP, order(5, true), AT + 2 * HOUR);
    assert_eq!(effects.first(), Some(&Effect::Count(Counted::Redacted)));
    assert!(
        effects.contains(&Effect::Persist {
            key: order_entity(SHOP, 5),
            entity: None
        }),
        "{effects:?}"
    );
    assert_eq!(engine.sizes().0, 0, "no order held");
    assert!(emitted(&effects).is_empty());
}

#[test]
fn a_phone_typed_nationally_is_the_redacted_international_one() {
    let mut engine = engine();
    let redaction = serde_json::json!({"customer": {"id": 43, "phone": "+34 612 345 678"}});
    engine.apply(0, SHOP, redact(redaction), AT);
    // A Spanish number as typed at checkout (no trunk prefix, no country code).
    let typed = order_by(7, serde_json::json!({"phone": "612 34 56 78"}));
    let effects = engine.apply(0, SHOP, typed, AT + HOUR);
    assert_dropped(&engine, &effects);
    let other = order_by(8, serde_json::json!({"phone": "612 34 56 79"}));
    assert_eq!(
        kinds(&engine.apply(0, SHOP, other, AT + HOUR)),
        [Kind::OrderConfirmed]
    );
}

//! Redactions that stick: a fact about a redacted person (or shop), arriving after the
//! redaction or in flight before it, never starts a sequence or re-creates what was deleted.

use super::*;

const DAY: i64 = 24 * HOUR;

fn redact(body: serde_json::Value) -> Input {
    shopify("compliance", "customers/redact", body)
}

fn ann() -> serde_json::Value {
    serde_json::json!({"customer": {"id": 42, "email": "ann@example.com",
        "phone": "+1 555 625 1199"}})
}

/// An abandonment by someone else, unless `customer` says who.
fn abandoned_by(cart: &str, customer: serde_json::Value) -> Input {
    let mut who = serde_json::json!({"id": 77, "email": "bea@example.com", "phone": null,
        "first_name": "Bea", "last_name": null, "country": "US",
        "accepts_email_marketing": true, "accepts_sms_marketing": true});
    for (name, value) in customer.as_object().unwrap() {
        who[name] = value.clone();
    }
    abandoned(cart, serde_json::json!({ "customer": who }))
}

/// Dropped: counted as redacted, and nothing scheduled, persisted or sent.
fn assert_dropped(e: &mut Engine, effects: &[Effect], at_ms: i64) {
    assert_eq!(effects, [Effect::Suppressed(Suppressed::Redacted)]);
    assert!(nudges(&e.fire_due(at_ms + 100 * DAY)).is_empty());
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

#[test]
fn an_abandonment_after_the_redaction_is_dropped() {
    let mut e = engine();
    let effects = e.apply(0, SHOP, redact(ann()), T0);
    // Markers only: pseudonyms, never the email or phone.
    let held = changelog(&effects);
    // Id, email, phone, and the three national numbers the phone may be.
    assert_eq!(held.len(), 6, "{held:?}");
    let text = format!("{held:?}");
    assert!(!text.contains("ann@") && !text.contains("625"), "{text}");
    let effects = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0 + MIN);
    assert_dropped(&mut e, &effects, T0);
}

#[test]
fn a_fact_after_the_redaction_does_not_bring_the_person_back() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let effects = e.apply(0, SHOP, redact(ann()), T0 + MIN);
    assert_eq!(suppressed(&effects), [Suppressed::Redacted]);
    assert_eq!(e.next_due(), None);
    // The same abandonment replayed, an order and an unsubscribe of theirs: all dropped, so
    // no sequence and no remembered person comes back.
    let effects = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0 + 2 * MIN);
    assert_dropped(&mut e, &effects, T0);
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 5, "email": "ANN@example.com"}),
    );
    assert_eq!(
        e.apply(0, SHOP, order, T0 + 3 * MIN),
        [Effect::Suppressed(Suppressed::Redacted)]
    );
    let unsubscribe = shopify(
        "customers",
        "customers/update",
        serde_json::json!({"id": 42, "email_marketing_consent": {"state": "unsubscribed"}}),
    );
    assert_eq!(
        e.apply(0, SHOP, unsubscribe, T0 + 4 * MIN),
        [Effect::Suppressed(Suppressed::Redacted)]
    );
}

#[test]
fn the_email_their_sequence_knew_is_remembered_with_a_redaction_by_id_alone() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    e.apply(
        0,
        SHOP,
        redact(serde_json::json!({"customer": {"id": 42}})),
        T0 + MIN,
    );
    let guest = abandoned_by(
        "b",
        serde_json::json!({"id": null, "email": "Ann@Example.com"}),
    );
    let effects = e.apply(0, SHOP, guest, T0 + 2 * MIN);
    assert_dropped(&mut e, &effects, T0);
}

#[test]
fn a_redaction_matches_by_phone_and_by_its_orders() {
    let mut e = engine();
    let by_phone = serde_json::json!({"customer": {"phone": "555-625-1199"}});
    e.apply(0, SHOP, redact(by_phone), T0);
    let effects = e.apply(
        0,
        SHOP,
        abandoned_by("a", serde_json::json!({"phone": "+1 (555) 625-1199"})),
        T0 + MIN,
    );
    assert_dropped(&mut e, &effects, T0);

    let mut e = engine();
    let by_order = serde_json::json!({"customer": {"id": 1}, "orders_to_redact": [9]});
    e.apply(0, SHOP, redact(by_order), T0);
    let order = shopify(
        "orders",
        "orders/paid",
        serde_json::json!({"id": 9, "email": "someone@example.com"}),
    );
    assert_eq!(
        e.apply(0, SHOP, order, T0 + MIN),
        [Effect::Suppressed(Suppressed::Redacted)]
    );
    // Someone else is nudged as before.
    let effects = e.apply(0, SHOP, abandoned_by("b", serde_json::json!({})), T0 + MIN);
    assert!(effects.contains(&Effect::Scheduled));
}

#[test]
fn a_shop_redaction_drops_the_facts_in_flight_before_it() {
    let mut e = engine();
    e.apply(0, SHOP, Input::RedactShop, T0 + HOUR);
    // Received before the redaction (read late from another topic): dropped.
    let effects = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0 + HOUR);
    assert_dropped(&mut e, &effects, T0);
    // Another shop, and the shop reinstalled later, are nudged.
    let other = e.apply(
        0,
        "other.myshopify.com",
        abandoned("b", serde_json::json!({})),
        T0,
    );
    assert!(other.contains(&Effect::Scheduled));
    let later = e.apply(
        0,
        SHOP,
        abandoned("c", serde_json::json!({})),
        T0 + 2 * HOUR,
    );
    assert!(later.contains(&Effect::Scheduled));
}

#[test]
fn markers_expire_after_the_redaction_retention() {
    let mut e = engine();
    let written = changelog(&e.apply(0, SHOP, redact(ann()), T0));
    let retention = rules().redaction_retention_ms;
    assert!(e.expire(T0 + retention - 1).is_empty());
    let expired = e.expire(T0 + retention);
    let mut gone: Vec<&String> = expired
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Persist { key, entity: None } => Some(key),
            _ => None,
        })
        .collect();
    gone.sort();
    let mut keys: Vec<&String> = written.keys().collect();
    keys.sort();
    assert_eq!(gone, keys);
    let effects = e.apply(
        0,
        SHOP,
        abandoned("a", serde_json::json!({})),
        T0 + retention,
    );
    assert!(effects.contains(&Effect::Scheduled));
}

#[test]
fn markers_survive_a_restore_from_the_changelog() {
    let mut e = engine();
    let mut written = e.apply(0, SHOP, redact(ann()), T0);
    written.extend(e.apply(0, SHOP, Input::RedactShop, T0 + HOUR));
    let mut restored = Engine::new(rules());
    restored.assign(0, changelog(&written));
    let by_phone = abandoned_by("a", serde_json::json!({"phone": "5556251199"}));
    let effects = restored.apply(0, SHOP, by_phone, T0 + 2 * HOUR);
    assert_dropped(&mut restored, &effects, T0);
    let in_flight = restored.apply(0, SHOP, abandoned_by("b", serde_json::json!({})), T0);
    assert_dropped(&mut restored, &in_flight, T0);
    // The restored markers (six of the person's, the shop's) still expire.
    assert_eq!(
        restored
            .expire(T0 + HOUR + rules().redaction_retention_ms)
            .len(),
        7
    );
}

#[test]
fn a_phone_typed_nationally_is_the_redacted_international_one() {
    let mut e = engine();
    // An SMS-only guest checkout in France: the phone as the buyer typed it.
    let typed = |cart: &str, phone: &str| {
        abandoned_by(
            cart,
            serde_json::json!({"id": null, "email": null, "phone": phone}),
        )
    };
    let effects = e.apply(0, SHOP, typed("a", "06 12 34 56 78"), T0);
    assert!(effects.contains(&Effect::Scheduled), "{effects:?}");
    // Shopify's redaction names the customer's phone in E.164.
    let redaction = serde_json::json!({"customer": {"id": 43, "phone": "+33612345678"}});
    let effects = e.apply(0, SHOP, redact(redaction), T0 + MIN);
    assert_eq!(suppressed(&effects), [Suppressed::Redacted], "{effects:?}");
    assert!(nudges(&e.fire_due(T0 + 100 * DAY)).is_empty());
    // Another checkout of theirs, typed without spaces or with the country code.
    for (cart, phone) in [("b", "0612345678"), ("c", "+33 6 12 34 56 78")] {
        let effects = e.apply(0, SHOP, typed(cart, phone), T0 + 2 * MIN);
        assert_dropped(&mut e, &effects, T0);
    }
    // Someone else's number is not theirs.
    let other = e.apply(0, SHOP, typed("d", "06 12 34 56 79"), T0 + 2 * MIN);
    assert!(other.contains(&Effect::Scheduled), "{other:?}");
}

#[test]
fn an_order_or_unsubscribe_sharing_a_redacted_phone_still_stops_that_buyers_sequence() {
    let bea_with = |fields: serde_json::Value| {
        let mut body = serde_json::json!({"customer_id": 77, "email": "bea@example.com",
            "phone": "+1 555 625 1199"});
        for (name, value) in fields.as_object().unwrap() {
            body[name] = value.clone();
        }
        body
    };
    let order = shopify(
        "orders",
        "orders/create",
        bea_with(serde_json::json!({"id": 6, "customer": {"id": 77},
            "checkout_token": "chk-b"})),
    );
    let unsubscribe = shopify(
        "customers",
        "customers/update",
        bea_with(serde_json::json!({"email_marketing_consent": {"state": "unsubscribed"}})),
    );
    for (fact, why) in [
        (order, Suppressed::Purchased),
        (unsubscribe, Suppressed::Consent),
    ] {
        let mut e = engine();
        // Ann is redacted; Bea (another customer id) shares her household phone and abandons
        // with her email only: her sequence starts.
        e.apply(0, SHOP, redact(ann()), T0);
        let effects = e.apply(0, SHOP, abandoned_by("b", serde_json::json!({})), T0 + MIN);
        assert!(effects.contains(&Effect::Scheduled), "{effects:?}");
        // Bea's order or unsubscribe names the redacted phone: nothing of it is remembered,
        // but Bea is not nudged after buying or unsubscribing.
        let effects = e.apply(0, SHOP, fact, T0 + 2 * MIN);
        assert_eq!(
            suppressed(&effects),
            [Suppressed::Redacted, why],
            "{effects:?}"
        );
        assert!(
            !effects.iter().any(|e| matches!(
                e,
                Effect::Persist {
                    entity: Some(_),
                    ..
                }
            )),
            "{effects:?}"
        );
        assert!(nudges(&e.fire_due(T0 + 100 * DAY)).is_empty());
    }
}

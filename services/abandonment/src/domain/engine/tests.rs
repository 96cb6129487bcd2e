//! Engine behaviour, rule by rule, on a controlled clock.

use super::*;
use crate::domain::consent::Stored;
use crate::domain::input::{journey_input, GlobalInput, JourneyInput};
use crate::domain::money::Amount;

const MIN: i64 = 60_000;
const SHOP: &str = "shop.myshopify.com";
const KEY: &str = "shop.myshopify.com/cart-1";

pub(crate) fn rules() -> Rules {
    Rules {
        abandon_after_ms: 60 * MIN,
        cart_abandon_after_ms: 30 * MIN,
        retention_ms: 30 * 24 * 60 * MIN,
        uninstall_grace_ms: 48 * 60 * MIN,
        recovery_marker: "/recover".into(),
        transactional_reminders: false,
        segments: SegmentRules {
            value_medium: Amount::parse("50").unwrap(),
            value_high: Amount::parse("200").unwrap(),
            fence_sitter_visits: 3,
            fence_sitter_span_ms: 24 * 60 * MIN,
            repeat_window_ms: 30 * 24 * 60 * MIN,
        },
    }
}

fn engine() -> Engine {
    let mut engine = Engine::new(rules());
    engine.assign(0, Vec::new());
    engine
}

fn redact_id(id: u64) -> GlobalInput {
    GlobalInput::RedactCustomer(Person {
        customer_id: Some(id),
        ..Person::default()
    })
}

fn checkout(updated_at: &str, extra: &str) -> JourneyInput {
    let body = format!(
        r#"{{"token":"chk-1","cart_token":"cart-1","email":"buyer@example.com","total_price":"120.00","currency":"EUR",
        "buyer_accepts_marketing":true,"customer":{{"id":42,"first_name":"Ann","orders_count":0}},
        "line_items":[{{"product_id":1,"variant_id":2,"title":"Mug","quantity":2,"price":"60.00"}}],
        "updated_at":"{updated_at}"{extra}}}"#
    );
    journey_input(Some("checkouts/update"), body.as_bytes()).unwrap()
}

/// The standard checkout with some top-level fields replaced or added.
fn checkout_with(fields: serde_json::Value) -> JourneyInput {
    let JourneyInput::Checkout(base) = checkout("2026-11-23T10:00:00Z", "") else {
        unreachable!()
    };
    let mut body = serde_json::json!({
        "token": base.token, "cart_token": base.cart_token, "email": base.email,
        "total_price": base.total_price, "currency": base.currency,
        "buyer_accepts_marketing": true, "customer": {"id": 42, "first_name": "Ann", "orders_count": 0},
        "line_items": [{"product_id": 1, "variant_id": 2, "title": "Mug", "quantity": 2, "price": "60.00"}],
        "updated_at": "2026-11-23T10:00:00Z",
    });
    for (name, value) in fields.as_object().unwrap() {
        body[name] = value.clone();
    }
    journey_input(Some("checkouts/update"), body.to_string().as_bytes()).unwrap()
}

fn order(id: u64, extra: &str) -> JourneyInput {
    let body = format!(
        r#"{{"id":{id},"cart_token":"cart-1","checkout_token":"chk-1","customer":{{"id":42}}{extra}}}"#
    );
    journey_input(Some("orders/create"), body.as_bytes()).unwrap()
}

fn emitted(effects: &[(i32, Effect)]) -> Vec<&OutputEvent> {
    effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Emit { event, .. } => Some(event.as_ref()),
            _ => None,
        })
        .collect()
}

fn emitted_now(effects: &[Effect]) -> Vec<&OutputEvent> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit { event, .. } => Some(event.as_ref()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_checkout_with_contact_is_abandoned_after_the_delay_from_its_last_activity() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:20:00Z", ""), 20 * MIN);
    assert!(
        emitted(&e.fire_due(79 * MIN)).is_empty(),
        "not before the delay after the last activity"
    );
    let fired = e.fire_due(80 * MIN);
    let events = emitted(&fired);
    assert_eq!(events.len(), 1);
    let event = events[0];
    assert_eq!(event.event_type, EventType::Abandoned);
    assert_eq!(event.kind, Kind::Checkout);
    assert_eq!(event.checkout_token.as_deref(), Some("chk-1"));
    assert_eq!(event.value.as_ref().unwrap().amount, "120.00");
    assert_eq!(event.line_items.as_ref().unwrap().quantity, 2);
    let segments = event.segments.as_ref().unwrap();
    assert_eq!(segments.stage, Stage::Contact);
    assert_eq!(segments.value_tier, segments::ValueTier::Medium);
    assert!(segments.consent.email && !segments.consent.sms);
    assert_eq!(event.abandoned_at, rfc3339(80 * MIN));
    assert!(
        emitted(&e.fire_due(500 * MIN)).is_empty(),
        "one abandonment per journey"
    );
}

#[test]
fn the_next_due_time_is_the_earliest_timer_of_any_partition() {
    let mut e = engine();
    e.assign(1, Vec::new());
    assert_eq!(e.next_due(), None, "nothing scheduled");
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:20:00Z", ""), 20 * MIN);
    assert_eq!(e.next_due(), Some(80 * MIN));
    e.apply(
        1,
        "shop.myshopify.com/cart-2",
        SHOP,
        checkout("2026-11-23T10:05:00Z", ""),
        5 * MIN,
    );
    assert_eq!(
        e.next_due(),
        Some(65 * MIN),
        "the earlier of two partitions"
    );
    e.fire_due(65 * MIN);
    assert_eq!(
        e.next_due(),
        Some(80 * MIN),
        "a fired timer is no longer due"
    );
    e.revoke(0);
    assert_eq!(e.next_due(), None, "a revoked partition's timers are gone");
}

#[test]
fn a_checkout_without_contact_is_never_a_checkout_abandonment() {
    let mut e = engine();
    let body = br#"{"token":"chk-1","cart_token":"cart-1","updated_at":"2026-11-23T10:00:00Z"}"#;
    e.apply(
        0,
        KEY,
        SHOP,
        journey_input(Some("checkouts/create"), body).unwrap(),
        0,
    );
    assert!(emitted(&e.fire_due(1000 * MIN)).is_empty());
}

#[test]
fn an_order_before_the_delay_prevents_the_abandonment_in_either_order() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    e.apply(0, KEY, SHOP, order(7, ""), 5 * MIN);
    assert!(emitted(&e.fire_due(1000 * MIN)).is_empty());

    let mut e = engine();
    e.apply(0, KEY, SHOP, order(7, ""), 0);
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), MIN);
    assert!(
        emitted(&e.fire_due(1000 * MIN)).is_empty(),
        "the order arrived first"
    );
}

#[test]
fn completed_at_closes_the_journey() {
    let mut e = engine();
    e.apply(
        0,
        KEY,
        SHOP,
        checkout(
            "2026-11-23T10:00:00Z",
            r#","completed_at":"2026-11-23T10:05:00Z""#,
        ),
        0,
    );
    assert!(emitted(&e.fire_due(1000 * MIN)).is_empty());
}

#[test]
fn a_late_order_after_the_abandonment_is_a_recovery() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    e.fire_due(60 * MIN);
    let effects = e.apply(0, KEY, SHOP, order(7, r#","landing_site":"/checkouts/chk-1/recover?key=x","discount_codes":[{"code":"BACK10"}]"#), 90 * MIN);
    let events = emitted_now(&effects);
    assert_eq!(events.len(), 1);
    let recovered = events[0];
    assert_eq!(recovered.event_type, EventType::Recovered);
    assert_eq!(recovered.order_id, Some(7));
    assert_eq!(recovered.recovered_after_seconds, Some(30 * 60));
    assert_eq!(recovered.used_recovery_url, Some(true));
    assert_eq!(recovered.used_discount, Some(true));
    assert_ne!(
        recovered.event_id,
        event_id(EventType::Abandoned, Kind::Checkout, KEY)
    );
    assert!(
        emitted_now(&e.apply(0, KEY, SHOP, order(7, ""), 91 * MIN)).is_empty(),
        "orders/paid adds nothing"
    );
}

#[test]
fn a_delete_closes_the_journey_without_an_abandonment() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    e.apply(
        0,
        KEY,
        SHOP,
        journey_input(Some("checkouts/delete"), br#"{"id":1}"#).unwrap(),
        10 * MIN,
    );
    assert!(emitted(&e.fire_due(1000 * MIN)).is_empty());
}

#[test]
fn an_older_update_never_overwrites_newer_state() {
    let mut e = engine();
    e.apply(
        0,
        KEY,
        SHOP,
        checkout(
            "2026-11-23T10:30:00Z",
            r#","shipping_address":{"country_code":"FR"}"#,
        ),
        0,
    );
    let stale = e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 5 * MIN);
    assert!(
        stale.is_empty(),
        "a stale update changes nothing, not even the timer"
    );
    let journey = e.partition(0).unwrap().get(KEY).unwrap();
    assert!(journey.checkout.as_ref().unwrap().has_shipping_address);
    assert_eq!(journey.visits, 1);
    let events = e.fire_due(60 * MIN);
    assert_eq!(
        emitted(&events)[0].segments.as_ref().unwrap().stage,
        Stage::ShippingAddress
    );
}

#[test]
fn a_cart_that_never_reaches_checkout_is_an_anonymous_cart_abandonment() {
    let mut e = engine();
    e.apply(
        0,
        KEY,
        SHOP,
        journey_input(Some("carts/update"), br#"{"id":"cart-1","token":"cart-1"}"#).unwrap(),
        0,
    );
    let fired = e.fire_due(30 * MIN);
    let events = emitted(&fired);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, Kind::Cart);
    assert!(events[0].customer.is_none());
    assert_eq!(events[0].cart_token.as_deref(), Some("cart-1"));
    assert_eq!(events[0].segments.as_ref().unwrap().stage, Stage::Cart);
    // The same cart later reaches checkout with contact: a checkout abandonment can follow.
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 40 * MIN);
    let later = e.fire_due(100 * MIN);
    assert_eq!(emitted(&later)[0].kind, Kind::Checkout);
}

#[test]
fn a_cart_that_reaches_checkout_in_time_is_not_a_cart_abandonment() {
    let mut e = engine();
    e.apply(
        0,
        KEY,
        SHOP,
        journey_input(Some("carts/update"), br#"{"token":"cart-1"}"#).unwrap(),
        0,
    );
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 10 * MIN);
    let events = e.fire_due(40 * MIN);
    assert!(emitted(&events).is_empty());
}

#[test]
fn redacting_a_customer_removes_their_journeys_and_emits_nothing_more() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    e.apply(
        0,
        "shop.myshopify.com/other",
        SHOP,
        journey_input(Some("carts/update"), br#"{"token":"other"}"#).unwrap(),
        0,
    );
    let effects = e.apply_global(SHOP, redact_id(42), 5 * MIN);
    assert_eq!(
        effects,
        vec![(
            0,
            Effect::Persist {
                key: KEY.into(),
                journey: None
            }
        )]
    );
    let fired = e.fire_due(1000 * MIN);
    let events = emitted(&fired);
    assert_eq!(
        events.len(),
        1,
        "only the other (anonymous cart) journey remains"
    );
    assert_eq!(events[0].kind, Kind::Cart);
}

#[test]
fn a_partition_restored_after_a_redaction_is_purged_on_assignment() {
    let mut owner = engine();
    owner.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    let journey = owner.partition(0).unwrap().get(KEY).unwrap().clone();
    // Another instance saw the redaction while not owning partition 0...
    let mut other = Engine::new(rules());
    assert!(other.apply_global(SHOP, redact_id(42), MIN).is_empty());
    // ...and later restores it from the changelog: the journey is tombstoned, not revived.
    let effects = other.assign(0, vec![(KEY.to_string(), journey)]);
    assert_eq!(
        effects,
        vec![Effect::Persist {
            key: KEY.into(),
            journey: None
        }]
    );
    assert_eq!(other.journeys(), 0);
}

#[test]
fn a_redaction_read_before_the_journey_it_covers_still_applies() {
    let mut e = engine();
    e.apply_global(SHOP, redact_id(42), 10 * MIN);
    let effects = e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 5 * MIN);
    assert_eq!(
        effects,
        vec![Effect::Persist {
            key: KEY.into(),
            journey: None
        }]
    );
    assert!(emitted(&e.fire_due(1000 * MIN)).is_empty());
}

#[test]
fn a_fact_read_after_the_redaction_never_brings_the_person_back() {
    let mut e = engine();
    e.apply_global(SHOP, redact_id(42), 10 * MIN);
    // A checkout received after the redaction (late, or in flight on another topic).
    let effects = e.apply(0, KEY, SHOP, checkout("2026-11-23T11:00:00Z", ""), 20 * MIN);
    assert_eq!(
        effects,
        vec![Effect::Persist {
            key: KEY.into(),
            journey: None
        }]
    );
    let order_after = e.apply(0, KEY, SHOP, order(7, ""), 30 * MIN);
    assert!(emitted_now(&order_after).is_empty());
    assert!(emitted(&e.fire_due(1000 * MIN)).is_empty());
    assert_eq!(e.journeys(), 0);
}

#[test]
fn a_redaction_matches_by_phone_and_by_the_orders_it_lists() {
    let by_phone = GlobalInput::RedactCustomer(Person {
        phone: Some("15556251199".into()),
        ..Person::default()
    });
    let mut e = engine();
    e.apply(
        0,
        KEY,
        SHOP,
        checkout("2026-11-23T10:00:00Z", r#","phone":"555-625-1199""#),
        0,
    );
    assert_eq!(e.apply_global(SHOP, by_phone.clone(), MIN).len(), 1);
    assert_eq!(e.journeys(), 0);

    let by_order = GlobalInput::RedactCustomer(Person {
        orders: vec![7],
        ..Person::default()
    });
    let mut e = engine();
    e.apply_global(SHOP, by_order, MIN);
    // An anonymous order listed in orders_to_redact, read after the redaction.
    let body = br#"{"id":7,"cart_token":"cart-1","email":"other@example.com"}"#;
    let effects = e.apply(
        0,
        KEY,
        SHOP,
        journey_input(Some("orders/create"), body).unwrap(),
        2 * MIN,
    );
    assert_eq!(
        effects,
        vec![Effect::Persist {
            key: KEY.into(),
            journey: None
        }]
    );
}

#[test]
fn redacting_by_email_matches_case_insensitively() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    let effects = e.apply_global(
        SHOP,
        GlobalInput::RedactCustomer(Person {
            email: Some("buyer@example.com".into()),
            ..Person::default()
        }),
        MIN,
    );
    assert_eq!(effects.len(), 1);
}

#[test]
fn shop_redact_and_uninstall_drop_the_shops_state() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    assert_eq!(e.apply_global(SHOP, GlobalInput::RedactShop, MIN).len(), 1);
    assert_eq!(e.journeys(), 0);

    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    e.apply_global(SHOP, GlobalInput::Uninstalled, MIN);
    assert!(
        emitted(&e.fire_due(1000 * MIN)).is_empty(),
        "nothing is emitted for an uninstalled shop"
    );
    assert!(
        e.expire(47 * 60 * MIN).is_empty(),
        "kept during the grace period"
    );
    assert_eq!(e.expire(49 * 60 * MIN).len(), 1);
}

#[test]
fn a_consent_event_overrides_the_checkout_flag() {
    let mut e = engine();
    e.apply_global(
        SHOP,
        GlobalInput::Consent {
            customer_id: 42,
            email: Some(false),
            sms: Some(true),
        },
        0,
    );
    e.apply(
        0,
        KEY,
        SHOP,
        checkout("2026-11-23T10:00:00Z", r#","phone":"+33600000000""#),
        0,
    );
    let fired = e.fire_due(60 * MIN);
    let event = emitted(&fired)[0];
    let segments = event.segments.as_ref().unwrap();
    assert!(!segments.consent.email && segments.consent.sms);
    assert!(segments.contactable.email && segments.contactable.sms);
    assert!(!event.customer.as_ref().unwrap().accepts_email_marketing);
}

#[test]
fn an_abandonment_carries_the_recovery_link_and_message_content_for_a_consenting_buyer() {
    let mut e = engine();
    let input = checkout_with(serde_json::json!({
        "subtotal_price": "110.00",
        "abandoned_checkout_url": "https://shop/recover?key=k",
        "line_items": [{"product_id": 1, "variant_id": 2, "title": "Mug", "quantity": 2,
            "price": "60.00", "image_url": "https://cdn/mug.png"}],
    }));
    e.apply(0, KEY, SHOP, input, 0);
    let fired = e.fire_due(60 * MIN);
    let event = emitted(&fired)[0];
    assert_eq!(event.contact_basis, Some(ContactBasis::Marketing));
    assert_eq!(
        event.recovery_url.as_deref(),
        Some("https://shop/recover?key=k")
    );
    let value = event.value.as_ref().unwrap();
    assert_eq!(
        (value.amount.as_str(), value.currency.as_deref()),
        ("120.00", Some("EUR"))
    );
    assert_eq!(value.subtotal.as_deref(), Some("110.00"));
    let item = &event.line_items.as_ref().unwrap().items[0];
    assert_eq!(item.title.as_deref(), Some("Mug"));
    assert_eq!(item.image_url.as_deref(), Some("https://cdn/mug.png"));
    let customer = event.customer.as_ref().unwrap();
    assert_eq!(customer.email.as_deref(), Some("buyer@example.com"));
    assert_eq!(customer.first_name.as_deref(), Some("Ann"));
}

#[test]
fn without_consent_an_abandonment_carries_ids_and_segments_only() {
    let mut e = engine();
    let input = checkout_with(serde_json::json!({
        "buyer_accepts_marketing": false,
        "phone": "+33600000000",
        "abandoned_checkout_url": "https://shop/recover?key=k",
    }));
    e.apply(0, KEY, SHOP, input, 0);
    let fired = e.fire_due(60 * MIN);
    let event = emitted(&fired)[0];
    assert_eq!(event.contact_basis, None);
    assert_eq!(event.recovery_url, None);
    let customer = event.customer.as_ref().unwrap();
    assert_eq!(customer.id, Some(42));
    assert_eq!(
        (&customer.email, &customer.phone, &customer.first_name),
        (&None, &None, &None)
    );
    assert!(event.segments.as_ref().unwrap().contactable.email);
}

#[test]
fn the_transactional_setting_carries_contact_details_without_marketing_consent() {
    let mut e = Engine::new(Rules {
        transactional_reminders: true,
        ..rules()
    });
    e.assign(0, Vec::new());
    let input = checkout_with(serde_json::json!({
        "buyer_accepts_marketing": false,
        "abandoned_checkout_url": "https://shop/recover?key=k",
    }));
    e.apply(0, KEY, SHOP, input, 0);
    let fired = e.fire_due(60 * MIN);
    let event = emitted(&fired)[0];
    assert_eq!(event.contact_basis, Some(ContactBasis::Transactional));
    assert_eq!(
        event.customer.as_ref().unwrap().email.as_deref(),
        Some("buyer@example.com")
    );
    assert!(event.recovery_url.is_some());
}

#[test]
fn sms_consent_alone_carries_the_phone_but_not_the_email() {
    let mut e = engine();
    let input = checkout_with(serde_json::json!({
        "buyer_accepts_marketing": false,
        "buyer_accepts_sms_marketing": true,
        "phone": "+33600000000",
    }));
    e.apply(0, KEY, SHOP, input, 0);
    let fired = e.fire_due(60 * MIN);
    let customer = emitted(&fired)[0].customer.clone().unwrap();
    assert_eq!(customer.phone.as_deref(), Some("+33600000000"));
    assert_eq!(customer.email, None);
}

#[test]
fn returning_customers_and_repeats_come_from_history() {
    let mut e = engine();
    // An earlier journey of customer 42: ordered, then another abandoned.
    e.apply(0, "shop.myshopify.com/old-order", SHOP, order(1, ""), 0);
    let other = "shop.myshopify.com/cart-0";
    e.apply(0, other, SHOP, checkout("2026-11-20T10:00:00Z", ""), MIN);
    e.fire_due(61 * MIN);
    e.apply(
        0,
        KEY,
        SHOP,
        checkout("2026-11-23T10:00:00Z", ""),
        100 * MIN,
    );
    let fired = e.fire_due(160 * MIN);
    let segments = emitted(&fired)[0].segments.clone().unwrap();
    assert_eq!(segments.customer, segments::CustomerKind::Returning);
    assert_eq!(segments.repeat, 1);
}

#[test]
fn history_follows_journeys_that_change_or_lose_their_customer() {
    let mut e = engine();
    // An anonymous checkout later gets a customer: its order counts for that customer.
    let anonymous = journey_input(
        Some("checkouts/create"),
        br#"{"token":"a","email":"x@example.com","updated_at":"2026-11-23T09:00:00Z"}"#,
    )
    .unwrap();
    e.apply(0, "shop.myshopify.com/a", SHOP, anonymous, 0);
    e.apply(
        0,
        "shop.myshopify.com/a",
        SHOP,
        checkout("2026-11-23T09:30:00Z", ""),
        MIN,
    );
    e.apply(0, "shop.myshopify.com/a", SHOP, order(1, ""), 2 * MIN);
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 10 * MIN);
    let fired = e.fire_due(100 * MIN);
    assert_eq!(
        emitted(&fired)[0].segments.as_ref().unwrap().customer,
        segments::CustomerKind::Returning
    );
    // Once the ordered journey is redacted away, it no longer counts.
    e.apply_global(SHOP, GlobalInput::RedactShop, 200 * MIN);
    assert_eq!(e.journeys(), 0);
}

#[test]
fn fence_sitters_are_flagged() {
    let mut e = engine();
    for (n, at) in [(0, 0), (1, 10), (2, 20)] {
        e.apply(
            0,
            KEY,
            SHOP,
            checkout(&format!("2026-11-23T10:0{n}:00Z"), ""),
            at * MIN,
        );
    }
    let fired = e.fire_due(80 * MIN);
    assert!(emitted(&fired)[0].segments.as_ref().unwrap().fence_sitter);
}

#[test]
fn an_event_emitted_before_its_journey_was_ever_persisted_is_not_emitted_again() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    let event = emitted(&e.fire_due(60 * MIN))[0].clone();
    // Killed after writing the event, before any changelog record: nothing to restore...
    let mut restarted = Engine::new(rules());
    restarted.assign(0, Vec::new());
    let found: EmittedEvent =
        serde_json::from_value(serde_json::to_value(&event).unwrap()).unwrap();
    assert!(
        restarted.reconcile(0, &found).is_some(),
        "the mark is persisted"
    );
    // ...and the uncommitted input is read again.
    restarted.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    assert!(
        emitted(&restarted.fire_due(1000 * MIN)).is_empty(),
        "no duplicate abandonment"
    );
}

#[test]
fn reconciling_an_emitted_event_prevents_a_second_one() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    let fired = e.fire_due(60 * MIN);
    let event = emitted(&fired)[0].clone();
    // A restart restores the journey as it was before the abandonment was persisted...
    let mut restarted = Engine::new(rules());
    let mut before = Journey::new(SHOP, 0);
    before.checkout = e.partition(0).unwrap().get(KEY).unwrap().checkout.clone();
    before.checkout_updated_ms = Some(0);
    before.visits = 1;
    restarted.assign(0, vec![(KEY.to_string(), before)]);
    // ...and then reads the event it already emitted from the output topic.
    let found: EmittedEvent =
        serde_json::from_value(serde_json::to_value(&event).unwrap()).unwrap();
    assert!(restarted.reconcile(0, &found).is_some());
    assert!(
        emitted(&restarted.fire_due(1000 * MIN)).is_empty(),
        "no duplicate abandonment"
    );
}

#[test]
fn idle_journeys_expire_after_retention() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, order(7, ""), 0);
    assert!(e.expire(29 * 24 * 60 * MIN).is_empty());
    assert_eq!(e.expire(30 * 24 * 60 * MIN).len(), 1);
    assert_eq!(e.journeys(), 0);
}

#[test]
fn restored_journeys_rearm_their_timers() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    let journey = e.partition(0).unwrap().get(KEY).unwrap().clone();
    let mut restarted = Engine::new(rules());
    restarted.assign(0, vec![(KEY.to_string(), journey)]);
    assert_eq!(emitted(&restarted.fire_due(60 * MIN)).len(), 1);
}

#[test]
fn a_released_partition_hands_back_its_journeys_with_their_timers() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    let journeys = e.release(0).expect("owned");
    assert!(!e.owns(0));
    assert_eq!(journeys.keys().collect::<Vec<_>>(), [KEY]);
    e.assign(0, journeys);
    assert_eq!(e.next_due(), Some(60 * MIN));
    assert_eq!(emitted(&e.fire_due(60 * MIN)).len(), 1);
}

#[test]
fn a_data_request_finds_the_customers_journeys_in_each_owned_partition() {
    let mut e = engine();
    e.assign(1, Vec::new());
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    e.apply(
        1,
        "shop.myshopify.com/other",
        SHOP,
        journey_input(Some("carts/update"), br#"{"token":"other"}"#).unwrap(),
        0,
    );
    let buyer = Person {
        email: Some("buyer@example.com".into()),
        ..Person::default()
    };
    let held = e.held_about(SHOP, &buyer);
    assert_eq!(held.len(), 2, "one answer per owned partition");
    assert_eq!(held[0].1.len(), 1);
    assert_eq!(held[0].1[0].0, KEY);
    assert!(held[1].1.is_empty(), "someone else's cart is not reported");
    let elsewhere = e.held_about("other.myshopify.com", &buyer);
    assert!(elsewhere.iter().all(|(_, journeys)| journeys.is_empty()));
}

/// The changelog a sequence of effects leaves (latest per key, tombstones removed).
fn changelog_of(effects: &[(i32, Effect)], partition: i32) -> HashMap<String, Stored> {
    let mut changelog = HashMap::new();
    for (_, effect) in effects.iter().filter(|(p, _)| *p == partition) {
        let (key, value) = match effect {
            Effect::Persist { key, journey } => (key, journey.clone().map(Stored::Journey)),
            Effect::Consent { key, consent } => (key, consent.map(Stored::Consent)),
            Effect::Emit { .. } => continue,
        };
        match value {
            Some(value) => changelog.insert(key.clone(), value),
            None => changelog.remove(key),
        };
    }
    changelog
}

#[test]
fn an_unsubscribe_outlives_the_customers_topic_in_the_partitions_changelog() {
    let mut e = engine();
    let unsubscribe = GlobalInput::Consent {
        customer_id: 42,
        email: Some(false),
        sms: None,
    };
    let effects = e.apply_global(SHOP, unsubscribe, 1_000);
    let changelog = changelog_of(&effects, 0);
    assert_eq!(changelog.len(), 1, "{effects:?}");

    // A restart after the customers topic dropped the record: only the changelog has it.
    let mut restarted = Engine::new(rules());
    let effects = restarted.restore(0, changelog);
    assert!(effects.is_empty(), "nothing to rewrite: {effects:?}");
    restarted.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    let fired = restarted.fire_due(60 * MIN);
    let event = emitted(&fired)[0];
    assert!(!event.segments.as_ref().unwrap().consent.email);
    let customer = event.customer.as_ref().unwrap();
    assert!(!customer.accepts_email_marketing);
    assert_eq!(customer.email, None, "no contact details without consent");
}

#[test]
fn a_newer_consent_known_at_restore_is_written_and_a_redaction_deletes_the_copies() {
    let mut e = engine();
    let say = |email: bool| GlobalInput::Consent {
        customer_id: 42,
        email: Some(email),
        sms: None,
    };
    let old = changelog_of(&e.apply_global(SHOP, say(true), 1_000), 0);
    // Another instance read a newer statement while the partition was elsewhere.
    let mut other = Engine::new(rules());
    other.apply_global(SHOP, say(false), 2_000);
    let effects = other.restore(0, old);
    let rewritten = changelog_of(&effects.into_iter().map(|e| (0, e)).collect::<Vec<_>>(), 0);
    let Some(Stored::Consent(copy)) = rewritten.values().next() else {
        panic!("the newer consent is written: {rewritten:?}");
    };
    assert_eq!((copy.email, copy.at_ms), (Some(false), 2_000));

    let effects = other.apply_global(SHOP, redact_id(42), 3_000);
    assert!(
        effects
            .iter()
            .any(|(p, e)| *p == 0 && matches!(e, Effect::Consent { consent: None, .. })),
        "{effects:?}"
    );
}

fn person_42() -> Person {
    Person {
        customer_id: Some(42),
        ..Person::default()
    }
}

#[test]
fn a_restore_keeps_the_unsubscribe_the_customers_topic_no_longer_says() {
    let mut e = engine();
    let say = |email: Option<bool>, sms: Option<bool>| GlobalInput::Consent {
        customer_id: 42,
        email,
        sms,
    };
    let mut effects = e.apply_global(SHOP, say(Some(false), None), 1_000);
    effects.extend(e.apply_global(SHOP, say(None, Some(false)), 2_000));
    let changelog = changelog_of(&effects, 0);

    // Restarted once the email unsubscribe (1 000) aged out of the customers topic: the global
    // table holds only the SMS statement (2 000), as old as the partition's copy.
    let mut restarted = Engine::new(rules());
    restarted.apply_global(SHOP, say(None, Some(false)), 2_000);
    let effects = restarted.restore(0, changelog);
    let (_, copy) = restarted.consent_held(0, SHOP, &person_42()).unwrap();
    assert_eq!(copy.channels(), (Some(false), Some(false)), "{effects:?}");
    // The same when the copy is older than what the topic still says.
    let mut restarted = Engine::new(rules());
    let old = changelog_of(
        &engine().apply_global(SHOP, say(Some(false), None), 1_000),
        0,
    );
    restarted.apply_global(SHOP, say(None, Some(true)), 3_000);
    restarted.restore(0, old);
    let (_, copy) = restarted.consent_held(0, SHOP, &person_42()).unwrap();
    assert_eq!(copy.channels(), (Some(false), Some(true)));
}

#[test]
fn a_consent_read_after_the_redaction_keeps_no_copy() {
    let mut e = engine();
    e.apply_global(SHOP, redact_id(42), 1_000);
    // In flight on the customers topic, or replayed before the redaction on a restart.
    let late = GlobalInput::Consent {
        customer_id: 42,
        email: Some(false),
        sms: None,
    };
    let effects = e.apply_global(SHOP, late, 2_000);
    assert!(changelog_of(&effects, 0).is_empty(), "{effects:?}");
    assert_eq!(e.consent_held(0, SHOP, &person_42()), None);
    // A partition assigned later is not given one either.
    let effects = e.restore(1, HashMap::new());
    assert!(effects.is_empty(), "{effects:?}");
}

#[test]
fn a_data_request_reports_no_journey_of_another_customer_with_the_same_email() {
    let mut e = engine();
    e.apply(0, KEY, SHOP, checkout("2026-11-23T10:00:00Z", ""), 0);
    // Her partner checks out as customer 43 with the household's address.
    let body = br#"{"token":"chk-2","cart_token":"cart-2","email":"buyer@example.com",
        "customer":{"id":43,"first_name":"Bob"},"updated_at":"2026-11-23T10:00:00Z"}"#;
    let other = journey_input(Some("checkouts/update"), body).unwrap();
    e.apply(0, "shop.myshopify.com/cart-2", SHOP, other, 0);
    let ann = Person {
        customer_id: Some(42),
        email: Some("buyer@example.com".into()),
        ..Person::default()
    };
    let held = e.held_about(SHOP, &ann);
    let keys: Vec<&str> = held[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, [KEY]);
}

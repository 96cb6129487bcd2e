//! Engine behaviour, rule by rule, on a controlled clock.

use super::*;
use crate::domain::input::decode_input;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const SHOP: &str = "shop.myshopify.com";
/// 2026-11-23T10:00:00Z: the abandonment time of the sample events.
const T0: i64 = 1_795_428_000_000;

/// The default cadence (1h, 24h, 72h), a 7-day cap: also the consumer tests' rules.
pub(crate) fn rules() -> Rules {
    Rules {
        default: ShopPolicy {
            enabled: true,
            steps: Steps::parse("1h,24h,72h").unwrap(),
            quiet_hours: None,
        },
        shops: HashMap::new(),
        cap_ms: 7 * 24 * HOUR,
        memory_ms: 30 * 24 * HOUR,
        redaction_retention_ms: 400 * 24 * HOUR,
        hasher: StateHasher::new(*b"nudges-test-state-hash-key").unwrap(),
    }
}

fn engine() -> Engine {
    let mut engine = Engine::new(rules());
    engine.assign(0, HashMap::new());
    engine
}

/// An abandonment event of journey `cart`, by customer 42 with an email, with marketing consent.
fn abandoned(cart: &str, fields: serde_json::Value) -> Input {
    let mut event = serde_json::json!({
        "type": "abandoned", "kind": "checkout",
        "event_id": format!("abandon-{cart}"),
        "shop": SHOP, "journey_key": format!("{SHOP}/{cart}"),
        "checkout_token": format!("chk-{cart}"), "cart_token": cart,
        "customer": {"id": 42, "email": "ann@example.com", "phone": null, "first_name": "Ann",
            "last_name": null, "country": "FR", "accepts_email_marketing": true,
            "accepts_sms_marketing": false},
        "value": {"amount": "120.00", "currency": "EUR"},
        "line_items": {"count": 1, "quantity": 2, "items": [{"product_id": 1, "variant_id": 2,
            "title": "Mug", "quantity": 2, "price": "60.00"}]},
        "segments": {"stage": "contact", "value_tier": "medium", "customer": "new",
            "contactable": {"email": true, "sms": false}, "consent": {"email": true, "sms": false},
            "discount": false, "fence_sitter": false, "repeat": 0},
        "contact_basis": "marketing",
        "recovery_url": format!("https://shop/{cart}/recover?key=k"),
        "abandoned_at": "2026-11-23T10:00:00Z",
        "last_activity_at": "2026-11-23T09:00:00Z",
    });
    for (name, value) in fields.as_object().unwrap() {
        event[name] = value.clone();
    }
    decode_input("abandonments", None, event.to_string().as_bytes()).unwrap()
}

fn shopify(family: &str, topic: &str, body: serde_json::Value) -> Input {
    decode_input(family, Some(topic), body.to_string().as_bytes()).unwrap()
}

fn nudges(effects: &[(i32, Effect)]) -> Vec<&Nudge> {
    effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Emit { nudge, .. } => Some(nudge.as_ref()),
            _ => None,
        })
        .collect()
}

fn suppressed(effects: &[Effect]) -> Vec<Suppressed> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Suppressed(why) => Some(*why),
            _ => None,
        })
        .collect()
}

#[test]
fn an_abandonment_gets_one_nudge_per_step_with_what_the_message_needs() {
    let mut e = engine();
    let effects = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    assert!(effects.contains(&Effect::Scheduled));
    assert_eq!(e.next_due(), Some(T0 + HOUR));
    assert!(nudges(&e.fire_due(T0 + HOUR - 1)).is_empty());
    let fired = e.fire_due(T0 + HOUR);
    let first = nudges(&fired);
    assert_eq!(first.len(), 1);
    let nudge = first[0];
    assert_eq!((nudge.step, nudge.steps), (1, 3));
    assert_eq!(
        nudge.event_id,
        crate::domain::nudge::event_id("abandon-a", 1)
    );
    assert_eq!(nudge.customer.email.as_deref(), Some("ann@example.com"));
    assert_eq!(
        nudge.recovery_url.as_deref(),
        Some("https://shop/a/recover?key=k")
    );
    assert_eq!(
        nudge.line_items.as_ref().unwrap().items[0].title.as_deref(),
        Some("Mug")
    );
    assert_eq!(nudge.segments["value_tier"], "medium");
    assert_eq!(nudge.due_at, rfc3339(T0 + HOUR));
    assert_eq!(nudges(&e.fire_due(T0 + 24 * HOUR))[0].step, 2);
    let last = e.fire_due(T0 + 72 * HOUR);
    assert_eq!(nudges(&last)[0].step, 3);
    assert!(last
        .iter()
        .any(|(_, effect)| *effect == delete_sequence(&format!("{SHOP}/a"))));
    assert_eq!(e.next_due(), None, "the sequence is over");
}

#[test]
fn an_order_through_another_cart_by_email_stops_the_sequence() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "checkout_token": "other", "email": "ANN@example.com "}),
    );
    let effects = e.apply(0, SHOP, order, T0 + 10 * MIN);
    assert_eq!(suppressed(&effects), [Suppressed::Purchased]);
    assert!(nudges(&e.fire_due(T0 + 100 * HOUR)).is_empty());
}

#[test]
fn an_order_by_the_same_customer_id_or_phone_stops_it_too() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let order = shopify(
        "orders",
        "orders/paid",
        serde_json::json!({"id": 9, "customer": {"id": 42}}),
    );
    assert_eq!(
        suppressed(&e.apply(0, SHOP, order, T0)),
        [Suppressed::Purchased]
    );

    let mut e = engine();
    let with_phone = serde_json::json!({"customer": {"id": null, "email": null, "phone": "+33600000000",
        "first_name": null, "last_name": null, "country": null, "accepts_email_marketing": false,
        "accepts_sms_marketing": true}});
    e.apply(0, SHOP, abandoned("a", with_phone), T0);
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "phone": "+33 6 00 00 00 00"}),
    );
    assert_eq!(
        suppressed(&e.apply(0, SHOP, order, T0)),
        [Suppressed::Purchased]
    );
}

#[test]
fn an_order_before_the_abandonment_is_reported_means_no_sequence() {
    let mut e = engine();
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "checkout_token": "other", "email": "ann@example.com"}),
    );
    // Ordered through another cart at 09:30, after the abandoned checkout's last activity.
    e.apply(0, SHOP, order, T0 - 30 * MIN);
    let effects = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    assert_eq!(suppressed(&effects), [Suppressed::Purchased]);
    assert_eq!(e.next_due(), None);
}

#[test]
fn an_older_order_does_not_stop_a_later_abandonment() {
    let mut e = engine();
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "email": "ann@example.com"}),
    );
    e.apply(0, SHOP, order, T0 - 5 * HOUR);
    let effects = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    assert!(effects.contains(&Effect::Scheduled));
}

#[test]
fn a_recovery_a_deletion_and_a_redaction_stop_the_sequence() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let recovered = decode_input(
        "abandonments",
        None,
        serde_json::json!({"type": "recovered", "kind": "checkout", "event_id": "r",
            "shop": SHOP, "journey_key": format!("{SHOP}/a"), "checkout_token": "chk-a",
            "cart_token": "a", "customer": null, "value": null,
            "abandoned_at": "2026-11-23T10:00:00Z", "last_activity_at": "2026-11-23T09:00:00Z",
            "order_id": 1, "recovered_at": "2026-11-23T10:30:00Z", "recovered_after_seconds": 1800,
            "used_recovery_url": true, "used_discount": false})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        suppressed(&e.apply(0, SHOP, recovered, T0)),
        [Suppressed::Recovered]
    );

    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let deleted = shopify(
        "checkouts",
        "checkouts/delete",
        serde_json::json!({"token": "chk-a"}),
    );
    assert_eq!(
        suppressed(&e.apply(0, SHOP, deleted, T0)),
        [Suppressed::Deleted]
    );

    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    // After the first nudge, so the person has remembered facts (the cap's start).
    assert_eq!(nudges(&e.fire_due(T0 + HOUR)).len(), 1);
    let redact = shopify(
        "compliance",
        "customers/redact",
        serde_json::json!({"customer": {"id": 42, "email": "ann@example.com"}}),
    );
    let effects = e.apply(0, SHOP, redact, T0 + HOUR);
    assert_eq!(suppressed(&effects), [Suppressed::Redacted]);
    // The person's remembered facts go too.
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Persist { key, entity: None } if key.starts_with("person/"))));

    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    e.apply(
        0,
        SHOP,
        abandoned("b", serde_json::json!({"customer": null})),
        T0,
    );
    let effects = e.apply(0, SHOP, Input::RedactShop, T0);
    assert_eq!(suppressed(&effects), [Suppressed::Redacted]);
    assert_eq!(e.next_due(), None);
}

/// A redaction naming the customer by a newer email: what is remembered of them under the
/// email their sequence knew (the cap's start, their order and unsubscribe state) goes too, not
/// only what the redaction's own id and email name.
#[test]
fn a_redaction_forgets_the_person_under_every_contact_their_sequences_knew() {
    let mut e = engine();
    let mut changelog: HashMap<String, Option<Box<Entity>>> = HashMap::new();
    let mut fold = |effects: Vec<Effect>| {
        for effect in effects {
            if let Effect::Persist { key, entity } = effect {
                changelog.insert(key, entity);
            }
        }
    };
    fold(e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0));
    fold(e.fire_due(T0 + HOUR).into_iter().map(|(_, e)| e).collect());
    let redact = shopify(
        "compliance",
        "customers/redact",
        serde_json::json!({"customer": {"id": 42, "email": "ann.new@example.com"}}),
    );
    let effects = e.apply(0, SHOP, redact, T0 + 2 * HOUR);
    assert_eq!(suppressed(&effects), [Suppressed::Redacted]);
    fold(effects);
    let people: Vec<&String> = changelog
        .iter()
        .filter(|(key, entity)| key.starts_with("person/") && entity.is_some())
        .map(|(key, _)| key)
        .collect();
    assert!(people.is_empty(), "{people:?}");
}

#[test]
fn an_unsubscribe_stops_the_sequence_and_later_ones() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let unsubscribe = shopify(
        "customers",
        "customers_email_marketing_consent/update",
        serde_json::json!({"customer_id": 42, "email_address": "ann@example.com",
            "email_marketing_consent": {"state": "unsubscribed"}}),
    );
    assert_eq!(
        suppressed(&e.apply(0, SHOP, unsubscribe, T0 + MIN)),
        [Suppressed::Consent]
    );
    // A later abandonment event that still says "marketing" (sent before the unsubscribe was
    // seen upstream) is not nudged on the unsubscribed channel.
    let effects = e.apply(0, SHOP, abandoned("b", serde_json::json!({})), T0 + 2 * MIN);
    assert_eq!(suppressed(&effects), [Suppressed::Consent]);
}

#[test]
fn without_consent_or_the_transactional_setting_nobody_is_nudged() {
    let mut e = engine();
    let no_basis = serde_json::json!({"contact_basis": null, "recovery_url": null,
        "customer": {"id": 42, "email": null, "phone": null, "first_name": null, "last_name": null,
        "country": null, "accepts_email_marketing": false, "accepts_sms_marketing": false}});
    let effects = e.apply(0, SHOP, abandoned("a", no_basis), T0);
    assert_eq!(suppressed(&effects), [Suppressed::Consent]);
    let transactional = serde_json::json!({"contact_basis": "transactional"});
    let effects = e.apply(0, SHOP, abandoned("b", transactional), T0);
    assert!(effects.contains(&Effect::Scheduled));
}

#[test]
fn one_sequence_per_person_within_the_frequency_cap() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let effects = e.apply(0, SHOP, abandoned("b", serde_json::json!({})), T0 + HOUR);
    assert_eq!(suppressed(&effects), [Suppressed::Cap]);
    assert_eq!(nudges(&e.fire_due(T0 + HOUR)).len(), 1, "a's first step");
    assert_eq!(
        nudges(&e.fire_due(T0 + 72 * HOUR)).len(),
        1,
        "a's last step"
    );
    let later = serde_json::json!({"abandoned_at": "2026-12-01T10:00:00Z",
        "last_activity_at": "2026-12-01T09:00:00Z"});
    let effects = e.apply(0, SHOP, abandoned("c", later), T0 + 8 * 24 * HOUR);
    assert!(effects.contains(&Effect::Scheduled));
}

#[test]
fn after_an_outage_only_the_latest_due_step_is_sent() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let fired = e.fire_due(T0 + 30 * HOUR);
    let sent = nudges(&fired);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].step, 2);
    let late = fired
        .iter()
        .filter(|(_, e)| *e == Effect::Suppressed(Suppressed::Late))
        .count();
    assert_eq!(late, 1);
    assert_eq!(e.next_due(), Some(T0 + 72 * HOUR));
}

/// An engine on the cadence `steps` holding one sequence, abandoned at `T0`.
fn abandoned_at_t0_with_steps(steps: &str) -> Engine {
    let mut rules = rules();
    rules.default.steps = Steps::parse(steps).unwrap();
    let mut e = Engine::new(rules);
    e.assign(0, HashMap::new());
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    e
}

/// Issue 15 (fault suite: 999 of 1000 nudges after repeated SIGKILLs): with steps 1s and 30s a
/// first step left unsent for 29 s by crash-restarts was skipped as late. A short delay (a
/// restart, a rebalance) skips nothing: both steps go out, in order.
#[test]
fn steps_due_together_after_a_short_delay_are_all_sent() {
    let mut e = abandoned_at_t0_with_steps("1s,30s");
    let fired = e.fire_due(T0 + 31_000);
    assert_eq!(
        nudges(&fired).iter().map(|n| n.step).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(!fired
        .iter()
        .any(|(_, e)| *e == Effect::Suppressed(Suppressed::Late)));
    assert_eq!(e.next_due(), None);
}

/// The bound is the step's own lateness, not the outage's: of three steps due after an outage
/// the first, overdue past [`LATE_AFTER_MS`], is skipped; the second, overdue less, is sent
/// with the third.
#[test]
fn only_a_step_overdue_past_the_late_bound_is_skipped() {
    let mut e = abandoned_at_t0_with_steps("60m,120m,130m");
    // Step 1 overdue by 70 minutes, step 2 by 10, step 3 just due.
    const { assert!(10 * MIN < LATE_AFTER_MS && LATE_AFTER_MS < 70 * MIN) };
    let fired = e.fire_due(T0 + 130 * MIN);
    assert_eq!(
        nudges(&fired).iter().map(|n| n.step).collect::<Vec<_>>(),
        [2, 3]
    );
    let late = fired
        .iter()
        .filter(|(_, e)| *e == Effect::Suppressed(Suppressed::Late))
        .count();
    assert_eq!(late, 1);
}

/// A step skipped as late after one was sent is not a step sent: the person is told of the
/// steps that reached them (a data request's `steps_sent`), the skipped one left out.
#[test]
fn a_step_skipped_as_late_after_one_was_sent_is_not_reported_as_sent() {
    let mut e = abandoned_at_t0_with_steps("60m,120m,130m,300m");
    assert_eq!(nudges(&e.fire_due(T0 + 60 * MIN))[0].step, 1);
    // An outage: step 2 (due at 120 min) is overdue past the bound at 200 min, step 3 is sent.
    let fired = e.fire_due(T0 + 200 * MIN);
    assert_eq!(
        nudges(&fired).iter().map(|n| n.step).collect::<Vec<_>>(),
        [3]
    );
    let report = data_request(
        &mut e,
        serde_json::json!({"id": 42, "email": "ann@example.com"}),
        T0 + 210 * MIN,
    );
    let held = &report.holdings[0].data;
    assert_eq!(held["steps"], 4, "{held}");
    assert_eq!(held["steps_sent"], 2, "steps 1 and 3: {held}");
    assert_eq!(
        held["steps_scheduled"],
        serde_json::json!([rfc3339(T0 + 300 * MIN)])
    );
}

/// The entities `effects` write to the changelog (those `keep` accepts), as a restore reads them.
fn persisted(effects: Vec<Effect>, keep: fn(&Entity) -> bool) -> HashMap<String, Entity> {
    effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Persist {
                key,
                entity: Some(entity),
            } if keep(&entity) => Some((key, *entity)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_restored_sequence_never_sends_a_step_twice() {
    let mut e = engine();
    let effects = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    // The state as the changelog holds it before the first nudge.
    let entities = persisted(effects, |_| true);
    let nudge = nudges(&e.fire_due(T0 + HOUR))[0].clone();
    // A crash after the nudge was written, before the changelog: a new owner restores and
    // reconciles it.
    let mut restored = Engine::new(rules());
    restored.assign(0, entities);
    let emitted: EmittedNudge =
        serde_json::from_value(serde_json::to_value(&nudge).unwrap()).unwrap();
    assert_eq!(restored.reconcile(0, &emitted).len(), 1);
    assert!(restored.reconcile(0, &emitted).is_empty(), "idempotent");
    let fired = restored.fire_due(T0 + HOUR);
    assert!(nudges(&fired).is_empty(), "step 1 is not sent again");
    assert_eq!(nudges(&restored.fire_due(T0 + 24 * HOUR))[0].step, 2);
}

/// A journey abandoned again runs a new sequence under the same key; a nudge of the earlier
/// sequence read back at restore (every output is, when the checkpoint does not decode) is not
/// one of the new sequence's steps.
#[test]
fn a_nudge_of_an_earlier_sequence_of_the_journey_is_not_reconciled_into_the_new_one() {
    let mut e = engine();
    let entities = persisted(
        e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0),
        |_| true,
    );
    let nudge = nudges(&e.fire_due(T0 + HOUR))[0].clone();
    let mut earlier = serde_json::to_value(&nudge).unwrap();
    earlier["abandonment_event_id"] = "an-earlier-abandonment".into();
    let emitted: EmittedNudge = serde_json::from_value(earlier).unwrap();
    let mut restored = Engine::new(rules());
    restored.assign(0, entities);
    assert!(restored.reconcile(0, &emitted).is_empty());
    let fired = restored.fire_due(T0 + HOUR);
    assert_eq!(
        nudges(&fired).iter().map(|n| n.step).collect::<Vec<_>>(),
        [1],
        "the new sequence's first step is still sent"
    );
}

/// A crash after a batch that skipped a step as late and sent the next one, before its
/// changelog: the new owner reconciles the sent step and counts the skipped one as skipped,
/// not as sent.
#[test]
fn a_reconciled_step_counts_the_steps_skipped_before_it() {
    let mut rules = rules();
    rules.default.steps = Steps::parse("60m,120m,130m,300m").unwrap();
    let mut e = Engine::new(rules.clone());
    e.assign(0, HashMap::new());
    let mut entities = persisted(
        e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0),
        |_| true,
    );
    // The changelog as it stands after step 1.
    let fired = e
        .fire_due(T0 + 60 * MIN)
        .into_iter()
        .map(|(_, effect)| effect);
    entities.extend(persisted(fired.collect(), |_| true));
    let third = nudges(&e.fire_due(T0 + 200 * MIN))[0].clone();
    assert_eq!(third.step, 3);
    let mut restored = Engine::new(rules);
    restored.assign(0, entities);
    let emitted: EmittedNudge =
        serde_json::from_value(serde_json::to_value(&third).unwrap()).unwrap();
    assert_eq!(restored.reconcile(0, &emitted).len(), 1);
    let report = data_request(
        &mut restored,
        serde_json::json!({"id": 42, "email": "ann@example.com"}),
        T0 + 210 * MIN,
    );
    assert_eq!(report.holdings[0].data["steps_sent"], 2, "steps 1 and 3");
}

/// Fault suite (issue 19: 935 of 1000 nudges on the mock cluster, the broker holding every
/// acknowledged changelog record): an abandonment read and its first step sent in one batch,
/// the process killed while that batch's changelog was written. The changelog holds a prefix
/// of the batch: the person (their cap window started) but not the sequence, and the input
/// offset was never committed. The restarted owner reads the abandonment again: it is the
/// sequence that started the window, not another one the cap keeps out, so its later steps are
/// still sent (its first again, under the same event id: the at-least-once window).
#[test]
fn an_abandonment_read_again_after_a_crash_is_not_capped_by_its_own_first_nudge() {
    let mut e = engine();
    let mut batch: Vec<Effect> = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let fired = e.fire_due(T0 + HOUR);
    let nudge_id = nudges(&fired)[0].event_id.clone();
    batch.extend(fired.into_iter().map(|(_, effect)| effect));
    // The changelog as the crash left it: the person records written, the sequence not.
    let people = persisted(batch, |entity| matches!(entity, Entity::Person(_)));
    assert!(!people.is_empty(), "the first nudge starts the cap window");
    let mut restored = Engine::new(rules());
    restored.assign(0, people);
    let effects = restored.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0 + HOUR);
    assert_eq!(suppressed(&effects), [], "not capped by its own window");
    assert!(effects.contains(&Effect::Scheduled));
    let again = restored.fire_due(T0 + HOUR);
    assert_eq!(
        nudges(&again)[0].event_id,
        nudge_id,
        "step 1 again, same id"
    );
    assert_eq!(nudges(&restored.fire_due(T0 + 24 * HOUR))[0].step, 2);
    // Once the sequence ended, the same abandonment delivered again starts nothing.
    assert_eq!(nudges(&restored.fire_due(T0 + 72 * HOUR))[0].step, 3);
    let effects = restored.apply(
        0,
        SHOP,
        abandoned("a", serde_json::json!({})),
        T0 + 73 * HOUR,
    );
    assert_eq!(suppressed(&effects), [Suppressed::Cap]);
    // Another journey of the person is still capped.
    let effects = restored.apply(
        0,
        SHOP,
        abandoned("b", serde_json::json!({})),
        T0 + 2 * HOUR,
    );
    assert_eq!(suppressed(&effects), [Suppressed::Cap]);
}

/// A stop (here a recovery: the customer bought) ends the sequence and clears `started_by`;
/// a crash while those changelog writes go out leaves a prefix of them, and the abandonment
/// (its offset not committed) is read again. No prefix may look like a running sequence lost
/// from the changelog (the sequence deleted, the person still naming it), or the customer
/// who bought gets nudged again.
#[test]
fn a_sequence_ended_by_a_recovery_is_not_taken_up_again_from_any_prefix_of_its_writes() {
    let mut e = engine();
    let mut writes = e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    writes.extend(e.fire_due(T0 + HOUR).into_iter().map(|(_, effect)| effect));
    let stopped_at = writes.len();
    let eur = serde_json::json!({"amount": "120.00", "currency": "EUR"});
    let stop = e.apply(
        0,
        SHOP,
        recovery("a", "2026-11-23T11:30:00Z", eur),
        T0 + 2 * HOUR,
    );
    assert_eq!(suppressed(&stop), [Suppressed::Recovered]);
    writes.extend(stop);
    for cut in stopped_at..=writes.len() {
        let mut changelog: HashMap<String, Entity> = HashMap::new();
        for effect in &writes[..cut] {
            if let Effect::Persist { key, entity } = effect {
                match entity {
                    Some(entity) => changelog.insert(key.clone(), entity.as_ref().clone()),
                    None => changelog.remove(key),
                };
            }
        }
        let mut restored = Engine::new(rules());
        restored.assign(0, changelog);
        let effects = restored.apply(
            0,
            SHOP,
            abandoned("a", serde_json::json!({})),
            T0 + 2 * HOUR,
        );
        assert!(
            !effects.contains(&Effect::Scheduled),
            "restarted from the first {cut} writes: {effects:?}"
        );
    }
}

#[test]
fn quiet_hours_and_disabled_shops_follow_the_shop_policy() {
    let mut rules = rules();
    rules.shops.insert(
        SHOP.to_string(),
        ShopPolicy {
            enabled: true,
            steps: Steps::parse("1h").unwrap(),
            // 10:00Z + 1h = 11:00 UTC = 12:00 local: quiet until 13:00 local, 12:00 UTC.
            quiet_hours: Some(QuietHours::parse("11:30-13:00", "+01:00").unwrap()),
        },
    );
    rules.shops.insert(
        "off.myshopify.com".to_string(),
        ShopPolicy {
            enabled: false,
            ..rules.default.clone()
        },
    );
    let mut e = Engine::new(rules);
    e.assign(0, HashMap::new());
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    assert_eq!(e.next_due(), Some(T0 + 2 * HOUR));
    let effects = e.apply(
        0,
        "off.myshopify.com",
        abandoned("b", serde_json::json!({})),
        T0,
    );
    assert_eq!(suppressed(&effects), [Suppressed::Disabled]);
}

#[test]
fn people_are_forgotten_after_the_memory_window() {
    let mut e = engine();
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "email": "ann@example.com"}),
    );
    e.apply(0, SHOP, order, T0);
    assert!(e.expire(T0 + 29 * 24 * HOUR).is_empty());
    assert_eq!(e.expire(T0 + 30 * 24 * HOUR).len(), 1);
}

#[test]
fn a_checkout_deletion_without_a_token_stops_the_sequence_by_its_cart_token() {
    // The checkouts/delete sample (fixtures/shopify/checkouts_delete.json) has an id and a
    // cart_token but no token: the ingress keys it by its cart token, as it keyed the checkout.
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let deleted = shopify(
        "checkouts",
        "checkouts/delete",
        serde_json::json!({"id": 981820079255243537_u64, "cart_token": "a"}),
    );
    assert_eq!(
        suppressed(&e.apply(0, SHOP, deleted, T0)),
        [Suppressed::Deleted]
    );
    assert_eq!(e.next_due(), None);
}

#[test]
fn an_order_with_an_empty_email_or_phone_is_matched_by_the_others() {
    // Shopify sends "" for a field the buyer left out; the customer's email still names them.
    let mut e = engine();
    let guest = serde_json::json!({"customer": {"id": null, "email": "ann@example.com",
        "phone": null, "first_name": null, "last_name": null, "country": null,
        "accepts_email_marketing": true, "accepts_sms_marketing": false}});
    e.apply(0, SHOP, abandoned("a", guest), T0);
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "email": "", "contact_email": "ann@example.com",
            "phone": "", "customer": {"id": 77, "email": "ann@example.com", "phone": null}}),
    );
    assert_eq!(
        suppressed(&e.apply(0, SHOP, order, T0 + MIN)),
        [Suppressed::Purchased]
    );
    assert!(nudges(&e.fire_due(T0 + 100 * HOUR)).is_empty());
}

#[test]
fn quiet_hours_never_fold_two_steps_into_one() {
    // Steps 1h and 2h after 10:00Z both fall in 10:30-13:00 UTC: before, both were deferred to
    // 13:00, and step 1 was skipped as "late" with no outage at all.
    let mut rules = rules();
    rules.default = ShopPolicy {
        enabled: true,
        steps: Steps::parse("1h,2h").unwrap(),
        quiet_hours: Some(QuietHours::parse("10:30-13:00", "+00:00").unwrap()),
    };
    let mut e = Engine::new(rules);
    e.assign(0, HashMap::new());
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let first = e.fire_due(T0 + 3 * HOUR);
    assert_eq!(
        nudges(&first).iter().map(|n| n.step).collect::<Vec<_>>(),
        [1]
    );
    assert!(!first
        .iter()
        .any(|(_, e)| *e == Effect::Suppressed(Suppressed::Late)));
    // The second keeps its hour after the first.
    assert_eq!(e.next_due(), Some(T0 + 4 * HOUR));
    assert_eq!(nudges(&e.fire_due(T0 + 4 * HOUR))[0].step, 2);
}

#[test]
fn a_sequence_stopped_before_its_first_nudge_does_not_count_against_the_cap() {
    // She abandoned, bought ten minutes later through another cart (nothing was sent), and
    // abandoned another checkout two days later: that one is nudged.
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "email": "ann@example.com"}),
    );
    e.apply(0, SHOP, order, T0 + 10 * MIN);
    let later = serde_json::json!({"abandoned_at": "2026-11-25T10:00:00Z",
        "last_activity_at": "2026-11-25T09:00:00Z"});
    let effects = e.apply(0, SHOP, abandoned("b", later), T0 + 48 * HOUR);
    assert!(
        effects.contains(&Effect::Scheduled),
        "{:?}",
        suppressed(&effects)
    );
    // Once a nudge went out, the cap holds for the window.
    assert_eq!(nudges(&e.fire_due(T0 + 49 * HOUR)).len(), 1);
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 10, "email": "ann@example.com"}),
    );
    e.apply(0, SHOP, order, T0 + 50 * HOUR);
    let again = serde_json::json!({"abandoned_at": "2026-11-26T10:00:00Z",
        "last_activity_at": "2026-11-26T09:00:00Z"});
    let effects = e.apply(0, SHOP, abandoned("c", again), T0 + 72 * HOUR);
    assert_eq!(suppressed(&effects), [Suppressed::Cap]);
}

#[test]
fn overdue_steps_are_counted_in_every_partition() {
    // Each partition has one overdue sequence and one not yet due: the backlog gauge counted
    // only up to the first step not due, across partitions taken as one list.
    let mut e = engine();
    e.assign(1, HashMap::new());
    for partition in [0, 1] {
        let late = format!("late{partition}");
        let fresh = format!("fresh{partition}");
        let guest = |email: &str| {
            serde_json::json!({"customer": {"id": null, "email": email, "phone": null,
                "first_name": null, "last_name": null, "country": null,
                "accepts_email_marketing": true, "accepts_sms_marketing": false}})
        };
        e.apply(
            partition,
            SHOP,
            abandoned(&late, guest(&format!("{late}@example.com"))),
            T0,
        );
        let mut later = guest(&format!("{fresh}@example.com"));
        later["abandoned_at"] = "2026-11-23T20:00:00Z".into();
        e.apply(partition, SHOP, abandoned(&fresh, later), T0);
    }
    // At 12:00 the 11:00 steps are an hour late; the 21:00 ones are not due.
    assert_eq!(e.sizes(T0 + 2 * HOUR, MIN), (4, 2));
}

#[test]
fn a_sequence_restored_under_a_new_state_hash_key_is_still_found_by_a_redaction_and_an_order() {
    // Sequences written under the nudges' former key (or before a key change) hold hashes
    // the current key never produces: restoring must hash their contact again, or a redaction
    // would leave the contact details in state until the sequence ends.
    let mut before = Engine::new(Rules {
        hasher: StateHasher::new(*b"the-former-nudges-identity-key").unwrap(),
        ..rules()
    });
    before.assign(0, HashMap::new());
    let started = before.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let restored: HashMap<String, Entity> = started
        .iter()
        .filter_map(|e| match e {
            Effect::Persist {
                key,
                entity: Some(entity),
            } => Some((key.clone(), (**entity).clone())),
            _ => None,
        })
        .collect();
    assert!(!restored.is_empty());

    let redact = shopify(
        "compliance",
        "customers/redact",
        serde_json::json!({"customer": {"email": " Ann@Example.com"}}),
    );
    let mut after = Engine::new(rules());
    after.assign(0, restored.clone());
    let effects = after.apply(0, SHOP, redact, T0 + MIN);
    assert_eq!(suppressed(&effects), [Suppressed::Redacted]);
    assert!(nudges(&after.fire_due(T0 + 100 * HOUR)).is_empty());

    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "checkout_token": "other", "customer": {"id": 42}}),
    );
    let mut after = Engine::new(rules());
    after.assign(0, restored);
    let effects = after.apply(0, SHOP, order, T0 + MIN);
    assert_eq!(suppressed(&effects), [Suppressed::Purchased]);
}

/// After an outage the first step is skipped as late and the second is the first sent: a
/// recovery before that second step was due is not the nudges' doing, although the skipped
/// step was due before it.
#[test]
fn a_recovery_before_the_first_sent_step_is_not_attributed_when_an_earlier_one_was_skipped() {
    let mut e = abandoned_at_t0_with_steps("60m,120m,300m");
    assert_eq!(steps(&e.fire_due(T0 + 200 * MIN)), [2]);
    // Recovered at 11:40 (T0 + 100 min): after step 1 was due, before step 2 was.
    assert!(recovered_at(&mut e, "11:40", T0 + 210 * MIN).is_empty());
}

/// The steps of the nudges in `fired`.
fn steps(fired: &[(i32, Effect)]) -> Vec<u32> {
    nudges(fired).iter().map(|n| n.step).collect()
}

/// Journey `a` recovered at `hh_mm` on the abandonment's day, read at `at_ms`: what was
/// attributed (the sequence is stopped either way).
fn recovered_at(e: &mut Engine, hh_mm: &str, at_ms: i64) -> Vec<Option<(f64, String)>> {
    let when = format!("2026-11-23T{hh_mm}:00Z");
    let effects = e.apply(
        0,
        SHOP,
        recovery("a", &when, serde_json::json!(null)),
        at_ms,
    );
    assert!(suppressed(&effects)
        .iter()
        .all(|s| *s == Suppressed::Recovered));
    attributed(&effects)
}

/// A shop switched off after its sequences started (`enabled = false`, then a restart): the
/// restored sequences send nothing more and end, counted as `disabled`.
#[test]
fn a_shop_switched_off_sends_no_further_step_of_its_running_sequences() {
    let mut e = engine();
    let entities = persisted(
        e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0),
        |_| true,
    );
    let mut off = rules();
    off.default.enabled = false;
    let mut restarted = Engine::new(off);
    restarted.assign(0, entities);
    let fired = restarted.fire_due(T0 + 100 * HOUR);
    assert!(nudges(&fired).is_empty(), "{fired:?}");
    let why: Vec<Effect> = fired.into_iter().map(|(_, e)| e).collect();
    assert_eq!(suppressed(&why), [Suppressed::Disabled]);
    assert!(why.iter().any(
        |e| matches!(e, Effect::Persist { key, entity: None } if key.starts_with("sequence/"))
    ));
    assert!(restarted.fire_due(T0 + 200 * HOUR).is_empty());
}

/// A first step sent late (a member catching up, within the late bound) counts from when it was
/// sent, not from when it was due: a recovery in between was not the nudges' doing.
#[test]
fn a_recovery_between_a_steps_due_time_and_its_late_send_is_not_attributed() {
    // Step 1, due at 11:00, goes out at 11:10: recovered at 11:05, then at 11:15.
    let mut e = abandoned_at_t0_with_steps("60m,120m,300m");
    assert_eq!(steps(&e.fire_due(T0 + 70 * MIN)), [1]);
    assert!(recovered_at(&mut e, "11:05", T0 + 75 * MIN).is_empty());
    let mut e = abandoned_at_t0_with_steps("60m,120m,300m");
    e.fire_due(T0 + 70 * MIN);
    assert_eq!(recovered_at(&mut e, "11:15", T0 + 75 * MIN), [None]);

    // Caught up at 11:10 by the stage's clock, but sent at 11:20 by the wall clock: a recovery
    // at 11:15 came first.
    let mut e = abandoned_at_t0_with_steps("60m,120m,300m");
    e.fire_due_sending_at(T0 + 70 * MIN, T0 + 80 * MIN);
    assert!(recovered_at(&mut e, "11:15", T0 + 75 * MIN).is_empty());
}

/// The recovery event of journey `cart` by customer 42 (as the abandonment service writes it),
/// at `recovered_at`, with `value`.
fn recovery(cart: &str, recovered_at: &str, value: serde_json::Value) -> Input {
    let event = serde_json::json!({"type": "recovered", "kind": "checkout",
        "event_id": format!("recover-{cart}"), "shop": SHOP,
        "journey_key": format!("{SHOP}/{cart}"), "checkout_token": format!("chk-{cart}"),
        "cart_token": cart,
        "customer": {"id": 42, "email": "ann@example.com", "phone": null, "first_name": "Ann",
            "last_name": null, "country": "FR", "accepts_email_marketing": true,
            "accepts_sms_marketing": false},
        "value": value, "contact_basis": "marketing",
        "abandoned_at": "2026-11-23T10:00:00Z", "last_activity_at": "2026-11-23T09:00:00Z",
        "order_id": 1, "recovered_at": recovered_at, "recovered_after_seconds": 1800,
        "used_recovery_url": true, "used_discount": false});
    decode_input("abandonments", None, event.to_string().as_bytes()).unwrap()
}

fn attributed(effects: &[Effect]) -> Vec<Option<(f64, String)>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Attributed { revenue } => Some(revenue.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_recovery_after_a_sent_nudge_is_attributed_with_its_revenue_and_one_before_is_not() {
    let eur = serde_json::json!({"amount": "120.00", "currency": "EUR"});
    // Recovered before the first step (1 h): the sequence stops, nothing is attributed.
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    let effects = e.apply(
        0,
        SHOP,
        recovery("a", "2026-11-23T10:30:00Z", eur.clone()),
        T0,
    );
    assert_eq!(suppressed(&effects), [Suppressed::Recovered]);
    assert!(attributed(&effects).is_empty());

    // Recovered after step 1, while the sequence runs: attributed, with amount and currency.
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    assert_eq!(nudges(&e.fire_due(T0 + HOUR)).len(), 1);
    let effects = e.apply(
        0,
        SHOP,
        recovery("a", "2026-11-23T12:00:00Z", eur.clone()),
        T0 + 2 * HOUR,
    );
    assert_eq!(suppressed(&effects), [Suppressed::Recovered]);
    assert_eq!(attributed(&effects), [Some((120.0, "EUR".to_string()))]);

    // Recovered after the last step (the sequence is gone) and after the buyer's order
    // stopped it: still attributed, through the person's first nudge. Without an amount,
    // only the count.
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    for due in [HOUR, 24 * HOUR, 72 * HOUR] {
        assert_eq!(nudges(&e.fire_due(T0 + due)).len(), 1);
    }
    let effects = e.apply(
        0,
        SHOP,
        recovery("a", "2026-11-27T10:00:00Z", serde_json::Value::Null),
        T0 + 96 * HOUR,
    );
    assert!(suppressed(&effects).is_empty(), "nothing left to stop");
    assert_eq!(attributed(&effects), [None]);

    // A nudge sent after the recovery does not count for it.
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    e.fire_due(T0 + HOUR);
    let effects = e.apply(
        0,
        SHOP,
        recovery("a", "2026-11-23T10:30:00Z", eur),
        T0 + 2 * HOUR,
    );
    assert!(attributed(&effects).is_empty());
}

/// The report a data request about `customer` (with `data_request.id` 5) is answered with.
fn data_request(e: &mut Engine, customer: serde_json::Value, at_ms: i64) -> DataRequestReport {
    let body = serde_json::json!({"shop_domain": SHOP, "customer": customer,
                                  "orders_requested": [], "data_request": {"id": 5}});
    let effects = e.apply(
        0,
        SHOP,
        shopify("compliance", "customers/data_request", body),
        at_ms,
    );
    match effects.as_slice() {
        [Effect::Answer { key, report }] => {
            assert_eq!(key, &format!("{SHOP}/data-request"));
            (**report).clone()
        }
        other => panic!("one answer: {other:?}"),
    }
}

fn kinds(report: &DataRequestReport) -> Vec<(&str, &str)> {
    report
        .holdings
        .iter()
        .map(|h| (h.kind.as_str(), h.key.as_str()))
        .collect()
}

#[test]
fn a_data_request_reports_the_persons_sequence_with_its_steps_and_what_is_remembered_of_them() {
    let mut e = engine();
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    assert_eq!(nudges(&e.fire_due(T0 + HOUR)).len(), 1);
    let report = data_request(
        &mut e,
        serde_json::json!({"id": 42, "email": " ANN@example.com"}),
        T0 + 2 * HOUR,
    );
    assert_eq!(report.service, "nudges");
    assert_eq!(report.shop, SHOP);
    assert_eq!(report.data_request_id, Some(5));
    assert_eq!(report.customer_id, Some(42));
    assert_eq!(report.answered_at, rfc3339(T0 + 2 * HOUR));
    let ids = identity::hashes(
        &rules().hasher,
        SHOP,
        &ContactFacts {
            customer_id: Some(42),
            email: Some("ann@example.com".into()),
            phone: None,
        },
    );
    let (by_id, by_email) = (person_key(&ids[0]), person_key(&ids[1]));
    let sequence = format!("sequence/{SHOP}/a");
    assert_eq!(
        kinds(&report),
        [
            ("sequence", sequence.as_str()),
            ("person", by_id.as_str()),
            ("person", by_email.as_str())
        ]
    );
    let held = &report.holdings[0].data;
    assert_eq!(held["steps"], 3);
    assert_eq!(held["steps_sent"], 1);
    assert_eq!(
        held["steps_scheduled"],
        serde_json::json!([rfc3339(T0 + 24 * HOUR), rfc3339(T0 + 72 * HOUR)])
    );
    assert_eq!(
        held["contact_fields"],
        serde_json::json!(["email", "first_name"])
    );
    assert_eq!(held["stored"]["customer"]["email"], "ann@example.com");
    let person = &report.holdings[1].data;
    assert_eq!(person["identified_by"], "customer_id");
    assert_eq!(person["stored"]["started_ms"], T0 + HOUR);
    assert_eq!(report.holdings[2].data["identified_by"], "email");
}

#[test]
fn a_data_request_finds_the_sequence_by_phone_alone_and_never_one_of_another_customer_id() {
    let mut e = engine();
    e.apply(
        0,
        SHOP,
        abandoned(
            "a",
            serde_json::json!({"customer": {"id": 42, "email": "ann@example.com",
                "phone": "+44 7700 900123", "first_name": "Ann", "last_name": null,
                "country": "GB", "accepts_email_marketing": true, "accepts_sms_marketing": true}}),
        ),
        T0,
    );
    let by_phone = data_request(&mut e, serde_json::json!({"phone": "07700 900123"}), T0);
    assert_eq!(by_phone.holdings.len(), 1, "{by_phone:?}");
    assert_eq!(by_phone.holdings[0].kind, "sequence");
    assert_eq!(
        by_phone.holdings[0].data["contact_fields"],
        serde_json::json!(["email", "phone", "first_name"])
    );
    // Customer 7 shares Ann's email (a household): Ann's sequence is not theirs.
    let other = data_request(
        &mut e,
        serde_json::json!({"id": 7, "email": "ann@example.com"}),
        T0,
    );
    assert!(
        other.holdings.iter().all(|h| h.kind != "sequence"),
        "{other:?}"
    );
    assert!(!serde_json::to_string(&other)
        .unwrap()
        .contains("ann@example.com"));
}

#[test]
fn a_person_held_nowhere_or_redacted_still_gets_an_answer_saying_so() {
    let mut e = engine();
    let nobody = data_request(&mut e, serde_json::json!({"id": 99}), T0);
    assert!(nobody.holdings.is_empty());
    assert_eq!(nobody.data_request_id, Some(5));
    e.apply(0, SHOP, abandoned("a", serde_json::json!({})), T0);
    e.apply(
        0,
        SHOP,
        shopify(
            "compliance",
            "customers/redact",
            serde_json::json!({"customer": {"id": 42, "email": "ann@example.com"}}),
        ),
        T0 + MIN,
    );
    let redacted = data_request(&mut e, serde_json::json!({"id": 42}), T0 + 2 * MIN);
    // Only the redaction's marker is left: a pseudonym and its time.
    assert_eq!(
        kinds(&redacted),
        [("redaction", &*format!("redacted/{SHOP}/customer/42"))]
    );
    // A partition this instance does not own answers too (empty): the report is written in
    // the record's partition either way.
    let unowned = e.apply(
        3,
        SHOP,
        shopify(
            "compliance",
            "customers/data_request",
            serde_json::json!({"customer": {"id": 42}, "data_request": {"id": 6}}),
        ),
        T0,
    );
    assert!(
        matches!(unowned.as_slice(), [Effect::Answer { report, .. }] if report.holdings.is_empty())
    );
}

#[test]
fn a_data_request_reports_nothing_remembered_under_an_email_or_phone_another_customer_id_shares() {
    let mut e = engine();
    // Ann (customer 42) orders with her email and phone: remembered under each identity.
    let order = shopify(
        "orders",
        "orders/create",
        serde_json::json!({"id": 9, "email": "ann@example.com", "phone": "+44 7700 900123",
            "customer": {"id": 42, "email": "ann@example.com", "phone": "+44 7700 900123"}}),
    );
    e.apply(0, SHOP, order, T0);
    // Customer 7 shares the household's email and phone: when Ann ordered is not theirs.
    let other = data_request(
        &mut e,
        serde_json::json!({"id": 7, "email": "ann@example.com", "phone": "07700 900123"}),
        T0 + MIN,
    );
    assert!(other.holdings.is_empty(), "{other:?}");
    // Ann's own request still finds what is remembered under her id.
    let own = data_request(
        &mut e,
        serde_json::json!({"id": 42, "email": "ann@example.com"}),
        T0 + MIN,
    );
    assert!(
        own.holdings
            .iter()
            .any(|h| h.kind == "person" && h.data["identified_by"] == "customer_id"),
        "{own:?}"
    );
    // A request naming no customer id is answered by email, as every record matches it.
    let by_email = data_request(&mut e, serde_json::json!({"email": "ann@example.com"}), T0);
    assert_eq!(by_email.holdings.len(), 1, "{by_email:?}");
    assert_eq!(by_email.holdings[0].data["identified_by"], "email");
    assert_eq!(by_email.holdings[0].data["stored"]["ordered_ms"], T0);
}

mod redaction;

/// An engine whose shop has cadence `steps` and quiet hours `quiet` (UTC), with journey `cart`
/// abandoned at [`T0`] (10:00Z).
fn quiet_engine(steps: &str, quiet: &str, cart: &str) -> Engine {
    let mut rules = rules();
    rules.shops.insert(
        SHOP.to_string(),
        ShopPolicy {
            enabled: true,
            steps: Steps::parse(steps).unwrap(),
            quiet_hours: Some(QuietHours::parse(quiet, "+00:00").unwrap()),
        },
    );
    let mut e = Engine::new(rules);
    e.assign(0, HashMap::new());
    e.apply(0, SHOP, abandoned(cart, serde_json::json!({})), T0);
    e
}

/// The shop's quiet hours hold at sending time too: a step that falls due before them but is
/// only sent in them (an outage, a restart, a member catching up) is postponed to their end,
/// and a later step due by then moves with it instead of pushing it out as late.
#[test]
fn a_step_delayed_into_quiet_hours_waits_for_their_end() {
    // 10:00Z + 1h = 11:00, just before the quiet hours (11:05 to 13:00 UTC); 10:00Z + 2h is in
    // them: scheduled at their end, 13:00.
    let mut e = quiet_engine("1h,2h", "11:05-13:00", "a");
    assert_eq!(e.next_due(), Some(T0 + HOUR));
    // An outage: the stage's clock reaches the step only at 11:10.
    let held = e.fire_due(T0 + HOUR + 10 * MIN);
    assert!(nudges(&held).is_empty(), "sent in quiet hours: {held:?}");
    let postponed = held.iter().find_map(|(_, effect)| match effect {
        Effect::Persist {
            entity: Some(entity),
            ..
        } => match entity.as_ref() {
            Entity::Sequence(sequence) => Some(sequence.due_ms.clone()),
            _ => None,
        },
        _ => None,
    });
    // The second step (due at 13:00) keeps its two hours after the first.
    let moved = vec![T0 + 3 * HOUR, T0 + 5 * HOUR];
    assert_eq!(postponed, Some(moved), "kept in the changelog");
    assert_eq!(e.next_due(), Some(T0 + 3 * HOUR), "held to their end");
    assert!(nudges(&e.fire_due(T0 + 3 * HOUR - 1)).is_empty());
    let sent = e.fire_due(T0 + 3 * HOUR);
    assert_eq!(nudges(&sent).len(), 1, "{sent:?}");
    assert_eq!(nudges(&sent)[0].step, 1);
    assert_eq!(nudges(&sent)[0].due_at, rfc3339(T0 + 3 * HOUR));
    assert!(!sent
        .iter()
        .any(|(_, effect)| *effect == Effect::Suppressed(Suppressed::Late)));
    assert_eq!(e.next_due(), Some(T0 + 5 * HOUR), "the cadence goes on");
    assert_eq!(nudges(&e.fire_due(T0 + 5 * HOUR))[0].step, 2);

    // Caught up by the stage's clock (the record times) but written later, by the wall clock:
    // the wall clock is when the step goes out. The step is due again when the wall clock
    // leaves the quiet hours (13:00, 1 h 50 min later), in the stage's time.
    let mut e = quiet_engine("1h,2h", "11:05-13:00", "b");
    let held = e.fire_due_sending_at(T0 + HOUR, T0 + HOUR + 10 * MIN);
    assert!(nudges(&held).is_empty(), "sent in quiet hours: {held:?}");
    assert_eq!(e.next_due(), Some(T0 + HOUR + 110 * MIN));
    let sent = e.fire_due_sending_at(T0 + HOUR + 110 * MIN, T0 + 3 * HOUR);
    assert_eq!(nudges(&sent).len(), 1);
}

/// An outage past two steps that ends in quiet hours: the late rule skips the first now, the
/// second goes out alone when they end, and only then does the person's cap window start.
#[test]
fn an_outage_ending_in_quiet_hours_skips_the_stale_step_and_postpones_the_latest() {
    // Due at 11:00 and 12:00; quiet from 12:10 to 13:00.
    let mut e = quiet_engine("1h,2h", "12:10-13:00", "a");
    let held = e.fire_due(T0 + 2 * HOUR + 20 * MIN);
    assert!(nudges(&held).is_empty(), "sent in quiet hours: {held:?}");
    let late = held
        .iter()
        .filter(|(_, effect)| *effect == Effect::Suppressed(Suppressed::Late))
        .count();
    assert_eq!(late, 1, "{held:?}");
    assert!(
        !held.iter().any(|(_, effect)| matches!(effect, Effect::Persist { key, .. } if key.starts_with("person/"))),
        "nothing sent yet, so no cap window: {held:?}"
    );
    assert_eq!(
        e.next_due(),
        Some(T0 + 3 * HOUR),
        "the second step, at their end"
    );
    // Asked meanwhile, the person is told of no step sent and the one still to come.
    let report = data_request(
        &mut e,
        serde_json::json!({"id": 42}),
        T0 + 2 * HOUR + 30 * MIN,
    );
    let held = &report.holdings[0].data;
    assert_eq!(held["steps_sent"], 0, "{held}");
    assert_eq!(
        held["steps_scheduled"],
        serde_json::json!([rfc3339(T0 + 3 * HOUR)])
    );
    let sent = e.fire_due(T0 + 3 * HOUR);
    assert_eq!(nudges(&sent).len(), 1, "{sent:?}");
    assert_eq!(nudges(&sent)[0].step, 2);
    assert!(!sent
        .iter()
        .any(|(_, effect)| *effect == Effect::Suppressed(Suppressed::Late)));
    assert!(
        sent.iter().any(|(_, effect)| matches!(effect, Effect::Persist { key, .. } if key.starts_with("person/"))),
        "the first nudge sent starts the cap window: {sent:?}"
    );
    assert_eq!(e.next_due(), None, "the sequence is over");
}

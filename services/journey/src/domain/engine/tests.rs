//! The journey engine's rules, fact by fact.

use super::*;
use crate::domain::input::{decode_input, Input};

const SHOP: &str = "shop.myshopify.com";
const DAY: i64 = 86_400_000;
const PRODUCT: u64 = 788032119674292922;

fn rules() -> Rules {
    Rules {
        review_after_ms: Some(7 * DAY),
        replenish_every_ms: HashMap::from([(PRODUCT, 30 * DAY)]),
        relay_invites: true,
        order_retention_ms: 120 * DAY,
        redaction_retention_ms: 400 * DAY,
        hasher: StateHasher::new(*b"journey-test-state-hash-key").unwrap(),
        kpis: crate::domain::kpis::KpiRules {
            day_ms: DAY,
            default_offset_ms: 0,
            offsets: HashMap::new(),
        },
    }
}

fn engine() -> Engine {
    let mut engine = Engine::new(rules());
    engine.assign(0, HashMap::new());
    engine
}

fn input(topic: &str, body: serde_json::Value) -> Input {
    decode_input(Some(topic), body.to_string().as_bytes()).unwrap()
}

fn order(id: u64, accepts: bool) -> Input {
    input(
        "orders/paid",
        serde_json::json!({"id": id, "name": "#1001", "email": "bea@example.com",
            "buyer_accepts_marketing": accepts, "total_price": "50.00", "currency": "EUR",
            "created_at": "2026-11-01T10:00:00Z", "financial_status": "paid",
            "customer": {"id": 42, "first_name": "Bea"},
            "line_items": [{"product_id": PRODUCT, "title": "Coffee", "quantity": 2},
                           {"product_id": 1, "title": "Mug", "quantity": 1}]}),
    )
}

fn event(order_id: u64, status: &str) -> Input {
    input(
        "fulfillment_events/create",
        serde_json::json!({"id": 9, "fulfillment_id": 77, "order_id": order_id, "status": status,
                           "happened_at": "2026-11-03T10:00:00Z"}),
    )
}

fn emitted(effects: &[Effect]) -> Vec<Touchpoint> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit { output, .. } => Some((**output).clone()),
            _ => None,
        })
        .collect()
}

fn kinds(effects: &[Effect]) -> Vec<Kind> {
    emitted(effects).iter().map(|t| t.kind).collect()
}

fn fired(engine: &mut Engine, now: i64) -> Vec<Touchpoint> {
    let effects: Vec<Effect> = engine.fire_due(now).into_iter().map(|(_, e)| e).collect();
    emitted(&effects)
}

const AT: i64 = 1_793_000_000_000;

fn delivered_ms() -> i64 {
    aftercart_shopify::time::parse_time_ms("2026-11-03T10:00:00Z").unwrap()
}

#[test]
fn an_order_is_confirmed_once_and_its_shipment_is_told_step_by_step() {
    let mut engine = engine();
    let first = engine.apply(0, SHOP, order(5, true), AT);
    assert_eq!(kinds(&first), [Kind::OrderConfirmed]);
    assert!(emitted(&engine.apply(0, SHOP, order(5, true), AT)).is_empty());
    let shipped = engine.apply(0, SHOP, event(5, "in_transit"), AT);
    assert_eq!(kinds(&shipped), [Kind::Shipped]);
    let out = engine.apply(0, SHOP, event(5, "out_for_delivery"), AT);
    assert_eq!(kinds(&out), [Kind::OutForDelivery]);
    let delivered = engine.apply(0, SHOP, event(5, "delivered"), AT);
    let touchpoint = &emitted(&delivered)[0];
    assert_eq!(touchpoint.kind, Kind::Delivered);
    assert_eq!(touchpoint.fulfillment.as_ref().unwrap().id, 77);
    assert_eq!(
        touchpoint.customer.email.as_deref(),
        Some("bea@example.com")
    );
    assert!(
        emitted(&engine.apply(0, SHOP, event(5, "in_transit"), AT)).is_empty(),
        "a late carrier event does not go back"
    );
}

#[test]
fn event_ids_are_deterministic_and_distinct_per_touchpoint() {
    let run = || {
        let mut engine = engine();
        let mut ids: Vec<String> = emitted(&engine.apply(0, SHOP, order(5, true), AT))
            .into_iter()
            .map(|t| t.event_id)
            .collect();
        ids.extend(
            emitted(&engine.apply(0, SHOP, event(5, "delivered"), AT))
                .into_iter()
                .map(|t| t.event_id),
        );
        ids
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert_ne!(a[0], a[1]);
    assert_eq!(a[0].len(), 32);
}

#[test]
fn delivery_leads_to_a_review_request_and_replenishment_reminders_when_due() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    let delivered = delivered_ms();
    assert_eq!(engine.order_due(), Some(delivered + 7 * DAY));
    assert!(fired(&mut engine, delivered + 7 * DAY - 1).is_empty());
    let review = fired(&mut engine, delivered + 7 * DAY);
    assert_eq!(review.len(), 1);
    assert_eq!(review[0].kind, Kind::ReviewRequest);
    assert_eq!(review[0].occurred_at, rfc3339(delivered + 7 * DAY));
    // Two bags of coffee last twice the usage period; the mug has none.
    let reminder = fired(&mut engine, delivered + 60 * DAY);
    assert_eq!(reminder.len(), 1);
    assert_eq!(reminder[0].kind, Kind::ReplenishmentReminder);
    assert_eq!(reminder[0].product.as_ref().unwrap().id, PRODUCT);
    assert_eq!(engine.order_due(), None);
    assert!(fired(&mut engine, delivered + 90 * DAY).is_empty());
}

#[test]
fn marketing_touchpoints_need_consent_and_service_messages_do_not() {
    let mut engine = engine();
    assert_eq!(
        kinds(&engine.apply(0, SHOP, order(5, false), AT)),
        [Kind::OrderConfirmed]
    );
    assert_eq!(
        kinds(&engine.apply(0, SHOP, event(5, "delivered"), AT)),
        [Kind::Delivered]
    );
    let effects: Vec<Effect> = engine
        .fire_due(delivered_ms() + 7 * DAY)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert!(emitted(&effects).is_empty());
    assert!(effects.contains(&Effect::Count(Counted::Skipped(
        Kind::ReviewRequest,
        "no_consent"
    ))));
}

#[test]
fn consent_withdrawn_after_the_order_stops_the_review_request() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    engine.apply(
        0,
        SHOP,
        input(
            "customers_email_marketing_consent/update",
            serde_json::json!({"customer_id": 42, "email_marketing_consent":
                {"state": "unsubscribed", "consent_updated_at": "2026-11-05T00:00:00Z"}}),
        ),
        AT,
    );
    assert!(fired(&mut engine, delivered_ms() + 7 * DAY).is_empty());
}

#[test]
fn a_cancellation_or_a_full_refund_stops_the_timed_touchpoints() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    let cancelled = engine.apply(
        0,
        SHOP,
        input(
            "orders/cancelled",
            serde_json::json!({"id": 5, "cancelled_at": "2026-11-04T00:00:00Z"}),
        ),
        AT,
    );
    assert!(cancelled.contains(&Effect::Count(Counted::Stopped(Stop::Cancelled))));
    assert_eq!(engine.order_due(), None);
    assert!(fired(&mut engine, delivered_ms() + 90 * DAY).is_empty());

    let mut engine = self::engine();
    engine.apply(0, SHOP, order(6, true), AT);
    engine.apply(0, SHOP, event(6, "delivered"), AT);
    let refund = |amount: &str| {
        input(
            "refunds/create",
            serde_json::json!({"order_id": 6, "transactions":
                [{"kind": "refund", "status": "success", "amount": amount}]}),
        )
    };
    engine.apply(0, SHOP, refund("20.00"), AT);
    assert!(
        engine.order_due().is_some(),
        "a partial refund stops nothing"
    );
    let full = engine.apply(0, SHOP, refund("30.00"), AT);
    assert!(full.contains(&Effect::Count(Counted::Stopped(Stop::Refunded))));
    assert_eq!(engine.order_due(), None);
}

#[test]
fn fulfilments_before_their_order_are_told_when_the_order_arrives() {
    let mut engine = engine();
    assert!(emitted(&engine.apply(0, SHOP, event(5, "delivered"), AT)).is_empty());
    let effects = engine.apply(0, SHOP, order(5, true), AT);
    assert_eq!(kinds(&effects), [Kind::OrderConfirmed, Kind::Delivered]);
    assert_eq!(fired(&mut engine, delivered_ms() + 7 * DAY).len(), 1);
}

#[test]
fn delivery_problems_are_told_once_per_status() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    assert_eq!(
        kinds(&engine.apply(0, SHOP, event(5, "attempted_delivery"), AT)),
        [Kind::DeliveryProblem]
    );
    assert!(emitted(&engine.apply(0, SHOP, event(5, "attempted_delivery"), AT)).is_empty());
    assert_eq!(
        kinds(&engine.apply(0, SHOP, event(5, "failure"), AT)),
        [Kind::DeliveryProblem]
    );
}

#[test]
fn customers_redact_forgets_their_orders_and_timers() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    let effects = engine.apply(
        0,
        SHOP,
        input(
            "customers/redact",
            serde_json::json!({"shop_id": 1, "shop_domain": SHOP,
                "customer": {"id": 42, "email": "bea@example.com"}, "orders_to_redact": [5]}),
        ),
        AT,
    );
    assert!(effects.contains(&Effect::Persist {
        key: order_entity(SHOP, 5),
        entity: None
    }));
    assert_eq!(engine.order_due(), None);
    assert_eq!(engine.sizes().0, 0);
}

#[test]
fn shop_redact_forgets_only_that_shop() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, "other.myshopify.com", order(5, true), AT);
    engine.apply(
        0,
        SHOP,
        input("shop/redact", serde_json::json!({"shop_id": 1})),
        AT,
    );
    assert_eq!(engine.sizes().0, 1);
}

#[test]
fn a_relayed_invite_is_one_referral_invitation() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    let invite = aftercart_referrals::domain::event::InviteEvent {
        event_id: "abc".into(),
        event_type: "referral.invite".into(),
        shop: SHOP.into(),
        occurred_at: "2026-11-05T10:00:00.000Z".into(),
        advocate: aftercart_referrals::domain::event::AdvocateOut {
            customer_id: Some(42),
            email: Some("bea@example.com".into()),
            first_name: Some("Bea".into()),
            last_name: None,
            referral_code: "REF-X".into(),
        },
        order: aftercart_referrals::domain::event::OrderOut {
            id: 5,
            name: None,
            value: None,
            currency: None,
        },
        referral_code: "REF-X".into(),
        share_url: "https://shop/?ref=REF-X".into(),
    };
    let relay = Input::Invite(Box::new(InviteFact {
        invite: invite.clone(),
    }));
    let effects = engine.apply(0, SHOP, relay.clone(), AT);
    let touchpoints = emitted(&effects);
    assert_eq!(touchpoints.len(), 1);
    assert_eq!(touchpoints[0].kind, Kind::ReferralInvitation);
    assert_eq!(touchpoints[0].referral.as_ref().unwrap().code, "REF-X");
    assert!(emitted(&engine.apply(0, SHOP, relay.clone(), AT)).is_empty());

    let mut off = Engine::new(Rules {
        relay_invites: false,
        ..rules()
    });
    off.assign(0, HashMap::new());
    assert!(emitted(&off.apply(0, SHOP, relay, AT)).is_empty());
}

#[test]
fn test_orders_get_no_touchpoints() {
    let mut engine = engine();
    let body = serde_json::json!({"id": 5, "email": "t@example.com", "test": true});
    let effects = engine.apply(0, SHOP, input("orders/create", body), AT);
    assert!(emitted(&effects).is_empty());
}

#[test]
fn a_restored_touchpoint_is_not_emitted_again() {
    let mut engine = engine();
    let effects = engine.apply(0, SHOP, order(5, true), AT);
    let confirmed = emitted(&effects).remove(0);
    // A new owner restores the order as it was before the touchpoint went out.
    let before = OrderJourney {
        order_id: 5,
        known: true,
        email: Some("bea@example.com".into()),
        ..OrderJourney::default()
    };
    let mut restored = Engine::new(rules());
    restored.assign(
        0,
        HashMap::from([(order_entity(SHOP, 5), Entity::Order(before))]),
    );
    assert_eq!(restored.reconcile(0, &confirmed).len(), 1);
    assert!(emitted(&restored.apply(0, SHOP, order(5, true), AT)).is_empty());
}

#[test]
fn settled_orders_expire_after_the_retention() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    assert!(engine.expire(AT + 119 * DAY).is_empty());
    assert_eq!(engine.expire(AT + 121 * DAY).len(), 1);
}

fn reports(effects: &[(i32, Effect)]) -> Vec<crate::domain::kpis::KpiRecord> {
    effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Report { record, .. } => Some((**record).clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_shop_gets_one_kpi_record_when_its_day_ends() {
    let mut engine = engine();
    let day = AT.div_euclid(DAY);
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    engine.apply(
        0,
        SHOP,
        input("checkouts/create", serde_json::json!({"token": "t"})),
        AT,
    );
    // A repeat purchase by the same customer.
    engine.apply(0, SHOP, order(6, true), AT);
    assert!(reports(&engine.fire_due((day + 1) * DAY - 1)).is_empty());
    let first = reports(&engine.fire_due((day + 1) * DAY));
    assert_eq!(first.len(), 1);
    let record = &first[0];
    assert_eq!(record.shop, SHOP);
    assert_eq!(record.yesterday.orders, 2.0);
    assert_eq!(record.yesterday.repeat_purchase_rate, Some(0.5));
    assert_eq!(record.yesterday.revenue["EUR"], 100.0);
    assert_eq!(record.yesterday.deliveries, 1.0);
    assert_eq!(record.yesterday.checkouts_started, 1.0);
    assert_eq!(record.previous_7_days.orders, 0.0);
    // The next day without facts still reports (zeros against the week), once.
    let second = reports(&engine.fire_due((day + 2) * DAY));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].yesterday.orders, 0.0);
    assert_eq!(second[0].previous_7_days.orders, 2.0 / 7.0);
    assert_ne!(second[0].event_id, record.event_id);
    assert!(reports(&engine.fire_due((day + 2) * DAY + 1)).is_empty());
}

#[test]
fn a_restored_kpi_record_is_not_reported_again() {
    let mut engine = engine();
    let day = AT.div_euclid(DAY);
    engine.apply(0, SHOP, order(5, true), AT);
    let record = reports(&engine.fire_due((day + 1) * DAY)).remove(0);
    let mut restored = Engine::new(rules());
    restored.assign(0, HashMap::new());
    restored.apply(0, SHOP, order(7, true), AT);
    assert_eq!(restored.reconcile_report(0, &record).len(), 1);
    assert!(reports(&restored.fire_due((day + 1) * DAY)).is_empty());
}

#[test]
fn a_refund_delivered_twice_counts_once_and_a_partial_refund_stops_nothing() {
    // Shopify delivers a webhook at least once; a second delivery of the same 30.00 refund (a
    // retry past the ingress dedupe window, another ingress replica) is still a 30.00 refund
    // of a 50.00 order.
    let mut engine = engine();
    engine.apply(0, SHOP, order(6, true), AT);
    engine.apply(0, SHOP, event(6, "delivered"), AT);
    let refund = input(
        "refunds/create",
        serde_json::json!({"id": 929361464, "order_id": 6, "transactions":
            [{"kind": "refund", "status": "success", "amount": "30.00"}]}),
    );
    engine.apply(0, SHOP, refund.clone(), AT);
    let again = engine.apply(0, SHOP, refund, AT);
    assert!(!again.contains(&Effect::Count(Counted::Stopped(Stop::Refunded))));
    assert!(
        engine.order_due().is_some(),
        "one partial refund seen twice stops nothing"
    );
    assert_eq!(fired(&mut engine, delivered_ms() + 7 * DAY).len(), 1);
}

#[test]
fn a_delivery_problem_before_its_order_is_told_when_the_order_arrives() {
    let mut engine = engine();
    assert!(emitted(&engine.apply(0, SHOP, event(5, "attempted_delivery"), AT)).is_empty());
    let effects = engine.apply(0, SHOP, order(5, true), AT);
    assert_eq!(
        kinds(&effects),
        [Kind::OrderConfirmed, Kind::DeliveryProblem]
    );
    let problem = &emitted(&effects)[1];
    assert_eq!(
        problem.fulfillment.as_ref().unwrap().status,
        "attempted_delivery"
    );
    assert!(emitted(&engine.apply(0, SHOP, order(5, true), AT)).is_empty());
    // Delivered after the problem: the problem is not told late.
    let mut engine = self::engine();
    engine.apply(0, SHOP, event(5, "attempted_delivery"), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    let effects = engine.apply(0, SHOP, order(5, true), AT);
    assert_eq!(kinds(&effects), [Kind::OrderConfirmed, Kind::Delivered]);
}

#[test]
fn an_order_updated_after_it_was_forgotten_is_neither_confirmed_nor_counted_again() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    let later = delivered_ms() + 90 * DAY;
    assert_eq!(
        fired(&mut engine, later).len(),
        2,
        "review and replenishment"
    );
    let forgotten = later + 121 * DAY;
    assert_eq!(engine.expire(forgotten).len(), 1);
    // Months later the merchant archives or tags the order: Shopify sends orders/updated.
    let Input::Order(mut updated) = order(5, true) else {
        unreachable!()
    };
    updated.updated_topic = true;
    let effects = engine.apply(0, SHOP, Input::Order(updated), forgotten);
    assert!(emitted(&effects).is_empty(), "no second order confirmation");
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Count(Counted::Kpi(Fact::Order { .. })))),
        "an old order is not today's order (nor a repeat purchase)"
    );
    // An order first seen on orders/create or orders/paid is new, whatever its date says.
    let effects = engine.apply(0, SHOP, order(6, true), forgotten);
    assert_eq!(kinds(&effects), [Kind::OrderConfirmed]);
}

#[test]
fn a_fact_stamped_before_midnight_but_read_after_its_day_was_reported_counts_the_next_day() {
    let mut engine = engine();
    let day = AT.div_euclid(DAY);
    let checkout = || input("checkouts/create", serde_json::json!({"token": "t"}));
    engine.apply(0, SHOP, checkout(), AT);
    let first = reports(&engine.fire_due((day + 1) * DAY));
    assert_eq!(first[0].yesterday.orders, 0.0);
    // An order stamped a second before midnight, read just after the report went out (the
    // record still on its way through the by-shop topic).
    engine.apply(0, SHOP, order(5, true), (day + 1) * DAY - 1000);
    let second = reports(&engine.fire_due((day + 2) * DAY));
    assert_eq!(
        first[0].yesterday.orders + second[0].yesterday.orders,
        1.0,
        "every order is in exactly one record"
    );
}

#[test]
fn a_partial_refund_in_the_customers_currency_is_not_taken_for_a_full_refund() {
    // A multi-currency order: total_price is in the shop's currency (EUR 50.00), refunds are in
    // the customer's (JPY): 3000 yen back is no full refund.
    let refund = || {
        input(
            "refunds/create",
            serde_json::json!({"id": 1, "order_id": 6, "transactions":
                [{"kind": "refund", "status": "success", "amount": "3000", "currency": "JPY"}]}),
        )
    };
    let mut engine = engine();
    engine.apply(0, SHOP, order(6, true), AT);
    engine.apply(0, SHOP, event(6, "delivered"), AT);
    engine.apply(0, SHOP, refund(), AT);
    assert!(engine.order_due().is_some(), "the order known first");
    let mut engine = self::engine();
    engine.apply(0, SHOP, refund(), AT);
    engine.apply(0, SHOP, order(6, true), AT);
    engine.apply(0, SHOP, event(6, "delivered"), AT);
    assert!(engine.order_due().is_some(), "the refund read first");
}

/// The report a data request about `customer` (with `data_request.id` 5) is answered with.
fn data_request(
    engine: &mut Engine,
    customer: serde_json::Value,
    orders: &[u64],
) -> aftercart_shopify::privacy::DataRequestReport {
    let body = serde_json::json!({"shop_domain": SHOP, "customer": customer,
                                  "orders_requested": orders, "data_request": {"id": 5}});
    let effects = engine.apply(0, SHOP, input("customers/data_request", body), AT);
    match effects.as_slice() {
        [Effect::Answer { key, report }] => {
            assert_eq!(key, &format!("{SHOP}/data-request"));
            (**report).clone()
        }
        other => panic!("one answer: {other:?}"),
    }
}

fn held(report: &aftercart_shopify::privacy::DataRequestReport) -> Vec<(&str, &str)> {
    report
        .holdings
        .iter()
        .map(|h| (h.kind.as_str(), h.key.as_str()))
        .collect()
}

#[test]
fn a_data_request_reports_the_customers_orders_touchpoints_and_consent() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(0, SHOP, event(5, "delivered"), AT);
    engine.apply(
        0,
        SHOP,
        input(
            "customers/update",
            serde_json::json!({"id": 42, "email_marketing_consent": {"state": "subscribed",
                "consent_updated_at": "2026-11-02T10:00:00Z"}}),
        ),
        AT,
    );
    let report = data_request(&mut engine, serde_json::json!({"id": 42}), &[]);
    assert_eq!(report.service, "journey");
    assert_eq!(report.data_request_id, Some(5));
    let order = order_entity(SHOP, 5);
    let consent = customer_entity(SHOP, 42);
    let buyer = buyer_entity(SHOP, 42);
    assert_eq!(
        held(&report),
        [
            ("order", order.as_str()),
            ("consent", consent.as_str()),
            ("buyer", buyer.as_str())
        ]
    );
    let data = &report.holdings[0].data;
    assert_eq!(data["stored"]["email"], "bea@example.com");
    assert_eq!(
        data["contact_fields"],
        serde_json::json!(["email", "first_name"])
    );
    let sent: Vec<&str> = data["touchpoints_sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(sent.contains(&"order_confirmed"), "{sent:?}");
    let scheduled: Vec<&str> = data["touchpoints_scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(scheduled, ["review_request", "replenishment_reminder"]);
    assert_eq!(report.holdings[1].data["stored"]["subscribed"], true);
    // By email alone, or by an order the request lists: the same order.
    let by_email = data_request(
        &mut engine,
        serde_json::json!({"email": "BEA@example.com"}),
        &[],
    );
    assert_eq!(held(&by_email), [("order", order.as_str())]);
    let by_order = data_request(&mut engine, serde_json::json!({}), &[5]);
    assert_eq!(held(&by_order), [("order", order.as_str())]);
}

#[test]
fn a_data_request_reports_no_order_of_another_customer_sharing_the_email() {
    let mut engine = engine();
    engine.apply(0, SHOP, order(5, true), AT);
    let report = data_request(
        &mut engine,
        serde_json::json!({"id": 7, "email": "bea@example.com"}),
        &[5],
    );
    assert!(report.holdings.is_empty(), "{report:?}");
}

#[test]
fn a_customer_held_nowhere_or_redacted_still_gets_an_answer_saying_so() {
    let mut engine = engine();
    let nobody = data_request(&mut engine, serde_json::json!({"id": 99}), &[]);
    assert!(nobody.holdings.is_empty());
    engine.apply(0, SHOP, order(5, true), AT);
    engine.apply(
        0,
        SHOP,
        input(
            "customers/redact",
            serde_json::json!({"customer": {"id": 42}, "orders_to_redact": [5]}),
        ),
        AT,
    );
    let redacted = data_request(&mut engine, serde_json::json!({"id": 42}), &[5]);
    // Only the redaction's markers are left: pseudonyms and their time.
    let kinds: Vec<(&str, &str)> = redacted
        .holdings
        .iter()
        .map(|h| (h.kind.as_str(), h.key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("redaction", &*format!("redacted/{SHOP}/customer/42")),
            ("redaction", &*format!("redacted/{SHOP}/order/5")),
        ]
    );
}

mod redaction;

/// The records `effects` write (deletions left out), in order.
fn written(effects: &[Effect]) -> Vec<(String, Entity)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist {
                key,
                entity: Some(entity),
            } => Some((key.clone(), (**entity).clone())),
            _ => None,
        })
        .collect()
}

/// A crash can leave a prefix of a batch's changelog writes: here the buyer's and the shop's
/// records of an order, without the order's own (it is written last). The batch is read again
/// from its first offset: the order is counted once in the day, and not as a repeat purchase.
#[test]
fn an_order_read_again_after_a_crash_kept_its_counts_is_counted_once() {
    let mut first = engine();
    let effects = first.apply_from(0, SHOP, order(5, true), AT, Some(10));
    let written = written(&effects);
    assert!(
        written
            .last()
            .is_some_and(|(key, _)| key.starts_with("order/")),
        "the order's record is written last: {written:?}"
    );
    let prefix: HashMap<String, Entity> = written
        .into_iter()
        .filter(|(key, _)| !key.starts_with("order/"))
        .collect();
    assert_eq!(prefix.len(), 2, "the buyer's and the shop's: {prefix:?}");

    let mut restarted = Engine::new(rules());
    restarted.assign(0, prefix);
    let again = restarted.apply_from(0, SHOP, order(5, true), AT, Some(10));
    assert!(
        !again
            .iter()
            .any(|e| matches!(e, Effect::Count(Counted::Kpi(_)))),
        "not counted again: {again:?}"
    );
    // The next order of the same buyer, later in the batch, counts, as a repeat purchase.
    let next = restarted.apply_from(0, SHOP, order(6, true), AT, Some(11));
    assert!(next.iter().any(|e| matches!(
        e,
        Effect::Count(Counted::Kpi(Fact::Order { repeat: true, .. }))
    )));
    let day = AT.div_euclid(DAY);
    let reported = reports(&restarted.fire_due((day + 1) * DAY));
    assert_eq!(reported[0].yesterday.orders, 2.0);
    assert_eq!(reported[0].yesterday.repeat_orders, 1.0);

    // Without the crash, the same two orders count the same.
    let mut once = engine();
    once.apply_from(0, SHOP, order(5, true), AT, Some(10));
    once.apply_from(0, SHOP, order(6, true), AT, Some(11));
    let reported = reports(&once.fire_due((day + 1) * DAY));
    assert_eq!(reported[0].yesterday.orders, 2.0);
    assert_eq!(reported[0].yesterday.repeat_orders, 1.0);
}

/// The prefix a crash keeps can hold the buyer's record of two new orders without the shop's:
/// read again, the first of them is not a repeat purchase, the second is.
#[test]
fn orders_read_again_keep_their_repeat_classification() {
    let mut first = engine();
    let mut effects = first.apply_from(0, SHOP, order(5, true), AT, Some(10));
    effects.extend(first.apply_from(0, SHOP, order(6, true), AT, Some(11)));
    let buyer: HashMap<String, Entity> = written(&effects)
        .into_iter()
        .filter(|(key, _)| key.starts_with("buyer/"))
        .collect();
    let mut restarted = Engine::new(rules());
    restarted.assign(0, buyer);
    let repeats: Vec<bool> = [(5, 10), (6, 11)]
        .into_iter()
        .flat_map(|(id, offset)| restarted.apply_from(0, SHOP, order(id, true), AT, Some(offset)))
        .filter_map(|e| match e {
            Effect::Count(Counted::Kpi(Fact::Order { repeat, .. })) => Some(repeat),
            _ => None,
        })
        .collect();
    assert_eq!(repeats, [false, true]);
}

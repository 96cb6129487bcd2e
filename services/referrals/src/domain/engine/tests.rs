//! Engine scenarios: invites, attribution, rewards, fraud, privacy, restore.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::domain::code::test_rules;
use crate::domain::input::decode_input;

const SHOP: &str = "shop.myshopify.com";
const P: i32 = 0;
const SEC: i64 = 1000;
const DAY: i64 = 86_400 * SEC;

fn rules() -> Rules {
    Rules {
        codes: test_rules(),
        trigger: Trigger::Paid,
        invite_delay_ms: 0,
        invite_min_value: Amount::parse("0").unwrap(),
        cooldown_ms: 90 * DAY,
        reward_min_value: Amount::parse("20").unwrap(),
        review_window_ms: 30 * DAY,
        ip_burst_max: 3,
        ip_burst_window_ms: DAY,
        order_retention_ms: 60 * DAY,
        redaction_retention_ms: 400 * DAY,
        hasher: StateHasher::new(*b"referrals-test-state-hash-key").unwrap(),
    }
}

/// A non-test paid order of customer `customer` (id) with marketing consent.
fn order(id: u64, customer: u64) -> Value {
    json!({
        "id": id,
        "name": format!("#{id}"),
        "email": format!("buyer{customer}@example.com"),
        "customer": {"id": customer, "email": format!("buyer{customer}@example.com"),
                     "first_name": "Ann", "last_name": format!("Buyer{customer}")},
        "buyer_accepts_marketing": true,
        "financial_status": "paid",
        "subtotal_price": "50.00",
        "total_price": "55.00",
        "currency": "EUR",
        "test": false,
        "created_at": format!("2026-01-01T00:00:{:02}Z", id % 60),
        "browser_ip": format!("10.0.0.{customer}"),
        "shipping_address": {"first_name": "Ann", "last_name": format!("Buyer{customer}"),
                             "address1": format!("{customer} Main St"), "zip": "1000", "country_code": "BE"},
    })
}

fn with_code(mut body: Value, code: &str) -> Value {
    body["discount_codes"] = json!([{"code": code, "amount": "5.00", "type": "fixed_amount"}]);
    body
}

struct World {
    engine: Engine,
    emitted: Vec<Output>,
    counted: Vec<Counted>,
    persisted: HashMap<String, Option<Box<Entity>>>,
}

impl World {
    fn new() -> World {
        World::with(rules())
    }

    fn with(rules: Rules) -> World {
        let mut engine = Engine::new(rules);
        engine.assign(P, HashMap::new());
        World {
            engine,
            emitted: Vec::new(),
            counted: Vec::new(),
            persisted: HashMap::new(),
        }
    }

    fn take(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Emit { output, .. } => self.emitted.push(output),
                Effect::Persist { key, entity } => {
                    self.persisted.insert(key, entity);
                }
                Effect::Count(c) => self.counted.push(c),
            }
        }
    }

    fn send(&mut self, topic: &str, body: &Value, at: i64) {
        let input = decode_input(Some(topic), body.to_string().as_bytes()).expect("decodes");
        let effects = self.engine.apply(P, SHOP, input, at);
        self.take(effects);
    }

    fn tick(&mut self, now: i64) {
        let effects = self.engine.fire_due(now);
        self.take(effects.into_iter().map(|(_, e)| e).collect());
    }

    fn types(&self) -> Vec<String> {
        self.emitted
            .iter()
            .map(|o| o.event_type().to_string())
            .collect()
    }

    fn invite_code(&self, customer: u64) -> String {
        self.emitted
            .iter()
            .find_map(|o| match o {
                Output::Invite(i) if i.advocate.customer_id == Some(customer) => {
                    Some(i.referral_code.clone())
                }
                _ => None,
            })
            .expect("the customer was invited")
    }

    fn rewards(&self) -> Vec<&RewardEvent> {
        self.emitted
            .iter()
            .filter_map(|o| match o {
                Output::Reward(r) => Some(r.as_ref()),
                _ => None,
            })
            .collect()
    }

    /// Advocate 1 bought and was invited; returns their code.
    fn advocate(&mut self) -> String {
        self.send("orders/paid", &order(100, 1), 0);
        self.invite_code(1)
    }

    /// A fresh engine restored from everything persisted so far.
    fn restarted(&self) -> World {
        let mut world = World::new();
        let entities = self
            .persisted
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|e| (k.clone(), (**e).clone())))
            .collect();
        world.engine.assign(P, entities);
        world.persisted = self.persisted.clone();
        world
    }
}

#[test]
fn a_paid_order_with_consent_makes_the_buyer_an_advocate_with_a_stable_code() {
    let mut world = World::new();
    let mut pending = order(100, 1);
    pending["financial_status"] = json!("pending");
    world.send("orders/create", &pending, 0);
    assert!(
        world.emitted.is_empty(),
        "an unpaid order is not the trigger"
    );
    let code = world.advocate();
    let Output::Invite(invite) = &world.emitted[0] else {
        panic!("an invite")
    };
    assert_eq!(invite.advocate.email.as_deref(), Some("buyer1@example.com"));
    assert_eq!(invite.order.id, 100);
    assert_eq!(invite.share_url, format!("https://{SHOP}/?ref={code}"));
    assert_eq!(code, rules().codes.code_for(SHOP, "id:1"));
    assert_eq!(invite.event_id, event_id(&format!("invite/{SHOP}/100")));
}

#[test]
fn an_invite_waits_for_its_delay_and_is_dropped_if_the_order_is_cancelled_meanwhile() {
    let mut world = World::with(Rules {
        invite_delay_ms: 3 * DAY,
        ..rules()
    });
    world.send("orders/paid", &order(100, 1), 0);
    world.tick(DAY);
    assert!(world.emitted.is_empty());
    world.tick(3 * DAY);
    assert_eq!(world.types(), ["invite"]);

    world.send("orders/paid", &order(200, 2), 0);
    world.send(
        "orders/cancelled",
        &json!({"id": 200, "cancelled_at": "2026-01-02T00:00:00Z"}),
        DAY,
    );
    world.tick(10 * DAY);
    assert_eq!(
        world.types(),
        ["invite"],
        "cancelled before the delay passed"
    );
    assert!(world.counted.contains(&Counted::InviteSkipped("negated")));
}

fn delivered_event(order_id: u64, happened: &str) -> Value {
    json!({"id": 9, "fulfillment_id": 7, "order_id": order_id, "status": "delivered",
           "happened_at": happened})
}

#[test]
fn with_the_delivered_trigger_the_invite_comes_its_delay_after_delivery_once() {
    let mut world = World::with(Rules {
        trigger: Trigger::Delivered,
        invite_delay_ms: 2 * DAY,
        ..rules()
    });
    world.send("orders/paid", &order(100, 1), 0);
    world.tick(30 * DAY);
    assert!(world.emitted.is_empty(), "paid but not delivered yet");
    // Delivered on day 31 (the carrier's time): invited on day 33.
    let delivered = 31 * DAY;
    let happened = aftercart_shopify::time::rfc3339(delivered);
    world.send(
        "fulfillments/update",
        &json!({"id": 7, "order_id": 100, "status": "success", "shipment_status": "in_transit"}),
        delivered,
    );
    world.send(
        "fulfillment_events/create",
        &delivered_event(100, &happened),
        delivered,
    );
    world.tick(delivered + 2 * DAY - 1);
    assert!(world.emitted.is_empty());
    world.tick(delivered + 2 * DAY);
    assert_eq!(world.types(), ["invite"]);
    world.send(
        "fulfillment_events/create",
        &delivered_event(100, &happened),
        delivered,
    );
    world.tick(90 * DAY);
    assert_eq!(world.types(), ["invite"], "one invite per buyer");
}

#[test]
fn with_the_delivered_trigger_a_delivery_seen_before_payment_still_counts() {
    let mut world = World::with(Rules {
        trigger: Trigger::Delivered,
        ..rules()
    });
    world.send(
        "fulfillments/update",
        &json!({"id": 7, "order_id": 100, "status": "success", "shipment_status": "delivered",
                "updated_at": "2026-01-01T00:00:00Z"}),
        0,
    );
    let delivered = aftercart_shopify::time::parse_time_ms("2026-01-01T00:00:00Z").unwrap();
    world.send("orders/paid", &order(100, 1), delivered + SEC);
    assert_eq!(world.types(), ["invite"], "no delay: invited at once");
}

#[test]
fn with_the_delivered_trigger_a_cancellation_before_delivery_drops_the_invite() {
    let mut world = World::with(Rules {
        trigger: Trigger::Delivered,
        ..rules()
    });
    world.send("orders/paid", &order(100, 1), 0);
    world.send(
        "orders/cancelled",
        &json!({"id": 100, "cancelled_at": "2026-01-02T00:00:00Z"}),
        DAY,
    );
    world.send(
        "fulfillment_events/create",
        &delivered_event(100, "2026-01-03T00:00:00Z"),
        2 * DAY,
    );
    world.tick(10 * DAY);
    assert!(world.emitted.is_empty());
    assert!(world.counted.contains(&Counted::InviteSkipped("negated")));
}

#[test]
fn a_refund_delivered_before_the_paid_order_prevents_the_invite() {
    let mut world = World::new();
    world.send("refunds/create", &json!({"id": 9, "order_id": 100}), 0);
    world.send("orders/paid", &order(100, 1), SEC);
    world.tick(DAY);
    assert!(world.emitted.is_empty());
}

#[test]
fn test_orders_small_orders_and_buyers_without_consent_are_not_invited() {
    let mut world = World::with(Rules {
        invite_min_value: Amount::parse("60").unwrap(),
        ..rules()
    });
    world.send("orders/paid", &order(100, 1), 0);
    let mut test = order(101, 2);
    test["test"] = json!(true);
    world.send("orders/paid", &test, 0);
    world.tick(DAY);
    assert!(world.emitted.is_empty());

    let mut world = World::new();
    let mut no_consent = order(102, 3);
    no_consent["buyer_accepts_marketing"] = json!(false);
    world.send("orders/paid", &no_consent, 0);
    world.tick(DAY);
    assert!(world.emitted.is_empty());
    assert_eq!(world.counted, [Counted::InviteSkipped("no_consent")]);
}

#[test]
fn consent_revoked_before_the_delay_passes_cancels_the_invite() {
    let mut world = World::with(Rules {
        invite_delay_ms: DAY,
        ..rules()
    });
    world.send("orders/paid", &order(100, 1), 0);
    world.send(
        "customers_email_marketing_consent/update",
        &json!({"customer_id": 1, "email_marketing_consent": {"state": "unsubscribed", "consent_updated_at": "2026-01-01T01:00:00Z"}}),
        SEC,
    );
    world.tick(2 * DAY);
    assert!(world.emitted.is_empty());
}

#[test]
fn a_customer_is_invited_at_most_once_per_cooldown() {
    let mut world = World::new();
    world.advocate();
    world.send("orders/paid", &order(101, 1), 10 * DAY);
    world.tick(10 * DAY);
    assert_eq!(world.types(), ["invite"]);
    world.send("orders/paid", &order(102, 1), 91 * DAY);
    world.tick(91 * DAY);
    assert_eq!(world.types(), ["invite", "invite"]);
    assert_eq!(
        world.invite_code(1),
        world
            .emitted
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::Invite(i) => Some(i.referral_code.clone()),
                _ => None,
            })
            .unwrap(),
        "the code is stable"
    );
}

#[test]
fn a_friends_first_order_with_the_code_is_pending_then_granted_after_the_review_window() {
    let mut world = World::new();
    let code = world.advocate();
    world.send(
        "orders/create",
        &with_code(order(200, 2), &code.to_lowercase()),
        DAY,
    );
    let rewards = world.rewards();
    assert_eq!(rewards.len(), 1);
    assert_eq!(rewards[0].event_type, "reward.pending");
    assert_eq!(rewards[0].advocate.customer_id, Some(1));
    assert_eq!(rewards[0].friend.order.id, 200);
    assert_eq!(rewards[0].attributed_via, "discount_code");
    assert_eq!(
        rewards[0].review_ends_at.as_deref(),
        Some(rfc3339(31 * DAY).as_str())
    );
    world.tick(30 * DAY);
    assert_eq!(world.rewards().len(), 1);
    world.tick(31 * DAY);
    let types: Vec<_> = world
        .rewards()
        .iter()
        .map(|r| r.event_type.clone())
        .collect();
    assert_eq!(types, ["reward.pending", "reward.granted"]);
    world.send(
        "refunds/create",
        &json!({"id": 1, "order_id": 200}),
        40 * DAY,
    );
    assert_eq!(
        world.rewards().len(),
        2,
        "a refund after the window changes nothing"
    );
}

/// The stage holds timers while records are left to read only for logic that says when its
/// next timer is due: without it, after an outage a reward whose review window passed was
/// granted on the wall clock while the friend's refund sat unread in the backlog.
#[test]
fn the_stage_is_told_when_the_next_invite_or_reward_is_due() {
    let mut world = World::with(Rules {
        invite_delay_ms: 3 * DAY,
        ..rules()
    });
    assert_eq!(world.engine.next_due(), None, "nothing waits");
    world.send("orders/paid", &order(100, 1), 0);
    assert_eq!(world.engine.next_due(), Some(3 * DAY), "the invite");
    world.tick(3 * DAY);
    let code = world.invite_code(1);
    world.send("orders/create", &with_code(order(200, 2), &code), 4 * DAY);
    assert_eq!(
        world.engine.next_due(),
        Some(7 * DAY),
        "the friend's own invite"
    );
    world.tick(7 * DAY);
    assert_eq!(
        world.engine.next_due(),
        Some(34 * DAY),
        "the reward's review window"
    );
}

#[test]
fn codes_in_the_landing_url_or_a_note_attribute_attribute_too() {
    let mut world = World::new();
    let code = world.advocate();
    let mut by_url = order(200, 2);
    by_url["landing_site"] = json!(format!("/?utm_source=x&ref={code}"));
    world.send("orders/paid", &by_url, DAY);
    let mut by_note = order(300, 3);
    by_note["note_attributes"] = json!([{"name": "ref", "value": code}]);
    world.send("orders/paid", &by_note, DAY);
    let via: Vec<_> = world
        .rewards()
        .iter()
        .map(|r| r.attributed_via.clone())
        .collect();
    assert_eq!(via, ["landing_site", "note_attribute"]);
}

#[test]
fn a_refund_cancellation_or_deletion_within_the_window_voids_the_reward() {
    for (topic, body) in [
        ("refunds/create", json!({"id": 1, "order_id": 200})),
        (
            "orders/cancelled",
            json!({"id": 200, "cancelled_at": "2026-01-03T00:00:00Z"}),
        ),
        ("orders/delete", json!({"id": 200})),
    ] {
        let mut world = World::new();
        let code = world.advocate();
        world.send("orders/paid", &with_code(order(200, 2), &code), DAY);
        world.send(topic, &body, 2 * DAY);
        world.tick(60 * DAY);
        let rewards = world.rewards();
        let types: Vec<_> = rewards.iter().map(|r| r.event_type.as_str()).collect();
        assert_eq!(types, ["reward.pending", "reward.voided"], "{topic}");
        assert!(rewards[1].reason.is_some());
        assert_eq!(
            rewards[1].event_id,
            event_id(&format!("reward.voided/{SHOP}/200"))
        );
    }
}

#[test]
fn a_friends_order_refunded_before_it_was_seen_is_pending_and_voided_at_once() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("refunds/create", &json!({"id": 1, "order_id": 200}), DAY);
    world.send("orders/paid", &with_code(order(200, 2), &code), DAY + SEC);
    let types: Vec<_> = world
        .rewards()
        .iter()
        .map(|r| r.event_type.clone())
        .collect();
    assert_eq!(types, ["reward.pending", "reward.voided"]);
}

#[test]
fn a_friends_second_order_earns_nothing() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &order(200, 2), DAY);
    world.send("orders/paid", &with_code(order(201, 2), &code), 2 * DAY);
    assert!(world.rewards().is_empty());
    assert!(world
        .counted
        .contains(&Counted::Attribution("not_first_order")));

    // Shopify's own count says there were orders before aftercart saw any.
    let mut world = World::new();
    let code = world.advocate();
    let mut returning = with_code(order(300, 3), &code);
    returning["customer"]["orders_count"] = json!(4);
    world.send("orders/paid", &returning, DAY);
    assert!(world.rewards().is_empty());
}

#[test]
fn a_late_delivered_earlier_order_voids_the_pending_reward() {
    let mut world = World::new();
    let code = world.advocate();
    let mut later = with_code(order(200, 2), &code);
    later["created_at"] = json!("2026-01-05T00:00:00Z");
    world.send("orders/paid", &later, DAY);
    let mut earlier = order(150, 2);
    earlier["created_at"] = json!("2026-01-02T00:00:00Z");
    world.send("orders/paid", &earlier, 2 * DAY);
    let rewards = world.rewards();
    let types: Vec<_> = rewards.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(types, ["reward.pending", "reward.voided"]);
    assert_eq!(rewards[1].reason.as_deref(), Some("not_first_order"));
}

#[test]
fn the_earlier_order_delivered_late_takes_the_referral_over() {
    let mut world = World::new();
    let first = world.advocate();
    world.send("orders/paid", &order(101, 5), 0);
    let second = world.invite_code(5);
    let mut later = with_code(order(201, 2), &second);
    later["created_at"] = json!("2026-01-05T00:00:00Z");
    world.send("orders/paid", &later, DAY);
    let mut earlier = with_code(order(200, 2), &first);
    earlier["created_at"] = json!("2026-01-02T00:00:00Z");
    world.send("orders/paid", &earlier, DAY + SEC);
    let summary: Vec<_> = world
        .rewards()
        .iter()
        .map(|r| {
            (
                r.event_type.clone(),
                r.friend.order.id,
                r.advocate.customer_id,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("reward.pending".to_string(), 201, Some(5)),
            ("reward.voided".to_string(), 201, Some(5)),
            ("reward.pending".to_string(), 200, Some(1)),
        ]
    );
}

#[test]
fn a_cancellation_delivered_before_the_order_still_lets_the_order_be_attributed() {
    let mut world = World::new();
    let code = world.advocate();
    world.send(
        "orders/cancelled",
        &json!({"id": 200, "cancelled_at": "2026-01-03T00:00:00Z"}),
        DAY,
    );
    world.send("orders/paid", &with_code(order(200, 2), &code), DAY + SEC);
    let types: Vec<_> = world
        .rewards()
        .iter()
        .map(|r| r.event_type.clone())
        .collect();
    assert_eq!(types, ["reward.pending", "reward.voided"]);
}

#[test]
fn one_friend_is_claimed_by_only_one_advocate() {
    let mut world = World::new();
    let first = world.advocate();
    world.send("orders/paid", &order(101, 5), 0);
    world.tick(0);
    let second = world.invite_code(5);
    assert_ne!(first, second);
    let mut both = with_code(order(200, 2), &first);
    both["note_attributes"] = json!([{"name": "ref", "value": second}]);
    world.send("orders/paid", &both, DAY);
    world.send("orders/paid", &with_code(order(201, 2), &second), 2 * DAY);
    let rewards = world.rewards();
    assert_eq!(rewards.len(), 1);
    assert_eq!(
        rewards[0].advocate.customer_id,
        Some(1),
        "the discount code has priority"
    );
}

#[test]
fn self_referral_is_rejected_by_each_signal() {
    // The advocate's own code on their own next order.
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &with_code(order(101, 1), &code), DAY);
    assert_eq!(world.rewards()[0].event_type, "reward.rejected");
    assert_eq!(world.rewards()[0].reason.as_deref(), Some("same_customer"));

    // Another customer account with the same mailbox (Gmail dots and a +tag), even after the
    // advocate ordered again with another address.
    let mut world = World::new();
    let mut advocate = order(100, 1);
    advocate["customer"]["email"] = json!("ann.buyer@gmail.com");
    world.send("orders/paid", &advocate, 0);
    let code = world.invite_code(1);
    world.send("orders/paid", &order(101, 1), SEC);
    let mut friend = with_code(order(200, 2), &code);
    friend["customer"]["email"] = json!("AnnBuyer+friend@gmail.com");
    world.send("orders/paid", &friend, DAY);
    assert_eq!(world.rewards()[0].reason.as_deref(), Some("same_email"));

    // Same person and street under a new account and email.
    let mut world = World::new();
    let code = world.advocate();
    let mut friend = with_code(order(200, 2), &code);
    friend["shipping_address"] = json!({"first_name": "ANN", "last_name": "buyer1", "address1": "1 Main St.", "zip": "1000", "country_code": "be"});
    world.send("orders/paid", &friend, DAY);
    assert_eq!(
        world.rewards()[0].reason.as_deref(),
        Some("same_name_address")
    );
    assert_eq!(world.rewards().len(), 1, "a rejected reward is final");
}

#[test]
fn a_burst_of_referred_orders_from_one_ip_is_rejected_beyond_the_limit() {
    let mut world = World::new();
    let code = world.advocate();
    for friend in 2..=6u64 {
        let mut body = with_code(order(200 + friend, friend), &code);
        body["browser_ip"] = json!("203.0.113.7");
        world.send("orders/paid", &body, DAY + friend as i64 * SEC);
    }
    let reasons: Vec<_> = world.rewards().iter().map(|r| r.reason.clone()).collect();
    assert_eq!(
        reasons,
        [
            None,
            None,
            None,
            Some("ip_burst".into()),
            Some("ip_burst".into())
        ]
    );
    // After the window the IP may refer again.
    let mut body = with_code(order(300, 30), &code);
    body["browser_ip"] = json!("203.0.113.7");
    world.send("orders/paid", &body, 3 * DAY);
    assert_eq!(world.rewards().last().unwrap().event_type, "reward.pending");
}

#[test]
fn unknown_codes_and_small_orders_earn_nothing() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &with_code(order(200, 2), "SUMMER10"), DAY);
    let mut small = with_code(order(300, 3), &code);
    small["subtotal_price"] = json!("19.99");
    world.send("orders/paid", &small, DAY);
    assert!(world.rewards().is_empty());
    assert!(world
        .counted
        .contains(&Counted::Attribution("unknown_code")));
    assert!(world
        .counted
        .contains(&Counted::Attribution("below_minimum")));
}

#[test]
fn redacting_the_advocate_forgets_them_and_their_code_and_voids_pending_rewards() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &with_code(order(200, 2), &code), DAY);
    world.send(
        "customers/redact",
        &json!({"shop_id": 1, "shop_domain": SHOP, "customer": {"id": 1, "email": "buyer1@example.com"}}),
        2 * DAY,
    );
    let last = (*world.rewards().last().unwrap()).clone();
    assert_eq!(last.event_type, "reward.voided");
    assert_eq!(last.reason.as_deref(), Some("advocate_redacted"));
    assert!(world.persisted[&format!("c/{SHOP}/id:1")].is_none());
    assert!(world.persisted[&format!("o/{SHOP}/100")].is_none());
    world.send("orders/paid", &with_code(order(300, 3), &code), 3 * DAY);
    assert_eq!(world.rewards().len(), 2, "the code no longer resolves");
}

#[test]
fn redacting_the_shop_forgets_everything_of_that_shop_only() {
    let mut world = World::new();
    world.advocate();
    let other = "other.myshopify.com";
    let input = decode_input(Some("orders/paid"), order(500, 9).to_string().as_bytes()).unwrap();
    let effects = world.engine.apply(P, other, input, 0);
    world.take(effects);
    let effects = world.engine.apply(P, SHOP, Input::RedactShop, DAY);
    world.take(effects);
    let live: Vec<_> = world
        .persisted
        .iter()
        .filter(|(k, v)| v.is_some() && !k.starts_with("r/"))
        .map(|(k, _)| shop_of_entity(k).to_string())
        .collect();
    assert!(!live.is_empty());
    assert!(live.iter().all(|shop| shop == other), "{live:?}");
    // Only the redaction itself is remembered of the shop, and it holds no personal data.
    let Some(Some(marker)) = world.persisted.get(&format!("r/{SHOP}/shop")) else {
        panic!("the shop's redaction is remembered");
    };
    assert!(matches!(&**marker, Entity::Redaction(r) if r.shop));
}

/// `customers/redact` of customer 1 (buyer1@example.com, +1 555 010 0001) and `orders`.
fn redact_one(orders: &[u64]) -> Value {
    json!({"shop_id": 1, "shop_domain": SHOP, "orders_to_redact": orders,
           "customer": {"id": 1, "email": "Buyer1@Example.com", "phone": "555-010-0001"}})
}

fn redacted_count(world: &World) -> usize {
    world
        .counted
        .iter()
        .filter(|c| **c == Counted::Redacted)
        .count()
}

#[test]
fn a_fact_read_after_the_redaction_never_recreates_the_person() {
    let mut world = World::new();
    world.send("customers/redact", &redact_one(&[]), DAY);
    // The order was placed before the redaction and was in flight on the orders topic.
    world.send("orders/paid", &order(100, 1), 2 * DAY);
    world.send(
        "customers/update",
        &json!({"id": 1, "email_marketing_consent": {"state": "subscribed"}}),
        2 * DAY,
    );
    world.tick(40 * DAY);
    assert!(world.emitted.is_empty(), "{:?}", world.types());
    assert_eq!(redacted_count(&world), 2);
    let live: Vec<_> = world
        .persisted
        .iter()
        .filter(|(k, v)| v.is_some() && !k.starts_with("r/"))
        .collect();
    assert!(live.is_empty(), "{live:?}");
    // The redaction survives a restart.
    let mut restarted = world.restarted();
    restarted.send("orders/paid", &order(101, 1), 3 * DAY);
    assert!(restarted.emitted.is_empty());
    assert_eq!(redacted_count(&restarted), 1);
}

#[test]
fn a_redaction_matches_by_email_phone_and_listed_orders_without_the_customer_id() {
    let mut world = World::new();
    world.send("customers/redact", &redact_one(&[700]), DAY);
    // A guest order by the same mailbox (another spelling), no customer id.
    let mut by_email = order(500, 5);
    by_email["customer"] = Value::Null;
    by_email["email"] = json!("buyer1+shop@example.com");
    world.send("orders/paid", &by_email, 2 * DAY);
    // Another customer record with the redacted phone in another format.
    let mut by_phone = order(600, 6);
    by_phone["customer"]["phone"] = json!("+1 (555) 010-0001");
    world.send("orders/paid", &by_phone, 2 * DAY);
    // An order the request listed, whoever it names.
    world.send("orders/paid", &order(700, 7), 2 * DAY);
    world.send(
        "refunds/create",
        &json!({"id": 1, "order_id": 700}),
        2 * DAY,
    );
    assert!(world.emitted.is_empty(), "{:?}", world.types());
    assert_eq!(redacted_count(&world), 4);
    // Someone else is untouched.
    world.send("orders/paid", &order(800, 8), 2 * DAY);
    assert_eq!(world.types(), ["invite"]);
}

#[test]
fn a_redacted_phone_does_not_cover_another_countrys_number_with_the_same_last_digits() {
    let mut world = World::new();
    let body = json!({"shop_id": 1, "shop_domain": SHOP, "orders_to_redact": [],
                      "customer": {"id": 99, "phone": "+1 770-090-0123"}});
    world.send("customers/redact", &body, DAY);
    // The same number written nationally: the redacted person.
    let mut same = order(500, 5);
    same["customer"]["phone"] = json!("(770) 090-0123");
    world.send("orders/paid", &same, 2 * DAY);
    assert!(world.emitted.is_empty(), "{:?}", world.types());
    // A UK mobile ending in the same ten digits: someone else, invited as usual.
    let mut other = order(600, 6);
    other["customer"]["phone"] = json!("+44 7700 900123");
    world.send("orders/paid", &other, 2 * DAY);
    assert_eq!(world.types(), ["invite"]);
}

#[test]
fn a_redaction_retention_at_the_limit_keeps_the_marker_without_overflow() {
    // The longest retention the settings can express: the marker is kept, nothing overflows.
    let mut world = World::with(Rules {
        redaction_retention_ms: i64::MAX,
        ..rules()
    });
    world.send("customers/redact", &redact_one(&[]), DAY);
    let effects = world.engine.expire(2 * DAY);
    world.take(effects.into_iter().map(|(_, e)| e).collect());
    world.send("orders/paid", &order(500, 1), 3 * DAY);
    assert!(world.emitted.is_empty(), "{:?}", world.types());
}

#[test]
fn redacting_a_listed_order_forgets_it_and_voids_its_reward() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &with_code(order(200, 2), &code), DAY);
    let body = json!({"shop_id": 1, "shop_domain": SHOP, "orders_to_redact": [200],
                      "customer": {"id": 99}});
    world.send("customers/redact", &body, 2 * DAY);
    let last = (*world.rewards().last().unwrap()).clone();
    assert_eq!(last.event_type, "reward.voided");
    assert!(world.persisted[&format!("o/{SHOP}/200")].is_none());
    world.tick(40 * DAY);
    assert!(!world.types().contains(&"reward.granted".to_string()));
}

#[test]
fn a_waiting_invite_of_a_redacted_customer_is_never_sent() {
    let mut world = World::with(Rules {
        invite_delay_ms: DAY,
        ..rules()
    });
    world.send("orders/paid", &order(100, 1), 0);
    world.send("customers/redact", &redact_one(&[]), DAY / 2);
    world.tick(2 * DAY);
    assert!(world.emitted.is_empty(), "{:?}", world.types());
}

#[test]
fn facts_about_a_redacted_shop_are_dropped_and_redactions_expire_after_their_retention() {
    let mut world = World::new();
    let effects = world.engine.apply(P, SHOP, Input::RedactShop, DAY);
    world.take(effects);
    // Received up to the redaction: in flight when it came.
    world.send("orders/paid", &order(100, 1), DAY);
    assert!(world.emitted.is_empty());
    assert_eq!(redacted_count(&world), 1);
    // After the retention period the redaction is forgotten (and tombstoned).
    let effects = world.engine.expire(402 * DAY);
    world.take(effects.into_iter().map(|(_, e)| e).collect());
    assert!(world.persisted[&format!("r/{SHOP}/shop")].is_none());
    world.send("orders/paid", &order(101, 1), 403 * DAY);
    assert_eq!(world.types(), ["invite"]);
}

/// `shop/redact` drops the shop's facts received up to it (late, replayed, in flight); a shop
/// that reinstalls afterwards starts afresh at once, not after the redaction retention.
#[test]
fn a_shop_that_reinstalls_after_its_redaction_starts_afresh() {
    let mut world = World::new();
    let effects = world.engine.apply(P, SHOP, Input::RedactShop, 10 * DAY);
    world.take(effects);
    world.send("orders/paid", &order(100, 1), 9 * DAY);
    assert!(world.emitted.is_empty());
    assert_eq!(redacted_count(&world), 1);
    world.send("orders/paid", &order(101, 1), 15 * DAY);
    assert_eq!(world.types(), ["invite"]);
    // A customer redacted before the shop's redaction stays forgotten after the reinstall.
    world.send("customers/redact", &redact_one(&[]), 16 * DAY);
    let effects = world.engine.apply(P, SHOP, Input::RedactShop, 17 * DAY);
    world.take(effects);
    world.send("orders/paid", &order(103, 1), 20 * DAY);
    assert_eq!(world.types(), ["invite"], "nothing new");
    assert_eq!(redacted_count(&world), 2);
    // A restart keeps the marker and the same rule.
    let mut restarted = world.restarted();
    restarted.send("orders/paid", &order(102, 2), 9 * DAY);
    assert_eq!(redacted_count(&restarted), 1);
}

#[test]
fn a_restart_mid_review_window_grants_once_at_the_end() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &with_code(order(200, 2), &code), DAY);
    let mut restarted = world.restarted();
    restarted.tick(31 * DAY);
    assert_eq!(restarted.types(), ["reward.granted"]);
    // Replaying the friend's order after the restart changes nothing.
    restarted.send("orders/paid", &with_code(order(200, 2), &code), DAY);
    restarted.tick(40 * DAY);
    assert_eq!(restarted.types(), ["reward.granted"]);
}

#[test]
fn an_invite_emitted_before_any_state_was_persisted_is_not_sent_again() {
    let mut world = World::new();
    world.send("orders/paid", &order(100, 1), 0);
    let Output::Invite(invite) = world.emitted[0].clone() else {
        panic!("an invite first")
    };
    // Killed after writing the invite, before any changelog record: nothing to restore...
    let mut restarted = World::new();
    let emitted: EmittedEvent =
        serde_json::from_value(serde_json::to_value(&*invite).unwrap()).unwrap();
    let effects = restarted.engine.reconcile(P, &emitted);
    restarted.take(effects);
    // ...and the uncommitted order is read again.
    restarted.send("orders/paid", &order(100, 1), 0);
    restarted.tick(DAY);
    assert!(restarted.emitted.is_empty(), "{:?}", restarted.types());
    // The advocate's code still resolves for friends.
    restarted.send(
        "orders/paid",
        &with_code(order(200, 2), &invite.referral_code),
        DAY,
    );
    assert_eq!(restarted.types(), ["reward.pending", "invite"]);
}

#[test]
fn reconciling_an_emitted_invite_prevents_a_second_one() {
    let mut world = World::with(Rules {
        invite_delay_ms: SEC,
        ..rules()
    });
    world.send("orders/paid", &order(100, 1), 0);
    let before_fire = world.restarted();
    world.tick(SEC);
    let Output::Invite(invite) = world.emitted[0].clone() else {
        panic!()
    };
    let mut restarted = before_fire;
    let emitted: EmittedEvent =
        serde_json::from_value(serde_json::to_value(&*invite).unwrap()).unwrap();
    let effects = restarted.engine.reconcile(P, &emitted);
    restarted.take(effects);
    restarted.tick(DAY);
    assert!(restarted.emitted.is_empty());
    // And the code resolves for friends.
    restarted.send(
        "orders/paid",
        &with_code(order(200, 2), &invite.referral_code),
        DAY,
    );
    // (The friend bought too, so they are invited in turn.)
    assert_eq!(restarted.types(), ["reward.pending", "invite"]);
}

#[test]
fn a_reconciled_pending_reward_is_granted_as_it_was_attributed() {
    let mut world = World::new();
    let code = world.advocate();
    let before_friend = world.restarted();
    let mut friend = order(200, 2);
    friend["landing_site"] = json!(format!("/?ref={code}"));
    world.send("orders/paid", &friend, DAY);
    let pending = world.rewards()[0].clone();
    // State lost the pending reward (crash between output and changelog): reconcile it.
    let mut restarted = before_friend;
    let emitted: EmittedEvent =
        serde_json::from_value(serde_json::to_value(&pending).unwrap()).unwrap();
    let effects = restarted.engine.reconcile(P, &emitted);
    restarted.take(effects);
    restarted.tick(31 * DAY);
    let granted = restarted.rewards();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].event_type, "reward.granted");
    assert_eq!(granted[0].attributed_via, "landing_site");
    assert_eq!(
        granted[0].occurred_at,
        pending.review_ends_at.clone().unwrap()
    );
}

#[test]
fn expiry_forgets_settled_orders_but_keeps_first_order_facts() {
    let mut world = World::new();
    world.advocate();
    let effects = world.engine.expire(100 * DAY);
    world.take(effects.into_iter().map(|(_, e)| e).collect());
    assert!(world.persisted[&format!("o/{SHOP}/100")].is_none());
    assert_eq!(world.engine.sizes().0, 1);
}

#[test]
fn a_released_partition_hands_back_what_its_changelog_holds() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &with_code(order(200, 2), &code), 1_000);
    // Customer 3 is redacted: a marker, and nothing else of them.
    let redact = json!({"shop_id": 1, "shop_domain": SHOP, "orders_to_redact": [],
                        "customer": {"id": 3, "email": "buyer3@example.com"}});
    world.send("customers/redact", &redact, 2_000);
    let released = world.engine.release(P).expect("owned");
    assert!(!world.engine.owns(P));
    let changelog: HashMap<String, Entity> = world
        .persisted
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|e| (k.clone(), (**e).clone())))
        .collect();
    assert!(changelog.keys().any(|k| k.starts_with("r/")));
    assert_eq!(released, changelog);
    // Assigned back, it acts as before the revoke: the pending reward is granted once, and an
    // order of the redacted customer still in flight does not bring them back.
    world.engine.assign(P, released);
    world.send("orders/paid", &order(300, 3), 3_000);
    world.tick(10 * 86_400_000);
    assert_eq!(world.rewards().len(), 1);
    assert_eq!(redacted_count(&world), 1);
    let invited_3 = world
        .emitted
        .iter()
        .any(|o| matches!(o, Output::Invite(i) if i.advocate.customer_id == Some(3)));
    assert!(!invited_3, "{:?}", world.types());
}

#[test]
fn a_data_request_reports_what_is_held_about_the_customer_and_nothing_of_others() {
    let mut world = World::new();
    let code = world.advocate();
    world.send("orders/paid", &with_code(order(200, 2), &code), DAY);
    world.send("orders/paid", &order(300, 3), DAY);
    let request = json!({"shop_id": 1, "shop_domain": SHOP, "orders_requested": [100],
                         "customer": {"id": 1, "email": "buyer1@example.com"},
                         "data_request": {"id": 9999}});
    world.send("customers/data_request", &request, 2 * DAY);
    let Some(Output::DataRequest(report)) = world.emitted.last() else {
        panic!("a report: {:?}", world.types());
    };
    assert_eq!(report.event_type, "data_request.answered");
    assert_eq!(report.data_request_id, Some(9999));
    assert_eq!(report.customer_id, Some(1));
    let keys: Vec<&str> = report.holdings.iter().map(|h| h.key.as_str()).collect();
    // Their customer entity, their own order, and the friend's order they referred.
    assert_eq!(
        keys,
        [
            format!("c/{SHOP}/id:1"),
            format!("o/{SHOP}/100"),
            format!("o/{SHOP}/200")
        ]
    );
    assert_eq!(report.holdings[0].data["advocate"]["code"], json!(code));
    // The friend's order they referred: only their reward, nothing of the friend (customer 2).
    let referred = &report.holdings[2].data;
    assert!(referred["reward"]["code"].is_string(), "{referred}");
    let text = referred.to_string();
    assert!(
        !text.contains("id:2") && referred.get("customer_id").is_none(),
        "the friend's data in the advocate's report: {text}"
    );
    assert!(referred.get("name").is_none(), "{text}");
    // The same request read again gives the same report id.
    let first = report.event_id.clone();
    world.send("customers/data_request", &request, 3 * DAY);
    assert_eq!(world.emitted.last().unwrap().event_id(), first);
}

#[test]
fn a_data_request_reports_no_other_customer_sharing_the_email() {
    let mut world = World::new();
    world.send("orders/paid", &order(100, 1), DAY);
    // Customer 2 orders with the household's address, customer 1's.
    let mut shared = order(200, 2);
    shared["email"] = json!("buyer1@example.com");
    shared["customer"]["email"] = json!("buyer1@example.com");
    world.send("orders/paid", &shared, DAY);
    let request = json!({"shop_id": 1, "shop_domain": SHOP,
                         "customer": {"id": 1, "email": "buyer1@example.com"},
                         "data_request": {"id": 77}});
    world.send("customers/data_request", &request, 2 * DAY);
    let Some(Output::DataRequest(report)) = world.emitted.last() else {
        panic!("a report: {:?}", world.types());
    };
    let keys: Vec<&str> = report.holdings.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(keys, [format!("c/{SHOP}/id:1"), format!("o/{SHOP}/100")]);
}

//! The watchdog's rules on made-up order streams (event time in ms).

use super::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn silent_shops(step: &Step) -> Vec<&str> {
    step.changes
        .iter()
        .filter_map(|c| match c {
            Change::Silent { shop, .. } => Some(shop.as_str()),
            _ => None,
        })
        .collect()
}

/// `shops` each order every `every` from `from` until `until` (exclusive), interleaved.
fn orders(dog: &mut Watchdog, shops: &[&str], from: i64, until: i64, every: i64) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut at = from;
    while at < until {
        for (i, shop) in shops.iter().enumerate() {
            changes.extend(dog.observe(0, shop, at + i as i64 * MIN).changes);
        }
        changes.extend(dog.judge().changes);
        at += every;
    }
    changes
}

/// a and b order every 30 minutes for 12 hours, then only b until `until`.
fn a_stops_at_noon(until: i64) -> Watchdog {
    let mut dog = Watchdog::new(WatchdogRules::default());
    orders(
        &mut dog,
        &["a.myshopify.com", "b.myshopify.com"],
        0,
        12 * HOUR,
        30 * MIN,
    );
    orders(&mut dog, &["b.myshopify.com"], 12 * HOUR, until, 30 * MIN);
    dog
}

/// A new watchdog with `dog`'s paces restored in partition 0.
fn restarted(dog: &Watchdog) -> Watchdog {
    let paces = dog
        .shops
        .iter()
        .map(|(s, w)| (s.clone(), w.pace.clone()))
        .collect();
    let mut restarted = Watchdog::new(WatchdogRules::default());
    restarted.assign(0, paces);
    restarted
}

#[test]
fn a_shop_silent_while_others_continue_is_flagged_once() {
    let mut dog = a_stops_at_noon(12 * HOUR);
    let last_a = 12 * HOUR - 30 * MIN;
    // b keeps ordering; a's usual gap is 30 minutes, so the minimum silence (6h) decides.
    let early = orders(
        &mut dog,
        &["b.myshopify.com"],
        12 * HOUR,
        last_a + 6 * HOUR - MIN,
        30 * MIN,
    );
    assert!(early.is_empty(), "{early:?}");
    assert_eq!(dog.sizes(), (0, 2));
    let step = dog.observe(0, "b.myshopify.com", last_a + 6 * HOUR);
    assert!(step.changes.is_empty());
    let step = dog.judge();
    assert_eq!(silent_shops(&step), ["a.myshopify.com"]);
    assert_eq!(step.persist.len(), 1);
    assert!(step.persist[0].2.as_ref().is_some_and(|p| p.silent));
    assert_eq!(dog.sizes(), (1, 2));
    // Judged again as b's orders continue: no second flag.
    let later = orders(
        &mut dog,
        &["b.myshopify.com"],
        last_a + 7 * HOUR,
        last_a + 20 * HOUR,
        30 * MIN,
    );
    assert!(later.is_empty(), "{later:?}");
}

#[test]
fn a_busy_shop_is_flagged_after_its_factor_of_gaps_not_the_minimum() {
    let rules = WatchdogRules {
        min_silence_ms: HOUR,
        gap_factor: 4.0,
        ..WatchdogRules::default()
    };
    let mut dog = Watchdog::new(rules);
    // a orders every hour, b every 10 minutes: a's threshold is 4h, above the 1h minimum.
    orders(&mut dog, &["a.myshopify.com"], 0, 12 * HOUR, HOUR);
    orders(&mut dog, &["b.myshopify.com"], 0, 12 * HOUR, 10 * MIN);
    let after_3h = orders(
        &mut dog,
        &["b.myshopify.com"],
        12 * HOUR,
        14 * HOUR + 50 * MIN,
        10 * MIN,
    );
    assert!(after_3h.is_empty(), "{after_3h:?}");
    let after_4h = orders(
        &mut dog,
        &["b.myshopify.com"],
        14 * HOUR + 50 * MIN,
        16 * HOUR,
        10 * MIN,
    );
    assert_eq!(after_4h.len(), 1, "{after_4h:?}");
}

#[test]
fn an_outage_that_silences_every_shop_flags_none() {
    let mut dog = Watchdog::new(WatchdogRules::default());
    let shops = ["a.myshopify.com", "b.myshopify.com", "c.myshopify.com"];
    orders(&mut dog, &shops, 0, 12 * HOUR, 30 * MIN);
    // Nothing arrives for 10 hours (ingress or Kafka down): judging flags nobody.
    assert!(dog.judge().changes.is_empty());
    // Orders resume, a's first only after 2h: silences count from the restart of the flow.
    let resumed = orders(&mut dog, &shops[1..], 22 * HOUR, 24 * HOUR, 30 * MIN);
    assert!(resumed.is_empty(), "{resumed:?}");
    let all = orders(&mut dog, &shops, 24 * HOUR, 30 * HOUR, 30 * MIN);
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(dog.sizes(), (0, 3));
}

#[test]
fn a_shop_still_silent_after_the_outage_is_flagged_once_the_others_flow_long_enough() {
    let mut dog = Watchdog::new(WatchdogRules::default());
    let shops = ["a.myshopify.com", "b.myshopify.com"];
    orders(&mut dog, &shops, 0, 12 * HOUR, 30 * MIN);
    let before = orders(&mut dog, &shops[1..], 22 * HOUR, 28 * HOUR - MIN, 30 * MIN);
    assert!(before.is_empty(), "{before:?}");
    dog.observe(0, "b.myshopify.com", 28 * HOUR);
    assert_eq!(silent_shops(&dog.judge()), ["a.myshopify.com"]);
}

#[test]
fn a_shop_with_little_history_is_not_judged() {
    let mut dog = Watchdog::new(WatchdogRules::default());
    // c had three orders, then nothing for days while a and b keep ordering.
    for at in [0, HOUR, 2 * HOUR] {
        dog.observe(0, "c.myshopify.com", at);
    }
    let changes = orders(
        &mut dog,
        &["a.myshopify.com", "b.myshopify.com"],
        0,
        5 * DAY,
        HOUR,
    );
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(dog.sizes(), (0, 2));
}

#[test]
fn a_low_volume_shop_is_judged_on_its_own_usual_gap() {
    let mut dog = Watchdog::new(WatchdogRules::default());
    // d orders once a day (usual gap 1 day: 8 days of silence flag it, not 6 hours).
    for day in 0..12 {
        dog.observe(0, "d.myshopify.com", day * DAY);
    }
    let last_d = 11 * DAY;
    let week = orders(
        &mut dog,
        &["a.myshopify.com"],
        0,
        last_d + 8 * DAY - HOUR,
        HOUR,
    );
    assert!(week.is_empty(), "{week:?}");
    let eighth = orders(
        &mut dog,
        &["a.myshopify.com"],
        last_d + 8 * DAY,
        last_d + 8 * DAY + HOUR,
        HOUR,
    );
    assert_eq!(eighth.len(), 1, "{eighth:?}");
}

#[test]
fn paid_right_after_create_does_not_shrink_the_usual_gap() {
    let mut dog = Watchdog::new(WatchdogRules::default());
    for n in 0..5 {
        dog.observe(0, "a.myshopify.com", n * HOUR);
        dog.observe(0, "a.myshopify.com", n * HOUR + 2_000);
    }
    let pace = &dog.shops["a.myshopify.com"].pace;
    assert_eq!(pace.gaps, 4);
    assert_eq!(pace.gap_ms as i64, HOUR);
    assert_eq!(pace.last_ms, 4 * HOUR + 2_000);
}

#[test]
fn an_order_after_the_silence_recovers_the_shop() {
    let mut dog = a_stops_at_noon(20 * HOUR);
    assert_eq!(dog.sizes().0, 1);
    let step = dog.observe(3, "a.myshopify.com", 20 * HOUR);
    assert_eq!(
        step.changes,
        [Change::Recovered {
            shop: "a.myshopify.com".into(),
            silent_for_ms: 20 * HOUR - (12 * HOUR - 30 * MIN),
        }]
    );
    assert!(step.persist[0].2.as_ref().is_some_and(|p| !p.silent));
    assert_eq!(dog.sizes(), (0, 2));
    assert!(dog.judge().changes.is_empty());
}

#[test]
fn memory_stays_bounded_by_the_shop_cap() {
    let rules = WatchdogRules {
        max_shops: 3,
        ..WatchdogRules::default()
    };
    let mut dog = Watchdog::new(rules);
    let mut forgotten = 0;
    for n in 0..50 {
        let step = dog.observe(0, &format!("shop{n}.myshopify.com"), n * MIN);
        forgotten += step.persist.iter().filter(|p| p.2.is_none()).count();
        assert!(dog.shops.len() <= 3);
        assert!(dog.latest.len() <= 2);
    }
    assert_eq!(forgotten, 47);
    // The newest stay; the one silent longest went.
    assert!(dog.shops.contains_key("shop49.myshopify.com"));
    assert!(!dog.shops.contains_key("shop0.myshopify.com"));
}

#[test]
fn a_shop_that_left_the_app_or_stayed_silent_for_a_month_is_forgotten() {
    let mut dog = a_stops_at_noon(12 * HOUR);
    let mut step = Step::default();
    dog.forget("a.myshopify.com", &mut step);
    assert_eq!(step.persist, [(0, "a.myshopify.com".to_string(), None)]);
    // c's orders go on: b is flagged, a (gone) is not.
    let changes = orders(&mut dog, &["c.myshopify.com"], 12 * HOUR, 40 * HOUR, HOUR);
    let step = Step {
        changes,
        ..Step::default()
    };
    assert_eq!(silent_shops(&step), ["b.myshopify.com"]);
    // b is forgotten after 30 days of silence.
    orders(
        &mut dog,
        &["c.myshopify.com"],
        40 * HOUR,
        31 * DAY,
        6 * HOUR,
    );
    assert!(!dog.shops.contains_key("b.myshopify.com"));
}

#[test]
fn restored_paces_keep_the_flag_and_the_clock() {
    let dog = a_stops_at_noon(20 * HOUR);
    let mut restarted = restarted(&dog);
    assert_eq!(restarted.sizes(), (1, 2));
    assert!(restarted.judge().changes.is_empty(), "not flagged twice");
    restarted.revoke(0);
    assert_eq!(restarted.sizes(), (0, 0));
    assert!(restarted.latest.is_empty());
}

#[test]
fn a_shop_silent_across_a_restart_is_still_flagged() {
    let dog = a_stops_at_noon(15 * HOUR);
    let mut restarted = restarted(&dog);
    let changes = orders(
        &mut restarted,
        &["b.myshopify.com"],
        15 * HOUR,
        19 * HOUR,
        30 * MIN,
    );
    assert_eq!(changes.len(), 1, "{changes:?}");
}

#[test]
fn paces_and_journey_entities_share_the_changelog() {
    let pace = Pace {
        last_ms: 5,
        anchor_ms: 4,
        gap_ms: 3.5,
        gaps: 2,
        silent: true,
    };
    let json = serde_json::to_string(&Stored::Pace(PaceRecord::ShopPace(pace.clone()))).unwrap();
    assert!(json.contains(r#""kind":"shop_pace""#), "{json}");
    let back: Stored = serde_json::from_str(&json).unwrap();
    assert_eq!(back, Stored::Pace(PaceRecord::ShopPace(pace)));
    let buyer = serde_json::to_string(&Entity::Buyer(Default::default())).unwrap();
    let back: Stored = serde_json::from_str(&buyer).unwrap();
    assert!(matches!(back, Stored::Journey(Entity::Buyer(_))));
}

#[test]
fn settings_are_validated_together() {
    let args = WatchdogArgs {
        journey_watchdog_min_silence: "10s".into(),
        journey_watchdog_gap_factor: 0.5,
        journey_watchdog_min_orders: 1,
        journey_watchdog_max_shops: 0,
    };
    let mut errors = ConfigErrors::new();
    args.validate(&mut errors);
    let text = format!("{:?}", errors.finish(|| ()).unwrap_err());
    for name in ["MIN_SILENCE", "GAP_FACTOR", "MIN_ORDERS", "MAX_SHOPS"] {
        assert!(
            text.contains(&format!("AFTERCART_JOURNEY_WATCHDOG_{name}")),
            "{text}"
        );
    }
}

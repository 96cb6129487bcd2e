//! Engine scenarios: who is exported where, when, and who is removed.

use super::*;
use crate::domain::audience::{AbandonmentFilter, OrderFilter};
use crate::domain::input::{Abandonment, ConsentFact, Purchase};

const SHOP: &str = "shop.myshopify.com";
const DAY: i64 = 86_400_000;
const T0: i64 = 1_800_000_000_000;

fn rules() -> Rules {
    let abandoners = Audience {
        name: "abandoned-checkouts".into(),
        source: Source::Abandonments(AbandonmentFilter {
            kinds: vec!["checkout".into()],
            ..Default::default()
        }),
        window_ms: Some(30 * DAY),
        leave_on_purchase: true,
        destinations: vec![
            "meta".into(),
            "google".into(),
            "tiktok".into(),
            "files".into(),
        ],
        shops: vec![],
    };
    let purchasers = Audience {
        name: "recent-purchasers".into(),
        source: Source::Orders(OrderFilter::default()),
        window_ms: Some(30 * DAY),
        leave_on_purchase: false,
        destinations: vec!["files".into()],
        shops: vec![],
    };
    Rules {
        audiences: vec![abandoners, purchasers],
        destinations: [
            ("meta".to_string(), Platform::Meta),
            ("google".to_string(), Platform::Google),
            ("tiktok".to_string(), Platform::Tiktok),
            ("files".to_string(), Platform::Plain),
        ]
        .into(),
        flush_interval_ms: 1_000,
        batch_rows: 1_000,
        person_retention_ms: 90 * DAY,
        redaction_retention_ms: 400 * DAY,
        google_consent: BTreeMap::new(),
        removal_reemit_after_ms: DAY,
    }
}

fn engine() -> Engine {
    let mut engine = Engine::new(rules());
    engine.assign(0, HashMap::new());
    engine
}

fn ann() -> PersonRef {
    PersonRef {
        customer_id: Some(42),
        email: Some("Ann@Example.com".into()),
    }
}

fn contact(email: &str) -> Contact {
    Contact {
        email: Some(email.into()),
        phone: Some("+44 7700 900123".into()),
        first_name: Some("Ann".into()),
        last_name: Some("Lee".into()),
        country: Some("GB".into()),
        zip: Some("SW1A 1AA".into()),
    }
}

fn abandoned(who: PersonRef, consent: Option<bool>, at_ms: i64) -> Input {
    Input::Abandoned {
        person: who,
        contact: contact("Ann@Example.com"),
        consent: consent.map(|subscribed| ConsentFact {
            subscribed,
            at_ms,
            ..Default::default()
        }),
        at_ms,
        facts: Abandonment {
            kind: "checkout".into(),
            stage: "payment".into(),
            value_tier: "high".into(),
            customer_type: "new".into(),
            value: None,
            discount: false,
            fence_sitter: false,
        },
    }
}

fn paid(who: PersonRef, at_ms: i64) -> Input {
    Input::Purchased {
        person: who,
        contact: contact("Ann@Example.com"),
        consent: None,
        at_ms,
        purchase: Purchase {
            order_id: None,
            total: None,
            financial_status: "paid".into(),
            test: false,
            cancelled: false,
        },
    }
}

fn batches(effects: &[(i32, Effect)]) -> Vec<&Batch> {
    effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Emit { batch, .. } => Some(batch.as_ref()),
            Effect::Persist { .. } | Effect::Report { .. } => None,
        })
        .collect()
}

/// (audience, destination, op, member count) of each batch, in emission order.
fn summary(effects: &[(i32, Effect)]) -> Vec<(String, String, Op, usize)> {
    batches(effects)
        .into_iter()
        .map(|b| {
            (
                b.audience.clone(),
                b.destination.clone(),
                b.op,
                b.members.len(),
            )
        })
        .collect()
}

fn ops(effects: &[(i32, Effect)], audience: &str, op: Op) -> Vec<String> {
    let mut destinations: Vec<String> = batches(effects)
        .into_iter()
        .filter(|b| b.audience == audience && b.op == op)
        .map(|b| b.destination.clone())
        .collect();
    destinations.sort();
    destinations
}

/// The people a changelog holds after `effects` (the last record of each key wins).
fn persisted<'a>(effects: impl IntoIterator<Item = &'a Effect>) -> HashMap<String, Person> {
    let mut people = HashMap::new();
    for effect in effects {
        if let Effect::Persist { key, person } = effect {
            match person {
                Some(p) => people.insert(key.clone(), (**p).clone()),
                None => people.remove(key),
            };
        }
    }
    people
}

const ALL: [&str; 4] = ["files", "google", "meta", "tiktok"];

/// Every exporter passes what was emitted before `at_ms` (a tick then marks it written).
fn confirm_everything(engine: &mut Engine, at_ms: i64) -> Vec<(i32, Effect)> {
    let mut effects = engine.tick(at_ms);
    let confirmed = ALL
        .iter()
        .map(|d| ((d.to_string(), 0), at_ms + 1))
        .collect();
    effects.extend(engine.confirm(&confirmed));
    effects
}

#[test]
fn a_consented_abandoner_is_added_to_every_destination_at_the_next_flush() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    assert!(
        batches(&engine.tick(T0 + 10)).is_empty(),
        "not before the interval"
    );
    let effects = engine.tick(T0 + 1_000);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Add), ALL);
    let meta = batches(&effects)
        .into_iter()
        .find(|b| b.destination == "meta")
        .unwrap();
    assert_eq!(meta.platform, Platform::Meta);
    assert_eq!(meta.members[0].person, "c/42");
    assert_eq!(
        meta.members[0].row["EMAIL"],
        hash::sha256_hex("ann@example.com")
    );
    assert_eq!(meta.batch_id.len(), 32);
    assert_eq!(engine.members()["abandoned-checkouts"], 1);
    assert!(
        batches(&engine.tick(T0 + 5_000)).is_empty(),
        "nothing twice"
    );
}

#[test]
fn without_consent_nobody_is_exported_until_consent_arrives() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(false), T0), T0);
    assert!(batches(&engine.tick(T0 + 1_000)).is_empty());
    assert_eq!(engine.members()["abandoned-checkouts"], 0);
    let consent = Input::Consent {
        person: ann(),
        consent: ConsentFact {
            subscribed: true,
            at_ms: T0 + 2_000,
            ..Default::default()
        },
    };
    engine.apply(0, SHOP, consent, T0 + 2_000);
    let effects = engine.tick(T0 + 3_000);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Add), ALL);
}

#[test]
fn revoked_consent_removes_the_person_from_every_destination() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    let revoke = Input::Consent {
        person: PersonRef {
            customer_id: Some(42),
            email: None,
        },
        consent: ConsentFact {
            subscribed: false,
            at_ms: T0 + 1_500,
            ..Default::default()
        },
    };
    engine.apply(0, SHOP, revoke, T0 + 1_500);
    assert!(
        batches(&engine.tick(T0 + 2_000)).is_empty(),
        "the interval counts from the change"
    );
    let effects = engine.tick(T0 + 2_500);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
    assert!(ops(&effects, "abandoned-checkouts", Op::Add).is_empty());
    assert_eq!(engine.members()["abandoned-checkouts"], 0);
}

#[test]
fn a_redacted_customer_is_removed_everywhere_then_forgotten() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.apply(0, SHOP, paid(ann(), T0 + 10), T0 + 10);
    engine.tick(T0 + 1_000);
    let redact = redact(ann(), None, vec![]);
    engine.apply(0, SHOP, redact, T0 + 1_100);
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(ops(&effects, "recent-purchasers", Op::Remove), ["files"]);
    let effects = confirm_everything(&mut engine, T0 + 2_200);
    let deleted = effects.iter().any(|(_, e)| {
        matches!(e, Effect::Persist { key, person: None } if key == "p/shop.myshopify.com/c/42")
    });
    assert!(deleted, "the person is deleted from state");
    assert_eq!(engine.people(), 0);
}

#[test]
fn a_shop_redact_removes_and_forgets_all_its_people() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let bob = PersonRef {
        customer_id: None,
        email: Some("bob@example.com".into()),
    };
    engine.apply(0, SHOP, abandoned(bob, Some(false), T0), T0);
    engine.tick(T0 + 1_000);
    assert_eq!(engine.people(), 2);
    engine.apply(0, SHOP, Input::ShopRedact, T0 + 1_100);
    assert_eq!(
        engine.people(),
        1,
        "bob was never exported: deleted at once"
    );
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
    confirm_everything(&mut engine, T0 + 2_200);
    assert_eq!(engine.people(), 0);
}

#[test]
fn a_purchase_moves_an_abandoner_to_the_purchasers() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    engine.apply(0, SHOP, paid(ann(), T0 + 1_200), T0 + 1_200);
    let effects = engine.tick(T0 + 2_200);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
    assert_eq!(ops(&effects, "recent-purchasers", Op::Add), ["files"]);
    let first = &summary(&effects)[0];
    assert_eq!(first.2, Op::Remove, "removals are emitted first");
}

#[test]
fn a_late_purchase_from_before_the_abandonment_does_not_end_it() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.apply(0, SHOP, paid(ann(), T0 - DAY), T0 + 10);
    let effects = engine.tick(T0 + 1_000);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Add), ALL);
}

#[test]
fn members_leave_when_the_window_ends() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    assert!(batches(&engine.tick(T0 + 30 * DAY - 1)).is_empty());
    engine.tick(T0 + 30 * DAY);
    let effects = engine.tick(T0 + 30 * DAY + 1_000);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
}

#[test]
fn an_abandonment_older_than_the_window_is_ignored() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0 + 31 * DAY);
    assert!(batches(&engine.tick(T0 + 31 * DAY + 1_000)).is_empty());
}

#[test]
fn a_changed_email_is_removed_under_the_old_one_and_added_under_the_new_one() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    let moved = Input::Customer {
        sms_consent: None,
        person: PersonRef {
            customer_id: Some(42),
            email: Some("ann@new.example".into()),
        },
        contact: Contact {
            email: Some("ann@new.example".into()),
            ..Default::default()
        },
        consent: None,
        facts: Default::default(),
    };
    engine.apply(0, SHOP, moved, T0 + 1_100);
    let effects = engine.tick(T0 + 2_100);
    let meta: Vec<&Batch> = batches(&effects)
        .into_iter()
        .filter(|b| b.destination == "meta")
        .collect();
    assert_eq!(meta.len(), 2);
    assert_eq!(meta[0].op, Op::Remove);
    assert_eq!(
        meta[0].members[0].row["EMAIL"],
        hash::sha256_hex("ann@example.com")
    );
    assert_eq!(meta[1].op, Op::Add);
    assert_eq!(
        meta[1].members[0].row["EMAIL"],
        hash::sha256_hex("ann@new.example")
    );
}

#[test]
fn a_guest_who_turns_out_to_be_a_customer_is_removed_under_the_guest_name_and_added_as_the_customer(
) {
    let mut engine = engine();
    let guest = PersonRef {
        customer_id: None,
        email: Some("ann@example.com".into()),
    };
    engine.apply(0, SHOP, abandoned(guest.clone(), Some(true), T0), T0);
    let first = engine.tick(T0 + 1_000);
    let guest_name = batches(&first)[0].members[0].person.clone();
    assert!(guest_name.starts_with("e/"), "{guest_name}");
    // The same person abandons again, now signed in: one person, the customer.
    engine.apply(
        0,
        SHOP,
        abandoned(ann(), Some(true), T0 + 1_100),
        T0 + 1_100,
    );
    let effects = engine.tick(T0 + 2_100);
    let removed: Vec<&Batch> = batches(&effects)
        .into_iter()
        .filter(|b| b.op == Op::Remove)
        .collect();
    assert_eq!(removed.len(), 4, "every destination drops the guest's rows");
    assert!(removed.iter().all(|b| b.members[0].person == guest_name));
    let added: Vec<&Batch> = batches(&effects)
        .into_iter()
        .filter(|b| b.op == Op::Add)
        .collect();
    assert_eq!(added.len(), 4, "and takes the customer's");
    assert!(added.iter().all(|b| b.members[0].person == "c/42"));
    assert_eq!(
        engine.people(),
        2,
        "the guest is kept until the removals are confirmed"
    );
    confirm_everything(&mut engine, T0 + 2_200);
    assert_eq!(engine.people(), 1, "the guest is deleted once removed");
    assert_eq!(engine.members()["abandoned-checkouts"], 1);
}

#[test]
fn an_abandonment_delivered_after_a_later_purchase_does_not_make_an_abandoner() {
    let mut engine = engine();
    engine.apply(0, SHOP, paid(ann(), T0 + 10), T0 + 20);
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0 + 30);
    let effects = engine.tick(T0 + 1_100);
    assert!(ops(&effects, "abandoned-checkouts", Op::Add).is_empty());
    assert_eq!(ops(&effects, "recent-purchasers", Op::Add), ["files"]);
}

#[test]
fn a_change_a_platform_does_not_hash_is_not_resent_to_it() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    // A new zip: Meta and Google hash it, TikTok and files do not.
    let moved = Input::Customer {
        sms_consent: None,
        person: PersonRef {
            customer_id: Some(42),
            email: None,
        },
        contact: Contact {
            zip: Some("EC1A 1BB".into()),
            ..Default::default()
        },
        consent: None,
        facts: Default::default(),
    };
    engine.apply(0, SHOP, moved, T0 + 1_100);
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(
        ops(&effects, "abandoned-checkouts", Op::Remove),
        ["google", "meta"]
    );
    assert_eq!(
        ops(&effects, "abandoned-checkouts", Op::Add),
        ["google", "meta"]
    );
}

#[test]
fn members_of_an_audience_no_longer_configured_are_removed_from_its_destinations() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let effects = engine.tick(T0 + 1_000);
    let people = persisted(effects.iter().map(|(_, e)| e));
    let mut rules = rules();
    rules.audiences.retain(|a| a.name != "abandoned-checkouts");
    let mut restarted = Engine::new(rules);
    restarted.assign(0, people);
    let effects = [restarted.tick(T0 + 2_000), restarted.tick(T0 + 3_000)].concat();
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
}

#[test]
fn a_crash_after_a_contact_change_was_emitted_does_not_resend_it() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let first = engine.tick(T0 + 1_000);
    let moved = Input::Customer {
        sms_consent: None,
        person: PersonRef {
            customer_id: Some(42),
            email: Some("ann@new.example".into()),
        },
        contact: Contact {
            email: Some("ann@new.example".into()),
            ..Default::default()
        },
        consent: None,
        facts: Default::default(),
    };
    let applied = engine.apply(0, SHOP, moved, T0 + 1_100);
    let second = engine.tick(T0 + 2_100);
    // Crash: the second flush's batches were written, the changelog has the person as applied.
    let people = persisted(first.iter().map(|(_, e)| e).chain(&applied));
    let mut restored = Engine::new(rules());
    restored.assign(0, people);
    for batch in batches(&second) {
        restored.reconcile(0, batch);
    }
    assert!(batches(&restored.tick(T0 + 3_000)).is_empty());
    assert!(batches(&restored.tick(T0 + 4_000)).is_empty());
}

#[test]
fn a_restored_partition_emits_nothing_already_held() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let effects = engine.tick(T0 + 1_000);
    let people = persisted(effects.iter().map(|(_, e)| e));
    let mut restored = Engine::new(rules());
    restored.assign(0, people);
    assert!(batches(&restored.tick(T0 + 2_000)).is_empty());
    assert_eq!(restored.members()["abandoned-checkouts"], 1);
}

#[test]
fn reconciling_an_emitted_batch_keeps_it_from_being_emitted_again() {
    let mut engine = engine();
    let applied = engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let flushed = engine.tick(T0 + 1_000);
    // Crash: the batches were written, the changelog still has the person before the flush.
    let people = persisted(&applied);
    let mut restored = Engine::new(rules());
    restored.assign(0, people);
    for batch in batches(&flushed) {
        restored.reconcile(0, batch);
    }
    assert!(batches(&restored.tick(T0 + 2_000)).is_empty());
}

#[test]
fn an_add_emitted_before_the_persons_first_changelog_record_is_not_emitted_again() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let flushed = engine.tick(T0 + 1_000);
    assert_eq!(batches(&flushed).len(), 4, "{:?}", summary(&flushed));
    // Killed after the batches were written, before any changelog record: nothing to restore.
    let mut restored = Engine::new(rules());
    restored.assign(0, HashMap::new());
    let mut reconciled = Vec::new();
    for batch in batches(&flushed) {
        reconciled.extend(restored.reconcile(0, batch));
    }
    // Nothing is removed while the fact is on its way back...
    assert!(batches(&restored.tick(T0 + 5_000)).is_empty());
    // ...and the uncommitted abandonment, read again, finds Ann held everywhere.
    restored.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0 + 5_100);
    let effects = [restored.tick(T0 + 7_000), restored.tick(T0 + 9_000)].concat();
    assert!(batches(&effects).is_empty(), "{:?}", summary(&effects));
    assert_eq!(restored.members()["abandoned-checkouts"], 1);

    // Killed again before the abandonment's offset was committed: the changelog now holds
    // what reconcile persisted, and the fact is read once more.
    let mut again = Engine::new(rules());
    again.assign(0, persisted(&reconciled));
    assert!(batches(&again.tick(T0 + 10_000)).is_empty());
    again.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0 + 10_100);
    let effects = [again.tick(T0 + 12_000), again.tick(T0 + 14_000)].concat();
    assert!(batches(&effects).is_empty(), "{:?}", summary(&effects));
    // She is still removed when she revokes consent.
    let revoked = Input::Consent {
        person: ann(),
        consent: ConsentFact {
            subscribed: false,
            at_ms: T0 + 15_000,
            ..Default::default()
        },
    };
    again.apply(0, SHOP, revoked, T0 + 15_000);
    let effects = again.tick(T0 + 17_000);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove).len(), 4);
}

#[test]
fn big_flushes_are_chunked_to_the_batch_size() {
    let mut rules = rules();
    rules.batch_rows = 2;
    let mut engine = Engine::new(rules);
    engine.assign(0, HashMap::new());
    for id in 0..5 {
        let who = PersonRef {
            customer_id: Some(id),
            email: Some(format!("p{id}@example.com")),
        };
        engine.apply(0, SHOP, abandoned(who, Some(true), T0), T0);
    }
    let effects = engine.tick(T0 + 10);
    let meta: Vec<usize> = summary(&effects)
        .into_iter()
        .filter(|s| s.1 == "meta")
        .map(|s| s.3)
        .collect();
    assert_eq!(
        meta,
        [2, 2, 1],
        "flushed early: more changed people than a batch holds"
    );
    let ids: BTreeSet<&str> = batches(&effects)
        .iter()
        .map(|b| b.batch_id.as_str())
        .collect();
    assert_eq!(ids.len(), batches(&effects).len(), "batch ids are unique");
}

#[test]
fn people_with_nothing_left_are_forgotten_after_the_retention() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(false), T0), T0);
    engine.tick(T0 + 1_000);
    engine.tick(T0 + 30 * DAY + 1);
    engine.tick(T0 + 30 * DAY + 2_000);
    assert_eq!(engine.people(), 1, "consent history is kept a while");
    engine.tick(T0 + 91 * DAY);
    assert_eq!(engine.people(), 0);
}

#[test]
fn a_released_partition_hands_back_what_its_changelog_holds() {
    let mut engine = engine();
    let mut effects = engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    effects.extend(engine.tick(T0 + 1_000).into_iter().map(|(_, e)| e));
    let released = engine.release(0).expect("owned");
    assert!(!engine.owns(0));
    assert_eq!(released, persisted(&effects));
    // Assigned back, everyone is compared once and nothing already exported is sent again.
    engine.assign(0, released);
    assert!(batches(&engine.tick(T0 + 5_000)).is_empty());
    assert_eq!(engine.members()["abandoned-checkouts"], 1);
}

/// A partition a rebalance returns unchanged is not restored: what `release` leaves out is
/// forgotten. The redaction markers are handed back with the people, so a fact in flight
/// about a redacted person still does not bring them back.
#[test]
fn a_released_partition_hands_back_its_redactions() {
    let mut engine = engine();
    let mut effects = engine.apply(0, SHOP, redact(ann(), Some("+44 7700 900123"), vec![7]), T0);
    effects.extend(engine.tick(T0 + 1_000).into_iter().map(|(_, e)| e));
    let released = engine.release(0).expect("owned");
    assert!(released.keys().any(|k| k.starts_with("r/")), "{released:?}");
    assert_eq!(released, persisted(&effects));
    engine.assign(0, released);
    engine.apply(
        0,
        SHOP,
        abandoned(ann(), Some(true), T0 + 2_000),
        T0 + 2_000,
    );
    let effects = engine.tick(T0 + 5_000);
    assert_eq!(exported(&effects), 0, "{effects:?}");
    assert_eq!(engine.people(), 0);
}

fn redact(who: PersonRef, phone: Option<&str>, orders: Vec<u64>) -> Input {
    Input::Redact {
        person: who,
        phone: phone.map(str::to_string),
        orders,
    }
}

fn exported(effects: &[(i32, Effect)]) -> usize {
    batches(effects)
        .iter()
        .filter(|b| b.op == Op::Add)
        .map(|b| b.members.len())
        .sum()
}

/// Ann known only by another email and her phone (as a later order of hers might say).
fn ann_by_phone() -> (PersonRef, Contact) {
    let who = PersonRef {
        customer_id: None,
        email: Some("ann.other@example.com".into()),
    };
    let contact = Contact {
        email: Some("ann.other@example.com".into()),
        phone: Some("+44 (7700) 900-123".into()),
        ..Default::default()
    };
    (who, contact)
}

#[test]
fn a_fact_after_the_redaction_does_not_bring_the_person_back() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    engine.apply(0, SHOP, redact(ann(), None, vec![]), T0 + 1_100);
    let removed = engine.tick(T0 + 2_100);
    assert_eq!(ops(&removed, "abandoned-checkouts", Op::Remove), ALL);
    confirm_everything(&mut engine, T0 + 2_200);
    assert_eq!(engine.people(), 0);
    // In flight on another topic, or simply later: an order, a customer update, a consent.
    engine.apply(0, SHOP, paid(ann(), T0 + 500), T0 + 3_000);
    engine.apply(
        0,
        SHOP,
        abandoned(ann(), Some(true), T0 + 3_100),
        T0 + 3_100,
    );
    let by_email = PersonRef {
        customer_id: None,
        email: Some(" ann@example.COM".into()),
    };
    engine.apply(
        0,
        SHOP,
        abandoned(by_email, Some(true), T0 + 3_200),
        T0 + 3_200,
    );
    let effects = engine.tick(T0 + 10_000);
    assert_eq!(exported(&effects), 0, "nobody re-exported: {effects:?}");
    assert_eq!(engine.people(), 0, "nobody re-created");
}

#[test]
fn a_redaction_before_any_fact_keeps_the_person_out() {
    let mut engine = engine();
    engine.apply(0, SHOP, redact(ann(), None, vec![]), T0);
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0 + 100), T0 + 100);
    engine.apply(0, SHOP, paid(ann(), T0 + 200), T0 + 200);
    let effects = engine.tick(T0 + 5_000);
    assert_eq!(exported(&effects), 0);
    assert_eq!(engine.people(), 0);
}

#[test]
fn a_redaction_matches_by_phone_and_by_the_orders_to_redact() {
    let mut engine = engine();
    let (who, contact) = ann_by_phone();
    let fact = Input::Abandoned {
        person: who.clone(),
        contact: contact.clone(),
        consent: Some(ConsentFact {
            subscribed: true,
            at_ms: T0,
            ..Default::default()
        }),
        at_ms: T0,
        facts: Abandonment {
            kind: "checkout".into(),
            ..Default::default()
        },
    };
    engine.apply(0, SHOP, fact.clone(), T0);
    engine.tick(T0 + 1_000);
    // Shopify names her by id and her main email; only the phone ties the guest to her.
    engine.apply(
        0,
        SHOP,
        redact(ann(), Some("447700900123"), vec![7]),
        T0 + 1_100,
    );
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
    confirm_everything(&mut engine, T0 + 2_200);
    assert_eq!(engine.people(), 0);
    engine.apply(0, SHOP, fact, T0 + 3_000);
    // An order named in orders_to_redact, under an address the redaction did not name.
    let stranger = PersonRef {
        customer_id: None,
        email: Some("someone@example.net".into()),
    };
    let mut order = paid(stranger, T0 + 3_100);
    if let Input::Purchased {
        purchase, contact, ..
    } = &mut order
    {
        purchase.order_id = Some(7);
        *contact = Contact {
            email: Some("someone@example.net".into()),
            ..Default::default()
        };
    }
    engine.apply(0, SHOP, order, T0 + 3_100);
    let effects = engine.tick(T0 + 10_000);
    assert_eq!(exported(&effects), 0, "{effects:?}");
    assert_eq!(engine.people(), 0);
}

#[test]
fn redaction_markers_survive_a_restore_and_expire_after_their_retention() {
    let mut engine = engine();
    let effects: Vec<Effect> =
        engine.apply(0, SHOP, redact(ann(), Some("+1 555 0100"), vec![]), T0);
    let state = persisted(&effects);
    assert!(
        state.keys().all(|k| k.starts_with("r/")) && state.len() >= 3,
        "id, email and phone markers: {:?}",
        state.keys()
    );
    assert!(
        state
            .keys()
            .all(|k| !k.contains("example") && !k.contains("555")),
        "no personal data in the keys"
    );
    let mut restored = Engine::new(rules());
    restored.assign(0, state);
    restored.apply(0, SHOP, abandoned(ann(), Some(true), T0 + 100), T0 + 100);
    assert_eq!(exported(&restored.tick(T0 + 5_000)), 0);
    let retention = rules().redaction_retention_ms;
    let swept = restored.tick(T0 + retention + 1);
    let forgotten = swept
        .iter()
        .filter(
            |(_, e)| matches!(e, Effect::Persist { key, person: None } if key.starts_with("r/")),
        )
        .count();
    assert!(forgotten >= 3, "markers expire: {swept:?}");
    let later = T0 + retention + 120_000;
    restored.apply(0, SHOP, abandoned(ann(), Some(true), later), later);
    assert_eq!(exported(&restored.tick(later + 5_000)), ALL.len());
}

#[test]
fn a_shop_redaction_keeps_in_flight_facts_out_but_not_a_reinstall() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    engine.apply_received(0, SHOP, Input::ShopRedact, T0 + 1_100, T0 + 1_100);
    engine.tick(T0 + 2_100);
    confirm_everything(&mut engine, T0 + 2_200);
    assert_eq!(engine.people(), 0);
    // Received before the redaction, processed after it (another topic, lagging).
    engine.apply_received(0, SHOP, paid(ann(), T0 + 900), T0 + 1_000, T0 + 3_000);
    assert_eq!(exported(&engine.tick(T0 + 10_000)), 0);
    assert_eq!(engine.people(), 0);
    // The merchant installs the app again later: new facts count.
    let again = T0 + 5 * DAY;
    engine.apply_received(0, SHOP, abandoned(ann(), Some(true), again), again, again);
    assert_eq!(exported(&engine.tick(again + 5_000)), ALL.len());
}

/// An engine whose Google destination grants personalisation only to a confirmed opt-in.
fn engine_personalising_on_confirmed_opt_in() -> Engine {
    use crate::domain::consent::{ConsentMapping, OptInLevel};
    let mut rules = rules();
    rules.google_consent.insert(
        "google".into(),
        ConsentMapping {
            ad_user_data: [OptInLevel::SingleOptIn, OptInLevel::ConfirmedOptIn].into(),
            ad_personalization: [OptInLevel::ConfirmedOptIn].into(),
        },
    );
    let mut engine = Engine::new(rules);
    engine.assign(0, HashMap::new());
    engine
}

#[test]
fn google_additions_carry_the_consent_signals_the_mapping_reads_from_the_customer() {
    use crate::domain::consent::{AdConsent, OptInLevel};
    use crate::domain::input::Channel;
    let mut engine = engine_personalising_on_confirmed_opt_in();
    let level = |subscribed, level, channel| ConsentFact {
        subscribed,
        at_ms: T0 - 10,
        level: Some(level),
        channel,
    };
    let customer = Input::Customer {
        person: ann(),
        contact: contact("Ann@Example.com"),
        consent: Some(level(true, OptInLevel::SingleOptIn, Channel::Email)),
        sms_consent: Some(level(false, OptInLevel::ConfirmedOptIn, Channel::Sms)),
        facts: Default::default(),
    };
    engine.apply(0, SHOP, customer, T0 - 5);
    // The abandonment's checkbox says subscribed, without a level: the known level stays.
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let effects = engine.tick(T0 + 1_000);
    let consent_at = |destination: &str| {
        batches(&effects)
            .into_iter()
            .find(|b| b.destination == destination && b.op == Op::Add)
            .map(|b| b.members[0].consent)
    };
    assert_eq!(
        consent_at("google"),
        Some(Some(AdConsent {
            ad_user_data: true,
            ad_personalization: false,
        })),
        "single opt-in by email, SMS unsubscribed: personalisation not granted"
    );
    assert_eq!(consent_at("meta"), Some(None), "only Google gets signals");
    // A confirmed SMS opt-in later grants personalisation too.
    let sms = Input::Consent {
        person: ann(),
        consent: ConsentFact {
            at_ms: T0 + 2_000,
            ..level(true, OptInLevel::ConfirmedOptIn, Channel::Sms)
        },
    };
    engine.apply(0, SHOP, sms, T0 + 2_000);
    let person = &engine.partitions[&0].people["p/shop.myshopify.com/c/42"];
    assert!(
        person
            .ad_consent(&engine.rules.google_consent["google"])
            .ad_personalization
    );
}

/// A guest known by another email and a phone written nationally, with the country that makes
/// it the international number the platforms are sent (`(555) 625-1199` in the US is +1 555…).
fn guest_with_national_phone(at_ms: i64) -> Input {
    let who = PersonRef {
        customer_id: None,
        email: Some("guest@example.net".into()),
    };
    Input::Abandoned {
        person: who,
        contact: Contact {
            email: Some("guest@example.net".into()),
            phone: Some("(555) 625-1199".into()),
            country: Some("US".into()),
            ..Default::default()
        },
        consent: Some(ConsentFact {
            subscribed: true,
            at_ms,
            ..Default::default()
        }),
        at_ms,
        facts: Abandonment {
            kind: "checkout".into(),
            ..Default::default()
        },
    }
}

#[test]
fn an_international_phone_redaction_keeps_out_a_later_national_number_of_the_same_country() {
    let mut engine = engine();
    engine.apply(0, SHOP, redact(ann(), Some("+1 555-625-1199"), vec![]), T0);
    engine.apply(0, SHOP, guest_with_national_phone(T0 + 100), T0 + 100);
    let effects = engine.tick(T0 + 5_000);
    assert_eq!(exported(&effects), 0, "re-exported: {effects:?}");
    assert_eq!(engine.people(), 0);
}

#[test]
fn an_international_phone_redaction_removes_a_guest_held_under_the_national_number() {
    let mut engine = engine();
    engine.apply(0, SHOP, guest_with_national_phone(T0), T0);
    assert_eq!(exported(&engine.tick(T0 + 1_000)), ALL.len());
    engine.apply(
        0,
        SHOP,
        redact(ann(), Some("+15556251199"), vec![]),
        T0 + 1_100,
    );
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
    confirm_everything(&mut engine, T0 + 2_200);
    assert_eq!(engine.people(), 0);
}

#[test]
fn a_withdrawn_consent_signal_reaches_google_for_a_person_it_already_holds() {
    use crate::domain::consent::{AdConsent, OptInLevel};
    use crate::domain::input::Channel;
    let mut engine = engine_personalising_on_confirmed_opt_in();
    let fact = |subscribed, level, channel, at_ms| ConsentFact {
        subscribed,
        at_ms,
        level: Some(level),
        channel,
    };
    let customer = Input::Customer {
        person: ann(),
        contact: contact("Ann@Example.com"),
        consent: Some(fact(true, OptInLevel::SingleOptIn, Channel::Email, T0 - 10)),
        sms_consent: Some(fact(
            true,
            OptInLevel::ConfirmedOptIn,
            Channel::Sms,
            T0 - 10,
        )),
        facts: Default::default(),
    };
    engine.apply(0, SHOP, customer, T0 - 5);
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let first = engine.tick(T0 + 1_000);
    let google_adds = |effects: &[(i32, Effect)]| -> Vec<Option<AdConsent>> {
        batches(effects)
            .into_iter()
            .filter(|b| b.destination == "google" && b.op == Op::Add)
            .flat_map(|b| b.members.iter().map(|m| m.consent))
            .collect()
    };
    let granted = AdConsent {
        ad_user_data: true,
        ad_personalization: true,
    };
    assert_eq!(google_adds(&first), [Some(granted)]);
    // She stops SMS marketing: the confirmed opt-in that granted personalisation is gone, while
    // her email subscription keeps her in the audience. Google must be told.
    let withdrawn = Input::Consent {
        person: ann(),
        consent: fact(false, OptInLevel::ConfirmedOptIn, Channel::Sms, T0 + 2_000),
    };
    engine.apply(0, SHOP, withdrawn, T0 + 2_000);
    let effects = engine.tick(T0 + 4_000);
    assert_eq!(
        google_adds(&effects),
        [Some(AdConsent {
            ad_user_data: true,
            ad_personalization: false,
        })],
        "{effects:?}"
    );
    assert!(
        batches(&effects).iter().all(|b| b.destination == "google"),
        "other platforms get no signals, so nothing to resend: {effects:?}"
    );
    // The signals sent are remembered (across a restore too): nothing more is sent.
    let state = persisted(first.iter().chain(effects.iter()).map(|(_, e)| e));
    let mut restored = Engine::new(engine.rules.clone());
    restored.assign(0, state);
    assert!(batches(&restored.tick(T0 + 10_000)).is_empty());
}

#[test]
fn a_removal_due_at_a_destination_taken_out_of_the_configuration_is_kept_until_it_is_back() {
    let mut engine = engine();
    let mut log: Vec<Effect> = Vec::new();
    log.extend(engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0));
    log.extend(engine.tick(T0 + 1_000).into_iter().map(|(_, e)| e));
    // Redacted, then stopped before the flush emitted the removals (nothing on the batches
    // topic for the start-up check to find) and started again without Meta.
    log.extend(engine.apply(0, SHOP, redact(ann(), None, vec![]), T0 + 1_100));
    let mut without_meta = rules();
    without_meta.destinations.remove("meta");
    for audience in &mut without_meta.audiences {
        audience.destinations.retain(|d| d != "meta");
    }
    let mut restored = Engine::new(without_meta);
    restored.assign(0, persisted(&log));
    // A restored partition flushes one interval after its first tick.
    let settle = |engine: &mut Engine, at: i64| {
        let mut effects = engine.tick(at);
        effects.extend(engine.tick(at + 1_000));
        effects
    };
    let effects = settle(&mut restored, T0 + 10_000);
    assert_eq!(
        ops(&effects, "abandoned-checkouts", Op::Remove),
        ["files", "google", "tiktok"]
    );
    let expected: BTreeMap<String, u64> = [("meta".to_string(), 1)].into();
    assert_eq!(restored.stranded_removals(), &expected);
    log.extend(effects.into_iter().map(|(_, e)| e));
    // Meta is put back: the removal is sent.
    let mut again = Engine::new(rules());
    again.assign(0, persisted(&log));
    let effects = settle(&mut again, T0 + 20_000);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ["meta"]);
    confirm_everything(&mut again, T0 + 30_000);
    assert_eq!(again.people(), 0, "then she is forgotten");
}

#[test]
fn a_redaction_also_marks_the_email_and_phone_the_state_knew_the_person_by() {
    let mut engine = engine();
    // Ann, customer 42, known here as Ann@Example.com with a UK phone.
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    // Shopify's redaction names her id and the address she has now.
    let now_known_as = PersonRef {
        customer_id: Some(42),
        email: Some("ann@new.example".into()),
    };
    engine.apply(0, SHOP, redact(now_known_as, None, vec![]), T0 + 1_100);
    engine.tick(T0 + 2_100);
    confirm_everything(&mut engine, T0 + 2_200);
    assert_eq!(engine.people(), 0);
    // A checkout she left as a guest under the old address, in flight or late.
    let guest = PersonRef {
        customer_id: None,
        email: Some("ann@example.com".into()),
    };
    engine.apply(0, SHOP, abandoned(guest, Some(true), T0 + 500), T0 + 3_000);
    let effects = engine.tick(T0 + 10_000);
    assert_eq!(exported(&effects), 0, "re-exported: {effects:?}");
    assert_eq!(engine.people(), 0);
}

#[test]
fn a_plus_tagged_address_of_a_redacted_mailbox_does_not_bring_her_back_to_tiktok() {
    // TikTok drops the `+tag`: `ann+shop@example.com` is sent as the hash of ann@example.com,
    // the identifier of the person redacted.
    let mut engine = engine();
    engine.apply(0, SHOP, redact(ann(), None, vec![]), T0);
    let tagged = PersonRef {
        customer_id: None,
        email: Some("Ann+Shop@Example.com".into()),
    };
    let mut fact = abandoned(tagged, Some(true), T0 + 100);
    if let Input::Abandoned { contact, .. } = &mut fact {
        contact.email = Some("Ann+Shop@Example.com".into());
        contact.phone = None;
    }
    engine.apply(0, SHOP, fact, T0 + 100);
    let effects = engine.tick(T0 + 5_000);
    assert_eq!(exported(&effects), 0, "re-exported: {effects:?}");
}

#[test]
fn redacting_a_plus_tagged_address_removes_the_mailbox_tiktok_holds() {
    let mut engine = engine();
    let plain = PersonRef {
        customer_id: None,
        email: Some("ann@example.com".into()),
    };
    let mut fact = abandoned(plain, Some(true), T0);
    if let Input::Abandoned { contact, .. } = &mut fact {
        contact.phone = None;
    }
    engine.apply(0, SHOP, fact, T0);
    assert_eq!(exported(&engine.tick(T0 + 1_000)), ALL.len());
    let tagged = PersonRef {
        customer_id: None,
        email: Some("ann+shop@example.com".into()),
    };
    engine.apply(0, SHOP, redact(tagged, None, vec![]), T0 + 1_100);
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
}

#[test]
fn a_crash_after_a_google_addition_was_emitted_does_not_resend_its_signals() {
    let mut engine = engine_personalising_on_confirmed_opt_in();
    let applied = engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    let first = engine.tick(T0 + 1_000);
    assert!(batches(&first).iter().any(|b| b.destination == "google"));
    // Crash: the batches were written, the changelog has the person as applied.
    let mut restored = engine_personalising_on_confirmed_opt_in();
    restored.assign(0, persisted(&applied));
    for batch in batches(&first) {
        restored.reconcile(0, batch);
    }
    let effects = [restored.tick(T0 + 3_000), restored.tick(T0 + 4_000)].concat();
    assert!(batches(&effects).is_empty(), "{effects:?}");
}

/// The report's person holdings for a data request naming `who` (by id, email and phone).
fn reported(engine: &mut Engine, who: aftercart_shopify::privacy::Person) -> Vec<String> {
    let request = aftercart_shopify::privacy::DataRequest {
        person: who,
        id: Some(77),
    };
    let effects = engine.apply(0, SHOP, Input::DataRequest(Box::new(request)), T0 + 5_000);
    let [Effect::Report { report, .. }] = effects.as_slice() else {
        panic!("one report: {effects:?}");
    };
    report
        .holdings
        .iter()
        .filter(|h| h.kind == "person")
        .map(|h| h.data["stored"]["contact"]["first_name"].to_string())
        .collect()
}

#[test]
fn a_data_request_reports_no_other_customer_sharing_the_email_or_phone() {
    let mut engine = engine();
    let person = |id: u64, email: &str, first: &str| Input::Abandoned {
        person: PersonRef {
            customer_id: Some(id),
            email: Some(email.into()),
        },
        contact: Contact {
            first_name: Some(first.into()),
            ..contact(email)
        },
        consent: None,
        at_ms: T0,
        facts: Abandonment {
            kind: "checkout".into(),
            ..Default::default()
        },
    };
    engine.apply(0, SHOP, person(42, "ann@example.com", "Ann"), T0);
    // A household: Bob shares Ann's email, Cid her phone; each is his own customer.
    engine.apply(0, SHOP, person(43, "ann@example.com", "Bob"), T0);
    engine.apply(0, SHOP, person(44, "cid@example.com", "Cid"), T0);
    let ann = aftercart_shopify::privacy::Person {
        customer_id: Some(42),
        email: Some("ann@example.com".into()),
        phone: Some("+447700900123".into()),
        orders: vec![],
    };
    assert_eq!(reported(&mut engine, ann), ["\"Ann\""]);
}

/// Every destination's exporter has passed every batch written before `at_ms`.
fn confirmed_before(at_ms: i64, destinations: &[&str]) -> BTreeMap<(String, i32), i64> {
    destinations
        .iter()
        .map(|d| ((d.to_string(), 0), at_ms))
        .collect()
}

fn revoke_ann(engine: &mut Engine, at_ms: i64) {
    let revoke = Input::Consent {
        person: ann(),
        consent: ConsentFact {
            subscribed: false,
            at_ms,
            ..Default::default()
        },
    };
    engine.apply(0, SHOP, revoke, at_ms);
}

#[test]
fn an_unconfirmed_removal_is_emitted_again_past_the_threshold_and_a_confirmed_one_is_not() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    revoke_ann(&mut engine, T0 + 1_500);
    let first = engine.tick(T0 + 2_500);
    assert_eq!(ops(&first, "abandoned-checkouts", Op::Remove), ALL);
    let stored = persisted(first.iter().map(|(_, e)| e));
    let pending = &stored["p/shop.myshopify.com/c/42"].pending_removals;
    assert_eq!(
        pending.len(),
        4,
        "kept in the person's state until confirmed"
    );
    let first_ids: Vec<&str> = batches(&first)
        .iter()
        .map(|b| b.batch_id.as_str())
        .collect();
    assert!(pending
        .iter()
        .all(|r| first_ids.contains(&r.batch_id.as_str())));

    // The exporters' offsets are read before the batches were surely written: no confirmation.
    assert!(engine
        .confirm(&confirmed_before(T0 + 3_000, &ALL))
        .is_empty());
    engine.tick(T0 + 3_000);
    // Meta's exporter passed them; the others' did not.
    let cleared = engine.confirm(&confirmed_before(T0 + 3_001, &["meta"]));
    let stored = persisted(cleared.iter().map(|(_, e)| e));
    let left: Vec<&str> = stored["p/shop.myshopify.com/c/42"]
        .pending_removals
        .iter()
        .map(|r| r.destination.as_str())
        .collect();
    assert_eq!(left, ["files", "google", "tiktok"]);

    assert!(
        batches(&engine.tick(T0 + 2_500 + DAY - 1)).is_empty(),
        "not before the threshold"
    );
    // Looked for every minute (or a quarter of the threshold, when shorter).
    let again = engine.tick(T0 + 2_500 + DAY + 60_000);
    assert_eq!(
        ops(&again, "abandoned-checkouts", Op::Remove),
        ["files", "google", "tiktok"],
        "the unconfirmed ones are emitted again"
    );
    assert!(batches(&again)
        .iter()
        .all(|b| !first_ids.contains(&b.batch_id.as_str())));
    let first_meta = batches(&first)
        .into_iter()
        .find(|b| b.destination == "files")
        .unwrap();
    let again_meta = batches(&again)
        .into_iter()
        .find(|b| b.destination == "files")
        .unwrap();
    assert_eq!(again_meta.members, first_meta.members, "the same rows");
    assert_eq!(engine.reemitted().values().sum::<u64>(), 3);
    assert_eq!(engine.reemitted().get("meta"), None);
    assert!(
        batches(&engine.tick(T0 + 2_500 + DAY + 180_000)).is_empty(),
        "the threshold counts from the new batch"
    );
}

#[test]
fn a_redacted_person_is_deleted_only_once_every_removal_is_confirmed() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    engine.apply(0, SHOP, redact(ann(), None, vec![]), T0 + 1_100);
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
    let deleted = |effects: &[(i32, Effect)]| {
        effects.iter().any(|(_, e)| {
            matches!(e, Effect::Persist { key, person: None } if key == "p/shop.myshopify.com/c/42")
        })
    };
    assert!(
        !deleted(&effects),
        "not tombstoned while removals are pending"
    );
    assert_eq!(engine.people(), 1);
    engine.tick(T0 + 2_200);
    assert!(!deleted(
        &engine.confirm(&confirmed_before(T0 + 3_000, &["meta", "google"]))
    ));
    assert_eq!(engine.people(), 1);
    let last = engine.confirm(&confirmed_before(T0 + 3_000, &ALL));
    assert!(deleted(&last), "confirmed everywhere: deleted");
    assert_eq!(engine.people(), 0);
}

#[test]
fn wanted_again_before_confirmation_drops_the_pending_removal_and_the_add_follows_it() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    revoke_ann(&mut engine, T0 + 1_500);
    engine.tick(T0 + 2_500);
    let regrant = Input::Consent {
        person: ann(),
        consent: ConsentFact {
            subscribed: true,
            at_ms: T0 + 3_000,
            ..Default::default()
        },
    };
    engine.apply(0, SHOP, regrant, T0 + 3_000);
    let effects = engine.tick(T0 + 4_000);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Add), ALL);
    let stored = persisted(effects.iter().map(|(_, e)| e));
    assert!(stored["p/shop.myshopify.com/c/42"]
        .pending_removals
        .is_empty());
    assert!(
        batches(&engine.tick(T0 + 2_500 + DAY)).is_empty(),
        "a removal emitted again would undo the addition"
    );
    assert!(engine.reemitted().is_empty());
}

#[test]
fn removals_found_on_restore_wait_for_confirmation_too() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    revoke_ann(&mut engine, T0 + 1_500);
    let removal = engine.tick(T0 + 2_500);
    let people = engine.release(0).unwrap();
    let mut before: HashMap<String, Person> = people;
    for person in before.values_mut() {
        // The crash came before the person's record: the changelog still holds them as added.
        person.pending_removals.clear();
    }
    let mut restored = Engine::new(rules());
    restored.assign(0, before);
    for batch in batches(&removal) {
        restored.reconcile(0, batch);
    }
    restored.tick(T0 + 3_000);
    let again = restored.tick(T0 + 2_500 + DAY + 60_000);
    assert_eq!(ops(&again, "abandoned-checkouts", Op::Remove), ALL);
}

#[test]
fn a_removal_emitted_again_never_takes_away_a_row_another_person_holds_there_now() {
    // The guest's rows are removed and the same rows added as the customer; the guest's
    // removals are not confirmed (the destinations refuse for a day).
    let mut engine = engine();
    let guest = PersonRef {
        customer_id: None,
        email: Some("ann@example.com".into()),
    };
    engine.apply(0, SHOP, abandoned(guest, Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    engine.apply(
        0,
        SHOP,
        abandoned(ann(), Some(true), T0 + 1_100),
        T0 + 1_100,
    );
    let merged = engine.tick(T0 + 2_100);
    assert_eq!(ops(&merged, "abandoned-checkouts", Op::Remove), ALL);
    assert_eq!(ops(&merged, "abandoned-checkouts", Op::Add), ALL);
    engine.tick(T0 + 3_000);
    let again = engine.tick(T0 + 2_100 + DAY + 60_000);
    assert_eq!(
        ops(&again, "abandoned-checkouts", Op::Remove),
        ALL,
        "the guest's removals are emitted again"
    );
    // At the platform the last word on each row must be the customer's addition.
    for destination in ALL {
        let added: Vec<&serde_json::Value> = batches(&merged)
            .into_iter()
            .filter(|b| b.destination == destination && b.op == Op::Add)
            .flat_map(|b| b.members.iter().map(|m| &m.row))
            .collect();
        let mut last = None;
        for batch in batches(&again)
            .into_iter()
            .filter(|b| b.destination == destination)
        {
            for member in &batch.members {
                if added.contains(&&member.row) {
                    last = Some(batch.op);
                }
            }
        }
        assert_ne!(
            last,
            Some(Op::Remove),
            "{destination}: the customer, still wanted, would be removed"
        );
    }
    assert_eq!(engine.members()["abandoned-checkouts"], 1);
}

#[test]
fn a_redacted_person_waiting_for_confirmations_keeps_only_the_hashed_rows() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    engine.apply(0, SHOP, redact(ann(), None, vec![]), T0 + 1_100);
    let effects = engine.tick(T0 + 2_100);
    assert_eq!(ops(&effects, "abandoned-checkouts", Op::Remove), ALL);
    // What the changelog holds for her while the destinations have not confirmed.
    let stored = persisted(effects.iter().map(|(_, e)| e));
    let person = &stored["p/shop.myshopify.com/c/42"];
    assert_eq!(person.pending_removals.len(), 4);
    let text = serde_json::to_string(person).unwrap().to_lowercase();
    // (Google's row carries the postal code in the clear, as Google takes it.)
    for plain in ["ann@example.com", "7700", "lee"] {
        assert!(!text.contains(plain), "{plain} kept: {text}");
    }
    // And they are still emitted again from what is kept.
    let again = engine.tick(T0 + 2_100 + DAY + 60_000);
    assert_eq!(ops(&again, "abandoned-checkouts", Op::Remove), ALL);
}

#[test]
fn a_removal_is_confirmed_by_the_rounds_after_its_written_mark_not_by_the_clock() {
    let mut engine = engine();
    engine.apply(0, SHOP, abandoned(ann(), Some(true), T0), T0);
    engine.tick(T0 + 1_000);
    revoke_ann(&mut engine, T0 + 1_500);
    assert_eq!(
        ops(&engine.tick(T0 + 2_500), "abandoned-checkouts", Op::Remove),
        ALL
    );
    // Written when 7 rounds had begun; the clock says nothing about the rounds.
    engine.tick_marking(T0 + 3_000, 7);
    assert!(
        engine.confirm(&confirmed_before(7, &ALL)).is_empty(),
        "round 7 may have read the ends before the removal landed"
    );
    let cleared = engine.confirm(&confirmed_before(8, &ALL));
    let stored = persisted(cleared.iter().map(|(_, e)| e));
    assert!(stored["p/shop.myshopify.com/c/42"]
        .pending_removals
        .is_empty());
}

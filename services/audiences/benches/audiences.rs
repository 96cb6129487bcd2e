//! Audiences benchmarks (`make bench`): the engine's records/s on one core (decode + apply of
//! abandonment events and ~1.4 KB paid orders, then the flush that normalises, hashes and batches
//! every change for Meta, Google, TikTok and files), and the resident bytes per person held.
//! Prints a Markdown table; numbers, not assertions.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[path = "../../../bench/whole_service.rs"]
mod whole_service;

use aftercart_audiences::domain::audience::{AbandonmentFilter, Audience, OrderFilter, Source};
use aftercart_audiences::domain::engine::{Effect, Engine, Rules};
use aftercart_audiences::domain::input::decode_input;
use aftercart_audiences::platform::Platform;

const SHOPS: usize = 50;
const DAY: i64 = 86_400_000;
const NOW: i64 = 1_795_000_000_000;

/// Resident memory of this process (Linux), so state size includes allocator overhead.
fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn rules() -> Rules {
    let everywhere: Vec<String> = ["meta", "google", "tiktok", "files"]
        .iter()
        .map(|d| d.to_string())
        .collect();
    Rules {
        audiences: vec![
            Audience {
                name: "abandoned-checkouts".into(),
                source: Source::Abandonments(AbandonmentFilter {
                    kinds: vec!["checkout".into()],
                    ..Default::default()
                }),
                window_ms: Some(30 * DAY),
                leave_on_purchase: true,
                destinations: everywhere,
                shops: vec![],
            },
            Audience {
                name: "recent-purchasers".into(),
                source: Source::Orders(OrderFilter::default()),
                window_ms: Some(30 * DAY),
                leave_on_purchase: false,
                destinations: vec!["files".into()],
                shops: vec![],
            },
        ],
        destinations: BTreeMap::from([
            ("meta".to_string(), Platform::Meta),
            ("google".to_string(), Platform::Google),
            ("tiktok".to_string(), Platform::Tiktok),
            ("files".to_string(), Platform::Plain),
        ]),
        flush_interval_ms: 30_000,
        batch_rows: 1_000,
        person_retention_ms: 90 * DAY,
        redaction_retention_ms: 400 * DAY,
        google_consent: BTreeMap::new(),
        removal_reemit_after_ms: DAY,
    }
}

fn abandonment(n: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"abandoned","kind":"checkout","event_id":"{n:032x}","shop":"s","journey_key":"s/t{n}","checkout_token":"t{n}","cart_token":null,
        "customer":{{"id":{id},"email":"Shopper.{n}+ads@Example.com","phone":"+44 7700 9{p:05}","first_name":"Ann","last_name":"Lée","country":"GB","accepts_email_marketing":true,"accepts_sms_marketing":false}},
        "value":{{"amount":"120.00","currency":"GBP"}},"line_items":{{"count":1,"quantity":1,"items":[]}},
        "segments":{{"stage":"payment","value_tier":"high","customer":"new","contactable":{{"email":true,"sms":true}},"consent":{{"email":true,"sms":false}},"discount":false,"fence_sitter":false,"repeat":0}},
        "abandoned_at":"2026-11-18T10:00:00Z","last_activity_at":"2026-11-18T09:00:00Z"}}"#,
        id = 1_000_000 + n,
        p = n % 100_000,
    )
    .into_bytes()
}

fn order(n: usize) -> Vec<u8> {
    format!(
        r##"{{"id":{oid},"name":"#{n}","email":"shopper.{n}+ads@example.com","financial_status":"paid","cancelled_at":null,"test":false,
        "currency":"GBP","total_price":"129.90","buyer_accepts_marketing":true,"processed_at":"2026-11-18T12:00:00Z","created_at":"2026-11-18T12:00:00Z",
        "customer":{{"id":{id},"email":"shopper.{n}+ads@example.com","first_name":"Ann","last_name":"Lée","orders_count":1,
                    "email_marketing_consent":{{"state":"subscribed","opt_in_level":"single_opt_in","consent_updated_at":"2026-01-01T00:00:00Z"}}}},
        "billing_address":{{"first_name":"Ann","last_name":"Lée","address1":"{n} High Street","city":"London","zip":"SW1A 1AA","country_code":"GB","phone":"07700 9{p:05}"}},
        "line_items":[{{"product_id":632910392,"variant_id":808950810,"title":"IPod Nano - 8GB","quantity":1,"price":"59.00","sku":"IPOD2008PINK"}},
                      {{"product_id":921728736,"variant_id":447654529,"title":"IPod Touch 8GB","quantity":1,"price":"59.00","sku":"IPOD2009BLACK"}}]}}"##,
        oid = 5_000_000 + n,
        id = 1_000_000 + n,
        p = n % 100_000,
    )
    .into_bytes()
}

/// Audiences as a whole service with its built-in audiences and file destinations: pre-filled
/// abandonments and orders topics → the router → the by-shop topic → the stage (state,
/// changelog, flushed batches, offsets).
fn whole_service() -> Vec<(String, String)> {
    use aftercart_kafka::TopicNames;
    use aftercart_shopify::Family;

    let records = whole_service::record_count(100_000);
    // Two thirds abandonments, a third paid orders of the same people (as in the engine bench).
    let people = records * 2 / 3;
    let shops = 600;
    let dir =
        std::env::temp_dir().join(format!("aftercart-bench-audiences-{}", std::process::id()));
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let kafka_args = whole_service::kafka_args(&cluster);
    let args = <Flags as clap::Parser>::parse_from([
        "bench",
        "--audiences-dir",
        dir.to_str().expect("a UTF-8 temporary directory"),
        // The batches are part of the run: flushed a second after a partition's first change.
        "--audiences-export-flush-interval",
        "1s",
    ])
    .audiences;
    let config = args
        .validate(
            &kafka_args,
            Duration::from_secs(10),
            &aftercart_audiences::AudiencesDefaults::production(),
        )
        .expect("config");
    whole_service::create_topics(&cluster, &aftercart_audiences::topic_specs(&config).0);
    let orders = TopicNames::new("bench.").family(Family::Orders);
    let input = |n: usize| {
        let person = n % people;
        let shop = format!("shop{}.myshopify.com", person % shops);
        let (topic, body, shopify_topic) = if n < people {
            (config.abandonments_topic.clone(), abandonment(person), None)
        } else {
            (orders.clone(), order(person), Some("orders/paid"))
        };
        let mut headers = vec![("shopify-shop-domain", shop.clone())];
        if let Some(t) = shopify_topic {
            headers.push(("shopify-topic", t.to_string()));
        }
        whole_service::Input {
            topic,
            key: format!("{shop}/t{person}"),
            body,
            headers,
        }
    };
    whole_service::prefill(&cluster, (0..records).map(input));
    let measured = whole_service::measure(
        records,
        "aftercart_audiences_",
        |registry, stop| async move {
            let health = aftercart_runtime::Health::new();
            aftercart_audiences::serve(&config, &registry, &health, stop).await
        },
        |families| whole_service::processed_all(families, "aftercart_audiences_", records),
        &[
            "aftercart_audiences_changelog_records_written_total",
            "aftercart_audiences_batches_emitted_total",
        ],
        // Longer than the flush interval: the last batches come up to a second after the last
        // record.
        Duration::from_millis(1_500),
    );
    let _ = std::fs::remove_dir_all(&dir);
    measured.rows(
        "pre-filled abandonments + orders topics → router → by-shop topic → state + changelog + batches",
    )
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    audiences: aftercart_audiences::AudiencesArgs,
}

fn main() {
    let people = 100_000;
    // Every person abandons a checkout; half of them buy later (leaving the abandoners).
    let mut inputs: Vec<(String, &str, Option<&str>, Vec<u8>)> = Vec::new();
    for n in 0..people {
        let shop = format!("shop{}.myshopify.com", n % SHOPS);
        inputs.push((shop, "abandonments", None, abandonment(n)));
    }
    for n in (0..people).step_by(2) {
        let shop = format!("shop{}.myshopify.com", n % SHOPS);
        inputs.push((shop, "orders", Some("orders/paid"), order(n)));
    }
    let bytes: usize = inputs.iter().map(|(.., b)| b.len()).sum();

    let before = resident_bytes();
    let mut engine = Engine::new(rules());
    engine.assign(0, HashMap::new());
    let started = Instant::now();
    for (shop, family, topic, body) in &inputs {
        let input = decode_input(family, *topic, body, NOW).expect("bench inputs decode");
        engine.apply(0, shop, input, NOW);
    }
    let applied = started.elapsed();
    // State only: the flush's batches would count too once allocated.
    let grown = resident_bytes() - before;
    let flush_started = Instant::now();
    let effects = engine.flush(0, NOW + 1);
    let flushed = flush_started.elapsed();
    let (batches, members) = effects.iter().fold((0, 0), |(b, m), e| match e {
        Effect::Emit { batch, .. } => (b + 1, m + batch.members.len()),
        Effect::Persist { .. } | Effect::Report { .. } => (b, m),
    });
    let held = engine.people();

    println!("| audiences benchmark | result |");
    println!("|---|---|");
    println!(
        "| engine: decode + apply {} records ({} abandonments, {} paid orders; {:.1} MB) on one core | {:.0} records/s |",
        inputs.len(),
        people,
        people / 2,
        bytes as f64 / 1e6,
        inputs.len() as f64 / applied.as_secs_f64()
    );
    println!(
        "| flush: normalise, hash and batch every change ({members} rows for Meta, Google, TikTok and files in {batches} batches) | {:.0} rows/s ({:.2} s) |",
        members as f64 / flushed.as_secs_f64(),
        flushed.as_secs_f64()
    );
    println!(
        "| state: {held} people (contact, consent, two memberships) | {:.0} resident bytes per person |",
        grown as f64 / held.max(1) as f64
    );
    if !std::env::args().any(|a| a == "--engine-only") {
        for (what, result) in whole_service() {
            println!("| {what} | {result} |");
        }
    }
}

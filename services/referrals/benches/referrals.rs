//! Referrals benchmarks (`make bench`): the engine's records/s on one core (decode + apply of
//! realistic ~1.5 KB order webhooks: buyers becoming advocates, friends' referred first orders,
//! refunds), and the resident bytes per customer held. Prints a Markdown table; numbers, not
//! assertions.

use std::time::{Duration, Instant};

#[path = "../../../bench/whole_service.rs"]
mod whole_service;

use aftercart_referrals::domain::code::{CodeRules, Source};
use aftercart_referrals::domain::engine::{Effect, Engine, Rules, Trigger};
use aftercart_referrals::domain::input::decode_input;
use aftercart_shopify::money::Amount;

const SHOPS: usize = 50;

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
    Rules {
        codes: CodeRules {
            secret: b"benchmark-code-secret-0123456789".to_vec(),
            prefix: "REF-".into(),
            sources: vec![
                Source::DiscountCode,
                Source::LandingSite,
                Source::NoteAttribute,
            ],
            url_parameter: "ref".into(),
            note_attributes: vec!["ref".into()],
            share_url: "https://{shop}/?ref={code}".into(),
        },
        trigger: Trigger::Paid,
        invite_delay_ms: 0,
        invite_min_value: Amount::parse("0").unwrap(),
        cooldown_ms: 90 * 86_400_000,
        reward_min_value: Amount::parse("20").unwrap(),
        review_window_ms: 30 * 86_400_000,
        ip_burst_max: 3,
        ip_burst_window_ms: 86_400_000,
        order_retention_ms: 120 * 86_400_000,
        redaction_retention_ms: 400 * 86_400_000,
        hasher: aftercart_runtime::state_hash::StateHasher::new(*b"bench-state-hash-key-16")
            .unwrap(),
    }
}

/// A paid order of customer `customer`, optionally with a referral code (≈1.5 KB of JSON).
fn order(id: usize, customer: usize, code: Option<&str>) -> Vec<u8> {
    let discounts = code.map_or(String::new(), |c| {
        format!(r#"{{"code":"{c}","amount":"5.00","type":"fixed_amount"}}"#)
    });
    format!(
        r##"{{"id":{id},"name":"#{id}","email":"buyer{customer}@example.com","financial_status":"paid","fulfillment_status":null,
        "cancelled_at":null,"test":false,"currency":"EUR","subtotal_price":"118.00","current_subtotal_price":"118.00","total_price":"129.90",
        "buyer_accepts_marketing":true,"browser_ip":"10.{a}.{b}.{c}","landing_site":"/products/ipod?utm_source=newsletter",
        "customer":{{"id":{cid},"email":"buyer{customer}@example.com","first_name":"Ann","last_name":"Lee{customer}","orders_count":1,
                    "email_marketing_consent":{{"state":"subscribed","opt_in_level":"single_opt_in","consent_updated_at":"2026-01-01T00:00:00Z"}}}},
        "shipping_address":{{"first_name":"Ann","last_name":"Lee{customer}","address1":"{customer} Rue de Rivoli","city":"Paris","zip":"75001","country_code":"FR"}},
        "billing_address":{{"first_name":"Ann","last_name":"Lee{customer}","address1":"{customer} Rue de Rivoli","city":"Paris","zip":"75001","country_code":"FR"}},
        "discount_codes":[{discounts}],"note_attributes":[],
        "line_items":[{{"product_id":632910392,"variant_id":808950810,"title":"IPod Nano - 8GB","quantity":1,"price":"59.00","sku":"IPOD2008PINK"}},
                      {{"product_id":921728736,"variant_id":447654529,"title":"IPod Touch 8GB","quantity":1,"price":"59.00","sku":"IPOD2009BLACK"}}],
        "created_at":"2026-11-23T10:00:00Z","updated_at":"2026-11-23T10:00:00Z"}}"##,
        cid = 1_000_000 + customer,
        a = customer % 250,
        b = (customer / 250) % 250,
        c = id % 250,
    )
    .into_bytes()
}

/// Referrals as a whole service: a pre-filled orders topic (advocates' paid orders, then their
/// friends' referred first orders) → the router → the by-shop topic → the stage (state,
/// changelog, invites, rewards in review, offsets).
fn whole_service() -> Vec<(String, String)> {
    use aftercart_kafka::TopicNames;
    use aftercart_shopify::Family;

    let records = whole_service::record_count(100_000);
    // More shops than the engine bench: the by-shop topic is keyed by shop, so its partitions
    // stay even (and under the mock cluster's per-partition limit).
    let shops = 600;
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let kafka_args = whole_service::kafka_args(&cluster);
    let args = <Flags as clap::Parser>::parse_from([
        "bench",
        "--referrals-code-secret",
        "benchmark-code-secret-0123456789",
        "--state-hash-key",
        "bench-state-hash-key-16",
        "--referrals-invite-delay",
        "0s",
    ])
    .referrals;
    let config = args
        .validate(
            &kafka_args,
            Duration::from_secs(10),
            &aftercart_referrals::ReferralsDefaults::production(),
        )
        .expect("config");
    whole_service::create_topics(&cluster, &aftercart_referrals::topic_specs(&config).0);
    let topic = TopicNames::new("bench.").family(Family::Orders);
    let codes = rules().codes;
    let advocates = records / 2;
    let input = |n: usize| {
        let (advocate, friend) = (n % advocates, n >= advocates);
        let shop = format!("shop{}.myshopify.com", advocate % shops);
        let body = if friend {
            let code = codes.code_for(&shop, &format!("id:{}", 1_000_000 + advocate));
            order(n, n, Some(&code))
        } else {
            order(n, n, None)
        };
        whole_service::Input {
            topic: topic.clone(),
            key: format!("{shop}/order-{n}"),
            body,
            headers: vec![
                ("shopify-topic", "orders/paid".into()),
                ("shopify-shop-domain", shop),
            ],
        }
    };
    whole_service::prefill(&cluster, (0..records).map(input));
    let measured = whole_service::measure(
        records,
        "aftercart_referrals_",
        |registry, stop| async move {
            let health = aftercart_runtime::Health::new();
            aftercart_referrals::serve(&config, &registry, &health, stop).await
        },
        |families| whole_service::processed_all(families, "aftercart_referrals_", records),
        &["aftercart_referrals_changelog_records_written_total"],
        Duration::from_millis(300),
    );
    measured.rows("pre-filled orders topic → router → by-shop topic → state + changelog + invites")
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    referrals: aftercart_referrals::ReferralsArgs,
}

fn main() {
    let advocates = 50_000;
    let engine_rules = rules();
    // Advocates' paid orders, then one referred first order per advocate, then refunds of a tenth.
    let mut inputs: Vec<(String, &str, Vec<u8>)> = Vec::new();
    for n in 0..advocates {
        let shop = format!("shop{}.myshopify.com", n % SHOPS);
        inputs.push((shop, "orders/paid", order(n, n, None)));
    }
    for n in 0..advocates {
        let shop = format!("shop{}.myshopify.com", n % SHOPS);
        let code = engine_rules
            .codes
            .code_for(&shop, &format!("id:{}", 1_000_000 + n));
        let friend = advocates + n;
        inputs.push((shop, "orders/paid", order(friend, friend, Some(&code))));
    }
    for n in (0..advocates).step_by(10) {
        let shop = format!("shop{}.myshopify.com", n % SHOPS);
        let body = format!(r#"{{"id":{},"order_id":{}}}"#, n * 7 + 1, advocates + n).into_bytes();
        inputs.push((shop, "refunds/create", body));
    }
    let bytes: usize = inputs.iter().map(|(_, _, b)| b.len()).sum();

    let before = resident_bytes();
    let mut engine = Engine::new(engine_rules);
    let mut emitted = 0usize;
    let started = Instant::now();
    for (shop, topic, body) in &inputs {
        let input = decode_input(Some(topic), body).expect("bench inputs decode");
        for effect in engine.apply(0, shop, input, 1_000) {
            if matches!(effect, Effect::Emit { .. }) {
                emitted += 1;
            }
        }
    }
    let took = started.elapsed();
    let (customers, orders, in_review) = engine.sizes();
    let grown = resident_bytes() - before;

    println!("| referrals benchmark | result |");
    println!("|---|---|");
    println!(
        "| engine: decode + apply {} order webhooks ({:.1} MB) on one core | {:.0} records/s ({} events emitted) |",
        inputs.len(),
        bytes as f64 / 1e6,
        inputs.len() as f64 / took.as_secs_f64(),
        emitted
    );
    println!(
        "| state: {customers} customers, {orders} orders, {in_review} rewards in review | {:.0} resident bytes per customer |",
        grown as f64 / customers.max(1) as f64
    );
    if !std::env::args().any(|a| a == "--engine-only") {
        for (what, result) in whole_service() {
            println!("| {what} | {result} |");
        }
    }
}

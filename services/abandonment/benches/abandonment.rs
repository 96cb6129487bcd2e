//! Abandonment benchmarks (`make bench`): handler records/s, bytes per open journey, and the
//! whole service consuming a pre-filled topic. Prints a Markdown table; numbers, not assertions.

use std::time::{Duration, Instant};

#[path = "../../../bench/whole_service.rs"]
mod whole_service;

use aftercart_abandonment::domain::engine::{Engine, Rules};
use aftercart_abandonment::domain::input::journey_input;
use aftercart_abandonment::domain::money::Amount;
use aftercart_abandonment::domain::segments::SegmentRules;

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
        abandon_after_ms: 3_600_000,
        cart_abandon_after_ms: 3_600_000,
        retention_ms: 30 * 86_400_000,
        uninstall_grace_ms: 48 * 3_600_000,
        recovery_marker: "/recover".into(),
        transactional_reminders: false,
        segments: SegmentRules {
            value_medium: Amount::parse("50").unwrap(),
            value_high: Amount::parse("200").unwrap(),
            fence_sitter_visits: 3,
            fence_sitter_span_ms: 86_400_000,
            repeat_window_ms: 30 * 86_400_000,
        },
    }
}

/// A realistic checkout update: contact, address, two line items (≈1 KB of JSON).
fn checkout(n: usize, minute: usize) -> Vec<u8> {
    format!(
        r#"{{"token":"chk-{n}","cart_token":"cart-{n}","email":"buyer{n}@example.com","phone":null,"buyer_accepts_marketing":true,
        "currency":"EUR","presentment_currency":"EUR","subtotal_price":"118.00","total_price":"129.90","total_tax":"11.90",
        "customer":{{"id":{id},"email":"buyer{n}@example.com","first_name":"Ann","last_name":"Lee","orders_count":1}},
        "shipping_address":{{"first_name":"Ann","last_name":"Lee","address1":"1 Rue de Rivoli","city":"Paris","zip":"75001","country_code":"FR"}},
        "billing_address":{{"first_name":"Ann","last_name":"Lee","address1":"1 Rue de Rivoli","city":"Paris","zip":"75001","country_code":"FR"}},
        "shipping_lines":[],"discount_codes":[],"gateway":null,"completed_at":null,
        "line_items":[{{"product_id":632910392,"variant_id":808950810,"title":"IPod Nano - 8GB","quantity":1,"price":"59.00","sku":"IPOD2008PINK"}},
                      {{"product_id":921728736,"variant_id":447654529,"title":"IPod Touch 8GB","quantity":1,"price":"59.00","sku":"IPOD2009BLACK"}}],
        "created_at":"2026-11-23T10:00:00Z","updated_at":"2026-11-23T10:{minute:02}:00Z"}}"#,
        id = 1_000_000 + n
    )
    .into_bytes()
}

fn handler(rows: &mut Vec<(String, String)>) {
    let journeys = 50_000;
    let bodies: Vec<(String, Vec<u8>)> = (0..journeys * 2)
        .map(|i| {
            (
                format!("shop.myshopify.com/cart-{}", i % journeys),
                checkout(i % journeys, i / journeys),
            )
        })
        .collect();
    let mut engine = Engine::new(rules());
    engine.assign(0, Vec::new());
    let started = Instant::now();
    for (at, (key, body)) in bodies.iter().enumerate() {
        let input = journey_input(Some("checkouts/update"), body).expect("decodes");
        std::hint::black_box(engine.apply(0, key, "shop.myshopify.com", input, at as i64));
    }
    let took = started.elapsed();
    rows.push((
        "handler: decode + apply a checkout update (1 KB JSON), one core".into(),
        format!(
            "{:.0} records/s ({} records in {:.2} s)",
            bodies.len() as f64 / took.as_secs_f64(),
            bodies.len(),
            took.as_secs_f64()
        ),
    ));
    let started = Instant::now();
    let fired = engine.fire_due(i64::MAX / 2);
    let took = started.elapsed();
    rows.push((
        "handler: fire due abandonments (segments + event)".into(),
        format!(
            "{:.0} abandonments/s ({} in {:.2} s)",
            fired.len() as f64 / 2.0 / took.as_secs_f64(),
            fired.len() / 2,
            took.as_secs_f64()
        ),
    ));
}

fn bytes_per_journey(rows: &mut Vec<(String, String)>) {
    let journeys = 100_000;
    // Run first, each input made just before it is applied: no pool of freed memory from
    // earlier work for the state to fill unseen (mimalloc reuses such pages readily, which made
    // this row read ≈ 20 B when the inputs were made up front).
    let before = resident_bytes();
    let mut engine = Engine::new(rules());
    engine.assign(0, Vec::new());
    for n in 0..journeys {
        let key = format!("shop.myshopify.com/cart-{n}");
        let input = journey_input(Some("checkouts/update"), &checkout(n, 0)).unwrap();
        // Effects are dropped: only the state the engine keeps is counted.
        drop(engine.apply(0, &key, "shop.myshopify.com", input, n as i64));
    }
    let used = resident_bytes() - before;
    let per = used as f64 / journeys as f64;
    rows.push((
        "state: resident bytes per open checkout journey (2 line items)".into(),
        format!(
            "{per:.0} B → {:.2} GiB for 1 M open checkouts",
            per * 1e6 / (1u64 << 30) as f64
        ),
    ));
    std::hint::black_box(&engine);
}

/// How many records each partition of `topic` holds (its high watermarks; the low ones are 0
/// after `whole_service::prefill`).
fn partition_sizes<C: rdkafka::ClientContext>(
    cluster: &rdkafka::mocking::MockCluster<'_, C>,
    topic: &str,
) -> Vec<i64> {
    let client: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("client");
    (0..whole_service::PARTITIONS)
        .map(|partition| {
            rdkafka::producer::Producer::client(&client)
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// The consumer stage's batch (`aftercart_kafka::stage`'s `BATCH`, private there).
const STAGE_BATCH: i64 = 2_000;

/// Feeds `inputs` (`records` of them, in `rounds` of one record per journey) to the whole service on an embedded broker and returns
/// the run's rows, named for `what`. The run ends once every record is processed and wrote its
/// own changelog record: each input here changes its journey, so fewer writes would mean
/// updates the stage coalesced (it writes a key once per batch), which would flatter the
/// figure, and the run would not end.
fn run_whole_service(
    inputs: impl IntoIterator<Item = whole_service::Input>,
    records: usize,
    rounds: usize,
    what: &str,
) -> Vec<(String, String)> {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let kafka_args = whole_service::kafka_args(&cluster);
    let args = <Flags as clap::Parser>::parse_from(["bench"]).abandonment;
    let config = args
        .validate(
            &kafka_args,
            Duration::from_secs(10),
            &aftercart_abandonment::AbandonmentDefaults::production(),
        )
        .expect("config");
    whole_service::create_topics(&cluster, &aftercart_abandonment::topic_specs(&config).0);
    whole_service::prefill(&cluster, inputs);
    if rounds > 1 {
        // Rounds of one record per journey: a journey's next record comes a round later in its
        // partition, which must be more than a batch away or the stage coalesces the two.
        let topic =
            aftercart_kafka::TopicNames::new("bench.").family(aftercart_shopify::Family::Checkouts);
        let sizes = partition_sizes(&cluster, &topic);
        let smallest = sizes.iter().min().copied().unwrap_or(0) / rounds as i64;
        assert!(
            smallest > STAGE_BATCH,
            "a partition holds {smallest} journeys per round, not more than a batch \
             ({STAGE_BATCH}): updates would coalesce; feed more records ({sizes:?})"
        );
    }
    let measured = whole_service::measure(
        records,
        "aftercart_abandonment_",
        |registry, stop| async move {
            let health = aftercart_runtime::Health::new();
            aftercart_abandonment::serve(&config, &registry, &health, stop).await
        },
        |families| {
            whole_service::processed_all(families, "aftercart_abandonment_", records)
                && whole_service::counter(
                    families,
                    "aftercart_abandonment_changelog_records_written_total",
                ) >= records as f64
        },
        &["aftercart_abandonment_changelog_records_written_total"],
        Duration::from_millis(50),
    );
    measured.rows(what)
}

fn whole_service(rows: &mut Vec<(String, String)>) {
    // lz4 batches as the ingress writes them keep 100,000 records of ~1 KB under the mock
    // cluster's per-partition limit; AFTERCART_BENCH_RECORDS changes the count.
    let records = whole_service::record_count(100_000);
    let inputs = (0..records).map(|n| mix_record(n, 1));
    rows.extend(run_whole_service(
        inputs,
        records,
        1,
        "pre-filled checkouts topic → state + changelog",
    ));
}

/// Record `step` of journey `n` in the mix: the checkout, then three updates (Shopify sends
/// one as the shopper passes each step: contact, shipping, payment).
fn mix_record(n: usize, step: usize) -> whole_service::Input {
    use aftercart_kafka::TopicNames;
    use aftercart_shopify::Family;

    let topic = if step == 0 {
        "checkouts/create"
    } else {
        "checkouts/update"
    };
    whole_service::Input {
        topic: TopicNames::new("bench.").family(Family::Checkouts),
        key: format!("shop.myshopify.com/cart-{n}"),
        body: checkout(n, step),
        headers: vec![
            ("shopify-topic", topic.into()),
            ("shopify-shop-domain", "shop.myshopify.com".into()),
        ],
    }
}

/// The whole service on the mix of a live shop rather than only new journeys: each checkout is
/// created, then updated three times, so three records in four update a journey held in state
/// (as they do while shoppers move through the checkout's steps) instead of each adding one.
/// The records go in rounds (every journey's creation, then every journey's first update, …):
/// a journey's next record is then ≈ 2,500 records later in its partition, so no batch
/// (2,000 records, which the consumer may fill from one partition) holds a journey twice. The
/// stage writes a key once per batch, and coalesced updates would flatter the figure: the run
/// checks the partitions' sizes first and that every record wrote its own changelog record.
fn whole_service_mix(rows: &mut Vec<(String, String)>) {
    // 30,000 journeys: ≈ 2,500 per partition and round, a margin of ≈ 10 standard deviations
    // of the key hash's spread over the batch (25,000 left the smallest partition 11 over).
    let journeys = whole_service::record_count(120_000) / 4;
    let rounds = (0..4).flat_map(|step| (0..journeys).map(move |n| mix_record(n, step)));
    let mix = run_whole_service(
        rounds,
        journeys * 4,
        4,
        "pre-filled checkouts topic, each checkout created then updated 3 times → state + changelog",
    );
    // Its rows named apart from the all-new run's (the report's headline lists both).
    rows.extend(mix.into_iter().map(|(what, result)| {
        (
            what.replacen("whole service:", "whole service, live-shop mix:", 1),
            result,
        )
    }));
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    abandonment: aftercart_abandonment::AbandonmentArgs,
}

fn main() {
    let mut rows = Vec::new();
    bytes_per_journey(&mut rows);
    handler(&mut rows);
    if !std::env::args().any(|a| a == "--handler-only") {
        whole_service(&mut rows);
        whole_service_mix(&mut rows);
    }
    println!("\n| abandonment benchmark | result |\n|---|---|");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
}

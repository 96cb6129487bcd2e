//! Abandonment benchmarks (`make bench`): handler records/s, bytes per open journey, and the
//! whole service consuming a pre-filled topic. Prints a Markdown table; numbers, not assertions.

use std::time::{Duration, Instant};

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

/// CPU time used so far by every thread of this process (service, librdkafka, embedded
/// broker), in seconds: unlike wall time, barely moved by other work on a shared machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks / 100.0
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
    let inputs: Vec<_> = (0..journeys)
        .map(|n| journey_input(Some("checkouts/update"), &checkout(n, 0)).unwrap())
        .collect();
    let keys: Vec<String> = (0..journeys)
        .map(|n| format!("shop.myshopify.com/cart-{n}"))
        .collect();
    let before = resident_bytes();
    let mut engine = Engine::new(rules());
    engine.assign(0, Vec::new());
    for (at, (key, input)) in keys.iter().zip(inputs).enumerate() {
        // Effects are dropped: only the state the engine keeps is counted.
        drop(engine.apply(0, key, "shop.myshopify.com", input, at as i64));
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

fn whole_service(rows: &mut Vec<(String, String)>) {
    use aftercart_kafka::{KafkaArgs, TopicNames};
    use aftercart_shopify::Family;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    // lz4 batches as the ingress writes them keep 100,000 records of ~1 KB under the mock
    // cluster's per-partition limit; AFTERCART_BENCH_RECORDS changes the count.
    let records: usize = std::env::var("AFTERCART_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let kafka_args = KafkaArgs {
        brokers: Some(cluster.bootstrap_servers()),
        topic_prefix: "bench.".into(),
        topic_partitions: "12".into(),
        topic_replication: "1".into(),
        topic_min_insync_replicas: None,
        topic_retention: "7d".into(),
        topic_compaction_lag: "1d".into(),
        kafka_properties_file: None,
        kafka_properties: String::new(),
        instance_id: Some("bench".into()),
    };
    let args = <Flags as clap::Parser>::parse_from(["bench"]).abandonment;
    let config = args
        .validate(
            &kafka_args,
            Duration::from_secs(10),
            &aftercart_abandonment::AbandonmentDefaults::production(),
        )
        .expect("config");
    for spec in aftercart_abandonment::topic_specs(&config).0 {
        cluster
            .create_topic(&spec.name, spec.partitions, spec.replication)
            .expect("topic");
    }
    let topic = TopicNames::new("bench.").family(Family::Checkouts);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    for n in 0..records {
        let body = checkout(n, 0);
        let key = format!("shop.myshopify.com/cart-{n}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "shopify-topic",
                value: Some("checkouts/update"),
            })
            .insert(Header {
                key: "shopify-shop-domain",
                value: Some("shop.myshopify.com"),
            });
        loop {
            match producer.send(
                BaseRecord::to(&topic)
                    .key(&key)
                    .payload(&body)
                    .headers(headers.clone()),
            ) {
                Ok(()) => break,
                Err(_) => producer.poll(Duration::from_millis(10)),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("pre-filled");

    // The mock cluster keeps only ~5 MB per partition and drops the oldest records beyond it:
    // a run that lost records would measure nothing, so check that none was dropped.
    for partition in 0..kafka_args
        .topic_partitions
        .parse::<i32>()
        .expect("partitions")
    {
        let (low, _) = producer
            .client()
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(
            low, 0,
            "the mock cluster dropped records of partition {partition}"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (startup, steady, steady_records, took, cpu, restoring) = runtime.block_on(async {
        let registry = prometheus::Registry::new();
        let health = aftercart_runtime::Health::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let task = {
            let (config, registry, health, stop) = (
                config.clone(),
                registry.clone(),
                health.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                aftercart_abandonment::serve(&config, &registry, &health, stop).await
            })
        };
        let counter = |name: &str| -> f64 {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| {
                    f.get_metric()
                        .iter()
                        .map(|m| m.get_counter().get_value())
                        .collect::<Vec<_>>()
                })
                .sum()
        };
        // Start-up ends at the first sample that sees a record processed; the steady state is
        // measured from there to the last journey state written to the changelog.
        let mut first: Option<(Instant, f64, f64)> = None;
        loop {
            let processed = counter("aftercart_abandonment_records_processed_total");
            let written = counter("aftercart_abandonment_changelog_records_written_total");
            if first.is_none() && processed > 0.0 {
                first = Some((Instant::now(), processed, cpu_seconds()));
            }
            if processed >= records as f64 && written >= records as f64 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "service too slow: {processed} processed, {written} written"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ended = Instant::now();
        // Restores run one partition after another inside start-up: their total shows its share.
        let restoring: f64 = registry
            .gather()
            .iter()
            .filter(|f| f.name() == "aftercart_abandonment_state_restore_duration_seconds")
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_histogram().get_sample_sum())
                    .collect::<Vec<_>>()
            })
            .sum();
        let (first_at, first_processed, first_cpu) = first.expect("records were processed");
        let cpu = cpu_seconds() - first_cpu;
        stop.cancel();
        let _ = task.await;
        (
            first_at - started,
            ended - first_at,
            records as f64 - first_processed,
            ended - started,
            cpu,
            restoring,
        )
    });
    rows.push((
        "whole service: pre-filled checkouts topic → state + changelog (embedded broker, incl. start-up)".into(),
        format!("{:.0} records/s ({records} records in {:.2} s)", records as f64 / took.as_secs_f64(), took.as_secs_f64()),
    ));
    rows.push((
        "whole service: start-up (topics, global tables, group join, restore) until the first record".into(),
        format!(
            "{:.2} s; partition restores took {restoring:.2} s summed (they overlap) and the mock broker delays a new group's first join by 3 s",
            startup.as_secs_f64()
        ),
    ));
    rows.push((
        "whole service: steady state, one consumer (excl. start-up)".into(),
        format!(
            "{:.0} records/s ({steady_records:.0} records in {:.2} s)",
            steady_records / steady.as_secs_f64(),
            steady.as_secs_f64()
        ),
    ));
    rows.push((
        "whole service: steady-state CPU per 1,000 records, all threads incl. the embedded broker"
            .into(),
        format!("{:.1} ms ({:.2} s of CPU)", cpu * 1e6 / steady_records, cpu),
    ));
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    abandonment: aftercart_abandonment::AbandonmentArgs,
}

fn main() {
    let mut rows = Vec::new();
    handler(&mut rows);
    bytes_per_journey(&mut rows);
    if !std::env::args().any(|a| a == "--handler-only") {
        whole_service(&mut rows);
    }
    println!("\n| abandonment benchmark | result |\n|---|---|");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
}

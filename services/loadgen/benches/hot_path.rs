//! Micro-benchmarks of the ingress hot path on the load generator's own bodies (same seed, same
//! bytes as `aftercart loadgen` sends): the physical floor (HMAC-SHA256 plus JSON validation of
//! the body, what any correct ingress must do), and each step the ingress adds on top of it:
//! signature verification, header parsing, routing and the journey key.

use std::hint::black_box;
use std::time::Duration;

use aftercart_loadgen::{Pool, TrafficOptions};
use aftercart_shopify::{journey_key, Family, Secret, Verifier, WebhookHeaders};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use serde::de::IgnoredAny;
use sha2::Sha256;

const SECRET: &str = "aftercart-dev-secret";

fn pool() -> Pool {
    Pool::build(&TrafficOptions {
        secret: SECRET.into(),
        ..TrafficOptions::default()
    })
}

fn headers(delivery: &aftercart_loadgen::Delivery) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        map.insert(name, HeaderValue::from_str(value).expect("ASCII"));
    };
    put("host", "127.0.0.1:8080");
    put("content-type", "application/json");
    put("content-length", &delivery.body.len().to_string());
    put("x-shopify-topic", delivery.topic);
    put("x-shopify-shop-domain", &delivery.shop);
    put("x-shopify-api-version", "2026-07");
    put(
        "x-shopify-webhook-id",
        "0badc0de-0000-4000-8000-000000000001",
    );
    put("x-shopify-event-id", &delivery.event_id);
    put("x-shopify-triggered-at", &delivery.triggered_at);
    put("x-shopify-hmac-sha256", &delivery.signature);
    map
}

fn hot_path(c: &mut Criterion) {
    let pool = pool();
    let deliveries = &pool.deliveries;
    let n = deliveries.len();
    let maps: Vec<HeaderMap> = deliveries.iter().map(headers).collect();
    let verifier = Verifier::new(vec![Secret::new(SECRET)], Default::default());

    let mut group = c.benchmark_group("webhook");
    // One element = one webhook of the mix; the mean body size is in the report.
    group.throughput(Throughput::Elements(1));

    group.bench_function("floor_hmac_sha256_plus_json_validation", |b| {
        let mut i = 0;
        b.iter(|| {
            let body = &deliveries[i % n].body;
            i += 1;
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key size");
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            let valid = serde_json::from_slice::<IgnoredAny>(body).is_ok();
            black_box((tag, valid))
        })
    });

    group.bench_function("hmac_sha256", |b| {
        let mut i = 0;
        b.iter(|| {
            let body = &deliveries[i % n].body;
            i += 1;
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key size");
            mac.update(body);
            black_box(mac.finalize().into_bytes())
        })
    });

    group.bench_function("json_validation", |b| {
        let mut i = 0;
        b.iter(|| {
            let body = &deliveries[i % n].body;
            i += 1;
            black_box(serde_json::from_slice::<IgnoredAny>(body).is_ok())
        })
    });

    group.bench_function("verify_signature", |b| {
        let mut i = 0;
        b.iter(|| {
            let d = &deliveries[i % n];
            i += 1;
            black_box(verifier.verify(Some(&d.shop), Some(d.signature.as_bytes()), &d.body))
        })
    });

    group.bench_function("headers", |b| {
        let mut i = 0;
        b.iter(|| {
            let map = &maps[i % n];
            i += 1;
            black_box(WebhookHeaders::from_header_map(map))
        })
    });

    group.bench_function("route_and_journey_key", |b| {
        let mut i = 0;
        b.iter(|| {
            let d = &deliveries[i % n];
            i += 1;
            let family = Family::of_topic(d.topic);
            black_box(journey_key(family, &d.shop, &d.body))
        })
    });

    // Everything the ingress computes per webhook outside HTTP and Kafka.
    group.bench_function("ingress_cpu_path", |b| {
        let mut i = 0;
        b.iter(|| {
            let (d, map) = (&deliveries[i % n], &maps[i % n]);
            i += 1;
            let headers = WebhookHeaders::from_header_map(map);
            let secret = verifier.verify(headers.shop_domain(), headers.hmac(), &d.body);
            let family = Family::of_topic(headers.topic().unwrap_or_default());
            let key = journey_key(family, headers.shop_domain().unwrap_or_default(), &d.body);
            black_box((secret, key))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short but stable enough on a shared 2-core machine; criterion reports the spread.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = hot_path
}
criterion_main!(benches);

//! Measures the dedupe window's resident memory per published id and its slowest single claim.
//!
//! `cargo run -p aftercart-ingress --example dedupe_memory [ids] [capacity]` (defaults: 1,000,000
//! of each, the production default). Linux only (reads /proc/self/statm); builds with
//! optimisations give meaningful timings, e.g.
//! `--config 'profile.dev.package.aftercart-ingress.opt-level=3' --config
//! 'profile.dev.package.sha2.opt-level=3'` to avoid a release build of every dependency.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use aftercart_ingress::dedupe::{Claim, Dedupe};

fn main() {
    let mut args = std::env::args().skip(1);
    let ids: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let capacity: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);

    let before = resident_bytes();
    let dedupe = Dedupe::new(Duration::from_secs(86_400), capacity);
    let created = resident_bytes();

    // Ids look like Shopify's (a UUID-sized string); one buffer is reused so nothing else grows.
    let mut id = String::with_capacity(64);
    // The five slowest claims, to see growth steps (the rest is noise from a shared machine).
    let mut worst: Vec<(Duration, usize)> = Vec::new();
    let mut total = Duration::ZERO;
    for n in 0..ids {
        id.clear();
        let _ = write!(id, "b54557e4-bdd9-4b37-8a5f-{n:012x}");
        let started = Instant::now();
        match dedupe.claim("jsmith.myshopify.com", &id) {
            Claim::New(guard) => guard.commit(),
            Claim::Duplicate | Claim::InFlight(_) => {}
        }
        let took = started.elapsed();
        total += took;
        if worst.len() < 5 || took > worst[worst.len() - 1].0 {
            worst.push((took, n));
            worst.sort_by(|a, b| b.cmp(a));
            worst.truncate(5);
        }
    }
    let filled = resident_bytes();
    let remembered = dedupe.len();

    println!("ids claimed:        {ids}");
    println!("ids remembered:     {remembered} (capacity {capacity})");
    println!("RSS before:         {:.1} MiB", mib(before));
    println!("RSS after new():    {:.1} MiB", mib(created));
    println!("RSS after filling:  {:.1} MiB", mib(filled));
    println!(
        "bytes per id:       {:.1}",
        filled.saturating_sub(created) as f64 / remembered.max(1) as f64
    );
    println!(
        "mean claim+commit:  {:.2} µs",
        total.as_secs_f64() * 1e6 / ids.max(1) as f64
    );
    for (took, n) in worst {
        println!(
            "slow claim+commit:  {:.2} ms (at id #{n})",
            took.as_secs_f64() * 1e3
        );
    }
}

/// Resident set size from /proc/self/statm (pages; 4 KiB on the machines this runs on).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

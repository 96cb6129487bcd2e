//! Runs one signature check for `make test-timing`, which counts its instructions under
//! valgrind (callgrind): the cost of refusing a signature must not depend on where it differs.
//!
//! `signature_timing <case>` with case `match`, `first-byte`, `middle-byte`, `last-byte`,
//! `all-bytes` (which MAC bytes of the header differ) or `control-first`/`control-last`: the
//! same mismatches through a deliberately early-exit comparison, to show the count does see a
//! position-dependent comparison (so the check can fail).

use std::collections::HashMap;
use std::hint::black_box;

use aftercart_shopify::{sign, Secret, Verifier};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    let secret = Secret::new("timing-secret");
    let body = vec![b'x'; 1024];
    let good: [u8; 32] = STANDARD
        .decode(sign(&secret, &body))
        .expect("our own base64")
        .try_into()
        .expect("32 bytes");
    let mut mac = good;
    let flip = |mac: &mut [u8; 32], at: usize| mac[at] ^= 0x01;
    match case.trim_start_matches("control-") {
        "match" => {}
        "first" | "first-byte" => flip(&mut mac, 0),
        "middle-byte" => flip(&mut mac, 16),
        "last" | "last-byte" => flip(&mut mac, 31),
        "all-bytes" => (0..32).for_each(|at| flip(&mut mac, at)),
        other => panic!("unknown case {other:?}"),
    }
    if case.starts_with("control-") {
        println!(
            "{case}: equal={}",
            early_exit_eq(black_box(&good), black_box(&mac))
        );
        return;
    }
    let header = STANDARD.encode(mac);
    let verifier = Verifier::new(vec![secret], HashMap::new());
    let result = verifier.verify(None, black_box(Some(header.as_bytes())), black_box(&body));
    println!("{case}: {result:?}");
}

/// What constant-time comparison avoids: stops at the first differing byte.
#[inline(never)]
fn early_exit_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    for (x, y) in a.iter().zip(b) {
        if black_box(x) != black_box(y) {
            return false;
        }
    }
    true
}

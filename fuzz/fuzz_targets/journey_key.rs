//! Fuzz target: a webhook topic, shop and body through topic routing, the journey key and the
//! shared payload decoders. No panic; the same input always gives the same key; the key exists
//! exactly when the body is a JSON object, and always starts with the lower-cased shop.
//!
//! Input: `topic FIELD shop FIELD body`.

#![no_main]

use aftercart_shopify::decode::{decode, discount_codes, shopify_topic};
use aftercart_shopify::money::Amount;
use aftercart_shopify::time::{parse_time_ms, rfc3339};
use aftercart_shopify::{journey_key, Family, PayloadError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let parts = aftercart_fuzz::fields(data, 3);
    let topic = aftercart_fuzz::text(parts.first().copied().unwrap_or_default());
    let shop = aftercart_fuzz::text(parts.get(1).copied().unwrap_or_default());
    let body = parts.get(2).copied().unwrap_or_default();

    let family = Family::of_topic(&topic);
    assert_eq!(Family::of_topic(&topic.to_ascii_uppercase()), family);
    let key = journey_key(family, &shop, body);
    assert_eq!(key, journey_key(family, &shop, body), "not deterministic");

    // The key decoder and a full JSON parse agree on what the body is, except where a tree
    // refuses valid JSON: nesting beyond 128 (the key decoder skips nested values unbuilt) and
    // numbers beyond f64 range.
    let parsed = serde_json::from_slice::<Value>(body);
    let tree_refused = parsed.as_ref().is_err_and(|e| {
        let e = e.to_string();
        e.starts_with("recursion limit exceeded") || e.starts_with("number out of range")
    });
    match (&key, &parsed) {
        _ if tree_refused => {}
        (Ok(key), Ok(Value::Object(_))) => {
            assert!(key.starts_with(&shop.to_ascii_lowercase()), "{key}");
        }
        (Err(PayloadError::NotObject), Ok(value)) => assert!(!value.is_object()),
        (Err(PayloadError::NotJson), Err(_)) => {}
        (key, parsed) => panic!("key {key:?} for a body that parses as {parsed:?}"),
    }
    // Every family keys an object body; none panics on any body.
    for other in Family::ALL {
        assert_eq!(journey_key(other, &shop, body).is_ok(), key.is_ok());
    }

    // The helpers consumers decode with, on the same text.
    let _ = shopify_topic(Some(&topic));
    if let Ok(Value::Object(map)) = decode::<Value>(&topic, body) {
        for value in map.values() {
            if let Value::Array(values) = value {
                let _ = discount_codes(values);
            }
            if let Value::String(text) = value {
                let _ = Amount::parse(text);
                if let Some(ms) = parse_time_ms(text) {
                    let _ = rfc3339(ms);
                }
            }
        }
    }
    let _ = Amount::parse(&shop);
    if let Some(ms) = parse_time_ms(&shop) {
        let _ = rfc3339(ms);
    }
});

//! Fuzz target: arbitrary request headers and body through the ingress's header parsing,
//! signature precheck and verification, with an oracle: the right secret verifies, a forged or
//! bit-flipped signature never does.
//!
//! Input: `flip secret RECORD header-lines RECORD body`, where `flip` (one byte) picks the MAC
//! bit to flip and header lines are `name: value` separated by `\n`.

#![no_main]

use std::collections::HashMap;

use aftercart_shopify::{sign, Secret, SecretId, SignatureError, Verifier, WebhookHeaders};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const SHOP: &str = "fuzz.myshopify.com";

fuzz_target!(|data: &[u8]| {
    let Some((&flip, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == aftercart_fuzz::RECORD);
    let secret = aftercart_fuzz::text(parts.next().unwrap_or_default());
    let header_lines = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    // What hyper would hand the handler: names and values that `http` accepts, in order.
    let mut map = HeaderMap::new();
    for line in header_lines.split(|b| *b == b'\n') {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(at) => (&line[..at], line[at + 1..].trim_ascii_start()),
            None => (line, &b""[..]),
        };
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    let headers = WebhookHeaders::from_header_map(&map);
    check_headers(&headers);

    let global = vec![Secret::new(secret.clone()), Secret::new("fuzz-previous")];
    let shop_secret = Secret::new(format!("shop-{secret}"));
    let verifier = Verifier::new(
        global.clone(),
        HashMap::from([(SHOP.to_ascii_uppercase(), vec![shop_secret.clone()])]),
    );
    let shop = headers.shop_domain();

    // Whatever the client sent: an answer, the precheck agreeing with it, and never a success
    // unless the header is exactly the MAC of a secret that was tried.
    let sent = verifier.verify(shop, headers.hmac(), body);
    let precheck = Verifier::precheck(headers.hmac());
    match (&sent, precheck) {
        (Err(SignatureError::Missing), Err(SignatureError::Missing))
        | (Err(SignatureError::Malformed), Err(SignatureError::Malformed))
        | (Ok(_) | Err(SignatureError::Mismatch), Ok(())) => {}
        (sent, precheck) => panic!("verify said {sent:?} but precheck said {precheck:?}"),
    }
    if let Ok(id) = sent {
        let used = match id {
            SecretId::Global(index) => &global[index],
            SecretId::Shop(0) => &shop_secret,
            SecretId::Shop(index) => panic!("shop secret {index} does not exist"),
        };
        let header = headers.hmac().expect("verified").trim_ascii();
        assert_eq!(
            header,
            sign(used, body).as_bytes(),
            "accepted a forged signature"
        );
    }

    // The body signed with each secret verifies as that secret (the shop's only for its shop).
    let signed = sign(&global[0], body);
    assert_eq!(
        verifier.verify(shop, Some(signed.as_bytes()), body),
        Ok(SecretId::Global(0))
    );
    let for_shop = shop.is_some_and(|s| s.eq_ignore_ascii_case(SHOP));
    let shop_signed = sign(&shop_secret, body);
    assert_eq!(
        verifier
            .verify(shop, Some(shop_signed.as_bytes()), body)
            .is_ok(),
        for_shop,
        "a shop secret verifies exactly for its own shop"
    );

    // Any single flipped bit of the right MAC is refused.
    let mut mac = [0u8; 32];
    base64_decode(&signed, &mut mac);
    mac[usize::from(flip / 8)] ^= 1 << (flip % 8);
    let forged = base64_encode(&mac);
    assert_eq!(
        verifier.verify(shop, Some(forged.as_bytes()), body),
        Err(SignatureError::Mismatch)
    );
});

/// The parsed headers hold only `shopify-*` names, once each, and `get` finds each of them.
fn check_headers(headers: &WebhookHeaders) {
    let mut seen = HashMap::new();
    for (name, value) in headers.iter() {
        assert!(name.starts_with("shopify-"), "{name}");
        assert!(seen.insert(name, value).is_none(), "{name} twice");
        assert_eq!(headers.get(name), Some(value));
    }
    for text in [headers.topic(), headers.shop_domain(), headers.webhook_id()]
        .into_iter()
        .flatten()
    {
        assert!(!text.is_empty() && text.trim() == text);
    }
}

fn base64_decode(text: &str, out: &mut [u8; 32]) {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("our own signature");
    out.copy_from_slice(&bytes);
}

fn base64_encode(mac: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(mac)
}

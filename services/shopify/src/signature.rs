//! `X-Shopify-Hmac-Sha256` signing and constant-time verification, with secret rotation and
//! per-shop secrets for store-created webhooks.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A signing secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: only for computing a MAC, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which configured secret verified a delivery: safe to record, it never reveals the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretId {
    /// Index in the global list (0 = current, higher = still accepted during a rotation).
    Global(usize),
    /// Index in the per-shop list of the delivery's shop domain.
    Shop(usize),
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretId::Global(index) => write!(f, "global:{index}"),
            SecretId::Shop(index) => write!(f, "shop:{index}"),
        }
    }
}

/// Why a delivery is not authentic. The variants double as bounded metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Shopify-Hmac-Sha256 header is missing")]
    Missing,
    #[error("the X-Shopify-Hmac-Sha256 header is not base64 of 32 bytes")]
    Malformed,
    #[error("the signature matches no configured secret")]
    Mismatch,
}

impl SignatureError {
    pub fn as_label(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed => "malformed",
            SignatureError::Mismatch => "mismatch",
        }
    }
}

/// Shopify's signature of `body`: base64(HMAC-SHA256(secret, body)), standard alphabet, padded.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    STANDARD.encode(mac(secret, body).finalize().into_bytes())
}

fn mac(secret: &Secret, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any size");
    mac.update(body);
    mac
}

/// Verifies signatures against the global secrets and, for shops that have them, per-shop secrets.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    global: Vec<Secret>,
    per_shop: HashMap<String, Vec<Secret>>,
}

impl Verifier {
    /// `global`: current secret first, then those still accepted during a rotation.
    /// `per_shop`: shop domain (any case) to that shop's secrets.
    pub fn new(global: Vec<Secret>, per_shop: HashMap<String, Vec<Secret>>) -> Self {
        let per_shop = per_shop
            .into_iter()
            .map(|(shop, secrets)| (shop.to_ascii_lowercase(), secrets))
            .collect();
        Self { global, per_shop }
    }

    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.per_shop.values().all(Vec::is_empty)
    }

    /// Checks only that a signature header is present and well-formed, so a request without one
    /// can be refused before its body is read.
    pub fn precheck(header: Option<&[u8]>) -> Result<(), SignatureError> {
        decode_signature(header.ok_or(SignatureError::Missing)?).map(|_| ())
    }

    /// Checks `header` (the raw header value) over the raw `body`. The shop's own secrets are
    /// tried first; the shop domain only selects candidates, it is authenticated by the MAC.
    /// Each comparison is constant-time (`Mac::verify_slice`).
    pub fn verify(
        &self,
        shop_domain: Option<&str>,
        header: Option<&[u8]>,
        body: &[u8],
    ) -> Result<SecretId, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let expected = decode_signature(header)?;
        let shop_secrets = shop_domain
            .and_then(|shop| self.per_shop.get(&shop.to_ascii_lowercase()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let candidates = shop_secrets
            .iter()
            .enumerate()
            .map(|(index, secret)| (SecretId::Shop(index), secret))
            .chain(
                self.global
                    .iter()
                    .enumerate()
                    .map(|(index, secret)| (SecretId::Global(index), secret)),
            );
        for (id, secret) in candidates {
            if mac(secret, body).verify_slice(&expected).is_ok() {
                return Ok(id);
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Decodes the header into the 32 MAC bytes. Surrounding whitespace is tolerated (some proxies
/// add it); anything else that is not exactly standard padded base64 of 32 bytes is malformed.
fn decode_signature(header: &[u8]) -> Result<[u8; 32], SignatureError> {
    let trimmed = header.trim_ascii();
    if trimmed.len() != 44 {
        return Err(SignatureError::Malformed);
    }
    let mut out = [0u8; 33];
    match STANDARD.decode_slice(trimmed, &mut out) {
        Ok(32) => Ok(out[..32].try_into().expect("length checked")),
        _ => Err(SignatureError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(global: &[&str]) -> Verifier {
        Verifier::new(
            global.iter().map(|s| Secret::new(*s)).collect(),
            HashMap::new(),
        )
    }

    #[test]
    fn signature_matches_an_independent_vector() {
        // Computed independently: printf '%s' '{"id":1}' | openssl dgst -sha256 -hmac hush -binary | base64
        let secret = Secret::new("hush");
        assert_eq!(
            sign(&secret, br#"{"id":1}"#),
            "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY="
        );
    }

    #[test]
    fn the_current_secret_verifies_as_global_zero() {
        let body = br#"{"token":"abc"}"#;
        let header = sign(&Secret::new("new"), body);
        let id = verifier(&["new", "old"]).verify(None, Some(header.as_bytes()), body);
        assert_eq!(id, Ok(SecretId::Global(0)));
    }

    #[test]
    fn a_rotated_out_secret_still_verifies_during_the_rotation() {
        let body = br#"{"token":"abc"}"#;
        let header = sign(&Secret::new("old"), body);
        let id = verifier(&["new", "old"]).verify(None, Some(header.as_bytes()), body);
        assert_eq!(id, Ok(SecretId::Global(1)));
    }

    #[test]
    fn a_wrong_secret_is_a_mismatch() {
        let body = br#"{"token":"abc"}"#;
        let header = sign(&Secret::new("attacker"), body);
        let result = verifier(&["new", "old"]).verify(None, Some(header.as_bytes()), body);
        assert_eq!(result, Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_missing_header_is_reported_as_missing() {
        assert_eq!(
            verifier(&["s"]).verify(None, None, b"{}"),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn truncated_or_garbage_base64_is_malformed() {
        let good = sign(&Secret::new("s"), b"{}");
        let v = verifier(&["s"]);
        for bad in [
            &good[..43],
            &good[..20],
            "",
            "not base64 at all!!!!!!!!!!!!!!!!!!!!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(
                v.verify(None, Some(bad.as_bytes()), b"{}"),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            v.verify(None, Some(&[0xff, 0xfe, 0x00]), b"{}"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn hex_encoded_signatures_are_malformed_not_accepted() {
        let v = verifier(&["s"]);
        let hex = "a0".repeat(32);
        assert_eq!(
            v.verify(None, Some(hex.as_bytes()), b"{}"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn surrounding_whitespace_is_tolerated() {
        let header = format!(" {} ", sign(&Secret::new("s"), b"{}"));
        assert_eq!(
            verifier(&["s"]).verify(None, Some(header.as_bytes()), b"{}"),
            Ok(SecretId::Global(0))
        );
    }

    #[test]
    fn the_mac_covers_the_raw_bytes_not_a_reserialisation() {
        // Shopify escapes & as \u0026 and sends any UTF-8: the MAC is over the bytes as sent.
        let raw = "{\"note\":\"fish \\u0026 chips\",\"name\":\"Zoë 東京\"}".as_bytes();
        let header = sign(&Secret::new("s"), raw);
        let v = verifier(&["s"]);
        assert_eq!(
            v.verify(None, Some(header.as_bytes()), raw),
            Ok(SecretId::Global(0))
        );
        let reserialised =
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(raw).unwrap()).unwrap();
        assert_ne!(reserialised, raw);
        assert_eq!(
            v.verify(None, Some(header.as_bytes()), &reserialised),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_single_flipped_body_byte_fails() {
        let body = br#"{"total_price":"10.00"}"#.to_vec();
        let header = sign(&Secret::new("s"), &body);
        let mut tampered = body.clone();
        tampered[17] = b'9';
        assert_eq!(
            verifier(&["s"]).verify(None, Some(header.as_bytes()), &tampered),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn per_shop_secrets_verify_only_for_their_shop() {
        let per_shop = HashMap::from([(
            "Store.myshopify.com".to_string(),
            vec![Secret::new("store-key")],
        )]);
        let v = Verifier::new(vec![Secret::new("app")], per_shop);
        let header = sign(&Secret::new("store-key"), b"{}");
        assert_eq!(
            v.verify(Some("store.MYSHOPIFY.com"), Some(header.as_bytes()), b"{}"),
            Ok(SecretId::Shop(0))
        );
        assert_eq!(
            v.verify(Some("other.myshopify.com"), Some(header.as_bytes()), b"{}"),
            Err(SignatureError::Mismatch)
        );
        let app_signed = sign(&Secret::new("app"), b"{}");
        assert_eq!(
            v.verify(
                Some("store.myshopify.com"),
                Some(app_signed.as_bytes()),
                b"{}"
            ),
            Ok(SecretId::Global(0))
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("super-secret-value");
        assert!(!format!("{secret:?}").contains("super"));
        let v = verifier(&["super-secret-value"]);
        assert!(!format!("{v:?}").contains("super"));
    }
}

#[cfg(test)]
mod properties;

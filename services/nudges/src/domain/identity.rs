//! Who a person is, as keyed hashes: HMAC-SHA256 (the service's identity key) of the shop and
//! the customer id, the canonical email or the phone's digits. The state matches an order to an
//! earlier abandonment by any of them without holding the identifier itself, and a leaked state
//! topic cannot be reversed with a dictionary of emails unless the key leaked too.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::input::ContactFacts;

#[derive(Clone)]
pub struct IdentityKey(Vec<u8>);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(…)")
    }
}

impl IdentityKey {
    pub fn new(key: &[u8]) -> IdentityKey {
        IdentityKey(key.to_vec())
    }

    fn hash(&self, shop: &str, kind: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{shop}\0{kind}\0{value}").as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every hash of a person of `shop`: by id, by email, by phone (those known).
    pub fn hashes(&self, shop: &str, facts: &ContactFacts) -> Vec<String> {
        let mut hashes = Vec::new();
        if let Some(id) = facts.customer_id {
            hashes.push(self.hash(shop, "id", &id.to_string()));
        }
        if let Some(email) = facts.email.as_deref().and_then(canonical_email) {
            hashes.push(self.hash(shop, "email", &email));
        }
        if let Some(phone) = facts.phone.as_deref().and_then(canonical_phone) {
            hashes.push(self.hash(shop, "phone", &phone));
        }
        hashes
    }
}

/// Trimmed and lower-cased; `None` when it is not an address.
pub fn canonical_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    email.contains('@').then_some(email)
}

/// The digits, with a leading `+` kept (E.164 as Shopify sends it); `None` under 6 digits.
pub fn canonical_phone(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 6).then(|| format!("+{}", digits.trim_start_matches('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(id: Option<u64>, email: Option<&str>, phone: Option<&str>) -> ContactFacts {
        ContactFacts {
            customer_id: id,
            email: email.map(str::to_string),
            phone: phone.map(str::to_string),
        }
    }

    #[test]
    fn the_same_person_hashes_the_same_whatever_the_spelling() {
        let key = IdentityKey::new(b"k");
        let a = key.hashes("s", &facts(None, Some(" Ann@Example.com "), None));
        let b = key.hashes("s", &facts(None, Some("ann@example.com"), None));
        assert_eq!(a, b);
        let p = key.hashes("s", &facts(None, None, Some("+33 6 00 00 00 00")));
        let q = key.hashes("s", &facts(None, None, Some("+33600000000")));
        assert_eq!(p, q);
    }

    #[test]
    fn hashes_depend_on_the_key_the_shop_and_the_kind() {
        let one = IdentityKey::new(b"one").hashes("s", &facts(Some(7), None, None));
        let two = IdentityKey::new(b"two").hashes("s", &facts(Some(7), None, None));
        let other_shop = IdentityKey::new(b"one").hashes("t", &facts(Some(7), None, None));
        assert_ne!(one, two);
        assert_ne!(one, other_shop);
        assert_eq!(one[0].len(), 32);
    }

    #[test]
    fn debug_never_prints_the_key() {
        assert_eq!(
            format!("{:?}", IdentityKey::new(b"secret")),
            "IdentityKey(…)"
        );
    }
}

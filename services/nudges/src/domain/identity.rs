//! Who a person is, as keyed hashes: the shared state hash (`AFTERCART_STATE_HASH_KEY`) of the
//! shop and the customer id, the email or the phone, each normalised as every consumer compares
//! them (`aftercart_shopify::privacy`). The state matches an order to an earlier abandonment by
//! any of them without holding the identifier itself, and a leaked state topic cannot be
//! reversed with a dictionary of emails unless the key leaked too.

use aftercart_runtime::state_hash::StateHasher;
use aftercart_shopify::privacy::markers::Pseudonyms;

use crate::domain::input::ContactFacts;

/// The hashes' domain: keeps them apart from other services' hashes of the same value.
const DOMAIN: &str = "nudges";

/// Every hash of a person of `shop`: by id, by email, by phone (those known).
pub fn hashes(hasher: &StateHasher, shop: &str, facts: &ContactFacts) -> Vec<String> {
    let named = pseudonyms(hasher, shop, facts, &[]);
    let id = facts
        .customer_id
        .map(|id| hash(hasher, shop, "id", &id.to_string()));
    [id, named.email_hash, named.phone_hash]
        .into_iter()
        .flatten()
        .collect()
}

/// Who `facts` (and `orders`) name, as the redaction markers key them: the email and phone
/// hashes are the ones [`hashes`] gives.
pub fn pseudonyms(
    hasher: &StateHasher,
    shop: &str,
    facts: &ContactFacts,
    orders: &[u64],
) -> Pseudonyms {
    Pseudonyms::new(
        facts.customer_id,
        facts.email.as_deref(),
        facts.phone.as_deref(),
        orders,
        |kind, value| hash(hasher, shop, kind, value),
    )
}

/// Shop domains hold no `/`, so `<shop>/<value>` names one shop and one value.
fn hash(hasher: &StateHasher, shop: &str, kind: &str, value: &str) -> String {
    hasher.fingerprint(DOMAIN, kind, &format!("{shop}/{value}"))
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

    fn hasher(key: &[u8; 16]) -> StateHasher {
        StateHasher::new(*key).unwrap()
    }

    #[test]
    fn the_same_person_hashes_the_same_whatever_the_spelling() {
        let key = hasher(b"nudges-test-key!");
        let a = hashes(&key, "s", &facts(None, Some(" Ann@Example.com "), None));
        let b = hashes(&key, "s", &facts(None, Some("ann@example.com"), None));
        assert_eq!(a, b);
        let p = hashes(&key, "s", &facts(None, None, Some("+33 6 00 00 00 00")));
        let q = hashes(&key, "s", &facts(None, None, Some("+33600000000")));
        assert_eq!(p, q);
        // With or without the country code, as the redactions compare phones.
        let national = hashes(&key, "s", &facts(None, None, Some("07700 900123")));
        let international = hashes(&key, "s", &facts(None, None, Some("+44 7700 900123")));
        assert_eq!(national, international);
    }

    #[test]
    fn hashes_depend_on_the_key_the_shop_and_the_kind() {
        let one = hashes(
            &hasher(b"nudges-test-key1"),
            "s",
            &facts(Some(7), None, None),
        );
        let two = hashes(
            &hasher(b"nudges-test-key2"),
            "s",
            &facts(Some(7), None, None),
        );
        let other_shop = hashes(
            &hasher(b"nudges-test-key1"),
            "t",
            &facts(Some(7), None, None),
        );
        assert_ne!(one, two);
        assert_ne!(one, other_shop);
        assert_eq!(one[0].len(), 32);
        let as_phone = hashes(
            &hasher(b"nudges-test-key1"),
            "s",
            &facts(None, None, Some("0000007")),
        );
        assert_ne!(one, as_phone);
    }
}

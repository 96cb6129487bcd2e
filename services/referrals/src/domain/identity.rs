//! Who a buyer is, without keeping more personal data than needed: the customer key state is
//! filed under, and keyed-hash fingerprints (canonical email, name plus address, browser IP,
//! phone) for fraud checks and redactions.

use aftercart_runtime::state_hash::StateHasher;

use crate::domain::input::{Address, OrderFact};

/// 16 bytes of HMAC-SHA256 under the state hash key, in hex: short, stable for one key, not
/// reversible (not even by trying every IPv4 address) without the key.
pub fn fingerprint(hasher: &StateHasher, kind: &str, value: &str) -> String {
    hasher.fingerprint("referrals", kind, value)
}

/// The customer key of an order's buyer: `id:<customer id>`, else `email:<fingerprint>` of
/// the canonical email; `None` for an anonymous order.
pub fn customer_key(hasher: &StateHasher, order: &OrderFact) -> Option<String> {
    if let Some(id) = order.customer.as_ref().and_then(|c| c.id) {
        return Some(customer_key_of_id(id));
    }
    order
        .email()
        .map(|email| customer_key_of_email(hasher, email))
}

pub fn customer_key_of_id(id: u64) -> String {
    format!("id:{id}")
}

pub fn customer_key_of_email(hasher: &StateHasher, email: &str) -> String {
    format!("email:{}", email_fingerprint_of(hasher, email))
}

/// Fingerprint of an email's canonical form.
pub fn email_fingerprint_of(hasher: &StateHasher, email: &str) -> String {
    fingerprint(hasher, "email", &canonical_email(email))
}

/// The address a mailbox really is: lower-cased, `+tag` removed, and for Gmail the dots that
/// Gmail ignores removed (`J.Doe+ref@GoogleMail.com` is `jdoe@gmail.com`), so near-duplicate
/// addresses of one person compare equal.
pub fn canonical_email(email: &str) -> String {
    let email = email.trim().to_lowercase();
    let Some((local, domain)) = email.rsplit_once('@') else {
        return email;
    };
    let local = local.split('+').next().unwrap_or(local);
    let domain = if domain == "googlemail.com" {
        "gmail.com"
    } else {
        domain
    };
    if domain == "gmail.com" {
        format!("{}@{domain}", local.replace('.', ""))
    } else {
        format!("{local}@{domain}")
    }
}

/// Fingerprint of the canonical email, if the order has one.
pub fn email_fingerprint(hasher: &StateHasher, order: &OrderFact) -> Option<String> {
    order
        .email()
        .map(|email| email_fingerprint_of(hasher, email))
}

fn letters_and_digits(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Fingerprint of name + street + postcode + country (case, spaces and punctuation ignored),
/// from the shipping address, else the billing one; `None` when any part is missing.
pub fn name_address_fingerprint(hasher: &StateHasher, order: &OrderFact) -> Option<String> {
    let address: &Address = order
        .shipping_address
        .as_ref()
        .or(order.billing_address.as_ref())?;
    let first = address.first_name.as_deref().unwrap_or_default();
    let last = address.last_name.as_deref()?;
    let parts = [
        letters_and_digits(&format!("{first}{last}")),
        letters_and_digits(address.address1.as_deref()?),
        letters_and_digits(address.zip.as_deref()?),
        letters_and_digits(address.country_code.as_deref().unwrap_or_default()),
    ];
    if parts[..3].iter().any(String::is_empty) {
        return None;
    }
    Some(fingerprint(hasher, "name-address", &parts.join("|")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::input::Customer;

    pub(super) fn hasher() -> StateHasher {
        StateHasher::new(*b"referrals-test-state-hash-key").unwrap()
    }

    #[test]
    fn near_duplicate_emails_share_one_canonical_form() {
        assert_eq!(
            canonical_email(" J.Doe+ref@GoogleMail.com "),
            "jdoe@gmail.com"
        );
        assert_eq!(canonical_email("j.doe+x@example.com"), "j.doe@example.com");
        assert_eq!(canonical_email("not-an-email"), "not-an-email");
    }

    #[test]
    fn the_customer_id_wins_over_the_email() {
        let mut order = OrderFact {
            email: Some("A@example.com".into()),
            ..OrderFact::default()
        };
        assert_eq!(
            customer_key(&hasher(), &order),
            Some(customer_key_of_email(&hasher(), "a@example.com"))
        );
        order.customer = Some(Customer {
            id: Some(9),
            ..Customer::default()
        });
        assert_eq!(customer_key(&hasher(), &order).as_deref(), Some("id:9"));
        assert_eq!(customer_key(&hasher(), &OrderFact::default()), None);
    }

    #[test]
    fn fingerprints_are_keyed_hashes_not_bare_sha256() {
        let other = StateHasher::new(*b"another-state-hash-key!!").unwrap();
        assert_ne!(
            customer_key_of_email(&hasher(), "a@example.com"),
            customer_key_of_email(&other, "a@example.com")
        );
        // What the unkeyed SHA-256 gave before: anyone could recompute it from a guess.
        use sha2::{Digest, Sha256};
        let bare = Sha256::digest(b"aftercart/referrals/email/a@example.com");
        let bare: String = bare[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(
            customer_key_of_email(&hasher(), "a@example.com"),
            format!("email:{bare}")
        );
    }

    #[test]
    fn name_and_address_compare_without_case_or_punctuation() {
        let order = |name: &str, street: &str| OrderFact {
            shipping_address: Some(Address {
                first_name: Some("Zoë".into()),
                last_name: Some(name.into()),
                address1: Some(street.into()),
                zip: Some("K2H 7A8".into()),
                country_code: Some("CA".into()),
            }),
            ..OrderFact::default()
        };
        assert_eq!(
            name_address_fingerprint(&hasher(), &order("O'Brien", "123 Elm St.")),
            name_address_fingerprint(&hasher(), &order("obrien", "123 elm st"))
        );
        assert_ne!(
            name_address_fingerprint(&hasher(), &order("O'Brien", "123 Elm St.")),
            name_address_fingerprint(&hasher(), &order("O'Brien", "124 Elm St."))
        );
        assert_eq!(
            name_address_fingerprint(&hasher(), &OrderFact::default()),
            None
        );
    }
}

#[cfg(test)]
mod properties;

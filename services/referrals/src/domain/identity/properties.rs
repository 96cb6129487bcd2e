//! Property tests of email canonicalisation: one mailbox has one canonical form however it is
//! written (case, surrounding space, `+tag`, Gmail's dots and domains), and the customer key
//! made from it is a fingerprint that never carries the address.

use proptest::prelude::*;

use super::*;

/// Plausible ASCII addresses: a local part with dots, a domain, and an optional `+tag`.
fn local() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

proptest! {
    #[test]
    fn canonicalising_twice_changes_nothing(email in ".{0,60}") {
        let once = canonical_email(&email);
        prop_assert_eq!(canonical_email(&once), once);
    }

    #[test]
    fn case_surrounding_space_and_tags_do_not_matter(
        local in local(),
        tag in "[a-z0-9.]{0,10}",
        domain in "[a-z][a-z0-9-]{0,15}\\.[a-z]{2,6}",
        pad in "[ \t]{0,3}",
    ) {
        let plain = format!("{local}@{domain}");
        let written = format!("{pad}{}+{tag}@{}{pad}", local.to_uppercase(), domain.to_uppercase());
        prop_assert_eq!(canonical_email(&written), canonical_email(&plain));
        let h = tests::hasher();
        prop_assert_eq!(customer_key_of_email(&h, &written), customer_key_of_email(&h, &plain));
    }

    #[test]
    fn gmail_ignores_dots_and_googlemail_is_gmail(local in local()) {
        let dotted = format!("{local}@googlemail.com");
        let undotted = format!("{}@gmail.com", local.replace('.', ""));
        prop_assert_eq!(canonical_email(&dotted), canonical_email(&undotted));
    }

    #[test]
    fn other_domains_keep_their_dots(a in "[a-z0-9]{1,10}", b in "[a-z0-9]{1,10}") {
        prop_assert_ne!(
            canonical_email(&format!("{a}.{b}@example.com")),
            canonical_email(&format!("{a}{b}@example.com"))
        );
    }

    #[test]
    fn an_email_key_is_a_fingerprint_not_the_address(email in ".{0,60}") {
        let key = customer_key_of_email(&tests::hasher(), &email);
        let hex = key.strip_prefix("email:").expect("email: prefix");
        prop_assert_eq!(hex.len(), 32);
        prop_assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }
}

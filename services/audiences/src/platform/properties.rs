//! Property tests of the codecs: any contact, however odd its strings, gives either no row or a
//! row of 64-hex hashes; and each platform's row ignores what its rules say to ignore (case and
//! surrounding whitespace of emails, spaces and dashes in phones).

use proptest::prelude::*;

use super::*;

fn contact() -> impl Strategy<Value = Contact> {
    let text = prop::option::of(".{0,40}");
    (
        text.clone(),
        text.clone(),
        text.clone(),
        text.clone(),
        text.clone(),
        text,
    )
        .prop_map(
            |(email, phone, first_name, last_name, country, zip)| Contact {
                email,
                phone,
                first_name,
                last_name,
                country,
                zip,
            },
        )
}

/// Every string leaf of `value` that is not Google's unhashed country or postal code.
fn hashes(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| hashes(v, out)),
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, _)| *k != "countryCode" && *k != "postalCode")
            .for_each(|(_, v)| hashes(v, out)),
        _ => {}
    }
}

const PLATFORMS: [Platform; 4] = [
    Platform::Meta,
    Platform::Google,
    Platform::Tiktok,
    Platform::Plain,
];

proptest! {
    #[test]
    fn any_contact_gives_no_row_or_only_sha256_hex(contact in contact()) {
        for platform in PLATFORMS {
            if let Some(row) = platform.row(&contact) {
                let mut leaves = Vec::new();
                hashes(&row, &mut leaves);
                prop_assert!(!leaves.is_empty());
                for leaf in leaves {
                    prop_assert!(hash::is_sha256_hex(&leaf), "{platform:?}: {leaf:?}");
                }
            }
        }
    }

    #[test]
    fn email_case_and_surrounding_whitespace_do_not_change_a_row(
        local in "[a-z][a-z0-9.]{0,15}",
        domain in "[a-z]{1,10}\\.(com|org|de)",
        pad in "[ \\t]{0,3}",
    ) {
        let plain = Contact { email: Some(format!("{local}@{domain}")), ..Contact::default() };
        let noisy = Contact {
            email: Some(format!("{pad}{}@{}{pad}", local.to_uppercase(), domain.to_uppercase())),
            ..Contact::default()
        };
        for platform in PLATFORMS {
            prop_assert_eq!(platform.row(&plain), platform.row(&noisy), "{:?}", platform);
        }
    }

    #[test]
    fn phone_punctuation_does_not_change_a_row(
        digits in "[2-9][0-9]{9}",
        separator in "[ .-]",
    ) {
        let plain = Contact { phone: Some(format!("+1{digits}")), ..Contact::default() };
        let (a, b) = digits.split_at(3);
        let (b, c) = b.split_at(3);
        let spaced = Contact {
            phone: Some(format!("+1 ({a}){separator}{b}{separator}{c}")),
            ..Contact::default()
        };
        for platform in PLATFORMS {
            prop_assert_eq!(platform.row(&plain), platform.row(&spaced), "{:?}", platform);
        }
    }

    #[test]
    fn any_phone_string_is_refused_or_made_plausible(raw in ".{0,30}", country in "[A-Z]{2}") {
        if let Some(number) = phone::e164(&raw, Some(&country)) {
            let digits = number.digits();
            prop_assert!((8..=15).contains(&digits.len()), "{digits}");
            prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
            prop_assert!(!digits.starts_with('0'));
        }
    }
}

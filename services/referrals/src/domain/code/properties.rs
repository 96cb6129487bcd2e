//! Property tests of referral codes: a code is the prefix and ten Crockford base32 characters,
//! and a friend's order finds it again however it was typed (case, spaces, percent-encoding in
//! the landing URL); any landing URL or discount code gets an answer without a panic.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn rules() -> CodeRules {
    test_rules()
}

proptest! {
    #[test]
    fn codes_are_the_prefix_and_ten_unambiguous_characters(
        shop in ".{0,30}",
        customer in ".{0,30}",
    ) {
        let code = rules().code_for(&shop, &customer);
        let tail = code.strip_prefix("REF-").expect("prefix");
        prop_assert_eq!(tail.len(), 10);
        prop_assert!(tail.bytes().all(|b| ALPHABET.contains(&b)));
        prop_assert_eq!(rules().code_for(&shop, &customer), code);
    }

    #[test]
    fn a_code_typed_in_any_case_with_spaces_is_found(
        customer in "[a-z0-9:]{1,20}",
        pad in " {0,3}",
    ) {
        let rules = rules();
        let code = rules.code_for("s.myshopify.com", &customer);
        let typed = format!("{pad}{}{pad}", code.to_lowercase());
        let order = OrderFact {
            discount_codes: vec![json!({ "code": typed })],
            ..OrderFact::default()
        };
        prop_assert_eq!(rules.candidates(&order), vec![(Source::DiscountCode, code)]);
    }

    #[test]
    fn a_percent_encoded_code_in_the_landing_url_is_found(customer in "[a-z0-9:]{1,20}") {
        let rules = rules();
        let code = rules.code_for("s.myshopify.com", &customer);
        let encoded: String = code.bytes().map(|b| format!("%{b:02X}")).collect();
        let order = OrderFact {
            landing_site: Some(format!("/products/x?utm=a&REF={encoded}#top")),
            ..OrderFact::default()
        };
        prop_assert_eq!(rules.candidates(&order), vec![(Source::LandingSite, code)]);
    }

    #[test]
    fn any_landing_url_or_code_is_answered_with_at_most_64_characters(
        url in ".{0,80}",
        code in ".{0,80}",
    ) {
        let order = OrderFact {
            discount_codes: vec![json!({ "code": code })],
            landing_site: Some(url),
            ..OrderFact::default()
        };
        for (_, found) in rules().candidates(&order) {
            prop_assert!(!found.is_empty() && found.len() <= 64);
            prop_assert_eq!(found.trim(), found.as_str());
        }
    }
}

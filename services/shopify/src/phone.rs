//! One E.164 candidate from a raw Shopify phone and the contact's country; each destination
//! formats from it (Meta and TikTok: digits only; Google and Klaviyo: with `+`).
//!
//! Handles `+`, the `00` international prefix (and `011` in North America, `0011` in Australia,
//! `010` in Japan, `810` in Russia, Kazakhstan and Belarus), national trunk prefixes (`0`, `06` in
//! Hungary, `8` in Russia, …), a trunk wrongly kept after the country code (`+44 (0)20…`,
//! `+44 020…`), numbers typed with their country code but no `+`, spaces, dashes, dots, slashes,
//! parentheses and a trailing extension. It is a plausibility check, not a numbering-plan
//! validator (no phonenumber crate): the result is `None` when the number cannot be made plausible,
//! i.e. fewer than 8 or more than 15 digits, a national number without a known country, or a
//! national significant number whose length the country does not use.

/// An E.164 number: country code and national significant number, 8 to 15 digits, no leading zero.
/// `Debug` hides the digits (it is personal data).
#[derive(Clone, PartialEq, Eq)]
pub struct E164(String);

impl E164 {
    /// Digits only, no `+` (Meta, TikTok).
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// With the leading `+` (Google).
    pub fn with_plus(&self) -> String {
        format!("+{}", self.0)
    }
}

impl std::fmt::Debug for E164 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("E164(***)")
    }
}

/// How one country writes its numbers.
struct Plan {
    /// ISO-3166 alpha-2, upper case.
    alpha2: &'static str,
    /// ITU country calling code.
    code: &'static str,
    /// National trunk prefixes, dropped from national numbers.
    trunks: &'static [&'static str],
    /// International call prefix when not `00` (which is always accepted too).
    intl: Option<&'static str>,
    /// Shortest and longest national significant number.
    nsn: (usize, usize),
}

const fn plan(
    alpha2: &'static str,
    code: &'static str,
    trunks: &'static [&'static str],
    nsn: (usize, usize),
) -> Plan {
    Plan {
        alpha2,
        code,
        trunks,
        intl: None,
        nsn,
    }
}

const NO_TRUNK: &[&str] = &[];
const ZERO: &[&str] = &["0"];
const NANP: &[&str] = &["1"];
const EIGHT: &[&str] = &["8"];

/// Calling codes of all EU/EEA countries, GB, CH, the North American, Pacific and large markets,
/// and some cheap extras. Trunk prefixes and number lengths are best effort from the ITU plans.
const PLANS: &[Plan] = &[
    // EU
    plan("AT", "43", ZERO, (4, 13)),
    plan("BE", "32", ZERO, (8, 9)),
    plan("BG", "359", ZERO, (7, 9)),
    plan("HR", "385", ZERO, (8, 9)),
    plan("CY", "357", NO_TRUNK, (8, 8)),
    plan("CZ", "420", NO_TRUNK, (9, 9)),
    plan("DK", "45", NO_TRUNK, (8, 8)),
    plan("EE", "372", NO_TRUNK, (7, 8)),
    plan("FI", "358", ZERO, (5, 12)),
    plan("FR", "33", ZERO, (9, 9)),
    plan("DE", "49", ZERO, (5, 13)),
    plan("GR", "30", NO_TRUNK, (10, 10)),
    plan("HU", "36", &["06"], (8, 9)),
    plan("IE", "353", ZERO, (7, 9)),
    plan("IT", "39", NO_TRUNK, (6, 11)),
    plan("LV", "371", NO_TRUNK, (8, 8)),
    plan("LT", "370", &["8", "0"], (8, 8)),
    plan("LU", "352", NO_TRUNK, (4, 11)),
    plan("MT", "356", NO_TRUNK, (8, 8)),
    plan("NL", "31", ZERO, (9, 9)),
    plan("PL", "48", NO_TRUNK, (9, 9)),
    plan("PT", "351", NO_TRUNK, (9, 9)),
    plan("RO", "40", ZERO, (9, 9)),
    plan("SK", "421", ZERO, (9, 9)),
    plan("SI", "386", ZERO, (8, 8)),
    plan("ES", "34", NO_TRUNK, (9, 9)),
    plan("SE", "46", ZERO, (7, 10)),
    // EEA outside the EU, and neighbours
    plan("IS", "354", NO_TRUNK, (7, 9)),
    plan("LI", "423", NO_TRUNK, (7, 9)),
    plan("NO", "47", NO_TRUNK, (8, 8)),
    plan("CH", "41", ZERO, (9, 9)),
    plan("GB", "44", ZERO, (9, 10)),
    plan("GG", "44", ZERO, (9, 10)),
    plan("JE", "44", ZERO, (9, 10)),
    plan("IM", "44", ZERO, (9, 10)),
    plan("GI", "350", NO_TRUNK, (8, 8)),
    plan("AD", "376", NO_TRUNK, (6, 9)),
    plan("MC", "377", NO_TRUNK, (8, 9)),
    plan("SM", "378", NO_TRUNK, (6, 10)),
    plan("VA", "39", NO_TRUNK, (6, 11)),
    plan("AX", "358", ZERO, (5, 12)),
    plan("FO", "298", NO_TRUNK, (6, 6)),
    plan("GL", "299", NO_TRUNK, (6, 6)),
    plan("AL", "355", ZERO, (8, 9)),
    plan("BA", "387", ZERO, (8, 8)),
    plan("ME", "382", ZERO, (8, 8)),
    plan("MK", "389", ZERO, (8, 8)),
    plan("RS", "381", ZERO, (8, 9)),
    plan("MD", "373", ZERO, (8, 8)),
    plan("UA", "380", ZERO, (9, 9)),
    plan("GE", "995", ZERO, (9, 9)),
    plan("TR", "90", ZERO, (10, 10)),
    Plan {
        intl: Some("810"),
        ..plan("RU", "7", EIGHT, (10, 10))
    },
    Plan {
        intl: Some("810"),
        ..plan("KZ", "7", EIGHT, (10, 10))
    },
    Plan {
        intl: Some("810"),
        ..plan("BY", "375", EIGHT, (9, 9))
    },
    // Americas
    Plan {
        intl: Some("011"),
        ..plan("US", "1", NANP, (10, 10))
    },
    Plan {
        intl: Some("011"),
        ..plan("CA", "1", NANP, (10, 10))
    },
    Plan {
        intl: Some("011"),
        ..plan("PR", "1", NANP, (10, 10))
    },
    plan("MX", "52", &["044", "045", "01"], (10, 10)),
    plan("BR", "55", ZERO, (10, 11)),
    plan("CL", "56", NO_TRUNK, (9, 9)),
    plan("CO", "57", NO_TRUNK, (10, 10)),
    plan("PE", "51", ZERO, (8, 9)),
    // Asia-Pacific
    Plan {
        intl: Some("0011"),
        ..plan("AU", "61", ZERO, (9, 9))
    },
    plan("NZ", "64", ZERO, (8, 10)),
    Plan {
        intl: Some("010"),
        ..plan("JP", "81", ZERO, (9, 10))
    },
    plan("IN", "91", ZERO, (10, 10)),
    plan("SG", "65", NO_TRUNK, (8, 8)),
    plan("HK", "852", NO_TRUNK, (8, 8)),
    plan("CN", "86", ZERO, (10, 11)),
    plan("KR", "82", ZERO, (8, 10)),
    plan("TW", "886", ZERO, (8, 9)),
    plan("PH", "63", ZERO, (8, 10)),
    plan("MY", "60", ZERO, (8, 10)),
    plan("TH", "66", ZERO, (8, 9)),
    plan("ID", "62", ZERO, (8, 12)),
    plan("VN", "84", ZERO, (9, 10)),
    // Middle East and Africa
    plan("IL", "972", ZERO, (8, 9)),
    plan("AE", "971", ZERO, (8, 9)),
    plan("SA", "966", ZERO, (8, 9)),
    plan("EG", "20", ZERO, (8, 10)),
    plan("ZA", "27", ZERO, (9, 9)),
    plan("NG", "234", ZERO, (8, 10)),
    plan("KE", "254", ZERO, (9, 9)),
];

/// The country calling code of an ISO-3166 alpha-2 country (any case), e.g. `GB` → `44`.
pub fn calling_code(alpha2: &str) -> Option<&'static str> {
    plan_of(alpha2).map(|p| p.code)
}

fn plan_of(alpha2: &str) -> Option<&'static Plan> {
    PLANS
        .iter()
        .find(|p| p.alpha2.eq_ignore_ascii_case(alpha2.trim()))
}

/// The plan whose calling code starts `digits` (codes are prefix-free, so at most one code fits).
fn plan_by_code(digits: &str) -> Option<&'static Plan> {
    PLANS.iter().find(|p| digits.starts_with(p.code))
}

/// An E.164 candidate from a raw phone and the contact's country (ISO alpha-2, any case).
pub fn e164(raw: &str, country: Option<&str>) -> Option<E164> {
    let raw = raw.trim();
    let plan = country.and_then(plan_of);
    let (plus, digits) = scan(raw)?;
    let international = plus
        || digits.starts_with("00")
        || plan
            .and_then(|p| p.intl)
            .is_some_and(|intl| digits.starts_with(intl));
    let full = if international {
        // "+44 (0)20 …": the bracketed trunk is not part of the number.
        let (_, digits) = scan(&raw.replace("(0)", " "))?;
        international_number(&digits, plus, plan)?
    } else {
        national_number(&digits, plan?)?
    };
    let plausible = (8..=15).contains(&full.len())
        && !full.starts_with('0')
        && full.bytes().all(|b| b.is_ascii_digit());
    plausible.then_some(E164(full))
}

/// Digits of `raw` and whether it began with `+`; `None` for stray characters before the number.
/// Stops at an extension (`x`, `ext`, `#`, …) once digits were seen.
fn scan(raw: &str) -> Option<(bool, String)> {
    let mut plus = false;
    let mut digits = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if !plus && digits.is_empty() => plus = true,
            ' ' | '-' | '.' | '(' | ')' | '/' | '\t' | '\u{a0}' | '\u{2010}'..='\u{2015}' => {}
            _ if !digits.is_empty() => break,
            _ => return None,
        }
    }
    (!digits.is_empty()).then_some((plus, digits))
}

/// Country code and number from an internationally written number.
fn international_number(digits: &str, plus: bool, plan: Option<&Plan>) -> Option<String> {
    let rest = if plus {
        digits
    } else if let Some(intl) = plan.and_then(|p| p.intl).filter(|i| digits.starts_with(*i)) {
        &digits[intl.len()..]
    } else {
        digits.strip_prefix("00")?
    };
    // "+44 020 …": a trunk 0 kept after the code, in a country whose numbers never start with 0.
    if let Some(target) = plan_by_code(rest) {
        let after = &rest[target.code.len()..];
        if target.trunks.contains(&"0") && after.starts_with('0') {
            return Some(format!("{}{}", target.code, &after[1..]));
        }
    }
    Some(rest.to_owned())
}

/// Country code and number from a nationally written number of `plan`'s country.
fn national_number(digits: &str, plan: &Plan) -> Option<String> {
    let fits = |len: usize| (plan.nsn.0..=plan.nsn.1).contains(&len);
    let nsn = if let Some(trunk) = plan.trunks.iter().find(|t| digits.starts_with(**t)) {
        &digits[trunk.len()..]
    } else if digits.starts_with(plan.code)
        && fits(digits.len() - plan.code.len())
        && !fits(digits.len())
    {
        // Typed with its country code but without `+` or `00`.
        &digits[plan.code.len()..]
    } else {
        digits
    };
    fits(nsn.len()).then(|| format!("{}{}", plan.code, nsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(raw: &str, country: Option<&str>) -> Option<String> {
        e164(raw, country).map(|n| n.digits().to_owned())
    }

    #[test]
    fn an_e164_number_with_plus_passes_through() {
        assert_eq!(e("+16135551111", None).as_deref(), Some("16135551111"));
        assert_eq!(
            e("+1 613-555-1111", Some("GB")).as_deref(),
            Some("16135551111")
        );
    }

    #[test]
    fn a_north_american_national_number_gets_country_code_one() {
        assert_eq!(
            e("(613) 555-1111", Some("CA")).as_deref(),
            Some("16135551111")
        );
        assert_eq!(
            e("613.555.1111", Some("us")).as_deref(),
            Some("16135551111")
        );
        assert_eq!(
            e("1-613-555-1111", Some("US")).as_deref(),
            Some("16135551111")
        );
    }

    #[test]
    fn the_00_international_prefix_is_dropped() {
        assert_eq!(
            e("0044 20 7946 0958", None).as_deref(),
            Some("442079460958")
        );
        assert_eq!(
            e("0044 20 7946 0958", Some("US")).as_deref(),
            Some("442079460958")
        );
    }

    #[test]
    fn country_specific_international_prefixes_are_dropped() {
        assert_eq!(
            e("011 44 20 7946 0958", Some("US")).as_deref(),
            Some("442079460958")
        );
        assert_eq!(
            e("0011 44 20 7946 0958", Some("AU")).as_deref(),
            Some("442079460958")
        );
        assert_eq!(
            e("010-44-20-7946-0958", Some("JP")).as_deref(),
            Some("442079460958")
        );
    }

    #[test]
    fn a_national_trunk_zero_is_replaced_by_the_country_code() {
        assert_eq!(
            e("020 7946 0958", Some("GB")).as_deref(),
            Some("442079460958")
        );
        assert_eq!(
            e("06 12 34 56 78", Some("FR")).as_deref(),
            Some("33612345678")
        );
        assert_eq!(e("030/1234567", Some("DE")).as_deref(), Some("49301234567"));
        assert_eq!(
            e("06 1 234 5678", Some("HU")).as_deref(),
            Some("3612345678")
        );
    }

    #[test]
    fn an_italian_leading_zero_is_part_of_the_number() {
        assert_eq!(
            e("06 1234 5678", Some("IT")).as_deref(),
            Some("390612345678")
        );
        assert_eq!(e("+39 06 1234 5678", None).as_deref(), Some("390612345678"));
    }

    #[test]
    fn a_trunk_kept_after_the_country_code_is_dropped() {
        assert_eq!(
            e("+44 (0)20 7946 0958", None).as_deref(),
            Some("442079460958")
        );
        assert_eq!(
            e("+44 020 7946 0958", None).as_deref(),
            Some("442079460958")
        );
        assert_eq!(
            e("0049 (0)30 1234567", None).as_deref(),
            Some("49301234567")
        );
    }

    #[test]
    fn a_number_typed_with_its_country_code_but_no_plus_is_recognised() {
        assert_eq!(
            e("44 20 7946 0958", Some("GB")).as_deref(),
            Some("442079460958")
        );
        assert_eq!(e("4791234567", Some("NO")).as_deref(), Some("4791234567"));
        assert_eq!(e("91234567", Some("NO")).as_deref(), Some("4791234567"));
        // An Italian mobile starting with 39 is still national.
        assert_eq!(
            e("392 123 4567", Some("IT")).as_deref(),
            Some("393921234567")
        );
    }

    #[test]
    fn an_extension_is_cut_off() {
        assert_eq!(
            e("+1 613 555 1111 ext. 22", None).as_deref(),
            Some("16135551111")
        );
        assert_eq!(
            e("(613) 555-1111 x22", Some("CA")).as_deref(),
            Some("16135551111")
        );
    }

    #[test]
    fn implausible_numbers_are_refused() {
        assert_eq!(e("555-1111", Some("US")), None, "too short for the country");
        assert_eq!(e("+1234567", None), None, "fewer than 8 digits");
        assert_eq!(e("+1234567890123456", None), None, "more than 15 digits");
        assert_eq!(e("020 7946 0958", None), None, "national without a country");
        assert_eq!(e("020 7946 0958", Some("ZZ")), None, "unknown country");
        assert_eq!(e("call me", Some("US")), None);
        assert_eq!(e("tel:+16135551111", None), None);
        assert_eq!(e("+0 613 555 1111", None), None);
        assert_eq!(e("", Some("US")), None);
    }

    #[test]
    fn each_platform_format_comes_from_the_same_candidate() {
        let n = e164("(613) 555-1111", Some("US")).unwrap();
        assert_eq!(n.digits(), "16135551111");
        assert_eq!(n.with_plus(), "+16135551111");
        assert_eq!(format!("{n:?}"), "E164(***)");
    }

    #[test]
    fn every_eu_and_eea_country_and_the_named_markets_have_a_calling_code() {
        let required = [
            "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
            "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS",
            "LI", "NO", "GB", "CH", "US", "CA", "AU", "NZ", "JP", "MX", "BR", "IN",
        ];
        for alpha2 in required {
            assert!(calling_code(alpha2).is_some(), "{alpha2}");
        }
        assert_eq!(calling_code("gb"), Some("44"));
    }

    #[test]
    fn calling_codes_are_prefix_free() {
        for a in PLANS {
            for b in PLANS {
                if a.code != b.code {
                    assert!(!a.code.starts_with(b.code), "{} / {}", a.code, b.code);
                }
            }
        }
    }
}

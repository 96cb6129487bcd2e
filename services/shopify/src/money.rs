//! Decimal money without floats: Shopify sends amounts as decimal strings, compared here as
//! integers of millionths.

use std::cmp::Ordering;

/// An amount in millionths of the currency unit (exact for any Shopify amount).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i128);

const SCALE_DIGITS: usize = 6;

impl Amount {
    /// Parses `"421.88"`, `"-3"`, `"0.5"`; `None` for anything else (exponents, spaces, >6 decimals).
    pub fn parse(text: &str) -> Option<Amount> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let valid = !whole.is_empty()
            && whole.len() <= 24
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.len() <= SCALE_DIGITS
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && !(digits.contains('.') && fraction.is_empty());
        if !valid {
            return None;
        }
        let padded = format!("{whole}{fraction:0<width$}", width = SCALE_DIGITS);
        let value: i128 = padded.parse().ok()?;
        Some(Amount(if negative { -value } else { value }))
    }
}

impl PartialOrd<i128> for Amount {
    fn partial_cmp(&self, other: &i128) -> Option<Ordering> {
        self.0.partial_cmp(other)
    }
}

impl PartialEq<i128> for Amount {
    fn eq(&self, other: &i128) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_compare_exactly() {
        assert!(Amount::parse("421.88").unwrap() > Amount::parse("421.879999").unwrap());
        assert_eq!(
            Amount::parse("10").unwrap(),
            Amount::parse("10.000000").unwrap()
        );
        assert!(Amount::parse("-1.5").unwrap() < Amount::parse("0").unwrap());
        assert_eq!(Amount::parse("0.1").unwrap(), 100_000);
    }

    #[test]
    fn anything_but_a_plain_decimal_is_refused() {
        for bad in [
            "",
            "1e3",
            " 1",
            "1.",
            ".5",
            "1.2345678",
            "abc",
            "1,00",
            "--1",
            "NaN",
        ] {
            assert_eq!(Amount::parse(bad), None, "{bad:?}");
        }
    }
}

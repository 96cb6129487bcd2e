//! Decimal money without floats: Shopify sends amounts as decimal strings, compared here as
//! integers of millionths.

use std::cmp::Ordering;

/// An amount in millionths of the currency unit (exact for any Shopify amount).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i128);

const SCALE_DIGITS: usize = 6;

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// `percent` % of this amount, rounded down to the cent.
    pub fn percent(self, percent: Amount) -> Amount {
        let scale = 10i128.pow(SCALE_DIGITS as u32);
        let exact = self.0.saturating_mul(percent.0) / (100 * scale);
        let cent = scale / 100;
        Amount(exact / cent * cent)
    }

    /// The sum, held at the bounds rather than wrapping (no Shopify amount comes near them).
    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// As a float, for APIs that want one (Shopify's discount percentage).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / 10f64.powi(SCALE_DIGITS as i32)
    }

    /// A setting's decimal amount (a threshold or minimum in the shop's currency): trimmed, and
    /// the message names the value and the expected form.
    pub fn parse_setting(value: &str) -> Result<Amount, String> {
        Amount::parse(value.trim())
            .ok_or_else(|| format!("{value:?} is not a decimal amount like 50 or 49.99"))
    }

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

/// A plain decimal with at least two decimals (`5.00`, `0.125`), as Shopify's `Decimal` takes it.
impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let scale = 10i128.pow(SCALE_DIGITS as u32);
        let (whole, fraction) = (self.0.abs() / scale, self.0.abs() % scale);
        let fraction = format!("{fraction:0width$}", width = SCALE_DIGITS);
        let trimmed = fraction.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            &fraction[..2]
        } else {
            trimmed
        };
        write!(f, "{sign}{whole}.{shown}")
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
    fn amounts_print_as_plain_decimals_with_two_or_more_decimals() {
        for (text, shown) in [
            ("5", "5.00"),
            ("10.5", "10.50"),
            ("0.125", "0.125"),
            ("-3.10", "-3.10"),
        ] {
            assert_eq!(Amount::parse(text).unwrap().to_string(), shown);
        }
        assert_eq!(Amount::parse("12.5").unwrap().to_f64(), 12.5);
        let p = |t| Amount::parse(t).unwrap();
        assert_eq!(p("49.99").percent(p("10")).to_string(), "4.99");
        assert_eq!(p("50").percent(p("12.5")).to_string(), "6.25");
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

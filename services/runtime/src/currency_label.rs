//! A bounded `currency` metric label shared by the business revenue counters: the first
//! [`CURRENCIES_MAX`] ISO-looking codes seen, then `other`, so a stream of odd or many
//! currencies cannot grow a series per value.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Distinct currencies a revenue counter takes before the rest count as `other`.
pub const CURRENCIES_MAX: usize = 32;

/// The currencies seen so far by one service (clones share them).
#[derive(Clone, Default)]
pub struct CurrencyLabels {
    seen: Arc<Mutex<HashSet<String>>>,
}

impl CurrencyLabels {
    /// An ISO-looking code (three upper-case letters) among the first [`CURRENCIES_MAX`]
    /// seen, else `other`.
    pub fn label(&self, currency: &str) -> String {
        let iso = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
        if !iso {
            return "other".into();
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(currency) || seen.len() < CURRENCIES_MAX {
            seen.insert(currency.to_string());
            currency.to_string()
        } else {
            "other".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_past_the_cap_and_odd_values_are_other() {
        let labels = CurrencyLabels::default();
        assert_eq!(labels.label("EUR"), "EUR");
        assert_eq!(labels.label("eur"), "other");
        assert_eq!(labels.label("EURO"), "other");
        for n in 0..CURRENCIES_MAX as u8 - 1 {
            let code = format!("A{}{}", (b'A' + n / 26) as char, (b'A' + n % 26) as char);
            assert_eq!(labels.label(&code), code);
        }
        assert_eq!(labels.label("ZZZ"), "other");
        assert_eq!(
            labels.label("EUR"),
            "EUR",
            "a code seen before keeps its label"
        );
    }
}

//! Marketing consent kept beyond the customers topic's retention. The latest consent of each
//! customer (read from the customers topic, a global table) is also written to the changelog of
//! every journey partition an instance owns, under `consent:<shop>/id:<customer id>`, so that an
//! unsubscribe older than the topic's `retention.ms` still holds after a restart: the restored
//! copies are merged back (the newest wins). A redaction deletes the copies.

use serde::{Deserialize, Serialize};

use crate::domain::answered::Answered;
use crate::domain::journey::Journey;

/// Changelog keys of consent copies start with this (journey keys start with a shop domain,
/// which has no colon).
pub const PREFIX: &str = "consent:";

/// A customer's latest marketing consent per channel, and the time of the record it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<bool>,
    pub at_ms: i64,
}

impl Consent {
    /// Channel by channel, what a later statement says wins; it keeps what it does not say.
    pub fn hear(&mut self, email: Option<bool>, sms: Option<bool>, at_ms: i64) {
        self.email = email.or(self.email);
        self.sms = sms.or(self.sms);
        self.at_ms = self.at_ms.max(at_ms);
    }

    /// Merges another account of the same customer's consent (a restored copy): channel by
    /// channel the newer says what holds, and what it leaves unsaid the older still says (a
    /// copy holds channels whose records the customers topic no longer has). Of two as old,
    /// this one speaks first.
    pub fn merge(&mut self, other: Consent) {
        let (mut merged, newer) = if other.at_ms > self.at_ms {
            (*self, other)
        } else {
            (other, *self)
        };
        merged.hear(newer.email, newer.sms, newer.at_ms);
        *self = merged;
    }

    pub fn channels(&self) -> (Option<bool>, Option<bool>) {
        (self.email, self.sms)
    }
}

/// A changelog entity: a journey, a consent copy, or the mark of an answered data request. A
/// consent and a mark decode only as themselves (unknown fields refused, each with a field the
/// other lacks) and a journey needs its shop, so none is read as another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stored {
    Consent(Consent),
    Journey(Box<Journey>),
    Answered(Answered),
}

/// The changelog key of a customer's consent copy (`customer` as [`crate::domain::journey::customer_ref`]).
pub fn key(customer: &str) -> String {
    format!("{PREFIX}{customer}")
}

/// The customer a consent copy's key names.
pub fn customer_of(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consent_and_a_journey_read_back_as_themselves() {
        let consent = Stored::Consent(Consent {
            email: Some(false),
            sms: None,
            at_ms: 5,
        });
        let text = serde_json::to_string(&consent).unwrap();
        assert_eq!(serde_json::from_str::<Stored>(&text).unwrap(), consent);
        let journey = serde_json::to_string(&Journey::new("s", 1)).unwrap();
        let read: Stored = serde_json::from_str(&journey).unwrap();
        assert!(matches!(read, Stored::Journey(_)), "{read:?}");
        let mark = Stored::Answered(Answered { request_at_ms: 5 });
        let text = serde_json::to_string(&mark).unwrap();
        assert_eq!(serde_json::from_str::<Stored>(&text).unwrap(), mark);
    }
}

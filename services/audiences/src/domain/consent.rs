//! Google's consent signals (`adUserData`, `adPersonalization`) for one person, read from their
//! Shopify marketing consent (email and SMS: state and opt-in level) through the merchant's
//! mapping of opt-in levels to signals. A level the mapping does not name is sent as a denial.
//! A subscription known only from a checkout's marketing checkbox (abandonments and orders
//! carry no level) reads as `single_opt_in`: the customer ticked it themselves, once.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Shopify's `opt_in_level` of a marketing consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptInLevel {
    SingleOptIn,
    ConfirmedOptIn,
    Unknown,
}

impl OptInLevel {
    /// Shopify writes `single_opt_in` in webhooks and `SINGLE_OPT_IN` in GraphQL.
    pub fn parse(text: &str) -> Option<OptInLevel> {
        match text.trim().to_ascii_lowercase().as_str() {
            "single_opt_in" => Some(OptInLevel::SingleOptIn),
            "confirmed_opt_in" => Some(OptInLevel::ConfirmedOptIn),
            "unknown" => Some(OptInLevel::Unknown),
            _ => None,
        }
    }

    pub const ALL: [&'static str; 3] = ["single_opt_in", "confirmed_opt_in", "unknown"];
}

/// The signals one person carries to Google.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdConsent {
    pub ad_user_data: bool,
    pub ad_personalization: bool,
}

/// A merchant's reading of marketing consent as Google's signals: which opt-in levels of a
/// subscribed channel (email or SMS) grant each signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentMapping {
    pub ad_user_data: BTreeSet<OptInLevel>,
    pub ad_personalization: BTreeSet<OptInLevel>,
}

impl Default for ConsentMapping {
    /// A subscription the customer gave (single or confirmed opt-in) grants both; one whose
    /// level Shopify does not know grants neither.
    fn default() -> Self {
        let given: BTreeSet<OptInLevel> = [OptInLevel::SingleOptIn, OptInLevel::ConfirmedOptIn]
            .into_iter()
            .collect();
        ConsentMapping {
            ad_user_data: given.clone(),
            ad_personalization: given,
        }
    }
}

/// One channel's consent as the mapping needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConsent {
    pub subscribed: bool,
    pub level: Option<OptInLevel>,
}

impl ConsentMapping {
    /// The signals of a person with these channel consents: a signal is granted when a
    /// subscribed channel's level is mapped to it.
    pub fn read(&self, channels: &[Option<ChannelConsent>]) -> AdConsent {
        let grants = |levels: &BTreeSet<OptInLevel>| {
            channels.iter().flatten().any(|c| {
                c.subscribed && levels.contains(&c.level.unwrap_or(OptInLevel::SingleOptIn))
            })
        };
        AdConsent {
            ad_user_data: grants(&self.ad_user_data),
            ad_personalization: grants(&self.ad_personalization),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(subscribed: bool, level: Option<OptInLevel>) -> Option<ChannelConsent> {
        Some(ChannelConsent { subscribed, level })
    }

    #[test]
    fn each_signal_follows_the_mapping_of_the_subscribed_levels() {
        let mapping = ConsentMapping {
            ad_user_data: [OptInLevel::SingleOptIn, OptInLevel::ConfirmedOptIn].into(),
            ad_personalization: [OptInLevel::ConfirmedOptIn].into(),
        };
        let single = mapping.read(&[channel(true, Some(OptInLevel::SingleOptIn)), None]);
        assert!(single.ad_user_data && !single.ad_personalization);
        let sms_confirmed = mapping.read(&[
            channel(true, Some(OptInLevel::SingleOptIn)),
            channel(true, Some(OptInLevel::ConfirmedOptIn)),
        ]);
        assert!(sms_confirmed.ad_user_data && sms_confirmed.ad_personalization);
        let unsubscribed = mapping.read(&[channel(false, Some(OptInLevel::ConfirmedOptIn))]);
        assert!(!unsubscribed.ad_user_data && !unsubscribed.ad_personalization);
        let checkbox = mapping.read(&[channel(true, None)]);
        assert!(
            checkbox.ad_user_data && !checkbox.ad_personalization,
            "a checkbox is a single opt-in"
        );
        let unknown = ConsentMapping::default().read(&[channel(true, Some(OptInLevel::Unknown))]);
        assert!(
            !unknown.ad_user_data,
            "a level Shopify does not know: denied"
        );
    }

    #[test]
    fn levels_parse_in_either_case() {
        assert_eq!(
            OptInLevel::parse("CONFIRMED_OPT_IN"),
            Some(OptInLevel::ConfirmedOptIn)
        );
        assert_eq!(OptInLevel::parse("maybe"), None);
    }
}

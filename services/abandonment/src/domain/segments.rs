//! Segment rules: each a small pure function of a journey and the configured thresholds.

use serde::{Deserialize, Serialize};

use crate::domain::journey::{Journey, Snapshot};
use crate::domain::money::Amount;

/// Thresholds of the segment rules (all configurable).
#[derive(Debug, Clone)]
pub struct SegmentRules {
    /// Carts at or above this total are `medium`.
    pub value_medium: Amount,
    /// Carts at or above this total are `high`.
    pub value_high: Amount,
    /// Returning to the checkout this many times makes a fence-sitter.
    pub fence_sitter_visits: u32,
    /// Keeping the checkout open this long (first to last activity) makes a fence-sitter.
    pub fence_sitter_span_ms: i64,
    /// Abandonments by the same customer within this window count towards `repeat`.
    pub repeat_window_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Cart,
    Checkout,
    Contact,
    ShippingAddress,
    ShippingMethod,
    Payment,
}

impl Stage {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Cart => "cart",
            Stage::Checkout => "checkout",
            Stage::Contact => "contact",
            Stage::ShippingAddress => "shipping_address",
            Stage::ShippingMethod => "shipping_method",
            Stage::Payment => "payment",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueTier {
    Unknown,
    Low,
    Medium,
    High,
}

impl ValueTier {
    pub fn as_str(&self) -> &'static str {
        match self {
            ValueTier::Unknown => "unknown",
            ValueTier::Low => "low",
            ValueTier::Medium => "medium",
            ValueTier::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerKind {
    New,
    Returning,
}

impl CustomerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CustomerKind::New => "new",
            CustomerKind::Returning => "returning",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channels {
    pub email: bool,
    pub sms: bool,
}

/// Every segment of one abandonment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segments {
    pub stage: Stage,
    pub value_tier: ValueTier,
    pub customer: CustomerKind,
    pub contactable: Channels,
    pub consent: Channels,
    pub discount: bool,
    pub fence_sitter: bool,
    pub repeat: u32,
}

/// How far the buyer got, from the fields they filled.
pub fn stage(checkout: Option<&Snapshot>) -> Stage {
    let Some(c) = checkout else {
        return Stage::Cart;
    };
    if c.has_payment {
        Stage::Payment
    } else if c.has_shipping_method {
        Stage::ShippingMethod
    } else if c.has_shipping_address {
        Stage::ShippingAddress
    } else if c.email.is_some() || c.phone.is_some() {
        Stage::Contact
    } else {
        Stage::Checkout
    }
}

/// The cart value against the thresholds, in the shop currency (decimal strings, never floats).
pub fn value_tier(total_price: Option<&str>, rules: &SegmentRules) -> ValueTier {
    match total_price.and_then(Amount::parse) {
        None => ValueTier::Unknown,
        Some(total) if total >= rules.value_high => ValueTier::High,
        Some(total) if total >= rules.value_medium => ValueTier::Medium,
        Some(_) => ValueTier::Low,
    }
}

/// Returning when Shopify counts earlier orders or the service has seen one.
pub fn customer_kind(orders_count: Option<u64>, orders_seen: u32) -> CustomerKind {
    if orders_count.unwrap_or(0) > 0 || orders_seen > 0 {
        CustomerKind::Returning
    } else {
        CustomerKind::New
    }
}

pub fn contactable(checkout: Option<&Snapshot>) -> Channels {
    Channels {
        email: checkout.is_some_and(|c| c.email.is_some()),
        sms: checkout.is_some_and(|c| c.phone.is_some()),
    }
}

/// Marketing consent: the latest customer consent event wins over the checkout's flags.
pub fn consent(checkout: Option<&Snapshot>, latest: (Option<bool>, Option<bool>)) -> Channels {
    Channels {
        email: latest
            .0
            .unwrap_or_else(|| checkout.is_some_and(|c| c.accepts_email)),
        sms: latest
            .1
            .unwrap_or_else(|| checkout.is_some_and(|c| c.accepts_sms)),
    }
}

pub fn discount(checkout: Option<&Snapshot>) -> bool {
    checkout.is_some_and(|c| !c.discount_codes.is_empty())
}

/// High intent: came back several times, or kept the checkout open a long time.
pub fn fence_sitter(journey: &Journey, rules: &SegmentRules) -> bool {
    journey.visits >= rules.fence_sitter_visits
        || journey.last_activity_ms - journey.first_activity_ms >= rules.fence_sitter_span_ms
}

/// Earlier abandonments by the same customer within the window.
pub fn repeat(earlier_abandonments_ms: &[i64], now_ms: i64, rules: &SegmentRules) -> u32 {
    earlier_abandonments_ms
        .iter()
        .filter(|at| now_ms - **at <= rules.repeat_window_ms && **at < now_ms)
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SegmentRules {
        SegmentRules {
            value_medium: Amount::parse("50").unwrap(),
            value_high: Amount::parse("200").unwrap(),
            fence_sitter_visits: 3,
            fence_sitter_span_ms: 24 * 3_600_000,
            repeat_window_ms: 30 * 86_400_000,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            token: Some("t".into()),
            cart_token: None,
            email: None,
            phone: None,
            customer_id: None,
            first_name: None,
            last_name: None,
            country: None,
            orders_count: None,
            accepts_email: false,
            accepts_sms: false,
            total_price: None,
            currency: None,
            items: vec![],
            discount_codes: vec![],
            has_shipping_address: false,
            has_shipping_method: false,
            has_payment: false,
            completed: false,
            recovery_url: None,
            subtotal_price: None,
        }
    }

    #[test]
    fn the_stage_is_the_furthest_step_reached() {
        let mut c = snapshot();
        assert_eq!(stage(None), Stage::Cart);
        assert_eq!(stage(Some(&c)), Stage::Checkout);
        c.phone = Some("+1".into());
        assert_eq!(stage(Some(&c)), Stage::Contact);
        c.has_shipping_address = true;
        assert_eq!(stage(Some(&c)), Stage::ShippingAddress);
        c.has_shipping_method = true;
        assert_eq!(stage(Some(&c)), Stage::ShippingMethod);
        c.has_payment = true;
        assert_eq!(stage(Some(&c)), Stage::Payment);
    }

    #[test]
    fn value_tiers_use_inclusive_thresholds() {
        let r = rules();
        assert_eq!(value_tier(Some("49.99"), &r), ValueTier::Low);
        assert_eq!(value_tier(Some("50.00"), &r), ValueTier::Medium);
        assert_eq!(value_tier(Some("199.999999"), &r), ValueTier::Medium);
        assert_eq!(value_tier(Some("200"), &r), ValueTier::High);
        assert_eq!(value_tier(Some("garbage"), &r), ValueTier::Unknown);
        assert_eq!(value_tier(None, &r), ValueTier::Unknown);
    }

    #[test]
    fn customers_are_returning_by_shopify_count_or_seen_orders() {
        assert_eq!(customer_kind(None, 0), CustomerKind::New);
        assert_eq!(customer_kind(Some(0), 0), CustomerKind::New);
        assert_eq!(customer_kind(Some(2), 0), CustomerKind::Returning);
        assert_eq!(customer_kind(None, 1), CustomerKind::Returning);
    }

    #[test]
    fn contactable_follows_email_and_phone() {
        let mut c = snapshot();
        assert_eq!(
            contactable(Some(&c)),
            Channels {
                email: false,
                sms: false
            }
        );
        c.email = Some("a@b.c".into());
        assert_eq!(
            contactable(Some(&c)),
            Channels {
                email: true,
                sms: false
            }
        );
        c.phone = Some("+1".into());
        assert_eq!(
            contactable(Some(&c)),
            Channels {
                email: true,
                sms: true
            }
        );
        assert_eq!(
            contactable(None),
            Channels {
                email: false,
                sms: false
            }
        );
    }

    #[test]
    fn a_consent_event_overrides_the_checkout_flags() {
        let mut c = snapshot();
        c.accepts_email = true;
        assert_eq!(
            consent(Some(&c), (None, None)),
            Channels {
                email: true,
                sms: false
            }
        );
        assert_eq!(
            consent(Some(&c), (Some(false), None)),
            Channels {
                email: false,
                sms: false
            }
        );
        assert_eq!(
            consent(Some(&c), (None, Some(true))),
            Channels {
                email: true,
                sms: true
            }
        );
    }

    #[test]
    fn discount_means_a_code_is_applied() {
        let mut c = snapshot();
        assert!(!discount(Some(&c)));
        c.discount_codes.push("SAVE10".into());
        assert!(discount(Some(&c)));
    }

    #[test]
    fn fence_sitters_return_often_or_linger() {
        let r = rules();
        let mut j = Journey::new("s", 0);
        j.visits = 2;
        assert!(!fence_sitter(&j, &r));
        j.visits = 3;
        assert!(fence_sitter(&j, &r));
        j.visits = 1;
        j.last_activity_ms = 25 * 3_600_000;
        assert!(fence_sitter(&j, &r));
    }

    #[test]
    fn repeat_counts_recent_earlier_abandonments_only() {
        let r = rules();
        let day = 86_400_000;
        let now = 100 * day;
        assert_eq!(repeat(&[], now, &r), 0);
        assert_eq!(
            repeat(&[now - day, now - 10 * day, now - 31 * day], now, &r),
            2
        );
        assert_eq!(
            repeat(&[now], now, &r),
            0,
            "the current abandonment is not a repeat"
        );
    }
}

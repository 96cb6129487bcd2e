//! Audience definitions: which facts make a person a candidate member, for how long, and which
//! destinations hold the audience. Pure predicates, one per source.

use aftercart_shopify::money::Amount;

use crate::domain::input::{Abandonment, CustomerFacts, Purchase};

/// Facts an audience draws its members from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Abandonments(AbandonmentFilter),
    Orders(OrderFilter),
    Customers(CustomerFilter),
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::Abandonments(_) => "abandonments",
            Source::Orders(_) => "orders",
            Source::Customers(_) => "customers",
        }
    }
}

/// Abandonment segments to keep (an empty list keeps every value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AbandonmentFilter {
    pub kinds: Vec<String>,
    pub stages: Vec<String>,
    pub value_tiers: Vec<String>,
    pub customer_types: Vec<String>,
    pub min_value: Option<Amount>,
    pub discount: Option<bool>,
    pub fence_sitter: Option<bool>,
}

/// Purchases to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFilter {
    pub financial_statuses: Vec<String>,
    pub min_total: Option<Amount>,
    pub include_test: bool,
}

impl Default for OrderFilter {
    fn default() -> Self {
        OrderFilter {
            financial_statuses: vec![
                "paid".to_string(),
                "partially_paid".to_string(),
                "partially_refunded".to_string(),
            ],
            min_total: None,
            include_test: false,
        }
    }
}

/// Customers to keep.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerFilter {
    pub min_orders: u64,
    pub tags_any: Vec<String>,
}

/// One audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    pub name: String,
    pub source: Source,
    /// Members leave this long after the fact that made them members; `None`: never.
    pub window_ms: Option<i64>,
    /// Abandoner audiences: a recovery or any purchase by the person ends membership.
    pub leave_on_purchase: bool,
    /// Destination names (keys of the configured destinations).
    pub destinations: Vec<String>,
    /// Shops whose people may join (lower-cased domains); empty: every shop.
    pub shops: Vec<String>,
}

fn kept(values: &[String], value: &str) -> bool {
    values.is_empty() || values.iter().any(|v| v.eq_ignore_ascii_case(value))
}

fn at_least(min: Option<Amount>, value: Option<Amount>) -> bool {
    match (min, value) {
        (None, _) => true,
        (Some(min), Some(value)) => value >= min,
        (Some(_), None) => false,
    }
}

impl AbandonmentFilter {
    pub fn matches(&self, facts: &Abandonment) -> bool {
        kept(&self.kinds, &facts.kind)
            && kept(&self.stages, &facts.stage)
            && kept(&self.value_tiers, &facts.value_tier)
            && kept(&self.customer_types, &facts.customer_type)
            && at_least(self.min_value, facts.value)
            && self.discount.is_none_or(|d| d == facts.discount)
            && self.fence_sitter.is_none_or(|f| f == facts.fence_sitter)
    }
}

impl OrderFilter {
    pub fn matches(&self, purchase: &Purchase) -> bool {
        !purchase.cancelled
            && (self.include_test || !purchase.test)
            && kept(&self.financial_statuses, &purchase.financial_status)
            && at_least(self.min_total, purchase.total)
    }
}

impl CustomerFilter {
    pub fn matches(&self, facts: &CustomerFacts) -> bool {
        facts.orders_count >= self.min_orders
            && (self.tags_any.is_empty()
                || facts
                    .tags
                    .iter()
                    .any(|t| self.tags_any.iter().any(|w| w.eq_ignore_ascii_case(t))))
    }
}

impl Audience {
    pub fn admits_shop(&self, shop: &str) -> bool {
        self.shops.is_empty() || self.shops.iter().any(|s| s.eq_ignore_ascii_case(shop))
    }

    pub fn expiry(&self, at_ms: i64) -> Option<i64> {
        self.window_ms.map(|w| at_ms.saturating_add(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abandonment(tier: &str, value: &str) -> Abandonment {
        Abandonment {
            kind: "checkout".into(),
            stage: "payment".into(),
            value_tier: tier.into(),
            customer_type: "new".into(),
            value: Amount::parse(value),
            discount: false,
            fence_sitter: false,
        }
    }

    #[test]
    fn an_empty_abandonment_filter_keeps_everything() {
        assert!(AbandonmentFilter::default().matches(&abandonment("low", "1")));
    }

    #[test]
    fn tiers_and_minimum_value_filter_abandonments() {
        let filter = AbandonmentFilter {
            value_tiers: vec!["high".into()],
            min_value: Amount::parse("100"),
            ..Default::default()
        };
        assert!(filter.matches(&abandonment("high", "100.00")));
        assert!(!filter.matches(&abandonment("high", "99.99")));
        assert!(!filter.matches(&abandonment("medium", "500")));
    }

    #[test]
    fn cancelled_test_and_unpaid_orders_are_not_purchases() {
        let paid = Purchase {
            order_id: None,
            total: Amount::parse("10"),
            financial_status: "paid".into(),
            test: false,
            cancelled: false,
        };
        let filter = OrderFilter::default();
        assert!(filter.matches(&paid));
        assert!(!filter.matches(&Purchase {
            cancelled: true,
            ..paid.clone()
        }));
        assert!(!filter.matches(&Purchase {
            test: true,
            ..paid.clone()
        }));
        assert!(!filter.matches(&Purchase {
            financial_status: "pending".into(),
            ..paid
        }));
    }

    #[test]
    fn customer_filters_need_orders_and_any_tag() {
        let filter = CustomerFilter {
            min_orders: 2,
            tags_any: vec!["VIP".into()],
        };
        let facts = |n, tags: &[&str]| CustomerFacts {
            orders_count: n,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        assert!(filter.matches(&facts(2, &["vip", "x"])));
        assert!(!filter.matches(&facts(1, &["vip"])));
        assert!(!filter.matches(&facts(5, &["other"])));
    }
}

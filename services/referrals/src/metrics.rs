//! Referrals metrics (`aftercart_referrals_*`) on an injected registry; bounded labels only.

use aftercart_kafka::LoopMetrics;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::domain::engine::{Counted, REJECT_REASONS, VOID_REASONS};

const PREFIX: &str = "aftercart_referrals_";

#[derive(Clone)]
pub struct ReferralsMetrics {
    invites: IntCounter,
    invites_skipped: IntCounterVec,
    attributions: IntCounterVec,
    redacted_facts: IntCounter,
    rewards: IntCounterVec,
    review_backlog: IntGauge,
    customers: IntGauge,
    orders: IntGauge,
    shopify_actions: IntCounterVec,
    /// Records, dead letters, state restore, partitions and lag.
    pub consumer: LoopMetrics,
}

impl ReferralsMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(format!("{PREFIX}{name}"), help);
        let metrics = Self {
            invites: IntCounter::with_opts(opts(
                "invites_total",
                "Invites emitted: buyers who became advocates.",
            ))?,
            invites_skipped: IntCounterVec::new(
                opts(
                    "invites_skipped_total",
                    "Qualifying purchases that made no invite, by reason.",
                ),
                &["reason"],
            )?,
            attributions: IntCounterVec::new(
                opts(
                    "attributions_total",
                    "Orders naming a referral code, by outcome (pending, rejected, or why no reward).",
                ),
                &["outcome"],
            )?,
            redacted_facts: IntCounter::with_opts(opts(
                "redacted_facts_total",
                "Facts dropped because a remembered redaction covers their customer, order or shop.",
            ))?,
            rewards: IntCounterVec::new(
                opts(
                    "rewards_total",
                    "Reward events emitted, by type and reason (none for pending and granted).",
                ),
                &["type", "reason"],
            )?,
            review_backlog: IntGauge::with_opts(opts(
                "rewards_in_review",
                "Rewards pending in their review window on this instance.",
            ))?,
            customers: IntGauge::with_opts(opts(
                "customers_tracked",
                "Customers held in state by this instance.",
            ))?,
            orders: IntGauge::with_opts(opts(
                "orders_tracked",
                "Orders held in state by this instance.",
            ))?,
            shopify_actions: IntCounterVec::new(
                opts(
                    "shopify_actions_total",
                    "Actions in shops (friend_discount, reward_code, store_credit, deactivate), by outcome (done, dead_lettered).",
                ),
                &["action", "outcome"],
            )?,
            consumer: LoopMetrics::register(
                PREFIX,
                registry,
                "By-shop partitions owned by this instance.",
                &["orders", "fulfillments", "customers", "compliance"],
            )?
            .routing(PREFIX, registry)?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.invites)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.invites_skipped)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.attributions)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.redacted_facts)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.rewards)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.review_backlog)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.customers)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.orders)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.shopify_actions)?;
        for action in [
            "friend_discount",
            "reward_code",
            "store_credit",
            "deactivate",
        ] {
            for outcome in ["done", "dead_lettered"] {
                metrics
                    .shopify_actions
                    .with_label_values(&[action, outcome]);
            }
        }
        // Every known label value at zero, so dashboards and alerts see 0 before the first event.
        for reason in Counted::INVITE_SKIP_REASONS {
            metrics.invites_skipped.with_label_values(&[reason]);
        }
        for outcome in Counted::ATTRIBUTION_OUTCOMES {
            metrics.attributions.with_label_values(&[outcome]);
        }
        let rewards = [("pending", &["none"][..]), ("granted", &["none"][..])];
        for (event_type, reasons) in rewards
            .into_iter()
            .chain([("rejected", REJECT_REASONS), ("voided", VOID_REASONS)])
        {
            for reason in reasons {
                metrics.rewards.with_label_values(&[event_type, reason]);
            }
        }
        Ok(metrics)
    }

    pub fn counted(&self, counted: Counted) {
        match counted {
            Counted::InviteSkipped(reason) => {
                self.invites_skipped.with_label_values(&[reason]).inc()
            }
            Counted::Attribution(outcome) => self.attributions.with_label_values(&[outcome]).inc(),
            Counted::Redacted => self.redacted_facts.inc(),
        }
    }

    pub fn invited(&self) {
        self.invites.inc();
    }

    /// `reason` comes from the engine's fixed set of reasons.
    pub fn rewarded(&self, event_type: &str, reason: Option<&str>) {
        let event_type = event_type.strip_prefix("reward.").unwrap_or(event_type);
        self.rewards
            .with_label_values(&[event_type, reason.unwrap_or("none")])
            .inc();
    }

    /// State sizes: customers, orders, rewards in review.
    pub fn state(&self, (customers, orders, in_review): (usize, usize, usize)) {
        self.customers.set(customers as i64);
        self.orders.set(orders as i64);
        self.review_backlog.set(in_review as i64);
    }

    /// `action` and `outcome` come from the fixed sets registered above.
    pub fn shopify_action(&self, action: &str, outcome: &str) {
        self.shopify_actions
            .with_label_values(&[action, outcome])
            .inc();
    }
}

//! Referrals metrics (`aftercart_referrals_*`) on an injected registry; bounded labels only.

use std::time::Duration;

use aftercart_kafka::ConsumerLag;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::domain::engine::Counted;

const PREFIX: &str = "aftercart_referrals_";

#[derive(Clone)]
pub struct ReferralsMetrics {
    invites: IntCounter,
    invites_skipped: IntCounterVec,
    attributions: IntCounterVec,
    rewards: IntCounterVec,
    review_backlog: IntGauge,
    customers: IntGauge,
    orders: IntGauge,
    processed: IntCounterVec,
    routed: IntCounter,
    failed: IntCounterVec,
    dead_letters: IntCounter,
    restore_duration: Histogram,
    restored_records: IntCounter,
    changelog_writes: IntCounter,
    partitions: IntGauge,
    pub(crate) lag: ConsumerLag,
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
            processed: IntCounterVec::new(
                opts(
                    "records_processed_total",
                    "Records applied to the state, by Shopify topic family.",
                ),
                &["topic"],
            )?,
            routed: IntCounter::with_opts(opts(
                "records_routed_total",
                "Source records forwarded to the by-shop topic.",
            ))?,
            failed: IntCounterVec::new(
                opts(
                    "records_failed_total",
                    "Records that could not be used, by topic family and reason.",
                ),
                &["topic", "reason"],
            )?,
            dead_letters: IntCounter::with_opts(opts(
                "dead_letters_total",
                "Records written to the dead-letter topic.",
            ))?,
            restore_duration: Histogram::with_opts(
                HistogramOpts::new(
                    format!("{PREFIX}state_restore_duration_seconds"),
                    "Time to restore one partition's state on assignment.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            )?,
            restored_records: IntCounter::with_opts(opts(
                "state_restored_records_total",
                "Changelog records read while restoring state.",
            ))?,
            changelog_writes: IntCounter::with_opts(opts(
                "changelog_records_written_total",
                "Records written to the changelog topic.",
            ))?,
            partitions: IntGauge::with_opts(opts(
                "assigned_partitions",
                "By-shop partitions owned by this instance.",
            ))?,
            lag: ConsumerLag::register(PREFIX, registry)?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        registry.register(Box::new(metrics.invites.clone()))?;
        registry.register(Box::new(metrics.invites_skipped.clone()))?;
        registry.register(Box::new(metrics.attributions.clone()))?;
        registry.register(Box::new(metrics.rewards.clone()))?;
        registry.register(Box::new(metrics.review_backlog.clone()))?;
        registry.register(Box::new(metrics.customers.clone()))?;
        registry.register(Box::new(metrics.orders.clone()))?;
        registry.register(Box::new(metrics.processed.clone()))?;
        registry.register(Box::new(metrics.routed.clone()))?;
        registry.register(Box::new(metrics.failed.clone()))?;
        registry.register(Box::new(metrics.dead_letters.clone()))?;
        registry.register(Box::new(metrics.restore_duration.clone()))?;
        registry.register(Box::new(metrics.restored_records.clone()))?;
        registry.register(Box::new(metrics.changelog_writes.clone()))?;
        registry.register(Box::new(metrics.partitions.clone()))?;
        Ok(metrics)
    }

    pub fn counted(&self, counted: Counted) {
        match counted {
            Counted::InviteSkipped(reason) => {
                self.invites_skipped.with_label_values(&[reason]).inc()
            }
            Counted::Attribution(outcome) => self.attributions.with_label_values(&[outcome]).inc(),
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

    pub fn partitions(&self, count: usize) {
        self.partitions.set(count as i64);
    }

    pub fn processed(&self, topic: &str) {
        self.processed.with_label_values(&[topic]).inc();
    }

    pub fn routed(&self, count: usize) {
        self.routed.inc_by(count as u64);
    }

    pub fn failed(&self, topic: &str, reason: &str) {
        self.failed.with_label_values(&[topic, reason]).inc();
    }

    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }

    pub fn restored(&self, records: usize, took: Duration) {
        self.restored_records.inc_by(records as u64);
        self.restore_duration.observe(took.as_secs_f64());
    }

    pub fn changelog_written(&self, records: usize) {
        self.changelog_writes.inc_by(records as u64);
    }
}

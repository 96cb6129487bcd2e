//! Nudges metrics (`aftercart_nudges_*`) on an injected registry; bounded labels only (steps
//! are at most [`MAX_STEPS`], destinations and reasons fixed sets).

use aftercart_kafka::LoopMetrics;
use aftercart_runtime::currency_label::CurrencyLabels;
use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::domain::cadence::MAX_STEPS;
use crate::domain::engine::Suppressed;

const PREFIX: &str = "aftercart_nudges_";
/// The by-shop families the service reads.
pub const FAMILIES: [&str; 5] = [
    "abandonments",
    "orders",
    "checkouts",
    "customers",
    "compliance",
];
/// From a step being due to a destination accepting it: seconds to a day.
const DUE_TO_SENT_BUCKETS: &[f64] = &[
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    86400.0,
];

#[derive(Clone)]
pub struct NudgesMetrics {
    scheduled: IntCounter,
    suppressed: IntCounterVec,
    emitted: IntCounterVec,
    sent: IntCounterVec,
    failed: IntCounterVec,
    due_to_sent: Histogram,
    sequences: IntGauge,
    overdue: IntGauge,
    discounts: IntCounterVec,
    attributed: IntCounter,
    attributed_revenue: CounterVec,
    currencies: CurrencyLabels,
    /// Records of `aftercart.nudges` not yet delivered by this instance's destination.
    pub delivery_lag: IntGauge,
    /// Records, dead letters, state restore, partitions and lag.
    pub consumer: LoopMetrics,
}

fn steps() -> impl Iterator<Item = String> {
    (1..=MAX_STEPS).map(|s| s.to_string())
}

impl NudgesMetrics {
    /// `destination` is the configured destination's kind, when there is one.
    pub fn register(registry: &Registry, destination: Option<&str>) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(format!("{PREFIX}{name}"), help);
        let metrics = Self {
            scheduled: IntCounter::with_opts(opts(
                "scheduled_total",
                "Nudge sequences started: checkout abandonments of people who may be contacted.",
            ))?,
            suppressed: IntCounterVec::new(
                opts(
                    "suppressed_total",
                    "Sequences not started or stopped (and late steps skipped), by reason: purchased, recovered, consent, cap, redacted, deleted, disabled, late, stale (written longer ago than the destination may send).",
                ),
                &["reason"],
            )?,
            emitted: IntCounterVec::new(
                opts(
                    "emitted_total",
                    "Nudges written to the nudges topic, by step.",
                ),
                &["step"],
            )?,
            sent: IntCounterVec::new(
                opts(
                    "sent_total",
                    "Nudges a destination accepted, by step and destination (klaviyo, webhook, file).",
                ),
                &["step", "destination"],
            )?,
            failed: IntCounterVec::new(
                opts(
                    "failed_total",
                    "Nudges a destination refused or that ran out of retries (dead-lettered), by destination.",
                ),
                &["destination"],
            )?,
            due_to_sent: Histogram::with_opts(
                HistogramOpts::new(
                    format!("{PREFIX}due_to_sent_seconds"),
                    "Time from a step being due to its destination accepting it.",
                )
                .buckets(DUE_TO_SENT_BUCKETS.to_vec()),
            )?,
            sequences: IntGauge::with_opts(opts(
                "sequences",
                "Running nudge sequences held by this instance.",
            ))?,
            overdue: IntGauge::with_opts(opts(
                "overdue",
                "Steps due more than a minute ago and not yet written (a stuck stage).",
            ))?,
            discounts: IntCounterVec::new(
                opts(
                    "discounts_total",
                    "Recovery discount codes for nudges, by outcome: created (or found), failed (the nudge went without one).",
                ),
                &["outcome"],
            )?,
            attributed: IntCounter::with_opts(opts(
                "attributed_recoveries_total",
                "Checkouts recovered after at least one nudge of their sequence was sent. No shop label.",
            ))?,
            attributed_revenue: CounterVec::new(
                opts(
                    "attributed_revenue_total",
                    "Revenue of nudge-attributed recoveries, by currency (ISO code; past 32 currencies, other). No shop label.",
                ),
                &["currency"],
            )?,
            currencies: CurrencyLabels::default(),
            delivery_lag: IntGauge::with_opts(opts(
                "delivery_lag_records",
                "Nudges on the topic not yet delivered by this instance's destination.",
            ))?,
            consumer: LoopMetrics::register(
                PREFIX,
                registry,
                "By-shop partitions owned by this instance.",
                &FAMILIES,
            )?
            .routing(PREFIX, registry)?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.scheduled)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.suppressed)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.emitted)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.sent)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.failed)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.due_to_sent)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.sequences)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.overdue)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.delivery_lag)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.discounts)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.attributed)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.attributed_revenue)?;
        for outcome in ["created", "failed"] {
            metrics.discounts.with_label_values(&[outcome]);
        }
        for reason in Suppressed::ALL {
            metrics.suppressed.with_label_values(&[reason.as_label()]);
        }
        for step in steps() {
            metrics.emitted.with_label_values(&[&step]);
            if let Some(destination) = destination {
                metrics.sent.with_label_values(&[&step, destination]);
            }
        }
        if let Some(destination) = destination {
            metrics.failed.with_label_values(&[destination]);
        }
        Ok(metrics)
    }

    pub fn scheduled(&self) {
        self.scheduled.inc();
    }

    pub fn suppressed(&self, why: Suppressed) {
        self.suppressed.with_label_values(&[why.as_label()]).inc();
    }

    pub fn emitted(&self, step: u32) {
        self.emitted.with_label_values(&[&bounded(step)]).inc();
    }

    /// `destination` is one of the fixed kinds; `due_ms` when the step was due.
    pub fn sent(&self, step: u32, destination: &'static str, late_seconds: f64) {
        self.sent
            .with_label_values(&[&bounded(step), destination])
            .inc();
        self.due_to_sent.observe(late_seconds.max(0.0));
    }

    pub fn failed(&self, destination: &'static str) {
        self.failed.with_label_values(&[destination]).inc();
    }

    pub fn state(&self, (sequences, overdue): (usize, usize)) {
        self.sequences.set(sequences as i64);
        self.overdue.set(overdue as i64);
    }

    /// `outcome`: `created` or `failed`.
    pub fn discount(&self, outcome: &'static str) {
        self.discounts.with_label_values(&[outcome]).inc();
    }

    /// A nudge-attributed recovery, with its amount and currency when known.
    pub fn attributed(&self, revenue: Option<(f64, String)>) {
        self.attributed.inc();
        if let Some((amount, currency)) = revenue {
            self.attributed_revenue
                .with_label_values(&[&self.currencies.label(&currency)])
                .inc_by(amount);
        }
    }
}

/// A step label within the registered set (a record from elsewhere could name any number).
fn bounded(step: u32) -> String {
    if (1..=MAX_STEPS as u32).contains(&step) {
        step.to_string()
    } else {
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, family: &str, label: Option<&str>) -> f64 {
        let family = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == family)
            .expect("family registered");
        family
            .get_metric()
            .iter()
            .find(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
            .map(|m| m.get_counter().get_value())
            .unwrap_or(0.0)
    }

    #[test]
    fn attributed_recoveries_count_and_revenue_only_when_an_amount_is_known() {
        let registry = Registry::new();
        let metrics = NudgesMetrics::register(&registry, None).unwrap();
        assert_eq!(
            value(
                &registry,
                "aftercart_nudges_attributed_recoveries_total",
                None
            ),
            0.0,
            "registered at zero"
        );
        metrics.attributed(Some((120.0, "EUR".into())));
        metrics.attributed(Some((30.5, "EUR".into())));
        metrics.attributed(None);
        metrics.attributed(Some((10.0, "euro".into())));
        assert_eq!(
            value(
                &registry,
                "aftercart_nudges_attributed_recoveries_total",
                None
            ),
            4.0
        );
        let revenue = "aftercart_nudges_attributed_revenue_total";
        assert_eq!(value(&registry, revenue, Some("EUR")), 150.5);
        assert_eq!(value(&registry, revenue, Some("other")), 10.0);
    }
}

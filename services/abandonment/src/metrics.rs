//! Abandonment metrics (`aftercart_abandonment_*`) on an injected registry; bounded labels only.

use std::time::Duration;

use aftercart_kafka::ConsumerLag;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

const PREFIX: &str = "aftercart_abandonment_";

#[derive(Clone)]
pub struct AbandonmentMetrics {
    journeys: IntGauge,
    abandonments: IntCounterVec,
    recoveries: IntCounterVec,
    recovery_delay: Histogram,
    processed: IntCounterVec,
    failed: IntCounterVec,
    dead_letters: IntCounter,
    restore_duration: Histogram,
    restored_records: IntCounter,
    changelog_writes: IntCounter,
    partitions: IntGauge,
    pub(crate) lag: ConsumerLag,
}

impl AbandonmentMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(format!("{PREFIX}{name}"), help);
        let metrics = Self {
            journeys: IntGauge::with_opts(opts(
                "journeys_tracked",
                "Journeys held in state by this instance.",
            ))?,
            abandonments: IntCounterVec::new(
                opts(
                    "abandonments_total",
                    "Abandonments emitted, by kind, stage, value tier and customer type.",
                ),
                &["kind", "stage", "value_tier", "customer"],
            )?,
            recoveries: IntCounterVec::new(
                opts(
                    "recoveries_total",
                    "Abandoned journeys recovered by an order, by kind.",
                ),
                &["kind"],
            )?,
            recovery_delay: Histogram::with_opts(
                HistogramOpts::new(
                    format!("{PREFIX}recovery_delay_seconds"),
                    "Time from abandonment to the recovering order.",
                )
                .buckets(vec![
                    60.0,
                    300.0,
                    900.0,
                    3600.0,
                    4.0 * 3600.0,
                    12.0 * 3600.0,
                    86400.0,
                    3.0 * 86400.0,
                    7.0 * 86400.0,
                    30.0 * 86400.0,
                ]),
            )?,
            processed: IntCounterVec::new(
                opts(
                    "records_processed_total",
                    "Input records processed, by topic family.",
                ),
                &["topic"],
            )?,
            failed: IntCounterVec::new(
                opts(
                    "records_failed_total",
                    "Input records that could not be used, by topic family and reason.",
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
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
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
                "Journey partitions owned by this instance.",
            ))?,
            lag: ConsumerLag::register(PREFIX, registry)?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        registry.register(Box::new(metrics.journeys.clone()))?;
        registry.register(Box::new(metrics.abandonments.clone()))?;
        registry.register(Box::new(metrics.recoveries.clone()))?;
        registry.register(Box::new(metrics.recovery_delay.clone()))?;
        registry.register(Box::new(metrics.processed.clone()))?;
        registry.register(Box::new(metrics.failed.clone()))?;
        registry.register(Box::new(metrics.dead_letters.clone()))?;
        registry.register(Box::new(metrics.restore_duration.clone()))?;
        registry.register(Box::new(metrics.restored_records.clone()))?;
        registry.register(Box::new(metrics.changelog_writes.clone()))?;
        registry.register(Box::new(metrics.partitions.clone()))?;
        // Export these at 0 from the start, so that rate() and increase() (the alerts and the
        // recovery rate) see the first occurrence after a restart.
        for kind in ["checkout", "cart"] {
            metrics.recoveries.with_label_values(&[kind]);
        }
        for topic in ["checkouts", "carts", "orders", "customers", "compliance"] {
            for reason in ["missing_topic", "undecodable", "impossible_value"] {
                metrics.failed.with_label_values(&[topic, reason]);
            }
        }
        Ok(metrics)
    }

    pub fn journeys(&self, count: usize) {
        self.journeys.set(count as i64);
    }

    pub fn partitions(&self, count: usize) {
        self.partitions.set(count as i64);
    }

    pub fn abandoned(&self, kind: &str, stage: &str, value_tier: &str, customer: &str) {
        self.abandonments
            .with_label_values(&[kind, stage, value_tier, customer])
            .inc();
    }

    pub fn recovered(&self, kind: &str, delay_seconds: i64) {
        self.recoveries.with_label_values(&[kind]).inc();
        self.recovery_delay.observe(delay_seconds as f64);
    }

    pub fn processed(&self, topic: &str) {
        self.processed.with_label_values(&[topic]).inc();
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

//! The metrics every stateful consumer loop exports under its service prefix: records applied
//! and unusable, dead letters, state restore and changelog writes, partitions owned, lag, the
//! Kafka client's errors, and the answers to `customers/data_request` (every stage answers them).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::ConsumerLag;

/// Reasons a record cannot be used (bounded label values).
const FAILURE_REASONS: [&str; 4] = [
    "missing_topic",
    "undecodable",
    "impossible_value",
    crate::events::RecordWithoutShop::REASON,
];

/// Why a member was fenced (bounded label values).
const FENCE_REASONS: [&str; 3] = ["stalled", "lost", "undelivered"];

#[derive(Clone)]
pub struct LoopMetrics {
    processed: IntCounterVec,
    failed: IntCounterVec,
    dead_letters: IntCounter,
    restore_duration: Histogram,
    restored_records: IntCounter,
    kept_partitions: IntCounter,
    changelog_writes: IntCounter,
    partitions: IntGauge,
    fenced: IntCounterVec,
    data_requests_answered: IntCounter,
    timer_holds_released: IntCounter,
    /// By shop only ([`LoopMetrics::routing`]).
    routed: Option<IntCounter>,
    pub lag: ConsumerLag,
    /// `<prefix>kafka_errors_total{kind}`: the consumer's librdkafka errors.
    pub kafka_errors: IntCounterVec,
}

impl LoopMetrics {
    /// Registers `<prefix>records_processed_total`, `<prefix>records_failed_total`, ... The
    /// failure series of `families` start at 0, so `rate()` sees the first one after a restart.
    pub fn register(
        prefix: &str,
        registry: &Registry,
        partitions_help: &str,
        families: &[&str],
    ) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(format!("{prefix}{name}"), help);
        let metrics = LoopMetrics {
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
                    format!("{prefix}state_restore_duration_seconds"),
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
            kept_partitions: IntCounter::with_opts(opts(
                "state_kept_partitions_total",
                "Partitions a rebalance revoked and handed straight back whose state was kept \
                 instead of restored (nothing was written to them meanwhile).",
            ))?,
            changelog_writes: IntCounter::with_opts(opts(
                "changelog_records_written_total",
                "Records written to the changelog topic.",
            ))?,
            partitions: IntGauge::with_opts(opts("assigned_partitions", partitions_help))?,
            fenced: IntCounterVec::new(
                opts(
                    "fenced_total",
                    "Times this member stopped writing because it may have lost its partitions \
                     (stalled: the process was frozen; lost: the group session ended; \
                     undelivered: a write was not acknowledged in time), by reason.",
                ),
                &["reason"],
            )?,
            data_requests_answered: IntCounter::with_opts(opts(
                "data_requests_answered_total",
                "Answers to customers/data_request written to the data requests topic (one per \
                 request; abandonment: one per partition it owns).",
            ))?,
            timer_holds_released: IntCounter::with_opts(opts(
                "timer_holds_released_total",
                "Input partitions that held timers back (records left to read) without their \
                 read position moving for 5 s, no longer waited for (e.g. an end the consumer \
                 never reaches).",
            ))?,
            routed: None,
            lag: ConsumerLag::register(prefix, registry)?,
            kafka_errors: crate::client_watch::register_errors(prefix, registry)?,
        };
        aftercart_runtime::metrics_catalog::register(registry, &metrics.processed)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.failed)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.dead_letters)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.restore_duration)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.restored_records)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.kept_partitions)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.changelog_writes)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.partitions)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.fenced)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.data_requests_answered)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.timer_holds_released)?;
        for reason in FENCE_REASONS {
            metrics.fenced.with_label_values(&[reason]);
        }
        for family in families {
            metrics.processed.with_label_values(&[family]);
            for reason in FAILURE_REASONS {
                metrics.failed.with_label_values(&[family, reason]);
            }
        }
        Ok(metrics)
    }

    /// Adds `<prefix>records_routed_total`, for a stage that routes its sources by shop.
    pub fn routing(mut self, prefix: &str, registry: &Registry) -> prometheus::Result<Self> {
        let routed = IntCounter::new(
            format!("{prefix}records_routed_total"),
            "Source records forwarded to the by-shop topic.",
        )?;
        aftercart_runtime::metrics_catalog::register(registry, &routed)?;
        self.routed = Some(routed);
        Ok(self)
    }

    /// `count` source records acknowledged on the by-shop topic.
    pub fn routed(&self, count: usize) {
        if let Some(routed) = &self.routed {
            routed.inc_by(count as u64);
        }
    }

    pub fn partitions(&self, count: usize) {
        self.partitions.set(count as i64);
    }

    pub fn processed(&self, topic: &str) {
        self.processed.with_label_values(&[topic]).inc();
    }

    /// `count` records of `topic` processed: one label lookup for a whole batch.
    pub fn processed_by(&self, topic: &str, count: u64) {
        self.processed.with_label_values(&[topic]).inc_by(count);
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

    /// A partition handed back by a rebalance kept its state (no restore).
    pub fn kept(&self) {
        self.kept_partitions.inc();
    }

    pub fn fenced(&self, reason: &str) {
        self.fenced.with_label_values(&[reason]).inc();
    }

    /// One answer to a data request acknowledged by the broker.
    pub fn data_request_answered(&self) {
        self.data_requests_answered.inc();
    }

    /// An input partition stopped holding timers back: below its end, its position stood still.
    pub fn timer_hold_released(&self) {
        self.timer_holds_released.inc();
    }

    pub fn changelog_written(&self, records: usize) {
        self.changelog_writes.inc_by(records as u64);
    }
}

//! Audiences metrics (`aftercart_audiences_*`) on an injected registry. Label values are bounded:
//! audience and destination names come from the configuration, ops and outcomes from fixed sets.

use std::time::Duration;

use aftercart_delivery::DeliveryMetrics;
use aftercart_kafka::LoopMetrics;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::config::AudiencesConfig;
use crate::platform::Op;

const PREFIX: &str = "aftercart_audiences_";

/// How a batch ended at a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportOutcome {
    Accepted,
    /// Refused for good, or out of retry budget: dead-lettered.
    DeadLettered,
}

impl ExportOutcome {
    fn as_label(self) -> &'static str {
        match self {
            ExportOutcome::Accepted => "accepted",
            ExportOutcome::DeadLettered => "dead_lettered",
        }
    }
}

fn op_label(op: Op) -> &'static str {
    match op {
        Op::Add => "add",
        Op::Remove => "remove",
    }
}

#[derive(Clone)]
pub struct AudiencesMetrics {
    members: IntGaugeVec,
    people: IntGauge,
    exported: IntCounterVec,
    batches: IntCounterVec,
    batch_duration: HistogramVec,
    retries: IntCounterVec,
    member_errors: IntCounterVec,
    export_lag: IntGaugeVec,
    batches_emitted: IntCounter,
    redacted_facts: IntCounter,
    removals_reemitted: IntCounterVec,
    pending_removals: IntGaugeVec,
    pending_removal_age: IntGaugeVec,
    /// HTTP attempts of every destination (`aftercart_audiences_http_*`).
    pub http: DeliveryMetrics,
    /// Records, dead letters, state restore, partitions and lag of the engine.
    pub consumer: LoopMetrics,
}

impl AudiencesMetrics {
    /// Registers every series; those of configured audiences and destinations start at 0.
    pub fn register(registry: &Registry, config: &AudiencesConfig) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(format!("{PREFIX}{name}"), help);
        let metrics = Self {
            members: IntGaugeVec::new(
                opts(
                    "members",
                    "People wanted in each audience (consented, reachable, in the window) on this instance.",
                ),
                &["audience"],
            )?,
            people: IntGauge::with_opts(opts(
                "people_tracked",
                "People held in state by this instance.",
            ))?,
            exported: IntCounterVec::new(
                opts(
                    "records_exported_total",
                    "People in batches sent to a destination, by operation and outcome.",
                ),
                &["destination", "op", "outcome"],
            )?,
            batches: IntCounterVec::new(
                opts(
                    "batches_total",
                    "Batches finished at a destination, by operation and outcome.",
                ),
                &["destination", "op", "outcome"],
            )?,
            batch_duration: HistogramVec::new(
                HistogramOpts::new(
                    format!("{PREFIX}batch_duration_seconds"),
                    "Time to export one batch, retries included.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
                ]),
                &["destination"],
            )?,
            retries: IntCounterVec::new(
                opts(
                    "export_retries_total",
                    "Export attempts that failed and were tried again.",
                ),
                &["destination"],
            )?,
            member_errors: IntCounterVec::new(
                opts(
                    "export_member_errors_total",
                    "Members a destination named as failed or warned about in its answer (Data Manager fieldViolations and fieldWarnings): partial failures, not taken as success.",
                ),
                &["destination"],
            )?,
            export_lag: IntGaugeVec::new(
                opts(
                    "export_lag_records",
                    "Batch records a destination's exporter has yet to send (its consumer lag).",
                ),
                &["destination"],
            )?,
            batches_emitted: IntCounter::with_opts(opts(
                "batches_emitted_total",
                "Batches the engine wrote to the batches topic.",
            ))?,
            redacted_facts: IntCounter::with_opts(opts(
                "redacted_facts_total",
                "Facts kept out because they are about a redacted customer or shop.",
            ))?,
            removals_reemitted: IntCounterVec::new(
                opts(
                    "removals_reemitted_total",
                    "Removals emitted again because their destination had not confirmed them within AFTERCART_AUDIENCES_REMOVAL_REEMIT_AFTER.",
                ),
                &["destination"],
            )?,
            pending_removals: IntGaugeVec::new(
                opts(
                    "pending_removals",
                    "People whose removal a destination has not confirmed yet (it is retried until it does).",
                ),
                &["destination"],
            )?,
            pending_removal_age: IntGaugeVec::new(
                opts(
                    "pending_removal_age_seconds",
                    "How long the oldest unconfirmed removal of a destination has waited (0: none).",
                ),
                &["destination"],
            )?,
            http: DeliveryMetrics::register(registry, "aftercart_audiences")?,
            consumer: LoopMetrics::register(
                PREFIX,
                registry,
                "By-shop partitions owned by this instance.",
                &["abandonments", "orders", "customers", "compliance"],
            )?
            .routing(PREFIX, registry)?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.members)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.people)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.exported)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.batches)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.batch_duration)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.retries)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.member_errors)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.export_lag)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.batches_emitted)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.redacted_facts)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.removals_reemitted)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.pending_removals)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.pending_removal_age)?;
        for audience in &config.rules.audiences {
            metrics.members.with_label_values(&[&audience.name]).set(0);
        }
        for destination in config.destinations.keys() {
            metrics.retries.with_label_values(&[destination]);
            metrics.member_errors.with_label_values(&[destination]);
            metrics.removals_reemitted.with_label_values(&[destination]);
            metrics.export_lag.with_label_values(&[destination]).set(0);
            metrics
                .pending_removals
                .with_label_values(&[destination])
                .set(0);
            metrics
                .pending_removal_age
                .with_label_values(&[destination])
                .set(0);
            metrics.batch_duration.with_label_values(&[destination]);
            for op in [Op::Add, Op::Remove] {
                for outcome in [ExportOutcome::Accepted, ExportOutcome::DeadLettered] {
                    let labels = [destination.as_str(), op_label(op), outcome.as_label()];
                    metrics.exported.with_label_values(&labels);
                    metrics.batches.with_label_values(&labels);
                }
            }
        }
        Ok(metrics)
    }

    /// A batch of `people` finished at `destination` after `attempts` tries.
    pub fn exported(
        &self,
        destination: &str,
        op: Op,
        outcome: ExportOutcome,
        people: usize,
        took: Duration,
    ) {
        let labels = [destination, op_label(op), outcome.as_label()];
        self.exported
            .with_label_values(&labels)
            .inc_by(people as u64);
        self.batches.with_label_values(&labels).inc();
        self.batch_duration
            .with_label_values(&[destination])
            .observe(took.as_secs_f64());
    }

    pub fn members(&self, counts: &std::collections::BTreeMap<String, usize>, people: usize) {
        for (audience, count) in counts {
            self.members
                .with_label_values(&[audience])
                .set(*count as i64);
        }
        self.people.set(people as i64);
    }

    /// The retry counter of one destination, counted as each retry is made.
    pub fn retries_of(&self, destination: &str) -> IntCounter {
        self.retries.with_label_values(&[destination])
    }

    /// Counts members a destination's answer named as failed or warned about.
    pub fn member_errors(&self, destination: &str, count: usize) {
        self.member_errors
            .with_label_values(&[destination])
            .inc_by(count as u64);
    }

    /// The lag gauge of one destination's exporter.
    pub fn export_lag(&self, destination: &str) -> IntGauge {
        self.export_lag.with_label_values(&[destination])
    }

    pub fn emitted(&self) {
        self.batches_emitted.inc();
    }

    pub fn redacted_facts(&self, count: u64) {
        self.redacted_facts.inc_by(count);
    }

    /// `count` unconfirmed removals were emitted again for `destination`.
    pub fn removals_reemitted(&self, destination: &str, count: u64) {
        self.removals_reemitted
            .with_label_values(&[destination])
            .inc_by(count);
    }

    /// A removal of `people` at `destination` waiting for the platform since `waited`
    /// (`None` once it is confirmed).
    pub fn pending_removal(&self, destination: &str, people: usize, waited: Option<Duration>) {
        self.pending_removals
            .with_label_values(&[destination])
            .set(if waited.is_some() { people as i64 } else { 0 });
        self.pending_removal_age
            .with_label_values(&[destination])
            .set(waited.map_or(0, |w| w.as_secs() as i64));
    }
}

//! Spool metrics (`aftercart_ingress_spool_*`): what is waiting, how fast it drains, what the
//! disk costs, and every request the spool could not take.

use std::time::Duration;

use crate::publish::ErrorClass;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

const PREFIX: &str = "aftercart_ingress_spool_";

/// fsync latency buckets: local SSDs answer in well under a millisecond, network disks in
/// several; anything near a second eats the response budget.
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Why a request that needed the spool got a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `AFTERCART_INGRESS_SPOOL_MAX_BYTES` reached.
    Full,
    /// The disk refused a write or an fsync, or the spool could not be opened.
    DiskError,
    /// The spool is off (`AFTERCART_INGRESS_SPOOL_DIR=off`).
    Disabled,
    /// A group commit has hung for more than 2 s (a volume that hangs rather than fails).
    Stalled,
}

impl Rejection {
    pub fn as_label(self) -> &'static str {
        match self {
            Rejection::Full => "full",
            Rejection::DiskError => "disk_error",
            Rejection::Disabled => "disabled",
            Rejection::Stalled => "stalled",
        }
    }
}

#[derive(Clone)]
pub struct SpoolMetrics {
    pending_events: IntGauge,
    bytes: IntGauge,
    max_bytes: IntGauge,
    appended: IntCounter,
    drained: IntCounter,
    oldest_age: IntGauge,
    fsync: Histogram,
    rejected: IntCounterVec,
    errors: IntCounterVec,
    corrupt_bytes: IntCounter,
    damaged_events: IntCounter,
    set_aside: IntCounter,
    held_aside: IntGauge,
    publish_errors: IntCounterVec,
    bypassed: IntCounterVec,
    available: IntGauge,
    healthy: IntGauge,
}

impl SpoolMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(format!("{PREFIX}{name}"), help))
        };
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(format!("{PREFIX}{name}"), help))
        };
        let metrics = Self {
            pending_events: gauge("pending_events", "Events in the spool that Kafka has not acknowledged yet.")?,
            bytes: gauge("bytes", "Bytes of spooled events not yet in Kafka.")?,
            max_bytes: gauge("max_bytes", "The spool's size limit (AFTERCART_INGRESS_SPOOL_MAX_BYTES); 0 when the spool is off.")?,
            appended: counter("appended_total", "Events made durable in the spool (answered 200 after the fsync).")?,
            drained: counter("drained_total", "Spooled events published to Kafka and removed from the spool.")?,
            oldest_age: gauge("oldest_age_seconds", "Age of the oldest event still in the spool; 0 when empty.")?,
            fsync: Histogram::with_opts(
                HistogramOpts::new(format!("{PREFIX}fsync_duration_seconds"), "Time to write and fsync one group commit.")
                    .buckets(FSYNC_BUCKETS.to_vec()),
            )?,
            rejected: IntCounterVec::new(
                Opts::new(format!("{PREFIX}rejected_total"), "Requests answered 503 because the spool could not take them, by reason (full, disk_error, disabled)."),
                &["reason"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(format!("{PREFIX}errors_total"), "Spool disk operations that failed, by operation (open, write, fsync, read, remove)."),
                &["op"],
            )?,
            corrupt_bytes: counter("corrupt_bytes_total", "Bytes of torn or damaged spool skipped, when the spool was opened or while draining (a copy of a damaged segment is kept in <dir>/damaged/).")?,
            damaged_events: counter("damaged_events_total", "Acknowledged events destroyed by disk damage found while draining (the intact frames after the damage are still drained).")?,
            set_aside: counter("set_aside_total", "Spooled events Kafka refused for their size on their topic and on the quarantine topic, set aside in <dir>/refused/ so the events behind them drain.")?,
            held_aside: gauge("held_aside_events", "Events waiting in the spool's refused/ directory (counted at start, after each set-aside and every minute): publish them with `aftercart spool drain --ingress-spool-dir <dir>/refused` once the topics take them.")?,
            publish_errors: IntCounterVec::new(
                Opts::new(format!("{PREFIX}publish_errors_total"), "Spooled events Kafka refused, by class (retriable: retried; authorization: kept in the spool until an operator fixes credentials or ACLs; permanent: sent to the quarantine topic, or set aside when that refuses it for its size too)."),
                &["class"],
            )?,
            bypassed: IntCounterVec::new(
                Opts::new(format!("{PREFIX}bypassed_total"), "Requests the spool could not take (full, disk_error, stalled) that were published straight to Kafka instead: answered 200, possibly ahead of older events of the same key still in the spool."),
                &["reason"],
            )?,
            healthy: gauge("healthy", "1 when the spool can take events (its disk works, it has room, and no fsync has hung for more than 2 s); a replica is ready when this or aftercart_ingress_kafka_healthy is 1.")?,
            available: gauge("available", "1 when the spool can take events; 0 when it is off or failing on disk errors.")?,
        };
        aftercart_runtime::metrics_catalog::register(registry, &metrics.pending_events)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.bytes)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.max_bytes)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.appended)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.drained)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.oldest_age)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.fsync)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.rejected)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.errors)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.corrupt_bytes)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.damaged_events)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.set_aside)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.held_aside)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.publish_errors)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.available)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.bypassed)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.healthy)?;
        for reason in [Rejection::Full, Rejection::DiskError, Rejection::Disabled] {
            metrics.rejected.with_label_values(&[reason.as_label()]);
        }
        for reason in [Rejection::Full, Rejection::DiskError, Rejection::Stalled] {
            metrics.bypassed.with_label_values(&[reason.as_label()]);
        }
        for op in ["open", "write", "fsync", "read", "remove"] {
            metrics.errors.with_label_values(&[op]);
        }
        for class in ErrorClass::ALL {
            metrics
                .publish_errors
                .with_label_values(&[class.as_label()]);
        }
        Ok(metrics)
    }

    /// Metrics that are registered but never updated (tools without a registry).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejected.with_label_values(&[why.as_label()]).inc();
    }

    pub fn error(&self, op: &'static str) {
        self.errors.with_label_values(&[op]).inc();
    }

    pub fn appended(&self, events: u64, fsync: Duration) {
        self.appended.inc_by(events);
        self.fsync.observe(fsync.as_secs_f64());
    }

    pub fn drained(&self, events: u64) {
        self.drained.inc_by(events);
    }

    pub fn corrupt(&self, bytes: u64) {
        self.corrupt_bytes.inc_by(bytes);
    }

    pub fn damaged_events(&self, events: u64) {
        self.damaged_events.inc_by(events);
    }

    pub fn set_aside(&self) {
        self.set_aside.inc();
    }

    pub fn set_held_aside(&self, events: u64) {
        self.held_aside.set(events as i64);
    }

    pub fn publish_error(&self, class: ErrorClass) {
        self.publish_errors
            .with_label_values(&[class.as_label()])
            .inc();
    }

    pub fn bypassed(&self, why: Rejection) {
        self.bypassed.with_label_values(&[why.as_label()]).inc();
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }

    pub fn set_available(&self, available: bool) {
        self.available.set(i64::from(available));
    }

    pub fn set_limit(&self, max_bytes: u64) {
        self.max_bytes.set(max_bytes as i64);
    }

    pub fn set_backlog(&self, events: u64, bytes: u64, oldest_age: Duration) {
        self.pending_events.set(events as i64);
        self.bytes.set(bytes as i64);
        self.oldest_age.set(oldest_age.as_secs() as i64);
    }
}

//! Abandonment metrics (`aftercart_abandonment_*`) on an injected registry; bounded labels only.

use crate::domain::segments::{CustomerKind, Stage, ValueTier};
use aftercart_kafka::LoopMetrics;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

const PREFIX: &str = "aftercart_abandonment_";

#[derive(Clone)]
pub struct AbandonmentMetrics {
    journeys: IntGauge,
    abandonments: IntCounterVec,
    recoveries: IntCounterVec,
    recovery_delay: Histogram,
    /// Records, dead letters, state restore, partitions and lag.
    pub consumer: LoopMetrics,
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
            consumer: LoopMetrics::register(
                PREFIX,
                registry,
                "Journey partitions owned by this instance.",
                &["checkouts", "carts", "orders", "customers", "compliance"],
            )?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.journeys)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.abandonments)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.recoveries)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.recovery_delay)?;
        // Export these at 0 from the start, so that rate() and increase() (the alerts and the
        // recovery rate) see the first occurrence after a restart.
        for kind in ["checkout", "cart"] {
            metrics.recoveries.with_label_values(&[kind]);
        }
        let stages = [
            ("cart", &[Stage::Cart][..]),
            ("checkout", &Stage::CHECKOUT[..]),
        ];
        for (kind, stages) in stages {
            for stage in stages {
                for tier in ValueTier::ALL {
                    for customer in CustomerKind::ALL {
                        let labels = [kind, stage.as_str(), tier.as_str(), customer.as_str()];
                        metrics.abandonments.with_label_values(&labels);
                    }
                }
            }
        }
        Ok(metrics)
    }

    pub fn journeys(&self, count: usize) {
        self.journeys.set(count as i64);
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
}

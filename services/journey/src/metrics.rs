//! Journey metrics (`aftercart_journey_*`) on an injected registry; bounded labels only.

use aftercart_kafka::LoopMetrics;
use aftercart_runtime::currency_label::CurrencyLabels;
use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::domain::engine::Counted;
use crate::domain::input::Stop;
use crate::domain::kpis::Fact;
use crate::domain::touchpoint::Kind;

const PREFIX: &str = "aftercart_journey_";

/// Why a touchpoint was not sent (the engine's fixed set).
pub const SKIP_REASONS: [&str; 4] = ["no_contact", "no_consent", "stopped", "test_order"];

/// The input families of the stage (metric labels).
pub const FAMILIES: [&str; 8] = [
    "checkouts",
    "orders",
    "fulfillments",
    "customers",
    "compliance",
    "abandonments",
    "referral_invites",
    "referral_rewards",
];

#[derive(Clone)]
pub struct JourneyMetrics {
    touchpoints: IntCounterVec,
    skipped: IntCounterVec,
    stopped: IntCounterVec,
    dropped: IntCounterVec,
    order_to_delivery: Histogram,
    orders: IntGauge,
    customers: IntGauge,
    timers: IntGauge,
    reports: IntCounter,
    facts: IntCounterVec,
    revenue: CounterVec,
    /// Currencies seen, capped (past 32, `other`).
    currencies: CurrencyLabels,
    /// Records, dead letters, state restore, partitions and lag.
    pub consumer: LoopMetrics,
    /// The subscription watchdog's.
    pub watchdog: crate::watchdog::WatchdogMetrics,
}

impl JourneyMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(format!("{PREFIX}{name}"), help);
        let metrics = Self {
            touchpoints: IntCounterVec::new(
                opts(
                    "touchpoints_total",
                    "Touchpoints emitted to aftercart.touchpoints, by type.",
                ),
                &["type"],
            )?,
            skipped: IntCounterVec::new(
                opts(
                    "touchpoints_skipped_total",
                    "Touchpoints not sent, by type and reason (no_contact, no_consent, stopped, test_order).",
                ),
                &["type", "reason"],
            )?,
            dropped: IntCounterVec::new(
                opts(
                    "facts_dropped_total",
                    "Facts dropped unapplied, by reason (redacted: about a customer or shop whose redaction is remembered).",
                ),
                &["reason"],
            )?,
            stopped: IntCounterVec::new(
                opts(
                    "orders_stopped_total",
                    "Orders whose timed touchpoints stopped, by reason (cancelled, refunded, deleted).",
                ),
                &["reason"],
            )?,
            order_to_delivery: Histogram::with_opts(
                HistogramOpts::new(
                    format!("{PREFIX}order_to_delivery_seconds"),
                    "Time from an order's creation to its first delivered shipment.",
                )
                .buckets(vec![
                    3_600.0, 21_600.0, 43_200.0, 86_400.0, 172_800.0, 259_200.0, 432_000.0,
                    604_800.0, 1_209_600.0,
                ]),
            )?,
            orders: IntGauge::with_opts(opts(
                "orders_tracked",
                "Orders held in state by this instance.",
            ))?,
            customers: IntGauge::with_opts(opts(
                "customers_tracked",
                "Customers' consent statements held in state by this instance.",
            ))?,
            timers: IntGauge::with_opts(opts(
                "timers_waiting",
                "Timed touchpoints (review requests, replenishment reminders) waiting on this instance.",
            ))?,
            reports: IntCounter::with_opts(opts(
                "kpi_reports_total",
                "Daily KPI records written to aftercart.kpis (one per shop and day).",
            ))?,
            facts: IntCounterVec::new(
                opts(
                    "kpi_facts_total",
                    "Business facts of the daily KPI record, by fact (checkouts started, abandoned and recovered, orders, repeat orders, deliveries, invites, referred orders, rewards granted and voided). No shop label.",
                ),
                &["fact"],
            )?,
            revenue: CounterVec::new(
                opts(
                    "revenue_total",
                    "Revenue of orders, recovered checkouts and referred orders, by kind and currency (ISO code; past 32 currencies, other). No shop label.",
                ),
                &["kind", "currency"],
            )?,
            currencies: CurrencyLabels::default(),
            consumer: LoopMetrics::register(
                PREFIX,
                registry,
                "By-shop partitions owned by this instance.",
                &FAMILIES,
            )?
            .routing(PREFIX, registry)?,
            watchdog: crate::watchdog::WatchdogMetrics::register(registry)?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.touchpoints)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.skipped)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.stopped)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.dropped)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.order_to_delivery)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.orders)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.customers)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.timers)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.reports)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.facts)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.revenue)?;
        for fact in Fact::LABELS {
            metrics.facts.with_label_values(&[fact]);
        }
        for kind in Kind::ALL {
            metrics.touchpoints.with_label_values(&[kind.as_str()]);
            for reason in SKIP_REASONS {
                metrics.skipped.with_label_values(&[kind.as_str(), reason]);
            }
        }
        metrics.dropped.with_label_values(&["redacted"]);
        for stop in [Stop::Cancelled, Stop::Refunded, Stop::Deleted] {
            metrics.stopped.with_label_values(&[stop.as_str()]);
        }
        Ok(metrics)
    }

    pub fn counted(&self, counted: Counted) {
        match counted {
            Counted::Skipped(kind, reason) => self
                .skipped
                .with_label_values(&[kind.as_str(), reason])
                .inc(),
            Counted::Stopped(stop) => self.stopped.with_label_values(&[stop.as_str()]).inc(),
            Counted::DeliveredAfter { seconds } => self.order_to_delivery.observe(seconds),
            Counted::Redacted => self.dropped.with_label_values(&["redacted"]).inc(),
            Counted::Kpi(fact) => {
                let (labels, revenue) = fact.labels();
                for label in labels {
                    self.facts.with_label_values(&[label]).inc();
                }
                if let Some((kind, (amount, currency))) = revenue {
                    let currency = self.currencies.label(currency);
                    self.revenue
                        .with_label_values(&[kind, &currency])
                        .inc_by(amount.to_f64().max(0.0));
                }
            }
        }
    }

    pub fn emitted(&self, kind: Kind) {
        self.touchpoints.with_label_values(&[kind.as_str()]).inc();
    }

    /// State sizes: orders, customers, timers.
    pub fn state(&self, (orders, customers, timers): (usize, usize, usize)) {
        self.orders.set(orders as i64);
        self.customers.set(customers as i64);
        self.timers.set(timers as i64);
    }

    pub fn reported(&self) {
        self.reports.inc();
    }
}

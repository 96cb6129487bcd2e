//! Ingress metrics (`aftercart_ingress_*`), registered on an injected registry. Every label
//! value comes from a fixed set: never a shop, customer, token or webhook id.

use std::time::Duration;

use aftercart_kafka::ClientStats;

use crate::spool::SpoolMetrics;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

const PREFIX: &str = "aftercart_ingress_";

/// Latency buckets around the 5 s Shopify budget, fine-grained in the millisecond range.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0,
];

#[derive(Clone)]
pub struct IngressMetrics {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    hmac_failures: IntCounterVec,
    duplicates: IntCounter,
    quarantined: IntCounterVec,
    publish_duration: Histogram,
    publish_errors: IntCounterVec,
    in_flight: IntGauge,
    dedupe_ids: IntGauge,
    connections_cut: IntCounterVec,
    /// 1 while Kafka takes records (see `readiness::KafkaHealth`).
    pub kafka_healthy: IntGauge,
    body_refusals: IntCounterVec,
    unavailable: IntCounterVec,
    body_held_bytes: IntGauge,
    body_budget_bytes: IntGauge,
    pub kafka: ClientStats,
    pub spool: SpoolMetrics,
}

impl IngressMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new(format!("{PREFIX}requests_total"), "Webhook requests answered, by topic family and HTTP status."),
                &["family", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(format!("{PREFIX}request_duration_seconds"), "Time from request arrival to the answer, by HTTP status.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["status"],
            )?,
            hmac_failures: IntCounterVec::new(
                Opts::new(format!("{PREFIX}hmac_failures_total"), "Requests refused with 401, by reason (missing, malformed, mismatch)."),
                &["reason"],
            )?,
            duplicates: IntCounter::with_opts(Opts::new(
                format!("{PREFIX}duplicates_total"),
                "Deliveries whose webhook id was already published within the dedupe window.",
            ))?,
            quarantined: IntCounterVec::new(
                Opts::new(format!("{PREFIX}quarantined_total"), "Authentic deliveries sent to the quarantine topic, by reason."),
                &["reason"],
            )?,
            publish_duration: Histogram::with_opts(
                HistogramOpts::new(format!("{PREFIX}publish_duration_seconds"), "Time from handing a record to the producer to its delivery report.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            publish_errors: IntCounterVec::new(
                Opts::new(format!("{PREFIX}publish_errors_total"), "Records Kafka did not acknowledge in time, by reason (queue_full, timeout, kafka, authorization: the cluster refuses the ingress's credentials or ACLs, an operator must act)."),
                &["reason"],
            )?,
            in_flight: IntGauge::with_opts(Opts::new(format!("{PREFIX}in_flight_requests"), "Webhook requests being handled."))?,
            dedupe_ids: IntGauge::with_opts(Opts::new(
                format!("{PREFIX}dedupe_window_ids"),
                "Webhook ids remembered in this replica's dedupe window.",
            ))?,
            connections_cut: IntCounterVec::new(
                Opts::new(format!("{PREFIX}connections_cut_total"), "Connections the server ended itself, by reason (idle: nothing sent within the header timeout; header_timeout; header_too_large: answered 431; http2_disabled: an HTTP/2 preface while AFTERCART_INGRESS_HTTP2 is off, answered 400; http2_handshake: no HTTP/2 request within the header timeout; http2_idle: no HTTP/2 request in progress for AFTERCART_INGRESS_HTTP2_IDLE_TIMEOUT; http2_keep_alive: no answer to a PING; linger_limit: still sending when the lingering close gave up; write_stall: an answer not taken by the client for 10 s)."),
                &["reason"],
            )?,
            kafka_healthy: IntGauge::with_opts(Opts::new(format!("{PREFIX}kafka_healthy"), "1 when the topics are ready and Kafka took the latest record (or answered a metadata probe); 0 otherwise. /readyz is ready when this or aftercart_ingress_spool_healthy is 1."))?,
            body_refusals: IntCounterVec::new(
                Opts::new(format!("{PREFIX}body_refusals_total"), "Request bodies refused before their signature was checked, by reason (budget: 503, the body budget is held by other requests; too_large: 413; timeout: 408; unreadable: 400)."),
                &["reason"],
            )?,
            unavailable: IntCounterVec::new(
                Opts::new(format!("{PREFIX}unavailable_total"), "Webhook requests answered 503, by reason (kafka_connecting: no answer from Kafka since the start and no spool; arrived_late: the body finished after the publish deadline; same_delivery_in_flight: a retry of a delivery still being published; no_spool: Kafka did not take it and the spool is off or failed; spool_refused: the spool could not take it, see spool_rejected_total, nor could Kafka; spool_fsync_timeout: the spool's fsync did not finish in time; kafka_refused: Kafka refused the record and its quarantine copy; internal: a bug, logged; body_budget: the body budget is held). Their sum is requests_total's 503s."),
                &["reason"],
            )?,
            body_held_bytes: IntGauge::with_opts(Opts::new(
                format!("{PREFIX}body_in_flight_bytes"),
                "Bytes of the body budget held by request bodies in flight.",
            ))?,
            body_budget_bytes: IntGauge::with_opts(Opts::new(
                format!("{PREFIX}body_budget_bytes"),
                "AFTERCART_INGRESS_BODY_BUDGET_BYTES: most bytes request bodies in flight may hold.",
            ))?,
            kafka: ClientStats::register(PREFIX, registry)?,
            spool: SpoolMetrics::register(registry)?,
        };
        aftercart_runtime::build_info::register(PREFIX, registry)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.requests)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.request_duration)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.hmac_failures)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.duplicates)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.quarantined)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.publish_duration)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.publish_errors)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.in_flight)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.dedupe_ids)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.connections_cut)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.kafka_healthy)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.body_refusals)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.unavailable)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.body_held_bytes)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.body_budget_bytes)?;
        // Export every error reason at 0 from the start, so that rate() and increase() (the
        // alerts) see the first occurrence after a restart.
        for reason in ["missing", "malformed", "mismatch"] {
            metrics.hmac_failures.with_label_values(&[reason]);
        }
        for reason in aftercart_shopify::PayloadError::ALL {
            metrics.quarantined.with_label_values(&[reason.as_label()]);
        }
        metrics
            .quarantined
            .with_label_values(&[crate::http::webhook::KAFKA_REFUSED]);
        for reason in ["queue_full", "timeout", "kafka", "authorization"] {
            metrics.publish_errors.with_label_values(&[reason]);
        }
        for reason in CONNECTION_CUT_REASONS {
            metrics.connections_cut.with_label_values(&[reason]);
        }
        for reason in BODY_REFUSAL_REASONS {
            metrics.body_refusals.with_label_values(&[reason]);
        }
        for reason in crate::http::unavailable::UNAVAILABLE_REASONS {
            metrics.unavailable.with_label_values(&[reason]);
        }
        // Requests refused before their topic is known count under the `unknown` family.
        let families = aftercart_shopify::Family::ALL
            .map(|family| family.as_str())
            .into_iter()
            .chain([crate::http::webhook::UNKNOWN_FAMILY]);
        for family in families {
            for status in STATUS_LABELS {
                metrics.requests.with_label_values(&[family, status]);
            }
        }
        for status in STATUS_LABELS {
            metrics.request_duration.with_label_values(&[status]);
        }
        Ok(metrics)
    }

    /// One answered request.
    pub fn answered(&self, family: &str, status: u16, elapsed: Duration) {
        let status = status_label(status);
        self.requests.with_label_values(&[family, status]).inc();
        self.request_duration
            .with_label_values(&[status])
            .observe(elapsed.as_secs_f64());
    }

    pub fn hmac_failure(&self, reason: &str) {
        self.hmac_failures.with_label_values(&[reason]).inc();
    }

    pub fn duplicate(&self) {
        self.duplicates.inc();
    }

    pub fn quarantined(&self, reason: &str) {
        self.quarantined.with_label_values(&[reason]).inc();
    }

    pub fn published(&self, elapsed: Duration) {
        self.publish_duration.observe(elapsed.as_secs_f64());
    }

    pub fn publish_error(&self, reason: &str) {
        self.publish_errors.with_label_values(&[reason]).inc();
    }

    /// A connection the server ended itself, before the handler answered anything on it.
    pub fn connection_cut(&self, reason: &'static str) {
        self.connections_cut.with_label_values(&[reason]).inc();
    }

    /// A webhook answered 503, by its [`crate::http::Reply::unavailable_reason`].
    pub fn unavailable(&self, reason: &'static str) {
        self.unavailable.with_label_values(&[reason]).inc();
    }

    /// A request body refused before its signature was checked.
    pub fn body_refused(&self, reason: &'static str) {
        self.body_refusals.with_label_values(&[reason]).inc();
    }

    pub fn body_bytes_held(&self, bytes: usize) {
        self.body_held_bytes.set(bytes as i64);
    }

    pub fn body_budget(&self, bytes: usize) {
        self.body_budget_bytes.set(bytes as i64);
    }

    pub fn dedupe_size(&self, ids: usize) {
        self.dedupe_ids.set(ids as i64);
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn in_flight(&self) -> InFlightGuard {
        self.in_flight.inc();
        InFlightGuard(self.in_flight.clone())
    }
}

pub struct InFlightGuard(IntGauge);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why the server ends a connection on its own (`connections_cut_total{reason}`).
pub const CONNECTION_CUT_REASONS: [&str; 9] = [
    "idle",
    "header_timeout",
    "header_too_large",
    "http2_disabled",
    "http2_handshake",
    "http2_idle",
    "http2_keep_alive",
    "linger_limit",
    "write_stall",
];

/// Why a body is refused before its signature is checked (`body_refusals_total{reason}`).
pub const BODY_REFUSAL_REASONS: [&str; 4] = ["budget", "too_large", "timeout", "unreadable"];

/// Every value of the `status` label (what [`status_label`] returns).
const STATUS_LABELS: [&str; 9] = [
    "200", "400", "401", "404", "405", "408", "413", "503", "other",
];

/// Status codes as static labels (the ingress answers from a fixed set).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        503 => "503",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests a refusal answers before the topic is known (401 bad signature, 404, 405,
    /// 408, 413, 503) are counted under the `unknown` family: those series start at zero too,
    /// so `rate()` sees their first increment and alerts see 0, not absence.
    #[test]
    fn requests_refused_before_their_topic_is_known_start_at_zero() {
        let registry = Registry::new();
        IngressMetrics::register(&registry).expect("registers");
        let families = registry.gather();
        let requests = families
            .iter()
            .find(|f| f.name() == "aftercart_ingress_requests_total")
            .expect("the requests counter is served");
        for status in STATUS_LABELS {
            let found = requests.get_metric().iter().any(|sample| {
                let label = |name: &str| {
                    sample
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                label("family").as_deref() == Some(crate::http::webhook::UNKNOWN_FAMILY)
                    && label("status").as_deref() == Some(status)
                    && sample.get_counter().get_value() == 0.0
            });
            assert!(found, "family=unknown, status={status} is absent at start");
        }
    }
}

//! Delivery metrics (`<prefix>_http_*`) on an injected registry, named after the embedding
//! service. Label values come from fixed sets: never a URL, an event id or a response body.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Request latency buckets, from a fast local receiver to a request timing out.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What became of one HTTP attempt (or, for `permanent` and `exhausted`, of one record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Delivered,
    /// A retryable failure (408, 425, 429, 5xx, timeout, connection error); another try follows.
    Retry,
    /// A permanent rejection (other 3xx/4xx): the record is dead-lettered.
    Permanent,
    /// A retryable failure with no retry budget left: the record is dead-lettered.
    Exhausted,
}

impl AttemptOutcome {
    pub fn as_label(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::Exhausted => "exhausted",
        }
    }
}

#[derive(Clone)]
pub struct DeliveryMetrics {
    deliveries: IntCounterVec,
    request_duration: Histogram,
    dead_lettered: IntCounter,
    in_retry: IntGauge,
}

impl DeliveryMetrics {
    /// Registers `<prefix>_http_deliveries_total`, `<prefix>_http_request_duration_seconds`,
    /// `<prefix>_http_dead_lettered_total` and `<prefix>_http_in_retry`; `prefix` is the
    /// embedding service's, e.g. `aftercart_referrals`.
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let name = |noun: &str| format!("{}_http_{noun}", prefix.trim_end_matches('_'));
        let metrics = Self {
            deliveries: IntCounterVec::new(
                Opts::new(
                    name("deliveries_total"),
                    "HTTP delivery attempts by outcome: delivered, retry (another try follows), \
                     permanent (rejected, dead-lettered), exhausted (out of retries, dead-lettered).",
                ),
                &["outcome"],
            )?,
            request_duration: Histogram::with_opts(
                HistogramOpts::new(
                    name("request_duration_seconds"),
                    "Time of one HTTP attempt, from sending the request to reading the answer.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            dead_lettered: IntCounter::with_opts(Opts::new(
                name("dead_lettered_total"),
                "Records written to the dead-letter topic after a permanent rejection or \
                 exhausted retries.",
            ))?,
            in_retry: IntGauge::with_opts(Opts::new(
                name("in_retry"),
                "Records being retried right now; above 0 for long means the receiver is failing \
                 and delivery is held back.",
            ))?,
        };
        aftercart_runtime::metrics_catalog::register(registry, &metrics.deliveries)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.request_duration)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.dead_lettered)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.in_retry)?;
        // Every outcome exists from the start, so rates and alerts see zeros, not gaps.
        for outcome in [
            AttemptOutcome::Delivered,
            AttemptOutcome::Retry,
            AttemptOutcome::Permanent,
            AttemptOutcome::Exhausted,
        ] {
            metrics.deliveries.with_label_values(&[outcome.as_label()]);
        }
        Ok(metrics)
    }

    pub fn attempt(&self, outcome: AttemptOutcome, elapsed: Duration) {
        self.deliveries
            .with_label_values(&[outcome.as_label()])
            .inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    /// Counts a record as being retried until the returned guard drops.
    pub fn retrying(&self) -> RetryGuard {
        self.in_retry.inc();
        RetryGuard(self.in_retry.clone())
    }
}

/// Decrements the in-retry gauge when dropped, whichever way the retrying ends.
pub struct RetryGuard(IntGauge);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_embedding_services_prefix() {
        let registry = Registry::new();
        let metrics = DeliveryMetrics::register(&registry, "aftercart_referrals").unwrap();
        metrics.attempt(AttemptOutcome::Retry, Duration::from_millis(3));
        let guard = metrics.retrying();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"aftercart_referrals_http_deliveries_total".to_string()));
        assert!(names.contains(&"aftercart_referrals_http_in_retry".to_string()));
        assert_eq!(metrics.in_retry.get(), 1);
        drop(guard);
        assert_eq!(metrics.in_retry.get(), 0);
    }

    #[test]
    fn two_services_in_one_process_do_not_collide() {
        let registry = Registry::new();
        DeliveryMetrics::register(&registry, "aftercart_referrals").unwrap();
        DeliveryMetrics::register(&registry, "aftercart_audiences_").unwrap();
        assert!(DeliveryMetrics::register(&registry, "aftercart_referrals").is_err());
    }
}

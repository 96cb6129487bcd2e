//! Whether this replica can make a webhook safe, for `/readyz`: Kafka is healthy, or the spool
//! is. A replica whose spool works is ready during a Kafka outage (if every pod restarts then,
//! Shopify must still find one); a sick spool takes a replica out only when Kafka is down too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aftercart_kafka::StatsContext;
use aftercart_runtime::health::Readiness;
use prometheus::IntGauge;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;

use crate::spool::{unix_ms, Spool};

/// How often readiness is recomputed.
const TICK: Duration = Duration::from_millis(250);
/// How often an unhealthy Kafka is asked for metadata (it may be back while nothing publishes).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Kafka as the ingress last saw it: healthy once the topics are prepared, as long as no
/// failure came after the latest success, or that success is recent (a retried record failing
/// just after Kafka came back must not hide that it is back).
pub struct KafkaHealth {
    /// The topics exist (set once by `prepare_topics`).
    pub prepared: Readiness,
    /// Unix milliseconds of the latest success and failure (direct, drained, or a metadata
    /// probe); 0 for never.
    last_ok: AtomicU64,
    last_failed: AtomicU64,
}

/// A success this recent counts whatever failed since.
const RECENT: Duration = Duration::from_secs(5);

impl KafkaHealth {
    pub fn new(prepared: Readiness) -> Arc<KafkaHealth> {
        Arc::new(KafkaHealth {
            prepared,
            last_ok: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
        })
    }

    pub fn succeeded(&self) {
        self.last_ok.fetch_max(unix_ms(), Ordering::AcqRel);
    }

    pub fn failed(&self) {
        self.last_failed.fetch_max(unix_ms(), Ordering::AcqRel);
    }

    pub fn is_healthy(&self) -> bool {
        let (ok, failed) = (
            self.last_ok.load(Ordering::Acquire),
            self.last_failed.load(Ordering::Acquire),
        );
        self.prepared.is_ready()
            && (failed <= ok || unix_ms().saturating_sub(ok) < RECENT.as_millis() as u64)
    }

    /// Whether Kafka failed since its latest success, however recent: time to probe it.
    fn failing(&self) -> bool {
        self.last_failed.load(Ordering::Acquire) > self.last_ok.load(Ordering::Acquire)
    }
}

/// Keeps `ready` (the replica's `/readyz` component) equal to "Kafka healthy or spool healthy"
/// until `stop`, probing an unhealthy Kafka with a metadata request off the runtime.
pub async fn keep_ready(
    ready: Readiness,
    kafka: Arc<KafkaHealth>,
    spool: Option<Spool>,
    producer: FutureProducer<StatsContext>,
    kafka_gauge: IntGauge,
    stop: CancellationToken,
) {
    let mut last_probe: Option<Instant> = None;
    loop {
        let probe_due = last_probe.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if kafka.prepared.is_ready() && kafka.failing() && probe_due {
            last_probe = Some(Instant::now());
            let client = producer.clone();
            let answered = tokio::task::spawn_blocking(move || {
                client
                    .client()
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok_and(|metadata| !metadata.brokers().is_empty())
            })
            .await
            .unwrap_or(false);
            if answered {
                kafka.succeeded();
            }
        }
        let kafka_ok = kafka.is_healthy();
        kafka_gauge.set(i64::from(kafka_ok));
        let spool_ok = spool.as_ref().is_some_and(Spool::is_healthy);
        if let Some(spool) = &spool {
            spool.metrics().set_healthy(spool_ok);
        }
        ready.set_ready(kafka_ok || spool_ok);
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_is_healthy_when_prepared_and_no_failure_outweighs_the_latest_success() {
        let prepared = Readiness::detached();
        let kafka = KafkaHealth::new(prepared.clone());
        assert!(!kafka.is_healthy(), "not before the topics are prepared");
        prepared.set_ready(true);
        assert!(kafka.is_healthy());
        kafka.failed();
        assert!(!kafka.is_healthy(), "a failure and no success yet");
        kafka.succeeded();
        assert!(kafka.is_healthy());
        kafka.failed();
        assert!(
            kafka.is_healthy(),
            "a recent success outweighs a later failure"
        );
        kafka.last_ok.store(unix_ms() - 10_000, Ordering::Release);
        assert!(!kafka.is_healthy(), "an old success does not");
    }
}

//! librdkafka client statistics (queue depth, broker round trips) exported as Prometheus gauges,
//! and the client's global errors (see [`crate::client_watch`]).

use aftercart_runtime::Health;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::ProducerContext;
use rdkafka::statistics::Statistics;

use crate::client_watch::ClientWatch;

/// Gauges fed by librdkafka's periodic statistics (`statistics.interval.ms`).
/// Broker labels are `host:port/id` of the cluster's brokers: a small, bounded set.
#[derive(Clone)]
pub struct ClientStats {
    queue_messages: IntGauge,
    queue_bytes: IntGauge,
    broker_up: IntGaugeVec,
    broker_rtt_avg: GaugeVec,
    broker_rtt_p99: GaugeVec,
    broker_outbuf: IntGaugeVec,
    errors: IntCounterVec,
}

impl ClientStats {
    /// Registers the gauges as `<prefix>kafka_*`, e.g. prefix `aftercart_ingress_`.
    pub fn register(prefix: &str, registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(format!("{prefix}{name}"), help))
        };
        let stats = Self {
            queue_messages: gauge(
                "kafka_queue_messages",
                "Messages in the librdkafka producer queue, waiting for a delivery report.",
            )?,
            queue_bytes: gauge(
                "kafka_queue_bytes",
                "Bytes of messages in the librdkafka producer queue.",
            )?,
            broker_up: IntGaugeVec::new(
                Opts::new(
                    format!("{prefix}kafka_broker_up"),
                    "1 when the connection to the broker is up.",
                ),
                &["broker"],
            )?,
            broker_rtt_avg: GaugeVec::new(
                Opts::new(
                    format!("{prefix}kafka_broker_rtt_avg_seconds"),
                    "Mean broker request round trip over the last statistics window.",
                ),
                &["broker"],
            )?,
            broker_rtt_p99: GaugeVec::new(
                Opts::new(
                    format!("{prefix}kafka_broker_rtt_p99_seconds"),
                    "99th percentile broker request round trip over the last statistics window.",
                ),
                &["broker"],
            )?,
            broker_outbuf: IntGaugeVec::new(
                Opts::new(
                    format!("{prefix}kafka_broker_requests_waiting"),
                    "Requests queued or in flight to the broker.",
                ),
                &["broker"],
            )?,
            errors: crate::client_watch::register_errors(prefix, registry)?,
        };
        aftercart_runtime::metrics_catalog::register(registry, &stats.queue_messages)?;
        aftercart_runtime::metrics_catalog::register(registry, &stats.queue_bytes)?;
        aftercart_runtime::metrics_catalog::register(registry, &stats.broker_up)?;
        aftercart_runtime::metrics_catalog::register(registry, &stats.broker_rtt_avg)?;
        aftercart_runtime::metrics_catalog::register(registry, &stats.broker_rtt_p99)?;
        aftercart_runtime::metrics_catalog::register(registry, &stats.broker_outbuf)?;
        Ok(stats)
    }

    /// A watch on the clients reporting to these statistics: their errors are counted here.
    pub fn watch(&self, health: &Health) -> ClientWatch {
        ClientWatch::new(self.errors.clone(), health)
    }

    fn record(&self, statistics: &Statistics) {
        self.queue_messages.set(statistics.msg_cnt as i64);
        self.queue_bytes.set(statistics.msg_size as i64);
        // Bootstrap and internal pseudo-brokers have no node id; skip them.
        for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
            let label = [broker.name.as_str()];
            self.broker_up
                .with_label_values(&label)
                .set(i64::from(broker.state == "UP"));
            self.broker_outbuf
                .with_label_values(&label)
                .set(broker.outbuf_cnt + broker.waitresp_cnt);
            if let Some(rtt) = &broker.rtt {
                self.broker_rtt_avg
                    .with_label_values(&label)
                    .set(rtt.avg as f64 / 1e6);
                self.broker_rtt_p99
                    .with_label_values(&label)
                    .set(rtt.p99 as f64 / 1e6);
            }
        }
    }
}

/// A librdkafka client context that records statistics and hands errors to a [`ClientWatch`].
#[derive(Clone)]
pub struct StatsContext {
    stats: ClientStats,
    watch: ClientWatch,
}

impl StatsContext {
    pub fn new(stats: ClientStats, watch: ClientWatch) -> Self {
        Self { stats, watch }
    }
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        self.stats.record(&statistics);
        if statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            self.watch.broker_up();
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.observe(&error, reason);
    }
}

impl ProducerContext for StatsContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

impl ConsumerContext for StatsContext {}

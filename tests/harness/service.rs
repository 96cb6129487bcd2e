//! A consumer service started in-process, exactly as its `aftercart` subcommand runs it: its
//! registry and health, a stop token standing in for SIGTERM, and the task to join.

use std::future::Future;
use std::time::Duration;

use aftercart_kafka::{KafkaArgs, KafkaSettings, TopicSpec};
use aftercart_runtime::Health;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually, Broker};

/// Kafka flags on the same settings (and so the same raw topics) as a test's ingress, with
/// short sessions so group joins and takeovers after a crash stay quick in tests.
pub fn test_kafka_args(kafka: &KafkaSettings) -> KafkaArgs {
    // The tests' receivers and stand-in platforms are local plain-http servers.
    aftercart_runtime::outbound::allow_insecure_http();
    KafkaArgs {
        brokers: Some(kafka.brokers.clone()),
        topic_prefix: kafka.topic_prefix.clone(),
        topic_partitions: kafka.partitions.to_string(),
        topic_replication: kafka.replication.to_string(),
        topic_min_insync_replicas: Some(kafka.min_insync_replicas.to_string()),
        topic_retention: humantime::format_duration(kafka.retention).to_string(),
        topic_compaction_lag: humantime::format_duration(kafka.compaction_lag).to_string(),
        kafka_properties_file: None,
        kafka_properties: kafka
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain([
                "session.timeout.ms=6000".to_string(),
                "heartbeat.interval.ms=500".to_string(),
            ])
            .collect::<Vec<_>>()
            .join(","),
        // Dynamic membership: Tansu 0.6 answers static members' heartbeats "unknown member".
        instance_id: None,
    }
}

/// A running consumer service with config `C` whose `serve` fails with `E`.
pub struct TestService<C, E> {
    pub config: C,
    pub registry: Registry,
    pub health: Health,
    name: &'static str,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<C: Clone + Send + 'static, E: Send + 'static> TestService<C, E> {
    /// Starts `serve` (topics pre-made on the mock cluster) and waits until it is ready.
    pub async fn launch<F, Fut>(
        broker: &Broker,
        name: &'static str,
        config: C,
        topics: &[TopicSpec],
        serve: F,
    ) -> Self
    where
        F: FnOnce(C, Registry, Health, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        crate::init_logs();
        broker.precreate_for_mock(topics);
        let registry = Registry::new();
        let health = Health::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            config.clone(),
            registry.clone(),
            health.clone(),
            stop.clone(),
        ));
        let service = TestService {
            config,
            registry,
            health,
            name,
            stop,
            task: Some(task),
        };
        let health = service.health.clone();
        eventually(name, Duration::from_secs(60), || {
            let health = health.clone();
            async move { health.readiness().ok() }
        })
        .await;
        service
    }

    pub fn metrics(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encode");
        String::from_utf8(buffer).expect("utf-8")
    }

    /// The value of one series, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        crate::metric_value(&self.metrics(), series)
    }

    /// Whether the service's task has ended (it should run until stopped).
    pub fn has_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// A crash, as near as a task gets to SIGKILL: dropped mid-await, so nothing in flight is
    /// finished or stored (its Kafka clients close on a background thread, committing only
    /// offsets stored before).
    pub async fn crash(mut self) {
        let task = self.task.take().expect("running");
        task.abort();
        let _ = task.await;
    }

    /// Graceful stop (as SIGTERM).
    pub async fn stop(mut self) -> Result<(), E> {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        crate::join_within(task, self.name).await
    }
}

impl<C, E> Drop for TestService<C, E> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

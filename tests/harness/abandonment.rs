//! Starting the abandonment service in-process, exactly as `aftercart abandonment` runs it.

use std::time::Duration;

use aftercart_abandonment::{
    serve, AbandonmentArgs, AbandonmentConfig, AbandonmentDefaults, ServeError,
};
use aftercart_kafka::{KafkaArgs, KafkaSettings};
use aftercart_runtime::Health;
use clap::Parser;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually, Broker};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    abandonment: AbandonmentArgs,
}

/// A config on the same Kafka settings (and so the same raw topics) as a test's ingress, with
/// its own output topics and group, built from real flags so defaults are the shipped ones.
pub fn test_config(kafka: &KafkaSettings, flags: &[&str]) -> AbandonmentConfig {
    let prefix = &kafka.topic_prefix;
    let mut argv = vec![
        "abandonment".to_string(),
        format!("--group={prefix}abandonment"),
        format!("--output-topic={prefix}abandonments"),
        format!("--state-topic={prefix}abandonment-state"),
        format!("--dead-letter-topic={prefix}abandonment-dead-letter"),
    ];
    for (flag, default) in [("--abandon-after", "2s"), ("--cart-abandon-after", "2s")] {
        if !flags.iter().any(|f| f.starts_with(flag)) {
            argv.push(format!("{flag}={default}"));
        }
    }
    argv.extend(flags.iter().map(|f| f.to_string()));
    let args = Flags::try_parse_from(argv)
        .expect("test flags parse")
        .abandonment;
    let kafka_args = KafkaArgs {
        brokers: Some(kafka.brokers.clone()),
        topic_prefix: prefix.clone(),
        topic_partitions: kafka.partitions.to_string(),
        topic_replication: kafka.replication.to_string(),
        // Short sessions: group joins and takeovers after a crash stay quick in tests.
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
    };
    args.validate(
        &kafka_args,
        Duration::from_secs(10),
        &AbandonmentDefaults::production(),
    )
    .expect("valid test config")
}

/// A running abandonment service.
pub struct TestAbandonment {
    pub config: AbandonmentConfig,
    pub registry: Registry,
    pub health: Health,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestAbandonment {
    /// Starts the service (topics pre-made on the mock cluster) and waits until it is ready:
    /// global tables read and partitions assigned.
    pub async fn start_on(broker: &Broker, config: AbandonmentConfig) -> TestAbandonment {
        crate::init_logs();
        broker.precreate_for_mock(&aftercart_abandonment::topic_specs(&config).0);
        let registry = Registry::new();
        let health = Health::new();
        let stop = CancellationToken::new();
        let task = {
            let (config, registry, health, stop) = (
                config.clone(),
                registry.clone(),
                health.clone(),
                stop.clone(),
            );
            tokio::spawn(async move { serve(&config, &registry, &health, stop).await })
        };
        let service = TestAbandonment {
            config,
            registry,
            health,
            stop,
            task: Some(task),
        };
        let health = service.health.clone();
        eventually("abandonment readiness", Duration::from_secs(60), || {
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

    /// Graceful stop (as SIGTERM).
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        crate::join_within(task, "the abandonment service").await
    }
}

impl Drop for TestAbandonment {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

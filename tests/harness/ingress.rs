//! Starting the ingress in-process on `127.0.0.1:0`, exactly as `aftercart ingress` runs it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use aftercart_ingress::app::topic_specs;
use aftercart_ingress::config::EdgeConfig;
use aftercart_ingress::{serve, IngressConfig, ServeError, SpoolConfig};
use aftercart_kafka::{KafkaSettings, TopicNames};
use aftercart_runtime::{AdminServer, Health};
use aftercart_shopify::{Family, Secret, Verifier};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually, Broker};

/// The secret test deliveries are signed with.
pub const SECRET: &str = "test-secret-current";
/// A secret still accepted during a rotation.
pub const ROTATED_SECRET: &str = "test-secret-previous";

/// A config pointing at `broker` with fresh topics, port 0 everywhere, and test-sized limits.
pub fn test_config(broker: &Broker) -> IngressConfig {
    let mut kafka = KafkaSettings::new(broker.bootstrap(), crate::unique_prefix());
    kafka.partitions = 3;
    kafka.properties = broker.client_properties().into();
    IngressConfig {
        kafka,
        verifier: Verifier::new(
            vec![Secret::new(SECRET), Secret::new(ROTATED_SECRET)],
            HashMap::new(),
        ),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        max_body_bytes: 256 * 1024,
        publish_deadline: Duration::from_secs(4),
        body_read_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(5),
        max_connections: 1000,
        listen_backlog: 1024,
        max_header_bytes: 64 * 1024,
        drain_delay: Duration::ZERO,
        dedupe_window: Duration::from_secs(3600),
        dedupe_capacity: 10_000,
        shutdown_timeout: Duration::from_secs(10),
        spool: Some(SpoolConfig {
            dir: crate::scratch(&format!("spool-{}", crate::unique_prefix())),
            max_bytes: 64 << 20,
            disk: Default::default(),
        }),
        spool_after: Duration::from_secs(1),
        edge: EdgeConfig {
            http2: None,
            body_budget_bytes: 16 << 20,
        },
    }
}

/// A running ingress with its admin port.
pub struct TestIngress {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub config: IngressConfig,
    pub registry: Registry,
    pub health: Health,
    stop: CancellationToken,
    /// The admin port outlives the service, as in the binary: probes see `/readyz` fail.
    admin_stop: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestIngress {
    /// Starts the ingress and waits until `/readyz` says ready and Kafka takes records (a
    /// replica with a spool is ready before that).
    pub async fn start(config: IngressConfig) -> TestIngress {
        let ingress = Self::spawn(config).await;
        let admin = ingress.admin_addr;
        eventually("ingress readiness", Duration::from_secs(30), || async move {
            (crate::http::get(admin, "/readyz").await.status == 200).then_some(())
        })
        .await;
        eventually("Kafka healthy", Duration::from_secs(30), || async {
            (ingress.metric("aftercart_ingress_kafka_healthy").await == 1.0).then_some(())
        })
        .await;
        ingress
    }

    /// Starts the ingress on `broker` (pre-creating its topics on the mock cluster, which cannot
    /// create topics through the admin API) and waits until ready.
    pub async fn start_on(broker: &Broker, config: IngressConfig) -> TestIngress {
        broker.precreate_for_mock(&topic_specs(&config.kafka, config.max_body_bytes));
        Self::start(config).await
    }

    /// Starts the ingress without waiting for readiness.
    pub async fn spawn(config: IngressConfig) -> TestIngress {
        crate::init_logs();
        // Bound as the ingress binds it, with its listen queue.
        let listener =
            aftercart_runtime::process::bind("webhooks", config.listen, config.listen_backlog)
                .expect("bind webhook port");
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .expect("bind admin port");
        let addr = listener.local_addr().expect("addr");
        let admin_addr = admin_listener.local_addr().expect("admin addr");
        let registry = Registry::new();
        let health = Health::new();
        let stop = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        tokio::spawn(
            AdminServer::new(admin_listener, registry.clone(), health.clone())
                .run_until_stopped(admin_stop.clone()),
        );
        let task = {
            let (config, registry, health, stop) = (
                config.clone(),
                registry.clone(),
                health.clone(),
                stop.clone(),
            );
            tokio::spawn(async move { serve(&config, listener, &registry, &health, stop).await })
        };
        TestIngress {
            addr,
            admin_addr,
            config,
            registry,
            health,
            stop,
            admin_stop,
            task: Some(task),
        }
    }

    pub fn topics(&self) -> TopicNames {
        TopicNames::new(&self.config.kafka.topic_prefix)
    }

    pub fn topic(&self, family: Family) -> String {
        self.topics().family(family)
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = crate::http::get(self.admin_addr, "/metrics").await;
        assert_eq!(response.status, 200);
        response.body
    }

    /// The value of one sample line, e.g. `aftercart_ingress_requests_total{family="orders",status="200"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::metric_value(&self.metrics().await, series)
    }

    /// Begins a graceful shutdown (as SIGTERM does) and returns how `serve` ended.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.health.start_draining();
        self.stop.cancel();
        let task = self.task.take().expect("running");
        let ended = crate::join_within(task, "the ingress").await;
        self.admin_stop.cancel();
        ended
    }

    /// Waits for `serve` to end by itself (e.g. refusing to start).
    pub async fn finished(mut self) -> Result<(), ServeError> {
        let task = self.task.take().expect("running");
        crate::join_within(task, "the ingress").await
    }
}

impl Drop for TestIngress {
    fn drop(&mut self) {
        self.stop.cancel();
        self.admin_stop.cancel();
    }
}

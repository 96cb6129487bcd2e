//! Wiring: builds the ingress from its configuration and serves it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aftercart_kafka::producer::{build_producer, ProducerOptions};
use aftercart_kafka::{
    ensure_topics_with_retry, KafkaSettings, StatsContext, TopicError, TopicNames, TopicSpec,
};
use aftercart_runtime::health::Readiness;
use aftercart_runtime::Health;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::dedupe::Dedupe;
use crate::http::{handle, WebhookState};
use crate::metrics::IngressMetrics;
use crate::publish::Publisher;
use crate::IngressConfig;

/// Room for record headers and batch framing on top of the largest body.
const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

/// How long librdkafka keeps delivering a record after the ingress answered 503 for it. The
/// request is already lost for this attempt, but a late success is remembered by the dedupe
/// window, so Shopify's retry is answered as a duplicate instead of being published twice.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
}

/// Why the ingress could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot register the ingress metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster contradicts the configuration (e.g. journey partition counts differ).
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Runs the ingress on `listener` until `stop`: registers its metrics on `registry`, prepares
/// the topics (readiness component `kafka`), then serves and drains. The admin port, if any, is
/// the caller's (one process may run several services behind one admin port).
pub async fn serve(
    config: &IngressConfig,
    listener: TcpListener,
    registry: &Registry,
    health: &Health,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = IngressMetrics::register(registry)?;
    let kafka_ready = health.component("kafka");
    // Serve at once: until the topics are ready, requests get 503 + Retry-After instead of
    // hanging in the listen backlog.
    let app = App::build(config, listener, metrics, kafka_ready.clone())?;
    if let Ok(addr) = app.local_addr() {
        tracing::info!(%addr, "Ingress listening for webhooks at POST /webhooks/shopify.");
    }
    let app_stop = stop.child_token();
    let running = tokio::spawn(app.run_until_stopped(app_stop.clone()));
    if let Err(error) = prepare_topics(config, &kafka_ready, &stop).await {
        app_stop.cancel();
        let _ = running.await;
        return Err(error.into());
    }
    if !stop.is_cancelled() {
        tracing::info!("Kafka topics ready; accepting webhooks.");
    }
    running.await.expect("the ingress task does not panic");
    Ok(())
}

/// The ingress, built and bound, not yet serving.
pub struct App {
    listener: TcpListener,
    state: Arc<WebhookState>,
    shutdown_timeout: Duration,
    header_read_timeout: Duration,
    connections: Arc<Semaphore>,
    drain_delay: Duration,
}

/// The topic specs the ingress writes: every raw topic, sized for the largest accepted body.
pub fn topic_specs(kafka: &KafkaSettings, max_body_bytes: usize) -> Vec<TopicSpec> {
    let max_record = (max_body_bytes + RECORD_OVERHEAD_BYTES).to_string();
    TopicNames::new(&kafka.topic_prefix)
        .ingress_outputs()
        .into_iter()
        .map(|name| {
            TopicSpec::new(name, kafka).with_config("max.message.bytes", max_record.clone())
        })
        .collect()
}

/// Creates missing topics and checks the journey partition counts, retrying while the broker is
/// unreachable. Marks `kafka` ready once the broker has answered. Returns the error that no retry
/// fixes (e.g. journey topics with different partition counts), or `Ok` if stopped first.
pub async fn prepare_topics(
    config: &IngressConfig,
    kafka: &Readiness,
    stop: &CancellationToken,
) -> Result<(), TopicError> {
    let specs = topic_specs(&config.kafka, config.max_body_bytes);
    let journey = TopicNames::new(&config.kafka.topic_prefix).journey();
    if ensure_topics_with_retry(&config.kafka, &specs, &journey, stop).await? {
        kafka.set_ready(true);
    }
    Ok(())
}

impl App {
    /// Builds the ingress on a listener the caller bound (port 0 in tests). `kafka_ready` gates
    /// traffic: requests before it is set are answered 503.
    pub fn build(
        config: &IngressConfig,
        listener: TcpListener,
        metrics: IngressMetrics,
        kafka_ready: Readiness,
    ) -> Result<App, BuildError> {
        let producer = build_producer(
            &config.kafka,
            &ProducerOptions {
                client_id: "aftercart-ingress".to_string(),
                message_timeout: DELIVERY_TIMEOUT.max(config.publish_deadline),
                max_message_bytes: config.max_body_bytes + RECORD_OVERHEAD_BYTES,
                linger: Duration::from_millis(2),
            },
            StatsContext::new(metrics.kafka.clone()),
        )?;
        let state = WebhookState {
            verifier: config.verifier.clone(),
            publisher: Publisher::new(producer, metrics.clone()),
            dedupe: Dedupe::new(config.dedupe_window, config.dedupe_capacity),
            metrics,
            kafka_ready,
            topics: TopicNames::new(&config.kafka.topic_prefix),
            max_body_bytes: config.max_body_bytes,
            publish_deadline: config.publish_deadline,
            body_read_timeout: config.body_read_timeout,
        };
        Ok(App {
            listener,
            state: Arc::new(state),
            shutdown_timeout: config.shutdown_timeout,
            header_read_timeout: config.header_read_timeout,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            drain_delay: config.drain_delay,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves HTTP/1.1 and HTTP/2 (cleartext) until `stop`, then stops accepting, lets in-flight
    /// requests finish and flushes the producer, all within the shutdown timeout.
    pub async fn run_until_stopped(self, stop: CancellationToken) {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        // After `stop`, keep accepting for the drain delay: readiness already says 503, so
        // load balancers move away while nothing is refused.
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            let permit = match Arc::clone(&self.connections).acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => break,
            };
            let stop_accepting = async {
                match drain_until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => stop.cancelled().await,
                }
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = stop_accepting => {
                    if drain_until.is_none() && !self.drain_delay.is_zero() {
                        tracing::info!(delay = ?self.drain_delay, "Draining: still accepting while load balancers catch up.");
                        drain_until = Some(tokio::time::Instant::now() + self.drain_delay);
                        continue;
                    }
                    break;
                }
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Usually too many open files: back off instead of spinning.
                    tracing::warn!(%error, "Failed to accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::clone(&self.state);
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(handle(state, request).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                // Client resets and protocol errors are the client's business.
                let _ = connection.await;
                drop(permit);
            });
        }
        drop(self.listener);
        let started = tokio::time::Instant::now();
        tracing::info!("Stopped accepting webhooks; finishing in-flight requests.");
        if tokio::time::timeout(self.shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("Shutdown timeout reached with requests still in flight.");
        }
        let remaining = self
            .shutdown_timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        let state = Arc::clone(&self.state);
        let flushed = tokio::task::spawn_blocking(move || state.publisher.flush(remaining)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("Producer flushed; ingress stopped."),
            _ => tracing::warn!(
                unacknowledged = self.state.publisher.in_flight_count(),
                "Producer flush did not complete before the shutdown timeout."
            ),
        }
    }
}

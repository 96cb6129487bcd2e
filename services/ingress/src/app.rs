//! Wiring: builds the ingress from its configuration and serves it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aftercart_kafka::producer::{build_producer, ProducerOptions};
use aftercart_kafka::{
    ensure_topics_with_retry, ClientWatch, KafkaSettings, StatsContext, TopicError, TopicNames,
    TopicSpec,
};
use aftercart_runtime::health::Readiness;
use aftercart_runtime::{Event as _, Health};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::connection::Connections;
use crate::dedupe::Dedupe;
use crate::events::SpoolNotOpened;
use crate::http::body::BodyBudget;
use crate::http::webhook::SpoolState;
use crate::http::WebhookState;
use crate::metrics::IngressMetrics;
use crate::publish::Publisher;
use crate::readiness::{self, KafkaHealth};
use crate::spool::drainer::Drainer;
use crate::spool::{OpenError, Recovered, Spool, SpoolMetrics};
use crate::{IngressConfig, SpoolConfig};

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
    /// The Kafka client hit an error no retry fixes: the process must restart.
    #[error("fatal Kafka client error: {0}")]
    KafkaFatal(String),
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
    // Ready when Kafka or the spool can make a webhook safe (see `readiness`); the topics
    // being prepared is one input, not the readiness itself. The client watch adds its own
    // component: an authentication, TLS or fatal client error turns /readyz 503 (an operator
    // problem the spool cannot hide).
    let ready = health.component("webhooks");
    let kafka_ready = Readiness::detached();
    let watch = metrics.kafka.watch(health);
    let fatal = watch.fatal();
    // Opening reads the whole spool back: on the blocking pool, so a large spool delays
    // readiness, not the runtime's workers (the admin port keeps answering /livez).
    let spool = {
        let (config, spool_metrics) = (config.clone(), metrics.spool.clone());
        tokio::task::spawn_blocking(move || open_spool(&config, &spool_metrics))
            .await
            .unwrap_or(SpoolState::Failed)
    };
    // Serve at once: until the topics are ready, requests get 503 + Retry-After (or are
    // spooled) instead of hanging in the listen backlog.
    let app = App::build(
        config,
        listener,
        metrics,
        kafka_ready.clone(),
        spool,
        watch.clone(),
    )?;
    if let Ok(addr) = app.local_addr() {
        tracing::info!(%addr, "Ingress listening for webhooks at POST /webhooks/shopify.");
    }
    let app_stop = stop.child_token();
    let state = Arc::clone(&app.state);
    tokio::spawn(readiness::keep_ready(
        ready,
        Arc::clone(&state.kafka),
        state.spool.ready().cloned(),
        state.publisher.producer().clone(),
        state.metrics.kafka_healthy.clone(),
        app_stop.clone(),
    ));
    let fatal_check = watch.spawn_fatal_check(app.producer().clone(), app_stop.clone());
    // Topics are prepared until the app has finished, not merely until the stop signal: a
    // webhook spooled while they were being prepared is drained during the shutdown deadline,
    // and the drainer waits for them.
    let finished = CancellationToken::new();
    let mut running = tokio::spawn({
        let finished = finished.clone();
        let app_stop = app_stop.clone();
        async move {
            app.run_until_stopped(app_stop).await;
            finished.cancel();
        }
    });
    let prepared = tokio::select! {
        prepared = prepare_topics(config, &kafka_ready, &finished) => prepared,
        () = fatal.cancelled() => Ok(()),
    };
    if let Err(error) = prepared {
        app_stop.cancel();
        let _ = running.await;
        return Err(error.into());
    }
    if kafka_ready.is_ready() && !fatal.is_cancelled() {
        tracing::info!("Kafka topics ready; accepting webhooks.");
    }
    let ended = tokio::select! {
        ended = &mut running => {
            ended.expect("the ingress task does not panic");
            Ok(())
        }
        // A fatal producer error: readiness is already 503 (the watch saw to it); drain what
        // is in flight (the spool keeps what Kafka no longer takes), then fail so that the
        // process exits non-zero and is restarted with a fresh producer.
        () = fatal.cancelled() => {
            app_stop.cancel();
            let _ = running.await;
            Err(ServeError::KafkaFatal(watch.fatal_reason().unwrap_or_default()))
        }
    };
    fatal_check.abort();
    ended
}

/// The ingress, built and bound, not yet serving.
pub struct App {
    listener: TcpListener,
    state: Arc<WebhookState>,
    shutdown_timeout: Duration,
    /// How each accepted connection is served (protocols and their limits).
    serving: Arc<Connections>,
    connections: Arc<Semaphore>,
    drain_delay: Duration,
    /// Publishes the spool's events once Kafka is back.
    drainer: Option<Drainer>,
}

/// Opens the spool if configured. A spool that cannot be opened does not stop the ingress:
/// events Kafka acknowledges in time are still accepted, the others get 503.
fn open_spool(config: &IngressConfig, metrics: &SpoolMetrics) -> SpoolState {
    let Some(spool) = &config.spool else {
        tracing::warn!(
            "The spool is off (AFTERCART_INGRESS_SPOOL_DIR=off): when Kafka is slow, webhooks get 503."
        );
        metrics.set_available(false);
        return SpoolState::Off;
    };
    match open_waiting_for_lock(spool, metrics) {
        Ok((spool, recovered)) => {
            if recovered.events > 0 || recovered.discarded_bytes > 0 {
                tracing::info!(
                    events = recovered.events,
                    bytes = recovered.bytes,
                    discarded_bytes = recovered.discarded_bytes,
                    "Spool opened with events to publish."
                );
            }
            SpoolState::Ready(spool)
        }
        Err(error) => {
            SpoolNotOpened { error: &error }.emit(metrics);
            metrics.set_available(false);
            SpoolState::Failed
        }
    }
}

/// A previous ingress in this process (a restart in place) lets go of the lock once its last
/// request is answered: wait a little for it rather than run without a spool.
fn open_waiting_for_lock(
    config: &SpoolConfig,
    metrics: &SpoolMetrics,
) -> Result<(Spool, Recovered), OpenError> {
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let disk = std::sync::Arc::clone(&config.disk.0);
        match Spool::open_in(disk, &config.dir, config.max_bytes, metrics.clone()) {
            Err(OpenError::Locked(_)) if std::time::Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
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
    /// Builds the ingress on a listener the caller bound (port 0 in tests), with its spool
    /// already opened (off the runtime). `kafka_ready` gates publishing: before it is set,
    /// requests are spooled or answered 503.
    pub fn build(
        config: &IngressConfig,
        listener: TcpListener,
        metrics: IngressMetrics,
        kafka_ready: Readiness,
        spool: SpoolState,
        watch: ClientWatch,
    ) -> Result<App, BuildError> {
        let producer = build_producer(
            &config.kafka,
            &ProducerOptions {
                client_id: "aftercart-ingress".to_string(),
                message_timeout: DELIVERY_TIMEOUT.max(config.publish_deadline),
                max_message_bytes: config.max_body_bytes + RECORD_OVERHEAD_BYTES,
                linger: Duration::from_millis(2),
            },
            StatsContext::new(metrics.kafka.clone(), watch),
        )?;
        let kafka = KafkaHealth::new(kafka_ready.clone());
        let drainer = spool.ready().map(|spool| {
            Drainer::new(
                spool.clone(),
                producer.clone(),
                TopicNames::new(&config.kafka.topic_prefix).quarantine(),
                kafka_ready.clone(),
            )
            .with_kafka_health(Arc::clone(&kafka))
            // Not counted against the spool's limit: an eighth of it, inside the headroom the
            // volume keeps beside the limit (1 GiB of the manifests' 8 GiB on 10 GiB).
            .setting_aside(spool.max_bytes() / 8)
        });
        let serving = Arc::new(Connections::new(config, metrics.clone()));
        let body_budget = BodyBudget::new(config.edge.body_budget_bytes, metrics.clone());
        let state = WebhookState {
            verifier: config.verifier.clone(),
            publisher: Publisher::new(producer, metrics.clone()),
            dedupe: Dedupe::new(config.dedupe_window, config.dedupe_capacity),
            metrics,
            kafka_ready,
            kafka,
            topics: TopicNames::new(&config.kafka.topic_prefix),
            max_body_bytes: config.max_body_bytes,
            publish_deadline: config.publish_deadline,
            body_read_timeout: config.body_read_timeout,
            body_budget,
            spool,
            spool_after: config.spool_after,
        };
        Ok(App {
            listener,
            state: Arc::new(state),
            shutdown_timeout: config.shutdown_timeout,
            serving,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            drain_delay: config.drain_delay,
            drainer,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The producer every record goes through (for the fatal-error check).
    pub fn producer(&self) -> &rdkafka::producer::FutureProducer<StatsContext> {
        self.state.publisher.producer()
    }

    /// Serves HTTP/1.1 (and HTTP/2 cleartext when AFTERCART_INGRESS_HTTP2 is on) until `stop`,
    /// then stops accepting, lets in-flight requests finish and flushes the producer, all
    /// within the shutdown timeout.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) {
        let (drain_finish, drain_stop) = (CancellationToken::new(), CancellationToken::new());
        let mut draining = self
            .drainer
            .take()
            .map(|drainer| tokio::spawn(drainer.run(drain_finish.clone(), drain_stop.clone())));
        let graceful = GracefulShutdown::new();
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
            let (state, serving) = (Arc::clone(&self.state), Arc::clone(&self.serving));
            let watcher = graceful.watcher();
            tokio::spawn(async move { serving.serve(stream, permit, state, watcher).await });
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
        if let Some(mut drainer) = draining.take() {
            // What Kafka takes before the deadline leaves the disk now; the rest waits there
            // for the next start.
            drain_finish.cancel();
            let left = self.shutdown_timeout.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, &mut drainer).await.is_err() {
                drain_stop.cancel();
                let _ = drainer.await;
            }
            if let Some(spool) = self.state.spool.ready() {
                let pending = spool.pending_events();
                if pending > 0 {
                    tracing::warn!(pending, "Spooled events left for the next start.");
                }
            }
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

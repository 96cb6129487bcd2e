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
use crate::http::webhook::SpoolState;
use crate::http::{handle, WebhookState};
use crate::metrics::IngressMetrics;
use crate::publish::Publisher;
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
    let kafka_ready = health.component("kafka");
    // Serve at once: until the topics are ready, requests get 503 + Retry-After instead of
    // hanging in the listen backlog.
    let watch = metrics.kafka.watch(health);
    let fatal = watch.fatal();
    let app = App::build(
        config,
        listener,
        metrics,
        kafka_ready.clone(),
        watch.clone(),
    )?;
    if let Ok(addr) = app.local_addr() {
        tracing::info!(%addr, "Ingress listening for webhooks at POST /webhooks/shopify.");
    }
    let app_stop = stop.child_token();
    let fatal_check = watch.spawn_fatal_check(app.producer().clone(), app_stop.clone());
    let mut running = tokio::spawn(app.run_until_stopped(app_stop.clone()));
    let prepared = tokio::select! {
        prepared = prepare_topics(config, &kafka_ready, &stop) => prepared,
        () = fatal.cancelled() => Ok(()),
    };
    if let Err(error) = prepared {
        app_stop.cancel();
        let _ = running.await;
        return Err(error.into());
    }
    if !stop.is_cancelled() && !fatal.is_cancelled() {
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
    header_read_timeout: Duration,
    max_header_bytes: usize,
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
            "The spool is off (AFTERCART_SPOOL_DIR=off): when Kafka is slow, webhooks get 503."
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
            metrics.error("open");
            metrics.set_available(false);
            tracing::error!(%error, "Cannot open the spool: webhooks Kafka does not acknowledge in time will get 503.");
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
        match Spool::open(&config.dir, config.max_bytes, metrics.clone()) {
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
    /// Builds the ingress on a listener the caller bound (port 0 in tests). `kafka_ready` gates
    /// traffic: requests before it is set are answered 503.
    pub fn build(
        config: &IngressConfig,
        listener: TcpListener,
        metrics: IngressMetrics,
        kafka_ready: Readiness,
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
        let spool = open_spool(config, &metrics.spool);
        let drainer = spool.ready().map(|spool| {
            Drainer::new(
                spool.clone(),
                producer.clone(),
                TopicNames::new(&config.kafka.topic_prefix).quarantine(),
                kafka_ready.clone(),
            )
        });
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
            spool,
            spool_after: config.spool_after,
        };
        Ok(App {
            listener,
            state: Arc::new(state),
            shutdown_timeout: config.shutdown_timeout,
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.max_header_bytes,
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

    /// Serves HTTP/1.1 and HTTP/2 (cleartext) until `stop`, then stops accepting, lets in-flight
    /// requests finish and flushes the producer, all within the shutdown timeout.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) {
        let (drain_finish, drain_stop) = (CancellationToken::new(), CancellationToken::new());
        let mut draining = self
            .drainer
            .take()
            .map(|drainer| tokio::spawn(drainer.run(drain_finish.clone(), drain_stop.clone())));
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // A head larger than the buffer is refused with 431 by hyper itself.
            .max_buf_size(self.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
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
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let metrics = self.state.metrics.clone();
            let first_bytes = self.header_read_timeout;
            tokio::spawn(async move {
                if client_spoke(&stream, first_bytes).await {
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    // Client resets and protocol errors are the client's business; only the
                    // limits the server enforces itself are counted.
                    if let Err(error) = watcher.watch(connection).await {
                        if let Some(reason) = cut_reason(error.as_ref()) {
                            metrics.connection_cut(reason);
                        }
                    }
                } else {
                    metrics.connection_cut("idle");
                }
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

/// Waits at most `timeout` for the client to send enough to tell HTTP/1 from HTTP/2; false if it
/// stays silent or leaves. hyper-util's auto builder reads those bytes before any of hyper's
/// timers run, so without this a client that connects and says nothing keeps its connection
/// slot (of AFTERCART_MAX_CONNECTIONS) forever.
async fn client_spoke(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let wait = async {
        let mut buffer = [0u8; 24];
        loop {
            match stream.peek(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= H2_PREFACE.len() || buffer[..n] != H2_PREFACE[..n] => return true,
                // A partial HTTP/2 preface: peek again shortly (it returns at once on data
                // already seen).
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(false)
}

/// The limit behind a connection error hyper reports, if the server cut the connection itself
/// (a head too large is answered 431 by hyper before it ends the connection).
fn cut_reason(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if error.is_parse_too_large() {
        Some("header_too_large")
    } else if error.is_timeout() {
        Some("header_timeout")
    } else {
        None
    }
}

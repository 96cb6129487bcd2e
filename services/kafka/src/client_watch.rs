//! librdkafka's global errors as events: authentication and TLS failures are counted, logged and
//! turn `/readyz` 503 until a broker connection is up again; a fatal error (a fenced or
//! desynchronised idempotent producer, which no retry fixes) stops the service so that it exits
//! non-zero and is restarted, instead of answering 503 or spooling forever behind a green probe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aftercart_runtime::health::Readiness;
use aftercart_runtime::Health;
use prometheus::IntCounterVec;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What kind of trouble a librdkafka error reports; the `kind` label of `*_kafka_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// SASL refused the credentials (or the mechanism).
    Authentication,
    /// The TLS handshake failed: unknown CA, expired or refused certificate, wrong host name.
    Tls,
    /// The client can no longer work (e.g. a fenced idempotent producer).
    Fatal,
    /// Every broker connection is down.
    AllBrokersDown,
    /// One connection failed (a broker restart, a network blip): librdkafka reconnects.
    Transport,
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Authentication,
        ErrorKind::Tls,
        ErrorKind::Fatal,
        ErrorKind::AllBrokersDown,
        ErrorKind::Transport,
        ErrorKind::Other,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            ErrorKind::Authentication => "authentication",
            ErrorKind::Tls => "tls",
            ErrorKind::Fatal => "fatal",
            ErrorKind::AllBrokersDown => "all_brokers_down",
            ErrorKind::Transport => "transport",
            ErrorKind::Other => "other",
        }
    }

    /// The kind of an error from librdkafka's error callback.
    pub fn of(error: &KafkaError) -> ErrorKind {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => ErrorKind::Fatal,
            Some(
                RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::UnsupportedSASLMechanism
                | RDKafkaErrorCode::IllegalSASLState
                | RDKafkaErrorCode::ClusterAuthorizationFailed,
            ) => ErrorKind::Authentication,
            Some(RDKafkaErrorCode::SSL) => ErrorKind::Tls,
            Some(RDKafkaErrorCode::AllBrokersDown) => ErrorKind::AllBrokersDown,
            Some(RDKafkaErrorCode::BrokerTransportFailure) => ErrorKind::Transport,
            _ => ErrorKind::Other,
        }
    }
}

/// Watches one service's Kafka clients: shared by their contexts (cheap to clone).
#[derive(Clone)]
pub struct ClientWatch {
    errors: IntCounterVec,
    /// Not ready after an authentication or TLS failure, until a broker connection is up.
    connection: Readiness,
    /// What `connection` said when a failure turned it off, to put back on recovery (a
    /// service's own readiness may not have been ready yet).
    before_failure: Arc<Mutex<Option<bool>>>,
    fatal: CancellationToken,
    fatal_reason: Arc<Mutex<Option<String>>>,
    /// Woken by every error, so the fatal check runs at once.
    errors_seen: Arc<Notify>,
}

impl ClientWatch {
    /// `errors` is the service's `*_kafka_errors_total{kind}`; the readiness component
    /// `kafka_connection` joins `health`.
    pub fn new(errors: IntCounterVec, health: &Health) -> Self {
        let connection = health.component("kafka_connection");
        connection.set_ready(true);
        Self::sharing(errors, connection)
    }

    /// A watch that turns `readiness` (a consumer loop's own) off on an authentication or TLS
    /// failure and puts back what it was once a broker connection is up.
    pub fn sharing(errors: IntCounterVec, readiness: Readiness) -> Self {
        Self {
            errors,
            connection: readiness,
            before_failure: Arc::new(Mutex::new(None)),
            fatal: CancellationToken::new(),
            fatal_reason: Arc::new(Mutex::new(None)),
            errors_seen: Arc::new(Notify::new()),
        }
    }

    /// Watches `producer` for a fatal error until `stop`. librdkafka reports a fatal error as
    /// an ordinary error event carrying the underlying code (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER),
    /// so the callback alone cannot tell: after every error (and every second) this asks
    /// `rd_kafka_fatal_error`, which is the authority.
    pub fn spawn_fatal_check<C: ClientContext + 'static>(
        &self,
        producer: FutureProducer<C>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let watch = self.clone();
        tokio::spawn(async move {
            loop {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    watch.fatal_detected(code, &reason);
                    return;
                }
                tokio::select! {
                    () = watch.errors_seen.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            }
        })
    }

    /// A fatal error found by [`ClientWatch::spawn_fatal_check`] (or reported as such).
    pub fn fatal_detected(&self, code: RDKafkaErrorCode, reason: &str) {
        if self.fatal.is_cancelled() {
            return;
        }
        let error = KafkaError::Global(code);
        ClientErrorEvent {
            kind: ErrorKind::Fatal,
            error: &error,
            reason,
        }
        .emit(self);
    }

    /// Handles one error from librdkafka's error callback.
    pub fn observe(&self, error: &KafkaError, reason: &str) {
        let kind = ErrorKind::of(error);
        if kind == ErrorKind::Fatal {
            return self.fatal_detected(RDKafkaErrorCode::Fatal, reason);
        }
        ClientErrorEvent {
            kind,
            error,
            reason,
        }
        .emit(self);
        self.errors_seen.notify_one();
    }

    /// A broker connection is up (from the statistics): authentication works again.
    pub fn broker_up(&self) {
        if self.fatal.is_cancelled() {
            return;
        }
        if let Some(before) = self.before_failure.lock().expect("watch lock").take() {
            tracing::info!("Kafka connection is up again.");
            self.connection.set_ready(before);
        }
    }

    /// Turns readiness off, remembering what it was before the first failure.
    fn connection_failed(&self) {
        let mut before = self.before_failure.lock().expect("watch lock");
        if before.is_none() {
            *before = Some(self.connection.is_ready());
        }
        self.connection.set_ready(false);
    }

    /// Whether an authentication or TLS failure has not recovered yet (or a fatal error came):
    /// a loop that sets its readiness itself stays not ready meanwhile.
    pub fn failing(&self) -> bool {
        self.fatal.is_cancelled() || self.before_failure.lock().expect("watch lock").is_some()
    }

    /// Cancelled on a fatal error: the service stops and exits non-zero.
    pub fn fatal(&self) -> CancellationToken {
        self.fatal.clone()
    }

    /// librdkafka's words for the fatal error, once there was one.
    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal_reason.lock().expect("fatal lock").clone()
    }
}

/// One librdkafka error: logged and counted in one place.
struct ClientErrorEvent<'a> {
    kind: ErrorKind,
    error: &'a KafkaError,
    reason: &'a str,
}

impl ClientErrorEvent<'_> {
    fn emit(&self, watch: &ClientWatch) {
        watch
            .errors
            .with_label_values(&[self.kind.as_label()])
            .inc();
        let (error, reason) = (self.error, self.reason);
        match self.kind {
            ErrorKind::Fatal => {
                tracing::error!(%error, reason, "Fatal Kafka client error: no retry can fix it; stopping so that the process restarts.");
                watch.connection.set_ready(false);
                *watch.fatal_reason.lock().expect("fatal lock") = Some(reason.to_string());
                watch.fatal.cancel();
            }
            ErrorKind::Authentication => {
                tracing::error!(%error, reason, "Kafka authentication failed: check the SASL settings and credentials (AFTERCART_KAFKA_PROPERTIES_FILE).");
                watch.connection_failed();
            }
            ErrorKind::Tls => {
                tracing::error!(%error, reason, "Kafka TLS handshake failed: check ssl.ca.location, the client certificate and its expiry.");
                watch.connection_failed();
            }
            ErrorKind::AllBrokersDown | ErrorKind::Transport | ErrorKind::Other => {
                tracing::warn!(%error, reason, "Kafka client error; retrying.");
            }
        }
    }
}

/// Registers `<prefix>kafka_errors_total{kind}` at zero for every kind.
pub fn register_errors(
    prefix: &str,
    registry: &prometheus::Registry,
) -> prometheus::Result<IntCounterVec> {
    let errors = IntCounterVec::new(
        prometheus::Opts::new(
            format!("{prefix}kafka_errors_total"),
            "Errors reported by the Kafka client, by kind (authentication, tls, fatal, \
             all_brokers_down, transport, other).",
        ),
        &["kind"],
    )?;
    for kind in ErrorKind::ALL {
        errors.with_label_values(&[kind.as_label()]);
    }
    aftercart_runtime::metrics_catalog::register(registry, &errors)?;
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> (ClientWatch, Health, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let health = Health::new();
        let errors = register_errors("t_", &registry).unwrap();
        (ClientWatch::new(errors, &health), health, registry)
    }

    fn count(registry: &prometheus::Registry, kind: &str) -> u64 {
        use prometheus::Encoder;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let series = format!("t_kafka_errors_total{{kind=\"{kind}\"}} ");
        String::from_utf8(text)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map(|value| value.parse().unwrap())
            .unwrap()
    }

    #[test]
    fn errors_are_classified_by_their_code() {
        let global = |code| KafkaError::Global(code);
        assert_eq!(
            ErrorKind::of(&global(RDKafkaErrorCode::Fatal)),
            ErrorKind::Fatal
        );
        assert_eq!(
            ErrorKind::of(&global(RDKafkaErrorCode::Authentication)),
            ErrorKind::Authentication
        );
        assert_eq!(
            ErrorKind::of(&global(RDKafkaErrorCode::SSL)),
            ErrorKind::Tls
        );
        assert_eq!(
            ErrorKind::of(&global(RDKafkaErrorCode::BrokerTransportFailure)),
            ErrorKind::Transport
        );
    }

    #[test]
    fn an_authentication_failure_is_counted_and_not_ready_until_a_broker_is_up() {
        let (watch, health, registry) = watch();
        assert_eq!(health.readiness(), Ok(()));
        watch.observe(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        assert_eq!(count(&registry, "authentication"), 1);
        assert_eq!(
            health.readiness(),
            Err("waiting for kafka_connection".into())
        );
        assert!(!watch.fatal().is_cancelled());
        assert!(watch.failing());
        watch.broker_up();
        assert_eq!(health.readiness(), Ok(()));
        assert!(!watch.failing());
    }

    #[test]
    fn a_fatal_error_stops_the_service_for_good() {
        let (watch, health, registry) = watch();
        watch.observe(
            &KafkaError::Global(RDKafkaErrorCode::Fatal),
            "Fatal error: Broker: Producer fenced",
        );
        assert!(watch.fatal().is_cancelled());
        assert_eq!(
            watch.fatal_reason().as_deref(),
            Some("Fatal error: Broker: Producer fenced")
        );
        assert_eq!(count(&registry, "fatal"), 1);
        watch.broker_up();
        assert!(
            health.readiness().is_err(),
            "a fatal client never turns ready again"
        );
    }

    #[test]
    fn a_shared_readiness_gets_back_what_it_was_before_the_failure() {
        let registry = prometheus::Registry::new();
        let health = Health::new();
        let service = health.component("abandonment");
        let watch =
            ClientWatch::sharing(register_errors("t_", &registry).unwrap(), service.clone());
        let refused = KafkaError::Global(RDKafkaErrorCode::Authentication);
        watch.observe(&refused, "refused before any assignment");
        watch.broker_up();
        assert!(!service.is_ready(), "not made ready before the loop is");
        service.set_ready(true);
        watch.observe(&refused, "refused while running");
        watch.observe(&refused, "and again");
        assert!(!service.is_ready());
        watch.broker_up();
        assert!(service.is_ready());
    }

    #[test]
    fn a_transport_error_leaves_readiness_alone() {
        let (watch, health, _) = watch();
        watch.observe(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "down",
        );
        assert_eq!(health.readiness(), Ok(()));
    }
}

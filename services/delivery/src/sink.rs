//! The HTTP sink: POSTs one JSON body, signed, to the configured endpoint, and retries it by the
//! policy in `retry` until it is delivered, refused for good, out of budget, or stopped.

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, Secret, SinkConfig};
use crate::metrics::{AttemptOutcome, DeliveryMetrics};
use crate::retry::{classify, parse_retry_after, Class, Plan, RetryPolicy};

mod outcome;
pub use outcome::{Failure, FailureKind, Outcome};

pub const SIGNATURE_HEADER: &str = "x-aftercart-hmac-sha256";
pub const EVENT_ID_HEADER: &str = "x-aftercart-event-id";
pub const TOPIC_HEADER: &str = "x-aftercart-topic";
pub const USER_AGENT_VALUE: &str = concat!("aftercart/", env!("CARGO_PKG_VERSION"));
/// How much of a refusal's body is kept for the dead-letter record.
pub const RESPONSE_EXCERPT_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// One record on its way out. `Debug` leaves the body out: it may hold personal data.
#[derive(Clone)]
pub struct Outgoing {
    body: Bytes,
    event_id: HeaderValue,
    topic: HeaderValue,
}

impl Outgoing {
    /// `body` is sent byte for byte (expected to be JSON) and signed as sent; `event_id` becomes
    /// `X-Aftercart-Event-Id` (the receiver's idempotency key) and `topic` `X-Aftercart-Topic`.
    /// `None` when either is empty or not printable ASCII.
    pub fn new(body: Bytes, event_id: &str, topic: &str) -> Option<Outgoing> {
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !printable(event_id) || !printable(topic) {
            return None;
        }
        Some(Outgoing {
            body,
            event_id: HeaderValue::from_str(event_id).ok()?,
            topic: HeaderValue::from_str(topic).ok()?,
        })
    }

    pub fn event_id(&self) -> &str {
        self.event_id.to_str().unwrap_or_default()
    }

    pub fn topic(&self) -> &str {
        self.topic.to_str().unwrap_or_default()
    }
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("event_id", &self.event_id())
            .field("topic", &self.topic())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// An answer to one attempt: its status, `Retry-After`, and the start of its body.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    /// The first [`RESPONSE_BODY_BYTES`] of the body.
    pub body: Bytes,
}

/// How much of an answer's body is read (platform answers that carry ids are small).
pub const RESPONSE_BODY_BYTES: usize = 64 * 1024;

/// An HTTP(S) client making single attempts bounded by a timeout. Cheap to clone: clones share
/// the connection pool. https URLs are verified against the Mozilla root certificates
/// (webpki-roots) with TLS 1.2 or 1.3; redirects are never followed.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Result<HttpClient, SinkError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// One request, bounded by the timeout: an answer, or why there was none (`timeout`,
    /// `connect` or `transport`).
    pub async fn attempt(&self, request: Request<Full<Bytes>>) -> Result<Answer, &'static str> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return Err("timeout"),
            Ok(Err(error)) if error.is_connect() => return Err("connect"),
            Ok(Err(_)) => return Err("transport"),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The status is the answer; a body that is slow or broken only shortens what is kept.
        let body = tokio::time::timeout_at(deadline, read_start(response.into_body()))
            .await
            .unwrap_or_default();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

/// What to call things in logs: never a body, never a URL's query.
#[derive(Clone, Copy)]
pub struct Labels<'a> {
    pub topic: &'a str,
    pub event_id: &'a str,
}

/// Runs `attempt` until `judge` calls an answer delivered, refused, or the policy gives up, or
/// until `stop`. Never sleeps through `stop`: a stop during a backoff returns
/// [`Outcome::Stopped`] at once; an attempt in flight is let finish (it is bounded by its
/// timeout) so that its answer is not wasted.
pub async fn deliver_with<Attempt, Tried>(
    retry: &RetryPolicy,
    metrics: &DeliveryMetrics,
    labels: Labels<'_>,
    stop: &CancellationToken,
    judge: impl Fn(&Answer) -> Class,
    attempt: Attempt,
) -> Outcome
where
    Attempt: FnMut() -> Tried,
    Tried: std::future::Future<Output = Result<Answer, &'static str>>,
{
    let budget = Instant::now();
    deliver_within(retry, metrics, labels, stop, budget, judge, attempt).await
}

/// [`deliver_with`] within a retry budget that began at `budget`: a record sent again changed
/// (after [`Class::Amend`]) goes on with what its first request left of the budget.
pub async fn deliver_within<Attempt, Tried>(
    retry: &RetryPolicy,
    metrics: &DeliveryMetrics,
    labels: Labels<'_>,
    stop: &CancellationToken,
    budget: Instant,
    judge: impl Fn(&Answer) -> Class,
    mut attempt: Attempt,
) -> Outcome
where
    Attempt: FnMut() -> Tried,
    Tried: std::future::Future<Output = Result<Answer, &'static str>>,
{
    let Labels { topic, event_id } = labels;
    let started = budget;
    let mut retrying = None;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let attempt_started = Instant::now();
        let result = attempt().await;
        let took = attempt_started.elapsed();
        let (failure, retry_after) = match result {
            Ok(answer) => {
                let class = judge(&answer);
                let kind = match class {
                    Class::Delivered => {
                        metrics.attempt(AttemptOutcome::Delivered, took);
                        if attempts > 1 {
                            tracing::info!(topic, event_id, attempts, "Delivered after retrying.");
                        }
                        return Outcome::Delivered {
                            attempts,
                            response: answer.body,
                        };
                    }
                    Class::Permanent | Class::Amend => FailureKind::Rejected,
                    Class::Retryable => FailureKind::RetriesExhausted,
                };
                if class == Class::Amend {
                    // The caller sends it again changed, at once.
                    metrics.attempt(AttemptOutcome::Retry, took);
                    let mut excerpt = answer.body;
                    excerpt.truncate(RESPONSE_EXCERPT_BYTES);
                    return Outcome::Failed(Failure {
                        kind,
                        status: Some(answer.status),
                        error: None,
                        response: excerpt,
                        attempts,
                    });
                }
                let mut excerpt = answer.body;
                excerpt.truncate(RESPONSE_EXCERPT_BYTES);
                let failure = Failure {
                    kind,
                    status: Some(answer.status),
                    error: None,
                    response: excerpt,
                    attempts,
                };
                (failure, answer.retry_after)
            }
            Err(error) => {
                let failure = Failure {
                    kind: FailureKind::RetriesExhausted,
                    status: None,
                    error: Some(error),
                    response: Bytes::new(),
                    attempts,
                };
                (failure, None)
            }
        };
        let status = failure.status.map(|s| s.as_u16());
        let error = failure.error;
        if failure.kind == FailureKind::Rejected {
            metrics.attempt(AttemptOutcome::Permanent, took);
            tracing::warn!(
                topic,
                event_id,
                status,
                "The receiver refused a record for good."
            );
            return Outcome::Failed(failure);
        }
        let (wait, give_up) = match retry.plan(attempts, started.elapsed(), retry_after) {
            Plan::Retry(wait) => (wait, false),
            Plan::GiveUp(wait) => (wait, true),
        };
        retrying.get_or_insert_with(|| metrics.retrying());
        if give_up {
            metrics.attempt(AttemptOutcome::Exhausted, took);
            tracing::warn!(
                topic,
                event_id,
                attempts,
                status,
                error,
                ?wait,
                "Delivery failing past its retry budget; giving it up."
            );
        } else {
            metrics.attempt(AttemptOutcome::Retry, took);
            tracing::warn!(
                topic,
                event_id,
                attempts,
                status,
                error,
                ?wait,
                "Delivery failed; retrying."
            );
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return Outcome::Stopped,
        }
        if give_up {
            return Outcome::Failed(failure);
        }
    }
}

/// POSTs records to one endpoint. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct HttpSink {
    client: HttpClient,
    endpoint: Endpoint,
    secret: Option<Secret>,
    retry: RetryPolicy,
    metrics: DeliveryMetrics,
}

impl HttpSink {
    /// A sink for `config` (see [`HttpClient`] for TLS and redirects).
    pub fn new(config: &SinkConfig, metrics: DeliveryMetrics) -> Result<HttpSink, SinkError> {
        Ok(HttpSink {
            client: HttpClient::new(config.timeout)?,
            endpoint: config.endpoint.clone(),
            secret: config.secret.clone(),
            retry: config.retry,
            metrics,
        })
    }

    /// Delivers `outgoing`, retrying as the policy says (see [`deliver_with`]).
    pub async fn deliver(&self, outgoing: &Outgoing, stop: &CancellationToken) -> Outcome {
        let labels = Labels {
            topic: outgoing.topic(),
            event_id: outgoing.event_id(),
        };
        deliver_with(
            &self.retry,
            &self.metrics,
            labels,
            stop,
            |answer| classify(answer.status),
            || self.client.attempt(self.request(outgoing)),
        )
        .await
    }

    fn request(&self, outgoing: &Outgoing) -> Request<Full<Bytes>> {
        let mut request = Request::post(self.endpoint.uri().clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(TOPIC_HEADER, outgoing.topic.clone())
            .header(EVENT_ID_HEADER, outgoing.event_id.clone());
        if let Some(secret) = &self.secret {
            let mut signature =
                HeaderValue::from_str(&aftercart_shopify::sign(secret, &outgoing.body))
                    .expect("base64 is a valid header value");
            signature.set_sensitive(true);
            request = request.header(SIGNATURE_HEADER, signature);
        }
        request
            .body(Full::new(outgoing.body.clone()))
            .expect("the URL was validated and so were the header values")
    }
}

/// The first [`RESPONSE_BODY_BYTES`] of a body; the rest is not read.
async fn read_start(mut body: Incoming) -> Bytes {
    let mut kept = BytesMut::new();
    while kept.len() < RESPONSE_BODY_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    kept.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    kept.truncate(RESPONSE_BODY_BYTES);
    kept.freeze()
}

#[cfg(test)]
pub(crate) mod tests;

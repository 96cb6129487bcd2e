//! `POST /webhooks/shopify`: read the raw body, verify, dedupe, route, publish, answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aftercart_kafka::TopicNames;
use aftercart_runtime::health::Readiness;
use aftercart_shopify::{journey_key, Family, SecretId, Verifier, WebhookHeaders};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use rdkafka::producer::future_producer::DeliveryFuture;
use tokio::sync::oneshot;

use crate::dedupe::{Claim, ClaimGuard, Dedupe};
use crate::http::Reply;
use crate::metrics::IngressMetrics;
use crate::publish::{is_permanent, PublishError, Publisher, Record};
use crate::spool::{AppendResult, Rejection, Spool};

pub const WEBHOOK_PATH: &str = "/webhooks/shopify";

/// Family label for requests refused before their topic is known.
const UNKNOWN_FAMILY: &str = "unknown";

/// Everything a request needs, shared by all connections.
pub struct WebhookState {
    pub verifier: Verifier,
    pub publisher: Publisher,
    pub dedupe: Arc<Dedupe>,
    pub metrics: IngressMetrics,
    /// Set once the broker answered and the topics exist.
    pub kafka_ready: Readiness,
    pub topics: TopicNames,
    pub max_body_bytes: usize,
    pub publish_deadline: Duration,
    pub body_read_timeout: Duration,
    pub spool: SpoolState,
    /// How long to wait for Kafka before spooling instead.
    pub spool_after: Duration,
}

/// Whether events Kafka did not acknowledge in time can be spooled.
pub enum SpoolState {
    /// `AFTERCART_SPOOL_DIR=off`: such events get 503.
    Off,
    /// The spool could not be opened (the log said why): such events get 503.
    Failed,
    Ready(Spool),
}

impl SpoolState {
    pub fn ready(&self) -> Option<&Spool> {
        match self {
            SpoolState::Ready(spool) => Some(spool),
            _ => None,
        }
    }
}

/// Handles one request; never fails (every outcome is a `Reply`).
pub async fn handle(state: Arc<WebhookState>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    let _in_flight = state.metrics.in_flight();
    let (family, reply) = process(&state, request, arrived).await;
    state
        .metrics
        .answered(family, reply.status().as_u16(), arrived.elapsed());
    reply.into_response()
}

async fn process(
    state: &Arc<WebhookState>,
    request: Request<Incoming>,
    arrived: Instant,
) -> (&'static str, Reply) {
    if request.uri().path() != WEBHOOK_PATH {
        return (UNKNOWN_FAMILY, Reply::NotFound);
    }
    if request.method() != Method::POST {
        return (UNKNOWN_FAMILY, Reply::MethodNotAllowed);
    }
    // Before Kafka has answered, only a spool can make an event safe.
    if !state.kafka_ready.is_ready() && state.spool.ready().is_none() {
        return (
            UNKNOWN_FAMILY,
            Reply::Unavailable("the ingress is still connecting to Kafka"),
        );
    }
    let (parts, body) = request.into_parts();
    let headers = WebhookHeaders::from_header_map(&parts.headers);
    // Refuse a missing or malformed signature before buffering a body nobody signed.
    if let Err(error) = Verifier::precheck(headers.hmac()) {
        return unauthorized(state, error);
    }
    let body = match read_body(state, &parts.headers, body).await {
        Ok(body) => body,
        Err(reply) => return (UNKNOWN_FAMILY, reply),
    };
    let secret = match state
        .verifier
        .verify(headers.shop_domain(), headers.hmac(), &body)
    {
        Ok(secret) => secret,
        Err(error) => return unauthorized(state, error),
    };
    let (Some(topic), Some(shop), Some(webhook_id)) =
        (headers.topic(), headers.shop_domain(), headers.webhook_id())
    else {
        return (
            UNKNOWN_FAMILY,
            Reply::MissingHeader(missing_header(&headers)),
        );
    };
    let family = Family::of_topic(topic);
    let deadline = arrived + state.publish_deadline;
    if Instant::now() >= deadline {
        // The body arrived too late to be made safe in time: no record for an answer that is
        // already a 503.
        return (
            family.as_str(),
            Reply::Unavailable("the request took too long to arrive"),
        );
    }
    let webhook_id = webhook_id.to_string();
    let delivery = Delivery {
        shop: shop.to_ascii_lowercase(),
        headers,
        body,
        family,
        secret,
        arrived,
        deadline,
    };
    // The claim and the publish run in their own task: if the client goes away mid-publish this
    // request future is dropped, but the record is already in the producer, so the claim must
    // live until the delivery report settles it.
    let task = tokio::spawn(publish_once(Arc::clone(state), webhook_id, delivery));
    let reply = task
        .await
        .unwrap_or(Reply::Unavailable("the publish task failed"));
    (family.as_str(), reply)
}

fn unauthorized(
    state: &WebhookState,
    error: aftercart_shopify::SignatureError,
) -> (&'static str, Reply) {
    state.metrics.hmac_failure(error.as_label());
    (UNKNOWN_FAMILY, Reply::Unauthorized(error))
}

fn missing_header(headers: &WebhookHeaders) -> &'static str {
    if headers.topic().is_none() {
        "Shopify-Topic"
    } else if headers.shop_domain().is_none() {
        "Shopify-Shop-Domain"
    } else {
        "Shopify-Webhook-Id"
    }
}

/// An authentic delivery on its way to Kafka.
struct Delivery {
    headers: WebhookHeaders,
    body: Bytes,
    /// Lower-cased shop domain.
    shop: String,
    family: Family,
    secret: SecretId,
    arrived: Instant,
    deadline: Instant,
}

/// Publishes a delivery unless its webhook id was already published; a concurrent retry of the
/// same id waits for the first attempt rather than publishing twice.
async fn publish_once(state: Arc<WebhookState>, webhook_id: String, delivery: Delivery) -> Reply {
    let guard = loop {
        match state.dedupe.claim(&webhook_id) {
            Claim::New(guard) => break guard,
            Claim::Duplicate => {
                state.metrics.duplicate();
                return Reply::Duplicate;
            }
            Claim::InFlight(mut settled) => {
                // Wakes (with an error: the sender dropped) when the other attempt ends.
                if tokio::time::timeout_at(delivery.deadline.into(), settled.changed())
                    .await
                    .is_err()
                {
                    return Reply::Unavailable("the same delivery is still being published");
                }
            }
        }
    };
    let (reply, unsettled) = publish(&state, &delivery).await;
    finish_claim(&state, guard, reply, unsettled);
    reply
}

/// An event answered 503 that may still become safe: its delivery report, or its spool append,
/// is still to come.
enum Unsettled {
    Delivery(DeliveryFuture),
    Append(oneshot::Receiver<AppendResult>),
}

impl Unsettled {
    /// Whether the event became safe after all.
    async fn settled_safe(self) -> bool {
        match self {
            Unsettled::Delivery(delivery) => matches!(delivery.await, Ok(Ok(_))),
            Unsettled::Append(answer) => match answer.await {
                Ok(Ok(_)) => true,
                Ok(Err((_, Some(delivery)))) => matches!(delivery.await, Ok(Ok(_))),
                _ => false,
            },
        }
    }
}

/// Marks the id published when the record is safe, releases it otherwise; after a timeout the
/// outcome is still awaited in the background so a later retry is deduplicated.
fn finish_claim(
    state: &WebhookState,
    guard: ClaimGuard,
    reply: Reply,
    unsettled: Option<Unsettled>,
) {
    match (reply, unsettled) {
        (Reply::Accepted | Reply::Quarantined(_), _) => guard.commit(),
        (_, Some(unsettled)) => {
            let (dedupe, metrics) = (Arc::clone(&state.dedupe), state.metrics.clone());
            tokio::spawn(async move {
                if unsettled.settled_safe().await {
                    guard.commit();
                    metrics.dedupe_size(dedupe.len());
                }
            });
        }
        _ => drop(guard),
    }
    state.metrics.dedupe_size(state.dedupe.len());
}

async fn publish(state: &WebhookState, delivery: &Delivery) -> (Reply, Option<Unsettled>) {
    // One clock reading: the header, the record's Kafka timestamp and a spooled copy's (so a
    // record drained after an outage still carries the time it was received).
    let now = SystemTime::now();
    let received_at = humantime::format_rfc3339_millis(now).to_string();
    let received_unix_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secret = delivery.secret.to_string();
    let mut headers: Vec<(&str, &[u8])> = delivery.headers.iter().collect();
    headers.push(("aftercart-received-at", received_at.as_bytes()));
    headers.push(("aftercart-hmac-secret", secret.as_bytes()));

    let shop = delivery.shop.as_str();
    let (topic, key, reply) = match journey_key(delivery.family, shop, &delivery.body) {
        Ok(key) => (state.topics.family(delivery.family), key, Reply::Accepted),
        Err(error) => {
            headers.push(("aftercart-quarantine-reason", error.as_label().as_bytes()));
            (
                state.topics.quarantine(),
                shop.to_string(),
                Reply::Quarantined(error),
            )
        }
    };
    let record = Record {
        topic: &topic,
        key: &key,
        body: &delivery.body,
        headers,
        received_unix_ms,
    };
    let spool = state.spool.ready();
    // Arrival order: while older events wait in the spool, new ones queue behind them there.
    let (original, failure) = if spool.is_some_and(Spool::has_backlog) {
        (None, "older events are still waiting in the spool")
    } else if !state.kafka_ready.is_ready() {
        (None, "the ingress is still connecting to Kafka")
    } else {
        // With a spool, Kafka gets only part of the budget: the rest is for the fsync.
        let kafka_deadline = match spool {
            Some(_) => delivery.deadline.min(delivery.arrived + state.spool_after),
            None => delivery.deadline,
        };
        match state.publisher.publish(&record, kafka_deadline).await {
            Ok(()) => return (safe(state, delivery, reply), None),
            Err(PublishError::Timeout(pending)) => {
                (Some(pending.0), "Kafka did not acknowledge in time")
            }
            Err(PublishError::QueueFull) => (None, "the Kafka producer queue is full"),
            Err(PublishError::Kafka(error)) if is_permanent(&error) => {
                tracing::warn!(family = %delivery.family.as_str(), %error, "Answering 503: Kafka refuses the record.");
                return (Reply::Unavailable("Kafka refused the record"), None);
            }
            Err(PublishError::Kafka(_)) => (None, "Kafka refused the record"),
        }
    };
    let Some(spool) = spool else {
        let why = match state.spool {
            SpoolState::Off => Rejection::Disabled,
            _ => Rejection::DiskError,
        };
        state.metrics.spool.rejected(why);
        tracing::warn!(family = %delivery.family.as_str(), reason = failure, "Answering 503: the delivery is not safe in Kafka and there is no spool.");
        return (
            Reply::Unavailable(failure),
            original.map(Unsettled::Delivery),
        );
    };
    let mut answer = spool.append(record.to_spool(), original);
    match tokio::time::timeout_at(delivery.deadline.into(), &mut answer).await {
        Ok(Ok(Ok(_seq))) => (safe(state, delivery, reply), None),
        Ok(Ok(Err((error, original)))) => {
            state.metrics.spool.rejected(error.rejection());
            tracing::warn!(family = %delivery.family.as_str(), %error, "Answering 503: Kafka is not acknowledging and the spool cannot take the event.");
            (
                Reply::Unavailable(
                    "Kafka is not acknowledging and the spool cannot take the event",
                ),
                original.map(Unsettled::Delivery),
            )
        }
        Ok(Err(_writer_gone)) => {
            state.metrics.spool.rejected(Rejection::DiskError);
            (Reply::Unavailable("the spool is not running"), None)
        }
        Err(_elapsed) => {
            tracing::warn!(family = %delivery.family.as_str(), "Answering 503: the spool fsync did not finish in time.");
            (
                Reply::Unavailable("the spool did not make the event durable in time"),
                Some(Unsettled::Append(answer)),
            )
        }
    }
}

/// The answer for an event now safe (in Kafka or in the spool).
fn safe(state: &WebhookState, delivery: &Delivery, reply: Reply) -> Reply {
    if let Reply::Quarantined(error) = reply {
        state.metrics.quarantined(error.as_label());
        tracing::warn!(topic = %delivery.family.as_str(), reason = error.as_label(), "Quarantined an authentic delivery whose body is not a JSON object.");
    }
    reply
}

/// Reads the whole raw body, refusing early when Content-Length already exceeds the limit.
async fn read_body(
    state: &WebhookState,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Reply> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > state.max_body_bytes as u64) {
        return Err(Reply::PayloadTooLarge);
    }
    let collect = Limited::new(body, state.max_body_bytes).collect();
    match tokio::time::timeout(state.body_read_timeout, collect).await {
        Err(_elapsed) => Err(Reply::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Reply::PayloadTooLarge)
        }
        Ok(Err(_)) => Err(Reply::BodyUnreadable),
    }
}

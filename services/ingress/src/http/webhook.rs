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

use crate::dedupe::{Claim, ClaimGuard, Dedupe};
use crate::http::Reply;
use crate::metrics::IngressMetrics;
use crate::publish::{PublishError, Publisher, Record};

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
    if !state.kafka_ready.is_ready() {
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
    let (reply, error) = publish(&state, &delivery).await;
    finish_claim(&state, guard, reply, error);
    reply
}

/// Marks the id published when the record is safe, releases it otherwise; after a timeout the
/// delivery report is still awaited in the background so a later retry is deduplicated.
fn finish_claim(
    state: &WebhookState,
    guard: ClaimGuard,
    reply: Reply,
    error: Option<PublishError>,
) {
    match (reply, error) {
        (Reply::Accepted | Reply::Quarantined(_), _) => guard.commit(),
        (_, Some(PublishError::Timeout(pending))) => {
            let (dedupe, metrics) = (Arc::clone(&state.dedupe), state.metrics.clone());
            tokio::spawn(async move {
                if let Ok(Ok(_)) = pending.0.await {
                    guard.commit();
                    metrics.dedupe_size(dedupe.len());
                }
            });
        }
        _ => drop(guard),
    }
    state.metrics.dedupe_size(state.dedupe.len());
}

async fn publish(state: &WebhookState, delivery: &Delivery) -> (Reply, Option<PublishError>) {
    let received_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
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
    };
    match state.publisher.publish(record, delivery.deadline).await {
        Ok(()) => {
            if let Reply::Quarantined(error) = reply {
                state.metrics.quarantined(error.as_label());
                tracing::warn!(topic = %delivery.family.as_str(), reason = error.as_label(), "Quarantined an authentic delivery whose body is not a JSON object.");
            }
            (reply, None)
        }
        Err(error) => {
            let reason = match &error {
                PublishError::QueueFull => "the Kafka producer queue is full",
                PublishError::Timeout(_) => "Kafka did not acknowledge in time",
                PublishError::Kafka(_) => "Kafka refused the record",
            };
            tracing::warn!(family = %delivery.family.as_str(), %error, "Answering 503: the delivery is not safe in Kafka.");
            (Reply::Unavailable(reason), Some(error))
        }
    }
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

//! `POST /webhooks/shopify`: read the raw body, verify, dedupe, route, publish, answer.

use crate::events::{KafkaRefusedQuarantined, Quarantined};
use aftercart_runtime::Event as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aftercart_kafka::TopicNames;
use aftercart_runtime::health::Readiness;
use aftercart_shopify::{
    check_compliance_body, journey_key, Family, SecretId, Verifier, WebhookHeaders,
};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use rdkafka::producer::future_producer::DeliveryFuture;
use tokio::sync::oneshot;

use crate::dedupe::{Claim, ClaimGuard, Dedupe};
use crate::http::body::{read_body, BodyBudget, ReadBody, Reservation};
use crate::http::{Reply, Unavailable};
use crate::metrics::IngressMetrics;
use crate::publish::{classify, ErrorClass, PublishError, Publisher, Record};
use crate::readiness::KafkaHealth;
use crate::spool::{AppendError, AppendResult, Rejection, Spool};

pub const WEBHOOK_PATH: &str = "/webhooks/shopify";

/// Family label for requests refused before their topic is known.
pub(crate) const UNKNOWN_FAMILY: &str = "unknown";

/// Everything a request needs, shared by all connections.
pub struct WebhookState {
    pub verifier: Verifier,
    pub publisher: Publisher,
    pub dedupe: Arc<Dedupe>,
    pub metrics: IngressMetrics,
    /// Set once the broker answered and the topics exist.
    pub kafka_ready: Readiness,
    /// Whether Kafka takes records now (readiness, and when to go around a sick spool).
    pub kafka: Arc<KafkaHealth>,
    pub topics: TopicNames,
    pub max_body_bytes: usize,
    pub publish_deadline: Duration,
    pub body_read_timeout: Duration,
    /// Bytes all request bodies in flight may hold before their signature is checked.
    pub body_budget: Arc<BodyBudget>,
    pub spool: SpoolState,
    /// How long to wait for Kafka before spooling instead.
    pub spool_after: Duration,
}

/// Whether events Kafka did not acknowledge in time can be spooled.
pub enum SpoolState {
    /// `AFTERCART_INGRESS_SPOOL_DIR=off`: such events get 503.
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
    if let Some(reason) = reply.unavailable_reason() {
        state.metrics.unavailable(reason);
    }
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
    let (parts, body) = request.into_parts();
    let headers = WebhookHeaders::from_header_map(&parts.headers);
    // Refuse a missing or malformed signature before buffering a body nobody signed.
    if let Err(error) = Verifier::precheck(headers.hmac()) {
        return unauthorized(state, error);
    }
    let ReadBody {
        bytes: body,
        reservation,
    } = match read_body(
        &state.body_budget,
        &state.metrics,
        &parts.headers,
        body,
        state.max_body_bytes,
        state.body_read_timeout,
    )
    .await
    {
        Ok(read) => read,
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
    // Before Kafka has answered, only a spool can make an event safe. Checked after the
    // signature: a forged delivery is told 401 even now, not invited to retry.
    if !state.kafka_ready.is_ready() && state.spool.ready().is_none() {
        return (
            family.as_str(),
            Reply::Unavailable(Unavailable::KafkaConnecting),
        );
    }
    let deadline = arrived + state.publish_deadline;
    if Instant::now() >= deadline {
        // The body arrived too late to be made safe in time: no record for an answer that is
        // already a 503.
        return (
            family.as_str(),
            Reply::Unavailable(Unavailable::ArrivedLate),
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
        _budget: reservation,
    };
    // The claim and the publish run in their own task: if the client goes away mid-publish this
    // request future is dropped, but the record is already in the producer, so the claim must
    // live until the delivery report settles it.
    let task = tokio::spawn(publish_once(Arc::clone(state), webhook_id, delivery));
    let reply = task.await.unwrap_or_else(|error| {
        tracing::error!(%error, "The publish task ended without an answer.");
        Reply::Unavailable(Unavailable::Internal)
    });
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
    /// The body's share of the body budget, held as long as the body is.
    _budget: Reservation,
}

/// Publishes a delivery unless this shop's webhook id was already published; a concurrent retry
/// of the same delivery waits for the first attempt rather than publishing twice.
async fn publish_once(state: Arc<WebhookState>, webhook_id: String, delivery: Delivery) -> Reply {
    let guard = loop {
        match state.dedupe.claim(&delivery.shop, &webhook_id) {
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
                    return Reply::Unavailable(Unavailable::SameDeliveryInFlight);
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
    // The topic and shop headers are not signed: a compliance body must agree with them.
    let routed = journey_key(delivery.family, shop, &delivery.body).and_then(|key| {
        let topic = delivery.headers.topic().unwrap_or_default();
        check_compliance_body(topic, shop, &delivery.body).map(|()| key)
    });
    let (topic, key, reply) = match routed {
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
    // A sick spool (disk error, full) is gone around: Kafka is tried directly, and such an
    // event may overtake older ones of its key still in the spool (docs/services/ingress-spool.md).
    let backlog = spool.is_some_and(Spool::has_backlog);
    let trouble = spool.and_then(Spool::trouble);
    // Only while Kafka takes records: otherwise the spool's refusal is the quick answer.
    let go_around = trouble.is_some() && state.kafka.is_healthy();
    let (original, failure) = if backlog && !go_around {
        (None, "older events are still waiting in the spool")
    } else if !state.kafka_ready.is_ready() {
        (None, "the ingress is still connecting to Kafka")
    } else {
        // With a spool, Kafka gets only part of the budget: the rest is for the fsync (or, for
        // a sick spool, the quick refusal that lets Shopify retry).
        // A stalled spool cannot take the event in time either: Kafka gets the whole budget.
        let kafka_deadline = match (spool, trouble) {
            (_, Some(AppendError::Stalled)) | (None, _) => delivery.deadline,
            (Some(_), _) => delivery.deadline.min(delivery.arrived + state.spool_after),
        };
        match direct(state, delivery, &record, reply, kafka_deadline).await {
            Direct::Done(answer) => {
                if let (true, Some(error)) = (backlog, trouble) {
                    state.metrics.spool.bypassed(error.rejection());
                }
                return answer;
            }
            Direct::Failed(original, failure) => (original, failure),
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
            Reply::Unavailable(Unavailable::NoSpool(failure)),
            original.map(Unsettled::Delivery),
        );
    };
    let mut answer = spool.append(record.to_spool(), original);
    match tokio::time::timeout_at(delivery.deadline.into(), &mut answer).await {
        Ok(Ok(Ok(_seq))) => (safe(state, delivery, reply), None),
        Ok(Ok(Err((error, None)))) if state.kafka.is_healthy() => {
            // Nothing of this event is in flight to Kafka (it queued behind the backlog):
            // the spool cannot take it, so Kafka may, for as long as it normally gets.
            let kafka_deadline = delivery.deadline.min(Instant::now() + state.spool_after);
            match direct(state, delivery, &record, reply, kafka_deadline).await {
                Direct::Done(answer) => {
                    state.metrics.spool.bypassed(error.rejection());
                    answer
                }
                Direct::Failed(original, _) => {
                    state.metrics.spool.rejected(error.rejection());
                    tracing::warn!(family = %delivery.family.as_str(), %error, "Answering 503: the spool cannot take the event and Kafka did not either.");
                    (
                        Reply::Unavailable(Unavailable::SpoolRefused(
                            "the spool cannot take the event and Kafka did not either",
                        )),
                        original.map(Unsettled::Delivery),
                    )
                }
            }
        }
        Ok(Ok(Err((error, original)))) => {
            state.metrics.spool.rejected(error.rejection());
            tracing::warn!(family = %delivery.family.as_str(), %error, "Answering 503: Kafka is not acknowledging and the spool cannot take the event.");
            (
                Reply::Unavailable(Unavailable::SpoolRefused(
                    "Kafka is not acknowledging and the spool cannot take the event",
                )),
                original.map(Unsettled::Delivery),
            )
        }
        Ok(Err(_writer_gone)) => {
            state.metrics.spool.rejected(Rejection::DiskError);
            (
                Reply::Unavailable(Unavailable::SpoolRefused("the spool is not running")),
                None,
            )
        }
        Err(_elapsed) => {
            tracing::warn!(family = %delivery.family.as_str(), "Answering 503: the spool fsync did not finish in time.");
            (
                Reply::Unavailable(Unavailable::SpoolFsyncTimeout),
                Some(Unsettled::Append(answer)),
            )
        }
    }
}

/// How a direct publish ended.
enum Direct {
    /// Answered: in Kafka (or its quarantine topic), or refused for good.
    Done((Reply, Option<Unsettled>)),
    /// Not in Kafka yet; the spool may still take it. The delivery, if still in flight.
    Failed(Option<DeliveryFuture>, &'static str),
}

/// Publishes straight to Kafka until `deadline`, telling the Kafka health what happened.
async fn direct(
    state: &WebhookState,
    delivery: &Delivery,
    record: &Record<'_>,
    reply: Reply,
    deadline: Instant,
) -> Direct {
    let error = match state.publisher.publish(record, deadline).await {
        Ok(()) => {
            state.kafka.succeeded();
            return Direct::Done((safe(state, delivery, reply), None));
        }
        Err(error) => error,
    };
    match error {
        PublishError::Timeout(pending) => {
            state.kafka.failed();
            Direct::Failed(Some(pending.0), "Kafka did not acknowledge in time")
        }
        PublishError::QueueFull => {
            state.kafka.failed();
            Direct::Failed(None, "the Kafka producer queue is full")
        }
        PublishError::Kafka(error) => match classify(&error) {
            ErrorClass::Permanent => {
                Direct::Done(quarantine_refused(state, delivery, record, &error).await)
            }
            ErrorClass::Authorization => {
                state.kafka.failed();
                tracing::error!(family = %delivery.family.as_str(), %error, "Kafka refuses the ingress's credentials or ACLs: keeping the event in the spool until an operator fixes them.");
                Direct::Failed(None, "Kafka refuses the ingress's credentials")
            }
            ErrorClass::Retriable => {
                state.kafka.failed();
                Direct::Failed(None, "Kafka refused the record")
            }
        },
    }
}

/// Why a record Kafka refused for good was published to the quarantine topic.
pub const KAFKA_REFUSED: &str = KafkaRefusedQuarantined::REASON;

/// A record Kafka refuses for good (too large for the topic, invalid) would be refused on every
/// retry: a copy goes to the quarantine topic and the delivery is answered 200, instead of a
/// 503 that Shopify would retry until it gives up.
async fn quarantine_refused(
    state: &WebhookState,
    delivery: &Delivery,
    record: &Record<'_>,
    error: &rdkafka::error::KafkaError,
) -> (Reply, Option<Unsettled>) {
    let topic = state.topics.quarantine();
    let mut headers = record.headers.clone();
    headers.push(("aftercart-quarantine-reason", KAFKA_REFUSED.as_bytes()));
    let copy = Record {
        topic: &topic,
        key: record.key,
        body: record.body,
        headers,
        received_unix_ms: record.received_unix_ms,
    };
    match state.publisher.publish(&copy, delivery.deadline).await {
        Ok(()) => {
            KafkaRefusedQuarantined {
                family: delivery.family.as_str(),
                error,
            }
            .emit(&state.metrics);
            (Reply::Accepted, None)
        }
        Err(_) => {
            tracing::warn!(family = %delivery.family.as_str(), %error, "Answering 503: Kafka refuses the record and its quarantine copy.");
            (Reply::Unavailable(Unavailable::KafkaRefused), None)
        }
    }
}

/// The answer for an event now safe (in Kafka or in the spool).
fn safe(state: &WebhookState, delivery: &Delivery, reply: Reply) -> Reply {
    if let Reply::Quarantined(error) = reply {
        Quarantined {
            family: delivery.family.as_str(),
            reason: error.as_label(),
        }
        .emit(&state.metrics);
    }
    reply
}

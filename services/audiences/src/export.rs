//! The exporter of one destination: a [`RecordSink`] that sends each batch record of that
//! destination (others are skipped) in the destination's own format, retrying 408/425/429/5xx
//! and timeouts with backoff and jitter and honouring `Retry-After`. It runs under the delivery
//! crate's forwarder, so an offset is stored only once its batch is accepted or dead-lettered,
//! and a batch re-sent after a crash carries the same batch id (the idempotency key).

pub mod file;
pub mod oauth;

use std::time::{Duration, Instant};

use aftercart_delivery::retry::Class;
use aftercart_delivery::{
    deliver_with, Answer, Failure, FailureKind, HttpClient, HttpSink, Labels, Outcome, Outgoing,
    RecordSink, RetryPolicy, SinkError,
};
use aftercart_runtime::Event as _;
use bytes::Bytes;
use http_body_util::Full;
use rdkafka::message::{Message, OwnedMessage};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Destination, GoogleAuth};
use crate::domain::batch::Batch;
use crate::domain::consent::AdConsent;
use crate::events::{BatchDeadLettered, BatchExported, MembersRefused};
use crate::metrics::AudiencesMetrics;
use crate::platform::{
    datamanager, google, meta, tiktok, BuildError, Judgement, Op, Request, Secret,
};
use file::FileWriter;

/// Google access tokens fetched as the destination's credential says, cached until shortly
/// before they expire.
struct GoogleTokens {
    auth: GoogleAuth,
    /// The scope asked for by service accounts and the metadata server.
    scope: &'static str,
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl GoogleTokens {
    fn new(auth: &GoogleAuth, scope: &'static str) -> Option<GoogleTokens> {
        (!matches!(auth, GoogleAuth::Fixed)).then(|| GoogleTokens {
            auth: auth.clone(),
            scope,
            cached: tokio::sync::Mutex::new(None),
        })
    }
}

/// How long before its expiry a token is renewed.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

/// How a destination is reached (one per exporter: variant sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Channel {
    Meta(meta::Target),
    Google(datamanager::Target, Option<GoogleTokens>),
    GoogleAdsLegacy(google::Target, Option<GoogleTokens>),
    Tiktok(tiktok::Target),
    File(FileWriter),
    Webhook(Box<HttpSink>),
}

pub struct Exporter {
    name: String,
    channel: Channel,
    client: HttpClient,
    /// Additions: given up (dead-lettered) after the configured budget.
    retry: RetryPolicy,
    /// Removals: the same backoff, no time budget (see [`Exporter::remove`]).
    removal_retry: RetryPolicy,
    metrics: AudiencesMetrics,
}

/// What an answer means for the batch. A credential or permission problem (401, 403, Meta's
/// expired-token code 190) is an outage to fix, not bad data: it is retried (the retries and
/// lag alerts fire) rather than dead-lettered, so a removal is not given up while ops renew a
/// token.
fn class_of(status: http::StatusCode, body: &[u8], judgement: Judgement) -> Class {
    // Only a refusal is looked at again: accepted answers are not parsed twice.
    let auth = || {
        status == http::StatusCode::UNAUTHORIZED
            || status == http::StatusCode::FORBIDDEN
            || serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"]["code"].as_i64())
                == Some(META_EXPIRED_TOKEN)
    };
    match judgement {
        Judgement::Accepted(_) => Class::Delivered,
        Judgement::Retry => Class::Retryable,
        Judgement::Reject if auth() => Class::Retryable,
        Judgement::Reject => Class::Permanent,
    }
}

/// The time budget of a removal: none (about 136 years, which `Instant` arithmetic tolerates).
const NO_BUDGET: Duration = Duration::from_secs(u32::MAX as u64);

/// How often the age of a waiting removal is refreshed.
const PENDING_GAUGE_EVERY: Duration = Duration::from_secs(5);

/// Meta's "invalid or expired access token" error code.
const META_EXPIRED_TOKEN: i64 = 190;

/// A refusal decided before sending (a batch the codec cannot turn into a request).
fn refused(error: &str) -> Outcome {
    Outcome::Failed(Failure {
        kind: FailureKind::Rejected,
        status: None,
        error: None,
        response: Bytes::copy_from_slice(error.as_bytes()),
        attempts: 0,
    })
}

fn to_http(request: Request) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::builder()
        .method(request.method)
        .uri(request.url)
        .header(
            http::header::USER_AGENT,
            aftercart_delivery::sink::USER_AGENT_VALUE,
        );
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(request.body))
        .expect("the codecs build valid requests")
}

/// The webhook body: the batch with each member's plain row flattened in.
#[derive(Serialize)]
struct WebhookBatch<'a> {
    batch_id: &'a str,
    shop: &'a str,
    audience: &'a str,
    op: crate::platform::Op,
    created_at: &'a str,
    members: Vec<serde_json::Value>,
}

/// A member as the file and webhook destinations show it: shop, person, customer id, hashes.
pub fn plain_member(batch: &Batch, member: &crate::domain::batch::Member) -> serde_json::Value {
    let mut value = serde_json::json!({
        "shop": batch.shop,
        "person": member.person,
        "customer_id": member.customer_id,
    });
    if let (Some(object), Some(row)) = (value.as_object_mut(), member.row.as_object()) {
        for (key, field) in row {
            object.insert(key.clone(), field.clone());
        }
    }
    value
}

impl Exporter {
    pub fn new(
        name: &str,
        destination: &Destination,
        timeout: std::time::Duration,
        retry: RetryPolicy,
        metrics: AudiencesMetrics,
    ) -> Result<Exporter, SinkError> {
        let channel = match destination {
            Destination::Meta(target) => Channel::Meta(target.clone()),
            Destination::Google(target, auth) => Channel::Google(
                target.clone(),
                GoogleTokens::new(auth, oauth::DATAMANAGER_SCOPE),
            ),
            Destination::GoogleAdsLegacy(target, auth) => Channel::GoogleAdsLegacy(
                target.clone(),
                GoogleTokens::new(auth, "https://www.googleapis.com/auth/adwords"),
            ),
            Destination::Tiktok(target) => Channel::Tiktok(target.clone()),
            Destination::File(options) => Channel::File(FileWriter::new(options.clone())),
            Destination::Webhook(sink) => {
                Channel::Webhook(Box::new(HttpSink::new(sink, metrics.http.clone())?))
            }
        };
        Ok(Exporter {
            name: name.to_string(),
            channel,
            client: HttpClient::new(timeout)?,
            retry,
            removal_retry: RetryPolicy {
                max_duration: NO_BUDGET,
                ..retry
            },
            metrics,
        })
    }

    fn policy(&self, op: Op) -> &RetryPolicy {
        match op {
            Op::Add => &self.retry,
            Op::Remove => &self.removal_retry,
        }
    }

    /// Sends a removal until the destination confirms it: it is never dead-lettered, as a
    /// person left at a platform after revoking consent or being redacted cannot be fixed
    /// later. A refusal (a 4xx, a credential problem, a request that cannot be built) is tried
    /// again after the capped backoff, so a fixed configuration or a recovered platform
    /// completes it. While it waits, the pending-removal gauges show how many people and for
    /// how long (the `AudiencesRemovalsPending` alert), and the batch's offset is not stored:
    /// the removal survives a restart.
    async fn remove(&self, batch: &Batch, topic: &str, stop: &CancellationToken) -> Outcome {
        let people = batch.members.len();
        let started = Instant::now();
        let mut refusals = 0u32;
        let mut gauge = tokio::time::interval(PENDING_GAUGE_EVERY);
        let outcome = loop {
            let attempt = self.export(batch, topic, stop);
            tokio::pin!(attempt);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut attempt => break outcome,
                    _ = gauge.tick() => {
                        self.metrics.pending_removal(&self.name, people, Some(started.elapsed()));
                    }
                }
            };
            let Outcome::Failed(failure) = outcome else {
                break outcome;
            };
            refusals = refusals.saturating_add(1);
            let pause = self.removal_retry.ceiling(refusals);
            self.metrics
                .pending_removal(&self.name, people, Some(started.elapsed()));
            tracing::warn!(destination = %self.name, audience = %batch.audience, batch_id = %batch.batch_id, people, refusals, waited_s = started.elapsed().as_secs(), ?pause, reason = %failure.reason(), "A destination refused a removal; it is retried until the destination confirms it, never dead-lettered.");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => break Outcome::Stopped,
            }
        };
        self.metrics.pending_removal(&self.name, 0, None);
        outcome
    }

    /// Wraps an attempt so that every try after the first counts as a retry of this
    /// destination when it is made: an outage shows while it lasts, not when the batch ends.
    fn counted<F, Fut>(&self, mut attempt: F) -> impl FnMut() -> Fut
    where
        F: FnMut() -> Fut,
    {
        let retries = self.metrics.retries_of(&self.name);
        let mut tried = false;
        move || {
            if std::mem::replace(&mut tried, true) {
                retries.inc();
            }
            attempt()
        }
    }

    /// Sends `request` until the platform's `judge` accepts or refuses it.
    async fn send(
        &self,
        request: Result<Request, BuildError>,
        judge: fn(http::StatusCode, &[u8]) -> Judgement,
        batch: &Batch,
        stop: &CancellationToken,
    ) -> Outcome {
        let request = match request {
            Ok(request) => request,
            Err(error) => return refused(&format!("cannot build the request: {error}")),
        };
        let labels = Labels {
            topic: &self.name,
            event_id: &batch.batch_id,
        };
        deliver_with(
            self.policy(batch.op),
            &self.metrics.http,
            labels,
            stop,
            |answer: &Answer| {
                class_of(
                    answer.status,
                    &answer.body,
                    judge(answer.status, &answer.body),
                )
            },
            self.counted(|| self.client.attempt(to_http(request.clone()))),
        )
        .await
    }

    /// The batch's rows.
    fn rows(batch: &Batch) -> Vec<serde_json::Value> {
        batch.members.iter().map(|m| m.row.clone()).collect()
    }

    /// The batch's consent signals, member by member (Google destinations' additions).
    fn consents(batch: &Batch) -> Vec<Option<AdConsent>> {
        batch.members.iter().map(|m| m.consent).collect()
    }

    async fn export(&self, batch: &Batch, topic: &str, stop: &CancellationToken) -> Outcome {
        let id = batch.batch_id.as_str();
        match &self.channel {
            Channel::Meta(target) => {
                let request = meta::request(target, batch.op, &Self::rows(batch), id);
                self.send(request, meta::judge, batch, stop).await
            }
            Channel::Tiktok(target) => {
                let request = tiktok::request(target, batch.op, &Self::rows(batch), id);
                self.send(request, tiktok::judge, batch, stop).await
            }
            Channel::Google(target, tokens) => {
                self.datamanager(target, tokens.as_ref(), batch, stop).await
            }
            Channel::GoogleAdsLegacy(target, tokens) => {
                self.google(target, tokens.as_ref(), batch, stop).await
            }
            Channel::Webhook(sink) => {
                let body = WebhookBatch {
                    batch_id: id,
                    shop: &batch.shop,
                    audience: &batch.audience,
                    op: batch.op,
                    created_at: &batch.created_at,
                    members: batch
                        .members
                        .iter()
                        .map(|m| plain_member(batch, m))
                        .collect(),
                };
                let body = serde_json::to_vec(&body).expect("batches serialise");
                let outgoing = Outgoing::new(Bytes::from(body), id, topic)
                    .expect("batch ids and topic names are valid header values");
                let outcome = sink.deliver(&outgoing, stop).await;
                let attempts = match &outcome {
                    Outcome::Delivered { attempts, .. } => *attempts,
                    Outcome::Failed(failure) => failure.attempts,
                    Outcome::Stopped | Outcome::Skipped => 0,
                };
                // The HTTP sink retries inside: its retries are known once it returns.
                self.metrics
                    .retries_of(&self.name)
                    .inc_by(u64::from(attempts.saturating_sub(1)));
                outcome
            }
            Channel::File(writer) => {
                let labels = Labels {
                    topic: &self.name,
                    event_id: id,
                };
                // A disk error is retried like an outage: the batch is never dropped for it.
                deliver_with(
                    self.policy(batch.op),
                    &self.metrics.http,
                    labels,
                    stop,
                    |answer: &Answer| aftercart_delivery::retry::classify(answer.status),
                    self.counted(|| writer.write(batch.clone())),
                )
                .await
            }
        }
    }

    /// A current Google access token: the cached one, or a new one from the token endpoint.
    /// `Err` (retried like an outage) when the endpoint does not give one.
    async fn google_token(&self, tokens: &GoogleTokens) -> Result<Secret, &'static str> {
        let mut cached = tokens.cached.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let request =
            oauth::token_request(&tokens.auth, tokens.scope, now).ok_or("token_request")?;
        let answer = self.client.attempt(request).await?;
        let parsed = serde_json::from_slice::<TokenAnswer>(&answer.body)
            .ok()
            .filter(|_| answer.status.is_success());
        let Some(parsed) = parsed else {
            tracing::warn!(destination = %self.name, status = answer.status.as_u16(), "Google did not give an access token; retrying.");
            return Err("token_refresh");
        };
        let lifetime = Duration::from_secs(parsed.expires_in).saturating_sub(TOKEN_MARGIN);
        let token = Secret::new(parsed.access_token);
        *cached = Some((
            token.clone(),
            Instant::now() + lifetime.max(Duration::from_secs(30)),
        ));
        Ok(token)
    }

    /// One Customer Match step, built afresh for every attempt with a current access token
    /// (a 401 drops the cached token, so the next attempt fetches a new one).
    async fn google_step<T: Clone + GoogleTarget>(
        &self,
        target: &T,
        tokens: Option<&GoogleTokens>,
        build: impl Fn(&T) -> Result<Request, BuildError>,
        judge: fn(http::StatusCode, &[u8]) -> Judgement,
        batch: &Batch,
        stop: &CancellationToken,
    ) -> Outcome {
        if let Err(error) = build(target) {
            return refused(&format!("cannot build the request: {error}"));
        }
        let labels = Labels {
            topic: &self.name,
            event_id: &batch.batch_id,
        };
        let build = &build;
        deliver_with(
            self.policy(batch.op),
            &self.metrics.http,
            labels,
            stop,
            |answer: &Answer| {
                class_of(
                    answer.status,
                    &answer.body,
                    judge(answer.status, &answer.body),
                )
            },
            self.counted(|| async move {
                let mut target = target.clone();
                if let Some(tokens) = tokens {
                    target.set_token(self.google_token(tokens).await?);
                }
                let request = build(&target).map_err(|_| "build")?;
                let answer = self.client.attempt(to_http(request)).await?;
                if let (Some(tokens), http::StatusCode::UNAUTHORIZED) = (tokens, answer.status) {
                    *tokens.cached.lock().await = None;
                }
                Ok(answer)
            }),
        )
        .await
    }

    /// Customer Match: create a job, add the operations, run it. Each step is retried on its
    /// own; a crash mid-way leaves an unrun job behind (harmless) and the batch is sent again.
    async fn google(
        &self,
        target: &google::Target,
        tokens: Option<&GoogleTokens>,
        batch: &Batch,
        stop: &CancellationToken,
    ) -> Outcome {
        let id = batch.batch_id.as_str();
        let create = |t: &google::Target| google::create_job(t, id);
        let created = self
            .google_step(target, tokens, create, google::judge, batch, stop)
            .await;
        let Outcome::Delivered {
            attempts: first,
            response,
        } = created
        else {
            return created;
        };
        let job = serde_json::from_slice(&response)
            .ok()
            .as_ref()
            .and_then(google::job_name);
        let Some(job) = job else {
            return refused("the job was created but its answer names no resourceName");
        };
        let rows = Self::rows(batch);
        let consents = Self::consents(batch);
        let operations =
            |t: &google::Target| google::add_operations(t, &job, batch.op, &rows, &consents, id);
        let added = self
            .google_step(target, tokens, operations, google::judge, batch, stop)
            .await;
        let Outcome::Delivered {
            attempts: second, ..
        } = added
        else {
            return added;
        };
        let run = |t: &google::Target| google::run_job(t, &job, id);
        match self
            .google_step(target, tokens, run, google::judge, batch, stop)
            .await
        {
            Outcome::Delivered { attempts, response } => Outcome::Delivered {
                attempts: first + second + attempts - 2,
                response,
            },
            other => other,
        }
    }
    /// Data Manager: one ingest or remove request of the batch. Members the answer names
    /// (`fieldWarnings`, or the `fieldViolations` of a refusal) are counted, never taken as
    /// sent: a refusal naming some members is sent once more without them, so one bad member
    /// does not hold back the rest, and the batch is dead-lettered if that fails too.
    async fn datamanager(
        &self,
        target: &datamanager::Target,
        tokens: Option<&GoogleTokens>,
        batch: &Batch,
        stop: &CancellationToken,
    ) -> Outcome {
        let id = batch.batch_id.as_str();
        let mut rows = Self::rows(batch);
        let mut consents = Self::consents(batch);
        let mut outcome = Outcome::Stopped;
        for _ in 0..2 {
            let request =
                |t: &datamanager::Target| datamanager::request(t, batch.op, &rows, &consents, id);
            outcome = self
                .google_step(target, tokens, request, datamanager::judge, batch, stop)
                .await;
            let (answer, refused) = match &outcome {
                Outcome::Delivered { response, .. } => (response.clone(), false),
                Outcome::Failed(failure) => (failure.response.clone(), true),
                Outcome::Stopped | Outcome::Skipped => return outcome,
            };
            let named: Vec<usize> = serde_json::from_slice(&answer)
                .map(|a| datamanager::member_problems(&a))
                .unwrap_or_default()
                .into_iter()
                .filter(|i| *i < rows.len())
                .collect();
            if !named.is_empty() {
                MembersRefused {
                    destination: &self.name,
                    batch,
                    members: named.len(),
                    refused,
                }
                .emit(&self.metrics);
            }
            if !refused || named.is_empty() || named.len() == rows.len() {
                return outcome;
            }
            rows = without(rows, &named);
            consents = without(consents, &named);
        }
        outcome
    }
}

/// `items` without those at the `named` indexes.
fn without<T>(items: Vec<T>, named: &[usize]) -> Vec<T> {
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !named.contains(i))
        .map(|(_, item)| item)
        .collect()
}

/// A Google target whose access token is replaced per request.
trait GoogleTarget {
    fn set_token(&mut self, token: Secret);
}

impl GoogleTarget for google::Target {
    fn set_token(&mut self, token: Secret) {
        self.access_token = token;
    }
}

impl GoogleTarget for datamanager::Target {
    fn set_token(&mut self, token: Secret) {
        self.access_token = token;
    }
}

impl RecordSink for Exporter {
    async fn deliver(&self, message: &OwnedMessage, stop: &CancellationToken) -> Outcome {
        let payload = message.payload().unwrap_or_default();
        let batch: Batch = match serde_json::from_slice(payload) {
            Ok(batch) => batch,
            Err(error) => return refused(&format!("not an export batch: {error}")),
        };
        if batch.destination != self.name {
            // Another destination's batch: its own exporter sends it.
            return Outcome::Delivered {
                attempts: 0,
                response: Bytes::new(),
            };
        }
        // Names become file paths and header values: only what the engine writes is taken.
        if !batch.is_well_formed() {
            return refused("the batch id or audience name is not well formed");
        }
        let started = Instant::now();
        let outcome = match batch.op {
            Op::Add => self.export(&batch, message.topic(), stop).await,
            Op::Remove => self.remove(&batch, message.topic(), stop).await,
        };
        match &outcome {
            Outcome::Delivered { .. } => BatchExported {
                destination: &self.name,
                batch: &batch,
                took: started.elapsed(),
            }
            .emit(&self.metrics),
            Outcome::Failed(failure) => BatchDeadLettered {
                destination: &self.name,
                batch: &batch,
                took: started.elapsed(),
                reason: &failure.reason(),
            }
            .emit(&self.metrics),
            Outcome::Stopped | Outcome::Skipped => {}
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_problems_are_retried_and_bad_requests_refused() {
        let judge = |status: u16, body: &str| {
            let status = http::StatusCode::from_u16(status).unwrap();
            class_of(
                status,
                body.as_bytes(),
                meta::judge(status, body.as_bytes()),
            )
        };
        assert_eq!(judge(401, "{}"), Class::Retryable);
        assert_eq!(judge(403, "{}"), Class::Retryable);
        assert_eq!(
            judge(400, r#"{"error":{"code":190,"message":"expired"}}"#),
            Class::Retryable
        );
        assert_eq!(
            judge(
                400,
                r#"{"error":{"code":100,"message":"invalid parameter"}}"#
            ),
            Class::Permanent
        );
        assert_eq!(judge(200, "{}"), Class::Delivered);
        assert_eq!(judge(503, ""), Class::Retryable);
    }
}

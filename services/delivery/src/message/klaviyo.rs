//! Klaviyo's Events API: `POST {base}/api/events` with `Authorization: Klaviyo-API-Key <shop's
//! private key>` and the `revision` header, one event per message on the person's profile
//! (email, phone, external id), so the merchant's Klaviyo flow triggered by the metric sends it.
//!
//! Klaviyo answers 202 to an accepted event. As Klaviyo documents, 429 (rate limited, with
//! `Retry-After`) and 5xx are retried with exponential backoff; `Retry-After` is a floor. 400
//! (a malformed event), 401/403 (a wrong or revoked key) and other 4xx are refused for good and
//! dead-lettered: a late reminder is worse than none, and the destination-refusing alert names
//! the shop's key problem. One 400 is sent again at once: a refused phone number (Klaviyo takes
//! E.164 numbers it can place, and refuses the whole event for another) when the profile has
//! an email or an external id to go on, without the phone, so one bad number does not cost the
//! reminder. The message's `event_id` is the event's `unique_id`, so an event sent again after
//! a crash is deduplicated by Klaviyo.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use super::{refused, DestinationError, Message};
use crate::config::Endpoint;
use crate::metrics::DeliveryMetrics;
use crate::retry::{classify, Class, RetryPolicy};
use crate::shop_keys::ShopKeys;
use crate::sink::{deliver_within, HttpClient, Labels, Outcome, USER_AGENT_VALUE};

/// Klaviyo's API host.
pub const BASE_URL: &str = "https://a.klaviyo.com";
/// The API revision the request body follows (the `revision` header).
pub const REVISION: &str = "2026-10-15";

/// A validated Klaviyo destination.
#[derive(Debug, Clone)]
pub struct KlaviyoConfig {
    /// `shop.myshopify.com=pk_…` lines: each shop's Klaviyo private API key.
    pub keys_file: PathBuf,
    /// `https://a.klaviyo.com`, or a stand-in for tests.
    pub base_url: String,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

pub struct KlaviyoDestination {
    client: HttpClient,
    events_url: http::Uri,
    keys: Arc<ShopKeys>,
    retry: RetryPolicy,
    metrics: DeliveryMetrics,
}

impl KlaviyoDestination {
    pub fn new(
        config: &KlaviyoConfig,
        metrics: DeliveryMetrics,
    ) -> Result<KlaviyoDestination, DestinationError> {
        let base = Endpoint::parse(&config.base_url).map_err(DestinationError::BaseUrl)?;
        let events_url = format!(
            "{}/api/events",
            base.uri().to_string().trim_end_matches('/')
        )
        .parse()
        .map_err(|_| DestinationError::BaseUrl("is not a URL".into()))?;
        let keys = ShopKeys::open(&config.keys_file).map_err(|error| DestinationError::Keys {
            path: config.keys_file.clone(),
            error,
        })?;
        Ok(KlaviyoDestination {
            client: HttpClient::new(config.timeout)?,
            events_url,
            keys: Arc::new(keys),
            retry: config.retry,
            metrics,
        })
    }

    pub async fn send(&self, message: &Message, stop: &CancellationToken) -> Outcome {
        let Some(key) = self.keys.get(&message.shop) else {
            tracing::warn!(
                shop = %message.shop,
                event_id = %message.event_id,
                "No Klaviyo key for the shop; refusing the message."
            );
            return refused("no Klaviyo key for the shop");
        };
        if message.profile.is_empty() {
            return refused("the message has no email, phone or customer id");
        }
        let Ok(mut authorization) =
            HeaderValue::from_str(&format!("Klaviyo-API-Key {}", key.expose()))
        else {
            return refused("the shop's Klaviyo key is not a valid header value");
        };
        authorization.set_sensitive(true);
        let budget = Instant::now();
        // Without the phone, an email or the customer id must still name the person.
        let may_drop_phone = message.profile.phone.is_some()
            && (message.profile.email.is_some() || message.profile.external_id.is_some());
        let outcome = self
            .post(message, &authorization, stop, budget, may_drop_phone)
            .await;
        if may_drop_phone && refused_phone(&outcome) {
            if stop.is_cancelled() {
                // Sent again without the phone after the restart, not dead-lettered now.
                return Outcome::Stopped;
            }
            tracing::warn!(
                shop = %message.shop,
                event_id = %message.event_id,
                "Klaviyo refused the profile's phone number; sending the event without it."
            );
            let mut without_phone = message.clone();
            without_phone.profile.phone = None;
            return self
                .post(&without_phone, &authorization, stop, budget, false)
                .await;
        }
        outcome
    }

    /// One event, retried as [`deliver_with`] does within the budget that began at `budget`.
    /// With `may_drop_phone`, a 400 about the phone alone ends it at once as a try another
    /// follows ([`Class::Amend`]), for [`Self::send`] to send the event without it.
    async fn post(
        &self,
        message: &Message,
        authorization: &HeaderValue,
        stop: &CancellationToken,
        budget: Instant,
        may_drop_phone: bool,
    ) -> Outcome {
        let body = Bytes::from(event_body(message).to_string());
        let labels = Labels {
            topic: &message.topic,
            event_id: &message.event_id,
        };
        deliver_within(
            &self.retry,
            &self.metrics,
            labels,
            stop,
            budget,
            |answer| match classify(answer.status) {
                Class::Permanent
                    if may_drop_phone && phone_alone_refused(answer.status, &answer.body) =>
                {
                    Class::Amend
                }
                class => class,
            },
            || {
                let request = Request::post(self.events_url.clone())
                    .header(CONTENT_TYPE, "application/vnd.api+json")
                    .header(ACCEPT, "application/vnd.api+json")
                    .header("revision", REVISION)
                    .header(USER_AGENT, USER_AGENT_VALUE)
                    .header(AUTHORIZATION, authorization.clone())
                    .body(Full::new(body.clone()))
                    .expect("the URL and headers were validated");
                self.client.attempt(request)
            },
        )
        .await
    }
}

/// A 400 whose errors all point at the profile's phone number (Klaviyo's JSON:API errors name
/// their field in `source.pointer`): without the phone the event is then well formed.
fn refused_phone(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Failed(failure) => failure
            .status
            .is_some_and(|status| phone_alone_refused(status, &failure.response)),
        _ => false,
    }
}

/// Whether an answer is a 400 whose errors all point at the profile's phone number.
fn phone_alone_refused(status: http::StatusCode, body: &[u8]) -> bool {
    if status != http::StatusCode::BAD_REQUEST {
        return false;
    }
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    answer["errors"].as_array().is_some_and(|errors| {
        !errors.is_empty()
            && errors
                .iter()
                .all(|error| error["source"]["pointer"].as_str() == Some(PHONE_POINTER))
    })
}

/// Where in an event's body the profile's phone number is.
const PHONE_POINTER: &str = "/data/attributes/profile/data/attributes/phone_number";

/// The JSON:API body of one event.
pub fn event_body(message: &Message) -> serde_json::Value {
    let mut profile = serde_json::Map::new();
    let profile_fields = [
        ("email", &message.profile.email),
        ("phone_number", &message.profile.phone),
        ("external_id", &message.profile.external_id),
    ];
    for (name, value) in profile_fields {
        if let Some(value) = value {
            profile.insert(name.into(), value.clone().into());
        }
    }
    let mut attributes = serde_json::json!({
        "properties": message.properties,
        "time": message.time,
        "unique_id": message.event_id,
        "metric": {"data": {"type": "metric", "attributes": {"name": message.metric}}},
        "profile": {"data": {"type": "profile", "attributes": profile}},
    });
    if let Some(value) = message.value {
        attributes["value"] = value.into();
    }
    serde_json::json!({"data": {"type": "event", "attributes": attributes}})
}

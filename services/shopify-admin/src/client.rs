//! One Admin GraphQL call, made until it has an answer worth acting on: Shopify's throttle is
//! waited out as its `throttleStatus` says, 5xx / 408 / 429 / timeouts / connection errors and
//! `INTERNAL_SERVER_ERROR` answers are retried with backoff within the budget, and a refused token or a `userErrors` answer is
//! handed back for the caller to dead-letter.

use std::time::{Duration, Instant};

use aftercart_delivery::retry::{classify, Class, Plan};
use aftercart_delivery::{HttpClient, RetryPolicy, SinkError};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use aftercart_runtime::Event as _;

use crate::config::AdminConfig;
use crate::events::{CallExhausted, CallRetried, CallUnconfirmed, NoToken, TokenRefused};
use crate::metrics::AdminMetrics;
use crate::tokens::AccessTokens;

/// Throttle waits are bounded so that a nonsense `throttleStatus` cannot park the loop.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(60);
/// Throttling a call may wait without it counting against the retry budget.
pub const THROTTLE_ALLOWANCE: Duration = Duration::from_secs(120);

/// Why a call has no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("no Shopify access token for the shop")]
    NoToken,
    #[error("Shopify refused the shop's access token (HTTP {0})")]
    Refused(u16),
    /// A permanent refusal: another HTTP status, or GraphQL `errors` that are not throttling.
    #[error("Shopify rejected the call: {0}")]
    Rejected(String),
    #[error("Shopify kept failing past the retry budget: {0}")]
    Exhausted(String),
    /// A call that must not be sent twice failed after it may have reached Shopify (5xx,
    /// timeout, a broken connection): whether it took effect is unknown.
    #[error("Shopify may or may not have done it (no answer to a call that is not resent): {0}")]
    Unconfirmed(String),
    #[error("stopped while calling Shopify")]
    Stopped,
}

impl CallError {
    /// A bounded label (dead-letter reasons, metrics).
    pub fn as_label(&self) -> &'static str {
        match self {
            CallError::NoToken => "no_token",
            CallError::Refused(_) => "refused",
            CallError::Rejected(_) => "rejected",
            CallError::Exhausted(_) => "exhausted",
            CallError::Unconfirmed(_) => "unconfirmed",
            CallError::Stopped => "stopped",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Tls(#[from] SinkError),
    #[error("cannot read the Shopify access tokens file {0}: {1}")]
    Tokens(String, std::io::Error),
}

/// The Admin API client of every shop in the tokens file. Cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    http: HttpClient,
    config: AdminConfig,
    tokens: std::sync::Arc<AccessTokens>,
    retry: RetryPolicy,
    metrics: AdminMetrics,
}

impl AdminClient {
    pub fn new(config: AdminConfig, metrics: AdminMetrics) -> Result<AdminClient, SetupError> {
        let tokens = AccessTokens::open(&config.tokens_file)
            .map_err(|error| SetupError::Tokens(config.tokens_file.display().to_string(), error))?;
        Ok(AdminClient {
            http: HttpClient::new(config.timeout)?,
            retry: RetryPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
                max_duration: config.max_retry_duration,
            },
            config,
            tokens: std::sync::Arc::new(tokens),
            metrics,
        })
    }

    pub fn metrics(&self) -> &AdminMetrics {
        &self.metrics
    }

    /// Runs `query` with `variables` in `shop`; the answer's `data`.
    pub async fn call(
        &self,
        shop: &str,
        operation: &'static str,
        query: &str,
        variables: Value,
        stop: &CancellationToken,
    ) -> Result<Value, CallError> {
        self.run(shop, operation, query, variables, true, stop)
            .await
    }

    /// Like [`AdminClient::call`], for a mutation that is not idempotent and has nothing to look
    /// up afterwards (store credit): resent only when Shopify cannot have acted on it (throttled,
    /// 408, 429, no connection); after a 5xx or a timeout it is [`CallError::Unconfirmed`].
    pub async fn call_unrepeatable(
        &self,
        shop: &str,
        operation: &'static str,
        query: &str,
        variables: Value,
        stop: &CancellationToken,
    ) -> Result<Value, CallError> {
        self.run(shop, operation, query, variables, false, stop)
            .await
    }

    async fn run(
        &self,
        shop: &str,
        operation: &'static str,
        query: &str,
        variables: Value,
        repeatable: bool,
        stop: &CancellationToken,
    ) -> Result<Value, CallError> {
        let Some(token) = self.tokens.get(shop) else {
            NoToken { shop, operation }.emit(&self.metrics);
            return Err(CallError::NoToken);
        };
        let token = HeaderValue::from_str(token.expose())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
            .map_err(|_| {
                CallError::Rejected("the access token is not a valid header value".into())
            })?;
        let body = Bytes::from(json!({"query": query, "variables": variables}).to_string());
        let url = self.config.url(shop);
        let started = Instant::now();
        // Waiting on the rate limit is normal operation, not failure: kept out of the budget,
        // up to THROTTLE_ALLOWANCE a call (beyond it, it counts, so that a call stays within
        // `AdminConfig::batch_budget` and the stage's poll interval).
        let mut throttled = Duration::ZERO;
        let mut failures = 0;
        loop {
            let request = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header(CONTENT_TYPE, "application/json")
                .header(USER_AGENT, concat!("aftercart/", env!("CARGO_PKG_VERSION")))
                .header("X-Shopify-Access-Token", token.clone())
                .body(Full::new(body.clone()))
                .map_err(|_| CallError::Rejected("the admin URL is not a valid URI".into()))?;
            let (why, retry_after, maybe_done) = match self.http.attempt(request).await {
                Err(error) => (error.to_string(), None, error != "connect"),
                Ok(answer) => match answer.status.as_u16() {
                    401 | 403 => {
                        TokenRefused {
                            shop,
                            operation,
                            status: answer.status.as_u16(),
                        }
                        .emit(&self.metrics);
                        return Err(CallError::Refused(answer.status.as_u16()));
                    }
                    _ => match classify(answer.status) {
                        Class::Delivered => match read(&answer.body) {
                            Read::Data(data) => {
                                self.metrics.call(operation, "ok");
                                self.metrics.refused(shop, false);
                                return Ok(data);
                            }
                            Read::Throttled(wait) => {
                                self.metrics.call(operation, "throttled");
                                self.metrics.throttled(wait.as_secs_f64());
                                tracing::debug!(
                                    shop,
                                    ?wait,
                                    "Shopify throttled the call; waiting as it says."
                                );
                                // Past the allowance, throttling spends the budget as
                                // failures do: a wait that would end beyond what is left of
                                // both is not begun, so a call never outlasts the batch's.
                                let spent = started
                                    .elapsed()
                                    .saturating_sub(throttled.min(THROTTLE_ALLOWANCE));
                                let left = self.retry.max_duration.saturating_sub(spent)
                                    + THROTTLE_ALLOWANCE.saturating_sub(throttled);
                                if wait >= left {
                                    CallExhausted {
                                        shop,
                                        operation,
                                        failures,
                                        reason: "THROTTLED",
                                    }
                                    .emit(&self.metrics);
                                    return Err(CallError::Exhausted(
                                        "throttled past the retry budget".into(),
                                    ));
                                }
                                let slept = Instant::now();
                                tokio::select! {
                                    () = tokio::time::sleep(wait) => {
                                        throttled += slept.elapsed();
                                        continue;
                                    }
                                    () = stop.cancelled() => {
                                        self.metrics.call(operation, "stopped");
                                        return Err(CallError::Stopped);
                                    }
                                }
                            }
                            Read::Errors(message) => {
                                self.metrics.call(operation, "rejected");
                                return Err(CallError::Rejected(message));
                            }
                            // Like a 5xx: it may have been done.
                            Read::Internal(why) => (why, None, true),
                        },
                        // `classify` never answers `Amend` (a caller's own judgement).
                        Class::Permanent | Class::Amend => {
                            self.metrics.call(operation, "rejected");
                            return Err(CallError::Rejected(format!(
                                "HTTP {}",
                                answer.status.as_u16()
                            )));
                        }
                        Class::Retryable => (
                            format!("HTTP {}", answer.status.as_u16()),
                            answer.retry_after,
                            !matches!(answer.status.as_u16(), 408 | 429),
                        ),
                    },
                },
            };
            if maybe_done && !repeatable {
                CallUnconfirmed {
                    shop,
                    operation,
                    reason: &why,
                }
                .emit(&self.metrics);
                return Err(CallError::Unconfirmed(why));
            }
            failures += 1;
            let failing_for = started
                .elapsed()
                .saturating_sub(throttled.min(THROTTLE_ALLOWANCE));
            let wait = match self.retry.plan(failures, failing_for, retry_after) {
                Plan::Retry(wait) => wait,
                Plan::GiveUp(_) => {
                    CallExhausted {
                        shop,
                        operation,
                        failures,
                        reason: &why,
                    }
                    .emit(&self.metrics);
                    return Err(CallError::Exhausted(why));
                }
            };
            CallRetried {
                shop,
                operation,
                failures,
                reason: &why,
                wait,
            }
            .emit(&self.metrics);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {
                    self.metrics.call(operation, "stopped");
                    return Err(CallError::Stopped);
                }
            }
        }
    }
}

/// What a 2xx answer says.
#[derive(Debug, PartialEq)]
enum Read {
    Data(Value),
    Throttled(Duration),
    /// `INTERNAL_SERVER_ERROR` in `errors` (Shopify's 200 answer to a failure of its own while
    /// executing): tried again like a 5xx.
    Internal(String),
    Errors(String),
}

fn read(body: &[u8]) -> Read {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return Read::Errors("the answer is not JSON".into());
    };
    let errors = answer["errors"].as_array().cloned().unwrap_or_default();
    let throttled = errors
        .iter()
        .any(|e| e["extensions"]["code"].as_str() == Some("THROTTLED"));
    if throttled {
        return Read::Throttled(throttle_wait(&answer["extensions"]["cost"]));
    }
    if errors
        .iter()
        .any(|e| e["extensions"]["code"].as_str() == Some("INTERNAL_SERVER_ERROR"))
    {
        return Read::Internal("INTERNAL_SERVER_ERROR".into());
    }
    if !errors.is_empty() {
        let messages: Vec<&str> = errors
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        return Read::Errors(messages.join("; "));
    }
    match answer.get("data") {
        Some(data) if !data.is_null() => Read::Data(data.clone()),
        _ => Read::Errors("the answer has no data".into()),
    }
}

/// `(requested - available) / restoreRate` seconds, as Shopify's leaky bucket refills; one
/// second when the cost is missing, bounded by [`MAX_THROTTLE_WAIT`].
pub fn throttle_wait(cost: &Value) -> Duration {
    let status = &cost["throttleStatus"];
    let requested = cost["requestedQueryCost"].as_f64();
    let available = status["currentlyAvailable"].as_f64();
    let rate = status["restoreRate"].as_f64().filter(|r| *r > 0.0);
    let seconds = match (requested, available, rate) {
        (Some(requested), Some(available), Some(rate)) => ((requested - available) / rate).max(0.0),
        _ => 1.0,
    };
    // At least a little, so a bucket at the edge is not hammered.
    Duration::from_secs_f64(seconds.max(0.05)).min(MAX_THROTTLE_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_answer_waits_for_the_missing_cost_at_the_restore_rate() {
        let body = br#"{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED"}}],
            "extensions":{"cost":{"requestedQueryCost":101,"actualQueryCost":null,
            "throttleStatus":{"maximumAvailable":2000.0,"currentlyAvailable":1,"restoreRate":100.0}}}}"#;
        assert_eq!(read(body), Read::Throttled(Duration::from_secs(1)));
        assert_eq!(throttle_wait(&json!({})), Duration::from_secs(1));
        let huge = json!({"requestedQueryCost": 1e9, "throttleStatus": {"currentlyAvailable": 0, "restoreRate": 1}});
        assert_eq!(throttle_wait(&huge), MAX_THROTTLE_WAIT);
    }

    #[test]
    fn an_internal_error_in_a_200_answer_is_tried_again_not_refused() {
        // Shopify answers an error inside GraphQL execution with 200 and this code.
        let body = br#"{"errors":[{"message":"Internal error. Looks like something went wrong on our end.\nRequest ID: 3221c58f (include this in support requests).","extensions":{"code":"INTERNAL_SERVER_ERROR","requestId":"3221c58f"}}]}"#;
        assert!(matches!(read(body), Read::Internal(_)), "{:?}", read(body));
    }

    #[test]
    fn data_and_other_errors_are_told_apart() {
        assert_eq!(read(br#"{"data":{"x":1}}"#), Read::Data(json!({"x": 1})));
        assert_eq!(
            read(br#"{"errors":[{"message":"Access denied for discountCodeBasicCreate field.","extensions":{"code":"ACCESS_DENIED"}}]}"#),
            Read::Errors("Access denied for discountCodeBasicCreate field.".into())
        );
        assert!(matches!(read(b"<html>"), Read::Errors(_)));
    }
}

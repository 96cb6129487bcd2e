//! Sink tests against a real HTTP server on 127.0.0.1:0 that answers from a script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aftercart_shopify::Verifier;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Endpoint, SinkConfig};
use crate::retry::RetryPolicy;

/// One scripted answer.
#[derive(Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, &'static str)>,
    pub(crate) body: &'static str,
    pub(crate) delay: Duration,
}

pub(crate) fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: "",
        delay: Duration::ZERO,
    }
}

pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) at: Instant,
}

/// A local receiver: answers from the script, then 200 once it runs out.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub(crate) async fn start(script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks?token=t", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, script) = (log.clone(), script.clone());
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (log, script) = (log.clone(), script.clone());
                    async move {
                        let at = Instant::now();
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        log.lock().unwrap().push(Received {
                            path: parts.uri.path().to_string(),
                            headers: parts.headers,
                            body,
                            at,
                        });
                        let next = script.lock().unwrap().pop_front();
                        let next = next.unwrap_or_else(|| reply(200));
                        tokio::time::sleep(next.delay).await;
                        let mut response = Response::builder().status(next.status);
                        for (name, value) in next.headers {
                            response = response.header(name, value);
                        }
                        Ok::<_, hyper::Error>(
                            response.body(Full::new(Bytes::from(next.body))).unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Receiver { url, received }
    }

    pub(crate) fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

fn config(url: &str) -> SinkConfig {
    SinkConfig {
        endpoint: Endpoint::parse(url).unwrap(),
        secret: Some(Secret::new("key")),
        timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            max_duration: Duration::from_secs(5),
        },
    }
}

fn sink(config: &SinkConfig) -> (HttpSink, Registry) {
    let registry = Registry::new();
    let metrics = DeliveryMetrics::register(&registry, "test").unwrap();
    (HttpSink::new(config, metrics).unwrap(), registry)
}

/// `test_http_deliveries_total{outcome}` of a test registry.
pub(crate) fn deliveries(registry: &Registry, outcome: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "test_http_deliveries_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == outcome))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

const FOX: &str = "The quick brown fox jumps over the lazy dog";

fn outgoing(body: &str) -> Outgoing {
    Outgoing::new(
        Bytes::from(body.to_string()),
        "evt-1",
        "aftercart.referrals",
    )
    .unwrap()
}

async fn deliver(sink: &HttpSink, body: &str) -> Outcome {
    sink.deliver(&outgoing(body), &CancellationToken::new())
        .await
}

#[tokio::test]
async fn a_delivery_carries_the_body_exactly_and_the_documented_headers() {
    let receiver = Receiver::start(vec![]).await;
    let (sink, _) = sink(&config(&receiver.url));
    let body = r#"{"email":"ann@example.com","n":18446744073709551615}"#;
    assert!(matches!(
        deliver(&sink, body).await,
        Outcome::Delivered { attempts: 1, .. }
    ));
    let received = receiver.received.lock().unwrap();
    let headers = &received[0].headers;
    assert_eq!(received[0].body, body.as_bytes());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-aftercart-event-id"], "evt-1");
    assert_eq!(headers["x-aftercart-topic"], "aftercart.referrals");
    assert_eq!(
        headers["user-agent"],
        format!("aftercart/{}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn the_signature_matches_a_known_vector_and_a_shopify_verifier() {
    let receiver = Receiver::start(vec![]).await;
    let (sink, _) = sink(&config(&receiver.url));
    deliver(&sink, FOX).await;
    let received = receiver.received.lock().unwrap();
    let signature = received[0].headers[SIGNATURE_HEADER].as_bytes();
    // base64 of HMAC-SHA256("key", FOX) = f7bc83f4…2d1a3cd8, the published test vector.
    assert_eq!(signature, b"97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg=");
    let verifier = Verifier::new(vec![Secret::new("key")], Default::default());
    assert!(verifier
        .verify(None, Some(signature), &received[0].body)
        .is_ok());
}

#[tokio::test]
async fn without_a_secret_no_signature_is_sent() {
    let receiver = Receiver::start(vec![]).await;
    let (sink, _) = sink(&SinkConfig {
        secret: None,
        ..config(&receiver.url)
    });
    deliver(&sink, "{}").await;
    assert!(!receiver.received.lock().unwrap()[0]
        .headers
        .contains_key(SIGNATURE_HEADER));
}

#[tokio::test]
async fn a_503_is_retried_until_a_200() {
    let receiver = Receiver::start(vec![reply(503), reply(503)]).await;
    let (sink, registry) = sink(&config(&receiver.url));
    assert!(matches!(
        deliver(&sink, "{}").await,
        Outcome::Delivered { attempts: 3, .. }
    ));
    assert_eq!(receiver.count(), 3);
    assert_eq!(deliveries(&registry, "retry"), 2);
    assert_eq!(deliveries(&registry, "delivered"), 1);
}

#[tokio::test]
async fn a_429_waits_at_least_its_retry_after_even_above_the_maximum_backoff() {
    let mut limited = reply(429);
    limited.headers.push(("retry-after", "1"));
    let receiver = Receiver::start(vec![limited]).await;
    let (sink, _) = sink(&config(&receiver.url));
    assert!(matches!(
        deliver(&sink, "{}").await,
        Outcome::Delivered { attempts: 2, .. }
    ));
    let received = receiver.received.lock().unwrap();
    let waited = received[1].at - received[0].at;
    assert!(waited >= Duration::from_secs(1), "waited {waited:?}");
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
}

#[tokio::test]
async fn a_400_is_permanent_at_once_and_its_body_is_kept() {
    let mut refused = reply(400);
    refused.body = r#"{"error":"unknown referral code"}"#;
    let receiver = Receiver::start(vec![refused]).await;
    let (sink, registry) = sink(&config(&receiver.url));
    let Outcome::Failed(failure) = deliver(&sink, "{}").await else {
        panic!("refused")
    };
    assert_eq!(failure.kind, FailureKind::Rejected);
    assert_eq!(failure.status, Some(StatusCode::BAD_REQUEST));
    assert_eq!(failure.reason(), "http_status_400");
    assert_eq!(failure.response, r#"{"error":"unknown referral code"}"#);
    assert_eq!(failure.attempts, 1);
    assert_eq!(receiver.count(), 1);
    assert_eq!(deliveries(&registry, "permanent"), 1);
    assert!(
        !format!("{failure:?}").contains("referral"),
        "Debug hides the body"
    );
}

#[tokio::test]
async fn redirects_are_permanent_not_followed() {
    let mut moved = reply(302);
    moved
        .headers
        .push(("location", "http://127.0.0.1:1/elsewhere"));
    let receiver = Receiver::start(vec![moved]).await;
    let (sink, _) = sink(&config(&receiver.url));
    let Outcome::Failed(failure) = deliver(&sink, "{}").await else {
        panic!("refused")
    };
    assert_eq!(failure.reason(), "http_status_302");
}

#[tokio::test]
async fn only_the_first_kib_of_a_large_answer_is_kept() {
    let mut refused = reply(422);
    refused.body = Box::leak("x".repeat(64 * 1024).into_boxed_str());
    let receiver = Receiver::start(vec![refused]).await;
    let (sink, _) = sink(&config(&receiver.url));
    let Outcome::Failed(failure) = deliver(&sink, "{}").await else {
        panic!("refused")
    };
    assert_eq!(failure.response.len(), RESPONSE_EXCERPT_BYTES);
}

#[tokio::test]
async fn retries_end_when_the_budget_is_spent() {
    let receiver = Receiver::start(vec![reply(503); 1000]).await;
    let (sink, registry) = sink(&SinkConfig {
        retry: RetryPolicy {
            max_duration: Duration::from_millis(300),
            ..config("http://x").retry
        },
        ..config(&receiver.url)
    });
    let started = Instant::now();
    let Outcome::Failed(failure) = deliver(&sink, "{}").await else {
        panic!("gives up")
    };
    assert_eq!(failure.kind, FailureKind::RetriesExhausted);
    assert_eq!(failure.reason(), "retries_exhausted");
    assert_eq!(failure.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(failure.attempts >= 3, "{failure:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(deliveries(&registry, "exhausted"), 1);
    assert_eq!(
        deliveries(&registry, "retry") + 1,
        u64::from(failure.attempts)
    );
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let mut slow = reply(200);
    slow.delay = Duration::from_secs(5);
    let receiver = Receiver::start(vec![slow]).await;
    let (sink, _) = sink(&SinkConfig {
        timeout: Duration::from_millis(200),
        ..config(&receiver.url)
    });
    assert!(matches!(
        deliver(&sink, "{}").await,
        Outcome::Delivered { attempts: 2, .. }
    ));
}

#[tokio::test]
async fn an_unreachable_receiver_is_retryable_and_reported_as_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (sink, _) = sink(&SinkConfig {
        retry: RetryPolicy {
            max_duration: Duration::from_millis(100),
            ..config("http://x").retry
        },
        ..config(&format!("http://127.0.0.1:{port}/"))
    });
    let Outcome::Failed(failure) = deliver(&sink, "{}").await else {
        panic!("gives up")
    };
    assert_eq!(failure.kind, FailureKind::RetriesExhausted);
    assert_eq!((failure.status, failure.error), (None, Some("connect")));
    assert!(failure.attempts >= 2);
}

#[tokio::test]
async fn https_urls_speak_tls() {
    // A plain-HTTP server cannot complete a TLS handshake: no HTTP request ever reaches it.
    let receiver = Receiver::start(vec![]).await;
    let https = receiver.url.replace("http://", "https://");
    let (sink, _) = sink(&SinkConfig {
        retry: RetryPolicy {
            max_duration: Duration::ZERO,
            ..config("http://x").retry
        },
        ..config(&https)
    });
    let Outcome::Failed(failure) = deliver(&sink, "{}").await else {
        panic!("fails")
    };
    assert_eq!(failure.status, None);
    assert!(failure.error.is_some());
    assert_eq!(receiver.count(), 0);
}

#[tokio::test]
async fn a_stop_during_a_backoff_returns_at_once() {
    let mut limited = reply(503);
    limited.headers.push(("retry-after", "60"));
    let receiver = Receiver::start(vec![limited]).await;
    let (sink, registry) = sink(&SinkConfig {
        retry: RetryPolicy {
            max_duration: Duration::from_secs(600),
            ..config("http://x").retry
        },
        ..config(&receiver.url)
    });
    let stop = CancellationToken::new();
    let task = {
        let (sink, stop) = (sink.clone(), stop.clone());
        tokio::spawn(async move { sink.deliver(&outgoing("{}"), &stop).await })
    };
    while receiver.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_retry = |r: &Registry| {
        r.gather()
            .iter()
            .find(|f| f.name() == "test_http_in_retry")
            .map(|f| f.get_metric()[0].get_gauge().get_value())
    };
    assert_eq!(in_retry(&registry), Some(1.0));
    let stopped_at = Instant::now();
    stop.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops within a second")
        .unwrap();
    assert!(matches!(outcome, Outcome::Stopped));
    assert!(stopped_at.elapsed() < Duration::from_millis(500));
    assert_eq!(in_retry(&registry), Some(0.0));
}

#[test]
fn event_ids_and_topics_must_be_printable_ascii() {
    assert!(Outgoing::new(Bytes::new(), "a/0/1", "t").is_some());
    assert!(Outgoing::new(Bytes::new(), "", "t").is_none());
    assert!(Outgoing::new(Bytes::new(), "a\nb", "t").is_none());
    assert!(Outgoing::new(Bytes::new(), "é", "t").is_none());
}

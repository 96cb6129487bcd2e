//! Message destinations against a real local HTTP server answering like Klaviyo (202, 400,
//! 429 with `Retry-After`, 5xx), and the file destination on a temporary directory.

use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Endpoint, Secret};
use crate::retry::RetryPolicy;
use crate::sink::tests::{deliveries, reply, Receiver, Reply};
use crate::sink::FailureKind;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "aftercart-message-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        max_duration: Duration::from_secs(5),
    }
}

fn message() -> Message {
    let body = r#"{"event_id":"nudge-1","step":1}"#;
    Message {
        event_id: "nudge-1".into(),
        topic: "aftercart.nudges".into(),
        shop: "demo.myshopify.com".into(),
        metric: "Aftercart Recovery Nudge".into(),
        time: "2026-12-06T18:00:00Z".into(),
        value: Some(59.9),
        profile: Profile {
            email: Some("ann@example.com".into()),
            phone: None,
            external_id: Some("7001".into()),
        },
        properties: serde_json::json!({"step": 1, "recovery_url": "https://demo/r/1"}),
        body: Bytes::from(body),
    }
}

fn klaviyo(url: &str, keys: &str) -> (Destination, Registry) {
    let dir = temp_dir("keys");
    let keys_file = dir.join("klaviyo-keys");
    std::fs::write(&keys_file, keys).unwrap();
    let registry = Registry::new();
    let metrics = DeliveryMetrics::register(&registry, "test").unwrap();
    let config = KlaviyoConfig {
        keys_file,
        base_url: url.to_string(),
        timeout: Duration::from_secs(2),
        retry: retry(),
    };
    (Destination::klaviyo(&config, metrics).unwrap(), registry)
}

fn base(receiver: &Receiver) -> String {
    receiver.url.split("/hooks").next().unwrap().to_string()
}

async fn send(destination: &Destination) -> Outcome {
    destination
        .send(&message(), &CancellationToken::new())
        .await
}

#[tokio::test]
async fn klaviyo_gets_one_event_on_the_profile_with_the_key_and_revision() {
    let receiver = Receiver::start(vec![reply(202)]).await;
    let (destination, _) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    assert!(matches!(
        send(&destination).await,
        Outcome::Delivered { attempts: 1, .. }
    ));
    let received = receiver.received.lock().unwrap();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.path, "/api/events");
    assert_eq!(request.headers["authorization"], "Klaviyo-API-Key pk_demo");
    assert_eq!(request.headers["revision"], klaviyo::REVISION);
    assert_eq!(request.headers["content-type"], "application/vnd.api+json");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    let attributes = &body["data"]["attributes"];
    assert_eq!(body["data"]["type"], "event");
    assert_eq!(attributes["unique_id"], "nudge-1");
    assert_eq!(attributes["value"], 59.9);
    assert_eq!(attributes["properties"]["step"], 1);
    assert_eq!(
        attributes["metric"]["data"]["attributes"]["name"],
        "Aftercart Recovery Nudge"
    );
    let profile = &attributes["profile"]["data"];
    assert_eq!(profile["type"], "profile");
    assert_eq!(profile["attributes"]["email"], "ann@example.com");
    assert_eq!(profile["attributes"]["external_id"], "7001");
    assert!(profile["attributes"].get("phone_number").is_none());
}

#[tokio::test]
async fn klaviyo_rate_limits_are_waited_out_as_retry_after_asks() {
    let limited = Reply {
        headers: vec![("retry-after", "1")],
        ..reply(429)
    };
    let receiver = Receiver::start(vec![limited, reply(202)]).await;
    let (destination, _) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    assert!(matches!(
        send(&destination).await,
        Outcome::Delivered { attempts: 2, .. }
    ));
    let received = receiver.received.lock().unwrap();
    let waited = received[1].at - received[0].at;
    // The backoff alone is at most 20 ms: only Retry-After explains a second's wait.
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
    // The same event both times: Klaviyo dedupes it on unique_id.
    assert_eq!(received[0].body, received[1].body);
}

#[tokio::test]
async fn klaviyo_server_errors_are_retried_and_a_bad_request_is_refused_for_good() {
    let receiver = Receiver::start(vec![reply(503), reply(500), reply(202)]).await;
    let (destination, _) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    assert!(matches!(
        send(&destination).await,
        Outcome::Delivered { attempts: 3, .. }
    ));

    let refusing = Reply {
        body: r#"{"errors":[{"status":400,"code":"invalid"}]}"#,
        ..reply(400)
    };
    let receiver = Receiver::start(vec![refusing]).await;
    let (destination, registry) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    match send(&destination).await {
        Outcome::Failed(failure) => {
            assert_eq!(failure.kind, FailureKind::Rejected);
            assert_eq!(failure.reason(), "http_status_400");
            assert!(failure.response.starts_with(b"{\"errors\""));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(receiver.count(), 1);
    assert_eq!(deliveries(&registry, "permanent"), 1);
}

/// Klaviyo's answer to a phone number it cannot place: the whole event is refused.
const PHONE_REFUSED: &str = r#"{"errors":[{"id":"e1","status":400,"code":"invalid","title":"Invalid input.","detail":"Invalid phone number format (Example of a valid phone number format: +12345678901)","source":{"pointer":"/data/attributes/profile/data/attributes/phone_number"},"meta":{}}]}"#;

/// Klaviyo's 400 for a profile phone it cannot place.
fn phone_refused() -> Reply {
    Reply {
        body: PHONE_REFUSED,
        ..reply(400)
    }
}

/// The test message with a phone besides its email and customer id.
fn with_phone() -> Message {
    let mut message = message();
    message.profile.phone = Some("+15555550123".into());
    message
}

/// A phone Klaviyo refuses is left out and the event sent again at once, when an email or an
/// external id still names the person; a profile the phone alone names, or a 400 about
/// anything else, stays refused for good after one request.
#[tokio::test]
async fn a_phone_klaviyo_refuses_is_left_out_and_the_event_sent_again() {
    let phone_refused = phone_refused();
    let receiver = Receiver::start(vec![phone_refused.clone(), reply(202)]).await;
    let (destination, registry) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    let with_phone = with_phone();
    let outcome = destination
        .send(&with_phone, &CancellationToken::new())
        .await;
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    {
        let received = receiver.received.lock().unwrap();
        assert_eq!(received.len(), 2);
        let profile = |i: usize| {
            let body: serde_json::Value = serde_json::from_slice(&received[i].body).unwrap();
            body["data"]["attributes"]["profile"]["data"]["attributes"].clone()
        };
        assert_eq!(profile(0)["phone_number"], "+15555550123");
        assert!(profile(1).get("phone_number").is_none());
        assert_eq!(profile(1)["email"], "ann@example.com");
        let resent: serde_json::Value = serde_json::from_slice(&received[1].body).unwrap();
        assert_eq!(resent["data"]["attributes"]["unique_id"], "nudge-1");
    }
    // The refused first request is a try another follows, not a refusal for good.
    assert_eq!(deliveries(&registry, "permanent"), 0);
    assert_eq!(deliveries(&registry, "retry"), 1);
    assert_eq!(deliveries(&registry, "delivered"), 1);

    let receiver = Receiver::start(vec![phone_refused.clone()]).await;
    let (destination, registry) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    let mut phone_only = message();
    phone_only.profile = Profile {
        email: None,
        phone: Some("+15555550123".into()),
        external_id: None,
    };
    let outcome = destination
        .send(&phone_only, &CancellationToken::new())
        .await;
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    assert_eq!(receiver.count(), 1);
    assert_eq!(deliveries(&registry, "permanent"), 1);
    assert_eq!(deliveries(&registry, "retry"), 0);

    // A stop when the refusal comes: sent again without the phone after the restart, not
    // dead-lettered now.
    let receiver = Receiver::start(vec![phone_refused.clone()]).await;
    let (destination, registry) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    let stop = CancellationToken::new();
    stop.cancel();
    let outcome = destination.send(&with_phone, &stop).await;
    assert!(matches!(outcome, Outcome::Stopped), "{outcome:?}");
    assert_eq!(receiver.count(), 1);
    assert_eq!(deliveries(&registry, "permanent"), 0);

    let other = Reply {
        body: r#"{"errors":[{"status":400,"code":"invalid","source":{"pointer":"/data/attributes/metric"}}]}"#,
        ..reply(400)
    };
    let receiver = Receiver::start(vec![other]).await;
    let (destination, _) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    let outcome = destination
        .send(&with_phone, &CancellationToken::new())
        .await;
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    assert_eq!(receiver.count(), 1);
}

/// The event sent again without the phone keeps the retry budget the first request began: a
/// receiver that was rate-limiting before the refusal does not get a second budget's worth of
/// tries (here the budget is 5 s: 3 s spent waiting before the refusal, 3 s asked after it).
#[tokio::test]
async fn the_event_sent_again_without_the_phone_keeps_the_first_requests_budget() {
    let limited = Reply {
        headers: vec![("retry-after", "3")],
        ..reply(429)
    };
    let phone_refused = phone_refused();
    let receiver = Receiver::start(vec![limited.clone(), phone_refused, limited, reply(202)]).await;
    let (destination, registry) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    let with_phone = with_phone();
    let outcome = destination
        .send(&with_phone, &CancellationToken::new())
        .await;
    match outcome {
        Outcome::Failed(failure) => assert_eq!(failure.kind, FailureKind::RetriesExhausted),
        other => panic!("expected the budget to run out, got {other:?}"),
    }
    assert_eq!(receiver.count(), 3);
    assert_eq!(deliveries(&registry, "exhausted"), 1);
}

#[tokio::test]
async fn a_shop_without_a_klaviyo_key_is_refused_without_a_request() {
    let receiver = Receiver::start(vec![]).await;
    let (destination, _) = klaviyo(&base(&receiver), "other.myshopify.com=pk_other\n");
    assert!(matches!(send(&destination).await, Outcome::Failed(_)));
    assert_eq!(receiver.count(), 0);
}

#[tokio::test]
async fn a_stop_during_a_klaviyo_backoff_returns_at_once() {
    let limited = Reply {
        headers: vec![("retry-after", "60")],
        ..reply(429)
    };
    let receiver = Receiver::start(vec![limited]).await;
    let (destination, _) = klaviyo(&base(&receiver), "demo.myshopify.com=pk_demo\n");
    let stop = CancellationToken::new();
    let sending = tokio::spawn({
        let (destination, stop) = (destination.clone(), stop.clone());
        async move { destination.send(&message(), &stop).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while receiver.count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no request arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), sending)
        .await
        .expect("the send stopped")
        .unwrap();
    assert!(matches!(outcome, Outcome::Stopped));
}

#[tokio::test]
async fn the_webhook_destination_posts_the_body_signed_with_the_event_id() {
    let receiver = Receiver::start(vec![]).await;
    let registry = Registry::new();
    let config = crate::config::SinkConfig {
        endpoint: Endpoint::parse(&receiver.url).unwrap(),
        secret: Some(Secret::new("key")),
        timeout: Duration::from_secs(2),
        retry: retry(),
    };
    let destination =
        Destination::webhook(&config, DeliveryMetrics::register(&registry, "t").unwrap()).unwrap();
    assert_eq!(destination.kind(), "webhook");
    assert!(matches!(
        send(&destination).await,
        Outcome::Delivered { .. }
    ));
    let received = receiver.received.lock().unwrap();
    assert_eq!(received[0].body, message().body);
    assert_eq!(received[0].headers["x-aftercart-event-id"], "nudge-1");
    assert_eq!(received[0].headers["x-aftercart-topic"], "aftercart.nudges");
    let signature = received[0].headers["x-aftercart-hmac-sha256"]
        .to_str()
        .unwrap();
    assert_eq!(
        signature,
        aftercart_shopify::sign(&Secret::new("key"), &message().body)
    );
}

#[tokio::test]
async fn the_file_destination_writes_one_file_per_event_and_a_resend_replaces_it() {
    let dir = temp_dir("files");
    let destination = Destination::file(dir.clone());
    for _ in 0..2 {
        assert!(matches!(
            send(&destination).await,
            Outcome::Delivered { .. }
        ));
    }
    let shop_dir = dir.join("demo.myshopify.com");
    let files: Vec<_> = std::fs::read_dir(&shop_dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let written = std::fs::read(shop_dir.join("nudge-1.json")).unwrap();
    assert_eq!(written, [&message().body[..], b"\n"].concat());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn debug_output_leaves_contact_data_and_bodies_out() {
    let shown = format!("{:?}", message());
    assert!(!shown.contains("ann@example.com"));
    assert!(!shown.contains("7001"));
    assert!(shown.contains("nudge-1"));
}

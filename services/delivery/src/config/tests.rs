//! Config validation tests: defaults, every problem at once, names, secrets never printed.

use super::*;

const PREFIX: &str = "AFTERCART_REFERRALS_WEBHOOK";

fn flags() -> DeliveryFlags {
    DeliveryFlags {
        sink: SinkFlags {
            url: Some("https://rewards.example.com/hooks/aftercart?token=abc".into()),
            secret: Some(Secret::new("s3cret")),
            ..SinkFlags::default()
        },
        topics: "aftercart.referrals, aftercart.rewards".into(),
        group: "aftercart-referrals-delivery".into(),
        dead_letter_topic: "aftercart.referrals-dead-letter".into(),
    }
}

#[test]
fn valid_flags_become_a_config_with_the_shipped_defaults() {
    let mut errors = ConfigErrors::new();
    let config = flags().validate(PREFIX, &mut errors).unwrap();
    assert!(errors.is_empty(), "{errors}");
    assert_eq!(config.topics, ["aftercart.referrals", "aftercart.rewards"]);
    assert_eq!(config.sink.timeout, Duration::from_secs(10));
    assert_eq!(config.sink.retry.initial, Duration::from_secs(1));
    assert_eq!(config.sink.retry.max, Duration::from_secs(60));
    assert_eq!(config.sink.retry.max_duration, Duration::from_secs(1800));
    assert!(config.sink.endpoint.is_https());
}

#[test]
fn every_problem_is_reported_at_once_under_the_embedding_services_names() {
    let bad = DeliveryFlags {
        sink: SinkFlags {
            url: Some("ftp://example.com/".into()),
            secret: Some(Secret::new("hunter2")),
            secret_file: Some("/etc/secret".into()),
            timeout: "0s".into(),
            backoff_initial: "10s".into(),
            backoff_max: "1s".into(),
            max_retry_duration: "2d".into(),
        },
        topics: " , ".into(),
        group: " ".into(),
        dead_letter_topic: "dead letters".into(),
    };
    let mut errors = ConfigErrors::new();
    assert!(bad.validate(PREFIX, &mut errors).is_none());
    let text = errors.to_string();
    assert_eq!(errors.problems().len(), 8, "{text}");
    for suffix in [
        "_URL:",
        "_SECRET and",
        "_TIMEOUT:",
        "_BACKOFF_MAX:",
        "_MAX_RETRY_DURATION:",
        "_TOPICS:",
        "_GROUP:",
        "_DEAD_LETTER_TOPIC:",
    ] {
        assert!(
            text.contains(&format!("{PREFIX}{suffix}")),
            "{suffix}: {text}"
        );
    }
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn urls_must_be_absolute_http_or_https_without_credentials() {
    assert!(Endpoint::parse("http://127.0.0.1:8080/x").is_ok());
    assert!(Endpoint::parse("https://example.com").is_ok());
    for bad in [
        "example.com/hooks",
        "/hooks",
        "ftp://example.com/",
        "not a url",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
    let error = Endpoint::parse("https://user:hunter2@example.com/").unwrap_err();
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn the_endpoint_never_prints_its_query_string() {
    let endpoint = Endpoint::parse("https://example.com/hooks?token=abc").unwrap();
    assert_eq!(endpoint.to_string(), "https://example.com/hooks?…");
    assert!(
        !format!("{:?}", flags().validate(PREFIX, &mut ConfigErrors::new())).contains("token=abc")
    );
}

#[test]
fn a_secret_file_is_read_without_its_trailing_newline_and_never_printed() {
    let path = std::env::temp_dir().join(format!("delivery-secret-{}", std::process::id()));
    std::fs::write(&path, "hunter2\n").unwrap();
    let mut with_file = flags();
    with_file.sink.secret = None;
    with_file.sink.secret_file = Some(path.clone());
    let mut errors = ConfigErrors::new();
    let config = with_file.validate(PREFIX, &mut errors).unwrap();
    assert_eq!(config.sink.secret.as_ref().unwrap().expose(), "hunter2");
    assert!(!format!("{config:?}").contains("hunter2"));

    std::fs::write(&path, "\n").unwrap();
    let mut errors = ConfigErrors::new();
    assert!(with_file.validate(PREFIX, &mut errors).is_none());
    assert!(errors.to_string().contains("holds no secret"), "{errors}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn no_secret_means_unsigned_deliveries() {
    let mut unsigned = flags();
    unsigned.sink.secret = None;
    let config = unsigned.validate(PREFIX, &mut ConfigErrors::new()).unwrap();
    assert!(config.sink.secret.is_none());
}

#[test]
fn the_dead_letter_topic_cannot_be_a_forwarded_topic() {
    let mut looped = flags();
    looped.dead_letter_topic = "aftercart.rewards".into();
    let mut errors = ConfigErrors::new();
    assert!(looped.validate(PREFIX, &mut errors).is_none());
    assert!(
        errors.to_string().contains("must not be one of"),
        "{errors}"
    );
}

#[test]
fn a_plain_http_receiver_is_refused_naming_the_switch() {
    // Nothing in this test binary allows insecure http, and the tests run without the variable.
    if std::env::var_os(aftercart_runtime::outbound::ALLOW_INSECURE_HTTP).is_some() {
        return;
    }
    let mut http = flags();
    http.sink.url = Some("http://rewards.example.com/hooks?token=abc".into());
    let mut errors = ConfigErrors::new();
    assert!(http.validate(PREFIX, &mut errors).is_none());
    let text = errors.to_string();
    assert!(
        text.contains("AFTERCART_REFERRALS_WEBHOOK_URL: must be https://"),
        "{text}"
    );
    assert!(
        text.contains("AFTERCART_ALLOW_INSECURE_HTTP=true"),
        "{text}"
    );
    assert!(!text.contains("token=abc"), "{text}");
}

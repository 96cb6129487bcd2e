//! Secured Kafka: the services publishing and consuming through TLS (a Tansu broker behind a
//! rustls terminator, with a CA and certificates the test makes), mutual TLS, a wrong CA and
//! expired certificates as clear failures; SASL PLAIN and SCRAM credentials checked by a front
//! that verifies them as a broker does; a fatal producer error ending the ingress; the topic
//! configs the services create, read back with the admin API.

use std::time::Duration;

use aftercart_ingress::ServeError;
use aftercart_kafka::KafkaSettings;
use aftercart_shopify::Family;
use aftercart_tests::abandonment::{test_config as abandonment_config, TestAbandonment};
use aftercart_tests::audiences::{
    test_config as audiences_config, Platforms, Shopper, TestAudiences, Upstream,
};
use aftercart_tests::http::Webhook;
use aftercart_tests::ingress::{test_config, TestIngress, SECRET};
use aftercart_tests::receiver::Receiver;
use aftercart_tests::referrals::{test_config as referrals_config, TestReferrals};
use aftercart_tests::tls::{TlsBroker, TlsOptions};
use aftercart_tests::{eventually, read_topic_with, Broker};

/// The ingress configuration for a TLS broker, with the given client properties.
fn tls_ingress_config(
    tls: &TlsBroker,
    properties: Vec<(String, String)>,
) -> aftercart_ingress::IngressConfig {
    let mut config = test_config(&tls.broker);
    config.kafka.brokers = tls.bootstrap();
    config.kafka.properties = properties.into();
    config
}

fn checkout(cart: &str, at: &str) -> Vec<u8> {
    format!(
        r#"{{"token":"chk-{cart}","cart_token":"{cart}","email":"buyer-{cart}@example.com","buyer_accepts_marketing":true,
        "total_price":"250.00","currency":"EUR","customer":{{"id":4242}},
        "line_items":[{{"product_id":1,"variant_id":2,"title":"Mug","quantity":3,"price":"80.00"}}],
        "updated_at":"{at}"}}"#
    )
    .into_bytes()
}

/// Waits until the ingress counts at least one Kafka client error of `kinds` and /readyz
/// says 503; returns the /readyz body.
async fn refused(ingress: &TestIngress, kinds: &[&str]) -> String {
    eventually(
        "a counted Kafka TLS failure",
        Duration::from_secs(30),
        || async {
            let metrics = ingress.metrics().await;
            kinds
                .iter()
                .any(|kind| {
                    aftercart_tests::metric_value(
                        &metrics,
                        &format!("aftercart_ingress_kafka_errors_total{{kind=\"{kind}\"}}"),
                    ) >= 1.0
                })
                .then_some(())
        },
    )
    .await;
    let readyz = aftercart_tests::http::get(ingress.admin_addr, "/readyz").await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    readyz.body
}

mod tls {
    use super::*;

    /// Every acknowledged webhook reaches Kafka through TLS, and a consumer service reads it
    /// and writes its own output through TLS too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn services_publish_and_consume_through_tls_with_the_tests_own_ca() {
        let Some(tls) = TlsBroker::tansu(TlsOptions::default()).await else {
            return;
        };
        let properties = tls.client_properties(&tls.ca_pem, None);
        let ingress = TestIngress::start(tls_ingress_config(&tls, properties.clone())).await;
        let service =
            TestAbandonment::start_on(&tls.broker, abandonment_config(&ingress.config.kafka, &[]))
                .await;
        let cart = format!("tls-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut sent = 0;
        for (topic, at) in [
            ("checkouts/create", "2026-11-23T10:00:00Z"),
            ("checkouts/update", "2026-11-23T10:01:00Z"),
        ] {
            let response = Webhook::new(topic, checkout(&cart, at), SECRET)
                .post(ingress.addr)
                .await;
            assert_eq!(response.status, 200, "{}", response.body);
            sent += 1;
        }
        let raw = read_topic_with(
            &tls.bootstrap(),
            &properties,
            &ingress.topic(Family::Checkouts),
        )
        .await;
        assert_eq!(raw.len(), sent, "every acknowledged webhook is in Kafka");
        let output = service.config.output_topic.clone();
        let events = eventually(
            "the abandonment through TLS",
            Duration::from_secs(30),
            || async {
                let records = read_topic_with(&tls.bootstrap(), &properties, &output).await;
                (!records.is_empty()).then_some(records)
            },
        )
        .await;
        assert!(String::from_utf8_lossy(&events[0].value).contains(&cart));
        service.stop().await.expect("the service stops cleanly");
        ingress.shutdown().await.expect("the ingress stops cleanly");
    }

    /// The referrals service consumes the ingress's orders through TLS, writes its invite
    /// through TLS, and its webhook forwarder (a group consumer of its own) posts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn referrals_and_its_webhook_forwarder_work_through_tls() {
        let Some(tls) = TlsBroker::tansu(TlsOptions::default()).await else {
            return;
        };
        let properties = tls.client_properties(&tls.ca_pem, None);
        let ingress = TestIngress::start(tls_ingress_config(&tls, properties.clone())).await;
        let receiver = Receiver::start(Vec::new()).await;
        let prefix = &ingress.config.kafka.topic_prefix;
        let flags = [
            format!("--referrals-webhook-url={}", receiver.url),
            "--referrals-webhook-secret=provider-shared-secret".to_string(),
            format!("--referrals-webhook-dead-letter-topic={prefix}referrals-webhook-dead-letter"),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let service =
            TestReferrals::start_on(&tls.broker, referrals_config(&ingress.config.kafka, &flags))
                .await;
        let customer = uuid::Uuid::new_v4().as_u128() as u64 >> 12;
        let order = serde_json::json!({
            "id": customer + 1, "name": "#1001", "cart_token": "cart-tls",
            "checkout_token": "chk-tls", "email": "ann@example.com",
            "customer": {"id": customer, "email": "ann@example.com", "first_name": "Ann"},
            "buyer_accepts_marketing": true, "financial_status": "paid", "test": false,
            "subtotal_price": "50.00", "total_price": "55.00", "currency": "EUR",
            "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z"
        });
        let response = Webhook::new("orders/paid", order.to_string().into_bytes(), SECRET)
            .post(ingress.addr)
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let invites_topic = service.config.invites_topic.clone();
        let invites = eventually("an invite through TLS", Duration::from_secs(60), || async {
            let records = read_topic_with(&tls.bootstrap(), &properties, &invites_topic).await;
            (!records.is_empty()).then_some(records)
        })
        .await;
        let invite: serde_json::Value = serde_json::from_slice(&invites[0].value).unwrap();
        assert_eq!(invite["advocate"]["customer_id"], customer);
        let posted = eventually("the invite posted", Duration::from_secs(60), || async {
            let delivered = receiver.delivered();
            (!delivered.is_empty()).then_some(delivered)
        })
        .await;
        assert_eq!(posted[0].event_id(), invite["event_id"].as_str().unwrap());
        service.stop().await.expect("the service stops cleanly");
        ingress.shutdown().await.expect("the ingress stops cleanly");
    }

    /// The audiences service consumes abandonments through TLS, exports them, and writes its
    /// batches through TLS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audiences_consume_and_export_through_tls() {
        let Some(tls) = TlsBroker::tansu(TlsOptions::default()).await else {
            return;
        };
        let properties = tls.client_properties(&tls.ca_pem, None);
        let platforms = Platforms::start().await;
        let mut kafka = KafkaSettings::new(tls.bootstrap(), aftercart_tests::unique_prefix());
        kafka.partitions = 3;
        kafka.properties = properties.clone().into();
        let config = audiences_config(&kafka, &platforms, &[]);
        let service = TestAudiences::start_on(&tls.broker, config.clone()).await;
        let shopper = Shopper {
            id: 7_000_000_000_000_101,
            email: "tls.buyer@example.com",
            phone: None,
            first_name: "Tia",
            last_name: "Lane",
            country: "GB",
        };
        let upstream = Upstream {
            broker: &tls.broker,
            config: &config,
            shop: "jsmith.myshopify.com",
        };
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        upstream.abandoned(&shopper, true, "tok-tls", &at).await;
        for (what, platform) in [
            ("Meta", &platforms.meta),
            ("the webhook", &platforms.webhook),
        ] {
            eventually(what, Duration::from_secs(60), || async {
                (!platform.delivered().is_empty()).then_some(())
            })
            .await;
        }
        let batches = read_topic_with(&tls.bootstrap(), &properties, &config.batches_topic).await;
        assert!(!batches.is_empty(), "batches written through TLS");
        service.stop().await.expect("the service stops cleanly");
    }

    /// Mutual TLS: with a client certificate from the CA the ingress publishes; without one,
    /// or with an expired one, the broker is out of reach and /readyz says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutual_tls_needs_a_valid_client_certificate() {
        let Some(tls) = TlsBroker::tansu(TlsOptions {
            mutual: true,
            ..TlsOptions::default()
        })
        .await
        else {
            return;
        };
        let client = tls.ca.issue(&tls.dir, "ingress", false);
        let properties = tls.client_properties(&tls.ca_pem, Some(&client));
        let ingress = TestIngress::start(tls_ingress_config(&tls, properties.clone())).await;
        let response = Webhook::new(
            "checkouts/create",
            checkout("mtls", "2026-11-23T10:00:00Z"),
            SECRET,
        )
        .post(ingress.addr)
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let raw = read_topic_with(
            &tls.bootstrap(),
            &properties,
            &ingress.topic(Family::Checkouts),
        )
        .await;
        assert_eq!(raw.len(), 1);
        ingress.shutdown().await.expect("stops");

        let expired = tls.ca.issue(&tls.dir, "expired-ingress", true);
        for (what, client) in [
            ("no certificate", None),
            ("an expired certificate", Some(&expired)),
        ] {
            let failed_before = tls.proxy.handshakes_failed();
            let mut config = tls_ingress_config(&tls, tls.client_properties(&tls.ca_pem, client));
            config.spool = None;
            let ingress = TestIngress::spawn(config).await;
            refused(&ingress, &["tls", "transport", "all_brokers_down"]).await;
            assert!(
                tls.proxy.handshakes_failed() > failed_before,
                "{what}: the broker side refused the handshake"
            );
            let response = Webhook::new(
                "checkouts/create",
                checkout("nope", "2026-11-23T10:00:00Z"),
                SECRET,
            )
            .post(ingress.addr)
            .await;
            assert_eq!(response.status, 503, "{what}: nothing is acknowledged");
            ingress.shutdown().await.expect("stops");
        }
    }

    /// A CA that did not sign the broker's certificate: a TLS error, counted, and not ready.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_ca_is_a_clear_failure() {
        let Some(tls) = TlsBroker::tansu(TlsOptions::default()).await else {
            return;
        };
        let other = aftercart_tests::tls::TestCa::new("other");
        let other_pem = other.write_pem(&tls.dir, "other-ca.pem");
        let ingress = TestIngress::spawn(tls_ingress_config(
            &tls,
            tls.client_properties(&other_pem, None),
        ))
        .await;
        let readyz = refused(&ingress, &["tls"]).await;
        assert!(readyz.contains("kafka_connection"), "{readyz}");
        ingress.shutdown().await.expect("stops");
    }

    /// A broker certificate that expired: refused by the client as a TLS error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_broker_certificate_is_refused() {
        let Some(tls) = TlsBroker::tansu(TlsOptions {
            expired_server: true,
            ..TlsOptions::default()
        })
        .await
        else {
            return;
        };
        let ingress = TestIngress::spawn(tls_ingress_config(
            &tls,
            tls.client_properties(&tls.ca_pem, None),
        ))
        .await;
        refused(&ingress, &["tls"]).await;
        ingress.shutdown().await.expect("stops");
    }
}

mod sasl {
    use super::*;
    use aftercart_tests::sasl::SaslFront;
    use std::net::ToSocketAddrs;

    /// PLAIN and SCRAM (SHA-256, SHA-512): a front that checks credentials as a Kafka broker
    /// does accepts the right password (a comma and `=` in it) and refuses a wrong one; the
    /// refusal is counted as an authentication error and /readyz says 503.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_and_scram_credentials_are_checked_and_a_refusal_is_clear() {
        const PASSWORD: &str = "p=a,s s";
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let broker = Broker::mock();
            let backend = broker
                .bootstrap()
                .to_socket_addrs()
                .expect("mock address")
                .next()
                .expect("one address");
            let front = SaslFront::start(
                "127.0.0.1:0".parse().unwrap(),
                backend,
                mechanism,
                "svc",
                PASSWORD,
            )
            .await;
            let config_with = |password: &str| {
                let mut config = test_config(&broker);
                config.kafka.brokers = front.addr.to_string();
                config.kafka.properties = vec![
                    (
                        "security.protocol".to_string(),
                        "sasl_plaintext".to_string(),
                    ),
                    ("sasl.mechanism".to_string(), mechanism.to_string()),
                    ("sasl.username".to_string(), "svc".to_string()),
                    ("sasl.password".to_string(), password.to_string()),
                ]
                .into();
                config.spool = None;
                config
            };
            let ingress = TestIngress::spawn(config_with(PASSWORD)).await;
            eventually(mechanism, Duration::from_secs(30), || async {
                (front.accepted() >= 1).then_some(())
            })
            .await;
            assert_eq!(
                front.refused(),
                0,
                "{mechanism}: the right password is accepted"
            );
            ingress.shutdown().await.expect("stops");

            let ingress = TestIngress::spawn(config_with("wrong-password")).await;
            let readyz = refused(&ingress, &["authentication"]).await;
            assert!(readyz.contains("kafka_connection"), "{mechanism}: {readyz}");
            assert!(front.refused() >= 1, "{mechanism}: the front refused it");
            ingress.shutdown().await.expect("stops");
        }
    }
}

mod fatal {
    use super::*;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    /// A produce answered with an out-of-order sequence for the head-of-line batch makes
    /// librdkafka's idempotent producer fatal (its state no longer matches the broker's): the
    /// ingress counts it, turns not ready and ends with an error, so the process exits non-zero
    /// and is restarted, rather than answering 503 or spooling forever behind a green /readyz.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_producer_error_ends_the_ingress_with_an_error() {
        let broker = Broker::mock();
        let ingress = TestIngress::start_on(&broker, test_config(&broker)).await;
        let warm = Webhook::new(
            "checkouts/create",
            checkout("warm", "2026-11-23T10:00:00Z"),
            SECRET,
        );
        assert_eq!(warm.post(ingress.addr).await.status, 200);
        let Broker::Mock(cluster) = &broker else {
            unreachable!("a mock cluster")
        };
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
        );
        let _ = Webhook::new(
            "checkouts/create",
            checkout("fatal", "2026-11-23T10:00:01Z"),
            SECRET,
        )
        .post(ingress.addr)
        .await;
        eventually(
            "the fatal error counted",
            Duration::from_secs(30),
            || async {
                (ingress
                    .metric(r#"aftercart_ingress_kafka_errors_total{kind="fatal"}"#)
                    .await
                    >= 1.0)
                    .then_some(())
            },
        )
        .await;
        let readyz = aftercart_tests::http::get(ingress.admin_addr, "/readyz").await;
        assert_eq!(readyz.status, 503, "{}", readyz.body);
        match ingress.finished().await {
            Err(ServeError::KafkaFatal(reason)) => {
                assert!(reason.to_lowercase().contains("sequence"), "{reason}")
            }
            other => panic!("the ingress must end with the fatal error: {other:?}"),
        }
    }
}

mod topics {
    use super::*;
    use aftercart_kafka::describe_topic_configs;

    /// Topics the ingress creates carry min.insync.replicas, retention.ms and segment.ms, and
    /// a consumer service's changelog its compaction bounds, as the broker reports them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn created_topics_carry_min_insync_replicas_retention_and_compaction_bounds() {
        let Some(broker) = Broker::tansu().await else {
            return;
        };
        let mut config = test_config(&broker);
        config.kafka.retention = Duration::from_secs(3 * 86_400);
        let ingress = TestIngress::start_on(&broker, config).await;
        let service =
            TestAbandonment::start_on(&broker, abandonment_config(&ingress.config.kafka, &[]))
                .await;
        let settings: &KafkaSettings = &ingress.config.kafka;
        let raw = ingress.topic(Family::Orders);
        let changelog = service.config.state_topic.clone();
        let configs = describe_topic_configs(settings, &[raw.clone(), changelog.clone()])
            .await
            .expect("describe configs");
        let raw_configs = configs[&raw].as_ref().expect("raw topic described");
        assert_eq!(
            raw_configs.get("min.insync.replicas").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            raw_configs.get("retention.ms").map(String::as_str),
            Some("259200000")
        );
        assert_eq!(
            raw_configs.get("segment.ms").map(String::as_str),
            Some("86400000")
        );
        let changelog_configs = configs[&changelog].as_ref().expect("changelog described");
        assert_eq!(
            changelog_configs.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
        assert_eq!(
            changelog_configs
                .get("max.compaction.lag.ms")
                .map(String::as_str),
            Some("86400000")
        );
        service.stop().await.expect("stops");
        ingress.shutdown().await.expect("stops");
    }
}

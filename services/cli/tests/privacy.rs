//! Privacy end to end (issue 17): the real binary's ingress, abandonment and referrals on a Tansu
//! broker; a customer is redacted, then their checkout and order arrive (in flight when the
//! redaction was read). Their plaintext email must then be in no output topic, changelog,
//! dead-letter topic, webhook delivery or log line, while a control customer's is where it
//! belongs. The topics' retention and compaction settings are read back through the admin API
//! (Tansu cannot compact, so that is what can be checked there).

use std::time::Duration;

use aftercart_tests::http::Webhook;
use aftercart_tests::process::{ingress_env, kafka_env, ServiceProcess};
use aftercart_tests::receiver::Receiver;
use aftercart_tests::{eventually, read_topic, unique_prefix, Broker};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_aftercart");
const SECRET: &str = "privacy-e2e-secret";
const SHOP: &str = "jsmith.myshopify.com";

fn var(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

fn checkout(cart: &str, customer: u64, email: &str, phone: &str) -> Value {
    json!({
        "token": format!("chk-{cart}"), "cart_token": cart, "email": email,
        "phone": phone, "buyer_accepts_marketing": true,
        "customer": {"id": customer, "email": email, "first_name": "Ann"},
        "total_price": "80.00", "currency": "EUR", "updated_at": "2026-11-23T10:00:00Z",
    })
}

fn order(id: u64, customer: u64, email: &str) -> Value {
    json!({
        "id": id, "name": format!("#{}", id % 10000), "email": email,
        "customer": {"id": customer, "email": email, "first_name": "Ann", "last_name": "Lee",
                     "email_marketing_consent": {"state": "subscribed"}},
        "buyer_accepts_marketing": true, "financial_status": "paid", "test": false,
        "subtotal_price": "50.00", "total_price": "55.00", "currency": "EUR",
        "created_at": "2026-11-23T10:00:00Z", "browser_ip": format!("10.0.0.{}", id % 250),
    })
}

async fn send(ingress: std::net::SocketAddr, topic: &str, body: &Value) {
    let mut webhook = Webhook::new(topic, body.to_string(), SECRET);
    webhook.shop = SHOP.to_string();
    let response = webhook.post(ingress).await;
    assert_eq!(response.status, 200, "{topic}: {}", response.body);
}

/// The names of the topics on the broker.
fn existing_topics(bootstrap: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata")
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name().to_string())
        .collect()
}

/// The sum of every series of a counter family in Prometheus text.
fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{family}{{")) || line.starts_with(&format!("{family} "))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_customers_email_is_in_no_output_changelog_delivery_or_log() {
    let Some(broker) = Broker::tansu().await else {
        return;
    };
    let prefix = unique_prefix();
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let redacted_email = format!("redacted-{run}@example.com");
    let control_email = format!("control-{run}@example.com");
    let (redacted, control) = (7_000_001_u64, 7_000_002_u64);

    let receiver = Receiver::start(Vec::new()).await;
    let (env, listen) = ingress_env(&broker, &prefix, SECRET);
    let ingress = ServiceProcess::start("privacy/ingress", BIN, &["ingress"], env).await;
    let mut env = kafka_env(&broker, &prefix, 3);
    env.extend([
        var(
            "AFTERCART_ABANDONMENT_GROUP",
            format!("{prefix}abandonment"),
        ),
        var(
            "AFTERCART_ABANDONMENT_OUTPUT_TOPIC",
            format!("{prefix}abandonments"),
        ),
        var(
            "AFTERCART_ABANDONMENT_STATE_TOPIC",
            format!("{prefix}abandonment-state"),
        ),
        var(
            "AFTERCART_ABANDONMENT_DEAD_LETTER_TOPIC",
            format!("{prefix}abandonment-dead-letter"),
        ),
        var(
            "AFTERCART_ABANDONMENT_DATA_REQUESTS_TOPIC",
            format!("{prefix}data_requests"),
        ),
        var("AFTERCART_ABANDONMENT_ABANDON_AFTER", "1s"),
        var("AFTERCART_ABANDONMENT_CART_ABANDON_AFTER", "1s"),
    ]);
    let abandonment =
        ServiceProcess::start("privacy/abandonment", BIN, &["abandonment"], env).await;
    let mut env = kafka_env(&broker, &prefix, 3);
    env.extend([
        var("AFTERCART_REFERRALS_GROUP", format!("{prefix}referrals")),
        var(
            "AFTERCART_REFERRALS_INVITES_TOPIC",
            format!("{prefix}referral-invites"),
        ),
        var(
            "AFTERCART_REFERRALS_REWARDS_TOPIC",
            format!("{prefix}referral-rewards"),
        ),
        var(
            "AFTERCART_REFERRALS_BY_SHOP_TOPIC",
            format!("{prefix}referrals-by-shop"),
        ),
        var(
            "AFTERCART_REFERRALS_STATE_TOPIC",
            format!("{prefix}referrals-state"),
        ),
        var(
            "AFTERCART_REFERRALS_DEAD_LETTER_TOPIC",
            format!("{prefix}referrals-dead-letter"),
        ),
        var(
            "AFTERCART_REFERRALS_WEBHOOK_DEAD_LETTER_TOPIC",
            format!("{prefix}referrals-webhook-dead-letter"),
        ),
        var(
            "AFTERCART_REFERRALS_DATA_REQUESTS_TOPIC",
            format!("{prefix}data_requests"),
        ),
        var("AFTERCART_REFERRALS_CODE_SECRET", "privacy-e2e-code-secret"),
        var("AFTERCART_STATE_HASH_KEY", "privacy-e2e-state-hash-key"),
        var("AFTERCART_REFERRALS_WEBHOOK_URL", receiver.url.clone()),
        // The receiver is a local plain-http server.
        var("AFTERCART_ALLOW_INSECURE_HTTP", "true"),
    ]);
    let referrals = ServiceProcess::start("privacy/referrals", BIN, &["referrals"], env).await;

    // The redaction first; then the redacted customer's checkout and order, as if they had been
    // in flight on the other topics; the control customer's alongside.
    send(
        listen,
        "customers/redact",
        &json!({"shop_id": 1, "shop_domain": SHOP, "orders_to_redact": [],
                "customer": {"id": redacted, "email": redacted_email, "phone": "555-010-0001"}}),
    )
    .await;
    eventually(
        "both services read the redaction",
        Duration::from_secs(60),
        || async {
            let a = family_sum(
                &abandonment.metrics().await,
                "aftercart_abandonment_records_processed_total",
            );
            let r = family_sum(
                &referrals.metrics().await,
                "aftercart_referrals_records_processed_total",
            );
            (a >= 1.0 && r >= 1.0).then_some(())
        },
    )
    .await;
    send(
        listen,
        "checkouts/create",
        &checkout(
            &format!("r-{run}"),
            redacted,
            &redacted_email,
            "+1 555 010 0001",
        ),
    )
    .await;
    send(
        listen,
        "orders/paid",
        &order(8_000_001, redacted, &redacted_email),
    )
    .await;
    send(
        listen,
        "checkouts/create",
        &checkout(
            &format!("c-{run}"),
            control,
            &control_email,
            "+1 555 010 0002",
        ),
    )
    .await;
    send(
        listen,
        "orders/paid",
        &order(8_000_002, control, &control_email),
    )
    .await;

    // Every record read (the redacted customer's dropped), the control's outputs made.
    let abandonments = format!("{prefix}abandonments");
    let invites = format!("{prefix}referral-invites");
    eventually(
        "every record applied and the control's outputs",
        Duration::from_secs(90),
        || async {
            let r = family_sum(
                &referrals.metrics().await,
                "aftercart_referrals_records_processed_total",
            );
            let a = family_sum(
                &abandonment.metrics().await,
                "aftercart_abandonment_records_processed_total",
            );
            let abandoned = read_topic(&broker.bootstrap(), &abandonments).await.len();
            let invited = read_topic(&broker.bootstrap(), &invites).await.len();
            let delivered = receiver.delivered().len();
            (r >= 3.0 && a >= 5.0 && abandoned >= 1 && invited >= 1 && delivered >= 1).then_some(())
        },
    )
    .await;

    // Outputs, changelogs and dead letters: everything the services write. The raw input topics
    // (and the by-shop copy of them) hold the webhooks as Shopify sent them, for
    // AFTERCART_TOPIC_RETENTION; they are the source, not something the services made.
    let written = [
        "abandonments",
        "abandonment-state",
        "abandonment-dead-letter",
        "referral-invites",
        "referral-rewards",
        "referrals-state",
        "referrals-dead-letter",
        "referrals-webhook-dead-letter",
        "data_requests",
    ];
    // A topic that is not there reads as empty: the scan must not pass by looking at nothing.
    let existing = existing_topics(&broker.bootstrap());
    let mut control_seen = false;
    for topic in written {
        let topic = format!("{prefix}{topic}");
        assert!(
            existing.contains(&topic),
            "{topic} does not exist: the scan would read nothing"
        );
        for record in read_topic(&broker.bootstrap(), &topic).await {
            let text = format!(
                "{} {} {:?}",
                String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()),
                String::from_utf8_lossy(&record.value),
                record.headers
            )
            .to_ascii_lowercase();
            assert!(
                !text.contains(&redacted_email),
                "{topic} holds the redacted customer's email: {text}"
            );
            control_seen |= text.contains(&control_email);
        }
    }
    assert!(control_seen, "the scan finds an email where one belongs");
    for delivery in receiver.received() {
        let body = String::from_utf8_lossy(&delivery.body).to_ascii_lowercase();
        assert!(!body.contains(&redacted_email), "delivered: {body}");
    }
    assert_eq!(
        referrals
            .metric("aftercart_referrals_redacted_facts_total")
            .await,
        1.0,
        "the redacted customer's order was dropped"
    );
    for process in [&ingress, &abandonment, &referrals] {
        let logs = process.logs().to_ascii_lowercase();
        // Logs are captured (else the scan below reads nothing).
        assert!(
            !logs.trim().is_empty(),
            "{}: no log captured",
            process.name()
        );
        for email in [&redacted_email, &control_email] {
            assert!(
                !logs.contains(email.as_str()),
                "{} logged an email",
                process.name()
            );
        }
    }

    // Retention and compaction, as the broker reports them.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("admin client");
    let changelogs = [
        format!("{prefix}abandonment-state"),
        format!("{prefix}referrals-state"),
    ];
    let deleting = [
        abandonments.clone(),
        invites.clone(),
        format!("{prefix}compliance"),
    ];
    let specifiers: Vec<ResourceSpecifier<'_>> = changelogs
        .iter()
        .chain(deleting.iter())
        .map(|t| ResourceSpecifier::Topic(t))
        .collect();
    let described = admin
        .describe_configs(&specifiers, &AdminOptions::new())
        .await
        .expect("describe configs");
    for (n, resource) in described.into_iter().enumerate() {
        let resource = resource.expect("a topic's configs");
        let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
        if n < changelogs.len() {
            assert_eq!(value("cleanup.policy").as_deref(), Some("compact"), "{n}");
            assert_eq!(
                value("max.compaction.lag.ms").as_deref(),
                Some("86400000"),
                "{n}"
            );
        } else {
            assert_eq!(value("retention.ms").as_deref(), Some("604800000"), "{n}");
        }
    }
}

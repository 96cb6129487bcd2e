//! Starting the audiences service in-process, exactly as `aftercart audiences` runs it, with
//! every destination pointed at a real local HTTP server (Meta, Google's Data Manager API, the
//! legacy Google Ads API, TikTok, a webhook)
//! or a temporary directory; and producing its inputs the way upstream services write them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aftercart_audiences::{serve, AudiencesArgs, AudiencesConfig, AudiencesDefaults, ServeError};
use aftercart_kafka::{KafkaSettings, TopicNames};
use clap::Parser;
use serde_json::{json, Value};

use crate::delivery::{produce_with, Input};
use crate::receiver::{Receiver, Reply};
use crate::service::{test_kafka_args, TestService};
use crate::Broker;

/// The webhook destination's signing secret.
pub const WEBHOOK_SECRET: &str = "audiences-test-webhook-secret";
pub const META_AUDIENCE: &str = "23850000000000001";
pub const GOOGLE_CUSTOMER: &str = "1234567890";
pub const GOOGLE_LIST: &str = "9876543210";
pub const GOOGLE_JOB: &str = "customers/1234567890/offlineUserDataJobs/555";
/// What the local token endpoint hands out for the refresh token.
pub const GOOGLE_ACCESS_TOKEN: &str = "ya29.fresh-test-token";
/// What the Data Manager stand-in's token endpoint hands out for the service account's JWT.
pub const DATAMANAGER_ACCESS_TOKEN: &str = "ya29.service-account-token";
pub const DATAMANAGER_ACCOUNT: &str = "1234567890";
pub const DATAMANAGER_LIST: &str = "5550001111";
pub const SERVICE_ACCOUNT: &str = "aftercart-test@project.iam.gserviceaccount.com";
/// A test-only RSA key for the service account.
pub const SERVICE_ACCOUNT_KEY: &str =
    include_str!("../../services/audiences/src/export/testdata/service-account-key.pem");
pub const TIKTOK_ADVERTISER: &str = "7000000000000000001";
pub const TIKTOK_AUDIENCE: &str = "1000000001";

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    audiences: AudiencesArgs,
}

/// Local stand-ins for every platform, answering as the real APIs do when all is well.
pub struct Platforms {
    pub meta: Receiver,
    pub google: Receiver,
    /// Google's Data Manager API (and its token endpoint).
    pub datamanager: Receiver,
    pub tiktok: Receiver,
    pub webhook: Receiver,
    pub dir: PathBuf,
}

impl Platforms {
    pub async fn start() -> Platforms {
        let meta = Receiver::start(vec![]).await;
        meta.answer_by_default(
            Reply::status(200)
                .body(r#"{"audience_id":"1","num_received":1,"num_invalid_entries":0}"#),
        );
        let google = Receiver::start(vec![]).await;
        google.route(Arc::new(|_, uri: &str| {
            if uri == "/token" {
                return Some(Reply::status(200).body(&format!(
                    r#"{{"access_token":"{GOOGLE_ACCESS_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#
                )));
            }
            uri.ends_with(":create")
                .then(|| Reply::status(200).body(&format!(r#"{{"resourceName":"{GOOGLE_JOB}"}}"#)))
        }));
        google.answer_by_default(Reply::status(200).body("{}"));
        let datamanager = Receiver::start(vec![]).await;
        datamanager.route(Arc::new(|_, uri: &str| {
            (uri == "/token").then(|| {
                Reply::status(200).body(&format!(
                    r#"{{"access_token":"{DATAMANAGER_ACCESS_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#
                ))
            })
        }));
        datamanager.answer_by_default(Reply::status(200).body(r#"{"requestId":"dm-request-1"}"#));
        let tiktok = Receiver::start(vec![]).await;
        tiktok.answer_by_default(
            Reply::status(200).body(r#"{"code":0,"message":"OK","request_id":"r","data":{}}"#),
        );
        let webhook = Receiver::start(vec![]).await;
        let dir = crate::scratch(&format!("audiences-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("test dir");
        let key = json!({"type": "service_account", "client_email": SERVICE_ACCOUNT,
            "private_key": SERVICE_ACCOUNT_KEY, "token_uri": format!("{}/token", datamanager.base())});
        std::fs::write(dir.join("google-service-account.json"), key.to_string()).expect("key file");
        Platforms {
            meta,
            google,
            datamanager,
            tiktok,
            webhook,
            dir,
        }
    }

    /// An audiences file exporting `abandoned-checkouts` everywhere and `recent-purchasers`
    /// to files, with every base URL on a local receiver.
    pub fn audiences_file(&self) -> String {
        format!(
            r#"
[destinations.meta]
type = "meta"
audience_id = "{META_AUDIENCE}"
access_token = "meta-test-token"
base_url = "{meta}"

[destinations.dm]
type = "google"
operating_account_id = "{DATAMANAGER_ACCOUNT}"
user_list_id = "{DATAMANAGER_LIST}"
service_account_key_file = "{dir}/google-service-account.json"
base_url = "{datamanager}"
ad_personalization = ["confirmed_opt_in"]

[destinations.google]
type = "google_ads_legacy"
customer_id = "{GOOGLE_CUSTOMER}"
user_list_id = "{GOOGLE_LIST}"
developer_token = "google-dev-token"
refresh_token = "google-refresh-token"
client_id = "test-client.apps.googleusercontent.com"
client_secret = "google-client-secret"
token_url = "{google}/token"
base_url = "{google}"

[destinations.tiktok]
type = "tiktok"
advertiser_id = "{TIKTOK_ADVERTISER}"
audience_id = "{TIKTOK_AUDIENCE}"
access_token = "tiktok-test-token"
base_url = "{tiktok}"

[destinations.hook]
type = "webhook"
url = "{hook}"
secret = "{WEBHOOK_SECRET}"

[destinations.files]
type = "file"
dir = {dir:?}

[[audiences]]
name = "abandoned-checkouts"
source = "abandonments"
window = "30d"
destinations = ["meta", "dm", "google", "tiktok", "hook", "files"]
filter = {{ kinds = ["checkout"] }}

[[audiences]]
name = "recent-purchasers"
source = "orders"
window = "30d"
destinations = ["files"]
"#,
            meta = self.meta.base(),
            google = self.google.base(),
            datamanager = self.datamanager.base(),
            tiktok = self.tiktok.base(),
            hook = self.webhook.url,
            dir = self.dir.display().to_string(),
        )
    }
}

impl Drop for Platforms {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config on the same Kafka settings as a test's other parts, with its own topics and group,
/// built from real flags, exporting within a second and retrying quickly.
pub fn test_config(
    kafka: &KafkaSettings,
    platforms: &Platforms,
    flags: &[&str],
) -> AudiencesConfig {
    let prefix = &kafka.topic_prefix;
    std::fs::create_dir_all(&platforms.dir).expect("test dir");
    let file = platforms.dir.join("audiences.toml");
    std::fs::write(&file, platforms.audiences_file()).expect("audiences file");
    let mut argv = vec![
        "audiences".to_string(),
        format!("--audiences-config={}", file.display()),
        format!("--audiences-group={prefix}audiences"),
        format!("--audiences-abandonment-topic={prefix}abandonments"),
        format!("--audiences-batches-topic={prefix}audience-batches"),
        format!("--audiences-by-shop-topic={prefix}audiences-by-shop"),
        format!("--audiences-state-topic={prefix}audiences-state"),
        format!("--audiences-dead-letter-topic={prefix}audiences-dead-letter"),
        format!("--audiences-data-requests-topic={prefix}data_requests"),
        "--audiences-export-flush-interval=1s".to_string(),
        "--audiences-export-backoff-initial=100ms".to_string(),
        "--audiences-export-backoff-max=1s".to_string(),
        "--audiences-export-max-retry-duration=20s".to_string(),
        "--audiences-export-timeout=10s".to_string(),
    ];
    // A flag given by the test replaces the default above.
    let name = |flag: &str| flag.split('=').next().unwrap_or_default().to_string();
    argv.retain(|base| !flags.iter().any(|f| name(f) == name(base)));
    argv.extend(flags.iter().map(|f| f.to_string()));
    let args = Flags::try_parse_from(argv)
        .expect("test flags parse")
        .audiences;
    args.validate(
        &test_kafka_args(kafka),
        Duration::from_secs(10),
        &AudiencesDefaults::production(),
    )
    .expect("valid test config")
}

/// A running audiences service.
pub type TestAudiences = TestService<AudiencesConfig, ServeError>;

impl TestAudiences {
    /// Starts the service and waits until the engine and every exporter are ready.
    pub async fn start_on(broker: &Broker, config: AudiencesConfig) -> TestAudiences {
        let topics = aftercart_audiences::topic_specs(&config).0;
        if !broker.is_mock() {
            aftercart_kafka::ensure_topics(&config.kafka, &topics, &[])
                .await
                .expect("topics created");
        }
        TestService::launch(
            broker,
            "audiences",
            config,
            &topics,
            |c, r, h, s| async move { serve(&c, &r, &h, s).await },
        )
        .await
    }
}

/// A person as the upstream services describe them.
#[derive(Debug, Clone)]
pub struct Shopper {
    pub id: u64,
    pub email: &'static str,
    pub phone: Option<&'static str>,
    pub first_name: &'static str,
    pub last_name: &'static str,
    pub country: &'static str,
}

/// Writes upstream records: abandonments as `aftercart abandonment` does, Shopify webhooks as
/// the ingress does (exact body, `shopify-*` headers, key), through the service's own Kafka
/// settings (so through TLS when the service's broker is behind it).
pub struct Upstream<'a> {
    pub broker: &'a Broker,
    pub config: &'a AudiencesConfig,
    pub shop: &'a str,
}

impl Upstream<'_> {
    fn kafka_properties(&self) -> Vec<(String, String)> {
        self.config.kafka.properties.iter().cloned().collect()
    }

    fn raw_topic(&self, family: aftercart_shopify::Family) -> String {
        TopicNames::new(&self.config.kafka.topic_prefix).family(family)
    }

    /// A consented (or not) checkout abandonment of `shopper`, abandoned `at`.
    pub async fn abandoned(&self, shopper: &Shopper, consent: bool, token: &str, at: &str) {
        let event = json!({
            "type": "abandoned",
            "kind": "checkout",
            "event_id": format!("{:032x}", shopper.id),
            "shop": self.shop,
            "journey_key": format!("{}/{token}", self.shop),
            "checkout_token": token,
            "cart_token": null,
            "customer": {
                "id": shopper.id,
                "email": shopper.email,
                "phone": shopper.phone,
                "first_name": shopper.first_name,
                "last_name": shopper.last_name,
                "country": shopper.country,
                "accepts_email_marketing": consent,
                "accepts_sms_marketing": false
            },
            "value": {"amount": "120.00", "currency": "GBP"},
            "segments": {
                "stage": "payment", "value_tier": "high", "customer": "new",
                "contactable": {"email": true, "sms": false},
                "consent": {"email": consent, "sms": false},
                "discount": false, "fence_sitter": false, "repeat": 0
            },
            "abandoned_at": at,
            "last_activity_at": at
        });
        let value = event.to_string();
        let key = format!("{}/{token}", self.shop);
        let event_id = format!("{:032x}", shopper.id);
        produce_with(
            &self.config.kafka.brokers,
            &self.kafka_properties(),
            &self.config.abandonments_topic,
            &[Input {
                key: &key,
                value: value.as_bytes(),
                headers: &[("aftercart-event-id", &event_id)],
            }],
        )
        .await;
    }

    /// A Shopify webhook on its raw topic, as the ingress publishes it.
    pub async fn webhook(
        &self,
        family: aftercart_shopify::Family,
        topic: &str,
        key: &str,
        body: &Value,
    ) {
        let value = body.to_string();
        let key = format!("{}/{key}", self.shop);
        produce_with(
            &self.config.kafka.brokers,
            &self.kafka_properties(),
            &self.raw_topic(family),
            &[Input {
                key: &key,
                value: value.as_bytes(),
                headers: &[
                    ("shopify-topic", topic),
                    ("shopify-shop-domain", self.shop),
                    ("shopify-webhook-id", &uuid::Uuid::new_v4().to_string()),
                ],
            }],
        )
        .await;
    }

    /// `customers_email_marketing_consent/update` for `shopper`.
    pub async fn consent(&self, shopper: &Shopper, state: &str, at: &str) {
        let body = json!({
            "customer_id": shopper.id,
            "email_address": shopper.email,
            "email_marketing_consent": {"state": state, "opt_in_level": "single_opt_in", "consent_updated_at": at}
        });
        self.webhook(
            aftercart_shopify::Family::Customers,
            "customers_email_marketing_consent/update",
            &shopper.id.to_string(),
            &body,
        )
        .await;
    }

    /// `customers/redact` for `shopper`.
    pub async fn redact(&self, shopper: &Shopper) {
        let body = json!({
            "shop_id": 954889,
            "shop_domain": self.shop,
            "customer": {"id": shopper.id, "email": shopper.email, "phone": shopper.phone},
            "orders_to_redact": []
        });
        self.webhook(
            aftercart_shopify::Family::Compliance,
            "customers/redact",
            &shopper.id.to_string(),
            &body,
        )
        .await;
    }
}

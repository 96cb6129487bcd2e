//! Starting the nudges service in-process, exactly as `aftercart nudges` runs it, with its
//! Klaviyo destination on a real local HTTP server answering like Klaviyo; and producing its
//! inputs the way upstream services write them (abandonment events, Shopify webhooks).

use std::path::PathBuf;
use std::time::Duration;

use aftercart_kafka::{KafkaSettings, TopicNames};
use aftercart_nudges::{serve, NudgesArgs, NudgesConfig, NudgesDefaults, ServeError};
use aftercart_shopify::Family;
use clap::Parser;
use serde_json::{json, Value};

use crate::delivery::{produce_with, Input};
use crate::receiver::{Receiver, Reply};
use crate::service::{test_kafka_args, TestService};
use crate::Broker;

/// The shop's Klaviyo private key in the keys file.
pub const KLAVIYO_KEY: &str = "pk_test_nudges";

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    nudges: NudgesArgs,
    #[command(flatten)]
    shopify: aftercart_shopify_admin::AdminArgs,
    #[command(flatten)]
    state_hash: aftercart_runtime::state_hash::StateHashArgs,
}

/// A stand-in Klaviyo (202 to every event) and a directory for the config and keys files.
pub struct Klaviyo {
    pub receiver: Receiver,
    pub dir: PathBuf,
}

impl Klaviyo {
    pub async fn start(shop: &str) -> Klaviyo {
        let receiver = Receiver::start(vec![]).await;
        receiver.answer_by_default(Reply::status(202));
        let dir = crate::scratch(&format!("nudges-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("test dir");
        std::fs::write(dir.join("klaviyo-keys"), format!("{shop}={KLAVIYO_KEY}\n"))
            .expect("keys file");
        Klaviyo { receiver, dir }
    }

    /// The events Klaviyo accepted, as JSON.
    pub fn events(&self) -> Vec<Value> {
        self.receiver
            .delivered()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).expect("JSON event"))
            .collect()
    }
}

impl Drop for Klaviyo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config on the test's Kafka settings with its own topics and group, `steps` as the
/// cadence, sending to the stand-in Klaviyo.
pub fn test_config(kafka: &KafkaSettings, klaviyo: &Klaviyo, steps: &str) -> NudgesConfig {
    test_config_with(kafka, klaviyo, steps, "", &[])
}

/// [`test_config`] with more of the nudges file (`file`) and more flags.
pub fn test_config_with(
    kafka: &KafkaSettings,
    klaviyo: &Klaviyo,
    steps: &str,
    file: &str,
    flags: &[String],
) -> NudgesConfig {
    let prefix = &kafka.topic_prefix;
    let path = klaviyo.dir.join("nudges.toml");
    std::fs::write(
        &path,
        format!(
            "[destination]\nkind = \"klaviyo\"\nkeys_file = {:?}\n{file}",
            klaviyo.dir.join("klaviyo-keys").display().to_string()
        ),
    )
    .expect("config file");
    let file = path;
    let mut argv = vec![
        "nudges".to_string(),
        format!("--nudges-config={}", file.display()),
        format!("--nudges-group={prefix}nudges"),
        format!("--nudges-topic={prefix}nudges"),
        format!("--nudges-abandonments-topic={prefix}abandonments"),
        format!("--nudges-by-shop-topic={prefix}nudges-by-shop"),
        format!("--nudges-state-topic={prefix}nudges-state"),
        format!("--nudges-dead-letter-topic={prefix}nudges-dead-letter"),
        format!("--nudges-data-requests-topic={prefix}data_requests"),
        format!("--nudges-steps={steps}"),
        "--state-hash-key=integration-test-state-hash-key".to_string(),
        format!("--klaviyo-base-url={}", klaviyo.receiver.base()),
    ];
    argv.extend(flags.iter().cloned());
    let flags = Flags::try_parse_from(argv).expect("test flags parse");
    flags
        .nudges
        .validate(
            &test_kafka_args(kafka),
            &flags.shopify,
            &flags.state_hash,
            Duration::from_secs(10),
            &NudgesDefaults::production(),
        )
        .expect("valid test config")
}

/// A running nudges service.
pub type TestNudges = TestService<NudgesConfig, ServeError>;

impl TestNudges {
    /// Starts the service and waits until the stage and its destination are ready.
    pub async fn start_on(broker: &Broker, config: NudgesConfig) -> TestNudges {
        let topics = aftercart_nudges::topic_specs(&config).0;
        if !broker.is_mock() {
            aftercart_kafka::ensure_topics(&config.kafka, &topics, &[])
                .await
                .expect("topics created");
        }
        TestService::launch(broker, "nudges", config, &topics, |c, r, h, s| async move {
            serve(&c, &r, &h, s).await
        })
        .await
    }
}

/// Writes the nudges service's inputs: abandonment events as `aftercart abandonment` does,
/// Shopify webhooks as the ingress does.
pub struct Upstream<'a> {
    pub config: &'a NudgesConfig,
    pub shop: &'a str,
}

impl Upstream<'_> {
    async fn produce(&self, topic: &str, key: &str, value: &Value, headers: &[(&str, &str)]) {
        let properties: Vec<(String, String)> =
            self.config.kafka.properties.iter().cloned().collect();
        let value = value.to_string();
        produce_with(
            &self.config.kafka.brokers,
            &properties,
            topic,
            &[Input {
                key,
                value: value.as_bytes(),
                headers,
            }],
        )
        .await;
    }

    /// A checkout abandonment (cart `cart`) of customer `id` with `email`, abandoned now, with
    /// marketing consent (contact details and recovery link carried) or without (ids only).
    pub async fn abandoned(&self, id: u64, email: &str, cart: &str, consent: bool) {
        self.abandoned_many(&[(id, email.to_string(), cart.to_string(), consent)])
            .await;
    }

    /// Several abandonments through one producer, in order.
    pub async fn abandoned_many(&self, people: &[(u64, String, String, bool)]) {
        let events: Vec<(String, String, String)> = people
            .iter()
            .map(|(id, email, cart, consent)| self.abandonment(*id, email, cart, *consent))
            .collect();
        let headers: Vec<[(&str, &str); 1]> = events
            .iter()
            .map(|(_, event_id, _)| [("aftercart-event-id", event_id.as_str())])
            .collect();
        let inputs: Vec<Input> = events
            .iter()
            .zip(&headers)
            .map(|((key, _, value), headers)| Input {
                key,
                value: value.as_bytes(),
                headers,
            })
            .collect();
        let properties: Vec<(String, String)> =
            self.config.kafka.properties.iter().cloned().collect();
        produce_with(
            &self.config.kafka.brokers,
            &properties,
            &self.config.abandonments_topic,
            &inputs,
        )
        .await;
    }

    /// An abandonment event as `aftercart abandonment` writes it: key, event id, value.
    fn abandonment(
        &self,
        id: u64,
        email: &str,
        cart: &str,
        consent: bool,
    ) -> (String, String, String) {
        let now = aftercart_shopify::time::rfc3339(aftercart_shopify::time::now_ms());
        let journey_key = format!("{}/{cart}", self.shop);
        let event_id = format!("{:016x}{:016x}", id, cart.len() as u64);
        let event = json!({
            "type": "abandoned", "kind": "checkout", "event_id": event_id,
            "shop": self.shop, "journey_key": journey_key,
            "checkout_token": format!("chk-{cart}"), "cart_token": cart,
            "customer": {"id": id, "email": if consent { Some(email) } else { None },
                "phone": null, "first_name": if consent { Some("Ann") } else { None },
                "last_name": null, "country": "GB", "accepts_email_marketing": consent,
                "accepts_sms_marketing": false},
            "value": {"amount": "120.00", "currency": "GBP", "subtotal": "110.00"},
            "line_items": {"count": 1, "quantity": 2, "items": [{"product_id": 1, "variant_id": 2,
                "title": "Mug", "quantity": 2, "price": "60.00", "image_url": "https://cdn.example/mug.png"}]},
            "segments": {"stage": "payment", "value_tier": "medium", "customer": "new",
                "contactable": {"email": true, "sms": false}, "consent": {"email": consent, "sms": false},
                "discount": false, "fence_sitter": false, "repeat": 0},
            "contact_basis": if consent { Some("marketing") } else { None },
            "recovery_url": if consent { Some(format!("https://{}/recover/{cart}?key=k", self.shop)) } else { None },
            "abandoned_at": now, "last_activity_at": now,
        });
        (journey_key, event_id, event.to_string())
    }

    /// A Shopify webhook on its raw topic, as the ingress publishes it.
    pub async fn webhook(&self, family: Family, topic: &str, key: &str, body: &Value) {
        let raw = TopicNames::new(&self.config.kafka.topic_prefix).family(family);
        let key = format!("{}/{key}", self.shop);
        let webhook_id = uuid::Uuid::new_v4().to_string();
        self.produce(
            &raw,
            &key,
            body,
            &[
                ("shopify-topic", topic),
                ("shopify-shop-domain", self.shop),
                ("shopify-webhook-id", &webhook_id),
            ],
        )
        .await;
    }
}

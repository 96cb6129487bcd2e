//! Journey service configuration: flags with `AFTERCART_*` environment fallbacks, and the
//! journey file (`AFTERCART_JOURNEY_CONFIG`) for the rules and the destination.

pub mod file;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use aftercart_delivery::config::SinkFlags;
use aftercart_delivery::message::KlaviyoConfig;
use aftercart_kafka::{KafkaArgs, KafkaSettings};
use aftercart_runtime::config::{parse_duration, parse_positive_duration, ConfigErrors};
use aftercart_runtime::state_hash::StateHashArgs;

use crate::domain::engine::Rules;
use crate::domain::kpis::{parse_offset, KpiRules};
use file::{DestinationFile, JourneyFile};

/// The service's own flags; Kafka, admin and shutdown flags belong to the command running it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Journey")]
pub struct JourneyArgs {
    /// Consumer group of the service; every instance of one deployment shares it.
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_GROUP",
        default_value = "aftercart-journey"
    )]
    pub journey_group: String,

    /// Output topic of touchpoints (order confirmed, shipped, delivered, review request, ...).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_TOUCHPOINTS_TOPIC",
        default_value = "aftercart.touchpoints"
    )]
    pub journey_touchpoints_topic: String,

    /// Internal topic that brings all of one shop's facts to one partition (keyed by shop).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_BY_SHOP_TOPIC",
        default_value = "aftercart.journey-by-shop"
    )]
    pub journey_by_shop_topic: String,

    /// Compacted changelog topic holding orders and consent.
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_STATE_TOPIC",
        default_value = "aftercart.journey-state"
    )]
    pub journey_state_topic: String,

    /// Dead-letter topic for records that cannot be used (the reason is in a header).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_DEAD_LETTER_TOPIC",
        default_value = "aftercart.journey-dead-letter"
    )]
    pub journey_dead_letter_topic: String,

    /// Dead-letter topic of touchpoints the destination refused or never accepted.
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_DELIVERY_DEAD_LETTER_TOPIC",
        default_value = "aftercart.journey-delivery-dead-letter"
    )]
    pub journey_delivery_dead_letter_topic: String,

    /// Output topic of the daily KPI record per shop (yesterday against the previous 7 days).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_KPIS_TOPIC",
        default_value = "aftercart.kpis"
    )]
    pub journey_kpis_topic: String,

    /// Output topic of the answers to `customers/data_request` (shared by the services; one
    /// report per request: the customer's orders, touchpoints sent and scheduled, consent).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_DATA_REQUESTS_TOPIC",
        default_value = "aftercart.data_requests"
    )]
    pub journey_data_requests_topic: String,

    /// The abandonment service's events, counted in the KPI record (abandoned, recovered).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_ABANDONMENTS_TOPIC",
        default_value = "aftercart.abandonments"
    )]
    pub journey_abandonments_topic: String,

    /// The referrals service's reward events, counted in the KPI record (referred orders,
    /// rewards granted and voided).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_REFERRAL_REWARDS_TOPIC",
        default_value = "aftercart.referral-rewards"
    )]
    pub journey_referral_rewards_topic: String,

    /// The journey file (TOML): review delay, products with a usage period, destination
    /// (see examples/journey.toml). Without it: review requests 7 days after delivery, no
    /// replenishment reminders, touchpoints only on Kafka.
    #[arg(long, env = "AFTERCART_JOURNEY_CONFIG")]
    pub journey_config: Option<String>,

    /// `customers/redact` and `shop/redact` are remembered this long (customer and order ids,
    /// keyed hashes of the email and phone: never the values), so a late or in-flight fact
    /// never brings the person's orders back; at least the order retention.
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_REDACTION_RETENTION",
        default_value = "400d"
    )]
    pub journey_redaction_retention: String,

    #[command(flatten)]
    pub watchdog: crate::watchdog::WatchdogArgs,
}

/// Defaults that differ under `aftercart dev`.
#[derive(Debug, Clone)]
pub struct JourneyDefaults {
    pub fallback_brokers: Option<String>,
    pub review_request_after: &'static str,
    /// A KPI day: 24h (shorter under `aftercart dev`, to watch reports come).
    pub kpi_day_length: &'static str,
    /// The state hash key when none is configured (`aftercart dev` only).
    pub state_hash_key: Option<&'static str>,
}

impl JourneyDefaults {
    pub fn production() -> Self {
        Self {
            fallback_brokers: None,
            review_request_after: "7d",
            kpi_day_length: "24h",
            state_hash_key: None,
        }
    }
}

/// Where touchpoints are delivered.
#[derive(Debug, Clone)]
pub enum DestinationConfig {
    File(PathBuf),
    Webhook(aftercart_delivery::config::SinkConfig),
    Klaviyo(KlaviyoConfig),
}

#[derive(Debug, Clone)]
pub struct JourneyConfig {
    pub kafka: KafkaSettings,
    pub group: String,
    pub touchpoints_topic: String,
    pub by_shop_topic: String,
    pub state_topic: String,
    pub dead_letter_topic: String,
    pub delivery_dead_letter_topic: String,
    pub rules: Rules,
    pub kpis_topic: String,
    /// Answers to `customers/data_request`.
    pub data_requests_topic: String,
    /// Read for the KPI record (abandonments) and the referral counts (invites, rewards).
    pub abandonments_topic: String,
    pub invites_topic: String,
    pub rewards_topic: String,
    pub destination: Option<DestinationConfig>,
    /// Bounds the final producer flush on shutdown.
    pub shutdown_timeout: Duration,
    /// The subscription watchdog.
    pub watchdog: crate::watchdog::WatchdogRules,
}

impl JourneyArgs {
    /// Validates with the command's Kafka flags, shutdown deadline and the referral invites
    /// shared with the referrals service (their topic, and whether the journey relays them:
    /// when the referrals service invites at delivery), and the shared state hash key's flags
    /// (redaction markers hold keyed hashes), every problem at once.
    pub fn validate(
        &self,
        kafka: &KafkaArgs,
        state_hash: &StateHashArgs,
        shutdown_timeout: Duration,
        invites: (String, bool),
        defaults: &JourneyDefaults,
    ) -> Result<JourneyConfig, ConfigErrors> {
        let (invites_topic, relay_invites) = invites;
        let mut errors = ConfigErrors::new();
        let kafka = kafka.validate(&mut errors, defaults.fallback_brokers.as_deref());
        let file = match &self.journey_config {
            Some(path) => errors
                .check("AFTERCART_JOURNEY_CONFIG", JourneyFile::read(path))
                .unwrap_or_default(),
            None => JourneyFile::default(),
        };
        let ms = |errors: &mut ConfigErrors, name: &str, value: &str| {
            errors
                .check(
                    name,
                    parse_duration(value).and_then(|d| {
                        if d.is_zero() {
                            Err("must be above 0".into())
                        } else {
                            Ok(d.as_millis() as i64)
                        }
                    }),
                )
                .unwrap_or(1)
        };
        let review = file
            .review_request_after
            .as_deref()
            .unwrap_or(defaults.review_request_after);
        let review_request_after = (review.trim() != "off").then(|| {
            ms(
                &mut errors,
                "AFTERCART_JOURNEY_CONFIG: review_request_after",
                review,
            )
        });
        let order_retention = ms(
            &mut errors,
            "AFTERCART_JOURNEY_CONFIG: order_retention",
            file.order_retention.as_deref().unwrap_or("120d"),
        );
        let mut replenish_every_ms = HashMap::new();
        for product in &file.replenishment {
            let every = ms(
                &mut errors,
                &format!(
                    "AFTERCART_JOURNEY_CONFIG: replenishment of product {}",
                    product.product_id
                ),
                &product.every,
            );
            if replenish_every_ms
                .insert(product.product_id, every)
                .is_some()
            {
                errors.push(format!(
                    "AFTERCART_JOURNEY_CONFIG: product {} is listed twice under replenishment",
                    product.product_id
                ));
            }
        }
        let redaction_retention = errors
            .check(
                "AFTERCART_JOURNEY_REDACTION_RETENTION",
                parse_positive_duration(&self.journey_redaction_retention),
            )
            .map(|d| d.as_millis() as i64);
        if redaction_retention.is_some_and(|kept| kept < order_retention) {
            errors.push(
                "AFTERCART_JOURNEY_REDACTION_RETENTION: must be at least the order retention",
            );
        }
        // Redaction markers hash emails and phones with the key every service shares.
        let hasher = state_hash
            .hasher(defaults.state_hash_key)
            .map_err(|problem| errors.push(problem))
            .ok();
        let kpis = kpi_rules(&file, defaults, &mut errors);
        let watchdog = self.watchdog.validate(&mut errors);
        let destination = file
            .destination
            .as_ref()
            .and_then(|d| destination(d, &mut errors));
        for (name, value) in [
            ("AFTERCART_JOURNEY_GROUP", &self.journey_group),
            (
                "AFTERCART_JOURNEY_TOUCHPOINTS_TOPIC",
                &self.journey_touchpoints_topic,
            ),
            (
                "AFTERCART_JOURNEY_BY_SHOP_TOPIC",
                &self.journey_by_shop_topic,
            ),
            ("AFTERCART_JOURNEY_STATE_TOPIC", &self.journey_state_topic),
            (
                "AFTERCART_JOURNEY_DEAD_LETTER_TOPIC",
                &self.journey_dead_letter_topic,
            ),
            (
                "AFTERCART_JOURNEY_DELIVERY_DEAD_LETTER_TOPIC",
                &self.journey_delivery_dead_letter_topic,
            ),
            ("AFTERCART_JOURNEY_KPIS_TOPIC", &self.journey_kpis_topic),
            (
                "AFTERCART_JOURNEY_DATA_REQUESTS_TOPIC",
                &self.journey_data_requests_topic,
            ),
            (
                "AFTERCART_JOURNEY_ABANDONMENTS_TOPIC",
                &self.journey_abandonments_topic,
            ),
            (
                "AFTERCART_JOURNEY_REFERRAL_REWARDS_TOPIC",
                &self.journey_referral_rewards_topic,
            ),
        ] {
            if value.trim().is_empty() {
                errors.push(format!("{name}: must not be empty"));
            }
        }
        let Some(kafka) = kafka else {
            return Err(errors);
        };
        errors.finish(|| JourneyConfig {
            kafka,
            group: self.journey_group.trim().to_string(),
            touchpoints_topic: self.journey_touchpoints_topic.trim().to_string(),
            by_shop_topic: self.journey_by_shop_topic.trim().to_string(),
            state_topic: self.journey_state_topic.trim().to_string(),
            dead_letter_topic: self.journey_dead_letter_topic.trim().to_string(),
            delivery_dead_letter_topic: self.journey_delivery_dead_letter_topic.trim().to_string(),
            rules: Rules {
                review_after_ms: review_request_after,
                replenish_every_ms,
                relay_invites,
                order_retention_ms: order_retention,
                redaction_retention_ms: redaction_retention.expect("checked"),
                hasher: hasher.expect("checked"),
                kpis,
            },
            kpis_topic: self.journey_kpis_topic.trim().to_string(),
            data_requests_topic: self.journey_data_requests_topic.trim().to_string(),
            abandonments_topic: self.journey_abandonments_topic.trim().to_string(),
            invites_topic,
            rewards_topic: self.journey_referral_rewards_topic.trim().to_string(),
            destination,
            shutdown_timeout,
            watchdog,
        })
    }
}

/// Day cutting of the daily KPI record: the shops' time zones (fixed UTC offsets) from the file.
fn kpi_rules(
    file: &JourneyFile,
    defaults: &JourneyDefaults,
    errors: &mut ConfigErrors,
) -> KpiRules {
    const NAME: &str = "AFTERCART_JOURNEY_CONFIG: kpis";
    let kpis = file.kpis.clone().unwrap_or_default();
    let default_offset_ms = errors
        .check(
            &format!("{NAME}.default_time_zone"),
            parse_offset(kpis.default_time_zone.as_deref().unwrap_or("UTC")),
        )
        .unwrap_or(0);
    let mut offsets = HashMap::new();
    for (shop, zone) in &kpis.time_zones {
        if let Some(offset) = errors.check(&format!("{NAME}.time_zones.{shop}"), parse_offset(zone))
        {
            offsets.insert(shop.trim().to_ascii_lowercase(), offset);
        }
    }
    let day = kpis
        .day_length
        .as_deref()
        .unwrap_or(defaults.kpi_day_length);
    let day_ms = errors
        .check(
            &format!("{NAME}.day_length"),
            parse_duration(day).and_then(|d| {
                if d.as_millis() < 1000 {
                    Err("must be at least 1s".into())
                } else {
                    Ok(d.as_millis() as i64)
                }
            }),
        )
        .unwrap_or(86_400_000);
    KpiRules {
        day_ms,
        default_offset_ms,
        offsets,
    }
}

/// The destination of the file, validated with the delivery crate's own rules.
fn destination(file: &DestinationFile, errors: &mut ConfigErrors) -> Option<DestinationConfig> {
    const NAME: &str = "AFTERCART_JOURNEY_CONFIG: destination";
    let sink = |url: &str,
                secret_file: Option<&String>,
                timeout: Option<&String>,
                max_retry: Option<&String>,
                errors: &mut ConfigErrors| {
        let defaults = SinkFlags::default();
        SinkFlags {
            url: Some(url.to_string()),
            secret: None,
            secret_file: secret_file.map(PathBuf::from),
            timeout: timeout.cloned().unwrap_or(defaults.timeout),
            backoff_initial: defaults.backoff_initial,
            backoff_max: defaults.backoff_max,
            max_retry_duration: max_retry.cloned().unwrap_or(defaults.max_retry_duration),
        }
        .validate(NAME, errors)
    };
    match file {
        DestinationFile::File { dir } if dir.trim().is_empty() => {
            errors.push(format!("{NAME}: dir must not be empty"));
            None
        }
        DestinationFile::File { dir } => Some(DestinationConfig::File(PathBuf::from(dir))),
        DestinationFile::Webhook {
            url,
            secret_file,
            timeout,
            max_retry_duration,
        } => sink(
            url,
            secret_file.as_ref(),
            timeout.as_ref(),
            max_retry_duration.as_ref(),
            errors,
        )
        .map(DestinationConfig::Webhook),
        DestinationFile::Klaviyo {
            keys_file,
            base_url,
            timeout,
            max_retry_duration,
        } => {
            let base_url = base_url
                .clone()
                .unwrap_or_else(|| aftercart_delivery::message::klaviyo::BASE_URL.to_string());
            let sink = sink(
                &base_url,
                None,
                timeout.as_ref(),
                max_retry_duration.as_ref(),
                errors,
            )?;
            Some(DestinationConfig::Klaviyo(KlaviyoConfig {
                keys_file: PathBuf::from(keys_file),
                base_url,
                timeout: sink.timeout,
                retry: sink.retry,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        journey: JourneyArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        state_hash: StateHashArgs,
    }

    fn validate(args: &[&str], relay: Option<&str>) -> Result<JourneyConfig, ConfigErrors> {
        let invites = (
            relay.unwrap_or("aftercart.referral-invites").to_string(),
            relay.is_some(),
        );
        let mut argv = vec![
            "journey",
            "--kafka-brokers",
            "localhost:9092",
            "--state-hash-key",
            "journey-test-state-hash-key",
        ];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        cli.journey.validate(
            &cli.kafka,
            &cli.state_hash,
            Duration::from_secs(5),
            invites,
            &JourneyDefaults::production(),
        )
    }

    #[test]
    fn defaults_review_after_a_week_and_relay_nothing() {
        let config = validate(&[], None).unwrap();
        assert_eq!(config.rules.review_after_ms, Some(7 * 86_400_000));
        assert!(!config.rules.relay_invites);
        assert!(config.destination.is_none());
        assert_eq!(config.touchpoints_topic, "aftercart.touchpoints");
    }

    #[test]
    fn the_example_file_configures_rules_and_a_file_destination() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journey.toml");
        let config = validate(
            &["--journey-config", path],
            Some("aftercart.referral-invites"),
        )
        .unwrap();
        assert_eq!(config.rules.review_after_ms, Some(10_000));
        assert_eq!(
            config.rules.replenish_every_ms.get(&788032119674292922),
            Some(&30_000)
        );
        assert!(config.rules.relay_invites);
        assert!(matches!(
            config.destination,
            Some(DestinationConfig::File(_))
        ));
    }

    #[test]
    fn the_redaction_retention_is_positive_and_outlasts_the_orders() {
        let config = validate(&[], None).unwrap();
        assert_eq!(config.rules.redaction_retention_ms, 400 * 86_400_000);
        for (value, problem) in [
            ("0s", "must be above 0"),
            ("soon", "is not a duration"),
            ("30d", "at least the order retention"),
        ] {
            let errors = validate(&["--journey-redaction-retention", value], None)
                .unwrap_err()
                .to_string();
            assert!(
                errors.contains("AFTERCART_JOURNEY_REDACTION_RETENTION"),
                "{errors}"
            );
            assert!(errors.contains(problem), "{errors}");
        }
    }

    #[test]
    fn the_shared_state_hash_key_is_required_outside_dev() {
        let cli = Cli::try_parse_from(["journey", "--kafka-brokers", "localhost:9092"]).unwrap();
        let errors = cli
            .journey
            .validate(
                &cli.kafka,
                &cli.state_hash,
                Duration::from_secs(5),
                ("aftercart.referral-invites".to_string(), false),
                &JourneyDefaults::production(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("AFTERCART_STATE_HASH_KEY: required"),
            "{errors}"
        );
    }

    #[test]
    fn every_problem_of_the_file_is_reported() {
        let dir = std::env::temp_dir().join(format!("journey-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "review_request_after = \"soon\"\n[[replenishment]]\nproduct_id = 1\nevery = \"0s\"\n\
             [destination]\ntype = \"webhook\"\nurl = \"ftp://x\"\n",
        )
        .unwrap();
        let errors = validate(&["--journey-config", path.to_str().unwrap()], None)
            .unwrap_err()
            .to_string();
        assert!(errors.contains("review_request_after"), "{errors}");
        assert!(errors.contains("replenishment of product 1"), "{errors}");
        assert!(errors.contains("destination"), "{errors}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

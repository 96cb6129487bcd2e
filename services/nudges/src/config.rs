//! Nudges service configuration: flags with `AFTERCART_*` environment fallbacks, and the
//! optional TOML file (`AFTERCART_NUDGES_CONFIG`) with per-shop cadences and the destination.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use aftercart_delivery::message::KlaviyoConfig;
use aftercart_delivery::{RetryPolicy, SinkConfig, SinkFlags};
use aftercart_kafka::{KafkaArgs, KafkaSettings};
use aftercart_runtime::config::{parse_duration, parse_positive_duration, ConfigErrors};
use aftercart_runtime::state_hash::StateHashArgs;
use aftercart_shopify_admin::{AdminArgs, AdminConfig, DiscountValue};
use serde::Deserialize;

use crate::domain::cadence::{QuietHours, Steps};
use crate::domain::engine::{Rules, ShopPolicy};

/// The service's own flags; Kafka, admin and shutdown flags belong to the command running it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Nudges")]
pub struct NudgesArgs {
    /// Consumer group of the nudges service; every instance of one deployment shares it.
    #[arg(
        long = "nudges-group",
        env = "AFTERCART_NUDGES_GROUP",
        default_value = "aftercart-nudges"
    )]
    pub nudges_group: String,

    /// Output topic of nudges (one record per step of a sequence).
    #[arg(
        long = "nudges-topic",
        env = "AFTERCART_NUDGES_TOPIC",
        default_value = "aftercart.nudges"
    )]
    pub nudges_topic: String,

    /// The abandonment events the nudges follow (the abandonment service's output).
    #[arg(
        long = "nudges-abandonments-topic",
        env = "AFTERCART_NUDGES_ABANDONMENTS_TOPIC",
        default_value = "aftercart.abandonments"
    )]
    pub nudges_abandonments_topic: String,

    /// Internal topic that brings all of one shop's facts to one partition (keyed by shop).
    #[arg(
        long = "nudges-by-shop-topic",
        env = "AFTERCART_NUDGES_BY_SHOP_TOPIC",
        default_value = "aftercart.nudges-by-shop"
    )]
    pub nudges_by_shop_topic: String,

    /// Compacted changelog topic holding running sequences and what is remembered of people.
    #[arg(
        long = "nudges-state-topic",
        env = "AFTERCART_NUDGES_STATE_TOPIC",
        default_value = "aftercart.nudges-state"
    )]
    pub nudges_state_topic: String,

    /// Dead-letter topic for records that cannot be used and nudges a destination refused.
    #[arg(
        long = "nudges-dead-letter-topic",
        env = "AFTERCART_NUDGES_DEAD_LETTER_TOPIC",
        default_value = "aftercart.nudges-dead-letter"
    )]
    pub nudges_dead_letter_topic: String,

    /// Output topic of the answers to `customers/data_request` (shared by the services; one
    /// report per request: the person's nudge sequences and what is remembered of them).
    #[arg(
        long = "nudges-data-requests-topic",
        env = "AFTERCART_NUDGES_DATA_REQUESTS_TOPIC",
        default_value = "aftercart.data_requests"
    )]
    pub nudges_data_requests_topic: String,

    /// Default cadence: delays after the abandonment, comma-separated (1 to 10, increasing).
    /// A shop's `steps` in the config file wins [default: 1h,24h,72h; 15s,45s under
    /// `aftercart dev`].
    #[arg(long = "nudges-steps", env = "AFTERCART_NUDGES_STEPS")]
    pub nudges_steps: Option<String>,

    /// At most one nudge sequence per person (customer id, email or phone) within this window.
    #[arg(
        long = "nudges-frequency-cap",
        env = "AFTERCART_NUDGES_FREQUENCY_CAP",
        default_value = "7d"
    )]
    pub nudges_frequency_cap: String,

    /// `customers/redact` and `shop/redact` are remembered this long (customer and order ids,
    /// keyed hashes of the email and phone: never the values), so a late or in-flight fact
    /// never starts a sequence for the person again; at least the frequency cap and a week.
    #[arg(
        long = "nudges-redaction-retention",
        env = "AFTERCART_NUDGES_REDACTION_RETENTION",
        default_value = "400d"
    )]
    pub nudges_redaction_retention: String,

    /// A nudge the destination would send more than this after it was written to the nudges
    /// topic is not sent (counted as `stale` in `aftercart_nudges_suppressed_total`): the
    /// destination was down that long, or was added later and reads the topic from its start.
    /// A reminder that late is worse than none, and a destination added later must not send
    /// the topic's old reminders, some to people who bought, unsubscribed or were redacted since.
    #[arg(
        long = "nudges-max-send-delay",
        env = "AFTERCART_NUDGES_MAX_SEND_DELAY",
        default_value = "6h"
    )]
    pub nudges_max_send_delay: String,

    /// TOML file: per-shop cadence, quiet hours and switch, and the destination (Klaviyo,
    /// webhook or file). Without it nudges are written to the topic only.
    #[arg(long = "nudges-config", env = "AFTERCART_NUDGES_CONFIG")]
    pub nudges_config: Option<PathBuf>,

    /// Klaviyo's API host; a stand-in for tests.
    #[arg(
        long = "klaviyo-base-url",
        env = "AFTERCART_KLAVIYO_BASE_URL",
        default_value = aftercart_delivery::message::klaviyo::BASE_URL
    )]
    pub klaviyo_base_url: String,
}

/// Defaults that differ under `aftercart dev`.
#[derive(Debug, Clone)]
pub struct NudgesDefaults {
    pub steps: &'static str,
    /// The state hash key when none is configured (`aftercart dev` only).
    pub state_hash_key: Option<&'static str>,
    pub fallback_brokers: Option<String>,
}

impl NudgesDefaults {
    pub fn production() -> Self {
        Self {
            steps: "1h,24h,72h",
            state_hash_key: None,
            fallback_brokers: None,
        }
    }
}

/// Where nudges are sent.
#[derive(Debug, Clone)]
pub enum DestinationConfig {
    Klaviyo {
        config: KlaviyoConfig,
        metric: String,
    },
    Webhook(SinkConfig),
    File(PathBuf),
}

impl DestinationConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            DestinationConfig::Klaviyo { .. } => "klaviyo",
            DestinationConfig::Webhook(_) => "webhook",
            DestinationConfig::File(_) => "file",
        }
    }
}

/// A unique recovery discount per sequence, created in the shop through the Admin API.
#[derive(Debug, Clone)]
pub struct RecoveryDiscount {
    pub admin: AdminConfig,
    pub value: DiscountValue,
    /// Steps from this one (1-based) on carry the code.
    pub from_step: u32,
}

#[derive(Debug, Clone)]
pub struct NudgesConfig {
    pub kafka: KafkaSettings,
    pub group: String,
    pub nudges_topic: String,
    pub abandonments_topic: String,
    pub by_shop_topic: String,
    pub state_topic: String,
    pub dead_letter_topic: String,
    /// Answers to `customers/data_request`.
    pub data_requests_topic: String,
    pub rules: Rules,
    pub destination: Option<DestinationConfig>,
    /// A nudge written longer ago than this is not sent by the destination.
    pub max_send_delay: Duration,
    /// Configured in the file and with a Shopify access tokens file; `None`: no discounts.
    pub discount: Option<RecoveryDiscount>,
    pub shutdown_timeout: Duration,
}

/// The config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: ShopFile,
    destination: Option<DestinationFile>,
    discount: Option<DiscountFile>,
    #[serde(default)]
    shops: HashMap<String, ShopFile>,
}

/// `[discount]`: a unique single-use code per sequence, for the person only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscountFile {
    /// `10%` or an amount like `5.00`.
    value: String,
    /// The first step that carries the code (default 1).
    from_step: Option<u32>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct ShopFile {
    enabled: Option<bool>,
    /// Delays after the abandonment, e.g. `["1h", "24h", "72h"]`.
    steps: Option<Vec<String>>,
    /// `HH:MM-HH:MM` in the shop's local time.
    quiet_hours: Option<String>,
    /// The shop's offset from UTC, e.g. `+01:00` (required with quiet hours).
    utc_offset: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum DestinationFile {
    Klaviyo {
        /// `shop.myshopify.com=pk_…` lines.
        keys_file: PathBuf,
        /// The Klaviyo metric (event name) flows trigger on.
        metric: Option<String>,
    },
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
    },
    File {
        dir: PathBuf,
    },
}

/// How long a message destination retries one nudge before it is dead-lettered: a reminder
/// hours late is worse than none.
const DESTINATION_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    max_duration: Duration::from_secs(30 * 60),
};
const DESTINATION_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_METRIC: &str = "Aftercart Recovery Nudge";

impl NudgesArgs {
    /// Validates with the command's Kafka flags and shutdown deadline, every problem at once.
    /// `shopify`: the Admin API client's flags (shared with the referrals service), used when
    /// the file asks for recovery discounts. `state_hash`: the shared state hash key's flags
    /// (one set per process, as `aftercart dev` runs every service).
    pub fn validate(
        &self,
        kafka: &KafkaArgs,
        shopify: &AdminArgs,
        state_hash: &StateHashArgs,
        shutdown_timeout: Duration,
        defaults: &NudgesDefaults,
    ) -> Result<NudgesConfig, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let kafka = kafka.validate(&mut errors, defaults.fallback_brokers.as_deref());
        let steps = errors.check(
            "AFTERCART_NUDGES_STEPS",
            Steps::parse(self.nudges_steps.as_deref().unwrap_or(defaults.steps)),
        );
        let cap = errors.check(
            "AFTERCART_NUDGES_FREQUENCY_CAP",
            parse_duration(&self.nudges_frequency_cap),
        );
        let max_send_delay = errors.check(
            "AFTERCART_NUDGES_MAX_SEND_DELAY",
            parse_positive_duration(&self.nudges_max_send_delay),
        );
        let redaction_retention = errors.check(
            "AFTERCART_NUDGES_REDACTION_RETENTION",
            parse_positive_duration(&self.nudges_redaction_retention),
        );
        // Orders and unsubscribes must outlive the wait before an abandonment is reported;
        // sequence starts, the cap.
        let memory_ms = cap.map(|cap| (cap.as_millis() as i64).max(7 * 86_400_000));
        if let (Some(kept), Some(memory)) = (redaction_retention, memory_ms) {
            if (kept.as_millis() as i64) < memory {
                errors.push(
                    "AFTERCART_NUDGES_REDACTION_RETENTION: must be at least the frequency cap and a week",
                );
            }
        }
        // People are hashed with the key every service shares; its messages name the setting.
        let hasher = state_hash
            .hasher(defaults.state_hash_key)
            .map_err(|problem| errors.push(problem))
            .ok();
        let file = match &self.nudges_config {
            None => Some(File::default()),
            Some(path) => errors.check(
                "AFTERCART_NUDGES_CONFIG",
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|text| {
                        toml::from_str::<File>(&text)
                            .map_err(|e| format!("{}: {e}", path.display()))
                    }),
            ),
        };
        for (name, value) in [
            ("AFTERCART_NUDGES_GROUP", &self.nudges_group),
            ("AFTERCART_NUDGES_TOPIC", &self.nudges_topic),
            (
                "AFTERCART_NUDGES_ABANDONMENTS_TOPIC",
                &self.nudges_abandonments_topic,
            ),
            ("AFTERCART_NUDGES_BY_SHOP_TOPIC", &self.nudges_by_shop_topic),
            ("AFTERCART_NUDGES_STATE_TOPIC", &self.nudges_state_topic),
            (
                "AFTERCART_NUDGES_DEAD_LETTER_TOPIC",
                &self.nudges_dead_letter_topic,
            ),
            (
                "AFTERCART_NUDGES_DATA_REQUESTS_TOPIC",
                &self.nudges_data_requests_topic,
            ),
        ] {
            if value.trim().is_empty() {
                errors.push(format!("{name}: must not be empty"));
            }
        }
        let mut policies = None;
        let mut destination = None;
        let mut discount = None;
        if let (Some(file), Some(steps)) = (&file, &steps) {
            let default = shop_policy("defaults", &file.defaults, None, steps, &mut errors);
            let mut shops = HashMap::new();
            for (shop, policy) in &file.shops {
                let policy = shop_policy(
                    &format!("shops.\"{shop}\""),
                    policy,
                    Some(&file.defaults),
                    steps,
                    &mut errors,
                );
                if let Some(policy) = policy {
                    shops.insert(shop.trim().to_ascii_lowercase(), policy);
                }
            }
            policies = default.map(|d| (d, shops));
            destination = file
                .destination
                .as_ref()
                .map(|d| self.destination(d, &mut errors));
            discount = file
                .discount
                .as_ref()
                .map(|d| recovery_discount(d, shopify, &mut errors));
        }
        errors.finish(|| {
            let cap_ms = cap.expect("checked").as_millis() as i64;
            let (default, shops) = policies.expect("checked");
            NudgesConfig {
                kafka: kafka.expect("checked"),
                group: self.nudges_group.trim().to_string(),
                nudges_topic: self.nudges_topic.trim().to_string(),
                abandonments_topic: self.nudges_abandonments_topic.trim().to_string(),
                by_shop_topic: self.nudges_by_shop_topic.trim().to_string(),
                state_topic: self.nudges_state_topic.trim().to_string(),
                dead_letter_topic: self.nudges_dead_letter_topic.trim().to_string(),
                data_requests_topic: self.nudges_data_requests_topic.trim().to_string(),
                rules: Rules {
                    default,
                    shops,
                    cap_ms,
                    memory_ms: memory_ms.expect("checked"),
                    redaction_retention_ms: redaction_retention.expect("checked").as_millis()
                        as i64,
                    hasher: hasher.expect("checked"),
                },
                destination: destination.map(|d| d.expect("checked")),
                max_send_delay: max_send_delay.expect("checked"),
                discount: discount.flatten(),
                shutdown_timeout,
            }
        })
    }

    fn destination(
        &self,
        file: &DestinationFile,
        errors: &mut ConfigErrors,
    ) -> Option<DestinationConfig> {
        let name = "AFTERCART_NUDGES_CONFIG [destination]";
        match file {
            DestinationFile::Klaviyo { keys_file, metric } => {
                if let Err(e) = std::fs::metadata(keys_file) {
                    errors.push(format!(
                        "{name}: cannot read keys_file {}: {e}",
                        keys_file.display()
                    ));
                    return None;
                }
                if let Err(e) = aftercart_delivery::Endpoint::parse(&self.klaviyo_base_url) {
                    errors.push(format!("AFTERCART_KLAVIYO_BASE_URL: {e}"));
                    return None;
                }
                Some(DestinationConfig::Klaviyo {
                    config: KlaviyoConfig {
                        keys_file: keys_file.clone(),
                        base_url: self.klaviyo_base_url.trim().to_string(),
                        timeout: DESTINATION_TIMEOUT,
                        retry: DESTINATION_RETRY,
                    },
                    metric: metric.clone().unwrap_or_else(|| DEFAULT_METRIC.into()),
                })
            }
            DestinationFile::Webhook { url, secret_file } => {
                let flags = SinkFlags {
                    url: Some(url.clone()),
                    secret_file: secret_file.clone(),
                    max_retry_duration: "30m".into(),
                    ..SinkFlags::default()
                };
                flags
                    .validate("AFTERCART_NUDGES_CONFIG [destination] webhook", errors)
                    .map(DestinationConfig::Webhook)
            }
            DestinationFile::File { dir } => Some(DestinationConfig::File(dir.clone())),
        }
    }
}

/// `[discount]` with the Admin API client; `None` (with a warning) without a tokens file.
fn recovery_discount(
    file: &DiscountFile,
    shopify: &AdminArgs,
    errors: &mut ConfigErrors,
) -> Option<RecoveryDiscount> {
    let value = errors.check(
        "AFTERCART_NUDGES_CONFIG [discount].value",
        DiscountValue::parse(&file.value),
    );
    let from_step = file.from_step.unwrap_or(1);
    if !(1..=crate::domain::cadence::MAX_STEPS as u32).contains(&from_step) {
        errors.push("AFTERCART_NUDGES_CONFIG [discount].from_step: 1 to 10");
    }
    let Some(admin) = shopify.validate(errors) else {
        tracing::warn!("The nudges file asks for recovery discounts but AFTERCART_SHOPIFY_ACCESS_TOKENS_FILE is not set: nudges go out without codes.");
        return None;
    };
    Some(RecoveryDiscount {
        admin,
        value: value?,
        from_step,
    })
}

/// A shop's policy: its own values, else the file's defaults, else the flags'.
fn shop_policy(
    name: &str,
    own: &ShopFile,
    defaults: Option<&ShopFile>,
    steps: &Steps,
    errors: &mut ConfigErrors,
) -> Option<ShopPolicy> {
    let inherited =
        |pick: fn(&ShopFile) -> Option<String>| pick(own).or_else(|| defaults.and_then(pick));
    let steps = match own
        .steps
        .clone()
        .or_else(|| defaults.and_then(|d| d.steps.clone()))
    {
        None => Some(steps.clone()),
        Some(list) => errors.check(
            &format!("AFTERCART_NUDGES_CONFIG {name}.steps"),
            list.iter()
                .map(|s| parse_duration(s))
                .collect::<Result<Vec<_>, _>>()
                .and_then(Steps::new),
        ),
    };
    let quiet_hours = match (
        inherited(|f| f.quiet_hours.clone()),
        inherited(|f| f.utc_offset.clone()),
    ) {
        (None, _) => Some(None),
        (Some(_), None) => {
            errors.push(format!(
                "AFTERCART_NUDGES_CONFIG {name}: quiet_hours needs utc_offset (e.g. \"+01:00\")"
            ));
            None
        }
        (Some(range), Some(offset)) => errors
            .check(
                &format!("AFTERCART_NUDGES_CONFIG {name}.quiet_hours"),
                QuietHours::parse(&range, &offset),
            )
            .map(Some),
    };
    Some(ShopPolicy {
        enabled: own
            .enabled
            .or_else(|| defaults.and_then(|d| d.enabled))
            .unwrap_or(true),
        steps: steps?,
        quiet_hours: quiet_hours?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aftercart_runtime::state_hash::StateHasher;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        nudges: NudgesArgs,
        #[command(flatten)]
        shopify: AdminArgs,
        #[command(flatten)]
        state_hash: StateHashArgs,
    }

    fn validate(args: &[&str], file: Option<&str>) -> Result<NudgesConfig, ConfigErrors> {
        let mut argv = vec!["x", "--kafka-brokers", "localhost:9092"];
        argv.extend_from_slice(args);
        let path;
        if let Some(text) = file {
            path = std::env::temp_dir().join(format!(
                "aftercart-nudges-config-{}-{}.toml",
                std::process::id(),
                fastrand_suffix()
            ));
            std::fs::write(&path, text).unwrap();
            argv.push("--nudges-config");
            argv.push(path.to_str().unwrap());
        }
        let cli = Cli::try_parse_from(argv).unwrap();
        cli.nudges.validate(
            &cli.kafka,
            &cli.shopify,
            &cli.state_hash,
            Duration::from_secs(1),
            &NudgesDefaults {
                state_hash_key: Some("a dev state hash key"),
                ..NudgesDefaults::production()
            },
        )
    }

    fn fastrand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    #[test]
    fn the_defaults_need_no_file() {
        let config = validate(&[], None).unwrap();
        assert_eq!(
            config.rules.default.steps,
            Steps::parse("1h,24h,72h").unwrap()
        );
        assert_eq!(config.rules.cap_ms, 7 * 86_400_000);
        assert!(config.destination.is_none());
    }

    #[test]
    fn shops_inherit_the_file_defaults_and_override_them() {
        let config = validate(
            &[],
            Some(
                r#"
[defaults]
steps = ["10s", "30s"]
quiet_hours = "21:00-08:00"
utc_offset = "+01:00"

[destination]
kind = "file"
dir = "/tmp/nudges"

[shops."A.myshopify.com"]
steps = ["2h"]

[shops."off.myshopify.com"]
enabled = false
"#,
            ),
        )
        .unwrap();
        let rules = &config.rules;
        assert_eq!(rules.default.steps, Steps::parse("10s,30s").unwrap());
        let a = &rules.shops["a.myshopify.com"];
        assert_eq!(a.steps, Steps::parse("2h").unwrap());
        assert!(a.quiet_hours.is_some(), "inherited");
        assert!(!rules.shops["off.myshopify.com"].enabled);
        assert!(matches!(
            config.destination,
            Some(DestinationConfig::File(_))
        ));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = validate(
            &["--nudges-steps", "24h,1h", "--nudges-frequency-cap", "soon"],
            Some(
                r#"
[shops."a.myshopify.com"]
quiet_hours = "21:00-08:00"
"#,
            ),
        )
        .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("AFTERCART_NUDGES_STEPS"), "{text}");
        assert!(text.contains("AFTERCART_NUDGES_FREQUENCY_CAP"), "{text}");
        let errors = validate(
            &[],
            Some("[shops.\"a.myshopify.com\"]\nquiet_hours = \"21:00-08:00\"\n"),
        )
        .unwrap_err();
        assert!(errors.to_string().contains("utc_offset"), "{errors}");
        let errors = validate(&[], Some("[destination]\nkind = \"pigeon\"\n")).unwrap_err();
        assert!(errors.to_string().contains("AFTERCART_NUDGES_CONFIG"));
    }

    #[test]
    fn the_redaction_retention_is_positive_and_outlasts_what_is_remembered() {
        let config = validate(&[], None).unwrap();
        assert_eq!(config.rules.redaction_retention_ms, 400 * 86_400_000);
        for (value, problem) in [
            ("0s", "must be above 0"),
            ("soon", "is not a duration"),
            ("3d", "at least the frequency cap and a week"),
        ] {
            let errors = validate(&["--nudges-redaction-retention", value], None)
                .unwrap_err()
                .to_string();
            assert!(
                errors.contains("AFTERCART_NUDGES_REDACTION_RETENTION"),
                "{errors}"
            );
            assert!(errors.contains(problem), "{errors}");
        }
    }

    #[test]
    fn the_shared_state_hash_key_is_required_outside_dev() {
        let production = |args: &[&str]| {
            let mut argv = vec!["x", "--kafka-brokers", "localhost:9092"];
            argv.extend_from_slice(args);
            let cli = Cli::try_parse_from(argv).unwrap();
            cli.nudges.validate(
                &cli.kafka,
                &cli.shopify,
                &cli.state_hash,
                Duration::from_secs(1),
                &NudgesDefaults::production(),
            )
        };
        let errors = production(&[]).unwrap_err().to_string();
        assert!(
            errors.contains("AFTERCART_STATE_HASH_KEY: required"),
            "{errors}"
        );
        let short = production(&["--state-hash-key", "short-secret"])
            .unwrap_err()
            .to_string();
        assert!(short.contains("AFTERCART_STATE_HASH_KEY"), "{short}");
        assert!(!short.contains("short-secret"), "{short}");
        let config = production(&["--state-hash-key", "a-state-hash-key-of-16"]).unwrap();
        assert_eq!(
            config.rules.hasher,
            StateHasher::new(*b"a-state-hash-key-of-16").unwrap()
        );
    }
}

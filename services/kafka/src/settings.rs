//! Kafka connection settings, their flags and environment variables, and base client config.

use std::time::Duration;

use aftercart_runtime::config::{parse_in_range, ConfigErrors};
use rdkafka::ClientConfig;

/// Kafka flags shared by every service (`AFTERCART_KAFKA_*`, `AFTERCART_TOPIC_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port (required).
    #[arg(long = "kafka-brokers", env = "AFTERCART_KAFKA_BROKERS")]
    pub brokers: Option<String>,

    /// Prefix of the raw Shopify topics (`<prefix>checkouts`, `<prefix>orders`, ...).
    #[arg(long, env = "AFTERCART_TOPIC_PREFIX", default_value = "shopify.")]
    pub topic_prefix: String,

    /// Partitions of every topic a service creates; journey topics must all share one count.
    #[arg(long, env = "AFTERCART_TOPIC_PARTITIONS", default_value = "12")]
    pub topic_partitions: String,

    /// Replication factor of every topic a service creates.
    #[arg(long, env = "AFTERCART_TOPIC_REPLICATION", default_value = "1")]
    pub topic_replication: String,

    /// Extra librdkafka properties, comma-separated key=value (e.g. security.protocol=ssl).
    /// They override aftercart's own settings, so use them with care.
    #[arg(
        long,
        env = "AFTERCART_KAFKA_PROPERTIES",
        default_value = "",
        hide_env_values = true
    )]
    pub kafka_properties: String,

    /// This instance's stable name in its consumer groups (Kafka static membership): a
    /// restarted instance with the same name gets its partitions back without a group-wide
    /// rebalance (the k8s manifests set the pod name). Unset: dynamic membership, for brokers
    /// without it (Tansu 0.6 answers a static member's heartbeats "unknown member"). Instances
    /// sharing a machine need distinct names, or they fence each other out of the group.
    #[arg(long = "instance-id", env = "AFTERCART_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

/// Validated Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication: i32,
    pub properties: Vec<(String, String)>,
    /// `group.instance.id` of the stateful stages; `None`: dynamic membership.
    pub instance_id: Option<String>,
}

impl KafkaArgs {
    /// Validates into settings, recording every problem in `errors`. `default_brokers` stands in
    /// when no broker is configured (the dev stack's embedded broker).
    pub fn validate(
        &self,
        errors: &mut ConfigErrors,
        default_brokers: Option<&str>,
    ) -> Option<KafkaSettings> {
        let brokers = match self
            .brokers
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            Some(brokers) => Some(brokers.to_string()),
            None => match default_brokers {
                Some(default) => Some(default.to_string()),
                None => {
                    errors.push("AFTERCART_KAFKA_BROKERS: required (bootstrap servers, e.g. localhost:9092)");
                    None
                }
            },
        };
        let prefix = self.topic_prefix.trim().to_string();
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || prefix.len() > 200
        {
            errors.push("AFTERCART_TOPIC_PREFIX: only letters, digits, '.', '_' and '-' are allowed in Kafka topic names");
        }
        let partitions = errors.check(
            "AFTERCART_TOPIC_PARTITIONS",
            parse_in_range(&self.topic_partitions, 1, 10_000),
        );
        let replication = errors.check(
            "AFTERCART_TOPIC_REPLICATION",
            parse_in_range(&self.topic_replication, 1, 100),
        );
        let properties = errors.check(
            "AFTERCART_KAFKA_PROPERTIES",
            parse_properties(&self.kafka_properties),
        );
        let instance_id = match self.instance_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => {
                errors.check("AFTERCART_INSTANCE_ID", parse_instance_id(id).map(Some))
            }
            _ => Some(None),
        };
        Some(KafkaSettings {
            instance_id: instance_id?,
            brokers: brokers?,
            topic_prefix: prefix,
            partitions: partitions? as i32,
            replication: replication? as i32,
            properties: properties?,
        })
    }
}

/// A group instance id: what Kafka allows in one (it names the member in broker logs too).
fn parse_instance_id(id: &str) -> Result<String, String> {
    let valid = !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(id.to_string())
    } else {
        Err("1 to 200 letters, digits, '.', '_' or '-'".to_string())
    }
}

fn parse_properties(value: &str) -> Result<Vec<(String, String)>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .enumerate()
        .map(|(index, pair)| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            // Only the position is reported: the entry may hold a password.
            _ => Err(format!("entry {} is not key=value", index + 1)),
        })
        .collect()
}

impl KafkaSettings {
    /// Settings for tests and tools: the given brokers and prefix, defaults elsewhere.
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: 12,
            replication: 1,
            properties: Vec::new(),
            instance_id: None,
        }
    }

    /// The base client config: bootstrap servers, client id, then the operator's overrides.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // librdkafka logs through its own channel; keep its noise at warnings.
            .set("log_level", "4");
        config
    }

    /// An at-least-once group consumer: offsets are stored by the caller only once a record's
    /// effects are safe, and committed automatically every second; a new group starts at the
    /// beginning (skipping records is worse than reprocessing them). Callers add their own
    /// settings, then [`KafkaSettings::apply_overrides`].
    pub fn group_consumer_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        config
    }

    /// Applies the operator's `AFTERCART_KAFKA_PROPERTIES` last, so they win.
    pub fn apply_overrides(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }

    /// How long admin and metadata calls may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> KafkaArgs {
        KafkaArgs {
            brokers: Some("localhost:9092".into()),
            topic_prefix: "shopify.".into(),
            topic_partitions: "12".into(),
            topic_replication: "1".into(),
            kafka_properties: String::new(),
            instance_id: Some("aftercart-0".into()),
        }
    }

    #[test]
    fn valid_args_become_settings() {
        let mut errors = ConfigErrors::new();
        let settings = args().validate(&mut errors, None).unwrap();
        assert!(errors.is_empty());
        assert_eq!(settings.partitions, 12);
        assert_eq!(settings.topic_prefix, "shopify.");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut bad = args();
        bad.brokers = None;
        bad.topic_prefix = "bad prefix/".into();
        bad.topic_partitions = "0".into();
        bad.topic_replication = "many".into();
        bad.kafka_properties = "acks".into();
        bad.instance_id = Some("pod 1/2".into());
        let mut errors = ConfigErrors::new();
        assert!(bad.validate(&mut errors, None).is_none());
        assert_eq!(errors.problems().len(), 6, "{errors}");
    }

    #[test]
    fn the_dev_stack_supplies_default_brokers() {
        let mut no_brokers = args();
        no_brokers.brokers = Some("  ".into());
        let mut errors = ConfigErrors::new();
        let settings = no_brokers
            .validate(&mut errors, Some("127.0.0.1:1234"))
            .unwrap();
        assert_eq!(settings.brokers, "127.0.0.1:1234");
    }

    #[test]
    fn an_unset_or_empty_instance_id_means_dynamic_membership() {
        let mut errors = ConfigErrors::new();
        let settings = args().validate(&mut errors, None).unwrap();
        assert_eq!(settings.instance_id.as_deref(), Some("aftercart-0"));
        for unnamed in [None, Some(" ".to_string())] {
            let mut unnamed_args = args();
            unnamed_args.instance_id = unnamed;
            let settings = unnamed_args.validate(&mut errors, None).unwrap();
            assert_eq!(settings.instance_id, None);
        }
        assert!(errors.is_empty());
    }

    #[test]
    fn properties_parse_as_pairs() {
        assert_eq!(
            parse_properties("security.protocol=ssl, linger.ms=10").unwrap(),
            vec![
                ("security.protocol".into(), "ssl".into()),
                ("linger.ms".into(), "10".into())
            ]
        );
        assert!(parse_properties("=x").is_err());
        let error = parse_properties("linger.ms=1,sasl.password:hunter2").unwrap_err();
        assert!(
            error.contains("entry 2") && !error.contains("hunter2"),
            "{error}"
        );
    }
}

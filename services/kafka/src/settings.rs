//! Kafka connection settings, their flags and environment variables, and base client config.

use std::time::Duration;

use std::path::PathBuf;

use aftercart_runtime::config::{is_kafka_name, parse_duration, parse_in_range, ConfigErrors};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;
use rdkafka::ClientConfig;

use crate::properties::{self, ClientKind, KafkaProperties};

/// Kafka flags shared by every service (`AFTERCART_KAFKA_*`, `AFTERCART_TOPIC_*`). `Debug`
/// hides the properties (they may hold passwords).
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port (required, unless the properties
    /// set bootstrap.servers, which then wins).
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

    /// min.insync.replicas of the topics a service creates [default: replication factor - 1,
    /// at least 1]: with acks=all, how many copies a write needs.
    #[arg(long, env = "AFTERCART_TOPIC_MIN_INSYNC_REPLICAS")]
    pub topic_min_insync_replicas: Option<String>,

    /// retention.ms of the topics a service creates (all hold personal data; changelogs are
    /// compacted instead). At most 30d: Shopify's redaction duty.
    #[arg(long, env = "AFTERCART_TOPIC_RETENTION", default_value = "7d")]
    pub topic_retention: String,

    /// max.compaction.lag.ms and segment.ms of the compacted changelogs a service creates: a
    /// redaction tombstone removes the old value within about twice this.
    #[arg(long, env = "AFTERCART_TOPIC_COMPACTION_LAG", default_value = "1d")]
    pub topic_compaction_lag: String,

    /// A librdkafka properties file in Java client.properties style (one key=value a line,
    /// # or ! comments; values may hold commas and =), e.g. a mounted Secret with
    /// security.protocol=SASL_SSL, sasl.mechanism, sasl.username, sasl.password, ssl.ca.location.
    /// sasl.jaas.config lines are translated; a value ${file:/path} is read from that file
    /// (e.g. a password mounted from a Secret). Secret values are never printed. Guide:
    /// docs/operations/kafka.md.
    #[arg(long, env = "AFTERCART_KAFKA_PROPERTIES_FILE")]
    pub kafka_properties_file: Option<PathBuf>,

    /// Extra librdkafka properties, comma-separated key=value (e.g.
    /// security.protocol=ssl,ssl.ca.location=/etc/kafka/ca.pem). They override the properties
    /// file, which overrides aftercart's own settings: use them with care. Values holding
    /// commas belong in the file.
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

/// Validated Kafka settings. `Debug` hides secret properties.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication: i32,
    /// min.insync.replicas of created topics, at most the replication factor.
    pub min_insync_replicas: i32,
    /// retention.ms of created topics that are not compacted.
    pub retention: Duration,
    /// max.compaction.lag.ms and segment.ms of created changelogs.
    pub compaction_lag: Duration,
    pub properties: KafkaProperties,
    /// `group.instance.id` of the stateful stages; `None`: dynamic membership.
    pub instance_id: Option<String>,
}

/// The longest retention allowed: Shopify expects personal data gone within 30 days of a
/// redaction request.
pub const MAX_RETENTION: Duration = Duration::from_secs(30 * 86_400);

impl KafkaArgs {
    /// Validates into settings, recording every problem in `errors`. `default_brokers` stands in
    /// when no broker is configured (the dev stack's embedded broker). The client settings are
    /// tried on a real librdkafka client, so a bad security setting fails here, named.
    pub fn validate(
        &self,
        errors: &mut ConfigErrors,
        default_brokers: Option<&str>,
    ) -> Option<KafkaSettings> {
        let before = errors.problems().len();
        let properties = self.properties(errors);
        let from_properties = properties
            .as_ref()
            .and_then(|p| {
                properties::aliases_of("bootstrap.servers")
                    .into_iter()
                    .find_map(|key| p.get(key))
            })
            .map(str::to_string);
        // The properties' bootstrap.servers is applied last, so it is what clients connect to.
        let flag = self
            .brokers
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty());
        let brokers = match from_properties.as_deref().or(flag) {
            Some(brokers) => Some(brokers.to_string()),
            None => match default_brokers.map(str::to_string) {
                Some(default) => Some(default),
                None => {
                    errors.push("AFTERCART_KAFKA_BROKERS: required (bootstrap servers, e.g. localhost:9092)");
                    None
                }
            },
        };
        let prefix = self.topic_prefix.trim().to_string();
        if !is_kafka_name(&prefix) || prefix.len() > 200 {
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
        let min_insync = match (&self.topic_min_insync_replicas, replication) {
            (Some(value), Some(replication)) => errors.check(
                "AFTERCART_TOPIC_MIN_INSYNC_REPLICAS",
                parse_in_range(value, 1, replication).map_err(|problem| {
                    format!("{problem} (at least 1, at most the replication factor)")
                }),
            ),
            (None, Some(replication)) => Some(replication.saturating_sub(1).max(1)),
            (_, None) => None,
        };
        let retention = errors.check(
            "AFTERCART_TOPIC_RETENTION",
            parse_duration(&self.topic_retention).and_then(|d| {
                if d < Duration::from_secs(60) || d > MAX_RETENTION {
                    Err(format!(
                        "{d:?} is outside 1m..=30d (Shopify's redaction duty caps it at 30 days)"
                    ))
                } else {
                    Ok(d)
                }
            }),
        );
        let compaction_lag = errors.check(
            "AFTERCART_TOPIC_COMPACTION_LAG",
            parse_duration(&self.topic_compaction_lag).and_then(|d| {
                if d < Duration::from_secs(60) || d > MAX_RETENTION / 2 {
                    Err(format!("{d:?} is outside 1m..=15d"))
                } else {
                    Ok(d)
                }
            }),
        );
        let instance_id = match self.instance_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => {
                errors.check("AFTERCART_INSTANCE_ID", parse_instance_id(id).map(Some))
            }
            _ => Some(None),
        };
        let settings = KafkaSettings {
            instance_id: instance_id?,
            brokers: brokers?,
            topic_prefix: prefix,
            partitions: partitions? as i32,
            replication: replication? as i32,
            min_insync_replicas: min_insync? as i32,
            retention: retention?,
            compaction_lag: compaction_lag?,
            properties: properties?,
        };
        // Only a client config without other problems is worth trying.
        if errors.problems().len() == before {
            for problem in settings.check_client() {
                errors.push(problem);
            }
        }
        Some(settings)
    }

    /// The file's properties, then the environment's on top, Java spellings translated.
    fn properties(&self, errors: &mut ConfigErrors) -> Option<KafkaProperties> {
        let file = match &self.kafka_properties_file {
            Some(path) => errors.check(
                "AFTERCART_KAFKA_PROPERTIES_FILE",
                properties::read_file(path)
                    .and_then(properties::resolve_files)
                    .and_then(properties::translate_java),
            ),
            None => Some((Vec::new(), Vec::new())),
        };
        let list = errors.check(
            "AFTERCART_KAFKA_PROPERTIES",
            properties::parse_list(&self.kafka_properties)
                .and_then(properties::resolve_files)
                .and_then(properties::translate_java),
        );
        let ((file, mut dropped), (list, more)) = (file?, list?);
        dropped.extend(more);
        if !dropped.is_empty() {
            tracing::info!(
                properties = %dropped.join(", "),
                "Skipping Java client properties librdkafka has no use for."
            );
        }
        let mut merged = KafkaProperties::from(file);
        merged.extend(list);
        Some(merged)
    }
}

/// A group instance id: what Kafka allows in one (it names the member in broker logs too).
fn parse_instance_id(id: &str) -> Result<String, String> {
    let valid = !id.is_empty() && id.len() <= 200 && is_kafka_name(id);
    if valid {
        Ok(id.to_string())
    } else {
        Err("1 to 200 letters, digits, '.', '_' or '-'".to_string())
    }
}

impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication", &self.topic_replication)
            .field("topic_min_insync_replicas", &self.topic_min_insync_replicas)
            .field("topic_retention", &self.topic_retention)
            .field("topic_compaction_lag", &self.topic_compaction_lag)
            .field("kafka_properties_file", &self.kafka_properties_file)
            .field("kafka_properties", &"<hidden>")
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// The optional parts compiled into librdkafka (`builtin.features`), e.g. `ssl,sasl_plain,...`.
pub fn builtin_features() -> Result<String, KafkaError> {
    ClientConfig::new()
        .create_native_config()?
        .get("builtin.features")
}

/// Properties naming a file librdkafka reads at client creation.
fn is_path_property(key: &str) -> bool {
    key.ends_with(".location") || key == "sasl.oauthbearer.assertion.private.key.file"
}

impl KafkaSettings {
    /// Settings for tests and tools: the given brokers and prefix, defaults elsewhere.
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: 12,
            replication: 1,
            min_insync_replicas: 1,
            retention: Duration::from_secs(7 * 86_400),
            compaction_lag: Duration::from_secs(86_400),
            properties: KafkaProperties::new(),
            instance_id: None,
        }
    }

    /// Tries the client settings on a real librdkafka client (created, then dropped: it has
    /// not connected yet): unknown or invalid properties, unreadable certificates and keys,
    /// SASL settings librdkafka refuses. Each problem names the property; secret values are
    /// redacted from librdkafka's own words.
    pub fn check_client(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in &self.properties {
            if is_path_property(key) && !(key == "ssl.ca.location" && value == "probe") {
                if let Err(error) = std::fs::metadata(value) {
                    problems.push(format!("{key}: cannot read {value}: {error}"));
                }
            }
        }
        if !problems.is_empty() {
            return problems;
        }
        // Creating a client does not wait for the network; dropping it at once is cheap. A
        // producer checks the settings producers read, a consumer those consumers read.
        let mut config = self.client_config("aftercart-config-check");
        self.apply_overrides(&mut config, ClientKind::Producer);
        // Every problem at once; one both kinds read (a SASL setting, say) is named once.
        if let Err(error) = config.create::<BaseProducer>() {
            problems.push(self.describe_client_error(&error));
        }
        let mut config = self.client_config("aftercart-config-check");
        self.apply_overrides(&mut config, ClientKind::Consumer);
        if let Err(error) = config.create::<BaseConsumer>() {
            let problem = self.describe_client_error(&error);
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        problems
    }

    /// The operator's property a librdkafka creation error is about: one it names, else the
    /// SASL or SSL setting it complains of.
    fn property_named_in(&self, message: &str) -> Option<String> {
        let named = self
            .properties
            .iter()
            .map(|(key, _)| key.as_str())
            .filter(|key| message.contains(key))
            .max_by_key(|key| key.len());
        if let Some(key) = named {
            return Some(key.to_string());
        }
        // Of aliases (sasl.mechanism, sasl.mechanisms), the one applied last is in force.
        let set = |keys: &[&str]| {
            self.properties
                .iter()
                .rev()
                .find(|(key, _)| keys.contains(&key.as_str()))
                .map(|(key, _)| key.to_string())
        };
        if message.contains("SASL") || message.contains("sasl") {
            set(&["sasl.mechanism", "sasl.mechanisms"]).or_else(|| set(&["security.protocol"]))
        } else if message.contains("SSL") || message.contains("ssl") {
            set(&["security.protocol"]).map(|key| format!("{key} (and the ssl.* settings)"))
        } else {
            None
        }
    }

    /// A client creation error as a configuration problem naming the property.
    pub fn describe_client_error(&self, error: &KafkaError) -> String {
        let text = match error {
            KafkaError::ClientConfig(_, description, key, _value) => {
                format!("{key}: {description}")
            }
            KafkaError::ClientCreation(message) => match self.property_named_in(message) {
                Some(key) => format!("{key}: {message}"),
                None => message.clone(),
            },
            other => other.to_string(),
        };
        format!(
            "AFTERCART_KAFKA_PROPERTIES: {}",
            self.properties.redact(&text)
        )
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

    /// Applies the operator's properties (file, then `AFTERCART_KAFKA_PROPERTIES`) last, so
    /// they win: aftercart's own value under another spelling of the same setting is removed
    /// (librdkafka gets a `ClientConfig`'s entries in no fixed order, so both would race).
    /// Only the properties a client of `kind` reads: the others it would ignore, with a
    /// warning in the log for each at every start.
    pub fn apply_overrides(&self, config: &mut ClientConfig, kind: ClientKind) {
        for (key, value) in &self.properties {
            if !properties::is_read_by(key, kind) {
                continue;
            }
            for alias in properties::aliases_of(key) {
                config.remove(alias);
            }
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
            topic_min_insync_replicas: None,
            topic_retention: "7d".into(),
            topic_compaction_lag: "1d".into(),
            kafka_properties_file: None,
            kafka_properties: String::new(),
            instance_id: Some("aftercart-0".into()),
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("aftercart-settings-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn valid_args_become_settings() {
        let mut errors = ConfigErrors::new();
        let settings = args().validate(&mut errors, None).unwrap();
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(settings.partitions, 12);
        assert_eq!(settings.topic_prefix, "shopify.");
        assert_eq!(settings.min_insync_replicas, 1);
        assert_eq!(settings.retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut bad = args();
        bad.brokers = None;
        bad.topic_prefix = "bad prefix/".into();
        bad.topic_partitions = "0".into();
        bad.topic_replication = "many".into();
        bad.kafka_properties = "acks".into();
        bad.topic_retention = "90d".into();
        bad.instance_id = Some("pod 1/2".into());
        let mut errors = ConfigErrors::new();
        assert!(bad.validate(&mut errors, None).is_none());
        assert_eq!(errors.problems().len(), 7, "{errors}");
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
        assert!(errors.is_empty(), "{errors}");
    }

    #[test]
    fn an_operator_setting_replaces_aftercarts_own_under_either_name() {
        let mut kafka = KafkaSettings::new("localhost:9092", "shopify.");
        kafka.properties.set("queue.buffering.max.ms", "9");
        let mut config = ClientConfig::new();
        config.set("linger.ms", "5");
        kafka.apply_overrides(&mut config, ClientKind::Producer);
        assert_eq!(config.get("linger.ms"), None);
        assert_eq!(config.get("queue.buffering.max.ms"), Some("9"));
    }

    #[test]
    fn min_insync_replicas_is_one_below_replication_unless_set() {
        let mut three = args();
        three.topic_replication = "3".into();
        let mut errors = ConfigErrors::new();
        assert_eq!(
            three
                .validate(&mut errors, None)
                .unwrap()
                .min_insync_replicas,
            2
        );
        three.topic_min_insync_replicas = Some("3".into());
        assert_eq!(
            three
                .validate(&mut errors, None)
                .unwrap()
                .min_insync_replicas,
            3
        );
        three.topic_min_insync_replicas = Some("4".into());
        assert!(three.validate(&mut errors, None).is_none());
        assert!(
            errors
                .to_string()
                .contains("AFTERCART_TOPIC_MIN_INSYNC_REPLICAS"),
            "{errors}"
        );
    }

    #[test]
    fn the_environment_overrides_the_file_and_the_file_may_name_the_brokers() {
        let path = temp_file(
            "precedence",
            "bootstrap.servers=kafka-1:9092,kafka-2:9092\nlinger.ms=7\nacks=all\n",
        );
        let mut from_file = args();
        from_file.brokers = None;
        from_file.kafka_properties_file = Some(path.clone());
        from_file.kafka_properties = "linger.ms=9".into();
        let mut errors = ConfigErrors::new();
        let settings = from_file.validate(&mut errors, None).unwrap();
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(settings.brokers, "kafka-1:9092,kafka-2:9092");
        assert_eq!(settings.properties.get("linger.ms"), Some("9"));
        assert_eq!(settings.properties.get("acks"), Some("all"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_brokers_shown_are_the_ones_the_clients_use() {
        // bootstrap.servers in the properties is applied after AFTERCART_KAFKA_BROKERS, so it is
        // what every client connects to: `kafka check` and the logs must say so.
        let path = temp_file("both-brokers", "bootstrap.servers=managed-1:9093\n");
        let mut both = args();
        both.kafka_properties_file = Some(path.clone());
        let mut errors = ConfigErrors::new();
        let settings = both.validate(&mut errors, None).unwrap();
        assert!(errors.is_empty(), "{errors}");
        let mut config = settings.client_config("x");
        settings.apply_overrides(&mut config, ClientKind::Consumer);
        assert_eq!(config.get("bootstrap.servers"), Some("managed-1:9093"));
        assert_eq!(settings.brokers, "managed-1:9093");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn each_client_gets_only_the_operator_settings_it_reads() {
        // One property list serves every client: a consumer's group settings must not reach
        // producers and admin clients (librdkafka logs a CONFWARN for each at every start),
        // nor a producer's batching reach consumers; settings of both reach both.
        let mut mixed = args();
        mixed.kafka_properties =
            "session.timeout.ms=4000,linger.ms=9,socket.keepalive.enable=true".into();
        let mut errors = ConfigErrors::new();
        let settings = mixed.validate(&mut errors, None).unwrap();
        assert!(errors.is_empty(), "{errors}");
        let mut producer = settings.client_config("p");
        settings.apply_overrides(&mut producer, ClientKind::Producer);
        let mut consumer = settings.client_config("c");
        settings.apply_overrides(&mut consumer, ClientKind::Consumer);
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("9"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("4000"));
        assert_eq!(consumer.get("linger.ms"), None);
        for config in [&producer, &consumer] {
            assert_eq!(config.get("socket.keepalive.enable"), Some("true"));
        }
        // The check still refuses a bad value of either kind.
        let mut bad = args();
        bad.kafka_properties = "session.timeout.ms=soon".into();
        let settings = bad.validate(&mut ConfigErrors::new(), None).unwrap();
        let problems = settings.check_client();
        assert!(
            problems.iter().any(|p| p.contains("session.timeout.ms")),
            "{problems:?}"
        );
        // A bad setting of each kind: both named in one check, not one per start.
        let mut both = args();
        both.kafka_properties = "session.timeout.ms=soon,linger.ms=later".into();
        let settings = both.validate(&mut ConfigErrors::new(), None).unwrap();
        let problems = settings.check_client();
        for key in ["session.timeout.ms", "linger.ms"] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key}: {problems:?}"
            );
        }
    }

    #[test]
    fn an_operator_alias_replaces_aftercarts_own_spelling() {
        // aftercart sets acks and linger.ms; an operator's request.required.acks or
        // queue.buffering.max.ms names the same settings and must win in every client, not in
        // whichever order librdkafka happens to receive them.
        let mut aliased = args();
        aliased.kafka_properties = "request.required.acks=1,queue.buffering.max.ms=50".into();
        let mut errors = ConfigErrors::new();
        let settings = aliased.validate(&mut errors, None).unwrap();
        let mut config = settings.client_config("x");
        config.set("acks", "all").set("linger.ms", "5");
        settings.apply_overrides(&mut config, ClientKind::Producer);
        assert_eq!(config.get("acks"), None);
        assert_eq!(config.get("linger.ms"), None);
        assert_eq!(config.get("request.required.acks"), Some("1"));
        assert_eq!(config.get("queue.buffering.max.ms"), Some("50"));
    }

    #[test]
    fn a_bad_security_setting_is_named_at_start_up() {
        for (properties, named) in [
            ("security.protocol=tls", "security.protocol"),
            (
                "sasl.mechanisms=MAGIC,security.protocol=sasl_ssl",
                "sasl.mechanisms",
            ),
            ("no.such.property=1", "no.such.property"),
            ("ssl.ca.location=/nonexistent/ca.pem", "ssl.ca.location"),
        ] {
            let mut bad = args();
            bad.kafka_properties = properties.into();
            let mut errors = ConfigErrors::new();
            bad.validate(&mut errors, None);
            let text = errors.to_string();
            assert!(text.contains(named), "{properties}: {text}");
        }
    }

    #[test]
    fn secrets_never_reach_errors_or_debug_output() {
        let path = temp_file(
            "secrets",
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.username=svc\nsasl.password=hunter2,with=odd\n",
        );
        let mut secret = args();
        secret.kafka_properties_file = Some(path.clone());
        secret.kafka_properties = "ssl.key.password=keypass1".into();
        let mut errors = ConfigErrors::new();
        let settings = secret.validate(&mut errors, None).unwrap();
        let shown = format!("{settings:?} {secret:?} {errors}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("keypass1"),
            "{shown}"
        );
        assert_eq!(
            settings.properties.get("sasl.password"),
            Some("hunter2,with=odd")
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_build_has_tls_and_every_sasl_mechanism_but_kerberos() {
        let features = builtin_features().unwrap();
        for feature in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "http",
            "oidc",
        ] {
            assert!(
                features.split(',').any(|f| f == feature),
                "{feature} missing: {features}"
            );
        }
    }
}

//! Topic names and idempotent topic creation through the admin API (brokers with topic
//! auto-creation switched off are the norm), with the journey partition-count check.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aftercart_shopify::Family;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::{ClientKind, KafkaSettings};

/// Names of the raw Shopify topics under one prefix.
#[derive(Debug, Clone)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn family(&self, family: Family) -> String {
        format!("{}{}", self.prefix, family.as_str())
    }

    /// Authentic bodies that are not JSON objects.
    pub fn quarantine(&self) -> String {
        format!("{}quarantine", self.prefix)
    }

    /// The topics consumers join by partition: they must share one partition count.
    pub fn journey(&self) -> Vec<String> {
        Family::JOURNEY.iter().map(|f| self.family(*f)).collect()
    }

    /// Every topic the ingress writes.
    pub fn ingress_outputs(&self) -> Vec<String> {
        let mut topics: Vec<String> = Family::ALL.iter().map(|f| self.family(*f)).collect();
        topics.push(self.quarantine());
        topics
    }
}

/// A topic a service needs, with the settings it is created with when missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Topic-level configs such as `max.message.bytes` or `cleanup.policy`.
    pub configs: Vec<(String, String)>,
}

/// The longest a segment of a deleting topic stays open: records leave a topic only with a
/// whole closed segment, so retention takes effect within retention plus this.
const MAX_SEGMENT: Duration = Duration::from_secs(86_400);

impl TopicSpec {
    /// A topic that deletes records after the configured retention (every aftercart topic
    /// holds personal data), with min.insync.replicas from the settings.
    pub fn new(name: impl Into<String>, settings: &KafkaSettings) -> Self {
        Self {
            name: name.into(),
            partitions: settings.partitions,
            replication: settings.replication,
            configs: Vec::new(),
        }
        .with_config(
            "min.insync.replicas",
            settings.min_insync_replicas.to_string(),
        )
        .with_config("retention.ms", millis(settings.retention))
        .with_config("segment.ms", millis(settings.retention.min(MAX_SEGMENT)))
    }

    /// A compacted changelog: only the latest value per key is kept, and a redaction tombstone
    /// removes the older values within about twice the compaction lag (segment.ms closes the
    /// active segment, which is never compacted; max.compaction.lag.ms makes the cleaner take
    /// it even when the log is mostly clean).
    pub fn changelog(name: impl Into<String>, settings: &KafkaSettings) -> Self {
        let mut spec = Self::new(name, settings);
        spec.configs
            .retain(|(key, _)| key != "retention.ms" && key != "segment.ms");
        spec.with_config("cleanup.policy", "compact")
            .with_config("max.compaction.lag.ms", millis(settings.compaction_lag))
            .with_config("segment.ms", millis(settings.compaction_lag))
    }

    /// The value of one topic config, if set.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.configs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a topic-level config, replacing an earlier value of the same key.
    pub fn with_config(mut self, key: &str, value: impl Into<String>) -> Self {
        self.configs.retain(|(k, _)| k != key);
        self.configs.push((key.to_string(), value.into()));
        self
    }

    /// For a topic holding copies of raw records (dead letters, re-keyed forwards): accepts
    /// records up to [`crate::producer::COPY_MAX_RECORD_BYTES`].
    pub fn holding_copies(self) -> Self {
        self.with_config(
            "max.message.bytes",
            crate::producer::COPY_MAX_RECORD_BYTES.to_string(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The broker could not be reached or refused the request: worth retrying.
    #[error("Kafka admin request failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic} failed: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} did not appear in the cluster metadata in time")]
    NotVisible(String),
    /// A deployment problem no retry fixes: consumers join these topics by partition.
    #[error(
        "journey topics have different partition counts ({0}); they must all have the same \
         count because consumers join them by partition: repartition them or recreate them"
    )]
    PartitionMismatch(String),
}

impl TopicError {
    /// True when retrying later can succeed (the broker is down or still electing).
    pub fn is_transient(&self) -> bool {
        matches!(self, TopicError::Kafka(_) | TopicError::NotVisible(_))
    }
}

/// Creates the missing topics of `specs` (existing ones are left as they are), waits until all
/// are visible, then checks that the topics named in `same_partitions` share one partition count.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    specs: &[TopicSpec],
    same_partitions: &[String],
) -> Result<(), TopicError> {
    let mut config = settings.client_config("aftercart-admin");
    settings.apply_overrides(&mut config, ClientKind::Producer);
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(config.create()?);
    let timeout = settings.request_timeout();

    let existing = partition_counts(&admin, timeout).await?;
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !existing.contains_key(&s.name))
        .collect();
    if !missing.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|spec| {
                spec.configs.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(name) => tracing::info!(topic = %name, "Created topic."),
                // Another replica won the race: fine.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicError::Create { topic, code }),
            }
        }
    }

    let deadline = Instant::now() + timeout;
    let counts = loop {
        let counts = partition_counts(&admin, timeout).await?;
        match specs.iter().find(|s| !counts.contains_key(&s.name)) {
            None => break counts,
            Some(spec) if Instant::now() >= deadline => {
                return Err(TopicError::NotVisible(spec.name.clone()))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    check_same_partitions(&counts, same_partitions)
}

/// `ensure_topics`, retried with backoff (250 ms doubling to 10 s) while the broker is
/// unreachable. `Ok(true)` once the topics are ready, `Ok(false)` if `stop` came first, `Err`
/// for what no retry fixes (e.g. partition counts that differ).
pub async fn ensure_topics_with_retry(
    settings: &KafkaSettings,
    specs: &[TopicSpec],
    same_partitions: &[String],
    stop: &tokio_util::sync::CancellationToken,
) -> Result<bool, TopicError> {
    let checking = Instant::now();
    let ready =
        crate::startup::retry_with_backoff(stop, "topics", TopicError::is_transient, || {
            ensure_topics(settings, specs, same_partitions)
        })
        .await?;
    if ready.is_some() {
        tracing::info!(
            took_ms = checking.elapsed().as_millis() as u64,
            "Topics checked."
        );
    }
    Ok(ready.is_some())
}

/// Refuses topics of `topics` (those found in `counts`) that differ in partition count.
pub fn check_same_partitions(
    counts: &HashMap<String, usize>,
    topics: &[String],
) -> Result<(), TopicError> {
    let found: Vec<(&String, usize)> = topics
        .iter()
        .filter_map(|t| counts.get(t).map(|c| (t, *c)))
        .collect();
    let first = found.first().map(|(_, c)| *c);
    if found.iter().any(|(_, c)| Some(*c) != first) {
        let listing = found
            .iter()
            .map(|(t, c)| format!("{t}={c}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(TopicError::PartitionMismatch(listing));
    }
    Ok(())
}

/// Each topic's configs (name to value), or why the cluster would not describe it.
pub type TopicConfigs = BTreeMap<String, Result<BTreeMap<String, String>, RDKafkaErrorCode>>;

/// The topic-level configs of each named topic as the cluster reports them (explicit and
/// default values), read with the admin API's DescribeConfigs. A topic the cluster refuses
/// to describe (missing, or no DESCRIBE_CONFIGS permission) maps to its error code.
pub async fn describe_topic_configs(
    settings: &KafkaSettings,
    topics: &[String],
) -> Result<TopicConfigs, TopicError> {
    let mut config = settings.client_config("aftercart-admin");
    settings.apply_overrides(&mut config, ClientKind::Producer);
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    describe_topic_configs_with(&admin, topics, settings.request_timeout()).await
}

/// [`describe_topic_configs`] on an admin client the caller holds.
pub async fn describe_topic_configs_with<C: ClientContext + 'static>(
    admin: &AdminClient<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<TopicConfigs, TopicError> {
    let specifiers: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin.describe_configs(&specifiers, &options).await?;
    Ok(topics
        .iter()
        .cloned()
        .zip(results.into_iter().map(|result| {
            result.map(|resource| {
                resource
                    .entries
                    .into_iter()
                    .filter_map(|entry| entry.value.map(|value| (entry.name, value)))
                    .collect()
            })
        }))
        .collect())
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Partition count of every topic in the cluster (librdkafka's metadata call blocks, so it runs
/// on the blocking pool).
async fn partition_counts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
) -> Result<HashMap<String, usize>, TopicError> {
    let admin = Arc::clone(admin);
    let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
        .await
        .expect("metadata task does not panic")?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_prefix() {
        let names = TopicNames::new("shopify.");
        assert_eq!(names.family(Family::Checkouts), "shopify.checkouts");
        assert_eq!(names.quarantine(), "shopify.quarantine");
        // checkouts, carts, orders, fulfillments, customers, compliance; plus other and quarantine
        assert_eq!(names.journey().len(), 6);
        assert_eq!(names.ingress_outputs().len(), 8);
    }

    #[test]
    fn topics_get_min_insync_replicas_and_retention_and_changelogs_bounded_compaction() {
        let mut settings = KafkaSettings::new("localhost:9092", "shopify.");
        settings.replication = 3;
        settings.min_insync_replicas = 2;
        settings.retention = Duration::from_secs(7 * 86_400);
        settings.compaction_lag = Duration::from_secs(3_600);
        let raw = TopicSpec::new("shopify.orders", &settings);
        assert_eq!(raw.config("min.insync.replicas"), Some("2"));
        assert_eq!(raw.config("retention.ms"), Some("604800000"));
        assert_eq!(raw.config("segment.ms"), Some("86400000"));
        let changelog = TopicSpec::changelog("aftercart.abandonment-state", &settings);
        assert_eq!(changelog.config("cleanup.policy"), Some("compact"));
        assert_eq!(changelog.config("retention.ms"), None);
        assert_eq!(changelog.config("max.compaction.lag.ms"), Some("3600000"));
        assert_eq!(changelog.config("segment.ms"), Some("3600000"));
        assert_eq!(changelog.config("min.insync.replicas"), Some("2"));
        let copies = raw.holding_copies().with_config("min.insync.replicas", "1");
        assert_eq!(copies.config("min.insync.replicas"), Some("1"));
        assert_eq!(
            copies
                .configs
                .iter()
                .filter(|(k, _)| k == "min.insync.replicas")
                .count(),
            1
        );
    }

    #[test]
    fn mismatched_journey_partitions_are_refused() {
        let counts = HashMap::from([
            ("a".to_string(), 12),
            ("b".to_string(), 6),
            ("c".to_string(), 12),
        ]);
        let topics = ["a".to_string(), "b".to_string(), "c".to_string()];
        let error = check_same_partitions(&counts, &topics).unwrap_err();
        assert!(error.to_string().contains("a=12, b=6, c=12"), "{error}");
        assert!(!error.is_transient());
        assert!(check_same_partitions(&counts, &topics[..1]).is_ok());
    }
}

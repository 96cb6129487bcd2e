//! Topic names and idempotent topic creation through the admin API (brokers with topic
//! auto-creation switched off are the norm), with the journey partition-count check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aftercart_shopify::Family;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::KafkaSettings;

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

impl TopicSpec {
    pub fn new(name: impl Into<String>, settings: &KafkaSettings) -> Self {
        Self {
            name: name.into(),
            partitions: settings.partitions,
            replication: settings.replication,
            configs: Vec::new(),
        }
    }

    pub fn with_config(mut self, key: &str, value: impl Into<String>) -> Self {
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
    settings.apply_overrides(&mut config);
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
    let mut backoff = Duration::from_millis(250);
    loop {
        let attempt = tokio::select! {
            attempt = ensure_topics(settings, specs, same_partitions) => attempt,
            () = stop.cancelled() => return Ok(false),
        };
        match attempt {
            Ok(()) => return Ok(true),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, retry_in = ?backoff, "Kafka is not ready; retrying.");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return Ok(false),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn check_same_partitions(
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
        assert_eq!(names.journey().len(), 5);
        assert_eq!(names.ingress_outputs().len(), 7);
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

//! Removals left behind by a destination taken out of the configuration: before the exporters
//! start, the exporter groups of destinations no longer configured are looked up, and the
//! batches after their committed offsets read. A removal among them would never be sent (no
//! exporter reads for that destination any more), so the service refuses to start and says how
//! to proceed, rather than leave the people at the platform.

use std::collections::BTreeMap;
use std::time::Duration;

use aftercart_kafka::{for_each_record, ClientKind, KafkaSettings, StoreError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::AudiencesConfig;
use crate::domain::batch::Batch;
use crate::platform::Op;

/// Removed destinations with unsent removals: destination → people in them.
pub type Orphans = BTreeMap<String, usize>;

#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    #[error("cannot look up the exporter groups: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Read(#[from] StoreError),
    /// A configured destination's exporter group has committed offsets but was not in the
    /// group listing, so the listing is incomplete and a removed destination's group may be
    /// missing from it too.
    #[error(
        "the consumer group listing left out {0}, which has committed offsets: a broker did not \
         answer the listing (it is asked of every broker), or the principal lacks Describe on \
         the groups prefixed with the audiences group (Kafka lists only the groups it may describe)"
    )]
    Unlisted(String),
}

impl OrphanError {
    /// The broker cannot list consumer groups at all (librdkafka says the feature is missing
    /// from the broker's API versions): no retry changes that.
    pub fn unsupported(&self) -> bool {
        matches!(
            self,
            OrphanError::Kafka(KafkaError::GroupListFetch(
                RDKafkaErrorCode::UnsupportedFeature
            ))
        )
    }

    /// The broker refused the service's principal an ACL on a group or on the batches topic:
    /// an operator has to act, no wait fixes it. (Authentication failures are not counted:
    /// librdkafka reports one broker's failed handshake, e.g. while it restarts, the same way,
    /// and they are waited for.)
    pub fn denied(&self) -> bool {
        let error = match self {
            OrphanError::Kafka(error)
            | OrphanError::Read(StoreError::Kafka { source: error, .. }) => error,
            _ => return false,
        };
        matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
            )
        )
    }
}

/// The message the service refuses to start with.
pub fn refusal(orphans: &Orphans) -> String {
    let named: Vec<String> = orphans
        .iter()
        .map(|(destination, people)| format!("{destination} ({people} people)"))
        .collect();
    format!(
        "removals are pending for destinations no longer in the audiences configuration: {}. \
         Put each back (same name and settings) and wait until \
         aftercart_audiences_pending_removals{{destination=...}} is 0 and its exporter has no lag, \
         then remove it; or, having removed those people at the platform by hand, delete the \
         consumer group aftercart named after it",
        named.join(", ")
    )
}

/// The start-up check: `find` (blocking, so on a blocking thread), retried with backoff while
/// Kafka cannot answer. Starting past a failed check would leave a removed destination's
/// removals unsent for good, so the service waits (an outage at start) instead. `Ok(None)` if
/// `stop` came first; `Err` when the broker refuses the service's principal ([`OrphanError::denied`]).
/// The one failure it starts past, with a warning, is a broker that cannot list consumer groups
/// at all (librdkafka's mock cluster, which `aftercart dev` and tests run on; never Apache
/// Kafka): no check is possible there.
pub async fn before_start<F>(
    stop: &CancellationToken,
    find: F,
) -> Result<Option<Orphans>, OrphanError>
where
    F: Fn() -> Result<Orphans, OrphanError> + Clone + Send + 'static,
{
    let attempt = || {
        let find = find.clone();
        async move {
            match tokio::task::spawn_blocking(find).await {
                Ok(found) => found,
                Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
            }
        }
    };
    let retry = |error: &OrphanError| !error.unsupported() && !error.denied();
    match aftercart_kafka::retry_with_backoff(stop, "removals check", retry, attempt).await {
        Err(error) if error.unsupported() => {
            tracing::warn!(%error, "The broker cannot list consumer groups: removals left by destinations no longer configured were not checked.");
            Ok(Some(Orphans::new()))
        }
        found => found,
    }
}

/// Finds removals not yet sent for destinations that are no longer configured. Blocking.
pub fn find(config: &AudiencesConfig) -> Result<Orphans, OrphanError> {
    let kafka = &config.kafka;
    let timeout = kafka.request_timeout();
    let prefix = format!("{}-", config.group);
    let lookup = consumer(kafka, &format!("{}-orphans", config.group))?;
    let topic = &config.batches_topic;
    // Asked before the group listing: in a new client librdkafka's listing first waits for
    // metadata by sleeping until some broker changes state, which took 1.0-1.5 s of most
    // starts (the fault suite's restart timeline), all of it before the stage joins its group.
    let metadata = lookup.fetch_metadata(Some(topic), timeout)?;
    let groups = lookup.fetch_group_list(None, timeout)?;
    let removed: Vec<String> = groups
        .groups()
        .iter()
        .filter_map(|g| g.name().strip_prefix(&prefix))
        .filter(|name| !name.is_empty() && !config.destinations.contains_key(*name))
        .map(str::to_string)
        .collect();
    let partitions = partitions_of(&metadata, topic)?;
    // librdkafka reports the listing a success when the last broker to answer did, and Kafka
    // lists only the groups the principal may describe: a listing can miss groups unseen. A
    // configured destination's group that has committed offsets must be in it; if it is not,
    // a removed destination's group may be missing too.
    let listed: std::collections::HashSet<&str> =
        groups.groups().iter().map(|g| g.name()).collect();
    for destination in config.destinations.keys() {
        let group = config.exporter_group(destination);
        if !listed.contains(group.as_str())
            && committed(kafka, &group, topic, &partitions, timeout)?
                .iter()
                .any(|(_, from)| from.is_some())
        {
            return Err(OrphanError::Unlisted(group));
        }
    }
    let mut orphans = Orphans::new();
    if removed.is_empty() {
        return Ok(orphans);
    }
    for destination in removed {
        let group = config.exporter_group(&destination);
        let committed = committed(kafka, &group, topic, &partitions, timeout)?;
        for (partition, from) in committed {
            for_each_record(kafka, &group, topic, partition, from, |record| {
                let batch = record
                    .value
                    .and_then(|v| serde_json::from_slice::<Batch>(v).ok());
                if let Some(batch) =
                    batch.filter(|b| b.destination == destination && b.op == Op::Remove)
                {
                    *orphans.entry(destination.clone()).or_default() += batch.members.len();
                }
            })?;
        }
    }
    Ok(orphans)
}

/// The partitions of `topic`, or why the broker did not say: a topic it answered with an error
/// (or without partitions) would otherwise pass as one with no removals left in it.
fn partitions_of(metadata: &Metadata, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let unknown = KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition);
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| unknown.clone())?;
    if let Some(error) = found.error() {
        return Err(KafkaError::MetadataFetch(error.into()));
    }
    let partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(unknown);
    }
    Ok(partitions)
}

/// A client named after `group` that never joins it: it reads the group's committed offsets.
pub(crate) fn consumer(kafka: &KafkaSettings, group: &str) -> Result<BaseConsumer, KafkaError> {
    let mut config = kafka.client_config(group);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    kafka.apply_overrides(&mut config, ClientKind::Consumer);
    config.create()
}

/// Where `group` would resume in each partition (`None`: it committed nothing there, so it
/// would start from the beginning).
fn committed(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
    committed_by(&consumer(kafka, group)?, topic, partitions, timeout)
}

/// [`committed`] through a client made by [`consumer`] for the group. A partition the
/// coordinator answered with an error of its own fails the whole lookup: taken for one the group
/// never committed, it would have its batches read from the start (removals already sent
/// counted as pending) or hide the group's commits from the listing check.
pub(crate) fn committed_by(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
    committed_each(consumer, topic, partitions, timeout)?
        .into_iter()
        .map(|(partition, committed)| Ok((partition, committed?)))
        .collect()
}

/// One partition's committed offset (`None`: never committed), or the error the coordinator
/// answered for that partition.
pub(crate) type Committed = Result<Option<i64>, KafkaError>;

/// Each partition's [`Committed`].
pub(crate) fn committed_each(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, Committed)>, KafkaError> {
    let mut wanted = TopicPartitionList::new();
    for partition in partitions {
        wanted.add_partition(topic, *partition);
    }
    let offsets = consumer.committed_offsets(wanted, timeout)?;
    Ok(offsets
        .elements()
        .iter()
        .map(|e| {
            let committed = e.error().map(|()| match e.offset() {
                Offset::Offset(at) => Some(at),
                _ => None,
            });
            (e.partition(), committed)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn down() -> OrphanError {
        OrphanError::Kafka(KafkaError::GroupListFetch(
            RDKafkaErrorCode::BrokerTransportFailure,
        ))
    }

    /// Bounds a test of the retries in (paused) time: a regression that retried for ever
    /// fails here instead of hanging the suite.
    async fn within_an_hour<T>(check: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(3600), check)
            .await
            .expect("the check ended")
    }

    /// A broker that cannot answer at start (an outage) is waited for: starting past the check
    /// would leave a removed destination's removals unsent for good.
    #[tokio::test(start_paused = true)]
    async fn a_check_kafka_cannot_answer_is_retried_until_it_can() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let found = within_an_hour(before_start(
            &CancellationToken::new(),
            move || match counted.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err(down()),
                _ => Ok(Orphans::from([("tiktok".to_string(), 1)])),
            },
        ))
        .await;
        assert_eq!(
            found.expect("checked"),
            Some(Orphans::from([("tiktok".to_string(), 1)]))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    /// Still down when the service is stopped: it never started, and says so (`None`), after
    /// trying all along.
    #[tokio::test(start_paused = true)]
    async fn a_stop_while_kafka_cannot_answer_ends_the_check_without_a_start() {
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stopper.cancel();
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let found = within_an_hour(before_start(&stop, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(down())
        }))
        .await;
        assert_eq!(found.expect("not refused"), None);
        // 250 ms doubling to 10 s over 60 s: 0.25 + 0.5 + … + 8 (≈ 16 s), then every 10 s.
        assert!(calls.load(Ordering::SeqCst) >= 6, "{calls:?}");
    }

    /// A principal the broker refuses is an operator's to fix: the check fails at once, with
    /// the error, instead of waiting for ever behind a "not ready".
    #[tokio::test(start_paused = true)]
    async fn a_refused_principal_fails_the_check_at_once() {
        let refused = || {
            Err(OrphanError::Kafka(KafkaError::MetadataFetch(
                RDKafkaErrorCode::GroupAuthorizationFailed,
            )))
        };
        let found = within_an_hour(before_start(&CancellationToken::new(), refused)).await;
        assert!(
            matches!(found, Err(ref error) if error.denied()),
            "{found:?}"
        );
        assert!(!down().denied());
        // Read refused on the batches topic, met while reading a removed destination's batches.
        let unread = OrphanError::Read(StoreError::Kafka {
            topic: "aftercart.audience-batches".into(),
            partition: 0,
            source: KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed),
        });
        assert!(unread.denied());
        // One broker's failed handshake (a restart) and an incomplete listing are waited for.
        let handshake =
            OrphanError::Kafka(KafkaError::GroupListFetch(RDKafkaErrorCode::Authentication));
        assert!(!handshake.denied() && !handshake.unsupported());
        let unlisted = OrphanError::Unlisted("aftercart-audiences-meta".into());
        assert!(!unlisted.denied() && !unlisted.unsupported());
    }

    /// A partition the coordinator answers with an error (here one it does not know) is not a
    /// partition the group never committed: the lookup fails, and the check waits and asks
    /// again, instead of reading batches already sent or missing the group's commits.
    #[test]
    fn a_partition_answered_with_an_error_fails_the_offset_lookup() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster
            .create_topic("batches", 2, 1)
            .expect("topic created");
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "aftercart-audiences-meta")
            .set("enable.auto.commit", "false")
            .create()
            .expect("client");
        let timeout = Duration::from_secs(10);
        let known = committed_by(&client, "batches", &[0, 1], timeout).expect("answered");
        assert_eq!(known, vec![(0, None), (1, None)]);
        let error = committed_by(&client, "batches", &[0, 7], timeout)
            .expect_err("partition 7 was answered with an error");
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition),
            "{error}"
        );
    }

    /// librdkafka's mock cluster (`aftercart dev`, tests) cannot list groups at all: that is
    /// the one failure the service starts past, with a warning. Asked of a real mock cluster,
    /// so a change in how librdkafka reports it shows here.
    #[tokio::test(start_paused = true)]
    async fn a_broker_that_cannot_list_groups_is_started_past() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("client");
        let listed = client
            .fetch_group_list(None, Duration::from_secs(10))
            .map(|_| Orphans::new())
            .map_err(OrphanError::Kafka);
        let error = listed.expect_err("the mock cluster lists no groups");
        assert!(error.unsupported(), "{error}");
        assert!(!down().unsupported());
        let found = within_an_hour(before_start(&CancellationToken::new(), move || {
            Err(OrphanError::Kafka(KafkaError::GroupListFetch(
                RDKafkaErrorCode::UnsupportedFeature,
            )))
        }))
        .await;
        assert_eq!(found.expect("started past"), Some(Orphans::new()));
    }
}

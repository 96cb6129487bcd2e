//! The poll loop: consume journey partitions, apply them to the engine, fire timers, and flush
//! effects in the order that makes a crash safe: outputs, then changelog, then offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aftercart_kafka::producer::build_output_producer;
use aftercart_kafka::{
    close_off_runtime, dead_letter_record, header, read_partition, receive_batch_within, shop_of,
    ClientWatch, DeadLetter, GroupContext, LoopError, RebalanceEvent, StoreError, StoredRecord,
    TopicNames, IDLE_WAIT,
};
use aftercart_runtime::health::Readiness;
use aftercart_shopify::time::now_ms;
use aftercart_shopify::Family;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::AbandonmentConfig;
use crate::domain::engine::{Effect, Engine};
use crate::domain::event::{EmittedEvent, EventType};
use crate::domain::input::{global_input, journey_input, PoisonRecord};
use crate::domain::journey::Journey;
use crate::metrics::AbandonmentMetrics;

/// Changelog key of a partition's checkpoint: the last output offset its state reflects.
pub const CHECKPOINT_KEY: &str = "aftercart:checkpoint";
/// Client and group id of the reads that restore a partition.
const RESTORE_CLIENT: &str = "aftercart-abandonment-restore";
/// Most records taken per batch.
const BATCH: usize = 2000;
/// How often idle journeys are expired.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// How long a step waits for a first record: never past the next abandonment timer, so an idle
/// loop fires it on time rather than up to [`IDLE_WAIT`] late.
fn first_wait(next_due_ms: Option<i64>, now_ms: i64) -> Duration {
    match next_due_ms {
        None => IDLE_WAIT,
        Some(due) => {
            let left = u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0);
            Duration::from_millis(left).min(IDLE_WAIT)
        }
    }
}

/// The records a partition's restore needs, read off the async runtime.
struct RestoreRead {
    changelog: Vec<StoredRecord>,
    emitted: Vec<StoredRecord>,
    started: Instant,
}

/// The output offset of the last checkpoint in a changelog. `None` when there is none or the
/// last one does not decode: then every emitted event is read back, the safe side.
fn last_checkpoint(changelog: &[StoredRecord]) -> Option<i64> {
    changelog
        .iter()
        .filter(|r| r.key.as_deref() == Some(CHECKPOINT_KEY.as_bytes()))
        .filter_map(|r| r.value.as_deref())
        .next_back()
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .and_then(|v| v.get("output_offset").and_then(serde_json::Value::as_i64))
}

/// The last offset read of each input partition in a batch. A batch spans a few dozen
/// partitions at most, so a list beats hashing a topic name per record.
#[derive(Default)]
struct LatestOffsets(Vec<(String, i32, i64)>);

impl LatestOffsets {
    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .0
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, latest)) => *latest = (*latest).max(offset),
            None => self.0.push((topic.to_string(), partition, offset)),
        }
    }

    fn into_map(self) -> HashMap<(String, i32), i64> {
        self.0
            .into_iter()
            .map(|(topic, partition, offset)| ((topic, partition), offset))
            .collect()
    }
}

/// A changelog value: a journey state, or a partition's checkpoint.
enum Value {
    Journey(Box<Journey>),
    Checkpoint(serde_json::Value),
}

impl Value {
    fn write(&self, buffer: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Value::Journey(journey) => serde_json::to_writer(buffer, journey),
            Value::Checkpoint(checkpoint) => serde_json::to_writer(buffer, checkpoint),
        }
    }
}

/// The Kafka clients of a loop. Closing a consumer can block for as long as the broker is away,
/// so they are always closed on a plain thread, never on the async runtime.
struct Clients {
    consumer: StreamConsumer<GroupContext>,
    global: BaseConsumer,
    producer: FutureProducer,
}

pub struct Loop {
    config: AbandonmentConfig,
    /// `Some` until the loop closes them.
    clients: Option<Clients>,
    engine: Engine,
    metrics: AbandonmentMetrics,
    ready: Readiness,
    family_of_topic: HashMap<String, &'static str>,
    global_caught_up: bool,
    assigned_once: bool,
    last_expiry: Instant,
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Dropped without `run` finishing (its task was dropped): still never block the runtime.
        if let Some(clients) = self.clients.take() {
            std::thread::spawn(move || drop(clients));
        }
    }
}

impl Loop {
    fn clients(&self) -> &Clients {
        self.clients
            .as_ref()
            .expect("clients are open until run ends")
    }

    pub fn new(
        config: AbandonmentConfig,
        metrics: AbandonmentMetrics,
        ready: Readiness,
    ) -> Result<Loop, LoopError> {
        let names = TopicNames::new(&config.kafka.topic_prefix);
        let journey_families = [Family::Checkouts, Family::Carts, Family::Orders];
        let family_of_topic: HashMap<String, &'static str> = Family::JOURNEY
            .iter()
            .map(|f| (names.family(*f), f.as_str()))
            .collect();
        let context = GroupContext::new(
            metrics.consumer.lag.clone(),
            journey_families
                .iter()
                .map(|f| (names.family(*f), f.as_str().to_string()))
                .collect(),
            ClientWatch::sharing(metrics.consumer.kafka_errors.clone(), ready.clone()),
        );
        let mut consumer_config = config
            .kafka
            .group_consumer_config("aftercart-abandonment", &config.group);
        consumer_config
            // range keeps the same partition numbers of every journey topic on one member.
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", "5000");
        config.kafka.apply_overrides(&mut consumer_config);
        let consumer: StreamConsumer<GroupContext> =
            consumer_config.create_with_context(context)?;
        let journey_topics: Vec<String> =
            journey_families.iter().map(|f| names.family(*f)).collect();
        consumer.subscribe(
            &journey_topics
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;

        let mut global_config = config.kafka.client_config("aftercart-abandonment-global");
        global_config
            .set("group.id", format!("{}-global", config.group))
            .set("enable.auto.commit", "false");
        config.kafka.apply_overrides(&mut global_config);
        let global: BaseConsumer = global_config.create()?;

        let producer = build_output_producer(&config.kafka, "aftercart-abandonment")?;
        let engine = Engine::new(config.rules.clone());
        Ok(Loop {
            config,
            clients: Some(Clients {
                consumer,
                global,
                producer,
            }),
            engine,
            metrics,
            ready,
            family_of_topic,
            global_caught_up: false,
            assigned_once: false,
            last_expiry: Instant::now(),
        })
    }

    /// Reads every partition of the customers and compliance topics from the beginning (they
    /// are not journey-keyed, so every instance needs all of them), up to their current end.
    async fn start_global(&mut self) -> Result<(), LoopError> {
        let names = TopicNames::new(&self.config.kafka.topic_prefix);
        let mut assignment = TopicPartitionList::new();
        let mut targets: HashMap<(String, i32), i64> = HashMap::new();
        for family in [Family::Customers, Family::Compliance] {
            let topic = names.family(family);
            let metadata = self
                .clients()
                .global
                .fetch_metadata(Some(&topic), self.config.kafka.request_timeout())?;
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    assignment.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
                    let (_, high) = self.clients().global.fetch_watermarks(
                        &topic,
                        p.id(),
                        self.config.kafka.request_timeout(),
                    )?;
                    if high > 0 {
                        targets.insert((topic.clone(), p.id()), high);
                    }
                }
            }
        }
        self.clients().global.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !targets.is_empty() && Instant::now() < deadline {
            // Never block the async runtime: poll without waiting, sleep on the timer instead.
            match self.clients().global.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    let message = message.detach();
                    let key = (message.topic().to_string(), message.partition());
                    if targets
                        .get(&key)
                        .is_some_and(|high| message.offset() + 1 >= *high)
                    {
                        targets.remove(&key);
                    }
                    let effects = self.apply_global_message(&message);
                    self.flush(effects, Vec::new(), HashMap::new()).await?;
                }
                Some(Err(error)) => return Err(error.into()),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.global_caught_up = true;
        Ok(())
    }

    fn apply_global_message(&mut self, message: &OwnedMessage) -> Vec<(i32, Effect)> {
        let family = self
            .family_of_topic
            .get(message.topic())
            .copied()
            .unwrap_or("other");
        match global_input(
            header(message, "shopify-topic"),
            message.payload().unwrap_or_default(),
        ) {
            Ok(input) => {
                self.metrics.consumer.processed(family);
                let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                self.engine.apply_global(&shop_of(message), input, at)
            }
            Err(error) => {
                // Global records are read by every instance: counted, never dead-lettered here.
                self.metrics.consumer.failed(family, error.as_label());
                Vec::new()
            }
        }
    }

    /// Runs until `stop`; returns after a final commit and producer flush.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), LoopError> {
        self.start_global().await?;
        let mut result = Ok(());
        while !stop.is_cancelled() {
            if let Err(error) = self.step(&stop).await {
                result = Err(error);
                break;
            }
        }
        let clients = self
            .clients
            .take()
            .expect("clients are open until run ends");
        let deadline = self.config.shutdown_timeout.max(Duration::from_secs(1));
        let Clients {
            consumer,
            global,
            producer,
        } = clients;
        if !close_off_runtime(consumer, producer, global, deadline).await {
            tracing::warn!("Kafka clients did not close before the shutdown deadline.");
        }
        result
    }

    async fn step(&mut self, stop: &CancellationToken) -> Result<(), LoopError> {
        self.handle_rebalances().await?;
        let wait = first_wait(self.engine.next_due(), now_ms());
        let batch = receive_batch_within(&self.clients().consumer, stop, BATCH, wait).await;
        // A rebalance heard while receiving is handled before any record is applied.
        self.handle_rebalances().await?;

        let mut effects = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        // Per batch, not per record: a record costs no topic-name copy and no metric lookup.
        let mut latest = LatestOffsets::default();
        let mut processed: Vec<(&'static str, u64)> = Vec::new();
        for message in batch {
            let partition = message.partition();
            if !self.engine.owns(partition) {
                continue; // revoked meanwhile: the new owner will read it
            }
            let family = self
                .family_of_topic
                .get(message.topic())
                .copied()
                .unwrap_or("other");
            latest.record(message.topic(), partition, message.offset());
            let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
            let decoded = match key {
                None => Err(PoisonRecord::Impossible("record without a UTF-8 key")),
                Some(key) => journey_input(
                    header(&message, "shopify-topic"),
                    message.payload().unwrap_or_default(),
                )
                .map(|input| (key, input)),
            };
            match decoded {
                Ok((key, input)) => {
                    match processed.iter_mut().find(|(f, _)| *f == family) {
                        Some((_, count)) => *count += 1,
                        None => processed.push((family, 1)),
                    }
                    let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                    let shop = shop_of(&message);
                    effects.extend(
                        self.engine
                            .apply(partition, key, &shop, input, at)
                            .into_iter()
                            .map(|e| (partition, e)),
                    );
                }
                Err(error) => {
                    self.metrics.consumer.failed(family, error.as_label());
                    tracing::warn!(
                        topic = family,
                        partition,
                        offset = message.offset(),
                        reason = error.as_label(),
                        "Dead-lettering a record that cannot be used."
                    );
                    dead.push(DeadLetter {
                        reason: error.to_string(),
                        message,
                    });
                }
            }
        }
        for (family, count) in processed {
            self.metrics.consumer.processed_by(family, count);
        }
        let offsets = latest.into_map();
        for _ in 0..BATCH {
            match self.clients().global.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    let message = message.detach();
                    effects.extend(self.apply_global_message(&message));
                }
                Some(Err(error)) => tracing::warn!(%error, "Global consumer error; continuing."),
                None => break,
            }
        }
        let now = now_ms();
        effects.extend(self.engine.fire_due(now));
        if self.last_expiry.elapsed() >= EXPIRY_EVERY {
            self.last_expiry = Instant::now();
            effects.extend(self.engine.expire(now));
        }
        self.flush(effects, dead, offsets).await?;
        self.metrics.journeys(self.engine.journeys());
        Ok(())
    }

    async fn handle_rebalances(&mut self) -> Result<(), LoopError> {
        let events = self.clients().consumer.context().take_events();
        for event in events {
            let partitions = event.partitions(None);
            match event {
                RebalanceEvent::Revoked(_) => {
                    for partition in partitions {
                        self.engine.revoke(partition);
                    }
                }
                RebalanceEvent::Assigned(_) => {
                    let partitions: Vec<i32> = partitions
                        .into_iter()
                        .filter(|p| !self.engine.owns(*p))
                        .collect();
                    // Each read opens its own clients and waits on the broker: all partitions
                    // are read at once, then applied one by one in partition order.
                    let reads: Vec<_> = partitions
                        .iter()
                        .map(|partition| self.spawn_restore_read(*partition))
                        .collect();
                    for (partition, read) in partitions.into_iter().zip(reads) {
                        let read = match read.await {
                            Ok(read) => read?,
                            Err(_) => return Err(LoopError::Kafka(KafkaError::Canceled)),
                        };
                        self.restore(partition, read).await?;
                    }
                    self.assigned_once = true;
                }
            }
        }
        self.metrics.consumer.partitions(self.owned_partitions());
        if self.assigned_once && self.global_caught_up {
            self.ready.set_ready(true);
        }
        Ok(())
    }

    fn owned_partitions(&self) -> usize {
        (0..self.config.kafka.partitions.max(1))
            .filter(|p| self.engine.owns(*p))
            .count()
    }

    /// Reads what restoring `partition` needs on the blocking pool: its changelog, then the
    /// events emitted after the changelog's last checkpoint.
    fn spawn_restore_read(
        &self,
        partition: i32,
    ) -> tokio::task::JoinHandle<Result<RestoreRead, StoreError>> {
        let settings = self.config.kafka.clone();
        let state_topic = self.config.state_topic.clone();
        let output_topic = self.config.output_topic.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let changelog =
                read_partition(&settings, RESTORE_CLIENT, &state_topic, partition, None)?;
            let from = last_checkpoint(&changelog).map(|offset| offset + 1);
            let emitted =
                read_partition(&settings, RESTORE_CLIENT, &output_topic, partition, from)?;
            Ok(RestoreRead {
                changelog,
                emitted,
                started,
            })
        })
    }

    /// Restores a partition: its journeys from the changelog, then the events emitted after the
    /// last checkpoint (a crash between output and changelog) so none is emitted twice.
    async fn restore(&mut self, partition: i32, read: RestoreRead) -> Result<(), LoopError> {
        let RestoreRead {
            changelog,
            emitted,
            started,
        } = read;
        let records = changelog.len();
        let mut journeys: HashMap<String, Journey> = HashMap::new();
        for record in changelog {
            let Some(key) = record.key.and_then(|k| String::from_utf8(k).ok()) else {
                continue;
            };
            match (key.as_str(), record.value) {
                // Already used to choose where the emitted events were read from.
                (CHECKPOINT_KEY, Some(_)) => {}
                (_, None) => {
                    journeys.remove(&key);
                }
                (_, Some(value)) => match serde_json::from_slice::<Journey>(&value) {
                    Ok(journey) => {
                        journeys.insert(key, journey);
                    }
                    Err(error) => {
                        tracing::error!(partition, %error, "Skipping a changelog record that does not decode.")
                    }
                },
            }
        }
        let mut effects: Vec<(i32, Effect)> = self
            .engine
            .assign(partition, journeys)
            .into_iter()
            .map(|e| (partition, e))
            .collect();
        for record in emitted {
            let Some(value) = record.value else { continue };
            if let Ok(event) = serde_json::from_slice::<EmittedEvent>(&value) {
                effects.extend(
                    self.engine
                        .reconcile(partition, &event)
                        .map(|e| (partition, e)),
                );
            }
        }
        self.flush(effects, Vec::new(), HashMap::new()).await?;
        self.metrics.consumer.restored(records, started.elapsed());
        tracing::info!(partition, journeys = self.engine.partition(partition).map_or(0, |p| p.len()), took = ?started.elapsed(), "Restored partition state.");
        Ok(())
    }

    /// Writes effects in the crash-safe order: output and dead-letter records (acknowledged),
    /// then journey states and checkpoints (acknowledged), then the input offsets.
    async fn flush(
        &mut self,
        effects: Vec<(i32, Effect)>,
        dead: Vec<DeadLetter>,
        offsets: HashMap<(String, i32), i64>,
    ) -> Result<(), LoopError> {
        let mut outputs = Vec::new();
        let mut states: HashMap<(i32, String), Option<Box<Journey>>> = HashMap::new();
        for (partition, effect) in effects {
            match effect {
                Effect::Emit { key, event } => outputs.push((partition, key, event)),
                Effect::Persist { key, journey } => {
                    states.insert((partition, key), journey);
                }
            }
        }
        let mut deliveries = Vec::with_capacity(outputs.len() + dead.len());
        let mut payload = Vec::new();
        for (partition, key, event) in &outputs {
            payload.clear();
            serde_json::to_writer(&mut payload, event)?;
            let headers = OwnedHeaders::new().insert(Header {
                key: "aftercart-event-id",
                value: Some(event.event_id.as_str()),
            });
            let record = FutureRecord::to(&self.config.output_topic)
                .partition(*partition)
                .key(key.as_str())
                .payload(&payload)
                .headers(headers);
            deliveries.push((
                *partition,
                self.clients()
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| LoopError::Write(e))?,
            ));
        }
        for letter in &dead {
            let record = dead_letter_record(&self.config.dead_letter_topic, letter);
            deliveries.push((
                -1,
                self.clients()
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| LoopError::Write(e))?,
            ));
        }
        let mut output_offsets: HashMap<i32, i64> = HashMap::new();
        for (partition, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(delivered)) if partition >= 0 => {
                    let entry = output_offsets.entry(partition).or_insert(delivered.offset);
                    *entry = (*entry).max(delivered.offset);
                }
                Ok(Ok(_)) => self.metrics.consumer.dead_lettered(),
                Ok(Err((error, _))) => return Err(LoopError::Write(error)),
                Err(_) => return Err(LoopError::Write(KafkaError::Canceled)),
            }
        }
        for (_, _, event) in &outputs {
            let segments = event.segments.as_ref();
            let kind = match event.kind {
                crate::domain::event::Kind::Cart => "cart",
                crate::domain::event::Kind::Checkout => "checkout",
            };
            match event.event_type {
                EventType::Abandoned => self.metrics.abandoned(
                    kind,
                    segments.map_or("unknown", |s| s.stage.as_str()),
                    segments.map_or("unknown", |s| s.value_tier.as_str()),
                    segments.map_or("unknown", |s| s.customer.as_str()),
                ),
                EventType::Recovered => self
                    .metrics
                    .recovered(kind, event.recovered_after_seconds.unwrap_or(0)),
            }
        }

        // One buffer serves every record: librdkafka copies a payload when it is sent, so no
        // record needs its own allocation (they dominated the loop's profile).
        let mut buffer = Vec::with_capacity(4096);
        let mut writes = Vec::with_capacity(states.len() + output_offsets.len());
        let checkpoints = output_offsets.iter().map(|(partition, offset)| {
            let checkpoint = serde_json::json!({ "output_offset": offset });
            ((*partition, CHECKPOINT_KEY.to_string()), Some(checkpoint))
        });
        for ((partition, key), value) in states
            .into_iter()
            .map(|(at, journey)| (at, journey.map(Value::Journey)))
            .chain(checkpoints.map(|(at, c)| (at, c.map(Value::Checkpoint))))
        {
            let mut record = FutureRecord::<str, [u8]>::to(&self.config.state_topic)
                .partition(partition)
                .key(key.as_str());
            if let Some(value) = &value {
                buffer.clear();
                value.write(&mut buffer)?;
                record = record.payload(buffer.as_slice());
            }
            writes.push(
                self.clients()
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| LoopError::Write(e))?,
            );
        }
        let written = writes.len();
        for write in writes {
            match write.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(LoopError::Write(error)),
                Err(_) => return Err(LoopError::Write(KafkaError::Canceled)),
            }
        }
        self.metrics.consumer.changelog_written(written);

        for ((topic, partition), offset) in offsets {
            if self.engine.owns(partition) {
                self.clients()
                    .consumer
                    .store_offset(&topic, partition, offset)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_loop_waits_the_full_idle_wait_without_timers() {
        assert_eq!(first_wait(None, 1_000), IDLE_WAIT);
    }

    #[test]
    fn a_timer_due_sooner_than_the_idle_wait_shortens_the_wait() {
        assert_eq!(first_wait(Some(1_030), 1_000), Duration::from_millis(30));
        assert_eq!(first_wait(Some(1_000), 1_000), Duration::ZERO);
    }

    #[test]
    fn a_timer_due_later_or_overdue_never_stretches_or_underflows_the_wait() {
        assert_eq!(first_wait(Some(1_000_000), 1_000), IDLE_WAIT);
        assert_eq!(first_wait(Some(500), 1_000), Duration::ZERO);
        assert_eq!(first_wait(Some(i64::MIN), i64::MAX), Duration::ZERO);
        assert_eq!(first_wait(Some(i64::MAX), i64::MIN), IDLE_WAIT);
    }

    fn stored(key: &str, value: Option<&str>) -> StoredRecord {
        StoredRecord {
            key: Some(key.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            offset: 0,
        }
    }

    #[test]
    fn the_last_checkpoint_decides_where_emitted_events_are_read_from() {
        let changelog = [
            stored(CHECKPOINT_KEY, Some(r#"{"output_offset":4}"#)),
            stored("shop.myshopify.com/cart-1", Some("{}")),
            stored(CHECKPOINT_KEY, Some(r#"{"output_offset":9}"#)),
            stored("shop.myshopify.com/cart-1", None),
        ];
        assert_eq!(last_checkpoint(&changelog), Some(9));
        assert_eq!(last_checkpoint(&changelog[1..2]), None, "no checkpoint");
    }

    #[test]
    fn an_undecodable_last_checkpoint_reads_every_emitted_event() {
        let changelog = [
            stored(CHECKPOINT_KEY, Some(r#"{"output_offset":4}"#)),
            stored(CHECKPOINT_KEY, Some("not json")),
        ];
        assert_eq!(last_checkpoint(&changelog), None);
    }
}

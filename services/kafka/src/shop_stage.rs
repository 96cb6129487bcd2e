//! The poll loop of a consumer service whose rules join facts of one shop across topics
//! (referrals, audiences). Two stages share one consumer: source records are routed to a
//! by-shop topic keyed by shop, and by-shop records are applied to the service's per-partition
//! state ([`ShopLogic`]). Effects are flushed in the order that makes a crash safe: outputs,
//! forwards and dead letters (acknowledged), then the changelog with a checkpoint of the output
//! offsets (acknowledged), then the input offsets. On assignment a partition's state is
//! restored from the changelog, and outputs written after its checkpoint are reconciled so none
//! is emitted twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use aftercart_runtime::health::Readiness;
use aftercart_shopify::time::now_ms;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::producer::build_output_producer;
use crate::{
    close_off_runtime, dead_letter_record, read_partition, receive_batch, shop_of, ClientWatch,
    DeadLetter, GroupContext, KafkaSettings, LoopError, LoopMetrics, RebalanceEvent, StoredRecord,
};

/// Changelog key of a partition's checkpoint: the last output offsets its state reflects.
pub const CHECKPOINT_KEY: &str = "aftercart:checkpoint";
/// Header the router adds to a forwarded record: the family of the topic it came from.
pub const SOURCE_HEADER: &str = "aftercart-source";
/// Most records taken per batch.
const BATCH: usize = 2000;
/// How often the state gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Where a stage reads and writes, and who it is.
#[derive(Debug, Clone)]
pub struct StageTopics {
    /// Client id prefix (`aftercart-referrals`).
    pub client: String,
    pub group: String,
    /// Source topics and the family label of each (`orders`, `abandonments`...).
    pub sources: Vec<(String, &'static str)>,
    pub by_shop: String,
    /// Compacted changelog: one record per entity, plus a checkpoint per partition.
    pub state: String,
    pub dead_letter: String,
    /// Output topics, each written partition for partition with the by-shop topic.
    pub outputs: Vec<String>,
}

/// A change the logic asks the stage to make.
pub enum StageEffect<E, O> {
    /// Write `output` to output topic `topic` (an index into [`StageTopics::outputs`]) in the
    /// partition of the by-shop record, with `event_id` as `aftercart-event-id`.
    Emit {
        topic: usize,
        key: String,
        event_id: String,
        output: O,
    },
    /// Replace (or with `None`, delete) an entity of the partition's state.
    Persist { key: String, entity: Option<Box<E>> },
}

/// The family a by-shop record came from (its [`SOURCE_HEADER`]), as one of `families`;
/// `"other"` when absent or unknown. Labels stay a bounded set.
pub fn source_family(message: &OwnedMessage, families: &[&'static str]) -> &'static str {
    let source = crate::header(message, SOURCE_HEADER);
    families
        .iter()
        .find(|f| source == Some(**f))
        .copied()
        .unwrap_or("other")
}

/// The effect type of a logic.
pub type EffectOf<L> = StageEffect<<L as ShopLogic>::Entity, <L as ShopLogic>::Output>;

/// Why a by-shop record cannot be used: a bounded metric label and a reason for the letter.
pub struct Unusable {
    pub label: &'static str,
    pub reason: String,
}

/// The effects of a batch once the logic acted on them outside Kafka ([`ShopLogic::prepare`]):
/// those to write, and outputs it could not act on, as dead letters.
pub struct Prepared<L: ShopLogic + ?Sized> {
    pub effects: Vec<(i32, EffectOf<L>)>,
    pub dead: Vec<DeadLetter>,
}

/// What [`ShopLogic::prepare`] returns: `None` when `stop` came first (nothing of the batch is
/// written and its offsets stay where they were, so the next owner reads it again).
pub type Preparing<'a, L> = Pin<Box<dyn Future<Output = Option<Prepared<L>>> + Send + 'a>>;

/// `max.poll.interval.ms` for a loop that may go `budget` without polling: the budget and a
/// minute, at least librdkafka's default (5 minutes) and at most its limit (24 hours). Past it
/// librdkafka takes the instance for hung and moves its partitions while it still writes.
pub fn max_poll_interval_ms(budget: Duration) -> String {
    (budget + Duration::from_secs(60))
        .as_millis()
        .clamp(300_000, 86_400_000)
        .to_string()
}

/// The service's rules over the state of the partitions it owns.
pub trait ShopLogic {
    type Entity: Serialize + DeserializeOwned + Send;
    /// What the service writes to its output topics.
    type Output: Serialize + Send;
    /// How an output reads back on restore.
    type Emitted: DeserializeOwned;

    /// Whether a source record of `family` matters to the service (the rest are skipped).
    fn routes(&self, family: &str, message: &OwnedMessage) -> bool;
    /// The family label of a by-shop record, for metrics.
    fn family(&self, message: &OwnedMessage) -> &'static str;
    /// Applies one by-shop record.
    fn apply(
        &mut self,
        partition: i32,
        message: &OwnedMessage,
    ) -> Result<Vec<EffectOf<Self>>, Unusable>;
    /// Timers, expiry and anything else due at `now_ms`, after each batch.
    fn tick(&mut self, now_ms: i64) -> Vec<(i32, EffectOf<Self>)>;
    fn assign(&mut self, partition: i32, entities: HashMap<String, Self::Entity>);
    fn revoke(&mut self, partition: i32);
    fn owns(&self, partition: i32) -> bool;
    /// Brings the state up to date with an output found after the checkpoint on restore.
    fn reconcile(&mut self, partition: i32, emitted: &Self::Emitted) -> Vec<EffectOf<Self>>;
    /// Called once an output is acknowledged (metrics).
    fn emitted(&self, output: &Self::Output);
    /// Refreshes the state gauges (at most once a second).
    fn gauges(&self);
    /// Called once `count` source records are acknowledged on the by-shop topic (metrics).
    fn routed(&self, _count: usize) {}
    /// How long [`ShopLogic::prepare`] may hold the loop. The consumer is not polled meanwhile,
    /// so its `max.poll.interval.ms` is raised above this ([`max_poll_interval_ms`]).
    fn prepare_budget(&self) -> Duration {
        Duration::ZERO
    }
    /// Acts on a batch's effects outside Kafka before any of them is written (the referrals
    /// service creates the discount an invite names, so no invite is published before its
    /// code works). The default writes them as they are.
    fn prepare<'a>(
        &'a mut self,
        effects: Vec<(i32, EffectOf<Self>)>,
        _stop: &'a CancellationToken,
    ) -> Preparing<'a, Self> {
        Box::pin(std::future::ready(Some(Prepared {
            effects,
            dead: Vec::new(),
        })))
    }
}

/// The output offsets a partition's state reflects, by output topic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    offsets: HashMap<String, i64>,
}

/// A source record on its way to the by-shop topic.
struct Forward {
    message: OwnedMessage,
    shop: String,
    family: &'static str,
}

type Effects<L> = Vec<(
    i32,
    StageEffect<<L as ShopLogic>::Entity, <L as ShopLogic>::Output>,
)>;

/// The Kafka clients of a loop. Closing a consumer can block for as long as the broker is away,
/// so they are always closed on a plain thread, never on the async runtime.
struct Clients {
    consumer: StreamConsumer<GroupContext>,
    producer: FutureProducer,
}

pub struct ShopStage<L: ShopLogic> {
    kafka: KafkaSettings,
    topics: StageTopics,
    shutdown_timeout: Duration,
    /// `Some` until the loop closes them.
    clients: Option<Clients>,
    logic: L,
    metrics: LoopMetrics,
    ready: Readiness,
    family_of_topic: HashMap<String, &'static str>,
    checkpoints: HashMap<i32, Checkpoint>,
    assigned_once: bool,
    last_gauges: Instant,
}

fn write_error(error: KafkaError) -> LoopError {
    LoopError::Write(error)
}

async fn delivered(delivery: DeliveryFuture) -> Result<(i32, i64), LoopError> {
    match delivery.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((error, _))) => Err(LoopError::Write(error)),
        Err(_) => Err(LoopError::Write(KafkaError::Canceled)),
    }
}

impl<L: ShopLogic> Drop for ShopStage<L> {
    fn drop(&mut self) {
        // Dropped without `run` finishing (its task was dropped): still never block the runtime.
        if let Some(clients) = self.clients.take() {
            std::thread::spawn(move || drop(clients));
        }
    }
}

impl<L: ShopLogic> ShopStage<L> {
    /// Subscribes to the sources and the by-shop topic with the range assignor, so that a
    /// by-shop partition and its changelog and output partitions stay with one instance.
    pub fn new(
        kafka: KafkaSettings,
        topics: StageTopics,
        shutdown_timeout: Duration,
        logic: L,
        metrics: LoopMetrics,
        ready: Readiness,
    ) -> Result<Self, LoopError> {
        let mut family_of_topic: HashMap<String, &'static str> =
            topics.sources.iter().cloned().collect();
        family_of_topic.insert(topics.by_shop.clone(), "by_shop");
        let lag_topics: Vec<(String, String)> = family_of_topic
            .iter()
            .map(|(t, f)| (t.clone(), f.to_string()))
            .collect();
        let watch = ClientWatch::sharing(metrics.kafka_errors.clone(), ready.clone());
        let context = GroupContext::new(metrics.lag.clone(), lag_topics, watch);
        let mut consumer_config = kafka.group_consumer_config(&topics.client, &topics.group);
        consumer_config
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", "5000")
            .set(
                "max.poll.interval.ms",
                max_poll_interval_ms(logic.prepare_budget()),
            );
        kafka.apply_overrides(&mut consumer_config);
        let consumer: StreamConsumer<GroupContext> =
            consumer_config.create_with_context(context)?;
        let mut subscribed: Vec<&str> = topics.sources.iter().map(|(t, _)| t.as_str()).collect();
        subscribed.push(&topics.by_shop);
        consumer.subscribe(&subscribed)?;
        let producer = build_output_producer(&kafka, &topics.client)?;
        Ok(ShopStage {
            kafka,
            topics,
            shutdown_timeout,
            clients: Some(Clients { consumer, producer }),
            logic,
            metrics,
            ready,
            family_of_topic,
            checkpoints: HashMap::new(),
            assigned_once: false,
            last_gauges: Instant::now(),
        })
    }

    pub fn logic(&self) -> &L {
        &self.logic
    }

    fn clients(&self) -> &Clients {
        self.clients
            .as_ref()
            .expect("clients are open until run ends")
    }

    /// Runs until `stop`; returns after a final commit and producer flush.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), LoopError> {
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
        let deadline = self.shutdown_timeout.max(Duration::from_secs(1));
        if !close_off_runtime(clients.consumer, clients.producer, (), deadline).await {
            tracing::warn!("Kafka clients did not close before the shutdown deadline.");
        }
        result
    }

    async fn step(&mut self, stop: &CancellationToken) -> Result<(), LoopError> {
        self.handle_rebalances().await?;
        let batch = receive_batch(&self.clients().consumer, stop, BATCH).await;
        // A rebalance heard while receiving is handled before any record is applied.
        self.handle_rebalances().await?;

        let mut effects = Vec::new();
        let mut forwards = Vec::new();
        let mut dead = Vec::new();
        let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
        for message in batch {
            let partition = message.partition();
            if message.topic() == self.topics.by_shop {
                if !self.logic.owns(partition) {
                    continue; // revoked meanwhile: the new owner will read it
                }
                offsets.insert((message.topic().to_string(), partition), message.offset());
                match self.apply(&message) {
                    Ok(applied) => effects.extend(applied.into_iter().map(|e| (partition, e))),
                    Err(reason) => dead.push(DeadLetter { message, reason }),
                }
                continue;
            }
            offsets.insert((message.topic().to_string(), partition), message.offset());
            let family = self
                .family_of_topic
                .get(message.topic())
                .copied()
                .unwrap_or("other");
            if !self.logic.routes(family, &message) {
                continue;
            }
            let shop = shop_of(&message);
            if shop.is_empty() {
                self.metrics.failed(family, "no_shop");
                dead.push(DeadLetter {
                    message,
                    reason: "no shop domain in headers or key".to_string(),
                });
            } else {
                forwards.push(Forward {
                    message,
                    shop,
                    family,
                });
            }
        }
        effects.extend(self.logic.tick(now_ms()));
        let Some(prepared) = self.logic.prepare(effects, stop).await else {
            return Ok(()); // stopped while acting: nothing of this batch is written
        };
        dead.extend(prepared.dead);
        self.flush(prepared.effects, forwards, dead, offsets)
            .await?;
        if self.last_gauges.elapsed() >= GAUGES_EVERY {
            self.last_gauges = Instant::now();
            self.logic.gauges();
        }
        Ok(())
    }

    /// Applies one by-shop record; `Err` is the reason to dead-letter it.
    fn apply(&mut self, message: &OwnedMessage) -> Result<Vec<EffectOf<L>>, String> {
        let family = self.logic.family(message);
        match self.logic.apply(message.partition(), message) {
            Ok(effects) => {
                self.metrics.processed(family);
                Ok(effects)
            }
            Err(unusable) => {
                self.metrics.failed(family, unusable.label);
                tracing::warn!(
                    topic = family,
                    partition = message.partition(),
                    offset = message.offset(),
                    reason = unusable.label,
                    "Dead-lettering a record that cannot be used."
                );
                Err(unusable.reason)
            }
        }
    }

    async fn handle_rebalances(&mut self) -> Result<(), LoopError> {
        let events = self.clients().consumer.context().take_events();
        for event in events {
            let partitions = event.partitions(Some(&self.topics.by_shop));
            match event {
                RebalanceEvent::Revoked(_) => {
                    for partition in partitions {
                        self.logic.revoke(partition);
                        self.checkpoints.remove(&partition);
                    }
                }
                RebalanceEvent::Assigned(_) => {
                    for partition in partitions {
                        if !self.logic.owns(partition) {
                            self.restore(partition).await?;
                        }
                    }
                    self.assigned_once = true;
                }
            }
        }
        let owned = (0..self.kafka.partitions.max(1))
            .filter(|p| self.logic.owns(*p))
            .count();
        self.metrics.partitions(owned);
        if self.assigned_once {
            self.ready.set_ready(true);
        }
        Ok(())
    }

    /// Restores a partition: its entities from the changelog, then the outputs written after
    /// the last checkpoint (a crash between output and changelog) so none is emitted twice.
    async fn restore(&mut self, partition: i32) -> Result<(), LoopError> {
        let started = Instant::now();
        let changelog = self.read(&self.topics.state, partition, None).await?;
        let records = changelog.len();
        let mut entities: HashMap<String, L::Entity> = HashMap::new();
        let mut checkpoint = Checkpoint::default();
        for record in changelog {
            let Some(key) = record.key.and_then(|k| String::from_utf8(k).ok()) else {
                continue;
            };
            match (key.as_str(), record.value) {
                (CHECKPOINT_KEY, Some(value)) => {
                    checkpoint = serde_json::from_slice(&value).unwrap_or_default();
                }
                (_, None) => {
                    entities.remove(&key);
                }
                (_, Some(value)) => match serde_json::from_slice::<L::Entity>(&value) {
                    Ok(entity) => {
                        entities.insert(key, entity);
                    }
                    Err(error) => {
                        tracing::error!(partition, %error, "Skipping a changelog record that does not decode.")
                    }
                },
            }
        }
        let entity_count = entities.len();
        self.logic.assign(partition, entities);
        let mut effects = Vec::new();
        for topic in self.topics.outputs.clone() {
            let last = checkpoint.offsets.get(&topic).copied();
            for record in self.read(&topic, partition, last.map(|o| o + 1)).await? {
                let Some(value) = record.value else { continue };
                if let Ok(emitted) = serde_json::from_slice::<L::Emitted>(&value) {
                    effects.extend(
                        self.logic
                            .reconcile(partition, &emitted)
                            .into_iter()
                            .map(|e| (partition, e)),
                    );
                }
            }
        }
        self.checkpoints.insert(partition, checkpoint);
        self.flush(effects, Vec::new(), Vec::new(), HashMap::new())
            .await?;
        self.metrics.restored(records, started.elapsed());
        tracing::info!(partition, entities = entity_count, took = ?started.elapsed(), "Restored partition state.");
        Ok(())
    }

    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
    ) -> Result<Vec<StoredRecord>, LoopError> {
        let settings = self.kafka.clone();
        let topic = topic.to_string();
        let client = format!("{}-restore", self.topics.client);
        Ok(tokio::task::spawn_blocking(move || {
            read_partition(&settings, &client, &topic, partition, from)
        })
        .await
        .expect("restore task does not panic")?)
    }

    /// Writes effects in the crash-safe order: outputs, forwards and dead letters
    /// (acknowledged), then entities and checkpoints (acknowledged), then the input offsets.
    async fn flush(
        &mut self,
        effects: Effects<L>,
        forwards: Vec<Forward>,
        dead: Vec<DeadLetter>,
        offsets: HashMap<(String, i32), i64>,
    ) -> Result<(), LoopError> {
        let producer = self.clients().producer.clone();
        let mut outputs = Vec::new();
        let mut entities: HashMap<(i32, String), Option<Box<L::Entity>>> = HashMap::new();
        for (partition, effect) in effects {
            match effect {
                StageEffect::Emit {
                    topic,
                    key,
                    event_id,
                    output,
                } => outputs.push((partition, topic, key, event_id, output)),
                StageEffect::Persist { key, entity } => {
                    entities.insert((partition, key), entity);
                }
            }
        }
        let mut emitted = Vec::new();
        for (partition, topic, key, event_id, output) in &outputs {
            let payload = serde_json::to_vec(output).expect("outputs serialise");
            let headers = OwnedHeaders::new().insert(Header {
                key: "aftercart-event-id",
                value: Some(event_id.as_str()),
            });
            let record = FutureRecord::to(&self.topics.outputs[*topic])
                .partition(*partition)
                .key(key.as_str())
                .payload(&payload)
                .headers(headers);
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| write_error(e))?;
            emitted.push((*topic, delivery));
        }
        let mut acks = Vec::new();
        for forward in &forwards {
            acks.push(self.forward(&producer, forward)?);
        }
        for letter in &dead {
            let record = dead_letter_record(&self.topics.dead_letter, letter);
            acks.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| write_error(e))?,
            );
        }
        for (topic, delivery) in emitted {
            let (partition, offset) = delivered(delivery).await?;
            let name = &self.topics.outputs[topic];
            let checkpoint = self.checkpoints.entry(partition).or_default();
            let slot = checkpoint.offsets.entry(name.clone()).or_insert(offset);
            *slot = (*slot).max(offset);
        }
        for ack in acks {
            delivered(ack).await?;
        }
        self.logic.routed(forwards.len());
        for _ in &dead {
            self.metrics.dead_lettered();
        }
        for (_, _, _, _, output) in &outputs {
            self.logic.emitted(output);
        }

        let mut touched: Vec<i32> = outputs.iter().map(|(p, ..)| *p).collect();
        touched.sort_unstable();
        touched.dedup();
        let mut payloads: Vec<(i32, String, Option<Vec<u8>>)> = entities
            .into_iter()
            .map(|((partition, key), entity)| {
                let value = entity.map(|e| serde_json::to_vec(&e).expect("entities serialise"));
                (partition, key, value)
            })
            .collect();
        for partition in touched {
            let checkpoint = self
                .checkpoints
                .get(&partition)
                .cloned()
                .unwrap_or_default();
            let value = serde_json::to_vec(&checkpoint).expect("json");
            payloads.push((partition, CHECKPOINT_KEY.to_string(), Some(value)));
        }
        let mut writes = Vec::new();
        for (partition, key, value) in &payloads {
            let mut record = FutureRecord::<str, [u8]>::to(&self.topics.state)
                .partition(*partition)
                .key(key.as_str());
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            writes.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| write_error(e))?,
            );
        }
        for write in writes {
            delivered(write).await?;
        }
        self.metrics.changelog_written(payloads.len());

        for ((topic, partition), offset) in offsets {
            let owned = topic != self.topics.by_shop || self.logic.owns(partition);
            if owned {
                self.clients()
                    .consumer
                    .store_offset(&topic, partition, offset)?;
            }
        }
        Ok(())
    }

    /// Copies a source record to the by-shop topic keyed by shop: the exact bytes, its headers
    /// plus [`SOURCE_HEADER`], and its receive time (timers count from it).
    fn forward(
        &self,
        producer: &FutureProducer,
        forward: &Forward,
    ) -> Result<DeliveryFuture, LoopError> {
        let message = &forward.message;
        let headers = message
            .headers()
            .cloned()
            .unwrap_or_else(|| OwnedHeaders::new_with_capacity(1))
            .insert(Header {
                key: SOURCE_HEADER,
                value: Some(forward.family),
            });
        let mut record = FutureRecord::<str, [u8]>::to(&self.topics.by_shop)
            .key(forward.shop.as_str())
            .headers(headers);
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) = message.timestamp() {
            record = record.timestamp(ms);
        }
        producer
            .send_result(record)
            .map_err(|(e, _)| write_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_interval_covers_the_prepare_budget() {
        assert_eq!(max_poll_interval_ms(Duration::ZERO), "300000");
        // The referrals default: 15 minutes of Shopify retries and a 10 s last request.
        assert_eq!(max_poll_interval_ms(Duration::from_secs(910)), "970000");
        assert_eq!(
            max_poll_interval_ms(Duration::from_secs(48 * 3600)),
            "86400000"
        );
    }
}

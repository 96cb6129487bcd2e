//! The poll loop. Two stages share one consumer: source records (orders, customers,
//! compliance) are routed to the by-shop topic keyed by shop, and by-shop records are applied
//! to the engine. Effects are flushed in the order that makes a crash safe: outputs, then the
//! changelog, then offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aftercart_kafka::producer::build_output_producer;
use aftercart_kafka::{
    close_off_runtime, dead_letter_record, header, read_partition, receive_batch, shop_of,
    DeadLetter, GroupContext, LoopError, RebalanceEvent, TopicNames,
};
use aftercart_runtime::health::Readiness;
use aftercart_shopify::time::now_ms;
use aftercart_shopify::Family;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::config::ReferralsConfig;
use crate::domain::engine::{Effect, Engine};
use crate::domain::event::{EmittedEvent, Output};
use crate::domain::input::{decode_input, is_relevant};
use crate::domain::state::Entity;
use crate::metrics::ReferralsMetrics;

/// Changelog key of a partition's checkpoint: the last output offsets its state reflects.
pub const CHECKPOINT_KEY: &str = "aftercart:checkpoint";
/// Client and group id of the reads that restore a partition.
const RESTORE_CLIENT: &str = "aftercart-referrals-restore";
/// Most records taken per batch.
const BATCH: usize = 2000;
/// How often the state-size gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// How often settled orders are expired.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// The output offsets a partition's state reflects.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    invites_offset: Option<i64>,
    rewards_offset: Option<i64>,
}

/// A source record on its way to the by-shop topic.
struct Forward {
    message: OwnedMessage,
    shop: String,
}

/// The Kafka clients of a loop. Closing a consumer can block for as long as the broker is away,
/// so they are always closed on a plain thread, never on the async runtime.
struct Clients {
    consumer: StreamConsumer<GroupContext>,
    producer: FutureProducer,
}

pub struct Loop {
    config: ReferralsConfig,
    /// `Some` until the loop closes them.
    clients: Option<Clients>,
    engine: Engine,
    metrics: ReferralsMetrics,
    ready: Readiness,
    family_of_topic: HashMap<String, &'static str>,
    checkpoints: HashMap<i32, Checkpoint>,
    assigned_once: bool,
    last_expiry: Instant,
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

    /// The Shopify source topics the router reads.
    pub fn source_topics(config: &ReferralsConfig) -> Vec<(String, &'static str)> {
        let names = TopicNames::new(&config.kafka.topic_prefix);
        [Family::Orders, Family::Customers, Family::Compliance]
            .iter()
            .map(|f| (names.family(*f), f.as_str()))
            .collect()
    }

    pub fn new(
        config: ReferralsConfig,
        metrics: ReferralsMetrics,
        ready: Readiness,
    ) -> Result<Loop, LoopError> {
        let sources = Self::source_topics(&config);
        let mut family_of_topic: HashMap<String, &'static str> = sources.iter().cloned().collect();
        family_of_topic.insert(config.by_shop_topic.clone(), "by_shop");
        let mut lag_topics: Vec<(String, String)> = sources
            .iter()
            .map(|(t, f)| (t.clone(), f.to_string()))
            .collect();
        lag_topics.push((config.by_shop_topic.clone(), "by_shop".to_string()));
        let context = GroupContext::new(metrics.consumer.lag.clone(), lag_topics);
        let mut consumer_config = config
            .kafka
            .group_consumer_config("aftercart-referrals", &config.group);
        consumer_config
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", "5000");
        config.kafka.apply_overrides(&mut consumer_config);
        let consumer: StreamConsumer<GroupContext> =
            consumer_config.create_with_context(context)?;
        let mut topics: Vec<&str> = sources.iter().map(|(t, _)| t.as_str()).collect();
        topics.push(&config.by_shop_topic);
        consumer.subscribe(&topics)?;

        let producer = build_output_producer(&config.kafka, "aftercart-referrals")?;
        let engine = Engine::new(config.rules.clone());
        Ok(Loop {
            config,
            clients: Some(Clients { consumer, producer }),
            engine,
            metrics,
            ready,
            family_of_topic,
            checkpoints: HashMap::new(),
            assigned_once: false,
            last_expiry: Instant::now(),
            last_gauges: Instant::now(),
        })
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
        let deadline = self.config.shutdown_timeout.max(Duration::from_secs(1));
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
            let family = self
                .family_of_topic
                .get(message.topic())
                .copied()
                .unwrap_or("other");
            let partition = message.partition();
            if message.topic() == self.config.by_shop_topic {
                if !self.engine.owns(partition) {
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
            let relevant = header(&message, "shopify-topic").is_some_and(is_relevant);
            if !relevant {
                continue;
            }
            let shop = shop_of(&message);
            if shop.is_empty() {
                self.metrics.consumer.failed(family, "no_shop");
                dead.push(DeadLetter {
                    message,
                    reason: "no shop domain in headers or key".to_string(),
                });
            } else {
                forwards.push(Forward { message, shop });
            }
        }
        let now = now_ms();
        effects.extend(self.engine.fire_due(now));
        if self.last_expiry.elapsed() >= EXPIRY_EVERY {
            self.last_expiry = Instant::now();
            effects.extend(self.engine.expire(now));
        }
        self.flush(effects, forwards, dead, offsets).await?;
        // Counting rewards in review walks every order: refresh the gauges once a second, not
        // once a batch.
        if self.last_gauges.elapsed() >= GAUGES_EVERY {
            self.last_gauges = Instant::now();
            self.metrics.state(self.engine.sizes());
        }
        Ok(())
    }

    /// Applies one by-shop record; `Err` is the reason to dead-letter it.
    fn apply(&mut self, message: &OwnedMessage) -> Result<Vec<Effect>, String> {
        let topic = header(message, "shopify-topic");
        let family = match topic.and_then(|t| t.split('/').next()).map(str::trim) {
            Some(f) if f.eq_ignore_ascii_case("orders") || f.eq_ignore_ascii_case("refunds") => {
                "orders"
            }
            Some(f) if f.to_ascii_lowercase().starts_with("customers") => "customers",
            Some(_) => "compliance",
            None => "other",
        };
        match decode_input(topic, message.payload().unwrap_or_default()) {
            Ok(input) => {
                self.metrics.consumer.processed(family);
                let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                let shop = shop_of(message);
                Ok(self.engine.apply(message.partition(), &shop, input, at))
            }
            Err(error) => {
                self.metrics.consumer.failed(family, error.as_label());
                tracing::warn!(
                    topic = family,
                    partition = message.partition(),
                    offset = message.offset(),
                    reason = error.as_label(),
                    "Dead-lettering a record that cannot be used."
                );
                Err(error.to_string())
            }
        }
    }

    async fn handle_rebalances(&mut self) -> Result<(), LoopError> {
        let events = self.clients().consumer.context().take_events();
        for event in events {
            let partitions = event.partitions(Some(&self.config.by_shop_topic));
            match event {
                RebalanceEvent::Revoked(_) => {
                    for partition in partitions {
                        self.engine.revoke(partition);
                        self.checkpoints.remove(&partition);
                    }
                }
                RebalanceEvent::Assigned(_) => {
                    for partition in partitions {
                        if !self.engine.owns(partition) {
                            self.restore(partition).await?;
                        }
                    }
                    self.assigned_once = true;
                }
            }
        }
        let owned = (0..self.config.kafka.partitions.max(1))
            .filter(|p| self.engine.owns(*p))
            .count();
        self.metrics.consumer.partitions(owned);
        if self.assigned_once {
            self.ready.set_ready(true);
        }
        Ok(())
    }

    /// Restores a partition: its entities from the changelog, then the events emitted after
    /// the last checkpoint (a crash between output and changelog) so none is emitted twice.
    async fn restore(&mut self, partition: i32) -> Result<(), LoopError> {
        let started = Instant::now();
        let changelog = self
            .read(&self.config.state_topic.clone(), partition, None)
            .await?;
        let records = changelog.len();
        let mut entities: HashMap<String, Entity> = HashMap::new();
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
                (_, Some(value)) => match serde_json::from_slice::<Entity>(&value) {
                    Ok(entity) => {
                        entities.insert(key, entity);
                    }
                    Err(error) => {
                        tracing::error!(partition, %error, "Skipping a changelog record that does not decode.")
                    }
                },
            }
        }
        self.engine.assign(partition, entities);
        self.checkpoints.insert(partition, checkpoint);
        let mut effects = Vec::new();
        for (topic, last) in [
            (self.config.invites_topic.clone(), checkpoint.invites_offset),
            (self.config.rewards_topic.clone(), checkpoint.rewards_offset),
        ] {
            for record in self.read(&topic, partition, last.map(|o| o + 1)).await? {
                let Some(value) = record.value else { continue };
                if let Ok(event) = serde_json::from_slice::<EmittedEvent>(&value) {
                    effects.extend(
                        self.engine
                            .reconcile(partition, &event)
                            .into_iter()
                            .map(|e| (partition, e)),
                    );
                }
            }
        }
        self.flush(effects, Vec::new(), Vec::new(), HashMap::new())
            .await?;
        self.metrics.consumer.restored(records, started.elapsed());
        let sizes = self
            .engine
            .partition(partition)
            .map_or((0, 0), |p| (p.customers(), p.orders()));
        tracing::info!(partition, customers = sizes.0, orders = sizes.1, took = ?started.elapsed(), "Restored partition state.");
        Ok(())
    }

    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
    ) -> Result<Vec<aftercart_kafka::StoredRecord>, LoopError> {
        let settings = self.config.kafka.clone();
        let topic = topic.to_string();
        Ok(tokio::task::spawn_blocking(move || {
            read_partition(&settings, RESTORE_CLIENT, &topic, partition, from)
        })
        .await
        .expect("restore task does not panic")?)
    }

    /// Writes effects in the crash-safe order: outputs, forwards and dead letters
    /// (acknowledged), then entities and checkpoints (acknowledged), then the input offsets.
    async fn flush(
        &mut self,
        effects: Vec<(i32, Effect)>,
        forwards: Vec<Forward>,
        dead: Vec<DeadLetter>,
        offsets: HashMap<(String, i32), i64>,
    ) -> Result<(), LoopError> {
        let producer = self.clients().producer.clone();
        let mut outputs = Vec::new();
        let mut entities: HashMap<(i32, String), Option<Box<Entity>>> = HashMap::new();
        for (partition, effect) in effects {
            match effect {
                Effect::Emit { key, output } => outputs.push((partition, key, output)),
                Effect::Persist { key, entity } => {
                    entities.insert((partition, key), entity);
                }
                Effect::Count(counted) => self.metrics.counted(counted),
            }
        }
        let mut emitted = Vec::new();
        for (partition, key, output) in &outputs {
            let (topic, payload) = match output {
                Output::Invite(event) => (&self.config.invites_topic, serde_json::to_vec(event)),
                Output::Reward(event) => (&self.config.rewards_topic, serde_json::to_vec(event)),
            };
            let payload = payload.expect("events serialise");
            let headers = OwnedHeaders::new().insert(Header {
                key: "aftercart-event-id",
                value: Some(output.event_id()),
            });
            let record = FutureRecord::to(topic)
                .partition(*partition)
                .key(key.as_str())
                .payload(&payload)
                .headers(headers);
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| write_error(e))?;
            emitted.push((matches!(output, Output::Invite(_)), delivery));
        }
        let mut acks = Vec::new();
        for forward in &forwards {
            let message = &forward.message;
            let mut record = FutureRecord::<str, [u8]>::to(&self.config.by_shop_topic)
                .key(forward.shop.as_str());
            if let Some(headers) = message.headers() {
                record = record.headers(headers.clone());
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            // The receive time travels with the fact: timers count from it.
            if let Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) = message.timestamp() {
                record = record.timestamp(ms);
            }
            acks.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| write_error(e))?,
            );
        }
        for letter in &dead {
            let record = dead_letter_record(&self.config.dead_letter_topic, letter);
            acks.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| write_error(e))?,
            );
        }
        for (invite, delivery) in emitted {
            let (partition, offset) = delivered(delivery).await?;
            let checkpoint = self.checkpoints.entry(partition).or_default();
            let slot = if invite {
                &mut checkpoint.invites_offset
            } else {
                &mut checkpoint.rewards_offset
            };
            *slot = Some(slot.map_or(offset, |o| o.max(offset)));
        }
        for ack in acks {
            delivered(ack).await?;
        }
        self.metrics.routed(forwards.len());
        for _ in &dead {
            self.metrics.consumer.dead_lettered();
        }
        for (_, _, output) in &outputs {
            match output {
                Output::Invite(_) => self.metrics.invited(),
                Output::Reward(event) => self
                    .metrics
                    .rewarded(&event.event_type, event.reason.as_deref()),
            }
        }

        let mut touched: Vec<i32> = outputs.iter().map(|(p, _, _)| *p).collect();
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
                .copied()
                .unwrap_or_default();
            let value = serde_json::to_vec(&checkpoint).expect("json");
            payloads.push((partition, CHECKPOINT_KEY.to_string(), Some(value)));
        }
        let mut writes = Vec::new();
        for (partition, key, value) in &payloads {
            let mut record = FutureRecord::<str, [u8]>::to(&self.config.state_topic)
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
        self.metrics.consumer.changelog_written(payloads.len());

        for ((topic, partition), offset) in offsets {
            let owned = topic != self.config.by_shop_topic || self.engine.owns(partition);
            if owned {
                self.clients()
                    .consumer
                    .store_offset(&topic, partition, offset)?;
            }
        }
        Ok(())
    }
}

//! The stateful stage every consumer service runs (abandonment, referrals, audiences): input
//! records go through the service's pure logic ([`StageLogic`]) and come out as outputs, a
//! compacted state changelog and input offsets, flushed in the order that makes a crash safe:
//! outputs, forwards and dead letters (acknowledged), then the changelog with a checkpoint of
//! the output offsets (acknowledged), then the offsets of the input partitions still owned.
//! On assignment a partition's state is restored from the changelog and the outputs written
//! after its checkpoint are reconciled, so none is emitted twice. A member that may have been
//! expelled (frozen, or told its assignment is lost) writes nothing more: it drops its state
//! and rejoins.

mod asks;
mod checkpoint;
mod global;
mod horizon;
mod kept;
mod ownership;
mod restore;
mod sources;

use crate::events::{MemberFenced, RecordUnusable, RecordWithoutShop};
use aftercart_runtime::Event as _;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use aftercart_runtime::health::Readiness;
use aftercart_shopify::time::now_ms;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::{RDKafkaConfRes, RDKafkaErrorCode};
use rdkafka::Offset;
use rdkafka::Timestamp;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use asks::{Ask, Asks};
pub use checkpoint::{Checkpoint, CHECKPOINT_KEY};
use global::GlobalTables;
use horizon::{Horizons, Pair};
use kept::{ends_of, Ends, KeptStates, LeftEnds};
pub use ownership::{store_owned, Assignment, Fence, LatestOffsets, Tripped};
pub use restore::{restore_partition, ChangelogState, RestoreSource, Restored};
use sources::SourcePartitions;

use crate::producer::{build_output_producer, OUTPUT_LINGER};
use crate::{
    close_off_runtime, dead_letter_record, receive_batch_within, shop_of, ClientKind, ClientWatch,
    DeadLetter, GroupContext, KafkaSettings, LoopError, LoopMetrics, RebalanceEvent, IDLE_WAIT,
};

/// Header the router adds to a forwarded record: the family of the topic it came from.
pub const SOURCE_HEADER: &str = "aftercart-source";
/// Session timeout of a static member (`AFTERCART_INSTANCE_ID` set) unless
/// `session.timeout.ms` is given: a restarted pod takes its partitions back within it, without
/// a rebalance, so it may be long.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Session timeout of a dynamic member unless `session.timeout.ms` is given. A dynamic member
/// restarted after a crash joins as a new member, and the group holds the old member's
/// partitions until its session ends: this is how long a crash stops them, so it is the
/// shortest Apache Kafka accepts by default (`group.min.session.timeout.ms`, 6 s).
pub const DYNAMIC_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Heartbeat interval unless `heartbeat.interval.ms` is given (and at most a third of the
/// session, [`heartbeat_interval`]): a member learns of a rebalance at its next heartbeat, and
/// the group waits for every member to rejoin, so this bounds how long one slow-to-hear member
/// holds up everyone's partitions (librdkafka's 3 s default).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Most records taken per batch.
const BATCH: usize = 2000;
/// How often the state gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// Partitions restored at once (each read opens its own clients and holds its state).
const RESTORE_CONCURRENCY: usize = 4;

/// How a stage's state is keyed by its inputs.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// State partition N is partition N of every input topic (all co-partitioned).
    ByPartition(Vec<(String, &'static str)>),
    /// Source records are routed to `by_shop`, keyed by shop; state partition N is by-shop
    /// partition N. Sources are given with the family label of each.
    ByShop {
        sources: Vec<(String, &'static str)>,
        by_shop: String,
    },
}

/// Where a stage reads and writes, and who it is.
#[derive(Debug, Clone)]
pub struct StageTopics {
    /// Client id prefix (`aftercart-referrals`).
    pub client: String,
    pub group: String,
    pub inputs: Inputs,
    /// Topics every instance reads whole before it applies any input (customers, compliance).
    pub globals: Vec<(String, &'static str)>,
    /// Compacted changelog: one record per entity, plus a checkpoint per partition.
    pub state: String,
    pub dead_letter: String,
    /// Output topics, each written partition for partition with the state.
    pub outputs: Vec<String>,
}

/// A change the logic asks the stage to make.
pub enum StageEffect<E, O> {
    /// Write `output` to output topic `topic` (an index into [`StageTopics::outputs`]) in the
    /// record's state partition, with `event_id` as `aftercart-event-id`.
    Emit {
        topic: usize,
        key: String,
        event_id: String,
        output: O,
    },
    /// Replace (or with `None`, delete) an entity of the partition's state.
    Persist { key: String, entity: Option<Box<E>> },
}

/// The effect type of a logic.
pub type EffectOf<L> = StageEffect<<L as StageLogic>::Entity, <L as StageLogic>::Output>;

/// Why a record cannot be used: a bounded metric label and a reason for the letter.
pub struct Unusable {
    pub label: &'static str,
    pub reason: String,
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

/// The effects of a batch once the logic acted on them outside Kafka ([`StageLogic::prepare`]):
/// those to write, and outputs it could not act on, as dead letters.
pub struct Prepared<L: StageLogic + ?Sized> {
    pub effects: Vec<(i32, EffectOf<L>)>,
    pub dead: Vec<DeadLetter>,
    /// `stop` came while the logic acted, after it did what must not be done twice (a store
    /// credit): `effects` holds only the outputs acted on so far (and `dead` any refusal that
    /// must be written all the same). Those are written and acknowledged, nothing else of the
    /// batch (no entities, forwards, checkpoint or offsets): the next owner reads the batch
    /// again, and its restore finds those outputs after the checkpoint and reconciles them
    /// instead of acting again. Only with `stop` cancelled: the member ends after it (without
    /// the stop the loop fails with [`LoopError::StoppedWithoutStop`] rather than go on).
    pub stopped: bool,
}

/// What [`StageLogic::prepare`] returns: `None` when `stop` came before the logic did anything
/// that must not be done twice (nothing of the batch is written and its offsets stay where
/// they were, so the next owner reads it again); see [`Prepared::stopped`] for the rest.
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

/// A service's rules over the state of the partitions it owns: pure, no I/O, except what
/// [`StageLogic::prepare`] does before a batch's outputs are written.
pub trait StageLogic {
    type Entity: Serialize + DeserializeOwned + Send + 'static;
    /// What the service writes to its output topics.
    type Output: Serialize + Send;
    /// How an output reads back on restore.
    type Emitted: DeserializeOwned + Send + 'static;

    /// By shop: whether a source record of `family` matters to the service (the rest are
    /// skipped, not routed).
    fn routes(&self, _family: &'static str, _message: &OwnedMessage) -> bool {
        true
    }
    /// Applies one input record of `family` in state partition `partition`.
    fn apply(
        &mut self,
        partition: i32,
        family: &'static str,
        message: &OwnedMessage,
    ) -> Result<Vec<EffectOf<Self>>, Unusable>;
    /// Applies one global-table record to the partitions owned here.
    fn apply_global(
        &mut self,
        _family: &'static str,
        _message: &OwnedMessage,
    ) -> Result<Vec<(i32, EffectOf<Self>)>, Unusable> {
        Ok(Vec::new())
    }
    /// When the next timer is due (ms since the epoch): the stage waits no longer for input.
    fn next_due(&self) -> Option<i64> {
        None
    }
    /// Timers, expiry and anything else due at `now_ms`, after each batch.
    fn tick(&mut self, now_ms: i64) -> Vec<(i32, EffectOf<Self>)>;
    /// Takes a restored partition; may ask for changes (e.g. forget redacted entities).
    fn assign(
        &mut self,
        partition: i32,
        entities: HashMap<String, Self::Entity>,
    ) -> Vec<EffectOf<Self>>;
    fn revoke(&mut self, partition: i32);
    /// Like [`StageLogic::revoke`], but hands the partition's entities back, so that the stage
    /// can keep them in case the rebalance returns the partition unchanged (no restore). The
    /// default drops them: the partition is restored from the changelog when it comes back.
    fn release(&mut self, partition: i32) -> Option<HashMap<String, Self::Entity>> {
        self.revoke(partition);
        None
    }
    fn owns(&self, partition: i32) -> bool;
    /// Brings the state up to date with an output found after the checkpoint on restore.
    fn reconcile(&mut self, partition: i32, emitted: &Self::Emitted) -> Vec<EffectOf<Self>>;
    /// Called once an output is acknowledged (metrics).
    fn emitted(&self, output: &Self::Output);
    /// Refreshes the state gauges (at most once a second).
    fn gauges(&self);
    /// How long [`StageLogic::prepare`] may hold the loop. The consumer is not polled meanwhile,
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
            stopped: false,
        })))
    }
}

/// Effects by partition turned into stage effects, each by `staged` (into none, one or more).
pub fn staged_at<E, S, I: IntoIterator<Item = S>>(
    effects: Vec<(i32, E)>,
    staged: impl Fn(E) -> I,
) -> Vec<(i32, S)> {
    let staged = &staged;
    effects
        .into_iter()
        .flat_map(|(partition, effect)| staged(effect).into_iter().map(move |s| (partition, s)))
        .collect()
}

/// How long a step waits for a first record: never past the next timer, so an idle stage
/// fires it on time rather than up to [`IDLE_WAIT`] late.
fn first_wait(next_due_ms: Option<i64>, now_ms: i64) -> Duration {
    match next_due_ms {
        None => IDLE_WAIT,
        Some(due) => {
            let left = u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0);
            Duration::from_millis(left).min(IDLE_WAIT)
        }
    }
}

/// The session timeout the group member runs with: the operator's, else
/// [`SESSION_TIMEOUT`] for a static member and [`DYNAMIC_SESSION_TIMEOUT`] for a dynamic one.
/// A member is static when it has a `group.instance.id`: from `AFTERCART_INSTANCE_ID`, or from
/// the operator's Kafka properties (which win over it).
fn session_timeout(kafka: &KafkaSettings) -> Duration {
    let named = match kafka.properties.get("group.instance.id") {
        Some(id) => !id.trim().is_empty(),
        None => kafka.instance_id.is_some(),
    };
    let default = if named {
        SESSION_TIMEOUT
    } else {
        DYNAMIC_SESSION_TIMEOUT
    };
    kafka
        .properties
        .get("session.timeout.ms")
        .and_then(|value| value.parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// The group consumer's settings: the range assignor, the session and heartbeat chosen for the
/// membership, a poll interval covering `prepare_budget`, then the operator's overrides.
fn group_config(
    kafka: &KafkaSettings,
    topics: &StageTopics,
    prepare_budget: Duration,
) -> rdkafka::ClientConfig {
    let mut config = kafka.group_consumer_config(&topics.client, &topics.group);
    config
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", "5000")
        .set(
            "session.timeout.ms",
            session_timeout(kafka).as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            heartbeat_interval(kafka).as_millis().to_string(),
        )
        .set("max.poll.interval.ms", max_poll_interval_ms(prepare_budget));
    if let Some(instance) = &kafka.instance_id {
        config.set("group.instance.id", instance);
    }
    kafka.apply_overrides(&mut config, ClientKind::Consumer);
    config
}

/// The heartbeat interval the member runs with: the operator's, else
/// [`HEARTBEAT_INTERVAL`], but never more than a third of the session (Kafka's advice), so a
/// short session an operator chose (Tansu and the mock cluster accept under Apache Kafka's 6 s
/// minimum) still holds three heartbeats and one late one does not expel the member.
fn heartbeat_interval(kafka: &KafkaSettings) -> Duration {
    let chosen = HEARTBEAT_INTERVAL
        .min(session_timeout(kafka) / 3)
        .max(Duration::from_millis(1));
    kafka
        .properties
        .get("heartbeat.interval.ms")
        .and_then(|value| value.parse::<u64>().ok())
        .map_or(chosen, Duration::from_millis)
}

/// The producer's `message.timeout.ms`: the session less a heartbeat. A frozen member is
/// expelled no sooner than a session after its last heartbeat, and thawed, librdkafka drops
/// expired records before it sends again: none lands after the next owner's restore.
fn delivery_timeout(kafka: &KafkaSettings) -> Duration {
    session_timeout(kafka)
        .saturating_sub(heartbeat_interval(kafka))
        .max(Duration::from_millis(1))
}

/// [`delivery_timeout`], refused by name when the operator's heartbeat leaves it no longer
/// than the producer's linger (librdkafka would refuse the producer, naming settings the
/// operator never gave).
fn checked_delivery(kafka: &KafkaSettings) -> Result<Duration, LoopError> {
    let delivery = delivery_timeout(kafka);
    if delivery > OUTPUT_LINGER {
        return Ok(delivery);
    }
    let (session, heartbeat) = (session_timeout(kafka), heartbeat_interval(kafka));
    Err(LoopError::Kafka(KafkaError::ClientConfig(
        RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
        format!(
            "heartbeat.interval.ms must be less than session.timeout.ms ({} ms) by more than \
             {} ms: the stage's producer gives up on a write after the session less a heartbeat",
            session.as_millis(),
            OUTPUT_LINGER.as_millis()
        ),
        "heartbeat.interval.ms".into(),
        heartbeat.as_millis().to_string(),
    )))
}

/// A source record on its way to the by-shop topic.
struct Forward {
    message: OwnedMessage,
    shop: String,
    family: &'static str,
}

/// What one batch asks to be written.
struct Work<L: StageLogic> {
    effects: Vec<(i32, EffectOf<L>)>,
    forwards: Vec<Forward>,
    dead: Vec<DeadLetter>,
    offsets: LatestOffsets,
}

impl<L: StageLogic> Work<L> {
    fn of(effects: Vec<(i32, EffectOf<L>)>) -> Self {
        Work {
            effects,
            forwards: Vec::new(),
            dead: Vec::new(),
            offsets: LatestOffsets::default(),
        }
    }
}

/// The Kafka clients of a stage. Closing a consumer can block for as long as the broker is
/// away, so they are always closed on a plain thread, never on the async runtime.
struct Clients {
    consumer: StreamConsumer<GroupContext>,
    producer: FutureProducer,
}

pub struct Stage<L: StageLogic> {
    kafka: KafkaSettings,
    topics: StageTopics,
    /// Every topic the group consumer subscribes to.
    subscribed: Vec<String>,
    shutdown_timeout: Duration,
    /// `Some` until the stage closes them.
    clients: Option<Clients>,
    globals: Option<GlobalTables>,
    logic: L,
    metrics: LoopMetrics,
    ready: Readiness,
    family_of_topic: HashMap<String, &'static str>,
    /// The family labels by-shop records can carry.
    families: Vec<&'static str>,
    checkpoints: HashMap<i32, Checkpoint>,
    /// Revoked partitions' state, until the next assignment says whether it comes back.
    kept: KeptStates<L::Entity>,
    /// Where this member left the changelog and output partitions of those it owns.
    left: LeftEnds,
    assignment: Assignment,
    /// How far timers may run: not past records of held input partitions not yet read.
    horizons: Horizons,
    /// By-shop stages: every partition of the source topics (whoever routes it); timers wait
    /// for them to be routed too. Empty for the rest.
    sources: SourcePartitions,
    /// Where held partitions end, asked off the loop.
    asks: Asks,
    fence: Fence,
    assigned_once: bool,
    /// Resets so far ([`Stage::reset`]).
    resets: u64,
    /// When the stage was built (subscribed): how long the group took shows in the logs.
    started: Instant,
    /// Whether an input record of an assigned partition has been taken (applied or routed)
    /// since the start: logged once, where a restart's resume ends.
    taken_once: bool,
    last_gauges: Instant,
    /// One buffer serves every record written: librdkafka copies a payload when it is sent.
    buffer: Vec<u8>,
}

/// The consumer's position in each assigned partition (the next offset it hands over), where
/// it has one: a local look-up, no request.
fn positions<C: ConsumerContext, K: Consumer<C>>(consumer: &K) -> HashMap<Pair, i64> {
    let Ok(list) = consumer.position() else {
        return HashMap::new();
    };
    list.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(at) => Some(((e.topic().to_string(), e.partition()), at)),
            _ => None,
        })
        .collect()
}

/// Where a restart's resume shows in the logs: timers start or stop waiting for records.
fn log_holding(holding: bool, behind_ms: Option<i64>, partitions: usize) {
    tracing::info!(
        holding,
        behind_ms,
        partitions,
        "Timers wait for input partitions with records left to read (true) or run on the wall clock again (false)."
    );
}

async fn delivered(delivery: DeliveryFuture) -> Result<(i32, i64), LoopError> {
    match delivery.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((error, _))) => Err(LoopError::Write(error)),
        Err(_) => Err(LoopError::Write(KafkaError::Canceled)),
    }
}

impl<L: StageLogic> Drop for Stage<L> {
    fn drop(&mut self) {
        // Dropped without `run` finishing (its task was dropped): still never block the runtime.
        let clients = self.clients.take();
        let globals = self.globals.take();
        if clients.is_some() || globals.is_some() {
            std::thread::spawn(move || drop((clients, globals)));
        }
    }
}

impl<L: StageLogic> Stage<L> {
    /// Subscribes with the range assignor, so that partition N of every input topic (or the
    /// by-shop topic) and its changelog and output partitions stay with one instance; with
    /// static membership when the settings name this instance. `metrics`: the service's
    /// consumer metrics (records, restores, partitions, lag).
    pub fn new(
        kafka: KafkaSettings,
        topics: StageTopics,
        shutdown_timeout: Duration,
        metrics: LoopMetrics,
        logic: L,
        ready: Readiness,
    ) -> Result<Self, LoopError> {
        // Before any client exists: a refused setting leaves nothing to close.
        let delivery = checked_delivery(&kafka)?;
        let (inputs, families) = match &topics.inputs {
            Inputs::ByPartition(inputs) => (inputs.clone(), Vec::new()),
            Inputs::ByShop { sources, by_shop } => {
                let mut inputs = sources.clone();
                inputs.push((by_shop.clone(), "by_shop"));
                (inputs, sources.iter().map(|(_, f)| *f).collect())
            }
        };
        let subscribed: Vec<String> = inputs.iter().map(|(t, _)| t.clone()).collect();
        let lag_topics = inputs
            .iter()
            .map(|(t, f)| (t.clone(), f.to_string()))
            .collect();
        let mut family_of_topic: HashMap<String, &'static str> = inputs.into_iter().collect();
        family_of_topic.extend(topics.globals.iter().cloned());
        let watch = ClientWatch::sharing(metrics.kafka_errors.clone(), ready.clone());
        let context = GroupContext::new(metrics.lag.clone(), lag_topics, watch);
        let config = group_config(&kafka, &topics, logic.prepare_budget());
        let consumer: StreamConsumer<GroupContext> = config.create_with_context(context)?;
        consumer.subscribe(&subscribed.iter().map(String::as_str).collect::<Vec<_>>())?;
        // The start of a restart's rebalance wait (the resume timeline of the fault suite).
        tracing::info!(group = %topics.group, "Joining the consumer group.");
        let globals = if topics.globals.is_empty() {
            None
        } else {
            let names = topics.globals.iter().map(|(t, _)| t.clone()).collect();
            Some(GlobalTables::new(
                &kafka,
                &topics.client,
                &topics.group,
                names,
            )?)
        };
        let producer = build_output_producer(&kafka, &topics.client, delivery)?;
        let asks = Asks::start(&kafka, &topics.client, &topics.group)?;
        let fence = Fence::new(session_timeout(&kafka));
        let sources = match &topics.inputs {
            Inputs::ByPartition(_) => SourcePartitions::default(),
            Inputs::ByShop { sources, .. } => {
                let names: Vec<String> = sources.iter().map(|(t, _)| t.clone()).collect();
                SourcePartitions::new(&kafka, &names)
            }
        };
        Ok(Stage {
            kafka,
            topics,
            subscribed,
            shutdown_timeout,
            clients: Some(Clients { consumer, producer }),
            globals,
            logic,
            metrics,
            ready,
            family_of_topic,
            families,
            checkpoints: HashMap::new(),
            kept: KeptStates::default(),
            left: LeftEnds::default(),
            assignment: Assignment::default(),
            horizons: Horizons::default(),
            sources,
            asks,
            fence,
            assigned_once: false,
            resets: 0,
            started: Instant::now(),
            taken_once: false,
            last_gauges: Instant::now(),
            buffer: Vec::with_capacity(4096),
        })
    }

    pub fn logic(&self) -> &L {
        &self.logic
    }

    fn consumer(&self) -> &StreamConsumer<GroupContext> {
        &self
            .clients
            .as_ref()
            .expect("clients are open until run ends")
            .consumer
    }

    fn producer(&self) -> FutureProducer {
        self.writer().clone()
    }

    /// The producer a flush writes with, borrowed: a flush never holds a clone of it, so when
    /// a trip (or a write not acknowledged in time) renews it mid-flush, the stage's own handle
    /// is the last and the old producer is closed on the plain thread [`Stage::renew_producer`]
    /// starts. A clone held by the flush was often the last instead (a race with that thread),
    /// and closing it then blocked the runtime (it joins the producer's poll thread, purges
    /// and flushes for up to 500 ms, and destroys the client, which can wait on a broker).
    fn writer(&self) -> &FutureProducer {
        &self
            .clients
            .as_ref()
            .expect("clients are open until run ends")
            .producer
    }

    /// Runs until `stop`; returns after a final commit and producer flush.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), LoopError> {
        let mut result = self.catch_up_globals(&stop).await;
        while result.is_ok() && !stop.is_cancelled() {
            result = self.step(&stop).await;
        }
        let clients = self
            .clients
            .take()
            .expect("clients are open until run ends");
        let globals = self.globals.take().map(GlobalTables::into_consumer);
        let deadline = self.shutdown_timeout.max(Duration::from_secs(1));
        let closing = Instant::now();
        tracing::info!("Closing the Kafka clients.");
        if close_off_runtime(clients.consumer, clients.producer, globals, deadline).await {
            // A dynamic member has left the group by now: the others' rebalance has begun.
            tracing::info!(
                took_ms = closing.elapsed().as_millis() as u64,
                "Kafka clients closed."
            );
        } else {
            tracing::warn!("Kafka clients did not close before the shutdown deadline.");
        }
        result
    }

    /// Reads the global tables to the end they have now before any input is applied; waits
    /// (not ready) for as long as they cannot be read, rather than proceed half-informed.
    async fn catch_up_globals(&mut self, stop: &CancellationToken) -> Result<(), LoopError> {
        let Some(mut globals) = self.globals.take() else {
            return Ok(());
        };
        let mut backoff = Duration::from_millis(200);
        let reading = Instant::now();
        while !stop.is_cancelled() && !globals.caught_up() {
            if !globals.assigned() {
                let kafka = self.kafka.clone();
                let (back, assigned) = tokio::task::spawn_blocking(move || {
                    let assigned = globals.assign(&kafka);
                    (globals, assigned)
                })
                .await
                .map_err(|_| LoopError::Kafka(KafkaError::Canceled))?;
                globals = back;
                if let Err(error) = assigned {
                    tracing::warn!(%error, "Global tables cannot be read yet; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                continue;
            }
            match globals.next() {
                Some(message) => {
                    let effects = self.apply_global(&message);
                    if !effects.is_empty() {
                        self.flush(Work::of(effects), stop).await?;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        if globals.caught_up() {
            tracing::info!(
                took_ms = reading.elapsed().as_millis() as u64,
                "Global tables read to their end."
            );
        }
        self.globals = Some(globals);
        Ok(())
    }

    fn apply_global(&mut self, message: &OwnedMessage) -> Vec<(i32, EffectOf<L>)> {
        let family = self.family_of(message.topic());
        match self.logic.apply_global(family, message) {
            Ok(effects) => {
                self.metrics.processed(family);
                effects
            }
            Err(unusable) => {
                // Global records are read by every instance: counted, never dead-lettered here.
                self.metrics.failed(family, unusable.label);
                Vec::new()
            }
        }
    }

    fn family_of(&self, topic: &str) -> &'static str {
        self.family_of_topic.get(topic).copied().unwrap_or("other")
    }

    /// Whether records of `topic` are applied to the state (the rest are routed by shop).
    fn is_state_input(&self, topic: &str) -> bool {
        match &self.topics.inputs {
            Inputs::ByPartition(_) => true,
            Inputs::ByShop { by_shop, .. } => topic == by_shop,
        }
    }

    /// The state partitions among (topic, partition) pairs, sorted, unique.
    fn state_partitions(&self, event: &RebalanceEvent) -> Vec<i32> {
        match &self.topics.inputs {
            Inputs::ByPartition(_) => event.partitions(None),
            Inputs::ByShop { by_shop, .. } => event.partitions(Some(by_shop)),
        }
    }

    fn owned_partitions(&self) -> Vec<i32> {
        (0..self.kafka.partitions.max(1))
            .filter(|p| self.logic.owns(*p))
            .collect()
    }

    async fn step(&mut self, stop: &CancellationToken) -> Result<(), LoopError> {
        self.handle_rebalances(stop).await?;
        // Timers held back (records left to read): poll for the records rather than sleep
        // until a due time that has passed (a record ends the wait as soon as it arrives).
        let wait = if self.horizons.holding() {
            IDLE_WAIT
        } else {
            first_wait(self.logic.next_due(), now_ms())
        };
        let batch = receive_batch_within(self.consumer(), stop, BATCH, wait).await;
        // A rebalance heard while receiving is handled before any record is applied; records
        // of partitions it touched are dropped (read again from the committed offset).
        let churned = self.handle_rebalances(stop).await?;

        let mut work = Work::of(Vec::with_capacity(batch.len()));
        // Source records this batch routes: once written, timers need not wait for them.
        let mut routing = LatestOffsets::default();
        // Per batch, not per record: one metric lookup per family.
        let mut processed: Vec<(&'static str, u64)> = Vec::new();
        for message in batch {
            let (topic, partition) = (message.topic(), message.partition());
            if !self.assignment.holds(topic, partition)
                || churned.iter().any(|(t, p)| *p == partition && t == topic)
            {
                continue;
            }
            if !self.taken_once {
                self.taken_once = true;
                tracing::info!(
                    since_start_ms = self.started.elapsed().as_millis() as u64,
                    "First input record taken since the start."
                );
            }
            if self.is_state_input(topic) {
                if !self.logic.owns(partition) {
                    continue; // not restored: the partition was lost meanwhile
                }
                work.offsets.record(topic, partition, message.offset());
                let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                self.horizons.read(topic, partition, message.offset(), at);
                let family = match &self.topics.inputs {
                    Inputs::ByShop { .. } => source_family(&message, &self.families),
                    Inputs::ByPartition(_) => self.family_of(topic),
                };
                match self.logic.apply(partition, family, &message) {
                    Ok(effects) => {
                        match processed.iter_mut().find(|(f, _)| *f == family) {
                            Some((_, count)) => *count += 1,
                            None => processed.push((family, 1)),
                        }
                        work.effects
                            .extend(effects.into_iter().map(|e| (partition, e)));
                    }
                    Err(unusable) => {
                        RecordUnusable {
                            family,
                            partition,
                            offset: message.offset(),
                            reason: unusable.label,
                        }
                        .emit(&self.metrics);
                        work.dead.push(DeadLetter {
                            message,
                            reason: unusable.reason,
                        });
                    }
                }
                continue;
            }
            work.offsets.record(topic, partition, message.offset());
            routing.record(topic, partition, message.offset());
            let family = self.family_of(topic);
            if !self.logic.routes(family, &message) {
                continue;
            }
            let shop = shop_of(&message);
            if shop.is_empty() {
                RecordWithoutShop {
                    family,
                    partition,
                    offset: message.offset(),
                }
                .emit(&self.metrics);
                work.dead.push(DeadLetter {
                    message,
                    reason: "no shop domain in headers or key".to_string(),
                });
            } else {
                work.forwards.push(Forward {
                    message,
                    shop,
                    family,
                });
            }
        }
        for (family, count) in processed {
            self.metrics.processed_by(family, count);
        }
        if let Some(mut globals) = self.globals.take() {
            for _ in 0..BATCH {
                let Some(message) = globals.next() else { break };
                let effects = self.apply_global(&message);
                work.effects.extend(effects);
            }
            self.globals = Some(globals);
        }
        if let Some(timers_at) = self.timers_at(now_ms())? {
            work.effects.extend(self.logic.tick(timers_at));
        }
        if self.flush(work, stop).await? {
            for (topic, partition, offset) in routing.iter() {
                self.horizons.routed(topic, partition, offset + 1);
            }
        }
        if self.last_gauges.elapsed() >= GAUGES_EVERY {
            self.last_gauges = Instant::now();
            self.logic.gauges();
        }
        Ok(())
    }

    /// The time timers may run to at `now` ([`horizon`]): the wall clock once every held input
    /// partition is read to its end, else no further than the last record read from one that
    /// is not. The broker is asked where the partitions end only while a timer is due or records
    /// are left ([`Horizons::wants_answers`]), by the asks' thread: the answer counts at a later tick,
    /// as of when it was asked (an old one lets timers run no further than its time). The
    /// member's own position is a local look-up. `None`: no timer may fire yet (the tick waits
    /// for the records, or for an answer).
    fn timers_at(&mut self, now: i64) -> Result<Option<i64>, LoopError> {
        let mut answered = self.asks.answered()?;
        // Source partitions learned are kept whatever becomes of the answer: a metadata
        // request less at the next ask.
        if let Some(pairs) = answered.as_mut().and_then(|a| a.learned.take()) {
            self.sources.learned(pairs);
        }
        if self.logic.next_due().is_none_or(|at| at > now) && !self.horizons.waiting_for_records() {
            // No timer due, no records left: no ask (an answer no timer needs is dropped: by
            // the next one due it would be old). With records left the horizon goes on (the
            // logic's expiry must not run past them either), asking until they are read.
            return Ok(Some(self.horizons.running(now)));
        }
        let held: Vec<Pair> = self
            .assignment
            .pairs()
            .filter(|(topic, _)| self.is_state_input(topic))
            .cloned()
            .collect();
        let positions = positions(self.consumer());
        let answers = answered.map(|answered| answered.answers);
        let was_waiting = self.horizons.waiting_for_records();
        let (at, stalled) = self
            .horizons
            .at(now, &held, self.sources.pairs(), &positions, answers);
        if !self.asks.busy() && self.horizons.wants_answers(&held, now) {
            let unplaced = self.horizons.unplaced(&held, &positions);
            self.asks.ask(Ask {
                asked_at: now,
                held: held.clone(),
                unplaced,
                sources: self.sources.pairs().to_vec(),
                learn: self.sources.unknown(),
                routed_here: self.horizons.routed_here(),
            })?;
        }
        for (topic, partition) in stalled {
            self.metrics.timer_hold_released();
            tracing::warn!(
                topic,
                partition,
                "An input partition below its end has not moved for 5 s: timers no longer wait for it."
            );
        }
        if self.horizons.waiting_for_records() != was_waiting {
            log_holding(
                self.horizons.waiting_for_records(),
                at.map(|at| now - at),
                held.len(),
            );
        }
        Ok(at)
    }

    /// Applies the rebalances heard since the last call; returns the pairs revoked.
    async fn handle_rebalances(
        &mut self,
        stop: &CancellationToken,
    ) -> Result<Vec<(String, i32)>, LoopError> {
        let events = self.consumer().context().take_events();
        let resets = self.resets;
        let mut revoked = Vec::new();
        for event in events {
            if self.resets != resets {
                // The member reset while handling an earlier event: it left that membership,
                // and what the rest say belongs to it. The rejoin brings its own events.
                break;
            }
            let partitions = self.state_partitions(&event);
            // Answers to asks put before are about the assignment this event changes.
            self.asks.invalidate();
            match event {
                RebalanceEvent::Revoked(list) => {
                    self.assignment.revoke(&list);
                    self.horizons.forget(&list);
                    self.keep(partitions);
                    revoked.extend(list);
                }
                RebalanceEvent::Assigned(list) => {
                    self.assignment.assign(&list);
                    // Partitions added to a source topic bring a rebalance: learn them anew.
                    self.sources.forget();
                    // Before taking the state: a fence tripping meanwhile resets the member,
                    // which clears this again (it holds nothing until its next assignment).
                    self.assigned_once = true;
                    let assigning = Instant::now();
                    let partitions: Vec<i32> = partitions
                        .into_iter()
                        .filter(|p| !self.logic.owns(*p))
                        .collect();
                    let (kept, read) = self.take_back(partitions, stop).await?;
                    self.restore(read.clone(), stop).await?;
                    tracing::info!(
                        ?kept,
                        restored = ?read,
                        since_start_ms = self.started.elapsed().as_millis() as u64,
                        restore_ms = assigning.elapsed().as_millis() as u64,
                        "Partitions assigned."
                    );
                }
            }
        }
        self.metrics.partitions(self.owned_partitions().len());
        let globals_ready = self.globals.as_ref().is_none_or(GlobalTables::caught_up);
        // Not ready while the brokers are away: the outage shows until they are back.
        let up = self.consumer().context().brokers_up();
        self.ready
            .set_ready(self.assigned_once && globals_ready && up);
        Ok(revoked)
    }

    /// Where the changelog and output partitions of `partitions` end, asked of the broker off
    /// the runtime; `None` when it cannot say (the state is then read again, the safe side).
    async fn ends(&self, partitions: Vec<i32>) -> Option<Vec<(i32, Ends)>> {
        let producer = self.producer();
        let mut topics = vec![self.topics.state.clone()];
        topics.extend(self.topics.outputs.iter().cloned());
        let timeout = self.kafka.request_timeout();
        let asked = tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .map(|p| ends_of(&producer, &topics, p, timeout).map(|ends| (p, ends)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        match asked {
            Ok(Ok(ends)) => Some(ends),
            Ok(Err(error)) => {
                tracing::warn!(%error, "Partition ends unknown; their state will be read again.");
                None
            }
            Err(_) => None,
        }
    }

    /// Takes revoked partitions from the logic and sets their state aside with where this member
    /// left their partitions (every write of this member is acknowledged between batches).
    fn keep(&mut self, partitions: Vec<i32>) {
        for partition in partitions {
            let checkpoint = self.checkpoints.remove(&partition).unwrap_or_default();
            let left = self.left.take(partition);
            if !self.logic.owns(partition) {
                continue; // never restored here
            }
            if let (Some(entities), Some(ends)) = (self.logic.release(partition), left) {
                self.kept.keep(partition, entities, checkpoint, ends);
            }
        }
    }

    /// Hands kept state back to the logic for the assigned partitions nobody wrote to since
    /// their revoke; returns those and the partitions left to restore. State kept for
    /// partitions not assigned is dropped.
    async fn take_back(
        &mut self,
        partitions: Vec<i32>,
        stop: &CancellationToken,
    ) -> Result<(Vec<i32>, Vec<i32>), LoopError> {
        let candidates: Vec<i32> = self
            .kept
            .partitions()
            .into_iter()
            .filter(|p| partitions.contains(p))
            .collect();
        let ends = if candidates.is_empty() {
            Vec::new()
        } else {
            self.ends(candidates).await.unwrap_or_default()
        };
        let mut kept = Vec::new();
        for (partition, ends_now) in ends {
            if let Some((entities, checkpoint)) = self.kept.take_back(partition, &ends_now) {
                if !self
                    .adopt(partition, entities, checkpoint, Vec::new(), ends_now, stop)
                    .await?
                {
                    self.kept.clear();
                    return Ok((kept, Vec::new())); // fenced or stopped
                }
                self.metrics.kept();
                kept.push(partition);
            }
        }
        self.kept.clear();
        let read = partitions
            .into_iter()
            .filter(|p| !kept.contains(p))
            .collect();
        Ok((kept, read))
    }

    /// Restores partitions, [`RESTORE_CONCURRENCY`] read at once on the blocking pool, each
    /// installed in partition order. A read that fails (the brokers away) is tried again until
    /// it succeeds or `stop`: an outage never ends the process.
    async fn restore(
        &mut self,
        partitions: Vec<i32>,
        stop: &CancellationToken,
    ) -> Result<(), LoopError> {
        let source = RestoreSource {
            kafka: self.kafka.clone(),
            client: format!("{}-restore", self.topics.client),
            state: self.topics.state.clone(),
            outputs: self.topics.outputs.clone(),
        };
        let read = |partition: i32| {
            let source = source.clone();
            tokio::task::spawn_blocking(move || restore_partition(&source, partition))
        };
        for chunk in partitions.chunks(RESTORE_CONCURRENCY) {
            let reads: Vec<_> = chunk.iter().map(|p| (*p, read(*p))).collect();
            for (partition, mut pending) in reads {
                let mut backoff = Duration::from_millis(500);
                let restored = loop {
                    match pending.await {
                        Ok(Ok(restored)) => break restored,
                        Ok(Err(error)) => {
                            tracing::warn!(partition, %error, "Restoring a partition failed; retrying.")
                        }
                        Err(_) => return Err(LoopError::Kafka(KafkaError::Canceled)),
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    pending = read(partition);
                };
                if !self.install(restored, stop).await? {
                    return Ok(()); // fenced (the member rejoins and restores afresh) or stopped
                }
            }
        }
        Ok(())
    }

    /// Hands a restored partition to the logic and writes what reconciling it asked for.
    /// False when the member was fenced meanwhile, or stopped.
    async fn install(
        &mut self,
        restored: Restored<L::Entity, L::Emitted>,
        stop: &CancellationToken,
    ) -> Result<bool, LoopError> {
        let Restored {
            partition,
            entities,
            checkpoint,
            emitted,
            records,
            ends,
            started,
        } = restored;
        let count = entities.len();
        // Where the changelog and each output partition ended as the broker said: a restore
        // that read nothing while the outputs hold records shows here.
        let read_to = format!("{ends:?}");
        let written = self
            .adopt(partition, entities, checkpoint, emitted, ends, stop)
            .await?;
        self.metrics.restored(records as usize, started.elapsed());
        tracing::info!(partition, entities = count, records, ends = read_to, took = ?started.elapsed(), "Restored partition state.");
        Ok(written)
    }

    /// Hands a partition's state to the logic, reconciles the outputs written after its
    /// checkpoint, and writes what that asked for. `ends`: where its changelog and output
    /// partitions ended when the state was read. False when fenced meanwhile, or stopped.
    async fn adopt(
        &mut self,
        partition: i32,
        entities: HashMap<String, L::Entity>,
        checkpoint: Checkpoint,
        emitted: Vec<L::Emitted>,
        ends: Ends,
        stop: &CancellationToken,
    ) -> Result<bool, LoopError> {
        self.left.set(partition, ends);
        let mut effects: Vec<(i32, EffectOf<L>)> = self
            .logic
            .assign(partition, entities)
            .into_iter()
            .map(|e| (partition, e))
            .collect();
        for output in &emitted {
            let reconciled = self.logic.reconcile(partition, output);
            effects.extend(reconciled.into_iter().map(|e| (partition, e)));
        }
        self.checkpoints.insert(partition, checkpoint);
        self.flush(Work::of(effects), stop).await
    }

    /// `Some` when the member may have been expelled and must not write.
    fn tripped(&self) -> Option<Tripped> {
        self.fence.check(self.consumer())
    }

    /// Drops every partition's state and rejoins the group, which assigns partitions afresh
    /// (restored from the changelog, which holds everything written before the fence).
    fn reset(&mut self, trip: Tripped) -> Result<(), LoopError> {
        MemberFenced {
            reason: trip.as_label(),
        }
        .emit(&self.metrics);
        for partition in self.owned_partitions() {
            self.logic.revoke(partition);
        }
        self.checkpoints.clear();
        self.kept.clear();
        self.left.clear();
        self.assignment.clear();
        self.horizons.clear();
        self.asks.invalidate();
        self.fence.answered();
        self.assigned_once = false;
        self.resets += 1;
        self.ready.set_ready(false);
        let consumer = self.consumer();
        consumer.unsubscribe();
        consumer.subscribe(
            &self
                .subscribed
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        Ok(())
    }

    /// A write's partition and offset once acknowledged; `None` (after a reset, as if fenced)
    /// when not within [`delivery_timeout`]: it may have landed or not (the restore reconciles).
    async fn acknowledged(
        &mut self,
        delivery: DeliveryFuture,
    ) -> Result<Option<(i32, i64)>, LoopError> {
        match delivered(delivery).await {
            Err(LoopError::Write(error))
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) =>
            {
                tracing::warn!("A write was not acknowledged within the delivery timeout.");
                self.reset(self.tripped().unwrap_or(Tripped::Undelivered))?;
                self.renew_producer()?;
                Ok(None)
            }
            acknowledged => acknowledged.map(Some),
        }
    }

    /// After a write timed out: a fresh producer (a new producer id) in place of the old one.
    /// The old one would bump its idempotence epoch before writing again, and a broker may
    /// answer that bump with a fatal ProducerFenced (Tansu 0.6 does), which would end the
    /// service for what is only a slow broker. Its records have all expired, so nothing is
    /// lost with it; it is closed on a plain thread (closing can wait on the broker).
    fn renew_producer(&mut self) -> Result<(), LoopError> {
        let fresh = build_output_producer(
            &self.kafka,
            &self.topics.client,
            delivery_timeout(&self.kafka),
        )?;
        if let Some(clients) = self.clients.as_mut() {
            let old = std::mem::replace(&mut clients.producer, fresh);
            std::thread::spawn(move || drop(old));
        }
        Ok(())
    }

    /// Checks the fence before each write: false when it tripped, after purging what the
    /// producer still holds queued, a reset and a fresh producer. A member frozen in the middle
    /// of a batch (SIGSTOP, a stalled VM) wakes with the rest of the batch to write while the
    /// group may have handed its partitions on: it writes no more of it, and a record handed
    /// over just after the freeze, still lingering in the queue, is purged before it lands
    /// after the new owner's restore. (Records queued before a freeze past the session have
    /// outlived the producer's delivery timeout: librdkafka drops them.)
    fn may_write(&mut self) -> Result<bool, LoopError> {
        match self.tripped() {
            None => Ok(true),
            Some(trip) => self.stop_writing(trip),
        }
    }

    /// What a trip of the fence in the middle of a batch does ([`Self::may_write`]): always
    /// `Ok(false)`, nothing more of the batch is written.
    fn stop_writing(&mut self, trip: Tripped) -> Result<bool, LoopError> {
        // Not waiting for the broker threads to confirm: they purge at the same moment either
        // way, and one stuck reconnecting (a DNS lookup) would hold the runtime.
        self.writer()
            .purge(PurgeConfig::default().queue().non_blocking());
        self.reset(trip)?;
        // Purged records leave a gap in the idempotent sequence: a new producer id.
        self.renew_producer()?;
        Ok(false)
    }

    /// Writes a batch's work in the crash-safe order: first the logic acts on its effects
    /// outside Kafka ([`StageLogic::prepare`]), then outputs, forwards and dead letters
    /// (acknowledged), then entities and checkpoints (acknowledged), then the input offsets of
    /// partitions still held. The fence is checked at every record's hand-over. False when
    /// nothing more was written: the fence tripped, or `stop` came while the logic acted (then
    /// nothing of the batch is written and its offsets stay where they were).
    async fn flush(&mut self, work: Work<L>, stop: &CancellationToken) -> Result<bool, LoopError> {
        if !self.may_write()? {
            return Ok(false);
        }
        let Work {
            effects,
            mut forwards,
            mut dead,
            offsets,
        } = work;
        let Some(prepared) = self.logic.prepare(effects, stop).await else {
            return Ok(false);
        };
        // Stopped part-way: only what the logic acted on is written (below, up to the outputs'
        // acknowledgements); the batch's forwards and dead letters wait for its next read.
        let partial = prepared.stopped;
        if partial {
            forwards.clear();
            dead.clear();
        }
        let effects = prepared.effects;
        dead.extend(prepared.dead);
        // Acting may have taken long (Shopify retries): the member may have lost its partitions.
        if !self.may_write()? {
            return Ok(false);
        }
        let mut outputs = Vec::new();
        let mut entities = Vec::new();
        for (partition, effect) in effects {
            match effect {
                StageEffect::Emit {
                    topic,
                    key,
                    event_id,
                    output,
                } => outputs.push((partition, topic, key, event_id, output)),
                StageEffect::Persist { key, entity } => {
                    entities.push(((partition, key), entity));
                }
            }
        }
        // In the order of the effects, each key once where it was last written: a crash leaves
        // a prefix of a partition's writes (one idempotent producer), so a logic can order
        // what a prefix must never hold (a deletion before the writes that make it final).
        let mut seen = std::collections::HashSet::with_capacity(entities.len());
        let mut last = vec![false; entities.len()];
        for (index, (at, _)) in entities.iter().enumerate().rev() {
            last[index] = seen.insert(at);
        }
        drop(seen);
        let entities: Vec<_> = entities
            .into_iter()
            .zip(last)
            .filter_map(|(write, last)| last.then_some(write))
            .collect();
        let mut emitted = Vec::with_capacity(outputs.len());
        for (partition, topic, key, event_id, output) in &outputs {
            self.buffer.clear();
            serde_json::to_writer(&mut self.buffer, output)?;
            let headers = OwnedHeaders::new().insert(Header {
                key: "aftercart-event-id",
                value: Some(event_id.as_str()),
            });
            let record = FutureRecord::to(&self.topics.outputs[*topic])
                .partition(*partition)
                .key(key.as_str())
                .payload(self.buffer.as_slice())
                .headers(headers);
            // Checked at the hand-over itself, after the serializing, so that only a freeze
            // inside `send_result` can put a record in after the thaw (the next check's purge
            // takes it out of the queue while it lingers).
            if let Some(trip) = self.tripped() {
                drop(record);
                return self.stop_writing(trip);
            }
            let delivery = self
                .writer()
                .send_result(record)
                .map_err(|(e, _)| LoopError::Write(e))?;
            emitted.push((*topic, delivery));
        }
        let mut acks = Vec::with_capacity(forwards.len() + dead.len());
        if let Inputs::ByShop { by_shop, .. } = &self.topics.inputs {
            let by_shop = by_shop.clone();
            for forward in &forwards {
                if !self.may_write()? {
                    return Ok(false);
                }
                acks.push(Self::forward(self.writer(), forward, &by_shop)?);
            }
        }
        for letter in &dead {
            if !self.may_write()? {
                return Ok(false);
            }
            let record = dead_letter_record(&self.topics.dead_letter, letter);
            acks.push(
                self.writer()
                    .send_result(record)
                    .map_err(|(e, _)| LoopError::Write(e))?,
            );
        }
        // The last record handed over may have lingered through a freeze too.
        if !self.may_write()? {
            return Ok(false);
        }
        for (topic, delivery) in emitted {
            let Some((partition, offset)) = self.acknowledged(delivery).await? else {
                return Ok(false);
            };
            self.left.wrote(partition, 1 + topic, offset);
            self.checkpoints
                .entry(partition)
                .or_default()
                .advance(&self.topics.outputs[topic], offset);
        }
        for ack in acks {
            if self.acknowledged(ack).await?.is_none() {
                return Ok(false);
            }
        }
        self.metrics.routed(forwards.len());
        for _ in &dead {
            self.metrics.dead_lettered();
        }
        for (.., output) in &outputs {
            self.logic.emitted(output);
        }
        if partial {
            // The logic applied the whole batch but only this much of it is written: the
            // member must not go on (the loop ends on `stop`; the next owner restores).
            if !stop.is_cancelled() {
                return Err(LoopError::StoppedWithoutStop);
            }
            return Ok(false);
        }

        if !self.may_write()? {
            return Ok(false);
        }
        let state = self.topics.state.clone();
        let record = |partition, key| {
            FutureRecord::<str, [u8]>::to(&state)
                .partition(partition)
                .key(key)
        };
        let mut writes = Vec::with_capacity(entities.len() + outputs.len());
        for ((partition, key), entity) in &entities {
            let mut write = record(*partition, key.as_str());
            if let Some(entity) = entity {
                self.buffer.clear();
                serde_json::to_writer(&mut self.buffer, entity)?;
                write = write.payload(self.buffer.as_slice());
            }
            // At the hand-over, as for the outputs.
            if let Some(trip) = self.tripped() {
                drop(write);
                return self.stop_writing(trip);
            }
            writes.push(
                self.writer()
                    .send_result(write)
                    .map_err(|(e, _)| LoopError::Write(e))?,
            );
        }
        let mut touched: Vec<i32> = outputs.iter().map(|(p, ..)| *p).collect();
        touched.sort_unstable();
        touched.dedup();
        for partition in touched {
            self.buffer.clear();
            let checkpoint = self.checkpoints.entry(partition).or_default();
            serde_json::to_writer(&mut self.buffer, &*checkpoint)?;
            let write = record(partition, CHECKPOINT_KEY).payload(self.buffer.as_slice());
            if let Some(trip) = self.tripped() {
                drop(write);
                return self.stop_writing(trip);
            }
            writes.push(
                self.writer()
                    .send_result(write)
                    .map_err(|(e, _)| LoopError::Write(e))?,
            );
        }
        if !self.may_write()? {
            return Ok(false);
        }
        let written = writes.len();
        for write in writes {
            let Some((partition, offset)) = self.acknowledged(write).await? else {
                return Ok(false);
            };
            self.left.wrote(partition, 0, offset);
        }
        self.metrics.changelog_written(written);

        if !self.may_write()? {
            return Ok(false);
        }
        store_owned(self.consumer(), &self.assignment, offsets);
        Ok(true)
    }

    /// Copies a source record to the by-shop topic keyed by shop: the exact bytes, its headers
    /// plus [`SOURCE_HEADER`], and its receive time (timers count from it).
    fn forward(
        producer: &FutureProducer,
        forward: &Forward,
        by_shop: &str,
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
        let mut record = FutureRecord::<str, [u8]>::to(by_shop)
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
            .map_err(|(e, _)| LoopError::Write(e))
    }
}

#[cfg(test)]
mod tests;

//! The kept-state shortcut driven through a real stage against librdkafka's mock cluster (no
//! group: the rebalance events are played by hand, in the order the stage hears them).

use std::sync::Mutex;

use prometheus::Registry;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::*;

const STATE: &str = "toy-state";
const OUT: &str = "toy-out";

/// A logic whose state is a counter per key, nothing else.
struct Toy {
    partitions: HashMap<i32, HashMap<String, u32>>,
    metrics: LoopMetrics,
}

impl StageLogic for Toy {
    type Entity = u32;
    type Output = String;
    type Emitted = String;

    fn apply(
        &mut self,
        _: i32,
        _: &'static str,
        _: &OwnedMessage,
    ) -> Result<Vec<EffectOf<Self>>, Unusable> {
        Ok(Vec::new())
    }
    fn tick(&mut self, _: i64) -> Vec<(i32, EffectOf<Self>)> {
        Vec::new()
    }
    fn assign(&mut self, partition: i32, entities: HashMap<String, u32>) -> Vec<EffectOf<Self>> {
        self.partitions.insert(partition, entities);
        Vec::new()
    }
    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
    fn release(&mut self, partition: i32) -> Option<HashMap<String, u32>> {
        self.partitions.remove(&partition)
    }
    fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }
    fn reconcile(&mut self, _: i32, _: &String) -> Vec<EffectOf<Self>> {
        Vec::new()
    }
    fn emitted(&self, _: &String) {}
    fn gauges(&self) {}
}

/// One mock cluster per test process is plenty; each test takes its own topics' partition.
static CLUSTER: Mutex<()> = Mutex::new(());

fn stage_on(bootstrap: &str) -> Stage<Toy> {
    let mut kafka = KafkaSettings::new(bootstrap, "");
    kafka.partitions = 2;
    toy_stage(kafka).unwrap_or_else(|error| panic!("stage: {error}"))
}

fn toy_stage(kafka: KafkaSettings) -> Result<Stage<Toy>, LoopError> {
    let metrics =
        LoopMetrics::register("toy_", &Registry::new(), "Partitions.", &[]).expect("metrics");
    let topics = StageTopics {
        client: "toy".into(),
        group: "toy".into(),
        inputs: Inputs::ByPartition(vec![("toy-in".into(), "in")]),
        globals: Vec::new(),
        state: STATE.into(),
        dead_letter: "toy-dead".into(),
        outputs: vec![OUT.into()],
    };
    let logic = Toy {
        partitions: HashMap::new(),
        metrics,
    };
    Stage::new(
        kafka,
        topics,
        Duration::from_secs(1),
        logic.metrics.clone(),
        logic,
        Readiness::detached(),
    )
}

/// Review of issue 15: the stage's producer gives up on a write after the session less a
/// heartbeat, so an operator's `heartbeat.interval.ms` as long as the session left it
/// nothing (1 ms), and the stage would not start, with librdkafka blaming `linger.ms` and
/// `message.timeout.ms`, neither of which the operator set. It is refused by name.
#[tokio::test]
async fn a_heartbeat_as_long_as_the_session_is_refused_by_name() {
    for heartbeat in ["6000", "5998"] {
        let mut kafka = KafkaSettings::new("localhost:9", "");
        kafka.properties.set("session.timeout.ms", "6000");
        kafka.properties.set("heartbeat.interval.ms", heartbeat);
        let error = match toy_stage(kafka) {
            Ok(_) => panic!("a stage was built with a {heartbeat} ms heartbeat"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("heartbeat.interval.ms") && error.contains("session.timeout.ms"),
            "{error}"
        );
    }
}

fn persist(key: &str, value: u32) -> (i32, EffectOf<Toy>) {
    (
        0,
        StageEffect::Persist {
            key: key.into(),
            entity: Some(Box::new(value)),
        },
    )
}

/// Another member's write to partition 0 of the changelog, acknowledged.
fn foreign_write(bootstrap: &str, key: &str, value: u32) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    let payload = value.to_string();
    producer
        .send(
            BaseRecord::to(STATE)
                .partition(0)
                .key(key)
                .payload(&payload),
        )
        .expect("queued");
    producer.flush(Duration::from_secs(10)).expect("written");
}

/// Restores partition 0 and writes `a = 1` and an output as this member's own (acknowledged)
/// work: an entity, a checkpoint and an output record.
async fn owning_partition_0(stage: &mut Stage<Toy>, stop: &CancellationToken) {
    stage.restore(vec![0], stop).await.expect("restored");
    assert!(stage.logic.owns(0));
    stage
        .logic
        .partitions
        .get_mut(&0)
        .expect("owned")
        .insert("a".into(), 1);
    let emit = StageEffect::Emit {
        topic: 0,
        key: "a".into(),
        event_id: "e-1".into(),
        output: "counted".into(),
    };
    assert!(stage
        .flush(Work::of(vec![persist("a", 1), (0, emit)]), stop)
        .await
        .expect("flushed"));
}

fn with_cluster(test: impl AsyncFnOnce(&str)) {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for topic in [STATE, OUT, "toy-in", "toy-dead"] {
        cluster.create_topic(topic, 2, 1).expect("topic");
    }
    let bootstrap = cluster.bootstrap_servers();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test(&bootstrap));
}

/// The shortcut works: a partition nobody wrote to since this member's own last write comes
/// back with its state, without a read.
#[test]
fn a_partition_handed_straight_back_keeps_its_state() {
    with_cluster(async |bootstrap| {
        let stop = CancellationToken::new();
        let mut stage = stage_on(bootstrap);
        owning_partition_0(&mut stage, &stop).await;
        stage.keep(vec![0]);
        let (kept, read) = stage.take_back(vec![0], &stop).await.expect("taken back");
        assert_eq!((kept, read), (vec![0], vec![]));
        assert_eq!(stage.logic.partitions[&0]["a"], 1);
    });
}

/// Review of the kept state: the revoke is heard between batches, after librdkafka already
/// rejoined the group, so another member may own the partition and write to it before this
/// member asks where it ends. Those writes were counted as this member's own: when the
/// partition came back untouched after them, the stale state was kept (a = 1, not 2).
#[test]
fn a_write_by_another_member_before_the_revoke_is_heard_makes_the_state_read_again() {
    with_cluster(async |bootstrap| {
        let stop = CancellationToken::new();
        let mut stage = stage_on(bootstrap);
        owning_partition_0(&mut stage, &stop).await;
        foreign_write(bootstrap, "a", 2);
        stage.keep(vec![0]);
        let (kept, read) = stage.take_back(vec![0], &stop).await.expect("taken back");
        assert_eq!((kept, read.clone()), (vec![], vec![0]), "stale state kept");
        stage.restore(read, &stop).await.expect("restored");
        assert_eq!(stage.logic.partitions[&0]["a"], 2);
    });
}

/// Review of the assignment path: a member fenced while it took a kept partition back (or
/// restored one) resets, dropping everything and rejoining, and is not ready; the assignment
/// that was being taken then marked it assigned anyway, so it reported ready while it held
/// nothing, until its next assignment.
#[test]
fn a_member_fenced_while_taking_its_partitions_back_is_not_ready() {
    with_cluster(async |bootstrap| {
        let stop = CancellationToken::new();
        let mut stage = stage_on(bootstrap);
        owning_partition_0(&mut stage, &stop).await;
        stage.handle_rebalances(&stop).await.expect("no events");
        let pairs = vec![("toy-in".to_string(), 0)];
        let context = stage.consumer().context();
        context.push(RebalanceEvent::Revoked(pairs.clone()));
        context.push(RebalanceEvent::Assigned(pairs));
        // A fence that trips at once: every gap between its ticks is a stall.
        stage.fence = Fence::new(Duration::from_millis(2));
        let deadline = Instant::now() + Duration::from_secs(10);
        while stage.tripped().is_none() {
            assert!(Instant::now() < deadline, "the fence never tripped");
            tokio::task::yield_now().await;
        }
        stage.handle_rebalances(&stop).await.expect("handled");
        assert!(!stage.logic.owns(0), "fenced: the state is dropped");
        assert!(!stage.ready.is_ready(), "ready while holding nothing");
    });
}

/// Review of issue 15: a reset while one rebalance event was handled (here a fence tripping as
/// a kept partition came back; since the delivery bound, also a write not acknowledged in time)
/// unsubscribes and rejoins, but the events heard before it were still acted on after it: a
/// partition of the membership the member had just left was restored and written for, and
/// the member reported ready while rejoining. Events heard before a reset are dropped.
#[test]
fn events_heard_before_a_reset_are_not_acted_on_after_it() {
    with_cluster(async |bootstrap| {
        let stop = CancellationToken::new();
        let mut stage = stage_on(bootstrap);
        owning_partition_0(&mut stage, &stop).await;
        stage.handle_rebalances(&stop).await.expect("no events");
        let zero = vec![("toy-in".to_string(), 0)];
        let context = stage.consumer().context();
        context.push(RebalanceEvent::Revoked(zero.clone()));
        context.push(RebalanceEvent::Assigned(zero.clone()));
        context.push(RebalanceEvent::Revoked(zero));
        context.push(RebalanceEvent::Assigned(vec![("toy-in".to_string(), 1)]));
        stage.fence = Fence::tripping_once();
        stage.handle_rebalances(&stop).await.expect("handled");
        assert!(
            !stage.logic.owns(1),
            "a partition assigned before the reset was restored after it"
        );
        assert!(!stage.ready.is_ready(), "ready while rejoining");
    });
}

/// Review of the nudges' `started_by` (branch tansuloss): a crash while a batch's changelog is
/// written leaves a prefix of its writes (one idempotent producer per partition), but the
/// writes went out in a hash map's order, so no logic could say what a prefix must hold (a
/// person cleared before their sequence's deletion). They go out in the order of the batch's
/// effects, each key once, where it was last written.
#[test]
fn a_batchs_changelog_writes_go_out_in_the_order_of_its_effects() {
    with_cluster(async |bootstrap| {
        let stop = CancellationToken::new();
        let mut stage = stage_on(bootstrap);
        owning_partition_0(&mut stage, &stop).await;
        let mut effects: Vec<_> = (0..20).map(|i| persist(&format!("k{i:02}"), i)).collect();
        effects.push(persist("k00", 20));
        assert!(stage
            .flush(Work::of(effects), &stop)
            .await
            .expect("flushed"));
        let reader = reader_of(bootstrap, STATE);
        let mut keys = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while keys.len() < 20 {
            assert!(Instant::now() < deadline, "read back only {keys:?}");
            if let Some(message) = reader.poll(Duration::from_millis(100)) {
                let message = message.expect("read");
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).to_string();
                if key.starts_with('k') {
                    keys.push(key);
                }
            }
        }
        let mut expected: Vec<String> = (1..20).map(|i| format!("k{i:02}")).collect();
        expected.push("k00".into());
        assert_eq!(keys, expected);
    });
}

/// A CI run of the expelled-member fault case: a member frozen (SIGSTOP) in the middle of a
/// batch's outputs went on writing the rest when thawed, past the new owner's restore, so the
/// new owner wrote the same outputs again. The fence was checked before each phase of a batch,
/// not before each write. Now a stall stops the writes at once, and the ones handed over since
/// the freeze, still in the producer's queue, are purged: here the stall falls just after the
/// check that allowed the fifth output (a long linger keeps every record queued meanwhile).
#[test]
fn a_member_frozen_in_the_middle_of_a_batch_writes_none_of_it_after_the_freeze() {
    with_cluster(async |bootstrap| {
        let stop = CancellationToken::new();
        let mut kafka = KafkaSettings::new(bootstrap, "");
        kafka.partitions = 2;
        kafka.properties.set("linger.ms", "1000");
        let mut stage = toy_stage(kafka).unwrap_or_else(|error| panic!("stage: {error}"));
        owning_partition_0(&mut stage, &stop).await;
        let outputs: Vec<_> = (0..20)
            .map(|i| {
                let emit = StageEffect::Emit {
                    topic: 0,
                    key: format!("o{i:02}"),
                    event_id: format!("e-o{i:02}"),
                    output: "late".into(),
                };
                (0, emit)
            })
            .collect();
        // Checks: the batch's start, after the logic prepared it, then one per write; the
        // seventh allows the fifth output, and the process freezes right after it.
        stage.fence = Fence::stalling_at_check(8);
        let written = stage
            .flush(Work::of(outputs), &stop)
            .await
            .expect("flushed");
        assert!(!written, "a frozen member's batch counted as written");
        assert!(!stage.logic.owns(0), "fenced: the state is dropped");
        let landed = keys_in(bootstrap, OUT, Duration::from_secs(3));
        let late: Vec<&String> = landed.iter().filter(|k| k.as_str() >= "o04").collect();
        assert!(
            late.is_empty(),
            "outputs handed over after the freeze landed: {late:?} (all: {landed:?})"
        );
    });
}

/// The keys of partition 0 of `topic`, read from its start for `for_at_least` (records that
/// are not written never show; those that are show within it).
fn keys_in(bootstrap: &str, topic: &str, for_at_least: Duration) -> Vec<String> {
    let reader = reader_of(bootstrap, topic);
    let mut keys = Vec::new();
    let until = Instant::now() + for_at_least;
    while Instant::now() < until {
        if let Some(message) = reader.poll(Duration::from_millis(100)) {
            let message = message.expect("read");
            keys.push(String::from_utf8_lossy(message.key().unwrap_or_default()).to_string());
        }
    }
    keys
}

/// A reader of partition 0 of `topic` from its start.
fn reader_of(bootstrap: &str, topic: &str) -> rdkafka::consumer::BaseConsumer {
    let reader: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "toy-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut partition = TopicPartitionList::new();
    partition
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("offset");
    reader.assign(&partition).expect("assigned");
    reader
}

//! Unit tests of the stage's pure parts and of its offset store against librdkafka's mock
//! cluster (no group: a partition is assigned or not by hand).

use rdkafka::consumer::BaseConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::asks::ask_ends;
use super::*;

#[test]
fn an_idle_stage_waits_the_full_idle_wait_without_timers() {
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

#[test]
fn the_session_timeout_is_the_operators_when_given() {
    let mut kafka = KafkaSettings::new("localhost:9092", "shopify.");
    kafka.instance_id = Some("abandonment-0".into());
    assert_eq!(session_timeout(&kafka), SESSION_TIMEOUT);
    kafka.properties.set("session.timeout.ms", "6000");
    assert_eq!(session_timeout(&kafka), Duration::from_secs(6));
}

/// Issue 15: a dynamic member killed and restarted comes back as a new member, and the group
/// waits for the old one's session to end before anyone gets its partitions: with the 30 s
/// chosen for static members, every crash stopped a third of the partitions for 30 s or more.
#[test]
fn a_dynamic_members_session_is_short_and_a_static_members_long() {
    let mut kafka = KafkaSettings::new("localhost:9092", "shopify.");
    assert_eq!(session_timeout(&kafka), DYNAMIC_SESSION_TIMEOUT);
    // Apache Kafka's default `group.min.session.timeout.ms`: no shorter, or brokers refuse it.
    assert_eq!(DYNAMIC_SESSION_TIMEOUT, Duration::from_secs(6));
    kafka.instance_id = Some("abandonment-0".into());
    assert_eq!(session_timeout(&kafka), SESSION_TIMEOUT);
}

/// Issue 15: a member frozen past its session still held records in its producer; thawed, it
/// sent them after the next owner had restored, and an output landed twice. Every record the
/// stage hands its producer expires before the member could have been expelled.
#[test]
fn the_producer_gives_up_on_a_record_before_the_session_could_have_ended() {
    let mut kafka = KafkaSettings::new("localhost:9092", "shopify.");
    assert_eq!(delivery_timeout(&kafka), Duration::from_secs(5));
    kafka.instance_id = Some("abandonment-0".into());
    assert_eq!(delivery_timeout(&kafka), Duration::from_secs(29));
    kafka.properties.set("session.timeout.ms", "4000");
    kafka.properties.set("heartbeat.interval.ms", "500");
    assert_eq!(delivery_timeout(&kafka), Duration::from_millis(3500));
}

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

fn consumer_holding(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
) -> BaseConsumer {
    cluster.create_topic("orders", 2, 1).expect("topic");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "stage-store-test")
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut held = TopicPartitionList::new();
    held.add_partition_offset("orders", 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&held).expect("assign");
    // The assignment takes effect on librdkafka's own thread: wait until a store is taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while consumer.store_offset("orders", 0, 0).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "partition 0 never assigned"
        );
        let _ = consumer.poll(Duration::from_millis(50));
    }
    consumer
}

/// Issue 15: the by-shop loop stored the offsets of every source partition it had read, owned
/// or not; after a revoke librdkafka answered "erroneous state" and the member exited.
#[test]
fn offsets_of_partitions_lost_mid_batch_are_skipped_never_an_error() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let consumer = consumer_holding(&cluster);
    assert!(
        consumer.store_offset("orders", 1, 7).is_err(),
        "librdkafka refuses a store for a partition it does not hold"
    );
    // The stage still believes it holds partition 1: revoked since its last rebalance event.
    let mut assignment = Assignment::default();
    assignment.assign(&[("orders".into(), 0), ("orders".into(), 1)]);
    let mut offsets = LatestOffsets::default();
    offsets.record("orders", 0, 5);
    offsets.record("orders", 1, 7);
    assert_eq!(store_owned(&consumer, &assignment, offsets), 1);
    // One the stage knows it lost is skipped without asking librdkafka.
    assignment.revoke(&[("orders".into(), 1)]);
    let mut offsets = LatestOffsets::default();
    offsets.record("orders", 1, 9);
    offsets.record("orders", 0, 6);
    assert_eq!(store_owned(&consumer, &assignment, offsets), 1);
}

/// Writes `count` records to partition 0 of `orders`.
fn write_orders(cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>, count: u32) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("producer");
    for n in 0..count {
        let value = format!("{n}");
        producer
            .send(
                BaseRecord::<(), _>::to("orders")
                    .partition(0)
                    .payload(&value),
            )
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// Issue 15 (timers during catch-up): where the member is and where its partitions end come
/// from the consumer: its position without a request, the ends in one.
#[test]
fn the_timer_horizon_reads_positions_and_ends_from_the_consumer() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let consumer = consumer_holding(&cluster);
    write_orders(&cluster, 3);
    let held = [("orders".to_string(), 0), ("orders".to_string(), 1)];
    let answers = ask_ends(&consumer, &held, &held, &[]);
    assert_eq!(
        answers.ends,
        HashMap::from([(held[0].clone(), 3), (held[1].clone(), 0)])
    );
    // Nothing committed: the group starts where `auto.offset.reset=earliest` puts it, at the
    // log start. Once taken as unknown, and an unknown start held nothing: a member taking a
    // partition its group never committed (the previous owner read none of it before it
    // left) fired the abandonments of carts whose checkouts were still in that partition.
    assert_eq!(
        answers.starts,
        HashMap::from([(held[0].clone(), 0), (held[1].clone(), 0)]),
        "nothing committed: the log start"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut read = 0;
    while read < 3 {
        assert!(std::time::Instant::now() < deadline, "read {read} of 3");
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
            read += 1;
        }
    }
    assert_eq!(positions(&consumer).get(&held[0]), Some(&3));
}

/// Issue 15 (by-shop timers): a by-shop stage asks where every source partition ends and how
/// far the group routed it (committed; never committed is the log start, here 0), so a record still in a source
/// topic holds the timers until the group routed it.
#[test]
fn a_source_record_not_routed_yet_holds_the_timers_until_the_group_committed_it() {
    use rdkafka::consumer::CommitMode;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let consumer = consumer_holding(&cluster);
    write_orders(&cluster, 2);
    let sources = [("orders".to_string(), 0), ("orders".to_string(), 1)];
    let answers = ask_ends(&consumer, &[], &[], &sources);
    assert_eq!(
        answers.source_ends,
        HashMap::from([(sources[0].clone(), 2), (sources[1].clone(), 0)])
    );
    assert_eq!(
        answers.routed,
        HashMap::from([(sources[0].clone(), 0), (sources[1].clone(), 0)]),
        "never committed: at the log start, nothing routed"
    );
    let mut horizons = Horizons::default();
    let now = now_ms();
    let none = HashMap::new();
    let (at, _) = horizons.at(now, &[], &sources, &none, Some(answers));
    assert_eq!(at, None, "two orders not routed: no timer fires");
    // The router (here this consumer) routed them and committed.
    consumer.store_offset("orders", 0, 1).expect("store");
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    let answers = ask_ends(&consumer, &[], &[], &sources);
    assert_eq!(answers.routed.get(&sources[0]), Some(&2));
    let (at, _) = horizons.at(now + 100, &[], &sources, &none, Some(answers));
    assert_eq!(at, Some(now + 100), "routed: timers run on");
}

/// A source partition the group never committed whose early records retention deleted: the
/// router starts at the log start (`earliest`), so that is how far it is routed, not 0. Counted
/// as 0, a partition whose records all expired (end = log start > 0, nothing left to route, so
/// nothing ever committed) held every timer at each start until the stall bound, reported as a
/// stall, and while "stalled" its next record was not waited for.
#[test]
fn a_source_partition_never_committed_is_routed_to_its_log_start() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let consumer = consumer_holding(&cluster);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("producer");
    // The mock broker keeps 5 MB a partition: the first records go, the log start moves on.
    let big = vec![b'x'; 900_000];
    for _ in 0..8 {
        producer
            .send(BaseRecord::to("orders").partition(1).key("k").payload(&big))
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }
    let (log_start, end) = consumer
        .fetch_watermarks("orders", 1, Duration::from_secs(10))
        .expect("watermarks");
    assert!(log_start > 0 && end == 8, "retention moved the log start");
    let sources = [("orders".to_string(), 0), ("orders".to_string(), 1)];
    let answers = ask_ends(&consumer, &[], &[], &sources);
    assert_eq!(
        answers.routed,
        HashMap::from([(sources[0].clone(), 0), (sources[1].clone(), log_start)]),
        "never committed: routed to the log start"
    );
}

/// The source partitions a by-shop stage waits for are the topics' own, not
/// `AFTERCART_TOPIC_PARTITIONS` (the count of the topics the service creates: source topics
/// are the ingress's and may have more). Taken from the setting, a source topic with more
/// partitions than it had its extra ones never checked: an order there, not routed yet, did not
/// hold its customer's step.
#[test]
fn a_by_shop_stage_waits_for_every_partition_its_source_topics_have() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let consumer = consumer_holding(&cluster);
    cluster.create_topic("checkouts", 3, 1).expect("topic");
    let mut kafka = KafkaSettings::new(cluster.bootstrap_servers(), "shopify.");
    kafka.partitions = 2;
    let topics = ["orders".to_string(), "checkouts".to_string()];
    let mut sources = SourcePartitions::new(&kafka, &topics);
    let configured: Vec<Pair> = sources.pairs().to_vec();
    assert_eq!(
        configured.len(),
        4,
        "before the broker answers: the setting's count"
    );
    let asked = sources.unknown();
    assert_eq!(asked, topics, "not known yet: every topic is asked about");
    let found = sources::partitions_of(&consumer, &asked, Duration::from_secs(10));
    sources.learned(found.expect("the broker answers"));
    assert!(sources.unknown().is_empty(), "known: asked no more");
    let mut learned = sources.pairs().to_vec();
    learned.sort();
    let wanted: Vec<Pair> = [("checkouts", 0), ("checkouts", 1), ("checkouts", 2)]
        .into_iter()
        .chain([("orders", 0), ("orders", 1)])
        .map(|(t, p)| (t.to_string(), p))
        .collect();
    assert_eq!(learned, wanted);
}

/// The answer to an ask, taken at a later tick.
fn answer_of(asks: &mut Asks) -> asks::Answered {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(answered) = asks.answered().expect("the thread runs") {
            return answered;
        }
        assert!(std::time::Instant::now() < deadline, "no answer in 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 15 (resume after a restart): the asks that tell the timers where held partitions end
/// run on a thread of their own; on the stage's loop they held up its records and rebalance
/// callbacks 0.3–1 s after every assignment. The answer comes later, as of when it was asked,
/// with the source partitions learned on the way and what this member routed by then.
#[test]
fn the_ends_are_asked_off_the_loop_and_answered_as_of_the_ask() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let _consumer = consumer_holding(&cluster);
    write_orders(&cluster, 3);
    let kafka = KafkaSettings::new(cluster.bootstrap_servers(), "shopify.");
    let mut asks = Asks::start(&kafka, "asks-test", "stage-store-test").expect("asks");
    let held = vec![("orders".to_string(), 0)];
    let ask = |asked_at| Ask {
        asked_at,
        held: held.clone(),
        unplaced: held.clone(),
        sources: Vec::new(),
        learn: vec!["orders".to_string()],
        routed_here: HashMap::from([(("orders".to_string(), 1), 7)]),
    };
    asks.ask(ask(1_000)).expect("asked");
    assert!(asks.busy(), "one ask out");
    let answered = answer_of(&mut asks);
    assert!(!asks.busy());
    assert_eq!(answered.answers.asked_at, Some(1_000));
    assert_eq!(answered.answers.ends, HashMap::from([(held[0].clone(), 3)]));
    assert_eq!(
        answered.answers.starts,
        HashMap::from([(held[0].clone(), 0)])
    );
    let mut learned = answered.learned.expect("learned");
    learned.sort();
    assert_eq!(
        learned,
        [("orders".to_string(), 0), ("orders".to_string(), 1)]
    );
    assert_eq!(
        answered.answers.routed_here,
        HashMap::from([(("orders".to_string(), 1), 7)])
    );
    // Put before a rebalance, answered after: about partitions that may have moved, dropped.
    asks.ask(ask(2_000)).expect("asked");
    asks.invalidate();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while asks.busy() {
        assert!(
            asks.answered().expect("the thread runs").is_none(),
            "a stale answer is never taken"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the stale answer never came"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    asks.ask(ask(3_000)).expect("asked");
    assert_eq!(answer_of(&mut asks).answers.asked_at, Some(3_000));
}

#[test]
fn a_by_shop_record_is_labelled_with_its_known_source_family_only() {
    use rdkafka::message::{OwnedHeaders, Timestamp};
    let with = |source: Option<&str>| {
        let mut headers = OwnedHeaders::new();
        if let Some(source) = source {
            headers = headers.insert(Header {
                key: SOURCE_HEADER,
                value: Some(source),
            });
        }
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    };
    let families = ["orders", "customers"];
    assert_eq!(source_family(&with(Some("orders")), &families), "orders");
    assert_eq!(source_family(&with(Some("carts")), &families), "other");
    assert_eq!(source_family(&with(None), &families), "other");
}

mod kept_stage;

fn stage_topics() -> StageTopics {
    StageTopics {
        client: "aftercart-abandonment".into(),
        group: "aftercart-abandonment".into(),
        inputs: Inputs::ByPartition(Vec::new()),
        globals: Vec::new(),
        state: "state".into(),
        dead_letter: "dead".into(),
        outputs: Vec::new(),
    }
}

fn group_setting(kafka: &KafkaSettings, key: &str) -> u64 {
    group_config(kafka, &stage_topics(), Duration::ZERO)
        .get(key)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{key} set"))
}

/// Review of the session defaults: an operator may make the members static through the Kafka
/// properties (`group.instance.id`, as a Java client.properties does) rather than
/// `AFTERCART_INSTANCE_ID`; such a member got the dynamic member's 10 s session, so a restarted
/// pod had 10 s, not 30, to come back before its partitions moved.
#[test]
fn a_static_member_named_in_the_kafka_properties_gets_the_static_session() {
    let mut kafka = KafkaSettings::new("localhost:9092", "shopify.");
    kafka.properties.set("group.instance.id", "abandonment-0");
    assert_eq!(session_timeout(&kafka), SESSION_TIMEOUT);
    assert_eq!(
        group_setting(&kafka, "session.timeout.ms"),
        SESSION_TIMEOUT.as_millis() as u64
    );
    // An empty one is no name (librdkafka's default): dynamic.
    kafka.properties.set("group.instance.id", "");
    assert_eq!(session_timeout(&kafka), DYNAMIC_SESSION_TIMEOUT);
}

/// Review of the heartbeat default: an operator's short session (Tansu and the mock cluster
/// accept under Apache Kafka's 6 s minimum) kept the 1 s heartbeat, so a 2 s session had two
/// heartbeats in it and one late heartbeat expelled the member. A heartbeat stays under a third
/// of the session, as Kafka advises; the operator's own heartbeat is kept as given.
#[test]
fn the_heartbeat_stays_under_a_third_of_the_session_unless_the_operator_sets_it() {
    let mut kafka = KafkaSettings::new("localhost:9092", "shopify.");
    assert_eq!(group_setting(&kafka, "heartbeat.interval.ms"), 1000);
    for (session, most) in [(6000, 1000), (3000, 1000), (2000, 666), (900, 300)] {
        kafka
            .properties
            .set("session.timeout.ms", session.to_string());
        let heartbeat = group_setting(&kafka, "heartbeat.interval.ms");
        assert!(
            heartbeat <= most && heartbeat > 0,
            "heartbeat {heartbeat} ms for a {session} ms session"
        );
    }
    kafka.properties.set("heartbeat.interval.ms", "2500");
    assert_eq!(group_setting(&kafka, "heartbeat.interval.ms"), 2500);
}

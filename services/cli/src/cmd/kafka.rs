//! `aftercart kafka check`: connects with exactly the services' settings and reports what an
//! operator needs to know first: the build's TLS/SASL support, the cluster, the topics with their
//! partitions and configs, and whether this principal can join a group, produce and consume.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aftercart_kafka::producer::ProducerOptions;
use aftercart_kafka::settings::builtin_features;
use aftercart_kafka::{describe_topic_configs_with, ClientKind, KafkaSettings};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::cmd::topics::{TopicFlags, TopicPlan};

/// The topic configs worth showing, in this order.
const SHOWN_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "min.insync.replicas",
    "retention.ms",
    "segment.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
];

#[derive(Debug, clap::Subcommand)]
pub enum KafkaCommand {
    /// Connect with the services' settings and report the cluster, the brokers, every topic
    /// aftercart uses (partitions, configs) and whether this principal can join a consumer
    /// group; with --write also produce and consume one record. Exits 1 when a check fails.
    Check(Box<CheckArgs>),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub topics: TopicFlags,

    /// Also produce one record to the check topic, consume it back in a fresh consumer group
    /// and delete that group. Off by default: without it nothing is written anywhere.
    #[arg(long)]
    pub write: bool,

    /// The topic --write uses (created with 1 partition and 1 h retention when missing; never
    /// a topic the services use).
    #[arg(long, default_value = "aftercart.check")]
    pub check_topic: String,

    /// How long each network step may take.
    #[arg(long, default_value = "15s")]
    pub timeout: String,
}

/// Remembers librdkafka's errors (authentication, TLS) so a failed step can say why.
#[derive(Clone, Default)]
struct Recorder {
    errors: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn first(&self) -> Option<String> {
        self.errors.lock().expect("recorder lock").first().cloned()
    }
}

impl ClientContext for Recorder {
    fn error(&self, error: KafkaError, reason: &str) {
        let mut errors = self.errors.lock().expect("recorder lock");
        if errors.len() < 20 {
            errors.push(format!("{error}: {reason}"));
        }
    }
}

impl ConsumerContext for Recorder {}

/// Outcome lines and the overall verdict.
#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what}: {detail}");
    }

    fn warn(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("warn  {what}: {detail}");
    }

    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL  {what}: {detail}");
    }
}

pub async fn run(command: KafkaCommand) -> i32 {
    let KafkaCommand::Check(args) = command;
    let CheckArgs {
        topics,
        write,
        check_topic,
        timeout,
    } = *args;
    let timeout = match aftercart_runtime::config::parse_duration(&timeout) {
        Ok(timeout) => timeout,
        Err(problem) => {
            eprintln!("invalid configuration (1 problem(s)):\n  - --timeout: {problem}");
            return aftercart_runtime::EX_USAGE;
        }
    };
    let plan = match topics.plan() {
        Ok(plan) => plan,
        Err(errors) => {
            eprint!("{errors}");
            return aftercart_runtime::EX_USAGE;
        }
    };
    let mut report = Report::default();
    // Held, never dropped: the process exits below.
    let _admin = check(&plan, write, &check_topic, timeout, &mut report).await;
    let code = if report.failed == 0 {
        println!("all checks passed");
        0
    } else {
        println!("{} check(s) failed", report.failed);
        1
    };
    // The verdict is out: exit without tearing the admin client down. librdkafka 2.12 asserts
    // in rd_kafka_destroy (rd_kafka_q_destroy0: rkq_refcnt > 0) after an admin request timed
    // out or was refused as unsupported (seen against the mock cluster, which has neither
    // DescribeConfigs nor DeleteGroups); a one-shot diagnostic need not pay for that.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Runs every check; returns the admin client (see `run` for why it is never destroyed).
async fn check(
    plan: &TopicPlan,
    write: bool,
    check_topic: &str,
    timeout: Duration,
    report: &mut Report,
) -> Option<Arc<AdminClient<Recorder>>> {
    let settings = &plan.settings;
    let (_, version) = rdkafka::util::get_rdkafka_version();
    match builtin_features() {
        Ok(features) => report.ok("librdkafka", format!("{version}, built with {features}")),
        Err(error) => report.fail("librdkafka", error),
    }
    let protocol = settings
        .properties
        .get("security.protocol")
        .unwrap_or("plaintext");
    let mechanism = settings
        .properties
        .get("sasl.mechanism")
        .or(settings.properties.get("sasl.mechanisms"));
    report.ok(
        "settings",
        format!(
            "bootstrap {}, security.protocol {protocol}{}",
            settings.brokers,
            mechanism.map_or(String::new(), |m| format!(", sasl.mechanism {m}"))
        ),
    );

    let recorder = Recorder::default();
    let mut config = settings.client_config("aftercart-check");
    settings.apply_overrides(&mut config, ClientKind::Producer);
    let admin: Arc<AdminClient<Recorder>> = match config.create_with_context(recorder.clone()) {
        Ok(admin) => Arc::new(admin),
        Err(error) => {
            report.fail("client", settings.describe_client_error(&error));
            return None;
        }
    };

    // Cluster and brokers (librdkafka's metadata calls block: off the async threads).
    let metadata_admin = Arc::clone(&admin);
    let fetched = tokio::task::spawn_blocking(move || {
        let client = metadata_admin.inner();
        let metadata = client.fetch_metadata(None, timeout)?;
        let cluster_id = client.fetch_cluster_id(timeout);
        Ok::<_, KafkaError>((metadata, cluster_id))
    })
    .await
    .expect("metadata task does not panic");
    let (metadata, cluster_id) = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            let why = recorder.first().unwrap_or_else(|| error.to_string());
            report.fail("connect", settings.properties.redact(&why));
            return Some(admin);
        }
    };
    report.ok(
        "cluster",
        format!(
            "id {}, controller reached through {}",
            cluster_id.as_deref().unwrap_or("(not reported)"),
            metadata.orig_broker_name()
        ),
    );
    for broker in metadata.brokers() {
        report.ok(
            "broker",
            format!("{} at {}:{}", broker.id(), broker.host(), broker.port()),
        );
    }

    // The topics the services use: partitions and configs as the cluster has them.
    let partitions: BTreeMap<String, usize> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    let names: Vec<String> = plan.specs.iter().map(|s| s.name.clone()).collect();
    let configs = describe_topic_configs_with(&admin, &names, timeout).await;
    for spec in &plan.specs {
        let Some(count) = partitions.get(&spec.name) else {
            report.warn(
                &format!("topic {}", spec.name),
                "missing or not visible to this principal (the services create missing \
                 topics when allowed to; else run `aftercart topics create`)",
            );
            continue;
        };
        let shown = match configs.as_ref().map(|all| all.get(&spec.name)) {
            Ok(Some(Ok(values))) => {
                let listed: Vec<String> = SHOWN_CONFIGS
                    .iter()
                    .filter_map(|key| values.get(*key).map(|v| format!("{key}={v}")))
                    .collect();
                let differs: Vec<String> = spec
                    .configs
                    .iter()
                    .filter(|(key, wanted)| values.get(key).is_some_and(|v| v != wanted))
                    .map(|(key, wanted)| format!("{key} (aftercart creates it with {wanted})"))
                    .collect();
                if !differs.is_empty() {
                    report.warn(
                        &format!("topic {}", spec.name),
                        format!("differs from aftercart's settings: {}", differs.join(", ")),
                    );
                }
                listed.join(" ")
            }
            Ok(Some(Err(code))) => format!("configs not readable ({code})"),
            Ok(None) => "configs not reported".to_string(),
            Err(error) => format!("configs not readable ({error})"),
        };
        report.ok(
            &format!("topic {}", spec.name),
            format!("{count} partitions, {shown}"),
        );
    }
    // Topics joined by partition are checked by the services too (they refuse to start).
    let counts = partitions.clone().into_iter().collect();
    if let Err(error) =
        aftercart_kafka::topics::check_same_partitions(&counts, &plan.same_partitions)
    {
        report.fail("partitions", error);
    }

    report.ok(
        "consumer groups",
        format!(
            "the services join {} (and names starting with them)",
            plan.groups.join(", ")
        ),
    );
    // A consumer group, read-only: join with a throwaway group on the first journey topic.
    let journey = plan
        .same_partitions
        .first()
        .cloned()
        .unwrap_or_else(|| check_topic.to_string());
    let group = format!("aftercart-check-{}", uuid::Uuid::new_v4().simple());
    match join_group(
        settings,
        &journey,
        &group,
        timeout,
        &recorder,
        write.then_some(check_topic),
    )
    .await
    {
        Ok(detail) => report.ok("consumer group", detail),
        Err(error) => report.fail("consumer group", settings.properties.redact(&error)),
    }

    if !write {
        report.ok(
            "produce",
            format!("not tried: pass --write to produce one record to {check_topic} and consume it back"),
        );
        let _ = delete_group(&admin, &group, timeout).await;
        return Some(admin);
    }
    let exists = partitions.contains_key(check_topic);
    match produce_and_consume(
        settings,
        &admin,
        check_topic,
        exists,
        &group,
        timeout,
        &recorder,
    )
    .await
    {
        Ok(detail) => report.ok("produce and consume", detail),
        Err(error) => report.fail("produce and consume", settings.properties.redact(&error)),
    }
    match delete_group(&admin, &group, timeout).await {
        Ok(()) => report.ok("clean up", format!("consumer group {group} deleted")),
        Err(error) => report.warn(
            "clean up",
            format!("consumer group {group} left behind: {error}"),
        ),
    }
    Some(admin)
}

/// Joins `group` on `topic` and waits for an assignment; nothing is committed. With a check
/// topic (--write), subscribes to that instead, so the record can be read back later.
async fn join_group(
    settings: &KafkaSettings,
    topic: &str,
    group: &str,
    timeout: Duration,
    recorder: &Recorder,
    write_topic: Option<&str>,
) -> Result<String, String> {
    if write_topic.is_some() {
        return Ok(format!("checked with the record below (group {group})"));
    }
    let consumer = group_consumer(settings, group, recorder)?;
    let topic = topic.to_string();
    let group = group.to_string();
    let recorder = recorder.clone();
    tokio::task::spawn_blocking(move || {
        consumer.subscribe(&[&topic]).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Err(error)) = consumer.poll(Duration::from_millis(200)) {
                return Err(format!("{error}"));
            }
            if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                return Ok(format!("joined {group} on {topic} (nothing committed)"));
            }
        }
        Err(recorder
            .first()
            .unwrap_or_else(|| format!("no assignment on {topic} within {timeout:?}")))
    })
    .await
    .expect("group task does not panic")
}

fn group_consumer(
    settings: &KafkaSettings,
    group: &str,
    recorder: &Recorder,
) -> Result<BaseConsumer<Recorder>, String> {
    let mut config = settings.group_consumer_config("aftercart-check", group);
    config.set("enable.auto.commit", "false");
    settings.apply_overrides(&mut config, ClientKind::Consumer);
    config
        .create_with_context(recorder.clone())
        .map_err(|e| settings.describe_client_error(&e))
}

/// Produces one record to `topic` (created unless it `exists`), then reads it back in `group`.
async fn produce_and_consume(
    settings: &KafkaSettings,
    admin: &AdminClient<Recorder>,
    topic: &str,
    exists: bool,
    group: &str,
    timeout: Duration,
    recorder: &Recorder,
) -> Result<String, String> {
    if !exists {
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(settings.replication))
            .set("retention.ms", "3600000");
        match admin.create_topics(&[new_topic], &options).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => {}
                Some(Err((_, code))) => {
                    return Err(format!("cannot create the check topic {topic}: {code}"))
                }
            },
            Err(error) => return Err(format!("cannot create the check topic {topic}: {error}")),
        }
    }
    let mut config = aftercart_kafka::producer::producer_config(
        settings,
        &ProducerOptions {
            client_id: "aftercart-check".to_string(),
            message_timeout: timeout,
            max_message_bytes: 1 << 20,
            linger: Duration::ZERO,
        },
    );
    settings.apply_overrides(&mut config, ClientKind::Producer);
    let producer: FutureProducer = config
        .create()
        .map_err(|e| settings.describe_client_error(&e))?;
    let marker = uuid::Uuid::new_v4().to_string();
    let record = FutureRecord::to(topic)
        .key("aftercart-check")
        .payload(marker.as_bytes())
        .headers(OwnedHeaders::new().insert(Header {
            key: "aftercart-check",
            value: Some("1"),
        }));
    let (partition, offset) = producer
        .send(record, timeout)
        .await
        .map_err(|(error, _)| recorder.first().unwrap_or_else(|| error.to_string()))
        .map(|delivery| (delivery.partition, delivery.offset))?;
    let consumer = group_consumer(settings, group, recorder)?;
    let (topic_name, recorder) = (topic.to_string(), recorder.clone());
    tokio::task::spawn_blocking(move || {
        consumer.subscribe(&[&topic_name]).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) if message.payload() == Some(marker.as_bytes()) => {
                    return Ok(format!(
                        "produced to {topic_name} [{partition}] at offset {offset} and read it back in a fresh group"
                    ));
                }
                Some(Err(error)) => return Err(error.to_string()),
                _ => {}
            }
        }
        Err(recorder
            .first()
            .unwrap_or_else(|| format!("the record did not come back within {timeout:?}")))
    })
    .await
    .expect("consume task does not panic")
}

async fn delete_group(
    admin: &AdminClient<Recorder>,
    group: &str,
    timeout: Duration,
) -> Result<(), String> {
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    match admin.delete_groups(&[group], &options).await {
        Ok(results) => match results.into_iter().next() {
            Some(Err((_, code))) if code != RDKafkaErrorCode::GroupIdNotFound => {
                Err(code.to_string())
            }
            _ => Ok(()),
        },
        Err(error) => Err(error.to_string()),
    }
}

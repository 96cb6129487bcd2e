//! `aftercart spool inspect|drain`: look at an ingress spool, and publish it to Kafka by hand
//! (a volume left behind by a scaled-down replica, or a spool moved off a broken node).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aftercart_ingress::spool::drainer::Drainer;
use aftercart_ingress::spool::{inspect, unix_ms, OpenError, Spool, SpoolMetrics};
use aftercart_kafka::producer::{build_producer, ProducerOptions};
use aftercart_kafka::{ClientStats, KafkaArgs, StatsContext, TopicNames};
use aftercart_runtime::config::{parse_duration, ConfigErrors};
use aftercart_runtime::process::EX_UNAVAILABLE;
use aftercart_runtime::{Health, EX_USAGE};
use prometheus::Registry;
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

/// The largest record a spool can hold: the largest accepted body plus headers.
const MAX_RECORD_BYTES: usize = (512 << 20) + (64 << 10);

/// The spool directory `spool inspect` and `spool drain` work on.
#[derive(Debug, clap::Args)]
pub struct SpoolDir {
    /// The spool directory.
    #[arg(
        long = "ingress-spool-dir",
        alias = "spool-dir",
        env = "AFTERCART_INGRESS_SPOOL_DIR",
        default_value = "/var/lib/aftercart/spool"
    )]
    spool_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum SpoolCommand {
    /// Show what a spool holds: events not yet in Kafka, their bytes and age, per topic, and
    /// any damage. Read-only; safe while an ingress uses the spool.
    Inspect {
        #[command(flatten)]
        dir: SpoolDir,
    },
    /// Publish every spooled event to Kafka in arrival order, then truncate the spool. Refuses
    /// while an ingress holds the spool (it drains by itself).
    Drain {
        #[command(flatten)]
        dir: SpoolDir,
        #[command(flatten)]
        kafka: Box<KafkaArgs>,
        /// Give up after this long (what is left stays in the spool).
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
}

pub async fn run(command: SpoolCommand) -> i32 {
    match command {
        SpoolCommand::Inspect { dir } => run_inspect(&dir.spool_dir),
        SpoolCommand::Drain {
            dir,
            kafka,
            timeout,
        } => run_drain(&dir.spool_dir, &kafka, &timeout).await,
    }
}

fn run_inspect(dir: &Path) -> i32 {
    if !dir.is_dir() {
        eprintln!("{} is not a directory", dir.display());
        return EX_UNAVAILABLE;
    }
    let report = match inspect(dir) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("cannot read the spool in {}: {error}", dir.display());
            return EX_UNAVAILABLE;
        }
    };
    println!("spool {}", dir.display());
    println!("  drained below entry {}", report.checkpoint);
    println!(
        "  pending: {} events, {} bytes",
        report.pending_events, report.pending_bytes
    );
    if let Some(oldest) = report.oldest_unix_ms {
        let age = Duration::from_millis(unix_ms().saturating_sub(oldest));
        println!(
            "  oldest pending event: {} ago",
            humantime::format_duration(round_secs(age))
        );
    }
    for (topic, count) in &report.per_topic {
        println!("  topic {topic}: {count} events");
    }
    let aside = report.held_aside;
    if aside.events > 0 {
        println!(
            "  set aside in refused/ (Kafka refused them for their size): {} events, {} bytes; \
             publish them with `aftercart spool drain --ingress-spool-dir {}` once the topics take them",
            aside.events,
            aside.bytes,
            dir.join(aftercart_ingress::spool::refused::REFUSED_DIR).display()
        );
    }
    for segment in &report.segments {
        let damage = match segment.damage {
            Some((why, bytes)) => {
                format!(", DAMAGED: {why} ({bytes} bytes after the intact prefix)")
            }
            None => String::new(),
        };
        println!(
            "  segment {}: {} bytes, {} pending events{damage}",
            segment.file, segment.file_bytes, segment.pending_events
        );
    }
    0
}

fn round_secs(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

async fn run_drain(dir: &Path, kafka: &KafkaArgs, timeout: &str) -> i32 {
    let mut errors = ConfigErrors::new();
    let settings = kafka.validate(&mut errors, None);
    let timeout = errors.check("--timeout", parse_duration(timeout));
    let (Some(settings), Some(timeout)) = (settings, timeout) else {
        eprint!("{errors}");
        return EX_USAGE;
    };
    if !errors.is_empty() {
        eprint!("{errors}");
        return EX_USAGE;
    }
    // No size limit here: draining only removes.
    let (spool, recovered) = match Spool::open(dir, u64::MAX, SpoolMetrics::unregistered()) {
        Ok(opened) => opened,
        Err(OpenError::Locked(_)) => {
            eprintln!(
                "another process holds the spool in {}: an ingress (it drains its own spool by \
                 itself; on a refused/ directory it is setting an event aside: try again in a \
                 moment) or another drain",
                dir.display()
            );
            return EX_UNAVAILABLE;
        }
        Err(error) => {
            eprintln!("{error}");
            return EX_UNAVAILABLE;
        }
    };
    if recovered.discarded_bytes > 0 {
        eprintln!(
            "cut {} damaged bytes from the spool's tail",
            recovered.discarded_bytes
        );
    }
    if recovered.events == 0 {
        println!("the spool in {} is empty", dir.display());
        return 0;
    }
    println!(
        "draining {} events ({} bytes) to {}",
        recovered.events, recovered.bytes, settings.brokers
    );
    let stats = match ClientStats::register("aftercart_spool_drain_", &Registry::new()) {
        Ok(stats) => stats,
        Err(error) => {
            eprintln!("cannot set up client statistics: {error}");
            return 1;
        }
    };
    let producer = match build_producer(
        &settings,
        &ProducerOptions {
            client_id: "aftercart-spool-drain".to_string(),
            message_timeout: Duration::from_secs(60),
            max_message_bytes: MAX_RECORD_BYTES,
            linger: Duration::from_millis(5),
        },
        StatsContext::new(stats.clone(), stats.watch(&Health::new())),
    ) {
        Ok(producer) => producer,
        Err(error) => {
            eprintln!("cannot create the Kafka producer: {error}");
            return 1;
        }
    };
    let ready = Health::new().component("kafka");
    ready.set_ready(true);
    let drainer = Drainer::new(
        spool.clone(),
        producer.clone(),
        TopicNames::new(&settings.topic_prefix).quarantine(),
        ready,
    );
    let (finish, stop) = (CancellationToken::new(), CancellationToken::new());
    finish.cancel();
    let mut draining = tokio::spawn(drainer.run(finish, stop.clone()));
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = &mut draining => break,
            _ = progress.tick() => println!("  {} events left", spool.pending_events()),
            () = &mut deadline => {
                eprintln!("timed out after {}", humantime::format_duration(timeout));
                stop.cancel();
            }
            _ = tokio::signal::ctrl_c() => stop.cancel(),
        }
    }
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    let left = spool.pending_events();
    if left == 0 {
        println!("drained {} events; the spool is empty", recovered.events);
        0
    } else {
        eprintln!("{left} events are still in the spool");
        1
    }
}

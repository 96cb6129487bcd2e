//! The command line: subcommands, global flags, and their environment variables.

use aftercart_abandonment::AbandonmentArgs;
use aftercart_audiences::AudiencesArgs;
use aftercart_ingress::IngressArgs;
use aftercart_kafka::KafkaArgs;
use aftercart_loadgen::LoadgenArgs;
use aftercart_referrals::ReferralsArgs;
use clap::{Parser, Subcommand};

use crate::cmd::docs::DocsArgs;
use crate::cmd::kafka::KafkaCommand;
use crate::cmd::send::SendArgs;
use crate::cmd::spool::SpoolCommand;
use crate::cmd::topics::TopicsCommand;

/// aftercart: Shopify webhooks into Kafka, and the post-checkout services that act on them.
///
/// Every flag also reads an AFTERCART_* environment variable (shown in each --help).
/// Invalid configuration lists every problem at once and exits with code 64.
#[derive(Debug, Parser)]
#[command(name = "aftercart", version, propagate_version = true)]
pub struct Cli {
    /// Log line format: text or json.
    #[arg(
        long,
        env = "AFTERCART_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: String,

    /// Log filter in RUST_LOG syntax, e.g. info or info,aftercart_ingress=debug.
    #[arg(long, env = "AFTERCART_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Allow plain http:// for the outbound URLs that receive personal data or credentials
    /// (delivery webhooks, ad platform APIs, the Shopify Admin API): for local development and
    /// tests only (`true`/`false`). `aftercart dev` allows it for its own local destinations.
    #[arg(
        long,
        env = "AFTERCART_ALLOW_INSECURE_HTTP",
        default_value = "false",
        global = true
    )]
    pub allow_insecure_http: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook ingress: verify Shopify deliveries and publish them to Kafka.
    Ingress(Box<IngressArgs>),
    /// Run the cart-abandonment segmentation service (a Kafka consumer group).
    Abandonment(Box<AbandonmentCommand>),
    /// Run the referral trigger service: invites, attribution, fraud checks, rewards.
    Referrals(Box<ReferralsCommand>),
    /// Run the retargeting audience export service: consented audiences kept in sync on Meta,
    /// Google Ads, TikTok, files and webhooks.
    Audiences(Box<AudiencesCommand>),
    /// Run the whole pipeline locally, with an embedded Kafka broker unless
    /// AFTERCART_KAFKA_BROKERS is set.
    Dev(Box<DevArgs>),
    /// Sign and send webhook payloads (files, built-in samples, or a demo journey) to an ingress.
    Send(SendArgs),
    /// Load an ingress with realistic signed Shopify traffic (open or closed loop) and report
    /// throughput and latency percentiles.
    Loadgen(Box<LoadgenArgs>),
    /// Manage the Kafka topics aftercart uses.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Check the connection to Kafka with the services' settings (TLS, SASL, topics, ACLs).
    #[command(subcommand)]
    Kafka(KafkaCommand),
    /// Inspect or drain an ingress spool (the durable buffer for webhooks Kafka did not
    /// acknowledge in time).
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Write the configuration and metrics references (docs/reference/) from the code, or check
    /// that the committed ones are current.
    Docs(DocsArgs),
}

/// Flags every consumer service command has besides its own.
#[derive(Debug, clap::Args)]
pub struct ProcessArgs {
    /// Admin listen address for /livez, /readyz and /metrics [default: 0.0.0.0:9090].
    #[arg(long, env = "AFTERCART_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Deadline for a graceful shutdown.
    #[arg(long, env = "AFTERCART_SHUTDOWN_TIMEOUT", default_value = "15s")]
    pub shutdown_timeout: String,
}

/// Flags of `aftercart abandonment`.
#[derive(Debug, clap::Args)]
pub struct AbandonmentCommand {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub abandonment: AbandonmentArgs,

    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Flags of `aftercart referrals`.
#[derive(Debug, clap::Args)]
pub struct ReferralsCommand {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub referrals: ReferralsArgs,

    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Flags of `aftercart audiences`.
#[derive(Debug, clap::Args)]
pub struct AudiencesCommand {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub audiences: AudiencesArgs,

    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Flags of `aftercart dev`: every service's, under one set of Kafka and admin flags.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub ingress: IngressArgs,

    #[command(flatten)]
    pub abandonment: AbandonmentArgs,

    #[command(flatten)]
    pub referrals: ReferralsArgs,

    #[command(flatten)]
    pub audiences: AudiencesArgs,

    /// Run only the embedded broker, every topic created, and print its address (benchmarks
    /// and other Kafka clients use it); Ctrl-C stops it.
    #[arg(long)]
    pub broker_only: bool,
}

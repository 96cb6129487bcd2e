//! The command line: subcommands, global flags, and their environment variables.

use aftercart_abandonment::AbandonmentArgs;
use aftercart_audiences::AudiencesArgs;
use aftercart_ingress::IngressArgs;
use aftercart_journey::JourneyArgs;
use aftercart_kafka::KafkaArgs;
use aftercart_loadgen::LoadgenArgs;
use aftercart_nudges::NudgesArgs;
use aftercart_referrals::config::ReferralInviteArgs;
use aftercart_referrals::ReferralsArgs;
use aftercart_runtime::ProcessArgs;
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
        global = true,
        help_heading = "Logging"
    )]
    pub log_format: String,

    /// Log filter in RUST_LOG syntax, e.g. info or info,aftercart_ingress=debug.
    #[arg(
        long,
        env = "AFTERCART_LOG",
        default_value = "info",
        global = true,
        help_heading = "Logging"
    )]
    pub log: String,

    /// Allow plain http:// for the outbound URLs that receive personal data or credentials
    /// (delivery webhooks, ad platform APIs, the Shopify Admin API): for local development and
    /// tests only (`true`/`false`). `aftercart dev` allows it for its own local destinations.
    #[arg(
        long,
        env = "AFTERCART_ALLOW_INSECURE_HTTP",
        default_value = "false",
        global = true,
        help_heading = "Outbound HTTP"
    )]
    pub allow_insecure_http: String,

    /// Memory allocator: auto (mimalloc for the consumer services, the system's for the
    /// rest), mimalloc or system. Read once, at the process's first allocation, before this
    /// parser runs (`aftercart-allocator`); listed here so that it is validated and documented.
    #[arg(
        long,
        env = "AFTERCART_ALLOCATOR",
        default_value = "auto",
        value_parser = ["auto", "mimalloc", "system"],
        global = true,
        help_heading = "Process"
    )]
    pub allocator: String,

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
    /// Run the post-purchase journey service: orders and fulfilments become touchpoints (order
    /// confirmed, shipped, delivered, review request, replenishment reminder).
    Journey(Box<JourneyCommand>),
    /// Run the retargeting audience export service: consented audiences kept in sync on Meta,
    /// Google Ads, TikTok, files and webhooks.
    Audiences(Box<AudiencesCommand>),
    /// Run the recovery nudge service: reminders after an abandonment, stopped by any purchase
    /// of the same person, sent to Klaviyo, a signed webhook or files.
    Nudges(Box<NudgesCommand>),
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

/// Flags of `aftercart journey`.
#[derive(Debug, clap::Args)]
pub struct JourneyCommand {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub journey: JourneyArgs,

    /// The referral invite moment, shared with the referrals service.
    #[command(flatten)]
    pub invite: ReferralInviteArgs,

    /// The shared state hash key (redaction markers hold emails and phones as hashes keyed
    /// with it), as the referrals and nudges services have it.
    #[command(flatten)]
    pub state_hash: aftercart_runtime::state_hash::StateHashArgs,

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

/// Flags of `aftercart nudges`.
#[derive(Debug, clap::Args)]
pub struct NudgesCommand {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub nudges: NudgesArgs,

    /// The Shopify Admin API client (recovery discounts), as the referrals service has it.
    #[command(flatten)]
    pub shopify: aftercart_shopify_admin::AdminArgs,

    /// The shared state hash key (people are matched by hashes keyed with it), as the
    /// referrals service has it.
    #[command(flatten)]
    pub state_hash: aftercart_runtime::state_hash::StateHashArgs,

    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Flags of `aftercart dev`: every service's, under one set of Kafka and admin flags.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Run only the embedded broker, every topic created, and print its address (benchmarks
    /// and other Kafka clients use it); Ctrl-C stops it.
    #[arg(long)]
    pub broker_only: bool,

    #[command(flatten)]
    pub ingress: IngressArgs,

    #[command(flatten)]
    pub abandonment: AbandonmentArgs,

    #[command(flatten)]
    pub referrals: ReferralsArgs,

    #[command(flatten)]
    pub audiences: AudiencesArgs,

    #[command(flatten)]
    pub nudges: NudgesArgs,

    #[command(flatten)]
    pub journey: JourneyArgs,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    /// Clap's own consistency checks: under `aftercart dev`, `topics create` and `kafka check`
    /// every service's flags are side by side, so two with one name (or one id) would read each
    /// other's value. (Release builds skip these checks; debug builds panic on any command line.)
    #[test]
    fn every_command_line_is_consistent_with_all_services_side_by_side() {
        Cli::command().debug_assert();
    }

    /// The allocator is chosen before this parser runs, by the subcommand's name: its two
    /// lists must hold every subcommand once, and its flag and variable must be this parser's.
    #[test]
    fn the_allocator_knows_every_subcommand_and_reads_this_parsers_flag() {
        let mut cli = Cli::command();
        cli.build();
        let mut named: Vec<&str> = aftercart_allocator::CONSUMER_COMMANDS
            .iter()
            .chain(aftercart_allocator::OTHER_COMMANDS)
            .copied()
            .collect();
        named.sort_unstable();
        let mut commands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        commands.sort_unstable();
        assert_eq!(named, commands);
        let flag = cli
            .get_arguments()
            .find(|arg| arg.get_id() == "allocator")
            .expect("the flag exists");
        assert_eq!(
            format!("--{}", flag.get_long().unwrap_or_default()),
            aftercart_allocator::FLAG
        );
        assert_eq!(
            flag.get_env().and_then(|e| e.to_str()),
            Some(aftercart_allocator::VARIABLE)
        );
    }

    /// What the allocator chose from a raw command line is what this parser makes of it, for
    /// the forms an operator writes (the flag before or after the subcommand, with `=` or not,
    /// other global flags first); the one known difference is a flag value named like a
    /// subcommand, which the binary warns about.
    #[test]
    fn the_allocators_reading_of_a_command_line_is_this_parsers() {
        for line in [
            &["aftercart", "referrals"][..],
            &["aftercart", "ingress"],
            &["aftercart", "dev"],
            &[
                "aftercart",
                "--log-format",
                "json",
                "--log",
                "info",
                "abandonment",
            ],
            &["aftercart", "--allocator", "system", "nudges"],
            &["aftercart", "audiences", "--allocator=system"],
            &["aftercart", "ingress", "--allocator", "mimalloc"],
            &["aftercart", "--allocator=auto", "journey"],
            &["aftercart", "topics", "create"],
        ] {
            let matches = Cli::command()
                .try_get_matches_from(line)
                .unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let cli = Cli::from_arg_matches(&matches).expect("parsed");
            let raw: Vec<u8> = line.iter().flat_map(|a| a.bytes().chain([0])).collect();
            // The parser reads the variable too, where the test's environment sets it.
            let variable = std::env::var(aftercart_allocator::VARIABLE).ok();
            assert_eq!(
                aftercart_allocator::choose(&raw, variable.as_deref().map(str::as_bytes)),
                aftercart_allocator::expected(&cli.allocator, matches.subcommand_name()),
                "{line:?}"
            );
        }
        let known_difference = ["aftercart", "--log", "ingress", "referrals"];
        let matches = Cli::command()
            .try_get_matches_from(known_difference)
            .expect("parsed");
        let raw: Vec<u8> = known_difference
            .iter()
            .flat_map(|a| a.bytes().chain([0]))
            .collect();
        assert_ne!(
            aftercart_allocator::choose(&raw, None),
            aftercart_allocator::expected("auto", matches.subcommand_name()),
            "the raw reading takes `ingress`, the parser `referrals`"
        );
    }

    /// `--help` groups settings by heading (Kafka, the service, Process, Logging): every flag
    /// that is a setting of a service command has one.
    #[test]
    fn every_setting_of_a_service_command_is_under_a_help_heading() {
        let mut cli = Cli::command();
        cli.build();
        for name in [
            "ingress",
            "abandonment",
            "referrals",
            "audiences",
            "nudges",
            "journey",
            "dev",
        ] {
            let command = cli.find_subcommand(name).expect("the command exists");
            for arg in command
                .get_arguments()
                .filter(|arg| arg.get_env().is_some())
            {
                assert!(
                    arg.get_help_heading().is_some(),
                    "aftercart {name}: --{} has no help heading",
                    arg.get_long().unwrap_or_default()
                );
            }
        }
    }
}

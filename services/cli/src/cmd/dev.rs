//! `aftercart dev`: the whole pipeline on this machine, with an embedded Kafka broker
//! (librdkafka's mock cluster: real wire protocol, in memory) unless AFTERCART_KAFKA_BROKERS is set.

use std::collections::BTreeMap;

use aftercart_abandonment::AbandonmentDefaults;
use aftercart_audiences::AudiencesDefaults;
use aftercart_ingress::app::topic_specs;
use aftercart_ingress::{IngressArgs, IngressDefaults};
use aftercart_journey::config::JourneyDefaults;
use aftercart_kafka::TopicSpec;
use aftercart_nudges::NudgesDefaults;
use aftercart_referrals::ReferralsDefaults;
use aftercart_runtime::{ConfigErrors, EX_USAGE};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::cli::DevArgs;
use aftercart_abandonment::AbandonmentService;
use aftercart_audiences::AudiencesService;
use aftercart_journey::JourneyService;
use aftercart_nudges::NudgesService;
use aftercart_referrals::ReferralsService;
use aftercart_runtime::process::bind;
use aftercart_runtime::{run_service, Process};

use crate::serve::run_ingress;

/// The signing secret of the local stack when none is configured. Not a secret: it only ever
/// guards a developer's own machine.
pub const DEV_SECRET: &str = "aftercart-dev-secret";

/// Short enough for a demo to show an abandonment while you watch.
const DEV_ABANDON_AFTER: &str = "20s";

/// Referral codes of the local stack are keyed with this (not a secret either).
pub const DEV_CODE_SECRET: &str = "aftercart-dev-referral-code-secret";

/// Fingerprints in the local stack's state are keyed with this (not a secret either).
pub const DEV_STATE_HASH_KEY: &str = "aftercart-dev-state-hash-key";

/// Short enough for a demo to show a reward granted while you watch.
const DEV_REVIEW_WINDOW: &str = "1m";

/// The demo's buyer is invited to refer when the parcel arrives, this long after (the journey
/// relays the invite as a touchpoint).
const DEV_INVITE_TRIGGER: &str = "delivered";
const DEV_INVITE_DELAY: &str = "5s";

/// Short enough for a demo to show a review request while you watch.
const DEV_REVIEW_REQUEST_AFTER: &str = "10s";

/// A KPI "day" of the dev stack: a daily KPI record per shop every minute.
const DEV_KPI_DAY: &str = "1m";

/// Short enough for audience files to appear soon after an abandonment.
const DEV_FLUSH_INTERVAL: &str = "5s";
/// Short enough for `make demo` to show a nudge within a minute of the abandonment.
const DEV_NUDGE_STEPS: &str = "15s,45s";
/// The nudges configuration the dev stack runs when none is given and it exists (file
/// destination, short steps).
const DEV_NUDGES_CONFIG: &str = "examples/nudges.toml";

/// The dev stack's spool, under the working directory (git-ignored) rather than /var/lib.
const DEV_SPOOL_DIR: &str = ".aftercart/spool";

pub async fn run(args: DevArgs) -> i32 {
    // The local stack's destinations (files, local webhooks, stand-in platforms) are plain http.
    aftercart_runtime::outbound::allow_insecure_http();
    let external = args
        .ingress
        .kafka
        .brokers
        .as_deref()
        .is_some_and(|b| !b.trim().is_empty());
    // The embedded broker lives as long as this function: it is dropped after the services stop.
    let embedded = if external {
        None
    } else {
        match MockCluster::new(1) {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                tracing::error!(%error, "Cannot start the embedded Kafka broker.");
                return 1;
            }
        }
    };
    let fallback_brokers = embedded.as_ref().map(MockCluster::bootstrap_servers);
    let ingress_defaults = IngressDefaults {
        listen: "127.0.0.1:8080",
        admin_listen: "127.0.0.1:9090",
        fallback_secret: Some(DEV_SECRET),
        fallback_brokers: fallback_brokers.clone(),
        spool_dir: DEV_SPOOL_DIR,
    };
    let abandonment_defaults = AbandonmentDefaults {
        abandon_after: DEV_ABANDON_AFTER,
        fallback_brokers: fallback_brokers.clone(),
    };
    let audiences_defaults = AudiencesDefaults {
        fallback_brokers: fallback_brokers.clone(),
        flush_interval: DEV_FLUSH_INTERVAL,
    };
    let nudges_defaults = NudgesDefaults {
        steps: DEV_NUDGE_STEPS,
        state_hash_key: Some(DEV_STATE_HASH_KEY),
        fallback_brokers: fallback_brokers.clone(),
    };
    let journey_defaults = JourneyDefaults {
        fallback_brokers: fallback_brokers.clone(),
        review_request_after: DEV_REVIEW_REQUEST_AFTER,
        kpi_day_length: DEV_KPI_DAY,
        state_hash_key: Some(DEV_STATE_HASH_KEY),
    };
    let referrals_defaults = ReferralsDefaults {
        fallback_brokers,
        code_secret: Some(DEV_CODE_SECRET.to_string()),
        state_hash_key: Some(DEV_STATE_HASH_KEY.to_string()),
        review_window: DEV_REVIEW_WINDOW,
        invite_trigger: DEV_INVITE_TRIGGER,
        invite_delay: DEV_INVITE_DELAY,
    };
    let mut errors = ConfigErrors::new();
    let ingress = args
        .ingress
        .validate(&ingress_defaults)
        .map_err(|e| errors.extend(e))
        .ok();
    let shutdown_timeout = ingress
        .as_ref()
        .map(|c| c.shutdown_timeout)
        .unwrap_or_default();
    let abandonment = args
        .abandonment
        .validate(&args.ingress.kafka, shutdown_timeout, &abandonment_defaults)
        .map_err(|e| errors.extend(e))
        .ok();
    let referrals = args
        .referrals
        .validate(&args.ingress.kafka, shutdown_timeout, &referrals_defaults)
        .map_err(|e| errors.extend(e))
        .ok();
    let audiences = args
        .audiences
        .validate(&args.ingress.kafka, shutdown_timeout, &audiences_defaults)
        .map_err(|e| errors.extend(e))
        .ok();
    let mut nudges_args = args.nudges.clone();
    if nudges_args.nudges_config.is_none() && std::path::Path::new(DEV_NUDGES_CONFIG).exists() {
        nudges_args.nudges_config = Some(DEV_NUDGES_CONFIG.into());
    }
    let nudges = nudges_args
        .validate(
            &args.ingress.kafka,
            &args.referrals.shopify,
            &args.referrals.state_hash,
            shutdown_timeout,
            &nudges_defaults,
        )
        .map_err(|e| errors.extend(e))
        .ok();
    let journey = args
        .journey
        .validate(
            &args.ingress.kafka,
            &args.referrals.state_hash,
            shutdown_timeout,
            args.referrals.invite.for_journey(DEV_INVITE_TRIGGER),
            &journey_defaults,
        )
        .map_err(|e| errors.extend(e))
        .ok();
    let (
        Some(ingress),
        Some(abandonment),
        Some(referrals),
        Some(audiences),
        Some(nudges),
        Some(journey),
    ) = (ingress, abandonment, referrals, audiences, nudges, journey)
    else {
        eprint!("{errors}");
        return EX_USAGE;
    };
    if let Some(cluster) = &embedded {
        if let Err(code) = create_topics(
            cluster,
            topic_specs(&ingress.kafka, ingress.max_body_bytes),
            &abandonment,
            &referrals,
            &audiences,
            &nudges,
            &journey,
        ) {
            return code;
        }
    }
    if args.broker_only {
        return serve_broker_only(embedded.as_ref()).await;
    }
    let process = match Process::start(ingress.admin_listen).await {
        Ok(process) => process,
        Err(code) => return code,
    };
    let listener = match bind("webhooks", ingress.listen, ingress.listen_backlog) {
        Ok(listener) => listener,
        Err(code) => return process.finish(code),
    };
    let webhook_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_addr = process.admin_addr;
    let broker_note = if embedded.is_some() {
        "embedded, in memory"
    } else {
        "external"
    };
    println!(
        "\naftercart dev stack\n\
         \x20 Kafka brokers  {brokers}  ({broker_note}; any Kafka client can read it, e.g. kcat -b {brokers} -L)\n\
         \x20 Topics         {prefix}checkouts, {prefix}carts, {prefix}orders, {prefix}fulfillments, {prefix}customers, {prefix}compliance, {prefix}other, {prefix}quarantine\n\
         \x20 Webhook URL    http://{webhook_addr}/webhooks/shopify\n\
         \x20 Signing secret {secret}\n\
         \x20 Abandonments   {output} (checkouts abandoned after {delay})\n\
         \x20 Referrals      {invites}, {rewards} (rewards granted after {review})\n\
         \x20 Audiences      {audience_list} -> {audience_dirs}\n\
         \x20 Nudges         {nudges_topic} -> {nudges_destination}\n\
         \x20 Journey        {touchpoints} (review request {review_request} after delivery{journey_destination})\n\
         \x20 Admin          http://{admin_addr}/metrics  /readyz  /livez\n\
         \x20 Try            make demo   (or: aftercart send --demo)\n\
         \x20 Stop           Ctrl-C\n",
        brokers = ingress.kafka.brokers,
        prefix = ingress.kafka.topic_prefix,
        secret = shown_secret(&args.ingress),
        output = abandonment.output_topic,
        delay = humantime::format_duration(std::time::Duration::from_millis(abandonment.rules.abandon_after_ms as u64)),
        invites = referrals.invites_topic,
        rewards = referrals.rewards_topic,
        review = humantime::format_duration(std::time::Duration::from_millis(referrals.rules.review_window_ms as u64)),
        nudges_topic = nudges.nudges_topic,
        nudges_destination = match &nudges.destination {
            Some(aftercart_nudges::config::DestinationConfig::File(dir)) => dir.display().to_string(),
            Some(other) => other.kind().to_string(),
            None => "(topic only)".to_string(),
        },
        touchpoints = journey.touchpoints_topic,
        review_request = journey
            .rules
            .review_after_ms
            .map(|ms| humantime::format_duration(std::time::Duration::from_millis(ms as u64)).to_string())
            .unwrap_or_else(|| "off".into()),
        journey_destination = match &journey.destination {
            Some(aftercart_journey::config::DestinationConfig::File(dir)) => format!("; files in {}", dir.display()),
            Some(_) => "; delivered to its destination".to_string(),
            None => String::new(),
        },
        audience_list = audiences
            .rules
            .audiences
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        audience_dirs = audiences
            .destinations
            .iter()
            .map(|(name, d)| match d {
                aftercart_audiences::config::Destination::File(f) => f.dir.display().to_string(),
                other => format!("{name} ({})", other.kind()),
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    let (ingress_code, abandonment_code, referrals_code, audiences_code, nudges_code, journey_code) = tokio::join!(
        run_ingress(&ingress, listener, &process),
        run_service::<AbandonmentService>(&abandonment, &process),
        run_service::<ReferralsService>(&referrals, &process),
        run_service::<AudiencesService>(&audiences, &process),
        run_service::<NudgesService>(&nudges, &process),
        run_service::<JourneyService>(&journey, &process)
    );
    let code = process.finish(
        ingress_code
            .max(abandonment_code)
            .max(referrals_code)
            .max(audiences_code)
            .max(nudges_code)
            .max(journey_code),
    );
    drop(embedded);
    if code == 0 {
        println!("aftercart dev stack stopped.");
    }
    code
}

/// `--broker-only`: the embedded broker and its topics, until a signal.
async fn serve_broker_only(embedded: Option<&MockCluster<'static, DefaultProducerContext>>) -> i32 {
    let Some(cluster) = embedded else {
        eprintln!("--broker-only runs the embedded broker: unset AFTERCART_KAFKA_BROKERS");
        return EX_USAGE;
    };
    // Listen before announcing: a script may signal as soon as it reads the line.
    let shutdown = aftercart_runtime::shutdown::Shutdown::new();
    shutdown.listen_for_signals();
    // One line a script can read the address from.
    println!("aftercart dev broker {}", cluster.bootstrap_servers());
    shutdown.token().cancelled().await;
    0
}

/// The mock cluster has no CreateTopics handler: make every topic through its own API.
fn create_topics(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    ingress: Vec<TopicSpec>,
    abandonment: &aftercart_abandonment::AbandonmentConfig,
    referrals: &aftercart_referrals::ReferralsConfig,
    audiences: &aftercart_audiences::AudiencesConfig,
    nudges: &aftercart_nudges::NudgesConfig,
    journey: &aftercart_journey::JourneyConfig,
) -> Result<(), i32> {
    let specs: BTreeMap<String, TopicSpec> = ingress
        .into_iter()
        .chain(aftercart_abandonment::topic_specs(abandonment).0)
        .chain(aftercart_referrals::topic_specs(referrals).0)
        .chain(aftercart_audiences::topic_specs(audiences).0)
        .chain(aftercart_nudges::topic_specs(nudges).0)
        .chain(aftercart_journey::topic_specs(journey).0)
        .map(|spec| (spec.name.clone(), spec))
        .collect();
    for spec in specs.values() {
        if let Err(error) = cluster.create_topic(&spec.name, spec.partitions, spec.replication) {
            tracing::error!(topic = %spec.name, %error, "Cannot create a topic on the embedded broker.");
            return Err(1);
        }
    }
    Ok(())
}

/// The secret a developer signs with, as the banner shows it: the dev secret, the first of
/// AFTERCART_SHOPIFY_SECRETS, or where the file is (its contents stay unprinted).
fn shown_secret(args: &IngressArgs) -> String {
    match (&args.secrets, &args.secrets_file) {
        (Some(list), _) => list
            .split(',')
            .map(str::trim)
            .find(|s| !s.is_empty())
            .unwrap_or_default()
            .to_string(),
        (None, Some(path)) => format!("(first line of {})", path.display()),
        (None, None) => DEV_SECRET.to_string(),
    }
}

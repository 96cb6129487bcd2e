//! `aftercart dev`: the whole pipeline on this machine, with an embedded Kafka broker
//! (librdkafka's mock cluster: real wire protocol, in memory) unless AFTERCART_KAFKA_BROKERS is set.

use aftercart_ingress::app::topic_specs;
use aftercart_ingress::{IngressArgs, IngressDefaults};
use aftercart_runtime::{Health, Shutdown, EX_USAGE};
use prometheus::Registry;
use rdkafka::mocking::MockCluster;

use crate::serve::{bind, run_ingress, Process};

/// The signing secret of the local stack when none is configured. Not a secret: it only ever
/// guards a developer's own machine.
pub const DEV_SECRET: &str = "aftercart-dev-secret";

pub async fn run(args: IngressArgs) -> i32 {
    // The embedded broker lives as long as this function: it is dropped after the services stop.
    let embedded = if args
        .kafka
        .brokers
        .as_deref()
        .is_some_and(|b| !b.trim().is_empty())
    {
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
    let defaults = IngressDefaults {
        listen: "127.0.0.1:8080",
        admin_listen: "127.0.0.1:9090",
        fallback_secret: Some(DEV_SECRET),
        fallback_brokers: embedded.as_ref().map(MockCluster::bootstrap_servers),
    };
    let config = match args.validate(&defaults) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return EX_USAGE;
        }
    };
    if let Some(cluster) = &embedded {
        // The mock cluster has no CreateTopics handler: make the topics through its own API.
        for spec in topic_specs(&config.kafka, config.max_body_bytes) {
            if let Err(error) = cluster.create_topic(&spec.name, spec.partitions, spec.replication)
            {
                tracing::error!(topic = %spec.name, %error, "Cannot create a topic on the embedded broker.");
                return 1;
            }
        }
    }
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let process = Process {
        registry: Registry::new(),
        health: Health::new(),
        stop: shutdown.token(),
    };
    let admin_listener = match bind("the admin port", config.admin_listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let listener = match bind("webhooks", config.listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let webhook_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_addr = admin_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let broker_note = if embedded.is_some() {
        "embedded, in memory"
    } else {
        "external"
    };
    println!(
        "\naftercart dev stack\n\
         \x20 Kafka brokers  {brokers}  ({broker_note}; any Kafka client can read it, e.g. kcat -b {brokers} -L)\n\
         \x20 Topics         {prefix}checkouts, {prefix}carts, {prefix}orders, {prefix}customers, {prefix}compliance, {prefix}other, {prefix}quarantine\n\
         \x20 Webhook URL    http://{webhook_addr}/webhooks/shopify\n\
         \x20 Signing secret {secret}\n\
         \x20 Admin          http://{admin_addr}/metrics  /readyz  /livez\n\
         \x20 Try            make demo   (or: aftercart send --demo)\n\
         \x20 Stop           Ctrl-C\n",
        brokers = config.kafka.brokers,
        prefix = config.kafka.topic_prefix,
        secret = shown_secret(&args),
    );
    let admin_stop = process.spawn_admin(admin_listener);
    let code = run_ingress(&config, listener, &process).await;
    admin_stop.cancel();
    drop(embedded);
    if code == 0 {
        println!("aftercart dev stack stopped.");
    }
    code
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

//! Wiring: prepares the topics the service reads and writes, then runs the stage (nudges onto
//! the topic) and, when a destination is configured, its forwarder, until shutdown.

use aftercart_delivery::message::Destination;
use aftercart_delivery::message::DestinationError;
use aftercart_delivery::{DeliveryMetrics, Forwarder, ForwarderError, ForwarderSpec};
use aftercart_kafka::stage_topics::StageTopics;
use aftercart_kafka::{ensure_topics_with_retry, LoopError, TopicError, TopicSpec};
use aftercart_runtime::Health;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{DestinationConfig, NudgesConfig};
use crate::deliver::NudgeSink;
use crate::metrics::NudgesMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot register the nudges metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster contradicts the configuration (e.g. partition counts differ).
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("the nudges destination cannot start: {0}")]
    Destination(#[from] DestinationError),
    #[error("the nudges forwarder failed: {0}")]
    Forwarder(#[from] ForwarderError),
    #[error("cannot set up the Shopify Admin API client: {0}")]
    Shopify(#[from] aftercart_shopify_admin::SetupError),
}

/// Every topic the service reads or writes. The by-shop, changelog and output topics share one
/// partition count: the state, nudges and data request answers of by-shop partition N live in
/// partition N.
pub fn topic_specs(config: &NudgesConfig) -> (Vec<TopicSpec>, Vec<String>) {
    StageTopics {
        by_shop: &config.by_shop_topic,
        state: &config.state_topic,
        dead_letter: &config.dead_letter_topic,
        inputs: &[config.abandonments_topic.as_str()],
        outputs: &[
            config.nudges_topic.as_str(),
            config.data_requests_topic.as_str(),
        ],
    }
    .specs(&config.kafka)
}

fn forwarder(
    config: &NudgesConfig,
    destination: &DestinationConfig,
    registry: &Registry,
    metrics: &NudgesMetrics,
    health: &Health,
) -> Result<Forwarder<NudgeSink>, ServeError> {
    let http = DeliveryMetrics::register(registry, "aftercart_nudges")?;
    let (target, metric, budget) = match destination {
        DestinationConfig::Klaviyo { config, metric } => (
            Destination::klaviyo(config, http.clone())?,
            metric.clone(),
            config.retry.max_duration + config.timeout,
        ),
        DestinationConfig::Webhook(sink) => (
            Destination::webhook(sink, http.clone())?,
            crate::config::DEFAULT_METRIC.to_string(),
            sink.retry.max_duration + sink.timeout,
        ),
        DestinationConfig::File(dir) => (
            Destination::file(dir.clone()),
            crate::config::DEFAULT_METRIC.to_string(),
            std::time::Duration::from_secs(60),
        ),
    };
    let spec = ForwarderSpec {
        group: format!("{}-{}", config.group, destination.kind()),
        topics: vec![config.nudges_topic.clone()],
        dead_letter_topic: config.dead_letter_topic.clone(),
        record_budget: budget,
        shutdown_timeout: config.shutdown_timeout,
        lag: Some(metrics.delivery_lag.clone()),
    };
    let sink = NudgeSink::new(target, metric, config.max_send_delay, metrics.clone());
    Ok(Forwarder::with_sink(
        &config.kafka,
        &spec,
        sink,
        http,
        health.component("nudges-destination"),
    )?)
}

/// Runs the nudges service until `stop`.
pub async fn serve(
    config: &NudgesConfig,
    registry: &Registry,
    health: &Health,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let kind = config.destination.as_ref().map(DestinationConfig::kind);
    let metrics = NudgesMetrics::register(registry, kind)?;
    let ready = health.component("nudges");
    let (specs, same) = topic_specs(config);
    if !ensure_topics_with_retry(&config.kafka, &specs, &same, &stop).await? {
        return Ok(());
    }
    // Registered (at zero) even without discounts, so the dashboard reads 0, not nothing.
    let admin_metrics =
        aftercart_shopify_admin::AdminMetrics::register(registry, "aftercart_nudges")?;
    let discounts = match &config.discount {
        Some(discount) => Some(crate::discount::RecoveryDiscounts::new(
            aftercart_shopify_admin::Discounts::new(aftercart_shopify_admin::AdminClient::new(
                discount.admin.clone(),
                admin_metrics,
            )?),
            discount.clone(),
            metrics.clone(),
        )),
        None => None,
    };
    let service = crate::consumer::build(config, metrics.clone(), ready, discounts)?;
    let forwarder = match &config.destination {
        Some(destination) => Some(forwarder(config, destination, registry, &metrics, health)?),
        None => None,
    };
    tracing::info!(group = %config.group, nudges = %config.nudges_topic, destination = kind.unwrap_or("none"), "Nudges service consuming.");
    let (looped, forwarded) =
        aftercart_delivery::alongside(&stop, |inner| service.run(inner), forwarder).await;
    looped?;
    forwarded?;
    tracing::info!("Nudges service stopped.");
    Ok(())
}

aftercart_runtime::service!(
    /// The nudges service as a process runs it (`aftercart nudges`, `aftercart dev`).
    pub struct NudgesService = "nudges",
    NudgesConfig, ServeError, serve, ServeError::Topics(_)
);

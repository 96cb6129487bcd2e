//! Wiring: prepares the topics the service reads and writes, then runs the loop until shutdown.

use aftercart_kafka::{ensure_topics_with_retry, LoopError, TopicError, TopicNames, TopicSpec};
use aftercart_runtime::Health;
use aftercart_shopify::Family;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::AbandonmentConfig;
use crate::metrics::AbandonmentMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot register the abandonment metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster contradicts the configuration (e.g. partition counts differ).
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Loop(#[from] LoopError),
}

/// Every topic the service reads or writes. The output and changelog topics share the journey
/// partition count: state and events of partition N live in partition N.
pub fn topic_specs(config: &AbandonmentConfig) -> (Vec<TopicSpec>, Vec<String>) {
    let names = TopicNames::new(&config.kafka.topic_prefix);
    let mut specs: Vec<TopicSpec> = Family::JOURNEY
        .iter()
        .map(|f| TopicSpec::new(names.family(*f), &config.kafka))
        .collect();
    specs.push(TopicSpec::new(&config.output_topic, &config.kafka));
    specs.push(TopicSpec::new(&config.data_requests_topic, &config.kafka));
    specs.push(TopicSpec::changelog(&config.state_topic, &config.kafka));
    specs.push(TopicSpec::new(&config.dead_letter_topic, &config.kafka).holding_copies());
    let mut same = names.journey();
    same.push(config.output_topic.clone());
    same.push(config.data_requests_topic.clone());
    same.push(config.state_topic.clone());
    (specs, same)
}

/// Runs the abandonment service until `stop`.
pub async fn serve(
    config: &AbandonmentConfig,
    registry: &Registry,
    health: &Health,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = AbandonmentMetrics::register(registry)?;
    let ready = health.component("abandonment");
    let (specs, same) = topic_specs(config);
    if !ensure_topics_with_retry(&config.kafka, &specs, &same, &stop).await? {
        return Ok(());
    }
    let service = crate::consumer::build(config, metrics, ready)?;
    tracing::info!(group = %config.group, output = %config.output_topic, "Abandonment service consuming.");
    service.run(stop).await?;
    tracing::info!("Abandonment service stopped.");
    Ok(())
}

aftercart_runtime::service!(
    /// The abandonment service as a process runs it (`aftercart abandonment`, `aftercart dev`).
    pub struct AbandonmentService = "abandonment",
    AbandonmentConfig, ServeError, serve, ServeError::Topics(_)
);

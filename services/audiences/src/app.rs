//! Wiring: prepares the topics the service reads and writes, then runs the engine loop and one
//! exporter per destination until shutdown. One failing stops the others: they are one service.

use aftercart_delivery::{Forwarder, ForwarderError, ForwarderSpec, SinkError};
use aftercart_kafka::stage_topics::StageTopics;
use aftercart_kafka::{ensure_topics_with_retry, LoopError, TopicError, TopicSpec};
use aftercart_runtime::Health;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::AudiencesConfig;
use crate::export::Exporter;
use crate::metrics::AudiencesMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot register the audiences metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster contradicts the configuration (e.g. partition counts differ).
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("an exporter failed: {0}")]
    Exporter(#[from] ForwarderError),
    #[error("cannot set up an exporter: {0}")]
    Sink(#[from] SinkError),
    /// A destination was taken out of the configuration with removals still unsent.
    #[error("{0}")]
    PendingRemovals(String),
    /// The broker refused the service's principal the check for removals left by removed
    /// destinations (it lists the consumer groups and reads the batches topic).
    #[error("cannot check for removals left by destinations no longer configured (the principal needs Describe and Read on the groups prefixed with the audiences group, and Describe and Read on the batches topic): {0}")]
    RemovalsCheck(#[from] crate::orphans::OrphanError),
}

/// Every topic the service reads or writes. The by-shop, changelog and batches topics share one
/// partition count: the state and batches of by-shop partition N live in partition N.
pub fn topic_specs(config: &AudiencesConfig) -> (Vec<TopicSpec>, Vec<String>) {
    let (mut specs, mut same) = StageTopics {
        by_shop: &config.by_shop_topic,
        state: &config.state_topic,
        dead_letter: &config.dead_letter_topic,
        inputs: &[config.abandonments_topic.as_str()],
        // A data request's report is written to the partition of the shop's state, as referrals
        // and abandonment write theirs.
        outputs: &[config.data_requests_topic.as_str()],
    }
    .specs(&config.kafka);
    // A batch holds up to 10,000 people's hashes: several MB.
    specs.push(TopicSpec::new(&config.batches_topic, &config.kafka).holding_copies());
    same.push(config.batches_topic.clone());
    (specs, same)
}

/// Runs the audiences service until `stop`.
pub async fn serve(
    config: &AudiencesConfig,
    registry: &Registry,
    health: &Health,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = AudiencesMetrics::register(registry, config)?;
    let (specs, same) = topic_specs(config);
    if !ensure_topics_with_retry(&config.kafka, &specs, &same, &stop).await? {
        return Ok(());
    }
    let check = config.clone();
    let Some(orphans) =
        crate::orphans::before_start(&stop, move || crate::orphans::find(&check)).await?
    else {
        return Ok(());
    };
    if !orphans.is_empty() {
        return Err(ServeError::PendingRemovals(crate::orphans::refusal(
            &orphans,
        )));
    }
    let confirmations = crate::confirmations::Confirmations::default();
    let engine = crate::consumer::build(
        config,
        metrics.clone(),
        health.component("audiences"),
        confirmations.clone(),
    )?;
    let mut exporters = Vec::new();
    for (name, destination) in &config.destinations {
        let exporter = Exporter::new(
            name,
            destination,
            config.timeout,
            config.retry,
            metrics.clone(),
        )?;
        let spec = ForwarderSpec {
            group: config.exporter_group(name),
            topics: vec![config.batches_topic.clone()],
            dead_letter_topic: config.dead_letter_topic.clone(),
            // Google's three steps each get the whole budget.
            record_budget: (config.retry.max_duration + config.timeout) * 3,
            shutdown_timeout: config.shutdown_timeout,
            lag: Some(metrics.export_lag(name)),
        };
        let ready = health.component(&format!("audiences-{name}"));
        exporters.push(Forwarder::with_sink(
            &config.kafka,
            &spec,
            exporter,
            metrics.http.clone(),
            ready,
        )?);
    }
    tracing::info!(group = %config.group, audiences = config.rules.audiences.len(), destinations = config.destinations.len(), "Audiences service consuming.");
    let inner = stop.child_token();
    let engine_run = async {
        let result = engine.run(inner.clone()).await;
        inner.cancel();
        result
    };
    let exporter_runs = futures_join_all(exporters, &inner);
    let checker = crate::confirmations::run(config.clone(), confirmations, inner.clone());
    let (engine_result, exporter_results, ()) = tokio::join!(engine_run, exporter_runs, checker);
    engine_result?;
    for result in exporter_results {
        result?;
    }
    tracing::info!("Audiences service stopped.");
    Ok(())
}

/// Runs every exporter until `stop`; the first to fail stops the rest.
async fn futures_join_all(
    exporters: Vec<Forwarder<Exporter>>,
    stop: &CancellationToken,
) -> Vec<Result<(), ForwarderError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for exporter in exporters {
        let stop = stop.clone();
        tasks.spawn(async move {
            let result = exporter.run(stop.clone()).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.expect("exporters do not panic"));
    }
    results
}

aftercart_runtime::service!(
    /// The audiences service as a process runs it (`aftercart audiences`, `aftercart dev`).
    pub struct AudiencesService = "audiences",
    AudiencesConfig, ServeError, serve,
    ServeError::Topics(_) | ServeError::PendingRemovals(_) | ServeError::RemovalsCheck(_)
);

//! Wiring: prepares the topics the service reads and writes, then runs the stage and, with a
//! destination, the delivery of touchpoints until shutdown.

use aftercart_delivery::message::{Destination, DestinationError, Message, MessageSink, Profile};
use aftercart_delivery::{DeliveryMetrics, Forwarder, ForwarderError, ForwarderSpec};
use aftercart_kafka::stage_topics::StageTopics;
use aftercart_kafka::{ensure_topics_with_retry, LoopError, TopicError, TopicSpec};
use aftercart_runtime::Health;
use prometheus::Registry;
use rdkafka::message::{Message as _, OwnedMessage};
use tokio_util::sync::CancellationToken;

use crate::config::{DestinationConfig, JourneyConfig};
use crate::domain::touchpoint::{Kind, Touchpoint};
use crate::metrics::JourneyMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot register the journey metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster contradicts the configuration (e.g. partition counts differ).
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("the touchpoint delivery failed: {0}")]
    Delivery(#[from] ForwarderError),
    #[error("cannot set up the touchpoint destination: {0}")]
    Destination(#[from] DestinationError),
}

/// Every topic the service reads or writes. The by-shop, changelog and output topics
/// (touchpoints, KPIs, data request answers) share one partition count: the state and outputs
/// of by-shop partition N live in partition N.
pub fn topic_specs(config: &JourneyConfig) -> (Vec<TopicSpec>, Vec<String>) {
    let (mut specs, same) = StageTopics {
        by_shop: &config.by_shop_topic,
        state: &config.state_topic,
        dead_letter: &config.dead_letter_topic,
        inputs: &[
            config.abandonments_topic.as_str(),
            config.invites_topic.as_str(),
            config.rewards_topic.as_str(),
        ],
        outputs: &[
            config.touchpoints_topic.as_str(),
            config.kpis_topic.as_str(),
            config.data_requests_topic.as_str(),
        ],
    }
    .specs(&config.kafka);
    if config.destination.is_some() {
        specs.push(
            TopicSpec::new(&config.delivery_dead_letter_topic, &config.kafka).holding_copies(),
        );
    }
    (specs, same)
}

/// Klaviyo's metric name of a touchpoint type (`Aftercart Review Request`).
fn metric_name(kind: Kind) -> String {
    let words: Vec<String> = kind
        .as_str()
        .split('_')
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("Aftercart {}", words.join(" "))
}

/// A touchpoint record as a message of the delivery crate.
pub fn message_of(record: &OwnedMessage) -> Result<Message, String> {
    let body = record.payload().unwrap_or_default();
    let touchpoint: Touchpoint =
        serde_json::from_slice(body).map_err(|e| format!("not a touchpoint: {e}"))?;
    let profile = Profile {
        email: touchpoint.customer.email.clone(),
        phone: None,
        external_id: touchpoint.customer.id.map(|id| id.to_string()),
    };
    if profile.is_empty() {
        return Err("the touchpoint names no customer".into());
    }
    let value = touchpoint
        .order
        .total
        .as_deref()
        .and_then(|t| t.parse::<f64>().ok());
    Ok(Message {
        event_id: touchpoint.event_id.clone(),
        topic: record.topic().to_string(),
        shop: touchpoint.shop.clone(),
        metric: metric_name(touchpoint.kind),
        time: touchpoint.occurred_at.clone(),
        value,
        profile,
        properties: serde_json::to_value(&touchpoint).map_err(|e| e.to_string())?,
        body: bytes::Bytes::copy_from_slice(body),
    })
}

/// Runs the journey service until `stop`.
pub async fn serve(
    config: &JourneyConfig,
    registry: &Registry,
    health: &Health,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = JourneyMetrics::register(registry)?;
    let ready = health.component("journey");
    let (specs, same) = topic_specs(config);
    if !ensure_topics_with_retry(&config.kafka, &specs, &same, &stop).await? {
        return Ok(());
    }
    let delivery_metrics = DeliveryMetrics::register(registry, "aftercart_journey")?;
    let forwarder = match &config.destination {
        Some(destination) => {
            let destination = match destination {
                DestinationConfig::File(dir) => Destination::file(dir.clone()),
                DestinationConfig::Webhook(sink) => {
                    Destination::webhook(sink, delivery_metrics.clone())?
                }
                DestinationConfig::Klaviyo(klaviyo) => {
                    Destination::klaviyo(klaviyo, delivery_metrics.clone())?
                }
            };
            let budget = match &config.destination {
                Some(DestinationConfig::Webhook(sink)) => sink.retry.max_duration + sink.timeout,
                Some(DestinationConfig::Klaviyo(k)) => k.retry.max_duration + k.timeout,
                _ => std::time::Duration::from_secs(60),
            };
            let spec = ForwarderSpec {
                group: format!("{}-delivery", config.group),
                topics: vec![config.touchpoints_topic.clone()],
                dead_letter_topic: config.delivery_dead_letter_topic.clone(),
                record_budget: budget,
                shutdown_timeout: config.shutdown_timeout,
                lag: None,
            };
            Some(Forwarder::with_sink(
                &config.kafka,
                &spec,
                MessageSink::new(destination, message_of),
                delivery_metrics,
                health.component("journey-delivery"),
            )?)
        }
        None => None,
    };
    let service = crate::consumer::build(config, metrics, ready)?;
    tracing::info!(group = %config.group, touchpoints = %config.touchpoints_topic, relays_invites = config.rules.relay_invites, destination = forwarder.is_some(), "Journey service consuming.");
    let (looped, delivered) =
        aftercart_delivery::alongside(&stop, |inner| service.run(inner), forwarder).await;
    looped?;
    delivered?;
    tracing::info!("Journey service stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_read_as_titles() {
        assert_eq!(metric_name(Kind::ReviewRequest), "Aftercart Review Request");
        assert_eq!(metric_name(Kind::Shipped), "Aftercart Shipped");
    }
}

aftercart_runtime::service!(
    /// The journey service as a process runs it (`aftercart journey`, `aftercart dev`).
    pub struct JourneyService = "journey",
    JourneyConfig, ServeError, serve, ServeError::Topics(_)
);

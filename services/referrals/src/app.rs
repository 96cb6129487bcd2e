//! Wiring: prepares the topics the service reads and writes, then runs the loop until shutdown.

use aftercart_delivery::{DeliveryMetrics, Forwarder, ForwarderError};
use aftercart_kafka::stage_topics::StageTopics;
use aftercart_kafka::{ensure_topics_with_retry, LoopError, TopicError, TopicSpec};
use aftercart_runtime::Health;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use aftercart_shopify_admin::{AdminClient, AdminMetrics, Discounts, SetupError};

use crate::actions::ShopActions;
use crate::config::ReferralsConfig;
use crate::metrics::ReferralsMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot register the referrals metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster contradicts the configuration (e.g. partition counts differ).
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("the webhook forwarder failed: {0}")]
    Webhook(#[from] ForwarderError),
    #[error("cannot set up the Shopify Admin API client: {0}")]
    Shopify(#[from] SetupError),
}

/// Every topic the service reads or writes. The by-shop, changelog and output topics share one
/// partition count: the state and events of by-shop partition N live in partition N.
pub fn topic_specs(config: &ReferralsConfig) -> (Vec<TopicSpec>, Vec<String>) {
    let (mut specs, same) = StageTopics {
        by_shop: &config.by_shop_topic,
        state: &config.state_topic,
        dead_letter: &config.dead_letter_topic,
        inputs: &[],
        outputs: &[
            config.invites_topic.as_str(),
            config.rewards_topic.as_str(),
            config.data_requests_topic.as_str(),
        ],
    }
    .specs(&config.kafka);
    if let Some(webhook) = &config.webhook {
        specs.extend(aftercart_delivery::topic_specs(&config.kafka, webhook));
    }
    (specs, same)
}

/// Runs the referrals service until `stop`.
pub async fn serve(
    config: &ReferralsConfig,
    registry: &Registry,
    health: &Health,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = ReferralsMetrics::register(registry)?;
    let ready = health.component("referrals");
    let (specs, same) = topic_specs(config);
    if !ensure_topics_with_retry(&config.kafka, &specs, &same, &stop).await? {
        return Ok(());
    }
    // Registered (at zero) even with the Shopify actions off, so the dashboard's Shopify row and
    // the token alert read 0, not an absent series.
    let admin_metrics = AdminMetrics::register(registry, "aftercart_referrals")?;
    let actions = match &config.shopify {
        Some(shopify) => {
            let admin = AdminClient::new(shopify.admin.clone(), admin_metrics)?;
            Some(ShopActions::new(
                Discounts::new(admin),
                shopify.clone(),
                config.rules.codes.clone(),
                vec![config.invites_topic.clone(), config.rewards_topic.clone()],
                metrics.clone(),
            ))
        }
        None => None,
    };
    let service = crate::consumer::build(config, metrics, ready, actions)?;
    let forwarder = match &config.webhook {
        Some(webhook) => Some(Forwarder::new(
            &config.kafka,
            webhook,
            DeliveryMetrics::register(registry, "aftercart_referrals")?,
            health.component("referrals-webhook"),
        )?),
        None => None,
    };
    tracing::info!(group = %config.group, invites = %config.invites_topic, rewards = %config.rewards_topic, webhook = forwarder.is_some(), shopify = config.shopify.is_some(), "Referrals service consuming.");
    let (looped, forwarded) =
        aftercart_delivery::alongside(&stop, |inner| service.run(inner), forwarder).await;
    looped?;
    forwarded?;
    tracing::info!("Referrals service stopped.");
    Ok(())
}

aftercart_runtime::service!(
    /// The referrals service as a process runs it (`aftercart referrals`, `aftercart dev`).
    pub struct ReferralsService = "referrals",
    ReferralsConfig, ServeError, serve, ServeError::Topics(_)
);

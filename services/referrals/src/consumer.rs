//! The referrals rules on the shared stage (by shop): which source records are routed, how a
//! by-shop record becomes engine input, and how engine effects become stage effects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aftercart_kafka::stage::EffectOf;
use aftercart_kafka::{
    header, shop_of, staged_at, DataRequestAnswered, Inputs, LoopError, Prepared, Preparing, Stage,
    StageEffect, StageLogic, StageTopics, TopicNames, Unusable,
};
use aftercart_runtime::health::Readiness;
use aftercart_runtime::Event as _;
use aftercart_shopify::time::now_ms;
use aftercart_shopify::Family;
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use crate::actions::{Acted, ShopActions};
use crate::config::ReferralsConfig;
use crate::domain::engine::{Effect, Engine};
use crate::domain::event::{EmittedEvent, Output};
use crate::domain::input::{decode_input, is_relevant};
use crate::domain::state::Entity;
use crate::metrics::ReferralsMetrics;

/// Output topic indexes in [`StageTopics::outputs`].
const INVITES: usize = 0;
const REWARDS: usize = 1;
const DATA_REQUESTS: usize = 2;
/// How often settled orders are expired.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// The referrals service's poll loop.
pub type Loop = Stage<Referrals>;

/// The Shopify source topics the router reads.
pub fn source_topics(config: &ReferralsConfig) -> Vec<(String, &'static str)> {
    let names = TopicNames::new(&config.kafka.topic_prefix);
    [
        Family::Orders,
        Family::Fulfillments,
        Family::Customers,
        Family::Compliance,
    ]
    .iter()
    .map(|f| (names.family(*f), f.as_str()))
    .collect()
}

/// Builds the loop: the stage, with the referral engine as its logic.
pub fn build(
    config: &ReferralsConfig,
    metrics: ReferralsMetrics,
    ready: Readiness,
    actions: Option<ShopActions>,
) -> Result<Loop, LoopError> {
    let topics = StageTopics {
        client: "aftercart-referrals".to_string(),
        group: config.group.clone(),
        inputs: Inputs::ByShop {
            sources: source_topics(config),
            by_shop: config.by_shop_topic.clone(),
        },
        globals: Vec::new(),
        state: config.state_topic.clone(),
        dead_letter: config.dead_letter_topic.clone(),
        outputs: vec![
            config.invites_topic.clone(),
            config.rewards_topic.clone(),
            config.data_requests_topic.clone(),
        ],
    };
    let logic = Referrals {
        engine: Engine::new(config.rules.clone()),
        metrics,
        last_expiry: Instant::now(),
        actions,
    };
    Stage::new(
        config.kafka.clone(),
        topics,
        config.shutdown_timeout,
        logic.metrics.consumer.clone(),
        logic,
        ready,
    )
}

/// The referral engine as the stage's logic.
pub struct Referrals {
    engine: Engine,
    metrics: ReferralsMetrics,
    last_expiry: Instant,
    /// Discounts and rewards in shops, when configured.
    actions: Option<ShopActions>,
}

type Staged = StageEffect<Entity, Output>;

impl Referrals {
    /// Turns engine effects into stage effects; counts are counted on the way.
    fn staged(&self, effects: Vec<Effect>) -> Vec<Staged> {
        effects
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Emit { key, output } => Some(StageEffect::Emit {
                    topic: match output {
                        Output::Invite(_) => INVITES,
                        Output::Reward(_) => REWARDS,
                        Output::DataRequest(_) => DATA_REQUESTS,
                    },
                    key,
                    event_id: output.event_id().to_string(),
                    output,
                }),
                Effect::Persist { key, entity } => Some(StageEffect::Persist { key, entity }),
                Effect::Count(counted) => {
                    self.metrics.counted(counted);
                    None
                }
            })
            .collect()
    }
}

impl StageLogic for Referrals {
    type Entity = Entity;
    type Output = Output;
    type Emitted = EmittedEvent;

    fn routes(&self, _family: &'static str, message: &OwnedMessage) -> bool {
        header(message, "shopify-topic").is_some_and(is_relevant)
    }

    fn apply(
        &mut self,
        partition: i32,
        _family: &'static str,
        message: &OwnedMessage,
    ) -> Result<Vec<Staged>, Unusable> {
        let topic = header(message, "shopify-topic");
        match decode_input(topic, message.payload().unwrap_or_default()) {
            Ok(input) => {
                let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                let shop = shop_of(message);
                let effects = self.engine.apply(partition, &shop, input, at);
                Ok(self.staged(effects))
            }
            Err(error) => Err(Unusable {
                label: error.as_label(),
                reason: error.to_string(),
            }),
        }
    }

    fn next_due(&self) -> Option<i64> {
        self.engine.next_due()
    }

    fn tick(&mut self, now_ms: i64) -> Vec<(i32, Staged)> {
        let mut effects = self.engine.fire_due(now_ms);
        if self.last_expiry.elapsed() >= EXPIRY_EVERY {
            self.last_expiry = Instant::now();
            effects.extend(self.engine.expire(now_ms));
        }
        staged_at(effects, |e| self.staged(vec![e]))
    }

    fn assign(&mut self, partition: i32, entities: HashMap<String, Entity>) -> Vec<Staged> {
        self.engine.assign(partition, entities);
        Vec::new()
    }

    fn revoke(&mut self, partition: i32) {
        self.engine.revoke(partition);
    }

    fn release(&mut self, partition: i32) -> Option<HashMap<String, Entity>> {
        self.engine.release(partition)
    }

    fn owns(&self, partition: i32) -> bool {
        self.engine.owns(partition)
    }

    fn reconcile(&mut self, partition: i32, emitted: &EmittedEvent) -> Vec<Staged> {
        let effects = self.engine.reconcile(partition, emitted);
        self.staged(effects)
    }

    fn emitted(&self, output: &Output) {
        match output {
            Output::Invite(_) => self.metrics.invited(),
            Output::DataRequest(report) => {
                DataRequestAnswered { report }.emit(&self.metrics.consumer)
            }
            Output::Reward(event) => self
                .metrics
                .rewarded(&event.event_type, event.reason.as_deref()),
        }
    }

    fn gauges(&self) {
        // Counting rewards in review walks every order: once a second, not once a batch.
        self.metrics.state(self.engine.sizes());
    }

    fn prepare_budget(&self) -> Duration {
        self.actions
            .as_ref()
            .map_or(Duration::ZERO, ShopActions::budget)
    }

    fn prepare<'a>(
        &'a mut self,
        effects: Vec<(i32, EffectOf<Self>)>,
        stop: &'a CancellationToken,
    ) -> Preparing<'a, Self> {
        Box::pin(async move {
            let acted = match &self.actions {
                Some(actions) => actions.act(effects, stop).await?,
                None => Acted {
                    effects,
                    dead: Vec::new(),
                    stopped: false,
                },
            };
            Some(Prepared {
                effects: acted.effects,
                dead: acted.dead,
                stopped: acted.stopped,
            })
        })
    }
}

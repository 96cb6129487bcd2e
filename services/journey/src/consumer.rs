//! The journey rules on the shared stage (by shop): which source records are routed, how a
//! by-shop record becomes engine input, and how engine effects become stage effects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

use crate::config::JourneyConfig;
use crate::domain::engine::{Effect, Engine};
use crate::domain::input::{
    decode_abandonment, decode_input, decode_invite, decode_reward, is_relevant, Input,
};
use crate::domain::state::Entity;
use crate::domain::touchpoint::Output;
use crate::metrics::JourneyMetrics;
use crate::watchdog::{self, PaceRecord, Stored, Watchdog, WatchdogMetrics};

/// The family labels of the aftercart sources.
pub const INVITES: &str = "referral_invites";
pub const REWARDS: &str = "referral_rewards";
pub const ABANDONMENTS: &str = "abandonments";
/// Output topic indexes in [`StageTopics::outputs`].
const TOUCHPOINTS: usize = 0;
const KPIS: usize = 1;
const DATA_REQUESTS: usize = 2;
/// The key prefix of order records ([`crate::domain::state::order_entity`]).
const ORDER_PREFIX: &str = "order/";
/// How often settled orders are expired.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// The journey service's poll loop.
pub type Loop = Stage<Journey>;

/// The source topics the router reads: the Shopify families, the abandonment events and the
/// referral invites and rewards (KPIs; invites relayed when the referrals service invites at
/// delivery).
pub fn source_topics(config: &JourneyConfig) -> Vec<(String, &'static str)> {
    let names = TopicNames::new(&config.kafka.topic_prefix);
    let mut sources: Vec<(String, &'static str)> = [
        Family::Checkouts,
        Family::Orders,
        Family::Fulfillments,
        Family::Customers,
        Family::Compliance,
    ]
    .iter()
    .map(|f| (names.family(*f), f.as_str()))
    .collect();
    sources.push((config.abandonments_topic.clone(), ABANDONMENTS));
    sources.push((config.invites_topic.clone(), INVITES));
    sources.push((config.rewards_topic.clone(), REWARDS));
    sources
}

/// Builds the loop: the stage, with the journey engine as its logic.
pub fn build(
    config: &JourneyConfig,
    metrics: JourneyMetrics,
    ready: Readiness,
) -> Result<Loop, LoopError> {
    let topics = StageTopics {
        client: "aftercart-journey".to_string(),
        group: config.group.clone(),
        inputs: Inputs::ByShop {
            sources: source_topics(config),
            by_shop: config.by_shop_topic.clone(),
        },
        globals: Vec::new(),
        state: config.state_topic.clone(),
        dead_letter: config.dead_letter_topic.clone(),
        outputs: vec![
            config.touchpoints_topic.clone(),
            config.kpis_topic.clone(),
            config.data_requests_topic.clone(),
        ],
    };
    let logic = Journey {
        engine: Engine::new(config.rules.clone()),
        last_expiry: Instant::now(),
        watchdog: Watchdog::new(config.watchdog.clone()),
        watchdog_metrics: metrics.watchdog.clone(),
        watchdog_pending: Vec::new(),
        metrics,
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

/// The journey engine as the stage's logic.
pub struct Journey {
    engine: Engine,
    metrics: JourneyMetrics,
    last_expiry: Instant,
    /// The subscription watchdog (order webhooks per shop).
    watchdog: Watchdog,
    watchdog_metrics: WatchdogMetrics,
    /// Watchdog paces of other partitions than the record's, written at the next tick.
    watchdog_pending: Vec<(i32, Staged)>,
}

type Staged = StageEffect<Stored, Output>;

impl Journey {
    /// Turns engine effects into stage effects; counts are counted on the way.
    fn staged(&self, effects: Vec<Effect>) -> Vec<Staged> {
        effects
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Emit { key, output } => Some(StageEffect::Emit {
                    topic: TOUCHPOINTS,
                    key,
                    event_id: output.event_id.clone(),
                    output: Output::Touchpoint(output),
                }),
                Effect::Report { key, record } => Some(StageEffect::Emit {
                    topic: KPIS,
                    key,
                    event_id: record.event_id.clone(),
                    output: Output::Kpis(record),
                }),
                Effect::Persist { key, entity } => Some(StageEffect::Persist {
                    key,
                    entity: entity.map(|e| Box::new(Stored::Journey(*e))),
                }),
                Effect::Answer { key, report } => Some(StageEffect::Emit {
                    topic: DATA_REQUESTS,
                    key,
                    event_id: report.event_id.clone(),
                    output: Output::Answer(report),
                }),
                Effect::Count(counted) => {
                    self.metrics.counted(counted);
                    None
                }
            })
            .collect()
    }

    /// Reports a watchdog step's changes and turns its paces into effects by partition.
    fn watched(&self, step: watchdog::Step) -> Vec<(i32, Staged)> {
        for change in &step.changes {
            self.watchdog_metrics.emit(change);
        }
        step.persist
            .into_iter()
            .map(|(partition, shop, pace)| {
                let entity = pace.map(|p| Box::new(Stored::Pace(PaceRecord::ShopPace(p))));
                let key = watchdog::pace_entity(&shop);
                (partition, StageEffect::Persist { key, entity })
            })
            .collect()
    }

    /// The watchdog's view of a source record: an order webhook, or the shop leaving the app.
    fn watch(&mut self, partition: i32, message: &OwnedMessage) -> Vec<Staged> {
        let Some(topic) = header(message, "shopify-topic") else {
            return Vec::new();
        };
        let topic = topic.trim().to_ascii_lowercase();
        let shop = shop_of(message);
        let step = if watchdog::ORDER_TOPICS.contains(&topic.as_str()) {
            let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
            self.watchdog.observe(partition, &shop, at)
        } else if watchdog::GONE_TOPICS.contains(&topic.as_str()) {
            let mut step = watchdog::Step::default();
            self.watchdog.forget(&shop, &mut step);
            step
        } else {
            return Vec::new();
        };
        let mut here = Vec::new();
        for (p, effect) in self.watched(step) {
            if p == partition {
                here.push(effect);
            } else {
                self.watchdog_pending.push((p, effect));
            }
        }
        here
    }
}

impl StageLogic for Journey {
    type Entity = Stored;
    type Output = Output;
    type Emitted = Output;

    fn routes(&self, family: &'static str, message: &OwnedMessage) -> bool {
        matches!(family, INVITES | REWARDS | ABANDONMENTS)
            || header(message, "shopify-topic").is_some_and(is_relevant)
    }

    fn apply(
        &mut self,
        partition: i32,
        family: &'static str,
        message: &OwnedMessage,
    ) -> Result<Vec<Staged>, Unusable> {
        let watched = match family {
            INVITES | REWARDS | ABANDONMENTS => Vec::new(),
            _ => self.watch(partition, message),
        };
        let body = message.payload().unwrap_or_default();
        let decoded = match family {
            INVITES => decode_invite(body),
            REWARDS => decode_reward(body),
            ABANDONMENTS => decode_abandonment(body),
            _ => decode_input(header(message, "shopify-topic"), body),
        };
        match decoded {
            Ok(input) => {
                let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                let shop = match &input {
                    Input::Invite(invite) => invite.invite.shop.to_ascii_lowercase(),
                    _ => shop_of(message),
                };
                let offset = Some(message.offset());
                let effects = self.engine.apply_from(partition, &shop, input, at, offset);
                let mut staged = self.staged(effects);
                staged.extend(watched);
                Ok(staged)
            }
            Err(error) => {
                // The webhook arrived even if the journey cannot use it.
                let watched = watched.into_iter().map(|e| (partition, e));
                self.watchdog_pending.extend(watched);
                Err(Unusable {
                    label: error.as_label(),
                    reason: error.to_string(),
                })
            }
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
        let mut staged = staged_at(effects, |e| self.staged(vec![e]));
        staged.append(&mut self.watchdog_pending);
        let judged = self.watchdog.judge();
        staged.extend(self.watched(judged));
        staged
    }

    fn assign(&mut self, partition: i32, entities: HashMap<String, Stored>) -> Vec<Staged> {
        let mut journey: HashMap<String, Entity> = HashMap::new();
        let mut paces = Vec::new();
        for (key, stored) in entities {
            match stored {
                Stored::Journey(entity) => {
                    journey.insert(key, entity);
                }
                Stored::Pace(PaceRecord::ShopPace(pace)) => {
                    let shop = key.strip_prefix("pace/").unwrap_or(&key).to_string();
                    paces.push((shop, pace));
                }
            }
        }
        self.engine.assign(partition, journey);
        self.watchdog.assign(partition, paces);
        Vec::new()
    }

    fn revoke(&mut self, partition: i32) {
        self.engine.revoke(partition);
        self.watchdog.revoke(partition);
        self.watchdog_pending.retain(|(p, _)| *p != partition);
    }

    fn owns(&self, partition: i32) -> bool {
        self.engine.owns(partition)
    }

    fn reconcile(&mut self, partition: i32, emitted: &Output) -> Vec<Staged> {
        let effects = match emitted {
            Output::Touchpoint(touchpoint) => self.engine.reconcile(partition, touchpoint),
            Output::Kpis(record) => self.engine.reconcile_report(partition, record),
            // Nothing to bring up to date: an answer changes no state.
            Output::Answer(_) => Vec::new(),
        };
        self.staged(effects)
    }

    fn emitted(&self, output: &Output) {
        match output {
            Output::Touchpoint(touchpoint) => self.metrics.emitted(touchpoint.kind),
            Output::Kpis(_) => self.metrics.reported(),
            Output::Answer(report) => DataRequestAnswered { report }.emit(&self.metrics.consumer),
        }
    }

    fn gauges(&self) {
        self.metrics.state(self.engine.sizes());
        self.watchdog_metrics.sizes(self.watchdog.sizes());
    }

    /// Writes a batch's order records after everything else of it (the stage writes each key
    /// once, at its last position, and a crash keeps a prefix): an order record that says the
    /// order was seen is then never written without the shop's and the buyer's records that
    /// counted it, and those carry the offset they counted through.
    fn prepare<'a>(
        &'a mut self,
        effects: Vec<(i32, Staged)>,
        _stop: &'a CancellationToken,
    ) -> Preparing<'a, Self> {
        Box::pin(std::future::ready(Some(Prepared {
            effects: orders_last(effects),
            dead: Vec::new(),
            stopped: false,
        })))
    }
}

/// `effects` with the order records moved after the rest, each part in its own order.
fn orders_last(effects: Vec<(i32, Staged)>) -> Vec<(i32, Staged)> {
    let (orders, mut rest): (Vec<_>, Vec<_>) = effects.into_iter().partition(|(_, effect)| {
        matches!(effect, StageEffect::Persist { key, .. } if key.starts_with(ORDER_PREFIX))
    });
    rest.extend(orders);
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str) -> (i32, Staged) {
        (
            0,
            StageEffect::Persist {
                key: key.to_string(),
                entity: None,
            },
        )
    }

    fn keys(effects: &[(i32, Staged)]) -> Vec<&str> {
        effects
            .iter()
            .map(|(_, effect)| match effect {
                StageEffect::Persist { key, .. } => key.as_str(),
                StageEffect::Emit { key, .. } => key.as_str(),
            })
            .collect()
    }

    /// A batch of two orders: the first order's record (written at its last position by the
    /// stage) would otherwise come before the shop's record that counted both.
    #[test]
    fn order_records_are_written_after_the_records_that_counted_them() {
        let batch = vec![
            write("buyer/s/1"),
            write("shop/s"),
            write("order/s/5"),
            write("buyer/s/1"),
            write("shop/s"),
            write("order/s/6"),
            write("customer/s/1"),
        ];
        assert_eq!(
            keys(&orders_last(batch)),
            [
                "buyer/s/1",
                "shop/s",
                "buyer/s/1",
                "shop/s",
                "customer/s/1",
                "order/s/5",
                "order/s/6"
            ]
        );
    }
}

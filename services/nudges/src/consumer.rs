//! The nudge rules on the shared stage (by shop): which source records are routed, how a
//! by-shop record becomes engine input, and how engine effects become stage effects. Timers
//! (due steps) go through the stage's timer-aware wait: `next_due` shortens the wait for input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use aftercart_kafka::stage::EffectOf;
use aftercart_kafka::{
    header, shop_of, staged_at, DataRequestAnswered, Inputs, LoopError, Prepared, Preparing, Stage,
    StageEffect, StageLogic, StageTopics, TopicNames, Unusable,
};
use aftercart_runtime::health::Readiness;
use aftercart_runtime::Event as _;
use aftercart_shopify::privacy::DataRequestReport;
use aftercart_shopify::time::now_ms;
use aftercart_shopify::Family;
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use crate::config::NudgesConfig;
use crate::discount::RecoveryDiscounts;
use crate::domain::engine::{Effect, Engine, Entity};
use crate::domain::input::{decode_input, is_relevant};
use crate::domain::nudge::{EmittedNudge, Nudge};
use crate::metrics::NudgesMetrics;

/// Output topic indexes in [`StageTopics::outputs`].
const NUDGES: usize = 0;
const DATA_REQUESTS: usize = 1;
/// How often people past the memory window are forgotten.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// A step this late and not yet written counts as overdue.
const OVERDUE_AFTER_MS: i64 = 60_000;
/// Due steps wait this long after a restore with running sequences, and after any input read
/// this late: the stage
/// ticks after every batch, and right after a restart (or while a backlog is read) the orders
/// that arrived meanwhile are not applied yet; a step sent then could follow a purchase.
const CATCH_UP_HOLD_MS: i64 = 5_000;
/// Input received this long before it is read is a backlog (an outage, a lagging consumer).
const STALE_AFTER_MS: i64 = 30_000;

pub type Loop = Stage<Nudges>;

/// The topics the router reads, with their family labels.
pub fn source_topics(config: &NudgesConfig) -> Vec<(String, &'static str)> {
    let names = TopicNames::new(&config.kafka.topic_prefix);
    let mut sources = vec![(config.abandonments_topic.clone(), "abandonments")];
    sources.extend(
        [
            Family::Orders,
            Family::Checkouts,
            Family::Customers,
            Family::Compliance,
        ]
        .iter()
        .map(|f| (names.family(*f), f.as_str())),
    );
    sources
}

pub fn build(
    config: &NudgesConfig,
    metrics: NudgesMetrics,
    ready: Readiness,
    discounts: Option<RecoveryDiscounts>,
) -> Result<Loop, LoopError> {
    let topics = StageTopics {
        client: "aftercart-nudges".to_string(),
        group: config.group.clone(),
        inputs: Inputs::ByShop {
            sources: source_topics(config),
            by_shop: config.by_shop_topic.clone(),
        },
        globals: Vec::new(),
        state: config.state_topic.clone(),
        dead_letter: config.dead_letter_topic.clone(),
        outputs: vec![
            config.nudges_topic.clone(),
            config.data_requests_topic.clone(),
        ],
    };
    let logic = Nudges::new(Engine::new(config.rules.clone()), metrics, discounts);
    Stage::new(
        config.kafka.clone(),
        topics,
        config.shutdown_timeout,
        logic.metrics.consumer.clone(),
        logic,
        ready,
    )
}

/// The nudge engine as the stage's logic.
pub struct Nudges {
    engine: Engine,
    metrics: NudgesMetrics,
    last_expiry: Instant,
    /// Recovery discount codes, when configured.
    discounts: Option<RecoveryDiscounts>,
    /// Wall time (ms) before which no step is sent ([`CATCH_UP_HOLD_MS`]). Atomic because
    /// [`StageLogic::routes`] sees source records through `&self`.
    hold_until_ms: AtomicI64,
}

/// What the stage writes: nudges, and answers to data requests. Written as the record itself;
/// a report read back on restore is no nudge (it has no step) and is skipped there.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Output {
    Nudge(Box<Nudge>),
    Answer(Box<DataRequestReport>),
}

pub(crate) type Staged = StageEffect<Entity, Output>;

impl Nudges {
    pub fn new(
        engine: Engine,
        metrics: NudgesMetrics,
        discounts: Option<RecoveryDiscounts>,
    ) -> Nudges {
        Nudges {
            engine,
            metrics,
            last_expiry: Instant::now(),
            discounts,
            hold_until_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Holds due steps for [`CATCH_UP_HOLD_MS`] from now.
    fn hold(&self) {
        self.hold_until_ms
            .fetch_max(now_ms().saturating_add(CATCH_UP_HOLD_MS), Ordering::Relaxed);
    }

    /// Holds due steps when `message` is part of a backlog.
    fn note_input(&self, message: &OwnedMessage) {
        if let Some(received) = message.timestamp().to_millis() {
            if now_ms().saturating_sub(received) > STALE_AFTER_MS {
                self.hold();
            }
        }
    }

    /// Turns engine effects into stage effects; counts are counted on the way.
    fn staged(&self, effect: Effect) -> Option<Staged> {
        match effect {
            Effect::Emit { key, nudge } => Some(StageEffect::Emit {
                topic: NUDGES,
                key,
                event_id: nudge.event_id.clone(),
                output: Output::Nudge(nudge),
            }),
            Effect::Answer { key, report } => Some(StageEffect::Emit {
                topic: DATA_REQUESTS,
                key,
                event_id: report.event_id.clone(),
                output: Output::Answer(report),
            }),
            Effect::Persist { key, entity } => Some(StageEffect::Persist { key, entity }),
            Effect::Scheduled => {
                self.metrics.scheduled();
                None
            }
            Effect::Suppressed(why) => {
                self.metrics.suppressed(why);
                None
            }
            Effect::Attributed { revenue } => {
                self.metrics.attributed(revenue);
                None
            }
        }
    }

    fn all(&self, effects: Vec<Effect>) -> Vec<Staged> {
        effects.into_iter().filter_map(|e| self.staged(e)).collect()
    }
}

impl StageLogic for Nudges {
    type Entity = Entity;
    type Output = Output;
    type Emitted = EmittedNudge;

    fn routes(&self, family: &'static str, message: &OwnedMessage) -> bool {
        let relevant = is_relevant(family, header(message, "shopify-topic"));
        if relevant {
            self.note_input(message);
        }
        relevant
    }

    fn apply(
        &mut self,
        partition: i32,
        family: &'static str,
        message: &OwnedMessage,
    ) -> Result<Vec<Staged>, Unusable> {
        self.note_input(message);
        let body = message.payload().unwrap_or_default();
        match decode_input(family, header(message, "shopify-topic"), body) {
            Ok(input) => {
                let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                let shop = shop_of(message);
                let effects = self.engine.apply(partition, &shop, input, at);
                Ok(self.all(effects))
            }
            Err(error) => Err(Unusable {
                label: error.as_label(),
                reason: error.to_string(),
            }),
        }
    }

    fn next_due(&self) -> Option<i64> {
        let hold = self.hold_until_ms.load(Ordering::Relaxed);
        self.engine.next_due().map(|due| due.max(hold))
    }

    fn tick(&mut self, now_ms: i64) -> Vec<(i32, Staged)> {
        let mut effects = if now_ms >= self.hold_until_ms.load(Ordering::Relaxed) {
            // Quiet hours are kept by the clock the nudges go out on, not the stage's.
            let sending_at = aftercart_shopify::time::now_ms();
            self.engine.fire_due_sending_at(now_ms, sending_at)
        } else {
            Vec::new()
        };
        if self.last_expiry.elapsed() >= EXPIRY_EVERY {
            self.last_expiry = Instant::now();
            effects.extend(self.engine.expire(now_ms));
        }
        staged_at(effects, |e| self.staged(e))
    }

    fn assign(&mut self, partition: i32, entities: HashMap<String, Entity>) -> Vec<Staged> {
        // Restored sequences may have steps that fell due while the partition was unowned.
        if entities.values().any(|e| matches!(e, Entity::Sequence(_))) {
            self.hold();
        }
        self.engine.assign(partition, entities);
        Vec::new()
    }

    fn revoke(&mut self, partition: i32) {
        self.engine.revoke(partition);
    }

    fn owns(&self, partition: i32) -> bool {
        self.engine.owns(partition)
    }

    fn reconcile(&mut self, partition: i32, emitted: &EmittedNudge) -> Vec<Staged> {
        let effects = self.engine.reconcile(partition, emitted);
        self.all(effects)
    }

    fn emitted(&self, output: &Output) {
        match output {
            Output::Nudge(nudge) => self.metrics.emitted(nudge.step),
            Output::Answer(report) => DataRequestAnswered { report }.emit(&self.metrics.consumer),
        }
    }

    fn gauges(&self) {
        self.metrics
            .state(self.engine.sizes(now_ms(), OVERDUE_AFTER_MS));
    }

    fn prepare_budget(&self) -> Duration {
        self.discounts
            .as_ref()
            .map_or(Duration::ZERO, RecoveryDiscounts::budget)
    }

    fn prepare<'a>(
        &'a mut self,
        effects: Vec<(i32, EffectOf<Self>)>,
        stop: &'a CancellationToken,
    ) -> Preparing<'a, Self> {
        Box::pin(async move {
            let effects = match &self.discounts {
                Some(discounts) => discounts.act(effects, stop).await?,
                None => effects,
            };
            Some(Prepared {
                effects,
                dead: Vec::new(),
                stopped: false,
            })
        })
    }
}

#[cfg(test)]
mod tests;

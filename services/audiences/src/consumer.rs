//! The audiences rules on the shared stage (by shop): which source records are routed, how a
//! by-shop record becomes engine input, and how engine effects become stage effects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aftercart_kafka::{
    header, shop_of, staged_at, DataRequestAnswered, Inputs, LoopError, Stage, StageEffect,
    StageLogic, StageTopics, TopicNames, Unusable,
};
use aftercart_runtime::health::Readiness;
use aftercart_runtime::Event as _;
use aftercart_shopify::privacy::DataRequestReport;
use aftercart_shopify::time::now_ms;
use aftercart_shopify::Family;
use rdkafka::message::{Message, OwnedMessage};

use crate::config::AudiencesConfig;
use crate::confirmations::Confirmations;
use crate::domain::batch::Batch;
use crate::domain::engine::{Effect, Engine};
use crate::domain::input::{decode_input, is_relevant};
use crate::domain::person::Person;
use crate::metrics::AudiencesMetrics;

/// Output topic indexes in [`StageTopics::outputs`].
const BATCHES: usize = 0;
const DATA_REQUESTS: usize = 1;
/// Counting members walks every person: at most this often.
const MEMBERS_EVERY: Duration = Duration::from_secs(10);

/// The audiences engine's poll loop.
pub type Loop = Stage<Audiences>;

/// The topics the router reads, with their family labels.
pub fn source_topics(config: &AudiencesConfig) -> Vec<(String, &'static str)> {
    let names = TopicNames::new(&config.kafka.topic_prefix);
    let mut sources = vec![(config.abandonments_topic.clone(), "abandonments")];
    sources.extend(
        [Family::Orders, Family::Customers, Family::Compliance]
            .iter()
            .map(|f| (names.family(*f), f.as_str())),
    );
    sources
}

/// The engine loop; it clears pending removals from what `confirmations` publishes.
pub fn build(
    config: &AudiencesConfig,
    metrics: AudiencesMetrics,
    ready: Readiness,
    confirmations: Confirmations,
) -> Result<Loop, LoopError> {
    let topics = StageTopics {
        client: "aftercart-audiences".to_string(),
        group: config.group.clone(),
        inputs: Inputs::ByShop {
            sources: source_topics(config),
            by_shop: config.by_shop_topic.clone(),
        },
        globals: Vec::new(),
        state: config.state_topic.clone(),
        dead_letter: config.dead_letter_topic.clone(),
        outputs: vec![
            config.batches_topic.clone(),
            config.data_requests_topic.clone(),
        ],
    };
    let logic = Audiences {
        engine: Engine::new(config.rules.clone()),
        metrics,
        last_members: std::sync::Mutex::new(None),
        confirmations,
        confirmed_version: 0,
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

/// The audiences engine as the stage's logic.
pub struct Audiences {
    engine: Engine,
    metrics: AudiencesMetrics,
    /// When members were last counted (`&self` refreshes it).
    last_members: std::sync::Mutex<Option<Instant>>,
    /// The exporters' progress, read by [`crate::confirmations::run`].
    confirmations: Confirmations,
    /// The version of it last applied.
    confirmed_version: u64,
}

/// What the engine writes: export batches, and answers to data requests. Written as the
/// record itself (a report read back on restore is not a batch, and is skipped there).
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum Output {
    Batch(Box<Batch>),
    Report(Box<DataRequestReport>),
}

type Staged = StageEffect<Person, Output>;

fn staged(effect: Effect) -> Staged {
    match effect {
        Effect::Emit { key, batch } => StageEffect::Emit {
            topic: BATCHES,
            key,
            event_id: batch.batch_id.clone(),
            output: Output::Batch(batch),
        },
        Effect::Report { key, report } => StageEffect::Emit {
            topic: DATA_REQUESTS,
            key,
            event_id: report.event_id.clone(),
            output: Output::Report(report),
        },
        Effect::Persist { key, person } => StageEffect::Persist {
            key,
            entity: person,
        },
    }
}

impl StageLogic for Audiences {
    type Entity = Person;
    type Output = Output;
    type Emitted = Batch;

    fn routes(&self, family: &'static str, message: &OwnedMessage) -> bool {
        is_relevant(family, header(message, "shopify-topic"))
    }

    fn apply(
        &mut self,
        partition: i32,
        family: &'static str,
        message: &OwnedMessage,
    ) -> Result<Vec<Staged>, Unusable> {
        let received = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let body = message.payload().unwrap_or_default();
        match decode_input(family, header(message, "shopify-topic"), body, received) {
            Ok(input) => {
                let shop = shop_of(message);
                let before = self.engine.suppressed();
                let effects =
                    self.engine
                        .apply_received(partition, &shop, input, received, now_ms());
                self.metrics
                    .redacted_facts(self.engine.suppressed() - before);
                Ok(effects.into_iter().map(staged).collect())
            }
            Err(error) => Err(Unusable {
                label: error.as_label(),
                reason: error.to_string(),
            }),
        }
    }

    fn tick(&mut self, now_ms: i64) -> Vec<(i32, Staged)> {
        let mut confirmed = Vec::new();
        if let Some(published) = self.confirmations.since(self.confirmed_version) {
            self.confirmed_version = published.version;
            confirmed = self.engine.confirm(&published.through);
        }
        let before = self.engine.stranded_removals().clone();
        let reemitted = self.engine.reemitted().clone();
        // Read now, after the stage had every earlier write acknowledged.
        let written = self.confirmations.mark();
        let mut effects = self.engine.tick_marking(now_ms, written);
        effects.extend(confirmed);
        for (destination, count) in self.engine.reemitted() {
            let people = count - reemitted.get(destination).copied().unwrap_or(0);
            if people > 0 {
                self.metrics.removals_reemitted(destination, people);
                tracing::warn!(%destination, people, "Removals not confirmed by the destination's exporter within AFTERCART_AUDIENCES_REMOVAL_REEMIT_AFTER were emitted again: the destination has been refusing them.");
            }
        }
        for (destination, count) in self.engine.stranded_removals() {
            let people = count - before.get(destination).copied().unwrap_or(0);
            if people > 0 {
                tracing::warn!(%destination, people, "Removals are due at a destination no longer in the audiences configuration; they are kept, not dropped, and sent once it is configured again.");
            }
        }
        staged_at(effects, |e| [staged(e)])
    }

    fn assign(&mut self, partition: i32, entities: HashMap<String, Person>) -> Vec<Staged> {
        self.engine.assign(partition, entities);
        *self.last_members.get_mut().expect("not poisoned") = None;
        Vec::new()
    }

    fn revoke(&mut self, partition: i32) {
        self.release(partition);
    }

    fn release(&mut self, partition: i32) -> Option<HashMap<String, Person>> {
        *self.last_members.get_mut().expect("not poisoned") = None;
        self.engine.release(partition)
    }

    fn owns(&self, partition: i32) -> bool {
        self.engine.owns(partition)
    }

    fn reconcile(&mut self, partition: i32, batch: &Batch) -> Vec<Staged> {
        self.engine
            .reconcile(partition, batch)
            .into_iter()
            .map(staged)
            .collect()
    }

    fn emitted(&self, output: &Output) {
        match output {
            Output::Batch(_) => self.metrics.emitted(),
            Output::Report(report) => DataRequestAnswered { report }.emit(&self.metrics.consumer),
        }
    }

    fn gauges(&self) {
        {
            let mut last = self.last_members.lock().expect("not poisoned");
            if last.is_some_and(|at| at.elapsed() < MEMBERS_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.metrics
            .members(&self.engine.members(), self.engine.people());
    }
}

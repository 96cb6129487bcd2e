//! The abandonment rules on the shared stage (by partition): journey records become engine
//! input, customers and compliance are global tables, engine effects become stage effects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aftercart_kafka::stage::EffectOf;
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

use crate::config::AbandonmentConfig;
use crate::domain::consent::Stored;
use crate::domain::engine::{Effect, Engine};
use crate::domain::event::{EmittedEvent, EventType, Kind, OutputEvent};
use crate::domain::input::{global_input, journey_input, GlobalInput, PoisonRecord};
use crate::metrics::AbandonmentMetrics;
use data_requests::{AnswerWritten, DataRequests};

/// How often idle journeys are expired.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// The abandonment service's poll loop.
pub type Loop = Stage<Abandonment>;

/// Builds the loop: the stage over the journey topics, with the engine as its logic.
pub fn build(
    config: &AbandonmentConfig,
    metrics: AbandonmentMetrics,
    ready: Readiness,
) -> Result<Loop, LoopError> {
    let names = TopicNames::new(&config.kafka.topic_prefix);
    let labelled = |families: &[Family]| -> Vec<(String, &'static str)> {
        families
            .iter()
            .map(|f| (names.family(*f), f.as_str()))
            .collect()
    };
    let topics = StageTopics {
        client: "aftercart-abandonment".to_string(),
        group: config.group.clone(),
        // Partition N of every journey topic holds the same journeys (range keeps them together).
        inputs: Inputs::ByPartition(labelled(&[
            Family::Checkouts,
            Family::Carts,
            Family::Orders,
        ])),
        globals: labelled(&[Family::Customers, Family::Compliance]),
        state: config.state_topic.clone(),
        dead_letter: config.dead_letter_topic.clone(),
        outputs: vec![
            config.output_topic.clone(),
            config.data_requests_topic.clone(),
        ],
    };
    let logic = Abandonment {
        engine: Engine::new(config.rules.clone()),
        metrics,
        last_expiry: Instant::now(),
        data_requests: DataRequests::default(),
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

/// Output topic indexes in [`StageTopics::outputs`].
const EVENTS: usize = 0;
const DATA_REQUESTS: usize = 1;

/// What the service writes: abandonment events, and answers to data requests.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Output {
    Event(Box<OutputEvent>),
    DataRequest(Box<DataRequestReport>),
}

/// An output read back on restore: an abandonment event, or an answer to a data request (the
/// topic is shared: other services' answers are in it too).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum Emitted {
    Event(EmittedEvent),
    Answer(AnswerWritten),
}

/// The abandonment engine as the stage's logic.
pub struct Abandonment {
    engine: Engine,
    metrics: AbandonmentMetrics,
    last_expiry: Instant,
    /// Data requests remembered, and the answers of the owned partitions.
    data_requests: DataRequests,
}

fn staged(effect: Effect) -> EffectOf<Abandonment> {
    match effect {
        Effect::Emit { key, event } => StageEffect::Emit {
            topic: EVENTS,
            key,
            event_id: event.event_id.clone(),
            output: Output::Event(event),
        },
        Effect::Persist { key, journey } => StageEffect::Persist {
            key,
            entity: journey.map(|j| Box::new(Stored::Journey(j))),
        },
        Effect::Consent { key, consent } => StageEffect::Persist {
            key,
            entity: consent.map(|c| Box::new(Stored::Consent(c))),
        },
    }
}

fn unusable(error: PoisonRecord) -> Unusable {
    Unusable {
        label: error.as_label(),
        reason: error.to_string(),
    }
}

impl StageLogic for Abandonment {
    type Entity = Stored;
    type Output = Output;
    type Emitted = Emitted;

    fn apply(
        &mut self,
        partition: i32,
        _family: &'static str,
        message: &OwnedMessage,
    ) -> Result<Vec<EffectOf<Self>>, Unusable> {
        let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            return Err(unusable(PoisonRecord::Impossible(
                "record without a UTF-8 key",
            )));
        };
        let input = journey_input(
            header(message, "shopify-topic"),
            message.payload().unwrap_or_default(),
        )
        .map_err(unusable)?;
        let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let effects = self
            .engine
            .apply(partition, key, &shop_of(message), input, at);
        Ok(effects.into_iter().map(staged).collect())
    }

    fn apply_global(
        &mut self,
        _family: &'static str,
        message: &OwnedMessage,
    ) -> Result<Vec<(i32, EffectOf<Self>)>, Unusable> {
        let input = global_input(
            header(message, "shopify-topic"),
            message.payload().unwrap_or_default(),
        )
        .map_err(unusable)?;
        let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let shop = shop_of(message);
        if let GlobalInput::DataRequest(request) = &input {
            return Ok(self.data_requests.read(&self.engine, &shop, request, at));
        }
        Ok(staged_at(self.engine.apply_global(&shop, input, at), |e| {
            [staged(e)]
        }))
    }

    fn next_due(&self) -> Option<i64> {
        // Partitions assigned with requests still to answer: at once (the next tick).
        let answers = self.data_requests.pending().then(now_ms);
        match (self.engine.next_due(), answers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn tick(&mut self, now_ms: i64) -> Vec<(i32, EffectOf<Self>)> {
        let mut effects = self.engine.fire_due(now_ms);
        let expiring = self.last_expiry.elapsed() >= EXPIRY_EVERY;
        if expiring {
            self.last_expiry = Instant::now();
            effects.extend(self.engine.expire(now_ms));
        }
        let mut staged = staged_at(effects, |e| [staged(e)]);
        // After the restore's reconciliation: an answer read back there left its mark.
        staged.extend(self.data_requests.answer_assigned(&self.engine));
        if expiring {
            staged.extend(self.data_requests.expire(now_ms));
        }
        staged
    }

    fn assign(
        &mut self,
        partition: i32,
        mut entities: HashMap<String, Stored>,
    ) -> Vec<EffectOf<Self>> {
        let answered = self.data_requests.answered_in(&mut entities);
        let effects = self.engine.restore(partition, entities);
        self.data_requests.assigned(partition, answered);
        effects.into_iter().map(staged).collect()
    }

    fn revoke(&mut self, partition: i32) {
        self.engine.revoke(partition);
        self.data_requests.revoke(partition);
    }

    fn release(&mut self, partition: i32) -> Option<HashMap<String, Stored>> {
        let marks = self.data_requests.release(partition);
        let mut stored = self.engine.release_stored(partition)?;
        stored.extend(marks);
        Some(stored)
    }

    fn owns(&self, partition: i32) -> bool {
        self.engine.owns(partition)
    }

    fn reconcile(&mut self, partition: i32, emitted: &Emitted) -> Vec<EffectOf<Self>> {
        match emitted {
            Emitted::Event(event) => self
                .engine
                .reconcile(partition, event)
                .into_iter()
                .map(staged)
                .collect(),
            Emitted::Answer(answer) => self.data_requests.reconciled(partition, answer),
        }
    }

    fn emitted(&self, output: &Output) {
        let event = match output {
            Output::Event(event) => event,
            Output::DataRequest(report) => {
                DataRequestAnswered { report }.emit(&self.metrics.consumer);
                return;
            }
        };
        let kind = match event.kind {
            Kind::Cart => "cart",
            Kind::Checkout => "checkout",
        };
        match event.event_type {
            EventType::Abandoned => {
                let segments = event.segments.as_ref();
                self.metrics.abandoned(
                    kind,
                    segments.map_or("unknown", |s| s.stage.as_str()),
                    segments.map_or("unknown", |s| s.value_tier.as_str()),
                    segments.map_or("unknown", |s| s.customer.as_str()),
                )
            }
            EventType::Recovered => self
                .metrics
                .recovered(kind, event.recovered_after_seconds.unwrap_or(0)),
        }
    }

    fn gauges(&self) {
        self.metrics.journeys(self.engine.journeys());
    }
}

mod data_requests;
#[cfg(test)]
mod tests;

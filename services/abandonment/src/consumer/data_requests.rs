//! Answers to `customers/data_request` on the abandonment stage. Every instance reads the
//! request (a global record, from the start of the compliance topic at every start) and answers
//! for the journey partitions it owns, one report each (`abandonment/partition-<n>`); requests
//! within Shopify's deadline are remembered and answered for a partition when it is assigned, so
//! a request read before anyone owned the partition is still answered. Each answer leaves a mark
//! in the partition's changelog ([`crate::domain::answered`]): a partition answers a request
//! once, not again after a rebalance or a restart.

use std::collections::HashMap;

use aftercart_kafka::stage::EffectOf;
use aftercart_kafka::StageEffect;
use aftercart_shopify::privacy::{
    report_event_id, DataRequest, DataRequestReport, Holding, DATA_REQUEST_DEADLINE_MS,
};
use aftercart_shopify::time::now_ms;

use super::{Abandonment, Output, DATA_REQUESTS};
use crate::domain::answered::{self, Answered};
use crate::domain::consent::Stored;
use crate::domain::engine::Engine;

type Effect = EffectOf<Abandonment>;

/// The requests remembered and the answers given by the partitions owned here.
#[derive(Default)]
pub struct DataRequests {
    /// Requests read within the deadline, with their shop and time.
    requests: Vec<(String, DataRequest, i64)>,
    /// By owned partition: the marks of its answers (report event id → request time).
    answered: HashMap<i32, HashMap<String, i64>>,
}

impl DataRequests {
    /// A request read: remembered, and answered by each owned partition that has not yet.
    pub fn read(
        &mut self,
        engine: &Engine,
        shop: &str,
        request: &DataRequest,
        at_ms: i64,
    ) -> Vec<(i32, Effect)> {
        let horizon = now_ms() - DATA_REQUEST_DEADLINE_MS;
        self.requests.retain(|(_, _, at)| *at > horizon);
        if at_ms > horizon {
            self.requests
                .push((shop.to_string(), request.clone(), at_ms));
        }
        let owned: Vec<i32> = self.answered.keys().copied().collect();
        owned
            .into_iter()
            .flat_map(|partition| {
                self.answer(engine, partition, shop, request, at_ms)
                    .into_iter()
                    .map(move |e| (partition, e))
            })
            .collect()
    }

    /// Takes the answer marks out of a partition's restored entities (the engine has no use
    /// for them).
    pub fn answered_in(&self, stored: &mut HashMap<String, Stored>) -> HashMap<String, i64> {
        let keys: Vec<String> = stored
            .iter()
            .filter(|(key, entity)| {
                key.starts_with(answered::PREFIX) && matches!(entity, Stored::Answered(_))
            })
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| match stored.remove(&key) {
                Some(Stored::Answered(mark)) => Some((key, mark.request_at_ms)),
                _ => None,
            })
            .collect()
    }

    /// A partition assigned (and restored in `engine`), with its answer marks: the remembered
    /// requests it has not answered yet, answered.
    pub fn assigned(
        &mut self,
        engine: &Engine,
        partition: i32,
        marks: HashMap<String, i64>,
    ) -> Vec<Effect> {
        self.answered.insert(partition, marks);
        let requests = self.requests.clone();
        requests
            .iter()
            .flat_map(|(shop, request, at_ms)| {
                self.answer(engine, partition, shop, request, *at_ms)
            })
            .collect()
    }

    pub fn revoke(&mut self, partition: i32) {
        self.answered.remove(&partition);
    }

    /// Revokes a partition and hands its marks back as changelog entities (kept by the stage
    /// for a rebalance that returns the partition unchanged).
    pub fn release(&mut self, partition: i32) -> HashMap<String, Stored> {
        self.answered
            .remove(&partition)
            .unwrap_or_default()
            .into_iter()
            .map(|(key, at)| (key, Stored::Answered(Answered { request_at_ms: at })))
            .collect()
    }

    /// Forgets the requests and deletes the marks past the deadline.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(i32, Effect)> {
        let horizon = now_ms - DATA_REQUEST_DEADLINE_MS;
        self.requests.retain(|(_, _, at)| *at > horizon);
        let mut effects = Vec::new();
        for (partition, marks) in &mut self.answered {
            marks.retain(|key, at| {
                let keep = *at > horizon;
                if !keep {
                    effects.push((
                        *partition,
                        StageEffect::Persist {
                            key: key.clone(),
                            entity: None,
                        },
                    ));
                }
                keep
            });
        }
        effects
    }

    /// The report of one owned partition with its mark, unless it answered the request already.
    fn answer(
        &mut self,
        engine: &Engine,
        partition: i32,
        shop: &str,
        request: &DataRequest,
        at_ms: i64,
    ) -> Vec<Effect> {
        let Some(marks) = self.answered.get_mut(&partition) else {
            return Vec::new();
        };
        let service = format!("abandonment/partition-{partition}");
        let mark = answered::key(&report_event_id(&service, shop, request));
        if marks.contains_key(&mark) {
            return Vec::new();
        }
        marks.insert(mark.clone(), at_ms);
        let journeys = engine
            .held_about(shop, &request.person)
            .into_iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, journeys)| journeys)
            .unwrap_or_default();
        let consent = engine.consent_held(partition, shop, &request.person);
        let mut holdings: Vec<Holding> = journeys
            .into_iter()
            .map(|(key, journey)| {
                Holding::new(
                    "journey",
                    key,
                    serde_json::to_value(&journey).unwrap_or_default(),
                )
            })
            .collect();
        holdings.extend(consent.map(|(key, consent)| {
            Holding::new(
                "consent",
                key,
                serde_json::to_value(consent).unwrap_or_default(),
            )
        }));
        let report = DataRequestReport::new(&service, shop, request, at_ms, holdings);
        vec![
            StageEffect::Emit {
                topic: DATA_REQUESTS,
                key: format!("{shop}/data-request"),
                event_id: report.event_id.clone(),
                output: Output::DataRequest(Box::new(report)),
            },
            StageEffect::Persist {
                key: mark,
                entity: Some(Box::new(Stored::Answered(Answered {
                    request_at_ms: at_ms,
                }))),
            },
        ]
    }
}

//! Answers to `customers/data_request` on the abandonment stage. Every instance reads the
//! request (a global record, from the start of the compliance topic at every start) and answers
//! for the journey partitions it owns, one report each (`abandonment/partition-<n>`); requests
//! within Shopify's deadline are remembered and answered for a partition when it is assigned, so
//! a request read before anyone owned the partition is still answered. Each answer leaves a mark
//! in the partition's changelog ([`crate::domain::answered`]): a partition answers a request
//! once, not again after a rebalance or a restart. An answer written just before a crash, whose
//! mark never reached the changelog, is read back by the restore and leaves its mark then: the
//! remembered requests of an assigned partition are answered at the next tick, after that.

use std::collections::{BTreeSet, HashMap};

use aftercart_kafka::stage::EffectOf;
use aftercart_kafka::StageEffect;
use aftercart_shopify::privacy::{
    report_event_id, DataRequest, DataRequestReport, Holding, DATA_REQUEST_DEADLINE_MS,
};
use aftercart_shopify::time::{now_ms, parse_time_ms};
use serde::Deserialize;

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
    /// Partitions assigned whose remembered requests are not answered yet.
    pending: BTreeSet<i32>,
}

/// What reconciling needs of an answer read back on restore (any service's: the topic is shared).
#[derive(Debug, Clone, Deserialize)]
pub struct AnswerWritten {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub service: String,
    /// The request's time ([`DataRequestReport::new`]), for the mark's expiry.
    pub answered_at: String,
}

/// The service name of a partition's answers (their event ids derive from it).
fn service_of(partition: i32) -> String {
    format!("abandonment/partition-{partition}")
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

    /// A partition assigned, with its answer marks: its remembered requests are answered at
    /// the next tick ([`DataRequests::answer_assigned`]), once the restore has reconciled the
    /// answers written after its checkpoint.
    pub fn assigned(&mut self, partition: i32, marks: HashMap<String, i64>) {
        self.answered.insert(partition, marks);
        self.pending.insert(partition);
    }

    /// Whether an assigned partition waits for its remembered requests to be answered.
    pub fn pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The remembered requests each partition assigned since the last call has not answered
    /// (restored in `engine`), answered.
    pub fn answer_assigned(&mut self, engine: &Engine) -> Vec<(i32, Effect)> {
        let requests = self.requests.clone();
        let mut effects = Vec::new();
        for partition in std::mem::take(&mut self.pending) {
            for (shop, request, at_ms) in &requests {
                let answer = self.answer(engine, partition, shop, request, *at_ms);
                effects.extend(answer.into_iter().map(|e| (partition, e)));
            }
        }
        effects
    }

    /// An answer found after the checkpoint on restore: when it is this partition's, its mark
    /// (lost if the changelog was not written before a crash) is kept and written.
    pub fn reconciled(&mut self, partition: i32, answer: &AnswerWritten) -> Vec<Effect> {
        if answer.event_type != "data_request.answered" || answer.service != service_of(partition) {
            return Vec::new();
        }
        let Some(marks) = self.answered.get_mut(&partition) else {
            return Vec::new();
        };
        let mark = answered::key(&answer.event_id);
        if marks.contains_key(&mark) {
            return Vec::new();
        }
        let at_ms = parse_time_ms(&answer.answered_at).unwrap_or_else(now_ms);
        marks.insert(mark.clone(), at_ms);
        vec![StageEffect::Persist {
            key: mark,
            entity: Some(Box::new(Stored::Answered(Answered {
                request_at_ms: at_ms,
            }))),
        }]
    }

    pub fn revoke(&mut self, partition: i32) {
        self.answered.remove(&partition);
        self.pending.remove(&partition);
    }

    /// Revokes a partition and hands its marks back as changelog entities (kept by the stage
    /// for a rebalance that returns the partition unchanged).
    pub fn release(&mut self, partition: i32) -> HashMap<String, Stored> {
        self.pending.remove(&partition);
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
        let service = service_of(partition);
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

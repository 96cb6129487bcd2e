//! The partitions of a by-shop stage's source topics, as the broker has them.
//!
//! Timers of a by-shop stage wait for the router to have routed every source partition
//! ([`super::horizon`]). The source topics are the ingress's (and abandonment's), created with
//! their own partition count, which need not be this service's `AFTERCART_TOPIC_PARTITIONS`:
//! a partition left out would not hold timers for an order still in it. So the list is taken
//! from the broker's metadata, again after each assignment (partitions added to a subscribed
//! topic bring a rebalance), and the setting's count stands in only until the broker answers.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};

use super::horizon::Pair;
use crate::KafkaSettings;

/// Every partition of the source topics, known or (until the broker answers) supposed.
#[derive(Debug, Default)]
pub struct SourcePartitions {
    topics: Vec<String>,
    pairs: Vec<Pair>,
    /// Whether `pairs` are the broker's (else the setting's, asked again at the next look).
    known: bool,
}

impl SourcePartitions {
    /// The setting's count of partitions for each of `topics`, until learned.
    pub fn new(kafka: &KafkaSettings, topics: &[String]) -> SourcePartitions {
        SourcePartitions {
            topics: topics.to_vec(),
            pairs: topics
                .iter()
                .flat_map(|topic| (0..kafka.partitions.max(1)).map(|p| (topic.clone(), p)))
                .collect(),
            known: false,
        }
    }

    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    /// The topics may have changed (a new assignment): learn them again at the next look.
    pub fn forget(&mut self) {
        self.known = false;
    }

    /// Asks the broker for the topics' partitions, if not known yet: one metadata request for
    /// all topics within `timeout` (blocking; made only with the ends' asks, once per
    /// assignment). Not answered, or a topic missing, keeps the list as it was, asked again
    /// next time.
    pub fn learn<C: ConsumerContext, K: Consumer<C>>(&mut self, consumer: &K, timeout: Duration) {
        if self.known || self.topics.is_empty() {
            return;
        }
        let Ok(metadata) = consumer.fetch_metadata(None, timeout) else {
            return;
        };
        let mut pairs = Vec::with_capacity(self.pairs.len());
        for topic in &self.topics {
            let Some(found) = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            else {
                return;
            };
            pairs.extend(found.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
        self.pairs = pairs;
        self.known = true;
    }
}

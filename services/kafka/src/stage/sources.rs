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

    /// The topics whose partitions are to be asked of the broker: all of them while the list
    /// is the setting's, none once it is the broker's.
    pub fn unknown(&self) -> Vec<String> {
        if self.known {
            Vec::new()
        } else {
            self.topics.clone()
        }
    }

    /// The broker's list ([`partitions_of`]), asked after the last [`SourcePartitions::forget`]:
    /// kept until the next.
    pub fn learned(&mut self, pairs: Vec<Pair>) {
        self.pairs = pairs;
        self.known = true;
    }
}

/// Every partition of `topics` as the broker has them: one metadata request for all topics
/// within `timeout` (blocking; made by the asks' thread, once per assignment). `None` when not
/// answered, or a topic is missing: the list stays as it was, asked again next time.
pub fn partitions_of<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topics: &[String],
    timeout: Duration,
) -> Option<Vec<Pair>> {
    let metadata = consumer.fetch_metadata(None, timeout).ok()?;
    let mut pairs = Vec::new();
    for topic in topics {
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())?;
        pairs.extend(found.partitions().iter().map(|p| (topic.clone(), p.id())));
    }
    Some(pairs)
}

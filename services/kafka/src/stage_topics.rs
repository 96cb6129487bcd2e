//! The topics of a by-shop stage (journey, referrals, audiences, nudges) in one place: the raw
//! journey families it reads, what else it reads and writes, its by-shop, dead-letter and state
//! topics, and which of them must share the by-shop topic's partition count.

use aftercart_shopify::Family;

use crate::topics::{TopicNames, TopicSpec};
use crate::KafkaSettings;

/// The topics of one by-shop stage.
pub struct StageTopics<'a> {
    /// Internal topic that brings all of one shop's facts to one partition.
    pub by_shop: &'a str,
    /// Compacted changelog of the stage's state.
    pub state: &'a str,
    /// Records that cannot be used (copies of raw records).
    pub dead_letter: &'a str,
    /// Topics read besides the journey families (their partition counts are their own).
    pub inputs: &'a [&'a str],
    /// Topics written per by-shop partition: they share its partition count.
    pub outputs: &'a [&'a str],
}

impl StageTopics<'_> {
    /// Every topic to ensure, and the names that must have the by-shop topic's partition count
    /// (the state and outputs of by-shop partition N live in partition N).
    pub fn specs(&self, kafka: &KafkaSettings) -> (Vec<TopicSpec>, Vec<String>) {
        let names = TopicNames::new(&kafka.topic_prefix);
        let mut specs: Vec<TopicSpec> = Family::JOURNEY
            .iter()
            .map(|f| TopicSpec::new(names.family(*f), kafka))
            .collect();
        for topic in self.outputs.iter().chain(self.inputs) {
            specs.push(TopicSpec::new(*topic, kafka));
        }
        for topic in [self.by_shop, self.dead_letter] {
            specs.push(TopicSpec::new(topic, kafka).holding_copies());
        }
        specs.push(TopicSpec::changelog(self.state, kafka));
        let mut same = vec![self.by_shop.to_string(), self.state.to_string()];
        same.extend(self.outputs.iter().map(|t| t.to_string()));
        (specs, same)
    }
}

//! Kafka wiring shared by every aftercart service: connection settings and their flags, topic
//! names and creation, the producer configuration, and librdkafka statistics as metrics.

pub mod producer;
pub mod settings;
pub mod stats;
pub mod topics;

pub use settings::{KafkaArgs, KafkaSettings};
pub use stats::{ClientStats, StatsContext};
pub use topics::{ensure_topics, ensure_topics_with_retry, TopicError, TopicNames, TopicSpec};

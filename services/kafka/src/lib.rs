//! Kafka wiring shared by every aftercart service: connection settings and their flags, topic
//! names and creation, the producer configuration, librdkafka statistics as metrics, and the
//! record plumbing consumer services share (partition reads, headers, dead letters).

pub mod client_watch;
pub mod events;
pub mod group;
pub mod loop_metrics;
pub mod partition_reader;
pub mod producer;
pub mod properties;
pub mod records;
pub mod settings;
pub mod stage;
pub mod stage_topics;
pub mod startup;
pub mod stats;
pub mod timers;
pub mod topics;

pub use client_watch::{ClientWatch, ErrorKind};
pub use events::DataRequestAnswered;
pub use group::{
    close_off_runtime, receive_batch_within, ConsumerLag, GroupContext, LoopError, RebalanceEvent,
    IDLE_WAIT,
};
pub use loop_metrics::LoopMetrics;
pub use partition_reader::{for_each_record, ReadTo, StoreError, StoredRecord};
pub use properties::{ClientKind, KafkaProperties};
pub use records::{dead_letter_record, header, shop_of, DeadLetter};
pub use settings::{KafkaArgs, KafkaSettings};
pub use stage::{
    staged_at, Inputs, Prepared, Preparing, Stage, StageEffect, StageLogic, StageTopics, Unusable,
};
pub use startup::retry_with_backoff;
pub use stats::{ClientStats, StatsContext};
pub use topics::{
    describe_topic_configs, describe_topic_configs_with, ensure_topics, ensure_topics_with_retry,
    TopicError, TopicNames, TopicSpec,
};

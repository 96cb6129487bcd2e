//! Cart-abandonment segmentation: decides when a shopping journey is abandoned, labels it with
//! the segments marketers act on, and notices when an abandoned journey is recovered.

pub mod app;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod metrics;

pub use app::{serve, topic_specs, AbandonmentService, ServeError};
pub use config::{AbandonmentArgs, AbandonmentConfig, AbandonmentDefaults};

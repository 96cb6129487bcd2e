//! The webhook ingress: receives Shopify deliveries, verifies their signature over the raw body,
//! dedupes them, and publishes the exact bytes to Kafka, answering 2xx only once Kafka has them.

pub mod app;
pub mod config;
pub mod connection;
pub mod dedupe;
pub mod events;
pub mod http;
pub mod metrics;
pub mod publish;
pub mod readiness;
pub mod spool;

pub use app::{prepare_topics, serve, App, ServeError};
pub use config::{IngressArgs, IngressConfig, IngressDefaults, SpoolConfig};
pub use metrics::IngressMetrics;

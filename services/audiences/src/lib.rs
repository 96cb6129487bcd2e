//! `aftercart audiences`: keeps consented retargeting audiences (abandoners, purchasers,
//! customers) in sync on Meta, Google Ads, TikTok, files and webhooks, each with its own
//! normalisation and hashing.

pub mod app;
pub mod config;
pub mod confirmations;
pub mod consumer;
pub mod domain;
pub mod events;
pub mod export;
pub mod metrics;
pub mod orphans;
pub mod platform;

pub use app::{serve, topic_specs, AudiencesService, ServeError};
pub use config::{AudiencesArgs, AudiencesConfig, AudiencesDefaults};

//! Referral triggers: turns the order stream into a refer-a-friend programme: invites buyers
//! to become advocates, attributes friends' orders to advocates' codes, checks for fraud, and
//! holds rewards through a review window before granting or voiding them.

pub mod actions;
pub mod app;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod events;
pub mod metrics;

pub use app::{serve, topic_specs, ReferralsService, ServeError};
pub use config::{ReferralsArgs, ReferralsConfig, ReferralsDefaults};

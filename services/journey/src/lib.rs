//! The post-purchase journey: turns a shop's orders and fulfilments into touchpoints on
//! `aftercart.touchpoints` (order confirmed, shipped, out for delivery, delivered, delivery
//! problem) and timed ones (review request, replenishment reminder), and relays the referral
//! invitation when the referrals service invites at delivery.

pub mod app;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod metrics;
pub mod watchdog;

pub use app::{serve, topic_specs, JourneyService, ServeError};
pub use config::{JourneyArgs, JourneyConfig};

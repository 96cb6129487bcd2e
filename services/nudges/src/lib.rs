//! Recovery nudges: after a checkout abandonment of a person who may be contacted, one nudge per
//! step of the shop's cadence on `aftercart.nudges`, stopped by any order of the same person
//! (customer id, email or phone, not only the same cart), a recovery, an unsubscribe, a
//! redaction or the checkout's deletion; and sent on to Klaviyo, a signed webhook or files.

pub mod app;
pub mod config;
pub mod consumer;
pub mod deliver;
pub mod discount;
pub mod domain;
pub mod events;
pub mod metrics;

pub use app::{serve, topic_specs, NudgesService, ServeError};
pub use config::{NudgesArgs, NudgesConfig, NudgesDefaults};

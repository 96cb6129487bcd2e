//! Process plumbing shared by every aftercart service: the admin listener (`/livez`, `/readyz`,
//! `/metrics`), readiness, signal handling, logging and configuration validation.

pub mod admin;
pub mod build_info;
pub mod config;
pub mod currency_label;
pub mod event;
pub mod health;
pub mod metrics_catalog;
pub mod outbound;
pub mod process;
pub mod renamed;
pub mod service;
pub mod shutdown;
pub mod state_hash;
pub mod telemetry;

pub use admin::AdminServer;
pub use config::{ConfigErrors, EX_CONFIG, EX_USAGE};
pub use event::Event;
pub use health::Health;
pub use process::Process;
pub use service::{run_command, run_service, ProcessArgs, Service};
pub use shutdown::Shutdown;

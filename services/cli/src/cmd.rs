//! One module per subcommand.

pub mod abandonment;
pub mod audiences;
pub mod dev;
pub mod docs;
pub mod ingress;
pub mod journey;
pub mod kafka;
pub mod loadgen;
pub mod nudges;
pub mod referrals;
pub mod send;
pub mod spool;
pub mod topics;

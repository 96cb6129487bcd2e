//! Pure referral logic, no I/O: decoding inputs, identities and codes, the per-shop state
//! machine that issues invites and rewards.

pub mod code;
pub mod engine;
pub mod event;
pub mod identity;
pub mod input;
pub mod state;

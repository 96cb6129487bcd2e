//! Pure nudge logic, no I/O: decoding inputs, keyed identity hashes, the cadence, and the
//! engine that schedules, stops and emits nudges.

pub mod cadence;
pub mod engine;
pub mod identity;
pub mod input;
pub mod nudge;

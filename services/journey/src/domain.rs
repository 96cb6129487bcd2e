//! The journey's pure rules: input decoding, state, the engine and the touchpoints it emits.

pub mod engine;
pub mod input;
pub mod kpis;
pub mod state;
pub mod touchpoint;

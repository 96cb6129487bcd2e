//! Pure abandonment logic, no I/O: decoding inputs, the journey state machine, segments.

pub mod answered;
pub mod consent;
pub mod engine;
pub mod event;
pub mod input;
pub mod journey;
pub use aftercart_shopify::money;
pub mod segments;

//! The audiences domain, free of I/O: facts decoded from records, audience definitions, people
//! and their memberships, the export batch, and the engine that turns facts into batches.

pub mod audience;
pub mod batch;
pub mod consent;
pub mod engine;
pub mod input;
pub mod person;

//! Events that are both logged and counted (Vector's `internal_events` habit): each is one
//! struct whose one `emit()` moves the counter and writes the log line, so the two cannot drift.
//! Services keep their event structs next to their metrics (`events.rs`); fields are labels,
//! ids and positions, never personal data or secrets.

/// A happening a service both counts and logs.
pub trait Event {
    /// The service's metrics the event moves.
    type Metrics: ?Sized;

    /// Moves the event's counter and writes its log line, together.
    fn emit(&self, metrics: &Self::Metrics);
}

//! Events that are both logged and counted (Vector's `internal_events` habit): each is one
//! struct whose one `emit()` moves the counter and writes the log line, so the two cannot drift.
//! Services keep their event structs in their `events.rs`, declared with [`event!`]; fields are
//! labels, ids and positions, never personal data or secrets.

/// A happening a service both counts and logs.
pub trait Event {
    /// The service's metrics the event moves.
    type Metrics: ?Sized;

    /// Moves the event's counter and writes its log line, together.
    fn emit(&self, metrics: &Self::Metrics);
}

/// Declares an event struct and its [`Event`] impl in one place:
///
/// ```
/// # pub struct Metrics; impl Metrics { fn refused(&self, _: &str) {} }
/// aftercart_runtime::event! {
///     /// A destination refused a record.
///     pub struct Refused<'a> { pub destination: &'a str }
///     on Metrics, |self, metrics| {
///         metrics.refused(self.destination);
///         tracing::warn!(destination = self.destination, "A destination refused a record.");
///     }
/// }
/// # use aftercart_runtime::Event as _;
/// Refused { destination: "meta" }.emit(&Metrics);
/// ```
#[macro_export]
macro_rules! event {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident $(<$lt:lifetime>)? { $($fields:tt)* }
        on $metrics:ty, |$this:ident, $m:ident| $body:block
    ) => {
        $(#[$meta])*
        $vis struct $name $(<$lt>)? { $($fields)* }

        impl $(<$lt>)? $crate::Event for $name $(<$lt>)? {
            type Metrics = $metrics;

            fn emit(&$this, $m: &$metrics) $body
        }
    };
}

//! Nudge events that are both logged and counted: one struct each, with one `emit()` that moves
//! the counter and writes the log line (Vector's `internal_events` habit). Fields are the shop,
//! ids, the step and the destination kind; never the customer's contact or the message.

use aftercart_runtime::event;

use crate::domain::nudge::Nudge;
use crate::metrics::NudgesMetrics;

event! {
    /// A destination took a nudge, `late_seconds` after it fell due.
    pub struct NudgeSent<'a> { pub nudge: &'a Nudge, pub destination: &'static str, pub late_seconds: f64 }
    on NudgesMetrics, |self, metrics| {
        metrics.sent(self.nudge.step, self.destination, self.late_seconds);
        tracing::info!(shop = %self.nudge.shop, event_id = %self.nudge.event_id, step = self.nudge.step, destination = self.destination, "Nudge sent.");
    }
}

event! {
    /// A destination refused a nudge for good: it is dead-lettered.
    pub struct NudgeRefused<'a> { pub nudge: &'a Nudge, pub destination: &'static str, pub reason: &'a str }
    on NudgesMetrics, |self, metrics| {
        metrics.failed(self.destination);
        tracing::warn!(shop = %self.nudge.shop, event_id = %self.nudge.event_id, step = self.nudge.step, destination = self.destination, reason = self.reason, "A destination refused a nudge; dead-lettering it.");
    }
}

event! {
    /// A nudge written to the topic longer ago than `AFTERCART_NUDGES_MAX_SEND_DELAY`: not sent.
    pub struct NudgeStale<'a> { pub nudge: &'a Nudge, pub destination: &'static str, pub written_seconds_ago: f64 }
    on NudgesMetrics, |self, metrics| {
        metrics.suppressed(crate::domain::engine::Suppressed::Stale);
        tracing::warn!(shop = %self.nudge.shop, event_id = %self.nudge.event_id, step = self.nudge.step, destination = self.destination, written_seconds_ago = self.written_seconds_ago, "A nudge was written too long ago to be sent; skipping it.");
    }
}

event! {
    /// No recovery discount could be made for a nudge: it is sent without one.
    pub struct DiscountFailed<'a> { pub nudge: &'a Nudge, pub reason: &'static str }
    on NudgesMetrics, |self, metrics| {
        metrics.discount("failed");
        tracing::warn!(shop = %self.nudge.shop, event_id = %self.nudge.event_id, reason = self.reason, "No recovery discount for a nudge; sending it without one.");
    }
}

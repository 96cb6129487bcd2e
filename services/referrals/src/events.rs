//! Referral events that are both logged and counted: one struct each, with one `emit()` that
//! moves the counter and writes the log line (Vector's `internal_events` habit). Fields are the
//! action, a bounded reason and the output's event id; never a buyer's contact or a code.

use aftercart_runtime::event;

use crate::metrics::ReferralsMetrics;

event! {
    /// An output whose action in the shop failed for good: it is dead-lettered.
    pub struct ActionDeadLettered<'a> { pub action: &'static str, pub reason: &'static str, pub event_id: &'a str }
    on ReferralsMetrics, |self, metrics| {
        metrics.shopify_action(self.action, "dead_lettered");
        tracing::warn!(action = self.action, reason = self.reason, event_id = %self.event_id, "Dead-lettering an output whose action in the shop failed.");
    }
}

//! Export events that are both logged and counted: one struct each, with one `emit()` that moves
//! the counters and writes the log line (Vector's `internal_events` habit). Fields are the
//! destination, audience, batch id and counts; never a member's identifiers.

use std::time::Duration;

use aftercart_runtime::event;

use crate::domain::batch::Batch;
use crate::metrics::{AudiencesMetrics, ExportOutcome};

event! {
    /// A destination took a batch.
    pub struct BatchExported<'a> { pub destination: &'a str, pub batch: &'a Batch, pub took: Duration }
    on AudiencesMetrics, |self, metrics| {
        let (batch, people) = (self.batch, self.batch.members.len());
        metrics.exported(self.destination, batch.op, ExportOutcome::Accepted, people, self.took);
        tracing::info!(destination = %self.destination, audience = %batch.audience, op = ?batch.op, people, batch_id = %batch.batch_id, "Exported a batch.");
    }
}

event! {
    /// A destination did not take a batch: it is dead-lettered.
    pub struct BatchDeadLettered<'a> { pub destination: &'a str, pub batch: &'a Batch, pub took: Duration, pub reason: &'a str }
    on AudiencesMetrics, |self, metrics| {
        let (batch, people) = (self.batch, self.batch.members.len());
        metrics.exported(self.destination, batch.op, ExportOutcome::DeadLettered, people, self.took);
        tracing::warn!(destination = %self.destination, audience = %batch.audience, batch_id = %batch.batch_id, reason = %self.reason, "Dead-lettering a batch the destination did not take.");
    }
}

event! {
    /// Google named members of a batch it could not take (`refused`: the whole call failed).
    pub struct MembersRefused<'a> { pub destination: &'a str, pub batch: &'a Batch, pub members: usize, pub refused: bool }
    on AudiencesMetrics, |self, metrics| {
        metrics.member_errors(self.destination, self.members);
        tracing::warn!(destination = %self.destination, batch_id = %self.batch.batch_id, members = self.members, refused = self.refused, "Google named members it could not take.");
    }
}

//! Ingress events that are both logged and counted: one struct each, with one `emit()` that
//! writes the log line and moves the counter, so the two cannot drift (Vector's
//! `internal_events` habit). Fields are labels only, never a body, shop or id.

use std::io;
use std::path::Path;

use aftercart_runtime::event;
use rdkafka::error::KafkaError;

use crate::metrics::IngressMetrics;
use crate::spool::{OpenError, SpoolMetrics};

event! {
    /// An authentic delivery that cannot be routed went to the quarantine topic (answered 200).
    pub struct Quarantined<'a> { pub family: &'a str, pub reason: &'static str }
    on IngressMetrics, |self, metrics| {
        metrics.quarantined(self.reason);
        tracing::warn!(topic = self.family, reason = self.reason, "Quarantined an authentic delivery that cannot be routed.");
    }
}

event! {
    /// Kafka refused a record for good; its copy is in the quarantine topic (answered 200).
    pub struct KafkaRefusedQuarantined<'a> { pub family: &'a str, pub error: &'a KafkaError }
    on IngressMetrics, |self, metrics| {
        metrics.quarantined(Self::REASON);
        tracing::warn!(family = self.family, error = %self.error, "Kafka refuses the record for good: a copy went to the quarantine topic.");
    }
}

impl KafkaRefusedQuarantined<'_> {
    /// The quarantine reason of these copies (header and metric label).
    pub const REASON: &'static str = "kafka_refused";
}

event! {
    /// The spool cannot be opened: webhooks Kafka does not acknowledge in time get 503.
    pub struct SpoolNotOpened<'a> { pub error: &'a OpenError }
    on SpoolMetrics, |self, metrics| {
        metrics.error("open");
        tracing::error!(error = %self.error, "Cannot open the spool: webhooks Kafka does not acknowledge in time will get 503.");
    }
}

event! {
    /// The spool checkpoint could not be written: after a restart these events are published again.
    pub struct CheckpointNotWritten<'a> { pub error: &'a io::Error }
    on SpoolMetrics, |self, metrics| {
        metrics.error("write");
        tracing::warn!(error = %self.error, "Cannot write the spool checkpoint.");
    }
}

event! {
    /// A spool write or fsync failed: the group's webhooks are not spooled.
    pub struct SpoolDiskFailed<'a> { pub op: &'static str, pub error: &'a io::Error, pub events: usize }
    on SpoolMetrics, |self, metrics| {
        tracing::error!(op = self.op, error = %self.error, events = self.events, "Spool disk error: these webhooks are not spooled (published directly if Kafka takes them, else 503).");
        metrics.error(self.op);
    }
}

event! {
    /// A drained spool segment could not be deleted: it is tried again.
    pub struct SegmentNotDeleted<'a> { pub segment: &'a Path, pub error: &'a io::Error }
    on SpoolMetrics, |self, metrics| {
        metrics.error("remove");
        tracing::warn!(error = %self.error, segment = %self.segment.display(), "Cannot delete a drained spool segment; it will be retried.");
    }
}

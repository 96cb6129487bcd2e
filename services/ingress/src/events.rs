//! Ingress events that are both logged and counted: one struct each, with one `emit()` that
//! writes the log line and moves the counter, so the two cannot drift (Vector's
//! `internal_events` habit). Fields are labels only, never a body, shop or id.

use aftercart_runtime::Event;

use crate::metrics::IngressMetrics;
use crate::spool::metrics::SpoolMetrics;

/// An authentic delivery that cannot be routed went to the quarantine topic (answered 200).
pub struct Quarantined<'a> {
    pub family: &'a str,
    pub reason: &'static str,
}

impl Event for Quarantined<'_> {
    type Metrics = IngressMetrics;

    fn emit(&self, metrics: &IngressMetrics) {
        metrics.quarantined(self.reason);
        tracing::warn!(
            topic = self.family,
            reason = self.reason,
            "Quarantined an authentic delivery that cannot be routed."
        );
    }
}

/// Kafka refused a record for good; its copy is in the quarantine topic (answered 200).
pub struct KafkaRefusedQuarantined<'a> {
    pub family: &'a str,
    pub error: &'a rdkafka::error::KafkaError,
}

impl KafkaRefusedQuarantined<'_> {
    /// The quarantine reason of these copies (header and metric label).
    pub const REASON: &'static str = "kafka_refused";

    pub fn emit(&self, metrics: &IngressMetrics) {
        metrics.quarantined(Self::REASON);
        tracing::warn!(
            family = self.family,
            error = %self.error,
            "Kafka refuses the record for good: a copy went to the quarantine topic."
        );
    }
}

/// The spool cannot be opened: webhooks Kafka does not acknowledge in time get 503.
pub struct SpoolNotOpened<'a> {
    pub error: &'a crate::spool::OpenError,
}

impl Event for SpoolNotOpened<'_> {
    type Metrics = SpoolMetrics;

    fn emit(&self, metrics: &SpoolMetrics) {
        metrics.error("open");
        tracing::error!(error = %self.error, "Cannot open the spool: webhooks Kafka does not acknowledge in time will get 503.");
    }
}

/// The spool checkpoint could not be written: after a restart these events are published again.
pub struct CheckpointNotWritten<'a> {
    pub error: &'a std::io::Error,
}

impl Event for CheckpointNotWritten<'_> {
    type Metrics = SpoolMetrics;

    fn emit(&self, metrics: &SpoolMetrics) {
        metrics.error("write");
        tracing::warn!(error = %self.error, "Cannot write the spool checkpoint.");
    }
}

/// A spool write or fsync failed: the group's webhooks are not spooled.
pub struct SpoolDiskFailed<'a> {
    pub op: &'static str,
    pub error: &'a std::io::Error,
    pub events: usize,
}

impl Event for SpoolDiskFailed<'_> {
    type Metrics = SpoolMetrics;

    fn emit(&self, metrics: &SpoolMetrics) {
        tracing::error!(op = self.op, error = %self.error, events = self.events, "Spool disk error: these webhooks are not spooled (published directly if Kafka takes them, else 503).");
        metrics.error(self.op);
    }
}

/// A drained spool segment could not be deleted: it is tried again.
pub struct SegmentNotDeleted<'a> {
    pub segment: &'a std::path::Path,
    pub error: &'a std::io::Error,
}

impl Event for SegmentNotDeleted<'_> {
    type Metrics = SpoolMetrics;

    fn emit(&self, metrics: &SpoolMetrics) {
        metrics.error("remove");
        tracing::warn!(error = %self.error, segment = %self.segment.display(), "Cannot delete a drained spool segment; it will be retried.");
    }
}

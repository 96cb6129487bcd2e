//! Ingress events that are both logged and counted: one struct each, with one `emit()` that
//! writes the log line and moves the counter, so the two cannot drift (Vector's
//! `internal_events` habit). Fields are labels only, never a body, shop or id.

use crate::metrics::IngressMetrics;

/// An authentic delivery that cannot be routed went to the quarantine topic (answered 200).
pub struct Quarantined<'a> {
    pub family: &'a str,
    pub reason: &'static str,
}

impl Quarantined<'_> {
    pub fn emit(&self, metrics: &IngressMetrics) {
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

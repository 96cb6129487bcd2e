//! Why a webhook was answered 503: the sentence the client reads, and the label
//! `aftercart_ingress_unavailable_total{reason}` counts it under, one per cause.

/// A cause of a 503 on the webhook endpoint. Every one is counted as it is answered
/// ([`crate::http::webhook::handle`]), so the counter's sum is the endpoint's 503s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Kafka has not answered since the start and there is no spool to take the event.
    KafkaConnecting,
    /// The body finished arriving after the publish deadline.
    ArrivedLate,
    /// A retry of a delivery still being published, which did not settle before the deadline.
    SameDeliveryInFlight,
    /// Kafka did not take the event (the sentence says how) and there is no spool: it is off,
    /// or could not be opened.
    NoSpool(&'static str),
    /// The spool could not take the event (full, a disk error; the sentence says which) and
    /// Kafka did not take it either.
    SpoolRefused(&'static str),
    /// The spool's write and fsync did not finish before the deadline (a stalled disk).
    SpoolFsyncTimeout,
    /// Kafka refused the record for good, and its copy to the quarantine topic too.
    KafkaRefused,
    /// The request's publish task ended without an answer (a bug).
    Internal,
}

/// Every label of [`Unavailable::as_label`], and `body_budget` (the body budget's own 503).
pub const UNAVAILABLE_REASONS: [&str; 9] = [
    "kafka_connecting",
    "arrived_late",
    "same_delivery_in_flight",
    "no_spool",
    "spool_refused",
    "spool_fsync_timeout",
    "kafka_refused",
    "internal",
    BODY_BUDGET,
];

/// The label of a 503 for a body refused because the body budget is held.
pub const BODY_BUDGET: &str = "body_budget";

impl Unavailable {
    pub fn as_label(self) -> &'static str {
        match self {
            Unavailable::KafkaConnecting => "kafka_connecting",
            Unavailable::ArrivedLate => "arrived_late",
            Unavailable::SameDeliveryInFlight => "same_delivery_in_flight",
            Unavailable::NoSpool(_) => "no_spool",
            Unavailable::SpoolRefused(_) => "spool_refused",
            Unavailable::SpoolFsyncTimeout => "spool_fsync_timeout",
            Unavailable::KafkaRefused => "kafka_refused",
            Unavailable::Internal => "internal",
        }
    }

    /// The sentence of the answer's `reason`: fixed ASCII, no quotes.
    pub fn message(self) -> &'static str {
        match self {
            Unavailable::KafkaConnecting => "the ingress is still connecting to Kafka",
            Unavailable::ArrivedLate => "the request took too long to arrive",
            Unavailable::SameDeliveryInFlight => "the same delivery is still being published",
            Unavailable::NoSpool(why) | Unavailable::SpoolRefused(why) => why,
            Unavailable::SpoolFsyncTimeout => "the spool did not make the event durable in time",
            Unavailable::KafkaRefused => "Kafka refused the record",
            Unavailable::Internal => "the publish task failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_a_listed_label() {
        let causes = [
            Unavailable::KafkaConnecting,
            Unavailable::ArrivedLate,
            Unavailable::SameDeliveryInFlight,
            Unavailable::NoSpool("x"),
            Unavailable::SpoolRefused("x"),
            Unavailable::SpoolFsyncTimeout,
            Unavailable::KafkaRefused,
            Unavailable::Internal,
        ];
        for cause in causes {
            assert!(UNAVAILABLE_REASONS.contains(&cause.as_label()), "{cause:?}");
            assert!(!cause.message().contains('"'), "{cause:?}");
        }
        assert_eq!(causes.len() + 1, UNAVAILABLE_REASONS.len());
    }
}

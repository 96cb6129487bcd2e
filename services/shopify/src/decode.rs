//! Decoding webhook bodies read back from Kafka by the consumer services: typed decoding with a
//! dead-letter reason when a record cannot be used, and the helpers payloads share.

use serde::Deserialize;
use serde_json::Value;

/// Why a record cannot be used: it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonRecord {
    #[error("missing shopify-topic header")]
    MissingTopic,
    #[error("body does not decode as {topic}: {reason}")]
    Undecodable { topic: String, reason: String },
    #[error("impossible value: {0}")]
    Impossible(&'static str),
    /// A `customers/redact` in which nothing identifies anyone: kept (dead-lettered under its
    /// own reason, counted and alerted on) for an operator to apply by hand, never dropped.
    #[error("customers/redact names no one (no readable customer id, email, phone or order)")]
    UnidentifiedRedaction,
}

impl PoisonRecord {
    /// Bounded metric label.
    pub fn as_label(&self) -> &'static str {
        match self {
            PoisonRecord::MissingTopic => "missing_topic",
            PoisonRecord::Undecodable { .. } => "undecodable",
            PoisonRecord::Impossible(_) => "impossible_value",
            PoisonRecord::UnidentifiedRedaction => "unidentified_redaction",
        }
    }
}

/// The record's Shopify topic, trimmed and lower-cased.
pub fn shopify_topic(topic: Option<&str>) -> Result<String, PoisonRecord> {
    Ok(topic
        .ok_or(PoisonRecord::MissingTopic)?
        .trim()
        .to_ascii_lowercase())
}

/// Decodes `body` as `T`, or says why it cannot be used as `topic`.
pub fn decode<'a, T: Deserialize<'a>>(topic: &str, body: &'a [u8]) -> Result<T, PoisonRecord> {
    serde_json::from_slice(body).map_err(|error| PoisonRecord::Undecodable {
        topic: topic.to_string(),
        reason: error.to_string(),
    })
}

/// Discount codes from `[{"code": "X", ...}]` or `["X"]`.
pub fn discount_codes(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| v.get("code").and_then(Value::as_str).or_else(|| v.as_str()))
        .filter(|code| !code.is_empty())
        .map(str::to_string)
        .collect()
}

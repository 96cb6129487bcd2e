//! The mark a partition's changelog keeps of each data request it answered, under
//! `answered:<report event id>`: the compliance topic is read from its start at every start and
//! the requests of the last 30 days are answered as partitions are assigned, so without the
//! mark every restart and rebalance answered them again. Forgotten with the request, past
//! Shopify's 30-day deadline.

use serde::{Deserialize, Serialize};

/// Changelog keys of answer marks start with this (journey keys start with a shop domain,
/// which has no colon; consent copies with `consent:`).
pub const PREFIX: &str = "answered:";

/// A data request answered in this partition: when the request was read (for its expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answered {
    pub request_at_ms: i64,
}

/// The changelog key of the mark of the report with `event_id`.
pub fn key(event_id: &str) -> String {
    format!("{PREFIX}{event_id}")
}

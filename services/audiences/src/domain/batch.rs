//! The export batch: the record the engine writes to `aftercart.audience-batches` and a
//! destination's exporter sends. It carries each member's rows already normalised and hashed for
//! that destination, and its id is the idempotency key of every request made for it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::consent::AdConsent;
use crate::platform::{Op, Platform};

/// One member of a batch: who (pseudonymous) and the destination-ready row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// `c/<customer id>` or `e/<hash of the email>`: stable, and not contact data.
    pub person: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<u64>,
    pub row: serde_json::Value,
    /// Google destinations' additions: the person's consent signals (from their Shopify
    /// marketing consent and the destination's mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<AdConsent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// 32 lower-case hex characters; deterministic from the batch's content and origin.
    pub batch_id: String,
    pub shop: String,
    pub audience: String,
    pub destination: String,
    pub platform: Platform,
    pub op: Op,
    /// RFC 3339, when the engine made the batch.
    pub created_at: String,
    pub members: Vec<Member>,
}

impl Batch {
    /// The id is 32 lower-case hex and the audience a config name (letters, digits, - and _),
    /// so both are safe in file names and headers.
    pub fn is_well_formed(&self) -> bool {
        let hex = self.batch_id.len() == 32
            && self
                .batch_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let name = !self.audience.is_empty()
            && self.audience.len() <= 64
            && self
                .audience
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        hex && name && !self.members.is_empty()
    }
}

/// A batch id: SHA-256 over the batch's origin and members, first 16 bytes as hex.
pub fn batch_id(origin: &str, members: &[Member]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(origin.as_bytes());
    for member in members {
        hasher.update(b"\n");
        hasher.update(member.person.as_bytes());
    }
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(person: &str) -> Member {
        Member {
            person: person.into(),
            customer_id: None,
            row: serde_json::json!({}),
            consent: None,
        }
    }

    #[test]
    fn batch_ids_are_32_hex_and_change_with_origin_and_members() {
        let a = batch_id("p0/1/add", &[member("c/1")]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, batch_id("p0/1/add", &[member("c/1")]));
        assert_ne!(a, batch_id("p0/1/remove", &[member("c/1")]));
        assert_ne!(a, batch_id("p0/1/add", &[member("c/2")]));
    }
}

//! The records written to `aftercart.referral-invites` and `aftercart.referral-rewards`
//! (schemas: `schemas/aftercart/referral-*.schema.json`), and their deterministic ids.

use aftercart_runtime::state_hash::hex;
use aftercart_shopify::privacy::DataRequestReport;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use aftercart_shopify::time::rfc3339;

/// `sha256("aftercart/referrals/<what>")`, 32 hex characters: the same facts always give the
/// same id, so a consumer can drop a duplicate delivery.
pub fn event_id(what: &str) -> String {
    // Fed in two pieces (the bytes of `aftercart/referrals/<what>`): no `format!` per id.
    let digest = Sha256::new()
        .chain_update("aftercart/referrals/")
        .chain_update(what)
        .finalize();
    hex(&digest[..16])
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvocateOut {
    pub customer_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_name: Option<String>,
    pub referral_code: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderOut {
    pub id: u64,
    pub name: Option<String>,
    /// Decimal string, as Shopify sends it: the subtotal after discounts.
    pub value: Option<String>,
    pub currency: Option<String>,
}

/// An invite: the buyer became an advocate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteEvent {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub shop: String,
    pub occurred_at: String,
    pub advocate: AdvocateOut,
    pub order: OrderOut,
    pub referral_code: String,
    pub share_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FriendOut {
    pub customer_id: Option<u64>,
    pub order: OrderOut,
}

/// One step of a referred order's reward: `reward.pending`, `reward.granted`, `reward.voided`
/// or `reward.rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardEvent {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub shop: String,
    pub occurred_at: String,
    pub advocate: AdvocateOut,
    pub friend: FriendOut,
    pub attributed_via: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub review_ends_at: Option<String>,
    /// The reward as issued in the shop (filled in by the Shopify actions, never by the engine).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub issued: Option<Issued>,
}

/// A reward issued in the shop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issued {
    /// `discount_code` or `store_credit`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub percentage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deactivated: Option<bool>,
}

/// Any output record; serialises as the record itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Output {
    Invite(Box<InviteEvent>),
    Reward(Box<RewardEvent>),
    /// The answer to a `customers/data_request` (`aftercart.data_requests`).
    DataRequest(Box<DataRequestReport>),
}

impl Output {
    pub fn event_id(&self) -> &str {
        match self {
            Output::Invite(e) => &e.event_id,
            Output::Reward(e) => &e.event_id,
            Output::DataRequest(e) => &e.event_id,
        }
    }

    pub fn event_type(&self) -> &str {
        match self {
            Output::Invite(e) => &e.event_type,
            Output::Reward(e) => &e.event_type,
            Output::DataRequest(e) => &e.event_type,
        }
    }
}

/// What reconciliation needs from an output record read back at restore.
#[derive(Debug, Clone, Deserialize)]
pub struct EmittedEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub shop: String,
    pub occurred_at: String,
    pub advocate: AdvocateOut,
    #[serde(default)]
    pub order: Option<OrderOut>,
    #[serde(default)]
    pub friend: Option<FriendOut>,
    #[serde(default)]
    pub attributed_via: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub review_ends_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_the_first_16_bytes_of_the_sha256_in_hex() {
        // Pinned (Python's hashlib): ids already written must never change.
        assert_eq!(event_id("invite/s/1"), "bd64a3d4eab24eeda5752bad75de7b1b");
    }

    #[test]
    fn event_ids_are_stable_and_distinct() {
        assert_eq!(event_id("invite/s/1"), event_id("invite/s/1"));
        assert_eq!(event_id("invite/s/1").len(), 32);
        assert_ne!(event_id("invite/s/1"), event_id("invite/s/2"));
    }
}

//! The records written to `aftercart.nudges` (schema: `schemas/aftercart/nudges.schema.json`)
//! and how one reads back on restore.

use aftercart_abandonment::domain::event::{ContactBasis, LineItemsOut, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Contact details of a person who may be contacted. Personal data: never logged.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Contact {
    pub customer_id: Option<u64>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

impl Contact {
    /// Has a channel left to reach the person on.
    pub fn reachable(&self) -> bool {
        self.email.is_some() || self.phone.is_some()
    }
}

impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contact")
            .field("customer_id", &self.customer_id.is_some())
            .field("email", &self.email.is_some())
            .field("phone", &self.phone.is_some())
            .finish_non_exhaustive()
    }
}

/// One nudge: step `step` (1-based) of the sequence started by abandonment
/// `abandonment_event_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nudge {
    /// Deterministic: [`event_id`] of the abandonment and the step.
    pub event_id: String,
    pub shop: String,
    pub journey_key: String,
    pub abandonment_event_id: String,
    pub checkout_token: Option<String>,
    pub step: u32,
    pub steps: u32,
    /// When the step was due (after quiet hours).
    pub due_at: String,
    pub abandoned_at: String,
    pub contact_basis: ContactBasis,
    pub customer: Contact,
    pub recovery_url: Option<String>,
    /// A unique recovery discount code, when the shop's discounts are configured.
    pub discount_code: Option<String>,
    pub value: Option<Value>,
    pub line_items: Option<LineItemsOut>,
    pub segments: serde_json::Value,
}

/// What reconciliation needs from a nudge read back at restore.
#[derive(Debug, Clone, Deserialize)]
pub struct EmittedNudge {
    pub journey_key: String,
    pub step: u32,
    /// Which sequence wrote it: a journey abandoned again starts a new sequence under the same
    /// key, and its predecessor's nudges (all read back when the checkpoint is unreadable) are
    /// not its own steps.
    #[serde(default)]
    pub abandonment_event_id: Option<String>,
}

/// `sha256("aftercart/nudges/<abandonment event id>/<step>")`, 32 hex characters.
pub fn event_id(abandonment_event_id: &str, step: u32) -> String {
    let digest = Sha256::digest(format!("aftercart/nudges/{abandonment_event_id}/{step}"));
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_per_abandonment_and_step() {
        let a = event_id("abc", 1);
        assert_eq!(a, event_id("abc", 1));
        assert_eq!(a.len(), 32);
        assert_ne!(a, event_id("abc", 2));
        assert_ne!(a, event_id("abd", 1));
    }

    #[test]
    fn debug_output_leaves_contact_details_out() {
        let contact = Contact {
            email: Some("ann@example.com".into()),
            ..Contact::default()
        };
        assert!(!format!("{contact:?}").contains("ann@"));
    }
}

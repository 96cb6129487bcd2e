//! The Shopify webhook contract shared by every aftercart service: how deliveries are signed,
//! which headers they carry, which Kafka topic family a webhook topic belongs to, and the
//! journey key that keeps one purchase's events in the same partition, exact money, and the
//! E.164 form of the phones Shopify hands over as typed.

pub mod compliance;
pub mod decode;
pub mod family;
pub mod headers;
pub mod journey_key;
pub mod money;
pub mod phone;
pub mod privacy;
pub mod signature;
pub mod time;

pub use compliance::check_compliance_body;
pub use family::Family;
pub use headers::WebhookHeaders;
pub use journey_key::{journey_key, PayloadError};
pub use signature::{sign, Secret, SecretId, SignatureError, Verifier};

//! The webhook HTTP surface: the request handler and the one place outcomes become responses.

pub mod body;
pub mod reply;
pub mod unavailable;
pub mod webhook;

pub use reply::Reply;
pub use unavailable::Unavailable;
pub use webhook::{handle, WebhookState};

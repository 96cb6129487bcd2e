//! Admin API events that are both logged and counted: one struct each, with one `emit()` that
//! moves the counters and writes the log line (Vector's `internal_events` habit). Fields are the
//! shop's domain, the operation and a reason; never a token or a customer's data.

use std::time::Duration;

use aftercart_runtime::event;

use crate::metrics::AdminMetrics;

event! {
    /// An action for a shop without an access token: counted each time, logged once per shop.
    pub struct NoToken<'a> { pub shop: &'a str, pub operation: &'static str }
    on AdminMetrics, |self, metrics| {
        metrics.call(self.operation, "no_token");
        if metrics.no_token(self.shop) {
            tracing::warn!(shop = self.shop, "No Shopify access token for this shop; its discounts are not created until one is added to the tokens file.");
        }
    }
}

event! {
    /// Shopify refused the shop's token (401, 403): counted each time, logged once per spell.
    pub struct TokenRefused<'a> { pub shop: &'a str, pub operation: &'static str, pub status: u16 }
    on AdminMetrics, |self, metrics| {
        metrics.call(self.operation, "refused");
        if metrics.refused(self.shop, true) {
            tracing::error!(shop = self.shop, status = self.status, "Shopify refused the shop's access token: replace it in the tokens file.");
        }
    }
}

event! {
    /// A call that is not resent got no answer: whether it took effect is unknown.
    pub struct CallUnconfirmed<'a> { pub shop: &'a str, pub operation: &'static str, pub reason: &'a str }
    on AdminMetrics, |self, metrics| {
        metrics.call(self.operation, "unconfirmed");
        tracing::warn!(shop = self.shop, operation = self.operation, reason = self.reason, "Shopify gave no answer to a call that is not resent; whether it took effect is unknown.");
    }
}

event! {
    /// A call kept failing past the retry budget.
    pub struct CallExhausted<'a> { pub shop: &'a str, pub operation: &'static str, pub failures: u32, pub reason: &'a str }
    on AdminMetrics, |self, metrics| {
        metrics.call(self.operation, "exhausted");
        tracing::warn!(shop = self.shop, operation = self.operation, failures = self.failures, reason = self.reason, "Shopify kept failing past the retry budget.");
    }
}

event! {
    /// A call failed and is tried again after `wait`.
    pub struct CallRetried<'a> { pub shop: &'a str, pub operation: &'static str, pub failures: u32, pub reason: &'a str, pub wait: Duration }
    on AdminMetrics, |self, metrics| {
        metrics.call(self.operation, "retried");
        tracing::warn!(shop = self.shop, operation = self.operation, failures = self.failures, reason = self.reason, wait = ?self.wait, "Shopify call failed; retrying.");
    }
}

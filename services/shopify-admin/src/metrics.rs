//! Shopify Admin API metrics (`<prefix>_shopify_*`) on an injected registry. Labels are bounded:
//! the operation (a fixed set), the outcome; never a shop, a code or a token.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{Counter, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every operation this crate calls, registered at zero.
pub const OPERATIONS: [&str; 6] = [
    "discount_create",
    "discount_lookup",
    "discount_deactivate",
    "store_credit",
    "segment_create",
    "segment_lookup",
];

/// How one call ended.
pub const OUTCOMES: [&str; 10] = [
    "ok",
    "user_error",
    "throttled",
    "retried",
    "refused",
    "no_token",
    "rejected",
    "exhausted",
    "unconfirmed",
    "stopped",
];

#[derive(Clone)]
pub struct AdminMetrics {
    calls: IntCounterVec,
    throttled_seconds: Counter,
    no_token: IntCounter,
    refused_shops: IntGauge,
    /// Shops whose last answer was 401/403, and shops already logged as tokenless.
    refused: Arc<Mutex<HashSet<String>>>,
    tokenless: Arc<Mutex<HashSet<String>>>,
}

impl AdminMetrics {
    /// Registers `<prefix>_shopify_*` (e.g. `aftercart_referrals`).
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let calls = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_shopify_calls_total"),
                "Shopify Admin API calls, by operation and outcome (retried and throttled are attempts tried again).",
            ),
            &["operation", "outcome"],
        )?;
        let throttled_seconds = Counter::with_opts(Opts::new(
            format!("{prefix}_shopify_throttled_seconds_total"),
            "Time spent waiting because Shopify answered THROTTLED.",
        ))?;
        let no_token = IntCounter::with_opts(Opts::new(
            format!("{prefix}_shopify_no_token_total"),
            "Actions skipped because the shop has no access token in the tokens file.",
        ))?;
        let refused_shops = IntGauge::with_opts(Opts::new(
            format!("{prefix}_shopify_token_refused_shops"),
            "Shops whose access token Shopify refused (401/403) on their latest call.",
        ))?;
        aftercart_runtime::metrics_catalog::register(registry, &calls)?;
        aftercart_runtime::metrics_catalog::register(registry, &throttled_seconds)?;
        aftercart_runtime::metrics_catalog::register(registry, &no_token)?;
        aftercart_runtime::metrics_catalog::register(registry, &refused_shops)?;
        for operation in OPERATIONS {
            for outcome in OUTCOMES {
                calls.with_label_values(&[operation, outcome]);
            }
        }
        Ok(AdminMetrics {
            calls,
            throttled_seconds,
            no_token,
            refused_shops,
            refused: Arc::default(),
            tokenless: Arc::default(),
        })
    }

    pub fn call(&self, operation: &'static str, outcome: &'static str) {
        self.calls.with_label_values(&[operation, outcome]).inc();
    }

    pub fn throttled(&self, seconds: f64) {
        self.throttled_seconds.inc_by(seconds.max(0.0));
    }

    /// Counts an action for a tokenless shop; true the first time for that shop (log it then).
    pub fn no_token(&self, shop: &str) -> bool {
        self.no_token.inc();
        self.tokenless
            .lock()
            .expect("metrics lock")
            .insert(shop.to_string())
    }

    /// Records whether the shop's token was refused on its latest call; true when that changed
    /// (so a refusal is logged once per spell, not once per call).
    pub fn refused(&self, shop: &str, refused: bool) -> bool {
        let mut shops = self.refused.lock().expect("metrics lock");
        let changed = if refused {
            shops.insert(shop.to_string())
        } else {
            shops.remove(shop)
        };
        if changed {
            self.refused_shops.set(shops.len() as i64);
        }
        // A shop that has a token again is logged again if it loses it.
        if !refused {
            self.tokenless.lock().expect("metrics lock").remove(shop);
        }
        changed
    }
}

//! Recovery discounts: before a batch's nudges are written ([`aftercart_kafka::StageLogic::prepare`]),
//! each nudge from the configured step on gets the sequence's unique single-use code, created in
//! the shop through the Admin API (idempotent: a code that exists is looked up and taken). When
//! Shopify refuses or stays down past the client's retry budget the nudge goes out without a
//! code (counted): a reminder without a discount beats none.

use aftercart_kafka::StageEffect;
use aftercart_runtime::Event as _;
use aftercart_shopify::time::{now_ms, rfc3339};
use aftercart_shopify_admin::client::CallError;
use aftercart_shopify_admin::discounts::ActionError;
use aftercart_shopify_admin::{Discount, Discounts, Eligibility};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::RecoveryDiscount;
use crate::consumer::{Output, Staged};
use crate::domain::nudge::Nudge;
use crate::events::DiscountFailed;
use crate::metrics::NudgesMetrics;

/// The sequence's code: `BACK-` and 10 hex digits of a hash of the abandonment's event id, the
/// same for every step and every retry.
pub fn code_for(abandonment_event_id: &str) -> String {
    let digest = Sha256::digest(format!("aftercart/nudges/discount/{abandonment_event_id}"));
    let hex: String = digest[..5].iter().map(|b| format!("{b:02X}")).collect();
    format!("BACK-{hex}")
}

/// The discount a nudge carries: single use, for its customer when known.
pub fn discount_for(nudge: &Nudge, config: &RecoveryDiscount) -> Discount {
    let code = code_for(&nudge.abandonment_event_id);
    Discount {
        title: format!("aftercart recovery {code}"),
        code,
        value: config.value.clone(),
        eligibility: nudge
            .customer
            .customer_id
            .map_or(Eligibility::Everyone, Eligibility::Customer),
        once_per_customer: true,
        usage_limit: Some(1),
        minimum_subtotal: None,
        starts_at: rfc3339(now_ms()),
    }
}

pub struct RecoveryDiscounts {
    discounts: Discounts,
    config: RecoveryDiscount,
    metrics: NudgesMetrics,
}

impl RecoveryDiscounts {
    pub fn new(discounts: Discounts, config: RecoveryDiscount, metrics: NudgesMetrics) -> Self {
        RecoveryDiscounts {
            discounts,
            config,
            metrics,
        }
    }

    /// How long a batch may hold the loop while Shopify fails.
    pub fn budget(&self) -> std::time::Duration {
        self.config.admin.batch_budget()
    }

    /// Gives every nudge that should carry a code its code; `None` when `stop` came first.
    pub async fn act(
        &self,
        effects: Vec<(i32, Staged)>,
        stop: &CancellationToken,
    ) -> Option<Vec<(i32, Staged)>> {
        let mut kept = Vec::with_capacity(effects.len());
        for (partition, mut effect) in effects {
            if let StageEffect::Emit {
                output: Output::Nudge(output),
                ..
            } = &mut effect
            {
                if output.step >= self.config.from_step {
                    let discount = discount_for(output, &self.config);
                    match self.discounts.ensure(&output.shop, &discount, stop).await {
                        Ok(_) => {
                            output.discount_code = Some(discount.code);
                            self.metrics.discount("created");
                        }
                        Err(ActionError::Call(CallError::Stopped)) => return None,
                        Err(error) => {
                            DiscountFailed {
                                nudge: output,
                                reason: error.as_label(),
                            }
                            .emit(&self.metrics);
                        }
                    }
                }
            }
            kept.push((partition, effect));
        }
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_code_per_sequence_that_looks_like_a_code() {
        let code = code_for("abc");
        assert_eq!(code, code_for("abc"));
        assert_ne!(code, code_for("abd"));
        assert_eq!(code.len(), 15);
        assert!(code[5..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    }
}

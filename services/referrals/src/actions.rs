//! The referral programme acting in shops, at one place: before a batch's outputs are written
//! ([`aftercart_kafka::StageLogic::prepare`]), an invite's code is created as the friend's
//! discount, a reward is issued (a unique single-use code, or store credit), and a reward
//! voided after it was issued is deactivated. An output is written only once its action is
//! done; one Shopify refused for good goes to the dead-letter topic with the reason instead.
//! Shopify failing for a while holds the loop (the client retries), so nothing is lost.

use std::collections::HashMap;

use aftercart_kafka::{DeadLetter, StageEffect};
use aftercart_runtime::Event as _;
use aftercart_shopify::money::Amount;
use aftercart_shopify_admin::client::CallError;
use aftercart_shopify_admin::discounts::{ActionError, DiscountValue};
use aftercart_shopify_admin::{Discount, Discounts, Eligibility};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::config::{IssueOn, RewardKind, ShopifyActions};
use crate::domain::code::CodeRules;
use crate::domain::event::{InviteEvent, Issued, Output, RewardEvent};
use crate::domain::state::Entity;
use crate::events::ActionDeadLettered;
use crate::metrics::ReferralsMetrics;

type Staged = StageEffect<Entity, Output>;

/// What acting on a batch gives: the effects to write and the outputs to dead-letter, or, cut
/// short by `stop` ([`aftercart_kafka::Prepared::stopped`]), the outputs acted on so far.
pub struct Acted {
    pub effects: Vec<(i32, Staged)>,
    pub dead: Vec<DeadLetter>,
    pub stopped: bool,
}

/// The one action that cannot be looked up and so must never be done twice.
const STORE_CREDIT: &str = "store_credit";

pub struct ShopActions {
    discounts: Discounts,
    config: ShopifyActions,
    codes: CodeRules,
    /// Output topic names, by the index an effect names.
    outputs: Vec<String>,
    metrics: ReferralsMetrics,
}

impl ShopActions {
    pub fn new(
        discounts: Discounts,
        config: ShopifyActions,
        codes: CodeRules,
        outputs: Vec<String>,
        metrics: ReferralsMetrics,
    ) -> ShopActions {
        ShopActions {
            discounts,
            config,
            codes,
            outputs,
            metrics,
        }
    }

    /// How long a batch may hold the loop while Shopify fails: one retry budget and its last
    /// request (a second failing shop in the same batch adds another; throttling waits too).
    pub fn budget(&self) -> std::time::Duration {
        self.config.admin.batch_budget()
    }

    /// Acts on every output of a batch, in order; `None` when `stop` came first. A stop after a
    /// store credit was given gives the outputs acted on so far instead (`stopped`, no dead
    /// letters: the batch read again decides those anew): the credit's grant must reach the
    /// output topic, or the batch read again would give the credit twice. Every other action
    /// is idempotent (codes are looked up), so nothing else needs it.
    pub async fn act(
        &self,
        effects: Vec<(i32, Staged)>,
        stop: &CancellationToken,
    ) -> Option<Acted> {
        let mut kept = Vec::with_capacity(effects.len());
        let mut dead = Vec::new();
        // Shops whose Shopify failed past the retry budget in this batch: their other outputs
        // are dead-lettered at once, so one shop's outage holds every shop's outputs for one
        // budget a batch, not one per output.
        let mut down: HashMap<String, ActionError> = HashMap::new();
        let mut credited = false;
        for (partition, effect) in effects {
            let StageEffect::Emit {
                topic,
                key,
                event_id,
                mut output,
            } = effect
            else {
                kept.push((partition, effect));
                continue;
            };
            let shop = match &output {
                Output::Invite(invite) => invite.shop.clone(),
                Output::Reward(reward) => reward.shop.clone(),
                Output::DataRequest(report) => report.shop.clone(),
            };
            let result = match (self.action_for(&output), down.get(&shop)) {
                (Some(action), Some(error)) => Err((action, error.clone())),
                _ => self.act_on(&mut output, stop).await,
            };
            if let Err((_, error @ ActionError::Call(CallError::Exhausted(_)))) = &result {
                down.insert(shop, error.clone());
            }
            match result {
                Ok(action) => {
                    if let Some(action) = action {
                        self.metrics.shopify_action(action, "done");
                        credited |= action == STORE_CREDIT;
                    }
                    kept.push((
                        partition,
                        StageEffect::Emit {
                            topic,
                            key,
                            event_id,
                            output,
                        },
                    ));
                }
                Err((_, ActionError::Call(CallError::Stopped))) if !credited => return None,
                Err((_, ActionError::Call(CallError::Stopped))) => {
                    let acted = kept
                        .into_iter()
                        .filter(|(_, effect)| matches!(effect, StageEffect::Emit { .. }))
                        .collect();
                    return Some(Acted {
                        effects: acted,
                        dead: Vec::new(),
                        stopped: true,
                    });
                }
                Err((action, error)) => {
                    ActionDeadLettered {
                        action,
                        reason: error.as_label(),
                        event_id: &event_id,
                    }
                    .emit(&self.metrics);
                    let topic = self.outputs.get(topic).cloned().unwrap_or_default();
                    dead.push(letter(
                        topic, partition, &key, &event_id, &output, action, &error,
                    ));
                }
            }
        }
        Some(Acted {
            effects: kept,
            dead,
            stopped: false,
        })
    }

    /// The name of the action an output calls for (metrics, dead letters), if any.
    fn action_for(&self, output: &Output) -> Option<&'static str> {
        match output {
            Output::Invite(_) => Some("friend_discount"),
            Output::DataRequest(_) => None,
            Output::Reward(reward) => {
                let issue_on = match self.config.reward.issue_on {
                    IssueOn::Granted => "reward.granted",
                    IssueOn::Pending => "reward.pending",
                };
                let kind = self.config.reward.kind;
                // Only a reward issued while pending can be voided after its issue.
                let issued_before = self.config.reward.issue_on == IssueOn::Pending
                    && kind == RewardKind::DiscountCode;
                if reward.event_type == issue_on {
                    Some(match kind {
                        RewardKind::DiscountCode => "reward_code",
                        RewardKind::StoreCredit => STORE_CREDIT,
                    })
                } else if reward.event_type == "reward.voided" && issued_before {
                    Some("deactivate")
                } else {
                    None
                }
            }
        }
    }

    /// The action an output calls for, done; the action's name for metrics.
    async fn act_on(
        &self,
        output: &mut Output,
        stop: &CancellationToken,
    ) -> Result<Option<&'static str>, (&'static str, ActionError)> {
        let Some(action) = self.action_for(output) else {
            return Ok(None);
        };
        match output {
            Output::DataRequest(_) => Ok(None),
            Output::Invite(invite) => {
                self.friend_discount(invite, stop)
                    .await
                    .map_err(|e| (action, e))?;
                Ok(Some(action))
            }
            Output::Reward(reward) => {
                if action != "deactivate" {
                    let issued = self.issue(reward, stop).await.map_err(|e| (action, e))?;
                    reward.issued = Some(issued);
                    return Ok(Some(action));
                }
                let code = self.reward_code(reward);
                let deactivated = self
                    .discounts
                    .deactivate(&reward.shop, &code, stop)
                    .await
                    .map_err(|e| (action, e))?;
                reward.issued = Some(Issued {
                    kind: "discount_code".to_string(),
                    code: Some(code),
                    amount: None,
                    percentage: None,
                    currency: None,
                    deactivated: Some(deactivated),
                });
                Ok(Some(action))
            }
        }
    }

    async fn friend_discount(
        &self,
        invite: &InviteEvent,
        stop: &CancellationToken,
    ) -> Result<String, ActionError> {
        let friend = &self.config.friend;
        let discount = Discount {
            code: invite.referral_code.clone(),
            title: format!("Referral {}", invite.referral_code),
            value: friend.value.clone(),
            eligibility: if friend.first_order_only {
                Eligibility::FirstOrderOnly
            } else {
                Eligibility::Everyone
            },
            once_per_customer: true,
            usage_limit: None,
            minimum_subtotal: friend.minimum_subtotal,
            starts_at: invite.occurred_at.clone(),
        };
        self.discounts.ensure(&invite.shop, &discount, stop).await
    }

    fn reward_code(&self, reward: &RewardEvent) -> String {
        self.codes.reward_code_for(
            &self.config.reward.code_prefix,
            &reward.shop,
            reward.friend.order.id,
        )
    }

    async fn issue(
        &self,
        reward: &RewardEvent,
        stop: &CancellationToken,
    ) -> Result<Issued, ActionError> {
        let offer = &self.config.reward;
        let currency = reward.friend.order.currency.clone();
        match offer.kind {
            RewardKind::DiscountCode => {
                let code = self.reward_code(reward);
                let discount = Discount {
                    code: code.clone(),
                    title: format!("Referral reward {code}"),
                    value: offer.value.clone(),
                    eligibility: reward
                        .advocate
                        .customer_id
                        .map_or(Eligibility::Everyone, Eligibility::Customer),
                    once_per_customer: true,
                    usage_limit: Some(1),
                    minimum_subtotal: None,
                    starts_at: reward.occurred_at.clone(),
                };
                self.discounts.ensure(&reward.shop, &discount, stop).await?;
                let (amount, percentage) = match offer.value {
                    DiscountValue::Amount(a) => (Some(a.to_string()), None),
                    DiscountValue::Percentage(p) => (None, Some(p.to_string())),
                };
                Ok(Issued {
                    kind: "discount_code".to_string(),
                    code: Some(code),
                    currency: amount.as_ref().and(currency),
                    amount,
                    percentage,
                    deactivated: None,
                })
            }
            RewardKind::StoreCredit => {
                let customer = reward.advocate.customer_id.ok_or_else(|| {
                    ActionError::UserErrors(
                        "the advocate has no customer id for store credit".into(),
                    )
                })?;
                let currency = currency.ok_or_else(|| {
                    ActionError::UserErrors("the friend's order has no currency".into())
                })?;
                let amount = match offer.value {
                    DiscountValue::Amount(a) => a,
                    DiscountValue::Percentage(p) => reward
                        .friend
                        .order
                        .value
                        .as_deref()
                        .and_then(Amount::parse)
                        .unwrap_or(Amount::ZERO)
                        .percent(p),
                };
                if amount <= Amount::ZERO {
                    return Err(ActionError::UserErrors(
                        "the store credit would be zero".into(),
                    ));
                }
                self.discounts
                    .credit(&reward.shop, customer, amount, &currency, stop)
                    .await?;
                Ok(Issued {
                    kind: "store_credit".to_string(),
                    code: None,
                    amount: Some(amount.to_string()),
                    percentage: None,
                    currency: Some(currency),
                    deactivated: None,
                })
            }
        }
    }
}

/// The dead letter of an output that was not written: the output as it would have been, on
/// the topic it was meant for, with the action and why in the reason.
fn letter(
    topic: String,
    partition: i32,
    key: &str,
    event_id: &str,
    output: &Output,
    action: &str,
    error: &ActionError,
) -> DeadLetter {
    let headers = OwnedHeaders::new().insert(Header {
        key: "aftercart-event-id",
        value: Some(event_id),
    });
    DeadLetter {
        message: OwnedMessage::new(
            serde_json::to_vec(output).ok(),
            Some(key.as_bytes().to_vec()),
            topic,
            Timestamp::CreateTime(aftercart_shopify::time::now_ms()),
            partition,
            -1,
            Some(headers),
        ),
        reason: format!("shopify_{}: {action}: {error}", error.as_label()),
    }
}

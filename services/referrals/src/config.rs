//! Referrals service configuration: flags with `AFTERCART_*` environment fallbacks.

use std::time::Duration;

use aftercart_delivery::{DeliveryConfig, DeliveryFlags};
use aftercart_kafka::{KafkaArgs, KafkaSettings};
use aftercart_runtime::config::{
    check_names, parse_duration, parse_in_range, parse_positive_duration, secret_or_file,
    ConfigErrors,
};
use aftercart_runtime::state_hash::StateHashArgs;
use aftercart_shopify::money::Amount;
use aftercart_shopify_admin::discounts::DiscountValue;
use aftercart_shopify_admin::{AdminArgs, AdminConfig};

use crate::domain::code::{CodeRules, Source};
use crate::domain::engine::{Rules, Trigger};

aftercart_delivery::sink_args!(
    /// Optional: every invite and reward event is also POSTed, signed, to an email or rewards
    /// provider (`--referrals-webhook-*`, `AFTERCART_REFERRALS_WEBHOOK_*`); off without a URL.
    pub struct WebhookArgs, "referrals-webhook", "AFTERCART_REFERRALS_WEBHOOK"
);

/// The service's own flags; Kafka, admin and shutdown flags belong to the command running it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Referrals")]
pub struct ReferralsArgs {
    /// Consumer group of the service; every instance of one deployment shares it.
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_GROUP",
        default_value = "aftercart-referrals"
    )]
    pub referrals_group: String,

    #[command(flatten)]
    pub invite: ReferralInviteArgs,

    /// Output topic of reward events (pending, granted, voided, rejected).
    #[arg(
        long = "referrals-rewards-topic",
        alias = "rewards-topic",
        env = "AFTERCART_REFERRALS_REWARDS_TOPIC",
        default_value = "aftercart.referral-rewards"
    )]
    pub rewards_topic: String,

    /// Output topic of the answers to `customers/data_request` (shared by the services; one
    /// report per service and request).
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_DATA_REQUESTS_TOPIC",
        default_value = "aftercart.data_requests"
    )]
    pub referrals_data_requests_topic: String,

    /// Internal topic that brings all of one shop's facts to one partition (keyed by shop).
    #[arg(
        long = "referrals-by-shop-topic",
        alias = "by-shop-topic",
        env = "AFTERCART_REFERRALS_BY_SHOP_TOPIC",
        default_value = "aftercart.referrals-by-shop"
    )]
    pub by_shop_topic: String,

    /// Compacted changelog topic holding customers, orders and IP windows.
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_STATE_TOPIC",
        default_value = "aftercart.referrals-state"
    )]
    pub referrals_state_topic: String,

    /// Dead-letter topic for records that cannot be used (the reason is in a header).
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_DEAD_LETTER_TOPIC",
        default_value = "aftercart.referrals-dead-letter"
    )]
    pub referrals_dead_letter_topic: String,

    /// Wait this long after the trigger before inviting (re-checking refunds and consent)
    /// [default: 0s; 5s under `aftercart dev`].
    #[arg(
        long = "referrals-invite-delay",
        alias = "invite-delay",
        env = "AFTERCART_REFERRALS_INVITE_DELAY"
    )]
    pub invite_delay: Option<String>,

    /// Orders below this subtotal (after discounts, shop currency) make no advocate.
    #[arg(
        long = "referrals-invite-min-order",
        alias = "invite-min-order",
        env = "AFTERCART_REFERRALS_INVITE_MIN_ORDER",
        default_value = "0"
    )]
    pub invite_min_order: String,

    /// A customer is invited at most once per this period.
    #[arg(
        long = "referrals-invite-cooldown",
        alias = "invite-cooldown",
        env = "AFTERCART_REFERRALS_INVITE_COOLDOWN",
        default_value = "90d"
    )]
    pub invite_cooldown: String,

    /// A friend's first order earns a reward only at or above this subtotal after discounts.
    #[arg(
        long = "referrals-reward-min-order",
        alias = "reward-min-order",
        env = "AFTERCART_REFERRALS_REWARD_MIN_ORDER",
        default_value = "0"
    )]
    pub reward_min_order: String,

    /// Rewards are held this long (align it with the return policy) before being granted
    /// [default: 30d; 1m under `aftercart dev`].
    #[arg(
        long = "referrals-review-window",
        alias = "review-window",
        env = "AFTERCART_REFERRALS_REVIEW_WINDOW"
    )]
    pub review_window: Option<String>,

    /// More referred orders than this from one browser IP within the burst window are fraud.
    #[arg(
        long = "referrals-ip-burst-max",
        alias = "ip-burst-max",
        env = "AFTERCART_REFERRALS_IP_BURST_MAX",
        default_value = "3"
    )]
    pub ip_burst_max: String,

    /// The window of the IP burst rule.
    #[arg(
        long = "referrals-ip-burst-window",
        alias = "ip-burst-window",
        env = "AFTERCART_REFERRALS_IP_BURST_WINDOW",
        default_value = "24h"
    )]
    pub ip_burst_window: String,

    /// Secret of the keyed hash that derives referral codes (required; keep it stable: a new
    /// secret gives every advocate a new code). Prefer the _FILE variant.
    #[arg(
        long = "referrals-code-secret",
        alias = "code-secret",
        env = "AFTERCART_REFERRALS_CODE_SECRET",
        hide_env_values = true
    )]
    pub code_secret: Option<String>,

    /// File holding the code secret (e.g. a mounted Kubernetes Secret).
    #[arg(
        long = "referrals-code-secret-file",
        alias = "code-secret-file",
        env = "AFTERCART_REFERRALS_CODE_SECRET_FILE"
    )]
    pub code_secret_file: Option<String>,

    #[command(flatten)]
    pub state_hash: StateHashArgs,

    /// Prefix of every referral code.
    #[arg(
        long = "referrals-code-prefix",
        alias = "code-prefix",
        env = "AFTERCART_REFERRALS_CODE_PREFIX",
        default_value = "REF-"
    )]
    pub code_prefix: String,

    /// Where a friend's order may name a code, in priority order:
    /// discount_code, landing_site, note_attribute.
    #[arg(
        long = "referrals-attribution",
        alias = "attribution",
        env = "AFTERCART_REFERRALS_ATTRIBUTION",
        default_value = "discount_code,landing_site,note_attribute"
    )]
    pub attribution: String,

    /// Query parameter of the landing URL that carries the code.
    #[arg(
        long = "referrals-url-parameter",
        alias = "url-parameter",
        env = "AFTERCART_REFERRALS_URL_PARAMETER",
        default_value = "ref"
    )]
    pub url_parameter: String,

    /// Note attribute names that carry the code, comma-separated (case-insensitive).
    #[arg(
        long = "referrals-note-attributes",
        alias = "note-attributes",
        env = "AFTERCART_REFERRALS_NOTE_ATTRIBUTES",
        default_value = "ref,referral_code"
    )]
    pub note_attributes: String,

    /// Share URL template of invites; `{shop}` and `{code}` are replaced.
    #[arg(
        long = "referrals-share-url",
        alias = "share-url",
        env = "AFTERCART_REFERRALS_SHARE_URL",
        default_value = "https://{shop}/?ref={code}"
    )]
    pub share_url: String,

    /// Dead-letter topic of events the webhook receiver refused or never accepted.
    #[arg(
        long = "referrals-webhook-dead-letter-topic",
        alias = "webhook-dead-letter-topic",
        env = "AFTERCART_REFERRALS_WEBHOOK_DEAD_LETTER_TOPIC",
        default_value = "aftercart.referrals-webhook-dead-letter"
    )]
    pub webhook_dead_letter_topic: String,

    /// The friend's offer, created in the shop as the advocate's code before the invite is
    /// published: a percentage (`10%`) or a fixed amount of the shop's currency (`5.00`), once
    /// per customer. Used only with AFTERCART_SHOPIFY_ACCESS_TOKENS_FILE.
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_FRIEND_DISCOUNT",
        default_value = "10%"
    )]
    pub referrals_friend_discount: String,

    /// Limit the friend's offer to customers without an order yet (`true`/`false`).
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_FRIEND_FIRST_ORDER_ONLY",
        default_value = "false"
    )]
    pub referrals_friend_first_order_only: String,

    /// Smallest subtotal the friend's offer applies to (`0`: any).
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_FRIEND_MIN_SUBTOTAL",
        default_value = "0"
    )]
    pub referrals_friend_min_subtotal: String,

    /// The advocate's reward: a percentage (`15%`) or an amount (`10.00`). As a store credit a
    /// percentage is of the friend's order subtotal.
    #[arg(long, env = "AFTERCART_REFERRALS_REWARD", default_value = "10.00")]
    pub referrals_reward: String,

    /// How the reward is given: `discount_code` (a unique single-use code for the advocate) or
    /// `store_credit` (credited to the advocate's store credit account; shops with store credit).
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_REWARD_KIND",
        default_value = "discount_code"
    )]
    pub referrals_reward_kind: String,

    /// When the reward is issued: `granted` (after the review window) or `pending` (at once, and
    /// its code deactivated if the reward is voided in the window).
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_REWARD_ISSUE",
        default_value = "granted"
    )]
    pub referrals_reward_issue: String,

    /// Prefix of reward codes.
    #[arg(
        long,
        env = "AFTERCART_REFERRALS_REWARD_CODE_PREFIX",
        default_value = "THANKS-"
    )]
    pub referrals_reward_code_prefix: String,

    /// Settled orders unseen this long are forgotten (first-order facts are kept).
    #[arg(
        long = "referrals-order-retention",
        alias = "order-retention",
        env = "AFTERCART_REFERRALS_ORDER_RETENTION",
        default_value = "120d"
    )]
    pub order_retention: String,

    /// `customers/redact` and `shop/redact` are remembered this long (as fingerprints), so a
    /// late fact never brings the person back; at least the order retention and the cooldown.
    #[arg(
        long = "referrals-redaction-retention",
        env = "AFTERCART_REFERRALS_REDACTION_RETENTION",
        default_value = "400d"
    )]
    pub referrals_redaction_retention: String,

    #[command(flatten, next_help_heading = "Referrals webhook")]
    pub webhook: WebhookArgs,

    #[command(flatten)]
    pub shopify: AdminArgs,
}

/// The invite moment and topic, shared with the journey service (one invite per buyer: with
/// `delivered` the referrals service invites at delivery and the journey relays that invite as
/// its `referral_invitation` touchpoint; otherwise the journey sends none).
#[derive(Debug, Clone, clap::Args)]
pub struct ReferralInviteArgs {
    /// Output topic of invites (a buyer became an advocate).
    #[arg(
        long = "referrals-invites-topic",
        alias = "invites-topic",
        env = "AFTERCART_REFERRALS_INVITES_TOPIC",
        default_value = "aftercart.referral-invites"
    )]
    pub invites_topic: String,

    /// When a buyer is invited to refer: `paid` (orders/paid), `fulfilled` (orders/fulfilled)
    /// or `delivered` (AFTERCART_REFERRALS_INVITE_DELAY after the first delivered shipment; the
    /// journey service relays the invite) [default: paid; delivered under `aftercart dev`].
    #[arg(
        long = "referrals-invite-trigger",
        alias = "invite-trigger",
        env = "AFTERCART_REFERRALS_INVITE_TRIGGER"
    )]
    pub invite_trigger: Option<String>,
}

impl ReferralInviteArgs {
    /// The trigger as given, else the default.
    fn trigger_text<'a>(&'a self, default: &'a str) -> &'a str {
        self.invite_trigger.as_deref().unwrap_or(default).trim()
    }

    /// The invites topic, and whether the journey relays the invites (trigger `delivered`).
    pub fn for_journey(&self, default_trigger: &str) -> (String, bool) {
        (
            self.invites_topic.trim().to_string(),
            self.trigger_text(default_trigger) == "delivered",
        )
    }
}

/// Defaults that differ under `aftercart dev`.
#[derive(Debug, Clone)]
pub struct ReferralsDefaults {
    pub fallback_brokers: Option<String>,
    /// The dev stack's code secret; production has none and requires one.
    pub code_secret: Option<String>,
    /// The dev stack's state hash key; production has none and requires one.
    pub state_hash_key: Option<String>,
    pub review_window: &'static str,
    pub invite_trigger: &'static str,
    pub invite_delay: &'static str,
}

impl ReferralsDefaults {
    pub fn production() -> Self {
        Self {
            fallback_brokers: None,
            code_secret: None,
            state_hash_key: None,
            review_window: "30d",
            invite_trigger: "paid",
            invite_delay: "0s",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReferralsConfig {
    pub kafka: KafkaSettings,
    pub group: String,
    pub invites_topic: String,
    pub rewards_topic: String,
    pub data_requests_topic: String,
    pub by_shop_topic: String,
    pub state_topic: String,
    pub dead_letter_topic: String,
    pub rules: Rules,
    /// The optional webhook forwarder (its own consumer group of the two output topics).
    pub webhook: Option<DeliveryConfig>,
    /// Bounds the final producer flush on shutdown.
    pub shutdown_timeout: Duration,
    /// Discounts and rewards created in shops; `None` without a tokens file.
    pub shopify: Option<ShopifyActions>,
}

/// What the service creates in shops, and how it reaches them.
#[derive(Debug, Clone)]
pub struct ShopifyActions {
    pub admin: AdminConfig,
    pub friend: FriendOffer,
    pub reward: RewardOffer,
}

/// The friend's offer behind every advocate's code.
#[derive(Debug, Clone, PartialEq)]
pub struct FriendOffer {
    pub value: DiscountValue,
    pub first_order_only: bool,
    pub minimum_subtotal: Option<Amount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardKind {
    DiscountCode,
    StoreCredit,
}

/// The reward event that issues the reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOn {
    Granted,
    Pending,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RewardOffer {
    pub value: DiscountValue,
    pub kind: RewardKind,
    pub issue_on: IssueOn,
    pub code_prefix: String,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

impl ReferralsArgs {
    fn code_secret(
        &self,
        errors: &mut ConfigErrors,
        defaults: &ReferralsDefaults,
    ) -> Option<Vec<u8>> {
        let secret = match secret_or_file(
            errors,
            "AFTERCART_REFERRALS_CODE_SECRET",
            self.code_secret.as_deref(),
            self.code_secret_file.as_deref().map(std::path::Path::new),
        )? {
            Some(secret) => secret,
            None => match &defaults.code_secret {
                Some(secret) => secret.clone(),
                None => {
                    errors.push(
                        "AFTERCART_REFERRALS_CODE_SECRET: required (or AFTERCART_REFERRALS_CODE_SECRET_FILE): \
                         referral codes are a keyed hash of the advocate",
                    );
                    return None;
                }
            },
        };
        if secret.len() < 16 {
            errors.push("AFTERCART_REFERRALS_CODE_SECRET: must be at least 16 bytes");
            return None;
        }
        Some(secret.into_bytes())
    }

    /// Validates with the command's Kafka flags and shutdown deadline, every problem at once.
    pub fn validate(
        &self,
        kafka: &KafkaArgs,
        shutdown_timeout: Duration,
        defaults: &ReferralsDefaults,
    ) -> Result<ReferralsConfig, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let kafka = kafka.validate(&mut errors, defaults.fallback_brokers.as_deref());
        let ms = |errors: &mut ConfigErrors, name: &str, value: &str, zero_ok: bool| {
            let parsed = if zero_ok {
                parse_duration(value)
            } else {
                parse_positive_duration(value)
            };
            // Wrapped, a huge duration would turn negative: every marker expired.
            errors.check(
                name,
                parsed.and_then(|d| {
                    i64::try_from(d.as_millis()).map_err(|_| "is too long".to_string())
                }),
            )
        };
        let invite_delay = ms(
            &mut errors,
            "AFTERCART_REFERRALS_INVITE_DELAY",
            self.invite_delay
                .as_deref()
                .unwrap_or(defaults.invite_delay),
            true,
        );
        let cooldown = ms(
            &mut errors,
            "AFTERCART_REFERRALS_INVITE_COOLDOWN",
            &self.invite_cooldown,
            true,
        );
        let review = ms(
            &mut errors,
            "AFTERCART_REFERRALS_REVIEW_WINDOW",
            self.review_window
                .as_deref()
                .unwrap_or(defaults.review_window),
            true,
        );
        let burst_window = ms(
            &mut errors,
            "AFTERCART_REFERRALS_IP_BURST_WINDOW",
            &self.ip_burst_window,
            false,
        );
        let retention = ms(
            &mut errors,
            "AFTERCART_REFERRALS_ORDER_RETENTION",
            &self.order_retention,
            false,
        );
        let redaction_retention = ms(
            &mut errors,
            "AFTERCART_REFERRALS_REDACTION_RETENTION",
            &self.referrals_redaction_retention,
            false,
        );
        if let (Some(kept), Some(retention), Some(cooldown)) =
            (redaction_retention, retention, cooldown)
        {
            if kept < retention.max(cooldown) {
                errors.push(
                    "AFTERCART_REFERRALS_REDACTION_RETENTION: must be at least the order retention and the invite cooldown",
                );
            }
        }
        if let (Some(delay), Some(review), Some(retention)) = (invite_delay, review, retention) {
            if retention <= delay.max(review) {
                errors.push(
                    "AFTERCART_REFERRALS_ORDER_RETENTION: must exceed the invite delay and the review window",
                );
            }
        }
        let amount = |errors: &mut ConfigErrors, name: &str, value: &str| {
            errors.check(name, Amount::parse_setting(value))
        };
        let invite_min = amount(
            &mut errors,
            "AFTERCART_REFERRALS_INVITE_MIN_ORDER",
            &self.invite_min_order,
        );
        let reward_min = amount(
            &mut errors,
            "AFTERCART_REFERRALS_REWARD_MIN_ORDER",
            &self.reward_min_order,
        );
        let burst_max = errors.check(
            "AFTERCART_REFERRALS_IP_BURST_MAX",
            parse_in_range(&self.ip_burst_max, 1, 1_000_000),
        );
        let trigger = errors.check(
            "AFTERCART_REFERRALS_INVITE_TRIGGER",
            match self.invite.trigger_text(defaults.invite_trigger) {
                "paid" => Ok(Trigger::Paid),
                "fulfilled" => Ok(Trigger::Fulfilled),
                "delivered" => Ok(Trigger::Delivered),
                other => Err(format!("{other:?} is not paid, fulfilled or delivered")),
            },
        );
        let mut sources = Vec::new();
        for name in list(&self.attribution) {
            match Source::parse(&name) {
                Some(source) if !sources.contains(&source) => sources.push(source),
                Some(_) => {}
                None => errors.push(format!(
                    "AFTERCART_REFERRALS_ATTRIBUTION: {name:?} is not discount_code, landing_site or note_attribute"
                )),
            }
        }
        let prefix = self.code_prefix.trim().to_string();
        if prefix.len() > 16
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push("AFTERCART_REFERRALS_CODE_PREFIX: up to 16 letters, digits, - or _");
        }
        if !self.share_url.contains("{code}") {
            errors.push("AFTERCART_REFERRALS_SHARE_URL: must contain {code}");
        }
        let secret = self.code_secret(&mut errors, defaults);
        // Its messages name the setting (the key or its _FILE variant) themselves.
        let hasher = self
            .state_hash
            .hasher(defaults.state_hash_key.as_deref())
            .map_err(|problem| errors.push(problem))
            .ok();
        let webhook_wanted = self
            .webhook
            .url
            .as_deref()
            .is_some_and(|url| !url.trim().is_empty());
        let webhook = if webhook_wanted {
            DeliveryFlags {
                sink: self.webhook.flags(),
                topics: format!(
                    "{},{}",
                    self.invite.invites_topic.trim(),
                    self.rewards_topic.trim()
                ),
                group: format!("{}-webhook", self.referrals_group.trim()),
                dead_letter_topic: self.webhook_dead_letter_topic.trim().to_string(),
            }
            .validate("AFTERCART_REFERRALS_WEBHOOK", &mut errors)
            .map(|mut config| {
                config.shutdown_timeout = shutdown_timeout;
                config
            })
        } else {
            None
        };
        check_names(
            &mut errors,
            &[
                ("AFTERCART_REFERRALS_GROUP", &self.referrals_group),
                (
                    "AFTERCART_REFERRALS_INVITES_TOPIC",
                    &self.invite.invites_topic,
                ),
                ("AFTERCART_REFERRALS_REWARDS_TOPIC", &self.rewards_topic),
                ("AFTERCART_REFERRALS_BY_SHOP_TOPIC", &self.by_shop_topic),
                (
                    "AFTERCART_REFERRALS_STATE_TOPIC",
                    &self.referrals_state_topic,
                ),
                (
                    "AFTERCART_REFERRALS_DEAD_LETTER_TOPIC",
                    &self.referrals_dead_letter_topic,
                ),
            ],
        );
        let shopify = self.shopify_actions(&mut errors);
        // `check` reports every value it returns as None: none is left unreported here.
        let (
            Some(kafka),
            Some(secret),
            Some(trigger),
            Some(invite_delay),
            Some(invite_min),
            Some(cooldown),
            Some(reward_min),
            Some(review),
            Some(burst_max),
            Some(burst_window),
            Some(retention),
            Some(redaction_retention),
            Some(hasher),
        ) = (
            kafka,
            secret,
            trigger,
            invite_delay,
            invite_min,
            cooldown,
            reward_min,
            review,
            burst_max,
            burst_window,
            retention,
            redaction_retention,
            hasher,
        )
        else {
            return Err(errors);
        };
        errors.finish(|| ReferralsConfig {
            kafka,
            group: self.referrals_group.trim().to_string(),
            invites_topic: self.invite.invites_topic.trim().to_string(),
            rewards_topic: self.rewards_topic.trim().to_string(),
            data_requests_topic: self.referrals_data_requests_topic.trim().to_string(),
            by_shop_topic: self.by_shop_topic.trim().to_string(),
            state_topic: self.referrals_state_topic.trim().to_string(),
            dead_letter_topic: self.referrals_dead_letter_topic.trim().to_string(),
            rules: Rules {
                codes: CodeRules {
                    secret,
                    prefix,
                    sources,
                    url_parameter: self.url_parameter.trim().to_string(),
                    note_attributes: list(&self.note_attributes),
                    share_url: self.share_url.trim().to_string(),
                },
                trigger,
                invite_delay_ms: invite_delay,
                invite_min_value: invite_min,
                cooldown_ms: cooldown,
                reward_min_value: reward_min,
                review_window_ms: review,
                ip_burst_max: burst_max as usize,
                ip_burst_window_ms: burst_window,
                order_retention_ms: retention,
                redaction_retention_ms: redaction_retention,
                hasher,
            },
            webhook,
            shutdown_timeout,
            shopify,
        })
    }

    /// The Shopify actions, when a tokens file is set; every problem goes to `errors`.
    fn shopify_actions(&self, errors: &mut ConfigErrors) -> Option<ShopifyActions> {
        let admin = self.shopify.validate(errors);
        let friend_value = errors.check(
            "AFTERCART_REFERRALS_FRIEND_DISCOUNT",
            DiscountValue::parse(&self.referrals_friend_discount),
        );
        let first_order_only = errors.check(
            "AFTERCART_REFERRALS_FRIEND_FIRST_ORDER_ONLY",
            parse_bool(&self.referrals_friend_first_order_only),
        );
        let minimum = errors.check(
            "AFTERCART_REFERRALS_FRIEND_MIN_SUBTOTAL",
            Amount::parse_setting(&self.referrals_friend_min_subtotal).and_then(|a| {
                if a >= Amount::ZERO {
                    Ok(a)
                } else {
                    Err("must not be negative".to_string())
                }
            }),
        );
        let reward_value = errors.check(
            "AFTERCART_REFERRALS_REWARD",
            DiscountValue::parse(&self.referrals_reward),
        );
        let kind = errors.check(
            "AFTERCART_REFERRALS_REWARD_KIND",
            match self.referrals_reward_kind.trim() {
                "discount_code" => Ok(RewardKind::DiscountCode),
                "store_credit" => Ok(RewardKind::StoreCredit),
                other => Err(format!("{other:?} is not discount_code or store_credit")),
            },
        );
        let issue_on = errors.check(
            "AFTERCART_REFERRALS_REWARD_ISSUE",
            match self.referrals_reward_issue.trim() {
                "granted" => Ok(IssueOn::Granted),
                "pending" => Ok(IssueOn::Pending),
                other => Err(format!("{other:?} is not granted or pending")),
            },
        );
        let prefix = self.referrals_reward_code_prefix.trim().to_string();
        if prefix.len() > 16
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push("AFTERCART_REFERRALS_REWARD_CODE_PREFIX: up to 16 letters, digits, - or _");
        }
        if kind == Some(RewardKind::StoreCredit) && issue_on == Some(IssueOn::Pending) {
            errors.push(
                "AFTERCART_REFERRALS_REWARD_ISSUE: store credit cannot be taken back, so it is issued only when granted",
            );
        }
        Some(ShopifyActions {
            admin: admin?,
            friend: FriendOffer {
                value: friend_value?,
                first_order_only: first_order_only?,
                minimum_subtotal: minimum.filter(|m| *m > Amount::ZERO),
            },
            reward: RewardOffer {
                value: reward_value?,
                kind: kind?,
                issue_on: issue_on?,
                code_prefix: prefix.to_ascii_uppercase(),
            },
        })
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

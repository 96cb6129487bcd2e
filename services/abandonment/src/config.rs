//! Abandonment service configuration: flags with `AFTERCART_*` environment fallbacks.

use std::time::Duration;

use aftercart_kafka::{KafkaArgs, KafkaSettings};
use aftercart_runtime::config::{parse_duration, parse_in_range, ConfigErrors};

use crate::domain::engine::Rules;
use crate::domain::money::Amount;
use crate::domain::segments::SegmentRules;

/// The service's own flags; Kafka, admin and shutdown flags belong to the command running it.
#[derive(Debug, Clone, clap::Args)]
pub struct AbandonmentArgs {
    /// Consumer group of the service; every instance of one deployment shares it.
    #[arg(
        long,
        env = "AFTERCART_ABANDONMENT_GROUP",
        default_value = "aftercart-abandonment"
    )]
    pub group: String,

    /// Output topic of abandoned and recovered events.
    #[arg(
        long,
        env = "AFTERCART_ABANDONMENTS_TOPIC",
        default_value = "aftercart.abandonments"
    )]
    pub output_topic: String,

    /// Compacted changelog topic holding the journeys' state.
    #[arg(
        long,
        env = "AFTERCART_ABANDONMENT_STATE_TOPIC",
        default_value = "aftercart.abandonment-state"
    )]
    pub state_topic: String,

    /// Dead-letter topic for records that cannot be used (the reason is in a header).
    #[arg(
        long,
        env = "AFTERCART_ABANDONMENT_DEAD_LETTER_TOPIC",
        default_value = "aftercart.abandonment-dead-letter"
    )]
    pub dead_letter_topic: String,

    /// A checkout with contact details and no order this long after its last activity is
    /// abandoned [default: 1h; 20s under `aftercart dev`].
    #[arg(long, env = "AFTERCART_ABANDON_AFTER")]
    pub abandon_after: Option<String>,

    /// A cart that does not reach checkout this long after its last activity is a cart
    /// abandonment [default: 1h; 20s under `aftercart dev`].
    #[arg(long, env = "AFTERCART_CART_ABANDON_AFTER")]
    pub cart_abandon_after: Option<String>,

    /// Journeys idle this long are forgotten.
    #[arg(long, env = "AFTERCART_ABANDONMENT_RETENTION", default_value = "30d")]
    pub retention: String,

    /// After app/uninstalled, the shop's state is dropped once this passes.
    #[arg(long, env = "AFTERCART_UNINSTALL_GRACE", default_value = "48h")]
    pub uninstall_grace: String,

    /// Cart totals at or above this (shop currency, decimal) are the `medium` value tier.
    #[arg(long, env = "AFTERCART_VALUE_TIER_MEDIUM", default_value = "50")]
    pub value_tier_medium: String,

    /// Cart totals at or above this are the `high` value tier.
    #[arg(long, env = "AFTERCART_VALUE_TIER_HIGH", default_value = "200")]
    pub value_tier_high: String,

    /// Checkout visits that make a fence-sitter.
    #[arg(long, env = "AFTERCART_FENCE_SITTER_VISITS", default_value = "3")]
    pub fence_sitter_visits: String,

    /// Time between first and last checkout activity that makes a fence-sitter.
    #[arg(long, env = "AFTERCART_FENCE_SITTER_SPAN", default_value = "24h")]
    pub fence_sitter_span: String,

    /// Earlier abandonments by the customer within this window count as `repeat`.
    #[arg(long, env = "AFTERCART_REPEAT_WINDOW", default_value = "30d")]
    pub repeat_window: String,

    /// An order whose landing or referring site contains this came through the recovery URL.
    #[arg(
        long,
        env = "AFTERCART_RECOVERY_URL_MARKER",
        default_value = "/recover"
    )]
    pub recovery_url_marker: String,

    /// The merchant sends transactional cart reminders (e.g. where the law allows reminders
    /// of an unfinished purchase without marketing consent): abandonment events then carry
    /// contact details and the recovery link for every buyer, not only those with marketing
    /// consent.
    #[arg(
        long,
        env = "AFTERCART_ABANDONMENT_TRANSACTIONAL_REMINDERS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub transactional_reminders: bool,
}

/// Defaults that differ under `aftercart dev`.
#[derive(Debug, Clone)]
pub struct AbandonmentDefaults {
    pub abandon_after: &'static str,
    pub fallback_brokers: Option<String>,
}

impl AbandonmentDefaults {
    pub fn production() -> Self {
        Self {
            abandon_after: "1h",
            fallback_brokers: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AbandonmentConfig {
    pub kafka: KafkaSettings,
    pub group: String,
    pub output_topic: String,
    pub state_topic: String,
    pub dead_letter_topic: String,
    pub rules: Rules,
    /// Bounds the final producer flush on shutdown.
    pub shutdown_timeout: Duration,
}

impl AbandonmentArgs {
    /// Validates with the command's Kafka flags and shutdown deadline, every problem at once.
    pub fn validate(
        &self,
        kafka: &KafkaArgs,
        shutdown_timeout: Duration,
        defaults: &AbandonmentDefaults,
    ) -> Result<AbandonmentConfig, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let kafka = kafka.validate(&mut errors, defaults.fallback_brokers.as_deref());
        let ms = |errors: &mut ConfigErrors, name: &str, value: &str| {
            errors
                .check(
                    name,
                    parse_duration(value).and_then(|d| {
                        if d.is_zero() {
                            Err("must be above 0".into())
                        } else {
                            Ok(d)
                        }
                    }),
                )
                .map(|d| d.as_millis() as i64)
        };
        let abandon_after = ms(
            &mut errors,
            "AFTERCART_ABANDON_AFTER",
            self.abandon_after
                .as_deref()
                .unwrap_or(defaults.abandon_after),
        );
        let cart_abandon_after = ms(
            &mut errors,
            "AFTERCART_CART_ABANDON_AFTER",
            self.cart_abandon_after
                .as_deref()
                .unwrap_or(defaults.abandon_after),
        );
        let retention = ms(
            &mut errors,
            "AFTERCART_ABANDONMENT_RETENTION",
            &self.retention,
        );
        let uninstall_grace = ms(
            &mut errors,
            "AFTERCART_UNINSTALL_GRACE",
            &self.uninstall_grace,
        );
        let fence_sitter_span = ms(
            &mut errors,
            "AFTERCART_FENCE_SITTER_SPAN",
            &self.fence_sitter_span,
        );
        let repeat_window = ms(&mut errors, "AFTERCART_REPEAT_WINDOW", &self.repeat_window);
        let amount = |errors: &mut ConfigErrors, name: &str, value: &str| {
            errors.check(
                name,
                Amount::parse(value.trim())
                    .ok_or_else(|| format!("{value:?} is not a decimal amount like 50 or 49.99")),
            )
        };
        let medium = amount(
            &mut errors,
            "AFTERCART_VALUE_TIER_MEDIUM",
            &self.value_tier_medium,
        );
        let high = amount(
            &mut errors,
            "AFTERCART_VALUE_TIER_HIGH",
            &self.value_tier_high,
        );
        if let (Some(medium), Some(high)) = (medium, high) {
            if medium > high {
                errors
                    .push("AFTERCART_VALUE_TIER_MEDIUM: must not exceed AFTERCART_VALUE_TIER_HIGH");
            }
        }
        let visits = errors.check(
            "AFTERCART_FENCE_SITTER_VISITS",
            parse_in_range(&self.fence_sitter_visits, 1, 1000),
        );
        for (name, value) in [
            ("AFTERCART_ABANDONMENT_GROUP", &self.group),
            ("AFTERCART_ABANDONMENTS_TOPIC", &self.output_topic),
            ("AFTERCART_ABANDONMENT_STATE_TOPIC", &self.state_topic),
            (
                "AFTERCART_ABANDONMENT_DEAD_LETTER_TOPIC",
                &self.dead_letter_topic,
            ),
        ] {
            if value.trim().is_empty() {
                errors.push(format!("{name}: must not be empty"));
            }
        }
        errors.finish(|| AbandonmentConfig {
            kafka: kafka.expect("checked"),
            group: self.group.trim().to_string(),
            output_topic: self.output_topic.trim().to_string(),
            state_topic: self.state_topic.trim().to_string(),
            dead_letter_topic: self.dead_letter_topic.trim().to_string(),
            rules: Rules {
                abandon_after_ms: abandon_after.expect("checked"),
                cart_abandon_after_ms: cart_abandon_after.expect("checked"),
                retention_ms: retention.expect("checked"),
                uninstall_grace_ms: uninstall_grace.expect("checked"),
                recovery_marker: self.recovery_url_marker.clone(),
                transactional_reminders: self.transactional_reminders,
                segments: SegmentRules {
                    value_medium: medium.expect("checked"),
                    value_high: high.expect("checked"),
                    fence_sitter_visits: visits.expect("checked") as u32,
                    fence_sitter_span_ms: fence_sitter_span.expect("checked"),
                    repeat_window_ms: repeat_window.expect("checked"),
                },
            },
            shutdown_timeout,
        })
    }
}

//! Subscription watchdog: flags a shop whose order webhooks stopped arriving while other shops'
//! orders keep coming (Shopify deletes a webhook subscription after repeated failed deliveries).
//!
//! Pure logic on event time (the records' timestamps, so a replay after a restart judges the
//! same way): per shop the time of its last order webhook and an EWMA of the gaps between its
//! orders. A shop is silent once other shops' orders kept arriving for
//! `max(min_silence, gap_factor × its usual gap)` after its last order, counted from the start of
//! the current uninterrupted flow: a gap of `min_silence` with no order from anyone (an ingress
//! or Kafka outage) restarts the flow, so an outage that silences everyone flags no one.

use std::collections::HashMap;
use std::time::Duration;

use aftercart_runtime::config::{parse_duration, ConfigErrors};
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::domain::state::Entity;

/// The order webhooks that show a shop's subscriptions deliver.
pub const ORDER_TOPICS: [&str; 2] = ["orders/create", "orders/paid"];
/// The webhooks after which a shop's orders are expected to stop (the shop left the app).
pub const GONE_TOPICS: [&str; 2] = ["app/uninstalled", "shop/redact"];
/// Arrivals closer than this to the previous counted one belong to the same order or burst
/// (`orders/paid` right after `orders/create`): they move the last arrival, not the usual gap.
const BURST_MS: i64 = 60_000;
/// Weight of the newest gap in the usual gap (EWMA): about the last 10 gaps count.
const ALPHA: f64 = 0.2;
/// A shop silent this long is forgotten (it most likely left without an uninstall webhook).
const FORGET_AFTER_MS: i64 = 30 * 86_400_000;

/// The watchdog's flags (part of the journey service's).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Journey subscription watchdog")]
pub struct WatchdogArgs {
    /// The shortest silence (no orders/create or orders/paid webhook from a shop while others'
    /// keep arriving) that flags a shop; also the gap with no order from anyone that counts as
    /// an outage rather than a shop's silence.
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_WATCHDOG_MIN_SILENCE",
        default_value = "6h"
    )]
    pub journey_watchdog_min_silence: String,

    /// A shop is flagged after this many times its usual gap between orders (when longer than
    /// the minimum silence).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_WATCHDOG_GAP_FACTOR",
        default_value_t = 8.0
    )]
    pub journey_watchdog_gap_factor: f64,

    /// Gaps between orders a shop needs before it is judged (a new or quiet shop is not).
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_WATCHDOG_MIN_ORDERS",
        default_value_t = 10
    )]
    pub journey_watchdog_min_orders: u32,

    /// Shops watched per instance at most; past it the longest silent one is forgotten.
    #[arg(
        long,
        env = "AFTERCART_JOURNEY_WATCHDOG_MAX_SHOPS",
        default_value_t = 100_000
    )]
    pub journey_watchdog_max_shops: usize,
}

/// The validated watchdog settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogRules {
    pub min_silence_ms: i64,
    pub gap_factor: f64,
    pub min_gaps: u32,
    pub max_shops: usize,
}

impl Default for WatchdogRules {
    fn default() -> Self {
        Self {
            min_silence_ms: 6 * 3_600_000,
            gap_factor: 8.0,
            min_gaps: 10,
            max_shops: 100_000,
        }
    }
}

impl WatchdogArgs {
    pub fn validate(&self, errors: &mut ConfigErrors) -> WatchdogRules {
        let defaults = WatchdogRules::default();
        let min_silence_ms = errors
            .check(
                "AFTERCART_JOURNEY_WATCHDOG_MIN_SILENCE",
                parse_duration(&self.journey_watchdog_min_silence).and_then(|d: Duration| {
                    if d.as_secs() < 60 {
                        Err("must be at least 1m".into())
                    } else {
                        Ok(d.as_millis() as i64)
                    }
                }),
            )
            .unwrap_or(defaults.min_silence_ms);
        let factor = self.journey_watchdog_gap_factor;
        if !(1.0..=1000.0).contains(&factor) {
            errors.push(format!(
                "AFTERCART_JOURNEY_WATCHDOG_GAP_FACTOR: must be between 1 and 1000, not {factor}"
            ));
        }
        if self.journey_watchdog_min_orders < 2 {
            errors.push("AFTERCART_JOURNEY_WATCHDOG_MIN_ORDERS: must be at least 2".to_string());
        }
        if self.journey_watchdog_max_shops == 0 {
            errors.push("AFTERCART_JOURNEY_WATCHDOG_MAX_SHOPS: must be above 0".to_string());
        }
        WatchdogRules {
            min_silence_ms,
            gap_factor: factor,
            min_gaps: self.journey_watchdog_min_orders,
            max_shops: self.journey_watchdog_max_shops,
        }
    }
}

/// What the watchdog keeps per shop (fixed size), persisted in the journey's changelog.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Pace {
    /// The last order webhook (ms since the epoch).
    pub last_ms: i64,
    /// The last arrival counted as a gap (bursts collapse onto it).
    pub anchor_ms: i64,
    /// The usual gap between orders (EWMA, ms).
    pub gap_ms: f64,
    /// Gaps counted (saturating).
    pub gaps: u32,
    /// Flagged silent (so a restart neither logs nor counts it twice).
    pub silent: bool,
}

/// `pace/<shop>`: a shop's watchdog entity in the changelog.
pub fn pace_entity(shop: &str) -> String {
    format!("pace/{shop}")
}

/// A changelog value of the journey stage: the engine's entities, or a watchdog pace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
// Like the engine's entities, stored values move boxed through the stage.
#[allow(clippy::large_enum_variant)]
pub enum Stored {
    Pace(PaceRecord),
    Journey(Entity),
}

/// A pace as it is written: `{"kind":"shop_pace", ...}`, beside the engine's kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PaceRecord {
    ShopPace(Pace),
}

/// A change of a shop's state the operator is told of.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Silent {
        shop: String,
        silent_for_ms: i64,
        usual_gap_ms: i64,
    },
    Recovered {
        shop: String,
        silent_for_ms: i64,
    },
}

/// What the consumer does with a watchdog step: persist (or with `None` delete) a pace of a
/// partition, and the changes to report.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    pub persist: Vec<(i32, String, Option<Pace>)>,
    pub changes: Vec<Change>,
}

struct Watched {
    partition: i32,
    pace: Pace,
}

/// The watchdog over the shops of the partitions this instance owns.
pub struct Watchdog {
    rules: WatchdogRules,
    shops: HashMap<String, Watched>,
    /// The two latest order arrivals of distinct shops (ms, shop), newest first: "the latest
    /// order of another shop" for any shop.
    latest: Vec<(i64, String)>,
    /// When the current uninterrupted flow of orders began (`None`: since before this process).
    flow_since_ms: Option<i64>,
    /// The newest arrival at the last judgement: judging again before a minute of event time
    /// passed changes nothing, so [`Watchdog::judge`] skips the scan.
    judged_at_ms: Option<i64>,
}

impl Watchdog {
    pub fn new(rules: WatchdogRules) -> Self {
        Self {
            rules,
            shops: HashMap::new(),
            latest: Vec::with_capacity(2),
            flow_since_ms: None,
            judged_at_ms: None,
        }
    }

    fn threshold_ms(&self, pace: &Pace) -> i64 {
        let usual = (self.rules.gap_factor * pace.gap_ms) as i64;
        usual.max(self.rules.min_silence_ms)
    }

    fn note_latest(&mut self, at_ms: i64, shop: &str) {
        let known = self
            .latest
            .iter()
            .find(|(_, s)| s == shop)
            .map(|(at, _)| *at);
        let at_ms = known.map_or(at_ms, |k| k.max(at_ms));
        self.latest.retain(|(_, s)| s != shop);
        self.latest.push((at_ms, shop.to_string()));
        self.latest.sort_by_key(|l| std::cmp::Reverse(l.0));
        self.latest.truncate(2);
    }

    fn latest_other(&self, shop: &str) -> Option<i64> {
        self.latest
            .iter()
            .find(|(_, s)| s != shop)
            .map(|(at, _)| *at)
    }

    /// An order webhook of `shop` at `at_ms` (event time) in `partition`.
    pub fn observe(&mut self, partition: i32, shop: &str, at_ms: i64) -> Step {
        let mut step = Step::default();
        match self.latest.first() {
            Some((newest, _)) if at_ms - newest >= self.rules.min_silence_ms => {
                // Nobody's orders arrived for a while: an outage (or a quiet night), not one
                // shop's silence. Silences count from here.
                self.flow_since_ms = Some(at_ms);
            }
            None if self.flow_since_ms.is_none() => self.flow_since_ms = Some(at_ms),
            _ => {}
        }
        if !self.shops.contains_key(shop) && self.shops.len() >= self.rules.max_shops {
            self.evict(&mut step);
        }
        let watched = self.shops.entry(shop.to_string()).or_insert(Watched {
            partition,
            pace: Pace {
                last_ms: at_ms,
                anchor_ms: at_ms,
                ..Pace::default()
            },
        });
        watched.partition = partition;
        let pace = &mut watched.pace;
        let gap = at_ms - pace.anchor_ms;
        if gap >= BURST_MS {
            pace.gap_ms = if pace.gaps == 0 {
                gap as f64
            } else {
                ALPHA * gap as f64 + (1.0 - ALPHA) * pace.gap_ms
            };
            pace.gaps = pace.gaps.saturating_add(1);
            pace.anchor_ms = at_ms;
        }
        let previous = pace.last_ms;
        pace.last_ms = pace.last_ms.max(at_ms);
        if pace.silent {
            pace.silent = false;
            step.changes.push(Change::Recovered {
                shop: shop.to_string(),
                silent_for_ms: at_ms - previous,
            });
        }
        step.persist
            .push((partition, shop.to_string(), Some(pace.clone())));
        self.note_latest(at_ms, shop);
        step
    }

    /// Flags the shops that went silent; call it after batches (it scans every shop).
    pub fn judge(&mut self) -> Step {
        let mut step = Step::default();
        let flow_since = self.flow_since_ms.unwrap_or(i64::MIN);
        let newest = self.latest.first().map(|(at, _)| *at);
        if let (Some(newest), Some(judged)) = (newest, self.judged_at_ms) {
            if newest - judged < BURST_MS {
                return step;
            }
        }
        self.judged_at_ms = newest;
        let mut forget = Vec::new();
        let mut flagged = Vec::new();
        for (shop, watched) in &self.shops {
            let pace = &watched.pace;
            if newest.is_some_and(|n| n - pace.last_ms >= FORGET_AFTER_MS) {
                forget.push(shop.clone());
                continue;
            }
            if pace.silent || pace.gaps < self.rules.min_gaps {
                continue;
            }
            let Some(other) = self.latest_other(shop) else {
                continue;
            };
            let start = pace.last_ms.max(flow_since);
            if other - start >= self.threshold_ms(pace) {
                flagged.push((shop.clone(), other - pace.last_ms));
            }
        }
        for (shop, silent_for_ms) in flagged {
            let watched = self.shops.get_mut(&shop).expect("judged above");
            watched.pace.silent = true;
            step.changes.push(Change::Silent {
                shop: shop.clone(),
                silent_for_ms,
                usual_gap_ms: watched.pace.gap_ms as i64,
            });
            step.persist
                .push((watched.partition, shop, Some(watched.pace.clone())));
        }
        for shop in forget {
            self.forget(&shop, &mut step);
        }
        step
    }

    /// The shop left the app (or is forgotten): its silence is expected.
    pub fn forget(&mut self, shop: &str, step: &mut Step) {
        if let Some(watched) = self.shops.remove(shop) {
            step.persist
                .push((watched.partition, shop.to_string(), None));
        }
        self.latest.retain(|(_, s)| s != shop);
    }

    /// At the cap: the shop silent longest goes (one scan, only when a new shop arrives at it).
    fn evict(&mut self, step: &mut Step) {
        let oldest = self
            .shops
            .iter()
            .min_by_key(|(_, w)| w.pace.last_ms)
            .map(|(shop, _)| shop.clone());
        if let Some(shop) = oldest {
            self.forget(&shop, step);
        }
    }

    /// Takes the paces restored with a partition.
    pub fn assign(&mut self, partition: i32, paces: Vec<(String, Pace)>) {
        for (shop, pace) in paces {
            self.note_latest(pace.last_ms, &shop);
            self.shops.insert(shop, Watched { partition, pace });
        }
    }

    pub fn revoke(&mut self, partition: i32) {
        self.shops.retain(|_, w| w.partition != partition);
        self.latest.clear();
        let mut all: Vec<(i64, &String)> = self
            .shops
            .iter()
            .map(|(s, w)| (w.pace.last_ms, s))
            .collect();
        all.sort_by_key(|l| std::cmp::Reverse(l.0));
        self.latest = all
            .into_iter()
            .take(2)
            .map(|(at, s)| (at, s.clone()))
            .collect();
    }

    /// Shops flagged silent now, and shops with enough history to be judged.
    pub fn sizes(&self) -> (usize, usize) {
        self.shops.values().fold((0, 0), |(silent, judged), w| {
            (
                silent + usize::from(w.pace.silent),
                judged + usize::from(w.pace.gaps >= self.rules.min_gaps),
            )
        })
    }
}

/// The watchdog's metrics: counts only, no shop label (the log line names the shop).
#[derive(Clone)]
pub struct WatchdogMetrics {
    silent: IntGauge,
    judged: IntGauge,
    flagged: IntCounter,
}

impl WatchdogMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            silent: IntGauge::with_opts(Opts::new(
                "aftercart_journey_silent_shops",
                "Shops whose order webhooks stopped arriving while other shops' orders continue \
                 (a deleted webhook subscription, most likely); the log names them.",
            ))?,
            judged: IntGauge::with_opts(Opts::new(
                "aftercart_journey_watched_shops",
                "Shops with enough order history for the subscription watchdog to judge them.",
            ))?,
            flagged: IntCounter::with_opts(Opts::new(
                "aftercart_journey_silent_shops_flagged_total",
                "Times a shop was flagged silent by the subscription watchdog.",
            ))?,
        };
        aftercart_runtime::metrics_catalog::register(registry, &metrics.silent)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.judged)?;
        aftercart_runtime::metrics_catalog::register(registry, &metrics.flagged)?;
        Ok(metrics)
    }

    /// Logs and counts a change: one line when a shop goes silent, one when it recovers.
    pub fn emit(&self, change: &Change) {
        match change {
            Change::Silent {
                shop,
                silent_for_ms,
                usual_gap_ms,
            } => {
                self.flagged.inc();
                tracing::warn!(
                    shop = %shop,
                    silent_for = %humantime::format_duration(secs(*silent_for_ms)),
                    usual_gap = %humantime::format_duration(secs(*usual_gap_ms)),
                    "Shop's order webhooks stopped while other shops' continue; check its webhook subscriptions (runbook AftercartShopWebhooksSilent)."
                );
            }
            Change::Recovered {
                shop,
                silent_for_ms,
            } => tracing::warn!(
                shop = %shop,
                silent_for = %humantime::format_duration(secs(*silent_for_ms)),
                "Shop's order webhooks arrive again."
            ),
        }
    }

    pub fn sizes(&self, (silent, judged): (usize, usize)) {
        self.silent.set(silent as i64);
        self.judged.set(judged as i64);
    }
}

fn secs(ms: i64) -> Duration {
    Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0))
}

#[cfg(test)]
mod tests;

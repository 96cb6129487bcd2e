//! The merchant's morning report: per shop and local day, the facts the journey sees (checkouts,
//! abandonments and recoveries, orders, repeat orders, deliveries, referral invites, referred
//! orders, rewards), and the daily KPI record: yesterday against the previous 7 days.

use std::collections::{BTreeMap, HashMap};

use aftercart_shopify::money::Amount;
use aftercart_shopify::time::rfc3339;
use serde::{Deserialize, Serialize};

use crate::domain::touchpoint::event_id;

/// Days kept per shop: yesterday and the 7 before it, and today.
const KEPT_DAYS: i64 = 9;

/// How days are cut.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiRules {
    /// A day's length: 24 h (shorter only to watch reports come in `aftercart dev`).
    pub day_ms: i64,
    /// UTC offset of shops without their own.
    pub default_offset_ms: i64,
    /// Shop → its UTC offset (the shop's time zone decides what "yesterday" is).
    pub offsets: HashMap<String, i64>,
}

impl KpiRules {
    pub fn offset_of(&self, shop: &str) -> i64 {
        self.offsets
            .get(shop)
            .copied()
            .unwrap_or(self.default_offset_ms)
    }

    /// The shop's local day number of `at_ms`.
    pub fn day_of(&self, shop: &str, at_ms: i64) -> i64 {
        (at_ms + self.offset_of(shop)).div_euclid(self.day_ms)
    }

    /// When local day `day` of the shop starts, in ms since the epoch.
    pub fn start_of(&self, shop: &str, day: i64) -> i64 {
        day * self.day_ms - self.offset_of(shop)
    }
}

/// Parses `UTC`, `Z`, `+HH:MM` or `-HH:MM` into milliseconds.
pub fn parse_offset(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Ok(0);
    }
    let bad = || format!("{text:?} is not UTC or an offset like +02:00 or -05:00");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 || h.to_string().len() > 2 {
        return Err(bad());
    }
    Ok(sign * (h * 3_600_000 + m * 60_000))
}

/// Something that counts towards a day.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    CheckoutStarted,
    Abandoned,
    Recovered {
        value: Option<(Amount, String)>,
    },
    Order {
        repeat: bool,
        value: Option<(Amount, String)>,
    },
    Delivered {
        after_seconds: Option<f64>,
    },
    Invite,
    Referred {
        value: Option<(Amount, String)>,
    },
    RewardGranted,
    RewardVoided,
}

/// Revenue a fact carries: its kind (`orders`, `recovered`, `referral`) and (amount, currency).
pub type Revenue<'a> = (&'static str, &'a (Amount, String));

impl Fact {
    /// Every fact label, for metrics registered at zero.
    pub const LABELS: [&'static str; 10] = [
        "checkouts_started",
        "checkouts_abandoned",
        "checkouts_recovered",
        "orders",
        "repeat_orders",
        "deliveries",
        "invites",
        "referred_orders",
        "rewards_granted",
        "rewards_voided",
    ];

    /// The facts' metric labels (a repeat order is an order and a repeat order) and the revenue
    /// it carries, as (kind, amount, currency).
    pub fn labels(&self) -> (Vec<&'static str>, Option<Revenue<'_>>) {
        match self {
            Fact::CheckoutStarted => (vec!["checkouts_started"], None),
            Fact::Abandoned => (vec!["checkouts_abandoned"], None),
            Fact::Recovered { value } => (
                vec!["checkouts_recovered"],
                value.as_ref().map(|v| ("recovered", v)),
            ),
            Fact::Order { repeat, value } => (
                if *repeat {
                    vec!["orders", "repeat_orders"]
                } else {
                    vec!["orders"]
                },
                value.as_ref().map(|v| ("orders", v)),
            ),
            Fact::Delivered { .. } => (vec!["deliveries"], None),
            Fact::Invite => (vec!["invites"], None),
            Fact::Referred { value } => (
                vec!["referred_orders"],
                value.as_ref().map(|v| ("referral", v)),
            ),
            Fact::RewardGranted => (vec!["rewards_granted"], None),
            Fact::RewardVoided => (vec!["rewards_voided"], None),
        }
    }
}

/// One day of one shop.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DayCounts {
    pub checkouts_started: u64,
    pub checkouts_abandoned: u64,
    pub checkouts_recovered: u64,
    /// Currency → decimal string.
    pub recovered_revenue: BTreeMap<String, String>,
    pub orders: u64,
    pub repeat_orders: u64,
    pub revenue: BTreeMap<String, String>,
    pub deliveries: u64,
    pub delivery_seconds: f64,
    pub deliveries_timed: u64,
    pub invites: u64,
    pub referred_orders: u64,
    pub referral_revenue: BTreeMap<String, String>,
    pub rewards_granted: u64,
    pub rewards_voided: u64,
}

fn add(map: &mut BTreeMap<String, String>, value: &Option<(Amount, String)>) {
    if let Some((amount, currency)) = value {
        let entry = map.entry(currency.clone()).or_insert_with(|| "0".into());
        let sum = Amount::parse(entry)
            .unwrap_or(Amount::ZERO)
            .saturating_add(*amount);
        *entry = sum.to_string();
    }
}

impl DayCounts {
    pub fn count(&mut self, fact: &Fact) {
        match fact {
            Fact::CheckoutStarted => self.checkouts_started += 1,
            Fact::Abandoned => self.checkouts_abandoned += 1,
            Fact::Recovered { value } => {
                self.checkouts_recovered += 1;
                add(&mut self.recovered_revenue, value);
            }
            Fact::Order { repeat, value } => {
                self.orders += 1;
                self.repeat_orders += u64::from(*repeat);
                add(&mut self.revenue, value);
            }
            Fact::Delivered { after_seconds } => {
                self.deliveries += 1;
                if let Some(seconds) = after_seconds {
                    self.delivery_seconds += seconds;
                    self.deliveries_timed += 1;
                }
            }
            Fact::Invite => self.invites += 1,
            Fact::Referred { value } => {
                self.referred_orders += 1;
                add(&mut self.referral_revenue, value);
            }
            Fact::RewardGranted => self.rewards_granted += 1,
            Fact::RewardVoided => self.rewards_voided += 1,
        }
    }
}

/// The days a shop has, and the last day reported.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ShopDays {
    pub days: BTreeMap<i64, DayCounts>,
    pub reported: Option<i64>,
}

impl ShopDays {
    /// Keeps the last [`KEPT_DAYS`] days up to `today`.
    pub fn prune(&mut self, today: i64) {
        self.days.retain(|day, _| *day > today - KEPT_DAYS);
    }
}

/// The numbers of a day, or the daily average of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpiNumbers {
    pub checkouts_started: f64,
    pub checkouts_abandoned: f64,
    pub checkouts_recovered: f64,
    pub recovered_revenue: BTreeMap<String, f64>,
    pub orders: f64,
    pub repeat_orders: f64,
    pub revenue: BTreeMap<String, f64>,
    pub deliveries: f64,
    pub invites: f64,
    pub referred_orders: f64,
    pub referral_revenue: BTreeMap<String, f64>,
    pub rewards_granted: f64,
    pub rewards_voided: f64,
    /// abandoned / started; null without checkouts.
    pub abandonment_rate: Option<f64>,
    /// recovered / abandoned.
    pub recovery_rate: Option<f64>,
    /// repeat orders / orders.
    pub repeat_purchase_rate: Option<f64>,
    /// referred orders / invites.
    pub referral_conversion: Option<f64>,
    /// Mean hours from order to delivery.
    pub order_to_delivery_hours: Option<f64>,
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// The daily average over `days` (zero-filled: a day without facts counts as zeros).
pub fn numbers(days: &[&DayCounts], over: usize) -> KpiNumbers {
    let n = over.max(1) as f64;
    let sum = |f: &dyn Fn(&DayCounts) -> u64| days.iter().map(|d| f(d)).sum::<u64>() as f64;
    let money = |f: &dyn Fn(&DayCounts) -> &BTreeMap<String, String>| {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for day in days {
            for (currency, amount) in f(day) {
                let value = Amount::parse(amount).map_or(0.0, Amount::to_f64);
                *out.entry(currency.clone()).or_default() += value;
            }
        }
        out.values_mut().for_each(|v| *v /= n);
        out
    };
    let started = sum(&|d| d.checkouts_started);
    let abandoned = sum(&|d| d.checkouts_abandoned);
    let recovered = sum(&|d| d.checkouts_recovered);
    let orders = sum(&|d| d.orders);
    let repeat = sum(&|d| d.repeat_orders);
    let invites = sum(&|d| d.invites);
    let referred = sum(&|d| d.referred_orders);
    let timed = sum(&|d| d.deliveries_timed);
    let seconds: f64 = days.iter().map(|d| d.delivery_seconds).sum();
    KpiNumbers {
        checkouts_started: started / n,
        checkouts_abandoned: abandoned / n,
        checkouts_recovered: recovered / n,
        recovered_revenue: money(&|d| &d.recovered_revenue),
        orders: orders / n,
        repeat_orders: repeat / n,
        revenue: money(&|d| &d.revenue),
        deliveries: sum(&|d| d.deliveries) / n,
        invites: invites / n,
        referred_orders: referred / n,
        referral_revenue: money(&|d| &d.referral_revenue),
        rewards_granted: sum(&|d| d.rewards_granted) / n,
        rewards_voided: sum(&|d| d.rewards_voided) / n,
        abandonment_rate: ratio(abandoned, started),
        recovery_rate: ratio(recovered, abandoned),
        repeat_purchase_rate: ratio(repeat, orders),
        referral_conversion: ratio(referred, invites),
        order_to_delivery_hours: ratio(seconds / 3600.0, timed),
    }
}

/// The daily KPI record of a shop on `aftercart.kpis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpiRecord {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub shop: String,
    /// The reported local day, `YYYY-MM-DD` of its start in the shop's time zone.
    pub date: String,
    pub period_start: String,
    pub period_end: String,
    /// The shop's UTC offset used, `+HH:MM`.
    pub utc_offset: String,
    pub yesterday: KpiNumbers,
    /// Daily average of the 7 days before.
    pub previous_7_days: KpiNumbers,
}

fn offset_text(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let minutes = ms.abs() / 60_000;
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

/// The record for local `day` of `shop`.
pub fn report(rules: &KpiRules, shop: &str, days: &ShopDays, day: i64) -> KpiRecord {
    let empty = DayCounts::default();
    let yesterday = days.days.get(&day).unwrap_or(&empty);
    let before: Vec<&DayCounts> = (day - 7..day).filter_map(|d| days.days.get(&d)).collect();
    let start = rules.start_of(shop, day);
    let offset = rules.offset_of(shop);
    // The local date: the start shifted by the offset, printed as UTC.
    let date = rfc3339(start + offset)[..10].to_string();
    KpiRecord {
        event_id: event_id(&format!("kpis/{shop}/{date}/{start}")),
        kind: "daily_kpis".into(),
        shop: shop.to_string(),
        date,
        period_start: rfc3339(start),
        period_end: rfc3339(start + rules.day_ms),
        utc_offset: offset_text(offset),
        yesterday: numbers(&[yesterday], 1),
        previous_7_days: numbers(&before, 7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn rules() -> KpiRules {
        KpiRules {
            day_ms: DAY,
            default_offset_ms: 0,
            offsets: HashMap::from([("ny.myshopify.com".to_string(), -5 * 3_600_000)]),
        }
    }

    #[test]
    fn the_shops_time_zone_decides_the_day() {
        let rules = rules();
        // 2026-12-06T03:00Z is still the 5th in New York.
        let at = aftercart_shopify::time::parse_time_ms("2026-12-06T03:00:00Z").unwrap();
        assert_eq!(
            rules.day_of("ny.myshopify.com", at) + 1,
            rules.day_of("x", at)
        );
        let record = report(
            &rules,
            "ny.myshopify.com",
            &ShopDays::default(),
            rules.day_of("ny.myshopify.com", at),
        );
        assert_eq!(record.date, "2026-12-05");
        assert_eq!(record.period_start, "2026-12-05T05:00:00.000Z");
        assert_eq!(record.utc_offset, "-05:00");
    }

    #[test]
    fn offsets_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_offset("UTC"), Ok(0));
        assert_eq!(parse_offset("+05:30"), Ok(19_800_000));
        assert_eq!(parse_offset("-05:00"), Ok(-18_000_000));
        assert!(parse_offset("Europe/Paris").is_err());
        assert!(parse_offset("+25:00").is_err());
    }

    #[test]
    fn yesterday_is_compared_with_the_daily_average_of_the_7_days_before() {
        let rules = rules();
        let mut days = ShopDays::default();
        let eur = |a: &str| Some((Amount::parse(a).unwrap(), "EUR".to_string()));
        for day in 0..7 {
            let counts = days.days.entry(day).or_default();
            counts.count(&Fact::CheckoutStarted);
            counts.count(&Fact::CheckoutStarted);
            counts.count(&Fact::Abandoned);
            counts.count(&Fact::Recovered { value: eur("10") });
            counts.count(&Fact::Invite);
        }
        let y = days.days.entry(7).or_default();
        y.count(&Fact::CheckoutStarted);
        y.count(&Fact::Abandoned);
        y.count(&Fact::Order {
            repeat: true,
            value: eur("30.50"),
        });
        y.count(&Fact::Order {
            repeat: false,
            value: eur("9.50"),
        });
        y.count(&Fact::Delivered {
            after_seconds: Some(7200.0),
        });
        let record = report(&rules, "x", &days, 7);
        assert_eq!(record.yesterday.abandonment_rate, Some(1.0));
        assert_eq!(record.yesterday.recovery_rate, Some(0.0));
        assert_eq!(record.yesterday.repeat_purchase_rate, Some(0.5));
        assert_eq!(record.yesterday.revenue["EUR"], 40.0);
        assert_eq!(record.yesterday.order_to_delivery_hours, Some(2.0));
        assert_eq!(record.previous_7_days.checkouts_started, 2.0);
        assert_eq!(record.previous_7_days.abandonment_rate, Some(0.5));
        assert_eq!(record.previous_7_days.recovery_rate, Some(1.0));
        assert_eq!(record.previous_7_days.recovered_revenue["EUR"], 10.0);
        assert_eq!(record.previous_7_days.referral_conversion, Some(0.0));
        assert_eq!(record.yesterday.referral_conversion, None);
        assert_eq!(record.event_id, report(&rules, "x", &days, 7).event_id);
    }
}

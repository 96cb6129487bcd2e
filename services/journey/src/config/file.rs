//! The journey file (`AFTERCART_JOURNEY_CONFIG`, TOML): when the timed touchpoints come, which
//! products have a usage period, and where touchpoints are delivered.

use serde::Deserialize;

/// The whole file; every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyFile {
    /// Review request this long after delivery (`7d`), or `off`.
    pub review_request_after: Option<String>,
    /// Orders with nothing left to do are forgotten when unseen this long.
    pub order_retention: Option<String>,
    /// Products bought again after a usage period: a replenishment reminder comes at delivery
    /// plus the period times the quantity bought.
    #[serde(default)]
    pub replenishment: Vec<ReplenishmentFile>,
    /// Where touchpoints are delivered, besides `aftercart.touchpoints`.
    pub destination: Option<DestinationFile>,
    /// The daily KPI record (`aftercart.kpis`).
    pub kpis: Option<KpisFile>,
}

/// How the daily KPI record cuts days.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpisFile {
    /// The time zone of shops not listed, as `UTC` or a fixed offset (`+01:00`).
    pub default_time_zone: Option<String>,
    /// Shop domain → its time zone (a fixed offset: IANA names are not read, so a shop with
    /// daylight saving time gets the offset of its larger season).
    #[serde(default)]
    pub time_zones: std::collections::BTreeMap<String, String>,
    /// A day's length: `24h` (shorter only to watch reports in development).
    pub day_length: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplenishmentFile {
    /// The Shopify product id (`line_items[].product_id`).
    pub product_id: u64,
    /// How long one unit lasts (`30d`).
    pub every: String,
}

/// A message destination of the delivery crate.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DestinationFile {
    /// One JSON file per touchpoint under `<dir>/<shop>/`.
    File { dir: String },
    /// A signed POST of the touchpoint record (`X-Aftercart-Hmac-Sha256`).
    Webhook {
        url: String,
        secret_file: Option<String>,
        timeout: Option<String>,
        max_retry_duration: Option<String>,
    },
    /// Klaviyo's Events API: one event per touchpoint (metric `Aftercart <Touchpoint>`), with
    /// each shop's private key from `keys_file` (`shop.myshopify.com=pk_…` lines).
    Klaviyo {
        keys_file: String,
        base_url: Option<String>,
        timeout: Option<String>,
        max_retry_duration: Option<String>,
    },
}

impl JourneyFile {
    /// Reads and parses `path`.
    pub fn read(path: &str) -> Result<JourneyFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        toml::from_str(&text).map_err(|e| format!("{path}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journey.toml");
        let file = JourneyFile::read(path).unwrap();
        assert!(file.review_request_after.is_some());
        assert!(!file.replenishment.is_empty());
        assert!(matches!(
            file.destination,
            Some(DestinationFile::File { .. })
        ));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<JourneyFile>("review_after = \"1d\"").is_err());
        assert!(toml::from_str::<JourneyFile>("[destination]\ntype = \"fax\"").is_err());
    }
}

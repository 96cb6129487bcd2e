//! The audiences file (`--audiences-config`, TOML): destinations by name and the audiences that
//! export to them. String values may name environment variables as `${NAME}` or
//! `${NAME:-default}`, so ids and tokens come from the environment (or a Secret mounted as a
//! file, with the `*_file` keys) and never need to be written into the file.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudiencesFile {
    /// Destination name → where and how to export.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationFile>,
    #[serde(default)]
    pub audiences: Vec<AudienceFile>,
}

/// One destination, by `type`. Read once at start: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DestinationFile {
    /// Meta Custom Audience (users edge).
    Meta {
        audience_id: String,
        access_token: Option<String>,
        access_token_file: Option<String>,
        api_version: Option<String>,
        /// Overrides `AFTERCART_AUDIENCES_META_BASE_URL` for this destination.
        base_url: Option<String>,
    },
    /// Google Customer Match through the Data Manager API (`audienceMembers:ingest` / `:remove`).
    Google {
        /// The account that owns the list (`operatingAccount.accountId`, digits).
        operating_account_id: String,
        /// `GOOGLE_ADS` (default), `DISPLAY_VIDEO_ADVERTISER`, `DISPLAY_VIDEO_PARTNER` or `DATA_PARTNER`.
        operating_account_type: Option<String>,
        /// A manager or partner account acting for it (`loginAccount`), if any.
        login_account_id: Option<String>,
        login_account_type: Option<String>,
        /// The Customer Match user list (`productDestinationId`).
        user_list_id: String,
        /// OAuth, one of: a fixed access token; a refresh token with its client; a service
        /// account JSON key (JWT bearer flow); or `application_default = true` (the GCE / GKE
        /// Workload Identity metadata server).
        access_token: Option<String>,
        access_token_file: Option<String>,
        refresh_token: Option<String>,
        refresh_token_file: Option<String>,
        client_id: Option<String>,
        client_secret: Option<String>,
        client_secret_file: Option<String>,
        service_account_key_file: Option<String>,
        application_default: Option<bool>,
        /// Default `https://oauth2.googleapis.com/token` (a service account key's `token_uri` wins).
        token_url: Option<String>,
        /// Default: the GCE metadata server's token URL.
        metadata_url: Option<String>,
        /// Overrides `AFTERCART_AUDIENCES_GOOGLE_BASE_URL` for this destination.
        base_url: Option<String>,
        /// Opt-in levels (`single_opt_in`, `confirmed_opt_in`, `unknown`) of a subscribed email
        /// or SMS marketing consent that grant Google's `adUserData` [default: single_opt_in,
        /// confirmed_opt_in]; any other is sent as denied.
        ad_user_data: Option<Vec<String>>,
        /// Likewise for `adPersonalization`.
        ad_personalization: Option<Vec<String>>,
    },
    /// Google Ads Customer Match user list (offline user data jobs): only for developer tokens
    /// Google allowlisted before 2026-04-01.
    #[serde(rename = "google_ads_legacy")]
    GoogleAdsLegacy {
        customer_id: String,
        user_list_id: String,
        login_customer_id: Option<String>,
        developer_token: Option<String>,
        developer_token_file: Option<String>,
        /// A fixed OAuth access token (they expire after about an hour: prefer the refresh
        /// token below for a long-running service).
        access_token: Option<String>,
        access_token_file: Option<String>,
        /// OAuth refresh token with the client id and secret: access tokens are then fetched
        /// from `token_url` and renewed before they expire.
        refresh_token: Option<String>,
        refresh_token_file: Option<String>,
        client_id: Option<String>,
        client_secret: Option<String>,
        client_secret_file: Option<String>,
        /// Default `https://oauth2.googleapis.com/token`.
        token_url: Option<String>,
        api_version: Option<String>,
        base_url: Option<String>,
        /// Opt-in levels (`single_opt_in`, `confirmed_opt_in`, `unknown`) of a subscribed email
        /// or SMS marketing consent that grant Google's `adUserData` [default: single_opt_in,
        /// confirmed_opt_in]; any other is sent as denied.
        ad_user_data: Option<Vec<String>>,
        /// Likewise for `adPersonalization`.
        ad_personalization: Option<Vec<String>>,
    },
    /// TikTok custom audience (segment mapping API).
    Tiktok {
        advertiser_id: String,
        audience_id: String,
        access_token: Option<String>,
        access_token_file: Option<String>,
        api_version: Option<String>,
        base_url: Option<String>,
    },
    /// Snapshots and add/remove deltas in a directory.
    File {
        /// Default: `AFTERCART_AUDIENCES_DIR` (`./audiences`).
        dir: Option<String>,
        /// `csv` (default) or `jsonl`.
        format: Option<String>,
        /// Delta files kept per audience (older ones are deleted); default 1000.
        keep_deltas: Option<usize>,
        /// Delta files older than this are deleted (they hold hashes of people who may since
        /// have been removed or redacted); default 7d.
        delta_retention: Option<String>,
    },
    /// Signed JSON POSTs of add/remove batches.
    Webhook {
        url: String,
        secret: Option<String>,
        secret_file: Option<String>,
    },
}

/// One audience.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceFile {
    pub name: String,
    /// `abandonments`, `orders` or `customers`.
    pub source: String,
    /// Membership window (`30d`, `12h`); members leave after it. Omit for no expiry.
    pub window: Option<String>,
    pub destinations: Vec<String>,
    /// Abandoner audiences: leave on recovery or purchase (default true).
    pub leave_on_purchase: Option<bool>,
    /// Only these shops' people (default: every shop).
    #[serde(default)]
    pub shops: Vec<String>,
    /// Source-specific filter (see docs/services/audiences.md).
    #[serde(default)]
    pub filter: toml::Table,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbandonmentFilterFile {
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub stages: Vec<String>,
    #[serde(default)]
    pub value_tiers: Vec<String>,
    #[serde(default)]
    pub customer_types: Vec<String>,
    pub min_value: Option<String>,
    pub discount: Option<bool>,
    pub fence_sitter: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderFilterFile {
    pub financial_statuses: Option<Vec<String>>,
    pub min_total: Option<String>,
    #[serde(default)]
    pub include_test: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerFilterFile {
    #[serde(default)]
    pub min_orders: u64,
    #[serde(default)]
    pub tags_any: Vec<String>,
}

/// Replaces `${NAME}` and `${NAME:-default}` with the environment's value. A variable that is
/// unset (or empty) without a default is an error naming it.
pub fn expand(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "an unclosed ${ in a value".to_string())?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "${{{inner}}} does not name an environment variable"
            ));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(found), _) => out.push_str(&found),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_expand_with_and_without_defaults() {
        assert_eq!(expand("a-${SET}-b", &env).unwrap(), "a-value-b");
        assert_eq!(expand("${UNSET:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${UNSET:-}", &env).unwrap(), "");
        assert_eq!(expand("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn a_missing_variable_or_a_broken_reference_is_an_error() {
        assert!(expand("${UNSET}", &env).unwrap_err().contains("UNSET"));
        assert!(expand("${SET", &env).is_err());
        assert!(expand("${not valid}", &env).is_err());
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../../examples/audiences.toml");
        let file: AudiencesFile = toml::from_str(text).unwrap();
        assert_eq!(file.destinations.len(), 4);
        assert!(file
            .audiences
            .iter()
            .any(|a| a.name == "abandoned-checkouts"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "[destinations.x]\ntype = \"file\"\ncolour = \"red\"\n";
        assert!(toml::from_str::<AudiencesFile>(text).is_err());
    }
}

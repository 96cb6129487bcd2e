//! Audiences service configuration: flags with `AFTERCART_*` environment fallbacks, plus the
//! audiences file (see [`file`]) or the built-in audiences when there is none.

pub mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use aftercart_delivery::{RetryPolicy, SinkConfig, SinkFlags};
use aftercart_kafka::{KafkaArgs, KafkaSettings};
use aftercart_runtime::config::{
    check_names, parse_duration, parse_in_range, parse_positive_duration, ConfigErrors,
};
use aftercart_shopify::money::Amount;

use crate::domain::audience::{AbandonmentFilter, Audience, CustomerFilter, OrderFilter, Source};
use crate::domain::consent::{ConsentMapping, OptInLevel};
use crate::domain::engine::Rules;
use crate::platform::datamanager::{self, Account};
use crate::platform::{google, meta, tiktok, Platform, Secret};
use file::{
    expand, AbandonmentFilterFile, AudienceFile, AudiencesFile, CustomerFilterFile,
    DestinationFile, OrderFilterFile,
};

/// The service's own flags; Kafka, admin and shutdown flags belong to the command running it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Audiences")]
pub struct AudiencesArgs {
    /// The audiences file (TOML; see examples/audiences.toml). Without it: the built-in
    /// audiences (abandoned-checkouts, high-value-abandoners, recent-purchasers) to files.
    #[arg(long, env = "AFTERCART_AUDIENCES_CONFIG")]
    pub audiences_config: Option<PathBuf>,

    /// Consumer group of the engine; each destination's exporter uses `<group>-<destination>`.
    #[arg(
        long,
        env = "AFTERCART_AUDIENCES_GROUP",
        default_value = "aftercart-audiences"
    )]
    pub audiences_group: String,

    /// The abandonment service's output topic (abandoner audiences read it). The variable is
    /// the abandonment service's own, so both services agree on it; the flag is audiences'.
    #[arg(
        long = "audiences-abandonment-topic",
        alias = "abandonments-topic",
        env = "AFTERCART_ABANDONMENT_OUTPUT_TOPIC",
        default_value = "aftercart.abandonments"
    )]
    pub abandonments_topic: String,

    /// Export batches from the engine to the exporters (keyed by shop/audience/destination).
    #[arg(
        long = "audiences-batches-topic",
        alias = "audience-batches-topic",
        env = "AFTERCART_AUDIENCES_BATCHES_TOPIC",
        default_value = "aftercart.audience-batches"
    )]
    pub audience_batches_topic: String,

    /// Internal topic that brings all of one shop's facts to one partition (keyed by shop).
    #[arg(
        long,
        env = "AFTERCART_AUDIENCES_BY_SHOP_TOPIC",
        default_value = "aftercart.audiences-by-shop"
    )]
    pub audiences_by_shop_topic: String,

    /// Compacted changelog topic holding people, consent and memberships.
    #[arg(
        long,
        env = "AFTERCART_AUDIENCES_STATE_TOPIC",
        default_value = "aftercart.audiences-state"
    )]
    pub audiences_state_topic: String,

    /// Unusable input records and batches a destination refused for good (with its answer).
    #[arg(
        long,
        env = "AFTERCART_AUDIENCES_DEAD_LETTER_TOPIC",
        default_value = "aftercart.audiences-dead-letter"
    )]
    pub audiences_dead_letter_topic: String,

    /// Output topic of the answers to `customers/data_request` (shared by the services; one
    /// report per request: the audiences the customer is in, the destinations holding them).
    #[arg(
        long,
        env = "AFTERCART_AUDIENCES_DATA_REQUESTS_TOPIC",
        default_value = "aftercart.data_requests"
    )]
    pub audiences_data_requests_topic: String,

    /// Changes are exported at most this long after they happen, or sooner by size
    /// [default: 30s; 5s under `aftercart dev`].
    #[arg(
        long = "audiences-export-flush-interval",
        alias = "export-flush-interval",
        env = "AFTERCART_AUDIENCES_EXPORT_FLUSH_INTERVAL"
    )]
    pub export_flush_interval: Option<String>,

    /// Most people per export batch (and per request); capped by each platform's limit.
    #[arg(
        long = "audiences-export-batch-size",
        alias = "export-batch-size",
        env = "AFTERCART_AUDIENCES_EXPORT_BATCH_SIZE",
        default_value = "1000"
    )]
    pub export_batch_size: String,

    /// Default directory of `file` destinations.
    #[arg(long, env = "AFTERCART_AUDIENCES_DIR", default_value = "./audiences")]
    pub audiences_dir: String,

    /// Meta Graph API base URL (tests point it at a local server).
    #[arg(long = "audiences-meta-base-url", alias = "meta-base-url", env = "AFTERCART_AUDIENCES_META_BASE_URL", default_value = meta::DEFAULT_BASE_URL)]
    pub meta_base_url: String,

    /// Google API base URL [default: https://datamanager.googleapis.com for `google`,
    /// https://googleads.googleapis.com for `google_ads_legacy`] (tests point it at a local server).
    #[arg(
        long = "audiences-google-base-url",
        alias = "google-base-url",
        env = "AFTERCART_AUDIENCES_GOOGLE_BASE_URL"
    )]
    pub google_base_url: Option<String>,

    /// TikTok Business API base URL.
    #[arg(long = "audiences-tiktok-base-url", alias = "tiktok-base-url", env = "AFTERCART_AUDIENCES_TIKTOK_BASE_URL", default_value = tiktok::DEFAULT_BASE_URL)]
    pub tiktok_base_url: String,

    /// Timeout of one export request.
    #[arg(
        long = "audiences-export-timeout",
        alias = "export-timeout",
        env = "AFTERCART_AUDIENCES_EXPORT_TIMEOUT",
        default_value = "30s"
    )]
    pub export_timeout: String,

    /// First retry backoff ceiling of a failing batch (doubles up to the maximum, full jitter).
    #[arg(
        long = "audiences-export-backoff-initial",
        alias = "export-backoff-initial",
        env = "AFTERCART_AUDIENCES_EXPORT_BACKOFF_INITIAL",
        default_value = "1s"
    )]
    pub export_backoff_initial: String,

    #[arg(
        long = "audiences-export-backoff-max",
        alias = "export-backoff-max",
        env = "AFTERCART_AUDIENCES_EXPORT_BACKOFF_MAX",
        default_value = "5m"
    )]
    pub export_backoff_max: String,

    /// A batch still failing this long after its first try is dead-lettered.
    #[arg(
        long = "audiences-export-max-retry-duration",
        alias = "export-max-retry-duration",
        env = "AFTERCART_AUDIENCES_EXPORT_MAX_RETRY_DURATION",
        default_value = "6h"
    )]
    pub export_max_retry_duration: String,

    /// People with no membership, unseen this long, are forgotten.
    #[arg(
        long = "audiences-person-retention",
        alias = "person-retention",
        env = "AFTERCART_AUDIENCES_PERSON_RETENTION",
        default_value = "90d"
    )]
    pub person_retention: String,

    /// How long a `customers/redact` or `shop/redact` is remembered, so that a later or
    /// in-flight fact cannot bring the person back (at least the longest window any service
    /// keeps state for, and never shorter than AFTERCART_AUDIENCES_PERSON_RETENTION; at most
    /// 10 years).
    #[arg(
        long = "audiences-redaction-retention",
        env = "AFTERCART_AUDIENCES_REDACTION_RETENTION",
        default_value = "400d"
    )]
    pub audiences_redaction_retention: String,

    /// A removal its destination has not confirmed (the exporter's committed offset has not
    /// passed it) this long after it was emitted is emitted again, so that it never ages out of
    /// the batches topic unsent. Shorter than AFTERCART_TOPIC_RETENTION.
    #[arg(
        long = "audiences-removal-reemit-after",
        env = "AFTERCART_AUDIENCES_REMOVAL_REEMIT_AFTER",
        default_value = "1d"
    )]
    pub audiences_removal_reemit_after: String,
}

/// Redaction markers are kept at most this long.
const MAX_REDACTION_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

/// Google's OAuth token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The GCE / GKE metadata server's token endpoint (Workload Identity, application default
/// credentials on Google Cloud).
pub const GOOGLE_METADATA_TOKEN_URL: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

/// A service account's RSA key, parsed once; never printed.
#[derive(Clone)]
pub struct SigningKey(pub std::sync::Arc<ring::signature::RsaKeyPair>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// How a Google destination gets access tokens.
#[derive(Debug, Clone)]
pub enum GoogleAuth {
    /// `target.access_token` is used as is.
    Fixed,
    Refresh {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
    },
    /// A service account key: a JWT signed RS256 exchanged at `token_url`.
    ServiceAccount {
        token_url: String,
        client_email: String,
        key: SigningKey,
    },
    /// The metadata server of the VM or GKE node (Workload Identity).
    Metadata { url: String },
}

/// Where a destination exports.
#[derive(Debug, Clone)]
pub enum Destination {
    Meta(meta::Target),
    /// The Data Manager API; unless `GoogleAuth::Fixed`, `target.access_token` is a
    /// placeholder replaced per request.
    Google(datamanager::Target, GoogleAuth),
    /// The Google Ads API (allowlisted developer tokens only); likewise.
    GoogleAdsLegacy(google::Target, GoogleAuth),
    Tiktok(tiktok::Target),
    File(FileOptions),
    Webhook(SinkConfig),
}

impl Destination {
    pub fn platform(&self) -> Platform {
        match self {
            Destination::Meta(_) => Platform::Meta,
            Destination::Google(..) => Platform::GoogleDataManager,
            Destination::GoogleAdsLegacy(..) => Platform::Google,
            Destination::Tiktok(_) => Platform::Tiktok,
            Destination::File(_) | Destination::Webhook(_) => Platform::Plain,
        }
    }

    /// The destination's type, a bounded label.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Meta(_) => "meta",
            Destination::Google(..) => "google",
            Destination::GoogleAdsLegacy(..) => "google_ads_legacy",
            Destination::Tiktok(_) => "tiktok",
            Destination::File(_) => "file",
            Destination::Webhook(_) => "webhook",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Clone)]
pub struct FileOptions {
    pub dir: PathBuf,
    pub format: FileFormat,
    pub keep_deltas: usize,
    pub delta_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct AudiencesConfig {
    pub kafka: KafkaSettings,
    pub group: String,
    pub abandonments_topic: String,
    pub batches_topic: String,
    pub by_shop_topic: String,
    pub state_topic: String,
    pub dead_letter_topic: String,
    pub data_requests_topic: String,
    pub rules: Rules,
    pub destinations: BTreeMap<String, Destination>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Bounds the final producer flush on shutdown.
    pub shutdown_timeout: Duration,
}

impl AudiencesConfig {
    /// The consumer group of one destination's exporter.
    pub fn exporter_group(&self, destination: &str) -> String {
        format!("{}-{destination}", self.group)
    }
}

/// Defaults that differ under `aftercart dev`.
#[derive(Debug, Clone)]
pub struct AudiencesDefaults {
    pub fallback_brokers: Option<String>,
    pub flush_interval: &'static str,
}

impl AudiencesDefaults {
    pub fn production() -> Self {
        Self {
            fallback_brokers: None,
            flush_interval: "30s",
        }
    }
}

/// The audiences used when no file is given: consented abandoners and purchasers, to files.
pub fn built_in_file(dir: &str) -> AudiencesFile {
    let text = format!(
        r#"
[destinations.files]
type = "file"
dir = {dir:?}

[[audiences]]
name = "abandoned-checkouts"
source = "abandonments"
window = "30d"
destinations = ["files"]
filter = {{ kinds = ["checkout"] }}

[[audiences]]
name = "high-value-abandoners"
source = "abandonments"
window = "7d"
destinations = ["files"]
filter = {{ value_tiers = ["high"] }}

[[audiences]]
name = "recent-purchasers"
source = "orders"
window = "30d"
destinations = ["files"]
"#
    );
    toml::from_str(&text).expect("the built-in audiences parse")
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A secret given inline or as a file (trailing newline ignored); exactly one is required.
fn secret(
    errors: &mut ConfigErrors,
    at: &str,
    inline: &Option<String>,
    path: &Option<String>,
) -> Option<Secret> {
    match (inline, path) {
        (Some(_), Some(_)) => {
            errors.push(format!("{at}: set it or its _file variant, not both"));
            None
        }
        (Some(value), None) => match expand(value, &env_var) {
            Ok(value) if !value.is_empty() => Some(Secret::new(value)),
            Ok(_) => {
                errors.push(format!("{at}: is empty"));
                None
            }
            Err(error) => {
                errors.push(format!("{at}: {error}"));
                None
            }
        },
        (None, Some(path)) => {
            let path = errors.check(at, expand(path, &env_var))?;
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => {
                    Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
                }
                Ok(_) => {
                    errors.push(format!("{at}_file: {path} is empty"));
                    None
                }
                Err(error) => {
                    errors.push(format!("{at}_file: cannot read {path}: {error}"));
                    None
                }
            }
        }
        (None, None) => {
            errors.push(format!("{at}: required (or {at}_file)"));
            None
        }
    }
}

fn value(errors: &mut ConfigErrors, at: &str, text: &str) -> Option<String> {
    match expand(text, &env_var) {
        Ok(value) if !value.trim().is_empty() => Some(value.trim().to_string()),
        Ok(_) => {
            errors.push(format!("{at}: is empty"));
            None
        }
        Err(error) => {
            errors.push(format!("{at}: {error}"));
            None
        }
    }
}

/// How a Google destination reads its consent signals from marketing consent (`None` for
/// other destinations).
fn consent_mapping(
    errors: &mut ConfigErrors,
    at: &str,
    destination: &DestinationFile,
) -> Option<ConsentMapping> {
    let (DestinationFile::Google {
        ad_user_data,
        ad_personalization,
        ..
    }
    | DestinationFile::GoogleAdsLegacy {
        ad_user_data,
        ad_personalization,
        ..
    }) = destination
    else {
        return None;
    };
    let mut mapping = ConsentMapping::default();
    let mut levels = |field: &str, given: &Option<Vec<String>>, into: &mut BTreeSet<OptInLevel>| {
        let Some(given) = given else { return };
        into.clear();
        for text in given {
            match OptInLevel::parse(text) {
                Some(level) => {
                    into.insert(level);
                }
                None => errors.push(format!(
                    "{at}.{field}: {text:?} is not one of {}",
                    OptInLevel::ALL.join(", ")
                )),
            }
        }
    };
    levels("ad_user_data", ad_user_data, &mut mapping.ad_user_data);
    levels(
        "ad_personalization",
        ad_personalization,
        &mut mapping.ad_personalization,
    );
    Some(mapping)
}

/// An id the platform takes as digits (dashes, as Google writes them, allowed): a typo here
/// would otherwise dead-letter every batch.
fn numeric(errors: &mut ConfigErrors, at: &str, id: Option<String>) -> Option<String> {
    let id = id?;
    // The request builders' own check, so that what passes here can be sent.
    if crate::platform::numeric_id(&id, "id").is_err() {
        errors.push(format!("{at}: {id:?} is not a numeric id"));
        return None;
    }
    Some(id)
}

/// A URL that must be `https://host…` (people's hashed contacts and tokens travel to it), or
/// `http://` where AFTERCART_ALLOW_INSECURE_HTTP allows it (the one shared rule). The scheme
/// is checked as the request builders check it (`HTTPS://` parses as a URI, but no request
/// could be built on it).
fn web_url(errors: &mut ConfigErrors, at: &str, url: String) -> Option<String> {
    let parsed = url.parse::<http::Uri>().ok();
    let fine = crate::platform::base_url(&url, "base_url").is_ok()
        && parsed
            .as_ref()
            .is_some_and(|uri| uri.host().is_some_and(|h| !h.is_empty()));
    if !fine {
        errors.push(format!("{at}: {:?} is not an http(s) URL", shown_url(&url)));
        return None;
    }
    if let Err(problem) = aftercart_runtime::outbound::check_outbound_url(&url) {
        errors.push(format!("{at}: {problem}"));
        return None;
    }
    Some(url)
}

/// A refused URL as the error shows it: the typo stays visible, but a `user:password@` and
/// the query string (both may hold credentials) are elided.
fn shown_url(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?…"),
        None => (url, ""),
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}{host}{path}{query}")
}

/// An optional URL setting, checked like a base URL when given.
fn optional_url(errors: &mut ConfigErrors, at: &str, text: &Option<String>) -> Option<String> {
    let url = optional(errors, at, text)?;
    web_url(errors, at, url)
}

fn optional(errors: &mut ConfigErrors, at: &str, text: &Option<String>) -> Option<String> {
    let text = text.as_deref()?;
    errors
        .check(at, expand(text, &env_var))
        .filter(|v| !v.trim().is_empty())
}

/// The OAuth keys shared by both Google destination types.
struct OauthFields<'a> {
    access_token: &'a Option<String>,
    access_token_file: &'a Option<String>,
    refresh_token: &'a Option<String>,
    refresh_token_file: &'a Option<String>,
    client_id: &'a Option<String>,
    client_secret: &'a Option<String>,
    client_secret_file: &'a Option<String>,
    token_url: &'a Option<String>,
}

/// A fixed access token, or a refresh token with its client; the token to start with (a
/// placeholder when refreshed) and how to renew it.
fn google_oauth(
    errors: &mut ConfigErrors,
    field: &dyn Fn(&str) -> String,
    f: OauthFields<'_>,
) -> Option<(Secret, GoogleAuth)> {
    let refreshing = f.refresh_token.is_some() || f.refresh_token_file.is_some();
    let fixed = f.access_token.is_some() || f.access_token_file.is_some();
    match (fixed, refreshing) {
        (true, true) => {
            errors.push(format!(
                "{}: set access_token or refresh_token (with client_id and client_secret), not both",
                field("access_token")
            ));
            None
        }
        (_, false) => secret(
            errors,
            &field("access_token"),
            f.access_token,
            f.access_token_file,
        )
        .map(|token| (token, GoogleAuth::Fixed)),
        (false, true) => {
            let refresh = secret(
                errors,
                &field("refresh_token"),
                f.refresh_token,
                f.refresh_token_file,
            );
            let client_secret = secret(
                errors,
                &field("client_secret"),
                f.client_secret,
                f.client_secret_file,
            );
            let client_id = match f.client_id {
                Some(id) => value(errors, &field("client_id"), id),
                None => {
                    errors.push(format!(
                        "{}: required with refresh_token",
                        field("client_id")
                    ));
                    None
                }
            };
            let token_url = optional_url(errors, &field("token_url"), f.token_url)
                .unwrap_or_else(|| GOOGLE_TOKEN_URL.to_string());
            // Replaced by a fresh token before every request.
            Some((
                Secret::new("refreshed-per-request"),
                GoogleAuth::Refresh {
                    token_url,
                    client_id: client_id?,
                    client_secret: client_secret?,
                    refresh_token: refresh?,
                },
            ))
        }
    }
}

/// A service account JSON key file (`client_email`, `private_key` PEM PKCS#8, `token_uri`).
fn service_account(
    errors: &mut ConfigErrors,
    at: &str,
    path: &str,
    token_url: Option<String>,
) -> Option<GoogleAuth> {
    let path = errors.check(at, expand(path, &env_var))?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            errors.push(format!("{at}: cannot read {path}: {error}"));
            return None;
        }
    };
    let Ok(key) = serde_json::from_str::<serde_json::Value>(&text) else {
        errors.push(format!("{at}: {path} is not a JSON key file"));
        return None;
    };
    let (Some(email), Some(pem)) = (key["client_email"].as_str(), key["private_key"].as_str())
    else {
        errors.push(format!("{at}: {path} has no client_email or private_key"));
        return None;
    };
    let Some(pair) = crate::export::oauth::rsa_key(pem) else {
        errors.push(format!(
            "{at}: the private_key of {path} is not an RSA PKCS#8 PEM key"
        ));
        return None;
    };
    Some(GoogleAuth::ServiceAccount {
        token_url: token_url
            .or_else(|| key["token_uri"].as_str().map(str::to_string))
            .unwrap_or_else(|| GOOGLE_TOKEN_URL.to_string()),
        client_email: email.to_string(),
        key: SigningKey(std::sync::Arc::new(pair)),
    })
}

impl AudiencesArgs {
    /// Validates with the command's Kafka flags and shutdown deadline, every problem at once.
    pub fn validate(
        &self,
        kafka: &KafkaArgs,
        shutdown_timeout: Duration,
        defaults: &AudiencesDefaults,
    ) -> Result<AudiencesConfig, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let kafka = kafka.validate(&mut errors, defaults.fallback_brokers.as_deref());
        let flush = errors.check(
            "AFTERCART_AUDIENCES_EXPORT_FLUSH_INTERVAL",
            parse_positive_duration(
                self.export_flush_interval
                    .as_deref()
                    .unwrap_or(defaults.flush_interval),
            ),
        );
        let batch_rows = errors.check(
            "AFTERCART_AUDIENCES_EXPORT_BATCH_SIZE",
            parse_in_range(&self.export_batch_size, 1, 10_000),
        );
        let timeout = errors.check(
            "AFTERCART_AUDIENCES_EXPORT_TIMEOUT",
            parse_positive_duration(&self.export_timeout),
        );
        let initial = errors.check(
            "AFTERCART_AUDIENCES_EXPORT_BACKOFF_INITIAL",
            parse_positive_duration(&self.export_backoff_initial),
        );
        let max = errors.check(
            "AFTERCART_AUDIENCES_EXPORT_BACKOFF_MAX",
            parse_positive_duration(&self.export_backoff_max),
        );
        let max_duration = errors.check(
            "AFTERCART_AUDIENCES_EXPORT_MAX_RETRY_DURATION",
            parse_duration(&self.export_max_retry_duration),
        );
        let retention = errors.check(
            "AFTERCART_AUDIENCES_PERSON_RETENTION",
            parse_positive_duration(&self.person_retention),
        );
        let redaction_retention = errors.check(
            "AFTERCART_AUDIENCES_REDACTION_RETENTION",
            parse_positive_duration(&self.audiences_redaction_retention).and_then(|d| {
                if d > MAX_REDACTION_RETENTION {
                    Err("at most 3650d: markers must expire".to_string())
                } else {
                    Ok(d)
                }
            }),
        );
        if let (Some(markers), Some(people)) = (redaction_retention, retention) {
            // A marker must outlive what it guards against: a late fact about someone forgotten.
            if markers < people {
                errors.push(format!(
                    "AFTERCART_AUDIENCES_REDACTION_RETENTION: {} is shorter than \
                     AFTERCART_AUDIENCES_PERSON_RETENTION ({}): a late fact could bring a \
                     redacted person back",
                    humantime::format_duration(markers),
                    humantime::format_duration(people)
                ));
            }
        }
        let reemit_after = errors.check(
            "AFTERCART_AUDIENCES_REMOVAL_REEMIT_AFTER",
            parse_positive_duration(&self.audiences_removal_reemit_after),
        );
        if let (Some(reemit), Some(kafka)) = (reemit_after, &kafka) {
            // Emitted again only after the first copy may be gone: too late.
            if reemit >= kafka.retention {
                errors.push(format!(
                    "AFTERCART_AUDIENCES_REMOVAL_REEMIT_AFTER: {} is not shorter than \
                     AFTERCART_TOPIC_RETENTION ({}): an unconfirmed removal could leave the \
                     batches topic before it is emitted again",
                    humantime::format_duration(reemit),
                    humantime::format_duration(kafka.retention)
                ));
            }
        }
        let retry = match (initial, max, max_duration) {
            (Some(initial), Some(max), Some(max_duration)) => Some(RetryPolicy {
                initial,
                max: max.max(initial),
                max_duration,
            }),
            _ => None,
        };
        let (source, file) = match &self.audiences_config {
            Some(path) => {
                let at = format!("AFTERCART_AUDIENCES_CONFIG ({})", path.display());
                let parsed = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read it: {e}"))
                    .and_then(|text| {
                        toml::from_str::<AudiencesFile>(&text).map_err(|e| e.to_string())
                    });
                (at.clone(), errors.check(&at, parsed))
            }
            None => (
                "built-in audiences".to_string(),
                Some(built_in_file(&self.audiences_dir)),
            ),
        };
        let mut destinations = BTreeMap::new();
        let mut google_consent = BTreeMap::new();
        let mut audiences = Vec::new();
        if let (Some(file), Some(timeout), Some(retry)) = (&file, timeout, retry) {
            for (name, destination) in &file.destinations {
                let at = format!("{source}: destinations.{name}");
                if !valid_name(name) {
                    errors.push(format!("{at}: names are letters, digits, - and _"));
                    continue;
                }
                if let Some(mapping) = consent_mapping(&mut errors, &at, destination) {
                    google_consent.insert(name.clone(), mapping);
                }
                if let Some(resolved) =
                    self.destination(&mut errors, &at, destination, timeout, retry)
                {
                    destinations.insert(name.clone(), resolved);
                }
            }
            for audience in &file.audiences {
                let at = format!("{source}: audience {:?}", audience.name);
                if let Some(resolved) = resolve_audience(&mut errors, &at, audience, file) {
                    audiences.push(resolved);
                }
            }
            // A platform destination is one list at the platform: two audiences in it would
            // remove each other's members.
            for (name, destination) in &destinations {
                let users: Vec<&str> = audiences
                    .iter()
                    .filter(|a: &&Audience| a.destinations.contains(name))
                    .map(|a| a.name.as_str())
                    .collect();
                if destination.platform() != Platform::Plain && users.len() > 1 {
                    errors.push(format!(
                        "{source}: destinations.{name} is one {} audience and cannot hold several ({}): give each its own destination",
                        destination.kind(),
                        users.join(", ")
                    ));
                }
            }
            let mut names: Vec<&str> = file.audiences.iter().map(|a| a.name.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) {
                errors.push(format!("{source}: audience names must be unique"));
            }
            if file.audiences.is_empty() {
                errors.push(format!("{source}: defines no audience"));
            }
        }
        check_names(
            &mut errors,
            &[
                ("AFTERCART_AUDIENCES_GROUP", &self.audiences_group),
                (
                    "AFTERCART_ABANDONMENT_OUTPUT_TOPIC",
                    &self.abandonments_topic,
                ),
                (
                    "AFTERCART_AUDIENCES_BATCHES_TOPIC",
                    &self.audience_batches_topic,
                ),
                (
                    "AFTERCART_AUDIENCES_BY_SHOP_TOPIC",
                    &self.audiences_by_shop_topic,
                ),
                (
                    "AFTERCART_AUDIENCES_STATE_TOPIC",
                    &self.audiences_state_topic,
                ),
                (
                    "AFTERCART_AUDIENCES_DEAD_LETTER_TOPIC",
                    &self.audiences_dead_letter_topic,
                ),
                (
                    "AFTERCART_AUDIENCES_DATA_REQUESTS_TOPIC",
                    &self.audiences_data_requests_topic,
                ),
            ],
        );
        // `check` reports every value it returns as None: none is left unreported here.
        let (
            Some(kafka),
            Some(flush),
            Some(batch_rows),
            Some(retention),
            Some(redaction_retention),
            Some(timeout),
            Some(retry),
            Some(reemit_after),
        ) = (
            kafka,
            flush,
            batch_rows,
            retention,
            redaction_retention,
            timeout,
            retry,
            reemit_after,
        )
        else {
            return Err(errors);
        };
        errors.finish(|| AudiencesConfig {
            kafka,
            group: self.audiences_group.trim().to_string(),
            abandonments_topic: self.abandonments_topic.trim().to_string(),
            batches_topic: self.audience_batches_topic.trim().to_string(),
            by_shop_topic: self.audiences_by_shop_topic.trim().to_string(),
            state_topic: self.audiences_state_topic.trim().to_string(),
            dead_letter_topic: self.audiences_dead_letter_topic.trim().to_string(),
            data_requests_topic: self.audiences_data_requests_topic.trim().to_string(),
            rules: Rules {
                audiences,
                destinations: destinations
                    .iter()
                    .map(|(name, d): (&String, &Destination)| (name.clone(), d.platform()))
                    .collect(),
                flush_interval_ms: flush.as_millis() as i64,
                batch_rows: batch_rows as usize,
                person_retention_ms: retention.as_millis() as i64,
                redaction_retention_ms: redaction_retention.as_millis() as i64,
                google_consent,
                removal_reemit_after_ms: reemit_after.as_millis() as i64,
            },
            destinations,
            timeout,
            retry,
            shutdown_timeout,
        })
    }

    fn destination(
        &self,
        errors: &mut ConfigErrors,
        at: &str,
        destination: &DestinationFile,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Option<Destination> {
        let known = errors.problems().len();
        let field = |name: &str| format!("{at}.{name}");
        // Where a platform is reached: the destination's own base URL or the global one, and
        // its API version or the codec's default.
        let api = |errors: &mut ConfigErrors,
                   (own_base, own_version): (&Option<String>, &Option<String>),
                   global: &str,
                   default_version: &str| {
            let base = optional(errors, &field("base_url"), own_base)
                .unwrap_or_else(|| global.trim().trim_end_matches('/').to_string());
            let base = web_url(errors, &field("base_url"), base).unwrap_or_default();
            let version = optional(errors, &field("api_version"), own_version)
                .unwrap_or_else(|| default_version.to_string());
            (base, version)
        };
        let token = |errors: &mut ConfigErrors, inline: &Option<String>, file: &Option<String>| {
            secret(errors, &field("access_token"), inline, file)
        };
        let resolved = match destination {
            DestinationFile::Meta {
                audience_id,
                access_token,
                access_token_file,
                api_version,
                base_url,
            } => {
                let audience_id = value(errors, &field("audience_id"), audience_id);
                let audience_id = numeric(errors, &field("audience_id"), audience_id);
                let token = token(errors, access_token, access_token_file);
                let (base_url, version) = api(
                    errors,
                    (base_url, api_version),
                    &self.meta_base_url,
                    meta::DEFAULT_VERSION,
                );
                Destination::Meta(meta::Target {
                    base_url,
                    version,
                    audience_id: audience_id?,
                    access_token: token?,
                })
            }
            DestinationFile::Google {
                operating_account_id,
                operating_account_type,
                login_account_id,
                login_account_type,
                user_list_id,
                access_token,
                access_token_file,
                refresh_token,
                refresh_token_file,
                client_id,
                client_secret,
                client_secret_file,
                service_account_key_file,
                application_default,
                token_url,
                metadata_url,
                base_url,
                ..
            } => {
                let account_id =
                    value(errors, &field("operating_account_id"), operating_account_id);
                let account_id = numeric(errors, &field("operating_account_id"), account_id);
                let account_type = optional(
                    errors,
                    &field("operating_account_type"),
                    operating_account_type,
                )
                .unwrap_or_else(|| "GOOGLE_ADS".to_string());
                let login_id = optional(errors, &field("login_account_id"), login_account_id);
                let login_id = match login_id {
                    Some(id) => numeric(errors, &field("login_account_id"), Some(id)),
                    None => None,
                };
                let login_type = optional(errors, &field("login_account_type"), login_account_type)
                    .unwrap_or_else(|| "GOOGLE_ADS".to_string());
                let list = value(errors, &field("user_list_id"), user_list_id);
                let list = numeric(errors, &field("user_list_id"), list);
                let sources = [
                    access_token.is_some() || access_token_file.is_some(),
                    refresh_token.is_some() || refresh_token_file.is_some(),
                    service_account_key_file.is_some(),
                    application_default.unwrap_or(false),
                ];
                let auth = match sources.iter().filter(|s| **s).count() {
                    1 if sources[2] => {
                        let token_url = optional_url(errors, &field("token_url"), token_url);
                        service_account(
                            errors,
                            &field("service_account_key_file"),
                            service_account_key_file.as_deref().unwrap_or_default(),
                            token_url,
                        )
                    }
                    .map(|auth| (Secret::new("fetched-per-request"), auth)),
                    1 if sources[3] => Some((
                        Secret::new("fetched-per-request"),
                        GoogleAuth::Metadata {
                            url: optional_url(errors, &field("metadata_url"), metadata_url)
                                .unwrap_or_else(|| GOOGLE_METADATA_TOKEN_URL.to_string()),
                        },
                    )),
                    1 => google_oauth(
                        errors,
                        &field,
                        OauthFields {
                            access_token,
                            access_token_file,
                            refresh_token,
                            refresh_token_file,
                            client_id,
                            client_secret,
                            client_secret_file,
                            token_url,
                        },
                    ),
                    _ => {
                        errors.push(format!(
                            "{at}: set exactly one of access_token, refresh_token (with client_id and client_secret), service_account_key_file or application_default = true"
                        ));
                        None
                    }
                };
                let base_url =
                    optional(errors, &field("base_url"), base_url).unwrap_or_else(|| {
                        self.google_base_url
                            .as_deref()
                            .unwrap_or(datamanager::DEFAULT_BASE_URL)
                            .trim()
                            .trim_end_matches('/')
                            .to_string()
                    });
                let base_url = web_url(errors, &field("base_url"), base_url);
                let (token, auth) = auth?;
                Destination::Google(
                    datamanager::Target {
                        base_url: base_url?,
                        operating_account: Account {
                            account_type: account_type.to_ascii_uppercase(),
                            account_id: account_id?,
                        },
                        login_account: login_id.map(|account_id| Account {
                            account_type: login_type.to_ascii_uppercase(),
                            account_id,
                        }),
                        product_destination_id: list?,
                        access_token: token,
                    },
                    auth,
                )
            }
            DestinationFile::GoogleAdsLegacy {
                customer_id,
                user_list_id,
                login_customer_id,
                developer_token,
                developer_token_file,
                access_token,
                access_token_file,
                refresh_token,
                refresh_token_file,
                client_id,
                client_secret,
                client_secret_file,
                token_url,
                api_version,
                base_url,
                ..
            } => {
                let customer_id = value(errors, &field("customer_id"), customer_id);
                let customer_id = numeric(errors, &field("customer_id"), customer_id);
                let list = value(errors, &field("user_list_id"), user_list_id);
                let list = numeric(errors, &field("user_list_id"), list);
                let login = optional(errors, &field("login_customer_id"), login_customer_id);
                let login = match login {
                    Some(id) => numeric(errors, &field("login_customer_id"), Some(id)),
                    None => None,
                };
                let developer = secret(
                    errors,
                    &field("developer_token"),
                    developer_token,
                    developer_token_file,
                );
                let (token, auth) = google_oauth(
                    errors,
                    &field,
                    OauthFields {
                        access_token,
                        access_token_file,
                        refresh_token,
                        refresh_token_file,
                        client_id,
                        client_secret,
                        client_secret_file,
                        token_url,
                    },
                )
                .unzip();
                let (base_url, version) = api(
                    errors,
                    (base_url, api_version),
                    self.google_base_url
                        .as_deref()
                        .unwrap_or(google::DEFAULT_BASE_URL),
                    google::DEFAULT_VERSION,
                );
                Destination::GoogleAdsLegacy(
                    google::Target {
                        base_url,
                        version,
                        customer_id: customer_id?,
                        user_list_id: list?,
                        login_customer_id: login,
                        developer_token: developer?,
                        access_token: token?,
                    },
                    auth?,
                )
            }
            DestinationFile::Tiktok {
                advertiser_id,
                audience_id,
                access_token,
                access_token_file,
                api_version,
                base_url,
            } => {
                let advertiser = value(errors, &field("advertiser_id"), advertiser_id);
                let advertiser = numeric(errors, &field("advertiser_id"), advertiser);
                let audience_id = value(errors, &field("audience_id"), audience_id);
                let audience_id = numeric(errors, &field("audience_id"), audience_id);
                let token = token(errors, access_token, access_token_file);
                let (base_url, version) = api(
                    errors,
                    (base_url, api_version),
                    &self.tiktok_base_url,
                    tiktok::DEFAULT_VERSION,
                );
                Destination::Tiktok(tiktok::Target {
                    base_url,
                    version,
                    advertiser_id: advertiser?,
                    audience_id: audience_id?,
                    access_token: token?,
                })
            }
            DestinationFile::File {
                dir,
                format,
                keep_deltas,
                delta_retention,
            } => {
                let retention = errors.check(
                    &field("delta_retention"),
                    parse_duration(delta_retention.as_deref().unwrap_or("7d")),
                );
                let dir = optional(errors, &field("dir"), dir)
                    .unwrap_or_else(|| self.audiences_dir.trim().to_string());
                let format = match format.as_deref().unwrap_or("csv") {
                    "csv" => Some(FileFormat::Csv),
                    "jsonl" => Some(FileFormat::Jsonl),
                    other => {
                        errors.push(format!(
                            "{}: {other:?} is not csv or jsonl",
                            field("format")
                        ));
                        None
                    }
                };
                Destination::File(FileOptions {
                    dir: PathBuf::from(dir),
                    format: format?,
                    keep_deltas: keep_deltas.unwrap_or(1000).max(1),
                    delta_retention: retention?,
                })
            }
            DestinationFile::Webhook {
                url,
                secret: inline,
                secret_file,
            } => {
                let url = value(errors, &field("url"), url);
                let secret = match (inline, secret_file) {
                    (None, None) => None,
                    _ => secret(errors, &field("secret"), inline, secret_file),
                };
                let flags = SinkFlags {
                    url,
                    secret,
                    secret_file: None,
                    timeout: humantime::format_duration(timeout).to_string(),
                    backoff_initial: humantime::format_duration(retry.initial).to_string(),
                    backoff_max: humantime::format_duration(retry.max).to_string(),
                    max_retry_duration: humantime::format_duration(retry.max_duration).to_string(),
                };
                Destination::Webhook(flags.validate(at, errors)?)
            }
        };
        (errors.problems().len() == known).then_some(resolved)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn amount(errors: &mut ConfigErrors, at: &str, text: &Option<String>) -> Option<Amount> {
    let text = text.as_deref()?;
    errors.check(at, Amount::parse_setting(text))
}

fn resolve_audience(
    errors: &mut ConfigErrors,
    at: &str,
    audience: &AudienceFile,
    file: &AudiencesFile,
) -> Option<Audience> {
    let known = errors.problems().len();
    if !valid_name(&audience.name) {
        errors.push(format!(
            "{at}: names are letters, digits, - and _ (up to 64)"
        ));
    }
    let window_ms = audience.window.as_deref().and_then(|w| {
        errors
            .check(&format!("{at}: window"), parse_duration(w))
            .map(|d| d.as_millis() as i64)
    });
    if audience.destinations.is_empty() {
        errors.push(format!("{at}: names no destination"));
    }
    for destination in &audience.destinations {
        if !file.destinations.contains_key(destination) {
            errors.push(format!("{at}: destination {destination:?} is not defined"));
        }
    }
    let filter = toml::Value::Table(audience.filter.clone());
    let source = match audience.source.as_str() {
        "abandonments" => errors
            .check(
                &format!("{at}: filter"),
                filter
                    .try_into::<AbandonmentFilterFile>()
                    .map_err(|e| e.to_string()),
            )
            .map(|f| {
                Source::Abandonments(AbandonmentFilter {
                    kinds: f.kinds,
                    stages: f.stages,
                    value_tiers: f.value_tiers,
                    customer_types: f.customer_types,
                    min_value: amount(errors, &format!("{at}: filter.min_value"), &f.min_value),
                    discount: f.discount,
                    fence_sitter: f.fence_sitter,
                })
            }),
        "orders" => errors
            .check(
                &format!("{at}: filter"),
                filter
                    .try_into::<OrderFilterFile>()
                    .map_err(|e| e.to_string()),
            )
            .map(|f| {
                Source::Orders(OrderFilter {
                    financial_statuses: f
                        .financial_statuses
                        .unwrap_or_else(|| OrderFilter::default().financial_statuses),
                    min_total: amount(errors, &format!("{at}: filter.min_total"), &f.min_total),
                    include_test: f.include_test,
                })
            }),
        "customers" => errors
            .check(
                &format!("{at}: filter"),
                filter
                    .try_into::<CustomerFilterFile>()
                    .map_err(|e| e.to_string()),
            )
            .map(|f| {
                Source::Customers(CustomerFilter {
                    min_orders: f.min_orders,
                    tags_any: f.tags_any,
                })
            }),
        other => {
            errors.push(format!(
                "{at}: source {other:?} is not abandonments, orders or customers"
            ));
            None
        }
    };
    if errors.problems().len() > known {
        return None;
    }
    Some(Audience {
        name: audience.name.clone(),
        source: source?,
        window_ms,
        leave_on_purchase: audience.leave_on_purchase.unwrap_or(true),
        destinations: audience.destinations.clone(),
        shops: audience
            .shops
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect(),
    })
}

#[cfg(test)]
mod tests;

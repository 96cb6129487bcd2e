//! Flags of the Shopify Admin API client (`AFTERCART_SHOPIFY_*`), shared by every service that
//! acts in shops; off unless a tokens file is given.

use std::path::PathBuf;
use std::time::Duration;

use aftercart_runtime::config::{parse_duration, ConfigErrors};

/// A current stable Admin API version (quarterly `YYYY-MM`, each supported about a year).
pub const DEFAULT_API_VERSION: &str = "2026-10";
pub const DEFAULT_ADMIN_URL: &str = "https://{shop}/admin/api/{version}/graphql.json";

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Shopify Admin API")]
pub struct AdminArgs {
    /// File of per-shop offline access tokens, `shop.myshopify.com=token` a line (a mounted
    /// Secret; read again when it changes). Without it nothing is created in shops.
    #[arg(long, env = "AFTERCART_SHOPIFY_ACCESS_TOKENS_FILE")]
    pub shopify_access_tokens_file: Option<PathBuf>,

    /// Admin API version.
    #[arg(long, env = "AFTERCART_SHOPIFY_API_VERSION", default_value = DEFAULT_API_VERSION)]
    pub shopify_api_version: String,

    /// Admin GraphQL URL template; `{shop}` and `{version}` are replaced.
    #[arg(long, env = "AFTERCART_SHOPIFY_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub shopify_admin_url: String,

    /// Bound of one Admin API request.
    #[arg(long, env = "AFTERCART_SHOPIFY_TIMEOUT", default_value = "10s")]
    pub shopify_timeout: String,

    /// How long one action is retried through 5xx, timeouts and connection errors before it
    /// is dead-lettered (throttling waits do not count).
    #[arg(
        long,
        env = "AFTERCART_SHOPIFY_MAX_RETRY_DURATION",
        default_value = "15m"
    )]
    pub shopify_max_retry_duration: String,
}

/// The validated client settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub tokens_file: PathBuf,
    pub api_version: String,
    pub url_template: String,
    pub timeout: Duration,
    pub max_retry_duration: Duration,
}

impl AdminArgs {
    /// `None` when no tokens file is set (the client is off); every problem goes to `errors`.
    pub fn validate(&self, errors: &mut ConfigErrors) -> Option<AdminConfig> {
        let timeout = errors.check(
            "AFTERCART_SHOPIFY_TIMEOUT",
            parse_duration(&self.shopify_timeout),
        );
        let budget = errors.check(
            "AFTERCART_SHOPIFY_MAX_RETRY_DURATION",
            parse_duration(&self.shopify_max_retry_duration),
        );
        let version = self.shopify_api_version.trim();
        let well_formed = version == "unstable"
            || (version.len() == 7
                && version.as_bytes()[4] == b'-'
                && version
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| i == 4 || b.is_ascii_digit()));
        if !well_formed {
            errors.push(format!(
                "AFTERCART_SHOPIFY_API_VERSION: {version:?} is not YYYY-MM or unstable"
            ));
        }
        let url = self.shopify_admin_url.trim();
        if !url.contains("{shop}") || !(url.starts_with("https://") || url.starts_with("http://")) {
            errors.push("AFTERCART_SHOPIFY_ADMIN_URL: an http(s) URL template containing {shop}");
        } else if let Err(problem) = aftercart_runtime::outbound::check_outbound_url(url) {
            // It receives the shops' access tokens.
            errors.push(format!("AFTERCART_SHOPIFY_ADMIN_URL: {problem}"));
        }
        let path = self.shopify_access_tokens_file.clone()?;
        if let Err(error) = std::fs::metadata(&path) {
            errors.push(format!(
                "AFTERCART_SHOPIFY_ACCESS_TOKENS_FILE: cannot read {}: {error}",
                path.display()
            ));
        }
        Some(AdminConfig {
            tokens_file: path,
            api_version: version.to_string(),
            url_template: url.to_string(),
            timeout: timeout.unwrap_or(Duration::from_secs(10)),
            max_retry_duration: budget.unwrap_or(Duration::from_secs(900)),
        })
    }
}

impl AdminConfig {
    /// How long one failing shop may hold a batch: one retry budget, the throttling a call may
    /// wait besides it, and its last request.
    pub fn batch_budget(&self) -> Duration {
        self.max_retry_duration + crate::client::THROTTLE_ALLOWANCE + self.timeout
    }

    /// The GraphQL URL of `shop`.
    pub fn url(&self, shop: &str) -> String {
        self.url_template
            .replace("{shop}", shop)
            .replace("{version}", &self.api_version)
    }
}

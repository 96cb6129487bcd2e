//! Delivery settings: the endpoint and its signing secret, timeouts and retry bounds (for the
//! HTTP sink), the topics forwarded and where failures go (for the forwarder). The embedding
//! service names the flags; these types validate the text it read, reporting every problem.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use aftercart_runtime::config::{
    parse_duration, parse_positive_duration, parse_topic_name, secret_or_file, ConfigErrors,
};
pub use aftercart_shopify::Secret;
use http::uri::Scheme;
use http::Uri;

use crate::retry::RetryPolicy;

/// The shipped defaults, in one place (usable as clap `default_value`s).
pub mod defaults {
    /// Per-request timeout: connecting, sending, and reading the answer's first KiB.
    pub const TIMEOUT: &str = "10s";
    pub const BACKOFF_INITIAL: &str = "1s";
    pub const BACKOFF_MAX: &str = "1m";
    /// How long one record is retried before it is dead-lettered.
    pub const MAX_RETRY_DURATION: &str = "30m";
}

/// The longest retry budget accepted: the consumer is not polled while a record is retried, so
/// its `max.poll.interval.ms` (at most 24 h in librdkafka) is raised above the budget.
const MAX_RETRY_BUDGET: Duration = Duration::from_secs(12 * 3600);

/// The receiving endpoint. `Debug` and `Display` leave the query string out: it may hold a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(Uri);

impl Endpoint {
    /// An absolute `http://` or `https://` URL with a host and no `user:password@`.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let uri: Uri = text
            .trim()
            .parse()
            .map_err(|_| "is not a URL like https://example.com/hooks".to_string())?;
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => {}
            _ => return Err("must start with http:// or https://".to_string()),
        }
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            // The message leaves the URL out: it holds a password.
            return Err("must not hold user:password@ (use the signing secret)".to_string());
        }
        if authority.host().is_empty() {
            return Err("has no host".to_string());
        }
        Ok(Endpoint(uri))
    }

    pub fn uri(&self) -> &Uri {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.scheme() == Some(&Scheme::HTTPS)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.0.scheme_str().unwrap_or("http");
        let authority = self.0.authority().map_or("", |a| a.as_str());
        write!(f, "{scheme}://{authority}{}", self.0.path())?;
        if self.0.query().is_some() {
            f.write_str("?…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// A validated HTTP sink: where to POST, how to sign, how long to wait and retry.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub endpoint: Endpoint,
    /// Signs every body into `X-Aftercart-Hmac-Sha256`; unsigned when `None`.
    pub secret: Option<Secret>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// A validated forwarder: the sink, the topics read, and where failures go.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub sink: SinkConfig,
    pub topics: Vec<String>,
    /// Consumer group; every instance of one deployment shares it.
    pub group: String,
    pub dead_letter_topic: String,
    /// Bounds the final commit and the closing of the Kafka clients on shutdown.
    pub shutdown_timeout: Duration,
}

/// Sink settings as text, as the embedding service's flags or environment give them.
#[derive(Debug, Clone)]
pub struct SinkFlags {
    pub url: Option<String>,
    pub secret: Option<Secret>,
    /// A file holding the secret (a trailing newline is ignored), instead of `secret`.
    pub secret_file: Option<PathBuf>,
    pub timeout: String,
    pub backoff_initial: String,
    pub backoff_max: String,
    pub max_retry_duration: String,
}

impl Default for SinkFlags {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            secret_file: None,
            timeout: defaults::TIMEOUT.to_string(),
            backoff_initial: defaults::BACKOFF_INITIAL.to_string(),
            backoff_max: defaults::BACKOFF_MAX.to_string(),
            max_retry_duration: defaults::MAX_RETRY_DURATION.to_string(),
        }
    }
}

/// Forwarder settings as text. `topics` is comma-separated.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFlags {
    pub sink: SinkFlags,
    pub topics: String,
    pub group: String,
    pub dead_letter_topic: String,
}

impl SinkFlags {
    /// Validates into a sink config, recording every problem in `errors` under the names
    /// `<env_prefix>_URL`, `_SECRET`, `_SECRET_FILE`, `_TIMEOUT`, `_BACKOFF_INITIAL`,
    /// `_BACKOFF_MAX` and `_MAX_RETRY_DURATION`. Secret values never appear in the messages.
    pub fn validate(&self, env_prefix: &str, errors: &mut ConfigErrors) -> Option<SinkConfig> {
        let name = |suffix: &str| format!("{env_prefix}_{suffix}");
        let known_problems = errors.problems().len();
        let endpoint = match self.url.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push(format!("{}: required (the receiver's URL)", name("URL")));
                None
            }
            // The receiver gets personal data (and the signature): https unless allowed.
            Some(url) => errors.check(
                &name("URL"),
                Endpoint::parse(url).and_then(|endpoint| {
                    aftercart_runtime::outbound::check_outbound_url(url).map(|()| endpoint)
                }),
            ),
        };
        // `None` when invalid; `Some(None)` when deliveries go unsigned.
        let secret: Option<Option<Secret>> = secret_or_file(
            errors,
            &name("SECRET"),
            self.secret.as_ref().map(Secret::expose),
            self.secret_file.as_deref(),
        )
        .map(|secret| secret.map(Secret::new));
        let timeout = errors.check(&name("TIMEOUT"), parse_positive_duration(&self.timeout));
        let initial = errors.check(
            &name("BACKOFF_INITIAL"),
            parse_positive_duration(&self.backoff_initial),
        );
        let max = errors.check(
            &name("BACKOFF_MAX"),
            parse_positive_duration(&self.backoff_max),
        );
        if let (Some(initial), Some(max)) = (initial, max) {
            if max < initial {
                let (a, b) = (name("BACKOFF_MAX"), name("BACKOFF_INITIAL"));
                errors.push(format!("{a}: must be at least {b}"));
            }
        }
        let max_duration = errors.check(
            &name("MAX_RETRY_DURATION"),
            parse_duration(&self.max_retry_duration).and_then(|d| {
                if d > MAX_RETRY_BUDGET {
                    Err("must be at most 12h".to_string())
                } else {
                    Ok(d)
                }
            }),
        );
        if errors.problems().len() > known_problems {
            return None;
        }
        Some(SinkConfig {
            endpoint: endpoint?,
            secret: secret?,
            timeout: timeout?,
            retry: RetryPolicy {
                initial: initial?,
                max: max?.max(initial?),
                max_duration: max_duration?,
            },
        })
    }
}

impl DeliveryFlags {
    /// Validates the sink (see [`SinkFlags::validate`]) and `<env_prefix>_TOPICS`, `_GROUP`
    /// and `_DEAD_LETTER_TOPIC`, recording every problem in `errors`.
    pub fn validate(&self, env_prefix: &str, errors: &mut ConfigErrors) -> Option<DeliveryConfig> {
        let name = |suffix: &str| format!("{env_prefix}_{suffix}");
        let known_problems = errors.problems().len();
        let sink = self.sink.validate(env_prefix, errors);
        let topics: Vec<String> = self
            .topics
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if topics.is_empty() {
            errors.push(format!("{}: name at least one topic", name("TOPICS")));
        }
        for topic in &topics {
            errors.check(&name("TOPICS"), parse_topic_name(topic));
        }
        let group = self.group.trim().to_string();
        if group.is_empty() {
            errors.push(format!("{}: required", name("GROUP")));
        }
        let dead_letter_topic = self.dead_letter_topic.trim().to_string();
        errors.check(
            &name("DEAD_LETTER_TOPIC"),
            parse_topic_name(&dead_letter_topic),
        );
        if topics.contains(&dead_letter_topic) {
            errors.push(format!(
                "{}: must not be one of the topics forwarded",
                name("DEAD_LETTER_TOPIC")
            ));
        }
        if errors.problems().len() > known_problems {
            return None;
        }
        Some(DeliveryConfig {
            sink: sink?,
            topics,
            group,
            dead_letter_topic,
            shutdown_timeout: Duration::from_secs(10),
        })
    }
}

#[cfg(test)]
mod tests;

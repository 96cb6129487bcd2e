//! Ingress configuration: flags with `AFTERCART_*` environment fallbacks, validated all at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aftercart_kafka::{KafkaArgs, KafkaSettings};
use aftercart_runtime::config::{
    parse_byte_size, parse_duration, parse_in_range, parse_positive_duration, parse_socket_addr,
    parse_switch, ConfigErrors,
};
use aftercart_shopify::{Secret, Verifier};

/// Shopify gives up on a delivery after 5 s; the ingress must answer well before.
const SHOPIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `aftercart ingress` (and of `aftercart dev`, which runs the same ingress).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Ingress")]
pub struct IngressArgs {
    /// Shopify signing secrets, comma-separated: the current one first, then those still
    /// accepted during a rotation.
    #[arg(
        long = "shopify-secrets",
        env = "AFTERCART_SHOPIFY_SECRETS",
        hide_env_values = true
    )]
    pub secrets: Option<String>,

    /// File with the Shopify signing secrets, one per line (current first), instead of
    /// AFTERCART_SHOPIFY_SECRETS. Blank lines and lines starting with # are ignored.
    #[arg(long = "shopify-secrets-file", env = "AFTERCART_SHOPIFY_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,

    /// File with per-shop secrets for store-created webhooks: one `shop-domain=secret[,secret]`
    /// per line. These are tried before the global secrets for that shop.
    #[arg(
        long = "shopify-shop-secrets-file",
        env = "AFTERCART_SHOPIFY_SHOP_SECRETS_FILE"
    )]
    pub shop_secrets_file: Option<PathBuf>,

    /// Webhook listen address [default: 0.0.0.0:8080; 127.0.0.1:8080 under `aftercart dev`].
    #[arg(
        long = "ingress-listen",
        alias = "listen",
        env = "AFTERCART_INGRESS_LISTEN"
    )]
    pub listen: Option<String>,

    /// Admin listen address for /livez, /readyz and /metrics
    /// [default: 0.0.0.0:9090; 127.0.0.1:9090 under `aftercart dev`].
    #[arg(long, env = "AFTERCART_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Largest accepted webhook body (bytes, or with a unit: 4MiB); larger bodies get 413.
    #[arg(
        long = "ingress-max-body-bytes",
        alias = "max-body-bytes",
        env = "AFTERCART_INGRESS_MAX_BODY_BYTES",
        default_value = "4MiB"
    )]
    pub max_body_bytes: String,

    /// Time from request arrival to a safe event; past it the ingress answers 503 with
    /// Retry-After. Must stay below Shopify's 5 s timeout.
    #[arg(
        long = "ingress-publish-deadline",
        alias = "publish-deadline",
        env = "AFTERCART_INGRESS_PUBLISH_DEADLINE",
        default_value = "3s"
    )]
    pub publish_deadline: String,

    /// How long a client may take to send the body; slower bodies get 408.
    #[arg(
        long = "ingress-body-read-timeout",
        alias = "body-read-timeout",
        env = "AFTERCART_INGRESS_BODY_READ_TIMEOUT",
        default_value = "5s"
    )]
    pub body_read_timeout: String,

    /// How long a client may take to send the request headers (slow clients are cut off).
    #[arg(
        long = "ingress-header-read-timeout",
        alias = "header-read-timeout",
        env = "AFTERCART_INGRESS_HEADER_READ_TIMEOUT",
        default_value = "10s"
    )]
    pub header_read_timeout: String,

    /// Most concurrent connections; beyond it new connections wait in the kernel's listen queue
    /// (AFTERCART_INGRESS_LISTEN_BACKLOG).
    /// Each may hold an unfinished head (AFTERCART_INGRESS_MAX_HEADER_BYTES) before anything is
    /// authenticated: 4000 heads of 16KiB took ~125 MiB, 10000 of 64KiB 866 MiB.
    #[arg(
        long = "ingress-max-connections",
        alias = "max-connections",
        env = "AFTERCART_INGRESS_MAX_CONNECTIONS",
        default_value = "4000"
    )]
    pub max_connections: String,

    /// Connections the kernel queues beyond AFTERCART_INGRESS_MAX_CONNECTIONS until the ingress
    /// takes them. One the full queue cannot take loses its handshake, which a Linux client retries
    /// 1s, 3s, 7s after its first attempt. Capped by the kernel's net.core.somaxconn (4096 since
    /// Linux 5.4; the ingress warns at start when it is lower).
    #[arg(
        long = "ingress-listen-backlog",
        env = "AFTERCART_INGRESS_LISTEN_BACKLOG",
        default_value = "1024"
    )]
    pub listen_backlog: String,

    /// Largest request head (request line and headers); larger ones get 431 (Shopify's are
    /// under 2KiB). HTTP/1 buffers up to about twice this per connection while the head is
    /// unfinished; HTTP/2 caps the header list at it.
    #[arg(
        long = "ingress-max-header-bytes",
        alias = "max-header-bytes",
        env = "AFTERCART_INGRESS_MAX_HEADER_BYTES",
        default_value = "16KiB"
    )]
    pub max_header_bytes: String,

    /// On shutdown, how long to keep accepting after /readyz turns 503, so load balancers stop
    /// routing here first (set about 5s on Kubernetes).
    #[arg(
        long = "ingress-drain-delay",
        alias = "drain-delay",
        env = "AFTERCART_INGRESS_DRAIN_DELAY",
        default_value = "0s"
    )]
    pub drain_delay: String,

    /// How long a webhook id is remembered for deduplication.
    #[arg(
        long = "ingress-dedupe-window",
        alias = "dedupe-window",
        env = "AFTERCART_INGRESS_DEDUPE_WINDOW",
        default_value = "24h"
    )]
    pub dedupe_window: String,

    /// How many webhook ids are remembered at most (oldest forgotten first).
    #[arg(
        long = "ingress-dedupe-capacity",
        alias = "dedupe-capacity",
        env = "AFTERCART_INGRESS_DEDUPE_CAPACITY",
        default_value = "1000000"
    )]
    pub dedupe_capacity: String,

    /// Deadline for a graceful shutdown: finishing requests, draining the spool and flushing
    /// the producer.
    #[arg(long, env = "AFTERCART_SHUTDOWN_TIMEOUT", default_value = "15s")]
    pub shutdown_timeout: String,

    /// Directory of the durable spool that holds webhooks Kafka did not acknowledge in time
    /// (one ingress per directory; `off` disables it, and a slow Kafka then means 503s)
    /// [default: /var/lib/aftercart/spool; .aftercart/spool under `aftercart dev`].
    #[arg(
        long = "ingress-spool-dir",
        alias = "spool-dir",
        env = "AFTERCART_INGRESS_SPOOL_DIR"
    )]
    pub spool_dir: Option<String>,

    /// Most bytes of events waiting in the spool; beyond it webhooks that need the spool get 503.
    #[arg(
        long = "ingress-spool-max-bytes",
        alias = "spool-max-bytes",
        env = "AFTERCART_INGRESS_SPOOL_MAX_BYTES",
        default_value = "1GiB"
    )]
    pub spool_max_bytes: String,

    /// How long a request waits for Kafka's acknowledgement before its event is spooled
    /// instead (then answered 200 once fsynced). Must be below AFTERCART_INGRESS_PUBLISH_DEADLINE.
    #[arg(
        long = "ingress-spool-after",
        alias = "spool-after",
        env = "AFTERCART_INGRESS_SPOOL_AFTER",
        default_value = "1s"
    )]
    pub spool_after: String,

    #[command(flatten)]
    pub edge: EdgeArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Limits against hostile clients: HTTP/2 (off unless asked for) and the memory bodies may
/// take before their signature is known. See docs/services/ingress.md.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Ingress connection limits")]
pub struct EdgeArgs {
    /// Also serve HTTP/2 (h2c, prior knowledge) on the webhook port. Off by default: Shopify
    /// delivers over HTTP/1.1, and an HTTP/2 preface is then answered 400 and closed.
    #[arg(long, env = "AFTERCART_INGRESS_HTTP2", default_value = "false")]
    pub ingress_http2: String,

    /// HTTP/2 only: a connection with no request in progress for this long is closed. (The
    /// first request must arrive within AFTERCART_INGRESS_HEADER_READ_TIMEOUT of the connection.)
    #[arg(
        long,
        env = "AFTERCART_INGRESS_HTTP2_IDLE_TIMEOUT",
        default_value = "30s"
    )]
    pub ingress_http2_idle_timeout: String,

    /// HTTP/2 only: how often an HTTP/2 connection is PINGed; one without an answer within
    /// the same time is closed.
    #[arg(
        long,
        env = "AFTERCART_INGRESS_HTTP2_KEEP_ALIVE",
        default_value = "10s"
    )]
    pub ingress_http2_keep_alive: String,

    /// HTTP/2 only: most requests in progress at once on one HTTP/2 connection.
    #[arg(
        long,
        env = "AFTERCART_INGRESS_HTTP2_MAX_STREAMS",
        default_value = "32"
    )]
    pub ingress_http2_max_streams: String,

    /// Most bytes of request bodies held at once, over all requests, before their signature is
    /// checked; beyond it requests get 503 with Retry-After. A quarter is kept for bodies of at
    /// most 64KiB, so large slow bodies cannot starve ordinary webhooks. Size it well under the
    /// memory limit (k8s: 128MiB of 512Mi).
    #[arg(
        long,
        env = "AFTERCART_INGRESS_BODY_BUDGET_BYTES",
        default_value = "128MiB"
    )]
    pub ingress_body_budget_bytes: String,
}

/// HTTP/2 settings, when it is on.
#[derive(Debug, Clone)]
pub struct Http2Config {
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    pub max_streams: u32,
}

/// The validated [`EdgeArgs`].
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// `None`: HTTP/2 is off (the default).
    pub http2: Option<Http2Config>,
    pub body_budget_bytes: usize,
}

impl EdgeArgs {
    fn validate(&self, errors: &mut ConfigErrors, max_body_bytes: Option<usize>) -> EdgeConfig {
        let enabled = errors.check("AFTERCART_INGRESS_HTTP2", parse_switch(&self.ingress_http2));
        let idle_timeout = errors.check(
            "AFTERCART_INGRESS_HTTP2_IDLE_TIMEOUT",
            parse_positive_duration(&self.ingress_http2_idle_timeout),
        );
        let keep_alive = errors.check(
            "AFTERCART_INGRESS_HTTP2_KEEP_ALIVE",
            parse_positive_duration(&self.ingress_http2_keep_alive),
        );
        let max_streams = errors.check(
            "AFTERCART_INGRESS_HTTP2_MAX_STREAMS",
            parse_in_range(&self.ingress_http2_max_streams, 1, 1000),
        );
        let body_budget_bytes = errors.check(
            "AFTERCART_INGRESS_BODY_BUDGET_BYTES",
            parse_byte_size(&self.ingress_body_budget_bytes).and_then(|budget| {
                let budget =
                    usize::try_from(budget).map_err(|_| format!("{budget} is too large"))?;
                match max_body_bytes {
                    // Large bodies may take three quarters of the budget: one must fit.
                    Some(body) if budget / 4 * 3 < body => Err(format!(
                        "{budget} bytes cannot hold one largest body in the three quarters \
                         open to large bodies (AFTERCART_INGRESS_MAX_BODY_BYTES {body}); give at least \
                         {} bytes",
                        body.div_ceil(3) * 4
                    )),
                    _ => Ok(budget),
                }
            }),
        );
        let http2 = match (enabled, idle_timeout, keep_alive, max_streams) {
            (Some(true), Some(idle_timeout), Some(keep_alive), Some(max_streams)) => {
                Some(Http2Config {
                    idle_timeout,
                    keep_alive,
                    max_streams: max_streams as u32,
                })
            }
            _ => None,
        };
        EdgeConfig {
            http2,
            body_budget_bytes: body_budget_bytes.unwrap_or_default(),
        }
    }
}

/// What differs between a production ingress and the one inside `aftercart dev`.
#[derive(Debug, Clone)]
pub struct IngressDefaults {
    pub listen: &'static str,
    pub admin_listen: &'static str,
    /// Used when no secret is configured (the dev stack only).
    pub fallback_secret: Option<&'static str>,
    /// Used when AFTERCART_KAFKA_BROKERS is unset (the dev stack's embedded broker).
    pub fallback_brokers: Option<String>,
    pub spool_dir: &'static str,
}

impl IngressDefaults {
    pub fn production() -> Self {
        Self {
            listen: "0.0.0.0:8080",
            admin_listen: "0.0.0.0:9090",
            fallback_secret: None,
            fallback_brokers: None,
            spool_dir: "/var/lib/aftercart/spool",
        }
    }
}

/// Where and how big the durable spool is.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// The real file system; tests put a disk that fails or loses power here.
    pub disk: crate::spool::disk::SpoolDisk,
}

/// Validated ingress configuration.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub kafka: KafkaSettings,
    pub verifier: Verifier,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body_bytes: usize,
    pub publish_deadline: Duration,
    pub body_read_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub listen_backlog: u32,
    pub max_header_bytes: usize,
    pub drain_delay: Duration,
    pub dedupe_window: Duration,
    pub dedupe_capacity: usize,
    pub shutdown_timeout: Duration,
    /// `None` when the spool is off.
    pub spool: Option<SpoolConfig>,
    pub spool_after: Duration,
    pub edge: EdgeConfig,
}

impl IngressArgs {
    /// Validates every setting, reporting all problems at once. Secret values never appear in
    /// the messages.
    pub fn validate(&self, defaults: &IngressDefaults) -> Result<IngressConfig, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let kafka = self
            .kafka
            .validate(&mut errors, defaults.fallback_brokers.as_deref());
        let global = self.global_secrets(&mut errors, defaults);
        let per_shop = match &self.shop_secrets_file {
            Some(path) => read_shop_secrets(path, &mut errors),
            None => HashMap::new(),
        };
        let verifier = Verifier::new(global, per_shop);
        if verifier.is_empty() && errors.is_empty() {
            errors.push(
                "AFTERCART_SHOPIFY_SECRETS: required (or AFTERCART_SHOPIFY_SECRETS_FILE, or \
                 AFTERCART_SHOPIFY_SHOP_SECRETS_FILE): without a secret no webhook can be verified",
            );
        }
        let listen = errors.check(
            "AFTERCART_INGRESS_LISTEN",
            parse_socket_addr(self.listen.as_deref().unwrap_or(defaults.listen)),
        );
        let admin_listen = errors.check(
            "AFTERCART_ADMIN_LISTEN",
            parse_socket_addr(
                self.admin_listen
                    .as_deref()
                    .unwrap_or(defaults.admin_listen),
            ),
        );
        if let (Some(a), Some(b)) = (listen, admin_listen) {
            if a == b && a.port() != 0 {
                errors.push("AFTERCART_ADMIN_LISTEN: must differ from AFTERCART_INGRESS_LISTEN");
            }
        }
        let max_body_bytes = errors.check(
            "AFTERCART_INGRESS_MAX_BODY_BYTES",
            parse_byte_size(&self.max_body_bytes).and_then(|size| {
                if (1..=512 << 20).contains(&size) {
                    Ok(size as usize)
                } else {
                    Err(format!("{size} is outside 1 byte..=512MiB"))
                }
            }),
        );
        let publish_deadline = errors.check(
            "AFTERCART_INGRESS_PUBLISH_DEADLINE",
            parse_duration(&self.publish_deadline).and_then(|d| {
                if d.is_zero() || d >= SHOPIFY_TIMEOUT {
                    Err(format!(
                        "{} must be above 0 and below Shopify's 5s timeout",
                        humantime::format_duration(d)
                    ))
                } else {
                    Ok(d)
                }
            }),
        );
        let body_read_timeout = errors.check(
            "AFTERCART_INGRESS_BODY_READ_TIMEOUT",
            parse_positive_duration(&self.body_read_timeout),
        );
        let header_read_timeout = errors.check(
            "AFTERCART_INGRESS_HEADER_READ_TIMEOUT",
            parse_positive_duration(&self.header_read_timeout),
        );
        let max_connections = errors.check(
            "AFTERCART_INGRESS_MAX_CONNECTIONS",
            parse_in_range(&self.max_connections, 1, 1_000_000),
        );
        let listen_backlog = errors.check(
            "AFTERCART_INGRESS_LISTEN_BACKLOG",
            parse_in_range(&self.listen_backlog, 1, 65_535),
        );
        let max_header_bytes = errors.check(
            "AFTERCART_INGRESS_MAX_HEADER_BYTES",
            parse_byte_size(&self.max_header_bytes).and_then(|size| {
                // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
                if (8 << 10..=16 << 20).contains(&size) {
                    Ok(size as usize)
                } else {
                    Err(format!("{size} is outside 8KiB..=16MiB"))
                }
            }),
        );
        let drain_delay = errors.check(
            "AFTERCART_INGRESS_DRAIN_DELAY",
            parse_duration(&self.drain_delay),
        );
        let dedupe_window = errors.check(
            "AFTERCART_INGRESS_DEDUPE_WINDOW",
            parse_positive_duration(&self.dedupe_window),
        );
        let dedupe_capacity = errors.check(
            "AFTERCART_INGRESS_DEDUPE_CAPACITY",
            parse_in_range(&self.dedupe_capacity, 1, 100_000_000),
        );
        let shutdown_timeout = errors.check(
            "AFTERCART_SHUTDOWN_TIMEOUT",
            parse_positive_duration(&self.shutdown_timeout),
        );
        let spool_dir = self
            .spool_dir
            .as_deref()
            .unwrap_or(defaults.spool_dir)
            .trim();
        let spool_max_bytes = errors.check(
            "AFTERCART_INGRESS_SPOOL_MAX_BYTES",
            parse_byte_size(&self.spool_max_bytes).and_then(|size| {
                // Room for at least one largest body, so a full-size webhook can be spooled.
                if size >= 1 << 20 {
                    Ok(size)
                } else {
                    Err(format!("{size} is below the 1MiB minimum"))
                }
            }),
        );
        if let (Some(limit), Some(body)) = (spool_max_bytes, max_body_bytes) {
            // The largest webhook, with its headers, must fit an empty spool.
            if spool_dir != "off" && limit < body as u64 + (64 << 10) {
                errors.push(format!(
                    "AFTERCART_INGRESS_SPOOL_MAX_BYTES: {limit} bytes cannot hold one largest webhook \
                     (AFTERCART_INGRESS_MAX_BODY_BYTES {body} plus 64KiB of headers)"
                ));
            }
        }
        if spool_dir.is_empty() {
            errors.push("AFTERCART_INGRESS_SPOOL_DIR: empty (give a directory, or `off`)");
        }
        let spool_after = errors.check(
            "AFTERCART_INGRESS_SPOOL_AFTER",
            parse_duration(&self.spool_after).and_then(|after| match publish_deadline {
                Some(deadline) if after >= deadline => Err(format!(
                    "{} must be below AFTERCART_INGRESS_PUBLISH_DEADLINE, leaving time for the fsync",
                    humantime::format_duration(after)
                )),
                _ => Ok(after),
            }),
        );
        let edge = self.edge.validate(&mut errors, max_body_bytes);
        // `check` reports every value it returns as None: none is left unreported here.
        let (
            Some(kafka),
            Some(listen),
            Some(admin_listen),
            Some(max_body_bytes),
            Some(publish_deadline),
            Some(body_read_timeout),
            Some(header_read_timeout),
            Some(max_connections),
            Some(listen_backlog),
            Some(max_header_bytes),
            Some(drain_delay),
            Some(dedupe_window),
            Some(dedupe_capacity),
            Some(shutdown_timeout),
            Some(spool_max_bytes),
            Some(spool_after),
        ) = (
            kafka,
            listen,
            admin_listen,
            max_body_bytes,
            publish_deadline,
            body_read_timeout,
            header_read_timeout,
            max_connections,
            listen_backlog,
            max_header_bytes,
            drain_delay,
            dedupe_window,
            dedupe_capacity,
            shutdown_timeout,
            spool_max_bytes,
            spool_after,
        )
        else {
            return Err(errors);
        };
        errors.finish(|| IngressConfig {
            kafka,
            verifier,
            listen,
            admin_listen,
            max_body_bytes,
            publish_deadline,
            body_read_timeout,
            header_read_timeout,
            max_connections: max_connections as usize,
            listen_backlog: listen_backlog as u32,
            max_header_bytes,
            drain_delay,
            dedupe_window,
            dedupe_capacity: dedupe_capacity as usize,
            shutdown_timeout,
            spool: (spool_dir != "off").then(|| SpoolConfig {
                dir: PathBuf::from(spool_dir),
                max_bytes: spool_max_bytes,
                disk: Default::default(),
            }),
            spool_after,
            edge,
        })
    }

    fn global_secrets(&self, errors: &mut ConfigErrors, defaults: &IngressDefaults) -> Vec<Secret> {
        match (&self.secrets, &self.secrets_file) {
            (Some(_), Some(_)) => {
                errors.push("AFTERCART_SHOPIFY_SECRETS and AFTERCART_SHOPIFY_SECRETS_FILE: set one, not both");
                Vec::new()
            }
            (Some(list), None) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Secret::new)
                .collect(),
            (None, Some(path)) => match read_lines(path) {
                Ok(lines) if lines.is_empty() => {
                    errors.push(format!(
                        "AFTERCART_SHOPIFY_SECRETS_FILE: {} holds no secret",
                        path.display()
                    ));
                    Vec::new()
                }
                Ok(lines) => lines.into_iter().map(Secret::new).collect(),
                Err(problem) => {
                    errors.push(format!("AFTERCART_SHOPIFY_SECRETS_FILE: {problem}"));
                    Vec::new()
                }
            },
            (None, None) => defaults
                .fallback_secret
                .into_iter()
                .map(Secret::new)
                .collect(),
        }
    }
}

/// Non-blank lines that are not `#` comments, trimmed.
fn read_lines(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn read_shop_secrets(path: &Path, errors: &mut ConfigErrors) -> HashMap<String, Vec<Secret>> {
    let lines = match read_lines(path) {
        Ok(lines) => lines,
        Err(problem) => {
            errors.push(format!("AFTERCART_SHOPIFY_SHOP_SECRETS_FILE: {problem}"));
            return HashMap::new();
        }
    };
    let mut per_shop: HashMap<String, Vec<Secret>> = HashMap::new();
    for (number, line) in lines.iter().enumerate() {
        let parsed = line.split_once('=').and_then(|(shop, secrets)| {
            let shop = shop.trim().to_ascii_lowercase();
            let secrets: Vec<Secret> = secrets
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Secret::new)
                .collect();
            (!shop.is_empty() && !secrets.is_empty()).then_some((shop, secrets))
        });
        match parsed {
            Some((shop, secrets)) => per_shop.entry(shop).or_default().extend(secrets),
            // Only the entry number is reported: the line holds a secret.
            None => errors.push(format!(
                "AFTERCART_SHOPIFY_SHOP_SECRETS_FILE: entry {} is not shop-domain=secret[,secret]",
                number + 1
            )),
        }
    }
    per_shop
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IngressArgs,
    }

    fn parse(argv: &[&str]) -> IngressArgs {
        let mut full = vec!["ingress"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).unwrap().args
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("aftercart-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn defaults_are_valid_once_brokers_and_a_secret_are_given() {
        let config = parse(&["--kafka-brokers", "k:9092", "--shopify-secrets", "a, b"])
            .validate(&IngressDefaults::production())
            .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(config.max_body_bytes, 4 << 20);
        assert_eq!(config.publish_deadline, Duration::from_secs(3));
        assert_eq!(config.dedupe_window, Duration::from_secs(86_400));
        assert_eq!(config.dedupe_capacity, 1_000_000);
        let spool = config.spool.unwrap();
        assert_eq!(spool.dir, PathBuf::from("/var/lib/aftercart/spool"));
        assert_eq!(spool.max_bytes, 1 << 30);
        assert_eq!(config.spool_after, Duration::from_secs(1));
    }

    #[test]
    fn the_spool_can_be_turned_off_and_must_answer_before_the_deadline() {
        let base = ["--kafka-brokers", "k:9092", "--shopify-secrets", "a"];
        let mut off = base.to_vec();
        off.extend(["--ingress-spool-dir", "off"]);
        let config = parse(&off)
            .validate(&IngressDefaults::production())
            .unwrap();
        assert!(config.spool.is_none());
        let mut late = base.to_vec();
        late.extend([
            "--ingress-spool-after",
            "3s",
            "--ingress-spool-max-bytes",
            "1KiB",
        ]);
        let mut small = base.to_vec();
        small.extend([
            "--ingress-spool-max-bytes",
            "2MiB",
            "--ingress-max-body-bytes",
            "2MiB",
        ]);
        let text = parse(&small)
            .validate(&IngressDefaults::production())
            .unwrap_err()
            .to_string();
        assert!(text.contains("cannot hold one largest webhook"), "{text}");
        let text = parse(&late)
            .validate(&IngressDefaults::production())
            .unwrap_err()
            .to_string();
        assert!(text.contains("AFTERCART_INGRESS_SPOOL_AFTER"), "{text}");
        assert!(text.contains("AFTERCART_INGRESS_SPOOL_MAX_BYTES"), "{text}");
    }

    #[test]
    fn http2_is_off_unless_asked_for_and_the_body_budget_fits_a_largest_body() {
        let base = ["--kafka-brokers", "k:9092", "--shopify-secrets", "a"];
        let config = parse(&base)
            .validate(&IngressDefaults::production())
            .unwrap();
        assert!(config.edge.http2.is_none());
        assert_eq!(config.edge.body_budget_bytes, 128 << 20);
        let mut on = base.to_vec();
        on.extend(["--ingress-http2", "on", "--ingress-http2-max-streams", "8"]);
        let http2 = parse(&on)
            .validate(&IngressDefaults::production())
            .unwrap()
            .edge
            .http2
            .unwrap();
        assert_eq!(http2.max_streams, 8);
        assert_eq!(http2.idle_timeout, Duration::from_secs(30));
        let mut bad = base.to_vec();
        bad.extend([
            "--ingress-http2",
            "maybe",
            "--ingress-body-budget-bytes",
            "4MiB",
        ]);
        let text = parse(&bad)
            .validate(&IngressDefaults::production())
            .unwrap_err()
            .to_string();
        assert!(text.contains("AFTERCART_INGRESS_HTTP2:"), "{text}");
        assert!(
            text.contains("AFTERCART_INGRESS_BODY_BUDGET_BYTES") && text.contains("5592408"),
            "{text}"
        );
    }

    #[test]
    fn all_problems_are_listed_together_without_secrets() {
        let errors = parse(&[
            "--shopify-secrets",
            "hunter2",
            "--shopify-secrets-file",
            "/nonexistent",
            "--ingress-listen",
            "nowhere",
            "--ingress-max-body-bytes",
            "lots",
            "--ingress-publish-deadline",
            "6s",
            "--ingress-dedupe-capacity",
            "0",
        ])
        .validate(&IngressDefaults::production())
        .unwrap_err();
        let text = errors.to_string();
        for needle in [
            "AFTERCART_KAFKA_BROKERS",
            "set one, not both",
            "AFTERCART_INGRESS_LISTEN",
            "AFTERCART_INGRESS_MAX_BODY_BYTES",
            "AFTERCART_INGRESS_PUBLISH_DEADLINE",
            "AFTERCART_INGRESS_DEDUPE_CAPACITY",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_missing_secret_is_an_error_outside_the_dev_stack() {
        let errors = parse(&["--kafka-brokers", "k:9092"])
            .validate(&IngressDefaults::production())
            .unwrap_err();
        assert!(errors
            .to_string()
            .contains("AFTERCART_SHOPIFY_SECRETS: required"));
    }

    #[test]
    fn secrets_files_skip_comments_and_blank_lines() {
        let path = temp_file("secrets", "# rotated 2026-11\n\n  current  \nprevious\n");
        let config = parse(&[
            "--kafka-brokers",
            "k:9092",
            "--shopify-secrets-file",
            path.to_str().unwrap(),
        ])
        .validate(&IngressDefaults::production())
        .unwrap();
        let body = b"{}";
        let signed = aftercart_shopify::sign(&Secret::new("previous"), body);
        assert_eq!(
            config.verifier.verify(None, Some(signed.as_bytes()), body),
            Ok(aftercart_shopify::SecretId::Global(1))
        );
    }

    #[test]
    fn shop_secrets_are_read_and_bad_entries_reported_by_number_only() {
        let good = temp_file("shops-good", "Shop-A.myshopify.com = key1, key2\n");
        let config = parse(&[
            "--kafka-brokers",
            "k:9092",
            "--shopify-shop-secrets-file",
            good.to_str().unwrap(),
        ])
        .validate(&IngressDefaults::production())
        .unwrap();
        let signed = aftercart_shopify::sign(&Secret::new("key2"), b"{}");
        assert_eq!(
            config
                .verifier
                .verify(Some("shop-a.myshopify.com"), Some(signed.as_bytes()), b"{}"),
            Ok(aftercart_shopify::SecretId::Shop(1))
        );
        let bad = temp_file(
            "shops-bad",
            "shop-b.myshopify.com=ok\nleaky-secret-without-shop\n",
        );
        let errors = parse(&[
            "--kafka-brokers",
            "k:9092",
            "--shopify-shop-secrets-file",
            bad.to_str().unwrap(),
        ])
        .validate(&IngressDefaults::production())
        .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("entry 2"), "{text}");
        assert!(!text.contains("leaky"), "{text}");
    }
}

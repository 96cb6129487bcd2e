//! `aftercart loadgen`: realistic, signed Shopify webhook traffic against an ingress, open loop
//! (a fixed rate, for latency) or closed loop (N connections flat out, for throughput), with
//! latency percentiles from HDR histograms.

mod link;
pub mod report;
pub mod run;
pub mod traffic;

use std::time::Duration;

use http::Uri;

pub use link::Protocol;
pub use report::Report;
pub use run::{Books, Mode, Plan, RunError};
pub use traffic::{Delivery, Pool, TrafficOptions};

/// Flags of `aftercart loadgen`.
#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// Webhook URL of the ingress under test (plain HTTP).
    #[arg(
        long = "loadgen-url",
        alias = "url",
        env = "AFTERCART_LOADGEN_URL",
        default_value = "http://127.0.0.1:8080/webhooks/shopify"
    )]
    pub url: String,

    /// Signing secret (the first of a comma-separated list is used). Defaults to the dev
    /// stack's secret.
    #[arg(
        long = "shopify-secrets",
        alias = "secret",
        env = "AFTERCART_SHOPIFY_SECRETS",
        hide_env_values = true,
        default_value = "aftercart-dev-secret"
    )]
    pub secret: String,

    /// Open loop: requests per second in all, whatever the answers do. Without it the load is
    /// closed loop: every connection sends its next request when the previous answer arrives.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Requests in flight at once: each on its own keep-alive HTTP/1.1 connection, or with
    /// `--http2-connections` as HTTP/2 streams.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,

    /// Speak HTTP/2 (prior knowledge, cleartext) over this many TCP connections, the
    /// `--connections` requests in flight multiplexed over them; without it, HTTP/1.1. The
    /// aftercart ingress serves HTTP/2 only with AFTERCART_INGRESS_HTTP2=true, and at most
    /// AFTERCART_INGRESS_HTTP2_MAX_STREAMS (32) streams per connection at once.
    #[arg(long)]
    pub http2_connections: Option<usize>,

    /// Measured window. SIGTERM or SIGINT ends it early; either way the journeys begun are
    /// finished and the report is printed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Load sent before the measured window and not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// A request without an answer after this is a timeout (Shopify's budget is 5 s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Share of requests that redeliver an earlier webhook (same id and body), 0 to 1.
    #[arg(long, default_value_t = 0.02)]
    pub duplicates: f64,

    /// Share of requests with a signature made with another secret (answered 401), 0 to 1.
    #[arg(long, default_value_t = 0.01)]
    pub bad_signatures: f64,

    /// Journeys (cart, two checkout updates and, for most, an order created and paid) in the
    /// pool of bodies built before the clock starts; past them, more are built (with
    /// `--live-orders`) or the pool is replayed with fresh webhook ids.
    #[arg(long, default_value_t = 1000)]
    pub journeys: usize,

    /// Shop domains the journeys are spread over.
    #[arg(long, default_value_t = 50)]
    pub shops: usize,

    /// Largest body: each is grown from its sample's size to a random size up to this.
    #[arg(long, default_value_t = 15 * 1024)]
    pub max_body_bytes: usize,

    /// Seed of the bodies and of which journeys end in an order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Part of every webhook id, token, order, customer and event id the run sends (8 hex
    /// digits), so runs against one pipeline never collide; random when not given. Give it to
    /// know the ids up front (the same run id and seed send the same journeys).
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<u32>,

    /// Orders as a live shop sends them (paid, not test) from buyers who accept marketing, so
    /// the consumer services act on them; without it the samples' voided test orders are sent.
    /// Every journey is new (past `--journeys`, more are made rather than replayed): each paid
    /// order is one referral invite and one audience member, each journey without an order one
    /// abandoned checkout; the report's `run` counts them.
    #[arg(long)]
    pub live_orders: bool,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_run_id(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 16).map_err(|_| "must be 1 to 8 hex digits".to_string())
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| e.to_string())
}

impl LoadgenArgs {
    /// Checks the flags; every problem is listed.
    pub fn validate(&self) -> Result<(Plan, TrafficOptions), Vec<String>> {
        let mut problems = Vec::new();
        let uri: Option<Uri> = self
            .url
            .parse()
            .map_err(|e| problems.push(format!("--loadgen-url: {e}")))
            .ok();
        if self.connections == 0 {
            problems.push("--connections: must be at least 1".into());
        }
        if self
            .http2_connections
            .is_some_and(|n| n == 0 || n > self.connections)
        {
            problems.push("--http2-connections: must be between 1 and --connections".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            problems.push("--rate: must be a positive number".into());
        }
        for (name, share) in [
            ("--duplicates", self.duplicates),
            ("--bad-signatures", self.bad_signatures),
        ] {
            if !(0.0..=1.0).contains(&share) {
                problems.push(format!("{name}: must be between 0 and 1"));
            }
        }
        if self.duplicates + self.bad_signatures > 1.0 {
            problems.push("--duplicates plus --bad-signatures: must not exceed 1".into());
        }
        if self.journeys == 0 || self.shops == 0 {
            problems.push("--journeys and --shops: must be at least 1".into());
        }
        let secret = self
            .secret
            .split(',')
            .map(str::trim)
            .find(|s| !s.is_empty())
            .unwrap_or_default()
            .to_string();
        if secret.is_empty() {
            problems.push("--shopify-secrets: must not be empty".into());
        }
        let Some(uri) = uri.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        // Fresh ids each run unless asked for, so a second run against the same ingress is not
        // all duplicates.
        let run_id = self.run_id.unwrap_or_else(|| fastrand::u32(..));
        let plan = Plan {
            uri,
            mode: self.rate.map_or(Mode::Closed, |rate| Mode::Open { rate }),
            connections: self.connections,
            protocol: self
                .http2_connections
                .map_or(Protocol::Http1, |connections| Protocol::Http2 {
                    connections,
                }),
            warmup: self.warmup,
            duration: self.duration,
            request_timeout: self.timeout,
            duplicate_share: self.duplicates,
            bad_signature_share: self.bad_signatures,
            run_id,
        };
        let traffic = TrafficOptions {
            journeys: self.journeys,
            shops: self.shops,
            max_body_bytes: self.max_body_bytes,
            secret,
            seed: self.seed,
            live_orders: self.live_orders,
            run_id,
            ..TrafficOptions::default()
        };
        Ok((plan, traffic))
    }
}

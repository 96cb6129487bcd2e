//! What a run measured: throughput, status counts and latency percentiles, as text for people
//! and as JSON for `bench/run.py`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::link::Protocol;
use crate::run::{Books, Mode, Plan};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `closed` or `open`.
    pub mode: &'static str,
    pub connections: usize,
    /// `http/1.1`, or `h2` with the number of TCP connections the streams shared.
    pub protocol: String,
    /// Requests per second asked for (open loop only).
    pub target_rate: Option<f64>,
    /// The measured window, seconds.
    pub duration_s: f64,
    /// Answers received in the window, whatever their status.
    pub requests: u64,
    pub throughput_rps: f64,
    /// Answers by HTTP status.
    pub status: BTreeMap<u16, u64>,
    /// 200 answers that published a record.
    pub accepted: u64,
    /// 200 answers for a webhook id already published.
    pub duplicates: u64,
    /// Connection and protocol errors (no answer).
    pub errors: u64,
    /// No answer within the request timeout.
    pub timeouts: u64,
    pub mean_body_bytes: f64,
    pub body_bytes_per_s: f64,
    pub latency_ms: Latency,
    /// Wall-clock bounds of the measured window (Unix milliseconds), so that a script sampling
    /// the server's CPU time from /proc can cut out exactly this window.
    pub window_start_unix_ms: u64,
    pub window_end_unix_ms: u64,
    /// The run id in every webhook id, journey id and event id of the run (`--run-id`).
    pub run_id: u32,
    /// The whole run, warm-up and the journeys finished after the window included: what was
    /// sent and published, to count the pipeline's outputs against.
    pub run: Books,
}

impl Report {
    /// The measured window's report; the run's books (`run`) are the caller's to fill.
    pub(crate) fn new(
        plan: &Plan,
        mean_body_bytes: f64,
        elapsed: Duration,
        latency_us: &Histogram<u64>,
        status: BTreeMap<u16, u64>,
        [accepted, duplicates, errors, timeouts, bytes]: [u64; 5],
        window_start_unix_ms: u64,
    ) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let requests: u64 = status.values().sum();
        let seconds = elapsed.as_secs_f64();
        let (mode, target_rate) = match plan.mode {
            Mode::Closed => ("closed", None),
            Mode::Open { rate } => ("open", Some(rate)),
        };
        Self {
            mode,
            connections: plan.connections,
            protocol: match plan.protocol {
                Protocol::Http1 => "http/1.1".into(),
                Protocol::Http2 { connections } => format!("h2 over {connections} connections"),
            },
            target_rate,
            duration_s: seconds,
            requests,
            throughput_rps: requests as f64 / seconds,
            status,
            accepted,
            duplicates,
            errors,
            timeouts,
            mean_body_bytes,
            body_bytes_per_s: bytes as f64 / seconds,
            latency_ms: Latency {
                p50: ms(latency_us.value_at_quantile(0.50)),
                p90: ms(latency_us.value_at_quantile(0.90)),
                p99: ms(latency_us.value_at_quantile(0.99)),
                p99_9: ms(latency_us.value_at_quantile(0.999)),
                max: ms(latency_us.max()),
                mean: latency_us.mean() / 1000.0,
            },
            window_start_unix_ms,
            window_end_unix_ms: window_start_unix_ms + elapsed.as_millis() as u64,
            run_id: plan.run_id,
            run: Books::default(),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self
            .target_rate
            .map(|r| format!(" at {r:.0} req/s"))
            .unwrap_or_default();
        writeln!(
            f,
            "{} loop{rate}, {} in flight ({}), {:.1} s measured",
            self.mode, self.connections, self.protocol, self.duration_s
        )?;
        writeln!(
            f,
            "  throughput  {:.0} req/s ({:.1} MB/s of bodies, mean body {:.0} B)",
            self.throughput_rps,
            self.body_bytes_per_s / 1e6,
            self.mean_body_bytes
        )?;
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        writeln!(
            f,
            "  answers     {} ({}); accepted {}, duplicates {}; errors {}, timeouts {}",
            self.requests,
            statuses.join(", "),
            self.accepted,
            self.duplicates,
            self.errors,
            self.timeouts
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "  latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        )?;
        let run = &self.run;
        write!(
            f,
            "  whole run   run id {:08x}: {} journeys, {} deliveries (+{} redeliveries, {} badly \
             signed); published {} paid orders, {} abandoned checkouts; unconfirmed {}",
            self.run_id,
            run.journeys,
            run.deliveries,
            run.redeliveries,
            run.bad_signatures,
            run.orders,
            run.abandoned_checkouts,
            run.unconfirmed
        )
    }
}

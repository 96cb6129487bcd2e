//! The load itself: N workers, each with one request in flight (on its own keep-alive HTTP/1.1
//! connection, or as HTTP/2 streams over a few shared connections: `link`), driven either closed-loop (each sends its
//! next request as soon as the previous answer arrives: maximum throughput) or open-loop (a fixed
//! schedule whatever the answers do, latency measured from the scheduled time so that a stall is
//! not hidden by the generator waiting for it: no coordinated omission).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::link::{Connector, Protocol, Sender};
use crate::report::Report;
use crate::traffic::{mix, Delivery, Pool};

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Each connection sends back to back.
    Closed,
    /// This many requests per second in all, spread evenly over the connections.
    Open { rate: f64 },
}

/// Everything a run needs besides the pool.
#[derive(Debug, Clone)]
pub struct Plan {
    pub uri: Uri,
    pub mode: Mode,
    /// Workers, each with one request in flight: HTTP/1.1 connections, or HTTP/2 streams.
    pub connections: usize,
    pub protocol: Protocol,
    /// Sent but not recorded: connections, caches and the broker warm up.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Shopify gives up after 5 s; so does the generator (counted as a timeout).
    pub request_timeout: Duration,
    /// Share of requests that redeliver an earlier webhook (same id, same body).
    pub duplicate_share: f64,
    /// Share of requests signed with the wrong secret.
    pub bad_signature_share: f64,
    /// Distinguishes the webhook ids of runs against the same ingress (its dedupe remembers).
    pub run_id: u32,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the URL must be plain http://host:port/path")]
    BadUrl,
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
}

/// What one connection saw in the measured window.
struct Tally {
    latency_us: Histogram<u64>,
    status: BTreeMap<u16, u64>,
    accepted: u64,
    duplicates: u64,
    errors: u64,
    timeouts: u64,
    bytes: u64,
    last_done: Option<Instant>,
    /// The whole run's books (warm-up and the finishing journeys too), for `Report::run`.
    books: Books,
}

/// What the whole run sent and what the ingress published of it, warm-up and the journeys
/// finished after the window included: what a checker counts the pipeline's outputs against.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Books {
    /// Deliveries sent for the first time (each its own webhook id).
    pub deliveries: u64,
    /// Requests that repeated an earlier delivery (same webhook id and body).
    pub redeliveries: u64,
    /// Requests signed with another secret (an earlier delivery's body; refused with 401).
    pub bad_signatures: u64,
    /// Journeys begun (their cart sent); the run ends only on journey boundaries, so every
    /// one was sent whole.
    pub journeys: u64,
    /// Deliveries the ingress published (answered 200, not as a duplicate), by Shopify topic:
    /// each webhook id is published once, so these are distinct deliveries.
    pub published: BTreeMap<&'static str, u64>,
    /// Distinct paid orders published (`orders/paid`): with `--live-orders` each is a distinct
    /// order of a distinct consenting buyer (one referral invite, one audience member each).
    pub orders: u64,
    /// Distinct checkouts published (`checkouts/create`) of journeys that end without an
    /// order: the abandonments owed.
    pub abandoned_checkouts: u64,
    /// Requests with no answer, or a 5xx: their delivery may or may not have been published
    /// (the counts above are exact only when this is 0; otherwise read the input topics).
    pub unconfirmed: u64,
}

impl Books {
    fn merge(&mut self, other: Books) {
        self.deliveries += other.deliveries;
        self.redeliveries += other.redeliveries;
        self.bad_signatures += other.bad_signatures;
        self.journeys += other.journeys;
        for (topic, count) in other.published {
            *self.published.entry(topic).or_default() += count;
        }
        self.orders += other.orders;
        self.abandoned_checkouts += other.abandoned_checkouts;
        self.unconfirmed += other.unconfirmed;
    }
}

impl Tally {
    fn new() -> Self {
        Self {
            // 1 µs to 60 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            status: BTreeMap::new(),
            accepted: 0,
            duplicates: 0,
            errors: 0,
            timeouts: 0,
            bytes: 0,
            last_done: None,
            books: Books::default(),
        }
    }

    fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (status, count) in other.status {
            *self.status.entry(status).or_default() += count;
        }
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.bytes += other.bytes;
        self.last_done = self.last_done.max(other.last_done);
        self.books.merge(other.books);
    }
}

/// Shared by every connection.
struct Shared {
    plan: Plan,
    pool: Pool,
    connector: Connector,
    authority: String,
    /// The request target: origin form (`/path`) for HTTP/1.1; absolute for HTTP/2, whose
    /// `:scheme` and `:authority` come from it.
    target: String,
    /// The next request's number: it draws whether the request is a redelivery or badly signed.
    requests: AtomicU64,
    /// The next fresh delivery's number: it picks the delivery and makes the webhook id.
    fresh: AtomicU64,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Set when the run is stopped early (SIGTERM, SIGINT): the window ends there.
    stopped: AtomicBool,
}

/// Runs the plan and reports the measured window.
pub async fn run(plan: Plan, pool: Pool) -> Result<Report, RunError> {
    run_until(plan, pool, std::future::pending()).await
}

/// Runs the plan until its window ends or `stop` completes, whichever comes first; either way
/// the journeys begun are finished, and the report covers what was sent.
pub async fn run_until(
    plan: Plan,
    pool: Pool,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, RunError> {
    let authority = plan
        .uri
        .authority()
        .ok_or(RunError::BadUrl)?
        .as_str()
        .to_string();
    if plan.uri.scheme_str() != Some("http") {
        return Err(RunError::BadUrl);
    }
    let path = plan
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    // Fail fast on a wrong address instead of counting a run of connection errors.
    TcpStream::connect(&authority)
        .await
        .map_err(|e| RunError::Connect(authority.clone(), e))?;
    let start = Instant::now() + Duration::from_millis(50);
    let wall_start = SystemTime::now() + Duration::from_millis(50) + plan.warmup;
    let shared = Arc::new(Shared {
        measure_from: start + plan.warmup,
        end: start + plan.warmup + plan.duration,
        start,
        connector: Connector::new(authority.clone(), plan.protocol),
        target: match plan.protocol {
            Protocol::Http1 => path,
            Protocol::Http2 { .. } => format!("http://{authority}{path}"),
        },
        authority,
        stopped: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        fresh: AtomicU64::new(0),
        pool,
        plan,
    });
    let stopper = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            stop.await;
            shared.stopped.store(true, Ordering::Relaxed);
        })
    };
    let workers: Vec<_> = (0..shared.plan.connections)
        .map(|index| tokio::spawn(connection(Arc::clone(&shared), index)))
        .collect();
    let mut total = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.merge(tally);
        }
    }
    stopper.abort();
    let elapsed = total
        .last_done
        .map_or(shared.plan.duration, |done| {
            done.saturating_duration_since(shared.measure_from)
        })
        .max(Duration::from_millis(1));
    let mut report = Report::new(
        &shared.plan,
        shared.pool.mean_body_bytes(),
        elapsed,
        &total.latency_us,
        total.status,
        [
            total.accepted,
            total.duplicates,
            total.errors,
            total.timeouts,
            total.bytes,
        ],
        wall_start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    );
    report.run = total.books;
    Ok(report)
}

/// One worker: one request at a time on its connection (or stream), reconnecting after an error.
async fn connection(shared: Arc<Shared>, index: usize) -> Tally {
    let mut tally = Tally::new();
    let mut sender: Option<Sender> = None;
    // Open loop: this connection's share of the schedule, offset so connections interleave.
    let (interval, mut due) = match shared.plan.mode {
        Mode::Closed => (Duration::ZERO, shared.start),
        Mode::Open { rate } => {
            let per_connection = rate / shared.plan.connections as f64;
            let interval = Duration::from_secs_f64(1.0 / per_connection.max(1e-6));
            let offset = interval.mul_f64(index as f64 / shared.plan.connections as f64);
            (interval, shared.start + offset)
        }
    };
    tokio::time::sleep_until(shared.start).await;
    loop {
        let scheduled = match shared.plan.mode {
            Mode::Closed => Instant::now(),
            Mode::Open { .. } => {
                tokio::time::sleep_until(due).await;
                let scheduled = due;
                due += interval;
                scheduled
            }
        };
        // Past the end, only the journeys already begun are finished (no redeliveries, no
        // new journey), so every journey the run began was sent whole.
        let finishing = scheduled >= shared.end || shared.stopped.load(Ordering::Relaxed);
        let Some(pick) = pick(&shared, finishing) else {
            break;
        };
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = shared.connector.connect(index).await;
            if sender.is_none() {
                tally.errors += u64::from(scheduled >= shared.measure_from);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let Some(live) = sender.as_mut() else {
            continue;
        };
        let delivery = shared.pool.delivery(pick.index);
        let (request, body_len) = build_request(&shared, &pick, &delivery);
        let outcome = tokio::time::timeout(shared.plan.request_timeout, async {
            let response = live.send(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        let done = Instant::now();
        let measured = scheduled >= shared.measure_from && !finishing;
        tally.books.count(&pick, &delivery, &outcome);
        match outcome {
            Ok(Ok((status, body))) => {
                if measured {
                    let micros = done.duration_since(scheduled).as_micros() as u64;
                    tally.latency_us.saturating_record(micros.max(1));
                    *tally.status.entry(status).or_default() += 1;
                    if status == 200 {
                        if contains(&body, b"duplicate") {
                            tally.duplicates += 1;
                        } else {
                            tally.accepted += 1;
                        }
                    }
                    tally.bytes += body_len as u64;
                    tally.last_done = Some(done);
                }
            }
            Ok(Err(_)) => {
                tally.errors += u64::from(measured);
                sender = None;
            }
            Err(_elapsed) => {
                tally.timeouts += u64::from(measured);
                // The answer may still come on this connection: start afresh.
                sender = None;
            }
        }
    }
    tally
}

/// What one request sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// The next delivery, for the first time.
    Fresh,
    /// An earlier delivery again, as Shopify's retries do (same id, same body).
    Redelivery,
    /// An earlier delivery's body signed with another secret.
    BadSignature,
}

/// The delivery a request sends, by its number in the run, and how.
struct Pick {
    index: u64,
    kind: Kind,
}

/// The next request: a redelivery of an earlier delivery for the duplicate share, an earlier
/// body with a wrong signature for the bad share, otherwise the next delivery under a fresh id.
/// Redeliveries and bad signatures never take the place of a delivery, so every journey is
/// sent whole. `None` when `finishing` and the next delivery would begin a new journey.
fn pick(shared: &Shared, finishing: bool) -> Option<Pick> {
    let plan = &shared.plan;
    let fresh = &shared.fresh;
    if !finishing {
        let seq = shared.requests.fetch_add(1, Ordering::Relaxed);
        let roll = unit(seq);
        let sent = fresh.load(Ordering::Relaxed);
        let back = plan.connections as u64 + (mix(seq) % 1000);
        if sent > 0 && roll < plan.bad_signature_share + plan.duplicate_share {
            let kind = if roll < plan.bad_signature_share {
                Kind::BadSignature
            } else {
                Kind::Redelivery
            };
            let index = sent.saturating_sub(back);
            return Some(Pick { index, kind });
        }
        let index = fresh.fetch_add(1, Ordering::Relaxed);
        return Some(Pick {
            index,
            kind: Kind::Fresh,
        });
    }
    let mut index = fresh.load(Ordering::Relaxed);
    loop {
        if shared.pool.delivery(index).step == 0 {
            return None;
        }
        match fresh.compare_exchange(index, index + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                return Some(Pick {
                    index,
                    kind: Kind::Fresh,
                })
            }
            Err(now) => index = now,
        }
    }
}

impl Books {
    /// Counts one request and its outcome.
    fn count(
        &mut self,
        pick: &Pick,
        delivery: &Delivery,
        outcome: &Result<Result<(u16, Bytes), hyper::Error>, tokio::time::error::Elapsed>,
    ) {
        match pick.kind {
            Kind::Fresh => {
                self.deliveries += 1;
                self.journeys += u64::from(delivery.step == 0);
            }
            Kind::Redelivery => self.redeliveries += 1,
            Kind::BadSignature => self.bad_signatures += 1,
        }
        match outcome {
            Ok(Ok((200, body))) if !contains(body, b"duplicate") => {
                *self.published.entry(delivery.topic).or_default() += 1;
                self.orders += u64::from(delivery.topic == "orders/paid");
                self.abandoned_checkouts +=
                    u64::from(delivery.topic == "checkouts/create" && !delivery.completed);
            }
            Ok(Ok((status, _))) if *status < 500 => {}
            _ => self.unconfirmed += 1,
        }
    }
}

fn build_request(
    shared: &Shared,
    pick: &Pick,
    delivery: &Delivery,
) -> (Request<Full<Bytes>>, usize) {
    let plan = &shared.plan;
    let signature = if pick.kind == Kind::BadSignature {
        &delivery.bad_signature
    } else {
        &delivery.signature
    };
    let seq = pick.index;
    let webhook_id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        plan.run_id,
        (seq >> 48) & 0xffff,
        (seq >> 36) & 0xfff,
        (seq >> 24) & 0xfff,
        seq & 0xff_ffff_ffff
    );
    let request = Request::post(shared.target.as_str())
        .header(header::HOST, shared.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-shopify-topic", delivery.topic)
        .header("x-shopify-shop-domain", delivery.shop.as_str())
        .header("x-shopify-api-version", "2026-07")
        .header("x-shopify-webhook-id", webhook_id)
        .header("x-shopify-event-id", delivery.event_id.as_str())
        .header("x-shopify-triggered-at", delivery.triggered_at.as_str())
        .header("x-shopify-hmac-sha256", signature.as_str())
        .body(Full::new(delivery.body.clone()))
        .expect("static header names and valid values");
    (request, delivery.body.len())
}

/// `seq` mapped to [0, 1).
fn unit(seq: u64) -> f64 {
    (mix(seq) >> 11) as f64 / (1u64 << 53) as f64
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_out_close_to_what_was_asked() {
        let n = 100_000;
        let below = (0..n).filter(|&s| unit(s) < 0.05).count();
        assert!((4_500..5_500).contains(&below), "{below}");
    }
}

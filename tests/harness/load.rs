//! A small load client for the fault tests: signed webhooks with unique `X-Shopify-Webhook-Id`s
//! at a steady rate from N concurrent keep-alive connections, recording which ids were answered
//! 2xx, so the books can be matched against what Kafka holds afterwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accounting::Accounting;
use crate::http::Webhook;

/// Builds the n-th delivery of a run; each must carry its own webhook id.
pub type WebhookFactory = Arc<dyn Fn(u64) -> Webhook + Send + Sync>;

/// What to send, where, how fast.
#[derive(Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// Concurrent connections (one worker each, requests in sequence on it).
    pub connections: usize,
    /// Requests per second over all connections; each worker paces itself at its share.
    pub rate: f64,
    /// Stop after this many requests in total; `None` runs until [`LoadClient::stop`].
    pub limit: Option<u64>,
    /// A request with no answer after this long counts as unanswered (the connection is
    /// dropped and a new one opened).
    pub request_timeout: Duration,
    pub webhook: WebhookFactory,
    /// Open a new connection for every request (a stream of new clients) instead of keeping
    /// one alive per worker: what proves a server still accepts while flooded.
    pub new_connection_per_request: bool,
}

impl LoadSpec {
    /// `orders/create` deliveries signed with `secret`, ids `<run>-<n>`, one journey each.
    pub fn orders(addr: SocketAddr, secret: &str) -> LoadSpec {
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let secret = secret.to_string();
        LoadSpec {
            addr,
            connections: 8,
            rate: 200.0,
            limit: None,
            request_timeout: Duration::from_secs(10),
            webhook: Arc::new(move |n| {
                let body = format!(
                    r#"{{"id":{n},"cart_token":"load-{run}-{n}","email":"load@example.com","total_price":"10.00"}}"#
                );
                let mut webhook = Webhook::new("orders/create", body.into_bytes(), &secret);
                webhook.webhook_id = format!("load-{run}-{n}");
                webhook
            }),
            new_connection_per_request: false,
        }
    }
}

/// Every answer, by outcome.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// Webhook ids answered 2xx.
    pub acknowledged: Vec<String>,
    /// Non-2xx answers by status.
    pub refused: BTreeMap<u16, u64>,
    /// No answer within the request timeout, or the connection failed.
    pub unanswered: u64,
    /// The slowest answer seen (any status), for the test's own bound.
    pub slowest: Duration,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.acknowledged.extend(other.acknowledged);
        for (status, n) in other.refused {
            *self.refused.entry(status).or_default() += n;
        }
        self.unanswered += other.unanswered;
        self.slowest = self.slowest.max(other.slowest);
    }

    /// The client's half of the books; call [`Accounting::reconcile`] with what Kafka holds.
    pub fn accounting(&self, name: &str) -> Accounting {
        let mut books = Accounting::new(name);
        books.sent = self.sent;
        books.acknowledged = self.acknowledged.len() as u64;
        books.refused = self.refused.clone();
        books.unanswered = self.unanswered;
        books
    }
}

/// A running load; [`LoadClient::stop`] or [`LoadClient::finish`] returns its report.
pub struct LoadClient {
    stop: CancellationToken,
    sent: Arc<AtomicU64>,
    acknowledged: Arc<AtomicU64>,
    workers: Vec<JoinHandle<LoadReport>>,
}

impl LoadClient {
    pub fn start(spec: LoadSpec) -> LoadClient {
        let stop = CancellationToken::new();
        let next = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let interval = Duration::from_secs_f64(spec.connections as f64 / spec.rate.max(0.001));
        let workers = (0..spec.connections)
            .map(|_| {
                tokio::spawn(worker(
                    spec.clone(),
                    interval,
                    next.clone(),
                    sent.clone(),
                    acknowledged.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        LoadClient {
            stop,
            sent,
            acknowledged,
            workers,
        }
    }

    /// Requests sent so far (answered or not).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Requests answered 2xx so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Stops sending (requests in flight still get their answer or time out) and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        self.finish().await
    }

    /// Waits until the workers are done (the limit reached, or stopped) and reports.
    pub async fn finish(self) -> LoadReport {
        let mut report = LoadReport::default();
        for worker in self.workers {
            report.merge(worker.await.expect("load worker does not panic"));
        }
        report
    }
}

async fn worker(
    spec: LoadSpec,
    interval: Duration,
    next: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    acknowledged: Arc<AtomicU64>,
    stop: CancellationToken,
) -> LoadReport {
    // One idle connection per worker: each worker is one client connection, kept alive (or
    // none, so every request connects anew).
    let idle = usize::from(!spec.new_connection_per_request);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build_http::<Full<Bytes>>();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = LoadReport::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        if spec.limit.is_some_and(|limit| n >= limit) {
            break;
        }
        let webhook = (spec.webhook)(n);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/webhooks/shopify", spec.addr));
        for (name, value) in webhook.headers() {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(webhook.body.clone())))
            .expect("valid request");
        report.sent += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(spec.request_timeout, async {
            let response = client.request(request).await.ok()?;
            let status = response.status();
            // Read the whole answer so the connection can be reused.
            response.into_body().collect().await.ok()?;
            Some(status)
        })
        .await;
        report.slowest = report.slowest.max(started.elapsed());
        match answer {
            Ok(Some(status)) if status.is_success() => {
                acknowledged.fetch_add(1, Ordering::Relaxed);
                report.acknowledged.push(webhook.webhook_id);
            }
            Ok(Some(status)) => *report.refused.entry(status.as_u16()).or_default() += 1,
            Ok(None) | Err(_) => report.unanswered += 1,
        }
    }
    report
}

/// The `shopify-webhook-id` header of every record of `topics`, one entry per record (so a
/// record published twice appears twice).
pub async fn webhook_ids_in(bootstrap: &str, topics: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for topic in topics {
        for record in crate::read_topic(bootstrap, topic).await {
            let id = record
                .header("shopify-webhook-id")
                .unwrap_or_else(|| panic!("a record of {topic} without shopify-webhook-id"));
            ids.push(id.to_string());
        }
    }
    ids
}

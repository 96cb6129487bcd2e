//! HTTP/2 (h2c, prior knowledge) with the deadlines hyper does not have: a first request within
//! the header timeout (a client that sends only the preface is cut), an idle timeout once no
//! request is in progress, PINGs to find dead peers, and a small stream limit.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Http2Config;
use crate::http::{handle, WebhookState};
use crate::metrics::IngressMetrics;

pub struct Http2 {
    builder: http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Http2 {
    pub fn new(limits: &Http2Config, max_header_bytes: usize, handshake_timeout: Duration) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_streams)
            .keep_alive_interval(limits.keep_alive)
            .keep_alive_timeout(limits.keep_alive);
        Self {
            builder,
            handshake_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// Serves one HTTP/2 connection until it ends or a deadline cuts it. A cut connection has
    /// no request in progress, so dropping it loses nothing.
    pub async fn serve(
        &self,
        stream: TcpStream,
        state: Arc<WebhookState>,
        watcher: Watcher,
        metrics: &IngressMetrics,
    ) {
        let activity = Arc::new(Activity::new());
        let service = {
            let activity = Arc::clone(&activity);
            service_fn(move |request| {
                let state = Arc::clone(&state);
                let busy = Activity::begin(&activity);
                async move {
                    let response = handle(state, request).await;
                    drop(busy);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        // Pinned out here so a cut is counted before the connection (and its socket) drops.
        let served = watcher.watch(connection);
        tokio::pin!(served);
        tokio::select! {
            served = &mut served => {
                if served.is_err_and(|error| error.is_timeout()) {
                    metrics.connection_cut("http2_keep_alive");
                }
            }
            reason = activity.expired(self.handshake_timeout, self.idle_timeout) => {
                metrics.connection_cut(reason);
            }
        }
    }
}

/// Requests in progress on one connection, and since when none is.
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    in_progress: usize,
    idle_since: Instant,
    /// Whether any request arrived yet (before it, the handshake deadline applies).
    served: bool,
}

/// One request in progress; the connection is idle again once every one is dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_progress: 0,
                idle_since: Instant::now(),
                served: false,
            }),
        }
    }

    fn begin(activity: &Arc<Activity>) -> Busy {
        let mut state = activity.lock();
        state.in_progress += 1;
        state.served = true;
        Busy(Arc::clone(activity))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves with the cut reason once the connection has been without a request for too
    /// long: `handshake` before its first request, `idle` after.
    async fn expired(&self, handshake: Duration, idle: Duration) -> &'static str {
        loop {
            let (deadline, reason) = {
                let state = self.lock();
                match (state.in_progress, state.served) {
                    (0, false) => (state.idle_since + handshake, Some("http2_handshake")),
                    (0, true) => (state.idle_since + idle, Some("http2_idle")),
                    _ => (Instant::now() + idle, None),
                }
            };
            tokio::time::sleep_until(deadline).await;
            // Only if nothing started meanwhile (a request resets the clock when it ends).
            let state = self.lock();
            if let (Some(reason), 0) = (reason, state.in_progress) {
                let limit = if state.served { idle } else { handshake };
                if state.idle_since + limit <= Instant::now() {
                    return reason;
                }
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_progress -= 1;
        if state.in_progress == 0 {
            state.idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_without_a_first_request_expires_at_the_handshake_deadline() {
        let activity = Activity::new();
        let started = Instant::now();
        let reason = activity
            .expired(Duration::from_millis(200), Duration::from_secs(30))
            .await;
        assert_eq!(reason, "http2_handshake");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_request_in_progress_keeps_the_connection_and_idleness_counts_from_its_end() {
        let activity = Arc::new(Activity::new());
        let busy = Activity::begin(&activity);
        let mut watcher = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move {
                activity
                    .expired(Duration::from_millis(100), Duration::from_millis(300))
                    .await
            })
        };
        // Twice both deadlines pass while the request is in progress: still open.
        let early = tokio::time::timeout(Duration::from_millis(700), &mut watcher).await;
        assert!(early.is_err(), "cut while a request was in progress");
        let ended = Instant::now();
        drop(busy);
        let reason = watcher.await.unwrap();
        assert_eq!(reason, "http2_idle");
        assert!(ended.elapsed() >= Duration::from_millis(300));
    }
}

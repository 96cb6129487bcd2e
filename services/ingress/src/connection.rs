//! One accepted connection: tells HTTP/1 from HTTP/2 by its first bytes, then serves it with
//! the limits of its protocol, or refuses HTTP/2 when it is off (the default).

mod http2;
mod linger;

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::Http2Config;
use crate::http::{handle, Reply, WebhookState};
use crate::metrics::IngressMetrics;
use crate::IngressConfig;

pub use linger::linger;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How each accepted connection is served; one per listener, shared by its connections.
pub struct Connections {
    http1: http1::Builder,
    http2: Option<http2::Http2>,
    /// Also the time an HTTP/2 client has to open its first stream.
    header_read_timeout: Duration,
    metrics: IngressMetrics,
}

/// What the first bytes of a connection say.
enum FirstBytes {
    /// Nothing (or only part of an HTTP/2 preface) within the header timeout, or gone.
    Silent,
    Http1,
    Http2,
}

impl Connections {
    pub fn new(config: &IngressConfig, metrics: IngressMetrics) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            // A head larger than the buffer is refused with 431 by hyper itself.
            .max_buf_size(config.max_header_bytes);
        Self {
            http1,
            http2: config.edge.http2.as_ref().map(|limits: &Http2Config| {
                http2::Http2::new(limits, config.max_header_bytes, config.header_read_timeout)
            }),
            header_read_timeout: config.header_read_timeout,
            metrics,
        }
    }

    /// Serves one connection until it ends; `permit` (its slot of AFTERCART_INGRESS_MAX_CONNECTIONS)
    /// is held until the socket is closed, lingering included.
    pub async fn serve(
        &self,
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        state: Arc<WebhookState>,
        watcher: Watcher,
    ) {
        let metrics = &self.metrics;
        match first_bytes(&stream, self.header_read_timeout).await {
            FirstBytes::Silent => metrics.connection_cut("idle"),
            FirstBytes::Http1 => {
                let service = service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, std::convert::Infallible>(handle(state, request).await) }
                });
                let io = linger::LingeringStream::new(stream, permit, metrics.clone());
                let connection = self.http1.serve_connection(TokioIo::new(io), service);
                // Client resets and protocol errors are the client's business; only the
                // limits the server enforces itself are counted.
                if let Err(error) = watcher.watch(connection).await {
                    if let Some(reason) = http1_cut_reason(&error) {
                        metrics.connection_cut(reason);
                    }
                }
            }
            FirstBytes::Http2 => match &self.http2 {
                Some(http2) => {
                    http2.serve(stream, state, watcher, metrics).await;
                    drop(permit);
                }
                None => {
                    refuse_http2(stream, metrics).await;
                    drop(permit);
                }
            },
        }
    }
}

/// HTTP/2 is off: an HTTP/1.1 400 the client may or may not understand, then a lingering
/// close, so the slot is free within seconds whatever the client does.
async fn refuse_http2(mut stream: TcpStream, metrics: &IngressMetrics) {
    metrics.connection_cut("http2_disabled");
    let answer = Reply::Http2Disabled.into_http1_closing_bytes();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&answer)).await;
    linger(stream, metrics).await;
}

/// Waits at most `timeout` for the client to send enough to tell HTTP/1 from HTTP/2. Without
/// this wait, a client that connects and says nothing would keep its connection slot forever:
/// no hyper timer runs before the first byte.
async fn first_bytes(stream: &TcpStream, timeout: Duration) -> FirstBytes {
    let wait = async {
        let mut buffer = [0u8; 24];
        loop {
            match stream.peek(&mut buffer).await {
                Ok(0) | Err(_) => return FirstBytes::Silent,
                Ok(n) if buffer[..n] != H2_PREFACE[..n] => return FirstBytes::Http1,
                Ok(n) if n >= H2_PREFACE.len() => return FirstBytes::Http2,
                // A partial HTTP/2 preface: peek again shortly (it returns at once on data
                // already seen).
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(FirstBytes::Silent)
}

/// The limit behind an HTTP/1 connection error, if the server cut the connection itself (a
/// head too large is answered 431 by hyper before it ends the connection).
fn http1_cut_reason(error: &hyper::Error) -> Option<&'static str> {
    if error.is_parse_too_large() {
        Some("header_too_large")
    } else if error.is_timeout() {
        Some("header_timeout")
    } else {
        None
    }
}

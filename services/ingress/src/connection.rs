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
    first_bytes_peeking(stream, timeout, &mut 0).await
}

/// First and longest pause between peeks at a partial HTTP/2 preface.
const PREFACE_POLL_FIRST: Duration = Duration::from_millis(10);
const PREFACE_POLL_MAX: Duration = Duration::from_millis(640);

/// [`first_bytes`], counting its peeks in `peeks`. A peek returns at once on bytes already
/// seen, so a partial preface is peeked at again after a pause that doubles each time: a real
/// client sends the 24 bytes in one segment, and thousands of connections trickling them must
/// not each wake the runtime every few milliseconds for the whole header timeout.
async fn first_bytes_peeking(stream: &TcpStream, timeout: Duration, peeks: &mut u32) -> FirstBytes {
    let wait = async {
        let mut buffer = [0u8; 24];
        let mut pause = PREFACE_POLL_FIRST;
        loop {
            *peeks += 1;
            match stream.peek(&mut buffer).await {
                Ok(0) | Err(_) => return FirstBytes::Silent,
                Ok(n) if buffer[..n] != H2_PREFACE[..n] => return FirstBytes::Http1,
                Ok(n) if n >= H2_PREFACE.len() => return FirstBytes::Http2,
                Ok(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(PREFACE_POLL_MAX);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A preface trickled in over three seconds is still told HTTP/2, after a few peeks, not
    /// one every 10 ms (≈ 300).
    #[tokio::test]
    async fn a_trickled_http2_preface_is_peeked_at_with_growing_pauses() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            socket.write_all(&H2_PREFACE[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            socket.write_all(&H2_PREFACE[5..]).await.unwrap();
            socket
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut peeks = 0;
        let seen = first_bytes_peeking(&stream, Duration::from_secs(10), &mut peeks).await;
        assert!(matches!(seen, FirstBytes::Http2));
        assert!(peeks <= 15, "{peeks} peeks");
        drop(client.await.unwrap());

        // And a plain HTTP/1 request is told at once.
        let client = tokio::spawn(async move {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            socket.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
            socket
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut peeks = 0;
        let seen = first_bytes_peeking(&stream, Duration::from_secs(10), &mut peeks).await;
        assert!(matches!(seen, FirstBytes::Http1));
        drop(client.await.unwrap());
    }
}

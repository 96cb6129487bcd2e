//! Lingering close, as nginx does it: half-close, then read and discard what the client is
//! still sending (bounded in bytes and time) before closing the socket.
//!
//! Closing a socket whose receive buffer holds unread bytes makes the kernel answer with a
//! reset, and a reset makes the client's kernel drop whatever it had received but not yet read.
//! A client that writes its whole request before reading (Python's http.client, most simple
//! clients) is still sending a body the ingress refused from its Content-Length (413, or 503
//! when the body budget is held), so without lingering it never sees the answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::metrics::IngressMetrics;

/// Longest a closing connection is kept to discard what the client still sends: a 4 MiB body
/// needs a client sending at 400 KiB/s. (nginx waits up to 30 s; the slot is held meanwhile.)
const LINGER_TIME: Duration = Duration::from_secs(10);
/// A client quiet this long has stopped sending (it is reading the answer): close.
const LINGER_QUIET: Duration = Duration::from_secs(3);
/// Most bytes discarded; beyond it the client gets the reset it asked for.
const LINGER_BYTES: usize = 32 << 20;

/// A TCP stream that lingers when dropped (its connection slot with it), unless the client
/// already closed its side.
pub struct LingeringStream {
    stream: Option<TcpStream>,
    /// The client sent EOF: nothing more can arrive, close at once.
    client_closed: bool,
    permit: Option<OwnedSemaphorePermit>,
    metrics: IngressMetrics,
}

impl LingeringStream {
    pub fn new(stream: TcpStream, permit: OwnedSemaphorePermit, metrics: IngressMetrics) -> Self {
        Self {
            stream: Some(stream),
            client_closed: false,
            permit: Some(permit),
            metrics,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("taken only on drop"))
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let (Some(stream), permit) = (self.stream.take(), self.permit.take()) else {
            return;
        };
        if self.client_closed {
            return;
        }
        // Outside a runtime (shutting down) there is nobody left to linger for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let metrics = self.metrics.clone();
            runtime.spawn(async move {
                linger(stream, &metrics).await;
                drop(permit);
            });
        }
    }
}

/// Half-closes `stream` (the client reads the answer, then EOF), discards what the client still
/// sends until it closes, goes quiet, or a limit is reached, then closes.
pub async fn linger(mut stream: TcpStream, metrics: &IngressMetrics) {
    let _ = stream.shutdown().await;
    let until = Instant::now() + LINGER_TIME;
    let mut buffer = [0u8; 8 << 10];
    let mut discarded = 0usize;
    loop {
        let wait = until.min(Instant::now() + LINGER_QUIET);
        match tokio::time::timeout_at(wait, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                discarded += n;
                if discarded > LINGER_BYTES {
                    metrics.connection_cut("linger_limit");
                    return;
                }
            }
            Err(_quiet_or_over) => {
                if Instant::now() >= until {
                    metrics.connection_cut("linger_limit");
                }
                return;
            }
        }
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.stream().poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            self.client_closed |= buf.remaining() > 0;
        }
        polled
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

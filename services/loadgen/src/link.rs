//! How requests reach the server: one keep-alive HTTP/1.1 connection per worker, or HTTP/2
//! (prior knowledge, as h2c) with the workers' requests multiplexed as streams over a few
//! shared connections.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over this many TCP connections, shared by all workers.
    Http2 {
        connections: usize,
    },
}

/// A worker's way to send one request at a time.
pub(crate) enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    pub(crate) async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
            Sender::Http2(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
        }
    }
}

/// Opens connections for the workers; HTTP/2 ones are shared round-robin and reopened once
/// closed, by whichever worker finds them so.
pub(crate) struct Connector {
    authority: String,
    protocol: Protocol,
    shared_http2: Vec<Mutex<Option<http2::SendRequest<Full<Bytes>>>>>,
}

impl Connector {
    pub(crate) fn new(authority: String, protocol: Protocol) -> Self {
        let shared = match protocol {
            Protocol::Http1 => 0,
            Protocol::Http2 { connections } => connections,
        };
        Self {
            authority,
            protocol,
            shared_http2: (0..shared).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// A sender for worker `index`, or `None` when the server cannot be reached.
    pub(crate) async fn connect(&self, index: usize) -> Option<Sender> {
        match self.protocol {
            Protocol::Http1 => {
                let io = self.tcp().await?;
                let (sender, conn) = http1::handshake(io).await.ok()?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Some(Sender::Http1(sender))
            }
            Protocol::Http2 { .. } => {
                let slot = &self.shared_http2[index % self.shared_http2.len()];
                let mut slot = slot.lock().await;
                if let Some(live) = slot.as_ref().filter(|s| !s.is_closed()) {
                    return Some(Sender::Http2(live.clone()));
                }
                let io = self.tcp().await?;
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.ok()?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                *slot = Some(sender.clone());
                Some(Sender::Http2(sender))
            }
        }
    }

    async fn tcp(&self) -> Option<TokioIo<TcpStream>> {
        let stream = TcpStream::connect(&self.authority).await.ok()?;
        // Small requests and answers: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        Some(TokioIo::new(stream))
    }
}

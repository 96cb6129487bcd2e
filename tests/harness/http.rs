//! A plain HTTP/1.1 client for talking to services over real sockets, and Shopify-style signing.

use std::net::SocketAddr;

use aftercart_shopify::{sign, Secret};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.body))
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request with the given headers and body.
pub async fn send(
    method: Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Response {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .expect("valid request");
    let response = client()
        .request(request)
        .await
        .expect("request reaches the server");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("answer body")
        .to_bytes();
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Response {
    send(Method::GET, addr, path, &[], Vec::new()).await
}

/// A webhook delivery as Shopify makes it.
#[derive(Clone)]
pub struct Webhook {
    pub topic: String,
    pub shop: String,
    pub webhook_id: String,
    pub body: Vec<u8>,
    pub secret: String,
}

impl Webhook {
    pub fn new(topic: &str, body: impl Into<Vec<u8>>, secret: &str) -> Self {
        Self {
            topic: topic.to_string(),
            shop: "jsmith.myshopify.com".to_string(),
            webhook_id: uuid::Uuid::new_v4().to_string(),
            body: body.into(),
            secret: secret.to_string(),
        }
    }

    /// The standard `X-Shopify-*` headers, signed over the body.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("content-type", "application/json".to_string()),
            ("x-shopify-topic", self.topic.clone()),
            ("x-shopify-shop-domain", self.shop.clone()),
            ("x-shopify-webhook-id", self.webhook_id.clone()),
            ("x-shopify-api-version", "2026-07".to_string()),
            (
                "x-shopify-triggered-at",
                "2026-11-23T05:00:00.000Z".to_string(),
            ),
            (
                "x-shopify-hmac-sha256",
                sign(&Secret::new(&self.secret), &self.body),
            ),
        ]
    }

    pub async fn post(&self, addr: SocketAddr) -> Response {
        self.post_with(addr, &self.headers()).await
    }

    pub async fn post_with(&self, addr: SocketAddr, headers: &[(&str, String)]) -> Response {
        send(
            Method::POST,
            addr,
            "/webhooks/shopify",
            headers,
            self.body.clone(),
        )
        .await
    }
}

/// Writes raw bytes to the server and returns what it answers until it closes or 5 s pass:
/// for requests a well-behaved client library would refuse to make.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything; a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buffer[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// What a client that writes its whole request before reading (Python's http.client, curl
/// without `Expect`) gets: `head`, then `body` in `chunk`-sized writes `pause` apart, then the
/// answer read until the server closes or 10 s pass. A write or read error (a reset) is
/// returned as such: it is what makes such clients lose an early answer.
pub async fn write_all_then_read(
    addr: SocketAddr,
    head: &[u8],
    body: &[u8],
    chunk: usize,
    pause: std::time::Duration,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(head).await?;
    for part in body.chunks(chunk) {
        stream.write_all(part).await?;
        tokio::time::sleep(pause).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    match read {
        Ok(Ok(_)) | Err(_) => Ok(String::from_utf8_lossy(&answer).into_owned()),
        Ok(Err(error)) => Err(error),
    }
}

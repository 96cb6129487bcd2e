//! A webhook receiver for delivery tests: a real HTTP server on 127.0.0.1:0 that answers from a
//! route (when one is set and matches), else from a script, then a settable default, and
//! records every request it got.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Answer only after this long (the request is recorded at once).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.to_string();
        self
    }
}

/// A request as the receiver got it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: http::Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub answered: u16,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn event_id(&self) -> &str {
        self.header("x-aftercart-event-id").unwrap_or_default()
    }
}

/// Picks the answer to a request by method and path-and-query; `None` falls back to the script.
pub type Route = Arc<dyn Fn(&http::Method, &str) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct State {
    route: Option<Route>,
    script: VecDeque<Reply>,
    default: Option<Reply>,
    received: Vec<Received>,
}

pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Answers `script` in order, then 200 (see [`Receiver::answer_by_default`]).
    pub async fn start(script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/hooks/aftercart",
            listener.local_addr().expect("addr")
        );
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            ..State::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let at = Instant::now();
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes().to_vec();
                        let uri = parts
                            .uri
                            .path_and_query()
                            .map_or_else(String::new, |p| p.as_str().to_string());
                        let reply = {
                            let mut state = state.lock().expect("receiver lock");
                            let routed = state.route.as_ref().and_then(|r| r(&parts.method, &uri));
                            let reply = match routed.or_else(|| state.script.pop_front()) {
                                Some(reply) => reply,
                                None => state.default.clone().unwrap_or(Reply::status(200)),
                            };
                            state.received.push(Received {
                                method: parts.method.clone(),
                                uri,
                                headers: parts.headers,
                                body,
                                answered: reply.status,
                                at,
                            });
                            reply
                        };
                        tokio::time::sleep(reply.delay).await;
                        let mut response = Response::builder().status(reply.status);
                        for (name, value) in &reply.headers {
                            response = response.header(name, value);
                        }
                        Ok::<_, hyper::Error>(
                            response
                                .body(Full::new(Bytes::from(reply.body)))
                                .expect("response"),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Receiver { url, state }
    }

    /// Answers requests `route` picks, before the script.
    pub fn route(&self, route: Route) {
        self.state.lock().expect("receiver lock").route = Some(route);
    }

    /// The base URL (`http://127.0.0.1:<port>`), for services that build their own paths.
    pub fn base(&self) -> String {
        self.url.trim_end_matches("/hooks/aftercart").to_string()
    }

    /// What to answer once the script is used up.
    pub fn answer_by_default(&self, reply: Reply) {
        self.state.lock().expect("receiver lock").default = Some(reply);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("receiver lock").received.clone()
    }

    /// The requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }
}

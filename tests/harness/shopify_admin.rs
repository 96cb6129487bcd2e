//! A stand-in for the Shopify Admin GraphQL API: a real HTTP server on 127.0.0.1:0 at
//! `/{shop}/admin/api/{version}/graphql.json` that checks `X-Shopify-Access-Token` (401 when
//! wrong), keeps code discounts, segments and store credits in memory, and answers as Shopify
//! does: `userErrors` with `TAKEN` for a code that exists, `THROTTLED` with
//! `extensions.cost.throttleStatus` when told to, and 5xx while told to be down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A discount as the stand-in keeps it.
#[derive(Debug, Clone)]
pub struct StoredDiscount {
    pub shop: String,
    pub id: String,
    pub code: String,
    /// The `basicCodeDiscount` input, as sent.
    pub input: Value,
    /// `ACTIVE` or, once deactivated, `EXPIRED`.
    pub status: String,
    pub created: SystemTime,
}

/// A store credit as the stand-in keeps it.
#[derive(Debug, Clone)]
pub struct StoredCredit {
    pub shop: String,
    pub customer: String,
    pub amount: String,
    pub currency: String,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, String>,
    discounts: Vec<StoredDiscount>,
    credits: Vec<StoredCredit>,
    /// (shop, name, query, id), in creation order.
    segments: Vec<(String, String, String, String)>,
    /// Answer this status to the next N calls (any operation).
    down: Option<(u16, usize)>,
    /// Once this many store credits were made, answer this status to every call.
    down_after_credits: Option<(usize, u16)>,
    /// Create the next N discounts but answer 503, as when an answer is lost.
    lose_answers: usize,
    /// Credit the next N store credits but answer 503, as when an answer is lost.
    lose_credit_answers: usize,
    throttle_next: usize,
    /// Answered once, with this status, by the call after the last throttled one.
    fail_after_throttles: Option<u16>,
    /// Refuse creates with this userError message.
    refuse_creates: Option<String>,
    /// (shop, operation, status) of every call.
    calls: Vec<(String, String, u16)>,
    next_id: u64,
}

pub struct ShopifyAdmin {
    pub base: String,
    state: Arc<Mutex<State>>,
}

fn operation(query: &str) -> &'static str {
    for (needle, name) in [
        ("discountCodeBasicCreate", "discountCodeBasicCreate"),
        ("codeDiscountNodeByCode", "codeDiscountNodeByCode"),
        ("discountCodeDeactivate", "discountCodeDeactivate"),
        ("storeCreditAccountCredit", "storeCreditAccountCredit"),
        ("segmentCreate", "segmentCreate"),
        ("segments(", "segments"),
    ] {
        if query.contains(needle) {
            return name;
        }
    }
    "unknown"
}

fn cost(available: f64) -> Value {
    json!({"cost": {"requestedQueryCost": 10, "actualQueryCost": 10,
        "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": available, "restoreRate": 100.0}}})
}

impl State {
    fn add_segment(&mut self, shop: &str, name: &str, query: &str) -> String {
        self.next_id += 1;
        let id = format!("gid://shopify/Segment/{}", self.next_id);
        self.segments
            .push((shop.into(), name.into(), query.into(), id.clone()));
        id
    }

    fn answer(&mut self, shop: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
        if let Some((credits, status)) = self.down_after_credits {
            if self.credits.len() >= credits {
                return (status, json!({"errors": "Service unavailable"}));
            }
        }
        if let Some((status, left)) = self.down.as_mut() {
            if *left > 0 {
                *left -= 1;
                return (*status, json!({"errors": "Service unavailable"}));
            }
        }
        if token.is_none() || self.tokens.get(shop).map(String::as_str) != token {
            return (
                401,
                json!({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}),
            );
        }
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return (400, json!({"errors": "body is not JSON"}));
        };
        let query = request["query"].as_str().unwrap_or_default();
        let variables = &request["variables"];
        if self.throttle_next > 0 {
            self.throttle_next -= 1;
            if self.throttle_next == 0 {
                if let Some(status) = self.fail_after_throttles.take() {
                    self.down = Some((status, 1));
                }
            }
            return (
                200,
                json!({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": {"requestedQueryCost": 10, "actualQueryCost": null,
                    "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 0, "restoreRate": 100.0}}}}),
            );
        }
        let data = match operation(query) {
            "discountCodeBasicCreate" => {
                let input = &variables["basicCodeDiscount"];
                let code = input["code"].as_str().unwrap_or_default().to_string();
                let mut errors = Vec::new();
                for field in ["code", "title", "context", "customerGets"] {
                    if input[field].is_null() {
                        errors.push(json!({"field": ["basicCodeDiscount", field], "code": "BLANK", "message": format!("{field} can't be blank")}));
                    }
                }
                if let Some(message) = &self.refuse_creates {
                    errors.push(json!({"field": ["basicCodeDiscount", "customerGets"], "code": "INVALID", "message": message}));
                }
                let taken = self
                    .discounts
                    .iter()
                    .any(|d| d.shop == shop && d.code.eq_ignore_ascii_case(&code));
                if taken {
                    errors.push(json!({"field": ["basicCodeDiscount", "code"], "code": "TAKEN", "message": "Code must be unique. Please try a different code."}));
                }
                if errors.is_empty() {
                    self.next_id += 1;
                    let id = format!("gid://shopify/DiscountCodeNode/{}", self.next_id);
                    self.discounts.push(StoredDiscount {
                        shop: shop.to_string(),
                        id: id.clone(),
                        code,
                        input: input.clone(),
                        status: "ACTIVE".to_string(),
                        created: SystemTime::now(),
                    });
                    if self.lose_answers > 0 {
                        self.lose_answers -= 1;
                        return (503, json!({"errors": "upstream timed out"}));
                    }
                    json!({"discountCodeBasicCreate": {"codeDiscountNode": {"id": id}, "userErrors": []}})
                } else {
                    json!({"discountCodeBasicCreate": {"codeDiscountNode": null, "userErrors": errors}})
                }
            }
            "codeDiscountNodeByCode" => {
                let code = variables["code"].as_str().unwrap_or_default();
                let found = self
                    .discounts
                    .iter()
                    .find(|d| d.shop == shop && d.code.eq_ignore_ascii_case(code))
                    .map(|d| json!({"id": d.id}));
                json!({"codeDiscountNodeByCode": found})
            }
            "discountCodeDeactivate" => {
                let id = variables["id"].as_str().unwrap_or_default();
                match self
                    .discounts
                    .iter_mut()
                    .find(|d| d.shop == shop && d.id == id)
                {
                    Some(d) => {
                        d.status = "EXPIRED".to_string();
                        json!({"discountCodeDeactivate": {"codeDiscountNode": {"id": id}, "userErrors": []}})
                    }
                    None => json!({"discountCodeDeactivate": {"codeDiscountNode": null,
                        "userErrors": [{"field": ["id"], "code": "INVALID", "message": "Discount does not exist"}]}}),
                }
            }
            "storeCreditAccountCredit" => {
                let amount = &variables["creditInput"]["creditAmount"];
                self.next_id += 1;
                self.credits.push(StoredCredit {
                    shop: shop.to_string(),
                    customer: variables["id"].as_str().unwrap_or_default().to_string(),
                    amount: amount["amount"].as_str().unwrap_or_default().to_string(),
                    currency: amount["currencyCode"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                });
                if self.lose_credit_answers > 0 {
                    self.lose_credit_answers -= 1;
                    return (503, json!({"errors": "upstream timed out"}));
                }
                json!({"storeCreditAccountCredit": {"storeCreditAccountTransaction": {"id": format!("gid://shopify/StoreCreditAccountCreditTransaction/{}", self.next_id)}, "userErrors": []}})
            }
            "segmentCreate" => {
                let name = variables["name"].as_str().unwrap_or_default().to_string();
                let query = variables["query"].as_str().unwrap_or_default().to_string();
                // Segment names are unique in a shop.
                if self
                    .segments
                    .iter()
                    .any(|(s, n, ..)| s == shop && *n == name)
                {
                    json!({"segmentCreate": {"segment": null,
                        "userErrors": [{"field": ["name"], "message": "Name has already been taken"}]}})
                } else {
                    let id = self.add_segment(shop, &name, &query);
                    json!({"segmentCreate": {"segment": {"id": id}, "userErrors": []}})
                }
            }
            // The shop's segments in creation order, `first` of them; the search `query` is not
            // relied on to filter by name (the caller must match names itself).
            "segments" => {
                let first = variables["first"]
                    .as_u64()
                    .or_else(|| {
                        query
                            .split("first:")
                            .nth(1)
                            .and_then(|r| r.trim().split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|n| n.parse().ok())
                    })
                    .unwrap_or(50) as usize;
                let nodes: Vec<Value> = self
                    .segments
                    .iter()
                    .filter(|(s, ..)| s == shop)
                    .take(first)
                    .map(|(_, name, _, id)| json!({"id": id, "name": name}))
                    .collect();
                json!({"segments": {"nodes": nodes}})
            }
            _ => {
                return (
                    200,
                    json!({"errors": [{"message": "Field doesn't exist", "extensions": {"code": "undefinedField"}}]}),
                )
            }
        };
        (200, json!({"data": data, "extensions": cost(1990.0)}))
    }
}

impl ShopifyAdmin {
    /// Serves `tokens` (shop → token).
    pub async fn start(tokens: &[(&str, &str)]) -> ShopifyAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            tokens: tokens
                .iter()
                .map(|(s, t)| (s.to_string(), t.to_string()))
                .collect(),
            ..State::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let path = parts.uri.path().to_string();
                        let shop = path
                            .trim_start_matches('/')
                            .split('/')
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let token = parts
                            .headers
                            .get("x-shopify-access-token")
                            .and_then(|v| v.to_str().ok());
                        let (status, answer) = if parts.method != http::Method::POST
                            || !path.ends_with("/graphql.json")
                            || !path.contains("/admin/api/")
                        {
                            (404, json!({"errors": "Not Found"}))
                        } else {
                            let mut state = state.lock().expect("stand-in lock");
                            let query: Value = serde_json::from_slice(&body).unwrap_or_default();
                            let op = operation(query["query"].as_str().unwrap_or_default());
                            let (status, answer) = state.answer(&shop, token, &body);
                            state.calls.push((shop.clone(), op.to_string(), status));
                            (status, answer)
                        };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer.to_string())))
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
        ShopifyAdmin { base, state }
    }

    /// The URL template for `AFTERCART_SHOPIFY_ADMIN_URL`.
    pub fn url_template(&self) -> String {
        format!("{}/{{shop}}/admin/api/{{version}}/graphql.json", self.base)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("stand-in lock"))
    }

    /// Answers `status` to the next `calls` calls.
    pub fn fail_next(&self, calls: usize, status: u16) {
        self.with(|s| s.down = Some((status, calls)));
    }

    /// Creates the next `count` discounts but answers 503 (a lost answer).
    pub fn lose_next_answers(&self, count: usize) {
        self.with(|s| s.lose_answers = count);
    }

    /// Credits the next `count` store credits but answers 503 (a lost answer).
    pub fn lose_next_credit_answers(&self, count: usize) {
        self.with(|s| s.lose_credit_answers = count);
    }

    /// Once `credits` store credits were made, answers `status` to every call (Shopify going
    /// down in the middle of a batch); `None` serves again.
    pub fn down_after_credits(&self, after: Option<(usize, u16)>) {
        self.with(|s| s.down_after_credits = after);
    }

    /// Throttles the next `calls` calls, then answers the one after them `status`.
    pub fn throttle_then_fail(&self, calls: usize, status: u16) {
        self.with(|s| {
            s.throttle_next = calls;
            s.fail_after_throttles = Some(status);
        });
    }

    pub fn throttle_next(&self, calls: usize) {
        self.with(|s| s.throttle_next = calls);
    }

    pub fn refuse_creates(&self, message: Option<&str>) {
        self.with(|s| s.refuse_creates = message.map(str::to_string));
    }

    pub fn set_token(&self, shop: &str, token: &str) {
        self.with(|s| s.tokens.insert(shop.to_string(), token.to_string()));
    }

    pub fn discounts(&self) -> Vec<StoredDiscount> {
        self.with(|s| s.discounts.clone())
    }

    /// The discounts with `code` in `shop` (more than one would be a duplicate).
    pub fn with_code(&self, shop: &str, code: &str) -> Vec<StoredDiscount> {
        self.discounts()
            .into_iter()
            .filter(|d| d.shop == shop && d.code.eq_ignore_ascii_case(code))
            .collect()
    }

    pub fn credits(&self) -> Vec<StoredCredit> {
        self.with(|s| s.credits.clone())
    }

    /// A segment that exists in `shop` already (the merchant's, or one made before a restart).
    pub fn add_segment(&self, shop: &str, name: &str, query: &str) -> String {
        self.with(|s| s.add_segment(shop, name, query))
    }

    /// (shop, name, query, id) of every segment.
    pub fn segments(&self) -> Vec<(String, String, String, String)> {
        self.with(|s| s.segments.clone())
    }

    /// Calls of `operation` answered `status` (any status when `None`).
    pub fn calls(&self, operation: &str, status: Option<u16>) -> usize {
        self.with(|s| {
            s.calls
                .iter()
                .filter(|(_, op, st)| op == operation && status.is_none_or(|want| *st == want))
                .count()
        })
    }
}

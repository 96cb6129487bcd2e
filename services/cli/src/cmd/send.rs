//! `aftercart send`: sign payloads exactly as Shopify does and deliver them to an ingress.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aftercart_shopify::{sign, Secret};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::cmd::dev::DEV_SECRET;
use crate::samples::{demo_journey, sample, topic_for_stem, SAMPLES};

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// JSON files to send; the topic is taken from the file name (orders_paid.json is
    /// orders/paid) unless --topic is given.
    pub files: Vec<PathBuf>,

    /// Send a built-in Shopify sample by name, e.g. orders_paid (repeatable; see --list).
    #[arg(long = "sample")]
    pub samples: Vec<String>,

    /// Send the demo: a purchase (cart, checkout, order delivered twice, paid, shipped, out for
    /// delivery, delivered), an abandoned checkout, and a friend's first order with the buyer's referral code, with fresh ids.
    #[arg(long)]
    pub demo: bool,

    /// List the built-in samples and exit.
    #[arg(long)]
    pub list: bool,

    /// Ingress webhook URL (plain HTTP).
    #[arg(
        long = "send-url",
        alias = "url",
        env = "AFTERCART_SEND_URL",
        default_value = "http://127.0.0.1:8080/webhooks/shopify"
    )]
    pub url: String,

    /// Signing secrets; the first is used. Defaults to the dev stack's secret.
    #[arg(
        long = "shopify-secrets",
        alias = "secret",
        env = "AFTERCART_SHOPIFY_SECRETS",
        hide_env_values = true
    )]
    pub secret: Option<String>,

    /// Shop domain header.
    #[arg(long, default_value = "aftercart-demo.myshopify.com")]
    pub shop: String,

    /// Webhook topic header, overriding the file name.
    #[arg(long)]
    pub topic: Option<String>,

    /// Webhook id header (default: a fresh UUID per delivery). Reuse one to test dedupe.
    #[arg(long)]
    pub webhook_id: Option<String>,

    /// API version header.
    #[arg(long, default_value = "2026-07")]
    pub api_version: String,
}

/// One delivery to make.
struct Delivery {
    label: String,
    topic: String,
    body: Vec<u8>,
    webhook_id: String,
    /// Waited before sending (the demo lets the referral invite land before the friend orders).
    pause: std::time::Duration,
}

pub async fn run(args: SendArgs) -> i32 {
    if args.list {
        for (stem, topic, _) in SAMPLES {
            println!("{stem:<24} {topic}");
        }
        return 0;
    }
    let deliveries = match plan(&args) {
        Ok(deliveries) if !deliveries.is_empty() => deliveries,
        Ok(_) => {
            eprintln!("nothing to send: give files, --sample NAME or --demo (see --help)");
            return aftercart_runtime::EX_USAGE;
        }
        Err(problem) => {
            eprintln!("{problem}");
            return aftercart_runtime::EX_USAGE;
        }
    };
    let secret_list = args
        .secret
        .clone()
        .unwrap_or_else(|| DEV_SECRET.to_string());
    let secret = Secret::new(
        secret_list
            .split(',')
            .map(str::trim)
            .find(|s| !s.is_empty())
            .unwrap_or(DEV_SECRET),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut failures = 0;
    for delivery in deliveries {
        tokio::time::sleep(delivery.pause).await;
        match deliver(&client, &args, &secret, &delivery).await {
            Ok((status, answer)) => {
                println!(
                    "{:<3} {:<22} {:<48} {}",
                    status.as_u16(),
                    delivery.topic,
                    delivery.label,
                    answer.trim()
                );
                if !status.is_success() {
                    failures += 1;
                }
            }
            Err(error) => {
                println!("ERR {:<22} {:<48} {error}", delivery.topic, delivery.label);
                failures += 1;
            }
        }
    }
    i32::from(failures > 0)
}

fn plan(args: &SendArgs) -> Result<Vec<Delivery>, String> {
    let mut deliveries = Vec::new();
    let fresh_id = || {
        args.webhook_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    };
    for path in &args.files {
        let body =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let topic = match (&args.topic, topic_for_stem(stem)) {
            (Some(topic), _) => topic.clone(),
            (None, Some(topic)) => topic.to_string(),
            (None, None) => {
                return Err(format!(
                    "cannot tell the topic of {}: pass --topic",
                    path.display()
                ))
            }
        };
        deliveries.push(Delivery {
            pause: std::time::Duration::ZERO,
            label: path.display().to_string(),
            topic,
            body,
            webhook_id: fresh_id(),
        });
    }
    for name in &args.samples {
        let (topic, body) =
            sample(name).ok_or_else(|| format!("no built-in sample {name:?} (see --list)"))?;
        let topic = args.topic.clone().unwrap_or_else(|| topic.to_string());
        // The compliance samples name their shop `{shop}.myshopify.com`: the ingress checks
        // that name against the shop header, so fill in the shop the delivery comes from.
        let body = String::from_utf8_lossy(body)
            .replace("{shop}.myshopify.com", &args.shop)
            .into_bytes();
        deliveries.push(Delivery {
            label: format!("sample {name}"),
            topic,
            body,
            webhook_id: fresh_id(),
            pause: std::time::Duration::ZERO,
        });
    }
    if args.demo {
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        for step in demo_journey(&run, &now, &args.shop) {
            let webhook_id = uuid::Uuid::new_v4().to_string();
            let times = if step.redeliver { 2 } else { 1 };
            for attempt in 0..times {
                let label = if attempt == 0 {
                    step.note.to_string()
                } else {
                    format!("{} (redelivery)", step.note)
                };
                deliveries.push(Delivery {
                    label,
                    topic: step.topic.to_string(),
                    body: step.body.clone(),
                    webhook_id: webhook_id.clone(),
                    pause: if attempt == 0 {
                        step.pause
                    } else {
                        std::time::Duration::ZERO
                    },
                });
            }
        }
    }
    Ok(deliveries)
}

async fn deliver(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    args: &SendArgs,
    secret: &Secret,
    delivery: &Delivery,
) -> Result<(StatusCode, String), String> {
    let request = Request::post(&args.url)
        .header("content-type", "application/json")
        .header("x-shopify-topic", &delivery.topic)
        .header("x-shopify-shop-domain", &args.shop)
        .header("x-shopify-api-version", &args.api_version)
        .header("x-shopify-webhook-id", &delivery.webhook_id)
        .header(
            "x-shopify-triggered-at",
            humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        )
        .header("x-shopify-hmac-sha256", sign(secret, &delivery.body))
        .body(Full::new(Bytes::from(delivery.body.clone())))
        .map_err(|e| format!("invalid request: {e}"))?;
    // Shopify's own budget: 5 s for the whole request.
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .map_err(|_| "no answer within Shopify's 5 s timeout".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

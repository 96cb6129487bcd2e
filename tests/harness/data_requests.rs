//! Reading the answers to `customers/data_request` back as the merchant's process would: every
//! report valid against `schemas/aftercart/data-requests.schema.json` and under its event id.

use std::time::Duration;

use serde_json::Value;

use crate::schemas::assert_valid;
use crate::{eventually, read_topic};

/// Every report on `topic`.
pub async fn reports(bootstrap: &str, topic: &str) -> Vec<Value> {
    read_topic(bootstrap, topic)
        .await
        .iter()
        .map(|record| {
            let value: Value = serde_json::from_slice(&record.value).expect("JSON report");
            assert_valid("aftercart/data-requests.schema.json", &value);
            assert_eq!(
                record.header("aftercart-event-id"),
                value["event_id"].as_str()
            );
            value
        })
        .collect()
}

/// The reports answering Shopify's request `id`, once there is at least one.
pub async fn answers_to(bootstrap: &str, topic: &str, id: u64) -> Vec<Value> {
    eventually("the answer", Duration::from_secs(60), || async {
        let answers: Vec<Value> = reports(bootstrap, topic)
            .await
            .into_iter()
            .filter(|r| r["data_request_id"] == id)
            .collect();
        (!answers.is_empty()).then_some(answers)
    })
    .await
}

/// The kinds of a report's holdings, in order.
pub fn kinds(report: &Value) -> Vec<&str> {
    report["holdings"]
        .as_array()
        .expect("holdings")
        .iter()
        .map(|h| h["kind"].as_str().expect("a kind"))
        .collect()
}

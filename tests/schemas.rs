//! The JSON Schemas in `schemas/` accept every Shopify sample payload and reject broken ones, so
//! the integration tests that validate Kafka records against them can fail for real.

use aftercart_tests::schemas::assert_valid;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/shopify");

fn fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/{name}")).unwrap()).unwrap()
}

fn rejects(schema: &str, instance: &Value) -> bool {
    std::panic::catch_unwind(|| assert_valid(schema, instance)).is_err()
}

#[test]
fn every_sample_payload_validates_against_its_family_schema() {
    let cases = [
        ("carts_update.json", "carts"),
        ("checkouts_create.json", "checkouts"),
        ("checkouts_update.json", "checkouts"),
        ("checkouts_delete.json", "checkouts"),
        ("orders_create.json", "orders"),
        ("orders_paid.json", "orders"),
        ("fulfillments_create.json", "fulfillments"),
        ("fulfillments_update.json", "fulfillments"),
        ("fulfillment_events_create.json", "fulfillments"),
        ("customers_data_request.json", "compliance"),
        ("customers_redact.json", "compliance"),
        ("shop_redact.json", "compliance"),
        ("app_uninstalled.json", "compliance"),
    ];
    for (file, family) in cases {
        assert_valid(&format!("shopify/{family}.schema.json"), &fixture(file));
    }
}

#[test]
fn broken_payloads_are_rejected() {
    let mut checkout = fixture("checkouts_create.json");
    checkout.as_object_mut().unwrap().remove("token");
    assert!(
        rejects("shopify/checkouts.schema.json", &checkout),
        "a checkout without token or id"
    );

    let mut event = fixture("fulfillment_events_create.json");
    event.as_object_mut().unwrap().remove("order_id");
    assert!(
        rejects("shopify/fulfillments.schema.json", &event),
        "a fulfillment event without its order"
    );

    let mut order = fixture("orders_create.json");
    order["id"] = json!("820982911946154508");
    assert!(
        rejects("shopify/orders.schema.json", &order),
        "an order id as a string"
    );

    let mut order = fixture("orders_create.json");
    order["total_price"] = json!(10.5);
    assert!(
        rejects("shopify/orders.schema.json", &order),
        "money as a float"
    );

    assert!(
        rejects("shopify/carts.schema.json", &json!({"line_items": []})),
        "a cart without token"
    );
    assert!(
        rejects("shopify/compliance.schema.json", &json!("text")),
        "a non-object"
    );
}

#[test]
fn the_header_contract_requires_the_delivery_headers() {
    let complete = json!({
        "shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "shopify-topic": "orders/create",
        "shopify-shop-domain": "jsmith.myshopify.com",
        "shopify-hmac-sha256": "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=",
        "aftercart-received-at": "2026-11-23T05:04:19.123Z",
        "aftercart-hmac-secret": "global:0"
    });
    assert_valid("kafka/record-headers.schema.json", &complete);
    let mut without_id = complete.clone();
    without_id
        .as_object_mut()
        .unwrap()
        .remove("shopify-webhook-id");
    assert!(rejects("kafka/record-headers.schema.json", &without_id));
    let mut with_secret = complete.clone();
    with_secret["aftercart-hmac-secret"] = json!("the-actual-secret");
    assert!(
        rejects("kafka/record-headers.schema.json", &with_secret),
        "only an index may name the secret"
    );
}

#[test]
fn the_delivery_dead_letter_contract_tells_refusals_from_exhausted_retries() {
    const SCHEMA: &str = "kafka/delivery-dead-letter-headers.schema.json";
    let refused = json!({
        "aftercart-event-id": "evt-1",
        "x-origin": "copied from the source record",
        "aftercart-dead-letter-reason": "http_status_400",
        "aftercart-dead-letter-source": "aftercart.referrals/3/1042",
        "aftercart-http-attempts": "1",
        "aftercart-http-status": "400",
        "aftercart-http-response": "{\"error\":\"unknown referral code\"}"
    });
    assert_valid(SCHEMA, &refused);
    let timed_out = json!({
        "aftercart-dead-letter-reason": "retries_exhausted",
        "aftercart-dead-letter-source": "aftercart.referrals/0/7",
        "aftercart-http-attempts": "12",
        "aftercart-http-error": "timeout"
    });
    assert_valid(SCHEMA, &timed_out);

    let mut without_status = refused.clone();
    let fields = without_status.as_object_mut().unwrap();
    fields.remove("aftercart-http-status");
    fields.remove("aftercart-http-response");
    assert!(
        rejects(SCHEMA, &without_status),
        "a refusal names its status"
    );
    let mut both = timed_out.clone();
    both["aftercart-http-status"] = json!("503");
    both["aftercart-http-response"] = json!("");
    assert!(rejects(SCHEMA, &both), "an answer and no answer at once");
    let mut bad_source = refused.clone();
    bad_source["aftercart-dead-letter-source"] = json!("aftercart.referrals");
    assert!(rejects(SCHEMA, &bad_source));
    let mut unknown_reason = refused.clone();
    unknown_reason["aftercart-dead-letter-reason"] = json!("it broke");
    assert!(rejects(SCHEMA, &unknown_reason));
    // Refused before any request: the why, and nothing of an HTTP exchange.
    let unsent = json!({
        "aftercart-dead-letter-reason": "refused",
        "aftercart-dead-letter-source": "aftercart.nudges/1/9",
        "aftercart-refusal": "no Klaviyo key for the shop"
    });
    assert_valid(SCHEMA, &unsent);
    let mut unexplained = unsent.clone();
    unexplained
        .as_object_mut()
        .unwrap()
        .remove("aftercart-refusal");
    assert!(rejects(SCHEMA, &unexplained), "a refusal says why");
    let mut with_attempts = unsent.clone();
    with_attempts["aftercart-http-attempts"] = json!("1");
    assert!(
        rejects(SCHEMA, &with_attempts),
        "no HTTP exchange to report"
    );
    let mut stray = timed_out.clone();
    stray["aftercart-refusal"] = json!("why");
    assert!(rejects(SCHEMA, &stray), "only a refusal explains itself");
}

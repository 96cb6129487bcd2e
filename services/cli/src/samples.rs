//! Shopify's documentation sample payloads, built into the binary, and the demo journey made
//! from them (fresh tokens and ids each run, so every demo is a new purchase).

use std::time::Duration;

use aftercart_referrals::domain::code::CodeRules;
use serde_json::{json, Value};

use crate::cmd::dev::DEV_CODE_SECRET;

/// (file stem, webhook topic, bytes) of every built-in sample.
pub const SAMPLES: &[(&str, &str, &[u8])] = &[
    (
        "app_uninstalled",
        "app/uninstalled",
        include_bytes!("../../../fixtures/shopify/app_uninstalled.json"),
    ),
    (
        "carts_update",
        "carts/update",
        include_bytes!("../../../fixtures/shopify/carts_update.json"),
    ),
    (
        "checkouts_create",
        "checkouts/create",
        include_bytes!("../../../fixtures/shopify/checkouts_create.json"),
    ),
    (
        "checkouts_delete",
        "checkouts/delete",
        include_bytes!("../../../fixtures/shopify/checkouts_delete.json"),
    ),
    (
        "checkouts_update",
        "checkouts/update",
        include_bytes!("../../../fixtures/shopify/checkouts_update.json"),
    ),
    (
        "customers_data_request",
        "customers/data_request",
        include_bytes!("../../../fixtures/shopify/customers_data_request.json"),
    ),
    (
        "customers_redact",
        "customers/redact",
        include_bytes!("../../../fixtures/shopify/customers_redact.json"),
    ),
    (
        "fulfillment_events_create",
        "fulfillment_events/create",
        include_bytes!("../../../fixtures/shopify/fulfillment_events_create.json"),
    ),
    (
        "fulfillments_create",
        "fulfillments/create",
        include_bytes!("../../../fixtures/shopify/fulfillments_create.json"),
    ),
    (
        "fulfillments_update",
        "fulfillments/update",
        include_bytes!("../../../fixtures/shopify/fulfillments_update.json"),
    ),
    (
        "orders_create",
        "orders/create",
        include_bytes!("../../../fixtures/shopify/orders_create.json"),
    ),
    (
        "orders_paid",
        "orders/paid",
        include_bytes!("../../../fixtures/shopify/orders_paid.json"),
    ),
    (
        "shop_redact",
        "shop/redact",
        include_bytes!("../../../fixtures/shopify/shop_redact.json"),
    ),
];

/// Webhook topics whose file names can be recognised (`orders_paid.json` is `orders/paid`).
const KNOWN_TOPICS: &[&str] = &[
    "app/uninstalled",
    "carts/create",
    "carts/update",
    "checkouts/create",
    "checkouts/update",
    "checkouts/delete",
    "customers/create",
    "customers/update",
    "customers/delete",
    "customers/data_request",
    "customers/redact",
    "customers_email_marketing_consent/update",
    "customers_marketing_consent/update",
    "orders/create",
    "orders/updated",
    "orders/paid",
    "orders/fulfilled",
    "orders/partially_fulfilled",
    "orders/cancelled",
    "orders/delete",
    "refunds/create",
    "fulfillments/create",
    "fulfillments/update",
    "fulfillment_events/create",
    "shop/redact",
];

/// The sample named `stem` (e.g. `orders_paid`).
pub fn sample(stem: &str) -> Option<(&'static str, &'static [u8])> {
    SAMPLES
        .iter()
        .find(|(s, _, _)| *s == stem)
        .map(|(_, topic, bytes)| (*topic, *bytes))
}

/// The webhook topic a file stem names, if it names one (`customers_data_request` →
/// `customers/data_request`).
pub fn topic_for_stem(stem: &str) -> Option<&'static str> {
    KNOWN_TOPICS
        .iter()
        .copied()
        .find(|topic| topic.replace('/', "_") == stem)
}

/// One webhook of the demo.
pub struct DemoStep {
    pub topic: &'static str,
    pub body: Vec<u8>,
    /// Sent twice with the same webhook id, as Shopify's retries are.
    pub redeliver: bool,
    pub note: &'static str,
    /// Waited before sending.
    pub pause: Duration,
}

/// The referral code the dev stack gives `customer_id` of `shop` (its code secret is fixed).
pub fn dev_referral_code(shop: &str, customer_id: u64) -> String {
    let rules = CodeRules {
        secret: DEV_CODE_SECRET.as_bytes().to_vec(),
        prefix: "REF-".to_string(),
        sources: Vec::new(),
        url_parameter: String::new(),
        note_attributes: Vec::new(),
        share_url: String::new(),
    };
    rules.code_for(&shop.to_ascii_lowercase(), &format!("id:{customer_id}"))
}

/// A realistic journey: a purchase (cart → checkout → order), shipped, out for delivery and
/// delivered, an abandoned checkout (nudged), a friend's first order carrying the buyer's
/// referral code, and a buyer who leaves a checkout and orders through another cart (never
/// nudged).
pub fn demo_journey(run: &str, now: &str, shop: &str) -> Vec<DemoStep> {
    let cart = format!("demo-cart-{run}");
    let checkout = format!("demo-checkout-{run}");
    let abandoned_cart = format!("demo-cart-abandoned-{run}");
    let abandoned_checkout = format!("demo-checkout-abandoned-{run}");
    let order_id = demo_order_id(run);
    let buyer_id = demo_order_id(&format!("{run}/buyer")) >> 8;
    let friend_id = demo_order_id(&format!("{run}/friend")) >> 8;
    let friend_order_id = demo_order_id(&format!("{run}/friend-order"));
    let abandoner_id = demo_order_id(&format!("{run}/abandoner")) >> 8;
    let switcher_id = demo_order_id(&format!("{run}/switcher")) >> 8;
    let switcher_order_id = demo_order_id(&format!("{run}/switcher-order"));
    let fulfillment_id = demo_order_id(&format!("{run}/fulfillment")) >> 8;

    let cart_body = |token: &str| {
        patch(
            "carts_update",
            json!({"id": token, "token": token, "updated_at": now, "created_at": now}),
        )
    };
    // The abandoner accepts marketing, so the audiences service exports them.
    let checkout_body = |token: &str, cart: &str, email: &str, accepts: bool| {
        patch(
            "checkouts_create",
            json!({"token": token, "cart_token": cart, "email": email, "created_at": now, "updated_at": now, "completed_at": null,
                   "buyer_accepts_marketing": accepts}),
        )
    };
    // A real (not test) order by a customer who accepts marketing: they become an advocate.
    let order_body = patch(
        "orders_create",
        json!({"id": order_id, "cart_token": cart, "checkout_token": checkout, "created_at": now, "updated_at": now, "processed_at": now,
               "test": false, "financial_status": "paid", "cancelled_at": null, "cancel_reason": null, "email": "buyer@example.com", "buyer_accepts_marketing": true,
               "customer": {"id": buyer_id, "email": "buyer@example.com", "first_name": "Bea", "last_name": "Buyer"}}),
    );
    // The purchase ships: a fulfillment with tracking, then the carrier's events.
    let fulfillment = patch(
        "fulfillments_create",
        json!({"id": fulfillment_id, "order_id": order_id, "status": "success", "shipment_status": null,
               "email": "buyer@example.com", "created_at": now, "updated_at": now,
               "admin_graphql_api_id": format!("gid://shopify/Fulfillment/{fulfillment_id}")}),
    );
    let carrier_event = |n: u64, status: &str| {
        patch(
            "fulfillment_events_create",
            json!({"id": fulfillment_id * 10 + n, "fulfillment_id": fulfillment_id, "order_id": order_id,
                   "status": status, "message": null, "happened_at": now, "created_at": now, "updated_at": now,
                   "admin_graphql_api_id": format!("gid://shopify/FulfillmentEvent/{}", fulfillment_id * 10 + n)}),
        )
    };
    let friend_address = json!({"first_name": "Fay", "last_name": "Friend", "address1": "9 Side Street",
                                "zip": "90210", "country_code": "US"});
    let friend_order = patch(
        "orders_create",
        json!({"id": friend_order_id, "cart_token": format!("demo-cart-friend-{run}"), "checkout_token": null,
               "created_at": now, "updated_at": now, "processed_at": now, "test": false, "financial_status": "paid", "cancelled_at": null, "cancel_reason": null,
               "email": "fay.friend@example.com", "buyer_accepts_marketing": false, "browser_ip": "198.51.100.20",
               "customer": {"id": friend_id, "email": "fay.friend@example.com", "first_name": "Fay", "last_name": "Friend"},
               "shipping_address": friend_address, "billing_address": friend_address,
               "discount_codes": [{"code": dev_referral_code(shop, buyer_id), "amount": "10.00", "type": "fixed_amount"}]}),
    );
    // People of their own each run, so the nudges' frequency cap never hides the next demo.
    let person_checkout = |token: &str, cart: &str, email: &str, customer_id: u64| {
        patch(
            "checkouts_create",
            json!({"token": token, "cart_token": cart, "email": email, "created_at": now, "updated_at": now,
                   "completed_at": null, "buyer_accepts_marketing": true,
                   "customer": {"id": customer_id, "email": email, "first_name": "Sam", "last_name": "Demo"}}),
        )
    };
    let switcher_email = format!("switcher-{run}@example.com");
    // Pending and without marketing consent: an order, but no referral advocate.
    let switcher_order = patch(
        "orders_create",
        json!({"id": switcher_order_id, "cart_token": format!("demo-cart-switched-{run}"), "checkout_token": null,
               "created_at": now, "updated_at": now, "processed_at": now, "test": false, "financial_status": "pending",
               "cancelled_at": null, "cancel_reason": null, "email": switcher_email, "buyer_accepts_marketing": false,
               "customer": {"id": switcher_id, "email": switcher_email, "first_name": "Sam", "last_name": "Switcher"}}),
    );
    let step = |topic, body, redeliver, note| DemoStep {
        topic,
        body,
        redeliver,
        note,
        pause: Duration::ZERO,
    };
    vec![
        step("carts/update", cart_body(&cart), false, "purchase: cart"),
        step(
            "checkouts/create",
            checkout_body(&checkout, &cart, "buyer@example.com", true),
            false,
            "purchase: checkout",
        ),
        step(
            "orders/create",
            order_body.clone(),
            true,
            "purchase: order (delivered twice)",
        ),
        step(
            "orders/paid",
            order_body,
            false,
            "purchase: paid, order confirmed",
        ),
        step(
            "fulfillments/create",
            fulfillment,
            false,
            "purchase: shipped",
        ),
        step(
            "fulfillment_events/create",
            carrier_event(1, "out_for_delivery"),
            false,
            "purchase: out for delivery",
        ),
        step(
            "fulfillment_events/create",
            carrier_event(2, "delivered"),
            false,
            "purchase: delivered (review request and referral invite follow)",
        ),
        step(
            "carts/update",
            cart_body(&abandoned_cart),
            false,
            "abandoned: cart",
        ),
        step(
            "checkouts/create",
            person_checkout(
                &abandoned_checkout,
                &abandoned_cart,
                "fence.sitter@example.com",
                abandoner_id,
            ),
            false,
            "abandoned: checkout with contact, never ordered",
        ),
        DemoStep {
            // The friend orders after the invite went out, as in life: under `aftercart dev`
            // the buyer is invited 5 s after delivery.
            pause: Duration::from_secs(7),
            ..step(
                "orders/paid",
                friend_order,
                false,
                "referral: friend's first order with the code",
            )
        },
        step(
            "checkouts/create",
            person_checkout(
                &format!("demo-checkout-left-{run}"),
                &format!("demo-cart-left-{run}"),
                &switcher_email,
                switcher_id,
            ),
            false,
            "switched: checkout left behind",
        ),
        step(
            "orders/create",
            switcher_order,
            false,
            "switched: order through another cart (no nudge)",
        ),
    ]
}

/// A stable, positive 53-bit-plus order id derived from the run id.
fn demo_order_id(run: &str) -> u64 {
    let hash = run.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (1 << 60) | (hash >> 4)
}

/// The sample `stem` with `fields` overwritten, as compact JSON.
fn patch(stem: &str, fields: Value) -> Vec<u8> {
    let (_, bytes) = sample(stem).expect("built-in sample exists");
    let mut value: Value = serde_json::from_slice(bytes).expect("built-in samples are JSON");
    if let (Some(target), Some(fields)) = (value.as_object_mut(), fields.as_object()) {
        for (key, field) in fields {
            target.insert(key.clone(), field.clone());
        }
    }
    serde_json::to_vec(&value).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_json_with_a_known_topic() {
        for (stem, topic, bytes) in SAMPLES {
            serde_json::from_slice::<Value>(bytes).unwrap_or_else(|e| panic!("{stem}: {e}"));
            assert_eq!(topic_for_stem(stem), Some(*topic));
        }
    }

    #[test]
    fn file_stems_map_to_topics() {
        assert_eq!(
            topic_for_stem("customers_data_request"),
            Some("customers/data_request")
        );
        assert_eq!(
            topic_for_stem("customers_email_marketing_consent_update"),
            Some("customers_email_marketing_consent/update")
        );
        assert_eq!(topic_for_stem("my_payload"), None);
    }

    #[test]
    fn the_demo_links_cart_checkout_and_order_by_tokens() {
        let steps = demo_journey("r1", "2026-11-23T05:00:00Z", "s.myshopify.com");
        let bodies: Vec<Value> = steps
            .iter()
            .map(|s| serde_json::from_slice(&s.body).unwrap())
            .collect();
        assert_eq!(bodies[0]["token"], "demo-cart-r1");
        assert_eq!(bodies[1]["cart_token"], "demo-cart-r1");
        assert_eq!(bodies[2]["cart_token"], "demo-cart-r1");
        assert_eq!(bodies[2]["checkout_token"], bodies[1]["token"]);
        assert!(bodies[2]["id"].as_u64().unwrap() > 1 << 53);
        assert_eq!(
            bodies[4]["order_id"], bodies[2]["id"],
            "the fulfillment is the order's"
        );
        assert_eq!(bodies[6]["status"], "delivered");
        assert_eq!(bodies[6]["fulfillment_id"], bodies[4]["id"]);
        assert_eq!(bodies[8]["cart_token"], "demo-cart-abandoned-r1");
        assert!(steps.iter().any(|s| s.redeliver));
        let friend = &bodies[9];
        assert_eq!(
            friend["discount_codes"][0]["code"],
            dev_referral_code(
                "s.myshopify.com",
                bodies[2]["customer"]["id"].as_u64().unwrap()
            )
        );
        assert_ne!(friend["customer"]["id"], bodies[2]["customer"]["id"]);
        // The switcher orders through another cart, as the same customer.
        assert_ne!(bodies[11]["cart_token"], bodies[10]["cart_token"]);
        assert_eq!(bodies[11]["customer"]["id"], bodies[10]["customer"]["id"]);
        assert_ne!(bodies[8]["customer"]["id"], bodies[10]["customer"]["id"]);
        let other_run = demo_journey("r2", "2026-11-23T05:00:00Z", "s.myshopify.com");
        assert_ne!(
            other_run[2].body, steps[2].body,
            "each run is a new purchase"
        );
    }
}

//! Ingress integration tests: the ingress on `127.0.0.1:0` against a real broker (the mock
//! cluster and a Tansu process), asserting on what lands in Kafka and on the metrics.

use aftercart_tests::broker_tests;

broker_tests!(
    every_sample_lands_in_its_family_topic_byte_for_byte,
    a_redelivered_webhook_is_published_once,
    the_same_webhook_id_from_two_shops_is_published_for_each,
    compliance_bodies_that_do_not_fit_their_header_are_quarantined,
    concurrent_redeliveries_are_published_once,
    bad_signatures_are_refused_and_never_published,
    rotated_and_per_shop_secrets_are_accepted_and_recorded,
    authentic_deliveries_without_required_headers_get_400,
    unprefixed_and_oddly_cased_headers_are_accepted,
    authentic_bodies_that_are_not_json_objects_are_quarantined,
    oversized_bodies_get_413_and_are_not_published,
    a_413_reaches_a_client_that_sends_its_whole_body_before_reading,
    bodies_beyond_the_body_budget_get_503_while_small_webhooks_pass,
    announced_bodies_hold_the_budget_only_for_the_bytes_they_sent,
    an_http2_preface_is_refused_with_a_400_when_http2_is_off,
    http2_connections_without_a_request_are_cut_at_the_header_timeout,
    wrong_method_and_path_are_refused,
    a_purchase_journey_shares_one_partition_number,
    escaped_and_non_ascii_bodies_keep_their_exact_bytes,
    metrics_count_outcomes_without_personal_data,
    graceful_shutdown_flushes_and_flips_readiness,
    journey_topics_with_different_partition_counts_refuse_to_start,
);

mod scenarios {
    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;

    use ::http::Method;
    use aftercart_ingress::ServeError;
    use aftercart_kafka::{ensure_topics, TopicError, TopicSpec};
    use aftercart_shopify::{Family, Secret, Verifier};
    use aftercart_tests::http::{self, Webhook};
    use aftercart_tests::ingress::{test_config, TestIngress, ROTATED_SECRET, SECRET};
    use aftercart_tests::schemas::assert_raw_record_valid;
    use aftercart_tests::{eventually, metric_value, read_topic, Broker, Record};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/shopify");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
    }

    /// Every record the ingress could have written, across all its topics.
    async fn everything(broker: &Broker, ingress: &TestIngress) -> Vec<Record> {
        let mut all = Vec::new();
        for topic in ingress.topics().ingress_outputs() {
            all.extend(read_topic(&broker.bootstrap(), &topic).await);
        }
        all
    }

    pub async fn every_sample_lands_in_its_family_topic_byte_for_byte(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let samples = [
            (
                "carts_update.json",
                "carts/update",
                Family::Carts,
                "jsmith.myshopify.com/exampleCartId",
            ),
            (
                "checkouts_create.json",
                "checkouts/create",
                Family::Checkouts,
                "jsmith.myshopify.com/eeafa272cebfd4b22385bc4b645e762c",
            ),
            (
                "checkouts_update.json",
                "checkouts/update",
                Family::Checkouts,
                "jsmith.myshopify.com/eeafa272cebfd4b22385bc4b645e762c",
            ),
            (
                "checkouts_delete.json",
                "checkouts/delete",
                Family::Checkouts,
                "jsmith.myshopify.com/eeafa272cebfd4b22385bc4b645e762c",
            ),
            (
                "orders_create.json",
                "orders/create",
                Family::Orders,
                "jsmith.myshopify.com/820982911946154508",
            ),
            (
                "orders_paid.json",
                "orders/paid",
                Family::Orders,
                "jsmith.myshopify.com/820982911946154508",
            ),
            (
                "fulfillments_create.json",
                "fulfillments/create",
                Family::Fulfillments,
                "jsmith.myshopify.com/820982911946154508",
            ),
            (
                "fulfillments_update.json",
                "fulfillments/update",
                Family::Fulfillments,
                "jsmith.myshopify.com/820982911946154508",
            ),
            (
                "fulfillment_events_create.json",
                "fulfillment_events/create",
                Family::Fulfillments,
                "jsmith.myshopify.com/820982911946154508",
            ),
            (
                "customers_data_request.json",
                "customers/data_request",
                Family::Compliance,
                "jsmith.myshopify.com/191167",
            ),
            (
                "customers_redact.json",
                "customers/redact",
                Family::Compliance,
                "jsmith.myshopify.com/191167",
            ),
            (
                "shop_redact.json",
                "shop/redact",
                Family::Compliance,
                "jsmith.myshopify.com/954889",
            ),
            (
                "app_uninstalled.json",
                "app/uninstalled",
                Family::Compliance,
                "jsmith.myshopify.com/548380009",
            ),
        ];
        let mut sent = HashMap::new();
        for (file, topic, family, key) in samples {
            let body = fixture_for_shop(file, "jsmith.myshopify.com");
            let webhook = Webhook::new(topic, body, SECRET);
            let response = webhook.post(ingress.addr).await;
            assert_eq!(response.status, 200, "{file}: {}", response.body);
            assert_eq!(response.json()["status"], "accepted", "{file}");
            sent.insert(webhook.webhook_id.clone(), (webhook, family, key));
        }
        let other = Webhook::new(
            "products/update",
            br#"{"id":632910392,"title":"IPod Nano"}"#.to_vec(),
            SECRET,
        );
        assert_eq!(other.post(ingress.addr).await.status, 200);
        sent.insert(
            other.webhook_id.clone(),
            (other, Family::Other, "jsmith.myshopify.com/632910392"),
        );

        let records = everything(broker, &ingress).await;
        assert_eq!(records.len(), sent.len(), "one record per delivery");
        for record in &records {
            let id = record
                .header("shopify-webhook-id")
                .expect("webhook id header");
            let (webhook, family, key) = &sent[id];
            assert_eq!(record.topic, ingress.topic(*family), "{}", webhook.topic);
            assert_eq!(
                record.value, webhook.body,
                "exact bytes for {}",
                webhook.topic
            );
            assert_eq!(record.key_str(), *key, "{}", webhook.topic);
            assert_eq!(record.header("shopify-topic"), Some(webhook.topic.as_str()));
            assert_eq!(
                record.header("shopify-shop-domain"),
                Some("jsmith.myshopify.com")
            );
            assert_eq!(record.header("shopify-api-version"), Some("2026-07"));
            assert_eq!(
                record.header("shopify-triggered-at"),
                Some("2026-11-23T05:00:00.000Z")
            );
            let signature = aftercart_shopify::sign(&Secret::new(SECRET), &webhook.body);
            assert_eq!(
                record.header("shopify-hmac-sha256"),
                Some(signature.as_str())
            );
            assert_eq!(record.header("aftercart-hmac-secret"), Some("global:0"));
            let received = record.header("aftercart-received-at").expect("received-at");
            humantime::parse_rfc3339(received)
                .unwrap_or_else(|e| panic!("{received} is not RFC 3339: {e}"));
            assert!(
                !record.headers.keys().any(|k| k.starts_with("x-")),
                "{:?}",
                record.headers.keys()
            );
            assert_raw_record_valid(family.as_str(), record);
        }
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="compliance",status="200"}"#)
                .await,
            4.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="other",status="200"}"#)
                .await,
            1.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="fulfillments",status="200"}"#)
                .await,
            3.0
        );
        // Same key and partition count: a fulfilment lands in its order's partition number.
        let partition_of = |topic: &str| {
            records
                .iter()
                .find(|r| r.header("shopify-topic") == Some(topic))
                .map(|r| r.partition)
        };
        assert_eq!(
            partition_of("fulfillment_events/create"),
            partition_of("orders/create")
        );
        assert_eq!(
            partition_of("fulfillments/create"),
            partition_of("orders/create")
        );
    }

    pub async fn a_redelivered_webhook_is_published_once(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let webhook = Webhook::new("orders/paid", fixture("orders_paid.json"), SECRET);
        let first = webhook.post(ingress.addr).await;
        assert_eq!(first.json()["status"], "accepted");
        for _ in 0..3 {
            let again = webhook.post(ingress.addr).await;
            assert_eq!(again.status, 200);
            assert_eq!(again.json()["status"], "duplicate");
        }
        // Same body, new webhook id: a different delivery, published.
        let mut distinct = webhook.clone();
        distinct.webhook_id = uuid::Uuid::new_v4().to_string();
        assert_eq!(
            distinct.post(ingress.addr).await.json()["status"],
            "accepted"
        );

        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Orders)).await;
        let ids: Vec<&str> = records
            .iter()
            .map(|r| r.header("shopify-webhook-id").unwrap())
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(
            ids.iter().filter(|id| **id == webhook.webhook_id).count(),
            1
        );
        assert_eq!(
            ingress.metric("aftercart_ingress_duplicates_total").await,
            3.0
        );
    }

    pub async fn the_same_webhook_id_from_two_shops_is_published_for_each(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let mut first = Webhook::new("orders/paid", fixture("orders_paid.json"), SECRET);
        first.shop = "shop-a.myshopify.com".to_string();
        let mut second = first.clone();
        second.shop = "shop-b.myshopify.com".to_string();
        assert_eq!(first.post(ingress.addr).await.json()["status"], "accepted");
        assert_eq!(second.post(ingress.addr).await.json()["status"], "accepted");
        // Each shop's own retry is still a duplicate, whatever the header's case.
        let mut retry = second.clone();
        retry.shop = "Shop-B.myshopify.com".to_string();
        assert_eq!(retry.post(ingress.addr).await.json()["status"], "duplicate");

        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Orders)).await;
        let shops: BTreeSet<&str> = records
            .iter()
            .map(|r| r.header("shopify-shop-domain").unwrap())
            .collect();
        assert_eq!(records.len(), 2, "{shops:?}");
        assert_eq!(
            shops,
            BTreeSet::from(["shop-a.myshopify.com", "shop-b.myshopify.com"])
        );
        assert!(records
            .iter()
            .all(|r| r.header("shopify-webhook-id") == Some(first.webhook_id.as_str())));
    }

    /// A sample as Shopify sends it to `shop`: the compliance samples' `{shop}` placeholder filled.
    fn fixture_for_shop(name: &str, shop: &str) -> Vec<u8> {
        String::from_utf8(fixture(name))
            .expect("UTF-8 sample")
            .replace("{shop}.myshopify.com", shop)
            .into_bytes()
    }

    pub async fn compliance_bodies_that_do_not_fit_their_header_are_quarantined(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let shop = "jsmith.myshopify.com";
        let customer_redact = fixture_for_shop("customers_redact.json", shop);
        let data_request = fixture_for_shop("customers_data_request.json", shop);
        let shop_redact = fixture_for_shop("shop_redact.json", shop);
        let other_shop = fixture_for_shop("shop_redact.json", "victim.myshopify.com");
        // (topic header, authentic body, expected quarantine reason)
        let replays: [(&str, &[u8], &str); 7] = [
            // A customer's redaction replayed as the whole shop's.
            ("shop/redact", &customer_redact, "compliance_shape_mismatch"),
            ("shop/redact", &data_request, "compliance_shape_mismatch"),
            // A data request replayed as a redaction, and the other way round.
            (
                "customers/redact",
                &data_request,
                "compliance_shape_mismatch",
            ),
            (
                "customers/data_request",
                &customer_redact,
                "compliance_shape_mismatch",
            ),
            (
                "customers/redact",
                &shop_redact,
                "compliance_shape_mismatch",
            ),
            // Another shop's body under this shop's header, and a body naming no shop.
            ("shop/redact", &other_shop, "compliance_shop_mismatch"),
            (
                "shop/redact",
                br#"{"shop_id":954889}"#,
                "compliance_shop_mismatch",
            ),
        ];
        let mut sent = Vec::new();
        for (topic, body, reason) in replays {
            let webhook = Webhook::new(topic, body.to_vec(), SECRET);
            let response = webhook.post(ingress.addr).await;
            assert_eq!(response.status, 200, "{topic}: {}", response.body);
            assert_eq!(response.json()["status"], "quarantined", "{topic}");
            sent.push((webhook, reason));
        }
        // The genuine ones, header case aside, go to the compliance topic.
        for (topic, body) in [
            ("customers/redact", &customer_redact),
            ("customers/data_request", &data_request),
            ("shop/redact", &shop_redact),
        ] {
            let mut webhook = Webhook::new(topic, body.clone(), SECRET);
            webhook.shop = "JSmith.myshopify.com".to_string();
            let response = webhook.post(ingress.addr).await;
            assert_eq!(response.json()["status"], "accepted", "{topic}");
        }
        let quarantine = read_topic(&broker.bootstrap(), &ingress.topics().quarantine()).await;
        assert_eq!(quarantine.len(), sent.len());
        for (webhook, reason) in &sent {
            let record = quarantine
                .iter()
                .find(|r| r.header("shopify-webhook-id") == Some(webhook.webhook_id.as_str()))
                .expect("quarantined record");
            assert_eq!(record.value, webhook.body, "exact bytes");
            assert_eq!(
                record.header("aftercart-quarantine-reason"),
                Some(*reason),
                "{}",
                webhook.topic
            );
            aftercart_tests::schemas::assert_valid(
                "kafka/record-headers.schema.json",
                &record.headers_json(),
            );
        }
        let compliance = read_topic(&broker.bootstrap(), &ingress.topic(Family::Compliance)).await;
        assert_eq!(compliance.len(), 3);
        assert_eq!(
            ingress
                .metric(
                    r#"aftercart_ingress_quarantined_total{reason="compliance_shape_mismatch"}"#
                )
                .await,
            5.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_quarantined_total{reason="compliance_shop_mismatch"}"#)
                .await,
            2.0
        );
    }

    pub async fn concurrent_redeliveries_are_published_once(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let webhook = Webhook::new("checkouts/update", fixture("checkouts_update.json"), SECRET);
        let attempts = (0..8).map(|_| {
            let webhook = webhook.clone();
            let addr = ingress.addr;
            tokio::spawn(async move { webhook.post(addr).await })
        });
        let mut statuses = Vec::new();
        for attempt in attempts {
            let response = attempt.await.unwrap();
            assert_eq!(response.status, 200, "{}", response.body);
            statuses.push(response.json()["status"].as_str().unwrap().to_string());
        }
        assert_eq!(
            statuses.iter().filter(|s| *s == "accepted").count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| *s == "duplicate").count(),
            7,
            "{statuses:?}"
        );
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Checkouts)).await;
        assert_eq!(records.len(), 1);
    }

    pub async fn bad_signatures_are_refused_and_never_published(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let body = fixture("orders_create.json");
        let wrong = Webhook::new("orders/create", body.clone(), "not-our-secret");
        let response = wrong.post(ingress.addr).await;
        assert_eq!(response.status, 401);
        assert_eq!(response.json()["error"], "invalid_signature");

        let good = Webhook::new("orders/create", body.clone(), SECRET);
        let without: Vec<_> = good
            .headers()
            .into_iter()
            .filter(|(n, _)| *n != "x-shopify-hmac-sha256")
            .collect();
        assert_eq!(good.post_with(ingress.addr, &without).await.status, 401);

        for garbage in [
            "",
            "abc",
            "!!!!",
            &"A".repeat(44),
            &aftercart_shopify::sign(&Secret::new(SECRET), &body)[..43],
        ] {
            let mut headers: Vec<_> = good
                .headers()
                .into_iter()
                .filter(|(n, _)| *n != "x-shopify-hmac-sha256")
                .collect();
            headers.push(("x-shopify-hmac-sha256", garbage.to_string()));
            assert_eq!(
                good.post_with(ingress.addr, &headers).await.status,
                401,
                "{garbage:?}"
            );
        }
        // A valid signature of different bytes: the body was tampered with.
        let mut tampered_headers = good.headers();
        tampered_headers.retain(|(n, _)| *n != "x-shopify-hmac-sha256");
        tampered_headers.push((
            "x-shopify-hmac-sha256",
            aftercart_shopify::sign(&Secret::new(SECRET), b"{}"),
        ));
        assert_eq!(
            good.post_with(ingress.addr, &tampered_headers).await.status,
            401
        );
        // Compliance topics must answer 401 too (Shopify's App Store check).
        let redact = Webhook::new(
            "customers/redact",
            fixture("customers_redact.json"),
            "wrong",
        );
        assert_eq!(redact.post(ingress.addr).await.status, 401);

        assert!(
            everything(broker, &ingress).await.is_empty(),
            "nothing unauthenticated is published"
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_hmac_failures_total{reason="mismatch"}"#)
                .await,
            3.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_hmac_failures_total{reason="missing"}"#)
                .await,
            1.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_hmac_failures_total{reason="malformed"}"#)
                .await,
            5.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="unknown",status="401"}"#)
                .await,
            9.0
        );
    }

    pub async fn rotated_and_per_shop_secrets_are_accepted_and_recorded(broker: &Broker) {
        let mut config = test_config(broker);
        config.verifier = Verifier::new(
            vec![Secret::new(SECRET), Secret::new(ROTATED_SECRET)],
            HashMap::from([(
                "Store-Made.myshopify.com".to_string(),
                vec![Secret::new("store-key")],
            )]),
        );
        let ingress = TestIngress::start_on(broker, config).await;
        let rotated = Webhook::new("carts/update", fixture("carts_update.json"), ROTATED_SECRET);
        assert_eq!(rotated.post(ingress.addr).await.status, 200);
        let mut store_made =
            Webhook::new("orders/create", fixture("orders_create.json"), "store-key");
        store_made.shop = "store-made.myshopify.com".to_string();
        assert_eq!(store_made.post(ingress.addr).await.status, 200);
        let mut other_shop = store_made.clone();
        other_shop.shop = "someone-else.myshopify.com".to_string();
        other_shop.webhook_id = uuid::Uuid::new_v4().to_string();
        assert_eq!(
            other_shop.post(ingress.addr).await.status,
            401,
            "a shop's key only signs for that shop"
        );

        let carts = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        assert_eq!(carts.len(), 1);
        assert_eq!(carts[0].header("aftercart-hmac-secret"), Some("global:1"));
        let orders = read_topic(&broker.bootstrap(), &ingress.topic(Family::Orders)).await;
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].header("aftercart-hmac-secret"), Some("shop:0"));
        for record in carts.iter().chain(&orders) {
            for value in record.headers.values() {
                let text = String::from_utf8_lossy(value);
                assert!(
                    !text.contains("store-key") && !text.contains(ROTATED_SECRET),
                    "secret leaked in a header"
                );
            }
        }
    }

    pub async fn authentic_deliveries_without_required_headers_get_400(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let webhook = Webhook::new("orders/create", fixture("orders_create.json"), SECRET);
        for (dropped, named) in [
            ("x-shopify-topic", "Shopify-Topic"),
            ("x-shopify-shop-domain", "Shopify-Shop-Domain"),
            ("x-shopify-webhook-id", "Shopify-Webhook-Id"),
        ] {
            let headers: Vec<_> = webhook
                .headers()
                .into_iter()
                .filter(|(n, _)| *n != dropped)
                .collect();
            let response = webhook.post_with(ingress.addr, &headers).await;
            assert_eq!(response.status, 400, "without {dropped}");
            assert_eq!(response.json()["error"], "missing_header");
            assert!(response.body.contains(named), "{}", response.body);
        }
        assert!(everything(broker, &ingress).await.is_empty());
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="unknown",status="400"}"#)
                .await,
            3.0
        );
    }

    pub async fn unprefixed_and_oddly_cased_headers_are_accepted(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let webhook = Webhook::new("checkouts/create", fixture("checkouts_create.json"), SECRET);
        let unprefixed: Vec<(&str, String)> = webhook
            .headers()
            .into_iter()
            .map(|(name, value)| {
                let name: &str = match name {
                    "x-shopify-topic" => "Shopify-Topic",
                    "x-shopify-shop-domain" => "SHOPIFY-SHOP-DOMAIN",
                    "x-shopify-webhook-id" => "shopify-webhook-id",
                    "x-shopify-hmac-sha256" => "Shopify-Hmac-SHA256",
                    "x-shopify-api-version" => "X-SHOPIFY-API-VERSION",
                    other => other,
                };
                (name, value)
            })
            .collect();
        let response = webhook.post_with(ingress.addr, &unprefixed).await;
        assert_eq!(response.status, 200, "{}", response.body);
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Checkouts)).await;
        assert_eq!(records.len(), 1);
        let names: BTreeSet<&str> = records[0].headers.keys().map(String::as_str).collect();
        for expected in [
            "shopify-topic",
            "shopify-shop-domain",
            "shopify-webhook-id",
            "shopify-hmac-sha256",
            "shopify-api-version",
        ] {
            assert!(names.contains(expected), "{names:?}");
        }
        assert_raw_record_valid("checkouts", &records[0]);
    }

    pub async fn authentic_bodies_that_are_not_json_objects_are_quarantined(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let cases: [(&[u8], &str); 4] = [
            (b"{\"id\": 1,", "not_json"),
            (b"\xff\xfe not utf-8", "not_json"),
            (b"[1,2,3]", "not_object"),
            (b"", "not_json"),
        ];
        let mut sent = Vec::new();
        for (body, reason) in cases {
            let webhook = Webhook::new("orders/create", body.to_vec(), SECRET);
            let response = webhook.post(ingress.addr).await;
            assert_eq!(response.status, 200, "{body:?}: {}", response.body);
            assert_eq!(response.json()["status"], "quarantined");
            sent.push((webhook, reason));
        }
        let quarantine = read_topic(&broker.bootstrap(), &ingress.topics().quarantine()).await;
        assert_eq!(quarantine.len(), sent.len());
        for (webhook, reason) in &sent {
            let record = quarantine
                .iter()
                .find(|r| r.header("shopify-webhook-id") == Some(webhook.webhook_id.as_str()))
                .expect("quarantined record");
            assert_eq!(record.value, webhook.body, "exact bytes");
            assert_eq!(record.header("aftercart-quarantine-reason"), Some(*reason));
            assert_eq!(record.key_str(), "jsmith.myshopify.com");
            aftercart_tests::schemas::assert_valid(
                "kafka/record-headers.schema.json",
                &record.headers_json(),
            );
        }
        assert!(
            read_topic(&broker.bootstrap(), &ingress.topic(Family::Orders))
                .await
                .is_empty()
        );
        // Quarantined deliveries are deduplicated like any other.
        assert_eq!(
            sent[0].0.post(ingress.addr).await.json()["status"],
            "duplicate"
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_quarantined_total{reason="not_json"}"#)
                .await,
            3.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_quarantined_total{reason="not_object"}"#)
                .await,
            1.0
        );
    }

    /// The head of a signed-looking `orders/create` whose signature is fake (well-formed).
    fn unsigned_head(length_header: &str) -> Vec<u8> {
        format!(
            "POST /webhooks/shopify HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             {length_header}\r\nx-shopify-topic: orders/create\r\n\
             x-shopify-shop-domain: jsmith.myshopify.com\r\nx-shopify-webhook-id: {}\r\n\
             x-shopify-hmac-sha256: {}\r\n\r\n",
            uuid::Uuid::new_v4(),
            aftercart_shopify::sign(&Secret::new("not-the-secret"), b"x"),
        )
        .into_bytes()
    }

    pub async fn a_413_reaches_a_client_that_sends_its_whole_body_before_reading(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        // 2 MiB against the 256 KiB limit, written in 64 KiB pieces before reading, as
        // http.client does: the 413 is decided from Content-Length before the body is read.
        let body = vec![b'x'; 2 << 20];
        let head = unsigned_head(&format!("content-length: {}", body.len()));
        let pause = Duration::from_millis(2);
        let answer = http::write_all_then_read(ingress.addr, &head, &body, 64 << 10, pause)
            .await
            .expect("no reset while sending or reading");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
        // Chunked: the limit is found while reading, the rest is still on its way.
        let mut chunked = Vec::new();
        for piece in body.chunks(16 << 10) {
            chunked.extend(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend(piece);
            chunked.extend(b"\r\n");
        }
        chunked.extend(b"0\r\n\r\n");
        let head = unsigned_head("transfer-encoding: chunked");
        let answer = http::write_all_then_read(ingress.addr, &head, &chunked, 64 << 10, pause)
            .await
            .expect("no reset while sending or reading");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_body_refusals_total{reason="too_large"}"#)
                .await,
            2.0
        );
    }

    pub async fn bodies_beyond_the_body_budget_get_503_while_small_webhooks_pass(broker: &Broker) {
        use tokio::io::AsyncWriteExt;
        let mut config = test_config(broker);
        // 1 MiB: large bodies (above 64 KiB) may hold 768 KiB together.
        config.edge.body_budget_bytes = 1 << 20;
        let ingress = TestIngress::start_on(broker, config).await;
        let held = format!("content-length: {}", 256 << 10);
        // Three slow clients declare 256 KiB each and send 160 KiB of it: their buffers have
        // grown to the whole 256 KiB, and the large share is held.
        let mut holders = Vec::new();
        for _ in 0..3 {
            let mut stream = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
            stream.write_all(&unsigned_head(&held)).await.unwrap();
            stream.write_all(&vec![b' '; 160 << 10]).await.unwrap();
            holders.push(stream);
        }
        let admin = ingress.admin_addr;
        eventually(
            "the holders' reservations",
            Duration::from_secs(10),
            || async move {
                let text = http::get(admin, "/metrics").await.body;
                (metric_value(&text, "aftercart_ingress_body_in_flight_bytes")
                    >= f64::from(768 << 10))
                .then_some(())
            },
        )
        .await;
        // A fourth is refused once its buffer would grow past the small bodies' 64 KiB.
        let mut fourth = unsigned_head(&held);
        fourth.extend(vec![b' '; 100 << 10]);
        let answer = http::raw_exchange(ingress.addr, &fourth).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 5"),
            "{answer}"
        );
        // An ordinary webhook still fits the quarter kept for small bodies.
        let small = Webhook::new("orders/create", fixture("orders_create.json"), SECRET);
        assert_eq!(small.post(ingress.addr).await.status, 200);
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_body_refusals_total{reason="budget"}"#)
                .await,
            1.0
        );
        // The holders leave: their reservations are given back.
        drop(holders);
        eventually(
            "the budget given back",
            Duration::from_secs(10),
            || async move {
                let text = http::get(admin, "/metrics").await.body;
                (metric_value(&text, "aftercart_ingress_body_in_flight_bytes") == 0.0).then_some(())
            },
        )
        .await;
        let mut request = unsigned_head(&held);
        request.extend(vec![b' '; 256 << 10]);
        let answer = http::raw_exchange(ingress.addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }

    pub async fn announced_bodies_hold_the_budget_only_for_the_bytes_they_sent(broker: &Broker) {
        use tokio::io::AsyncWriteExt;
        const HOLDERS: usize = 32;
        let mut config = test_config(broker);
        config.edge.body_budget_bytes = 1 << 20;
        let ingress = TestIngress::start_on(broker, config).await;
        // Each announces 64 KiB (a small body: the whole budget is open to it) and sends one
        // byte. Reserving what is announced, 16 of them held the whole 1 MiB for a few bytes.
        let announced = format!("content-length: {}", 64 << 10);
        let mut holders = Vec::new();
        for _ in 0..HOLDERS {
            let mut stream = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
            stream.write_all(&unsigned_head(&announced)).await.unwrap();
            stream.write_all(b"{").await.unwrap();
            holders.push(stream);
        }
        let admin = ingress.admin_addr;
        // Every holder's body is being read (2 KiB each at least), or the budget is full.
        let held = eventually(
            "the holders' bodies read",
            Duration::from_secs(10),
            || async move {
                let text = http::get(admin, "/metrics").await.body;
                let held = metric_value(&text, "aftercart_ingress_body_in_flight_bytes");
                (held >= f64::from(HOLDERS as u32 * (2 << 10)) || held >= f64::from(1 << 20))
                    .then_some(held)
            },
        )
        .await;
        let webhook = Webhook::new("orders/create", fixture("orders_create.json"), SECRET);
        let served = webhook.post(ingress.addr).await;
        assert_eq!(served.status, 200, "{held} bytes held: {}", served.body);
        assert!(
            held <= f64::from(HOLDERS as u32 * (4 << 10)),
            "{held} bytes held for {HOLDERS} bytes sent"
        );
        drop(holders);
    }

    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// An empty SETTINGS frame, as an HTTP/2 client sends right after the preface.
    const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

    /// Connects, writes `bytes`, and reads until the server closes: (answer, when it closed).
    async fn until_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, Option<Duration>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let started = std::time::Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer));
        let closed = match read.await {
            Ok(_) => Some(started.elapsed()),
            Err(_) => None,
        };
        (String::from_utf8_lossy(&answer).into_owned(), closed)
    }

    /// Waits until the ingress has counted `count` connections cut for `reason`: a client may
    /// see its connection end a moment before the ingress counts the cut.
    pub(crate) async fn wait_for_cuts(ingress: &TestIngress, reason: &str, count: f64) {
        let series = format!(r#"aftercart_ingress_connections_cut_total{{reason="{reason}"}}"#);
        eventually(
            &format!("{count} cuts for {reason}"),
            Duration::from_secs(10),
            || async { (ingress.metric(&series).await == count).then_some(()) },
        )
        .await;
    }

    pub async fn an_http2_preface_is_refused_with_a_400_when_http2_is_off(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(H2_SETTINGS);
        let (answer, closed) = until_closed(ingress.addr, &hello).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("http2_disabled"), "{answer}");
        assert!(closed.is_some(), "the connection was held open");
        wait_for_cuts(&ingress, "http2_disabled", 1.0).await;
        // HTTP/1.1 is served as ever.
        let webhook = Webhook::new("orders/create", fixture("orders_create.json"), SECRET);
        assert_eq!(webhook.post(ingress.addr).await.status, 200);
    }

    pub async fn http2_connections_without_a_request_are_cut_at_the_header_timeout(
        broker: &Broker,
    ) {
        let mut config = test_config(broker);
        config.header_read_timeout = Duration::from_secs(1);
        config.edge.http2 = Some(aftercart_ingress::config::Http2Config {
            idle_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(10),
            max_streams: 8,
        });
        let ingress = TestIngress::start_on(broker, config).await;
        // The preface alone, and the preface with SETTINGS (a handshake, then nothing).
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(H2_SETTINGS);
        for bytes in [H2_PREFACE, &hello[..]] {
            let (_, closed) = until_closed(ingress.addr, bytes).await;
            let closed = closed.expect("an idle HTTP/2 connection was never cut");
            assert!(closed >= Duration::from_millis(900), "{closed:?}");
        }
        wait_for_cuts(&ingress, "http2_handshake", 2.0).await;
        // A real HTTP/2 client is served, and its connection is cut once idle.
        let stream = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let connection = tokio::spawn(connection);
        let webhook = Webhook::new("orders/create", fixture("orders_create.json"), SECRET);
        let mut request =
            ::http::Request::post(format!("http://{}/webhooks/shopify", ingress.addr));
        for (name, value) in webhook.headers() {
            request = request.header(name, value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(
                webhook.body.clone(),
            )))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let _ = aftercart_tests::join_within(connection, "the idle HTTP/2 connection").await;
        wait_for_cuts(&ingress, "http2_idle", 1.0).await;
    }

    pub async fn oversized_bodies_get_413_and_are_not_published(broker: &Broker) {
        let mut config = test_config(broker);
        config.max_body_bytes = 16 * 1024;
        let ingress = TestIngress::start_on(broker, config).await;
        let mut big = br#"{"id":1,"note":""#.to_vec();
        big.extend(std::iter::repeat_n(b'x', 20 * 1024));
        big.extend(br#""}"#);
        let webhook = Webhook::new("orders/create", big.clone(), SECRET);
        let response = webhook.post(ingress.addr).await;
        assert_eq!(response.status, 413);
        assert_eq!(response.json()["error"], "payload_too_large");

        // Without Content-Length (chunked), the limit still holds while reading.
        let mut head =
            "POST /webhooks/shopify HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n"
                .to_string();
        for (name, value) in webhook.headers() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        for chunk in big.chunks(4096) {
            raw.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
            raw.extend(chunk);
            raw.extend(b"\r\n");
        }
        raw.extend(b"0\r\n\r\n");
        let answer = http::raw_exchange(ingress.addr, &raw).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        // At the limit exactly: accepted.
        let mut fits = br#"{"id":2,"note":""#.to_vec();
        fits.extend(std::iter::repeat_n(b'y', 16 * 1024 - fits.len() - 2));
        fits.extend(br#""}"#);
        assert_eq!(fits.len(), 16 * 1024);
        assert_eq!(
            Webhook::new("orders/create", fits, SECRET)
                .post(ingress.addr)
                .await
                .status,
            200
        );

        let records = everything(broker, &ingress).await;
        assert_eq!(
            records.len(),
            1,
            "only the body within the limit is published"
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="unknown",status="413"}"#)
                .await,
            2.0
        );
    }

    pub async fn wrong_method_and_path_are_refused(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let get = http::send(
            Method::GET,
            ingress.addr,
            "/webhooks/shopify",
            &[],
            Vec::new(),
        )
        .await;
        assert_eq!(get.status, 405);
        assert_eq!(get.headers["allow"], "POST");
        let put = http::send(
            Method::PUT,
            ingress.addr,
            "/webhooks/shopify",
            &[],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(put.status, 405);
        let webhook = Webhook::new("orders/create", fixture("orders_create.json"), SECRET);
        let elsewhere = http::send(
            Method::POST,
            ingress.addr,
            "/webhooks/other",
            &webhook.headers(),
            webhook.body.clone(),
        )
        .await;
        assert_eq!(elsewhere.status, 404);
        assert_eq!(http::get(ingress.addr, "/").await.status, 404);
        assert!(everything(broker, &ingress).await.is_empty());
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="unknown",status="405"}"#)
                .await,
            2.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_requests_total{family="unknown",status="404"}"#)
                .await,
            2.0
        );
    }

    pub async fn a_purchase_journey_shares_one_partition_number(broker: &Broker) {
        let mut config = test_config(broker);
        config.kafka.partitions = 8;
        let ingress = TestIngress::start_on(broker, config).await;
        for n in 0..12 {
            let cart = format!("cart-{n}-{}", uuid::Uuid::new_v4());
            let bodies = [
                (
                    "carts/update",
                    format!(r#"{{"id":"{cart}","token":"{cart}","line_items":[]}}"#),
                    Family::Carts,
                ),
                (
                    "checkouts/update",
                    format!(r#"{{"token":"chk-{n}","cart_token":"{cart}"}}"#),
                    Family::Checkouts,
                ),
                (
                    "orders/create",
                    format!(
                        r#"{{"id":{},"cart_token":"{cart}","checkout_token":"chk-{n}"}}"#,
                        9_007_199_254_740_993u64 + n
                    ),
                    Family::Orders,
                ),
            ];
            for (topic, body, _) in &bodies {
                assert_eq!(
                    Webhook::new(topic, body.as_bytes().to_vec(), SECRET)
                        .post(ingress.addr)
                        .await
                        .status,
                    200
                );
            }
        }
        let mut partition_of_key: HashMap<String, BTreeSet<i32>> = HashMap::new();
        for family in [Family::Carts, Family::Checkouts, Family::Orders] {
            let records = read_topic(&broker.bootstrap(), &ingress.topic(family)).await;
            assert_eq!(records.len(), 12);
            for record in records {
                partition_of_key
                    .entry(record.key_str().to_string())
                    .or_default()
                    .insert(record.partition);
            }
        }
        assert_eq!(partition_of_key.len(), 12, "one key per journey");
        for (key, partitions) in &partition_of_key {
            assert_eq!(partitions.len(), 1, "{key} spread over {partitions:?}");
        }
        let used: BTreeSet<i32> = partition_of_key.values().flatten().copied().collect();
        assert!(used.len() > 1, "keys spread over partitions: {used:?}");
    }

    pub async fn escaped_and_non_ascii_bodies_keep_their_exact_bytes(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let body = "{\"token\":\"tok\\u0026en\",\"note\":\"fish \\u0026 chips \\u003cb\\u003e\",\"name\":\"Zoë Ørsted 東京 🛒\",\"total_price\":\"10.00\"}";
        let webhook = Webhook::new("checkouts/create", body.as_bytes().to_vec(), SECRET);
        assert_eq!(webhook.post(ingress.addr).await.status, 200);
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Checkouts)).await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].value, body.as_bytes());
        assert_eq!(records[0].key_str(), "jsmith.myshopify.com/tok&en");
    }

    pub async fn metrics_count_outcomes_without_personal_data(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let webhook = Webhook::new("checkouts/create", fixture("checkouts_create.json"), SECRET);
        assert_eq!(webhook.post(ingress.addr).await.status, 200);
        assert_eq!(webhook.post(ingress.addr).await.status, 200);
        assert_eq!(
            Webhook::new("checkouts/create", fixture("checkouts_create.json"), "bad")
                .post(ingress.addr)
                .await
                .status,
            401
        );
        let text = ingress.metrics().await;
        for series in [
            r#"aftercart_ingress_requests_total{family="checkouts",status="200"} 2"#,
            r#"aftercart_ingress_requests_total{family="unknown",status="401"} 1"#,
            r#"aftercart_ingress_hmac_failures_total{reason="mismatch"} 1"#,
            "aftercart_ingress_duplicates_total 1",
            "aftercart_ingress_publish_duration_seconds_count 1",
            r#"aftercart_ingress_request_duration_seconds_count{status="200"} 2"#,
            "aftercart_ingress_in_flight_requests 0",
            "aftercart_ingress_dedupe_window_ids 1",
            // In-process here, so the allocator is the test binary's (the ops checks see the
            // binary's own choice).
            r#"aftercart_ingress_build_info{allocator="unknown",version=""#,
            "aftercart_ingress_kafka_queue_messages",
        ] {
            assert!(text.contains(series), "missing {series} in:\n{text}");
        }
        for personal in [
            "example@email.com",
            "jsmith",
            "myshopify",
            "eeafa272",
            "123123123",
            SECRET,
            &webhook.webhook_id,
        ] {
            assert!(!text.contains(personal), "{personal} appears in /metrics");
        }
        assert_eq!(http::get(ingress.admin_addr, "/livez").await.status, 200);
        assert_eq!(http::get(ingress.admin_addr, "/readyz").await.status, 200);
    }

    pub async fn graceful_shutdown_flushes_and_flips_readiness(broker: &Broker) {
        let ingress = TestIngress::start_on(broker, test_config(broker)).await;
        let webhook = Webhook::new("orders/paid", fixture("orders_paid.json"), SECRET);
        assert_eq!(webhook.post(ingress.addr).await.status, 200);
        let (addr, admin, bootstrap, topic) = (
            ingress.addr,
            ingress.admin_addr,
            broker.bootstrap(),
            ingress.topic(Family::Orders),
        );
        ingress.health.start_draining();
        assert_eq!(
            http::get(admin, "/readyz").await.status,
            503,
            "readiness fails first"
        );
        ingress.shutdown().await.expect("clean stop");
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(
            refused.is_err(),
            "the webhook port is closed after shutdown"
        );
        assert_eq!(read_topic(&bootstrap, &topic).await.len(), 1);
    }

    pub async fn journey_topics_with_different_partition_counts_refuse_to_start(broker: &Broker) {
        let config = test_config(broker);
        let names = aftercart_kafka::TopicNames::new(&config.kafka.topic_prefix);
        let mut orders = TopicSpec::new(names.family(Family::Orders), &config.kafka);
        orders.partitions = 2;
        if broker.is_mock() {
            let mut specs =
                aftercart_ingress::app::topic_specs(&config.kafka, config.max_body_bytes);
            specs.retain(|s| s.name != orders.name);
            specs.push(orders);
            broker.precreate_for_mock(&specs);
        } else {
            ensure_topics(&config.kafka, &[orders], &[])
                .await
                .expect("pre-create orders with 2 partitions");
        }
        let ingress = TestIngress::spawn(config).await;
        let ended = ingress.finished().await;
        match ended {
            Err(ServeError::Topics(TopicError::PartitionMismatch(listing))) => {
                assert!(listing.contains("orders=2"), "{listing}");
            }
            other => panic!("expected a partition mismatch, got {other:?}"),
        }
        let _ = Duration::ZERO;
    }
}

/// Slow-cluster behaviour needs the mock cluster's injected round-trip delay.
mod slow_broker {
    use std::time::{Duration, Instant};

    use aftercart_shopify::Family;
    use aftercart_tests::http::Webhook;
    use aftercart_tests::ingress::{test_config, TestIngress, SECRET};
    use aftercart_tests::{eventually, read_topic, Broker};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_broker_gets_503_with_retry_after_and_the_retry_is_a_duplicate() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.publish_deadline = Duration::from_millis(400);
        // Without a spool: what a slow Kafka means then.
        config.spool = None;
        let ingress = TestIngress::start_on(&broker, config).await;
        broker.slow_down(Duration::from_millis(1500));

        let webhook = Webhook::new(
            "orders/paid",
            br#"{"id":1,"cart_token":"c"}"#.to_vec(),
            SECRET,
        );
        let started = Instant::now();
        let response = webhook.post(ingress.addr).await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "answered at the deadline, not after the broker"
        );
        assert_eq!(response.headers["retry-after"], "5");
        assert_eq!(response.json()["error"], "unavailable");
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_publish_errors_total{reason="timeout"}"#)
                .await,
            1.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_unavailable_total{reason="no_spool"}"#)
                .await,
            1.0
        );

        // The record still arrives; the dedupe window learns it in the background.
        eventually("late delivery report", Duration::from_secs(10), || async {
            (ingress.metric("aftercart_ingress_dedupe_window_ids").await == 1.0).then_some(())
        })
        .await;
        broker.slow_down(Duration::ZERO);
        let retry = webhook.post(ingress.addr).await;
        assert_eq!(retry.status, 200);
        assert_eq!(retry.json()["status"], "duplicate");
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Orders)).await;
        assert_eq!(
            records.len(),
            1,
            "published once across the 503 and the retry"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_producer_queue_answers_503_at_once() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config
            .kafka
            .properties
            .set("queue.buffering.max.messages", "1");
        config.publish_deadline = Duration::from_secs(3);
        config.spool = None;
        let ingress = TestIngress::start_on(&broker, config).await;
        // Warm the topic's metadata so that only the produce request is slow.
        let warm = Webhook::new("carts/update", br#"{"token":"warm"}"#.to_vec(), SECRET);
        assert_eq!(warm.post(ingress.addr).await.status, 200);
        broker.slow_down(Duration::from_millis(2000));

        let addr = ingress.addr;
        let queue_full = r#"aftercart_ingress_publish_errors_total{reason="queue_full"}"#;
        // The first webhook is being handled (its record takes the queue's only place): on a
        // busy machine a fixed pause was sometimes too short and the second took the place.
        // The warm-up's record leaves librdkafka's queue only once its delivery report has been
        // served, a moment after its 200: a first webhook arriving in that moment is refused
        // as queue full, and is sent again.
        let mut attempts = 0;
        let pending = loop {
            attempts += 1;
            assert!(attempts <= 20, "the queue's place never came free");
            let first = Webhook::new("carts/update", br#"{"token":"a"}"#.to_vec(), SECRET);
            let pending = tokio::spawn(async move { first.post(addr).await });
            let (handled, ingress) = (&pending, &ingress);
            let in_flight = eventually(
                "the first webhook in flight, or answered",
                Duration::from_secs(10),
                || async move {
                    if ingress.metric("aftercart_ingress_in_flight_requests").await == 1.0 {
                        Some(true)
                    } else {
                        handled.is_finished().then_some(false)
                    }
                },
            )
            .await;
            // In flight from the handler's start, before its record is queued: still in flight
            // a moment later, it waits for the slowed broker.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if in_flight && !pending.is_finished() {
                break pending;
            }
            let answer = pending.await.unwrap();
            assert!(
                answer.status == 503 && answer.body.contains("queue is full"),
                "the first webhook, answered before the slowed broker could: {} {}",
                answer.status,
                answer.body
            );
        };
        let refused_before = ingress.metric(queue_full).await;
        let second = Webhook::new("carts/update", br#"{"token":"b"}"#.to_vec(), SECRET);
        let started = Instant::now();
        let response = second.post(ingress.addr).await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "backpressure answers at once"
        );
        assert!(response.body.contains("queue is full"), "{}", response.body);
        assert_eq!(ingress.metric(queue_full).await, refused_before + 1.0);
        assert_eq!(
            pending.await.unwrap().status,
            200,
            "the queued delivery still completes"
        );
    }
}

/// Before Kafka answers, the ingress already answers: 503 + Retry-After, not a hanging socket.
mod starting {
    use std::time::{Duration, Instant};

    use aftercart_tests::http::{self, Webhook};
    use aftercart_tests::ingress::{test_config, TestIngress, SECRET};
    use aftercart_tests::Broker;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_before_kafka_is_reachable_get_503_quickly() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.spool = None;
        // Nothing listens here: the ingress keeps retrying and stays not ready.
        config.kafka.brokers = format!("127.0.0.1:{}", aftercart_tests::broker::free_port());
        let ingress = TestIngress::spawn(config).await;
        let started = Instant::now();
        let response = Webhook::new("orders/create", br#"{"id":1}"#.to_vec(), SECRET)
            .post(ingress.addr)
            .await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(response.headers["retry-after"], "5");
        assert_eq!(http::get(ingress.admin_addr, "/readyz").await.status, 503);
        assert_eq!(http::get(ingress.admin_addr, "/livez").await.status, 200);
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_unavailable_total{reason="kafka_connecting"}"#)
                .await,
            1.0
        );
        // A forged delivery is told so even now, not invited to retry.
        let forged = Webhook::new(
            "customers/redact",
            br#"{"shop_domain":"x.myshopify.com","customer":{"id":1}}"#.to_vec(),
            "not-the-secret",
        )
        .post(ingress.addr)
        .await;
        assert_eq!(forged.status, 401, "{}", forged.body);
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_hmac_failures_total{reason="mismatch"}"#)
                .await,
            1.0
        );
        ingress
            .shutdown()
            .await
            .expect("stops cleanly while still connecting");
    }
}

mod opening {
    use std::time::Duration;

    use aftercart_ingress::spool::{Spool, SpoolMetrics};
    use aftercart_tests::http;
    use aftercart_tests::ingress::{test_config, TestIngress};
    use aftercart_tests::{eventually, Broker};

    /// One runtime thread: any blocking work on it would stop /livez too.
    #[tokio::test(flavor = "current_thread")]
    async fn the_spool_is_opened_off_the_runtime_and_livez_answers_meanwhile() {
        let broker = Broker::mock();
        let config = test_config(&broker);
        broker.precreate_for_mock(&aftercart_ingress::app::topic_specs(
            &config.kafka,
            config.max_body_bytes,
        ));
        // Another holder of the spool lock: opening waits for it (up to 5 s), as it would
        // read a large spool back.
        let dir = config.spool.as_ref().unwrap().dir.clone();
        let (holder, _) = Spool::open(&dir, 64 << 20, SpoolMetrics::unregistered()).unwrap();
        let ingress = TestIngress::spawn(config).await;
        let livez = tokio::time::timeout(
            Duration::from_secs(2),
            http::get(ingress.admin_addr, "/livez"),
        )
        .await
        .expect("/livez answers while the spool is being opened");
        assert_eq!(livez.status, 200);
        assert_eq!(
            http::get(ingress.admin_addr, "/readyz").await.status,
            503,
            "not ready before the spool is open"
        );
        drop(holder);
        eventually(
            "ready once the spool is open",
            Duration::from_secs(20),
            || async {
                (http::get(ingress.admin_addr, "/readyz").await.status == 200).then_some(())
            },
        )
        .await;
    }
}

/// What the first review found: disconnects, slow headers, unsigned bodies, draining.
mod hostile_clients {
    use std::time::{Duration, Instant};

    use super::scenarios::wait_for_cuts;
    use aftercart_shopify::Family;
    use aftercart_tests::http::{self, Webhook};
    use aftercart_tests::ingress::{test_config, TestIngress, SECRET};
    use aftercart_tests::{eventually, read_topic, Broker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn raw_request(webhook: &Webhook) -> Vec<u8> {
        let mut raw = format!(
            "POST /webhooks/shopify HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n",
            webhook.body.len()
        );
        for (name, value) in webhook.headers() {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        let mut raw = raw.into_bytes();
        raw.extend(&webhook.body);
        raw
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_disconnects_mid_publish_does_not_cause_a_second_record() {
        let broker = Broker::mock();
        let ingress = TestIngress::start_on(&broker, test_config(&broker)).await;
        let warm = Webhook::new("orders/paid", br#"{"id":0}"#.to_vec(), SECRET);
        assert_eq!(warm.post(ingress.addr).await.status, 200);
        broker.slow_down(Duration::from_millis(1500));

        let webhook = Webhook::new(
            "orders/paid",
            br#"{"id":7,"cart_token":"c7"}"#.to_vec(),
            SECRET,
        );
        let mut stream = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        stream.write_all(&raw_request(&webhook)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream); // gone before the delivery report
                      // A retry arriving meanwhile must wait for the first attempt, not publish again.
        let retry = webhook.post(ingress.addr).await;
        assert_eq!(retry.status, 200, "{}", retry.body);
        assert_eq!(retry.json()["status"], "duplicate");
        broker.slow_down(Duration::ZERO);
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Orders)).await;
        let ours = records
            .iter()
            .filter(|r| r.header("shopify-webhook-id") == Some(webhook.webhook_id.as_str()))
            .count();
        assert_eq!(ours, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_headers_are_cut_off_and_others_are_still_served() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.header_read_timeout = Duration::from_millis(500);
        let ingress = TestIngress::start_on(&broker, config).await;
        let mut slow = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        slow.write_all(
            b"POST /webhooks/shopify HTTP/1.1\r\nhost: t\r\nx-shopify-topic: orders/paid\r\n",
        )
        .await
        .unwrap();
        let served = Webhook::new("orders/paid", br#"{"id":1}"#.to_vec(), SECRET)
            .post(ingress.addr)
            .await;
        assert_eq!(
            served.status, 200,
            "a well-behaved client is served meanwhile"
        );
        let started = Instant::now();
        let mut buffer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buffer))
            .await
            .expect("the server closes the slow connection");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_its_answers_loses_its_connection_slot() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.max_connections = 1;
        let ingress = TestIngress::start_on(&broker, config).await;
        // Pipelined requests and never a read: the answers fill both sockets' buffers, hyper
        // stops reading, and the ingress waits to write. Nothing else would ever free the slot.
        let mut staller = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        let requests = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n".repeat(1000);
        while tokio::time::timeout(Duration::from_secs(1), staller.write_all(&requests))
            .await
            .is_ok_and(|written| written.is_ok())
        {}
        // The only slot is the staller's: a well-behaved client is served once it is cut.
        let webhook = Webhook::new("orders/paid", br#"{"id":1}"#.to_vec(), SECRET);
        let served = tokio::time::timeout(Duration::from_secs(40), webhook.post(ingress.addr))
            .await
            .expect("the slot of a client that does not read was never given back");
        assert_eq!(served.status, 200, "{}", served.body);
        wait_for_cuts(&ingress, "write_stall", 1.0).await;
        // Cut with a reset, not a graceful close: the megabytes of unread answers are dropped
        // at once instead of lingering in an orphaned socket outside the connection limit.
        let mut buffer = vec![0u8; 1 << 16];
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(10), staller.read(&mut buffer)).await {
                Ok(Ok(0)) => break Ok(()),
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => break Err(error.kind()),
                Err(_) => panic!("the stalled connection is still open"),
            }
        };
        assert_eq!(ended, Err(std::io::ErrorKind::ConnectionReset));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unsigned_request_is_refused_before_its_body_is_read() {
        let broker = Broker::mock();
        let ingress = TestIngress::start_on(&broker, test_config(&broker)).await;
        // Announces 100 KiB but sends none of it: the answer must not wait for the body.
        let started = Instant::now();
        let answer = http::raw_exchange(
            ingress.addr,
            b"POST /webhooks/shopify HTTP/1.1\r\nhost: t\r\ncontent-length: 102400\r\nx-shopify-topic: orders/paid\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered at once, not after a body read timeout"
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_hmac_failures_total{reason="missing"}"#)
                .await,
            1.0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn draining_keeps_accepting_while_readiness_says_503() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.drain_delay = Duration::from_millis(1500);
        let ingress = TestIngress::start_on(&broker, config).await;
        let (addr, admin) = (ingress.addr, ingress.admin_addr);
        let stopping = tokio::spawn(ingress.shutdown());
        eventually("readiness 503", Duration::from_secs(2), || async {
            (http::get(admin, "/readyz").await.status == 503).then_some(())
        })
        .await;
        let during = Webhook::new("carts/update", br#"{"token":"late"}"#.to_vec(), SECRET)
            .post(addr)
            .await;
        assert_eq!(during.status, 200, "still served during the drain delay");
        stopping.await.unwrap().expect("clean stop");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

/// The durable spool: when Kafka does not acknowledge in time, a 200 still means "safe".
mod spooling {
    use std::time::{Duration, Instant};

    use aftercart_shopify::Family;
    use aftercart_tests::http::Webhook;
    use aftercart_tests::ingress::{test_config, TestIngress, SECRET};
    use aftercart_tests::{eventually, read_topic, Broker, Record};

    /// A cart update numbered `n` for cart `token`.
    fn cart(token: &str, n: usize) -> Webhook {
        Webhook::new(
            "carts/update",
            format!(r#"{{"token":"{token}","n":{n}}}"#).into_bytes(),
            SECRET,
        )
    }

    fn count_of(records: &[Record], webhook: &Webhook) -> usize {
        records
            .iter()
            .filter(|r| r.header("shopify-webhook-id") == Some(webhook.webhook_id.as_str()))
            .count()
    }

    async fn wait_drained(ingress: &TestIngress) {
        eventually("spool drained", Duration::from_secs(30), || async {
            (ingress
                .metric("aftercart_ingress_spool_pending_events")
                .await
                == 0.0)
                .then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_broker_is_answered_from_the_spool_without_a_second_copy() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.spool_after = Duration::from_millis(300);
        let ingress = TestIngress::start_on(&broker, config).await;
        let warm = cart("warm", 0);
        assert_eq!(warm.post(ingress.addr).await.status, 200);
        broker.slow_down(Duration::from_millis(1500));

        let webhook = cart("slow", 1);
        let started = Instant::now();
        let response = webhook.post(ingress.addr).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.json()["status"], "accepted");
        assert!(
            started.elapsed() < Duration::from_millis(1400),
            "answered from the spool, before Kafka"
        );
        assert_eq!(
            ingress
                .metric("aftercart_ingress_spool_appended_total")
                .await,
            1.0
        );
        broker.slow_down(Duration::ZERO);
        wait_drained(&ingress).await;
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        assert_eq!(
            count_of(&records, &webhook),
            1,
            "the drainer waited for the first attempt instead of publishing again"
        );
        assert_eq!(
            ingress
                .metric("aftercart_ingress_spool_drained_total")
                .await,
            1.0
        );
        let retry = webhook.post(ingress.addr).await;
        assert_eq!(retry.json()["status"], "duplicate");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_is_answered_200_and_drained_in_arrival_order_per_key() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.spool_after = Duration::from_millis(300);
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();

        let mut sent = Vec::new();
        for n in 0..60 {
            let webhook = cart(if n % 3 == 0 { "a" } else { "b" }, n);
            let response = webhook.post(ingress.addr).await;
            assert_eq!(
                response.status, 200,
                "webhook {n} during the outage: {}",
                response.body
            );
            sent.push(webhook);
        }
        assert_eq!(
            ingress
                .metric("aftercart_ingress_spool_pending_events")
                .await,
            60.0
        );
        assert!(ingress.metric("aftercart_ingress_spool_bytes").await > 0.0);
        broker.up();
        wait_drained(&ingress).await;

        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        for webhook in &sent {
            assert_eq!(
                count_of(&records, webhook),
                1,
                "every acknowledged webhook exactly once"
            );
        }
        for token in ["a", "b"] {
            let order: Vec<u64> = records
                .iter()
                .map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).unwrap())
                .filter(|body| body["token"] == token)
                .map(|body| body["n"].as_u64().unwrap())
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(order, sorted, "cart {token} in arrival order");
        }
        // Back to direct publishing once the spool is empty.
        assert_eq!(cart("after", 99).post(ingress.addr).await.status, 200);
        assert_eq!(
            ingress
                .metric("aftercart_ingress_spool_appended_total")
                .await,
            60.0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spooled_events_are_published_by_the_next_start() {
        let broker = Broker::mock();
        let config = restartable_config(&broker);
        let ingress = TestIngress::start_on(&broker, config.clone()).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();
        let sent: Vec<Webhook> = (0..20).map(|n| cart("restart", n)).collect();
        for webhook in &sent {
            assert_eq!(webhook.post(ingress.addr).await.status, 200);
        }
        ingress
            .shutdown()
            .await
            .expect("stops with events left in the spool");
        broker.up();

        let restart_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let restarted = TestIngress::start(config).await;
        wait_drained(&restarted).await;
        let records = read_topic(&broker.bootstrap(), &restarted.topic(Family::Carts)).await;
        for webhook in &sent {
            assert_eq!(count_of(&records, webhook), 1);
        }
        // Drained after the restart, yet stamped with the time each was received: consumers'
        // timers are not shifted by the outage.
        for record in records
            .iter()
            .filter(|r| r.header("aftercart-received-at").is_some())
        {
            let received = humantime::parse_rfc3339(record.header("aftercart-received-at").unwrap())
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            assert_eq!(
                record.timestamp,
                Some(received),
                "Kafka timestamp is the receive time"
            );
            assert!(received < restart_ms);
        }
        assert_eq!(
            restarted
                .metric("aftercart_ingress_spool_drained_total")
                .await,
            20.0
        );
    }

    /// The events in the spool's `refused/` directory (its `.wal` files), and whether each holds
    /// `needle`.
    fn refused_files(config: &aftercart_ingress::IngressConfig, needle: &str) -> Vec<bool> {
        let dir = config.spool.as_ref().expect("spool on").dir.join("refused");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "wal") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            found.push(
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes()),
            );
        }
        found
    }

    /// A config that spools after 200 ms and stops within a second (what it spooled stays).
    fn restartable_config(broker: &Broker) -> aftercart_ingress::IngressConfig {
        let mut config = test_config(broker);
        config.spool_after = Duration::from_millis(200);
        config.shutdown_timeout = Duration::from_secs(1);
        config
    }

    /// Spools `webhooks` during an outage, then stops the ingress with them still on disk.
    async fn spool_then_stop(
        broker: &Broker,
        config: &aftercart_ingress::IngressConfig,
        webhooks: &[&Webhook],
    ) {
        let ingress = TestIngress::start_on(broker, config.clone()).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();
        for webhook in webhooks {
            let response = webhook.post(ingress.addr).await;
            assert_eq!(response.status, 200, "{}", response.body);
        }
        ingress
            .shutdown()
            .await
            .expect("stops with events left in the spool");
        broker.up();
    }

    /// A spooled event the producer refuses for good before sending it (larger than the
    /// `message.max.bytes` of an ingress restarted with a lower body limit) would be refused on
    /// the quarantine topic too: it is set aside in `<spool>/refused/` and counted, and the
    /// acknowledged events behind it drain instead of waiting behind it for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spooled_event_the_producer_refuses_for_good_is_set_aside_and_the_rest_drain() {
        let broker = Broker::mock();
        let mut config = restartable_config(&broker);
        let padding = "x".repeat(200_000);
        let big = Webhook::new(
            "carts/update",
            format!(r#"{{"token":"big","pad":"{padding}"}}"#).into_bytes(),
            SECRET,
        );
        let behind: Vec<Webhook> = (1..4).map(|n| cart("behind", n)).collect();
        let mut spooled = vec![&big];
        spooled.extend(behind.iter());
        spool_then_stop(&broker, &config, &spooled).await;

        // Its producer's message.max.bytes is the body limit + 64 KiB: below the big record.
        config.max_body_bytes = 16 * 1024;
        let restarted = TestIngress::start(config.clone()).await;
        wait_drained(&restarted).await;
        let records = read_topic(&broker.bootstrap(), &restarted.topic(Family::Carts)).await;
        for webhook in &behind {
            assert_eq!(
                count_of(&records, webhook),
                1,
                "drained past the refused event"
            );
        }
        assert_eq!(count_of(&records, &big), 0);
        assert_eq!(
            restarted
                .metric("aftercart_ingress_spool_set_aside_total")
                .await,
            1.0
        );
        assert!(
            restarted
                .metric(r#"aftercart_ingress_spool_publish_errors_total{class="permanent"}"#)
                .await
                >= 1.0
        );
        assert_eq!(
            refused_files(&config, &big.webhook_id),
            vec![true],
            "kept on disk with its webhook id"
        );
        assert_eq!(
            restarted
                .metric("aftercart_ingress_spool_held_aside_events")
                .await,
            1.0
        );
        assert_eq!(
            restarted
                .metric("aftercart_ingress_spool_drained_total")
                .await,
            3.0,
            "set aside is not drained"
        );
    }

    /// The same when the broker refuses the record on its topic and on the quarantine topic (a
    /// topic created with a smaller `max.message.bytes` than the ingress's): set aside, counted,
    /// and publishing goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spooled_event_the_broker_refuses_on_both_topics_is_set_aside() {
        let broker = Broker::mock();
        let config = restartable_config(&broker);
        let refused = cart("refused", 1);
        spool_then_stop(&broker, &config, &[&refused]).await;

        // More refusals than the two the event meets: the stopped ingress's producer may still
        // be retrying its own attempts and take some.
        broker.refuse_produce(
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
            20,
        );
        let restarted = TestIngress::spawn(config.clone()).await;
        // Not ready before its spool is open (the backlog gauge reads 0 until then).
        eventually(
            "the refused event set aside",
            Duration::from_secs(30),
            || async {
                (restarted
                    .metric("aftercart_ingress_spool_set_aside_total")
                    .await
                    == 1.0)
                    .then_some(())
            },
        )
        .await;
        wait_drained(&restarted).await;
        assert_eq!(refused_files(&config, &refused.webhook_id), vec![true]);
        assert_eq!(
            restarted
                .metric("aftercart_ingress_spool_held_aside_events")
                .await,
            1.0
        );
        broker.accept_produce();
        let later = cart("later", 2);
        assert_eq!(later.post(restarted.addr).await.status, 200);
        let records = read_topic(&broker.bootstrap(), &restarted.topic(Family::Carts)).await;
        assert_eq!(count_of(&records, &refused), 0);
        assert_eq!(count_of(&records, &later), 1);
    }

    /// A refusal that is not about the record's size (a cluster setting that would refuse every
    /// record, e.g. `INVALID_RECORD` for an old message format) on both topics is retried until
    /// Kafka takes the event: a whole backlog is never set aside for a configuration mistake.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spooled_event_refused_on_both_topics_for_another_reason_is_retried() {
        let broker = Broker::mock();
        let config = restartable_config(&broker);
        let event = cart("invalid", 1);
        spool_then_stop(&broker, &config, &[&event]).await;
        broker.refuse_produce(
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD,
            4,
        );
        let restarted = TestIngress::spawn(config.clone()).await;
        eventually(
            "published once Kafka takes it",
            Duration::from_secs(30),
            || async {
                let records =
                    read_topic(&broker.bootstrap(), &restarted.topic(Family::Carts)).await;
                (count_of(&records, &event) == 1).then_some(())
            },
        )
        .await;
        assert!(
            restarted
                .metric(r#"aftercart_ingress_spool_publish_errors_total{class="permanent"}"#)
                .await
                >= 1.0
        );
        assert_eq!(
            restarted
                .metric("aftercart_ingress_spool_set_aside_total")
                .await,
            0.0
        );
        let aside = config.spool.as_ref().unwrap().dir.join("refused");
        assert!(!aside.exists() || std::fs::read_dir(&aside).unwrap().count() <= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_spool_answers_503_and_loses_nothing_it_acknowledged() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.spool_after = Duration::from_millis(200);
        config.spool.as_mut().unwrap().max_bytes = 1 << 20;
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();
        let padding = "x".repeat(100_000);
        let (mut acknowledged, mut refused) = (Vec::new(), 0);
        for n in 0..15 {
            let webhook = Webhook::new(
                "carts/update",
                format!(r#"{{"token":"big","n":{n},"pad":"{padding}"}}"#).into_bytes(),
                SECRET,
            );
            let response = webhook.post(ingress.addr).await;
            match response.status.as_u16() {
                200 => acknowledged.push(webhook),
                503 => {
                    assert_eq!(response.headers["retry-after"], "5");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {}", response.body),
            }
        }
        assert!(
            refused > 0 && acknowledged.len() >= 9,
            "{} acknowledged, {refused} refused",
            acknowledged.len()
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_spool_rejected_total{reason="full"}"#)
                .await,
            refused as f64
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_unavailable_total{reason="spool_refused"}"#)
                .await,
            refused as f64
        );
        broker.up();
        wait_drained(&ingress).await;
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        for webhook in &acknowledged {
            assert_eq!(count_of(&records, webhook), 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ingress_started_during_an_outage_spools_until_kafka_answers() {
        let broker = Broker::mock();
        broker.down();
        let config = test_config(&broker);
        broker.precreate_for_mock(&aftercart_ingress::app::topic_specs(
            &config.kafka,
            config.max_body_bytes,
        ));
        let ingress = TestIngress::spawn(config).await;
        let webhook = cart("early", 1);
        let response = webhook.post(ingress.addr).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            ingress
                .metric("aftercart_ingress_spool_pending_events")
                .await,
            1.0
        );
        broker.up();
        wait_drained(&ingress).await;
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        assert_eq!(count_of(&records, &webhook), 1);
    }

    async fn readyz(ingress: &TestIngress) -> u16 {
        aftercart_tests::http::get(ingress.admin_addr, "/readyz")
            .await
            .status
            .as_u16()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ingress_whose_spool_works_is_ready_during_a_kafka_outage() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        // Nothing listens here: every pod restarting during an outage sees this.
        config.kafka.brokers = format!("127.0.0.1:{}", aftercart_tests::broker::free_port());
        let ingress = TestIngress::spawn(config).await;
        eventually(
            "ready on the spool alone",
            Duration::from_secs(10),
            || async { (readyz(&ingress).await == 200).then_some(()) },
        )
        .await;
        assert_eq!(ingress.metric("aftercart_ingress_kafka_healthy").await, 0.0);
        let response = cart("outage", 1).post(ingress.addr).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            ingress
                .metric("aftercart_ingress_spool_pending_events")
                .await,
            1.0
        );
    }

    /// A spool whose fsync hangs (a stalled network volume) answers 503 at the deadline, with
    /// its reason counted; the event is made durable and drained once the disk answers, and
    /// Shopify's retry is then a duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_spool_fsync_answers_503_at_the_deadline_with_its_reason_counted() {
        let broker = Broker::mock();
        let (mut config, disk) = on_test_disk(&broker, Duration::from_millis(200));
        config.publish_deadline = Duration::from_millis(800);
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();
        disk.set_fsync_delay(Duration::from_secs(5));
        let webhook = cart("stalled", 1);
        let started = Instant::now();
        let response = webhook.post(ingress.addr).await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "at the deadline, not after the fsync"
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_unavailable_total{reason="spool_fsync_timeout"}"#)
                .await,
            1.0
        );
        disk.set_fsync_delay(Duration::ZERO);
        broker.up();
        // The late fsync made it safe: the retry is a duplicate, and the event drains.
        eventually(
            "the late fsync remembered",
            Duration::from_secs(10),
            || async {
                let retry = webhook.post(ingress.addr).await;
                (retry.json()["status"] == "duplicate").then_some(())
            },
        )
        .await;
        wait_drained(&ingress).await;
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        assert_eq!(count_of(&records, &webhook), 1);
    }

    /// The slowest of `probes` answers to `GET /livez` on `admin`, each from a plain socket on
    /// a thread of its own, so that a stalled runtime cannot hold up the client as well.
    async fn slowest_livez(admin: std::net::SocketAddr, probes: u32) -> Duration {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut slowest = Duration::ZERO;
            for _ in 0..probes {
                let started = Instant::now();
                let mut socket = std::net::TcpStream::connect(admin).expect("admin port");
                socket
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                socket
                    .write_all(b"GET /livez HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut answer = String::new();
                socket.read_to_string(&mut answer).expect("an answer");
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                slowest = slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(200));
            }
            slowest
        })
        .await
        .expect("the probe thread")
    }

    /// A stalled spool volume (fsyncs taking seconds) holds up the events that need the spool,
    /// never the process: the spool's bookkeeping is not waited on by runtime threads while the
    /// writer holds it across a segment's creation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_spool_disk_does_not_stall_the_runtime() {
        let broker = Broker::mock();
        let (config, disk) = on_test_disk(&broker, Duration::from_millis(200));
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();
        disk.set_fsync_delay(Duration::from_secs(6));
        let addr = ingress.addr;
        let stalled = tokio::spawn(async move { cart("stalled", 1).post(addr).await });
        // The writer is now creating the first segment, its directory fsync stalled.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let slowest = slowest_livez(ingress.admin_addr, 10).await;
        assert!(
            slowest < Duration::from_secs(2),
            "the admin port answered {slowest:?} late while the spool disk stalled"
        );
        disk.set_fsync_delay(Duration::ZERO);
        broker.up();
        let answer = stalled.await.unwrap();
        assert_eq!(answer.status, 503, "{}", answer.body);
    }

    /// A config whose spool lives at `/spool` on a fresh test disk (returned with it), spooling
    /// what Kafka has not acknowledged after `spool_after`.
    fn on_test_disk(
        broker: &Broker,
        spool_after: Duration,
    ) -> (
        aftercart_ingress::IngressConfig,
        aftercart_ingress::spool::crash_disk::CrashDisk,
    ) {
        let disk = aftercart_ingress::spool::crash_disk::CrashDisk::new();
        let mut config = test_config(broker);
        config.spool_after = spool_after;
        let spool = config.spool.as_mut().unwrap();
        spool.dir = "/spool".into();
        spool.disk = aftercart_ingress::spool::disk::SpoolDisk(std::sync::Arc::new(disk.clone()));
        (config, disk)
    }

    /// Lets the held fsyncs of a test disk go when dropped.
    struct ReleaseFsyncs(aftercart_ingress::spool::crash_disk::CrashDisk);

    impl Drop for ReleaseFsyncs {
        fn drop(&mut self) {
            self.0.hold_fsyncs(false);
        }
    }

    /// A spool volume that hangs while Kafka is back (the backlog's checkpoint fsync stalled):
    /// new events go around the spool straight to Kafka, as for a spool that fails, instead of
    /// queueing behind the hung writer until their deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_spool_is_gone_around_while_kafka_takes_records() {
        let broker = Broker::mock();
        let (config, disk) = on_test_disk(&broker, Duration::from_millis(300));
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();
        assert_eq!(cart("backlog", 1).post(ingress.addr).await.status, 200);
        disk.hold_fsyncs(true);
        // Let go whatever happens below: a failed assertion must not leave the writer hung.
        let _release = ReleaseFsyncs(disk.clone());
        let addr = ingress.addr;
        let _hung = tokio::spawn(async move { cart("hung", 2).post(addr).await });
        broker.up();
        eventually(
            "the spool seen stalled",
            Duration::from_secs(15),
            || async {
                (ingress.metric("aftercart_ingress_spool_healthy").await == 0.0).then_some(())
            },
        )
        .await;
        eventually("Kafka seen back", Duration::from_secs(15), || async {
            (ingress.metric("aftercart_ingress_kafka_healthy").await == 1.0).then_some(())
        })
        .await;
        assert!(
            ingress
                .metric("aftercart_ingress_spool_pending_events")
                .await
                >= 1.0,
            "the backlog is still there (its checkpoint fsync hangs)"
        );
        let around = cart("around", 3);
        let response = around.post(ingress.addr).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_spool_bypassed_total{reason="stalled"}"#)
                .await,
            1.0
        );
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        assert_eq!(count_of(&records, &around), 1);
    }

    /// A replica whose spool volume hangs (an fsync running for seconds) while Kafka is down can
    /// only answer 503 at the deadline: it leaves the Service (`/readyz` 503) until the disk
    /// answers, like a replica whose spool fails outright.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_spool_fsync_with_kafka_down_makes_the_replica_not_ready() {
        let broker = Broker::mock();
        let (config, disk) = on_test_disk(&broker, Duration::from_millis(200));
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        broker.down();
        // Ready on the spool's account while Kafka is down and the disk answers.
        assert_eq!(cart("spooled", 1).post(ingress.addr).await.status, 200);
        eventually("Kafka seen down", Duration::from_secs(30), || async {
            (ingress.metric("aftercart_ingress_kafka_healthy").await == 0.0).then_some(())
        })
        .await;
        assert_eq!(readyz(&ingress).await, 200);
        disk.set_fsync_delay(Duration::from_secs(12));
        let addr = ingress.addr;
        let stalled = tokio::spawn(async move { cart("stalled", 2).post(addr).await });
        eventually(
            "not ready while the fsync hangs",
            Duration::from_secs(10),
            || async { (readyz(&ingress).await == 503).then_some(()) },
        )
        .await;
        assert_eq!(ingress.metric("aftercart_ingress_spool_healthy").await, 0.0);
        assert_eq!(stalled.await.unwrap().status, 503);
        disk.set_fsync_delay(Duration::ZERO);
        eventually(
            "ready again once the disk answers",
            Duration::from_secs(40),
            || async { (readyz(&ingress).await == 200).then_some(()) },
        )
        .await;
        broker.up();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sick_spool_is_gone_around_while_kafka_takes_records() {
        let broker = Broker::mock();
        let (mut config, disk) = on_test_disk(&broker, Duration::from_millis(300));
        config.publish_deadline = Duration::from_secs(3);
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(cart("warm", 0).post(ingress.addr).await.status, 200);
        // A backlog: Kafka down, five events spooled.
        broker.down();
        let mut sent: Vec<Webhook> = (1..=5).map(|n| cart("backlog", n)).collect();
        for webhook in &sent {
            assert_eq!(webhook.post(ingress.addr).await.status, 200);
        }
        // Kafka counts as healthy for a few seconds after its last success: wait until the
        // ingress has seen it down, so that "back" below means a probe answered after up().
        eventually("Kafka seen down", Duration::from_secs(30), || async {
            (ingress.metric("aftercart_ingress_kafka_healthy").await == 0.0).then_some(())
        })
        .await;
        // The disk dies (reads too, so the backlog stays), then Kafka is back.
        disk.set_broken(true);
        broker.up();
        eventually("Kafka seen back", Duration::from_secs(30), || async {
            (ingress.metric("aftercart_ingress_kafka_healthy").await == 1.0).then_some(())
        })
        .await;
        // And taking records again: the first attempts of the backlog's events, still in the
        // producer, have been delivered (a new record would queue behind their retries and
        // miss the spool-after budget the direct path has).
        eventually(
            "the producer's queue drained",
            Duration::from_secs(30),
            || async {
                (ingress
                    .metric("aftercart_ingress_kafka_queue_messages")
                    .await
                    == 0.0)
                    .then_some(())
            },
        )
        .await;
        for n in 6..=15 {
            let webhook = cart("direct", n);
            let response = webhook.post(ingress.addr).await;
            assert_eq!(
                response.status, 200,
                "webhook {n}: Kafka is healthy, the sick spool is gone around: {}",
                response.body
            );
            sent.push(webhook);
        }
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_spool_bypassed_total{reason="disk_error"}"#)
                .await,
            10.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_spool_rejected_total{reason="disk_error"}"#)
                .await,
            0.0
        );
        // Readiness and its gauges are recomputed every 250 ms.
        eventually("the spool seen sick", Duration::from_secs(5), || async {
            (ingress.metric("aftercart_ingress_spool_healthy").await == 0.0).then_some(())
        })
        .await;
        assert_eq!(
            readyz(&ingress).await,
            200,
            "Kafka alone makes webhooks safe"
        );
        // Kafka down too: nothing can make a webhook safe, the replica is taken out.
        broker.down();
        let refused = cart("nowhere", 99).post(ingress.addr).await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        eventually("not ready", Duration::from_secs(10), || async {
            (readyz(&ingress).await == 503).then_some(())
        })
        .await;
        // Both back: the backlog drains and nothing acknowledged is lost.
        broker.up();
        disk.set_broken(false);
        eventually("ready again", Duration::from_secs(10), || async {
            (readyz(&ingress).await == 200).then_some(())
        })
        .await;
        wait_drained(&ingress).await;
        let records = read_topic(&broker.bootstrap(), &ingress.topic(Family::Carts)).await;
        for webhook in &sent {
            assert_eq!(count_of(&records, webhook), 1, "{}", webhook.webhook_id);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_that_cannot_open_fails_closed_without_stopping_the_ingress() {
        let broker = Broker::mock();
        let mut config = test_config(&broker);
        config.spool_after = Duration::from_millis(300);
        config.publish_deadline = Duration::from_millis(800);
        // A file where the directory should be: every open fails.
        let not_a_dir = std::env::temp_dir().join(format!(
            "aftercart-not-a-dir-{}",
            aftercart_tests::unique_prefix()
        ));
        std::fs::write(&not_a_dir, b"").unwrap();
        config.spool.as_mut().unwrap().dir = not_a_dir.join("spool");
        let ingress = TestIngress::start_on(&broker, config).await;
        assert_eq!(
            cart("fine", 0).post(ingress.addr).await.status,
            200,
            "Kafka alone still works"
        );
        assert_eq!(
            ingress.metric("aftercart_ingress_spool_available").await,
            0.0
        );
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_spool_errors_total{op="open"}"#)
                .await,
            1.0
        );
        broker.slow_down(Duration::from_millis(1500));
        let response = cart("slow", 1).post(ingress.addr).await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert_eq!(
            ingress
                .metric(r#"aftercart_ingress_spool_rejected_total{reason="disk_error"}"#)
                .await,
            1.0
        );
        broker.slow_down(Duration::ZERO);
    }
}

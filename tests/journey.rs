//! Journey service integration tests: the ingress and the service in-process on a real broker
//! (mock cluster and Tansu), an order and its fulfilments sent as signed webhooks, the
//! touchpoints read back with an independent consumer and validated against
//! `schemas/aftercart/touchpoints.schema.json`, and the file destination's files checked.

use aftercart_tests::broker_tests;

broker_tests!(
    a_delivered_order_is_told_step_by_step_then_asked_for_a_review_and_reminded,
    a_cancelled_order_gets_no_timed_touchpoints_and_poison_is_dead_lettered,
    a_shop_whose_orders_stop_while_others_continue_is_flagged_until_it_orders_again,
    a_data_request_is_answered_with_the_orders_held_about_the_customer,
    a_data_request_sent_while_the_service_is_down_is_answered_once_after_its_restart,
    a_redacted_customer_gets_no_touchpoint_and_their_email_is_in_no_output,
);

mod scenarios {
    use std::path::PathBuf;
    use std::time::Duration;

    use aftercart_journey::JourneyConfig;
    use aftercart_tests::data_requests::{answers_to, kinds, reports};
    use aftercart_tests::delivery::{produce_at, Input};
    use aftercart_tests::http::Webhook;
    use aftercart_tests::ingress::{test_config as ingress_config, TestIngress, SECRET};
    use aftercart_tests::journey::{test_config, TestJourney};
    use aftercart_tests::schemas::assert_valid;
    use aftercart_tests::{eventually, read_topic, unique_prefix, Broker};
    use serde_json::{json, Value};

    const SHOP: &str = "jsmith.myshopify.com";
    const PRODUCT: u64 = 788032119674292922;

    struct Stack {
        ingress: TestIngress,
        /// `None` while stopped ([`Stack::restart`]).
        service: Option<TestJourney>,
        config: JourneyConfig,
        bootstrap: String,
        dir: PathBuf,
    }

    impl Stack {
        /// The journey with a review request 2 s after delivery, a 3 s usage period for the
        /// product, and a file destination in a fresh directory.
        async fn start(broker: &Broker) -> Stack {
            let ingress = TestIngress::start_on(broker, ingress_config(broker)).await;
            let dir = aftercart_tests::scratch(&format!("journey-{}", unique_prefix()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("journey.toml");
            std::fs::write(
                &file,
                format!(
                    "review_request_after = \"2s\"\n\
                     [kpis]\nday_length = \"3s\"\n\
                     [[replenishment]]\nproduct_id = {PRODUCT}\nevery = \"3s\"\n\
                     [destination]\ntype = \"file\"\ndir = \"{}\"\n",
                    dir.join("out").display()
                ),
            )
            .unwrap();
            let config = test_config(&ingress.config.kafka, Some(&file));
            let service = TestJourney::start_on(broker, config.clone()).await;
            Stack {
                ingress,
                service: Some(service),
                config,
                bootstrap: broker.bootstrap(),
                dir,
            }
        }

        /// Sends a webhook and waits until the service applied it (records of one order land
        /// in different source topics, so without the wait their order is not the sent one).
        async fn send(&self, topic: &str, body: Value) {
            let before = self.applied();
            self.post(topic, body).await;
            eventually("the record applied", Duration::from_secs(30), || async {
                (self.applied() > before).then_some(())
            })
            .await;
        }

        fn service(&self) -> &TestJourney {
            self.service.as_ref().expect("running")
        }

        async fn stop(&mut self) {
            let service = self.service.take().expect("running");
            service.stop().await.expect("clean stop");
        }

        async fn start_again(&mut self, broker: &Broker) {
            self.service = Some(TestJourney::start_on(broker, self.config.clone()).await);
        }

        /// Sends a webhook through the ingress, without waiting for the service.
        async fn post(&self, topic: &str, body: Value) {
            let response = Webhook::new(topic, body.to_string().into_bytes(), SECRET)
                .post(self.ingress.addr)
                .await;
            assert_eq!(response.status, 200, "{}", response.body);
        }

        fn applied(&self) -> f64 {
            self.service()
                .metrics()
                .lines()
                .filter(|line| {
                    line.starts_with("aftercart_journey_records_processed_total{")
                        || line.starts_with("aftercart_journey_records_failed_total{")
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        }

        async fn touchpoints(&self) -> Vec<Value> {
            read_topic(&self.bootstrap, &self.config.touchpoints_topic)
                .await
                .iter()
                .map(|record| {
                    let value: Value = serde_json::from_slice(&record.value).expect("JSON");
                    assert_valid("aftercart/touchpoints.schema.json", &value);
                    assert_eq!(
                        record.header("aftercart-event-id"),
                        value["event_id"].as_str()
                    );
                    assert_eq!(record.key_str(), format!("{SHOP}/{}", value["order"]["id"]));
                    value
                })
                .collect()
        }

        async fn reports(&self) -> Vec<Value> {
            reports(&self.bootstrap, &self.config.data_requests_topic).await
        }

        async fn answers_to(&self, id: u64) -> Vec<Value> {
            answers_to(&self.bootstrap, &self.config.data_requests_topic, id).await
        }

        async fn wait_for(&self, kind: &str) -> Vec<Value> {
            eventually(kind, Duration::from_secs(30), || async {
                let all = self.touchpoints().await;
                all.iter().any(|t| t["type"] == kind).then_some(all)
            })
            .await
        }
    }

    impl Drop for Stack {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn order(id: u64, accepts: bool) -> Value {
        json!({"id": id, "name": format!("#{id}"), "email": "bea@example.com", "cart_token": format!("cart-{id}"),
               "buyer_accepts_marketing": accepts, "financial_status": "paid", "test": false,
               "total_price": "42.00", "currency": "EUR", "created_at": "2026-11-01T10:00:00Z",
               "cancelled_at": null, "customer": {"id": 42, "first_name": "Bea"},
               "line_items": [{"id": 1, "product_id": PRODUCT, "title": "Coffee", "quantity": 1, "price": "42.00"}]})
    }

    /// A `customers/data_request` (Shopify's request id `id`) about `customer`.
    fn data_request(id: u64, customer: Value) -> Value {
        json!({"shop_id": 1, "shop_domain": SHOP, "customer": customer,
               "orders_requested": [], "data_request": {"id": id}})
    }

    fn fulfillment(order_id: u64, shipment_status: &str) -> Value {
        json!({"id": 77, "order_id": order_id, "status": "success", "shipment_status": shipment_status,
               "tracking_company": "UPS", "tracking_number": "1z827wk74630",
               "tracking_url": "https://www.ups.com/track?n=1z827wk74630"})
    }

    fn carrier(order_id: u64, status: &str) -> Value {
        json!({"id": 1000 + status.len(), "fulfillment_id": 77, "order_id": order_id, "status": status,
               "happened_at": null})
    }

    pub async fn a_delivered_order_is_told_step_by_step_then_asked_for_a_review_and_reminded(
        broker: &Broker,
    ) {
        let stack = Stack::start(broker).await;
        stack.send("orders/paid", order(5, true)).await;
        // Orders and fulfilments are separate topics, read in no set order: a shipment read
        // before its order is told only where it stands when the order comes (a unit test).
        stack.wait_for("order_confirmed").await;
        stack
            .send("fulfillments/create", fulfillment(5, "in_transit"))
            .await;
        stack
            .send("fulfillment_events/create", carrier(5, "out_for_delivery"))
            .await;
        stack
            .send("fulfillment_events/create", carrier(5, "delivered"))
            .await;
        // A late, repeated carrier event changes nothing.
        stack
            .send("fulfillment_events/create", carrier(5, "in_transit"))
            .await;
        let all = stack.wait_for("replenishment_reminder").await;
        let types: Vec<&str> = all.iter().map(|t| t["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "order_confirmed",
                "shipped",
                "out_for_delivery",
                "delivered",
                "review_request",
                "replenishment_reminder"
            ]
        );
        assert_eq!(all[1]["fulfillment"]["tracking_company"], "UPS");
        assert_eq!(all[5]["product"]["id"], PRODUCT);
        let mut ids: Vec<&str> = all
            .iter()
            .map(|t| t["event_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 6, "distinct event ids");
        // The file destination got each, named by its event id.
        let shop_dir = stack.dir.join("out").join(SHOP);
        let files = eventually("the touchpoint files", Duration::from_secs(30), || async {
            let files: Vec<String> = std::fs::read_dir(&shop_dir)
                .ok()?
                .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect();
            (files.len() >= 6).then_some(files)
        })
        .await;
        for id in &ids {
            assert!(files.iter().any(|f| f.contains(id)), "{id} in {files:?}");
        }
        aftercart_tests::settles_at(
            r#"aftercart_journey_touchpoints_total{type="review_request"}"#,
            1.0,
            |s| stack.service().metric(s),
        )
        .await;
        aftercart_tests::settles_at(
            "aftercart_journey_order_to_delivery_seconds_count",
            1.0,
            |s| stack.service().metric(s),
        )
        .await;
        // KPI "days" of 3 s: the records, summed, count the order and its delivery once.
        let kpis = eventually("the KPI records", Duration::from_secs(30), || async {
            let records: Vec<Value> = read_topic(&stack.bootstrap, &stack.config.kpis_topic)
                .await
                .iter()
                .map(|record| {
                    let value: Value = serde_json::from_slice(&record.value).expect("JSON");
                    assert_valid("aftercart/kpis.schema.json", &value);
                    assert_eq!(record.key_str(), SHOP);
                    value
                })
                .collect();
            let sum = |field: &str| {
                records
                    .iter()
                    .map(|r| r["yesterday"][field].as_f64().unwrap())
                    .sum::<f64>()
            };
            (sum("orders") == 1.0 && sum("deliveries") == 1.0).then_some(records)
        })
        .await;
        let with_order = kpis
            .iter()
            .find(|r| r["yesterday"]["orders"] == 1.0)
            .unwrap();
        assert_eq!(with_order["yesterday"]["revenue"]["EUR"], 42.0);
        assert_eq!(with_order["shop"], SHOP);
    }

    pub async fn a_cancelled_order_gets_no_timed_touchpoints_and_poison_is_dead_lettered(
        broker: &Broker,
    ) {
        let stack = Stack::start(broker).await;
        stack.send("orders/paid", order(6, true)).await;
        stack
            .send(
                "orders/cancelled",
                json!({"id": 6, "cancelled_at": "2026-11-02T00:00:00Z", "cart_token": "cart-6"}),
            )
            .await;
        // Orders and fulfilments are separate topics: a delivery sent after the cancellation can
        // be read first, and its 2 s review timer fire before the cancellation is read. Deliver
        // once the cancellation is applied (stopping timers already running is a unit test).
        eventually("the cancellation", Duration::from_secs(30), || async {
            (stack
                .service()
                .metric(r#"aftercart_journey_orders_stopped_total{reason="cancelled"}"#)
                == 1.0)
                .then_some(())
        })
        .await;
        stack
            .send("fulfillment_events/create", carrier(6, "delivered"))
            .await;
        eventually("order 6 delivered", Duration::from_secs(30), || async {
            (stack.touchpoints().await.len() == 2).then_some(())
        })
        .await;
        // A second order without consent: delivered, told, but never asked for a review.
        stack.send("orders/paid", order(7, false)).await;
        stack
            .send("fulfillment_events/create", carrier(7, "delivered"))
            .await;
        // Poison: an order id that is not a number.
        stack
            .send("fulfillments/update", json!({"id": 1, "order_id": "x"}))
            .await;
        let dead = eventually("the dead letter", Duration::from_secs(30), || async {
            let dead = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
            (!dead.is_empty()).then_some(dead)
        })
        .await;
        assert_eq!(dead.len(), 1);
        // Order 7's last timer (the reminder, 3 s after its delivery) fired after every timer
        // order 6 would have had: had the cancellation not stopped them, they would show.
        eventually("the skipped reminder", Duration::from_secs(30), || async {
            (stack.service().metric(
                r#"aftercart_journey_touchpoints_skipped_total{reason="no_consent",type="replenishment_reminder"}"#,
            ) == 1.0)
                .then_some(())
        })
        .await;
        assert_eq!(
            stack.service().metric(
                r#"aftercart_journey_touchpoints_skipped_total{reason="no_consent",type="review_request"}"#
            ),
            1.0
        );
        let all = stack.touchpoints().await;
        let types: Vec<&str> = all.iter().map(|t| t["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "order_confirmed",
                "delivered",
                "order_confirmed",
                "delivered"
            ]
        );
        aftercart_tests::settles_at(
            r#"aftercart_journey_orders_stopped_total{reason="cancelled"}"#,
            1.0,
            |s| stack.service().metric(s),
        )
        .await;
    }

    /// Produces order webhooks as the ingress would, with their ingress time set in the past
    /// (the watchdog judges on the records' timestamps), each shop's in order.
    async fn orders_at(broker: &Broker, topic: &str, orders: &[(&str, u64, i64)]) {
        let bodies: Vec<String> = orders
            .iter()
            .map(|(_, id, _)| order(*id, true).to_string())
            .collect();
        let headers: Vec<[(&str, &str); 2]> = orders
            .iter()
            .map(|(shop, _, _)| {
                [
                    ("shopify-topic", "orders/create"),
                    ("shopify-shop-domain", *shop),
                ]
            })
            .collect();
        let records: Vec<(Input<'_>, i64)> = orders
            .iter()
            .enumerate()
            .map(|(n, (shop, _, at))| {
                let input = Input {
                    key: shop,
                    value: bodies[n].as_bytes(),
                    headers: &headers[n],
                };
                (input, *at)
            })
            .collect();
        produce_at(broker, topic, &records).await;
    }

    pub async fn a_shop_whose_orders_stop_while_others_continue_is_flagged_until_it_orders_again(
        broker: &Broker,
    ) {
        const MIN: i64 = 60_000;
        let stack = Stack::start(broker).await;
        let topic = aftercart_kafka::TopicNames::new(&stack.config.kafka.topic_prefix)
            .family(aftercart_shopify::Family::Orders);
        let now = aftercart_shopify::time::now_ms();
        let start = now - 20 * 60 * MIN;
        let (quiet, busy) = ("quiet.myshopify.com", "busy.myshopify.com");
        // Both order every 30 minutes for 6 hours (history enough to be judged), then only
        // `busy` goes on for 7 more hours: `quiet` is silent past the 6-hour minimum.
        let mut orders = Vec::new();
        for n in 0..12 {
            orders.push((quiet, 100 + n as u64, start + n * 30 * MIN));
        }
        for n in 0..26 {
            orders.push((busy, 200 + n as u64, start + n * 30 * MIN + MIN));
        }
        orders_at(broker, &topic, &orders).await;
        eventually(
            "the quiet shop flagged",
            Duration::from_secs(60),
            || async {
                (stack.service().metric("aftercart_journey_silent_shops") == 1.0).then_some(())
            },
        )
        .await;
        aftercart_tests::settles_at("aftercart_journey_watched_shops", 2.0, |s| {
            stack.service().metric(s)
        })
        .await;
        aftercart_tests::settles_at("aftercart_journey_silent_shops_flagged_total", 1.0, |s| {
            stack.service().metric(s)
        })
        .await;
        // Its orders arrive again (the subscription recreated): the flag clears.
        orders_at(broker, &topic, &[(quiet, 300, now)]).await;
        eventually(
            "the quiet shop recovered",
            Duration::from_secs(60),
            || async {
                (stack.service().metric("aftercart_journey_silent_shops") == 0.0).then_some(())
            },
        )
        .await;
        aftercart_tests::settles_at("aftercart_journey_silent_shops_flagged_total", 1.0, |s| {
            stack.service().metric(s)
        })
        .await;
    }
    pub async fn a_data_request_is_answered_with_the_orders_held_about_the_customer(
        broker: &Broker,
    ) {
        let stack = Stack::start(broker).await;
        aftercart_tests::settles_at("aftercart_journey_data_requests_answered_total", 0.0, |s| {
            stack.service().metric(s)
        })
        .await;
        stack.send("orders/paid", order(5, true)).await;
        stack.wait_for("order_confirmed").await;
        stack
            .send(
                "customers/data_request",
                data_request(701, json!({"id": 42})),
            )
            .await;
        // Someone the journey holds nothing about is answered too: every service answers.
        stack
            .send(
                "customers/data_request",
                data_request(702, json!({"id": 43})),
            )
            .await;
        let bea = stack.answers_to(701).await;
        let other = stack.answers_to(702).await;
        assert_eq!((bea.len(), other.len()), (1, 1), "{bea:#?} {other:#?}");
        let (bea, other) = (&bea[0], &other[0]);
        assert_eq!(bea["service"], "journey");
        assert_eq!(bea["customer_id"], 42);
        assert_eq!(kinds(bea), ["order", "buyer"]);
        let held = &bea["holdings"][0];
        assert_eq!(held["key"], format!("order/{SHOP}/5"));
        assert_eq!(held["data"]["stored"]["email"], "bea@example.com");
        assert_eq!(
            held["data"]["contact_fields"],
            json!(["email", "first_name"])
        );
        assert!(held["data"]["touchpoints_sent"]
            .as_array()
            .unwrap()
            .contains(&json!("order_confirmed")));
        assert!(kinds(other).is_empty(), "{other:#}");
        eventually("the answers counted", Duration::from_secs(30), || async {
            let answered = stack
                .service()
                .metric("aftercart_journey_data_requests_answered_total");
            (answered == 2.0).then_some(())
        })
        .await;
    }

    pub async fn a_redacted_customer_gets_no_touchpoint_and_their_email_is_in_no_output(
        broker: &Broker,
    ) {
        let stack = Stack::start(broker).await;
        stack
            .send(
                "customers/redact",
                json!({"shop_id": 1, "shop_domain": SHOP,
                       "customer": {"id": 42, "email": "Bea@Example.com", "phone": "+1 555 625 1199"},
                       "orders_to_redact": []}),
            )
            .await;
        // Then her order and its delivery arrive (late, or in flight on other topics), and
        // another customer's order.
        stack.send("orders/paid", order(5, true)).await;
        stack
            .send("fulfillment_events/create", carrier(5, "delivered"))
            .await;
        let mut cy = order(6, true);
        cy["email"] = json!("cy@example.com");
        cy["customer"] = json!({"id": 43, "first_name": "Cy"});
        stack.send("orders/paid", cy).await;
        stack
            .send("fulfillment_events/create", carrier(6, "delivered"))
            .await;
        // Cy's review request (2 s after delivery) comes after any of Bea's would have.
        let all = stack.wait_for("review_request").await;
        assert!(all.iter().all(|t| t["order"]["id"] == 6), "{all:#?}");
        aftercart_tests::settles_at(
            r#"aftercart_journey_facts_dropped_total{reason="redacted"}"#,
            2.0,
            |s| stack.service().metric(s),
        )
        .await;
        // Her email in no output, nor in the changelog, nor in a delivered file.
        for topic in [
            &stack.config.touchpoints_topic,
            &stack.config.data_requests_topic,
            &stack.config.dead_letter_topic,
            &stack.config.delivery_dead_letter_topic,
            &stack.config.kpis_topic,
            &stack.config.state_topic,
        ] {
            for record in read_topic(&stack.bootstrap, topic).await {
                let text = String::from_utf8_lossy(&record.value).to_ascii_lowercase();
                assert!(!text.contains("bea@example.com"), "{topic}: {text}");
            }
        }
        let shop_dir = stack.dir.join("out").join(SHOP);
        let files = eventually("Cy's files", Duration::from_secs(30), || async {
            let files: Vec<PathBuf> = std::fs::read_dir(&shop_dir)
                .ok()?
                .filter_map(|e| Some(e.ok()?.path()))
                .collect();
            (files.len() >= all.len()).then_some(files)
        })
        .await;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap().to_ascii_lowercase();
            assert!(!text.contains("bea@example.com"), "{}", file.display());
        }
    }

    pub async fn a_data_request_sent_while_the_service_is_down_is_answered_once_after_its_restart(
        broker: &Broker,
    ) {
        let mut stack = Stack::start(broker).await;
        stack.send("orders/paid", order(5, true)).await;
        stack.wait_for("order_confirmed").await;
        stack.stop().await;
        stack
            .post(
                "customers/data_request",
                data_request(801, json!({"id": 42})),
            )
            .await;
        stack.start_again(broker).await;
        let answers = stack.answers_to(801).await;
        assert_eq!(kinds(&answers[0]), ["order", "buyer"], "{answers:#?}");
        // Restarted once more, then a later request of the same shop (same partition, read
        // after the first): once it is answered, a repeat of the first would be on the topic.
        stack.stop().await;
        stack.start_again(broker).await;
        stack
            .send(
                "customers/data_request",
                data_request(802, json!({"id": 43})),
            )
            .await;
        stack.answers_to(802).await;
        let first: Vec<Value> = stack
            .reports()
            .await
            .into_iter()
            .filter(|r| r["data_request_id"] == 801)
            .collect();
        assert_eq!(first.len(), 1, "answered once: {first:#?}");
    }
}

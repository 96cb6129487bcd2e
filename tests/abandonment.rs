//! Abandonment service integration tests: the ingress and the service in-process on a real
//! broker (mock cluster and Tansu), journeys sent as signed webhooks, the output topic read back
//! with an independent consumer and validated against `schemas/aftercart/abandonments.schema.json`.

use aftercart_tests::broker_tests;

broker_tests!(
    a_checkout_with_contact_is_abandoned_once_after_the_delay,
    an_order_before_the_delay_means_no_abandonment_in_either_order,
    a_late_order_recovers_the_abandonment,
    a_deleted_checkout_is_not_abandoned,
    a_redacted_customer_is_forgotten_and_never_abandoned,
    a_data_request_is_answered_with_the_customers_journeys,
    a_data_request_sent_while_the_service_is_down_is_answered_after_its_restart,
    an_older_update_never_overwrites_newer_state,
    a_cart_that_never_reaches_checkout_is_a_cart_abandonment,
    a_restart_restores_state_and_emits_exactly_once,
    poison_records_are_dead_lettered_and_processing_continues,
    an_unsubscribe_holds_after_a_restart_once_the_customers_topic_no_longer_has_it,
);

mod scenarios {
    use std::collections::HashMap;
    use std::time::Duration;

    use aftercart_abandonment::AbandonmentConfig;
    use aftercart_tests::abandonment::{test_config, TestAbandonment};
    use aftercart_tests::data_requests::reports;
    use aftercart_tests::http::Webhook;
    use aftercart_tests::ingress::{test_config as ingress_config, TestIngress, SECRET};
    use aftercart_tests::schemas::assert_valid;
    use aftercart_tests::{eventually, read_topic, Broker, Record};
    use serde_json::Value;

    /// Long enough past the 2 s delay that a second (wrong) event would have shown up.
    const SETTLE: Duration = Duration::from_secs(5);

    pub(super) struct Stack {
        ingress: TestIngress,
        service: Option<TestAbandonment>,
        pub config: AbandonmentConfig,
        pub bootstrap: String,
    }

    impl Stack {
        pub async fn start(broker: &Broker, flags: &[&str]) -> Stack {
            let ingress = TestIngress::start_on(broker, ingress_config(broker)).await;
            let config = test_config(&ingress.config.kafka, flags);
            let service = TestAbandonment::start_on(broker, config.clone()).await;
            Stack {
                ingress,
                service: Some(service),
                config,
                bootstrap: broker.bootstrap(),
            }
        }

        pub async fn stop_service(&mut self) {
            let service = self.service.take().expect("running");
            service.stop().await.expect("clean stop");
        }

        pub async fn start_service(&mut self, broker: &Broker) {
            self.service = Some(TestAbandonment::start_on(broker, self.config.clone()).await);
        }

        pub async fn send(&self, topic: &str, body: String) {
            let response = Webhook::new(topic, body.into_bytes(), SECRET)
                .post(self.ingress.addr)
                .await;
            assert_eq!(response.status, 200, "{}", response.body);
        }

        pub(super) async fn events(&self) -> Vec<Value> {
            read_topic(&self.bootstrap, &self.config.output_topic)
                .await
                .iter()
                .map(|record| {
                    let value: Value = serde_json::from_slice(&record.value).expect("JSON event");
                    assert_valid("aftercart/abandonments.schema.json", &value);
                    assert_eq!(
                        record.key_str(),
                        value["journey_key"].as_str().unwrap(),
                        "keyed by journey"
                    );
                    assert_eq!(
                        record.header("aftercart-event-id"),
                        value["event_id"].as_str()
                    );
                    value
                })
                .collect()
        }

        /// Waits until `count` events exist, then a settle period, and returns them all.
        pub async fn settled_events(&self, count: usize) -> Vec<Value> {
            eventually("abandonment events", Duration::from_secs(30), || async {
                (self.events().await.len() >= count).then_some(())
            })
            .await;
            tokio::time::sleep(SETTLE).await;
            self.events().await
        }

        pub fn service(&self) -> &TestAbandonment {
            self.service.as_ref().expect("running")
        }
    }

    pub(super) fn checkout(cart: &str, updated_at: &str, extra: &str) -> String {
        format!(
            r#"{{"token":"chk-{cart}","cart_token":"{cart}","email":"buyer-{cart}@example.com","buyer_accepts_marketing":true,
            "total_price":"250.00","currency":"EUR","customer":{{"id":4242,"first_name":"Ann","last_name":"Lee"}},
            "line_items":[{{"product_id":1,"variant_id":2,"title":"Mug","quantity":3,"price":"80.00"}}],
            "updated_at":"{updated_at}"{extra}}}"#
        )
    }

    fn order(cart: &str, id: u64, extra: &str) -> String {
        format!(
            r#"{{"id":{id},"cart_token":"{cart}","checkout_token":"chk-{cart}","customer":{{"id":4242}}{extra}}}"#
        )
    }

    pub(super) fn unique(name: &str) -> String {
        format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    }

    pub async fn a_checkout_with_contact_is_abandoned_once_after_the_delay(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let cart = unique("cart");
        stack
            .send(
                "checkouts/create",
                checkout(&cart, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        stack.send("checkouts/update", checkout(&cart, "2026-11-23T10:01:00Z", r#","shipping_address":{"country_code":"FR"},"discount_codes":[{"code":"TEN"}]"#)).await;
        let events = stack.settled_events(1).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        let event = &events[0];
        assert_eq!(event["type"], "abandoned");
        assert_eq!(event["kind"], "checkout");
        assert_eq!(event["shop"], "jsmith.myshopify.com");
        assert_eq!(event["journey_key"], format!("jsmith.myshopify.com/{cart}"));
        assert_eq!(event["checkout_token"], format!("chk-{cart}"));
        assert_eq!(
            event["customer"]["email"],
            format!("buyer-{cart}@example.com")
        );
        assert_eq!(event["customer"]["country"], "FR");
        assert_eq!(
            event["value"],
            serde_json::json!({"amount": "250.00", "currency": "EUR"})
        );
        assert_eq!(event["line_items"]["quantity"], 3);
        let segments = &event["segments"];
        assert_eq!(segments["stage"], "shipping_address");
        assert_eq!(segments["value_tier"], "high");
        assert_eq!(segments["customer"], "new");
        assert_eq!(
            segments["contactable"],
            serde_json::json!({"email": true, "sms": false})
        );
        assert_eq!(
            segments["consent"],
            serde_json::json!({"email": true, "sms": false})
        );
        assert_eq!(segments["discount"], true);
        assert_eq!(segments["repeat"], 0);
        let service = stack.service();
        aftercart_tests::settles_at(r#"aftercart_abandonment_abandonments_total{customer="new",kind="checkout",stage="shipping_address",value_tier="high"}"#, 1.0, |s| service.metric(s)).await;
        aftercart_tests::settles_at(
            r#"aftercart_abandonment_records_processed_total{topic="checkouts"}"#,
            2.0,
            |s| service.metric(s),
        )
        .await;
    }

    pub async fn an_order_before_the_delay_means_no_abandonment_in_either_order(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let (first, second) = (unique("cart"), unique("cart"));
        stack
            .send(
                "checkouts/create",
                checkout(&first, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        stack.send("orders/create", order(&first, 1001, "")).await;
        stack.send("orders/create", order(&second, 1002, "")).await;
        stack
            .send(
                "checkouts/update",
                checkout(&second, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(2) + SETTLE).await;
        assert!(stack.events().await.is_empty());
        aftercart_tests::settles_at(
            r#"aftercart_abandonment_records_processed_total{topic="orders"}"#,
            2.0,
            |s| stack.service().metric(s),
        )
        .await;
    }

    pub async fn a_late_order_recovers_the_abandonment(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let cart = unique("cart");
        stack
            .send(
                "checkouts/create",
                checkout(&cart, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        stack.settled_events(1).await;
        stack.send("orders/create", order(&cart, 2001, r#","landing_site":"/checkouts/x/recover?key=k","discount_codes":[{"code":"BACK"}]"#)).await;
        stack.send("orders/paid", order(&cart, 2001, "")).await;
        let events = stack.settled_events(2).await;
        assert_eq!(events.len(), 2, "{events:#?}");
        let recovered = events
            .iter()
            .find(|e| e["type"] == "recovered")
            .expect("recovered event");
        assert_eq!(recovered["order_id"], 2001);
        assert_eq!(recovered["used_recovery_url"], true);
        assert_eq!(recovered["used_discount"], true);
        assert!(recovered["recovered_after_seconds"].as_i64().unwrap() >= 0);
        assert_ne!(recovered["event_id"], events[0]["event_id"]);
        aftercart_tests::settles_at(
            r#"aftercart_abandonment_recoveries_total{kind="checkout"}"#,
            1.0,
            |s| stack.service().metric(s),
        )
        .await;
    }

    pub async fn a_deleted_checkout_is_not_abandoned(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let cart = unique("cart");
        stack
            .send(
                "checkouts/create",
                checkout(&cart, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        stack
            .send(
                "checkouts/delete",
                format!(r#"{{"id":1,"cart_token":"{cart}"}}"#),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(2) + SETTLE).await;
        assert!(stack.events().await.is_empty());
    }

    pub async fn a_redacted_customer_is_forgotten_and_never_abandoned(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let (cart, other) = (unique("cart"), unique("cart"));
        stack
            .send(
                "checkouts/create",
                checkout(&cart, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        let stranger = checkout(&other, "2026-11-23T10:00:00Z", "").replace("4242", "777");
        stack.send("checkouts/create", stranger).await;
        stack
            .send("customers/redact", r#"{"shop_id":1,"shop_domain":"jsmith.myshopify.com","customer":{"id":4242,"email":"x@example.com"},"orders_to_redact":[]}"#.to_string())
            .await;
        let events = stack.settled_events(1).await;
        assert_eq!(
            events.len(),
            1,
            "only the other customer is abandoned: {events:#?}"
        );
        assert_eq!(events[0]["customer"]["id"], 777);
        // The journey is tombstoned in the changelog: a restart cannot bring it back.
        let changelog = read_topic(&stack.bootstrap, &stack.config.state_topic).await;
        let key = format!("jsmith.myshopify.com/{cart}");
        let last = changelog
            .iter()
            .rev()
            .find(|r| r.key_str() == key)
            .expect("changelog record");
        assert!(last.value.is_empty(), "tombstone for the redacted journey");
    }

    pub async fn an_unsubscribe_holds_after_a_restart_once_the_customers_topic_no_longer_has_it(
        broker: &Broker,
    ) {
        let mut stack = Stack::start(broker, &[]).await;
        stack
            .send(
                "customers_email_marketing_consent/update",
                r#"{"customer_id":4242,"email_address":"ann@example.com","email_marketing_consent":{"state":"unsubscribed","opt_in_level":"single_opt_in","consent_updated_at":"2026-11-20T10:00:00Z"}}"#.to_string(),
            )
            .await;
        let key = "consent:jsmith.myshopify.com/id:4242";
        eventually(
            "the consent kept in each partition's changelog",
            Duration::from_secs(30),
            || async {
                let changelog = read_topic(&stack.bootstrap, &stack.config.state_topic).await;
                let copies = changelog.iter().filter(|r| r.key_str() == key).count();
                (copies >= 3).then_some(())
            },
        )
        .await;
        stack.stop_service().await;

        // The customers topic's records are gone (past its retention): the service comes back
        // on fresh source topics that hold only what happens next, with its own changelog.
        let fresh = TestIngress::start_on(broker, ingress_config(broker)).await;
        let mut config = stack.config.clone();
        config.kafka.topic_prefix = fresh.config.kafka.topic_prefix.clone();
        stack.service = Some(TestAbandonment::start_on(broker, config).await);
        let cart = unique("cart");
        let response = Webhook::new(
            "checkouts/create",
            checkout(&cart, "2026-11-23T10:00:00Z", "").into_bytes(),
            SECRET,
        )
        .post(fresh.addr)
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let events = stack.settled_events(1).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        let event = &events[0];
        assert_eq!(event["customer"]["id"], 4242);
        assert_eq!(
            event["segments"]["consent"]["email"], false,
            "the unsubscribe still holds: {event:#}"
        );
        assert_eq!(event["customer"]["accepts_email_marketing"], false);
        assert!(
            !event
                .to_string()
                .contains(&format!("buyer-{cart}@example.com")),
            "no email for someone who unsubscribed: {event:#}"
        );
    }

    pub async fn a_data_request_is_answered_with_the_customers_journeys(broker: &Broker) {
        let stack = Stack::start(broker, &["--abandonment-abandon-after=1h"]).await;
        let cart = unique("cart");
        stack
            .send(
                "checkouts/create",
                checkout(&cart, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        let key = format!("jsmith.myshopify.com/{cart}");
        eventually("the journey persisted", Duration::from_secs(30), || async {
            let changelog = read_topic(&stack.bootstrap, &stack.config.state_topic).await;
            changelog.iter().any(|r| r.key_str() == key).then_some(())
        })
        .await;
        stack
            .send("customers/data_request", r#"{"shop_id":1,"shop_domain":"jsmith.myshopify.com","customer":{"id":4242},"orders_requested":[],"data_request":{"id":77}}"#.to_string())
            .await;
        let topic = stack.config.data_requests_topic.clone();
        let partitions = stack.config.kafka.partitions as usize;
        let reports = eventually(
            "a report per partition",
            Duration::from_secs(30),
            || async {
                let reports: Vec<Value> = read_topic(&stack.bootstrap, &topic)
                    .await
                    .iter()
                    .map(|record| {
                        let value: Value =
                            serde_json::from_slice(&record.value).expect("JSON report");
                        assert_valid("aftercart/data-requests.schema.json", &value);
                        assert_eq!(
                            record.header("aftercart-event-id"),
                            value["event_id"].as_str()
                        );
                        value
                    })
                    .collect();
                (reports.len() >= partitions).then_some(reports)
            },
        )
        .await;
        assert_eq!(reports.len(), partitions, "{reports:#?}");
        let held: Vec<&Value> = reports
            .iter()
            .flat_map(|r| r["holdings"].as_array().unwrap())
            .collect();
        assert_eq!(held.len(), 1, "{held:#?}");
        assert_eq!(held[0]["key"], key.as_str());
        assert_eq!(
            held[0]["data"]["checkout"]["email"],
            format!("buyer-{cart}@example.com")
        );
        assert!(reports.iter().all(|r| r["data_request_id"] == 77));
    }

    pub async fn an_older_update_never_overwrites_newer_state(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let cart = unique("cart");
        let newer = checkout(
            &cart,
            "2026-11-23T10:30:00Z",
            r#","shipping_address":{"country_code":"DE"},"shipping_lines":[{"title":"DHL"}]"#,
        );
        stack.send("checkouts/update", newer).await;
        stack
            .send(
                "checkouts/update",
                checkout(&cart, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        let events = stack.settled_events(1).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["segments"]["stage"], "shipping_method");
        assert_eq!(events[0]["customer"]["country"], "DE");
    }

    pub async fn a_cart_that_never_reaches_checkout_is_a_cart_abandonment(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let (lonely, checked_out) = (unique("cart"), unique("cart"));
        stack
            .send(
                "carts/update",
                format!(r#"{{"id":"{lonely}","token":"{lonely}","line_items":[]}}"#),
            )
            .await;
        stack
            .send(
                "carts/update",
                format!(r#"{{"id":"{checked_out}","token":"{checked_out}","line_items":[]}}"#),
            )
            .await;
        stack
            .send(
                "checkouts/create",
                checkout(&checked_out, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        let events = stack.settled_events(2).await;
        let kinds: HashMap<String, String> = events
            .iter()
            .map(|e| {
                (
                    e["journey_key"].as_str().unwrap().to_string(),
                    e["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(kinds[&format!("jsmith.myshopify.com/{lonely}")], "cart");
        assert_eq!(
            kinds[&format!("jsmith.myshopify.com/{checked_out}")],
            "checkout"
        );
        let cart_event = events.iter().find(|e| e["kind"] == "cart").unwrap();
        assert!(
            cart_event["customer"].is_null(),
            "cart abandonments are anonymous"
        );
        assert_eq!(cart_event["cart_token"], lonely.as_str());
    }

    /// The request is read at start with the global tables, before any partition is owned:
    /// the journeys' owner answers once it holds them.
    pub async fn a_data_request_sent_while_the_service_is_down_is_answered_after_its_restart(
        broker: &Broker,
    ) {
        let mut stack = Stack::start(broker, &["--abandonment-abandon-after=1h"]).await;
        let cart = unique("cart");
        stack
            .send(
                "checkouts/create",
                checkout(&cart, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        let key = format!("jsmith.myshopify.com/{cart}");
        eventually("the journey persisted", Duration::from_secs(30), || async {
            let changelog = read_topic(&stack.bootstrap, &stack.config.state_topic).await;
            changelog.iter().any(|r| r.key_str() == key).then_some(())
        })
        .await;
        stack.stop_service().await;
        stack
            .send("customers/data_request", r#"{"shop_id":1,"shop_domain":"jsmith.myshopify.com","customer":{"id":4242},"orders_requested":[],"data_request":{"id":78}}"#.to_string())
            .await;
        stack.start_service(broker).await;
        let topic = stack.config.data_requests_topic.clone();
        let held = eventually(
            "the journey reported after the restart",
            Duration::from_secs(30),
            || async {
                let held: Vec<Value> = read_topic(&stack.bootstrap, &topic)
                    .await
                    .iter()
                    .map(|record| {
                        let value: Value =
                            serde_json::from_slice(&record.value).expect("JSON report");
                        assert_valid("aftercart/data-requests.schema.json", &value);
                        value
                    })
                    .filter(|r| r["data_request_id"] == 78)
                    .flat_map(|r| r["holdings"].as_array().cloned().unwrap_or_default())
                    .collect();
                (!held.is_empty()).then_some(held)
            },
        )
        .await;
        assert!(held.iter().all(|h| h["key"] == key.as_str()), "{held:#?}");
        // Restarted once more (the compliance topic is read from its start again), then a later
        // request: once every partition answered it, a repeat of the first would be there too.
        stack.stop_service().await;
        stack.start_service(broker).await;
        stack
            .send("customers/data_request", r#"{"shop_id":1,"shop_domain":"jsmith.myshopify.com","customer":{"id":4343},"orders_requested":[],"data_request":{"id":79}}"#.to_string())
            .await;
        let partitions = stack.config.kafka.partitions as usize;
        let reports = eventually(
            "every partition answered the later request",
            Duration::from_secs(30),
            || async {
                let reports = reports(&stack.bootstrap, &topic).await;
                let later = reports
                    .iter()
                    .filter(|r| r["data_request_id"] == 79)
                    .count();
                (later >= partitions).then_some(reports)
            },
        )
        .await;
        let first = reports
            .iter()
            .filter(|r| r["data_request_id"] == 78)
            .count();
        assert_eq!(
            first, partitions,
            "one answer per partition, not one per start"
        );
    }

    pub async fn a_restart_restores_state_and_emits_exactly_once(broker: &Broker) {
        let mut stack = Stack::start(broker, &["--abandonment-abandon-after=4s"]).await;
        let carts: Vec<String> = (0..5).map(|_| unique("cart")).collect();
        for cart in &carts[..3] {
            stack
                .send(
                    "checkouts/create",
                    checkout(cart, "2026-11-23T10:00:00Z", ""),
                )
                .await;
        }
        // Stop before any is due, once they are processed: the journeys live only in the
        // changelog now, and their input offsets are committed.
        eventually("checkouts processed", Duration::from_secs(10), || async {
            let service = stack.service();
            let processed = service
                .metric(r#"aftercart_abandonment_records_processed_total{topic="checkouts"}"#);
            let written = service.metric("aftercart_abandonment_changelog_records_written_total");
            (processed >= 3.0 && written >= 3.0).then_some(())
        })
        .await;
        stack.stop_service().await;
        for cart in &carts[3..] {
            stack
                .send(
                    "checkouts/create",
                    checkout(cart, "2026-11-23T10:00:00Z", ""),
                )
                .await;
        }
        stack.start_service(broker).await;
        let events = stack.settled_events(5).await;
        let mut per_journey: HashMap<String, usize> = HashMap::new();
        for event in &events {
            *per_journey
                .entry(event["journey_key"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        assert_eq!(per_journey.len(), 5, "{events:#?}");
        assert!(per_journey.values().all(|n| *n == 1), "{per_journey:?}");
        assert!(
            stack
                .service()
                .metric("aftercart_abandonment_state_restored_records_total")
                >= 3.0
        );

        // Restarting after the abandonments were emitted emits nothing again.
        stack.stop_service().await;
        stack.start_service(broker).await;
        tokio::time::sleep(Duration::from_secs(4) + SETTLE).await;
        assert_eq!(stack.events().await.len(), 5);
    }

    pub async fn poison_records_are_dead_lettered_and_processing_continues(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let cart = unique("cart");
        stack
            .send(
                "checkouts/update",
                format!(r#"{{"token":"t","cart_token":"{cart}","total_price":"1e9"}}"#),
            )
            .await;
        stack
            .send(
                "orders/create",
                r#"{"id":"not-a-number","cart_token":"x"}"#.to_string(),
            )
            .await;
        let good = unique("cart");
        stack
            .send(
                "checkouts/create",
                checkout(&good, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        let events = stack.settled_events(1).await;
        assert_eq!(events.len(), 1);
        let dead: Vec<Record> = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
        assert_eq!(dead.len(), 2);
        for record in &dead {
            let reason = record
                .header("aftercart-dead-letter-reason")
                .expect("reason header");
            assert!(
                reason.contains("impossible value") || reason.contains("does not decode"),
                "{reason}"
            );
            assert!(record.header("aftercart-dead-letter-source").is_some());
            assert!(
                record.header("shopify-webhook-id").is_some(),
                "original headers kept"
            );
        }
        aftercart_tests::settles_at("aftercart_abandonment_dead_letters_total", 2.0, |s| {
            stack.service().metric(s)
        })
        .await;
    }
}

/// Two instances in one group split the partitions; when one leaves, the other restores its
/// partitions from the changelog and carries on (mock cluster: group rebalances are quick).
mod scaling {
    use std::collections::HashMap;
    use std::time::Duration;

    use aftercart_tests::abandonment::{test_config, TestAbandonment};
    use aftercart_tests::http::Webhook;
    use aftercart_tests::ingress::{test_config as ingress_config, TestIngress, SECRET};
    use aftercart_tests::{eventually, read_topic, Broker};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_split_the_work_and_a_rebalance_moves_state() {
        let broker = Broker::mock();
        let mut ingress_settings = ingress_config(&broker);
        ingress_settings.kafka.partitions = 6;
        let ingress = TestIngress::start_on(&broker, ingress_settings).await;
        let config = test_config(&ingress.config.kafka, &["--abandonment-abandon-after=6s"]);
        let first = TestAbandonment::start_on(&broker, config.clone()).await;
        let second = TestAbandonment::start_on(&broker, config.clone()).await;
        eventually(
            "both instances own partitions",
            Duration::from_secs(30),
            || async {
                let (a, b) = (
                    first.metric("aftercart_abandonment_assigned_partitions"),
                    second.metric("aftercart_abandonment_assigned_partitions"),
                );
                (a > 0.0 && b > 0.0 && a + b == 6.0).then_some(())
            },
        )
        .await;
        for n in 0..12 {
            let body = format!(
                r#"{{"token":"chk-{n}","cart_token":"scale-{n}","email":"s{n}@example.com","updated_at":"2026-11-23T10:00:00Z"}}"#
            );
            let response = Webhook::new("checkouts/create", body.into_bytes(), SECRET)
                .post(ingress.addr)
                .await;
            assert_eq!(response.status, 200);
        }
        eventually(
            "the journeys are spread over both instances",
            Duration::from_secs(10),
            || async {
                let (a, b) = (
                    first.metric(
                        r#"aftercart_abandonment_records_processed_total{topic="checkouts"}"#,
                    ),
                    second.metric(
                        r#"aftercart_abandonment_records_processed_total{topic="checkouts"}"#,
                    ),
                );
                (a > 0.0 && b > 0.0 && a + b == 12.0).then_some(())
            },
        )
        .await;
        // One instance leaves before anything is due: the other takes over its journeys.
        second.stop().await.expect("clean stop");
        eventually(
            "the survivor owns every partition",
            Duration::from_secs(30),
            || async {
                (first.metric("aftercart_abandonment_assigned_partitions") == 6.0).then_some(())
            },
        )
        .await;
        let bootstrap = broker.bootstrap();
        eventually(
            "every journey abandoned",
            Duration::from_secs(30),
            || async {
                (read_topic(&bootstrap, &config.output_topic).await.len() >= 12).then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut per_journey: HashMap<String, usize> = HashMap::new();
        for record in read_topic(&bootstrap, &config.output_topic).await {
            *per_journey.entry(record.key_str().to_string()).or_default() += 1;
        }
        assert_eq!(per_journey.len(), 12, "{per_journey:?}");
        assert!(per_journey.values().all(|n| *n == 1), "{per_journey:?}");
        assert!(
            first.metric("aftercart_abandonment_state_restored_records_total") > 0.0,
            "state moved through the changelog"
        );
    }
}

/// Issue 15: the broker goes away and comes back (mock cluster only: it can refuse connections).
mod outage {
    use std::time::Duration;

    use aftercart_tests::{eventually, read_topic, Broker};

    use super::scenarios::{checkout, unique, Stack};

    /// A broker frozen past the stage's delivery timeout while an abandonment is being written:
    /// the member resets ("undelivered") and carries on with a fresh producer. It used to die
    /// afterwards: the old producer bumped its idempotence epoch, and Tansu answers that with a
    /// fatal ProducerFenced. Each journey is still abandoned once.
    ///
    /// Timers run on ends the broker answered within the last 1.5 s only (a frozen broker
    /// answers nothing, so the stage holds them): the freeze comes while abandonments fall due
    /// every 100 ms and the ends are fresh, so one is written into it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_frozen_past_the_delivery_timeout_costs_a_reset_not_the_service() {
        let Some(broker) = Broker::tansu().await else {
            return;
        };
        let stack = Stack::start(&broker, &[]).await;
        // Abandonments fall due 2 s after each checkout: one every 100 ms or so once the first
        // is due, and the stage asks where its partitions end about every second meanwhile.
        let carts: Vec<String> = (0..20).map(|_| unique("cart")).collect();
        for cart in &carts {
            stack
                .send("checkouts/create", checkout(cart, &now(), ""))
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eventually("the first abandonment", Duration::from_secs(30), || async {
            (!stack.events().await.is_empty()).then_some(())
        })
        .await;
        // Frozen well past the 5.5 s delivery timeout (6 s session less a 0.5 s heartbeat): the
        // next abandonment due is written into the freeze and cannot land.
        let tansu = broker.process().expect("a Tansu process");
        tansu.sigstop();
        tokio::time::sleep(Duration::from_secs(10)).await;
        tansu.sigcont();
        // The write timed out; the session ended too, so the reset may be counted under
        // "lost" or "stalled" rather than "undelivered": any reason shows it happened.
        eventually("the member's reset", Duration::from_secs(30), || async {
            let resets: f64 = ["undelivered", "lost", "stalled"]
                .iter()
                .map(|reason| {
                    stack.service().metric(&format!(
                        r#"aftercart_abandonment_fenced_total{{reason="{reason}"}}"#
                    ))
                })
                .sum();
            (resets >= 1.0).then_some(())
        })
        .await;
        // Tansu 0.6 hands a member that reset (left and rejoined) no partition back for as long
        // as measured (90 s, with this code and the code before it, December 2026), so the
        // journeys due after the freeze wait on the broker: what was written is checked, once
        // each, and the service lives on.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let events = stack.events().await;
        assert!(
            !stack.service().has_stopped(),
            "the service survived the frozen broker"
        );
        assert!(!events.is_empty());
        let mut keys: Vec<&str> = events
            .iter()
            .map(|e| e["journey_key"].as_str().unwrap())
            .collect();
        keys.sort_unstable();
        let written = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), written, "no journey abandoned twice: {keys:?}");
        for key in keys {
            let cart = key.trim_start_matches("jsmith.myshopify.com/");
            assert!(
                carts.iter().any(|c| c == cart),
                "an abandonment of this run: {key}"
            );
        }
    }

    /// The events are exactly one abandonment for each of `carts`.
    fn assert_each_abandoned_once(events: &[serde_json::Value], carts: &[&str]) {
        let mut keys: Vec<String> = events
            .iter()
            .map(|e| e["journey_key"].as_str().unwrap().to_string())
            .collect();
        keys.sort();
        let mut expected: Vec<String> = carts
            .iter()
            .map(|cart| format!("jsmith.myshopify.com/{cart}"))
            .collect();
        expected.sort();
        assert_eq!(keys, expected, "each journey abandoned once: {events:#?}");
    }

    fn now() -> String {
        aftercart_shopify::time::rfc3339(aftercart_shopify::time::now_ms())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_outage_shows_in_readiness_and_processing_resumes_exactly_once() {
        let broker = Broker::mock();
        let stack = Stack::start(&broker, &[]).await;
        let (first, second) = (unique("cart"), unique("cart"));
        stack
            .send(
                "checkouts/create",
                checkout(&first, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        stack.settled_events(1).await;

        broker.down();
        let health = stack.service().health.clone();
        eventually(
            "not ready while the broker is down",
            Duration::from_secs(60),
            || {
                let health = health.clone();
                async move { health.readiness().is_err().then_some(()) }
            },
        )
        .await;
        broker.up();
        eventually(
            "ready again once it is back",
            Duration::from_secs(60),
            || {
                let health = health.clone();
                async move { health.readiness().ok() }
            },
        )
        .await;
        assert!(
            !stack.service().has_stopped(),
            "the service survived the outage"
        );

        stack
            .send(
                "checkouts/create",
                checkout(&second, "2026-11-23T10:00:00Z", ""),
            )
            .await;
        let events = stack.settled_events(2).await;
        assert_each_abandoned_once(&events, &[&first, &second]);
        let outputs = read_topic(&stack.bootstrap, &stack.config.output_topic).await;
        assert_eq!(outputs.len(), 2);
    }
}

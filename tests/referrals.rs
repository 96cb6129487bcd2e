//! Referrals service integration tests: the ingress and the service in-process on a real broker
//! (mock cluster and Tansu), order journeys sent as signed webhooks, both output topics read
//! back with an independent consumer and validated against `schemas/aftercart/referral-*`.

use aftercart_tests::broker_tests;

broker_tests!(
    a_buyer_is_invited_and_a_friends_first_order_earns_a_reward_after_review,
    refunds_void_rewards_and_prevent_invites_even_when_delivered_first,
    a_friends_second_order_and_a_second_advocate_earn_nothing,
    self_referral_is_rejected_by_each_signal,
    a_burst_of_referred_orders_from_one_ip_is_rejected,
    a_restart_mid_review_window_grants_exactly_once,
    a_redacted_advocate_is_forgotten_and_pending_rewards_voided,
    a_data_request_is_answered_with_what_is_held_about_the_customer,
    poison_records_are_dead_lettered_and_processing_continues,
    every_event_is_also_posted_signed_to_the_webhook,
    a_large_order_is_routed_and_its_buyer_invited,
    members_joining_and_leaving_under_load_never_stop_another_member,
    invite_codes_exist_in_the_shop_before_invites_are_published_and_rewards_are_issued,
    a_refund_in_the_window_voids_and_deactivates_an_issued_reward,
    lost_answers_and_a_restart_create_no_duplicate_discounts,
    a_store_credit_whose_answer_is_lost_is_not_credited_twice,
    a_store_credit_given_before_a_stop_is_not_given_again,
    a_first_order_segment_made_before_a_restart_is_found_not_made_again,
    a_shop_whose_shopify_is_down_spends_one_retry_budget_a_batch_not_one_an_action,
    refused_inputs_and_tokenless_shops_are_dead_lettered_while_other_shops_keep_working,
);

mod scenarios {
    use std::time::Duration;

    use aftercart_ingress::IngressConfig;
    use aftercart_referrals::ReferralsConfig;
    use aftercart_shopify::{sign, Secret};
    use aftercart_tests::http::Webhook;
    use aftercart_tests::ingress::{test_config as ingress_config, TestIngress, SECRET};
    use aftercart_tests::receiver::{Receiver, Reply};
    use aftercart_tests::referrals::{test_config, TestReferrals};
    use aftercart_tests::schemas::assert_valid;
    use aftercart_tests::shopify_admin::ShopifyAdmin;
    use aftercart_tests::{eventually, read_topic, unique_prefix, Broker};
    use serde_json::{json, Value};

    /// Past the 3 s review window with room for a wrong extra event to show up.
    const SETTLE: Duration = Duration::from_secs(5);
    const SHOP: &str = "jsmith.myshopify.com";

    struct Stack {
        ingress: TestIngress,
        service: Option<TestReferrals>,
        config: ReferralsConfig,
        bootstrap: String,
    }

    impl Stack {
        async fn start(broker: &Broker, flags: &[&str]) -> Stack {
            Self::start_with(broker, ingress_config(broker), flags).await
        }

        async fn start_with(broker: &Broker, ingress: IngressConfig, flags: &[&str]) -> Stack {
            let ingress = TestIngress::start_on(broker, ingress).await;
            let config = test_config(&ingress.config.kafka, flags);
            let service = TestReferrals::start_on(broker, config.clone()).await;
            Stack {
                ingress,
                service: Some(service),
                config,
                bootstrap: broker.bootstrap(),
            }
        }

        /// Sends a webhook and waits until the service applied it. Deliveries about different
        /// orders land in different source partitions, so without the wait the service may
        /// (rightly) see them in another order than sent, as it would Shopify's.
        async fn send(&self, topic: &str, body: Value) {
            let before = self.applied();
            self.send_unobserved(topic, body).await;
            eventually("the record applied", Duration::from_secs(30), || async {
                (self.applied() > before).then_some(())
            })
            .await;
        }

        async fn send_unobserved(&self, topic: &str, body: Value) {
            let response = Webhook::new(topic, body.to_string().into_bytes(), SECRET)
                .post(self.ingress.addr)
                .await;
            assert_eq!(response.status, 200, "{}", response.body);
        }

        /// Records the service applied or dead-lettered, over every topic family.
        fn applied(&self) -> f64 {
            self.service()
                .metrics()
                .lines()
                .filter(|line| {
                    line.starts_with("aftercart_referrals_records_processed_total{")
                        || line.starts_with("aftercart_referrals_records_failed_total{")
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        }

        async fn read(&self, topic: &str, schema: &str) -> Vec<Value> {
            read_topic(&self.bootstrap, topic)
                .await
                .iter()
                .map(|record| {
                    let value: Value = serde_json::from_slice(&record.value).expect("JSON event");
                    assert_valid(schema, &value);
                    assert_eq!(
                        record.header("aftercart-event-id"),
                        value["event_id"].as_str()
                    );
                    assert!(record.key_str().starts_with(&format!("{SHOP}/")));
                    value
                })
                .collect()
        }

        async fn invites(&self) -> Vec<Value> {
            self.read(
                &self.config.invites_topic,
                "aftercart/referral-invites.schema.json",
            )
            .await
        }

        async fn rewards(&self) -> Vec<Value> {
            self.read(
                &self.config.rewards_topic,
                "aftercart/referral-rewards.schema.json",
            )
            .await
        }

        /// Waits for `count` invites and returns the code of `customer`'s.
        async fn code_of(&self, customer: u64, count: usize) -> String {
            let invites = eventually("invites", Duration::from_secs(30), || async {
                let invites = self.invites().await;
                (invites.len() >= count).then_some(invites)
            })
            .await;
            invites
                .iter()
                .find(|i| i["advocate"]["customer_id"] == customer)
                .map(|i| i["referral_code"].as_str().unwrap().to_string())
                .unwrap_or_else(|| panic!("no invite for {customer}: {invites:#?}"))
        }

        /// Rewards once at least `count` exist and nothing more arrives for a while.
        async fn settled_rewards(&self, count: usize) -> Vec<Value> {
            eventually("rewards", Duration::from_secs(30), || async {
                (self.rewards().await.len() >= count).then_some(())
            })
            .await;
            tokio::time::sleep(SETTLE).await;
            self.rewards().await
        }

        fn service(&self) -> &TestReferrals {
            self.service.as_ref().expect("running")
        }

        /// Stops the service as SIGTERM does; it must end cleanly (`what` says why it should).
        async fn stop_service(&mut self, what: &str) {
            self.service
                .take()
                .expect("running")
                .stop()
                .await
                .expect(what);
        }

        /// Starts the service again with the same configuration.
        async fn restart_service(&mut self, broker: &Broker) {
            self.service = Some(TestReferrals::start_on(broker, self.config.clone()).await);
        }
    }

    /// Ids unique to one test run, so tests sharing a broker never share customers or orders.
    fn ids() -> u64 {
        (uuid::Uuid::new_v4().as_u128() as u64 >> 12) | (1 << 52)
    }

    /// A non-test paid order by `customer`, who accepts marketing.
    fn order(id: u64, customer: u64) -> Value {
        json!({
            "id": id, "name": format!("#{}", id % 10000),
            "cart_token": format!("cart-{id}"), "checkout_token": format!("chk-{id}"),
            "email": format!("c{customer}@example.com"),
            "customer": {"id": customer, "email": format!("c{customer}@example.com"),
                         "first_name": "Ann", "last_name": format!("L{customer}")},
            "buyer_accepts_marketing": true, "financial_status": "paid", "test": false,
            "subtotal_price": "50.00", "total_price": "55.00", "currency": "EUR",
            "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z",
            "browser_ip": format!("10.{}.{}.{}", customer % 250, (customer / 250) % 250, id % 250),
            "shipping_address": {"first_name": "Ann", "last_name": format!("L{customer}"),
                                 "address1": format!("{customer} Main St"), "zip": "1000", "country_code": "BE"}
        })
    }

    fn with_code(mut body: Value, code: &str) -> Value {
        body["discount_codes"] = json!([{"code": code, "amount": "5.00", "type": "fixed_amount"}]);
        body
    }

    fn types(rewards: &[Value]) -> Vec<&str> {
        rewards
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect()
    }

    pub async fn a_buyer_is_invited_and_a_friends_first_order_earns_a_reward_after_review(
        broker: &Broker,
    ) {
        let stack = Stack::start(broker, &[]).await;
        let (advocate, friend, base) = (ids(), ids(), ids());
        stack.send("orders/create", order(base, advocate)).await;
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        let invite = &stack.invites().await[0];
        assert_eq!(
            invite["advocate"]["email"],
            format!("c{advocate}@example.com")
        );
        assert_eq!(invite["order"]["id"], base);
        assert_eq!(invite["share_url"], format!("https://{SHOP}/?ref={code}"));
        assert!(code.starts_with("REF-") && code.len() == 14, "{code}");

        // The friend names the code in the landing URL, lower-cased.
        let mut friend_order = order(base + 1, friend);
        friend_order["landing_site"] = json!(format!("/?ref={}", code.to_lowercase()));
        stack.send("orders/paid", friend_order).await;
        let rewards = stack.settled_rewards(2).await;
        assert_eq!(
            types(&rewards),
            ["reward.pending", "reward.granted"],
            "{rewards:#?}"
        );
        assert_eq!(rewards[0]["advocate"]["customer_id"], advocate);
        assert_eq!(rewards[0]["advocate"]["referral_code"], code);
        assert_eq!(rewards[0]["friend"]["order"]["id"], base + 1);
        assert_eq!(rewards[0]["attributed_via"], "landing_site");
        // The friend bought too, so they were invited in turn, once.
        assert_eq!(stack.invites().await.len(), 2);

        let service = stack.service();
        assert_eq!(service.metric("aftercart_referrals_invites_total"), 2.0);
        aftercart_tests::settles_at(
            r#"aftercart_referrals_rewards_total{reason="none",type="granted"}"#,
            1.0,
            |s| service.metric(s),
        )
        .await;
        aftercart_tests::settles_at(
            r#"aftercart_referrals_attributions_total{outcome="pending"}"#,
            1.0,
            |s| service.metric(s),
        )
        .await;
        assert_eq!(service.metric("aftercart_referrals_rewards_in_review"), 0.0);
    }

    pub async fn refunds_void_rewards_and_prevent_invites_even_when_delivered_first(
        broker: &Broker,
    ) {
        let stack = Stack::start(broker, &["--referrals-review-window=30s"]).await;
        let (advocate, friend, other, base) = (ids(), ids(), ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;

        // Refunds delivered before the paid order: no invite for that buyer.
        stack
            .send("refunds/create", json!({"id": 1, "order_id": base + 5}))
            .await;
        // The friend's order is refunded first too: pending, voided at once.
        stack
            .send("refunds/create", json!({"id": 2, "order_id": base + 1}))
            .await;
        stack.send("orders/paid", order(base + 5, other)).await;
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        let rewards = stack.settled_rewards(2).await;
        assert_eq!(
            types(&rewards),
            ["reward.pending", "reward.voided"],
            "{rewards:#?}"
        );
        assert_eq!(rewards[1]["reason"], "refunded");
        let invited: Vec<_> = stack
            .invites()
            .await
            .iter()
            .map(|i| i["advocate"]["customer_id"].as_u64().unwrap())
            .collect();
        assert!(
            !invited.contains(&other),
            "a refunded purchase makes no advocate"
        );
        assert!(
            !invited.contains(&friend),
            "nor does the friend's refunded one"
        );
        assert!(
            stack
                .service()
                .metric(r#"aftercart_referrals_invites_skipped_total{reason="negated"}"#)
                >= 2.0
        );

        // A cancellation within the window voids a pending reward.
        let second_friend = ids();
        stack
            .send(
                "orders/paid",
                with_code(order(base + 2, second_friend), &code),
            )
            .await;
        stack
            .send(
                "orders/cancelled",
                json!({"id": base + 2, "cancelled_at": "2026-11-23T11:00:00Z"}),
            )
            .await;
        let rewards = stack.settled_rewards(4).await;
        assert_eq!(types(&rewards[2..]), ["reward.pending", "reward.voided"]);
        assert_eq!(rewards[3]["reason"], "cancelled");
    }

    pub async fn a_friends_second_order_and_a_second_advocate_earn_nothing(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let (first, second, friend, base) = (ids(), ids(), ids(), ids());
        stack.send("orders/paid", order(base, first)).await;
        stack.send("orders/paid", order(base + 1, second)).await;
        let first_code = stack.code_of(first, 2).await;
        let second_code = stack.code_of(second, 2).await;
        for (n, code) in [(2, &first_code), (3, &second_code), (4, &first_code)] {
            let mut body = with_code(order(base + n, friend), code);
            body["created_at"] = json!(format!("2026-11-23T10:00:0{n}Z"));
            stack.send("orders/paid", body).await;
        }
        let rewards = stack.settled_rewards(2).await;
        assert_eq!(
            types(&rewards),
            ["reward.pending", "reward.granted"],
            "{rewards:#?}"
        );
        assert_eq!(rewards[0]["advocate"]["customer_id"], first);
        aftercart_tests::settles_at(
            r#"aftercart_referrals_attributions_total{outcome="not_first_order"}"#,
            2.0,
            |s| stack.service().metric(s),
        )
        .await;
    }

    pub async fn self_referral_is_rejected_by_each_signal(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let (advocate, base) = (ids(), ids());
        let mut advocate_order = order(base, advocate);
        advocate_order["customer"]["email"] = json!(format!("ann.l{advocate}@gmail.com"));
        stack.send("orders/paid", advocate_order).await;
        let code = stack.code_of(advocate, 1).await;

        // Their own code on their own next order.
        stack
            .send("orders/paid", with_code(order(base + 1, advocate), &code))
            .await;
        // A new account on the same Gmail mailbox (dots and a +tag).
        let mut same_email = with_code(order(base + 2, ids()), &code);
        same_email["customer"]["email"] = json!(format!("AnnL{advocate}+again@GMAIL.com"));
        stack.send("orders/paid", same_email).await;
        // A new account and email, same name and street.
        let mut same_address = with_code(order(base + 3, ids()), &code);
        same_address["shipping_address"] = json!({"first_name": "ANN", "last_name": format!("l{advocate}"),
            "address1": format!("{advocate} main st."), "zip": "1000", "country_code": "be"});
        stack.send("orders/paid", same_address).await;
        let rewards = stack.settled_rewards(3).await;
        assert_eq!(
            types(&rewards),
            ["reward.rejected", "reward.rejected", "reward.rejected"]
        );
        let mut reasons: Vec<_> = rewards
            .iter()
            .map(|r| {
                let order = r["friend"]["order"]["id"].as_u64().unwrap();
                (order - base, r["reason"].as_str().unwrap())
            })
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                (1, "same_customer"),
                (2, "same_email"),
                (3, "same_name_address")
            ]
        );
        assert_eq!(
            stack.service().metric(
                r#"aftercart_referrals_rewards_total{reason="same_email",type="rejected"}"#
            ),
            1.0
        );
    }

    pub async fn a_burst_of_referred_orders_from_one_ip_is_rejected(broker: &Broker) {
        let stack = Stack::start(broker, &["--referrals-ip-burst-max=2"]).await;
        let (advocate, base) = (ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        for n in 1..=3 {
            let mut body = with_code(order(base + n, ids()), &code);
            body["browser_ip"] = json!("203.0.113.7");
            stack.send("orders/paid", body).await;
        }
        let rewards = stack.settled_rewards(5).await;
        let rejected: Vec<_> = rewards
            .iter()
            .filter(|r| r["type"] == "reward.rejected")
            .collect();
        assert_eq!(rejected.len(), 1, "{rewards:#?}");
        assert_eq!(rejected[0]["reason"], "ip_burst");
        assert_eq!(
            rewards
                .iter()
                .filter(|r| r["type"] == "reward.granted")
                .count(),
            2
        );
    }

    pub async fn a_restart_mid_review_window_grants_exactly_once(broker: &Broker) {
        let mut stack = Stack::start(broker, &["--referrals-review-window=8s"]).await;
        let (advocate, friend, base) = (ids(), ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        eventually("the pending reward", Duration::from_secs(30), || async {
            (stack.rewards().await.len() == 1).then_some(())
        })
        .await;
        stack.stop_service("clean stop").await;
        // Replays and redeliveries while it is down change nothing.
        stack
            .send_unobserved("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        stack
            .send_unobserved("orders/paid", order(base, advocate))
            .await;
        stack.restart_service(broker).await;
        let rewards = stack.settled_rewards(2).await;
        // (Checked after settling: the stopped member may hold half the partitions until its
        // session expires, so the shop's partition can be restored a little later.)
        assert!(
            stack
                .service()
                .metric("aftercart_referrals_state_restored_records_total")
                >= 3.0
        );
        assert_eq!(
            types(&rewards),
            ["reward.pending", "reward.granted"],
            "{rewards:#?}"
        );
        assert_eq!(
            stack.invites().await.len(),
            2,
            "advocate and friend, once each"
        );

        // Restarting after the grant emits nothing again.
        stack.stop_service("clean stop").await;
        stack.restart_service(broker).await;
        tokio::time::sleep(SETTLE).await;
        assert_eq!(stack.rewards().await.len(), 2);
        assert_eq!(stack.invites().await.len(), 2);
    }

    pub async fn a_redacted_advocate_is_forgotten_and_pending_rewards_voided(broker: &Broker) {
        let stack = Stack::start(broker, &["--referrals-review-window=60s"]).await;
        let (advocate, friend, base) = (ids(), ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        stack
            .send(
                "customers/redact",
                json!({"shop_id": 1, "shop_domain": SHOP,
                       "customer": {"id": advocate, "email": format!("c{advocate}@example.com")},
                       "orders_to_redact": [base]}),
            )
            .await;
        let rewards = stack.settled_rewards(2).await;
        assert_eq!(types(&rewards), ["reward.pending", "reward.voided"]);
        assert_eq!(rewards[1]["reason"], "advocate_redacted");
        // The code no longer resolves.
        stack
            .send("orders/paid", with_code(order(base + 2, ids()), &code))
            .await;
        eventually("the unknown code", Duration::from_secs(30), || async {
            let unknown = stack
                .service()
                .metric(r#"aftercart_referrals_attributions_total{outcome="unknown_code"}"#);
            (unknown == 1.0).then_some(())
        })
        .await;
        assert_eq!(stack.rewards().await.len(), 2);
    }

    pub async fn a_data_request_is_answered_with_what_is_held_about_the_customer(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let (advocate, base) = (ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        stack.code_of(advocate, 1).await;
        let request = json!({"shop_id": 1, "shop_domain": SHOP, "orders_requested": [base],
                             "customer": {"id": advocate, "email": format!("c{advocate}@example.com")},
                             "data_request": {"id": 9999}});
        stack.send("customers/data_request", request.clone()).await;
        let topic = stack.config.data_requests_topic.clone();
        let reports = eventually("the report", Duration::from_secs(30), || async {
            let reports = stack
                .read(&topic, "aftercart/data-requests.schema.json")
                .await;
            (!reports.is_empty()).then_some(reports)
        })
        .await;
        assert_eq!(reports.len(), 1);
        let report = &reports[0];
        assert_eq!(report["service"], "referrals");
        assert_eq!(report["data_request_id"], 9999);
        let kinds: Vec<&str> = report["holdings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["customer", "order"]);
    }

    pub async fn every_event_is_also_posted_signed_to_the_webhook(broker: &Broker) {
        // The provider is briefly unavailable: the first delivery is retried.
        let receiver = Receiver::start(vec![Reply::status(503)]).await;
        let url = format!("--referrals-webhook-url={}", receiver.url);
        let dead_letters = format!(
            "--referrals-webhook-dead-letter-topic={}referrals-webhook-dead-letter",
            unique_prefix()
        );
        let stack = Stack::start(
            broker,
            &[
                &url,
                "--referrals-webhook-secret=provider-shared-secret",
                "--referrals-webhook-backoff-initial=100ms",
                &dead_letters,
            ],
        )
        .await;
        let (advocate, friend, base) = (ids(), ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        let rewards = stack.settled_rewards(2).await;
        let invites = stack.invites().await;
        let mut expected: Vec<String> = invites
            .iter()
            .chain(&rewards)
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect();
        expected.sort();
        let delivered = eventually("webhook deliveries", Duration::from_secs(30), || async {
            let delivered = receiver.delivered();
            (delivered.len() >= expected.len()).then_some(delivered)
        })
        .await;
        let mut ids: Vec<String> = delivered.iter().map(|r| r.event_id().to_string()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids, expected, "every event, by its event id");
        for request in &delivered {
            let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
            assert_eq!(body["event_id"].as_str(), Some(request.event_id()));
            assert_eq!(
                request.header("x-aftercart-hmac-sha256"),
                Some(sign(&Secret::new("provider-shared-secret"), &request.body).as_str()),
                "signed over the exact body"
            );
        }
        assert!(receiver.received().iter().any(|r| r.answered == 503));
    }

    /// Shopify orders with hundreds of line items run to megabytes: copying one to the by-shop
    /// topic must not exceed the service's record limit.
    pub async fn a_large_order_is_routed_and_its_buyer_invited(broker: &Broker) {
        let mut ingress = ingress_config(broker);
        ingress.max_body_bytes = 4 * 1024 * 1024; // the production default
        let stack = Stack::start_with(broker, ingress, &[]).await;
        let (advocate, base) = (ids(), ids());
        let mut large = order(base, advocate);
        large["note"] = json!("x".repeat(1_500_000));
        stack.send("orders/paid", large).await;
        stack.code_of(advocate, 1).await;
        aftercart_tests::settles_at("aftercart_referrals_records_routed_total", 1.0, |s| {
            stack.service().metric(s)
        })
        .await;
    }

    pub async fn poison_records_are_dead_lettered_and_processing_continues(broker: &Broker) {
        let stack = Stack::start(broker, &[]).await;
        let (advocate, base) = (ids(), ids());
        stack
            .send(
                "orders/paid",
                json!({"id": base, "cart_token": format!("cart-{base}"), "total_price": "1e9"}),
            )
            .await;
        stack
            .send(
                "refunds/create",
                json!({"id": 5, "order_id": "not a number"}),
            )
            .await;
        stack.send("orders/paid", order(base + 1, advocate)).await;
        stack.code_of(advocate, 1).await;
        let dead = eventually("dead letters", Duration::from_secs(30), || async {
            let dead = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
            (dead.len() == 2).then_some(dead)
        })
        .await;
        let reasons: Vec<_> = dead
            .iter()
            .map(|r| {
                r.header("aftercart-dead-letter-reason")
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains("not a decimal")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("refunds/create")),
            "{reasons:?}"
        );
        assert!(dead
            .iter()
            .all(|r| r.header("aftercart-dead-letter-source").is_some()));
        aftercart_tests::settles_at("aftercart_referrals_dead_letters_total", 2.0, |s| {
            stack.service().metric(s)
        })
        .await;
    }

    /// Issue 15: a member stored offsets of source partitions revoked while it was receiving a
    /// batch; librdkafka answered "erroneous state" and the member exited. Orders stream into
    /// the source topic while a second member joins and leaves three times; the first never
    /// stops, and every order is invited exactly once.
    pub async fn members_joining_and_leaving_under_load_never_stop_another_member(broker: &Broker) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let stack = Stack::start(broker, &[]).await;
        let base = ids();
        let orders_topic = format!("{}orders", stack.ingress.config.kafka.topic_prefix);
        let mut producer_config = rdkafka::ClientConfig::new();
        producer_config.set("bootstrap.servers", &stack.bootstrap);
        for (key, value) in broker.client_properties() {
            producer_config.set(key, value);
        }
        let producer: FutureProducer = producer_config.create().expect("producer");
        let (done, sent) = (AtomicBool::new(false), AtomicU64::new(0));
        let sender = async {
            // At least a few hundred orders, and orders all the while members come and go, at
            // a steady 200 a second.
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            while !done.load(Ordering::SeqCst) || sent.load(Ordering::SeqCst) < 300 {
                pace.tick().await;
                let mut acks = Vec::new();
                for _ in 0..20 {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    let body = order(base + n, base + 1_000_000 + n).to_string();
                    let key = format!("{SHOP}/{}", base + n);
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "shopify-topic",
                            value: Some("orders/paid"),
                        })
                        .insert(Header {
                            key: "shopify-shop-domain",
                            value: Some(SHOP),
                        });
                    let record = FutureRecord::to(&orders_topic)
                        .key(&key)
                        .payload(&body)
                        .headers(headers);
                    let queued = producer.send_result(record).map_err(|(error, _)| error);
                    acks.push(queued.expect("order queued"));
                }
                for ack in acks {
                    ack.await
                        .expect("delivery reported")
                        .expect("order produced");
                }
            }
        };
        let churn = async {
            for _ in 0..3 {
                // A fresh config: its own instance id, the same group.
                let config = test_config(&stack.ingress.config.kafka, &[]);
                let other = TestReferrals::start_on(broker, config).await;
                assert!(!stack.service().has_stopped(), "the first member stopped");
                other.stop().await.expect("the second member stops cleanly");
                assert!(!stack.service().has_stopped(), "the first member stopped");
            }
            done.store(true, Ordering::SeqCst);
        };
        tokio::join!(sender, churn);
        let orders = sent.load(Ordering::SeqCst);
        let invites = eventually("every order invited", Duration::from_secs(120), || async {
            let invites = stack.invites().await;
            assert!(!stack.service().has_stopped(), "the first member stopped");
            (invites.len() as u64 >= orders).then_some(invites)
        })
        .await;
        let mut invited: Vec<u64> = invites
            .iter()
            .map(|i| i["order"]["id"].as_u64().unwrap())
            .collect();
        invited.sort_unstable();
        invited.dedup();
        assert_eq!(invited.len(), invites.len(), "an order was invited twice");
        assert_eq!(invited.len() as u64, orders);
        assert!(!stack.service().has_stopped(), "the first member stopped");
    }

    const TOKEN: &str = "shpat_test_token";

    /// A stand-in Shopify with `SHOP`'s token, and the flags pointing the service at it.
    async fn shopify_flags(extra: &[&str]) -> (ShopifyAdmin, Vec<String>, tempdir::Dir) {
        let admin = ShopifyAdmin::start(&[(SHOP, TOKEN)]).await;
        let dir = tempdir::Dir::new();
        let tokens = dir.path.join("tokens");
        std::fs::write(&tokens, format!("# test\n{SHOP}={TOKEN}\n")).unwrap();
        let mut flags = vec![
            format!("--shopify-access-tokens-file={}", tokens.display()),
            format!("--shopify-admin-url={}", admin.url_template()),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        (admin, flags, dir)
    }

    mod tempdir {
        /// A directory removed when dropped.
        pub struct Dir {
            pub path: std::path::PathBuf,
        }

        impl Dir {
            pub fn new() -> Dir {
                let path = aftercart_tests::scratch(&format!("referrals-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                std::fs::remove_dir_all(&self.path).ok();
            }
        }
    }

    fn strs(flags: &[String]) -> Vec<&str> {
        flags.iter().map(String::as_str).collect()
    }

    pub async fn invite_codes_exist_in_the_shop_before_invites_are_published_and_rewards_are_issued(
        broker: &Broker,
    ) {
        let (admin, flags, _dir) = shopify_flags(&[
            "--referrals-friend-discount=15%",
            "--referrals-friend-min-subtotal=30",
            "--referrals-reward=10.00",
        ])
        .await;
        let stack = Stack::start(broker, &strs(&flags)).await;
        let (advocate, friend, base) = (ids(), ids(), ids());

        // Shopify is down: the invite waits, it is not published without its code.
        admin.fail_next(usize::MAX, 503);
        stack.send("orders/paid", order(base, advocate)).await;
        eventually("retried creates", Duration::from_secs(30), || async {
            (admin.calls("discountCodeBasicCreate", Some(503)) >= 2).then_some(())
        })
        .await;
        assert!(
            stack.invites().await.is_empty(),
            "no invite while its code does not exist"
        );
        assert!(admin.discounts().is_empty());

        // Back, but over its rate limit once: the service waits as Shopify says, then creates.
        admin.throttle_next(1);
        admin.fail_next(0, 503);
        let code = stack.code_of(advocate, 1).await;
        let created = admin.with_code(SHOP, &code);
        assert_eq!(created.len(), 1, "{created:#?}");
        let input = &created[0].input;
        assert_eq!(input["customerGets"]["value"]["percentage"], 0.15);
        assert_eq!(input["appliesOncePerCustomer"], true);
        assert_eq!(input["context"]["all"], "ALL");
        assert_eq!(
            input["minimumRequirement"]["subtotal"]["greaterThanOrEqualToSubtotal"],
            "30.00"
        );
        assert!(
            admin.calls("discountCodeBasicCreate", Some(200)) >= 2,
            "throttled, then created"
        );
        let service = stack.service();
        assert!(
            service.metric(r#"aftercart_referrals_shopify_calls_total{operation="discount_create",outcome="retried"}"#)
                >= 2.0
        );
        aftercart_tests::settles_at(r#"aftercart_referrals_shopify_calls_total{operation="discount_create",outcome="throttled"}"#, 1.0, |s| service.metric(s)).await;
        assert!(service.metric("aftercart_referrals_shopify_throttled_seconds_total") > 0.0);

        // The friend's order with the code: pending, granted after review, reward issued.
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        let rewards = stack.settled_rewards(2).await;
        assert_eq!(
            types(&rewards),
            ["reward.pending", "reward.granted"],
            "{rewards:#?}"
        );
        assert!(rewards[0].get("issued").is_none());
        let issued = &rewards[1]["issued"];
        assert_eq!(issued["kind"], "discount_code");
        assert_eq!(issued["amount"], "10.00");
        assert_eq!(issued["currency"], "EUR");
        let reward_code = issued["code"].as_str().unwrap();
        assert!(reward_code.starts_with("THANKS-"), "{reward_code}");
        let reward = admin.with_code(SHOP, reward_code);
        assert_eq!(reward.len(), 1);
        assert_eq!(reward[0].input["usageLimit"], 1);
        assert_eq!(
            reward[0].input["context"]["customers"]["add"][0],
            format!("gid://shopify/Customer/{advocate}")
        );
        assert_eq!(
            reward[0].input["customerGets"]["value"]["discountAmount"]["amount"],
            "10.00"
        );
        // Every request carried the token, and only the shop's discounts exist.
        assert_eq!(
            admin.discounts().len(),
            3,
            "advocate's and friend's codes, one reward"
        );
        assert_eq!(
            service.metric(
                r#"aftercart_referrals_shopify_actions_total{action="reward_code",outcome="done"}"#
            ),
            1.0
        );
    }

    pub async fn a_refund_in_the_window_voids_and_deactivates_an_issued_reward(broker: &Broker) {
        let (admin, flags, _dir) = shopify_flags(&[
            "--referrals-review-window=60s",
            "--referrals-reward-issue=pending",
            "--referrals-reward=20%",
            "--referrals-friend-first-order-only=true",
        ])
        .await;
        let stack = Stack::start(broker, &strs(&flags)).await;
        let (advocate, friend, base) = (ids(), ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        // First order only: the offer is limited to a segment of customers without orders,
        // created once in the shop.
        let segments = admin.segments();
        assert_eq!(segments.len(), 1, "{segments:?}");
        assert_eq!(segments[0].2, "number_of_orders = 0");
        let offer = &admin.with_code(SHOP, &code)[0].input;
        assert!(offer["context"]["customerSegments"]["add"][0]
            .as_str()
            .unwrap()
            .starts_with("gid://shopify/Segment/"));
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        let pending = eventually("the pending reward", Duration::from_secs(30), || async {
            let rewards = stack.rewards().await;
            (rewards.len() == 1).then_some(rewards)
        })
        .await;
        let reward_code = pending[0]["issued"]["code"].as_str().unwrap().to_string();
        assert_eq!(pending[0]["issued"]["percentage"], "20.00");
        assert_eq!(admin.with_code(SHOP, &reward_code)[0].status, "ACTIVE");

        stack
            .send("refunds/create", json!({"id": 9, "order_id": base + 1}))
            .await;
        let rewards = stack.settled_rewards(2).await;
        assert_eq!(
            types(&rewards),
            ["reward.pending", "reward.voided"],
            "{rewards:#?}"
        );
        assert_eq!(rewards[1]["reason"], "refunded");
        assert_eq!(rewards[1]["issued"]["code"], reward_code.as_str());
        assert_eq!(rewards[1]["issued"]["deactivated"], true);
        let stored = admin.with_code(SHOP, &reward_code);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].status, "EXPIRED", "deactivated in the shop");
        assert_eq!(admin.segments().len(), 1, "the segment is created once");
    }

    pub async fn lost_answers_and_a_restart_create_no_duplicate_discounts(broker: &Broker) {
        let (admin, flags, _dir) = shopify_flags(&["--referrals-review-window=5s"]).await;
        let mut stack = Stack::start(broker, &strs(&flags)).await;
        let (advocate, friend, base) = (ids(), ids(), ids());

        // Shopify creates the code but the answer is lost: the retry finds it taken and looks
        // it up instead of making a second one.
        admin.lose_next_answers(1);
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        assert_eq!(admin.with_code(SHOP, &code).len(), 1);
        assert!(admin.calls("codeDiscountNodeByCode", Some(200)) >= 1);

        // Down while the friend's order waits for its invite's code; stopped mid-way.
        admin.fail_next(usize::MAX, 503);
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        eventually("a failing create", Duration::from_secs(30), || async {
            (admin.calls("discountCodeBasicCreate", Some(503)) >= 1).then_some(())
        })
        .await;
        stack.service.take().unwrap().crash().await;
        admin.fail_next(0, 503);
        // The advocate's order delivered again while it is down.
        stack
            .send_unobserved("orders/paid", order(base, advocate))
            .await;
        stack.restart_service(broker).await;
        let rewards = stack.settled_rewards(2).await;
        assert_eq!(
            types(&rewards),
            ["reward.pending", "reward.granted"],
            "{rewards:#?}"
        );
        let friend_code = stack.code_of(friend, 2).await;
        let reward_code = rewards[1]["issued"]["code"].as_str().unwrap();
        for code in [code.as_str(), friend_code.as_str(), reward_code] {
            assert_eq!(
                admin.with_code(SHOP, code).len(),
                1,
                "one discount for {code}"
            );
        }
        assert_eq!(admin.discounts().len(), 3);
    }

    pub async fn a_first_order_segment_made_before_a_restart_is_found_not_made_again(
        broker: &Broker,
    ) {
        let (admin, flags, _dir) =
            shopify_flags(&["--referrals-friend-first-order-only=true"]).await;
        // The merchant's own segment, then the one an earlier run of the service made.
        admin.add_segment(SHOP, "VIP", "amount_spent > 500");
        let ours = admin.add_segment(
            SHOP,
            "aftercart: customers without orders",
            "number_of_orders = 0",
        );
        let stack = Stack::start(broker, &strs(&flags)).await;
        let advocate = ids();
        stack.send("orders/paid", order(ids(), advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        let offer = &admin.with_code(SHOP, &code)[0].input;
        assert_eq!(
            offer["context"]["customerSegments"]["add"][0],
            ours.as_str()
        );
        assert_eq!(admin.segments().len(), 2, "no second segment");
    }

    pub async fn a_shop_whose_shopify_is_down_spends_one_retry_budget_a_batch_not_one_an_action(
        broker: &Broker,
    ) {
        let (admin, flags, _dir) = shopify_flags(&["--shopify-max-retry-duration=1s"]).await;
        let mut stack = Stack::start(broker, &strs(&flags)).await;
        // Four buyers' orders wait in Kafka while the service is down, so they meet in a batch.
        stack.service.take().unwrap().crash().await;
        admin.fail_next(usize::MAX, 503);
        let base = ids();
        for i in 0..4 {
            stack
                .send_unobserved("orders/paid", order(base + i, ids()))
                .await;
        }
        stack.restart_service(broker).await;
        eventually("four dead letters", Duration::from_secs(60), || async {
            let dead = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
            let exhausted = dead
                .iter()
                .filter(|r| {
                    r.header("aftercart-dead-letter-reason")
                        .is_some_and(|r| r.starts_with("shopify_exhausted: friend_discount"))
                })
                .count();
            (exhausted == 4).then_some(())
        })
        .await;
        // Once the shop's Shopify failed past the budget, the rest of the batch for that shop is
        // dead-lettered at once: every other shop's outputs wait one budget, not one per output.
        let tried = admin.calls("discountCodeBasicCreate", Some(503));
        let one_budget = stack
            .service()
            .metric(r#"aftercart_referrals_shopify_calls_total{operation="discount_create",outcome="exhausted"}"#);
        assert!(
            one_budget <= 2.0,
            "budgets spent: {one_budget}, calls: {tried}"
        );
        assert!(stack.invites().await.is_empty());
    }

    pub async fn a_store_credit_whose_answer_is_lost_is_not_credited_twice(broker: &Broker) {
        let (admin, flags, _dir) = shopify_flags(&[
            "--referrals-review-window=2s",
            "--referrals-reward-kind=store_credit",
            "--referrals-reward=10.00",
        ])
        .await;
        let stack = Stack::start(broker, &strs(&flags)).await;
        let (advocate, friend, base) = (ids(), ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;

        // Shopify credits the advocate but the answer is lost: store credit has no code to look
        // up, so sending it again would credit twice.
        admin.lose_next_credit_answers(1);
        stack
            .send("orders/paid", with_code(order(base + 1, friend), &code))
            .await;
        let settled = eventually(
            "the grant written or dead-lettered",
            Duration::from_secs(30),
            || async {
                let granted = types(&stack.rewards().await).contains(&"reward.granted");
                let dead = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
                let unconfirmed = dead.iter().find_map(|r| {
                    r.header("aftercart-dead-letter-reason")
                        .filter(|r| r.starts_with("shopify_unconfirmed: store_credit"))
                        .map(str::to_string)
                });
                (granted || unconfirmed.is_some()).then_some(unconfirmed)
            },
        )
        .await;
        let credits = admin.credits();
        assert_eq!(credits.len(), 1, "credited once: {credits:#?}");
        assert_eq!(credits[0].amount, "10.00");
        assert_eq!(admin.calls("storeCreditAccountCredit", None), 1);
        assert!(
            settled.is_some(),
            "an unconfirmed credit is dead-lettered for a person to check, not resent"
        );
    }

    /// A friend's reward and another buyer's invite fall due in one batch, in that order;
    /// Shopify credits the advocate, then goes down, so the invite's discount waits in its
    /// retries when the service is stopped (a rolling deploy). The credit already given is
    /// written as the grant it was for, so the batch read again after the restart does not give
    /// it again.
    pub async fn a_store_credit_given_before_a_stop_is_not_given_again(broker: &Broker) {
        let (admin, flags, _dir) = shopify_flags(&[
            "--referrals-review-window=2s",
            "--referrals-invite-delay=3s",
            "--referrals-reward-kind=store_credit",
            "--referrals-reward=10.00",
            "--shopify-max-retry-duration=10m",
        ])
        .await;
        let mut stack = Stack::start(broker, &strs(&flags)).await;
        let (advocate, friend, buyer, base) = (ids(), ids(), ids(), ids());
        stack.send("orders/paid", order(base, advocate)).await;
        let code = stack.code_of(advocate, 1).await;
        // While the service is down the friend orders with the code (no marketing consent, so
        // no invite of their own), then another buyer: read after the restart, past both
        // delays, the advocate's reward (due 2 s after the friend's order) and the buyer's
        // invite (3 s after theirs) fall due in one tick, in that order.
        stack.stop_service("clean stop").await;
        let mut friends_order = with_code(order(base + 1, friend), &code);
        friends_order["buyer_accepts_marketing"] = json!(false);
        stack.send_unobserved("orders/paid", friends_order).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stack
            .send_unobserved("orders/paid", order(base + 2, buyer))
            .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        admin.down_after_credits(Some((1, 503)));
        stack.restart_service(broker).await;
        eventually(
            "the buyer's discount retried",
            Duration::from_secs(60),
            || async { (admin.calls("discountCodeBasicCreate", Some(503)) >= 1).then_some(()) },
        )
        .await;
        assert_eq!(admin.credits().len(), 1);
        stack
            .stop_service("a prompt stop in the middle of the retries")
            .await;
        admin.down_after_credits(None);
        stack.restart_service(broker).await;
        eventually("the buyer's invite", Duration::from_secs(60), || async {
            let invites = stack.invites().await;
            invites
                .iter()
                .any(|i| i["advocate"]["customer_id"] == buyer)
                .then_some(())
        })
        .await;
        tokio::time::sleep(SETTLE).await;
        let credits = admin.credits();
        assert_eq!(credits.len(), 1, "the advocate credited once: {credits:#?}");
        assert_eq!(admin.calls("storeCreditAccountCredit", None), 1);
        let granted = types(&stack.rewards().await)
            .iter()
            .filter(|t| **t == "reward.granted")
            .count();
        assert_eq!(granted, 1, "one grant");
    }

    pub async fn refused_inputs_and_tokenless_shops_are_dead_lettered_while_other_shops_keep_working(
        broker: &Broker,
    ) {
        let (admin, flags, _dir) = shopify_flags(&[]).await;
        let stack = Stack::start(broker, &strs(&flags)).await;
        let (refused, tokenless, fine, base) = (ids(), ids(), ids(), ids());

        // Shopify refuses the input: a dead letter naming the userErrors, no invite.
        admin.refuse_creates(Some("Value must be less than or equal to 100"));
        stack.send("orders/paid", order(base, refused)).await;
        let dead = eventually("the refused invite", Duration::from_secs(30), || async {
            let dead = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
            (!dead.is_empty()).then_some(dead)
        })
        .await;
        let reason = dead[0].header("aftercart-dead-letter-reason").unwrap();
        assert!(
            reason.starts_with("shopify_user_errors: friend_discount"),
            "{reason}"
        );
        assert!(reason.contains("less than or equal to 100"), "{reason}");
        let letter: Value = serde_json::from_slice(&dead[0].value).unwrap();
        assert_eq!(letter["type"], "invite");
        assert_eq!(letter["advocate"]["customer_id"], refused);
        admin.refuse_creates(None);

        // A shop without a token: dead-lettered and counted; the token's shop keeps working.
        let other_shop = "no-token.myshopify.com";
        let mut webhook = Webhook::new(
            "orders/paid",
            order(base + 1, tokenless).to_string().into_bytes(),
            SECRET,
        );
        webhook.shop = other_shop.to_string();
        assert_eq!(webhook.post(stack.ingress.addr).await.status, 200);
        stack.send("orders/paid", order(base + 2, fine)).await;
        let invites = eventually(
            "the invite of the shop with a token",
            Duration::from_secs(30),
            || async {
                let invites = stack.invites().await;
                (!invites.is_empty()).then_some(invites)
            },
        )
        .await;
        assert_eq!(invites.len(), 1, "{invites:#?}");
        assert_eq!(invites[0]["advocate"]["customer_id"], fine);
        eventually(
            "the tokenless shop's dead letter",
            Duration::from_secs(30),
            || async {
                let dead = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
                dead.iter()
                    .any(|r| {
                        r.header("aftercart-dead-letter-reason")
                            .is_some_and(|r| r.starts_with("shopify_no_token"))
                    })
                    .then_some(())
            },
        )
        .await;
        let service = stack.service();
        assert!(service.metric("aftercart_referrals_shopify_no_token_total") >= 1.0);
        aftercart_tests::settles_at(r#"aftercart_referrals_shopify_actions_total{action="friend_discount",outcome="dead_lettered"}"#, 2.0, |s| service.metric(s)).await;

        // A revoked token: 401, the shop counted as refused until its token works again.
        admin.set_token(SHOP, "rotated");
        let refused_later = ids();
        stack
            .send("orders/paid", order(base + 3, refused_later))
            .await;
        eventually(
            "the refused shop gauge",
            Duration::from_secs(30),
            || async {
                (stack
                    .service()
                    .metric("aftercart_referrals_shopify_token_refused_shops")
                    == 1.0)
                    .then_some(())
            },
        )
        .await;
        assert!(
            stack.service().metric(r#"aftercart_referrals_shopify_calls_total{operation="discount_create",outcome="refused"}"#)
                >= 1.0
        );
    }

    /// Time spent waiting on Shopify's rate limit (`THROTTLED`, normal operation) does not eat
    /// the retry budget for failures: a 503 after 3 s of throttling is retried under a 2 s
    /// budget, and the call succeeds.
    #[tokio::test]
    async fn throttle_waits_are_not_taken_from_the_retry_budget() {
        use aftercart_shopify_admin::{AdminClient, AdminConfig, AdminMetrics};
        let admin = ShopifyAdmin::start(&[(SHOP, TOKEN)]).await;
        let dir = tempdir::Dir::new();
        let tokens = dir.path.join("tokens");
        std::fs::write(&tokens, format!("{SHOP}={TOKEN}\n")).unwrap();
        let config = AdminConfig {
            tokens_file: tokens,
            api_version: "2026-10".into(),
            url_template: admin.url_template(),
            timeout: Duration::from_secs(5),
            max_retry_duration: Duration::from_secs(2),
        };
        let metrics = AdminMetrics::register(&prometheus::Registry::new(), "test").unwrap();
        let client = AdminClient::new(config, metrics).unwrap();
        // Thirty throttles of 0.1 s each (cost 10 at 100 a second), then a 503.
        admin.throttle_then_fail(30, 503);
        let answer = client
            .call(
                SHOP,
                "segment_lookup",
                "query { segments(first: 1, query: \"name:'x'\") { nodes { id } } }",
                serde_json::json!({}),
                &tokio_util::sync::CancellationToken::new(),
            )
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(admin.calls("segments", Some(503)), 1);
    }
}

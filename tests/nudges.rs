//! Nudges service integration tests: the service in-process on a real broker (mock cluster and
//! Tansu), its inputs written as the abandonment service and the ingress write them, and its
//! Klaviyo destination a real local HTTP server answering like Klaviyo.

use aftercart_tests::broker_tests;

broker_tests!(
    an_abandoner_gets_every_step_and_buyers_elsewhere_and_the_unsubscribed_none,
    each_step_is_sent_once_across_a_crash,
    many_sequences_keep_exact_books_across_repeated_crashes,
    a_recovery_discount_is_made_once_per_sequence_and_carried_from_its_step,
    a_data_request_is_answered_with_the_sequences_held_about_the_customer,
    a_data_request_sent_while_the_service_is_down_is_answered_once_after_its_restart,
    a_redacted_customer_is_never_nudged_and_their_email_is_in_no_output,
);

mod scenarios {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use aftercart_kafka::KafkaSettings;
    use aftercart_nudges::NudgesConfig;
    use aftercart_shopify::Family;
    use aftercart_tests::data_requests::{answers_to, kinds, reports};
    use aftercart_tests::nudges::{
        test_config, test_config_with, Klaviyo, TestNudges, Upstream, KLAVIYO_KEY,
    };
    use aftercart_tests::schemas::assert_valid;
    use aftercart_tests::shopify_admin::ShopifyAdmin;
    use aftercart_tests::{count_records, eventually, read_topic, unique_prefix, Broker};
    use serde_json::{json, Value};

    const SHOP: &str = "jsmith.myshopify.com";
    const WAIT: Duration = Duration::from_secs(90);

    fn kafka(broker: &Broker) -> KafkaSettings {
        let mut kafka = KafkaSettings::new(broker.bootstrap(), unique_prefix());
        kafka.partitions = 3;
        kafka.properties = broker.client_properties().into();
        kafka
    }

    async fn nudges(broker: &Broker, config: &NudgesConfig) -> Vec<Value> {
        read_topic(&broker.bootstrap(), &config.nudges_topic)
            .await
            .iter()
            .map(|r| {
                let value: Value = serde_json::from_slice(&r.value).expect("nudge JSON");
                assert_eq!(r.header("aftercart-event-id"), value["event_id"].as_str());
                value
            })
            .collect()
    }

    /// Sends a `customers/data_request` (Shopify's request id `id`) about `customer`.
    async fn request_data(upstream: &Upstream<'_>, id: u64, customer: Value) {
        let body = json!({"shop_id": 1, "shop_domain": SHOP, "customer": customer,
                          "orders_requested": [], "data_request": {"id": id}});
        upstream
            .webhook(
                Family::Compliance,
                "customers/data_request",
                &id.to_string(),
                &body,
            )
            .await;
    }

    /// Ann abandons (a sequence of two steps an hour apart): the service then holds her.
    async fn ann_with_a_sequence(broker: &Broker) -> (Klaviyo, NudgesConfig, TestNudges) {
        let klaviyo = Klaviyo::start(SHOP).await;
        let config = test_config(&kafka(broker), &klaviyo, "1h,2h");
        let service = TestNudges::start_on(broker, config.clone()).await;
        Upstream {
            config: &config,
            shop: SHOP,
        }
        .abandoned(1, "ann@example.com", "ann-cart", true)
        .await;
        eventually("Ann's sequence", WAIT, || async {
            (service.metric("aftercart_nudges_sequences") == 1.0).then_some(())
        })
        .await;
        (klaviyo, config, service)
    }

    fn emails(nudges: &[Value]) -> BTreeSet<String> {
        nudges
            .iter()
            .map(|n| {
                n["customer"]["email"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string()
            })
            .collect()
    }

    pub async fn an_abandoner_gets_every_step_and_buyers_elsewhere_and_the_unsubscribed_none(
        broker: &Broker,
    ) {
        let klaviyo = Klaviyo::start(SHOP).await;
        let config = test_config(&kafka(broker), &klaviyo, "4s,8s");
        let service = TestNudges::start_on(broker, config.clone()).await;
        let upstream = Upstream {
            config: &config,
            shop: SHOP,
        };
        // Ann abandons and hears from us twice.
        upstream
            .abandoned(1, "ann@example.com", "ann-cart", true)
            .await;
        // Bob abandons one cart and orders through another (matched by his email only).
        upstream
            .abandoned(2, "bob@example.com", "bob-cart", true)
            .await;
        upstream
            .webhook(
                Family::Orders,
                "orders/create",
                "bob-other-cart",
                &json!({"id": 9001, "cart_token": "bob-other-cart", "checkout_token": null,
                        "email": "Bob@Example.com", "customer": null}),
            )
            .await;
        // Carl abandons, then unsubscribes.
        upstream
            .abandoned(3, "carl@example.com", "carl-cart", true)
            .await;
        upstream
            .webhook(
                Family::Customers,
                "customers_email_marketing_consent/update",
                "3",
                &json!({"customer_id": 3, "email_address": "carl@example.com",
                        "email_marketing_consent": {"state": "unsubscribed"}}),
            )
            .await;
        // Dan never consented: his event carries no contact details.
        upstream
            .abandoned(4, "dan@example.com", "dan-cart", false)
            .await;

        let sent = eventually("Ann's two nudges", WAIT, || async {
            let sent = nudges(broker, &config).await;
            (sent.len() >= 2).then_some(sent)
        })
        .await;
        // Bob's order and Carl's unsubscribe may be read before or after their abandonments:
        // either way each stops one sequence (or keeps it from starting).
        eventually("every other sequence stopped", WAIT, || async {
            (service.metric("aftercart_nudges_sequences") == 0.0
                && service.metric(r#"aftercart_nudges_suppressed_total{reason="purchased"}"#)
                    == 1.0
                && service.metric(r#"aftercart_nudges_suppressed_total{reason="consent"}"#) == 2.0)
                .then_some(())
        })
        .await;
        let sent = nudges(broker, &config)
            .await
            .into_iter()
            .chain(sent)
            .collect::<Vec<_>>();
        assert_eq!(
            emails(&sent),
            BTreeSet::from(["ann@example.com".to_string()])
        );
        let steps: BTreeSet<u64> = sent.iter().map(|n| n["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, BTreeSet::from([1, 2]));
        for nudge in &sent {
            assert_valid("aftercart/nudges.schema.json", nudge);
            assert_eq!(
                nudge["recovery_url"],
                "https://jsmith.myshopify.com/recover/ann-cart?key=k"
            );
            assert_eq!(nudge["line_items"]["items"][0]["title"], "Mug");
        }
        assert!(service.metric("aftercart_nudges_scheduled_total") >= 1.0);

        // Klaviyo: one event per nudge, on Ann's profile, with the shop's key.
        let events = eventually("two Klaviyo events", WAIT, || async {
            let events = klaviyo.events();
            (events.len() >= 2).then_some(events)
        })
        .await;
        let request = &klaviyo.receiver.delivered()[0];
        assert_eq!(request.uri, "/api/events");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Klaviyo-API-Key {KLAVIYO_KEY}").as_str())
        );
        assert!(request.header("revision").is_some());
        let ids: BTreeSet<&str> = events
            .iter()
            .map(|e| e["data"]["attributes"]["unique_id"].as_str().unwrap())
            .collect();
        let nudge_ids: BTreeSet<&str> = sent
            .iter()
            .map(|n| n["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, nudge_ids);
        for event in &events {
            let attributes = &event["data"]["attributes"];
            assert_eq!(
                attributes["profile"]["data"]["attributes"]["email"],
                "ann@example.com"
            );
            assert_eq!(
                attributes["properties"]["recovery_url"],
                sent[0]["recovery_url"]
            );
            assert!(attributes["properties"].get("customer").is_none());
        }
        eventually("sends counted", WAIT, || async {
            (service.metric(r#"aftercart_nudges_sent_total{destination="klaviyo",step="1"}"#)
                == 1.0
                && service.metric(r#"aftercart_nudges_sent_total{destination="klaviyo",step="2"}"#)
                    == 1.0)
                .then_some(())
        })
        .await;
        service.stop().await.expect("clean stop");
    }

    pub async fn each_step_is_sent_once_across_a_crash(broker: &Broker) {
        let klaviyo = Klaviyo::start(SHOP).await;
        let config = test_config(&kafka(broker), &klaviyo, "3s,12s");
        let service = TestNudges::start_on(broker, config.clone()).await;
        let upstream = Upstream {
            config: &config,
            shop: SHOP,
        };
        upstream
            .abandoned(1, "ann@example.com", "ann-cart", true)
            .await;
        eventually("step 1 on the topic", WAIT, || async {
            (!nudges(broker, &config).await.is_empty()).then_some(())
        })
        .await;
        // Killed after step 1: whatever of it was not yet in the changelog is reconciled from
        // the topic by the next owner.
        service.crash().await;
        let service = TestNudges::start_on(broker, config.clone()).await;
        let sent = eventually("step 2 on the topic", WAIT, || async {
            let sent = nudges(broker, &config).await;
            sent.iter().any(|n| n["step"] == 2).then_some(sent)
        })
        .await;
        let steps: Vec<u64> = sent.iter().map(|n| n["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2], "each step exactly once on the topic");
        // Klaviyo may see an event again after the crash (same unique_id, deduplicated there),
        // never a third one.
        let ids = eventually("both steps in Klaviyo", WAIT, || async {
            let ids: BTreeSet<String> = klaviyo
                .events()
                .iter()
                .map(|e| {
                    e["data"]["attributes"]["unique_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            (ids.len() == 2).then_some(ids)
        })
        .await;
        assert_eq!(ids.len(), 2);
        service.stop().await.expect("clean stop");
    }

    /// People abandoning at once, and crashes while their nudges are being written.
    const PEOPLE: u64 = 300;
    const CRASHES: u64 = 3;

    pub async fn many_sequences_keep_exact_books_across_repeated_crashes(broker: &Broker) {
        let klaviyo = Klaviyo::start(SHOP).await;
        let config = test_config(&kafka(broker), &klaviyo, "2s,6s");
        let mut service = TestNudges::start_on(broker, config.clone()).await;
        let upstream = Upstream {
            config: &config,
            shop: SHOP,
        };
        let people: Vec<(u64, String, String, bool)> = (1..=PEOPLE)
            .map(|n| (n, format!("p{n}@example.com"), format!("cart-{n}"), true))
            .collect();
        upstream.abandoned_many(&people).await;
        let owed = PEOPLE * 2;
        let mut crashes = 0;
        for crash in 1..=CRASHES {
            let threshold = owed * crash / (CRASHES + 3);
            let at = eventually("outputs to crash at", WAIT, || async {
                let n = count_records(&broker.bootstrap(), &config.nudges_topic).await;
                (n >= threshold).then_some(n)
            })
            .await;
            if at >= owed {
                break;
            }
            service.crash().await;
            crashes += 1;
            eprintln!("nudges: crash {crash} with {at} of {owed} nudges in Kafka");
            service = TestNudges::start_on(broker, config.clone()).await;
        }
        // Every sequence ends with its last step. A restart that finds both steps of a sequence
        // due sends only the later one (a late first reminder is skipped, by design), so step 1
        // is owed at most once and step 2 exactly once.
        let sent = eventually("the last step of every sequence", WAIT, || async {
            let sent = nudges(broker, &config).await;
            let last = sent.iter().filter(|n| n["step"] == 2).count() as u64;
            (last >= PEOPLE).then_some(sent)
        })
        .await;
        // A step written again is the same record under the same event id: the stage's
        // documented window (outputs on the wire when their writer died land after the next
        // owner restored and are not reconciled; on the mock cluster a whole produce batch can
        // be), deduplicated downstream on the id (Klaviyo's unique_id). Count them.
        let mut seen = BTreeSet::new();
        let mut ids = std::collections::BTreeMap::new();
        for nudge in &sent {
            let key = (
                nudge["journey_key"].as_str().unwrap().to_string(),
                nudge["step"].as_u64().unwrap(),
            );
            let id = nudge["event_id"].as_str().unwrap().to_string();
            assert_eq!(
                ids.entry(key.clone()).or_insert_with(|| id.clone()),
                &id,
                "{key:?} under two ids"
            );
            seen.insert(key);
        }
        let firsts = seen.iter().filter(|(_, step)| *step == 1).count() as u64;
        let lasts = seen.iter().filter(|(_, step)| *step == 2).count() as u64;
        let duplicates = sent.len() - seen.len();
        eprintln!(
            "nudges books: {PEOPLE} sequences, step 2 written {lasts}, step 1 written {firsts} \
             (skipped as late {}), duplicates {duplicates}, crashes {crashes}",
            PEOPLE - firsts
        );
        assert_eq!(lasts, PEOPLE);
        // Copies exist only as whole records under their one id (checked above); the
        // destination gets each id, and Klaviyo keeps one event per unique_id.
        let ids: BTreeSet<String> = sent
            .iter()
            .map(|n| n["event_id"].as_str().unwrap().to_string())
            .collect();
        eventually("Klaviyo has every nudge written", WAIT, || async {
            let delivered: BTreeSet<String> = klaviyo
                .events()
                .iter()
                .map(|e| {
                    e["data"]["attributes"]["unique_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            (delivered == ids).then_some(())
        })
        .await;
        service.stop().await.expect("clean stop");
    }

    pub async fn a_recovery_discount_is_made_once_per_sequence_and_carried_from_its_step(
        broker: &Broker,
    ) {
        const TOKEN: &str = "shpat_nudges_test";
        let klaviyo = Klaviyo::start(SHOP).await;
        let admin = ShopifyAdmin::start(&[(SHOP, TOKEN)]).await;
        let tokens = klaviyo.dir.join("shopify-tokens");
        std::fs::write(&tokens, format!("{SHOP}={TOKEN}\n")).unwrap();
        let flags = [
            format!("--shopify-access-tokens-file={}", tokens.display()),
            format!("--shopify-admin-url={}", admin.url_template()),
        ];
        let config = test_config_with(
            &kafka(broker),
            &klaviyo,
            "2s,4s,6s",
            "[discount]\nvalue = \"10%\"\nfrom_step = 2\n",
            &flags,
        );
        let service = TestNudges::start_on(broker, config.clone()).await;
        let upstream = Upstream {
            config: &config,
            shop: SHOP,
        };
        upstream
            .abandoned(41, "ann@example.com", "ann-cart", true)
            .await;
        let sent = eventually("three steps", WAIT, || async {
            let sent = nudges(broker, &config).await;
            (sent.len() >= 3).then_some(sent)
        })
        .await;
        let codes: Vec<Option<&str>> = sent.iter().map(|n| n["discount_code"].as_str()).collect();
        assert_eq!(codes[0], None, "step 1 comes before the discount");
        let code = codes[1].expect("step 2 carries the code");
        assert_eq!(codes[2], Some(code), "one code per sequence");
        assert!(code.starts_with("BACK-"));
        let made = admin.with_code(SHOP, code);
        assert_eq!(made.len(), 1, "created once, found the second time");
        let input = &made[0].input;
        assert_eq!(input["usageLimit"], 1);
        assert_eq!(input["customerGets"]["value"]["percentage"], 0.1);
        assert_eq!(
            input["context"]["customers"]["add"][0],
            "gid://shopify/Customer/41"
        );
        for nudge in &sent {
            assert_valid("aftercart/nudges.schema.json", nudge);
        }
        eventually("the code in Klaviyo", WAIT, || async {
            klaviyo
                .events()
                .iter()
                .any(|e| e["data"]["attributes"]["properties"]["discount_code"] == code)
                .then_some(())
        })
        .await;
        aftercart_tests::settles_at(
            r#"aftercart_nudges_discounts_total{outcome="created"}"#,
            2.0,
            |s| service.metric(s),
        )
        .await;
        service.stop().await.expect("clean stop");
    }

    pub async fn a_data_request_is_answered_with_the_sequences_held_about_the_customer(
        broker: &Broker,
    ) {
        let (_klaviyo, config, service) = ann_with_a_sequence(broker).await;
        aftercart_tests::settles_at("aftercart_nudges_data_requests_answered_total", 0.0, |s| {
            service.metric(s)
        })
        .await;
        let upstream = Upstream {
            config: &config,
            shop: SHOP,
        };
        request_data(&upstream, 501, json!({"id": 1, "email": "Ann@Example.com"})).await;
        // Someone the service holds nothing about is answered too: every service answers.
        request_data(&upstream, 502, json!({"id": 2, "email": "bob@example.com"})).await;
        let ann = answers_to(&broker.bootstrap(), &config.data_requests_topic, 501).await;
        let bob = answers_to(&broker.bootstrap(), &config.data_requests_topic, 502).await;
        assert_eq!((ann.len(), bob.len()), (1, 1), "{ann:#?} {bob:#?}");
        let (ann, bob) = (&ann[0], &bob[0]);
        assert_eq!(ann["service"], "nudges");
        assert_eq!(ann["shop"], SHOP);
        assert_eq!(ann["customer_id"], 1);
        assert_eq!(kinds(ann), ["sequence"]);
        let held = &ann["holdings"][0];
        assert_eq!(held["key"], format!("sequence/{SHOP}/ann-cart"));
        assert_eq!(
            held["data"]["stored"]["customer"]["email"],
            "ann@example.com"
        );
        assert_eq!(held["data"]["steps_sent"], 0);
        assert_eq!(held["data"]["steps_scheduled"].as_array().unwrap().len(), 2);
        assert_eq!(
            held["data"]["contact_fields"],
            json!(["email", "first_name"])
        );
        assert!(kinds(bob).is_empty(), "{bob:#}");
        eventually("the answers counted", WAIT, || async {
            (service.metric("aftercart_nudges_data_requests_answered_total") == 2.0).then_some(())
        })
        .await;
        service.stop().await.expect("clean stop");
    }

    pub async fn a_redacted_customer_is_never_nudged_and_their_email_is_in_no_output(
        broker: &Broker,
    ) {
        let klaviyo = Klaviyo::start(SHOP).await;
        let config = test_config(&kafka(broker), &klaviyo, "2s,4s");
        let service = TestNudges::start_on(broker, config.clone()).await;
        let upstream = Upstream {
            config: &config,
            shop: SHOP,
        };
        // Ann is redacted, then a data request on the same raw key (read after it): its answer
        // listing the redaction's markers shows the redaction applied.
        let redaction = json!({"shop_id": 1, "shop_domain": SHOP,
            "customer": {"id": 1, "email": "Ann@Example.com", "phone": "+44 7700 900123"},
            "orders_to_redact": [9001]});
        upstream
            .webhook(Family::Compliance, "customers/redact", "1", &redaction)
            .await;
        let body = json!({"shop_id": 1, "shop_domain": SHOP, "customer": {"id": 1},
                          "orders_requested": [], "data_request": {"id": 901}});
        upstream
            .webhook(Family::Compliance, "customers/data_request", "1", &body)
            .await;
        let answer = answers_to(&broker.bootstrap(), &config.data_requests_topic, 901).await;
        assert_eq!(kinds(&answer[0]), ["redaction"], "{answer:#?}");
        // Then her checkout and her order arrive (late, or in flight on other topics), and Bob
        // abandons too.
        upstream
            .abandoned(1, "ann@example.com", "ann-cart", true)
            .await;
        upstream
            .webhook(
                Family::Orders,
                "orders/create",
                "ann-other-cart",
                &json!({"id": 9001, "checkout_token": null, "email": "ann@example.com",
                        "customer": {"id": 1}}),
            )
            .await;
        upstream
            .abandoned(2, "bob@example.com", "bob-cart", true)
            .await;
        let sent = eventually("Bob's two nudges", WAIT, || async {
            let sent = nudges(broker, &config).await;
            (sent.len() >= 2).then_some(sent)
        })
        .await;
        eventually("Ann's checkout and order dropped", WAIT, || async {
            (service.metric(r#"aftercart_nudges_suppressed_total{reason="redacted"}"#) == 2.0)
                .then_some(())
        })
        .await;
        assert_eq!(
            emails(&sent),
            BTreeSet::from(["bob@example.com".to_string()])
        );
        eventually("no sequence left running", WAIT, || async {
            (service.metric("aftercart_nudges_sequences") == 0.0).then_some(())
        })
        .await;
        // Her email in no output, nor in the changelog: every record scanned.
        for topic in [
            &config.nudges_topic,
            &config.data_requests_topic,
            &config.dead_letter_topic,
            &config.state_topic,
        ] {
            for record in read_topic(&broker.bootstrap(), topic).await {
                let text = String::from_utf8_lossy(&record.value).to_ascii_lowercase();
                assert!(!text.contains("ann@example.com"), "{topic}: {text}");
                assert!(!text.contains("7700"), "{topic}: {text}");
            }
        }
        let events = eventually("Bob's Klaviyo events", WAIT, || async {
            let events = klaviyo.events();
            (events.len() >= 2).then_some(events)
        })
        .await;
        for event in events {
            assert!(!event.to_string().to_ascii_lowercase().contains("ann@"));
        }
        service.stop().await.expect("clean stop");
    }

    pub async fn a_data_request_sent_while_the_service_is_down_is_answered_once_after_its_restart(
        broker: &Broker,
    ) {
        let (_klaviyo, config, service) = ann_with_a_sequence(broker).await;
        let upstream = Upstream {
            config: &config,
            shop: SHOP,
        };
        service.stop().await.expect("clean stop");
        request_data(&upstream, 601, json!({"id": 1})).await;
        let service = TestNudges::start_on(broker, config.clone()).await;
        let answers = answers_to(&broker.bootstrap(), &config.data_requests_topic, 601).await;
        assert_eq!(kinds(&answers[0]), ["sequence"], "{answers:#?}");
        // Restarted once more, then a later request of the same shop (same partition, read
        // after the first): once it is answered, a repeat of the first would be on the topic.
        service.stop().await.expect("clean stop");
        let service = TestNudges::start_on(broker, config.clone()).await;
        request_data(&upstream, 602, json!({"id": 3})).await;
        answers_to(&broker.bootstrap(), &config.data_requests_topic, 602).await;
        let first: Vec<Value> = reports(&broker.bootstrap(), &config.data_requests_topic)
            .await
            .into_iter()
            .filter(|r| r["data_request_id"] == 601)
            .collect();
        assert_eq!(first.len(), 1, "answered once: {first:#?}");
        service.stop().await.expect("clean stop");
    }
}

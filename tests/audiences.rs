//! Audiences service integration tests: the service in-process on a real broker (mock cluster
//! and Tansu), its inputs written as the abandonment service and the ingress write them, and
//! every destination a real local HTTP server (Meta, Google Ads, TikTok, a webhook) or a
//! directory. Hashes are checked against values computed here from hand-normalised strings.

use aftercart_tests::broker_tests;

broker_tests!(
    abandoners_reach_every_destination_in_its_format,
    revoked_consent_and_redaction_remove_people_everywhere,
    a_503_and_a_429_are_retried_and_a_400_is_dead_lettered,
    a_crash_between_send_and_commit_does_not_double_add,
    google_data_manager_partial_failures_are_counted_and_the_rest_resent,
    refused_removals_wait_until_accepted_and_are_never_dead_lettered,
    a_refused_removal_whose_record_is_lost_is_emitted_again_and_reaches_the_platform,
    a_data_request_is_answered_with_the_audiences_and_destinations_holding_the_customer,
);

/// On Tansu only: librdkafka's mock cluster answers ListGroups with "unsupported", so there the
/// check warns and lets the service start; a mock variant could only return without checking.
mod tansu_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_destination_removed_with_removals_pending_is_refused_at_start() {
        let Some(broker) = aftercart_tests::Broker::tansu().await else {
            return;
        };
        super::scenarios::a_destination_removed_with_removals_pending_is_refused_at_start(&broker)
            .await;
    }
}

mod scenarios {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use aftercart_audiences::AudiencesConfig;
    use aftercart_kafka::KafkaSettings;
    use aftercart_shopify::time::{now_ms, rfc3339};
    use aftercart_tests::audiences::{
        test_config, Platforms, Shopper, TestAudiences, Upstream, DATAMANAGER_ACCESS_TOKEN,
        DATAMANAGER_ACCOUNT, DATAMANAGER_LIST, GOOGLE_ACCESS_TOKEN, GOOGLE_CUSTOMER, GOOGLE_JOB,
        GOOGLE_LIST, META_AUDIENCE, SERVICE_ACCOUNT, TIKTOK_ADVERTISER, TIKTOK_AUDIENCE,
        WEBHOOK_SECRET,
    };
    use aftercart_tests::receiver::{Received, Receiver, Reply, Route};
    use aftercart_tests::schemas::assert_valid;
    use aftercart_tests::{eventually, read_topic, unique_prefix, Broker};
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    const SHOP: &str = "jsmith.myshopify.com";
    const WAIT: Duration = Duration::from_secs(60);

    const ANN: Shopper = Shopper {
        id: 7_000_000_000_000_001,
        email: " Ann.Lee+promo@Example.com ",
        phone: Some("+44 7700 900123"),
        first_name: "Ann",
        last_name: "Lee",
        country: "GB",
    };
    const BOB: Shopper = Shopper {
        id: 7_000_000_000_000_002,
        email: "bob@example.com",
        phone: None,
        first_name: "Bob",
        last_name: "Stone",
        country: "US",
    };
    const CARL: Shopper = Shopper {
        id: 7_000_000_000_000_003,
        email: "carl@example.org",
        phone: Some("(613) 555-0100"),
        first_name: "Carl",
        last_name: "Roy",
        country: "CA",
    };

    fn sha(value: &str) -> String {
        Sha256::digest(value.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    struct Stack {
        platforms: Platforms,
        config: AudiencesConfig,
        service: Option<TestAudiences>,
        bootstrap: String,
    }

    impl Stack {
        async fn start(broker: &Broker) -> Stack {
            Stack::start_with(broker, Platforms::start().await).await
        }

        /// Starts the service against `platforms` (routes already set).
        async fn start_with(broker: &Broker, platforms: Platforms) -> Stack {
            Stack::start_flags(broker, platforms, &[]).await
        }

        /// Starts the service against `platforms` with extra `flags`.
        async fn start_flags(broker: &Broker, platforms: Platforms, flags: &[&str]) -> Stack {
            let mut kafka = KafkaSettings::new(broker.bootstrap(), unique_prefix());
            kafka.partitions = 3;
            kafka.properties = broker.client_properties().into();
            let config = test_config(&kafka, &platforms, flags);
            let service = TestAudiences::start_on(broker, config.clone()).await;
            Stack {
                platforms,
                config,
                service: Some(service),
                bootstrap: broker.bootstrap(),
            }
        }

        fn upstream<'a>(&'a self, broker: &'a Broker) -> Upstream<'a> {
            Upstream {
                broker,
                config: &self.config,
                shop: SHOP,
            }
        }

        fn service(&self) -> &TestAudiences {
            self.service.as_ref().expect("running")
        }

        async fn batches(&self) -> Vec<Value> {
            read_topic(&self.bootstrap, &self.config.batches_topic)
                .await
                .iter()
                .map(|r| serde_json::from_slice(&r.value).expect("batch JSON"))
                .collect()
        }
    }

    fn body(request: &Received) -> Value {
        serde_json::from_slice(&request.body).expect("JSON body")
    }

    /// Waits until `receiver` has delivered requests picked by `which` whose bodies mention
    /// every one of `hashes`.
    async fn until_sent(
        what: &str,
        receiver: &Receiver,
        which: impl Fn(&Received) -> bool,
        hashes: &[&String],
    ) {
        eventually(what, WAIT, || async {
            let seen: String = receiver
                .delivered()
                .iter()
                .filter(|r| which(r))
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .collect();
            hashes
                .iter()
                .all(|h| seen.contains(h.as_str()))
                .then_some(())
        })
        .await;
    }

    fn any(_: &Received) -> bool {
        true
    }

    /// Waits until a series of `service` has `value` (metrics follow the answers the local
    /// servers record, a moment later).
    async fn until_metric(service: &TestAudiences, series: &str, value: f64) {
        eventually(series, WAIT, || async {
            (service.metric(series) == value).then_some(())
        })
        .await;
    }

    fn now() -> String {
        rfc3339(now_ms())
    }

    /// What each platform should get for Ann, normalised by hand per its rules.
    struct AnnHashes {
        meta_email: String,
        meta_phone: String,
        google_email: String,
        google_phone: String,
        tiktok_email: String,
        plain_email: String,
        plain_phone: String,
    }

    fn ann_hashes() -> AnnHashes {
        AnnHashes {
            // Meta: trimmed, lower-cased; phone digits with country code, no `+`.
            meta_email: sha("ann.lee+promo@example.com"),
            meta_phone: sha("447700900123"),
            // Google: trimmed, lower-cased (dots and tags only go for gmail); E.164 with `+`.
            google_email: sha("ann.lee+promo@example.com"),
            google_phone: sha("+447700900123"),
            // TikTok: lower-cased, `+tag` stripped.
            tiktok_email: sha("ann.lee@example.com"),
            plain_email: sha("ann.lee+promo@example.com"),
            plain_phone: sha("+447700900123"),
        }
    }

    pub async fn abandoners_reach_every_destination_in_its_format(broker: &Broker) {
        let stack = Stack::start(broker).await;
        let upstream = stack.upstream(broker);
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
        upstream.abandoned(&BOB, false, "tok-bob", &now()).await;
        let p = &stack.platforms;
        let h = ann_hashes();
        until_sent("Meta", &p.meta, any, &[&h.meta_email]).await;
        until_sent("TikTok", &p.tiktok, any, &[&h.tiktok_email]).await;
        until_sent("the webhook", &p.webhook, any, &[&h.plain_email]).await;
        eventually("Google's job run", WAIT, || async {
            p.google
                .delivered()
                .iter()
                .any(|r| r.uri.ends_with(":run"))
                .then_some(())
        })
        .await;

        // Meta: POST to the users edge, bearer token, multi-key schema, Meta-normalised hashes.
        let meta = &p.meta.delivered()[0];
        assert_eq!(meta.method, http::Method::POST);
        assert_eq!(meta.uri, format!("/v25.0/{META_AUDIENCE}/users"));
        assert_eq!(meta.header("authorization"), Some("Bearer meta-test-token"));
        let batch_id = meta
            .header("idempotency-key")
            .expect("idempotency key")
            .to_string();
        assert_eq!(batch_id.len(), 32);
        let meta_body = body(meta);
        assert_eq!(
            meta_body["payload"]["schema"],
            json!(["EMAIL", "PHONE", "FN", "LN", "ZIP", "COUNTRY"])
        );
        assert_eq!(
            meta_body["payload"]["data"],
            json!([[
                h.meta_email,
                h.meta_phone,
                sha("ann"),
                sha("lee"),
                "",
                sha("gb")
            ]])
        );
        assert!(meta_body["session"]["session_id"].is_i64());

        // Google: an access token from the refresh token, then create a job for the user list
        // with EEA consent, add the operation, run it, each with the fresh token.
        let (token, google): (Vec<Received>, Vec<Received>) = p
            .google
            .delivered()
            .into_iter()
            .partition(|r| r.uri == "/token");
        assert_eq!(token.len(), 1, "one token serves the whole batch");
        let form = String::from_utf8_lossy(&token[0].body).into_owned();
        assert!(form.contains("grant_type=refresh_token"), "{form}");
        assert!(
            form.contains("refresh_token=google-refresh-token"),
            "{form}"
        );
        assert!(google
            .iter()
            .all(|r| r.header("authorization") == Some(&*format!("Bearer {GOOGLE_ACCESS_TOKEN}"))));
        let uris: Vec<&str> = google.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                format!("/v26/customers/{GOOGLE_CUSTOMER}/offlineUserDataJobs:create"),
                format!("/v26/{GOOGLE_JOB}:addOperations"),
                format!("/v26/{GOOGLE_JOB}:run"),
            ]
        );
        let job = &body(&google[0])["job"];
        assert_eq!(
            job["customerMatchUserListMetadata"]["userList"],
            format!("customers/{GOOGLE_CUSTOMER}/userLists/{GOOGLE_LIST}")
        );
        assert!(
            job["customerMatchUserListMetadata"]
                .get("consent")
                .is_none(),
            "consent is each person's, not the job's"
        );
        // Ann subscribed through the checkout's box: a single opt-in, which the default
        // mapping reads as both signals granted.
        assert_eq!(
            body(&google[1])["operations"][0]["create"]["consent"],
            json!({"adUserData": "GRANTED", "adPersonalization": "GRANTED"})
        );
        assert_eq!(
            google[0].header("developer-token"),
            Some("google-dev-token")
        );
        let identifiers = &body(&google[1])["operations"][0]["create"]["userIdentifiers"];
        let identifiers = identifiers.as_array().expect("identifiers");
        assert!(identifiers.contains(&json!({"hashedEmail": h.google_email})));
        assert!(identifiers.contains(&json!({"hashedPhoneNumber": h.google_phone})));

        // Google Data Manager: a token for the service account's signed JWT (scope
        // datamanager), then one ingest naming the destination, consent, terms and HEX hashes.
        until_sent(
            "Data Manager",
            &p.datamanager,
            |r| r.uri.ends_with(":ingest"),
            &[&h.google_email],
        )
        .await;
        let (token, ingests): (Vec<Received>, Vec<Received>) = p
            .datamanager
            .delivered()
            .into_iter()
            .partition(|r| r.uri == "/token");
        let form = String::from_utf8_lossy(&token[0].body).into_owned();
        assert!(
            form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
            "{form}"
        );
        let jwt = form.split("assertion=").nth(1).expect("an assertion");
        let claims = jwt.split('.').nth(1).expect("JWT claims");
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                .expect("base64url claims"),
        )
        .unwrap();
        assert_eq!(claims["iss"], SERVICE_ACCOUNT);
        assert_eq!(
            claims["scope"],
            "https://www.googleapis.com/auth/datamanager"
        );
        let ingest = &ingests[0];
        assert_eq!(ingest.uri, "/v1/audienceMembers:ingest");
        assert_eq!(
            ingest.header("authorization"),
            Some(&*format!("Bearer {DATAMANAGER_ACCESS_TOKEN}"))
        );
        assert!(ingest.header("developer-token").is_none());
        let dm = body(ingest);
        assert_eq!(
            dm["destinations"],
            json!([{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": DATAMANAGER_ACCOUNT},
                    "productDestinationId": DATAMANAGER_LIST}])
        );
        assert_eq!(dm["encoding"], "HEX");
        assert!(dm.get("consent").is_none(), "consent is each member's");
        // The `dm` destination maps only confirmed opt-ins to personalisation: Ann's checkbox
        // (a single opt-in) grants the use of her data, not personalised ads.
        assert_eq!(
            dm["audienceMembers"][0]["consent"],
            json!({"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_DENIED"})
        );
        assert_eq!(
            dm["termsOfService"]["customerMatchTermsOfServiceStatus"],
            "ACCEPTED"
        );
        assert_eq!(dm["audienceMembers"].as_array().unwrap().len(), 1);
        let identifiers = dm["audienceMembers"][0]["userData"]["userIdentifiers"]
            .as_array()
            .expect("identifiers")
            .clone();
        assert!(identifiers.contains(&json!({"emailAddress": h.google_email})));
        assert!(identifiers.contains(&json!({"phoneNumber": h.google_phone})));

        // TikTok: segment mapping, `+tag` stripped from the email.
        let tiktok = &p.tiktok.delivered()[0];
        assert_eq!(tiktok.uri, "/open_api/v1.3/segment/mapping/");
        assert_eq!(tiktok.header("access-token"), Some("tiktok-test-token"));
        let tiktok_body = body(tiktok);
        assert_eq!(tiktok_body["action"], "add");
        assert_eq!(tiktok_body["advertiser_ids"], json!([TIKTOK_ADVERTISER]));
        assert_eq!(tiktok_body["batch_data"][0][0]["id"], h.tiktok_email);
        assert_eq!(
            tiktok_body["batch_data"][0][0]["audience_ids"],
            json!([TIKTOK_AUDIENCE])
        );

        // The webhook: signed like Shopify signs, the batch id as the event id, per the schema.
        let hook = &p.webhook.delivered()[0];
        let expected =
            aftercart_shopify::sign(&aftercart_shopify::Secret::new(WEBHOOK_SECRET), &hook.body);
        assert_eq!(
            hook.header("x-aftercart-hmac-sha256"),
            Some(expected.as_str())
        );
        let hook_body = body(hook);
        assert_valid("aftercart/audience-webhook.schema.json", &hook_body);
        assert_eq!(hook.event_id(), hook_body["batch_id"]);
        assert_eq!(hook_body["op"], "add");
        assert_eq!(hook_body["members"][0]["email_sha256"], h.plain_email);
        assert_eq!(hook_body["members"][0]["phone_sha256"], h.plain_phone);
        assert_eq!(hook_body["members"][0]["customer_id"], ANN.id);

        // Files: a snapshot with Ann and one delta.
        let snapshot = p.dir.join("abandoned-checkouts/snapshot.csv");
        let text = eventually("the snapshot", WAIT, || async {
            std::fs::read_to_string(&snapshot).ok()
        })
        .await;
        assert_eq!(text.lines().count(), 2, "a header and Ann: {text}");
        assert!(text.contains(&h.plain_email));

        // Bob gave no consent: no destination ever heard of him; the batches follow the schema.
        let everything: String = [&p.meta, &p.google, &p.datamanager, &p.tiktok, &p.webhook]
            .iter()
            .flat_map(|r| r.received())
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        assert!(!everything.contains(&sha("bob@example.com")));
        for batch in stack.batches().await {
            assert_valid("aftercart/audience-batches.schema.json", &batch);
        }
        let members = r#"aftercart_audiences_members{audience="abandoned-checkouts"}"#;
        until_metric(stack.service(), members, 1.0).await;
        let exported = r#"aftercart_audiences_records_exported_total{destination="meta",op="add",outcome="accepted"}"#;
        until_metric(stack.service(), exported, 1.0).await;
    }

    pub async fn revoked_consent_and_redaction_remove_people_everywhere(broker: &Broker) {
        let stack = Stack::start(broker).await;
        let upstream = stack.upstream(broker);
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
        upstream.abandoned(&CARL, true, "tok-carl", &now()).await;
        let p = &stack.platforms;
        let ann = ann_hashes();
        let carl_meta = sha("carl@example.org");
        until_sent("Meta adds", &p.meta, any, &[&ann.meta_email, &carl_meta]).await;

        upstream.consent(&ANN, "unsubscribed", &now()).await;
        upstream.redact(&CARL).await;

        // Meta: a DELETE on the users edge; Google: remove operations in a job; TikTok: a
        // delete; the webhook: op remove. Each with both people's hashes, by its own rules.
        let carl = sha("carl@example.org");
        let meta_delete = |r: &Received| r.method == http::Method::DELETE;
        until_sent(
            "Meta removals",
            &p.meta,
            meta_delete,
            &[&ann.meta_email, &carl],
        )
        .await;
        let google_remove = |r: &Received| {
            r.uri.ends_with(":addOperations") && body(r)["operations"][0].get("remove").is_some()
        };
        until_sent(
            "Google removals",
            &p.google,
            google_remove,
            &[&ann.google_email, &carl],
        )
        .await;
        let dm_remove = |r: &Received| r.uri == "/v1/audienceMembers:remove";
        until_sent(
            "Data Manager removals",
            &p.datamanager,
            dm_remove,
            &[&ann.google_email, &carl],
        )
        .await;
        for removal in p.datamanager.delivered().iter().filter(|r| dm_remove(r)) {
            let removal = body(removal);
            assert!(
                removal.get("consent").is_none(),
                "a removal states no consent"
            );
            assert_eq!(
                removal["destinations"][0]["productDestinationId"],
                DATAMANAGER_LIST
            );
        }
        let tiktok_delete = |r: &Received| body(r)["action"] == "delete";
        until_sent(
            "TikTok removals",
            &p.tiktok,
            tiktok_delete,
            &[&ann.tiktok_email, &carl],
        )
        .await;
        let hook_remove = |r: &Received| body(r)["op"] == "remove";
        until_sent(
            "webhook removals",
            &p.webhook,
            hook_remove,
            &[&ann.plain_email, &carl],
        )
        .await;
        // Files: the snapshot is empty again.
        let snapshot = p.dir.join("abandoned-checkouts/snapshot.csv");
        eventually("an empty snapshot", WAIT, || async {
            let text = std::fs::read_to_string(&snapshot).ok()?;
            (text.lines().count() == 1).then_some(())
        })
        .await;
        // State: Carl is deleted (a tombstone is his key's last changelog record).
        let carl_key = format!("p/{SHOP}/c/{}", CARL.id);
        eventually("Carl's tombstone", WAIT, || async {
            let state = read_topic(&stack.bootstrap, &stack.config.state_topic).await;
            let last = state.iter().rev().find(|r| r.key_str() == carl_key)?;
            last.value.is_empty().then_some(())
        })
        .await;
        let members = r#"aftercart_audiences_members{audience="abandoned-checkouts"}"#;
        until_metric(stack.service(), members, 0.0).await;
    }

    pub async fn a_503_and_a_429_are_retried_and_a_400_is_dead_lettered(broker: &Broker) {
        let platforms = Platforms::start().await;
        // Meta fails twice, the second time asking for a one-second wait; TikTok refuses.
        platforms.meta.route(std::sync::Arc::new({
            let calls = std::sync::atomic::AtomicUsize::new(0);
            move |_, _| match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Some(Reply::status(503)),
                1 => Some(Reply::status(429).header("retry-after", "1")),
                _ => None,
            }
        }));
        platforms.tiktok.route(std::sync::Arc::new(|_, _| {
            Some(Reply::status(400).body(r#"{"code":40002,"message":"audience not found"}"#))
        }));
        let mut stack = Stack::start_with(broker, platforms).await;
        let config = stack.config.clone();
        let platforms = &stack.platforms;
        let upstream = stack.upstream(broker);
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;

        eventually("Meta's third try", WAIT, || async {
            (!platforms.meta.delivered().is_empty()).then_some(())
        })
        .await;
        let tries = platforms.meta.received();
        assert_eq!(tries.len(), 3);
        let keys: BTreeSet<&str> = tries
            .iter()
            .map(|r| r.header("idempotency-key").unwrap_or_default())
            .collect();
        assert_eq!(keys.len(), 1, "every retry carries the same batch id");
        assert!(tries.iter().all(|r| r.body == tries[0].body));
        assert!(
            tries[2].at - tries[1].at >= Duration::from_millis(950),
            "Retry-After: 1 was honoured ({:?})",
            tries[2].at - tries[1].at
        );
        // Counted once the exporter has read the answer the receiver already recorded.
        let retries = r#"aftercart_audiences_export_retries_total{destination="meta"}"#;
        until_metric(stack.service(), retries, 2.0).await;

        // TikTok's refusal: dead-lettered with its answer, once, and nothing else held up.
        let letter = eventually("TikTok's dead letter", WAIT, || async {
            read_topic(&broker.bootstrap(), &config.dead_letter_topic)
                .await
                .into_iter()
                .next()
        })
        .await;
        assert_eq!(
            letter.header("aftercart-dead-letter-reason"),
            Some("http_status_400")
        );
        assert!(letter
            .header("aftercart-http-response")
            .is_some_and(|r| r.contains("40002")));
        let batch: Value = serde_json::from_slice(&letter.value).expect("the batch");
        assert_eq!(batch["destination"], "tiktok");
        assert_eq!(platforms.tiktok.received().len(), 1, "a 400 is not retried");
        let refused = r#"aftercart_audiences_batches_total{destination="tiktok",op="add",outcome="dead_lettered"}"#;
        until_metric(stack.service(), refused, 1.0).await;
        until_sent(
            "the webhook",
            &platforms.webhook,
            any,
            &[&ann_hashes().plain_email],
        )
        .await;
        stack
            .service
            .take()
            .expect("running")
            .stop()
            .await
            .expect("clean stop");
    }

    pub async fn a_crash_between_send_and_commit_does_not_double_add(broker: &Broker) {
        let platforms = Platforms::start().await;
        // Meta takes the first batch but answers too late: the service dies before it hears.
        platforms.meta.route(std::sync::Arc::new({
            let calls = std::sync::atomic::AtomicUsize::new(0);
            move |_, _| {
                (calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0)
                    .then(|| Reply::status(200).body("{}").after(Duration::from_secs(3)))
            }
        }));
        let mut stack = Stack::start_with(broker, platforms).await;
        let config = stack.config.clone();
        let platforms = &stack.platforms;
        let upstream = stack.upstream(broker);
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
        eventually("Meta got the batch", WAIT, || async {
            (!platforms.meta.received().is_empty()).then_some(())
        })
        .await;
        stack.service.take().expect("running").crash().await;

        stack.service = Some(TestAudiences::start_on(broker, config.clone()).await);
        eventually("Meta got the batch again", WAIT, || async {
            (platforms.meta.received().len() >= 2).then_some(())
        })
        .await;
        // Give a wrong second batch time to show up.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let requests = platforms.meta.received();
        assert_eq!(requests.len(), 2, "sent once, re-sent once after the crash");
        assert_eq!(requests[0].body, requests[1].body);
        assert_eq!(
            requests[0].header("idempotency-key"),
            requests[1].header("idempotency-key"),
            "the re-send carries the same batch id: the platform counts it once"
        );
        // At the source: one add batch per destination for Ann, before and after the crash.
        let ann = format!("c/{}", ANN.id);
        let batches: Vec<Value> = read_topic(&broker.bootstrap(), &config.batches_topic)
            .await
            .iter()
            .map(|r| serde_json::from_slice(&r.value).expect("batch"))
            .collect();
        for destination in ["meta", "google", "tiktok", "hook", "files"] {
            let adds = batches
                .iter()
                .filter(|b| b["destination"] == destination && b["op"] == "add")
                .filter(|b| b["members"].to_string().contains(&ann))
                .count();
            assert_eq!(adds, 1, "{destination}: Ann is added by exactly one batch");
        }
        // Every other destination took her once (one distinct batch id each).
        for (name, receiver) in [
            ("tiktok", &platforms.tiktok),
            ("webhook", &platforms.webhook),
        ] {
            let ids: BTreeSet<String> = receiver
                .delivered()
                .iter()
                .map(|r| {
                    r.header("idempotency-key")
                        .or(r.header("x-aftercart-event-id"))
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            assert_eq!(ids.len(), 1, "{name}: {ids:?}");
        }
        stack
            .service
            .take()
            .expect("running")
            .stop()
            .await
            .expect("clean stop");
    }

    pub async fn google_data_manager_partial_failures_are_counted_and_the_rest_resent(
        broker: &Broker,
    ) {
        let platforms = Platforms::start().await;
        // The first ingest is refused naming its first member (as Google's BadRequest
        // fieldViolations do); later ones are accepted with a warning about their first member.
        let ingests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = ingests.clone();
        platforms.datamanager.route(std::sync::Arc::new(move |_, uri: &str| {
            if uri == "/token" {
                return Some(Reply::status(200).body(&format!(
                    r#"{{"access_token":"{DATAMANAGER_ACCESS_TOKEN}","expires_in":3599}}"#
                )));
            }
            if !uri.ends_with(":ingest") {
                return None;
            }
            Some(if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Reply::status(400).body(r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"Invalid argument","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"audience_members[0].user_data.user_identifiers[0]","description":"Invalid hashed value"}]}]}}"#)
            } else {
                Reply::status(200).body(r#"{"requestId":"dm-2","fieldWarnings":[{"fieldPath":"audienceMembers[0].userData.userIdentifiers[1]","reason":"INVALID_PHONE"}]}"#)
            })
        }));
        let stack = Stack::start_with(broker, platforms).await;
        let upstream = stack.upstream(broker);
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
        upstream.abandoned(&CARL, true, "tok-carl", &now()).await;
        let errors = r#"aftercart_audiences_export_member_errors_total{destination="dm"}"#;
        let p = &stack.platforms;
        eventually("the refusal and what followed it", WAIT, || async {
            (stack.service().metric(errors) >= 2.0).then_some(())
        })
        .await;
        let sent: Vec<Value> = p
            .datamanager
            .received()
            .iter()
            .filter(|r| r.uri.ends_with(":ingest"))
            .map(body)
            .collect();
        let members = |b: &Value| b["audienceMembers"].as_array().unwrap().len();
        if members(&sent[0]) == 2 {
            // Both in one batch: sent again without the member Google named, and accepted.
            assert_eq!(members(&sent[1]), 1, "{sent:#?}");
            assert_eq!(sent[1]["audienceMembers"][0], sent[0]["audienceMembers"][1]);
        } else {
            // One each: the refused batch named its only member, so it is dead-lettered whole;
            // the other went through with a warning counted.
            eventually("the refused batch's dead letter", WAIT, || async {
                let dead = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
                (!dead.is_empty()).then_some(())
            })
            .await;
        }
        assert!(
            stack.service().metric(errors) >= 2.0,
            "the refusal and the warning are counted"
        );
    }

    /// Removals of Ann in the batches topic for `destination`: (partition, offset) of each.
    async fn removals_of_ann(stack: &Stack, destination: &str) -> Vec<(i32, i64)> {
        let ann = format!("c/{}", ANN.id);
        read_topic(&stack.bootstrap, &stack.config.batches_topic)
            .await
            .iter()
            .filter(|r| {
                let batch: Value = serde_json::from_slice(&r.value).unwrap_or_default();
                batch["destination"] == destination
                    && batch["op"] == "remove"
                    && batch["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["person"] == ann.as_str()))
            })
            .map(|r| (r.partition, r.offset))
            .collect()
    }

    /// Commits `offset` for `group` on the batches topic's `partition`, as a member of the
    /// group (the exporters are stopped); false while it is not assigned the partition yet.
    async fn commit_for(stack: &Stack, group: &str, partition: i32, offset: i64) -> bool {
        let (bootstrap, group) = (stack.bootstrap.clone(), group.to_string());
        let topic = stack.config.batches_topic.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                // Let go of soon, should the broker miss it leaving.
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .set("log_level", "3")
                .create()
                .expect("offset writer");
            consumer.subscribe(&[topic.as_str()]).expect("subscribed");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                // Polled only to join; the records it may return are not used.
                let _ = consumer.poll(Duration::from_millis(100));
                let owned = consumer
                    .assignment()
                    .is_ok_and(|a| a.find_partition(&topic, partition).is_some());
                if owned {
                    let mut list = rdkafka::TopicPartitionList::new();
                    list.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset))
                        .expect("offset");
                    let committed = consumer.commit(&list, CommitMode::Sync).is_ok();
                    // Leaves the group so that the exporter joins it at once.
                    consumer.unsubscribe();
                    let _ = consumer.poll(Duration::from_millis(100));
                    return committed;
                }
            }
            false
        })
        .await
        .expect("offset writer does not panic")
    }

    /// The batches topic's retention takes a removal Meta refused while the exporter waits on
    /// it, and the exporter restarts past it (as `auto.offset.reset=earliest` would resume at
    /// the first record left). The engine kept the removal and emitted it again: the copy is
    /// what Meta finally accepts.
    pub async fn a_refused_removal_whose_record_is_lost_is_emitted_again_and_reaches_the_platform(
        broker: &Broker,
    ) {
        let platforms = Platforms::start().await;
        let refusing = Arc::new(AtomicBool::new(false));
        platforms.meta.route(Arc::new({
            let refusing = refusing.clone();
            let calls = AtomicUsize::new(0);
            move |method: &http::Method, _: &str| match *method == http::Method::DELETE {
                true => refusal(&refusing, &calls),
                false => None,
            }
        }));
        let mut stack =
            Stack::start_flags(broker, platforms, &["--audiences-removal-reemit-after=2s"]).await;
        let config = stack.config.clone();
        let ann = ann_hashes();
        {
            let upstream = stack.upstream(broker);
            upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
            let accepted = r#"aftercart_audiences_batches_total{destination="meta",op="add",outcome="accepted"}"#;
            until_metric(stack.service(), accepted, 1.0).await;
            refusing.store(true, Ordering::SeqCst);
            upstream.redact(&ANN).await;
        }
        let reemitted = r#"aftercart_audiences_removals_reemitted_total{destination="meta"}"#;
        until_metric(stack.service(), reemitted, 1.0).await;
        let first = eventually("the removal and a copy in the topic", WAIT, || async {
            let found = removals_of_ann(&stack, "meta").await;
            (found.len() >= 2).then(|| found[0])
        })
        .await;
        let refused = stack
            .platforms
            .meta
            .received()
            .iter()
            .filter(|r| r.method == http::Method::DELETE && r.answered >= 400)
            .count();
        assert!(refused >= 1, "Meta refused the removal");

        stack
            .service
            .take()
            .expect("running")
            .stop()
            .await
            .expect("clean stop");
        // The first record is gone: the exporter resumes after it.
        let (partition, offset) = first;
        let group = config.exporter_group("meta");
        eventually("the exporter group is empty", WAIT, || async {
            commit_for(&stack, &group, partition, offset + 1)
                .await
                .then_some(())
        })
        .await;
        refusing.store(false, Ordering::SeqCst);
        stack.service = Some(TestAudiences::start_on(broker, config.clone()).await);

        let p = &stack.platforms;
        eventually("Meta accepted Ann's removal", WAIT, || async {
            p.meta
                .received()
                .iter()
                .any(|r| {
                    r.method == http::Method::DELETE
                        && r.answered < 400
                        && String::from_utf8_lossy(&r.body).contains(ann.meta_email.as_str())
                })
                .then_some(())
        })
        .await;
        let service = stack.service();
        // The first copy Meta accepts, or a later one (copies are emitted every 2 s meanwhile).
        let accepted = r#"aftercart_audiences_batches_total{destination="meta",op="remove",outcome="accepted"}"#;
        eventually(accepted, WAIT, || async {
            (service.metric(accepted) >= 1.0).then_some(())
        })
        .await;
        let dead = r#"aftercart_audiences_batches_total{destination="meta",op="remove",outcome="dead_lettered"}"#;
        assert_eq!(service.metric(dead), 0.0);
        let letters = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
        assert!(
            letters.is_empty(),
            "nothing dead-lettered: {}",
            letters.len()
        );
        stack
            .service
            .take()
            .expect("running")
            .stop()
            .await
            .expect("clean stop");
    }

    /// While `refusing` is set, answers in turn 500, 429 (one second) and 400: a failure, a
    /// wait, and a refusal an addition would be dead-lettered for.
    fn refusal(refusing: &Arc<AtomicBool>, calls: &AtomicUsize) -> Option<Reply> {
        if !refusing.load(Ordering::SeqCst) {
            return None;
        }
        Some(match calls.fetch_add(1, Ordering::SeqCst) % 3 {
            0 => Reply::status(500),
            1 => Reply::status(429).header("retry-after", "1"),
            _ => Reply::status(400).body(r#"{"error":{"code":100,"message":"refused"}}"#),
        })
    }

    pub async fn refused_removals_wait_until_accepted_and_are_never_dead_lettered(broker: &Broker) {
        let platforms = Platforms::start().await;
        let refusing = Arc::new(AtomicBool::new(false));
        let route = |pick: fn(&http::Method, &str) -> Option<Option<Reply>>| -> Route {
            let refusing = refusing.clone();
            let calls = AtomicUsize::new(0);
            Arc::new(
                move |method: &http::Method, uri: &str| match pick(method, uri) {
                    Some(fixed) => fixed,
                    None => refusal(&refusing, &calls),
                },
            )
        };
        // Only removals are refused: Meta's DELETE, Data Manager's :remove, and everything
        // else the others get once the additions were confirmed (the flag is set after).
        platforms.meta.route(route(|method, _| {
            (*method != http::Method::DELETE).then_some(None)
        }));
        platforms.datamanager.route(route(|_, uri| match uri {
            "/token" => Some(Some(Reply::status(200).body(&format!(
                r#"{{"access_token":"{DATAMANAGER_ACCESS_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#
            )))),
            _ if uri.ends_with(":remove") => None,
            _ => Some(None),
        }));
        platforms.google.route(route(|_, uri| match uri {
            "/token" => Some(Some(Reply::status(200).body(&format!(
                r#"{{"access_token":"{GOOGLE_ACCESS_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#
            )))),
            _ if uri.ends_with(":create") => Some(Some(
                Reply::status(200).body(&format!(r#"{{"resourceName":"{GOOGLE_JOB}"}}"#)),
            )),
            _ => None,
        }));
        platforms.tiktok.route(route(|_, _| None));
        platforms.webhook.route(route(|_, _| None));
        // Additions would be given up after two seconds: removals must outlast that.
        let stack = Stack::start_flags(
            broker,
            platforms,
            &["--audiences-export-max-retry-duration=2s"],
        )
        .await;
        let upstream = stack.upstream(broker);
        let p = &stack.platforms;
        let ann = ann_hashes();
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
        until_sent("Meta adds", &p.meta, any, &[&ann.meta_email]).await;
        until_sent(
            "Data Manager adds",
            &p.datamanager,
            any,
            &[&ann.google_email],
        )
        .await;
        until_sent("Google adds", &p.google, any, &[&ann.google_email]).await;
        until_sent("TikTok adds", &p.tiktok, any, &[&ann.tiktok_email]).await;
        until_sent("webhook adds", &p.webhook, any, &[&ann.plain_email]).await;
        // Sent is not yet accepted (Google's job still has its run to call): refusing before
        // every addition is confirmed would refuse an addition too, and past its budget that
        // one is rightly dead-lettered (seen once on a loaded machine).
        let service = stack.service();
        for destination in ["meta", "dm", "google", "tiktok", "hook"] {
            let accepted = format!(
                r#"aftercart_audiences_batches_total{{destination="{destination}",op="add",outcome="accepted"}}"#
            );
            until_metric(service, &accepted, 1.0).await;
        }

        refusing.store(true, Ordering::SeqCst);
        upstream.redact(&ANN).await;
        let age = r#"aftercart_audiences_pending_removal_age_seconds{destination="meta"}"#;
        eventually(
            "a removal waiting past the additions' budget",
            WAIT,
            || async {
                let refused =
                    |r: &Receiver| r.received().iter().filter(|q| q.answered >= 400).count();
                let all_refused = [&p.meta, &p.datamanager, &p.google, &p.tiktok, &p.webhook]
                    .iter()
                    .all(|r| refused(r) >= 4);
                (all_refused && service.metric(age) >= 3.0).then_some(())
            },
        )
        .await;
        for destination in ["meta", "dm", "google", "tiktok", "hook"] {
            let pending =
                format!(r#"aftercart_audiences_pending_removals{{destination="{destination}"}}"#);
            aftercart_tests::settles_at(&pending, 1.0, |s| service.metric(s)).await;
        }

        refusing.store(false, Ordering::SeqCst);
        type Pick = fn(&Received) -> bool;
        let removals: [(&str, &Receiver, Pick, &String); 5] = [
            (
                "Meta removal",
                &p.meta,
                |r| r.method == http::Method::DELETE,
                &ann.meta_email,
            ),
            (
                "Data Manager removal",
                &p.datamanager,
                |r| r.uri.ends_with(":remove"),
                &ann.google_email,
            ),
            (
                "Google removal",
                &p.google,
                |r| {
                    r.uri.ends_with(":addOperations")
                        && body(r)["operations"][0].get("remove").is_some()
                },
                &ann.google_email,
            ),
            (
                "TikTok removal",
                &p.tiktok,
                |r| body(r)["action"] == "delete",
                &ann.tiktok_email,
            ),
            (
                "webhook removal",
                &p.webhook,
                |r| body(r)["op"] == "remove",
                &ann.plain_email,
            ),
        ];
        for (what, receiver, pick, hash) in removals {
            until_sent(what, receiver, pick, &[hash]).await;
        }
        for destination in ["meta", "dm", "google", "tiktok", "hook"] {
            let accepted = format!(
                r#"aftercart_audiences_batches_total{{destination="{destination}",op="remove",outcome="accepted"}}"#
            );
            until_metric(service, &accepted, 1.0).await;
            let pending =
                format!(r#"aftercart_audiences_pending_removals{{destination="{destination}"}}"#);
            until_metric(service, &pending, 0.0).await;
            let dead = format!(
                r#"aftercart_audiences_batches_total{{destination="{destination}",op="remove",outcome="dead_lettered"}}"#
            );
            assert_eq!(service.metric(&dead), 0.0, "{destination}");
        }
        let letters = read_topic(&stack.bootstrap, &stack.config.dead_letter_topic).await;
        assert!(
            letters.is_empty(),
            "nothing dead-lettered: {}",
            letters.len()
        );
        // A later abandonment of Ann is kept out; Bob's, after it in the same shop's partition,
        // shows it was processed.
        upstream
            .abandoned(&ANN, true, "tok-ann-later", &now())
            .await;
        upstream.abandoned(&BOB, true, "tok-bob", &now()).await;
        let bob = sha("bob@example.com");
        until_sent("Bob at Meta", &p.meta, any, &[&bob]).await;
        let meta = p.meta.delivered();
        let removed_at = meta
            .iter()
            .position(|r| r.method == http::Method::DELETE)
            .expect("the removal");
        assert!(
            meta[removed_at + 1..]
                .iter()
                .all(|r| !String::from_utf8_lossy(&r.body).contains(ann.meta_email.as_str())),
            "Ann was not added again after her redaction"
        );
        let kept_out = "aftercart_audiences_redacted_facts_total";
        eventually("the later fact counted as kept out", WAIT, || async {
            (service.metric(kept_out) >= 1.0).then_some(())
        })
        .await;

        // The redacted person's email and phone appear in no batch and no redaction marker
        // (markers are keyed by pseudonyms; the markers exist: a later fact is kept out).
        let plain = [
            "ann.lee+promo@example.com",
            "Ann.Lee",
            "7700 900123",
            "7700900123",
        ];
        let batches = read_topic(&stack.bootstrap, &stack.config.batches_topic).await;
        let state = read_topic(&stack.bootstrap, &stack.config.state_topic).await;
        let markers: Vec<_> = state
            .iter()
            .filter(|r| r.key_str().starts_with("r/"))
            .collect();
        assert!(markers.len() >= 3, "id, email and phone markers");
        for record in batches.iter().chain(markers.iter().copied()) {
            let text = format!(
                "{} {}",
                record.key_str(),
                String::from_utf8_lossy(&record.value)
            );
            for value in plain {
                assert!(!text.contains(value), "{value:?} in {}", record.topic);
            }
        }
    }

    pub async fn a_destination_removed_with_removals_pending_is_refused_at_start(broker: &Broker) {
        let platforms = Platforms::start().await;
        let refusing = Arc::new(AtomicBool::new(false));
        let calls = AtomicUsize::new(0);
        let refuse = refusing.clone();
        platforms
            .tiktok
            .route(Arc::new(move |_: &http::Method, _: &str| {
                refusal(&refuse, &calls)
            }));
        let mut stack = Stack::start_with(broker, platforms).await;
        let upstream = stack.upstream(broker);
        let ann = ann_hashes();
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
        let p = &stack.platforms;
        until_sent("TikTok adds", &p.tiktok, any, &[&ann.tiktok_email]).await;
        refusing.store(true, Ordering::SeqCst);
        upstream.redact(&ANN).await;
        let pending = r#"aftercart_audiences_pending_removals{destination="tiktok"}"#;
        until_metric(stack.service(), pending, 1.0).await;
        stack
            .service
            .take()
            .expect("running")
            .stop()
            .await
            .expect("clean stop");

        // The operator takes TikTok out of the configuration: its removal would never be sent.
        let mut config = stack.config.clone();
        config.destinations.remove("tiktok");
        config.rules.destinations.remove("tiktok");
        for audience in &mut config.rules.audiences {
            audience.destinations.retain(|d| d != "tiktok");
        }
        let registry = prometheus::Registry::new();
        let health = aftercart_runtime::Health::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let refused = tokio::time::timeout(
            WAIT,
            aftercart_audiences::serve(&config, &registry, &health, stop.clone()),
        )
        .await
        .expect("refused, not running");
        let Err(error) = refused else {
            panic!("started with a removal pending for a removed destination");
        };
        assert!(
            matches!(error, aftercart_audiences::ServeError::PendingRemovals(_)),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("tiktok (1 people)"), "{message}");
        assert!(message.contains("Put each back"), "{message}");
        assert!(
            !message.contains("example.com"),
            "no personal data: {message}"
        );
        // A batches topic the broker cannot describe is a check that failed, not one that
        // found no removals left.
        let mut undescribed = config.clone();
        undescribed.batches_topic = format!("{}-missing", config.batches_topic);
        let checked =
            tokio::task::spawn_blocking(move || aftercart_audiences::orphans::find(&undescribed))
                .await
                .expect("check");
        assert!(
            matches!(
                checked,
                Err(aftercart_audiences::orphans::OrphanError::Kafka(
                    rdkafka::error::KafkaError::MetadataFetch(
                        rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                ))
            ),
            "{checked:?}"
        );
    }

    /// The reports on the data requests topic for `request`, each checked against the schema.
    async fn reports(stack: &Stack, request: u64) -> Vec<Value> {
        read_topic(&stack.bootstrap, &stack.config.data_requests_topic)
            .await
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.value).expect("report JSON"))
            .inspect(|report| assert_valid("aftercart/data-requests.schema.json", report))
            .filter(|report| report["data_request_id"] == request)
            .collect()
    }

    /// `customers/data_request` `request` for `shopper`.
    async fn ask(upstream: &Upstream<'_>, shopper: &Shopper, request: u64) {
        let body = json!({"shop_id": 954889, "shop_domain": SHOP, "orders_requested": [],
               "customer": {"id": shopper.id, "email": shopper.email, "phone": shopper.phone},
               "data_request": {"id": request}});
        let family = aftercart_shopify::Family::Compliance;
        let key = shopper.id.to_string();
        upstream
            .webhook(family, "customers/data_request", &key, &body)
            .await;
    }

    pub async fn a_data_request_is_answered_with_the_audiences_and_destinations_holding_the_customer(
        broker: &Broker,
    ) {
        let mut stack = Stack::start(broker).await;
        let upstream = stack.upstream(broker);
        upstream.abandoned(&ANN, true, "tok-ann", &now()).await;
        upstream.abandoned(&BOB, true, "tok-bob", &now()).await;
        let p = &stack.platforms;
        let ann = ann_hashes();
        let bob_meta = sha("bob@example.com");
        until_sent("Meta adds", &p.meta, any, &[&ann.meta_email, &bob_meta]).await;
        ask(&upstream, &ANN, 4242).await;
        let report = eventually("Ann's report", WAIT, || async {
            reports(&stack, 4242).await.into_iter().next()
        })
        .await;
        assert_eq!(report["service"], "audiences");
        assert_eq!(report["customer_id"], ANN.id);
        let holdings = report["holdings"].as_array().expect("holdings");
        assert_eq!(holdings.len(), 1, "{report}");
        let held = &holdings[0];
        assert_eq!(held["kind"], "person");
        let data = &held["data"];
        assert_eq!(data["audiences"], json!(["abandoned-checkouts"]));
        let destinations: BTreeSet<&str> = data["destinations"]["abandoned-checkouts"]
            .as_array()
            .expect("destinations holding her")
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        let all = ["dm", "files", "google", "hook", "meta", "tiktok"];
        assert_eq!(destinations, all.into_iter().collect());
        assert_eq!(data["pending_removals"], json!({}));
        assert_eq!(
            data["contact_fields"],
            json!(["country", "email", "first_name", "last_name", "phone"])
        );
        // Nothing of anyone else: Bob shares the shop, the audience and every destination.
        let text = report.to_string().to_ascii_lowercase();
        assert!(!text.contains("bob@example.com"), "{text}");
        assert!(!text.contains(&BOB.id.to_string()), "{text}");

        // A request read while the service is down is answered once it is back; the one
        // already answered is not answered again.
        stack
            .service
            .take()
            .expect("running")
            .stop()
            .await
            .expect("clean stop");
        ask(&stack.upstream(broker), &BOB, 4343).await;
        stack.service = Some(TestAudiences::start_on(broker, stack.config.clone()).await);
        let report = eventually("Bob's report", WAIT, || async {
            reports(&stack, 4343).await.into_iter().next()
        })
        .await;
        let text = report.to_string().to_ascii_lowercase();
        assert!(text.contains("bob@example.com"), "{text}");
        assert!(!text.contains("ann.lee"), "{text}");
        // One partition holds the shop, in order: Ann's request came before Bob's, so a second
        // answer to it would be there by now.
        assert_eq!(reports(&stack, 4242).await.len(), 1, "answered once");
        assert_eq!(reports(&stack, 4343).await.len(), 1, "answered once");
    }
}

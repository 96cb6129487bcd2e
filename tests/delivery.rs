//! Delivery forwarder integration tests: records produced to a real broker (mock cluster and
//! Tansu) are POSTed to a local receiver; retries, dead letters, committed offsets and crashes
//! are checked from the outside (the receiver's log, the dead-letter topic, the group's offsets).

use aftercart_tests::broker_tests;

broker_tests!(
    records_arrive_exactly_as_produced_signed_and_with_their_event_ids,
    a_503_is_retried_and_the_offset_is_committed_only_after_the_200,
    a_400_lands_in_the_dead_letter_topic_with_its_status_and_reason,
    a_shutdown_while_retrying_is_prompt_and_commits_nothing_undelivered,
    a_crash_redelivers_only_uncommitted_records_and_skips_none,
);

mod scenarios {
    use std::collections::{BTreeMap, HashMap};
    use std::time::{Duration, Instant};

    use aftercart_shopify::{Secret, Verifier};
    use aftercart_tests::delivery::{
        committed, create_topics, produce, test_config, Input, TestForwarder, SECRET,
    };
    use aftercart_tests::receiver::{Receiver, Reply};
    use aftercart_tests::schemas::assert_valid;
    use aftercart_tests::{eventually, read_topic, Broker};

    const WAIT: Duration = Duration::from_secs(30);

    fn verifies(body: &[u8], signature: Option<&str>) -> bool {
        Verifier::new(vec![Secret::new(SECRET)], HashMap::new())
            .verify(None, signature.map(str::as_bytes), body)
            .is_ok()
    }

    pub async fn records_arrive_exactly_as_produced_signed_and_with_their_event_ids(
        broker: &Broker,
    ) {
        let receiver = Receiver::start(vec![]).await;
        let (kafka, config) = test_config(broker, &receiver.url, 3);
        create_topics(broker, &kafka, &config).await;
        let forwarder = TestForwarder::start(&kafka, &config).await;
        let (referrals, rewards) = (&config.topics[0], &config.topics[1]);
        // Bytes a re-serialisation would change: spacing, escapes, a 64-bit id, key order.
        let invite =
            br#"{ "type":"invite", "email":"ann\u0040example.com", "id":18446744073709551615 }"#;
        let reward = br#"{"type":"reward","amount":"10.00"}"#;
        produce(
            broker,
            referrals,
            &[Input {
                key: "shop/ann",
                value: invite,
                headers: &[("aftercart-event-id", "evt-invite-1")],
            }],
        )
        .await;
        let (partition, offset) = produce(
            broker,
            rewards,
            &[Input {
                key: "shop/bob",
                value: reward,
                headers: &[],
            }],
        )
        .await[0];

        let delivered = eventually("two deliveries", WAIT, || async {
            let delivered = receiver.delivered();
            (delivered.len() >= 2).then_some(delivered)
        })
        .await;
        assert_eq!(delivered.len(), 2);
        let by_topic: BTreeMap<&str, _> = delivered
            .iter()
            .map(|r| (r.header("x-aftercart-topic").unwrap(), r))
            .collect();
        let invite_request = by_topic[referrals.as_str()];
        assert_eq!(invite_request.body, invite);
        assert_eq!(invite_request.event_id(), "evt-invite-1");
        assert!(verifies(
            &invite_request.body,
            invite_request.header("x-aftercart-hmac-sha256")
        ));
        let reward_request = by_topic[rewards.as_str()];
        assert_eq!(reward_request.body, reward);
        assert_eq!(
            reward_request.event_id(),
            format!("{rewards}/{partition}/{offset}"),
            "without an event id header the source is the idempotency key"
        );
        assert!(verifies(
            &reward_request.body,
            reward_request.header("x-aftercart-hmac-sha256")
        ));
        assert_eq!(
            reward_request.header("content-type"),
            Some("application/json")
        );
        aftercart_tests::settles_at(
            r#"aftercart_test_http_deliveries_total{outcome="delivered"}"#,
            2.0,
            |s| forwarder.metric(s),
        )
        .await;
        forwarder.stop().await.expect("clean stop");
    }

    pub async fn a_503_is_retried_and_the_offset_is_committed_only_after_the_200(broker: &Broker) {
        // Retry-After holds the retry for 4 s: auto-commits (every second) happen meanwhile.
        let receiver = Receiver::start(vec![Reply::status(503).header("retry-after", "4")]).await;
        let (kafka, config) = test_config(broker, &receiver.url, 1);
        create_topics(broker, &kafka, &config).await;
        let forwarder = TestForwarder::start(&kafka, &config).await;
        let topic = &config.topics[0];
        let (partition, offset) = produce(
            broker,
            topic,
            &[Input {
                key: "k",
                value: b"{}",
                headers: &[],
            }],
        )
        .await[0];

        eventually("the first attempt", WAIT, || async {
            (!receiver.received().is_empty()).then_some(())
        })
        .await;
        // The gauge rises once the forwarder has read the 503, a moment after the receiver
        // answered it.
        eventually("a record being retried", WAIT, || async {
            (forwarder.metric("aftercart_test_http_in_retry") == 1.0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(receiver.received().len(), 1, "Retry-After is honoured");
        assert_eq!(
            committed(&kafka, &config.group, topic, partition).await,
            None,
            "nothing is committed while the record is undelivered"
        );

        eventually("the offset committed", WAIT, || async {
            let next = committed(&kafka, &config.group, topic, partition).await;
            (next == Some(offset + 1)).then_some(())
        })
        .await;
        let received = receiver.received();
        assert_eq!(
            received.iter().map(|r| r.answered).collect::<Vec<_>>(),
            [503, 200]
        );
        assert!(received[1].at - received[0].at >= Duration::from_secs(4));
        assert_eq!(received[0].event_id(), received[1].event_id());
        assert_eq!(forwarder.metric("aftercart_test_http_in_retry"), 0.0);
        aftercart_tests::settles_at(
            r#"aftercart_test_http_deliveries_total{outcome="retry"}"#,
            1.0,
            |s| forwarder.metric(s),
        )
        .await;
        forwarder.stop().await.expect("clean stop");
    }

    pub async fn a_400_lands_in_the_dead_letter_topic_with_its_status_and_reason(broker: &Broker) {
        let refusal = r#"{"error":"unknown referral code"}"#;
        let receiver = Receiver::start(vec![Reply::status(400).body(refusal)]).await;
        let (kafka, config) = test_config(broker, &receiver.url, 1);
        create_topics(broker, &kafka, &config).await;
        let forwarder = TestForwarder::start(&kafka, &config).await;
        let topic = &config.topics[0];
        let landed = produce(
            broker,
            topic,
            &[
                Input {
                    key: "shop/refused",
                    value: br#"{"code":"NOPE"}"#,
                    headers: &[("aftercart-event-id", "evt-refused"), ("x-origin", "test")],
                },
                Input {
                    key: "shop/fine",
                    value: br#"{"code":"OK"}"#,
                    headers: &[],
                },
            ],
        )
        .await;

        let letters = eventually("a dead letter", WAIT, || async {
            let letters = read_topic(&kafka.brokers, &config.dead_letter_topic).await;
            (!letters.is_empty()).then_some(letters)
        })
        .await;
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_eq!(letter.key_str(), "shop/refused");
        assert_eq!(letter.value, br#"{"code":"NOPE"}"#);
        assert_eq!(letter.header("aftercart-event-id"), Some("evt-refused"));
        assert_eq!(letter.header("x-origin"), Some("test"));
        assert_eq!(
            letter.header("aftercart-dead-letter-reason"),
            Some("http_status_400")
        );
        let (partition, offset) = landed[0];
        assert_eq!(
            letter.header("aftercart-dead-letter-source"),
            Some(format!("{topic}/{partition}/{offset}").as_str())
        );
        assert_eq!(letter.header("aftercart-http-status"), Some("400"));
        assert_eq!(letter.header("aftercart-http-response"), Some(refusal));
        assert_eq!(letter.header("aftercart-http-attempts"), Some("1"));
        assert_valid(
            "kafka/delivery-dead-letter-headers.schema.json",
            &letter.headers_json(),
        );

        // The stream goes on past the refused record, and both offsets are committed.
        eventually("the next record delivered and committed", WAIT, || async {
            let next = committed(&kafka, &config.group, topic, landed[1].0).await;
            (receiver.delivered().len() == 1 && next == Some(landed[1].1 + 1)).then_some(())
        })
        .await;
        assert_eq!(receiver.delivered()[0].body, br#"{"code":"OK"}"#);
        aftercart_tests::settles_at("aftercart_test_http_dead_lettered_total", 1.0, |s| {
            forwarder.metric(s)
        })
        .await;
        aftercart_tests::settles_at(
            r#"aftercart_test_http_deliveries_total{outcome="permanent"}"#,
            1.0,
            |s| forwarder.metric(s),
        )
        .await;
        forwarder.stop().await.expect("clean stop");
    }

    pub async fn a_shutdown_while_retrying_is_prompt_and_commits_nothing_undelivered(
        broker: &Broker,
    ) {
        let receiver = Receiver::start(vec![]).await;
        receiver.answer_by_default(Reply::status(503).header("retry-after", "60"));
        let (kafka, config) = test_config(broker, &receiver.url, 1);
        create_topics(broker, &kafka, &config).await;
        let forwarder = TestForwarder::start(&kafka, &config).await;
        let topic = &config.topics[0];
        let (partition, offset) = produce(
            broker,
            topic,
            &[Input {
                key: "k",
                value: b"{}",
                headers: &[],
            }],
        )
        .await[0];
        eventually("the first attempt", WAIT, || async {
            (!receiver.received().is_empty()).then_some(())
        })
        .await;

        let stopping = Instant::now();
        forwarder.stop().await.expect("clean stop");
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "stopped in {:?}, not after the 60 s Retry-After",
            stopping.elapsed()
        );
        assert_eq!(
            committed(&kafka, &config.group, topic, partition).await,
            None
        );

        // The next instance delivers it.
        receiver.answer_by_default(Reply::status(200));
        let forwarder = TestForwarder::start(&kafka, &config).await;
        eventually("the redelivery committed", WAIT, || async {
            let next = committed(&kafka, &config.group, topic, partition).await;
            (receiver.delivered().len() == 1 && next == Some(offset + 1)).then_some(())
        })
        .await;
        forwarder.stop().await.expect("clean stop");
    }

    pub async fn a_crash_redelivers_only_uncommitted_records_and_skips_none(broker: &Broker) {
        // Three records go through, then the receiver fails until the crash.
        let receiver = Receiver::start(vec![Reply::status(200); 3]).await;
        receiver.answer_by_default(Reply::status(503));
        let (kafka, config) = test_config(broker, &receiver.url, 1);
        create_topics(broker, &kafka, &config).await;
        let forwarder = TestForwarder::start(&kafka, &config).await;
        let topic = &config.topics[0];
        let values: Vec<String> = (0..6).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
        let inputs: Vec<Input> = values
            .iter()
            .map(|v| Input {
                key: "one-partition",
                value: v.as_bytes(),
                headers: &[],
            })
            .collect();
        let landed = produce(broker, topic, &inputs).await;
        let partition = landed[0].0;

        // The fourth record is being retried; the first three are committed (auto-commit).
        let committed_before = eventually("three committed", WAIT, || async {
            let next = committed(&kafka, &config.group, topic, partition).await;
            (next == Some(landed[3].1) && receiver.received().len() > 4).then_some(landed[3].1)
        })
        .await;
        forwarder.crash().await;

        receiver.answer_by_default(Reply::status(200));
        let forwarder = TestForwarder::start(&kafka, &config).await;
        let last = landed[5].1;
        eventually("every record delivered and committed", WAIT, || async {
            let next = committed(&kafka, &config.group, topic, partition).await;
            (next == Some(last + 1)).then_some(())
        })
        .await;
        forwarder.stop().await.expect("clean stop");

        let mut deliveries: BTreeMap<i64, usize> = BTreeMap::new();
        for request in receiver.delivered() {
            let offset: i64 = request
                .event_id()
                .rsplit('/')
                .next()
                .and_then(|o| o.parse().ok())
                .expect("event id is topic/partition/offset");
            assert_eq!(
                request.body,
                values[landed.iter().position(|l| l.1 == offset).unwrap()].as_bytes()
            );
            *deliveries.entry(offset).or_default() += 1;
        }
        let offsets: Vec<i64> = landed.iter().map(|l| l.1).collect();
        assert_eq!(
            deliveries.keys().copied().collect::<Vec<_>>(),
            offsets,
            "none skipped"
        );
        for (offset, count) in &deliveries {
            if *offset < committed_before {
                assert_eq!(*count, 1, "committed offset {offset} delivered again");
            }
        }
    }
}

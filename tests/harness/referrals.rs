//! Starting the referrals service in-process, exactly as `aftercart referrals` runs it.

use std::time::Duration;

use aftercart_kafka::KafkaSettings;
use aftercart_referrals::{serve, ReferralsArgs, ReferralsConfig, ReferralsDefaults, ServeError};
use clap::Parser;

use crate::service::{test_kafka_args, TestService};
use crate::Broker;

/// The code secret of the tests (codes are recomputed independently from it).
pub const CODE_SECRET: &str = "referrals-test-code-secret";
/// The state hash key of the tests.
pub const STATE_HASH_KEY: &str = "referrals-test-state-hash-key";

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    referrals: ReferralsArgs,
}

/// A config on the same Kafka settings as a test's ingress, with its own topics and group,
/// built from real flags so defaults are the shipped ones (review window 3 s unless given).
pub fn test_config(kafka: &KafkaSettings, flags: &[&str]) -> ReferralsConfig {
    let prefix = &kafka.topic_prefix;
    let mut argv = vec![
        "referrals".to_string(),
        format!("--referrals-group={prefix}referrals"),
        format!("--referrals-invites-topic={prefix}referral-invites"),
        format!("--referrals-rewards-topic={prefix}referral-rewards"),
        format!("--referrals-data-requests-topic={prefix}data_requests"),
        format!("--referrals-by-shop-topic={prefix}referrals-by-shop"),
        format!("--referrals-state-topic={prefix}referrals-state"),
        format!("--referrals-dead-letter-topic={prefix}referrals-dead-letter"),
        format!("--referrals-code-secret={CODE_SECRET}"),
        format!("--state-hash-key={STATE_HASH_KEY}"),
    ];
    if !flags
        .iter()
        .any(|f| f.starts_with("--referrals-review-window"))
    {
        argv.push("--referrals-review-window=3s".to_string());
    }
    argv.extend(flags.iter().map(|f| f.to_string()));
    let args = Flags::try_parse_from(argv)
        .expect("test flags parse")
        .referrals;
    args.validate(
        &test_kafka_args(kafka),
        Duration::from_secs(10),
        &ReferralsDefaults::production(),
    )
    .expect("valid test config")
}

/// A running referrals service.
pub type TestReferrals = TestService<ReferralsConfig, ServeError>;

impl TestReferrals {
    /// Starts the service and waits until it is ready: partitions assigned and restored.
    pub async fn start_on(broker: &Broker, config: ReferralsConfig) -> TestReferrals {
        let topics = aftercart_referrals::topic_specs(&config).0;
        TestService::launch(
            broker,
            "referrals",
            config,
            &topics,
            |c, r, h, s| async move { serve(&c, &r, &h, s).await },
        )
        .await
    }
}

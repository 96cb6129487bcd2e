//! Starting the journey service in-process, exactly as `aftercart journey` runs it.

use std::time::Duration;

use aftercart_journey::config::JourneyDefaults;
use aftercart_journey::{serve, JourneyArgs, JourneyConfig, ServeError};
use aftercart_kafka::KafkaSettings;
use clap::Parser;

use crate::service::{test_kafka_args, TestService};
use crate::Broker;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    journey: JourneyArgs,
    #[command(flatten)]
    state_hash: aftercart_runtime::state_hash::StateHashArgs,
}

/// A config on the same Kafka settings as a test's ingress, with its own topics and group,
/// built from real flags; `file` is the journey file (TOML) written for the test, if any.
pub fn test_config(kafka: &KafkaSettings, file: Option<&std::path::Path>) -> JourneyConfig {
    let prefix = &kafka.topic_prefix;
    let mut argv = vec![
        "journey".to_string(),
        format!("--journey-group={prefix}journey"),
        format!("--journey-touchpoints-topic={prefix}touchpoints"),
        format!("--journey-by-shop-topic={prefix}journey-by-shop"),
        format!("--journey-state-topic={prefix}journey-state"),
        format!("--journey-dead-letter-topic={prefix}journey-dead-letter"),
        format!("--journey-delivery-dead-letter-topic={prefix}journey-delivery-dead-letter"),
        format!("--journey-data-requests-topic={prefix}data_requests"),
        format!("--state-hash-key={}", crate::referrals::STATE_HASH_KEY),
    ];
    if let Some(file) = file {
        argv.push(format!("--journey-config={}", file.display()));
    }
    let flags = Flags::try_parse_from(argv).expect("test flags parse");
    flags
        .journey
        .validate(
            &test_kafka_args(kafka),
            &flags.state_hash,
            Duration::from_secs(10),
            (format!("{prefix}referral-invites"), false),
            &JourneyDefaults::production(),
        )
        .expect("valid test config")
}

/// A running journey service.
pub type TestJourney = TestService<JourneyConfig, ServeError>;

impl TestJourney {
    /// Starts the service and waits until it is ready: partitions assigned and restored.
    pub async fn start_on(broker: &Broker, config: JourneyConfig) -> TestJourney {
        let topics = aftercart_journey::topic_specs(&config).0;
        TestService::launch(
            broker,
            "journey",
            config,
            &topics,
            |c, r, h, s| async move { serve(&c, &r, &h, s).await },
        )
        .await
    }
}

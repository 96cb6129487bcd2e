//! Starting the abandonment service in-process, exactly as `aftercart abandonment` runs it.

use std::time::Duration;

use aftercart_abandonment::{
    serve, AbandonmentArgs, AbandonmentConfig, AbandonmentDefaults, ServeError,
};
use aftercart_kafka::KafkaSettings;
use clap::Parser;

use crate::service::{test_kafka_args, TestService};
use crate::Broker;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    abandonment: AbandonmentArgs,
}

/// A config on the same Kafka settings (and so the same raw topics) as a test's ingress, with
/// its own output topics and group, built from real flags so defaults are the shipped ones.
pub fn test_config(kafka: &KafkaSettings, flags: &[&str]) -> AbandonmentConfig {
    let prefix = &kafka.topic_prefix;
    let mut argv = vec![
        "abandonment".to_string(),
        format!("--abandonment-group={prefix}abandonment"),
        format!("--abandonment-output-topic={prefix}abandonments"),
        format!("--abandonment-data-requests-topic={prefix}data_requests"),
        format!("--abandonment-state-topic={prefix}abandonment-state"),
        format!("--abandonment-dead-letter-topic={prefix}abandonment-dead-letter"),
    ];
    for (flag, default) in [
        ("--abandonment-abandon-after", "2s"),
        ("--abandonment-cart-abandon-after", "2s"),
    ] {
        if !flags.iter().any(|f| f.starts_with(flag)) {
            argv.push(format!("{flag}={default}"));
        }
    }
    argv.extend(flags.iter().map(|f| f.to_string()));
    let args = Flags::try_parse_from(argv)
        .expect("test flags parse")
        .abandonment;
    args.validate(
        &test_kafka_args(kafka),
        Duration::from_secs(10),
        &AbandonmentDefaults::production(),
    )
    .expect("valid test config")
}

/// A running abandonment service.
pub type TestAbandonment = TestService<AbandonmentConfig, ServeError>;

impl TestAbandonment {
    /// Starts the service and waits until it is ready: global tables read, partitions assigned.
    pub async fn start_on(broker: &Broker, config: AbandonmentConfig) -> TestAbandonment {
        let topics = aftercart_abandonment::topic_specs(&config).0;
        TestService::launch(
            broker,
            "abandonment",
            config,
            &topics,
            |c, r, h, s| async move { serve(&c, &r, &h, s).await },
        )
        .await
    }
}

//! `aftercart topics create`: create every topic aftercart uses ahead of time.

use std::collections::BTreeMap;

use aftercart_abandonment::{AbandonmentArgs, AbandonmentDefaults};
use aftercart_audiences::{AudiencesArgs, AudiencesDefaults};
use aftercart_ingress::app::topic_specs;
use aftercart_kafka::{ensure_topics, KafkaArgs, TopicSpec};
use aftercart_referrals::{ReferralsArgs, ReferralsDefaults};
use aftercart_runtime::config::{parse_byte_size, ConfigErrors};
use aftercart_runtime::{EX_CONFIG, EX_USAGE};

#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Create the missing topics of every service (existing ones are left alone) and check that
    /// the topics joined by partition share one partition count.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        abandonment: Box<AbandonmentArgs>,
        #[command(flatten)]
        referrals: Box<ReferralsArgs>,
        #[command(flatten)]
        audiences: Box<AudiencesArgs>,
        /// Largest webhook body the ingress accepts; topics are created to hold it.
        #[arg(long, env = "AFTERCART_MAX_BODY_BYTES", default_value = "4MiB")]
        max_body_bytes: String,
    },
}

pub async fn run(command: TopicsCommand) -> i32 {
    let TopicsCommand::Create {
        kafka,
        abandonment,
        referrals,
        audiences,
        max_body_bytes,
    } = command;
    let mut errors = ConfigErrors::new();
    let settings = kafka.validate(&mut errors, None);
    let max_body = errors.check("AFTERCART_MAX_BODY_BYTES", parse_byte_size(&max_body_bytes));
    let abandonment = abandonment
        .validate(
            &kafka,
            std::time::Duration::ZERO,
            &AbandonmentDefaults::production(),
        )
        .map_err(|e| errors.extend(e))
        .ok();
    // Only topic names are needed here: a placeholder stands in for an unset code secret.
    let referrals = referrals
        .validate(
            &kafka,
            std::time::Duration::ZERO,
            &ReferralsDefaults {
                code_secret: Some("placeholder: topics only".to_string()),
                ..ReferralsDefaults::production()
            },
        )
        .map_err(|e| errors.extend(e))
        .ok();
    let audiences = audiences
        .validate(
            &kafka,
            std::time::Duration::ZERO,
            &AudiencesDefaults::production(),
        )
        .map_err(|e| errors.extend(e))
        .ok();
    let (Some(settings), Some(max_body), Some(abandonment), Some(referrals), Some(audiences), true) = (
        settings,
        max_body,
        abandonment,
        referrals,
        audiences,
        errors.is_empty(),
    ) else {
        eprint!("{errors}");
        return EX_USAGE;
    };
    let (abandonment_specs, mut same_partitions) = aftercart_abandonment::topic_specs(&abandonment);
    let (referrals_specs, referrals_same) = aftercart_referrals::topic_specs(&referrals);
    same_partitions.extend(referrals_same);
    let (audiences_specs, audiences_same) = aftercart_audiences::topic_specs(&audiences);
    same_partitions.extend(audiences_same);
    // The ingress's specs first: they carry max.message.bytes for the raw topics.
    let mut specs: BTreeMap<String, TopicSpec> = BTreeMap::new();
    for spec in abandonment_specs
        .into_iter()
        .chain(referrals_specs)
        .chain(audiences_specs)
        .chain(topic_specs(&settings, max_body as usize))
    {
        specs.insert(spec.name.clone(), spec);
    }
    let specs: Vec<TopicSpec> = specs.into_values().collect();
    match ensure_topics(&settings, &specs, &same_partitions).await {
        Ok(()) => {
            for spec in &specs {
                println!("{}", spec.name);
            }
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            if error.is_transient() {
                1
            } else {
                EX_CONFIG
            }
        }
    }
}

//! `aftercart topics create`: create every topic aftercart uses ahead of time.

use std::collections::BTreeMap;

use aftercart_abandonment::{AbandonmentArgs, AbandonmentDefaults};
use aftercart_audiences::{AudiencesArgs, AudiencesDefaults};
use aftercart_ingress::app::topic_specs;
use aftercart_journey::config::JourneyDefaults;
use aftercart_journey::JourneyArgs;
use aftercart_kafka::{ensure_topics, KafkaArgs, KafkaSettings, TopicSpec};
use aftercart_nudges::{NudgesArgs, NudgesDefaults};
use aftercart_referrals::{ReferralsArgs, ReferralsDefaults};
use aftercart_runtime::config::{parse_byte_size, ConfigErrors};
use aftercart_runtime::{EX_CONFIG, EX_USAGE};

#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Create the missing topics of every service (existing ones are left alone) and check that
    /// the topics joined by partition share one partition count.
    Create(Box<TopicFlags>),
}

/// The settings every service reads that decide which topics exist and how they are made.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Topics")]
pub struct TopicFlags {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub abandonment: Box<AbandonmentArgs>,
    #[command(flatten)]
    pub referrals: Box<ReferralsArgs>,
    #[command(flatten)]
    pub audiences: Box<AudiencesArgs>,
    #[command(flatten)]
    pub nudges: Box<NudgesArgs>,
    #[command(flatten)]
    pub journey: Box<JourneyArgs>,
    /// Largest webhook body the ingress accepts; topics are created to hold it.
    #[arg(
        long = "ingress-max-body-bytes",
        alias = "max-body-bytes",
        env = "AFTERCART_INGRESS_MAX_BODY_BYTES",
        default_value = "4MiB"
    )]
    pub max_body_bytes: String,
}

/// Every topic aftercart uses, as the services would create them.
pub struct TopicPlan {
    pub settings: KafkaSettings,
    /// By name.
    pub specs: Vec<TopicSpec>,
    /// Groups of topics that must share one partition count.
    pub same_partitions: Vec<String>,
    /// The consumer groups the services join.
    pub groups: Vec<String>,
}

impl TopicFlags {
    /// Validates every service's settings (all problems at once) into the plan.
    pub fn plan(self) -> Result<TopicPlan, ConfigErrors> {
        let TopicFlags {
            kafka,
            abandonment,
            referrals,
            audiences,
            nudges,
            journey,
            max_body_bytes,
        } = self;
        let mut errors = ConfigErrors::new();
        let settings = kafka.validate(&mut errors, None);
        let max_body = errors.check(
            "AFTERCART_INGRESS_MAX_BODY_BYTES",
            parse_byte_size(&max_body_bytes),
        );
        let abandonment = abandonment
            .validate(
                &kafka,
                std::time::Duration::ZERO,
                &AbandonmentDefaults::production(),
            )
            .map_err(|e| errors.extend(e))
            .ok();
        let relayed = referrals
            .invite
            .for_journey(ReferralsDefaults::production().invite_trigger);
        // Only topic names are needed here: placeholders stand in for unset secrets.
        // The nudges read the Admin API flags the referrals flags carry (one set per process).
        let shopify = referrals.shopify.clone();
        let state_hash = referrals.state_hash.clone();
        let referrals = referrals
            .validate(
                &kafka,
                std::time::Duration::ZERO,
                &ReferralsDefaults {
                    code_secret: Some("placeholder: topics only".to_string()),
                    state_hash_key: Some("placeholder: topics only".to_string()),
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
        // Only topic names are needed here: a placeholder stands in for an unset state hash key.
        let journey = journey
            .validate(
                &kafka,
                &state_hash,
                std::time::Duration::ZERO,
                relayed,
                &JourneyDefaults {
                    state_hash_key: Some("placeholder: topics only"),
                    ..JourneyDefaults::production()
                },
            )
            .map_err(|e| errors.extend(e))
            .ok();
        // Only topic names are needed here: a placeholder stands in for an unset state hash key.
        let nudges = nudges
            .validate(
                &kafka,
                &shopify,
                &state_hash,
                std::time::Duration::ZERO,
                &NudgesDefaults {
                    state_hash_key: Some("placeholder: topics only"),
                    ..NudgesDefaults::production()
                },
            )
            .map_err(|e| errors.extend(e))
            .ok();
        let (
            Some(settings),
            Some(max_body),
            Some(abandonment),
            Some(referrals),
            Some(audiences),
            Some(nudges),
            Some(journey),
            true,
        ) = (
            settings,
            max_body,
            abandonment,
            referrals,
            audiences,
            nudges,
            journey,
            errors.is_empty(),
        )
        else {
            return Err(errors);
        };
        let (abandonment_specs, mut same_partitions) =
            aftercart_abandonment::topic_specs(&abandonment);
        let (referrals_specs, referrals_same) = aftercart_referrals::topic_specs(&referrals);
        same_partitions.extend(referrals_same);
        let (audiences_specs, audiences_same) = aftercart_audiences::topic_specs(&audiences);
        same_partitions.extend(audiences_same);
        let (nudges_specs, nudges_same) = aftercart_nudges::topic_specs(&nudges);
        same_partitions.extend(nudges_same);
        let (journey_specs, journey_same) = aftercart_journey::topic_specs(&journey);
        same_partitions.extend(journey_same);
        // The ingress's specs first: they carry max.message.bytes for the raw topics.
        let mut specs: BTreeMap<String, TopicSpec> = BTreeMap::new();
        for spec in abandonment_specs
            .into_iter()
            .chain(referrals_specs)
            .chain(audiences_specs)
            .chain(nudges_specs)
            .chain(journey_specs)
            .chain(topic_specs(&settings, max_body as usize))
        {
            specs.insert(spec.name.clone(), spec);
        }
        let groups = vec![
            abandonment.group.clone(),
            referrals.group.clone(),
            audiences.group.clone(),
            nudges.group.clone(),
            journey.group.clone(),
        ];
        Ok(TopicPlan {
            settings,
            specs: specs.into_values().collect(),
            same_partitions,
            groups,
        })
    }
}

pub async fn run(command: TopicsCommand) -> i32 {
    let TopicsCommand::Create(flags) = command;
    let plan = match flags.plan() {
        Ok(plan) => plan,
        Err(errors) => {
            eprint!("{errors}");
            return EX_USAGE;
        }
    };
    match ensure_topics(&plan.settings, &plan.specs, &plan.same_partitions).await {
        Ok(()) => {
            for spec in &plan.specs {
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

//! `aftercart topics create`: create every topic aftercart uses ahead of time.

use aftercart_ingress::app::topic_specs;
use aftercart_kafka::{ensure_topics, KafkaArgs, TopicNames};
use aftercart_runtime::config::{parse_byte_size, ConfigErrors};
use aftercart_runtime::{EX_CONFIG, EX_USAGE};

#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Create the missing topics (existing ones are left alone) and check that the journey
    /// topics share one partition count.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Largest webhook body the ingress accepts; topics are created to hold it.
        #[arg(long, env = "AFTERCART_MAX_BODY_BYTES", default_value = "4MiB")]
        max_body_bytes: String,
    },
}

pub async fn run(command: TopicsCommand) -> i32 {
    let TopicsCommand::Create {
        kafka,
        max_body_bytes,
    } = command;
    let mut errors = ConfigErrors::new();
    let settings = kafka.validate(&mut errors, None);
    let max_body = errors.check("AFTERCART_MAX_BODY_BYTES", parse_byte_size(&max_body_bytes));
    let (Some(settings), Some(max_body), true) = (settings, max_body, errors.is_empty()) else {
        eprint!("{errors}");
        return EX_USAGE;
    };
    let specs = topic_specs(&settings, max_body as usize);
    let journey = TopicNames::new(&settings.topic_prefix).journey();
    match ensure_topics(&settings, &specs, &journey).await {
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

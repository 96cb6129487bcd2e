//! `aftercart nudges`: the recovery nudge service.

use aftercart_nudges::NudgesDefaults;

use crate::cli::NudgesCommand;
use crate::serve::{run_consumer_command, run_nudges};

pub async fn run(command: NudgesCommand) -> i32 {
    let NudgesCommand {
        kafka,
        nudges,
        shopify,
        process,
    } = command;
    run_consumer_command(
        &process,
        |shutdown| nudges.validate(&kafka, &shopify, shutdown, &NudgesDefaults::production()),
        async |config, process| run_nudges(config, process).await,
    )
    .await
}

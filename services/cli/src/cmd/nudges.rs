//! `aftercart nudges`: the recovery nudge service.

use aftercart_nudges::{NudgesDefaults, NudgesService};
use aftercart_runtime::run_command;

use crate::cli::NudgesCommand;

pub async fn run(command: NudgesCommand) -> i32 {
    let NudgesCommand {
        kafka,
        nudges,
        shopify,
        state_hash,
        process,
    } = command;
    run_command::<NudgesService>(&process, |shutdown| {
        nudges.validate(
            &kafka,
            &shopify,
            &state_hash,
            shutdown,
            &NudgesDefaults::production(),
        )
    })
    .await
}

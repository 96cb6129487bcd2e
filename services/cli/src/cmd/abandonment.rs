//! `aftercart abandonment`: the cart-abandonment segmentation service.

use aftercart_abandonment::{AbandonmentDefaults, AbandonmentService};
use aftercart_runtime::run_command;

use crate::cli::AbandonmentCommand;

pub async fn run(command: AbandonmentCommand) -> i32 {
    let AbandonmentCommand {
        kafka,
        abandonment,
        process,
    } = command;
    run_command::<AbandonmentService>(&process, |shutdown| {
        abandonment.validate(&kafka, shutdown, &AbandonmentDefaults::production())
    })
    .await
}

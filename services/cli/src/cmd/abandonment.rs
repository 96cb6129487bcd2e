//! `aftercart abandonment`: the cart-abandonment segmentation service.

use aftercart_abandonment::AbandonmentDefaults;

use crate::cli::AbandonmentCommand;
use crate::serve::{run_abandonment, run_consumer_command};

pub async fn run(command: AbandonmentCommand) -> i32 {
    let AbandonmentCommand {
        kafka,
        abandonment,
        process,
    } = command;
    run_consumer_command(
        &process,
        |shutdown| abandonment.validate(&kafka, shutdown, &AbandonmentDefaults::production()),
        async |config, process| run_abandonment(config, process).await,
    )
    .await
}

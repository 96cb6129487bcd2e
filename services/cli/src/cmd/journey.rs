//! `aftercart journey`: the post-purchase journey service.

use aftercart_journey::config::JourneyDefaults;
use aftercart_referrals::ReferralsDefaults;

use crate::cli::JourneyCommand;
use crate::serve::{run_consumer_command, run_journey};

pub async fn run(command: JourneyCommand) -> i32 {
    let JourneyCommand {
        kafka,
        journey,
        invite,
        process,
    } = command;
    let relayed = invite.for_journey(ReferralsDefaults::production().invite_trigger);
    run_consumer_command(
        &process,
        |shutdown| {
            journey.validate(
                &kafka,
                shutdown,
                relayed.clone(),
                &JourneyDefaults::production(),
            )
        },
        async |config, process| run_journey(config, process).await,
    )
    .await
}

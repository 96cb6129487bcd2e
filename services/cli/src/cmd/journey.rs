//! `aftercart journey`: the post-purchase journey service.

use aftercart_journey::config::JourneyDefaults;
use aftercart_journey::JourneyService;
use aftercart_referrals::ReferralsDefaults;
use aftercart_runtime::run_command;

use crate::cli::JourneyCommand;

pub async fn run(command: JourneyCommand) -> i32 {
    let JourneyCommand {
        kafka,
        journey,
        invite,
        state_hash,
        process,
    } = command;
    let relayed = invite.for_journey(ReferralsDefaults::production().invite_trigger);
    run_command::<JourneyService>(&process, |shutdown| {
        journey.validate(
            &kafka,
            &state_hash,
            shutdown,
            relayed,
            &JourneyDefaults::production(),
        )
    })
    .await
}

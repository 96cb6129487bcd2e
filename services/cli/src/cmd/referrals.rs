//! `aftercart referrals`: the referral trigger service.

use aftercart_referrals::ReferralsDefaults;

use crate::cli::ReferralsCommand;
use crate::serve::{run_consumer_command, run_referrals};

pub async fn run(command: ReferralsCommand) -> i32 {
    let ReferralsCommand {
        kafka,
        referrals,
        process,
    } = command;
    run_consumer_command(
        &process,
        |shutdown| referrals.validate(&kafka, shutdown, &ReferralsDefaults::production()),
        async |config, process| run_referrals(config, process).await,
    )
    .await
}

//! `aftercart referrals`: the referral trigger service.

use aftercart_referrals::{ReferralsDefaults, ReferralsService};
use aftercart_runtime::run_command;

use crate::cli::ReferralsCommand;

pub async fn run(command: ReferralsCommand) -> i32 {
    let ReferralsCommand {
        kafka,
        referrals,
        process,
    } = command;
    run_command::<ReferralsService>(&process, |shutdown| {
        referrals.validate(&kafka, shutdown, &ReferralsDefaults::production())
    })
    .await
}

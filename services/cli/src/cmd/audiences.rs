//! `aftercart audiences`: the retargeting audience export service.

use aftercart_audiences::{AudiencesDefaults, AudiencesService};
use aftercart_runtime::run_command;

use crate::cli::AudiencesCommand;

pub async fn run(command: AudiencesCommand) -> i32 {
    let AudiencesCommand {
        kafka,
        audiences,
        process,
    } = command;
    run_command::<AudiencesService>(&process, |shutdown| {
        audiences.validate(&kafka, shutdown, &AudiencesDefaults::production())
    })
    .await
}

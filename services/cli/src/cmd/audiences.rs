//! `aftercart audiences`: the retargeting audience export service.

use aftercart_audiences::AudiencesDefaults;

use crate::cli::AudiencesCommand;
use crate::serve::{run_audiences, run_consumer_command};

pub async fn run(command: AudiencesCommand) -> i32 {
    let AudiencesCommand {
        kafka,
        audiences,
        process,
    } = command;
    run_consumer_command(
        &process,
        |shutdown| audiences.validate(&kafka, shutdown, &AudiencesDefaults::production()),
        async |config, process| run_audiences(config, process).await,
    )
    .await
}

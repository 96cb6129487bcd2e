//! `aftercart abandonment`: the cart-abandonment segmentation service.

use aftercart_abandonment::AbandonmentDefaults;
use aftercart_runtime::config::{parse_duration, parse_socket_addr, ConfigErrors};
use aftercart_runtime::EX_USAGE;

use crate::cli::AbandonmentCommand;
use crate::serve::{run_abandonment, Process};

pub async fn run(command: AbandonmentCommand) -> i32 {
    let mut errors = ConfigErrors::new();
    let admin = errors.check(
        "AFTERCART_ADMIN_LISTEN",
        parse_socket_addr(command.admin_listen.as_deref().unwrap_or("0.0.0.0:9090")),
    );
    let shutdown_timeout = errors.check(
        "AFTERCART_SHUTDOWN_TIMEOUT",
        parse_duration(&command.shutdown_timeout),
    );
    let config = command.abandonment.validate(
        &command.kafka,
        shutdown_timeout.unwrap_or_default(),
        &AbandonmentDefaults::production(),
    );
    let config = match config {
        Ok(config) if errors.is_empty() => config,
        Ok(_) => {
            eprint!("{errors}");
            return EX_USAGE;
        }
        Err(more) => {
            errors.extend(more);
            eprint!("{errors}");
            return EX_USAGE;
        }
    };
    let process = match Process::start(admin.expect("checked")).await {
        Ok(process) => process,
        Err(code) => return code,
    };
    let code = run_abandonment(&config, &process).await;
    process.finish(code)
}

//! `aftercart abandonment`: the cart-abandonment segmentation service.

use aftercart_abandonment::AbandonmentDefaults;
use aftercart_runtime::config::{parse_duration, parse_socket_addr, ConfigErrors};
use aftercart_runtime::{Health, Shutdown, EX_USAGE};
use prometheus::Registry;

use crate::cli::AbandonmentCommand;
use crate::serve::{bind, run_abandonment, Process};

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
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let process = Process {
        registry: Registry::new(),
        health: Health::new(),
        stop: shutdown.token(),
    };
    let admin_listener = match bind("the admin port", admin.expect("checked")).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let admin_stop = process.spawn_admin(admin_listener);
    let code = run_abandonment(&config, &process).await;
    admin_stop.cancel();
    code
}

//! `aftercart ingress`: the production webhook ingress.

use aftercart_ingress::{IngressArgs, IngressDefaults};
use aftercart_runtime::{Health, Shutdown, EX_USAGE};
use prometheus::Registry;

use crate::serve::{bind, run_ingress, Process};

pub async fn run(args: IngressArgs) -> i32 {
    let config = match args.validate(&IngressDefaults::production()) {
        Ok(config) => config,
        Err(errors) => {
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
    let admin_listener = match bind("the admin port", config.admin_listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let listener = match bind("webhooks", config.listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let admin_stop = process.spawn_admin(admin_listener);
    let code = run_ingress(&config, listener, &process).await;
    admin_stop.cancel();
    code
}

//! `aftercart ingress`: the production webhook ingress.

use aftercart_ingress::{IngressArgs, IngressDefaults};
use aftercart_runtime::EX_USAGE;

use aftercart_runtime::process::bind;
use aftercart_runtime::Process;

use crate::serve::run_ingress;

pub async fn run(args: IngressArgs) -> i32 {
    let config = match args.validate(&IngressDefaults::production()) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return EX_USAGE;
        }
    };
    let process = match Process::start(config.admin_listen).await {
        Ok(process) => process,
        Err(code) => return code,
    };
    let listener = match bind("webhooks", config.listen, config.listen_backlog) {
        Ok(listener) => listener,
        Err(code) => return process.finish(code),
    };
    let code = run_ingress(&config, listener, &process).await;
    process.finish(code)
}

//! Running the ingress in a process; the consumer services run through
//! `aftercart_runtime::run_command` / `run_service`.

use aftercart_ingress::{serve, IngressConfig, ServeError};
use aftercart_runtime::{Process, EX_CONFIG};
use tokio::net::TcpListener;

/// Runs the ingress until `process.stop`; returns the process exit code.
pub async fn run_ingress(config: &IngressConfig, listener: TcpListener, process: &Process) -> i32 {
    match serve(
        config,
        listener,
        &process.registry,
        &process.health,
        process.stop.clone(),
    )
    .await
    {
        Ok(()) => 0,
        Err(error @ ServeError::Topics(_)) => {
            tracing::error!(%error, "Refusing to start.");
            EX_CONFIG
        }
        Err(error) => {
            tracing::error!(%error, "The ingress failed.");
            // The process's other services (under `aftercart dev`) stop with it.
            process.stop.cancel();
            1
        }
    }
}

//! Running a service process: bind, serve the admin port, prepare Kafka, serve until a signal.

use std::net::SocketAddr;

use aftercart_abandonment::AbandonmentConfig;
use aftercart_ingress::{serve, IngressConfig, ServeError};
use aftercart_runtime::{AdminServer, Health, EX_CONFIG};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Exit code when a listener cannot be bound (sysexits `EX_UNAVAILABLE`).
const EX_UNAVAILABLE: i32 = 69;

/// Binds a listener, or explains why not.
pub async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, i32> {
    TcpListener::bind(addr).await.map_err(|error| {
        tracing::error!(%addr, %error, "Cannot listen for {what}.");
        EX_UNAVAILABLE
    })
}

/// Listeners and shared process state of one run.
pub struct Process {
    pub registry: Registry,
    pub health: Health,
    pub stop: CancellationToken,
}

impl Process {
    /// Serves the admin port until `self.stop`, plus a grace period for final scrapes.
    pub fn spawn_admin(&self, listener: TcpListener) -> CancellationToken {
        let admin_stop = CancellationToken::new();
        let admin = AdminServer::new(listener, self.registry.clone(), self.health.clone());
        tokio::spawn(admin.run_until_stopped(admin_stop.clone()));
        // Readiness fails as soon as shutdown starts, before anything stops accepting.
        let health = self.health.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            health.start_draining();
        });
        admin_stop
    }
}

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
            1
        }
    }
}

/// Runs the abandonment service until `process.stop`; returns the process exit code.
pub async fn run_abandonment(config: &AbandonmentConfig, process: &Process) -> i32 {
    let stop = process.stop.clone();
    match aftercart_abandonment::serve(config, &process.registry, &process.health, stop).await {
        Ok(()) => 0,
        Err(error @ aftercart_abandonment::ServeError::Topics(_)) => {
            tracing::error!(%error, "Refusing to start.");
            EX_CONFIG
        }
        Err(error) => {
            tracing::error!(%error, "The abandonment service failed.");
            // Stop the other services of this process too: a failed critical task stops all.
            process.stop.cancel();
            1
        }
    }
}

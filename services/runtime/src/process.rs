//! One service process: signal handling, the admin port (`/livez`, `/readyz`, `/metrics` with
//! the standard `process_*` families) and the shared registry, health and stop token.

use std::net::SocketAddr;

use prometheus::process_collector::ProcessCollector;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{AdminServer, Health, Shutdown};

/// Exit code when a listener cannot be bound (sysexits `EX_UNAVAILABLE`).
pub const EX_UNAVAILABLE: i32 = 69;

/// Binds a listener, or explains why not and returns the exit code.
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
    /// Where the admin port listens.
    pub admin_addr: SocketAddr,
    admin_stop: CancellationToken,
}

impl Process {
    /// Installs the signal handlers and serves the admin port (one per process, shared by every
    /// service it runs) until `finish`.
    pub async fn start(admin: SocketAddr) -> Result<Process, i32> {
        let listener = bind("the admin port", admin).await?;
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        let process = Process {
            registry: Registry::new(),
            health: Health::new(),
            stop: shutdown.token(),
            admin_addr: listener.local_addr().unwrap_or(admin),
            admin_stop: CancellationToken::new(),
        };
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // standard families every Prometheus client exports, for capacity and leak alerts.
        if let Err(error) = process
            .registry
            .register(Box::new(ProcessCollector::for_self()))
        {
            tracing::warn!(%error, "Process metrics are not exported.");
        }
        let server = AdminServer::new(listener, process.registry.clone(), process.health.clone());
        tokio::spawn(server.run_until_stopped(process.admin_stop.clone()));
        // Readiness fails as soon as shutdown starts, before anything stops accepting.
        let (health, stop) = (process.health.clone(), process.stop.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            health.start_draining();
        });
        Ok(process)
    }

    /// Stops the admin port: the last step, after the services drained.
    pub fn finish(self, code: i32) -> i32 {
        self.admin_stop.cancel();
        code
    }
}

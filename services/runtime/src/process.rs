//! One service process: signal handling, the admin port (`/livez`, `/readyz`, `/metrics` with
//! the standard `process_*` families) and the shared registry, health and stop token.

use std::net::SocketAddr;

use prometheus::process_collector::ProcessCollector;
use prometheus::Registry;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::{AdminServer, Health, Shutdown};

/// Exit code when a listener cannot be bound (sysexits `EX_UNAVAILABLE`).
pub const EX_UNAVAILABLE: i32 = 69;

/// The admin port's listen queue: a few scrapers and probes.
const ADMIN_BACKLOG: u32 = 128;

/// Binds a listener whose kernel queue holds `backlog` connections not accepted yet, or explains
/// why not and returns the exit code.
///
/// The queue is explicit because the default (128, as in the standard library) is small for a
/// server that stops accepting at its connection limit: a connection the full queue cannot take
/// loses its handshake, which a Linux client retries 1 s, 3 s, 7 s after its first attempt. The
/// kernel caps the queue at `net.core.somaxconn` (4096 since Linux 5.4; macOS's
/// `kern.ipc.somaxconn` is 128 and caps it without a word).
pub fn bind(what: &str, addr: SocketAddr, backlog: u32) -> Result<TcpListener, i32> {
    if let Some(cap) = kernel_listen_cap().filter(|cap| *cap < backlog) {
        tracing::warn!(
            backlog,
            somaxconn = cap,
            "The listen queue for {what} is capped by net.core.somaxconn: raise it (in Kubernetes, an unsafe sysctl of the pod) or expect dropped handshakes beyond it."
        );
    }
    listen(addr, backlog).map_err(|error| {
        tracing::error!(%addr, %error, "Cannot listen for {what}.");
        EX_UNAVAILABLE
    })
}

/// `net.core.somaxconn`, where the kernel says (Linux).
fn kernel_listen_cap() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server rebinds at once, past TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
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
        let listener = bind("the admin port", admin, ADMIN_BACKLOG)?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::*;

    /// Connections the server has not accepted yet wait in the kernel's queue: none of them may
    /// be dropped there (a dropped handshake is retried by the client only after a second).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listener_queues_a_burst_of_connections_it_has_not_accepted_yet() {
        const BURST: usize = 600;
        if let Some(cap) = kernel_listen_cap().filter(|cap| (*cap as usize) < BURST) {
            eprintln!("skipped: net.core.somaxconn ({cap}) caps listen queues below {BURST}");
            return;
        }
        let listener = bind("the test", "127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..BURST)
            .map(|_| {
                tokio::spawn(async move {
                    // Under the kernel's first SYN retransmission (1 s): a handshake the
                    // listener dropped does not finish in time.
                    tokio::time::timeout(Duration::from_millis(800), TcpStream::connect(addr))
                        .await
                        .ok()
                        .map(|connected| connected.expect("connect"))
                })
            })
            .collect();
        let mut queued = Vec::new();
        for connect in connects {
            queued.extend(connect.await.unwrap());
        }
        assert_eq!(
            queued.len(),
            BURST,
            "handshakes dropped by the listen queue"
        );
        drop(listener);
    }
}

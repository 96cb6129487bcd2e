//! Running a service process: bind, serve the admin port, prepare Kafka, serve until a signal.

use std::net::SocketAddr;
use std::time::Duration;

use aftercart_abandonment::AbandonmentConfig;
use aftercart_audiences::AudiencesConfig;
use aftercart_ingress::{serve, IngressConfig, ServeError};
use aftercart_journey::JourneyConfig;
use aftercart_referrals::ReferralsConfig;
use aftercart_runtime::config::{parse_duration, parse_socket_addr, ConfigErrors};
use aftercart_runtime::{AdminServer, Health, Shutdown, EX_CONFIG, EX_USAGE};

use crate::cli::ProcessArgs;
use prometheus::process_collector::ProcessCollector;
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

/// Runs the abandonment service until `process.stop`; returns the process exit code.
/// Validates a consumer service command (its own flags plus admin and shutdown flags), starts
/// the process and runs the service; returns the exit code (64 for invalid configuration).
pub async fn run_consumer_command<C>(
    args: &ProcessArgs,
    validate: impl FnOnce(Duration) -> Result<C, ConfigErrors>,
    run: impl AsyncFnOnce(&C, &Process) -> i32,
) -> i32 {
    let mut errors = ConfigErrors::new();
    let admin = errors.check(
        "AFTERCART_ADMIN_LISTEN",
        parse_socket_addr(args.admin_listen.as_deref().unwrap_or("0.0.0.0:9090")),
    );
    let shutdown_timeout = errors.check(
        "AFTERCART_SHUTDOWN_TIMEOUT",
        parse_duration(&args.shutdown_timeout),
    );
    let config = match validate(shutdown_timeout.unwrap_or_default()) {
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
    let code = run(&config, &process).await;
    process.finish(code)
}

/// The exit code of a consumer service that stopped: 0, 78 when the cluster contradicts the
/// configuration, else 1 after stopping the process's other services (a failed critical task
/// stops all).
fn service_exit<E: std::fmt::Display>(
    service: &str,
    result: Result<(), E>,
    refused: impl Fn(&E) -> bool,
    process: &Process,
) -> i32 {
    match result {
        Ok(()) => 0,
        Err(error) if refused(&error) => {
            tracing::error!(%error, "Refusing to start.");
            EX_CONFIG
        }
        Err(error) => {
            tracing::error!(%error, service, "The service failed.");
            process.stop.cancel();
            1
        }
    }
}

pub async fn run_abandonment(config: &AbandonmentConfig, process: &Process) -> i32 {
    let stop = process.stop.clone();
    let result =
        aftercart_abandonment::serve(config, &process.registry, &process.health, stop).await;
    service_exit(
        "abandonment",
        result,
        |e| matches!(e, aftercart_abandonment::ServeError::Topics(_)),
        process,
    )
}

pub async fn run_referrals(config: &ReferralsConfig, process: &Process) -> i32 {
    let stop = process.stop.clone();
    let result = aftercart_referrals::serve(config, &process.registry, &process.health, stop).await;
    service_exit(
        "referrals",
        result,
        |e| matches!(e, aftercart_referrals::ServeError::Topics(_)),
        process,
    )
}

pub async fn run_journey(config: &JourneyConfig, process: &Process) -> i32 {
    let stop = process.stop.clone();
    let result = aftercart_journey::serve(config, &process.registry, &process.health, stop).await;
    service_exit(
        "journey",
        result,
        |e| matches!(e, aftercart_journey::ServeError::Topics(_)),
        process,
    )
}

pub async fn run_audiences(config: &AudiencesConfig, process: &Process) -> i32 {
    let stop = process.stop.clone();
    let result = aftercart_audiences::serve(config, &process.registry, &process.health, stop).await;
    service_exit(
        "audiences",
        result,
        |e| matches!(e, aftercart_audiences::ServeError::Topics(_)),
        process,
    )
}

//! The consumer services' shared start-up: their process flags (admin port, shutdown
//! deadline), the [`Service`] trait each implements, and [`run_command`], which validates,
//! starts the [`Process`] and maps the outcome to an exit code.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

// Re-exported for [`service!`], so crates using it need not name these dependencies.
pub use prometheus::Registry;
pub use tokio_util::sync::CancellationToken;

use crate::config::{parse_duration, parse_socket_addr, ConfigErrors};
use crate::process::Process;
use crate::{Health, EX_CONFIG, EX_USAGE};

/// A service that runs in a [`Process`] until its stop token: the three consumer services
/// today. Adopting it takes a unit struct, its name, its `serve` and which of its errors mean
/// "the cluster contradicts the configuration" (exit 78).
pub trait Service {
    /// The validated configuration.
    type Config;
    /// What `serve` fails with.
    type Error: std::fmt::Display;
    /// The service's name in logs (`abandonment`, `referrals`, ...).
    const NAME: &'static str;

    /// Runs until `stop`: registers metrics on `registry`, readiness on `health`.
    fn serve(
        config: &Self::Config,
        registry: &Registry,
        health: &Health,
        stop: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>>;

    /// The error says the cluster contradicts the configuration (e.g. topic partition counts):
    /// exit 78 without stopping the process's other services first.
    fn refuses_to_start(error: &Self::Error) -> bool;
}

/// Declares a unit struct implementing [`Service`] from the service's
/// `serve(&Config, &Registry, &Health, CancellationToken)` function and the pattern of its errors
/// that mean "refuse to start" (exit 78):
///
/// ```ignore
/// aftercart_runtime::service!(
///     /// The abandonment service as a process runs it.
///     pub struct AbandonmentService = "abandonment",
///     AbandonmentConfig, ServeError, serve, ServeError::Topics(_)
/// );
/// ```
#[macro_export]
macro_rules! service {
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident = $label:literal,
        $config:ty, $error:ty, $serve:path, $refused:pat $(,)?
    ) => {
        $(#[$meta])*
        $vis struct $name;

        impl $crate::Service for $name {
            type Config = $config;
            type Error = $error;
            const NAME: &'static str = $label;

            fn serve(
                config: &$config,
                registry: &$crate::service::Registry,
                health: &$crate::Health,
                stop: $crate::service::CancellationToken,
            ) -> impl ::std::future::Future<Output = ::std::result::Result<(), $error>> {
                $serve(config, registry, health, stop)
            }

            fn refuses_to_start(error: &$error) -> bool {
                matches!(error, $refused)
            }
        }
    };
}

/// Runs `S` until the process stops; returns its exit code: 0, 78 when it refused to start,
/// else 1 after stopping the process's other services (a failed critical task stops all).
pub async fn run_service<S: Service>(config: &S::Config, process: &Process) -> i32 {
    let result = S::serve(
        config,
        &process.registry,
        &process.health,
        process.stop.clone(),
    )
    .await;
    match result {
        Ok(()) => 0,
        Err(error) if S::refuses_to_start(&error) => {
            tracing::error!(%error, service = S::NAME, "Refusing to start.");
            EX_CONFIG
        }
        Err(error) => {
            tracing::error!(%error, service = S::NAME, "The service failed.");
            process.stop.cancel();
            1
        }
    }
}

/// Flags every service command has besides its own.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Process")]
pub struct ProcessArgs {
    /// Admin listen address for /livez, /readyz and /metrics [default: 0.0.0.0:9090].
    #[arg(long, env = "AFTERCART_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Deadline for a graceful shutdown.
    #[arg(long, env = "AFTERCART_SHUTDOWN_TIMEOUT", default_value = "15s")]
    pub shutdown_timeout: String,
}

/// [`ProcessArgs`] validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSettings {
    pub admin_listen: SocketAddr,
    pub shutdown_timeout: Duration,
}

impl ProcessArgs {
    /// The settings, or `None` with the problems added to `errors`.
    pub fn validate(&self, errors: &mut ConfigErrors) -> Option<ProcessSettings> {
        let admin_listen = errors.check(
            "AFTERCART_ADMIN_LISTEN",
            parse_socket_addr(self.admin_listen.as_deref().unwrap_or("0.0.0.0:9090")),
        );
        let shutdown_timeout = errors.check(
            "AFTERCART_SHUTDOWN_TIMEOUT",
            parse_duration(&self.shutdown_timeout),
        );
        Some(ProcessSettings {
            admin_listen: admin_listen?,
            shutdown_timeout: shutdown_timeout?,
        })
    }
}

/// A service command from flags to exit code: validates the process flags and the service's
/// own (`validate` gets the shutdown deadline), reports every problem at once (exit 64), then
/// starts the process and runs `S` in it.
pub async fn run_command<S: Service>(
    args: &ProcessArgs,
    validate: impl FnOnce(Duration) -> Result<S::Config, ConfigErrors>,
) -> i32 {
    let mut errors = ConfigErrors::new();
    let settings = args.validate(&mut errors);
    let shutdown_timeout = settings.map_or(Duration::ZERO, |s| s.shutdown_timeout);
    let (settings, config) = match (settings, validate(shutdown_timeout)) {
        (Some(settings), Ok(config)) if errors.is_empty() => (settings, config),
        (_, result) => {
            if let Err(more) = result {
                errors.extend(more);
            }
            eprint!("{errors}");
            return EX_USAGE;
        }
    };
    let process = match Process::start(settings.admin_listen).await {
        Ok(process) => process,
        Err(code) => return code,
    };
    let code = run_service::<S>(&config, &process).await;
    process.finish(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_flags_validate_to_settings_or_name_every_problem() {
        let args = ProcessArgs {
            admin_listen: Some("127.0.0.1:0".into()),
            shutdown_timeout: "3s".into(),
        };
        let mut errors = ConfigErrors::new();
        let settings = args.validate(&mut errors).expect("valid");
        assert_eq!(settings.shutdown_timeout, Duration::from_secs(3));
        assert!(errors.is_empty());

        let args = ProcessArgs {
            admin_listen: Some("nowhere".into()),
            shutdown_timeout: "soon".into(),
        };
        let mut errors = ConfigErrors::new();
        assert_eq!(args.validate(&mut errors), None);
        let text = errors.to_string();
        assert!(text.contains("AFTERCART_ADMIN_LISTEN"), "{text}");
        assert!(text.contains("AFTERCART_SHUTDOWN_TIMEOUT"), "{text}");
    }
}

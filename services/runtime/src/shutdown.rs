//! SIGTERM/SIGINT handling: the first signal starts a graceful shutdown, a second forces exit.

use tokio_util::sync::CancellationToken;

/// Exit code for a forced exit on a second signal (128 + SIGINT, as shells report it).
pub const EX_FORCED: i32 = 130;

/// The process-wide shutdown token and its signal listener.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns the listener: the first SIGTERM or SIGINT cancels the token; a second one exits
    /// the process at once (an operator who presses Ctrl-C twice means it).
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Shutdown signal received; draining (send it again to force exit).");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("Second shutdown signal received; exiting now.");
            std::process::exit(EX_FORCED);
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

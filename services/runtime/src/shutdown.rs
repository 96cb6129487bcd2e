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

    /// Installs the SIGTERM/SIGINT handlers before returning, so a signal that arrives as soon
    /// as a process has announced itself is never met by the default action (death by signal).
    /// The first signal cancels the token; a second one exits the process at once (an operator
    /// who presses Ctrl-C twice means it).
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        let mut signals = Signals::install();
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!("Shutdown signal received; draining (send it again to force exit).");
            token.cancel();
            signals.next().await;
            tracing::warn!("Second shutdown signal received; exiting now.");
            std::process::exit(EX_FORCED);
        });
    }
}

/// The installed SIGTERM and SIGINT streams.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
        }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Self
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A SIGTERM sent the moment `listen_for_signals` returns cancels the token instead of
    /// killing the test process: the handler is in place before the call returns.
    #[tokio::test(flavor = "current_thread")]
    async fn a_signal_right_after_listening_cancels_the_token() {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        // On this single-threaded runtime the listener task has not run yet: only a handler
        // installed by the call itself keeps the process alive.
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            shutdown.token().cancelled(),
        )
        .await
        .expect("the signal cancels the token");
    }
}

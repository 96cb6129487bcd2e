//! Start-up steps that need the broker, retried with backoff while it cannot answer: a service
//! waits for Kafka rather than start half-checked or exit into a crash loop.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs `attempt` until it succeeds (`Ok(Some(value))`), fails in a way `retry` says no retry
/// fixes (`Err`), or `stop` comes first (`Ok(None)`). Each retried failure is logged as a
/// warning naming `step`; the waits run 250 ms doubling to 10 s.
pub async fn retry_with_backoff<T, E, F, Fut>(
    stop: &CancellationToken,
    step: &'static str,
    retry: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let outcome = tokio::select! {
            outcome = attempt() => outcome,
            () = stop.cancelled() => return Ok(None),
        };
        match outcome {
            Ok(value) => return Ok(Some(value)),
            Err(error) if retry(&error) => {
                tracing::warn!(step, %error, retry_in = ?backoff, "Kafka is not ready; retrying.");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return Ok(None),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_retried_failure_is_tried_again_until_it_succeeds() {
        let calls = AtomicUsize::new(0);
        let outcome = retry_with_backoff(
            &CancellationToken::new(),
            "test",
            |_: &String| true,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("not yet".to_string()),
                    n => Ok(n),
                }
            },
        )
        .await;
        assert_eq!(outcome, Ok(Some(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_no_retry_fixes_is_returned_at_once() {
        let calls = AtomicUsize::new(0);
        let outcome: Result<Option<()>, String> = retry_with_backoff(
            &CancellationToken::new(),
            "test",
            |error: &String| error != "for good",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("for good".to_string())
            },
        )
        .await;
        assert_eq!(outcome, Err("for good".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_retries_without_a_value() {
        let stop = CancellationToken::new();
        let calls = AtomicUsize::new(0);
        let stopper = stop.clone();
        let outcome: Result<Option<()>, String> = retry_with_backoff(
            &stop,
            "test",
            |_: &String| true,
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 4 {
                    stopper.cancel();
                }
                Err("down".to_string())
            },
        )
        .await;
        assert_eq!(outcome, Ok(None));
        assert_eq!(calls.load(Ordering::SeqCst), 5, "no attempt after the stop");
    }
}

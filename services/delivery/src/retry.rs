//! The retry policy: which answers are worth another try, exponential backoff with full jitter,
//! `Retry-After` honoured as a floor, and one total budget per record. Pure: no I/O, no clock.

use std::time::{Duration, SystemTime};

use http::StatusCode;

/// What an HTTP answer means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: the receiver has it.
    Delivered,
    /// 408, 425, 429, 5xx (and timeouts and connection errors, which have no status): the
    /// receiver may take it later.
    Retryable,
    /// Any other status, 3xx included (redirects are not followed: a moved endpoint is a
    /// configuration change, and a signed body should not wander to another host).
    Permanent,
    /// A refusal of this body that the caller overcomes by sending a changed one at once
    /// (Klaviyo refusing only a profile's phone): returned as a refusal, counted as a try
    /// another follows.
    Amend,
}

pub fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        200..=299 => Class::Delivered,
        408 | 425 | 429 | 500..=599 => Class::Retryable,
        _ => Class::Permanent,
    }
}

/// Bounds of the retries of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first backoff; it doubles after every failure...
    pub initial: Duration,
    /// ...up to this ceiling.
    pub max: Duration,
    /// Time from the first attempt after which a record is given up (dead-lettered). Zero
    /// means a retryable failure is given up at once.
    pub max_duration: Duration,
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Wait this long, then try again.
    Retry(Duration),
    /// Wait this long (never past the budget), then give the record up without another try.
    GiveUp(Duration),
}

impl RetryPolicy {
    /// The backoff ceiling after `failures` failures (1 = after the first attempt):
    /// `min(max, initial * 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// A full-jitter backoff: uniformly random in `0..=ceiling(failures)`, so that many
    /// clients failing together do not retry together.
    pub fn backoff(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }

    /// The plan after the `failures`-th retryable failure, `elapsed` after the first attempt
    /// began, with the receiver's `Retry-After` if it sent one.
    ///
    /// The next try is never earlier than `Retry-After` (it is a floor, not capped by `max`:
    /// a receiver that asks for time gets it), and never later than the budget. When
    /// `Retry-After` points past the budget, the record waits out the budget and is given up
    /// without another try; that keeps a rate-limited receiver from being hammered and keeps
    /// a failing stream from flooding the dead-letter topic. When only the backoff overshoots,
    /// the last try happens at the end of the budget.
    pub fn plan(&self, failures: u32, elapsed: Duration, retry_after: Option<Duration>) -> Plan {
        let remaining = self.max_duration.saturating_sub(elapsed);
        if remaining.is_zero() {
            return Plan::GiveUp(Duration::ZERO);
        }
        match retry_after {
            Some(asked) if asked > remaining => Plan::GiveUp(remaining),
            asked => {
                let delay = self.backoff(failures).max(asked.unwrap_or_default());
                Plan::Retry(delay.min(remaining))
            }
        }
    }
}

/// A `Retry-After` value: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, relative to `now`; a past date is zero). `None` when it is
/// neither, in which case the plain backoff applies.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: SECOND,
            max: 60 * SECOND,
            max_duration: 600 * SECOND,
        }
    }

    #[test]
    fn success_retryable_and_permanent_statuses_are_told_apart() {
        for (status, class) in [
            (200, Class::Delivered),
            (202, Class::Delivered),
            (204, Class::Delivered),
            (408, Class::Retryable),
            (425, Class::Retryable),
            (429, Class::Retryable),
            (500, Class::Retryable),
            (502, Class::Retryable),
            (503, Class::Retryable),
            (504, Class::Retryable),
            (301, Class::Permanent),
            (302, Class::Permanent),
            (400, Class::Permanent),
            (401, Class::Permanent),
            (403, Class::Permanent),
            (404, Class::Permanent),
            (409, Class::Permanent),
            (413, Class::Permanent),
            (422, Class::Permanent),
        ] {
            assert_eq!(
                classify(StatusCode::from_u16(status).unwrap()),
                class,
                "{status}"
            );
        }
    }

    #[test]
    fn the_backoff_ceiling_doubles_up_to_the_maximum() {
        let policy = policy();
        let ceilings: Vec<u64> = (1..=9).map(|n| policy.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(policy.ceiling(u32::MAX), 60 * SECOND, "no overflow");
    }

    #[test]
    fn jittered_backoffs_stay_within_zero_and_the_ceiling_and_spread_out() {
        let policy = policy();
        for failures in 1..=12 {
            let samples: Vec<Duration> = (0..200).map(|_| policy.backoff(failures)).collect();
            assert!(samples.iter().all(|d| *d <= policy.ceiling(failures)));
            if failures >= 3 {
                let distinct: std::collections::HashSet<_> = samples.iter().collect();
                assert!(distinct.len() > 50, "full jitter spreads retries out");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_not_capped_by_the_maximum_backoff() {
        let policy = policy();
        assert_eq!(
            policy.plan(1, SECOND, Some(120 * SECOND)),
            Plan::Retry(120 * SECOND)
        );
        let Plan::Retry(delay) = policy.plan(9, SECOND, Some(2 * SECOND)) else {
            panic!("retries")
        };
        assert!(delay >= 2 * SECOND && delay <= 60 * SECOND);
    }

    #[test]
    fn retry_after_beyond_the_budget_waits_out_the_budget_then_gives_up() {
        let policy = policy();
        assert_eq!(
            policy.plan(1, 590 * SECOND, Some(3600 * SECOND)),
            Plan::GiveUp(10 * SECOND)
        );
    }

    #[test]
    fn the_last_try_happens_at_the_end_of_the_budget() {
        let policy = policy();
        let Plan::Retry(delay) = policy.plan(20, 599 * SECOND, None) else {
            panic!("retries")
        };
        assert!(delay <= SECOND);
        assert_eq!(
            policy.plan(21, 600 * SECOND, None),
            Plan::GiveUp(Duration::ZERO)
        );
    }

    #[test]
    fn a_zero_budget_never_retries() {
        let policy = RetryPolicy {
            max_duration: Duration::ZERO,
            ..policy()
        };
        assert_eq!(
            policy.plan(1, Duration::ZERO, None),
            Plan::GiveUp(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_parses_delay_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(120 * SECOND));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(90 * SECOND)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for garbage in ["", "-1", "1.5", "soon", "Wed, 21 Oct 2015"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }
}

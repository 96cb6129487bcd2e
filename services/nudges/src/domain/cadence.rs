//! When a shop's nudges are due: the steps after an abandonment, and optional quiet hours in
//! the shop's local time (a fixed UTC offset) that push a step to their end.

use std::time::Duration;

/// At most this many steps per sequence (the `step` metric label stays bounded).
pub const MAX_STEPS: usize = 10;

/// A validated cadence: 1 to [`MAX_STEPS`] strictly increasing delays after the abandonment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(Vec<Duration>);

impl Steps {
    pub fn new(delays: Vec<Duration>) -> Result<Steps, String> {
        if delays.is_empty() || delays.len() > MAX_STEPS {
            return Err(format!("must name 1 to {MAX_STEPS} steps"));
        }
        if delays.windows(2).any(|w| w[0] >= w[1]) {
            return Err("steps must increase (e.g. 1h,24h,72h)".into());
        }
        Ok(Steps(delays))
    }

    /// Parses `1h,24h,72h`.
    pub fn parse(text: &str) -> Result<Steps, String> {
        let delays = text
            .split(',')
            .map(|part| aftercart_runtime::config::parse_duration(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Steps::new(delays)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Due times (ms) of every step of an abandonment at `abandoned_at_ms`.
    pub fn due_times(&self, abandoned_at_ms: i64) -> Vec<i64> {
        self.0
            .iter()
            .map(|d| abandoned_at_ms.saturating_add(d.as_millis() as i64))
            .collect()
    }
}

/// Due times (ms) of every step after quiet hours. A step that would fall due with or before
/// the one before it (both pushed to the end of the same quiet hours) keeps its gap to it, so
/// two steps never fall due together (the earlier would be skipped as late); other steps stay
/// where the cadence puts them.
pub fn schedule(steps: &Steps, abandoned_at_ms: i64, quiet: Option<QuietHours>) -> Vec<i64> {
    let defer = |at: i64| quiet.map_or(at, |q| q.defer(at));
    let mut due: Vec<i64> = Vec::with_capacity(steps.len());
    // (planned, due) of the step before.
    let mut before: Option<(i64, i64)> = None;
    for planned in steps.due_times(abandoned_at_ms) {
        let mut at = defer(planned);
        if let Some((p, d)) = before {
            if at <= d {
                at = defer(d.saturating_add(planned.saturating_sub(p)));
            }
        }
        due.push(at);
        before = Some((planned, at));
    }
    due
}

/// Moves step `from` of `due` to `to`, later than it was (it came to be sent in quiet hours),
/// and each later step that would then fall due with or before the one before it to keep the
/// gap it had to that one, after quiet hours, as [`schedule`] places steps.
pub fn postpone(due: &mut [i64], from: usize, to: i64, quiet: Option<QuietHours>) {
    let defer = |at: i64| quiet.map_or(at, |q| q.defer(at));
    let Some(first) = due.get_mut(from) else {
        return;
    };
    // (was, is) of the step before.
    let mut before = (*first, to);
    *first = to;
    for at in due.iter_mut().skip(from + 1) {
        let was = *at;
        if *at <= before.1 {
            *at = defer(before.1.saturating_add(was.saturating_sub(before.0)));
        }
        before = (was, *at);
    }
}

/// Local hours no nudge is sent in, e.g. 21:00 to 08:00 at UTC+01:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Minutes after local midnight.
    start: u32,
    end: u32,
    /// The shop's offset from UTC, in minutes.
    offset: i32,
}

const DAY_MS: i64 = 86_400_000;

impl QuietHours {
    /// `range` like `21:00-08:00`, `utc_offset` like `+01:00` or `-05:30`.
    pub fn parse(range: &str, utc_offset: &str) -> Result<QuietHours, String> {
        let clock = |text: &str| -> Result<u32, String> {
            let (h, m) = text
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("{text:?} is not HH:MM"))?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| format!("{text:?} is not HH:MM"))?,
                m.parse().map_err(|_| format!("{text:?} is not HH:MM"))?,
            );
            if h > 23 || m > 59 {
                return Err(format!("{text:?} is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| format!("{range:?} is not HH:MM-HH:MM"))?;
        let (start, end) = (clock(start)?, clock(end)?);
        if start == end {
            return Err("quiet hours must not start and end at the same time".into());
        }
        let offset = utc_offset.trim();
        let sign = match offset.chars().next() {
            Some('+') => 1,
            Some('-') => -1,
            _ => return Err(format!("{offset:?} is not an offset like +01:00")),
        };
        let minutes = clock(&offset[1..])? as i32;
        if minutes > 14 * 60 {
            return Err(format!("{offset:?} is beyond ±14:00"));
        }
        Ok(QuietHours {
            start,
            end,
            offset: sign * minutes,
        })
    }

    /// `at_ms`, or the end of the quiet hours it falls in.
    pub fn defer(&self, at_ms: i64) -> i64 {
        let local = at_ms + i64::from(self.offset) * 60_000;
        let minute = (local.rem_euclid(DAY_MS) / 60_000) as u32;
        let quiet = if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        };
        if !quiet {
            return at_ms;
        }
        let day_start = local - local.rem_euclid(DAY_MS);
        let mut end = day_start + i64::from(self.end) * 60_000;
        if end <= local {
            end += DAY_MS;
        }
        end - i64::from(self.offset) * 60_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn steps_parse_and_must_increase() {
        let steps = Steps::parse("1h, 24h,72h").unwrap();
        assert_eq!(steps.due_times(0), [HOUR, 24 * HOUR, 72 * HOUR]);
        assert!(Steps::parse("24h,1h").is_err());
        assert!(Steps::parse("").is_err());
        assert!(Steps::parse("1h,1h").is_err());
        assert!(Steps::parse(&["1h"; 11].join(",")).is_err());
    }

    #[test]
    fn quiet_hours_across_midnight_push_to_their_local_end() {
        // 21:00-08:00 at UTC+01:00: 22:30 UTC is 23:30 local, quiet until 08:00 local = 07:00 UTC.
        let quiet = QuietHours::parse("21:00-08:00", "+01:00").unwrap();
        let at = 22 * HOUR + HOUR / 2;
        assert_eq!(quiet.defer(at), DAY_MS + 7 * HOUR);
        // 12:00 UTC is 13:00 local: not quiet.
        assert_eq!(quiet.defer(12 * HOUR), 12 * HOUR);
        // 05:00 UTC is 06:00 local: quiet until 07:00 UTC the same day.
        assert_eq!(quiet.defer(5 * HOUR), 7 * HOUR);
    }

    #[test]
    fn a_step_deferred_by_quiet_hours_leaves_later_steps_where_they_were() {
        // 21:00-08:00 UTC, abandoned at 20:30: step 1 (21:30) goes to 08:00; step 2 (20:30 the
        // next day) is not quiet and after step 1, so it stays where the cadence put it.
        let quiet = QuietHours::parse("21:00-08:00", "+00:00").unwrap();
        let steps = Steps::parse("1h,24h").unwrap();
        let at = 20 * HOUR + HOUR / 2;
        assert_eq!(
            schedule(&steps, at, Some(quiet)),
            [DAY_MS + 8 * HOUR, DAY_MS + 20 * HOUR + HOUR / 2]
        );
        assert_eq!(schedule(&steps, at, None), steps.due_times(at));
    }

    #[test]
    fn a_postponed_step_pushes_only_the_later_steps_it_reaches() {
        let quiet = QuietHours::parse("21:00-08:00", "+00:00").unwrap();
        // Steps at 20:00, 20:30 and 20:00 the next day; the first postponed to 08:00: the
        // second keeps its 30 minutes after it, the third (later still) stays.
        let mut due = [20 * HOUR, 20 * HOUR + HOUR / 2, DAY_MS + 20 * HOUR];
        postpone(&mut due, 0, DAY_MS + 8 * HOUR, Some(quiet));
        assert_eq!(
            due,
            [
                DAY_MS + 8 * HOUR,
                DAY_MS + 8 * HOUR + HOUR / 2,
                DAY_MS + 20 * HOUR
            ]
        );
        // A gap that lands in quiet hours again is pushed to their end.
        let mut due = [20 * HOUR, 20 * HOUR + HOUR / 2];
        postpone(&mut due, 0, 20 * HOUR + 3 * HOUR / 4, Some(quiet));
        assert_eq!(due, [20 * HOUR + 3 * HOUR / 4, DAY_MS + 8 * HOUR]);
        // Steps before the postponed one are left as they were; an index past the end is a no-op.
        let mut due = [HOUR, 2 * HOUR];
        postpone(&mut due, 1, 3 * HOUR, None);
        assert_eq!(due, [HOUR, 3 * HOUR]);
        postpone(&mut due, 2, 9 * HOUR, None);
        assert_eq!(due, [HOUR, 3 * HOUR]);
    }

    #[test]
    fn quiet_hours_within_a_day_and_negative_offsets() {
        let quiet = QuietHours::parse("12:00-14:00", "-05:00").unwrap();
        // 18:00 UTC is 13:00 local: quiet until 14:00 local = 19:00 UTC.
        assert_eq!(quiet.defer(18 * HOUR), 19 * HOUR);
        assert_eq!(quiet.defer(20 * HOUR), 20 * HOUR);
        assert!(QuietHours::parse("25:00-01:00", "+00:00").is_err());
        assert!(QuietHours::parse("21:00-08:00", "01:00").is_err());
    }
}

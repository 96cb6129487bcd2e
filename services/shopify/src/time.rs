//! Shopify timestamps: RFC 3339 with any UTC offset in, RFC 3339 UTC with milliseconds out.

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Milliseconds since the epoch of an RFC 3339 timestamp with any offset (`2021-12-31T19:00:00-05:00`).
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    // humantime only reads UTC: fold a numeric offset into the time first.
    // The offset is the last 6 bytes only when they start on a character boundary: payload
    // text such as `é12345` would otherwise panic the consumer (found by fuzzing).
    let offset_at = text
        .len()
        .checked_sub(6)
        .filter(|at| text.is_char_boundary(*at));
    let (base, offset_minutes) = match offset_at.map(|at| text.split_at(at)) {
        Some((base, offset))
            if (offset.starts_with('+') || offset.starts_with('-'))
                && offset.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..6].parse().ok()?;
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (format!("{base}Z"), sign * (hours * 60 + minutes))
        }
        _ => (text.to_string(), 0),
    };
    let utc = humantime::parse_rfc3339_weak(base.trim_end_matches('Z')).ok()?;
    let ms = utc.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(ms - offset_minutes * 60_000)
}

/// Milliseconds since the epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shopify_timestamps_with_offsets_parse_to_utc() {
        let utc = parse_time_ms("2022-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_time_ms("2021-12-31T19:00:00-05:00"), Some(utc));
        assert_eq!(parse_time_ms("2022-01-01T01:00:00+01:00"), Some(utc));
        assert_eq!(parse_time_ms("2022-01-01T00:00:00.000Z"), Some(utc));
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(rfc3339(utc), "2022-01-01T00:00:00.000Z");
    }

    #[test]
    fn text_with_a_multibyte_character_where_an_offset_would_start_is_refused() {
        assert_eq!(parse_time_ms("é12345"), None);
        assert_eq!(parse_time_ms("2022-01-01T00:00:0€:00"), None);
        assert_eq!(parse_time_ms("Shop.E\u{83}\u{9e}\u{92}"), None);
    }
}

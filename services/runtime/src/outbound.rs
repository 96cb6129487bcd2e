//! The one rule for outbound URLs that receive personal data or credentials (delivery webhooks,
//! ad platform APIs, the Shopify Admin API): `https`, unless `AFTERCART_ALLOW_INSECURE_HTTP`
//! allows plain `http` for local development and tests.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::parse_switch;

/// The shared switch every service reads.
pub const ALLOW_INSECURE_HTTP: &str = "AFTERCART_ALLOW_INSECURE_HTTP";

/// What the process decided, which wins over the environment: the command line resolved the
/// flag (given on the command line, it overrides the variable), or `aftercart dev` allowed
/// `http` for its own local destinations.
static DECIDED: AtomicU8 = AtomicU8::new(UNDECIDED);
const UNDECIDED: u8 = 0;
const REFUSED: u8 = 1;
const ALLOWED: u8 = 2;

/// Allows `http` for the rest of this process (`aftercart dev`, whose destinations are local).
pub fn allow_insecure_http() {
    decide_insecure_http(true);
}

/// Records the command line's resolved value of the switch (flag over variable), so that
/// `--allow-insecure-http=false` holds even where the variable says `true`.
pub fn decide_insecure_http(allowed: bool) {
    DECIDED.store(if allowed { ALLOWED } else { REFUSED }, Ordering::Relaxed);
}

/// Whether plain `http` is allowed: as the process decided ([`decide_insecure_http`],
/// [`allow_insecure_http`]), else by the environment switch. An unreadable switch value is an
/// error naming the setting.
pub fn insecure_http_allowed() -> Result<bool, String> {
    match DECIDED.load(Ordering::Relaxed) {
        ALLOWED => return Ok(true),
        REFUSED => return Ok(false),
        _ => {}
    }
    match std::env::var(ALLOW_INSECURE_HTTP) {
        Ok(value) => {
            parse_switch(&value).map_err(|problem| format!("{ALLOW_INSECURE_HTTP}: {problem}"))
        }
        Err(std::env::VarError::NotPresent) => Ok(false),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("{ALLOW_INSECURE_HTTP}: is not UTF-8"))
        }
    }
}

/// Checks a URL (or URL template) that will receive personal data or credentials: `https://`,
/// or `http://` when insecure HTTP is allowed. The message names the switch, never the URL
/// (it may hold a token); the caller records it under the URL's own setting name.
pub fn check_outbound_url(url: &str) -> Result<(), String> {
    check_with(url, insecure_http_allowed()?)
}

fn check_with(url: &str, allow_http: bool) -> Result<(), String> {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    if lower.starts_with("http://") {
        if allow_http {
            return Ok(());
        }
        return Err(format!(
            "must be https:// (it receives personal data or credentials); plain http:// only with {ALLOW_INSECURE_HTTP}=true, for local development and tests"
        ));
    }
    Err("must be an https:// URL".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_always_passes_and_http_only_when_allowed() {
        assert_eq!(check_with("https://example.com/x", false), Ok(()));
        assert_eq!(check_with("HTTPS://example.com/x", false), Ok(()));
        let refused = check_with("http://example.com/x", false).unwrap_err();
        assert!(refused.contains(ALLOW_INSECURE_HTTP), "{refused}");
        assert!(!refused.contains("example.com"), "{refused}");
        assert_eq!(check_with("http://127.0.0.1:9/x", true), Ok(()));
        assert!(check_with("ftp://example.com", true).is_err());
        assert!(check_with("example.com", true).is_err());
    }
}

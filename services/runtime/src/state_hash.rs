//! Keyed hashes (HMAC-SHA256) of personal data used as fingerprints and state keys: emails,
//! phones, names with addresses, browser IPs. A bare SHA-256 of an IPv4 address or a phone is
//! reversed by trying every value in seconds; without the key nobody can. Every service shares
//! one key, `AFTERCART_STATE_HASH_KEY` (or `AFTERCART_STATE_HASH_KEY_FILE`), so fingerprints
//! agree across services and restarts: changing it makes every stored fingerprint unknown.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const STATE_HASH_KEY: &str = "AFTERCART_STATE_HASH_KEY";
pub const STATE_HASH_KEY_FILE: &str = "AFTERCART_STATE_HASH_KEY_FILE";
/// Shorter keys are refused: the key is what makes the hash unguessable.
const MIN_KEY_BYTES: usize = 16;

/// The key of the keyed hashes. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StateHasher {
    key: Vec<u8>,
}

impl fmt::Debug for StateHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateHasher(<redacted>)")
    }
}

/// The key's settings, flattened into every service that hashes state (`aftercart dev` holds
/// them once and hands them to each service).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StateHashArgs {
    /// Secret of the keyed hashes (HMAC-SHA256) that stand for emails, phones, names with
    /// addresses and browser IPs in state; shared by every service (required; keep it stable:
    /// a new key makes every stored fingerprint unknown). Prefer the _FILE variant.
    // The nudges' former flag names (their variables are in `renamed`) still work.
    #[arg(
        long,
        alias = "nudges-identity-key",
        env = STATE_HASH_KEY,
        hide_env_values = true
    )]
    pub state_hash_key: Option<String>,

    /// File holding the state hash key (e.g. a mounted Kubernetes Secret).
    #[arg(long, alias = "nudges-identity-key-file", env = STATE_HASH_KEY_FILE)]
    pub state_hash_key_file: Option<String>,
}

impl StateHashArgs {
    /// The hasher these settings name; see [`StateHasher::from_settings`].
    pub fn hasher(&self, dev_default: Option<&str>) -> Result<StateHasher, String> {
        StateHasher::from_settings(
            self.state_hash_key.as_deref(),
            self.state_hash_key_file.as_deref(),
            dev_default,
        )
    }
}

impl StateHasher {
    /// A hasher with this key; at least 16 bytes.
    pub fn new(key: impl Into<Vec<u8>>) -> Result<StateHasher, String> {
        let key = key.into();
        if key.len() < MIN_KEY_BYTES {
            return Err(format!("must be at least {MIN_KEY_BYTES} bytes"));
        }
        Ok(StateHasher { key })
    }

    /// The key from the settings: `value` (`AFTERCART_STATE_HASH_KEY`) or the file `file`
    /// names (`AFTERCART_STATE_HASH_KEY_FILE`, a trailing newline ignored). Without either,
    /// `dev_default` (the `aftercart dev` key) or an error naming the setting: production has
    /// no default. Messages name the setting, never the key.
    pub fn from_settings(
        value: Option<&str>,
        file: Option<&str>,
        dev_default: Option<&str>,
    ) -> Result<StateHasher, String> {
        let value = value.filter(|v| !v.is_empty());
        let file = file.map(str::trim).filter(|v| !v.is_empty());
        let key = match (value, file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{STATE_HASH_KEY}: set it or {STATE_HASH_KEY_FILE}, not both"
                ))
            }
            (Some(value), None) => value.to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|error| format!("{STATE_HASH_KEY_FILE}: cannot read {path}: {error}"))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            (None, None) => match dev_default {
                Some(key) => key.to_string(),
                None => {
                    return Err(format!(
                        "{STATE_HASH_KEY}: required (or {STATE_HASH_KEY_FILE}): the secret of the keyed hashes that stand for emails, phones and IPs in state"
                    ))
                }
            },
        };
        StateHasher::new(key.into_bytes()).map_err(|problem| format!("{STATE_HASH_KEY}: {problem}"))
    }

    /// 16 bytes of HMAC-SHA256 over `<domain>/<kind>/<value>`, in hex: short, stable for one
    /// key, not reversible without it. `domain` keeps services' hashes of one value apart.
    pub fn fingerprint(&self, domain: &str, kind: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(format!("aftercart/{domain}/{kind}/{value}").as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_the_key_and_never_show_it() {
        let a = StateHasher::new(*b"0123456789abcdef").unwrap();
        let b = StateHasher::new(*b"0123456789abcdeX").unwrap();
        let ip = a.fingerprint("referrals", "ip", "203.0.113.7");
        assert_eq!(ip.len(), 32);
        assert_eq!(ip, a.fingerprint("referrals", "ip", "203.0.113.7"));
        assert_ne!(ip, b.fingerprint("referrals", "ip", "203.0.113.7"));
        assert_ne!(ip, a.fingerprint("referrals", "email", "203.0.113.7"));
        assert!(!format!("{a:?}").contains("0123"));
        assert!(StateHasher::new(*b"short").is_err());
    }

    #[test]
    fn production_requires_a_key_and_dev_has_one() {
        let missing = StateHasher::from_settings(None, None, None).unwrap_err();
        assert!(missing.contains(STATE_HASH_KEY), "{missing}");
        assert!(StateHasher::from_settings(None, None, Some("a-dev-key-of-16-bytes")).is_ok());
        let both = StateHasher::from_settings(Some("k"), Some("/f"), None).unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let short = StateHasher::from_settings(Some("secret-short"), None, None).unwrap_err();
        assert!(!short.contains("secret-short"), "{short}");
        let file = std::env::temp_dir().join(format!("state-hash-key-{}", std::process::id()));
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let from_file = StateHasher::from_settings(None, file.to_str(), None).unwrap();
        let _ = std::fs::remove_file(&file);
        assert_eq!(
            from_file,
            StateHasher::new(*b"0123456789abcdef0123").unwrap()
        );
    }
}

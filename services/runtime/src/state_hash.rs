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
#[derive(Clone)]
pub struct StateHasher {
    key: Vec<u8>,
    /// The HMAC with the key already absorbed (its inner and outer pads hashed once), cloned
    /// for every fingerprint: a consumer takes several per record, and keying afresh each time
    /// hashed two more SHA-256 blocks per fingerprint.
    keyed: Hmac<Sha256>,
}

/// Two hashers are equal when their keys are (the keyed state follows from the key).
impl PartialEq for StateHasher {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for StateHasher {}

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
        let keyed = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key size");
        Ok(StateHasher { key, keyed })
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
        // The same bytes as `format!("aftercart/{domain}/{kind}/{value}")`, fed in pieces, and
        // the hex written into one string: no allocation but the result (this ran a `format!`
        // per hex byte, a sixth of the referrals engine's time).
        let mut mac = self.keyed.clone();
        for piece in ["aftercart/", domain, "/", kind, "/", value] {
            mac.update(piece.as_bytes());
        }
        hex(&mac.finalize().into_bytes()[..16])
    }
}

/// `bytes` in lower-case hex, written into one string: the ids and fingerprints taken per
/// record use it instead of a `format!("{b:02x}")` (an allocation) per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
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
    fn fingerprints_are_the_first_16_bytes_of_the_hmac_in_hex() {
        // Pinned values (Python's `hmac` over `aftercart/<domain>/<kind>/<value>`): stored
        // fingerprints must never change with the implementation.
        let hasher = StateHasher::new(*b"0123456789abcdef").unwrap();
        for (domain, kind, value, expected) in [
            (
                "referrals",
                "ip",
                "203.0.113.7",
                "2f4e530f9980b7054c85cf742cd45b07",
            ),
            (
                "referrals",
                "email",
                "ann@example.com",
                "61b5fd3862b7977f7ca3968e0023d1df",
            ),
            (
                "nudges",
                "phone",
                "+33 6 12 34 56 78 é",
                "2b4b656a3a140b17be6aed8f7882ae4a",
            ),
        ] {
            assert_eq!(hasher.fingerprint(domain, kind, value), expected);
        }
    }

    #[test]
    fn hex_writes_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
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

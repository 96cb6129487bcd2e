//! Per-shop secrets (Shopify access tokens, Klaviyo private keys) from a file of
//! `shop.myshopify.com=secret` lines (a mounted Kubernetes Secret): looked at again at most once a
//! second, and read again whenever its modification time or size changed, so a rotated or added
//! key is used without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use aftercart_shopify::Secret;

/// How often the file's metadata is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The secrets of every shop, by lower-case shop domain.
pub struct ShopKeys {
    path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    checked: Option<Instant>,
    /// Modification time and size of the file as last read.
    seen: Option<(SystemTime, u64)>,
    tokens: HashMap<String, Secret>,
}

impl std::fmt::Debug for ShopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopKeys")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Parses the file: `shop=token` a line; blank lines and `#` comments are skipped. A line
/// that is not of that form is reported by number (never by content: it may hold a token).
pub fn parse(text: &str) -> (HashMap<String, Secret>, Vec<usize>) {
    let mut tokens = HashMap::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((shop, token)) if !shop.trim().is_empty() && !token.trim().is_empty() => {
                tokens.insert(shop.trim().to_ascii_lowercase(), Secret::new(token.trim()));
            }
            _ => bad.push(n + 1),
        }
    }
    (tokens, bad)
}

impl ShopKeys {
    /// Reads the file now: an unreadable file at start is a configuration error.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<ShopKeys> {
        let path = path.into();
        std::fs::metadata(&path)?;
        let tokens = ShopKeys {
            path,
            state: Mutex::new(Loaded::default()),
        };
        tokens.refresh(&mut tokens.state.lock().expect("keys lock"));
        Ok(tokens)
    }

    /// The token of `shop`, from the file as it is now (at most a second old).
    pub fn get(&self, shop: &str) -> Option<Secret> {
        let mut state = self.state.lock().expect("keys lock");
        if state.checked.is_none_or(|at| at.elapsed() >= CHECK_EVERY) {
            self.refresh(&mut state);
        }
        state.tokens.get(&shop.to_ascii_lowercase()).cloned()
    }

    fn refresh(&self, state: &mut Loaded) {
        state.checked = Some(Instant::now());
        let seen = match std::fs::metadata(&self.path) {
            Ok(meta) => (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            ),
            Err(error) => {
                // A Secret being swapped may be absent for a moment: keep the tokens we have.
                tracing::warn!(path = %self.path.display(), %error, "Cannot read a per-shop keys file; keeping the keys loaded before.");
                return;
            }
        };
        if state.seen == Some(seen) {
            return;
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let (tokens, bad) = parse(&text);
                if !bad.is_empty() {
                    tracing::warn!(path = %self.path.display(), lines = ?bad, "Skipping lines of a per-shop keys file that are not shop=key.");
                }
                tracing::info!(path = %self.path.display(), shops = tokens.len(), "Loaded per-shop keys.");
                state.tokens = tokens;
                state.seen = Some(seen);
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "Cannot read a per-shop keys file; keeping the keys loaded before.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_shop_equals_token_with_comments_and_blanks_skipped() {
        let (tokens, bad) =
            parse("# tokens\n\nA.myshopify.com = shpat_1\nb.myshopify.com=shpat_2\nnonsense\n=x\n");
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens["a.myshopify.com"].expose(), "shpat_1");
        assert_eq!(tokens["b.myshopify.com"].expose(), "shpat_2");
        assert_eq!(bad, [5, 6]);
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("aftercart-shop-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "a.myshopify.com=one\n").unwrap();
        let tokens = ShopKeys::open(&path).unwrap();
        assert_eq!(tokens.get("a.myshopify.com").unwrap().expose(), "one");
        assert!(tokens.get("b.myshopify.com").is_none());
        // A different size is a change even within the same mtime tick.
        std::fs::write(&path, "a.myshopify.com=one\nb.myshopify.com=second\n").unwrap();
        tokens.state.lock().unwrap().checked = None;
        assert_eq!(tokens.get("b.myshopify.com").unwrap().expose(), "second");
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! The `file` destination for local use: each message's body as `<dir>/<shop>/<event id>.json`,
//! written to a temporary name, fsynced and renamed, so a reader never sees half a file and a
//! message sent again after a crash replaces itself instead of appearing twice.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::Message;
use crate::sink::Outcome;

#[derive(Debug, Clone)]
pub struct FileDestination {
    dir: PathBuf,
}

impl FileDestination {
    pub fn new(dir: PathBuf) -> FileDestination {
        FileDestination { dir }
    }

    /// Where `message` is written.
    pub fn path_of(&self, message: &Message) -> PathBuf {
        self.dir
            .join(file_name(&message.shop))
            .join(format!("{}.json", file_name(&message.event_id)))
    }

    /// Writes the message, retrying a disk error every second until it succeeds or `stop`.
    pub async fn send(&self, message: &Message, stop: &CancellationToken) -> Outcome {
        let path = self.path_of(message);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (target, body) = (path.clone(), message.body.clone());
            let written = tokio::task::spawn_blocking(move || write_atomically(&target, &body))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the file writer panicked")));
            match written {
                Ok(()) => {
                    return Outcome::Delivered {
                        attempts,
                        response: Bytes::new(),
                    }
                }
                Err(error) => {
                    tracing::error!(dir = %self.dir.display(), %error, "Cannot write a message file; retrying.");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                () = stop.cancelled() => return Outcome::Stopped,
            }
        }
    }
}

/// A name safe for any file system: ASCII letters, digits, `.`, `-` and `_`; anything else `_`.
fn file_name(text: &str) -> String {
    let name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.trim_start_matches('.') {
        "" => "_".to_string(),
        trimmed => trimmed.to_string(),
    }
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a message path has a directory");
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(body)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_safe_characters_and_never_climb_out_of_the_directory() {
        assert_eq!(file_name("shop.myshopify.com"), "shop.myshopify.com");
        assert_eq!(file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(file_name(".."), "_");
        assert_eq!(file_name("nudge:ab/1"), "nudge_ab_1");
    }
}

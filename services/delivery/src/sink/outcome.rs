//! How a delivery ended, and why a failed one failed.

use bytes::Bytes;
use http::StatusCode;

/// How a delivery ended.
#[derive(Debug)]
pub enum Outcome {
    /// Accepted after `attempts` tries, with the start of the accepting answer's body.
    Delivered { attempts: u32, response: Bytes },
    /// Refused for good, or out of retry budget: dead-letter it.
    Failed(Failure),
    /// The stop token fired first: the record is not delivered, so do not commit it.
    Stopped,
    /// Not to be sent at all (the sink's own rule, e.g. too old to be of use; counted by the
    /// sink): its offset is stored, nothing is dead-lettered.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A permanent status (3xx, or 4xx other than 408, 425, 429).
    Rejected,
    /// Retryable failures until the retry budget ran out.
    RetriesExhausted,
}

/// Why a record could not be delivered. `Debug` shows the response's length, not its bytes.
pub struct Failure {
    pub kind: FailureKind,
    /// The last answer's status; `None` when the last attempt got none (timeout, connection).
    pub status: Option<StatusCode>,
    /// `timeout`, `connect` or `transport` when the last attempt got no answer.
    pub error: Option<&'static str>,
    /// The first KiB of the last answer's body.
    pub response: Bytes,
    pub attempts: u32,
}

impl Failure {
    /// The dead-letter reason: `http_status_<code>`, `retries_exhausted`, or `refused` for a
    /// record aftercart refused itself (no status to blame: the why is in `response`).
    pub fn reason(&self) -> String {
        match (self.kind, self.status) {
            (FailureKind::Rejected, Some(status)) => format!("http_status_{}", status.as_u16()),
            (FailureKind::Rejected, None) => "refused".to_string(),
            _ => "retries_exhausted".to_string(),
        }
    }

    /// Refused by aftercart itself, with no status to blame ([`crate::message::refused`]).
    pub fn refused_by_aftercart(&self) -> bool {
        self.kind == FailureKind::Rejected && self.status.is_none()
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failure")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("error", &self.error)
            .field("response_bytes", &self.response.len())
            .field("attempts", &self.attempts)
            .finish()
    }
}

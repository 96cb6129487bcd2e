//! Reading request bodies within a global memory budget.
//!
//! A body must be held whole before its signature can be checked, so every unauthenticated
//! client can make the ingress hold up to AFTERCART_INGRESS_MAX_BODY_BYTES: ~130 slow 4 MiB bodies
//! would fill a 512 MiB pod. The budget bounds the bytes all bodies in flight may hold together;
//! a request that does not fit gets 503 with Retry-After instead of memory.
//!
//! A body reserves as its buffer grows with the bytes that arrived (doubling, capped at its
//! Content-Length or the limit), never what it only announces: reserving a Content-Length up
//! front let a client that sent one byte of a 64 KiB body hold 64 KiB of budget, so ~2000
//! trickling connections held all of it for a few hundred bytes each. Large bodies (above
//! [`SMALL_BODY_BYTES`]) may take at most three quarters of the budget together: the last
//! quarter stays open to ordinary webhooks (a few KiB), so slow large bodies cannot starve them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::http::Reply;
use crate::metrics::IngressMetrics;

/// Bodies up to this size may use the whole budget; larger ones only three quarters of it.
pub const SMALL_BODY_BYTES: usize = 64 << 10;

/// The first buffer of a body; it grows in powers of two from there. Small, because it is what
/// a client that sent one byte holds.
const FIRST_BUFFER: usize = 2 << 10;

/// Bytes reserved by the bodies in flight, shared by every connection.
pub struct BodyBudget {
    limit: usize,
    /// What large bodies may hold together.
    large_limit: usize,
    held: Mutex<Held>,
    metrics: IngressMetrics,
}

#[derive(Default)]
struct Held {
    all: usize,
    large: usize,
}

/// Bytes one body holds; given back when dropped (with the body it paid for).
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(limit: usize, metrics: IngressMetrics) -> Arc<Self> {
        metrics.body_budget(limit);
        Arc::new(Self {
            limit,
            large_limit: limit / 4 * 3,
            held: Mutex::new(Held::default()),
            metrics,
        })
    }

    /// Reserves `bytes`, or `None` when they do not fit.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        };
        reservation.grow_to(bytes).then_some(reservation)
    }

    /// Bytes held by the bodies in flight.
    pub fn held(&self) -> usize {
        self.lock().all
    }

    /// Moves one reservation from `from` to `to` bytes if the budget allows.
    fn resize(&self, from: usize, to: usize) -> bool {
        let mut held = self.lock();
        let all = held.all - from + to;
        let large = held.large - large_part(from) + large_part(to);
        if to > from && (all > self.limit || large > self.large_limit) {
            return false;
        }
        held.all = all;
        held.large = large;
        self.metrics.body_bytes_held(all);
        true
    }

    /// Nothing runs under the lock that can panic; a poisoned lock still holds sound numbers.
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The part of a reservation counted against the large bodies' share.
fn large_part(bytes: usize) -> usize {
    if bytes > SMALL_BODY_BYTES {
        bytes
    } else {
        0
    }
}

impl Reservation {
    /// Grows the reservation to `bytes` in all; false (nothing changed) when it does not fit.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let grown = self.budget.resize(self.bytes, bytes);
        if grown {
            self.bytes = bytes;
        }
        grown
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.resize(self.bytes, 0);
    }
}

/// A body read whole, and the budget it holds until dropped.
pub struct ReadBody {
    pub bytes: Bytes,
    pub reservation: Reservation,
}

/// Reads the whole raw body within `max_bytes`, `timeout` and the budget. Refusals are
/// counted by reason; the connection is then closed by hyper, lingering (see `linger`) so the
/// client can read the answer.
pub async fn read_body(
    budget: &Arc<BodyBudget>,
    metrics: &IngressMetrics,
    headers: &HeaderMap,
    body: Incoming,
    max_bytes: usize,
    timeout: Duration,
) -> Result<ReadBody, Reply> {
    let refuse = |reply: Reply, reason: &'static str| {
        metrics.body_refused(reason);
        reply
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_bytes as u64) {
        return Err(refuse(Reply::PayloadTooLarge, "too_large"));
    }
    // What the buffer may grow to: the announced length, or the limit.
    let most = declared.map_or(max_bytes, |length| length as usize);
    // Nothing yet: the budget is asked as bytes arrive (an empty reservation always fits).
    let Some(mut reservation) = budget.reserve(0) else {
        return Err(refuse(Reply::BodyBudgetExhausted, "budget"));
    };
    let mut buffer = BytesMut::new();
    let read = async {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| (Reply::BodyUnreadable, "unreadable"))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers carry nothing the ingress keeps
            };
            let needed = buffer.len() + data.len();
            if needed > max_bytes {
                return Err((Reply::PayloadTooLarge, "too_large"));
            }
            if needed > buffer.capacity() {
                // Powers of two (at least doubling), capped at the announced length or the
                // limit; the budget pays for capacity, not length.
                let capacity = needed
                    .next_power_of_two()
                    .max(FIRST_BUFFER)
                    .min(most.max(needed));
                if !reservation.grow_to(capacity) {
                    return Err((Reply::BodyBudgetExhausted, "budget"));
                }
                // A fresh buffer of exactly this capacity: growing in place (Vec::reserve) may
                // round up to twice the old capacity, past what the budget paid for.
                let mut grown = BytesMut::with_capacity(capacity);
                grown.extend_from_slice(&buffer);
                buffer = grown;
            }
            buffer.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_elapsed) => Err(refuse(Reply::BodyTimeout, "timeout")),
        Ok(Err((reply, reason))) => Err(refuse(reply, reason)),
        Ok(Ok(())) => Ok(ReadBody {
            bytes: buffer.freeze(),
            reservation,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Arc<BodyBudget> {
        let metrics = IngressMetrics::register(&prometheus::Registry::new()).unwrap();
        BodyBudget::new(limit, metrics)
    }

    #[test]
    fn reservations_are_given_back_when_dropped() {
        let budget = budget(1 << 20);
        let first = budget.reserve(600 << 10).unwrap();
        assert!(
            budget.reserve(200 << 10).is_none(),
            "large share is 768 KiB"
        );
        drop(first);
        assert_eq!(budget.held(), 0);
        assert!(budget.reserve(700 << 10).is_some());
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn large_bodies_leave_a_quarter_to_small_ones() {
        let budget = budget(1 << 20);
        let large: Vec<_> = (0..3).map(|_| budget.reserve(256 << 10).unwrap()).collect();
        assert!(budget.reserve(100 << 10).is_none(), "no large share left");
        let small: Vec<_> = (0..4).map(|_| budget.reserve(64 << 10).unwrap()).collect();
        assert!(budget.reserve(1).is_none(), "the whole budget is held");
        drop(large);
        drop(small);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_growing_reservation_moves_into_the_large_share() {
        let budget = budget(1 << 20);
        let mut growing = budget.reserve(0).unwrap();
        assert!(growing.grow_to(64 << 10));
        assert!(growing.grow_to(700 << 10));
        assert!(!growing.grow_to(800 << 10), "beyond the large share");
        assert_eq!(budget.held(), 700 << 10);
        assert!(budget.reserve(300 << 10).is_none());
        assert!(budget.reserve(64 << 10).is_some());
        drop(growing);
        assert_eq!(budget.held(), 0);
    }
}

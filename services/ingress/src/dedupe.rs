//! The delivery dedupe window: remembers the webhook ids published recently (bounded by age and
//! count) so that Shopify's retries are answered 200 without a second record.
//!
//! Ids are stored as 128-bit digests (collisions are out of reach at any realistic window), so
//! memory per id is fixed: the map entry, its hash-table slack and the eviction queue come to
//! about 120 bytes, ~120 MB at the default 1 M ids. A delivery being
//! published holds a claim; a concurrent retry of it waits for the outcome instead of racing.
//! Each replica has its own window: consumers must still be idempotent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

type IdDigest = [u8; 16];

/// The dedupe window, shared by all connections.
pub struct Dedupe {
    window: Mutex<Window>,
    ttl: Duration,
    capacity: usize,
}

struct Window {
    slots: HashMap<IdDigest, Slot>,
    /// Published ids in publication order with their expiry: the eviction order, since every id
    /// lives for the same time.
    order: VecDeque<(IdDigest, Instant)>,
}

enum Slot {
    /// Being published; the receiver wakes waiters when the claim ends either way.
    InFlight(watch::Receiver<()>),
    /// Published; remembered until the instant.
    Published(Instant),
}

/// The answer to "may I publish this delivery?".
pub enum Claim {
    /// First sighting: publish, then `commit` the guard (dropping it releases the id).
    New(ClaimGuard),
    /// Already published within the window.
    Duplicate,
    /// Another request is publishing it right now; wait on the receiver, then claim again.
    InFlight(watch::Receiver<()>),
}

impl Dedupe {
    pub fn new(ttl: Duration, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            window: Mutex::new(Window {
                slots: HashMap::new(),
                order: VecDeque::new(),
            }),
            ttl,
            capacity,
        })
    }

    pub fn claim(self: &Arc<Self>, webhook_id: &str) -> Claim {
        self.claim_at(webhook_id, Instant::now())
    }

    fn claim_at(self: &Arc<Self>, webhook_id: &str, now: Instant) -> Claim {
        let digest = digest(webhook_id);
        let mut window = self.window.lock().expect("dedupe lock");
        window.evict(now, self.capacity);
        match window.slots.get(&digest) {
            Some(Slot::Published(until)) if *until > now => Claim::Duplicate,
            Some(Slot::InFlight(receiver)) => Claim::InFlight(receiver.clone()),
            _ => {
                let (sender, receiver) = watch::channel(());
                window.slots.insert(digest, Slot::InFlight(receiver));
                Claim::New(ClaimGuard {
                    dedupe: Arc::clone(self),
                    digest,
                    _wake_on_drop: sender,
                    committed: false,
                })
            }
        }
    }

    /// Ids remembered as published.
    pub fn len(&self) -> usize {
        self.window.lock().expect("dedupe lock").order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn finish(&self, digest: IdDigest, published: bool, now: Instant) {
        let mut window = self.window.lock().expect("dedupe lock");
        if published {
            let until = now + self.ttl;
            window.slots.insert(digest, Slot::Published(until));
            window.order.push_back((digest, until));
            window.evict(now, self.capacity);
        } else {
            window.slots.remove(&digest);
        }
    }
}

impl Window {
    fn evict(&mut self, now: Instant, capacity: usize) {
        while let Some(&(digest, until)) = self.order.front() {
            if until > now && self.order.len() <= capacity {
                break;
            }
            self.order.pop_front();
            // Only drop the slot this entry stands for (not a newer claim of the same id).
            if matches!(self.slots.get(&digest), Some(Slot::Published(u)) if *u == until) {
                self.slots.remove(&digest);
            }
        }
    }
}

/// Holds a delivery's claim while it is published. Dropping it without `commit` releases the
/// id so a retry can publish it; either way waiters wake up.
pub struct ClaimGuard {
    dedupe: Arc<Dedupe>,
    digest: IdDigest,
    _wake_on_drop: watch::Sender<()>,
    committed: bool,
}

impl ClaimGuard {
    /// The delivery is safe in Kafka: remember it for the window.
    pub fn commit(mut self) {
        self.committed = true;
        self.dedupe.finish(self.digest, true, Instant::now());
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.committed {
            self.dedupe.finish(self.digest, false, Instant::now());
        }
        // The sender drops after this, waking every waiter once the slot is settled.
    }
}

fn digest(webhook_id: &str) -> IdDigest {
    let full = Sha256::digest(webhook_id.as_bytes());
    full[..16].try_into().expect("sha256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(claim: Claim) -> ClaimGuard {
        match claim {
            Claim::New(guard) => guard,
            _ => panic!("expected a new claim"),
        }
    }

    #[test]
    fn a_published_id_is_a_duplicate_within_the_window() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        guard(dedupe.claim("a")).commit();
        assert!(matches!(dedupe.claim("a"), Claim::Duplicate));
        assert!(matches!(dedupe.claim("b"), Claim::New(_)));
    }

    #[test]
    fn a_released_claim_can_be_claimed_again() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        drop(guard(dedupe.claim("a")));
        assert!(matches!(dedupe.claim("a"), Claim::New(_)));
        assert!(dedupe.is_empty());
    }

    #[test]
    fn ids_expire_after_the_window() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        let start = Instant::now();
        let g = guard(dedupe.claim_at("a", start));
        g.commit();
        assert!(matches!(
            dedupe.claim_at("a", Instant::now() + Duration::from_secs(30)),
            Claim::Duplicate
        ));
        assert!(matches!(
            dedupe.claim_at("a", Instant::now() + Duration::from_secs(61)),
            Claim::New(_)
        ));
    }

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_capacity() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 3);
        for id in ["1", "2", "3", "4"] {
            guard(dedupe.claim(id)).commit();
        }
        assert_eq!(dedupe.len(), 3);
        assert!(matches!(dedupe.claim("1"), Claim::New(_)));
        for id in ["2", "3", "4"] {
            assert!(matches!(dedupe.claim(id), Claim::Duplicate), "{id}");
        }
    }

    #[tokio::test]
    async fn a_concurrent_retry_waits_for_the_first_attempt() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        let first = guard(dedupe.claim("a"));
        let Claim::InFlight(mut waiter) = dedupe.claim("a") else {
            panic!("expected in flight");
        };
        let waiting = tokio::spawn(async move { waiter.changed().await.is_err() });
        first.commit();
        assert!(
            waiting.await.unwrap(),
            "the waiter wakes when the claim ends"
        );
        assert!(matches!(dedupe.claim("a"), Claim::Duplicate));
    }

    #[tokio::test]
    async fn a_failed_first_attempt_lets_the_retry_publish() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        let first = guard(dedupe.claim("a"));
        let Claim::InFlight(mut waiter) = dedupe.claim("a") else {
            panic!("expected in flight");
        };
        drop(first);
        assert!(waiter.changed().await.is_err());
        assert!(matches!(dedupe.claim("a"), Claim::New(_)));
    }

    #[test]
    fn reclaiming_an_evicted_id_keeps_the_new_entry() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 1);
        guard(dedupe.claim("a")).commit();
        guard(dedupe.claim("b")).commit(); // evicts a
        guard(dedupe.claim("a")).commit(); // evicts b, a is published again
        assert!(matches!(dedupe.claim("a"), Claim::Duplicate));
        assert_eq!(dedupe.len(), 1);
    }
}

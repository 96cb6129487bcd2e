//! The delivery dedupe window: remembers the webhook ids published recently (bounded by age and
//! count) so that Shopify's retries are answered 200 without a second record.
//!
//! A delivery is known by its shop and its webhook id together: ids are Shopify's, unique per
//! delivery, but nothing stops two shops' deliveries (or a client of another shop) from carrying
//! the same id, and one shop's delivery must never make another's a "duplicate".
//!
//! Keys are stored as 128-bit digests (the first half of SHA-256 over the lower-cased shop
//! domain, length-prefixed, then the id): with n keys remembered, the
//! chance that a new id collides with one of them is n / 2^128, ~3e-33 at 1 M, so collisions are
//! out of reach at any realistic window. A delivery being published holds a claim, kept in a
//! small map of its own (claims are bounded by concurrent requests); a concurrent retry of it
//! waits for the outcome instead of racing. Each replica has its own window: consumers must
//! still be idempotent.
//!
//! Published ids are compact, ~28.5 B each: a 20-byte entry (digest, expiry in whole seconds) in
//! a ring of 160 KiB chunks in publication order, which is also the eviction order since every
//! id lives for the same time, plus ~8.4 B of hash index ([`index`]) pointing into the ring.
//! Measured with `examples/dedupe_memory.rs`: 1 M ids add 28.6 MiB of RSS, 29.9 B per id (the
//! HashMap + VecDeque window this replaced: 112.7 MiB, 118 B per id). Nothing is sized by the
//! capacity up front: an idle window holds ~90 KiB, memory follows the ids remembered (chunks of
//! forgotten ids are freed), so a large `AFTERCART_INGRESS_DEDUPE_CAPACITY` costs nothing until it
//! fills, and no step copies the whole window (the old map's doublings stalled claims 30–170 ms).

mod index;
mod ring;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use index::Index;
use ring::{Entry, Ring, MAX_LEN};

type IdDigest = [u8; 16];

/// The dedupe window, shared by all connections.
pub struct Dedupe {
    window: Mutex<Window>,
    ttl: Duration,
    capacity: usize,
    /// Expiries are whole seconds after this instant (4 bytes instead of a 16-byte `Instant`).
    base: Instant,
}

#[derive(Default)]
struct Window {
    /// Published ids, oldest first.
    ring: Ring,
    /// Digest → the ring entry that remembers it.
    index: Index,
    /// Ids being published; the receiver wakes waiters when the claim ends either way.
    in_flight: HashMap<IdDigest, watch::Receiver<()>>,
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
    /// `capacity` is capped at 134 M ids (the ring's sequence numbers are 27 bits); the
    /// configuration allows at most 100 M.
    pub fn new(ttl: Duration, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            window: Mutex::new(Window::default()),
            ttl,
            capacity: capacity.min(MAX_LEN - 1),
            base: Instant::now(),
        })
    }

    /// Claims the delivery `webhook_id` of `shop` (its `X-Shopify-Shop-Domain`, any case).
    pub fn claim(self: &Arc<Self>, shop: &str, webhook_id: &str) -> Claim {
        self.claim_at(shop, webhook_id, Instant::now())
    }

    fn claim_at(self: &Arc<Self>, shop: &str, webhook_id: &str, now: Instant) -> Claim {
        let digest = digest(shop, webhook_id);
        let elapsed = self.elapsed(now);
        let mut guard = self.lock();
        let window = &mut *guard;
        window.evict(elapsed, self.capacity);
        if let Some(seq) = window.index.find(&digest, &window.ring) {
            if window
                .ring
                .get(seq)
                .is_some_and(|entry| is_live(entry.expires, elapsed))
            {
                return Claim::Duplicate;
            }
            // Expired but not yet evicted: only when commits came with instants out of order,
            // so an older entry sits behind a newer one. It is claimed anew, as at the head.
            window.index.remove(&digest, seq, &window.ring);
        }
        if let Some(receiver) = window.in_flight.get(&digest) {
            return Claim::InFlight(receiver.clone());
        }
        let (sender, receiver) = watch::channel(());
        window.in_flight.insert(digest, receiver);
        Claim::New(ClaimGuard {
            dedupe: Arc::clone(self),
            digest,
            _wake_on_drop: sender,
            committed: false,
        })
    }

    /// Ids remembered as published.
    pub fn len(&self) -> usize {
        self.lock().ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn finish(&self, digest: IdDigest, published: bool, now: Instant) {
        let elapsed = self.elapsed(now);
        let expires = self.expiry(elapsed);
        let mut guard = self.lock();
        let window = &mut *guard;
        window.in_flight.remove(&digest);
        if published {
            // A digest has at most one index slot; an older one is already gone (see claim).
            if let Some(seq) = window.index.find(&digest, &window.ring) {
                window.index.remove(&digest, seq, &window.ring);
            }
            let seq = window.ring.push(Entry { digest, expires });
            window.index.insert(&digest, seq, &window.ring);
            window.evict(elapsed, self.capacity);
        }
    }

    /// A panic elsewhere while holding the lock must not take every later request down with it:
    /// the window is only ever changed by code that does not panic.
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.base)
    }

    /// Rounded up to the second, so an id is never forgotten early (at most a second late);
    /// saturates 136 years after the base.
    fn expiry(&self, elapsed: Duration) -> u32 {
        let until = elapsed.saturating_add(self.ttl);
        let seconds = until
            .as_secs()
            .saturating_add(u64::from(until.subsec_nanos() > 0));
        u32::try_from(seconds).unwrap_or(u32::MAX)
    }

    /// Bytes held by the window's published ids (ring and index; claims excluded).
    #[cfg(test)]
    fn allocated_bytes(&self) -> usize {
        let window = self.lock();
        window.ring.allocated_bytes() + window.index.allocated_bytes()
    }
}

fn is_live(expires: u32, elapsed: Duration) -> bool {
    Duration::from_secs(u64::from(expires)) > elapsed
}

impl Window {
    /// Forgets expired ids, then the oldest beyond capacity.
    fn evict(&mut self, elapsed: Duration, capacity: usize) {
        while let Some((seq, entry)) = self.ring.front() {
            if is_live(entry.expires, elapsed) && self.ring.len() <= capacity {
                break;
            }
            // Only drops the index slot this entry stands for (not a newer claim of the id).
            self.index.remove(&entry.digest, seq, &self.ring);
            self.ring.pop_front();
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
    pub fn commit(self) {
        self.commit_at(Instant::now());
    }

    fn commit_at(mut self, now: Instant) {
        self.committed = true;
        self.dedupe.finish(self.digest, true, now);
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

/// The shop is length-prefixed so that no (shop, id) pair can spell another's bytes.
fn digest(shop: &str, webhook_id: &str) -> IdDigest {
    let shop = shop.to_ascii_lowercase();
    let mut hasher = Sha256::new();
    hasher.update((shop.len() as u64).to_le_bytes());
    hasher.update(shop.as_bytes());
    hasher.update(webhook_id.as_bytes());
    let full = hasher.finalize();
    let mut digest = [0; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = "jsmith.myshopify.com";

    fn guard(claim: Claim) -> ClaimGuard {
        match claim {
            Claim::New(guard) => guard,
            _ => panic!("expected a new claim"),
        }
    }

    #[test]
    fn a_published_id_is_a_duplicate_within_the_window() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        guard(dedupe.claim(SHOP, "a")).commit();
        assert!(matches!(dedupe.claim(SHOP, "a"), Claim::Duplicate));
        assert!(matches!(dedupe.claim(SHOP, "b"), Claim::New(_)));
    }

    #[test]
    fn the_same_id_from_two_shops_is_two_deliveries() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        guard(dedupe.claim("shop-a.myshopify.com", "id-1")).commit();
        assert!(matches!(
            dedupe.claim("shop-b.myshopify.com", "id-1"),
            Claim::New(_)
        ));
        assert!(matches!(
            dedupe.claim("Shop-A.myshopify.com", "id-1"),
            Claim::Duplicate
        ));
        // The length prefix keeps shop and id apart: ("ab", "c") is not ("a", "bc").
        guard(dedupe.claim("ab", "c")).commit();
        assert!(matches!(dedupe.claim("a", "bc"), Claim::New(_)));
    }

    #[test]
    fn a_released_claim_can_be_claimed_again() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        drop(guard(dedupe.claim(SHOP, "a")));
        assert!(matches!(dedupe.claim(SHOP, "a"), Claim::New(_)));
        assert!(dedupe.is_empty());
    }

    #[test]
    fn ids_expire_after_the_window() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        let start = Instant::now();
        let g = guard(dedupe.claim_at(SHOP, "a", start));
        g.commit();
        assert!(matches!(
            dedupe.claim_at(SHOP, "a", Instant::now() + Duration::from_secs(30)),
            Claim::Duplicate
        ));
        assert!(matches!(
            dedupe.claim_at(SHOP, "a", Instant::now() + Duration::from_secs(61)),
            Claim::New(_)
        ));
    }

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_capacity() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 3);
        for id in ["1", "2", "3", "4"] {
            guard(dedupe.claim(SHOP, id)).commit();
        }
        assert_eq!(dedupe.len(), 3);
        assert!(matches!(dedupe.claim(SHOP, "1"), Claim::New(_)));
        for id in ["2", "3", "4"] {
            assert!(matches!(dedupe.claim(SHOP, id), Claim::Duplicate), "{id}");
        }
    }

    #[tokio::test]
    async fn a_concurrent_retry_waits_for_the_first_attempt() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        let first = guard(dedupe.claim(SHOP, "a"));
        let Claim::InFlight(mut waiter) = dedupe.claim(SHOP, "a") else {
            panic!("expected in flight");
        };
        let waiting = tokio::spawn(async move { waiter.changed().await.is_err() });
        first.commit();
        assert!(
            waiting.await.unwrap(),
            "the waiter wakes when the claim ends"
        );
        assert!(matches!(dedupe.claim(SHOP, "a"), Claim::Duplicate));
    }

    #[tokio::test]
    async fn a_failed_first_attempt_lets_the_retry_publish() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        let first = guard(dedupe.claim(SHOP, "a"));
        let Claim::InFlight(mut waiter) = dedupe.claim(SHOP, "a") else {
            panic!("expected in flight");
        };
        drop(first);
        assert!(waiter.changed().await.is_err());
        assert!(matches!(dedupe.claim(SHOP, "a"), Claim::New(_)));
    }

    #[test]
    fn reclaiming_an_evicted_id_keeps_the_new_entry() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 1);
        guard(dedupe.claim(SHOP, "a")).commit();
        guard(dedupe.claim(SHOP, "b")).commit(); // evicts a
        guard(dedupe.claim(SHOP, "a")).commit(); // evicts b, a is published again
        assert!(matches!(dedupe.claim(SHOP, "a"), Claim::Duplicate));
        assert_eq!(dedupe.len(), 1);
    }

    #[test]
    fn ids_expire_by_age_oldest_first() {
        let dedupe = Dedupe::new(Duration::from_secs(10), 10);
        let at = |seconds| dedupe.base + Duration::from_secs(seconds);
        guard(dedupe.claim_at(SHOP, "a", at(0))).commit_at(at(0));
        guard(dedupe.claim_at(SHOP, "b", at(5))).commit_at(at(5));
        assert!(matches!(
            dedupe.claim_at(SHOP, "a", at(9)),
            Claim::Duplicate
        ));
        assert!(matches!(
            dedupe.claim_at(SHOP, "b", at(9)),
            Claim::Duplicate
        ));
        assert!(matches!(dedupe.claim_at(SHOP, "a", at(10)), Claim::New(_)));
        assert_eq!(dedupe.len(), 1);
        assert!(matches!(
            dedupe.claim_at(SHOP, "b", at(14)),
            Claim::Duplicate
        ));
        assert!(matches!(dedupe.claim_at(SHOP, "b", at(15)), Claim::New(_)));
        assert!(dedupe.is_empty());
    }

    #[test]
    fn capacity_eviction_wraps_the_ring_many_times() {
        let dedupe = Dedupe::new(Duration::from_secs(3_600), 1_000);
        let now = dedupe.base;
        for n in 0..50_000 {
            guard(dedupe.claim_at(SHOP, &format!("id-{n}"), now)).commit_at(now);
        }
        assert_eq!(dedupe.len(), 1_000);
        for n in 49_000..50_000 {
            let id = format!("id-{n}");
            assert!(
                matches!(dedupe.claim_at(SHOP, &id, now), Claim::Duplicate),
                "{id}"
            );
        }
        for n in (0..49_000).step_by(97) {
            let id = format!("id-{n}");
            assert!(
                matches!(dedupe.claim_at(SHOP, &id, now), Claim::New(_)),
                "{id}"
            );
        }
        // Chunks of forgotten ids are handed back: one live chunk or two, and the spare.
        assert!(dedupe.allocated_bytes() < 3 * 8192 * 20 + (128 << 10));
    }

    #[test]
    fn a_million_ids_fit_in_about_thirty_bytes_each() {
        let dedupe = Dedupe::new(Duration::from_secs(3_600), 1_000_000);
        let now = dedupe.base;
        // 300 k rather than 1 M keeps the debug-build test quick; the per-id cost only falls
        // as the window fills (the index is 3/8..3/4 full either way).
        for n in 0..300_000 {
            guard(dedupe.claim_at(SHOP, &format!("{n:036}"), now)).commit_at(now);
        }
        let per_id = dedupe.allocated_bytes() as f64 / dedupe.len() as f64;
        assert!(per_id < 30.0, "{per_id:.1} bytes per id");
    }

    #[tokio::test]
    async fn every_waiter_wakes_and_sees_the_outcome() {
        let dedupe = Dedupe::new(Duration::from_secs(60), 10);
        let first = guard(dedupe.claim(SHOP, "a"));
        let waiters: Vec<_> = (0..3)
            .map(|_| match dedupe.claim(SHOP, "a") {
                Claim::InFlight(waiter) => waiter,
                _ => panic!("expected in flight"),
            })
            .collect();
        drop(first);
        for mut waiter in waiters {
            assert!(waiter.changed().await.is_err());
        }
        // The released id goes to exactly one of the retries; the others wait on it in turn.
        let second = guard(dedupe.claim(SHOP, "a"));
        let Claim::InFlight(mut waiter) = dedupe.claim(SHOP, "a") else {
            panic!("expected in flight");
        };
        assert!(
            matches!(dedupe.claim(SHOP, "b"), Claim::New(_)),
            "other ids go on"
        );
        second.commit();
        assert!(waiter.changed().await.is_err());
        assert!(matches!(dedupe.claim(SHOP, "a"), Claim::Duplicate));
        assert_eq!(dedupe.len(), 1);
    }

    /// The previous implementation's rules, kept as the reference: a map of published ids with
    /// their expiry, the publication order, and the ids in flight. Time is whole seconds.
    struct Model {
        ttl: u64,
        capacity: usize,
        published: HashMap<u32, u64>,
        order: std::collections::VecDeque<(u32, u64)>,
        in_flight: std::collections::HashSet<u32>,
    }

    #[derive(Debug, PartialEq)]
    enum Answer {
        New,
        Duplicate,
        InFlight,
    }

    impl Model {
        fn evict(&mut self, now: u64) {
            while let Some(&(id, until)) = self.order.front() {
                if until > now && self.order.len() <= self.capacity {
                    break;
                }
                self.order.pop_front();
                if self.published.get(&id) == Some(&until) {
                    self.published.remove(&id);
                }
            }
        }

        fn claim(&mut self, id: u32, now: u64) -> Answer {
            self.evict(now);
            if self.published.get(&id).is_some_and(|&until| until > now) {
                return Answer::Duplicate;
            }
            if self.in_flight.contains(&id) {
                return Answer::InFlight;
            }
            self.published.remove(&id);
            self.in_flight.insert(id);
            Answer::New
        }

        fn finish(&mut self, id: u32, published: bool, now: u64) {
            self.in_flight.remove(&id);
            if published {
                self.published.insert(id, now + self.ttl);
                self.order.push_back((id, now + self.ttl));
                self.evict(now);
            }
        }
    }

    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn agrees_with_the_model(ttl: u64, capacity: usize, ids: u64, steps: usize, seed: u64) {
        let dedupe = Dedupe::new(Duration::from_secs(ttl), capacity);
        let mut model = Model {
            ttl,
            capacity,
            published: HashMap::new(),
            order: Default::default(),
            in_flight: Default::default(),
        };
        let (mut state, mut now, mut pending) = (seed, 0u64, Vec::new());
        for step in 0..steps {
            let r = next(&mut state);
            let at = dedupe.base + Duration::from_secs(now);
            match r % 20 {
                0..=9 => {
                    let id = (next(&mut state) % ids) as u32;
                    let (answer, claim) = match dedupe.claim_at(SHOP, &format!("webhook-{id}"), at)
                    {
                        Claim::New(guard) => (Answer::New, Some(guard)),
                        Claim::Duplicate => (Answer::Duplicate, None),
                        Claim::InFlight(_) => (Answer::InFlight, None),
                    };
                    assert_eq!(
                        answer,
                        model.claim(id, now),
                        "step {step}: claim {id} at {now}"
                    );
                    pending.extend(claim.map(|guard| (id, guard)));
                }
                10..=13 if !pending.is_empty() => {
                    let (id, guard) = pending.swap_remove((r >> 8) as usize % pending.len());
                    guard.commit_at(at);
                    model.finish(id, true, now);
                }
                14..=16 if !pending.is_empty() => {
                    let (id, guard) = pending.swap_remove((r >> 8) as usize % pending.len());
                    drop(guard);
                    model.finish(id, false, now);
                }
                _ => now += (r >> 8) % (ttl / 4 + 1),
            }
            assert_eq!(dedupe.len(), model.order.len(), "step {step}");
        }
    }

    #[test]
    fn small_windows_agree_with_the_reference_model() {
        agrees_with_the_model(30, 50, 200, 30_000, 0x9e37_79b9_7f4a_7c15);
        agrees_with_the_model(5, 3, 10, 10_000, 0x2545_f491_4f6c_dd1d);
        agrees_with_the_model(2, 1, 4, 5_000, 0x1234_5678_9abc_def1);
    }

    #[test]
    fn a_window_wrapping_many_times_agrees_with_the_reference_model() {
        // Capacity 1,000 with 50,000 distinct ids: the ring turns over dozens of times, by
        // capacity mostly and by age when time jumps.
        agrees_with_the_model(600, 1_000, 50_000, 120_000, 0xdead_beef_cafe_f00d);
        agrees_with_the_model(600, 1_000, 3_000, 60_000, 0x0bad_5eed_0bad_5eed);
    }
}

//! Published ids in publication order: a deque of fixed-size chunks of 20-byte entries, so the
//! window grows and shrinks a chunk at a time without ever copying what it already holds.

use std::collections::VecDeque;

use super::IdDigest;

/// Sequence numbers are kept modulo 2^27 (the index packs one into 27 bits of a `u32`), so the
/// live entries, at most `MAX_LEN`, always have distinct ones.
pub(super) const SEQ_BITS: u32 = 27;
pub(super) const SEQ_MASK: u32 = (1 << SEQ_BITS) - 1;
/// The most entries the ring may hold at once (a push may briefly exceed the dedupe capacity by
/// one before the oldest is evicted, so the capacity is capped one below this).
pub(super) const MAX_LEN: usize = SEQ_MASK as usize;

/// Entries per chunk: 8,192 × 20 B = 160 KiB, big enough that the chunk list is negligible and
/// small enough that an idle window holds little.
const CHUNK: usize = 8192;

/// One published id: its digest and when it expires, in whole seconds after the window's base
/// instant (20 bytes: no padding, since both fields have alignment ≤ 4).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(super) struct Entry {
    pub digest: IdDigest,
    pub expires: u32,
}

#[derive(Default)]
pub(super) struct Ring {
    chunks: VecDeque<Box<[Entry]>>,
    /// Position of the oldest entry in the first chunk.
    head: usize,
    len: usize,
    /// Sequence number of the oldest entry (modulo 2^27).
    head_seq: u32,
    /// One emptied chunk kept back, so a window at steady state does not allocate.
    spare: Option<Box<[Entry]>>,
}

impl Ring {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends an entry and returns its sequence number.
    pub fn push(&mut self, entry: Entry) -> u32 {
        let at = self.head + self.len;
        if at >= self.chunks.len() * CHUNK {
            let chunk = self
                .spare
                .take()
                .unwrap_or_else(|| vec![Entry::default(); CHUNK].into_boxed_slice());
            self.chunks.push_back(chunk);
        }
        if let Some(slot) = self
            .chunks
            .get_mut(at / CHUNK)
            .and_then(|chunk| chunk.get_mut(at % CHUNK))
        {
            *slot = entry;
        }
        let seq = self.seq_at(self.len);
        self.len += 1;
        seq
    }

    /// The oldest entry and its sequence number.
    pub fn front(&self) -> Option<(u32, Entry)> {
        let seq = self.head_seq;
        self.get(seq).map(|entry| (seq, entry))
    }

    pub fn pop_front(&mut self) {
        if self.len == 0 {
            return;
        }
        self.len -= 1;
        self.head += 1;
        self.head_seq = self.seq_at(1);
        if self.head == CHUNK {
            self.head = 0;
            let emptied = self.chunks.pop_front();
            if self.spare.is_none() {
                self.spare = emptied;
            }
        }
    }

    /// The live entry with this sequence number, if any.
    pub fn get(&self, seq: u32) -> Option<Entry> {
        let offset = (seq.wrapping_sub(self.head_seq) & SEQ_MASK) as usize;
        if offset >= self.len {
            return None;
        }
        let at = self.head + offset;
        self.chunks.get(at / CHUNK)?.get(at % CHUNK).copied()
    }

    /// Bytes held for entries, including the spare chunk.
    #[cfg(test)]
    pub fn allocated_bytes(&self) -> usize {
        (self.chunks.len() + usize::from(self.spare.is_some())) * CHUNK * size_of::<Entry>()
    }

    fn seq_at(&self, offset: usize) -> u32 {
        // Truncation is the point: sequence numbers wrap modulo 2^27.
        self.head_seq.wrapping_add(offset as u32) & SEQ_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> Entry {
        let mut digest = [0; 16];
        digest[..4].copy_from_slice(&n.to_le_bytes());
        Entry { digest, expires: n }
    }

    #[test]
    fn an_entry_is_twenty_bytes() {
        assert_eq!(size_of::<Entry>(), 20);
    }

    #[test]
    fn entries_come_back_by_sequence_across_many_chunks() {
        let mut ring = Ring::default();
        let mut seqs = VecDeque::new();
        // Keep ~1.5 chunks live while pushing ten chunks' worth through.
        for n in 0..(10 * CHUNK as u32) {
            seqs.push_back((ring.push(entry(n)), n));
            if ring.len() > CHUNK + CHUNK / 2 {
                let (seq, old) = seqs.pop_front().expect("pushed");
                assert_eq!(ring.front(), Some((seq, entry(old))));
                ring.pop_front();
                assert_eq!(ring.get(seq), None, "popped entries are gone");
            }
        }
        for &(seq, n) in &seqs {
            assert_eq!(ring.get(seq), Some(entry(n)));
        }
        assert!(ring.allocated_bytes() <= 4 * CHUNK * 20);
        while ring.len() > 0 {
            ring.pop_front();
        }
        assert_eq!(ring.front(), None);
        assert!(ring.allocated_bytes() <= 2 * CHUNK * 20);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut ring = Ring {
            head_seq: SEQ_MASK - 2,
            ..Ring::default()
        };
        let seqs: Vec<u32> = (0..6).map(|n| ring.push(entry(n))).collect();
        assert_eq!(seqs, [SEQ_MASK - 2, SEQ_MASK - 1, SEQ_MASK, 0, 1, 2]);
        for (n, seq) in seqs.into_iter().enumerate() {
            assert_eq!(ring.get(seq), Some(entry(n as u32)));
        }
        assert_eq!(ring.get(3), None);
    }
}

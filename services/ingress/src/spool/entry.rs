//! One spooled event and its on-disk frame: `[length u32][crc32c u32][payload]`, little-endian.
//!
//! The checksum covers the payload, so a torn write (power loss mid-append) or a flipped bit is
//! recognised when the spool is read back, and everything before it is kept.

use bytes::Bytes;

/// Bytes before the payload: its length and its CRC-32C.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Payload format version, first byte of every payload.
const VERSION: u8 = 1;

/// The largest payload a frame may declare: above the largest accepted body (512 MiB) plus
/// headers. A larger length field is damage, not a record.
const MAX_PAYLOAD_BYTES: usize = 600 << 20;

/// The smallest valid payload: version, seq, time and four empty length fields.
const MIN_PAYLOAD_BYTES: usize = 1 + 8 + 8 + 2 + 2 + 2 + 4;

/// What the ingress would have published: the Kafka record, plus when the request arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub topic: String,
    pub key: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    /// Arrival time of the request, in milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
}

/// A record in the spool, numbered in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub record: SpoolRecord,
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid frame of `frame_len` bytes.
    Entry { entry: Entry, frame_len: usize },
    /// Fewer bytes than the frame needs: the end of what was written (or a torn write).
    Incomplete,
    /// The bytes are not a valid frame: damage.
    Corrupt(&'static str),
}

impl SpoolRecord {
    /// Size of this record's frame on disk.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| 2 + name.len() + 4 + value.len())
            .sum();
        MIN_PAYLOAD_BYTES + self.topic.len() + self.key.len() + headers + self.body.len()
    }

    /// Whether every field fits its length prefix (topic, key and header names under 64 KiB).
    pub fn is_encodable(&self) -> bool {
        let short = |s: &str| s.len() <= u16::MAX as usize;
        short(&self.topic)
            && short(&self.key)
            && self.headers.len() <= u16::MAX as usize
            && self
                .headers
                .iter()
                .all(|(name, value)| short(name) && value.len() <= u32::MAX as usize)
            && self.payload_len() <= MAX_PAYLOAD_BYTES
    }
}

impl Entry {
    /// Appends this entry's frame to `out`. The record must be encodable.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode(self.seq, &self.record, out);
    }
}

/// Appends the frame of entry `seq` holding `record` to `out`. The record must be encodable.
pub fn encode(seq: u64, record: &SpoolRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.push(VERSION);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&record.received_unix_ms.to_le_bytes());
    put_short(out, record.topic.as_bytes());
    put_short(out, record.key.as_bytes());
    out.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    for (name, value) in &record.headers {
        put_short(out, name.as_bytes());
        put_long(out, value);
    }
    put_long(out, &record.body);
    let payload = &out[start + FRAME_HEADER_BYTES..];
    let length = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&length);
    out[start + 4..start + 8].copy_from_slice(&crc);
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes the frame at the start of `buf`. Never panics, whatever the bytes.
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < FRAME_HEADER_BYTES {
        return Decoded::Incomplete;
    }
    let length = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&length) {
        return Decoded::Corrupt("impossible frame length");
    }
    let Some(payload) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length) else {
        return Decoded::Incomplete;
    };
    if crc32c::crc32c(payload) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    match decode_payload(payload) {
        Some(entry) => Decoded::Entry {
            entry,
            frame_len: FRAME_HEADER_BYTES + length,
        },
        None => Decoded::Corrupt("malformed payload"),
    }
}

fn decode_payload(payload: &[u8]) -> Option<Entry> {
    let mut reader = Reader(payload);
    if reader.take(1)? != [VERSION] {
        return None;
    }
    let seq = reader.u64()?;
    let received_unix_ms = reader.u64()?;
    let topic = reader.short_str()?;
    let key = reader.short_str()?;
    let count = reader.u16()?;
    let mut headers = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let name = reader.short_str()?;
        let value = reader.long()?.to_vec();
        headers.push((name, value));
    }
    let body = Bytes::copy_from_slice(reader.long()?);
    if !reader.0.is_empty() {
        return None;
    }
    Some(Entry {
        seq,
        record: SpoolRecord {
            topic,
            key,
            headers,
            body,
            received_unix_ms,
        },
    })
}

/// A cursor over a payload; every read checks the remaining length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn short_str(&mut self) -> Option<String> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }

    fn long(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(seq: u64, body: &str) -> Entry {
        Entry {
            seq,
            record: SpoolRecord {
                topic: "aftercart.checkouts".into(),
                key: "shop.myshopify.com/tok".into(),
                headers: vec![
                    ("shopify-webhook-id".into(), b"abc".to_vec()),
                    ("empty".into(), Vec::new()),
                ],
                body: Bytes::from(body.to_string()),
                received_unix_ms: 1_700_000_000_123,
            },
        }
    }

    #[test]
    fn a_frame_round_trips_and_its_length_is_known_in_advance() {
        let entry = sample(42, r#"{"id":1}"#);
        let mut out = Vec::new();
        entry.encode(&mut out);
        assert_eq!(out.len(), entry.record.frame_len());
        assert_eq!(
            decode(&out),
            Decoded::Entry {
                entry,
                frame_len: out.len()
            }
        );
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_detected() {
        let entry = sample(7, r#"{"id":2,"email":"x"}"#);
        let mut frame = Vec::new();
        entry.encode(&mut frame);
        for cut in 0..frame.len() {
            assert!(
                matches!(
                    decode(&frame[..cut]),
                    Decoded::Incomplete | Decoded::Corrupt(_)
                ),
                "cut at {cut}"
            );
        }
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&damaged), Decoded::Entry { .. }),
                    "flip {byte}:{bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn zeroes_left_by_a_crash_are_damage_not_records() {
        assert_eq!(
            decode(&[0; 64]),
            Decoded::Corrupt("impossible frame length")
        );
    }

    #[test]
    fn oversized_fields_are_not_encodable() {
        let mut entry = sample(1, "{}");
        assert!(entry.record.is_encodable());
        entry.record.key = "k".repeat(70_000);
        assert!(!entry.record.is_encodable());
    }
}

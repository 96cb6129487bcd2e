//! Helpers shared by the fuzz targets: how a fuzz input is cut into fields and Kafka records.
//!
//! Inputs are plain bytes with two ASCII control separators that valid JSON never contains
//! unescaped: `0x1E` (record separator) between records and `0x1F` (unit separator) between the
//! fields of one record. That keeps the seed corpus readable and easy to write by hand (a
//! Shopify fixture is a valid body as is), while libFuzzer still mutates every byte.

#![forbid(unsafe_code)]

use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

/// Between records.
pub const RECORD: u8 = 0x1e;
/// Between the fields of one record.
pub const FIELD: u8 = 0x1f;
/// At most this many records per input: enough for multi-step journeys, small enough to stay
/// fast (libFuzzer wants thousands of executions per second).
pub const MAX_RECORDS: usize = 12;
/// Receive times are kept within 2001..2033 so that arithmetic on them is realistic: a Kafka
/// timestamp is set by our own producers, not by whoever sent the webhook.
pub const BASE_MS: i64 = 1_000_000_000_000;
pub const SPAN_MS: i64 = 1_000_000_000_000;

/// Cuts `data` into at most `n` fields at `FIELD`; the last one keeps any further separators.
pub fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == FIELD).collect()
}

/// The records of an input, at most [`MAX_RECORDS`].
pub fn records(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == RECORD).take(MAX_RECORDS)
}

/// Bytes as text, invalid UTF-8 replaced (for fields the services receive as `&str`).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A decimal number of seconds after `previous_ms` (garbage reads as 0), kept in range.
pub fn time_after(previous_ms: i64, seconds: &[u8]) -> i64 {
    let seconds: i64 = std::str::from_utf8(seconds)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let at = previous_ms.saturating_add(seconds.clamp(-SPAN_MS, SPAN_MS).saturating_mul(1000));
    at.clamp(BASE_MS, BASE_MS + SPAN_MS)
}

/// One Kafka record as a consumer sees it.
pub struct Record<'a> {
    /// The family of the topic it was read from (`orders`, `abandonments`, ...), as text.
    pub family: String,
    pub key: Option<&'a [u8]>,
    pub at_ms: i64,
    pub headers: Vec<(String, Option<&'a [u8]>)>,
    pub body: &'a [u8],
}

impl<'a> Record<'a> {
    /// `family FIELD key FIELD seconds FIELD headers FIELD body`. The key is absent when its
    /// field is the single byte `-`. Headers are `name=value` lines (`\n`); a line without `=`
    /// is a header with a null value. A record with fewer fields gets empty ones.
    pub fn parse(data: &'a [u8], previous_ms: i64) -> Record<'a> {
        let mut parts = fields(data, 5).into_iter();
        let mut next = || parts.next().unwrap_or_default();
        let family = text(next());
        let key = Some(next()).filter(|k| *k != b"-");
        let at_ms = time_after(previous_ms, next());
        let headers = next()
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| match line.iter().position(|b| *b == b'=') {
                Some(at) => (text(&line[..at]), Some(&line[at + 1..])),
                None => (text(line), None),
            })
            .collect();
        Record {
            family,
            key,
            at_ms,
            headers,
            body: next(),
        }
    }

    /// The record as rdkafka hands it to a consumer, so the services' own header helpers
    /// (`header`, `shop_of`, `source_family`) read it.
    pub fn message(&self, topic: &str, partition: i32, offset: i64) -> OwnedMessage {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: *value,
            });
        }
        OwnedMessage::new(
            Some(self.body.to_vec()),
            self.key.map(<[u8]>::to_vec),
            topic.to_string(),
            Timestamp::CreateTime(self.at_ms),
            partition,
            offset,
            Some(headers),
        )
    }
}

/// Serialises a changelog value as the services do and reads it back as a restore would: it
/// must serialise, and come back equal.
pub fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = serde_json::to_vec(value).expect("state serialises");
    let back: T = serde_json::from_slice(&bytes).expect("state reads back");
    assert_eq!(&back, value, "state changed through its changelog encoding");
    back
}

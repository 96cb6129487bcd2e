//! Record plumbing shared by the consumer services: reading headers, finding a record's shop,
//! and turning a record that cannot be used into a dead-letter record.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;

/// A UTF-8 header of a record, by name.
pub fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The shop of a record (lower-cased): its `shopify-shop-domain` header, else the key's prefix.
pub fn shop_of(message: &OwnedMessage) -> String {
    header(message, "shopify-shop-domain")
        .map(str::to_string)
        .or_else(|| {
            let key = std::str::from_utf8(message.key()?).ok()?;
            Some(key.split('/').next().unwrap_or(key).to_string())
        })
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// A record that cannot be used, on its way to the dead-letter topic.
pub struct DeadLetter {
    pub message: OwnedMessage,
    pub reason: String,
}

/// The dead-letter record of `letter`: the original key, payload and headers, plus
/// `aftercart-dead-letter-reason` and `aftercart-dead-letter-source` (`topic/partition/offset`).
pub fn dead_letter_record<'a>(
    topic: &'a str,
    letter: &'a DeadLetter,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = letter.message.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let source = format!(
        "{}/{}/{}",
        letter.message.topic(),
        letter.message.partition(),
        letter.message.offset()
    );
    headers = headers
        .insert(Header {
            key: "aftercart-dead-letter-reason",
            value: Some(letter.reason.as_str()),
        })
        .insert(Header {
            key: "aftercart-dead-letter-source",
            value: Some(source.as_str()),
        });
    let mut record = FutureRecord::to(topic).headers(headers);
    if let Some(key) = letter.message.key() {
        record = record.key(key);
    }
    if let Some(payload) = letter.message.payload() {
        record = record.payload(payload);
    }
    record
}

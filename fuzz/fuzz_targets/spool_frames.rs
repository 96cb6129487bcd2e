//! Fuzz target: the ingress spool's frame decoder, which reads back whatever a crash or a bad
//! disk left in a segment. No panic on any bytes; a frame that decodes re-encodes to the same
//! bytes; a record built from the input survives encode → decode, and no cut of it decodes.
//!
//! Input: `topic FIELD key FIELD header-name FIELD header-value FIELD body`; the whole input is
//! also read as a segment.

#![no_main]

use aftercart_ingress::spool::entry::{decode, encode, Decoded, Entry, SpoolRecord};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The raw bytes as a segment: frames one after another until the first that is not one.
    let mut offset = 0;
    while let Decoded::Entry { entry, frame_len } = decode(&data[offset..]) {
        let mut again = Vec::new();
        entry.encode(&mut again);
        assert_eq!(
            again,
            &data[offset..offset + frame_len],
            "a decoded frame re-encodes"
        );
        offset += frame_len;
    }

    let parts = aftercart_fuzz::fields(data, 5);
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let record = SpoolRecord {
        topic: aftercart_fuzz::text(part(0)),
        key: aftercart_fuzz::text(part(1)),
        headers: vec![(aftercart_fuzz::text(part(2)), part(3).to_vec())],
        body: Bytes::copy_from_slice(part(4)),
        received_unix_ms: data.len() as u64,
    };
    if !record.is_encodable() {
        return;
    }
    let seq = u64::from(data.first().copied().unwrap_or_default()) << 40;
    let mut frame = Vec::new();
    encode(seq, &record, &mut frame);
    assert_eq!(frame.len(), record.frame_len());
    let expected = Entry { seq, record };
    assert_eq!(
        decode(&frame),
        Decoded::Entry {
            entry: expected,
            frame_len: frame.len()
        }
    );
    let cut = usize::from(data.last().copied().unwrap_or_default()) % frame.len();
    assert!(
        !matches!(decode(&frame[..cut]), Decoded::Entry { .. }),
        "a torn frame decoded"
    );
});

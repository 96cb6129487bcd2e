//! SHA-256 lower-case hex, and the batch id checks and derivations shared by the request builders.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::BuildError;

/// SHA-256 of the UTF-8 bytes of `value`, as 64 lower-case hex characters. Callers normalise first,
/// each by its own platform's rules.
pub fn sha256_hex(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// A JSON object of the fields present, each value hashed with [`sha256_hex`] (callers
/// normalise first).
pub fn hashed_fields<'a>(
    fields: impl IntoIterator<Item = (&'a str, Option<String>)>,
) -> Map<String, Value> {
    fields
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), Value::String(sha256_hex(&value?)))))
        .collect()
}

/// Whether `value` looks like what [`sha256_hex`] returns (64 lower-case hex characters).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A batch id is 32 lower-case hex characters.
pub(crate) fn check_batch_id(batch_id: &str) -> Result<(), BuildError> {
    let ok = batch_id.len() == 32
        && batch_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(BuildError::BadBatchId)
    }
}

/// A positive int64 derived from a batch id, for the platforms whose idempotency field is an
/// integer (Meta `session.session_id`, Google `externalId`): its first 15 hex digits (60 bits, so
/// always below `i64::MAX`), or 1 if those are all zero. The same batch id always gives the same
/// number; two batch ids collide only if their first 60 bits agree.
pub fn batch_number(batch_id: &str) -> Result<i64, BuildError> {
    check_batch_id(batch_id)?;
    let head = u64::from_str_radix(&batch_id[..15], 16).map_err(|_| BuildError::BadBatchId)?;
    let number = i64::try_from(head).map_err(|_| BuildError::BadBatchId)?;
    Ok(number.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_an_independently_computed_value() {
        // printf '%s' 'test@example.com' | sha256sum
        assert_eq!(
            sha256_hex("test@example.com"),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        // printf '' | sha256sum
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn sha256_hashes_utf8_bytes() {
        // printf '%s' 'josé' | sha256sum
        assert_eq!(
            sha256_hex("josé"),
            "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
        );
    }

    #[test]
    fn hashes_are_recognised_and_other_text_is_not() {
        assert!(is_sha256_hex(&sha256_hex("x")));
        assert!(!is_sha256_hex("test@example.com"));
        assert!(!is_sha256_hex(&sha256_hex("x").to_uppercase()));
    }

    #[test]
    fn batch_ids_must_be_32_lower_case_hex_characters() {
        assert!(check_batch_id("0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_batch_id("0123456789ABCDEF0123456789ABCDEF").is_err());
        assert!(check_batch_id("0123456789abcdef").is_err());
        assert!(check_batch_id("0123456789abcdef0123456789abcdeg").is_err());
    }

    #[test]
    fn batch_numbers_are_the_first_sixty_bits_and_never_zero() {
        assert_eq!(
            batch_number("fffffffffffffff0123456789abcdef0").unwrap(),
            0x0fff_ffff_ffff_ffff
        );
        assert_eq!(batch_number("000000000000001f0123456789abcdef").unwrap(), 1);
        assert_eq!(batch_number("00000000000000000000000000000000").unwrap(), 1);
        assert_eq!(
            batch_number("0123456789abcdef0123456789abcdef").unwrap(),
            0x0012_3456_789a_bcde
        );
        assert!(batch_number("nope").is_err());
    }
}

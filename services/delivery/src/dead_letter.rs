//! The headers of a dead-letter record: the original record's, then why it could not be
//! delivered (`schemas/kafka/delivery-dead-letter.md` is the contract).

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};

use crate::sink::Failure;

pub const REASON_HEADER: &str = "aftercart-dead-letter-reason";
pub const SOURCE_HEADER: &str = "aftercart-dead-letter-source";
pub const STATUS_HEADER: &str = "aftercart-http-status";
pub const ERROR_HEADER: &str = "aftercart-http-error";
pub const ATTEMPTS_HEADER: &str = "aftercart-http-attempts";
pub const RESPONSE_HEADER: &str = "aftercart-http-response";
pub const REFUSAL_HEADER: &str = "aftercart-refusal";

/// Every header this contract sets: none is copied from the source record, so a dead letter
/// dead-lettered again carries only its newest failure's (no old status beside a new error).
const CONTRACT_HEADERS: [&str; 7] = [
    REASON_HEADER,
    SOURCE_HEADER,
    STATUS_HEADER,
    ERROR_HEADER,
    ATTEMPTS_HEADER,
    RESPONSE_HEADER,
    REFUSAL_HEADER,
];

/// Where a record came from: `<topic>/<partition>/<offset>`.
pub fn source(message: &OwnedMessage) -> String {
    format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    )
}

/// The original headers (minus every header of this contract, so a dead letter forwarded and
/// dead-lettered again carries its newest failure's alone), then reason, source and, after an
/// HTTP failure, attempts, status, response excerpt or transport error; after a refusal before
/// any request, why.
pub fn headers(message: &OwnedMessage, reason: &str, failure: Option<&Failure>) -> OwnedHeaders {
    let mut added = vec![
        (REASON_HEADER, reason.to_string()),
        (SOURCE_HEADER, source(message)),
    ];
    if let Some(failure) = failure.filter(|f| f.refused_by_aftercart()) {
        added.push((REFUSAL_HEADER, utf8_excerpt(&failure.response)));
    } else if let Some(failure) = failure {
        added.push((ATTEMPTS_HEADER, failure.attempts.to_string()));
        if let Some(status) = failure.status {
            added.push((STATUS_HEADER, status.as_u16().to_string()));
            added.push((RESPONSE_HEADER, utf8_excerpt(&failure.response)));
        }
        if let Some(error) = failure.error {
            added.push((ERROR_HEADER, error.to_string()));
        }
    }
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for header in original.iter() {
            if !CONTRACT_HEADERS.contains(&header.key) {
                headers = headers.insert(header);
            }
        }
    }
    for (key, value) in &added {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    headers
}

/// The excerpt as UTF-8 text: a character cut off at the end is dropped, invalid bytes are
/// replaced with U+FFFD.
fn utf8_excerpt(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(error) if error.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..error.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use http::StatusCode;
    use rdkafka::Timestamp;

    use super::*;
    use crate::sink::FailureKind;

    fn message(headers: &[(&str, &str)]) -> OwnedMessage {
        let mut owned = OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(Header {
                key,
                value: Some(*value),
            });
        }
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"key".to_vec()),
            "aftercart.referrals".to_string(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(owned),
        )
    }

    fn as_map(headers: &OwnedHeaders) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for header in headers.iter() {
            let value = String::from_utf8(header.value.unwrap().to_vec()).unwrap();
            assert!(
                map.insert(header.key.to_string(), value).is_none(),
                "{}",
                header.key
            );
        }
        map
    }

    fn refusal(response: &'static [u8]) -> Failure {
        Failure {
            kind: FailureKind::Rejected,
            status: Some(StatusCode::UNPROCESSABLE_ENTITY),
            error: None,
            response: Bytes::from_static(response),
            attempts: 1,
        }
    }

    #[test]
    fn a_refusal_keeps_the_original_headers_and_adds_status_and_response() {
        let message = message(&[("aftercart-event-id", "evt-1")]);
        let failure = refusal(br#"{"error":"bad"}"#);
        let headers = as_map(&headers(&message, &failure.reason(), Some(&failure)));
        assert_eq!(headers["aftercart-event-id"], "evt-1");
        assert_eq!(headers[REASON_HEADER], "http_status_422");
        assert_eq!(headers[SOURCE_HEADER], "aftercart.referrals/2/41");
        assert_eq!(headers[STATUS_HEADER], "422");
        assert_eq!(headers[RESPONSE_HEADER], r#"{"error":"bad"}"#);
        assert_eq!(headers[ATTEMPTS_HEADER], "1");
        assert!(!headers.contains_key(ERROR_HEADER));
    }

    /// Refused before any request (no key for the shop, not a record the sink can send): the
    /// reason says so, not `retries_exhausted`, and the why travels with the dead letter.
    #[test]
    fn a_record_refused_before_sending_says_why() {
        let crate::sink::Outcome::Failed(failure) =
            crate::message::refused("no Klaviyo key for the shop")
        else {
            panic!("refused is a failure")
        };
        let headers = as_map(&headers(&message(&[]), &failure.reason(), Some(&failure)));
        assert_eq!(headers[REASON_HEADER], "refused");
        assert_eq!(headers[REFUSAL_HEADER], "no Klaviyo key for the shop");
        assert!(
            !headers.contains_key(ATTEMPTS_HEADER),
            "no HTTP exchange to report"
        );
        assert!(!headers.contains_key(STATUS_HEADER));
    }

    #[test]
    fn a_timeout_has_an_error_instead_of_a_status() {
        let failure = Failure {
            kind: FailureKind::RetriesExhausted,
            status: None,
            error: Some("timeout"),
            response: Bytes::new(),
            attempts: 7,
        };
        let headers = as_map(&headers(&message(&[]), &failure.reason(), Some(&failure)));
        assert_eq!(headers[REASON_HEADER], "retries_exhausted");
        assert_eq!(headers[ERROR_HEADER], "timeout");
        assert_eq!(headers[ATTEMPTS_HEADER], "7");
        assert!(!headers.contains_key(STATUS_HEADER));
        assert!(!headers.contains_key(RESPONSE_HEADER));
    }

    #[test]
    fn a_dead_letter_dead_lettered_again_has_each_header_once_with_the_new_reason() {
        let again = message(&[
            (REASON_HEADER, "http_status_400"),
            (SOURCE_HEADER, "elsewhere/0/1"),
            (STATUS_HEADER, "400"),
            (ERROR_HEADER, "timeout"),
            (REFUSAL_HEADER, "an older refusal"),
        ]);
        let failure = refusal(b"");
        let headers = as_map(&headers(&again, &failure.reason(), Some(&failure)));
        assert_eq!(headers[REASON_HEADER], "http_status_422");
        assert_eq!(headers[SOURCE_HEADER], "aftercart.referrals/2/41");
        assert_eq!(headers[STATUS_HEADER], "422");
        assert!(
            !headers.contains_key(ERROR_HEADER),
            "not the older failure's"
        );
        assert!(!headers.contains_key(REFUSAL_HEADER));
    }

    #[test]
    fn a_character_cut_by_the_kib_limit_is_dropped_and_garbage_replaced() {
        assert_eq!(utf8_excerpt("café".as_bytes()), "café");
        assert_eq!(utf8_excerpt(&"café".as_bytes()[..4]), "caf");
        assert_eq!(utf8_excerpt(b"a\xffb"), "a\u{fffd}b");
    }
}

//! Every answer the ingress gives, and the single mapping from outcome to HTTP status and body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use aftercart_shopify::{PayloadError, SignatureError};

use super::unavailable::{Unavailable, BODY_BUDGET};

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Published and acknowledged by Kafka.
    Accepted,
    /// Already published within the dedupe window.
    Duplicate,
    /// Authentic but not routable (not a JSON object, or a compliance body that does not fit
    /// its headers): published to the quarantine topic, answered 200 so Shopify stops retrying.
    Quarantined(PayloadError),
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The client did not send the body in time.
    BodyTimeout,
    /// The body could not be read (the client went away mid-body).
    BodyUnreadable,
    Unauthorized(SignatureError),
    /// Authentic, but a required Shopify header is missing: names the header.
    MissingHeader(&'static str),
    /// The event could not be made safe in time; Shopify will retry.
    Unavailable(Unavailable),
    /// The bodies already in flight hold the whole body budget; retry later.
    BodyBudgetExhausted,
    /// An HTTP/2 preface while AFTERCART_INGRESS_HTTP2 is off (answered in HTTP/1.1).
    Http2Disabled,
}

/// Seconds Shopify (or any client) is told to wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "5";

impl Reply {
    pub fn status(&self) -> StatusCode {
        match self {
            Reply::Accepted | Reply::Duplicate | Reply::Quarantined(_) => StatusCode::OK,
            Reply::NotFound => StatusCode::NOT_FOUND,
            Reply::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reply::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reply::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reply::BodyUnreadable | Reply::MissingHeader(_) | Reply::Http2Disabled => {
                StatusCode::BAD_REQUEST
            }
            Reply::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Reply::Unavailable(_) | Reply::BodyBudgetExhausted => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `aftercart_ingress_unavailable_total` label of a 503, `None` for any other answer.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        match self {
            Reply::Unavailable(why) => Some(why.as_label()),
            Reply::BodyBudgetExhausted => Some(BODY_BUDGET),
            _ => None,
        }
    }

    /// A short JSON body: `{"status":"accepted"}` or `{"error":"...","reason":"..."}`.
    fn body(&self) -> String {
        let (key, code, reason): (&str, &str, String) = match self {
            Reply::Accepted => ("status", "accepted", String::new()),
            Reply::Duplicate => ("status", "duplicate", String::new()),
            Reply::Quarantined(why) => ("status", "quarantined", why.to_string()),
            Reply::NotFound => (
                "error",
                "not_found",
                "webhooks are accepted at POST /webhooks/shopify".into(),
            ),
            Reply::MethodNotAllowed => ("error", "method_not_allowed", "use POST".into()),
            Reply::PayloadTooLarge => (
                "error",
                "payload_too_large",
                "the body exceeds AFTERCART_INGRESS_MAX_BODY_BYTES".into(),
            ),
            Reply::BodyTimeout => (
                "error",
                "body_timeout",
                "the body was not received in time".into(),
            ),
            Reply::BodyUnreadable => (
                "error",
                "body_unreadable",
                "the body could not be read".into(),
            ),
            Reply::Unauthorized(why) => ("error", "invalid_signature", why.to_string()),
            Reply::MissingHeader(name) => (
                "error",
                "missing_header",
                format!("the X-{name} header is required"),
            ),
            Reply::Unavailable(why) => (
                "error",
                "unavailable",
                format!("{}; retry later", why.message()),
            ),
            Reply::Http2Disabled => (
                "error",
                "http2_disabled",
                "HTTP/2 is off (AFTERCART_INGRESS_HTTP2); use HTTP/1.1".into(),
            ),
            Reply::BodyBudgetExhausted => (
                "error",
                "busy",
                "too many request bodies in flight (AFTERCART_INGRESS_BODY_BUDGET_BYTES); retry later"
                    .into(),
            ),
        };
        let mut body = format!("{{\"{key}\":\"{code}\"");
        if !reason.is_empty() {
            // Reasons are fixed ASCII sentences without quotes or backslashes.
            body.push_str(&format!(",\"reason\":\"{reason}\""));
        }
        body.push_str("}\n");
        body
    }

    /// The whole answer as HTTP/1.1 bytes with `Connection: close`, for a connection no HTTP
    /// server serves (an HTTP/2 preface while HTTP/2 is off).
    pub fn into_http1_closing_bytes(self) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            Reply::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Reply::Unavailable(_) | Reply::BodyBudgetExhausted => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_body_is_valid_json() {
        let replies = [
            Reply::Accepted,
            Reply::Duplicate,
            Reply::Quarantined(PayloadError::NotJson),
            Reply::NotFound,
            Reply::MethodNotAllowed,
            Reply::PayloadTooLarge,
            Reply::BodyTimeout,
            Reply::BodyUnreadable,
            Reply::Unauthorized(SignatureError::Mismatch),
            Reply::MissingHeader("Shopify-Topic"),
            Reply::Unavailable(Unavailable::NoSpool("Kafka did not acknowledge in time")),
            Reply::BodyBudgetExhausted,
            Reply::Http2Disabled,
        ];
        for reply in replies {
            let parsed: serde_json::Value = serde_json::from_str(&reply.body()).unwrap();
            assert!(parsed.is_object(), "{reply:?}");
        }
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(Reply::Duplicate.status(), 200);
        assert_eq!(Reply::Quarantined(PayloadError::NotObject).status(), 200);
        assert_eq!(Reply::Unauthorized(SignatureError::Missing).status(), 401);
        assert_eq!(Reply::MissingHeader("Shopify-Topic").status(), 400);
        assert_eq!(Reply::PayloadTooLarge.status(), 413);
        let unavailable = Reply::Unavailable(Unavailable::ArrivedLate).into_response();
        assert_eq!(unavailable.status(), 503);
        assert_eq!(unavailable.headers()[header::RETRY_AFTER], "5");
        let refused = String::from_utf8(Reply::Http2Disabled.into_http1_closing_bytes()).unwrap();
        assert!(
            refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{refused}"
        );
        assert!(refused.contains("connection: close\r\n\r\n{\"error\":\"http2_disabled\""));
        let busy = Reply::BodyBudgetExhausted.into_response();
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            Reply::MethodNotAllowed.into_response().headers()[header::ALLOW],
            "POST"
        );
    }
}

//! Pure per-platform audience codecs: hashed rows, HTTP requests and answer judgement for Meta,
//! Google Ads and TikTok (no I/O, no logging).
//!
//! Each platform module ([`meta`], [`google`], [`tiktok`]) normalises a raw [`Contact`] by **its own**
//! rules and hashes each value with SHA-256 (lower-case hex). A value normalised for one platform is
//! never passed to another (domain.md §4): the only things shared are the raw-field accessors of
//! [`contact`], the E.164 candidate of [`phone`] (each platform formats from it) and [`hash`].
//!
//! A platform's `row(&Contact)` is what travels in a Kafka record between the engine and the
//! exporter: self-contained JSON, hashed, with no raw personal data except Google's
//! `countryCode`/`postalCode`, which Google wants unhashed. The request builders turn a batch of such
//! rows into [`Request`]s; `judge` turns the platform's answer into a [`Judgement`].
//!
//! Nothing here logs. Credentials are [`Secret`]s (their `Debug` prints `***`) and every header that
//! carries one is marked sensitive ([`http::HeaderValue::set_sensitive`]).

pub mod contact;
pub mod datamanager;
pub mod google;
pub mod hash;
pub mod meta;
pub use aftercart_shopify::phone;
pub mod plain;
pub mod tiktok;

pub use contact::Contact;

/// Which codec makes a destination's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Meta,
    /// The Data Manager API (`google` destinations).
    #[serde(rename = "google_datamanager")]
    GoogleDataManager,
    /// The Google Ads API (`google_ads_legacy` destinations).
    Google,
    Tiktok,
    /// `file` and `webhook` destinations: [`plain`] rows.
    Plain,
}

impl Platform {
    /// The platform's hashed identifiers of one person, by its own rules.
    pub fn row(self, contact: &Contact) -> Option<serde_json::Value> {
        match self {
            Platform::Meta => meta::row(contact),
            Platform::GoogleDataManager => datamanager::row(contact),
            Platform::Google => google::row(contact),
            Platform::Tiktok => tiktok::row(contact),
            Platform::Plain => plain::row(contact),
        }
    }

    /// Most rows one request may carry.
    pub fn max_rows(self) -> usize {
        match self {
            Platform::Meta => meta::MAX_ROWS,
            Platform::GoogleDataManager => datamanager::MAX_ROWS,
            Platform::Google => google::MAX_ROWS,
            Platform::Tiktok => tiktok::MAX_ROWS,
            Platform::Plain => 10_000,
        }
    }
}

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};

/// Whether a batch adds people to an audience or removes them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Add the rows' people to the audience.
    Add,
    /// Remove the rows' people from the audience.
    Remove,
}

/// One HTTP request to make. Headers holding credentials are marked sensitive
/// ([`HeaderValue::set_sensitive`]), so `Debug` shows them as `Sensitive`.
#[derive(Debug, Clone)]
pub struct Request {
    /// The HTTP method.
    pub method: http::Method,
    /// The absolute URL, credentials never in it.
    pub url: String,
    /// The headers, in order; `content-type` and `idempotency-key` included.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The JSON body.
    pub body: bytes::Bytes,
}

/// What a platform's answer means for the batch that was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Accepted; the parsed JSON body (`Null` when the body was empty).
    Accepted(serde_json::Value),
    /// Try again later (408, 429, 5xx, or a rate-limit / internal-error code in the body).
    Retry,
    /// Rejected for good (other 4xx, or a non-retryable error code in the body).
    Reject,
}

/// A credential: `Debug` never shows it; only `expose` gives the value, to build a header.
/// The same type as the Shopify signing secrets.
pub use aftercart_shopify::Secret;

/// Why a request could not be built. These are caller bugs or bad configuration, never platform
/// answers; no variant carries a credential or personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The batch id is not 32 lower-case hex characters.
    #[error("batch id must be 32 lower-case hex characters")]
    BadBatchId,
    /// The batch has no rows.
    #[error("a batch needs at least one row")]
    NoRows,
    /// The batch has more rows than the platform takes in one request.
    #[error("{got} rows exceed the per-request limit of {max}")]
    TooManyRows {
        /// The platform's `MAX_ROWS`.
        max: usize,
        /// Rows given.
        got: usize,
    },
    /// A row is not of the shape this platform's `row` produces.
    #[error("row {0} is not a row of this platform")]
    BadRow(usize),
    /// A target field is unusable (named, value not shown).
    #[error("target field `{0}` is invalid")]
    BadTarget(&'static str),
    /// A Google job resource name is not `customers/<id>/offlineUserDataJobs/<id>` of the target.
    #[error("job resource name is not an offline user data job of this customer")]
    BadJobName,
}

/// `idempotency-key`, sent with the batch id on every request (the platforms ignore headers they
/// do not know, so it is harmless where it is not honoured).
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Checks the batch id and the row count against the platform's limit.
pub(crate) fn check_batch(
    rows: &[serde_json::Value],
    batch_id: &str,
    max: usize,
) -> Result<(), BuildError> {
    hash::check_batch_id(batch_id)?;
    match rows.len() {
        0 => Err(BuildError::NoRows),
        got if got > max => Err(BuildError::TooManyRows { max, got }),
        _ => Ok(()),
    }
}

/// A JSON request with `content-type` and `idempotency-key` added after the given headers.
pub(crate) fn json_request(
    method: http::Method,
    url: String,
    mut headers: Vec<(HeaderName, HeaderValue)>,
    body: &serde_json::Value,
    batch_id: &str,
) -> Result<Request, BuildError> {
    headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    let key = HeaderValue::from_str(batch_id).map_err(|_| BuildError::BadBatchId)?;
    headers.push((IDEMPOTENCY_KEY, key));
    Ok(Request {
        method,
        url,
        headers,
        body: bytes::Bytes::from(body.to_string()),
    })
}

/// A header value holding a credential, marked sensitive. The error names only the field.
pub(crate) fn sensitive(value: &str, field: &'static str) -> Result<HeaderValue, BuildError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| BuildError::BadTarget(field))?;
    if value.is_empty() {
        return Err(BuildError::BadTarget(field));
    }
    header.set_sensitive(true);
    Ok(header)
}

/// `Authorization: Bearer <token>`, marked sensitive.
pub(crate) fn bearer(token: &Secret, field: &'static str) -> Result<HeaderValue, BuildError> {
    if token.expose().is_empty() {
        return Err(BuildError::BadTarget(field));
    }
    sensitive(&format!("Bearer {}", token.expose()), field)
}

/// An id that must be ASCII digits (dashes, as in Google's `123-456-7890`, are dropped).
pub(crate) fn numeric_id(value: &str, field: &'static str) -> Result<String, BuildError> {
    let id: String = value.trim().chars().filter(|c| *c != '-').collect();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BuildError::BadTarget(field));
    }
    Ok(id)
}

/// A base URL without its trailing slashes; must be `http(s)://…`.
pub(crate) fn base_url<'a>(value: &'a str, field: &'static str) -> Result<&'a str, BuildError> {
    let base = value.trim().trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err(BuildError::BadTarget(field));
    }
    Ok(base)
}

/// An API version path segment such as `v25.0`, `v26` or `v1.3`.
pub(crate) fn version<'a>(value: &'a str, field: &'static str) -> Result<&'a str, BuildError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if ok {
        Ok(value)
    } else {
        Err(BuildError::BadTarget(field))
    }
}

/// How an HTTP status reads before the body is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 2xx: the body decides.
    Success,
    /// 408, 429, 5xx: try again.
    Retry,
    /// Any other status (other 4xx; 1xx/3xx are unexpected and treated alike): the body may still
    /// name a retryable code, otherwise rejected for good.
    Failure,
}

pub(crate) fn classify(status: http::StatusCode) -> StatusClass {
    if status.is_success() {
        StatusClass::Success
    } else if status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        StatusClass::Retry
    } else {
        StatusClass::Failure
    }
}

/// The body as JSON: `Ok(Null)` when empty or whitespace, `Err` when not JSON.
pub(crate) fn parse_body(body: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(body)
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_platform_hashes_the_same_contact_by_its_own_rules() {
        let contact = Contact {
            email: Some(" Jane.Doe+Shop@Gmail.com ".into()),
            phone: Some("020 7946 0958".into()),
            country: Some("GB".into()),
            ..Contact::default()
        };
        let meta = meta::row(&contact).unwrap();
        let google = google::row(&contact).unwrap();
        let tiktok = tiktok::row(&contact).unwrap();
        // Meta and Google keep dots and tag (each by its own code), TikTok drops the tag.
        assert_eq!(meta["EMAIL"], hash::sha256_hex("jane.doe+shop@gmail.com"));
        assert_eq!(
            google["userIdentifiers"][0]["hashedEmail"],
            hash::sha256_hex("jane.doe+shop@gmail.com")
        );
        assert_eq!(
            tiktok["EMAIL_SHA256"],
            hash::sha256_hex("jane.doe@gmail.com")
        );
        // Google hashes E.164 with its plus; Meta and TikTok the digits alone.
        assert_eq!(
            google["userIdentifiers"][1]["hashedPhoneNumber"],
            hash::sha256_hex("+442079460958")
        );
        assert_eq!(meta["PHONE"], hash::sha256_hex("442079460958"));
        assert_eq!(tiktok["PHONE_SHA256"], hash::sha256_hex("442079460958"));
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret = Secret::new("EAAB-very-secret");
        assert!(!format!("{secret:?}").contains("EAAB"));
        assert_eq!(secret.expose(), "EAAB-very-secret");
    }

    #[test]
    fn ops_serialise_in_lower_case() {
        assert_eq!(serde_json::to_string(&Op::Add).unwrap(), "\"add\"");
        assert_eq!(
            serde_json::from_str::<Op>("\"remove\"").unwrap(),
            Op::Remove
        );
    }

    #[test]
    fn a_bearer_header_is_sensitive_and_hidden_from_debug() {
        let header = bearer(&Secret::new("abc"), "access_token").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Bearer abc");
        assert!(!format!("{header:?}").contains("abc"));
    }

    #[test]
    fn an_empty_or_unprintable_credential_is_refused_without_echoing_it() {
        assert_eq!(
            bearer(&Secret::new(""), "access_token"),
            Err(BuildError::BadTarget("access_token"))
        );
        let err = sensitive("bad\nvalue", "developer_token").unwrap_err();
        assert!(!err.to_string().contains("bad"));
    }

    #[test]
    fn statuses_classify_into_success_retry_and_failure() {
        use http::StatusCode as S;
        assert_eq!(classify(S::OK), StatusClass::Success);
        assert_eq!(classify(S::NO_CONTENT), StatusClass::Success);
        assert_eq!(classify(S::TOO_MANY_REQUESTS), StatusClass::Retry);
        assert_eq!(classify(S::REQUEST_TIMEOUT), StatusClass::Retry);
        assert_eq!(classify(S::BAD_GATEWAY), StatusClass::Retry);
        assert_eq!(classify(S::BAD_REQUEST), StatusClass::Failure);
        assert_eq!(classify(S::UNAUTHORIZED), StatusClass::Failure);
        assert_eq!(classify(S::FOUND), StatusClass::Failure);
    }

    #[test]
    fn batch_checks_refuse_empty_oversized_and_badly_named_batches() {
        let id = "0123456789abcdef0123456789abcdef";
        let row = serde_json::json!({});
        assert_eq!(check_batch(&[], id, 2), Err(BuildError::NoRows));
        assert_eq!(
            check_batch(&[row.clone(), row.clone(), row.clone()], id, 2),
            Err(BuildError::TooManyRows { max: 2, got: 3 })
        );
        assert_eq!(
            check_batch(std::slice::from_ref(&row), "XYZ", 2),
            Err(BuildError::BadBatchId)
        );
        assert_eq!(check_batch(&[row], id, 2), Ok(()));
    }

    #[test]
    fn numeric_ids_drop_dashes_and_refuse_anything_else() {
        assert_eq!(
            numeric_id("123-456-7890", "customer_id").unwrap(),
            "1234567890"
        );
        assert!(numeric_id("12/../34", "customer_id").is_err());
        assert!(numeric_id("", "customer_id").is_err());
    }

    #[test]
    fn base_urls_lose_trailing_slashes_and_need_a_scheme() {
        assert_eq!(
            base_url("https://graph.facebook.com/", "base_url").unwrap(),
            "https://graph.facebook.com"
        );
        assert!(base_url("graph.facebook.com", "base_url").is_err());
    }

    #[test]
    fn an_empty_body_parses_as_null() {
        assert_eq!(parse_body(b"  ").unwrap(), serde_json::Value::Null);
        assert!(parse_body(b"<html>").is_err());
    }
}

//! TikTok custom audiences through the Business API audience **segment mapping** endpoint:
//! TikTok's normalisation, the add/delete request, and how to read TikTok's answers.
//!
//! Endpoint: `POST {base}/open_api/v1.3/segment/mapping/` with header `Access-Token`, JSON body
//! `{"advertiser_ids": [...], "action": "add" | "delete", "id_schema": ["EMAIL_SHA256",
//! "PHONE_SHA256"], "batch_data": [[{"id": <hash>, "audience_ids": [...]}, {}], ...]}`: one inner
//! array per person, aligned with `id_schema`, `{}` where the person has no such identifier.
//! - Audience segment API (v1.3), as partners cite it:
//!   <https://business-api.tiktok.com/portal/docs?id=1739940506015746>,
//!   <https://ads.tiktok.com/marketing_api/docs?id=1736874036878337>
//! - Identifier formats: <https://ads.tiktok.com/help/article/list-of-supported-ids-and-formats-for-a-customer-file>
//! - Return codes: `code` 0 is success, 40100 the rate limit ("requests too frequent"), 5xxxx
//!   system errors (taken from partners' integrations; TikTok's return-code page was not at hand).
//!
//! Why this endpoint and not `dmp/custom_audience/file/upload/` + `dmp/custom_audience/update/`
//! (APPEND / REMOVE, <https://business-api.tiktok.com/portal/docs/update-an-audience/v1.3>): the
//! file flow needs a multipart CSV upload, then a second call naming the file, and is processed
//! as a whole file; segment mapping takes a JSON batch of hashed ids with `add` or `delete` in one
//! call, which is what an incremental add/remove batch is. It is the endpoint TikTok's audience
//! partners (Segment, RudderStack, Tealium) use for the same purpose.
//!
//! TikTok answers HTTP 200 with `{"code": <non-zero>, "message": …}` on errors, so [`judge`]
//! reads the body. The segment API has no idempotency field: the batch id travels only in the
//! `idempotency-key` header, which TikTok ignores; adds and deletes are naturally idempotent.
//!
//! Normalisation (TikTok's): email trimmed, lower-cased, `+tag` before `@` removed (any domain;
//! dots kept); phone digits only with country code, no `+` (from [`phone::e164`]).

use serde_json::{json, Value};

use super::{
    base_url, check_batch, classify, hash, json_request, numeric_id, parse_body, sensitive,
    version, BuildError, Contact, Judgement, Op, Request, Secret, StatusClass,
};

/// The Business API host.
pub const DEFAULT_BASE_URL: &str = "https://business-api.tiktok.com";
/// The Business API version used unless the target says otherwise.
pub const DEFAULT_VERSION: &str = "v1.3";
/// People per request. TikTok's reference did not state a `batch_data` limit that could be
/// confirmed; 1,000 keeps a request near 200 KB, within what partners batch (Tealium: 1,000
/// records or 1 MB).
pub const MAX_ROWS: usize = 1_000;
/// The identifier schema of every row and request, in `batch_data` order.
pub const ID_SCHEMA: [&str; 2] = ["EMAIL_SHA256", "PHONE_SHA256"];

/// Business API `code` for too many requests (QPS/QPM/QPD limits).
const RATE_LIMITED: i64 = 40100;
/// Business API system error codes (`50000` system error, `50002` service error, …).
const SYSTEM_ERRORS: std::ops::RangeInclusive<i64> = 50000..=59999;

/// One TikTok audience to write to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Business API base URL, [`DEFAULT_BASE_URL`] unless testing.
    pub base_url: String,
    /// Business API version, e.g. `v1.3`.
    pub version: String,
    /// The advertiser (ad account) id (digits).
    pub advertiser_id: String,
    /// The audience id (digits).
    pub audience_id: String,
    /// A long-lived access token with the Audience Management scope (`Access-Token` header).
    pub access_token: Secret,
}

impl Target {
    /// A target on the default host and version.
    pub fn new(
        advertiser_id: impl Into<String>,
        audience_id: impl Into<String>,
        access_token: Secret,
    ) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            version: DEFAULT_VERSION.to_owned(),
            advertiser_id: advertiser_id.into(),
            audience_id: audience_id.into(),
            access_token,
        }
    }
}

/// TikTok's hashed identifiers of one person: `{"EMAIL_SHA256": …, "PHONE_SHA256": …}` with the
/// identifiers present. `None` without an email or a usable phone.
pub fn row(contact: &Contact) -> Option<Value> {
    let email = contact.raw_email().and_then(normalise_email);
    let phone = contact.phone_e164().map(|n| n.digits().to_owned());
    let row = hash::hashed_fields([("EMAIL_SHA256", email), ("PHONE_SHA256", phone)]);
    (!row.is_empty()).then_some(Value::Object(row))
}

/// The request that adds or deletes `rows` (from [`row`]) to or from the target audience.
pub fn request(
    target: &Target,
    op: Op,
    rows: &[Value],
    batch_id: &str,
) -> Result<Request, BuildError> {
    check_batch(rows, batch_id, MAX_ROWS)?;
    let advertiser = numeric_id(&target.advertiser_id, "advertiser_id")?;
    let audience = numeric_id(&target.audience_id, "audience_id")?;
    let batch_data = rows
        .iter()
        .enumerate()
        .map(|(index, row)| batch_entry(row, &audience).ok_or(BuildError::BadRow(index)))
        .collect::<Result<Vec<_>, _>>()?;
    let url = format!(
        "{}/open_api/{}/segment/mapping/",
        base_url(&target.base_url, "base_url")?,
        version(&target.version, "version")?
    );
    let action = match op {
        Op::Add => "add",
        Op::Remove => "delete",
    };
    let body = json!({
        "advertiser_ids": [advertiser],
        "action": action,
        "id_schema": ID_SCHEMA,
        "batch_data": batch_data,
    });
    let token = sensitive(target.access_token.expose(), "access_token")?;
    let headers = vec![(http::HeaderName::from_static("access-token"), token)];
    json_request(http::Method::POST, url, headers, &body, batch_id)
}

/// What a TikTok answer means: a 2xx whose body has `code` 0 is accepted with the body; `code`
/// 40100 (rate limit) or 5xxxx (system error), a 2xx body that is not TikTok's JSON, 408, 429
/// and 5xx are retried; any other code and other statuses are rejected.
pub fn judge(status: http::StatusCode, body: &[u8]) -> Judgement {
    match classify(status) {
        StatusClass::Retry => Judgement::Retry,
        StatusClass::Failure => Judgement::Reject,
        StatusClass::Success => {
            let Ok(answer) = parse_body(body) else {
                return Judgement::Retry;
            };
            match answer.get("code").and_then(Value::as_i64) {
                Some(0) => Judgement::Accepted(answer),
                Some(code) if code == RATE_LIMITED || SYSTEM_ERRORS.contains(&code) => {
                    Judgement::Retry
                }
                Some(_) => Judgement::Reject,
                None => Judgement::Retry,
            }
        }
    }
}

/// One `batch_data` entry in [`ID_SCHEMA`] order, `{}` for a missing id; `None` if `row` is not
/// one of ours.
fn batch_entry(row: &Value, audience: &str) -> Option<Vec<Value>> {
    let object = row.as_object().filter(|o| !o.is_empty())?;
    let known = object.iter().all(|(key, value)| {
        ID_SCHEMA.contains(&key.as_str()) && value.as_str().is_some_and(hash::is_sha256_hex)
    });
    known.then(|| {
        ID_SCHEMA
            .iter()
            .map(|key| match object.get(*key) {
                Some(id) => json!({ "id": id, "audience_ids": [audience] }),
                None => json!({}),
            })
            .collect()
    })
}

pub(crate) fn normalise_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let local = local.split('+').next().unwrap_or("");
    (!local.is_empty()).then(|| format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = "0123456789abcdef0123456789abcdef";

    fn jane() -> Contact {
        Contact {
            email: Some("  John+Shop@Example.COM ".into()),
            phone: Some("+1 (613) 555-1111".into()),
            first_name: Some("John".into()),
            last_name: Some("Smith".into()),
            country: Some("CA".into()),
            zip: Some("K1A 0B1".into()),
        }
    }

    #[test]
    fn email_is_trimmed_lower_cased_and_loses_its_plus_tag() {
        assert_eq!(
            normalise_email(" Test@Example.COM ").as_deref(),
            Some("test@example.com")
        );
        assert_eq!(
            normalise_email("John+Shop@Example.com").as_deref(),
            Some("john@example.com")
        );
        assert_eq!(normalise_email("+shop@example.com"), None);
        let row = row(&jane()).unwrap();
        // printf '%s' 'john@example.com' | sha256sum
        assert_eq!(
            row["EMAIL_SHA256"],
            "855f96e983f1f8e8be944692b6f719fd54329826cb62e98015efee8e2e071dd4"
        );
    }

    #[test]
    fn gmail_dots_are_kept_for_tiktok() {
        assert_eq!(
            normalise_email("Jane.Doe@gmail.com").as_deref(),
            Some("jane.doe@gmail.com")
        );
        // TikTok's own example: "janedoe@gmail.com" hashes to d6117306…
        let row = row(&Contact {
            email: Some("JaneDoe+x@Gmail.com".into()),
            ..Contact::default()
        })
        .unwrap();
        assert_eq!(
            row["EMAIL_SHA256"],
            "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
        );
    }

    #[test]
    fn phone_is_digits_with_country_code_and_no_plus() {
        let row = row(&jane()).unwrap();
        // printf '%s' '16135551111' | sha256sum
        assert_eq!(
            row["PHONE_SHA256"],
            "bce4114040c04005413613d7950887ab3f4ea58f9365885ac9ff077e55ba1b56"
        );
        let uk = Contact {
            phone: Some("020-7946-0958".into()),
            country: Some("gb".into()),
            ..Contact::default()
        };
        // printf '%s' '442079460958' | sha256sum
        assert_eq!(
            super::row(&uk).unwrap()["PHONE_SHA256"],
            "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823"
        );
    }

    #[test]
    fn names_and_addresses_are_not_sent_and_nothing_matchable_gives_no_row() {
        let row = row(&jane()).unwrap();
        assert_eq!(row.as_object().unwrap().len(), 2);
        let text = row.to_string().to_lowercase();
        for raw in ["john", "smith", "example", "6135551111", "k1a"] {
            assert!(!text.contains(raw), "{raw} leaked");
        }
        let nothing = Contact {
            email: Some("not-an-email".into()),
            phone: Some("12".into()),
            ..jane()
        };
        assert_eq!(super::row(&nothing), None);
    }

    fn target() -> Target {
        Target::new("7000000000000000001", "123456789", Secret::new("tt-token"))
    }

    fn header<'a>(request: &'a Request, name: &str) -> &'a http::HeaderValue {
        &request
            .headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .unwrap()
            .1
    }

    #[test]
    fn adding_posts_aligned_batch_data_to_segment_mapping() {
        let email_only = row(&Contact {
            email: Some("a@b.co".into()),
            ..Contact::default()
        })
        .unwrap();
        let rows = vec![row(&jane()).unwrap(), email_only.clone()];
        let request = request(&target(), Op::Add, &rows, BATCH).unwrap();
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(
            request.url,
            "https://business-api.tiktok.com/open_api/v1.3/segment/mapping/"
        );
        let token = header(&request, "access-token");
        assert!(token.is_sensitive());
        assert_eq!(token, "tt-token");
        assert_eq!(header(&request, "content-type"), "application/json");
        assert_eq!(header(&request, "idempotency-key"), BATCH);

        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert!(!body.to_string().contains("tt-token"));
        assert_eq!(body["advertiser_ids"], json!(["7000000000000000001"]));
        assert_eq!(body["action"], "add");
        assert_eq!(body["id_schema"], json!(["EMAIL_SHA256", "PHONE_SHA256"]));
        assert_eq!(
            body["batch_data"],
            json!([
                [
                    {"id": rows[0]["EMAIL_SHA256"], "audience_ids": ["123456789"]},
                    {"id": rows[0]["PHONE_SHA256"], "audience_ids": ["123456789"]},
                ],
                [{"id": email_only["EMAIL_SHA256"], "audience_ids": ["123456789"]}, {}],
            ])
        );
    }

    #[test]
    fn removing_sends_the_delete_action() {
        let request = request(&target(), Op::Remove, &[row(&jane()).unwrap()], BATCH).unwrap();
        assert_eq!(request.method, http::Method::POST);
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["action"], "delete");
    }

    #[test]
    fn foreign_or_oversized_batches_and_bad_targets_are_refused() {
        let good = row(&jane()).unwrap();
        for bad in [
            json!({}),
            json!({"EMAIL": hash::sha256_hex("x")}),
            json!({"EMAIL_SHA256": "a@b.co"}),
        ] {
            assert_eq!(
                request(&target(), Op::Add, &[good.clone(), bad], BATCH).unwrap_err(),
                BuildError::BadRow(1)
            );
        }
        assert_eq!(
            request(&target(), Op::Add, &vec![good.clone(); MAX_ROWS + 1], BATCH).unwrap_err(),
            BuildError::TooManyRows {
                max: MAX_ROWS,
                got: MAX_ROWS + 1
            }
        );
        let no_token = Target {
            access_token: Secret::new(""),
            ..target()
        };
        assert_eq!(
            request(&no_token, Op::Add, std::slice::from_ref(&good), BATCH).unwrap_err(),
            BuildError::BadTarget("access_token")
        );
        let bad_advertiser = Target {
            advertiser_id: "adv 1".into(),
            ..target()
        };
        assert_eq!(
            request(&bad_advertiser, Op::Add, &[good], BATCH).unwrap_err(),
            BuildError::BadTarget("advertiser_id")
        );
    }

    #[test]
    fn code_zero_is_accepted_with_the_body() {
        let body = br#"{"code":0,"message":"OK","request_id":"r1","data":{}}"#;
        assert_eq!(
            judge(http::StatusCode::OK, body),
            Judgement::Accepted(serde_json::from_slice(body).unwrap())
        );
    }

    #[test]
    fn rate_limit_and_system_error_codes_in_a_200_body_are_retried() {
        use http::StatusCode as S;
        assert_eq!(
            judge(S::OK, br#"{"code":40100,"message":"Too many requests"}"#),
            Judgement::Retry
        );
        assert_eq!(
            judge(S::OK, br#"{"code":50000,"message":"System error"}"#),
            Judgement::Retry
        );
        assert_eq!(
            judge(S::OK, br#"{"code":50002,"message":"Service error"}"#),
            Judgement::Retry
        );
        assert_eq!(judge(S::OK, b"<html>gateway</html>"), Judgement::Retry);
        assert_eq!(judge(S::OK, b""), Judgement::Retry);
        assert_eq!(judge(S::TOO_MANY_REQUESTS, b""), Judgement::Retry);
        assert_eq!(judge(S::BAD_GATEWAY, b""), Judgement::Retry);
    }

    #[test]
    fn other_codes_and_client_errors_are_rejected() {
        use http::StatusCode as S;
        assert_eq!(
            judge(S::OK, br#"{"code":40001,"message":"Invalid parameter"}"#),
            Judgement::Reject
        );
        assert_eq!(
            judge(
                S::OK,
                br#"{"code":40105,"message":"Access token is invalid"}"#
            ),
            Judgement::Reject
        );
        assert_eq!(judge(S::UNAUTHORIZED, br#"{"code":0}"#), Judgement::Reject);
    }
}

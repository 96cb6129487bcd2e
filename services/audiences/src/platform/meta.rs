//! Meta Custom Audiences (customer list): Meta's normalisation, the `/{audience_id}/users` edge,
//! and how to read its answers.
//!
//! - Users edge (add with `POST`, remove with `DELETE` on the same path, at most 10,000 rows per
//!   request): <https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users>
//! - Hashing and normalising customer data:
//!   <https://developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences>
//! - Upload sessions (`session_id`, `batch_seq`, `last_batch_flag`, `estimated_num_total`):
//!   <https://developers.facebook.com/docs/marketing-api/reference/custom-audience-session>
//! - Error codes and rate limits: <https://developers.facebook.com/docs/graph-api/guides/error-handling>,
//!   <https://developers.facebook.com/documentation/ads-commerce/marketing-api/error-reference>,
//!   <https://developers.facebook.com/docs/marketing-api/overview/rate-limiting>,
//!   <https://developers.facebook.com/docs/graph-api/overview/rate-limiting>
//!
//! Choices:
//! - The access token goes in `Authorization: Bearer …` (the Graph API takes it there as well as in
//!   `access_token`), marked sensitive: never in the URL, where proxies log it, nor in the body.
//! - Each request is a one-batch session: `session_id` is derived from the batch id
//!   ([`hash::batch_number`]), `batch_seq` 1, `last_batch_flag` true, so a retried batch replays the
//!   same session instead of starting a new one.
//! - Multi-key schema [`SCHEMA`]; a missing field is sent as `""`. A row needs an email or a phone.
//! - Names (`FN`, `LN`): lower-case, letters only. Meta says "a-z only, no punctuation, special
//!   characters in UTF-8": we keep every Unicode letter (`é`, `ø`, `ß` stay, as UTF-8), and drop
//!   spaces, digits and punctuation (`O'Brien` → `obrien`, `Jean-Luc` → `jeanluc`). Input is taken
//!   as Shopify sends it (composed, NFC); a decomposed accent would be dropped, not composed.
//! - `ZIP`: lower-case, no whitespace, the part before `-` (domain.md §4: `1000-001` → `1000`);
//!   a US zip (country US, or shaped `12345-6789` without a country) keeps its first 5 digits
//!   (`SW1A 1AA` → `sw1a1aa`).
//! - `COUNTRY`: lower-case ISO alpha-2. `PHONE`: digits only with country code, no `+`, no leading
//!   zero (from [`phone::e164`]). `EMAIL`: trimmed and lower-cased, nothing else (no Gmail rules).

use serde_json::{json, Value};

use super::{
    base_url, bearer, check_batch, classify, hash, json_request, numeric_id, parse_body, version,
    BuildError, Contact, Judgement, Op, Request, Secret, StatusClass,
};

/// The Graph API host.
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// The Graph API version used unless the target says otherwise (the newest the reference shows).
pub const DEFAULT_VERSION: &str = "v25.0";
/// Rows per request (Meta: "a maximum of 10000 at a time").
pub const MAX_ROWS: usize = 10_000;
/// The multi-key schema, in the order of each data row.
pub const SCHEMA: [&str; 6] = ["EMAIL", "PHONE", "FN", "LN", "ZIP", "COUNTRY"];

/// Graph API error codes worth retrying: unknown (1), service (2), app / user / page / ad-account
/// rate limits (4, 17, 32, 341, 613) and the business-use-case rate limits of custom audiences
/// (80003) and ads management (80004).
const RETRYABLE_CODES: [i64; 9] = [1, 2, 4, 17, 32, 341, 613, 80003, 80004];

/// One Meta custom audience to write to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Graph API base URL, [`DEFAULT_BASE_URL`] unless testing.
    pub base_url: String,
    /// Graph API version, e.g. `v25.0`.
    pub version: String,
    /// The custom audience id (digits).
    pub audience_id: String,
    /// A system-user access token with `ads_management` on the audience's ad account.
    pub access_token: Secret,
}

impl Target {
    /// A target on the default host and version.
    pub fn new(audience_id: impl Into<String>, access_token: Secret) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            version: DEFAULT_VERSION.to_owned(),
            audience_id: audience_id.into(),
            access_token,
        }
    }
}

/// Meta's hashed identifiers of one person: a JSON object keyed by [`SCHEMA`] names (only the
/// fields present), each value SHA-256 hex of the Meta-normalised field. `None` without an email
/// or a usable phone.
pub fn row(contact: &Contact) -> Option<Value> {
    let country = contact.country_alpha2();
    let email = contact.raw_email().map(normalise_email);
    let phone = contact.phone_e164().map(|n| n.digits().to_owned());
    if email.is_none() && phone.is_none() {
        return None;
    }
    let fields = [
        ("EMAIL", email),
        ("PHONE", phone),
        ("FN", contact.raw_first_name().and_then(normalise_name)),
        ("LN", contact.raw_last_name().and_then(normalise_name)),
        (
            "ZIP",
            contact
                .raw_zip()
                .and_then(|z| normalise_zip(z, country.as_deref())),
        ),
        ("COUNTRY", country.map(|c| c.to_ascii_lowercase())),
    ];
    Some(Value::Object(hash::hashed_fields(fields)))
}

/// The request that adds (`POST`) or removes (`DELETE`) `rows` (from [`row`]) to or from the
/// target audience, as one upload session identified by `batch_id`.
pub fn request(
    target: &Target,
    op: Op,
    rows: &[Value],
    batch_id: &str,
) -> Result<Request, BuildError> {
    check_batch(rows, batch_id, MAX_ROWS)?;
    let data = rows
        .iter()
        .enumerate()
        .map(|(index, row)| data_row(row).ok_or(BuildError::BadRow(index)))
        .collect::<Result<Vec<_>, _>>()?;
    let url = format!(
        "{}/{}/{}/users",
        base_url(&target.base_url, "base_url")?,
        version(&target.version, "version")?,
        numeric_id(&target.audience_id, "audience_id")?,
    );
    let body = json!({
        "payload": { "schema": SCHEMA, "data": data },
        "session": {
            "session_id": hash::batch_number(batch_id)?,
            "batch_seq": 1,
            "last_batch_flag": true,
            "estimated_num_total": rows.len(),
        },
    });
    let method = match op {
        Op::Add => http::Method::POST,
        Op::Remove => http::Method::DELETE,
    };
    let auth = bearer(&target.access_token, "access_token")?;
    json_request(
        method,
        url,
        vec![(http::header::AUTHORIZATION, auth)],
        &body,
        batch_id,
    )
}

/// What a users-edge answer means. Meta reports rate limits as 4xx (or 200) with an `error`
/// object, so a retryable Graph error code (or `is_transient: true`) is retried whatever the
/// status; 408, 429 and 5xx are retried; other errors are rejected; a 2xx without `error` is
/// accepted with its body (`num_received`, `num_invalid_entries`, …).
pub fn judge(status: http::StatusCode, body: &[u8]) -> Judgement {
    let parsed = parse_body(body);
    let error = parsed.as_ref().ok().and_then(|v| v.get("error"));
    match (classify(status), error) {
        (StatusClass::Retry, _) => Judgement::Retry,
        (_, Some(error)) if is_retryable(error) => Judgement::Retry,
        (_, Some(_)) | (StatusClass::Failure, None) => Judgement::Reject,
        (StatusClass::Success, None) => Judgement::Accepted(parsed.unwrap_or(Value::Null)),
    }
}

fn is_retryable(error: &Value) -> bool {
    let transient = error.get("is_transient").and_then(Value::as_bool) == Some(true);
    let code = error.get("code").and_then(Value::as_i64);
    transient || code.is_some_and(|c| RETRYABLE_CODES.contains(&c))
}

/// One data row in [`SCHEMA`] order, `""` for a missing field; `None` if `row` is not one of ours.
fn data_row(row: &Value) -> Option<Vec<String>> {
    let object = row.as_object()?;
    let known = object.iter().all(|(key, value)| {
        SCHEMA.contains(&key.as_str()) && value.as_str().is_some_and(hash::is_sha256_hex)
    });
    let matchable = object.contains_key("EMAIL") || object.contains_key("PHONE");
    (known && matchable).then(|| {
        SCHEMA
            .iter()
            .map(|key| {
                object
                    .get(*key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    })
}

fn normalise_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn normalise_name(raw: &str) -> Option<String> {
    let name: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphabetic())
        .collect();
    (!name.is_empty()).then_some(name)
}

fn normalise_zip(raw: &str, country: Option<&str>) -> Option<String> {
    let zip: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let us_shaped = |z: &str| {
        let (five, four) = z.split_once('-').unwrap_or((z, ""));
        five.len() == 5
            && five.bytes().all(|b| b.is_ascii_digit())
            && (four.is_empty() || (four.len() == 4 && four.bytes().all(|b| b.is_ascii_digit())))
    };
    // Meta: the part before `-` (domain.md §4), and a US zip's first five digits.
    let before_dash = zip.split('-').next().unwrap_or("");
    let zip: String = match country {
        Some("US") => before_dash.chars().take(5).collect(),
        None if us_shaped(&zip) => zip[..5].to_owned(),
        _ => before_dash.to_owned(),
    };
    (!zip.is_empty()).then_some(zip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = "0123456789abcdef0123456789abcdef";

    fn jane() -> Contact {
        Contact {
            email: Some("  Test@Example.COM ".into()),
            phone: Some("(613) 555-1111".into()),
            first_name: Some("José".into()),
            last_name: Some("O'Brien".into()),
            country: Some("us".into()),
            zip: Some("12345-6789".into()),
        }
    }

    fn field(row: &Value, key: &str) -> String {
        row[key].as_str().unwrap().to_owned()
    }

    #[test]
    fn email_is_trimmed_and_lower_cased_before_hashing() {
        let row = row(&jane()).unwrap();
        // printf '%s' 'test@example.com' | sha256sum
        assert_eq!(
            field(&row, "EMAIL"),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
    }

    #[test]
    fn gmail_dots_and_plus_tags_are_kept_for_meta() {
        assert_eq!(normalise_email(" Jane.Doe@GMAIL.com"), "jane.doe@gmail.com");
        assert_eq!(
            normalise_email("John+Shop@example.com"),
            "john+shop@example.com"
        );
        let row = row(&Contact {
            email: Some("Jane.Doe@gmail.com".into()),
            ..Contact::default()
        })
        .unwrap();
        // printf '%s' 'jane.doe@gmail.com' | sha256sum
        assert_eq!(
            field(&row, "EMAIL"),
            "831f6494ad6be4fcb3a724c3d5fef22d3ceffa3c62ef3a7984e45a0ea177f982"
        );
    }

    #[test]
    fn phone_is_digits_with_country_code_and_no_plus() {
        let jane = row(&jane()).unwrap();
        // printf '%s' '16135551111' | sha256sum
        assert_eq!(
            field(&jane, "PHONE"),
            "bce4114040c04005413613d7950887ab3f4ea58f9365885ac9ff077e55ba1b56"
        );
        let uk = Contact {
            phone: Some("020 7946 0958".into()),
            country: Some("GB".into()),
            ..Contact::default()
        };
        // printf '%s' '442079460958' | sha256sum
        assert_eq!(
            field(&row(&uk).unwrap(), "PHONE"),
            "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823"
        );
    }

    #[test]
    fn names_keep_accented_letters_and_lose_punctuation_and_spaces() {
        assert_eq!(normalise_name("José").as_deref(), Some("josé"));
        assert_eq!(normalise_name("O'Brien").as_deref(), Some("obrien"));
        assert_eq!(
            normalise_name("Jean-Luc  Ébert").as_deref(),
            Some("jeanlucébert")
        );
        assert_eq!(normalise_name("ZOË").as_deref(), Some("zoë"));
        assert_eq!(normalise_name("--"), None);
        let row = row(&jane()).unwrap();
        // printf '%s' 'josé' | sha256sum ; printf '%s' 'obrien' | sha256sum
        assert_eq!(
            field(&row, "FN"),
            "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
        );
        assert_eq!(
            field(&row, "LN"),
            "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba"
        );
    }

    #[test]
    fn zips_are_lower_case_without_spaces_and_us_zips_keep_five_digits() {
        assert_eq!(
            normalise_zip("12345-6789", Some("US")).as_deref(),
            Some("12345")
        );
        assert_eq!(
            normalise_zip(" 12345 ", Some("US")).as_deref(),
            Some("12345")
        );
        assert_eq!(normalise_zip("12345-6789", None).as_deref(), Some("12345"));
        assert_eq!(
            normalise_zip("SW1A 1AA", Some("GB")).as_deref(),
            Some("sw1a1aa")
        );
        assert_eq!(
            normalise_zip("sw1a 1aa", Some("GB")).as_deref(),
            Some("sw1a1aa")
        );
        assert_eq!(
            normalise_zip("1000-001", Some("PT")).as_deref(),
            Some("1000")
        );
        assert_eq!(normalise_zip("00-950", Some("PL")).as_deref(), Some("00"));
        assert_eq!(normalise_zip("   ", Some("GB")), None);
        let row = row(&jane()).unwrap();
        // printf '%s' '12345' | sha256sum ; printf '%s' 'us' | sha256sum
        assert_eq!(
            field(&row, "ZIP"),
            "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5"
        );
        assert_eq!(
            field(&row, "COUNTRY"),
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
    }

    #[test]
    fn a_contact_without_email_or_usable_phone_has_no_row() {
        let nobody = Contact {
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            phone: Some("555-1111".into()),
            country: Some("US".into()),
            zip: Some("12345".into()),
            ..Contact::default()
        };
        assert_eq!(row(&nobody), None);
        assert_eq!(row(&Contact::default()), None);
    }

    #[test]
    fn a_row_holds_only_hashes_of_present_fields() {
        let row = row(&Contact {
            email: Some("a@b.co".into()),
            ..Contact::default()
        })
        .unwrap();
        let object = row.as_object().unwrap();
        assert_eq!(object.keys().collect::<Vec<_>>(), ["EMAIL"]);
        let full = super::row(&jane()).unwrap();
        let text = full.to_string();
        for raw in ["example", "6135551111", "José", "brien", "12345-", "\"us\""] {
            assert!(
                !text.to_lowercase().contains(&raw.to_lowercase()),
                "{raw} leaked"
            );
        }
        assert!(full
            .as_object()
            .unwrap()
            .values()
            .all(|v| hash::is_sha256_hex(v.as_str().unwrap())));
    }

    fn target() -> Target {
        Target::new("23850000000000000", Secret::new("EAAB-token"))
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
    fn adding_posts_the_schema_data_and_session_to_the_users_edge() {
        let rows = vec![
            row(&jane()).unwrap(),
            row(&Contact {
                email: Some("x@y.co".into()),
                ..Contact::default()
            })
            .unwrap(),
        ];
        let request = request(&target(), Op::Add, &rows, BATCH).unwrap();
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(
            request.url,
            "https://graph.facebook.com/v25.0/23850000000000000/users"
        );
        let auth = header(&request, "authorization");
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), "Bearer EAAB-token");
        assert!(!request.url.contains("EAAB"));
        assert_eq!(header(&request, "content-type"), "application/json");
        assert_eq!(header(&request, "idempotency-key"), BATCH);

        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert!(!body.to_string().contains("EAAB"));
        assert_eq!(body["payload"]["schema"], json!(SCHEMA));
        let data = body["payload"]["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0][0], rows[0]["EMAIL"]);
        assert_eq!(data[0][5], rows[0]["COUNTRY"]);
        assert_eq!(data[1][0], rows[1]["EMAIL"]);
        assert_eq!(data[1], json!([rows[1]["EMAIL"], "", "", "", "", ""]));
        assert_eq!(
            body["session"],
            json!({
                "session_id": 0x0012_3456_789a_bcde_i64,
                "batch_seq": 1,
                "last_batch_flag": true,
                "estimated_num_total": 2,
            })
        );
    }

    #[test]
    fn removing_sends_the_same_body_with_delete() {
        let rows = vec![row(&jane()).unwrap()];
        let add = request(&target(), Op::Add, &rows, BATCH).unwrap();
        let remove = request(&target(), Op::Remove, &rows, BATCH).unwrap();
        assert_eq!(remove.method, http::Method::DELETE);
        assert_eq!(remove.url, add.url);
        assert_eq!(remove.body, add.body);
    }

    #[test]
    fn the_version_and_host_come_from_the_target() {
        let target = Target {
            base_url: "http://127.0.0.1:9999/".into(),
            version: "v24.0".into(),
            ..target()
        };
        let request = request(&target, Op::Add, &[row(&jane()).unwrap()], BATCH).unwrap();
        assert_eq!(
            request.url,
            "http://127.0.0.1:9999/v24.0/23850000000000000/users"
        );
    }

    #[test]
    fn a_new_target_has_the_defaults_and_hides_its_token() {
        let target = Target::new("1", Secret::new("EAAB"));
        assert_eq!(target.version, DEFAULT_VERSION);
        assert_eq!(target.base_url, DEFAULT_BASE_URL);
        assert!(!format!("{target:?}").contains("EAAB"));
    }

    #[test]
    fn foreign_oversized_or_empty_batches_are_refused() {
        let rows = vec![row(&jane()).unwrap(), json!({"EMAIL": "test@example.com"})];
        assert_eq!(
            request(&target(), Op::Add, &rows, BATCH).unwrap_err(),
            BuildError::BadRow(1)
        );
        let google_like = json!({"userIdentifiers": []});
        assert_eq!(
            request(&target(), Op::Add, &[google_like], BATCH).unwrap_err(),
            BuildError::BadRow(0)
        );
        let only_names = json!({"FN": hash::sha256_hex("jane")});
        assert_eq!(
            request(&target(), Op::Add, &[only_names], BATCH).unwrap_err(),
            BuildError::BadRow(0)
        );
        assert_eq!(
            request(&target(), Op::Add, &[], BATCH).unwrap_err(),
            BuildError::NoRows
        );
        let many = vec![row(&jane()).unwrap(); MAX_ROWS + 1];
        assert_eq!(
            request(&target(), Op::Add, &many, BATCH).unwrap_err(),
            BuildError::TooManyRows {
                max: MAX_ROWS,
                got: MAX_ROWS + 1
            }
        );
        let bad_audience = Target {
            audience_id: "../me".into(),
            ..target()
        };
        assert_eq!(
            request(&bad_audience, Op::Add, &[row(&jane()).unwrap()], BATCH).unwrap_err(),
            BuildError::BadTarget("audience_id")
        );
    }

    #[test]
    fn a_success_answer_is_accepted_with_its_body() {
        let body =
            br#"{"audience_id":"1","session_id":"2","num_received":2,"num_invalid_entries":0}"#;
        assert_eq!(
            judge(http::StatusCode::OK, body),
            Judgement::Accepted(serde_json::from_slice(body).unwrap())
        );
        assert_eq!(
            judge(http::StatusCode::OK, b""),
            Judgement::Accepted(Value::Null)
        );
    }

    #[test]
    fn rate_limits_and_transient_errors_are_retried_whatever_the_status() {
        use http::StatusCode as S;
        let limit = |code: i64| {
            format!(r#"{{"error":{{"message":"limit","type":"OAuthException","code":{code}}}}}"#)
        };
        assert_eq!(
            judge(S::BAD_REQUEST, limit(17).as_bytes()),
            Judgement::Retry
        );
        assert_eq!(
            judge(S::BAD_REQUEST, limit(80003).as_bytes()),
            Judgement::Retry
        );
        assert_eq!(judge(S::FORBIDDEN, limit(613).as_bytes()), Judgement::Retry);
        assert_eq!(judge(S::OK, limit(2).as_bytes()), Judgement::Retry);
        let transient = br#"{"error":{"code":100,"is_transient":true}}"#;
        assert_eq!(judge(S::BAD_REQUEST, transient), Judgement::Retry);
        assert_eq!(judge(S::TOO_MANY_REQUESTS, b""), Judgement::Retry);
        assert_eq!(judge(S::INTERNAL_SERVER_ERROR, b"<html>"), Judgement::Retry);
        assert_eq!(judge(S::REQUEST_TIMEOUT, b""), Judgement::Retry);
    }

    #[test]
    fn other_errors_are_rejected_for_good() {
        use http::StatusCode as S;
        let invalid =
            br#"{"error":{"message":"Invalid parameter","code":100,"error_subcode":1713230}}"#;
        assert_eq!(judge(S::BAD_REQUEST, invalid), Judgement::Reject);
        assert_eq!(judge(S::OK, invalid), Judgement::Reject);
        let token = br#"{"error":{"message":"Session has expired","code":190}}"#;
        assert_eq!(judge(S::UNAUTHORIZED, token), Judgement::Reject);
        assert_eq!(judge(S::NOT_FOUND, b"not json"), Judgement::Reject);
    }
}

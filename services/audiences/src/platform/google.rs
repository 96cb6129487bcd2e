//! The `google_ads_legacy` destination: Google Ads Customer Match through the REST
//! `OfflineUserDataJobService`, kept only for developer tokens Google already allowlisted (the
//! `google` destination is the Data Manager API, [`super::datamanager`]): Google's normalisation,
//! the create / addOperations / run requests, and how to read Google's answers.
//!
//! - Service (create, addOperations, run; v26 is the newest active version in the reference):
//!   <https://developers.google.com/google-ads/api/reference/rpc/v26/OfflineUserDataJobService>,
//!   REST paths `POST /v26/customers/{customerId}/offlineUserDataJobs:create`,
//!   `POST /v26/{resourceName}:addOperations`, `POST /v26/{resourceName}:run`
//!   (<https://developers.google.com/google-ads/api/rest/reference/rest/v26/customers.offlineUserDataJobs>)
//! - Customer Match guide (one `UserIdentifier` per identifier, address needs first name, last
//!   name, country and postal code): <https://developers.google.com/google-ads/api/docs/remarketing/audience-types/customer-match>
//! - Job metadata and EEA consent:
//!   <https://developers.google.com/google-ads/api/reference/rpc/v26/CustomerMatchUserListMetadata>
//! - Formatting user data (Gmail rules, E.164 with `+`, country and postal code unhashed):
//!   <https://developers.google.com/data-manager/api/devguides/concepts/formatting>
//! - Per-request limits: <https://developers.google.com/google-ads/api/docs/best-practices/quotas#user_data>
//! - REST errors (`error.status`, `GoogleAdsFailure` details):
//!   <https://developers.google.com/google-ads/api/docs/best-practices/error-types>
//!
//! Flow for one batch: [`create_job`] (its answer's `resourceName` through [`job_name`]), then
//! [`add_operations`] with all the batch's rows, then [`run_job`]. The batch id is the job's
//! `externalId` (an int64 derived by [`hash::batch_number`]) and the `idempotency-key` header of
//! all three requests. A job holds one kind of operation (the batch's [`Op`]). Jobs declare no
//! consent: each added person's `UserData.consent { adUserData, adPersonalization }` (`GRANTED`
//! or `DENIED`) is read from their own Shopify marketing consent through the destination's
//! mapping ([`crate::domain::consent`]), and overrides the job's; removals state none (removal
//! often follows a withdrawal).
//! - UserData consent: <https://developers.google.com/google-ads/api/reference/rpc/v26/UserData>
//!
//! Normalisation (Google's, current formatting guide):
//! - `hashedEmail`: trimmed, lower-cased (domain.md §4; Gmail dots and `+tags` are kept).
//! - `hashedPhoneNumber`: E.164 with `+` (from [`phone::e164`]).
//! - `addressInfo`: `hashedFirstName`/`hashedLastName` lower-case, punctuation removed, inner
//!   whitespace collapsed, hashed; `countryCode` (upper-case alpha-2) and `postalCode` **unhashed**,
//!   as Google wants them: a US code keeps its first 5 digits, others are upper-cased with inner
//!   whitespace collapsed to one space. Only when all four are present.

use serde_json::{json, Map, Value};

use crate::domain::consent::AdConsent;

use super::{
    base_url, bearer, check_batch, classify, hash, json_request, numeric_id, parse_body, sensitive,
    version, BuildError, Contact, Judgement, Op, Request, Secret, StatusClass,
};

/// The Google Ads API host.
pub const DEFAULT_BASE_URL: &str = "https://googleads.googleapis.com";
/// The API version used unless the target says otherwise (newest active in the reference).
pub const DEFAULT_VERSION: &str = "v26";
/// Rows (operations) per `addOperations` request: Google recommends about 10,000; a row carries at
/// most 3 identifiers, far below the 100,000 identifiers a request may hold.
pub const MAX_ROWS: usize = 10_000;

/// `error.status` values worth retrying.
const RETRYABLE_STATUSES: [&str; 5] = [
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "ABORTED",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
];

/// One Customer Match user list to write to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// API base URL, [`DEFAULT_BASE_URL`] unless testing.
    pub base_url: String,
    /// API version, e.g. `v26`.
    pub version: String,
    /// The Google Ads customer owning the list (digits; dashes allowed).
    pub customer_id: String,
    /// The Customer Match user list id (digits).
    pub user_list_id: String,
    /// The manager account to act through, if any (`login-customer-id`).
    pub login_customer_id: Option<String>,
    /// The developer token (`developer-token` header).
    pub developer_token: Secret,
    /// An OAuth 2.0 access token (`Authorization: Bearer`).
    pub access_token: Secret,
}

impl Target {
    /// A target on the default host and version, without a manager account.
    pub fn new(
        customer_id: impl Into<String>,
        user_list_id: impl Into<String>,
        developer_token: Secret,
        access_token: Secret,
    ) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            version: DEFAULT_VERSION.to_owned(),
            customer_id: customer_id.into(),
            user_list_id: user_list_id.into(),
            login_customer_id: None,
            developer_token,
            access_token,
        }
    }
}

/// Google's identifiers of one person: a `UserData` JSON object
/// `{"userIdentifiers": [{"hashedEmail": …}, {"hashedPhoneNumber": …}, {"addressInfo": {…}}]}`
/// with the identifiers present. `None` when there is none (no email, no usable phone, no
/// complete address).
pub fn row(contact: &Contact) -> Option<Value> {
    Hashed::of(contact, EmailRule::TrimLower).user_identifiers(&IdentifierKeys {
        email: "hashedEmail",
        phone: "hashedPhoneNumber",
        address: "addressInfo",
        first: "hashedFirstName",
        last: "hashedLastName",
        country: "countryCode",
        zip: "postalCode",
    })
}

/// How an email is normalised before hashing. The two Google APIs document different rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum EmailRule {
    /// Trimmed and lower-cased (the Ads API path, as the project's contract says).
    TrimLower,
    /// Also, for gmail.com and googlemail.com only, without dots and without a `+tag` in the
    /// local part (the Data Manager API's formatting guide).
    GmailCanonical,
}

/// A contact's identifiers normalised and hashed as Google wants them, for both Google
/// destinations (each names the fields its own API's way).
pub(crate) struct Hashed {
    pub email: Option<String>,
    pub phone: Option<String>,
    /// Only when names, country and postal code are all known.
    pub address: Option<HashedAddress>,
}

/// Hashed names; country (alpha-2) and postal code unhashed, as Google wants them.
pub(crate) struct HashedAddress {
    pub first: String,
    pub last: String,
    pub country: String,
    pub zip: String,
}

/// The JSON names one API gives a person's identifiers (Google Ads and Data Manager differ).
pub(crate) struct IdentifierKeys {
    pub email: &'static str,
    pub phone: &'static str,
    pub address: &'static str,
    pub first: &'static str,
    pub last: &'static str,
    pub country: &'static str,
    pub zip: &'static str,
}

impl Hashed {
    /// `{"userIdentifiers": [...]}` with the identifiers present under `keys`' names; `None`
    /// without any.
    pub(crate) fn user_identifiers(self, keys: &IdentifierKeys) -> Option<Value> {
        let mut identifiers = Vec::new();
        if let Some(email) = self.email {
            identifiers.push(json!({ (keys.email): email }));
        }
        if let Some(phone) = self.phone {
            identifiers.push(json!({ (keys.phone): phone }));
        }
        if let Some(a) = self.address {
            identifiers.push(json!({ (keys.address): {
                (keys.first): a.first,
                (keys.last): a.last,
                (keys.country): a.country,
                (keys.zip): a.zip,
            }}));
        }
        (!identifiers.is_empty()).then(|| json!({ "userIdentifiers": identifiers }))
    }

    pub(crate) fn of(contact: &Contact, rule: EmailRule) -> Hashed {
        let country = contact.country_alpha2();
        let email = contact
            .raw_email()
            .and_then(normalise_email)
            .map(|e| match rule {
                EmailRule::TrimLower => e,
                EmailRule::GmailCanonical => gmail_canonical(e),
            })
            .map(|e| hash::sha256_hex(&e));
        let phone = contact
            .phone_e164()
            .map(|p| hash::sha256_hex(&p.with_plus()));
        let first = contact.raw_first_name().and_then(normalise_name);
        let last = contact.raw_last_name().and_then(normalise_name);
        let zip = contact
            .raw_zip()
            .and_then(|z| normalise_postal_code(z, country.as_deref()));
        let address = match (first, last, country, zip) {
            (Some(first), Some(last), Some(country), Some(zip)) => Some(HashedAddress {
                first: hash::sha256_hex(&first),
                last: hash::sha256_hex(&last),
                country,
                zip,
            }),
            _ => None,
        };
        Hashed {
            email,
            phone,
            address,
        }
    }
}

/// Creates the batch's Customer Match job on the target list, `externalId` from the batch id.
/// The job declares no consent: each added person carries their own (see [`add_operations`]),
/// and a removal states none, since people are often removed because they withdrew it.
pub fn create_job(target: &Target, batch_id: &str) -> Result<Request, BuildError> {
    hash::check_batch_id(batch_id)?;
    let customer = numeric_id(&target.customer_id, "customer_id")?;
    let list = numeric_id(&target.user_list_id, "user_list_id")?;
    let url = format!(
        "{}/customers/{customer}/offlineUserDataJobs:create",
        api_root(target)?
    );
    let metadata = json!({ "userList": format!("customers/{customer}/userLists/{list}") });
    let body = json!({
        "job": {
            "type": "CUSTOMER_MATCH_USER_LIST",
            "externalId": hash::batch_number(batch_id)?.to_string(),
            "customerMatchUserListMetadata": metadata,
        },
    });
    json_request(http::Method::POST, url, headers(target)?, &body, batch_id)
}

/// The job resource name (`customers/<id>/offlineUserDataJobs/<id>`) from a [`create_job`] answer.
pub fn job_name(answer: &Value) -> Option<String> {
    let name = answer.get("resourceName")?.as_str()?;
    job_customer(name).is_some().then(|| name.to_owned())
}

/// Adds the rows (from [`row`]) to the job as `create` (add) or `remove` operations, with partial
/// failure enabled: a 200 answer may still carry `partialFailureError` for some rows. An added
/// row carries the person's consent signals (`UserData.consent`, which overrides the job's).
pub fn add_operations(
    target: &Target,
    job_name: &str,
    op: Op,
    rows: &[Value],
    consents: &[Option<AdConsent>],
    batch_id: &str,
) -> Result<Request, BuildError> {
    check_batch(rows, batch_id, MAX_ROWS)?;
    check_job(target, job_name)?;
    let verb = match op {
        Op::Add => "create",
        Op::Remove => "remove",
    };
    let operations = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            if !is_user_data(row) {
                return Err(BuildError::BadRow(index));
            }
            let mut row = row.clone();
            if let (Op::Add, Some(Some(consent))) = (op, consents.get(index)) {
                let status = |granted: bool| if granted { "GRANTED" } else { "DENIED" };
                row["consent"] = json!({
                    "adUserData": status(consent.ad_user_data),
                    "adPersonalization": status(consent.ad_personalization),
                });
            }
            Ok(json!({ verb: row }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let url = format!("{}/{job_name}:addOperations", api_root(target)?);
    let body = json!({ "operations": operations, "enablePartialFailure": true });
    json_request(http::Method::POST, url, headers(target)?, &body, batch_id)
}

/// Runs the job once all its operations are added.
pub fn run_job(target: &Target, job_name: &str, batch_id: &str) -> Result<Request, BuildError> {
    hash::check_batch_id(batch_id)?;
    check_job(target, job_name)?;
    let url = format!("{}/{job_name}:run", api_root(target)?);
    json_request(
        http::Method::POST,
        url,
        headers(target)?,
        &json!({}),
        batch_id,
    )
}

/// What a Google Ads answer means: 2xx accepted with its body (check `partialFailureError` for
/// per-row failures); 408, 429 and 5xx retried, as are errors whose `status` or `GoogleAdsFailure`
/// codes say quota, unavailability, internal error or concurrent modification; the rest rejected.
pub fn judge(status: http::StatusCode, body: &[u8]) -> Judgement {
    match classify(status) {
        StatusClass::Retry => Judgement::Retry,
        StatusClass::Success => Judgement::Accepted(parse_body(body).unwrap_or(Value::Null)),
        StatusClass::Failure => match parse_body(body) {
            Ok(answer) if is_retryable(&answer) => Judgement::Retry,
            _ => Judgement::Reject,
        },
    }
}

fn is_retryable(answer: &Value) -> bool {
    let error = &answer["error"];
    if error["status"]
        .as_str()
        .is_some_and(|s| RETRYABLE_STATUSES.contains(&s))
    {
        return true;
    }
    let codes = error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|detail| detail["errors"].as_array().into_iter().flatten())
        .filter_map(|e| e["errorCode"].as_object());
    codes.flat_map(Map::iter).any(|(kind, code)| {
        let code = code.as_str().unwrap_or("");
        match kind.as_str() {
            "internalError" => true,
            "quotaError" => matches!(
                code,
                "RESOURCE_EXHAUSTED" | "RESOURCE_TEMPORARILY_EXHAUSTED"
            ),
            "databaseError" => code == "CONCURRENT_MODIFICATION",
            _ => false,
        }
    })
}

fn api_root(target: &Target) -> Result<String, BuildError> {
    Ok(format!(
        "{}/{}",
        base_url(&target.base_url, "base_url")?,
        version(&target.version, "version")?
    ))
}

fn headers(target: &Target) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, BuildError> {
    let mut headers = vec![
        (
            http::header::AUTHORIZATION,
            bearer(&target.access_token, "access_token")?,
        ),
        (
            http::HeaderName::from_static("developer-token"),
            sensitive(target.developer_token.expose(), "developer_token")?,
        ),
    ];
    if let Some(login) = &target.login_customer_id {
        let login = numeric_id(login, "login_customer_id")?;
        let value = http::HeaderValue::from_str(&login)
            .map_err(|_| BuildError::BadTarget("login_customer_id"))?;
        headers.push((http::HeaderName::from_static("login-customer-id"), value));
    }
    Ok(headers)
}

/// The customer id of a `customers/<digits>/offlineUserDataJobs/<digits>` resource name.
fn job_customer(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("customers/")?;
    let (customer, job) = rest.split_once("/offlineUserDataJobs/")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(customer) && digits(job)).then_some(customer)
}

fn check_job(target: &Target, job_name: &str) -> Result<(), BuildError> {
    let customer = numeric_id(&target.customer_id, "customer_id")?;
    match job_customer(job_name) {
        Some(owner) if owner == customer => Ok(()),
        _ => Err(BuildError::BadJobName),
    }
}

/// Whether `row` is a `UserData` as [`row`] makes it.
fn is_user_data(row: &Value) -> bool {
    let Some(object) = row.as_object() else {
        return false;
    };
    let Some(identifiers) = object.get("userIdentifiers").and_then(Value::as_array) else {
        return false;
    };
    object.len() == 1 && !identifiers.is_empty() && identifiers.iter().all(is_identifier)
}

fn is_identifier(identifier: &Value) -> bool {
    let Some(object) = identifier.as_object().filter(|o| o.len() == 1) else {
        return false;
    };
    let hashed = |v: &Value| v.as_str().is_some_and(hash::is_sha256_hex);
    match object.iter().next() {
        Some((key, value)) if key == "hashedEmail" || key == "hashedPhoneNumber" => hashed(value),
        Some((key, address)) if key == "addressInfo" => {
            let country = address["countryCode"].as_str().unwrap_or("");
            address.as_object().is_some_and(|a| a.len() == 4)
                && hashed(&address["hashedFirstName"])
                && hashed(&address["hashedLastName"])
                && country.len() == 2
                && country.bytes().all(|b| b.is_ascii_uppercase())
                && address["postalCode"]
                    .as_str()
                    .is_some_and(|z| !z.is_empty())
        }
        _ => false,
    }
}

/// Trimmed and lower-cased, as the project's contract (domain.md §4) says. Google's formatting
/// guide also drops dots (and `+tags`) in gmail.com addresses; that is not applied, so the hash
/// is the one every other tool following the contract computes.
fn normalise_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some(email)
}

/// A normalised gmail.com / googlemail.com address without dots or `+tag` in its local part;
/// any other address as it is.
fn gmail_canonical(email: String) -> String {
    match email.split_once('@') {
        Some((local, domain @ ("gmail.com" | "googlemail.com"))) => {
            let local = local.split('+').next().unwrap_or_default().replace('.', "");
            if local.is_empty() {
                email
            } else {
                format!("{local}@{domain}")
            }
        }
        _ => email,
    }
}

fn normalise_name(raw: &str) -> Option<String> {
    let kept: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect();
    let name = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    (!name.is_empty()).then_some(name)
}

fn normalise_postal_code(raw: &str, country: Option<&str>) -> Option<String> {
    let code = raw
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    let code = if country == Some("US") {
        code.split('-')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .take(5)
            .collect()
    } else {
        code
    };
    (!code.is_empty()).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = "0123456789abcdef0123456789abcdef";
    const JOB: &str = "customers/1234567890/offlineUserDataJobs/555";

    fn jane() -> Contact {
        Contact {
            email: Some(" Jane.Doe+Shop@GoogleMail.com ".into()),
            phone: Some("(613) 555-1111".into()),
            first_name: Some(" José ".into()),
            last_name: Some("O'Brien".into()),
            country: Some("us".into()),
            zip: Some("12345-6789".into()),
        }
    }

    fn identifiers(row: &Value) -> &Vec<Value> {
        row["userIdentifiers"].as_array().unwrap()
    }

    #[test]
    fn email_is_lower_cased_and_stripped_of_all_whitespace() {
        assert_eq!(
            normalise_email(" Test@Example.COM ").as_deref(),
            Some("test@example.com")
        );
        let row = row(&Contact {
            email: Some("  TEST@example.com\t".into()),
            ..Contact::default()
        })
        .unwrap();
        // printf '%s' 'test@example.com' | sha256sum
        assert_eq!(
            identifiers(&row)[0]["hashedEmail"],
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
    }

    #[test]
    fn gmail_addresses_keep_dots_and_plus_tags_as_the_contract_says() {
        assert_eq!(
            normalise_email(" Jane.Doe+ads@Gmail.com ").as_deref(),
            Some("jane.doe+ads@gmail.com")
        );
        assert_eq!(normalise_email("@gmail.com"), None);
        let row = row(&Contact {
            email: Some("Jane.Doe@Gmail.com".into()),
            ..Contact::default()
        })
        .unwrap();
        // printf '%s' 'jane.doe@gmail.com' | sha256sum
        assert_eq!(
            identifiers(&row)[0]["hashedEmail"],
            "831f6494ad6be4fcb3a724c3d5fef22d3ceffa3c62ef3a7984e45a0ea177f982"
        );
    }

    #[test]
    fn other_domains_keep_their_dots_and_plus_tags() {
        assert_eq!(
            normalise_email("John.Smith+NYC@Example.com").as_deref(),
            Some("john.smith+nyc@example.com")
        );
        assert_eq!(
            normalise_email("jane.doe@gmail.co.uk").as_deref(),
            Some("jane.doe@gmail.co.uk")
        );
    }

    #[test]
    fn phone_is_hashed_in_e164_with_the_plus() {
        let row = row(&jane()).unwrap();
        // printf '%s' '+16135551111' | sha256sum
        assert_eq!(
            identifiers(&row)[1]["hashedPhoneNumber"],
            "b42f8125b9492ededdd290ec9ab0ceab8041820ba3f0c659ab74a5d765eb496f"
        );
        let uk = Contact {
            phone: Some("0044 20 7946 0958".into()),
            ..Contact::default()
        };
        // printf '%s' '+442079460958' | sha256sum
        assert_eq!(
            identifiers(&super::row(&uk).unwrap())[0]["hashedPhoneNumber"],
            "f0bf0228144d9fe2bdf1da2d8ca698f17bf1410ee688b075c27062e47b6f0b6d"
        );
    }

    #[test]
    fn the_address_has_hashed_names_and_unhashed_country_and_postal_code() {
        let row = row(&jane()).unwrap();
        let address = &identifiers(&row)[2]["addressInfo"];
        // printf '%s' 'josé' | sha256sum ; printf '%s' 'obrien' | sha256sum
        assert_eq!(
            address["hashedFirstName"],
            "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
        );
        assert_eq!(
            address["hashedLastName"],
            "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba"
        );
        assert_eq!(address["countryCode"], "US");
        assert_eq!(address["postalCode"], "12345");
    }

    #[test]
    fn names_lose_punctuation_but_keep_letters_accents_and_single_spaces() {
        assert_eq!(normalise_name("Jean-Luc").as_deref(), Some("jeanluc"));
        assert_eq!(normalise_name("  Mary   Ann ").as_deref(), Some("mary ann"));
        assert_eq!(normalise_name("ZOË").as_deref(), Some("zoë"));
        // printf '%s' 'jean luc' | sha256sum
        assert_eq!(
            hash::sha256_hex(&normalise_name("Jean  Luc.").unwrap()),
            "a840f80e929f88163152c2dc5f35721a9534ece0ca77bfe8973ed4498a1633a6"
        );
        assert_eq!(normalise_name("'."), None);
    }

    #[test]
    fn postal_codes_are_unhashed_us_five_digits_and_uk_with_one_space() {
        assert_eq!(
            normalise_postal_code("12345-6789", Some("US")).as_deref(),
            Some("12345")
        );
        assert_eq!(
            normalise_postal_code("sw1a  1aa", Some("GB")).as_deref(),
            Some("SW1A 1AA")
        );
        assert_eq!(
            normalise_postal_code("SW1A1AA", Some("GB")).as_deref(),
            Some("SW1A1AA")
        );
        assert_eq!(
            normalise_postal_code("75001", Some("FR")).as_deref(),
            Some("75001")
        );
    }

    #[test]
    fn an_incomplete_address_is_left_out_and_nothing_matchable_gives_no_row() {
        let no_zip = Contact {
            zip: None,
            ..jane()
        };
        assert_eq!(identifiers(&row(&no_zip).unwrap()).len(), 2);
        let address_only = Contact {
            email: None,
            phone: None,
            ..jane()
        };
        assert_eq!(identifiers(&row(&address_only).unwrap()).len(), 1);
        let nothing = Contact {
            email: None,
            phone: Some("555-1111".into()),
            zip: None,
            ..jane()
        };
        assert_eq!(row(&nothing), None);
    }

    #[test]
    fn a_row_carries_no_raw_personal_data_but_country_and_postal_code() {
        let text = row(&jane()).unwrap().to_string().to_lowercase();
        for raw in [
            "jane",
            "doe",
            "googlemail",
            "6135551111",
            "josé",
            "brien",
            "6789",
        ] {
            assert!(!text.contains(raw), "{raw} leaked");
        }
    }

    fn target() -> Target {
        Target {
            login_customer_id: Some("999-888-7777".into()),
            ..Target::new(
                "123-456-7890",
                "42",
                Secret::new("dev-tok"),
                Secret::new("ya29.tok"),
            )
        }
    }

    fn header<'a>(request: &'a Request, name: &str) -> Option<&'a http::HeaderValue> {
        request
            .headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    fn assert_google_headers(request: &Request) {
        let auth = header(request, "authorization").unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth, "Bearer ya29.tok");
        let developer = header(request, "developer-token").unwrap();
        assert!(developer.is_sensitive());
        assert_eq!(developer, "dev-tok");
        assert_eq!(header(request, "login-customer-id").unwrap(), "9998887777");
        assert_eq!(header(request, "content-type").unwrap(), "application/json");
        assert_eq!(header(request, "idempotency-key").unwrap(), BATCH);
        let body = String::from_utf8(request.body.to_vec()).unwrap();
        assert!(!body.contains("tok") && !request.url.contains("tok"));
    }

    #[test]
    fn creating_a_job_names_the_list_and_the_batch_and_no_consent() {
        let request = create_job(&target(), BATCH).unwrap();
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(
            request.url,
            "https://googleads.googleapis.com/v26/customers/1234567890/offlineUserDataJobs:create"
        );
        assert_google_headers(&request);
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            json!({"job": {
                "type": "CUSTOMER_MATCH_USER_LIST",
                "externalId": 0x0012_3456_789a_bcde_i64.to_string(),
                "customerMatchUserListMetadata": {
                    "userList": "customers/1234567890/userLists/42",
                },
            }})
        );
    }

    #[test]
    fn a_remove_job_declares_no_consent() {
        let request = create_job(&target(), BATCH).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let metadata = &body["job"]["customerMatchUserListMetadata"];
        assert_eq!(
            metadata,
            &json!({"userList": "customers/1234567890/userLists/42"})
        );
        assert_eq!(
            body["job"]["externalId"],
            0x0012_3456_789a_bcde_i64.to_string()
        );
    }

    #[test]
    fn the_job_name_is_read_from_the_create_answer() {
        assert_eq!(
            job_name(&json!({"resourceName": JOB})).as_deref(),
            Some(JOB)
        );
        assert_eq!(
            job_name(&json!({"resourceName": "customers/1/userLists/2"})),
            None
        );
        assert_eq!(
            job_name(&json!({"resourceName": "customers/1/offlineUserDataJobs/2/../x"})),
            None
        );
        assert_eq!(job_name(&json!({})), None);
    }

    #[test]
    fn adding_operations_wraps_each_row_in_create_or_remove() {
        let rows = vec![row(&jane()).unwrap()];
        let add = add_operations(&target(), JOB, Op::Add, &rows, &[], BATCH).unwrap();
        assert_eq!(add.method, http::Method::POST);
        assert_eq!(
            add.url,
            "https://googleads.googleapis.com/v26/customers/1234567890/offlineUserDataJobs/555:addOperations"
        );
        assert_google_headers(&add);
        let body: Value = serde_json::from_slice(&add.body).unwrap();
        assert_eq!(
            body,
            json!({"operations": [{"create": rows[0]}], "enablePartialFailure": true})
        );

        let remove = add_operations(&target(), JOB, Op::Remove, &rows, &[], BATCH).unwrap();
        let body: Value = serde_json::from_slice(&remove.body).unwrap();
        assert_eq!(body["operations"][0]["remove"], rows[0]);

        let consent = AdConsent {
            ad_user_data: true,
            ad_personalization: false,
        };
        let consented =
            add_operations(&target(), JOB, Op::Add, &rows, &[Some(consent)], BATCH).unwrap();
        let body: Value = serde_json::from_slice(&consented.body).unwrap();
        assert_eq!(
            body["operations"][0]["create"]["consent"],
            json!({"adUserData": "GRANTED", "adPersonalization": "DENIED"})
        );
        let removal =
            add_operations(&target(), JOB, Op::Remove, &rows, &[Some(consent)], BATCH).unwrap();
        let body: Value = serde_json::from_slice(&removal.body).unwrap();
        assert!(body["operations"][0]["remove"].get("consent").is_none());
    }

    #[test]
    fn running_the_job_posts_an_empty_object() {
        let request = run_job(&target(), JOB, BATCH).unwrap();
        assert_eq!(
            request.url,
            "https://googleads.googleapis.com/v26/customers/1234567890/offlineUserDataJobs/555:run"
        );
        assert_google_headers(&request);
        assert_eq!(
            serde_json::from_slice::<Value>(&request.body).unwrap(),
            json!({})
        );
    }

    #[test]
    fn the_manager_header_is_left_out_without_a_manager_account() {
        let target = Target {
            login_customer_id: None,
            ..target()
        };
        assert!(header(&create_job(&target, BATCH).unwrap(), "login-customer-id").is_none());
    }

    #[test]
    fn foreign_rows_and_other_customers_jobs_are_refused() {
        let rows = vec![row(&jane()).unwrap()];
        let other = "customers/1/offlineUserDataJobs/555";
        assert_eq!(
            add_operations(&target(), other, Op::Add, &rows, &[], BATCH).unwrap_err(),
            BuildError::BadJobName
        );
        assert_eq!(
            run_job(&target(), "x/../y", BATCH).unwrap_err(),
            BuildError::BadJobName
        );
        let meta_like = json!({"EMAIL": hash::sha256_hex("x")});
        let raw_email = json!({"userIdentifiers": [{"hashedEmail": "jane@example.com"}]});
        let hashed_zip = json!({"userIdentifiers": [{"addressInfo": {
            "hashedFirstName": hash::sha256_hex("a"), "hashedLastName": hash::sha256_hex("b"),
            "countryCode": "us", "postalCode": "1"}}]});
        for bad in [
            meta_like,
            raw_email,
            hashed_zip,
            json!({"userIdentifiers": []}),
        ] {
            assert_eq!(
                add_operations(&target(), JOB, Op::Add, &[rows[0].clone(), bad], &[], BATCH)
                    .unwrap_err(),
                BuildError::BadRow(1)
            );
        }
        assert_eq!(
            create_job(&target(), "short").unwrap_err(),
            BuildError::BadBatchId
        );
        let no_list = Target {
            user_list_id: "userLists/42".into(),
            ..target()
        };
        assert_eq!(
            create_job(&no_list, BATCH).unwrap_err(),
            BuildError::BadTarget("user_list_id")
        );
    }

    #[test]
    fn a_success_answer_is_accepted_even_with_partial_failures() {
        assert_eq!(
            judge(
                http::StatusCode::OK,
                format!(r#"{{"resourceName":"{JOB}"}}"#).as_bytes()
            ),
            Judgement::Accepted(json!({"resourceName": JOB}))
        );
        let partial = br#"{"partialFailureError":{"code":3,"message":"bad row"}}"#;
        assert!(
            matches!(judge(http::StatusCode::OK, partial), Judgement::Accepted(v) if v["partialFailureError"]["code"] == 3)
        );
        assert_eq!(
            judge(http::StatusCode::OK, b"{}"),
            Judgement::Accepted(json!({}))
        );
    }

    #[test]
    fn quota_unavailability_and_concurrency_errors_are_retried() {
        use http::StatusCode as S;
        assert_eq!(
            judge(
                S::TOO_MANY_REQUESTS,
                br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#
            ),
            Judgement::Retry
        );
        assert_eq!(judge(S::SERVICE_UNAVAILABLE, b""), Judgement::Retry);
        assert_eq!(
            judge(S::CONFLICT, br#"{"error":{"code":409,"status":"ABORTED"}}"#),
            Judgement::Retry
        );
        let concurrent = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{"errorCode":{"databaseError":"CONCURRENT_MODIFICATION"}}]}]}}"#;
        assert_eq!(judge(S::BAD_REQUEST, concurrent), Judgement::Retry);
    }

    #[test]
    fn invalid_requests_and_auth_errors_are_rejected() {
        use http::StatusCode as S;
        let invalid = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"errors":[{"errorCode":{"offlineUserDataJobError":"INVALID_USER_LIST_ID"}}]}]}}"#;
        assert_eq!(judge(S::BAD_REQUEST, invalid), Judgement::Reject);
        assert_eq!(
            judge(
                S::UNAUTHORIZED,
                br#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#
            ),
            Judgement::Reject
        );
        assert_eq!(
            judge(S::FORBIDDEN, b"<html>denied</html>"),
            Judgement::Reject
        );
    }
}

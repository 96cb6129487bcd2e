//! The `google` destination: Google Customer Match through the Data Manager API, the path Google
//! recommends since the Ads API stopped taking new Customer Match adopters (2026-04-01).
//!
//! - `POST {base}/v1/audienceMembers:ingest` and `POST {base}/v1/audienceMembers:remove`
//!   (<https://developers.google.com/data-manager/api/reference/rest/v1/audienceMembers/ingest>),
//!   OAuth scope `https://www.googleapis.com/auth/datamanager`, no developer token.
//! - Body: `destinations[]` (`operatingAccount {accountType, accountId}`, optional
//!   `loginAccount`, `productDestinationId` = the Customer Match user list),
//!   `audienceMembers[].userData.userIdentifiers[]` (`emailAddress`, `phoneNumber`, `address
//!   {givenName, familyName, regionCode, postalCode}`), `encoding: HEX`; an ingest also carries
//!   each member's own `consent {adUserData, adPersonalization}` (`CONSENT_GRANTED` or
//!   `CONSENT_DENIED`, read from their Shopify marketing consent through the destination's
//!   mapping, see [`crate::domain::consent`]) and
//!   `termsOfService.customerMatchTermsOfServiceStatus: ACCEPTED`. At most 10,000 members a
//!   request ([`MAX_ROWS`]).
//! - Answer: `{requestId, fieldWarnings?}`; a refused request is a `google.rpc.Status` whose
//!   `BadRequest.fieldViolations` name members (`audience_members[3]...`). Both are read:
//!   [`member_problems`] counts the members named, so partial failures are never taken as success.
//!
//! Normalisation and hashing are Google's (shared with the legacy path in [`super::google`]):
//! email trimmed and lower-cased, and for gmail.com / googlemail.com without dots or `+tag`
//! before the `@` (the Data Manager formatting guide; the legacy path keeps them), phone E.164
//! with `+`, names lower-cased without punctuation, SHA-256 as lower-case hex; region and
//! postal code unhashed.

use std::collections::BTreeSet;

use crate::domain::consent::AdConsent;

use serde_json::{json, Value};

use super::google::{EmailRule, Hashed, IdentifierKeys};
use super::{
    base_url, bearer, check_batch, classify, hash, json_request, numeric_id, parse_body,
    BuildError, Contact, Judgement, Op, Request, Secret, StatusClass,
};

pub const DEFAULT_BASE_URL: &str = "https://datamanager.googleapis.com";
/// Audience members per request (the API's limit).
pub const MAX_ROWS: usize = 10_000;

/// An account as the Data Manager API names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// `GOOGLE_ADS`, `DISPLAY_VIDEO_ADVERTISER`, `DISPLAY_VIDEO_PARTNER`, `DATA_PARTNER`.
    pub account_type: String,
    /// Digits (dashes dropped).
    pub account_id: String,
}

/// One Customer Match list to write to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub base_url: String,
    pub operating_account: Account,
    /// The manager or partner account acting for the operating account, if any.
    pub login_account: Option<Account>,
    /// The user list id.
    pub product_destination_id: String,
    /// `Authorization: Bearer`; replaced per request when tokens are fetched.
    pub access_token: Secret,
}

/// One member's `userData`: `{"userIdentifiers": [...]}` with what is present; `None` without
/// any identifier.
pub fn row(contact: &Contact) -> Option<Value> {
    Hashed::of(contact, EmailRule::GmailCanonical).user_identifiers(&IdentifierKeys {
        email: "emailAddress",
        phone: "phoneNumber",
        address: "address",
        first: "givenName",
        last: "familyName",
        country: "regionCode",
        zip: "postalCode",
    })
}

fn account(value: &Account, field: &'static str) -> Result<Value, BuildError> {
    let kind = value.account_type.trim();
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(BuildError::BadTarget(field));
    }
    Ok(json!({"accountType": kind, "accountId": numeric_id(&value.account_id, field)?}))
}

/// The ingest (add) or remove request of a batch's rows.
pub fn request(
    target: &Target,
    op: Op,
    rows: &[Value],
    consents: &[Option<AdConsent>],
    batch_id: &str,
) -> Result<Request, BuildError> {
    check_batch(rows, batch_id, MAX_ROWS)?;
    let mut destination = json!({
        "operatingAccount": account(&target.operating_account, "operating_account")?,
        "productDestinationId": numeric_id(&target.product_destination_id, "product_destination_id")?,
    });
    if let Some(login) = &target.login_account {
        destination["loginAccount"] = account(login, "login_account")?;
    }
    let members = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let mut member = is_user_data(row)
                .then(|| json!({ "userData": row }))
                .ok_or(BuildError::BadRow(index))?;
            if let (Op::Add, Some(Some(consent))) = (op, consents.get(index)) {
                member["consent"] = member_consent(consent);
            }
            Ok(member)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut body = json!({
        "destinations": [destination],
        "audienceMembers": members,
        "encoding": "HEX",
    });
    let verb = match op {
        Op::Add => {
            body["termsOfService"] = json!({"customerMatchTermsOfServiceStatus": "ACCEPTED"});
            "ingest"
        }
        Op::Remove => "remove",
    };
    let url = format!(
        "{}/v1/audienceMembers:{verb}",
        base_url(&target.base_url, "base_url")?
    );
    let headers = vec![(
        http::header::AUTHORIZATION,
        bearer(&target.access_token, "access_token")?,
    )];
    json_request(http::Method::POST, url, headers, &body, batch_id)
}

/// One member's consent as Data Manager writes it.
fn member_consent(consent: &AdConsent) -> Value {
    let status = |granted: bool| {
        if granted {
            "CONSENT_GRANTED"
        } else {
            "CONSENT_DENIED"
        }
    };
    json!({
        "adUserData": status(consent.ad_user_data),
        "adPersonalization": status(consent.ad_personalization),
    })
}

/// 2xx accepted (read [`member_problems`] for warnings); 408, 429, 5xx and the
/// `RESOURCE_EXHAUSTED` / `UNAVAILABLE` / `INTERNAL` / `ABORTED` / `DEADLINE_EXCEEDED` statuses
/// retried; the rest rejected.
pub fn judge(status: http::StatusCode, body: &[u8]) -> Judgement {
    match classify(status) {
        StatusClass::Retry => Judgement::Retry,
        StatusClass::Success => Judgement::Accepted(parse_body(body).unwrap_or(Value::Null)),
        StatusClass::Failure => {
            let retryable = parse_body(body).ok().is_some_and(|answer| {
                matches!(
                    answer["error"]["status"].as_str(),
                    Some(
                        "RESOURCE_EXHAUSTED"
                            | "UNAVAILABLE"
                            | "INTERNAL"
                            | "ABORTED"
                            | "DEADLINE_EXCEEDED"
                    )
                )
            });
            if retryable {
                Judgement::Retry
            } else {
                Judgement::Reject
            }
        }
    }
}

/// The members an answer names: by `fieldWarnings` of an accepted request, or by the
/// `fieldViolations` of a refused one (`audience_members[<i>]...` / `audienceMembers[<i>]...`).
pub fn member_problems(answer: &Value) -> BTreeSet<usize> {
    let mut fields = Vec::new();
    for warning in answer["fieldWarnings"].as_array().into_iter().flatten() {
        fields.push(warning["fieldPath"].as_str().or(warning["field"].as_str()));
    }
    for detail in answer["error"]["details"].as_array().into_iter().flatten() {
        for violation in detail["fieldViolations"].as_array().into_iter().flatten() {
            fields.push(violation["field"].as_str());
        }
    }
    fields
        .into_iter()
        .flatten()
        .filter_map(member_index)
        .collect()
}

fn member_index(field: &str) -> Option<usize> {
    let rest = field
        .strip_prefix("audience_members[")
        .or_else(|| field.strip_prefix("audienceMembers["))?;
    rest.split(']').next()?.parse().ok()
}

fn is_user_data(row: &Value) -> bool {
    let Some(identifiers) = row["userIdentifiers"].as_array() else {
        return false;
    };
    let hashed = |v: &Value| v.as_str().is_some_and(hash::is_sha256_hex);
    row.as_object().is_some_and(|o| o.len() == 1)
        && !identifiers.is_empty()
        && identifiers.iter().all(|identifier| {
            let Some(object) = identifier.as_object().filter(|o| o.len() == 1) else {
                return false;
            };
            match object.iter().next() {
                Some((key, value)) if key == "emailAddress" || key == "phoneNumber" => {
                    hashed(value)
                }
                Some((key, address)) if key == "address" => {
                    hashed(&address["givenName"])
                        && hashed(&address["familyName"])
                        && address["regionCode"].as_str().is_some_and(|c| c.len() == 2)
                        && address["postalCode"]
                            .as_str()
                            .is_some_and(|z| !z.is_empty())
                }
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = "0123456789abcdef0123456789abcdef";

    fn target() -> Target {
        Target {
            base_url: "https://datamanager.googleapis.com/".into(),
            operating_account: Account {
                account_type: "GOOGLE_ADS".into(),
                account_id: "123-456-7890".into(),
            },
            login_account: None,
            product_destination_id: "9876543210".into(),
            access_token: Secret::new("ya29.token"),
        }
    }

    fn ann() -> Contact {
        Contact {
            email: Some(" Ann.Lee@Example.com ".into()),
            phone: Some("+44 7700 900123".into()),
            first_name: Some("Ann".into()),
            last_name: Some("Lee".into()),
            country: Some("gb".into()),
            zip: Some("sw1a  1aa".into()),
        }
    }

    #[test]
    fn an_ingest_names_the_destination_consent_terms_and_hex_hashes() {
        let row = row(&ann()).unwrap();
        let request = request(&target(), Op::Add, std::slice::from_ref(&row), &[], BATCH).unwrap();
        assert_eq!(
            request.url,
            "https://datamanager.googleapis.com/v1/audienceMembers:ingest"
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body["destinations"][0],
            json!({"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                   "productDestinationId": "9876543210"})
        );
        assert_eq!(body["encoding"], "HEX");
        assert!(
            body.get("consent").is_none(),
            "consent is each member's, not the request's"
        );
        assert_eq!(
            body["termsOfService"]["customerMatchTermsOfServiceStatus"],
            "ACCEPTED"
        );
        let ids = &body["audienceMembers"][0]["userData"]["userIdentifiers"];
        assert_eq!(
            ids[0]["emailAddress"],
            hash::sha256_hex("ann.lee@example.com")
        );
        assert_eq!(ids[1]["phoneNumber"], hash::sha256_hex("+447700900123"));
        assert_eq!(ids[2]["address"]["regionCode"], "GB");
        assert_eq!(ids[2]["address"]["postalCode"], "SW1A 1AA");
        assert_eq!(ids[2]["address"]["givenName"], hash::sha256_hex("ann"));
        let auth = request
            .headers
            .iter()
            .find(|(n, _)| n == http::header::AUTHORIZATION)
            .unwrap();
        assert!(auth.1.is_sensitive());
    }

    #[test]
    fn gmail_addresses_lose_dots_and_plus_tags_as_the_data_manager_guide_says() {
        let email = |raw: &str| {
            let row = row(&Contact {
                email: Some(raw.into()),
                ..Contact::default()
            })
            .unwrap();
            row["userIdentifiers"][0]["emailAddress"].clone()
        };
        // printf '%s' 'cloudysanfrancisco@googlemail.com' | sha256sum
        assert_eq!(
            email(" Cloudy.SanFrancisco+shopping@GoogleMail.com "),
            "332ed5427d17deb381928a719533e85046d68d7e45553abb805852b7d631fcb7"
        );
        assert_eq!(
            email("cloudy.sanfrancisco@gmail.com"),
            hash::sha256_hex("cloudysanfrancisco@gmail.com")
        );
        // Other domains keep dots and plus tags: printf '%s' 'user.name+nyc@example.com' | sha256sum
        assert_eq!(
            email("User.Name+NYC@Example.com"),
            "f109a2a632fbcea5fc82049f50beed3d8621bf9034399f437fb622222acccdac"
        );
        assert_eq!(
            email("jane.doe@gmail.co.uk"),
            hash::sha256_hex("jane.doe@gmail.co.uk")
        );
    }

    #[test]
    fn each_member_carries_its_own_consent_signals() {
        let rows = vec![row(&ann()).unwrap(); 3];
        let consents = [
            Some(AdConsent {
                ad_user_data: true,
                ad_personalization: false,
            }),
            Some(AdConsent {
                ad_user_data: true,
                ad_personalization: true,
            }),
            None,
        ];
        let ingest = request(&target(), Op::Add, &rows, &consents, BATCH).unwrap();
        let body: Value = serde_json::from_slice(&ingest.body).unwrap();
        let members = &body["audienceMembers"];
        assert_eq!(
            members[0]["consent"],
            json!({"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_DENIED"})
        );
        assert_eq!(
            members[1]["consent"],
            json!({"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"})
        );
        assert!(members[2].get("consent").is_none(), "unknown: not stated");
        let removal = request(&target(), Op::Remove, &rows, &consents, BATCH).unwrap();
        let body: Value = serde_json::from_slice(&removal.body).unwrap();
        assert!(body["audienceMembers"][0].get("consent").is_none());
    }

    #[test]
    fn a_removal_has_no_consent_and_goes_to_remove() {
        let row = row(&ann()).unwrap();
        let request = request(&target(), Op::Remove, &[row], &[], BATCH).unwrap();
        assert!(request.url.ends_with("/v1/audienceMembers:remove"));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert!(body.get("consent").is_none());
        assert!(body.get("termsOfService").is_none());
    }

    #[test]
    fn rows_of_another_platform_and_oversized_batches_are_refused() {
        let legacy = json!({"userIdentifiers": [{"hashedEmail": hash::sha256_hex("a@b.c")}]});
        assert_eq!(
            request(&target(), Op::Add, &[legacy], &[], BATCH).unwrap_err(),
            BuildError::BadRow(0)
        );
        let rows = vec![row(&ann()).unwrap(); MAX_ROWS + 1];
        assert!(matches!(
            request(&target(), Op::Add, &rows, &[], BATCH),
            Err(BuildError::TooManyRows { .. })
        ));
    }

    #[test]
    fn warnings_and_violations_name_the_members_they_concern() {
        let refused = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                {"field": "audience_members[2].user_data.user_identifiers[0]", "description": "bad hash"},
                {"field": "audience_members[5].user_data", "description": "bad"},
                {"field": "destinations[0]", "description": "x"}]}]}});
        assert_eq!(member_problems(&refused), BTreeSet::from([2, 5]));
        let accepted = json!({"requestId": "r", "fieldWarnings": [{"fieldPath": "audienceMembers[1].userData"}]});
        assert_eq!(member_problems(&accepted), BTreeSet::from([1]));
        assert!(member_problems(&json!({"requestId": "r"})).is_empty());
        assert_eq!(
            judge(http::StatusCode::TOO_MANY_REQUESTS, b""),
            Judgement::Retry
        );
        assert_eq!(
            judge(
                http::StatusCode::BAD_REQUEST,
                refused.to_string().as_bytes()
            ),
            Judgement::Reject
        );
    }
}

//! Rows for the `file` and `webhook` destinations, which are not ad platforms: the person's
//! pseudonymous id, Shopify customer id, and SHA-256 hex of the email (trimmed, lower-cased) and
//! of the phone in E.164 with `+`. No raw contact data leaves the service this way.

use serde_json::{Map, Value};

use super::{hash, Contact};

/// `{"email_sha256": h, "phone_sha256": h}` (only the fields present); `None` without either.
pub fn row(contact: &Contact) -> Option<Value> {
    let email = contact.raw_email().map(|e| e.to_lowercase());
    let phone = contact.phone_e164().map(|n| n.with_plus());
    if email.is_none() && phone.is_none() {
        return None;
    }
    let mut row = Map::new();
    if let Some(email) = email {
        row.insert("email_sha256".into(), hash::sha256_hex(&email).into());
    }
    if let Some(phone) = phone {
        row.insert("phone_sha256".into(), hash::sha256_hex(&phone).into());
    }
    Some(Value::Object(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lower_cased_and_phone_is_e164_with_plus() {
        let contact = Contact {
            email: Some("  Test@Example.com ".into()),
            phone: Some("(613) 555-0100".into()),
            country: Some("ca".into()),
            ..Default::default()
        };
        let row = row(&contact).unwrap();
        // printf '%s' 'test@example.com' | sha256sum
        assert_eq!(
            row["email_sha256"],
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(row["phone_sha256"], hash::sha256_hex("+16135550100"));
    }

    #[test]
    fn nothing_to_match_is_no_row() {
        assert!(row(&Contact::default()).is_none());
    }
}

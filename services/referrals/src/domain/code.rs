//! Referral codes: derived from the advocate with a keyed hash (stable, unguessable without the
//! secret), and found again in a friend's order (discount code, `ref` in the landing URL, or a
//! note attribute).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::input::{discount_codes, OrderFact};

/// Crockford base32: no I, L, O or U, so codes survive being read aloud or retyped.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// How a friend's order named a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    DiscountCode,
    LandingSite,
    NoteAttribute,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::DiscountCode => "discount_code",
            Source::LandingSite => "landing_site",
            Source::NoteAttribute => "note_attribute",
        }
    }

    pub fn parse(text: &str) -> Option<Source> {
        match text.trim() {
            "discount_code" => Some(Source::DiscountCode),
            "landing_site" => Some(Source::LandingSite),
            "note_attribute" => Some(Source::NoteAttribute),
            _ => None,
        }
    }
}

/// The code rules: secret, prefix, where to look for codes, and the share URL template.
#[derive(Clone)]
pub struct CodeRules {
    pub secret: Vec<u8>,
    /// Put before the hash, e.g. `REF-`.
    pub prefix: String,
    /// Where attribution looks, in priority order.
    pub sources: Vec<Source>,
    /// Query parameter of the landing URL carrying the code.
    pub url_parameter: String,
    /// Note attribute names carrying the code (case-insensitive).
    pub note_attributes: Vec<String>,
    /// `{code}` and `{shop}` are replaced.
    pub share_url: String,
}

impl std::fmt::Debug for CodeRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeRules")
            .field("secret", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl CodeRules {
    /// The advocate's code: prefix + 10 base32 characters (50 bits) of
    /// HMAC-SHA256(secret, shop/customer key).
    pub fn code_for(&self, shop: &str, customer_key: &str) -> String {
        self.keyed(
            &self.prefix,
            &format!("aftercart/referral-code/{shop}/{customer_key}"),
        )
    }

    /// The code of the reward earned by the friend's order `order_id`: one per referred order,
    /// the same on every retry and restart, so creating it twice finds the first one.
    pub fn reward_code_for(&self, prefix: &str, shop: &str, order_id: u64) -> String {
        self.keyed(prefix, &format!("aftercart/reward-code/{shop}/{order_id}"))
    }

    fn keyed(&self, prefix: &str, what: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(what.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        let mut code = String::with_capacity(prefix.len() + 10);
        code.push_str(&prefix.to_ascii_uppercase());
        for _ in 0..10 {
            code.push(ALPHABET[(bits >> 59) as usize] as char);
            bits <<= 5;
        }
        code
    }

    pub fn share_url(&self, shop: &str, code: &str) -> String {
        self.share_url
            .replace("{shop}", shop)
            .replace("{code}", code)
    }

    /// Codes named by an order, normalised (trimmed, upper-case), in source priority order.
    pub fn candidates(&self, order: &OrderFact) -> Vec<(Source, String)> {
        let mut found = Vec::new();
        for source in &self.sources {
            let codes: Vec<String> = match source {
                Source::DiscountCode => discount_codes(&order.discount_codes),
                Source::LandingSite => order
                    .landing_site
                    .as_deref()
                    .and_then(|url| query_value(url, &self.url_parameter))
                    .into_iter()
                    .collect(),
                Source::NoteAttribute => order
                    .note_attributes
                    .iter()
                    .filter(|attribute| {
                        attribute
                            .name
                            .as_ref()
                            .and_then(|n| n.as_str())
                            .is_some_and(|name| {
                                self.note_attributes
                                    .iter()
                                    .any(|wanted| wanted.eq_ignore_ascii_case(name.trim()))
                            })
                    })
                    .filter_map(|attribute| {
                        attribute
                            .value
                            .as_ref()
                            .and_then(|v| v.as_str())
                            .map(str::to_string)
                    })
                    .collect(),
            };
            for code in codes {
                let code = code.trim().to_ascii_uppercase();
                if !code.is_empty() && code.len() <= 64 {
                    found.push((*source, code));
                }
            }
        }
        found
    }
}

/// The value of `name` in the query of a URL or path (`/?ref=X&utm=y`), percent-decoded.
fn query_value(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key).eq_ignore_ascii_case(name)).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) fn test_rules() -> CodeRules {
    CodeRules {
        secret: b"test-secret".to_vec(),
        prefix: "REF-".into(),
        sources: vec![
            Source::DiscountCode,
            Source::LandingSite,
            Source::NoteAttribute,
        ],
        url_parameter: "ref".into(),
        note_attributes: vec!["ref".into(), "referral_code".into()],
        share_url: "https://{shop}/?ref={code}".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::input::NoteAttribute;
    use serde_json::json;

    #[test]
    fn codes_are_stable_per_advocate_and_depend_on_the_secret() {
        let rules = test_rules();
        let code = rules.code_for("shop.myshopify.com", "id:1");
        assert_eq!(code, rules.code_for("shop.myshopify.com", "id:1"));
        assert_eq!(code.len(), 14);
        assert!(code.starts_with("REF-"));
        assert!(code[4..].bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(code, rules.code_for("shop.myshopify.com", "id:2"));
        assert_ne!(code, rules.code_for("other.myshopify.com", "id:1"));
        let other_secret = CodeRules {
            secret: b"another".to_vec(),
            ..rules.clone()
        };
        assert_ne!(code, other_secret.code_for("shop.myshopify.com", "id:1"));
    }

    #[test]
    fn an_order_names_codes_through_each_configured_source_in_priority_order() {
        let rules = test_rules();
        let order = OrderFact {
            discount_codes: vec![json!({"code": " ref-aaa ", "amount": "5.00"})],
            landing_site: Some("/products/x?utm_source=mail&ref=REF-BBB%2D1#top".into()),
            note_attributes: vec![NoteAttribute {
                name: Some(json!("Referral_Code")),
                value: Some(json!("ref-ccc")),
            }],
            ..OrderFact::default()
        };
        assert_eq!(
            rules.candidates(&order),
            vec![
                (Source::DiscountCode, "REF-AAA".to_string()),
                (Source::LandingSite, "REF-BBB-1".to_string()),
                (Source::NoteAttribute, "REF-CCC".to_string()),
            ]
        );
        let only_discounts = CodeRules {
            sources: vec![Source::DiscountCode],
            ..rules
        };
        assert_eq!(only_discounts.candidates(&order).len(), 1);
    }

    #[test]
    fn broken_percent_escapes_do_not_panic() {
        for url in [
            "/?ref=%",
            "/?ref=%4",
            "/?ref=%zz",
            "/?ref",
            "?",
            "/?ref=a%2",
        ] {
            let _ = query_value(url, "ref");
        }
        assert_eq!(query_value("/?ref=%", "ref").as_deref(), Some("%"));
        assert_eq!(query_value("/?a=1", "ref"), None);
    }

    #[test]
    fn the_share_url_fills_its_template() {
        assert_eq!(
            test_rules().share_url("s.myshopify.com", "REF-X"),
            "https://s.myshopify.com/?ref=REF-X"
        );
    }
}

#[cfg(test)]
mod properties;

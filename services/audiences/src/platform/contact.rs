//! The raw contact as Shopify gave it, with accessors that only trim: every platform normalises
//! the raw values itself, by its own rules.

/// A person's contact as Shopify gave it (raw, untrimmed). Country is ISO-3166 alpha-2 in any case.
///
/// Holds personal data: never log it (its `Debug` is for tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contact {
    /// Email address, as typed.
    pub email: Option<String>,
    /// Phone number in any of Shopify's shapes (`+16135551111`, `(613) 555-1111`, …).
    pub phone: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// ISO-3166 alpha-2 country code, any case.
    pub country: Option<String>,
    /// Postal code, as typed.
    pub zip: Option<String>,
}

impl Contact {
    /// The email, trimmed, if it has one `@` with something on both sides and no inner whitespace.
    /// Not normalised: each platform lower-cases and rewrites it by its own rules.
    pub fn raw_email(&self) -> Option<&str> {
        let email = trimmed(&self.email)?;
        let (local, domain) = email.split_once('@')?;
        let plausible = !local.is_empty()
            && !domain.is_empty()
            && !domain.contains('@')
            && !email.chars().any(char::is_whitespace);
        plausible.then_some(email)
    }

    /// The phone, trimmed, if not blank.
    pub fn raw_phone(&self) -> Option<&str> {
        trimmed(&self.phone)
    }

    /// The first name, trimmed, if not blank.
    pub fn raw_first_name(&self) -> Option<&str> {
        trimmed(&self.first_name)
    }

    /// The last name, trimmed, if not blank.
    pub fn raw_last_name(&self) -> Option<&str> {
        trimmed(&self.last_name)
    }

    /// The postal code, trimmed, if not blank.
    pub fn raw_zip(&self) -> Option<&str> {
        trimmed(&self.zip)
    }

    /// The country as upper-case ISO-3166 alpha-2, if it is two ASCII letters.
    pub fn country_alpha2(&self) -> Option<String> {
        let country = trimmed(&self.country)?;
        let ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic());
        ok.then(|| country.to_ascii_uppercase())
    }
}

impl Contact {
    /// The phone in E.164, read with the contact's country for a national number; `None` when
    /// it is absent or not a usable number.
    pub fn phone_e164(&self) -> Option<super::phone::E164> {
        let country = self.country_alpha2();
        self.raw_phone()
            .and_then(|raw| super::phone::e164(raw, country.as_deref()))
    }
}

fn trimmed(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> Contact {
        Contact {
            email: Some("  Jane.Doe@Example.COM \n".into()),
            phone: Some("   ".into()),
            first_name: Some(" Zoë ".into()),
            last_name: None,
            country: Some(" gb ".into()),
            zip: Some(" SW1A 1AA ".into()),
        }
    }

    #[test]
    fn raw_accessors_trim_but_do_not_normalise() {
        let c = contact();
        assert_eq!(c.raw_email(), Some("Jane.Doe@Example.COM"));
        assert_eq!(c.raw_first_name(), Some("Zoë"));
        assert_eq!(c.raw_zip(), Some("SW1A 1AA"));
    }

    #[test]
    fn blank_and_missing_fields_read_as_none() {
        let c = contact();
        assert_eq!(c.raw_phone(), None);
        assert_eq!(c.raw_last_name(), None);
        assert_eq!(Contact::default().raw_email(), None);
    }

    #[test]
    fn an_email_without_a_single_at_sign_or_with_inner_spaces_is_unusable() {
        for bad in [
            "jane",
            "@example.com",
            "jane@",
            "a@b@c",
            "jane doe@example.com",
        ] {
            let c = Contact {
                email: Some(bad.into()),
                ..Contact::default()
            };
            assert_eq!(c.raw_email(), None, "{bad}");
        }
    }

    #[test]
    fn the_country_reads_as_upper_case_alpha2_or_not_at_all() {
        assert_eq!(contact().country_alpha2().as_deref(), Some("GB"));
        for bad in ["GBR", "G", "1A", ""] {
            let c = Contact {
                country: Some(bad.into()),
                ..Contact::default()
            };
            assert_eq!(c.country_alpha2(), None, "{bad}");
        }
    }
}

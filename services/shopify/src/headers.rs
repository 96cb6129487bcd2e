//! Reading Shopify's delivery headers in both styles (`X-Shopify-*` and the newer `Shopify-*`).

use http::HeaderMap;

/// The Shopify headers of one delivery, under their canonical names (lower-case, no `x-`).
#[derive(Debug, Clone, Default)]
pub struct WebhookHeaders {
    /// Every `shopify-*` header as (canonical name, raw value), in request order. When a delivery
    /// carries both styles of one header, the `X-` one wins and the other is dropped.
    entries: Vec<(String, Vec<u8>)>,
}

impl WebhookHeaders {
    pub const HMAC: &'static str = "shopify-hmac-sha256";
    pub const TOPIC: &'static str = "shopify-topic";
    pub const SHOP_DOMAIN: &'static str = "shopify-shop-domain";
    pub const WEBHOOK_ID: &'static str = "shopify-webhook-id";
    pub const API_VERSION: &'static str = "shopify-api-version";
    pub const EVENT_ID: &'static str = "shopify-event-id";
    pub const TRIGGERED_AT: &'static str = "shopify-triggered-at";

    /// Collects the Shopify headers. `http` already lower-cases names, so matching is
    /// case-insensitive whatever the client sent.
    pub fn from_header_map(map: &HeaderMap) -> Self {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let mut prefixed: Vec<bool> = Vec::new();
        for (name, value) in map {
            let name = name.as_str();
            let (canonical, is_prefixed) = match name.strip_prefix("x-") {
                Some(rest) if rest.starts_with("shopify-") => (rest, true),
                _ if name.starts_with("shopify-") => (name, false),
                _ => continue,
            };
            let value = value.as_bytes().to_vec();
            match entries.iter().position(|(n, _)| n == canonical) {
                // A repeated header keeps its first value; an X- one replaces an unprefixed one.
                Some(at) if is_prefixed && !prefixed[at] => {
                    entries[at].1 = value;
                    prefixed[at] = true;
                }
                Some(_) => {}
                None => {
                    entries.push((canonical.to_string(), value));
                    prefixed.push(is_prefixed);
                }
            }
        }
        Self { entries }
    }

    /// The raw value of a canonical header name such as `shopify-topic`.
    pub fn get(&self, canonical: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(name, _)| name == canonical)
            .map(|(_, value)| value.as_slice())
    }

    /// A header as trimmed, non-empty UTF-8 text.
    pub fn text(&self, canonical: &str) -> Option<&str> {
        let text = std::str::from_utf8(self.get(canonical)?).ok()?.trim();
        (!text.is_empty()).then_some(text)
    }

    pub fn hmac(&self) -> Option<&[u8]> {
        self.get(Self::HMAC)
    }

    pub fn topic(&self) -> Option<&str> {
        self.text(Self::TOPIC)
    }

    pub fn shop_domain(&self) -> Option<&str> {
        self.text(Self::SHOP_DOMAIN)
    }

    pub fn webhook_id(&self) -> Option<&str> {
        self.text(Self::WEBHOOK_ID)
    }

    /// Every Shopify header, canonical name and raw value, for the Kafka record.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn x_prefixed_headers_are_read_under_canonical_names() {
        let h = WebhookHeaders::from_header_map(&map(&[
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Shop-Domain", "shop.myshopify.com"),
            ("X-Shopify-Webhook-Id", "b54557e4"),
            ("X-Shopify-Hmac-Sha256", "abc="),
            ("Content-Type", "application/json"),
        ]));
        assert_eq!(h.topic(), Some("orders/create"));
        assert_eq!(h.shop_domain(), Some("shop.myshopify.com"));
        assert_eq!(h.webhook_id(), Some("b54557e4"));
        assert_eq!(h.hmac(), Some(&b"abc="[..]));
        let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "shopify-topic",
                "shopify-shop-domain",
                "shopify-webhook-id",
                "shopify-hmac-sha256"
            ]
        );
    }

    #[test]
    fn unprefixed_event_style_headers_are_accepted() {
        let h = WebhookHeaders::from_header_map(&map(&[
            ("shopify-topic", "carts/update"),
            ("Shopify-Webhook-Id", "id-1"),
        ]));
        assert_eq!(h.topic(), Some("carts/update"));
        assert_eq!(h.webhook_id(), Some("id-1"));
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let h = WebhookHeaders::from_header_map(&map(&[("x-SHOPIFY-topic", "orders/paid")]));
        assert_eq!(h.topic(), Some("orders/paid"));
    }

    #[test]
    fn the_x_style_wins_when_both_styles_are_sent() {
        let h = WebhookHeaders::from_header_map(&map(&[
            ("shopify-topic", "from-plain"),
            ("x-shopify-topic", "from-x"),
        ]));
        assert_eq!(h.topic(), Some("from-x"));
        assert_eq!(h.iter().count(), 1);
    }

    #[test]
    fn blank_or_non_utf8_values_count_as_missing() {
        let mut m = map(&[("x-shopify-topic", "   ")]);
        m.insert(
            "x-shopify-shop-domain",
            HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap(),
        );
        let h = WebhookHeaders::from_header_map(&m);
        assert_eq!(h.topic(), None);
        assert_eq!(h.shop_domain(), None);
        assert_eq!(h.get("shopify-shop-domain"), Some(&[0xff, 0xfe][..]));
    }

    #[test]
    fn unrelated_headers_are_ignored() {
        let h = WebhookHeaders::from_header_map(&map(&[
            ("x-shopifyish", "1"),
            ("x-forwarded-for", "1"),
        ]));
        assert_eq!(h.iter().count(), 0);
    }
}

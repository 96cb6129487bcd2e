//! The state kept per journey (one purchase attempt, keyed by the ingress's journey key). It is
//! what the changelog topic stores, so it holds only what events and segments need.

use serde::{Deserialize, Serialize};

use crate::domain::input::{discount_codes, Checkout, Order};

/// The latest checkout snapshot, trimmed to what the abandonment event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub token: Option<String>,
    pub cart_token: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub customer_id: Option<u64>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub country: Option<String>,
    pub orders_count: Option<u64>,
    pub accepts_email: bool,
    pub accepts_sms: bool,
    pub total_price: Option<String>,
    pub currency: Option<String>,
    pub items: Vec<ItemSummary>,
    pub discount_codes: Vec<String>,
    pub has_shipping_address: bool,
    pub has_shipping_method: bool,
    pub has_payment: bool,
    pub completed: bool,
    /// `abandoned_checkout_url` (absent in states stored before it was kept).
    #[serde(default)]
    pub recovery_url: Option<String>,
    #[serde(default)]
    pub subtotal_price: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemSummary {
    pub product_id: Option<u64>,
    pub variant_id: Option<u64>,
    pub title: Option<String>,
    pub quantity: u64,
    pub price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
}

/// The order that closed a journey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRef {
    pub id: u64,
    pub at_ms: i64,
    pub customer_id: Option<u64>,
    pub email: Option<String>,
    pub used_discount: bool,
    pub used_recovery_url: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journey {
    pub shop: String,
    pub checkout: Option<Snapshot>,
    /// Event time (`updated_at`) of the snapshot: older updates never overwrite it.
    pub checkout_updated_ms: Option<i64>,
    /// When the cart was first seen (receive time).
    pub cart_at_ms: Option<i64>,
    pub first_activity_ms: i64,
    /// Receive time of the latest applied activity: abandonment timers start here.
    pub last_activity_ms: i64,
    /// Checkout deliveries applied: returns to the checkout.
    pub visits: u32,
    pub order: Option<OrderRef>,
    pub deleted: bool,
    pub cart_abandoned_at_ms: Option<i64>,
    pub abandoned_at_ms: Option<i64>,
    pub recovered: bool,
}

impl Journey {
    pub fn new(shop: &str, at_ms: i64) -> Self {
        Journey {
            shop: shop.to_string(),
            checkout: None,
            checkout_updated_ms: None,
            cart_at_ms: None,
            first_activity_ms: at_ms,
            last_activity_ms: at_ms,
            visits: 0,
            order: None,
            deleted: false,
            cart_abandoned_at_ms: None,
            abandoned_at_ms: None,
            recovered: false,
        }
    }

    /// Closed for abandonment: ordered, completed or deleted.
    pub fn is_closed(&self) -> bool {
        self.order.is_some() || self.deleted || self.checkout.as_ref().is_some_and(|c| c.completed)
    }

    pub fn has_contact(&self) -> bool {
        self.checkout
            .as_ref()
            .is_some_and(|c| c.email.is_some() || c.phone.is_some())
    }

    /// The customer this journey belongs to, for consent and history (`None` when anonymous).
    pub fn customer_ref(&self) -> Option<String> {
        let (id, email) = match (&self.checkout, &self.order) {
            (Some(c), _) => (c.customer_id, c.email.clone()),
            (None, Some(o)) => (o.customer_id, o.email.clone()),
            (None, None) => (None, None),
        };
        customer_ref(&self.shop, id, email.as_deref())
    }
}

/// A stable in-memory identity for a customer of a shop: the id when known, else the email.
pub fn customer_ref(shop: &str, id: Option<u64>, email: Option<&str>) -> Option<String> {
    match (id, email) {
        (Some(id), _) => Some(format!("{shop}/id:{id}")),
        (None, Some(email)) if !email.trim().is_empty() => Some(format!(
            "{shop}/email:{}",
            email.trim().to_ascii_lowercase()
        )),
        _ => None,
    }
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

impl Snapshot {
    pub fn from_checkout(checkout: &Checkout) -> Snapshot {
        let customer = checkout.customer.clone().unwrap_or_default();
        let country = checkout
            .shipping_address
            .as_ref()
            .and_then(|a| a.country_code.clone())
            .or_else(|| {
                checkout
                    .billing_address
                    .as_ref()
                    .and_then(|a| a.country_code.clone())
            })
            .or_else(|| {
                customer
                    .default_address
                    .as_ref()
                    .and_then(|a| a.country_code.clone())
            });
        let names = checkout
            .shipping_address
            .as_ref()
            .or(checkout.billing_address.as_ref());
        Snapshot {
            token: non_empty(&checkout.token),
            cart_token: non_empty(&checkout.cart_token),
            email: non_empty(&checkout.email).or_else(|| non_empty(&customer.email)),
            phone: non_empty(&checkout.phone).or_else(|| non_empty(&customer.phone)),
            customer_id: customer.id,
            first_name: non_empty(&customer.first_name)
                .or_else(|| names.and_then(|a| non_empty(&a.first_name))),
            last_name: non_empty(&customer.last_name)
                .or_else(|| names.and_then(|a| non_empty(&a.last_name))),
            country,
            orders_count: customer.orders_count,
            accepts_email: checkout.buyer_accepts_marketing.unwrap_or(false),
            accepts_sms: checkout.buyer_accepts_sms_marketing.unwrap_or(false),
            total_price: non_empty(&checkout.total_price),
            currency: non_empty(&checkout.presentment_currency)
                .or_else(|| non_empty(&checkout.currency)),
            items: checkout
                .line_items
                .iter()
                .map(|item| ItemSummary {
                    product_id: item.product_id,
                    variant_id: item.variant_id,
                    title: item.title.clone(),
                    quantity: item.quantity,
                    price: item.price.clone(),
                    image_url: non_empty(&item.image_url),
                })
                .collect(),
            discount_codes: discount_codes(&checkout.discount_codes),
            has_shipping_address: checkout.shipping_address.is_some(),
            has_shipping_method: checkout
                .shipping_lines
                .as_ref()
                .is_some_and(|lines| !lines.is_empty()),
            has_payment: non_empty(&checkout.gateway).is_some(),
            completed: non_empty(&checkout.completed_at).is_some(),
            recovery_url: non_empty(&checkout.abandoned_checkout_url),
            subtotal_price: non_empty(&checkout.subtotal_price),
        }
    }
}

impl OrderRef {
    pub fn from_order(order: &Order, at_ms: i64, recovery_marker: &str) -> OrderRef {
        let customer = order.customer.clone().unwrap_or_default();
        let mentions_recovery =
            |site: &Option<String>| site.as_deref().is_some_and(|s| s.contains(recovery_marker));
        OrderRef {
            id: order.id,
            at_ms,
            customer_id: customer.id,
            email: non_empty(&order.email).or_else(|| non_empty(&customer.email)),
            used_discount: !discount_codes(&order.discount_codes).is_empty(),
            used_recovery_url: mentions_recovery(&order.landing_site)
                || mentions_recovery(&order.referring_site),
        }
    }
}

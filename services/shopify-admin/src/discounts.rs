//! The discount operations of the referral programme, each safe to repeat: a code is created
//! with `discountCodeBasicCreate`, and when Shopify answers that the code is taken it is looked
//! up with `codeDiscountNodeByCode` and taken as done; a deactivation of a code that does not
//! exist is nothing to do. Store credit has no code to look up, so it is written once per
//! reward by the caller's ordering (see `docs/services/referrals-shopify.md`).

use aftercart_shopify::money::Amount;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::client::{AdminClient, CallError};

const CREATE: &str =
    "mutation discountCodeBasicCreate($basicCodeDiscount: DiscountCodeBasicInput!) {
  discountCodeBasicCreate(basicCodeDiscount: $basicCodeDiscount) {
    codeDiscountNode { id }
    userErrors { field code message }
  }
}";

const LOOKUP: &str = "query codeDiscountNodeByCode($code: String!) {
  codeDiscountNodeByCode(code: $code) { id }
}";

const DEACTIVATE: &str = "mutation discountCodeDeactivate($id: ID!) {
  discountCodeDeactivate(id: $id) {
    codeDiscountNode { id }
    userErrors { field code message }
  }
}";

const STORE_CREDIT: &str =
    "mutation storeCreditAccountCredit($id: ID!, $creditInput: StoreCreditAccountCreditInput!) {
  storeCreditAccountCredit(id: $id, creditInput: $creditInput) {
    storeCreditAccountTransaction { id }
    userErrors { field code message }
  }
}";

const SEGMENT_CREATE: &str = "mutation segmentCreate($name: String!, $query: String!) {
  segmentCreate(name: $name, query: $query) {
    segment { id }
    userErrors { field message }
  }
}";

/// The search narrows the list, but names are matched here: a search that does not filter by
/// name must not hide the segment behind another one.
const SEGMENT_LOOKUP: &str = "query segments($query: String!) {
  segments(first: 250, query: $query) { nodes { id name } }
}";

/// The segment of customers without an order, for offers limited to a first order.
pub const FIRST_ORDER_SEGMENT: &str = "aftercart: customers without orders";
const FIRST_ORDER_QUERY: &str = "number_of_orders = 0";

/// How much a discount takes off.
#[derive(Debug, Clone, PartialEq)]
pub enum DiscountValue {
    /// Percent of the order, 0 < p <= 100.
    Percentage(Amount),
    /// A fixed amount of the shop's currency off the order.
    Amount(Amount),
}

impl DiscountValue {
    /// `10%` or `5.00`.
    pub fn parse(text: &str) -> Result<DiscountValue, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            let value = Amount::parse(percent.trim())
                .ok_or_else(|| format!("{text:?} is not a percentage like 10%"))?;
            if value <= Amount::ZERO || value > Amount::parse("100").expect("literal") {
                return Err(format!("{text:?} must be above 0% and at most 100%"));
            }
            return Ok(DiscountValue::Percentage(value));
        }
        match Amount::parse(text) {
            Some(value) if value > Amount::ZERO => Ok(DiscountValue::Amount(value)),
            _ => Err(format!(
                "{text:?} is not a percentage like 10% or an amount like 5.00"
            )),
        }
    }

    fn customer_gets(&self) -> Value {
        let value = match self {
            DiscountValue::Percentage(p) => json!({"percentage": p.to_f64() / 100.0}),
            DiscountValue::Amount(a) => {
                json!({"discountAmount": {"amount": a.to_string(), "appliesOnEachItem": false}})
            }
        };
        json!({"value": value, "items": {"all": true}})
    }
}

/// Who may use a discount.
#[derive(Debug, Clone, PartialEq)]
pub enum Eligibility {
    Everyone,
    /// Customers without an order yet (a Shopify customer segment aftercart creates once).
    FirstOrderOnly,
    /// One customer (`gid://shopify/Customer/<id>`).
    Customer(u64),
}

/// A code discount to exist in a shop.
#[derive(Debug, Clone, PartialEq)]
pub struct Discount {
    pub code: String,
    /// What the merchant sees in the admin (no personal data).
    pub title: String,
    pub value: DiscountValue,
    pub eligibility: Eligibility,
    pub once_per_customer: bool,
    /// Total uses across customers (`Some(1)`: single use).
    pub usage_limit: Option<u32>,
    pub minimum_subtotal: Option<Amount>,
    /// RFC 3339.
    pub starts_at: String,
}

/// Why an operation did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// Shopify's `userErrors`, verbatim (they name fields and rules, never customers).
    #[error("Shopify refused the input: {0}")]
    UserErrors(String),
}

impl ActionError {
    pub fn as_label(&self) -> &'static str {
        match self {
            ActionError::Call(error) => error.as_label(),
            ActionError::UserErrors(_) => "user_errors",
        }
    }
}

/// The operations, over one client.
#[derive(Clone)]
pub struct Discounts {
    client: AdminClient,
    /// Shop → id of its first-order segment, once known.
    segments: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

fn user_errors(payload: &Value) -> Vec<Value> {
    payload["userErrors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn describe(errors: &[Value]) -> String {
    errors
        .iter()
        .map(|e| {
            let field = e["field"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .unwrap_or_default();
            let code = e["code"].as_str().unwrap_or("");
            let message = e["message"].as_str().unwrap_or("");
            format!("{field} {code} {message}").trim().to_string()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A taken code: `TAKEN` on the code field (older answers say so only in the message).
fn code_taken(errors: &[Value]) -> bool {
    errors.iter().any(|e| {
        let on_code = e["field"]
            .as_array()
            .and_then(|f| f.last())
            .and_then(Value::as_str)
            == Some("code");
        let code = e["code"].as_str().unwrap_or("");
        let message = e["message"].as_str().unwrap_or("").to_ascii_lowercase();
        on_code
            && (code == "TAKEN"
                || code == "DUPLICATE"
                || message.contains("unique")
                || message.contains("already"))
    })
}

impl Discounts {
    pub fn new(client: AdminClient) -> Discounts {
        Discounts {
            client,
            segments: Default::default(),
        }
    }

    pub fn client(&self) -> &AdminClient {
        &self.client
    }

    /// Makes sure `discount` exists in `shop`; its node id.
    pub async fn ensure(
        &self,
        shop: &str,
        discount: &Discount,
        stop: &CancellationToken,
    ) -> Result<String, ActionError> {
        let context = match &discount.eligibility {
            Eligibility::Everyone => json!({"all": "ALL"}),
            Eligibility::Customer(id) => {
                json!({"customers": {"add": [format!("gid://shopify/Customer/{id}")]}})
            }
            Eligibility::FirstOrderOnly => {
                let segment = self.first_order_segment(shop, stop).await?;
                json!({"customerSegments": {"add": [segment]}})
            }
        };
        let mut input = json!({
            "title": discount.title,
            "code": discount.code,
            "startsAt": discount.starts_at,
            "context": context,
            "customerGets": discount.value.customer_gets(),
            "appliesOncePerCustomer": discount.once_per_customer,
            "usageLimit": discount.usage_limit,
        });
        if let Some(minimum) = discount.minimum_subtotal {
            input["minimumRequirement"] =
                json!({"subtotal": {"greaterThanOrEqualToSubtotal": minimum.to_string()}});
        }
        let data = self
            .client
            .call(
                shop,
                "discount_create",
                CREATE,
                json!({"basicCodeDiscount": input}),
                stop,
            )
            .await?;
        let payload = &data["discountCodeBasicCreate"];
        let errors = user_errors(payload);
        if errors.is_empty() {
            if let Some(id) = payload["codeDiscountNode"]["id"].as_str() {
                return Ok(id.to_string());
            }
        }
        if code_taken(&errors) {
            // Created by an earlier try whose answer was lost, or before a restart.
            if let Some(id) = self.lookup(shop, &discount.code, stop).await? {
                return Ok(id);
            }
        }
        self.client.metrics().call("discount_create", "user_error");
        Err(ActionError::UserErrors(if errors.is_empty() {
            "no discount in the answer".to_string()
        } else {
            describe(&errors)
        }))
    }

    /// The node id of the discount with `code`, if there is one.
    pub async fn lookup(
        &self,
        shop: &str,
        code: &str,
        stop: &CancellationToken,
    ) -> Result<Option<String>, ActionError> {
        let data = self
            .client
            .call(shop, "discount_lookup", LOOKUP, json!({"code": code}), stop)
            .await?;
        Ok(data["codeDiscountNodeByCode"]["id"]
            .as_str()
            .map(str::to_string))
    }

    /// Deactivates the discount with `code`; false when there is none.
    pub async fn deactivate(
        &self,
        shop: &str,
        code: &str,
        stop: &CancellationToken,
    ) -> Result<bool, ActionError> {
        let Some(id) = self.lookup(shop, code, stop).await? else {
            return Ok(false);
        };
        let data = self
            .client
            .call(
                shop,
                "discount_deactivate",
                DEACTIVATE,
                json!({"id": id}),
                stop,
            )
            .await?;
        let errors = user_errors(&data["discountCodeDeactivate"]);
        if !errors.is_empty() {
            self.client
                .metrics()
                .call("discount_deactivate", "user_error");
            return Err(ActionError::UserErrors(describe(&errors)));
        }
        Ok(true)
    }

    /// Credits `amount` of `currency` to the customer's store credit account.
    pub async fn credit(
        &self,
        shop: &str,
        customer_id: u64,
        amount: Amount,
        currency: &str,
        stop: &CancellationToken,
    ) -> Result<String, ActionError> {
        let variables = json!({
            "id": format!("gid://shopify/Customer/{customer_id}"),
            "creditInput": {"creditAmount": {"amount": amount.to_string(), "currencyCode": currency}},
        });
        let data = self
            .client
            .call_unrepeatable(shop, "store_credit", STORE_CREDIT, variables, stop)
            .await?;
        let payload = &data["storeCreditAccountCredit"];
        let errors = user_errors(payload);
        match payload["storeCreditAccountTransaction"]["id"].as_str() {
            Some(id) if errors.is_empty() => Ok(id.to_string()),
            _ => {
                self.client.metrics().call("store_credit", "user_error");
                Err(ActionError::UserErrors(describe(&errors)))
            }
        }
    }

    /// The id of the shop's segment named [`FIRST_ORDER_SEGMENT`], if there is one.
    async fn find_first_order_segment(
        &self,
        shop: &str,
        stop: &CancellationToken,
    ) -> Result<Option<String>, ActionError> {
        let lookup = json!({"query": format!("name:'{FIRST_ORDER_SEGMENT}'")});
        let found = self
            .client
            .call(shop, "segment_lookup", SEGMENT_LOOKUP, lookup, stop)
            .await?;
        Ok(found["segments"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"].as_str() == Some(FIRST_ORDER_SEGMENT))
            .and_then(|n| n["id"].as_str())
            .map(str::to_string))
    }

    /// The shop's segment of customers without orders, created the first time it is needed.
    async fn first_order_segment(
        &self,
        shop: &str,
        stop: &CancellationToken,
    ) -> Result<String, ActionError> {
        if let Some(id) = self.segments.lock().expect("segments lock").get(shop) {
            return Ok(id.clone());
        }
        let id = match self.find_first_order_segment(shop, stop).await? {
            Some(id) => id,
            None => {
                let data = self
                    .client
                    .call(
                        shop,
                        "segment_create",
                        SEGMENT_CREATE,
                        json!({"name": FIRST_ORDER_SEGMENT, "query": FIRST_ORDER_QUERY}),
                        stop,
                    )
                    .await?;
                let payload = &data["segmentCreate"];
                match payload["segment"]["id"].as_str() {
                    Some(id) => id.to_string(),
                    // Names are unique: made meanwhile, or missed by the search.
                    None => match self.find_first_order_segment(shop, stop).await? {
                        Some(id) => id,
                        None => {
                            self.client.metrics().call("segment_create", "user_error");
                            return Err(ActionError::UserErrors(describe(&user_errors(payload))));
                        }
                    },
                }
            }
        };
        self.segments
            .lock()
            .expect("segments lock")
            .insert(shop.to_string(), id.clone());
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_percentages_or_amounts() {
        assert_eq!(
            DiscountValue::parse("10%"),
            Ok(DiscountValue::Percentage(Amount::parse("10").unwrap()))
        );
        assert_eq!(
            DiscountValue::parse(" 5.50 "),
            Ok(DiscountValue::Amount(Amount::parse("5.50").unwrap()))
        );
        for bad in ["0%", "101%", "-3", "ten", "", "0"] {
            assert!(DiscountValue::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            DiscountValue::parse("15%").unwrap().customer_gets()["value"]["percentage"],
            0.15
        );
    }

    #[test]
    fn a_taken_code_is_recognised_by_code_or_message() {
        let taken = json!([{"field": ["basicCodeDiscount", "code"], "code": "TAKEN", "message": "Code must be unique. Please try a different code."}]);
        assert!(code_taken(taken.as_array().unwrap()));
        let other = json!([{"field": ["basicCodeDiscount", "customerGets"], "code": "INVALID", "message": "bad"}]);
        assert!(!code_taken(other.as_array().unwrap()));
        assert_eq!(
            describe(other.as_array().unwrap()),
            "basicCodeDiscount.customerGets INVALID bad"
        );
    }
}

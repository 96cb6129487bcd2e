//! Answers to `customers/data_request`: what the journey state holds about the person the
//! request names, as one [`DataRequestReport`] on the shared data requests topic. Their orders
//! (matched by customer id, email and the orders the request lists, never one of another
//! customer id: [`aftercart_shopify::privacy::Person::owns`]) with the touchpoints sent and
//! still scheduled and the contact fields held; their consent statement and their count of
//! orders. Nothing held: a report without holdings, so the merchant sees that the service
//! answered. After a redaction only its markers are left (ids and keyed hashes, with the time):
//! they are listed as `redaction`.

use aftercart_shopify::privacy::{contact_fields, DataRequest, DataRequestReport, Holding};
use aftercart_shopify::time::rfc3339;
use serde_json::json;

use super::{Effect, Step};
use crate::domain::state::{buyer_entity, customer_entity, OrderJourney};

/// The service name a report is written under (and its event id derived from).
const SERVICE: &str = "journey";

impl Step<'_> {
    /// Reports everything held about the person in this shop's partition, read at `at_ms`.
    pub(super) fn data_request(&mut self, request: &DataRequest, at_ms: i64) {
        let who = &request.person;
        let prefix = format!("order/{}/", self.shop);
        let mut orders: Vec<(&String, &OrderJourney)> = self
            .state
            .orders
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .filter(|(_, o)| who.owns(o.customer_id, o.email.as_deref(), None, Some(o.order_id)))
            .collect();
        orders.sort_by_key(|(key, _)| *key);
        let mut holdings: Vec<Holding> = orders
            .into_iter()
            .map(|(key, order)| Holding::new("order", key.clone(), order_held(order)))
            .collect();
        if let Some(id) = who.customer_id {
            let key = customer_entity(self.shop, id);
            if let Some(consent) = self.state.customers.get(&key) {
                holdings.push(Holding::new("consent", key, json!({ "stored": consent })));
            }
            let key = buyer_entity(self.shop, id);
            if let Some(buyer) = self.state.buyers.get(&key) {
                holdings.push(Holding::new("buyer", key, json!({ "stored": buyer })));
            }
        }
        let named = super::redaction::pseudonyms(
            &self.rules.hasher,
            self.shop,
            (
                who.customer_id,
                who.email.as_deref(),
                who.phone.as_deref(),
                &who.orders,
            ),
        );
        holdings.extend(
            self.state
                .markers
                .held(self.shop, &named.marks())
                .into_iter()
                .map(|(key, marker)| {
                    let at = rfc3339(marker.redacted_ms);
                    Holding::new("redaction", key, json!({ "redacted_at": at }))
                }),
        );
        let report = DataRequestReport::new(SERVICE, self.shop, request, at_ms, holdings);
        self.effects.push(Effect::Answer {
            key: format!("{}/data-request", self.shop),
            report: Box::new(report),
        });
    }
}

/// An order as stored, with what it means: touchpoints sent and scheduled, contact fields held.
fn order_held(order: &OrderJourney) -> serde_json::Value {
    let scheduled: Vec<serde_json::Value> = order
        .timers
        .iter()
        .map(|t| json!({ "kind": t.kind, "due_at": rfc3339(t.due_ms), "product_id": t.product_id }))
        .collect();
    json!({
        "stored": order,
        "touchpoints_sent": order.sent,
        "touchpoints_scheduled": scheduled,
        "contact_fields": contact_fields([
            ("email", order.email.is_some()),
            ("first_name", order.first_name.is_some()),
        ]),
    })
}

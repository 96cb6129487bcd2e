//! Topic families: which Kafka topic a Shopify webhook topic is routed to.

/// The Kafka topic family of a webhook. Also a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Checkouts,
    Carts,
    Orders,
    /// `fulfillments/*` and `fulfillment_events/*`: keyed by their order id, like an order
    /// without a cart or checkout token.
    Fulfillments,
    Customers,
    Compliance,
    Other,
}

impl Family {
    /// Every family, in a stable order.
    pub const ALL: [Family; 7] = [
        Family::Checkouts,
        Family::Carts,
        Family::Orders,
        Family::Fulfillments,
        Family::Customers,
        Family::Compliance,
        Family::Other,
    ];

    /// The families consumers join by partition: their topics must share one partition count.
    pub const JOURNEY: [Family; 6] = [
        Family::Checkouts,
        Family::Carts,
        Family::Orders,
        Family::Fulfillments,
        Family::Customers,
        Family::Compliance,
    ];

    /// Routes a webhook topic such as `checkouts/update` (compared case-insensitively).
    pub fn of_topic(topic: &str) -> Family {
        let topic = topic.trim().to_ascii_lowercase();
        match topic.as_str() {
            // Compliance first: these share the customers/ prefix.
            "customers/data_request" | "customers/redact" | "shop/redact" | "app/uninstalled" => {
                return Family::Compliance
            }
            _ => {}
        }
        let resource = topic.split('/').next().unwrap_or_default();
        match resource {
            "checkouts" => Family::Checkouts,
            "carts" => Family::Carts,
            "orders" | "refunds" | "order_transactions" => Family::Orders,
            "fulfillments" | "fulfillment_events" => Family::Fulfillments,
            "customers"
            | "customers_email_marketing_consent"
            | "customers_marketing_consent"
            | "customers_whats_app_marketing_consent" => Family::Customers,
            _ => Family::Other,
        }
    }

    /// The family's name: the Kafka topic suffix after the prefix, and the metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Family::Checkouts => "checkouts",
            Family::Carts => "carts",
            Family::Orders => "orders",
            Family::Fulfillments => "fulfillments",
            Family::Customers => "customers",
            Family::Compliance => "compliance",
            Family::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_topics_route_to_their_family() {
        let cases = [
            ("checkouts/create", Family::Checkouts),
            ("checkouts/update", Family::Checkouts),
            ("checkouts/delete", Family::Checkouts),
            ("carts/create", Family::Carts),
            ("carts/update", Family::Carts),
            ("orders/create", Family::Orders),
            ("orders/paid", Family::Orders),
            ("orders/cancelled", Family::Orders),
            ("refunds/create", Family::Orders),
            ("order_transactions/create", Family::Orders),
            ("fulfillments/create", Family::Fulfillments),
            ("fulfillments/update", Family::Fulfillments),
            ("fulfillment_events/create", Family::Fulfillments),
            ("fulfillment_events/delete", Family::Fulfillments),
            ("fulfillment_orders/moved", Family::Other),
            ("customers/create", Family::Customers),
            ("customers/update", Family::Customers),
            ("customers/delete", Family::Customers),
            (
                "customers_email_marketing_consent/update",
                Family::Customers,
            ),
            ("customers_marketing_consent/update", Family::Customers),
            (
                "customers_whats_app_marketing_consent/update",
                Family::Customers,
            ),
            ("customers/data_request", Family::Compliance),
            ("customers/redact", Family::Compliance),
            ("shop/redact", Family::Compliance),
            ("app/uninstalled", Family::Compliance),
            ("products/update", Family::Other),
            ("shop/update", Family::Other),
            ("", Family::Other),
            ("checkoutsX/create", Family::Other),
        ];
        for (topic, family) in cases {
            assert_eq!(Family::of_topic(topic), family, "{topic}");
        }
    }

    #[test]
    fn routing_ignores_case_and_surrounding_space() {
        assert_eq!(Family::of_topic(" Orders/Paid "), Family::Orders);
        assert_eq!(Family::of_topic("SHOP/REDACT"), Family::Compliance);
    }

    #[test]
    fn journey_families_exclude_other() {
        assert!(!Family::JOURNEY.contains(&Family::Other));
        assert_eq!(Family::ALL.len(), Family::JOURNEY.len() + 1);
    }
}

//! Events of the consumer stage that are both logged and counted: one struct each, with one
//! `emit()` that writes the log line and moves the counter, so the two cannot drift (Vector's
//! `internal_events` habit). Fields are labels and positions only, never record contents.

use aftercart_runtime::event;
use aftercart_shopify::privacy::DataRequestReport;

use crate::loop_metrics::LoopMetrics;

event! {
    /// An input record the service's logic cannot use: counted by family and reason, dead-lettered.
    pub struct RecordUnusable<'a> { pub family: &'a str, pub partition: i32, pub offset: i64, pub reason: &'static str }
    on LoopMetrics, |self, metrics| {
        metrics.failed(self.family, self.reason);
        tracing::warn!(topic = self.family, partition = self.partition, offset = self.offset, reason = self.reason, "Dead-lettering a record that cannot be used.");
    }
}

event! {
    /// A raw record without a shop domain cannot be routed by shop: counted, dead-lettered.
    pub struct RecordWithoutShop<'a> { pub family: &'a str, pub partition: i32, pub offset: i64 }
    on LoopMetrics, |self, metrics| {
        metrics.failed(self.family, Self::REASON);
        tracing::warn!(topic = self.family, partition = self.partition, offset = self.offset, reason = Self::REASON, "Dead-lettering a record without a shop domain.");
    }
}

impl RecordWithoutShop<'_> {
    pub const REASON: &'static str = "no_shop";
}

event! {
    /// This member may have lost its partitions (`stalled`, `lost`): it drops its state and rejoins.
    pub struct MemberFenced { pub reason: &'static str }
    on LoopMetrics, |self, metrics| {
        metrics.fenced(self.reason);
        tracing::warn!(reason = self.reason, "This member may have lost its partitions: dropping its state and rejoining.");
    }
}

event! {
    /// A service's answer to a `customers/data_request` is on the data requests topic: counted,
    /// and logged with the request id, the service and how much it holds (never what).
    pub struct DataRequestAnswered<'a> { pub report: &'a DataRequestReport }
    on LoopMetrics, |self, metrics| {
        metrics.data_request_answered();
        tracing::info!(
            service = %self.report.service,
            data_request_id = ?self.report.data_request_id,
            holdings = self.report.holdings.len(),
            respond_by = %self.report.respond_by,
            "Answered a customers/data_request: the report is in the data requests topic."
        );
    }
}

#[cfg(test)]
mod tests {
    use aftercart_runtime::Event as _;
    use prometheus::Registry;

    use super::*;

    fn value(registry: &Registry, name: &str, label: &str) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| m.get_label().iter().any(|l| l.value() == label))
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[test]
    fn emitting_an_event_moves_its_counter() {
        let registry = Registry::new();
        let metrics = LoopMetrics::register("t_", &registry, "partitions", &["orders"]).unwrap();
        MemberFenced { reason: "lost" }.emit(&metrics);
        RecordWithoutShop {
            family: "orders",
            partition: 0,
            offset: 7,
        }
        .emit(&metrics);
        let request = aftercart_shopify::privacy::DataRequest::default();
        let report =
            aftercart_shopify::privacy::DataRequestReport::new("t", "s", &request, 0, vec![]);
        DataRequestAnswered { report: &report }.emit(&metrics);
        assert_eq!(value(&registry, "t_fenced_total", "lost"), 1.0);
        let answered = registry
            .gather()
            .iter()
            .find(|f| f.name() == "t_data_requests_answered_total")
            .map(|f| f.get_metric()[0].get_counter().get_value());
        assert_eq!(answered, Some(1.0));
        assert_eq!(value(&registry, "t_records_failed_total", "no_shop"), 1.0);
    }

    /// A record without a shop is counted under a known reason: its series starts at zero for
    /// every family, as the decode failures' do, so `increase()` sees the first one.
    #[test]
    fn a_record_without_a_shop_is_counted_from_zero() {
        let registry = Registry::new();
        LoopMetrics::register("t_", &registry, "partitions", &["orders", "carts"]).unwrap();
        let families = registry.gather();
        let failed = families
            .iter()
            .find(|f| f.name() == "t_records_failed_total")
            .expect("the failure counter is served");
        for family in ["orders", "carts"] {
            let at_zero = failed.get_metric().iter().any(|sample| {
                let labels: Vec<(&str, &str)> = sample
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                labels.contains(&("topic", family))
                    && labels.contains(&("reason", RecordWithoutShop::REASON))
                    && sample.get_counter().get_value() == 0.0
            });
            assert!(
                at_zero,
                "{family}/{} is absent at start",
                RecordWithoutShop::REASON
            );
        }
    }
}

//! Registration that also describes: every metric a process registers, with its type, help and
//! label names, so the metrics reference (`aftercart docs`) is generated from the code itself.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::Registry;

/// One metric as the reference shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: String,
    pub kind: &'static str,
    pub help: String,
    pub labels: Vec<String>,
}

/// Every metric registered through [`register`] in this process, by name. A registry cannot
/// list what it holds (it gathers only families with at least one child), hence this record.
static CATALOG: Mutex<BTreeMap<String, Described>> = Mutex::new(BTreeMap::new());

/// Registers `metric` on `registry` and records its description in the catalog.
pub fn register<C>(registry: &Registry, metric: &C) -> prometheus::Result<()>
where
    C: Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    let labels_by_name: BTreeMap<&str, &Vec<String>> = metric
        .desc()
        .into_iter()
        .map(|desc| (desc.fq_name.as_str(), &desc.variable_labels))
        .collect();
    let mut catalog = CATALOG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for family in metric.collect() {
        let name = family.name().to_string();
        let labels = labels_by_name
            .get(name.as_str())
            .map(|labels| labels.to_vec())
            .unwrap_or_default();
        catalog.insert(
            name.clone(),
            Described {
                name,
                kind: kind_name(family.get_field_type()),
                help: family.help().to_string(),
                labels,
            },
        );
    }
    Ok(())
}

/// Everything registered so far in this process, sorted by name.
pub fn described() -> Vec<Described> {
    let catalog = CATALOG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    catalog.values().cloned().collect()
}

fn kind_name(kind: MetricType) -> &'static str {
    match kind {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

    use super::*;

    #[test]
    fn a_labelled_metric_without_children_is_described_with_its_labels() {
        let registry = Registry::new();
        let counter = IntCounterVec::new(
            Opts::new("catalog_test_refusals_total", "Refusals, by reason."),
            &["reason"],
        )
        .unwrap();
        register(&registry, &counter).unwrap();
        assert!(
            registry.gather().is_empty(),
            "no child yet: the registry shows nothing"
        );
        let described = described();
        let entry = described
            .iter()
            .find(|d| d.name == "catalog_test_refusals_total")
            .expect("described");
        assert_eq!(entry.kind, "counter");
        assert_eq!(entry.help, "Refusals, by reason.");
        assert_eq!(entry.labels, vec!["reason".to_string()]);
    }

    #[test]
    fn a_histogram_is_described_as_one_family() {
        let registry = Registry::new();
        let histogram = HistogramVec::new(
            HistogramOpts::new("catalog_test_duration_seconds", "Durations."),
            &["destination"],
        )
        .unwrap();
        register(&registry, &histogram).unwrap();
        let entry = described()
            .into_iter()
            .find(|d| d.name == "catalog_test_duration_seconds")
            .expect("described");
        assert_eq!(entry.kind, "histogram");
    }

    #[test]
    fn a_second_registration_on_one_registry_is_refused() {
        let registry = Registry::new();
        let counter =
            IntCounterVec::new(Opts::new("catalog_test_twice_total", "Twice."), &["x"]).unwrap();
        register(&registry, &counter).unwrap();
        assert!(register(&registry, &counter).is_err());
    }
}

//! Test harness for aftercart's integration tests: real Kafka-protocol brokers (librdkafka's
//! mock cluster in process, or a Tansu broker process), exact topic reads, an HTTP client, schema
//! validation, services started on `127.0.0.1:0`, and for the fault suite the real binary as a
//! process (signals, restarts), a load client and the books of sent versus found in Kafka.

pub mod abandonment;
pub mod accounting;
pub mod audiences;
pub mod broker;
pub mod data_requests;
pub mod delivery;
pub mod front;
pub mod http;
pub mod ingress;
pub mod journey;
pub mod load;
pub mod nudges;
pub mod process;
pub mod receiver;
pub mod records;
pub mod referrals;
pub mod sasl;
pub mod schemas;
pub mod scratch;
pub mod service;
pub mod shopify_admin;
pub mod test_files;
pub mod tls;

pub use accounting::Accounting;
pub use broker::Broker;
pub use records::{count_records, read_topic, read_topic_with, watermarks, Record};
pub use scratch::scratch;

/// Routes the services' logs to the test output when AFTERCART_TEST_LOG is set (e.g. `debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("AFTERCART_TEST_LOG") {
        aftercart_runtime::telemetry::init(aftercart_runtime::telemetry::LogFormat::Text, &filter);
    }
}

/// The value of one series in Prometheus text (`name{labels}`), 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|value| value.trim().parse().expect("numeric sample"))
        .unwrap_or(0.0)
}

/// Awaits a service task for at most 30 s; a hang or a panic fails the test with `what`.
pub async fn join_within<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 30 s"))
        .unwrap_or_else(|e| panic!("{what} panicked: {e}"))
}

/// A fresh topic prefix, so every test has its own topics (and consumer groups).
pub fn unique_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until `read(series)` gives `expected`, or panics after 10 s with the last value. For
/// counters a service bumps once the broker acknowledged a write: a test that has already read
/// that record can get there first.
pub async fn settles_at(series: &str, expected: f64, read: impl Fn(&str) -> f64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let value = read(series);
        if value == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {value}, expected {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Declares a scenario once and runs it against each broker: `broker_tests!(name);` expands to
/// `mock::name` and `tansu::name`, calling `scenarios::name(&Broker)`.
#[macro_export]
macro_rules! broker_tests {
    ($($name:ident),+ $(,)?) => {
        mod mock {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let broker = $crate::Broker::mock();
                    super::scenarios::$name(&broker).await;
                }
            )+
        }
        mod tansu {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(broker) = $crate::Broker::tansu().await else { return };
                    super::scenarios::$name(&broker).await;
                }
            )+
        }
    };
}

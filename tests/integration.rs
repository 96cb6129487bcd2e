//! The cross-service integration tests as one test binary: each file is a module here, so the
//! suite links once instead of once per file (every binary links rdkafka, the services and the
//! harness). Run one file with its module path as the filter, e.g.
//! `cargo test -p aftercart-tests --test integration ingress::`.

#[path = "abandonment.rs"]
mod abandonment;
#[path = "audiences.rs"]
mod audiences;
#[path = "delivery.rs"]
mod delivery;
#[path = "ingress.rs"]
mod ingress;
#[path = "journey.rs"]
mod journey;
#[path = "kafka_security.rs"]
mod kafka_security;
#[path = "nudges.rs"]
mod nudges;
#[path = "referrals.rs"]
mod referrals;
#[path = "schemas.rs"]
mod schemas;

/// This package has no auto-discovered tests: a test file not declared above would never compile.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    aftercart_tests::test_files::assert_each_is_a_module(
        env!("CARGO_MANIFEST_DIR"),
        &["integration.rs"],
    );
}

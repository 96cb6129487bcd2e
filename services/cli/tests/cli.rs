//! The `aftercart` executable's tests as one test binary (the fault suite is `faults.rs`): each
//! file is a module here, so they link once. Run one with its module path as the filter, e.g.
//! `cargo test -p aftercart --test cli privacy::`.

#[path = "binary.rs"]
mod binary;
#[path = "privacy.rs"]
mod privacy;

/// This package's tests are not auto-discovered: a test file that neither this binary nor
/// `faults.rs` declares would never compile.
#[test]
fn every_test_file_is_a_module_of_a_test_binary() {
    aftercart_tests::test_files::assert_each_is_a_module(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests"),
        &["cli.rs", "faults.rs"],
    );
}

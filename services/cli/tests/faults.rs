//! The fault suite (`make test-faults`) as one test binary: every test that needs a broker is
//! `#[ignore]`d (the books' own checks run with the rest), so it runs only with `cargo test -p aftercart --test faults -- --ignored --nocapture
//! --test-threads=1`; one part alone with its module path as the filter, e.g. `faults_flood::`.

#[path = "faults_consumers.rs"]
mod faults_consumers;
#[path = "faults_flood.rs"]
mod faults_flood;
#[path = "faults_ingress.rs"]
mod faults_ingress;

//! The `<prefix>build_info{version}` gauge every service exports (always 1).

use prometheus::{IntGaugeVec, Opts, Registry};

/// Registers `<prefix>build_info` labelled with the workspace version (all crates share it).
pub fn register(prefix: &str, registry: &Registry) -> prometheus::Result<()> {
    let build_info = IntGaugeVec::new(
        Opts::new(
            format!("{prefix}build_info"),
            "Always 1; labelled with the running version.",
        ),
        &["version"],
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    crate::metrics_catalog::register(registry, &build_info)
}

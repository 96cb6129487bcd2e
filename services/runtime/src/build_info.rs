//! The `<prefix>build_info{version, allocator}` gauge every service exports (always 1).

use prometheus::{IntGaugeVec, Opts, Registry};

/// Registers `<prefix>build_info` labelled with the workspace version (all crates share it) and
/// the memory allocator the process runs with (`mimalloc` or `system`, chosen per service by
/// `aftercart-allocator`; `unknown` in a process whose global allocator is another).
pub fn register(prefix: &str, registry: &Registry) -> prometheus::Result<()> {
    let build_info = IntGaugeVec::new(
        Opts::new(
            format!("{prefix}build_info"),
            "Always 1; labelled with the running version and memory allocator.",
        ),
        &["version", "allocator"],
    )?;
    let allocator = aftercart_allocator::in_use().map_or("unknown", |choice| choice.name());
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), allocator])
        .set(1);
    crate::metrics_catalog::register(registry, &build_info)
}

//! The check that keeps a one-binary test suite whole: every test file in a directory is a
//! `#[path]` module of one of the binaries' root files, so a new file cannot be silently skipped.

use std::collections::BTreeSet;
use std::path::Path;

/// Panics naming every `*.rs` file in `dir` that none of the `roots` (file names in `dir`, which
/// are not checked themselves) declares with `#[path = "<file>"]`.
pub fn assert_each_is_a_module(dir: &str, roots: &[&str]) {
    let dir = Path::new(dir);
    let mut declared = BTreeSet::new();
    for root in roots {
        let source = std::fs::read_to_string(dir.join(root))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.join(root).display()));
        declared.extend(source.lines().filter_map(|line| {
            let path = line.trim().strip_prefix("#[path = \"")?;
            Some(path.strip_suffix("\"]")?.to_string())
        }));
    }
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let missing: Vec<String> = entries
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".rs") && !roots.contains(&name.as_str()))
        .filter(|name| !declared.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "test files in {} that no test binary compiles (add `#[path = \"<file>\"] mod <name>;` \
         to one of {roots:?}): {missing:?}",
        dir.display()
    );
}

//! Where tests keep their files (spools, exported files, keys, certificates, logs): one
//! directory per test process under the system temp directory. The directories of test processes
//! that are no longer running are removed when the next one starts, so the suite leaves at most
//! one run's files behind instead of thousands of spools.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `<temp>/aftercart-tests/<this process's id>/<name>`: a path of this test process's own. Its
/// parent exists; callers create the directory or file they need.
pub fn scratch(name: &str) -> PathBuf {
    process_dir().join(name)
}

fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join("aftercart-tests");
        sweep_exited(&root);
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("the test process's scratch directory");
        dir
    })
}

/// Removes the directories of test processes that have exited. Only where `/proc` tells which
/// processes run (elsewhere nothing is removed rather than another running suite's files).
/// Errors are ignored: two test processes may sweep at once.
fn sweep_exited(root: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

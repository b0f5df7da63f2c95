//! What more than one module of the broker's tests needs.

use std::path::{Path, PathBuf};

/// The shared corpus (`EPHEMERA_CORPUS`, else `../shared/corpus`); under CI a missing corpus is a
/// failure, elsewhere the caller skips.
pub(crate) fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("EPHEMERA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    if dir.join("MANIFEST.json").is_file() {
        return Some(dir);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false")),
        "corpus missing at {} (CI=true)",
        dir.display()
    );
    eprintln!("corpus not found at {}; skipped", dir.display());
    None
}

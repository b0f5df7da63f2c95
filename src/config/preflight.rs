//! What `serve` would refuse beyond the config's own text: key files that cannot be read or
//! parsed, an audit log or state file that cannot be written. `check` and `serve` both run it,
//! so `check` says ok only to what `serve` starts with, and both report every problem at once.
//! Nothing is created: writability is tried with a file of our own that is removed at once.

use super::{Config, StateBackend};
use crate::minting::jwt::BrokerSigner;
use std::path::Path;

impl Config {
    /// Every problem `serve` would meet opening this config's files, each naming its key.
    pub fn preflight(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Some(p) = &self.server.signing_key_file
            && let Err(e) = BrokerSigner::from_pem_file(p)
        {
            errs.push(format!("server.signing_key_file: {e}"));
        }
        for (i, p) in self.server.publish_key_files.iter().enumerate() {
            if let Err(e) = BrokerSigner::from_pem_file(p) {
                errs.push(format!("server.publish_key_files[{i}]: {e}"));
            }
        }
        if let Err(e) = writable(&self.audit_path) {
            errs.push(format!("audit.path: {}: {e}", self.audit_path.display()));
        }
        if let StateBackend::File { path, .. } = &self.state
            && let Err(e) = writable(path)
        {
            errs.push(format!("state.path: {}: {e}", path.display()));
        }
        errs
    }
}

/// Can a file be written at `path`? An existing one is opened for appending (not created, not
/// changed); a new one's directory must take a file (one of ours, removed at once).
fn writable(path: &Path) -> Result<(), String> {
    if path.exists() {
        return std::fs::OpenOptions::new().append(true).open(path).map(|_| ()).map_err(|e| e.to_string());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("its directory {} does not exist", dir.display()));
    }
    let probe = dir.join(format!(".ephemera-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("its directory {} cannot take a new file ({e})", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

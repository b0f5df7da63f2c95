//! The audit log: append-only JSON Lines, one record per decision, hash-chained (each record
//! carries the SHA-256 of the line before it, so `ephemera audit verify` detects an edited,
//! dropped or reordered line). An allow record is on disk (`fdatasync`) before any credential
//! leaves the broker; if it cannot be written, no credential is returned.
//! Records never hold a token, a signature or a key: a minted credential appears as its `jti`
//! and SHA-256 only.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The credential part of an allow record.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialRecord {
    pub kind: &'static str,
    pub jti: String,
    pub expires_at: i64,
}

/// One decision.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditRecord {
    pub time: String,
    pub ts: i64,
    pub request_id: String,
    pub decision_id: String,
    /// The config (policy) version in force.
    pub policy_version: String,
    /// `allow`, `deny`, or `mint_failed` (allowed and audited, but the credential could not be
    /// made: none was returned).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assertion_expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log `{path}` cannot be written: {cause}")]
    Write { path: String, cause: String },
}

#[derive(Debug)]
struct Inner {
    file: File,
    prev: String,
}

/// The audit sink.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    ephemera_providers::verify::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// The `prev` of the first record in a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Serialize)]
struct Chained<'a> {
    #[serde(flatten)]
    record: &'a AuditRecord,
    prev: &'a str,
}

impl AuditLog {
    /// Opens (or creates) the log for appending and picks up its hash chain.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let prev = match File::open(path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .last()
                .map_or_else(|| GENESIS.to_owned(), |l| sha256_hex(l.as_bytes())),
            Err(_) => GENESIS.to_owned(),
        };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog { path: path.to_path_buf(), inner: Arc::new(Mutex::new(Inner { file, prev })) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `rec`; with `durable`, returns only once it is on disk.
    pub async fn append(&self, rec: AuditRecord, durable: bool) -> Result<(), AuditError> {
        let inner = self.inner.clone();
        let path = self.path.display().to_string();
        let err = move |cause: String| AuditError::Write { path: path.clone(), cause };
        tokio::task::spawn_blocking(move || {
            let mut g = inner.lock().map_err(|_| "audit lock poisoned".to_owned())?;
            let line = serde_json::to_string(&Chained { record: &rec, prev: &g.prev }).map_err(|e| e.to_string())?;
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            g.file.write_all(&buf).map_err(|e| e.to_string())?;
            if durable {
                g.file.sync_data().map_err(|e| e.to_string())?;
            }
            g.prev = sha256_hex(line.as_bytes());
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(err)
    }

    /// Can the log be written? (for readiness)
    pub fn ready(&self) -> bool {
        self.inner.lock().map(|g| g.file.metadata().is_ok()).unwrap_or(false)
    }
}

/// Checks a log's hash chain; returns the number of records, or the first broken line.
pub fn verify_chain(path: &Path) -> Result<usize, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut prev = GENESIS.to_owned();
    let mut n = 0;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
        if v.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
            return Err(format!(
                "line {}: hash chain broken (a line before it was changed, removed or reordered)",
                i + 1
            ));
        }
        prev = sha256_hex(line.as_bytes());
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chain_detects_edits() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        for d in ["allow", "deny", "deny"] {
            log.append(AuditRecord { decision: d, ..Default::default() }, true).await.unwrap_or_else(|e| panic!("{e}"));
        }
        // reopening continues the chain
        let log = AuditLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        log.append(AuditRecord { decision: "allow", ..Default::default() }, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(verify_chain(&path), Ok(4));
        let text = std::fs::read_to_string(&path).unwrap_or_default().replacen("\"deny\"", "\"allow\"", 1);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        assert!(verify_chain(&path).is_err_and(|e| e.contains("line 3")));
    }
}

//! The audit log: append-only JSON Lines, one record per decision, hash-chained (each record
//! carries the SHA-256 of the line before it) with a head file beside it (`FILE.head`: the number
//! of records and the hash of the last, rewritten after every record), so `ephemera audit verify`
//! detects an edited, dropped or reordered line, the last one included. Whoever can rewrite both
//! files can still forge a consistent pair: ship the log to an append-only store for that.
//! An allow record is on disk (`fdatasync`, log then head) before any credential leaves the
//! broker; if it cannot be written, no credential is returned. One writer thread does the writing
//! and commits in groups: records of concurrent exchanges share one `fdatasync`. Records never hold a token, a
//! signature or a key: a credential appears as its kind, `jti` (grant id) and expiry.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The credential part of an allow record.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialRecord {
    pub kind: &'static str,
    pub jti: String,
    pub expires_at: i64,
}

/// What an audit record records (serialised as `allow`, `deny`, `mint_failed`, `revoke`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A credential was allowed; the record is durable before the credential exists.
    Allow,
    /// Refused: the reason says why; nothing left the broker.
    #[default]
    Deny,
    /// Allowed and audited, but the credential could not be made: none was returned.
    MintFailed,
    /// A task, credential, subject, role or issuer was revoked.
    Revoke,
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
    /// What was decided.
    pub decision: Outcome,
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
    /// The evidence could be replayed (an EC2 instance identity document).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log `{path}` cannot be written: {cause}")]
    Write { path: String, cause: String },
}

#[derive(Debug)]
struct Inner {
    file: File,
    head: File,
    prev: String,
    count: u64,
}

/// One record waiting for the writer, and who to tell when it is written.
struct Job {
    rec: AuditRecord,
    durable: bool,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Most records waiting for the writer; past it, exchanges wait (back-pressure, never an
/// unbounded queue).
const QUEUE: usize = 1024;
/// Most records written (and fsynced) together.
const BATCH: usize = 256;

/// The audit sink. Records go to one writer thread, which writes whatever is waiting in one
/// `write` and, when any of them must be durable, one `fdatasync` (group commit): concurrent
/// exchanges share the cost of the disk flush, and each is answered only once its own record is
/// on disk.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    tx: tokio::sync::mpsc::Sender<Job>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("durable", &self.durable).finish_non_exhaustive()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ephemera_providers::verify::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// The `prev` of the first record in a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `FILE.head` beside the log.
pub fn head_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

/// Fixed width, so it is rewritten in place.
fn head_line(count: u64, hash: &str) -> String {
    format!("{count:020} {hash}\n")
}

#[derive(Serialize)]
struct Chained<'a> {
    #[serde(flatten)]
    record: &'a AuditRecord,
    prev: &'a str,
}

impl Inner {
    /// Writes a batch: one write, one flush if any record must be durable, then the head. On
    /// failure the chain does not advance.
    fn write_batch(&mut self, jobs: &[Job]) -> Result<(), String> {
        let (mut prev, mut count) = (self.prev.clone(), self.count);
        let mut buf = Vec::new();
        for j in jobs {
            let line = serde_json::to_string(&Chained { record: &j.rec, prev: &prev }).map_err(|e| e.to_string())?;
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            prev = sha256_hex(line.as_bytes());
            count += 1;
        }
        let durable = jobs.iter().any(|j| j.durable);
        self.file.write_all(&buf).map_err(|e| e.to_string())?;
        if durable {
            self.file.sync_data().map_err(|e| e.to_string())?;
        }
        std::os::unix::fs::FileExt::write_at(&self.head, head_line(count, &prev).as_bytes(), 0)
            .map_err(|e| e.to_string())?;
        if durable {
            self.head.sync_data().map_err(|e| e.to_string())?;
        }
        (self.prev, self.count) = (prev, count);
        Ok(())
    }
}

/// Below this many waiting records the writer yields once before writing (see [`writer`]).
const GATHER: usize = 8;

/// Moves the records already waiting into `jobs`, up to [`BATCH`].
fn take_waiting(rx: &mut tokio::sync::mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < BATCH {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

fn writer(mut inner: Inner, mut rx: tokio::sync::mpsc::Receiver<Job>, healthy: Arc<std::sync::atomic::AtomicBool>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        take_waiting(&mut rx, &mut jobs);
        // Few waiting: give the exchanges in flight one turn of the CPU first (they are about to
        // queue their records), so a group is several records rather than one wake-up of this
        // thread per record. On an idle core the yield returns at once.
        if jobs.len() < GATHER {
            std::thread::yield_now();
            take_waiting(&mut rx, &mut jobs);
        }
        let result = inner.write_batch(&jobs);
        healthy.store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        for j in jobs {
            let _ = j.done.send(result.clone());
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the log for appending, picks up its hash chain, and starts its writer.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let (mut prev, mut count) = (GENESIS.to_owned(), 0u64);
        // The head file says where the chain stands without reading the whole log; without one, a
        // regular log file is scanned (never a device or pipe: that read might not end).
        let head = std::fs::read_to_string(head_path(path)).ok().and_then(|h| {
            let (n, hash) = h.trim().split_once(' ')?;
            (hash.len() == 64).then(|| (hash.to_owned(), n.parse::<u64>().ok()))
        });
        match head {
            Some((hash, Some(n))) => (prev, count) = (hash, n),
            _ => {
                if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
                    for line in BufReader::new(File::open(path)?).lines() {
                        prev = sha256_hex(line?.as_bytes());
                        count += 1;
                    }
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let head = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(head_path(path))?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let inner = Inner { file, head, prev, count };
        let h = healthy.clone();
        std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer(inner, rx, h))?;
        Ok(AuditLog { path: path.to_path_buf(), tx, healthy })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `rec`; with `durable`, returns only once it is on disk.
    pub async fn append(&self, rec: AuditRecord, durable: bool) -> Result<(), AuditError> {
        let err = |cause: String| AuditError::Write { path: self.path.display().to_string(), cause };
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx.send(Job { rec, durable, done }).await.map_err(|_| err("the audit writer stopped".into()))?;
        wait.await.map_err(|_| err("the audit writer stopped".into()))?.map_err(err)
    }

    /// Did the last write succeed, and is the writer running? (for readiness)
    pub fn ready(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed) && !self.tx.is_closed()
    }
}

/// Checks a log's hash chain and head; returns the number of records, or what is broken.
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
    let head_file = head_path(path);
    let head = std::fs::read_to_string(&head_file).map_err(|e| {
        format!("head file {}: {e}: cannot tell whether the last records were changed or removed", head_file.display())
    })?;
    if head != head_line(n as u64, &prev) {
        let named: u64 = head.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0);
        return Err(format!(
            "the log ends at record {n} but its head names record {named} with another hash: the last record(s) were changed or removed"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_appends_share_flushes_and_keep_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    let rec =
                        AuditRecord { decision: Outcome::Allow, request_id: format!("r{i}"), ..Default::default() };
                    log.append(rec, true).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // every record is there, once, and the chain and head agree
        assert_eq!(verify_chain(&path), Ok(200));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ids: Vec<&str> =
            text.lines().map(|l| l.split("\"request_id\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 200);
        assert!(log.ready());
    }

    #[tokio::test]
    async fn chain_and_head_detect_edits_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for d in [Outcome::Allow, Outcome::Deny, Outcome::Deny] {
            log.append(AuditRecord { decision: d, ..Default::default() }, true).await.unwrap();
        }
        // reopening continues the chain and the head
        let log = AuditLog::open(&path).unwrap();
        log.append(AuditRecord { decision: Outcome::Allow, ..Default::default() }, true).await.unwrap();
        assert_eq!(verify_chain(&path), Ok(4));
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = original.lines().collect();
        // a record in the middle
        std::fs::write(&path, original.replacen("\"deny\"", "\"allow\"", 1)).unwrap();
        assert!(verify_chain(&path).is_err_and(|e| e.contains("line 3")));
        // the last record dropped
        std::fs::write(&path, format!("{}\n", lines[..3].join("\n"))).unwrap();
        assert!(verify_chain(&path).is_err_and(|e| e.contains("last record")));
        // the last record edited
        let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        edited[3] = edited[3].replace("\"allow\"", "\"deny\"");
        std::fs::write(&path, format!("{}\n", edited.join("\n"))).unwrap();
        assert!(verify_chain(&path).is_err_and(|e| e.contains("last record")));
        // the twin: the untouched log verifies
        std::fs::write(&path, &original).unwrap();
        assert_eq!(verify_chain(&path), Ok(4));
    }
}

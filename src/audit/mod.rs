//! The audit log: append-only JSON Lines, one record per decision, hash-chained (each record
//! carries the SHA-256 of the line before it) with a head file beside it (`FILE.head`: the number
//! of records and the hash of the last, rewritten after every record), so `ephemera audit verify`
//! detects an edited, dropped or reordered line, the last one included. Whoever can rewrite both
//! files can still forge a consistent pair: ship the log to an append-only store for that.
//! An allow record is on disk (`fdatasync` of the log; the head, an index, is flushed at most
//! once a second) before any credential leaves the broker; if it cannot be written, no credential
//! is returned. One writer thread does the writing and commits in groups: records of concurrent
//! exchanges share one `fdatasync`. Records never hold a token, a signature or a key: a
//! credential appears as its kind, `jti` (grant id) and expiry; a mark as its replay id.
//!
//! Faults never break the chain for good: opening reconciles the log with its head (a partial
//! last line is cut, a head left behind by a crash is rolled forward, a log that lost the head's
//! record refuses to open); a failed write is cut back before anything else is written; a log
//! deleted or rotated while serving is noticed at the next write and continued in a new file at
//! its path. The log and its head are regular files, never opened through a symlink.

pub mod activity;
mod sinks;

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
    /// A broker JWT's audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// An AWS session's name, when its role ends sessions on revoke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The replay mark an allow record's exchange made: the assertion's replay id (a SHA-256, never
/// the assertion) and until when it is kept. With the `file` state backend the log is the
/// write-ahead log of these marks: after a crash they are rebuilt from it ([`allowed_after`]).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReplayRecord {
    pub id: String,
    pub until: i64,
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
    /// The log was rotated: the first record of a new file, naming the file it continues.
    Rotate,
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
    /// The platform delivery (webhook) that ended a task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// The RFC 9396 authorization details granted (an allow record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
    /// The evidence could be replayed (an EC2 instance identity document).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayable: bool,
    /// An allow record's replay mark (made with the grant, in one step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log `{path}` cannot be written: {cause}")]
    Write { path: String, cause: String },
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    head: File,
    /// When the head was last flushed (it is rewritten after every batch, flushed at most every
    /// [`HEAD_FLUSH_EVERY`]).
    head_flushed: std::time::Instant,
    prev: String,
    count: u64,
    /// Where the log ends: every byte before it is a complete, chained record.
    len: u64,
}

/// One record waiting for the writer (`None`: rotate the log now), and who to tell when it is
/// written.
struct Job {
    rec: Option<AuditRecord>,
    durable: bool,
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// Where records go besides the file, and when the file is rotated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditOptions {
    /// Rotate once the file holds this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Rotate on SIGHUP too (for logrotate's `postrotate` or an operator).
    pub rotate_on_sighup: bool,
    /// Every record also as a line on stdout (container log collection; best effort).
    pub stdout: bool,
    /// Every record also to syslog (RFC 5424; best effort): `udp://HOST:PORT`,
    /// `tcp://HOST:PORT` (RFC 6587 octet counting) or `unix:///dev/log`.
    pub syslog: Option<String>,
}

/// Most records waiting for the writer; past it, exchanges wait (back-pressure, never an
/// unbounded queue).
const QUEUE: usize = 1024;
/// Longest the head file goes without a flush while records are written.
const HEAD_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// What the written records say of use (the writer reads each record once it is written).
    activity: Arc<activity::Activity>,
    /// `HASH@OFFSET` of the last record written (empty before the first): [`AuditLog::position`].
    position: Arc<arc_swap::ArcSwap<String>>,
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
    /// failure the chain does not advance and the file is cut back to where the batch began, so
    /// no torn line is left for the next record to be glued to (review C4, fault B5); until that
    /// cut succeeds, nothing else is written.
    /// Writes the jobs' records; the bytes written (every line), for the other sinks.
    fn write_batch(&mut self, jobs: &[Job]) -> Result<Vec<u8>, String> {
        self.follow_path()?;
        let (mut prev, mut count) = (self.prev.clone(), self.count);
        let mut buf = Vec::new();
        for rec in jobs.iter().filter_map(|j| j.rec.as_ref()) {
            let line = serde_json::to_string(&Chained { record: rec, prev: &prev }).map_err(|e| e.to_string())?;
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            prev = sha256_hex(line.as_bytes());
            count += 1;
        }
        let durable = jobs.iter().any(|j| j.durable);
        let syncing = std::time::Instant::now();
        let written = self.file.write_all(&buf).and_then(|()| if durable { self.file.sync_data() } else { Ok(()) });
        if durable {
            metrics::histogram!("ephemera_audit_fsync_duration_seconds").record(syncing.elapsed().as_secs_f64());
        }
        if let Err(e) = written {
            return Err(match self.file.set_len(self.len).and_then(|()| self.file.sync_data()) {
                Ok(()) => e.to_string(),
                Err(cut) => {
                    format!("{e}; the partial batch could not be cut back ({cut}): nothing more is written until it is")
                }
            });
        }
        std::os::unix::fs::FileExt::write_at(&self.head, head_line(count, &prev).as_bytes(), 0)
            .map_err(|e| e.to_string())?;
        // the head is an index of the log, not the record of evidence: the log is flushed above,
        // the head at most every HEAD_FLUSH_EVERY (one flush per batch, not two). After a power
        // loss it may be behind the log, which opening rolls forward (as after a crash between
        // the two); it is never ahead, being written after the log's flush.
        if durable && self.head_flushed.elapsed() >= HEAD_FLUSH_EVERY {
            self.head.sync_data().map_err(|e| e.to_string())?;
            self.head_flushed = std::time::Instant::now();
        }
        (self.prev, self.count, self.len) = (prev, count, self.len + buf.len() as u64);
        Ok(buf)
    }

    /// Rotation: the file is renamed `PATH.YYYYMMDDTHHMMSSZ` (names sort in chain order) and a
    /// new file begins at the path with a `rotate` record naming the file
    /// it continues and that file's last record and hash, so `ephemera audit verify OLD NEW`
    /// checks the chain across them. Returns the rotated file's path.
    fn rotate(&mut self) -> Result<(PathBuf, Vec<u8>), String> {
        // `PATH.20261203T185300Z` (then `-001`, `-002`… within one second): names sort in chain order
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        let stamp = crate::clock::rfc3339(now).replace(['-', ':'], "");
        let rotated = (0..1000)
            .map(|i| {
                let suffix = if i == 0 { String::new() } else { format!("-{i:03}") };
                PathBuf::from(format!("{}.{stamp}{suffix}", self.path.display()))
            })
            .find(|p| std::fs::symlink_metadata(p).is_err())
            .ok_or_else(|| "no free name to rotate to".to_owned())?;
        std::fs::rename(&self.path, &rotated).map_err(|e| e.to_string())?;
        sync_dir(&self.path).map_err(|e| e.to_string())?;
        let (count, prev) = (self.count, self.prev.clone());
        let mut fresh = open_inner(&self.path).map_err(|e| e.to_string())?;
        let name = rotated.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let marker = AuditRecord {
            time: crate::clock::rfc3339(now),
            ts: now,
            request_id: crate::ids::random_id(12).unwrap_or_default(),
            decision_id: crate::ids::random_id(12).unwrap_or_default(),
            decision: Outcome::Rotate,
            detail: Some(format!("continues `{name}`: record {count}, hash {prev}")),
            ..Default::default()
        };
        let done = None;
        let line = fresh.write_batch(&[Job { rec: Some(marker), durable: true, done }])?;
        *self = fresh;
        Ok((rotated, line))
    }

    /// The log at the path must still be the file being written: after a deletion or a rename
    /// (rotation) the records would go where no reader looks (fault B6). A replaced or missing
    /// file is opened afresh (a new chain, logged) before anything else is written; if that
    /// fails, the write fails.
    fn follow_path(&mut self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let open = self.file.metadata().map_err(|e| e.to_string())?;
        // also catches a torn tail that could not be cut before: the file's length is not ours
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|at| at.dev() == open.dev() && at.ino() == open.ino() && at.len() == self.len);
        if same {
            return Ok(());
        }
        if let Ok(at) = std::fs::symlink_metadata(&self.path)
            && at.dev() == open.dev()
            && at.ino() == open.ino()
        {
            if at.len() > self.len {
                // our file, longer than we wrote: a torn tail left by a failed cut
                self.file.set_len(self.len).and_then(|()| self.file.sync_data()).map_err(|e| e.to_string())?;
                return Ok(());
            }
            // shorter: another tool truncated it (logrotate's copytruncate); what it copied is
            // its own, and a new chain begins in the emptied file (never zeros in the gap)
            tracing::warn!(path = %self.path.display(), records = self.count, "the audit log was truncated by another tool (copytruncate); a new chain begins; rotate with audit.rotate_on_sighup instead");
            let fresh = open_inner(&self.path).map_err(|e| e.to_string())?;
            *self = fresh;
            return Ok(());
        }
        tracing::warn!(path = %self.path.display(), records = self.count, last = %self.prev, "the audit log was deleted or replaced (rotated); continuing in a new file at its path");
        let fresh = open_inner(&self.path).map_err(|e| e.to_string())?;
        *self = fresh;
        Ok(())
    }
}

/// Opens `path` for appending without following a symlink (review C13); a new file is `0600`.
fn open_nofollow(path: &Path, append: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    // the records name workloads and tasks: readable by the broker's user only (a new file)
    o.create(true).custom_flags(libc::O_NOFOLLOW).mode(0o600);
    if append {
        o.append(true).read(true);
    } else {
        o.truncate(false).read(true).write(true);
    }
    o.open(path)
}

/// Fsyncs the directory holding `path`, so a file just created there survives a power loss
/// (review S9).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// The byte offset just past the last newline of `file` (of length `len`).
fn complete_len(file: &File, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The last line of `file`, whose complete part is `len` bytes and ends in a newline (without it).
fn last_line(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    let start = complete_len(file, len - 1)?;
    let mut line = vec![0u8; (len - 1 - start) as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut line, start)?;
    Ok(line)
}

/// Reads the log and head at `path` and reconciles them (review C20, fault B1):
/// - a partial last line (a write cut short by a crash or a full disk, never acknowledged) is cut;
/// - a head one or more records behind the log, whose records chain from it (a crash between the
///   log's flush and the head's update) is rolled forward;
/// - a log that does not contain the head's record (edited, truncated) refuses to open: appending
///   to it would hide the break;
/// - a head without a log (rotated or deleted) starts a new chain, logged.
fn open_inner(path: &Path) -> std::io::Result<Inner> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let created = std::fs::symlink_metadata(path).is_err();
    let file = open_nofollow(path, true)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let head_file = head_path(path);
    let head_created = std::fs::symlink_metadata(&head_file).is_err();
    let head = open_nofollow(&head_file, false)?;
    if created || head_created {
        sync_dir(path)?;
    }
    let mut len = complete_len(&file, meta.len())?;
    if len < meta.len() {
        tracing::warn!(path = %path.display(), bytes = meta.len() - len, "the audit log ended in a partial record (never acknowledged); cut");
        file.set_len(len)?;
        file.sync_data()?;
    }
    let named = std::fs::read_to_string(&head_file).ok().and_then(|h| {
        let (n, hash) = h.trim().split_once(' ')?;
        Some((n.parse::<u64>().ok()?, hash.to_owned())).filter(|(_, h)| h.len() == 64)
    });
    // The common case, without reading the log: its last line is the head's record.
    if let Some((n, h)) = &named
        && len > 0
        && sha256_hex(&last_line(&file, len)?) == *h
    {
        let head_flushed = std::time::Instant::now();
        return Ok(Inner { path: path.to_path_buf(), file, head, head_flushed, prev: h.clone(), count: *n, len });
    }
    // Otherwise the chain as the log has it: every line's hash; the head's record must be one.
    let (mut prev, mut count) = (GENESIS.to_owned(), 0u64);
    let mut at_head: Option<(u64, String)> = None;
    if len > 0 {
        let mut reader = BufReader::new(File::open(path)?);
        let mut line = String::new();
        let mut offset = 0u64;
        while offset < len && reader.read_line(&mut line)? > 0 {
            offset += line.len() as u64;
            prev = sha256_hex(line.trim_end_matches('\n').as_bytes());
            count += 1;
            if named.as_ref().is_some_and(|(n, h)| *n == count && *h == prev) {
                at_head = Some((count, prev.clone()));
            }
            line.clear();
        }
        len = offset.min(len);
    }
    match (&named, at_head) {
        (None, _) => {}
        (Some(_), Some((n, _))) if n == count => {}
        (Some(_), Some((n, _))) => {
            tracing::warn!(path = %path.display(), behind = count - n, "the audit head was behind the log (a crash between the log's flush and the head's update); rolled forward");
        }
        (Some((n, h)), None) if count == 0 => {
            tracing::warn!(path = %path.display(), previous_records = n, previous_last = %h, "the audit log is new but its head names an earlier log (rotated or deleted); a new chain begins");
        }
        (Some((n, _)), None) => {
            return Err(bad(format!(
                "its head names record {n}, which the log does not hold as written: records were changed or removed; refusing to append (check it with `ephemera audit verify`)"
            )));
        }
    }
    std::os::unix::fs::FileExt::write_at(&head, head_line(count, &prev).as_bytes(), 0)?;
    head.set_len(head_line(count, &prev).len() as u64)?;
    head.sync_data()?;
    Ok(Inner { path: path.to_path_buf(), file, head, head_flushed: std::time::Instant::now(), prev, count, len })
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

fn writer(
    mut inner: Inner,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    activity: Arc<activity::Activity>,
    position: Arc<arc_swap::ArcSwap<String>>,
    options: AuditOptions,
) {
    // the copies go through a thread of their own: a sink that blocks (a syslog peer that does
    // not answer, a stdout pipe nobody reads) never holds an exchange; past its queue they are
    // dropped and counted
    let copies = (options.stdout || options.syslog.is_some()).then(|| sinks::spawn(&options));
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
        metrics::gauge!("ephemera_audit_queue_depth").set(rx.len() as f64);
        let (result, mut lines) = match inner.write_batch(&jobs) {
            Ok(lines) => (Ok(()), lines),
            Err(e) => (Err(e), Vec::new()),
        };
        let asked = jobs.iter().any(|j| j.rec.is_none());
        let mut rotated: Result<(), String> = Ok(());
        if result.is_ok() && (asked || options.rotate_bytes.is_some_and(|max| inner.len >= max)) {
            match inner.rotate() {
                Ok((old, marker)) => {
                    tracing::info!(rotated = %old.display(), "audit log rotated");
                    lines.extend_from_slice(&marker);
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit log rotation failed; writing on in the same file");
                    rotated = Err(e);
                }
            }
        }
        if inner.count > 0 && !position.load().starts_with(inner.prev.as_str()) {
            position.store(Arc::new(format!("{}@{}", inner.prev, inner.len)));
        }
        // health is the records' write; a failed rotation is told to whoever asked for it only
        healthy.store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        for j in &mut jobs {
            let answer = if j.rec.is_none() { result.clone().and(rotated.clone()) } else { result.clone() };
            if let Some(done) = j.done.take() {
                let _ = done.send(answer);
            }
        }
        // what the page shows of use, read off the written records after their callers are told
        if result.is_ok() {
            jobs.iter().filter_map(|j| j.rec.as_ref()).for_each(|r| activity.observe(r));
        }
        if let Some(tx) = &copies
            && !lines.is_empty()
            && tx.try_send(lines).is_err()
        {
            metrics::counter!("ephemera_audit_sink_errors_total", "sink" => "queue").increment(1);
        }
    }
    // closing: the head as written
    if let Err(e) = inner.head.sync_data() {
        tracing::warn!(error = %e, "the audit head could not be flushed at close");
    }
}

impl AuditLog {
    /// Opens (or creates) the log for appending, reconciles it with its head
    /// ([`open_inner`]), and starts its writer.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        Self::open_with(path, AuditOptions::default())
    }

    /// [`AuditLog::open`] with rotation and the other sinks.
    pub fn open_with(path: &Path, options: AuditOptions) -> std::io::Result<AuditLog> {
        let inner = open_inner(path)?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = healthy.clone();
        let activity = Arc::new(activity::Activity::default());
        activity.seed(&rotated_set(path));
        let a = activity.clone();
        let at = if inner.count > 0 { format!("{}@{}", inner.prev, inner.len) } else { String::new() };
        let position = Arc::new(arc_swap::ArcSwap::from_pointee(at));
        let p = position.clone();
        std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer(inner, rx, h, a, p, options))?;
        Ok(AuditLog { path: path.to_path_buf(), tx, healthy, activity, position })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the log is: `HASH@OFFSET`, the hash of the last record written and where its file
    /// ends after it (`None` while the file holds no record), for [`allowed_after`]. A record
    /// appended before this is read is at or before it.
    pub fn position(&self) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
        let position = self.position.clone();
        Arc::new(move || Some(position.load().as_str().to_owned()).filter(|p| !p.is_empty()))
    }

    /// Appends `rec`; with `durable`, returns only once it is on disk.
    pub async fn append(&self, rec: AuditRecord, durable: bool) -> Result<(), AuditError> {
        let err = |cause: String| AuditError::Write { path: self.path.display().to_string(), cause };
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { rec: Some(rec), durable, done: Some(done) })
            .await
            .map_err(|_| err("the audit writer stopped".into()))?;
        wait.await.map_err(|_| err("the audit writer stopped".into()))?.map_err(err)
    }

    /// The use this log records (the inventory page's denials and per-role use).
    pub fn activity(&self) -> &activity::Activity {
        &self.activity
    }

    /// Rotates the log now (SIGHUP): the file is renamed and a new one continues the chain.
    pub async fn rotate(&self) -> Result<(), AuditError> {
        let err = |cause: String| AuditError::Write { path: self.path.display().to_string(), cause };
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { rec: None, durable: true, done: Some(done) })
            .await
            .map_err(|_| err("the audit writer stopped".into()))?;
        wait.await.map_err(|_| err("the audit writer stopped".into()))?.map_err(err)
    }

    /// Did the last write succeed, and is the writer running? (for readiness)
    pub fn ready(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed) && !self.tx.is_closed()
    }
}

/// The revocations the log at `path` records (`revoked `KEY``), each with when it was made: the
/// durable copy the file state store re-asserts from when its own file was lost.
pub fn revocations(path: &Path) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    // the rotated files first, oldest first, then the file itself: a revocation made before a
    // rotation is re-asserted too
    for file in rotated_set(path) {
        let Ok(f) = File::open(&file) else { continue };
        read_revocations(f, &mut out);
    }
    out
}

/// What an allow record says of the grant it audits and the mark made with it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Allowed {
    pub ts: i64,
    pub replay: ReplayRecord,
    pub credential: AllowedCredential,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub task: String,
}

/// [`Allowed`]'s credential.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AllowedCredential {
    pub kind: String,
    pub jti: String,
    pub expires_at: i64,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
}

/// The allow records with a replay mark written after `position` ([`AuditLog::position`]:
/// `HASH@OFFSET`; a bare hash is looked for line by line), across the rotated set at `path`,
/// oldest first; `None` when no file holds that record (the log was moved or deleted by something
/// other than the broker's own rotation, or a rotated file after it was removed): the marks since
/// are then unknown.
///
/// The record is looked for at its offset first (the file's end when the position was read),
/// then line by line; only the files from the one holding it on are read.
pub fn allowed_after(path: &Path, position: &str) -> Option<Vec<Allowed>> {
    use std::io::{Seek, SeekFrom};
    let (hash, offset) = match position.split_once('@') {
        Some((h, o)) => (h, o.parse::<u64>().ok()),
        None => (position, None),
    };
    let files = rotated_set(path);
    // (the file's index, the byte after the record)
    let (first, start) = files.iter().enumerate().rev().find_map(|(i, file)| {
        let end = offset.filter(|end| ends_at(file, *end, hash)).or_else(|| line_end(file, hash))?;
        Some((i, end))
    })?;
    let mut out = Vec::new();
    for (i, file) in files.iter().enumerate().skip(first) {
        let mut f = File::open(file).ok()?;
        if i == first {
            f.seek(SeekFrom::Start(start)).ok()?;
        }
        let mut lines = BufReader::new(f).split(b'\n').map_while(Result::ok).peekable();
        // each file after the one holding the position continues the one before it (a file
        // of the set removed in between would hide its marks)
        if i > first {
            let before = files[i - 1].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let opening = lines.peek().and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok());
            let continues = opening.as_ref().is_some_and(|r| {
                r["decision"] == "rotate"
                    && r["detail"].as_str().is_some_and(|d| d.starts_with(&format!("continues `{before}`")))
            });
            if !continues {
                return None;
            }
        }
        // (a cheap look before the parse: most records are not allow records)
        let allow = br#""decision":"allow""#;
        out.extend(
            lines
                .filter(|line| line.windows(allow.len()).any(|w| w == allow))
                .filter_map(|line| serde_json::from_slice::<Allowed>(&line).ok()),
        );
    }
    Some(out)
}

/// Does the line of `file` that ends at byte `end` (its newline the byte before) hash to `hash`?
fn ends_at(file: &Path, end: u64, hash: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(file) else { return false };
    if !f.metadata().is_ok_and(|m| m.len() >= end) {
        return false;
    }
    let begin = end.saturating_sub(1 << 20);
    let mut window = Vec::new();
    if f.seek(SeekFrom::Start(begin)).is_err() || f.take(end - begin).read_to_end(&mut window).is_err() {
        return false;
    }
    let Some(w) = window.strip_suffix(b"\n") else { return false };
    let line = match w.iter().rposition(|b| *b == b'\n') {
        Some(at) => &w[at + 1..],
        None if begin == 0 => w,
        None => return false,
    };
    !line.is_empty() && sha256_hex(line) == hash
}

/// The byte after the line of `file` that hashes to `hash`, looked for line by line.
fn line_end(file: &Path, hash: &str) -> Option<u64> {
    let f = File::open(file).ok()?;
    let mut at = 0u64;
    for line in BufReader::new(f).split(b'\n').map_while(Result::ok) {
        at += line.len() as u64 + 1;
        if sha256_hex(&line) == hash {
            return Some(at);
        }
    }
    None
}

/// The files of a rotated log, oldest first: `PATH.YYYYMMDDTHHMMSSZ[-N]` then `PATH`.
pub fn rotated_set(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().map(|n| n.to_string_lossy().into_owned())) else {
        return vec![path.to_path_buf()];
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!("{name}.");
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().map(|n| n.to_string_lossy().into_owned()).is_some_and(|n| {
                n.strip_prefix(&prefix).is_some_and(|rest| {
                    rest.len() >= 16 && rest.as_bytes()[8] == b'T' && rest[..8].bytes().all(|b| b.is_ascii_digit())
                })
            })
        })
        .collect();
    rotated.sort();
    rotated.push(path.to_path_buf());
    rotated
}

fn read_revocations(f: File, out: &mut Vec<(String, i64)>) {
    for l in BufReader::new(f).lines().map_while(Result::ok).filter(|l| l.contains("\"decision\":\"revoke\"")) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else { continue };
        let (Some(detail), Some(ts)) = (v.get("detail").and_then(|d| d.as_str()), v.get("ts").and_then(|t| t.as_i64()))
        else {
            continue;
        };
        // a revocation an admin lifted later is not re-asserted
        if let Some(key) = detail.strip_prefix("removed revocation `").and_then(|r| r.strip_suffix('`')) {
            out.retain(|(k, _)| k != key);
            continue;
        }
        // `revoked `KEY``, after what ended it when something did (`task ended (…): revoked `KEY``)
        if let Some(key) = detail.split_once("revoked `").and_then(|(_, r)| r.strip_suffix('`')) {
            out.push((key.to_owned(), ts));
        }
    }
}

/// Checks a log's hash chain and head; returns the number of records, or what is broken.
pub fn verify_chain(path: &Path) -> Result<usize, String> {
    verify_file(path, true).map(|v| v.0)
}

/// Checks a rotated set, oldest first (`PATH.NNN…` files, then `PATH`): each file's chain, the
/// last file's head, and that each file after the first begins with the `rotate` record naming
/// the file before it, its last record and hash. Returns the records of the whole set.
pub fn verify_set(paths: &[PathBuf]) -> Result<usize, String> {
    let mut total = 0;
    let mut before: Option<(String, usize, String)> = None;
    for (i, path) in paths.iter().enumerate() {
        let last = i + 1 == paths.len();
        let (n, hash, first) = verify_file(path, last).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some((name, count, prev)) = &before {
            let want = format!("continues `{name}`: record {count}, hash {prev}");
            let is = first.as_ref().filter(|r| r["decision"] == "rotate").and_then(|r| r["detail"].as_str());
            if is != Some(want.as_str()) {
                return Err(format!(
                    "{}: does not continue {name} (its first record is not the rotate record naming that file's last record {count})",
                    path.display()
                ));
            }
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // a file's records are numbered from 1 in it; the rotate record names the file's own count
        before = Some((name, n, hash));
        total += n;
    }
    Ok(total)
}

/// One file's chain (from its first line); with `head`, its head file too. Its records, its last
/// hash, and its first record.
fn verify_file(path: &Path, check_head: bool) -> Result<(usize, String, Option<serde_json::Value>), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut first = None;
    let mut prev = GENESIS.to_owned();
    let mut n = 0;
    // the hash of each record by number (0: none yet), to tell a head that is behind from a
    // forged one; at most the last few thousand are kept
    let mut hashes: std::collections::HashMap<usize, String> = std::collections::HashMap::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
        if i == 0 {
            first = Some(v.clone());
        }
        if v.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
            return Err(format!(
                "line {}: hash chain broken (a line before it was changed, removed or reordered)",
                i + 1
            ));
        }
        prev = sha256_hex(line.as_bytes());
        n += 1;
        hashes.insert(n, prev.clone());
        hashes.remove(&n.saturating_sub(4096));
    }
    if !check_head {
        return Ok((n, prev, first));
    }
    let head_file = head_path(path);
    let head = std::fs::read_to_string(&head_file).map_err(|e| {
        format!("head file {}: {e}: cannot tell whether the last records were changed or removed", head_file.display())
    })?;
    if head != head_line(n as u64, &prev) {
        let named: u64 = head.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let named_hash = head.trim().split(' ').nth(1).unwrap_or_default();
        if named < n as u64 && hashes.get(&(named as usize)).is_some_and(|h| h == named_hash) {
            return Err(format!(
                "the head names record {named}, {} record(s) before the log's end: those chain from it but no head covers them (a crash between the log's flush and the head's update leaves this; the broker rolls the head forward when it next opens the log)",
                n as u64 - named
            ));
        }
        return Err(format!(
            "the log ends at record {n} but its head names record {named} with another hash: the last record(s) were changed or removed"
        ));
    }
    Ok((n, prev, first))
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
    async fn new_logs_and_heads_are_private_to_the_broker() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(AuditRecord { decision: Outcome::Allow, ..Default::default() }, true).await.unwrap();
        log.rotate().await.unwrap();
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let file = file.unwrap().path();
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        // the twin: a file that exists keeps the mode its owner gave it
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        drop(log);
        let _log = AuditLog::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
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

    fn rec(d: Outcome) -> AuditRecord {
        AuditRecord { decision: d, ..Default::default() }
    }

    /// A crash between the log's flush and the head's update leaves the head behind: `verify`
    /// says so (not "changed or removed"), and opening rolls the head forward so the chain goes
    /// on unbroken (review C20, fault B1). Twin: a head naming a record the log does not hold
    /// (the last record edited) refuses to open.
    #[tokio::test]
    async fn a_head_behind_the_log_is_rolled_forward_and_a_forged_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(rec(Outcome::Allow), true).await.unwrap();
        let head_after_one = std::fs::read(head_path(&path)).unwrap();
        log.append(rec(Outcome::Allow), true).await.unwrap();
        drop(log);
        std::fs::write(head_path(&path), &head_after_one).unwrap();
        assert!(
            verify_chain(&path).is_err_and(|e| e.contains("1 record(s) before the log's end")),
            "{:?}",
            verify_chain(&path)
        );
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(verify_chain(&path), Ok(2));
        log.append(rec(Outcome::Deny), true).await.unwrap();
        assert_eq!(verify_chain(&path), Ok(3));
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"deny\"", "\"allow\"", 1)).unwrap();
        let refused = AuditLog::open(&path).map(|_| ()).map_err(|e| e.to_string());
        assert!(refused.as_ref().is_err_and(|e| e.contains("refusing to append")), "{refused:?}");
    }

    /// A partial last line (a write cut short) is cut at open, and by the writer before its next
    /// batch if it appears while running: the next record starts on its own line (review C4,
    /// fault B5).
    #[tokio::test]
    async fn a_torn_tail_is_cut_before_anything_else_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(rec(Outcome::Allow), true).await.unwrap();
        let torn = || {
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(b"{\"time\":\"2026-12-03T00:00:00Z\",\"assertion_expires_a").unwrap();
        };
        torn();
        log.append(rec(Outcome::Allow), true).await.unwrap();
        assert_eq!(verify_chain(&path), Ok(2));
        drop(log);
        torn();
        let log = AuditLog::open(&path).unwrap();
        log.append(rec(Outcome::Deny), true).await.unwrap();
        assert_eq!(verify_chain(&path), Ok(3));
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
    }

    /// A log deleted or renamed (rotated) while serving is noticed at the next write: records
    /// go to a new file at the path, which verifies on its own (fault B6); the renamed one keeps
    /// what was written before.
    #[tokio::test]
    async fn a_deleted_or_rotated_log_is_followed_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(rec(Outcome::Allow), true).await.unwrap();
        std::fs::rename(&path, dir.path().join("r.jsonl.1")).unwrap();
        log.append(rec(Outcome::Allow), true).await.unwrap();
        assert_eq!(verify_chain(&path), Ok(1));
        assert_eq!(std::fs::read_to_string(dir.path().join("r.jsonl.1")).unwrap().lines().count(), 1);
        std::fs::remove_file(&path).unwrap();
        log.append(rec(Outcome::Deny), true).await.unwrap();
        log.append(rec(Outcome::Deny), true).await.unwrap();
        assert_eq!(verify_chain(&path), Ok(2));
        assert!(log.ready());
    }

    /// The log and its head are never opened through a symlink (review C13).
    #[test]
    fn a_symlinked_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim.txt");
        std::fs::write(&target, "precious").unwrap();
        let path = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(AuditLog::open(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, head_path(&path)).unwrap();
        assert!(AuditLog::open(&path).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    }

    /// The allow records with a mark after a position are read back, across a rotation; a log
    /// that no longer holds the position answers `None`.
    #[tokio::test]
    async fn the_marks_after_a_position_are_read_back_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let allow = |id: &str| AuditRecord {
            decision: Outcome::Allow,
            ts: 7,
            role: Some("r".into()),
            subject: Some("s".into()),
            credential: Some(CredentialRecord {
                kind: "jwt",
                jti: format!("g-{id}"),
                expires_at: 99,
                audience: Some("aud".into()),
                session: None,
            }),
            replay: Some(ReplayRecord { id: id.to_owned(), until: 50 }),
            ..Default::default()
        };
        let position = log.position();
        assert_eq!(position(), None, "no record yet");
        log.append(allow("a"), true).await.unwrap();
        let after_a = position().unwrap();
        let (hash, offset) = after_a.split_once('@').unwrap();
        assert_eq!(offset.parse::<u64>().unwrap(), std::fs::metadata(&path).unwrap().len(), "where the file ended");
        log.append(rec(Outcome::Deny), false).await.unwrap();
        log.append(AuditRecord { replay: None, ..allow("none") }, true).await.unwrap();
        log.append(allow("b"), true).await.unwrap();
        log.rotate().await.unwrap();
        log.append(allow("c"), true).await.unwrap();
        let ids =
            |from: &str| allowed_after(&path, from).map(|all| all.into_iter().map(|a| a.replay.id).collect::<Vec<_>>());
        assert_eq!(ids(&after_a), Some(vec!["b".to_owned(), "c".to_owned()]));
        assert_eq!(ids(&position().unwrap()), Some(vec![]), "the end: nothing after it");
        assert_eq!(ids(&"f".repeat(64)), None, "a position the log does not hold");
        // the record is found by its hash alone, or where an offset does not point to it
        assert_eq!(ids(hash), Some(vec!["b".to_owned(), "c".to_owned()]));
        assert_eq!(ids(&format!("{hash}@7")), Some(vec!["b".to_owned(), "c".to_owned()]));
        assert_eq!(ids(&format!("{}@{offset}", "f".repeat(64))), None);
        let c = &allowed_after(&path, &after_a).unwrap()[1];
        assert_eq!((c.credential.jti.as_str(), c.credential.audience.as_deref()), ("g-c", Some("aud")));
        assert_eq!((c.role.as_str(), c.subject.as_str(), c.ts, c.replay.until), ("r", "s", 7, 50));
        // a file of the set removed between the position and the end: its marks are unknown
        log.rotate().await.unwrap();
        let rotated = rotated_set(&path);
        assert_eq!(rotated.len(), 3);
        assert_eq!(ids(&after_a), Some(vec!["b".to_owned(), "c".to_owned()]), "twin: the set whole");
        std::fs::remove_file(&rotated[1]).unwrap();
        assert_eq!(ids(&after_a), None);
    }

    /// The revocations a log records are read back with when they were made (what the file
    /// state store re-asserts after losing its file); other records are not revocations.
    #[tokio::test]
    async fn revocations_are_read_back_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let revoke = |detail: &str, ts: i64| AuditRecord {
            decision: Outcome::Revoke,
            detail: Some(detail.to_owned()),
            ts,
            ..Default::default()
        };
        log.append(revoke("revoked `subject:gh:repo:acme/app`", 100), true).await.unwrap();
        log.append(AuditRecord { detail: Some("revoked `role:x`".into()), ..rec(Outcome::Deny) }, true).await.unwrap();
        log.append(revoke("flushed the cached keys of provider `gh`", 120), true).await.unwrap();
        log.append(revoke("revoked `task:gh:1/2/3`", 130), true).await.unwrap();
        log.append(revoke("task ended (github workflow_run completed): revoked `task:gh:4/5/6`", 140), true)
            .await
            .unwrap();
        log.append(revoke("revoked `role:oops`", 150), true).await.unwrap();
        log.append(revoke("removed revocation `role:oops`", 160), true).await.unwrap();
        assert_eq!(
            revocations(&path),
            vec![
                ("subject:gh:repo:acme/app".to_owned(), 100),
                ("task:gh:1/2/3".to_owned(), 130),
                ("task:gh:4/5/6".to_owned(), 140)
            ]
        );
    }

    /// Rotation renames the file and goes on in a new one whose first record names it: the set
    /// verifies, oldest first; a set with a file left out, or out of order, does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotated_set_verifies_across_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let log = AuditLog::open_with(&path, AuditOptions { rotate_bytes: Some(4096), ..Default::default() }).unwrap();
        let revoked = AuditRecord {
            decision: Outcome::Revoke,
            detail: Some("revoked `role:old`".into()),
            ts: 5,
            ..Default::default()
        };
        log.append(revoked, true).await.unwrap();
        for i in 0..60 {
            let rec = AuditRecord { decision: Outcome::Allow, request_id: format!("r{i:03}"), ..Default::default() };
            log.append(rec, true).await.unwrap();
        }
        log.rotate().await.unwrap();
        log.append(AuditRecord { decision: Outcome::Deny, ..Default::default() }, true).await.unwrap();
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with("r.jsonl.")
                    && !p.to_string_lossy().ends_with(".head")
            })
            .collect();
        rotated.sort();
        assert!(rotated.len() >= 2, "{rotated:?}");
        let mut set = rotated.clone();
        set.push(path.clone());
        let total = verify_set(&set).unwrap();
        // 62 records and one rotate record per new file
        assert_eq!(total, 62 + rotated.len());
        // a revocation made before the rotations is read back from the set (the file state store
        // re-asserts it after losing its file)
        assert_eq!(revocations(&path), vec![("role:old".to_owned(), 5)]);
        assert_eq!(rotated_set(&path), set);
        assert!(verify_chain(&path).is_ok(), "the current file verifies alone");
        let mut gap = set.clone();
        gap.remove(1);
        assert!(verify_set(&gap).is_err(), "a file left out");
        let mut swapped = set.clone();
        swapped.swap(0, 1);
        assert!(verify_set(&swapped).is_err(), "out of order");
    }

    /// logrotate's copytruncate empties the file under the writer: the next record begins a new
    /// chain in it, and no zeros fill the gap (the file verifies).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_truncated_by_another_tool_begins_a_new_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for _ in 0..3 {
            log.append(AuditRecord { decision: Outcome::Allow, ..Default::default() }, true).await.unwrap();
        }
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        log.append(AuditRecord { decision: Outcome::Deny, ..Default::default() }, true).await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.contains(&0), "no zeros in the file");
        assert_eq!(verify_chain(&path), Ok(1));
    }
}

//! Durable state for one replica: the default of `serve`. Used assertions (IID marks included),
//! outstanding nonces, revocations and the grant inventory survive a restart and a `kill -9`.
//!
//! - Every decision is taken by a [`MemoryStore`] in front (one lock, the same check-and-set as
//!   the memory backend, reads never touch the disk); every change it accepts is then flushed to
//!   the journal beside the redb file before the caller is answered, or, for a mark made with its
//!   grant, is named by the audit log's allow record (below). A mark is therefore durable before
//!   any credential that depends on it exists outside the broker.
//! - Writes go to one writer thread that appends whatever is waiting as one record to the
//!   journal beside the file and flushes it (group commit, as the audit log does): concurrent
//!   exchanges share the cost of the flush, and a mark costs its own bytes, not a B-tree's pages
//!   (`journal.rs`). Every [`CHECKPOINT_WRITES`] writes (or [`CHECKPOINT_BYTES`] of journal),
//!   and when the store closes, the journal is committed to the redb file in one transaction and
//!   begins again empty.
//! - The file holds `(until, kind + id) -> payload` rows, ordered by expiry: every checkpoint
//!   drops the expired rows at the front, and opening replays the journal into the file, then
//!   reloads the live rows into memory.
//! - With a [`Wal`] (the audit log, whenever the broker audits), a mark made with its grant (the
//!   exchange's `spend`) is not flushed by the store at all: the allow record that follows it is
//!   durable before any credential leaves, and names the mark and the grant. Such writes wait in
//!   memory for the next checkpoint, which stores the audit log's position with them; opening
//!   after a crash replays the allow records after that position. A log that no longer holds it
//!   (moved or deleted by something other than its own rotation) means the marks since are
//!   unknown: an epoch begins, as for a lost journal. One flush per exchange, not two.
//! - A write that cannot be made durable fails the operation (503, fail closed); what memory
//!   accepted stays in force until the process ends, which can only refuse more, never less.
//! - Lost state is not silently forgotten: a state file created while the audit log beside it
//!   already holds records means the previous state is gone (deleted, or a new disk); the store
//!   then starts an epoch, as the Redis backend does, and refuses assertions that may have been
//!   used before it (`replay_state_reset`). The epoch is kept in the file.

#[cfg(test)]
use super::Uses;
use super::journal::{self, Found, Journal};
use super::memory::MemoryStore;
use super::{Grant, Mark, Spend, StateError, StateFuture, StateStore};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The live rows: `(until, kind byte + id)` to the row's payload.
const LIVE: TableDefinition<(i64, &[u8]), &[u8]> = TableDefinition::new("live");
/// `epoch`: when this file's memory began, if it began after a loss.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// [`AUDIT`]: the audit log's position the file holds every mark of (with a [`Wal`]).
const WAL_AT: TableDefinition<&str, &str> = TableDefinition::new("wal");
const AUDIT: &str = "audit";

const USED: u8 = b'u';
const GRANT: u8 = b'g';
const REVOKED: u8 = b'r';
const NONCE: u8 = b'n';
/// Uses taken of a use-limited grant: one row per use, the id then `\0` and the count (u32, little
/// endian), so writes committed in any order leave the highest count.
const USES: u8 = b'c';
/// An outbox item: the payload is its JSON.
const OUTBOX: u8 = b'o';

/// redb's page cache, bytes.
const REDB_CACHE: usize = 16 << 20;
/// Most operations committed together.
const BATCH: usize = 512;
/// Writes the journal holds before they are committed to the redb file.
const CHECKPOINT_WRITES: usize = 8192;
/// Longest a write waits behind the audit log before a checkpoint commits it.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Journal bytes before a checkpoint: what it was written out to when it began.
const CHECKPOINT_BYTES: u64 = journal::PREALLOCATED as u64;
/// The `meta` key of the journal generation that continues the file (`journal.rs`).
const JOURNAL: &str = "journal";
/// The `meta` key that says the store was closed cleanly: the file holds everything, and a
/// missing journal lost nothing (a file copied while the broker was stopped).
const CLEAN: &str = "clean";

fn row(kind: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(kind);
    k.extend_from_slice(id);
    k
}

/// One change to make durable.
#[derive(Debug, Clone)]
pub(super) enum Write {
    Put { until: i64, key: Vec<u8>, value: Vec<u8> },
    Delete { until: i64, key: Vec<u8> },
}

struct Job {
    writes: Vec<Write>,
    now: i64,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The write-ahead log of the marks made with a grant: the audit log, whose allow record names
/// both and is durable before the credential leaves (`exchange/grant.rs`).
pub struct Wal {
    /// Where the log is now (`None`: it holds no record yet): a record appended before this is
    /// read is at or before it.
    pub position: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// The marks (replay id, until) and grants recorded after a position; `None` when the log
    /// no longer holds that position.
    pub after: WalAfter,
}

/// A mark rebuilt from a [`Wal`]: the replay id, until when, and the grant made with it.
pub type WalMark = (String, i64, Grant);
/// [`Wal::after`].
pub type WalAfter = Box<dyn FnOnce(&str) -> Option<Vec<WalMark>>>;

/// What the writer needs of a [`Wal`]: the position, and the writes waiting behind it.
struct Behind {
    position: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    waiting: Arc<Waiting>,
}

/// The writes waiting behind the log, and whether a mark may wait there: only once the file
/// holds a position in the log. A log without a record has no position a crash could be
/// replayed from (one moved away and one never written look the same), so until the writer has
/// stored one, marks are journaled.
#[derive(Default)]
struct Waiting {
    writes: Mutex<Vec<Write>>,
    ready: std::sync::atomic::AtomicBool,
}

/// The durable store. `Debug` names the file only.
pub struct FileStore {
    memory: MemoryStore,
    path: PathBuf,
    tx: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Did the last commit succeed? (readiness, without a commit of its own)
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// With a [`Wal`]: the marks made with a grant, until the next checkpoint.
    behind: Option<Arc<Waiting>>,
}

/// Closing waits for the writer to finish what it was given and release the file, so the same
/// file can be opened again at once (a restart in one process: tests).
impl Drop for FileStore {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("state file: {e}"))
}

impl FileStore {
    /// Opens (or creates) the state file at `path` and reloads its live entries as of `now`.
    /// `lost_if_new`: whether a new file means state was lost (the audit log already has
    /// records); the store then starts an epoch at `now` and re-asserts the revocations
    /// `revocations` gives (`(key, until)`, read from the audit log: review C5), so what was
    /// revoked stays revoked. With `wal`, marks made with a grant are written behind the audit
    /// log ([`Wal`]).
    pub fn open(
        path: &Path,
        max_entries: usize,
        now: i64,
        lost_if_new: bool,
        revocations: impl FnOnce() -> Vec<(String, i64)>,
        wal: Option<Wal>,
    ) -> Result<FileStore, String> {
        let existed = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        // a new store is readable by the broker's user only (redb would create it 0644)
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        // every read is answered by memory (the file is read once, here): redb's page cache
        // (1 GiB by default) would only hold pages already written, so it is kept small
        let db = redb::Builder::new()
            .set_cache_size(REDB_CACHE)
            .create(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let journal_path = journal::path_for(path);
        let mut epoch = None;
        let mut rows: Vec<(i64, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut wal_writes = Vec::new();
        let mut ready = false;
        let (wal_position, after) = match wal {
            Some(Wal { position, after }) => (Some(position), Some(after)),
            None => (None, None),
        };
        let generation;
        let journal_lost;
        {
            let txn = db.begin_write().map_err(|e| fail(&e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| fail(&e))?;
                // the journal generation that continues this file: 0 for a new file (or one
                // written before the journal existed, which needs none)
                let continued = meta.get(JOURNAL).map_err(|e| fail(&e))?.map(|g| g.value()).unwrap_or(0);
                let clean = meta.get(CLEAN).map_err(|e| fail(&e))?.is_some_and(|c| c.value() == 1);
                let found = journal::read(&journal_path, continued)?;
                // writes acknowledged since the last checkpoint are gone: as for a lost file
                let journal_gone = continued > 0 && !clean && matches!(found, Found::Missing | Found::Foreign);
                // the marks written behind the audit log since the last checkpoint
                let mut wal_at = txn.open_table(WAL_AT).map_err(|e| fail(&e))?;
                let stored = wal_at.get(AUDIT).map_err(|e| fail(&e))?.map(|p| p.value().to_owned());
                let mut behind_lost = false;
                if let Some(at) = stored.as_deref().filter(|_| !clean) {
                    match after.map(|after| after(at)) {
                        Some(Some(marks)) => {
                            tracing::warn!(path = %path.display(), marks = marks.len(), "the state file was not closed cleanly: the marks made since its last checkpoint were rebuilt from the audit log");
                            wal_writes = marks_writes(&marks, now).map_err(|e| fail(&e))?;
                        }
                        _ => {
                            tracing::warn!(path = %path.display(), "the state file was not closed cleanly and the audit log no longer holds the record its last checkpoint followed (moved or deleted): the marks made since are unknown");
                            behind_lost = true;
                        }
                    }
                }
                match wal_position.as_ref().and_then(|position| position()) {
                    Some(position) => {
                        wal_at.insert(AUDIT, position.as_str()).map_err(|e| fail(&e))?;
                        ready = true;
                    }
                    None => {
                        wal_at.remove(AUDIT).map_err(|e| fail(&e))?;
                    }
                }
                drop(wal_at);
                journal_lost = journal_gone || behind_lost;
                let lost = (!existed && lost_if_new) || journal_lost;
                if journal_gone {
                    tracing::warn!(path = %journal_path.display(), "the state file's journal is missing or not its own: what it held since the last checkpoint is lost");
                }
                if journal_lost {
                    meta.insert("epoch", now).map_err(|e| fail(&e))?;
                    epoch = Some(now);
                } else if let Some(e) = meta.get("epoch").map_err(|e| fail(&e))? {
                    epoch = Some(e.value());
                } else if lost {
                    meta.insert("epoch", now).map_err(|e| fail(&e))?;
                    epoch = Some(now);
                }
                generation = continued + 1;
                meta.insert(JOURNAL, generation).map_err(|e| fail(&e))?;
                meta.insert(CLEAN, 0).map_err(|e| fail(&e))?;
                let mut live = txn.open_table(LIVE).map_err(|e| fail(&e))?;
                if let Found::Records(writes) = &found {
                    apply(&mut live, writes).map_err(|e| fail(&e))?;
                }
                apply(&mut live, &wal_writes).map_err(|e| fail(&e))?;
                if lost {
                    let again = revocations();
                    tracing::warn!(path = %path.display(), revocations = again.len(), "revocations re-asserted from the audit log");
                    for (key, until) in again.iter().filter(|(_, until)| *until >= now) {
                        live.insert((*until, row(REVOKED, key.as_bytes()).as_slice()), &[][..])
                            .map_err(|e| fail(&e))?;
                    }
                }
                live.retain_in(..(now, &[][..]), |_, _| false).map_err(|e| fail(&e))?;
                for entry in live.iter().map_err(|e| fail(&e))? {
                    let (k, v) = entry.map_err(|e| fail(&e))?;
                    let (until, key) = k.value();
                    rows.push((until, key.to_vec(), v.value().to_vec()));
                }
            }
            txn.commit().map_err(|e| fail(&e))?;
        }
        // the file now holds what the journal held: a new, empty journal continues it
        let journal = Journal::create(&journal_path, generation)?;
        // (a lost journal said so above)
        if let Some(since) = epoch
            && !journal_lost
        {
            tracing::warn!(path = %path.display(), since, "the state file is new but the audit log is not: state was lost; assertions that may have been used before now are refused until they expire");
        }
        let memory = MemoryStore::with_epoch(max_entries, epoch);
        let load = |r: Result<(), StateError>| r.map_err(|e| fail(&e));
        for (until, key, value) in &rows {
            let Some((kind, id)) = key.split_first() else { continue };
            match *kind {
                USED => {
                    memory.mark_raw(id, *until, now).map_err(|e| fail(&e))?;
                }
                GRANT => {
                    if let Ok(grant) = serde_json::from_slice::<Grant>(value) {
                        load(memory.record_grant_now(&grant, now))?;
                    }
                }
                REVOKED => load(memory.revoke_now(&String::from_utf8_lossy(id), *until, now))?,
                USES if id.len() > 5 => {
                    let (grant, count) = id.split_at(id.len() - 5);
                    let taken = count[1..].try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
                    load(memory.uses_raw(&String::from_utf8_lossy(grant), taken, *until))?
                }
                OUTBOX => {
                    if let Ok(item) = serde_json::from_slice::<super::Outgoing>(value) {
                        load(memory.outbox_put_now(&item, now))?;
                    }
                }
                NONCE => load(memory.put_nonce_now(
                    &String::from_utf8_lossy(id),
                    &String::from_utf8_lossy(value),
                    *until,
                    now,
                ))?,
                _ => {}
            }
        }
        tracing::info!(path = %path.display(), live = rows.len(), "state file opened");
        let (tx, rx) = std::sync::mpsc::channel();
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = healthy.clone();
        let behind = wal_position.map(|position| Behind { position, waiting: Arc::default() });
        if let Some(b) = &behind {
            b.waiting.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
        }
        let waiting = behind.as_ref().map(|b| b.waiting.clone());
        let writer = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || writer(db, journal, rx, h, behind))
            .map_err(|e| e.to_string())?;
        Ok(FileStore {
            memory,
            path: path.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            writer: Some(writer),
            healthy,
            behind: waiting,
        })
    }

    /// Hands `job` to the writer.
    fn send(&self, job: Job) -> Result<(), StateError> {
        self.tx
            .lock()
            .map_err(|_| unavailable("writer lock poisoned"))?
            .as_ref()
            .ok_or_else(|| unavailable("the store is closed"))?
            .send(job)
            .map_err(|_| unavailable("the writer stopped"))
    }

    /// Makes `writes` durable; returns once they are committed.
    async fn persist(&self, writes: Vec<Write>, now: i64) -> Result<(), StateError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Job { writes, now, done })?;
        wait.await.map_err(|_| unavailable("the writer stopped"))?.map_err(unavailable)
    }

    /// Makes a fresh mark (and its grant) durable: with a grant and a [`Wal`], behind the audit
    /// log's allow record (the caller's), at the next checkpoint.
    async fn persist_mark(&self, id: &str, until: i64, now: i64, grant: Option<&Grant>) -> Result<(), StateError> {
        let mut writes = vec![mark_write(id, until)];
        let Some(g) = grant else { return self.persist(writes, now).await };
        writes.push(grant_write(g)?);
        let Some(behind) = self.behind.as_ref().filter(|b| b.ready.load(std::sync::atomic::Ordering::SeqCst)) else {
            return self.persist(writes, now).await;
        };
        let waiting = {
            let mut w = behind.writes.lock().map_err(|_| unavailable("writer lock poisoned"))?;
            w.extend(writes);
            w.len()
        };
        // enough for a checkpoint: the writer is told (again every 1,024, should it be busy)
        if waiting >= CHECKPOINT_WRITES && waiting % 1024 < 2 {
            let (done, _) = tokio::sync::oneshot::channel();
            self.send(Job { writes: Vec::new(), now, done })?;
        }
        Ok(())
    }
}

fn mark_write(id: &str, until: i64) -> Write {
    Write::Put { until, key: row(USED, &super::memory::used_key(id)), value: Vec::new() }
}

/// The writes of marks (replay id, until) and their grants, rebuilt from a [`Wal`]; the expired
/// ones are left out.
fn marks_writes(marks: &[WalMark], now: i64) -> Result<Vec<Write>, StateError> {
    let mut writes = Vec::with_capacity(marks.len() * 2);
    for (id, until, grant) in marks {
        if *until >= now {
            writes.push(mark_write(id, *until));
        }
        if grant.expires_at >= now {
            writes.push(grant_write(grant)?);
        }
    }
    Ok(writes)
}

/// Applies `writes` to the live table, in order.
fn apply(live: &mut redb::Table<(i64, &[u8]), &[u8]>, writes: &[Write]) -> Result<(), redb::StorageError> {
    for w in writes {
        match w {
            Write::Put { until, key, value } => {
                live.insert((*until, key.as_slice()), value.as_slice())?;
            }
            Write::Delete { until, key } => {
                live.remove((*until, key.as_slice()))?;
            }
        }
    }
    Ok(())
}

/// A checkpoint: commits `writes` (what the journal holds) to the file in one transaction, with
/// the next journal generation, then replaces the journal by an empty one of that generation.
/// `closing`: the last one, after which the file holds everything.
/// With `behind`, the writes waiting behind the audit log join `writes` first (they stay there
/// should the commit fail), and the file records the log's position read before they were taken.
fn checkpoint(
    db: &Database,
    journal: &mut Journal,
    writes: &mut Vec<Write>,
    behind: Option<&Behind>,
    now: i64,
    closing: bool,
) -> Result<(), String> {
    let next = journal.generation() + 1;
    // the position first: every mark whose allow record is at or before it was handed over
    // before its record was appended, so it is among the writes taken after
    let position = behind.and_then(|b| (b.position)());
    if let Some(b) = behind {
        writes.append(&mut *b.waiting.writes.lock().map_err(|_| "writer lock poisoned".to_owned())?);
    }
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        if let Some(position) = &position {
            let mut wal_at = txn.open_table(WAL_AT).map_err(|e| e.to_string())?;
            wal_at.insert(AUDIT, position.as_str()).map_err(|e| e.to_string())?;
        }
        let mut live = txn.open_table(LIVE).map_err(|e| e.to_string())?;
        apply(&mut live, writes).map_err(|e| e.to_string())?;
        // the expired rows, oldest first: the cost is their number, never the table's size
        live.retain_in(..(now, &[][..]), |_, _| false).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        meta.insert(JOURNAL, next).map_err(|e| e.to_string())?;
        meta.insert(CLEAN, i64::from(closing)).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;
    writes.clear();
    if let (Some(b), Some(_)) = (behind, &position) {
        // the file holds a position: marks may wait behind the log from now on
        b.waiting.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    journal.renew(next)?;
    Ok(())
}

fn writer(
    db: Database,
    mut journal: Journal,
    rx: std::sync::mpsc::Receiver<Job>,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    behind: Option<Behind>,
) {
    // what the journal holds since the last checkpoint (memory holds it too)
    let mut pending: Vec<Write> = Vec::new();
    // an append failed: the journal may hold a hole, so nothing more is appended to it until a
    // checkpoint has committed everything to the file and begun a new journal
    let mut broken = false;
    let mut now = i64::MIN;
    let waiting = |b: &Behind| b.waiting.writes.lock().map_or(0, |w| w.len());
    let mut checkpointed = std::time::Instant::now();
    loop {
        // what waits behind the log is committed at least every CHECKPOINT_EVERY, so a crash
        // replays little of it and the log's rotated files hold the position for long enough
        // (no job for that long: a round with none, for the checkpoint's sake)
        let mut jobs = match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(job) => vec![job],
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Vec::new(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        now = jobs.iter().map(|j| j.now).max().unwrap_or(now).max(now);
        let from = pending.len();
        let mut dones = Vec::with_capacity(jobs.len());
        for j in jobs {
            pending.extend(j.writes);
            dones.push(j.done);
        }
        let result = if broken {
            // the batch is acknowledged only once everything is committed to the file
            checkpoint(&db, &mut journal, &mut pending, behind.as_ref(), now, false)
        } else if pending.len() == from {
            // (no write: a checkpoint asked for, or a round without a job)
            Ok(())
        } else {
            journal.append(&pending[from..])
        };
        broken = result.is_err();
        // (a log that had no record when the file last stored a position has one now: stored at once)
        let unplaced = behind
            .as_ref()
            .is_some_and(|b| !b.waiting.ready.load(std::sync::atomic::Ordering::SeqCst) && (b.position)().is_some());
        let behind_now = behind.as_ref().map_or(0, waiting);
        let due = pending.len() + behind_now >= CHECKPOINT_WRITES
            || journal.bytes() >= CHECKPOINT_BYTES
            || unplaced
            || (behind_now > 0 && checkpointed.elapsed() >= CHECKPOINT_EVERY);
        if !broken && due {
            // the batch is durable in the journal already; a checkpoint that fails (perhaps
            // after its commit) leaves a journal that may no longer continue the file, so the
            // next batch must checkpoint again before it is acknowledged
            match checkpoint(&db, &mut journal, &mut pending, behind.as_ref(), now, false) {
                Ok(()) => checkpointed = std::time::Instant::now(),
                Err(e) => {
                    tracing::error!(error = %e, "state file checkpoint failed");
                    broken = true;
                }
            }
        }
        healthy.store(!broken, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "state file write failed");
        }
        for done in dones {
            let _ = done.send(result.clone());
        }
    }
    // closing: the journal (and what waits behind the audit log) is committed to the file, which
    // then holds everything (a copy of it alone, taken while the broker is stopped, is whole)
    if let Err(e) = checkpoint(&db, &mut journal, &mut pending, behind.as_ref(), now, true) {
        tracing::warn!(error = %e, "state file checkpoint at close failed; the journal is replayed at the next start");
    }
}

impl StateStore for FileStore {
    fn mark_used<'a>(
        &'a self,
        id: &'a str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&'a Grant>,
    ) -> StateFuture<'a, Mark> {
        Box::pin(async move {
            let mark = self.memory.mark_with_grant(id, until, now, used_since, grant)?;
            if mark == Mark::Fresh {
                self.persist_mark(id, until, now, grant).await?;
            }
            Ok(mark)
        })
    }
    fn spend<'a>(
        &'a self,
        keys: &'a [String],
        id: &'a str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&'a Grant>,
    ) -> StateFuture<'a, Spend> {
        Box::pin(async move {
            // decided in memory under one lock, then made durable before the caller is answered
            let spend = self.memory.spend_now(keys, id, until, now, used_since, grant)?;
            if spend == Spend::Marked(Mark::Fresh) {
                self.persist_mark(id, until, now, grant).await?;
            }
            Ok(spend)
        })
    }
    fn ready(&self) -> StateFuture<'_, ()> {
        // (no commit of its own: a readiness probe is not worth an fsync)
        Box::pin(async move {
            self.memory.ready().await?;
            let running = self.writer.as_ref().is_some_and(|w| !w.is_finished());
            if running && self.healthy.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err(unavailable("the last write to the state file failed"))
            }
        })
    }
    fn put_nonce<'a>(&'a self, nonce: &'a str, binding: &'a str, until: i64, now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.memory.put_nonce_now(nonce, binding, until, now)?;
            let w = Write::Put { until, key: row(NONCE, nonce.as_bytes()), value: binding.as_bytes().to_vec() };
            self.persist(vec![w], now).await
        })
    }
    fn take_nonce<'a>(&'a self, nonce: &'a str, now: i64) -> StateFuture<'a, Option<String>> {
        Box::pin(async move {
            let Some((until, binding)) = self.memory.take_nonce_until(nonce, now)? else { return Ok(None) };
            self.persist(vec![Write::Delete { until, key: row(NONCE, nonce.as_bytes()) }], now).await?;
            Ok(Some(binding))
        })
    }
    fn record_grant<'a>(&'a self, grant: &'a Grant, now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.memory.record_grant_now(grant, now)?;
            self.persist(vec![grant_write(grant)?], now).await
        })
    }
    fn grants(&self, now: i64) -> StateFuture<'_, Vec<Grant>> {
        self.memory.grants(now)
    }
    fn revoke<'a>(&'a self, key: &'a str, until: i64, now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.memory.revoke_now(key, until, now)?;
            self.persist(vec![Write::Put { until, key: row(REVOKED, key.as_bytes()), value: Vec::new() }], now).await
        })
    }
    fn revoked<'a>(&'a self, keys: &'a [String], now: i64) -> StateFuture<'a, Vec<String>> {
        self.memory.revoked(keys, now)
    }
    fn revocations(&self, now: i64) -> StateFuture<'_, Vec<(String, i64)>> {
        self.memory.revocations(now)
    }
    fn unrevoke<'a>(&'a self, key: &'a str, now: i64) -> StateFuture<'a, bool> {
        Box::pin(async move {
            let Some(until) = self.memory.unrevoke_now(key)? else { return Ok(false) };
            self.persist(vec![Write::Delete { until, key: row(REVOKED, key.as_bytes()) }], now).await?;
            Ok(until >= now)
        })
    }
    fn outbox_put<'a>(&'a self, item: &'a super::Outgoing, now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.memory.outbox_put_now(item, now)?;
            self.persist(vec![outbox_write(item)?], now).await
        })
    }
    fn outbox_lease(&self, now: i64, lease: i64, max: usize) -> StateFuture<'_, Vec<super::Outgoing>> {
        Box::pin(async move {
            let leased = self.memory.outbox_lease_now(now, lease, max)?;
            // (the lease is kept in memory only: after a restart every item is due at once)
            Ok(leased)
        })
    }
    fn outbox_done<'a>(&'a self, id: &'a str, now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            if let Some(until) = self.memory.outbox_done_now(id)? {
                self.persist(vec![Write::Delete { until, key: row(OUTBOX, id.as_bytes()) }], now).await?;
            }
            Ok(())
        })
    }
    fn consume<'a>(
        &'a self,
        id: &'a str,
        max: u32,
        take: bool,
        until: i64,
        now: i64,
        issued_at: i64,
    ) -> StateFuture<'a, super::Uses> {
        Box::pin(async move {
            let (uses, taken) = self.memory.consume_now(id, max, take, until, now, issued_at)?;
            if let Some(n) = taken {
                let mut key = row(USES, id.as_bytes());
                key.push(0);
                key.extend_from_slice(&n.to_le_bytes());
                let w = Write::Put { until, key, value: Vec::new() };
                self.persist(vec![w], now).await?;
            }
            Ok(uses)
        })
    }
}

fn outbox_write(item: &super::Outgoing) -> Result<Write, StateError> {
    let value = serde_json::to_vec(item).map_err(unavailable)?;
    Ok(Write::Put { until: item.until, key: row(OUTBOX, item.id.as_bytes()), value })
}

fn grant_write(g: &Grant) -> Result<Write, StateError> {
    let value = serde_json::to_vec(g).map_err(unavailable)?;
    Ok(Write::Put { until: g.expires_at, key: row(GRANT, g.id.as_bytes()), value })
}

#[cfg(test)]
mod tests {
    use super::super::Spend;
    use super::*;

    fn grant(id: &str, expires_at: i64) -> Grant {
        Grant::for_test(id, expires_at)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    /// Everything the store accepted is there after the store is dropped and opened again on
    /// the same file; expired entries are not; a replay stays refused.
    #[test]
    fn a_new_store_is_private_to_the_broker() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _store = FileStore::open(&path, 100, 0, false, Vec::new, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let journal = std::fs::metadata(journal::path_for(&path)).unwrap();
        assert_eq!(journal.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn uses_and_the_outbox_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let item = |id: &str| super::super::Outgoing {
            id: id.into(),
            due: 0,
            until: 100,
            attempts: 0,
            body: serde_json::json!({"kind": "x"}),
        };
        {
            let s = FileStore::open(&path, 100, 0, false, Vec::new, None).unwrap();
            rt.block_on(async {
                for left in [2, 1] {
                    assert_eq!(s.consume("jti", 3, true, 100, 0, 0).await, Ok(Uses::Left(left)));
                }
                s.outbox_put(&item("o1"), 0).await.unwrap();
                s.outbox_put(&item("o2"), 0).await.unwrap();
                s.outbox_done("o2", 0).await.unwrap();
                assert_eq!(s.outbox_lease(0, 30, 10).await.unwrap().len(), 1, "leased before the restart");
            });
        }
        let s = FileStore::open(&path, 100, 10, false, Vec::new, None).unwrap();
        rt.block_on(async {
            assert_eq!(s.consume("jti", 3, false, 100, 10, 0).await, Ok(Uses::Left(1)), "counted, not taken");
            assert_eq!(s.consume("jti", 3, true, 100, 10, 0).await, Ok(Uses::Left(0)));
            assert_eq!(s.consume("jti", 3, true, 100, 10, 0).await, Ok(Uses::Exhausted));
            let ids: Vec<String> = s.outbox_lease(10, 30, 10).await.unwrap().into_iter().map(|o| o.id).collect();
            assert_eq!(ids, vec!["o1".to_owned()], "the delivered item is gone; the other is due again");
            assert!(s.outbox_lease(11, 30, 10).await.unwrap().is_empty(), "leased: not again before the lease ends");
        });
    }

    #[test]
    fn marks_nonces_revocations_and_grants_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        {
            let s = FileStore::open(&path, 100, 0, false, Vec::new, None).unwrap();
            rt.block_on(async {
                assert_eq!(s.mark_used("a", 100, 0, 0, Some(&grant("g1", 100))).await, Ok(Mark::Fresh));
                assert_eq!(s.mark_used("short", 5, 0, 0, None).await, Ok(Mark::Fresh));
                s.put_nonce("n1", "role", 60, 0).await.unwrap();
                s.put_nonce("n2", "role", 60, 0).await.unwrap();
                assert_eq!(s.take_nonce("n2", 1).await, Ok(Some("role".into())));
                s.revoke("task:x", 200, 0).await.unwrap();
            });
        }
        let s = FileStore::open(&path, 100, 10, false, Vec::new, None).unwrap();
        rt.block_on(async {
            assert_eq!(s.mark_used("a", 100, 10, 0, None).await, Ok(Mark::AlreadyUsed), "replay after restart");
            assert_eq!(s.mark_used("short", 100, 10, 0, None).await, Ok(Mark::Fresh), "expired before the restart");
            assert_eq!(s.take_nonce("n1", 10).await, Ok(Some("role".into())), "outstanding nonce kept");
            assert_eq!(s.take_nonce("n2", 10).await, Ok(None), "a taken nonce stays taken");
            let keys = vec!["task:x".to_owned(), "task:y".to_owned()];
            assert_eq!(s.revoked(&keys, 10).await, Ok(vec!["task:x".to_owned()]));
            let ids: Vec<String> = s.grants(10).await.unwrap().into_iter().map(|g| g.id).collect();
            assert_eq!(ids, vec!["g1".to_owned()]);
        });
        drop(s);
        // the twin: past their ends, nothing is reloaded
        let s = FileStore::open(&path, 100, 1_000, false, Vec::new, None).unwrap();
        rt.block_on(async {
            assert_eq!(s.mark_used("a", 2_000, 1_000, 0, None).await, Ok(Mark::Fresh));
            assert_eq!(s.revoked(&["task:x".to_owned()], 1_000).await, Ok(vec![]));
            assert!(s.grants(1_000).await.unwrap().is_empty());
        });
    }

    /// A spend checks the revocations and marks in one step: a revoked workload's assertion is
    /// not spent and its grant not recorded, before or after a restart; the twin: with nothing
    /// revoked, the mark and the grant are durable.
    #[test]
    fn a_spend_refuses_a_revoked_workload_and_makes_a_fresh_mark_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let keys = vec!["task:p:1".to_owned(), "role:r".to_owned()];
        {
            let s = FileStore::open(&path, 100, 0, false, Vec::new, None).unwrap();
            rt.block_on(async {
                s.revoke("role:r", 200, 0).await.unwrap();
                let spent = s.spend(&keys, "a", 100, 0, 0, Some(&grant("g1", 100))).await;
                assert_eq!(spent, Ok(Spend::Revoked(vec!["role:r".to_owned()])));
                assert!(s.grants(0).await.unwrap().is_empty());
                let other = vec!["task:p:2".to_owned()];
                assert_eq!(
                    s.spend(&other, "b", 100, 0, 0, Some(&grant("g2", 100))).await,
                    Ok(Spend::Marked(Mark::Fresh))
                );
            });
        }
        let s = FileStore::open(&path, 100, 10, false, Vec::new, None).unwrap();
        rt.block_on(async {
            assert_eq!(s.spend(&keys, "a", 100, 10, 0, None).await, Ok(Spend::Revoked(vec!["role:r".to_owned()])));
            assert_eq!(s.spend(&[], "a", 100, 10, 0, None).await, Ok(Spend::Marked(Mark::Fresh)), "a was not spent");
            assert_eq!(s.spend(&[], "b", 100, 10, 0, None).await, Ok(Spend::Marked(Mark::AlreadyUsed)), "b was");
            let ids: Vec<String> = s.grants(10).await.unwrap().into_iter().map(|g| g.id).collect();
            assert_eq!(ids, vec!["g2".to_owned()]);
        });
    }

    /// A file created where state should have been (the audit log has records) starts an epoch:
    /// assertions that may have been used before it are refused, later ones are not, and the
    /// epoch outlives a further restart. Its twin: a first start has no epoch.
    #[test]
    fn a_new_file_after_a_loss_starts_an_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let first = FileStore::open(&dir.path().join("first.redb"), 100, 50, false, Vec::new, None).unwrap();
        assert_eq!(rt.block_on(first.mark_used("a", 100, 50, 10, None)), Ok(Mark::Fresh));
        let path = dir.path().join("lost.redb");
        let s = FileStore::open(
            &path,
            100,
            50,
            true,
            || vec![("subject:p:s".to_owned(), 100), ("role:gone".to_owned(), 40)],
            None,
        )
        .unwrap();
        assert_eq!(rt.block_on(s.mark_used("a", 100, 50, 49, None)), Ok(Mark::EpochReset { since: 50 }));
        assert_eq!(rt.block_on(s.mark_used("b", 100, 50, 50, None)), Ok(Mark::Fresh));
        // what the audit log says was revoked is revoked again; what has ended is not
        let keys = vec!["subject:p:s".to_owned(), "role:gone".to_owned()];
        assert_eq!(rt.block_on(s.revoked(&keys, 50)), Ok(vec!["subject:p:s".to_owned()]));
        drop(s);
        let s = FileStore::open(&path, 100, 60, true, Vec::new, None).unwrap();
        assert_eq!(rt.block_on(s.mark_used("c", 100, 60, 49, None)), Ok(Mark::EpochReset { since: 50 }));
    }

    /// The state file and its journal as a crash would leave them: copied while the store is
    /// open (no checkpoint since the writes), into `to`.
    fn crash_copy(path: &Path, to: &Path) -> PathBuf {
        std::fs::create_dir_all(to).unwrap();
        let copy = to.join("state.redb");
        std::fs::copy(path, &copy).unwrap();
        std::fs::copy(journal::path_for(path), journal::path_for(&copy)).unwrap();
        copy
    }

    /// What the journal acknowledged survives a crash (no checkpoint, no clean close); the
    /// twin: after a clean close the journal is empty and the file alone holds it all.
    #[test]
    fn a_crash_keeps_what_the_journal_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let s = FileStore::open(&path, 100, 0, false, Vec::new, None).unwrap();
        rt.block_on(async {
            assert_eq!(s.spend(&[], "a", 100, 0, 0, Some(&grant("g1", 100))).await, Ok(Spend::Marked(Mark::Fresh)));
            s.revoke("task:x", 200, 0).await.unwrap();
        });
        let copy = crash_copy(&path, &dir.path().join("crash"));
        let records = |p: &Path| match journal::read(&journal::path_for(p), 1) {
            Ok(Found::Records(w)) => w.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(records(&path), 3, "the writes are in the journal (a mark, its grant, a revocation)");
        drop(s);
        let Ok(Found::Applied) = journal::read(&journal::path_for(&path), 3) else { panic!("not checkpointed") };
        assert_eq!(records(&copy), 3);
        for p in [&copy, &path] {
            let s = FileStore::open(p, 100, 10, false, Vec::new, None).unwrap();
            rt.block_on(async {
                assert_eq!(s.spend(&[], "a", 100, 10, 0, None).await, Ok(Spend::Marked(Mark::AlreadyUsed)), "{p:?}");
                assert_eq!(s.revoked(&["task:x".to_owned()], 10).await, Ok(vec!["task:x".to_owned()]));
                let ids: Vec<String> = s.grants(10).await.unwrap().into_iter().map(|g| g.id).collect();
                assert_eq!(ids, vec!["g1".to_owned()]);
                assert_eq!(s.spend(&[], "b", 100, 10, 5, None).await, Ok(Spend::Marked(Mark::Fresh)), "no epoch");
            });
        }
    }

    /// A journal that is gone, or belongs to another state, while the file says one continues it,
    /// lost acknowledged writes: the store starts an epoch and re-asserts the audit log's
    /// revocations. Its twin (the journal in place) is the test above.
    #[test]
    fn a_lost_journal_starts_an_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let s = FileStore::open(&path, 100, 0, false, Vec::new, None).unwrap();
        assert_eq!(rt.block_on(s.mark_used("a", 100, 0, 0, None)), Ok(Mark::Fresh));
        let crashed = crash_copy(&path, &dir.path().join("crash"));
        let foreign = crash_copy(&path, &dir.path().join("foreign"));
        drop(s);
        std::fs::remove_file(journal::path_for(&crashed)).unwrap();
        // another state's journal: the closed store's (a generation ahead of the copy)
        std::fs::copy(journal::path_for(&path), journal::path_for(&foreign)).unwrap();
        for p in [&crashed, &foreign] {
            let s = FileStore::open(p, 100, 50, false, || vec![("role:r".to_owned(), 100)], None).unwrap();
            assert_eq!(rt.block_on(s.mark_used("b", 100, 50, 49, None)), Ok(Mark::EpochReset { since: 50 }), "{p:?}");
            assert_eq!(rt.block_on(s.mark_used("c", 100, 50, 50, None)), Ok(Mark::Fresh));
            assert_eq!(rt.block_on(s.revoked(&["role:r".to_owned()], 50)), Ok(vec!["role:r".to_owned()]));
        }
        // the twin: a store closed cleanly needs no journal (a file copied while the broker was
        // stopped is whole): no epoch, the mark kept
        std::fs::remove_file(journal::path_for(&path)).unwrap();
        let s = FileStore::open(&path, 100, 50, false, || panic!("nothing was lost"), None).unwrap();
        assert_eq!(rt.block_on(s.mark_used("b", 100, 50, 49, None)), Ok(Mark::Fresh));
        assert_eq!(rt.block_on(s.mark_used("a", 100, 50, 0, None)), Ok(Mark::AlreadyUsed));
    }

    /// Past the checkpoint size the journal is committed to the file and begins again; a crash
    /// after that still finds every mark (in the file, then in the new journal).
    #[test]
    fn checkpoints_move_the_journal_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let s = std::sync::Arc::new(FileStore::open(&path, 100_000, 0, false, Vec::new, None).unwrap());
        let n = CHECKPOINT_WRITES + 100;
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let s = s.clone();
                set.spawn(async move { s.mark_used(&format!("id-{i}"), 100, 0, 0, None).await });
            }
            while let Some(r) = set.join_next().await {
                assert_eq!(r.unwrap(), Ok(Mark::Fresh));
            }
        });
        let Ok(Found::Records(left)) = journal::read(&journal::path_for(&path), 2) else { panic!("one checkpoint") };
        assert!(left.len() < 600, "checkpointed: the journal holds {} writes", left.len());
        let copy = crash_copy(&path, &dir.path().join("crash"));
        let c = FileStore::open(&copy, 100_000, 10, false, Vec::new, None).unwrap();
        for i in (0..n).step_by(97).chain([n - 1]) {
            assert_eq!(rt.block_on(c.mark_used(&format!("id-{i}"), 100, 10, 0, None)), Ok(Mark::AlreadyUsed), "id-{i}");
        }
    }

    /// A [`Wal`] whose position is `at` (shared, so a test moves it; empty: no record yet) and
    /// whose records after a position are `marks` (`None`: the log lost it); `asked` records the
    /// position it was asked for.
    fn wal(
        at: &Arc<Mutex<String>>,
        marks: Option<Vec<(String, i64, Grant)>>,
        asked: &Arc<Mutex<Option<String>>>,
    ) -> Option<Wal> {
        let (at, asked) = (at.clone(), asked.clone());
        Some(Wal {
            position: Arc::new(move || Some(at.lock().unwrap().clone()).filter(|p| !p.is_empty())),
            after: Box::new(move |from: &str| {
                *asked.lock().unwrap() = Some(from.to_owned());
                marks
            }),
        })
    }

    /// With a write-ahead log, a mark made with its grant is not in the journal: after a crash it
    /// is rebuilt from the log's records after the last checkpoint's position. The twins: a log
    /// that names nothing after it leaves the mark unknown (the mark was only behind the log), and
    /// a log that lost the position starts an epoch. A mark without a grant is journaled as before.
    #[test]
    fn marks_made_with_a_grant_are_rebuilt_from_the_audit_log_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let at = Arc::new(Mutex::new("h0".to_owned()));
        let asked = Arc::new(Mutex::new(None));
        let s = FileStore::open(&path, 100, 0, false, Vec::new, wal(&at, None, &asked)).unwrap();
        assert_eq!(*asked.lock().unwrap(), None, "a new file replays nothing");
        rt.block_on(async {
            assert_eq!(s.spend(&[], "a", 100, 0, 0, Some(&grant("g1", 100))).await, Ok(Spend::Marked(Mark::Fresh)));
            assert_eq!(s.mark_used("b", 100, 0, 0, None).await, Ok(Mark::Fresh));
        });
        *at.lock().unwrap() = "h1".to_owned();
        let crash = |name: &str| crash_copy(&path, &dir.path().join(name));
        let (rebuilt, unknown, lost) = (crash("rebuilt"), crash("unknown"), crash("lost"));
        let marks = vec![("a".to_owned(), 100, grant("g1", 100))];

        let c = FileStore::open(&rebuilt, 100, 10, false, Vec::new, wal(&at, Some(marks), &asked)).unwrap();
        assert_eq!(asked.lock().unwrap().as_deref(), Some("h0"), "from the position the file holds");
        rt.block_on(async {
            assert_eq!(c.mark_used("a", 100, 10, 0, None).await, Ok(Mark::AlreadyUsed), "rebuilt from the log");
            assert_eq!(c.mark_used("b", 100, 10, 0, None).await, Ok(Mark::AlreadyUsed), "journaled");
            let ids: Vec<String> = c.grants(10).await.unwrap().into_iter().map(|g| g.id).collect();
            assert_eq!(ids, vec!["g1".to_owned()]);
        });
        drop(c);
        // reopened after a clean close: the log is not read again
        *asked.lock().unwrap() = None;
        let c = FileStore::open(&rebuilt, 100, 10, false, Vec::new, wal(&at, None, &asked)).unwrap();
        assert_eq!(*asked.lock().unwrap(), None);
        assert_eq!(rt.block_on(c.mark_used("a", 100, 10, 0, None)), Ok(Mark::AlreadyUsed));

        let c = FileStore::open(&unknown, 100, 10, false, Vec::new, wal(&at, Some(Vec::new()), &asked)).unwrap();
        rt.block_on(async {
            assert_eq!(c.mark_used("a", 100, 10, 0, None).await, Ok(Mark::Fresh), "not journaled: only behind the log");
            assert_eq!(c.mark_used("b", 100, 10, 0, None).await, Ok(Mark::AlreadyUsed));
        });

        let c = FileStore::open(&lost, 100, 10, false, Vec::new, wal(&at, None, &asked)).unwrap();
        assert_eq!(rt.block_on(c.mark_used("a", 100, 10, 5, None)), Ok(Mark::EpochReset { since: 10 }), "an epoch");
        assert_eq!(rt.block_on(c.mark_used("c", 100, 10, 11, None)), Ok(Mark::Fresh), "issued after it");
        // without a log now, a file that was written behind one is as lost
        let again = crash_copy(&lost, &dir.path().join("again"));
        drop(c);
        let c = FileStore::open(&again, 100, 20, false, Vec::new, None).unwrap();
        assert_eq!(rt.block_on(c.mark_used("d", 100, 20, 15, None)), Ok(Mark::EpochReset { since: 20 }));
    }

    /// A log without a record has no position to replay from: until the file has stored one,
    /// marks made with a grant are journaled (a crash keeps them whatever the log says). The
    /// first write after the log has a record stores it; marks then wait behind the log.
    #[test]
    fn marks_are_journaled_until_the_log_has_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let at = Arc::new(Mutex::new(String::new()));
        let asked = Arc::new(Mutex::new(None));
        let s = FileStore::open(&path, 100, 0, false, Vec::new, wal(&at, None, &asked)).unwrap();
        rt.block_on(async {
            assert_eq!(s.spend(&[], "a", 100, 0, 0, Some(&grant("g1", 100))).await, Ok(Spend::Marked(Mark::Fresh)));
            *at.lock().unwrap() = "h1".to_owned();
            // the writer's next batch stores the position
            assert_eq!(s.mark_used("b", 100, 0, 0, None).await, Ok(Mark::Fresh));
            assert_eq!(s.spend(&[], "c", 100, 0, 0, Some(&grant("g3", 100))).await, Ok(Spend::Marked(Mark::Fresh)));
        });
        let copy = crash_copy(&path, &dir.path().join("crash"));
        let c = FileStore::open(&copy, 100, 10, false, Vec::new, wal(&at, Some(Vec::new()), &asked)).unwrap();
        assert_eq!(asked.lock().unwrap().as_deref(), Some("h1"));
        rt.block_on(async {
            assert_eq!(c.mark_used("a", 100, 10, 0, None).await, Ok(Mark::AlreadyUsed), "journaled: no position then");
            assert_eq!(c.mark_used("b", 100, 10, 0, None).await, Ok(Mark::AlreadyUsed));
            assert_eq!(
                c.mark_used("c", 100, 10, 0, None).await,
                Ok(Mark::Fresh),
                "behind the log (which lost it here)"
            );
        });
    }

    /// The marks waiting behind the log are committed at a checkpoint, with the position read
    /// before they were taken: a crash after it replays from there.
    #[test]
    fn a_checkpoint_commits_the_marks_behind_the_log_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rt = rt();
        let at = Arc::new(Mutex::new("h0".to_owned()));
        let asked = Arc::new(Mutex::new(None));
        let s = FileStore::open(&path, 100_000, 0, false, Vec::new, wal(&at, None, &asked)).unwrap();
        *at.lock().unwrap() = "h1".to_owned();
        let n = CHECKPOINT_WRITES / 2 + 10;
        rt.block_on(async {
            for i in 0..n {
                let g = grant(&format!("g{i}"), 100);
                assert_eq!(s.spend(&[], &format!("id-{i}"), 100, 0, 0, Some(&g)).await, Ok(Spend::Marked(Mark::Fresh)));
            }
            // a journaled write after the writer was told to checkpoint: answered after it
            assert_eq!(s.mark_used("after", 100, 0, 0, None).await, Ok(Mark::Fresh));
        });
        let copy = crash_copy(&path, &dir.path().join("crash"));
        let c = FileStore::open(&copy, 100_000, 10, false, Vec::new, wal(&at, Some(Vec::new()), &asked)).unwrap();
        assert_eq!(asked.lock().unwrap().as_deref(), Some("h1"), "the checkpoint's position");
        // (those made after the writer was told may be behind the log still: the log has them)
        let told = CHECKPOINT_WRITES / 2;
        for i in (0..told).step_by(101).chain([told - 1]) {
            assert_eq!(rt.block_on(c.mark_used(&format!("id-{i}"), 100, 10, 0, None)), Ok(Mark::AlreadyUsed), "id-{i}");
        }
        assert!(rt.block_on(c.grants(10)).unwrap().len() >= told);
    }

    /// A second broker on the same file is refused at open (redb locks it), never two writers.
    #[test]
    fn one_process_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _s = FileStore::open(&path, 100, 0, false, Vec::new, None).unwrap();
        assert!(FileStore::open(&path, 100, 0, false, Vec::new, None).is_err());
    }
}

//! The state file's journal: what the file store commits between two checkpoints, appended and
//! flushed (`fdatasync`) before the caller is answered (all but the marks made with a grant, which
//! wait behind the audit log: `file.rs`). A redb commit rewrites the B-tree pages
//! on its path (tens of KB for one mark); an appended record is the mark itself (about 100
//! bytes). What is left is the flush (BENCHMARKS.md "Issue 18").
//!
//! - The journal starts with a header: a magic and the *generation* it continues. The state
//!   file's `meta` table holds the generation of the journal that continues it.
//! - A checkpoint commits everything the journal holds to the state file in one transaction,
//!   with the generation after this one, and only then replaces the journal by an empty one of
//!   that generation (written aside, flushed, renamed over; a journal nothing was appended to
//!   keeps its zeros and has its header rewritten in place). A crash between the two leaves a
//!   journal one generation behind the file: its records are already in the file.
//! - Each batch of writes is one record: its length, the first 8 bytes of the SHA-256 of its
//!   payload, the payload. Reading stops at the first record that is cut or does not match
//!   (a crash during an append, never acknowledged).
//! - The journal is written in full (zeros) to [`PREALLOCATED`] bytes when it begins, and records
//!   overwrite it in place: a flush then writes the record's pages only, not the inode whose size
//!   an append would change. Zeros read as no record (their digest does not match).
//! - A journal that is missing, or of another generation, while the file says one continues it,
//!   means acknowledged writes were lost: the store starts an epoch (`file.rs`), as for a lost
//!   state file.

use super::file::Write;
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"EPHJRNL1";
const HEADER: usize = 16;
/// Length (u32) and digest prefix (8 bytes) before each record's payload.
const FRAME: usize = 12;
/// The journal's size when it begins (records past it extend it).
pub(super) const PREALLOCATED: usize = 4 << 20;
const PUT: u8 = b'p';
const DELETE: u8 = b'd';

/// What the journal beside a state file holds.
#[derive(Debug)]
pub(super) enum Found {
    /// The journal of the generation expected: its writes, in order.
    Records(Vec<Write>),
    /// The journal of the generation before: its writes are already in the file.
    Applied,
    /// No journal.
    Missing,
    /// A journal of another generation, or not a journal: what it continued is unknown.
    Foreign,
}

/// The open journal, appended to by the writer thread only.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    generation: i64,
    bytes: u64,
    buf: Vec<u8>,
}

/// `<state path>.journal`.
pub(super) fn path_for(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

fn digest8(payload: &[u8]) -> [u8; 8] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d.as_ref()[..8]);
    out
}

/// Reads the journal at `path` for a state file continued by generation `generation`.
pub(super) fn read(path: &Path, generation: i64) -> Result<Found, String> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let Some(header) = bytes.get(..HEADER).filter(|h| h.starts_with(MAGIC)) else {
        return Ok(Found::Foreign);
    };
    let found = i64::from_le_bytes(header[8..].try_into().unwrap_or_default());
    if found == generation - 1 {
        return Ok(Found::Applied);
    }
    if found != generation {
        return Ok(Found::Foreign);
    }
    let mut writes = Vec::new();
    let mut rest = &bytes[HEADER..];
    while rest.len() >= FRAME {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
        let Some(payload) = rest.get(FRAME..FRAME + len) else { break };
        if digest8(payload)[..] != rest[4..FRAME] {
            break;
        }
        let Some(batch) = decode(payload) else { break };
        writes.extend(batch);
        rest = &rest[FRAME + len..];
    }
    Ok(Found::Records(writes))
}

fn decode(mut p: &[u8]) -> Option<Vec<Write>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (p.get(..n)?, p.get(n..)?);
        *p = tail;
        Some(head)
    }
    fn bytes(p: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize;
        take(p, n).map(<[u8]>::to_vec)
    }
    let mut out = Vec::new();
    while !p.is_empty() {
        let op = take(&mut p, 1)?[0];
        let until = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
        let key = bytes(&mut p)?;
        out.push(match op {
            PUT => Write::Put { until, key, value: bytes(&mut p)? },
            DELETE => Write::Delete { until, key },
            _ => return None,
        });
    }
    Some(out)
}

fn encode(writes: &[Write], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME]);
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for w in writes {
        match w {
            Write::Put { until, key, value } => {
                out.push(PUT);
                out.extend_from_slice(&until.to_le_bytes());
                put(out, key);
                put(out, value);
            }
            Write::Delete { until, key } => {
                out.push(DELETE);
                out.extend_from_slice(&until.to_le_bytes());
                put(out, key);
            }
        }
    }
    let len = (out.len() - start - FRAME) as u32;
    let digest = digest8(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&digest);
}

impl Journal {
    /// Replaces the journal at `path` by an empty one of `generation`: written aside, flushed,
    /// renamed over, the directory flushed. Readable by the broker's user only.
    pub(super) fn create(path: &Path, generation: i64) -> Result<Journal, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut aside = path.as_os_str().to_owned();
        aside.push(".new");
        let aside = PathBuf::from(aside);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&aside)
            .map_err(fail)?;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&generation.to_le_bytes());
        header.resize(PREALLOCATED, 0);
        f.write_all(&header).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&aside, path).map_err(fail)?;
        if let Some(dir) = path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
        }
        let file = std::fs::OpenOptions::new().write(true).open(path).map_err(fail)?;
        Ok(Journal { file, path: path.to_path_buf(), generation, bytes: HEADER as u64, buf: Vec::new() })
    }

    /// Continues as an empty journal of `generation`. With nothing appended since it began (its
    /// bytes after the header are still zeros: the common case when marks wait behind the audit
    /// log), the header is rewritten in place, one sector, and flushed; otherwise the journal is
    /// replaced ([`Journal::create`]). A crash before the header is written leaves the journal one
    /// generation behind the file, which holds what it held (nothing).
    pub(super) fn renew(&mut self, generation: i64) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        if self.bytes != HEADER as u64 {
            *self = Journal::create(&self.path, generation)?;
            return Ok(());
        }
        let fail = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&generation.to_le_bytes());
        self.file.write_all_at(&header, 0).map_err(fail)?;
        self.file.sync_data().map_err(fail)?;
        self.generation = generation;
        Ok(())
    }

    /// Appends `writes` as one record (after the last one) and flushes it.
    pub(super) fn append(&mut self, writes: &[Write]) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        self.buf.clear();
        encode(writes, &mut self.buf);
        let fail = |e: std::io::Error| format!("{}: {e}", self.path.display());
        self.file.write_all_at(&self.buf, self.bytes).map_err(fail)?;
        self.file.sync_data().map_err(fail)?;
        self.bytes += self.buf.len() as u64;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    pub(super) fn generation(&self) -> i64 {
        self.generation
    }

    /// Bytes of header and records (not of the zeros after them).
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes() -> Vec<Write> {
        vec![
            Write::Put { until: 7, key: b"ua".to_vec(), value: Vec::new() },
            Write::Put { until: -1, key: b"g\xff".to_vec(), value: b"{}".to_vec() },
            Write::Delete { until: 9, key: b"n1".to_vec() },
        ]
    }

    #[test]
    fn records_read_back_and_a_cut_or_altered_tail_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.journal");
        let mut j = Journal::create(&path, 3).unwrap();
        j.append(&writes()).unwrap();
        j.append(&writes()[..1]).unwrap();
        let Found::Records(back) = read(&path, 3).unwrap() else { panic!("not read") };
        assert_eq!(format!("{back:?}"), format!("{:?}", [writes(), writes()[..1].to_vec()].concat()));
        assert!(matches!(read(&path, 4).unwrap(), Found::Applied));
        assert!(matches!(read(&path, 2).unwrap(), Found::Foreign));
        assert!(matches!(read(&dir.path().join("none"), 1).unwrap(), Found::Missing));
        // the journal was written in full when it began: records overwrite its zeros
        let full = std::fs::read(&path).unwrap();
        assert_eq!(full.len(), PREALLOCATED);
        // a crash during the second append: the first record stays, the cut one is left out
        let end = j.bytes() as usize;
        std::fs::write(&path, &full[..end - 3]).unwrap();
        let Found::Records(back) = read(&path, 3).unwrap() else { panic!("not read") };
        assert_eq!(format!("{back:?}"), format!("{:?}", writes()));
        // a record whose bytes changed is not read, nor anything after it
        let mut altered = full.clone();
        altered[HEADER + FRAME + 2] ^= 1;
        std::fs::write(&path, &altered).unwrap();
        assert!(matches!(read(&path, 3).unwrap(), Found::Records(w) if w.is_empty()));
        std::fs::write(&path, b"not a journal at all").unwrap();
        assert!(matches!(read(&path, 3).unwrap(), Found::Foreign));
    }

    /// An empty journal continues in place (its header only); one with records is replaced, and
    /// its records are gone from the next generation.
    #[test]
    fn a_journal_is_renewed_in_place_when_nothing_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.journal");
        let mut j = Journal::create(&path, 1).unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first = inode(&path);
        j.renew(2).unwrap();
        assert_eq!(inode(&path), first, "rewritten in place");
        assert!(matches!(read(&path, 2).unwrap(), Found::Records(w) if w.is_empty()));
        assert!(matches!(read(&path, 3).unwrap(), Found::Applied));
        j.append(&writes()).unwrap();
        assert!(matches!(read(&path, 2).unwrap(), Found::Records(w) if w.len() == 3));
        j.renew(3).unwrap();
        assert_ne!(inode(&path), first, "replaced: it held a record");
        assert!(matches!(read(&path, 3).unwrap(), Found::Records(w) if w.is_empty()));
        assert_eq!(std::fs::read(&path).unwrap().len(), PREALLOCATED);
        // and in place again, appended to after
        j.renew(4).unwrap();
        j.append(&writes()[..1]).unwrap();
        assert!(matches!(read(&path, 4).unwrap(), Found::Records(w) if w.len() == 1));
    }
}

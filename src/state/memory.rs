//! In-memory state for one replica. Entries leave only when their assertion has expired: the store
//! never evicts a live entry to make room (that would reopen the replay window). At the configured
//! cap it refuses new marks (`Full`), and the exchange fails closed.

use super::{Mark, Spend, StateError, StateFuture, StateStore};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Inner {
    used: Used,
    nonces: HashMap<String, (i64, String)>,
    nonces_by_expiry: BinaryHeap<Reverse<(i64, String)>>,
    /// The grant inventory, in expiry order, each grant packed into one allocation
    /// ([`packed`]): about a third of the memory a map of [`super::Grant`]s held.
    grants: BTreeSet<(i64, Box<[u8]>)>,
    revoked: HashMap<String, i64>,
    /// Uses taken of use-limited grants: grant id → (taken, until).
    uses: HashMap<String, (u32, i64)>,
    /// The outbox: id → item.
    outbox: HashMap<String, super::Outgoing>,
}

/// The used assertions: id → until. There is no expiry index beside the map (it held a second
/// copy of every key, 40 bytes an exchange): expired entries are swept by one pass over the map,
/// only when one may have expired (`earliest`) and the map is at its cap or has doubled since the
/// last pass, so a pass costs O(1) per insert amortised and the map holds at most twice the live
/// entries (and 1,024). At the cap every expired entry is gone before `Full` is answered, so the
/// cap counts live entries only, as before.
#[derive(Debug)]
struct Used {
    map: HashMap<UsedKey, i64>,
    /// No entry expires before this (a lower bound; `i64::MAX`: none can).
    earliest: i64,
    /// The entries left by the last pass.
    swept: usize,
}

impl Default for Used {
    fn default() -> Self {
        Used { map: HashMap::new(), earliest: i64::MAX, swept: 0 }
    }
}

impl Used {
    /// Drops the expired entries when it is time to (see [`Used`]).
    fn sweep(&mut self, now: i64, cap: usize) {
        let len = self.map.len();
        if self.earliest >= now || (len < cap && len < 2 * self.swept.max(512)) {
            return;
        }
        self.map.retain(|_, until| *until >= now);
        self.earliest = self.map.values().copied().min().unwrap_or(i64::MAX);
        self.swept = self.map.len();
    }

    fn is_used(&self, key: &UsedKey, now: i64) -> bool {
        self.map.get(key).is_some_and(|until| *until >= now)
    }

    /// Marks `key` used until `until` (or later, if it already was).
    fn insert(&mut self, key: UsedKey, until: i64) {
        let kept = self.map.entry(key).or_insert(until);
        *kept = (*kept).max(until);
        self.earliest = self.earliest.min(until);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// A used-assertion id as the map holds it: 32 bytes, not a 64-character string (the pipeline's
/// ids are hex SHA-256 digests; any other id is hashed to the same form).
type UsedKey = [u8; 32];

pub(super) fn used_key(id: &str) -> UsedKey {
    let mut key = [0u8; 32];
    let hex = id.as_bytes();
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let decoded = hex.len() == 64
        && key.iter_mut().zip(hex.chunks_exact(2)).all(|(k, pair)| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => {
                *k = h << 4 | l;
                true
            }
            _ => false,
        });
    if !decoded {
        // a different domain than hex ids: the prefix keeps a hashed id from equalling a decoded one
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"ephemera-replay-id\0");
        ctx.update(hex);
        key.copy_from_slice(ctx.finish().as_ref());
    }
    key
}

/// A grant in one allocation: its text fields, each a little-endian `u32` length then the
/// bytes, then `issued_at`; `audience` and `session` with a leading byte saying whether they are
/// there. The expiry is the inventory's key beside it.
mod packed {
    use super::super::Grant;

    fn put(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => {
                out.push(1);
                put(out, s);
            }
            None => out.push(0),
        }
    }

    pub(super) fn pack(g: &Grant) -> Box<[u8]> {
        let texts = [&g.id, &g.subject, &g.task, &g.role, &g.kind, &g.issuer, &g.provider];
        let extra = g.audience.as_ref().map_or(0, String::len) + g.session.as_ref().map_or(0, String::len);
        // the texts with their lengths, two flags, the optional texts with theirs, issued_at
        let len = texts.iter().map(|t| 4 + t.len()).sum::<usize>() + 2 + 8 + extra + 8;
        let mut out = Vec::with_capacity(len);
        for t in texts {
            put(&mut out, t);
        }
        put_opt(&mut out, g.audience.as_deref());
        put_opt(&mut out, g.session.as_deref());
        out.extend_from_slice(&g.issued_at.to_le_bytes());
        out.into_boxed_slice()
    }

    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn text(&mut self) -> Option<String> {
            let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
            String::from_utf8(self.take(len)?.to_vec()).ok()
        }
        fn opt(&mut self) -> Option<Option<String>> {
            match self.take(1)? {
                [0] => Some(None),
                _ => self.text().map(Some),
            }
        }
    }

    pub(super) fn unpack(expires_at: i64, bytes: &[u8]) -> Option<Grant> {
        let mut r = Reader(bytes);
        let (id, subject, task, role, kind, issuer, provider) =
            (r.text()?, r.text()?, r.text()?, r.text()?, r.text()?, r.text()?, r.text()?);
        let (audience, session) = (r.opt()?, r.opt()?);
        let issued_at = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        Some(Grant { id, subject, task, role, kind, issued_at, expires_at, issuer, provider, audience, session })
    }
}

/// Drops the grants that expired before `now` (the first in the set's order).
fn purge_grants(grants: &mut BTreeSet<(i64, Box<[u8]>)>, now: i64) {
    while grants.first().is_some_and(|(exp, _)| *exp < now) {
        grants.pop_first();
    }
}

/// Drops the entries of `map` whose expiry (as `expiry` reads it) is before `now`, guided by the
/// min-heap `heap`: the cost is the number of expired entries, never the size of the map.
fn purge<K: std::hash::Hash + Eq + Ord, V>(
    map: &mut HashMap<K, V>,
    heap: &mut BinaryHeap<Reverse<(i64, K)>>,
    now: i64,
    expiry: impl Fn(&V) -> i64,
) {
    while let Some(Reverse((exp, _))) = heap.peek() {
        if *exp >= now {
            break;
        }
        if let Some(Reverse((_, old))) = heap.pop()
            && map.get(&old).is_some_and(|v| expiry(v) < now)
        {
            map.remove(&old);
        }
    }
}

/// Which of `keys` are revoked at `now`.
fn revoked_in(revoked: &HashMap<String, i64>, keys: &[String], now: i64) -> Vec<String> {
    keys.iter().filter(|k| revoked.get(*k).is_some_and(|exp| *exp >= now)).cloned().collect()
}

/// Used-assertion ids in a map, with a min-heap on expiry so purging is cheap.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_entries: usize,
    /// Assertions that may have been used before this moment are refused (`EpochReset`): set
    /// when the durable store behind this one knows it lost its state (`state/file.rs`).
    epoch: Option<i64>,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> Self {
        MemoryStore { inner: Mutex::new(Inner::default()), max_entries, epoch: None }
    }

    /// A store whose memory begins at `epoch`.
    pub(super) fn with_epoch(max_entries: usize, epoch: Option<i64>) -> Self {
        MemoryStore { epoch, ..MemoryStore::new(max_entries) }
    }

    /// Marks `id` used until `until`; `used_since` is the earliest moment the assertion could
    /// have been used (see [`StateStore::mark_used`]).
    #[cfg(test)]
    pub(super) fn mark(&self, id: &str, until: i64, now: i64, used_since: i64) -> Result<Mark, StateError> {
        self.mark_with_grant(id, until, now, used_since, None)
    }

    /// Marks `id` used and, for a fresh mark, records `grant`, under one lock: a replay is called
    /// a replay whatever the room, and a grant that has no room refuses before anything is spent
    /// (review S6).
    pub(super) fn mark_with_grant(
        &self,
        id: &str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&super::Grant>,
    ) -> Result<Mark, StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        self.mark_locked(&mut g, id, until, now, used_since, grant)
    }

    /// [`StateStore::spend`] under one lock: the revocations of `keys` in force, else the mark
    /// (and the grant) of [`MemoryStore::mark_with_grant`].
    pub(super) fn spend_now(
        &self,
        keys: &[String],
        id: &str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&super::Grant>,
    ) -> Result<Spend, StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let inner = &mut *g;
        let revoked = revoked_in(&inner.revoked, keys, now);
        if !revoked.is_empty() {
            return Ok(Spend::Revoked(revoked));
        }
        self.mark_locked(inner, id, until, now, used_since, grant).map(Spend::Marked)
    }

    fn mark_locked(
        &self,
        inner: &mut Inner,
        id: &str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&super::Grant>,
    ) -> Result<Mark, StateError> {
        if let Some(since) = self.epoch
            && used_since < since
        {
            return Ok(Mark::EpochReset { since });
        }
        inner.used.sweep(now, self.max_entries);
        let key = used_key(id);
        if inner.used.is_used(&key, now) {
            return Ok(Mark::AlreadyUsed);
        }
        if inner.used.len() >= self.max_entries {
            return Err(StateError::Full(inner.used.len()));
        }
        if let Some(g) = grant {
            purge_grants(&mut inner.grants, now);
            if inner.grants.len() >= self.max_entries {
                return Err(StateError::Full(inner.grants.len()));
            }
            inner.grants.insert((g.expires_at, packed::pack(g)));
        }
        inner.used.insert(key, until);
        Ok(Mark::Fresh)
    }

    /// Marks a key as stored by [`used_key`] (reloading a durable store); `AlreadyUsed` for a
    /// key that is not 32 bytes is never produced: such a row is skipped.
    pub(super) fn mark_raw(&self, key: &[u8], until: i64, now: i64) -> Result<(), StateError> {
        let Ok(key) = <UsedKey>::try_from(key) else { return Ok(()) };
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let inner = &mut *g;
        inner.used.sweep(now, self.max_entries);
        if inner.used.len() >= self.max_entries {
            return Err(StateError::Full(inner.used.len()));
        }
        inner.used.insert(key, until);
        Ok(())
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.used.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MemoryStore {
    pub(super) fn record_grant_now(&self, grant: &super::Grant, now: i64) -> Result<(), StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let inner = &mut *g;
        purge_grants(&mut inner.grants, now);
        if inner.grants.len() >= self.max_entries {
            return Err(StateError::Full(inner.grants.len()));
        }
        inner.grants.insert((grant.expires_at, packed::pack(grant)));
        Ok(())
    }

    pub(super) fn put_nonce_now(&self, nonce: &str, binding: &str, until: i64, now: i64) -> Result<(), StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let inner = &mut *g;
        // the expired ones leave by the heap: the cost is their number, never the table's size
        // (a full table scanned on every request under this lock was review C6)
        purge(&mut inner.nonces, &mut inner.nonces_by_expiry, now, |(exp, _)| *exp);
        if inner.nonces.len() > self.max_entries / 10 {
            return Err(StateError::Full(inner.nonces.len()));
        }
        inner.nonces.insert(nonce.to_owned(), (until, binding.to_owned()));
        inner.nonces_by_expiry.push(Reverse((until, nonce.to_owned())));
        Ok(())
    }

    fn take_nonce_now(&self, nonce: &str, now: i64) -> Result<Option<String>, StateError> {
        Ok(self.take_nonce_until(nonce, now)?.map(|(_, b)| b))
    }

    /// Takes a nonce: its expiry and binding if it was outstanding and unexpired.
    pub(super) fn take_nonce_until(&self, nonce: &str, now: i64) -> Result<Option<(i64, String)>, StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        Ok(g.nonces.remove(nonce).filter(|(exp, _)| *exp >= now))
    }

    /// [`StateStore::consume`] under the lock; `Some(taken)` when a use was taken (what a
    /// durable store writes).
    pub(super) fn consume_now(
        &self,
        id: &str,
        max: u32,
        take: bool,
        until: i64,
        now: i64,
        issued_at: i64,
    ) -> Result<(super::Uses, Option<u32>), StateError> {
        if self.epoch.is_some_and(|since| issued_at < since) {
            return Ok((super::Uses::Lost, None));
        }
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        g.uses.retain(|_, (_, exp)| *exp >= now);
        let taken = g.uses.get(id).map_or(0, |(n, _)| *n);
        if !take {
            return Ok((super::Uses::Left(max.saturating_sub(taken)), None));
        }
        if taken >= max {
            return Ok((super::Uses::Exhausted, None));
        }
        if g.uses.len() >= self.max_entries {
            return Err(StateError::Full(g.uses.len()));
        }
        g.uses.insert(id.to_owned(), (taken + 1, until));
        Ok((super::Uses::Left(max - taken - 1), Some(taken + 1)))
    }

    /// Puts an item in the outbox; refuses past the entry cap.
    pub(super) fn outbox_put_now(&self, item: &super::Outgoing, now: i64) -> Result<(), StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        g.outbox.retain(|_, o| o.until >= now);
        if g.outbox.len() >= self.max_entries && !g.outbox.contains_key(&item.id) {
            return Err(StateError::Full(g.outbox.len()));
        }
        g.outbox.insert(item.id.clone(), item.clone());
        Ok(())
    }

    /// Leases the items due: each comes back with its old `due`, and is held until `now + lease`.
    pub(super) fn outbox_lease_now(
        &self,
        now: i64,
        lease: i64,
        max: usize,
    ) -> Result<Vec<super::Outgoing>, StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let mut due: Vec<&mut super::Outgoing> = g.outbox.values_mut().filter(|o| o.due <= now).collect();
        due.sort_by_key(|o| o.due);
        Ok(due
            .into_iter()
            .take(max)
            .map(|o| {
                let leased = o.clone();
                o.due = now + lease;
                leased
            })
            .collect())
    }

    /// Removes an item; its `until` when it was there.
    pub(super) fn outbox_done_now(&self, id: &str) -> Result<Option<i64>, StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        Ok(g.outbox.remove(id).map(|o| o.until))
    }

    /// Restores a count of uses taken (reloading a durable store).
    pub(super) fn uses_raw(&self, id: &str, taken: u32, until: i64) -> Result<(), StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let kept = g.uses.entry(id.to_owned()).or_insert((taken, until));
        kept.0 = kept.0.max(taken);
        Ok(())
    }

    /// The revocations in force, sorted by key.
    pub(super) fn revocations_now(&self, now: i64) -> Result<Vec<(String, i64)>, StateError> {
        let g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let mut out: Vec<(String, i64)> =
            g.revoked.iter().filter(|(_, until)| **until >= now).map(|(k, u)| (k.clone(), *u)).collect();
        out.sort();
        Ok(out)
    }

    /// Lifts a revocation: its end, if there was one.
    pub(super) fn unrevoke_now(&self, key: &str) -> Result<Option<i64>, StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        Ok(g.revoked.remove(key))
    }

    pub(super) fn revoke_now(&self, key: &str, until: i64, now: i64) -> Result<(), StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        g.revoked.retain(|_, exp| *exp >= now);
        let kept = g.revoked.entry(key.to_owned()).or_insert(until);
        *kept = (*kept).max(until);
        Ok(())
    }
}

impl StateStore for MemoryStore {
    fn record_grant<'a>(&'a self, grant: &'a super::Grant, now: i64) -> StateFuture<'a, ()> {
        let r = self.record_grant_now(grant, now);
        Box::pin(async move { r })
    }
    fn grants(&self, now: i64) -> StateFuture<'_, Vec<super::Grant>> {
        let r = self
            .inner
            .lock()
            .map(|g| {
                let live = g.grants.range((now, Box::default())..);
                live.filter_map(|(exp, bytes)| packed::unpack(*exp, bytes)).collect()
            })
            .map_err(|_| StateError::Unavailable("lock poisoned".into()));
        Box::pin(async move { r })
    }
    fn revoke<'a>(&'a self, key: &'a str, until: i64, now: i64) -> StateFuture<'a, ()> {
        let r = self.revoke_now(key, until, now);
        Box::pin(async move { r })
    }
    fn revoked<'a>(&'a self, keys: &'a [String], now: i64) -> StateFuture<'a, Vec<String>> {
        let r = self
            .inner
            .lock()
            .map(|g| revoked_in(&g.revoked, keys, now))
            .map_err(|_| StateError::Unavailable("lock poisoned".into()));
        Box::pin(async move { r })
    }
    fn spend<'a>(
        &'a self,
        keys: &'a [String],
        id: &'a str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&'a super::Grant>,
    ) -> StateFuture<'a, Spend> {
        let r = self.spend_now(keys, id, until, now, used_since, grant);
        Box::pin(async move { r })
    }
    fn put_nonce<'a>(&'a self, nonce: &'a str, binding: &'a str, until: i64, now: i64) -> StateFuture<'a, ()> {
        let r = self.put_nonce_now(nonce, binding, until, now);
        Box::pin(async move { r })
    }
    fn take_nonce<'a>(&'a self, nonce: &'a str, now: i64) -> StateFuture<'a, Option<String>> {
        let r = self.take_nonce_now(nonce, now);
        Box::pin(async move { r })
    }
    fn mark_used<'a>(
        &'a self,
        id: &'a str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&'a super::Grant>,
    ) -> StateFuture<'a, Mark> {
        let r = self.mark_with_grant(id, until, now, used_since, grant);
        Box::pin(async move { r })
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
        let r = self.consume_now(id, max, take, until, now, issued_at).map(|(u, _)| u);
        Box::pin(async move { r })
    }
    fn revocations(&self, now: i64) -> StateFuture<'_, Vec<(String, i64)>> {
        let r = self.revocations_now(now);
        Box::pin(async move { r })
    }
    fn unrevoke<'a>(&'a self, key: &'a str, now: i64) -> StateFuture<'a, bool> {
        let r = self.unrevoke_now(key).map(|u| u.is_some_and(|u| u >= now));
        Box::pin(async move { r })
    }
    fn outbox_put<'a>(&'a self, item: &'a super::Outgoing, now: i64) -> StateFuture<'a, ()> {
        let r = self.outbox_put_now(item, now);
        Box::pin(async move { r })
    }
    fn outbox_lease(&self, now: i64, lease: i64, max: usize) -> StateFuture<'_, Vec<super::Outgoing>> {
        let r = self.outbox_lease_now(now, lease, max);
        Box::pin(async move { r })
    }
    fn outbox_done<'a>(&'a self, id: &'a str, _now: i64) -> StateFuture<'a, ()> {
        let r = self.outbox_done_now(id).map(|_| ());
        Box::pin(async move { r })
    }
    /// Not ready when full: every fresh exchange would be refused, so a load balancer should
    /// send them elsewhere (fault review, test 9).
    fn ready(&self) -> StateFuture<'_, ()> {
        let r =
            self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into())).and_then(|g| {
                if g.used.len() >= self.max_entries { Err(StateError::Full(g.used.len())) } else { Ok(()) }
            });
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_until_expiry_then_forgotten() {
        let s = MemoryStore::new(10);
        assert_eq!(s.mark("a", 100, 0, i64::MIN), Ok(Mark::Fresh));
        assert_eq!(s.mark("a", 100, 50, i64::MIN), Ok(Mark::AlreadyUsed));
        assert_eq!(s.mark("a", 100, 100, i64::MIN), Ok(Mark::AlreadyUsed));
        assert_eq!(s.mark("a", 300, 101, i64::MIN), Ok(Mark::Fresh));
    }

    /// Expired marks leave without an index: the map never holds more than twice the live
    /// entries (and 1,024), and a live mark is never swept.
    #[test]
    fn expired_marks_are_swept_and_the_map_stays_bounded() {
        let s = MemoryStore::new(1_000_000);
        let mut most = 0;
        for i in 0..20_000i64 {
            // each mark lives 10 seconds: 10 are live at any time
            assert_eq!(s.mark(&format!("id-{i}"), i + 10, i, i64::MIN), Ok(Mark::Fresh));
            most = most.max(s.len());
        }
        assert!(most <= 1_024, "the map held {most} entries for 11 live ones");
        for i in 19_990..20_000i64 {
            assert_eq!(s.mark(&format!("id-{i}"), i + 10, 20_000, i64::MIN), Ok(Mark::AlreadyUsed), "id-{i}");
        }
        // the twin: marks that stay live are all kept, however many
        let s = MemoryStore::new(1_000_000);
        for i in 0..5_000i64 {
            assert_eq!(s.mark(&format!("id-{i}"), 1_000_000, i, i64::MIN), Ok(Mark::Fresh));
        }
        assert_eq!(s.len(), 5_000);
        assert_eq!(s.mark("id-0", 1_000_000, 6_000, i64::MIN), Ok(Mark::AlreadyUsed));
    }

    #[test]
    fn ids_are_kept_as_32_bytes_and_stay_distinct() {
        let hex = "00ff".repeat(16);
        assert_eq!(used_key(&hex)[..2], [0x00, 0xff]);
        assert_ne!(used_key(&hex), used_key(&hex.to_uppercase()), "not hex to this store: hashed");
        assert_ne!(used_key("a"), used_key("b"));
        let s = MemoryStore::new(10);
        assert_eq!(s.mark(&hex, 100, 0, i64::MIN), Ok(Mark::Fresh));
        assert_eq!(s.mark(&hex, 100, 1, i64::MIN), Ok(Mark::AlreadyUsed));
        assert_eq!(s.mark("attestation-doc-id", 100, 1, i64::MIN), Ok(Mark::Fresh));
        assert_eq!(s.mark("attestation-doc-id", 100, 2, i64::MIN), Ok(Mark::AlreadyUsed));
    }

    #[test]
    fn grants_leave_when_they_expire() {
        let s = MemoryStore::new(2);
        let grant = crate::state::Grant::for_test;
        s.record_grant_now(&grant("a", 100), 0).unwrap();
        s.record_grant_now(&grant("b", 200), 0).unwrap();
        assert_eq!(s.record_grant_now(&grant("c", 300), 50), Err(StateError::Full(2)));
        s.record_grant_now(&grant("c", 300), 101).unwrap();
        let ids: Vec<String> = ready(s.grants(101)).unwrap().into_iter().map(|g| g.id).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(s.inner.lock().unwrap().grants.len(), 2, "a's room was taken back");
    }

    /// A packed grant reads back whole, with and without its optional fields, whatever its text.
    #[test]
    fn a_packed_grant_reads_back_whole() {
        let mut g = crate::state::Grant::for_test("jti-é", 900);
        g.subject = "repo:acme/app:ref:refs/heads/main".into();
        g.issued_at = -5;
        assert_eq!(packed::unpack(900, &packed::pack(&g)), Some(g.clone()));
        g.audience = Some("https://partner.example".into());
        g.session = Some(String::new());
        g.task = "日本".into();
        assert_eq!(packed::unpack(900, &packed::pack(&g)), Some(g.clone()));
        // the twin: a cut record reads as nothing, never as another grant
        let bytes = packed::pack(&g);
        assert_eq!(packed::unpack(900, &bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn nonces_are_taken_once_and_expire() {
        let s = MemoryStore::new(100);
        s.put_nonce_now("n1", "role-a", 60, 0).unwrap();
        s.put_nonce_now("n2", "role-a", 60, 0).unwrap();
        assert_eq!(s.take_nonce_now("n1", 10), Ok(Some("role-a".into())));
        assert_eq!(s.take_nonce_now("n1", 11), Ok(None), "single use");
        assert_eq!(s.take_nonce_now("n2", 61), Ok(None), "expired");
        assert_eq!(s.take_nonce_now("never", 1), Ok(None));
    }

    #[test]
    fn full_store_refuses_instead_of_evicting_live_entries() {
        let s = MemoryStore::new(2);
        assert_eq!(s.mark("a", 100, 0, i64::MIN), Ok(Mark::Fresh));
        assert_eq!(s.mark("b", 100, 0, i64::MIN), Ok(Mark::Fresh));
        assert_eq!(s.mark("c", 100, 0, i64::MIN), Err(StateError::Full(2)));
        assert_eq!(s.mark("a", 100, 1, i64::MIN), Ok(Mark::AlreadyUsed));
        // once they expire there is room again
        assert_eq!(s.mark("c", 300, 101, i64::MIN), Ok(Mark::Fresh));
        assert_eq!(s.len(), 1);
    }

    /// A new revocation never drops a live one (the table is purged of expired ones only), and
    /// each lasts until its end, inclusive.
    #[test]
    fn revocations_accumulate_and_expire_each_at_its_end() {
        let s = MemoryStore::new(100);
        let keys: Vec<String> = ["task:a", "task:b", "role:c"].map(String::from).to_vec();
        let revoked = |now| ready(s.revoked(&keys, now));
        ready(s.revoke("task:a", 100, 0)).unwrap();
        ready(s.revoke("task:b", 200, 50)).unwrap();
        assert_eq!(revoked(60), Ok(vec!["task:a".to_owned(), "task:b".to_owned()]));
        assert_eq!(revoked(100), Ok(vec!["task:a".to_owned(), "task:b".to_owned()]));
        ready(s.revoke("role:c", 300, 101)).unwrap();
        assert_eq!(revoked(101), Ok(vec!["task:b".to_owned(), "role:c".to_owned()]));
        assert_eq!(revoked(301), Ok(vec![]));
    }

    /// Runs a store future to completion (the memory store's futures are ready at once).
    fn ready<T>(f: super::super::StateFuture<'_, T>) -> Result<T, StateError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StateError::Unavailable(e.to_string()))?
            .block_on(f)
    }

    /// Exactly `max` takes win; counting takes nothing; a store whose memory began after the
    /// grant was issued answers `Lost` (its count may be gone).
    #[test]
    fn uses_are_taken_exactly_max_times() {
        use super::super::Uses;
        let s = MemoryStore::new(10);
        assert_eq!(ready(s.consume("j", 2, false, 100, 0, 0)), Ok(Uses::Left(2)));
        assert_eq!(ready(s.consume("j", 2, true, 100, 0, 0)), Ok(Uses::Left(1)));
        assert_eq!(ready(s.consume("j", 2, true, 100, 0, 0)), Ok(Uses::Left(0)));
        assert_eq!(ready(s.consume("j", 2, true, 100, 0, 0)), Ok(Uses::Exhausted));
        assert_eq!(ready(s.consume("j", 2, false, 100, 0, 0)), Ok(Uses::Left(0)));
        assert_eq!(ready(s.consume("other", 2, true, 100, 0, 0)), Ok(Uses::Left(1)), "counted per grant");
        let reset = MemoryStore::with_epoch(10, Some(50));
        assert_eq!(ready(reset.consume("j", 2, true, 100, 60, 40)), Ok(Uses::Lost));
        assert_eq!(ready(reset.consume("j", 2, true, 100, 60, 50)), Ok(Uses::Left(1)), "issued after the epoch");
    }

    /// Outstanding nonces are bounded too (a tenth of `max_entries`, here 2: the table may hold 3
    /// before a put looks): a full table refuses rather than dropping a live nonce, keeps one
    /// that expires this very second, and makes room once they are past.
    #[test]
    fn the_nonce_table_is_bounded_and_refuses_when_full() {
        let s = MemoryStore::new(20);
        for n in ["n1", "n2", "n3"] {
            assert_eq!(s.put_nonce_now(n, "", 60, 0), Ok(()), "{n}");
        }
        assert_eq!(s.put_nonce_now("n4", "", 60, 0), Err(StateError::Full(3)));
        assert_eq!(s.put_nonce_now("n4", "", 120, 60), Err(StateError::Full(3)), "live until the end of second 60");
        assert_eq!(s.take_nonce_now("n2", 60), Ok(Some(String::new())), "no live nonce was dropped");
        assert_eq!(s.put_nonce_now("n2", "", 120, 60), Ok(()));
        assert_eq!(s.put_nonce_now("n5", "", 180, 61), Ok(()), "the expired ones make room");
        assert_eq!(s.put_nonce_now("n6", "", 62, 61), Ok(()));
        // at 63, n6 is past: purged, the table is back at its bound, which is still room
        assert_eq!(s.put_nonce_now("n7", "", 180, 63), Ok(()));
        assert_eq!(s.take_nonce_now("n5", 63), Ok(Some(String::new())));
    }

    /// A full grant table refuses before the mark: the assertion is not spent (review S6); and a
    /// full store is not ready. The twins: with room, the mark and the grant are made; emptier,
    /// ready.
    #[test]
    fn a_full_grant_table_refuses_before_spending() {
        let s = MemoryStore::new(1);
        let grant = |id: &str| crate::state::Grant::for_test(id, 100);
        assert!(ready(s.ready()).is_ok());
        assert_eq!(ready(s.mark_used("a", 100, 0, 0, Some(&grant("g1")))), Ok(Mark::Fresh));
        assert_eq!(ready(s.ready()), Err(StateError::Full(1)));
        let s2 = MemoryStore::new(2);
        s2.record_grant_now(&grant("g0"), 0).unwrap();
        s2.record_grant_now(&grant("g1"), 0).unwrap();
        assert_eq!(ready(s2.mark_used("b", 100, 0, 0, Some(&grant("g2")))), Err(StateError::Full(2)));
        assert_eq!(s2.mark("b", 100, 1, i64::MIN), Ok(Mark::Fresh), "b was not spent by the refusal");
    }
}

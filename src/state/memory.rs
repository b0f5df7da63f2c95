//! In-memory state for one replica. Entries leave only when their assertion has expired: the store
//! never evicts a live entry to make room (that would reopen the replay window). At the configured
//! cap it refuses new marks (`Full`), and the exchange fails closed.

use super::{Mark, StateError, StateFuture, StateStore};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Inner {
    used: HashMap<String, i64>,
    by_expiry: BinaryHeap<Reverse<(i64, String)>>,
}

/// Used-assertion ids in a map, with a min-heap on expiry so purging is cheap.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_entries: usize,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> Self {
        MemoryStore { inner: Mutex::new(Inner::default()), max_entries }
    }

    fn mark(&self, id: &str, until: i64, now: i64) -> Result<Mark, StateError> {
        let mut g = self.inner.lock().map_err(|_| StateError::Unavailable("lock poisoned".into()))?;
        let inner = &mut *g;
        while let Some(Reverse((exp, _))) = inner.by_expiry.peek() {
            if *exp >= now {
                break;
            }
            if let Some(Reverse((_, old))) = inner.by_expiry.pop()
                && inner.used.get(&old).is_some_and(|e| *e < now)
            {
                inner.used.remove(&old);
            }
        }
        if inner.used.get(id).is_some_and(|e| *e >= now) {
            return Ok(Mark::AlreadyUsed);
        }
        if inner.used.len() >= self.max_entries {
            return Err(StateError::Full(inner.used.len()));
        }
        inner.used.insert(id.to_owned(), until);
        inner.by_expiry.push(Reverse((until, id.to_owned())));
        Ok(Mark::Fresh)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.used.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for MemoryStore {
    fn mark_used<'a>(&'a self, id: &'a str, until: i64, now: i64) -> StateFuture<'a, Mark> {
        let r = self.mark(id, until, now);
        Box::pin(async move { r })
    }
    fn ready(&self) -> StateFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_until_expiry_then_forgotten() {
        let s = MemoryStore::new(10);
        assert_eq!(s.mark("a", 100, 0), Ok(Mark::Fresh));
        assert_eq!(s.mark("a", 100, 50), Ok(Mark::AlreadyUsed));
        assert_eq!(s.mark("a", 100, 100), Ok(Mark::AlreadyUsed));
        assert_eq!(s.mark("a", 300, 101), Ok(Mark::Fresh));
    }

    #[test]
    fn full_store_refuses_instead_of_evicting_live_entries() {
        let s = MemoryStore::new(2);
        assert_eq!(s.mark("a", 100, 0), Ok(Mark::Fresh));
        assert_eq!(s.mark("b", 100, 0), Ok(Mark::Fresh));
        assert_eq!(s.mark("c", 100, 0), Err(StateError::Full(2)));
        assert_eq!(s.mark("a", 100, 1), Ok(Mark::AlreadyUsed));
        // once they expire there is room again
        assert_eq!(s.mark("c", 300, 101), Ok(Mark::Fresh));
        assert_eq!(s.len(), 1);
    }
}

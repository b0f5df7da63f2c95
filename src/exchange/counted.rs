//! Refusals counted rather than recorded one by one (review C7): a flood must not fill the disk
//! that allow records need. Refusals over the rate limit are always counted; other deny records
//! draw on a budget ([`DENY_RECORDS_PER_SECOND`], bursts of [`DENY_RECORDS_BURST`]) and, once it
//! is spent, are counted too. Every [`COUNTED_REFUSALS_EVERY`] seconds the counts become one
//! `deny` record per reason. Allow records are never counted: each is written, durably.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// How often counted refusals are written as records.
pub const COUNTED_REFUSALS_EVERY: i64 = 10;
/// Deny records written one by one, per second, in the long run.
pub(super) const DENY_RECORDS_PER_SECOND: f64 = 100.0;
/// Deny records written one by one in a burst.
pub(super) const DENY_RECORDS_BURST: f64 = 200.0;

#[derive(Debug)]
struct Inner {
    /// When the counting began (the first refusal counted since the last write).
    since: i64,
    by_reason: BTreeMap<&'static str, u64>,
    tokens: f64,
    refilled: Instant,
}

/// The counts, and the budget of deny records.
#[derive(Debug)]
pub(super) struct Counted(Mutex<Inner>);

impl Default for Counted {
    fn default() -> Self {
        Counted(Mutex::new(Inner {
            since: 0,
            by_reason: BTreeMap::new(),
            tokens: DENY_RECORDS_BURST,
            refilled: Instant::now(),
        }))
    }
}

impl Counted {
    /// Counts a refusal of `reason` at `now`; whether the counts are due to be written.
    pub(super) fn count(&self, reason: &'static str, now: i64) -> bool {
        let Ok(mut g) = self.0.lock() else { return false };
        if g.by_reason.is_empty() {
            g.since = now;
        }
        *g.by_reason.entry(reason).or_default() += 1;
        now - g.since >= COUNTED_REFUSALS_EVERY
    }

    /// May one more deny record be written one by one now?
    pub(super) fn may_record(&self) -> bool {
        let Ok(mut g) = self.0.lock() else { return true };
        let now = Instant::now();
        let refill = now.duration_since(g.refilled).as_secs_f64() * DENY_RECORDS_PER_SECOND;
        g.tokens = (g.tokens + refill).min(DENY_RECORDS_BURST);
        g.refilled = now;
        if g.tokens >= 1.0 {
            g.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The counts since they were last taken (and when counting began), emptied.
    pub(super) fn take(&self, now: i64) -> Option<(i64, BTreeMap<&'static str, u64>)> {
        let mut g = self.0.lock().ok()?;
        if g.by_reason.is_empty() {
            return None;
        }
        let since = std::mem::replace(&mut g.since, now);
        Some((since, std::mem::take(&mut g.by_reason)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_runs_out_and_counts_are_taken_once() {
        let c = Counted::default();
        let written = (0..1000).filter(|_| c.may_record()).count();
        assert!((200..=210).contains(&written), "the burst, and what refilled meanwhile: {written}");
        assert!(!c.count("malformed_token", 100));
        assert!(!c.count("rate_limited", 105));
        assert!(c.count("rate_limited", 110), "due after the interval");
        let (since, by) = c.take(110).unwrap();
        assert_eq!(since, 100);
        assert_eq!(by, BTreeMap::from([("malformed_token", 1), ("rate_limited", 2)]));
        assert!(c.take(111).is_none(), "taken once");
    }
}

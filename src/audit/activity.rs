//! What the audit log says about use, kept at hand for the inventory page: the recent denials
//! (reason, decision id) and, per role, when it last granted and to which workloads.
//!
//! It is read from the records this broker wrote: at start from the newest part of its log set
//! (at most [`SEED_BYTES`], newest file first), then from every record as it is written. So it is
//! this replica's view (each replica has its own log), and a role shown as unused has not granted
//! in that much of the log: the page says since when.

use super::{AuditRecord, Outcome};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

/// How many recent denials are kept.
pub const DENIALS: usize = 50;
/// How many recent workloads are kept per role.
pub const WORKLOADS: usize = 5;
/// How much of the log set is read at start.
pub const SEED_BYTES: u64 = 32 << 20;

/// A refused exchange, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub ts: i64,
    pub role: Option<String>,
    pub provider: Option<String>,
    pub subject: Option<String>,
    pub reason: String,
    pub detail: Option<String>,
    pub decision_id: String,
}

/// A role's use: its last grant, and the workloads (`provider` and subject) it granted to last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleUse {
    pub last: i64,
    /// Most recent first: (provider, subject, when).
    pub workloads: Vec<(String, String, i64)>,
}

#[derive(Debug, Default)]
struct Inner {
    denials: VecDeque<Denial>,
    roles: HashMap<String, RoleUse>,
    /// The oldest record seen (what "unused" is measured against).
    since: Option<i64>,
}

/// The use the log shows, shared by the writer's callers and the page.
#[derive(Debug, Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

/// The fields of a record the activity reads (from a record written now, or a line of the log).
struct Seen<'a> {
    decision: &'a str,
    ts: i64,
    role: Option<&'a str>,
    provider: Option<&'a str>,
    subject: Option<&'a str>,
    reason: Option<&'a str>,
    detail: Option<&'a str>,
    decision_id: &'a str,
}

impl Activity {
    /// A record this broker wrote.
    pub fn observe(&self, rec: &AuditRecord) {
        let decision = match rec.decision {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            _ => return,
        };
        self.seen(&Seen {
            decision,
            ts: rec.ts,
            role: rec.role.as_deref(),
            provider: rec.provider.as_deref(),
            subject: rec.subject.as_deref(),
            reason: rec.reason,
            detail: rec.detail.as_deref(),
            decision_id: &rec.decision_id,
        });
    }

    fn seen(&self, s: &Seen<'_>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.since = Some(inner.since.map_or(s.ts, |t| t.min(s.ts)));
        match s.decision {
            "allow" => {
                let (Some(role), Some(subject)) = (s.role, s.subject) else { return };
                let provider = s.provider.unwrap_or_default();
                let used = inner.roles.entry(role.to_owned()).or_default();
                used.last = used.last.max(s.ts);
                used.workloads.retain(|(p, w, _)| !(p == provider && w == subject));
                used.workloads.push((provider.to_owned(), subject.to_owned(), s.ts));
                used.workloads.sort_by_key(|w| std::cmp::Reverse(w.2));
                used.workloads.truncate(WORKLOADS);
            }
            "deny" => {
                let denial = Denial {
                    ts: s.ts,
                    role: s.role.map(str::to_owned),
                    provider: s.provider.map(str::to_owned),
                    subject: s.subject.map(str::to_owned),
                    reason: s.reason.unwrap_or("denied").to_owned(),
                    detail: s.detail.map(str::to_owned),
                    decision_id: s.decision_id.to_owned(),
                };
                // kept newest last, in time order (a seeded older record goes before newer ones)
                let at = inner.denials.partition_point(|d| d.ts <= denial.ts);
                inner.denials.insert(at, denial);
                while inner.denials.len() > DENIALS {
                    inner.denials.pop_front();
                }
            }
            _ => {}
        }
    }

    /// Reads the newest records of the log set (`files` oldest first), up to [`SEED_BYTES`].
    pub fn seed(&self, files: &[std::path::PathBuf]) {
        let mut budget = SEED_BYTES;
        for file in files.iter().rev() {
            if budget == 0 {
                break;
            }
            budget = budget.saturating_sub(self.seed_file(file, budget));
        }
    }

    /// Reads at most `budget` bytes from the end of `path`; returns how many it read.
    fn seed_file(&self, path: &Path, budget: u64) -> u64 {
        let Ok(mut f) = std::fs::File::open(path) else { return 0 };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(budget);
        if f.seek(SeekFrom::Start(start)).is_err() {
            return 0;
        }
        let mut text = Vec::new();
        if f.take(budget).read_to_end(&mut text).is_err() {
            return 0;
        }
        let mut lines = text.split(|b| *b == b'\n');
        if start > 0 {
            lines.next(); // a partial line
        }
        for line in lines {
            let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
            let s = |k: &str| v.get(k).and_then(Value::as_str);
            let (Some(decision), Some(ts)) = (s("decision"), v.get("ts").and_then(Value::as_i64)) else {
                continue;
            };
            self.seen(&Seen {
                decision,
                ts,
                role: s("role"),
                provider: s("provider"),
                subject: s("subject"),
                reason: s("reason"),
                detail: s("detail"),
                decision_id: s("decision_id").unwrap_or_default(),
            });
        }
        len - start
    }

    /// The recent denials, newest first; the roles' use; the oldest record seen.
    pub fn snapshot(&self) -> (Vec<Denial>, HashMap<String, RoleUse>, Option<i64>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.denials.iter().rev().cloned().collect(), inner.roles.clone(), inner.since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(decision: Outcome, ts: i64, role: &str, subject: &str) -> AuditRecord {
        AuditRecord {
            ts,
            decision,
            role: Some(role.into()),
            provider: Some("gh".into()),
            subject: Some(subject.into()),
            reason: (decision == Outcome::Deny).then_some("policy_denied"),
            decision_id: format!("d{ts}"),
            ..Default::default()
        }
    }

    #[test]
    fn grants_and_denials_are_kept_newest_first_and_bounded() {
        let a = Activity::default();
        for i in 0..(DENIALS as i64 + 5) {
            a.observe(&rec(Outcome::Deny, 100 + i, "deploy", "s"));
        }
        for (i, w) in ["w1", "w2", "w1", "w3", "w4", "w5", "w6"].iter().enumerate() {
            a.observe(&rec(Outcome::Allow, 200 + i as i64, "deploy", w));
        }
        a.observe(&rec(Outcome::Revoke, 999, "deploy", "x"));
        let (denials, roles, since) = a.snapshot();
        assert_eq!(denials.len(), DENIALS);
        assert_eq!(denials[0].ts, 100 + DENIALS as i64 + 4);
        assert_eq!(denials[0].reason, "policy_denied");
        let used = &roles["deploy"];
        assert_eq!(used.last, 206);
        let names: Vec<&str> = used.workloads.iter().map(|(_, w, _)| w.as_str()).collect();
        assert_eq!(names, ["w6", "w5", "w4", "w3", "w1"]);
        assert_eq!(since, Some(100));
    }

    #[test]
    fn the_log_seeds_it_from_its_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let line = |r: &AuditRecord| format!("{}\n", serde_json::to_string(r).unwrap());
        let mut text = String::new();
        for i in 0..100 {
            text += &line(&rec(Outcome::Allow, 1000 + i, "old", "w"));
        }
        text += &line(&rec(Outcome::Deny, 2000, "deploy", "w"));
        text += &line(&rec(Outcome::Allow, 2001, "deploy", "w"));
        std::fs::write(&log, &text).unwrap();
        let a = Activity::default();
        a.seed(std::slice::from_ref(&log));
        let (denials, roles, _) = a.snapshot();
        assert_eq!(denials.len(), 1);
        assert_eq!(roles["deploy"].last, 2001);
        assert_eq!(roles["old"].last, 1099);
        // a budget that reaches only the last records: the old role is not seen
        let b = Activity::default();
        let tail = line(&rec(Outcome::Allow, 2001, "deploy", "w")).len() as u64 + 2;
        b.seed_file(&log, tail);
        assert!(!b.snapshot().1.contains_key("old"));
        assert!(b.snapshot().1.contains_key("deploy"));
    }
}

//! Broker state that must be shared and never guessed: which assertions were already used, the
//! outstanding broker nonces, the revocations in force and the inventory of grants. Every
//! check-and-set is one atomic operation; a store that cannot answer makes the exchange fail
//! closed.

pub mod file;
mod journal;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
    #[error("replay store is full ({0} live entries); refusing rather than forgetting")]
    Full(usize),
    /// The shared state lost its data at this epoch, revocations with it: none is answered
    /// until an admin has re-asserted them and confirmed.
    #[error(
        "the shared state lost its data (epoch {0}); revocations are not answered until an admin re-asserts them and confirms (POST /v1/state/confirm)"
    )]
    RevocationsLost(String),
}

/// What marking an assertion as used found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// First use: it is now marked until the given time.
    Fresh,
    /// It had been used before.
    AlreadyUsed,
    /// The store lost its memory (a Redis restarted without persistence) and started a new epoch
    /// at `since`; an assertion issued before then may have been used before and is refused.
    EpochReset { since: i64 },
}

/// What spending an assertion found ([`StateStore::spend`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spend {
    /// These revocation keys are in force: nothing was marked, nothing recorded.
    Revoked(Vec<String>),
    /// None was: what marking the assertion found.
    Marked(Mark),
}

/// What taking (or counting) a use of a use-limited grant found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uses {
    /// Uses left: after this one when a use was taken.
    Left(u32),
    /// Every use was taken already: none was taken now.
    Exhausted,
    /// The store lost its memory after the grant was issued: its count may be lost too, so no
    /// use is answered (fail closed, as a replay mark would be).
    Lost,
}

/// A message waiting in the durable outbox: a SET to push, an IAM call to make. Delivered at
/// least once, by whichever broker leases it when it is due; given up after `until`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outgoing {
    pub id: String,
    /// When it is next tried (UNIX seconds).
    pub due: i64,
    /// When it is given up.
    pub until: i64,
    pub attempts: u32,
    /// What to deliver (the outbox's own JSON: `exchange/push.rs`).
    pub body: serde_json::Value,
}

/// One credential handed out, for the inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// The credential's `jti` (grant id).
    pub id: String,
    pub subject: String,
    pub task: String,
    pub role: String,
    pub kind: String,
    pub issued_at: i64,
    pub expires_at: i64,
    /// The assertion's issuer (a revocation by `issuer` ends the grant).
    #[serde(default)]
    pub issuer: String,
    /// The provider that verified the assertion: the namespace of its task and subject.
    #[serde(default)]
    pub provider: String,
    /// A broker JWT's audience (who is told when it is revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// An AWS session's name (what a deny at IAM matches), when its role ends sessions on revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Grant {
    /// A grant of nobody in particular, for the stores' own tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, expires_at: i64) -> Grant {
        Grant {
            id: id.into(),
            subject: "s".into(),
            task: "t".into(),
            role: "r".into(),
            kind: "jwt".into(),
            issued_at: 0,
            expires_at,
            issuer: "https://issuer.example".into(),
            provider: "p".into(),
            audience: None,
            session: None,
        }
    }

    /// The revocation keys that end this grant: its `jti`, task, subject, role and issuer (the
    /// keys introspection checks).
    pub fn revocation_keys(&self) -> [RevocationKey; 5] {
        [
            RevocationKey::Jti(self.id.clone()),
            RevocationKey::Task { provider: self.provider.clone(), task: self.task.clone() },
            RevocationKey::Subject { provider: self.provider.clone(), subject: self.subject.clone() },
            RevocationKey::Role(self.role.clone()),
            RevocationKey::Issuer(self.issuer.clone()),
        ]
    }
}

/// What a revocation names, as stored: `task:PROVIDER:ID`, `jti:ID`, `subject:PROVIDER:S`,
/// `role:R`, `issuer:I`. Tasks and subjects are the provider's own strings (a generic OIDC
/// provider's task is the token's `jti`, which its issuer chooses freely): each lives in its
/// provider's namespace, so one provider's workload can never end another's task (review C3).
/// Provider names cannot hold `:`, so the key reads one way only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationKey {
    Task { provider: String, task: String },
    Jti(String),
    Subject { provider: String, subject: String },
    Role(String),
    Issuer(String),
}

impl std::fmt::Display for RevocationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevocationKey::Task { provider, task } => write!(f, "task:{provider}:{task}"),
            RevocationKey::Jti(v) => write!(f, "jti:{v}"),
            RevocationKey::Subject { provider, subject } => write!(f, "subject:{provider}:{subject}"),
            RevocationKey::Role(v) => write!(f, "role:{v}"),
            RevocationKey::Issuer(v) => write!(f, "issuer:{v}"),
        }
    }
}

pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// Shared broker state.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Atomically marks `id` used until `until` (UNIX seconds) unless it already is; an
    /// assertion that may have been used before the store's current epoch (`used_since`, the
    /// earliest moment the broker could have accepted it: its `iat` less the leeway, less one
    /// for whole seconds) is refused.
    /// With `grant`, a fresh mark also records the grant, in the same atomic step (one round trip).
    fn mark_used<'a>(
        &'a self,
        id: &'a str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&'a Grant>,
    ) -> StateFuture<'a, Mark>;
    /// The revocation check and the replay mark (and, with `grant`, the grant record) in one
    /// atomic step, one round trip: which of `keys` are revoked now and, when none is,
    /// [`StateStore::mark_used`]. A revoked workload's assertion is not spent.
    fn spend<'a>(
        &'a self,
        keys: &'a [String],
        id: &'a str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&'a Grant>,
    ) -> StateFuture<'a, Spend>;
    /// Is the store answering?
    fn ready(&self) -> StateFuture<'_, ()>;
    /// Stores a broker nonce, bound to `binding` (the role it was asked for), until `until`.
    fn put_nonce<'a>(&'a self, nonce: &'a str, binding: &'a str, until: i64, now: i64) -> StateFuture<'a, ()>;
    /// Takes a nonce atomically: its binding if it was outstanding and unexpired, else `None`.
    /// A nonce is never returned twice.
    fn take_nonce<'a>(&'a self, nonce: &'a str, now: i64) -> StateFuture<'a, Option<String>>;
    /// Records a grant until it expires.
    fn record_grant<'a>(&'a self, grant: &'a Grant, now: i64) -> StateFuture<'a, ()>;
    /// The grants not yet expired.
    fn grants(&self, now: i64) -> StateFuture<'_, Vec<Grant>>;
    /// Revokes `key` (`task:ID`, `jti:ID`, `subject:S`, `role:R`, `issuer:I`) until `until`.
    fn revoke<'a>(&'a self, key: &'a str, until: i64, now: i64) -> StateFuture<'a, ()>;
    /// Which of `keys` are revoked now.
    fn revoked<'a>(&'a self, keys: &'a [String], now: i64) -> StateFuture<'a, Vec<String>>;
    /// Takes one use of grant `id` (issued at `issued_at`, allowed `max` uses, kept until
    /// `until`) atomically, or with `take == false` only counts what is left. Exactly `max`
    /// takes across every replica answer [`Uses::Left`].
    fn consume<'a>(
        &'a self,
        id: &'a str,
        max: u32,
        take: bool,
        until: i64,
        now: i64,
        issued_at: i64,
    ) -> StateFuture<'a, Uses>;
    /// The revocations in force: `(key, until)`, sorted by key.
    fn revocations(&self, now: i64) -> StateFuture<'_, Vec<(String, i64)>>;
    /// Lifts a revocation (an admin's mistake undone); whether there was one.
    fn unrevoke<'a>(&'a self, key: &'a str, now: i64) -> StateFuture<'a, bool>;
    /// Puts `item` in the outbox (or replaces it: a retry with its new `due`).
    fn outbox_put<'a>(&'a self, item: &'a Outgoing, now: i64) -> StateFuture<'a, ()>;
    /// Leases up to `max` items due now: each is returned once and not again before `now +
    /// lease` (a broker that dies holding one leaves it to be leased again then).
    fn outbox_lease(&self, now: i64, lease: i64, max: usize) -> StateFuture<'_, Vec<Outgoing>>;
    /// Removes a delivered (or given up) item.
    fn outbox_done<'a>(&'a self, id: &'a str, now: i64) -> StateFuture<'a, ()>;
    /// An admin confirms that the revocations lost with the shared state have been re-asserted:
    /// revocations are answered again, under the store's epoch (returned; `None` for a store
    /// whose revocations survive on their own and never need this).
    fn confirm_reset(&self, _now: i64) -> StateFuture<'_, Option<i64>> {
        Box::pin(async { Ok(None) })
    }
}

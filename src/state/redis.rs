//! Shared state in Redis (or Valkey, or Redis Cluster) for several replicas.
//!
//! - Used assertions: `SET key 1 NX PXAT exp` — one atomic command decides first use across all
//!   replicas, in one round trip (a Lua script that also checks the epoch marker and, for a fresh
//!   mark, records the grant in the inventory). One call at a time carries every mark waiting
//!   when it leaves ([`MarkQueue`]): concurrent exchanges share the script's call and the round
//!   trip, each mark decided on its own, in order.
//! - A Redis that lost its data (restart without persistence, failover to an empty replica) must
//!   not reopen replays: an epoch marker (never expiring, whole seconds) is set when the store
//!   first opens; when a mark finds it gone, a new epoch starts *now*, and assertions issued
//!   before that second are refused (`replay_state_reset`) until they expire. The same holds at
//!   the very first start against an empty Redis: assertions issued before it are refused.
//! - Nonces: `SET nonce binding NX PXAT exp` and `GETDEL`, so a nonce is taken once.
//! - Every key carries the `{eph}` hash tag: the script's keys share a slot, so Redis Cluster
//!   works (all state lives in one slot; size it accordingly).
//! - Every call is bounded by a timeout; a store that does not answer fails the exchange closed.
//! - Run Redis with `maxmemory-policy noeviction`: eviction of a used-assertion key would reopen
//!   its replay window without the epoch marker noticing.

use super::{Mark, StateError, StateFuture, StateStore};
use redis::aio::ConnectionManager;
use std::time::Duration;
use tokio::sync::OnceCell;

// Marks, in the order given, each as one atomic check-and-set (the script as a whole is atomic
// too): the marks of concurrent exchanges waiting at the same moment go in one call, so Redis runs
// one script and one round trip for all of them (as group commit shares a flush).
// KEYS: epoch marker, mark counter, confirmed epoch, grant index; then, per mark, its used key,
// its grant key and the revocation keys to check.
// ARGV: the number of marks; then, per mark (eleven): now, the number of revocation keys, used
// PXAT ms, used_since, grant body, grant PXAT ms, grant score, grant id, the highest counter its
// broker had seen, the epoch it last saw, `1` to check revocations first.
// With the check (a spend: the exchange's one round trip), nothing is marked when revocations
// cannot be trusted (the same verdict as `RedisStore::revocations_hold`: code 3) or one of the
// keys is revoked (code 4, with the 1-based positions of those revoked).
// The counter grows with every mark and revocation; one below what a broker has seen, under the
// epoch it saw, means the data was rolled back (a restore from an older snapshot, a failover to a
// lagging replica: review B4), which is a loss like any other: a new epoch starts. (Under another
// epoch the loss is known already; the counter is only lifted past what was seen.)
// Returns, per mark, {code, epoch, counter, confirmed epoch, revoked positions}.
const MARK_SCRIPT: &str = r#"
local out = {}
local k, a = 5, 2
-- the marker, the counter and the confirmed epoch are read once: within the script only its
-- own writes change them, kept here and written once at the end
local epoch = redis.call('GET', KEYS[1])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local confirmed = redis.call('GET', KEYS[3]) or ''
local epoch_set, seq_set, trim = false, false, nil
for m = 1, tonumber(ARGV[1]) do
  local now, nrev = ARGV[a], tonumber(ARGV[a + 1])
  local seen = tonumber(ARGV[a + 8])
  local rolled_back = epoch and epoch == ARGV[a + 9] and seq < seen
  local reply = nil
  if ARGV[a + 10] == '1' then
    if not epoch or rolled_back or confirmed ~= epoch then
      reply = {3, epoch or '', seq, confirmed, {}}
    else
      -- one EXISTS for all the keys; which of them are revoked is asked only when one is
      local revoked = {}
      if nrev > 0 and redis.call('EXISTS', unpack(KEYS, k + 2, k + 1 + nrev)) > 0 then
        for i = k + 2, k + 1 + nrev do
          if redis.call('EXISTS', KEYS[i]) == 1 then
            table.insert(revoked, i - k - 1)
          end
        end
      end
      if #revoked > 0 then
        reply = {4, epoch, seq, confirmed, revoked}
      end
    end
  end
  if not reply then
    if not epoch or rolled_back then
      epoch, epoch_set = now, true
    end
    if seq < seen then
      seq = seen
    end
    seq, seq_set = seq + 1, true
    if tonumber(ARGV[a + 3]) < tonumber(epoch) then
      reply = {2, epoch, seq, '', {}}
    elseif redis.call('SET', KEYS[k], '1', 'NX', 'PXAT', ARGV[a + 2]) then
      if ARGV[a + 4] ~= '' then
        redis.call('SET', KEYS[k + 1], ARGV[a + 4], 'PXAT', ARGV[a + 5])
        redis.call('ZADD', KEYS[4], ARGV[a + 6], ARGV[a + 7])
        if not trim or tonumber(now) > tonumber(trim) then
          trim = now
        end
      end
      reply = {1, epoch, seq, '', {}}
    else
      reply = {0, epoch, seq, '', {}}
    end
  end
  out[m] = reply
  k = k + 2 + nrev
  a = a + 11
end
if epoch_set then
  redis.call('SET', KEYS[1], epoch)
end
if seq_set then
  redis.call('SET', KEYS[2], string.format('%d', seq))
end
-- the grants expired by the latest of the marks' times leave the index, once per call
if trim then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. trim)
end
return out
"#;

/// Most marks sent in one call.
const MARK_BATCH: usize = 64;

/// What the mark script answers for one mark: code, epoch, counter, confirmed epoch, revoked.
type MarkReply = (i64, String, i64, String, Vec<usize>);

/// One mark waiting for the call that carries it.
struct PendingMark {
    keys: Vec<String>,
    /// (each as sent: Redis arguments are strings)
    args: Vec<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<Result<MarkReply, StateError>>,
}

/// The marks waiting for a call, and whether a task is sending them.
#[derive(Default)]
struct Queue {
    waiting: Vec<PendingMark>,
    sending: bool,
}

/// The marks waiting, and whether a task is sending them: one call at a time carries every mark
/// that waits when it leaves (a task of its own, so an exchange that goes away takes nobody's
/// marks with it).
struct MarkQueue {
    queue: std::sync::Mutex<Queue>,
    script: redis::Script,
    /// Epoch marker, counter, confirmed epoch, grant index.
    shared: [String; 4],
    timeout: Duration,
}

impl MarkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends what waits, call after call, until nothing does.
    async fn run(self: std::sync::Arc<Self>, mut conn: ConnectionManager) {
        // should this task end early (a panic), the next mark starts another
        struct Sending<'a>(&'a MarkQueue, bool);
        impl Drop for Sending<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.lock().sending = false;
                }
            }
        }
        let mut sending = Sending(&self, true);
        loop {
            let batch: Vec<PendingMark> = {
                let mut q = self.lock();
                if q.waiting.is_empty() {
                    q.sending = false;
                    sending.1 = false;
                    return;
                }
                let n = q.waiting.len().min(MARK_BATCH);
                q.waiting.drain(..n).collect()
            };
            let mut inv = self.script.prepare_invoke();
            for k in &self.shared {
                inv.key(k);
            }
            inv.arg(batch.len());
            for p in &batch {
                for k in &p.keys {
                    inv.key(k);
                }
                for a in &p.args {
                    inv.arg(a);
                }
            }
            let answer =
                bounded(self.timeout, inv.invoke_async::<Vec<MarkReply>>(&mut conn)).await.and_then(|replies| {
                    if replies.len() == batch.len() {
                        Ok(replies)
                    } else {
                        Err(unavailable("the mark script answered for another number of marks"))
                    }
                });
            match answer {
                Ok(replies) => batch.into_iter().zip(replies).for_each(|(p, r)| {
                    let _ = p.done.send(Ok(r));
                }),
                Err(e) => batch.into_iter().for_each(|p| {
                    let _ = p.done.send(Err(e.clone()));
                }),
            }
        }
    }
}

/// A revocation: set it, and move the mark counter unless it is behind what this broker has
/// seen (re-asserting after a rollback must not hide the rollback). KEYS: revoked key, counter.
/// ARGV: now, PXAT ms, the highest counter seen.
const REVOKE_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq >= tonumber(ARGV[3]) then
  seq = redis.call('INCR', KEYS[2])
end
return seq
"#;

/// An admin's confirmation after a loss: a store that holds is left as it is; otherwise a new
/// epoch starts now, confirmed, with the counter past what was seen. KEYS: marker, confirmed
/// epoch, counter. ARGV: now, the highest counter seen.
const CONFIRM_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
if epoch and redis.call('GET', KEYS[2]) == epoch and seq >= tonumber(ARGV[2]) then
  return tonumber(epoch)
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
if seq < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[3], ARGV[2])
end
return tonumber(ARGV[1])
"#;

/// A use of a use-limited grant. KEYS: epoch marker, uses key, counter. ARGV: allowed uses,
/// PXAT ms, the grant's issue time, `1` to take a use. Returns the uses left (after this one),
/// -1 when the store's memory began after the grant was issued (its count may be lost), -2 when
/// every use was taken.
const CONSUME_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch or tonumber(ARGV[3]) < tonumber(epoch) then
  return -1
end
local max = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[4] ~= '1' then
  return math.max(max - used, 0)
end
if used >= max then
  return -2
end
used = redis.call('INCR', KEYS[2])
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[3])
return max - used
"#;

/// Leases the outbox items due. KEYS: the items (hash), their due times (sorted set). ARGV:
/// now, the lease's end, the most to take. Returns the items' JSON.
const LEASE_SCRIPT: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[1], id)
  if body then
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    table.insert(out, body)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"#;

/// The Redis state store.
pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    prefix: String,
    marks: std::sync::Arc<MarkQueue>,
    revoke: redis::Script,
    confirm: redis::Script,
    consume: redis::Script,
    lease: redis::Script,
    /// The highest mark counter this broker has seen (rollback detection).
    seen_seq: std::sync::atomic::AtomicI64,
    /// The epoch marker this broker last knew to hold with its revocations.
    seen_epoch: std::sync::Mutex<Option<String>>,
    /// Nothing was ever granted beside this broker (its audit log is empty): a store without
    /// revocation confirmation is taken as new.
    first_deployment: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(e.to_string())
}

/// A key of the store: `{PREFIX}:KIND:ID` (the hash tag keeps every key in one slot).
fn tagged(prefix: &str, kind: &str, id: &str) -> String {
    format!("{{{prefix}}}:{kind}:{id}")
}

/// `fut`, failing closed past `timeout`.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StateError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(StateError::Unavailable("command timed out".into())),
    }
}

impl RedisStore {
    /// A store for `url` (`redis://` or `rediss://`); connects lazily, so the broker starts (not
    /// ready) while Redis is down.
    pub fn new(url: &str, timeout: Duration, prefix: &str, first_deployment: bool) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.url: {e}"))?;
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            timeout,
            prefix: prefix.to_owned(),
            marks: std::sync::Arc::new(MarkQueue {
                queue: std::sync::Mutex::default(),
                script: redis::Script::new(MARK_SCRIPT),
                shared: ["epoch", "seq", "revocations", "grants"].map(|id| tagged(prefix, "meta", id)),
                timeout,
            }),
            revoke: redis::Script::new(REVOKE_SCRIPT),
            confirm: redis::Script::new(CONFIRM_SCRIPT),
            consume: redis::Script::new(CONSUME_SCRIPT),
            lease: redis::Script::new(LEASE_SCRIPT),
            seen_seq: std::sync::atomic::AtomicI64::new(0),
            seen_epoch: std::sync::Mutex::new(None),
            first_deployment,
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        tagged(&self.prefix, kind, id)
    }

    async fn conn(&self) -> Result<ConnectionManager, StateError> {
        let fut = self.conn.get_or_try_init(|| async {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1);
            let mut c = ConnectionManager::new_with_config(self.client.clone(), config).await.map_err(unavailable)?;
            // The epoch starts when the store is first opened (first deployment, or a broker
            // restarted beside a Redis that lost its data).
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let _: Option<String> = redis::cmd("SET")
                .arg(self.key("meta", "epoch"))
                .arg(now)
                .arg("NX")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            // What this broker takes the store to be: its epoch, whose revocations it trusts
            // (a store with no confirmation yet, first deployment or older brokers, is taken as
            // whole at this epoch).
            let epoch: Option<String> =
                redis::cmd("GET").arg(self.key("meta", "epoch")).query_async(&mut c).await.map_err(unavailable)?;
            // A broker with a past (its audit log has records) never confirms a store it finds
            // empty: that store lost its data; only a first deployment takes it as whole.
            if let Some(e) = epoch.as_ref().filter(|_| self.first_deployment) {
                let _: Option<String> = redis::cmd("SET")
                    .arg(self.key("meta", "revocations"))
                    .arg(e)
                    .arg("NX")
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
            }
            if let Ok(mut seen) = self.seen_epoch.lock() {
                *seen = epoch;
            }
            Ok::<_, StateError>(c)
        });
        match tokio::time::timeout(self.timeout * 2, fut).await {
            Ok(Ok(c)) => Ok(c.clone()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StateError::Unavailable("connect timed out".into())),
        }
    }

    /// Revocations are trusted only under the epoch they were confirmed for (review C5): a store
    /// whose marker is gone or changed since this broker last saw it lost its data, revocations
    /// with it, and answers nothing about them until an admin has re-asserted them and confirmed
    /// (`POST /v1/state/confirm`), for every broker at once.
    /// `seen` is the highest counter this broker had seen when it sent the read (loaded before:
    /// a concurrent request's later mark must not look like a rollback).
    fn revocations_hold(
        &self,
        epoch: Option<&str>,
        confirmed: Option<&str>,
        seq: Option<&str>,
        seen: i64,
    ) -> Result<(), StateError> {
        let lost = |since: &str| StateError::RevocationsLost(since.to_owned());
        let Some(epoch) = epoch else { return Err(lost("unknown")) };
        // a counter below what this broker has seen, under the epoch it saw: rolled back (B4)
        let seq: i64 = seq.and_then(|s| s.parse().ok()).unwrap_or(0);
        let seen_epoch = self.seen_epoch.lock().ok().and_then(|e| e.clone());
        if seen_epoch.as_deref() == Some(epoch) && seq < seen {
            return Err(lost(epoch));
        }
        if confirmed == Some(epoch) {
            self.learn(epoch, seq);
            return Ok(());
        }
        Err(lost(epoch))
    }

    /// What a read under a confirmed `epoch` teaches this broker: the epoch, and the counter.
    fn learn(&self, epoch: &str, seq: i64) {
        // a confirmed epoch this broker had not seen: its counter starts from the store's
        if let Ok(mut known) = self.seen_epoch.lock()
            && known.as_deref() != Some(epoch)
        {
            *known = Some(epoch.to_owned());
            self.seen_seq.store(seq, std::sync::atomic::Ordering::SeqCst);
        }
        // every read teaches this broker the counter, so it sees a rollback of writes other
        // replicas made (not only its own)
        self.seen_seq.fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// The mark script: with `revocations`, the spend (the keys checked first, nothing marked
    /// when one is revoked or revocations cannot be trusted).
    async fn mark_script(
        &self,
        revocations: Option<&[String]>,
        id: &str,
        until: i64,
        now: i64,
        issued_at: i64,
        grant: Option<&super::Grant>,
    ) -> Result<super::Spend, StateError> {
        let c = self.conn().await?;
        let body = match grant {
            Some(g) => serde_json::to_string(g).map_err(unavailable)?,
            None => String::new(),
        };
        let seen = self.seen_seq.load(std::sync::atomic::Ordering::SeqCst);
        let checked = revocations.unwrap_or_default();
        let mut keys = Vec::with_capacity(2 + checked.len());
        keys.push(self.key("used", id));
        keys.push(self.key("grant", grant.map_or("-", |g| g.id.as_str())));
        keys.extend(checked.iter().map(|k| self.key("revoked", k)));
        // Epoch and issue times in whole seconds (NumericDate): an assertion issued in the
        // second the epoch began is accepted.
        let grant_exp = grant.map_or(now + 1, |g| g.expires_at.max(now + 1));
        let int = |n: i64| n.to_string().into_bytes();
        let text = |s: &str| s.as_bytes().to_vec();
        let args = vec![
            int(now),
            int(checked.len() as i64),
            int(until.max(now + 1) * 1000),
            int(issued_at),
            text(&body),
            int(grant_exp * 1000),
            int(grant_exp),
            text(grant.map_or("", |g| g.id.as_str())),
            int(seen),
            text(&self.seen_epoch.lock().ok().and_then(|e| e.clone()).unwrap_or_default()),
            text(if revocations.is_some() { "1" } else { "" }),
        ];
        let (done, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.marks.lock();
            q.waiting.push(PendingMark { keys, args, done });
            !std::mem::replace(&mut q.sending, true)
        };
        if start {
            tokio::spawn(self.marks.clone().run(c.clone()));
        }
        let (code, epoch, seq, confirmed, revoked) = match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(reply)) => reply?,
            Ok(Err(_)) => return Err(unavailable("the mark was dropped unsent")),
            Err(_) => return Err(StateError::Unavailable("command timed out".into())),
        };
        if revocations.is_some() {
            if code == 3 {
                // the verdict of a plain lookup, with what it would teach
                let (epoch, confirmed) =
                    ((!epoch.is_empty()).then_some(&*epoch), (!confirmed.is_empty()).then_some(&*confirmed));
                self.revocations_hold(epoch, confirmed, Some(&seq.to_string()), seen)?;
                return Err(StateError::RevocationsLost(epoch.unwrap_or("unknown").to_owned()));
            }
            self.learn(&epoch, seq);
        }
        self.seen_seq.fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
        let keys = revocations.unwrap_or_default();
        Ok(match code {
            4 => super::Spend::Revoked(revoked.iter().filter_map(|i| keys.get(i.wrapping_sub(1)).cloned()).collect()),
            1 => super::Spend::Marked(Mark::Fresh),
            2 => super::Spend::Marked(Mark::EpochReset { since: epoch.parse().unwrap_or(now) }),
            _ => super::Spend::Marked(Mark::AlreadyUsed),
        })
    }

    async fn bounded<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StateError> {
        bounded(self.timeout, fut).await
    }
}

impl StateStore for RedisStore {
    fn record_grant<'a>(&'a self, grant: &'a super::Grant, now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let body = serde_json::to_string(grant).map_err(unavailable)?;
            let index = self.key("meta", "grants");
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(self.key("grant", &grant.id))
                .arg(body)
                .arg("PXAT")
                .arg(grant.expires_at.max(now + 1) * 1000)
                .ignore()
                .cmd("ZADD")
                .arg(&index)
                .arg(grant.expires_at)
                .arg(&grant.id)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(format!("({now}"))
                .ignore();
            self.bounded(pipe.query_async::<()>(&mut c)).await
        })
    }

    fn grants(&self, now: i64) -> StateFuture<'_, Vec<super::Grant>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let ids: Vec<String> = self
                .bounded(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.key("meta", "grants"))
                        .arg(now)
                        .arg("+inf")
                        .query_async(&mut c),
                )
                .await?;
            if ids.is_empty() {
                return Ok(vec![]);
            }
            let keys: Vec<String> = ids.iter().map(|id| self.key("grant", id)).collect();
            let bodies: Vec<Option<String>> = self.bounded(redis::cmd("MGET").arg(&keys).query_async(&mut c)).await?;
            Ok(bodies.into_iter().flatten().filter_map(|b| serde_json::from_str(&b).ok()).collect())
        })
    }

    fn revoke<'a>(&'a self, key: &'a str, until: i64, now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            // The counter moves with a revocation too, so a rollback that loses it is seen (B4);
            // but never up from below what this broker has seen: re-asserting revocations after a
            // rollback must not carry the counter back over it and hide the loss.
            let seen = self.seen_seq.load(std::sync::atomic::Ordering::SeqCst);
            let mut inv = self.revoke.prepare_invoke();
            inv.key(self.key("revoked", key)).key(self.key("meta", "seq"));
            inv.arg(now).arg(until.max(now + 1) * 1000).arg(seen);
            let seq: i64 = self.bounded(inv.invoke_async(&mut c)).await?;
            self.seen_seq.fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
    }

    fn revoked<'a>(&'a self, keys: &'a [String], _now: i64) -> StateFuture<'a, Vec<String>> {
        Box::pin(async move {
            // (even with no keys: the answer says whether revocations can be trusted at all)
            let mut c = self.conn().await?;
            let seen = self.seen_seq.load(std::sync::atomic::Ordering::SeqCst);
            let mut full: Vec<String> =
                vec![self.key("meta", "epoch"), self.key("meta", "revocations"), self.key("meta", "seq")];
            full.extend(keys.iter().map(|k| self.key("revoked", k)));
            let mut found: Vec<Option<String>> =
                self.bounded(redis::cmd("MGET").arg(&full).query_async(&mut c)).await?;
            let head: Vec<Option<String>> = found.drain(..3).collect();
            self.revocations_hold(head[0].as_deref(), head[1].as_deref(), head[2].as_deref(), seen)?;
            Ok(keys.iter().zip(found).filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()).collect())
        })
    }

    fn mark_used<'a>(
        &'a self,
        id: &'a str,
        until: i64,
        now: i64,
        issued_at: i64,
        grant: Option<&'a super::Grant>,
    ) -> StateFuture<'a, Mark> {
        Box::pin(async move {
            match self.mark_script(None, id, until, now, issued_at, grant).await? {
                super::Spend::Marked(mark) => Ok(mark),
                // (the script checks no revocation without keys to check)
                super::Spend::Revoked(_) => Err(unavailable("a mark answered a revocation")),
            }
        })
    }
    fn spend<'a>(
        &'a self,
        keys: &'a [String],
        id: &'a str,
        until: i64,
        now: i64,
        used_since: i64,
        grant: Option<&'a super::Grant>,
    ) -> StateFuture<'a, super::Spend> {
        Box::pin(self.mark_script(Some(keys), id, until, now, used_since, grant))
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
            let mut c = self.conn().await?;
            let mut inv = self.consume.prepare_invoke();
            inv.key(self.key("meta", "epoch")).key(self.key("uses", id)).key(self.key("meta", "seq"));
            inv.arg(max).arg(until.max(now + 1) * 1000).arg(issued_at).arg(if take { "1" } else { "0" });
            let left: i64 = self.bounded(inv.invoke_async(&mut c)).await?;
            Ok(match left {
                -1 => super::Uses::Lost,
                -2 => super::Uses::Exhausted,
                n => super::Uses::Left(u32::try_from(n).unwrap_or(0)),
            })
        })
    }

    fn revocations(&self, now: i64) -> StateFuture<'_, Vec<(String, i64)>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            // (answered only while revocations can be trusted, as every read of them)
            self.revoked(&[], now).await?;
            let prefix = self.key("revoked", "");
            let pattern = format!("{}*", prefix.replace('[', "\\[").replace('?', "\\?").replace('*', "\\*"));
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = self
                    .bounded(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut c),
                    )
                    .await?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 || keys.len() > 1_000_000 {
                    break;
                }
            }
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(500) {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.cmd("PEXPIRETIME").arg(k);
                }
                let ends: Vec<i64> = self.bounded(pipe.query_async(&mut c)).await?;
                for (k, end) in chunk.iter().zip(ends) {
                    if end > 0 && end / 1000 >= now {
                        out.push((k[prefix.len()..].to_owned(), end / 1000));
                    }
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn unrevoke<'a>(&'a self, key: &'a str, _now: i64) -> StateFuture<'a, bool> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let removed: i64 =
                self.bounded(redis::cmd("DEL").arg(self.key("revoked", key)).query_async(&mut c)).await?;
            Ok(removed > 0)
        })
    }

    fn outbox_put<'a>(&'a self, item: &'a super::Outgoing, _now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let body = serde_json::to_string(item).map_err(unavailable)?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(self.key("meta", "outbox"))
                .arg(&item.id)
                .arg(body)
                .ignore()
                .cmd("ZADD")
                .arg(self.key("meta", "outbox-due"))
                .arg(item.due)
                .arg(&item.id)
                .ignore();
            self.bounded(pipe.query_async::<()>(&mut c)).await
        })
    }

    fn outbox_lease(&self, now: i64, lease: i64, max: usize) -> StateFuture<'_, Vec<super::Outgoing>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let mut inv = self.lease.prepare_invoke();
            inv.key(self.key("meta", "outbox")).key(self.key("meta", "outbox-due"));
            inv.arg(now).arg(now + lease).arg(max);
            let bodies: Vec<String> = self.bounded(inv.invoke_async(&mut c)).await?;
            Ok(bodies.iter().filter_map(|b| serde_json::from_str(b).ok()).collect())
        })
    }

    fn outbox_done<'a>(&'a self, id: &'a str, _now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HDEL")
                .arg(self.key("meta", "outbox"))
                .arg(id)
                .ignore()
                .cmd("ZREM")
                .arg(self.key("meta", "outbox-due"))
                .arg(id)
                .ignore();
            self.bounded(pipe.query_async::<()>(&mut c)).await
        })
    }

    fn confirm_reset(&self, now: i64) -> StateFuture<'_, Option<i64>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            // A store that holds (marker confirmed, counter not behind) stays as it is. After a
            // loss, one confirmation starts a new epoch now, confirmed, with the counter past what
            // this broker has seen: replays of anything used before are refused by the epoch, and
            // no later mark takes the lower counter for another rollback.
            let seen = self.seen_seq.load(std::sync::atomic::Ordering::SeqCst);
            let mut inv = self.confirm.prepare_invoke();
            inv.key(self.key("meta", "epoch")).key(self.key("meta", "revocations")).key(self.key("meta", "seq"));
            inv.arg(now.to_string()).arg(seen);
            self.bounded(inv.invoke_async(&mut c)).await
        })
    }

    fn ready(&self) -> StateFuture<'_, ()> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            // ready means able to decide: revocations that cannot be trusted are not ready
            let seen = self.seen_seq.load(std::sync::atomic::Ordering::SeqCst);
            let mut head: Vec<Option<String>> = self
                .bounded(
                    redis::cmd("MGET")
                        .arg(self.key("meta", "epoch"))
                        .arg(self.key("meta", "revocations"))
                        .arg(self.key("meta", "seq"))
                        .query_async(&mut c),
                )
                .await?;
            head.resize(3, None);
            self.revocations_hold(head[0].as_deref(), head[1].as_deref(), head[2].as_deref(), seen)
        })
    }

    fn put_nonce<'a>(&'a self, nonce: &'a str, binding: &'a str, until: i64, _now: i64) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let cmd = redis::cmd("SET")
                .arg(self.key("nonce", nonce))
                .arg(binding)
                .arg("NX")
                .arg("PXAT")
                .arg(until * 1000)
                .clone();
            let set: Option<String> = self.bounded(cmd.query_async(&mut c)).await?;
            set.map(|_| ()).ok_or_else(|| StateError::Unavailable("nonce collision".into()))
        })
    }

    fn take_nonce<'a>(&'a self, nonce: &'a str, _now: i64) -> StateFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            // Expired keys are gone already (PXAT); GETDEL makes taking atomic across replicas.
            self.bounded(redis::cmd("GETDEL").arg(self.key("nonce", nonce)).query_async(&mut c)).await
        })
    }
}

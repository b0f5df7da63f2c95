//! Shared state in Redis (or Valkey, or Redis Cluster) for several replicas.
//!
//! - Used assertions: `SET key 1 NX PXAT exp` — one atomic command decides first use across all
//!   replicas, in one round trip (a Lua script that also checks the epoch marker and, for a fresh
//!   mark, records the grant in the inventory).
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

const MARK_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
if tonumber(ARGV[3]) < tonumber(epoch) then
  return {2, epoch}
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PXAT', ARGV[2]) then
  if ARGV[4] ~= '' then
    redis.call('SET', KEYS[3], ARGV[4], 'PXAT', ARGV[5])
    redis.call('ZADD', KEYS[4], ARGV[6], ARGV[7])
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
  end
  return {1, epoch}
end
return {0, epoch}
"#;

/// The Redis state store.
pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    prefix: String,
    mark: redis::Script,
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

impl RedisStore {
    /// A store for `url` (`redis://` or `rediss://`); connects lazily, so the broker starts (not
    /// ready) while Redis is down.
    pub fn new(url: &str, timeout: Duration, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.url: {e}"))?;
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            timeout,
            prefix: prefix.to_owned(),
            mark: redis::Script::new(MARK_SCRIPT),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{{{}}}:{kind}:{id}", self.prefix)
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
            Ok::<_, StateError>(c)
        });
        match tokio::time::timeout(self.timeout * 2, fut).await {
            Ok(Ok(c)) => Ok(c.clone()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StateError::Unavailable("connect timed out".into())),
        }
    }

    async fn bounded<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StateError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StateError::Unavailable("command timed out".into())),
        }
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
            let cmd = redis::cmd("SET")
                .arg(self.key("revoked", key))
                .arg(now)
                .arg("PXAT")
                .arg(until.max(now + 1) * 1000)
                .clone();
            self.bounded(cmd.query_async::<()>(&mut c)).await
        })
    }

    fn revoked<'a>(&'a self, keys: &'a [String], _now: i64) -> StateFuture<'a, Vec<String>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(vec![]);
            }
            let mut c = self.conn().await?;
            let full: Vec<String> = keys.iter().map(|k| self.key("revoked", k)).collect();
            let found: Vec<Option<String>> = self.bounded(redis::cmd("MGET").arg(&full).query_async(&mut c)).await?;
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
            let mut c = self.conn().await?;
            let body = match grant {
                Some(g) => serde_json::to_string(g).map_err(unavailable)?,
                None => String::new(),
            };
            let mut inv = self.mark.prepare_invoke();
            inv.key(self.key("meta", "epoch")).key(self.key("used", id));
            inv.key(self.key("grant", grant.map_or("-", |g| g.id.as_str()))).key(self.key("meta", "grants"));
            // Epoch and issue times in whole seconds (NumericDate): an assertion issued in the
            // second the epoch began is accepted.
            inv.arg(now).arg(until.max(now + 1) * 1000).arg(issued_at);
            let grant_exp = grant.map_or(now + 1, |g| g.expires_at.max(now + 1));
            inv.arg(body).arg(grant_exp * 1000).arg(grant_exp).arg(grant.map_or("", |g| g.id.as_str()));
            let (code, epoch): (i64, i64) = self.bounded(inv.invoke_async(&mut c)).await?;
            Ok(match code {
                1 => Mark::Fresh,
                2 => Mark::EpochReset { since: epoch },
                _ => Mark::AlreadyUsed,
            })
        })
    }

    fn ready(&self) -> StateFuture<'_, ()> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let pong: String = self.bounded(redis::cmd("PING").query_async(&mut c)).await?;
            if pong == "PONG" { Ok(()) } else { Err(StateError::Unavailable("unexpected PING answer".into())) }
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

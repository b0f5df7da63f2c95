//! The only cache in the broker: issuers' discovery documents and key sets. Never decisions,
//! never replay state.
//!
//! - Entries are keyed by where the keys come from ([`KeySource::cache_key`]: the issuer and its
//!   JWKS location), never by the provider's name: a reload that points a provider at another
//!   issuer or key URL starts from an empty entry, so keys of the old source never verify a token
//!   of the new one (ATTACKS case 22 through a reload). [`KeyCache::flush`] drops an entry at once.
//! - Loading is single-flight per source (moka's per-key `and_compute_with` lock): a thousand
//!   concurrent requests for a cold or rotated issuer cause one fetch.
//! - Freshness is judged by the `now` the caller passes (the broker's injected clock), never by
//!   moka's own timers, so tests drive time without sleeping.
//! - A key set is fresh for `Cache-Control: max-age` clamped to `[min_ttl, max_ttl]`
//!   (`default_ttl` without one). An unknown `kid` or an expired set triggers a refetch, at most
//!   one attempt per `refresh_cooldown` per provider, whatever the traffic.
//! - When refetching fails, the last good keys keep serving until `stale_window` past their
//!   freshness; after that the provider fails closed (`KeysUnavailable`).

use crate::error::VerifyError;
use crate::fetch::{self, FetchError, FetchLimits};
use crate::jwks::KeySet;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Cache timings, seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub default_ttl: u64,
    pub min_ttl: u64,
    pub max_ttl: u64,
    pub refresh_cooldown: u64,
    pub stale_window: u64,
    pub limits: FetchLimits,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            default_ttl: 300,
            min_ttl: 60,
            max_ttl: 86_400,
            refresh_cooldown: 30,
            stale_window: 3_600,
            limits: FetchLimits::default(),
        }
    }
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// OIDC discovery at the issuer, then its `jwks_uri`.
    Discovery { issuer: String, jwks_hosts: Vec<String> },
    /// A JWKS URL given in config (skips discovery).
    JwksUrl { issuer: String, url: url::Url },
    /// Keys pinned from a file or built in; never refetched.
    Pinned(Arc<KeySet>),
}

impl KeySource {
    /// The identity of a fetched source: the cache's key. Everything that decides which keys a
    /// fetch yields is in it (issuer, discovery or JWKS URL, the hosts discovery may name), so
    /// two sources share keys only when they would fetch the same ones. `None` for pinned keys,
    /// which are never cached.
    pub fn cache_key(&self) -> Option<String> {
        match self {
            KeySource::Discovery { issuer, jwks_hosts } => {
                Some(format!("discovery\n{issuer}\n{}", jwks_hosts.join("\n")))
            }
            KeySource::JwksUrl { issuer, url } => Some(format!("jwks\n{issuer}\n{url}")),
            KeySource::Pinned(_) => None,
        }
    }
}

#[derive(Debug)]
struct Snapshot {
    keys: Option<Arc<KeySet>>,
    /// When `keys` were fetched (broker clock).
    fetched_at: i64,
    ttl: u64,
    last_attempt: i64,
    last_error: Option<String>,
}

impl Snapshot {
    fn needs_refresh(&self, kid: Option<&str>, now: i64) -> bool {
        match &self.keys {
            None => true,
            Some(k) => now - self.fetched_at >= self.ttl as i64 || kid.is_some_and(|kid| !k.has_kid(kid)),
        }
    }
    fn may_attempt(&self, now: i64, s: &CacheSettings) -> bool {
        now - self.last_attempt >= s.refresh_cooldown as i64 || now < self.last_attempt
    }
    /// The keys to verify a token with `kid`: a kid they lack while the last refresh failed is
    /// not known to be unknown (the issuer could not be asked): unavailable, retryable.
    fn usable_for(&self, kid: Option<&str>, now: i64, s: &CacheSettings) -> Result<Arc<KeySet>, VerifyError> {
        let keys = self.usable(now, s)?;
        match (kid, &self.last_error) {
            (Some(k), Some(e)) if !keys.has_kid(k) => Err(VerifyError::KeysUnavailable(format!(
                "no key `{}` at hand and the issuer could not be asked: {e}",
                crate::error::escape_untrusted(k, 64)
            ))),
            _ => Ok(keys),
        }
    }

    fn usable(&self, now: i64, s: &CacheSettings) -> Result<Arc<KeySet>, VerifyError> {
        match &self.keys {
            Some(k) if now - self.fetched_at < (self.ttl + s.stale_window) as i64 => Ok(k.clone()),
            Some(_) => Err(VerifyError::KeysUnavailable(format!(
                "keys older than the stale window; last refresh: {}",
                self.last_error.as_deref().unwrap_or("none")
            ))),
            None => {
                Err(VerifyError::KeysUnavailable(self.last_error.clone().unwrap_or_else(|| "never fetched".into())))
            }
        }
    }
}

/// Keys of every provider, shared by all requests.
pub struct KeyCache(Arc<Shared>);

/// What a cache and the refreshes it runs on their own share.
struct Shared {
    cache: Cache<String, Arc<Snapshot>>,
    http: reqwest::Client,
    settings: CacheSettings,
    fetches: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("settings", &self.0.settings).finish_non_exhaustive()
    }
}

impl KeyCache {
    /// Every check on a token of provider `name`, with its keys from `source` (cached, or fetched
    /// now): shape and header, the key, the signature, the claims.
    pub async fn verify(
        &self,
        name: &str,
        source: &KeySource,
        rules: &crate::TokenRules,
        token: &str,
        now: i64,
    ) -> Result<crate::VerifiedToken, crate::VerifyError> {
        let untrusted = crate::verify::precheck(token, rules)?;
        let keys = self.keys_for(name, source, untrusted.jws.kid.as_deref(), now).await?;
        let jws = crate::verify::verify_jws_signature(untrusted.jws, &keys)?;
        crate::verify::check_claims(jws, untrusted.claims, rules, now)
    }

    pub fn new(settings: CacheSettings, http: reqwest::Client) -> Self {
        KeyCache(Arc::new(Shared {
            cache: Cache::builder().max_capacity(10_000).build(),
            http,
            settings,
            fetches: AtomicU64::new(0),
        }))
    }

    /// How many fetch rounds (discovery + JWKS) this cache has started.
    pub fn fetch_count(&self) -> u64 {
        self.0.fetches.load(Ordering::Relaxed)
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.0.settings
    }

    /// Forgets the keys of `source` now (incident response, or a source a reload dropped): the
    /// next token of it fetches afresh, whatever the cooldown. Returns whether keys were cached.
    pub async fn flush(&self, source: &KeySource) -> bool {
        match source.cache_key() {
            Some(key) => self.0.cache.remove(&key).await.is_some(),
            None => false,
        }
    }

    /// Forgets every cached source that `keep` does not name (run after a reload with the new
    /// config's sources).
    pub async fn retain(&self, keep: &[&KeySource]) {
        let keep: std::collections::HashSet<String> = keep.iter().filter_map(|s| s.cache_key()).collect();
        let gone: Vec<Arc<String>> =
            self.0.cache.iter().map(|(k, _)| k).filter(|k| !keep.contains(k.as_str())).collect();
        for key in gone {
            self.0.cache.invalidate(key.as_str()).await;
        }
    }

    /// The key set to verify a token with `kid` from `provider`, refetching when the rules allow.
    ///
    /// A refresh that is due by age while the keys at hand still hold `kid` does not hold the
    /// request up: it runs on its own and the request waits at most [`STALE_WAIT`] for it, then
    /// verifies with the keys at hand (within the stale window). A hung issuer therefore slows
    /// no request by its fetch timeout (fault review, test 4b). A `kid` the keys at hand lack
    /// while the last refresh failed is `keys_unavailable` (retryable), never `unknown_key`: the
    /// broker could not look.
    pub async fn keys_for(
        &self,
        provider: &str,
        source: &KeySource,
        kid: Option<&str>,
        now: i64,
    ) -> Result<Arc<KeySet>, VerifyError> {
        let key = match source {
            KeySource::Pinned(keys) => return Ok(keys.clone()),
            other => other.cache_key().unwrap_or_default(),
        };
        let s = &self.0.settings;
        let cached = self.0.cache.get(&key).await;
        if let Some(snap) = &cached
            && (!snap.needs_refresh(kid, now) || !snap.may_attempt(now, s))
        {
            metrics::counter!("ephemera_key_cache_lookups_total", "provider" => provider.to_owned(), "result" => "hit")
                .increment(1);
            return snap.usable_for(kid, now, s);
        }
        metrics::counter!("ephemera_key_cache_lookups_total", "provider" => provider.to_owned(), "result" => "miss")
            .increment(1);
        // keys at hand that hold the kid: a refresh due by age need not be waited for
        let at_hand = cached
            .as_ref()
            .and_then(|snap| snap.usable(now, s).ok())
            .filter(|keys| kid.is_none_or(|k| keys.has_kid(k)));
        let refresh = tokio::spawn(refresh(
            self.0.clone(),
            key,
            source.clone(),
            provider.to_owned(),
            kid.map(str::to_owned),
            now,
        ));
        let joined = match (at_hand, cached) {
            (Some(keys), _) => match tokio::time::timeout(STALE_WAIT, refresh).await {
                Ok(joined) => joined,
                Err(_) => return Ok(keys),
            },
            // Keys were had before but cannot serve this token (past the stale window, or its
            // kid is not among them): wait a little for the issuer, then answer `keys_unavailable`
            // (retryable) while the refresh goes on; never queue behind a hung fetch.
            (None, Some(_)) => match tokio::time::timeout(REFRESH_WAIT, refresh).await {
                Ok(joined) => joined,
                Err(_) => {
                    return Err(VerifyError::KeysUnavailable(
                        "the issuer is slow to answer a key refresh; retry".into(),
                    ));
                }
            },
            // nothing cached yet: the first fetch is waited for (the request timeout bounds it)
            (None, None) => refresh.await,
        };
        match joined {
            Ok(Some(snap)) => snap.usable_for(kid, now, s),
            Ok(None) | Err(_) => Err(VerifyError::KeysUnavailable("key cache entry vanished".into())),
        }
    }
}

/// How long a request waits for a refresh that is due by age before it verifies with the keys
/// at hand (the refresh goes on).
pub const STALE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a request that needs a refresh (an unknown kid, keys past the stale window) waits for
/// the issuer before it is answered `keys_unavailable` (the refresh goes on).
pub const REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One refresh of `key`, single-flight under moka's per-key lock; the snapshot it leaves.
async fn refresh(
    shared: Arc<Shared>,
    key: String,
    source: KeySource,
    provider: String,
    kid: Option<String>,
    now: i64,
) -> Option<Arc<Snapshot>> {
    let kid = kid.as_deref();
    let (s, source, provider, http, fetches) =
        (&shared.settings, &source, provider.as_str(), &shared.http, &shared.fetches);
    let result = shared
        .cache
        .entry(key)
        .and_compute_with(|existing| async move {
            let existing = existing.map(|e| e.into_value());
            // Re-check under the per-source lock: another request may have just refreshed.
            if let Some(snap) = &existing
                && (!snap.needs_refresh(kid, now) || !snap.may_attempt(now, s))
            {
                return Op::Nop;
            }
            fetches.fetch_add(1, Ordering::Relaxed);
            let fetched = fetch_keys(http, &s.limits, source).await;
            let result = if fetched.is_ok() { "ok" } else { "error" };
            metrics::counter!("ephemera_key_fetches_total", "provider" => provider.to_owned(), "result" => result)
                .increment(1);
            let next = match (fetched, existing) {
                (Ok((keys, max_age)), _) => Snapshot {
                    keys: Some(Arc::new(keys)),
                    fetched_at: now,
                    ttl: max_age.unwrap_or(s.default_ttl).clamp(s.min_ttl, s.max_ttl),
                    last_attempt: now,
                    last_error: None,
                },
                (Err(e), Some(old)) => {
                    tracing::warn!(provider, error = %e, "issuer key refresh failed");
                    Snapshot {
                        keys: old.keys.clone(),
                        fetched_at: old.fetched_at,
                        ttl: old.ttl,
                        last_attempt: now,
                        last_error: Some(e.to_string()),
                    }
                }
                (Err(e), None) => {
                    tracing::warn!(provider, error = %e, "issuer key fetch failed");
                    Snapshot { keys: None, fetched_at: 0, ttl: 0, last_attempt: now, last_error: Some(e.to_string()) }
                }
            };
            Op::Put(Arc::new(next))
        })
        .await;
    match result {
        CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => Some(e.into_value()),
        CompResult::Removed(_) | CompResult::StillNone(_) => None,
    }
}

async fn fetch_keys(
    http: &reqwest::Client,
    limits: &FetchLimits,
    source: &KeySource,
) -> Result<(KeySet, Option<u64>), FetchError> {
    let (issuer, jwks_url) = match source {
        KeySource::Pinned(_) => {
            return Err(FetchError::JwksUriRejected("pinned keys are never fetched".into()));
        }
        KeySource::Discovery { issuer, jwks_hosts } => {
            let (_, url) = fetch::discover(http, issuer, jwks_hosts, limits).await?;
            (issuer, url)
        }
        KeySource::JwksUrl { issuer, url } => (issuer, url.clone()),
    };
    let fetched = fetch::get_capped(http, &jwks_url, limits).await?;
    let keys = KeySet::from_json(&fetched.body)
        .map_err(|e| FetchError::Document { url: jwks_url.to_string(), cause: e.to_string() })?;
    for ignored in keys.ignored() {
        tracing::info!(issuer = %issuer, kid = ?ignored.kid.as_deref().map(|k| crate::error::escape_untrusted(k, 64)), reason = ignored.reason, "jwks key ignored");
    }
    Ok((keys, fetched.max_age))
}

//! The sections that set up the broker itself: `[server]`, `[state]`, `[jwks]`, `[admin]` and
//! the bench-only `[bench]`.

use super::defaults::*;
use super::raw::{RawAdmin, RawJwks, RawServer, RawState};
use super::{opt_secs, parse_duration};
use ephemera_providers::cache::CacheSettings;
use ephemera_providers::fetch::{self, FetchLimits};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The safety features a benchmark build may switch off (both on everywhere else). As `[bench]`
/// it turns one off so `scripts/bench-peers` can show what it costs; only a binary built with
/// `--features bench-knobs` accepts the table, a released broker refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Safety {
    /// Assertions are marked used (single use).
    pub replay: bool,
    /// Every decision is written to the audit log; allows durably before the credential leaves.
    pub audit: bool,
}

impl Default for Safety {
    fn default() -> Self {
        Safety { replay: true, audit: true }
    }
}

/// The admin bearer credential. `Debug` prints a redaction.
#[derive(Clone)]
pub struct AdminToken(secrecy::SecretString);

impl AdminToken {
    /// Constant-time comparison (of SHA-256 digests, so neither content nor length leaks).
    pub fn matches(&self, presented: &str) -> bool {
        use secrecy::ExposeSecret;
        use subtle::ConstantTimeEq;
        let d = |s: &str| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes()).as_ref().to_vec();
        d(self.0.expose_secret()).ct_eq(&d(presented)).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([REDACTED])")
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum StateBackend {
    /// One process's memory: `dev`, tests and benches (a restart forgets).
    Memory { max_entries: usize },
    /// One crash-safe file (redb): the default of `serve`.
    File { path: PathBuf, max_entries: usize },
    /// Shared by several replicas.
    Redis { url: String, timeout: Duration, prefix: String },
}

/// The Redis URL may carry a password: `Debug` names the backend and its settings, never the URL
/// (review C17).
impl std::fmt::Debug for StateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateBackend::Memory { max_entries } => f.debug_struct("Memory").field("max_entries", max_entries).finish(),
            StateBackend::File { path, max_entries } => {
                f.debug_struct("File").field("path", path).field("max_entries", max_entries).finish()
            }
            StateBackend::Redis { timeout, prefix, .. } => f
                .debug_struct("Redis")
                .field("url", &"[REDACTED]")
                .field("timeout", timeout)
                .field("prefix", prefix)
                .finish(),
        }
    }
}

#[derive(Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub issuer: String,
    pub signing_key_file: Option<PathBuf>,
    pub publish_key_files: Vec<PathBuf>,
    pub max_body_size: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    /// Token exchanges per second per client address (0 = off).
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// What a denial tells the caller; the audit always has everything.
    pub disclosure: Disclosure,
    /// Load balancers (address, prefix length) whose `X-Forwarded-For` names the client: rate
    /// limits and nonce budgets then count the client, not the balancer (review S4).
    pub trusted_proxies: Vec<(std::net::IpAddr, u8)>,
    /// HTTPS: (certificate chain, private key) files; read by the server (`server/tls.rs`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `10.0.0.0/8`, `2001:db8::/32` or a single address (its full length).
fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<std::net::IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (s.parse::<std::net::IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((addr, len))
}

/// What a denial reveals to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disclosure {
    /// The reason slug and every failed check with expected vs got.
    Full,
    /// The reason slug and the names of what failed, no values.
    Reason,
    /// The reason slug only.
    None,
}

impl ServerSettings {
    /// `[server]`.
    pub(super) fn from_raw(raw: &RawServer, resolve: &dyn Fn(&Path) -> PathBuf, errs: &mut Vec<String>) -> Self {
        let listen = raw
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| errs.push(format!("server.listen: `{}` is not an address ({e})", raw.listen)))
            .ok();
        if let Err(e) = fetch::validate_issuer(&raw.issuer) {
            errs.push(format!("server.issuer: `{}` {e}", raw.issuer));
        }
        ServerSettings {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            issuer: raw.issuer.clone(),
            signing_key_file: raw.signing_key_file.as_deref().map(resolve),
            publish_key_files: raw.publish_key_files.iter().map(|p| resolve(p)).collect(),
            max_body_size: raw.max_body_size.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            header_read_timeout: Duration::from_secs(opt_secs(
                "server.header_read_timeout",
                &raw.header_read_timeout,
                DEFAULT_HEADER_READ_TIMEOUT_SECS,
                errs,
            )),
            request_timeout: Duration::from_secs(opt_secs(
                "server.request_timeout",
                &raw.request_timeout,
                DEFAULT_REQUEST_TIMEOUT_SECS,
                errs,
            )),
            rate_limit_per_second: raw.rate_limit_per_second.unwrap_or(DEFAULT_RATE_PER_SECOND),
            rate_limit_burst: raw.rate_limit_burst.unwrap_or(DEFAULT_RATE_BURST),
            trusted_proxies: raw
                .trusted_proxies
                .iter()
                .filter_map(|p| {
                    let parsed = parse_cidr(p);
                    if parsed.is_none() {
                        errs.push(format!("server.trusted_proxies: `{p}` is not an address or CIDR block"));
                    }
                    parsed
                })
                .collect(),
            tls: match (&raw.tls_cert_file, &raw.tls_key_file) {
                (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
                (None, None) => None,
                _ => {
                    errs.push("server.tls_cert_file, server.tls_key_file: give both, or neither".into());
                    None
                }
            },
            // `reason` by default: the expected values of a role's conditions are not told to
            // anyone holding an issuer-signed token (review C16); `full` says so in the config
            disclosure: match raw.detail.as_deref() {
                Some("full") => Disclosure::Full,
                None | Some("reason") => Disclosure::Reason,
                Some("none") => Disclosure::None,
                Some(other) => {
                    errs.push(format!("server.detail: `{other}` is not one of full, reason, none"));
                    Disclosure::Full
                }
            },
        }
    }
}

impl StateBackend {
    /// `[state]`; the file backend's default path is the audit log's with `.state` appended.
    pub(super) fn from_raw(
        raw: &RawState,
        resolve: &dyn Fn(&Path) -> PathBuf,
        audit_path: &Path,
        errs: &mut Vec<String>,
    ) -> Self {
        let max_entries = raw.max_entries.unwrap_or(DEFAULT_MEMORY_MAX_ENTRIES);
        match raw.backend.as_str() {
            "memory" => StateBackend::Memory { max_entries },
            "file" => StateBackend::File {
                path: raw.path.as_deref().map(resolve).unwrap_or_else(|| {
                    let mut p = audit_path.as_os_str().to_owned();
                    p.push(".state");
                    PathBuf::from(p)
                }),
                max_entries,
            },
            "redis" => match &raw.url {
                Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => StateBackend::Redis {
                    url: url.clone(),
                    timeout: raw
                        .command_timeout
                        .as_deref()
                        .and_then(|t| parse_duration("state.command_timeout", t, errs))
                        .unwrap_or(DEFAULT_REDIS_COMMAND_TIMEOUT),
                    prefix: raw.key_prefix.clone().unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.into()),
                },
                _ => {
                    errs.push("state.url: required for the redis backend, as redis:// or rediss://".into());
                    StateBackend::Memory { max_entries: 0 }
                }
            },
            other => {
                errs.push(format!("state.backend: unknown backend `{other}` (expected file, memory or redis)"));
                StateBackend::Memory { max_entries: 0 }
            }
        }
    }
}

/// `[jwks]`: the key cache and how issuers are fetched.
pub(super) fn cache_settings(j: &RawJwks, errs: &mut Vec<String>) -> CacheSettings {
    let defaults = CacheSettings::default();
    let cache = CacheSettings {
        default_ttl: opt_secs("jwks.default_ttl", &j.default_ttl, defaults.default_ttl, errs),
        min_ttl: opt_secs("jwks.min_ttl", &j.min_ttl, defaults.min_ttl, errs),
        max_ttl: opt_secs("jwks.max_ttl", &j.max_ttl, defaults.max_ttl, errs),
        refresh_cooldown: opt_secs("jwks.refresh_cooldown", &j.refresh_cooldown, defaults.refresh_cooldown, errs),
        stale_window: opt_secs("jwks.stale_window", &j.stale_window, defaults.stale_window, errs),
        limits: FetchLimits {
            connect_timeout: Duration::from_secs(JWKS_CONNECT_TIMEOUT_SECS),
            total_timeout: Duration::from_secs(
                opt_secs("jwks.fetch_timeout", &j.fetch_timeout, DEFAULT_JWKS_FETCH_TIMEOUT_SECS, errs).max(1),
            ),
            max_body_bytes: j.max_document_size.unwrap_or(DEFAULT_JWKS_MAX_DOCUMENT_BYTES),
        },
    };
    if cache.min_ttl > cache.max_ttl {
        errs.push("jwks.min_ttl: greater than jwks.max_ttl".into());
    }
    cache
}

/// `[admin]`: the admin credential and where the admin routes listen.
/// A partner's introspection credential and the audiences it may see (review C12: partners
/// need not hold the admin credential, which also revokes and lists every grant).
#[derive(Debug, Clone)]
pub struct Introspector {
    pub token: AdminToken,
    pub audiences: Vec<String>,
}

fn bearer_file(key: &str, path: &Path, errs: &mut Vec<String>) -> Option<AdminToken> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= MIN_ADMIN_TOKEN_CHARS => {
            Some(AdminToken(secrecy::SecretString::from(t.trim().to_owned())))
        }
        Ok(_) => {
            errs.push(format!(
                "{key}: {}: the credential must be at least {MIN_ADMIN_TOKEN_CHARS} characters",
                path.display()
            ));
            None
        }
        Err(e) => {
            errs.push(format!("{key}: {}: {e}", path.display()));
            None
        }
    }
}

pub(super) fn admin(
    raw: &RawAdmin,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<String>,
) -> (Option<AdminToken>, Option<SocketAddr>, Vec<Introspector>, Option<PathBuf>) {
    let token = raw.token_file.as_deref().map(resolve).and_then(|p| bearer_file("admin.token_file", &p, errs));
    let listen = raw.listen.as_deref().and_then(|l| {
        l.parse::<SocketAddr>().map_err(|e| errs.push(format!("admin.listen: `{l}` is not an address ({e})"))).ok()
    });
    let introspectors = raw
        .introspectors
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let key = format!("admin.introspectors[{i}]");
            if r.audiences.is_empty() || r.audiences.iter().any(String::is_empty) {
                errs.push(format!("{key}.audiences: at least one non-empty audience is required"));
            }
            let token = bearer_file(&format!("{key}.token_file"), &resolve(&r.token_file), errs)?;
            Some(Introspector { token, audiences: r.audiences.clone() })
        })
        .collect();
    let client_ca = raw.client_ca_file.as_deref().map(resolve);
    if client_ca.is_some() && listen.is_none() {
        errs.push(
            "admin.client_ca_file: needs admin.listen (client certificates are asked on the admin listener)".into(),
        );
    }
    (token, listen, introspectors, client_ca)
}

/// `[bench]`: accepted only by a `bench-knobs` build.
pub(super) fn safety(raw: Option<Safety>, errs: &mut Vec<String>) -> Safety {
    match raw {
        Some(b) if cfg!(feature = "bench-knobs") => b,
        Some(_) => {
            errs.push("bench: accepted only by a binary built with `--features bench-knobs` (scripts/bench-peers); it switches replay protection or the audit log off".into());
            Safety::default()
        }
        None => Safety::default(),
    }
}

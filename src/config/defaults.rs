//! Every default and bound of the config, by name. A key left out of the TOML takes its
//! `DEFAULT_*`; the `MAX_*`/`MIN_*` bounds refuse a config that goes past them.

use std::time::Duration;

/// `server.max_body_size`: bytes of a request body read.
pub(super) const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// `server.header_read_timeout`, seconds.
pub(super) const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// `server.request_timeout`, seconds.
pub(super) const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// `server.rate_limit_per_second`, per client address.
pub(super) const DEFAULT_RATE_PER_SECOND: u32 = 100;
/// `server.rate_limit_burst`.
pub(super) const DEFAULT_RATE_BURST: u32 = 200;
/// `state.max_entries` of the memory backend.
pub(super) const DEFAULT_MEMORY_MAX_ENTRIES: usize = 1_000_000;
/// `state.command_timeout` of the redis backend.
pub(super) const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// `state.key_prefix` of the redis backend (inside the `{…}` hash tag).
pub(super) const DEFAULT_REDIS_KEY_PREFIX: &str = "eph";
/// Connecting to an issuer (discovery, JWKS), seconds.
pub(super) const JWKS_CONNECT_TIMEOUT_SECS: u64 = 5;
/// `jwks.fetch_timeout`, seconds.
pub(super) const DEFAULT_JWKS_FETCH_TIMEOUT_SECS: u64 = 10;
/// `jwks.max_document_size`, bytes.
pub(super) const DEFAULT_JWKS_MAX_DOCUMENT_BYTES: usize = 100 * 1024;
/// `providers.leeway` of an OIDC provider, seconds.
pub(super) const DEFAULT_OIDC_LEEWAY_SECS: u64 = 60;
/// The most `providers.leeway` of an OIDC provider may be, seconds.
pub(super) const MAX_OIDC_LEEWAY_SECS: u64 = 300;
/// `providers.leeway` of an attestation provider, seconds.
pub(super) const DEFAULT_ATTESTATION_LEEWAY_SECS: u64 = 5;
/// The largest `max_age` of an attestation document (review C19).
pub(super) const MAX_ATTESTATION_AGE_SECS: u64 = 3600;
/// The longest `roles.max_ttl` (and so any credential), seconds.
pub(super) const MAX_ROLE_TTL_SECS: u64 = 12 * 3600;
/// The shortest admin credential accepted (`admin.token_file`), characters.
pub(super) const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// The most AWS session tags a role may map (STS's limit).
pub(super) const MAX_SESSION_TAGS: usize = 50;

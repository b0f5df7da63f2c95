//! What the TOML says, before any check: every table and key the config file may hold (unknown
//! keys are refused). No logic here; `Config::from_raw` and its section builders check it.

use super::server::Safety;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub state: RawState,
    pub audit: RawAudit,
    #[serde(default)]
    pub jwks: RawJwks,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub roles: Vec<RawRole>,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub gcp: RawGcp,
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[events]`: who is told when a grant ends.
    #[serde(default)]
    pub events: RawEvents,
    /// Benchmark-only switches; refused unless built with the `bench-knobs` feature.
    pub bench: Option<Safety>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// A file holding the admin bearer credential (for /v1/grants, /v1/introspect, /v1/revoke).
    pub token_file: Option<PathBuf>,
    /// Serve the admin routes on this address only (default: beside the others).
    pub listen: Option<String>,
    /// The admin listener requires a client certificate chaining to this CA (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Partners' credentials for `/v1/introspect` only, each for tokens of its audiences only.
    #[serde(default)]
    pub introspectors: Vec<RawIntrospector>,
}

/// `[[admin.introspectors]]`: a partner that may introspect, and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospector {
    /// A file holding its bearer credential (32+ characters).
    pub token_file: PathBuf,
    /// The broker JWT audiences it may see active; any other token is `{"active": false}` to it.
    pub audiences: Vec<String>,
}

/// `[events]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// `[[events.receivers]]`: partners pushed a CAEP `session-revoked` SET (RFC 8935) when a
    /// broker JWT of their audience is revoked.
    #[serde(default)]
    pub receivers: Vec<RawReceiver>,
}

/// `[[events.receivers]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    /// The broker-JWT audience whose revocations it is told of.
    pub audience: String,
    /// Where SETs are pushed: https, or http on loopback.
    pub endpoint: String,
    /// A file holding the bearer credential sent with each push.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Global Cedar `forbid`s (revocations, guardrails), evaluated with every role.
    pub guardrails: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    pub issuer: String,
    pub signing_key_file: Option<PathBuf>,
    /// Keys to publish in the JWKS without signing (rotation: the next, then the previous key).
    #[serde(default)]
    pub publish_key_files: Vec<PathBuf>,
    pub max_body_size: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub rate_limit_per_second: Option<u32>,
    pub rate_limit_burst: Option<u32>,
    pub detail: Option<String>,
    /// Load balancers whose `X-Forwarded-For` names the client (addresses or CIDR blocks).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// HTTPS: the certificate chain (PEM) the listeners present.
    pub tls_cert_file: Option<PathBuf>,
    /// HTTPS: its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub backend: String,
    pub max_entries: Option<usize>,
    /// file: where the state file is (default: the audit log's path with `.state` appended).
    pub path: Option<PathBuf>,
    /// redis: `redis://HOST:PORT` or `rediss://` (TLS).
    pub url: Option<String>,
    /// redis: bound on every command (default 500ms).
    pub command_timeout: Option<String>,
    /// redis: key prefix, inside the `{…}` hash tag (default `eph`).
    pub key_prefix: Option<String>,
}

/// The Redis URL may carry a password: never printed (review C17).
impl std::fmt::Debug for RawState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawState")
            .field("backend", &self.backend)
            .field("max_entries", &self.max_entries)
            .field("path", &self.path)
            .field("url", &self.url.as_ref().map(|_| "[REDACTED]"))
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            backend: "file".into(),
            max_entries: None,
            path: None,
            url: None,
            command_timeout: None,
            key_prefix: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: PathBuf,
    /// Rotate the file once it holds this many bytes (and on SIGHUP).
    pub rotate_bytes: Option<u64>,
    /// Rotate on SIGHUP too.
    #[serde(default)]
    pub rotate_on_sighup: bool,
    /// Every record also on stdout.
    #[serde(default)]
    pub stdout: bool,
    /// Every record also to syslog: `udp://HOST:PORT`, `tcp://HOST:PORT`, `unix:///dev/log`.
    pub syslog: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    pub default_ttl: Option<String>,
    pub min_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub refresh_cooldown: Option<String>,
    pub stale_window: Option<String>,
    pub fetch_timeout: Option<String>,
    pub max_document_size: Option<usize>,
    /// Let issuer hostnames resolve to loopback/private addresses (internal issuers).
    #[serde(default)]
    pub allow_private_addresses: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    pub profile: String,
    /// OIDC providers: the issuer (attestation providers have none).
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_uri: Option<String>,
    pub jwks_hosts: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub max_token_lifetime: Option<String>,
    pub max_token_age: Option<String>,
    pub max_token_size: Option<usize>,
    /// Accept an `http://` issuer that is not loopback. Only with `jwks_file` (nothing is
    /// fetched), for replaying recorded tokens from such issuers.
    #[serde(default)]
    pub allow_insecure_issuer: bool,
    /// Accept tokens whose `aud` array also names other audiences.
    #[serde(default)]
    pub allow_multiple_audiences: bool,
    /// nitro: the AWS Nitro Enclaves root certificate (PEM), and optionally its SHA-256 to pin.
    pub root_cert_file: Option<PathBuf>,
    pub root_sha256: Option<String>,
    /// nitro: how old a document may be (default 5m).
    pub max_age: Option<String>,
    /// nitro: the document must carry an outstanding broker nonce (default true).
    pub require_nonce: Option<bool>,
    /// aws-ec2-iid: AWS's published certificates valid for any region.
    #[serde(default)]
    pub certificate_files: Vec<PathBuf>,
    /// aws-ec2-iid: AWS's published certificates per region.
    #[serde(default)]
    pub certificates: Vec<RawRegionCertificate>,
    /// aws-ec2-iid: accept DSA-SHA1 and RSA under 2048 bits.
    #[serde(default)]
    pub allow_legacy_crypto: bool,
    /// x509-pop: the CAs that issue workload certificates (PEM).
    #[serde(default)]
    pub trust_anchor_files: Vec<PathBuf>,
    /// x509-pop: CRLs (DER or PEM).
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
    /// x509-pop: revoked serials (hex).
    #[serde(default)]
    pub revoked_serials: Vec<String>,
    /// x509-pop: the `aud` a proof must carry (default: the broker's issuer).
    pub pop_audience: Option<String>,
    /// github-actions, gitlab: the file holding the platform's webhook secret (task-end events).
    pub webhook_secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegionCertificate {
    pub region: String,
    pub file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub name: String,
    pub provider: String,
    pub max_ttl: String,
    #[serde(default)]
    pub conditions: BTreeMap<String, toml::Value>,
    /// Raw Cedar, instead of or in addition to conditions (both must hold).
    pub policy: Option<String>,
    /// Accept a role that does not pin the workload's identity.
    #[serde(default)]
    pub allow_broad: bool,
    /// nitro: admit debug-mode enclaves (all-zero PCR0..2).
    #[serde(default)]
    pub allow_debug: bool,
    /// aws-ec2-iid: accept evidence that can be replayed for the instance's life.
    #[serde(default)]
    pub accept_replayable: bool,
    /// Condition claims that are raw token claims on purpose (not the profile's own names).
    #[serde(default)]
    pub raw_claims: Vec<String>,
    /// jwt: how many times partners may consume the token (`POST /v1/introspect`, `consume`).
    pub max_uses: Option<u32>,
    /// A request without `authorization_details` is refused.
    #[serde(default)]
    pub require_authorization_details: bool,
    /// The RFC 9396 authorization detail types a request may carry.
    #[serde(default)]
    pub authorization_details: Vec<RawDetailType>,
    pub credential: RawCredential,
}

/// `[[roles.authorization_details]]`: one RFC 9396 type a role accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetailType {
    #[serde(rename = "type")]
    pub kind: String,
    /// The fields a detail of this type may carry besides `type`.
    #[serde(default)]
    pub fields: Vec<String>,
    /// The fields it must carry.
    #[serde(default)]
    pub required: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawCredential {
    Jwt {
        audience: String,
    },
    Aws {
        role_arn: String,
        region: Option<String>,
        endpoint_url: Option<String>,
        /// Session tag key → claim name (profile attribute or raw claim path).
        #[serde(default)]
        session_tags: BTreeMap<String, String>,
        #[serde(default)]
        transitive_tag_keys: Vec<String>,
        external_id: Option<String>,
        #[serde(default)]
        policy_arns: Vec<String>,
        /// Scope-down IAM statements, a JSON array, instead of "what the role allows".
        session_policy: Option<String>,
        /// The session may assume other roles (off: their sessions would outlive the deadline).
        #[serde(default)]
        allow_role_chaining: bool,
        /// A revocation denies the task's live sessions at IAM (an inline deny on the role).
        #[serde(default)]
        end_sessions_on_revoke: bool,
    },
    Gcp {
        service_account: String,
        scopes: Vec<String>,
        #[serde(default)]
        delegates: Vec<String>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGcp {
    /// Base URL of the IAM Credentials API (tests point it at a local double).
    pub iam_credentials_url: Option<String>,
}

//! Configuration in two stages: [`RawConfig`] is what TOML says (unknown keys refused), and
//! [`Config`] is everything resolved, parsed and checked. Every problem is reported in one run,
//! each naming its key; a config with any problem never starts a server.

use crate::policy::{Finding, Matcher, PolicyEngine, Role, RoleSpec, Source};
use ephemera_providers::cache::{CacheSettings, KeySource};
use ephemera_providers::fetch::{self, FetchLimits};
use ephemera_providers::profile::Profile;
use ephemera_providers::{Algorithm, KeySet, TokenRules};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Benchmark-only switches; refused unless built with the `bench-knobs` feature.
    pub bench: Option<Safety>,
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// A file holding the admin bearer credential (for /v1/grants, /v1/introspect, /v1/revoke).
    pub token_file: Option<PathBuf>,
    /// Serve the admin routes on this address only (default: beside the others).
    pub listen: Option<String>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub backend: String,
    pub max_entries: Option<usize>,
    /// redis: `redis://HOST:PORT` or `rediss://` (TLS).
    pub url: Option<String>,
    /// redis: bound on every command (default 500ms).
    pub command_timeout: Option<String>,
    /// redis: key prefix, inside the `{…}` hash tag (default `eph`).
    pub key_prefix: Option<String>,
}

impl Default for RawState {
    fn default() -> Self {
        RawState { backend: "memory".into(), max_entries: None, url: None, command_timeout: None, key_prefix: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: PathBuf,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegionCertificate {
    pub region: String,
    pub file: PathBuf,
}

/// How an attestation provider verifies its documents.
#[derive(Debug)]
pub enum Attestor {
    Nitro(ephemera_attestation::nitro::NitroVerifier),
    Ec2(ephemera_attestation::ec2::IidVerifier),
    X509(ephemera_attestation::x509pop::PopVerifier),
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
    pub credential: RawCredential,
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

fn check_credential(key: &str, c: &RawCredential, errs: &mut Vec<String>) -> Option<crate::policy::Credential> {
    use crate::minting::aws::{AwsRole, check_tag};
    use crate::minting::gcp::GcpRole;
    use crate::policy::Credential;
    let before = errs.len();
    let out = match c {
        RawCredential::Jwt { audience } => {
            if audience.is_empty() {
                errs.push(format!("{key}.credential.audience: must not be empty"));
            }
            Credential::Jwt { audience: audience.clone() }
        }
        RawCredential::Aws {
            role_arn,
            region,
            endpoint_url,
            session_tags,
            transitive_tag_keys,
            external_id,
            policy_arns,
            session_policy,
        } => {
            let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
            let arn_ok = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "iam"
                && parts[4].len() == 12
                && parts[4].bytes().all(|b| b.is_ascii_digit())
                && parts[5].starts_with("role/");
            if !arn_ok {
                errs.push(format!("{key}.credential.role_arn: `{role_arn}` is not an IAM role ARN"));
            }
            if session_tags.len() > 50 {
                errs.push(format!("{key}.credential.session_tags: at most 50"));
            }
            for k in session_tags.keys() {
                if let Err(e) = check_tag(k, "") {
                    errs.push(format!("{key}.credential.session_tags: {e}"));
                }
            }
            for k in transitive_tag_keys {
                if !session_tags.contains_key(k) {
                    errs.push(format!("{key}.credential.transitive_tag_keys: `{k}` is not a session tag"));
                }
            }
            if let Some(u) = endpoint_url
                && url::Url::parse(u).is_err()
            {
                errs.push(format!("{key}.credential.endpoint_url: not a URL"));
            }
            let statements = match session_policy.as_deref().map(serde_json::from_str::<serde_json::Value>) {
                None => None,
                Some(Ok(serde_json::Value::Array(a))) if a.iter().all(serde_json::Value::is_object) => Some(a),
                Some(_) => {
                    errs.push(format!("{key}.credential.session_policy: must be a JSON array of IAM statements"));
                    None
                }
            };
            Credential::Aws(AwsRole {
                role_arn: role_arn.clone(),
                region: region.clone(),
                endpoint_url: endpoint_url.clone(),
                session_tags: session_tags.clone(),
                transitive_tag_keys: transitive_tag_keys.clone(),
                external_id: external_id.clone(),
                policy_arns: policy_arns.clone(),
                statements,
            })
        }
        RawCredential::Gcp { service_account, scopes, delegates } => {
            let sa_ok =
                |s: &str| s.split_once('@').is_some_and(|(a, d)| !a.is_empty() && d.contains('.')) && !s.contains('/');
            if !sa_ok(service_account) {
                errs.push(format!(
                    "{key}.credential.service_account: `{service_account}` is not a service account email"
                ));
            }
            if scopes.is_empty() {
                errs.push(format!("{key}.credential.scopes: at least one scope is required"));
            }
            for d in delegates {
                if !sa_ok(d) {
                    errs.push(format!("{key}.credential.delegates: `{d}` is not a service account email"));
                }
            }
            Credential::Gcp(GcpRole {
                service_account: service_account.clone(),
                scopes: scopes.clone(),
                delegates: delegates.clone(),
            })
        }
    };
    (errs.len() == before).then_some(out)
}

/// A configured identity provider, ready to verify.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub profile: Profile,
    pub rules: TokenRules,
    pub source: KeySource,
    /// Attestation providers: the verifier (OIDC providers: `None`).
    pub attestor: Option<Attestor>,
    /// Attestation providers: a broker nonce is required and consumed.
    pub require_nonce: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    Memory { max_entries: usize },
    Redis { url: String, timeout: Duration, prefix: String },
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
    pub detail: Detail,
}

/// What a denial reveals to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The reason slug and every failed check with expected vs got.
    Full,
    /// The reason slug and the names of what failed, no values.
    Reason,
    /// The reason slug only.
    None,
}

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub state: StateBackend,
    pub audit_path: PathBuf,
    pub cache: CacheSettings,
    /// Issuer hostnames may resolve to non-public addresses.
    pub allow_private_addresses: bool,
    pub providers: Vec<Arc<Provider>>,
    pub roles: HashMap<String, Arc<Role>>,
    /// The schema, guardrails and request builder every role's decision goes through.
    pub engine: PolicyEngine,
    /// Lint warnings (errors refuse the config).
    pub findings: Vec<Finding>,
    /// SHA-256 (first 16 hex digits) of the config file: in every audit record and in `explain`.
    pub version: String,
    /// IAM Credentials base URL (default Google's).
    pub gcp_iam_url: Option<String>,
    /// The admin bearer credential, when configured.
    pub admin_token: Option<AdminToken>,
    /// Where the admin routes listen, when apart.
    pub admin_listen: Option<SocketAddr>,
    /// Both on, except in a `bench-knobs` build whose config says otherwise.
    pub safety: Safety,
}

/// Every problem found in a config, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "config error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses a duration like `15m`, `60s`, `1h`.
pub fn parse_duration(key: &str, v: &str, errs: &mut Vec<String>) -> Option<Duration> {
    match humantime::parse_duration(v) {
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(format!("{key}: invalid duration `{v}` ({e})"));
            None
        }
    }
}

fn opt_secs(key: &str, v: &Option<String>, default: u64, errs: &mut Vec<String>) -> u64 {
    v.as_deref().and_then(|v| parse_duration(key, v, errs)).map_or(default, |d| d.as_secs())
}

impl Config {
    /// Reads and checks a config file. Relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|e| ConfigErrors(vec![format!("{}: {}", path.display(), e.to_string().trim())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_raw(raw, base)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        config.version = ephemera_providers::verify::hex(&digest.as_ref()[..8]);
        Ok(config)
    }

    /// Checks a parsed config; `base` resolves relative paths.
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let resolve = |p: &Path| {
            if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
        };

        let listen = raw
            .server
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| errs.push(format!("server.listen: `{}` is not an address ({e})", raw.server.listen)))
            .ok();
        if let Err(e) = fetch::validate_issuer(&raw.server.issuer) {
            errs.push(format!("server.issuer: `{}` {e}", raw.server.issuer));
        }
        let server = ServerSettings {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            issuer: raw.server.issuer.clone(),
            signing_key_file: raw.server.signing_key_file.as_deref().map(resolve),
            publish_key_files: raw.server.publish_key_files.iter().map(|p| resolve(p)).collect(),
            max_body_size: raw.server.max_body_size.unwrap_or(64 * 1024),
            header_read_timeout: Duration::from_secs(opt_secs(
                "server.header_read_timeout",
                &raw.server.header_read_timeout,
                10,
                &mut errs,
            )),
            request_timeout: Duration::from_secs(opt_secs(
                "server.request_timeout",
                &raw.server.request_timeout,
                30,
                &mut errs,
            )),
            rate_limit_per_second: raw.server.rate_limit_per_second.unwrap_or(100),
            rate_limit_burst: raw.server.rate_limit_burst.unwrap_or(200),
            detail: match raw.server.detail.as_deref() {
                None | Some("full") => Detail::Full,
                Some("reason") => Detail::Reason,
                Some("none") => Detail::None,
                Some(other) => {
                    errs.push(format!("server.detail: `{other}` is not one of full, reason, none"));
                    Detail::Full
                }
            },
        };

        let state = match raw.state.backend.as_str() {
            "memory" => StateBackend::Memory { max_entries: raw.state.max_entries.unwrap_or(1_000_000) },
            "redis" => match &raw.state.url {
                Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => StateBackend::Redis {
                    url: url.clone(),
                    timeout: raw
                        .state
                        .command_timeout
                        .as_deref()
                        .and_then(|t| parse_duration("state.command_timeout", t, &mut errs))
                        .unwrap_or(Duration::from_millis(500)),
                    prefix: raw.state.key_prefix.clone().unwrap_or_else(|| "eph".into()),
                },
                _ => {
                    errs.push("state.url: required for the redis backend, as redis:// or rediss://".into());
                    StateBackend::Memory { max_entries: 0 }
                }
            },
            other => {
                errs.push(format!("state.backend: unknown backend `{other}` (expected memory)"));
                StateBackend::Memory { max_entries: 0 }
            }
        };

        let j = &raw.jwks;
        let defaults = CacheSettings::default();
        let cache = CacheSettings {
            default_ttl: opt_secs("jwks.default_ttl", &j.default_ttl, defaults.default_ttl, &mut errs),
            min_ttl: opt_secs("jwks.min_ttl", &j.min_ttl, defaults.min_ttl, &mut errs),
            max_ttl: opt_secs("jwks.max_ttl", &j.max_ttl, defaults.max_ttl, &mut errs),
            refresh_cooldown: opt_secs(
                "jwks.refresh_cooldown",
                &j.refresh_cooldown,
                defaults.refresh_cooldown,
                &mut errs,
            ),
            stale_window: opt_secs("jwks.stale_window", &j.stale_window, defaults.stale_window, &mut errs),
            limits: FetchLimits {
                connect_timeout: Duration::from_secs(5),
                total_timeout: Duration::from_secs(
                    opt_secs("jwks.fetch_timeout", &j.fetch_timeout, 10, &mut errs).max(1),
                ),
                max_body_bytes: j.max_document_size.unwrap_or(100 * 1024),
            },
        };
        if cache.min_ttl > cache.max_ttl {
            errs.push("jwks.min_ttl: greater than jwks.max_ttl".into());
        }

        let mut providers: Vec<Arc<Provider>> = Vec::new();
        for (i, p) in raw.providers.iter().enumerate() {
            let key = format!("providers[{i}] (`{}`)", p.name);
            if providers.iter().any(|q| q.name == p.name) {
                errs.push(format!("{key}.name: duplicate provider name"));
            }
            if let Some(provider) = check_provider(&key, p, &server.issuer, &resolve, &mut errs) {
                providers.push(Arc::new(provider));
            }
        }

        // Which raw claims any condition reads: they become the schema's `context.claims`.
        let raw_claims: BTreeSet<String> = raw
            .roles
            .iter()
            .flat_map(|r| {
                let profile =
                    raw.providers.iter().find(|p| p.name == r.provider).and_then(|p| Profile::parse(&p.profile).ok());
                r.conditions
                    .keys()
                    .filter(move |c| profile.is_some_and(|pr| PolicyEngine::source_for(pr, c) == Source::Claim))
                    .cloned()
            })
            .collect();
        let engine = match PolicyEngine::new(raw_claims, raw.policy.guardrails.as_deref()) {
            Ok(e) => Some(e),
            Err(e) => {
                errs.push(e);
                None
            }
        };
        let admin_token = match raw.admin.token_file.as_deref().map(resolve) {
            None => None,
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(t) if t.trim().len() >= 32 => Some(AdminToken(secrecy::SecretString::from(t.trim().to_owned()))),
                Ok(_) => {
                    errs.push(format!(
                        "admin.token_file: {}: the credential must be at least 32 characters",
                        path.display()
                    ));
                    None
                }
                Err(e) => {
                    errs.push(format!("admin.token_file: {}: {e}", path.display()));
                    None
                }
            },
        };
        let admin_listen = raw.admin.listen.as_deref().and_then(|l| {
            l.parse::<SocketAddr>().map_err(|e| errs.push(format!("admin.listen: `{l}` is not an address ({e})"))).ok()
        });
        let mut roles = HashMap::new();
        let mut findings = Vec::new();
        for (i, r) in raw.roles.iter().enumerate() {
            let key = format!("roles[{i}] (`{}`)", r.name);
            if roles.contains_key(&r.name) {
                errs.push(format!("{key}.name: duplicate role name"));
            }
            if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b)) {
                errs.push(format!("{key}.name: use letters, digits and - _ . : / only"));
            }
            let provider = providers.iter().find(|p| p.name == r.provider).cloned();
            if provider.is_none() && !raw.providers.iter().any(|p| p.name == r.provider) {
                errs.push(format!("{key}.provider: no provider named `{}`", r.provider));
            }
            let max_ttl = parse_duration(&format!("{key}.max_ttl"), &r.max_ttl, &mut errs);
            if max_ttl.is_some_and(|d| d.as_secs() == 0 || d.as_secs() > 12 * 3600) {
                errs.push(format!("{key}.max_ttl: must be between 1s and 12h"));
            }
            let mut conditions = Vec::new();
            for (claim, v) in &r.conditions {
                match Matcher::parse(v) {
                    Ok(m) => conditions.push((claim.clone(), m)),
                    Err(e) => errs.push(format!("{key}.conditions.{claim}: {e}")),
                }
            }
            let Some(credential) = check_credential(&key, &r.credential, &mut errs) else { continue };
            let (Some(provider), Some(max_ttl), Some(engine)) = (provider, max_ttl, &engine) else { continue };
            let spec = RoleSpec {
                name: r.name.clone(),
                provider,
                max_ttl,
                conditions,
                policy: r.policy.clone(),
                credential,
                allow_broad: r.allow_broad,
                allow_debug: r.allow_debug,
            };
            if spec.provider.profile == Profile::Ec2Iid && !r.accept_replayable {
                errs.push(format!(
                    "{key}.accept_replayable: an EC2 instance identity document can be replayed for the life of the instance; say `accept_replayable = true` to accept it (Nitro or X.509 proof of possession prove freshness)"
                ));
            }
            if r.allow_debug && spec.provider.profile != Profile::Nitro {
                errs.push(format!("{key}.allow_debug: only for nitro roles"));
            }
            match engine.compile(spec) {
                Ok((role, found)) => {
                    for f in found {
                        if f.severity == "error" {
                            errs.push(format!("{key}: {}: {}", f.code, f.message));
                        }
                        findings.push(f);
                    }
                    roles.insert(r.name.clone(), Arc::new(role));
                }
                Err(es) => errs.extend(es.into_iter().map(|e| format!("{key}: {e}"))),
            }
        }

        if matches!(state, StateBackend::Redis { .. }) && server.signing_key_file.is_none() {
            errs.push("server.signing_key_file: required with the redis backend: replicas must sign with one key, or partners (and introspection) meet tokens their JWKS does not verify".into());
        }
        let safety = match raw.bench {
            Some(b) if cfg!(feature = "bench-knobs") => b,
            Some(_) => {
                errs.push("bench: accepted only by a binary built with `--features bench-knobs` (scripts/bench-peers); it switches replay protection or the audit log off".into());
                Safety::default()
            }
            None => Safety::default(),
        };
        if let (true, Some(engine)) = (errs.is_empty(), engine) {
            Ok(Config {
                server,
                state,
                audit_path: resolve(&raw.audit.path),
                cache,
                allow_private_addresses: raw.jwks.allow_private_addresses,
                providers,
                roles,
                engine,
                findings,
                version: String::new(),
                gcp_iam_url: raw.gcp.iam_credentials_url.clone(),
                admin_token,
                admin_listen,
                safety,
            })
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

fn parse_algorithms(key: &str, names: &Option<Vec<String>>, errs: &mut Vec<String>) -> Vec<Algorithm> {
    let Some(names) = names else {
        return vec![Algorithm::RS256, Algorithm::ES256];
    };
    let all = ephemera_providers::jose::ASYMMETRIC_ALGORITHMS;
    let mut out = Vec::new();
    for n in names {
        match ephemera_providers::jose::parse_alg(n, all) {
            Ok(a) => out.push(a),
            Err(_) => errs.push(format!(
                "{key}.algorithms: `{n}` is not allowed (asymmetric JWS algorithms only; never none or HS*)"
            )),
        }
    }
    if out.is_empty() {
        errs.push(format!("{key}.algorithms: at least one algorithm is required"));
    }
    out
}

fn check_provider(
    key: &str,
    p: &RawProvider,
    broker_issuer: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<String>,
) -> Option<Provider> {
    let before = errs.len();
    if p.name.is_empty() {
        errs.push(format!("{key}.name: must not be empty"));
    }
    let profile = Profile::parse(&p.profile).map_err(|e| errs.push(format!("{key}.profile: {e}"))).ok();
    if let Some(profile) = profile.filter(|p| p.is_attestation()) {
        return check_attestation_provider(key, p, profile, broker_issuer, resolve, errs);
    }
    match fetch::validate_issuer(&p.issuer) {
        Ok(_) => {}
        Err(e) if e.contains("http on a host") && p.allow_insecure_issuer && p.jwks_file.is_some() => {}
        Err(e) if e.contains("http on a host") && p.allow_insecure_issuer => {
            errs.push(format!(
                "{key}.allow_insecure_issuer: only allowed with jwks_file (nothing may be fetched over http) ({e})"
            ));
        }
        Err(e) => errs.push(format!("{key}.issuer: `{}` {e}", p.issuer)),
    }
    if p.issuer.trim_end_matches('/') == broker_issuer.trim_end_matches('/') {
        errs.push(format!("{key}.issuer: is the broker's own issuer; broker credentials can never be exchanged again"));
    }
    if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
        errs.push(format!("{key}.audiences: at least one non-empty audience is required"));
    }
    let algorithms = parse_algorithms(key, &p.algorithms, errs);
    let mut rules = TokenRules::new(p.issuer.clone(), p.audiences.clone());
    rules.algorithms = algorithms;
    rules.leeway = opt_secs(&format!("{key}.leeway"), &p.leeway, 60, errs);
    if rules.leeway > 300 {
        errs.push(format!("{key}.leeway: at most 5m"));
    }
    if let Some(profile) = profile
        && let Err(e) = profile.check_issuer(&p.issuer)
        && !p.allow_insecure_issuer
    {
        errs.push(format!("{key}.issuer: `{}` {e} (profile `{}`)", p.issuer, profile.name()));
    }
    let default_lifetime = profile.map_or(rules.max_lifetime, Profile::default_max_lifetime);
    rules.max_lifetime = opt_secs(&format!("{key}.max_token_lifetime"), &p.max_token_lifetime, default_lifetime, errs);
    rules.max_age = opt_secs(&format!("{key}.max_token_age"), &p.max_token_age, rules.max_age, errs);
    rules.max_token_bytes = p.max_token_size.unwrap_or(rules.max_token_bytes);
    rules.allow_multiple_audiences = p.allow_multiple_audiences;
    let source = match (&p.jwks_file, &p.jwks_uri) {
        (Some(_), Some(_)) => {
            errs.push(format!("{key}: set jwks_file or jwks_uri, not both"));
            None
        }
        (Some(file), None) => {
            let path = resolve(file);
            match std::fs::read(&path) {
                Err(e) => {
                    errs.push(format!("{key}.jwks_file: {}: {e}", path.display()));
                    None
                }
                Ok(bytes) => match KeySet::from_json(&bytes) {
                    Ok(set) if set.keys().is_empty() => {
                        errs.push(format!("{key}.jwks_file: no usable key ({} ignored)", set.ignored().len()));
                        None
                    }
                    Ok(set) => Some(KeySource::Pinned(Arc::new(set))),
                    Err(e) => {
                        errs.push(format!("{key}.jwks_file: {e}"));
                        None
                    }
                },
            }
        }
        (None, Some(uri)) => match (url::Url::parse(uri), fetch::validate_issuer(&p.issuer)) {
            (Ok(u), Ok(iss)) => match fetch::check_jwks_uri(&iss, &u, p.jwks_hosts.as_deref().unwrap_or(&[])) {
                Ok(()) => Some(KeySource::JwksUrl { issuer: p.issuer.clone(), url: u }),
                Err(e) => {
                    errs.push(format!("{key}.jwks_uri: {e}"));
                    None
                }
            },
            (Err(e), _) => {
                errs.push(format!("{key}.jwks_uri: {e}"));
                None
            }
            (_, Err(_)) => None,
        },
        (None, None) => Some(KeySource::Discovery {
            issuer: p.issuer.clone(),
            jwks_hosts: p.jwks_hosts.clone().unwrap_or_default(),
        }),
    };
    if errs.len() > before {
        return None;
    }
    Some(Provider {
        name: p.name.clone(),
        profile: profile?,
        rules,
        source: source?,
        attestor: None,
        require_nonce: false,
    })
}

fn read_certs(key: &str, path: &Path, errs: &mut Vec<String>) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    match CertificateDer::pem_file_iter(path) {
        Ok(it) => {
            let certs: Result<Vec<_>, _> = it.collect();
            match certs {
                Ok(c) if !c.is_empty() => c,
                Ok(_) => {
                    errs.push(format!("{key}: {}: no PEM certificate", path.display()));
                    vec![]
                }
                Err(e) => {
                    errs.push(format!("{key}: {}: {e}", path.display()));
                    vec![]
                }
            }
        }
        Err(e) => {
            errs.push(format!("{key}: {}: {e}", path.display()));
            vec![]
        }
    }
}

fn check_attestation_provider(
    key: &str,
    p: &RawProvider,
    profile: Profile,
    broker_issuer: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<String>,
) -> Option<Provider> {
    use ephemera_attestation::{ec2, nitro, x509pop};
    let before = errs.len();
    if !p.issuer.is_empty() || !p.audiences.is_empty() || p.jwks_file.is_some() || p.jwks_uri.is_some() {
        errs.push(format!("{key}: issuer, audiences and jwks_* are for OIDC providers, not `{}`", profile.name()));
    }
    let digest =
        |b: &[u8]| ephemera_providers::verify::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    let (attestor, issuer) = match profile {
        Profile::Nitro => {
            let Some(file) = &p.root_cert_file else {
                errs.push(format!("{key}.root_cert_file: required (the AWS Nitro Enclaves root G1, PEM)"));
                return None;
            };
            let root = read_certs(&format!("{key}.root_cert_file"), &resolve(file), errs).into_iter().next()?;
            let der = root.as_ref().to_vec();
            let fingerprint = digest(&der);
            let verifier = match &p.root_sha256 {
                Some(pin) => nitro::NitroVerifier::with_pinned_sha256(der, pin),
                None => nitro::NitroVerifier::new(der),
            };
            match verifier {
                Ok(mut v) => {
                    if let Some(age) =
                        p.max_age.as_deref().and_then(|a| parse_duration(&format!("{key}.max_age"), a, errs))
                    {
                        v.max_age_secs = age.as_secs();
                    }
                    v.require_nonce = p.require_nonce.unwrap_or(true);
                    if let Some(l) = &p.leeway {
                        v.leeway_secs = opt_secs(&format!("{key}.leeway"), &Some(l.clone()), v.leeway_secs, errs);
                    }
                    (Attestor::Nitro(v), format!("urn:ephemera:nitro:{fingerprint}"))
                }
                Err(e) => {
                    errs.push(format!("{key}.root_cert_file: {e}"));
                    return None;
                }
            }
        }
        Profile::Ec2Iid => {
            let mut certs = Vec::new();
            for f in &p.certificate_files {
                certs.extend(
                    read_certs(&format!("{key}.certificate_files"), &resolve(f), errs)
                        .into_iter()
                        .map(|c| ("*".to_owned(), c)),
                );
            }
            for c in &p.certificates {
                certs.extend(
                    read_certs(&format!("{key}.certificates"), &resolve(&c.file), errs)
                        .into_iter()
                        .map(|d| (c.region.clone(), d)),
                );
            }
            if certs.is_empty() {
                errs.push(format!("{key}: certificate_files or certificates: AWS's published certificates are required (none is built in)"));
                return None;
            }
            match ec2::IidVerifier::new(certs) {
                Ok(mut v) => {
                    v.allow_legacy_crypto = p.allow_legacy_crypto;
                    (Attestor::Ec2(v), "urn:ephemera:aws-ec2-iid".to_owned())
                }
                Err(e) => {
                    errs.push(format!("{key}.certificates: {e}"));
                    return None;
                }
            }
        }
        _ => {
            let mut anchors = Vec::new();
            for f in &p.trust_anchor_files {
                anchors.extend(read_certs(&format!("{key}.trust_anchor_files"), &resolve(f), errs));
            }
            if anchors.is_empty() {
                errs.push(format!("{key}.trust_anchor_files: at least one CA certificate is required"));
                return None;
            }
            let fingerprint =
                digest(anchors.iter().flat_map(|a| a.as_ref().iter().copied()).collect::<Vec<u8>>().as_slice());
            let audience = p.pop_audience.clone().unwrap_or_else(|| broker_issuer.to_owned());
            let mut crls = Vec::new();
            for f in &p.crl_files {
                match std::fs::read(resolve(f)) {
                    Ok(b) if b.starts_with(b"-----BEGIN") => {
                        use rustls_pki_types::pem::PemObject;
                        match rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&b) {
                            Ok(der) => crls.push(der.as_ref().to_vec()),
                            Err(e) => errs.push(format!("{key}.crl_files: {}: {e}", f.display())),
                        }
                    }
                    Ok(b) => crls.push(b),
                    Err(e) => errs.push(format!("{key}.crl_files: {}: {e}", f.display())),
                }
            }
            let verifier = x509pop::PopVerifier::new(anchors, audience)
                .and_then(|v| if crls.is_empty() { Ok(v) } else { v.with_crls(&crls) })
                .map(|v| v.with_revoked_serials(p.revoked_serials.iter()))
                .map(|mut v| {
                    if let Some(l) = &p.leeway {
                        v.leeway_secs = opt_secs(&format!("{key}.leeway"), &Some(l.clone()), v.leeway_secs, errs);
                    }
                    v
                });
            match verifier {
                Ok(v) => (Attestor::X509(v), format!("urn:ephemera:x509-pop:{}", &fingerprint[..32])),
                Err(e) => {
                    errs.push(format!("{key}: {e}"));
                    return None;
                }
            }
        }
    };
    let require_nonce = match profile {
        Profile::Nitro => p.require_nonce.unwrap_or(true),
        Profile::X509Pop => true,
        _ => false,
    };
    let mut rules = TokenRules::new(issuer, vec![]);
    rules.leeway = opt_secs(&format!("{key}.leeway"), &p.leeway, 5, errs);
    if errs.len() > before {
        return None;
    }
    Some(Provider {
        name: p.name.clone(),
        profile,
        rules,
        source: KeySource::Pinned(Arc::new(KeySet::default())),
        attestor: Some(attestor),
        require_nonce,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        Config::from_raw(raw, Path::new("."))
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
issuer = "https://broker.example.com"
[audit]
path = "audit.jsonl"
[[providers]]
name = "ci"
profile = "oidc"
issuer = "https://ci.example.com"
audiences = ["https://broker.example.com"]
[[roles]]
name = "deploy"
provider = "ci"
max_ttl = "15m"
conditions = { sub = "repo:acme/app:ref:refs/heads/main" }
credential = { kind = "jwt", audience = "https://partner.example" }
"#;

    #[test]
    fn good_config_loads() {
        let c = load(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.roles["deploy"].max_ttl, Duration::from_secs(900));
        assert!(matches!(c.providers[0].source, KeySource::Discovery { .. }));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let bad = GOOD
            .replace("\"15m\"", "\"fifteen\"")
            .replace("https://ci.example.com", "http://ci.example.com")
            .replace("provider = \"ci\"", "provider = \"nope\"");
        let errs = load(&bad).err().map(|e| e.0).unwrap_or_default();
        let all = errs.join("\n");
        assert!(all.contains("max_ttl: invalid duration `fifteen`"), "{all}");
        assert!(all.contains("providers[0] (`ci`).issuer"), "{all}");
        assert!(all.contains("provider: no provider named `nope`"), "{all}");
    }

    #[test]
    fn bench_switches_need_the_bench_build() {
        let c = load(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.safety, Safety::default());
        assert_eq!(c.safety, Safety { replay: true, audit: true });
        let off = format!("{GOOD}\n[bench]\nreplay = false\naudit = false\n");
        match load(&off) {
            Ok(c) if cfg!(feature = "bench-knobs") => assert_eq!(c.safety, Safety { replay: false, audit: false }),
            Err(e) if !cfg!(feature = "bench-knobs") => assert!(e.0.join("").contains("bench-knobs"), "{e}"),
            other => panic!("{:?}", other.map(|c| c.safety)),
        }
    }

    #[test]
    fn unknown_keys_hmac_and_own_issuer_are_refused() {
        assert!(load(&GOOD.replace("[audit]", "[audit]\ncolour = \"red\"")).is_err());
        let hs = GOOD.replace("audiences = [", "algorithms = [\"HS256\"]\naudiences = [");
        assert!(load(&hs).err().map(|e| e.0.join("")).unwrap_or_default().contains("HS256"));
        let own = GOOD.replace("https://ci.example.com", "https://broker.example.com");
        assert!(load(&own).err().map(|e| e.0.join("")).unwrap_or_default().contains("broker's own issuer"));
    }
}

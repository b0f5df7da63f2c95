//! Configuration in two stages: [`RawConfig`] is what TOML says (unknown keys refused), and
//! [`Config`] is everything resolved, parsed and checked. Every problem is reported in one run,
//! each naming its key; a config with any problem never starts a server.
//!
//! | file | holds |
//! |---|---|
//! | `raw.rs` | every `Raw*` serde type: the TOML shape, no logic |
//! | `defaults.rs` | every default and bound, by name |
//! | `server.rs` | `[server]`, `[state]`, `[jwks]`, `[admin]`, `[bench]` |
//! | `provider.rs` | `[[providers]]`: OIDC issuers and attestation verifiers |
//! | `role.rs` | `[[roles]]`: conditions compiled by `policy`, credentials checked for `minting` |

mod defaults;
mod events;
mod preflight;
mod provider;
mod raw;
mod role;
mod server;
mod unknown;

pub use provider::{Provider, ProviderKind};
pub use raw::*;
pub use role::Role;
pub use server::{AdminToken, Disclosure, Introspector, Safety, ServerSettings, StateBackend};

use crate::policy::{Finding, PolicyEngine};
use ephemera_providers::cache::CacheSettings;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Partners' credentials for introspection only, each limited to its audiences.
    pub introspectors: Vec<server::Introspector>,
    /// Rotation and the sinks besides the file.
    pub audit_options: crate::audit::AuditOptions,
    /// The admin listener asks for client certificates chaining to this CA.
    pub admin_client_ca: Option<PathBuf>,
    /// Partners pushed a SET when a broker JWT of their audience is revoked.
    pub receivers: Vec<events::Receiver>,
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

pub(crate) fn opt_secs(key: &str, v: &Option<String>, default: u64, errs: &mut Vec<String>) -> u64 {
    v.as_deref().and_then(|v| parse_duration(key, v, errs)).map_or(default, |d| d.as_secs())
}

impl Config {
    /// The settings fixed when the broker starts that `new` changes: the listeners, the state
    /// backend, the audit log, the key cache and how issuers are fetched, the signing keys, the
    /// HTTP limits, the GCP endpoint and the bench switches. A reload that changes any of them is
    /// refused whole, naming them: applying part of a config would leave the broker running on
    /// settings its file no longer says (review C14).
    pub fn restart_needed_for(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.server, &new.server);
        let fixed: [(&'static str, bool); 17] = [
            ("server.listen", a.listen != b.listen),
            ("server.signing_key_file", a.signing_key_file != b.signing_key_file),
            ("server.publish_key_files", a.publish_key_files != b.publish_key_files),
            ("server.max_body_size", a.max_body_size != b.max_body_size),
            ("server.header_read_timeout", a.header_read_timeout != b.header_read_timeout),
            ("server.request_timeout", a.request_timeout != b.request_timeout),
            ("server.rate_limit_per_second", a.rate_limit_per_second != b.rate_limit_per_second),
            ("server.rate_limit_burst", a.rate_limit_burst != b.rate_limit_burst),
            ("server.trusted_proxies", a.trusted_proxies != b.trusted_proxies),
            ("admin.listen", self.admin_listen != new.admin_listen),
            ("server.tls_cert_file, server.tls_key_file", a.tls != b.tls),
            ("admin.client_ca_file", self.admin_client_ca != new.admin_client_ca),
            ("audit.path", self.audit_path != new.audit_path || self.audit_options != new.audit_options),
            ("state", self.state != new.state),
            ("jwks", self.cache != new.cache || self.allow_private_addresses != new.allow_private_addresses),
            ("gcp.iam_credentials_url", self.gcp_iam_url != new.gcp_iam_url),
            ("bench", self.safety != new.safety),
        ];
        fixed.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
    }
}

/// A TOML error as its line, column and message, never the source line it quotes: that line may
/// hold a secret (a Redis URL's password), and a refused reload is logged (review C17).
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML parse error at line {line}, column {column}: {}", e.message().trim())
        }
        None => format!("TOML parse error: {}", e.message().trim()),
    }
}

impl Config {
    /// Reads and checks a config file. Relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let named = |errs: Vec<String>| errs.into_iter().map(|e| format!("{}: {e}", path.display())).collect();
        let base = path.parent().unwrap_or(Path::new("."));
        match unknown::parse(&text, |e| toml_error(e, &text)) {
            (Some(raw), errs) if errs.is_empty() => Config::from_raw(raw, base).map(|c| c.versioned(&text)),
            // the shape's problems, and then what the checks find in the rest (every problem in one run)
            (Some(raw), mut errs) => {
                if let Err(ConfigErrors(more)) = Config::from_raw(raw, base) {
                    errs.extend(more);
                }
                Err(ConfigErrors(named(errs)))
            }
            (None, errs) => Err(ConfigErrors(named(errs))),
        }
    }

    /// Checks a config held in memory (`ephemera dev`'s); `base` resolves relative paths. Its
    /// version is that of the text, as for a file.
    pub fn from_text(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let raw = match unknown::parse(text, |e| toml_error(e, text)) {
            (Some(raw), errs) if errs.is_empty() => raw,
            (_, errs) => return Err(ConfigErrors(errs)),
        };
        Config::from_raw(raw, base).map(|c| c.versioned(text))
    }

    /// The version of the config text: SHA-256, first 16 hex digits (in every audit record).
    fn versioned(mut self, text: &str) -> Config {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        self.version = ephemera_providers::verify::hex(&digest.as_ref()[..8]);
        self
    }

    /// Checks a parsed config; `base` resolves relative paths. Each section is checked by its own
    /// builder, in the order of the file; every problem of every section is reported. Its
    /// `version` is empty: it was not read from text ([`Config::load`], [`Config::from_text`]).
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let resolve = |p: &Path| {
            if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
        };
        let server = ServerSettings::from_raw(&raw.server, &resolve, &mut errs);
        let audit_path = resolve(&raw.audit.path);
        let audit_options = crate::audit::AuditOptions {
            rotate_bytes: raw.audit.rotate_bytes,
            rotate_on_sighup: raw.audit.rotate_on_sighup,
            stdout: raw.audit.stdout,
            syslog: raw.audit.syslog.clone(),
        };
        if raw.audit.rotate_bytes.is_some_and(|b| b < 4096) {
            errs.push("audit.rotate_bytes: at least 4096".into());
        }
        if let Some(t) = &raw.audit.syslog {
            let ok = ["udp://", "tcp://", "unix://"].iter().any(|p| t.strip_prefix(p).is_some_and(|r| !r.is_empty()));
            if !ok {
                errs.push(format!("audit.syslog: `{t}`: udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH"));
            }
        }
        let state = StateBackend::from_raw(&raw.state, &resolve, &audit_path, &mut errs);
        let cache = server::cache_settings(&raw.jwks, &mut errs);
        let providers = provider::build_all(&raw.providers, &server.issuer, &resolve, &mut errs);
        let engine = role::engine(&raw, &mut errs);
        let (admin_token, admin_listen, introspectors, admin_client_ca) =
            server::admin(&raw.admin, &resolve, &mut errs);
        if admin_client_ca.is_some() && server.tls.is_none() {
            errs.push("admin.client_ca_file: needs server.tls_cert_file and server.tls_key_file".into());
        }
        let (roles, findings) = role::build_all(&raw, &providers, engine.as_ref(), &mut errs);
        if matches!(state, StateBackend::Redis { .. }) && server.signing_key_file.is_none() {
            errs.push("server.signing_key_file: required with the redis backend: replicas must sign with one key, or partners (and introspection) meet tokens their JWKS does not verify".into());
        }
        let receivers = events::receivers(&raw.events, &resolve, &mut errs);
        let safety = server::safety(raw.bench, &mut errs);
        match (errs.is_empty(), engine) {
            (true, Some(engine)) => Ok(Config {
                server,
                state,
                audit_path,
                audit_options,
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
                introspectors,
                admin_client_ca,
                receivers,
                safety,
            }),
            _ => Err(ConfigErrors(errs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ephemera_providers::cache::KeySource;

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
        assert!(matches!(c.providers[0].kind, ProviderKind::Oidc { source: KeySource::Discovery { .. } }));
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

    /// Review (b) bug 3: `ephemera dev` built its config with `from_raw`, so its audit records
    /// said `"policy_version": ""`. A config from text has the text's version, as a file has.
    #[test]
    fn a_config_from_text_has_its_version() {
        let c = Config::from_text(GOOD, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.version.len(), 16);
        assert!(c.version.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{}", c.version);
        let other = Config::from_text(&GOOD.replace("15m", "10m"), Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(other.version, c.version);
        // the twin: from_raw alone has none
        assert_eq!(load(GOOD).map(|c| c.version).ok().as_deref(), Some(""));
    }

    /// Review (b) bug 2: an attestation provider's bad `leeway` was parsed twice (for the
    /// verifier and for the rules) and so reported twice.
    #[test]
    fn a_bad_attestation_leeway_is_reported_once() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("attestation/fuzz/aws_nitro_root_g1.pem");
        let nitro = |leeway: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\nissuer = \"https://broker.example.com\"\n[audit]\npath = \"a.jsonl\"\n\
                 [[providers]]\nname = \"enclave\"\nprofile = \"nitro\"\nroot_cert_file = \"{}\"\nleeway = \"{leeway}\"\n",
                root.display()
            )
        };
        let errs = load(&nitro("soon")).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(errs.iter().filter(|e| e.contains("leeway")).count(), 1, "{errs:?}");
        // the twin: a good leeway loads, into the verifier and the rules alike
        let c = load(&nitro("30s")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.providers[0].rules.leeway, 30);
    }

    /// Attestation leeway and max_age are bounded as OIDC leeway is (review C19): ten years of
    /// leeway would accept certificates long expired. The twin: values inside the bounds load.
    #[test]
    fn attestation_leeway_and_max_age_are_bounded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("attestation/fuzz/aws_nitro_root_g1.pem");
        let nitro = |extra: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\nissuer = \"https://broker.example.com\"\n[audit]\npath = \"a.jsonl\"\n\
                 [[providers]]\nname = \"enclave\"\nprofile = \"nitro\"\nroot_cert_file = \"{}\"\n{extra}\n",
                root.display()
            )
        };
        let errs = |extra: &str| load(&nitro(extra)).err().map(|e| e.0).unwrap_or_default();
        assert!(errs("leeway = \"3650d\"").iter().any(|e| e.contains("leeway: at most 5m")));
        assert!(errs("max_age = \"3650d\"").iter().any(|e| e.contains("max_age: at most 1h")));
        assert!(load(&nitro("leeway = \"5m\"\nmax_age = \"1h\"")).is_ok());
    }

    /// An x509-pop provider with several trust anchors: any of them could issue any SPIFFE ID or
    /// name, so each role pins the CA that issues its workload (`anchor_sha256`, review C9). The
    /// twins: pinned, it loads; with one anchor, no pin is needed.
    #[test]
    fn several_trust_anchors_need_the_anchor_pinned() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let pop = |anchors: &str, conditions: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\nissuer = \"https://broker.example.com\"\n[audit]\npath = \"a.jsonl\"\n\
                 [[providers]]\nname = \"pki\"\nprofile = \"x509-pop\"\ntrust_anchor_files = [{anchors}]\n\
                 [[roles]]\nname = \"r\"\nprovider = \"pki\"\nmax_ttl = \"5m\"\nconditions = {{ {conditions} }}\n\
                 credential = {{ kind = \"jwt\", audience = \"https://partner.example\" }}\n"
            )
        };
        let a = format!("\"{}\"", dir.join("x509-pop-ca.example.pem").display());
        let b = format!("\"{}\"", dir.join("AWS_NitroEnclaves_Root-G1.pem").display());
        let spiffe = "spiffe_id = \"spiffe://example.org/ns/prod/sa/payments\"";
        let errs = Config::from_text(&pop(&format!("{a}, {b}"), spiffe), Path::new(".")).err().map(|e| e.to_string());
        assert!(errs.as_deref().is_some_and(|e| e.contains("anchor_unpinned")), "{errs:?}");
        let pinned = format!("{spiffe}, anchor_sha256 = \"{}\"", "ab".repeat(32));
        assert!(Config::from_text(&pop(&format!("{a}, {b}"), &pinned), Path::new(".")).is_ok());
        assert!(Config::from_text(&pop(&a, spiffe), Path::new(".")).is_ok());
    }

    /// `allow_insecure_issuer` waives the https scheme only, never the profile's issuer shape
    /// (review C18).
    #[test]
    fn allow_insecure_issuer_waives_only_the_scheme() {
        let gcp = |issuer: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\nissuer = \"https://broker.example.com\"\n[audit]\npath = \"a.jsonl\"\n\
                 [[providers]]\nname = \"g\"\nprofile = \"gcp\"\nissuer = \"{issuer}\"\naudiences = [\"x\"]\nallow_insecure_issuer = true\n"
            )
        };
        let errs = load(&gcp("https://accounts.google.com.evil.example")).err().map(|e| e.0).unwrap_or_default();
        assert!(errs.iter().any(|e| e.contains("providers[0] (`g`).issuer")), "{errs:?}");
        let twin = load(&gcp("https://accounts.google.com")).err().map(|e| e.0).unwrap_or_default();
        assert!(twin.is_empty(), "{twin:?}");
    }

    /// A syntax error names its line and column, never the line's text (which may hold a
    /// secret, review C17).
    #[test]
    fn a_toml_error_never_quotes_the_source_line() {
        let text =
            format!("{GOOD}\n[state]\nbackend = \"redis\"\nurl = \"redis://:S3cretRedisPassw0rd@127.0.0.1:6379\",\n");
        let err = Config::from_text(&text, Path::new(".")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("TOML parse error at line") && err.contains("column"), "{err}");
        assert!(!err.contains("S3cret"), "{err}");
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

//! The command line. Exit codes: 0 ok (or allow), 1 runtime failure, 2 usage or config error,
//! 3 denied (`explain`) or findings (`check`, `audit verify`).

use crate::audit::AuditLog;
use crate::clock::{Clock, FixedClock, SystemClock, rfc3339};
use crate::config::{Config, StateBackend};
use crate::exchange::{Broker, ExchangeRequest, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, Trace};
use crate::minting::jwt::BrokerSigner;
use crate::secret::SubjectToken;
use crate::state::memory::MemoryStore;
use clap::{Parser, Subcommand, ValueEnum};
use ephemera_providers::KeyCache;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `println!` that does not panic when stdout is closed (`ephemera explain … | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
pub(crate) use outln;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_DENY: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "ephemera",
    version,
    about = "Workload identity federation broker: platform assertions in, short-lived credentials out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenTypeArg {
    /// An OIDC ID token (JWT)
    IdToken,
    /// A JWT
    Jwt,
    /// An AWS Nitro Enclaves attestation document (raw CBOR or base64)
    NitroAttestation,
    /// An X.509 proof of possession (compact JWS with x5c)
    X509Pop,
    /// An EC2 instance identity document (PKCS#7, or the JSON document + signature form)
    AwsEc2Iid,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker with a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the broker on embedded defaults with a demo issuer (NOT for production).
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Explain the decision the server would take on a token for a role (nothing is marked used).
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        role: String,
        #[arg(long, required_unless_present = "claims", conflicts_with = "claims")]
        token_file: Option<PathBuf>,
        /// A JSON file of claims to evaluate against the policies (no signature, no verification).
        #[arg(long)]
        claims: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "id-token")]
        token_type: TokenTypeArg,
        /// Evaluate at this UNIX time instead of now.
        #[arg(long)]
        at: Option<i64>,
        /// Print the trace as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load and check a config; print every problem.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Exchange an assertion at a broker and print the credential (client side).
    Exchange(crate::client::ExchangeArgs),
    /// List the credentials a broker handed out that have not expired (admin).
    Grants {
        /// The broker's base URL (its admin listener when `[admin] listen` is set).
        #[arg(long)]
        broker: String,
        /// A file holding the admin bearer credential.
        #[arg(long)]
        admin_token_file: PathBuf,
        /// Only this role's grants.
        #[arg(long)]
        role: Option<String>,
        /// Only grants still active (the default; expired grants leave the inventory on their own).
        #[arg(long, default_value_t = true)]
        active: bool,
        #[arg(long)]
        json: bool,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check an audit log's hash chain.
    Verify { file: PathBuf },
}

fn init_tracing(json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // These crates print request and response bodies (credentials, tokens) at debug and trace:
    // they are capped at info whatever RUST_LOG says.
    for capped in CAPPED_LOG_TARGETS {
        if let Ok(d) = format!("{capped}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { b.json().try_init() } else { b.try_init() };
}

/// Log targets never shown below info (they would print credentials).
pub const CAPPED_LOG_TARGETS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_http_client",
    "aws_smithy_runtime_api",
    "aws_sdk_sts",
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "rustls",
    "gcp_auth",
];

/// Builds a broker from a checked config.
pub async fn build_broker(
    config: Config,
    clock: Arc<dyn Clock>,
    audit: Option<AuditLog>,
    signer: Option<BrokerSigner>,
) -> Result<Broker, String> {
    let signer = match (signer, &config.server.signing_key_file) {
        (Some(s), _) => s,
        (None, Some(path)) => BrokerSigner::from_pem_file(path).map_err(|e| e.to_string())?,
        (None, None) => {
            tracing::warn!(
                "no server.signing_key_file: using a generated key; broker tokens stop verifying when the process exits"
            );
            BrokerSigner::generate().map_err(|e| e.to_string())?
        }
    };
    let mut signer = signer;
    for path in &config.server.publish_key_files {
        let other = BrokerSigner::from_pem_file(path).map_err(|e| format!("server.publish_key_files: {e}"))?;
        signer.publish(&other);
    }
    let http = ephemera_providers::fetch::http_client(
        &config.cache.limits,
        Arc::new(ephemera_providers::resolve::SystemLookup),
        config.allow_private_addresses,
    )?;
    let keys = KeyCache::new(config.cache.clone(), http);
    let state: Arc<dyn crate::state::StateStore> = match &config.state {
        StateBackend::Memory { max_entries } => Arc::new(MemoryStore::new(*max_entries)),
        StateBackend::Redis { url, timeout, prefix } => {
            Arc::new(crate::state::redis::RedisStore::new(url, *timeout, prefix)?)
        }
    };
    let kinds: Vec<&str> = config.roles.values().map(|r| r.credential.kind()).collect();
    let aws = if kinds.contains(&"aws") { Some(crate::minting::aws::AwsMinter::from_env().await) } else { None };
    let gcp = if kinds.contains(&"gcp") {
        Some(crate::minting::gcp::GcpMinter::new(config.gcp_iam_url.clone())?)
    } else {
        None
    };
    Ok(Broker { config: arc_swap::ArcSwap::from_pointee(config), keys, state, audit, signer, clock, aws, gcp })
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EXIT_USAGE)
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => {
            init_tracing(true);
            let path = config.clone();
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            serve(config, None, None, Some(path)).await
        }
        Command::Dev { listen } => {
            init_tracing(false);
            dev(&listen).await
        }
        Command::Explain { config, role, token_file, claims, token_type, at, json } => {
            init_tracing(false);
            let input = match (token_file, claims) {
                (Some(t), _) => Input::Token(t),
                (None, Some(c)) => Input::Claims(c),
                (None, None) => return ExitCode::from(EXIT_USAGE),
            };
            explain(&config, role, input, token_type, at, json).await
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                for f in &c.findings {
                    outln!("{}: role `{}`: {}: {}", f.severity, f.role, f.code, f.message);
                }
                outln!("ok: {} provider(s), {} role(s), version {}", c.providers.len(), c.roles.len(), c.version);
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Exchange(args) => crate::client::run(args).await,
        Command::Grants { broker, admin_token_file, role, active: _, json } => {
            grants(&broker, &admin_token_file, role.as_deref(), json).await
        }
        Command::Audit { command: AuditCommand::Verify { file } } => match crate::audit::verify_chain(&file) {
            Ok(n) => {
                outln!("ok: {n} records, hash chain intact");
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("audit log {}: {e}", file.display());
                ExitCode::from(EXIT_DENY)
            }
        },
    }
}

async fn grants(broker: &str, token_file: &Path, role: Option<&str>, json: bool) -> ExitCode {
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t.trim().to_owned(),
        Err(e) => {
            eprintln!("error: {}: {e}", token_file.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Ok(mut url) = reqwest::Url::parse(&format!("{}/v1/grants", broker.trim_end_matches('/'))) else {
        eprintln!("error: --broker is not a URL");
        return ExitCode::from(EXIT_USAGE);
    };
    if let Some(r) = role {
        url.query_pairs_mut().append_pair("role", r);
    }
    let resp = match reqwest::Client::new().get(url).bearer_auth(token).timeout(Duration::from_secs(15)).send().await {
        Ok(r) => r,
        Err(_) => {
            eprintln!("error: broker unreachable");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let status = resp.status();
    let body: serde_json::Value =
        resp.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if !status.is_success() {
        eprintln!("error: HTTP {}: {}", status.as_u16(), body["error_description"].as_str().unwrap_or_default());
        return ExitCode::from(EXIT_FAILURE);
    }
    if json {
        outln!("{body}");
    } else {
        outln!("{:<24} {:<16} {:<6} {:<26} {:<26} SUBJECT / TASK", "GRANT", "ROLE", "KIND", "ISSUED", "EXPIRES");
        for g in body["grants"].as_array().into_iter().flatten() {
            let t = |k: &str| rfc3339(g[k].as_i64().unwrap_or(0));
            outln!(
                "{:<24} {:<16} {:<6} {:<26} {:<26} {} / {}",
                g["id"].as_str().unwrap_or_default(),
                g["role"].as_str().unwrap_or_default(),
                g["kind"].as_str().unwrap_or_default(),
                t("issued_at"),
                t("expires_at"),
                g["subject"].as_str().unwrap_or_default(),
                g["task"].as_str().unwrap_or_default()
            );
        }
    }
    ExitCode::from(EXIT_OK)
}

/// On SIGHUP, reloads the config file: a config with any error (syntax, unscoped role, policy
/// that does not validate) is refused and the last good one keeps serving.
async fn reload_on_sighup(broker: Arc<Broker>, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(new) => {
                let version = new.version.clone();
                for f in &new.findings {
                    tracing::warn!(role = %f.role, code = f.code, detail = %f.message, "policy finding");
                }
                for key in broker.reload(new) {
                    tracing::warn!(key, "config reloaded, but this setting needs a restart to change");
                }
                tracing::info!(version = %version, "config reloaded");
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "config reload refused");
                }
                tracing::error!(version = %broker.config().version, "config reload refused; the last good config keeps serving");
            }
        }
    }
}

async fn serve(
    config: Config,
    extra: Option<(crate::dev::DemoIssuer, Arc<dyn Clock>)>,
    listener: Option<tokio::net::TcpListener>,
    config_path: Option<PathBuf>,
) -> ExitCode {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let audit = match AuditLog::open(&config.audit_path) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: audit log {}: {e}", config.audit_path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let listen = config.server.listen;
    let (hrt, rt, drain) = (config.server.header_read_timeout, config.server.request_timeout, Duration::from_secs(30));
    let broker = match build_broker(config, clock, Some(audit), None).await {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let listener = match listener {
        Some(l) => l,
        None => match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
    };
    // Open the state store now (for Redis: connect and start the epoch) rather than at the first
    // exchange; a store that does not answer leaves the broker running but not ready.
    if let Err(e) = broker.state.ready().await {
        tracing::warn!(error = %e, "state store not ready at start; exchanges fail closed until it is");
    }
    for f in &broker.config().findings {
        tracing::warn!(role = %f.role, code = f.code, detail = %f.message, "policy finding");
    }
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let config = broker.config();
    if !config.safety.replay || !config.safety.audit {
        tracing::warn!(
            replay = config.safety.replay,
            audit = config.safety.audit,
            "BENCHMARK BUILD: a safety feature is switched off by [bench]; never run this in production"
        );
    }
    tracing::info!(listen = %local, issuer = %config.server.issuer, kid = %broker.signer.kid(), roles = config.roles.len(), version = %config.version, "ephemera serving");
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(broker.clone(), path));
    }
    let extra = extra.map(|(d, c)| crate::dev::routes(d, c));
    let admin_listen = broker.config().admin_listen;
    let (public, admin) = crate::server::routers(broker, extra);
    if let (Some(addr), Some(admin)) = (admin_listen, admin) {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(listen = %addr, "admin routes listening apart");
                tokio::spawn(crate::server::serve(l, admin, hrt, rt, drain));
            }
            Err(e) => {
                eprintln!("error: cannot listen on {addr} (admin.listen): {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    match crate::server::serve(listener, public, hrt, rt, drain).await {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn dev(listen: &str) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let base = format!("http://{addr}");
    let demo = match BrokerSigner::generate() {
        Ok(s) => crate::dev::DemoIssuer { issuer: format!("{base}/demo"), signer: s },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let dir = std::env::temp_dir().join(format!("ephemera-dev-{}", std::process::id()));
    let jwks_file = dir.join("demo-jwks.json");
    let audit = dir.join("audit.jsonl");
    let written =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&jwks_file, demo.signer.jwks().to_string()));
    if let Err(e) = written {
        eprintln!("error: {}: {e}", dir.display());
        return ExitCode::from(EXIT_FAILURE);
    }
    let text = crate::dev::config_toml(&addr.to_string(), &base, &demo.issuer, &jwks_file, &audit);
    let config = match toml::from_str(&text)
        .map_err(|e| e.to_string())
        .and_then(|raw| Config::from_raw(raw, &dir).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: dev config: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    eprintln!(
        "\nephemera dev: DEVELOPMENT MODE - NOT FOR PRODUCTION. The demo issuer at {base}/demo signs any claims it is sent;\n\
         state is in memory; keys are generated now and forgotten at exit. Audit log: {audit}\n\n\
         Get a demo GitHub-Actions-shaped token and exchange it for a broker JWT (role `{role}`):\n\n  \
         curl -s {base}/v1/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange -d subject_token_type=urn:ietf:params:oauth:token-type:id_token -d audience={role} --data-urlencode \"subject_token=$(curl -s -X POST {base}/demo/token)\"\n\n\
         Try a token the role refuses (another branch):\n\n  \
         curl -s {base}/v1/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange -d subject_token_type=urn:ietf:params:oauth:token-type:id_token -d audience={role} --data-urlencode \"subject_token=$(curl -s -X POST {base}/demo/token -d '{{\"ref\":\"refs/heads/dev\"}}')\"\n\n\
         Broker JWKS: {base}/.well-known/jwks.json\n",
        audit = audit.display(),
        role = crate::dev::DEMO_ROLE,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    serve(config, Some((demo, clock)), Some(listener), None).await
}

/// What `explain` evaluates.
#[derive(Debug)]
pub enum Input {
    Token(PathBuf),
    Claims(PathBuf),
}

/// The roles nearest to allowing this workload: same provider, fewest failed conditions.
fn closest_roles(
    broker: &Broker,
    trace: &Trace,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Vec<serde_json::Value> {
    let (Some(w), Some(tok_iss)) = (&trace.workload, claims.get("iss").and_then(|v| v.as_str())) else { return vec![] };
    let config = broker.config();
    let mut scored: Vec<(usize, serde_json::Value)> = config
        .roles
        .values()
        .filter(|r| r.name != trace.role && Some(&r.provider.name) == trace.provider.as_ref())
        .map(|r| {
            let d = config.engine.decide(r, w, claims, tok_iss, (trace.now, trace.now, trace.now + 300));
            let failed: Vec<String> = d.conditions.iter().filter(|c| !c.pass).map(|c| c.short()).collect();
            (failed.len(), serde_json::json!({"role": r.name, "allow": d.allow, "failed": failed}))
        })
        .collect();
    scored.sort_by_key(|(n, _)| *n);
    scored.into_iter().take(3).map(|(_, v)| v).collect()
}

async fn explain(
    config: &Path,
    role: String,
    input: Input,
    token_type: TokenTypeArg,
    at: Option<i64>,
    json: bool,
) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            eprintln!("error: {}: {e}", p.display());
            ExitCode::from(EXIT_USAGE)
        })
    };
    let clock: Arc<dyn Clock> = match at {
        Some(t) => Arc::new(FixedClock(t)),
        None => Arc::new(SystemClock),
    };
    let now = clock.now();
    // explain never signs; a throwaway key keeps it from needing the server's key file.
    let signer = match BrokerSigner::generate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let broker = match build_broker(config, clock, None, Some(signer)).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (trace, result, claims) = match input {
        Input::Token(path) => {
            // A token file holds text (JWT, base64) or, for attestation documents, raw bytes.
            let token = match std::fs::read(&path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => t.trim().to_owned(),
                    Err(e) => base64::Engine::encode(&base64::engine::general_purpose::STANDARD, e.into_bytes()),
                },
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            // The claims as the token carries them, for the closest-role search only.
            let claims = token
                .split('.')
                .nth(1)
                .and_then(|p| ephemera_providers::jose::b64url_strict(p).ok())
                .and_then(|b| ephemera_providers::jose::parse_claims(&b).ok())
                .unwrap_or_default();
            let subject_token_type = match token_type {
                TokenTypeArg::IdToken => TOKEN_TYPE_ID_TOKEN,
                TokenTypeArg::Jwt => TOKEN_TYPE_JWT,
                TokenTypeArg::NitroAttestation => "urn:ephemera:token-type:nitro-attestation",
                TokenTypeArg::X509Pop => "urn:ephemera:token-type:x509-pop",
                TokenTypeArg::AwsEc2Iid => "urn:ephemera:token-type:aws-ec2-iid",
            };
            let req = ExchangeRequest {
                subject_token: SubjectToken::new(token),
                subject_token_type: subject_token_type.into(),
                role,
                requested_token_type: None,
            };
            let (trace, result) = broker.evaluate(&req, now).await;
            (trace, result.map(|_| ()), claims)
        }
        Input::Claims(path) => {
            let text = match read(&path) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let claims = match ephemera_providers::jose::parse_claims(text.as_bytes()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let (trace, result) = broker.evaluate_claims(&role, &claims, now).await;
            (trace, result, claims)
        }
    };
    let (allow, reason, description) = match &result {
        Ok(()) => (true, None, None),
        Err(e) => {
            let r = e.response();
            (false, Some(r.reason), Some(r.description))
        }
    };
    let closest = if allow || trace.decision.is_none() { vec![] } else { closest_roles(&broker, &trace, &claims) };
    if json {
        let doc = serde_json::json!({
            "decision": if allow { "allow" } else { "deny" },
            "reason": reason,
            "error_description": description,
            "trace": trace,
            "closest_roles": closest,
        });
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_trace(&trace, allow, reason, description.as_deref());
        for c in &closest {
            outln!("closest role {}: {}", c["role"].as_str().unwrap_or_default(), c["failed"]);
        }
    }
    ExitCode::from(if allow { EXIT_OK } else { EXIT_DENY })
}

fn print_trace(t: &Trace, allow: bool, reason: Option<&str>, description: Option<&str>) {
    outln!("role {} (provider {}, profile {})", t.role, t.provider.as_deref().unwrap_or("-"), t.profile.unwrap_or("-"));
    outln!("broker clock {} ({})   config version {}", t.now, t.now_rfc3339, t.config_version);
    if let Some(tok) = &t.token {
        let nbf = tok.not_before.map_or_else(|| "-".to_owned(), |n| format!("{n} ({})", rfc3339(n)));
        outln!("token iss {} sub {} aud {}", tok.issuer, tok.subject, tok.audience);
        outln!(
            "      iat {} ({}) nbf {} exp {} ({}) alg {} kid {}",
            tok.issued_at,
            rfc3339(tok.issued_at),
            nbf,
            tok.expires_at,
            rfc3339(tok.expires_at),
            tok.alg,
            tok.kid.as_deref().unwrap_or("-")
        );
    }
    if !t.checks.is_empty() {
        outln!("verification:");
        for c in &t.checks {
            let mark = match c.status {
                "pass" => "pass",
                "fail" => "FAIL",
                _ => "  - ",
            };
            outln!("  {mark}  {:<11} {}", c.check.to_string(), c.detail.as_deref().unwrap_or(c.description));
        }
    }
    if let Some(ev) = &t.evidence {
        outln!("evidence:");
        for (k, v) in ev {
            outln!("  {k} = {}", v.as_str().unwrap_or_default());
        }
    }
    if let Some(w) = &t.workload {
        outln!("workload {} task {}", w.subject, w.task);
    }
    if let Some(d) = &t.decision {
        outln!("conditions:");
        if d.conditions.is_empty() {
            outln!("  (none)");
        }
        for c in &d.conditions {
            let got = c.got.as_deref().map_or_else(|| "(missing)".to_owned(), |g| format!("`{g}`"));
            outln!(
                "  {}  {} = `{}`   got {}{}",
                if c.pass { "pass" } else { "FAIL" },
                c.claim,
                c.expected,
                got,
                c.hint.map(|h| format!("   hint: {h}")).unwrap_or_default()
            );
        }
    }
    if let Some(d) = &t.decision {
        if !d.policies.is_empty() {
            outln!("cedar policies that decided: {}", d.policies.join(", "));
        }
        for e in &d.errors {
            outln!("policy error: {e}");
        }
    }
    if let Some(l) = t.lifetime {
        outln!("credential lifetime {l}s");
    }
    match (allow, reason) {
        (true, _) => outln!("decision: ALLOW"),
        (false, r) => outln!("decision: DENY ({})\n  {}", r.unwrap_or("-"), description.unwrap_or("")),
    }
}

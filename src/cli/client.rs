//! `ephemera exchange`: the client side. Gets the workload's assertion, exchanges it at a broker,
//! and prints the credential the way the calling tool wants it:
//!
//! - `json`: the broker's RFC 8693 response as it is;
//! - `env`: `export NAME='value'` lines for `eval` (AWS variables for AWS sessions,
//!   `EPHEMERA_TOKEN` otherwise), every value single-quoted;
//! - `github-env`: for GitHub Actions: the same variables appended to the file `$GITHUB_ENV`
//!   names (so later steps of the job see them), each secret first masked in the job's log with
//!   an `::add-mask::` workflow command on stdout;
//! - `credential-process`: AWS's `credential_process` JSON (for `~/.aws/config`);
//! - `gcp-executable`: the executable-sourced credential response Google's client libraries
//!   read (`"token_type": "urn:ietf:params:oauth:token-type:jwt"`, the broker JWT as `id_token`),
//!   also written to `$GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE` when the libraries ask for it; a
//!   refusal is answered with Google's error response on stdout too.
//!
//! **Reuse.** An assertion is good for one exchange, but SDKs run their credential command again
//! long before the credential ends (botocore from 15 minutes before `Expiration`, google-auth from
//! 3 min 45 s): each run would present the same assertion and be refused as a replay. So for
//! `credential-process` and `gcp-executable` (or any format with `--cache-dir`) the answer is kept,
//! keyed by a SHA-256 of broker, role and assertion (for `--github-actions`, of the job's
//! runtime token and audience instead: GitHub hands out a new ID token every time), in a private directory (`0700`, files `0600`:
//! `--cache-dir`, `$EPHEMERA_CACHE_DIR`, `$XDG_RUNTIME_DIR/ephemera`, else
//! `~/.cache/ephemera/exchange`) and handed out again while it has more than 10 s left. A new
//! assertion is a new key; an expired answer is never handed out, and is deleted. `--no-cache`
//! turns this off.
//!
//! The broker URL must be `https`, or `http` on a loopback address: the assertion is a bearer
//! credential. Redirects are not followed.
//!
//! Exit codes: 0 ok, 1 the broker refused or could not be reached (its `error_description` on
//! stderr), 2 usage (no assertion, bad arguments).

use super::output::outln;
use crate::secret::SubjectToken;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Env,
    GithubEnv,
    CredentialProcess,
    GcpExecutable,
}

#[derive(Debug, Args)]
pub struct ExchangeArgs {
    /// The broker's base URL (https, or http on a loopback address).
    #[arg(long)]
    pub broker: String,
    /// The role to exchange for.
    #[arg(long)]
    pub role: String,
    /// Read the assertion from this file.
    #[arg(long, group = "source")]
    pub token_file: Option<std::path::PathBuf>,
    /// Read the assertion from this environment variable (GitLab: an `id_tokens` variable).
    #[arg(long, group = "source")]
    pub token_env: Option<String>,
    /// Request a GitHub Actions OIDC token (ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN) for `--audience`.
    #[arg(long, group = "source")]
    pub github_actions: bool,
    /// Read a GitLab `id_tokens` variable (default EPHEMERA_ID_TOKEN).
    #[arg(long, group = "source", num_args = 0..=1, default_missing_value = "EPHEMERA_ID_TOKEN")]
    pub gitlab: Option<String>,
    /// The audience to request the GitHub Actions token for (the broker's provider audience).
    #[arg(long, requires = "github_actions")]
    pub audience: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Keep and reuse answers here (default for credential-process and gcp-executable:
    /// $XDG_RUNTIME_DIR/ephemera, else ~/.cache/ephemera/exchange).
    #[arg(long, env = "EPHEMERA_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the answer cache (wins over --cache-dir and EPHEMERA_CACHE_DIR).
    #[arg(long)]
    pub no_cache: bool,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ephemera exchange: {msg}");
    ExitCode::from(code)
}

async fn github_actions_token(http: &reqwest::Client, audience: Option<&str>) -> Result<String, String> {
    let url = std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL").map_err(|_| {
        "ACTIONS_ID_TOKEN_REQUEST_URL is not set (does the job have `permissions: id-token: write`?)".to_owned()
    })?;
    let bearer = std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        .map_err(|_| "ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set".to_owned())?;
    let mut url = reqwest::Url::parse(&url).map_err(|e| format!("ACTIONS_ID_TOKEN_REQUEST_URL: {e}"))?;
    if let Some(aud) = audience {
        url.query_pairs_mut().append_pair("audience", aud);
    }
    let resp =
        http.get(url).bearer_auth(bearer).send().await.map_err(|e| format!("GitHub token request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GitHub token request answered HTTP {}", resp.status().as_u16()));
    }
    let bytes = resp.bytes().await.map_err(|e| format!("GitHub token response: {e}"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("GitHub token response: {e}"))?;
    v.get("value")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "GitHub token response has no `value`".into())
}

fn env_token(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
}

/// The broker URL, if the assertion may travel to it: https, or http to a loopback address.
pub fn check_broker_url(broker: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(broker).map_err(|e| format!("--broker `{broker}`: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if ephemera_providers::fetch::is_loopback_host(&url) => Ok(url),
        _ => Err(format!(
            "--broker `{broker}`: must be https (or http on a loopback address): the assertion is a bearer credential"
        )),
    }
}

pub async fn run(a: ExchangeArgs) -> ExitCode {
    // (clap's `requires = "github_actions"` is met by the flag's default `false`: checked here)
    if a.audience.is_some() && !a.github_actions {
        return fail(
            2,
            "--audience needs --github-actions: it names the audience of the GitHub Actions token to request",
        );
    }
    let url = match check_broker_url(&a.broker) {
        Ok(u) => format!("{}/v1/token", u.as_str().trim_end_matches('/')),
        Err(e) => return fail(2, e),
    };
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .build()
    {
        Ok(h) => h,
        Err(e) => return fail(1, e),
    };
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let cache_root = cache_dir(&a);
    // A GitHub Actions job gets a new ID token on every request, so its answers are kept under
    // the job's runtime token (and audience) instead: the same job asking again for the same
    // role gets the kept answer without a new ID token.
    let job_key = a
        .github_actions
        .then(|| std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN").ok().filter(|t| !t.is_empty()))
        .flatten()
        .map(|t| format!("github-actions:{t}:{}", a.audience.as_deref().unwrap_or_default()));
    if let (Some(dir), Some(key)) = (&cache_root, &job_key)
        && let Some(v) = (Cache { dir: dir.clone(), key: cache_key(&url, &a.role, key) }).load(now)
    {
        return emit(&v, a.format);
    }
    let token = match (&a.token_file, &a.token_env, a.github_actions, &a.gitlab) {
        (Some(f), ..) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display())),
        (_, Some(v), ..) => env_token(v),
        (_, _, true, _) => github_actions_token(&http, a.audience.as_deref()).await,
        (_, _, _, Some(v)) => env_token(v),
        _ => Err("give the assertion with --token-file, --token-env, --github-actions or --gitlab".into()),
    };
    let token = match token {
        Ok(t) if !t.trim().is_empty() => SubjectToken::new(t.trim().to_owned()),
        Ok(_) => return fail(2, "the assertion is empty"),
        Err(e) => return fail(2, e),
    };
    let cache = cache_root
        .map(|dir| Cache { dir, key: cache_key(&url, &a.role, job_key.as_deref().unwrap_or(token.expose())) });
    let cached = cache.as_ref().and_then(|c| c.load(now));
    let v = match cached {
        Some(v) => v,
        None => match exchange(&http, &url, &a.role, &token).await {
            Ok(v) => {
                if let Some(c) = &cache {
                    c.store(&v, now);
                }
                v
            }
            Err((error, desc)) => {
                if a.format == Format::GcpExecutable {
                    // Google's executable error response, for libraries that read stdout.
                    outln!("{}", json!({"version": 1, "success": false, "code": error, "message": desc}));
                }
                return fail(1, desc);
            }
        },
    };
    emit(&v, a.format)
}

/// Prints (and for `github-env` and `gcp-executable`, writes) a broker answer.
fn emit(v: &Value, format: Format) -> ExitCode {
    let out = match render(v, format) {
        Ok(out) => out,
        Err(e) => return fail(1, e),
    };
    match format {
        Format::GithubEnv => match github_env(v) {
            Ok(masks) => {
                outln!("{masks}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        Format::GcpExecutable => {
            if let Some(path) = std::env::var_os("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE").filter(|p| !p.is_empty())
                && let Err(e) = write_private(Path::new(&path), out.as_bytes())
            {
                return fail(1, format!("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE {}: {e}", Path::new(&path).display()));
            }
            outln!("{out}");
            ExitCode::SUCCESS
        }
        _ => {
            outln!("{out}");
            ExitCode::SUCCESS
        }
    }
}

/// One exchange at the broker: its JSON answer, or (error, message) for the caller.
async fn exchange(
    http: &reqwest::Client,
    url: &str,
    role: &str,
    token: &SubjectToken,
) -> Result<Value, (String, String)> {
    let form = [
        ("grant_type", crate::exchange::GRANT_TOKEN_EXCHANGE),
        ("subject_token_type", crate::exchange::TOKEN_TYPE_ID_TOKEN),
        ("subject_token", token.expose()),
        ("audience", role),
    ];
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let why = if e.is_timeout() { "timed out" } else { "connection failed" };
            ("unreachable".to_owned(), format!("broker {url} unreachable: {why}"))
        })?;
    let status = resp.status();
    let v: Value = match resp.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(v) => v,
        None => {
            return Err(("bad_response".into(), format!("broker answered HTTP {} without JSON", status.as_u16())));
        }
    };
    if !status.is_success() {
        let error = v.get("error").and_then(Value::as_str).unwrap_or("error").to_owned();
        let desc = v.get("error_description").and_then(Value::as_str).unwrap_or("");
        let msg = format!("broker refused (HTTP {}, {error}): {desc}", status.as_u16());
        return Err((error, msg));
    }
    Ok(v)
}

/// Where answers are kept, if anywhere.
fn cache_dir(a: &ExchangeArgs) -> Option<PathBuf> {
    if a.no_cache {
        return None;
    }
    if let Some(d) = &a.cache_dir {
        return Some(d.clone());
    }
    if !matches!(a.format, Format::CredentialProcess | Format::GcpExecutable) {
        return None;
    }
    let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(run) = var("XDG_RUNTIME_DIR").filter(|d| d.is_dir()) {
        return Some(run.join("ephemera"));
    }
    var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).map(|c| c.join("ephemera").join("exchange"))
}

/// The cache key: SHA-256 over broker URL, role and assertion (never the assertion itself).
pub fn cache_key(url: &str, role: &str, assertion: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in ["ephemera-exchange-cache/v1", url, role, assertion] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ephemera_providers::verify::hex(ctx.finish().as_ref())
}

/// Answers kept for reuse; every failure to read or write one is silent (the exchange still
/// happens, or its answer is still printed).
struct Cache {
    dir: PathBuf,
    key: String,
}

/// The least lifetime a kept answer must have left to be handed out again.
const CACHE_MIN_LEFT: i64 = 10;

impl Cache {
    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.key))
    }

    /// The directory, made private if it is not (it holds credentials).
    fn ready(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            if !self.dir.is_dir() && std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).is_err() {
                return false;
            }
            match std::fs::symlink_metadata(&self.dir) {
                Ok(m) if m.is_dir() && m.permissions().mode() & 0o077 == 0 => true,
                Ok(m) if m.is_dir() => {
                    std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).is_ok()
                }
                _ => false,
            }
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// The kept answer with `expires_in` counted from `now`, if it has enough life left.
    fn load(&self, now: i64) -> Option<Value> {
        if !self.ready() {
            return None;
        }
        let path = self.path();
        let entry: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        let expires_at = entry.get("expires_at")?.as_i64()?;
        if expires_at - now < CACHE_MIN_LEFT {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let mut v = entry.get("response")?.clone();
        v.as_object_mut()?.insert("expires_in".into(), json!(expires_at - now));
        Some(v)
    }

    fn store(&self, v: &Value, now: i64) {
        let Some(expires_in) = v.get("expires_in").and_then(Value::as_i64).filter(|e| *e > CACHE_MIN_LEFT) else {
            return;
        };
        if !self.ready() {
            return;
        }
        self.sweep(now);
        let entry = json!({"expires_at": now + expires_in, "response": v});
        let _ = write_private(&self.path(), entry.to_string().as_bytes());
    }

    /// Deletes kept answers that have ended.
    fn sweep(&self, now: i64) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        for e in rd.flatten().take(1000) {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let ended = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.get("expires_at").and_then(Value::as_i64))
                .is_none_or(|t| t <= now);
            if ended {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Writes `data` to `path` readable by the owner only, through a temporary file and a rename (a
/// reader never sees half a credential).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The variables a response sets: (name, value, secret).
fn variables(v: &Value) -> Result<Vec<(&'static str, String, bool)>, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).ok_or_else(|| format!("broker response lacks `{k}`"));
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let expires_in = v.get("expires_in").and_then(Value::as_i64).unwrap_or(0);
    let vars = match v.get("credentials") {
        Some(c) => {
            let g = |k: &str| {
                c.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("credentials lack `{k}`"))
            };
            vec![
                ("AWS_ACCESS_KEY_ID", g("AccessKeyId")?, false),
                ("AWS_SECRET_ACCESS_KEY", g("SecretAccessKey")?, true),
                ("AWS_SESSION_TOKEN", g("SessionToken")?, true),
                ("AWS_CREDENTIAL_EXPIRATION", g("Expiration")?, false),
            ]
        }
        None => vec![
            ("EPHEMERA_TOKEN", s("access_token")?.to_owned(), true),
            ("EPHEMERA_TOKEN_EXPIRES_AT", (now + expires_in).to_string(), false),
        ],
    };
    for (name, value, _) in &vars {
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(format!("broker response: {name} is empty or has control characters"));
        }
    }
    Ok(vars)
}

/// A value in single quotes for a POSIX shell (`'` becomes `'\''`).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Appends the variables to `$GITHUB_ENV`; answers the `::add-mask::` commands for stdout.
fn github_env(v: &Value) -> Result<String, String> {
    use std::io::Write;
    let path = std::env::var_os("GITHUB_ENV")
        .filter(|p| !p.is_empty())
        .ok_or("GITHUB_ENV is not set: --format github-env is for GitHub Actions steps")?;
    let vars = variables(v)?;
    let mut lines = String::new();
    for (name, value, _) in &vars {
        lines.push_str(&format!("{name}={value}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| format!("GITHUB_ENV {}: {e}", Path::new(&path).display()))?;
    f.write_all(lines.as_bytes()).map_err(|e| format!("GITHUB_ENV: {e}"))?;
    Ok(vars
        .iter()
        .filter(|(_, _, secret)| *secret)
        .map(|(_, v, _)| format!("::add-mask::{v}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Renders a broker response in `format` (for `github-env`, the lines for `$GITHUB_ENV`).
pub fn render(v: &Value, format: Format) -> Result<String, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).ok_or_else(|| format!("broker response lacks `{k}`"));
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let expires_in = v.get("expires_in").and_then(Value::as_i64).unwrap_or(0);
    let creds = v.get("credentials");
    match format {
        Format::Json => Ok(v.to_string()),
        Format::CredentialProcess => {
            creds.map(Value::to_string).ok_or_else(|| "this role does not hand out AWS credentials".into())
        }
        Format::Env => Ok(variables(v)?
            .iter()
            .map(|(name, value, _)| format!("export {name}={}", shell_quote(value)))
            .collect::<Vec<_>>()
            .join("\n")),
        Format::GithubEnv => {
            Ok(variables(v)?.iter().map(|(name, value, _)| format!("{name}={value}")).collect::<Vec<_>>().join("\n"))
        }
        Format::GcpExecutable => {
            if s("issued_token_type")? != crate::exchange::TOKEN_TYPE_JWT {
                return Err("gcp-executable needs a role that hands out broker JWTs".into());
            }
            Ok(json!({
                "version": 1,
                "success": true,
                "token_type": crate::exchange::TOKEN_TYPE_JWT,
                "id_token": s("access_token")?,
                "expiration_time": now + expires_in,
            })
            .to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats() {
        let jwt = json!({"access_token": "a.b.c", "issued_token_type": crate::exchange::TOKEN_TYPE_JWT, "token_type": "Bearer", "expires_in": 120});
        let g: Value = serde_json::from_str(&render(&jwt, Format::GcpExecutable).unwrap()).unwrap();
        assert_eq!(
            (g["version"].as_i64(), g["success"].as_bool(), g["id_token"].as_str()),
            (Some(1), Some(true), Some("a.b.c"))
        );
        assert!(render(&jwt, Format::CredentialProcess).is_err());
        let aws = json!({"access_token": "tok", "issued_token_type": "urn:ephemera:token-type:aws-credentials", "expires_in": 120,
            "credentials": {"Version": 1, "AccessKeyId": "AKIA", "SecretAccessKey": "s", "SessionToken": "tok", "Expiration": "2026-01-01T00:00:00Z"}});
        let cp: Value = serde_json::from_str(&render(&aws, Format::CredentialProcess).unwrap()).unwrap();
        assert_eq!(cp["Version"], 1);
        assert!(render(&aws, Format::Env).unwrap().contains("export AWS_SESSION_TOKEN='tok'"));
        assert!(render(&aws, Format::GithubEnv).unwrap().contains("\nAWS_SESSION_TOKEN=tok\n"));
        assert!(render(&aws, Format::GcpExecutable).is_err());
    }

    #[test]
    fn env_values_cannot_run_commands_when_evaluated() {
        let evil = json!({"access_token": "a'$(touch /tmp/x)'b", "issued_token_type": crate::exchange::TOKEN_TYPE_JWT, "expires_in": 60});
        let out = render(&evil, Format::Env).unwrap();
        assert!(out.starts_with("export EPHEMERA_TOKEN='a'\\''$(touch /tmp/x)'\\''b'\n"), "{out}");
        let newline = json!({"access_token": "a\nexport X=1", "expires_in": 60});
        assert!(render(&newline, Format::Env).is_err());
        assert!(render(&newline, Format::GithubEnv).is_err());
    }

    #[test]
    fn only_tls_or_loopback_brokers_get_the_assertion() {
        assert!(check_broker_url("https://broker.example.com").is_ok());
        assert!(check_broker_url("http://127.0.0.1:8080").is_ok());
        assert!(check_broker_url("http://[::1]:8080/").is_ok());
        assert!(check_broker_url("http://localhost:8080").is_ok());
        assert!(check_broker_url("http://broker.example.com").is_err());
        assert!(check_broker_url("http://10.0.0.1").is_err());
        assert!(check_broker_url("ftp://127.0.0.1").is_err());
        assert!(check_broker_url("broker.example.com").is_err());
    }

    #[test]
    fn cache_keys_bind_broker_role_and_assertion() {
        let k = cache_key("https://b/v1/token", "r", "a.b.c");
        assert_eq!(k.len(), 64);
        assert!(!k.contains("a.b.c"));
        assert_eq!(k, cache_key("https://b/v1/token", "r", "a.b.c"));
        assert_ne!(k, cache_key("https://b/v1/token", "r2", "a.b.c"));
        assert_ne!(k, cache_key("https://c/v1/token", "r", "a.b.c"));
        assert_ne!(k, cache_key("https://b/v1/token", "r", "a.b.d"));
        // lengths are bound: moving a character between parts changes the key
        assert_ne!(cache_key("u", "ra", "b"), cache_key("u", "r", "ab"));
    }

    #[test]
    fn kept_answers_are_private_and_end_with_their_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache { dir: dir.path().join("cache"), key: "k".into() };
        let v = json!({"access_token": "t", "expires_in": 100});
        c.store(&v, 1000);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&c.dir), 0o700);
            assert_eq!(mode(&c.path()), 0o600);
        }
        assert_eq!(c.load(1050).unwrap()["expires_in"], 50);
        assert!(c.load(1091).is_none(), "less than 10 s left");
        assert!(!c.path().exists(), "an ended answer is deleted");
        // a short-lived answer is not kept at all
        c.store(&json!({"access_token": "t", "expires_in": 5}), 1000);
        assert!(c.load(1000).is_none());
    }
}

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

mod cache;
mod format;

use crate::cli::output::outln;
use crate::secret::SubjectToken;
use cache::{Cache, cache_dir, cache_key, write_private};
use clap::{Args, ValueEnum};
use format::{github_env, render};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Json,
    Env,
    GithubEnv,
    CredentialProcess,
    GcpExecutable,
}

#[derive(Debug, Args)]
pub(crate) struct ExchangeArgs {
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
pub(super) fn check_broker_url(broker: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(broker).map_err(|e| format!("--broker `{broker}`: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if ephemera_providers::fetch::is_loopback_host(&url) => Ok(url),
        _ => Err(format!(
            "--broker `{broker}`: must be https (or http on a loopback address): the assertion is a bearer credential"
        )),
    }
}

pub(super) async fn run(a: ExchangeArgs) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

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
mod end;
mod format;

use crate::cli::output::outln;
use crate::secret::SubjectToken;
use cache::{Cache, cache_dir, cache_key, write_private};
use clap::{Args, ValueEnum};
pub(crate) use end::EndTaskArgs;
pub(super) use end::run as end_task;
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
    #[command(flatten)]
    pub source: Source,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Keep and reuse answers here (default for credential-process and gcp-executable:
    /// $XDG_RUNTIME_DIR/ephemera, else ~/.cache/ephemera/exchange).
    #[arg(long, env = "EPHEMERA_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the answer cache (wins over --cache-dir and EPHEMERA_CACHE_DIR).
    #[arg(long)]
    pub no_cache: bool,
    /// Retries of an answer that says the assertion was not spent (429, and 503s such as
    /// `keys_unavailable`), with backoff and `Retry-After`; with --github-actions every retryable
    /// answer is retried with a fresh ID token.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

/// Where the workload's assertion comes from (one of them).
#[derive(Debug, Args)]
pub(crate) struct Source {
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
}

impl Source {
    /// What needs no broker, checked before an assertion is read or spent.
    fn check(&self) -> Result<(), String> {
        // (clap's `requires = "github_actions"` is met by the flag's default `false`: checked here)
        if self.audience.is_some() && !self.github_actions {
            return Err(
                "--audience needs --github-actions: it names the audience of the GitHub Actions token to request"
                    .into(),
            );
        }
        Ok(())
    }

    /// The assertion, read (or, for GitHub Actions, requested) now.
    async fn assertion(&self, http: &reqwest::Client) -> Result<SubjectToken, String> {
        let token = match (&self.token_file, &self.token_env, self.github_actions, &self.gitlab) {
            (Some(f), ..) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display())),
            (_, Some(v), ..) => env_token(v),
            (_, _, true, _) => github_actions_token(http, self.audience.as_deref()).await,
            (_, _, _, Some(v)) => env_token(v),
            _ => Err("give the assertion with --token-file, --token-env, --github-actions or --gitlab".into()),
        };
        match token {
            Ok(t) if !t.trim().is_empty() => Ok(SubjectToken::new(t.trim().to_owned())),
            Ok(_) => Err("the assertion is empty".to_owned()),
            Err(e) => Err(e),
        }
    }
}

/// The client's HTTP client: no redirects (the assertion goes where it was told), bounded waits.
fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .build()
}

/// Refusals after which the assertion was not spent: the same assertion may be presented again.
const NOT_SPENT: [&str; 7] = [
    "rate_limited",
    "keys_unavailable",
    "replay_store_unavailable",
    "revocations_unverified",
    "request_timeout",
    "too_many_connections",
    "randomness_unavailable",
];
/// Refusals a fresh assertion may get past (the broker or a cloud could not answer).
const FRESH_MAY_PASS: [&str; 3] = ["audit_unavailable", "mint_failed", "upstream_unavailable"];
/// The longest wait between two tries.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a failed exchange said, for the retry decision and the message.
#[derive(Debug)]
struct Failed {
    /// The OAuth `error` (or `unreachable`, `bad_response`).
    error: String,
    /// The reason slug the description starts with.
    reason: String,
    /// The request may have reached the broker (so the assertion may be spent).
    reached: bool,
    retry_after: Option<std::time::Duration>,
    message: String,
}

impl Failed {
    /// May the same assertion, or (`fresh`) a new one, be presented again?
    fn retryable(&self, fresh: bool) -> bool {
        (!self.reached)
            || NOT_SPENT.contains(&self.reason.as_str())
            || (fresh && FRESH_MAY_PASS.contains(&self.reason.as_str()))
    }
}

/// The requested_token_type a format needs: the broker refuses a role of another kind before
/// the assertion is spent.
fn requested_type(format: Format) -> Option<&'static str> {
    match format {
        Format::CredentialProcess => Some(crate::minting::TOKEN_TYPE_AWS_CREDENTIALS),
        Format::GcpExecutable => Some(crate::minting::TOKEN_TYPE_JWT),
        Format::Json | Format::Env | Format::GithubEnv => None,
    }
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
/// A URL without a scheme gets a suggestion; one ending in `/v1/token` is the broker's base.
pub(super) fn check_broker_url(broker: &str) -> Result<reqwest::Url, String> {
    let broker = broker.trim_end_matches('/').strip_suffix("/v1/token").unwrap_or(broker);
    let url = reqwest::Url::parse(broker).map_err(|e| {
        let guess = reqwest::Url::parse(&format!("http://{broker}")).ok();
        match guess {
            Some(g) if !broker.contains("://") => {
                let scheme = if ephemera_providers::fetch::is_loopback_host(&g) { "http" } else { "https" };
                format!("--broker `{broker}`: no scheme; did you mean {scheme}://{broker}?")
            }
            _ => format!("--broker `{broker}`: {e}"),
        }
    })?;
    if !broker.contains("://") {
        // `localhost:8080` reads as the scheme `localhost`
        let guess = reqwest::Url::parse(&format!("http://{broker}")).ok();
        let scheme =
            if guess.is_some_and(|g| ephemera_providers::fetch::is_loopback_host(&g)) { "http" } else { "https" };
        return Err(format!("--broker `{broker}`: no scheme; did you mean {scheme}://{broker}?"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if ephemera_providers::fetch::is_loopback_host(&url) => Ok(url),
        _ => Err(format!(
            "--broker `{broker}`: must be https (or http on a loopback address): the assertion is a bearer credential"
        )),
    }
}

pub(super) async fn run(a: ExchangeArgs) -> ExitCode {
    if let Err(e) = a.source.check() {
        return fail(2, e);
    }
    let url = match check_broker_url(&a.broker) {
        Ok(u) => format!("{}/v1/token", u.as_str().trim_end_matches('/')),
        Err(e) => return fail(2, e),
    };
    // What needs no broker is checked before an assertion is read or spent.
    if a.format == Format::GithubEnv && std::env::var_os("GITHUB_ENV").is_none_or(|v| v.is_empty()) {
        return fail(2, "GITHUB_ENV is not set: --format github-env is for GitHub Actions steps (nothing was sent)");
    }
    let http = match http_client() {
        Ok(h) => h,
        Err(e) => return fail(1, e),
    };
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let cache_root = cache_dir(&a);
    // A GitHub Actions job gets a new ID token on every request, so its answers are kept under
    // the job's runtime token (and audience) instead: the same job asking again for the same
    // role gets the kept answer without a new ID token.
    let job_key = a
        .source
        .github_actions
        .then(|| std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN").ok().filter(|t| !t.is_empty()))
        .flatten()
        .map(|t| format!("github-actions:{t}:{}", a.source.audience.as_deref().unwrap_or_default()));
    if let (Some(dir), Some(key)) = (&cache_root, &job_key)
        && let Some(v) = (Cache { dir: dir.clone(), key: cache_key(&url, &a.role, key) }).load(now)
    {
        return emit(&v, a.format);
    }
    let get_token = || a.source.assertion(&http);
    let mut token = match get_token().await {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let cache = cache_root
        .map(|dir| Cache { dir, key: cache_key(&url, &a.role, job_key.as_deref().unwrap_or(token.expose())) });
    let cached = cache.as_ref().and_then(|c| c.load(now));
    let requested = requested_type(a.format);
    let v = match cached {
        Some(v) => v,
        None => {
            let mut attempt = 0;
            loop {
                match exchange(&http, &url, &a.role, &token, requested).await {
                    Ok(v) => {
                        if let Some(c) = &cache {
                            c.store(&v, now);
                        }
                        break v;
                    }
                    Err(f) if attempt < a.retries && f.retryable(a.source.github_actions) => {
                        let backoff = std::time::Duration::from_millis(500 << attempt.min(5));
                        let wait = f.retry_after.unwrap_or(backoff).min(MAX_WAIT);
                        eprintln!("ephemera exchange: retrying in {:.1}s: {}", wait.as_secs_f64(), f.message);
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        // a fresh GitHub ID token for every try (the last one may be spent)
                        if a.source.github_actions {
                            token = match get_token().await {
                                Ok(t) => t,
                                Err(e) => return fail(1, e),
                            };
                        }
                    }
                    Err(f) => {
                        if a.format == Format::GcpExecutable {
                            // Google's executable error response, for libraries that read stdout.
                            outln!(
                                "{}",
                                json!({"version": 1, "success": false, "code": f.error, "message": f.message})
                            );
                        }
                        return fail(1, f.message);
                    }
                }
            }
        }
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

/// Why a request did not reach an answer, in words: refused, DNS, TLS, timed out.
pub(super) fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let all = chain.join(": ").to_ascii_lowercase();
    let last = chain.last().cloned().unwrap_or_default();
    if all.contains("connection refused") {
        "connection refused".into()
    } else if all.contains("dns error") || all.contains("failed to lookup address") || all.contains("name or service") {
        format!("DNS: no such host ({last})")
    } else if all.contains("certificate") || all.contains("tls") || all.contains("handshake") {
        format!("TLS: {last}")
    } else if e.is_connect() {
        format!("connection failed ({last})")
    } else {
        last
    }
}

/// One exchange at the broker: its JSON answer, or what failed.
async fn exchange(
    http: &reqwest::Client,
    url: &str,
    role: &str,
    token: &SubjectToken,
    requested: Option<&str>,
) -> Result<Value, Failed> {
    let mut form = vec![
        ("grant_type", crate::exchange::GRANT_TOKEN_EXCHANGE),
        ("subject_token_type", crate::exchange::TOKEN_TYPE_ID_TOKEN),
        ("subject_token", token.expose()),
        ("audience", role),
    ];
    if let Some(t) = requested {
        form.push(("requested_token_type", t));
    }
    post_form(http, url, &form).await
}

/// A form POSTed to the broker: its JSON answer, or what failed.
async fn post_form(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> Result<Value, Failed> {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let why = cause(&e);
            // a connection that failed never carried the assertion: worth another try, unless
            // it failed on a certificate or a name, which no retry changes
            let lasting = why.starts_with("TLS") || why.starts_with("DNS");
            Failed {
                error: "unreachable".into(),
                reason: String::new(),
                reached: !e.is_connect() || lasting,
                retry_after: None,
                message: format!("broker {url} unreachable: {why}"),
            }
        })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let v: Value = match resp.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(v) => v,
        None => {
            return Err(Failed {
                error: "bad_response".into(),
                reason: String::new(),
                reached: true,
                retry_after: None,
                message: format!("broker {url} answered HTTP {} without JSON", status.as_u16()),
            });
        }
    };
    if !status.is_success() {
        let error = v.get("error").and_then(Value::as_str).unwrap_or("error").to_owned();
        let desc = v.get("error_description").and_then(Value::as_str).unwrap_or("");
        let reason = desc.split(':').next().unwrap_or_default().trim().to_owned();
        let what = if status.as_u16() == 429 || status.is_server_error() { "unavailable" } else { "refused" };
        let message = format!("broker {what} (HTTP {}, {error}): {desc}", status.as_u16());
        return Err(Failed { error, reason, reached: true, retry_after, message });
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
        let e = check_broker_url("127.0.0.1:8080").unwrap_err();
        assert!(e.contains("did you mean http://127.0.0.1:8080?"), "{e}");
        let e = check_broker_url("localhost:8080").unwrap_err();
        assert!(e.contains("did you mean http://localhost:8080?"), "{e}");
        assert_eq!(check_broker_url("http://127.0.0.1:8080/v1/token").unwrap().as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn only_answers_that_left_the_assertion_unspent_are_retried() {
        let f = |reason: &str, reached: bool| Failed {
            error: String::new(),
            reason: reason.into(),
            reached,
            retry_after: None,
            message: String::new(),
        };
        assert!(f("rate_limited", true).retryable(false));
        assert!(f("keys_unavailable", true).retryable(false));
        assert!(f("", false).retryable(false), "never reached the broker");
        assert!(!f("mint_failed", true).retryable(false), "spent");
        assert!(f("mint_failed", true).retryable(true), "a fresh GitHub ID token");
        assert!(!f("policy_denied", true).retryable(true));
    }
}

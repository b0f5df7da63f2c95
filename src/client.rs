//! `ephemera exchange`: the client side. Gets the workload's assertion, exchanges it at a broker,
//! and prints the credential the way the calling tool wants it:
//!
//! - `json`: the broker's RFC 8693 response as it is;
//! - `env`: `export` lines (AWS variables for AWS sessions, `EPHEMERA_TOKEN` otherwise);
//! - `credential-process`: AWS's `credential_process` JSON (for `~/.aws/config`);
//! - `gcp-executable`: the executable-sourced credential response Google's client libraries
//!   read (`"token_type": "urn:ietf:params:oauth:token-type:jwt"`, the broker JWT as `id_token`).
//!
//! Exit codes: 0 ok, 1 the broker refused or could not be reached (its `error_description` on
//! stderr), 2 usage (no assertion, bad arguments).

use crate::cli::outln;
use crate::secret::SubjectToken;
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Env,
    CredentialProcess,
    GcpExecutable,
}

#[derive(Debug, Args)]
pub struct ExchangeArgs {
    /// The broker's base URL.
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
    #[arg(long)]
    pub audience: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
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

pub async fn run(a: ExchangeArgs) -> ExitCode {
    let http = match reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .build()
    {
        Ok(h) => h,
        Err(e) => return fail(1, e),
    };
    let token = match (&a.token_file, &a.token_env, a.github_actions, &a.gitlab) {
        (Some(f), ..) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display())),
        (_, Some(v), ..) => env_token(v),
        (_, _, true, _) => github_actions_token(&http, a.audience.as_deref()).await,
        (_, _, _, Some(v)) => env_token(v),
        _ => Err("give the assertion with --token-file, --token-env, --github-actions or --gitlab".into()),
    };
    let token = match token {
        Ok(t) => SubjectToken::new(t.trim().to_owned()),
        Err(e) => return fail(2, e),
    };
    let url = format!("{}/v1/token", a.broker.trim_end_matches('/'));
    let form = [
        ("grant_type", crate::exchange::GRANT_TOKEN_EXCHANGE),
        ("subject_token_type", crate::exchange::TOKEN_TYPE_ID_TOKEN),
        ("subject_token", token.expose()),
        ("audience", a.role.as_str()),
    ];
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let resp = match http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return fail(
                1,
                format!("broker {url} unreachable: {}", if e.is_timeout() { "timed out" } else { "connection failed" }),
            );
        }
    };
    let status = resp.status();
    let v: Value = match resp.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(v) => v,
        None => return fail(1, format!("broker answered HTTP {} without JSON", status.as_u16())),
    };
    if !status.is_success() {
        let error = v.get("error").and_then(Value::as_str).unwrap_or("error");
        let desc = v.get("error_description").and_then(Value::as_str).unwrap_or("");
        return fail(1, format!("broker refused (HTTP {}, {error}): {desc}", status.as_u16()));
    }
    match render(&v, a.format) {
        Ok(out) => {
            outln!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

/// Renders a broker response in `format`.
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
        Format::Env => match creds {
            Some(c) => {
                let g = |k: &str| c.get(k).and_then(Value::as_str).ok_or_else(|| format!("credentials lack `{k}`"));
                Ok(format!(
                    "export AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_SESSION_TOKEN={}\nexport AWS_CREDENTIAL_EXPIRATION={}",
                    g("AccessKeyId")?,
                    g("SecretAccessKey")?,
                    g("SessionToken")?,
                    g("Expiration")?
                ))
            }
            None => Ok(format!(
                "export EPHEMERA_TOKEN={}\nexport EPHEMERA_TOKEN_EXPIRES_AT={}",
                s("access_token")?,
                now + expires_in
            )),
        },
        Format::GcpExecutable => {
            if s("issued_token_type")? != crate::exchange::TOKEN_TYPE_JWT {
                return Err("gcp-executable needs a role that hands out broker JWTs".into());
            }
            Ok(serde_json::json!({
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
        assert!(render(&aws, Format::Env).unwrap().contains("export AWS_SESSION_TOKEN=tok"));
        assert!(render(&aws, Format::GcpExecutable).is_err());
    }
}

//! The output formats of `ephemera exchange`: the broker's answer as JSON, as shell variables,
//! for `$GITHUB_ENV`, as AWS's `credential_process` output, as Google's executable response.

use super::Format;
use serde_json::{Value, json};
use std::path::Path;

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
pub(super) fn github_env(v: &Value) -> Result<String, String> {
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
pub(super) fn render(v: &Value, format: Format) -> Result<String, String> {
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
}

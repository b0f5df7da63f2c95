//! `ephemera grants`: the credentials a running broker handed out that have not expired.

use super::output::outln;
use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::clock::rfc3339;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub(super) async fn grants(broker: &str, token_file: &Path, role: Option<&str>, active: bool, json: bool) -> ExitCode {
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
    if active {
        url.query_pairs_mut().append_pair("active", "true");
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

//! The admin commands, clients of a running broker's admin routes: `grants`, `revoke`,
//! `revocations list|remove`, `introspect`. Each reads the admin credential from a file, sends
//! it only to https (or http on a loopback address), and says whether a 401 means a missing or
//! a refused credential.

use super::client::check_broker_url;
use super::output::outln;
use super::{EXIT_DENY, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::clock::rfc3339;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// A broker's admin routes, with the admin credential.
pub(super) struct Admin {
    base: reqwest::Url,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    /// The broker at `broker` (checked like the exchange client's) with the credential in `token_file`.
    pub(super) fn new(broker: &str, token_file: &Path) -> Result<Admin, ExitCode> {
        let base = check_broker_url(broker).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        })?;
        let token = std::fs::read_to_string(token_file).map_err(|e| {
            eprintln!("error: {}: {e}", token_file.display());
            ExitCode::from(EXIT_USAGE)
        })?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILURE)
            })?;
        Ok(Admin { base, token: token.trim().to_owned(), http })
    }

    /// One call: the JSON answer, or the exit code after saying what went wrong.
    async fn call(&self, path: &str, form: Option<&[(&str, &str)]>, query: &[(&str, &str)]) -> Result<Value, ExitCode> {
        let mut url = self.base.join(path).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let req = match form {
            Some(f) => self
                .http
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form_urlencoded::Serializer::new(String::new()).extend_pairs(f).finish()),
            None => self.http.get(url.clone()),
        };
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            eprintln!("error: broker {url} unreachable: {}", super::client::cause(&e));
            ExitCode::from(EXIT_FAILURE)
        })?;
        let status = resp.status();
        let body: Value =
            resp.bytes().await.ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).unwrap_or_default();
        if !status.is_success() {
            let desc = body["error_description"].as_str().unwrap_or_default();
            eprintln!("error: HTTP {}: {desc}", status.as_u16());
            return Err(ExitCode::from(EXIT_FAILURE));
        }
        Ok(body)
    }
}

pub(super) async fn grants(admin: Admin, role: Option<&str>, active: bool, json: bool) -> ExitCode {
    let mut query = Vec::new();
    if let Some(r) = role {
        query.push(("role", r));
    }
    if active {
        query.push(("active", "true"));
    }
    let body = match admin.call("v1/grants", None, &query).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    if json {
        outln!("{body}");
        return ExitCode::from(EXIT_OK);
    }
    // (the broker sorts them: issued, then id)
    outln!(
        "{:<24} {:<16} {:<6} {:<8} {:<21} {:<21} SUBJECT / TASK",
        "GRANT",
        "ROLE",
        "KIND",
        "REVOKED",
        "ISSUED",
        "EXPIRES"
    );
    for g in body["grants"].as_array().into_iter().flatten() {
        let t = |k: &str| rfc3339(g[k].as_i64().unwrap_or(0));
        outln!(
            "{:<24} {:<16} {:<6} {:<8} {:<21} {:<21} {} / {}",
            g["id"].as_str().unwrap_or_default(),
            g["role"].as_str().unwrap_or_default(),
            g["kind"].as_str().unwrap_or_default(),
            if g["revoked"].as_bool().unwrap_or(false) { "yes" } else { "-" },
            t("issued_at"),
            t("expires_at"),
            g["subject"].as_str().unwrap_or_default(),
            g["task"].as_str().unwrap_or_default()
        );
    }
    ExitCode::from(EXIT_OK)
}

/// What `revoke` names: exactly one of these.
pub(super) struct Target<'a> {
    pub kind: &'a str,
    pub value: &'a str,
    pub provider: Option<&'a str>,
}

pub(super) async fn revoke(admin: Admin, target: Target<'_>, force: bool, json: bool) -> ExitCode {
    let mut form = vec![(target.kind, target.value)];
    if let Some(p) = target.provider {
        form.push(("provider", p));
    }
    if !force {
        form.push(("require_match", "true"));
    }
    match admin.call("v1/revoke", Some(&form), &[]).await {
        Ok(body) if json => {
            outln!("{body}");
            ExitCode::from(EXIT_OK)
        }
        Ok(body) => {
            outln!(
                "revoked {} until {} ({} live grant(s) ended)",
                body["revoked"].as_str().unwrap_or_default(),
                rfc3339(body["until"].as_i64().unwrap_or(0)),
                body["matched"].as_u64().unwrap_or(0)
            );
            ExitCode::from(EXIT_OK)
        }
        Err(code) => code,
    }
}

pub(super) async fn revocations_list(admin: Admin, json: bool) -> ExitCode {
    let body = match admin.call("v1/revocations", None, &[]).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    if json {
        outln!("{body}");
    } else {
        outln!("{:<21} KEY", "UNTIL");
        for r in body["revocations"].as_array().into_iter().flatten() {
            outln!("{:<21} {}", rfc3339(r["until"].as_i64().unwrap_or(0)), r["key"].as_str().unwrap_or_default());
        }
    }
    ExitCode::from(EXIT_OK)
}

pub(super) async fn revocations_remove(admin: Admin, key: &str) -> ExitCode {
    match admin.call("v1/revocations/remove", Some(&[("key", key)]), &[]).await {
        Ok(body) => {
            outln!("removed {}", body["removed"].as_str().unwrap_or_default());
            ExitCode::from(EXIT_OK)
        }
        Err(code) => code,
    }
}

/// RFC 7662 on a broker JWT: prints the answer; exit 0 active, 3 inactive.
pub(super) async fn introspect(admin: Admin, token_file: &Path, consume: bool) -> ExitCode {
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t.trim().to_owned(),
        Err(e) => {
            eprintln!("error: {}: {e}", token_file.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut form = vec![("token", token.as_str())];
    if consume {
        form.push(("consume", "true"));
    }
    match admin.call("v1/introspect", Some(&form), &[]).await {
        Ok(body) => {
            outln!("{body}");
            ExitCode::from(if body["active"].as_bool().unwrap_or(false) { EXIT_OK } else { EXIT_DENY })
        }
        Err(code) => code,
    }
}

/// `ephemera keygen`: a new signing key, PKCS#8 PEM, in a new file of mode 0600.
pub(super) fn keygen(out: &Path, rsa: bool) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (pem, kid) = match crate::minting::jwt::BrokerSigner::generate_pem(rsa) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out);
    match file.and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|()| f.sync_all())) {
        Ok(()) => {
            outln!("wrote {} ({}, kid {kid})", out.display(), if rsa { "RSA-2048" } else { "P-256" });
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: {}: {e} (keygen never overwrites a file)", out.display());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

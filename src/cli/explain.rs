//! `ephemera explain`: the server's own evaluation (stages 1–6 of the exchange) of a token or a
//! synthetic claim set for a role, printed as text or JSON, with the closest roles on a deny.

use super::output::outln;
use super::{EXIT_DENY, EXIT_OK, EXIT_USAGE, TokenTypeArg};
use crate::clock::{Clock, FixedClock, SystemClock, rfc3339};
use crate::exchange::{
    ATTESTATION_TOKEN_TYPES, CheckStatus, Evaluator, ExchangeRequest, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, Trace,
};
use crate::secret::SubjectToken;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// What `explain` evaluates.
#[derive(Debug)]
pub(super) enum Input {
    Token(PathBuf),
    Claims(PathBuf),
}

/// The roles nearest to allowing this workload: same provider, fewest failed conditions.
fn closest_roles(
    evaluator: &Evaluator,
    trace: &Trace,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Vec<serde_json::Value> {
    let (Some(w), Some(tok_iss)) = (&trace.workload, claims.get("iss").and_then(|v| v.as_str())) else { return vec![] };
    let config = evaluator.config();
    let mut scored: Vec<(usize, serde_json::Value)> = config
        .roles
        .values()
        .filter(|r| r.name != trace.role && Some(&r.provider.name) == trace.provider.as_ref())
        .map(|r| {
            let at = crate::policy::At { times: (trace.now, trace.now, trace.now + 300), revoked: &[], details: None };
            let d = config.engine.decide(&r.policy, w, claims, tok_iss, &at);
            let failed: Vec<String> = d.conditions.iter().filter(|c| !c.pass).map(|c| c.short()).collect();
            (failed.len(), serde_json::json!({"role": r.name, "allow": d.allows(), "failed": failed}))
        })
        .collect();
    scored.sort_by_key(|(n, _)| *n);
    scored.into_iter().take(3).map(|(_, v)| v).collect()
}

pub(super) async fn explain(
    config: &Path,
    role: String,
    input: Input,
    token_type: TokenTypeArg,
    at: Option<i64>,
    json: bool,
    details: Option<String>,
) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // explain runs on the operator's own config: an unknown role is a usage error, and the roles
    // there are can be listed
    if !config.roles.contains_key(&role) {
        let mut names: Vec<&str> = config.roles.keys().map(String::as_str).collect();
        names.sort_unstable();
        eprintln!(
            "error: no role `{}` in this config; roles: {}",
            ephemera_providers::error::escape_untrusted(&role, 64),
            if names.is_empty() { "(none)".to_owned() } else { names.join(", ") }
        );
        return ExitCode::from(EXIT_USAGE);
    }
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
    // explain evaluates and never grants: an evaluator has no audit log, no signer, no minter.
    let evaluator = match Evaluator::build(config, clock) {
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
                TokenTypeArg::NitroAttestation => ATTESTATION_TOKEN_TYPES[0],
                TokenTypeArg::AwsEc2Iid => ATTESTATION_TOKEN_TYPES[1],
                TokenTypeArg::X509Pop => ATTESTATION_TOKEN_TYPES[2],
            };
            let req = ExchangeRequest {
                subject_token: SubjectToken::new(token),
                subject_token_type: subject_token_type.into(),
                role,
                requested_token_type: None,
                authorization_details: details,
            };
            let (trace, result) = evaluator.evaluate(&req, now).await;
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
            let (trace, result) = evaluator.evaluate_claims(&role, &claims, details.as_deref(), now).await;
            (trace, result, claims)
        }
    };
    let (allow, reason, description) = match &result {
        Ok(()) => (true, None, None),
        Err(e) => {
            let r = e.refusal();
            (false, Some(r.reason), Some(r.description))
        }
    };
    let closest = if allow || trace.decision.is_none() { vec![] } else { closest_roles(&evaluator, &trace, &claims) };
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
            let failed: Vec<&str> =
                c["failed"].as_array().map(|a| a.iter().filter_map(|f| f.as_str()).collect()).unwrap_or_default();
            let failed = if failed.is_empty() { "every condition passes".to_owned() } else { failed.join("; ") };
            outln!("closest role {}: {failed}", c["role"].as_str().unwrap_or_default());
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
                CheckStatus::Pass => "pass",
                CheckStatus::Fail => "FAIL",
                CheckStatus::NotReached => "  - ",
            };
            outln!("  {mark}  {:<11} {}", c.check, c.detail.as_deref().unwrap_or(c.description));
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
    if let Some(d) = &t.authorization_details {
        outln!("authorization_details {d}");
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

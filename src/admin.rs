//! Ending tasks and knowing who holds what: `POST /v1/revoke`, `POST /v1/introspect` (RFC 7662)
//! and `GET /v1/grants`.
//!
//! - Revoke: an admin (bearer credential from `[admin] token_file`) revokes by `task`, `jti`,
//!   `subject`, `role` or `issuer`; a workload ends its *own* task by presenting a fresh assertion
//!   of that task (`subject_token`, `subject_token_type`, `audience` = a role it may use) with
//!   `task`. A revocation lasts 12 h (the longest any credential lives) and is Cedar input on
//!   every exchange of every replica from then on.
//! - Introspect (admin credential): a broker JWT is `active` only while its signature and `exp`
//!   hold and neither its grant, task, subject, role nor source issuer is revoked.
//! - Grants (admin credential): the credentials handed out and not yet expired.
//!
//! AWS sessions and GCP tokens cannot be recalled from the cloud: after a revocation they keep
//! only what their deadline policy (AWS) or lifetime (GCP) allows; broker JWTs answer `active:
//! false` at once to partners that introspect.

use crate::exchange::{ErrorResponse, parse_form};
use crate::server::{App, error_response};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// What the broker's own keys sign with (the JWK's `alg` pins each key to one of them).
const BROKER_ALGORITHMS: [ephemera_providers::Algorithm; 2] =
    [ephemera_providers::Algorithm::ES256, ephemera_providers::Algorithm::RS256];

/// How long a revocation is remembered: the longest any credential can live.
pub const REVOCATION_TTL: i64 = 12 * 3600;

fn refuse(status: u16, error: &'static str, reason: &'static str, detail: &str) -> Response {
    error_response(&ErrorResponse { status, error, reason, description: format!("{reason}: {detail}") })
}

fn is_admin(app: &App, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    app.broker.config().admin_token.as_ref().is_some_and(|t| !presented.is_empty() && t.matches(presented))
}

fn unauthorized() -> Response {
    let mut r = refuse(401, "invalid_client", "unauthorized", "an admin bearer credential is required");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    r
}

fn form_map(body: &[u8]) -> Result<HashMap<String, String>, ErrorResponse> {
    let problem = |status, reason: &'static str, detail: &str| ErrorResponse {
        status,
        error: "invalid_request",
        reason,
        description: format!("{reason}: {detail}"),
    };
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.len() >= crate::exchange::MAX_FORM_FIELDS {
            return Err(problem(413, "request_too_large", "too many form fields"));
        }
        if out.insert(k.clone().into_owned(), v.into_owned()).is_some() {
            return Err(problem(400, "request_invalid", "a parameter appears more than once"));
        }
    }
    Ok(out)
}

async fn audit(app: &App, decision: &'static str, reason: Option<&'static str>, detail: String, task: Option<String>) {
    let now = app.broker.clock.now();
    if let Some(log) = &app.broker.audit {
        let rec = crate::audit::AuditRecord {
            time: crate::clock::rfc3339(now),
            ts: now,
            request_id: crate::minting::jwt::random_id(12),
            decision_id: crate::minting::jwt::random_id(12),
            policy_version: app.broker.config().version.clone(),
            decision,
            reason,
            detail: Some(detail),
            task,
            ..Default::default()
        };
        if let Err(e) = log.append(rec, true).await {
            tracing::error!(error = %e, "audit write failed for a revocation");
        }
    }
}

/// `POST /v1/revoke`.
pub async fn revoke(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match form_map(&body) {
        Ok(f) => f,
        Err(r) => return error_response(&r),
    };
    let now = app.broker.clock.now();
    let key = if is_admin(&app, &headers) {
        let kinds = ["task", "jti", "subject", "role", "issuer"];
        let given: Vec<(&str, &String)> = kinds.iter().filter_map(|k| form.get(*k).map(|v| (*k, v))).collect();
        match given.as_slice() {
            [(kind, value)] if !value.is_empty() => format!("{kind}:{value}"),
            _ => {
                return refuse(
                    400,
                    "invalid_request",
                    "request_invalid",
                    "give exactly one of task, jti, subject, role, issuer",
                );
            }
        }
    } else if form.contains_key("subject_token") {
        // A workload ends its own task: the assertion must verify, pass its role's policy now, and
        // belong to the task it names. It is spent like any other.
        let Some(task) = form.get("task").cloned() else {
            return refuse(400, "invalid_request", "request_invalid", "`task` is required");
        };
        let mut exchange_form: Vec<(&str, &str)> =
            form.iter().filter(|(k, _)| k.as_str() != "task").map(|(k, v)| (k.as_str(), v.as_str())).collect();
        exchange_form.push(("grant_type", crate::exchange::GRANT_TOKEN_EXCHANGE));
        let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(exchange_form).finish();
        let req = match parse_form(encoded.as_bytes()) {
            Ok(r) => r,
            Err(e) => return error_response(&e.response()),
        };
        let (trace, result) = app.broker.evaluate(&req, now).await;
        let allowed = match result {
            Ok(a) => a,
            Err(e) => return error_response(&e.response()),
        };
        if trace.workload.as_ref().map(|w| w.task.as_str()) != Some(task.as_str()) {
            return refuse(403, "access_denied", "task_mismatch", "the assertion belongs to another task");
        }
        match app.broker.state.mark_used(&allowed.replay_id, allowed.replay_until, now, allowed.issued_at, None).await {
            Ok(crate::state::Mark::Fresh) => {}
            Ok(_) => return refuse(400, "invalid_request", "token_replayed", "assertion already used"),
            Err(_) => return refuse(503, "temporarily_unavailable", "replay_store_unavailable", "try again"),
        }
        format!("task:{task}")
    } else {
        return unauthorized();
    };
    match app.broker.state.revoke(&key, now + REVOCATION_TTL, now).await {
        Ok(()) => {
            tracing::info!(key = %key, "revoked");
            audit(&app, "revoke", None, format!("revoked `{key}`"), key.strip_prefix("task:").map(str::to_owned)).await;
            (axum::http::StatusCode::OK, axum::Json(json!({"revoked": key, "until": now + REVOCATION_TTL})))
                .into_response()
        }
        Err(_) => {
            refuse(503, "temporarily_unavailable", "replay_store_unavailable", "the revocation could not be stored")
        }
    }
}

/// `POST /v1/introspect` (RFC 7662), for authenticated callers.
pub async fn introspect(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if !is_admin(&app, &headers) {
        return unauthorized();
    }
    let form = match form_map(&body) {
        Ok(f) => f,
        Err(r) => return error_response(&r),
    };
    let Some(token) = form.get("token") else {
        return refuse(400, "invalid_request", "request_invalid", "`token` is required");
    };
    let inactive = || axum::Json(json!({"active": false})).into_response();
    let now = app.broker.clock.now();
    let config = app.broker.config();
    let Ok(keys) = ephemera_providers::KeySet::from_json(app.broker.signer.jwks().to_string().as_bytes()) else {
        return inactive();
    };
    let claims = match ephemera_providers::verify_jws(token, 16 * 1024, &BROKER_ALGORITHMS, &keys)
        .ok()
        .and_then(|v| ephemera_providers::jose::parse_claims(&v.payload).ok())
    {
        Some(c) => c,
        None => return inactive(),
    };
    let s = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if s("iss") != config.server.issuer || exp <= now {
        return inactive();
    }
    let revocation_keys = vec![
        format!("jti:{}", s("jti")),
        format!("task:{}", s("task")),
        format!("subject:{}", s("sub")),
        format!("role:{}", s("role")),
        format!("issuer:{}", s("src_iss")),
    ];
    match app.broker.state.revoked(&revocation_keys, now).await {
        Ok(r) if r.is_empty() => {}
        Ok(_) => return inactive(),
        Err(_) => return refuse(503, "temporarily_unavailable", "replay_store_unavailable", "try again"),
    }
    let mut out = json!({"active": true, "token_type": "Bearer"});
    for k in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "role", "task", "provider", "src_iss"] {
        if let Some(v) = claims.get(k) {
            out[k] = v.clone();
        }
    }
    // (who holds what, now: never to be cached by a proxy between the partner and the broker)
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(out)).into_response()
}

/// `GET /v1/grants[?role=R]` (admin).
pub async fn grants(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !is_admin(&app, &headers) {
        return unauthorized();
    }
    let now = app.broker.clock.now();
    match app.broker.state.grants(now).await {
        Ok(mut list) => {
            if let Some(role) = q.get("role") {
                list.retain(|g| &g.role == role);
            }
            list.sort_by_key(|g| (g.issued_at, g.id.clone()));
            axum::Json(json!({"grants": list})).into_response()
        }
        Err(_) => {
            refuse(503, "temporarily_unavailable", "replay_store_unavailable", "the inventory cannot be read now")
        }
    }
}

//! The admin routes: `POST /v1/revoke`, `POST /v1/introspect` (RFC 7662), `GET /v1/grants` and
//! `POST /v1/keys/flush`.
//! HTTP only: authentication by the admin bearer credential, then the broker's operations
//! (`exchange/revocation.rs`, where what each does is described).

use super::error::{refused, reject};
use super::limits::HttpRejection;
use super::{App, ClientAddr};
use crate::exchange::{Introspection, RevokeBy, parse_admin_form};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// The admin routes are rate limited per client like the token route, and a failed admin
/// authentication is logged with the client's address (review S5); the rest is `is_admin`.
fn admitted(
    app: &App,
    client: Option<&axum::Extension<ClientAddr>>,
    headers: &HeaderMap,
) -> Result<bool, HttpRejection> {
    if client.is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        return Err(HttpRejection::RateLimited);
    }
    Ok(is_admin(app, headers))
}

/// The refusal of a request to an admin-only route, if it is one: over the rate (429) or without
/// the admin credential (401).
fn admin_only(app: &App, client: Option<&axum::Extension<ClientAddr>>, headers: &HeaderMap) -> Option<Response> {
    match admitted(app, client, headers) {
        Ok(true) => None,
        Ok(false) => Some(refused_credential(client, headers)),
        Err(r) => Some(reject(r)),
    }
}

/// 401, and a log line naming the client when a credential was presented and matched nothing.
fn refused_credential(client: Option<&axum::Extension<ClientAddr>>, headers: &HeaderMap) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        let from = client.map(|c| c.0.0.ip().to_string()).unwrap_or_default();
        tracing::warn!(client = %from, "admin authentication failed");
        return reject(HttpRejection::CredentialRefused);
    }
    unauthorized()
}

/// The bearer credential presented, if any (empty when none).
fn presented(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // the scheme is case-insensitive (RFC 9110 11.1; review S5)
        .and_then(|v| v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")).map(|_| &v[7..]))
        .unwrap_or_default()
}

fn is_admin(app: &App, headers: &HeaderMap) -> bool {
    let presented = presented(headers);
    app.broker.config().admin_token.as_ref().is_some_and(|t| !presented.is_empty() && t.matches(presented))
}

/// A form body, or the reason it could not be read (over the body limit).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// The form of an admin-only route, or its refusal: over the rate, no admin credential, a body
/// over the limit, or a form that does not read.
fn admin_form(
    app: &App,
    client: Option<&axum::Extension<ClientAddr>>,
    headers: &HeaderMap,
    body: Body,
) -> Result<HashMap<String, String>, Box<Response>> {
    if let Some(refusal) = admin_only(app, client, headers) {
        return Err(Box::new(refusal));
    }
    let Ok(body) = body else { return Err(Box::new(too_large())) };
    parse_admin_form(&body).map_err(|r| Box::new(refused(&r)))
}

fn too_large() -> Response {
    reject(HttpRejection::BodyTooLarge)
}

fn unauthorized() -> Response {
    reject(HttpRejection::Unauthorized)
}

/// `POST /v1/revoke`: an admin names one key; a workload without the admin credential ends its
/// own task with a fresh assertion of it.
pub(super) async fn revoke(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let admin = match admitted(&app, client.as_ref(), &headers) {
        Ok(a) => a,
        Err(r) => return reject(r),
    };
    let Ok(body) = body else { return too_large() };
    let form = match parse_admin_form(&body) {
        Ok(f) => f,
        Err(r) => return refused(&r),
    };
    let by = if admin {
        RevokeBy::Admin
    } else if form.contains_key("subject_token") {
        RevokeBy::Assertion
    } else {
        return refused_credential(client.as_ref(), &headers);
    };
    match app.broker.revoke(by, &form).await {
        Ok(r) => (axum::http::StatusCode::OK, axum::Json(r)).into_response(),
        Err(r) => refused(&r),
    }
}

/// `POST /v1/keys/flush` (admin): `provider=NAME` forgets that provider's cached issuer keys.
pub(super) async fn flush_keys(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match admin_form(&app, client.as_ref(), &headers, body) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    match app.broker.flush_keys(&form).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(r) => refused(&r),
    }
}

/// `POST /v1/state/confirm` (admin): the revocations lost with the shared state are re-asserted.
pub(super) async fn confirm_state(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refusal) = admin_only(&app, client.as_ref(), &headers) {
        return refusal;
    }
    if body.is_err() {
        return too_large();
    }
    match app.broker.confirm_state_reset().await {
        Ok(r) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(r)).into_response(),
        Err(r) => refused(&r),
    }
}

/// `POST /v1/introspect` (RFC 7662): the admin credential sees every broker JWT; a partner's
/// introspection credential (`[[admin.introspectors]]`) sees those of its audiences only, and can
/// do nothing else (review C12).
pub(super) async fn introspect(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let admin = match admitted(&app, client.as_ref(), &headers) {
        Ok(a) => a,
        Err(r) => return reject(r),
    };
    let config = app.broker.config();
    let partner = if admin {
        None
    } else {
        match config.introspectors.iter().find(|i| i.token.matches(presented(&headers))) {
            Some(i) => Some(i.audiences.as_slice()),
            None => return refused_credential(client.as_ref(), &headers),
        }
    };
    let Ok(body) = body else { return too_large() };
    let form = match parse_admin_form(&body) {
        Ok(f) => f,
        Err(r) => return refused(&r),
    };
    match app.broker.introspect(&form, partner).await {
        Ok(Introspection::Inactive) => axum::Json(json!({"active": false})).into_response(),
        // (who holds what, now: never to be cached by a proxy between the partner and the broker)
        Ok(Introspection::Active(claims)) => {
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(claims)).into_response()
        }
        Err(r) => refused(&r),
    }
}

/// `GET /v1/revocations` (admin): the revocations in force, by key.
pub(super) async fn revocations(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = admin_only(&app, client.as_ref(), &headers) {
        return refusal;
    }
    match app.broker.revocations().await {
        Ok(list) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(json!({"revocations": list}))).into_response(),
        Err(r) => refused(&r),
    }
}

/// `POST /v1/revocations/remove` (admin): `key=K` lifts that revocation (audited).
pub(super) async fn remove_revocation(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match admin_form(&app, client.as_ref(), &headers, body) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    match app.broker.remove_revocation(&form).await {
        Ok(r) => axum::Json(json!({"removed": r.key})).into_response(),
        Err(r) => refused(&r),
    }
}

/// `GET /metrics` (admin): the Prometheus text format. The live grants are counted now.
pub(super) async fn metrics(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = admin_only(&app, client.as_ref(), &headers) {
        return refusal;
    }
    if let Ok(live) = app.broker.live_grants().await {
        metrics::gauge!("ephemera_grants_live").set(live as f64);
    }
    match crate::telemetry::render() {
        Some(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
            text,
        )
            .into_response(),
        None => reject(HttpRejection::NotFound),
    }
}

/// `GET /v1/grants[?role=R][&active=true]` (admin).
pub(super) async fn grants(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refusal) = admin_only(&app, client.as_ref(), &headers) {
        return refusal;
    }
    let active = q.get("active").is_some_and(|v| v == "true");
    match app.broker.grants(q.get("role").map(String::as_str), active).await {
        Ok(list) => axum::Json(json!({"grants": list})).into_response(),
        Err(r) => refused(&r),
    }
}

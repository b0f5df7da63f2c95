//! The admin routes: `POST /v1/revoke`, `POST /v1/introspect` (RFC 7662), `GET /v1/grants` and
//! `POST /v1/keys/flush`.
//! HTTP only: authentication by the admin bearer credential, then the broker's operations
//! (`exchange/revocation.rs`, where what each does is described).

use super::App;
use super::error::{refused, reject};
use super::limits::HttpRejection;
use crate::exchange::{Introspection, RevokeBy, parse_admin_form};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

fn is_admin(app: &App, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // the scheme is case-insensitive (RFC 9110 11.1; review S5)
        .and_then(|v| v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")).map(|_| &v[7..]))
        .unwrap_or_default();
    app.broker.config().admin_token.as_ref().is_some_and(|t| !presented.is_empty() && t.matches(presented))
}

/// A form body, or the reason it could not be read (over the body limit).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn too_large() -> Response {
    reject(HttpRejection::BodyTooLarge)
}

fn unauthorized() -> Response {
    reject(HttpRejection::Unauthorized)
}

/// `POST /v1/revoke`: an admin names one key; a workload without the admin credential ends its
/// own task with a fresh assertion of it.
pub(super) async fn revoke(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let Ok(body) = body else { return too_large() };
    let form = match parse_admin_form(&body) {
        Ok(f) => f,
        Err(r) => return refused(&r),
    };
    let by = if is_admin(&app, &headers) {
        RevokeBy::Admin
    } else if form.contains_key("subject_token") {
        RevokeBy::Assertion
    } else {
        return unauthorized();
    };
    match app.broker.revoke(by, &form).await {
        Ok(r) => (axum::http::StatusCode::OK, axum::Json(r)).into_response(),
        Err(r) => refused(&r),
    }
}

/// `POST /v1/keys/flush` (admin): `provider=NAME` forgets that provider's cached issuer keys.
pub(super) async fn flush_keys(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    if !is_admin(&app, &headers) {
        return unauthorized();
    }
    let Ok(body) = body else { return too_large() };
    let form = match parse_admin_form(&body) {
        Ok(f) => f,
        Err(r) => return refused(&r),
    };
    match app.broker.flush_keys(&form).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(r) => refused(&r),
    }
}

/// `POST /v1/state/confirm` (admin): the revocations lost with the shared state are re-asserted.
pub(super) async fn confirm_state(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    if !is_admin(&app, &headers) {
        return unauthorized();
    }
    if body.is_err() {
        return too_large();
    }
    match app.broker.confirm_state_reset().await {
        Ok(r) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(r)).into_response(),
        Err(r) => refused(&r),
    }
}

/// `POST /v1/introspect` (RFC 7662), for authenticated callers.
pub(super) async fn introspect(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    if !is_admin(&app, &headers) {
        return unauthorized();
    }
    let Ok(body) = body else { return too_large() };
    let form = match parse_admin_form(&body) {
        Ok(f) => f,
        Err(r) => return refused(&r),
    };
    match app.broker.introspect(&form).await {
        Ok(Introspection::Inactive) => axum::Json(json!({"active": false})).into_response(),
        // (who holds what, now: never to be cached by a proxy between the partner and the broker)
        Ok(Introspection::Active(claims)) => {
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(claims)).into_response()
        }
        Err(r) => refused(&r),
    }
}

/// `GET /v1/grants[?role=R][&active=true]` (admin).
pub(super) async fn grants(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !is_admin(&app, &headers) {
        return unauthorized();
    }
    let active = q.get("active").is_some_and(|v| v == "true");
    match app.broker.grants(q.get("role").map(String::as_str), active).await {
        Ok(list) => axum::Json(json!({"grants": list})).into_response(),
        Err(r) => refused(&r),
    }
}

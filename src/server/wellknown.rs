//! The broker's published documents (JWKS, OpenID discovery), health, and the 404 of every
//! unknown route.

use super::App;
use super::error::reject;
use super::limits::HttpRejection;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub(super) async fn jwks(State(app): State<Arc<App>>) -> Response {
    let mut r = axum::Json(app.broker.jwks()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

pub(super) async fn discovery(State(app): State<Arc<App>>) -> Response {
    let config = app.broker.config();
    let issuer = &config.server.issuer;
    let base = issuer.trim_end_matches('/');
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/v1/token"),
        "grant_types_supported": [crate::exchange::GRANT_TOKEN_EXCHANGE],
        "id_token_signing_alg_values_supported": [app.broker.signing_algorithm()],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

/// The SSF transmitter metadata (OpenID Shared Signals Framework 1.0 §7.1): the broker pushes
/// CAEP `session-revoked` SETs (RFC 8935) to the receivers its config names.
pub(super) async fn ssf_configuration(State(app): State<Arc<App>>) -> Response {
    let config = app.broker.config();
    let issuer = &config.server.issuer;
    let base = issuer.trim_end_matches('/');
    axum::Json(json!({
        "spec_version": "1_0",
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "delivery_methods_supported": ["urn:ietf:rfc:8935"],
        "events_supported": [crate::exchange::SESSION_REVOKED],
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
    }))
    .into_response()
}

pub(super) async fn healthz() -> &'static str {
    "ok"
}

pub(super) async fn readyz(State(app): State<Arc<App>>) -> Response {
    let (state, audit) = app.broker.ready().await;
    let status = if state && audit { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let version = app.broker.config().version.clone();
    (status, axum::Json(json!({"state": state, "audit": audit, "config_version": version}))).into_response()
}

/// The 404 of every unknown route. It reads the request body first (bounded by the body limit;
/// a failed read changes nothing): answering before a client's body has arrived made hyper
/// close a keep-alive connection under the client's next request.
pub(super) async fn not_found(_body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    reject(HttpRejection::NotFound)
}

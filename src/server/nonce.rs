//! `POST /v1/nonce`: a single-use, short-lived broker nonce for attestation and proof of
//! possession, bound to the role named by an optional `audience` form field.

use super::error::{no_store, refused, rejected};
use super::limits::HttpRejection;
use super::{App, ClientAddr};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub(super) async fn nonce(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    method: Method,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let refuse = |r: HttpRejection, detail: &str| rejected(r, &r.saying(detail));
    if client.is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        return refuse(HttpRejection::RateLimited, "too many requests from this client");
    }
    if method != Method::POST {
        return refuse(HttpRejection::MethodNotAllowed, "use POST");
    }
    let Ok(body) = body else { return refuse(HttpRejection::BodyTooLarge, "body over the size limit") };
    match app.broker.issue_nonce(&body).await {
        Ok(n) => no_store(axum::Json(n).into_response()),
        Err(e) => refused(&e),
    }
}

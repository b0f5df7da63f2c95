//! `POST /v1/nonce`: a single-use, short-lived broker nonce for attestation and proof of
//! possession, bound to the role named by an optional `audience` form field. Its body is empty or
//! a form: a query string or another media type would leave the nonce bound to no role while the
//! caller thinks it named one, so both are refused as on `/v1/token`.

use super::error::{no_store, refused, reject, rejected};
use super::limits::{HttpRejection, POST, headers_too_large, is_form};
use super::{App, ClientAddr};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub(super) async fn nonce(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let refuse = |r: HttpRejection, detail: &str| rejected(r, &r.saying(detail));
    if client.is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        return refuse(HttpRejection::RateLimited, "too many requests from this client");
    }
    if headers_too_large(&headers) {
        return reject(HttpRejection::HeadersTooLarge);
    }
    if method != Method::POST {
        return refuse(HttpRejection::MethodNotAllowed { allow: POST }, "use POST");
    }
    // A role named anywhere but the form would be ignored, and the nonce bound to no role.
    if uri.query().is_some() {
        return reject(HttpRejection::QueryString);
    }
    let Ok(body) = body else { return refuse(HttpRejection::BodyTooLarge, "body over the size limit") };
    if !body.is_empty() && !is_form(&headers) {
        return reject(HttpRejection::NotForm);
    }
    match app.broker.issue_nonce(&body).await {
        Ok(n) => no_store(axum::Json(n).into_response()),
        Err(e) => refused(&e),
    }
}

//! `POST /v1/token`: RFC 8693. The transport's own refusals (rate, header size, method, query
//! string, media type, body size) are found here and audited through the broker like the
//! pipeline's; the form goes to the pipeline as it came.

use super::error::{no_store, refused, rejected};
use super::limits::{HttpRejection, POST, headers_too_large, is_form};
use super::{App, ClientAddr};
use crate::ids::random_id;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// What the transport refuses before the form is read, in the order it is checked.
fn rejection(
    app: &App,
    client: Option<ClientAddr>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_read: bool,
) -> Result<(), HttpRejection> {
    if client.is_some_and(|c| !app.limiter.admit(c.0.ip())) {
        Err(HttpRejection::RateLimited)
    } else if headers_too_large(headers) {
        Err(HttpRejection::HeadersTooLarge)
    } else if method != Method::POST {
        Err(HttpRejection::MethodNotAllowed { allow: POST })
    } else if uri.query().is_some() {
        // A token in a URL ends up in logs and proxies; refuse it whatever else the URL holds.
        Err(HttpRejection::QueryString)
    } else if !is_form(headers) {
        Err(HttpRejection::NotForm)
    } else if !body_read {
        Err(HttpRejection::BodyTooLarge)
    } else {
        Ok(())
    }
}

pub(super) async fn token(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // A request id correlates logs; without randomness it is empty, and the exchange, which
    // cannot draw its decision id either, is refused (`randomness_unavailable`).
    let request_id = random_id(12).unwrap_or_default();
    let client = client.map(|c| c.0);
    let form = rejection(&app, client, &method, &uri, &headers, body.is_ok())
        .and(body.map_err(|_| HttpRejection::BodyTooLarge));
    let mut resp = match form {
        Err(r) => rejected(r, &app.broker.refuse(r.refusal(), &request_id).await),
        Ok(form) => match app.broker.exchange(&form, &request_id).await {
            Ok(ok) => no_store(axum::Json(ok).into_response()),
            Err(e) => refused(&e),
        },
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

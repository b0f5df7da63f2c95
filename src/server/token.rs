//! `POST /v1/token`: RFC 8693. The transport's own refusals (rate, header size, method, query
//! string, media type, body size) are found here and audited through the broker like the
//! pipeline's; the form goes to the pipeline as it came.

use super::error::{no_store, refused, rejected};
use super::limits::{HttpRejection, POST, headers_too_large, is_form, read_body};
use super::{App, ClientAddr};
use crate::ids::random_id;
use axum::body::Body;
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
    body: Body,
) -> Response {
    // A request id correlates logs; without randomness it is empty, and the exchange, which
    // cannot draw its decision id either, is refused (`randomness_unavailable`).
    let request_id = random_id(12).unwrap_or_default();
    let client = client.map(|c| c.0);
    let mut body_left = true;
    let form = match rejection(&app, client, &method, &uri, &headers) {
        Ok(()) => {
            let s = &app.broker.config().server;
            let read = read_body(body, s.max_body_size, s.header_read_timeout).await;
            body_left = read.is_err();
            read
        }
        Err(r) => Err(r),
    };
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
    // A body left unread (refused before it was read) ends the connection: the client must not
    // send its next request after bytes the server never consumed.
    if body_left {
        resp.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

//! The one place a status code is chosen: every answer of every route that is not a success is
//! RFC 6749 §5.2 JSON (`error`, `error_description`) with `Cache-Control: no-store`.

use super::limits::HttpRejection;
use crate::exchange::{Class, Refusal};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The status of a refusal the pipeline found.
fn status_for(class: Class) -> StatusCode {
    match class {
        Class::Rejected => StatusCode::BAD_REQUEST,
        Class::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Class::Forbidden => StatusCode::FORBIDDEN,
        Class::Unauthenticated => StatusCode::UNAUTHORIZED,
        Class::NotFound => StatusCode::NOT_FOUND,
        Class::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Class::UpstreamRefused => StatusCode::BAD_GATEWAY,
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache`: credentials and refusals are never cached.
pub(super) fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// The answer to a refusal of the pipeline.
pub(super) fn refused(r: &Refusal) -> Response {
    respond(status_for(r.class), r)
}

/// The answer to a refusal of the server itself that is not audited (no exchange was asked
/// for: 404, 405 and 401 off the token route, the admin routes' 413), in its own words.
pub(super) fn reject(rejection: HttpRejection) -> Response {
    rejected(rejection, &rejection.refusal())
}

/// The answer to a method the route does not take.
pub(super) async fn method_not_allowed(allow: &'static str) -> Response {
    reject(HttpRejection::MethodNotAllowed { allow })
}

/// The answer to a refusal of the server itself (`r` is `rejection`'s refusal, as audited).
pub(super) fn rejected(rejection: HttpRejection, r: &Refusal) -> Response {
    let mut resp = respond(rejection.status(), r);
    match rejection {
        HttpRejection::MethodNotAllowed { allow } => {
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        HttpRejection::Unauthorized | HttpRejection::CredentialRefused => {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    resp
}

fn respond(status: StatusCode, r: &Refusal) -> Response {
    let mut resp = (status, axum::Json(json!({"error": r.error, "error_description": r.description}))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    no_store(resp)
}

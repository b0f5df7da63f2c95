//! The HTTP surface: RFC 8693 on `POST /v1/token`, the broker's JWKS and discovery, health.
//!
//! Limits are applied before any parsing: body size (413), header size and header read timeout
//! (slow clients are dropped), a per-request timeout. Token responses carry
//! `Cache-Control: no-store` and `Pragma: no-cache`; every error is RFC 6749 JSON.

use crate::exchange::{Broker, ErrorResponse, ExchangeError, RequestProblem, parse_form};
use crate::minting::jwt::random_id;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// An RFC 6749 §5.2 error body with its status.
pub fn error_response(e: &ErrorResponse) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (
        status,
        axum::Json(json!({"error": e.error, "error_description": e.description})),
    )
        .into_response();
    if e.status == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    no_store(r)
}

fn plain_error(status: u16, error: &'static str, reason: &'static str, detail: &str) -> Response {
    error_response(&ErrorResponse {
        status,
        error,
        reason,
        description: format!("{reason}: {detail}"),
    })
}

async fn token(
    State(b): State<Arc<Broker>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let request_id = random_id(12);
    if method != Method::POST {
        let mut r = plain_error(
            405,
            "invalid_request",
            "method_not_allowed",
            "use POST with a form body",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if uri.query().is_some() {
        // A token in a URL ends up in logs and proxies; refuse it whatever else the URL holds.
        return plain_error(
            400,
            "invalid_request",
            "request_invalid",
            "parameters belong in the form body, not the query string",
        );
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    let body = match body {
        Ok(b) => b,
        Err(_) => {
            return plain_error(
                413,
                "invalid_request",
                "request_too_large",
                "request body over the size limit",
            );
        }
    };
    let req = if form_type {
        parse_form(&body)
    } else {
        Err(ExchangeError::InvalidRequest(RequestProblem::NotForm))
    };
    let unsupported_media = !form_type;
    let mut resp = match b.exchange(req, &request_id).await {
        Ok(ok) => no_store(axum::Json(ok).into_response()),
        Err(mut e) => {
            if unsupported_media {
                e.status = 415;
            }
            error_response(&e)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn jwks(State(b): State<Arc<Broker>>) -> Response {
    let mut r = axum::Json(b.signer.jwks()).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

async fn discovery(State(b): State<Arc<Broker>>) -> Response {
    let iss = b.config.server.issuer.trim_end_matches('/').to_owned();
    axum::Json(json!({
        "issuer": b.config.server.issuer,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "token_endpoint": format!("{iss}/v1/token"),
        "grant_types_supported": [crate::exchange::GRANT_TOKEN_EXCHANGE],
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(b): State<Arc<Broker>>) -> Response {
    let state = b.state.ready().await.is_ok();
    let audit = b.audit.as_ref().is_some_and(crate::audit::AuditLog::ready);
    let status = if state && audit {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({"state": state, "audit": audit}))).into_response()
}

async fn not_found() -> Response {
    plain_error(404, "invalid_request", "not_found", "no such route")
}

/// The broker's routes; `extra` is merged in (dev mode's demo issuer).
pub fn router(broker: Arc<Broker>, extra: Option<Router>) -> Router {
    let max_body = broker.config.server.max_body_size;
    let mut r = Router::new()
        .route("/v1/token", any(token))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(broker)
        .fallback(not_found);
    if let Some(extra) = extra {
        r = r.merge(extra);
    }
    r.layer(DefaultBodyLimit::max(max_body)).layer(
        tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]),
    )
}

/// Serves `router` on `listener` until SIGINT/SIGTERM, then stops accepting and lets in-flight
/// requests finish (up to `drain`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    request_timeout: Duration,
    drain: Duration,
) -> std::io::Result<()> {
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        request_timeout,
    ));
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(router.clone());
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout).max_buf_size(64 * 1024).keep_alive(true);
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => {
                tracing::info!("shutdown requested; draining in-flight requests");
                break;
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed with requests still in flight");
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

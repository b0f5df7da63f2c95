//! The HTTP surface: RFC 8693 on `POST /v1/token`, the broker's JWKS and discovery, health.
//!
//! Limits are applied before any parsing: per-client rate (429), body size (413), header size
//! and header read timeout (slow clients are dropped), a per-request timeout. Every rejection on
//! `/v1/token` goes through [`Broker::exchange`], so it is mapped in one place and audited. Token
//! responses carry `Cache-Control: no-store` and `Pragma: no-cache`; every error is RFC 6749 JSON.

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
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Token buckets per client address on `/v1/token`. Bounded: past `max_clients` tracked
/// addresses, idle buckets are dropped; if none is idle, new clients are refused (429) rather
/// than letting the table grow.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            max_clients: 100_000,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; false when the client is over its rate.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let Ok(mut map) = self.buckets.lock() else { return false };
        if map.len() >= self.max_clients && !map.contains_key(&ip) {
            let (rate, burst) = (self.per_second, self.burst);
            map.retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * rate < burst);
            if map.len() >= self.max_clients {
                return false;
            }
        }
        let (tokens, last) = map.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Shared state of the routes.
#[derive(Debug)]
pub struct App {
    pub broker: Arc<Broker>,
    pub limiter: RateLimiter,
}

/// The client's address, set per connection by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// An RFC 6749 §5.2 error body with its status.
pub fn error_response(e: &ErrorResponse) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, axum::Json(json!({"error": e.error, "error_description": e.description}))).into_response();
    if e.status == 503 || e.status == 429 {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if e.status == 405 {
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    no_store(r)
}

async fn token(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let request_id = random_id(12);
    let form_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    let bad = |p| Err(ExchangeError::InvalidRequest(p));
    let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let req = if client.is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        Err(ExchangeError::RateLimited)
    } else if header_bytes > crate::exchange::MAX_HEADER_BYTES {
        bad(RequestProblem::HeadersTooLarge)
    } else if method != Method::POST {
        bad(RequestProblem::MethodNotAllowed)
    } else if uri.query().is_some() {
        // A token in a URL ends up in logs and proxies; refuse it whatever else the URL holds.
        bad(RequestProblem::QueryString)
    } else if !form_type {
        bad(RequestProblem::NotForm)
    } else {
        match body {
            Ok(b) => parse_form(&b),
            Err(_) => bad(RequestProblem::BodyTooLarge),
        }
    };
    let mut resp = match app.broker.exchange(req, &request_id).await {
        Ok(ok) => no_store(axum::Json(ok).into_response()),
        Err(e) => error_response(&e),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// How long a broker nonce lives.
pub const NONCE_TTL: i64 = 60;

/// `POST /v1/nonce`: a single-use, short-lived nonce (256 bits, base64url) for attestation and
/// proof of possession, bound to the role named by an optional `audience` form field.
async fn nonce(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    method: Method,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let refuse = |status, error, reason: &'static str, detail: &str| {
        error_response(&ErrorResponse { status, error, reason, description: format!("{reason}: {detail}") })
    };
    if client.is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        return refuse(429, "temporarily_unavailable", "rate_limited", "too many requests from this client");
    }
    if method != Method::POST {
        return refuse(405, "invalid_request", "method_not_allowed", "use POST");
    }
    let Ok(body) = body else { return refuse(413, "invalid_request", "request_too_large", "body over the size limit") };
    let mut binding = String::new();
    for (k, v) in form_urlencoded::parse(&body) {
        if k == "audience" {
            if !binding.is_empty() {
                return refuse(
                    400,
                    "invalid_request",
                    "request_invalid",
                    "parameter `audience` appears more than once",
                );
            }
            if !app.broker.config().roles.contains_key(v.as_ref()) {
                return refuse(400, "invalid_target", "unknown_role", "no such role");
            }
            binding = v.into_owned();
        }
    }
    let value = random_id(32);
    let now = app.broker.clock.now();
    match app.broker.state.put_nonce(&value, &binding, now + NONCE_TTL, now).await {
        Ok(()) => no_store(axum::Json(json!({"nonce": value, "expires_in": NONCE_TTL})).into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "nonce not stored");
            refuse(503, "temporarily_unavailable", "replay_store_unavailable", "nonces cannot be issued now")
        }
    }
}

async fn jwks(State(app): State<Arc<App>>) -> Response {
    let mut r = axum::Json(app.broker.signer.jwks()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

async fn discovery(State(app): State<Arc<App>>) -> Response {
    let config = app.broker.config();
    let issuer = &config.server.issuer;
    let base = issuer.trim_end_matches('/');
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/v1/token"),
        "grant_types_supported": [crate::exchange::GRANT_TOKEN_EXCHANGE],
        "id_token_signing_alg_values_supported": [app.broker.signer.algorithm()],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let state = app.broker.state.ready().await.is_ok();
    let audit = app.broker.audit.as_ref().is_some_and(crate::audit::AuditLog::ready);
    let status = if state && audit { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"state": state, "audit": audit}))).into_response()
}

/// The 404 of every unknown route. It reads the request body first (bounded by the body limit;
/// a failed read changes nothing): answering before a client's body has arrived made hyper
/// close a keep-alive connection under the client's next request.
async fn not_found(_body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    error_response(&ErrorResponse {
        status: 404,
        error: "invalid_request",
        reason: "not_found",
        description: "not_found: no such route".into(),
    })
}

/// The broker's routes; `extra` is merged in (dev mode's demo issuer).
pub fn router(broker: Arc<Broker>, extra: Option<Router>) -> Router {
    routers(broker, extra).0
}

/// The public router and, when `[admin] listen` is set, the admin router to serve there (the
/// inventory then is not on the public listener at all).
pub fn routers(broker: Arc<Broker>, extra: Option<Router>) -> (Router, Option<Router>) {
    let config = broker.config();
    let s = &config.server;
    let max_body = s.max_body_size;
    let limiter = RateLimiter::new(s.rate_limit_per_second, s.rate_limit_burst);
    let app = Arc::new(App { broker, limiter });
    let admin = Router::new().route("/v1/grants", get(crate::admin::grants)).with_state(app.clone());
    let limits = |r: Router| {
        r.layer(DefaultBodyLimit::max(max_body)).layer(
            tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
            ]),
        )
    };
    let mut r = Router::new()
        .route("/v1/token", any(token))
        .route("/v1/nonce", any(nonce))
        .route("/v1/revoke", axum::routing::post(crate::admin::revoke))
        .route("/v1/introspect", axum::routing::post(crate::admin::introspect))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app);
    if let Some(extra) = extra {
        r = r.merge(extra);
    }
    if config.admin_listen.is_some() {
        (limits(r.fallback(not_found)), Some(limits(admin.fallback(not_found))))
    } else {
        (limits(r.merge(admin).fallback(not_found)), None)
    }
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
    // A backstop only: the token endpoint answers its own timeouts (audited, RFC 6749 JSON).
    let backstop = request_timeout + Duration::from_secs(30);
    let router =
        router.layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, backstop));
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = router.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    req
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout).max_buf_size(64 * 1024).keep_alive(true);
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)));
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
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain deadline passed with requests still in flight");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_admits_a_burst_then_refuses() {
        let l = RateLimiter::new(1, 5);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.admit(a)).count(), 5);
        assert!(l.admit(b), "another client is unaffected");
    }

    /// The table of tracked addresses is bounded (README: 100,000): a new client past the bound
    /// is refused while every tracked one is busy, and the tracked ones keep their buckets.
    #[test]
    fn rate_limiter_tracks_a_bounded_number_of_clients() {
        assert_eq!(RateLimiter::new(1, 5).max_clients, 100_000);
        let l = RateLimiter { max_clients: 3, ..RateLimiter::new(1, 2) };
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        for n in 1..=3 {
            assert!(l.admit(ip(n)), "client {n} within the bound");
        }
        assert!(!l.admit(ip(4)), "a fourth client while three are busy");
        assert!(l.admit(ip(1)), "a tracked client keeps its bucket (second of its burst of 2)");
        assert_eq!(l.buckets.lock().map(|m| m.len()).unwrap_or(0), 3);
    }
}

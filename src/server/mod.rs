//! The HTTP surface, and the only part of the broker that knows HTTP: RFC 8693 on
//! `POST /v1/token`, broker nonces, the admin routes, the broker's JWKS and discovery, health.
//!
//! Limits are applied before any parsing: per-client rate (429), body size (413), header size
//! and header read timeout (slow clients are dropped), a per-request timeout. Every rejection on
//! `/v1/token` is audited through the broker; every status code is chosen in `error.rs`. Token
//! responses carry `Cache-Control: no-store` and `Pragma: no-cache`; every error is RFC 6749 JSON.
//!
//! | file | holds |
//! |---|---|
//! | `token.rs` | `POST /v1/token` |
//! | `nonce.rs` | `POST /v1/nonce` |
//! | `admin.rs` | `POST /v1/revoke`, `POST /v1/introspect`, `GET /v1/grants` (admin credential) |
//! | `inventory.rs` | the inventory page `/admin/` (browser sessions, CSRF-safe revoke forms) |
//! | `events.rs` | `POST /v1/events/github`, `POST /v1/events/gitlab` (platform webhooks) |
//! | `wellknown.rs` | JWKS, OpenID discovery, SSF transmitter metadata, `/healthz`, `/readyz`, the 404 |
//! | `limits.rs` | what the transport refuses before a form is read; the rate limiter |
//! | `error.rs` | refusal → status code and RFC 6749 body, the one mapping |

mod admin;
mod conn;
pub(crate) mod demo;
mod error;
mod events;
mod inventory;
mod limits;
mod nonce;
pub mod tls;
mod token;
mod wellknown;

pub(crate) use limits::RateLimiter;

use crate::exchange::Broker;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::{MethodRouter, any, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Shared state of the routes.
#[derive(Debug)]
struct App {
    broker: Arc<Broker>,
    limiter: RateLimiter,
    nonces: nonce::NonceBudget,
    /// The inventory page's browser sessions.
    sessions: inventory::Sessions,
    /// Page cookies are `Secure`: the listener that serves the admin routes is TLS.
    secure_cookie: bool,
}

/// The client's address, set per connection by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A route that is read: any other method is a 405 naming `GET,HEAD`, as RFC 6749 JSON.
fn read<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    route.fallback(|| error::method_not_allowed(limits::GET))
}

/// A route that takes a form: any other method is a 405 naming `POST`, as RFC 6749 JSON.
fn form<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    route.fallback(|| error::method_not_allowed(limits::POST))
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
    let body_within = s.header_read_timeout;
    let limiter = RateLimiter::new(s.rate_limit_per_second, s.rate_limit_burst);
    let (public_tls, admin_tls) = tls::files(&config);
    let secure_cookie = if config.admin_listen.is_some() { admin_tls.is_some() } else { public_tls.is_some() };
    let app = Arc::new(App {
        broker,
        limiter,
        nonces: nonce::NonceBudget::default(),
        sessions: inventory::Sessions::default(),
        secure_cookie,
    });
    let admin = Router::new()
        .route("/v1/grants", read(get(admin::grants)))
        .route("/v1/keys/flush", form(post(admin::flush_keys)))
        .route("/v1/revocations", read(get(admin::revocations)))
        .route("/metrics", read(get(admin::metrics)))
        .route("/v1/revocations/remove", form(post(admin::remove_revocation)))
        .route("/v1/state/confirm", form(post(admin::confirm_state)))
        .route("/admin", read(get(inventory::to_page)))
        .route("/admin/", read(get(inventory::inventory)))
        .route(
            "/admin/login",
            get(inventory::login_page).post(inventory::login).fallback(|| error::method_not_allowed(limits::GET_POST)),
        )
        .route("/admin/logout", form(post(inventory::logout)))
        .route("/admin/revoke", form(post(inventory::revoke)))
        .with_state(app.clone());
    let limits = |r: Router| {
        r.layer(DefaultBodyLimit::max(max_body))
            .layer(axum::middleware::from_fn(move |req, next| {
                limits::read_body_first(max_body, body_within, req, next)
            }))
            .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
            ]))
    };
    let mut r = Router::new()
        .route("/v1/token", any(token::token))
        .route("/v1/nonce", any(nonce::nonce))
        .route("/v1/revoke", form(post(admin::revoke)))
        .route("/v1/introspect", form(post(admin::introspect)))
        .route("/v1/events/github", form(post(events::github)))
        .route("/v1/events/gitlab", form(post(events::gitlab)))
        .route("/.well-known/jwks.json", read(get(wellknown::jwks)))
        .route("/.well-known/openid-configuration", read(get(wellknown::discovery)))
        .route("/.well-known/ssf-configuration", read(get(wellknown::ssf_configuration)))
        .route("/healthz", read(get(wellknown::healthz)))
        .route("/readyz", read(get(wellknown::readyz)))
        .with_state(app);
    if let Some(extra) = extra {
        r = r.merge(extra);
    }
    if config.admin_listen.is_some() {
        (limits(r.fallback(wellknown::not_found)), Some(limits(admin.fallback(wellknown::not_found))))
    } else {
        (limits(r.merge(admin).fallback(wellknown::not_found)), None)
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
    trusted_proxies: Vec<(std::net::IpAddr, u8)>,
    tls: Option<tls::Tls>,
) -> std::io::Result<()> {
    let trusted = Arc::new(trusted_proxies);
    // A backstop only: the token endpoint answers its own timeouts (audited, RFC 6749 JSON).
    let backstop = request_timeout + Duration::from_secs(30);
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(backstop, next.run(req)).await {
                Ok(r) => r,
                Err(_) => error::reject(limits::HttpRejection::Timeout),
            }
        },
    ));
    let connections = Arc::new(conn::Connections::default());
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
                // Past either cap the connection gets its 503 and is closed at once, before it
                // can hold anything (review C21).
                let Some(admitted) = conn::Connections::admit(&connections, peer.ip()) else {
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut stream = stream;
                        let answer = conn::raw_response(limits::HttpRejection::TooManyConnections);
                        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&answer)).await;
                    });
                    continue;
                };
                let trusted = trusted.clone();
                let svc = router.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    let client = conn::client_of(peer.ip(), req.headers(), &trusted);
                    req.extensions_mut().insert(ClientAddr(SocketAddr::new(client, peer.port())));
                    req
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .max_buf_size(64 * 1024)
                    .max_headers(256)
                    .writev(false)
                    .keep_alive(true);
                let watcher = graceful.watcher();
                let tls = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let svc = TowerToHyperService::new(svc);
                    let ended = match tls {
                        None => watcher.watch(builder.serve_connection(TokioIo::new(conn::JsonErrors::new(stream)), svc)).await,
                        // the handshake is bounded like the headers that follow it
                        Some(acceptor) => match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                let io = TokioIo::new(conn::JsonErrors::new(tls_stream));
                                watcher.watch(builder.serve_connection(io, svc)).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                    };
                    if let Err(e) = ended {
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

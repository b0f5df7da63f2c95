//! `ephemera serve`: the broker on a config file, reloaded on SIGHUP.

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::audit::AuditLog;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::exchange::Broker;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// On SIGHUP, reloads the config file: a config with any error (syntax, unscoped role, policy
/// that does not validate), or one that changes a setting fixed at start, is refused and the last
/// good one keeps serving.
async fn reload_on_sighup(broker: Arc<Broker>, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        // SIGHUP also rotates the audit log when the config says so (the chain goes on in the
        // new file)
        if broker.config().audit_options.rotate_on_sighup
            && let Err(e) = broker.rotate_audit().await
        {
            tracing::error!(error = %e, "audit log rotation on SIGHUP failed");
        }
        let refused = match Config::load(&path) {
            Ok(new) => {
                let version = new.version.clone();
                for f in &new.findings {
                    tracing::warn!(role = %f.role, code = f.code, detail = %f.message, "policy finding");
                }
                let before = broker.config().version.clone();
                match broker.reload(new).await {
                    Ok(()) => {
                        tracing::info!(version = %version, "config reloaded");
                        let build = |v: String| metrics::gauge!("ephemera_build_info", "version" => env!("CARGO_PKG_VERSION"), "config_version" => v);
                        build(before).set(0.0);
                        build(version.clone()).set(1.0);
                        false
                    }
                    Err(keys) => {
                        for key in keys {
                            tracing::error!(key, "config reload refused: this setting needs a restart to change");
                        }
                        true
                    }
                }
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "config reload refused");
                }
                true
            }
        };
        if refused {
            tracing::error!(version = %broker.config().version, "config reload refused; the last good config keeps serving");
        }
    }
}

pub(super) async fn serve(
    config: Config,
    extra: Option<(crate::server::demo::DemoIssuer, Arc<dyn Clock>)>,
    listener: Option<tokio::net::TcpListener>,
    config_path: Option<PathBuf>,
) -> ExitCode {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    crate::telemetry::install();
    metrics::gauge!("ephemera_build_info", "version" => env!("CARGO_PKG_VERSION"), "config_version" => config.version.clone())
        .set(1.0);
    // what check says, serve says: every file problem at once, before anything is created
    let mut problems = config.preflight();
    problems.extend(crate::server::tls::check(&config));
    if !problems.is_empty() {
        for e in &problems {
            eprintln!("config error: {e}");
        }
        return ExitCode::from(EXIT_USAGE);
    }
    let audit = match AuditLog::open_with(&config.audit_path, config.audit_options.clone()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: audit log {}: {e}", config.audit_path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let listen = config.server.listen;
    let (hrt, rt, drain) = (config.server.header_read_timeout, config.server.request_timeout, Duration::from_secs(30));
    let trusted = config.server.trusted_proxies.clone();
    let broker = match Broker::build(config, clock, audit, None).await {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let listener = match listener {
        Some(l) => l,
        None => match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
    };
    // Open the state store now (for Redis: connect and start the epoch) rather than at the first
    // exchange; a store that does not answer leaves the broker running but not ready.
    if let Err(e) = broker.evaluator().state_ready().await {
        tracing::warn!(error = %e, "state store not ready at start; exchanges fail closed until it is");
    }
    for f in &broker.config().findings {
        tracing::warn!(role = %f.role, code = f.code, detail = %f.message, "policy finding");
    }
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let config = broker.config();
    if !config.safety.replay || !config.safety.audit {
        tracing::warn!(
            replay = config.safety.replay,
            audit = config.safety.audit,
            "BENCHMARK BUILD: a safety feature is switched off by [bench]; never run this in production"
        );
    }
    tracing::info!(listen = %local, issuer = %config.server.issuer, kid = %broker.kid(), roles = config.roles.len(), version = %config.version, "ephemera serving");
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(broker.clone(), path));
    }
    {
        // counted refusals (429s) become one audit record per interval
        let broker = broker.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(crate::exchange::COUNTED_REFUSALS_EVERY as u64);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                broker.write_counted(broker.evaluator().now()).await;
            }
        });
    }
    {
        // revocations told to partners and clouds: the durable outbox, every second and at once
        // after a revocation queued something
        let broker = broker.clone();
        tokio::spawn(async move { broker.run_outbox().await });
    }
    let (public_tls, admin_tls) = crate::server::tls::files(&broker.config());
    let (public_tls, admin_tls) =
        match (public_tls.map(|f| f.serve()).transpose(), admin_tls.map(|f| f.serve()).transpose()) {
            (Ok(p), Ok(a)) => (p, a),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("config error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
    let extra = extra.map(|(d, c)| crate::server::demo::routes(d, c));
    let admin_listen = broker.config().admin_listen;
    let (public, admin) = crate::server::routers(broker, extra);
    if let (Some(addr), Some(admin)) = (admin_listen, admin) {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(listen = %addr, "admin routes listening apart");
                tokio::spawn(crate::server::serve(l, admin, hrt, rt, drain, trusted.clone(), admin_tls));
            }
            Err(e) => {
                eprintln!("error: cannot listen on {addr} (admin.listen): {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    match crate::server::serve(listener, public, hrt, rt, drain, trusted, public_tls).await {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

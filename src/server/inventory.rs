//! The inventory page on the admin routes (`/admin/`): who holds what until when, the revocations
//! in force, the recent denials, and per role who obtained grants and when it last granted; a
//! revoke button per task and per grant. Server-rendered (minijinja, HTML auto-escaped), no
//! script at all.
//!
//! **How a browser is let in.** `POST /admin/login` takes the admin credential once and answers a
//! session cookie (`ephemera_admin`: 256 random bits, `HttpOnly`, `SameSite=Strict`,
//! `Path=/admin`, `Secure` when the listener is TLS) that lasts [`SESSION_TTL`] and ends with
//! `POST /admin/logout`, with the process, or when the admin credential changes (a reload with a
//! new one ends every session). Sessions live in this process's memory: each replica has its own.
//! **CSRF**: every state-changing form carries the session's own random token, compared in
//! constant time; a request whose `Origin` or `Sec-Fetch-Site` says it came from another site is
//! refused before that; the cookie is `SameSite=Strict` besides. The page is `no-store`, may not be
//! framed, and loads nothing (`Content-Security-Policy: default-src 'none'`).
//!
//! Answers: the pages are HTML; a refusal is RFC 6749 JSON, or, to a browser (`Accept:
//! text/html`), an HTML page naming the same error and reason with the same status.

use super::error::refused;
use super::{App, ClientAddr};
use crate::audit::activity::{Denial, RoleUse};
use crate::clock::rfc3339;
use crate::exchange::{Class, GrantEntry, Refusal, RevocationEntry, RevokeBy, parse_admin_form};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

/// How long a page session lasts (from login; no sliding renewal).
pub(super) const SESSION_TTL: i64 = 15 * 60;
/// How many sessions are kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 64;
const COOKIE: &str = "ephemera_admin";

static TEMPLATES: LazyLock<minijinja::Environment<'static>> = LazyLock::new(|| {
    let mut env = minijinja::Environment::new();
    // `.html` names turn on HTML auto-escaping: every value rendered is escaped
    for (name, text) in [
        ("inventory.html", include_str!("templates/inventory.html")),
        ("login.html", include_str!("templates/login.html")),
        ("refused.html", include_str!("templates/refused.html")),
        ("layout.html", include_str!("templates/layout.html")),
    ] {
        if let Err(e) = env.add_template(name, text) {
            // the templates are compiled in; a broken one is a build defect the tests catch
            tracing::error!(template = name, error = %e, "template does not parse");
        }
    }
    env
});

/// One browser's session.
struct Session {
    expires: i64,
    /// The form token of this session (CSRF).
    csrf: String,
    /// The admin credential it was opened with: a changed credential ends it.
    credential: SecretString,
    /// What the last action did, shown once.
    flash: Option<String>,
}

/// The page sessions of this process.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<String, Session>>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions([REDACTED])")
    }
}

impl Sessions {
    fn open(&self, credential: &str, now: i64) -> Option<(String, String)> {
        let id = crate::ids::random_id(32).ok()?;
        let csrf = crate::ids::random_id(32).ok()?;
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| s.expires > now);
        while all.len() >= MAX_SESSIONS {
            let Some(oldest) = all.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) else { break };
            all.remove(&oldest);
        }
        let session = Session {
            expires: now + SESSION_TTL,
            csrf: csrf.clone(),
            credential: SecretString::from(credential.to_owned()),
            flash: None,
        };
        all.insert(id.clone(), session);
        Some((id, csrf))
    }

    /// The session the cookie names, if it is live and its credential is still the admin's:
    /// its form token and its flash (taken).
    fn current(&self, app: &App, headers: &HeaderMap, now: i64) -> Option<(String, String, Option<String>)> {
        let id = cookie(headers)?;
        let config = app.broker.config();
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let live = all.get(id).is_some_and(|s| {
            s.expires > now && config.admin_token.as_ref().is_some_and(|t| t.matches(s.credential.expose_secret()))
        });
        if !live {
            all.remove(id);
            return None;
        }
        let s = all.get_mut(id)?;
        Some((id.to_owned(), s.csrf.clone(), s.flash.take()))
    }

    fn flash(&self, id: &str, message: String) {
        if let Some(s) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            s.flash = Some(message);
        }
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The session id the request's cookie carries.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

fn set_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("ephemera_admin=; Max-Age=0"))
}

/// The headers of every page: not stored, not framed, nothing loaded, no referrer.
fn page(status: StatusCode, html: String) -> Response {
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // not `no-referrer`: under it a browser posts the page's own forms with `Origin: null`,
    // which `same_site` refuses (the browser test caught it); `same-origin` tells no other site
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn render(name: &str, ctx: impl Serialize) -> Result<String, minijinja::Error> {
    TEMPLATES.get_template(name)?.render(ctx)
}

fn see_other(to: &'static str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The client asks for HTML (a browser).
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

/// A refusal: RFC 6749 JSON, or to a browser an HTML page saying the same.
fn refuse(headers: &HeaderMap, r: &Refusal) -> Response {
    let json = refused(r);
    if !wants_html(headers) {
        return json;
    }
    let ctx = minijinja::context! { error => r.error, description => &r.description };
    match render("refused.html", ctx) {
        Ok(text) => page(json.status(), text),
        Err(_) => json,
    }
}

fn denied(detail: &str) -> Refusal {
    Refusal::new(Class::Forbidden, "access_denied", "cross_site_request", detail)
}

/// A form from another site is refused before anything else (`Origin`, `Sec-Fetch-Site`).
fn same_site(headers: &HeaderMap) -> Result<(), Refusal> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(denied("the form came from another site (Sec-Fetch-Site)"));
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h).trim_end_matches('/');
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Err(denied("the form came from another origin (Origin)"));
        }
    }
    Ok(())
}

fn now(app: &App) -> i64 {
    app.broker.evaluator().now()
}

/// `GET /admin`: the page's own address.
pub(super) async fn to_page() -> Response {
    see_other("/admin/")
}

/// `GET /admin/login`.
pub(super) async fn login_page() -> Response {
    match render("login.html", minijinja::context! { failed => false }) {
        Ok(text) => page(StatusCode::OK, text),
        Err(e) => template_failed(&e),
    }
}

fn template_failed(e: &minijinja::Error) -> Response {
    tracing::error!(error = %e, "the page could not be rendered");
    refused(&Refusal::new(
        Class::Unavailable,
        "temporarily_unavailable",
        "page_unavailable",
        "the page could not be rendered",
    ))
}

/// `POST /admin/login` (`token`): the admin credential for a session cookie.
pub(super) async fn login(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if client.as_ref().is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        return super::error::reject(super::limits::HttpRejection::RateLimited);
    }
    if let Err(r) = same_site(&headers) {
        return refuse(&headers, &r);
    }
    let Ok(body) = body else { return super::error::reject(super::limits::HttpRejection::BodyTooLarge) };
    let form = match parse_admin_form(&body) {
        Ok(f) => f,
        Err(r) => return refuse(&headers, &r),
    };
    let presented = form.get("token").map(String::as_str).unwrap_or_default();
    let config = app.broker.config();
    if presented.is_empty() || !config.admin_token.as_ref().is_some_and(|t| t.matches(presented)) {
        let from = client.map(|c| c.0.0.ip().to_string()).unwrap_or_default();
        tracing::warn!(client = %from, "admin page login refused");
        // a browser gets the login form again; any other client RFC 6749 JSON
        if !wants_html(&headers) {
            return super::error::reject(super::limits::HttpRejection::CredentialRefused);
        }
        return match render("login.html", minijinja::context! { failed => true }) {
            Ok(text) => page(StatusCode::UNAUTHORIZED, text),
            Err(e) => template_failed(&e),
        };
    }
    let Some((id, _)) = app.sessions.open(presented, now(&app)) else {
        return refused(&Refusal::new(
            Class::Unavailable,
            "temporarily_unavailable",
            "randomness_unavailable",
            "no session could be made",
        ));
    };
    tracing::info!("admin page session opened");
    let mut r = see_other("/admin/");
    r.headers_mut().insert(header::SET_COOKIE, set_cookie(&id, SESSION_TTL, app.secure_cookie));
    r
}

/// `POST /admin/logout` (`csrf`).
pub(super) async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let (id, _form) = match checked_form(&app, &headers, body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    app.sessions.close(&id);
    let mut r = see_other("/admin/login");
    r.headers_mut().insert(header::SET_COOKIE, set_cookie("", 0, app.secure_cookie));
    r
}

/// A state-changing form of a session: same site, a live session, its own form token.
fn checked_form(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(String, HashMap<String, String>), Box<Response>> {
    same_site(headers).map_err(|r| Box::new(refuse(headers, &r)))?;
    let Some((id, csrf, _)) = app.sessions.current(app, headers, now(app)) else {
        return Err(Box::new(refuse(headers, &no_session())));
    };
    let body = body.map_err(|_| Box::new(super::error::reject(super::limits::HttpRejection::BodyTooLarge)))?;
    let form = parse_admin_form(&body).map_err(|r| Box::new(refuse(headers, &r)))?;
    let presented = form.get("csrf").map(String::as_str).unwrap_or_default();
    let same: bool = subtle::ConstantTimeEq::ct_eq(csrf.as_bytes(), presented.as_bytes()).into();
    if !same {
        return Err(Box::new(refuse(headers, &denied("the form's token is not this session's (log in again)"))));
    }
    Ok((id, form))
}

fn no_session() -> Refusal {
    Refusal::new(Class::Unauthenticated, "invalid_client", "session_required", "log in at /admin/login")
}

/// `POST /admin/revoke` (`csrf`, `kind` = `task` or `grant`, `value`, `provider` for a task).
pub(super) async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let (id, form) = match checked_form(&app, &headers, body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let value = form.get("value").cloned().unwrap_or_default();
    let mut target = HashMap::new();
    match form.get("kind").map(String::as_str) {
        Some("task") => {
            target.insert("task".to_owned(), value);
            if let Some(p) = form.get("provider") {
                target.insert("provider".to_owned(), p.clone());
            }
        }
        Some("grant") => {
            target.insert("jti".to_owned(), value);
        }
        _ => {
            let r = Refusal::new(Class::Rejected, "invalid_request", "request_invalid", "kind is task or grant");
            return refuse(&headers, &r);
        }
    }
    let message = match app.broker.revoke(RevokeBy::Admin, &target).await {
        Ok(r) => {
            format!("Revoked {} ({} live grant{} ended).", r.revoked, r.matched, if r.matched == 1 { "" } else { "s" })
        }
        Err(r) => format!("Not revoked: {}", r.description),
    };
    app.sessions.flash(&id, message);
    see_other("/admin/")
}

/// A grant as the page shows it.
#[derive(Serialize)]
struct GrantRow {
    id: String,
    subject: String,
    role: String,
    kind: String,
    audience: Option<String>,
    issued: String,
    expires: String,
    left: String,
    revoked: bool,
}

/// A task's grants.
#[derive(Serialize)]
struct TaskRows {
    provider: String,
    task: String,
    revoked: bool,
    grants: Vec<GrantRow>,
}

#[derive(Serialize)]
struct RoleRow {
    name: String,
    provider: String,
    kind: &'static str,
    max_ttl: u64,
    last: Option<String>,
    ago: Option<String>,
    /// (provider, subject, when)
    workloads: Vec<(String, String, String)>,
    live: usize,
}

#[derive(Serialize)]
struct DenialRow {
    time: String,
    role: Option<String>,
    provider: Option<String>,
    subject: Option<String>,
    reason: String,
    detail: Option<String>,
    decision_id: String,
}

/// "in 4m 10s", "3h 2m ago": a duration a person reads.
fn span(secs: i64) -> String {
    let text = duration(secs.unsigned_abs());
    if secs >= 0 { format!("in {text}") } else { format!("{text} ago") }
}

/// "0s ago", "3h 2m ago": when something that has happened happened. An event of this second
/// is "0s ago", never "in 0s" (a grant's last use read `in 0s` on the page right after it).
fn ago(at: i64, now: i64) -> String {
    format!("{} ago", duration(now.saturating_sub(at).max(0).unsigned_abs()))
}

fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `GET /admin/`: the page, to a session; otherwise to the login.
pub(super) async fn inventory(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let now = now(&app);
    let Some((_, csrf, flash)) = app.sessions.current(&app, &headers, now) else {
        return see_other("/admin/login");
    };
    let config = app.broker.config();
    let mut problems: Vec<String> = Vec::new();
    let grants: Vec<GrantEntry> = app.broker.grants(None, false).await.unwrap_or_else(|r| {
        problems.push(format!("The inventory cannot be read now: {}", r.description));
        Vec::new()
    });
    let revocations: Vec<RevocationEntry> = app.broker.revocations().await.unwrap_or_else(|r| {
        problems.push(format!("The revocations cannot be read now: {}", r.description));
        Vec::new()
    });
    let (denials, used, since) = app.broker.activity().snapshot();

    // grants by task (provider, task), soonest expiry first within a task
    let mut tasks: BTreeMap<(String, String), TaskRows> = BTreeMap::new();
    let mut live: HashMap<&str, usize> = HashMap::new();
    let task_revoked: Vec<String> = revocations.iter().map(|r| r.key.clone()).collect();
    for e in &grants {
        let g = &e.grant;
        if !e.revoked {
            *live.entry(g.role.as_str()).or_default() += 1;
        }
        let key = format!("task:{}:{}", g.provider, g.task);
        let rows = tasks.entry((g.provider.clone(), g.task.clone())).or_insert_with(|| TaskRows {
            provider: g.provider.clone(),
            task: g.task.clone(),
            revoked: task_revoked.contains(&key),
            grants: Vec::new(),
        });
        rows.grants.push(GrantRow {
            id: g.id.clone(),
            subject: g.subject.clone(),
            role: g.role.clone(),
            kind: g.kind.clone(),
            audience: g.audience.clone(),
            issued: rfc3339(g.issued_at),
            expires: rfc3339(g.expires_at),
            left: span(g.expires_at - now),
            revoked: e.revoked,
        });
    }
    for rows in tasks.values_mut() {
        rows.grants.sort_by(|a, b| a.expires.cmp(&b.expires));
    }
    let roles: Vec<RoleRow> = config
        .roles
        .values()
        .map(|r| {
            let u: Option<&RoleUse> = used.get(&r.name);
            RoleRow {
                name: r.name.clone(),
                provider: r.provider.name.clone(),
                kind: r.credential.kind().as_str(),
                max_ttl: r.max_ttl.as_secs(),
                last: u.map(|u| rfc3339(u.last)),
                ago: u.map(|u| ago(u.last, now)),
                workloads: u
                    .map(|u| u.workloads.iter().map(|(p, s, t)| (p.clone(), s.clone(), ago(*t, now))).collect())
                    .unwrap_or_default(),
                live: live.get(r.name.as_str()).copied().unwrap_or_default(),
            }
        })
        .collect();
    let denials: Vec<DenialRow> = denials
        .into_iter()
        .map(|d: Denial| DenialRow {
            time: rfc3339(d.ts),
            role: d.role,
            provider: d.provider,
            subject: d.subject,
            // the detail begins with the reason slug, shown in its own column already
            detail: d.detail.map(|t| t.strip_prefix(&format!("{}: ", d.reason)).map(str::to_owned).unwrap_or(t)),
            reason: d.reason,
            decision_id: d.decision_id,
        })
        .collect();
    let revocations: Vec<(String, String, String)> =
        revocations.into_iter().map(|r| (r.key, rfc3339(r.until), span(r.until - now))).collect();
    let ctx = minijinja::context! {
        now => rfc3339(now),
        config_version => config.version.clone(),
        since => since.map(rfc3339),
        flash,
        problems,
        csrf,
        tasks => tasks.into_values().collect::<Vec<_>>(),
        live_count => grants.iter().filter(|e| !e.revoked).count(),
        revoked_count => grants.iter().filter(|e| e.revoked).count(),
        revocations,
        denials,
        roles,
    };
    match render("inventory.html", ctx) {
        Ok(text) => page(StatusCode::OK, text),
        Err(e) => template_failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_a_person_says_them() {
        assert_eq!(span(0), "in 0s");
        assert_eq!(span(250), "in 4m 10s");
        assert_eq!(span(-(3 * 3600 + 120)), "3h 2m ago");
        assert_eq!(span(2 * 86_400 + 3600), "in 2d 1h");
        // what has happened is never "in": this second, and a clock a second behind the record
        assert_eq!(ago(100, 100), "0s ago");
        assert_eq!(ago(101, 100), "0s ago");
        assert_eq!(ago(100 - 250, 100), "4m 10s ago");
    }

    #[test]
    fn every_template_parses_and_escapes() {
        for name in ["inventory.html", "login.html", "refused.html", "layout.html"] {
            assert!(TEMPLATES.get_template(name).is_ok(), "{name}");
        }
        let text = render("refused.html", minijinja::context! { error => "x", description => "<script>" }).unwrap();
        assert!(text.contains("&lt;script&gt;") && !text.contains("<script>"), "{text}");
    }

    #[test]
    fn forms_from_another_site_are_refused() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_site(&h(&[("host", "b:1"), ("origin", "http://b:1"), ("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_site(&h(&[("host", "b:1")])).is_ok(), "no Origin: an older client, the token decides");
        assert!(same_site(&h(&[("host", "b:1"), ("origin", "http://evil:1")])).is_err());
        assert!(same_site(&h(&[("host", "b:1"), ("origin", "null")])).is_err());
        assert!(same_site(&h(&[("host", "b:1"), ("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_site(&h(&[("host", "b:1"), ("sec-fetch-site", "same-site")])).is_err());
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut m = HeaderMap::new();
        m.insert(header::COOKIE, HeaderValue::from_static("a=1; ephemera_admin=abc; b=2"));
        assert_eq!(cookie(&m), Some("abc"));
        m.insert(header::COOKIE, HeaderValue::from_static("ephemera_adminx=abc"));
        assert_eq!(cookie(&m), None);
        let c = set_cookie("v", SESSION_TTL, true);
        assert_eq!(
            c.to_str().unwrap(),
            "ephemera_admin=v; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=900; Secure"
        );
    }
}

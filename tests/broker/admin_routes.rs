//! The admin routes in-process: the router the server serves, over a broker built as `serve`
//! builds it, with a clock the test moves. Every negative answer stands beside its passing twin.
//!
//! - `/v1/introspect` (RFC 7662): a broker JWT is active only with a valid signature by the
//!   broker's key, the broker's `iss`, an `exp` in the future and no revocation of its grant, task,
//!   subject, role or source issuer; forged, re-signed, expired, foreign and garbage tokens are
//!   `{"active": false}`, and nothing but an admin may ask.
//! - `/v1/revoke`: exactly one key per call; a revocation lasts `REVOCATION_TTL` (12 h) and not
//!   a second longer.
//! - `/v1/grants`: admin only.
//!
//! The end-to-end tests (`tests/e2e/test_admin.py`) run the same routes over HTTP against the real
//! binary; these also run under `cargo mutants` (tests/MUTANTS.md), which runs only `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ephemera::audit::AuditLog;
use ephemera::clock::Clock;
use ephemera::config::{Config, RawConfig};
use ephemera::exchange::{Broker, Evaluator, REVOCATION_TTL};
use ephemera::minting::jwt::BrokerSigner;
use ephemera::state::StateStore;
use ephemera::state::memory::MemoryStore;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tower::ServiceExt;

const ISSUER: &str = "https://broker.example.com";
const ADMIN: &str = "admin-credential-of-at-least-32-characters";
const T0: i64 = 1_900_000_000;
const RFC7517_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

#[derive(Debug)]
struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
    /// The broker's signing key, loaded a second time (the broker keeps its own private).
    signer: BrokerSigner,
    state: Arc<MemoryStore>,
    router: axum::Router,
    clock: Arc<TestClock>,
}

fn config(dir: &Path, issuer: &str) -> Config {
    let admin = dir.join("admin-token");
    std::fs::write(&admin, ADMIN).unwrap();
    let jwks = dir.join("jwks.json");
    // the provider's key (RFC 7517 A.1's public RSA key): no exchange happens in these tests
    std::fs::write(&jwks, format!(r#"{{"keys":[{{"kty":"RSA","kid":"ci-1","e":"AQAB","n":"{RFC7517_N}"}}]}}"#))
        .unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "{issuer}"
[admin]
token_file = "{}"
[audit]
path = "{}"
[[providers]]
name = "ci"
profile = "oidc"
issuer = "https://ci.example.com"
audiences = ["ephemera"]
jwks_file = "{}"
[[roles]]
name = "deploy"
provider = "ci"
max_ttl = "15m"
conditions = {{ sub = "repo:acme/app:ref:refs/heads/main" }}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#,
        admin.display(),
        dir.join("audit.jsonl").display(),
        jwks.display()
    );
    let raw: RawConfig = toml::from_str(&text).unwrap();
    Config::from_raw(raw, dir).unwrap()
}

async fn harness_with(issuer: &str, pem: Option<&Path>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), issuer);
    // (`serve` sets the version from the file's hash; a parsed config has none)
    config.version = "0123456789abcdef".into();
    let key_file = dir.path().join("signing-key.pem");
    let pem = pem.unwrap_or_else(|| {
        write_key(&key_file);
        &key_file
    });
    let clock = Arc::new(TestClock(AtomicI64::new(T0)));
    let audit = AuditLog::open(&config.audit_path).unwrap();
    let state = Arc::new(MemoryStore::new(1000));
    let evaluator = Evaluator::with_state(config, clock.clone(), state.clone()).unwrap();
    let own = BrokerSigner::from_pem_file(pem).unwrap();
    let broker = Arc::new(Broker::with_evaluator(evaluator, audit, Some(own)).unwrap());
    let router = ephemera::server::router(broker.clone(), None);
    let signer = BrokerSigner::from_pem_file(pem).unwrap();
    Harness { _dir: dir, broker, signer, state, router, clock }
}

/// A fresh P-256 signing key, as PKCS#8 PEM.
fn write_key(path: &Path) {
    let key = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING)
        .unwrap()
        .to_pkcs8v1()
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(key.as_ref());
    std::fs::write(path, format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")).unwrap();
}

async fn harness() -> Harness {
    harness_with(ISSUER, None).await
}

/// The claims a broker JWT carries, issued at the test clock's now for `ttl` seconds.
fn claims(h: &Harness, ttl: i64) -> Value {
    let now = h.clock.now();
    json!({
        "iss": ISSUER, "sub": "repo:acme/app:ref:refs/heads/main", "aud": "https://partner.example",
        "iat": now, "nbf": now, "exp": now + ttl, "jti": format!("grant-{now}-{ttl}"), "role": "deploy",
        "task": "run-42", "provider": "ci", "src_iss": "https://ci.example.com",
    })
}

fn sign(h: &Harness, claims: &Value) -> String {
    h.signer.sign(claims).unwrap().expose().to_owned()
}

async fn post(
    h: &Harness,
    path: &str,
    bearer: Option<&str>,
    form: &[(&str, &str)],
) -> (StatusCode, Value, Option<String>) {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let resp = h.router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status();
    let www = resp.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), www)
}

async fn introspect(h: &Harness, token: &str) -> Value {
    let (status, body, _) = post(h, "/v1/introspect", Some(ADMIN), &[("token", token)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn active(h: &Harness, token: &str) -> bool {
    let body = introspect(h, token).await;
    match body["active"] {
        Value::Bool(true) => true,
        Value::Bool(false) => {
            assert_eq!(body, json!({"active": false}), "an inactive answer says nothing more");
            false
        }
        _ => panic!("{body}"),
    }
}

async fn revoke(h: &Harness, kind: &str, value: &str) -> Value {
    let (status, body, _) = post(h, "/v1/revoke", Some(ADMIN), &[(kind, value)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_fresh_broker_jwt_is_active_with_its_members() {
    let h = harness().await;
    let c = claims(&h, 300);
    let body = introspect(&h, &sign(&h, &c)).await;
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "Bearer");
    for k in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "role", "task", "provider", "src_iss"] {
        assert_eq!(body[k], c[k], "{k}");
    }
}

#[tokio::test]
async fn an_active_answer_is_never_cached() {
    let h = harness().await;
    let body =
        form_urlencoded::Serializer::new(String::new()).append_pair("token", &sign(&h, &claims(&h, 300))).finish();
    let req = Request::post("/v1/introspect")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::from(body))
        .unwrap();
    let resp = h.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get(header::CACHE_CONTROL).map(|v| v.to_str().unwrap()), Some("no-store"));
}

/// The `Bearer` scheme is matched case-insensitively (RFC 9110 11.1, review S5); the credential
/// itself is not. Twin: a wrong credential in any case is 401.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let h = harness().await;
    let token = sign(&h, &claims(&h, 300));
    for (scheme, credential, want) in [
        ("bearer", ADMIN, StatusCode::OK),
        ("BEARER", ADMIN, StatusCode::OK),
        ("Bearer", ADMIN, StatusCode::OK),
        ("bearer", "not-the-admin-credential-at-all-000", StatusCode::UNAUTHORIZED),
    ] {
        let body = form_urlencoded::Serializer::new(String::new()).append_pair("token", &token).finish();
        let req = Request::post("/v1/introspect")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, format!("{scheme} {credential}"))
            .body(Body::from(body))
            .unwrap();
        assert_eq!(h.router.clone().oneshot(req).await.unwrap().status(), want, "{scheme}");
    }
}

#[tokio::test]
async fn a_forged_signature_is_inactive() {
    let h = harness().await;
    let token = sign(&h, &claims(&h, 300));
    assert!(active(&h, &token).await);
    // one bit of the signature flipped
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[10] ^= 1;
    assert!(!active(&h, &format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes))).await);
    // the payload changed under the old signature (another role)
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut c = claims(&h, 300);
    c["role"] = json!("admin");
    parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    assert!(!active(&h, &parts.join(".")).await);
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_inactive_even_with_the_brokers_kid() {
    let h = harness().await;
    let c = claims(&h, 300);
    let other = BrokerSigner::generate().unwrap();
    let forged = other.sign(&c).unwrap().expose().to_owned();
    assert!(!active(&h, &forged).await);
    // the same, with the header's kid replaced by the broker's own
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": h.broker.kid()}).to_string();
    let (_, rest) = forged.split_once('.').unwrap();
    assert!(!active(&h, &format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header))).await);
    // twin: the broker's own signature over the same claims
    assert!(active(&h, &sign(&h, &c)).await);
}

#[tokio::test]
async fn another_issuer_is_inactive_even_under_the_brokers_key() {
    // Two brokers share one signing key; only the `iss` differs.
    let pem = tempfile::NamedTempFile::new().unwrap();
    write_key(pem.path());
    let h = harness_with(ISSUER, Some(pem.path())).await;
    let other = harness_with("https://other-broker.example.com", Some(pem.path())).await;
    assert_eq!(h.broker.kid(), other.broker.kid());
    let mut c = claims(&h, 300);
    assert!(active(&h, &sign(&other, &c)).await, "twin: the same key and the broker's iss");
    c["iss"] = json!("https://other-broker.example.com");
    let foreign = sign(&other, &c);
    assert!(!active(&h, &foreign).await);
    assert!(active(&other, &foreign).await);
}

#[tokio::test]
async fn an_expired_token_is_inactive_from_its_exp_on() {
    let h = harness().await;
    let token = sign(&h, &claims(&h, 60));
    h.clock.0.store(T0 + 59, Ordering::SeqCst);
    assert!(active(&h, &token).await);
    h.clock.0.store(T0 + 60, Ordering::SeqCst);
    assert!(!active(&h, &token).await);
    // no `exp` at all is never active
    let mut c = claims(&h, 60);
    c.as_object_mut().unwrap().remove("exp");
    assert!(!active(&h, &sign(&h, &c)).await);
}

/// Introspection reads tokens up to 16 KiB: a large but genuine broker JWT is active, one over
/// the limit is not.
#[tokio::test]
async fn introspection_takes_tokens_up_to_16_kib() {
    let h = harness().await;
    let mut c = claims(&h, 300);
    c["task"] = json!("t".repeat(8 * 1024));
    let big = sign(&h, &c);
    assert!(big.len() > 8 * 1024 && big.len() < 16 * 1024, "{}", big.len());
    assert!(active(&h, &big).await);
    c["task"] = json!("t".repeat(13 * 1024));
    let too_big = sign(&h, &c);
    assert!(too_big.len() > 16 * 1024);
    assert!(!active(&h, &too_big).await);
}

#[tokio::test]
async fn garbage_is_inactive() {
    let h = harness().await;
    for junk in ["", "x", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", &"A".repeat(20_000)] {
        assert!(!active(&h, junk).await, "{junk:.20}");
    }
    // alg none over valid claims
    let c = claims(&h, 300);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(c.to_string())
    );
    assert!(!active(&h, &none).await);
}

#[tokio::test]
async fn introspect_wants_the_admin_credential_and_a_token() {
    let h = harness().await;
    let token = sign(&h, &claims(&h, 300));
    for bearer in [None, Some("wrong-credential-of-at-least-32-characters"), Some("")] {
        let (status, body, www) = post(&h, "/v1/introspect", bearer, &[("token", &token)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_client");
        assert!(body["error_description"].as_str().unwrap().starts_with("unauthorized: "), "{body}");
        assert_eq!(www.as_deref(), Some("Bearer"));
    }
    let (status, body, _) = post(&h, "/v1/introspect", Some(ADMIN), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].as_str().unwrap().starts_with("request_invalid: "), "{body}");
}

/// Every revocation key ends exactly the credentials it names, for 12 h.
#[tokio::test]
async fn each_revocation_key_ends_what_it_names_for_twelve_hours() {
    // (kind, value, how the unrelated twin differs in exactly that key)
    type Case = (&'static str, &'static str, fn(&mut Value));
    let cases: [Case; 5] = [
        ("jti", "grant-x", |c| c["jti"] = json!("grant-y")),
        ("task", "run-42", |c| c["task"] = json!("run-43")),
        ("subject", "repo:acme/app:ref:refs/heads/main", |c| c["sub"] = json!("repo:acme/other:ref:refs/heads/main")),
        ("role", "deploy", |c| c["role"] = json!("release")),
        ("issuer", "https://ci.example.com", |c| c["src_iss"] = json!("https://gitlab.example.com")),
    ];
    for (kind, value, other) in cases {
        let h = harness().await;
        let mut named = claims(&h, 13 * 3600);
        named["jti"] = json!("grant-x");
        let mut unrelated = named.clone();
        other(&mut unrelated);
        let (named, unrelated) = (sign(&h, &named), sign(&h, &unrelated));
        assert!(active(&h, &named).await && active(&h, &unrelated).await, "{kind}");
        let answer = revoke(&h, kind, value).await;
        // a task or subject is in its provider's namespace (the only provider here: `ci`)
        let key =
            if matches!(kind, "task" | "subject") { format!("{kind}:ci:{value}") } else { format!("{kind}:{value}") };
        // (`matched`: the live grants of the inventory it ends; these tokens were signed here,
        // never granted, so none)
        assert_eq!(answer, json!({"revoked": key, "until": T0 + REVOCATION_TTL, "matched": 0}));
        assert!(!active(&h, &named).await, "{kind}: the named credential is revoked");
        assert!(active(&h, &unrelated).await, "{kind}: the twin that differs in that key is not");
        h.clock.0.store(T0 + REVOCATION_TTL, Ordering::SeqCst);
        assert!(!active(&h, &named).await, "{kind}: still revoked at the last second");
        h.clock.0.store(T0 + REVOCATION_TTL + 1, Ordering::SeqCst);
        assert!(active(&h, &named).await, "{kind}: forgotten after 12 h");
    }
    assert_eq!(REVOCATION_TTL, 12 * 3600);
}

/// A revocation is evidence: one durable audit record at the clock's time, naming the key and
/// the task, under the config version in force.
#[tokio::test]
async fn a_revocation_is_audited() {
    let h = harness().await;
    h.clock.0.store(T0 + 7, Ordering::SeqCst);
    revoke(&h, "task", "run-42").await;
    revoke(&h, "role", "deploy").await;
    let log = std::fs::read_to_string(h._dir.path().join("audit.jsonl")).unwrap();
    let recs: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 2, "{log}");
    let version = h.broker.config().version.clone();
    for (rec, key, task) in [(&recs[0], "task:ci:run-42", Some("run-42")), (&recs[1], "role:deploy", None)] {
        assert_eq!(rec["decision"], "revoke");
        assert_eq!(rec["ts"], T0 + 7);
        assert_eq!(rec["time"], ephemera::clock::rfc3339(T0 + 7));
        assert_eq!(rec["detail"], format!("revoked `{key}`"));
        assert_eq!(rec["task"].as_str(), task);
        assert_eq!(rec["policy_version"], "0123456789abcdef");
        assert_eq!(version, "0123456789abcdef");
        assert_eq!(rec["decision_id"].as_str().map(str::len), Some(16));
        assert_eq!(rec["request_id"].as_str().map(str::len), Some(16));
        assert!(rec.get("reason").is_none(), "a revocation has no refusal reason");
    }
    assert_ne!(recs[0]["decision_id"], recs[1]["decision_id"]);
}

#[tokio::test]
async fn revoke_takes_exactly_one_key_from_an_admin() {
    let h = harness().await;
    for form in [&[][..], &[("task", "a"), ("jti", "b")][..], &[("task", "")][..], &[("nothing", "x")][..]] {
        let (status, body, _) = post(&h, "/v1/revoke", Some(ADMIN), form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form:?}");
        assert!(body["error_description"].as_str().unwrap().starts_with("request_invalid: "), "{body}");
    }
    // no admin credential and no assertion: unauthorized, and nothing revoked
    let (status, _, www) =
        post(&h, "/v1/revoke", Some("wrong-credential-of-at-least-32-characters"), &[("task", "run-42")]).await;
    assert_eq!((status, www.as_deref()), (StatusCode::UNAUTHORIZED, Some("Bearer")));
    let token = sign(&h, &claims(&h, 300));
    assert!(active(&h, &token).await);
    assert_eq!(revoke(&h, "task", "run-42").await["revoked"], "task:ci:run-42");
    assert!(!active(&h, &token).await);
}

#[tokio::test]
async fn grants_are_admin_only() {
    let h = harness().await;
    let get = |bearer: Option<&str>| {
        let mut req = Request::get("/v1/grants");
        if let Some(b) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
        }
        h.router.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    assert_eq!(get(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let ok = get(Some(ADMIN)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&axum::body::to_bytes(ok.into_body(), 1 << 20).await.unwrap()).unwrap();
    assert_eq!(body, json!({"grants": []}));
}

/// `GET /v1/grants?role=R` lists that role's live grants only (a grant expiring this second is
/// live), oldest first.
#[tokio::test]
async fn grants_filter_by_role() {
    let h = harness().await;
    let grant = |id: &str, role: &str, at: i64| ephemera::state::Grant {
        id: id.into(),
        subject: "s".into(),
        task: "t".into(),
        role: role.into(),
        kind: "jwt".into(),
        issued_at: at,
        expires_at: T0 + 600,
        issuer: String::new(),
        provider: "ci".into(),
        audience: None,
        session: None,
    };
    let gone = ephemera::state::Grant { expires_at: T0 - 1, ..grant("g0", "deploy", T0 - 9) };
    let last_second = ephemera::state::Grant { expires_at: T0, ..grant("g4", "deploy", T0) };
    for g in [
        grant("g3", "deploy", T0 - 1),
        grant("g1", "release", T0 - 3),
        grant("g2", "deploy", T0 - 2),
        gone,
        last_second,
    ] {
        h.state.record_grant(&g, T0 - 10).await.unwrap();
    }
    let list = |query: &'static str| {
        let req = Request::get(format!("/v1/grants{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap();
        let router = h.router.clone();
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let body: Value =
                serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
            body["grants"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    // (g0 expired a second ago: gone; g4 expires this very second: still listed)
    assert_eq!(list("").await, ["g1", "g2", "g3", "g4"]);
    assert_eq!(list("?role=deploy").await, ["g2", "g3", "g4"]);
    assert_eq!(list("?role=release").await, ["g1"]);
    assert!(list("?role=nobody").await.is_empty());
}

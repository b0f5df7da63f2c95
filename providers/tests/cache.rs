//! The key cache against a real local HTTP server, with time driven through the `now` argument
//! (the broker's injected clock): nothing here sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ephemera_providers::cache::{CacheSettings, KeyCache, KeySource};
use ephemera_providers::resolve::SystemLookup;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the test issuer answers, and how often each path was asked for.
#[derive(Default)]
struct IssuerState {
    issuer: String,
    discovery_issuer: Option<String>,
    keys: Vec<Value>,
    max_age: Option<u64>,
    status: u16,
    redirect_to: Option<String>,
    huge: bool,
    /// Accept and read, then never answer (a hung issuer).
    hang: bool,
    counts: HashMap<String, usize>,
}

type Shared = Arc<Mutex<IssuerState>>;

fn ec_jwk(kid: &str) -> Value {
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let p = key.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..])})
}

async fn start_issuer() -> (String, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state: Shared = Arc::new(Mutex::new(IssuerState {
        issuer: base.clone(),
        status: 200,
        keys: vec![ec_jwk("k1")],
        ..Default::default()
    }));
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                if st.lock().unwrap().hang {
                    *st.lock().unwrap().counts.entry(path.clone()).or_default() += 1;
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    return;
                }
                let (status, headers, body) = {
                    let mut s = st.lock().unwrap();
                    *s.counts.entry(path.clone()).or_default() += 1;
                    if let Some(to) = &s.redirect_to {
                        (302, format!("Location: {to}\r\n"), String::new())
                    } else if s.status != 200 {
                        (s.status, String::new(), "{}".to_owned())
                    } else if path == "/.well-known/openid-configuration" {
                        let iss = s.discovery_issuer.clone().unwrap_or_else(|| s.issuer.clone());
                        (
                            200,
                            String::new(),
                            json!({"issuer": iss, "jwks_uri": format!("{}/jwks", s.issuer)}).to_string(),
                        )
                    } else if path == "/jwks" {
                        let cc = s.max_age.map(|m| format!("Cache-Control: max-age={m}\r\n")).unwrap_or_default();
                        let body = if s.huge {
                            format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(200 * 1024))
                        } else {
                            json!({"keys": s.keys}).to_string()
                        };
                        (200, cc, body)
                    } else {
                        (404, String::new(), String::new())
                    }
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (base, state)
}

fn settings() -> CacheSettings {
    CacheSettings {
        default_ttl: 300,
        min_ttl: 60,
        max_ttl: 3600,
        refresh_cooldown: 30,
        stale_window: 600,
        ..Default::default()
    }
}

fn cache(s: CacheSettings) -> KeyCache {
    let http = ephemera_providers::fetch::http_client(&s.limits, Arc::new(SystemLookup), false).unwrap();
    KeyCache::new(s, http)
}

fn count(st: &Shared, path: &str) -> usize {
    st.lock().unwrap().counts.get(path).copied().unwrap_or(0)
}

fn source(base: &str) -> KeySource {
    KeySource::Discovery { issuer: base.to_owned(), jwks_hosts: vec![] }
}

const T0: i64 = 1_800_000_000;

#[tokio::test]
async fn concurrent_cold_loads_fetch_once() {
    let (base, st) = start_issuer().await;
    let c = Arc::new(cache(settings()));
    let src = source(&base);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, src) = (c.clone(), src.clone());
        tasks.push(tokio::spawn(async move { c.keys_for("p", &src, Some("k1"), T0).await.map(|k| k.has_kid("k1")) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(true));
    }
    assert_eq!(count(&st, "/jwks"), 1);
    assert_eq!(count(&st, "/.well-known/openid-configuration"), 1);
}

#[tokio::test]
async fn unknown_kid_refreshes_at_most_once_per_cooldown() {
    let (base, st) = start_issuer().await;
    let c = cache(settings());
    let src = source(&base);
    assert!(c.keys_for("p", &src, Some("k1"), T0).await.is_ok());
    assert_eq!(count(&st, "/jwks"), 1);
    // within the cooldown: a flood of unknown kids causes no fetch
    for i in 0..1000 {
        let keys = c.keys_for("p", &src, Some(&format!("random-{i}")), T0 + 5).await.unwrap();
        assert!(!keys.has_kid(&format!("random-{i}")));
    }
    assert_eq!(count(&st, "/jwks"), 1);
    // the issuer rotates in k2; after the cooldown the first k2 token triggers exactly one refresh
    st.lock().unwrap().keys.push(ec_jwk("k2"));
    assert!(!c.keys_for("p", &src, Some("k2"), T0 + 29).await.unwrap().has_kid("k2"));
    assert_eq!(count(&st, "/jwks"), 1);
    assert!(c.keys_for("p", &src, Some("k2"), T0 + 30).await.unwrap().has_kid("k2"));
    assert_eq!(count(&st, "/jwks"), 2);
    assert!(c.keys_for("p", &src, Some("k2"), T0 + 31).await.unwrap().has_kid("k2"));
    assert_eq!(count(&st, "/jwks"), 2);
}

#[tokio::test]
async fn max_age_is_honoured_within_bounds() {
    let (base, st) = start_issuer().await;
    st.lock().unwrap().max_age = Some(120);
    let c = cache(settings());
    let src = source(&base);
    c.keys_for("p", &src, Some("k1"), T0).await.unwrap();
    c.keys_for("p", &src, Some("k1"), T0 + 119).await.unwrap();
    assert_eq!(count(&st, "/jwks"), 1);
    c.keys_for("p", &src, Some("k1"), T0 + 120).await.unwrap();
    assert_eq!(count(&st, "/jwks"), 2);
    // a max-age below min_ttl (60) is raised to it
    st.lock().unwrap().max_age = Some(1);
    c.keys_for("p", &src, Some("k1"), T0 + 240).await.unwrap();
    assert_eq!(count(&st, "/jwks"), 3);
    c.keys_for("p", &src, Some("k1"), T0 + 299).await.unwrap();
    assert_eq!(count(&st, "/jwks"), 3);
    c.keys_for("p", &src, Some("k1"), T0 + 300).await.unwrap();
    assert_eq!(count(&st, "/jwks"), 4);
}

#[tokio::test]
async fn outage_serves_stale_keys_then_fails_closed_then_recovers() {
    let (base, st) = start_issuer().await;
    let c = cache(settings());
    let src = source(&base);
    c.keys_for("p", &src, Some("k1"), T0).await.unwrap();
    st.lock().unwrap().status = 500;
    // past freshness (300 s), refresh fails: the old keys keep serving within the stale window
    assert!(c.keys_for("p", &src, Some("k1"), T0 + 301).await.unwrap().has_kid("k1"));
    assert!(c.keys_for("p", &src, Some("k1"), T0 + 899).await.unwrap().has_kid("k1"));
    // past ttl + stale window: fail closed
    let err = c.keys_for("p", &src, Some("k1"), T0 + 900).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    // an unknown kid during the outage does not fetch again inside the cooldown
    let before = count(&st, "/.well-known/openid-configuration");
    let _ = c.keys_for("p", &src, Some("other"), T0 + 901).await;
    assert_eq!(count(&st, "/.well-known/openid-configuration"), before);
    // the issuer comes back: recovery after the cooldown, no restart
    st.lock().unwrap().status = 200;
    assert!(c.keys_for("p", &src, Some("k1"), T0 + 931).await.unwrap().has_kid("k1"));
}

#[tokio::test]
async fn cold_start_with_issuer_down_is_unavailable() {
    let (base, st) = start_issuer().await;
    st.lock().unwrap().status = 503;
    let c = cache(settings());
    let err = c.keys_for("p", &source(&base), Some("k1"), T0).await.unwrap_err();
    assert!(err.is_unavailable());
    assert_eq!(err.slug(), "keys_unavailable");
}

#[tokio::test]
async fn lying_discovery_redirects_and_huge_bodies_are_refused() {
    // discovery names another issuer
    let (base, st) = start_issuer().await;
    st.lock().unwrap().discovery_issuer = Some(format!("{base}/"));
    let err = cache(settings()).keys_for("p", &source(&base), Some("k1"), T0).await.unwrap_err();
    assert!(err.to_string().contains("discovery_issuer_mismatch"), "{err}");
    assert_eq!(count(&st, "/jwks"), 0);

    // a redirect is never followed: the target (a second server) is never contacted
    let (canary, canary_st) = start_issuer().await;
    let (base, st) = start_issuer().await;
    st.lock().unwrap().redirect_to = Some(format!("{canary}/.well-known/openid-configuration"));
    let err = cache(settings()).keys_for("p", &source(&base), Some("k1"), T0).await.unwrap_err();
    assert!(err.to_string().contains("redirect"), "{err}");
    assert!(canary_st.lock().unwrap().counts.is_empty());

    // a JWKS over the cap is refused
    let (base, st) = start_issuer().await;
    st.lock().unwrap().huge = true;
    let err = cache(settings()).keys_for("p", &source(&base), Some("k1"), T0).await.unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");

    // twin: the same server, honest, works
    let (base, _) = start_issuer().await;
    assert!(cache(settings()).keys_for("p", &source(&base), Some("k1"), T0).await.is_ok());
}

/// Fault review test 4b: once the keys are due by age, a hung issuer made every request of its
/// provider wait the whole fetch timeout. Now the refresh runs on its own and the request
/// verifies with the keys at hand (within the stale window) after a short wait; the refresh is
/// still single-flight. (The bound below only tells a short wait from the 60 s fetch timeout.)
#[tokio::test]
async fn a_hung_issuer_does_not_hold_up_requests_whose_keys_are_at_hand() {
    let (base, st) = start_issuer().await;
    let mut s = settings();
    s.limits.total_timeout = std::time::Duration::from_secs(60);
    let c = cache(s);
    let src = source(&base);
    c.keys_for("p", &src, Some("k1"), T0).await.unwrap();
    st.lock().unwrap().hang = true;
    for now in [T0 + 301, T0 + 302, T0 + 340] {
        let keys = tokio::time::timeout(std::time::Duration::from_secs(20), c.keys_for("p", &src, Some("k1"), now))
            .await
            .expect("the request waited for the hung fetch")
            .unwrap();
        assert!(keys.has_kid("k1"));
    }
    // one fetch is hanging; the later requests (inside the cooldown) started none
    assert_eq!(count(&st, "/.well-known/openid-configuration"), 2);
    // a kid the keys at hand lack cannot be verified: after a short wait for the issuer it is
    // keys_unavailable (retryable), not held for the fetch timeout
    let unknown = tokio::time::timeout(std::time::Duration::from_secs(20), c.keys_for("p", &src, Some("k2"), T0 + 400))
        .await
        .expect("the request waited for the hung fetch");
    assert_eq!(unknown.unwrap_err().slug(), "keys_unavailable");
    // and past the stale window (600 s) the provider fails closed, promptly
    let past = tokio::time::timeout(std::time::Duration::from_secs(20), c.keys_for("p", &src, Some("k1"), T0 + 1000))
        .await
        .expect("the request waited for the hung fetch");
    assert_eq!(past.unwrap_err().slug(), "keys_unavailable");
}

/// Fault review test 4a: an unknown kid while the issuer could not be reached got `unknown_key`, a
/// refusal that looks permanent. It is `keys_unavailable` (retryable) now; the twin: with the
/// issuer healthy, an unknown kid gets the keys (which lack it: the caller says `unknown_key`).
#[tokio::test]
async fn an_unknown_kid_after_a_failed_refresh_is_unavailable_not_unknown() {
    let (base, st) = start_issuer().await;
    let c = cache(settings());
    let src = source(&base);
    c.keys_for("p", &src, Some("k1"), T0).await.unwrap();
    assert!(!c.keys_for("p", &src, Some("k9"), T0 + 60).await.unwrap().has_kid("k9"));
    st.lock().unwrap().status = 500;
    let err = c.keys_for("p", &src, Some("k9"), T0 + 120).await.unwrap_err();
    assert_eq!(err.slug(), "keys_unavailable", "{err}");
    // inside the cooldown, still unavailable (no fetch), and a known kid is served as before
    assert_eq!(c.keys_for("p", &src, Some("k9"), T0 + 121).await.unwrap_err().slug(), "keys_unavailable");
    assert!(c.keys_for("p", &src, Some("k1"), T0 + 121).await.unwrap().has_kid("k1"));
}

//! Real identity-provider tokens from the shared corpus through [`verify_token`] with an injected
//! clock, and claim/clock edge cases on tokens minted here with a fresh ES256 key. The corpus is
//! read as it is from `../../shared/corpus` (or `$EPHEMERA_CORPUS`); with `CI=true` a missing
//! corpus fails the tests instead of skipping them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ephemera_providers::{Algorithm, KeySet, TokenRules, VerifiedToken, VerifyError, verify_token};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// corpus access
// ---------------------------------------------------------------------------------------------

/// The shared corpus: `../../shared/corpus` from this crate, else `$EPHEMERA_CORPUS`. With
/// `CI=true` a missing corpus fails the tests (a skipped suite would look green and prove
/// nothing); elsewhere the corpus tests are skipped with a warning, as `scripts/test` announces.
fn corpus_dir() -> Option<PathBuf> {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if beside.join("MANIFEST.json").is_file() {
        return Some(beside);
    }
    let from_env = std::env::var_os("EPHEMERA_CORPUS").map(PathBuf::from);
    if let Some(dir) = from_env.as_ref().filter(|d| d.join("MANIFEST.json").is_file()) {
        return Some(dir.clone());
    }
    let msg = format!("test corpus not found at {} nor at EPHEMERA_CORPUS={:?}", beside.display(), from_env);
    assert!(
        !std::env::var("CI").is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false")),
        "{msg}"
    );
    eprintln!("warning: {msg}; skipping this corpus test");
    None
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn slug<T>(r: &Result<T, VerifyError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.slug(),
    }
}

const TOKEN_DIRS: &[&str] = &["other_oidc/tokens", "gcp_identity/tokens", "gitlab_ci_oidc/tokens"];

/// Two days: Azure AD v2 id_tokens live 24 h 5 min, so the 24 h defaults would refuse them.
const GENEROUS: u64 = 2 * 24 * 3600;

/// One corpus token with what MANIFEST.json says about it.
struct CorpusToken {
    file: String,
    token: String,
    keys: KeySet,
    iss: String,
    auds: Vec<String>,
    sub: String,
    iat: i64,
    exp: i64,
    verify_at: i64,
}

/// Every token in the token folders with its MANIFEST.json entry; `None` when the corpus is
/// absent outside CI.
fn corpus_tokens() -> Option<Vec<CorpusToken>> {
    let dir = corpus_dir()?;
    let manifest: Value = serde_json::from_slice(&read(&dir.join("MANIFEST.json"))).expect("MANIFEST.json");
    let entries = manifest.as_array().expect("manifest is an array");
    let mut out = Vec::new();
    for entry in entries {
        let file = entry["file"].as_str().expect("file");
        if !TOKEN_DIRS.iter().any(|d| file.starts_with(&format!("{d}/"))) {
            continue;
        }
        let s = |name: &str| entry[name].as_str().unwrap_or_else(|| panic!("{file}: {name}")).to_owned();
        let n = |name: &str| entry[name].as_i64().unwrap_or_else(|| panic!("{file}: {name}"));
        // `keys` is a path, sometimes followed by a remark: "path (kid ...) == ..."
        let keys_field = s("keys");
        let keys_path = keys_field.split_whitespace().next().expect("keys path");
        let keys = KeySet::from_json(&read(&dir.join(keys_path))).expect("corpus JWKS");
        let auds = match &entry["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|v| v.as_str().expect("aud").to_owned()).collect(),
            other => panic!("{file}: aud {other}"),
        };
        let token = String::from_utf8(read(&dir.join(file))).expect("utf-8").trim().to_owned();
        out.push(CorpusToken {
            file: file.to_owned(),
            token,
            keys,
            iss: s("iss"),
            auds,
            sub: s("sub"),
            iat: n("iat"),
            exp: n("exp"),
            verify_at: n("verify_at"),
        });
    }
    // every token file on disk has a manifest entry: nothing is silently left out
    let mut on_disk = Vec::new();
    for d in TOKEN_DIRS {
        for e in std::fs::read_dir(dir.join(d)).expect("token dir") {
            on_disk.push(format!("{d}/{}", e.expect("entry").file_name().to_string_lossy()));
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = out.iter().map(|t| t.file.clone()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "token files vs MANIFEST.json entries");
    Some(out)
}

fn rules_for(t: &CorpusToken, aud: &str) -> TokenRules {
    let mut rules = TokenRules::new(t.iss.clone(), vec![aud.to_owned()]);
    rules.max_lifetime = GENEROUS;
    rules.max_age = GENEROUS;
    // A token whose `aud` names several parties needs the provider's explicit opt-in (the
    // Keycloak access token of the corpus); `multi_audience_tokens_need_the_opt_in` shows it.
    rules.allow_multiple_audiences = t.auds.len() > 1;
    rules
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// corpus tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn corpus_tokens_verify_at_their_verify_at_time() {
    let Some(tokens) = corpus_tokens() else {
        return;
    };
    assert_eq!(tokens.len(), 12);
    for t in &tokens {
        // every key the real issuers published passes the JWKS rules
        assert!(t.keys.ignored().is_empty(), "{}: {:?}", t.file, t.keys.ignored());
        for aud in &t.auds {
            let v: VerifiedToken = verify_token(&t.token, &rules_for(t, aud), &t.keys, t.verify_at)
                .unwrap_or_else(|e| panic!("{} at verify_at with aud {aud}: {} ({e})", t.file, e.slug()));
            assert_eq!(v.issuer(), t.iss, "{}", t.file);
            assert_eq!(v.audience(), aud, "{}", t.file);
            assert_eq!(v.subject(), t.sub, "{}", t.file);
            assert_eq!((v.issued_at(), v.expires_at()), (t.iat, t.exp), "{}", t.file);
            assert_eq!(v.alg(), Algorithm::RS256, "{}", t.file);
        }
        println!("{}: verified at {} (lifetime {} s)", t.file, t.verify_at, t.exp - t.iat);
    }
}

/// `TokenRules::new` allows tokens that live at most 24 h, with a single audience. The real Azure
/// AD v2 id_token lives 24 h 5 min (86,700 s), so under the defaults it is refused
/// `lifetime_too_long`; the Keycloak access token names two audiences and is refused
/// `audience_mismatch`; every other corpus token fits. A provider for either must say so.
#[test]
fn default_rules_refuse_only_the_azure_v2_and_multi_audience_tokens() {
    let Some(tokens) = corpus_tokens() else {
        return;
    };
    for t in tokens {
        let defaults = TokenRules::new(t.iss.clone(), vec![t.auds[0].clone()]);
        let got = slug(&verify_token(&t.token, &defaults, &t.keys, t.verify_at));
        if t.file.contains("login_microsoftonline_com") {
            assert_eq!(t.exp - t.iat, 86_700);
            assert_eq!(got, "lifetime_too_long", "{}", t.file);
            assert_eq!(slug(&verify_token(&t.token, &rules_for(&t, &t.auds[0]), &t.keys, t.verify_at)), "ok");
        } else if t.auds.len() > 1 {
            assert_eq!(got, "audience_mismatch", "{}", t.file);
        } else {
            assert_eq!(got, "ok", "{}", t.file);
        }
    }
}

#[test]
fn corpus_tokens_are_expired_now() {
    let now = now_unix();
    let Some(tokens) = corpus_tokens() else {
        return;
    };
    for t in tokens {
        let rules = rules_for(&t, &t.auds[0]);
        // twin: accepted at verify_at
        assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, t.verify_at)), "ok", "{}", t.file);
        assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, now)), "token_expired", "{}", t.file);
        // one second past exp + leeway
        assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, t.exp + 61)), "token_expired", "{}", t.file);
        assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, t.exp + 60)), "ok", "{}", t.file);
    }
}

#[test]
fn corpus_tokens_refuse_another_audience() {
    let Some(tokens) = corpus_tokens() else {
        return;
    };
    for t in tokens {
        let good = rules_for(&t, &t.auds[0]);
        assert_eq!(slug(&verify_token(&t.token, &good, &t.keys, t.verify_at)), "ok", "{}", t.file);
        let other = rules_for(&t, "https://broker.ephemera.test");
        assert_eq!(slug(&verify_token(&t.token, &other, &t.keys, t.verify_at)), "audience_mismatch", "{}", t.file);
        // a prefix or suffix of the real audience is another audience
        let trailing = rules_for(&t, &format!("{}/", t.auds[0]));
        assert_eq!(slug(&verify_token(&t.token, &trailing, &t.keys, t.verify_at)), "audience_mismatch", "{}", t.file);
    }
}

#[test]
fn corpus_tokens_with_tampered_payload_are_refused() {
    let Some(tokens) = corpus_tokens() else {
        return;
    };
    for t in tokens {
        let rules = rules_for(&t, &t.auds[0]);
        assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, t.verify_at)), "ok", "{}", t.file);
        let parts: Vec<&str> = t.token.split('.').collect();
        assert_eq!(parts.len(), 3);

        // one base64url character flipped in the middle of the payload segment (still valid
        // base64url: same alphabet, not the last character, so no stray trailing bits)
        let p = parts[1];
        let i = p.len() / 2;
        let flipped_char = if &p[i..=i] == "A" { "B" } else { "A" };
        let flipped = format!("{}.{}{}{}.{}", parts[0], &p[..i], flipped_char, &p[i + 1..], parts[2]);
        let got = slug(&verify_token(&flipped, &rules, &t.keys, t.verify_at));
        assert!(got == "signature_invalid" || got == "malformed_token", "{}: flipped payload gave {got}", t.file);
        println!("{}: payload char {i} flipped -> {got}", t.file);

        // a well-formed edit of a claim (sub) keeps the JSON valid: signature_invalid exactly
        let mut claims: Value = serde_json::from_slice(&B64.decode(p).expect("payload b64")).expect("payload json");
        claims["sub"] = json!(format!("{}x", t.sub));
        let edited = format!("{}.{}.{}", parts[0], B64.encode(claims.to_string()), parts[2]);
        assert_eq!(slug(&verify_token(&edited, &rules, &t.keys, t.verify_at)), "signature_invalid", "{}", t.file);
    }
}

#[test]
fn corpus_tokens_are_bound_to_their_issuer_keys() {
    let Some(tokens) = corpus_tokens() else {
        return;
    };
    // twin: each token verifies with its own issuer's keys (checked in the test above); with
    // another issuer's key set its kid is unknown
    let google = tokens.iter().find(|t| t.file.starts_with("gcp_identity/")).expect("google token");
    for t in tokens.iter().filter(|t| !t.file.starts_with("gcp_identity/")) {
        let rules = rules_for(t, &t.auds[0]);
        assert_eq!(slug(&verify_token(&t.token, &rules, &google.keys, t.verify_at)), "unknown_key", "{}", t.file);
    }
    // and a token for another issuer never gets as far as the keys
    let t = &tokens[0];
    let mut rules = rules_for(t, &t.auds[0]);
    rules.issuer = "https://attacker.test".to_owned();
    assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, t.verify_at)), "issuer_not_trusted");
}

// ---------------------------------------------------------------------------------------------
// minted tokens: clock edges and claim types
// ---------------------------------------------------------------------------------------------

const ISS: &str = "https://issuer.ephemera.test";
const AUD: &str = "ephemera-broker";
const KID: &str = "test-es256";
const NOW: i64 = 1_750_000_000;
const MAX_LIFETIME: u64 = 3600;
const MAX_AGE: u64 = 600;

/// An issuer with a fresh ES256 key.
struct TestIssuer {
    key: EncodingKey,
    keys: KeySet,
}

impl TestIssuer {
    fn new() -> Self {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
        let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
        let point = kp.public_key().as_ref();
        assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": KID, "use": "sig", "alg": "ES256",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
        }]});
        let keys = KeySet::from_json(jwks.to_string().as_bytes()).expect("jwks");
        assert_eq!(keys.keys().len(), 1);
        TestIssuer { key: EncodingKey::from_ec_der(pkcs8.as_ref()), keys }
    }

    /// Signs claims given as a JSON value, through `jsonwebtoken::encode`.
    fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("encode")
    }

    /// Signs a payload given as raw JSON text (for what a `Value` cannot hold: duplicate
    /// members, 1e400), with `jsonwebtoken::crypto::sign` over `header.payload`.
    fn mint_raw(&self, header_json: &str, payload_json: &str) -> String {
        let input = format!("{}.{}", B64.encode(header_json), B64.encode(payload_json));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.key, Algorithm::ES256).expect("sign");
        format!("{input}.{sig}")
    }

    fn verify(&self, token: &str, now: i64) -> &'static str {
        slug(&verify_token(token, &rules(), &self.keys, now))
    }

    /// Verdict for the base claims with `overrides` applied (JSON `null` removes a claim).
    fn verdict(&self, overrides: Value) -> &'static str {
        let mut c = base_claims();
        for (k, v) in overrides.as_object().expect("overrides object") {
            if v.is_null() {
                c.as_object_mut().expect("claims").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        self.verify(&self.mint(&c), NOW)
    }

    /// Verdict for the base claims with one member replaced by raw JSON text.
    fn verdict_raw(&self, name: &str, raw_value: &str) -> &'static str {
        self.verify(&self.mint_raw(&header_json(), &raw_payload(name, raw_value)), NOW)
    }
}

fn header_json() -> String {
    format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{KID}"}}"#)
}

fn rules() -> TokenRules {
    let mut r = TokenRules::new(ISS, vec![AUD.to_owned()]);
    r.leeway = 60;
    r.max_lifetime = MAX_LIFETIME;
    r.max_age = MAX_AGE;
    r
}

fn base_claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "repo:acme/app:ref:refs/heads/main",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
        "jti": "jti-1",
    })
}

/// The base claims as JSON text with `name` set to `raw_value` verbatim (appended if absent).
fn raw_payload(name: &str, raw_value: &str) -> String {
    let base = base_claims();
    let mut members: Vec<String> = Vec::new();
    let mut replaced = false;
    for (k, v) in base.as_object().expect("claims") {
        if k == name {
            members.push(format!("{}:{raw_value}", json!(k)));
            replaced = true;
        } else {
            members.push(format!("{}:{v}", json!(k)));
        }
    }
    if !replaced {
        members.push(format!("{}:{raw_value}", json!(name)));
    }
    format!("{{{}}}", members.join(","))
}

#[test]
fn minted_base_token_verifies() {
    let issuer = TestIssuer::new();
    let v = verify_token(&issuer.mint(&base_claims()), &rules(), &issuer.keys, NOW).expect("base token");
    assert_eq!((v.issuer(), v.audience()), (ISS, AUD));
    assert_eq!(v.jti(), Some("jti-1"));
    assert_eq!(v.kid(), Some(KID));
    // the hand-built payload path produces the same verdict as encode
    assert_eq!(issuer.verify(&issuer.mint_raw(&header_json(), &raw_payload("sub", r#""x""#)), NOW), "ok");
    // a token signed by another key (same kid) is refused
    let other = TestIssuer::new();
    assert_eq!(issuer.verify(&other.mint(&base_claims()), NOW), "signature_invalid");
}

#[test]
fn clock_edges_with_60s_leeway() {
    let i = TestIssuer::new();
    // exp: leeway 60 -> now-59 and now-60 accepted, now-61 refused
    assert_eq!(i.verdict(json!({"iat": NOW - 100, "nbf": NOW - 100, "exp": NOW - 59})), "ok");
    assert_eq!(i.verdict(json!({"iat": NOW - 100, "nbf": NOW - 100, "exp": NOW - 60})), "ok");
    assert_eq!(i.verdict(json!({"iat": NOW - 100, "nbf": NOW - 100, "exp": NOW - 61})), "token_expired");
    // nbf: now+60 accepted, now+61 refused
    assert_eq!(i.verdict(json!({"nbf": NOW + 60})), "ok");
    assert_eq!(i.verdict(json!({"nbf": NOW + 61})), "token_not_yet_valid");
    // iat in the future: now+60 accepted, now+61 and now+120 refused
    assert_eq!(i.verdict(json!({"iat": NOW + 60, "nbf": null})), "ok");
    assert_eq!(i.verdict(json!({"iat": NOW + 61, "nbf": null})), "iat_in_future");
    assert_eq!(i.verdict(json!({"iat": NOW + 120, "nbf": null})), "iat_in_future");
    // age: now - iat may reach max_age + leeway (660 s), not more
    let age_ok = NOW - (MAX_AGE as i64 + 60);
    assert_eq!(i.verdict(json!({"iat": age_ok, "nbf": age_ok})), "ok");
    assert_eq!(i.verdict(json!({"iat": age_ok - 1, "nbf": age_ok - 1})), "token_too_old");
    // lifetime: exp - iat may reach max_lifetime (no leeway), not more
    let iat = NOW - 10;
    assert_eq!(i.verdict(json!({"iat": iat, "exp": iat + MAX_LIFETIME as i64})), "ok");
    assert_eq!(i.verdict(json!({"iat": iat, "exp": iat + MAX_LIFETIME as i64 + 1})), "lifetime_too_long");
    // exp and iat are required, nbf is not
    assert_eq!(i.verdict(json!({"nbf": null})), "ok");
    assert_eq!(i.verdict(json!({"exp": null})), "exp_missing");
    assert_eq!(i.verdict(json!({"iat": null})), "claim_missing");
}

/// ATTACKS.md case 9. Each refused shape next to its well-typed twin.
#[test]
fn claim_type_confusion_is_refused() {
    let i = TestIssuer::new();
    let exp_ok = (NOW + 300).to_string();
    // twin for every exp/nbf case: the same value as a JSON integer
    assert_eq!(i.verdict_raw("exp", &exp_ok), "ok");
    assert_eq!(i.verdict_raw("nbf", &(NOW - 10).to_string()), "ok");
    // NumericDate as a string
    assert_eq!(i.verdict_raw("exp", r#""9999999999""#), "claim_type_invalid");
    assert_eq!(i.verdict_raw("nbf", r#""99999999999""#), "claim_type_invalid");
    assert_eq!(i.verdict_raw("iat", &format!("\"{}\"", NOW - 10)), "claim_type_invalid");
    // negative
    assert_eq!(i.verdict_raw("exp", "-1"), "claim_type_invalid");
    // past year 9999 (MAX_NUMERIC_DATE) -- an integer, but out of range
    assert_eq!(i.verdict_raw("exp", "253402300800"), "claim_type_invalid");
    // 1e400 overflows f64: the strict JSON parser refuses the whole payload before any claim is
    // read, so the verdict is malformed_token (not claim_type_invalid)
    assert_eq!(i.verdict_raw("exp", "1e400"), "malformed_token");
    // a finite float in exponent form is still not an integer
    assert_eq!(i.verdict_raw("exp", "1.7500003e9"), "claim_type_invalid");
    // fractional NumericDate (now + 0.6 s): refused, neither rounded nor truncated
    assert_eq!(i.verdict_raw("exp", &format!("{}.6", NOW)), "claim_type_invalid");
    assert_eq!(i.verdict_raw("exp", &format!("{}.0", NOW + 300)), "claim_type_invalid");
    assert_eq!(i.verdict_raw("iat", &format!("{}.6", NOW - 10)), "claim_type_invalid");
    // iss as an array that contains the configured issuer; twin: the string
    assert_eq!(i.verdict(json!({"iss": ISS})), "ok");
    assert_eq!(i.verdict(json!({"iss": ["https://evil.test", ISS]})), "claim_type_invalid");
    assert_eq!(i.verdict(json!({"iss": [ISS]})), "claim_type_invalid");
    // aud of the wrong type
    assert_eq!(i.verdict(json!({"aud": 123})), "claim_type_invalid");
    assert_eq!(i.verdict(json!({"aud": {"x": 1}})), "claim_type_invalid");
    assert_eq!(i.verdict(json!({"aud": [AUD, 7]})), "claim_type_invalid");
    assert_eq!(i.verdict(json!({"aud": []})), "claim_type_invalid");
    assert_eq!(i.verdict(json!({"aud": null})), "claim_missing");
    // sub of the wrong type; twin: a string
    assert_eq!(i.verdict(json!({"sub": "42"})), "ok");
    assert_eq!(i.verdict(json!({"sub": 42})), "claim_type_invalid");
    assert_eq!(i.verdict_raw("sub", "null"), "claim_type_invalid");
    assert_eq!(i.verdict(json!({"sub": null})), "claim_missing");
    // jti is optional, but typed when present
    assert_eq!(i.verdict(json!({"jti": null})), "ok");
    assert_eq!(i.verdict(json!({"jti": 7})), "claim_type_invalid");
}

/// `aud` as a string and as a one-element array are both enforced, both ways.
#[test]
fn audience_string_and_array_are_both_enforced() {
    let i = TestIssuer::new();
    assert_eq!(i.verdict(json!({"aud": AUD})), "ok");
    assert_eq!(i.verdict(json!({"aud": [AUD]})), "ok");
    // ATTACKS.md case 17: a token also meant for another party is refused by default
    assert_eq!(i.verdict(json!({"aud": ["other", AUD]})), "audience_mismatch");
    assert_eq!(i.verdict(json!({"aud": [AUD, AUD]})), "audience_mismatch");
    assert_eq!(i.verdict(json!({"aud": "other"})), "audience_mismatch");
    assert_eq!(i.verdict(json!({"aud": ["other"]})), "audience_mismatch");
    assert_eq!(i.verdict(json!({"aud": format!("{AUD}/")})), "audience_mismatch");
    assert_eq!(i.verdict(json!({"aud": [AUD.to_uppercase()]})), "audience_mismatch");
}

/// A corpus token whose `aud` is a list verifies only with `allow_multiple_audiences`.
#[test]
fn multi_audience_tokens_need_the_opt_in() {
    let Some(tokens) = corpus_tokens() else { return };
    let multi: Vec<_> = tokens.iter().filter(|t| t.auds.len() > 1).collect();
    assert!(!multi.is_empty(), "the corpus has a multi-audience token (Keycloak access token)");
    for t in multi {
        let mut rules = rules_for(t, &t.auds[0]);
        assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, t.verify_at)), "ok", "{}", t.file);
        rules.allow_multiple_audiences = false;
        assert_eq!(slug(&verify_token(&t.token, &rules, &t.keys, t.verify_at)), "audience_mismatch", "{}", t.file);
    }
}

/// ATTACKS.md case 8: duplicate member names, in the claims and in the header.
#[test]
fn duplicate_members_are_refused() {
    let i = TestIssuer::new();
    let head = header_json();
    let tail = format!(r#""iss":"{ISS}","aud":"{AUD}","iat":{},"exp":{}"#, NOW - 10, NOW + 300);
    // twin: one sub
    assert_eq!(i.verify(&i.mint_raw(&head, &format!(r#"{{"sub":"a",{tail}}}"#)), NOW), "ok");
    assert_eq!(i.verify(&i.mint_raw(&head, &format!(r#"{{"sub":"a","sub":"b",{tail}}}"#)), NOW), "duplicate_member");
    assert_eq!(i.verify(&i.mint_raw(&head, &format!(r#"{{"sub":"a",{tail},"exp":1}}"#)), NOW), "duplicate_member");
    // nested duplicates count too; the twin with distinct names verifies
    let nested_ok = format!(r#"{{"sub":"a",{tail},"ctx":{{"repository":"acme/app","repo":"x"}}}}"#);
    let nested_dup = format!(r#"{{"sub":"a",{tail},"ctx":{{"repository":"acme/app","repository":"evil/app"}}}}"#);
    assert_eq!(i.verify(&i.mint_raw(&head, &nested_ok), NOW), "ok");
    assert_eq!(i.verify(&i.mint_raw(&head, &nested_dup), NOW), "duplicate_member");
    // header: {"alg":"ES256","alg":"none"}
    let payload = format!(r#"{{"sub":"a",{tail}}}"#);
    let dup_alg = format!(r#"{{"alg":"ES256","alg":"none","kid":"{KID}"}}"#);
    assert_eq!(i.verify(&i.mint_raw(&dup_alg, &payload), NOW), "duplicate_member");
}

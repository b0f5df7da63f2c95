//! Third-party JOSE and signature vectors (Project Wycheproof, RFC 7515, RFC 7520, RFC 7797,
//! RFC 8037) run through the verifier the broker uses: [`verify_jws`] for everything that is a
//! JWS, and `jsonwebtoken::crypto::verify` with a key built by [`KeySet`] for the raw
//! (key, msg, sig) signature vectors. Every JSON file is loaded as it is from the shared corpus
//! (`../../shared/corpus` from this crate, or `$EPHEMERA_CORPUS`); with `CI=true` a missing
//! corpus fails the tests instead of skipping them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ephemera_providers::verify::VerifiedJws;
use ephemera_providers::{Algorithm, KeySet, VerifyError, verify_jws};
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// corpus access
// ---------------------------------------------------------------------------------------------

/// The shared corpus: `../../shared/corpus` from this crate, else `$EPHEMERA_CORPUS`. With
/// `CI=true` a missing corpus fails the tests (a skipped vector suite would look green and prove
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

fn load_json(corpus: &Path, rel: &str) -> Value {
    let path = corpus.join(rel);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// Every algorithm the broker can enable (the providers' own list). HS*, `none` and ES512 cannot
/// be enabled; `ENABLED_NAMES` spells the same list independently.
const ALL_ENABLED: &[Algorithm] = ephemera_providers::jose::ASYMMETRIC_ALGORITHMS;
const ENABLED_NAMES: &[&str] = &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// Size limit for the vector runs: large enough that size is never the reason for a verdict.
const MAX_BYTES: usize = 1 << 20;

fn is_enabled(alg: &str) -> bool {
    ENABLED_NAMES.contains(&alg)
}

fn slug(r: &Result<VerifiedJws, VerifyError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.slug(),
    }
}

/// A key set from a JWK or a JWKS value, as an issuer would publish it.
fn keyset(key: &Value) -> KeySet {
    let doc = if key.get("keys").is_some() { key.clone() } else { json!({ "keys": [key] }) };
    KeySet::from_json(doc.to_string().as_bytes()).expect("key set document shape")
}

/// A JWK without its private members (the corpus gives private keys; a JWKS has public ones).
fn public_jwk(key: &Value) -> Value {
    let mut k = key.as_object().expect("jwk object").clone();
    for m in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
        k.remove(m);
    }
    Value::Object(k)
}

/// `alg` of a compact token's header, read leniently (tolerating stray characters), only to
/// decide what a vector expects; the verifier under test reads it strictly.
fn header_alg(token: &str) -> Option<String> {
    let lenient = GeneralPurpose::new(
        &URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let seg: String =
        token.split('.').next()?.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    let header: Value = serde_json::from_slice(&lenient.decode(seg).ok()?).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn str_of<'v>(v: &'v Value, name: &str) -> &'v str {
    v.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("member `{name}` missing or not a string"))
}

// ---------------------------------------------------------------------------------------------
// Wycheproof JWS / JWK files through verify_jws
// ---------------------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Tally {
    total: usize,
    valid: usize,
    invalid: usize,
    acceptable: usize,
    accepted: usize,
    rejected: usize,
    not_enabled: usize,
    documented: usize,
    acceptable_outcomes: Vec<String>,
    slugs: BTreeMap<&'static str, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn summary(&self, file: &str) -> String {
        format!(
            "{file}: {} tests ({} valid, {} invalid, {} acceptable) -> accepted {}, rejected {} \
             (valid but alg not enabled: {}, documented deviations: {}); acceptable: {:?}; reject slugs {:?}",
            self.total,
            self.valid,
            self.invalid,
            self.acceptable,
            self.accepted,
            self.rejected,
            self.not_enabled,
            self.documented,
            self.acceptable_outcomes,
            self.slugs
        )
    }
}

/// Wycheproof tcIds of `json_web_signature_test.json` (and of the attack subset, which copies its
/// tests verbatim) where our verdict deliberately differs from Wycheproof's "valid".
///
/// tc372 `InvalidCharacterInsertedInHeader` and tc373 `InvalidCharacterInsertedInPayload` are
/// tc357's HS256 token with a `?` inserted into the header or payload segment; the MAC is
/// tc357's, computed without the `?`. Marking them valid means expecting a decoder that skips
/// characters outside the alphabet. The broker decodes strictly (RFC 7515 §2 and
/// §7.1: segments are unpadded base64url, nothing else): a character outside the alphabet is a
/// malformed token. The header is decoded first, so tc372 (the `?` in the header) is refused
/// `malformed_token`; the algorithm is judged before the payload is decoded, so tc373 (the `?`
/// in the payload) is refused `alg_not_allowed` (HS256 is never enabled) and would be refused
/// `malformed_token` under any enabled algorithm. ATTACKS.md case 7 asks to record this choice;
/// `wycheproof_tc372_tc373_are_refused_as_malformed` pins it.
///
/// tc346 and tc350 (RFC 7520 Figure 20, a PS384 signature) are checked against a group key whose
/// JWK says `"alg": "PS256"`. The signature is mathematically valid with that RSA key, but the
/// key's publisher restricted it to PS256 (RFC 7517 §4.4), and `KeySet::select` honours a JWK's
/// `alg`: the verdict is `key_alg_mismatch`. The same signature with the RFC's own key (no `alg`)
/// verifies in `rfc7520_cookbook_jws`, and `wycheproof_pinned_jwk_alg_is_honoured` shows both.
const JWS_DOCUMENTED: &[(u64, &str)] =
    &[(346, "key_alg_mismatch"), (350, "key_alg_mismatch"), (372, "malformed_token"), (373, "alg_not_allowed")];

fn run_wycheproof_jws(corpus: &Path, rel: &str, documented: &[(u64, &str)]) -> Tally {
    let file = load_json(corpus, rel);
    let documented: HashMap<u64, &str> = documented.iter().copied().collect();
    let mut t = Tally::default();
    let groups = file["testGroups"].as_array().expect("testGroups");
    for group in groups {
        // `public` is a JWK (JWS file) or a JWKS (JWK file); HMAC groups have only `private`.
        // HS* is refused before any key is looked up, so the key set built from a private oct
        // key (which KeySet ignores anyway) never matters.
        let key = group.get("public").or_else(|| group.get("private")).expect("group key");
        let keys = keyset(key);
        for test in group["tests"].as_array().expect("tests") {
            t.total += 1;
            let tc = test["tcId"].as_u64().expect("tcId");
            let jws = str_of(test, "jws");
            let result = str_of(test, "result");
            let alg = header_alg(jws).unwrap_or_default();
            let r = verify_jws(jws, MAX_BYTES, ALL_ENABLED, &keys);
            let got = slug(&r);
            if got == "ok" {
                t.accepted += 1;
            } else {
                t.rejected += 1;
                *t.slugs.entry(got).or_default() += 1;
            }
            let ctx = || format!("{rel} tc{tc} ({result}, alg {alg:?}, {})", str_of(test, "comment"));
            match result {
                "valid" => t.valid += 1,
                "invalid" => t.invalid += 1,
                _ => t.acceptable += 1,
            }
            if let Some(want) = documented.get(&tc) {
                t.documented += 1;
                if got != *want {
                    t.failures.push(format!("{}: documented verdict {want}, got {got}", ctx()));
                }
                continue;
            }
            match result {
                "valid" if is_enabled(&alg) => {
                    if got != "ok" {
                        t.failures.push(format!("{}: must verify, got {got}", ctx()));
                    }
                }
                "valid" => {
                    t.not_enabled += 1;
                    if got != "alg_not_allowed" {
                        t.failures.push(format!("{}: alg not enabled, want alg_not_allowed, got {got}", ctx()));
                    }
                }
                "invalid" => {
                    if got == "ok" {
                        t.failures.push(format!("{}: must be rejected, was accepted", ctx()));
                    }
                }
                "acceptable" => t.acceptable_outcomes.push(format!("tc{tc}={got}")),
                other => t.failures.push(format!("{}: unknown result {other}", ctx())),
            }
        }
    }
    assert_eq!(Some(t.total as u64), file["numberOfTests"].as_u64(), "{rel}: test count differs from numberOfTests");
    println!("{}", t.summary(rel));
    t
}

fn assert_agreement(rel: &str, t: &Tally) {
    assert!(t.failures.is_empty(), "{rel}: {} disagreements:\n{}", t.failures.len(), t.failures.join("\n"));
    // both directions are exercised, so the run can fail either way
    assert!(t.accepted > 0 && t.rejected > 0, "{rel}: degenerate run {t:?}");
}

#[test]
fn wycheproof_json_web_signature_test_full_agreement() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/testvectors_v1/json_web_signature_test.json";
    let t = run_wycheproof_jws(&corpus, rel, JWS_DOCUMENTED);
    assert_agreement(rel, &t);
    assert_eq!((t.total, t.valid, t.invalid, t.acceptable), (401, 46, 355, 0));
    assert_eq!(t.documented, 4);
}

#[test]
fn wycheproof_json_web_key_test_full_agreement() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/testvectors_v1/json_web_key_test.json";
    let t = run_wycheproof_jws(&corpus, rel, &[]);
    assert_agreement(rel, &t);
    assert_eq!((t.total, t.valid, t.invalid, t.acceptable), (26, 5, 21, 0));
}

#[test]
fn wycheproof_jws_attack_subset_full_agreement() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/json_web_signature_attack_subset.json";
    let t = run_wycheproof_jws(&corpus, rel, JWS_DOCUMENTED);
    assert!(t.failures.is_empty(), "{rel}:\n{}", t.failures.join("\n"));
    assert_eq!(t.total, 24);
    assert_eq!(t.documented, 2);
    // the subset is all attacks: nothing in it verifies
    assert_eq!(t.accepted, 0);
}

/// Exact reason codes for the attack cases ATTACKS.md names by Wycheproof tcId.
#[test]
fn wycheproof_attack_cases_have_the_named_reasons() {
    let Some(corpus) = corpus_dir() else { return };
    let file = load_json(&corpus, "wycheproof/testvectors_v1/json_web_signature_test.json");
    let mut by_tc: HashMap<u64, (String, KeySet)> = HashMap::new();
    for group in file["testGroups"].as_array().expect("groups") {
        let key = group.get("public").or_else(|| group.get("private")).expect("key");
        for test in group["tests"].as_array().expect("tests") {
            by_tc.insert(test["tcId"].as_u64().expect("tcId"), (str_of(test, "jws").to_owned(), keyset(key)));
        }
    }
    let verdict = |tc: u64| {
        let (jws, keys) = &by_tc[&tc];
        slug(&verify_jws(jws, MAX_BYTES, ALL_ENABLED, keys))
    };
    // positive twins: the untouched ES256 / RS256 tokens of the same groups verify
    assert_eq!(verdict(18), "ok");
    assert_eq!(verdict(33), "ok");
    // extra (empty) components and JSON serialization (ATTACKS.md case 7)
    assert_eq!(verdict(14), "malformed_token");
    assert_eq!(verdict(15), "malformed_token");
    assert_eq!(verdict(17), "malformed_token");
    // tc16 is `none` with an EMPTY signature segment: ATTACKS.md case 1 asks for
    // alg_not_allowed, and the algorithm is judged before the signature segment.
    assert_eq!(verdict(16), "alg_not_allowed");
    // the same `none` header with a non-empty signature reaches the algorithm check
    let (tc16, keys16) = &by_tc[&16];
    let with_sig = format!("{tc16}c2ln");
    assert_eq!(slug(&verify_jws(&with_sig, MAX_BYTES, ALL_ENABLED, keys16)), "alg_not_allowed");
    // HS256 keyed with the EC public key bytes (case 2): HS* is never accepted
    assert_eq!(verdict(31), "alg_not_allowed");
    // attacker jwk embedded in the header (case 4): ignored, so the signature does not verify
    // with the issuer's key
    assert_eq!(verdict(32), "signature_invalid");
    // base64url strictness (case 7): spaces, invalid characters, bad unused bits. A defect in
    // the header is malformed_token; these tokens are HS256, and the algorithm is judged before
    // the payload and signature segments are decoded, so a defect there meets alg_not_allowed
    // first. To show the strictness itself, the same payload and signature segments are put
    // under an ES256 header (an enabled algorithm): malformed_token.
    for tc in [365, 366] {
        assert_eq!(verdict(tc), "malformed_token", "tc{tc}");
    }
    let es256_header = B64.encode(r#"{"alg":"ES256","kid":"kid-ec-sign"}"#);
    let es_keys = &by_tc[&18].1;
    for tc in [360, 361, 362, 363, 364, 368, 369, 371, 374, 375] {
        assert_eq!(verdict(tc), "alg_not_allowed", "tc{tc}");
        let (_, rest) = by_tc[&tc].0.split_once('.').expect("segments");
        let moved = format!("{es256_header}.{rest}");
        assert_eq!(slug(&verify_jws(&moved, MAX_BYTES, ALL_ENABLED, es_keys)), "malformed_token", "tc{tc} under ES256");
    }
    // tc367 and tc370 ("invalidBase64Padding"): in this Wycheproof commit their `jws` string is
    // byte-identical to tc357 (the padding was lost), so they are plain HS256 tokens.
    assert_eq!(by_tc[&367].0, by_tc[&357].0);
    assert_eq!(by_tc[&370].0, by_tc[&357].0);
    assert_eq!(verdict(367), "alg_not_allowed");
    assert_eq!(verdict(370), "alg_not_allowed");
}

/// tc346/tc350: a PS384 token against a JWK pinned to PS256 (see [`JWS_DOCUMENTED`]). Twin: the
/// same key without its `alg` member verifies the same token.
#[test]
fn wycheproof_pinned_jwk_alg_is_honoured() {
    let Some(corpus) = corpus_dir() else { return };
    let file = load_json(&corpus, "wycheproof/testvectors_v1/json_web_signature_test.json");
    let mut seen = 0;
    for group in file["testGroups"].as_array().expect("groups") {
        for test in group["tests"].as_array().expect("tests") {
            let tc = test["tcId"].as_u64().expect("tcId");
            if tc != 346 && tc != 350 {
                continue;
            }
            seen += 1;
            let jws = str_of(test, "jws");
            assert_eq!(header_alg(jws).as_deref(), Some("PS384"));
            let public = &group["public"];
            assert_eq!(public["alg"], "PS256");
            let pinned = keyset(public);
            assert_eq!(slug(&verify_jws(jws, MAX_BYTES, ALL_ENABLED, &pinned)), "key_alg_mismatch", "tc{tc}");
            let mut unpinned = public.clone();
            unpinned.as_object_mut().expect("jwk").remove("alg");
            assert_eq!(slug(&verify_jws(jws, MAX_BYTES, ALL_ENABLED, &keyset(&unpinned))), "ok", "tc{tc}");
        }
    }
    assert_eq!(seen, 2);
}

/// tc372/tc373: Wycheproof "valid", broker "malformed_token" (see [`JWS_DOCUMENTED`]).
#[test]
fn wycheproof_tc372_tc373_are_refused_as_malformed() {
    let Some(corpus) = corpus_dir() else { return };
    let file = load_json(&corpus, "wycheproof/testvectors_v1/json_web_signature_test.json");
    let mut tokens: HashMap<u64, String> = HashMap::new();
    for group in file["testGroups"].as_array().expect("groups") {
        for test in group["tests"].as_array().expect("tests") {
            tokens.insert(test["tcId"].as_u64().expect("tcId"), str_of(test, "jws").to_owned());
        }
    }
    let keys = KeySet::default();
    let verdict = |t: &str| slug(&verify_jws(t, MAX_BYTES, ALL_ENABLED, &keys));
    // twin: tc357 is the same token without the inserted `?`; it passes the structure check and
    // is refused only for its algorithm (HS256)
    assert_eq!(verdict(&tokens[&357]), "alg_not_allowed");
    assert_eq!(tokens[&372].replace('?', ""), tokens[&357]);
    assert_eq!(tokens[&373].replace('?', ""), tokens[&357]);
    assert_eq!(verdict(&tokens[&372]), "malformed_token");
    assert_eq!(verdict(&tokens[&373]), "alg_not_allowed");
    // the same `?` in the payload of a token under an enabled algorithm is malformed
    let es = &tokens[&18];
    let (h, rest) = es.split_once('.').expect("segments");
    assert_eq!(verdict(&format!("{h}.?{rest}")), "malformed_token");
}

// ---------------------------------------------------------------------------------------------
// Wycheproof raw signature files through the crypto backend, with keys built by KeySet
// ---------------------------------------------------------------------------------------------

/// Runs a (key, msg, sig) file: each group's public key becomes a JWK, goes through
/// [`KeySet::from_json`] (the broker's only path from a JWK to a key, where it is parsed once), and
/// each vector is checked with `verify_signature` (the check `verify_jws` makes, through that
/// parsed key). The message is the raw
/// `msg` bytes, so no compact JWS is built.
fn run_raw(corpus: &Path, rel: &str, alg: Algorithm, jwk_of: fn(&Value) -> Value, check_group: fn(&Value)) -> Tally {
    let file = load_json(corpus, rel);
    let mut t = Tally::default();
    let mut ignored_keys = 0usize;
    for group in file["testGroups"].as_array().expect("testGroups") {
        check_group(group);
        let jwk = jwk_of(group);
        let keys = keyset(&jwk);
        let key = keys.keys().first();
        if key.is_none() {
            ignored_keys += 1;
        }
        for test in group["tests"].as_array().expect("tests") {
            t.total += 1;
            let tc = test["tcId"].as_u64().expect("tcId");
            let result = str_of(test, "result");
            let msg = hex(str_of(test, "msg"));
            let sig = B64.encode(hex(str_of(test, "sig")));
            let (accepted, why) = match key {
                None => (false, format!("key ignored by KeySet: {:?}", keys.ignored())),
                Some(k) => match ephemera_providers::verify::verify_signature(k, alg, &msg, &sig) {
                    true => (true, String::new()),
                    false => (false, "signature_invalid".to_owned()),
                },
            };
            if accepted {
                t.accepted += 1;
            } else {
                t.rejected += 1;
                *t.slugs.entry(if key.is_none() { "key_ignored" } else { "signature_invalid" }).or_default() += 1;
            }
            let ctx = || format!("{rel} tc{tc} ({result}, {}, {:?})", str_of(test, "comment"), test["flags"]);
            match result {
                "valid" => {
                    t.valid += 1;
                    if !accepted {
                        t.failures.push(format!("{}: must verify, got {why}", ctx()));
                    }
                }
                "invalid" => {
                    t.invalid += 1;
                    if accepted {
                        t.failures.push(format!("{}: must be rejected, was accepted", ctx()));
                    }
                }
                _ => {
                    t.acceptable += 1;
                    t.acceptable_outcomes.push(format!("tc{tc}={}", if accepted { "accepted" } else { "rejected" }));
                }
            }
        }
    }
    assert_eq!(Some(t.total as u64), file["numberOfTests"].as_u64(), "{rel}: test count");
    println!("{} (groups whose key KeySet ignored: {ignored_keys})", t.summary(rel));
    t
}

/// EC JWK from Wycheproof's `publicKey.uncompressed` (`04 || x || y`), cross-checked against the
/// file's own `publicKeyJwk`.
fn ec_jwk(group: &Value, crv: &str, len: usize) -> Value {
    let point = hex(str_of(&group["publicKey"], "uncompressed"));
    assert_eq!(point.len(), 1 + 2 * len, "uncompressed point length");
    assert_eq!(point[0], 4, "uncompressed point tag");
    let jwk = json!({
        "kty": "EC",
        "crv": crv,
        "x": B64.encode(&point[1..1 + len]),
        "y": B64.encode(&point[1 + len..]),
    });
    if let Some(theirs) = group.get("publicKeyJwk") {
        assert_eq!((&jwk["x"], &jwk["y"]), (&theirs["x"], &theirs["y"]), "publicKeyJwk disagrees");
    }
    jwk
}

/// Big-endian unsigned hex (Wycheproof writes a leading 00 when the top bit is set) to minimal
/// base64url, as JWK wants.
fn b64_uint(hex_str: &str) -> String {
    let bytes = hex(hex_str);
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    B64.encode(&bytes[first..])
}

fn rsa_jwk(group: &Value) -> Value {
    let pk = &group["publicKey"];
    json!({ "kty": "RSA", "n": b64_uint(str_of(pk, "modulus")), "e": b64_uint(str_of(pk, "publicExponent")) })
}

fn ed25519_jwk(group: &Value) -> Value {
    let pk = hex(str_of(&group["publicKey"], "pk"));
    assert_eq!(pk.len(), 32);
    let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": B64.encode(pk) });
    if let Some(theirs) = group.get("publicKeyJwk") {
        assert_eq!(jwk["x"], theirs["x"], "publicKeyJwk disagrees");
    }
    jwk
}

#[test]
fn wycheproof_ecdsa_p256_p1363_agrees_with_backend() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/testvectors_v1/ecdsa_secp256r1_sha256_p1363_test.json";
    let t = run_raw(
        &corpus,
        rel,
        Algorithm::ES256,
        |g| ec_jwk(g, "P-256", 32),
        |g| {
            assert_eq!(str_of(g, "type"), "EcdsaP1363Verify");
            assert_eq!(str_of(g, "sha"), "SHA-256");
            assert_eq!(str_of(&g["publicKey"], "curve"), "secp256r1");
        },
    );
    assert_agreement(rel, &t);
    assert_eq!((t.valid, t.invalid, t.acceptable), (173, 89, 0));
}

#[test]
fn wycheproof_ecdsa_p384_p1363_agrees_with_backend() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/testvectors_v1/ecdsa_secp384r1_sha384_p1363_test.json";
    let t = run_raw(
        &corpus,
        rel,
        Algorithm::ES384,
        |g| ec_jwk(g, "P-384", 48),
        |g| {
            assert_eq!(str_of(g, "type"), "EcdsaP1363Verify");
            assert_eq!(str_of(g, "sha"), "SHA-384");
            assert_eq!(str_of(&g["publicKey"], "curve"), "secp384r1");
        },
    );
    assert_agreement(rel, &t);
    assert_eq!((t.valid, t.invalid, t.acceptable), (193, 87, 0));
}

#[test]
fn wycheproof_rsa_pkcs1_2048_sha256_agrees_with_backend() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/testvectors_v1/rsa_signature_2048_sha256_test.json";
    let t = run_raw(&corpus, rel, Algorithm::RS256, rsa_jwk, |g| {
        assert_eq!(str_of(g, "type"), "RsassaPkcs1Verify");
        assert_eq!(str_of(g, "sha"), "SHA-256");
        assert_eq!(g["keySize"], 2048);
    });
    assert_agreement(rel, &t);
    assert_eq!((t.valid, t.invalid, t.acceptable), (9, 249, 1));
    // tc8 "Missing NULL in the ASN encoding" (DigestInfo without the NULL parameters) is
    // Wycheproof-acceptable; aws-lc (like ring) accepts only the encoding with NULL, so we reject.
    assert_eq!(t.acceptable_outcomes, vec!["tc8=rejected".to_owned()]);
}

#[test]
fn wycheproof_rsa_pss_2048_sha256_mgf1_32_agrees_with_backend() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/testvectors_v1/rsa_pss_2048_sha256_mgf1_32_test.json";
    let t = run_raw(&corpus, rel, Algorithm::PS256, rsa_jwk, |g| {
        // PS256 is RSASSA-PSS with SHA-256, MGF1 with SHA-256 and a 32-byte salt (RFC 7518
        // §3.5: salt length = hash output size). The file's parameters must be exactly those,
        // or the comparison would be meaningless.
        assert_eq!(str_of(g, "type"), "RsassaPssVerify");
        assert_eq!(str_of(g, "sha"), "SHA-256");
        assert_eq!(str_of(g, "mgf"), "MGF1");
        assert_eq!(str_of(g, "mgfSha"), "SHA-256");
        assert_eq!(g["sLen"], 32);
        assert_eq!(g["keySize"], 2048);
    });
    assert_agreement(rel, &t);
    assert_eq!((t.valid, t.invalid, t.acceptable), (63, 45, 0));
}

#[test]
fn wycheproof_ed25519_agrees_with_backend() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "wycheproof/testvectors_v1/ed25519_test.json";
    let t = run_raw(&corpus, rel, Algorithm::EdDSA, ed25519_jwk, |g| {
        assert_eq!(str_of(g, "type"), "EddsaVerify");
        assert_eq!(str_of(&g["publicKey"], "curve"), "edwards25519");
    });
    assert_agreement(rel, &t);
    assert_eq!((t.valid, t.invalid, t.acceptable), (88, 63, 0));
}

// ---------------------------------------------------------------------------------------------
// RFC vectors
// ---------------------------------------------------------------------------------------------

/// RFC 7515 Appendix A: A.2 (RS256) and A.3 (ES256) verify; A.1 (HS256) and A.4 (ES512) are
/// refused for their algorithm; A.5 (`none`) is refused; A.6/A.7 (JSON serializations) are not
/// compact JWS, but each of their signatures verifies once rebuilt in compact form.
#[test]
fn rfc7515_appendix_a() {
    let Some(corpus) = corpus_dir() else { return };
    let file = load_json(&corpus, "jose_vectors/rfc7515_appendix_A_vectors.json");
    let v = &file["vectors"];
    let verdict = |name: &str, token: &str| {
        let keys = keyset(&v[name]["verification_key_jwk"]);
        let r = verify_jws(token, MAX_BYTES, ALL_ENABLED, &keys);
        if let Ok(ok) = &r {
            assert_eq!(ok.payload, str_of(&v[name], "payload_bytes_utf8").as_bytes(), "{name} payload");
        }
        slug(&r)
    };
    for name in ["A.1", "A.2", "A.3", "A.4"] {
        let e = &v[name];
        let rebuilt =
            format!("{}.{}.{}", str_of(e, "protected_b64u"), str_of(e, "payload_b64u"), str_of(e, "signature_b64u"));
        assert_eq!(rebuilt, str_of(e, "compact"), "{name}: compact = protected.payload.signature");
    }
    let compact = |name: &str| str_of(&v[name], "compact").to_owned();
    assert_eq!(verdict("A.2", &compact("A.2")), "ok");
    assert_eq!(verdict("A.3", &compact("A.3")), "ok");
    assert_eq!(verdict("A.1", &compact("A.1")), "alg_not_allowed");
    // ES512 cannot be enabled (jsonwebtoken has no P-521); the key (P-521) is also ignored.
    assert_eq!(verdict("A.4", &compact("A.4")), "alg_not_allowed");

    // negative twins of the positives: one flipped signature character
    for name in ["A.2", "A.3"] {
        let c = compact(name);
        let i = c.len() - 10;
        let flipped = format!("{}{}{}", &c[..i], if &c[i..=i] == "A" { "B" } else { "A" }, &c[i + 1..]);
        assert_eq!(verdict(name, &flipped), "signature_invalid", "{name}");
    }

    // A.5, unsecured JWS: `header.payload.` with an empty signature: alg_not_allowed (ATTACKS.md
    // case 1), as with any signature bytes present.
    let a5 = compact("A.5");
    assert!(a5.ends_with('.'));
    let none_keys = KeySet::default();
    assert_eq!(slug(&verify_jws(&a5, MAX_BYTES, ALL_ENABLED, &none_keys)), "alg_not_allowed");
    assert_eq!(slug(&verify_jws(&format!("{a5}c2ln"), MAX_BYTES, ALL_ENABLED, &none_keys)), "alg_not_allowed");

    // A.6 (general) and A.7 (flattened) JSON serialization: the compact parser refuses both...
    for name in ["A.6", "A.7"] {
        let text = v[name]["json"].to_string();
        assert_eq!(verdict("A.3", &text), "malformed_token", "{name}");
    }
    // ...and every signature in them verifies once rebuilt as compact protected.payload.signature
    // (the `kid` lives in the unprotected header, which compact form cannot carry: each rebuilt
    // token is checked against a key set holding only its key).
    let key_for_alg = |alg: &str| match alg {
        "RS256" => "A.2",
        "ES256" => "A.3",
        other => panic!("unexpected alg {other}"),
    };
    let a6 = &v["A.6"]["json"];
    let mut sigs: Vec<Value> = a6["signatures"].as_array().expect("signatures").clone();
    let mut a7 = v["A.7"]["json"].clone();
    a7.as_object_mut().expect("object").remove("payload");
    sigs.push(a7);
    for (payload, sig) in std::iter::repeat_n(str_of(a6, "payload"), sigs.len()).zip(&sigs) {
        let protected = str_of(sig, "protected");
        let token = format!("{protected}.{payload}.{}", str_of(sig, "signature"));
        let alg = header_alg(&token).expect("alg");
        assert_eq!(verdict(key_for_alg(&alg), &token), "ok", "{alg}");
    }
    assert_eq!(str_of(&v["A.7"]["json"], "payload"), str_of(a6, "payload"));
    assert_eq!(sigs.len(), 3);
    // A token without `kid` is matched only against a key set holding exactly one key: with the
    // A.2 (RSA) and A.3 (EC) keys published together, the kid-less A.2 token is refused as
    // ambiguous (unknown_key), although only one of the two keys fits RS256.
    let both = keyset(&json!({"keys": [v["A.2"]["verification_key_jwk"], v["A.3"]["verification_key_jwk"]]}));
    assert_eq!(both.keys().len(), 2);
    assert_eq!(slug(&verify_jws(&compact("A.2"), MAX_BYTES, ALL_ENABLED, &both)), "unknown_key");
}

/// RFC 8037 A.4: Ed25519 JWS verifies with the A.1 public key.
#[test]
fn rfc8037_a4_ed25519() {
    let Some(corpus) = corpus_dir() else { return };
    let file = load_json(&corpus, "jose_vectors/rfc8037_A4_ed25519_jws.json");
    let keys = keyset(&file["key_public_jwk"]);
    let compact = str_of(&file, "compact");
    let ok = verify_jws(compact, MAX_BYTES, ALL_ENABLED, &keys).expect("RFC 8037 A.4 verifies");
    assert_eq!(ok.alg, Algorithm::EdDSA);
    assert_eq!(ok.payload, str_of(&file, "payload").as_bytes());
    // the private JWK as published is never a verification key (private members are refused)
    assert!(keyset(&file["key_private_jwk"]).keys().is_empty());
    // twin: payload changed -> signature_invalid
    let mut parts: Vec<&str> = compact.split('.').collect();
    let other = B64.encode("Example of Ed25519 signinG");
    parts[1] = &other;
    assert_eq!(slug(&verify_jws(&parts.join("."), MAX_BYTES, ALL_ENABLED, &keys)), "signature_invalid");
    // EdDSA off for the provider -> refused
    assert_eq!(slug(&verify_jws(compact, MAX_BYTES, &[Algorithm::RS256], &keys)), "alg_not_allowed");
}

/// What the broker answers for a correctly signed JWS with this algorithm.
fn expected_for_alg(alg: &str) -> &'static str {
    if is_enabled(alg) { "ok" } else { "alg_not_allowed" }
}

/// A key set with only the (public) key from `keys` that fits `alg`.
fn cookbook_keyset(keys: &[Value], alg: &str) -> KeySet {
    let kty = match alg {
        a if a.starts_with("RS") || a.starts_with("PS") => "RSA",
        a if a.starts_with("ES") => "EC",
        "EdDSA" => "OKP",
        _ => "oct",
    };
    let key = keys.iter().find(|k| k["kty"] == kty).unwrap_or_else(|| panic!("no {kty} key"));
    keyset(&public_jwk(key))
}

/// RFC 7520 §4 (JOSE cookbook) JWS examples and the RFC 8037 cookbook entry: 4.1 RS256 and
/// 4.2 PS384 verify; 4.3 ES512 and 4.4-4.8 HS256 are refused for their algorithm; 4.5's detached
/// payload is re-attached first; every JSON serialization is refused by the compact parser, and
/// each of its signatures (where it has a protected header) is checked again rebuilt as compact.
#[test]
fn rfc7520_cookbook_jws() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = corpus.join("jose_vectors/rfc7520_jose_cookbook/jws");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("cookbook jws dir")
        .map(|e| format!("jose_vectors/rfc7520_jose_cookbook/jws/{}", e.expect("entry").file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 8, "{files:?}");
    files.push("jose_vectors/rfc7520_jose_cookbook/curve25519/jws.json".to_owned());

    let mut verdicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rel in &files {
        let f = load_json(&corpus, rel);
        let keys: Vec<Value> = match &f["input"]["key"] {
            Value::Array(a) => a.clone(),
            k => vec![k.clone()],
        };
        let signing: Vec<Value> = match &f["signing"] {
            Value::Array(a) => a.clone(),
            s => vec![s.clone()],
        };
        let payload = str_of(&f["input"], "payload");
        let payload_b64 = B64.encode(payload);
        let out = &f["output"];
        let mut seen = Vec::new();
        let check = |token: &str, alg: &str, what: &str, seen: &mut Vec<String>| {
            let ks = cookbook_keyset(&keys, alg);
            let r = verify_jws(token, MAX_BYTES, ALL_ENABLED, &ks);
            let got = slug(&r);
            if let Ok(ok) = &r {
                assert_eq!(ok.payload, payload.as_bytes(), "{rel} {what}");
            }
            assert_eq!(got, expected_for_alg(alg), "{rel} {what} ({alg})");
            seen.push(format!("{what}:{alg}={got}"));
        };

        if let Some(compact) = out.get("compact").and_then(Value::as_str) {
            let s = &signing[0];
            let alg = str_of(&s["protected"], "alg");
            let parts: Vec<&str> = compact.split('.').collect();
            assert_eq!(parts.len(), 3, "{rel}");
            if parts[1].is_empty() {
                // 4.5 detached content: re-attach base64url(payload); the result is exactly the
                // signing input the example signed
                let attached = format!("{}.{payload_b64}.{}", parts[0], parts[2]);
                assert_eq!(attached, format!("{}.{}", str_of(s, "sig-input"), parts[2]), "{rel}");
                check(&attached, alg, "compact-reattached", &mut seen);
                // as published (empty payload segment) it does not verify either way
                let ks = cookbook_keyset(&keys, alg);
                let got = slug(&verify_jws(compact, MAX_BYTES, ALL_ENABLED, &ks));
                assert_ne!(got, "ok", "{rel} detached as-is");
                seen.push(format!("compact-detached:{alg}={got}"));
            } else {
                check(compact, alg, "compact", &mut seen);
            }
        }
        for form in ["json", "json_flat"] {
            let Some(j) = out.get(form) else { continue };
            // the compact parser refuses a JSON serialization outright
            let text = j.to_string();
            let no_keys = KeySet::default();
            assert_eq!(slug(&verify_jws(&text, MAX_BYTES, ALL_ENABLED, &no_keys)), "malformed_token", "{rel} {form}");
            seen.push(format!("{form}=malformed_token"));
            // rebuild each signature as compact, where it has a protected header
            let sigs: Vec<Value> = match j.get("signatures") {
                Some(Value::Array(a)) => a.clone(),
                _ => vec![j.clone()],
            };
            let body = j.get("payload").and_then(Value::as_str).unwrap_or(&payload_b64).to_owned();
            for sig in &sigs {
                let Some(protected) = sig.get("protected").and_then(Value::as_str) else {
                    // 4.7 "protecting content only": no protected header, no compact form
                    seen.push(format!("{form}-rebuilt=n/a (no protected header)"));
                    continue;
                };
                let token = format!("{protected}.{body}.{}", str_of(sig, "signature"));
                let alg = header_alg(&token).expect("alg");
                check(&token, &alg, &format!("{form}-rebuilt"), &mut seen);
            }
        }
        verdicts.insert(rel.rsplit('/').next().unwrap_or(rel).to_owned(), seen);
    }
    for (f, v) in &verdicts {
        println!("{f}: {}", v.join(", "));
    }
    let ok_count: usize = verdicts.values().flatten().filter(|s| s.ends_with("=ok")).count();
    // 4.1 (RS256), 4.2 (PS384) and Ed25519 x {compact, json, json_flat}, and 4.8's RS256
    // signature (its ES512 one has only an unprotected header, so no compact form)
    assert_eq!(ok_count, 3 + 3 + 3 + 1, "{verdicts:#?}");
    assert!(verdicts["4_3.ecdsa_signature.json"].iter().any(|s| s == "compact:ES512=alg_not_allowed"));
    assert!(verdicts["4_4.hmac-sha2_integrity_protection.json"].iter().any(|s| s == "compact:HS256=alg_not_allowed"));
}

/// RFC 7797 (`b64: false`, `crit: ["b64"]`): the broker implements no JWS extension, so these
/// are refused. The published vectors are HS256, so the algorithm check (which runs before the
/// `crit` check) or, for the compact form with its raw payload, the structure check refuses them
/// first; the `crit`/`b64` refusal itself is shown with the same protected header over an enabled
/// algorithm, next to its twin without the extension.
#[test]
fn rfc7797_b64_false_is_refused() {
    let Some(corpus) = corpus_dir() else { return };
    let compat = load_json(&corpus, "jose_vectors/rfc7520_jose_cookbook/rfc7797/hmac-sha2_b64_false.json");
    let json_only = load_json(&corpus, "jose_vectors/rfc7520_jose_cookbook/rfc7797/4.2.hmac-sha2_b64_false.json");
    let none = KeySet::default();
    let verdict = |t: &str, keys: &KeySet| slug(&verify_jws(t, MAX_BYTES, ALL_ENABLED, keys));

    // compact form as published: the payload segment is the raw text "This is the payload
    // string!"; crit/b64 are judged before the payload is decoded -> crit_unsupported
    let compact = str_of(&compat["output"], "compact");
    assert!(compact.contains(' '));
    assert_eq!(verdict(compact, &none), "crit_unsupported");
    // JSON serializations -> malformed_token
    for f in [&compat, &json_only] {
        for form in ["json", "json_flat"] {
            assert_eq!(verdict(&f["output"][form].to_string(), &none), "malformed_token", "{form}");
        }
    }
    // 4.2's "$.02" payload contains a '.', so its compact form has four segments
    let p42 = &json_only["output"]["json_flat"];
    let t42 = format!("{}.{}.{}", str_of(p42, "protected"), str_of(p42, "payload"), str_of(p42, "signature"));
    assert_eq!(verdict(&t42, &none), "malformed_token");
    // the compact header with a base64url payload: HS256 is refused before crit is looked at
    let header_b64 = compact.split('.').next().expect("header");
    let header: Value = serde_json::from_slice(&B64.decode(header_b64).expect("b64")).expect("json");
    assert_eq!(header, json!({"alg": "HS256", "b64": false, "crit": ["b64"]}));
    let sig = compact.rsplit('.').next().expect("sig");
    let encoded = format!("{header_b64}.{}.{sig}", B64.encode(str_of(&compat["input"], "payload")));
    assert_eq!(verdict(&encoded, &none), "crit_unsupported");

    // the same extension header over ES256, signed by a test key: crit_unsupported; the twin
    // without b64/crit verifies; b64 alone (no crit) is refused too
    let (enc, jwks) = es256_test_key();
    let keys = KeySet::from_json(jwks.to_string().as_bytes()).expect("jwks");
    let payload = str_of(&compat["input"], "payload");
    let mut with_ext = header.clone();
    with_ext["alg"] = json!("ES256");
    let mut b64_only = with_ext.clone();
    b64_only.as_object_mut().expect("object").remove("crit");
    let sign = |h: &Value| {
        let input = format!("{}.{}", B64.encode(h.to_string()), B64.encode(payload));
        let s = jsonwebtoken::crypto::sign(input.as_bytes(), &enc, Algorithm::ES256).expect("sign");
        format!("{input}.{s}")
    };
    assert_eq!(verdict(&sign(&json!({"alg": "ES256"})), &keys), "ok");
    assert_eq!(verdict(&sign(&with_ext), &keys), "crit_unsupported");
    assert_eq!(verdict(&sign(&b64_only), &keys), "crit_unsupported");
}

/// A fresh ES256 key: its encoding key and a one-key JWKS.
fn es256_test_key() -> (EncodingKey, Value) {
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
    let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
    let point = kp.public_key().as_ref().to_vec();
    assert_eq!(point.len(), 65);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
    }]});
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwks)
}

/// The vector expectations use `ENABLED_NAMES`; they hold only while it names exactly the
/// algorithms the broker lets a provider enable.
#[test]
fn enabled_names_are_the_enabled_algorithms() {
    let parsed: Vec<Algorithm> = ENABLED_NAMES
        .iter()
        .map(|n| ephemera_providers::jose::parse_alg(n, ALL_ENABLED).expect("every name parses"))
        .collect();
    assert_eq!(parsed, ALL_ENABLED);
}

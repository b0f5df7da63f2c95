//! Attestation through the broker's own pipeline (`Broker::evaluate`, and `Broker::exchange` where
//! single use and nonces matter), with the injected clock (ATTACKS 31, 32, 35, 39):
//!
//! * every real Nitro document of the corpus (../shared/corpus/aws_nitro, MANIFEST.json) at its
//!   `verify_at`, with the real AWS Nitro Enclaves root G1 pinned by file *and* SHA-256 and the
//!   PCRs of the evervault test specs as role conditions: non-debug documents are allowed, debug
//!   documents are `debug_enclave` unless the role says `allow_debug`; today every one is
//!   `cert_expired`; a wrong PCR is `policy_denied` naming the condition; a PCR8-only role works;
//!   all-zero or malformed PCR pins are refused at load;
//! * the encodings a client may send (standard or URL-safe base64, line breaks, COSE tag 18), one
//!   replay id for all of them;
//! * the full grant with the document's own nonce registered as a broker nonce, and refused
//!   without it, bound to another role, or expired (issued more than 60 s before);
//! * EC2 instance identity documents: single use by (instanceId, pendingTime), capped lifetime, and
//!   the replay window (remembered for a year, far beyond the credential cap).
//!
//! Corpus missing: the corpus tests fail under `CI=true` and are skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::harness::corpus;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ephemera::audit::AuditLog;
use ephemera::clock::{Clock, FixedClock};
use ephemera::config::{Config, RawConfig};
use ephemera::exchange::{Allowed, Broker, Evaluator, ExchangeError, ExchangeRequest, Refusal, Trace};
use ephemera::minting::TokenResponse;
use ephemera::secret::SubjectToken;
use ephemera::state::StateStore;
use ephemera::state::memory::MemoryStore;
use ephemera_attestation::nitro::AWS_NITRO_ROOT_G1_SHA256;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

const NITRO: &str = "urn:ephemera:token-type:nitro-attestation";
const EC2_IID: &str = "urn:ephemera:token-type:aws-ec2-iid";

fn now_real() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A clock the test moves.
#[derive(Debug)]
struct SteppedClock(AtomicI64);

impl Clock for SteppedClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

// ------------------------------------------------------------------------------------------------
// the corpus

struct Doc {
    file: String,
    /// The COSE_Sign1 bytes.
    bytes: Vec<u8>,
    verify_at: i64,
    module_id: String,
    debug: bool,
}

fn docs(corpus: &Path) -> Vec<Doc> {
    let manifest: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(corpus.join("MANIFEST.json")).unwrap()).unwrap();
    let docs: Vec<Doc> = manifest
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("AWS Nitro Enclaves attestation document")))
        .map(|e| {
            let file = e["file"].as_str().unwrap().to_owned();
            let raw = std::fs::read(corpus.join(&file)).unwrap();
            let bytes = if file.ends_with(".b64") {
                let text: String = String::from_utf8(raw).unwrap().split_whitespace().collect();
                STANDARD.decode(text).unwrap()
            } else {
                raw
            };
            Doc {
                bytes,
                verify_at: e["verify_at"].as_i64().unwrap(),
                module_id: e["module_id"].as_str().unwrap().to_owned(),
                debug: e["pcr0_prefix"].as_str().unwrap().starts_with("000000"),
                file,
            }
        })
        .collect();
    assert_eq!(docs.len(), 5, "MANIFEST.json lists five Nitro documents");
    docs
}

fn doc<'a>(docs: &'a [Doc], part: &str) -> &'a Doc {
    docs.iter().find(|d| d.file.contains(part)).unwrap_or_else(|| panic!("no corpus document `{part}`"))
}

/// The evervault spec files name their own test-data paths; these are the corpus files they
/// became (corpus PROVENANCE).
fn spec_doc<'a>(docs: &'a [Doc], spec: &serde_json::Value) -> &'a Doc {
    let file = spec.get("file").or_else(|| spec.get("attestationDoc")).and_then(|f| f.as_str()).unwrap();
    match file {
        f if f.contains("non-debug-cert-containing-attestation-document-18-1-23") => doc(docs, "non-debug_2023-01-18"),
        f if f.contains("debug-mode-cert-containing-attestation-doc-18-1-23") => {
            doc(docs, "evervault_debug_2023-01-18")
        }
        "test-data/valid-attestation-doc-base64" => doc(docs, "valid-attestation-doc-base64_2023-09-18"),
        other => panic!("unmapped spec file {other}"),
    }
}

fn specs(corpus: &Path) -> Vec<(String, serde_json::Value)> {
    let dir = corpus.join("aws_nitro/evervault_test-specs");
    let mut out: Vec<(String, serde_json::Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 6, "six evervault test specs");
    out
}

/// `{ pcr0 = "…", pcr8 = "…" }` from a spec's `pcrs`.
fn spec_conditions(spec: &serde_json::Value) -> String {
    let pcrs = spec["pcrs"].as_object().unwrap();
    let inner: Vec<String> = pcrs.iter().map(|(k, v)| format!("{k} = \"{}\"", v.as_str().unwrap())).collect();
    format!("{{ {} }}", inner.join(", "))
}

/// The PCRs of the 2022-10-13 document (no evervault spec covers it), as read from the document.
const PCRS_2022_10_13: &str = r#"{ pcr0 = "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b", pcr1 = "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f", pcr2 = "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a", pcr8 = "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb" }"#;

/// A broker config with one Nitro provider pinned to the real root (file and SHA-256) and one
/// role `r` with `role_extra` (conditions, allow_debug).
fn nitro_config(corpus: &Path, provider_extra: &str, role_extra: &str) -> Result<Config, String> {
    let root = corpus.join("aws_nitro/root/AWS_NitroEnclaves_Root-G1.pem");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "https://broker.example.com"
[audit]
path = "audit.jsonl"
[[providers]]
name = "enclaves"
profile = "nitro"
root_cert_file = "{}"
root_sha256 = "{AWS_NITRO_ROOT_G1_SHA256}"
{provider_extra}
[[roles]]
name = "r"
provider = "enclaves"
max_ttl = "5m"
{role_extra}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#,
        root.display()
    );
    let raw: RawConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
    Config::from_raw(raw, Path::new(".")).map_err(|e| e.to_string())
}

/// A broker over a memory store the test can reach (to register nonces as issued).
struct TestBroker {
    broker: Broker,
    state: Arc<MemoryStore>,
    _audit_dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    async fn evaluate(&self, req: &ExchangeRequest, at: i64) -> (Trace, Result<Allowed, ExchangeError>) {
        self.broker.evaluator().evaluate(req, at).await
    }

    async fn exchange(&self, req: ExchangeRequest, request_id: &str) -> Result<TokenResponse, Refusal> {
        self.broker.exchange_request(req, request_id).await
    }
}

/// Without an audit log, one in a directory of its own (the test evaluates only).
async fn broker(config: Config, clock: Arc<dyn Clock>, audit: Option<AuditLog>) -> TestBroker {
    let (audit, dir) = match audit {
        Some(a) => (a, None),
        None => {
            let dir = tempfile::tempdir().unwrap();
            (AuditLog::open(&dir.path().join("audit.jsonl")).unwrap(), Some(dir))
        }
    };
    let state = Arc::new(MemoryStore::new(1000));
    let evaluator = Evaluator::with_state(config, clock, state.clone()).unwrap();
    TestBroker { broker: Broker::with_evaluator(evaluator, audit, None).unwrap(), state, _audit_dir: dir }
}

fn request(token: String, token_type: &str) -> ExchangeRequest {
    ExchangeRequest {
        subject_token: SubjectToken::new(token),
        subject_token_type: token_type.into(),
        role: "r".into(),
        requested_token_type: None,
        authorization_details: None,
    }
}

/// `evaluate` at `at` with a fixed clock: the trace and `Ok(replay id, nonce)` or the reason slug
/// and description.
async fn evaluate(
    config: Config,
    token: String,
    at: i64,
) -> (Trace, Result<(String, Option<String>, i64), (&'static str, String)>) {
    let b = broker(config, Arc::new(FixedClock(at)), None).await;
    let (trace, result) = b.evaluate(&request(token, NITRO), at).await;
    let result = result.map(|a| (a.replay_id().to_owned(), a.nonce().map(str::to_owned), a.lifetime())).map_err(
        |e: ExchangeError| {
            let r = e.refusal();
            (r.reason, r.description)
        },
    );
    (trace, result)
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[tokio::test]
async fn non_debug_corpus_documents_are_allowed_at_their_own_time_with_the_spec_pcrs() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let mut cases: Vec<(String, &Doc, String)> = vec![(
        "2022-10-13 (PCRs from the document)".into(),
        doc(&docs, "valid-attestation-doc-bytes_2022-10-13"),
        format!("conditions = {PCRS_2022_10_13}"),
    )];
    for (name, spec) in specs(&corpus) {
        let d = spec_doc(&docs, &spec);
        if spec["shouldPcrsMatch"].as_bool() == Some(true) && !d.debug {
            cases.push((name, d, format!("conditions = {}", spec_conditions(&spec))));
        }
    }
    // the two non-debug specs, the PCR8-only spec, and the 2022 document
    assert_eq!(cases.len(), 4, "{:?}", cases.iter().map(|c| &c.0).collect::<Vec<_>>());
    for (name, d, conditions) in cases {
        assert!(!d.debug);
        let config = nitro_config(&corpus, "", &conditions).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (trace, result) = evaluate(config, b64(&d.bytes), d.verify_at).await;
        let (replay_id, nonce, lifetime) = result.unwrap_or_else(|e| panic!("{name} ({}): {e:?}", d.file));
        assert!(replay_id.starts_with("nitro:"), "{replay_id}");
        // every non-debug corpus document carries a nonce (256 bytes): it is handed to the grant
        assert_eq!(nonce.map(|n| URL_SAFE_NO_PAD.decode(n).unwrap().len()), Some(256), "{name}");
        // the credential ends when the document turns stale (timestamp + 5 min)
        assert!(lifetime > 0 && lifetime <= 300, "{name}: {lifetime}");
        let ev = trace.evidence.as_ref().unwrap();
        assert_eq!(ev["module_id"], d.module_id.as_str());
        assert_eq!(ev["debug"], "false");
        assert_eq!(ev["digest"], "SHA384");
        assert_eq!(ev["iss"], format!("urn:ephemera:nitro:{AWS_NITRO_ROOT_G1_SHA256}").as_str());
        assert_eq!(trace.workload.as_ref().unwrap().subject, format!("nitro:{}", d.module_id));
        assert!(trace.decision.as_ref().unwrap().allows());
    }
}

#[tokio::test]
async fn every_corpus_document_is_refused_today_with_cert_expired() {
    let Some(corpus) = corpus() else { return };
    let pin = "conditions = { pcr3 = \"4a9329d69c836267b18abbf9f4a38889124490453419e426818626348d21f989dc930b1562682a9082887454e53425aa\" }";
    for d in docs(&corpus) {
        let config = nitro_config(&corpus, "require_nonce = false", &format!("{pin}\nallow_debug = true")).unwrap();
        let (_, result) = evaluate(config, b64(&d.bytes), now_real()).await;
        assert_eq!(result.err().map(|e| e.0), Some("cert_expired"), "{}", d.file);
    }
}

#[tokio::test]
async fn a_wrong_pcr_is_denied_naming_the_condition() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let (_, spec) = specs(&corpus)
        .into_iter()
        .find(|(n, _)| n == "beta_valid_attestation_doc_in_non_debug_mode_with_correct_pcrs_time_sensitive.json")
        .unwrap();
    let d = spec_doc(&docs, &spec);
    let good = spec["pcrs"]["pcr0"].as_str().unwrap().to_owned();
    let wrong = format!("{}{}", if good.starts_with('d') { "e" } else { "d" }, &good[1..]);
    let conditions = spec_conditions(&spec).replace(&good, &wrong);
    let (trace, result) =
        evaluate(nitro_config(&corpus, "", &format!("conditions = {conditions}")).unwrap(), b64(&d.bytes), d.verify_at)
            .await;
    let (reason, description) = result.err().unwrap();
    assert_eq!(reason, "policy_denied");
    assert!(description.contains("condition pcr0"), "{description}");
    assert!(description.contains(&wrong) && description.contains(&good), "expected and got: {description}");
    assert!(!description.contains("condition pcr1") && !description.contains("condition pcr8"), "{description}");
    let failed: Vec<&str> =
        trace.decision.as_ref().unwrap().conditions.iter().filter(|c| !c.pass).map(|c| c.claim.as_str()).collect();
    assert_eq!(failed, ["pcr0"]);
}

#[tokio::test]
async fn pcr8_only_role_is_allowed_when_it_matches() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let (_, spec) = specs(&corpus)
        .into_iter()
        .find(|(n, _)| n == "beta_valid_attestation_doc_check_pcr8_only_time_sensitive.json")
        .unwrap();
    let d = spec_doc(&docs, &spec);
    let conditions = spec_conditions(&spec);
    assert!(conditions.contains("pcr8") && !conditions.contains("pcr0"));
    let (_, result) =
        evaluate(nitro_config(&corpus, "", &format!("conditions = {conditions}")).unwrap(), b64(&d.bytes), d.verify_at)
            .await;
    result.unwrap();
    // the twin: another PCR8 (another signing certificate)
    let pcr8 = spec["pcrs"]["pcr8"].as_str().unwrap();
    let other = conditions.replace(pcr8, &"97".repeat(48));
    let (_, result) =
        evaluate(nitro_config(&corpus, "", &format!("conditions = {other}")).unwrap(), b64(&d.bytes), d.verify_at)
            .await;
    let (reason, description) = result.err().unwrap();
    assert_eq!(reason, "policy_denied");
    assert!(description.contains("condition pcr8"), "{description}");
}

#[tokio::test]
async fn debug_documents_are_debug_enclave_unless_the_role_allows_them() {
    let Some(corpus) = corpus() else { return };
    let all = docs(&corpus);
    let debug: Vec<&Doc> = all.iter().filter(|d| d.debug).collect();
    assert_eq!(debug.len(), 3, "three debug documents in the corpus");
    for d in debug {
        // The documents' own PCR3 is not zero (the parent instance's IAM role); a role pinning it
        // is well-formed, and the document is still refused for being a debug enclave.
        let probe = format!("conditions = {{ pcr3 = \"{}\" }}", "ff".repeat(48));
        let config = nitro_config(&corpus, "require_nonce = false", &probe).unwrap();
        let (trace, result) = evaluate(config, b64(&d.bytes), d.verify_at).await;
        assert_eq!(result.err().map(|e| e.0), Some("debug_enclave"), "{}", d.file);
        let ev = trace.evidence.unwrap();
        assert_eq!(ev["debug"], "true");
        assert_eq!(ev["pcr0"], "0".repeat(96).as_str());
        let pcr3 = ev["pcr3"].as_str().unwrap().to_owned();
        assert_ne!(pcr3, "0".repeat(96));
        let own = format!("conditions = {{ pcr3 = \"{pcr3}\" }}");
        let (_, result) =
            evaluate(nitro_config(&corpus, "require_nonce = false", &own).unwrap(), b64(&d.bytes), d.verify_at).await;
        assert_eq!(result.err().map(|e| e.0), Some("debug_enclave"), "{}", d.file);
        // the twin: the same role saying allow_debug = true in so many words
        let allowed = format!("{own}\nallow_debug = true");
        let (_, result) =
            evaluate(nitro_config(&corpus, "require_nonce = false", &allowed).unwrap(), b64(&d.bytes), d.verify_at)
                .await;
        result.unwrap_or_else(|e| panic!("{}: {e:?}", d.file));
    }
}

#[tokio::test]
async fn zero_and_malformed_pcr_pins_are_refused_at_load() {
    let Some(corpus) = corpus() else { return };
    let zero = "0".repeat(96);
    let good = "d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329232902de3cf419af";
    for (conditions, extra, why) in [
        (format!("{{ pcr0 = \"{zero}\" }}"), "", "pcr_zero"),
        (format!("{{ pcr0 = \"{zero}\", pcr1 = \"{zero}\", pcr2 = \"{zero}\" }}"), "", "pcr_zero"),
        // the debug spec's all-zero policy, even for a role that allows debug enclaves
        (format!("{{ pcr0 = \"{zero}\", pcr8 = \"{zero}\" }}"), "allow_debug = true", "pcr_zero"),
        // one zero beside a real pin is still a pin that pins nothing
        (format!("{{ pcr0 = \"{good}\", pcr8 = \"{zero}\" }}"), "", "pcr_zero"),
        (format!("{{ pcr0 = \"{}\" }}", &good[..94]), "", "pcr_invalid"),
        (format!("{{ pcr0 = \"{}\" }}", good.to_uppercase()), "", "pcr_invalid"),
        // a list is checked value by value: a zero or malformed alternative is refused (C10)
        (format!("{{ pcr8 = [\"{zero}\"] }}"), "", "pcr_zero"),
        (format!("{{ pcr8 = [\"NOT-HEX\", \"{zero}\"] }}"), "", "pcr_invalid"),
        (format!("{{ pcr0 = [\"{good}\", \"{zero}\"] }}"), "", "pcr_zero"),
        ("{ module_id = \"i-0ec0e572c8263d8ff-enc0185c4fd382eeb25\" }".to_owned(), "", "policy_unscoped"),
        ("{}".to_owned(), "", "policy_unscoped"),
    ] {
        let err = nitro_config(&corpus, "", &format!("conditions = {conditions}\n{extra}")).err();
        let err = err.unwrap_or_else(|| panic!("{conditions} {extra}: loaded"));
        assert!(err.contains(why), "{conditions}: expected {why}: {err}");
    }
    // the twin: a list of good values is a pin
    assert!(nitro_config(&corpus, "", &format!("conditions = {{ pcr0 = [\"{good}\"] }}")).is_ok());
    // the incorrect-PCRs spec, as written (zeros and text that is not hex), is refused at load too
    let (_, spec) = specs(&corpus)
        .into_iter()
        .find(|(n, _)| n == "beta_valid_attestation_doc_in_cert_incorrect_pcrs_time_sensitive.json")
        .unwrap();
    assert!(!spec["shouldPcrsMatch"].as_bool().unwrap());
    let err = nitro_config(&corpus, "", &format!("conditions = {}", spec_conditions(&spec))).err().unwrap();
    assert!(err.contains("pcr_zero") && err.contains("pcr_invalid"), "{err}");
}

#[tokio::test]
async fn a_root_that_does_not_match_root_sha256_is_refused_at_load() {
    let Some(corpus) = corpus() else { return };
    let root = corpus.join("aws_nitro/root/AWS_NitroEnclaves_Root-G1.pem");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "https://broker.example.com"
[audit]
path = "audit.jsonl"
[[providers]]
name = "enclaves"
profile = "nitro"
root_cert_file = "{}"
root_sha256 = "{}"
[[roles]]
name = "r"
provider = "enclaves"
max_ttl = "5m"
conditions = {{ pcr8 = "97c5395a83c0d6a04d53ff962663c714c178c24500bf97f78456ed3721d922cf3f940614da4bb90107c439bc4a1443ca" }}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#,
        root.display(),
        AWS_NITRO_ROOT_G1_SHA256.replace('6', "7")
    );
    let raw: RawConfig = toml::from_str(&text).unwrap();
    let err = Config::from_raw(raw, Path::new(".")).err().unwrap().to_string();
    assert!(err.contains("root_cert_file") && err.contains("SHA-256"), "{err}");
}

#[tokio::test]
async fn every_encoding_of_a_document_is_the_same_document() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let d = doc(&docs, "non-debug_2023-01-18");
    assert_eq!(d.bytes[0], 0x84, "untagged COSE_Sign1 array");
    let conditions = format!(
        "conditions = {{ pcr0 = \"{}\" }}",
        "d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329232902de3cf419af"
    );
    let mut tagged = vec![0xd2]; // COSE_Sign1 tag 18
    tagged.extend_from_slice(&d.bytes);
    let standard = b64(&d.bytes);
    let wrapped: String =
        standard.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
    let mut ids = Vec::new();
    for (what, token) in [
        ("standard", standard.clone()),
        ("url-safe unpadded", URL_SAFE_NO_PAD.encode(&d.bytes)),
        ("line breaks", wrapped),
        ("tagged", b64(&tagged)),
    ] {
        let (_, result) = evaluate(nitro_config(&corpus, "", &conditions).unwrap(), token, d.verify_at).await;
        let (id, _, _) = result.unwrap_or_else(|e| panic!("{what}: {e:?}"));
        ids.push(id);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one replay id: {ids:?}");
    // the corpus's own base64 text file, as is
    let g = doc(&docs, "valid-attestation-doc-base64_2023-09-18");
    let text = std::fs::read_to_string(corpus.join(&g.file)).unwrap();
    let (_, result) = evaluate(
        nitro_config(&corpus, "", "conditions = { pcr3 = \"4a9329d69c836267b18abbf9f4a38889124490453419e426818626348d21f989dc930b1562682a9082887454e53425aa\" }\nallow_debug = true").unwrap(),
        text,
        g.verify_at,
    )
    .await;
    result.unwrap();
    // not a document: truncated, and one flipped byte in the signature (the last bytes)
    let (_, result) =
        evaluate(nitro_config(&corpus, "", &conditions).unwrap(), b64(&d.bytes[..d.bytes.len() / 2]), d.verify_at)
            .await;
    assert_eq!(result.err().map(|e| e.0), Some("attestation_malformed"));
    let mut flipped = d.bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let (_, result) = evaluate(nitro_config(&corpus, "", &conditions).unwrap(), b64(&flipped), d.verify_at).await;
    assert_eq!(result.err().map(|e| e.0), Some("signature_invalid"));
}

/// The grant consumes the document's nonce as a broker nonce. The corpus documents predate any
/// broker, so the test registers each document's own nonce as issued (ATTACKS 31).
#[tokio::test]
async fn the_grant_takes_the_documents_nonce_as_a_broker_nonce() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let d = doc(&docs, "valid-attestation-doc-bytes_2022-10-13");
    let dir = tempfile::tempdir().unwrap();
    let conditions = format!("conditions = {PCRS_2022_10_13}");
    for require_nonce in ["require_nonce = true", "require_nonce = false"] {
        // A fresh broker per case: a document refused for its nonce is spent (the replay mark
        // comes first, so a replay is called `token_replayed`), and its nonce can never become
        // valid later anyway.
        let fresh = |tag: &'static str| {
            let config = nitro_config(&corpus, require_nonce, &conditions).unwrap();
            let audit = AuditLog::open(&dir.path().join(format!("audit-{}-{tag}.jsonl", require_nonce.len()))).unwrap();
            broker(config, Arc::new(FixedClock(d.verify_at)), Some(audit))
        };
        let req = || request(b64(&d.bytes), NITRO);
        // not issued by this broker: refused, even where the provider does not require a nonce
        // (a nonce the document carries is always checked)
        let b = fresh("unissued").await;
        let refused = b.exchange(req(), "t1").await.err().unwrap();
        assert_eq!(refused.reason, "nonce_invalid", "{require_nonce}: {}", refused.description);
        // registered as issued (unbound), then the grant goes through, once; the replay is named
        let b = fresh("issued").await;
        let (_, allowed) = b.evaluate(&request(b64(&d.bytes), NITRO), d.verify_at).await;
        let nonce = allowed.unwrap().nonce().unwrap().to_owned();
        b.state.put_nonce(&nonce, "", d.verify_at + 60, d.verify_at).await.unwrap();
        let ok = b.exchange(req(), "t2").await.unwrap_or_else(|e| panic!("{require_nonce}: {}", e.description));
        assert!(ok.expires_in > 0 && ok.expires_in <= 300);
        let again = b.exchange(req(), "t3").await.err().unwrap();
        assert_eq!(again.reason, "token_replayed", "{}", again.description);
        // bound to another role: refused
        let b = fresh("other-role").await;
        b.state.put_nonce(&nonce, "another-role", d.verify_at + 60, d.verify_at).await.unwrap();
        assert_eq!(b.exchange(req(), "t4").await.err().unwrap().reason, "nonce_invalid");
    }
}

/// A broker nonce lives `server::NONCE_TTL` (60 s) from its issue. The document's own nonce is
/// registered as the nonce endpoint does (`put_nonce(n, binding, now + NONCE_TTL, now)`) at two
/// issue times: 61 s before the exchange it has expired (`nonce_invalid`), 59 s before it is good.
#[tokio::test]
async fn an_expired_broker_nonce_is_refused() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let d = doc(&docs, "valid-attestation-doc-bytes_2022-10-13");
    let dir = tempfile::tempdir().unwrap();
    let ttl = ephemera::exchange::NONCE_TTL;
    assert_eq!(ttl, 60);
    for (age, expect_ok) in [(ttl + 1, false), (ttl - 1, true)] {
        let config = nitro_config(&corpus, "", &format!("conditions = {PCRS_2022_10_13}")).unwrap();
        let audit = AuditLog::open(&dir.path().join(format!("audit-{age}.jsonl"))).unwrap();
        let b = broker(config, Arc::new(FixedClock(d.verify_at)), Some(audit)).await;
        let (_, allowed) = b.evaluate(&request(b64(&d.bytes), NITRO), d.verify_at).await;
        let nonce = allowed.unwrap().nonce().unwrap().to_owned();
        let issued = d.verify_at - age;
        b.state.put_nonce(&nonce, "r", issued + ttl, issued).await.unwrap();
        let result = b.exchange(request(b64(&d.bytes), NITRO), "t").await;
        match (expect_ok, result) {
            (true, Ok(r)) => assert!(r.expires_in > 0),
            (false, Err(e)) => assert_eq!(e.reason, "nonce_invalid", "{}", e.description),
            (_, r) => panic!("nonce issued {age} s before: {:?}", r.map(|r| r.expires_in).map_err(|e| e.description)),
        }
    }
}

/// A document without a nonce, on a provider that does not require one: single use by the
/// document (the hash of what is signed), tagged or not.
#[tokio::test]
async fn without_a_nonce_a_document_is_single_use() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let d = doc(&docs, "debug-mode-attestation-doc-bytes_2022-10-12");
    let dir = tempfile::tempdir().unwrap();
    let conditions = "conditions = { pcr3 = \"4a9329d69c836267b18abbf9f4a38889124490453419e426818626348d21f989dc930b1562682a9082887454e53425aa\" }\nallow_debug = true";
    // required: refused for want of a nonce
    let config = nitro_config(&corpus, "", conditions).unwrap();
    let (_, result) = evaluate(config, b64(&d.bytes), d.verify_at).await;
    assert_eq!(result.err().map(|e| e.0), Some("nonce_invalid"));
    let config = nitro_config(&corpus, "require_nonce = false", conditions).unwrap();
    let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
    let b = broker(config, Arc::new(FixedClock(d.verify_at)), Some(audit)).await;
    let ok = b.exchange(request(b64(&d.bytes), NITRO), "t1").await.unwrap();
    assert!(ok.expires_in > 0 && ok.expires_in <= 300);
    assert_eq!(b.exchange(request(b64(&d.bytes), NITRO), "t2").await.err().unwrap().reason, "token_replayed");
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&d.bytes);
    assert_eq!(b.exchange(request(b64(&tagged), NITRO), "t3").await.err().unwrap().reason, "token_replayed");
    let records = ephemera::audit::verify_chain(&dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(records, 3);
}

// ------------------------------------------------------------------------------------------------
// EC2 instance identity documents: single use and its window

/// A test stand-in for AWS's regional certificate (self-signed RSA-2048, 2025-01-01..2045-01-01;
/// its key signed IID_DOCUMENT below and was then thrown away).
const IID_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDfjCCAmagAwIBAgIUa41quN7TG3ruybHMVNO9GHTDC1YwDQYJKoZIhvcNAQEL
BQAwVzELMAkGA1UEBhMCVVMxJzAlBgNVBAoMHkVwaGVtZXJhIHRlc3Qgc3RhbmQt
aW4gZm9yIEFXUzEfMB0GA1UEAwwWZWMyLWlpZC10ZXN0LXVzLWVhc3QtMTAeFw0y
NTAxMDEwMDAwMDBaFw00NTAxMDEwMDAwMDBaMFcxCzAJBgNVBAYTAlVTMScwJQYD
VQQKDB5FcGhlbWVyYSB0ZXN0IHN0YW5kLWluIGZvciBBV1MxHzAdBgNVBAMMFmVj
Mi1paWQtdGVzdC11cy1lYXN0LTEwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEK
AoIBAQCm1Uhh2nKaCCc2X7VOj09mI4PFJPvvr5QWJYBZUXv4uV5m0Zqj/5cIObjE
9wHt3y6SCln/rYsKLRaFk7EqcIownduUyYjRgiWbppPOZnSFIhVpPB6ImhyShtkm
Nsl66zdFXuve0R8ZPi62TtKz9jIZbVHqJXMmSplDKU3B7CmE8ubURatsAF4GKNZL
nkmsLaquoVhpcn4mF0SVv7ZmCiQ4IwNOXwBqCcXMxk5fmnLeHqq69CIEcBJ+R8+T
V6cDAEo54Us9F2M2VMSKtif3+RDoR/46VLwFwHrNRtEB6g/v5hVDpr/diqb0d7ql
FITkZ5sRxWO5zwHnYfEpTO+VvpUPAgMBAAGjQjBAMA8GA1UdEwEB/wQFMAMBAf8w
DgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBRoVKQoGlxptuIwOoPk0Tlx06+UVTAN
BgkqhkiG9w0BAQsFAAOCAQEAl+U/XzCJgU7KBW1a3S+YbjUYOLdYcTv0p+ABbIJM
BbVToUgiomjKBUG8CDASuhURgC+riovgVzr+rnwTB9xr1+Efq9Y45l4Wmdvsv0Se
zwIIkKZzfxFm4pIuEcNpjW4r74ZsF/IHHRv7wPj1PkjZykRHYNg2NCv2L41hQauA
FPqU5fcSHH3X7UORg+DBuJbB0ajA6o7BSWnE0NJag9j5z8ubQqFb2surB7vsZaQ8
2GVijuIvg5NY/YxEXuEpX6+87AIjhgnM5Tj4W3OGhy352wrhwP1XxnINLg11AYqf
UrIvqckdtiffyjzAqXNmLfFrDZ5C0n63L+eQ0v5OtehIaA==
-----END CERTIFICATE-----
";

const IID_DOCUMENT: &str = "{\n  \"accountId\" : \"123456789012\",\n  \"architecture\" : \"x86_64\",\n  \"availabilityZone\" : \"us-east-1a\",\n  \"billingProducts\" : null,\n  \"devpayProductCodes\" : null,\n  \"marketplaceProductCodes\" : null,\n  \"imageId\" : \"ami-0abcdef1234567890\",\n  \"instanceId\" : \"i-0a1b2c3d4e5f60718\",\n  \"instanceType\" : \"t3.micro\",\n  \"kernelId\" : null,\n  \"pendingTime\" : \"2026-12-01T08:00:00Z\",\n  \"privateIp\" : \"10.0.1.23\",\n  \"ramdiskId\" : null,\n  \"region\" : \"us-east-1\",\n  \"version\" : \"2017-09-30\"\n}";

/// RSA PKCS#1 v1.5 SHA-256 over the exact bytes of IID_DOCUMENT.
const IID_SIGNATURE: &str = "QtnSJcdRubpetwhFL/ROo0gdc4dd22r19VBp5KcAIpM7k4xXKHwOOsV1jf5DmZGK0feSxh37OkME/qwiPsl78dHWE/go4t6pV3+mt6SlVjmC4ob/RVEYJEYZ1vvlNztJOQ2qBtCnI7S/H8U7Y/QTcLxlHrzp5QZMNPGw869OCV/XXkF7gXqkc6i7MslwDpQKT5B3DTG6WlNC3D8SpoZ7KG0v8W/paZjs0HJjOIMs8RQkDOfLa6o5iJRxuHWx8jcmYQNyCfEJhq5jM6z8QmB6au6mcxOKCmLLzIrVZ3GUX3pI/3SERDmsdG7XQFFBSInimKfBHs9cS70oQYH8h4dd3g==";

/// 2027-01-15T08:00:00Z: inside the certificate's validity, after the instance's pendingTime.
const IID_T0: i64 = 1_800_000_000;

/// A broker with one aws-ec2-iid provider and role `r` (max_ttl 1h), on a clock the test moves.
async fn iid_broker(dir: &Path) -> (TestBroker, Arc<SteppedClock>) {
    std::fs::write(dir.join("aws-rsa.pem"), IID_CERT).unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "https://broker.example.com"
[audit]
path = "audit.jsonl"
[[providers]]
name = "fleet"
profile = "aws-ec2-iid"
certificates = [{{ region = "us-east-1", file = "{}" }}]
[[roles]]
name = "r"
provider = "fleet"
max_ttl = "1h"
accept_replayable = true
conditions = {{ accountId = "123456789012" }}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#,
        dir.join("aws-rsa.pem").display()
    );
    let raw: RawConfig = toml::from_str(&text).unwrap();
    let config = Config::from_raw(raw, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let clock = Arc::new(SteppedClock(AtomicI64::new(IID_T0)));
    let audit = AuditLog::open(&dir.join("audit.jsonl")).unwrap();
    (broker(config, clock.clone(), Some(audit)).await, clock)
}

fn iid_token() -> String {
    serde_json::json!({ "document": IID_DOCUMENT, "signature": IID_SIGNATURE }).to_string()
}

#[tokio::test]
async fn an_iid_is_single_use_and_its_credential_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (b, clock) = iid_broker(dir.path()).await;
    let ok = b.exchange(request(iid_token(), EC2_IID), "t1").await.unwrap();
    assert_eq!(ok.expires_in, 300, "an IID backs five minutes at most, whatever max_ttl says");
    clock.0.store(IID_T0 + 60, Ordering::SeqCst);
    assert_eq!(b.exchange(request(iid_token(), EC2_IID), "t2").await.err().unwrap().reason, "token_replayed");
    // an IID with one added space keeps its signature no more
    let spaced = serde_json::json!({ "document": IID_DOCUMENT.replacen(" :", "  :", 1), "signature": IID_SIGNATURE })
        .to_string();
    assert_eq!(b.exchange(request(spaced, EC2_IID), "t3").await.err().unwrap().reason, "signature_invalid");
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let allow: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allow.len(), 1);
    assert_eq!(allow[0]["replayable"], true);
}

/// ATTACKS 39: single use per (instanceId, pendingTime). An IID is valid for the instance's
/// whole life, so the broker remembers it a year, far past the 300 s credential cap: the same
/// stolen IID does not mint again five minutes later.
#[tokio::test]
async fn an_iid_is_still_refused_after_the_credential_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (b, clock) = iid_broker(dir.path()).await;
    b.exchange(request(iid_token(), EC2_IID), "t1").await.unwrap();
    clock.0.store(IID_T0 + 400, Ordering::SeqCst);
    let again = b.exchange(request(iid_token(), EC2_IID), "t2").await;
    assert_eq!(again.err().map(|e| e.reason), Some("token_replayed"), "the same IID minted a second credential");
}

// ------------------------------------------------------------------------------------------------
// the example config

/// examples/nitro-enclave.toml pins the 2023-01-18 corpus enclave's PCRs: its document is allowed
/// at its own time through the example exactly as shipped, and refused today.
#[tokio::test]
async fn the_nitro_example_admits_the_enclave_it_pins() {
    let Some(corpus) = corpus() else { return };
    let docs = docs(&corpus);
    let d = doc(&docs, "non-debug_2023-01-18");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nitro-enclave.toml");
    let load = || Config::load(&example).unwrap_or_else(|e| panic!("{e}"));
    let req = ExchangeRequest {
        subject_token: SubjectToken::new(b64(&d.bytes)),
        subject_token_type: NITRO.into(),
        role: "partner-api".into(),
        requested_token_type: None,
        authorization_details: None,
    };
    let b = broker(load(), Arc::new(FixedClock(d.verify_at)), None).await;
    let (trace, result) = b.evaluate(&req, d.verify_at).await;
    result.unwrap_or_else(|e| panic!("{}", e.refusal().description));
    assert_eq!(trace.evidence.unwrap()["iss"], format!("urn:ephemera:nitro:{AWS_NITRO_ROOT_G1_SHA256}").as_str());
    let today = now_real();
    let b = broker(load(), Arc::new(FixedClock(today)), None).await;
    let (_, result) = b.evaluate(&req, today).await;
    assert_eq!(result.err().map(|e| e.refusal().reason), Some("cert_expired"));
}

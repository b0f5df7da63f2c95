//! AWS Nitro Enclaves: the real corpus documents at their own time and today, the evervault
//! PCR specs, tampering, and synthetic documents under a test root (root substitution, chain
//! order, freshness, nonce, CBOR robustness).

use crate::harness::{self, Ca, Spec, T0, assert_slug};
use aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING;
use ciborium::Value;
use ephemera_attestation::nitro::{self, NitroVerifier};
use ephemera_attestation::{AttestationKind, Evidence, KeyBinding};
use rcgen::{DnType, PKCS_ECDSA_P384_SHA384};
use std::collections::BTreeMap;
use std::path::Path;

// ---------------------------------------------------------------- the corpus

fn real_root(corpus: &Path) -> Vec<u8> {
    harness::pem_to_der(&std::fs::read_to_string(corpus.join("aws_nitro/root/AWS_NitroEnclaves_Root-G1.pem")).unwrap())
}

fn real_verifier(corpus: &Path) -> NitroVerifier {
    let mut v = NitroVerifier::with_pinned_sha256(real_root(corpus), nitro::AWS_NITRO_ROOT_G1_SHA256).unwrap();
    // The corpus documents predate any broker nonce; the nonce path is tested synthetically.
    v.require_nonce = false;
    v
}

struct CorpusDoc {
    file: String,
    bytes: Vec<u8>,
    verify_at: i64,
    module_id: String,
    debug: bool,
}

/// Every Nitro document of MANIFEST.json, decoded as the broker would receive it.
fn corpus_docs(corpus: &Path) -> Vec<CorpusDoc> {
    let manifest: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(corpus.join("MANIFEST.json")).unwrap()).unwrap();
    let docs: Vec<CorpusDoc> = manifest
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("AWS Nitro Enclaves attestation document")))
        .map(|e| {
            let file = e["file"].as_str().unwrap().to_owned();
            let raw = std::fs::read(corpus.join(&file)).unwrap();
            let bytes = if file.ends_with(".b64") {
                nitro::decode_document_text(std::str::from_utf8(&raw).unwrap(), 16 * 1024).unwrap()
            } else {
                raw
            };
            CorpusDoc {
                bytes,
                verify_at: e["verify_at"].as_i64().unwrap(),
                module_id: e["module_id"].as_str().unwrap().to_owned(),
                debug: e["pcr0_prefix"].as_str().unwrap().starts_with("000000"),
                file,
            }
        })
        .collect();
    assert_eq!(docs.len(), 5, "MANIFEST lists five Nitro documents");
    docs
}

fn doc_named<'a>(docs: &'a [CorpusDoc], part: &str) -> &'a CorpusDoc {
    docs.iter().find(|d| d.file.contains(part)).unwrap()
}

#[test]
fn corpus_documents_verify_at_their_own_time_with_the_real_root() {
    let Some(corpus) = harness::corpus() else { return };
    let v = real_verifier(&corpus);
    assert_eq!(v.root_sha256(), nitro::AWS_NITRO_ROOT_G1_SHA256);
    for d in corpus_docs(&corpus) {
        let e = v.verify(&d.bytes, d.verify_at).unwrap_or_else(|e| panic!("{}: {e}", d.file));
        assert_eq!(e.kind(), AttestationKind::Nitro);
        assert_eq!(e.subject(), format!("nitro:{}", d.module_id), "{}", d.file);
        assert_eq!(e.attributes()["module_id"], d.module_id.as_str());
        assert_eq!(e.attributes()["digest"], "SHA384");
        assert_eq!(e.debug(), d.debug, "{}", d.file);
        assert_eq!(e.issued_at(), d.verify_at);
        assert!(e.not_after() > d.verify_at && e.not_after() <= d.verify_at + 300);
        assert!(e.replay_id().starts_with("nitro:") && !e.replayable());
        for i in 0..16 {
            assert_eq!(e.attributes()[&format!("pcr{i}")].as_str().unwrap().len(), 96);
        }
    }
}

#[test]
fn corpus_documents_are_refused_today_with_cert_expired() {
    let Some(corpus) = harness::corpus() else { return };
    let v = real_verifier(&corpus);
    for d in corpus_docs(&corpus) {
        assert_slug(v.verify(&d.bytes, harness::now_real()), "cert_expired");
    }
}

#[test]
fn corpus_nonce_is_reported_and_required_when_configured() {
    let Some(corpus) = harness::corpus() else { return };
    let docs = corpus_docs(&corpus);
    let mut v = real_verifier(&corpus);
    v.require_nonce = true;
    let with = doc_named(&docs, "valid-attestation-doc-bytes_2022-10-13");
    let e = v.verify(&with.bytes, with.verify_at).unwrap();
    assert_eq!(e.nonce().map(<[u8]>::len), Some(256));
    let without = doc_named(&docs, "debug-mode-attestation-doc-bytes_2022-10-12");
    assert_slug(v.verify(&without.bytes, without.verify_at), "nonce_invalid");
    v.require_nonce = false;
    assert_eq!(v.verify(&without.bytes, without.verify_at).unwrap().nonce(), None);
}

#[test]
fn corpus_public_key_becomes_a_key_binding() {
    let Some(corpus) = harness::corpus() else { return };
    let docs = corpus_docs(&corpus);
    let v = real_verifier(&corpus);
    // This document's public_key is not a SubjectPublicKeyInfo: bound by its SHA-256.
    let d = doc_named(&docs, "debug-mode-attestation-doc-bytes_2022-10-12");
    let e = v.verify(&d.bytes, d.verify_at).unwrap();
    assert!(matches!(e.key_binding(), Some(KeyBinding::PublicKeySha256(_))));
    assert_eq!(e.attributes()["public_key_present"], true);
    assert_eq!(e.attributes()["user_data"], harness::b64url(b"hello, world!"));
    let other = doc_named(&docs, "valid-attestation-doc-bytes_2022-10-13");
    assert_eq!(v.verify(&other.bytes, other.verify_at).unwrap().key_binding(), None);
}

/// Evervault's spec files name their test-data paths; these are the corpus files they became
/// (corpus PROVENANCE).
fn spec_document<'a>(docs: &'a [CorpusDoc], spec: &serde_json::Value) -> &'a CorpusDoc {
    let file = spec.get("file").or_else(|| spec.get("attestationDoc")).and_then(|f| f.as_str()).unwrap();
    let corpus_name = match file {
        f if f.contains("non-debug-cert-containing-attestation-document-18-1-23") => "non-debug_2023-01-18",
        f if f.contains("debug-mode-cert-containing-attestation-doc-18-1-23") => "evervault_debug_2023-01-18",
        "test-data/valid-attestation-doc-base64" => "valid-attestation-doc-base64_2023-09-18",
        other => panic!("unmapped spec file {other}"),
    };
    doc_named(docs, corpus_name)
}

/// A spec's PCRs as a policy. Two values in the incorrect-PCR spec are not hex at all
/// (`...incorrect...`): such a value can never equal a measurement, so it stands as the SHA-384
/// of its text (a non-zero 48-byte value that matches nothing).
fn spec_policy(spec: &serde_json::Value) -> BTreeMap<u8, Vec<u8>> {
    spec["pcrs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let index: u8 = k.strip_prefix("pcr").unwrap().parse().unwrap();
            let text = v.as_str().unwrap();
            let hex: BTreeMap<u8, String> = BTreeMap::from([(index, text.to_owned())]);
            let bytes = match nitro::parse_pcr_policy(&hex) {
                Ok(p) => p[&index].clone(),
                Err(e) if e.slug() == "policy_unscoped" && text.bytes().all(|b| b == b'0') && text.len() == 96 => {
                    vec![0u8; 48]
                }
                Err(_) => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, text.as_bytes()).as_ref().to_vec(),
            };
            (index, bytes)
        })
        .collect()
}

#[test]
fn evervault_pcr_specs() {
    let Some(corpus) = harness::corpus() else { return };
    let docs = corpus_docs(&corpus);
    let v = real_verifier(&corpus);
    let dir = corpus.join("aws_nitro/evervault_test-specs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let doc = spec_document(&docs, &spec);
        let evidence = v.verify(&doc.bytes, doc.verify_at).unwrap();
        harness::assert_declared(&evidence);
        assert!(spec["isAttestationDocValid"].as_bool().unwrap());
        let policy = spec_policy(&spec);
        let result = nitro::check_pcrs(&evidence, &policy, false);
        match (spec["shouldPcrsMatch"].as_bool().unwrap(), evidence.debug()) {
            // ATTACKS 32: debug documents are refused even when the policy lists their zeros.
            (_, true) => {
                assert_slug(result, "debug_enclave");
                // and allowing debug does not make an all-zero policy acceptable
                assert_slug(nitro::check_pcrs(&evidence, &policy, true), "policy_unscoped");
            }
            (true, false) => result.unwrap_or_else(|e| panic!("{name}: {e}")),
            (false, false) => {
                assert_slug(result, "pcr_mismatch");
            }
        }
        seen += 1;
    }
    assert_eq!(seen, 6);
}

#[test]
fn pcr8_only_policy_matches_and_a_wrong_pcr8_does_not() {
    let Some(corpus) = harness::corpus() else { return };
    let docs = corpus_docs(&corpus);
    let v = real_verifier(&corpus);
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            corpus
                .join("aws_nitro/evervault_test-specs/beta_valid_attestation_doc_check_pcr8_only_time_sensitive.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let doc = spec_document(&docs, &spec);
    let e = v.verify(&doc.bytes, doc.verify_at).unwrap();
    let mut policy = spec_policy(&spec);
    assert_eq!(policy.keys().copied().collect::<Vec<_>>(), vec![8]);
    nitro::check_pcrs(&e, &policy, false).unwrap();
    policy.get_mut(&8).unwrap()[0] ^= 1;
    assert_slug(nitro::check_pcrs(&e, &policy, false), "pcr_mismatch");
    // a PCR the document does not have
    let absent = BTreeMap::from([(20u8, vec![7u8; 48])]);
    assert_slug(nitro::check_pcrs(&e, &absent, false), "pcr_mismatch");
}

// ---------------------------------------------------------------- tampering

/// The document's COSE_Sign1 items: [protected, unprotected, payload, signature].
fn items(doc: &[u8]) -> Vec<Value> {
    match ciborium::de::from_reader::<Value, _>(doc).unwrap() {
        Value::Array(a) => a,
        Value::Tag(18, inner) => match *inner {
            Value::Array(a) => a,
            _ => panic!(),
        },
        _ => panic!(),
    }
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_bytes().unwrap().clone()
}

fn payload_map(payload: &[u8]) -> Vec<(Value, Value)> {
    match ciborium::de::from_reader::<Value, _>(payload).unwrap() {
        Value::Map(m) => m,
        _ => panic!(),
    }
}

fn get<'a>(map: &'a mut [(Value, Value)], key: &str) -> &'a mut Value {
    &mut map.iter_mut().find(|(k, _)| k.as_text() == Some(key)).unwrap().1
}

/// Re-encodes the document after `f` changed its payload map (the signature is left as it was).
fn with_payload(doc: &[u8], f: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let mut it = items(doc);
    let mut map = payload_map(&bytes_of(&it[2]));
    f(&mut map);
    it[2] = Value::Bytes(encode(&Value::Map(map)));
    encode(&Value::Array(it))
}

#[test]
fn tampering_with_a_real_document_is_refused_with_distinct_reasons() {
    let Some(corpus) = harness::corpus() else { return };
    let docs = corpus_docs(&corpus);
    let v = real_verifier(&corpus);
    let d = doc_named(&docs, "valid-attestation-doc-bytes_2022-10-13");
    let at = d.verify_at;
    // The re-encoding used below is faithful: untouched, it gives the same bytes.
    assert_eq!(encode(&Value::Array(items(&d.bytes))), d.bytes);

    // One byte of the payload (a module_id character): the signature no longer verifies.
    let doc = with_payload(&d.bytes, |m| {
        let Value::Text(t) = get(m, "module_id") else { panic!() };
        *t = t.replacen('i', "j", 1);
    });
    assert_slug(v.verify(&doc, at), "signature_invalid");
    // One byte of a PCR.
    let doc = with_payload(&d.bytes, |m| {
        let Value::Map(p) = get(m, "pcrs") else { panic!() };
        let Value::Bytes(b) = &mut p[0].1 else { panic!() };
        b[5] ^= 0x01;
    });
    assert_slug(v.verify(&doc, at), "signature_invalid");

    // One byte of the signature.
    let mut it = items(&d.bytes);
    let Value::Bytes(sig) = &mut it[3] else { panic!() };
    sig[10] ^= 0x01;
    assert_slug(v.verify(&encode(&Value::Array(it)), at), "signature_invalid");
    // A signature of the wrong length.
    let mut it = items(&d.bytes);
    let Value::Bytes(sig) = &mut it[3] else { panic!() };
    sig.pop();
    assert_slug(v.verify(&encode(&Value::Array(it)), at), "signature_invalid");

    // One byte of the protected header: {1: -35} → {1: -36}.
    let mut it = items(&d.bytes);
    assert_eq!(bytes_of(&it[0]), vec![0xa1, 0x01, 0x38, 0x22]);
    it[0] = Value::Bytes(vec![0xa1, 0x01, 0x38, 0x23]);
    assert_slug(v.verify(&encode(&Value::Array(it)), at), "cose_header_invalid");

    // One byte in each certificate (the last byte of its own signature value).
    let cabundle_len = {
        let mut m = payload_map(&bytes_of(&items(&d.bytes)[2]));
        get(&mut m, "cabundle").as_array().unwrap().len()
    };
    assert_eq!(cabundle_len, 4);
    for i in 0..cabundle_len {
        let doc = with_payload(&d.bytes, |m| {
            let Value::Array(a) = get(m, "cabundle") else { panic!() };
            let Value::Bytes(c) = &mut a[i] else { panic!() };
            *c.last_mut().unwrap() ^= 0x01;
        });
        // the root is pinned byte for byte; the others fail their issuer's signature
        assert_slug(v.verify(&doc, at), if i == 0 { "untrusted_root" } else { "chain_invalid" });
    }
    let doc = with_payload(&d.bytes, |m| {
        let Value::Bytes(c) = get(m, "certificate") else { panic!() };
        *c.last_mut().unwrap() ^= 0x01;
    });
    assert_slug(v.verify(&doc, at), "chain_invalid");
    // A certificate that no longer parses.
    let doc = with_payload(&d.bytes, |m| {
        let Value::Bytes(c) = get(m, "certificate") else { panic!() };
        c[1] ^= 0x40;
    });
    assert_slug(v.verify(&doc, at), "attestation_malformed");

    // Truncated, and with trailing bytes.
    for cut in [1, 100, d.bytes.len() / 2, d.bytes.len() - 1] {
        assert_slug(v.verify(&d.bytes[..cut], at), "attestation_malformed");
    }
    assert_slug(v.verify(&[], at), "attestation_malformed");
    let mut trailing = d.bytes.clone();
    trailing.push(0x00);
    assert_slug(v.verify(&trailing, at), "attestation_malformed");
}

#[test]
fn tagged_and_untagged_documents_are_both_accepted() {
    let Some(corpus) = harness::corpus() else { return };
    let docs = corpus_docs(&corpus);
    let v = real_verifier(&corpus);
    let d = doc_named(&docs, "non-debug_2023-01-18");
    assert_eq!(d.bytes[0], 0x84, "the corpus documents are untagged");
    let tagged = encode(&Value::Tag(18, Box::new(Value::Array(items(&d.bytes)))));
    assert_eq!(tagged[0], 0xd2);
    let a = v.verify(&d.bytes, d.verify_at).unwrap();
    let b = v.verify(&tagged, d.verify_at).unwrap();
    assert_eq!(a.replay_id(), b.replay_id(), "the tag is not part of what is signed");
    // Another tag, or the tag twice, is not COSE_Sign1.
    let other = encode(&Value::Tag(98, Box::new(Value::Array(items(&d.bytes)))));
    assert_slug(v.verify(&other, d.verify_at), "attestation_malformed");
    let twice = encode(&Value::Tag(18, Box::new(Value::Tag(18, Box::new(Value::Array(items(&d.bytes)))))));
    assert_slug(v.verify(&twice, d.verify_at), "attestation_malformed");
}

#[test]
fn header_rules_on_a_real_document() {
    let Some(corpus) = harness::corpus() else { return };
    let docs = corpus_docs(&corpus);
    let v = real_verifier(&corpus);
    let d = doc_named(&docs, "non-debug_2023-01-18");
    let variant = |protected: Vec<u8>, unprotected: Vec<(Value, Value)>| {
        let mut it = items(&d.bytes);
        it[0] = Value::Bytes(protected);
        it[1] = Value::Map(unprotected);
        v.verify(&encode(&Value::Array(it)), d.verify_at)
    };
    // alg ES256 (-7)
    assert_slug(variant(vec![0xa1, 0x01, 0x26], vec![]), "cose_header_invalid");
    // alg only in the unprotected header
    assert_slug(variant(vec![], vec![(Value::Integer(1.into()), Value::Integer((-35).into()))]), "cose_header_invalid");
    assert_slug(
        variant(vec![0xa0], vec![(Value::Integer(1.into()), Value::Integer((-35).into()))]),
        "cose_header_invalid",
    );
    // a non-empty unprotected header next to the right protected one
    assert_slug(
        variant(vec![0xa1, 0x01, 0x38, 0x22], vec![(Value::Integer(4.into()), Value::Bytes(vec![1]))]),
        "cose_header_invalid",
    );
    // extra protected parameters: kid, crit
    assert_slug(variant(vec![0xa2, 0x01, 0x38, 0x22, 0x04, 0x41, 0x01], vec![]), "cose_header_invalid");
    assert_slug(variant(vec![0xa2, 0x01, 0x38, 0x22, 0x02, 0x81, 0x04], vec![]), "cose_header_invalid");
    // duplicate alg in the protected map
    assert_slug(variant(vec![0xa2, 0x01, 0x38, 0x22, 0x01, 0x38, 0x22], vec![]), "cose_header_invalid");
    // the untouched header still verifies
    variant(vec![0xa1, 0x01, 0x38, 0x22], vec![]).unwrap();
}

// ---------------------------------------------------------------- synthetic documents

/// A test stand-in for AWS's chain: root (the real root's exact subject) → regional → zonal →
/// per-enclave leaf, all P-384.
struct TestChain {
    root: Ca,
    regional: Ca,
    zonal: Ca,
    leaf: Ca,
}

fn aws_like_dn(cn: &str) -> Vec<(DnType, &str)> {
    vec![
        (DnType::CountryName, "US"),
        (DnType::OrganizationName, "Amazon"),
        (DnType::OrganizationalUnitName, "AWS"),
        (DnType::CommonName, cn),
    ]
}

impl TestChain {
    fn new() -> TestChain {
        let root =
            Spec { dn: aws_like_dn("aws.nitro-enclaves"), ..Spec::ca("aws.nitro-enclaves", &PKCS_ECDSA_P384_SHA384) }
                .self_signed();
        let regional = Spec::ca("us-east-1.aws.nitro-enclaves", &PKCS_ECDSA_P384_SHA384).issued_by(&root);
        let zonal = Spec::ca("use1-az4.aws.nitro-enclaves", &PKCS_ECDSA_P384_SHA384).issued_by(&regional);
        let leaf =
            Spec::leaf("i-0123456789abcdef0-enc0123456789abcdef.use1-az4.aws.nitro-enclaves", &PKCS_ECDSA_P384_SHA384)
                .issued_by(&zonal);
        TestChain { root, regional, zonal, leaf }
    }

    fn verifier(&self) -> NitroVerifier {
        NitroVerifier::new(self.root.der.clone()).unwrap()
    }

    fn cabundle(&self) -> Vec<Vec<u8>> {
        vec![self.root.der.clone(), self.regional.der.clone(), self.zonal.der.clone()]
    }
}

/// The payload of a synthetic document, as CBOR map entries in AWS's order.
fn payload(chain: &TestChain, timestamp_ms: u64, nonce: Option<&[u8]>) -> Vec<(Value, Value)> {
    let pcrs: Vec<(Value, Value)> = (0..16)
        .map(|i: i64| (Value::Integer(i.into()), Value::Bytes(vec![if i < 3 { 0x11 * (i as u8 + 1) } else { 0 }; 48])))
        .collect();
    let t = |s: &str| Value::Text(s.to_owned());
    vec![
        (t("module_id"), t("i-0123456789abcdef0-enc0123456789abcdef")),
        (t("digest"), t("SHA384")),
        (t("timestamp"), Value::Integer(timestamp_ms.into())),
        (t("pcrs"), Value::Map(pcrs)),
        (t("certificate"), Value::Bytes(chain.leaf.der.clone())),
        (t("cabundle"), Value::Array(chain.cabundle().into_iter().map(Value::Bytes).collect())),
        (t("public_key"), Value::Null),
        (t("user_data"), Value::Null),
        (t("nonce"), nonce.map(|n| Value::Bytes(n.to_vec())).unwrap_or(Value::Null)),
    ]
}

/// COSE_Sign1 over `payload_bytes`, signed with `key` (P-384) over the Sig_structure built here,
/// independently of the verifier's coset.
fn sign_raw(payload_bytes: Vec<u8>, protected: Vec<u8>, key: &rcgen::KeyPair) -> Vec<u8> {
    let tbs = encode(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.clone()),
        Value::Bytes(vec![]),
        Value::Bytes(payload_bytes.clone()),
    ]));
    let sig = harness::ecdsa_sign(key, &ECDSA_P384_SHA384_FIXED_SIGNING, &tbs);
    encode(&Value::Array(vec![
        Value::Bytes(protected),
        Value::Map(vec![]),
        Value::Bytes(payload_bytes),
        Value::Bytes(sig),
    ]))
}

fn sign(chain: &TestChain, map: Vec<(Value, Value)>) -> Vec<u8> {
    sign_raw(encode(&Value::Map(map)), vec![0xa1, 0x01, 0x38, 0x22], &chain.leaf.key)
}

fn synthetic(chain: &TestChain, nonce: Option<&[u8]>) -> Vec<u8> {
    sign(chain, payload(chain, T0 as u64 * 1000, nonce))
}

#[test]
fn synthetic_document_under_the_test_root_is_accepted_when_that_root_is_pinned() {
    let chain = TestChain::new();
    let v = chain.verifier();
    let nonce = [7u8; 32];
    let e: Evidence = v.verify(&synthetic(&chain, Some(&nonce)), T0).unwrap();
    assert_eq!(e.nonce(), Some(&nonce[..]));
    assert!(!e.debug());
    assert_eq!(e.attributes()["pcr0"], "11".repeat(48));
    assert_eq!(e.attributes()["nonce_present"], true);
    assert_eq!(e.not_after(), T0 + 300);
    // with_pinned_sha256 checks the fingerprint of the configured root
    let fp = harness::sha256(&chain.root.der).iter().map(|b| format!("{b:02x}")).collect::<String>();
    NitroVerifier::with_pinned_sha256(chain.root.der.clone(), &fp).unwrap();
    assert_slug(
        NitroVerifier::with_pinned_sha256(chain.root.der.clone(), nitro::AWS_NITRO_ROOT_G1_SHA256),
        "config_invalid",
    );
}

#[test]
fn root_substitution_is_refused_against_the_real_pinned_root() {
    let Some(corpus) = harness::corpus() else { return };
    let chain = TestChain::new();
    let mut v = real_verifier(&corpus);
    v.require_nonce = false;
    // Same subject as AWS's root, different key: pinned by fingerprint, so refused.
    assert_slug(v.verify(&synthetic(&chain, None), T0), "untrusted_root");
    // Even with the real root placed first in cabundle, the chain does not lead to it.
    let real = real_root(&corpus);
    let mut map = payload(&chain, T0 as u64 * 1000, None);
    let Value::Array(a) = get(&mut map, "cabundle") else { panic!() };
    a.insert(0, Value::Bytes(real));
    assert_slug(v.verify(&sign(&chain, map), T0), "untrusted_root");
}

#[test]
fn chain_order_is_the_documented_one() {
    let chain = TestChain::new();
    let mut v = chain.verifier();
    v.require_nonce = false;
    let with_bundle = |bundle: Vec<Vec<u8>>| {
        let mut map = payload(&chain, T0 as u64 * 1000, None);
        *get(&mut map, "cabundle") = Value::Array(bundle.into_iter().map(Value::Bytes).collect());
        v.verify(&sign(&chain, map), T0)
    };
    with_bundle(chain.cabundle()).unwrap();
    // root omitted
    assert_slug(with_bundle(vec![chain.regional.der.clone(), chain.zonal.der.clone()]), "untrusted_root");
    // order reversed: the root is no longer first
    assert_slug(with_bundle(chain.cabundle().into_iter().rev().collect()), "untrusted_root");
    // root first, intermediates swapped: the path exists but not in the documented order
    assert_slug(
        with_bundle(vec![chain.root.der.clone(), chain.zonal.der.clone(), chain.regional.der.clone()]),
        "chain_invalid",
    );
    // an extra unrelated certificate (a CA of its own), appended
    let stranger = Spec::ca("stranger", &PKCS_ECDSA_P384_SHA384).self_signed();
    let mut extra = chain.cabundle();
    extra.push(stranger.der.clone());
    assert_slug(with_bundle(extra), "chain_invalid");
    // an intermediate missing
    assert_slug(with_bundle(vec![chain.root.der.clone(), chain.zonal.der.clone()]), "untrusted_root");
}

#[test]
fn freshness_at_the_edges() {
    let chain = TestChain::new();
    let mut v = chain.verifier();
    v.require_nonce = false;
    let doc_at = |ms: i64| sign(&chain, payload(&chain, ms as u64, None));
    let ms = T0 * 1000;
    // exactly max_age old: accepted; one millisecond more: stale
    v.verify(&doc_at(ms - 300_000), T0).unwrap();
    assert_slug(v.verify(&doc_at(ms - 300_001), T0), "stale_attestation");
    assert_slug(v.verify(&doc_at(ms - 3_600_000), T0), "stale_attestation");
    // ahead of the broker's clock within the leeway (5 s): accepted; beyond: refused
    v.verify(&doc_at(ms + 5_000), T0).unwrap();
    assert_slug(v.verify(&doc_at(ms + 5_001), T0), "stale_attestation");
    // a document the chain was not valid for at its own timestamp
    assert_slug(v.verify(&doc_at(ms - 2 * 86_400_000), T0 - 2 * 86_400), "chain_invalid");
    // the leaf expired at the broker's clock (documents of any age)
    assert_slug(v.verify(&doc_at(ms + 4 * 3_600_000), T0 + 4 * 3600), "cert_expired");
}

#[test]
fn nonce_present_absent_and_required() {
    let chain = TestChain::new();
    let mut v = chain.verifier();
    assert!(v.require_nonce, "nonces are required by default");
    assert_slug(v.verify(&synthetic(&chain, None), T0), "nonce_invalid");
    assert_slug(v.verify(&synthetic(&chain, Some(&[])), T0), "nonce_invalid");
    assert_eq!(v.verify(&synthetic(&chain, Some(b"n")), T0).unwrap().nonce(), Some(&b"n"[..]));
    v.require_nonce = false;
    let e = v.verify(&synthetic(&chain, None), T0).unwrap();
    assert_eq!(e.nonce(), None);
    assert_eq!(e.attributes()["nonce_present"], false);
}

#[test]
fn user_data_and_public_key_bindings() {
    let chain = TestChain::new();
    let v = chain.verifier();
    // The enclave's key as a SubjectPublicKeyInfo: bound by its RFC 7638 thumbprint.
    let enclave_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&enclave_key);
    let point = harness::ec_point(&enclave_key, &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING);
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        harness::b64url(&point[1..33]),
        harness::b64url(&point[33..])
    );
    let thumbprint = harness::b64url(&harness::sha256(jwk.as_bytes()));
    let request_a = harness::sha256(b"POST /v1/token role=A");
    let mut map = payload(&chain, T0 as u64 * 1000, Some(&[1u8; 32]));
    *get(&mut map, "public_key") = Value::Bytes(spki);
    *get(&mut map, "user_data") = Value::Bytes(request_a.clone());
    let e = v.verify(&sign(&chain, map), T0).unwrap();
    assert_eq!(e.key_binding(), Some(&KeyBinding::JwkThumbprint(thumbprint.clone())));
    assert_eq!(e.key_binding().unwrap().cnf_member(), ("jkt", thumbprint.as_str()));
    nitro::check_user_data(&e, &request_a).unwrap();
    nitro::check_key_binding(&e, &KeyBinding::JwkThumbprint(thumbprint)).unwrap();
    // ATTACKS 36: the same document presented for role B, or with another key
    assert_slug(nitro::check_user_data(&e, &harness::sha256(b"POST /v1/token role=B")), "binding_mismatch");
    assert_slug(nitro::check_key_binding(&e, &KeyBinding::JwkThumbprint("other".into())), "binding_mismatch");
    let no_data = v.verify(&synthetic(&chain, Some(&[1u8; 32])), T0).unwrap();
    assert_slug(nitro::check_user_data(&no_data, &request_a), "binding_mismatch");
}

#[test]
fn debug_mode_synthetic_document_and_pcr_policy_rules() {
    let chain = TestChain::new();
    let v = chain.verifier();
    let mut map = payload(&chain, T0 as u64 * 1000, Some(&[1u8; 32]));
    let Value::Map(pcrs) = get(&mut map, "pcrs") else { panic!() };
    for (_, value) in pcrs.iter_mut().take(3) {
        *value = Value::Bytes(vec![0; 48]);
    }
    let e = v.verify(&sign(&chain, map), T0).unwrap();
    assert!(e.debug());
    let zeros = BTreeMap::from([(0u8, vec![0u8; 48]), (1, vec![0; 48]), (2, vec![0; 48])]);
    assert_slug(nitro::check_pcrs(&e, &zeros, false), "debug_enclave");
    // allowed in so many words, with a policy that pins something real
    let mut pinned = zeros.clone();
    pinned.insert(3, vec![0; 48]);
    pinned.insert(8, vec![9; 48]);
    assert_slug(nitro::check_pcrs(&e, &pinned, true), "pcr_mismatch");
    // policies refused at load
    assert_slug(nitro::validate_pcr_policy(&BTreeMap::new()), "policy_unscoped");
    assert_slug(nitro::validate_pcr_policy(&zeros), "policy_unscoped");
    assert_slug(nitro::validate_pcr_policy(&BTreeMap::from([(0u8, vec![1u8; 32])])), "policy_unscoped");
    assert_slug(nitro::validate_pcr_policy(&BTreeMap::from([(32u8, vec![1u8; 48])])), "policy_unscoped");
    assert_slug(nitro::parse_pcr_policy(&BTreeMap::from([(0u8, "zz".repeat(48))])), "policy_unscoped");
    assert_slug(nitro::parse_pcr_policy(&BTreeMap::from([(0u8, "0".repeat(96))])), "policy_unscoped");
    let ok = nitro::parse_pcr_policy(&BTreeMap::from([(0u8, "Ab".repeat(48))])).unwrap();
    assert_eq!(ok[&0], vec![0xab; 48]);
    // the kind is checked
    let non_debug = v.verify(&synthetic(&chain, Some(&[1u8; 32])), T0).unwrap();
    nitro::check_pcrs(&non_debug, &BTreeMap::from([(0u8, vec![0x11; 48]), (2, vec![0x33; 48])]), false).unwrap();
}

// ---------------------------------------------------------------- CBOR robustness (ATTACKS 37)

/// Each case is signed by the real test leaf, so only the parser can refuse it.
#[test]
fn malformed_payloads_are_refused_cleanly() {
    let chain = TestChain::new();
    let mut v = chain.verifier();
    v.require_nonce = false;
    let ts = T0 as u64 * 1000;
    let t = |s: &str| Value::Text(s.to_owned());
    type Edit = Box<dyn Fn(&mut Vec<(Value, Value)>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("missing module_id", Box::new(|m| m.retain(|(k, _)| k.as_text() != Some("module_id")))),
        ("empty module_id", Box::new(move |m| *get(m, "module_id") = t(""))),
        ("digest SHA256", Box::new(move |m| *get(m, "digest") = t("SHA256"))),
        ("timestamp as text", Box::new(move |m| *get(m, "timestamp") = t("1750000000000"))),
        ("negative timestamp", Box::new(|m| *get(m, "timestamp") = Value::Integer((-1).into()))),
        ("null certificate", Box::new(|m| *get(m, "certificate") = Value::Null)),
        ("null cabundle", Box::new(|m| *get(m, "cabundle") = Value::Null)),
        ("empty cabundle", Box::new(|m| *get(m, "cabundle") = Value::Array(vec![]))),
        ("cabundle of 1,000", Box::new(|m| *get(m, "cabundle") = Value::Array(vec![Value::Bytes(vec![0x30]); 1000]))),
        ("cabundle of text", Box::new(move |m| *get(m, "cabundle") = Value::Array(vec![t("cert")]))),
        ("certificate over 1024 bytes", Box::new(|m| *get(m, "certificate") = Value::Bytes(vec![0x30; 1025]))),
        ("public_key over 1024 bytes", Box::new(|m| *get(m, "public_key") = Value::Bytes(vec![1; 1025]))),
        ("user_data as text", Box::new(move |m| *get(m, "user_data") = t("data"))),
        ("nonce as integer", Box::new(|m| *get(m, "nonce") = Value::Integer(5.into()))),
        ("pcr index 32", Box::new(|m| pcr_edit(m, |p| p.push((Value::Integer(32.into()), Value::Bytes(vec![1; 48])))))),
        (
            "pcr index -1",
            Box::new(|m| pcr_edit(m, |p| p.push((Value::Integer((-1).into()), Value::Bytes(vec![1; 48]))))),
        ),
        ("pcr of 20 bytes", Box::new(|m| pcr_edit(m, |p| p[4].1 = Value::Bytes(vec![1; 20])))),
        ("pcr of 32 bytes", Box::new(|m| pcr_edit(m, |p| p[4].1 = Value::Bytes(vec![1; 32])))),
        ("text pcr key", Box::new(move |m| pcr_edit(m, |p| p[4].0 = t("4")))),
        ("duplicate pcr index", Box::new(|m| pcr_edit(m, |p| p[4].0 = Value::Integer(3.into())))),
        (
            "pcr0 absent",
            Box::new(|m| {
                pcr_edit(m, |p| {
                    p.remove(0);
                })
            }),
        ),
        ("null pcr value", Box::new(|m| pcr_edit(m, |p| p[4].1 = Value::Null))),
        ("duplicate module_id", Box::new(move |m| m.push((t("module_id"), t("i-other"))))),
        ("unknown field", Box::new(move |m| m.push((t("extra"), Value::Null)))),
        ("integer key", Box::new(|m| m.push((Value::Integer(1.into()), Value::Null)))),
        ("tag inside", Box::new(|m| *get(m, "user_data") = Value::Tag(24, Box::new(Value::Bytes(vec![1]))))),
        ("float", Box::new(|m| *get(m, "user_data") = Value::Float(1.5))),
        ("bool", Box::new(|m| *get(m, "nonce") = Value::Bool(true))),
    ];
    for (name, edit) in cases {
        let mut map = payload(&chain, ts, None);
        edit(&mut map);
        let e = assert_slug(v.verify(&sign(&chain, map), T0), "attestation_malformed");
        eprintln!("{name}: {e}");
    }
    // Payloads that are not a map at all.
    for p in [Value::Array(vec![]), Value::Null, Value::Text("x".into())] {
        assert_slug(
            v.verify(&sign_raw(encode(&p), vec![0xa1, 0x01, 0x38, 0x22], &chain.leaf.key), T0),
            "attestation_malformed",
        );
    }
    // The positive twin of all of the above.
    v.verify(&sign(&chain, payload(&chain, ts, None)), T0).unwrap();
}

fn pcr_edit(m: &mut [(Value, Value)], f: impl FnOnce(&mut Vec<(Value, Value)>)) {
    let Value::Map(p) = get(m, "pcrs") else { panic!() };
    f(p);
}

/// The NSM has signed payloads written as an indefinite-length map (`0xbf … 0xff`) with
/// `public_key` and `nonce` as CBOR null (documents seen in 2026): they verify like the definite
/// form, as AWS's own verification accepts them; so does an indefinite-length outer array. The
/// twin: the indefinite bytes under a signature made over the definite ones are refused.
#[test]
fn indefinite_length_documents_as_the_nsm_signs_them_verify() {
    let chain = TestChain::new();
    let mut v = chain.verifier();
    v.require_nonce = false;
    let fields = payload(&chain, T0 as u64 * 1000, None);
    assert!(fields.iter().any(|(k, v)| *k == Value::Text("public_key".into()) && *v == Value::Null));
    assert!(fields.iter().any(|(k, v)| *k == Value::Text("nonce".into()) && *v == Value::Null));
    let definite = encode(&Value::Map(fields));
    assert_eq!(definite[0], 0xa9, "nine entries");
    let mut indefinite = vec![0xbf];
    indefinite.extend_from_slice(&definite[1..]);
    indefinite.push(0xff);
    let header = vec![0xa1, 0x01, 0x38, 0x22];
    let doc = sign_raw(indefinite.clone(), header.clone(), &chain.leaf.key);
    let e = v.verify(&doc, T0).unwrap();
    let d = v.verify(&sign_raw(definite.clone(), header.clone(), &chain.leaf.key), T0).unwrap();
    assert_eq!((e.subject(), e.attributes()), (d.subject(), d.attributes()));
    assert_eq!(e.attributes()["public_key_present"], serde_json::json!(false));
    assert_eq!(e.attributes()["nonce_present"], serde_json::json!(false));
    // an indefinite-length outer array around a good document
    let good = sign(&chain, payload(&chain, T0 as u64 * 1000, None));
    let mut outer = vec![0x9f];
    outer.extend_from_slice(&good[1..]);
    outer.push(0xff);
    v.verify(&outer, T0).unwrap();
    // the twin: the signature covers the payload bytes as written
    let signed_definite = sign_raw(definite, header, &chain.leaf.key);
    let Value::Array(mut parts) = ciborium::de::from_reader::<Value, _>(&signed_definite[..]).unwrap() else {
        panic!("a COSE array")
    };
    parts[2] = Value::Bytes(indefinite);
    assert_slug(v.verify(&encode(&Value::Array(parts)), T0), "signature_invalid");
}

#[test]
fn deep_nesting_and_size_limits_are_bounded() {
    let chain = TestChain::new();
    let v = chain.verifier();
    // 10,000 nested tags (RUSTSEC-2019-0025) and 10,000 nested arrays: no stack overflow.
    for byte in [0xd2u8, 0xc6, 0x81] {
        let mut doc = vec![byte; 10_000];
        doc.push(0x00);
        assert_slug(v.verify(&doc, T0), "attestation_malformed");
    }
    // nested inside a signed payload
    let mut deep = vec![0x81u8; 5_000];
    deep.push(0x00);
    let mut map = encode(&Value::Map(payload(&chain, T0 as u64 * 1000, None)));
    map[0] += 1;
    map.extend_from_slice(&encode(&Value::Text("deep".into())));
    map.extend_from_slice(&deep);
    assert_slug(v.verify(&sign_raw(map, vec![0xa1, 0x01, 0x38, 0x22], &chain.leaf.key), T0), "attestation_malformed");
    // over the size limit
    assert_slug(v.verify(&vec![0u8; 16 * 1024 + 1], T0), "attestation_malformed");
    // a detached payload
    let doc = encode(&Value::Array(vec![
        Value::Bytes(vec![0xa1, 0x01, 0x38, 0x22]),
        Value::Map(vec![]),
        Value::Null,
        Value::Bytes(vec![0; 96]),
    ]));
    assert_slug(v.verify(&doc, T0), "attestation_malformed");
    // not four items
    let doc = encode(&Value::Array(vec![Value::Bytes(vec![]), Value::Map(vec![]), Value::Bytes(vec![])]));
    assert_slug(v.verify(&doc, T0), "attestation_malformed");
}

#[test]
fn document_text_decoding() {
    let raw = vec![0x84u8, 1, 2, 3, 0xff, 0xfe];
    let std = harness::b64(&raw);
    assert_eq!(nitro::decode_document_text(&std, 100).unwrap(), raw);
    assert_eq!(nitro::decode_document_text(&format!(" {}\n{}\n", &std[..4], &std[4..]), 100).unwrap(), raw);
    assert_eq!(nitro::decode_document_text(&harness::b64url(&raw), 100).unwrap(), raw);
    assert_slug(nitro::decode_document_text("not base64!", 100), "attestation_malformed");
    assert_slug(nitro::decode_document_text(&"A".repeat(1000), 100), "attestation_malformed");
}

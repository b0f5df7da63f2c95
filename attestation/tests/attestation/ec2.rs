//! EC2 instance identity documents (ATTACKS 38): a real DSA-SHA1 PKCS#7 published with AWS's
//! certificate (BER, indefinite lengths), and RSA-SHA256 documents signed here under test
//! "regional" certificates, as PKCS#7 (encoded with rasn-cms) and as the JSON signature form.

use crate::harness::{self, Ca, Spec, T0, assert_slug};
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use ephemera_attestation::AttestationKind;
use ephemera_attestation::ec2::IidVerifier;
use rasn::types::{Any, Integer, ObjectIdentifier, OctetString, SetOf};
use rcgen::PKCS_RSA_SHA256;
use rustls_pki_types::CertificateDer;

const SHA256: &[u32] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const SHA512: &[u32] = &[2, 16, 840, 1, 101, 3, 4, 2, 3];
const SHA1: &[u32] = &[1, 3, 14, 3, 2, 26];
const RSA: &[u32] = &[1, 2, 840, 113549, 1, 1, 1];
const DSA_WITH_SHA1: &[u32] = &[1, 2, 840, 10040, 4, 3];
const DATA: &[u32] = &[1, 2, 840, 113549, 1, 7, 1];
const SIGNED_DATA: &[u32] = &[1, 2, 840, 113549, 1, 7, 2];
const CONTENT_TYPE: &[u32] = &[1, 2, 840, 113549, 1, 9, 3];
const MESSAGE_DIGEST: &[u32] = &[1, 2, 840, 113549, 1, 9, 4];

fn document(region: &str) -> String {
    format!(
        r#"{{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "{region}a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-0123456789abcdef0",
  "instanceType" : "t3.micro",
  "kernelId" : null,
  "pendingTime" : "2025-06-15T13:00:00Z",
  "privateIp" : "10.0.1.23",
  "ramdiskId" : null,
  "region" : "{region}",
  "version" : "2017-09-30"
}}"#
    )
}

/// A self-signed RSA-2048 certificate standing in for AWS's certificate of one region.
fn region_cert(not_after: i64) -> Ca {
    Spec {
        dn: vec![
            (rcgen::DnType::CountryName, "US"),
            (rcgen::DnType::StateOrProvinceName, "Washington State"),
            (rcgen::DnType::LocalityName, "Seattle"),
            (rcgen::DnType::OrganizationName, "Amazon Web Services LLC"),
        ],
        not_before: T0 - 365 * 86_400,
        not_after,
        ..Spec::ca("aws", &PKCS_RSA_SHA256)
    }
    .self_signed()
}

fn verifier(certs: &[(&str, &Ca)]) -> IidVerifier {
    IidVerifier::new(certs.iter().map(|(r, c)| (r.to_string(), CertificateDer::from(c.der.clone()))).collect()).unwrap()
}

fn oid(arcs: &[u32]) -> ObjectIdentifier {
    ObjectIdentifier::new(arcs.to_vec()).unwrap()
}

fn alg_id(arcs: &[u32]) -> rasn_cms::AlgorithmIdentifier {
    rasn_cms::AlgorithmIdentifier { algorithm: oid(arcs), parameters: None }
}

/// How to build the test PKCS#7.
struct P7 {
    digest: &'static [u32],
    sig_alg: &'static [u32],
    signed_attrs: bool,
    signers: usize,
    detached: bool,
}

impl Default for P7 {
    fn default() -> Self {
        P7 { digest: SHA256, sig_alg: RSA, signed_attrs: true, signers: 1, detached: false }
    }
}

/// PKCS#7 SignedData over `doc` (DER, encoded with rasn-cms), RSA-SHA256 by `key`; the
/// signature covers `signed_doc` (normally `doc`).
fn pkcs7(p: &P7, doc: &[u8], signed_doc: &[u8], key: &rcgen::KeyPair) -> Vec<u8> {
    let (message, signed_attrs) = if p.signed_attrs {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, signed_doc);
        let attrs = SetOf::from_vec(vec![
            rasn_cms::Attribute {
                r#type: oid(CONTENT_TYPE),
                values: SetOf::from_vec(vec![Any::new(rasn::der::encode(&oid(DATA)).unwrap())]),
            },
            rasn_cms::Attribute {
                r#type: oid(MESSAGE_DIGEST),
                values: SetOf::from_vec(vec![Any::new(
                    rasn::der::encode(&OctetString::from(digest.as_ref().to_vec())).unwrap(),
                )]),
            },
        ]);
        (rasn::der::encode(&attrs).unwrap(), Some(attrs))
    } else {
        (signed_doc.to_vec(), None)
    };
    let signature = harness::rsa_sign(key, &RSA_PKCS1_SHA256, &message);
    let signer = rasn_cms::SignerInfo {
        version: Integer::from(1),
        sid: rasn_cms::SignerIdentifier::IssuerAndSerialNumber(rasn_cms::IssuerAndSerialNumber {
            issuer: rasn_cms::Name::RdnSequence(vec![]),
            serial_number: Integer::from(1),
        }),
        digest_algorithm: alg_id(p.digest),
        signed_attrs,
        signature_algorithm: alg_id(p.sig_alg),
        signature: OctetString::from(signature),
        unsigned_attrs: None,
    };
    let sd = rasn_cms::SignedData {
        version: Integer::from(1),
        digest_algorithms: SetOf::from_vec(vec![alg_id(p.digest)]),
        encap_content_info: rasn_cms::EncapsulatedContentInfo {
            content_type: oid(DATA),
            content: (!p.detached).then(|| OctetString::from(doc.to_vec())),
        },
        certificates: None,
        crls: None,
        signer_infos: SetOf::from_vec(vec![signer; p.signers]),
    };
    let info =
        rasn_cms::ContentInfo { content_type: oid(SIGNED_DATA), content: Any::new(rasn::der::encode(&sd).unwrap()) };
    rasn::der::encode(&info).unwrap()
}

/// The `signature` endpoint's form.
fn json_form(doc: &str, signature: &[u8]) -> Vec<u8> {
    serde_json::json!({"document": doc, "signature": harness::b64(signature)}).to_string().into_bytes()
}

fn wrapped(b64: &str, width: usize) -> String {
    b64.as_bytes().chunks(width).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n")
}

#[test]
fn rsa2048_pkcs7_is_accepted_in_every_encoding() {
    let east = region_cert(T0 + 3650 * 86_400);
    let v = verifier(&[("us-east-1", &east)]);
    let doc = document("us-east-1");
    for signed_attrs in [true, false] {
        let der = pkcs7(&P7 { signed_attrs, ..P7::default() }, doc.as_bytes(), doc.as_bytes(), &east.key);
        let b64 = harness::b64(&der);
        let encodings = [
            der.clone(),
            b64.clone().into_bytes(),
            wrapped(&b64, 64).into_bytes(),
            format!("-----BEGIN PKCS7-----\n{}\n-----END PKCS7-----\n", wrapped(&b64, 64)).into_bytes(),
            format!("\r\n{}\r\n", wrapped(&b64, 76).replace('\n', "\r\n")).into_bytes(),
        ];
        for token in encodings {
            let e = v.verify(&token, T0).unwrap();
            harness::assert_declared(&e);
            assert_eq!(e.kind(), AttestationKind::Ec2InstanceIdentity);
            assert_eq!(e.subject(), "ec2:123456789012/i-0123456789abcdef0");
            let a = e.attributes();
            for (k, want) in [
                ("accountId", "123456789012"),
                ("region", "us-east-1"),
                ("instanceId", "i-0123456789abcdef0"),
                ("imageId", "ami-0abcdef1234567890"),
                ("instanceType", "t3.micro"),
                ("privateIp", "10.0.1.23"),
                ("pendingTime", "2025-06-15T13:00:00Z"),
                ("signature_form", "pkcs7-rsa-sha256"),
            ] {
                assert_eq!(a[k], want, "{k}");
            }
            assert!(e.replayable());
            assert_eq!(e.nonce(), None);
            assert_eq!(e.issued_at(), 1_749_992_400);
            assert_eq!(e.not_after(), T0 + 300, "capped at max_credential_ttl");
        }
    }
}

#[test]
fn json_signature_form_and_single_use_key() {
    let east = region_cert(T0 + 3650 * 86_400);
    let v = verifier(&[("us-east-1", &east)]);
    let doc = document("us-east-1");
    let sig = harness::rsa_sign(&east.key, &RSA_PKCS1_SHA256, doc.as_bytes());
    let a = v.verify(&json_form(&doc, &sig), T0).unwrap();
    assert_eq!(a.attributes()["signature_form"], "signature-rsa-sha256");
    let b = v.verify(&pkcs7(&P7::default(), doc.as_bytes(), doc.as_bytes(), &east.key), T0).unwrap();
    // single use per (instanceId, pendingTime), whatever the form
    assert_eq!(a.replay_id(), b.replay_id());
    // ...and the key changes with either
    let relaunched = doc.replace("2025-06-15T13:00:00Z", "2025-06-15T13:00:01Z");
    let sig2 = harness::rsa_sign(&east.key, &RSA_PKCS1_SHA256, relaunched.as_bytes());
    assert_ne!(v.verify(&json_form(&relaunched, &sig2), T0).unwrap().replay_id(), a.replay_id());
    // the signature with line breaks, as the metadata service serves it
    let form = serde_json::json!({"document": doc, "signature": wrapped(&harness::b64(&sig), 64)}).to_string();
    v.verify(form.as_bytes(), T0).unwrap();
}

#[test]
fn the_exact_signed_bytes_count() {
    let east = region_cert(T0 + 3650 * 86_400);
    let v = verifier(&[("us-east-1", &east)]);
    let doc = document("us-east-1");
    let sig = harness::rsa_sign(&east.key, &RSA_PKCS1_SHA256, doc.as_bytes());
    let spaced = doc.replacen(" : ", "  : ", 1);
    let mut lines: Vec<&str> = doc.lines().collect();
    lines.swap(1, 2);
    let reordered = lines.join("\n");
    for altered in [&spaced, &reordered, &doc.replace("123456789012", "210987654321")] {
        assert_slug(v.verify(&json_form(altered, &sig), T0), "signature_invalid");
        for signed_attrs in [true, false] {
            // the original signature over `doc`, the content swapped for `altered`
            let p = P7 { signed_attrs, ..P7::default() };
            assert_slug(v.verify(&pkcs7(&p, altered.as_bytes(), doc.as_bytes(), &east.key), T0), "signature_invalid");
        }
    }
    // a flipped signature bit
    let mut bad = sig.clone();
    bad[7] ^= 1;
    assert_slug(v.verify(&json_form(&doc, &bad), T0), "signature_invalid");
}

#[test]
fn region_rules() {
    let east = region_cert(T0 + 3650 * 86_400);
    let west = region_cert(T0 + 3650 * 86_400);
    let doc_east = document("us-east-1");
    let sig_east = harness::rsa_sign(&east.key, &RSA_PKCS1_SHA256, doc_east.as_bytes());
    // only another region's certificate configured: nothing verifies
    assert_slug(verifier(&[("us-west-2", &west)]).verify(&json_form(&doc_east, &sig_east), T0), "signature_invalid");
    // a document that says us-west-2, signed with the us-east-1 key
    let doc_west = document("us-west-2");
    let forged = harness::rsa_sign(&east.key, &RSA_PKCS1_SHA256, doc_west.as_bytes());
    let both = verifier(&[("us-west-2", &west), ("us-east-1", &east)]);
    assert_slug(both.verify(&json_form(&doc_west, &forged), T0), "region_mismatch");
    assert_slug(
        both.verify(&pkcs7(&P7::default(), doc_west.as_bytes(), doc_west.as_bytes(), &east.key), T0),
        "region_mismatch",
    );
    // positive twins
    both.verify(&json_form(&doc_east, &sig_east), T0).unwrap();
    let sig_west = harness::rsa_sign(&west.key, &RSA_PKCS1_SHA256, doc_west.as_bytes());
    both.verify(&json_form(&doc_west, &sig_west), T0).unwrap();
    // a certificate configured for every region
    verifier(&[("*", &east)]).verify(&json_form(&doc_west, &forged), T0).unwrap();
}

#[test]
fn algorithm_dispatch_on_the_signer_info() {
    let east = region_cert(T0 + 3650 * 86_400);
    let mut v = verifier(&[("us-east-1", &east)]);
    let doc = document("us-east-1");
    let build = |p: P7| pkcs7(&p, doc.as_bytes(), doc.as_bytes(), &east.key);
    assert_slug(v.verify(&build(P7 { digest: SHA512, ..P7::default() }), T0), "alg_not_allowed");
    assert_slug(v.verify(&build(P7 { sig_alg: DSA_WITH_SHA1, ..P7::default() }), T0), "alg_not_allowed");
    // SHA-1 with RSA: legacy, refused by default; with legacy on, the RSA-SHA256 signature does
    // not verify as RSA-SHA1
    assert_slug(v.verify(&build(P7 { digest: SHA1, ..P7::default() }), T0), "alg_not_allowed");
    v.allow_legacy_crypto = true;
    assert_slug(v.verify(&build(P7 { digest: SHA1, signed_attrs: false, ..P7::default() }), T0), "signature_invalid");
}

#[test]
fn real_aws_dsa_sha1_pkcs7_is_legacy_and_opt_in() {
    let cert = harness::pem_to_der(&std::fs::read_to_string(harness::fixture("aws_dsa_certificate.pem")).unwrap());
    let token = std::fs::read(harness::fixture("ec2_iid_dsa_sha1_2016.p7.pem")).unwrap();
    let mut v = IidVerifier::new(vec![("*".into(), cert.clone().into())]).unwrap();
    assert_slug(v.verify(&token, T0), "alg_not_allowed");
    v.allow_legacy_crypto = true;
    let e = v.verify(&token, T0).unwrap();
    harness::assert_declared(&e);
    assert_eq!(e.subject(), "ec2:121659014334/i-f79fe56c");
    assert_eq!(e.attributes()["region"], "us-east-1");
    assert_eq!(e.attributes()["pendingTime"], "2016-04-08T03:01:38Z");
    assert_eq!(e.attributes()["signature_form"], "pkcs7-dsa-sha1");
    assert_eq!(e.attributes()["legacy_crypto"], true);
    assert_eq!(e.issued_at(), 1_460_084_498);
    // the same bytes without armor and on one line
    let text = String::from_utf8(token.clone()).unwrap();
    let one_line: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    v.verify(one_line.as_bytes(), T0).unwrap();
    // one changed character of the embedded document: the message digest no longer matches
    let der = harness::pem_to_der(&text);
    let at = der.windows(9).position(|w| w == b"t2.micro\"").unwrap();
    let mut tampered = der.clone();
    tampered[at + 1] = b'3';
    assert_slug(v.verify(&tampered, T0), "signature_invalid");
    // the DSA signature itself altered (last byte of s, before the closing end-of-contents)
    let mut bad_sig = der.clone();
    let s_end = bad_sig.len() - 9;
    bad_sig[s_end] ^= 1;
    assert_slug(v.verify(&bad_sig, T0), "signature_invalid");
    // only an RSA certificate configured: no DSA key to verify with
    let east = region_cert(T0 + 3650 * 86_400);
    let mut rsa_only = verifier(&[("us-east-1", &east)]);
    rsa_only.allow_legacy_crypto = true;
    assert_slug(rsa_only.verify(&token, T0), "signature_invalid");
    // AWS's certificate is valid until 2038
    assert_slug(v.verify(&token, 2_200_000_000), "cert_expired");
}

/// Regression: raw DER whose last byte (the signature's) is ASCII white space was trimmed and
/// refused as malformed, about one signature in fifty.
#[test]
fn raw_der_ending_in_a_whitespace_byte_is_accepted() {
    let east = region_cert(T0 + 3650 * 86_400);
    let v = verifier(&[("us-east-1", &east)]);
    let mut found = 0;
    for n in 0..2000 {
        let doc = document("us-east-1").replace(
            "\"accountId\" : \"123456789012\"",
            &format!("\"accountId\" : \"{:012}\"", 100_000_000_000u64 + n),
        );
        let der = pkcs7(&P7::default(), doc.as_bytes(), doc.as_bytes(), &east.key);
        if der.last().is_some_and(|b| b.is_ascii_whitespace() || *b == 0x0b) {
            v.verify(&der, T0).unwrap_or_else(|e| panic!("last byte {:#04x}: {e}", der.last().unwrap_or(&0)));
            found += 1;
            if found == 3 {
                break;
            }
        }
    }
    assert_eq!(found, 3, "no DER ending in a white-space byte was produced");
}

#[test]
fn malformed_tokens_are_refused_cleanly() {
    let east = region_cert(T0 + 3650 * 86_400);
    let v = verifier(&[("us-east-1", &east)]);
    let doc = document("us-east-1");
    let good = pkcs7(&P7::default(), doc.as_bytes(), doc.as_bytes(), &east.key);
    v.verify(&good, T0).unwrap();
    let mut trailing = good.clone();
    trailing.push(0);
    let sign_json = |d: &str| json_form(d, &harness::rsa_sign(&east.key, &RSA_PKCS1_SHA256, d.as_bytes()));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two signers", pkcs7(&P7 { signers: 2, ..P7::default() }, doc.as_bytes(), doc.as_bytes(), &east.key)),
        ("detached content", pkcs7(&P7 { detached: true, ..P7::default() }, doc.as_bytes(), doc.as_bytes(), &east.key)),
        ("trailing bytes", trailing),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("not base64", b"not base64 at all!".to_vec()),
        ("empty", vec![]),
        ("json extra member", br#"{"document":"{}","signature":"AAAA","pkcs7":"x"}"#.to_vec()),
        ("json duplicate member", br#"{"document":"{}","document":"{}","signature":"AAAA"}"#.to_vec()),
        ("json document not a string", br#"{"document":{},"signature":"AAAA"}"#.to_vec()),
        ("json missing signature", br#"{"document":"{}"}"#.to_vec()),
        ("signed, accountId missing", sign_json(&doc.replace("\"accountId\" : \"123456789012\",", ""))),
        ("signed, accountId not 12 digits", sign_json(&doc.replace("123456789012", "12345"))),
        ("signed, accountId a number", sign_json(&doc.replace("\"123456789012\"", "123456789012"))),
        (
            "signed, duplicate region",
            sign_json(&doc.replace("\"version\"", "\"region\" : \"us-west-2\",\n  \"version\"")),
        ),
        ("signed, bad pendingTime", sign_json(&doc.replace("2025-06-15T13:00:00Z", "yesterday"))),
        ("signed, not JSON", sign_json("region=us-east-1")),
        ("signed, control character", sign_json(&doc.replace("t3.micro", "t3.\u{7}micro"))),
        ("too large", vec![b'A'; 16 * 1024 + 1]),
    ];
    for (name, token) in cases {
        let e = assert_slug(v.verify(&token, T0), "attestation_malformed");
        eprintln!("{name}: {e}");
    }
}

#[test]
fn configured_certificates_are_checked() {
    assert_slug(IidVerifier::new(vec![]), "config_invalid");
    assert_slug(IidVerifier::new(vec![("us-east-1".into(), vec![1, 2, 3].into())]), "config_invalid");
    let ec = Spec::ca("ec", &rcgen::PKCS_ECDSA_P256_SHA256).self_signed();
    assert_slug(IidVerifier::new(vec![("us-east-1".into(), ec.der.into())]), "config_invalid");
    // an expired certificate verifies the signature but is refused
    let old = region_cert(T0 - 1);
    let doc = document("us-east-1");
    let sig = harness::rsa_sign(&old.key, &RSA_PKCS1_SHA256, doc.as_bytes());
    assert_slug(verifier(&[("us-east-1", &old)]).verify(&json_form(&doc, &sig), T0), "cert_expired");
}

#[test]
fn rsa_under_2048_bits_only_with_legacy_crypto() {
    let cert = harness::pem_to_der(&std::fs::read_to_string(harness::fixture("rsa1024_certificate.pem")).unwrap());
    let token = std::fs::read(harness::fixture("ec2_iid_rsa1024_signature.json")).unwrap();
    let mut v = IidVerifier::new(vec![("us-east-1".into(), cert.into())]).unwrap();
    assert_slug(v.verify(&token, T0), "alg_not_allowed");
    v.allow_legacy_crypto = true;
    let e = v.verify(&token, T0).unwrap();
    harness::assert_declared(&e);
    assert_eq!(e.subject(), "ec2:123456789012/i-0fedcba9876543210");
    assert_eq!(e.attributes()["signature_form"], "signature-rsa-sha256");
    // the pretty-printed fixture parses as the JSON form; one changed byte of its document does not verify
    let text = String::from_utf8(token).unwrap().replace("10.0.1.24", "10.0.1.25");
    assert_slug(v.verify(text.as_bytes(), T0), "signature_invalid");
}

//! X.509 proof of possession (ATTACKS 40, 41) with rcgen CAs: the good path for each algorithm,
//! then one defect at a time.

use crate::harness::{self, Ca, Spec, T0, assert_slug};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use ephemera_attestation::x509pop::{POP_TYP, PopVerifier};
use ephemera_attestation::{AttestationKind, KeyBinding};
use rcgen::{
    BasicConstraints, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256, SanType,
};
use serde_json::{Value, json};

const AUD: &str = "https://broker.example.com/v1/token";
const SPIFFE: &str = "spiffe://example.org/ns/prod/sa/payments";

struct Pki {
    root: Ca,
    intermediate: Ca,
    leaf: Ca,
}

fn leaf_spec(alg: &'static rcgen::SignatureAlgorithm) -> Spec<'static> {
    Spec {
        dn: vec![
            (rcgen::DnType::CommonName, "payments"),
            (rcgen::DnType::OrganizationName, "Example Corp"),
            (rcgen::DnType::OrganizationalUnitName, "prod"),
        ],
        sans: vec![
            SanType::URI(SPIFFE.try_into().unwrap()),
            SanType::DnsName("payments.example.org".try_into().unwrap()),
        ],
        eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
        serial: Some(0x1234_5678),
        ..Spec::leaf("payments", alg)
    }
}

impl Pki {
    fn new(leaf_alg: &'static rcgen::SignatureAlgorithm) -> Pki {
        let root = Spec::ca("Test Root CA", &PKCS_ECDSA_P384_SHA384).self_signed();
        let intermediate = Spec::ca("Test Issuing CA", &PKCS_ECDSA_P256_SHA256).issued_by(&root);
        let leaf = leaf_spec(leaf_alg).issued_by(&intermediate);
        Pki { root, intermediate, leaf }
    }

    fn verifier(&self) -> PopVerifier {
        PopVerifier::new(vec![self.root.der.clone().into()], AUD).unwrap()
    }

    fn chain(&self) -> Vec<Vec<u8>> {
        vec![self.leaf.der.clone(), self.intermediate.der.clone()]
    }
}

fn claims(nonce: &[u8], iat: i64) -> Value {
    json!({"aud": AUD, "nonce": harness::b64url(nonce), "iat": iat})
}

fn header(alg: &str, chain: &[Vec<u8>]) -> Value {
    json!({"alg": alg, "typ": POP_TYP, "x5c": chain.iter().map(|c| harness::b64(c)).collect::<Vec<_>>()})
}

/// Signs `header.payload` (given as raw JSON text) with `key` under `alg`.
fn sign_raw(alg: &str, key: &KeyPair, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", harness::b64url(header.as_bytes()), harness::b64url(payload.as_bytes()));
    let sig = sign_bytes(alg, key, input.as_bytes());
    format!("{input}.{}", harness::b64url(&sig))
}

fn sign_bytes(alg: &str, key: &KeyPair, msg: &[u8]) -> Vec<u8> {
    match alg {
        "ES256" => harness::ecdsa_sign(key, &ECDSA_P256_SHA256_FIXED_SIGNING, msg),
        "ES384" => harness::ecdsa_sign(key, &ECDSA_P384_SHA384_FIXED_SIGNING, msg),
        "RS256" => harness::rsa_sign(key, &RSA_PKCS1_SHA256, msg),
        "PS256" => harness::rsa_sign(key, &RSA_PSS_SHA256, msg),
        "EdDSA" => harness::ed25519_sign(key, msg),
        other => panic!("{other}"),
    }
}

fn sign(alg: &str, key: &KeyPair, header: &Value, payload: &Value) -> String {
    sign_raw(alg, key, &header.to_string(), &payload.to_string())
}

fn proof(pki: &Pki, alg: &str, nonce: &[u8]) -> String {
    sign(alg, &pki.leaf.key, &header(alg, &pki.chain()), &claims(nonce, T0))
}

#[test]
fn good_path_for_every_algorithm() {
    let nonce = [0x42u8; 32];
    for (alg, key_alg) in [
        ("ES256", &PKCS_ECDSA_P256_SHA256),
        ("ES384", &PKCS_ECDSA_P384_SHA384),
        ("RS256", &PKCS_RSA_SHA256),
        ("PS256", &PKCS_RSA_SHA256),
        ("EdDSA", &PKCS_ED25519),
    ] {
        let pki = Pki::new(key_alg);
        let e = pki.verifier().verify(&proof(&pki, alg, &nonce), T0).unwrap_or_else(|e| panic!("{alg}: {e}"));
        harness::assert_declared(&e);
        assert_eq!(e.kind(), AttestationKind::X509ProofOfPossession);
        assert_eq!(e.nonce(), Some(&nonce[..]));
        assert_eq!(e.subject(), SPIFFE);
        assert_eq!(e.attributes()["alg"], alg);
        assert_eq!(e.key_binding(), Some(&KeyBinding::X5tS256(harness::b64url(&harness::sha256(&pki.leaf.der)))));
    }
}

#[test]
fn evidence_names_the_certificate() {
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let e = pki.verifier().verify(&proof(&pki, "ES256", &[1; 32]), T0).unwrap();
    let a = e.attributes();
    assert_eq!(a["spiffe_id"], SPIFFE);
    assert_eq!(a["uri_sans"], json!([SPIFFE]));
    assert_eq!(a["dns_sans"], json!(["payments.example.org"]));
    assert_eq!(a["subject_cn"], json!(["payments"]));
    assert_eq!(a["subject_o"], json!(["Example Corp"]));
    assert_eq!(a["subject_ou"], json!(["prod"]));
    assert_eq!(a["issuer_dn"], "CN=Test Issuing CA");
    assert_eq!(a["serial"], "12345678");
    assert_eq!(a["chain_len"], 2);
    assert_eq!(e.issued_at(), T0);
    // bounded by the leaf's notAfter, and single use per signing input
    assert_eq!(e.not_after(), T0 + 3 * 3600);
    assert!(e.replay_id().starts_with("x509pop:") && !e.replayable());
    // no SPIFFE ID: the subject DN names the holder
    let plain = Spec { sans: vec![], ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }.issued_by(&pki.intermediate);
    let token = sign(
        "ES256",
        &plain.key,
        &header("ES256", &[plain.der.clone(), pki.intermediate.der.clone()]),
        &claims(&[1; 32], T0),
    );
    let e = pki.verifier().verify(&token, T0).unwrap();
    assert_eq!(e.subject(), "CN=payments, O=Example Corp, OU=prod");
    assert!(e.attributes().get("spiffe_id").is_none());
}

#[test]
fn chain_validity_rules() {
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let v = pki.verifier();
    let token = proof(&pki, "ES256", &[1; 32]);
    v.verify(&token, T0).unwrap();
    // the same proof, judged when the leaf has expired / before it was valid
    assert_slug(v.verify(&token, T0 + 3 * 3600 + 1), "cert_expired");
    assert_slug(v.verify(&token, T0 - 3601), "chain_invalid");
    // a leaf issued expired, presented with a fresh iat
    let expired = Spec { not_before: T0 - 7200, not_after: T0 - 1, ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }
        .issued_by(&pki.intermediate);
    let chain = vec![expired.der.clone(), pki.intermediate.der.clone()];
    assert_slug(
        v.verify(&sign("ES256", &expired.key, &header("ES256", &chain), &claims(&[1; 32], T0)), T0),
        "cert_expired",
    );
    let future = Spec { not_before: T0 + 60, ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }.issued_by(&pki.intermediate);
    let chain = vec![future.der.clone(), pki.intermediate.der.clone()];
    assert_slug(
        v.verify(&sign("ES256", &future.key, &header("ES256", &chain), &claims(&[1; 32], T0)), T0),
        "chain_invalid",
    );
}

#[test]
fn anchors_and_missing_intermediates() {
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let other = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let token = proof(&pki, "ES256", &[1; 32]);
    // another CA (its own name) as the only anchor
    let other_root = Spec::ca("Other Root CA", &PKCS_ECDSA_P384_SHA384).self_signed();
    let v = PopVerifier::new(vec![other_root.der.clone().into()], AUD).unwrap();
    assert_slug(v.verify(&token, T0), "untrusted_root");
    // an anchor with the very same name but another key: the path is found by name and its
    // top signature fails (rustls-webpki reports the signature, so the reason is chain_invalid)
    let impostor = Spec::ca("Test Root CA", &PKCS_ECDSA_P384_SHA384).self_signed();
    let v = PopVerifier::new(vec![impostor.der.clone().into()], AUD).unwrap();
    assert_slug(v.verify(&token, T0), "chain_invalid");
    // the intermediate left out
    let leaf_only =
        sign("ES256", &pki.leaf.key, &header("ES256", std::slice::from_ref(&pki.leaf.der)), &claims(&[1; 32], T0));
    assert_slug(pki.verifier().verify(&leaf_only, T0), "untrusted_root");
    // the root included at the end is fine (it is the anchor); an unrelated extra certificate is not
    let with_root = vec![pki.leaf.der.clone(), pki.intermediate.der.clone(), pki.root.der.clone()];
    pki.verifier()
        .verify(&sign("ES256", &pki.leaf.key, &header("ES256", &with_root), &claims(&[1; 32], T0)), T0)
        .unwrap();
    let with_stranger = vec![pki.leaf.der.clone(), pki.intermediate.der.clone(), other.intermediate.der.clone()];
    assert_slug(
        pki.verifier()
            .verify(&sign("ES256", &pki.leaf.key, &header("ES256", &with_stranger), &claims(&[1; 32], T0)), T0),
        "chain_invalid",
    );
}

#[test]
fn ca_flags_path_length_and_key_usage() {
    let root = Spec::ca("Root", &PKCS_ECDSA_P256_SHA256).self_signed();
    let v = PopVerifier::new(vec![root.der.clone().into()], AUD).unwrap();
    let try_chain = |leaf: &Ca, intermediates: &[&Ca]| {
        let mut chain = vec![leaf.der.clone()];
        chain.extend(intermediates.iter().map(|c| c.der.clone()));
        v.verify(&sign("ES256", &leaf.key, &header("ES256", &chain), &claims(&[1; 32], T0)), T0)
    };
    let good_int = Spec::ca("Issuing", &PKCS_ECDSA_P256_SHA256).issued_by(&root);
    let good_leaf = leaf_spec(&PKCS_ECDSA_P256_SHA256).issued_by(&good_int);
    try_chain(&good_leaf, &[&good_int]).unwrap();

    // an intermediate without CA:TRUE
    let not_ca =
        Spec { ca: None, explicit_no_ca: true, ..Spec::ca("Not a CA", &PKCS_ECDSA_P256_SHA256) }.issued_by(&root);
    let leaf = leaf_spec(&PKCS_ECDSA_P256_SHA256).issued_by(&not_ca);
    assert_slug(try_chain(&leaf, &[&not_ca]), "chain_invalid");

    // pathLen 0 on the intermediate, and one more CA under it
    let len0 = Spec { ca: Some(BasicConstraints::Constrained(0)), ..Spec::ca("Len0", &PKCS_ECDSA_P256_SHA256) }
        .issued_by(&root);
    let sub = Spec::ca("Sub", &PKCS_ECDSA_P256_SHA256).issued_by(&len0);
    let leaf = leaf_spec(&PKCS_ECDSA_P256_SHA256).issued_by(&sub);
    assert_slug(try_chain(&leaf, &[&sub, &len0]), "chain_invalid");
    // positive twin: the leaf directly under the pathLen-0 CA
    let leaf = leaf_spec(&PKCS_ECDSA_P256_SHA256).issued_by(&len0);
    try_chain(&leaf, &[&len0]).unwrap();

    // a leaf without digitalSignature
    let leaf = Spec { key_usages: vec![KeyUsagePurpose::KeyEncipherment], ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }
        .issued_by(&good_int);
    assert_slug(try_chain(&leaf, &[&good_int]), "chain_invalid");
    // a leaf with no key usage extension at all
    let leaf = Spec { key_usages: vec![], ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }.issued_by(&good_int);
    assert_slug(try_chain(&leaf, &[&good_int]), "chain_invalid");
    // a leaf that is a CA
    let leaf =
        Spec { ca: Some(BasicConstraints::Unconstrained), ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }.issued_by(&good_int);
    assert_slug(try_chain(&leaf, &[&good_int]), "chain_invalid");
    // a leaf for servers only
    let leaf = Spec { eku: vec![ExtendedKeyUsagePurpose::ServerAuth], ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }
        .issued_by(&good_int);
    assert_slug(try_chain(&leaf, &[&good_int]), "chain_invalid");
}

#[test]
fn x5c_longer_than_five_is_refused() {
    let root = Spec::ca("Root", &PKCS_ECDSA_P256_SHA256).self_signed();
    let v = PopVerifier::new(vec![root.der.clone().into()], AUD).unwrap();
    let mut cas = vec![Spec::ca("CA 1", &PKCS_ECDSA_P256_SHA256).issued_by(&root)];
    for i in 2..=5 {
        let next =
            Spec::ca(if i == 5 { "CA 5" } else { "CA n" }, &PKCS_ECDSA_P256_SHA256).issued_by(cas.last().unwrap());
        cas.push(next);
    }
    let leaf = leaf_spec(&PKCS_ECDSA_P256_SHA256).issued_by(cas.last().unwrap());
    let mut chain = vec![leaf.der.clone()];
    chain.extend(cas.iter().rev().map(|c| c.der.clone()));
    assert_eq!(chain.len(), 6);
    let e = assert_slug(
        v.verify(&sign("ES256", &leaf.key, &header("ES256", &chain), &claims(&[1; 32], T0)), T0),
        "chain_invalid",
    );
    assert!(e.to_string().contains("`6` certificates"), "{e}");
}

#[test]
fn revoked_serials_and_crls() {
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let token = proof(&pki, "ES256", &[1; 32]);
    let v = pki.verifier().with_revoked_serials(["0012345678"]);
    assert_slug(v.verify(&token, T0), "cert_revoked");
    pki.verifier().with_revoked_serials(["12345679"]).verify(&token, T0).unwrap();
    // A CRL from the issuing CA listing the leaf, checked (and its signature verified) by webpki.
    let crl = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::from_unix_timestamp(T0 - 60).unwrap(),
        next_update: time::OffsetDateTime::from_unix_timestamp(T0 + 86_400).unwrap(),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(0x1234_5678u64),
            revocation_time: time::OffsetDateTime::from_unix_timestamp(T0 - 60).unwrap(),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&pki.intermediate.issuer())
    .unwrap();
    let v = pki.verifier().with_crls(&[crl.der().to_vec()]).unwrap();
    assert_slug(v.verify(&token, T0), "cert_revoked");
    // an empty CRL from the same CA: accepted
    let empty = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::from_unix_timestamp(T0 - 60).unwrap(),
        next_update: time::OffsetDateTime::from_unix_timestamp(T0 + 86_400).unwrap(),
        crl_number: rcgen::SerialNumber::from(2u64),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&pki.intermediate.issuer())
    .unwrap();
    pki.verifier().with_crls(&[empty.der().to_vec()]).unwrap().verify(&token, T0).unwrap();
    // a CRL past its nextUpdate says nothing about now: refused, not used forever (review S8)
    let stale = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::from_unix_timestamp(T0 - 86_400).unwrap(),
        next_update: time::OffsetDateTime::from_unix_timestamp(T0 - 1).unwrap(),
        crl_number: rcgen::SerialNumber::from(3u64),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&pki.intermediate.issuer())
    .unwrap();
    assert_slug(pki.verifier().with_crls(&[stale.der().to_vec()]).unwrap().verify(&token, T0), "chain_invalid");
    assert_slug(pki.verifier().with_crls(&[vec![0x30, 0x00]]), "config_invalid");
}

/// A 16384-bit RSA public key in a certificate (no private key is needed: the size is refused
/// before any signature is checked). The RSAPublicKey is encoded with rasn.
struct BigRsa(Vec<u8>);

impl rcgen::PublicKeyData for BigRsa {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

#[test]
fn rsa_16384_key_is_refused() {
    use rasn::types::IntegerType;
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let mut modulus = vec![0u8; 16384 / 8 + 1];
    aws_lc_rs::rand::fill(&mut modulus[1..]).unwrap();
    modulus[1] |= 0x80;
    *modulus.last_mut().unwrap() |= 1;
    let key = rasn_pkix::algorithms::RsaPublicKey {
        modulus: rasn::types::Integer::try_from_signed_bytes(&modulus, rasn::Codec::Der).unwrap(),
        public_exponent: rasn::types::Integer::from(65537),
    };
    let big = BigRsa(rasn::der::encode(&key).unwrap());
    let params = leaf_spec(&PKCS_RSA_SHA256);
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, "big");
    p.not_before = time::OffsetDateTime::from_unix_timestamp(params.not_before).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(params.not_after).unwrap();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = p.signed_by(&big, &pki.intermediate.issuer()).unwrap().der().to_vec();
    let chain = vec![leaf, pki.intermediate.der.clone()];
    // signed by some other key: the size check comes first
    let token = sign("ES256", &pki.leaf.key, &header("RS256", &chain), &claims(&[1; 32], T0));
    let e = assert_slug(pki.verifier().verify(&token, T0), "chain_invalid");
    assert!(e.to_string().contains("16384"), "{e}");
}

#[test]
fn proof_rules() {
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let v = pki.verifier();
    let h = header("ES256", &pki.chain());
    let key = &pki.leaf.key;
    let ok = |t: &str| v.verify(t, T0).unwrap();
    ok(&sign("ES256", key, &h, &claims(&[1; 32], T0)));

    // signed by another key than the leaf's
    let stranger = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    assert_slug(v.verify(&sign("ES256", &stranger, &h, &claims(&[1; 32], T0)), T0), "pop_invalid");
    // the type: wrong, missing, an ID token's
    for typ in [json!("JWT"), json!("at+jwt"), json!("ephemera-x509-pop+JWT"), Value::Null] {
        let mut h2 = h.clone();
        if typ.is_null() {
            h2.as_object_mut().unwrap().remove("typ");
        } else {
            h2["typ"] = typ;
        }
        assert_slug(v.verify(&sign("ES256", key, &h2, &claims(&[1; 32], T0)), T0), "pop_invalid");
    }
    // the audience: another, with a trailing slash, as an array, missing
    for aud in [json!("https://other.example"), json!(format!("{AUD}/")), json!([AUD]), Value::Null] {
        let mut c = claims(&[1; 32], T0);
        if aud.is_null() {
            c.as_object_mut().unwrap().remove("aud");
        } else {
            c["aud"] = aud;
        }
        assert_slug(v.verify(&sign("ES256", key, &h, &c), T0), "pop_invalid");
    }
    // the nonce: not 32 bytes, padded, standard alphabet, missing
    for nonce in [
        json!(harness::b64url(&[1; 16])),
        json!(harness::b64url(&[1; 33])),
        json!(format!("{}=", harness::b64url(&[0xfb; 32]))),
        json!(harness::b64(&[0xfb; 32])),
        json!(""),
        json!(12),
        Value::Null,
    ] {
        let mut c = claims(&[1; 32], T0);
        if nonce.is_null() {
            c.as_object_mut().unwrap().remove("nonce");
        } else {
            c["nonce"] = nonce;
        }
        assert_slug(v.verify(&sign("ES256", key, &h, &c), T0), "pop_invalid");
    }
    // iat: 60 s old is fine, 61 s is not; ahead within 5 s is fine, beyond is not; not an integer
    ok(&sign("ES256", key, &h, &claims(&[1; 32], T0 - 60)));
    assert_slug(v.verify(&sign("ES256", key, &h, &claims(&[1; 32], T0 - 61)), T0), "pop_invalid");
    ok(&sign("ES256", key, &h, &claims(&[1; 32], T0 + 5)));
    assert_slug(v.verify(&sign("ES256", key, &h, &claims(&[1; 32], T0 + 6)), T0), "pop_invalid");
    for iat in [json!("1750000000"), json!(1.75e9), Value::Null] {
        let mut c = claims(&[1; 32], T0);
        c["iat"] = iat;
        assert_slug(v.verify(&sign("ES256", key, &h, &c), T0), "pop_invalid");
    }
    // algorithms: none, HS256, an alg that does not fit the leaf's key
    for alg in ["none", "HS256", "ES512", "RS512"] {
        let mut h2 = h.clone();
        h2["alg"] = json!(alg);
        assert_slug(v.verify(&sign("ES256", key, &h2, &claims(&[1; 32], T0)), T0), "alg_not_allowed");
    }
    let mut h2 = h.clone();
    h2["alg"] = json!("ES384");
    assert_slug(v.verify(&sign("ES256", key, &h2, &claims(&[1; 32], T0)), T0), "pop_invalid");
    // header members beyond alg/typ/x5c (keys smuggled in), and duplicates
    for (name, value) in [
        ("jwk", json!({"kty": "EC"})),
        ("x5u", json!("http://127.0.0.1/")),
        ("crit", json!(["b64"])),
        ("kid", json!("k")),
    ] {
        let mut h2 = h.clone();
        h2[name] = value;
        assert_slug(v.verify(&sign("ES256", key, &h2, &claims(&[1; 32], T0)), T0), "pop_invalid");
    }
    let h_text = h.to_string();
    let dup = format!(r#"{{"typ":"JWT",{}"#, &h_text[1..]);
    assert_slug(v.verify(&sign_raw("ES256", key, &dup, &claims(&[1; 32], T0).to_string()), T0), "pop_invalid");
    let dup_claims = format!(r#"{{"aud":"other",{}"#, &claims(&[1; 32], T0).to_string()[1..]);
    assert_slug(v.verify(&sign_raw("ES256", key, &h_text, &dup_claims), T0), "pop_invalid");
    // x5c not base64 / not an array
    let mut h2 = h.clone();
    h2["x5c"] = json!(["!!"]);
    assert_slug(v.verify(&sign("ES256", key, &h2, &claims(&[1; 32], T0)), T0), "pop_invalid");
    h2["x5c"] = json!(harness::b64(&pki.leaf.der));
    assert_slug(v.verify(&sign("ES256", key, &h2, &claims(&[1; 32], T0)), T0), "pop_invalid");
}

#[test]
fn other_signature_formats_fail() {
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let v = pki.verifier();
    let nonce = [9u8; 32];
    let h = header("ES256", &pki.chain());
    let payload = claims(&nonce, T0);
    let input =
        format!("{}.{}", harness::b64url(h.to_string().as_bytes()), harness::b64url(payload.to_string().as_bytes()));
    // the right structure, but the signature is over the raw nonce (no context)
    let raw = harness::ecdsa_sign(&pki.leaf.key, &ECDSA_P256_SHA256_FIXED_SIGNING, &nonce);
    assert_slug(v.verify(&format!("{input}.{}", harness::b64url(&raw)), T0), "pop_invalid");
    // SPIRE's x509pop response: a JSON object carrying a signature over the challenge nonce
    let spire = json!({"signature": harness::b64(&raw), "nonce": harness::b64(&nonce)}).to_string();
    assert_slug(v.verify(&spire, T0), "pop_invalid");
    // a bare base64 signature
    assert_slug(v.verify(&harness::b64url(&raw), T0), "pop_invalid");
    // JWS structure: 2 or 4 segments, empty signature, padding, JSON serialization
    assert_slug(v.verify(&input, T0), "pop_invalid");
    assert_slug(v.verify(&format!("{input}.."), T0), "pop_invalid");
    assert_slug(v.verify(&format!("{input}."), T0), "pop_invalid");
    let good = sign("ES256", &pki.leaf.key, &h, &payload);
    v.verify(&good, T0).unwrap();
    assert_slug(v.verify(&format!("{good}="), T0), "pop_invalid");
    assert_slug(v.verify(&format!(" {good}"), T0), "pop_invalid");
    assert_slug(v.verify(&"a".repeat(40 * 1024), T0), "attestation_malformed");
    // a DER signature instead of raw r‖s
    let der_sig = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &pki.leaf.key.serialize_der(),
    )
    .unwrap()
    .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
    .unwrap();
    assert_slug(v.verify(&format!("{input}.{}", harness::b64url(der_sig.as_ref())), T0), "pop_invalid");
}

#[test]
fn configuration_is_checked() {
    assert_slug(PopVerifier::new(vec![], AUD), "config_invalid");
    assert_slug(PopVerifier::new(vec![vec![1, 2, 3].into()], AUD), "config_invalid");
    let root = Spec::ca("Root", &PKCS_ECDSA_P256_SHA256).self_signed();
    assert_slug(PopVerifier::new(vec![root.der.into()], ""), "config_invalid");
}

/// A proof by a leaf with this subject, under the test PKI's issuing CA.
fn proof_for(pki: &Pki, dn: Vec<(rcgen::DnType, &'static str)>) -> String {
    let leaf = Spec { dn, sans: vec![], ..leaf_spec(&PKCS_ECDSA_P256_SHA256) }.issued_by(&pki.intermediate);
    sign("ES256", &leaf.key, &header("ES256", &[leaf.der.clone(), pki.intermediate.der.clone()]), &claims(&[1; 32], T0))
}

/// Review C8: a CN of `deployer, O=Acme Prod` rendered exactly like `CN=deployer` + `O=Acme Prod`,
/// so a role pinned to that DN admitted an impostor whose CA let it choose its CN. Names are now
/// RFC 4514 with every special character escaped, and a name a policy could read two ways (a list
/// member holding `,`, a control or look-alike character) is refused. The twin: the real
/// two-attribute name renders as before.
#[test]
fn names_render_one_way_only() {
    let pki = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let v = pki.verifier();
    let real = v
        .verify(
            &proof_for(
                &pki,
                vec![(rcgen::DnType::CommonName, "deployer"), (rcgen::DnType::OrganizationName, "Acme Prod")],
            ),
            T0,
        )
        .unwrap();
    assert_eq!(real.subject(), "CN=deployer, O=Acme Prod");
    assert_slug(
        v.verify(&proof_for(&pki, vec![(rcgen::DnType::CommonName, "deployer, O=Acme Prod")]), T0),
        "attestation_malformed",
    );
    // escaped where the value holds a DN special character that is not a list separator
    let plus = v.verify(&proof_for(&pki, vec![(rcgen::DnType::CommonName, "a+b=c;<d>\"e\"")]), T0).unwrap();
    assert_eq!(plus.subject(), r#"CN=a\+b\=c\;\<d\>\"e\""#);
    assert_eq!(plus.attributes()["subject_cn"], json!(["a+b=c;<d>\"e\""]));
    let edges = v.verify(&proof_for(&pki, vec![(rcgen::DnType::CommonName, "#lead and trail ")]), T0).unwrap();
    assert_eq!(edges.subject(), r"CN=\#lead and trail\ ");
    for hidden in ["deploy\u{200b}er", "deployer\n", "dep\u{202e}loyer"] {
        assert_slug(v.verify(&proof_for(&pki, vec![(rcgen::DnType::CommonName, hidden)]), T0), "attestation_malformed");
    }
}

/// Review C9: with several trust anchors, any of them could issue any SPIFFE ID. The evidence now
/// names the anchor that ended the path (`anchor_sha256`), so a role can pin its CA (and the lint
/// requires it when a provider has more than one anchor). The twin: each CA's leaf names its own.
#[test]
fn the_evidence_names_the_anchor_that_issued_it() {
    let prod = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let dev = Pki::new(&PKCS_ECDSA_P256_SHA256);
    let both = PopVerifier::new(vec![prod.root.der.clone().into(), dev.root.der.clone().into()], AUD).unwrap();
    assert_eq!(both.anchor_count(), 2);
    let hex = |d: &[u8]| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, d)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let from_dev = both.verify(&proof(&dev, "ES256", &[1; 32]), T0).unwrap();
    assert_eq!(from_dev.attributes()["spiffe_id"], SPIFFE, "the same SPIFFE ID from either CA");
    assert_eq!(from_dev.attributes()["anchor_sha256"], hex(&dev.root.der));
    let from_prod = both.verify(&proof(&prod, "ES256", &[2; 32]), T0).unwrap();
    assert_eq!(from_prod.attributes()["anchor_sha256"], hex(&prod.root.der));
}

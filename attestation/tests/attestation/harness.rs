//! Shared test helpers: the corpus, test CAs (rcgen with aws-lc-rs), signing with aws-lc-rs.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ephemera_attestation::{AttestationError, Evidence};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm,
};
use std::path::PathBuf;
use time::OffsetDateTime;

/// Every attribute the evidence carries is one its kind declares (`AttestationKind::attributes`):
/// the lists policy builds its schema from cannot drift from what the verifiers emit.
pub(crate) fn assert_declared(e: &Evidence) {
    let declared = e.kind().attributes();
    let undeclared: Vec<&String> = e.attributes().keys().filter(|k| !declared.contains(&k.as_str())).collect();
    assert!(undeclared.is_empty(), "{:?} emits attributes it does not declare: {undeclared:?}", e.kind());
}

/// A fixed clock for synthetic material: 2025-06-15T14:13:20Z.
pub(crate) const T0: i64 = 1_750_000_000;

/// The shared corpus (`EPHEMERA_CORPUS`, else `../../shared/corpus` from this crate). Missing
/// corpus: None locally (the test says so and returns), a failure under `CI=true`.
pub(crate) fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("EPHEMERA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    if dir.join("MANIFEST.json").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false")) {
        panic!("corpus not found at {} (set EPHEMERA_CORPUS)", dir.display());
    }
    eprintln!("corpus not found at {}: skipping", dir.display());
    None
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// DER of the first PEM block in `text`.
pub(crate) fn pem_to_der(text: &str) -> Vec<u8> {
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(b64).unwrap()
}

pub(crate) fn b64url(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub(crate) fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

pub(crate) fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref().to_vec()
}

pub(crate) fn now_real() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Asserts `r` failed with `slug`, and returns the error.
#[track_caller]
pub(crate) fn assert_slug<T: std::fmt::Debug>(r: Result<T, AttestationError>, slug: &str) -> AttestationError {
    match r {
        Ok(v) => panic!("expected `{slug}`, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.slug(), slug, "wrong reason: {e:?} ({e})");
            e
        }
    }
}

fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

/// One certificate and its key, able to issue more.
pub(crate) struct Ca {
    pub der: Vec<u8>,
    pub key: KeyPair,
    pub params: CertificateParams,
}

impl Ca {
    pub(crate) fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// What to put in a test certificate.
pub(crate) struct Spec<'a> {
    pub cn: &'a str,
    pub dn: Vec<(DnType, &'a str)>,
    pub alg: &'static SignatureAlgorithm,
    pub ca: Option<BasicConstraints>,
    /// `IsCa::ExplicitNoCa` instead of no basicConstraints for non-CAs.
    pub explicit_no_ca: bool,
    pub not_before: i64,
    pub not_after: i64,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub eku: Vec<rcgen::ExtendedKeyUsagePurpose>,
    pub sans: Vec<rcgen::SanType>,
    pub serial: Option<u64>,
}

impl<'a> Spec<'a> {
    pub(crate) fn ca(cn: &'a str, alg: &'static SignatureAlgorithm) -> Self {
        Spec {
            cn,
            dn: vec![],
            alg,
            ca: Some(BasicConstraints::Unconstrained),
            explicit_no_ca: false,
            not_before: T0 - 86_400,
            not_after: T0 + 365 * 86_400,
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature],
            eku: vec![],
            sans: vec![],
            serial: None,
        }
    }

    pub(crate) fn leaf(cn: &'a str, alg: &'static SignatureAlgorithm) -> Self {
        Spec {
            ca: None,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            not_before: T0 - 3600,
            not_after: T0 + 3 * 3600,
            ..Spec::ca(cn, alg)
        }
    }

    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if self.dn.is_empty() {
            dn.push(DnType::CommonName, self.cn);
        }
        for (t, v) in &self.dn {
            dn.push(t.clone(), *v);
        }
        p.distinguished_name = dn;
        p.is_ca = match (&self.ca, self.explicit_no_ca) {
            (Some(bc), _) => IsCa::Ca(*bc),
            (None, true) => IsCa::ExplicitNoCa,
            (None, false) => IsCa::NoCa,
        };
        p.not_before = at(self.not_before);
        p.not_after = at(self.not_after);
        p.key_usages = self.key_usages.clone();
        p.extended_key_usages = self.eku.clone();
        p.subject_alt_names = self.sans.clone();
        p.serial_number = self.serial.map(rcgen::SerialNumber::from);
        p
    }

    /// Self-signed.
    pub(crate) fn self_signed(&self) -> Ca {
        let key = KeyPair::generate_for(self.alg).unwrap();
        let params = self.params();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { der, key, params }
    }

    /// Issued by `issuer`.
    pub(crate) fn issued_by(&self, issuer: &Ca) -> Ca {
        let key = KeyPair::generate_for(self.alg).unwrap();
        let params = self.params();
        let der = params.signed_by(&key, &issuer.issuer()).unwrap().der().to_vec();
        Ca { der, key, params }
    }
}

/// ECDSA signature (fixed r‖s) with an rcgen key.
pub(crate) fn ecdsa_sign(key: &KeyPair, alg: &'static signature::EcdsaSigningAlgorithm, msg: &[u8]) -> Vec<u8> {
    let kp = EcdsaKeyPair::from_pkcs8(alg, &key.serialize_der()).unwrap();
    kp.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec()
}

/// The uncompressed public point of an rcgen ECDSA key.
pub(crate) fn ec_point(key: &KeyPair, alg: &'static signature::EcdsaSigningAlgorithm) -> Vec<u8> {
    EcdsaKeyPair::from_pkcs8(alg, &key.serialize_der()).unwrap().public_key().as_ref().to_vec()
}

/// RSA signature with an rcgen RSA key.
pub(crate) fn rsa_sign(key: &KeyPair, padding: &'static dyn signature::RsaEncoding, msg: &[u8]) -> Vec<u8> {
    let kp = signature::RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap();
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(padding, &SystemRandom::new(), msg, &mut sig).unwrap();
    sig
}

pub(crate) fn ed25519_sign(key: &KeyPair, msg: &[u8]) -> Vec<u8> {
    let kp = signature::Ed25519KeyPair::from_pkcs8(&key.serialize_der()).unwrap();
    kp.sign(msg).as_ref().to_vec()
}

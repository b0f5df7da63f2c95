//! X.509 proof of possession: a compact JWS of the broker's own type, signed by the private key
//! of a certificate that chains to a configured trust anchor.
//!
//! The proof:
//! ```text
//! header  {"alg": "ES256"|"ES384"|"RS256"|"PS256"|"EdDSA", "typ": "ephemera-x509-pop+jwt",
//!          "x5c": ["<base64 DER leaf>", "<intermediate>", ...]}
//! payload {"aud": "<broker audience>", "nonce": "<base64url of 32 broker-issued bytes>", "iat": <int>}
//! ```
//! The `typ` separates it from every other JWS (an ID token, a broker JWT, SPIRE's x509pop
//! challenge response or a bare signature over the nonce can never pass as one).
//!
//! The checks, in order: size; three strict base64url segments with JSON object header and
//! payload, no duplicate members; header members exactly `alg`, `typ`, `x5c`; `typ`; `alg` on the
//! allow-list; `x5c` at most `max_chain_len`; RSA keys at most `max_rsa_bits`; leaf has
//! `digitalSignature` and is not a CA; serials not on the denylist; the chain to a configured
//! anchor at `now` with rustls-webpki (CA flags, path length, validity, extended key usage
//! clientAuth if present, CRLs) using every presented certificate; the JWS signature with the
//! leaf's key; then, from the signed payload, `aud`, `nonce` and `iat`.

use crate::AttestationKind;
use crate::certs;
use crate::error::{AttestationError, ChainProblem, Malformed, PopProblem};
use crate::evidence::{Evidence, KeyBinding};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ephemera_untrusted::json::{self, StrictJsonError};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Every evidence attribute a proof of possession yields: the leaf certificate's
/// (`certs::attributes`) and the proof's own (`alg`, `chain_len`).
pub const ATTRIBUTES: &[&str] = &[
    "subject_dn",
    "subject_cn",
    "subject_o",
    "subject_ou",
    "subject_c",
    "issuer_dn",
    "serial",
    "not_before",
    "not_after",
    "spiffe_id",
    "dns_sans",
    "uri_sans",
    "alg",
    "chain_len",
    "anchor_sha256",
];

/// The `typ` of a proof: nothing else the broker accepts or issues carries it.
pub const POP_TYP: &str = "ephemera-x509-pop+jwt";

/// Nonce length the broker issues, in bytes.
pub const NONCE_LEN: usize = 32;

/// Certificate signature algorithms accepted on chains (aws-lc-rs).
static CHAIN_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA256,
    webpki::aws_lc_rs::ECDSA_P521_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA512,
    webpki::aws_lc_rs::ED25519,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// JWS algorithms accepted for the proof itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProofAlg {
    Es256,
    Es384,
    Rs256,
    Ps256,
    EdDsa,
}

impl ProofAlg {
    fn parse(alg: &str) -> Result<ProofAlg, AttestationError> {
        match alg {
            "ES256" => Ok(ProofAlg::Es256),
            "ES384" => Ok(ProofAlg::Es384),
            "RS256" => Ok(ProofAlg::Rs256),
            "PS256" => Ok(ProofAlg::Ps256),
            "EdDSA" => Ok(ProofAlg::EdDsa),
            other => Err(AttestationError::AlgNotAllowed { alg: crate::error::escape_untrusted(other, 32) }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ProofAlg::Es256 => "ES256",
            ProofAlg::Es384 => "ES384",
            ProofAlg::Rs256 => "RS256",
            ProofAlg::Ps256 => "PS256",
            ProofAlg::EdDsa => "EdDSA",
        }
    }
}

/// Verifies X.509 proofs of possession against configured trust anchors.
#[derive(Debug)]
pub struct PopVerifier {
    anchors: Vec<CertificateDer<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    revoked_serials: BTreeSet<String>,
    /// `aud` the proof must carry, exactly.
    pub audience: String,
    /// `typ` the proof must carry, exactly (default [`POP_TYP`]).
    pub typ: String,
    /// Most certificates accepted in `x5c` (default 5).
    pub max_chain_len: usize,
    /// Largest RSA modulus accepted anywhere in `x5c` (default 8192).
    pub max_rsa_bits: usize,
    /// Largest `now - iat` accepted, in seconds (default 60).
    pub max_age_secs: u64,
    /// How far `iat` may be ahead of `now`, in seconds (default 5).
    pub leeway_secs: u64,
    /// Largest proof accepted, in bytes (default 32 KiB).
    pub max_jws_bytes: usize,
}

impl PopVerifier {
    /// How many trust anchors it has (with more than one, roles must pin `anchor_sha256`).
    pub fn anchor_count(&self) -> usize {
        self.anchors.len()
    }

    /// A verifier for `audience` trusting `anchors` (DER certificates).
    pub fn new(anchors: Vec<CertificateDer<'static>>, audience: impl Into<String>) -> Result<Self, AttestationError> {
        if anchors.is_empty() {
            return Err(AttestationError::Config("no trust anchors"));
        }
        for a in &anchors {
            webpki::anchor_from_trusted_cert(a).map_err(|_| AttestationError::Config("trust anchor does not parse"))?;
        }
        let audience = audience.into();
        if audience.is_empty() {
            return Err(AttestationError::Config("empty audience"));
        }
        Ok(PopVerifier {
            anchors,
            crls: Vec::new(),
            revoked_serials: BTreeSet::new(),
            audience,
            typ: POP_TYP.to_owned(),
            max_chain_len: 5,
            max_rsa_bits: 8192,
            max_age_secs: 60,
            leeway_secs: 5,
            max_jws_bytes: 32 * 1024,
        })
    }

    /// Adds CRLs (DER) issued by the anchors or intermediates; rustls-webpki checks their
    /// signatures, and a listed serial is refused `cert_revoked`. Certificates whose issuer has no
    /// CRL here are not refused for that.
    pub fn with_crls(mut self, crls: &[Vec<u8>]) -> Result<Self, AttestationError> {
        for der in crls {
            let crl = webpki::OwnedCertRevocationList::from_der(der)
                .map_err(|_| AttestationError::Config("CRL does not parse"))?;
            self.crls.push(crl.into());
        }
        Ok(self)
    }

    /// Adds certificate serials (hex, any case, leading zeros ignored) refused wherever they
    /// appear in a presented chain.
    pub fn with_revoked_serials<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, serials: I) -> Self {
        for s in serials {
            let s = s.as_ref().trim().to_ascii_lowercase();
            let s = s.trim_start_matches('0');
            self.revoked_serials.insert(if s.is_empty() { "00".to_owned() } else { s.to_owned() });
        }
        self
    }

    /// Verifies one proof at `now` (UNIX seconds). The returned [`Evidence::nonce`] is the
    /// 32-byte nonce the broker must recognise and consume.
    pub fn verify(&self, jws: &str, now: i64) -> Result<Evidence, AttestationError> {
        if jws.len() > self.max_jws_bytes {
            return Err(AttestationError::TooLarge { size: jws.len(), max: self.max_jws_bytes });
        }
        let structure = || AttestationError::Pop(PopProblem::Structure);
        let mut parts = jws.split('.');
        let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(structure());
        };
        let header = strict_object(&b64url_strict(h64).ok_or_else(structure)?)?;
        let payload_bytes = b64url_strict(p64).ok_or_else(structure)?;
        let payload = strict_object(&payload_bytes)?;
        let signature = b64url_strict(s64).ok_or_else(structure)?;

        if header.keys().any(|k| !matches!(k.as_str(), "alg" | "typ" | "x5c")) {
            return Err(AttestationError::Pop(PopProblem::HeaderMember));
        }
        if header.get("typ").and_then(Value::as_str) != Some(self.typ.as_str()) {
            return Err(AttestationError::Pop(PopProblem::Typ));
        }
        let alg = match header.get("alg") {
            Some(Value::String(a)) => ProofAlg::parse(a)?,
            _ => return Err(AttestationError::AlgNotAllowed { alg: "missing".into() }),
        };
        let x5c = match header.get("x5c") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => return Err(AttestationError::Pop(PopProblem::X5c)),
        };
        if x5c.len() > self.max_chain_len {
            return Err(AttestationError::ChainInvalid(ChainProblem::TooLong {
                len: x5c.len(),
                max: self.max_chain_len,
            }));
        }
        let ders = x5c
            .iter()
            .map(|c| c.as_str().and_then(|s| STANDARD.decode(s).ok()))
            .collect::<Option<Vec<Vec<u8>>>>()
            .ok_or(AttestationError::Pop(PopProblem::X5c))?;
        let parsed = ders.iter().enumerate().map(|(i, d)| certs::parse(d, i)).collect::<Result<Vec<_>, _>>()?;
        let (Some(leaf), Some(leaf_der)) = (parsed.first(), ders.first()) else {
            return Err(AttestationError::Pop(PopProblem::X5c));
        };

        // Checks rustls-webpki leaves to us: key sizes, the leaf's key usage, the denylist.
        for cert in &parsed {
            if let Some(bits) = certs::rsa_bits(cert.public_key())
                && bits > self.max_rsa_bits
            {
                return Err(AttestationError::ChainInvalid(ChainProblem::RsaKeyTooLarge {
                    bits,
                    max: self.max_rsa_bits,
                }));
            }
        }
        if leaf.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
            return Err(AttestationError::ChainInvalid(ChainProblem::LeafIsCa));
        }
        match leaf.key_usage() {
            Ok(Some(ku)) if ku.value.digital_signature() => {}
            _ => return Err(AttestationError::ChainInvalid(ChainProblem::LeafKeyUsage)),
        }
        for cert in &parsed {
            let serial = certs::serial_hex(cert);
            // Both sides without leading zero digits: `0a1b` and `a1b` name the same serial.
            let normal = serial.trim_start_matches('0');
            if self.revoked_serials.contains(if normal.is_empty() { "00" } else { normal }) {
                return Err(AttestationError::CertRevoked { serial });
            }
        }
        let all: Vec<(usize, &x509_parser::certificate::X509Certificate<'_>)> = parsed.iter().enumerate().collect();
        certs::check_validity(&all, now, 0)?;

        // The chain, at now.
        let anchors = self
            .anchors
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| AttestationError::Config("trust anchor does not parse"))?;
        let intermediates: Vec<CertificateDer<'_>> =
            ders.iter().skip(1).map(|d| CertificateDer::from(d.as_slice())).collect();
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            // a CRL past its nextUpdate is not evidence of anything now (review S8)
            b.with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .build()
        });
        let (path, anchor) = certs::verify_path(
            leaf_der,
            &intermediates,
            &anchors,
            CHAIN_ALGS,
            certs::unix_time(now),
            revocation,
            "configured trust anchors",
        )
        .map_err(|e| match e {
            AttestationError::CertRevoked { .. } => AttestationError::CertRevoked { serial: "(per CRL)".into() },
            e => e,
        })?;
        // INVARIANT: every presented certificate is on the path (or is its anchor).
        for d in ders.iter().skip(1) {
            let used = path.iter().any(|p| p == d) || self.anchors.iter().any(|a| a.as_ref() == d.as_slice());
            if !used {
                return Err(AttestationError::ChainInvalid(ChainProblem::UnusedCertificate));
            }
        }

        // The proof's signature with the leaf's key.
        let spki = leaf.public_key();
        let key_oid = spki.algorithm.algorithm.to_id_string();
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
        let verify_alg: &dyn aws_lc_rs::signature::VerificationAlgorithm = match (alg, key_oid.as_str()) {
            (ProofAlg::Es256, certs::OID_EC_PUBLIC_KEY) if curve.as_deref() == Some(certs::OID_P256) => {
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED
            }
            (ProofAlg::Es384, certs::OID_EC_PUBLIC_KEY) if curve.as_deref() == Some(certs::OID_P384) => {
                &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED
            }
            (ProofAlg::Rs256, certs::OID_RSA_ENCRYPTION) => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            (ProofAlg::Ps256, certs::OID_RSA_ENCRYPTION) => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            (ProofAlg::EdDsa, certs::OID_ED25519) => &aws_lc_rs::signature::ED25519,
            _ => return Err(AttestationError::Pop(PopProblem::KeyAlgMismatch)),
        };
        let signing_input_len = h64.len() + 1 + p64.len();
        let signing_input = jws.get(..signing_input_len).ok_or_else(structure)?;
        aws_lc_rs::signature::UnparsedPublicKey::new(verify_alg, &spki.subject_public_key.data)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| AttestationError::Pop(PopProblem::Signature))?;

        // The signed claims.
        match payload.get("aud") {
            Some(Value::String(a)) if *a == self.audience => {}
            _ => return Err(AttestationError::Pop(PopProblem::Audience)),
        }
        let nonce = match payload.get("nonce") {
            Some(Value::String(n)) => b64url_strict(n).filter(|n| n.len() == NONCE_LEN),
            _ => None,
        }
        .ok_or(AttestationError::Pop(PopProblem::Nonce))?;
        let iat = payload.get("iat").and_then(Value::as_i64).ok_or(AttestationError::Pop(PopProblem::IatType))?;
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(i64::MAX);
        let max_age = i64::try_from(self.max_age_secs).unwrap_or(i64::MAX);
        if iat > now.saturating_add(leeway) {
            return Err(AttestationError::Pop(PopProblem::IatInFuture { iat, now }));
        }
        if now.saturating_sub(iat) > max_age {
            return Err(AttestationError::Pop(PopProblem::IatTooOld { iat, now, max: self.max_age_secs }));
        }

        let mut attributes =
            certs::attributes(leaf).ok_or(AttestationError::Malformed(Malformed::Field("certificate names")))?;
        // Which configured anchor issued it: with several, a role pins its CA (review C9: any
        // anchor could otherwise issue any SPIFFE ID or name).
        if let Some(a) = self.anchors.get(anchor) {
            attributes.insert("anchor_sha256".into(), certs::hex(&certs::sha256(a.as_ref())).into());
        }
        attributes.insert("alg".into(), alg.name().into());
        attributes.insert("chain_len".into(), ders.len().into());
        let subject = match attributes.get("spiffe_id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => attributes.get("subject_dn").and_then(Value::as_str).unwrap_or_default().to_owned(),
        };
        let not_after = parsed.iter().map(|c| c.validity().not_after.timestamp()).min().unwrap_or(now);
        Ok(Evidence {
            kind: AttestationKind::X509ProofOfPossession,
            subject,
            attributes,
            nonce: Some(nonce),
            issued_at: iat,
            not_after,
            key_binding: Some(KeyBinding::X5tS256(certs::b64url(&certs::sha256(leaf_der)))),
            replay_id: format!("x509pop:{}", certs::hex(&certs::sha256(signing_input.as_bytes()))),
            replayable: false,
            debug: false,
        })
    }
}

/// Unpadded base64url, canonical, non-empty.
fn b64url_strict(seg: &str) -> Option<Vec<u8>> {
    if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    URL_SAFE_NO_PAD.decode(seg).ok()
}

fn strict_object(bytes: &[u8]) -> Result<Map<String, Value>, AttestationError> {
    json::parse_object(bytes).map_err(|e| match e {
        StrictJsonError::Duplicate(_) => AttestationError::Pop(PopProblem::DuplicateMember),
        StrictJsonError::Syntax(_) | StrictJsonError::NotAnObject => AttestationError::Pop(PopProblem::Structure),
    })
}

impl From<PopProblem> for AttestationError {
    fn from(p: PopProblem) -> Self {
        AttestationError::Pop(p)
    }
}

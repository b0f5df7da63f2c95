//! AWS Nitro Enclaves attestation documents: COSE_Sign1 (ES384) over a CBOR payload, signed by
//! a per-enclave certificate that chains `cabundle[0]` (the AWS Nitro Enclaves root G1) →
//! regional → zonal → instance → `certificate`.
//!
//! The checks, in order, each with its own error:
//! 1. size (16 KiB by default) and a bounded CBOR pre-scan (definite lengths, depth ≤ 8, no tags
//!    but an optional outer tag 18, nothing after the item);
//! 2. COSE_Sign1 shape; protected header exactly `{1: -35}` (ES384 and nothing else), unprotected
//!    header empty → `cose_header_invalid`;
//! 3. payload typed as AWS documents it (`module_id`, `digest` = `SHA384`, `timestamp`, `pcrs`
//!    0..=31 → 48 bytes with PCR0..2 present, `certificate`, `cabundle` of 1..=10, optional
//!    `public_key`, `user_data`, `nonce`), duplicate or unknown keys refused →
//!    `attestation_malformed`;
//! 4. `cabundle[0]` byte-identical to the pinned root → `untrusted_root`;
//! 5. every certificate valid at the document's timestamp, and the path
//!    `certificate` → `cabundle[n-1]` … `cabundle[1]` → pinned root verified by rustls-webpki at
//!    that fixed time, using every bundled certificate in the documented order → `chain_invalid`;
//! 6. the ES384 signature over the Sig_structure with the leaf's P-384 key → `signature_invalid`;
//! 7. every certificate still valid at the broker's `now` → `cert_expired`;
//! 8. the timestamp no older than `max_age_secs` and not ahead of `now` by more than the leeway
//!    → `stale_attestation`; a nonce when `require_nonce` → `nonce_invalid`.
//!
//! The payload is decoded from the very bytes the signature covers; until step 6 passes nothing
//! from it is used except the certificates that step 5 checks.
//!
//! One concern in one file, the longest of the crate: the Nitro checks in the order above, each
//! with its own error, from bytes to `Evidence`. They are one sequence; cutting it would put the
//! reason for a check's order in another file.

use crate::certs;
use crate::error::{AttestationError, ChainProblem, CoseHeaderProblem, Malformed, PcrPolicyProblem};
use crate::evidence::{Evidence, KeyBinding};
use crate::{AttestationKind, cbor};
use base64::Engine;
use ciborium::Value;
use coset::{AsCborValue, CoseSign1, Header, ProtectedHeader, RegisteredLabelWithPrivate, iana};
use rustls_pki_types::CertificateDer;
use serde_json::Map;
use std::collections::BTreeMap;
use x509_parser::prelude::FromDer;

/// Every evidence attribute a Nitro document yields (`into_evidence`): module id, digest, the
/// document's timestamp (ms), each PCR present (`pcr0`…`pcr31`), user data, whether a public
/// key and a nonce were present, and whether it is a debug enclave.
pub const ATTRIBUTES: &[&str] = &[
    "module_id",
    "digest",
    "timestamp",
    "pcr0",
    "pcr1",
    "pcr2",
    "pcr3",
    "pcr4",
    "pcr5",
    "pcr6",
    "pcr7",
    "pcr8",
    "pcr9",
    "pcr10",
    "pcr11",
    "pcr12",
    "pcr13",
    "pcr14",
    "pcr15",
    "pcr16",
    "pcr17",
    "pcr18",
    "pcr19",
    "pcr20",
    "pcr21",
    "pcr22",
    "pcr23",
    "pcr24",
    "pcr25",
    "pcr26",
    "pcr27",
    "pcr28",
    "pcr29",
    "pcr30",
    "pcr31",
    "user_data",
    "public_key_present",
    "nonce_present",
    "debug",
];

/// SHA-256 of the DER of the AWS Nitro Enclaves Root G1 certificate
/// (`CN=aws.nitro-enclaves, C=US, O=Amazon, OU=AWS`, P-384, valid 2019-10-28 to 2049-10-28),
/// as AWS publishes it.
pub const AWS_NITRO_ROOT_G1_SHA256: &str = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

/// Default largest document accepted, in bytes (real documents are about 4.5 KiB).
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Most certificates accepted in `cabundle` (AWS sends 4).
pub const MAX_CABUNDLE: usize = 10;
/// Largest certificate, `public_key`, `user_data` or `nonce`, per the AWS document spec.
pub const MAX_FIELD_BYTES: usize = 1024;
/// SHA-384 PCR length.
pub const PCR_LEN: usize = 48;
/// PCR0, PCR1 and PCR2 all zero mark an enclave started in debug mode.
const DEBUG_PCRS: [u8; 3] = [0, 1, 2];

/// Verifies Nitro attestation documents against one pinned root.
#[derive(Debug, Clone)]
pub struct NitroVerifier {
    root_der: Vec<u8>,
    root_sha256: String,
    /// Largest `now - timestamp` accepted, in seconds (default 300).
    pub max_age_secs: u64,
    /// How far the timestamp may be ahead of `now`, and the slack on certificate validity at
    /// `now`, in seconds (default 5).
    pub leeway_secs: u64,
    /// Refuse documents without a (non-empty) nonce (default true). The broker still has to check
    /// that the nonce is one it issued and consume it.
    pub require_nonce: bool,
    /// Largest document accepted, in bytes.
    pub max_document_bytes: usize,
}

impl NitroVerifier {
    /// A verifier pinned to `root_der` (the DER of the root certificate, as configured).
    pub fn new(root_der: Vec<u8>) -> Result<Self, AttestationError> {
        let cert = CertificateDer::from(root_der.as_slice());
        webpki::anchor_from_trusted_cert(&cert).map_err(|_| AttestationError::Config("root is not a certificate"))?;
        let root_sha256 = certs::hex(&certs::sha256(&root_der));
        Ok(NitroVerifier {
            root_der,
            root_sha256,
            max_age_secs: 300,
            leeway_secs: 5,
            require_nonce: true,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
        })
    }

    /// Like [`NitroVerifier::new`], and the root must hash to `sha256_hex` (config that names both
    /// a root file and its fingerprint; use [`AWS_NITRO_ROOT_G1_SHA256`] for AWS's root).
    pub fn with_pinned_sha256(root_der: Vec<u8>, sha256_hex: &str) -> Result<Self, AttestationError> {
        let v = Self::new(root_der)?;
        if !v.root_sha256.eq_ignore_ascii_case(sha256_hex.trim()) {
            return Err(AttestationError::Config("root certificate does not match the pinned SHA-256"));
        }
        Ok(v)
    }

    /// Lowercase hex SHA-256 of the pinned root's DER.
    pub fn root_sha256(&self) -> &str {
        &self.root_sha256
    }

    /// Verifies one document (raw COSE_Sign1 bytes, tagged or untagged) at `now` (UNIX seconds).
    pub fn verify(&self, doc: &[u8], now: i64) -> Result<Evidence, AttestationError> {
        if doc.len() > self.max_document_bytes {
            return Err(AttestationError::TooLarge { size: doc.len(), max: self.max_document_bytes });
        }
        cbor::scan(doc, true)?;
        let sign1 = decode_sign1(doc)?;
        let payload = sign1.payload.as_deref().ok_or(Malformed::DetachedPayload)?;
        let fields = Payload::decode(payload)?;

        // 4. the pinned root, byte for byte, where AWS documents it
        let pinned = || AttestationError::UntrustedRoot { pinned: format!("sha256:{}", self.root_sha256) };
        if fields.cabundle.first().map(Vec::as_slice) != Some(self.root_der.as_slice()) {
            return Err(pinned());
        }

        // 5. the chain at the document's own time
        let mut parsed = Vec::with_capacity(fields.cabundle.len() + 1);
        for (i, der) in fields.cabundle.iter().chain(std::iter::once(&fields.certificate)).enumerate() {
            parsed.push((i, certs::parse(der, i)?));
        }
        let all: Vec<(usize, &x509_parser::certificate::X509Certificate<'_>)> =
            parsed.iter().map(|(i, c)| (*i, c)).collect();
        let doc_secs = i64::try_from(fields.timestamp_ms / 1000).unwrap_or(i64::MAX);
        certs::check_validity(&all, doc_secs, 0)?;
        let root = CertificateDer::from(self.root_der.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|_| pinned())?;
        let intermediates: Vec<CertificateDer<'_>> =
            fields.cabundle.iter().skip(1).map(|c| CertificateDer::from(c.as_slice())).collect();
        let doc_time =
            rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_millis(fields.timestamp_ms));
        let (path, _) = certs::verify_path(
            &fields.certificate,
            &intermediates,
            &[anchor],
            &[webpki::aws_lc_rs::ECDSA_P384_SHA384],
            doc_time,
            None,
            &format!("sha256:{}", self.root_sha256),
        )?;
        // INVARIANT: the path uses every bundled certificate, in the documented order
        // (leaf's issuer = cabundle[n-1], ..., cabundle[1] issued by the root).
        let expected: Vec<&[u8]> = fields.cabundle.iter().skip(1).rev().map(Vec::as_slice).collect();
        let got: Vec<&[u8]> = path.iter().map(Vec::as_slice).collect();
        if expected != got {
            return Err(AttestationError::ChainInvalid(ChainProblem::UnusedCertificate));
        }

        // 6. the COSE signature with the leaf's P-384 key
        let leaf = parsed.last().map(|(_, c)| c).ok_or(Malformed::MissingField("certificate"))?;
        let spki = leaf.public_key();
        let is_p384 = spki.algorithm.algorithm.to_id_string() == certs::OID_EC_PUBLIC_KEY
            && spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string())
                == Some(certs::OID_P384.to_owned());
        if !is_p384 {
            return Err(AttestationError::ChainInvalid(ChainProblem::UnsupportedAlgorithm));
        }
        let tbs = sign1.tbs_data(b"");
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
            &spki.subject_public_key.data,
        )
        .verify(&tbs, &sign1.signature)
        .map_err(|_| AttestationError::SignatureInvalid)?;

        // 7. still valid now
        certs::check_validity(&all, now, self.leeway_secs)?;

        // 8. freshness and nonce
        let ts = i128::from(fields.timestamp_ms);
        let now_ms = i128::from(now) * 1000;
        if ts > now_ms + i128::from(self.leeway_secs) * 1000 {
            return Err(AttestationError::FromFuture { timestamp: doc_secs, now, leeway: self.leeway_secs });
        }
        if now_ms - ts > i128::from(self.max_age_secs) * 1000 {
            return Err(AttestationError::Stale { timestamp: doc_secs, now, max_age: self.max_age_secs });
        }
        let nonce = fields.nonce.clone().filter(|n| !n.is_empty());
        if self.require_nonce && nonce.is_none() {
            return Err(AttestationError::NonceMissing);
        }

        let min_cert_not_after = all.iter().map(|(_, c)| c.validity().not_after.timestamp()).min().unwrap_or(doc_secs);
        let max_age = i64::try_from(self.max_age_secs).unwrap_or(i64::MAX);
        let not_after = doc_secs.saturating_add(max_age).min(min_cert_not_after);
        Ok(fields.into_evidence(nonce, doc_secs, not_after, &tbs))
    }
}

/// Decodes the text form of a document as the broker receives it in `subject_token`: standard
/// or URL-safe base64, padded or not, line breaks and spaces ignored.
pub fn decode_document_text(text: &str, max_document_bytes: usize) -> Result<Vec<u8>, AttestationError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let max_text = max_document_bytes.div_ceil(3) * 4;
    if compact.len() > max_text {
        return Err(AttestationError::TooLarge { size: compact.len(), max: max_text });
    }
    let config = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    let standard = base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url = base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    standard.decode(&compact).or_else(|_| url.decode(&compact)).map_err(|_| Malformed::Base64.into())
}

fn decode_sign1(doc: &[u8]) -> Result<CoseSign1, AttestationError> {
    // INVARIANT: `cbor::scan` passed, so the item is bounded in depth and size.
    let value: Value = ciborium::de::from_reader(doc).map_err(|_| Malformed::CborSyntax)?;
    let value = match value {
        Value::Tag(cbor::COSE_SIGN1_TAG, inner) => *inner,
        Value::Tag(t, _) => return Err(Malformed::CborTag(t).into()),
        v => v,
    };
    let Value::Array(items) = value else { return Err(Malformed::NotCoseSign1.into()) };
    let [protected, unprotected, payload, signature]: [Value; 4] =
        items.try_into().map_err(|_| Malformed::NotCoseSign1)?;

    let protected_bytes = match &protected {
        Value::Bytes(b) => b,
        _ => return Err(Malformed::NotCoseSign1.into()),
    };
    if !protected_bytes.is_empty() {
        cbor::scan(protected_bytes, false).map_err(|_| AttestationError::CoseHeader(CoseHeaderProblem::Undecodable))?;
    }
    let protected = ProtectedHeader::from_cbor_bstr(protected)
        .map_err(|_| AttestationError::CoseHeader(CoseHeaderProblem::Undecodable))?;
    if !matches!(unprotected, Value::Map(_)) {
        return Err(Malformed::NotCoseSign1.into());
    }
    let unprotected = Header::from_cbor_value(unprotected)
        .map_err(|_| AttestationError::CoseHeader(CoseHeaderProblem::Undecodable))?;
    let payload = match payload {
        Value::Bytes(b) => Some(b),
        Value::Null => return Err(Malformed::DetachedPayload.into()),
        _ => return Err(Malformed::NotCoseSign1.into()),
    };
    let Value::Bytes(signature) = signature else { return Err(Malformed::NotCoseSign1.into()) };

    let h = &protected.header;
    match &h.alg {
        Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384)) => {}
        None => return Err(AttestationError::CoseHeader(CoseHeaderProblem::AlgMissing)),
        Some(RegisteredLabelWithPrivate::Assigned(a)) => {
            return Err(AttestationError::CoseHeader(CoseHeaderProblem::AlgNotEs384(format!("{}", *a as i64))));
        }
        Some(RegisteredLabelWithPrivate::PrivateUse(a)) => {
            return Err(AttestationError::CoseHeader(CoseHeaderProblem::AlgNotEs384(a.to_string())));
        }
        Some(RegisteredLabelWithPrivate::Text(_)) => {
            return Err(AttestationError::CoseHeader(CoseHeaderProblem::AlgNotEs384("text".into())));
        }
    }
    let only_alg = Header { alg: None, ..h.clone() };
    if !only_alg.is_empty() {
        return Err(AttestationError::CoseHeader(CoseHeaderProblem::UnexpectedProtected));
    }
    if !unprotected.is_empty() {
        return Err(AttestationError::CoseHeader(CoseHeaderProblem::UnprotectedNotEmpty));
    }
    Ok(CoseSign1 { protected, unprotected, payload, signature })
}

/// The payload fields, typed. Nothing in it is trusted until the signature has verified.
struct Payload {
    module_id: String,
    digest: String,
    timestamp_ms: u64,
    pcrs: BTreeMap<u8, Vec<u8>>,
    certificate: Vec<u8>,
    cabundle: Vec<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
}

fn bytes_field(v: Value, field: &'static str, min: usize, max: usize) -> Result<Vec<u8>, Malformed> {
    match v {
        Value::Bytes(b) if (min..=max).contains(&b.len()) => Ok(b),
        _ => Err(Malformed::Field(field)),
    }
}

fn optional_bytes(v: Value, field: &'static str, min: usize) -> Result<Option<Vec<u8>>, Malformed> {
    match v {
        Value::Null => Ok(None),
        v => bytes_field(v, field, min, MAX_FIELD_BYTES).map(Some),
    }
}

impl Payload {
    fn decode(payload: &[u8]) -> Result<Payload, Malformed> {
        cbor::scan(payload, false)?;
        let value: Value = ciborium::de::from_reader(payload).map_err(|_| Malformed::CborSyntax)?;
        let Value::Map(entries) = value else { return Err(Malformed::Field("payload")) };
        let mut seen: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in entries {
            let Value::Text(k) = k else { return Err(Malformed::Field("payload key")) };
            const KNOWN: [&str; 9] = [
                "module_id",
                "digest",
                "timestamp",
                "pcrs",
                "certificate",
                "cabundle",
                "public_key",
                "user_data",
                "nonce",
            ];
            if !KNOWN.contains(&k.as_str()) {
                return Err(Malformed::UnknownField(crate::error::escape_untrusted(&k, 32)));
            }
            if seen.contains_key(&k) {
                return Err(Malformed::DuplicateKey(k));
            }
            seen.insert(k, v);
        }
        let mut take = |k: &'static str| seen.remove(k).ok_or(Malformed::MissingField(k));

        let module_id = match take("module_id")? {
            Value::Text(s) if !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_graphic()) => s,
            _ => return Err(Malformed::Field("module_id")),
        };
        let digest = match take("digest")? {
            Value::Text(s) if s == "SHA384" => s,
            _ => return Err(Malformed::Field("digest")),
        };
        let timestamp_ms = match take("timestamp")? {
            Value::Integer(i) => u64::try_from(i).ok().filter(|t| *t > 0).ok_or(Malformed::Field("timestamp"))?,
            _ => return Err(Malformed::Field("timestamp")),
        };
        let pcrs = match take("pcrs")? {
            Value::Map(m) if !m.is_empty() && m.len() <= 32 => {
                let mut pcrs = BTreeMap::new();
                for (k, v) in m {
                    let index = match k {
                        Value::Integer(i) => u8::try_from(i).ok().filter(|i| *i <= 31),
                        _ => None,
                    }
                    .ok_or(Malformed::Field("pcrs"))?;
                    let value = bytes_field(v, "pcrs", PCR_LEN, PCR_LEN)?;
                    if pcrs.insert(index, value).is_some() {
                        return Err(Malformed::DuplicateKey(format!("pcrs[{index}]")));
                    }
                }
                if !DEBUG_PCRS.iter().all(|i| pcrs.contains_key(i)) {
                    return Err(Malformed::Field("pcrs"));
                }
                pcrs
            }
            _ => return Err(Malformed::Field("pcrs")),
        };
        let certificate = bytes_field(take("certificate")?, "certificate", 1, MAX_FIELD_BYTES)?;
        let cabundle = match take("cabundle")? {
            Value::Array(a) if a.is_empty() => return Err(Malformed::Field("cabundle")),
            Value::Array(a) if a.len() > MAX_CABUNDLE => return Err(Malformed::TooMany("cabundle")),
            Value::Array(a) => {
                a.into_iter().map(|c| bytes_field(c, "cabundle", 1, MAX_FIELD_BYTES)).collect::<Result<Vec<_>, _>>()?
            }
            _ => return Err(Malformed::Field("cabundle")),
        };
        let public_key = seen.remove("public_key").map(|v| optional_bytes(v, "public_key", 1)).transpose()?.flatten();
        let user_data = seen.remove("user_data").map(|v| optional_bytes(v, "user_data", 0)).transpose()?.flatten();
        let nonce = seen.remove("nonce").map(|v| optional_bytes(v, "nonce", 0)).transpose()?.flatten();
        Ok(Payload { module_id, digest, timestamp_ms, pcrs, certificate, cabundle, public_key, user_data, nonce })
    }

    /// The evidence of a verified document: its attributes are [`ATTRIBUTES`] (keep the two
    /// together).
    fn into_evidence(self, nonce: Option<Vec<u8>>, issued_at: i64, not_after: i64, tbs: &[u8]) -> Evidence {
        let debug = DEBUG_PCRS.iter().all(|i| self.pcrs.get(i).is_some_and(|v| v.iter().all(|b| *b == 0)));
        let mut a = Map::new();
        a.insert("module_id".into(), self.module_id.clone().into());
        a.insert("digest".into(), self.digest.into());
        a.insert("timestamp".into(), self.timestamp_ms.into());
        for (i, v) in &self.pcrs {
            a.insert(format!("pcr{i}"), certs::hex(v).into());
        }
        if let Some(u) = &self.user_data {
            a.insert("user_data".into(), certs::b64url(u).into());
        }
        a.insert("public_key_present".into(), self.public_key.is_some().into());
        a.insert("nonce_present".into(), nonce.is_some().into());
        a.insert("debug".into(), debug.into());
        let key_binding = self.public_key.as_deref().map(|pk| {
            match x509_parser::x509::SubjectPublicKeyInfo::from_der(pk) {
                Ok(([], spki)) => certs::jwk_thumbprint(&spki).map(KeyBinding::JwkThumbprint),
                _ => None,
            }
            .unwrap_or_else(|| KeyBinding::PublicKeySha256(certs::b64url(&certs::sha256(pk))))
        });
        Evidence {
            kind: AttestationKind::Nitro,
            subject: format!("nitro:{}", self.module_id),
            attributes: a,
            nonce,
            issued_at,
            not_after,
            key_binding,
            replay_id: format!("nitro:{}", certs::hex(&certs::sha256(tbs))),
            replayable: false,
            debug,
        }
    }
}

/// Checks a PCR policy at config load: at least one PCR, indices 0..=31, 48-byte values, and not
/// only all-zero values (a debug enclave's PCRs pin nothing).
pub fn validate_pcr_policy(expected: &BTreeMap<u8, Vec<u8>>) -> Result<(), AttestationError> {
    if expected.is_empty() {
        return Err(AttestationError::PcrPolicy(PcrPolicyProblem::Empty));
    }
    for (index, value) in expected {
        if *index > 31 {
            return Err(AttestationError::PcrPolicy(PcrPolicyProblem::Index(*index)));
        }
        if value.len() != PCR_LEN {
            return Err(AttestationError::PcrPolicy(PcrPolicyProblem::Length { index: *index, len: value.len() }));
        }
    }
    if expected.values().all(|v| v.iter().all(|b| *b == 0)) {
        return Err(AttestationError::PcrPolicy(PcrPolicyProblem::AllZero));
    }
    Ok(())
}

/// Parses a PCR policy as configured (`pcr0 = "hex"`): index → 96 hex digits, then
/// [`validate_pcr_policy`].
pub fn parse_pcr_policy(entries: &BTreeMap<u8, String>) -> Result<BTreeMap<u8, Vec<u8>>, AttestationError> {
    let mut out = BTreeMap::new();
    for (index, text) in entries {
        let text = text.trim();
        let bad = || AttestationError::PcrPolicy(PcrPolicyProblem::Hex { index: *index });
        if text.len() != PCR_LEN * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let bytes = (0..PCR_LEN)
            .map(|i| text.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        out.insert(*index, bytes);
    }
    validate_pcr_policy(&out)?;
    Ok(out)
}

/// Policy over verified Nitro evidence: a debug-mode enclave is refused unless `allow_debug`
/// (checked first, so a policy that lists zeros cannot admit one); then the policy must be valid
/// ([`validate_pcr_policy`]) and every expected PCR must be present and equal.
pub fn check_pcrs(
    evidence: &Evidence,
    expected: &BTreeMap<u8, Vec<u8>>,
    allow_debug: bool,
) -> Result<(), AttestationError> {
    if evidence.kind != AttestationKind::Nitro {
        return Err(AttestationError::WrongKind { expected: "nitro", got: kind_name(evidence.kind) });
    }
    if evidence.debug && !allow_debug {
        return Err(AttestationError::DebugEnclave);
    }
    validate_pcr_policy(expected)?;
    for (index, value) in expected {
        let want = certs::hex(value);
        match evidence.attributes.get(&format!("pcr{index}")).and_then(|v| v.as_str()) {
            None => return Err(AttestationError::PcrMissing { index: *index }),
            Some(got) if got != want => {
                return Err(AttestationError::PcrMismatch { index: *index, expected: want, got: got.to_owned() });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The document's `user_data` must equal `expected` (for example SHA-256 of the canonical
/// request naming the role), so a document made for one request cannot serve another.
pub fn check_user_data(evidence: &Evidence, expected: &[u8]) -> Result<(), AttestationError> {
    if evidence.kind != AttestationKind::Nitro {
        return Err(AttestationError::WrongKind { expected: "nitro", got: kind_name(evidence.kind) });
    }
    let want = certs::b64url(expected);
    let got = evidence.attributes.get("user_data").and_then(|v| v.as_str());
    let equal =
        got.is_some_and(|g| aws_lc_rs::constant_time::verify_slices_are_equal(g.as_bytes(), want.as_bytes()).is_ok());
    if !equal {
        return Err(AttestationError::BindingMismatch { what: "user_data" });
    }
    Ok(())
}

/// The key the client later proves must be the document's `public_key` binding.
pub fn check_key_binding(evidence: &Evidence, proven: &KeyBinding) -> Result<(), AttestationError> {
    if evidence.key_binding.as_ref() != Some(proven) {
        return Err(AttestationError::BindingMismatch { what: "public_key" });
    }
    Ok(())
}

fn kind_name(kind: AttestationKind) -> &'static str {
    match kind {
        AttestationKind::Nitro => "nitro",
        AttestationKind::Ec2InstanceIdentity => "aws-ec2-iid",
        AttestationKind::X509ProofOfPossession => "x509-pop",
    }
}

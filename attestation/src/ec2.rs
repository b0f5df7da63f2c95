//! EC2 instance identity documents (IIDs), in the three forms the instance metadata service
//! serves:
//! * `pkcs7`: base64 PKCS#7 SignedData (BER, indefinite lengths) embedding the document,
//!   DSA-SHA1 under AWS's certificate — legacy, only with `allow_legacy_crypto`;
//! * `rsa2048`: the same shape, RSA-SHA256 under AWS's regional certificates;
//! * `signature`: JSON `{"document": "...", "signature": "<base64>"}`, RSA PKCS#1 v1.5 SHA-256 over
//!   the exact document bytes (AWS's certificate for it is RSA-1024: legacy).
//!
//! Base64 is accepted with or without line breaks and PEM armor; raw DER/BER too.
//!
//! The signature scheme comes from the SignerInfo's digest and signature algorithm OIDs, never
//! assumed. Certificates embedded in the PKCS#7 are ignored: only configured ones count. The
//! signature is verified with each configured certificate of the fitting key type (so a bad
//! token costs at most one verification per configured certificate) **before** the document is
//! parsed, and the document is then parsed from those signed bytes; the certificate that
//! verified must be configured for the document's `region` (or for `*`) → `region_mismatch`.
//!
//! An IID proves only that AWS issued it for that instance: see the crate docs for why it is
//! replayable and weak.
//!
//! One concern in one file: the three forms and two signature schemes of one document, read
//! and checked in one sequence from bytes to `Evidence`.

use crate::AttestationKind;
use crate::certs;
use crate::error::{AttestationError, Malformed};
use crate::evidence::Evidence;
use base64::Engine;
use ephemera_untrusted::json::{self, StrictJsonError};
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

/// Every evidence attribute an instance identity document yields: the document's own fields
/// (`Document::parse`) and how it was signed (`verify`).
pub const ATTRIBUTES: &[&str] = &[
    "accountId",
    "region",
    "instanceId",
    "pendingTime",
    "imageId",
    "instanceType",
    "privateIp",
    "availabilityZone",
    "architecture",
    "version",
    "signature_form",
    "legacy_crypto",
];

/// Largest token accepted, in bytes (real ones are under 3 KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

const OID_SHA1: &[u32] = &[1, 3, 14, 3, 2, 26];
const OID_SHA256: &[u32] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const OID_DSA: &[u32] = &[1, 2, 840, 10040, 4, 1];
const OID_DSA_WITH_SHA1: &[u32] = &[1, 2, 840, 10040, 4, 3];
const OID_RSA: &[u32] = &[1, 2, 840, 113549, 1, 1, 1];
const OID_SHA1_WITH_RSA: &[u32] = &[1, 2, 840, 113549, 1, 1, 5];
const OID_SHA256_WITH_RSA: &[u32] = &[1, 2, 840, 113549, 1, 1, 11];
const OID_SIGNED_DATA: &[u32] = &[1, 2, 840, 113549, 1, 7, 2];
const OID_DATA: &[u32] = &[1, 2, 840, 113549, 1, 7, 1];
const OID_CONTENT_TYPE: &[u32] = &[1, 2, 840, 113549, 1, 9, 3];
const OID_MESSAGE_DIGEST: &[u32] = &[1, 2, 840, 113549, 1, 9, 4];

/// The signature schemes an IID can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    RsaSha256,
    RsaSha1,
    DsaSha1,
}

impl Scheme {
    fn legacy(self) -> bool {
        !matches!(self, Scheme::RsaSha256)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa { bits: usize },
    Dsa,
}

#[derive(Debug, Clone)]
struct RegionCert {
    region: String,
    spki: Vec<u8>,
    /// The BIT STRING contents of the SPKI (PKCS#1 RSAPublicKey for RSA).
    key: Vec<u8>,
    kind: KeyKind,
    not_before: i64,
    not_after: i64,
}

/// Verifies IIDs with AWS's public certificates as configured.
#[derive(Debug, Clone)]
pub struct IidVerifier {
    certificates: Vec<RegionCert>,
    /// Accept DSA-SHA1, RSA-SHA1 and RSA keys under 2048 bits (default false).
    pub allow_legacy_crypto: bool,
    /// Longest credential lifetime an IID may back, in seconds (default 300): it bounds
    /// [`Evidence::not_after`].
    pub max_credential_ttl_secs: u64,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: usize,
}

impl IidVerifier {
    /// `certificates`: (region, DER certificate) pairs, region `*` for a certificate AWS uses in
    /// every region (the DSA certificate of the `pkcs7` endpoint). Only RSA and DSA keys.
    pub fn new(certificates: Vec<(String, CertificateDer<'static>)>) -> Result<Self, AttestationError> {
        if certificates.is_empty() {
            return Err(AttestationError::Config("no certificates"));
        }
        let mut out = Vec::with_capacity(certificates.len());
        for (i, (region, der)) in certificates.into_iter().enumerate() {
            if region.is_empty() {
                return Err(AttestationError::Config("empty region for a certificate"));
            }
            let cert = certs::parse(&der, i).map_err(|_| AttestationError::Config("certificate does not parse"))?;
            let spki = cert.public_key();
            let kind = match spki.algorithm.algorithm.to_id_string().as_str() {
                certs::OID_RSA_ENCRYPTION => KeyKind::Rsa { bits: certs::rsa_bits(spki).unwrap_or(0) },
                certs::OID_DSA => KeyKind::Dsa,
                _ => return Err(AttestationError::Config("certificate key is neither RSA nor DSA")),
            };
            out.push(RegionCert {
                region,
                spki: spki.raw.to_vec(),
                key: spki.subject_public_key.data.to_vec(),
                kind,
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
            });
        }
        Ok(IidVerifier {
            certificates: out,
            allow_legacy_crypto: false,
            max_credential_ttl_secs: 300,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        })
    }

    /// Verifies one token (any of the three forms) at `now` (UNIX seconds).
    pub fn verify(&self, token: &[u8], now: i64) -> Result<Evidence, AttestationError> {
        if token.len() > self.max_token_bytes {
            return Err(AttestationError::TooLarge { size: token.len(), max: self.max_token_bytes });
        }
        let signed = decode_token(token)?;
        if signed.scheme.legacy() && !self.allow_legacy_crypto {
            return Err(AttestationError::AlgNotAllowed { alg: signed.scheme_name().into() });
        }
        if signed.digest_mismatch {
            return Err(AttestationError::SignatureInvalid);
        }

        // Signature first, with each configured certificate that fits the scheme.
        let mut legacy_key_refused = false;
        let mut signer = None;
        for cert in &self.certificates {
            match (signed.scheme, cert.kind) {
                (Scheme::DsaSha1, KeyKind::Dsa) if verify_dsa_sha1(&cert.spki, &signed.message, &signed.signature) => {
                    signer = Some(cert);
                    break;
                }
                (Scheme::RsaSha256 | Scheme::RsaSha1, KeyKind::Rsa { bits }) => {
                    if bits < 2048 && !self.allow_legacy_crypto {
                        legacy_key_refused = true;
                        continue;
                    }
                    let alg = match (signed.scheme, bits >= 2048) {
                        (Scheme::RsaSha256, true) => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                        (Scheme::RsaSha256, false) => {
                            &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
                        }
                        _ => &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
                    };
                    let ok = aws_lc_rs::signature::UnparsedPublicKey::new(alg, &cert.key)
                        .verify(&signed.message, &signed.signature)
                        .is_ok();
                    if ok {
                        signer = Some(cert);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(signer) = signer else {
            if legacy_key_refused {
                return Err(AttestationError::AlgNotAllowed { alg: "RSA key under 2048 bits".into() });
            }
            return Err(AttestationError::SignatureInvalid);
        };
        if signer.not_after < now {
            return Err(AttestationError::CertExpired { position: 0, not_after: signer.not_after, at: now });
        }
        if signer.not_before > now {
            return Err(AttestationError::CertNotYetValid { position: 0, not_before: signer.not_before, at: now });
        }

        // Then the document, from the signed bytes.
        let doc = Document::parse(&signed.document)?;
        if signer.region != "*" && signer.region != doc.region {
            return Err(AttestationError::RegionMismatch {
                document: crate::error::escape_untrusted(&doc.region, 32),
                signer: signer.region.clone(),
            });
        }
        let ttl = i64::try_from(self.max_credential_ttl_secs).unwrap_or(i64::MAX);
        let mut attributes = doc.attributes;
        attributes.insert("signature_form".into(), signed.scheme_name().into());
        attributes.insert("legacy_crypto".into(), signed.scheme.legacy().into());
        let replay = certs::sha256(format!("{}\n{}", doc.instance_id, doc.pending_time_text).as_bytes());
        Ok(Evidence {
            kind: AttestationKind::Ec2InstanceIdentity,
            subject: format!("ec2:{}/{}", doc.account_id, doc.instance_id),
            attributes,
            nonce: None,
            issued_at: doc.pending_time,
            not_after: now.saturating_add(ttl),
            key_binding: None,
            replay_id: format!("ec2:{}", certs::hex(&replay)),
            replayable: true,
            debug: false,
        })
    }
}

/// What the signature covers, and with what.
struct SignedIid {
    /// The instance identity document bytes.
    document: Vec<u8>,
    /// The bytes the signature is over: the document, or the DER of the signed attributes.
    message: Vec<u8>,
    signature: Vec<u8>,
    scheme: Scheme,
    pkcs7: bool,
    /// The signed message-digest attribute differs from the content's digest (judged after the
    /// algorithm is, so a legacy token is refused for its algorithm first).
    digest_mismatch: bool,
}

impl SignedIid {
    fn scheme_name(&self) -> &'static str {
        match (self.pkcs7, self.scheme) {
            (true, Scheme::DsaSha1) => "pkcs7-dsa-sha1",
            (true, Scheme::RsaSha256) => "pkcs7-rsa-sha256",
            (true, Scheme::RsaSha1) => "pkcs7-rsa-sha1",
            (false, Scheme::RsaSha256) => "signature-rsa-sha256",
            (false, _) => "signature-legacy",
        }
    }
}

fn decode_token(token: &[u8]) -> Result<SignedIid, AttestationError> {
    // Raw DER is taken byte for byte: its last byte is the signature's, which may well be 0x0a or
    // 0x20, so it must never be trimmed as if it were text.
    if token.first() == Some(&0x30) {
        return decode_pkcs7(token);
    }
    let trimmed = token.trim_ascii();
    if trimmed.first() == Some(&b'{') {
        return decode_json_form(trimmed);
    }
    let text = std::str::from_utf8(trimmed).map_err(|_| Malformed::Base64)?;
    decode_pkcs7(&decode_base64_text(text)?)
}

/// Base64 with optional PEM armor (`-----BEGIN PKCS7-----`) and any line breaks.
fn decode_base64_text(text: &str) -> Result<Vec<u8>, AttestationError> {
    let mut body = String::with_capacity(text.len());
    let mut armored = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            if armored {
                return Err(Malformed::Base64.into());
            }
            armored = true;
            continue;
        }
        if line.starts_with("-----END ") {
            break;
        }
        body.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
    }
    let config = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(&body)
        .map_err(|_| Malformed::Base64.into())
}

fn decode_json_form(bytes: &[u8]) -> Result<SignedIid, AttestationError> {
    let obj = json::parse_object(bytes).map_err(|e| match e {
        StrictJsonError::Duplicate(_) => Malformed::DuplicateKey("signature form".into()),
        _ => Malformed::Json,
    })?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "document" | "signature")) {
        return Err(Malformed::UnknownField(crate::error::escape_untrusted(k, 32)).into());
    }
    let document = match obj.get("document") {
        Some(Value::String(d)) => d.as_bytes().to_vec(),
        Some(_) => return Err(Malformed::Field("document").into()),
        None => return Err(Malformed::MissingField("document").into()),
    };
    let signature = match obj.get("signature") {
        Some(Value::String(s)) => decode_base64_text(s)?,
        Some(_) => return Err(Malformed::Field("signature").into()),
        None => return Err(Malformed::MissingField("signature").into()),
    };
    Ok(SignedIid {
        message: document.clone(),
        document,
        signature,
        scheme: Scheme::RsaSha256,
        pkcs7: false,
        digest_mismatch: false,
    })
}

fn oid_is(oid: &rasn::types::ObjectIdentifier, want: &[u32]) -> bool {
    let arcs: &[u32] = oid;
    arcs == want
}

fn decode_pkcs7(der: &[u8]) -> Result<SignedIid, AttestationError> {
    let bad = |what: &'static str| AttestationError::Malformed(Malformed::Pkcs7(what));
    let (info, rest) =
        rasn::ber::decode_with_remainder::<rasn_cms::ContentInfo>(der).map_err(|_| bad("ContentInfo"))?;
    if !rest.is_empty() {
        return Err(Malformed::TrailingBytes.into());
    }
    if !oid_is(&info.content_type, OID_SIGNED_DATA) {
        return Err(bad("not SignedData"));
    }
    let sd = rasn::ber::decode::<rasn_cms::SignedData>(info.content.as_bytes()).map_err(|_| bad("SignedData"))?;
    if !oid_is(&sd.encap_content_info.content_type, OID_DATA) {
        return Err(bad("content is not data"));
    }
    let document = sd.encap_content_info.content.map(|c| c.to_vec()).ok_or_else(|| bad("detached content"))?;
    let mut signers = sd.signer_infos.into_vec();
    let (Some(si), true) = (signers.pop(), signers.is_empty()) else {
        return Err(bad("not exactly one signer"));
    };
    let digest = &si.digest_algorithm.algorithm;
    let sig = &si.signature_algorithm.algorithm;
    let scheme = if oid_is(digest, OID_SHA1) && (oid_is(sig, OID_DSA) || oid_is(sig, OID_DSA_WITH_SHA1)) {
        Scheme::DsaSha1
    } else if oid_is(digest, OID_SHA256) && (oid_is(sig, OID_RSA) || oid_is(sig, OID_SHA256_WITH_RSA)) {
        Scheme::RsaSha256
    } else if oid_is(digest, OID_SHA1) && (oid_is(sig, OID_RSA) || oid_is(sig, OID_SHA1_WITH_RSA)) {
        Scheme::RsaSha1
    } else {
        let arcs = |o: &rasn::types::ObjectIdentifier| o.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
        return Err(AttestationError::AlgNotAllowed { alg: format!("{} with {}", arcs(digest), arcs(sig)) });
    };
    let mut digest_mismatch = false;
    let message = match si.signed_attrs {
        None => document.clone(),
        Some(attrs) => {
            // RFC 5652 §5.4: the signature covers the DER of the SET OF attributes; the
            // message-digest attribute must equal the digest of the content.
            let want = match scheme {
                Scheme::RsaSha256 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &document),
                Scheme::RsaSha1 | Scheme::DsaSha1 => {
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &document)
                }
            };
            let single = |oid: &[u32]| -> Result<Vec<u8>, AttestationError> {
                let mut found = attrs.iter().filter(|a| oid_is(&a.r#type, oid));
                let (Some(a), None) = (found.next(), found.next()) else { return Err(bad("signed attributes")) };
                let mut values = a.values.iter();
                let (Some(v), None) = (values.next(), values.next()) else { return Err(bad("signed attributes")) };
                Ok(v.as_bytes().to_vec())
            };
            let md = rasn::der::decode::<rasn::types::OctetString>(&single(OID_MESSAGE_DIGEST)?)
                .map_err(|_| bad("message digest"))?;
            let ct = rasn::der::decode::<rasn::types::ObjectIdentifier>(&single(OID_CONTENT_TYPE)?)
                .map_err(|_| bad("content type"))?;
            if !oid_is(&ct, OID_DATA) {
                return Err(bad("content type"));
            }
            digest_mismatch = aws_lc_rs::constant_time::verify_slices_are_equal(&md, want.as_ref()).is_err();
            rasn::der::encode(&attrs).map_err(|_| bad("signed attributes"))?
        }
    };
    Ok(SignedIid { document, message, signature: si.signature.to_vec(), scheme, pkcs7: true, digest_mismatch })
}

fn verify_dsa_sha1(spki_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use dsa::pkcs8::DecodePublicKey;
    use dsa::signature::DigestVerifier;
    use sha1::digest::Update;
    let Ok(key) = dsa::VerifyingKey::from_public_key_der(spki_der) else { return false };
    let Ok(sig) = dsa::Signature::try_from(signature) else { return false };
    key.verify_digest(
        |d: &mut sha1::Sha1| {
            d.update(message);
            Ok(())
        },
        &sig,
    )
    .is_ok()
}

/// The document's fields, typed.
struct Document {
    account_id: String,
    region: String,
    instance_id: String,
    pending_time: i64,
    pending_time_text: String,
    attributes: Map<String, Value>,
}

impl Document {
    fn parse(bytes: &[u8]) -> Result<Document, AttestationError> {
        let obj = json::parse_object(bytes).map_err(|e| match e {
            StrictJsonError::Duplicate(_) => Malformed::DuplicateKey("document".into()),
            _ => Malformed::Json,
        })?;
        let ident = |v: &str| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic());
        let required = |k: &'static str| -> Result<String, AttestationError> {
            match obj.get(k) {
                Some(Value::String(s)) if ident(s) => Ok(s.clone()),
                Some(_) => Err(Malformed::Field(k).into()),
                None => Err(Malformed::MissingField(k).into()),
            }
        };
        let account_id = required("accountId")?;
        if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Malformed::Field("accountId").into());
        }
        let region = required("region")?;
        let instance_id = required("instanceId")?;
        let pending_time_text = required("pendingTime")?;
        let pending_time =
            time::OffsetDateTime::parse(&pending_time_text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| Malformed::Field("pendingTime"))?
                .unix_timestamp();
        let mut attributes = Map::new();
        for k in ["accountId", "region", "instanceId", "pendingTime"] {
            if let Some(v) = obj.get(k) {
                attributes.insert(k.into(), v.clone());
            }
        }
        for k in ["imageId", "instanceType", "privateIp", "availabilityZone", "architecture", "version"] {
            match obj.get(k) {
                Some(Value::String(s)) if ident(s) => {
                    attributes.insert(k.into(), Value::String(s.clone()));
                }
                None | Some(Value::Null) => {}
                Some(_) => return Err(Malformed::Field(k).into()),
            }
        }
        Ok(Document { account_id, region, instance_id, pending_time, pending_time_text, attributes })
    }
}

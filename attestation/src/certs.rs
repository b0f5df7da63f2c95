//! X.509 for the verifiers: chains with rustls-webpki at a fixed time, fields with x509-parser,
//! key thumbprints. Nothing here decides trust on its own: each verifier says which anchors,
//! which time and which algorithms.

use crate::error::{AttestationError, ChainProblem, Malformed};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use serde_json::{Map, Value};
use std::time::Duration;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

pub(crate) const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
pub(crate) const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
pub(crate) const OID_ED25519: &str = "1.3.101.112";
pub(crate) const OID_DSA: &str = "1.2.840.10040.4.1";
pub(crate) const OID_P256: &str = "1.2.840.10045.3.1.7";
pub(crate) const OID_P384: &str = "1.3.132.0.34";
pub(crate) const OID_P521: &str = "1.3.132.0.35";

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) use ephemera_untrusted::hex;

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `now` as rustls-webpki's time; a negative clock is treated as the epoch.
pub(crate) fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Parses one DER certificate, whole (no trailing bytes).
pub(crate) fn parse(der: &[u8], position: usize) -> Result<X509Certificate<'_>, AttestationError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(Malformed::Certificate(position).into()),
    }
}

/// Every certificate valid at `at` (UNIX seconds), with `leeway` seconds either way.
/// `certs` are (position, parsed certificate).
pub(crate) fn check_validity(
    certs: &[(usize, &X509Certificate<'_>)],
    at: i64,
    leeway: u64,
) -> Result<(), AttestationError> {
    let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
    for (position, cert) in certs {
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        if not_after.saturating_add(leeway) < at {
            return Err(AttestationError::CertExpired { position: *position, not_after, at });
        }
        if not_before.saturating_sub(leeway) > at {
            return Err(AttestationError::CertNotYetValid { position: *position, not_before, at });
        }
    }
    Ok(())
}

/// Maps a rustls-webpki refusal to ours. `position` is used for validity errors.
pub(crate) fn map_webpki(e: webpki::Error, pinned: &str) -> AttestationError {
    use webpki::Error as E;
    let secs = |t: UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    match e {
        E::UnknownIssuer => AttestationError::UntrustedRoot { pinned: pinned.to_owned() },
        E::CertExpired { time, not_after } => {
            AttestationError::CertExpired { position: 0, not_after: secs(not_after), at: secs(time) }
        }
        E::CertNotValidYet { time, not_before } => {
            AttestationError::CertNotYetValid { position: 0, not_before: secs(not_before), at: secs(time) }
        }
        E::CertRevoked => AttestationError::CertRevoked { serial: "unknown".to_owned() },
        E::InvalidSignatureForPublicKey => AttestationError::ChainInvalid(ChainProblem::BadSignature),
        E::EndEntityUsedAsCa => AttestationError::ChainInvalid(ChainProblem::IntermediateNotCa),
        E::CaUsedAsEndEntity => AttestationError::ChainInvalid(ChainProblem::LeafIsCa),
        E::PathLenConstraintViolated => AttestationError::ChainInvalid(ChainProblem::PathLenExceeded),
        E::RequiredEkuNotFoundContext(_) => AttestationError::ChainInvalid(ChainProblem::ExtendedKeyUsage),
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::SignatureAlgorithmMismatch => AttestationError::ChainInvalid(ChainProblem::UnsupportedAlgorithm),
        other => AttestationError::ChainInvalid(ChainProblem::Other(format!("{other:?}"))),
    }
}

/// Builds and verifies the path `leaf` → `intermediates` → one of `anchors` at `time` with
/// rustls-webpki. Returns the DER of the intermediates on the path, from the leaf's issuer up.
pub(crate) fn verify_path(
    leaf: &[u8],
    intermediates: &[CertificateDer<'_>],
    anchors: &[rustls_pki_types::TrustAnchor<'_>],
    algs: &[&dyn SignatureVerificationAlgorithm],
    time: UnixTime,
    revocation: Option<webpki::RevocationOptions<'_>>,
    pinned: &str,
) -> Result<(Vec<Vec<u8>>, usize), AttestationError> {
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| map_webpki(e, pinned))?;
    let path = ee
        .verify_for_usage(algs, anchors, intermediates, time, webpki::KeyUsage::client_auth(), revocation, None)
        .map_err(|e| map_webpki(e, pinned))?;
    // which of `anchors` ended the path (the same subject and key)
    let end = path.anchor();
    let anchor = anchors
        .iter()
        .position(|a| a.subject == end.subject && a.subject_public_key_info == end.subject_public_key_info)
        .unwrap_or(0);
    Ok((path.intermediate_certificates().map(|c| c.der().to_vec()).collect(), anchor))
}

/// A distinguished name as RFC 4514 text (in the certificate's RDN order, `, ` between RDNs and
/// `+` inside a multi-valued one), every value escaped (`,+"\<>;=`, a leading `#` or space, a
/// trailing space), so a value can never read as more of the name: `CN=deployer\, O\=Acme Prod`
/// is one CN, `CN=deployer, O=Acme Prod` two attributes (review C8). `None` for a value that is
/// not a string, or holds a control or look-alike character.
pub(crate) fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    let mut rdns = Vec::new();
    for rdn in name.iter_rdn() {
        let mut parts = Vec::new();
        for atv in rdn.iter() {
            let oid = atv.attr_type();
            let key = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                .map(str::to_owned)
                .unwrap_or_else(|_| oid.to_id_string());
            parts.push(format!("{key}={}", escape_dn_value(checked(atv.as_str().ok()?)?)));
        }
        rdns.push(parts.join("+"));
    }
    Some(rdns.join(", "))
}

/// A certificate-derived string, if it holds no control or look-alike character.
pub(crate) fn checked(s: &str) -> Option<&str> {
    (!s.chars().any(ephemera_untrusted::is_hidden_char)).then_some(s)
}

fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 7638 thumbprint of an EC (P-256/384/521), RSA or Ed25519 SubjectPublicKeyInfo, or None
/// for any other key type.
pub(crate) fn jwk_thumbprint(spki: &SubjectPublicKeyInfo<'_>) -> Option<String> {
    let alg = spki.algorithm.algorithm.to_id_string();
    // Members in lexicographic order, no whitespace (RFC 7638 §3.3). Insertion order is kept
    // lexicographic so the output is the same whether or not serde_json preserves order.
    let mut m = Map::new();
    match alg.as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?.to_id_string();
            let (crv, len) = match curve.as_str() {
                OID_P256 => ("P-256", 32),
                OID_P384 => ("P-384", 48),
                OID_P521 => ("P-521", 66),
                _ => return None,
            };
            let point: &[u8] = &spki.subject_public_key.data;
            // Uncompressed points only: 0x04 || x || y.
            if point.len() != 1 + 2 * len || point.first() != Some(&0x04) {
                return None;
            }
            m.insert("crv".into(), Value::String(crv.into()));
            m.insert("kty".into(), Value::String("EC".into()));
            m.insert("x".into(), Value::String(b64url(point.get(1..=len)?)));
            m.insert("y".into(), Value::String(b64url(point.get(1 + len..)?)));
        }
        OID_RSA_ENCRYPTION => {
            let PublicKey::RSA(rsa) = spki.parsed().ok()? else { return None };
            m.insert("e".into(), Value::String(b64url(strip_zeros(rsa.exponent))));
            m.insert("kty".into(), Value::String("RSA".into()));
            m.insert("n".into(), Value::String(b64url(strip_zeros(rsa.modulus))));
        }
        OID_ED25519 => {
            let key: &[u8] = &spki.subject_public_key.data;
            if key.len() != 32 {
                return None;
            }
            m.insert("crv".into(), Value::String("Ed25519".into()));
            m.insert("kty".into(), Value::String("OKP".into()));
            m.insert("x".into(), Value::String(b64url(key)));
        }
        _ => return None,
    }
    let canonical = serde_json::to_string(&Value::Object(m)).ok()?;
    Some(b64url(&sha256(canonical.as_bytes())))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// Bits of an RSA modulus, if `spki` is an RSA key.
pub(crate) fn rsa_bits(spki: &SubjectPublicKeyInfo<'_>) -> Option<usize> {
    if spki.algorithm.algorithm.to_id_string() != OID_RSA_ENCRYPTION {
        return None;
    }
    let PublicKey::RSA(rsa) = spki.parsed().ok()? else { return None };
    let m = strip_zeros(rsa.modulus);
    let lead = m.first().map(|b| 8 - b.leading_zeros() as usize).unwrap_or(0);
    Some(m.len().saturating_sub(1) * 8 + lead)
}

/// Lowercase hex of a certificate serial, without leading zero bytes.
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    let s = strip_zeros(cert.raw_serial());
    if s.is_empty() { "00".to_owned() } else { hex(s) }
}

/// Policy attributes of a certificate: subject and issuer DNs (RFC 4514, [`rfc4514`]) and their
/// common fields, SANs, the SPIFFE ID, serial and validity. `None` for names that could be read
/// two ways: a control or look-alike character anywhere, or a list member (a CN, an O, a SAN)
/// holding `,`, which joins list members in policy text (review C8).
pub(crate) fn attributes(cert: &X509Certificate<'_>) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| -> Option<Value> {
        let mut out = Vec::new();
        for a in it {
            let s = checked(a.as_str().ok()?)?;
            if s.contains(',') {
                return None;
            }
            out.push(Value::String(s.to_owned()));
        }
        Some(Value::Array(out))
    };
    let subject = cert.subject();
    m.insert("subject_dn".into(), Value::String(rfc4514(subject)?));
    m.insert("subject_cn".into(), strings(&mut subject.iter_common_name())?);
    m.insert("subject_o".into(), strings(&mut subject.iter_organization())?);
    m.insert("subject_ou".into(), strings(&mut subject.iter_organizational_unit())?);
    m.insert("subject_c".into(), strings(&mut subject.iter_country())?);
    m.insert("issuer_dn".into(), Value::String(rfc4514(cert.issuer())?));
    m.insert("serial".into(), Value::String(serial_hex(cert)));
    m.insert("not_before".into(), Value::from(cert.validity().not_before.timestamp()));
    m.insert("not_after".into(), Value::from(cert.validity().not_after.timestamp()));
    let (mut dns, mut uris) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    dns.push(Value::String(checked(d).filter(|d| !d.contains(','))?.to_owned()))
                }
                x509_parser::extensions::GeneralName::URI(u) => {
                    uris.push(Value::String(checked(u).filter(|u| !u.contains(','))?.to_owned()))
                }
                _ => {}
            }
        }
    }
    let spiffe: Vec<&Value> = uris.iter().filter(|u| u.as_str().is_some_and(|s| s.starts_with("spiffe://"))).collect();
    // A SPIFFE X.509-SVID carries exactly one URI SAN; anything else is not an SVID.
    if let ([id], 1) = (spiffe.as_slice(), uris.len()) {
        m.insert("spiffe_id".into(), (*id).clone());
    }
    m.insert("dns_sans".into(), Value::Array(dns));
    m.insert("uri_sans".into(), Value::Array(uris));
    Some(m)
}

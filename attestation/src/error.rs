//! One error type for everything that can go wrong while verifying attestation evidence. Each
//! variant names one check; [`AttestationError::slug`] is the stable reason code the broker puts
//! in its error responses and audit records (the slugs of `ATTACKS.md`), and
//! [`AttestationError::check`] names the step that failed. Messages are lowercase, carry values in
//! backticks and never contain a nonce, a signature, key material or a whole document.

use std::fmt;

/// A named verification step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Config,
    Size,
    Structure,
    Header,
    Algorithm,
    Root,
    Chain,
    Revocation,
    Signature,
    Validity,
    Freshness,
    Nonce,
    Proof,
    Region,
    Debug,
    Pcrs,
    Binding,
}

impl Check {
    /// What the check establishes, for people (`explain`).
    pub fn describe(self) -> &'static str {
        match self {
            Check::Config => "verifier configuration and policy are well-formed",
            Check::Size => "input within the size limit",
            Check::Structure => "strict structure: CBOR/COSE, PKCS#7, compact JWS or JSON, every field typed",
            Check::Header => "COSE protected header is exactly {alg: ES384}, unprotected header empty",
            Check::Algorithm => "signature algorithm on the allow-list",
            Check::Root => "chain ends at the pinned root or a configured trust anchor",
            Check::Chain => "certificate chain valid: signatures, CA flags, path length, key usage, length",
            Check::Revocation => "no certificate in the chain is revoked",
            Check::Signature => "signature valid with the certified key",
            Check::Validity => "every certificate valid at the broker's clock",
            Check::Freshness => "evidence timestamp within the maximum age and not in the future",
            Check::Nonce => "nonce present where required",
            Check::Proof => "proof of possession: type, audience, nonce, issue time, signature",
            Check::Region => "signed by the certificate of the document's region",
            Check::Debug => "not a debug-mode enclave (PCR0..2 all zero) unless allowed",
            Check::Pcrs => "PCRs equal the policy's expected values",
            Check::Binding => "document binds the expected user data or key",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// What was structurally wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// CBOR that does not decode.
    CborSyntax,
    /// CBOR nested deeper than the profile allows.
    CborDepth,
    /// Indefinite-length CBOR item (refused: AWS encodes definite lengths only).
    CborIndefinite,
    /// A CBOR tag other than the optional outer COSE_Sign1 tag 18.
    CborTag(u64),
    /// Floats, `undefined` or unassigned simple values.
    CborUnsupported,
    /// Bytes after the top-level item.
    TrailingBytes,
    /// Not a COSE_Sign1 array of four items with the right types.
    NotCoseSign1,
    /// COSE_Sign1 with a detached (nil) payload.
    DetachedPayload,
    /// The same map key twice.
    DuplicateKey(String),
    /// A field the profile does not know.
    UnknownField(String),
    /// A required field is absent.
    MissingField(&'static str),
    /// A field has the wrong type, length or value.
    Field(&'static str),
    /// More entries than the profile allows.
    TooMany(&'static str),
    /// Not canonical base64 of the expected alphabet.
    Base64,
    /// JSON that does not parse as the expected object.
    Json,
    /// PKCS#7 / CMS structure (what part).
    Pkcs7(&'static str),
    /// A certificate that does not parse (0-based position in the presented order).
    Certificate(usize),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::CborSyntax => f.write_str("invalid CBOR"),
            Malformed::CborDepth => f.write_str("CBOR nested too deeply"),
            Malformed::CborIndefinite => f.write_str("indefinite-length CBOR item"),
            Malformed::CborTag(t) => write!(f, "unexpected CBOR tag `{t}`"),
            Malformed::CborUnsupported => f.write_str("CBOR float or simple value outside the profile"),
            Malformed::TrailingBytes => f.write_str("trailing bytes after the document"),
            Malformed::NotCoseSign1 => f.write_str("not a COSE_Sign1 structure"),
            Malformed::DetachedPayload => f.write_str("COSE_Sign1 payload is detached"),
            Malformed::DuplicateKey(k) => write!(f, "duplicate key `{k}`"),
            Malformed::UnknownField(k) => write!(f, "unknown field `{k}`"),
            Malformed::MissingField(k) => write!(f, "required field `{k}` is missing"),
            Malformed::Field(k) => write!(f, "field `{k}` has the wrong type, length or value"),
            Malformed::TooMany(k) => write!(f, "too many entries in `{k}`"),
            Malformed::Base64 => f.write_str("invalid base64"),
            Malformed::Json => f.write_str("invalid JSON"),
            Malformed::Pkcs7(what) => write!(f, "invalid PKCS#7: {what}"),
            Malformed::Certificate(n) => write!(f, "certificate `{n}` does not parse"),
        }
    }
}

/// What was wrong with a COSE header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoseHeaderProblem {
    /// The protected header does not decode as a COSE header map.
    Undecodable,
    /// `alg` absent from the protected header.
    AlgMissing,
    /// `alg` in the protected header is not ES384 (-35).
    AlgNotEs384(String),
    /// A protected header parameter other than `alg`.
    UnexpectedProtected,
    /// The unprotected header is not empty.
    UnprotectedNotEmpty,
}

impl fmt::Display for CoseHeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoseHeaderProblem::Undecodable => f.write_str("protected header does not decode"),
            CoseHeaderProblem::AlgMissing => f.write_str("protected header has no `alg`"),
            CoseHeaderProblem::AlgNotEs384(a) => write!(f, "protected `alg` is `{a}`, expected `-35` (ES384)"),
            CoseHeaderProblem::UnexpectedProtected => f.write_str("protected header holds parameters other than `alg`"),
            CoseHeaderProblem::UnprotectedNotEmpty => f.write_str("unprotected header is not empty"),
        }
    }
}

/// Why a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// A certificate's signature does not verify with its issuer's key.
    BadSignature,
    /// An intermediate is not a CA (`CA:TRUE` missing).
    IntermediateNotCa,
    /// The end-entity certificate is a CA.
    LeafIsCa,
    /// A `pathLenConstraint` is exceeded.
    PathLenExceeded,
    /// The end-entity certificate lacks the `digitalSignature` key usage.
    LeafKeyUsage,
    /// The end-entity certificate's extended key usage excludes client authentication.
    ExtendedKeyUsage,
    /// More certificates than allowed.
    TooLong { len: usize, max: usize },
    /// A presented certificate is not on the verified path.
    UnusedCertificate,
    /// An RSA key above the size limit.
    RsaKeyTooLarge { bits: usize, max: usize },
    /// A signature or key algorithm the profile does not accept.
    UnsupportedAlgorithm,
    /// Anything else rustls-webpki refused, by its name.
    Other(String),
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainProblem::BadSignature => f.write_str("a certificate signature does not verify"),
            ChainProblem::IntermediateNotCa => f.write_str("an intermediate certificate is not a CA"),
            ChainProblem::LeafIsCa => f.write_str("the end-entity certificate is a CA"),
            ChainProblem::PathLenExceeded => f.write_str("path length constraint exceeded"),
            ChainProblem::LeafKeyUsage => f.write_str("end-entity certificate lacks the `digitalSignature` key usage"),
            ChainProblem::ExtendedKeyUsage => {
                f.write_str("end-entity extended key usage excludes client authentication")
            }
            ChainProblem::TooLong { len, max } => write!(f, "`{len}` certificates, at most `{max}` allowed"),
            ChainProblem::UnusedCertificate => f.write_str("a presented certificate is not on the chain"),
            ChainProblem::RsaKeyTooLarge { bits, max } => write!(f, "RSA key of `{bits}` bits, at most `{max}`"),
            ChainProblem::UnsupportedAlgorithm => f.write_str("unsupported signature or key algorithm"),
            ChainProblem::Other(e) => write!(f, "`{e}`"),
        }
    }
}

/// Why an X.509 proof of possession was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PopProblem {
    /// Not a compact JWS of three strict base64url segments with JSON object header and payload.
    Structure,
    /// A duplicate JSON member in the header or the payload.
    DuplicateMember,
    /// `typ` is not the broker's proof type.
    Typ,
    /// A header member other than `alg`, `typ`, `x5c`.
    HeaderMember,
    /// `x5c` missing, empty, or not an array of base64 strings.
    X5c,
    /// `aud` is not the broker's audience.
    Audience,
    /// `nonce` missing or not base64url of exactly 32 bytes.
    Nonce,
    /// `iat` missing or not an integer.
    IatType,
    /// `iat` in the future beyond the leeway.
    IatInFuture { iat: i64, now: i64 },
    /// `iat` older than the maximum age.
    IatTooOld { iat: i64, now: i64, max: u64 },
    /// The leaf key does not fit `alg`.
    KeyAlgMismatch,
    /// The signature does not verify with the leaf certificate's key.
    Signature,
}

impl fmt::Display for PopProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PopProblem::Structure => f.write_str("not a compact JWS with JSON object header and payload"),
            PopProblem::DuplicateMember => f.write_str("duplicate JSON member"),
            PopProblem::Typ => f.write_str("`typ` is not the broker's proof type"),
            PopProblem::HeaderMember => f.write_str("header member other than `alg`, `typ`, `x5c`"),
            PopProblem::X5c => f.write_str("`x5c` missing or not an array of base64 certificates"),
            PopProblem::Audience => f.write_str("`aud` is not the broker's audience"),
            PopProblem::Nonce => f.write_str("`nonce` is not base64url of exactly 32 bytes"),
            PopProblem::IatType => f.write_str("`iat` missing or not an integer"),
            PopProblem::IatInFuture { iat, now } => write!(f, "`iat` {iat} is in the future (broker clock {now})"),
            PopProblem::IatTooOld { iat, now, max } => {
                write!(f, "`iat` {iat} is older than {max}s (broker clock {now})")
            }
            PopProblem::KeyAlgMismatch => f.write_str("the leaf key does not fit `alg`"),
            PopProblem::Signature => f.write_str("signature does not verify with the leaf certificate's key"),
        }
    }
}

/// Why a PCR policy was refused at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcrPolicyProblem {
    /// No expected PCRs at all.
    Empty,
    /// Every expected value is all zeros (pins nothing but debug mode).
    AllZero,
    /// An index outside 0..=31.
    Index(u8),
    /// A value that is not 48 bytes (SHA-384).
    Length { index: u8, len: usize },
    /// A value that is not 96 hex digits.
    Hex { index: u8 },
}

impl fmt::Display for PcrPolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcrPolicyProblem::Empty => f.write_str("PCR policy lists no expected PCRs"),
            PcrPolicyProblem::AllZero => f.write_str("PCR policy lists only all-zero values (debug mode pins nothing)"),
            PcrPolicyProblem::Index(i) => write!(f, "PCR index `{i}` outside 0..=31"),
            PcrPolicyProblem::Length { index, len } => write!(f, "PCR `{index}` is {len} bytes, expected 48 (SHA-384)"),
            PcrPolicyProblem::Hex { index } => write!(f, "PCR `{index}` is not 96 hex digits"),
        }
    }
}

/// Why attestation evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    #[error("verifier configuration invalid: {0}")]
    Config(&'static str),
    #[error("input is {size} bytes, over the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("malformed attestation: {0}")]
    Malformed(Malformed),
    #[error("COSE header invalid: {0}")]
    CoseHeader(CoseHeaderProblem),
    #[error("algorithm `{alg}` is not allowed")]
    AlgNotAllowed { alg: String },
    #[error("chain does not end at a trusted root (pinned `{pinned}`)")]
    UntrustedRoot { pinned: String },
    #[error("certificate chain invalid: {0}")]
    ChainInvalid(ChainProblem),
    #[error("certificate `{position}` not yet valid: notBefore {not_before}, checked at {at}")]
    CertNotYetValid { position: usize, not_before: i64, at: i64 },
    #[error("certificate `{position}` expired: notAfter {not_after}, checked at {at}")]
    CertExpired { position: usize, not_after: i64, at: i64 },
    #[error("certificate with serial `{serial}` is revoked")]
    CertRevoked { serial: String },
    #[error("signature invalid")]
    SignatureInvalid,
    #[error("attestation too old: timestamp {timestamp}, broker clock {now}, maximum age {max_age}s")]
    Stale { timestamp: i64, now: i64, max_age: u64 },
    #[error("attestation from the future: timestamp {timestamp}, broker clock {now}, leeway {leeway}s")]
    FromFuture { timestamp: i64, now: i64, leeway: u64 },
    #[error("a nonce is required and the document carries none")]
    NonceMissing,
    #[error("proof of possession invalid: {0}")]
    Pop(PopProblem),
    #[error("document region `{document}` is not signed by its region's certificate (signer `{signer}`)")]
    RegionMismatch { document: String, signer: String },
    #[error("debug-mode enclave (PCR0, PCR1 and PCR2 all zero) not allowed")]
    DebugEnclave,
    #[error("pcr `{index}` is `{got}`, the policy expects `{expected}`")]
    PcrMismatch { index: u8, expected: String, got: String },
    #[error("pcr `{index}` required by the policy is absent from the document")]
    PcrMissing { index: u8 },
    #[error("PCR policy refused: {0}")]
    PcrPolicy(PcrPolicyProblem),
    #[error("evidence is `{got}`, this check needs `{expected}`")]
    WrongKind { expected: &'static str, got: &'static str },
    #[error("binding mismatch: `{what}` differs from what the request expects")]
    BindingMismatch { what: &'static str },
}

impl AttestationError {
    /// Stable reason code (the `ATTACKS.md` slugs).
    pub fn slug(&self) -> &'static str {
        match self {
            AttestationError::Config(_) => "config_invalid",
            AttestationError::TooLarge { .. } | AttestationError::Malformed(_) => "attestation_malformed",
            AttestationError::CoseHeader(_) => "cose_header_invalid",
            AttestationError::AlgNotAllowed { .. } => "alg_not_allowed",
            AttestationError::UntrustedRoot { .. } => "untrusted_root",
            AttestationError::ChainInvalid(_) | AttestationError::CertNotYetValid { .. } => "chain_invalid",
            AttestationError::CertExpired { .. } => "cert_expired",
            AttestationError::CertRevoked { .. } => "cert_revoked",
            AttestationError::SignatureInvalid => "signature_invalid",
            AttestationError::Stale { .. } | AttestationError::FromFuture { .. } => "stale_attestation",
            AttestationError::NonceMissing => "nonce_invalid",
            AttestationError::Pop(_) => "pop_invalid",
            AttestationError::RegionMismatch { .. } => "region_mismatch",
            AttestationError::DebugEnclave => "debug_enclave",
            AttestationError::PcrMismatch { .. } | AttestationError::PcrMissing { .. } => "pcr_mismatch",
            AttestationError::PcrPolicy(_) => "policy_unscoped",
            AttestationError::WrongKind { .. } => "evidence_kind_mismatch",
            AttestationError::BindingMismatch { .. } => "binding_mismatch",
        }
    }

    /// The check that failed.
    pub fn check(&self) -> Check {
        match self {
            AttestationError::Config(_) | AttestationError::PcrPolicy(_) | AttestationError::WrongKind { .. } => {
                Check::Config
            }
            AttestationError::TooLarge { .. } => Check::Size,
            AttestationError::Malformed(_) => Check::Structure,
            AttestationError::CoseHeader(_) => Check::Header,
            AttestationError::AlgNotAllowed { .. } => Check::Algorithm,
            AttestationError::UntrustedRoot { .. } => Check::Root,
            AttestationError::ChainInvalid(_) => Check::Chain,
            AttestationError::CertRevoked { .. } => Check::Revocation,
            AttestationError::CertNotYetValid { .. } | AttestationError::CertExpired { .. } => Check::Validity,
            AttestationError::SignatureInvalid => Check::Signature,
            AttestationError::Stale { .. } | AttestationError::FromFuture { .. } => Check::Freshness,
            AttestationError::NonceMissing => Check::Nonce,
            AttestationError::Pop(_) => Check::Proof,
            AttestationError::RegionMismatch { .. } => Check::Region,
            AttestationError::DebugEnclave => Check::Debug,
            AttestationError::PcrMismatch { .. } | AttestationError::PcrMissing { .. } => Check::Pcrs,
            AttestationError::BindingMismatch { .. } => Check::Binding,
        }
    }
}

impl From<Malformed> for AttestationError {
    fn from(m: Malformed) -> Self {
        AttestationError::Malformed(m)
    }
}

/// Escapes an untrusted string for a message: printable ASCII stays (but for the backquote these
/// messages quote values in), everything else becomes `\u{..}`, and the result is cut at `max`
/// characters.
pub(crate) fn escape_untrusted(s: &str, max: usize) -> String {
    ephemera_untrusted::escape_untrusted_also(s, max, &['`'])
}

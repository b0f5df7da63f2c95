//! One error type for everything that can go wrong while verifying a token. Each variant names
//! one check; [`VerifyError::slug`] is the stable reason code the broker puts in its error
//! responses and audit records. Messages never contain a token, a signature or key material.

use std::fmt;

/// The verification steps, in the order they run. `explain` prints them; a failed check is the
/// one its error reports through [`VerifyError::check`], the ones before it passed.
pub const CHECKS: &[Check] = &[
    Check::Size,
    Check::Structure,
    Check::Algorithm,
    Check::Header,
    Check::Issuer,
    Check::Key,
    Check::Signature,
    Check::ClaimTypes,
    Check::Audience,
    Check::Expiry,
    Check::NotBefore,
    Check::IssuedAt,
    Check::Lifetime,
];

/// A named verification step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Size,
    Structure,
    Algorithm,
    Header,
    Issuer,
    Key,
    Signature,
    ClaimTypes,
    Audience,
    Expiry,
    NotBefore,
    IssuedAt,
    Lifetime,
}

impl Check {
    /// The check's name, as it is serialised (`claim_types`): no allocation, the exchange names
    /// every check of its trace.
    pub fn name(self) -> &'static str {
        match self {
            Check::Size => "size",
            Check::Structure => "structure",
            Check::Algorithm => "algorithm",
            Check::Header => "header",
            Check::Issuer => "issuer",
            Check::Key => "key",
            Check::Signature => "signature",
            Check::ClaimTypes => "claim_types",
            Check::Audience => "audience",
            Check::Expiry => "expiry",
            Check::NotBefore => "not_before",
            Check::IssuedAt => "issued_at",
            Check::Lifetime => "lifetime",
        }
    }

    /// What the check establishes, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Check::Size => "token within the size limit",
            Check::Structure => "compact JWS: three strict base64url segments, JSON objects, no duplicate members",
            Check::Algorithm => "alg on the provider's allow-list (never none or HS*)",
            Check::Header => "no crit or b64 extension, typ is JWT if present, kid well-formed",
            Check::Issuer => "iss equals the configured issuer exactly",
            Check::Key => "a signing key from the issuer's JWKS that fits alg (kty, crv, alg)",
            Check::Signature => "signature valid",
            Check::ClaimTypes => "registered claims have their exact JSON types",
            Check::Audience => "aud intersects the provider's audiences",
            Check::Expiry => "exp not passed (with leeway)",
            Check::NotBefore => "nbf reached (with leeway)",
            Check::IssuedAt => "iat not in the future and not older than the maximum age",
            Check::Lifetime => "exp - iat within the maximum token lifetime",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which part of a compact JWS was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    SegmentCount,
    Charset,
    EmptySegment,
    Base64,
    HeaderJson,
    PayloadJson,
    NotUtf8,
    NotAnObject,
    Jwe,
    HeaderMemberType(&'static str),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::SegmentCount => f.write_str("not three segments"),
            Malformed::Charset => f.write_str("characters outside the base64url alphabet"),
            Malformed::EmptySegment => f.write_str("an empty segment"),
            Malformed::Base64 => f.write_str("a segment is not canonical unpadded base64url"),
            Malformed::HeaderJson => f.write_str("header is not valid JSON"),
            Malformed::PayloadJson => f.write_str("payload is not valid JSON"),
            Malformed::NotUtf8 => f.write_str("header or payload is not UTF-8"),
            Malformed::NotAnObject => f.write_str("header or payload is not a JSON object"),
            Malformed::Jwe => f.write_str("a JWE, not a JWS"),
            Malformed::HeaderMemberType(m) => write!(f, "header member `{m}` has the wrong type"),
        }
    }
}

/// A token's own times, stated with every time-based refusal so clock skew shows at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub iat: i64,
    pub nbf: Option<i64>,
    pub exp: i64,
}

impl fmt::Display for TokenTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.nbf {
            Some(nbf) => write!(f, "iat {} nbf {} exp {}", self.iat, nbf, self.exp),
            None => write!(f, "iat {} exp {}", self.iat, self.exp),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is {size} bytes, over the {max} byte limit")]
    TokenTooLarge { size: usize, max: usize },
    #[error("malformed token: {0}")]
    Malformed(Malformed),
    #[error("duplicate member `{0}` in the token")]
    DuplicateMember(String),
    #[error("algorithm `{alg}` is not allowed for this provider")]
    AlgNotAllowed { alg: String },
    #[error("critical header extension not supported")]
    CritUnsupported,
    #[error("token type `{typ}` is not allowed (expected JWT)")]
    TypNotAllowed { typ: String },
    #[error("kid is not a printable ASCII string of at most 256 characters")]
    KidInvalid,
    #[error("issuer `{got}` is not the trusted issuer for this provider")]
    IssuerNotTrusted { got: String },
    #[error("no signing key with kid `{kid}` in the issuer's key set")]
    UnknownKey { kid: String },
    #[error("token has no kid and the issuer's key set holds {candidates} keys (alg `{alg}`)")]
    AmbiguousKey { alg: String, candidates: usize },
    #[error("key `{kid}` does not fit algorithm `{alg}`")]
    KeyAlgMismatch { kid: String, alg: String },
    #[error("signature invalid")]
    SignatureInvalid,
    #[error("claim `{claim}` has the wrong JSON type or value range")]
    ClaimTypeInvalid { claim: &'static str },
    #[error("required claim `{claim}` is missing")]
    ClaimMissing { claim: &'static str },
    #[error("claim `{claim}` contains control, invisible or over-long text")]
    ClaimInvalid { claim: &'static str },
    #[error("audience mismatch: token aud {got} does not include any of {expected}")]
    AudienceMismatch { expected: String, got: String },
    #[error("token expired: broker clock {now}, token {times}, leeway {leeway}s")]
    Expired { now: i64, leeway: u64, times: TokenTimes },
    #[error("token not yet valid: broker clock {now}, token {times}, leeway {leeway}s")]
    NotYetValid { now: i64, leeway: u64, times: TokenTimes },
    #[error("token issued in the future: broker clock {now}, token {times}, leeway {leeway}s")]
    IssuedInFuture { now: i64, leeway: u64, times: TokenTimes },
    #[error("token too old: broker clock {now}, token {times}, maximum age {max}s")]
    TooOld { now: i64, max: u64, times: TokenTimes },
    #[error("token lifetime {lifetime}s (exp - iat) exceeds the maximum {max}s")]
    LifetimeTooLong { lifetime: i64, max: u64 },
    #[error("issuer keys unavailable: {0}")]
    KeysUnavailable(String),
    #[error("{what}")]
    LegacyToken { slug: &'static str, what: &'static str },
}

impl VerifyError {
    /// Stable reason code (ATTACKS.md slugs where one is named).
    pub fn slug(&self) -> &'static str {
        match self {
            VerifyError::TokenTooLarge { .. } => "request_too_large",
            VerifyError::Malformed(_) => "malformed_token",
            VerifyError::DuplicateMember(_) => "duplicate_member",
            VerifyError::AlgNotAllowed { .. } => "alg_not_allowed",
            VerifyError::CritUnsupported => "crit_unsupported",
            VerifyError::TypNotAllowed { .. } => "typ_not_allowed",
            VerifyError::KidInvalid => "kid_invalid",
            VerifyError::IssuerNotTrusted { .. } => "issuer_not_trusted",
            VerifyError::UnknownKey { .. } | VerifyError::AmbiguousKey { .. } => "unknown_key",
            VerifyError::KeyAlgMismatch { .. } => "key_alg_mismatch",
            VerifyError::SignatureInvalid => "signature_invalid",
            VerifyError::ClaimTypeInvalid { .. } => "claim_type_invalid",
            VerifyError::ClaimMissing { claim: "exp" } => "exp_missing",
            VerifyError::ClaimMissing { .. } => "claim_missing",
            VerifyError::ClaimInvalid { .. } => "claim_invalid",
            VerifyError::AudienceMismatch { .. } => "audience_mismatch",
            VerifyError::Expired { .. } => "token_expired",
            VerifyError::NotYetValid { .. } => "token_not_yet_valid",
            VerifyError::IssuedInFuture { .. } => "iat_in_future",
            VerifyError::TooOld { .. } => "token_too_old",
            VerifyError::LifetimeTooLong { .. } => "lifetime_too_long",
            VerifyError::KeysUnavailable(_) => "keys_unavailable",
            VerifyError::LegacyToken { slug, .. } => slug,
        }
    }

    /// The check that failed.
    pub fn check(&self) -> Check {
        match self {
            VerifyError::TokenTooLarge { .. } => Check::Size,
            VerifyError::Malformed(_) | VerifyError::DuplicateMember(_) => Check::Structure,
            VerifyError::AlgNotAllowed { .. } => Check::Algorithm,
            VerifyError::CritUnsupported | VerifyError::TypNotAllowed { .. } | VerifyError::KidInvalid => Check::Header,
            VerifyError::IssuerNotTrusted { .. } => Check::Issuer,
            VerifyError::UnknownKey { .. }
            | VerifyError::AmbiguousKey { .. }
            | VerifyError::KeyAlgMismatch { .. }
            | VerifyError::KeysUnavailable(_) => Check::Key,
            VerifyError::SignatureInvalid => Check::Signature,
            VerifyError::ClaimTypeInvalid { .. }
            | VerifyError::ClaimMissing { .. }
            | VerifyError::ClaimInvalid { .. } => Check::ClaimTypes,
            VerifyError::AudienceMismatch { .. } => Check::Audience,
            VerifyError::Expired { .. } => Check::Expiry,
            VerifyError::NotYetValid { .. } => Check::NotBefore,
            VerifyError::IssuedInFuture { .. } | VerifyError::TooOld { .. } => Check::IssuedAt,
            VerifyError::LifetimeTooLong { .. } => Check::Lifetime,
            VerifyError::LegacyToken { .. } => Check::Issuer,
        }
    }

    /// True when the failure is the issuer's availability, not the token: the broker answers
    /// `temporarily_unavailable` (503) instead of `invalid_request`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, VerifyError::KeysUnavailable(_))
    }
}

pub use ephemera_untrusted::escape_untrusted;

#[cfg(test)]
mod tests {
    use super::*;

    /// A check's name is its serialised form (explain --json and the trace show both).
    #[test]
    fn a_checks_name_is_its_serialised_form() {
        for &c in CHECKS {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::Value::from(c.name()), "{c:?}");
            assert_eq!(c.to_string(), c.name());
        }
    }

    #[test]
    fn time_refusals_state_the_clock_and_every_token_time() {
        let times = TokenTimes { iat: 100, nbf: Some(95), exp: 400 };
        let e = VerifyError::Expired { now: 500, leeway: 60, times };
        assert_eq!(e.to_string(), "token expired: broker clock 500, token iat 100 nbf 95 exp 400, leeway 60s");
        let e = VerifyError::IssuedInFuture { now: 0, leeway: 60, times: TokenTimes { nbf: None, ..times } };
        assert_eq!(e.to_string(), "token issued in the future: broker clock 0, token iat 100 exp 400, leeway 60s");
    }
}

//! Token verification: every check, every time, against an injected `now`.
//!
//! jsonwebtoken does the signature and nothing else: it reads the system clock, ignores `crit`,
//! skips `iat`, accepts an `iss` array and loosely typed claims. So the claim checks here are
//! ours, typed and explicit.

use crate::error::{Malformed, VerifyError, escape_untrusted};
use crate::jose::{UntrustedJws, parse_claims};
use crate::jwks::{KeySet, VerificationKey};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

/// The per-provider rules a token must meet.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// `iss` must equal this exactly.
    pub issuer: String,
    /// `aud` must intersect these.
    pub audiences: Vec<String>,
    /// Algorithms accepted (never `none` or HS*: those are refused whatever this says).
    pub algorithms: Vec<Algorithm>,
    /// Leeway for `exp`, `nbf` and `iat`, in seconds.
    pub leeway: u64,
    /// Largest `exp - iat` accepted, in seconds.
    pub max_lifetime: u64,
    /// Largest `now - iat` accepted, in seconds.
    pub max_age: u64,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Accept an `aud` array naming other audiences besides ours. Off by default: a token meant
    /// for several relying parties is not a token meant for the broker.
    pub allow_multiple_audiences: bool,
}

impl TokenRules {
    /// Defaults for `issuer` and `audiences`: RS256 + ES256, 60 s leeway, 16 KiB, tokens that
    /// live at most 24 h and are presented within 24 h of issue.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        TokenRules {
            issuer: issuer.into(),
            audiences,
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            leeway: 60,
            max_lifetime: 24 * 3600,
            max_age: 24 * 3600,
            max_token_bytes: 16 * 1024,
            allow_multiple_audiences: false,
        }
    }
}

/// A JWS whose signature verified with a key from the issuer's key set. Only
/// [`verify_jws_signature`] makes one.
#[derive(Debug)]
pub struct VerifiedJws {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub header: Map<String, Value>,
    pub payload: Vec<u8>,
    /// SHA-256 of `header.payload` (never of the signature, which ECDSA lets anyone re-encode).
    pub signing_input_sha256: [u8; 32],
}

/// Picks the key and verifies the signature of an already structure-checked JWS.
pub fn verify_jws_signature(jws: UntrustedJws<'_>, keys: &KeySet) -> Result<VerifiedJws, VerifyError> {
    let key = keys.select(jws.kid.as_deref(), jws.alg)?;
    if !verify_signature(key, jws.alg, jws.signing_input.as_bytes(), jws.signature_b64) {
        return Err(VerifyError::SignatureInvalid);
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jws.signing_input.as_bytes());
    let mut signing_input_sha256 = [0u8; 32];
    signing_input_sha256.copy_from_slice(digest.as_ref());
    Ok(VerifiedJws { alg: jws.alg, kid: jws.kid, header: jws.header, payload: jws.payload, signing_input_sha256 })
}

/// Does `signature_b64` (base64url, unpadded) sign `message` under `key` with `alg`? Through the
/// key parsed when its key set was loaded (aws-lc-rs), never rebuilt here: the one signature check
/// of every JWS, and the path the Wycheproof vectors run through.
pub fn verify_signature(key: &VerificationKey, alg: Algorithm, message: &[u8], signature_b64: &str) -> bool {
    match (key.verifier(alg), crate::jose::b64url_strict(signature_b64)) {
        (Some(parsed), Ok(sig)) => parsed.verify_sig(message, &sig).is_ok(),
        _ => false,
    }
}

/// Structure, header and signature of a compact JWS, with no claim semantics: the function the
/// RFC and Wycheproof vectors run through, and the first half of [`verify_token`].
pub fn verify_jws(
    token: &str,
    max_bytes: usize,
    allowed: &[Algorithm],
    keys: &KeySet,
) -> Result<VerifiedJws, VerifyError> {
    verify_jws_signature(UntrustedJws::parse(token, max_bytes, allowed)?, keys)
}

/// A token that passed every check for its provider, at the given time. Only [`check_claims`]
/// (through [`verify_token`] or [`crate::KeyCache::verify`]) makes one; its fields are read
/// through accessors, so a holder cannot edit what was verified (like `attestation::Evidence`).
#[derive(Debug)]
pub struct VerifiedToken {
    issuer: String,
    subject: String,
    audience: String,
    expires_at: i64,
    issued_at: i64,
    not_before: Option<i64>,
    jti: Option<String>,
    alg: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
    replay_id: String,
}

impl VerifiedToken {
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The audience that matched.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    pub fn not_before(&self) -> Option<i64> {
        self.not_before
    }

    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Every claim, as signed.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The claims, for a holder done with the rest.
    pub fn into_claims(self) -> Map<String, Value> {
        self.claims
    }

    /// What single use is keyed by: `jti` when the token has one, else SHA-256 of
    /// `header.payload`, both scoped to the issuer.
    pub fn replay_id(&self) -> &str {
        &self.replay_id
    }
}

/// A token whose structure and header passed, with its unverified claims parsed.
#[derive(Debug)]
pub struct UntrustedJwt<'a> {
    pub jws: UntrustedJws<'a>,
    pub claims: Map<String, Value>,
}

/// Steps before any key is looked up: size, structure, algorithm, header and the issuer. A token
/// for another issuer never causes a fetch.
pub(crate) fn precheck<'a>(token: &'a str, rules: &TokenRules) -> Result<UntrustedJwt<'a>, VerifyError> {
    let jws = UntrustedJws::parse(token, rules.max_token_bytes, &rules.algorithms)?;
    let claims = parse_claims(&jws.payload)?;
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => Ok(UntrustedJwt { jws, claims }),
        Some(Value::String(iss)) => Err(VerifyError::IssuerNotTrusted { got: escape_untrusted(iss, 128) }),
        Some(_) => Err(VerifyError::ClaimTypeInvalid { claim: "iss" }),
        None => Err(VerifyError::ClaimMissing { claim: "iss" }),
    }
}

/// Latest NumericDate accepted (9999-12-31T23:59:59Z).
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// NumericDate, strictly: a JSON integer in 0..=MAX. Fractions are refused rather than rounded
/// (jsonwebtoken would round), strings and other types are refused.
fn numeric_date(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, VerifyError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (0..=MAX_NUMERIC_DATE).contains(&v) => Ok(Some(v)),
            _ => Err(VerifyError::ClaimTypeInvalid { claim }),
        },
        Some(_) => Err(VerifyError::ClaimTypeInvalid { claim }),
    }
}

/// A string claim that identifies something: no control or invisible characters, at most 255
/// characters.
pub fn identifier_claim<'c>(
    claims: &'c Map<String, Value>,
    claim: &'static str,
) -> Result<Option<&'c str>, VerifyError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::String(s)) => {
            if s.is_empty() || s.chars().count() > 255 || s.chars().any(is_hidden_char) {
                Err(VerifyError::ClaimInvalid { claim })
            } else {
                Ok(Some(s))
            }
        }
        Some(_) => Err(VerifyError::ClaimTypeInvalid { claim }),
    }
}

fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, VerifyError> {
    let bad = VerifyError::ClaimTypeInvalid { claim: "aud" };
    match claims.get("aud") {
        None => Err(VerifyError::ClaimMissing { claim: "aud" }),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(a)) if !a.is_empty() => a.iter().map(|v| v.as_str().ok_or_else(|| bad.clone())).collect(),
        Some(_) => Err(bad),
    }
}

/// Claim checks on a signature-verified JWT at time `now` (UNIX seconds).
pub(crate) fn check_claims(
    jws: VerifiedJws,
    claims: Map<String, Value>,
    rules: &TokenRules,
    now: i64,
) -> Result<VerifiedToken, VerifyError> {
    // types first, every registered claim
    let issuer = match claims.get("iss") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(VerifyError::ClaimTypeInvalid { claim: "iss" }),
    };
    let subject = identifier_claim(&claims, "sub")?.ok_or(VerifyError::ClaimMissing { claim: "sub" })?.to_owned();
    let aud = audiences(&claims)?;
    let exp = numeric_date(&claims, "exp")?.ok_or(VerifyError::ClaimMissing { claim: "exp" })?;
    let nbf = numeric_date(&claims, "nbf")?;
    let iat = numeric_date(&claims, "iat")?.ok_or(VerifyError::ClaimMissing { claim: "iat" })?;
    let jti = identifier_claim(&claims, "jti")?.map(str::to_owned);

    let Some(audience) = aud.iter().find(|a| rules.audiences.iter().any(|r| r == *a)) else {
        return Err(VerifyError::AudienceMismatch {
            expected: format!("{:?}", rules.audiences),
            got: format!("{:?}", aud.iter().map(|a| escape_untrusted(a, 64)).collect::<Vec<_>>()),
        });
    };
    let audience = (*audience).to_owned();
    if aud.len() > 1 && !rules.allow_multiple_audiences {
        return Err(VerifyError::AudienceMismatch {
            expected: format!("{:?} alone", rules.audiences),
            got: format!("{:?}", aud.iter().map(|a| escape_untrusted(a, 64)).collect::<Vec<_>>()),
        });
    }
    let leeway = rules.leeway as i64;
    let times = crate::error::TokenTimes { iat, nbf, exp };
    if now > exp + leeway {
        return Err(VerifyError::Expired { now, leeway: rules.leeway, times });
    }
    if let Some(nbf) = nbf
        && nbf > now + leeway
    {
        return Err(VerifyError::NotYetValid { now, leeway: rules.leeway, times });
    }
    if iat > now + leeway {
        return Err(VerifyError::IssuedInFuture { now, leeway: rules.leeway, times });
    }
    if now - iat > rules.max_age as i64 + leeway {
        return Err(VerifyError::TooOld { now, max: rules.max_age, times });
    }
    if exp - iat > rules.max_lifetime as i64 {
        return Err(VerifyError::LifetimeTooLong { lifetime: exp - iat, max: rules.max_lifetime });
    }
    let replay_id = {
        use aws_lc_rs::digest::{Context, SHA256};
        let mut ctx = Context::new(&SHA256);
        ctx.update(issuer.as_bytes());
        ctx.update(&[0]);
        match &jti {
            Some(j) => {
                ctx.update(b"jti\0");
                ctx.update(j.as_bytes());
            }
            None => {
                ctx.update(b"sha256\0");
                ctx.update(&jws.signing_input_sha256);
            }
        }
        hex(ctx.finish().as_ref())
    };
    Ok(VerifiedToken {
        issuer,
        subject,
        audience,
        expires_at: exp,
        issued_at: iat,
        not_before: nbf,
        jti,
        alg: jws.alg,
        kid: jws.kid,
        claims,
        replay_id,
    })
}

pub use ephemera_untrusted::{hex, is_hidden_char};

/// Every check on a token, with the key set given (no fetching).
pub fn verify_token(token: &str, rules: &TokenRules, keys: &KeySet, now: i64) -> Result<VerifiedToken, VerifyError> {
    let UntrustedJwt { jws, claims } = precheck(token, rules)?;
    let verified = verify_jws_signature(jws, keys)?;
    check_claims(verified, claims, rules, now)
}

impl From<Malformed> for VerifyError {
    fn from(m: Malformed) -> Self {
        VerifyError::Malformed(m)
    }
}

#[cfg(test)]
mod tests {
    //! The claim checks' edges that the vector and corpus suites leave open (found surviving
    //! `cargo mutants`, tests/MUTANTS.md).
    use super::*;
    use serde_json::json;

    fn jws(signing_input: &[u8; 32]) -> VerifiedJws {
        VerifiedJws {
            alg: Algorithm::RS256,
            kid: None,
            header: Map::new(),
            payload: Vec::new(),
            signing_input_sha256: *signing_input,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    const NOW: i64 = 1_800_000_000;

    fn rules() -> TokenRules {
        TokenRules::new("https://ci.example.com", vec!["ephemera".into()])
    }

    fn base(extra: Value) -> Map<String, Value> {
        let mut c = claims(
            json!({"iss": "https://ci.example.com", "sub": "s", "aud": "ephemera", "iat": NOW, "exp": NOW + 300}),
        );
        c.extend(claims(extra));
        c
    }

    #[test]
    fn identifiers_are_1_to_255_visible_characters() {
        let id = |s: &str| identifier_claim(&claims(json!({ "sub": s })), "sub").map(|o| o.map(str::to_owned));
        assert_eq!(id(&"é".repeat(255)), Ok(Some("é".repeat(255))));
        assert_eq!(id(&"é".repeat(256)), Err(VerifyError::ClaimInvalid { claim: "sub" }));
        assert_eq!(id(""), Err(VerifyError::ClaimInvalid { claim: "sub" }));
        for hidden in ["a\u{0}b", "a\nb", "a\u{200b}b", "a\u{202e}b", "a\u{2060}b", "\u{feff}ab", "a\u{00ad}b"] {
            assert_eq!(id(hidden), Err(VerifyError::ClaimInvalid { claim: "sub" }), "{hidden:?}");
            assert!(hidden.chars().any(is_hidden_char), "{hidden:?}");
        }
        assert!(!"café/ü-漢字".chars().any(is_hidden_char));
        assert_eq!(
            identifier_claim(&claims(json!({"sub": 5})), "sub"),
            Err(VerifyError::ClaimTypeInvalid { claim: "sub" })
        );
        assert_eq!(identifier_claim(&Map::new(), "sub"), Ok(None));
    }

    #[test]
    fn a_too_long_lifetime_states_it() {
        let c = base(json!({"exp": NOW + 86_400 + 7}));
        let r = check_claims(jws(&[0; 32]), c, &rules(), NOW);
        assert_eq!(r.err(), Some(VerifyError::LifetimeTooLong { lifetime: 86_407, max: 86_400 }));
    }

    /// The replay id: lower-case hex SHA-256 over the issuer and the `jti`, or, without one, the
    /// signing input (never the signature); one per token, the same for every encoding of it.
    #[test]
    fn replay_ids_name_the_token_not_its_signature() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        let id = |extra: Value, input: [u8; 32]| {
            check_claims(jws(&input), base(extra), &rules(), NOW).map(|t| t.replay_id).unwrap_or_default()
        };
        let a = id(json!({"jti": "one"}), [1; 32]);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{a}");
        assert_eq!(a, id(json!({"jti": "one"}), [2; 32]), "the jti names it, whatever was signed");
        assert_ne!(a, id(json!({"jti": "two"}), [1; 32]));
        let b = id(json!({}), [1; 32]);
        assert_eq!(b, id(json!({}), [1; 32]));
        assert_ne!(b, id(json!({}), [2; 32]), "without jti, the signing input names it");
        assert_ne!(b, a);
    }
}

//! Compact JWS, parsed strictly before anything else looks at it. Nothing here trusts the
//! header: `jku`, `x5u`, `jwk`, `x5c` are never read; keys come only from the provider's JWKS.

use crate::error::{Malformed, VerifyError};
use crate::json::{self, StrictJsonError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

/// Every algorithm a provider may enable: asymmetric JWS algorithms jsonwebtoken implements
/// (never `none`, never HS*; no ES512, which jsonwebtoken lacks).
pub const ASYMMETRIC_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Longest `kid` accepted; anything longer is refused before a key lookup.
pub const MAX_KID_LEN: usize = 256;

/// A compact JWS whose structure and header passed the strict checks. Its signature has not
/// been verified: nothing in it is trusted yet.
#[derive(Debug)]
pub struct UntrustedJws<'a> {
    /// `header.payload`, the signing input.
    pub signing_input: &'a str,
    /// The signature segment, base64url.
    pub signature_b64: &'a str,
    /// The header as parsed.
    pub header: Map<String, Value>,
    /// The algorithm the header names, already checked against the allow-list.
    pub alg: Algorithm,
    /// The `kid`, already checked to be well-formed.
    pub kid: Option<String>,
    /// The decoded payload bytes.
    pub payload: Vec<u8>,
}

/// Decodes one segment: unpadded base64url only, canonical (no stray trailing bits).
pub fn b64url_strict(seg: &str) -> Result<Vec<u8>, VerifyError> {
    // The engine takes only the URL-safe alphabet without padding, so a segment it decodes is
    // all base64url characters; a refused one is then told apart: a character outside the
    // alphabet (`+`, `/`, `=`, whitespace) or a base64 error (a lone last character, bits
    // left over).
    URL_SAFE_NO_PAD.decode(seg).map_err(|_| {
        if seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            VerifyError::Malformed(Malformed::Base64)
        } else {
            VerifyError::Malformed(Malformed::Charset)
        }
    })
}

fn strict_object(bytes: &[u8], which: Malformed) -> Result<Map<String, Value>, VerifyError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(VerifyError::Malformed(Malformed::NotUtf8));
    }
    json::parse_object(bytes).map_err(|e| match e {
        StrictJsonError::Duplicate(name) => VerifyError::DuplicateMember(crate::error::escape_untrusted(&name, 64)),
        StrictJsonError::NotAnObject => VerifyError::Malformed(Malformed::NotAnObject),
        StrictJsonError::Syntax(_) => VerifyError::Malformed(which),
    })
}

/// Parses a JSON object the way token payloads are parsed (strict, duplicates refused).
pub fn parse_claims(payload: &[u8]) -> Result<Map<String, Value>, VerifyError> {
    strict_object(payload, Malformed::PayloadJson)
}

fn header_str<'h>(h: &'h Map<String, Value>, name: &'static str) -> Result<Option<&'h str>, VerifyError> {
    match h.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(VerifyError::Malformed(Malformed::HeaderMemberType(name))),
    }
}

/// Maps a header `alg` to an algorithm, exactly (case-sensitive), or refuses it.
pub fn parse_alg(alg: &str, allowed: &[Algorithm]) -> Result<Algorithm, VerifyError> {
    let refused = || VerifyError::AlgNotAllowed { alg: crate::error::escape_untrusted(alg, 32) };
    let a = match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        // INVARIANT: HS* (a JWKS never yields a shared secret) and `none` in every spelling
        // are refused here, whatever the provider's allow-list says.
        _ => return Err(refused()),
    };
    if allowed.contains(&a) { Ok(a) } else { Err(refused()) }
}

impl<'a> UntrustedJws<'a> {
    /// Runs the size, structure, algorithm and header checks on a compact JWS.
    pub fn parse(token: &'a str, max_bytes: usize, allowed: &[Algorithm]) -> Result<Self, VerifyError> {
        if token.len() > max_bytes {
            return Err(VerifyError::TokenTooLarge { size: token.len(), max: max_bytes });
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(VerifyError::Malformed(if token.split('.').count() == 5 {
                Malformed::Jwe
            } else {
                Malformed::SegmentCount
            }));
        };
        if h.is_empty() {
            return Err(VerifyError::Malformed(Malformed::EmptySegment));
        }
        let header = strict_object(&b64url_strict(h)?, Malformed::HeaderJson)?;
        if header.contains_key("enc") || header.contains_key("zip") {
            return Err(VerifyError::Malformed(Malformed::Jwe));
        }
        // We implement no JWS extension, so any `crit` (even empty, which RFC 7515 forbids) and
        // the b64 extension are refused rather than ignored; checked before the payload is
        // decoded, since b64=false payloads are not base64url at all.
        if header.contains_key("crit") || header.contains_key("b64") {
            return Err(VerifyError::CritUnsupported);
        }
        // The algorithm is judged before the signature segment: `none` is refused as such
        // whether its signature is empty or not.
        let alg_name = header_str(&header, "alg")?.ok_or(VerifyError::AlgNotAllowed { alg: "(missing)".into() })?;
        let alg = parse_alg(alg_name, allowed)?;
        if s.is_empty() {
            return Err(VerifyError::Malformed(Malformed::EmptySegment));
        }
        let payload = b64url_strict(p)?;
        b64url_strict(s)?;
        if let Some(typ) = header_str(&header, "typ")? {
            let t = typ.to_ascii_lowercase();
            if t != "jwt" && t != "application/jwt" {
                return Err(VerifyError::TypNotAllowed { typ: crate::error::escape_untrusted(typ, 32) });
            }
        }
        let kid = match header_str(&header, "kid")? {
            None => None,
            Some(k) if k.is_empty() || k.len() > MAX_KID_LEN || !k.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(VerifyError::KidInvalid);
            }
            Some(k) => Some(k.to_owned()),
        };
        let signing_input = &token[..h.len() + 1 + p.len()];
        Ok(UntrustedJws { signing_input, signature_b64: s, header, alg, kid, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }
    const ALLOWED: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];

    fn tok(h: &str, p: &str) -> String {
        format!("{}.{}.c2ln", seg(h), seg(p))
    }

    #[test]
    fn a_segment_outside_the_alphabet_and_a_bad_base64_one_are_told_apart() {
        for seg in ["ab+c", "ab/c", "abc=", "ab c", "ab\nc", "abé"] {
            assert_eq!(b64url_strict(seg), Err(VerifyError::Malformed(Malformed::Charset)), "{seg:?}");
        }
        // a lone last character, and bits left over after the last byte
        for seg in ["abcde", "AB"] {
            assert_eq!(b64url_strict(seg), Err(VerifyError::Malformed(Malformed::Base64)), "{seg:?}");
        }
        assert_eq!(b64url_strict("AA-_").unwrap(), vec![0x00, 0x0f, 0xbf]);
        assert_eq!(b64url_strict("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn none_in_every_spelling_and_hmac_are_refused() {
        for alg in ["none", "None", "NONE", "nOnE", "HS256", "HS512", "rs256", ""] {
            let t = tok(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
            assert!(matches!(UntrustedJws::parse(&t, 16384, ALLOWED), Err(VerifyError::AlgNotAllowed { .. })), "{alg}");
        }
        // even when a provider lists HS256, it is refused
        let t = tok(r#"{"alg":"HS256"}"#, "{}");
        assert!(UntrustedJws::parse(&t, 16384, &[Algorithm::HS256]).is_err());
        assert!(UntrustedJws::parse(&tok(r#"{"alg":"RS256"}"#, "{}"), 16384, ALLOWED).is_ok());
    }

    #[test]
    fn structure_is_strict() {
        let good = tok(r#"{"alg":"RS256"}"#, "{}");
        assert!(UntrustedJws::parse(&good, 16384, ALLOWED).is_ok());
        let (h, rest) = good.split_once('.').unwrap_or_default();
        let cases = [
            format!("{h}.{rest}.x"),
            format!("{h}.{rest}.x.y"),
            h.to_string(),
            format!("{h}.e30."),
            format!("{h}=.{rest}"),
            format!("{h} .{rest}"),
            format!("{h}.e30+.c2ln"),
        ];
        for c in cases {
            assert!(UntrustedJws::parse(&c, 16384, ALLOWED).is_err(), "{c}");
        }
        assert!(matches!(UntrustedJws::parse(&good, 10, ALLOWED), Err(VerifyError::TokenTooLarge { .. })));
    }

    #[test]
    fn crit_typ_kid_and_duplicates() {
        for h in [
            r#"{"alg":"RS256","crit":["exp"]}"#,
            r#"{"alg":"RS256","crit":[]}"#,
            r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#,
        ] {
            assert_eq!(UntrustedJws::parse(&tok(h, "{}"), 16384, ALLOWED).err(), Some(VerifyError::CritUnsupported));
        }
        for typ in ["at+jwt", "dpop+jwt", "logout+jwt", "secevent+jwt"] {
            let t = tok(&format!(r#"{{"alg":"RS256","typ":"{typ}"}}"#), "{}");
            assert!(matches!(UntrustedJws::parse(&t, 16384, ALLOWED), Err(VerifyError::TypNotAllowed { .. })));
        }
        assert!(UntrustedJws::parse(&tok(r#"{"alg":"RS256","typ":"JWT"}"#, "{}"), 16384, ALLOWED).is_ok());
        let long = "k".repeat(4096);
        for kid in ["", "a\\u0000b", "a\\r\\nb", long.as_str()] {
            let t = tok(&format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#), "{}");
            assert_eq!(UntrustedJws::parse(&t, 1 << 20, ALLOWED).err(), Some(VerifyError::KidInvalid), "{kid}");
        }
        let t = tok(r#"{"alg":"RS256","alg":"none"}"#, "{}");
        assert_eq!(UntrustedJws::parse(&t, 16384, ALLOWED).err(), Some(VerifyError::DuplicateMember("alg".into())));
    }

    /// The edges the checks above leave open (each found surviving `cargo mutants`, tests/MUTANTS.md).
    #[test]
    fn boundaries_and_exact_refusals() {
        fn parse(t: &str, max: usize) -> Result<UntrustedJws<'_>, VerifyError> {
            UntrustedJws::parse(t, max, ALLOWED)
        }
        // size: exactly max_bytes passes, one more is too large
        let good = tok(r#"{"alg":"RS256"}"#, "{}");
        assert!(parse(&good, good.len()).is_ok());
        assert_eq!(
            parse(&good, good.len() - 1).err(),
            Some(VerifyError::TokenTooLarge { size: good.len(), max: good.len() - 1 })
        );
        // five segments are a JWE; two, four or six are a bad segment count
        let malformed = |t: &str| match parse(t, 16384) {
            Err(VerifyError::Malformed(m)) => m,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(malformed(&format!("{good}.a.b")), Malformed::Jwe);
        for t in [
            good.rsplit_once('.').map(|(a, _)| a.to_owned()).unwrap_or_default(),
            format!("{good}.a"),
            format!("{good}.a.b.c"),
        ] {
            assert_eq!(malformed(&t), Malformed::SegmentCount, "{t}");
        }
        // a JWE header member alone (`enc` or `zip`) makes it a JWE
        for h in [r#"{"alg":"RS256","enc":"A128GCM"}"#, r#"{"alg":"RS256","zip":"DEF"}"#] {
            assert_eq!(malformed(&tok(h, "{}")), Malformed::Jwe, "{h}");
        }
        // kid: 256 visible characters pass, 257 do not; a space is not visible
        for (kid, ok) in
            [("k".repeat(256), true), ("k".repeat(257), false), ("a b".to_owned(), false), ("!~".to_owned(), true)]
        {
            let t = tok(&format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#), "{}");
            match parse(&t, 1 << 20) {
                Ok(j) => assert!(ok && j.kid.as_deref() == Some(kid.as_str()), "{kid}"),
                Err(e) => assert!(!ok && e == VerifyError::KidInvalid, "{kid}: {e:?}"),
            }
        }
    }
}

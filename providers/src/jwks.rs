//! An issuer's key set, filtered by documented rules before any key is used:
//!
//! - at most [`MAX_KEYS`] keys, or the document is refused;
//! - ignored (never used to verify): symmetric (`oct`) keys, keys with private members
//!   (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`), `use` other than `sig`, `key_ops` without
//!   `verify`, an `alg` that does not fit the key type or curve, unknown `kty`/`crv`,
//!   RSA moduli outside 2048..=8192 bits, public exponents that are even or below 3, RSA moduli
//!   with the ROCA fingerprint (CVE-2017-15361), and every key whose `kid` appears more than once
//!   (a duplicated kid is ambiguous, so neither copy is trusted);
//! - a token without `kid` is accepted only when the set holds exactly one usable key, and it
//!   fits the token's algorithm (with more keys, `kid` is required).
//!
//! One concern in one file (the rules a key set must meet before a key is used, and their
//! tests, which are most of its length): splitting the rules from their cases would make a reader
//! hold two files to check one rule.

use crate::error::VerifyError;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, VerificationAlgorithm};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::collections::HashMap;

/// Most keys a JWKS may hold.
pub const MAX_KEYS: usize = 100;

/// The key's type and, for EC/OKP, curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Does `alg` fit this key?
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa { .. }, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One usable verification key, parsed once when the key set is loaded: an aws-lc-rs
/// [`ParsedPublicKey`] per algorithm the key may verify, so a verification never rebuilds the key
/// (jsonwebtoken's `crypto::verify` rebuilt an RSA key from its components every time).
pub struct VerificationKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it states one; it must then equal the token's.
    pub alg: Option<Algorithm>,
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

impl VerificationKey {
    /// The parsed key for `alg`, if the key verifies it.
    pub fn verifier(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        self.verifiers.iter().find(|(a, _)| *a == alg).map(|(_, k)| k)
    }
}

/// The verifications jsonwebtoken's aws-lc-rs backend used for each algorithm (RSA of
/// 2048..=8192 bits; ECDSA in JOSE's fixed-width signature format).
static RSA_PARAMS: [(Algorithm, &RsaParameters); 6] = [
    (Algorithm::RS256, &signature::RSA_PKCS1_2048_8192_SHA256),
    (Algorithm::RS384, &signature::RSA_PKCS1_2048_8192_SHA384),
    (Algorithm::RS512, &signature::RSA_PKCS1_2048_8192_SHA512),
    (Algorithm::PS256, &signature::RSA_PSS_2048_8192_SHA256),
    (Algorithm::PS384, &signature::RSA_PSS_2048_8192_SHA384),
    (Algorithm::PS512, &signature::RSA_PSS_2048_8192_SHA512),
];

/// Parses the key material of an already classified JWK once per algorithm it verifies.
fn parse_verifiers(
    obj: &serde_json::Map<String, Value>,
    kind: KeyKind,
    alg: Option<Algorithm>,
) -> Result<Vec<(Algorithm, ParsedPublicKey)>, &'static str> {
    let member = |m| b64_member(obj, m).ok_or("key material invalid");
    let invalid = |_| "key material invalid";
    // only the JWK's own alg when it names one
    let wanted = |a: Algorithm| alg.is_none_or(|want| want == a);
    let mut out = Vec::new();
    match kind {
        KeyKind::Rsa { .. } => {
            let (n, e) = (member("n")?, member("e")?);
            let components = signature::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() };
            for (a, params) in RSA_PARAMS.iter().filter(|(a, _)| wanted(*a)) {
                out.push((*a, components.to_parsed_public_key(params).map_err(invalid)?));
            }
        }
        KeyKind::P256 | KeyKind::P384 => {
            // the uncompressed point (SEC 1 2.3.3): 0x04 || x || y; aws-lc-rs checks it is on the curve
            let mut point = vec![0x04];
            point.extend(member("x")?);
            point.extend(member("y")?);
            let (a, v): (Algorithm, &'static dyn VerificationAlgorithm) = match kind {
                KeyKind::P256 => (Algorithm::ES256, &signature::ECDSA_P256_SHA256_FIXED),
                _ => (Algorithm::ES384, &signature::ECDSA_P384_SHA384_FIXED),
            };
            if wanted(a) {
                out.push((a, ParsedPublicKey::new(v, &point).map_err(invalid)?));
            }
        }
        KeyKind::Ed25519 => {
            if wanted(Algorithm::EdDSA) {
                out.push((Algorithm::EdDSA, ParsedPublicKey::new(&signature::ED25519, member("x")?).map_err(invalid)?));
            }
        }
    }
    Ok(out)
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

/// A key left out of the set, with the rule that left it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    pub kid: Option<String>,
    pub reason: &'static str,
}

/// Why a whole JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("jwks is not a JSON object with a `keys` array: {0}")]
    Shape(String),
    #[error("jwks holds {0} keys, over the limit of {MAX_KEYS}")]
    TooManyKeys(usize),
}

/// The usable keys of one issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
    ignored: Vec<IgnoredKey>,
}

const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn jwk_alg(s: &str) -> Option<Algorithm> {
    crate::jose::parse_alg(s, crate::jose::ASYMMETRIC_ALGORITHMS).ok()
}

fn b64_member(obj: &serde_json::Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    obj.get(name).and_then(Value::as_str).and_then(|s| crate::jose::b64url_strict(s).ok())
}

/// Small primes for the ROCA fingerprint (Nemec et al., CCS 2017): a modulus generated by the
/// vulnerable library is, modulo each of these, in the subgroup generated by 65537.
const ROCA_PRIMES: &[u64] = &[11, 13, 17, 19, 37, 53, 61, 71, 73, 79, 97, 103, 107, 109, 127, 151, 157];

fn roca_fingerprint(n: &[u8]) -> bool {
    ROCA_PRIMES.iter().all(|&p| {
        let r = n.iter().fold(0u64, |acc, &b| (acc * 256 + u64::from(b)) % p);
        // walk the subgroup <65537> mod p
        let g = 65537 % p;
        let mut x = 1u64;
        for _ in 0..p {
            if x == r {
                return true;
            }
            x = x * g % p;
        }
        false
    })
}

fn classify(obj: &serde_json::Map<String, Value>) -> Result<(KeyKind, Option<Algorithm>), &'static str> {
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err("has private key members");
    }
    match obj.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err("use is not sig"),
    }
    if let Some(ops) = obj.get("key_ops") {
        let verify = ops.as_array().is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Err("key_ops lacks verify");
        }
    }
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(jwk_alg(a).ok_or("alg unsupported or symmetric")?),
        Some(_) => return Err("alg is not a string"),
    };
    let kind = match obj.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let n = b64_member(obj, "n").ok_or("RSA key without a valid n")?;
            let e = b64_member(obj, "e").ok_or("RSA key without a valid e")?;
            let n = n.strip_prefix(&[0u8][..]).unwrap_or(&n);
            let bits = n.first().map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            if !(2048..=8192).contains(&bits) {
                return Err("RSA modulus outside 2048..=8192 bits");
            }
            let e_val = e.iter().try_fold(0u64, |acc, &b| (acc < (1 << 32)).then_some(acc * 256 + u64::from(b)));
            match e_val {
                Some(v) if v >= 3 && v % 2 == 1 && v < (1 << 32) => {}
                _ => return Err("RSA public exponent invalid"),
            }
            if roca_fingerprint(n) {
                return Err("RSA modulus has the ROCA fingerprint");
            }
            KeyKind::Rsa { bits }
        }
        Some("EC") => {
            let (kind, len) = match obj.get("crv").and_then(Value::as_str) {
                Some("P-256") => (KeyKind::P256, 32),
                Some("P-384") => (KeyKind::P384, 48),
                _ => return Err("EC curve unsupported"),
            };
            let ok = |m| b64_member(obj, m).is_some_and(|v| v.len() == len);
            if !ok("x") || !ok("y") {
                return Err("EC coordinates of the wrong length");
            }
            kind
        }
        Some("OKP") => {
            if obj.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err("OKP curve unsupported");
            }
            if b64_member(obj, "x").is_none_or(|x| x.len() != 32) {
                return Err("Ed25519 key of the wrong length");
            }
            KeyKind::Ed25519
        }
        Some("oct") => return Err("symmetric key"),
        _ => return Err("kty unsupported"),
    };
    if alg.is_some_and(|a| !kind.fits(a)) {
        return Err("alg does not fit kty or crv");
    }
    Ok((kind, alg))
}

impl KeySet {
    /// Parses and filters a JWKS document (strict JSON: duplicate members refuse the document).
    pub fn from_json(bytes: &[u8]) -> Result<KeySet, JwksError> {
        let doc = crate::json::parse_object(bytes).map_err(|e| JwksError::Shape(e.to_string()))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or_else(|| JwksError::Shape("no keys array".into()))?;
        if keys.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(keys.len()));
        }
        let mut kid_count: HashMap<&str, usize> = HashMap::new();
        for k in keys {
            if let Some(kid) = k.get("kid").and_then(Value::as_str) {
                *kid_count.entry(kid).or_default() += 1;
            }
        }
        let mut set = KeySet::default();
        for k in keys {
            let Some(obj) = k.as_object() else {
                set.ignored.push(IgnoredKey { kid: None, reason: "not an object" });
                continue;
            };
            let kid = match obj.get("kid") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    set.ignored.push(IgnoredKey { kid: None, reason: "kid is not a string" });
                    continue;
                }
            };
            if kid.as_deref().is_some_and(|kid| kid_count.get(kid).copied().unwrap_or(0) > 1) {
                set.ignored.push(IgnoredKey { kid, reason: "kid appears more than once" });
                continue;
            }
            let parsed = classify(obj).and_then(|(kind, alg)| {
                let jwk: Jwk = serde_json::from_value(k.clone()).map_err(|_| "not a JWK jsonwebtoken understands")?;
                // what jsonwebtoken refuses stays refused (the vector suites pin it)
                DecodingKey::from_jwk(&jwk).map_err(|_| "key material invalid")?;
                let verifiers = parse_verifiers(obj, kind, alg)?;
                Ok(VerificationKey { kid: kid.clone(), kind, alg, verifiers })
            });
            match parsed {
                Ok(vk) => set.keys.push(vk),
                Err(reason) => set.ignored.push(IgnoredKey { kid, reason }),
            }
        }
        Ok(set)
    }

    /// The usable keys.
    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// The keys left out, with the rule that left each out.
    pub fn ignored(&self) -> &[IgnoredKey] {
        &self.ignored
    }

    /// True when a key with this kid is usable.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Picks the one key that may verify a token with this `kid` and `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerificationKey, VerifyError> {
        // named only when refused (no allocation on the way to a verification)
        let alg_name = || format!("{alg:?}");
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or_else(|| VerifyError::UnknownKey { kid: crate::error::escape_untrusted(kid, 64) })?;
                if !key.kind.fits(alg) || key.alg.is_some_and(|a| a != alg) {
                    return Err(VerifyError::KeyAlgMismatch {
                        kid: crate::error::escape_untrusted(kid, 64),
                        alg: alg_name(),
                    });
                }
                Ok(key)
            }
            None => {
                let fitting: Vec<_> =
                    self.keys.iter().filter(|k| k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg)).collect();
                match fitting.as_slice() {
                    [one] if self.keys.len() == 1 => Ok(one),
                    [] => Err(VerifyError::UnknownKey { kid: "(none)".into() }),
                    many => {
                        Err(VerifyError::AmbiguousKey { alg: alg_name(), candidates: many.len().max(self.keys.len()) })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn rsa(kid: &str, extra: &str) -> String {
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{RSA_N}","e":"AQAB"{extra}}}"#)
    }

    #[test]
    fn rules_ignore_dangerous_keys() {
        let doc = format!(
            r#"{{"keys":[{},{},{},{},{},{},{}]}}"#,
            rsa("good", r#","use":"sig","alg":"RS256""#),
            rsa("enc", r#","use":"enc""#),
            rsa("priv", r#","d":"AQAB""#),
            rsa("ecalg", r#","alg":"ES256""#),
            r#"{"kty":"oct","kid":"sym","k":"c2VjcmV0"}"#,
            rsa("dup", ""),
            rsa("dup", ""),
        );
        let set = KeySet::from_json(doc.as_bytes()).unwrap_or_default();
        assert_eq!(set.keys().len(), 1);
        assert!(set.has_kid("good"));
        let reasons: Vec<_> = set.ignored().iter().map(|i| i.reason).collect();
        assert_eq!(reasons.len(), 6, "{reasons:?}");
        assert!(matches!(set.select(Some("sym"), Algorithm::RS256), Err(VerifyError::UnknownKey { .. })));
        assert!(matches!(set.select(Some("good"), Algorithm::ES256), Err(VerifyError::KeyAlgMismatch { .. })));
        assert!(matches!(set.select(Some("good"), Algorithm::PS256), Err(VerifyError::KeyAlgMismatch { .. })));
        assert!(set.select(Some("good"), Algorithm::RS256).is_ok());
        assert!(set.select(None, Algorithm::RS256).is_ok());
    }

    #[test]
    fn no_kid_with_two_keys_is_ambiguous_and_big_sets_are_refused() {
        let doc = format!(r#"{{"keys":[{},{}]}}"#, rsa("a", ""), rsa("b", ""));
        let set = KeySet::from_json(doc.as_bytes()).unwrap_or_default();
        assert!(matches!(set.select(None, Algorithm::RS256), Err(VerifyError::AmbiguousKey { .. })));
        let many = format!(r#"{{"keys":[{}]}}"#, vec![rsa("x", ""); 101].join(","));
        assert_eq!(KeySet::from_json(many.as_bytes()).err(), Some(JwksError::TooManyKeys(101)));
    }

    /// A JWK with modulus `n` and exponent `e` (big-endian bytes) beside a good key: the weak key
    /// alone is ignored (with the reason), never the whole document, and the good key survives.
    fn ignored_reason(n: &[u8], e: &[u8]) -> Option<&'static str> {
        let doc = format!(
            r#"{{"keys":[{},{{"kty":"RSA","kid":"weak","n":"{}","e":"{}"}}]}}"#,
            rsa("good", ""),
            URL_SAFE_NO_PAD.encode(n),
            URL_SAFE_NO_PAD.encode(e)
        );
        let set = KeySet::from_json(doc.as_bytes()).unwrap_or_else(|e| panic!("whole JWKS refused: {e:?}"));
        assert!(set.has_kid("good"));
        match set.ignored() {
            [] => {
                assert!(set.has_kid("weak"));
                None
            }
            [one] => {
                assert!(!set.has_kid("weak"));
                Some(one.reason)
            }
            more => panic!("{} keys ignored", more.len()),
        }
    }

    /// A modulus of `bytes` bytes: the top bit set, the low bytes `tail`.
    fn modulus(bytes: usize, tail: &[u8]) -> Vec<u8> {
        let mut n = vec![0u8; bytes];
        n[0] = 0x80;
        n[bytes - tail.len()..].copy_from_slice(tail);
        n
    }

    const E65537: &[u8] = &[1, 0, 1];

    #[test]
    fn weak_rsa_keys_are_ignored() {
        let size = Some("RSA modulus outside 2048..=8192 bits");
        let exponent = Some("RSA public exponent invalid");
        // size: 2047 bits and 8200 bits are ignored, 2048 and 8192 are not
        assert_eq!(ignored_reason(&[0x7f; 256], E65537), size);
        assert_eq!(ignored_reason(&modulus(256, &[1]), E65537), None);
        assert_eq!(ignored_reason(&modulus(1024, &[1]), E65537), None);
        assert_eq!(ignored_reason(&modulus(1025, &[1]), E65537), size);
        assert_eq!(ignored_reason(&[1, 0, 1], E65537), size);
        // exponent: 1, even (4, 65536) and over 32 bits are ignored; 3 and 65537 are not
        let n = modulus(256, &[1]);
        for e in [&[1u8][..], &[4], &[1, 0, 0], &[1, 0, 0, 0, 1]] {
            assert_eq!(ignored_reason(&n, e), exponent, "e = {e:?}");
        }
        assert_eq!(ignored_reason(&n, &[3]), None);
        assert_eq!(ignored_reason(&n, E65537), None);
    }

    /// ROCA (CVE-2017-15361): a modulus that is 1 modulo every fingerprint prime (1 is in every
    /// subgroup <65537> mod p) is ignored; the same modulus + 2 (3 mod 11, outside <65537> mod 11 =
    /// {1, 10}) is not. Its low part t = (1 - 2^2047) mod prod(ROCA_PRIMES), made odd, was computed
    /// with Python's integers; the residues are checked here.
    #[test]
    fn roca_fingerprinted_moduli_are_ignored() {
        let t = [0x10, 0x4d, 0xd6, 0x85, 0xc5, 0x43, 0xe3, 0xcc, 0x7d, 0x37, 0x15, 0xa6, 0xcf];
        let roca = modulus(256, &t);
        let residue = |n: &[u8], p: u64| n.iter().fold(0u64, |acc, &b| (acc * 256 + u64::from(b)) % p);
        assert!(ROCA_PRIMES.iter().all(|&p| residue(&roca, p) == 1));
        assert_eq!(ignored_reason(&roca, E65537), Some("RSA modulus has the ROCA fingerprint"));
        let mut twin = roca.clone();
        twin[255] += 2;
        assert_eq!(residue(&twin, 11), 3);
        assert_eq!(ignored_reason(&twin, E65537), None);
        // a residue further along the subgroup: n = the modulus above + 65536, so n = 65537 mod
        // every prime (found only by walking <65537>, not at its first element)
        let mut walk = roca.clone();
        walk[253] += 1;
        assert!(ROCA_PRIMES.iter().all(|&p| residue(&walk, p) == 65537 % p));
        assert_eq!(ignored_reason(&walk, E65537), Some("RSA modulus has the ROCA fingerprint"));
    }

    /// More edges found by `cargo mutants`: exactly 100 keys are allowed; an EC key with one bad
    /// coordinate is ignored (either one); a token without `kid` is matched only by a key whose
    /// own `alg` (when it states one) is the token's.
    #[test]
    fn key_count_coordinates_and_kidless_alg() {
        let hundred =
            format!(r#"{{"keys":[{}]}}"#, (0..100).map(|i| rsa(&format!("k{i}"), "")).collect::<Vec<_>>().join(","));
        assert_eq!(KeySet::from_json(hundred.as_bytes()).map(|s| s.keys().len()), Ok(100));
        // a real P-256 point (0x04 || x || y)
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .unwrap();
        let point = aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref().to_vec();
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..]));
        let c32 = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let c31 = URL_SAFE_NO_PAD.encode([7u8; 31]);
        for (x, y, refused) in [
            (&x, &y, None),
            (&c31, &y, Some("EC coordinates of the wrong length")),
            (&x, &c31, Some("EC coordinates of the wrong length")),
            // the right lengths, but not a point of the curve: refused when the key is parsed,
            // at load (it could never verify anything)
            (&c32, &c32, Some("key material invalid")),
        ] {
            let doc = format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"e","x":"{x}","y":"{y}"}}]}}"#);
            let set = KeySet::from_json(doc.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
            let reasons: Vec<_> = set.ignored().iter().map(|i| i.reason).collect();
            match refused {
                None => assert!(reasons.is_empty() && set.has_kid("e"), "{reasons:?}"),
                Some(r) => assert_eq!(reasons, [r]),
            }
        }
        let ps = KeySet::from_json(format!(r#"{{"keys":[{}]}}"#, rsa("only", r#","alg":"PS256""#)).as_bytes())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(ps.select(None, Algorithm::RS256), Err(VerifyError::UnknownKey { .. })));
        assert!(ps.select(None, Algorithm::PS256).is_ok());
    }

    /// Each class of ignored key is ignored for its own reason; `Debug` of a usable key shows what
    /// it is and no key material.
    #[test]
    fn ignored_keys_name_their_reason_and_debug_shows_no_key() {
        let reason = |jwk: &str| {
            let set = KeySet::from_json(format!(r#"{{"keys":[{}, {jwk}]}}"#, rsa("good", "")).as_bytes())
                .unwrap_or_else(|e| panic!("{e:?}"));
            set.ignored().iter().map(|i| i.reason).collect::<Vec<_>>()
        };
        // (with its secret `k` an oct key is refused earlier, for private members)
        assert_eq!(reason(r#"{"kty":"oct","kid":"sym","k":"c2VjcmV0"}"#), ["has private key members"]);
        assert_eq!(reason(r#"{"kty":"oct","kid":"sym"}"#), ["symmetric key"]);
        assert_eq!(reason(r#"{"kty":"XYZ","kid":"x"}"#), ["kty unsupported"]);
        let set = KeySet::from_json(format!(r#"{{"keys":[{}]}}"#, rsa("good", r#","alg":"RS256""#)).as_bytes())
            .unwrap_or_else(|e| panic!("{e:?}"));
        let debug = format!("{:?}", set.keys()[0]);
        assert_eq!(debug, r#"VerificationKey { kid: Some("good"), kind: Rsa { bits: 2048 }, alg: Some(RS256) }"#);
        assert!(!debug.contains(&RSA_N[..16]));
    }
}

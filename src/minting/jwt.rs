//! Broker-signed JWTs (ES256, or RS256 with an RSA key) and the JWKS partners verify them with.
//!
//! The signing key comes from a PKCS#8 PEM file (P-256 → ES256; RSA of 2048 bits or more → RS256),
//! or is generated at start (P-256; dev mode, or serve without `signing_key_file`, which logs a
//! warning: tokens then stop verifying at restart). The `kid` is the key's RFC 7638 thumbprint, so
//! it changes exactly when the key does.
//!
//! The key is parsed once, at load, into an aws-lc-rs key pair. (jsonwebtoken's `encode` takes the
//! key as PKCS#8 bytes and parses it again on every signature, a third of the cost of an ES256
//! signature.) The compact serialisation is the RFC 7515 §7.1 concatenation of the base64url
//! header, payload and signature; the header is always the same bytes and is encoded once.

use crate::secret::IssuedCredential;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::path::Path;
use zeroize::Zeroizing;

/// The shortest RSA key aws-lc signs with, as RFC 7518 §3.3 requires.
const MIN_RSA_BITS: usize = 2048;

enum SigningKey {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl SigningKey {
    fn algorithm(&self) -> jsonwebtoken::Algorithm {
        match self {
            SigningKey::Es256(_) => jsonwebtoken::Algorithm::ES256,
            SigningKey::Rs256(_) => jsonwebtoken::Algorithm::RS256,
        }
    }
}

/// The broker's signing key. `Debug` shows the `kid` only.
pub struct BrokerSigner {
    kid: String,
    key: SigningKey,
    /// `base64url(header) + "."`, the same for every token this key signs.
    header_prefix: String,
    rng: SystemRandom,
    public_jwk: Value,
    /// Keys published beside the signing key but never used to sign: the next key before a
    /// rotation, the previous one after it.
    published: Vec<Value>,
}

impl std::fmt::Debug for BrokerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSigner")
            .field("kid", &self.kid)
            .field("alg", &self.algorithm())
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("signing key `{path}`: {cause}")]
    Load { path: String, cause: String },
    #[error("signing key generation failed")]
    Generate,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// RFC 7638 thumbprint of the canonical JWK text (members in lexicographic order, no white space).
fn thumbprint(canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()))
}

impl BrokerSigner {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, SignerError> {
        let pkcs8 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| SignerError::Generate)?;
        Self::from_pkcs8(Zeroizing::new(pkcs8.as_ref().to_vec())).map_err(|_| SignerError::Generate)
    }

    /// A P-256 or RSA key from a PEM file: PKCS#8 (`BEGIN PRIVATE KEY`), SEC1 P-256 (`BEGIN EC
    /// PRIVATE KEY`, what `openssl ecparam -genkey` writes) or PKCS#1 RSA (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem_file(path: &Path) -> Result<Self, SignerError> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let load = |cause: String| SignerError::Load { path: path.display().to_string(), cause };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| load(e.to_string()))?);
        let der = PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| load(format!("no PEM private key in it ({e}); {ACCEPTED_KEYS}")))?;
        match der {
            PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8(Zeroizing::new(k.secret_pkcs8_der().to_vec())).map_err(load),
            PrivateKeyDer::Sec1(k) => {
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_sec1_der())
                    .map_err(|e| load(format!("not a usable P-256 SEC1 key (aws-lc: {e}); {ACCEPTED_KEYS}")))
                    .and_then(|pair| Self::from_ec(pair).map_err(load))
            }
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map_err(|e| {
                    load(format!("not a usable RSA key (aws-lc: {e}); RSA keys need {MIN_RSA_BITS} bits or more"))
                })
                .map(Self::from_rsa),
            _ => Err(load(format!("an unsupported private key type; {ACCEPTED_KEYS}"))),
        }
    }

    /// A new key as a PKCS#8 PEM (P-256, or RSA-2048 with `rsa`) and its kid: `ephemera keygen`.
    pub fn generate_pem(rsa: bool) -> Result<(Zeroizing<String>, String), SignerError> {
        use aws_lc_rs::encoding::AsDer;
        let der = if rsa {
            RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .and_then(|k| k.as_der())
                .map(|d| Zeroizing::new(d.as_ref().to_vec()))
        } else {
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| Zeroizing::new(d.as_ref().to_vec()))
        }
        .map_err(|_| SignerError::Generate)?;
        let kid = Self::from_pkcs8(der.clone()).map_err(|_| SignerError::Generate)?.kid;
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der.as_slice()));
        let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok((pem, kid))
    }

    fn from_pkcs8(der: Zeroizing<Vec<u8>>) -> Result<Self, String> {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der) {
            return Self::from_ec(pair);
        }
        let pair = RsaKeyPair::from_pkcs8(&der).map_err(|e| {
            format!("not a usable P-256 or RSA PKCS#8 key (aws-lc: {e}); RSA keys need {MIN_RSA_BITS} bits or more, other key types are not supported")
        })?;
        // (aws-lc refuses RSA signing keys under 2048 bits itself: the error above names it)
        Ok(Self::from_rsa(pair))
    }

    fn from_ec(pair: EcdsaKeyPair) -> Result<Self, String> {
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err("unexpected public key encoding".into());
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        let kid = thumbprint(&format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
        Ok(Self::new(kid, SigningKey::Es256(pair), jwk))
    }

    fn from_rsa(pair: RsaKeyPair) -> Self {
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
        let jwk = json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS256", "use": "sig"});
        Self::new(kid, SigningKey::Rs256(pair), jwk)
    }

    fn new(kid: String, key: SigningKey, public_jwk: Value) -> Self {
        let header = json!({"alg": key.algorithm(), "typ": "JWT", "kid": kid}).to_string();
        let header_prefix = format!("{}.", URL_SAFE_NO_PAD.encode(header));
        BrokerSigner { kid, key, header_prefix, rng: SystemRandom::new(), public_jwk, published: Vec::new() }
    }

    /// Also publishes `other`'s public key in the JWKS (it does not sign).
    pub fn publish(&mut self, other: &BrokerSigner) {
        if other.kid != self.kid && !self.published.iter().any(|k| k["kid"] == other.public_jwk["kid"]) {
            self.published.push(other.public_jwk.clone());
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS `alg` this key signs with.
    pub fn algorithm(&self) -> jsonwebtoken::Algorithm {
        self.key.algorithm()
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> Value {
        let mut keys = vec![self.public_jwk.clone()];
        keys.extend(self.published.iter().cloned());
        json!({ "keys": keys })
    }

    /// Signs `claims` as a compact JWS with `typ: JWT`.
    pub fn sign(&self, claims: &Value) -> Result<IssuedCredential, SignerError> {
        self.sign_with(&self.header_prefix, claims)
    }

    /// Signs a Security Event Token (RFC 8417 §2.3: `typ: secevent+jwt`, so no SET can pass for
    /// a broker JWT, nor the reverse).
    pub fn sign_set(&self, claims: &Value) -> Result<String, SignerError> {
        let header = json!({"alg": self.key.algorithm(), "typ": "secevent+jwt", "kid": self.kid}).to_string();
        let prefix = format!("{}.", URL_SAFE_NO_PAD.encode(header));
        Ok(self.sign_with(&prefix, claims)?.expose().to_owned())
    }

    fn sign_with(&self, header_prefix: &str, claims: &Value) -> Result<IssuedCredential, SignerError> {
        let payload = serde_json::to_vec(claims).map_err(|e| SignerError::Sign(e.to_string()))?;
        let mut token = String::with_capacity(header_prefix.len() + payload.len() * 4 / 3 + 8 + 344);
        token.push_str(header_prefix);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let failed = |_| SignerError::Sign("the signature could not be computed".into());
        let signature = match &self.key {
            SigningKey::Es256(pair) => pair.sign(&self.rng, token.as_bytes()).map_err(failed)?.as_ref().to_vec(),
            SigningKey::Rs256(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &self.rng, token.as_bytes(), &mut sig).map_err(failed)?;
                sig
            }
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(IssuedCredential::new(token))
    }
}

/// The key formats a signing key file may hold, for error messages.
const ACCEPTED_KEYS: &str = "accepted: PKCS#8 (BEGIN PRIVATE KEY) P-256 or RSA, SEC1 (BEGIN EC PRIVATE KEY) P-256, PKCS#1 (BEGIN RSA PRIVATE KEY); `ephemera keygen --out FILE` writes one";

/// The claim set of a broker JWT, with an RFC 7800 `cnf` when the evidence bound a key.
pub(crate) fn claims(audience: &str, g: &super::GrantFacts<'_>) -> Value {
    let mut claims = json!({
        "iss": g.issuer,
        "sub": g.workload.subject,
        "aud": audience,
        "iat": g.now,
        "nbf": g.now,
        "exp": g.now + g.lifetime,
        "jti": g.jti,
        "role": g.role,
        "provider": g.provider,
        "src_iss": g.source_issuer,
        "task": g.workload.task,
    });
    if let (Some((member, value)), Some(obj)) = (g.cnf, claims.as_object_mut()) {
        obj.insert("cnf".into(), json!({ *member: value }));
    }
    if let (Some(n), Some(obj)) = (g.max_uses, claims.as_object_mut()) {
        obj.insert("max_uses".into(), json!(n));
    }
    if let (Some(d), Some(obj)) = (g.details, claims.as_object_mut()) {
        obj.insert("authorization_details".into(), d.clone());
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    #[test]
    fn signs_tokens_its_own_jwks_verifies() {
        let s = BrokerSigner::generate().unwrap_or_else(|e| panic!("{e}"));
        let tok = s.sign(&json!({"sub": "x"})).unwrap_or_else(|e| panic!("{e}"));
        let keys = ephemera_providers::KeySet::from_json(s.jwks().to_string().as_bytes()).unwrap_or_default();
        let v = ephemera_providers::verify_jws(tok.expose(), 16384, &[Algorithm::ES256], &keys)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.kid.as_deref(), Some(s.kid()));
    }

    /// `Debug` is exactly the kid, the algorithm and a placeholder: the private scalar `d` is in no
    /// encoding of it. (The old check looked for the literal `ZA`, base64url of "d", which the
    /// random kid contains in ~1.4% of runs, and never for the key.)
    #[test]
    fn debug_shows_the_kid_and_never_the_private_key() {
        use aws_lc_rs::encoding::AsBigEndian;
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap_or_else(|e| panic!("{e}"));
        let d = pair.private_key().as_be_bytes().unwrap_or_else(|e| panic!("{e}"));
        let d: &[u8] = d.as_ref();
        assert_eq!(d.len(), 32);
        let pkcs8 = pair.to_pkcs8v1().unwrap_or_else(|e| panic!("{e}"));
        let s = BrokerSigner::from_pkcs8(Zeroizing::new(pkcs8.as_ref().to_vec())).unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{s:?}");
        assert_eq!(debug, format!(r#"BrokerSigner {{ kid: "{}", alg: ES256, key: "[REDACTED]" }}"#, s.kid()));
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        let encodings =
            [URL_SAFE_NO_PAD.encode(d), base64::engine::general_purpose::STANDARD.encode(d), hex, format!("{d:?}")];
        for shown in [debug, format!("{s:#?}")] {
            for secret in &encodings {
                assert!(!shown.contains(secret.as_str()), "Debug shows the private key");
            }
        }
    }

    /// The kid is the RFC 7638 thumbprint: the RFC's own example (§3.1), and for a generated key
    /// the thumbprint of the canonical members of the JWK the broker publishes, built here apart
    /// from the signer's own formatting.
    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let rfc = thumbprint(&format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#));
        assert_eq!(rfc, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        let s = BrokerSigner::generate().unwrap_or_else(|e| panic!("{e}"));
        let jwk = &s.jwks()["keys"][0];
        let required: std::collections::BTreeMap<&str, &Value> =
            ["crv", "kty", "x", "y"].into_iter().map(|m| (m, &jwk[m])).collect();
        let canonical = serde_json::to_string(&required).unwrap_or_else(|e| panic!("{e}"));
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        assert_eq!(s.kid(), URL_SAFE_NO_PAD.encode(digest));
        assert_eq!(jwk["kid"], s.kid());
    }

    #[test]
    fn rsa_keys_sign_rs256() {
        let pkcs8 = |bits| {
            let key = RsaKeyPair::generate(bits).unwrap_or_else(|e| panic!("{e}"));
            use aws_lc_rs::encoding::AsDer;
            Zeroizing::new(key.as_der().unwrap_or_else(|e| panic!("{e}")).as_ref().to_vec())
        };
        let s = BrokerSigner::from_pkcs8(pkcs8(aws_lc_rs::rsa::KeySize::Rsa2048)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.algorithm(), Algorithm::RS256);
        let tok = s.sign(&json!({"sub": "x"})).unwrap_or_else(|e| panic!("{e}"));
        let keys = ephemera_providers::KeySet::from_json(s.jwks().to_string().as_bytes()).unwrap_or_default();
        let v = ephemera_providers::verify_jws(tok.expose(), 16384, &[Algorithm::RS256], &keys)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.kid.as_deref(), Some(s.kid()));
        // an ES256 verifier refuses it: the header names what really signed
        assert!(ephemera_providers::verify_jws(tok.expose(), 16384, &[Algorithm::ES256], &keys).is_err());
    }
}

//! Broker-signed JWTs (ES256) and the JWKS partners verify them with.
//!
//! The signing key comes from a PKCS#8 PEM file, or is generated at start (dev mode, or serve
//! without `signing_key_file`, which logs a warning: tokens then stop verifying at restart).
//! The `kid` is the key's RFC 7638 thumbprint, so it changes exactly when the key does.

use crate::secret::IssuedCredential;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::Path;
use zeroize::Zeroizing;

/// The broker's signing key. `Debug` shows the `kid` only.
pub struct BrokerSigner {
    kid: String,
    encoding: EncodingKey,
    public_jwk: Value,
    /// Keys published beside the signing key but never used to sign: the next key before a
    /// rotation, the previous one after it.
    published: Vec<Value>,
}

impl std::fmt::Debug for BrokerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSigner").field("kid", &self.kid).field("key", &"[REDACTED]").finish()
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

impl BrokerSigner {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, SignerError> {
        let pkcs8 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| SignerError::Generate)?;
        Self::from_pkcs8(Zeroizing::new(pkcs8.as_ref().to_vec())).map_err(|_| SignerError::Generate)
    }

    /// A P-256 key from a PKCS#8 PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Self, SignerError> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let load = |cause: String| SignerError::Load { path: path.display().to_string(), cause };
        let der =
            PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| load(format!("not a PKCS#8 PEM private key ({e})")))?;
        Self::from_pkcs8(Zeroizing::new(der.secret_pkcs8_der().to_vec())).map_err(load)
    }

    fn from_pkcs8(der: Zeroizing<Vec<u8>>) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| "not an ECDSA P-256 PKCS#8 key".to_owned())?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err("unexpected public key encoding".into());
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        // RFC 7638: members in lexicographic order, no white space.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()));
        let public_jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
        Ok(BrokerSigner { kid, encoding: EncodingKey::from_ec_der(&der), public_jwk, published: Vec::new() })
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

    /// The public JWKS document.
    pub fn jwks(&self) -> Value {
        let mut keys = vec![self.public_jwk.clone()];
        keys.extend(self.published.iter().cloned());
        json!({ "keys": keys })
    }

    /// Signs `claims` as a compact JWS with `typ: JWT`.
    pub fn sign(&self, claims: &Value) -> Result<IssuedCredential, SignerError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map(IssuedCredential::new)
            .map_err(|e| SignerError::Sign(e.to_string()))
    }
}

/// Random bytes as URL-safe base64 (ids, `jti`s).
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // aws-lc's DRBG; failure here means the process cannot produce ids at all.
    if aws_lc_rs::rand::fill(&mut buf).is_err() {
        tracing::error!("system randomness unavailable");
    }
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_tokens_its_own_jwks_verifies() {
        let s = BrokerSigner::generate().unwrap_or_else(|e| panic!("{e}"));
        let tok = s.sign(&json!({"sub": "x"})).unwrap_or_else(|e| panic!("{e}"));
        let keys = ephemera_providers::KeySet::from_json(s.jwks().to_string().as_bytes()).unwrap_or_default();
        let v = ephemera_providers::verify_jws(tok.expose(), 16384, &[Algorithm::ES256], &keys)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.kid.as_deref(), Some(s.kid()));
        assert!(!format!("{s:?}").contains(&URL_SAFE_NO_PAD.encode("d")));
    }
}

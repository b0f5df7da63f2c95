//! Secret-bearing values. Their `Debug` prints a redaction and they have no `Display`, so a token
//! or key cannot reach a log line or an error message by accident.

use secrecy::{ExposeSecret, SecretString};

/// An assertion presented by a workload (an ID token or attestation document).
#[derive(Clone)]
pub struct SubjectToken(SecretString);

impl SubjectToken {
    pub fn new(s: String) -> Self {
        SubjectToken(SecretString::from(s))
    }
    /// The token text, for verification only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    pub fn len(&self) -> usize {
        self.0.expose_secret().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectToken([REDACTED])")
    }
}

/// A credential the broker minted.
#[derive(Clone)]
pub struct IssuedCredential(SecretString);

impl IssuedCredential {
    pub fn new(s: String) -> Self {
        IssuedCredential(SecretString::from(s))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedCredential([REDACTED])")
    }
}

/// A secret shared with a peer (a platform's webhook secret): bytes for an HMAC key, compared in
/// constant time. `Debug` prints a redaction.
#[derive(Clone)]
pub struct SharedSecret(zeroize::Zeroizing<Vec<u8>>);

impl SharedSecret {
    pub fn new(bytes: Vec<u8>) -> Self {
        SharedSecret(zeroize::Zeroizing::new(bytes))
    }
    /// The key bytes, for an HMAC only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Constant-time comparison (of SHA-256 digests, so neither content nor length leaks).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let d = |s: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s).as_ref().to_vec();
        d(&self.0).ct_eq(&d(presented)).into()
    }
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let t = SubjectToken::new("eyJhbGciOi.secret.sig".into());
        let c = IssuedCredential::new("minted.secret.sig".into());
        assert_eq!(format!("{t:?}"), "SubjectToken([REDACTED])");
        assert!(!format!("{c:?}").contains("secret"));
    }
}

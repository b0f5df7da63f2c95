//! Attestation documents for Ephemera: AWS Nitro Enclaves, EC2 instance identity documents and
//! X.509 proof of possession over a broker nonce.
//!
//! This release holds only the public vocabulary (token types). No verifier exists yet, and the
//! broker refuses every attestation token type with `unsupported_token_type`: nothing here
//! pretends to verify.

#![forbid(unsafe_code)]

/// The attestation formats the broker will accept, by RFC 8693 `subject_token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AttestationKind {
    /// `urn:ephemera:token-type:nitro-attestation`
    Nitro,
    /// `urn:ephemera:token-type:aws-ec2-iid`
    Ec2InstanceIdentity,
    /// `urn:ephemera:token-type:x509-pop`
    X509ProofOfPossession,
}

impl AttestationKind {
    /// The `subject_token_type` URN.
    pub fn token_type(self) -> &'static str {
        match self {
            AttestationKind::Nitro => "urn:ephemera:token-type:nitro-attestation",
            AttestationKind::Ec2InstanceIdentity => "urn:ephemera:token-type:aws-ec2-iid",
            AttestationKind::X509ProofOfPossession => "urn:ephemera:token-type:x509-pop",
        }
    }
}

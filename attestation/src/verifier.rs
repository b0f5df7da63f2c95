//! [`Verifier`]: one configured verifier of any kind, as a broker holds it, with one entry point
//! for a document as it arrives in a form field.

use crate::{AttestationError, AttestationKind, Evidence, ec2, nitro, x509pop};

/// A configured verifier of any of the three kinds.
#[derive(Debug)]
pub enum Verifier {
    Nitro(nitro::NitroVerifier),
    Ec2(ec2::IidVerifier),
    X509(x509pop::PopVerifier),
}

impl Verifier {
    /// The kind of document it verifies.
    pub fn kind(&self) -> AttestationKind {
        match self {
            Verifier::Nitro(_) => AttestationKind::Nitro,
            Verifier::Ec2(_) => AttestationKind::Ec2InstanceIdentity,
            Verifier::X509(_) => AttestationKind::X509ProofOfPossession,
        }
    }

    /// Whether its documents must carry a broker nonce: a Nitro verifier as configured
    /// (`require_nonce`, default true), a proof of possession always (it is made over one), an
    /// instance identity document never (it cannot carry one).
    pub fn requires_nonce(&self) -> bool {
        match self {
            Verifier::Nitro(v) => v.require_nonce,
            Verifier::Ec2(_) => false,
            Verifier::X509(_) => true,
        }
    }

    /// Verifies a document as it is presented in a form field at `now`: a Nitro document as
    /// base64 text, an instance identity document in its JSON or PKCS#7 form, a proof of
    /// possession as its compact JWS.
    pub fn verify(&self, presented: &str, now: i64) -> Result<Evidence, AttestationError> {
        match self {
            Verifier::Nitro(v) => {
                nitro::decode_document_text(presented, v.max_document_bytes).and_then(|doc| v.verify(&doc, now))
            }
            Verifier::Ec2(v) => v.verify(presented.as_bytes(), now),
            Verifier::X509(v) => v.verify(presented, now),
        }
    }
}

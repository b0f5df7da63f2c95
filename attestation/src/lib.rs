//! Attestation verifiers for Ephemera: AWS Nitro Enclaves documents, EC2 instance identity
//! documents and X.509 proof of possession over a broker nonce. Each verifier takes the raw
//! evidence and the broker's clock (`now`, UNIX seconds) and returns an [`Evidence`] — a proof
//! type nothing outside this crate can construct — or an [`AttestationError`] naming the failed
//! check with a stable [`AttestationError::slug`].
//!
//! # What each verifier proves
//!
//! * [`nitro::NitroVerifier`]: the document was signed by a Nitro Hypervisor-held key certified
//!   (through AWS's regional, zonal and instance CAs) by the pinned AWS Nitro Enclaves root, at
//!   the document's timestamp, which is recent; so the enclave whose measurements are the PCRs
//!   ran on AWS Nitro hardware and asked for this document with this `nonce`, `user_data` and
//!   `public_key`. Policy then decides which code that may be: the broker's Cedar conditions on
//!   the `pcrN` evidence attributes (its lint refuses malformed or all-zero pins);
//!   [`nitro::check_pcrs`] is the same check as a library call for other users of this crate.
//! * [`x509pop::PopVerifier`]: the presenter holds, now, the private key of a certificate that
//!   chains to a configured anchor and is valid now, because it signed a JWS of the broker's own
//!   type over the broker's audience, a recent `iat` and a 32-byte nonce.
//! * [`ec2::IidVerifier`]: AWS signed this instance identity document (account, region,
//!   instance, image...) with the configured certificate of the document's region.
//!
//! # What they do NOT prove
//!
//! * Nitro: a code measurement, not who operates the enclave or why it asks; debug-mode
//!   enclaves (PCR0..2 all zero) attest nothing about their code: [`Evidence::debug`] says so,
//!   and the broker refuses them unless the role allows them in so many words (`allow_debug`;
//!   [`nitro::check_pcrs`] does the same for library users). Freshness against replay comes only
//!   from the nonce, which the **broker** must check is one it issued, unexpired, and consume
//!   atomically: [`Evidence::nonce`] is handed over for that, not checked here.
//! * X.509 PoP: nothing about the workload beyond the certificate's names; revocation only as
//!   far as the configured CRLs and serial denylist reach (no OCSP, no CRL fetching). The nonce
//!   is likewise the broker's to check and consume.
//! * EC2 IID: **nothing about freshness or possession**. The document and its signature are
//!   static for the instance's whole life and readable by any process on the instance (and any
//!   SSRF into its metadata service): an IID alone is replayable, the weakest evidence here
//!   ([`Evidence::replayable`] is true). The broker keeps it single-use per (`instanceId`,
//!   `pendingTime`) ([`Evidence::replay_id`]), caps credentials from it, and should prefer Nitro
//!   or X.509 PoP where freshness matters.
//! * None of them consult a network, a clock, a nonce store or a policy: roots, anchors,
//!   certificates, time and policy are all injected.
//!
//! Parsers use the libraries named in DESIGN.md (coset/ciborium, rasn-cms, rustls-webpki,
//! x509-parser, aws-lc-rs, dsa); every parser of untrusted bytes has a `cargo fuzz` target in
//! `attestation/fuzz`.

#![forbid(unsafe_code)]

mod cbor;
mod certs;
pub mod ec2;
pub mod error;
mod evidence;
pub mod nitro;
mod verifier;
pub mod x509pop;

pub use error::{AttestationError, Check};
pub use evidence::{Evidence, KeyBinding};
pub use verifier::Verifier;

/// The attestation formats the broker accepts, by RFC 8693 `subject_token_type`.
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

    /// Every evidence attribute its verifier may emit ([`Evidence::attributes`]), declared beside
    /// the code that emits it; policy makes each an optional principal attribute.
    pub fn attributes(self) -> &'static [&'static str] {
        match self {
            AttestationKind::Nitro => nitro::ATTRIBUTES,
            AttestationKind::Ec2InstanceIdentity => ec2::ATTRIBUTES,
            AttestationKind::X509ProofOfPossession => x509pop::ATTRIBUTES,
        }
    }
}

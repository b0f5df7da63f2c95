//! [`Evidence`]: the proof type every verifier returns and nothing else can construct.

use crate::AttestationKind;
use serde_json::{Map, Value};

/// The key a credential minted from this evidence should be bound to (RFC 7800 `cnf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBinding {
    /// RFC 7638 JWK SHA-256 thumbprint (base64url) of an EC, RSA or Ed25519 key: `cnf.jkt`.
    JwkThumbprint(String),
    /// SHA-256 (base64url) of key bytes that are not a recognised SubjectPublicKeyInfo.
    PublicKeySha256(String),
    /// SHA-256 (base64url) of the leaf certificate's DER: `cnf.x5t#S256`.
    X5tS256(String),
}

impl KeyBinding {
    /// The `cnf` member name and value to put in a minted credential.
    pub fn cnf_member(&self) -> (&'static str, &str) {
        match self {
            KeyBinding::JwkThumbprint(v) => ("jkt", v),
            KeyBinding::PublicKeySha256(v) => ("ephemera:pk#S256", v),
            KeyBinding::X5tS256(v) => ("x5t#S256", v),
        }
    }
}

/// Evidence that passed every check of its verifier at the `now` it was verified at. Only the
/// verifiers in this crate construct it; its fields are read through accessors so that a holder
/// cannot edit what was verified.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub(crate) kind: AttestationKind,
    pub(crate) subject: String,
    pub(crate) attributes: Map<String, Value>,
    pub(crate) nonce: Option<Vec<u8>>,
    pub(crate) issued_at: i64,
    pub(crate) not_after: i64,
    pub(crate) key_binding: Option<KeyBinding>,
    pub(crate) replay_id: String,
    pub(crate) replayable: bool,
    pub(crate) debug: bool,
}

impl Evidence {
    /// Which verifier produced it.
    pub fn kind(&self) -> AttestationKind {
        self.kind
    }

    /// Stable identity of the attester: `nitro:<module_id>`, the SPIFFE ID or subject DN of an
    /// X.509 leaf, `ec2:<accountId>/<instanceId>`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// What policy may use, as signed (see each verifier for the names).
    pub fn attributes(&self) -> &Map<String, Value> {
        &self.attributes
    }

    /// The nonce the evidence carries. The broker must check it is one it issued, still
    /// outstanding, and consume it atomically: the verifiers here do not know the broker's nonces.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    /// When the evidence was produced (UNIX seconds).
    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    /// The evidence's own limit (UNIX seconds): no credential minted from it may outlive this.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Key a minted credential must be bound to, if the evidence names one.
    pub fn key_binding(&self) -> Option<&KeyBinding> {
        self.key_binding.as_ref()
    }

    /// Stable id for single use (`SET` if absent until [`Evidence::not_after`], or for the
    /// instance's life for replayable evidence).
    pub fn replay_id(&self) -> &str {
        &self.replay_id
    }

    /// True when the same evidence can legitimately be presented again (EC2 IIDs).
    pub fn replayable(&self) -> bool {
        self.replayable
    }

    /// True for a Nitro debug-mode enclave (PCR0, PCR1 and PCR2 all zero).
    pub fn debug(&self) -> bool {
        self.debug
    }
}

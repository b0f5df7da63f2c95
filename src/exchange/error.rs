//! Everything that ends an exchange without a credential, and how each is answered: an OAuth
//! error code, a stable reason slug and a [`Class`]. The pipeline knows no HTTP: the server maps
//! a class to a status code (`server/error.rs`), in one place.

use super::request::{GRANT_TOKEN_EXCHANGE, RequestProblem};
use crate::minting::MintError;
use crate::state::StateError;
use ephemera_providers::VerifyError;

/// Everything that ends an exchange without a credential. [`ExchangeError::refusal`] is the one
/// place that gives each its class, OAuth error code and reason slug.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("grant_type must be {GRANT_TOKEN_EXCHANGE}")]
    UnsupportedGrantType,
    #[error("{0}")]
    InvalidRequest(RequestProblem),
    #[error("subject_token_type `{0}` is not supported")]
    UnsupportedTokenType(String),
    #[error("no role `{0}`")]
    UnknownRole(String),
    #[error("{0}")]
    Token(VerifyError),
    #[error("{0}")]
    Profile(VerifyError),
    #[error("policy denied role `{role}`: {}", .decision.reasons())]
    Denied { role: String, decision: Box<crate::policy::Decision> },
    #[error("assertion has no lifetime left: exp {exp}, broker clock {now}")]
    NoLifetimeLeft { exp: i64, now: i64 },
    #[error("assertion already used")]
    Replayed,
    #[error(
        "the broker's replay memory was reset at {since}; present an assertion issued after it by more than the provider's leeway"
    )]
    ReplayStateReset { since: i64 },
    #[error("{0}")]
    State(StateError),
    #[error("{0}")]
    Audit(crate::audit::AuditError),
    #[error("credential could not be minted; the assertion is spent, present a fresh one")]
    Mint(MintError),
    #[error("{0}")]
    Tag(crate::minting::aws::AwsError),
    #[error("{0}")]
    Attestation(ephemera_attestation::AttestationError),
    #[error("debug-mode enclave (PCR0..2 all zero) refused; the role does not say allow_debug")]
    DebugEnclave,
    #[error("{0}")]
    NonceInvalid(&'static str),
    #[error("the exchange took longer than {0} s (an issuer slow to answer?)")]
    Timeout(u64),
    #[error("{0}")]
    Randomness(crate::ids::RandomnessUnavailable),
    #[error("the assertion belongs to another task")]
    TaskMismatch,
    /// The client asked for another kind of credential than the role hands out (refused before
    /// the assertion is spent: the client's own mistake never costs it its assertion).
    #[error("requested_token_type `{requested}`: role `{role}` issues `{issues}`")]
    RequestedTypeMismatch { role: String, requested: String, issues: &'static str },
    /// RFC 9396 §5: details the role does not declare, or malformed.
    #[error("{0}")]
    AuthorizationDetails(String),
    /// A cloud refused or could not answer (only [`MintError::Aws`] and [`MintError::Gcp`]).
    #[error("{0}")]
    Upstream(MintError),
}

impl From<MintError> for ExchangeError {
    fn from(e: MintError) -> Self {
        match e {
            MintError::Tag(t) => ExchangeError::Tag(t),
            e @ (MintError::Aws(_) | MintError::Gcp(_)) => ExchangeError::Upstream(e),
            e @ (MintError::NotSetUp(_) | MintError::Sign(_)) => ExchangeError::Mint(e),
        }
    }
}

/// What kind of refusal, for a transport to choose its status (HTTP: `server/error.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The request or its assertion is refused (400).
    Rejected,
    /// The request is bigger than the broker reads (413).
    TooLarge,
    /// What the request names does not exist (404).
    NotFound,
    /// The caller did not prove who it is (401).
    Unauthenticated,
    /// The assertion is good but not for what it was presented for (403).
    Forbidden,
    /// The broker or a peer cannot answer now; the same request may succeed later (503).
    Unavailable,
    /// A cloud refused to mint (502).
    UpstreamRefused,
}

/// How a refusal is answered: transport-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub class: Class,
    /// RFC 6749 §5.2 / RFC 8693 §2.2.2 error code.
    pub error: &'static str,
    /// Stable reason slug, also in the audit record.
    pub reason: &'static str,
    /// `reason: detail`, RFC 6749 charset (no `"` or `\`), never a secret.
    pub description: String,
}

impl Refusal {
    /// A refusal whose description is `reason: detail`.
    pub fn new(class: Class, error: &'static str, reason: &'static str, detail: &str) -> Refusal {
        Refusal { class, error, reason, description: oauth_charset(&format!("{reason}: {detail}")) }
    }
}

/// Keeps to RFC 6749's error_description characters: printable ASCII except `"` and `\`.
pub fn oauth_charset(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => '`',
            '\\' => '/',
            c if (' '..='~').contains(&c) => c,
            _ => '?',
        })
        .collect()
}

impl ExchangeError {
    /// The reason slug and what failed, without any value (for `detail = "reason"`).
    pub fn reason_only(&self) -> String {
        let r = self.refusal().reason;
        match self {
            ExchangeError::Denied { role, decision } => format!("{r}: role `{role}`: {}", decision.failed_names()),
            ExchangeError::Token(e) | ExchangeError::Profile(e) => format!("{r}: check {} failed", e.check()),
            _ => self.refusal().description,
        }
    }

    /// The reason slug and the whole cause, for the audit record and the log. The caller's
    /// description is the same text, except for a state store failure: the store's own words (a
    /// Redis address, a MOVED slot, a TLS error) never leave the broker.
    pub(crate) fn detail(&self) -> String {
        oauth_charset(&format!("{}: {self}", self.refusal().reason))
    }

    /// The class, OAuth error code and reason slug of each error: one exhaustive `match`.
    pub fn refusal(&self) -> Refusal {
        use Class::*;
        let (class, error, reason) = match self {
            ExchangeError::UnsupportedGrantType => (Rejected, "unsupported_grant_type", "unsupported_grant_type"),
            ExchangeError::InvalidRequest(RequestProblem::TooManyFields) => {
                (TooLarge, "invalid_request", "request_too_large")
            }
            ExchangeError::InvalidRequest(
                RequestProblem::Missing(_)
                | RequestProblem::Duplicate(_)
                | RequestProblem::ConflictingTarget
                | RequestProblem::ActorUnsupported
                | RequestProblem::ActorIncomplete
                | RequestProblem::RequestedTypeUnsupported
                | RequestProblem::TaskRequired,
            ) => (Rejected, "invalid_request", "request_invalid"),
            ExchangeError::UnsupportedTokenType(_) => (Rejected, "invalid_request", "unsupported_token_type"),
            ExchangeError::UnknownRole(_) => (Rejected, "invalid_target", "unknown_role"),
            ExchangeError::Token(e) | ExchangeError::Profile(e) if e.is_unavailable() => {
                (Unavailable, "temporarily_unavailable", e.slug())
            }
            ExchangeError::Token(e) | ExchangeError::Profile(e) => (Rejected, "invalid_request", e.slug()),
            ExchangeError::Denied { .. } => (Rejected, "invalid_target", "policy_denied"),
            ExchangeError::NoLifetimeLeft { .. } => (Rejected, "invalid_request", "token_expired"),
            ExchangeError::Replayed => (Rejected, "invalid_request", "token_replayed"),
            ExchangeError::ReplayStateReset { .. } => (Rejected, "invalid_request", "replay_state_reset"),
            ExchangeError::State(StateError::RevocationsLost(_)) => {
                (Unavailable, "temporarily_unavailable", "revocations_unverified")
            }
            ExchangeError::State(_) => (Unavailable, "temporarily_unavailable", "replay_store_unavailable"),
            ExchangeError::Audit(_) => (Unavailable, "temporarily_unavailable", "audit_unavailable"),
            ExchangeError::Mint(_) => (Unavailable, "temporarily_unavailable", "mint_failed"),
            ExchangeError::Tag(_) => (Rejected, "invalid_request", "tag_invalid"),
            ExchangeError::Attestation(e) => (Rejected, "invalid_request", e.slug()),
            ExchangeError::DebugEnclave => (Rejected, "invalid_request", "debug_enclave"),
            ExchangeError::NonceInvalid(_) => (Rejected, "invalid_request", "nonce_invalid"),
            ExchangeError::Timeout(_) => (Unavailable, "temporarily_unavailable", "request_timeout"),
            ExchangeError::Randomness(_) => (Unavailable, "temporarily_unavailable", "randomness_unavailable"),
            ExchangeError::TaskMismatch => (Forbidden, "access_denied", "task_mismatch"),
            ExchangeError::RequestedTypeMismatch { .. } => (Rejected, "invalid_request", "requested_type_mismatch"),
            ExchangeError::AuthorizationDetails(_) => {
                (Rejected, "invalid_authorization_details", "authorization_details_invalid")
            }
            ExchangeError::Upstream(e) => match e.upstream() {
                Some((_, true)) => (Unavailable, "temporarily_unavailable", "upstream_unavailable"),
                _ => (UpstreamRefused, "server_error", "upstream_refused"),
            },
        };
        let description = match self {
            ExchangeError::State(StateError::RevocationsLost(_)) => format!(
                "{reason}: the shared state lost its data; nothing is allowed until an admin has re-asserted the revocations"
            ),
            ExchangeError::State(_) => format!("{reason}: the replay store cannot answer now; try again"),
            _ => oauth_charset(&format!("{reason}: {self}")),
        };
        Refusal { class, error, reason, description }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_keep_to_the_oauth_charset() {
        let e = ExchangeError::UnknownRole("a\"b\\c\u{e9}".into()).refusal();
        assert_eq!(e.class, Class::Rejected);
        assert_eq!(e.error, "invalid_target");
        assert!(e.description.starts_with("unknown_role: "));
        assert!(!e.description.contains('"') && !e.description.contains('\\') && e.description.is_ascii());
        let r = ExchangeError::Token(VerifyError::KeysUnavailable("down".into())).refusal();
        assert_eq!((r.class, r.error), (Class::Unavailable, "temporarily_unavailable"));
    }

    /// README's error table for the failures no e2e test can provoke: a broker JWT that cannot be
    /// signed (aws-lc fails only without system randomness) is 503 `mint_failed`, telling the
    /// caller to present a fresh assertion; a full state store is `replay_store_unavailable`.
    #[test]
    fn unprovokable_failures_answer_as_documented() {
        let r = ExchangeError::from(MintError::Sign(crate::minting::jwt::SignerError::Generate)).refusal();
        assert_eq!((r.class, r.error, r.reason), (Class::Unavailable, "temporarily_unavailable", "mint_failed"));
        assert_eq!(
            r.description,
            "mint_failed: credential could not be minted; the assertion is spent, present a fresh one"
        );
        let r = ExchangeError::Randomness(crate::ids::RandomnessUnavailable).refusal();
        assert_eq!(
            (r.class, r.error, r.reason),
            (Class::Unavailable, "temporarily_unavailable", "randomness_unavailable")
        );
        assert_eq!(r.description, "randomness_unavailable: system randomness unavailable");
        let r = ExchangeError::State(StateError::Full(3)).refusal();
        assert_eq!(
            (r.class, r.error, r.reason),
            (Class::Unavailable, "temporarily_unavailable", "replay_store_unavailable")
        );
    }

    /// A state store's own error text stays in the broker on every route that answers with
    /// `refusal()` (the token route, a workload's revocation, explain) and in every disclosure
    /// mode; the audit detail keeps it.
    #[test]
    fn a_store_failure_is_not_described_to_the_caller() {
        let e = ExchangeError::State(StateError::Unavailable("Moved: 5484 127.0.0.1:55627".into()));
        let public = "replay_store_unavailable: the replay store cannot answer now; try again";
        assert_eq!(e.refusal().description, public);
        assert_eq!(e.reason_only(), public);
        assert_eq!(e.detail(), "replay_store_unavailable: replay store unavailable: Moved: 5484 127.0.0.1:55627");
        // every other error is described to the caller as the audit has it
        let other = ExchangeError::UnknownRole("x".into());
        assert_eq!(other.refusal().description, other.detail());
    }
}

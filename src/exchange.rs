//! The exchange pipeline. [`Broker::evaluate`] runs verification, profile, policy and lifetime
//! bounding and returns a [`Trace`] of every step; the server's [`Broker::exchange`] and the
//! `explain` command both call it, so an explanation is the server's decision, not a re-creation.
//! [`Broker::exchange`] then marks the assertion used, writes the durable audit record, and only
//! then mints.

use crate::audit::{AuditLog, AuditRecord, CredentialRecord};
use crate::clock::{Clock, rfc3339};
use crate::config::Detail;
use crate::config::{Config, Provider};
use crate::minting::jwt::{BrokerSigner, random_id};
use crate::policy::{Credential, Decision, Role};
use crate::secret::{IssuedCredential, SubjectToken};
use crate::state::{Mark, StateError, StateStore};
use ephemera_providers::profile::Workload;
use ephemera_providers::verify::{check_claims, precheck, verify_jws_signature};
use ephemera_providers::{CHECKS, KeyCache, VerifiedToken, VerifyError};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Attestation token types: recognised, but verified only once the attestation verifiers land.
pub const ATTESTATION_TOKEN_TYPES: &[&str] = &[
    "urn:ephemera:token-type:nitro-attestation",
    "urn:ephemera:token-type:aws-ec2-iid",
    "urn:ephemera:token-type:x509-pop",
];

/// How long the replay store remembers replayable evidence (EC2 instance identity documents).
pub const REPLAYABLE_MEMORY: i64 = 366 * 24 * 3600;

/// Most form fields accepted in one request.
pub const MAX_FORM_FIELDS: usize = 32;
/// Most bytes of request headers accepted on the token endpoint.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A token exchange request, as the form said it.
#[derive(Debug)]
pub struct ExchangeRequest {
    pub subject_token: SubjectToken,
    pub subject_token_type: String,
    pub role: String,
    pub requested_token_type: Option<String>,
}

/// A malformed request, before any token is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestProblem {
    Missing(&'static str),
    Duplicate(String),
    TooManyFields,
    ConflictingTarget,
    ActorUnsupported,
    ActorIncomplete,
    RequestedTypeUnsupported,
    NotForm,
    QueryString,
    BodyTooLarge,
    HeadersTooLarge,
    MethodNotAllowed,
}

impl std::fmt::Display for RequestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestProblem::Missing(p) => write!(f, "parameter `{p}` is required"),
            RequestProblem::Duplicate(p) => write!(f, "parameter `{p}` appears more than once"),
            RequestProblem::TooManyFields => write!(f, "more than {MAX_FORM_FIELDS} form fields"),
            RequestProblem::ConflictingTarget => f.write_str("`audience` and `resource` name different roles"),
            RequestProblem::ActorUnsupported => f.write_str("delegation (`actor_token`) is not supported"),
            RequestProblem::ActorIncomplete => f.write_str("`actor_token` and `actor_token_type` must come together"),
            RequestProblem::RequestedTypeUnsupported => {
                f.write_str("`requested_token_type` must be the jwt or access_token type")
            }
            RequestProblem::NotForm => f.write_str("body must be application/x-www-form-urlencoded"),
            RequestProblem::QueryString => f.write_str("parameters belong in the form body, not the query string"),
            RequestProblem::BodyTooLarge => f.write_str("request body over the size limit"),
            RequestProblem::HeadersTooLarge => write!(f, "request headers over {MAX_HEADER_BYTES} bytes"),
            RequestProblem::MethodNotAllowed => f.write_str("use POST with a form body"),
        }
    }
}

/// Everything that ends an exchange without a credential. [`ExchangeError::response`] is the one
/// place that maps each to an HTTP status, an OAuth error code and a reason slug.
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
    #[error("policy denied role `{role}`: {reasons}")]
    Denied { role: String, reasons: String, names: String },
    #[error("assertion has no lifetime left: exp {exp}, broker clock {now}")]
    NoLifetimeLeft { exp: i64, now: i64 },
    #[error("assertion already used")]
    Replayed,
    #[error("the broker's replay memory was reset at {since}; present an assertion issued after it")]
    ReplayStateReset { since: i64 },
    #[error("{0}")]
    State(StateError),
    #[error("{0}")]
    Audit(String),
    #[error("credential could not be minted; the assertion is spent, present a fresh one")]
    Mint(String),
    #[error("too many requests from this client; retry later")]
    RateLimited,
    #[error("{0}")]
    Tag(String),
    #[error("{0}")]
    Attestation(ephemera_attestation::AttestationError),
    #[error("debug-mode enclave (PCR0..2 all zero) refused; the role does not say allow_debug")]
    DebugEnclave,
    #[error("{0}")]
    NonceInvalid(&'static str),
    #[error("the exchange took longer than {0} s (an issuer slow to answer?)")]
    Timeout(u64),
    #[error("{message}")]
    Upstream { service: &'static str, retryable: bool, message: String },
}

/// How an error is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u16,
    /// RFC 6749 §5.2 / RFC 8693 §2.2.2 error code.
    pub error: &'static str,
    /// Stable reason slug, also in the audit record.
    pub reason: &'static str,
    /// `reason: detail`, RFC 6749 charset (no `"` or `\`), never a secret.
    pub description: String,
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
        let r = self.response().reason;
        match self {
            ExchangeError::Denied { role, names, .. } => format!("{r}: role `{role}`: {names}"),
            ExchangeError::Token(e) | ExchangeError::Profile(e) => format!("{r}: check {} failed", e.check()),
            _ => self.response().description,
        }
    }

    /// The reason slug and the whole cause, for the audit record and the log. The caller's
    /// description is the same text, except for a state store failure: the store's own words (a
    /// Redis address, a MOVED slot, a TLS error) never leave the broker.
    pub(crate) fn detail(&self) -> String {
        oauth_charset(&format!("{}: {self}", self.response().reason))
    }

    pub fn response(&self) -> ErrorResponse {
        let (status, error, reason) = match self {
            ExchangeError::UnsupportedGrantType => (400, "unsupported_grant_type", "unsupported_grant_type"),
            ExchangeError::InvalidRequest(RequestProblem::NotForm) => (415, "invalid_request", "request_invalid"),
            ExchangeError::InvalidRequest(RequestProblem::MethodNotAllowed) => {
                (405, "invalid_request", "method_not_allowed")
            }
            ExchangeError::InvalidRequest(RequestProblem::HeadersTooLarge) => {
                (431, "invalid_request", "request_too_large")
            }
            ExchangeError::InvalidRequest(RequestProblem::BodyTooLarge | RequestProblem::TooManyFields) => {
                (413, "invalid_request", "request_too_large")
            }
            ExchangeError::InvalidRequest(_) => (400, "invalid_request", "request_invalid"),
            ExchangeError::UnsupportedTokenType(_) => (400, "invalid_request", "unsupported_token_type"),
            ExchangeError::UnknownRole(_) => (400, "invalid_target", "unknown_role"),
            ExchangeError::Token(e) | ExchangeError::Profile(e) if e.is_unavailable() => {
                (503, "temporarily_unavailable", e.slug())
            }
            ExchangeError::Token(e) | ExchangeError::Profile(e) => (400, "invalid_request", e.slug()),
            ExchangeError::Denied { .. } => (400, "invalid_target", "policy_denied"),
            ExchangeError::NoLifetimeLeft { .. } => (400, "invalid_request", "token_expired"),
            ExchangeError::Replayed => (400, "invalid_request", "token_replayed"),
            ExchangeError::ReplayStateReset { .. } => (400, "invalid_request", "replay_state_reset"),
            ExchangeError::State(_) => (503, "temporarily_unavailable", "replay_store_unavailable"),
            ExchangeError::Audit(_) => (503, "temporarily_unavailable", "audit_unavailable"),
            ExchangeError::Mint(_) => (503, "temporarily_unavailable", "mint_failed"),
            ExchangeError::RateLimited => (429, "temporarily_unavailable", "rate_limited"),
            ExchangeError::Tag(_) => (400, "invalid_request", "tag_invalid"),
            ExchangeError::Attestation(e) => (400, "invalid_request", e.slug()),
            ExchangeError::DebugEnclave => (400, "invalid_request", "debug_enclave"),
            ExchangeError::NonceInvalid(_) => (400, "invalid_request", "nonce_invalid"),
            ExchangeError::Timeout(_) => (503, "temporarily_unavailable", "request_timeout"),
            ExchangeError::Upstream { retryable: true, .. } => (503, "temporarily_unavailable", "upstream_unavailable"),
            ExchangeError::Upstream { retryable: false, .. } => (502, "server_error", "upstream_refused"),
        };
        let description = match self {
            ExchangeError::State(_) => format!("{reason}: the replay store cannot answer now; try again"),
            _ => oauth_charset(&format!("{reason}: {self}")),
        };
        ErrorResponse { status, error, reason, description }
    }
}

/// Parses an RFC 8693 form body. Duplicate parameters are refused (a second `subject_token`
/// must not mean something to one parser and nothing to another); unknown ones are ignored as
/// RFC 6749 §3.2 requires.
pub fn parse_form(body: &[u8]) -> Result<ExchangeRequest, ExchangeError> {
    let bad = ExchangeError::InvalidRequest;
    let mut fields: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if fields.len() >= MAX_FORM_FIELDS {
            return Err(bad(RequestProblem::TooManyFields));
        }
        if fields.iter().any(|(f, _)| *f == k) {
            return Err(bad(RequestProblem::Duplicate(ephemera_providers::error::escape_untrusted(&k, 32))));
        }
        fields.push((k.into_owned(), v.into_owned()));
    }
    let mut take = |name: &str| fields.iter().position(|(k, _)| k == name).map(|i| fields.swap_remove(i).1);
    let grant = take("grant_type").ok_or(bad(RequestProblem::Missing("grant_type")))?;
    if grant != GRANT_TOKEN_EXCHANGE {
        return Err(ExchangeError::UnsupportedGrantType);
    }
    let subject_token =
        take("subject_token").filter(|t| !t.is_empty()).ok_or(bad(RequestProblem::Missing("subject_token")))?;
    let subject_token = SubjectToken::new(subject_token);
    let subject_token_type = take("subject_token_type").ok_or(bad(RequestProblem::Missing("subject_token_type")))?;
    match (take("actor_token"), take("actor_token_type")) {
        (None, None) => {}
        (Some(_), Some(_)) => return Err(bad(RequestProblem::ActorUnsupported)),
        _ => return Err(bad(RequestProblem::ActorIncomplete)),
    }
    let role = match (take("audience").filter(|s| !s.is_empty()), take("resource").filter(|s| !s.is_empty())) {
        (Some(a), Some(r)) if a != r => return Err(bad(RequestProblem::ConflictingTarget)),
        (Some(a), _) => a,
        (None, Some(r)) => r,
        (None, None) => return Err(bad(RequestProblem::Missing("audience"))),
    };
    let requested_token_type = take("requested_token_type");
    if requested_token_type.as_deref().is_some_and(|t| t != TOKEN_TYPE_JWT && t != TOKEN_TYPE_ACCESS_TOKEN) {
        return Err(bad(RequestProblem::RequestedTypeUnsupported));
    }
    Ok(ExchangeRequest { subject_token, subject_token_type, role, requested_token_type })
}

/// How one verification check fared.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub check: String,
    pub description: &'static str,
    /// `pass`, `fail` or `not_reached`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The registered claims of a verified token, for people (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    pub issued_at: i64,
    pub not_before: Option<i64>,
    pub expires_at: i64,
    pub alg: String,
    pub kid: Option<String>,
}

/// Everything `evaluate` found, step by step.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Trace {
    pub now: i64,
    pub now_rfc3339: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<&'static str>,
    pub checks: Vec<CheckOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Seconds the credential would live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<i64>,
    /// The config (and so policy) version the decision was taken under.
    pub config_version: String,
    /// Attestation: the evidence attributes policy saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Trace {
    fn record_checks(&mut self, failed: Option<&VerifyError>) {
        let failed_at = failed.map(VerifyError::check);
        let mut reached = true;
        self.checks = CHECKS
            .iter()
            .map(|&c| {
                let (status, detail) = if !reached {
                    ("not_reached", None)
                } else if Some(c) == failed_at {
                    reached = false;
                    ("fail", failed.map(ToString::to_string))
                } else {
                    ("pass", None)
                };
                CheckOutcome { check: c.to_string(), description: c.describe(), status, detail }
            })
            .collect();
    }
}

/// An exchange that passed every check and the policy, at `now`. Only [`Broker::evaluate`]
/// makes one; minting requires it.
#[derive(Debug)]
pub struct Allowed {
    pub role: Arc<Role>,
    pub workload: Workload,
    pub lifetime: i64,
    pub now: i64,
    /// What single use is keyed by, and until when it is remembered.
    pub replay_id: String,
    pub replay_until: i64,
    /// When the assertion was issued (the replay store refuses those older than its epoch).
    pub issued_at: i64,
    /// The assertion's issuer (for attestation, the provider's synthetic issuer).
    pub issuer: String,
    /// The claims (or evidence attributes) as verified.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// RFC 7800 confirmation for a broker JWT: (member, value).
    pub cnf: Option<(&'static str, String)>,
    /// A broker nonce (base64url) to consume with the grant.
    pub nonce: Option<String>,
    /// The evidence can be replayed (EC2 instance identity documents).
    pub replayable: bool,
}

/// The RFC 8693 success response.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    #[serde(serialize_with = "expose_credential")]
    pub access_token: IssuedCredential,
    pub issued_token_type: &'static str,
    pub token_type: &'static str,
    pub expires_in: i64,
    /// AWS sessions: the credentials in the `credential_process` shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialProcess>,
}

/// AWS's `credential_process` output (`Expiration` is the broker's deadline, so SDKs come back
/// for a fresh session, with a fresh assertion, when the authority ends).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CredentialProcess {
    pub version: u8,
    pub access_key_id: String,
    #[serde(serialize_with = "expose_credential")]
    pub secret_access_key: IssuedCredential,
    #[serde(serialize_with = "expose_credential")]
    pub session_token: IssuedCredential,
    pub expiration: String,
}

/// `issued_token_type` of an AWS session (its `access_token` is the session token).
pub const TOKEN_TYPE_AWS_CREDENTIALS: &str = "urn:ephemera:token-type:aws-credentials";

fn expose_credential<S: serde::Serializer>(c: &IssuedCredential, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.expose())
}

/// The broker: configuration, key cache, state, audit, signer and clock.
#[derive(Debug)]
pub struct Broker {
    /// The config in force; replaced whole by a reload, read once per exchange.
    pub config: arc_swap::ArcSwap<Config>,
    pub keys: KeyCache,
    pub state: Arc<dyn StateStore>,
    /// `None` for `explain`, which never grants: an exchange without an audit log fails closed.
    pub audit: Option<AuditLog>,
    pub signer: BrokerSigner,
    pub clock: Arc<dyn Clock>,
    /// STS client, when any role hands out AWS sessions.
    pub aws: Option<crate::minting::aws::AwsMinter>,
    /// IAM Credentials client, when any role hands out GCP tokens.
    pub gcp: Option<crate::minting::gcp::GcpMinter>,
}

impl Broker {
    /// The config in force now (one snapshot: use it for the whole of one exchange).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the config for every exchange that starts from now on. Listener, state, audit
    /// and key-cache settings are fixed at start; a change to them is reported, not applied: the
    /// config in force keeps the running ones, so a later reload compares with what runs.
    pub fn reload(&self, mut new: Config) -> Vec<String> {
        let old = self.config();
        let mut ignored = Vec::new();
        if new.server.listen != old.server.listen {
            ignored.push("server.listen".to_owned());
            new.server.listen = old.server.listen;
        }
        if new.admin_listen != old.admin_listen {
            ignored.push("admin.listen".to_owned());
            new.admin_listen = old.admin_listen;
        }
        if new.audit_path != old.audit_path {
            ignored.push("audit.path".to_owned());
            new.audit_path = old.audit_path.clone();
        }
        if new.state != old.state {
            ignored.push("state".to_owned());
            new.state = old.state.clone();
        }
        if new.cache != old.cache || new.allow_private_addresses != old.allow_private_addresses {
            ignored.push("jwks".to_owned());
            new.cache = old.cache.clone();
            new.allow_private_addresses = old.allow_private_addresses;
        }
        self.config.store(Arc::new(new));
        ignored
    }

    async fn verify(&self, provider: &Provider, token: &SubjectToken, now: i64) -> Result<VerifiedToken, VerifyError> {
        self.verify_inner(provider, token, now).await.map_err(|e| provider.profile.refine(e))
    }

    async fn verify_inner(
        &self,
        provider: &Provider,
        token: &SubjectToken,
        now: i64,
    ) -> Result<VerifiedToken, VerifyError> {
        let untrusted = precheck(token.expose(), &provider.rules)?;
        let keys = self.keys.keys_for(&provider.name, &provider.source, untrusted.jws.kid.as_deref(), now).await?;
        let jws = verify_jws_signature(untrusted.jws, &keys)?;
        check_claims(jws, untrusted.claims, &provider.rules, now)
    }

    /// Steps 1–6 of the exchange, without side effects: classify, verify, profile, decide, bound.
    pub async fn evaluate(&self, req: &ExchangeRequest, now: i64) -> (Trace, Result<Allowed, ExchangeError>) {
        self.evaluate_under(&self.config(), req, now).await
    }

    /// [`Broker::evaluate`] under one config snapshot: a reload never mixes two configs (a role
    /// of one with the policy engine of another) within one exchange.
    async fn evaluate_under(
        &self,
        config: &Config,
        req: &ExchangeRequest,
        now: i64,
    ) -> (Trace, Result<Allowed, ExchangeError>) {
        let mut trace = Trace {
            now,
            now_rfc3339: rfc3339(now),
            role: req.role.clone(),
            config_version: config.version.clone(),
            ..Default::default()
        };
        let result = self.evaluate_into(config, req, now, &mut trace).await;
        (trace, result)
    }

    async fn evaluate_into(
        &self,
        config: &Config,
        req: &ExchangeRequest,
        now: i64,
        trace: &mut Trace,
    ) -> Result<Allowed, ExchangeError> {
        let t = req.subject_token_type.as_str();
        if !(t == TOKEN_TYPE_ID_TOKEN || t == TOKEN_TYPE_JWT || ATTESTATION_TOKEN_TYPES.contains(&t)) {
            return Err(ExchangeError::UnsupportedTokenType(ephemera_providers::error::escape_untrusted(t, 80)));
        }
        let role =
            config.roles.get(&req.role).cloned().ok_or_else(|| {
                ExchangeError::UnknownRole(ephemera_providers::error::escape_untrusted(&req.role, 64))
            })?;
        let provider = role.provider.clone();
        trace.provider = Some(provider.name.clone());
        trace.profile = Some(provider.profile.name());
        if !provider.profile.token_types().contains(&t) {
            return Err(ExchangeError::UnsupportedTokenType(format!(
                "{} (role `{}` takes {})",
                ephemera_providers::error::escape_untrusted(t, 80),
                role.name,
                provider.profile.token_types().join(" or ")
            )));
        }
        if let Some(attestor) = &provider.attestor {
            return self.evaluate_attestation(config, req, role.clone(), attestor, now, trace).await;
        }
        let verified = self.verify(&provider, &req.subject_token, now).await;
        trace.record_checks(verified.as_ref().err());
        let token = verified.map_err(ExchangeError::Token)?;
        trace.token = Some(TokenSummary {
            issuer: token.issuer.clone(),
            subject: token.subject.clone(),
            audience: token.audience.clone(),
            issued_at: token.issued_at,
            not_before: token.not_before,
            expires_at: token.expires_at,
            alg: format!("{:?}", token.alg),
            kid: token.kid.clone(),
        });
        let workload = provider.profile.workload(&token).map_err(ExchangeError::Profile)?;
        trace.workload = Some(workload.clone());
        self.decide_and_bound(config, &role, &workload, &token.claims, (now, token.issued_at, token.expires_at), trace)
            .await?;
        let lifetime = trace.lifetime.unwrap_or(0);
        let replay_until = token.expires_at + role.provider.rules.leeway as i64;
        Ok(Allowed {
            role,
            workload,
            lifetime,
            now,
            replay_id: token.replay_id,
            replay_until,
            issued_at: token.issued_at,
            issuer: token.issuer,
            claims: token.claims,
            cnf: None,
            nonce: None,
            replayable: false,
        })
    }

    /// Steps 2–6 for an attestation document: verify it, read the workload from the evidence,
    /// decide, bound. The nonce is only checked for presence here; it is consumed with the grant.
    async fn evaluate_attestation(
        &self,
        config: &Config,
        req: &ExchangeRequest,
        role: Arc<Role>,
        attestor: &crate::config::Attestor,
        now: i64,
        trace: &mut Trace,
    ) -> Result<Allowed, ExchangeError> {
        use crate::config::Attestor;
        use ephemera_attestation::nitro;
        let token = req.subject_token.expose();
        let verified = match attestor {
            Attestor::Nitro(v) => {
                nitro::decode_document_text(token, v.max_document_bytes).and_then(|doc| v.verify(&doc, now))
            }
            Attestor::Ec2(v) => v.verify(token.as_bytes(), now),
            Attestor::X509(v) => v.verify(token, now),
        };
        trace.checks = vec![CheckOutcome {
            check: "attestation".into(),
            description: "document structure, signature, certificate chain to the pinned root at its time and now, freshness",
            status: if verified.is_ok() { "pass" } else { "fail" },
            detail: verified.as_ref().err().map(ToString::to_string),
        }];
        let evidence = verified.map_err(ExchangeError::Attestation)?;
        let provider = &role.provider;
        // Evidence attributes as policy strings (lists joined with `,`), beside `iss` and `sub`.
        let mut attributes = std::collections::BTreeMap::new();
        let mut claims = serde_json::Map::new();
        for (k, v) in evidence.attributes() {
            let text = match v {
                serde_json::Value::Array(a) => {
                    Some(a.iter().filter_map(ephemera_providers::profile::scalar_text).collect::<Vec<_>>().join(","))
                }
                other => ephemera_providers::profile::scalar_text(other),
            };
            if let Some(t) = text {
                attributes.insert(k.clone(), t.clone());
                claims.insert(k.clone(), serde_json::Value::String(t));
            }
        }
        claims.insert("iss".into(), serde_json::Value::String(provider.rules.issuer.clone()));
        claims.insert("sub".into(), serde_json::Value::String(evidence.subject().to_owned()));
        trace.evidence = Some(claims.clone());
        let workload = Workload {
            subject: evidence.subject().to_owned(),
            task: format!("attestation:{}", &evidence.replay_id()[..evidence.replay_id().len().min(32)]),
            attributes,
        };
        trace.workload = Some(workload.clone());
        if evidence.debug() && !role.allow_debug {
            return Err(ExchangeError::DebugEnclave);
        }
        let nonce = match (provider.require_nonce, evidence.nonce()) {
            (_, Some(n)) => Some(base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, n)),
            (true, None) => return Err(ExchangeError::NonceInvalid("the document carries no broker nonce")),
            (false, None) => None,
        };
        self.decide_and_bound(
            config,
            &role,
            &workload,
            &claims,
            (now, evidence.issued_at(), evidence.not_after()),
            trace,
        )
        .await?;
        let lifetime = trace.lifetime.unwrap_or(0);
        let cnf = evidence.key_binding().map(|k| {
            let (member, value) = k.cnf_member();
            (member, value.to_owned())
        });
        Ok(Allowed {
            role: role.clone(),
            workload,
            lifetime,
            now,
            replay_id: evidence.replay_id().to_owned(),
            // Replayable evidence (an EC2 IID is the same for the instance's life) is remembered far
            // beyond the credential's cap: a year, after which such a document would be a year old.
            replay_until: if evidence.replayable() {
                now + REPLAYABLE_MEMORY
            } else {
                evidence.not_after() + provider.rules.leeway as i64
            },
            issued_at: evidence.issued_at(),
            issuer: provider.rules.issuer.clone(),
            claims,
            cnf,
            nonce,
            replayable: evidence.replayable(),
        })
    }

    /// The revocation keys in force for this workload: its task, subject, role and issuer.
    async fn revocations(
        &self,
        role: &Role,
        workload: &Workload,
        iss: &str,
        now: i64,
    ) -> Result<Vec<String>, ExchangeError> {
        let keys = [
            format!("task:{}", workload.task),
            format!("subject:{}", workload.subject),
            format!("role:{}", role.name),
            format!("issuer:{iss}"),
        ];
        self.state.revoked(&keys, now).await.map_err(ExchangeError::State)
    }

    /// Steps 5–6: the policy decision and the credential's lifetime.
    async fn decide_and_bound(
        &self,
        config: &Config,
        role: &Role,
        workload: &Workload,
        claims: &serde_json::Map<String, serde_json::Value>,
        (now, iat, exp): (i64, i64, i64),
        trace: &mut Trace,
    ) -> Result<(), ExchangeError> {
        let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
        let revoked = self.revocations(role, workload, iss, now).await?;
        let decision = config.engine.decide_with(role, workload, claims, iss, (now, iat, exp), &revoked);
        trace.decision = Some(decision.clone());
        if !decision.allow {
            return Err(ExchangeError::Denied {
                role: role.name.clone(),
                reasons: decision.reasons(),
                names: decision.failed_names(),
            });
        }
        let lifetime = (role.max_ttl.as_secs() as i64).min(exp - now);
        trace.lifetime = Some(lifetime.max(0));
        if lifetime <= 0 {
            return Err(ExchangeError::NoLifetimeLeft { exp, now });
        }
        Ok(())
    }

    /// `explain --claims`: the profile and policy steps on a synthetic claim set (no signature,
    /// no verification), for writing roles before any token exists.
    pub async fn evaluate_claims(
        &self,
        role_name: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: i64,
    ) -> (Trace, Result<(), ExchangeError>) {
        let config = self.config();
        let mut trace = Trace {
            now,
            now_rfc3339: rfc3339(now),
            role: role_name.to_owned(),
            config_version: config.version.clone(),
            ..Default::default()
        };
        let result: Result<(), ExchangeError> = async {
            let role = config.roles.get(role_name).cloned().ok_or_else(|| {
                ExchangeError::UnknownRole(ephemera_providers::error::escape_untrusted(role_name, 64))
            })?;
            trace.provider = Some(role.provider.name.clone());
            trace.profile = Some(role.provider.profile.name());
            let jti = claims.get("jti").and_then(|v| v.as_str());
            let workload =
                role.provider.profile.workload_from_claims(claims, jti, "synthetic").map_err(ExchangeError::Profile)?;
            trace.workload = Some(workload.clone());
            let num = |k: &str, d: i64| claims.get(k).and_then(serde_json::Value::as_i64).unwrap_or(d);
            self.decide_and_bound(
                &config,
                &role,
                &workload,
                claims,
                (now, num("iat", now), num("exp", now + 300)),
                &mut trace,
            )
            .await
        }
        .await;
        (trace, result)
    }

    /// The whole exchange: evaluate now, mark the assertion used, audit durably, mint, answer.
    pub async fn exchange(
        &self,
        req: Result<ExchangeRequest, ExchangeError>,
        request_id: &str,
    ) -> Result<TokenResponse, ErrorResponse> {
        let now = self.clock.now();
        let config = self.config();
        let decision_id = random_id(12);
        let mut rec = AuditRecord {
            time: rfc3339(now),
            ts: now,
            request_id: request_id.to_owned(),
            decision_id: decision_id.clone(),
            policy_version: config.version.clone(),
            ..Default::default()
        };
        let outcome = match req {
            Err(e) => Err(e),
            Ok(req) => {
                tracing::trace!(request_id, role = %ephemera_providers::error::escape_untrusted(&req.role, 64), token_bytes = req.subject_token.len(), "exchange request parsed");
                rec.role = Some(ephemera_providers::error::escape_untrusted(&req.role, 64));
                // Verification (and any issuer fetch it needs) runs under the request timeout, so a
                // slow issuer ends in an answered, audited 503; granting is bounded by its own calls.
                let limit = config.server.request_timeout;
                let (trace, result) = match tokio::time::timeout(limit, self.evaluate_under(&config, &req, now)).await {
                    Ok(r) => r,
                    Err(_) => (Trace::default(), Err(ExchangeError::Timeout(limit.as_secs()))),
                };
                rec.provider = trace.provider.clone();
                if let Some(t) = &trace.token {
                    rec.issuer = Some(t.issuer.clone());
                    rec.subject = Some(t.subject.clone());
                    rec.assertion_expires_at = Some(t.expires_at);
                }
                rec.task = trace.workload.as_ref().map(|w| w.task.clone());
                if rec.subject.is_none() {
                    // attestation: the workload as the evidence names it, and the provider's issuer
                    rec.subject = trace.workload.as_ref().map(|w| w.subject.clone());
                    rec.issuer =
                        trace.evidence.as_ref().and_then(|e| e.get("iss")).and_then(|v| v.as_str()).map(str::to_owned);
                }
                tracing::trace!(
                    request_id,
                    provider = ?trace.provider,
                    checks_passed = trace.checks.iter().filter(|c| c.status == "pass").count(),
                    allow = result.is_ok(),
                    "exchange evaluated"
                );
                match result {
                    Ok(allowed) => self.grant(&config, allowed, &mut rec).await,
                    Err(e) => Err(e),
                }
            }
        };
        match outcome {
            Ok(resp) => Ok(resp),
            Err(e) => {
                let mut r = e.response();
                // A failed mint was audited by `grant` (mint_failed); every other error is a deny.
                if !matches!(e, ExchangeError::Mint(_) | ExchangeError::Upstream { .. }) {
                    rec.decision = "deny";
                    rec.reason = Some(r.reason);
                    rec.detail = Some(e.detail());
                    rec.credential = None;
                    // A deny is recorded but not fsynced: nothing leaves the broker on a deny.
                    if let Some(audit) = self.audit.as_ref().filter(|_| config.safety.audit)
                        && let Err(ae) = audit.append(rec, false).await
                    {
                        tracing::error!(error = %ae, "audit write failed for a deny");
                    }
                }
                let public = match config.server.detail {
                    Detail::Full => r.description.clone(),
                    Detail::Reason => e.reason_only(),
                    Detail::None => r.reason.to_owned(),
                };
                r.description = format!("{public} (decision {decision_id})");
                tracing::debug!(request_id, decision_id, reason = r.reason, "exchange denied");
                Err(r)
            }
        }
    }

    async fn grant(
        &self,
        config: &Config,
        allowed: Allowed,
        rec: &mut AuditRecord,
    ) -> Result<TokenResponse, ExchangeError> {
        let Allowed {
            role,
            workload,
            lifetime,
            now,
            replay_id,
            replay_until,
            issued_at,
            issuer,
            claims,
            cnf,
            nonce,
            replayable,
        } = allowed;
        let exp = now + lifetime;
        // Cloud requests are built (and their tags validated) before the assertion is spent.
        let aws_request = match &role.credential {
            Credential::Aws(aws) => Some(aws_request(aws, &role.name, &workload, &claims, now, lifetime)?),
            _ => None,
        };
        rec.replayable = replayable;
        let jti = random_id(16);
        let grant = crate::state::Grant {
            id: jti.clone(),
            subject: workload.subject.clone(),
            task: workload.task.clone(),
            role: role.name.clone(),
            kind: role.credential.kind().to_owned(),
            issued_at: now,
            expires_at: exp,
        };
        // Without a nonce to take, the grant goes into the inventory with the replay mark (one
        // round trip); with one, only once the nonce has been taken, so no refused exchange
        // leaves a grant behind.
        let grant_with_mark = nonce.is_none() && config.safety.replay;
        let mark = if config.safety.replay {
            self.state.mark_used(&replay_id, replay_until, now, issued_at, grant_with_mark.then_some(&grant)).await
        } else {
            Ok(Mark::Fresh) // a bench-knobs build told to skip single use
        };
        match mark {
            Ok(Mark::Fresh) => {}
            Ok(Mark::AlreadyUsed) => return Err(ExchangeError::Replayed),
            Ok(Mark::EpochReset { since }) => return Err(ExchangeError::ReplayStateReset { since }),
            Err(e) => return Err(ExchangeError::State(e)),
        }
        // After the replay mark, so a replayed document is called what it is (`token_replayed`).
        // A broker nonce is consumed atomically: unknown, expired, already used, or issued for
        // another role, it is refused.
        if let Some(n) = &nonce {
            match self.state.take_nonce(n, now).await {
                Ok(Some(binding)) if binding.is_empty() || binding == role.name => {}
                Ok(Some(_)) => return Err(ExchangeError::NonceInvalid("the nonce was issued for another role")),
                Ok(None) => return Err(ExchangeError::NonceInvalid("the nonce is unknown, expired or already used")),
                Err(e) => return Err(ExchangeError::State(e)),
            }
        }
        rec.decision = "allow";
        rec.credential = Some(CredentialRecord { kind: role.credential.kind(), jti: jti.clone(), expires_at: exp });
        // INVARIANT: the allow record is durable before any credential exists outside the broker.
        let audit = self.audit.as_ref().ok_or_else(|| ExchangeError::Audit("no audit log".into()))?;
        if config.safety.audit {
            audit.append(rec.clone(), true).await.map_err(|e| ExchangeError::Audit(e.to_string()))?;
        }
        // The grant inventory knows every credential before it exists outside the broker.
        if !grant_with_mark {
            self.state.record_grant(&grant, now).await.map_err(ExchangeError::State)?;
        }
        let minted = match &role.credential {
            Credential::Jwt { audience } => self
                .signer
                .sign(&with_cnf(json!({
                    "iss": config.server.issuer,
                    "sub": workload.subject,
                    "aud": audience,
                    "iat": now,
                    "nbf": now,
                    "exp": exp,
                    "jti": jti,
                    "role": role.name,
                    "provider": role.provider.name,
                    "src_iss": issuer,
                    "task": workload.task,
                }), cnf.as_ref()))
                .map(|access_token| TokenResponse {
                    access_token,
                    issued_token_type: TOKEN_TYPE_JWT,
                    token_type: "Bearer",
                    expires_in: lifetime,
                    credentials: None,
                })
                .map_err(|e| ExchangeError::Mint(e.to_string())),
            Credential::Aws(aws) => match (&self.aws, aws_request) {
                (Some(minter), Some(req)) => minter
                    .assume(aws, &req)
                    .await
                    .map(|s| {
                        tracing::debug!(assumed_role = %s.assumed_role_arn, access_key_id = %s.access_key_id, sts_expiration = s.sts_expiration, "aws session minted");
                        TokenResponse {
                            access_token: s.session_token.clone(),
                            issued_token_type: TOKEN_TYPE_AWS_CREDENTIALS,
                            token_type: "N_A",
                            expires_in: lifetime,
                            credentials: Some(CredentialProcess {
                                version: 1,
                                access_key_id: s.access_key_id,
                                secret_access_key: s.secret_access_key,
                                session_token: s.session_token,
                                expiration: rfc3339(exp),
                            }),
                        }
                    })
                    .map_err(|e| ExchangeError::Upstream { service: "aws", retryable: e.is_retryable(), message: e.to_string() }),
                _ => Err(ExchangeError::Mint("AWS minting is not set up in this broker".into())),
            },
            Credential::Gcp(gcp) => match &self.gcp {
                Some(minter) => minter
                    .mint(gcp, lifetime)
                    .await
                    .map(|t| TokenResponse {
                        access_token: t.access_token,
                        issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
                        token_type: "Bearer",
                        expires_in: lifetime,
                        credentials: None,
                    })
                    .map_err(|e| ExchangeError::Upstream { service: "gcp", retryable: e.is_retryable(), message: e.to_string() }),
                None => Err(ExchangeError::Mint("GCP minting is not set up in this broker".into())),
            },
        };
        match minted {
            Ok(resp) => {
                tracing::debug!(request_id = %rec.request_id, decision_id = %rec.decision_id, role = %role.name, jti = %jti, expires_in = lifetime, "credential issued");
                Ok(resp)
            }
            Err(err) => {
                let r = err.response();
                let mut failed = rec.clone();
                failed.decision = "mint_failed";
                failed.reason = Some(r.reason);
                failed.detail = Some(err.detail());
                if let Err(ae) = audit.append(failed, true).await {
                    tracing::error!(error = %ae, "audit write failed for mint_failed");
                }
                Err(err)
            }
        }
    }
}

/// Adds an RFC 7800 `cnf` claim when the evidence bound a key.
fn with_cnf(mut claims: serde_json::Value, cnf: Option<&(&'static str, String)>) -> serde_json::Value {
    if let (Some((member, value)), Some(obj)) = (cnf, claims.as_object_mut()) {
        obj.insert("cnf".into(), json!({ *member: value }));
    }
    claims
}

/// The AssumeRole request for a role, a workload and a bounded lifetime.
pub fn aws_request(
    aws: &crate::minting::aws::AwsRole,
    role: &str,
    workload: &Workload,
    claims: &serde_json::Map<String, serde_json::Value>,
    now: i64,
    lifetime: i64,
) -> Result<crate::minting::aws::AssumeRequest, ExchangeError> {
    use crate::minting::aws::{check_tag, duration_for, session_policy, sts_name};
    let mut tags = Vec::new();
    for (key, claim) in &aws.session_tags {
        let value = workload.attributes.get(claim).cloned().or_else(|| {
            ephemera_providers::profile::lookup(claims, claim).and_then(ephemera_providers::profile::scalar_text)
        });
        // A claim the token lacks leaves its tag out; a value STS would refuse is an error.
        if let Some(v) = value {
            check_tag(key, &v).map_err(|e| ExchangeError::Tag(e.to_string()))?;
            tags.push((key.clone(), v));
        }
    }
    let source_identity = sts_name(&workload.subject, 64);
    Ok(crate::minting::aws::AssumeRequest {
        role_arn: aws.role_arn.clone(),
        session_name: sts_name(&format!("{role}/{}", workload.task), 64),
        source_identity: if source_identity.len() < 2 { format!("{source_identity}--") } else { source_identity },
        duration_seconds: duration_for(lifetime),
        policy: session_policy(aws.statements.as_deref(), &rfc3339(now + lifetime)),
        tags,
        transitive_tag_keys: aws.transitive_tag_keys.clone(),
        external_id: aws.external_id.clone(),
        policy_arns: aws.policy_arns.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Result<ExchangeRequest, ExchangeError> {
        parse_form(s.as_bytes())
    }

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=abc&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token&audience=deploy";

    #[test]
    fn form_rules() {
        assert!(form(BASE).is_ok_and(|r| r.role == "deploy"));
        assert!(matches!(
            form(&format!("{BASE}&subject_token=x")),
            Err(ExchangeError::InvalidRequest(RequestProblem::Duplicate(_)))
        ));
        assert!(matches!(
            form(&BASE.replace("token-exchange", "refresh_token")),
            Err(ExchangeError::UnsupportedGrantType)
        ));
        assert!(matches!(form("grant_type=refresh_token&refresh_token=x"), Err(ExchangeError::UnsupportedGrantType)));
        assert!(matches!(
            form(&format!("{BASE}&actor_token=x")),
            Err(ExchangeError::InvalidRequest(RequestProblem::ActorIncomplete))
        ));
        assert!(matches!(
            form(&format!("{BASE}&resource=other")),
            Err(ExchangeError::InvalidRequest(RequestProblem::ConflictingTarget))
        ));
        let many: String = (0..40).map(|i| format!("&f{i}=1")).collect();
        assert!(matches!(
            form(&format!("{BASE}{many}")),
            Err(ExchangeError::InvalidRequest(RequestProblem::TooManyFields))
        ));
        let no_type = BASE.replace("&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token", "");
        assert!(matches!(
            form(&no_type),
            Err(ExchangeError::InvalidRequest(RequestProblem::Missing("subject_token_type")))
        ));
    }

    #[test]
    fn descriptions_keep_to_the_oauth_charset() {
        let e = ExchangeError::UnknownRole("a\"b\\c\u{e9}".into()).response();
        assert_eq!(e.status, 400);
        assert_eq!(e.error, "invalid_target");
        assert!(e.description.starts_with("unknown_role: "));
        assert!(!e.description.contains('"') && !e.description.contains('\\') && e.description.is_ascii());
        let r = ExchangeError::Token(VerifyError::KeysUnavailable("down".into())).response();
        assert_eq!((r.status, r.error), (503, "temporarily_unavailable"));
    }

    /// README's error table for the failures no e2e test can provoke: a broker JWT that cannot be
    /// signed (aws-lc fails only without system randomness) is 503 `mint_failed`, telling the
    /// caller to present a fresh assertion; a full state store is `replay_store_unavailable`.
    #[test]
    fn unprovokable_failures_answer_as_documented() {
        let r = ExchangeError::Mint("the signature could not be computed".into()).response();
        assert_eq!((r.status, r.error, r.reason), (503, "temporarily_unavailable", "mint_failed"));
        assert_eq!(
            r.description,
            "mint_failed: credential could not be minted; the assertion is spent, present a fresh one"
        );
        let r = ExchangeError::State(StateError::Full(3)).response();
        assert_eq!((r.status, r.error, r.reason), (503, "temporarily_unavailable", "replay_store_unavailable"));
    }

    /// A state store's own error text stays in the broker on every route that answers with
    /// `response()` (the token route, a workload's revocation, explain) and in every disclosure
    /// mode; the audit detail keeps it.
    #[test]
    fn a_store_failure_is_not_described_to_the_caller() {
        let e = ExchangeError::State(StateError::Unavailable("Moved: 5484 127.0.0.1:55627".into()));
        let public = "replay_store_unavailable: the replay store cannot answer now; try again";
        assert_eq!(e.response().description, public);
        assert_eq!(e.reason_only(), public);
        assert_eq!(e.detail(), "replay_store_unavailable: replay store unavailable: Moved: 5484 127.0.0.1:55627");
        // every other error is described to the caller as the audit has it
        let other = ExchangeError::UnknownRole("x".into());
        assert_eq!(other.response().description, other.detail());
    }
}

//! Stages 4–6: the revocations in force for the workload, the role's policy decision taken now,
//! and the credential's lifetime. [`Allowed`] is the only way into the grant, and it carries the
//! lifetime: nothing is read back from the trace.

use super::details::AuthorizationDetails;
use super::error::ExchangeError;
use super::trace::Trace;
use super::workload::{Facts, Subject};
use crate::config::{Config, Role};
use crate::state::{RevocationKey, StateStore};
use ephemera_providers::profile::Workload;
use serde_json::{Map, Value};
use std::sync::Arc;

/// An exchange that passed every check and the policy, at `now`. Only [`decide`] makes one;
/// the grant requires it.
#[derive(Debug)]
pub struct Allowed {
    subject: Subject,
    lifetime: i64,
    now: i64,
    details: Option<AuthorizationDetails>,
}

/// What a grant is made of: everything the decision allowed.
pub(super) struct Parts {
    pub role: Arc<Role>,
    pub workload: Workload,
    pub claims: Map<String, Value>,
    pub facts: Facts,
    pub lifetime: i64,
    pub now: i64,
    pub details: Option<AuthorizationDetails>,
}

impl Allowed {
    /// Seconds the credential will live.
    pub fn lifetime(&self) -> i64 {
        self.lifetime
    }

    /// What single use is keyed by.
    pub fn replay_id(&self) -> &str {
        &self.subject.facts.replay_id
    }

    /// The broker nonce the document carried, to be consumed with the grant.
    pub fn nonce(&self) -> Option<&str> {
        self.subject.facts.nonce.as_deref()
    }

    /// The workload the decision was taken for.
    pub fn workload(&self) -> &Workload {
        &self.subject.workload
    }

    pub(super) fn into_parts(self) -> Parts {
        let Subject { role, workload, claims, facts } = self.subject;
        Parts { role, workload, claims, facts, lifetime: self.lifetime, now: self.now, details: self.details }
    }
}

/// What the request asked for besides the role: a kind of credential (RFC 8693
/// `requested_token_type`) and RFC 9396 authorization details.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Asked<'a> {
    pub token_type: Option<&'a str>,
    pub details: Option<&'a str>,
}

/// The revocation keys in force for this workload: its task, subject, role and issuer.
async fn revocations(
    state: &dyn StateStore,
    role: &Role,
    workload: &Workload,
    iss: &str,
    now: i64,
) -> Result<Vec<String>, ExchangeError> {
    let keys = [
        RevocationKey::Task { provider: role.provider.name.clone(), task: workload.task.clone() },
        RevocationKey::Subject { provider: role.provider.name.clone(), subject: workload.subject.clone() },
        RevocationKey::Role(role.name.clone()),
        RevocationKey::Issuer(iss.to_owned()),
    ]
    .map(|k| k.to_string());
    super::state_op("revoked", state.revoked(&keys, now)).await.map_err(ExchangeError::State)
}

/// Stages 4–6. Writes the decision and the lifetime into `trace`.
pub(super) async fn decide(
    state: &dyn StateStore,
    config: &Config,
    subject: Subject,
    asked: Asked<'_>,
    now: i64,
    trace: &mut Trace,
) -> Result<Allowed, ExchangeError> {
    let role = &subject.role;
    let issues = role.credential.kind().token_type();
    if let Some(requested) = asked.token_type.filter(|t| *t != issues) {
        return Err(ExchangeError::RequestedTypeMismatch {
            role: role.name.clone(),
            requested: requested.to_owned(),
            issues,
        });
    }
    let details = asked.details;
    // what the transaction asks for must be what the role declares, before anything is decided
    let details = super::details::check(role, details).map_err(ExchangeError::AuthorizationDetails)?;
    trace.authorization_details = details.as_ref().map(|d| d.granted().clone());
    let (iat, exp) = (subject.facts.issued_at, subject.facts.not_after);
    let iss = subject.claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
    let revoked = revocations(state, role, &subject.workload, iss, now).await?;
    let sets = details.as_ref().map(AuthorizationDetails::sets);
    let at = crate::policy::At { times: (now, iat, exp), revoked: &revoked, details: sets };
    let decision = config.engine.decide(&role.policy, &subject.workload, &subject.claims, iss, &at);
    trace.decision = Some(decision.clone());
    if !decision.allows() {
        return Err(ExchangeError::Denied { role: role.name.clone(), decision: Box::new(decision) });
    }
    let lifetime = (role.max_ttl.as_secs() as i64).min(exp - now);
    trace.lifetime = Some(lifetime.max(0));
    if lifetime <= 0 {
        return Err(ExchangeError::NoLifetimeLeft { exp, now });
    }
    Ok(Allowed { subject, lifetime, now, details })
}

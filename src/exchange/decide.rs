//! Stages 4–6: the revocations in force for the workload, the role's policy decision taken now,
//! and the credential's lifetime. [`Allowed`] is the only way into the grant, and it carries the
//! lifetime: nothing is read back from the trace.

use super::details::AuthorizationDetails;
use super::error::ExchangeError;
use super::trace::Trace;
use super::workload::{Facts, Subject};
use crate::config::{Config, Role};
use crate::policy::Decision;
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
    /// The revocation keys the spend checks, when they were left to it ([`Revocations::AtSpend`]).
    pending: Option<Vec<String>>,
}

/// When the revocations in force for the workload are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Revocations {
    /// Before the decision (`explain`, a workload ending its own task).
    Now,
    /// By the spend, in the same atomic step as the replay mark (the exchange: one state round
    /// trip). The decision is taken on none in force; any refusal before the spend looks them up
    /// first, and one found (then or by the spend) makes the decision taken again on it, which
    /// denies: the same outcome, reason and record as a lookup before the decision.
    AtSpend,
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
    /// The revocation keys the spend checks ([`Revocations::AtSpend`]).
    pub pending: Option<Vec<String>>,
}

/// What a decision is taken on, borrowed from a subject or from the parts of a grant.
pub(super) struct On<'a> {
    pub role: &'a Role,
    pub workload: &'a Workload,
    pub claims: &'a Map<String, Value>,
    pub facts: &'a Facts,
    pub details: Option<&'a AuthorizationDetails>,
    pub now: i64,
}

impl On<'_> {
    fn iss(&self) -> &str {
        self.claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default()
    }

    /// The revocation keys that end this workload's access: its task, subject, role and issuer.
    fn revocation_keys(&self) -> Vec<String> {
        let provider = &self.role.provider.name;
        [
            RevocationKey::Task { provider: provider.clone(), task: self.workload.task.clone() },
            RevocationKey::Subject { provider: provider.clone(), subject: self.workload.subject.clone() },
            RevocationKey::Role(self.role.name.clone()),
            RevocationKey::Issuer(self.iss().to_owned()),
        ]
        .map(|k| k.to_string())
        .to_vec()
    }

    /// The role's policy decision, taken now, with `revoked` in force.
    fn decision(&self, config: &Config, revoked: &[String]) -> Decision {
        let times = (self.now, self.facts.issued_at, self.facts.not_after);
        let sets = self.details.map(AuthorizationDetails::sets);
        let at = crate::policy::At { times, revoked, details: sets };
        config.engine.decide(&self.role.policy, self.workload, self.claims, self.iss(), &at)
    }

    /// The deny of the decision taken again with `revoked` in force.
    pub(super) fn denied(&self, config: &Config, revoked: &[String], trace: Option<&mut Trace>) -> ExchangeError {
        let decision = self.decision(config, revoked);
        if let Some(t) = trace {
            t.decision = Some(decision.clone());
        }
        ExchangeError::Denied { role: self.role.name.clone(), decision: Box::new(decision) }
    }

    /// A refusal before the spend of an exchange whose revocations were left to it (`pending`):
    /// a revocation in force is the reason, as a lookup before the decision would have found.
    pub(super) async fn refusal(
        &self,
        state: &dyn StateStore,
        config: &Config,
        pending: Option<&[String]>,
        err: ExchangeError,
        trace: Option<&mut Trace>,
    ) -> ExchangeError {
        let Some(keys) = pending else { return err };
        match revoked(state, keys, self.now).await {
            Ok(found) if found.is_empty() => err,
            Ok(found) => self.denied(config, &found, trace),
            Err(e) => e,
        }
    }
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
        Parts {
            role,
            workload,
            claims,
            facts,
            lifetime: self.lifetime,
            now: self.now,
            details: self.details,
            pending: self.pending,
        }
    }
}

/// What the request asked for besides the role: a kind of credential (RFC 8693
/// `requested_token_type`) and RFC 9396 authorization details.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Asked<'a> {
    pub token_type: Option<&'a str>,
    pub details: Option<&'a str>,
}

/// Which of `keys` are revoked now.
pub(super) async fn revoked(state: &dyn StateStore, keys: &[String], now: i64) -> Result<Vec<String>, ExchangeError> {
    super::state_op("revoked", state.revoked(keys, now)).await.map_err(ExchangeError::State)
}

/// Stages 4–6. Writes the decision and the lifetime into `trace`.
pub(super) async fn decide(
    state: &dyn StateStore,
    config: &Config,
    subject: Subject,
    asked: Asked<'_>,
    (now, revocations): (i64, Revocations),
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
    let on = On {
        role,
        workload: &subject.workload,
        claims: &subject.claims,
        facts: &subject.facts,
        details: details.as_ref(),
        now,
    };
    let keys = on.revocation_keys();
    let (in_force, pending) = match revocations {
        Revocations::Now => (revoked(state, &keys, now).await?, None),
        Revocations::AtSpend => (vec![], Some(keys)),
    };
    let decision = on.decision(config, &in_force);
    trace.decision = Some(decision.clone());
    if !decision.allows() {
        let denied = ExchangeError::Denied { role: role.name.clone(), decision: Box::new(decision) };
        return Err(on.refusal(state, config, pending.as_deref(), denied, Some(trace)).await);
    }
    let exp = subject.facts.not_after;
    let lifetime = (role.max_ttl.as_secs() as i64).min(exp - now);
    if lifetime <= 0 {
        let none_left = ExchangeError::NoLifetimeLeft { exp, now };
        let err = on.refusal(state, config, pending.as_deref(), none_left, Some(trace)).await;
        if matches!(err, ExchangeError::NoLifetimeLeft { .. }) {
            trace.lifetime = Some(0);
        }
        return Err(err);
    }
    trace.lifetime = Some(lifetime);
    Ok(Allowed { subject, lifetime, now, details, pending })
}

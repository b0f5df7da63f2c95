//! Stages 7–8: spend the assertion, make the allow record durable, record the grant, mint.
//!
//! The order is the broker's promise: the credential's request is planned (and checked) before
//! the assertion is spent; the assertion is spent (and a broker nonce taken) before anything is
//! recorded; the allow record is durable before any credential exists outside the broker; the
//! inventory knows the grant before the credential leaves.

use super::Broker;
use super::decide::{Allowed, On};
use super::details::AuthorizationDetails;
use super::error::ExchangeError;
use crate::audit::{AuditRecord, CredentialRecord, Outcome, ReplayRecord};
use crate::config::Config;
use crate::ids::random_id;
use crate::minting::{GrantFacts, TokenResponse};
use crate::state::{Grant, Mark, Spend};

impl Broker {
    /// Grants what `allowed` allows, recording it in `rec`.
    pub(super) async fn grant(
        &self,
        config: &Config,
        allowed: Allowed,
        rec: &mut AuditRecord,
    ) -> Result<TokenResponse, ExchangeError> {
        let super::decide::Parts { role, workload, claims, facts, lifetime, now, details, pending } =
            allowed.into_parts();
        let on =
            On { role: &role, workload: &workload, claims: &claims, facts: &facts, details: details.as_ref(), now };
        let state = self.evaluator.state.as_ref();
        // a refusal before the spend: a revocation in force is the reason when there is one
        let refuse = |e: ExchangeError| on.refusal(state, config, pending.as_deref(), e, None);
        let exp = now + lifetime;
        // Without randomness no grant id is made, and the assertion is not spent.
        let jti = match random_id(16) {
            Ok(jti) => jti,
            Err(e) => return Err(refuse(ExchangeError::Randomness(e)).await),
        };
        // Cloud requests are built (and their tags validated) before the assertion is spent.
        let plan = match self.minters.plan(
            &role.credential,
            &GrantFacts {
                issuer: &config.server.issuer,
                role: &role.name,
                provider: &role.provider.name,
                source_issuer: &facts.issuer,
                workload: &workload,
                claims: &claims,
                cnf: facts.cnf.as_ref(),
                jti: &jti,
                now,
                lifetime,
                max_uses: role.max_uses,
                details: details.as_ref().map(AuthorizationDetails::granted),
            },
        ) {
            Ok(plan) => plan,
            Err(e) => return Err(refuse(e.into()).await),
        };
        let kind = role.credential.kind();
        let grant = Grant {
            id: jti.clone(),
            subject: workload.subject.clone(),
            task: workload.task.clone(),
            role: role.name.clone(),
            kind: kind.as_str().to_owned(),
            issued_at: now,
            expires_at: exp,
            issuer: facts.issuer.clone(),
            provider: role.provider.name.clone(),
            audience: match &role.credential {
                crate::minting::CredentialSpec::Jwt { audience } => Some(audience.clone()),
                _ => None,
            },
            session: plan.ending_session().map(str::to_owned),
        };
        // Without a nonce to take, the grant goes into the inventory with the replay mark (one
        // round trip); with one, only once the nonce has been taken, so no refused exchange
        // leaves a grant behind.
        let grant_with_mark = facts.nonce.is_none() && config.safety.replay;
        // The revocations in force and the replay mark (and the grant) in one atomic step: a
        // revoked workload is denied, and its assertion is not spent.
        let spent = if config.safety.replay {
            let with = grant_with_mark.then_some(&grant);
            self.spend(pending.as_deref(), &facts.replay_id, facts.replay_until, (now, facts.used_since), with).await
        } else {
            // (a bench-knobs build told to skip single use does not spend; it still looks)
            match &pending {
                Some(keys) => super::decide::revoked(state, keys, now).await.map(Spent::or_revoked),
                None => Ok(Spent::Now),
            }
        };
        if let Ok(Spent::Revoked(keys)) = &spent {
            return Err(on.denied(config, keys, None));
        }
        rec.replayable = facts.replayable;
        spent?;
        // After the replay mark, so a replayed document is called what it is (`token_replayed`).
        // A broker nonce is consumed atomically: unknown, expired, already used, or issued for
        // another role, it is refused.
        if let Some(n) = &facts.nonce {
            match super::state_op("take_nonce", self.evaluator.state.take_nonce(n, now)).await {
                Ok(Some(binding)) if binding.is_empty() || binding == role.name => {}
                Ok(Some(_)) => return Err(ExchangeError::NonceInvalid("the nonce was issued for another role")),
                Ok(None) => return Err(ExchangeError::NonceInvalid("the nonce is unknown, expired or already used")),
                Err(e) => return Err(ExchangeError::State(e)),
            }
        }
        rec.decision = Outcome::Allow;
        rec.authorization_details = details.as_ref().map(|d| d.granted().clone());
        rec.credential = Some(CredentialRecord {
            kind: kind.as_str(),
            jti: jti.clone(),
            expires_at: exp,
            audience: grant.audience.clone(),
            session: grant.session.clone(),
        });
        // the mark made with the grant: the file state store rebuilds it from this record after a
        // crash (the record is its write-ahead log)
        if grant_with_mark {
            rec.replay = Some(ReplayRecord { id: facts.replay_id.clone(), until: facts.replay_until });
        }
        // INVARIANT: the allow record is durable before any credential exists outside the broker.
        if config.safety.audit {
            self.audit.append(rec.clone(), true).await.map_err(ExchangeError::Audit)?;
        }
        // The grant inventory knows every credential before it exists outside the broker.
        if !grant_with_mark {
            super::state_op("record_grant", self.evaluator.state.record_grant(&grant, now))
                .await
                .map_err(ExchangeError::State)?;
        }
        match self.minters.mint(plan).await {
            Ok(mut resp) => {
                // RFC 9396 §7: the details granted, in the token response
                resp.authorization_details = details.map(|d| d.granted().clone());
                tracing::debug!(request_id = %rec.request_id, decision_id = %rec.decision_id, role = %role.name, jti = %jti, expires_in = lifetime, "credential issued");
                Ok(resp)
            }
            Err(e) => {
                let err = ExchangeError::from(e);
                let mut failed = rec.clone();
                failed.decision = Outcome::MintFailed;
                failed.reason = Some(err.refusal().reason);
                failed.detail = Some(err.detail());
                if let Err(ae) = self.audit.append(failed, true).await {
                    tracing::error!(error = %ae, "audit write failed for mint_failed");
                }
                Err(err)
            }
        }
    }

    /// Spends an assertion: marks it used, atomically, unless it already was or was issued
    /// before the store's memory began, or (with `revocations`, in the same atomic step) one of
    /// those keys is revoked. The one place a replay mark is read.
    pub(super) async fn spend(
        &self,
        revocations: Option<&[String]>,
        replay_id: &str,
        until: i64,
        (now, used_since): (i64, i64),
        grant: Option<&Grant>,
    ) -> Result<Spent, ExchangeError> {
        let state = &self.evaluator.state;
        let marked = match revocations {
            Some(keys) => super::state_op("spend", state.spend(keys, replay_id, until, now, used_since, grant)).await,
            None => super::state_op("mark", state.mark_used(replay_id, until, now, used_since, grant))
                .await
                .map(Spend::Marked),
        };
        match marked {
            Ok(Spend::Revoked(keys)) => Ok(Spent::Revoked(keys)),
            Ok(Spend::Marked(Mark::Fresh)) => Ok(Spent::Now),
            Ok(Spend::Marked(Mark::AlreadyUsed)) => Err(ExchangeError::Replayed),
            Ok(Spend::Marked(Mark::EpochReset { since })) => Err(ExchangeError::ReplayStateReset { since }),
            Err(e) => Err(ExchangeError::State(e)),
        }
    }
}

/// What spending an assertion did, when nothing failed.
#[derive(Debug)]
pub(super) enum Spent {
    /// It is spent.
    Now,
    /// These revocations are in force: it is not.
    Revoked(Vec<String>),
}

impl Spent {
    /// Spent, unless a revocation was found.
    fn or_revoked(found: Vec<String>) -> Spent {
        if found.is_empty() { Spent::Now } else { Spent::Revoked(found) }
    }
}

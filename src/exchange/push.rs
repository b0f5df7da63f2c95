//! What follows a revocation once it is stored: the holders' side is told.
//!
//! - Broker JWTs: every receiver configured for the grant's audience (`[[events.receivers]]`) is
//!   pushed a CAEP `session-revoked` SET (RFC 8417, signed with the broker key, `typ`
//!   `secevent+jwt`) by RFC 8935 push delivery.
//! - AWS sessions of a role that says `end_sessions_on_revoke`: an inline deny on the role for
//!   the task's sessions (`minting/aws/end.rs`), removed once the last of them has expired.
//!
//! Both go through one durable outbox in the state store (it survives a restart with the file
//! and Redis backends): a revocation queues, and [`Broker::deliver_outbox`] delivers what is
//! due, at least once, with backoff (1 s doubling to 60 s) until the grant would have expired
//! anyway. Every delivery, refusal and surrender is audited.

use super::Broker;
use crate::clock::rfc3339;
use crate::config::Config;
use crate::ids::random_id;
use crate::minting::CredentialSpec;
use crate::minting::aws::end::{deny_document, deny_policy_name};
use crate::notify::{Pushed, push_set};
use crate::state::{Grant, Outgoing};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The CAEP event a revocation is told as.
pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// How long a leased item is held by the broker delivering it.
const LEASE_SECS: i64 = 30;
/// The longest wait between two tries.
const MAX_BACKOFF_SECS: i64 = 60;
/// Most items delivered in one round.
const BATCH: usize = 64;
/// How long an IAM deny removal keeps being retried past the sessions' end.
const UNDENY_GRACE_SECS: i64 = 7 * 24 * 3600;

/// One outbox item's work.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Job {
    /// Push a SET of these claims to the receiver of `audience` at `endpoint` (signed when it is
    /// pushed, with the key the broker publishes then: a broker restarted with a new key still
    /// sends SETs its JWKS verifies).
    Set { audience: String, endpoint: String, claims: serde_json::Value, set_jti: String, grant: String },
    /// Put the deny on the role, then queue its removal at `remove_at`.
    Deny { role_arn: String, policy: String, document: String, remove_at: i64, task: String },
    /// Remove the deny.
    Undeny { role_arn: String, policy: String, task: String },
}

/// The two parts of an ending session's name: `eph-TASKHASH-GRANTHASH`.
fn session_parts(session: &str) -> Option<(&str, &str)> {
    session.strip_prefix("eph-")?.split_once('-')
}

impl Broker {
    /// The live grants of the inventory that revocation `key` ends (read once per revocation:
    /// what it matched, and whom to tell).
    pub(super) async fn ended_by(&self, key: &str, now: i64) -> Vec<Grant> {
        match self.evaluator.state.grants(now).await {
            Ok(grants) => {
                grants.into_iter().filter(|g| g.revocation_keys().iter().any(|k| k.to_string() == key)).collect()
            }
            Err(e) => {
                tracing::error!(error = %e, key, "the inventory could not be read: no SET or IAM deny is queued for this revocation");
                Vec::new()
            }
        }
    }

    /// What follows a revocation stored under `key` (decision `decision_id`, for `reason`): the
    /// live grants it ends (`ended`, from [`Broker::ended_by`]) have their holders' side told,
    /// through the outbox. Never fails the revocation: what cannot be queued is logged.
    pub(super) async fn revoked_now(&self, key: &str, ended: &[Grant], decision_id: &str, reason: &str, now: i64) {
        let config = self.config();
        let mut jobs: Vec<(Job, i64)> = Vec::new();
        for g in ended {
            jobs.extend(self.sets_for(&config, g, decision_id, reason, now));
        }
        let by_grant = key.starts_with("jti:");
        for g in ended.iter().filter(|g| g.kind == "aws") {
            let (Some(session), Some(role)) = (g.session.as_deref(), config.roles.get(&g.role)) else { continue };
            let (CredentialSpec::Aws(aws), Some((task_hash, grant_hash))) = (&role.credential, session_parts(session))
            else {
                continue;
            };
            if !aws.end_sessions_on_revoke {
                continue;
            }
            let grant_hash = by_grant.then_some(grant_hash);
            let policy = deny_policy_name(task_hash, grant_hash);
            // the task's sessions all end by the latest of its grants
            let remove_at = ended
                .iter()
                .filter(|o| {
                    o.role == g.role && o.session.as_deref().and_then(session_parts).map(|p| p.0) == Some(task_hash)
                })
                .map(|o| o.expires_at)
                .max()
                .unwrap_or(g.expires_at);
            if jobs.iter().any(|(j, _)| matches!(j, Job::Deny { policy: p, role_arn, .. } if *p == policy && *role_arn == aws.role_arn)) {
                continue;
            }
            let document = deny_document(task_hash, grant_hash, &rfc3339(now));
            jobs.push((
                Job::Deny { role_arn: aws.role_arn.clone(), policy, document, remove_at, task: g.task.clone() },
                remove_at,
            ));
        }
        let mut queued = 0;
        for (job, until) in jobs {
            let Ok(id) = random_id(16) else { continue };
            let item = Outgoing { id, due: now, until, attempts: 0, body: json!(job) };
            match self.evaluator.state.outbox_put(&item, now).await {
                Ok(()) => queued += 1,
                Err(e) => tracing::error!(error = %e, key, "an outbox item could not be stored"),
            }
        }
        if queued > 0 {
            tracing::info!(key, grants = ended.len(), queued, "revocation queued for delivery");
            self.outbox_kick.notify_one();
        }
    }

    /// One signed SET per receiver of the grant's audience.
    fn sets_for(&self, config: &Config, g: &Grant, decision_id: &str, reason: &str, now: i64) -> Vec<(Job, i64)> {
        let Some(audience) = g.audience.as_deref() else { return vec![] };
        let mut out = Vec::new();
        for r in config.receivers.iter().filter(|r| r.audience == audience) {
            let Ok(set_jti) = random_id(16) else { continue };
            let claims = json!({
                "iss": config.server.issuer,
                "aud": r.audience,
                "iat": now,
                "jti": set_jti,
                "txn": decision_id,
                "sub_id": {"format": "opaque", "id": g.id},
                "events": {SESSION_REVOKED: {"event_timestamp": now, "reason_admin": {"en": reason}}},
                "ephemera": {"task": g.task, "role": g.role, "provider": g.provider},
            });
            out.push((
                Job::Set {
                    audience: r.audience.clone(),
                    endpoint: r.endpoint.to_string(),
                    claims,
                    set_jti,
                    grant: g.id.clone(),
                },
                // told until the token would have ended anyway (at least a minute)
                g.expires_at.max(now + 60),
            ));
        }
        out
    }

    /// Delivers the outbox, forever: every second, and at once when a revocation queued
    /// something.
    pub async fn run_outbox(&self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = self.outbox_kick.notified() => {}
            }
            self.deliver_outbox().await;
        }
    }

    /// Delivers the outbox items due now (the server calls it every second and after each
    /// revocation). Each is delivered at least once: leased, tried, then removed or put back
    /// with its next try.
    pub async fn deliver_outbox(&self) {
        let now = self.evaluator.now();
        let items = match self.evaluator.state.outbox_lease(now, LEASE_SECS, BATCH).await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(error = %e, "the outbox cannot be read now");
                return;
            }
        };
        for item in items {
            self.deliver(item, now).await;
        }
    }

    async fn deliver(&self, mut item: Outgoing, now: i64) {
        let Ok(job) = serde_json::from_value::<Job>(item.body.clone()) else {
            tracing::error!(id = %item.id, "an outbox item this broker cannot read was dropped");
            let _ = self.evaluator.state.outbox_done(&item.id, now).await;
            return;
        };
        if item.until < now {
            let kind = if matches!(job, Job::Set { .. }) { "set" } else { "iam" };
            metrics::counter!("ephemera_outbox_deliveries_total", "kind" => kind, "result" => "given_up").increment(1);
            self.audit_delivery(format!("gave up after {} tries: {}", item.attempts, describe(&job)), &job, now).await;
            let _ = self.evaluator.state.outbox_done(&item.id, now).await;
            return;
        }
        let outcome: Result<String, (bool, String)> = match &job {
            Job::Set { audience, endpoint, claims, .. } => {
                let config = self.config();
                let set = self.minters.signer().sign_set(claims);
                match (
                    config.receivers.iter().find(|r| &r.audience == audience && r.endpoint.as_str() == endpoint),
                    set,
                ) {
                    (None, _) => Err((false, "the receiver is no longer configured".into())),
                    (_, Err(e)) => Err((true, e.to_string())),
                    (Some(r), Ok(set)) => {
                        match push_set(&self.push_client, &r.endpoint, r.token.as_ref(), &set).await {
                            Pushed::Delivered => Ok(format!("delivered: {}", describe(&job))),
                            Pushed::Refused(code) => Err((false, format!("refused by the receiver (`{code}`)"))),
                            Pushed::Failed(why) => Err((true, why)),
                        }
                    }
                }
            }
            Job::Deny { role_arn, policy, document, remove_at, task } => match self.minters.aws() {
                None => Err((false, "this broker has no AWS client".into())),
                Some(aws) => match aws.put_deny(role_arn, policy, document).await {
                    Ok(()) => {
                        let undo =
                            Job::Undeny { role_arn: role_arn.clone(), policy: policy.clone(), task: task.clone() };
                        let next = Outgoing {
                            id: format!("{}-undo", item.id),
                            due: *remove_at + 1,
                            until: remove_at + UNDENY_GRACE_SECS,
                            attempts: 0,
                            body: json!(undo),
                        };
                        if let Err(e) = self.evaluator.state.outbox_put(&next, now).await {
                            tracing::error!(error = %e, policy = %policy, "the deny's removal could not be queued: remove it by hand once the sessions have expired");
                        }
                        Ok(format!("done: {}", describe(&job)))
                    }
                    Err(e) => Err((true, e.to_string())),
                },
            },
            Job::Undeny { role_arn, policy, .. } => match self.minters.aws() {
                None => Err((false, "this broker has no AWS client".into())),
                Some(aws) => match aws.remove_deny(role_arn, policy).await {
                    Ok(()) => Ok(format!("done: {}", describe(&job))),
                    Err(e) => Err((true, e.to_string())),
                },
            },
        };
        let kind = if matches!(job, Job::Set { .. }) { "set" } else { "iam" };
        let result = match &outcome {
            Ok(_) => "delivered",
            Err((false, _)) => "refused",
            Err((true, _)) => "retried",
        };
        metrics::counter!("ephemera_outbox_deliveries_total", "kind" => kind, "result" => result).increment(1);
        match outcome {
            Ok(what) => {
                self.audit_delivery(what, &job, now).await;
                let _ = self.evaluator.state.outbox_done(&item.id, now).await;
            }
            Err((false, why)) => {
                self.audit_delivery(format!("not delivered ({why}): {}", describe(&job)), &job, now).await;
                let _ = self.evaluator.state.outbox_done(&item.id, now).await;
            }
            Err((true, why)) => {
                tracing::warn!(id = %item.id, attempts = item.attempts + 1, error = %why, "delivery failed; retried later");
                // the first failure of each item is on the record, and every IAM failure (a flood
                // of records for a receiver that is down for hours would not be)
                if item.attempts == 0 || !matches!(job, Job::Set { .. }) {
                    self.audit_delivery(format!("failed ({why}), retried: {}", describe(&job)), &job, now).await;
                }
                item.attempts += 1;
                item.due = now + (1i64 << item.attempts.min(6)).min(MAX_BACKOFF_SECS);
                if let Err(e) = self.evaluator.state.outbox_put(&item, now).await {
                    tracing::error!(error = %e, "a retry could not be stored");
                }
            }
        }
    }

    async fn audit_delivery(&self, detail: String, job: &Job, now: i64) {
        let (task, id) = match job {
            Job::Set { set_jti, .. } => (None, Some(set_jti.clone())),
            Job::Deny { task, .. } | Job::Undeny { task, .. } => (Some(task.clone()), None),
        };
        self.audit_event(detail, task, id, now).await;
    }
}

/// What a job is, for the audit record and the log (never the SET itself).
fn describe(job: &Job) -> String {
    match job {
        Job::Set { audience, set_jti, grant, .. } => {
            format!("session-revoked SET `{set_jti}` for grant `{grant}` pushed to the receiver of `{audience}`")
        }
        Job::Deny { role_arn, policy, .. } => format!("iam:PutRolePolicy `{policy}` on `{role_arn}` (sessions denied)"),
        Job::Undeny { role_arn, policy, .. } => {
            format!("iam:DeleteRolePolicy `{policy}` on `{role_arn}` (the sessions have expired)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_split_into_task_and_grant() {
        assert_eq!(session_parts("eph-0123456789abcdef-89abcdef"), Some(("0123456789abcdef", "89abcdef")));
        assert_eq!(session_parts("deploy-1-2-3"), None);
    }
}

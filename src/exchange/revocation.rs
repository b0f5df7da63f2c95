//! Ending tasks and knowing who holds what: revoke, introspect (RFC 7662) and the grant
//! inventory. The server's admin routes (`server/admin.rs`) authenticate and call these.
//!
//! - Revoke: an admin revokes by `task`, `jti`, `subject`, `role` or `issuer`; a workload ends
//!   its *own* task by presenting a fresh assertion of that task (`subject_token`,
//!   `subject_token_type`, `audience` = a role it may use) with `task`. A revocation lasts 12 h
//!   (the longest any credential lives) and is Cedar input on every exchange of every replica
//!   from then on.
//! - Introspect: a broker JWT is `active` only while its signature and `exp` hold and neither its
//!   grant, task, subject, role nor source issuer is revoked.
//! - Grants: the credentials handed out and not yet expired.
//!
//! AWS sessions and GCP tokens cannot be recalled from the cloud: after a revocation they keep
//! only what their deadline policy (AWS) or lifetime (GCP) allows; broker JWTs answer `active:
//! false` at once to partners that introspect.

use super::Broker;
use super::error::{Class, ExchangeError, Refusal};
use super::request::{GRANT_TOKEN_EXCHANGE, RequestProblem, parse_form};
use crate::audit::{AuditRecord, Outcome};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::ids::random_id;
use crate::state::{Grant, RevocationKey, Uses};
use ephemera_providers::error::escape_untrusted;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// What the broker's own keys sign with (the JWK's `alg` pins each key to one of them).
const BROKER_ALGORITHMS: [ephemera_providers::Algorithm; 2] =
    [ephemera_providers::Algorithm::ES256, ephemera_providers::Algorithm::RS256];

/// How long a revocation is remembered: the longest any credential can live.
pub const REVOCATION_TTL: i64 = 12 * 3600;

/// Who asks for a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeBy {
    /// An authenticated admin: any one key.
    Admin,
    /// A workload ending its own task, with a fresh assertion of it.
    Assertion,
}

/// A revocation stored, and how many live grants it ends.
#[derive(Debug, Serialize)]
pub struct Revoked {
    pub revoked: String,
    pub until: i64,
    pub matched: usize,
}

/// A revocation in force.
#[derive(Debug, Serialize)]
pub struct RevocationEntry {
    pub key: String,
    pub until: i64,
}

/// A grant of the inventory, and whether a revocation ends it.
#[derive(Debug, Serialize)]
pub struct GrantEntry {
    #[serde(flatten)]
    pub grant: Grant,
    pub revoked: bool,
}

/// The state reset an admin confirmed: its epoch.
#[derive(Debug, Serialize)]
pub struct ConfirmedReset {
    pub confirmed: i64,
}

/// Cached issuer keys forgotten: the provider, and whether it had keys cached.
#[derive(Debug, Serialize)]
pub struct FlushedKeys {
    pub flushed: String,
    pub cached: bool,
}

/// An RFC 7662 answer.
#[derive(Debug)]
pub enum Introspection {
    Inactive,
    /// The token's claims, as `active: true` members.
    Active(Value),
}

pub(super) fn unavailable(detail: &str) -> Refusal {
    Refusal::new(Class::Unavailable, "temporarily_unavailable", "replay_store_unavailable", detail)
}

/// A revocation lookup that failed: revocations lost with the shared state say so
/// (`revocations_unverified`, as an exchange would); any other failure is `otherwise`.
fn lookup_failed(e: crate::state::StateError, otherwise: impl FnOnce() -> Refusal) -> Refusal {
    match e {
        crate::state::StateError::RevocationsLost(_) => ExchangeError::State(e).refusal(),
        _ => otherwise(),
    }
}

fn nothing_matched(detail: &str) -> Refusal {
    Refusal::new(Class::NotFound, "invalid_request", "nothing_matched", detail)
}

fn invalid(detail: &str) -> Refusal {
    Refusal::new(Class::Rejected, "invalid_request", "request_invalid", detail)
}

impl Broker {
    /// Revokes what the form names, from now for [`REVOCATION_TTL`]. A workload's refused
    /// revocation is audited and described like a refused exchange.
    pub async fn revoke(&self, by: RevokeBy, form: &HashMap<String, String>) -> Result<Revoked, Refusal> {
        let now = self.evaluator.now();
        // a workload's refusal after its assertion was spent is audited under its decision id
        let mut spent: Option<(Arc<Config>, AuditRecord)> = None;
        let key = match by {
            RevokeBy::Admin => {
                let kinds = ["task", "jti", "subject", "role", "issuer"];
                let given: Vec<(&str, &String)> = kinds.iter().filter_map(|k| form.get(*k).map(|v| (*k, v))).collect();
                match given.as_slice() {
                    [(kind @ ("task" | "subject"), value)] if !value.is_empty() => {
                        let provider = self.namespace(form)?;
                        format!("{kind}:{provider}:{value}")
                    }
                    [(kind, value)] if !value.is_empty() => format!("{kind}:{value}"),
                    _ => return Err(invalid("give exactly one of task, jti, subject, role, issuer")),
                }
            }
            RevokeBy::Assertion => {
                let config = self.config();
                let (mut rec, ids) = self.draft(&config, &random_id(12).unwrap_or_default(), now);
                // bounded like an exchange: an issuer slow to answer does not hold the request
                let limit = config.server.request_timeout;
                let task = match ids.map_err(ExchangeError::Randomness) {
                    Ok(()) => match tokio::time::timeout(limit, self.own_task(form, now, &mut rec)).await {
                        Ok(t) => t,
                        Err(_) => Err(ExchangeError::Timeout(limit.as_secs())),
                    },
                    Err(e) => Err(e),
                };
                match task {
                    Ok((provider, task)) => {
                        let key = RevocationKey::Task { provider, task }.to_string();
                        spent = Some((config, rec));
                        key
                    }
                    Err(e) => return Err(self.refuse_error(&config, rec, e).await),
                }
            }
        };
        // How many live grants it ends; an admin's revocation that ends none (a mistyped task) is
        // refused when the caller asked for a match (`require_match`, the CLI's default).
        let ended = self.ended_by(&key, now).await;
        let matched = ended.len();
        if by == RevokeBy::Admin && matched == 0 && form.get("require_match").is_some_and(|v| v == "true" || v == "1") {
            return Err(nothing_matched(&format!(
                "no live grant is ended by `{}`: nothing was recorded (revoke without require_match, or --force, to record it anyway)",
                escape_untrusted(&key, 128)
            )));
        }
        match self.evaluator.state.revoke(&key, now + REVOCATION_TTL, now).await {
            Ok(()) => {
                tracing::info!(key = %key, "revoked");
                let source = match by {
                    RevokeBy::Admin => "admin",
                    RevokeBy::Assertion => "workload",
                };
                metrics::counter!("ephemera_revocations_total", "source" => source).increment(1);
                let task = key.strip_prefix("task:").and_then(|t| t.split_once(':')).map(|(_, t)| t.to_owned());
                let decision_id = self.audit_revocation(format!("revoked `{key}`"), task, now).await;
                let reason = match by {
                    RevokeBy::Admin => "revoked by an admin",
                    RevokeBy::Assertion => "task ended by the workload",
                };
                self.revoked_now(&key, &ended, &decision_id, reason, now).await;
                Ok(Revoked { revoked: key, until: now + REVOCATION_TTL, matched })
            }
            Err(e) => match spent {
                // the workload's assertion is spent: its refusal is on the record (review S5)
                Some((config, rec)) => Err(self.refuse_error(&config, rec, ExchangeError::State(e)).await),
                None => Err(unavailable("the revocation could not be stored")),
            },
        }
    }

    /// The task a workload may end: its assertion must verify, pass its role's policy now, and
    /// belong to the task it names. It is spent like any other (the exchange's own `spend`).
    async fn own_task(
        &self,
        form: &HashMap<String, String>,
        now: i64,
        rec: &mut AuditRecord,
    ) -> Result<(String, String), ExchangeError> {
        let task = form.get("task").cloned().ok_or(ExchangeError::InvalidRequest(RequestProblem::TaskRequired))?;
        let mut exchange_form: Vec<(&str, &str)> =
            form.iter().filter(|(k, _)| k.as_str() != "task").map(|(k, v)| (k.as_str(), v.as_str())).collect();
        exchange_form.push(("grant_type", GRANT_TOKEN_EXCHANGE));
        let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(exchange_form).finish();
        let req = parse_form(encoded.as_bytes())?;
        rec.role = Some(escape_untrusted(&req.role, 64));
        let (trace, result) = self.evaluator.evaluate(&req, now).await;
        trace.audit_facts(rec);
        let allowed = result?;
        if allowed.workload().task != task {
            return Err(ExchangeError::TaskMismatch);
        }
        let parts = allowed.into_parts();
        let facts = &parts.facts;
        // (its revocations were looked up before the decision: the spend checks none)
        self.spend(None, &facts.replay_id, facts.replay_until, (now, facts.used_since), None).await?;
        Ok((parts.role.provider.name.clone(), task))
    }

    /// The provider whose namespace an admin's `task` or `subject` revocation is in: the form's
    /// `provider`, which must be configured, or the only provider there is.
    fn namespace(&self, form: &HashMap<String, String>) -> Result<String, Refusal> {
        let config = self.config();
        match (form.get("provider"), config.providers.as_slice()) {
            (Some(name), providers) if providers.iter().any(|p| &p.name == name) => Ok(name.clone()),
            (Some(name), _) => Err(invalid(&format!("no provider `{}`", escape_untrusted(name, 64)))),
            (None, [only]) => Ok(only.name.clone()),
            (None, _) => Err(invalid("name the provider whose task or subject this is (`provider`)")),
        }
    }

    /// Audits a revocation (or what follows one); returns the record's decision id.
    async fn audit_revocation(&self, detail: String, task: Option<String>, now: i64) -> String {
        self.audit_event(detail, task, None, now).await
    }

    /// A `revoke` record: a revocation, a delivery of one, a confirmation; returns its decision id.
    pub(super) async fn audit_event(
        &self,
        detail: String,
        task: Option<String>,
        delivery_id: Option<String>,
        now: i64,
    ) -> String {
        let rec = AuditRecord {
            time: rfc3339(now),
            ts: now,
            // (the revocation is stored already: without randomness its record has no ids)
            request_id: random_id(12).unwrap_or_default(),
            decision_id: random_id(12).unwrap_or_default(),
            policy_version: self.config().version.clone(),
            decision: Outcome::Revoke,
            reason: None,
            detail: Some(detail),
            task,
            delivery_id,
            ..Default::default()
        };
        let decision_id = rec.decision_id.clone();
        if let Err(e) = self.audit.append(rec, true).await {
            tracing::error!(error = %e, "audit write failed for a revocation");
        }
        decision_id
    }

    /// Forgets the cached keys of the provider the form names (`provider=NAME`), so its next
    /// token fetches them afresh, whatever the cooldown (incident response: a key known to be
    /// compromised is gone from the issuer's JWKS but still cached). Audited like a revocation.
    pub async fn flush_keys(&self, form: &HashMap<String, String>) -> Result<FlushedKeys, Refusal> {
        let name = form.get("provider").ok_or_else(|| invalid("`provider` is required"))?;
        let config = self.config();
        let provider = config
            .providers
            .iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| invalid(&format!("no provider `{}`", escape_untrusted(name, 64))))?;
        let cached = match &provider.kind {
            crate::config::ProviderKind::Oidc { source } => self.evaluator.keys.flush(source).await,
            crate::config::ProviderKind::Attestation { .. } => false,
        };
        let now = self.evaluator.now();
        tracing::warn!(provider = %provider.name, cached, "issuer keys flushed");
        self.audit_revocation(format!("flushed the cached keys of provider `{}`", provider.name), None, now).await;
        Ok(FlushedKeys { flushed: provider.name.clone(), cached })
    }

    /// An admin confirms that the revocations lost with the shared state (a Redis that lost its
    /// data) have been re-asserted: every broker answers revocations, and so exchanges, again.
    /// Audited.
    pub async fn confirm_state_reset(&self) -> Result<ConfirmedReset, Refusal> {
        let now = self.evaluator.now();
        match self.evaluator.state.confirm_reset(now).await {
            Ok(Some(epoch)) => {
                tracing::warn!(epoch, "revocations confirmed after a state reset");
                self.audit_revocation(
                    format!("confirmed that the revocations lost with the state are re-asserted (epoch {epoch})"),
                    None,
                    now,
                )
                .await;
                Ok(ConfirmedReset { confirmed: epoch })
            }
            Ok(None) => Err(invalid("this state backend keeps its revocations: there is nothing to confirm")),
            Err(_) => Err(unavailable("the confirmation could not be stored")),
        }
    }

    /// RFC 7662 on a broker JWT (`token` in the form).
    /// `audiences`: what the caller may see (a partner's introspection credential: tokens for its
    /// audiences only; any other is inactive to it); `None` for the admin credential.
    pub async fn introspect(
        &self,
        form: &HashMap<String, String>,
        audiences: Option<&[String]>,
    ) -> Result<Introspection, Refusal> {
        let Some(token) = form.get("token") else {
            return Err(invalid("`token` is required"));
        };
        let take = match form.get("consume").map(String::as_str) {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => return Err(invalid("`consume` is `true` or `false`")),
        };
        let now = self.evaluator.now();
        let config = self.config();
        let Ok(keys) = ephemera_providers::KeySet::from_json(self.jwks().to_string().as_bytes()) else {
            return Ok(Introspection::Inactive);
        };
        let claims = match ephemera_providers::verify_jws(token, 16 * 1024, &BROKER_ALGORITHMS, &keys)
            .ok()
            .and_then(|v| ephemera_providers::jose::parse_claims(&v.payload).ok())
        {
            Some(c) => c,
            None => return Ok(Introspection::Inactive),
        };
        let s = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if s("iss") != config.server.issuer || exp <= now {
            return Ok(Introspection::Inactive);
        }
        if let Some(mine) = audiences {
            let aud: Vec<&str> = match claims.get("aud") {
                Some(Value::String(a)) => vec![a.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !aud.iter().any(|a| mine.iter().any(|m| m == a)) {
                return Ok(Introspection::Inactive);
            }
        }
        let revocation_keys = [
            RevocationKey::Jti(s("jti")),
            RevocationKey::Task { provider: s("provider"), task: s("task") },
            RevocationKey::Subject { provider: s("provider"), subject: s("sub") },
            RevocationKey::Role(s("role")),
            RevocationKey::Issuer(s("src_iss")),
        ]
        .map(|k| k.to_string());
        match self.evaluator.state.revoked(&revocation_keys, now).await {
            Ok(r) if r.is_empty() => {}
            Ok(_) => return Ok(Introspection::Inactive),
            Err(e) => return Err(lookup_failed(e, || unavailable("try again"))),
        }
        // A use-limited token is active while a use is left; `consume` takes one, atomically
        // across replicas, after every other check (a refused token never loses a use).
        let mut uses = None;
        if let Some(max) = claims.get("max_uses").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()) {
            let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
            match super::state_op("consume", self.evaluator.state.consume(&s("jti"), max, take, exp, now, iat)).await {
                Ok(Uses::Left(left)) if take || left > 0 => uses = Some(left),
                Ok(_) => return Ok(Introspection::Inactive),
                Err(e) => return Err(lookup_failed(e, || unavailable("try again"))),
            }
        }
        let mut out = json!({"active": true, "token_type": "Bearer"});
        for k in [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "role",
            "task",
            "provider",
            "src_iss",
            "authorization_details",
            "max_uses",
        ] {
            if let Some(v) = claims.get(k) {
                out[k] = v.clone();
            }
        }
        if let Some(left) = uses {
            out["uses_remaining"] = json!(left);
        }
        Ok(Introspection::Active(out))
    }

    /// The grants not yet expired, oldest first (then by id), each marked `revoked` when a
    /// revocation ends it; only `role`'s when given; with `active`, only those still in force:
    /// not revoked by their `jti`, task, subject, role or issuer.
    pub async fn grants(&self, role: Option<&str>, active: bool) -> Result<Vec<GrantEntry>, Refusal> {
        let now = self.evaluator.now();
        let cannot = || unavailable("the inventory cannot be read now");
        let mut list = self.evaluator.state.grants(now).await.map_err(|_| cannot())?;
        if let Some(role) = role {
            list.retain(|g| g.role == role);
        }
        // "revoked" needs revocations that can be trusted, even for an empty inventory
        self.evaluator.state.revoked(&[], now).await.map_err(|e| lookup_failed(e, cannot))?;
        let mut out = Vec::with_capacity(list.len());
        for g in list {
            let keys = g.revocation_keys().map(|k| k.to_string());
            let revoked =
                !self.evaluator.state.revoked(&keys, now).await.map_err(|e| lookup_failed(e, cannot))?.is_empty();
            if !(active && revoked) {
                out.push(GrantEntry { grant: g, revoked });
            }
        }
        out.sort_by(|a, b| (a.grant.issued_at, &a.grant.id).cmp(&(b.grant.issued_at, &b.grant.id)));
        Ok(out)
    }

    /// How many grants the inventory holds now (the metrics' gauge: no revocation lookups).
    pub async fn live_grants(&self) -> Result<usize, crate::state::StateError> {
        self.evaluator.state.grants(self.evaluator.now()).await.map(|g| g.len())
    }

    /// The revocations in force, by key.
    pub async fn revocations(&self) -> Result<Vec<RevocationEntry>, Refusal> {
        let now = self.evaluator.now();
        let list = self
            .evaluator
            .state
            .revocations(now)
            .await
            .map_err(|e| lookup_failed(e, || unavailable("the revocations cannot be read now")))?;
        Ok(list.into_iter().map(|(key, until)| RevocationEntry { key, until }).collect())
    }

    /// Lifts the revocation the form names (`key`): an admin's mistake undone. Audited; the
    /// file backend's recovery from the audit log leaves it lifted.
    pub async fn remove_revocation(&self, form: &HashMap<String, String>) -> Result<RevocationEntry, Refusal> {
        let key = form.get("key").filter(|k| !k.is_empty()).ok_or_else(|| invalid("`key` is required"))?;
        let now = self.evaluator.now();
        match self.evaluator.state.unrevoke(key, now).await {
            Ok(true) => {
                tracing::warn!(key = %key, "revocation removed");
                self.audit_revocation(format!("removed revocation `{key}`"), None, now).await;
                Ok(RevocationEntry { key: key.clone(), until: now })
            }
            Ok(false) => Err(nothing_matched(&format!("no revocation `{}` is in force", escape_untrusted(key, 128)))),
            Err(_) => Err(unavailable("the revocation could not be removed")),
        }
    }
}

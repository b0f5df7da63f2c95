//! The exchange pipeline: one RFC 8693 request in, one credential (or one refusal) out, every
//! step taken now. It knows no HTTP; the server maps its [`Refusal`]s to status codes.
//!
//! ```text
//! form ─request.rs─▶ ExchangeRequest ─verify.rs─▶ Verified ─workload.rs─▶ Subject ─decide.rs─▶ Allowed ─grant.rs─▶ TokenResponse
//!                     (parse_form)     token or       workload, claims,    policy now,    spend, audit,
//!                                      evidence       single-use facts     lifetime       inventory, mint
//! ```
//!
//! Each arrow is a function that takes the previous stage's type by value and is the only maker
//! of the next one, whose fields are private to the pipeline: skipping a stage, or minting without
//! a decision, does not compile. Every stage writes the [`Trace`] (for `explain` and the audit
//! record); no stage reads it back.
//!
//! [`Evaluator`] runs stages 1–6 with no side effect (it reads revocations, nothing else): the
//! server's exchange and `explain` both call it, so an explanation is the server's decision, not a
//! re-creation. [`Broker`] is an evaluator plus what granting needs: the audit log and the
//! minters. `revocation.rs` and `nonce.rs` hold the admin and freshness operations the server's
//! other routes call.

mod build;
mod counted;
mod decide;
mod details;
mod error;
mod events;
mod grant;
mod nonce;
mod push;
mod request;
mod revocation;
mod trace;
mod verify;
mod workload;

pub use decide::Allowed;
pub use details::{AWS_IAM, AuthorizationDetails, DetailSets};
pub use error::{Class, ExchangeError, Refusal, oauth_charset};
pub use events::{Delivery, EventOutcome, Platform};
pub use nonce::{NONCE_TTL, Nonce};
pub use push::SESSION_REVOKED;
pub use request::{
    ATTESTATION_TOKEN_TYPES, ExchangeRequest, GRANT_TOKEN_EXCHANGE, MAX_FORM_FIELDS, RequestProblem,
    TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, parse_admin_form, parse_form,
};
pub use revocation::{
    ConfirmedReset, FlushedKeys, GrantEntry, Introspection, REVOCATION_TTL, RevocationEntry, RevokeBy, Revoked,
};
pub use trace::{CheckOutcome, CheckStatus, TokenSummary, Trace};
pub use workload::REPLAYABLE_MEMORY;

use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::clock::{Clock, rfc3339};
use crate::config::{Config, Disclosure};
use crate::ids::random_id;
use crate::minting::{Minters, TokenResponse};
use crate::state::StateStore;
use ephemera_providers::error::escape_untrusted;
use ephemera_providers::{KeyCache, KeySource};
use std::sync::Arc;

/// A state store call, timed and its failures counted (`ephemera_state_*{op}`).
pub(crate) async fn state_op<T>(
    op: &'static str,
    call: impl std::future::Future<Output = Result<T, crate::state::StateError>>,
) -> Result<T, crate::state::StateError> {
    let start = std::time::Instant::now();
    let r = call.await;
    metrics::histogram!("ephemera_state_duration_seconds", "op" => op).record(crate::telemetry::since(start));
    if r.is_err() {
        metrics::counter!("ephemera_state_errors_total", "op" => op).increment(1);
    }
    r
}

/// Records the time from its start to its drop under `stage` (the decide stage ends on any
/// path out of it).
struct Timed(std::time::Instant, &'static str);

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!("ephemera_exchange_duration_seconds", "stage" => self.1)
            .record(crate::telemetry::since(self.0));
    }
}

/// Stages 1–6 without side effects: what `explain` holds, and the first half of every exchange.
#[derive(Debug)]
pub struct Evaluator {
    /// The config in force; replaced whole by a reload, read once per exchange.
    config: arc_swap::ArcSwap<Config>,
    keys: KeyCache,
    state: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
}

/// The broker: an evaluator, the audit log and the minters.
#[derive(Debug)]
pub struct Broker {
    evaluator: Evaluator,
    audit: AuditLog,
    minters: Minters,
    /// Refusals counted rather than recorded one by one (`counted.rs`).
    counted: counted::Counted,
    /// Wakes the outbox delivery (`push.rs`) when a revocation queued something.
    outbox_kick: tokio::sync::Notify,
    /// The client SETs are pushed with.
    push_client: reqwest::Client,
}

pub use counted::COUNTED_REFUSALS_EVERY;

impl Evaluator {
    /// The config in force now (one snapshot: use it for the whole of one exchange).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The broker's clock, now.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Is the state store answering? (For Redis: connect and start the epoch now.)
    pub async fn state_ready(&self) -> Result<(), crate::state::StateError> {
        self.state.ready().await
    }

    /// Steps 1–6 of the exchange, without side effects: classify, verify, profile, decide, bound.
    pub async fn evaluate(&self, req: &ExchangeRequest, now: i64) -> (Trace, Result<Allowed, ExchangeError>) {
        self.evaluate_under(&self.config(), req, (now, decide::Revocations::Now)).await
    }

    /// [`Evaluator::evaluate`] under one config snapshot: a reload never mixes two configs (a
    /// role of one with the policy engine of another) within one exchange.
    async fn evaluate_under(
        &self,
        config: &Config,
        req: &ExchangeRequest,
        (now, revocations): (i64, decide::Revocations),
    ) -> (Trace, Result<Allowed, ExchangeError>) {
        let mut trace = Trace::new(&req.role, now, &config.version);
        let result = async {
            let verifying = std::time::Instant::now();
            let verified = verify::verify(&self.keys, config, req, now, &mut trace).await;
            metrics::histogram!("ephemera_exchange_duration_seconds", "stage" => "verify")
                .record(crate::telemetry::since(verifying));
            let deciding = std::time::Instant::now();
            let subject = workload::workload(verified?, now, &mut trace)?;
            let _decided = Timed(deciding, "decide");
            let asked = decide::Asked {
                token_type: req.requested_token_type.as_deref(),
                details: req.authorization_details.as_deref(),
            };
            decide::decide(self.state.as_ref(), config, subject, asked, (now, revocations), &mut trace).await
        }
        .await;
        (trace, result)
    }

    /// `explain --claims`: the profile and policy steps on a synthetic claim set (no signature,
    /// no verification), for writing roles before any token exists.
    pub async fn evaluate_claims(
        &self,
        role_name: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        details: Option<&str>,
        now: i64,
    ) -> (Trace, Result<(), ExchangeError>) {
        let config = self.config();
        let mut trace = Trace::new(role_name, now, &config.version);
        let result = async {
            let role = verify::role(&config, role_name)?;
            trace.provider = Some(role.provider.name.clone());
            trace.profile = Some(role.provider.profile.name());
            let subject = workload::from_claims(role, claims, now, &mut trace)?;
            let asked = decide::Asked { token_type: None, details };
            let at = (now, decide::Revocations::Now);
            decide::decide(self.state.as_ref(), &config, subject, asked, at, &mut trace).await.map(|_| ())
        }
        .await;
        (trace, result)
    }
}

impl Broker {
    /// The evaluator (steps 1–6) this broker grants on.
    pub fn evaluator(&self) -> &Evaluator {
        &self.evaluator
    }

    /// The config in force now (one snapshot: use it for the whole of one exchange).
    pub fn config(&self) -> Arc<Config> {
        self.evaluator.config()
    }

    /// The use the audit log records (the inventory page's recent denials and per-role use).
    pub fn activity(&self) -> &crate::audit::activity::Activity {
        self.audit.activity()
    }

    /// Rotates the audit log now (SIGHUP).
    pub async fn rotate_audit(&self) -> Result<(), crate::audit::AuditError> {
        self.audit.rotate().await
    }

    /// The broker's public keys (its JWKS document).
    pub fn jwks(&self) -> serde_json::Value {
        self.minters.signer().jwks()
    }

    /// The algorithm broker JWTs are signed with.
    pub fn signing_algorithm(&self) -> jsonwebtoken::Algorithm {
        self.minters.signer().algorithm()
    }

    /// The key id broker JWTs are signed under.
    pub fn kid(&self) -> &str {
        self.minters.signer().kid()
    }

    /// Can the broker grant now: (the state store answers, the audit log is writable).
    pub async fn ready(&self) -> (bool, bool) {
        (self.evaluator.state_ready().await.is_ok(), self.audit.ready())
    }

    /// Replaces the config for every exchange that starts from now on, or refuses it whole,
    /// naming the settings that only a restart can change ([`Config::restart_needed_for`]).
    /// Cached issuer keys of a source the new config no longer names are dropped now.
    pub async fn reload(&self, new: Config) -> Result<(), Vec<&'static str>> {
        let needs_restart = self.config().restart_needed_for(&new);
        if !needs_restart.is_empty() {
            return Err(needs_restart);
        }
        let sources: Vec<&KeySource> = new
            .providers
            .iter()
            .filter_map(|p| match &p.kind {
                crate::config::ProviderKind::Oidc { source } => Some(source),
                crate::config::ProviderKind::Attestation { .. } => None,
            })
            .collect();
        self.evaluator.keys.retain(&sources).await;
        self.evaluator.config.store(Arc::new(new));
        Ok(())
    }

    /// The whole exchange of one RFC 8693 form body: evaluate now, spend the assertion, audit
    /// durably, mint, answer. Every refusal is audited and described at the config's disclosure
    /// level, with the decision id.
    pub async fn exchange(&self, form: &[u8], request_id: &str) -> Result<TokenResponse, Refusal> {
        self.run(parse_form(form), request_id).await
    }

    /// [`Broker::exchange`] of a request parsed elsewhere (the benches, embedding).
    pub async fn exchange_request(&self, req: ExchangeRequest, request_id: &str) -> Result<TokenResponse, Refusal> {
        self.run(Ok(req), request_id).await
    }

    async fn run(
        &self,
        req: Result<ExchangeRequest, ExchangeError>,
        request_id: &str,
    ) -> Result<TokenResponse, Refusal> {
        let now = self.evaluator.clock.now();
        let started = std::time::Instant::now();
        let config = self.config();
        let (mut rec, ids) = self.draft(&config, request_id, now);
        // (labels: a role the config knows, never a caller's string: bounded cardinality)
        let mut role_label = String::new();
        let mut provider_label = String::new();
        let outcome = match (ids, req) {
            (Err(e), _) => Err(ExchangeError::Randomness(e)),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(req)) => {
                tracing::trace!(request_id, role = %escape_untrusted(&req.role, 64), token_bytes = req.subject_token.len(), "exchange request parsed");
                rec.role = Some(escape_untrusted(&req.role, 64));
                // Verification (and any issuer fetch it needs) runs under the request timeout, so a
                // slow issuer ends in an answered, audited 503; granting is bounded by its own calls.
                let limit = config.server.request_timeout;
                // (the revocations in force are read by the spend: one state round trip)
                let at = (now, decide::Revocations::AtSpend);
                let evaluated = tokio::time::timeout(limit, self.evaluator.evaluate_under(&config, &req, at)).await;
                let (trace, result) = match evaluated {
                    Ok(r) => r,
                    Err(_) => (Trace::default(), Err(ExchangeError::Timeout(limit.as_secs()))),
                };
                trace.audit_facts(&mut rec);
                if config.roles.contains_key(&req.role) {
                    role_label.clone_from(&req.role);
                }
                provider_label = trace.provider.clone().unwrap_or_default();
                tracing::trace!(
                    request_id,
                    provider = ?trace.provider,
                    checks_passed = trace.checks.iter().filter(|c| c.status == CheckStatus::Pass).count(),
                    allow = result.is_ok(),
                    "exchange evaluated"
                );
                match result {
                    Ok(allowed) => {
                        let granting = std::time::Instant::now();
                        let granted = self.grant(&config, allowed, &mut rec).await;
                        metrics::histogram!("ephemera_exchange_duration_seconds", "stage" => "grant")
                            .record(crate::telemetry::since(granting));
                        granted
                    }
                    Err(e) => Err(e),
                }
            }
        };
        metrics::histogram!("ephemera_exchange_duration_seconds", "stage" => "total")
            .record(crate::telemetry::since(started));
        let (outcome_label, reason) = match &outcome {
            Ok(_) => ("allow", ""),
            Err(e @ (ExchangeError::Mint(_) | ExchangeError::Upstream(_))) => ("mint_failed", e.refusal().reason),
            Err(e) => ("deny", e.refusal().reason),
        };
        metrics::counter!("ephemera_exchanges_total", "outcome" => outcome_label, "reason" => reason,
            "role" => role_label, "provider" => provider_label)
        .increment(1);
        match outcome {
            Ok(resp) => Ok(resp),
            Err(e) => Err(self.refuse_error(&config, rec, e).await),
        }
    }

    /// Audits an error as a deny (a failed mint was audited by `grant` as `mint_failed`) and
    /// describes it at the config's disclosure level.
    async fn refuse_error(&self, config: &Config, rec: AuditRecord, e: ExchangeError) -> Refusal {
        let audited = matches!(e, ExchangeError::Mint(_) | ExchangeError::Upstream(_));
        let refusal = e.refusal();
        let public = disclose(config, &refusal, || e.reason_only());
        let detail = (!audited).then(|| e.detail());
        self.deny(config, rec, refusal, detail, public).await
    }

    /// Audits a refusal the server found before any form was read (rate, size, method, media
    /// type, query string) and describes it at the config's disclosure level, like any other.
    pub async fn refuse(&self, mut refusal: Refusal, request_id: &str) -> Refusal {
        let now = self.evaluator.clock.now();
        let config = self.config();
        // A client over its rate is counted, not recorded: one record per interval says how many
        // (the rate limit bounds what one client can write; its overflow writes nothing).
        if refusal.reason == "rate_limited" {
            if self.counted.count(refusal.reason, now) {
                self.write_counted(now).await;
            }
            refusal.description = disclose(&config, &refusal, || refusal.description.clone());
            return refusal;
        }
        let (rec, _) = self.draft(&config, request_id, now);
        // (what failed is all the description says: `reason` discloses it too)
        let public = disclose(&config, &refusal, || refusal.description.clone());
        let detail = Some(refusal.description.clone());
        self.deny(&config, rec, refusal, detail, public).await
    }

    /// Writes the refusals counted since the last such records as one `deny` record per reason
    /// (the count in its detail). The server calls it every [`COUNTED_REFUSALS_EVERY`] seconds;
    /// nothing is written when none were counted.
    pub async fn write_counted(&self, now: i64) {
        let Some((since, by_reason)) = self.counted.take(now) else { return };
        let config = self.config();
        for (reason, n) in by_reason {
            let (mut rec, _) = self.draft(&config, "", now);
            rec.decision = Outcome::Deny;
            rec.reason = Some(reason);
            rec.detail = Some(format!(
                "{n} request(s) refused {reason} since {} (counted, not recorded one by one)",
                rfc3339(since)
            ));
            if config.safety.audit
                && let Err(e) = self.audit.append(rec, false).await
            {
                tracing::error!(error = %e, "audit write failed for counted refusals");
            }
        }
    }

    /// The audit record of one exchange, before anything is known of it, and whether its
    /// decision id could be drawn (without randomness the exchange is refused: fail closed).
    fn draft(
        &self,
        config: &Config,
        request_id: &str,
        now: i64,
    ) -> (AuditRecord, Result<(), crate::ids::RandomnessUnavailable>) {
        let decision_id = random_id(12);
        let rec = AuditRecord {
            time: rfc3339(now),
            ts: now,
            request_id: request_id.to_owned(),
            decision_id: decision_id.clone().unwrap_or_default(),
            policy_version: config.version.clone(),
            ..Default::default()
        };
        (rec, decision_id.map(|_| ()))
    }

    /// Records a deny (when `detail` is given: a failed mint was recorded already) and answers
    /// with `public` and the decision id.
    async fn deny(
        &self,
        config: &Config,
        mut rec: AuditRecord,
        mut refusal: Refusal,
        detail: Option<String>,
        public: String,
    ) -> Refusal {
        let mut decision_id = rec.decision_id.clone();
        let request_id = rec.request_id.clone();
        // past the budget of deny records, a refusal is counted (a flood never writes a line
        // each); its answer then names no decision: there is no record to find by it
        let detail = match detail {
            Some(_) if !self.counted.may_record() => {
                if self.counted.count(refusal.reason, rec.ts) {
                    self.write_counted(rec.ts).await;
                }
                decision_id.clear();
                None
            }
            d => d,
        };
        if let Some(detail) = detail {
            rec.decision = Outcome::Deny;
            rec.reason = Some(refusal.reason);
            rec.detail = Some(detail);
            rec.credential = None;
            // A deny is recorded but not fsynced: nothing leaves the broker on a deny.
            if config.safety.audit
                && let Err(ae) = self.audit.append(rec, false).await
            {
                tracing::error!(error = %ae, "audit write failed for a deny");
            }
        }
        refusal.description =
            if decision_id.is_empty() { public } else { format!("{public} (decision {decision_id})") };
        tracing::debug!(request_id, decision_id, reason = refusal.reason, "exchange denied");
        refusal
    }
}

/// What a refusal tells the caller at the config's disclosure level (the audit has it all).
fn disclose(config: &Config, refusal: &Refusal, reason_only: impl FnOnce() -> String) -> String {
    match config.server.disclosure {
        Disclosure::Full => refusal.description.clone(),
        Disclosure::Reason => reason_only(),
        // a role that does not exist reads like one that refuses: names cannot be probed
        Disclosure::None if refusal.reason == "unknown_role" => "policy_denied".to_owned(),
        Disclosure::None => refusal.reason.to_owned(),
    }
}

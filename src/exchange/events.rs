//! Task end from the platform: a CI run that finished tells the broker, and its task ends now,
//! not when its credentials time out.
//!
//! - GitHub: a `workflow_run` webhook with action `completed` ends the task
//!   `REPO_ID/RUN_ID/RUN_ATTEMPT` (the github-actions profile's task: ID tokens carry no job id,
//!   so the run attempt is the unit). Authenticity: `X-Hub-Signature-256`, HMAC-SHA256 of the raw
//!   body under the provider's webhook secret.
//! - GitLab: a job event (`object_kind: build`) in a final state ends `PROJECT_ID/PIPELINE_ID/JOB_ID`.
//!   Authenticity: GitLab's signed webhooks (Standard Webhooks: HMAC-SHA256 of
//!   `ID.TIMESTAMP.BODY`, the timestamp within five minutes) or its secret token.
//!
//! The secret that verifies names the provider, and so the namespace of the task (two GitHub
//! providers with two secrets never end each other's tasks). Every comparison is constant-time.
//! A delivery id is remembered (as a spent assertion is, until [`DELIVERY_TTL`]): a redelivery
//! does nothing. A task is ended, and audited, once; the revocation is the one `POST
//! /v1/revoke` makes, so its exchanges, introspection and pushed events follow from it.

use super::Broker;
use super::error::{Class, Refusal};
use super::revocation::{REVOCATION_TTL, unavailable};
use crate::audit::{AuditRecord, Outcome};
use crate::clock::rfc3339;
use crate::ids::random_id;
use crate::secret::SharedSecret;
use crate::state::{Mark, RevocationKey};
use aws_lc_rs::hmac;
use base64::Engine;
use ephemera_providers::profile::Profile;
use serde_json::Value;

/// How long a delivery id is remembered: GitHub and GitLab redeliver for days at most.
pub(super) const DELIVERY_TTL: i64 = 7 * 24 * 3600;
/// How far a signed GitLab delivery's timestamp may be from now.
const TIMESTAMP_TOLERANCE: i64 = 300;

/// The platform a delivery claims to come from (the route it was posted to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Github,
    Gitlab,
}

impl Platform {
    fn name(self) -> &'static str {
        match self {
            Platform::Github => "github",
            Platform::Gitlab => "gitlab",
        }
    }

    fn profile(self) -> Profile {
        match self {
            Platform::Github => Profile::GithubActions,
            Platform::Gitlab => Profile::Gitlab,
        }
    }
}

/// One webhook delivery as the transport received it: the headers that matter, and the body's
/// exact bytes (what was signed).
#[derive(Debug)]
pub struct Delivery<'a> {
    pub platform: Platform,
    /// `X-GitHub-Event` / `X-Gitlab-Event`.
    pub event: Option<&'a str>,
    /// `X-GitHub-Delivery`; GitLab: `webhook-id`, else `Idempotency-Key`, else `X-Gitlab-Event-UUID`.
    pub id: Option<&'a str>,
    /// `X-Hub-Signature-256` / `webhook-signature`.
    pub signature: Option<&'a str>,
    /// `webhook-timestamp` (GitLab signed webhooks).
    pub timestamp: Option<&'a str>,
    /// `X-Gitlab-Token` (GitLab's secret token).
    pub token: Option<&'a str>,
    pub body: &'a [u8],
}

/// What a verified delivery did.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum EventOutcome {
    /// The task is ended (`already`: it had been, by an earlier delivery or a revoke).
    Ended {
        ended: String,
        delivery: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        already: bool,
    },
    /// Not an event that ends a task.
    Ignored { ignored: String },
    /// This delivery was handled before.
    Duplicate { duplicate: String },
}

fn unauthenticated(detail: &str) -> Refusal {
    Refusal::new(Class::Unauthenticated, "invalid_client", "event_unauthenticated", detail)
}

fn invalid(detail: &str) -> Refusal {
    Refusal::new(Class::Rejected, "invalid_request", "event_invalid", detail)
}

/// GitHub's `X-Hub-Signature-256` over `body` under `secret`.
fn github_signed(secret: &SharedSecret, body: &[u8], signature: &str) -> bool {
    let Some(tag) = signature.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok()) else { return false };
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret.expose()), body, &tag).is_ok()
}

/// A Standard Webhooks signature (GitLab's signing token): any `v1,BASE64` of the
/// space-separated list verifies `ID.TIMESTAMP.BODY`. A secret written `whsec_BASE64` is that key.
fn gitlab_signed(secret: &SharedSecret, id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let raw = secret.expose();
    let key = match std::str::from_utf8(raw).ok().and_then(|s| s.strip_prefix("whsec_")) {
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(k) => k,
            Err(_) => return false,
        },
        None => raw.to_vec(),
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    signature.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|b64| {
        base64::engine::general_purpose::STANDARD.decode(b64).is_ok_and(|tag| hmac::verify(&key, &signed, &tag).is_ok())
    })
}

/// The task a verified payload ends, or why it ends none.
fn task_of(platform: Platform, event: Option<&str>, payload: &Value) -> Result<Result<String, String>, Refusal> {
    let id = |v: &Value, path: &str| -> Result<String, Refusal> {
        match v.pointer(path) {
            Some(Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
            _ => Err(invalid(&format!("`{}` is missing or not a number", &path[1..].replace('/', ".")))),
        }
    };
    match platform {
        Platform::Github => {
            if event != Some("workflow_run") {
                return Ok(Err(format!("`{}` events end no task", event.unwrap_or("unnamed"))));
            }
            match payload.get("action").and_then(Value::as_str) {
                Some("completed") => {}
                Some(a) => return Ok(Err(format!("workflow_run `{}` ends no task", escape(a)))),
                None => return Err(invalid("`action` is missing")),
            }
            Ok(Ok(format!(
                "{}/{}/{}",
                id(payload, "/repository/id")?,
                id(payload, "/workflow_run/id")?,
                id(payload, "/workflow_run/run_attempt")?
            )))
        }
        Platform::Gitlab => {
            if payload.get("object_kind").and_then(Value::as_str) != Some("build") {
                return Ok(Err(format!("`{}` events end no task", escape(event.unwrap_or("unnamed")))));
            }
            match payload.get("build_status").and_then(Value::as_str) {
                Some("success" | "failed" | "canceled" | "skipped") => {}
                Some(s) => return Ok(Err(format!("a job `{}` has not ended", escape(s)))),
                None => return Err(invalid("`build_status` is missing")),
            }
            Ok(Ok(format!(
                "{}/{}/{}",
                id(payload, "/project_id")?,
                id(payload, "/pipeline_id")?,
                id(payload, "/build_id")?
            )))
        }
    }
}

fn escape(s: &str) -> String {
    ephemera_providers::error::escape_untrusted(s, 64)
}

impl Broker {
    /// Verifies a platform's delivery and ends the task it names. Refusals are audited (within
    /// the deny budget, like any other).
    pub async fn task_event(&self, d: Delivery<'_>, request_id: &str) -> Result<EventOutcome, Refusal> {
        match self.task_event_inner(&d).await {
            Ok(o) => Ok(o),
            Err(r) if r.class == Class::Unavailable => Err(r),
            Err(r) => Err(self.refuse(r, request_id).await),
        }
    }

    async fn task_event_inner(&self, d: &Delivery<'_>) -> Result<EventOutcome, Refusal> {
        let config = self.config();
        let now = self.evaluator.now();
        let platform = d.platform.name();
        let candidates: Vec<_> = config
            .providers
            .iter()
            .filter(|p| p.profile == d.platform.profile())
            .filter_map(|p| p.webhook_secret.as_ref().map(|s| (p, s)))
            .collect();
        if candidates.is_empty() {
            return Err(unauthenticated(&format!("no {platform} provider has a webhook_secret_file")));
        }
        let id = d.id.filter(|i| !i.is_empty() && i.len() <= 128).ok_or_else(|| unauthenticated("no delivery id"))?;
        let provider = match (d.platform, d.signature, d.token) {
            (Platform::Github, Some(sig), _) => candidates.iter().find(|(_, s)| github_signed(s, d.body, sig)),
            (Platform::Github, None, _) => return Err(unauthenticated("no X-Hub-Signature-256")),
            (Platform::Gitlab, Some(sig), _) => {
                let ts = d
                    .timestamp
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| unauthenticated("a signed delivery needs webhook-timestamp (UNIX seconds)"))?;
                if (now - ts).abs() > TIMESTAMP_TOLERANCE {
                    return Err(unauthenticated("webhook-timestamp is more than 5 minutes from now"));
                }
                let ts = ts.to_string();
                candidates.iter().find(|(_, s)| gitlab_signed(s, id, &ts, d.body, sig))
            }
            (Platform::Gitlab, None, Some(token)) => candidates.iter().find(|(_, s)| s.matches(token.as_bytes())),
            (Platform::Gitlab, None, None) => {
                return Err(unauthenticated("no webhook-signature or X-Gitlab-Token"));
            }
        };
        let Some((provider, _)) = provider else {
            return Err(unauthenticated("the signature verifies under no configured webhook secret"));
        };
        let payload: Value = serde_json::from_slice(d.body).map_err(|_| invalid("the body is not JSON"))?;
        let task = match task_of(d.platform, d.event, &payload)? {
            Ok(t) => t,
            Err(why) => return Ok(EventOutcome::Ignored { ignored: why }),
        };
        // The revocation first (it is idempotent), the delivery id after: a store that fails in
        // between leaves the delivery unspent, and the platform's redelivery ends the task.
        let key = RevocationKey::Task { provider: provider.name.clone(), task: task.clone() }.to_string();
        let already = match self.evaluator.state.revoked(std::slice::from_ref(&key), now).await {
            Ok(found) => !found.is_empty(),
            Err(_) => return Err(unavailable("try again")),
        };
        if !already {
            self.evaluator.state.revoke(&key, now + REVOCATION_TTL, now).await.map_err(|_| unavailable("try again"))?;
        }
        // a delivery is handled once: remembered like a spent assertion
        let remembered = format!("delivery:{platform}:{}:{id}", provider.name);
        let duplicate = match self.evaluator.state.mark_used(&remembered, now + DELIVERY_TTL, now, now, None).await {
            Ok(Mark::Fresh | Mark::EpochReset { .. }) => false,
            Ok(Mark::AlreadyUsed) => true,
            Err(_) => return Err(unavailable("try again")),
        };
        if !already {
            tracing::info!(key = %key, delivery = %id, "task ended by the platform");
            metrics::counter!("ephemera_revocations_total", "source" => platform).increment(1);
            let event = match d.platform {
                Platform::Github => "workflow_run completed",
                Platform::Gitlab => "job finished",
            };
            let rec = AuditRecord {
                time: rfc3339(now),
                ts: now,
                request_id: random_id(12).unwrap_or_default(),
                decision_id: random_id(12).unwrap_or_default(),
                policy_version: config.version.clone(),
                decision: Outcome::Revoke,
                // (`revoked `KEY`` last: the file backend reads revocations back from the log)
                detail: Some(format!("task ended ({platform} {event}): revoked `{key}`")),
                provider: Some(provider.name.clone()),
                task: Some(task.clone()),
                delivery_id: Some(escape(id)),
                ..Default::default()
            };
            let decision_id = rec.decision_id.clone();
            if let Err(e) = self.audit.append(rec, true).await {
                tracing::error!(error = %e, "audit write failed for a task end");
            }
            let ended = self.ended_by(&key, now).await;
            self.revoked_now(&key, &ended, &decision_id, &format!("task ended: {platform} {event}"), now).await;
        }
        if duplicate {
            return Ok(EventOutcome::Duplicate { duplicate: id.to_owned() });
        }
        Ok(EventOutcome::Ended { ended: key, delivery: id.to_owned(), already })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SharedSecret {
        SharedSecret::new(s.as_bytes().to_vec())
    }

    #[test]
    fn github_signatures_verify_only_the_signed_body_under_the_secret() {
        let body = br#"{"action":"completed"}"#;
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"It's a Secret to Everybody");
        let sig = format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()));
        assert!(github_signed(&secret("It's a Secret to Everybody"), body, &sig));
        assert!(!github_signed(&secret("another secret"), body, &sig));
        assert!(!github_signed(&secret("It's a Secret to Everybody"), b"{}", &sig));
        assert!(!github_signed(&secret("It's a Secret to Everybody"), body, &sig.replace("sha256=", "sha1=")));
    }

    #[test]
    fn github_documents_this_signature() {
        // GitHub's "Validating webhook deliveries" test values.
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signed(&secret("It's a Secret to Everybody"), b"Hello, World!", sig));
    }

    #[test]
    fn standard_webhooks_signatures_cover_id_timestamp_and_body() {
        let key_bytes = b"0123456789abcdef0123456789abcdef";
        let whsec = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key_bytes));
        let key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes);
        let tag = hmac::sign(&key, b"msg_1.1700000000.{}");
        let sig = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag.as_ref()));
        assert!(gitlab_signed(&secret(&whsec), "msg_1", "1700000000", b"{}", &sig));
        assert!(gitlab_signed(&secret(&whsec), "msg_1", "1700000000", b"{}", &format!("v1,AAAA {sig}")));
        assert!(!gitlab_signed(&secret(&whsec), "msg_2", "1700000000", b"{}", &sig));
        assert!(!gitlab_signed(&secret(&whsec), "msg_1", "1700000001", b"{}", &sig));
        assert!(!gitlab_signed(&secret(&whsec), "msg_1", "1700000000", b"{ }", &sig));
    }

    #[test]
    fn tasks_are_read_from_the_documented_members() {
        let run = serde_json::json!({"action": "completed", "repository": {"id": 1}, "workflow_run": {"id": 2, "run_attempt": 3}});
        assert_eq!(task_of(Platform::Github, Some("workflow_run"), &run).unwrap(), Ok("1/2/3".into()));
        assert!(task_of(Platform::Github, Some("ping"), &run).unwrap().is_err());
        let job = serde_json::json!({"object_kind": "build", "build_status": "failed", "project_id": 4, "pipeline_id": 5, "build_id": 6});
        assert_eq!(task_of(Platform::Gitlab, Some("Job Hook"), &job).unwrap(), Ok("4/5/6".into()));
        let running = serde_json::json!({"object_kind": "build", "build_status": "running"});
        assert!(task_of(Platform::Gitlab, Some("Job Hook"), &running).unwrap().is_err());
        let bad = serde_json::json!({"action": "completed", "repository": {"id": "1"}, "workflow_run": {"id": 2, "run_attempt": 3}});
        assert!(task_of(Platform::Github, Some("workflow_run"), &bad).is_err());
    }
}

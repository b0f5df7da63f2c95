//! What an evaluation found, step by step, for people: `explain` prints it and the audit record
//! copies its facts. Every stage writes it; no stage reads it back.

use crate::policy::Decision;
use ephemera_providers::profile::Workload;
use ephemera_providers::{CHECKS, VerifyError};
use serde::Serialize;

/// How one verification check fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    NotReached,
}

/// How one verification check fared, with what it checks.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub check: &'static str,
    pub description: &'static str,
    pub status: CheckStatus,
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

/// Everything an evaluation found, step by step.
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
    /// The RFC 9396 authorization details the request carried, as checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
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
    /// A trace of an evaluation of `role` at `now` under config `version`.
    pub(super) fn new(role: &str, now: i64, version: &str) -> Trace {
        Trace {
            now,
            now_rfc3339: crate::clock::rfc3339(now),
            role: role.to_owned(),
            config_version: version.to_owned(),
            ..Default::default()
        }
    }

    /// The facts an audit record carries about the assertion, as far as the evaluation got:
    /// provider, issuer, subject, the assertion's expiry and the task.
    pub(super) fn audit_facts(&self, rec: &mut crate::audit::AuditRecord) {
        rec.provider = self.provider.clone();
        if let Some(t) = &self.token {
            rec.issuer = Some(t.issuer.clone());
            rec.subject = Some(t.subject.clone());
            rec.assertion_expires_at = Some(t.expires_at);
        }
        rec.task = self.workload.as_ref().map(|w| w.task.clone());
        if rec.subject.is_none() {
            // attestation: the workload as the evidence names it, and the provider's issuer
            rec.subject = self.workload.as_ref().map(|w| w.subject.clone());
            rec.issuer = self.evidence.as_ref().and_then(|e| e.get("iss")).and_then(|v| v.as_str()).map(str::to_owned);
        }
    }

    /// Every JWT check in order: passed, failed (with the error) or not reached.
    pub(super) fn record_checks(&mut self, failed: Option<&VerifyError>) {
        let failed_at = failed.map(VerifyError::check);
        let mut reached = true;
        self.checks = CHECKS
            .iter()
            .map(|&c| {
                let (status, detail) = if !reached {
                    (CheckStatus::NotReached, None)
                } else if Some(c) == failed_at {
                    reached = false;
                    (CheckStatus::Fail, failed.map(ToString::to_string))
                } else {
                    (CheckStatus::Pass, None)
                };
                CheckOutcome { check: c.name(), description: c.describe(), status, detail }
            })
            .collect();
    }
}

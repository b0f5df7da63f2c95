//! A decision and what made it: each condition's result, the Cedar policies that decided, the
//! guardrails that fired, evaluation errors. Serialised into `explain` and the trace as is.

use serde::Serialize;

/// The id of the built-in guardrail that acts on revocations.
pub const GUARDRAIL_REVOCATION: &str = "guardrail:revocation";

/// How one condition fared.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionResult {
    pub claim: String,
    pub expected: String,
    /// The token's value (escaped, truncated), `None` when the token lacks the claim.
    pub got: Option<String>,
    pub pass: bool,
    /// Set when only letter case or white space differs, to point at the likely mistake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
}

impl ConditionResult {
    /// ``condition ref: expected `x`, got `y` ``, for error descriptions and audit.
    pub fn short(&self) -> String {
        match &self.got {
            Some(g) => format!("condition {}: expected `{}`, got `{}`", self.claim, esc(&self.expected), g),
            None => format!("condition {}: expected `{}`, token has no such claim", self.claim, esc(&self.expected)),
        }
    }
}

pub(super) fn esc(s: &str) -> String {
    ephemera_providers::error::escape_untrusted(s, 128)
}

/// What a decision does (serialised as the decision's `"allow": true|false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

fn allow_member<S: serde::Serializer>(e: &Effect, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(*e == Effect::Allow)
}

/// The decision on one role, with what made it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    #[serde(rename = "allow", serialize_with = "allow_member")]
    pub effect: Effect,
    pub conditions: Vec<ConditionResult>,
    /// The Cedar policy ids that determined the decision.
    pub policies: Vec<String>,
    /// Guardrails (global forbids) that fired.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<String>,
    /// Cedar evaluation errors (each makes the decision a deny).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Revocation keys in force for this workload (`task:…`, `subject:…`, `role:…`, `issuer:…`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
}

impl Decision {
    /// The decision allows.
    pub fn allows(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// One fired guardrail, for people.
    fn guardrail(&self, id: &str) -> String {
        match id {
            GUARDRAIL_REVOCATION => format!("revoked ({})", self.revoked.join(", ")),
            _ => format!("guardrail {id}"),
        }
    }

    /// The reasons for a deny, short form, `; `-separated.
    pub fn reasons(&self) -> String {
        let mut r: Vec<String> = self.conditions.iter().filter(|c| !c.pass).map(ConditionResult::short).collect();
        r.extend(self.guardrails.iter().map(|g| self.guardrail(g)));
        r.extend(self.errors.iter().map(|e| format!("policy error: {e}")));
        if r.is_empty() && !self.allows() {
            r.push("no permit policy matched".into());
        }
        r.join("; ")
    }

    /// The failed condition names only (for `detail = "reason"`).
    pub fn failed_names(&self) -> String {
        let mut r: Vec<String> =
            self.conditions.iter().filter(|c| !c.pass).map(|c| format!("condition {}", c.claim)).collect();
        r.extend(self.guardrails.iter().map(|g| self.guardrail(g)));
        if r.is_empty() {
            r.push("no permit policy matched".into());
        }
        r.join("; ")
    }
}

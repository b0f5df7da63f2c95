//! Roles and their conditions. A role is allowed only when every condition holds on the verified
//! token's claims: exact, case-sensitive string equality; a claim the token lacks fails. Nested
//! claims are addressed by dotted path (`a.b.c`); numbers and booleans compare by their JSON text.
//! No decision is cached: [`decide`] runs on every exchange.

use crate::config::Provider;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// One `claim = "value"` condition.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub claim: String,
    pub expected: String,
}

/// What a role hands out.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Credential {
    /// A broker-signed JWT for this audience.
    Jwt { audience: String },
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Jwt { .. } => "jwt",
        }
    }
}

/// A role: who may get which credential, for how long at most.
#[derive(Debug)]
pub struct Role {
    pub name: String,
    pub provider: Arc<Provider>,
    pub max_ttl: Duration,
    pub conditions: Vec<Condition>,
    pub credential: Credential,
}

/// How one condition fared.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionResult {
    pub claim: String,
    pub expected: String,
    /// The token's value (escaped, truncated), `None` when the token lacks the claim.
    pub got: Option<String>,
    pub pass: bool,
    /// Set when only letter case differs, to point at the likely mistake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
}

impl ConditionResult {
    /// `condition ref: expected `x`, got `y``, for error descriptions and audit.
    pub fn short(&self) -> String {
        match &self.got {
            Some(g) => format!("condition {}: expected `{}`, got `{}`", self.claim, esc(&self.expected), g),
            None => format!("condition {}: expected `{}`, token has no such claim", self.claim, esc(&self.expected)),
        }
    }
}

fn esc(s: &str) -> String {
    ephemera_providers::error::escape_untrusted(s, 128)
}

/// Looks a claim up by name, or by dotted path when no top-level claim has the full name.
pub fn lookup<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The decision on a role for a set of verified claims.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub conditions: Vec<ConditionResult>,
}

impl Decision {
    /// The failed conditions, short form, `; `-separated.
    pub fn reasons(&self) -> String {
        self.conditions.iter().filter(|c| !c.pass).map(ConditionResult::short).collect::<Vec<_>>().join("; ")
    }
}

/// Evaluates every condition of `role` (all of them, so an explanation names every failure).
pub fn decide(role: &Role, claims: &Map<String, Value>) -> Decision {
    let conditions: Vec<ConditionResult> = role
        .conditions
        .iter()
        .map(|c| {
            let got = lookup(claims, &c.claim)
                .map(|v| scalar_text(v).unwrap_or_else(|| "(not a string, number or boolean)".into()));
            let pass = got.as_deref() == Some(c.expected.as_str())
                && lookup(claims, &c.claim).is_some_and(|v| !v.is_object() && !v.is_array());
            let hint = match &got {
                Some(g) if !pass && g.eq_ignore_ascii_case(&c.expected) => {
                    Some("differs only in letter case; comparison is case-sensitive")
                }
                Some(g) if !pass && g.trim() == c.expected => Some("differs only in surrounding white space"),
                _ => None,
            };
            ConditionResult {
                claim: c.claim.clone(),
                expected: c.expected.clone(),
                got: got.map(|g| esc(&g)),
                pass,
                hint,
            }
        })
        .collect();
    Decision { allow: conditions.iter().all(|c| c.pass), conditions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn check(expected: &str, got: Value) -> bool {
        let c = claims(json!({ "x": got }));
        lookup(&c, "x").and_then(scalar_text).as_deref() == Some(expected)
    }

    #[test]
    fn exact_anchored_case_sensitive() {
        assert!(check("acme", json!("acme")));
        assert!(!check("acme", json!("acme-evil")));
        assert!(!check("refs/heads/main", json!("refs/heads/main-evil")));
        assert!(!check("production", json!("Production")));
        assert!(!check("production", json!("production ")));
        assert!(check("123", json!(123)));
        assert!(!check("123", json!(123999)));
    }

    #[test]
    fn dotted_paths_and_missing_claims() {
        let c = claims(json!({"google": {"compute_engine": {"project_id": "p1"}}, "a.b": "flat"}));
        assert_eq!(lookup(&c, "google.compute_engine.project_id"), Some(&json!("p1")));
        assert_eq!(lookup(&c, "a.b"), Some(&json!("flat")));
        assert_eq!(lookup(&c, "google.nothing"), None);
    }
}

//! RFC 9396 `authorization_details`: what one transaction may do, checked against what the role
//! declares before anything else is decided.
//!
//! A request's details are a JSON array of objects, each with a `type` the role declares and only
//! that type's declared fields, each a string or an array of strings. Anything else is refused
//! (`invalid_authorization_details`) before the assertion is spent. What is granted is exactly
//! what was asked: the same array goes into Cedar's context (as sets, merged per type), the
//! broker JWT, introspection, the audit record and, for AWS, the session policy.

use crate::config::Role;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Most detail objects in one request.
pub(super) const MAX_DETAILS: usize = 8;
/// Most strings in one field.
pub(super) const MAX_VALUES: usize = 16;
/// Longest string in a field, bytes.
pub(super) const MAX_VALUE_BYTES: usize = 256;
pub use crate::minting::aws::AWS_IAM;
pub use crate::policy::DetailSets;

/// Details checked against the role: only [`check`] makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationDetails {
    /// The array as granted (the request's, checked).
    granted: Value,
    sets: DetailSets,
}

impl AuthorizationDetails {
    /// The array as granted: for the token response, the JWT, introspection and the audit.
    pub fn granted(&self) -> &Value {
        &self.granted
    }

    /// What Cedar sees.
    pub fn sets(&self) -> &DetailSets {
        &self.sets
    }
}

/// Checks the request's `authorization_details` (the form's text, if any) against `role`.
/// `Ok(None)`: none asked and none required.
pub(super) fn check(role: &Role, raw: Option<&str>) -> Result<Option<AuthorizationDetails>, String> {
    let declared = &role.details.types;
    let Some(raw) = raw else {
        if role.details.require {
            return Err(format!("role `{}` requires authorization_details", role.name));
        }
        return Ok(None);
    };
    if declared.is_empty() {
        return Err(format!("role `{}` accepts no authorization_details", role.name));
    }
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(raw) else {
        return Err("authorization_details must be a JSON array of objects".into());
    };
    if items.is_empty() || items.len() > MAX_DETAILS {
        return Err(format!("authorization_details must hold 1 to {MAX_DETAILS} objects"));
    }
    let mut sets = DetailSets::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else { return Err(format!("authorization_details[{i}] is not an object")) };
        let kind =
            obj.get("type").and_then(Value::as_str).ok_or(format!("authorization_details[{i}].type is missing"))?;
        let Some(rule) = declared.get(kind) else {
            return Err(format!(
                "authorization_details[{i}].type `{}` is not a type of role `{}`",
                escape(kind),
                role.name
            ));
        };
        let fields = sets.entry(kind.to_owned()).or_default();
        for (name, value) in obj.iter().filter(|(k, _)| k.as_str() != "type") {
            if !rule.fields.contains(name) {
                return Err(format!("authorization_details[{i}]: `{}` is not a field of type `{kind}`", escape(name)));
            }
            let strings: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) if a.len() <= MAX_VALUES => a
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<Vec<_>>>()
                    .ok_or(format!("authorization_details[{i}].{name}: only strings, or arrays of strings"))?,
                Value::Array(_) => {
                    return Err(format!("authorization_details[{i}].{name}: at most {MAX_VALUES} values"));
                }
                _ => return Err(format!("authorization_details[{i}].{name}: only strings, or arrays of strings")),
            };
            if strings.iter().any(|s| s.is_empty() || s.len() > MAX_VALUE_BYTES) {
                return Err(format!("authorization_details[{i}].{name}: values are 1 to {MAX_VALUE_BYTES} bytes"));
            }
            fields.entry(name.clone()).or_default().extend(strings.into_iter().map(str::to_owned));
        }
        if let Some(missing) = rule.required.iter().find(|f| !obj.contains_key(*f)) {
            return Err(format!("authorization_details[{i}]: type `{kind}` requires `{missing}`"));
        }
        if kind == AWS_IAM {
            check_aws(i, fields)?;
        }
    }
    Ok(Some(AuthorizationDetails { granted: Value::Array(items), sets }))
}

/// `aws_iam`: service actions (`s3:GetObject`, no bare `*`) on ARNs (no bare `*`): a
/// transaction names what it touches.
fn check_aws(i: usize, fields: &BTreeMap<String, BTreeSet<String>>) -> Result<(), String> {
    let action_ok = |a: &str| {
        a.split_once(':').is_some_and(|(svc, act)| {
            !svc.is_empty()
                && svc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !act.is_empty()
                && act.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?')
        })
    };
    for a in fields.get("actions").into_iter().flatten() {
        if !action_ok(a) {
            return Err(format!(
                "authorization_details[{i}].actions: `{}` is not an IAM action (service:Action)",
                escape(a)
            ));
        }
    }
    for r in fields.get("resources").into_iter().flatten() {
        if !r.starts_with("arn:") || r.chars().any(char::is_whitespace) {
            return Err(format!("authorization_details[{i}].resources: `{}` is not an ARN", escape(r)));
        }
    }
    Ok(())
}

fn escape(s: &str) -> String {
    ephemera_providers::error::escape_untrusted(s, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(toml_roles: &str) -> std::sync::Arc<Role> {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
issuer = "https://broker.example.com"
[audit]
path = "a.jsonl"
[[providers]]
name = "p"
profile = "oidc"
issuer = "https://ci.example.com"
audiences = ["x"]
{toml_roles}"#
        );
        let raw: crate::config::RawConfig = toml::from_str(&text).unwrap();
        let config = crate::config::Config::from_raw(raw, std::path::Path::new(".")).unwrap();
        config.roles["r"].clone()
    }

    const ROLE: &str = r#"
[[roles]]
name = "r"
provider = "p"
max_ttl = "5m"
require_authorization_details = true
conditions = { sub = "agent-1" }
[[roles.authorization_details]]
type = "incident_record"
fields = ["record_id", "project"]
required = ["record_id"]
[roles.credential]
kind = "jwt"
audience = "api"
"#;

    #[test]
    fn details_are_what_the_role_declares() {
        let r = role(ROLE);
        let ok = check(&r, Some(r#"[{"type":"incident_record","record_id":"INC-1","project":["a","b"]}]"#))
            .unwrap()
            .unwrap();
        assert_eq!(ok.sets()["incident_record"]["project"].len(), 2);
        assert_eq!(ok.granted()[0]["record_id"], "INC-1");
        for bad in [
            r#"[{"type":"other","record_id":"x"}]"#,
            r#"[{"type":"incident_record","record_id":"x","extra":"y"}]"#,
            r#"[{"type":"incident_record","project":"a"}]"#,
            r#"[{"type":"incident_record","record_id":1}]"#,
            r#"{"type":"incident_record","record_id":"x"}"#,
            r#"[]"#,
            "not json",
        ] {
            assert!(check(&r, Some(bad)).is_err(), "{bad}");
        }
        assert!(check(&r, None).is_err(), "required");
    }
}

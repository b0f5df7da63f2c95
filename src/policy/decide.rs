//! A decision on one role for one workload now: the Cedar request built from the schema's own
//! types (principal = the workload, resource = the role, context = times, revocation, raw
//! claims), evaluated against the role's slice. Total: an evaluation problem is a deny.

use super::GUARDRAIL_REVOCATION;
use super::PolicyEngine;
use super::compile::CompiledRole;
use super::decision::{ConditionResult, Decision, Effect, esc};
use super::matcher::Source;
use super::native::{Native, determining};
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityUid, Request,
    RestrictedExpression,
};
use ephemera_providers::profile::{Workload, lookup, scalar_text};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// What a decision is taken at, besides who asks and for what: the times (now, the assertion's
/// `iat` and `exp`), the revocation keys in force for the workload, and the RFC 9396 details asked for.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub times: (i64, i64, i64),
    pub revoked: &'a [String],
    pub details: Option<&'a super::DetailSets>,
}

impl PolicyEngine {
    /// Decides `role` for a workload now, with the revocation keys in force for it (`times`:
    /// now, the assertion's `iat` and `exp`). Never fails: an evaluation problem is a deny with
    /// the problem in `errors`.
    pub fn decide(
        &self,
        role: &CompiledRole,
        workload: &Workload,
        claims: &Map<String, Value>,
        iss: &str,
        at: &At<'_>,
    ) -> Decision {
        match &role.native {
            Some(native) if !self.user_guardrails => self.decide_native(role, native, workload, claims, iss, at),
            _ => self.decide_cedar(role, workload, claims, iss, at),
        }
    }

    /// The native evaluator's decision on a role written as conditions (`native.rs`).
    fn decide_native(
        &self,
        role: &CompiledRole,
        native: &[Native],
        workload: &Workload,
        claims: &Map<String, Value>,
        iss: &str,
        at: &At<'_>,
    ) -> Decision {
        let declared = self.attributes.get(&role.profile).map(Vec::as_slice).unwrap_or_default();
        let pass: Vec<bool> = role
            .conditions
            .iter()
            .zip(native)
            .map(|(c, m)| {
                // the value the Cedar request would carry for the condition
                match c.source {
                    Source::Attribute => match c.claim.as_str() {
                        "iss" => m.matches(iss),
                        "sub" => m.matches(&claims.get("sub").and_then(scalar_text).unwrap_or_default()),
                        "provider" => m.matches(&role.provider),
                        n if declared.contains(&n) => workload.attributes.get(n).is_some_and(|v| m.matches(v)),
                        _ => false,
                    },
                    Source::Claim => {
                        self.raw_claims.contains(&c.claim)
                            && lookup(claims, &c.claim).and_then(scalar_text).is_some_and(|v| m.matches(&v))
                    }
                }
            })
            .collect();
        let revoked = !at.revoked.is_empty();
        let permit = iss == role.issuer;
        let allow = permit && !revoked && pass.iter().all(|p| *p);
        let failed: Vec<&str> =
            role.condition_ids.iter().zip(&pass).filter(|(_, p)| !**p).map(|(id, _)| id.as_str()).collect();
        let policies = determining(allow, &role.permit_id, &failed, revoked);
        let guardrails = if revoked && !allow { vec![GUARDRAIL_REVOCATION.to_owned()] } else { vec![] };
        let mut i = 0;
        Decision {
            effect: if allow { Effect::Allow } else { Effect::Deny },
            conditions: self.condition_results(role, workload, claims, iss, |_| {
                let p = allow || pass[i];
                i += 1;
                p
            }),
            policies,
            guardrails,
            errors: vec![],
            revoked: at.revoked.to_vec(),
        }
    }

    /// Each condition's result for people (the issuer binding first when it failed); `pass` is
    /// asked once per condition, in order.
    fn condition_results(
        &self,
        role: &CompiledRole,
        workload: &Workload,
        claims: &Map<String, Value>,
        iss: &str,
        mut pass: impl FnMut(&super::matcher::Condition) -> bool,
    ) -> Vec<ConditionResult> {
        // The permit binds the provider's issuer: a token whose issuer differs (a synthetic claim
        // set in `explain --claims`; a verified token never gets here with another issuer) shows
        // the binding that failed, not "no permit matched" alone.
        let issuer_row = (iss != role.issuer).then(|| ConditionResult {
            claim: "iss".into(),
            expected: format!("{} (the provider's issuer)", role.issuer),
            got: Some(esc(iss)),
            pass: false,
            hint: None,
        });
        issuer_row
            .into_iter()
            .chain(role.conditions.iter().map(|c| {
                let got = match c.source {
                    Source::Attribute => match c.claim.as_str() {
                        "iss" => Some(iss.to_owned()),
                        "sub" => claims.get("sub").and_then(scalar_text),
                        n => workload.attributes.get(n).cloned(),
                    },
                    Source::Claim => lookup(claims, &c.claim).and_then(scalar_text),
                };
                let pass = pass(c);
                let expected = c.matcher.describe();
                let hint = match &got {
                    Some(g) if !pass && g.eq_ignore_ascii_case(&expected) => {
                        Some("differs only in letter case; comparison is case-sensitive")
                    }
                    Some(g) if !pass && g.trim() == expected => Some("differs only in surrounding white space"),
                    _ => None,
                };
                ConditionResult { claim: c.claim.clone(), expected, got: got.map(|g| esc(&g)), pass, hint }
            }))
            .collect()
    }

    /// Cedar's decision on the role's slice: the engine for raw `policy` text and guardrails, and
    /// the reference the native evaluator is held to.
    pub fn decide_cedar(
        &self,
        role: &CompiledRole,
        workload: &Workload,
        claims: &Map<String, Value>,
        iss: &str,
        at: &At<'_>,
    ) -> Decision {
        let (now, iat, exp) = at.times;
        let (revoked, details) = (at.revoked, at.details);
        let results = |fired: &HashSet<String>| -> Vec<ConditionResult> {
            self.condition_results(role, workload, claims, iss, |c| !fired.contains(&c.policy_id(&role.name)))
        };
        let fail = |e: String| Decision {
            effect: Effect::Deny,
            conditions: results(&HashSet::new())
                .into_iter()
                .map(|mut c| {
                    c.pass = false;
                    c
                })
                .collect(),
            policies: vec![],
            guardrails: vec![],
            errors: vec![e],
            revoked: revoked.to_vec(),
        };
        let profile = role.profile;
        let Some(ty) = self.types.get(&profile) else { return fail("no entity type for the profile".into()) };
        let principal = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(&workload.subject));
        let declared = self.attributes.get(&profile).map(Vec::as_slice).unwrap_or_default();
        let mut attrs: HashMap<String, RestrictedExpression> = workload
            .attributes
            .iter()
            .filter(|(k, _)| declared.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
            .collect();
        attrs.insert("iss".into(), RestrictedExpression::new_string(iss.to_owned()));
        attrs.insert(
            "sub".into(),
            RestrictedExpression::new_string(claims.get("sub").and_then(scalar_text).unwrap_or_default()),
        );
        attrs.insert("provider".into(), RestrictedExpression::new_string(role.provider.clone()));
        let resource_attrs = HashMap::from([
            ("name".to_owned(), RestrictedExpression::new_string(role.name.clone())),
            ("provider".to_owned(), RestrictedExpression::new_string(role.provider.clone())),
        ]);
        let entities = match (
            Entity::new(principal.clone(), attrs, HashSet::new()),
            Entity::new(role.uid.clone(), resource_attrs, HashSet::new()),
        ) {
            (Ok(p), Ok(r)) => match Entities::from_entities([p, r], None) {
                Ok(e) => e,
                Err(e) => return fail(e.to_string()),
            },
            (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
        };
        let raw: Vec<(String, RestrictedExpression)> = self
            .raw_claims
            .iter()
            .filter_map(|c| {
                lookup(claims, c).and_then(scalar_text).map(|v| (c.clone(), RestrictedExpression::new_string(v)))
            })
            .collect();
        // every declared type and field is there (empty sets when not asked for): a policy reads
        // them without `has`
        let details = self.details.iter().map(|(t, fields)| {
            let asked = details.and_then(|d| d.get(t));
            let f = fields.iter().map(|f| {
                let values = asked.and_then(|a| a.get(f)).into_iter().flatten();
                (f.clone(), RestrictedExpression::new_set(values.map(|v| RestrictedExpression::new_string(v.clone()))))
            });
            RestrictedExpression::new_record(f).map(|r| (t.clone(), r))
        });
        let details = match details.collect::<Result<Vec<_>, _>>().and_then(RestrictedExpression::new_record) {
            Ok(d) => d,
            Err(e) => return fail(e.to_string()),
        };
        let context = match RestrictedExpression::new_record(raw).map_err(|e| e.to_string()).and_then(|claims| {
            Context::from_pairs([
                ("authorization_details".to_owned(), details),
                ("now".to_owned(), RestrictedExpression::new_long(now)),
                ("iat".to_owned(), RestrictedExpression::new_long(iat)),
                ("exp".to_owned(), RestrictedExpression::new_long(exp)),
                ("revoked".to_owned(), RestrictedExpression::new_bool(!revoked.is_empty())),
                ("claims".to_owned(), claims),
            ])
            .map_err(|e| e.to_string())
        }) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        // The request is built here from the schema's own types, and every policy was validated
        // against that schema at load; re-validating each request costs ~10% of a decision, so
        // release builds skip it and debug builds (every test) keep it as an assertion.
        let schema = cfg!(debug_assertions).then_some(&self.schema);
        let request = match Request::new(principal, self.action.clone(), role.uid.clone(), context, schema) {
            Ok(r) => r,
            Err(e) => return fail(e.to_string()),
        };
        let response = Authorizer::new().is_authorized(&request, &role.policies, &entities);
        // in id order (Cedar keeps them in a set)
        let mut determining: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        determining.sort();
        let errors: Vec<String> = response.diagnostics().errors().map(ToString::to_string).collect();
        let allow = response.decision() == CedarDecision::Allow && errors.is_empty();
        let fired: HashSet<String> = if allow { HashSet::new() } else { determining.iter().cloned().collect() };
        let guardrails = determining.iter().filter(|id| id.starts_with("guardrail:")).cloned().collect();
        Decision {
            effect: if allow { Effect::Allow } else { Effect::Deny },
            conditions: results(&fired),
            policies: determining,
            guardrails,
            errors,
            revoked: revoked.to_vec(),
        }
    }
}

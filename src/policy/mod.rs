//! Trust policy, decided by Cedar on every exchange. Plain data in (a role spec, a workload,
//! claims, revocation keys), a [`Decision`] out: policy never reads config, state or minting.
//!
//! A role compiles, once at load, into its own Cedar policy slice (plus the global guardrails):
//!
//! - a `permit` scoped to the role, the provider's workload type and the provider's issuer
//!   (`principal.iss` is bound exactly, whatever else the role says);
//! - one `forbid … unless { condition }` per condition, with the id `role:NAME/condition:CLAIM`,
//!   so a deny names exactly the conditions that failed, straight from Cedar's own diagnostics;
//! - when the role carries raw Cedar (`policy`), its policies replace the generated `permit` and
//!   the conditions still apply (both must hold);
//! - the guardrails (`[policy] guardrails`): global `forbid`s for revocations and incident
//!   response, in every slice.
//!
//! The model: principal = the workload (one entity type per profile, attributes = the profile's
//! normalised claims plus `iss`, `sub`, `provider`), action = `Ephemera::Action::"exchange"`,
//! resource = `Ephemera::Role::"NAME"`, context = `now`, the token's `iat`/`exp`, and `claims`,
//! the raw claims that any condition or schema-declared policy names. The schema is generated
//! from the profiles and every policy is validated against it (strict mode) at load.
//!
//! Conditions: `claim = "value"` is exact and case-sensitive; `claim = ["a", "b"]` is any of;
//! a value containing `*` is a glob where each `*` matches text without `/` or `:` (Cedar's
//! `like` would let it run across them, so the glob compiles to `like` plus, per star, the
//! refusal of a match in which that star spans a separator — where a pattern can match a value in
//! several ways, this errs towards deny). A claim named by a profile attribute (`repository`,
//! `namespace`, …) reads the normalised attribute; any other name reads the raw claim, nested ones
//! by dotted path. A claim the token lacks fails its condition.

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use ephemera_attestation::AttestationKind;
use ephemera_providers::profile::{Profile, Workload, lookup, scalar_text};
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;

mod decision;
mod lint;
mod matcher;

pub use decision::{ConditionResult, Decision, GUARDRAIL_REVOCATION};
pub use lint::{Finding, Severity};
pub use matcher::{Condition, Matcher, Source};

use decision::esc;
use lint::lint;
use matcher::cedar_str;

const NS: &str = "Ephemera";

/// The compiled policy world: schema, guardrails, and the names of raw claims policies read.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Schema,
    guardrails: PolicySet,
    raw_claims: BTreeSet<String>,
    action: EntityUid,
    types: HashMap<Profile, EntityTypeName>,
    /// The principal attribute names of each profile.
    attributes: HashMap<Profile, Vec<&'static str>>,
    role_type: EntityTypeName,
}

/// The principal attributes of a workload of `profile`, each with whether it is required: an
/// OIDC profile's normalised claims (declared by `providers`), or the evidence attributes its
/// attestation verifier declares beside the code that emits them (`attestation`), all optional.
pub fn principal_attributes(profile: Profile) -> Vec<(&'static str, bool)> {
    let kind = match profile {
        Profile::Nitro => AttestationKind::Nitro,
        Profile::Ec2Iid => AttestationKind::Ec2InstanceIdentity,
        Profile::X509Pop => AttestationKind::X509ProofOfPossession,
        Profile::GithubActions | Profile::Gitlab | Profile::Kubernetes | Profile::Gcp | Profile::Oidc => {
            return profile.attributes().collect();
        }
    };
    kind.attributes().iter().map(|n| (*n, false)).collect()
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(&format!("{NS}::{name}")).map_err(|e| e.to_string())
}

/// A role as policy sees it, before compilation: plain data, no config.
#[derive(Debug)]
pub struct RoleSpec {
    pub name: String,
    /// The profile of the role's provider: its workload type and attributes.
    pub profile: Profile,
    /// The provider's issuer (`principal.iss` is bound to it exactly).
    pub issuer: String,
    /// The provider's name (`principal.provider` is bound to it exactly).
    pub provider: String,
    pub conditions: Vec<(String, Matcher)>,
    /// Raw Cedar, instead of or in addition to conditions (both must hold).
    pub policy: Option<String>,
    /// Accept a role that does not pin the workload's identity.
    pub allow_broad: bool,
}

/// A role compiled into its own Cedar slice (its policies and the guardrails).
#[derive(Debug)]
pub struct CompiledRole {
    name: String,
    profile: Profile,
    provider: String,
    conditions: Vec<Condition>,
    policies: PolicySet,
    /// The role as a Cedar entity id.
    uid: EntityUid,
}

impl CompiledRole {
    /// The role's conditions, as compiled.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl PolicyEngine {
    /// The schema for these raw claim names; `raw_claims` are all claim names conditions read raw.
    pub fn new(raw_claims: BTreeSet<String>, guardrails: Option<&str>) -> Result<PolicyEngine, String> {
        let mut entity_types = Map::new();
        let mut principals = Vec::new();
        for p in Profile::ALL {
            let mut attrs = Map::new();
            for base in ["iss", "sub", "provider"] {
                attrs.insert(base.into(), json!({"type": "String"}));
            }
            for (name, required) in principal_attributes(p) {
                attrs.insert(name.into(), json!({"type": "String", "required": required}));
            }
            entity_types.insert(p.entity_type().into(), json!({"shape": {"type": "Record", "attributes": attrs}}));
            principals.push(p.entity_type());
        }
        entity_types.insert(
            "Role".into(),
            json!({"shape": {"type": "Record", "attributes": {"name": {"type": "String"}, "provider": {"type": "String"}}}}),
        );
        let claim_attrs: Map<String, Value> =
            raw_claims.iter().map(|c| (c.clone(), json!({"type": "String", "required": false}))).collect();
        let schema_json = json!({ NS: {
            "entityTypes": entity_types,
            "actions": { "exchange": { "appliesTo": {
                "principalTypes": principals,
                "resourceTypes": ["Role"],
                "context": { "type": "Record", "attributes": {
                    "now": {"type": "Long"},
                    "iat": {"type": "Long"},
                    "exp": {"type": "Long"},
                    "revoked": {"type": "Boolean"},
                    "claims": {"type": "Record", "attributes": claim_attrs},
                }},
            }}},
        }});
        let schema = Schema::from_json_value(schema_json).map_err(|e| format!("schema: {e}"))?;
        let mut guard = PolicySet::new();
        // Revocations (ended tasks, incident response) are Cedar input like any other: the
        // state store says which keys are revoked, this forbid acts on it.
        let revocation = Policy::parse(
            Some(PolicyId::new(GUARDRAIL_REVOCATION)),
            "forbid(principal, action, resource) when { context.revoked };",
        )
        .map_err(|e| format!("built-in revocation policy: {e}"))?;
        guard.add(revocation).map_err(|e| format!("built-in revocation policy: {e}"))?;
        if let Some(text) = guardrails {
            let parsed = PolicySet::from_str(text).map_err(|e| format!("policy.guardrails: {e}"))?;
            for (i, p) in parsed.policies().enumerate() {
                if p.effect() != cedar_policy::Effect::Forbid {
                    return Err(format!("policy.guardrails: policy {i} is a permit; guardrails may only forbid"));
                }
                let id = p.annotation("id").map_or_else(|| format!("guardrail:{i}"), |a| format!("guardrail:{a}"));
                guard.add(p.new_id(PolicyId::new(id))).map_err(|e| format!("policy.guardrails: {e}"))?;
            }
            validate(&schema, &guard).map_err(|e| format!("policy.guardrails: {e}"))?;
        }
        let types = Profile::ALL
            .iter()
            .map(|p| type_name(p.entity_type()).map(|t| (*p, t)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        let action = EntityUid::from_type_name_and_id(type_name("Action")?, EntityId::new("exchange"));
        let attributes =
            Profile::ALL.iter().map(|p| (*p, principal_attributes(*p).into_iter().map(|(n, _)| n).collect())).collect();
        Ok(PolicyEngine {
            schema,
            guardrails: guard,
            raw_claims,
            action,
            types,
            attributes,
            role_type: type_name("Role")?,
        })
    }

    /// Whether a condition claim reads a normalised attribute of this profile or a raw claim.
    pub fn source_for(profile: Profile, claim: &str) -> Source {
        if ["iss", "sub"].contains(&claim) || principal_attributes(profile).iter().any(|(n, _)| *n == claim) {
            Source::Attribute
        } else {
            Source::Claim
        }
    }

    /// Compiles a role into its Cedar slice and lints it.
    pub fn compile(&self, spec: RoleSpec) -> Result<(CompiledRole, Vec<Finding>), Vec<String>> {
        let profile = spec.profile;
        let ty = format!("{NS}::{}", profile.entity_type());
        let scope = format!(
            "principal is {ty}, action == {NS}::Action::\"exchange\", resource == {NS}::Role::{}",
            cedar_str(&spec.name)
        );
        let conditions: Vec<Condition> = spec
            .conditions
            .into_iter()
            .map(|(claim, matcher)| Condition { source: Self::source_for(profile, &claim), claim, matcher })
            .collect();
        let mut errs = Vec::new();
        let mut set = PolicySet::new();
        fn add(set: &mut PolicySet, id: String, text: String, errs: &mut Vec<String>) {
            match Policy::parse(Some(PolicyId::new(&id)), &text) {
                Ok(p) => {
                    if let Err(e) = set.add(p) {
                        errs.push(format!("{id}: {e}"));
                    }
                }
                Err(e) => errs.push(format!("{id}: {e}")),
            }
        }
        let binding = format!(
            "principal.iss == {} && principal.provider == {}",
            cedar_str(&spec.issuer),
            cedar_str(&spec.provider)
        );
        match &spec.policy {
            None => add(
                &mut set,
                format!("role:{}/permit", spec.name),
                format!("permit({scope}) when {{ {binding} }};"),
                &mut errs,
            ),
            Some(text) => match PolicySet::from_str(text) {
                Err(e) => errs.push(format!("policy: {e}")),
                Ok(user) => {
                    for (i, p) in user.policies().enumerate() {
                        let id = p.annotation("id").map_or_else(|| format!("policy{i}"), str::to_owned);
                        let id = format!("role:{}/{id}", spec.name);
                        // The user's policies are this role's only: they are evaluated only for it.
                        if let Err(e) = set.add(p.new_id(PolicyId::new(&id))) {
                            errs.push(format!("policy: {e}"));
                        }
                    }
                    // The issuer and provider binding holds whatever the raw policy says.
                    add(
                        &mut set,
                        format!("role:{}/issuer", spec.name),
                        format!("forbid({scope}) unless {{ {binding} }};"),
                        &mut errs,
                    );
                }
            },
        }
        for c in &conditions {
            add(
                &mut set,
                c.policy_id(&spec.name),
                format!("forbid({scope}) unless {{ {} }};", c.cedar_expr()),
                &mut errs,
            );
        }
        if errs.is_empty()
            && let Err(e) = validate(&self.schema, &set)
        {
            errs.push(format!("policy does not validate against the schema: {e}"));
        }
        for g in self.guardrails.policies() {
            if let Err(e) = set.add(g.clone()) {
                errs.push(format!("guardrail: {e}"));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let findings = lint(&spec.name, profile, &conditions, spec.allow_broad);
        let uid = EntityUid::from_type_name_and_id(self.role_type.clone(), EntityId::new(&spec.name));
        Ok((
            CompiledRole { name: spec.name, profile, provider: spec.provider, conditions, policies: set, uid },
            findings,
        ))
    }

    /// Decides `role` for a workload now, with the revocation keys in force for it (`times`:
    /// now, the assertion's `iat` and `exp`). Never fails: an evaluation problem is a deny with
    /// the problem in `errors`.
    pub fn decide(
        &self,
        role: &CompiledRole,
        workload: &Workload,
        claims: &Map<String, Value>,
        iss: &str,
        times: (i64, i64, i64),
        revoked: &[String],
    ) -> Decision {
        let (now, iat, exp) = times;
        let results = |fired: &HashSet<String>| -> Vec<ConditionResult> {
            role.conditions
                .iter()
                .map(|c| {
                    let got = match c.source {
                        Source::Attribute => match c.claim.as_str() {
                            "iss" => Some(iss.to_owned()),
                            "sub" => claims.get("sub").and_then(scalar_text),
                            n => workload.attributes.get(n).cloned(),
                        },
                        Source::Claim => lookup(claims, &c.claim).and_then(scalar_text),
                    };
                    let pass = !fired.contains(&c.policy_id(&role.name));
                    let expected = c.matcher.describe();
                    let hint = match &got {
                        Some(g) if !pass && g.eq_ignore_ascii_case(&expected) => {
                            Some("differs only in letter case; comparison is case-sensitive")
                        }
                        Some(g) if !pass && g.trim() == expected => Some("differs only in surrounding white space"),
                        _ => None,
                    };
                    ConditionResult { claim: c.claim.clone(), expected, got: got.map(|g| esc(&g)), pass, hint }
                })
                .collect()
        };
        let fail = |e: String| Decision {
            allow: false,
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
        let context = match RestrictedExpression::new_record(raw).map_err(|e| e.to_string()).and_then(|claims| {
            Context::from_pairs([
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
        let determining: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        let errors: Vec<String> = response.diagnostics().errors().map(ToString::to_string).collect();
        let allow = response.decision() == CedarDecision::Allow && errors.is_empty();
        let fired: HashSet<String> = if allow { HashSet::new() } else { determining.iter().cloned().collect() };
        let guardrails = determining.iter().filter(|id| id.starts_with("guardrail:")).cloned().collect();
        Decision {
            allow,
            conditions: results(&fired),
            policies: determining,
            guardrails,
            errors,
            revoked: revoked.to_vec(),
        }
    }
}

fn validate(schema: &Schema, set: &PolicySet) -> Result<(), String> {
    let result = Validator::new(schema.clone()).validate(set, ValidationMode::Strict);
    if result.validation_passed() {
        Ok(())
    } else {
        Err(result.validation_errors().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review (b) bug 7: the attestation attribute lists had drifted from what the verifiers
    /// emit (EC2 `version`, `signature_form`, `legacy_crypto`; X.509 `not_before`, `not_after`;
    /// Nitro `timestamp`, `public_key_present`, `nonce_present`, `pcr16`…`pcr31`). Now every one
    /// is a principal attribute, read as such by a condition; a name no verifier emits stays a
    /// raw claim.
    #[test]
    fn every_emitted_evidence_attribute_is_a_principal_attribute() {
        for (profile, name) in [
            (Profile::Ec2Iid, "version"),
            (Profile::Ec2Iid, "signature_form"),
            (Profile::Ec2Iid, "legacy_crypto"),
            (Profile::X509Pop, "not_before"),
            (Profile::X509Pop, "not_after"),
            (Profile::Nitro, "timestamp"),
            (Profile::Nitro, "public_key_present"),
            (Profile::Nitro, "nonce_present"),
            (Profile::Nitro, "pcr31"),
            (Profile::Ec2Iid, "accountId"),
        ] {
            assert_eq!(PolicyEngine::source_for(profile, name), Source::Attribute, "{profile:?} {name}");
        }
        assert_eq!(PolicyEngine::source_for(Profile::Nitro, "pcr32"), Source::Claim);
        assert_eq!(PolicyEngine::source_for(Profile::GithubActions, "version"), Source::Claim);
    }
}

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
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use ephemera_attestation::AttestationKind;
use ephemera_providers::profile::Profile;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

mod compile;
mod decide;
mod decision;
mod lint;
mod matcher;
mod native;

pub use compile::{CompiledRole, RoleSpec};
pub use decide::At;
pub use decision::{ConditionResult, Decision, Effect, GUARDRAIL_REVOCATION};
pub use lint::{Finding, Severity};
pub use matcher::{Condition, Matcher, Source};

const NS: &str = "Ephemera";

/// RFC 9396 authorization details as Cedar sees them: per type, per field, the strings asked
/// for (several objects of one type merged).
pub type DetailSets = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The compiled policy world: schema, guardrails, and the names of raw claims policies read.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Schema,
    guardrails: PolicySet,
    raw_claims: BTreeSet<String>,
    /// Every declared RFC 9396 type and its fields: `context.authorization_details`.
    details: BTreeMap<String, BTreeSet<String>>,
    action: EntityUid,
    types: HashMap<Profile, EntityTypeName>,
    /// The principal attribute names of each profile.
    attributes: HashMap<Profile, Vec<&'static str>>,
    role_type: EntityTypeName,
    /// `[policy] guardrails` are configured: every decision is Cedar's (they are Cedar text).
    user_guardrails: bool,
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

impl PolicyEngine {
    /// The schema for these raw claim names; `raw_claims` are all claim names conditions read raw.
    /// `details`: every declared authorization detail type and its fields (each a
    /// `Set<String>` in `context.authorization_details.TYPE.FIELD`, empty when not asked for).
    pub fn new(
        raw_claims: BTreeSet<String>,
        details: BTreeMap<String, BTreeSet<String>>,
        guardrails: Option<&str>,
    ) -> Result<PolicyEngine, String> {
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
        let detail_attrs: Map<String, Value> = details
            .iter()
            .map(|(t, fields)| {
                let f: Map<String, Value> =
                    fields.iter().map(|f| (f.clone(), json!({"type": "Set", "element": {"type": "String"}}))).collect();
                (t.clone(), json!({"type": "Record", "attributes": f}))
            })
            .collect();
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
                    "authorization_details": {"type": "Record", "attributes": detail_attrs},
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
        // more than the built-in revocation forbid
        let user_guardrails = guard.policies().count() > 1;
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
            details,
            action,
            types,
            attributes,
            role_type: type_name("Role")?,
            user_guardrails,
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

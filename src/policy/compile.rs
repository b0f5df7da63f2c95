//! A role compiled, once at load, into its own Cedar slice: a `permit` bound to the provider's
//! workload type, issuer and name (or the role's raw Cedar plus that binding as a `forbid`), one
//! `forbid … unless` per condition, validated against the schema, then the guardrails; linted.

use super::lint::{Finding, lint};
use super::matcher::{Condition, Matcher, cedar_str};
use super::native::Native;
use super::{NS, PolicyEngine, validate};
use cedar_policy::{EntityId, EntityUid, Policy, PolicyId, PolicySet};
use ephemera_providers::profile::Profile;
use std::str::FromStr;

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
    /// How many trust anchors the provider has (x509-pop; 0 otherwise).
    pub trust_anchors: usize,
}

/// A role compiled into its own Cedar slice (its policies and the guardrails).
#[derive(Debug)]
pub struct CompiledRole {
    pub(super) name: String,
    pub(super) profile: Profile,
    pub(super) provider: String,
    /// The provider's issuer the role's permit binds `principal.iss` to.
    pub(super) issuer: String,
    pub(super) conditions: Vec<Condition>,
    pub(super) policies: PolicySet,
    /// The role as a Cedar entity id.
    pub(super) uid: EntityUid,
    /// The conditions' matchers for the native evaluator, when the role has no raw `policy`.
    pub(super) native: Option<Vec<Native>>,
    /// The ids of the role's generated permit and of each condition's forbid.
    pub(super) permit_id: String,
    pub(super) condition_ids: Vec<String>,
}

impl CompiledRole {
    /// The role's conditions, as compiled.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl PolicyEngine {
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
        let findings = lint(&spec.name, profile, &conditions, spec.allow_broad, spec.trust_anchors);
        let uid = EntityUid::from_type_name_and_id(self.role_type.clone(), EntityId::new(&spec.name));
        let native = spec.policy.is_none().then(|| conditions.iter().map(|c| Native::of(&c.matcher)).collect());
        let condition_ids = conditions.iter().map(|c| c.policy_id(&spec.name)).collect();
        Ok((
            CompiledRole {
                permit_id: format!("role:{}/permit", spec.name),
                name: spec.name,
                profile,
                provider: spec.provider,
                issuer: spec.issuer,
                conditions,
                policies: set,
                uid,
                native,
                condition_ids,
            },
            findings,
        ))
    }
}

//! Trust policy, decided by Cedar on every exchange.
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

use crate::config::Provider;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use ephemera_providers::profile::{Profile, Workload, lookup, scalar_text};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "Ephemera";

/// What a condition accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Matcher {
    Exact(String),
    Glob(String),
    AnyOf(Vec<Matcher>),
}

impl Matcher {
    /// From a config value: a string (exact, or a glob when it holds `*`) or an array of them.
    pub fn parse(v: &toml::Value) -> Result<Matcher, String> {
        let one = |s: &str| if s.contains('*') { Matcher::Glob(s.to_owned()) } else { Matcher::Exact(s.to_owned()) };
        match v {
            toml::Value::String(s) => Ok(one(s)),
            toml::Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_str().map(one).ok_or_else(|| "array members must be strings".to_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map(Matcher::AnyOf),
            toml::Value::Array(_) => Err("an empty array matches nothing".into()),
            other => Err(format!("expected a string or an array of strings, got {}", other.type_str())),
        }
    }

    /// Every alternative is an exact value (a pin, not a pattern).
    pub fn is_exact(&self) -> bool {
        match self {
            Matcher::Exact(_) => true,
            Matcher::Glob(_) => false,
            Matcher::AnyOf(m) => m.iter().all(Matcher::is_exact),
        }
    }

    fn describe(&self) -> String {
        match self {
            Matcher::Exact(s) | Matcher::Glob(s) => s.clone(),
            Matcher::AnyOf(m) => format!("one of [{}]", m.iter().map(Matcher::describe).collect::<Vec<_>>().join(", ")),
        }
    }

    fn cedar(&self, target: &str) -> String {
        match self {
            Matcher::Exact(s) => format!("{target} == {}", cedar_str(s)),
            Matcher::Glob(p) => {
                let parts: Vec<&str> = p.split('*').collect();
                let join = |star: Option<(usize, &str)>| -> String {
                    let mut out = String::new();
                    for (i, lit) in parts.iter().enumerate() {
                        out.push_str(&like_escape(lit));
                        if i + 1 < parts.len() {
                            match star {
                                Some((j, sep)) if j == i => out.push_str(&format!("*{sep}*")),
                                _ => out.push('*'),
                            }
                        }
                    }
                    format!("\"{out}\"")
                };
                let mut clauses = vec![format!("{target} like {}", join(None))];
                for i in 0..parts.len().saturating_sub(1) {
                    for sep in ["/", ":"] {
                        clauses.push(format!("!({target} like {})", join(Some((i, sep)))));
                    }
                }
                format!("({})", clauses.join(" && "))
            }
            Matcher::AnyOf(m) => format!("({})", m.iter().map(|x| x.cedar(target)).collect::<Vec<_>>().join(" || ")),
        }
    }
}

/// A Cedar string literal.
fn cedar_str(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

/// A literal for inside a Cedar `like` pattern (escapes, with `*` already split out).
fn like_escape(s: &str) -> String {
    s.escape_default().to_string()
}

/// Where a condition reads its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A normalised attribute of the profile.
    Attribute,
    /// A raw claim (dotted path for nested claims).
    Claim,
}

/// One condition of a role.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub claim: String,
    pub matcher: Matcher,
    pub source: Source,
}

impl Condition {
    fn policy_id(&self, role: &str) -> String {
        format!("role:{role}/condition:{}", self.claim)
    }

    fn cedar_expr(&self) -> String {
        let (obj, key) = match self.source {
            Source::Attribute => ("principal", cedar_str(&self.claim)),
            Source::Claim => ("context.claims", cedar_str(&self.claim)),
        };
        format!("{obj} has {key} && {}", self.matcher.cedar(&format!("{obj}[{key}]")))
    }
}

/// What a role hands out.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Credential {
    /// A broker-signed JWT for this audience.
    Jwt { audience: String },
    /// An AWS STS session for this role.
    #[serde(skip)]
    Aws(crate::minting::aws::AwsRole),
    /// A GCP access token for this service account.
    #[serde(skip)]
    Gcp(crate::minting::gcp::GcpRole),
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Jwt { .. } => "jwt",
            Credential::Aws(_) => "aws",
            Credential::Gcp(_) => "gcp",
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
    pub allow_broad: bool,
    /// nitro: debug-mode enclaves admitted.
    pub allow_debug: bool,
    /// This role's Cedar slice: its own policies and the guardrails.
    pub policies: PolicySet,
    /// The role as a Cedar entity id.
    uid: EntityUid,
}

/// A problem found in a role at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub role: String,
    /// `error` refuses the config; `warning` is printed and logged at every start.
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
}

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

fn esc(s: &str) -> String {
    ephemera_providers::error::escape_untrusted(s, 128)
}

/// The decision on one role, with what made it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub allow: bool,
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
    /// The reasons for a deny, short form, `; `-separated.
    pub fn reasons(&self) -> String {
        let mut r: Vec<String> = self.conditions.iter().filter(|c| !c.pass).map(ConditionResult::short).collect();
        r.extend(self.guardrails.iter().map(|g| match g.as_str() {
            "guardrail:revocation" => format!("revoked ({})", self.revoked.join(", ")),
            _ => format!("guardrail {g}"),
        }));
        r.extend(self.errors.iter().map(|e| format!("policy error: {e}")));
        if r.is_empty() && !self.allow {
            r.push("no permit policy matched".into());
        }
        r.join("; ")
    }

    /// The failed condition names only (for `detail = "reason"`).
    pub fn failed_names(&self) -> String {
        let mut r: Vec<String> =
            self.conditions.iter().filter(|c| !c.pass).map(|c| format!("condition {}", c.claim)).collect();
        r.extend(self.guardrails.iter().map(|g| match g.as_str() {
            "guardrail:revocation" => format!("revoked ({})", self.revoked.join(", ")),
            _ => format!("guardrail {g}"),
        }));
        if r.is_empty() {
            r.push("no permit policy matched".into());
        }
        r.join("; ")
    }
}

/// The compiled policy world: schema, guardrails, and the names of raw claims policies read.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Schema,
    guardrails: PolicySet,
    raw_claims: BTreeSet<String>,
    action: EntityUid,
    types: HashMap<Profile, EntityTypeName>,
    role_type: EntityTypeName,
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(&format!("{NS}::{name}")).map_err(|e| e.to_string())
}

/// The raw role as config gives it, before compilation.
#[derive(Debug)]
pub struct RoleSpec {
    pub name: String,
    pub provider: Arc<Provider>,
    pub max_ttl: Duration,
    pub conditions: Vec<(String, Matcher)>,
    pub policy: Option<String>,
    pub credential: Credential,
    pub allow_broad: bool,
    pub allow_debug: bool,
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
            for (name, required) in p.attributes() {
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
            Some(PolicyId::new("guardrail:revocation")),
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
        Ok(PolicyEngine { schema, guardrails: guard, raw_claims, action, types, role_type: type_name("Role")? })
    }

    /// Whether a condition claim reads a normalised attribute of this profile or a raw claim.
    pub fn source_for(profile: Profile, claim: &str) -> Source {
        if ["iss", "sub"].contains(&claim) || profile.attributes().any(|(n, _)| n == claim) {
            Source::Attribute
        } else {
            Source::Claim
        }
    }

    /// Compiles a role into its Cedar slice and lints it.
    pub fn compile(&self, spec: RoleSpec) -> Result<(Role, Vec<Finding>), Vec<String>> {
        let profile = spec.provider.profile;
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
            cedar_str(&spec.provider.rules.issuer),
            cedar_str(&spec.provider.name)
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
        let findings = lint(&spec.name, profile, &conditions, spec.policy.is_some(), spec.allow_broad);
        let uid = EntityUid::from_type_name_and_id(self.role_type.clone(), EntityId::new(&spec.name));
        Ok((
            Role {
                name: spec.name,
                provider: spec.provider,
                max_ttl: spec.max_ttl,
                conditions,
                credential: spec.credential,
                allow_broad: spec.allow_broad,
                allow_debug: spec.allow_debug,
                policies: set,
                uid,
            },
            findings,
        ))
    }

    /// Decides `role` for a workload now. Never fails: an evaluation problem is a deny with the
    /// problem in `errors`.
    pub fn decide(
        &self,
        role: &Role,
        workload: &Workload,
        claims: &Map<String, Value>,
        iss: &str,
        times: (i64, i64, i64),
    ) -> Decision {
        self.decide_with(role, workload, claims, iss, times, &[])
    }

    /// [`PolicyEngine::decide`] with the revocation keys in force for this workload now.
    pub fn decide_with(
        &self,
        role: &Role,
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
        let profile = role.provider.profile;
        let Some(ty) = self.types.get(&profile) else { return fail("no entity type for the profile".into()) };
        let principal = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(&workload.subject));
        let mut attrs: HashMap<String, RestrictedExpression> = workload
            .attributes
            .iter()
            .filter(|(k, _)| profile.attributes().any(|(n, _)| n == k.as_str()))
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
            .collect();
        attrs.insert("iss".into(), RestrictedExpression::new_string(iss.to_owned()));
        attrs.insert(
            "sub".into(),
            RestrictedExpression::new_string(claims.get("sub").and_then(scalar_text).unwrap_or_default()),
        );
        attrs.insert("provider".into(), RestrictedExpression::new_string(role.provider.name.clone()));
        let resource_attrs = HashMap::from([
            ("name".to_owned(), RestrictedExpression::new_string(role.name.clone())),
            ("provider".to_owned(), RestrictedExpression::new_string(role.provider.name.clone())),
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

fn finding(role: &str, severity: &'static str, code: &'static str, message: impl Into<String>) -> Finding {
    Finding { role: role.to_owned(), severity, code, message: message.into() }
}

/// Strict by default: a role must pin the workload's identity for its profile with exact values.
fn lint(role: &str, profile: Profile, conditions: &[Condition], raw_policy: bool, allow_broad: bool) -> Vec<Finding> {
    let pinned = |claim: &str| conditions.iter().any(|c| c.claim == claim && c.matcher.is_exact());
    let named = |claim: &str| conditions.iter().any(|c| c.claim == claim);
    let mut out = Vec::new();
    let (ok, missing): (bool, &str) = match profile {
        Profile::GithubActions => {
            if !pinned("repository_id") && pinned("repository") && !pinned("repository_owner_id") {
                out.push(finding(
                    role,
                    "warning",
                    "name_only_identity",
                    "pins `repository` by name only: a deleted and re-created repository of that name would inherit this trust; pin `repository_id` (or `repository_owner_id` too)",
                ));
            }
            if !named("ref") && !named("environment") && !named("event_name") && !named("job_workflow_ref") {
                out.push(finding(
                    role,
                    "warning",
                    "any_trigger",
                    "no `ref`, `environment`, `event_name` or `job_workflow_ref` condition: any branch, pull request or trigger of the repository may use this role",
                ));
            }
            (
                pinned("repository_id") || pinned("repository"),
                "`repository_id` (or `repository`) with an exact value; `sub` alone is customisable and name-based",
            )
        }
        Profile::Gitlab => {
            if !pinned("project_id") && pinned("project_path") {
                out.push(finding(
                    role,
                    "warning",
                    "name_only_identity",
                    "pins `project_path` by name only: pin `project_id`, which cannot be re-registered",
                ));
            }
            (pinned("project_id") || pinned("project_path"), "`project_id` (or `project_path`) with an exact value")
        }
        Profile::Kubernetes => {
            (pinned("namespace") && pinned("service_account"), "`namespace` and `service_account` with exact values")
        }
        Profile::Gcp => {
            if !pinned("sub") && pinned("email") {
                out.push(finding(role, "warning", "name_only_identity", "pins `email` only: a deleted and re-created service account of that email gets a new `sub`; pin `sub` (the unique id)"));
            }
            (pinned("sub") || pinned("email"), "`sub` (or a verified `email`) with an exact value")
        }
        Profile::Oidc => (pinned("sub"), "`sub` with an exact value"),
        Profile::Nitro => {
            let pcrs: Vec<&Condition> =
                conditions.iter().filter(|c| c.claim.starts_with("pcr") && c.matcher.is_exact()).collect();
            for c in &pcrs {
                if let Matcher::Exact(v) = &c.matcher {
                    if v.len() != 96 || !v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                        out.push(finding(
                            role,
                            "error",
                            "pcr_invalid",
                            format!("condition {}: a PCR is 48 bytes as 96 lower-case hex digits", c.claim),
                        ));
                    } else if v.bytes().all(|b| b == b'0') {
                        out.push(finding(
                            role,
                            "error",
                            "pcr_zero",
                            format!("condition {}: an all-zero PCR is a debug enclave's; it pins nothing", c.claim),
                        ));
                    }
                }
            }
            (!pcrs.is_empty(), "a PCR (`pcr0`, `pcr1`, `pcr2`, `pcr8` …) with an exact, non-zero value")
        }
        Profile::Ec2Iid => (pinned("accountId"), "`accountId` with an exact value"),
        Profile::X509Pop => (
            pinned("spiffe_id") || pinned("subject_cn") || pinned("subject_dn"),
            "`spiffe_id` (or `subject_cn`, `subject_dn`) with an exact value",
        ),
    };
    let _ = raw_policy;
    match (ok, allow_broad) {
        (true, _) => {}
        (false, true) => out.push(finding(
            role,
            "warning",
            "allow_broad",
            format!("allow_broad = true: this role does not pin the workload's identity ({missing}); any workload of the issuer that meets its other conditions may use it"),
        )),
        (false, false) => out.push(finding(
            role,
            "error",
            "policy_unscoped",
            format!("does not pin the workload's identity: needs {missing}; say `allow_broad = true` to accept broad trust in so many words"),
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_compiles_so_stars_stop_at_separators() {
        let m = Matcher::Glob("repo:acme/*".into());
        let e = m.cedar("x");
        assert!(e.contains(r#"x like "repo:acme/*""#), "{e}");
        assert!(e.contains(r#"!(x like "repo:acme/*/*")"#), "{e}");
        assert!(e.contains(r#"!(x like "repo:acme/*:*")"#), "{e}");
    }

    #[test]
    fn string_literals_are_escaped() {
        assert_eq!(cedar_str("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}

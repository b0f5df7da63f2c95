//! `[[roles]]`: who may get which credential, for how long at most. Each role's conditions and
//! Cedar compile (in `policy`) into the role's own policy slice; its credential settings are
//! checked here and minted by `minting`.

use super::defaults::*;
use super::parse_duration;
use super::provider::Provider;
use super::raw::{RawConfig, RawCredential};
use crate::minting::CredentialSpec;
use crate::minting::aws::{AwsRole, check_tag};
use crate::minting::gcp::GcpRole;
use crate::policy::{CompiledRole, Finding, Matcher, PolicyEngine, RoleSpec, Severity, Source};
use ephemera_providers::profile::Profile;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A role: who may get which credential, for how long at most.
#[derive(Debug)]
pub struct Role {
    pub name: String,
    pub provider: Arc<Provider>,
    pub max_ttl: Duration,
    pub credential: CredentialSpec,
    /// nitro: debug-mode enclaves admitted.
    pub allow_debug: bool,
    /// The role's conditions and Cedar, compiled.
    pub policy: CompiledRole,
    /// jwt: how many times partners may consume the token (`None`: no limit).
    pub max_uses: Option<u32>,
    /// The RFC 9396 authorization details a request may carry.
    pub details: DetailRules,
}

/// A role's `authorization_details` declarations.
#[derive(Debug, Default)]
pub struct DetailRules {
    /// A request without details is refused.
    pub require: bool,
    /// Type → its rules.
    pub types: BTreeMap<String, DetailType>,
}

/// One declared RFC 9396 type.
#[derive(Debug)]
pub struct DetailType {
    /// The fields a detail may carry besides `type`.
    pub fields: BTreeSet<String>,
    /// The fields it must carry.
    pub required: Vec<String>,
}

/// Every declared type and its fields, over all roles: Cedar's `context.authorization_details`.
pub(super) fn detail_schema(raw: &RawConfig) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in raw.roles.iter().flat_map(|r| &r.authorization_details) {
        out.entry(d.kind.clone()).or_default().extend(d.fields.iter().cloned());
    }
    out
}

/// A role's `authorization_details` tables, checked.
fn details(key: &str, r: &super::raw::RawRole, aws: bool, errs: &mut Vec<String>) -> DetailRules {
    use crate::minting::aws::AWS_IAM;
    let mut types = BTreeMap::new();
    for (i, d) in r.authorization_details.iter().enumerate() {
        let at = format!("{key}.authorization_details[{i}]");
        let type_ok = |t: &str| {
            !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
        };
        let field_ok = |f: &str| {
            !f.is_empty() && f.len() <= 64 && f != "type" && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !type_ok(&d.kind) {
            errs.push(format!("{at}.type: 1 to 128 letters, digits and _ . : / - only"));
        }
        if types.contains_key(&d.kind) {
            errs.push(format!("{at}.type: `{}` is declared twice", d.kind));
        }
        for f in d.fields.iter().filter(|f| !field_ok(f)) {
            errs.push(format!("{at}.fields: `{f}`: 1 to 64 letters, digits and _ only, not `type`"));
        }
        for f in d.required.iter().filter(|f| !d.fields.contains(f)) {
            errs.push(format!("{at}.required: `{f}` is not one of its fields"));
        }
        if d.kind == AWS_IAM {
            let mut f = d.fields.clone();
            f.sort();
            if !aws {
                errs.push(format!("{at}.type: `{AWS_IAM}` is for aws roles (it becomes the session policy)"));
            } else if f != ["actions", "resources"] {
                errs.push(format!("{at}.fields: `{AWS_IAM}` has exactly the fields actions and resources"));
            }
        }
        let mut required = d.required.clone();
        if d.kind == AWS_IAM {
            required = vec!["actions".into(), "resources".into()];
        }
        types.insert(d.kind.clone(), DetailType { fields: d.fields.iter().cloned().collect(), required });
    }
    if r.require_authorization_details && types.is_empty() {
        errs.push(format!("{key}.require_authorization_details: the role declares no authorization_details types"));
    }
    DetailRules { require: r.require_authorization_details, types }
}

/// The most uses a use-limited role may allow.
pub(super) const MAX_USES: u32 = 10_000;

/// The policy engine: the schema (with every raw claim any condition reads) and the guardrails.
pub(super) fn engine(raw: &RawConfig, errs: &mut Vec<String>) -> Option<PolicyEngine> {
    // Which raw claims any condition reads: they become the schema's `context.claims`.
    let raw_claims: BTreeSet<String> = raw
        .roles
        .iter()
        .flat_map(|r| {
            let profile =
                raw.providers.iter().find(|p| p.name == r.provider).and_then(|p| Profile::parse(&p.profile).ok());
            r.conditions
                .keys()
                .filter(move |c| profile.is_some_and(|pr| PolicyEngine::source_for(pr, c) == Source::Claim))
                .cloned()
        })
        .collect();
    match PolicyEngine::new(raw_claims, detail_schema(raw), raw.policy.guardrails.as_deref()) {
        Ok(e) => Some(e),
        Err(e) => {
            errs.push(e);
            None
        }
    }
}

/// Every `[[roles]]` entry, compiled, with the lint findings (an error finding is also in `errs`).
pub(super) fn build_all(
    raw: &RawConfig,
    providers: &[Arc<Provider>],
    engine: Option<&PolicyEngine>,
    errs: &mut Vec<String>,
) -> (HashMap<String, Arc<Role>>, Vec<Finding>) {
    let mut roles = HashMap::new();
    let mut findings = Vec::new();
    for (i, r) in raw.roles.iter().enumerate() {
        let key = format!("roles[{i}] (`{}`)", r.name);
        if roles.contains_key(&r.name) {
            errs.push(format!("{key}.name: duplicate role name"));
        }
        if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b)) {
            errs.push(format!("{key}.name: use letters, digits and - _ . : / only"));
        }
        let provider = providers.iter().find(|p| p.name == r.provider).cloned();
        if provider.is_none() && !raw.providers.iter().any(|p| p.name == r.provider) {
            errs.push(format!("{key}.provider: no provider named `{}`", r.provider));
        }
        let max_ttl = parse_duration(&format!("{key}.max_ttl"), &r.max_ttl, errs);
        if max_ttl.is_some_and(|d| d.as_secs() == 0 || d.as_secs() > MAX_ROLE_TTL_SECS) {
            errs.push(format!("{key}.max_ttl: must be between 1s and 12h"));
        }
        check_claim_names(&key, r, raw, errs);
        let mut conditions = Vec::new();
        for (claim, v) in &r.conditions {
            match Matcher::parse(v) {
                Ok(m) => conditions.push((claim.clone(), m)),
                Err(e) => errs.push(format!("{key}.conditions.{claim}: {e}")),
            }
        }
        let is_aws = matches!(r.credential, RawCredential::Aws { .. });
        let details = details(&key, r, is_aws, errs);
        let Some(credential) = credential(&key, &r.credential, errs) else { continue };
        if let Some(n) = r.max_uses {
            if !matches!(credential, CredentialSpec::Jwt { .. }) {
                errs.push(format!(
                    "{key}.max_uses: only broker JWTs can be use-limited (partners consume them at /v1/introspect)"
                ));
            } else if n == 0 || n > MAX_USES {
                errs.push(format!("{key}.max_uses: must be between 1 and {MAX_USES}"));
            }
        }
        let (Some(provider), Some(max_ttl), Some(engine)) = (provider, max_ttl, engine) else { continue };
        if provider.profile == Profile::Ec2Iid && !r.accept_replayable {
            errs.push(format!(
                "{key}.accept_replayable: an EC2 instance identity document can be replayed for the life of the instance; say `accept_replayable = true` to accept it (Nitro or X.509 proof of possession prove freshness)"
            ));
        }
        if r.allow_debug && provider.profile != Profile::Nitro {
            errs.push(format!("{key}.allow_debug: only for nitro roles"));
        }
        let spec = RoleSpec {
            name: r.name.clone(),
            profile: provider.profile,
            issuer: provider.rules.issuer.clone(),
            provider: provider.name.clone(),
            conditions,
            policy: r.policy.clone(),
            allow_broad: r.allow_broad,
            trust_anchors: match &provider.kind {
                super::ProviderKind::Attestation { verifier: ephemera_attestation::Verifier::X509(v) } => {
                    v.anchor_count()
                }
                _ => 0,
            },
        };
        match engine.compile(spec) {
            Ok((policy, found)) => {
                for f in found {
                    if f.severity == Severity::Error {
                        errs.push(format!("{key}: {}: {}", f.code, f.message));
                    }
                    findings.push(f);
                }
                let role = Role {
                    name: r.name.clone(),
                    provider,
                    max_ttl,
                    credential,
                    allow_debug: r.allow_debug,
                    policy,
                    max_uses: r.max_uses,
                    details,
                };
                roles.insert(r.name.clone(), Arc::new(role));
            }
            Err(es) => errs.extend(es.into_iter().map(|e| format!("{key}: {e}"))),
        }
    }
    (roles, findings)
}

/// A platform profile's condition claims are its own names: a name it does not know (`reff` for
/// `ref`) is an error with the nearest one, unless it is a nested path (`ext.note`) or listed in
/// the role's `raw_claims` (a raw claim on purpose). The `oidc` profile takes any claim.
fn check_claim_names(key: &str, r: &super::raw::RawRole, raw: &RawConfig, errs: &mut Vec<String>) {
    let Some(profile) =
        raw.providers.iter().find(|p| p.name == r.provider).and_then(|p| Profile::parse(&p.profile).ok())
    else {
        return;
    };
    if profile == Profile::Oidc {
        return;
    }
    let known: Vec<String> = ["iss", "sub"]
        .into_iter()
        .chain(crate::policy::principal_attributes(profile).into_iter().map(|(n, _)| n))
        .map(str::to_owned)
        .collect();
    for claim in r.conditions.keys() {
        if known.contains(claim) || claim.contains('.') || r.raw_claims.contains(claim) {
            continue;
        }
        let hint =
            super::unknown::suggestion(claim, &known).map(|s| format!("did you mean `{s}`? ")).unwrap_or_default();
        errs.push(format!(
            "{key}.conditions.{claim}: `{claim}` is not a {} claim; {hint}(a raw claim on purpose: raw_claims = [\"{claim}\"])",
            profile.name()
        ));
    }
}

/// A role's `credential` table, checked.
fn credential(key: &str, c: &RawCredential, errs: &mut Vec<String>) -> Option<CredentialSpec> {
    let before = errs.len();
    let out = match c {
        RawCredential::Jwt { audience } => {
            if audience.is_empty() {
                errs.push(format!("{key}.credential.audience: must not be empty"));
            }
            CredentialSpec::Jwt { audience: audience.clone() }
        }
        RawCredential::Aws {
            role_arn,
            region,
            endpoint_url,
            session_tags,
            transitive_tag_keys,
            external_id,
            policy_arns,
            session_policy,
            allow_role_chaining,
            end_sessions_on_revoke,
        } => {
            let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
            let arn_ok = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "iam"
                && parts[4].len() == 12
                && parts[4].bytes().all(|b| b.is_ascii_digit())
                && parts[5].starts_with("role/");
            if !arn_ok {
                errs.push(format!("{key}.credential.role_arn: `{role_arn}` is not an IAM role ARN"));
            }
            if session_tags.len() > MAX_SESSION_TAGS {
                errs.push(format!("{key}.credential.session_tags: at most {MAX_SESSION_TAGS}"));
            }
            for k in session_tags.keys() {
                if let Err(e) = check_tag(k, "") {
                    errs.push(format!("{key}.credential.session_tags: {e}"));
                }
            }
            for k in transitive_tag_keys {
                if !session_tags.contains_key(k) {
                    errs.push(format!("{key}.credential.transitive_tag_keys: `{k}` is not a session tag"));
                }
            }
            if let Some(u) = endpoint_url
                && url::Url::parse(u).is_err()
            {
                errs.push(format!("{key}.credential.endpoint_url: not a URL"));
            }
            let statements = match session_policy.as_deref().map(serde_json::from_str::<serde_json::Value>) {
                None => None,
                Some(Ok(serde_json::Value::Array(a))) if a.iter().all(serde_json::Value::is_object) => Some(a),
                Some(_) => {
                    errs.push(format!("{key}.credential.session_policy: must be a JSON array of IAM statements"));
                    None
                }
            };
            CredentialSpec::Aws(AwsRole {
                role_arn: role_arn.clone(),
                region: region.clone(),
                endpoint_url: endpoint_url.clone(),
                session_tags: session_tags.clone(),
                transitive_tag_keys: transitive_tag_keys.clone(),
                external_id: external_id.clone(),
                policy_arns: policy_arns.clone(),
                statements,
                allow_role_chaining: *allow_role_chaining,
                end_sessions_on_revoke: *end_sessions_on_revoke,
            })
        }
        RawCredential::Gcp { service_account, scopes, delegates } => {
            let sa_ok =
                |s: &str| s.split_once('@').is_some_and(|(a, d)| !a.is_empty() && d.contains('.')) && !s.contains('/');
            if !sa_ok(service_account) {
                errs.push(format!(
                    "{key}.credential.service_account: `{service_account}` is not a service account email"
                ));
            }
            if scopes.is_empty() {
                errs.push(format!("{key}.credential.scopes: at least one scope is required"));
            }
            for d in delegates {
                if !sa_ok(d) {
                    errs.push(format!("{key}.credential.delegates: `{d}` is not a service account email"));
                }
            }
            CredentialSpec::Gcp(GcpRole {
                service_account: service_account.clone(),
                scopes: scopes.clone(),
                delegates: delegates.clone(),
            })
        }
    };
    (errs.len() == before).then_some(out)
}

//! Trust policy: Cedar compilation, the strictness lint, and decisions on realistic claim sets
//! (ATTACKS.md cases 12–22), through the same config loader and engine the server uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ephemera::config::{Config, ConfigErrors, RawConfig};
use ephemera::policy::Decision;
use ephemera_providers::profile::Profile;
use serde_json::{Map, Value, json};
use std::path::Path;

const HEAD: &str = r#"
[server]
listen = "127.0.0.1:0"
issuer = "https://broker.example.com"
[audit]
path = "audit.jsonl"
[[providers]]
name = "gh"
profile = "github-actions"
issuer = "https://token.actions.githubusercontent.com"
audiences = ["https://broker.example.com"]
[[providers]]
name = "gl"
profile = "gitlab"
issuer = "https://gitlab.com"
audiences = ["https://broker.example.com"]
[[providers]]
name = "k8s"
profile = "kubernetes"
issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
audiences = ["https://broker.example.com"]
[[providers]]
name = "google"
profile = "gcp"
issuer = "https://accounts.google.com"
audiences = ["https://broker.example.com"]
[[providers]]
name = "generic"
profile = "oidc"
issuer = "https://idp.example.com"
audiences = ["https://broker.example.com"]
"#;

fn load(extra: &str) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = toml::from_str(&format!("{HEAD}{extra}")).map_err(|e| ConfigErrors(vec![e.to_string()]))?;
    Config::from_raw(raw, Path::new("."))
}

fn role(provider: &str, conditions: &str) -> String {
    format!(
        r#"
[[roles]]
name = "r"
provider = "{provider}"
max_ttl = "15m"
conditions = {{ {conditions} }}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#
    )
}

fn errors(extra: &str) -> String {
    match load(extra) {
        Ok(_) => String::new(),
        Err(e) => e.0.join("\n"),
    }
}

fn warnings(extra: &str) -> Vec<&'static str> {
    load(extra).unwrap_or_else(|e| panic!("{e}")).findings.iter().map(|f| f.code).collect()
}

fn github() -> Value {
    json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "https://broker.example.com",
        "sub": "repo:acme/app:environment:production", "repository": "acme/app", "repository_id": "123456789",
        "repository_owner": "acme", "repository_owner_id": "987654", "ref": "refs/heads/main", "ref_type": "branch",
        "environment": "production", "event_name": "push", "run_id": "9876543210", "run_attempt": "1",
        "job_workflow_ref": "acme/wf/.github/workflows/deploy.yml@refs/tags/v1", "runner_environment": "github-hosted",
        "iat": 1_800_000_000, "exp": 1_800_000_300,
    })
}

fn decide(config: &Config, claims: &Value) -> Decision {
    let role = &config.roles["r"];
    let claims: Map<String, Value> = claims.as_object().cloned().unwrap();
    let profile: Profile = role.provider.profile;
    let workload = profile.workload_from_claims(&claims, None, "test").unwrap();
    let iss = claims["iss"].as_str().unwrap();
    config.engine.decide(
        &role.policy,
        &workload,
        &claims,
        iss,
        &ephemera::policy::At { times: (1_800_000_100, 1_800_000_000, 1_800_000_300), revoked: &[], details: None },
    )
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

#[test]
fn strict_by_default_each_profile_must_pin_the_workload() {
    // GitHub: sub alone, an owner alone, a glob alone: refused (case 12, 14)
    for c in [
        r#"sub = "repo:acme/app:ref:refs/heads/main""#,
        r#"repository_owner_id = "987654""#,
        r#"repository = "acme/*""#,
        r#"ref = "refs/heads/main""#,
    ] {
        assert!(errors(&role("gh", c)).contains("policy_unscoped"), "{c}");
    }
    // ... accepted with allow_broad, which stays a warning
    let broad = role("gh", r#"repository = "acme/*", ref = "refs/heads/main", event_name = "push""#)
        .replace("max_ttl", "allow_broad = true\nmax_ttl");
    assert_eq!(warnings(&broad), ["allow_broad"]);
    // pinned by immutable id: no finding; by name only: a warning naming re-registration
    let push = r#"ref = "refs/heads/main", event_name = "push""#;
    assert!(warnings(&role("gh", &format!(r#"repository_id = "123456789", {push}"#))).is_empty());
    assert_eq!(warnings(&role("gh", &format!(r#"repository = "acme/app", {push}"#))), ["name_only_identity"]);
    assert_eq!(warnings(&role("gh", r#"repository_id = "123456789""#)), ["any_trigger"]);
    // `ref` alone does not pin the trigger: pull_request_target and workflow_run carry the
    // default branch's ref (review C11); `event_name` or an `environment` does
    assert_eq!(warnings(&role("gh", r#"repository_id = "123456789", ref = "refs/heads/main""#)), ["ref_any_trigger"]);
    assert!(
        warnings(&role("gh", r#"repository_id = "123456789", ref = "refs/heads/main", environment = "prod""#))
            .is_empty()
    );
    // GitLab, Kubernetes, GCP, generic OIDC
    assert!(errors(&role("gl", r#"ref = "main""#)).contains("policy_unscoped"));
    assert!(warnings(&role("gl", r#"project_id = "2""#)).is_empty());
    // GitLab's `ref` is the bare name: without `ref_type` a tag of that name matches (C11)
    assert_eq!(warnings(&role("gl", r#"project_id = "2", ref = "main""#)), ["ref_without_type"]);
    assert!(warnings(&role("gl", r#"project_id = "2", ref = "main", ref_type = "branch""#)).is_empty());
    assert!(errors(&role("k8s", r#"namespace = "ci""#)).contains("policy_unscoped"));
    assert!(warnings(&role("k8s", r#"namespace = "ci", service_account = "deployer""#)).is_empty());
    assert!(errors(&role("google", r#"project_id = "p""#)).contains("policy_unscoped"));
    assert_eq!(warnings(&role("google", r#"email = "sa@p.iam.gserviceaccount.com""#)), ["name_only_identity"]);
    assert!(errors(&role("generic", r#"aud = "x""#)).contains("policy_unscoped"));
    assert!(warnings(&role("generic", r#"sub = "svc-1""#)).is_empty());
}

#[test]
fn cedar_errors_stop_the_load_with_cedars_message() {
    let syntax = role("gh", r#"repository_id = "1""#)
        .replace("max_ttl", "policy = \"permit(principal, action, resource) when { oops\"\nmax_ttl");
    assert!(errors(&syntax).contains("policy"), "{}", errors(&syntax));
    let unknown_attr = role("gh", r#"repository_id = "1""#).replace(
        "max_ttl",
        "policy = \"permit(principal, action, resource) when { principal.no_such_attr == 1 };\"\nmax_ttl",
    );
    assert!(errors(&unknown_attr).contains("validate"), "{}", errors(&unknown_attr));
    let permit_guardrail = format!(
        "{}\n[policy]\nguardrails = \"permit(principal, action, resource);\"",
        role("gh", r#"repository_id = "1""#)
    );
    assert!(errors(&permit_guardrail).contains("guardrails may only forbid"));
    // the positive twin of each
    let good = role("gh", r#"repository_id = "123456789", ref = "refs/heads/main""#)
        .replace("max_ttl", "policy = \"permit(principal is Ephemera::GithubWorkload, action, resource) when { principal has environment && principal.environment == \\\"production\\\" };\"\nmax_ttl");
    let c = load(&good).unwrap_or_else(|e| panic!("{e}"));
    assert!(decide(&c, &github()).allows());
    assert!(
        !decide(&c, &with(github(), "environment", json!("staging"))).allows(),
        "raw policy and conditions both hold"
    );
}

#[test]
fn anchoring_globs_and_separators() {
    let c = load(&role("gh", r#"repository_id = "123456789", repository_owner = "acme", ref = "refs/heads/main""#))
        .unwrap();
    assert!(decide(&c, &github()).allows());
    let d = decide(&c, &with(github(), "repository_owner", json!("acme-evil")));
    assert!(!d.allows());
    assert_eq!(d.reasons(), "condition repository_owner: expected `acme`, got `acme-evil`");
    assert!(d.policies.contains(&"role:r/condition:repository_owner".to_owned()), "{:?}", d.policies);
    assert!(!decide(&c, &with(github(), "ref", json!("refs/heads/main-evil"))).allows());

    // a glob on sub stops at / and :
    let c = load(&role("gh", r#"repository_id = "123456789", sub = "repo:acme/*""#)).unwrap();
    assert!(decide(&c, &with(github(), "sub", json!("repo:acme/app"))).allows());
    assert!(!decide(&c, &with(github(), "sub", json!("repo:acme/x:ref:refs/heads/main"))).allows());
    assert!(!decide(&c, &with(github(), "sub", json!("repo:acme-evil/x:ref:refs/heads/main"))).allows());
    assert!(!decide(&c, &with(github(), "sub", json!("repo:acme/a/b"))).allows());
    // no regular expressions: `(123|456)` is literal
    let c = load(&role("gh", r#"repository_id = "(123|456)""#)).unwrap();
    assert!(!decide(&c, &with(github(), "repository_id", json!("123999"))).allows());
}

#[test]
fn identity_permanence_and_privileged_triggers() {
    let c = load(&role("gh", r#"repository_id = "123456789", repository = "acme/app", event_name = ["push", "workflow_dispatch"], environment = "production""#)).unwrap();
    assert!(decide(&c, &github()).allows());
    // a recycled name: same repository, another id (case 14)
    let d = decide(&c, &with(github(), "repository_id", json!("555")));
    assert!(!d.allows() && d.reasons().contains("repository_id"));
    // pull_request_target / workflow_run on main (case 15)
    for ev in ["pull_request_target", "workflow_run", "pull_request"] {
        let d = decide(&c, &with(github(), "event_name", json!(ev)));
        assert!(!d.allows() && d.reasons().contains("condition event_name"), "{ev}");
    }
    assert!(decide(&c, &with(github(), "event_name", json!("workflow_dispatch"))).allows());
    // environment: missing, wrong case, trailing space (case 16), with a hint
    let mut no_env = github();
    no_env.as_object_mut().unwrap().remove("environment");
    assert!(decide(&c, &no_env).reasons().contains("token has no such claim"));
    let d = decide(&c, &with(github(), "environment", json!("Production")));
    assert!(!d.allows() && d.conditions.iter().any(|x| x.hint.is_some_and(|h| h.contains("letter case"))));
    assert!(!decide(&c, &with(github(), "environment", json!("production "))).allows());
}

#[test]
fn reusable_workflow_pin() {
    let c = load(&role(
        "gh",
        r#"repository_id = "123456789", job_workflow_ref = "acme/wf/.github/workflows/deploy.yml@refs/tags/v1""#,
    ))
    .unwrap();
    assert!(decide(&c, &github()).allows());
    for bad in ["evil/wf/.github/workflows/deploy.yml@main", "acme/wf/.github/workflows/deploy.yml@refs/heads/feature"]
    {
        assert!(!decide(&c, &with(github(), "job_workflow_ref", json!(bad))).allows(), "{bad}");
    }
}

#[test]
fn gcp_binds_the_unique_id_and_verified_email() {
    let c = load(&role("google", r#"sub = "1049", email = "sa@p.iam.gserviceaccount.com""#)).unwrap();
    let token = json!({"iss": "https://accounts.google.com", "sub": "1049", "email": "sa@p.iam.gserviceaccount.com", "email_verified": true});
    assert!(decide(&c, &token).allows());
    assert!(!decide(&c, &with(token.clone(), "sub", json!("2000"))).allows(), "re-created account, same email");
    assert!(!decide(&c, &with(token, "email_verified", json!(false))).allows(), "unverified email does not count");
}

#[test]
fn the_issuer_is_bound_by_every_role() {
    let c = load(&role("gh", r#"repository_id = "123456789", ref = "refs/heads/main""#)).unwrap();
    let other_iss = with(github(), "iss", json!("https://token.actions.githubusercontent.com/evil"));
    let d = decide(&c, &other_iss);
    assert!(!d.allows(), "{d:?}");
    assert!(decide(&c, &github()).allows());
}

#[test]
fn guardrails_forbid_across_roles_and_are_named() {
    let g = r#"
[policy]
guardrails = """
@id("incident-42")
forbid(principal is Ephemera::GithubWorkload, action, resource) when { principal.repository_owner_id == "987654" && context.now > 1700000000 };
"""
"#;
    let c = load(&format!("{}{g}", role("gh", r#"repository_id = "123456789", ref = "refs/heads/main""#))).unwrap();
    let d = decide(&c, &github());
    assert!(!d.allows());
    assert_eq!(d.guardrails, ["guardrail:incident-42"]);
    assert!(d.reasons().contains("guardrail guardrail:incident-42"));
    let other_owner = with(with(github(), "repository_owner_id", json!("1")), "repository_id", json!("123456789"));
    assert!(decide(&c, &other_owner).allows(), "the guardrail targets one owner only");
}

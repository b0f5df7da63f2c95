//! Strict by default: the findings on a role at load. An error refuses the config; a warning is
//! printed by `check` and logged at every start.

use super::matcher::Condition;
use ephemera_providers::profile::Profile;
use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Refuses the config.
    Error,
    /// Printed and logged at every start.
    Warning,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A problem found in a role at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub role: String,
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
}

fn finding(role: &str, severity: Severity, code: &'static str, message: impl Into<String>) -> Finding {
    Finding { role: role.to_owned(), severity, code, message: message.into() }
}

/// Strict by default: a role must pin the workload's identity for its profile with exact values.
pub(super) fn lint(
    role: &str,
    profile: Profile,
    conditions: &[Condition],
    allow_broad: bool,
    trust_anchors: usize,
) -> Vec<Finding> {
    let pinned = |claim: &str| conditions.iter().any(|c| c.claim == claim && c.matcher.is_exact());
    let named = |claim: &str| conditions.iter().any(|c| c.claim == claim);
    let mut out = Vec::new();
    let (ok, missing): (bool, &str) = match profile {
        Profile::GithubActions => {
            if !pinned("repository_id") && pinned("repository") && !pinned("repository_owner_id") {
                out.push(finding(
                    role,
                    Severity::Warning,
                    "name_only_identity",
                    "pins `repository` by name only: a deleted and re-created repository of that name would inherit this trust; pin `repository_id` (or `repository_owner_id` too)",
                ));
            }
            // `ref` alone does not say which trigger: `pull_request_target`, `workflow_run`,
            // `issue_comment` and `schedule` runs carry the default branch's ref while running
            // code a fork may influence (review C11).
            if !named("environment") && !named("event_name") && !named("job_workflow_ref") {
                let (code, text) = if named("ref") {
                    (
                        "ref_any_trigger",
                        "`ref` without `event_name` or `environment`: pull_request_target, workflow_run, issue_comment and schedule runs carry the default branch's ref too; pin `event_name` (e.g. `push`) or an `environment`",
                    )
                } else {
                    (
                        "any_trigger",
                        "no `ref`, `environment`, `event_name` or `job_workflow_ref` condition: any branch, pull request or trigger of the repository may use this role",
                    )
                };
                out.push(finding(role, Severity::Warning, code, text));
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
                    Severity::Warning,
                    "name_only_identity",
                    "pins `project_path` by name only: pin `project_id`, which cannot be re-registered",
                ));
            }
            // GitLab's `ref` is the bare name: a branch and a tag of the same name both match it
            if named("ref") && !named("ref_type") {
                out.push(finding(
                    role,
                    Severity::Warning,
                    "ref_without_type",
                    "`ref` without `ref_type`: a tag of the same name matches too (any developer may push an unprotected tag); pin `ref_type` (and `ref_protected = \"true\"`)",
                ));
            }
            (pinned("project_id") || pinned("project_path"), "`project_id` (or `project_path`) with an exact value")
        }
        Profile::Kubernetes => {
            (pinned("namespace") && pinned("service_account"), "`namespace` and `service_account` with exact values")
        }
        Profile::Gcp => {
            if !pinned("sub") && pinned("email") {
                out.push(finding(role, Severity::Warning, "name_only_identity", "pins `email` only: a deleted and re-created service account of that email gets a new `sub`; pin `sub` (the unique id)"));
            }
            (pinned("sub") || pinned("email"), "`sub` (or a verified `email`) with an exact value")
        }
        Profile::Oidc => (pinned("sub"), "`sub` with an exact value"),
        Profile::Nitro => {
            let pcrs: Vec<&Condition> =
                conditions.iter().filter(|c| c.claim.starts_with("pcr") && c.matcher.is_exact()).collect();
            for c in &pcrs {
                for v in c.matcher.exact_values() {
                    if v.len() != 96 || !v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                        out.push(finding(
                            role,
                            Severity::Error,
                            "pcr_invalid",
                            format!("condition {}: a PCR is 48 bytes as 96 lower-case hex digits", c.claim),
                        ));
                    } else if v.bytes().all(|b| b == b'0') {
                        out.push(finding(
                            role,
                            Severity::Error,
                            "pcr_zero",
                            format!("condition {}: an all-zero PCR is a debug enclave's; it pins nothing", c.claim),
                        ));
                    }
                }
            }
            (!pcrs.is_empty(), "a PCR (`pcr0`, `pcr1`, `pcr2`, `pcr8` …) with an exact, non-zero value")
        }
        Profile::Ec2Iid => (pinned("accountId"), "`accountId` with an exact value"),
        Profile::X509Pop => {
            // Any configured anchor may issue any name or SPIFFE ID: with several, the role says
            // which CA issues its workload (review C9).
            if trust_anchors > 1 && !pinned("anchor_sha256") {
                out.push(finding(
                    role,
                    Severity::Error,
                    "anchor_unpinned",
                    format!("the provider trusts {trust_anchors} anchors and any of them may issue any SPIFFE ID or name: pin `anchor_sha256` (the SHA-256 of the issuing CA's DER certificate)"),
                ));
            }
            (
                pinned("spiffe_id") || pinned("subject_cn") || pinned("subject_dn"),
                "`spiffe_id` (or `subject_cn`, `subject_dn`) with an exact value",
            )
        }
    };
    match (ok, allow_broad) {
        (true, _) => {}
        (false, true) => out.push(finding(
            role,
            Severity::Warning,
            "allow_broad",
            format!("allow_broad = true: this role does not pin the workload's identity ({missing}); any workload of the issuer that meets its other conditions may use it"),
        )),
        (false, false) => out.push(finding(
            role,
            Severity::Error,
            "policy_unscoped",
            format!("does not pin the workload's identity: needs {missing}; say `allow_broad = true` to accept broad trust in so many words"),
        )),
    }
    out
}

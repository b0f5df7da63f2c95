//! Platform profiles: what each platform's tokens must carry, who the workload is, and which task
//! it is doing. One table per platform; every required claim is checked by name, identifiers are
//! checked against the platform's own character set, and immutable ids are exposed beside names
//! so policies can pin what cannot be re-registered.
//!
//! | profile | issuer | identity (subject) | task id |
//! |---|---|---|---|
//! | `github-actions` | `https://token.actions.githubusercontent.com`, `…/ENTERPRISE`, GHES `https://HOST/_services/token` | `repo:OWNER@OWNER_ID/REPO@REPO_ID` | `REPO_ID/RUN_ID/RUN_ATTEMPT` |
//! | `gitlab` | gitlab.com or self-managed (https) | `project_path:PATH@PROJECT_ID` | `PROJECT_ID/PIPELINE_ID/JOB_ID` |
//! | `kubernetes` | the cluster's issuer (https) | `system:serviceaccount:NS:NAME` | the pod's uid |
//! | `gcp` | `https://accounts.google.com` | the verified service account email, else `sub` | the GCE instance id, else the assertion |
//! | `oidc` | any | `sub` | `jti`, else the assertion |
//!
//! Every profile also accepts an `http://` loopback issuer (local tests and `ephemera dev`).
//!
//! One concern in one file, longer than most: one declarative table per platform (a claim a
//! line) and the functions that read them. Keeping every platform's table in one screen-scrollable
//! file is what lets a reviewer audit a platform and compare it with the others.

use crate::error::VerifyError;
use crate::verify::VerifiedToken;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A platform profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    GithubActions,
    Gitlab,
    Kubernetes,
    Gcp,
    Oidc,
    /// AWS Nitro Enclaves attestation documents (verified by the attestation crate).
    Nitro,
    /// EC2 instance identity documents.
    Ec2Iid,
    /// X.509 proof of possession over a broker nonce.
    X509Pop,
}

/// How a normalised attribute is read from the token and checked.
#[derive(Debug, Clone, Copy)]
struct Attr {
    /// Normalised name (a Cedar principal attribute).
    name: &'static str,
    /// Claim path in the token (dotted for nested claims).
    claim: &'static str,
    required: bool,
    charset: Charset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// Decimal digits only.
    Digits,
    /// ASCII letters, digits, `-_.` and `/` (platform names and paths).
    Path,
    /// Printable text without control or invisible characters.
    Text,
    /// `true` or `false`.
    Bool,
}

const fn req(name: &'static str, claim: &'static str, charset: Charset) -> Attr {
    Attr { name, claim, required: true, charset }
}
const fn opt(name: &'static str, claim: &'static str, charset: Charset) -> Attr {
    Attr { name, claim, required: false, charset }
}

use Charset::{Bool, Digits, Path, Text};

const GITHUB: &[Attr] = &[
    req("repository", "repository", Path),
    req("repository_id", "repository_id", Digits),
    req("repository_owner", "repository_owner", Path),
    req("repository_owner_id", "repository_owner_id", Digits),
    req("run_id", "run_id", Digits),
    req("run_attempt", "run_attempt", Digits),
    req("event_name", "event_name", Path),
    opt("ref", "ref", Text),
    opt("ref_type", "ref_type", Path),
    opt("environment", "environment", Text),
    opt("workflow_ref", "workflow_ref", Text),
    opt("job_workflow_ref", "job_workflow_ref", Text),
    opt("runner_environment", "runner_environment", Path),
    opt("repository_visibility", "repository_visibility", Path),
    opt("actor", "actor", Path),
    opt("actor_id", "actor_id", Digits),
    opt("sha", "sha", Path),
    opt("workflow", "workflow", Text),
    opt("enterprise", "enterprise", Path),
];

const GITLAB: &[Attr] = &[
    req("project_path", "project_path", Path),
    req("project_id", "project_id", Digits),
    req("namespace_path", "namespace_path", Path),
    req("namespace_id", "namespace_id", Digits),
    req("ref", "ref", Text),
    req("ref_type", "ref_type", Path),
    req("pipeline_id", "pipeline_id", Digits),
    req("job_id", "job_id", Digits),
    opt("ref_protected", "ref_protected", Bool),
    opt("environment", "environment", Text),
    opt("environment_protected", "environment_protected", Bool),
    opt("pipeline_source", "pipeline_source", Path),
    opt("user_login", "user_login", Text),
    opt("user_id", "user_id", Digits),
    opt("runner_environment", "runner_environment", Path),
    opt("ci_config_ref_uri", "ci_config_ref_uri", Text),
];

const KUBERNETES: &[Attr] = &[
    req("namespace", "kubernetes.io.namespace", Path),
    req("service_account", "kubernetes.io.serviceaccount.name", Path),
    req("service_account_uid", "kubernetes.io.serviceaccount.uid", Text),
    req("pod", "kubernetes.io.pod.name", Path),
    req("pod_uid", "kubernetes.io.pod.uid", Text),
    opt("node", "kubernetes.io.node.name", Path),
];

const GCP: &[Attr] = &[
    opt("email", "email", Text),
    opt("email_verified", "email_verified", Bool),
    opt("project_id", "google.compute_engine.project_id", Path),
    opt("project_number", "google.compute_engine.project_number", Digits),
    opt("zone", "google.compute_engine.zone", Path),
    opt("instance_id", "google.compute_engine.instance_id", Digits),
    opt("instance_name", "google.compute_engine.instance_name", Path),
];

/// The normalised view of a verified token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// Stable identity of the workload within its issuer.
    pub subject: String,
    /// The task this assertion was issued for.
    pub task: String,
    /// Normalised attributes by name (only those the token carries).
    pub attributes: BTreeMap<String, String>,
}

/// Looks a claim up by name, or by dotted path into nested objects. Member names may contain dots
/// themselves (`kubernetes.io`), so every split point is tried, longest member name first.
pub fn lookup<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.rmatch_indices('.').find_map(|(i, _)| {
        let head = claims.get(&name[..i])?.as_object()?;
        lookup(head, &name[i + 1..])
    })
}

/// A scalar claim as text: strings as they are, numbers and booleans by their JSON text.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn fits(charset: Charset, s: &str) -> bool {
    if s.is_empty() || s.chars().count() > 255 {
        return false;
    }
    match charset {
        Digits => s.bytes().all(|b| b.is_ascii_digit()),
        Path => s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)) && !s.contains("//"),
        Bool => s == "true" || s == "false",
        Text => !s.chars().any(crate::verify::is_hidden_char),
    }
}

fn is_loopback_http(issuer: &str) -> bool {
    url::Url::parse(issuer).is_ok_and(|u| u.scheme() == "http" && crate::fetch::is_loopback_host(&u))
}

impl Profile {
    /// Parses a config value.
    pub fn parse(name: &str) -> Result<Profile, String> {
        match name {
            "github-actions" => Ok(Profile::GithubActions),
            "gitlab" => Ok(Profile::Gitlab),
            "kubernetes" => Ok(Profile::Kubernetes),
            "gcp" => Ok(Profile::Gcp),
            "oidc" => Ok(Profile::Oidc),
            "nitro" => Ok(Profile::Nitro),
            "aws-ec2-iid" => Ok(Profile::Ec2Iid),
            "x509-pop" => Ok(Profile::X509Pop),
            other => Err(format!(
                "unknown profile `{other}` (expected github-actions, gitlab, kubernetes, gcp, oidc, nitro, aws-ec2-iid or x509-pop)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::GithubActions => "github-actions",
            Profile::Gitlab => "gitlab",
            Profile::Kubernetes => "kubernetes",
            Profile::Gcp => "gcp",
            Profile::Oidc => "oidc",
            Profile::Nitro => "nitro",
            Profile::Ec2Iid => "aws-ec2-iid",
            Profile::X509Pop => "x509-pop",
        }
    }

    /// True for the attestation profiles (their providers verify documents, not OIDC tokens).
    pub fn is_attestation(self) -> bool {
        matches!(self, Profile::Nitro | Profile::Ec2Iid | Profile::X509Pop)
    }

    /// The `subject_token_type` this profile's assertions come as.
    pub fn token_types(self) -> &'static [&'static str] {
        match self {
            Profile::Nitro => &["urn:ephemera:token-type:nitro-attestation"],
            Profile::Ec2Iid => &["urn:ephemera:token-type:aws-ec2-iid"],
            Profile::X509Pop => &["urn:ephemera:token-type:x509-pop"],
            _ => &["urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:jwt"],
        }
    }

    pub const ALL: [Profile; 8] = [
        Profile::GithubActions,
        Profile::Gitlab,
        Profile::Kubernetes,
        Profile::Gcp,
        Profile::Oidc,
        Profile::Nitro,
        Profile::Ec2Iid,
        Profile::X509Pop,
    ];

    /// The Cedar entity type of this profile's workloads.
    pub fn entity_type(self) -> &'static str {
        match self {
            Profile::GithubActions => "GithubWorkload",
            Profile::Gitlab => "GitlabWorkload",
            Profile::Kubernetes => "KubernetesWorkload",
            Profile::Gcp => "GcpWorkload",
            Profile::Oidc => "OidcWorkload",
            Profile::Nitro => "NitroWorkload",
            Profile::Ec2Iid => "Ec2Workload",
            Profile::X509Pop => "X509Workload",
        }
    }

    fn table(self) -> &'static [Attr] {
        match self {
            Profile::GithubActions => GITHUB,
            Profile::Gitlab => GITLAB,
            Profile::Kubernetes => KUBERNETES,
            Profile::Gcp => GCP,
            Profile::Oidc | Profile::Nitro | Profile::Ec2Iid | Profile::X509Pop => &[],
        }
    }

    /// Normalised attribute names, each with whether the profile requires it. The attestation
    /// profiles have none here: their evidence attributes are declared by the verifiers that emit
    /// them (`ephemera_attestation::AttestationKind::attributes`).
    pub fn attributes(self) -> impl Iterator<Item = (&'static str, bool)> {
        self.table().iter().map(|a| (a.name, a.required))
    }

    /// The largest `exp - iat` this platform's tokens should have.
    pub fn default_max_lifetime(self) -> u64 {
        match self {
            // GitHub-hosted runners have issued 6 h tokens (exp - iat = 21,600 s, nbf = iat - 300)
            Profile::GithubActions => 6 * 3600,
            Profile::Gcp => 3600,
            Profile::Gitlab | Profile::Kubernetes | Profile::Oidc => 24 * 3600,
            Profile::Nitro | Profile::Ec2Iid | Profile::X509Pop => 300,
        }
    }

    /// Config-time check of the issuer against the platform's issuer shapes.
    pub fn check_issuer(self, issuer: &str) -> Result<(), String> {
        if is_loopback_http(issuer) {
            return Ok(());
        }
        let u = url::Url::parse(issuer).map_err(|e| e.to_string())?;
        let host = u.host_str().unwrap_or_default();
        let path = u.path().trim_end_matches('/');
        let ok = match self {
            Profile::GithubActions => {
                (host == "token.actions.githubusercontent.com"
                    && (path.is_empty() || (path.matches('/').count() == 1 && fits(Path, &path[1..]))))
                    || path == "/_services/token"
            }
            Profile::Gcp => issuer == "https://accounts.google.com",
            Profile::Gitlab | Profile::Kubernetes | Profile::Oidc => u.scheme() == "https",
            Profile::Nitro | Profile::Ec2Iid | Profile::X509Pop => true,
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                Profile::GithubActions => "is not a GitHub Actions issuer (https://token.actions.githubusercontent.com[/ENTERPRISE] or https://HOST/_services/token)".into(),
                Profile::Gcp => "is not https://accounts.google.com".into(),
                _ => "must be https".into(),
            })
        }
    }

    /// Explains a verification failure the platform's way, for tokens the platform deprecated.
    pub fn refine(self, err: VerifyError) -> VerifyError {
        let iss = match &err {
            VerifyError::IssuerNotTrusted { got } => Some(got.as_str()),
            _ => None,
        };
        match (self, &err) {
            (Profile::Gitlab, VerifyError::IssuerNotTrusted { .. }) if iss.is_some_and(|i| !i.contains("://")) => {
                VerifyError::LegacyToken {
                    slug: "token_type_refused",
                    what: "GitLab CI_JOB_JWT (v1: issuer without scheme, no aud) is deprecated and refused; use id_tokens with an aud",
                }
            }
            (Profile::Gitlab, VerifyError::ClaimMissing { claim: "aud" }) => VerifyError::LegacyToken {
                slug: "token_type_refused",
                what: "GitLab token without aud (CI_JOB_JWT v1) is refused; use id_tokens with an aud",
            },
            (Profile::Kubernetes, VerifyError::IssuerNotTrusted { .. }) if iss == Some("kubernetes/serviceaccount") => {
                VerifyError::LegacyToken {
                    slug: "exp_missing",
                    what: "legacy secret-based service account token (no exp, no aud) is refused; use a projected, bound token",
                }
            }
            _ => err,
        }
    }

    /// Reads the workload from a verified token: required claims, charset checks, identity, task.
    pub fn workload(self, token: &VerifiedToken) -> Result<Workload, VerifyError> {
        self.workload_from_claims(token.claims(), token.jti(), token.replay_id())
    }

    /// As [`Profile::workload`], from claims alone (`explain --claims`).
    pub fn workload_from_claims(
        self,
        claims: &Map<String, Value>,
        jti: Option<&str>,
        assertion_id: &str,
    ) -> Result<Workload, VerifyError> {
        let mut attributes = BTreeMap::new();
        for a in self.table() {
            match lookup(claims, a.claim) {
                None | Some(Value::Null) if a.required => return Err(VerifyError::ClaimMissing { claim: a.claim }),
                None | Some(Value::Null) => {}
                Some(v) => {
                    let text = scalar_text(v).ok_or(VerifyError::ClaimTypeInvalid { claim: a.claim })?;
                    if !fits(a.charset, &text) {
                        return Err(VerifyError::ClaimInvalid { claim: a.claim });
                    }
                    attributes.insert(a.name.to_owned(), text);
                }
            }
        }
        let get = |n: &str| attributes.get(n).cloned().unwrap_or_default();
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        let fallback_task =
            || jti.map_or_else(|| format!("assertion:{}", &assertion_id[..assertion_id.len().min(32)]), str::to_owned);
        let (subject, task) = match self {
            Profile::GithubActions => {
                let repo = get("repository");
                let name = repo.split_once('/').map_or(repo.as_str(), |(_, n)| n).to_owned();
                (
                    format!(
                        "repo:{}@{}/{}@{}",
                        get("repository_owner"),
                        get("repository_owner_id"),
                        name,
                        get("repository_id")
                    ),
                    format!("{}/{}/{}", get("repository_id"), get("run_id"), get("run_attempt")),
                )
            }
            Profile::Gitlab => (
                format!("project_path:{}@{}", get("project_path"), get("project_id")),
                format!("{}/{}/{}", get("project_id"), get("pipeline_id"), get("job_id")),
            ),
            Profile::Kubernetes => {
                (format!("system:serviceaccount:{}:{}", get("namespace"), get("service_account")), get("pod_uid"))
            }
            Profile::Gcp => {
                // An email counts only when Google says it is verified.
                if attributes.get("email_verified").map(String::as_str) != Some("true") {
                    attributes.remove("email");
                }
                let subject = attributes.get("email").cloned().unwrap_or_else(|| sub.clone());
                let task = attributes.get("instance_id").map_or_else(fallback_task, |i| format!("gce:{i}"));
                (subject, task)
            }
            Profile::Oidc => (sub.clone(), fallback_task()),
            Profile::Nitro | Profile::Ec2Iid | Profile::X509Pop => {
                return Err(VerifyError::LegacyToken {
                    slug: "unsupported_token_type",
                    what: "attestation profiles take attestation documents, not JWT claims",
                });
            }
        };
        Ok(Workload { subject, task, attributes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    pub(crate) fn github_claims() -> Value {
        json!({
            "iss": "https://token.actions.githubusercontent.com", "aud": "https://broker.example.com",
            "sub": "repo:acme/app:environment:prod", "repository": "acme/app", "repository_id": "123456789",
            "repository_owner": "acme", "repository_owner_id": "987654", "ref": "refs/heads/main", "ref_type": "branch",
            "environment": "prod", "event_name": "push", "run_id": "9876543210", "run_attempt": "2",
            "workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_ref": "acme/wf/.github/workflows/deploy.yml@refs/tags/v1", "runner_environment": "github-hosted",
        })
    }

    #[test]
    fn github_identity_and_task_use_immutable_ids_whatever_the_sub() {
        let mut c = github_claims();
        c["sub"] = json!("job_workflow_ref:acme/wf/.github/workflows/d.yml@refs/heads/main");
        let w = Profile::GithubActions.workload_from_claims(&claims(c), None, "x").unwrap();
        assert_eq!(w.subject, "repo:acme@987654/app@123456789");
        assert_eq!(w.task, "123456789/9876543210/2");
        assert_eq!(w.attributes["environment"], "prod");
        // GitHub's immutable sub format is just another sub: nothing parses it
        let mut c = github_claims();
        c["sub"] = json!("repo:acme@987654/app@123456789:ref:refs/heads/main");
        assert!(Profile::GithubActions.workload_from_claims(&claims(c), None, "x").is_ok());
    }

    #[test]
    fn github_required_claims_and_charsets() {
        for missing in ["repository", "repository_id", "repository_owner_id", "run_id", "run_attempt", "event_name"] {
            let mut c = github_claims();
            c.as_object_mut().unwrap().remove(missing);
            assert_eq!(
                Profile::GithubActions.workload_from_claims(&claims(c), None, "x").unwrap_err(),
                VerifyError::ClaimMissing { claim: missing },
                "{missing}"
            );
        }
        for bad in
            ["acme/\u{0430}pp", "acme/app\u{200d}", "acme/app\n", "acme\t/app", "acme/app\u{0}", &"a".repeat(300)]
        {
            let mut c = github_claims();
            c["repository"] = json!(bad);
            assert!(matches!(
                Profile::GithubActions.workload_from_claims(&claims(c), None, "x"),
                Err(VerifyError::ClaimInvalid { claim: "repository" })
            ));
        }
        let mut c = github_claims();
        c["repository_id"] = json!("12a");
        assert!(Profile::GithubActions.workload_from_claims(&claims(c), None, "x").is_err());
        let mut c = github_claims();
        c["repository_id"] = json!(123456789);
        assert!(Profile::GithubActions.workload_from_claims(&claims(c), None, "x").is_ok(), "numbers are their text");
    }

    #[test]
    fn gitlab_kubernetes_gcp() {
        let gl = json!({"sub": "project_path:g/p:ref_type:branch:ref:main", "project_path": "g/p", "project_id": "2",
            "namespace_path": "g", "namespace_id": "12", "ref": "main", "ref_type": "branch", "ref_protected": "true",
            "pipeline_id": "22", "job_id": "29"});
        let w = Profile::Gitlab.workload_from_claims(&claims(gl), None, "x").unwrap();
        assert_eq!((w.subject.as_str(), w.task.as_str()), ("project_path:g/p@2", "2/22/29"));
        let oauth_user = json!({"sub": "1565012", "iss": "https://gitlab.com"});
        assert_eq!(
            Profile::Gitlab.workload_from_claims(&claims(oauth_user), None, "x").unwrap_err(),
            VerifyError::ClaimMissing { claim: "project_path" }
        );
        let k8s = json!({"sub": "system:serviceaccount:ci:deployer", "kubernetes.io": {"namespace": "ci",
            "serviceaccount": {"name": "deployer", "uid": "5e1b"}, "pod": {"name": "runner-1", "uid": "a1b2-c3"}}});
        let w = Profile::Kubernetes.workload_from_claims(&claims(k8s), None, "x").unwrap();
        assert_eq!((w.subject.as_str(), w.task.as_str()), ("system:serviceaccount:ci:deployer", "a1b2-c3"));
        let gce = json!({"sub": "1049", "email": "sa@p.iam.gserviceaccount.com", "email_verified": true,
            "google": {"compute_engine": {"project_id": "p", "instance_id": "42", "zone": "europe-west1-b"}}});
        let w = Profile::Gcp.workload_from_claims(&claims(gce.clone()), None, "x").unwrap();
        assert_eq!((w.subject.as_str(), w.task.as_str()), ("sa@p.iam.gserviceaccount.com", "gce:42"));
        let mut unverified = gce;
        unverified["email_verified"] = json!(false);
        let w = Profile::Gcp.workload_from_claims(&claims(unverified), None, "x").unwrap();
        assert_eq!(w.subject, "1049");
        assert!(!w.attributes.contains_key("email"));
    }

    #[test]
    fn issuer_shapes() {
        let gh = Profile::GithubActions;
        assert!(gh.check_issuer("https://token.actions.githubusercontent.com").is_ok());
        assert!(gh.check_issuer("https://token.actions.githubusercontent.com/acme-corp").is_ok());
        assert!(gh.check_issuer("https://ghes.example.com/_services/token").is_ok());
        assert!(gh.check_issuer("http://127.0.0.1:9000").is_ok());
        assert!(gh.check_issuer("https://gitlab.com").is_err());
        assert!(Profile::Gcp.check_issuer("https://accounts.google.com").is_ok());
        assert!(Profile::Gcp.check_issuer("https://accounts.google.com.evil").is_err());
    }

    #[test]
    fn deprecated_tokens_are_named() {
        let e = Profile::Gitlab.refine(VerifyError::IssuerNotTrusted { got: "gitlab.com".into() });
        assert_eq!(e.slug(), "token_type_refused");
        let e = Profile::Gitlab.refine(VerifyError::IssuerNotTrusted { got: "https://evil.example".into() });
        assert_eq!(e.slug(), "issuer_not_trusted");
        let e = Profile::Kubernetes.refine(VerifyError::IssuerNotTrusted { got: "kubernetes/serviceaccount".into() });
        assert_eq!(e.slug(), "exp_missing");
    }
}

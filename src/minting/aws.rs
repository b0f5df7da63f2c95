//! AWS STS sessions, bound to the task rather than to STS's timer.
//!
//! STS sessions last at least 900 s, often longer than the assertion allows. So every session
//! carries an inline session policy that allows what the role allows (or the role's scope-down
//! statements) and denies every action once `aws:CurrentTime` passes the broker's deadline
//! (`min(role max_ttl, assertion exp)`). The credentials may look alive after that; the authority
//! is gone. `DurationSeconds` is the smallest STS accepts that covers the deadline.
//!
//! Attribution: `RoleSessionName` (deterministic, from workload and task, STS's charset, ≤ 64),
//! `SourceIdentity` (the workload), session tags from a claim mapping (validated, never
//! truncated), `TransitiveTagKeys`, `ExternalId`, managed `PolicyArns`.
//! The broker's own AWS identity comes from the SDK's standard chain and environment
//! (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL_STS`, profiles,
//! instance roles); a role may override region and endpoint.
//!
//! One concern in one file: everything an STS session needs (its request, names, tags, deadline
//! policy, error classes, the client) and their tests.

pub mod end;

use crate::secret::IssuedCredential;
use aws_sdk_sts::error::ProvideErrorMetadata;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A role's AWS credential settings, checked at load.
#[derive(Debug, Clone)]
pub struct AwsRole {
    pub role_arn: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Session tag key → claim (profile attribute or raw claim path).
    pub session_tags: BTreeMap<String, String>,
    pub transitive_tag_keys: Vec<String>,
    pub external_id: Option<String>,
    pub policy_arns: Vec<String>,
    /// Scope-down statements (a JSON array of IAM statements) instead of "allow what the role allows".
    pub statements: Option<Vec<Value>>,
    /// The session may assume other roles (`sts:AssumeRole*`). Off by default: a chained
    /// session would outlive the deadline (up to an hour), and so the assertion (review S7).
    pub allow_role_chaining: bool,
    /// A revocation denies the task's live sessions at IAM (`minting/aws_end.rs`).
    pub end_sessions_on_revoke: bool,
}

/// The RFC 9396 authorization detail type an AWS role turns into its session policy.
pub const AWS_IAM: &str = "aws_iam";

/// The actions and resources of the `aws_iam` details (checked by the exchange), when any.
fn aws_iam(details: &Value) -> Option<(Vec<Value>, Vec<Value>)> {
    let mut found = None;
    for d in details.as_array()?.iter().filter(|d| d["type"] == AWS_IAM) {
        let (actions, resources) = found.get_or_insert_with(|| (Vec::new(), Vec::new()));
        for (field, into) in [("actions", &mut *actions), ("resources", &mut *resources)] {
            match &d[field] {
                Value::Array(a) => into.extend(a.iter().cloned()),
                v @ Value::String(_) => into.push(v.clone()),
                _ => {}
            }
        }
    }
    found
}

/// The longest inline session policy STS takes (characters, before its own packing).
const MAX_SESSION_POLICY_CHARS: usize = 2048;

/// What one AssumeRole call carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRequest {
    pub role_arn: String,
    pub session_name: String,
    pub source_identity: String,
    pub duration_seconds: i32,
    /// The inline session policy (JSON).
    pub policy: String,
    pub tags: Vec<(String, String)>,
    pub transitive_tag_keys: Vec<String>,
    pub external_id: Option<String>,
    pub policy_arns: Vec<String>,
}

/// The AssumeRole request for a role, a workload and a bounded lifetime. A claim the token
/// lacks leaves its tag out; a value STS would refuse is an error, found before the assertion is
/// spent.
pub fn request(aws: &AwsRole, g: &super::GrantFacts<'_>) -> Result<AssumeRequest, super::MintError> {
    let mut tags = Vec::new();
    for (key, claim) in &aws.session_tags {
        let value = g.workload.attributes.get(claim).cloned().or_else(|| {
            ephemera_providers::profile::lookup(g.claims, claim).and_then(ephemera_providers::profile::scalar_text)
        });
        if let Some(v) = value {
            check_tag(key, &v).map_err(super::MintError::Tag)?;
            tags.push((key.clone(), v));
        }
    }
    let source_identity = source_identity(g.provider, &g.workload.subject);
    // A transaction's `aws_iam` details are the session's only Allow (the role's own Deny
    // statements stay): the session can do that and nothing else the role allows.
    let scoped = g.details.and_then(aws_iam).map(|(actions, resources)| {
        let mut stmts = vec![json!({
            "Sid": "EphemeraAuthorizationDetails",
            "Effect": "Allow",
            "Action": actions,
            "Resource": resources,
        })];
        stmts.extend(aws.statements.iter().flatten().filter(|s| s["Effect"] == "Deny").cloned());
        stmts
    });
    Ok(AssumeRequest {
        role_arn: aws.role_arn.clone(),
        session_name: if aws.end_sessions_on_revoke {
            ending_session_name(g.provider, &g.workload.task, g.jti)
        } else {
            sts_name(&format!("{}/{}", g.role, g.workload.task), 64)
        },
        source_identity: if source_identity.len() < 2 { format!("{source_identity}--") } else { source_identity },
        duration_seconds: duration_for(g.lifetime),
        policy: {
            let policy = session_policy(
                scoped.as_deref().or(aws.statements.as_deref()),
                &crate::clock::rfc3339(g.now + g.lifetime),
                aws.allow_role_chaining,
            );
            if policy.len() > MAX_SESSION_POLICY_CHARS {
                return Err(super::MintError::Tag(AwsError::Tag {
                    key: "authorization_details".into(),
                    problem: format!("the session policy would be over STS's {MAX_SESSION_POLICY_CHARS} characters"),
                }));
            }
            policy
        },
        tags,
        transitive_tag_keys: aws.transitive_tag_keys.clone(),
        external_id: aws.external_id.clone(),
        policy_arns: aws.policy_arns.clone(),
    })
}

/// Minted AWS credentials. `Debug` redacts the secret parts.
pub struct AwsSession {
    pub access_key_id: String,
    pub secret_access_key: IssuedCredential,
    pub session_token: IssuedCredential,
    /// STS's own expiry (UNIX seconds), at least 900 s away.
    pub sts_expiration: i64,
    pub assumed_role_arn: String,
}

impl std::fmt::Debug for AwsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSession")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[REDACTED]")
            .field("session_token", &"[REDACTED]")
            .field("sts_expiration", &self.sts_expiration)
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish()
    }
}

/// Why a session could not be minted. Upstream error bodies are never passed on, only codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    #[error("AWS STS refused AssumeRole (`{code}`): check the role's trust policy and the broker's identity")]
    Refused { code: String },
    #[error("AWS STS is unavailable (`{code}`)")]
    Unavailable { code: String },
    #[error("session tag `{key}`: {problem}")]
    Tag { key: String, problem: String },
    #[error("AWS STS answered without credentials")]
    NoCredentials,
}

impl AwsError {
    /// True when retrying later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AwsError::Unavailable { .. })
    }
}

/// The task's part of the session names of a role that ends sessions on revoke: 16 hex
/// characters of SHA-256(provider, NUL, task). A deny at IAM matches it (`*:eph-HASH-*`).
pub fn task_hash(provider: &str, task: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(provider.as_bytes());
    ctx.update(&[0]);
    ctx.update(task.as_bytes());
    ephemera_providers::verify::hex(&ctx.finish().as_ref()[..8])
}

/// The grant's part: 8 hex characters of SHA-256(jti).
pub fn grant_hash(jti: &str) -> String {
    ephemera_providers::verify::hex(
        &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jti.as_bytes()).as_ref()[..4],
    )
}

/// `eph-TASKHASH-GRANTHASH`: the session name of a role that ends sessions on revoke, which the
/// session cannot change and an IAM condition on `aws:userid` can match by task or by grant.
pub fn ending_session_name(provider: &str, task: &str, jti: &str) -> String {
    format!("eph-{}-{}", task_hash(provider, task), grant_hash(jti))
}

/// STS's charset for session names and source identities: `[\w+=,.@-]`.
fn sts_charset(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// A deterministic, STS-safe name of at most `max` characters: characters outside STS's set
/// become `-`; a name too long keeps its head and gets a hash of the whole.
pub fn sts_name(raw: &str, max: usize) -> String {
    let clean: String = raw.chars().map(|c| if sts_charset(c) { c } else { '-' }).collect();
    if clean.len() <= max {
        return clean;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw.as_bytes());
    let hash = ephemera_providers::verify::hex(&digest.as_ref()[..8]);
    format!("{}-{hash}", &clean[..max - hash.len() - 1])
}

/// `SourceIdentity`: `PROVIDER=` and the workload's subject in STS's characters. When a character
/// had to be replaced (or the whole is over 64), a hash of the provider and the original subject
/// follows: two subjects never map to one identity, and two providers' subjects stay apart (`=`
/// is not in provider names): review S3. It persists through role chaining and into CloudTrail and
/// `aws:SourceIdentity` conditions.
pub fn source_identity(provider: &str, subject: &str) -> String {
    let clean: String = subject.chars().map(|c| if sts_charset(c) { c } else { '-' }).collect();
    let whole = format!("{provider}={clean}");
    if clean == subject && whole.len() <= 64 {
        return whole;
    }
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(provider.as_bytes());
    ctx.update(&[0]);
    ctx.update(subject.as_bytes());
    let hash = ephemera_providers::verify::hex(&ctx.finish().as_ref()[..4]);
    let head: String = whole.chars().take(64 - hash.len() - 1).collect();
    format!("{head}-{hash}")
}

/// STS's session tag rules: key 1–128, value 0–256 characters of letters, digits, spaces and
/// `_.:/=+-@`. A claim that does not fit is an error, never truncated.
pub fn check_tag(key: &str, value: &str) -> Result<(), AwsError> {
    let ok = |s: &str| s.chars().all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c));
    let err = |problem: &str| AwsError::Tag { key: key.to_owned(), problem: problem.to_owned() };
    if key.is_empty() || key.chars().count() > 128 || !ok(key) || key.to_ascii_lowercase().starts_with("aws:") {
        return Err(err(
            "key must be 1-128 characters of letters, digits, spaces and _.:/=+-@, not starting with aws:",
        ));
    }
    if value.chars().count() > 256 {
        return Err(err("value over 256 characters"));
    }
    if !ok(value) {
        return Err(err("value has characters STS does not accept in tags"));
    }
    Ok(())
}

/// The inline session policy: allow what the role (or its scope-down statements) allows, deny
/// everything after `deadline`, and, unless `chaining`, deny assuming another role, whose session
/// the deadline would not bind.
pub fn session_policy(statements: Option<&[Value]>, deadline_rfc3339: &str, chaining: bool) -> String {
    let mut stmts: Vec<Value> = match statements {
        Some(s) => s.to_vec(),
        None => vec![json!({"Sid": "EphemeraWithinRole", "Effect": "Allow", "Action": "*", "Resource": "*"})],
    };
    stmts.push(json!({
        "Sid": "EphemeraDeadline",
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {"DateGreaterThan": {"aws:CurrentTime": deadline_rfc3339}},
    }));
    if !chaining {
        stmts.push(json!({
            "Sid": "EphemeraNoChaining",
            "Effect": "Deny",
            "Action": ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity", "sts:AssumeRoleWithSAML", "sts:GetFederationToken"],
            "Resource": "*",
        }));
    }
    json!({"Version": "2012-10-17", "Statement": stmts}).to_string()
}

/// STS's shortest session that covers `lifetime` seconds (900 s at least, 12 h at most).
pub fn duration_for(lifetime: i64) -> i32 {
    lifetime.clamp(900, 43_200) as i32
}

/// STS's global endpoint lives in us-east-1: the region used when neither the SDK environment nor
/// the role names one (the SDK would otherwise fail every call without reaching STS).
pub const FALLBACK_REGION: &str = "us-east-1";

/// Connect, per-attempt and whole-call limits for AssumeRole when the SDK configuration sets
/// none: the SDK has no operation timeout of its own, and an STS that accepts the connection but
/// never answers must end in a retryable error, not a request that hangs.
pub fn default_timeouts() -> aws_sdk_sts::config::timeout::TimeoutConfig {
    aws_sdk_sts::config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .operation_attempt_timeout(std::time::Duration::from_secs(10))
        .operation_timeout(std::time::Duration::from_secs(20))
        .build()
}

/// STS error codes that mean "try again later" whatever the HTTP status.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
    "IDPCommunicationError",
];

/// Sorts an AssumeRole failure: STS's own refusals (any other 4xx: `AccessDenied`,
/// `MalformedPolicyDocument`, `RegionDisabledException`, `ValidationError`, an unknown code …)
/// are `Refused`, retrying would not help; 5xx, throttling, timeouts and no answer at all are
/// `Unavailable`. Only the error code travels on, never STS's message.
pub fn classify(code: Option<&str>, status: Option<u16>, fallback: &str) -> AwsError {
    let code_text = code.unwrap_or(fallback).to_owned();
    let retryable = code.is_some_and(|c| RETRYABLE_CODES.contains(&c))
        || match status {
            None => true,
            Some(s) => s >= 500 || s == 429 || s < 400,
        };
    if retryable { AwsError::Unavailable { code: code_text } } else { AwsError::Refused { code: code_text } }
}

/// The first `<Code>` of an STS error body, when it is a plain error code.
pub fn error_code_in(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
        .then(|| code.to_owned())
}

/// The broker's STS clients.
#[derive(Debug, Clone)]
pub struct AwsMinter {
    /// Loaded on the first AssumeRole, not at start: `explain` and `check` build a broker too,
    /// and must not go looking for credentials or a region (the instance metadata service).
    shared: tokio::sync::OnceCell<aws_config::SdkConfig>,
}

impl AwsMinter {
    /// The SDK's standard configuration (credential chain, region, endpoint overrides), loaded
    /// when the first session is minted.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        AwsMinter { shared: tokio::sync::OnceCell::new() }
    }

    /// A minter over an SDK configuration built elsewhere (tests, embedding). Timeouts it does
    /// not set get [`default_timeouts`].
    pub fn from_config(shared: aws_config::SdkConfig) -> Self {
        AwsMinter { shared: tokio::sync::OnceCell::new_with(Some(shared)) }
    }

    async fn client(&self, role: &AwsRole) -> aws_sdk_sts::Client {
        let shared = self
            .shared
            .get_or_init(|| async { aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await })
            .await;
        let mut b = aws_sdk_sts::config::Builder::from(shared);
        if shared.timeout_config().is_none_or(|t| t.operation_timeout().is_none()) {
            b = b.timeout_config(default_timeouts());
        }
        match (&role.region, shared.region()) {
            (Some(r), _) => b = b.region(aws_sdk_sts::config::Region::new(r.clone())),
            (None, None) => b = b.region(aws_sdk_sts::config::Region::from_static(FALLBACK_REGION)),
            (None, Some(_)) => {}
        }
        if let Some(e) = &role.endpoint_url {
            b = b.endpoint_url(e.clone());
        }
        aws_sdk_sts::Client::from_conf(b.build())
    }

    /// Calls `sts:AssumeRole`.
    pub async fn assume(&self, role: &AwsRole, req: &AssumeRequest) -> Result<AwsSession, AwsError> {
        let mut call = self
            .client(role)
            .await
            .assume_role()
            .role_arn(&req.role_arn)
            .role_session_name(&req.session_name)
            .source_identity(&req.source_identity)
            .duration_seconds(req.duration_seconds)
            .policy(&req.policy)
            .set_external_id(req.external_id.clone());
        for (k, v) in &req.tags {
            call = call.tags(
                aws_sdk_sts::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|_| AwsError::Tag { key: k.clone(), problem: "rejected by the SDK".into() })?,
            );
        }
        // A transitive key whose claim the token lacked (so whose tag was left out) names nothing:
        // it is left out too rather than sent for STS to refuse.
        for k in req.transitive_tag_keys.iter().filter(|k| req.tags.iter().any(|(t, _)| t == *k)) {
            call = call.transitive_tag_keys(k);
        }
        for arn in &req.policy_arns {
            call = call.policy_arns(aws_sdk_sts::types::PolicyDescriptorType::builder().arn(arn).build());
        }
        let out = call.send().await.map_err(|e| {
            use aws_sdk_sts::error::SdkError;
            let status = e.raw_response().map(|r| r.status().as_u16());
            let fallback = match &e {
                SdkError::TimeoutError(_) => "timeout",
                SdkError::DispatchFailure(_) => "unreachable",
                SdkError::ConstructionFailure(_) => "request_not_built",
                SdkError::ResponseError(_) => "unreadable_response",
                _ => "no_code",
            };
            // Some STS look-alikes wrap errors in `<Errors>`, which the SDK does not read: the
            // code is then taken from the body.
            let body_code = e.raw_response().and_then(|r| r.body().bytes()).and_then(error_code_in);
            let code = e.code().map(str::to_owned).or(body_code);
            let err = classify(code.as_deref(), status, fallback);
            // What is logged: the code and STS's message (principals and resources, no secrets),
            // or the transport error. Never a response body or its headers.
            let detail = match &e {
                SdkError::ServiceError(_) => e.message().unwrap_or_default().to_owned(),
                SdkError::ResponseError(_) => String::new(),
                _ => aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
            };
            tracing::warn!(
                code = code.as_deref().unwrap_or(fallback),
                status,
                role_arn = %req.role_arn,
                error = %detail,
                "sts:AssumeRole failed"
            );
            err
        })?;
        let creds = out.credentials.ok_or(AwsError::NoCredentials)?;
        if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() || creds.session_token.is_empty() {
            return Err(AwsError::NoCredentials);
        }
        Ok(AwsSession {
            access_key_id: creds.access_key_id,
            secret_access_key: IssuedCredential::new(creds.secret_access_key),
            session_token: IssuedCredential::new(creds.session_token),
            sts_expiration: creds.expiration.secs(),
            assumed_role_arn: out.assumed_role_user.map(|u| u.arn).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_sts_safe_and_bounded() {
        assert_eq!(sts_name("repo:acme@987654/app@123456789", 64), "repo-acme@987654-app@123456789");
        // SourceIdentity: the provider, and a hash when a character was replaced (review S3): a
        // GitHub subject and an oidc `sub` that would read the same stay apart
        let gh = source_identity("github", "repo:acme@1/app@2");
        let partner = source_identity("partner", "repo-acme@1-app@2");
        assert_eq!(partner, "partner=repo-acme@1-app@2");
        assert!(
            gh.starts_with("github=repo-acme@1-app@2-") && gh.len() == "github=repo-acme@1-app@2-".len() + 8,
            "{gh}"
        );
        assert_ne!(source_identity("partner", &gh["github=".len()..]), gh);
        assert_ne!(source_identity("github", "repo:acme@1/app@2"), source_identity("github", "repo/acme@1:app@2"));
        assert!(source_identity("p", &"x".repeat(200)).len() <= 64);
        let long = format!("repo:acme/{}", "x".repeat(100));
        let a = sts_name(&long, 64);
        assert_eq!(a.len(), 64);
        assert_eq!(a, sts_name(&long, 64));
        assert_ne!(a, sts_name(&format!("{long}y"), 64));
        assert!(a.chars().all(sts_charset));
    }

    #[test]
    fn tags_are_validated_not_truncated() {
        assert!(check_tag("Repository", "acme/app").is_ok());
        assert!(check_tag("Ref", "refs/heads/main").is_ok());
        assert!(check_tag("Repository", &"a".repeat(257)).is_err());
        assert!(check_tag("Repository", "a;b").is_err());
        assert!(check_tag("aws:x", "v").is_err());
    }

    #[test]
    fn failures_are_sorted_by_code_then_status() {
        assert_eq!(classify(Some("AccessDenied"), Some(403), "x"), AwsError::Refused { code: "AccessDenied".into() });
        assert_eq!(classify(Some("Whatever"), Some(400), "x"), AwsError::Refused { code: "Whatever".into() });
        assert_eq!(classify(Some("Throttling"), Some(400), "x"), AwsError::Unavailable { code: "Throttling".into() });
        assert_eq!(classify(None, Some(503), "no_code"), AwsError::Unavailable { code: "no_code".into() });
        assert_eq!(classify(None, None, "unreachable"), AwsError::Unavailable { code: "unreachable".into() });
        assert_eq!(classify(None, Some(403), "no_code"), AwsError::Refused { code: "no_code".into() });
    }

    #[test]
    fn error_codes_are_read_from_wrapped_bodies_only_when_plain() {
        let moto = b"<ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code><Message>m</Message></Error></Errors></ErrorResponse>";
        assert_eq!(error_code_in(moto).as_deref(), Some("InvalidClientTokenId"));
        assert_eq!(error_code_in(b"<Code>a b</Code>"), None);
        assert_eq!(error_code_in(b"<Code></Code>"), None);
        assert_eq!(error_code_in(b"<html>down</html>"), None);
    }

    #[test]
    fn session_policy_denies_after_the_deadline() {
        let p: Value = serde_json::from_str(&session_policy(None, "2026-11-23T00:02:00Z", false)).unwrap();
        let deny = &p["Statement"][1];
        assert_eq!(deny["Effect"], "Deny");
        assert_eq!(deny["Condition"]["DateGreaterThan"]["aws:CurrentTime"], "2026-11-23T00:02:00Z");
        assert_eq!(p["Statement"][0]["Effect"], "Allow");
        // no chaining into a role whose session the deadline would not bind (review S7)...
        let no_chain = &p["Statement"][2];
        assert_eq!((no_chain["Sid"].as_str(), no_chain["Effect"].as_str()), (Some("EphemeraNoChaining"), Some("Deny")));
        assert!(no_chain["Action"].as_array().unwrap().contains(&json!("sts:AssumeRole")));
        // ...unless the role allows it, in so many words
        let chaining: Value = serde_json::from_str(&session_policy(None, "2026-11-23T00:02:00Z", true)).unwrap();
        assert_eq!(chaining["Statement"].as_array().unwrap().len(), 2);
        assert_eq!(duration_for(120), 900);
        assert_eq!(duration_for(3600), 3600);
    }
}

//! The AssumeRole request the broker really sends, byte for byte, and how it reads STS's answers.
//!
//! moto (the e2e suite's STS) neither reads `Tags`/`TransitiveTagKeys` nor enforces `Policy`, so
//! these tests put a tiny HTTP server in front of the real `AwsMinter` (real aws-sdk-sts, real
//! SigV4, real XML parsing): it records the raw request and answers a canned STS response. The
//! request is built by `ephemera::minting::aws::request` from a GitHub Actions workload read by
//! the real profile, as the broker does on every exchange.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ephemera::exchange::ExchangeError;
use ephemera::minting::aws::{AssumeRequest, AwsError, AwsMinter, AwsRole, sts_name};
use ephemera::minting::{GrantFacts, MintError};
use ephemera_providers::profile::{Profile, Workload};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const NOW: i64 = 1_800_000_000; // 2027-01-15T08:00:00Z
const DEADLINE: &str = "2027-01-15T08:02:00Z"; // NOW + 120
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/deploy";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLEsessionTOKENvalueAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";

/// One request as the double received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The form body as ordered pairs (duplicates kept, so a repeated field would show).
    fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body.as_bytes()).into_owned().collect()
    }
    fn field(&self, name: &str) -> Option<String> {
        let all: Vec<String> = self.form().into_iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect();
        assert!(all.len() <= 1, "field {name} sent {} times", all.len());
        all.into_iter().next()
    }
}

#[derive(Clone)]
enum Answer {
    /// HTTP status and XML body.
    Reply(u16, String),
    /// Accept the connection, read the request, never answer.
    Hang,
}

/// A stand-in for STS on 127.0.0.1 that records every request.
struct StsDouble {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl StsDouble {
    async fn start(answer: Answer) -> StsDouble {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let rec = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let rec = rec.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else { return };
                    rec.lock().unwrap().push(req);
                    match answer {
                        Answer::Reply(status, body) => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            let _ = sock.write_all(body.as_bytes()).await;
                            let _ = sock.shutdown().await;
                        }
                        Answer::Hang => {
                            tokio::time::sleep(Duration::from_secs(120)).await;
                        }
                    }
                });
            }
        });
        StsDouble { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn only_request(&self) -> Recorded {
        let r = self.requests();
        assert_eq!(r.len(), 1, "expected exactly one request, got {r:?}");
        r.into_iter().next().unwrap()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, path) = (start.next()?.to_owned(), start.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok())?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded { method, path, headers, body: String::from_utf8(body).ok()? })
}

fn ok_xml(session_name: &str) -> String {
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>repo-acme@987654-app@123456789</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/deploy/{session_name}</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:{session_name}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
      <SecretAccessKey>{SECRET}</SecretAccessKey>
      <SessionToken>{SESSION_TOKEN}</SessionToken>
      <Expiration>2027-01-15T08:15:00Z</Expiration>
    </Credentials>
    <PackedPolicySize>12</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
    )
}

fn error_xml(kind: &str, code: &str, message: &str) -> String {
    format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>4a5f8e2c-0000-0000-0000-000000000000</RequestId>
</ErrorResponse>"#
    )
}

/// The broker's own identity: static test credentials, no retries (each answer is seen once).
fn sdk_config(region: Option<&str>) -> aws_config::SdkConfig {
    let creds = aws_credential_types::Credentials::new("AKIDBROKEREXAMPLE", "broker-secret-key", None, None, "test");
    let mut b = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled());
    if let Some(r) = region {
        b = b.region(aws_sdk_sts::config::Region::new(r.to_owned()));
    }
    b.build()
}

fn minter() -> AwsMinter {
    AwsMinter::from_config(sdk_config(Some("us-east-1")))
}

fn github_claims() -> Map<String, Value> {
    json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "https://github.com/acme",
        "sub": "repo:acme/app:environment:prod", "repository": "acme/app", "repository_id": "123456789",
        "repository_owner": "acme", "repository_owner_id": "987654", "ref": "refs/heads/main", "ref_type": "branch",
        "environment": "prod", "event_name": "push", "run_id": "9876543210", "run_attempt": "2",
        "actor": "octocat", "workflow": "Deploy to prod", "ext": {"note": "change 42: rotate/keys"},
        "workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "runner_environment": "github-hosted", "jti": "5f1c7c1e-1111-2222-3333-444455556666",
        "iat": NOW - 180, "nbf": NOW - 180, "exp": NOW + 120,
    })
    .as_object()
    .cloned()
    .unwrap()
}

fn workload(claims: &Map<String, Value>) -> Workload {
    Profile::GithubActions.workload_from_claims(claims, claims["jti"].as_str(), "assertion-id").unwrap()
}

fn aws_role(endpoint: &str) -> AwsRole {
    AwsRole {
        allow_role_chaining: false,
        end_sessions_on_revoke: false,
        role_arn: ROLE_ARN.into(),
        region: None,
        endpoint_url: Some(endpoint.into()),
        session_tags: BTreeMap::from([
            ("Repository".into(), "repository".into()),
            ("Environment".into(), "environment".into()),
            ("RunId".into(), "run_id".into()),
            ("Actor".into(), "actor".into()),
            ("Workflow".into(), "workflow".into()),
            ("Note".into(), "ext.note".into()),
        ]),
        transitive_tag_keys: vec!["Repository".into(), "Environment".into()],
        external_id: Some("ephemera-broker-7".into()),
        policy_arns: vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()],
        statements: None,
    }
}

fn build(role: &AwsRole, claims: &Map<String, Value>, lifetime: i64) -> Result<AssumeRequest, MintError> {
    let workload = workload(claims);
    let facts = GrantFacts {
        issuer: "https://broker.example.com",
        role: "deploy-prod",
        provider: "gha",
        source_issuer: "https://token.actions.githubusercontent.com",
        workload: &workload,
        claims,
        cnf: None,
        jti: "jti",
        now: NOW,
        lifetime,
        max_uses: None,
        details: None,
    };
    ephemera::minting::aws::request(role, &facts)
}

/// `Tags.member.N.Key/Value` as (key, value) pairs in N order.
fn tags_of(r: &Recorded) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in 1.. {
        match (r.field(&format!("Tags.member.{n}.Key")), r.field(&format!("Tags.member.{n}.Value"))) {
            (Some(k), Some(v)) => out.push((k, v)),
            (None, None) => break,
            other => panic!("tag {n} half sent: {other:?}"),
        }
    }
    out
}

fn list_of(r: &Recorded, prefix: &str) -> Vec<String> {
    (1..).map_while(|n| r.field(&format!("{prefix}.member.{n}"))).collect()
}

#[tokio::test]
async fn the_request_carries_attribution_the_deadline_policy_and_the_shortest_duration() {
    let claims = github_claims();
    let expected_session = "deploy-prod-123456789-9876543210-2";
    let sts = StsDouble::start(Answer::Reply(200, ok_xml(expected_session))).await;
    let role = aws_role(&sts.url());
    let req = build(&role, &claims, 120).unwrap();
    let session = minter().assume(&role, &req).await.unwrap();

    let r = sts.only_request();
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"));
    assert_eq!(r.header("content-type"), Some("application/x-www-form-urlencoded"));
    // SigV4 with the broker's own identity, for STS in the SDK's region.
    let auth = r.header("authorization").unwrap();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDBROKEREXAMPLE/"), "{auth}");
    assert!(auth.contains("/us-east-1/sts/aws4_request"), "{auth}");
    assert!(!r.body.contains("broker-secret-key") && !auth.contains("broker-secret-key"));

    assert_eq!(r.field("Action").as_deref(), Some("AssumeRole"));
    assert_eq!(r.field("Version").as_deref(), Some("2011-06-15"));
    assert_eq!(r.field("RoleArn").as_deref(), Some(ROLE_ARN));
    // The session name: role and task (repository id / run id / attempt), STS's charset, ≤ 64,
    // the same for the same workload and task.
    let name = r.field("RoleSessionName").unwrap();
    assert_eq!(name, expected_session);
    assert!(name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)));
    assert_eq!(build(&role, &claims, 120).unwrap().session_name, name, "deterministic");
    // SourceIdentity: the workload by immutable ids (owner@id/name@id), not the `sub` string, in
    // its provider's namespace, with a hash since `:` and `/` were replaced (review S3).
    let si = r.field("SourceIdentity").unwrap();
    assert!(si.starts_with("gha=repo-acme@987654-app@123456789-") && si.len() == 43, "{si}");
    // 120 s of authority still gets STS's minimum of 900 s: the policy ends the authority.
    assert_eq!(r.field("DurationSeconds").as_deref(), Some("900"));

    let policy: Value = serde_json::from_str(&r.field("Policy").unwrap()).unwrap();
    assert_eq!(policy["Version"], "2012-10-17");
    let stmts = policy["Statement"].as_array().unwrap();
    // allow within the role, deny after the deadline, deny chaining into another role (S7)
    assert_eq!(stmts.len(), 3, "{policy}");
    assert_eq!(stmts[2]["Sid"], "EphemeraNoChaining");
    assert_eq!(stmts[0], json!({"Sid": "EphemeraWithinRole", "Effect": "Allow", "Action": "*", "Resource": "*"}));
    assert_eq!(
        stmts[1],
        json!({"Sid": "EphemeraDeadline", "Effect": "Deny", "Action": "*", "Resource": "*",
               "Condition": {"DateGreaterThan": {"aws:CurrentTime": DEADLINE}}})
    );

    // Tags in the mapping's (sorted) order, values from the claims as signed.
    assert_eq!(
        tags_of(&r),
        vec![
            ("Actor".into(), "octocat".into()),
            ("Environment".into(), "prod".into()),
            ("Note".into(), "change 42: rotate/keys".into()),
            ("Repository".into(), "acme/app".into()),
            ("RunId".into(), "9876543210".into()),
            ("Workflow".into(), "Deploy to prod".into()),
        ]
    );
    assert_eq!(list_of(&r, "TransitiveTagKeys"), vec!["Repository".to_owned(), "Environment".to_owned()]);
    assert_eq!(r.field("ExternalId").as_deref(), Some("ephemera-broker-7"));
    assert_eq!(r.field("PolicyArns.member.1.arn").as_deref(), Some("arn:aws:iam::aws:policy/ReadOnlyAccess"));
    assert_eq!(r.field("PolicyArns.member.2.arn"), None);
    // Nothing else travels (no MFA serial, no token code, no provider id).
    let known = ["Action", "Version", "RoleArn", "RoleSessionName", "SourceIdentity", "DurationSeconds", "Policy"];
    for (k, _) in r.form() {
        assert!(
            known.contains(&k.as_str())
                || k.starts_with("Tags.member.")
                || k.starts_with("TransitiveTagKeys.member.")
                || k.starts_with("PolicyArns.member.")
                || k == "ExternalId",
            "unexpected field {k}"
        );
    }

    // The answer, parsed.
    assert_eq!(session.access_key_id, "ASIAIOSFODNN7EXAMPLE");
    assert_eq!(session.secret_access_key.expose(), SECRET);
    assert_eq!(session.session_token.expose(), SESSION_TOKEN);
    assert_eq!(session.sts_expiration, NOW + 900);
    assert_eq!(session.assumed_role_arn, format!("arn:aws:sts::123456789012:assumed-role/deploy/{expected_session}"));
    let debug = format!("{session:?}");
    assert!(debug.contains("ASIAIOSFODNN7EXAMPLE"), "{debug}");
    assert!(!debug.contains(SECRET) && !debug.contains(SESSION_TOKEN) && !debug.contains("FwoG"), "{debug}");
}

#[test]
fn debug_of_the_minter_and_request_shows_no_secret() {
    let m = minter();
    let d = format!("{m:?}");
    assert!(!d.contains("broker-secret-key"), "{d}");
    let req = build(&aws_role("http://127.0.0.1:9"), &github_claims(), 120).unwrap();
    assert!(format!("{req:?}").contains("deploy-prod-123456789-9876543210-2"));
}

#[tokio::test]
async fn duration_covers_a_lifetime_longer_than_stss_minimum() {
    let sts = StsDouble::start(Answer::Reply(200, ok_xml("x"))).await;
    let role = aws_role(&sts.url());
    let mut claims = github_claims();
    claims.insert("exp".into(), json!(NOW + 3600));
    let req = build(&role, &claims, 2400).unwrap();
    minter().assume(&role, &req).await.unwrap();
    let r = sts.only_request();
    assert_eq!(r.field("DurationSeconds").as_deref(), Some("2400"));
    let policy: Value = serde_json::from_str(&r.field("Policy").unwrap()).unwrap();
    assert_eq!(policy["Statement"][1]["Condition"]["DateGreaterThan"]["aws:CurrentTime"], "2027-01-15T08:40:00Z");
}

#[tokio::test]
async fn scope_down_statements_replace_the_allow_and_keep_the_deadline() {
    let sts = StsDouble::start(Answer::Reply(200, ok_xml("x"))).await;
    let mut role = aws_role(&sts.url());
    let read = json!({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::acme-artifacts/*"});
    role.statements = Some(vec![read.clone()]);
    let req = build(&role, &github_claims(), 120).unwrap();
    minter().assume(&role, &req).await.unwrap();
    let policy: Value = serde_json::from_str(&sts.only_request().field("Policy").unwrap()).unwrap();
    let stmts = policy["Statement"].as_array().unwrap();
    assert_eq!(stmts.len(), 3);
    assert_eq!(stmts[0], read);
    assert!(!policy.to_string().contains("EphemeraWithinRole"), "the role-wide allow is gone: {policy}");
    assert_eq!(stmts[1]["Effect"], "Deny");
    assert_eq!(stmts[1]["Condition"]["DateGreaterThan"]["aws:CurrentTime"], DEADLINE);
}

#[tokio::test]
async fn a_claim_the_token_lacks_leaves_its_tag_and_transitive_key_out() {
    let sts = StsDouble::start(Answer::Reply(200, ok_xml("x"))).await;
    let role = aws_role(&sts.url());
    let mut claims = github_claims();
    claims.remove("environment");
    let req = build(&role, &claims, 120).unwrap();
    assert!(req.tags.iter().all(|(k, _)| k != "Environment"));
    minter().assume(&role, &req).await.unwrap();
    let r = sts.only_request();
    let keys: Vec<String> = tags_of(&r).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["Actor", "Note", "Repository", "RunId", "Workflow"]);
    // STS would refuse a transitive key that names no tag of the session.
    assert_eq!(list_of(&r, "TransitiveTagKeys"), vec!["Repository".to_owned()]);
}

#[tokio::test]
async fn a_claim_sts_would_refuse_as_a_tag_is_an_error_before_any_request() {
    let sts = StsDouble::start(Answer::Reply(200, ok_xml("x"))).await;
    let role = aws_role(&sts.url());
    let long = "a".repeat(257);
    // `workflow` is free text in GitHub's tokens (the profile accepts all of these); `ext.note`
    // is a raw claim the profile does not know.
    for (claim, bad) in
        [("workflow", "Deploy; prod"), ("workflow", "Deploy \"prod\""), ("workflow", "a<b>"), ("ext", long.as_str())]
    {
        let mut claims = github_claims();
        let value = if claim == "ext" { json!({"note": bad}) } else { json!(bad) };
        claims.insert(claim.into(), value);
        match build(&role, &claims, 120) {
            Err(e @ MintError::Tag(_)) => {
                let msg = e.to_string();
                let key = if claim == "ext" { "Note" } else { "Workflow" };
                assert!(msg.contains(key), "{msg}");
                assert!(!msg.contains(bad), "the value is not echoed: {msg}");
                assert_eq!(ExchangeError::from(e).refusal().reason, "tag_invalid");
            }
            other => panic!("{bad:?}: expected a tag error, got {other:?}"),
        }
    }
    assert!(sts.requests().is_empty(), "nothing was sent to STS");
    // the positive twin: the longest value STS accepts, and every symbol it allows, go through
    let mut claims = github_claims();
    let edge = format!("ops cat_.:/=+-@{}", "a".repeat(256 - 15));
    assert_eq!(edge.chars().count(), 256);
    claims.insert("ext".into(), json!({"note": edge}));
    claims.insert("workflow".into(), json!("Deploy: prod/eu-west_1 = a+b @x"));
    let req = build(&role, &claims, 120).unwrap();
    minter().assume(&role, &req).await.unwrap();
    let tags = tags_of(&sts.only_request());
    assert!(tags.contains(&("Note".into(), edge)));
    assert!(tags.contains(&("Workflow".into(), "Deploy: prod/eu-west_1 = a+b @x".into())));
}

#[tokio::test]
async fn long_tasks_get_bounded_deterministic_names() {
    let role = aws_role("http://127.0.0.1:9");
    let mut claims = github_claims();
    claims.insert("run_id".into(), json!("9".repeat(60)));
    let a = build(&role, &claims, 120).unwrap();
    assert_eq!(a.session_name.len(), 64);
    assert_eq!(a.session_name, build(&role, &claims, 120).unwrap().session_name);
    assert!(a.session_name.starts_with("deploy-prod-123456789-999"));
    claims.insert("run_id".into(), json!(format!("{}8", "9".repeat(59))));
    assert_ne!(a.session_name, build(&role, &claims, 120).unwrap().session_name, "the hash tells them apart");
    assert_eq!(sts_name("deploy-prod/123456789/1/1", 64), "deploy-prod-123456789-1-1");
}

#[tokio::test]
async fn access_denied_from_sts_is_refused_not_retryable() {
    let msg = "User: arn:aws:iam::123456789012:user/broker is not authorized to perform: sts:AssumeRole";
    let sts = StsDouble::start(Answer::Reply(403, error_xml("Sender", "AccessDenied", msg))).await;
    let role = aws_role(&sts.url());
    let err = minter().assume(&role, &build(&role, &github_claims(), 120).unwrap()).await.unwrap_err();
    assert_eq!(err, AwsError::Refused { code: "AccessDenied".into() });
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("not authorized"), "STS's message stays in the log: {err}");
    assert_eq!(sts.requests().len(), 1);
}

#[tokio::test]
async fn sts_client_errors_are_refusals_and_throttling_is_retryable() {
    for (status, code, refused) in [
        (400, "MalformedPolicyDocument", true),
        (400, "PackedPolicyTooLarge", true),
        (400, "ValidationError", true),
        (400, "InvalidParameterValue", true), // not in any list: a 4xx is still a refusal
        (403, "RegionDisabledException", true),
        (400, "Throttling", false),
        (429, "SomethingNew", false),
        (500, "InternalFailure", false),
    ] {
        let sts = StsDouble::start(Answer::Reply(status, error_xml("Sender", code, "m"))).await;
        let role = aws_role(&sts.url());
        let err = minter().assume(&role, &build(&role, &github_claims(), 120).unwrap()).await.unwrap_err();
        let want =
            if refused { AwsError::Refused { code: code.into() } } else { AwsError::Unavailable { code: code.into() } };
        assert_eq!(err, want, "HTTP {status} {code}");
        assert_eq!(err.is_retryable(), !refused);
    }
}

#[tokio::test]
async fn sts_5xx_without_xml_is_unavailable() {
    for status in [500, 502, 503] {
        let sts = StsDouble::start(Answer::Reply(status, "<html>upstream down</html>".into())).await;
        let role = aws_role(&sts.url());
        let err = minter().assume(&role, &build(&role, &github_claims(), 120).unwrap()).await.unwrap_err();
        assert!(matches!(err, AwsError::Unavailable { .. }), "HTTP {status}: {err:?}");
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn sts_unreachable_is_unavailable() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let role = aws_role(&format!("http://127.0.0.1:{port}"));
    let err = minter().assume(&role, &build(&role, &github_claims(), 120).unwrap()).await.unwrap_err();
    assert_eq!(err, AwsError::Unavailable { code: "unreachable".into() });
}

#[tokio::test]
async fn an_sts_that_never_answers_times_out_as_unavailable() {
    // A short per-attempt limit set through the SDK configuration (the broker's own
    // `default_timeouts` apply only when none is set; their values are checked below), so the test
    // waits a fraction of a second and asserts the outcome, never a duration.
    let sts = StsDouble::start(Answer::Hang).await;
    let role = aws_role(&sts.url());
    let timeouts = aws_sdk_sts::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(300))
        .operation_timeout(Duration::from_millis(600))
        .build();
    let shared = sdk_config(Some("us-east-1")).into_builder().timeout_config(timeouts).build();
    let err =
        AwsMinter::from_config(shared).assume(&role, &build(&role, &github_claims(), 120).unwrap()).await.unwrap_err();
    assert_eq!(err, AwsError::Unavailable { code: "timeout".into() });
    assert_eq!(sts.requests().len(), 1);
}

#[test]
fn default_timeouts_bound_every_call() {
    let t = ephemera::minting::aws::default_timeouts();
    assert_eq!(t.connect_timeout(), Some(Duration::from_secs(5)));
    assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(t.operation_timeout(), Some(Duration::from_secs(20)));
}

#[tokio::test]
async fn a_200_without_credentials_is_no_credentials() {
    let body = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
      <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/deploy/x</Arn><AssumedRoleId>A:x</AssumedRoleId></AssumedRoleUser>
      </AssumeRoleResult></AssumeRoleResponse>"#;
    let sts = StsDouble::start(Answer::Reply(200, body.into())).await;
    let role = aws_role(&sts.url());
    let err = minter().assume(&role, &build(&role, &github_claims(), 120).unwrap()).await.unwrap_err();
    assert_eq!(err, AwsError::NoCredentials);
}

#[tokio::test]
async fn region_comes_from_the_role_then_the_sdk_then_the_global_endpoint() {
    let sts = StsDouble::start(Answer::Reply(200, ok_xml("x"))).await;
    let mut role = aws_role(&sts.url());
    let req = build(&role, &github_claims(), 120).unwrap();
    // no region anywhere: STS's global endpoint region, rather than a call that never leaves
    AwsMinter::from_config(sdk_config(None)).assume(&role, &req).await.unwrap();
    // the SDK's region
    AwsMinter::from_config(sdk_config(Some("ap-southeast-2"))).assume(&role, &req).await.unwrap();
    // the role's region wins
    role.region = Some("eu-west-1".into());
    AwsMinter::from_config(sdk_config(Some("ap-southeast-2"))).assume(&role, &req).await.unwrap();
    let scopes: Vec<String> = sts
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().split('/').nth(2).unwrap().to_owned())
        .collect();
    assert_eq!(scopes, vec!["us-east-1", "ap-southeast-2", "eu-west-1"]);
}

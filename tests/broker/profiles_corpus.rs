//! Real issuers' tokens (../shared/corpus) through the platform profiles and policies, at the
//! time they were valid, via `Broker::evaluate` — the code path of the server and `explain`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::harness::corpus;
use ephemera::clock::FixedClock;
use ephemera::config::{Config, RawConfig};
use ephemera::exchange::{ExchangeRequest, TOKEN_TYPE_ID_TOKEN};
use ephemera::secret::SubjectToken;
use std::path::Path;
use std::sync::Arc;

struct Case<'a> {
    profile: &'a str,
    issuer: &'a str,
    audience: &'a str,
    jwks: &'a str,
    token: &'a str,
    conditions: &'a str,
    at: i64,
}

async fn evaluate(c: &Case<'_>) -> Result<(), String> {
    let corpus = corpus().unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "https://broker.example.com"
[audit]
path = "audit.jsonl"
[[providers]]
name = "p"
profile = "{}"
issuer = "{}"
audiences = ["{}"]
jwks_file = "{}"
[[roles]]
name = "r"
provider = "p"
max_ttl = "15m"
conditions = {{ {} }}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#,
        c.profile,
        c.issuer,
        c.audience,
        corpus.join(c.jwks).display(),
        c.conditions
    );
    let raw: RawConfig = toml::from_str(&text).unwrap();
    let config = Config::from_raw(raw, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let broker = ephemera::exchange::Evaluator::build(config, Arc::new(FixedClock(c.at))).unwrap();
    let token = std::fs::read_to_string(corpus.join(c.token)).unwrap().trim().to_owned();
    let req = ExchangeRequest {
        subject_token: SubjectToken::new(token),
        subject_token_type: TOKEN_TYPE_ID_TOKEN.into(),
        role: "r".into(),
        requested_token_type: None,
        authorization_details: None,
    };
    let (_, result) = broker.evaluate(&req, c.at).await;
    result.map(|_| ()).map_err(|e| e.refusal().description)
}

const GITLAB_V2: Case<'static> = Case {
    profile: "gitlab",
    issuer: "https://gitlab.example.com",
    audience: "https://example.com",
    jwks: "gitlab_ci_oidc/jwks/gitlab_example_com_jwks_2023_kid_0uVtdPL8.json",
    token: "gitlab_ci_oidc/tokens/gitlab_example_com_id_token_v2_aud_2023-02-23.jwt",
    conditions: r#"project_id = "2", ref = "master", ref_protected = "true""#,
    at: 1_677_188_547,
};

#[tokio::test]
async fn gitlab_v2_id_token_is_accepted_by_the_gitlab_profile() {
    if corpus().is_none() {
        return;
    }
    assert_eq!(evaluate(&GITLAB_V2).await, Ok(()));
    // the same token for another project, another branch, another audience, or today: refused
    let other = Case { conditions: r#"project_id = "3""#, ..GITLAB_V2 };
    assert!(evaluate(&other).await.unwrap_err().starts_with("policy_denied: "));
    let branch = Case { conditions: r#"project_id = "2", ref = "main""#, ..GITLAB_V2 };
    assert!(evaluate(&branch).await.unwrap_err().contains("condition ref: expected `main`, got `master`"));
    let aud = Case { audience: "https://other.example", ..GITLAB_V2 };
    assert!(evaluate(&aud).await.unwrap_err().starts_with("audience_mismatch: "));
    let today = Case { at: 1_795_000_000, ..GITLAB_V2 };
    assert!(evaluate(&today).await.unwrap_err().starts_with("token_expired: "));
}

#[tokio::test]
async fn gitlab_oauth_user_token_is_refused_by_the_ci_profile() {
    if corpus().is_none() {
        return;
    }
    let user = Case {
        profile: "gitlab",
        issuer: "https://gitlab.com",
        audience: "765904e9909fc9cc5c448a887849029d999cc2e400e097221bf910be39a16678",
        jwks: "gitlab_ci_oidc/jwks/gitlab_com_jwks_snapshot_2keys.json",
        token: "gitlab_ci_oidc/tokens/gitlab_com_oauth_user_id_token_alerta_2019-03-30.jwt",
        conditions: r#"project_id = "2""#,
        at: 1_553_983_043,
    };
    let err = evaluate(&user).await.unwrap_err();
    assert!(err.starts_with("claim_missing: required claim `project_path`"), "{err}");
    // its twin: the same token verifies under the generic profile pinned to its sub
    let generic = Case { profile: "oidc", conditions: r#"sub = "1565012""#, ..user };
    assert_eq!(evaluate(&generic).await, Ok(()));
}

#[tokio::test]
async fn google_user_token_under_the_gcp_profile() {
    if corpus().is_none() {
        return;
    }
    let google = Case {
        profile: "gcp",
        issuer: "https://accounts.google.com",
        audience: "736147134702-glkb1pesv716j1utg4llg7c3rr7nnhli.apps.googleusercontent.com",
        jwks: "gcp_identity/jwks/google_oauth2_v3_certs_2019-03_alerta.json",
        token: "gcp_identity/tokens/google_oauth_user_id_token_2019-03-29.jwt",
        conditions: r#"sub = "104004764824066359390""#,
        at: 1_553_860_142,
    };
    // signature, claims and the unique id: accepted at its own time
    assert_eq!(evaluate(&google).await, Ok(()));
    // a Compute Engine policy refuses a user token (no google.compute_engine claims)
    let gce = Case { conditions: r#"sub = "104004764824066359390", project_id = "my-project""#, ..google };
    assert!(evaluate(&gce).await.unwrap_err().contains("condition project_id"));
    // bound to another account's unique id: refused
    let other = Case { conditions: r#"sub = "1""#, ..google };
    assert!(evaluate(&other).await.unwrap_err().starts_with("policy_denied: "));
}

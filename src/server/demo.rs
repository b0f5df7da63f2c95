//! The demo OIDC issuer of `ephemera dev` (the command is `cli/dev.rs`). NOT for
//! production: the demo issuer signs any claims it is asked to, state is in memory, keys are
//! generated at start and forgotten at exit.
//!
//! The demo OIDC issuer lives on the broker's own port under `/demo/` (discovery, JWKS, and
//! `POST /demo/token`, which signs a GitHub-Actions-shaped ID token). The broker trusts it
//! through the same config path as any provider, with its keys pinned.

use crate::ids::random_id;
use crate::minting::jwt::BrokerSigner;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// The audience the dev broker expects in demo tokens.
pub(crate) const DEMO_AUDIENCE: &str = "ephemera-dev";
/// The demo role's name.
pub(crate) const DEMO_ROLE: &str = "demo";

/// The demo issuer: its URL and signing key.
#[derive(Debug)]
pub(crate) struct DemoIssuer {
    pub issuer: String,
    pub signer: BrokerSigner,
}

impl DemoIssuer {
    /// GitHub-Actions-shaped claims for `acme/app` on `main`, overridden by `overrides`.
    pub(crate) fn claims(&self, now: i64, overrides: &serde_json::Map<String, Value>) -> Value {
        let run_id = format!("{}", 10_000_000 + (now % 1_000_000));
        let mut c = json!({
            "iss": self.issuer,
            "aud": DEMO_AUDIENCE,
            "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app",
            "repository_id": "123456789",
            "repository_owner": "acme",
            "repository_owner_id": "987654",
            "ref": "refs/heads/main",
            "ref_type": "branch",
            "sha": "d6f1c1ab3b5e1c6c3ee2f9c0d7a1b2c3d4e5f607",
            "workflow": "deploy",
            "workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
            "event_name": "push",
            "runner_environment": "github-hosted",
            "actor": "octocat",
            "run_id": run_id,
            "run_number": "1",
            "run_attempt": "1",
            "jti": random_id(16).unwrap_or_default(),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        });
        if let Some(obj) = c.as_object_mut() {
            for (k, v) in overrides {
                obj.insert(k.clone(), v.clone());
            }
        }
        c
    }
}

/// The dev config: one provider (the demo issuer, keys pinned) and one role.
pub(crate) fn config_toml(
    listen: &str,
    broker_issuer: &str,
    demo_issuer: &str,
    jwks_file: &Path,
    audit: &Path,
) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
issuer = "{broker_issuer}"
detail = "full"                 # a newcomer sees why a denial is one (serve defaults to "reason")

[state]
backend = "memory"

[audit]
path = "{audit}"

[[providers]]
name = "demo"
profile = "github-actions"
issuer = "{demo_issuer}"
audiences = ["{DEMO_AUDIENCE}"]
algorithms = ["ES256"]
jwks_file = "{jwks}"

[[roles]]
name = "{DEMO_ROLE}"
provider = "demo"
max_ttl = "15m"
conditions = {{ repository = "acme/app", repository_id = "123456789", ref = "refs/heads/main" }}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#,
        audit = audit.display(),
        jwks = jwks_file.display(),
    )
}

async fn demo_token(State(d): State<Arc<(DemoIssuer, Arc<dyn crate::clock::Clock>)>>, body: Bytes) -> Response {
    let overrides = if body.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            _ => {
                return (StatusCode::BAD_REQUEST, "body must be a JSON object of claims to set\n").into_response();
            }
        }
    };
    let claims = d.0.claims(d.1.now(), &overrides);
    match d.0.signer.sign(&claims) {
        Ok(t) => ([(header::CONTENT_TYPE, "text/plain"), (header::CACHE_CONTROL, "no-store")], t.expose().to_owned())
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "signing failed\n").into_response(),
    }
}

/// Routes of the demo issuer, under `/demo/`.
pub(crate) fn routes(demo: DemoIssuer, clock: Arc<dyn crate::clock::Clock>) -> Router {
    let jwks = demo.signer.jwks();
    let disco = json!({
        "issuer": demo.issuer,
        "jwks_uri": format!("{}/jwks", demo.issuer),
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    });
    Router::new()
        // (every other method: the 405 JSON of the broker's own routes, fault review B7)
        .route("/demo/.well-known/openid-configuration", super::read(get(move || async move { axum::Json(disco) })))
        .route("/demo/jwks", super::read(get(move || async move { axum::Json(jwks) })))
        .route("/demo/token", super::form(post(demo_token)))
        .with_state(Arc::new((demo, clock)))
}

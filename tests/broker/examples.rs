//! Every example config loads and passes the strictness lint (what `ephemera check` runs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ephemera::config::Config;
use std::path::Path;

#[test]
fn every_example_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!config.roles.is_empty(), "{}", path.display());
            assert!(config.findings.iter().all(|f| f.severity != ephemera::policy::Severity::Error));
            seen += 1;
        }
    }
    assert!(seen >= 4, "expected the GitHub, GitLab, Kubernetes and OIDC examples, saw {seen}");
}

#[test]
fn the_deploy_template_refuses_privileged_triggers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/github-actions-deploy.toml");
    let config = Config::load(&path).unwrap();
    let role = &config.roles["deploy-prod"];
    let claims_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/claims");
    for (file, allow) in [("github-push-main.json", true), ("github-pull-request-target.json", false)] {
        let text = std::fs::read(claims_dir.join(file)).unwrap();
        let claims = ephemera_providers::jose::parse_claims(&text).unwrap();
        let workload = role.provider.profile.workload_from_claims(&claims, None, "t").unwrap();
        let iss = claims["iss"].as_str().unwrap();
        let d = config.engine.decide(
            &role.policy,
            &workload,
            &claims,
            iss,
            &ephemera::policy::At { times: (1_800_000_000, 1_800_000_000, 1_800_000_300), revoked: &[], details: None },
        );
        assert_eq!(d.allows(), allow, "{file}: {}", d.reasons());
    }
}

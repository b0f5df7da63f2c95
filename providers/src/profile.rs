//! Platform profiles: how a verified token names the workload and the task it is doing.
//!
//! This release has the generic `oidc` profile; GitHub Actions, GitLab, Kubernetes and GCP
//! profiles (with their required claims and immutable identifiers) are the next step and are
//! refused at config load until then, rather than silently treated as generic.

use crate::error::VerifyError;
use crate::verify::VerifiedToken;

/// A profile name from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Any issuer: the workload is (`iss`, `sub`).
    Oidc,
}

impl Profile {
    /// Parses a config value; names a profile that is known but not yet available.
    pub fn parse(name: &str) -> Result<Profile, String> {
        match name {
            "oidc" => Ok(Profile::Oidc),
            "github-actions" | "gitlab" | "kubernetes" | "gcp" => {
                Err(format!("profile `{name}` is not available in this release; use `oidc`"))
            }
            other => Err(format!("unknown profile `{other}` (expected oidc)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Oidc => "oidc",
        }
    }
}

/// Who the workload is and which task it is doing, as a profile reads them from a token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// Stable identity of the workload within its issuer.
    pub subject: String,
    /// The task this assertion was issued for. For `oidc`: the token's `jti`, or, without one,
    /// the assertion's own id (each token is then its own task).
    pub task: String,
}

impl Profile {
    /// Reads the workload from a verified token.
    pub fn workload(self, token: &VerifiedToken) -> Result<Workload, VerifyError> {
        match self {
            Profile::Oidc => Ok(Workload {
                subject: token.subject.clone(),
                task: token.jti.clone().unwrap_or_else(|| format!("assertion:{}", &token.replay_id[..32])),
            }),
        }
    }
}

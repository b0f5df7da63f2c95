//! GCP access tokens through IAM Credentials `generateAccessToken`.
//!
//! The broker authenticates as itself with `gcp_auth` (application default credentials: a key
//! file — whose `token_uri` may point anywhere, including a local test double —, the metadata
//! server, or a workload identity config; `gcp_auth` cannot impersonate), then asks IAM
//! Credentials for a token of the target service account with the role's scopes, optional
//! delegates, and the bounded lifetime. The IAM Credentials base URL is configurable.
//!
//! Where GCP should trust the broker itself instead (no Google secret in the broker), see the
//! README: broker JWTs as the subject token of a workload identity pool, with
//! `ephemera exchange --format gcp-executable`.

use crate::secret::IssuedCredential;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A role's GCP credential settings.
#[derive(Debug, Clone)]
pub struct GcpRole {
    pub service_account: String,
    pub scopes: Vec<String>,
    pub delegates: Vec<String>,
}

/// Why a token could not be minted. Upstream error bodies are never passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GcpError {
    #[error("the broker's own Google credentials are unavailable")]
    BrokerCredentials,
    #[error(
        "IAM Credentials refused generateAccessToken (HTTP {status}): check that the broker may impersonate the service account"
    )]
    Refused { status: u16 },
    #[error("IAM Credentials is unavailable ({0})")]
    Unavailable(String),
    #[error("IAM Credentials answered without a token")]
    NoToken,
}

impl GcpError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, GcpError::Unavailable(_))
    }
}

/// A minted access token. `Debug` redacts it.
pub struct GcpToken {
    pub access_token: IssuedCredential,
    /// Google's expiry (RFC 3339).
    pub expire_time: String,
}

impl std::fmt::Debug for GcpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpToken").field("access_token", &"[REDACTED]").field("expire_time", &self.expire_time).finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    access_token: Option<String>,
    expire_time: Option<String>,
}

/// The broker's Google identity and IAM Credentials client.
pub struct GcpMinter {
    provider: OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
    http: reqwest::Client,
    iam_base: String,
}

impl std::fmt::Debug for GcpMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpMinter").field("iam_base", &self.iam_base).finish_non_exhaustive()
    }
}

const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

impl GcpMinter {
    /// `iam_base` defaults to `https://iamcredentials.googleapis.com`.
    pub fn new(iam_base: Option<String>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(GcpMinter {
            provider: OnceCell::new(),
            http,
            iam_base: iam_base
                .unwrap_or_else(|| "https://iamcredentials.googleapis.com".into())
                .trim_end_matches('/')
                .to_owned(),
        })
    }

    async fn broker_token(&self) -> Result<String, GcpError> {
        // gcp_auth sets no timeout of its own: a token endpoint that never answers must not hold
        // the exchange.
        let fetch = async {
            let provider =
                self.provider.get_or_try_init(|| async { gcp_auth::provider().await }).await.map_err(|e| {
                    tracing::warn!(error = %e, "no Google application default credentials for the broker");
                    GcpError::BrokerCredentials
                })?;
            provider.token(&[CLOUD_PLATFORM]).await.map_err(|e| {
                tracing::warn!(error = %e, "the broker's Google token could not be obtained");
                match e {
                    // No answer at all (gcp_auth already retried): try again later.
                    gcp_auth::Error::Other(..) | gcp_auth::Error::Http(..) => {
                        GcpError::Unavailable("the broker's token endpoint is unreachable".into())
                    }
                    _ => GcpError::BrokerCredentials,
                }
            })
        };
        match tokio::time::timeout(BROKER_TOKEN_TIMEOUT, fetch).await {
            Ok(token) => Ok(token?.as_str().to_owned()),
            Err(_) => Err(GcpError::Unavailable("the broker's token endpoint timed out".into())),
        }
    }

    /// The `generateAccessToken` URL of `service_account`, its name percent-encoded as one path
    /// segment (a `?`, `#` or `/` in it cannot change the request's target).
    pub fn generate_url(&self, service_account: &str) -> Result<reqwest::Url, GcpError> {
        let mut url = reqwest::Url::parse(&self.iam_base)
            .map_err(|_| GcpError::Unavailable("the IAM Credentials base URL is not a URL".into()))?;
        url.path_segments_mut()
            .map_err(|_| GcpError::Unavailable("the IAM Credentials base URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(["v1", "projects", "-", "serviceAccounts", &format!("{service_account}:generateAccessToken")]);
        Ok(url)
    }

    /// Calls `generateAccessToken` for `role` with `lifetime` seconds.
    pub async fn mint(&self, role: &GcpRole, lifetime: i64) -> Result<GcpToken, GcpError> {
        let bearer = self.broker_token().await?;
        let url = self.generate_url(&role.service_account)?;
        let delegates: Vec<String> = role.delegates.iter().map(|d| format!("projects/-/serviceAccounts/{d}")).collect();
        let body = json!({"scope": role.scopes, "lifetime": format!("{lifetime}s"), "delegates": delegates});
        let mut resp = self
            .http
            .post(url)
            .bearer_auth(bearer)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                GcpError::Unavailable(if e.is_timeout() { "timed out".into() } else { "request failed".into() })
            })?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            tracing::warn!(status = status.as_u16(), service_account = %role.service_account, "generateAccessToken unavailable");
            return Err(GcpError::Unavailable(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            tracing::warn!(status = status.as_u16(), service_account = %role.service_account, "generateAccessToken refused");
            return Err(GcpError::Refused { status: status.as_u16() });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| GcpError::Unavailable("body read failed".into()))? {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(GcpError::NoToken);
            }
            bytes.extend_from_slice(&chunk);
        }
        let parsed: GenerateResponse = serde_json::from_slice(&bytes).map_err(|_| GcpError::NoToken)?;
        match (parsed.access_token, parsed.expire_time) {
            (Some(t), Some(e)) if !t.is_empty() => {
                Ok(GcpToken { access_token: IssuedCredential::new(t), expire_time: e })
            }
            _ => Err(GcpError::NoToken),
        }
    }
}

/// How long the broker waits for its own Google token (gcp_auth retries inside this).
const BROKER_TOKEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// The largest `generateAccessToken` answer read.
const MAX_RESPONSE: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_account_is_one_path_segment() {
        let m = GcpMinter::new(Some("http://127.0.0.1:9/base/".into())).unwrap();
        assert_eq!(
            m.generate_url("sa@p.iam.gserviceaccount.com").unwrap().as_str(),
            "http://127.0.0.1:9/base/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken"
        );
        let odd = m.generate_url("a@b.c/../x?y#z").unwrap();
        assert_eq!(odd.query(), None);
        assert_eq!(odd.fragment(), None);
        assert!(odd.path().ends_with("/serviceAccounts/a@b.c%2F..%2Fx%3Fy%23z:generateAccessToken"), "{odd}");
        let default = GcpMinter::new(None).unwrap();
        assert!(
            default.generate_url("s@p.x").unwrap().as_str().starts_with("https://iamcredentials.googleapis.com/v1/")
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let t = GcpToken { access_token: IssuedCredential::new("ya29.secret".into()), expire_time: "x".into() };
        assert!(!format!("{t:?}").contains("ya29"));
    }
}

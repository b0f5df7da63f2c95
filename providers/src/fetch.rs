//! Bounded fetches of discovery documents and JWKS: only from configured issuers, redirects never
//! followed, connect and total timeouts, bodies capped while they stream.

use futures_util::StreamExt;
use std::time::Duration;
use url::Url;

/// Limits on every fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchLimits {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_body_bytes: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(10),
            max_body_bytes: 100 * 1024,
        }
    }
}

/// Why a fetch failed. Messages carry the URL (configured, not secret) and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("discovery_issuer_mismatch: discovery names issuer `{got}`, configured `{expected}`")]
    DiscoveryIssuerMismatch { expected: String, got: String },
    #[error("jwks_uri_rejected: {0}")]
    JwksUriRejected(String),
    #[error("fetch of `{url}` failed: {cause}")]
    Http { url: String, cause: String },
    #[error("`{url}` answered with a redirect, which is never followed")]
    Redirect { url: String },
    #[error("`{url}` answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("`{url}` body exceeds {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error("`{url}` document invalid: {cause}")]
    Document { url: String, cause: String },
}

/// True for hosts that are this machine: `localhost`, 127.0.0.0/8, `::1`.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Why an issuer identifier is refused (the text is the config's and the fetch error's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerProblem {
    #[error("not an absolute URL ({0})")]
    NotAbsolute(String),
    #[error("not in canonical form (it would be rewritten when parsed)")]
    NotCanonical,
    /// `http` on a host that is not loopback (acceptable only for pinned keys: nothing fetched).
    #[error("uses http on a host that is not loopback")]
    HttpNotLoopback,
    #[error("scheme `{0}` is not https")]
    Scheme(String),
    #[error("has no host")]
    NoHost,
    #[error("has a userinfo part")]
    UserInfo,
    #[error("has a query or fragment")]
    QueryOrFragment,
    #[error("has empty or dot path segments")]
    PathSegments,
}

/// Checks an issuer identifier: an absolute `https` URL (or `http` on loopback) with a host, no
/// userinfo, query, fragment, dot segments or empty path segments.
pub fn validate_issuer(issuer: &str) -> Result<Url, IssuerProblem> {
    let url = Url::parse(issuer).map_err(|e| IssuerProblem::NotAbsolute(e.to_string()))?;
    if url.as_str().trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(IssuerProblem::NotCanonical);
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        "http" => return Err(IssuerProblem::HttpNotLoopback),
        s => return Err(IssuerProblem::Scheme(s.to_owned())),
    }
    if url.host().is_none() {
        return Err(IssuerProblem::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(IssuerProblem::UserInfo);
    }
    if url.query().is_some() || url.fragment().is_some() || issuer.contains('?') || issuer.contains('#') {
        return Err(IssuerProblem::QueryOrFragment);
    }
    let path = url.path();
    if path.contains("//")
        || path.split('/').any(|s| s == "." || s == "..")
        || issuer.contains("/../")
        || issuer.contains("/./")
    {
        return Err(IssuerProblem::PathSegments);
    }
    Ok(url)
}

/// The HTTP client for issuer fetches: rustls, no redirects, no proxy, timeouts, and DNS that
/// refuses non-public addresses unless `allow_private` (see [`crate::resolve`]).
pub fn http_client(
    limits: &FetchLimits,
    lookup: std::sync::Arc<dyn crate::resolve::Lookup>,
    allow_private: bool,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .dns_resolver(crate::resolve::GuardedResolver::new(lookup, allow_private))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(limits.connect_timeout)
        .timeout(limits.total_timeout)
        .user_agent(concat!("ephemera/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// A fetched document and the `Cache-Control: max-age` it came with.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<u64>,
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',').find_map(|d| d.trim().strip_prefix("max-age=").and_then(|v| v.trim().parse().ok()))
}

/// GET with a body cap enforced while streaming.
pub async fn get_capped(client: &reqwest::Client, url: &Url, limits: &FetchLimits) -> Result<Fetched, FetchError> {
    let u = url.to_string();
    let fut = async {
        let resp = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Http { url: u.clone(), cause: short_cause(&e) })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect { url: u.clone() });
        }
        if !status.is_success() {
            return Err(FetchError::Status { url: u.clone(), status: status.as_u16() });
        }
        if resp.content_length().is_some_and(|l| l > limits.max_body_bytes as u64) {
            return Err(FetchError::TooLarge { url: u.clone(), max: limits.max_body_bytes });
        }
        let max_age = max_age(resp.headers());
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FetchError::Http { url: u.clone(), cause: short_cause(&e) })?;
            if body.len() + chunk.len() > limits.max_body_bytes {
                return Err(FetchError::TooLarge { url: u.clone(), max: limits.max_body_bytes });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, max_age })
    };
    // reqwest's own timeout covers the whole request; this one also bounds a body that trickles.
    tokio::time::timeout(limits.total_timeout, fut)
        .await
        .unwrap_or_else(|_| Err(FetchError::Http { url: u.clone(), cause: "timed out".into() }))
}

fn short_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "body read failed".into()
    } else {
        "request failed".into()
    }
}

/// What discovery tells us; nothing else in the document is read.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Option<Vec<String>>,
}

/// Fetches and checks the discovery document of `issuer`; returns the JWKS URL it names.
pub async fn discover(
    client: &reqwest::Client,
    issuer: &str,
    jwks_hosts: &[String],
    limits: &FetchLimits,
) -> Result<(Discovery, Url), FetchError> {
    let issuer_url =
        validate_issuer(issuer).map_err(|e| FetchError::Document { url: issuer.into(), cause: e.to_string() })?;
    let disco_url = Url::parse(&format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')))
        .map_err(|e| FetchError::Document { url: issuer.into(), cause: e.to_string() })?;
    let fetched = get_capped(client, &disco_url, limits).await?;
    let obj = crate::json::parse_object(&fetched.body)
        .map_err(|e| FetchError::Document { url: disco_url.to_string(), cause: e.to_string() })?;
    let doc: Discovery = serde_json::from_value(serde_json::Value::Object(obj)).map_err(|_| FetchError::Document {
        url: disco_url.to_string(),
        cause: "issuer or jwks_uri missing or not strings".into(),
    })?;
    if doc.issuer != issuer {
        return Err(FetchError::DiscoveryIssuerMismatch {
            expected: issuer.into(),
            got: crate::error::escape_untrusted(&doc.issuer, 128),
        });
    }
    let jwks = Url::parse(&doc.jwks_uri).map_err(|_| FetchError::JwksUriRejected("not an absolute URL".into()))?;
    check_jwks_uri(&issuer_url, &jwks, jwks_hosts)?;
    Ok((doc, jwks))
}

/// A JWKS URL must be https (http only when the issuer itself is loopback http), carry no
/// userinfo, and sit on the issuer's host or a host the provider lists in `jwks_hosts`.
pub fn check_jwks_uri(issuer: &Url, jwks: &Url, jwks_hosts: &[String]) -> Result<(), FetchError> {
    let scheme_ok =
        jwks.scheme() == "https" || (jwks.scheme() == "http" && issuer.scheme() == "http" && is_loopback_host(jwks));
    if !scheme_ok {
        return Err(FetchError::JwksUriRejected(format!("scheme `{}` not allowed", jwks.scheme())));
    }
    if !jwks.username().is_empty() || jwks.password().is_some() {
        return Err(FetchError::JwksUriRejected("has a userinfo part".into()));
    }
    let host = jwks.host_str().unwrap_or_default();
    let same = issuer.host_str() == Some(host) && issuer.port_or_known_default() == jwks.port_or_known_default();
    if !same && !jwks_hosts.iter().any(|h| h == host) {
        return Err(FetchError::JwksUriRejected(format!(
            "host `{}` is neither the issuer's nor listed in jwks_hosts",
            crate::error::escape_untrusted(host, 64)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_hygiene() {
        for good in [
            "https://token.actions.githubusercontent.com",
            "https://gitlab.example.com",
            "http://127.0.0.1:8080/demo",
            "https://dev-66191jdr.eu.auth0.com/",
        ] {
            assert!(validate_issuer(good).is_ok(), "{good}");
        }
        for bad in [
            "https://a@b.example",
            "https://b.example?q",
            "https://b.example#f",
            "https://b.example/a/../b",
            "https://b.example//x",
            "http://b.example",
            "file:///etc/passwd",
            "b.example",
        ] {
            assert!(validate_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwks_uri_rules() {
        let iss = Url::parse("https://accounts.google.com").unwrap_or_else(|_| unreachable!());
        let ok = Url::parse("https://accounts.google.com/keys").unwrap_or_else(|_| unreachable!());
        let other = Url::parse("https://www.googleapis.com/oauth2/v3/certs").unwrap_or_else(|_| unreachable!());
        let http = Url::parse("http://accounts.google.com/keys").unwrap_or_else(|_| unreachable!());
        let meta = Url::parse("https://169.254.169.254/keys").unwrap_or_else(|_| unreachable!());
        assert!(check_jwks_uri(&iss, &ok, &[]).is_ok());
        assert!(check_jwks_uri(&iss, &other, &[]).is_err());
        assert!(check_jwks_uri(&iss, &other, &["www.googleapis.com".into()]).is_ok());
        assert!(check_jwks_uri(&iss, &http, &[]).is_err());
        assert!(check_jwks_uri(&iss, &meta, &[]).is_err());
    }
}

//! Telling partners a grant ended: RFC 8935 push delivery of Security Event Tokens (RFC 8417).
//! A transport only, like `minting`'s cloud calls: what to send, to whom and when is decided by
//! the exchange's outbox (`exchange/push.rs`); this sends one SET and says how it went.

use crate::secret::SharedSecret;
use std::time::Duration;

/// RFC 8935 §2: the media type of a pushed SET.
pub const SET_MEDIA_TYPE: &str = "application/secevent+jwt";

/// How one push went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The receiver accepted the SET (202).
    Delivered,
    /// The receiver refused it for good (400, RFC 8935 §2.3: its `err` code): not retried.
    Refused(String),
    /// Not delivered now (no answer, 5xx, 401/403/429, …): retried later.
    Failed(String),
}

/// The HTTP client SETs are pushed with: rustls, bounded, no redirects (a receiver's answer is
/// its own), no proxy from the environment surprises beyond reqwest's defaults.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Pushes one SET (compact JWS) to `endpoint`, with the receiver's bearer credential if it has
/// one.
pub async fn push_set(
    client: &reqwest::Client,
    endpoint: &url::Url,
    token: Option<&SharedSecret>,
    set: &str,
) -> Pushed {
    let mut req = client
        .post(endpoint.clone())
        .header(reqwest::header::CONTENT_TYPE, SET_MEDIA_TYPE)
        .header(reqwest::header::ACCEPT, "application/json")
        .body(set.to_owned());
    if let Some(t) = token {
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(t.expose());
        match reqwest::header::HeaderValue::from_bytes(&value) {
            Ok(mut v) => {
                v.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, v);
            }
            Err(_) => return Pushed::Refused("the receiver's credential is not a valid header value".into()),
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        // (the error names the endpoint, never the credential)
        Err(e) => return Pushed::Failed(format!("no answer: {}", e.without_url())),
    };
    let status = resp.status().as_u16();
    match status {
        200..=299 => Pushed::Delivered,
        400 => {
            // RFC 8935 §2.4: {"err": CODE, "description": TEXT}; only the code is kept
            let bytes = resp.bytes().await.unwrap_or_default();
            let body: serde_json::Value =
                serde_json::from_slice(&bytes[..bytes.len().min(16 * 1024)]).unwrap_or_default();
            let code = body.get("err").and_then(|v| v.as_str()).unwrap_or("invalid_request");
            Pushed::Refused(ephemera_providers::error::escape_untrusted(code, 64))
        }
        s => Pushed::Failed(format!("HTTP {s}")),
    }
}

//! `POST /v1/nonce`: a single-use, short-lived broker nonce for attestation and proof of
//! possession, bound to the role named by an optional `audience` form field. Its body is empty or
//! a form: a query string or another media type would leave the nonce bound to no role while the
//! caller thinks it named one, so both are refused as on `/v1/token`.

use super::error::{no_store, refused, reject, rejected};
use super::limits::client_key;
use super::limits::{HttpRejection, POST, headers_too_large, is_form};
use super::{App, ClientAddr};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most nonces one client (address, or IPv6 /64) may hold outstanding.
pub(super) const NONCES_PER_CLIENT: usize = 64;
/// Most clients tracked; past it, clients with nothing outstanding are dropped first.
const MAX_TRACKED: usize = 100_000;

/// Outstanding nonces per client, as the times they were issued (a nonce is outstanding for its
/// lifetime at most).
#[derive(Debug, Default)]
pub(super) struct NonceBudget {
    issued: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl NonceBudget {
    /// Room for one more nonce from `ip` now (and counts it), or not.
    pub(super) fn admit(&self, ip: IpAddr) -> bool {
        let ttl = Duration::from_secs(crate::exchange::NONCE_TTL as u64);
        let now = Instant::now();
        let Ok(mut g) = self.issued.lock() else { return false };
        if g.len() >= MAX_TRACKED {
            g.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < ttl));
            if g.len() >= MAX_TRACKED {
                return false;
            }
        }
        let q = g.entry(client_key(ip)).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= ttl) {
            q.pop_front();
        }
        if q.len() >= NONCES_PER_CLIENT {
            return false;
        }
        q.push_back(now);
        true
    }
}

pub(super) async fn nonce(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let refuse = |r: HttpRejection, detail: &str| rejected(r, &r.saying(detail));
    if client.is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        return refuse(HttpRejection::RateLimited, "too many requests from this client");
    }
    if headers_too_large(&headers) {
        return reject(HttpRejection::HeadersTooLarge);
    }
    if method != Method::POST {
        return refuse(HttpRejection::MethodNotAllowed { allow: POST }, "use POST");
    }
    // A role named anywhere but the form would be ignored, and the nonce bound to no role.
    if uri.query().is_some() {
        return reject(HttpRejection::QueryString);
    }
    let Ok(body) = body else { return refuse(HttpRejection::BodyTooLarge, "body over the size limit") };
    // One client cannot hold the whole nonce table (review C6): at most this many outstanding.
    if client.is_some_and(|c| !app.nonces.admit(c.0.0.ip())) {
        return refuse(
            HttpRejection::RateLimited,
            "too many outstanding nonces from this client; use or let them expire",
        );
    }
    if !body.is_empty() && !is_form(&headers) {
        return reject(HttpRejection::NotForm);
    }
    match app.broker.issue_nonce(&body).await {
        Ok(n) => no_store(axum::Json(n).into_response()),
        Err(e) => refused(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_hold_more_than_its_share() {
        let b = NonceBudget::default();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..NONCES_PER_CLIENT {
            assert!(b.admit(a));
        }
        assert!(!b.admit(a), "over its share");
        assert!(b.admit("192.0.2.9".parse().unwrap()), "another client still gets nonces");
        // an IPv6 /64 is one client
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..NONCES_PER_CLIENT {
            assert!(b.admit(v6(&format!("2001:db8:1:2::{:x}", i + 1))));
        }
        assert!(!b.admit(v6("2001:db8:1:2::ffff")));
        assert!(b.admit(v6("2001:db8:1:3::1")), "the next /64 is another client");
    }
}

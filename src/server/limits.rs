//! What the server refuses before any form is read, and the per-client rate limit.

use crate::exchange::{Class, Refusal};
use axum::http::StatusCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most bytes of request headers accepted on the token and nonce endpoints.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The `Allow` of a route that takes a form.
pub(super) const POST: &str = "POST";
/// The `Allow` of a route that is read.
pub(super) const GET: &str = "GET,HEAD";
/// The methods of a page that is read and takes its form (the inventory's login).
pub(super) const GET_POST: &str = "GET,HEAD,POST";

/// More than [`MAX_HEADER_BYTES`] of request headers.
pub(super) fn headers_too_large(headers: &axum::http::HeaderMap) -> bool {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() > MAX_HEADER_BYTES
}

/// The body is declared `application/x-www-form-urlencoded`.
pub(super) fn is_form(headers: &axum::http::HeaderMap) -> bool {
    headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    })
}

/// A request the server refuses on its transport alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpRejection {
    RateLimited,
    HeadersTooLarge,
    /// The route answers only `allow` (`POST`, or `GET,HEAD`).
    MethodNotAllowed {
        allow: &'static str,
    },
    QueryString,
    NotForm,
    BodyTooLarge,
    NotFound,
    Unauthorized,
    /// A bearer credential was presented and matched none (a wrong one, not a missing one).
    CredentialRefused,
    /// The body did not arrive within the header read timeout (a slow-body client, review C21).
    SlowBody,
    /// The request was not answered within the backstop (`request_timeout` + 30 s).
    Timeout,
    /// Too many connections open, from this address or in all (review C21).
    TooManyConnections,
    /// What the HTTP parser refused before any route saw it (fault review B7).
    MalformedHttp,
    /// Headers over the HTTP parser's own bounds (64 KiB, 256 headers).
    HeadersOverParserLimit,
}

impl HttpRejection {
    /// Its status, OAuth error code, reason slug and class: one exhaustive `match`.
    fn parts(self) -> (StatusCode, &'static str, &'static str, Class) {
        use HttpRejection::*;
        match self {
            RateLimited => {
                (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable", "rate_limited", Class::Unavailable)
            }
            HeadersTooLarge => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "invalid_request", "request_too_large", Class::TooLarge)
            }
            MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "method_not_allowed", Class::Rejected)
            }
            QueryString => (StatusCode::BAD_REQUEST, "invalid_request", "request_invalid", Class::Rejected),
            NotForm => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request", "request_invalid", Class::Rejected),
            BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "request_too_large", Class::TooLarge),
            NotFound => (StatusCode::NOT_FOUND, "invalid_request", "not_found", Class::Rejected),
            Unauthorized | CredentialRefused => {
                (StatusCode::UNAUTHORIZED, "invalid_client", "unauthorized", Class::Rejected)
            }
            SlowBody => (StatusCode::REQUEST_TIMEOUT, "invalid_request", "request_timeout", Class::Rejected),
            Timeout => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "request_timeout", Class::Unavailable)
            }
            TooManyConnections => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "too_many_connections", Class::Unavailable)
            }
            MalformedHttp => (StatusCode::BAD_REQUEST, "invalid_request", "request_invalid", Class::Rejected),
            HeadersOverParserLimit => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "invalid_request", "request_too_large", Class::TooLarge)
            }
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        self.parts().0
    }

    /// What the token route says of it.
    fn text(self) -> String {
        match self {
            HttpRejection::RateLimited => "too many requests from this client; retry later".into(),
            HttpRejection::HeadersTooLarge => format!("request headers over {MAX_HEADER_BYTES} bytes"),
            HttpRejection::MethodNotAllowed { allow: POST } => "use POST with a form body".into(),
            HttpRejection::MethodNotAllowed { allow } => format!("use {}", allow.split(',').next().unwrap_or(allow)),
            HttpRejection::QueryString => "parameters belong in the form body, not the query string".into(),
            HttpRejection::NotForm => "body must be application/x-www-form-urlencoded".into(),
            HttpRejection::BodyTooLarge => "request body over the size limit".into(),
            HttpRejection::NotFound => "no such route".into(),
            HttpRejection::Unauthorized => "an admin bearer credential is required".into(),
            HttpRejection::CredentialRefused => "the bearer credential presented was refused".into(),
            HttpRejection::SlowBody => "the request body did not arrive in time".into(),
            HttpRejection::Timeout => "the request was not answered in time; try again".into(),
            HttpRejection::TooManyConnections => "too many open connections; retry later".into(),
            HttpRejection::MalformedHttp => "not a well-formed HTTP/1.1 request".into(),
            HttpRejection::HeadersOverParserLimit => "request headers over 64 KiB or 256 fields".into(),
        }
    }

    /// The refusal, in the token route's words.
    pub(crate) fn refusal(self) -> Refusal {
        self.saying(&self.text())
    }

    /// The refusal, in other words (the nonce route's).
    pub(crate) fn saying(self, detail: &str) -> Refusal {
        let (_, error, reason, class) = self.parts();
        Refusal::new(class, error, reason, detail)
    }
}

/// A request body, read within the body size limit and `within` (the header read timeout): a
/// slow body is answered 408, not held (review C21); a body that is not well-formed (bad chunked
/// encoding) is a 400, one over the limit a 413.
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
    within: Duration,
) -> Result<axum::body::Bytes, HttpRejection> {
    match tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut over = false;
            while let Some(s) = source {
                // (http-body-util's LengthLimitError says exactly this)
                over |= s.to_string() == "length limit exceeded";
                source = s.source();
            }
            Err(if over { HttpRejection::BodyTooLarge } else { HttpRejection::MalformedHttp })
        }
        Err(_) => Err(HttpRejection::SlowBody),
    }
}

/// Every route but `/v1/token` (which admits a request first and reads its own body) gets its
/// body read here, before the route runs, within the same bounds: no route holds a connection for
/// a body that trickles (fault review, slow bodies on the admin and nonce routes).
pub(crate) async fn read_body_first(
    limit: usize,
    within: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.uri().path() == "/v1/token" {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match read_body(body, limit, within).await {
        Ok(bytes) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(r) => {
            let mut resp = super::error::reject(r);
            resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            resp
        }
    }
}

/// The client an address is counted as: itself, or its /64 for IPv6 (one host has many).
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

/// Token buckets per client address on `/v1/token`. Bounded: past `max_clients` tracked
/// addresses, idle buckets are dropped; if none is idle, new clients are refused (429) rather
/// than letting the table grow.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            max_clients: 100_000,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; false when the client is over its rate.
    pub(crate) fn admit(&self, ip: IpAddr) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        // an IPv6 host holds a whole /64: it is one client (review S4)
        let ip = client_key(ip);
        let now = Instant::now();
        let Ok(mut map) = self.buckets.lock() else { return false };
        if map.len() >= self.max_clients && !map.contains_key(&ip) {
            let (rate, burst) = (self.per_second, self.burst);
            map.retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * rate < burst);
            if map.len() >= self.max_clients {
                return false;
            }
        }
        let (tokens, last) = map.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_admits_a_burst_then_refuses() {
        let l = RateLimiter::new(1, 5);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.admit(a)).count(), 5);
        assert!(l.admit(b), "another client is unaffected");
    }

    /// The table of tracked addresses is bounded (README: 100,000): a new client past the bound
    /// is refused while every tracked one is busy, and the tracked ones keep their buckets.
    #[test]
    fn rate_limiter_tracks_a_bounded_number_of_clients() {
        assert_eq!(RateLimiter::new(1, 5).max_clients, 100_000);
        let l = RateLimiter { max_clients: 3, ..RateLimiter::new(1, 2) };
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        for n in 1..=3 {
            assert!(l.admit(ip(n)), "client {n} within the bound");
        }
        assert!(!l.admit(ip(4)), "a fourth client while three are busy");
        assert!(l.admit(ip(1)), "a tracked client keeps its bucket (second of its burst of 2)");
        assert_eq!(l.buckets.lock().map(|m| m.len()).unwrap_or(0), 3);
    }
}

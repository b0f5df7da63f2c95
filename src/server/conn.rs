//! Connections, below the routes: how many may be open (in all and per client address), and the
//! answers the HTTP parser gives on its own, which are rewritten to RFC 6749 JSON like every
//! other answer (review C21, fault review B7).

use super::limits::HttpRejection;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most connections open at once, in all.
pub(super) const MAX_CONNECTIONS: usize = 4096;
/// Most connections open at once from one client address.
pub(super) const MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// Open connections, counted in all and per client address.
#[derive(Debug, Default)]
pub(super) struct Connections {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub(super) struct Admitted {
    table: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    /// A place for a connection from `ip`, or `None` when it would pass either cap.
    pub(super) fn admit(table: &Arc<Connections>, ip: IpAddr) -> Option<Admitted> {
        let mut g = table.open.lock().ok()?;
        let (total, per) = &mut *g;
        let mine = per.get(&ip).copied().unwrap_or(0);
        if *total >= MAX_CONNECTIONS || mine >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        *total += 1;
        per.insert(ip, mine + 1);
        Some(Admitted { table: table.clone(), ip })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut g) = self.table.open.lock() {
            let (total, per) = &mut *g;
            *total = total.saturating_sub(1);
            if let Some(n) = per.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&self.ip);
                }
            }
        }
    }
}

/// Is `ip` in one of `blocks` (address, prefix length)?
fn within(ip: IpAddr, blocks: &[(IpAddr, u8)]) -> bool {
    blocks.iter().any(|(net, len)| match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(*n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(*n) & mask
        }
        _ => false,
    })
}

/// The client a request is counted against: the peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not one (each proxy appends the address it
/// saw; what is left of the first untrusted one was written by the client and proves nothing).
/// Review S4.
pub(super) fn client_of(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[(IpAddr, u8)]) -> IpAddr {
    if trusted.is_empty() || !within(peer, trusted) {
        return peer;
    }
    // RFC 7239 `Forwarded` when the proxy sends it, else `X-Forwarded-For`; a list that does not
    // read whole is not used at all (the peer is counted)
    let forwarded: Vec<&str> = headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()).collect();
    let hops: Vec<IpAddr> = if forwarded.is_empty() {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().parse::<IpAddr>().ok())
            .collect::<Option<_>>()
            .unwrap_or_default()
    } else {
        forwarded.iter().flat_map(|v| v.split(',')).map(forwarded_for).collect::<Option<_>>().unwrap_or_default()
    };
    hops.into_iter().rev().find(|h| !within(*h, trusted)).unwrap_or(peer)
}

/// The `for=` address of one `Forwarded` element: `for=192.0.2.60`, `for="[2001:db8::1]:4711"`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| v.trim().trim_matches('"'))
    })?;
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| value.rsplit_once(':')?.0.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))
}

/// A whole HTTP/1.1 response for `rejection`, as bytes (for a connection no route will see).
pub(super) fn raw_response(rejection: HttpRejection) -> Vec<u8> {
    let r = rejection.refusal();
    let body = serde_json::json!({"error": r.error, "error_description": r.description}).to_string();
    let status = rejection.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// The HTTP parser's own answer (an empty-bodied 4xx it writes before closing), if `buf` is one:
/// which rejection it stands for.
fn parser_answer(buf: &[u8]) -> Option<HttpRejection> {
    let head = buf.strip_suffix(b"\r\n\r\n")?;
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let empty = lines.any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    match (status, empty) {
        ("431", true) => Some(HttpRejection::HeadersOverParserLimit),
        ("400" | "414" | "505", true) => Some(HttpRejection::MalformedHttp),
        _ => None,
    }
}

/// A connection whose writes pass through, except the parser's empty-bodied error answers,
/// which go out as RFC 6749 JSON instead. Routes never answer an empty 4xx (every refusal has its
/// JSON body), so only the parser's are caught.
pub(super) struct JsonErrors<T> {
    inner: T,
    /// Bytes still to write of a rewritten answer.
    pending: Vec<u8>,
}

impl<T> JsonErrors<T> {
    pub(super) fn new(inner: T) -> Self {
        JsonErrors { inner, pending: Vec::new() }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if let Some(rejection) = parser_answer(buf) {
            self.pending = raw_response(rejection);
            return match self.drain(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                // the rewritten answer stands for all of `buf`; what is left goes out on flush
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }

    // (not vectored: the parser's answer then comes as one buffer, which is what is recognised)
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parsers_empty_answers_are_recognised_and_nothing_else() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 15:00:00 GMT\r\n\r\n";
        assert_eq!(parser_answer(bare), Some(HttpRejection::MalformedHttp));
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parser_answer(big), Some(HttpRejection::HeadersOverParserLimit));
        // a route's answers (with bodies) and successes pass through
        assert_eq!(parser_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\n\r\n"), None);
        assert_eq!(parser_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(parser_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}"), None);
    }

    #[test]
    fn forwarded_names_the_client_only_from_a_trusted_proxy() {
        let trusted = [("10.0.0.0".parse().unwrap(), 8)];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let mut h = axum::http::HeaderMap::new();
        h.insert("forwarded", "for=192.0.2.60;proto=https, for=\"10.9.9.9:80\"".parse().unwrap());
        assert_eq!(client_of(proxy, &h, &trusted), "192.0.2.60".parse::<IpAddr>().unwrap());
        h.insert("forwarded", "for=\"[2001:db8::1]:4711\"".parse().unwrap());
        assert_eq!(client_of(proxy, &h, &trusted), "2001:db8::1".parse::<IpAddr>().unwrap());
        // an untrusted peer, or a list that does not read, counts the peer
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_of(stranger, &h, &trusted), stranger);
        h.insert("forwarded", "for=unknown".parse().unwrap());
        assert_eq!(client_of(proxy, &h, &trusted), proxy);
    }

    #[test]
    fn a_raw_answer_is_rfc6749_json() {
        let raw = String::from_utf8(raw_response(HttpRejection::MalformedHttp)).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "invalid_request");
        assert!(v["error_description"].as_str().unwrap().starts_with("request_invalid: "));
    }

    #[test]
    fn the_client_behind_a_trusted_proxy_is_the_last_untrusted_hop() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = vec![(ip("10.0.0.0"), 8)];
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3".parse().unwrap());
        assert_eq!(client_of(ip("10.0.0.9"), &h, &trusted), ip("203.0.113.7"));
        // an untrusted peer's header is ignored (the twin), and so is a header that does not parse
        assert_eq!(client_of(ip("198.51.100.1"), &h, &trusted), ip("198.51.100.1"));
        h.insert("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(client_of(ip("10.0.0.9"), &h, &trusted), ip("10.0.0.9"));
        assert_eq!(client_of(ip("10.0.0.9"), &h, &[]), ip("10.0.0.9"));
    }

    #[test]
    fn connections_are_capped_per_client_and_given_back() {
        let table = Arc::new(Connections::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<Admitted> =
            (0..MAX_CONNECTIONS_PER_CLIENT).map(|_| Connections::admit(&table, a).unwrap()).collect();
        assert!(Connections::admit(&table, a).is_none(), "the client's cap");
        assert!(Connections::admit(&table, b).is_some(), "another client is not held up");
        drop(held);
        assert!(Connections::admit(&table, a).is_some(), "places are given back");
    }
}

//! `[events]`: who is told when a grant ends. Each `[[events.receivers]]` entry is a partner
//! that hears of the revocation of broker JWTs of its audience: a CAEP `session-revoked` SET,
//! pushed by RFC 8935 (`exchange/push.rs`).

use super::raw::RawEvents;
use crate::secret::SharedSecret;
use std::path::{Path, PathBuf};

/// A partner pushed SETs.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// The broker-JWT audience whose revocations it hears.
    pub audience: String,
    /// Where SETs are pushed.
    pub endpoint: url::Url,
    /// The bearer credential sent with each push (`Debug` redacts it).
    pub token: Option<SharedSecret>,
}

/// Every `[[events.receivers]]` entry, checked: an https endpoint (http on loopback only), a
/// non-empty audience, a readable credential file when one is named.
pub(super) fn receivers(raw: &RawEvents, resolve: &dyn Fn(&Path) -> PathBuf, errs: &mut Vec<String>) -> Vec<Receiver> {
    let mut out = Vec::new();
    for (i, r) in raw.receivers.iter().enumerate() {
        let key = format!("events.receivers[{i}]");
        if r.audience.is_empty() {
            errs.push(format!("{key}.audience: must not be empty"));
        }
        let endpoint = match url::Url::parse(&r.endpoint) {
            Ok(u) if u.scheme() == "https" => Some(u),
            Ok(u) if u.scheme() == "http" && loopback(&u) => Some(u),
            Ok(_) => {
                errs.push(format!("{key}.endpoint: https only (http on a loopback address for tests)"));
                None
            }
            Err(e) => {
                errs.push(format!("{key}.endpoint: {e}"));
                None
            }
        };
        let token = r.token_file.as_deref().map(resolve).and_then(|p| match std::fs::read_to_string(&p) {
            Ok(t) if !t.trim().is_empty() => Some(SharedSecret::new(t.trim().as_bytes().to_vec())),
            Ok(_) => {
                errs.push(format!("{key}.token_file: {}: empty", p.display()));
                None
            }
            Err(e) => {
                errs.push(format!("{key}.token_file: {}: {e}", p.display()));
                None
            }
        });
        if let Some(endpoint) = endpoint {
            out.push(Receiver { audience: r.audience.clone(), endpoint, token });
        }
    }
    out
}

fn loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

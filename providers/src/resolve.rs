//! DNS for issuer fetches, guarded: a hostname that resolves to a loopback, private, link-local,
//! shared or otherwise non-public address is refused at connect time (DNS rebinding, SSRF to
//! metadata endpoints), unless the operator allows private addresses. IP-literal issuers are not
//! resolved: they are what the operator configured.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// Name lookup, injectable so tests can make any name resolve to any address.
pub trait Lookup: Send + Sync {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver.
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    }
}

fn v4_public(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240)
}

/// Is this address on the public internet?
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_public(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_public(v4);
            }
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            // Prefixes that reach IPv4 hosts (review S1): NAT64 (64:ff9b::/96, the embedded
            // address is the last 32 bits) and 6to4 (2002::/16, bits 16–47) are judged by the
            // IPv4 address inside; IPv4-compatible (::/96), the local-use NAT64 prefix
            // 64:ff9b:1::/48, Teredo (2001::/32) and site-local (fec0::/10) are never public.
            if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
                return v4_public(embedded(seg[6], seg[7]));
            }
            if seg[0] == 0x2002 {
                return v4_public(embedded(seg[1], seg[2]));
            }
            if seg[..6] == [0, 0, 0, 0, 0, 0]
                || (seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 1)
                || (seg[0] == 0x2001 && seg[1] == 0)
                || (seg[0] & 0xffc0) == 0xfec0
            {
                return false;
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0))
        }
    }
}

/// Resolves with `inner` and keeps only public addresses (all, when `allow_private`).
pub struct GuardedResolver {
    inner: Arc<dyn Lookup>,
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn Lookup>, allow_private: bool) -> Self {
        GuardedResolver { inner, allow_private }
    }

    /// The addresses a fetch may connect to for `host`.
    pub async fn addresses(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let all = self.inner.lookup(host).await?;
        let kept: Vec<IpAddr> = all.into_iter().filter(|ip| self.allow_private || is_public(*ip)).collect();
        if kept.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "host resolves only to non-public addresses (set jwks.allow_private_addresses to allow)",
            ));
        }
        Ok(kept)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let inner = self.inner.clone();
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let guard = GuardedResolver { inner, allow_private };
            let ips = guard.addresses(&host).await?;
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fixed(HashMap<&'static str, Vec<IpAddr>>);
    impl Lookup for Fixed {
        fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
            let r = self.0.get(host).cloned().ok_or_else(|| io::Error::other("nxdomain"));
            Box::pin(async move { r })
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classification() {
        for p in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:5",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a00:5::1",
            "::7f00:1",
            "::5db8:d822",
            "2001::1",
            "fec0::1",
        ] {
            assert!(!is_public(ip(p)), "{p}");
        }
        // the twins: the same prefixes around a public IPv4 address are public
        for p in [
            "93.184.216.34",
            "140.82.112.3",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(ip(p)), "{p}");
        }
    }

    #[tokio::test]
    async fn rebinding_to_private_addresses_is_refused() {
        let map = HashMap::from([
            ("rebind.test", vec![ip("127.0.0.1")]),
            ("mapped.test", vec![ip("::ffff:10.0.0.1")]),
            ("mixed.test", vec![ip("10.0.0.1"), ip("93.184.216.34")]),
            ("public.test", vec![ip("93.184.216.34")]),
        ]);
        let guard = GuardedResolver::new(Arc::new(Fixed(map.clone())), false);
        assert!(guard.addresses("rebind.test").await.is_err());
        assert!(guard.addresses("mapped.test").await.is_err());
        assert_eq!(guard.addresses("mixed.test").await.unwrap(), vec![ip("93.184.216.34")]);
        assert_eq!(guard.addresses("public.test").await.unwrap(), vec![ip("93.184.216.34")]);
        let open = GuardedResolver::new(Arc::new(Fixed(map)), true);
        assert_eq!(open.addresses("rebind.test").await.unwrap(), vec![ip("127.0.0.1")]);
    }
}

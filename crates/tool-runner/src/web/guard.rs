//! Which addresses `fetch_url` may connect to. Private, loopback, link-local,
//! shared (CGNAT), unspecified, multicast, broadcast, documentation and reserved
//! addresses are refused (also in their IPv4-mapped, IPv4-compatible, NAT64 and
//! 6to4 IPv6 forms), unless `[tools.web] allow_hosts` names the host as the URL
//! writes it.
//!
//! The check is made on the addresses actually connected to: [`GuardedResolver`]
//! is the HTTP client's only resolver and hands it only addresses it has checked,
//! so a second DNS answer cannot slip in between check and connect. IP literals
//! never reach a resolver; [`HostPolicy::check_url`] checks them before a request.
//! Nothing here may ever let an unchecked address through.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Why an address is not public, or `None` when it is.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "the unspecified address",
        _ if ip.is_broadcast() => "the broadcast address",
        (0, ..) => "a 'this network' address (0.0.0.0/8)",
        (10, ..) => "a private address (10.0.0.0/8)",
        (100, 64..=127, _) => "a shared (CGNAT) address (100.64.0.0/10)",
        (127, ..) => "a loopback address",
        (169, 254, _) => "a link-local address (169.254.0.0/16)",
        (172, 16..=31, _) => "a private address (172.16.0.0/12)",
        (192, 0, 0) => "a reserved address (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (192, 88, 99) => "a reserved address (192.88.99.0/24)",
        (192, 168, _) => "a private address (192.168.0.0/16)",
        (198, 18..=19, _) => "a benchmarking address (198.18.0.0/15)",
        (224..=239, ..) => "a multicast address",
        (240..=255, ..) => "a reserved address (240.0.0.0/4)",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // Forms that carry an IPv4 address: judged by that address.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d; the deprecated IPv4-compatible ::a.b.c.d is never routed.
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => return non_public_v4(embedded(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] => {
            return non_public_v4(embedded(hi, lo))
                .or(Some("a deprecated IPv4-compatible address"));
        }
        // NAT64 (well-known prefix) and 6to4 reach the embedded IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x2002, hi, lo, ..] => {
            return non_public_v4(embedded(hi, lo));
        }
        _ => {}
    }
    Some(match s[0] {
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only address (100::/64)",
        0x0064 if s[1] == 0xff9b && s[2] == 1 => "a local-use NAT64 address (64:ff9b:1::/48)",
        0x2001 if s[1] < 0x0200 => "a reserved address (2001::/23)",
        0x2001 if s[1] == 0x0db8 => "a documentation address (2001:db8::/32)",
        0x3fff if s[1] < 0x1000 => "a documentation address (3fff::/20)",
        0xfc00..=0xfdff => "a unique local address (fc00::/7)",
        0xfe80..=0xfebf => "a link-local address (fe80::/10)",
        0xfec0..=0xfeff => "a site-local address (fec0::/10)",
        0xff00..=0xffff => "a multicast address",
        // Anything outside 2000::/3 is not globally routed unicast.
        0x0000..=0x1fff | 0x4000..=0xfbff => "a reserved address (outside 2000::/3)",
        _ => return None,
    })
}

/// `[tools.web] allow_hosts`: hosts, as written in a URL, whose addresses are
/// not checked.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    names: HashSet<String>,
    ips: HashSet<IpAddr>,
}

/// A request that must not be made, and why (safe to show the model).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl HostPolicy {
    pub fn new(allow_hosts: &[String]) -> Self {
        let mut policy = Self::default();
        for host in allow_hosts {
            let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(ip) => policy.ips.insert(ip),
                Err(_) => policy.names.insert(host),
            };
        }
        policy
    }

    fn allows_name(&self, name: &str) -> bool {
        self.names
            .contains(&name.trim_end_matches('.').to_ascii_lowercase())
    }

    /// What can be known before connecting: the scheme, and an IP literal
    /// (which no resolver sees). Names are checked when they are resolved.
    pub fn check_url(&self, url: &Url) -> Result<(), UrlProblem> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlProblem::Scheme(url.scheme().to_owned()));
        }
        let ip = match url.host() {
            None => return Err(UrlProblem::NoHost),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        if self.ips.contains(&ip) {
            return Ok(());
        }
        match non_public(ip) {
            Some(why) => Err(UrlProblem::Refused(Refused(format!(
                "{ip} is {why}; fetch_url does not reach private or local networks \
                 (an operator can allow a host in [tools.web] allow_hosts)"
            )))),
            None => Ok(()),
        }
    }

    /// Whether an address the client ended up connected to passes (a second
    /// line behind the resolver).
    pub fn check_connected(&self, url: &Url, addr: SocketAddr) -> Result<(), Refused> {
        let allowed = match url.host() {
            Some(Host::Domain(name)) => self.allows_name(name),
            Some(Host::Ipv4(ip)) => self.ips.contains(&IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.ips.contains(&IpAddr::V6(ip)),
            None => false,
        };
        match non_public(addr.ip()) {
            Some(why) if !allowed => Err(Refused(format!(
                "{} was reached at {}, which is {why}",
                url.host_str().unwrap_or_default(),
                addr.ip()
            ))),
            _ => Ok(()),
        }
    }
}

/// Why a URL cannot be fetched at all.
#[derive(Debug, thiserror::Error)]
pub enum UrlProblem {
    #[error("only http and https URLs can be fetched, not {0}:")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error(transparent)]
    Refused(Refused),
}

/// The HTTP client's resolver: the system's answer, every address of it checked.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<HostPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<HostPolicy>) -> Self {
        Self { policy }
    }

    /// Resolves `name` and checks every address; one that is not public
    /// refuses the whole name (unless allowed), so no address of it is tried.
    pub async fn lookup(&self, name: &str) -> Result<Vec<SocketAddr>, LookupError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, 0))
            .await
            .map_err(|e| LookupError::Dns(format!("cannot resolve {name}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(LookupError::Dns(format!("{name} has no address")));
        }
        if !self.policy.allows_name(name)
            && let Some((ip, why)) = addrs
                .iter()
                .find_map(|a| non_public(a.ip()).map(|why| (a.ip(), why)))
        {
            return Err(LookupError::Refused(Refused(format!(
                "{name} resolves to {ip}, which is {why}; fetch_url does not reach private \
                 or local networks (an operator can allow a host in [tools.web] allow_hosts)"
            ))));
        }
        Ok(addrs)
    }
}

/// A failed lookup: the name does not resolve, or resolves somewhere refused.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    Dns(String),
    #[error(transparent)]
    Refused(Refused),
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.lookup(name.as_str()).await.map_err(|e| match e {
                // Kept as its own type so the caller can tell a refusal from a DNS failure.
                LookupError::Refused(r) => Box::new(r) as Box<dyn std::error::Error + Send + Sync>,
                other => Box::new(other),
            })?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_local_and_reserved_addresses_are_not_public() {
        for a in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.255",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "2001::1",
        ] {
            assert!(non_public(ip(a)).is_some(), "{a} passed as public");
        }
    }

    #[test]
    fn ipv6_forms_of_an_ipv4_address_are_judged_by_that_address() {
        for a in [
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::192.168.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(non_public(ip(a)).is_some(), "{a} passed as public");
        }
        for a in ["::ffff:8.8.8.8", "64:ff9b::1.1.1.1", "2002:0808:0808::1"] {
            assert_eq!(non_public(ip(a)), None, "{a} refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "11.0.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
        ] {
            assert_eq!(non_public(ip(a)), None, "{a} refused");
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn urls_are_refused_by_scheme_and_by_ip_literal_unless_the_host_is_allowed() {
        let none = HostPolicy::new(&[]);
        for u in ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/"] {
            assert!(
                matches!(none.check_url(&url(u)), Err(UrlProblem::Scheme(_))),
                "{u}"
            );
        }
        for u in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:80/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://10.0.0.1/",
        ] {
            assert!(
                matches!(none.check_url(&url(u)), Err(UrlProblem::Refused(_))),
                "{u}"
            );
        }
        assert!(none.check_url(&url("https://example.com/")).is_ok());
        assert!(none.check_url(&url("http://8.8.8.8/")).is_ok());

        let some = HostPolicy::new(&["127.0.0.1".into(), "[::1]".into(), "Intranet.".into()]);
        assert!(some.check_url(&url("http://127.0.0.1:9/")).is_ok());
        assert!(some.check_url(&url("http://[::1]:9/")).is_ok());
        // Allowed as written: another address or form of it is not.
        for u in [
            "http://127.0.0.2/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
        ] {
            assert!(some.check_url(&url(u)).is_err(), "{u}");
        }
        assert!(some.allows_name("intranet"));
        assert!(!some.allows_name("localhost"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_allowed() {
        let refusing = GuardedResolver::new(Arc::new(HostPolicy::new(&[])));
        match refusing.lookup("localhost").await {
            Err(LookupError::Refused(r)) => {
                assert!(r.0.contains("localhost resolves to"), "{r}")
            }
            other => panic!("localhost was not refused: {other:?}"),
        }
        let allowing = GuardedResolver::new(Arc::new(HostPolicy::new(&["localhost".into()])));
        let addrs = allowing.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn the_connected_address_is_checked_against_the_host_as_written() {
        let policy = HostPolicy::new(&["127.0.0.1".into()]);
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(
            policy
                .check_connected(&url("http://127.0.0.1/"), addr)
                .is_ok()
        );
        assert!(
            policy
                .check_connected(&url("http://sneaky.example/"), addr)
                .is_err()
        );
        assert!(
            policy
                .check_connected(
                    &url("http://sneaky.example/"),
                    "8.8.8.8:80".parse().unwrap()
                )
                .is_ok()
        );
    }
}

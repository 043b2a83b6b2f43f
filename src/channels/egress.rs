//! Where herald may connect when the destination comes from data rather than from its operator: a Web Push
//! subscription's endpoint arrives in a run's data, so an attacker who can trigger a run chooses it. Without a
//! guard herald would POST to loopback, the private network or the cloud's metadata service (server-side request
//! forgery) and store the start of the answer in the delivery.
//!
//! The guard, for such URLs:
//! - `https` only;
//! - an optional allowlist of hosts (`fcm.googleapis.com`, `*.push.services.mozilla.com`);
//! - every address the host resolves to must be public: not loopback, private (RFC 1918), link-local (cloud
//!   metadata lives at 169.254.169.254), carrier-grade NAT, unique-local IPv6, multicast, reserved or
//!   unspecified ([`is_public`]);
//! - checked again on the addresses actually connected to: the HTTP client resolves through [`PublicResolver`],
//!   which drops non-public addresses, so a name that resolves to a public address for the check and to a
//!   private one for the connection (DNS rebinding) still cannot reach the private one.
//!
//! `allow_private` turns all of it off except the allowlist: for tests against local fake servers, never for a
//! deployment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18.0.0/15
        || a >= 240) // reserved, 240.0.0.0/4
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // An IPv4 address inside IPv6 (mapped ::ffff:a.b.c.d, or NAT64 64:ff9b::a.b.c.d) is judged as IPv4.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // 6to4 (2002::/16) carries an IPv4 address in bits 16-47: judged by it, as NAT64 is. Teredo (2001::/32)
    // tunnels to an IPv4 server herald cannot judge: refused.
    if segments[0] == 0x2002 {
        let [_, _, a, b, c, d, ..] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] == 0x2001 && segments[1] == 0 {
        return false;
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation, 2001:db8::/32
        || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated) and the like
}

/// Which destinations a data-supplied URL may name.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Hosts allowed (exact, or `*.example.com` for its subdomains); empty: any public host.
    pub allowed_hosts: Vec<String>,
    /// Allow `http` and non-public addresses (tests and local development only).
    pub allow_private: bool,
}

impl EgressPolicy {
    fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| match allowed.strip_prefix("*.") {
                    Some(domain) => host
                        .strip_suffix(domain)
                        .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                    None => allowed.eq_ignore_ascii_case(host),
                })
    }

    /// Checks `url` and resolves its host: Ok when every address is allowed; otherwise why not (a permanent
    /// failure for the message that named it).
    pub async fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        if url.scheme() != "https" && !(self.allow_private && url.scheme() == "http") {
            return Err("the endpoint must be an https URL".into());
        }
        let Some(host) = url.host_str() else {
            return Err("the endpoint has no host".into());
        };
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !self.host_allowed(&name) {
            return Err(format!(
                "the endpoint's host {name} is not an allowed push service"
            ));
        }
        if self.allow_private {
            return Ok(());
        }
        let addresses: Vec<IpAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let port = url.port_or_known_default().unwrap_or(443);
                resolve(&name, port)
                    .await
                    .map_err(|_| format!("the endpoint's host {name} does not resolve"))?
                    .into_iter()
                    .map(|a| a.ip())
                    .collect()
            }
        };
        if addresses.is_empty() || !addresses.iter().copied().all(is_public) {
            return Err(format!(
                "the endpoint's host {name} is not a public internet address"
            ));
        }
        Ok(())
    }

    /// An HTTP client for such URLs: no redirects (a redirect would be a second, unchecked destination), and
    /// unless `allow_private`, names resolved through [`PublicResolver`].
    pub fn client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
        if self.allow_private {
            builder.build()
        } else {
            // No proxy either: a proxy would resolve the name itself, past the public-address check.
            builder
                .no_proxy()
                .dns_resolver(Arc::new(PublicResolver))
                .build()
        }
    }
}

/// The longest a name may take to resolve: the system resolver has no deadline of its own.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `name`'s addresses, within [`RESOLVE_TIMEOUT`].
async fn resolve(name: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await {
        Ok(found) => Ok(found?.collect()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("resolving {name} took longer than {RESOLVE_TIMEOUT:?}"),
        )),
    }
}

/// A resolver that returns only public addresses, and fails when a name has none.
pub struct PublicResolver;

/// A name that resolved to no public address.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no public internet address")]
pub struct NotPublic(String);

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = resolve(&name, 0)
                .await?
                .into_iter()
                .filter(|address| is_public(address.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(NotPublic(name)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "2002:a9fe:a9fe::1",   // 6to4 of 169.254.169.254
            "2002:7f00:1::1",      // 6to4 of 127.0.0.1
            "2001:0:4136:e378::1", // Teredo
        ] {
            assert!(!is_public(ip(private)), "{private} is not public");
        }
        for public in [
            "8.8.8.8",
            "142.250.0.1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1", // 6to4 of 8.8.8.8
        ] {
            assert!(is_public(ip(public)), "{public} is public");
        }
    }

    #[test]
    fn host_allowlists_match_exact_hosts_and_subdomains() {
        let policy = EgressPolicy {
            allowed_hosts: vec![
                "fcm.googleapis.com".into(),
                "*.push.services.mozilla.com".into(),
            ],
            allow_private: false,
        };
        assert!(policy.host_allowed("fcm.googleapis.com"));
        assert!(policy.host_allowed("updates.push.services.mozilla.com"));
        assert!(!policy.host_allowed("push.services.mozilla.com.evil.test"));
        assert!(!policy.host_allowed("evilpush.services.mozilla.com"));
        assert!(!policy.host_allowed("googleapis.com"));
    }
}

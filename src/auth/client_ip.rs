//! The client's address: one resolver the authenticator owns, whose answer
//! the failed-attempt limiter, key allowlists and the logs all use.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName};
use http::Extensions;

use crate::network::{canonical, RangeSet};

/// A client address the application resolved itself and put in the
/// request's extensions (for example from `axum-client-ip`, or from a
/// server other than axum's and tonic's, whose peer addresses the
/// authenticator reads itself with the features `connect-info` and
/// `tonic-server`). When present it is the client's address,
/// whatever the peer and the headers say: the one way to give the
/// authenticator an address it cannot find itself.
///
/// ```
/// use std::net::IpAddr;
/// use tower_api_key::auth::ClientIp;
///
/// let mut request = http::Request::new(());
/// let ip: IpAddr = "203.0.113.9".parse().unwrap();
/// request.extensions_mut().insert(ClientIp(ip));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// The header a trusted proxy writes the client's address in; read only
/// when the peer is one of the
/// [trusted proxies](crate::AuthenticatorBuilder::trusted_proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`, walked right to left
    /// (the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239), walked right to left.
    Forwarded,
    /// `X-Real-IP: client`, one address set by the proxy.
    XRealIp,
}

/// How the client's address is found: the peer, unless it is a trusted
/// proxy, in which case the header it writes, walked from the right past
/// every trusted hop to the first untrusted address. Never the leftmost
/// entry, which the client chose.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientIpResolver {
    trusted: RangeSet,
    header: ForwardedHeader,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

impl ClientIpResolver {
    pub(crate) fn new(trusted: RangeSet, header: ForwardedHeader) -> Self {
        Self { trusted, header }
    }

    /// The client's address, canonical (an IPv4-mapped IPv6 address is its
    /// IPv4 address): an application's [`ClientIp`], else the peer (axum's
    /// `ConnectInfo<SocketAddr>`, feature `connect-info`, or tonic's
    /// `TcpConnectInfo`, feature `tonic-server`) as seen through the trusted
    /// proxies. `None` when it cannot be told.
    pub(crate) fn resolve(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        if let Some(ClientIp(ip)) = extensions.get::<ClientIp>() {
            return Some(canonical(*ip));
        }
        self.behind_proxies(peer(extensions)?, headers)
    }

    /// The client's address when the connection comes from `peer`: `peer`
    /// itself unless it is trusted; else the header's rightmost untrusted
    /// address (the leftmost one if every hop is trusted, `peer` if the
    /// header is absent). `None` if a hop that must be read cannot be
    /// parsed (`unknown`, an obfuscated name, garbage).
    pub(crate) fn behind_proxies(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer);
        if !self.trusted.contains(peer) {
            return Some(peer);
        }
        match self.header {
            ForwardedHeader::XRealIp => {
                let mut values = headers.get_all(X_REAL_IP).iter();
                let Some(value) = values.next() else {
                    return Some(peer);
                };
                if values.next().is_some() {
                    // Two answers: neither can be believed.
                    return None;
                }
                node(value.to_str().ok()?).map(canonical)
            }
            ForwardedHeader::XForwardedFor => self.walk(peer, headers, X_FORWARDED_FOR, node),
            ForwardedHeader::Forwarded => {
                self.walk(peer, headers, http::header::FORWARDED, forwarded_for)
            }
        }
    }

    /// Walks the comma-separated hops of every `name` header, right to
    /// left, past trusted ones. Allocation-free.
    fn walk(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        name: HeaderName,
        hop: impl Fn(&str) -> Option<IpAddr>,
    ) -> Option<IpAddr> {
        let mut leftmost = peer;
        for value in headers.get_all(name).iter().rev() {
            for entry in value.to_str().ok()?.rsplit(',') {
                if entry.trim().is_empty() {
                    continue;
                }
                let ip = canonical(hop(entry)?);
                if !self.trusted.contains(ip) {
                    return Some(ip);
                }
                leftmost = ip;
            }
        }
        Some(leftmost)
    }
}

/// The peer address of the connection, if the server recorded one: axum's
/// `ConnectInfo<SocketAddr>` (feature `connect-info`), else the
/// `TcpConnectInfo` tonic's server puts in every request (feature
/// `tonic-server`; over TLS tonic inserts it too, next to its
/// `TlsConnectInfo`).
fn peer(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "connect-info")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    #[cfg(feature = "tonic-server")]
    if let Some(remote) = extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        return Some(remote.ip());
    }
    let _ = extensions;
    None
}

/// One address as proxies write it: `192.0.2.1`, `2001:db8::1`,
/// `[2001:db8::1]`, with or without a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn node(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<IpAddr>()
        .ok()
}

/// The address of a `Forwarded` element's `for=` parameter (quoted or not).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        node(value)
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn resolver(trusted: &[&str], header: ForwardedHeader) -> ClientIpResolver {
        let nets: Vec<_> = trusted.iter().map(|n| n.parse().unwrap()).collect();
        ClientIpResolver::new(RangeSet::new(&nets), header)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    const PROXY: &str = "127.0.0.1";

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() {
        let r = resolver(&[], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["10.1.2.3"]);
        assert_eq!(r.behind_proxies(ip(PROXY), &h), Some(ip(PROXY)));
        let r = resolver(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        assert_eq!(
            r.behind_proxies(ip("192.0.2.1"), &h),
            Some(ip("192.0.2.1")),
            "an untrusted peer's header is not read"
        );
    }

    #[test]
    fn x_forwarded_for_gives_the_rightmost_untrusted_hop() {
        let r = resolver(
            &["127.0.0.1/32", "10.0.0.0/8"],
            ForwardedHeader::XForwardedFor,
        );
        let peer = ip(PROXY);
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["10.1.2.3"], Some("10.1.2.3")),
            // A forged leftmost entry: the proxy appended the real one.
            (&["10.1.2.3, 203.0.113.9"], Some("203.0.113.9")),
            (
                &["198.51.100.1, 203.0.113.9, 10.0.0.2"],
                Some("203.0.113.9"),
            ),
            // Two header lines are one list, in order.
            (
                &["198.51.100.1", "203.0.113.9, 10.0.0.2"],
                Some("203.0.113.9"),
            ),
            // Every hop trusted: the leftmost.
            (&["10.0.0.9, 10.0.0.2"], Some("10.0.0.9")),
            (&[], Some(PROXY)),
            (&["[2001:db8::1]:4711"], Some("2001:db8::1")),
            (&["192.0.2.5:80"], Some("192.0.2.5")),
            (&["::ffff:192.0.2.5"], Some("192.0.2.5")),
            // Garbage where the walk must read: cannot be told.
            (&["203.0.113.9, garbage"], None),
            // Garbage left of the answer is never read.
            (&["garbage, 203.0.113.9"], Some("203.0.113.9")),
        ];
        for (values, want) in cases {
            assert_eq!(
                r.behind_proxies(peer, &headers("x-forwarded-for", values)),
                want.map(ip),
                "{values:?}"
            );
        }
        assert_eq!(
            r.behind_proxies(
                ip("::ffff:127.0.0.1"),
                &headers("x-forwarded-for", &["10.1.2.3, 192.0.2.8"])
            ),
            Some(ip("192.0.2.8")),
            "an IPv4-mapped peer is its IPv4 address"
        );
    }

    #[test]
    fn forwarded_reads_the_for_parameters_right_to_left() {
        let r = resolver(&["127.0.0.1/32"], ForwardedHeader::Forwarded);
        let peer = ip(PROXY);
        let cases: &[(&[&str], Option<&str>)] = &[
            (
                &["for=192.0.2.60;proto=http;by=203.0.113.43"],
                Some("192.0.2.60"),
            ),
            (
                &[r#"for=10.1.2.3, for="[2001:db8:cafe::17]:4711""#],
                Some("2001:db8:cafe::17"),
            ),
            (
                &["For=\"127.0.0.1\", FOR=198.51.100.7;proto=https"],
                Some("198.51.100.7"),
            ),
            (&["for=unknown"], None),
            (&["for=_hidden"], None),
            (&["proto=https"], None),
        ];
        for (values, want) in cases {
            assert_eq!(
                r.behind_proxies(peer, &headers("forwarded", values)),
                want.map(ip),
                "{values:?}"
            );
        }
        // The X-Forwarded-For header is not read in this mode.
        assert_eq!(
            r.behind_proxies(peer, &headers("x-forwarded-for", &["10.1.2.3"])),
            Some(peer)
        );
    }

    #[test]
    fn x_real_ip_is_one_address() {
        let r = resolver(&["127.0.0.1/32"], ForwardedHeader::XRealIp);
        let peer = ip(PROXY);
        assert_eq!(
            r.behind_proxies(peer, &headers("x-real-ip", &["198.51.100.7"])),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            r.behind_proxies(peer, &headers("x-real-ip", &["a, b"])),
            None
        );
        assert_eq!(
            r.behind_proxies(peer, &headers("x-real-ip", &["198.51.100.7", "10.0.0.1"])),
            None,
            "two answers"
        );
        assert_eq!(r.behind_proxies(peer, &HeaderMap::new()), Some(peer));
    }

    #[test]
    fn an_application_address_in_the_extensions_wins() {
        let r = resolver(&[], ForwardedHeader::XForwardedFor);
        let mut ext = Extensions::new();
        assert_eq!(r.resolve(&HeaderMap::new(), &ext), None, "no peer known");
        ext.insert(ClientIp(ip("::ffff:198.51.100.7")));
        assert_eq!(r.resolve(&HeaderMap::new(), &ext), Some(ip("198.51.100.7")));
        ext.insert(axum::extract::ConnectInfo(SocketAddr::new(
            ip("192.0.2.1"),
            1,
        )));
        assert_eq!(
            r.resolve(&HeaderMap::new(), &ext),
            Some(ip("198.51.100.7")),
            "over the peer"
        );
        ext.remove::<ClientIp>();
        assert_eq!(r.resolve(&HeaderMap::new(), &ext), Some(ip("192.0.2.1")));
    }
}

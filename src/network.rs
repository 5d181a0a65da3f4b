//! IP networks: a key's allowed networks ([`Networks`]) and the
//! allocation-free matcher behind them and the trusted proxies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub use ipnet::IpNet;

/// Most networks one key may carry.
pub const MAX_NETWORKS_PER_KEY: usize = 64;

/// The networks a key may be used from (IPv4 and IPv6 CIDRs): a request from
/// any other client address is refused with 403 `network_not_allowed`.
///
/// Holds the networks as given (for stores and display) and, compiled once
/// when it is made, sorted disjoint address ranges that
/// [`contains`](Self::contains) searches without allocating. Addresses are
/// compared canonically: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
/// its IPv4 address, and a network inside `::ffff:0:0/96` matches those
/// IPv4 addresses too. Cheap to clone (shared); one pointer in a
/// [`KeyRecord`](crate::KeyRecord), so a key without networks costs nothing.
///
/// ```
/// use tower_api_key::Networks;
///
/// let nets = Networks::parse(["10.0.0.0/8", "2001:db8::/32", "203.0.113.7"]).unwrap();
/// assert!(nets.contains("10.1.2.3".parse().unwrap()));
/// assert!(nets.contains("::ffff:203.0.113.7".parse().unwrap()));
/// assert!(!nets.contains("203.0.113.8".parse().unwrap()));
/// assert_eq!(nets.to_string(), "10.0.0.0/8, 2001:db8::/32, 203.0.113.7/32");
/// ```
#[derive(Clone)]
pub struct Networks(Arc<NetworksInner>);

struct NetworksInner {
    nets: Box<[IpNet]>,
    ranges: RangeSet,
}

/// Why a list of networks was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkError {
    /// Entry `index` is neither a CIDR nor an IP address. (The entry is
    /// not kept: it could be anything pasted, a key included.)
    Invalid {
        /// Its position in the list, from 0.
        index: usize,
    },
    /// More than [`MAX_NETWORKS_PER_KEY`] entries.
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// No entry: a key without networks has none (`None`), not an empty list.
    Empty,
}

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid { index } => write!(
                f,
                "allowed_networks[{index}]: neither a CIDR (10.0.0.0/8) nor an IP address"
            ),
            Self::TooMany { count } => write!(
                f,
                "allowed_networks: {count} entries, at most {MAX_NETWORKS_PER_KEY}"
            ),
            Self::Empty => f.write_str("allowed_networks: empty; omit it to allow every network"),
        }
    }
}

impl std::error::Error for NetworkError {}

impl Networks {
    /// The networks `nets`: 1 to [`MAX_NETWORKS_PER_KEY`] of them.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Result<Self, NetworkError> {
        let nets: Box<[IpNet]> = nets.into_iter().collect();
        if nets.is_empty() {
            return Err(NetworkError::Empty);
        }
        if nets.len() > MAX_NETWORKS_PER_KEY {
            return Err(NetworkError::TooMany { count: nets.len() });
        }
        let ranges = RangeSet::new(&nets);
        Ok(Self(Arc::new(NetworksInner { nets, ranges })))
    }

    /// The networks written as CIDRs (`10.0.0.0/8`) or bare addresses (one
    /// address: `/32` or `/128`), 1 to [`MAX_NETWORKS_PER_KEY`] of them.
    pub fn parse<I, S>(entries: I) -> Result<Self, NetworkError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let entry = entry.as_ref();
            if index >= MAX_NETWORKS_PER_KEY {
                // Counted without parsing the rest: the bound is the error.
                return Err(NetworkError::TooMany { count: index + 1 });
            }
            match parse_net(entry) {
                Some(net) => nets.push(net),
                None => return Err(NetworkError::Invalid { index }),
            }
        }
        Self::new(nets)
    }

    /// Whether `ip` (canonical: an IPv4-mapped IPv6 address is its IPv4
    /// address) is in one of the networks. Allocation-free: a binary search
    /// over sorted ranges.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.ranges.contains(ip)
    }

    /// The networks, as given.
    pub fn as_slice(&self) -> &[IpNet] {
        &self.0.nets
    }

    /// Each network as a string (`10.0.0.0/8`; a bare address shows its
    /// prefix length), as stores and the management API write them.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.nets.iter().map(IpNet::to_string).collect()
    }
}

impl PartialEq for Networks {
    fn eq(&self, other: &Self) -> bool {
        self.0.nets == other.0.nets
    }
}

impl Eq for Networks {}

impl fmt::Debug for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.nets.iter()).finish()
    }
}

impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// A CIDR, or a bare address as its one-address network.
pub(crate) fn parse_net(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        return Some(net);
    }
    entry.parse::<IpAddr>().ok().map(IpNet::from)
}

/// `ip` with an IPv4-mapped IPv6 address as its IPv4 address.
#[inline]
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Sorted, disjoint, inclusive address ranges, IPv4 and IPv6 apart: what a
/// list of networks compiles to, searched by [`RangeSet::contains`] without
/// allocating. A network inside `::ffff:0:0/96` also adds its IPv4 range,
/// since addresses are compared in canonical form.
#[derive(Clone, Default)]
pub(crate) struct RangeSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

/// `::ffff:0:0`, the first IPv4-mapped IPv6 address.
const MAPPED_START: u128 = 0xffff_0000_0000;
/// `::ffff:255.255.255.255`, the last one.
const MAPPED_END: u128 = 0xffff_ffff_ffff;

impl RangeSet {
    pub(crate) fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let (start, end) = (u128::from(n.network()), u128::from(n.broadcast()));
                    v6.push((start, end));
                    // The part of the range made of IPv4-mapped addresses.
                    let (lo, hi) = (start.max(MAPPED_START), end.min(MAPPED_END));
                    if lo <= hi {
                        // In range: the low 32 bits are the IPv4 address.
                        v4.push((lo as u32, hi as u32));
                    }
                }
            }
        }
        Self {
            v4: merge(v4).into_boxed_slice(),
            v6: merge(v6).into_boxed_slice(),
        }
    }

    #[inline]
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => find(&self.v6, u128::from(v6)),
        }
    }
}

/// Sorts inclusive ranges and merges those that overlap or touch.
fn merge<T: Copy + Ord + MaxSucc>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.is_max() || start <= last.1.succ() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out
}

/// Whether `x` is in one of the sorted disjoint `ranges`.
#[inline]
fn find<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The first range starting after `x`; the one before it is the only
    // one that can hold `x`.
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after > 0 && x <= ranges[after - 1].1
}

/// The next value, for merging touching ranges.
trait MaxSucc {
    fn is_max(&self) -> bool;
    fn succ(self) -> Self;
}

impl MaxSucc for u32 {
    fn is_max(&self) -> bool {
        *self == u32::MAX
    }
    fn succ(self) -> Self {
        self + 1
    }
}

impl MaxSucc for u128 {
    fn is_max(&self) -> bool {
        *self == u128::MAX
    }
    fn succ(self) -> Self {
        self + 1
    }
}

impl fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v4 = self
            .v4
            .iter()
            .map(|&(a, b)| format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b)));
        let v6 = self
            .v6
            .iter()
            .map(|&(a, b)| format!("{}-{}", Ipv6Addr::from(a), Ipv6Addr::from(b)));
        f.debug_list().entries(v4.chain(v6)).finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bare_addresses_are_single_address_networks() {
        let nets = Networks::parse(["203.0.113.7", "2001:db8::1", " 10.0.0.0/8 "]).unwrap();
        assert_eq!(
            nets.to_strings(),
            ["203.0.113.7/32", "2001:db8::1/128", "10.0.0.0/8"]
        );
        assert!(nets.contains(ip("203.0.113.7")));
        assert!(!nets.contains(ip("203.0.113.6")));
        assert!(nets.contains(ip("2001:db8::1")));
        assert!(!nets.contains(ip("2001:db8::2")));
    }

    #[test]
    fn bad_lists_are_refused_with_the_entry() {
        assert_eq!(
            Networks::parse(["10.0.0.0/8", "10.0.0.0/33"]),
            Err(NetworkError::Invalid { index: 1 })
        );
        assert_eq!(
            Networks::parse(Vec::<String>::new()),
            Err(NetworkError::Empty)
        );
        let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(
            Networks::parse(&many),
            Err(NetworkError::TooMany { count: 65 })
        );
        assert!(Networks::parse(&many[..64]).is_ok());
    }

    #[test]
    fn mapped_addresses_and_mapped_networks_are_ipv4() {
        let nets = Networks::parse(["10.0.0.0/8"]).unwrap();
        assert!(nets.contains(ip("::ffff:10.9.8.7")));
        assert!(!nets.contains(ip("::ffff:11.0.0.1")));
        let mapped = Networks::parse(["::ffff:192.0.2.0/120"]).unwrap();
        assert!(mapped.contains(ip("192.0.2.200")));
        assert!(mapped.contains(ip("::ffff:192.0.2.1")));
        assert!(!mapped.contains(ip("192.0.3.1")));
        let everything = Networks::parse(["::/0"]).unwrap();
        assert!(
            everything.contains(ip("1.2.3.4")),
            "::/0 holds ::ffff:0:0/96"
        );
    }

    #[test]
    fn overlapping_and_touching_ranges_merge() {
        let set = RangeSet::new(&[
            "10.0.0.0/24".parse().unwrap(),
            "10.0.1.0/24".parse().unwrap(),
            "10.0.0.128/25".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
        ]);
        assert_eq!(format!("{set:?}"), "[\"0.0.0.0-255.255.255.255\"]");
        assert!(set.contains(ip("255.255.255.255")));
        assert!(!set.contains(ip("::1")));
    }

    fn any_v4() -> impl Strategy<Value = IpAddr> {
        any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x)))
    }

    /// IPv6 addresses, a third of them IPv4-mapped.
    fn any_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any_v4(),
            any::<u32>().prop_map(|x| IpAddr::V6(Ipv4Addr::from(x).to_ipv6_mapped())),
            any::<u128>().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x))),
        ]
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(
                IpAddr::V4(Ipv4Addr::from(a)),
                p
            )
            .unwrap()),
            (any::<u32>(), 96u8..=128).prop_map(|(a, p)| IpNet::new(
                IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()),
                p
            )
            .unwrap()),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                p
            )
            .unwrap()),
        ]
    }

    /// What `contains` should say, from `ipnet`'s own `contains`: the
    /// canonical address, or its IPv4-mapped form, in one of the networks.
    fn oracle(nets: &[IpNet], addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        nets.iter().any(|net| {
            net.contains(&addr)
                || matches!(addr, IpAddr::V4(v4) if net.contains(&IpAddr::V6(v4.to_ipv6_mapped())))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn contains_agrees_with_ipnet(
            nets in proptest::collection::vec(any_net(), 1..=MAX_NETWORKS_PER_KEY),
            addrs in proptest::collection::vec(any_addr(), 1..16),
        ) {
            let compiled = Networks::new(nets.iter().copied()).unwrap();
            for addr in addrs {
                prop_assert_eq!(compiled.contains(addr), oracle(&nets, addr), "{} in {:?}", addr, nets);
            }
        }

        /// Addresses at the edges of each network, where off-by-one bugs live.
        #[test]
        fn network_edges_agree_with_ipnet(
            nets in proptest::collection::vec(any_net(), 1..8),
        ) {
            let compiled = Networks::new(nets.iter().copied()).unwrap();
            for net in &nets {
                for addr in edges(net) {
                    prop_assert_eq!(compiled.contains(addr), oracle(&nets, addr), "{} in {:?}", addr, nets);
                }
            }
        }
    }

    /// The first and last address of `net` and their neighbours.
    fn edges(net: &IpNet) -> Vec<IpAddr> {
        match net {
            IpNet::V4(n) => {
                let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
                [a.wrapping_sub(1), a, b, b.wrapping_add(1)]
                    .into_iter()
                    .map(|x| IpAddr::V4(Ipv4Addr::from(x)))
                    .collect()
            }
            IpNet::V6(n) => {
                let (a, b) = (u128::from(n.network()), u128::from(n.broadcast()));
                [a.wrapping_sub(1), a, b, b.wrapping_add(1)]
                    .into_iter()
                    .map(|x| IpAddr::V6(Ipv6Addr::from(x)))
                    .collect()
            }
        }
    }
}

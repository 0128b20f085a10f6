//! Network rules (`--allow-net`, `--deny-net`, `--allow-listen`): parsing,
//! display, and the decision for every name lookup, connect and bind.
//!
//! Syntax follows Deno: `host`, `host:port`, `*.host`, IP, `IP:port`, CIDR,
//! `[v6]:port`. Names are matched at lookup; at connect only addresses that
//! the host itself resolved for a granted name in this run are allowed for
//! that name, so a guest cannot smuggle an address past a name rule.
//!
//! Only global unicast addresses are public. Any other (loopback, private,
//! link-local, metadata, ...; an IPv6 address carrying an IPv4 one is judged
//! as that) is reached only through a rule that names it: `localhost`, its
//! IP, or a network inside its range. A wider network (`0.0.0.0/1`) grants
//! only the public addresses in it; [`NetPolicy::warnings`] says what it
//! leaves out. Deny rules cover every address in them.

use crate::{PolicyError, Verdict};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// A DNS name, lower-case, without a trailing dot.
    Name(String),
    /// `*.suffix`: any name below `suffix` (not `suffix` itself).
    Wildcard(String),
    Ip(IpAddr),
    /// A network: address with the host bits cleared, and prefix length.
    Cidr(IpAddr, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    Any,
    One(u16),
}

impl PortSpec {
    fn matches(self, port: u16) -> bool {
        match self {
            PortSpec::Any => true,
            PortSpec::One(p) => p == port,
        }
    }
}

/// One `--allow-net` / `--deny-net` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    pub host: HostPattern,
    pub port: PortSpec,
}

impl NetRule {
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let err = |reason: &str| PolicyError::NetRule {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty rule"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| err("missing ] after an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| err("expected :PORT after ]"))?,
                ),
            };
            if !inside.contains(':') {
                return Err(err("brackets are only for IPv6 addresses"));
            }
            let host = parse_ip_or_cidr(inside).map_err(|r| err(&r))?;
            (host, port)
        } else if s.matches(':').count() > 1 {
            // A bare IPv6 address or network cannot carry a port.
            let host = parse_ip_or_cidr(s).map_err(|r| {
                err(&format!(
                    "{r}; write an IPv6 address with a port as [::1]:8080"
                ))
            })?;
            (host, None)
        } else {
            let (h, p) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            let host = if h.contains('/') || h.parse::<IpAddr>().is_ok() {
                parse_ip_or_cidr(h).map_err(|r| err(&r))?
            } else if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !h.is_empty() {
                return Err(err("not a valid IPv4 address"));
            } else if let Some(suffix) = h.strip_prefix("*.") {
                HostPattern::Wildcard(normalize_name(suffix).map_err(|r| err(&r))?)
            } else {
                HostPattern::Name(normalize_name(h).map_err(|r| err(&r))?)
            };
            (host, p)
        };
        let port = match port {
            None => PortSpec::Any,
            Some(p) => PortSpec::One(parse_port(p).map_err(|r| err(&r))?),
        };
        Ok(NetRule { host, port })
    }

    /// Whether this rule names `ip` (by address or network) and `port`.
    pub fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical_ip(ip);
        self.port.matches(port)
            && match &self.host {
                HostPattern::Ip(a) => *a == ip,
                HostPattern::Cidr(net, len) => cidr_contains(*net, *len, ip),
                _ => false,
            }
    }

    /// Whether this rule may let the guest reach `ip:port`: it names them,
    /// and `ip` is public or the rule's network lies inside the special
    /// range `ip` belongs to (`10.0.0.0/8` grants 10.1.2.3; `0.0.0.0/1`
    /// does not). Deny rules are not narrowed this way: see [`Self::matches_ip`].
    pub fn grants_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.matches_ip(ip, port)
            && match &self.host {
                HostPattern::Ip(a) => network_grants(*a, full_len(*a), ip),
                HostPattern::Cidr(net, len) => network_grants(*net, *len, ip),
                _ => false,
            }
    }

    /// Whether this deny rule refuses `ip:port`: it names the address, or
    /// the IPv4 address a NAT64 or 6to4 address carries.
    fn denies_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.matches_ip(ip, port)
            || embedded_v4(canonical_ip(ip)).is_some_and(|v4| self.matches_ip(IpAddr::V4(v4), port))
    }

    /// A warning for an allow rule whose network covers special addresses
    /// (loopback, private, metadata, ...) that it does not grant because it
    /// does not lie inside their range; `None` for every other rule.
    pub fn warning(&self) -> Option<String> {
        let (net, len) = match self.host {
            HostPattern::Ip(a) => (a, full_len(a)),
            HostPattern::Cidr(net, len) => (net, len),
            _ => return None,
        };
        let ranges = ungranted_ranges(net, len);
        (!ranges.is_empty()).then(|| {
            format!(
                "--allow-net={self} does not include {}; name them by IP or CIDR to grant them",
                ranges.join(", ")
            )
        })
    }

    /// Whether this rule names the DNS name `name` (any port).
    pub fn matches_name(&self, name: &str) -> bool {
        let Ok(name) = normalize_name(name) else {
            return false;
        };
        match &self.host {
            HostPattern::Name(n) => *n == name,
            HostPattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            _ => false,
        }
    }

    /// The rule names `localhost`, the one name allowed to reach loopback.
    fn is_localhost(&self) -> bool {
        matches!(&self.host, HostPattern::Name(n) if n == "localhost")
    }
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = matches!(
            self.host,
            HostPattern::Ip(IpAddr::V6(_)) | HostPattern::Cidr(IpAddr::V6(_), _)
        );
        let host = match &self.host {
            HostPattern::Name(n) => n.clone(),
            HostPattern::Wildcard(s) => format!("*.{s}"),
            HostPattern::Ip(ip) => ip.to_string(),
            HostPattern::Cidr(ip, len) => format!("{ip}/{len}"),
        };
        match (self.port, v6) {
            (PortSpec::Any, _) => f.write_str(&host),
            (PortSpec::One(p), true) => write!(f, "[{host}]:{p}"),
            (PortSpec::One(p), false) => write!(f, "{host}:{p}"),
        }
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid port (expected 1-65535)".into());
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err("invalid port (expected 1-65535)".into()),
    }
}

fn parse_ip_or_cidr(s: &str) -> Result<HostPattern, String> {
    match s.split_once('/') {
        None => s
            .parse::<IpAddr>()
            .map(|ip| HostPattern::Ip(canonical_ip(ip)))
            .map_err(|_| "not a valid IP address".into()),
        Some((addr, len)) => {
            let ip: IpAddr = addr.parse().map_err(|_| "not a valid network address")?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = match len.parse::<u8>() {
                Ok(l) if l <= max && len.bytes().all(|b| b.is_ascii_digit()) => l,
                _ => return Err(format!("invalid prefix length (expected 1-{max})")),
            };
            if len == 0 {
                return Err("a /0 network is the whole internet; name the hosts".into());
            }
            if mask(ip, len) != ip {
                return Err(format!(
                    "host bits are set; the network is {}/{len}",
                    mask(ip, len)
                ));
            }
            // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4
            // network it carries: one canonical form, like a mapped address.
            if let IpAddr::V6(v6) = ip
                && len >= 96
                && let Some(v4) = v6.to_ipv4_mapped()
            {
                if len == 96 {
                    return Err("::ffff:0:0/96 is every IPv4 address; name the hosts".into());
                }
                return Ok(HostPattern::Cidr(IpAddr::V4(v4), len - 96));
            }
            Ok(HostPattern::Cidr(ip, len))
        }
    }
}

/// Lower-cases and validates a DNS name (labels of letters, digits, `-`, `_`).
fn normalize_name(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err("missing host name".into());
    }
    if name.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("invalid host name (empty or over-long label)".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("invalid host name (a label starts or ends with -)".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(if c == '*' {
                "a wildcard is only allowed as a leading *.".into()
            } else {
                format!("invalid character {c:?} in host name")
            });
        }
    }
    Ok(name)
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are the IPv4 address they carry.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn full_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// Whether the network `net/len` contains `ip`. An IPv6 network that
/// contains `::ffff:0:0/96` contains the IPv4 addresses mapped there.
fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    let ip = match (net, ip) {
        (IpAddr::V6(_), IpAddr::V4(a)) => IpAddr::V6(a.to_ipv6_mapped()),
        _ => ip,
    };
    net.is_ipv4() == ip.is_ipv4() && mask(ip, len) == net
}

/// Whether the network `net/len` lies entirely inside `outer/outer_len`.
fn cidr_within(net: IpAddr, len: u8, outer: IpAddr, outer_len: u8) -> bool {
    net.is_ipv4() == outer.is_ipv4() && len >= outer_len && mask(net, outer_len) == outer
}

/// Whether two networks share an address (then one contains the other).
fn cidr_overlaps(a: IpAddr, a_len: u8, b: IpAddr, b_len: u8) -> bool {
    a.is_ipv4() == b.is_ipv4() && mask(a, a_len.min(b_len)) == mask(b, a_len.min(b_len))
}

/// What kind of address an IP is, for the rule that special addresses are
/// reached only when a rule names them by IP, CIDR or `localhost`. Only
/// global unicast addresses are `Public`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    /// Cloud instance metadata (169.254.169.254, fd00:ec2::254): credentials live there.
    Metadata,
    Unspecified,
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Set aside for examples (192.0.2.0/24, 2001:db8::/32, ...): never routed.
    Documentation,
    /// Any other range that is not global unicast: reserved, benchmarking,
    /// discard, Teredo, IPv4-compatible IPv6, unallocated IPv6.
    Reserved,
}

impl AddrClass {
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Metadata => "cloud metadata",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Documentation => "documentation",
            AddrClass::Reserved => "reserved",
        }
    }
}

/// IPv6 ranges whose addresses carry an IPv4 address, and are judged as it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embed {
    /// `::ffff:0:0/96`: the IPv4 address in the last 32 bits.
    Mapped,
    /// `64:ff9b::/96` and `64:ff9b:1::/48` (NAT64): the last 32 bits.
    Nat64,
    /// `2002::/16` (6to4): bits 16..48.
    SixToFour,
}

impl Embed {
    /// Where the IPv4 address starts, in bits from the left.
    fn offset(self) -> u8 {
        match self {
            Embed::Mapped | Embed::Nat64 => 96,
            Embed::SixToFour => 16,
        }
    }

    fn extract(self, a: Ipv6Addr) -> Ipv4Addr {
        Ipv4Addr::from((u128::from(a) >> (96 - self.offset())) as u32)
    }

    fn describe(self) -> &'static str {
        match self {
            Embed::Mapped => "IPv4-mapped",
            Embed::Nat64 => "NAT64",
            Embed::SixToFour => "6to4",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeKind {
    Class(AddrClass),
    Embeds(Embed),
}

/// The IPv4 ranges that are not global unicast. An address belongs to the
/// longest range that contains it.
const V4_RANGES: &[(Ipv4Addr, u8, AddrClass)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, AddrClass::Unspecified),
    (Ipv4Addr::new(10, 0, 0, 0), 8, AddrClass::Private),
    // Shared (carrier-grade NAT) address space.
    (Ipv4Addr::new(100, 64, 0, 0), 10, AddrClass::Private),
    (Ipv4Addr::new(127, 0, 0, 0), 8, AddrClass::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, AddrClass::LinkLocal),
    (Ipv4Addr::new(169, 254, 169, 254), 32, AddrClass::Metadata),
    (Ipv4Addr::new(172, 16, 0, 0), 12, AddrClass::Private),
    // IETF protocol assignments.
    (Ipv4Addr::new(192, 0, 0, 0), 24, AddrClass::Reserved),
    (Ipv4Addr::new(192, 0, 2, 0), 24, AddrClass::Documentation),
    // 6to4 relay anycast (deprecated).
    (Ipv4Addr::new(192, 88, 99, 0), 24, AddrClass::Reserved),
    (Ipv4Addr::new(192, 168, 0, 0), 16, AddrClass::Private),
    // Benchmarking.
    (Ipv4Addr::new(198, 18, 0, 0), 15, AddrClass::Reserved),
    (Ipv4Addr::new(198, 51, 100, 0), 24, AddrClass::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, AddrClass::Documentation),
    (Ipv4Addr::new(224, 0, 0, 0), 4, AddrClass::Multicast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, AddrClass::Reserved),
    (Ipv4Addr::new(255, 255, 255, 255), 32, AddrClass::Broadcast),
];

const fn v6(s: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
}

/// The IPv6 ranges that are not global unicast (everything outside
/// `2000::/3` is in one), and those that carry an IPv4 address. An address
/// belongs to the longest range that contains it.
const V6_RANGES: &[(Ipv6Addr, u8, RangeKind)] = &[
    (v6([0; 8]), 128, RangeKind::Class(AddrClass::Unspecified)),
    (
        v6([0, 0, 0, 0, 0, 0, 0, 1]),
        128,
        RangeKind::Class(AddrClass::Loopback),
    ),
    // IPv4-compatible (deprecated).
    (v6([0; 8]), 96, RangeKind::Class(AddrClass::Reserved)),
    (
        v6([0, 0, 0, 0, 0, 0xffff, 0, 0]),
        96,
        RangeKind::Embeds(Embed::Mapped),
    ),
    (
        v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]),
        96,
        RangeKind::Embeds(Embed::Nat64),
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]),
        48,
        RangeKind::Embeds(Embed::Nat64),
    ),
    // Discard-only.
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0]),
        64,
        RangeKind::Class(AddrClass::Reserved),
    ),
    // Teredo.
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0]),
        32,
        RangeKind::Class(AddrClass::Reserved),
    ),
    // Benchmarking.
    (
        v6([0x2001, 2, 0, 0, 0, 0, 0, 0]),
        48,
        RangeKind::Class(AddrClass::Reserved),
    ),
    // ORCHID (deprecated).
    (
        v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0]),
        28,
        RangeKind::Class(AddrClass::Reserved),
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]),
        32,
        RangeKind::Class(AddrClass::Documentation),
    ),
    (
        v6([0x2002, 0, 0, 0, 0, 0, 0, 0]),
        16,
        RangeKind::Embeds(Embed::SixToFour),
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]),
        20,
        RangeKind::Class(AddrClass::Documentation),
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]),
        7,
        RangeKind::Class(AddrClass::Private),
    ),
    (
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]),
        128,
        RangeKind::Class(AddrClass::Metadata),
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]),
        10,
        RangeKind::Class(AddrClass::LinkLocal),
    ),
    // Site-local (deprecated): private in practice.
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]),
        10,
        RangeKind::Class(AddrClass::Private),
    ),
    (
        v6([0xff00, 0, 0, 0, 0, 0, 0, 0]),
        8,
        RangeKind::Class(AddrClass::Multicast),
    ),
    // Not global unicast (2000::/3) and not above: unallocated.
    (v6([0; 8]), 3, RangeKind::Class(AddrClass::Reserved)),
    (
        v6([0x4000, 0, 0, 0, 0, 0, 0, 0]),
        2,
        RangeKind::Class(AddrClass::Reserved),
    ),
    (
        v6([0x8000, 0, 0, 0, 0, 0, 0, 0]),
        1,
        RangeKind::Class(AddrClass::Reserved),
    ),
];

/// The longest special IPv4 range containing `a`.
fn v4_range(a: Ipv4Addr) -> Option<(Ipv4Addr, u8, AddrClass)> {
    V4_RANGES
        .iter()
        .filter(|(net, len, _)| cidr_contains(IpAddr::V4(*net), *len, IpAddr::V4(a)))
        .max_by_key(|(_, len, _)| *len)
        .copied()
}

/// The longest special IPv6 range containing `a`.
fn v6_range(a: Ipv6Addr) -> Option<(Ipv6Addr, u8, RangeKind)> {
    V6_RANGES
        .iter()
        .filter(|(net, len, _)| cidr_contains(IpAddr::V6(*net), *len, IpAddr::V6(a)))
        .max_by_key(|(_, len, _)| *len)
        .copied()
}

/// What kind of address `ip` is. Fail-closed: whatever is not global unicast
/// is not `Public`. An IPv6 address that carries an IPv4 address (mapped,
/// NAT64, 6to4) is judged as the IPv4 address it carries.
pub fn classify(ip: IpAddr) -> AddrClass {
    match canonical_ip(ip) {
        IpAddr::V4(a) => v4_range(a).map_or(AddrClass::Public, |(_, _, c)| c),
        IpAddr::V6(a) => match v6_range(a) {
            None => AddrClass::Public,
            Some((_, _, RangeKind::Class(c))) => c,
            Some((_, _, RangeKind::Embeds(e))) => classify(IpAddr::V4(e.extract(a))),
        },
    }
}

/// The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), if any.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V6(a) => match v6_range(a) {
            Some((_, _, RangeKind::Embeds(e))) => Some(e.extract(a)),
            _ => None,
        },
        IpAddr::V4(_) => None,
    }
}

/// Whether a rule for the network `net/len` grants `ip` (which it contains):
/// a public address always; any other only if the network lies inside the
/// special range `ip` belongs to, so `0.0.0.0/1` never takes in loopback
/// and `169.254.0.0/16` takes in link-local but not the metadata address.
fn network_grants(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    if classify(ip) == AddrClass::Public {
        return true;
    }
    match ip {
        IpAddr::V4(a) => {
            v4_range(a).is_some_and(|(r, r_len, _)| cidr_within(net, len, IpAddr::V4(r), r_len))
        }
        IpAddr::V6(a) => match v6_range(a) {
            None => true,
            Some((r, r_len, RangeKind::Class(_))) => cidr_within(net, len, IpAddr::V6(r), r_len),
            Some((r, r_len, RangeKind::Embeds(e))) => {
                match embedded_network(net, len, IpAddr::V6(r), r_len, e) {
                    Some((n4, l4)) => network_grants(IpAddr::V4(n4), l4, IpAddr::V4(e.extract(a))),
                    None => false,
                }
            }
        },
    }
}

/// The IPv4 network that every address of `net/len` carries, if the network
/// lies inside the embedding range `r/r_len` and fixes where the IPv4
/// address starts.
fn embedded_network(
    net: IpAddr,
    len: u8,
    r: IpAddr,
    r_len: u8,
    e: Embed,
) -> Option<(Ipv4Addr, u8)> {
    match net {
        IpAddr::V6(n) if cidr_within(net, len, r, r_len) && len >= e.offset() => {
            Some((e.extract(n), (len - e.offset()).min(32)))
        }
        _ => None,
    }
}

/// The special ranges that `net/len` covers in part without lying inside
/// them: a rule for this network does not grant the addresses there.
fn ungranted_ranges(net: IpAddr, len: u8) -> Vec<String> {
    let mut out = Vec::new();
    match net {
        IpAddr::V4(_) => {
            for (r, r_len, class) in V4_RANGES {
                let r = IpAddr::V4(*r);
                if cidr_overlaps(net, len, r, *r_len) && !cidr_within(net, len, r, *r_len) {
                    out.push(format!("{} ({})", show_net(r, *r_len), class.describe()));
                }
            }
        }
        IpAddr::V6(_) => {
            for (r, r_len, kind) in V6_RANGES {
                let r = IpAddr::V6(*r);
                if !cidr_overlaps(net, len, r, *r_len) {
                    continue;
                }
                match kind {
                    RangeKind::Class(class) => {
                        if !cidr_within(net, len, r, *r_len) {
                            out.push(format!("{} ({})", show_net(r, *r_len), class.describe()));
                        }
                    }
                    RangeKind::Embeds(e) => {
                        let covered =
                            embedded_network(net, len, r, *r_len, *e).is_some_and(|(n4, l4)| {
                                ungranted_ranges(IpAddr::V4(n4), l4).is_empty()
                            });
                        if !covered {
                            out.push(format!(
                                "{} ({} of non-public IPv4)",
                                show_net(r, *r_len),
                                e.describe()
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

fn show_net(net: IpAddr, len: u8) -> String {
    match (net, len) {
        (IpAddr::V4(_), 32) | (IpAddr::V6(_), 128) => net.to_string(),
        _ => format!("{net}/{len}"),
    }
}

/// One `--allow-listen=[ADDR:]PORT` rule. Port 0 allows any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRule {
    pub addr: Option<IpAddr>,
    pub port: u16,
}

impl ListenRule {
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let err = |reason: &str| PolicyError::ListenRule {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
            let (a, p) = rest
                .split_once("]:")
                .ok_or_else(|| err("expected [IPV6]:PORT"))?;
            (Some(a), p)
        } else {
            match s.rsplit_once(':') {
                Some((a, p)) => (Some(a), p),
                None => (None, s),
            }
        };
        let addr = match addr {
            None => None,
            Some("localhost") => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(a) => Some(canonical_ip(
                a.parse::<IpAddr>()
                    .map_err(|_| err("not a valid IP address (or localhost)"))?,
            )),
        };
        let port = if port == "0" {
            0
        } else {
            parse_port(port).map_err(|r| err(&format!("{r}, or 0 for any port")))?
        };
        Ok(ListenRule { addr, port })
    }

    pub fn matches(&self, addr: SocketAddr) -> bool {
        (self.port == 0 || self.port == addr.port())
            && self.addr.is_none_or(|a| a == canonical_ip(addr.ip()))
    }
}

impl fmt::Display for ListenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            None => write!(f, "{}", self.port),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            Some(a) => write!(f, "{a}:{}", self.port),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    pub allow: Vec<NetRule>,
    pub deny: Vec<NetRule>,
    pub listen: Vec<ListenRule>,
}

impl NetPolicy {
    /// One line per `--allow-net` rule whose network covers special
    /// addresses it does not grant (see [`NetRule::warning`]), for the
    /// caller to print once before the run.
    pub fn warnings(&self) -> Vec<String> {
        self.allow.iter().filter_map(NetRule::warning).collect()
    }

    /// May the host look up `name` for the guest?
    pub fn decide_lookup(&self, name: &str) -> Verdict {
        let shown = normalize_name(name).unwrap_or_else(|_| name.to_string());
        if let Some(d) = self
            .deny
            .iter()
            .find(|r| r.port == PortSpec::Any && r.matches_name(name))
        {
            return Verdict::Deny {
                rule: Some(format!("--deny-net={d}")),
                reason: format!("{shown} is denied by --deny-net={d}"),
                hint: None,
            };
        }
        match self.allow.iter().find(|r| r.matches_name(name)) {
            Some(r) => Verdict::Allow {
                rule: format!("--allow-net={r}"),
            },
            None => Verdict::Deny {
                rule: None,
                reason: format!("{shown} is not granted"),
                hint: Some(format!("--allow-net={shown}")),
            },
        }
    }

    /// May the guest connect (or send) to `ip:port`? `names` are the granted
    /// names whose lookup in this run returned `ip`.
    pub fn decide_connect(&self, ip: IpAddr, port: u16, names: &[String]) -> Verdict {
        let ip = canonical_ip(ip);
        let target = SocketAddr::new(ip, port);
        let by_name = |r: &NetRule| r.port.matches(port) && names.iter().any(|n| r.matches_name(n));
        if let Some(d) = self
            .deny
            .iter()
            .find(|r| r.denies_ip(ip, port) || by_name(r))
        {
            return Verdict::Deny {
                rule: Some(format!("--deny-net={d}")),
                reason: format!("denied by --deny-net={d}"),
                hint: None,
            };
        }
        if let Some(r) = self.allow.iter().find(|r| r.grants_ip(ip, port)) {
            return Verdict::Allow {
                rule: format!("--allow-net={r}"),
            };
        }
        let class = classify(ip);
        let special = class != AddrClass::Public;
        let ip_hint = if ip.is_ipv6() {
            format!("--allow-net=[{ip}]:{port}")
        } else {
            format!("--allow-net={ip}:{port}")
        };
        if let Some(r) = self.allow.iter().find(|r| by_name(r)) {
            if !special || (r.is_localhost() && class == AddrClass::Loopback) {
                return Verdict::Allow {
                    rule: format!("--allow-net={r}"),
                };
            }
            return Verdict::Deny {
                rule: None,
                reason: format!(
                    "{} resolved to a {} address, which is reached only when granted by IP",
                    names.first().map(String::as_str).unwrap_or("the name"),
                    class.describe()
                ),
                hint: Some(ip_hint),
            };
        }
        if let Some(r) = self.allow.iter().find(|r| r.matches_ip(ip, port)) {
            return Verdict::Deny {
                rule: None,
                reason: format!(
                    "{target} is a {} address, which --allow-net={r} does not include; \
                     name it by IP or by a network inside its range",
                    class.describe()
                ),
                hint: Some(ip_hint),
            };
        }
        let reason = match names.first() {
            Some(n) => format!("{n}:{port} is not granted"),
            None if special => format!(
                "{target} is a {} address and is not granted",
                class.describe()
            ),
            None => format!("{target} is not granted"),
        };
        let hint = match names.first() {
            Some(n) => format!("--allow-net={n}:{port}"),
            None => ip_hint,
        };
        Verdict::Deny {
            rule: None,
            reason,
            hint: Some(hint),
        }
    }

    /// May the guest bind or listen on `addr`? Binding the wildcard address
    /// with port 0 is what every outgoing connection does implicitly, and
    /// opens nothing by itself, so it is always allowed.
    pub fn decide_bind(&self, addr: SocketAddr) -> Verdict {
        if addr.ip().is_unspecified() && addr.port() == 0 {
            return Verdict::Allow {
                rule: "implicit bind".into(),
            };
        }
        self.decide_listen(addr)
    }

    pub fn decide_listen(&self, addr: SocketAddr) -> Verdict {
        match self.listen.iter().find(|r| r.matches(addr)) {
            Some(r) => Verdict::Allow {
                rule: format!("--allow-listen={r}"),
            },
            None => {
                let rule = ListenRule {
                    addr: (!addr.ip().is_unspecified()).then(|| canonical_ip(addr.ip())),
                    port: addr.port(),
                };
                Verdict::Deny {
                    rule: None,
                    reason: "listening is not granted".into(),
                    hint: Some(format!("--allow-listen={rule}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> NetRule {
        NetRule::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_and_round_trips() {
        let cases: &[(&str, Option<&str>)] = &[
            ("example.com", Some("example.com")),
            ("Example.COM.:443", Some("example.com:443")),
            ("*.example.com", Some("*.example.com")),
            ("*.example.com:8080", Some("*.example.com:8080")),
            ("93.184.216.34", Some("93.184.216.34")),
            ("93.184.216.34:443", Some("93.184.216.34:443")),
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.0.0.0/8:443", Some("10.0.0.0/8:443")),
            ("[::1]:8080", Some("[::1]:8080")),
            ("[::1]", Some("::1")),
            ("::1", Some("::1")),
            ("fc00::/7", Some("fc00::/7")),
            ("[fc00::/7]:53", Some("[fc00::/7]:53")),
            ("[::ffff:127.0.0.1]:80", Some("127.0.0.1:80")),
            // IPv4-mapped networks are the IPv4 network they carry.
            ("::ffff:10.0.0.0/104", Some("10.0.0.0/8")),
            ("[::ffff:10.0.0.0/104]:53", Some("10.0.0.0/8:53")),
            ("::ffff:a00:1/128", Some("10.0.0.1/32")),
            ("::ffff:0.0.0.0/97", Some("0.0.0.0/1")),
            ("::ffff:10.0.0.1", Some("10.0.0.1")),
            ("::ffff:0:0/96", None),
            ("::ffff:0:0/95", None),
            ("::ffff:10.0.0.1/104", None),
            ("::fffe:0:0/96", Some("::fffe:0:0/96")),
            ("64:ff9b::a00:0/104", Some("64:ff9b::a00:0/104")),
            ("localhost:8000", Some("localhost:8000")),
            ("example.com:99999", None),
            ("example.com:0", None),
            ("example.com:", None),
            ("example.com:http", None),
            ("10.0.0.0/33", None),
            ("10.0.0.1/8", None),
            ("0.0.0.0/0", None),
            ("::/0", None),
            ("fc00::/129", None),
            ("1.2.3", None),
            ("999.1.1.1", None),
            ("*", None),
            ("*.", None),
            ("a.*.com", None),
            ("exa mple.com", None),
            ("-bad.com", None),
            ("", None),
            ("[::1", None),
            ("[::1]8080", None),
            ("[127.0.0.1]:80", None),
            ("::1:8080:", None),
            ("https://example.com", None),
        ];
        for (input, want) in cases {
            let got = NetRule::parse(input);
            match (want, &got) {
                (Some(w), Ok(r)) => {
                    assert_eq!(&r.to_string(), w, "{input:?}");
                    assert_eq!(&NetRule::parse(w).unwrap(), r, "round trip of {input:?}");
                }
                (None, Err(e)) => {
                    assert!(e.to_string().contains(input), "{e} should quote {input:?}")
                }
                _ => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn error_messages_say_why() {
        let e = NetRule::parse("example.com:99999").unwrap_err().to_string();
        assert_eq!(
            e,
            r#"invalid network rule "example.com:99999": invalid port (expected 1-65535)"#
        );
        let e = NetRule::parse("10.0.0.0/33").unwrap_err().to_string();
        assert_eq!(
            e,
            r#"invalid network rule "10.0.0.0/33": invalid prefix length (expected 1-32)"#
        );
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let r = rule("*.example.com");
        assert!(r.matches_name("api.example.com"));
        assert!(r.matches_name("a.b.example.com"));
        assert!(r.matches_name("API.Example.Com."));
        assert!(!r.matches_name("example.com"));
        assert!(!r.matches_name("badexample.com"));
        assert!(!r.matches_name("example.com.evil.net"));
    }

    #[test]
    fn classes() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            // IPv4, with the addresses just outside each range.
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("1.0.0.0", Public),
            ("9.255.255.255", Public),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("11.0.0.0", Public),
            ("100.63.255.255", Public),
            ("100.64.0.0", Private),
            ("100.127.255.255", Private),
            ("100.128.0.0", Public),
            ("127.0.0.1", Loopback),
            ("127.8.9.1", Loopback),
            ("127.255.255.255", Loopback),
            ("128.0.0.0", Public),
            ("169.253.255.255", Public),
            ("169.254.0.0", LinkLocal),
            ("169.254.1.1", LinkLocal),
            ("169.254.169.253", LinkLocal),
            ("169.254.169.254", Metadata),
            ("169.254.255.255", LinkLocal),
            ("169.255.0.0", Public),
            ("172.15.255.255", Public),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("191.255.255.255", Public),
            ("192.0.0.0", Reserved),
            ("192.0.0.255", Reserved),
            ("192.0.1.0", Public),
            ("192.0.2.1", Documentation),
            ("192.0.3.0", Public),
            ("192.88.98.255", Public),
            ("192.88.99.1", Reserved),
            ("192.88.100.0", Public),
            ("192.167.255.255", Public),
            ("192.168.1.1", Private),
            ("192.169.0.0", Public),
            ("198.17.255.255", Public),
            ("198.18.0.0", Reserved),
            ("198.19.255.255", Reserved),
            ("198.20.0.0", Public),
            ("198.51.100.1", Documentation),
            ("198.51.101.0", Public),
            ("203.0.113.1", Documentation),
            ("203.0.114.0", Public),
            ("223.255.255.255", Public),
            ("224.0.0.1", Multicast),
            ("239.255.255.255", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("8.8.8.8", Public),
            ("93.184.216.34", Public),
            // IPv6.
            ("::", Unspecified),
            ("::1", Loopback),
            ("::2", Reserved),
            ("::8.8.8.8", Reserved),
            ("::10.0.0.1", Reserved),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:8.8.8.8", Public),
            ("::fffe:808:808", Reserved),
            ("64:ff9b::8.8.8.8", Public),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::169.254.169.254", Metadata),
            ("64:ff9b::224.0.0.1", Multicast),
            ("64:ff9b::1:a00:1", Reserved),
            ("64:ff9b:1::a00:1", Private),
            ("64:ff9b:1:abcd::808:808", Public),
            ("64:ff9b:1:ffff:ffff:ffff:7f00:1", Loopback),
            ("64:ff9b:2::808:808", Reserved),
            ("100::1", Reserved),
            ("100::ffff:ffff:ffff:ffff", Reserved),
            ("1fff:ffff::1", Reserved),
            ("2001::1", Reserved),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Reserved),
            ("2001:1::1", Public),
            ("2001:2::1", Reserved),
            ("2001:10::1", Reserved),
            ("2001:db7:ffff::1", Public),
            ("2001:db8::1", Documentation),
            ("2001:db8:ffff::1", Documentation),
            ("2001:db9::1", Public),
            ("2002:a00:1::", Private),
            ("2002:a00:1::1", Private),
            ("2002:7f00:1::ffff", Loopback),
            ("2002:a9fe:a9fe::1", Metadata),
            ("2002:c000:201::1", Documentation),
            ("2002:808:808::1", Public),
            ("2003::1", Public),
            ("2606:2800:220:1::1", Public),
            ("3ffe::1", Public),
            ("3fff::1", Documentation),
            ("3fff:fff::1", Documentation),
            ("3fff:1000::1", Public),
            ("4000::1", Reserved),
            ("8000::1", Reserved),
            ("e000::1", Reserved),
            ("fbff::1", Reserved),
            ("fc00::1", Private),
            ("fd12::1", Private),
            ("fd00:ec2::253", Private),
            ("fd00:ec2::254", Metadata),
            ("fe00::1", Reserved),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("fec0::1", Private),
            ("feff::1", Private),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
        ];
        for (ip, class) in cases {
            assert_eq!(classify(ip.parse().unwrap()), *class, "{ip}");
        }
    }

    #[test]
    fn mapped_forms_match_each_other() {
        let cases: &[(&str, &str, bool)] = &[
            ("::ffff:10.0.0.0/104", "10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "11.0.0.1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::10.1.2.3", false),
            ("::ffff:10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "::ffff:10.0.0.1", true),
            ("10.0.0.1", "::ffff:10.0.0.2", false),
            // An IPv6 network around ::ffff:0:0/96 covers IPv4.
            ("::/1", "10.0.0.1", true),
            ("::/1", "8.8.8.8", true),
            ("8000::/1", "8.8.8.8", false),
            // NAT64 is another address: it does not match as the IPv4 one.
            ("64:ff9b::/96", "10.0.0.1", false),
            ("10.0.0.0/8", "64:ff9b::a00:1", false),
        ];
        for (r, ip, want) in cases {
            assert_eq!(
                rule(r).matches_ip(ip.parse().unwrap(), 80),
                *want,
                "{r} matches {ip}"
            );
        }
    }

    #[test]
    fn broad_networks_grant_only_public_addresses() {
        let cases: &[(&str, &str, bool)] = &[
            ("0.0.0.0/1", "8.8.8.8", true),
            ("0.0.0.0/1", "10.0.0.1", false),
            ("0.0.0.0/1", "127.0.0.1", false),
            ("0.0.0.0/1", "0.0.0.0", false),
            ("128.0.0.0/1", "169.254.169.254", false),
            ("128.0.0.0/1", "192.168.1.1", false),
            ("128.0.0.0/1", "224.0.0.1", false),
            ("128.0.0.0/1", "255.255.255.255", false),
            ("128.0.0.0/1", "200.1.1.1", true),
            ("10.0.0.0/7", "10.0.0.1", false),
            ("10.0.0.0/7", "11.0.0.1", true),
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("10.1.0.0/16", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3/32", "10.1.2.3", true),
            ("127.0.0.0/8", "127.0.0.1", true),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("169.254.0.0/16", "169.254.1.1", true),
            ("169.254.0.0/16", "169.254.169.254", false),
            ("169.254.169.0/24", "169.254.169.254", false),
            ("169.254.169.254", "169.254.169.254", true),
            ("192.0.0.0/16", "192.0.2.1", false),
            ("192.0.2.0/24", "192.0.2.1", true),
            ("224.0.0.0/4", "224.0.0.1", true),
            ("240.0.0.0/4", "240.0.0.1", true),
            ("240.0.0.0/4", "255.255.255.255", false),
            ("255.255.255.255", "255.255.255.255", true),
            ("::/1", "::1", false),
            ("::/1", "10.0.0.1", false),
            ("::/1", "8.8.8.8", true),
            ("::/1", "2606:2800:220:1::1", true),
            ("::/3", "200::1", true),
            ("::/3", "::1", false),
            ("::1", "::1", true),
            ("fc00::/7", "fd12::1", true),
            ("fc00::/7", "fd00:ec2::254", false),
            ("fd00:ec2::254", "fd00:ec2::254", true),
            ("8000::/1", "fe80::1", false),
            ("fe80::/10", "fe80::1", true),
            ("64:ff9b::/96", "64:ff9b::808:808", true),
            ("64:ff9b::/96", "64:ff9b::a00:1", false),
            ("64:ff9b::a00:0/104", "64:ff9b::a00:1", true),
            ("64:ff9b::a00:0/103", "64:ff9b::a00:1", false),
            ("64:ff9b::a00:1", "64:ff9b::a00:1", true),
            ("64:ff9b::/64", "64:ff9b::a00:1", false),
            ("64:ff9b:1::/48", "64:ff9b:1::a00:1", false),
            ("64:ff9b:1::/48", "64:ff9b:1::808:808", true),
            ("64:ff9b:1::a00:0/104", "64:ff9b:1::a00:1", true),
            ("64:ff9b:1::/95", "64:ff9b:1::a00:1", false),
            ("2002::/16", "2002:a00:1::1", false),
            ("2002::/16", "2002:808:808::1", true),
            ("2002:a00::/24", "2002:a00:1::1", true),
            ("2002:a00:1::/48", "2002:a00:1::1", true),
            ("2002:a00::/23", "2002:a00:1::1", false),
        ];
        for (r, ip, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(rule(r).matches_ip(ip, 80), "{r} should cover {ip}");
            assert_eq!(rule(r).grants_ip(ip, 80), *want, "{r} grants {ip}");
            assert_eq!(
                policy(&[r], &[]).decide_connect(ip, 80, &[]).is_allowed(),
                *want,
                "connect to {ip} under {r}"
            );
        }
        let d = policy(&["0.0.0.0/1"], &[]).decide_connect("10.0.0.1".parse().unwrap(), 80, &[]);
        assert_eq!(
            d,
            Verdict::Deny {
                rule: None,
                reason: "10.0.0.1:80 is a private address, which --allow-net=0.0.0.0/1 does not \
                         include; name it by IP or by a network inside its range"
                    .into(),
                hint: Some("--allow-net=10.0.0.1:80".into()),
            }
        );
    }

    #[test]
    fn deny_covers_everything_it_names() {
        // (deny rule, address, denied) with the address itself allowed.
        let cases: &[(&str, &str, bool)] = &[
            ("0.0.0.0/1", "10.0.0.1", true),
            ("0.0.0.0/1", "127.0.0.1", true),
            ("128.0.0.0/1", "169.254.169.254", true),
            ("::/1", "::1", true),
            ("::/1", "10.0.0.1", true),
            ("::/1", "::ffff:10.0.0.1", true),
            ("8000::/1", "fd00:ec2::254", true),
            ("fc00::/7", "fd00:ec2::254", true),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("::ffff:10.0.0.0/104", "10.0.0.1", true),
            // A NAT64 or 6to4 address is denied as the IPv4 address it carries.
            ("10.0.0.0/8", "64:ff9b::a00:1", true),
            ("10.0.0.0/8", "64:ff9b:1::a00:1", true),
            ("8.8.8.8", "2002:808:808::1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.0.0.0/8", "2002:b00:1::1", false),
            ("8000::/1", "::1", false),
        ];
        for (d, ip, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            let allow = if ip.is_ipv4() {
                format!("{ip}:80")
            } else {
                format!("[{ip}]:80")
            };
            let p = policy(&[&allow], &[d]);
            assert_eq!(
                !p.decide_connect(ip, 80, &[]).is_allowed(),
                *want,
                "--deny-net={d} denies {ip}"
            );
        }
    }

    #[test]
    fn warnings_for_broad_networks() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "0.0.0.0/1",
                Some(
                    "--allow-net=0.0.0.0/1 does not include 0.0.0.0/8 (unspecified), \
                     10.0.0.0/8 (private), 100.64.0.0/10 (private), 127.0.0.0/8 (loopback); \
                     name them by IP or CIDR to grant them",
                ),
            ),
            (
                "10.0.0.0/7:443",
                Some(
                    "--allow-net=10.0.0.0/7:443 does not include 10.0.0.0/8 (private); \
                     name them by IP or CIDR to grant them",
                ),
            ),
            (
                "169.254.0.0/16",
                Some(
                    "--allow-net=169.254.0.0/16 does not include 169.254.169.254 (cloud metadata); \
                     name them by IP or CIDR to grant them",
                ),
            ),
            (
                "240.0.0.0/4",
                Some(
                    "--allow-net=240.0.0.0/4 does not include 255.255.255.255 (broadcast); \
                     name them by IP or CIDR to grant them",
                ),
            ),
            (
                "fc00::/7",
                Some(
                    "--allow-net=fc00::/7 does not include fd00:ec2::254 (cloud metadata); \
                     name them by IP or CIDR to grant them",
                ),
            ),
            (
                "64:ff9b::/96",
                Some(
                    "--allow-net=64:ff9b::/96 does not include 64:ff9b::/96 (NAT64 of non-public IPv4); \
                     name them by IP or CIDR to grant them",
                ),
            ),
            (
                "2002::/16",
                Some(
                    "--allow-net=2002::/16 does not include 2002::/16 (6to4 of non-public IPv4); \
                     name them by IP or CIDR to grant them",
                ),
            ),
            ("10.0.0.0/8", None),
            ("10.1.2.3", None),
            ("8.8.8.0/24", None),
            ("127.0.0.0/8", None),
            ("64:ff9b::a00:0/104", None),
            ("64:ff9b::808:800/120", None),
            ("64:ff9b:1::a00:0/104", None),
            ("2002:808:808::/48", None),
            ("2606:2800::/32", None),
            ("fd00:ec2::254", None),
            ("example.com", None),
            ("*.example.com:443", None),
        ];
        for (r, want) in cases {
            assert_eq!(rule(r).warning().as_deref(), *want, "{r}");
        }
        let w = rule("::/1").warning().unwrap();
        for part in [
            ":: (unspecified)",
            "::1 (loopback)",
            "::ffff:0.0.0.0/96 (IPv4-mapped of non-public IPv4)",
            "64:ff9b:1::/48 (NAT64 of non-public IPv4)",
            "2001:db8::/32 (documentation)",
            "4000::/2 (reserved)",
        ] {
            assert!(w.contains(part), "{w} should name {part}");
        }
        assert!(!w.contains("fc00::/7"), "{w}");
        // Only allow rules warn: a deny rule is never narrowed.
        let p = policy(&["0.0.0.0/1", "example.com", "8.8.8.8"], &["::/1"]);
        assert_eq!(p.warnings(), vec![rule("0.0.0.0/1").warning().unwrap()]);
    }

    fn policy(allow: &[&str], deny: &[&str]) -> NetPolicy {
        NetPolicy {
            allow: allow.iter().map(|s| rule(s)).collect(),
            deny: deny.iter().map(|s| rule(s)).collect(),
            listen: vec![],
        }
    }

    #[test]
    fn connect_decisions() {
        let p = policy(
            &[
                "example.com:443",
                "10.0.0.5:5432",
                "localhost:8080",
                "93.184.216.0/24:80",
            ],
            &["93.184.216.66"],
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ex = vec!["example.com".to_string()];
        let lo = vec!["localhost".to_string()];
        // A granted name, at the address the host resolved, on its port.
        assert!(p.decide_connect(ip("93.184.216.34"), 443, &ex).is_allowed());
        assert!(
            !p.decide_connect(ip("93.184.216.34"), 80 + 1, &ex)
                .is_allowed()
        );
        // The same address with no lookup behind it is not the name.
        assert!(!p.decide_connect(ip("8.8.8.8"), 443, &[]).is_allowed());
        // A granted name that resolves to a private or loopback address.
        let d = p.decide_connect(ip("127.0.0.1"), 443, &ex);
        assert!(
            matches!(&d, Verdict::Deny { reason, .. } if reason.contains("loopback")),
            "{d:?}"
        );
        assert!(
            !p.decide_connect(ip("169.254.169.254"), 443, &ex)
                .is_allowed()
        );
        // localhost is the name that may reach loopback.
        assert!(p.decide_connect(ip("127.0.0.1"), 8080, &lo).is_allowed());
        assert!(p.decide_connect(ip("::1"), 8080, &lo).is_allowed());
        assert!(!p.decide_connect(ip("127.0.0.1"), 8081, &lo).is_allowed());
        // Private addresses named by IP.
        assert!(p.decide_connect(ip("10.0.0.5"), 5432, &[]).is_allowed());
        assert!(!p.decide_connect(ip("10.0.0.6"), 5432, &[]).is_allowed());
        // CIDR with port, and a deny inside it.
        assert!(p.decide_connect(ip("93.184.216.7"), 80, &[]).is_allowed());
        assert!(!p.decide_connect(ip("93.184.216.66"), 80, &[]).is_allowed());
    }

    #[test]
    fn hints_are_narrowest() {
        let p = policy(&[], &[]);
        let d = p.decide_connect(
            "93.184.216.34".parse().unwrap(),
            443,
            &["example.com".into()],
        );
        assert_eq!(
            d,
            Verdict::Deny {
                rule: None,
                reason: "example.com:443 is not granted".into(),
                hint: Some("--allow-net=example.com:443".into())
            }
        );
        let d = p.decide_connect("::1".parse().unwrap(), 8080, &[]);
        assert!(matches!(d, Verdict::Deny { hint: Some(h), .. } if h == "--allow-net=[::1]:8080"));
        let d = p.decide_lookup("Example.com");
        assert!(matches!(d, Verdict::Deny { hint: Some(h), .. } if h == "--allow-net=example.com"));
    }

    #[test]
    fn lookups() {
        let p = policy(&["*.example.com:443", "api.test"], &["bad.example.com"]);
        assert!(p.decide_lookup("www.example.com").is_allowed());
        assert!(p.decide_lookup("api.test").is_allowed());
        assert!(!p.decide_lookup("example.com").is_allowed());
        assert!(!p.decide_lookup("bad.example.com").is_allowed());
        assert!(!p.decide_lookup("other.test").is_allowed());
    }

    #[test]
    fn listen_rules() {
        let cases: &[(&str, Option<&str>)] = &[
            ("8080", Some("8080")),
            ("127.0.0.1:8080", Some("127.0.0.1:8080")),
            ("localhost:0", Some("127.0.0.1:0")),
            ("[::1]:9000", Some("[::1]:9000")),
            ("0", Some("0")),
            ("70000", None),
            ("host:80", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = ListenRule::parse(input).ok().map(|r| r.to_string());
            assert_eq!(got.as_deref(), *want, "{input:?}");
        }
        let p = NetPolicy {
            listen: vec![ListenRule::parse("127.0.0.1:8080").unwrap()],
            ..Default::default()
        };
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(p.decide_listen(a("127.0.0.1:8080")).is_allowed());
        assert!(!p.decide_listen(a("0.0.0.0:8080")).is_allowed());
        assert!(!p.decide_listen(a("127.0.0.1:8081")).is_allowed());
        assert!(p.decide_bind(a("0.0.0.0:0")).is_allowed());
        assert!(!p.decide_bind(a("0.0.0.0:22")).is_allowed());
    }
}

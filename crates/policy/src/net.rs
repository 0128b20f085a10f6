//! Network rules (`--allow-net`, `--deny-net`, `--allow-listen`): parsing,
//! display, and the decision for every name lookup, connect and bind.
//!
//! Syntax follows Deno: `host`, `host:port`, `*.host`, IP, `IP:port`, CIDR,
//! `[v6]:port`. Names are matched at lookup; at connect only addresses that
//! the host itself resolved for a granted name in this run are allowed for
//! that name, so a guest cannot smuggle an address past a name rule.

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

fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    net.is_ipv4() == ip.is_ipv4() && mask(ip, len) == net
}

/// What kind of address an IP is, for the rule that special addresses are
/// reached only when a rule names them by IP, CIDR or `localhost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    /// Cloud instance metadata (169.254.169.254, fd00:ec2::254): credentials live there.
    Metadata,
    Unspecified,
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
        }
    }
}

pub fn classify(ip: IpAddr) -> AddrClass {
    match canonical_ip(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a == Ipv4Addr::new(169, 254, 169, 254) {
                AddrClass::Metadata
            } else if a.is_loopback() {
                AddrClass::Loopback
            } else if a.is_unspecified() || o[0] == 0 {
                AddrClass::Unspecified
            } else if a.is_link_local() {
                AddrClass::LinkLocal
            } else if a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                // RFC 1918 and the shared (carrier-grade NAT) range 100.64.0.0/10.
                AddrClass::Private
            } else {
                AddrClass::Public
            }
        }
        IpAddr::V6(a) => {
            let seg = a.segments();
            if a == "fd00:ec2::254"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::UNSPECIFIED)
            {
                AddrClass::Metadata
            } else if a.is_loopback() {
                AddrClass::Loopback
            } else if a.is_unspecified() {
                AddrClass::Unspecified
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                AddrClass::LinkLocal
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                AddrClass::Private
            } else {
                AddrClass::Public
            }
        }
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
            .find(|r| r.matches_ip(ip, port) || by_name(r))
        {
            return Verdict::Deny {
                rule: Some(format!("--deny-net={d}")),
                reason: format!("denied by --deny-net={d}"),
                hint: None,
            };
        }
        if let Some(r) = self.allow.iter().find(|r| r.matches_ip(ip, port)) {
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
        let cases = [
            ("127.0.0.1", AddrClass::Loopback),
            ("127.8.9.1", AddrClass::Loopback),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::Private),
            ("169.254.169.254", AddrClass::Metadata),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("0.0.0.0", AddrClass::Unspecified),
            ("93.184.216.34", AddrClass::Public),
            ("::1", AddrClass::Loopback),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:10.0.0.1", AddrClass::Private),
            ("fd12::1", AddrClass::Private),
            ("fe80::1", AddrClass::LinkLocal),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("2606:2800:220:1::1", AddrClass::Public),
        ];
        for (ip, class) in cases {
            assert_eq!(classify(ip.parse().unwrap()), class, "{ip}");
        }
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

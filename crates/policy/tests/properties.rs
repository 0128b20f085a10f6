//! Properties of the policy that must hold for every input, not just the
//! examples in the unit tests: deny always wins, no rule grants beyond its
//! scope, and what is displayed parses back to the same rule.

use capsa_policy::{
    Access, AddrClass, DirGrant, FsGrant, FsOp, FsPolicy, GrantKind, GuestPath, NetPolicy, NetRule,
    PathResolver, RawPolicy, ResolvedPath, TypedGrants, classify,
};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z][a-z0-9-]{0,8}[a-z0-9]", 1..4).prop_map(|labels| labels.join("."))
}

fn port() -> impl Strategy<Value = Option<u16>> {
    prop::option::of(1u16..=65535)
}

fn rule_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (name(), port()).prop_map(|(n, p)| p.map_or(n.clone(), |p| format!("{n}:{p}"))),
        (name(), port()).prop_map(|(n, p)| p.map_or(format!("*.{n}"), |p| format!("*.{n}:{p}"))),
        (any::<u32>(), port()).prop_map(|(ip, p)| {
            let ip = Ipv4Addr::from(ip);
            p.map_or(ip.to_string(), |p| format!("{ip}:{p}"))
        }),
        (any::<u32>(), 1u8..=32).prop_map(|(ip, len)| {
            let net = Ipv4Addr::from(ip & (u32::MAX << (32 - len as u32)));
            format!("{net}/{len}")
        }),
        (any::<u128>(), 1u16..=65535)
            .prop_map(|(ip, p)| format!("[{}]:{p}", std::net::Ipv6Addr::from(ip))),
        (any::<u128>(), 1u8..=128).prop_map(|(ip, len)| {
            let net = Ipv6Addr::from(ip & (u128::MAX << (128 - len as u32)));
            format!("{net}/{len}")
        }),
        // IPv4-mapped addresses and networks, with and without a port.
        (any::<u32>(), port()).prop_map(|(ip, p)| {
            let ip = Ipv4Addr::from(ip).to_ipv6_mapped();
            p.map_or(ip.to_string(), |p| format!("[{ip}]:{p}"))
        }),
        (any::<u32>(), 1u8..=32, port()).prop_map(|(ip, len, p)| {
            let net = Ipv4Addr::from(ip & (u32::MAX << (32 - len as u32))).to_ipv6_mapped();
            let len = len + 96;
            p.map_or(format!("{net}/{len}"), |p| format!("[{net}/{len}]:{p}"))
        }),
    ]
}

/// An IPv6 address that carries `v4`, in each form that carries one, with
/// the free bits filled from `fill`.
fn carriers(v4: Ipv4Addr, fill: u128) -> [Ipv6Addr; 4] {
    let a = u32::from(v4) as u128;
    [
        v4.to_ipv6_mapped(),
        Ipv6Addr::from(0x0064_ff9b_u128 << 96 | a),
        Ipv6Addr::from(
            0x0064_ff9b_0001_u128 << 80 | (fill & (u128::from(u64::MAX >> 16) << 32)) | a,
        ),
        Ipv6Addr::from(0x2002_u128 << 112 | a << 80 | (fill & (u128::MAX >> 48))),
    ]
}

/// Loopback, private, link-local, metadata and unspecified ranges, direct
/// and carried in IPv6.
const SENSITIVE: &[(&str, u8)] = &[
    ("0.0.0.0", 8),
    ("10.0.0.0", 8),
    ("100.64.0.0", 10),
    ("127.0.0.0", 8),
    ("169.254.0.0", 16),
    ("169.254.169.254", 32),
    ("172.16.0.0", 12),
    ("192.168.0.0", 16),
    ("::", 128),
    ("::1", 128),
    ("fc00::", 7),
    ("fd00:ec2::254", 128),
    ("fe80::", 10),
    ("fec0::", 10),
    ("::ffff:10.0.0.0", 104),
    ("64:ff9b::a9fe:a9fe", 128),
    ("64:ff9b::7f00:0", 104),
    ("64:ff9b:1::a00:0", 104),
    ("2002:a00::", 24),
    ("2002:c0a8::", 32),
];

fn path() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec(prop_oneof!["a", "b", "c", "data", "secret"], 1..5)
        .prop_map(|parts| PathBuf::from(format!("/{}", parts.join("/"))))
}

proptest! {
    #[test]
    fn net_rules_round_trip(text in rule_text()) {
        let rule = NetRule::parse(&text).unwrap();
        let shown = rule.to_string();
        prop_assert_eq!(NetRule::parse(&shown).unwrap(), rule);
    }

    /// A mapped address or network is parsed to the IPv4 one it carries.
    #[test]
    fn mapped_rules_are_ipv4(ip in any::<u32>(), len in 1u8..=32) {
        let v4 = Ipv4Addr::from(ip & (u32::MAX << (32 - len as u32)));
        let mapped = NetRule::parse(&format!("{}/{}", v4.to_ipv6_mapped(), len + 96)).unwrap();
        prop_assert_eq!(&mapped, &NetRule::parse(&format!("{v4}/{len}")).unwrap());
        prop_assert_eq!(mapped.to_string(), format!("{v4}/{len}"));
        let addr = NetRule::parse(&Ipv4Addr::from(ip).to_ipv6_mapped().to_string()).unwrap();
        prop_assert_eq!(addr, NetRule::parse(&Ipv4Addr::from(ip).to_string()).unwrap());
    }

    /// An IPv4 network and its mapped form grant and warn alike, for an
    /// IPv4 address and for its mapped form.
    #[test]
    fn mapped_rules_decide_alike(net in any::<u32>(), len in 1u8..=32, ip in any::<u32>(), near in any::<bool>(), p in 1u16..=65535) {
        let mask = u32::MAX << (32 - len as u32);
        let v4 = Ipv4Addr::from(net & mask);
        // Half the time an address inside the network.
        let ip = Ipv4Addr::from(if near { (net & mask) | (ip & !mask) } else { ip });
        let plain = NetPolicy { allow: vec![NetRule::parse(&format!("{v4}/{len}")).unwrap()], ..Default::default() };
        let mapped = NetPolicy {
            allow: vec![NetRule::parse(&format!("{}/{}", v4.to_ipv6_mapped(), len + 96)).unwrap()],
            ..Default::default()
        };
        for target in [IpAddr::V4(ip), IpAddr::V6(ip.to_ipv6_mapped())] {
            let want = plain.decide_connect(IpAddr::V4(ip), p, &[]);
            prop_assert_eq!(plain.decide_connect(target, p, &[]), want.clone());
            prop_assert_eq!(mapped.decide_connect(target, p, &[]), want);
        }
        prop_assert_eq!(plain.warnings(), mapped.warnings());
    }

    /// An address that carries an IPv4 address (mapped, NAT64, 6to4) is
    /// never more public than that address: it is classified as it.
    #[test]
    fn carriers_are_never_more_public(ip in any::<u32>(), fill in any::<u128>()) {
        let v4 = Ipv4Addr::from(ip);
        let class = classify(IpAddr::V4(v4));
        for a in carriers(v4, fill) {
            let got = classify(IpAddr::V6(a));
            if class != AddrClass::Public {
                prop_assert_ne!(got, AddrClass::Public, "{} carries {}", a, v4);
            }
            prop_assert_eq!(got, class, "{} carries {}", a, v4);
        }
    }

    /// A network strictly wider than a loopback, private, link-local,
    /// metadata or unspecified range never grants an address in it, and
    /// says so; a deny rule for that network still refuses it.
    #[test]
    fn broad_networks_grant_no_special_address(
        which in 0..SENSITIVE.len(), host in any::<u128>(), wider in any::<u8>(), p in 1u16..=65535,
    ) {
        let (base, base_len) = SENSITIVE[which];
        let base: IpAddr = base.parse().unwrap();
        let len = 1 + wider % (base_len - 1);
        let (ip, net) = match base {
            IpAddr::V4(b) => {
                let keep = u32::MAX << (32 - base_len as u32);
                let ip = Ipv4Addr::from(u32::from(b) | host as u32 & !keep);
                let net = Ipv4Addr::from(u32::from(ip) & u32::MAX << (32 - len as u32));
                (IpAddr::V4(ip), format!("{net}/{len}"))
            }
            IpAddr::V6(b) => {
                let keep = u128::MAX.checked_shl(128 - base_len as u32).unwrap_or(0);
                let ip = Ipv6Addr::from(u128::from(b) | host & !keep);
                let net = Ipv6Addr::from(u128::from(ip) & u128::MAX << (128 - len as u32));
                (IpAddr::V6(ip), format!("{net}/{len}"))
            }
        };
        // ::ffff:0:0/96 is refused at parse time: it is all of IPv4.
        prop_assume!(!(net.starts_with("::ffff:") && len == 96));
        prop_assert!(matches!(
            classify(ip),
            AddrClass::Loopback | AddrClass::Private | AddrClass::LinkLocal
                | AddrClass::Metadata | AddrClass::Unspecified
        ), "{} is {:?}", ip, classify(ip));
        let rule = NetRule::parse(&net).unwrap();
        prop_assert!(rule.matches_ip(ip, p), "{} covers {}", rule, ip);
        prop_assert!(!rule.grants_ip(ip, p), "{} grants {}", rule, ip);
        let policy = NetPolicy { allow: vec![rule.clone()], ..Default::default() };
        prop_assert!(!policy.decide_connect(ip, p, &[]).is_allowed(), "{} allows {}", rule, ip);
        prop_assert!(rule.warning().is_some(), "{} warns", rule);
        let named = NetPolicy {
            allow: vec![NetRule::parse(&ip.to_string()).unwrap()],
            ..Default::default()
        };
        prop_assert!(named.decide_connect(ip, p, &[]).is_allowed());
        let denied = NetPolicy { deny: vec![rule], ..named };
        prop_assert!(!denied.decide_connect(ip, p, &[]).is_allowed());
    }

    #[test]
    fn net_parser_never_panics(text in "\\PC{0,40}") {
        let _ = NetRule::parse(&text);
        let _ = capsa_policy::ListenRule::parse(&text);
        let _ = capsa_policy::EnvPattern::parse(&text);
        let _ = capsa_policy::parse_size(&text);
        let _ = capsa_policy::parse_duration(&text);
        let _ = capsa_policy::RawPolicy::from_toml(&text);
    }

    /// Whatever is allowed, a deny rule that matches the target wins.
    #[test]
    fn net_deny_wins(allow in prop::collection::vec(rule_text(), 0..4), ip in any::<u32>(), p in 1u16..=65535) {
        let ip = IpAddr::V4(Ipv4Addr::from(ip));
        let mut policy = NetPolicy {
            allow: allow.iter().map(|r| NetRule::parse(r).unwrap()).collect(),
            ..Default::default()
        };
        policy.allow.push(NetRule::parse(&format!("{ip}:{p}")).unwrap());
        prop_assert!(policy.decide_connect(ip, p, &[]).is_allowed());
        policy.deny.push(NetRule::parse(&ip.to_string()).unwrap());
        prop_assert!(!policy.decide_connect(ip, p, &[]).is_allowed());
    }

    /// A name rule never allows an address nobody resolved for that name,
    /// and never a special address unless the name is localhost.
    #[test]
    fn name_rules_stay_in_scope(n in name(), ip in any::<u32>(), p in 1u16..=65535, resolved in any::<bool>()) {
        let ip = IpAddr::V4(Ipv4Addr::from(ip));
        let policy = NetPolicy { allow: vec![NetRule::parse(&n).unwrap()], ..Default::default() };
        let names = if resolved { vec![n.clone()] } else { vec![] };
        let allowed = policy.decide_connect(ip, p, &names).is_allowed();
        let expected = resolved && (classify(ip) == AddrClass::Public || (n == "localhost" && classify(ip) == AddrClass::Loopback));
        prop_assert_eq!(allowed, expected);
    }

    /// File decisions: a deny covering the path always wins; nothing outside
    /// every grant is allowed; a read-only grant never allows a write.
    #[test]
    fn fs_rules(grants in prop::collection::vec((path(), any::<bool>(), any::<bool>()), 0..4),
                deny_read in prop::collection::vec(path(), 0..2),
                deny_write in prop::collection::vec(path(), 0..2),
                target in path(), write in any::<bool>()) {
        let policy = FsPolicy {
            grants: grants.iter().map(|(p, rw, file)| FsGrant {
                host: p.clone(),
                guest: p.display().to_string(),
                access: if *rw { Access::ReadWrite } else { Access::Read },
                kind: if *file { GrantKind::File } else { GrantKind::Dir },
            }).collect(),
            deny_read: deny_read.clone(),
            deny_write: deny_write.clone(),
            given: Vec::new(),
        };
        let op = if write { FsOp::Write } else { FsOp::Read };
        let allowed = policy.decide(&target, op, true).is_allowed();
        let denied_by_rule = if write { &deny_write } else { &deny_read }.iter().any(|d| target.starts_with(d));
        if denied_by_rule {
            prop_assert!(!allowed);
        }
        let covering = policy.grant_for(&target);
        if covering.is_none() {
            prop_assert!(!allowed);
        }
        if let Some(g) = covering {
            if write && g.access == Access::Read {
                prop_assert!(!allowed);
            }
            if g.kind == GrantKind::File {
                prop_assert_eq!(&g.host, &target);
            } else {
                prop_assert!(target.starts_with(&g.host));
            }
        }
    }

    /// A guest path that parses displays as exactly its input, and the
    /// display parses back to the same path.
    #[test]
    fn guest_paths_round_trip(text in "(/[a-z.,:\\ \u{1b}\u{202e}-]{0,6}){1,4}") {
        if let Ok(p) = GuestPath::parse(&text) {
            prop_assert_eq!(p.to_string(), text.clone());
            prop_assert_eq!(GuestPath::parse(p.as_ref()).unwrap(), p);
            prop_assert!(!text.contains(',') && !text.contains("::"));
            prop_assert!(!text.chars().any(capsa_policy::text::is_terminal_unsafe));
        }
    }

    /// Whatever a bundle asks for and the user binds, the resolved policy
    /// holds exactly one grant per bound directory, at its guest path, with
    /// the access the user gave: never more grants, never more access.
    #[test]
    fn typed_grants_grant_exactly_what_they_say(
        dirs in prop::collection::btree_map("/[a-z]{1,4}", (path(), any::<bool>()), 0..4),
    ) {
        struct Same;
        impl PathResolver for Same {
            fn resolve(&self, path: &std::path::Path) -> Result<ResolvedPath, String> {
                Ok(ResolvedPath { canonical: path.to_path_buf(), is_dir: true })
            }
        }
        let typed = TypedGrants {
            dirs: dirs.iter().map(|(g, (host, rw))| DirGrant {
                host: host.clone(),
                guest: GuestPath::parse(g).unwrap(),
                access: if *rw { Access::ReadWrite } else { Access::Read },
            }).collect(),
            ..Default::default()
        };
        let p = RawPolicy::default().resolve_with(std::path::Path::new("/"), &Same, &typed).unwrap();
        prop_assert_eq!(p.fs.grants.len(), dirs.len());
        for ((g, (host, rw)), grant) in dirs.iter().zip(&p.fs.grants) {
            prop_assert_eq!(&grant.guest, g);
            prop_assert_eq!(&grant.host, host);
            prop_assert_eq!(grant.access == Access::ReadWrite, *rw);
        }
    }
}

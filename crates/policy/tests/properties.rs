//! Properties of the policy that must hold for every input, not just the
//! examples in the unit tests: deny always wins, no rule grants beyond its
//! scope, and what is displayed parses back to the same rule.

use capsa_policy::{
    Access, AddrClass, DirGrant, FsGrant, FsOp, FsPolicy, GrantKind, GuestPath, NetPolicy, NetRule,
    PathResolver, RawPolicy, ResolvedPath, TypedGrants, classify,
};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr};
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
    ]
}

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
            prop_assert_eq!(GuestPath::parse(&p.to_string()).unwrap(), p);
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

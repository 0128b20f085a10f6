//! The policy as typed, in flags or a TOML file, before anything is checked;
//! and its resolution into a [`Policy`] the sandbox can enforce.

use crate::env::parse_assignment;
use crate::fs::{Access, FsGrant, GrantKind, PathResolver, normalize_host, resolve_grant};
use crate::limits::{MAX_MEMORY, format_size};
use crate::{
    EnvPattern, EnvPolicy, FsPolicy, GuestPath, Limits, ListenRule, NetPolicy, NetRule, Policy,
    PolicyError, parse_duration, parse_size,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Grants and limits exactly as given. The same struct reads the command
/// line and a policy file, so the two cannot drift apart.
///
/// It is written back out as a policy file by `capsa serve`, which hands
/// each run its exact grants that way (never as flag text to be split).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPolicy {
    #[serde(default)]
    pub allow_read: Vec<String>,
    #[serde(default)]
    pub allow_write: Vec<String>,
    #[serde(default)]
    pub deny_read: Vec<String>,
    #[serde(default)]
    pub deny_write: Vec<String>,
    #[serde(default)]
    pub allow_net: Vec<String>,
    #[serde(default)]
    pub deny_net: Vec<String>,
    #[serde(default)]
    pub allow_listen: Vec<String>,
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// Variables set for the guest; on the command line, `--env NAME=VALUE`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_write: Option<Scalar>,
}

/// A limit in a policy file may be written `memory = "256M"` or `fuel = 1000`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(u64),
    Str(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

/// Grants that arrive already typed: a bundle's asks, as the user bound
/// and consented to them. They join the flags' grants in
/// [`RawPolicy::resolve_with`] without ever being written out as flag text,
/// so nothing in them is split at `,` or `::` or parsed a second time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypedGrants {
    pub dirs: Vec<DirGrant>,
    pub net: Vec<NetRule>,
    pub env: Vec<EnvPattern>,
}

/// A host directory shown to the guest at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// As the user typed it; relative to the working directory.
    pub host: PathBuf,
    pub guest: GuestPath,
    pub access: Access,
}

impl From<String> for Scalar {
    fn from(s: String) -> Self {
        Scalar::Str(s)
    }
}

impl RawPolicy {
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| {
            // One line: where, then what (toml's own Display draws the source).
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {col}: ")
            });
            PolicyError::Toml(format!(
                "{}{}",
                at.unwrap_or_default(),
                e.message().trim_end()
            ))
        })
    }

    /// The policy file that [`from_toml`](Self::from_toml) reads back as
    /// this same policy.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        toml::to_string(self).map_err(|e| PolicyError::Toml(e.to_string()))
    }

    /// Adds one `--env NAME=VALUE`.
    pub fn add_env_assignment(&mut self, input: &str) -> Result<(), PolicyError> {
        let (k, v) = parse_assignment(input)?;
        self.env.insert(k, v);
        Ok(())
    }

    /// Makes the relative paths of a policy file relative to its directory,
    /// as a user who moves the file with its data would expect. Each item
    /// of a comma-separated entry is rebased, and only its host part
    /// (before `::`).
    pub fn rebase(&mut self, dir: &Path) {
        for list in [
            &mut self.allow_read,
            &mut self.allow_write,
            &mut self.deny_read,
            &mut self.deny_write,
        ] {
            let items: Vec<String> = list
                .iter()
                .flat_map(|entry| entry.split(','))
                .map(|item| {
                    let item = item.trim();
                    let (host, guest) = match item.split_once("::") {
                        Some((h, g)) => (h, Some(g)),
                        None => (item, None),
                    };
                    // An empty item or host stays empty, to be refused.
                    let host = if host.is_empty() || Path::new(host).has_root() {
                        host.to_string()
                    } else {
                        dir.join(host).display().to_string()
                    };
                    match guest {
                        Some(g) => format!("{host}::{g}"),
                        None => host,
                    }
                })
                .collect();
            *list = items;
        }
    }

    /// Refuses an empty item in any list (`a,,b`, a trailing comma, `""`):
    /// a typo must not silently grant or deny less than was written.
    fn check_items(&self) -> Result<(), PolicyError> {
        let lists: [(&str, &Vec<String>); 8] = [
            ("allow-read", &self.allow_read),
            ("allow-write", &self.allow_write),
            ("deny-read", &self.deny_read),
            ("deny-write", &self.deny_write),
            ("allow-net", &self.allow_net),
            ("deny-net", &self.deny_net),
            ("allow-listen", &self.allow_listen),
            ("allow-env", &self.allow_env),
        ];
        for (name, list) in lists {
            for entry in list {
                if entry.split(',').any(|i| i.trim().is_empty()) {
                    return Err(PolicyError::EmptyItem {
                        list: name.to_string(),
                        input: entry.clone(),
                    });
                }
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(PolicyError::EnvAssign {
                    input: format!("{k}=..."),
                });
            }
        }
        Ok(())
    }

    /// Adds `other` on top of `self`: grants add up, and a limit given in
    /// `other` replaces the one in `self`.
    pub fn merge(&mut self, other: RawPolicy) {
        self.allow_read.extend(other.allow_read);
        self.allow_write.extend(other.allow_write);
        self.deny_read.extend(other.deny_read);
        self.deny_write.extend(other.deny_write);
        self.allow_net.extend(other.allow_net);
        self.deny_net.extend(other.deny_net);
        self.allow_listen.extend(other.allow_listen);
        self.allow_env.extend(other.allow_env);
        self.env.extend(other.env);
        let l = other.limits;
        self.limits.memory = l.memory.or(self.limits.memory.take());
        self.limits.timeout = l.timeout.or(self.limits.timeout.take());
        self.limits.fuel = l.fuel.or(self.limits.fuel.take());
        self.limits.max_output = l.max_output.or(self.limits.max_output.take());
        self.limits.max_write = l.max_write.or(self.limits.max_write.take());
    }

    /// Checks every rule and resolves every path against `cwd`.
    pub fn resolve(&self, cwd: &Path, resolver: &dyn PathResolver) -> Result<Policy, PolicyError> {
        self.resolve_with(cwd, resolver, &TypedGrants::default())
    }

    /// [`resolve`](Self::resolve), plus grants that are already typed. They
    /// meet the same checks as the flags' (a host path must exist, two
    /// hosts may not share a guest path), and the `--deny-*` rules win over
    /// them as over any grant.
    pub fn resolve_with(
        &self,
        cwd: &Path,
        resolver: &dyn PathResolver,
        typed: &TypedGrants,
    ) -> Result<Policy, PolicyError> {
        self.check_items()?;
        let mut allow_net = parse_all(&self.allow_net, NetRule::parse)?;
        allow_net.extend(typed.net.iter().cloned());
        let mut allow_env = parse_all(&self.allow_env, EnvPattern::parse)?;
        allow_env.extend(typed.env.iter().cloned());
        Ok(Policy {
            fs: self.resolve_fs(cwd, resolver, &typed.dirs)?,
            net: NetPolicy {
                allow: allow_net,
                deny: parse_all(&self.deny_net, NetRule::parse)?,
                listen: parse_all(&self.allow_listen, ListenRule::parse)?,
            },
            env: EnvPolicy {
                allow: allow_env,
                set: self
                    .env
                    .iter()
                    .map(|(k, v)| parse_assignment(&format!("{k}={v}")))
                    .collect::<Result<_, _>>()?,
            },
            limits: self.limits.resolve()?,
        })
    }

    fn resolve_fs(
        &self,
        cwd: &Path,
        resolver: &dyn PathResolver,
        dirs: &[DirGrant],
    ) -> Result<FsPolicy, PolicyError> {
        let mut grants: Vec<FsGrant> = Vec::new();
        let specs = split_all(&self.allow_read)
            .map(|s| (s, Access::Read))
            .chain(split_all(&self.allow_write).map(|s| (s, Access::ReadWrite)));
        for (spec, access) in specs {
            let g = resolve_grant(spec, access, cwd, resolver)?;
            add_grant(&mut grants, g, spec)?;
        }
        for d in dirs {
            let shown = d.host.display().to_string();
            let err = |reason: String| PolicyError::Path {
                input: shown.clone(),
                reason,
            };
            crate::fs::host_spelling(&shown, cfg!(windows)).map_err(err)?;
            let abs = normalize_host(&cwd.join(&d.host));
            let resolved = resolver
                .resolve(&abs)
                .map_err(|e| err(format!("{}: {e}", abs.display())))?;
            if !resolved.is_dir {
                return Err(err(format!("{} is not a directory", abs.display())));
            }
            let g = FsGrant {
                host: resolved.canonical,
                guest: d.guest.to_string(),
                access: d.access,
                kind: GrantKind::Dir,
            };
            add_grant(&mut grants, g, &shown)?;
        }
        for s in split_all(&self.deny_read).chain(split_all(&self.deny_write)) {
            crate::fs::host_spelling(s, cfg!(windows)).map_err(|reason| PolicyError::Path {
                input: s.to_string(),
                reason,
            })?;
        }
        let deny = |list: &[String]| -> Vec<PathBuf> {
            split_all(list)
                .map(|s| {
                    let abs = normalize_host(&cwd.join(s));
                    // A denied path that does not exist yet is still denied.
                    resolver.resolve(&abs).map(|r| r.canonical).unwrap_or(abs)
                })
                .collect()
        };
        let given = split_all(&self.allow_read)
            .chain(split_all(&self.allow_write))
            .map(|s| s.split_once("::").map_or(s, |(h, _)| h))
            .chain(split_all(&self.deny_read))
            .chain(split_all(&self.deny_write))
            .map(|s| normalize_host(&cwd.join(s)))
            .collect();
        Ok(FsPolicy {
            grants,
            deny_read: deny(&self.deny_read),
            deny_write: deny(&self.deny_write),
            given,
        })
    }
}

impl RawLimits {
    fn resolve(&self) -> Result<Limits, PolicyError> {
        let mut limits = Limits::default();
        if let Some(m) = &self.memory {
            let text = m.text();
            let bytes = parse_size(&text)?;
            if bytes == 0 || bytes > MAX_MEMORY {
                return Err(PolicyError::Size {
                    input: text,
                    reason: format!(
                        "memory must be more than 0 and at most {} (what 32-bit WebAssembly can address)",
                        format_size(MAX_MEMORY)
                    ),
                });
            }
            limits.memory = bytes;
        }
        if let Some(t) = &self.timeout {
            limits.timeout = match t.text().as_str() {
                "none" => None,
                s => Some(parse_duration(s)?),
            };
        }
        if let Some(f) = &self.fuel {
            let text = f.text();
            limits.fuel = match text.as_str() {
                "none" => None,
                s => match s.replace('_', "").parse::<u64>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => return Err(PolicyError::Fuel { input: text }),
                },
            };
        }
        // A size, or `none`.
        let size_or_none = |v: &Scalar| match v.text().as_str() {
            "none" => Ok(None),
            s => parse_size(s).map(Some),
        };
        if let Some(o) = &self.max_output {
            limits.max_output = size_or_none(o)?;
        }
        if let Some(w) = &self.max_write {
            limits.max_write = size_or_none(w)?;
        }
        Ok(limits)
    }
}

/// Adds `g` to `grants`, or widens the grant already at its guest path.
fn add_grant(grants: &mut Vec<FsGrant>, g: FsGrant, input: &str) -> Result<(), PolicyError> {
    if let Some(same) = grants
        .iter_mut()
        .find(|o| o.guest_absolute() == g.guest_absolute())
    {
        if same.host != g.host {
            return Err(PolicyError::Path {
                input: input.to_string(),
                reason: format!(
                    "{} is already granted from {}; choose another guest path with HOST::GUEST",
                    g.guest,
                    same.host.display()
                ),
            });
        }
        // The same path granted twice: the wider access was asked for.
        same.access = same.access.max(g.access);
        return Ok(());
    }
    grants.push(g);
    Ok(())
}

/// Flags take comma-separated lists (`--allow-read=a,b`): every item.
pub fn split_all(list: &[String]) -> impl Iterator<Item = &str> {
    list.iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn parse_all<T>(
    list: &[String],
    parse: impl Fn(&str) -> Result<T, PolicyError>,
) -> Result<Vec<T>, PolicyError> {
    split_all(list).map(parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GrantKind, ResolvedPath};

    struct Fs;
    impl PathResolver for Fs {
        fn resolve(&self, path: &Path) -> Result<ResolvedPath, String> {
            if path.starts_with("/missing") {
                return Err("No such file or directory".into());
            }
            Ok(ResolvedPath {
                canonical: path.into(),
                is_dir: !path.to_string_lossy().ends_with(".txt"),
            })
        }
    }

    #[test]
    fn a_written_policy_reads_back_the_same() {
        let mut raw = RawPolicy {
            allow_read: vec!["/data".into(), "/a b::/c".into()],
            allow_write: vec!["/out".into()],
            deny_net: vec!["10.0.0.0/8".into()],
            allow_env: vec!["APP_*".into()],
            ..Default::default()
        };
        raw.env.insert("MODE".into(), "a \"quoted\"\nvalue".into());
        raw.limits.memory = Some(Scalar::Str("256M".into()));
        raw.limits.fuel = Some(Scalar::Int(1000));
        let text = raw.to_toml().unwrap();
        assert_eq!(RawPolicy::from_toml(&text).unwrap(), raw, "{text}");
        let empty = RawPolicy::default();
        assert_eq!(
            RawPolicy::from_toml(&empty.to_toml().unwrap()).unwrap(),
            empty
        );
    }

    #[test]
    fn toml_reads_everything() {
        let raw = RawPolicy::from_toml(
            r#"
            allow-read = ["/data", "notes.txt"]
            allow-write = ["/out"]
            deny-read = ["/data/secret"]
            allow-net = ["example.com:443"]
            allow-listen = ["8080"]
            allow-env = ["HOME", "APP_*"]
            [env]
            MODE = "test"
            [limits]
            memory = "256M"
            timeout = "30s"
            fuel = 1000000
            max-output = "1M"
            max-write = "2M"
            "#,
        )
        .unwrap();
        let p = raw.resolve(Path::new("/home/u"), &Fs).unwrap();
        assert_eq!(p.fs.grants.len(), 3);
        assert_eq!(p.fs.grants[1].kind, GrantKind::File);
        assert_eq!(p.fs.grants[1].host, Path::new("/home/u/notes.txt"));
        assert_eq!(p.fs.grants[2].access, Access::ReadWrite);
        assert_eq!(p.net.allow[0].to_string(), "example.com:443");
        assert_eq!(p.env.set, vec![("MODE".to_string(), "test".to_string())]);
        assert_eq!(p.limits.memory, 256 << 20);
        assert_eq!(p.limits.fuel, Some(1_000_000));
        assert_eq!(p.limits.max_write, Some(2 << 20));
        assert_eq!(p.limits.max_output, Some(1 << 20));
    }

    // Regression: only the first item of "a, b" was rebased, so
    // `deny-read = ["data/a, data/b"]` missed data/b; "::/x" granted the
    // file's own folder; `[env]` keys with `=` and empty items passed.
    #[test]
    fn policy_file_items_are_each_rebased_and_checked() {
        let mut p = RawPolicy::from_toml(
            "deny-read = [\"data/a, data/b\"]\nallow-read = [\"in::/g\", \"/abs\"]",
        )
        .unwrap();
        p.rebase(Path::new("/etc/app"));
        assert_eq!(p.deny_read, ["/etc/app/data/a", "/etc/app/data/b"]);
        assert_eq!(p.allow_read, ["/etc/app/in::/g", "/abs"]);
        let mut p = RawPolicy::from_toml("allow-read = [\"::/x\"]").unwrap();
        p.rebase(Path::new("/etc/app"));
        assert!(p.resolve(Path::new("/"), &Fs).is_err(), "{p:?}");
        for bad in [
            "allow-read = [\"a,,b\"]",
            "allow-net = [\"x.org,\"]",
            "deny-write = [\"\"]",
            "[env]\n\"A=B\" = \"c\"",
        ] {
            let p = RawPolicy::from_toml(bad).unwrap();
            assert!(p.resolve(Path::new("/"), &Fs).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_errors_are_clear() {
        let e = RawPolicy::from_toml("allow-reed = [\"/x\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `allow-reed`"), "{e}");
        let e = RawPolicy::from_toml("allow-read = ")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid policy file: "), "{e}");
        let e = RawPolicy::from_toml("[limits]\nmemroy = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `memroy`"), "{e}");
    }

    #[test]
    fn flags_add_to_the_file_and_override_its_limits() {
        let mut file = RawPolicy::from_toml(
            "allow-net = [\"a.com\"]\n[limits]\nmemory = \"1G\"\ntimeout = \"5s\"",
        )
        .unwrap();
        let flags = RawPolicy {
            allow_net: vec!["b.com,c.com".into()],
            limits: RawLimits {
                memory: Some("64M".to_string().into()),
                ..Default::default()
            },
            ..Default::default()
        };
        file.merge(flags);
        let p = file.resolve(Path::new("/"), &Fs).unwrap();
        assert_eq!(p.net.allow.len(), 3);
        assert_eq!(p.limits.memory, 64 << 20);
        assert_eq!(p.limits.timeout, Some(std::time::Duration::from_secs(5)));
    }

    #[test]
    fn limit_values() {
        let lim = |m: &str| {
            RawLimits {
                memory: Some(m.to_string().into()),
                ..Default::default()
            }
            .resolve()
        };
        assert!(lim("lots").is_err());
        assert!(lim("0").is_err());
        assert!(lim("5G").is_err());
        assert!(lim("4G").is_ok());
        let t = RawLimits {
            timeout: Some("none".to_string().into()),
            fuel: Some(Scalar::Int(0)),
            ..Default::default()
        };
        assert!(t.resolve().is_err());
        let t = RawLimits {
            timeout: Some("none".to_string().into()),
            ..Default::default()
        };
        assert_eq!(t.resolve().unwrap().timeout, None);
        let w = |v: &str| {
            RawLimits {
                max_write: Some(v.to_string().into()),
                ..Default::default()
            }
            .resolve()
        };
        assert_eq!(w("none").unwrap().max_write, None);
        assert_eq!(w("64K").unwrap().max_write, Some(64 << 10));
        assert!(w("much").is_err());
        assert_eq!(RawLimits::default().resolve().unwrap().max_write, None);
        assert_eq!(Limits::default().memory, 1 << 30);
    }

    #[test]
    fn rebase_and_duplicates() {
        let mut raw = RawPolicy {
            allow_read: vec!["data".into(), "/abs".into()],
            ..Default::default()
        };
        raw.rebase(Path::new("/etc/capsa"));
        assert_eq!(
            raw.allow_read,
            vec!["/etc/capsa/data".to_string(), "/abs".to_string()]
        );
        let raw = RawPolicy {
            allow_read: vec!["/a".into()],
            allow_write: vec!["/a".into()],
            ..Default::default()
        };
        let p = raw.resolve(Path::new("/"), &Fs).unwrap();
        assert_eq!(p.fs.grants.len(), 1);
        assert_eq!(p.fs.grants[0].access, Access::ReadWrite);
        let raw = RawPolicy {
            allow_read: vec!["/a::/m".into(), "/b::/m".into()],
            ..Default::default()
        };
        assert!(raw.resolve(Path::new("/"), &Fs).is_err());
        let raw = RawPolicy {
            allow_read: vec!["/missing/x".into()],
            ..Default::default()
        };
        assert!(raw.resolve(Path::new("/"), &Fs).is_err());
    }

    /// A bundle's guest path `/out,/` once became two grants, the second of
    /// the host's `/`, because it was written into flag text and split at
    /// `,`. Typed grants are never split: one ask is one grant.
    #[test]
    fn typed_grants_are_never_split() {
        let guest = |s: &str| GuestPath::parse(s).unwrap();
        // The text cannot even become a guest path.
        assert!(GuestPath::parse("/out,/").is_err());
        let typed = TypedGrants {
            dirs: vec![DirGrant {
                host: "out".into(),
                guest: guest("/output"),
                access: Access::Read,
            }],
            net: vec![NetRule::parse("api.example.com:443").unwrap()],
            env: vec![EnvPattern::parse("API_TOKEN").unwrap()],
        };
        let raw = RawPolicy {
            allow_net: vec!["b.com".into()],
            ..Default::default()
        };
        let p = raw.resolve_with(Path::new("/home/u"), &Fs, &typed).unwrap();
        assert_eq!(
            p.fs.grants,
            vec![FsGrant {
                host: "/home/u/out".into(),
                guest: "/output".into(),
                access: Access::Read,
                kind: GrantKind::Dir,
            }]
        );
        let rules: Vec<String> = p.net.allow.iter().map(ToString::to_string).collect();
        assert_eq!(rules, ["b.com", "api.example.com:443"]);
        assert_eq!(p.env.allow, typed.env);
    }

    #[test]
    fn typed_dirs_are_checked_like_flags() {
        let dir = |host: &str, g: &str| TypedGrants {
            dirs: vec![DirGrant {
                host: host.into(),
                guest: GuestPath::parse(g).unwrap(),
                access: Access::ReadWrite,
            }],
            ..Default::default()
        };
        let cwd = Path::new("/home/u");
        let e = RawPolicy::default()
            .resolve_with(cwd, &Fs, &dir("/missing/out", "/o"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such file"), "{e}");
        let e = RawPolicy::default()
            .resolve_with(cwd, &Fs, &dir("notes.txt", "/o"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a directory"), "{e}");
        // Another host at the same guest path is refused, not shadowed.
        let raw = RawPolicy {
            allow_read: vec!["/etc::/o".into()],
            ..Default::default()
        };
        let e = raw
            .resolve_with(cwd, &Fs, &dir("out", "/o"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already granted from /etc"), "{e}");
        // The user's own --deny-write still wins inside a bound directory.
        let raw = RawPolicy {
            deny_write: vec!["out/keep".into()],
            ..Default::default()
        };
        let p = raw.resolve_with(cwd, &Fs, &dir("out", "/o")).unwrap();
        let v =
            p.fs.decide(Path::new("/home/u/out/keep/x"), crate::FsOp::Write, false);
        assert!(!v.is_allowed(), "{v:?}");
    }
}

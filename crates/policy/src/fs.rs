//! File grants (`--allow-read`, `--allow-write`), the denials that win over
//! them (`--deny-read`, `--deny-write`), and the decision for one access.
//!
//! Paths here are already resolved by the caller: grants are canonical host
//! paths (links and `..` resolved), because comparing unresolved strings is
//! how sandboxes get escaped.

use crate::{PolicyError, Verdict};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    ReadWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    Dir,
    File,
}

/// One granted directory or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsGrant {
    /// Canonical host path.
    pub host: PathBuf,
    /// The path the guest sees it at: absolute, or a relative preopen
    /// name (`HOST::name`), which wasi-libc takes from `/`.
    pub guest: String,
    pub access: Access,
    pub kind: GrantKind,
}

impl FsGrant {
    /// The flag that grants this, as the user would type it.
    pub fn flag(&self) -> String {
        let name = match self.access {
            Access::Read => "--allow-read",
            Access::ReadWrite => "--allow-write",
        };
        format!("{name}={}", spec(&self.host, &self.guest))
    }

    /// Where the guest sees it, as an absolute path.
    pub fn guest_absolute(&self) -> std::borrow::Cow<'_, str> {
        if self.guest.starts_with('/') {
            self.guest.as_str().into()
        } else {
            format!("/{}", self.guest).into()
        }
    }

    /// The guest path of a host path inside this grant.
    pub fn guest_path_of(&self, host: &Path) -> Option<String> {
        let rel = host.strip_prefix(&self.host).ok()?;
        Some(join_guest(&self.guest_absolute(), &rel.to_string_lossy()))
    }

    /// The host path of a guest path inside this grant.
    pub fn host_path_of(&self, guest: &str) -> Option<PathBuf> {
        let rel = strip_guest_prefix(guest, &self.guest_absolute())?;
        Some(if rel.is_empty() {
            self.host.clone()
        } else {
            self.host.join(rel)
        })
    }
}

fn spec(host: &Path, guest: &str) -> String {
    if host.to_str() == Some(guest) {
        guest.to_string()
    } else {
        format!("{}::{guest}", host.display())
    }
}

/// What the guest is trying to do to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    Read,
    /// Create, write, truncate, rename, link, remove, change times.
    Write,
}

impl FsOp {
    pub fn flag(self) -> &'static str {
        match self {
            FsOp::Read => "--allow-read",
            FsOp::Write => "--allow-write",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FsPolicy {
    pub grants: Vec<FsGrant>,
    /// Canonical host paths nothing may read below.
    pub deny_read: Vec<PathBuf>,
    /// Canonical host paths nothing may change below.
    pub deny_write: Vec<PathBuf>,
    /// Every grant's and `--deny-*` host path as given, made absolute but
    /// not resolved: a link on the way to one must keep pointing where it
    /// pointed.
    pub given: Vec<PathBuf>,
}

impl FsPolicy {
    /// The most specific grant that covers the canonical host path `host`.
    pub fn grant_for(&self, host: &Path) -> Option<&FsGrant> {
        self.grants
            .iter()
            .filter(|g| match g.kind {
                GrantKind::Dir => host.starts_with(&g.host),
                GrantKind::File => host == g.host,
            })
            .max_by_key(|g| g.host.components().count())
    }

    /// May the guest do `op` on the canonical host path `host`? `exists`
    /// tells whether it is there already (a hint to create a file names its
    /// directory; a hint to change one names the file).
    pub fn decide(&self, host: &Path, op: FsOp, exists: bool) -> Verdict {
        let denied_by = |list: &[PathBuf], flag: &str| {
            list.iter()
                .find(|d| host.starts_with(d))
                .map(|d| format!("{flag}={}", d.display()))
        };
        let deny = match op {
            FsOp::Read => denied_by(&self.deny_read, "--deny-read"),
            FsOp::Write => denied_by(&self.deny_write, "--deny-write"),
        };
        if let Some(rule) = deny {
            return Verdict::Deny {
                reason: format!("denied by {rule}"),
                rule: Some(rule),
                hint: None,
            };
        }
        let target = if exists || op == FsOp::Read {
            host
        } else {
            host.parent().unwrap_or(host)
        };
        match self.grant_for(host) {
            Some(g) if op == FsOp::Read || g.access == Access::ReadWrite => {
                Verdict::Allow { rule: g.flag() }
            }
            Some(g) => Verdict::Deny {
                rule: Some(g.flag()),
                reason: format!("{} is granted read-only", g.guest),
                hint: Some(format!(
                    "--allow-write={}",
                    spec(
                        target,
                        &g.guest_path_of(target)
                            .unwrap_or_else(|| target.display().to_string())
                    )
                )),
            },
            None => Verdict::Deny {
                rule: None,
                reason: "outside every granted path".into(),
                hint: Some(format!("{}={}", op.flag(), target.display())),
            },
        }
    }
}

/// The caller's view of the file system, so this crate stays free of I/O.
pub trait PathResolver {
    /// Resolves links and `..` in an absolute path; fails if it does not exist.
    fn resolve(&self, path: &Path) -> Result<ResolvedPath, String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPath {
    pub canonical: PathBuf,
    pub is_dir: bool,
}

/// Turns `HOST` or `HOST::GUEST` from a flag into a grant.
pub(crate) fn resolve_grant(
    spec: &str,
    access: Access,
    cwd: &Path,
    resolver: &dyn PathResolver,
) -> Result<FsGrant, PolicyError> {
    let err = |reason: String| PolicyError::Path {
        input: spec.to_string(),
        reason,
    };
    let (host, guest) = match spec.split_once("::") {
        Some((h, g)) => (h, Some(g)),
        None => (spec, None),
    };
    if host.is_empty() {
        return Err(err("empty path".into()));
    }
    // What cannot be typed or shown safely is refused, not mangled (the
    // guest path is checked as a `GuestPath` below).
    if host.chars().any(char::is_control) {
        return Err(err("the path contains a control character".into()));
    }
    host_spelling(host, cfg!(windows)).map_err(err)?;
    let host_abs = normalize_host(&cwd.join(host));
    let resolved = resolver
        .resolve(&host_abs)
        .map_err(|e| err(format!("{}: {e}", host_abs.display())))?;
    if cfg!(windows) && is_network_path(&resolved.canonical.to_string_lossy()) {
        return Err(err(format!(
            "{}: network paths cannot be granted on Windows (the file calls capsa \
             builds on resolve them against the working directory)",
            resolved.canonical.display()
        )));
    }
    let guest = match guest {
        Some(g) => {
            if g.is_empty() {
                return Err(err("empty guest path after ::".into()));
            }
            // A relative guest path is a name, as WASI preopens are: wasi-libc
            // resolves `data/x` against `/`, so `HOST::data` is `/data`; the
            // guest sees the name as typed (programs look for it by name).
            let relative = !g.starts_with('/');
            let g = &if relative {
                format!("/{g}")
            } else {
                g.to_string()
            };
            if g.split('/').any(|c| c == "..") {
                return Err(err("the guest path may not contain ..".into()));
            }
            // Typed flags may write `/mnt/d/` or `./`; what is left must be
            // one guest path like any other (no control characters, no `::`).
            let path: String = crate::GuestPath::parse(&normalize_guest(g))
                .map_err(|e| match e {
                    PolicyError::GuestPath { reason, .. } => err(format!("guest path: {reason}")),
                    other => other,
                })?
                .into();
            match path.strip_prefix('/') {
                Some(name) if relative && !name.is_empty() => name.to_string(),
                _ => path,
            }
        }
        None => default_guest(&host_abs).ok_or_else(|| {
            err(
                "the path has no guest spelling (not UTF-8, or a network path); \
                 give a guest path with HOST::GUEST"
                    .into(),
            )
        })?,
    };
    Ok(FsGrant {
        host: resolved.canonical,
        guest,
        access,
        kind: if resolved.is_dir {
            GrantKind::Dir
        } else {
            GrantKind::File
        },
    })
}

/// A Windows network path: `\\server\share`, `\\?\UNC\server\share`
/// (also what a mapped network drive canonicalizes to).
pub(crate) fn is_network_path(canonical: &str) -> bool {
    canonical.starts_with(r"\\")
        && crate::winpath::strip_verbatim(canonical).as_bytes().get(1) != Some(&b':')
}

/// On Windows a host path starting with `/` is refused: `/c/data` is how
/// the guest sees `C:\data`, and as a host path it would name `\c\data` on
/// the current drive (a `--deny-*` there would silently deny nothing).
pub(crate) fn host_spelling(host: &str, windows: bool) -> Result<(), String> {
    if windows && host.starts_with('/') {
        let guess = crate::winpath::host_of_guest(host)
            .map(|h| format!(" ({h}?)"))
            .unwrap_or_default();
        return Err(format!(
            "on Windows a host path is written with a drive, like C:\\data{guess}; \
             /c/data is how the guest sees it"
        ));
    }
    Ok(())
}

/// The guest path of a grant given without `::`: the host path itself, in
/// POSIX spelling on Windows (`C:\data` is `/c/data`, see [`crate::winpath`]).
#[cfg(not(windows))]
pub fn default_guest(host_abs: &Path) -> Option<String> {
    host_abs.to_str().map(str::to_string)
}

#[cfg(windows)]
pub fn default_guest(host_abs: &Path) -> Option<String> {
    crate::winpath::guest_of_host(host_abs.to_str()?)
}

/// The other way: how a user types the host path of a guest path granted at
/// its own name. The same text, or on Windows `/c/x` as `C:\x` (`None` for
/// a path no drive holds).
pub fn default_host(guest: &str) -> Option<String> {
    if cfg!(windows) {
        crate::winpath::host_of_guest(guest)
    } else {
        Some(guest.to_string())
    }
}

/// Makes `path` absolute against nothing but itself: removes `.` and folds
/// `..` lexically. Only for what the user typed, before it is canonicalized.
pub fn normalize_host(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `/a//b/./c/` → `/a/b/c`.
pub fn normalize_guest(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Resolves `rel` against the guest directory `base` lexically. Returns the
/// absolute guest path and whether `..` climbed above `base` (which
/// wasmtime refuses: a descriptor never reaches outside its directory).
pub fn join_guest_checked(base: &str, rel: &str) -> (String, bool) {
    let mut parts: Vec<&str> = base.split('/').filter(|c| !c.is_empty()).collect();
    let floor = parts.len();
    let mut escaped = false;
    if rel.starts_with('/') {
        escaped = true;
        parts.clear();
    }
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.len() <= floor {
                    escaped = true;
                }
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    (format!("/{}", parts.join("/")), escaped)
}

fn join_guest(base: &str, rel: &str) -> String {
    join_guest_checked(base, rel).0
}

/// `rel` of `guest` below `base`, or `None` when it is not below it.
pub fn strip_guest_prefix<'a>(guest: &'a str, base: &str) -> Option<&'a str> {
    if base == "/" {
        return Some(guest.trim_start_matches('/'));
    }
    let rest = guest.strip_prefix(base)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_paths_are_told_from_drives() {
        assert!(is_network_path(r"\\server\share\x"));
        assert!(is_network_path(r"\\?\UNC\server\share"));
        assert!(!is_network_path(r"\\?\C:\data"));
        assert!(!is_network_path(r"C:\data"));
        assert!(!is_network_path("/srv/data"));
    }

    #[test]
    fn windows_host_paths_are_not_written_as_guest_paths() {
        let e = host_spelling("/z/var/secret", true).unwrap_err();
        assert!(e.contains(r"(Z:\var\secret?)"), "{e}");
        assert!(host_spelling(r"C:\data", true).is_ok());
        assert!(host_spelling(r"\data", true).is_ok());
        assert!(host_spelling("/data", false).is_ok());
    }

    fn grant(host: &str, access: Access, kind: GrantKind) -> FsGrant {
        FsGrant {
            host: host.into(),
            guest: host.into(),
            access,
            kind,
        }
    }

    fn policy() -> FsPolicy {
        FsPolicy {
            grants: vec![
                grant("/data", Access::Read, GrantKind::Dir),
                grant("/data/out", Access::ReadWrite, GrantKind::Dir),
                grant("/etc/hosts", Access::Read, GrantKind::File),
            ],
            deny_read: vec!["/data/secret".into()],
            deny_write: vec!["/data/out/keep".into()],
            given: Vec::new(),
        }
    }

    #[test]
    fn decisions() {
        let p = policy();
        let cases: &[(&str, FsOp, bool, bool)] = &[
            ("/data/a.csv", FsOp::Read, true, true),
            ("/data/a.csv", FsOp::Write, true, false),
            ("/data/out/r.txt", FsOp::Write, false, true),
            ("/data/out/keep/x", FsOp::Write, false, false),
            ("/data/out/keep/x", FsOp::Read, true, true),
            ("/data/secret", FsOp::Read, true, false),
            ("/data/secret/k", FsOp::Read, true, false),
            ("/data/secretary", FsOp::Read, true, true),
            ("/etc/hosts", FsOp::Read, true, true),
            ("/etc/passwd", FsOp::Read, true, false),
            ("/etc", FsOp::Read, true, false),
            ("/database", FsOp::Read, true, false),
        ];
        for (path, op, exists, allowed) in cases {
            let d = p.decide(Path::new(path), *op, *exists);
            assert_eq!(d.is_allowed(), *allowed, "{path} {op:?}: {d:?}");
        }
    }

    #[test]
    fn hints() {
        let p = policy();
        let d = p.decide(Path::new("/data/out.csv"), FsOp::Write, false);
        assert_eq!(
            d,
            Verdict::Deny {
                rule: Some("--allow-read=/data".into()),
                reason: "/data is granted read-only".into(),
                hint: Some("--allow-write=/data".into())
            }
        );
        let d = p.decide(Path::new("/data/a.csv"), FsOp::Write, true);
        assert!(
            matches!(d, Verdict::Deny { hint: Some(h), .. } if h == "--allow-write=/data/a.csv")
        );
        let d = p.decide(Path::new("/etc/passwd"), FsOp::Read, true);
        assert!(
            matches!(d, Verdict::Deny { hint: Some(h), .. } if h == "--allow-read=/etc/passwd")
        );
        // A --deny-* is the user's word: no hint overrides it.
        let d = p.decide(Path::new("/data/secret"), FsOp::Read, true);
        assert!(matches!(d, Verdict::Deny { hint: None, .. }));
    }

    #[test]
    fn guest_paths() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("/data", "a/b.txt", "/data/a/b.txt", false),
            ("/data", "./a/../b", "/data/b", false),
            ("/data", "../etc/passwd", "/etc/passwd", true),
            ("/data", "a/../../x", "/x", true),
            ("/data", "/etc", "/etc", true),
            ("/", "..", "/", true),
            ("/data", "", "/data", false),
        ];
        for (base, rel, want, escaped) in cases {
            assert_eq!(
                join_guest_checked(base, rel),
                (want.to_string(), *escaped),
                "{base} + {rel}"
            );
        }
        assert_eq!(normalize_guest("/a//b/./c/"), "/a/b/c");
        assert_eq!(strip_guest_prefix("/data/x", "/data"), Some("x"));
        assert_eq!(strip_guest_prefix("/database", "/data"), None);
        assert_eq!(strip_guest_prefix("/x", "/"), Some("x"));
    }

    struct FakeFs;
    impl PathResolver for FakeFs {
        fn resolve(&self, path: &Path) -> Result<ResolvedPath, String> {
            match path.to_str() {
                Some("/home/u/proj/data") => Ok(ResolvedPath {
                    canonical: "/srv/data".into(),
                    is_dir: true,
                }),
                Some("/home/u/proj/notes.txt") => Ok(ResolvedPath {
                    canonical: path.into(),
                    is_dir: false,
                }),
                _ => Err("No such file or directory".into()),
            }
        }
    }

    #[test]
    fn grant_specs() {
        let cwd = Path::new("/home/u/proj");
        let g = resolve_grant("data", Access::Read, cwd, &FakeFs).unwrap();
        assert_eq!(g.host, Path::new("/srv/data"));
        assert_eq!(g.guest, "/home/u/proj/data");
        assert_eq!(g.flag(), "--allow-read=/srv/data::/home/u/proj/data");
        let g = resolve_grant("./x/../data::/mnt/d/", Access::ReadWrite, cwd, &FakeFs).unwrap();
        assert_eq!(g.guest, "/mnt/d");
        let g = resolve_grant("notes.txt", Access::Read, cwd, &FakeFs).unwrap();
        assert_eq!(g.kind, GrantKind::File);
        let e = resolve_grant("missing", Access::Read, cwd, &FakeFs)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            r#"invalid path grant "missing": /home/u/proj/missing: No such file or directory"#
        );
        // A relative guest path is a preopen name, kept as typed.
        let g = resolve_grant("data::rel.dir/", Access::Read, cwd, &FakeFs).unwrap();
        assert_eq!(g.guest, "rel.dir");
        assert_eq!(g.guest_absolute(), "/rel.dir");
        assert_eq!(g.host_path_of("/rel.dir/x"), Some("/srv/data/x".into()));
        assert!(resolve_grant("data::", Access::Read, cwd, &FakeFs).is_err());
        assert!(resolve_grant("data::rel/..", Access::Read, cwd, &FakeFs).is_err());
        assert!(resolve_grant("data::/a/../b", Access::Read, cwd, &FakeFs).is_err());
        assert!(resolve_grant("", Access::Read, cwd, &FakeFs).is_err());
        // Regression: a guest path must be one clean absolute path.
        for bad in [
            "data::/a\nb",
            "data::/a\0b",
            "data::/a::/b",
            "::/x",
            "da\x1bta",
        ] {
            assert!(
                resolve_grant(bad, Access::Read, cwd, &FakeFs).is_err(),
                "{bad:?}"
            );
        }
        let e = resolve_grant("data::/a\x1b[2K", Access::Read, cwd, &FakeFs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("guest path: the control"), "{e}");
        assert!(resolve_grant("data::/a::b", Access::Read, cwd, &FakeFs).is_err());
    }
}

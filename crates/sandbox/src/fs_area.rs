//! Which rules hold where, keyed by the objects themselves.
//!
//! A grant, a `--deny-*` path and capsa's own cache each mark one directory
//! or file, identified by device and inode when the run starts. What holds
//! for an object is decided while walking to it: entering a marked object
//! applies its mark, so a rule follows its object through renames and hard
//! links, and no spelling of a path (`..`, a link the guest made) reaches it
//! without passing through it. The set of marks an object is under is its
//! [`Domain`]; moving or linking anything between domains is refused.
//!
//! Names still matter to whatever reads these paths after the run (git runs
//! `.git/hooks/pre-commit` by name; capsa finds its cache by name), so every
//! directory on the way from a grant to a mark is pinned: it cannot be
//! renamed, removed or replaced. A `--deny-*` path (and capsa's cache) also
//! marks its name in its directory, so that what the host or another
//! program makes there, or renames over it, is under the rule too; one
//! that does not exist yet marks its first missing name, which then cannot
//! be created. Every marked object is held open for the run: its inode
//! number is not given to a new file while the mark stands.

use crate::fs_guard::Preopen;
use capsa_policy::{Access, GrantKind, Policy};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Device and inode: what an object is, whatever it is called.
pub type Ident = (u64, u64);

/// A name as a file system that ignores case compares it: each letter in
/// one case, by the one-to-one mappings Windows and macOS use (`ß` stays
/// `ß`), so that a denied name that does not exist yet cannot be made as
/// `.GIT`. On every system: Linux has case-blind folders too (ext4's
/// casefold, vfat, a Windows drive under WSL), which capsa does not ask
/// about; a rule's name then covers its every spelling in case.
///
/// Letters are also compared decomposed (Unicode's NFD), before and after
/// the case mapping: macOS's file systems and ext4's casefold take `é` and
/// `e` followed by a combining accent for one name, so a denied `café`
/// cannot be made as `cafe\u{301}` either. (NTFS tells them apart: there
/// such a rule also covers a name that is only the same to the eye.)
fn fold_case(name: &str) -> String {
    fold_case_if(name, true)
}

fn fold_case_if(name: &str, fold: bool) -> String {
    if !fold {
        return name.to_string();
    }
    // Rust gives the full mappings; these systems use the simple one-to-one
    // ones. Where the full upper case is more than one letter (`ß` is `SS`,
    // `ᾀ` is `ἈΙ`), the simple mapping keeps `ß` and makes `ᾀ` and `ᾈ` one
    // name: the lower case, when it is one letter, says so for both.
    use unicode_normalization::UnicodeNormalization;
    let mapped: String = name
        .nfd()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => {
                    let mut low = c.to_lowercase();
                    match (low.next(), low.next()) {
                        (Some(l), None) => l,
                        _ => c,
                    }
                }
            }
        })
        .collect();
    mapped.nfd().collect()
}

/// Holds the host path `path` open (see `Areas::held`) and says what it is;
/// where it cannot be opened (no permission to, on systems without
/// `O_PATH`), says what it is without holding it.
fn hold(path: &Path) -> std::io::Result<(Option<crate::fs_host::Held>, crate::fs_walk::Found)> {
    match crate::fs_host::hold(path) {
        Ok((h, f)) => Ok((Some(h), f)),
        Err(_) => crate::fs_host::stat_path(path, true).map(|f| (None, f)),
    }
}

/// What the host path is, a link in its last name not followed.
fn ident_nofollow(path: &Path) -> std::io::Result<Ident> {
    crate::fs_host::stat_path(path, false).map(|f| f.ident)
}

/// What the innermost grant on the way to an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Base {
    /// Under no grant: the neighbours of a granted file.
    Outside,
    /// Index into `policy.fs.grants`.
    Grant(usize),
    /// The directory that holds granted files (index into the preopens):
    /// it may be looked at and listed, showing only those files.
    Holder(usize),
}

/// Every mark an object is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Domain {
    pub base: Base,
    /// Index into [`Areas::denies`] of a rule that refuses all access.
    pub deny_all: Option<usize>,
    /// Index into [`Areas::denies`] of a rule that refuses changes.
    pub deny_write: Option<usize>,
}

impl Domain {
    const OUTSIDE: Domain = Domain {
        base: Base::Outside,
        deny_all: None,
        deny_write: None,
    };
}

/// A path nothing may read (or change) below, whatever is granted.
#[derive(Debug, Clone)]
pub struct DenyRule {
    pub host: PathBuf,
    /// Refuses reading too, not just changes.
    pub all: bool,
    /// What the user reads as the reason: `denied by --deny-read=/x`.
    pub why: String,
    /// capsa's own files: said once at start when a grant contains them.
    pub own: bool,
}

#[derive(Debug, Clone, Copy)]
enum Mark {
    Grant(usize),
    Holder(usize),
    Deny(usize),
}

/// Why an access is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Denied(usize),
    ReadOnly(usize),
    /// Only some files of this directory (a preopen index) are granted.
    OnlyFiles(usize),
    Outside,
}

#[derive(Debug, Default)]
pub struct Areas {
    marks: HashMap<Ident, Vec<Mark>>,
    /// Marks of `--deny-*` paths and capsa's own by name in their
    /// directory: whatever is there (made later, or put there by a
    /// rename over the old one) is under the rule, as the object found at
    /// start is wherever it goes.
    pending: HashMap<(Ident, String), Vec<Mark>>,
    /// Directories on the way to a mark: never renamed, removed or
    /// replaced; with what they hold, for the message.
    pinned: HashMap<Ident, String>,
    /// Directories above a grant: a walk goes through one it may not read
    /// (from the working directory's view, `data` to the grant
    /// `data/sub`), as it learns nothing there but the way it knows.
    ways: std::collections::HashSet<Ident>,
    /// The grants found at their own path, the ends of those ways.
    ends: std::collections::HashSet<Ident>,
    pub denies: Vec<DenyRule>,
    grant_access: Vec<Access>,
    /// Every object marked, kept open for the run: a mark is on an
    /// identity, which the file system would give to the next file made
    /// once the object is removed (by the host, or another program).
    held: Vec<crate::fs_host::Held>,
}

/// Resolves `path` as the host does, links followed (dangling ones too),
/// and calls `visit` with every object it passes through: each directory,
/// each link of a chain, the directories a `..` in a link's target climbs
/// into. Returns the real directory it reaches and the first name there
/// that does not exist (`None` if all do): a rule given as `W/config`, a
/// link to the missing `config.real`, lands on `config.real`, the name a
/// write through `W/config` would create. `None` after 40 links.
fn walk_host(path: &Path, mut visit: impl FnMut(Ident)) -> Option<(PathBuf, Option<String>)> {
    let mut queue: std::collections::VecDeque<std::ffi::OsString> = path
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        // A root (`/`, `\`), a drive (`C:`) or a share: pushing it
        // replaces what it replaces, as the system resolves it.
        if matches!(
            Path::new(&c).components().next(),
            Some(std::path::Component::RootDir | std::path::Component::Prefix(_))
        ) {
            cur.push(&c);
            continue;
        }
        if c == "." {
            continue;
        }
        let next = if c == ".." {
            cur.parent().map_or_else(|| cur.clone(), Path::to_path_buf)
        } else {
            cur.join(&c)
        };
        let Ok(m) = crate::fs_host::stat_path(&next, false) else {
            return Some((cur, Some(c.to_str()?.to_string())));
        };
        visit(m.ident);
        if m.is_link {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = std::fs::read_link(&next).ok()?;
            for part in target.components().rev() {
                queue.push_front(part.as_os_str().to_owned());
            }
        } else {
            cur = next;
        }
    }
    Some((cur, None))
}

impl Areas {
    /// Whether `ident` is a grant's or a file holder's (what a preopen may
    /// open).
    pub fn is_granted_root(&self, ident: Ident) -> bool {
        self.marks.get(&ident).is_some_and(|m| {
            m.iter()
                .any(|m| matches!(m, Mark::Grant(_) | Mark::Holder(_)))
        })
    }

    /// Marks every grant, file holder and denied path of `policy`, and
    /// `own` (capsa's cache), as they are on the host now.
    pub fn build(policy: &Policy, preopens: &[Preopen], own: &[PathBuf]) -> std::io::Result<Areas> {
        let mut a = Areas {
            grant_access: policy.fs.grants.iter().map(|g| g.access).collect(),
            ..Areas::default()
        };
        let mut roots: Vec<(PathBuf, String)> = Vec::new();
        for (i, g) in policy.fs.grants.iter().enumerate() {
            // Resolved already: a link found on the way now was put there
            // since, and is not followed.
            let (held, meta) = crate::fs_host::hold_no_links(&g.host)?;
            let held = Some(held);
            a.held.extend(held);
            a.marks.entry(meta.ident).or_default().push(Mark::Grant(i));
            // Only to a grant the guest finds at its own path: not capsa's
            // own in its cache (the standard library, mounted elsewhere),
            // whose way would tell where that cache is.
            let own_path = capsa_policy::default_guest(&g.host).as_deref()
                == Some(g.guest_absolute().as_ref());
            if own_path {
                a.ends.insert(meta.ident);
            }
            let mut up = g.host.parent().filter(|_| own_path);
            while let Some(dir) = up {
                if let Ok(ident) = ident_nofollow(dir) {
                    a.ways.insert(ident);
                }
                up = dir.parent();
            }
            roots.push((g.host.clone(), format!("the granted path {}", g.guest)));
            debug_assert!(g.kind == GrantKind::File || meta.is_dir);
        }
        for (i, p) in preopens.iter().enumerate() {
            if p.only.is_some() {
                let (held, meta) = crate::fs_host::hold_no_links(&p.host)?;
                let held = Some(held);
                a.held.extend(held);
                a.marks.entry(meta.ident).or_default().push(Mark::Holder(i));
            }
        }
        let mut rules: Vec<DenyRule> = Vec::new();
        for d in &policy.fs.deny_read {
            rules.push(DenyRule {
                host: d.clone(),
                all: true,
                why: format!("denied by --deny-read={}", d.display()),
                own: false,
            });
        }
        for d in &policy.fs.deny_write {
            rules.push(DenyRule {
                host: d.clone(),
                all: false,
                why: format!("denied by --deny-write={}", d.display()),
                own: false,
            });
        }
        for o in own {
            rules.push(DenyRule {
                host: o.clone(),
                all: true,
                why: format!("{} holds capsa's own files", o.display()),
                own: true,
            });
        }
        // The paths as given: a link on the way to one is pinned too, so
        // that the name keeps leading to the object the rule marked.
        let given: Vec<(PathBuf, String)> = policy
            .fs
            .given
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    format!("the way to {} (a granted or denied path)", p.display()),
                )
            })
            .chain(own.iter().map(|p| {
                (
                    p.clone(),
                    format!("the way to capsa's own files ({})", p.display()),
                )
            }))
            .collect();
        for (path, what) in &given {
            walk_host(path, |ident| {
                a.pinned.entry(ident).or_insert_with(|| what.clone());
            });
        }
        for mut rule in rules {
            let j = a.denies.len();
            let Some((base, missing)) = walk_host(&rule.host, |_| {}) else {
                a.denies.push(rule);
                continue;
            };
            // Nothing on the way exists, not even a root (`\\server\share`
            // that does not answer): nothing can reach it to mark.
            let Ok((held, found)) = hold(&base) else {
                a.denies.push(rule);
                continue;
            };
            a.held.extend(held);
            let base_ident = found.ident;
            if rule.own {
                // Said to the user by the name grants use: the real one.
                rule.host = match &missing {
                    None => base.clone(),
                    Some(name) => base.join(name),
                };
            }
            match missing {
                None => {
                    a.marks.entry(base_ident).or_default().push(Mark::Deny(j));
                    let named = base.parent().zip(base.file_name()).and_then(|(dir, name)| {
                        let (held, dir) = hold(dir).ok()?;
                        Some((held, (dir.ident, fold_case(name.to_str()?))))
                    });
                    if let Some((held, key)) = named {
                        a.held.extend(held);
                        a.pending.entry(key).or_default().push(Mark::Deny(j));
                    }
                }
                Some(name) => {
                    a.pending
                        .entry((base_ident, fold_case(&name)))
                        .or_default()
                        .push(Mark::Deny(j));
                }
            }
            let what = if rule.own {
                format!("capsa's own files ({})", rule.host.display())
            } else {
                format!("{} (a --deny-* path)", rule.host.display())
            };
            roots.push((base, what));
            a.denies.push(rule);
        }
        // A rule given through a link (`config/token -> ..data/token`, as a
        // Kubernetes secret volume has it) also marks the link's name, so
        // that the link, re-pointed by the host during the run, does not
        // lead past the rule to a new object.
        for g in &policy.fs.given {
            let Some(real) = walk_host(g, |_| {}).map(|(base, missing)| match missing {
                None => base,
                Some(name) => base.join(name),
            }) else {
                continue;
            };
            let Some((dir, name)) = g.parent().zip(g.file_name().and_then(|n| n.to_str())) else {
                continue;
            };
            let rules: Vec<usize> = (0..a.denies.len())
                // A rule's path is the resolved one, or as given when it
                // did not resolve (a link dangling at start).
                .filter(|&j| {
                    !a.denies[j].own && (a.denies[j].host == real || a.denies[j].host == *g)
                })
                .filter(|_| *g != real)
                .collect();
            if rules.is_empty() {
                continue;
            }
            let Ok((held, found)) = hold(dir) else {
                continue;
            };
            a.held.extend(held);
            let marks = a.pending.entry((found.ident, fold_case(name))).or_default();
            marks.extend(rules.into_iter().map(Mark::Deny));
        }
        // Pin every directory from each preopen down to each mark.
        for (root, what) in &roots {
            for p in preopens {
                let Ok(rel) = root.strip_prefix(&p.host) else {
                    continue;
                };
                let mut cur = p.host.clone();
                let mut pin = |p: &Path| {
                    if let Ok(ident) = ident_nofollow(p) {
                        a.pinned.entry(ident).or_insert_with(|| what.clone());
                    }
                };
                pin(&cur);
                for c in rel.components() {
                    cur.push(c);
                    pin(&cur);
                }
            }
        }
        Ok(a)
    }

    /// The domain of the preopened directory `host`: every mark on its way
    /// from `/` applies, but capsa's own: the standard library and a
    /// bundle's files are granted read-only from inside the cache (no user
    /// grant may be: the command line refuses it), and only walking into
    /// the cache from a grant around it is refused.
    pub fn domain_of_path(&self, host: &Path) -> Domain {
        let mut d = Domain::OUTSIDE;
        let mut cur = PathBuf::new();
        for c in host.components() {
            cur.push(c);
            if let Ok(ident) = ident_nofollow(&cur) {
                if let Base::Holder(_) = d.base {
                    d.base = Base::Outside;
                }
                if let Some(marks) = self.marks.get(&ident) {
                    let marks: Vec<Mark> = marks
                        .iter()
                        .copied()
                        .filter(|m| !matches!(m, Mark::Deny(j) if self.denies[*j].own))
                        .collect();
                    self.apply(&mut d, &marks);
                }
            }
        }
        d
    }

    /// The domain of the object `ident`, entered from a directory in `parent`.
    /// The domain of the object `ident`, found as `name` in the
    /// directory `dir` of domain `parent`.
    pub fn enter(&self, parent: Domain, dir: Ident, name: &str, ident: Ident) -> Domain {
        let mut d = self.enter_new(parent, dir, name);
        if let Some(marks) = self.marks.get(&ident) {
            self.apply(&mut d, marks);
        }
        d
    }

    /// The domain a new object named `name` in directory `dir` would have.
    pub fn enter_new(&self, parent: Domain, dir: Ident, name: &str) -> Domain {
        let mut d = parent;
        if let Base::Holder(_) = d.base {
            d.base = Base::Outside;
        }
        if let Some(marks) = self.pending.get(&(dir, fold_case(name))) {
            self.apply(&mut d, marks);
        }
        d
    }

    /// Whether the directory `ident` lies above a grant, so that a walk
    /// may go through it to reach the grant.
    pub fn leads_to_a_grant(&self, ident: Ident) -> bool {
        self.ways.contains(&ident)
    }

    /// Whether the directory `ident`, of `domain`, lies above a grant under
    /// no rule: a walk goes through it, and it can be opened to be listed,
    /// showing only what is on the way (see [`Areas::on_the_way`]).
    pub fn is_way(&self, domain: Domain, ident: Ident) -> bool {
        domain.base == Base::Outside && domain.deny_all.is_none() && self.leads_to_a_grant(ident)
    }

    /// Whether `ident` is on the way to a grant at its own path, or that
    /// grant: what a listing of a directory on the way shows (names the
    /// program knows already, as its granted paths).
    pub fn on_the_way(&self, ident: Ident) -> bool {
        self.ways.contains(&ident) || self.ends.contains(&ident)
    }

    /// Whether entering `ident` resets the depth used to judge link targets.
    pub fn is_grant_root(&self, ident: Ident) -> bool {
        self.marks
            .get(&ident)
            .is_some_and(|m| m.iter().any(|m| matches!(m, Mark::Grant(_))))
    }

    fn apply(&self, d: &mut Domain, marks: &[Mark]) {
        let mut grant: Option<usize> = None;
        let mut holder = None;
        for m in marks {
            match *m {
                // Two grants of one object: the wider access holds.
                Mark::Grant(i) => {
                    if grant.is_none_or(|g| self.grant_access[i] > self.grant_access[g]) {
                        grant = Some(i);
                    }
                }
                Mark::Holder(p) => holder = Some(p),
                Mark::Deny(j) => {
                    if self.denies[j].all {
                        d.deny_all.get_or_insert(j);
                    } else {
                        d.deny_write.get_or_insert(j);
                    }
                }
            }
        }
        if let Some(g) = grant {
            d.base = Base::Grant(g);
        } else if let (Some(p), Base::Outside) = (holder, d.base) {
            d.base = Base::Holder(p);
        }
    }

    /// What a pinned object holds, which keeps it where it is.
    pub fn pinned(&self, ident: Ident) -> Option<&str> {
        self.pinned.get(&ident).map(String::as_str)
    }

    pub fn may_read(&self, d: Domain) -> Result<(), Refusal> {
        if let Some(j) = d.deny_all {
            return Err(Refusal::Denied(j));
        }
        match d.base {
            Base::Grant(_) | Base::Holder(_) => Ok(()),
            Base::Outside => Err(Refusal::Outside),
        }
    }

    pub fn may_write(&self, d: Domain) -> Result<(), Refusal> {
        if let Some(j) = d.deny_all.or(d.deny_write) {
            return Err(Refusal::Denied(j));
        }
        match d.base {
            Base::Grant(g) if self.grant_access[g] == Access::ReadWrite => Ok(()),
            Base::Grant(g) => Err(Refusal::ReadOnly(g)),
            Base::Holder(p) => Err(Refusal::OnlyFiles(p)),
            Base::Outside => Err(Refusal::Outside),
        }
    }

    /// The rules that are capsa's own and lie inside a grant: said once.
    pub fn own_inside<'a>(&'a self, policy: &'a Policy) -> impl Iterator<Item = &'a DenyRule> {
        self.denies.iter().filter(move |r| {
            r.own
                && policy
                    .fs
                    .grants
                    .iter()
                    .any(|g| g.kind == GrantKind::Dir && r.host.starts_with(&g.host))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fold_as_case_blind_file_systems_compare_them() {
        use super::fold_case_if as f;
        assert_eq!(f(".GIT", true), f(".git", true));
        assert_eq!(f("Later", true), f("LATER", true));
        assert_eq!(f("Émile", true), f("émile", true));
        assert_ne!(f("ß", true), f("SS", true));
        assert_ne!(f("ß", true), f("ẞ", true));
        // Found by the red team: Greek letters with iota subscript.
        assert_eq!(f("ᾀ", true), f("ᾈ", true));
        assert_eq!(f("ῳ", true), f("ῼ", true));
        assert_ne!(f(".GIT", false), f(".git", false));
    }
}

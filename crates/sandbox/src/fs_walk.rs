//! Walks a guest's path the way the kernel will, from the descriptor's real
//! directory, one component at a time, and says what it reaches and under
//! which rules.
//!
//! wasmtime-wasi then performs the operation from the directory the walk
//! ended in, on the last name only, never following a link there: another
//! sandbox sharing the tree (a second `capsa run`, another run of `capsa
//! serve`) may change it between the walk and the operation, and the path
//! as text would then lead elsewhere. The walk is at least as strict as wasmtime's own
//! (which refuses absolute paths, absolute link targets and `..` above the
//! descriptor), and every directory it passes through is entered as the
//! object it is, so a link the guest made, a `..` after it, or a directory
//! renamed since the descriptor was opened all land where the kernel lands.

use crate::fs_area::{Areas, Domain, Ident};
use crate::fs_host::{self, DirRef, Handle};

use std::io::ErrorKind;
use std::sync::Arc;

/// Links followed in one walk, as Linux allows (`ELOOP` after 40).
const MAX_LINKS: usize = 40;

/// A directory on the way.
pub enum DirFd {
    Start(Arc<std::fs::File>),
    Owned(Handle),
}

impl DirFd {
    pub fn fd(&self) -> DirRef<'_> {
        match self {
            DirFd::Start(f) => fs_host::dir_ref(f),
            DirFd::Owned(f) => fs_host::handle_ref(f),
        }
    }
}

pub struct Level {
    pub dir: DirFd,
    pub ident: Ident,
    pub domain: Domain,
    /// Directories between the innermost grant and this one.
    pub depth: usize,
}

/// An object the walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub ident: Ident,
    pub is_dir: bool,
    pub is_link: bool,
}

pub struct Resolved {
    /// The directory holding the final name; the object itself when the
    /// path ends in `.` or `..` (then `name` is `None`).
    pub parent: Level,
    pub name: Option<String>,
    /// What is there now, if anything.
    pub target: Option<Found>,
    /// The domain of the target, or of a new object made at that name.
    pub domain: Domain,
}

pub enum Stop {
    /// `..` above the descriptor, an absolute path or an absolute link;
    /// `via_link` when a link's target did it.
    Escape { via_link: bool },
    /// The walk cannot go on (a missing directory, a file used as one):
    /// the operation fails as the kernel fails it (`not_dir`: `ENOTDIR`,
    /// else `ENOENT`) and is not tried. `domain` is that of the name it
    /// stopped at, which the attempt is about.
    Missing {
        at: Level,
        domain: Domain,
        not_dir: bool,
    },
    /// A directory on the way that the guest may not read or go through.
    Closed { at: Level, domain: Domain },
    /// An error the kernel will give too; returned as it is.
    Io(std::io::Error),
}

pub struct Start {
    pub dir: Arc<std::fs::File>,
    pub ident: Ident,
    pub domain: Domain,
    pub depth: usize,
}

/// Resolves `path` from `start`. `follow` says whether a link in the last
/// component is followed (a trailing `/` always follows, as the kernel does).
// A `Stop` is as large as the `Resolved` it stands for, and is returned
// once per walk: boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
pub fn resolve(areas: &Areas, start: Start, path: &str, follow: bool) -> Result<Resolved, Stop> {
    if path.starts_with('/') {
        return Err(Stop::Escape { via_link: false });
    }
    let follow = follow || path.ends_with('/');
    let mut queue: std::collections::VecDeque<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let mut stack: Vec<Level> = vec![Level {
        dir: DirFd::Start(start.dir),
        ident: start.ident,
        domain: start.domain,
        depth: start.depth,
    }];
    let mut links = 0;
    let end_here = |mut stack: Vec<Level>| {
        let top = stack.pop().expect("the walk always has its start");
        Ok(Resolved {
            target: Some(Found {
                ident: top.ident,
                is_dir: true,
                is_link: false,
            }),
            domain: top.domain,
            parent: top,
            name: None,
        })
    };
    while let Some(c) = queue.pop_front() {
        let last = queue.is_empty();
        match c.as_str() {
            "." => {
                if last {
                    return end_here(stack);
                }
            }
            ".." => {
                if stack.len() == 1 {
                    return Err(Stop::Escape {
                        via_link: links > 0,
                    });
                }
                stack.pop();
                if last {
                    return end_here(stack);
                }
            }
            name => {
                let top = stack.last().expect("the walk always has its start");
                // A directory on the way is opened (as a path, not followed)
                // and judged by what was opened; the last name is looked at.
                let mut opened = None;
                let looked = if last {
                    fs_host::look(top.dir.fd(), name)
                } else {
                    fs_host::open_step(top.dir.fd(), name).map(|(fd, f)| {
                        opened = fd;
                        f
                    })
                };
                let f = match looked {
                    Ok(f) => f,
                    Err(e) if e.kind() == ErrorKind::NotFound && last => {
                        let top = stack.pop().expect("the walk always has its start");
                        let domain = areas.enter_new(top.domain, top.ident, name);
                        return Ok(Resolved {
                            parent: top,
                            name: Some(name.to_string()),
                            target: None,
                            domain,
                        });
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) =>
                    {
                        let at = stack.pop().expect("the walk always has its start");
                        let domain = areas.enter_new(at.domain, at.ident, name);
                        let not_dir = e.kind() == ErrorKind::NotADirectory;
                        return Err(Stop::Missing {
                            at,
                            domain,
                            not_dir,
                        });
                    }
                    Err(e) => return Err(Stop::Io(e)),
                };
                if f.is_link && (!last || follow) {
                    // A link the guest may not see is not followed: what
                    // it points to (or a loop) would tell it is there.
                    let domain = areas.enter(top.domain, top.ident, name, f.ident);
                    if areas.may_read(domain).is_err() {
                        let at = stack.pop().expect("the walk always has its start");
                        return Err(Stop::Closed { at, domain });
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Stop::Io(fs_host::loop_error()));
                    }
                    let target =
                        fs_host::read_link(top.dir.fd(), name.as_ref()).map_err(Stop::Io)?;
                    if target.starts_with('/') {
                        return Err(Stop::Escape { via_link: true });
                    }
                    let trailing = last && path.ends_with('/');
                    for part in target.split('/').filter(|p| !p.is_empty()).rev() {
                        queue.push_front(part.to_string());
                    }
                    if trailing || queue.is_empty() {
                        // `l/` and a link to `.`: the directory itself.
                        queue.push_back(".".into());
                    }
                    continue;
                }
                if last {
                    let top = stack.pop().expect("the walk always has its start");
                    let domain = areas.enter(top.domain, top.ident, name, f.ident);
                    return Ok(Resolved {
                        parent: top,
                        name: Some(name.to_string()),
                        target: Some(f),
                        domain,
                    });
                }
                if !f.is_dir {
                    let at = stack.pop().expect("the walk always has its start");
                    let domain = areas.enter(at.domain, at.ident, name, f.ident);
                    return Err(Stop::Missing {
                        at,
                        domain,
                        not_dir: true,
                    });
                }
                let Some(fd) = opened else {
                    return Err(Stop::Io(fs_host::not_dir_error()));
                };
                let depth = if areas.is_grant_root(f.ident) {
                    0
                } else {
                    top.depth + 1
                };
                let domain = areas.enter(top.domain, top.ident, name, f.ident);
                // A directory above a grant, under no rule, is gone through
                // on the way to it: what lies beside the way stops the
                // walk at its own door.
                let way = areas.is_way(domain, f.ident);
                if areas.may_read(domain).is_err() && !way {
                    // Going through a directory the guest may not read
                    // would tell what it holds (`secret/x/..` works only
                    // if `x` is there): the walk stops at its door.
                    let at = stack.pop().expect("the walk always has its start");
                    return Err(Stop::Closed { at, domain });
                }
                stack.push(Level {
                    dir: DirFd::Owned(fd),
                    ident: f.ident,
                    domain,
                    depth,
                });
            }
        }
    }
    end_here(stack)
}

/// How many directories `dir` is below the innermost grant that holds it,
/// counted on the host now by walking `..` up to a grant's root.
pub fn depth_now(areas: &Areas, dir: DirRef<'_>) -> std::io::Result<usize> {
    let mut here: Ident = fs_host::ident(dir)?;
    let mut fd: Option<Handle> = None;
    for depth in 0..4096 {
        if areas.is_grant_root(here) {
            return Ok(depth);
        }
        let up = fs_host::parent(fd.as_ref().map_or(dir, fs_host::handle_ref))?;
        let above = fs_host::ident(fs_host::handle_ref(&up))?;
        if above == here {
            break;
        }
        here = above;
        fd = Some(up);
    }
    // No grant above it: judged as a grant's root, the strictest.
    Ok(0)
}

/// How much of a tree [`escaping_link`] reads.
#[derive(Debug, Clone, Copy)]
pub struct TreeLimits {
    pub depth: usize,
    pub entries: usize,
}

impl TreeLimits {
    /// Before a move: a tree larger than this is not moved upwards.
    pub const BEFORE_A_MOVE: TreeLimits = TreeLimits {
        depth: 256,
        entries: 100_000,
    };
    /// After it: only another sandbox racing the move can have made the
    /// tree larger; past this it is moved back.
    pub const AFTER_A_MOVE: TreeLimits = TreeLimits {
        depth: 512,
        entries: 1_000_000,
    };
}

/// A link in the tree of the directory `name` in `dir` that points outside
/// its grant with that directory `after` levels below the grant's root,
/// and did not at `before` (one that already did, such as an absolute link
/// the host made, is no concern of a move): the directory holding the
/// link, its name, and its path from `name` (for messages). A tree larger
/// than `limits` is an error; a directory that is gone (or is no longer
/// one) when it is reached is passed over.
pub fn escaping_link(
    dir: DirRef<'_>,
    name: &str,
    before: usize,
    after: usize,
    limits: TreeLimits,
) -> std::io::Result<Option<(Handle, std::ffi::OsString, String)>> {
    let too_big = || std::io::Error::other("the tree is too large to check for links");
    let mut seen = 0;
    // Each open directory on the way down, with the directories in it
    // still to read.
    let mut stack: Vec<(Handle, Vec<std::ffi::OsString>, usize, String)> = Vec::new();
    let mut next = Some((
        fs_host::open_listing(dir, name.as_ref())?,
        0,
        name.to_string(),
    ));
    loop {
        if let Some((h, d, path)) = next.take() {
            if d > limits.depth {
                return Err(too_big());
            }
            let mut subdirs = Vec::new();
            for (n, kind) in fs_host::entries(&h)? {
                seen += 1;
                if seen > limits.entries {
                    return Err(too_big());
                }
                match kind {
                    fs_host::Entry::Dir => subdirs.push(n),
                    fs_host::Entry::Link => {
                        let target = fs_host::read_link(fs_host::handle_ref(&h), &n)?;
                        if link_leaves_grant(&target, after + d)
                            && !link_leaves_grant(&target, before + d)
                        {
                            let shown = format!("{path}/{}", n.to_string_lossy());
                            return Ok(Some((h, n, shown)));
                        }
                    }
                    fs_host::Entry::Other => {}
                }
            }
            stack.push((h, subdirs, d, path));
        }
        let Some((h, subdirs, d, path)) = stack.last_mut() else {
            return Ok(None);
        };
        match subdirs.pop() {
            Some(n) => match fs_host::open_listing(fs_host::handle_ref(h), &n) {
                Ok(child) => {
                    let shown = format!("{path}/{}", n.to_string_lossy());
                    next = Some((child, *d + 1, shown));
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
                        || e.raw_os_error() == fs_host::loop_error().raw_os_error() => {}
                Err(e) => return Err(e),
            },
            None => {
                stack.pop();
            }
        }
    }
}

/// Would a link with this target, made in a directory `depth` levels below
/// its grant, point outside the grant, for capsa or for any program that
/// follows it on the host later? Only leading `..` are allowed, as many as
/// there are levels to climb: a `..` after a name would climb from wherever
/// that name leads (`x -> .` then `x/..` is the grant's parent).
pub fn link_leaves_grant(target: &str, depth: usize) -> bool {
    link_leaves_grant_on(target, depth, cfg!(windows))
}

/// [`link_leaves_grant`]; on Windows (`windows`) a target holding `\` or
/// `:` is refused too: Windows reads `..\..\x` as three names and `C:x` as
/// a drive, where this reads one name.
fn link_leaves_grant_on(target: &str, depth: usize, windows: bool) -> bool {
    if target.starts_with('/') || target.is_empty() {
        return true;
    }
    if windows && target.contains(['\\', ':']) {
        return true;
    }
    let mut up = 0;
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => return true,
            ".." => up += 1,
            _ => named = true,
        }
    }
    up > depth
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_targets() {
        let cases: &[(&str, usize, bool)] = &[
            ("a/b", 0, false),
            ("../x", 0, true),
            ("../x", 1, false),
            ("a/../x", 1, true),
            ("../../a/b", 2, false),
            ("../../../a", 2, true),
            ("/etc/passwd", 5, true),
            ("", 0, true),
            ("./.././x", 1, false),
        ];
        assert!(super::link_leaves_grant_on(r"..\..\x", 5, true));
        assert!(super::link_leaves_grant_on("C:x", 5, true));
        assert!(!super::link_leaves_grant_on(r"a\b", 0, false));
        for (t, depth, leaves) in cases {
            assert_eq!(
                super::link_leaves_grant(t, *depth),
                *leaves,
                "{t} at {depth}"
            );
        }
    }
}

//! `wasi:filesystem` as the guest sees it: wasmtime-wasi's implementation,
//! with capsa's checks in front of every path operation.
//!
//! wasmtime-wasi confines each descriptor to its preopened directory and
//! enforces read-only preopens. What it lacks, and this adds: single-file
//! grants (the file's directory is preopened, but only the granted names are
//! reachable), `--deny-read`/`--deny-write` inside a grant, and a report of
//! every refusal the host sees, with the flag that would allow it.

use crate::Guard;
use crate::fs_area::{Areas, Base, Domain, Ident, Refusal};
use crate::fs_host;
use crate::fs_walk::{self, DirFd, Resolved, Start, Stop};
use crate::report::Kind;
use capsa_policy::{FsOp, Verdict, join_guest_checked, strip_guest_prefix};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{
    Descriptor as HostDescriptorObj, Dir as HostDir, File as HostFile, WasiFilesystemCtxView,
};
use wasmtime_wasi::p2::FsResult;
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode as FsErrorCode;
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{
    self as fs, Descriptor, DescriptorFlags, DirectoryEntryStream, ErrorCode, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::{FsPerms, OpenMode};

/// A directory handed to the guest at start.
#[derive(Debug, Clone)]
pub struct Preopen {
    pub host: PathBuf,
    /// Where it is in the guest, always absolute.
    pub guest: String,
    /// The preopen's name as the guest is told it: `guest`, or the relative
    /// name a grant gave (`HOST::name`).
    pub name: String,
    pub writable: bool,
    /// `Some`: only these names in the directory are granted (file grants).
    pub only: Option<Vec<String>>,
    /// The grant's own guest path, for messages: differs from `guest` for
    /// the alias of a grant below the working directory.
    pub shown: String,
    /// The guarded root: `/` in the guest when nothing is granted there,
    /// an empty directory the host has already removed. Every path that
    /// reaches it lies outside every grant; it is refused and reported.
    pub root_guard: bool,
    /// The working directory, not granted, showing the grants it holds
    /// (see `cwd_view` in lib.rs): its paths are shown relative to it, as
    /// the user types them, and a name in it that is outside every grant
    /// is not there for the program, as at the guarded root.
    pub workdir: bool,
}

impl Preopen {
    /// A path in this preopen as the user knows it.
    fn show(&self, guest: &str) -> String {
        match strip_guest_prefix(guest, &self.guest) {
            Some("") if self.workdir => ".".into(),
            Some(rel) if self.workdir => rel.to_string(),
            Some("") => self.shown.clone(),
            Some(rel) => format!("{}/{rel}", self.shown.trim_end_matches('/')),
            None => guest.to_string(),
        }
    }
}

/// What each open descriptor is: the object, its domain, and its guest
/// path (for messages only: decisions are made on the object).
#[derive(Default)]
pub struct FsTracker {
    descriptors: HashMap<u32, Tracked>,
    /// Directory listings of file-grant directories, with the names they may show.
    filtered_streams: HashMap<u32, usize>,
    /// Listings of directories on the way to a grant, with the directory:
    /// each entry is looked at there, and only the way and the grant it
    /// leads to are shown.
    way_streams: HashMap<u32, Arc<std::fs::File>>,
}

struct Tracked {
    guest: String,
    preopen: usize,
    ident: Ident,
    domain: Domain,
    depth: usize,
}

pub struct GuardedFs<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub tracker: &'a mut FsTracker,
    pub guard: &'a Guard,
}

pub struct GuardedFsData;

impl HasData for GuardedFsData {
    type Data<'a> = GuardedFs<'a>;
}

/// What an operation needs of the object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    /// Change the object (write, truncate, times), or create it.
    Write,
    /// Read and change it: the source of a rename or a hard link.
    ReadWrite,
    /// Only know it is there: its directory must be readable.
    Look,
    /// Change the name: remove it, rename onto it, make it. The directory
    /// changes too, and a pinned directory keeps its name.
    Name,
}

impl Need {
    fn op(self) -> FsOp {
        match self {
            Need::Read | Need::Look => FsOp::Read,
            _ => FsOp::Write,
        }
    }
}

/// A path operation that passed capsa's checks.
struct Checked {
    r: Resolved,
    /// The path as the user knows it.
    shown: String,
    /// The guest path, folded as text: for messages and later ones.
    guest: String,
    preopen: usize,
    need: Need,
    verb: &'static str,
}

fn not_permitted<T>() -> FsResult<T> {
    Err(FsErrorCode::NotPermitted.into())
}

/// Where a checked operation is done: the directory the walk ended in, as
/// the object the walk opened, and the one name in it, a link there never
/// followed. Never the guest's path again: another sandbox writing the same
/// tree could re-point a name on the way between the walk and the
/// operation.
struct Anchor {
    dir: Resource<Descriptor>,
    /// A descriptor made for this operation, removed after it.
    made: bool,
    name: String,
}

/// Every operation on an anchor names one entry: links on the way were
/// followed by the walk, and one at the end is the entry itself.
fn no_follow() -> PathFlags {
    PathFlags::empty()
}

use crate::fs_host::ident_of_file;

impl GuardedFs<'_> {
    fn areas(&self) -> &Areas {
        &self.guard.areas
    }

    /// Counts `n` bytes against the run's file write limit
    /// (`--max-write`); past it, nothing is written and the run ends.
    fn spend(&self, n: u64) -> FsResult<()> {
        if self.guard.written.spend(n) {
            Ok(())
        } else {
            Err(wasmtime_wasi::p2::FsError::trap(wasmtime::format_err!(
                "file write limit reached"
            )))
        }
    }

    /// Runs `make`, which makes one name, counted as
    /// [`capsa_policy::Limits::ENTRY_COST`] bytes (given back if it fails).
    fn making<T>(&mut self, make: impl FnOnce(&mut Self) -> FsResult<T>) -> FsResult<T> {
        self.spend(capsa_policy::Limits::ENTRY_COST)?;
        let made = make(self);
        if made.is_err() {
            self.guard
                .written
                .give_back(capsa_policy::Limits::ENTRY_COST);
        }
        made
    }

    /// Puts `stream` back in the table counting what it writes.
    fn counted(
        &mut self,
        stream: Resource<streams::OutputStream>,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let inner = self.inner.table.delete(stream)?;
        let counted: wasmtime_wasi::p2::DynOutputStream = Box::new(
            crate::fs_stream::CountedWrites::new(inner, self.guard.written.clone()),
        );
        Ok(self.inner.table.push(counted)?)
    }

    fn deny(
        &self,
        verb: &str,
        target: &str,
        reason: String,
        rule: Option<String>,
        hint: Option<String>,
    ) {
        let verdict = Verdict::Deny { rule, reason, hint };
        self.guard
            .reporter
            .verdict(Kind::Fs, verb, target, &verdict);
        // Python's `tempfile` (and many programs) try a new name in `/tmp`,
        // then `/var/tmp` and `/usr/tmp`; the hint names only the one name.
        let makes = matches!(verb, "read and write" | "write to" | "create directory");
        let in_tmp = target
            .rsplit_once('/')
            .is_some_and(|(dir, _)| matches!(dir, "/tmp" | "/var/tmp" | "/usr/tmp"));
        if makes && in_tmp && self.guard.suggest_tmp.swap(false, Ordering::Relaxed) {
            self.guard.reporter.note(
                "for temporary files, --tmp gives the program a private folder (its TMPDIR), removed when the run ends",
            );
        }
    }

    /// The host path, as a flag would name it, of the guest path `guest` in `pre`.
    /// `None` when the name holds `::` (or a `,`): pasted, such a hint would
    /// grant another path than the one tried.
    fn flag_path(&self, pre: &Preopen, guest: &str) -> Option<String> {
        let unsafe_in_flag = |p: &str| p.contains("::") || p.contains(',');
        let Some(rel) = strip_guest_prefix(guest, &pre.guest) else {
            // Never `/` itself: granting the whole machine is not a narrow
            // grant.
            return capsa_policy::default_host(guest)
                .filter(|h| !unsafe_in_flag(h) && h != "/" && !h.is_empty());
        };
        // From the working directory, as capsa takes a relative flag (so
        // only the name typed need be fit for one). `~` is a name a shell
        // would have expanded: nothing to grant by it.
        if pre.workdir {
            return match rel {
                r if unsafe_in_flag(r) => None,
                "" => Some(".".into()),
                r if r.starts_with('~') => None,
                r => Some(r.to_string()),
            };
        }
        if unsafe_in_flag(guest) {
            return None;
        }
        let host = rel
            .split('/')
            .filter(|c| !c.is_empty())
            .fold(pre.host.clone(), |h, c| h.join(c));
        let shown = pre.show(guest);
        // Granted at its own name: the host path, as the user types it (on
        // Windows `C:\x`, never the guest's `/c/x`).
        Some(
            if capsa_policy::default_guest(&host).as_deref() == Some(shown.as_str()) {
                host.display().to_string()
            } else {
                format!("{}::{shown}", host.display())
            },
        )
    }

    /// Reports why `need` is refused on `shown` and returns the error.
    fn refuse<T>(
        &self,
        why: Refusal,
        parent: Option<Domain>,
        c: (&str, &str, usize, Need),
        exists: bool,
    ) -> FsResult<T> {
        self.refuse_as(why, parent, c, exists, None)
    }

    /// [`Self::refuse`]; `climbed`: the path as asked for, unfolded, when
    /// it holds `..`, so that `guest`, its text folded, need not be where
    /// the walk went (`nosub/../..` stops at `nosub`): the line names it as
    /// asked for, with no hint, which would name a place the program chose
    /// (`/` itself, by enough `..`).
    fn refuse_as<T>(
        &self,
        why: Refusal,
        parent: Option<Domain>,
        c: (&str, &str, usize, Need),
        exists: bool,
        climbed: Option<String>,
    ) -> FsResult<T> {
        let (verb, guest, preopen, need) = c;
        let pre = &self.guard.preopens[preopen];
        let hinted = |h: Option<String>| h.filter(|_| climbed.is_none());
        let shown = climbed.clone().unwrap_or_else(|| pre.show(guest));
        // A new name is granted by its directory, and so is a name removed
        // or renamed there; an existing one by itself. In a directory under
        // no grant (one the walk went through on the way to a grant), the
        // name itself either way: which of the two it was would tell the
        // program whether the name is there.
        let beyond = matches!(why, Refusal::Outside)
            && matches!(parent.map(|d| d.base), Some(Base::Outside));
        let hint_target = if exists || need == Need::Read || beyond {
            guest.to_string()
        } else {
            guest
                .rsplit_once('/')
                .map(|(d, _)| if d.is_empty() { "/" } else { d })
                .unwrap_or(guest)
                .to_string()
        };
        let why = match (why, parent.map(|d| d.base)) {
            (Refusal::Outside, Some(Base::Holder(p))) => Refusal::OnlyFiles(p),
            (w, _) => w,
        };
        // In the working directory's view a name outside every grant is
        // not there, as at the guarded root it stands for: reading it, or
        // looking at it, fails as a missing file would (`FileNotFoundError`
        // in Python), where a change is refused as not permitted; and a
        // name of code that has no file is not reported.
        let absent = pre.workdir
            && matches!(why, Refusal::OnlyFiles(_) | Refusal::Outside)
            && matches!(need, Need::Read | Need::Look);
        if absent && names_code_without_a_file(&shown) {
            return Err(FsErrorCode::NoEntry.into());
        }
        match why {
            Refusal::Denied(j) => {
                let rule = &self.areas().denies[j];
                let flag = (!rule.own).then(|| {
                    let name = if rule.all {
                        "--deny-read"
                    } else {
                        "--deny-write"
                    };
                    format!("{name}={}", rule.host.display())
                });
                self.deny(verb, &shown, rule.why.clone(), flag, None);
            }
            Refusal::ReadOnly(g) => {
                let grant = &self.guard.policy.fs.grants[g];
                let reason = format!("{} is granted read-only", grant.guest);
                let hint = self
                    .flag_path(pre, &hint_target)
                    .map(|p| format!("--allow-write={p}"));
                self.deny(verb, &shown, reason, Some(grant.flag()), hinted(hint));
            }
            Refusal::OnlyFiles(p) => {
                let holder = &self.guard.preopens[p];
                let names = holder.only.as_deref().unwrap_or_default();
                let listed = match names.len() {
                    0..=4 => names.join(", "),
                    n => format!("{} and {} more", names[..3].join(", "), n - 3),
                };
                let are = if names.len() == 1 { "is" } else { "are" };
                let reason = if holder.workdir && names.is_empty() {
                    "nothing is granted in the working directory".to_string()
                } else if holder.workdir {
                    format!("only {listed} {are} granted in the working directory")
                } else {
                    format!("only {listed} {are} granted in {}", holder.shown)
                };
                let hint = self
                    .flag_path(pre, guest)
                    .map(|p| format!("{}={p}", need.op().flag()));
                self.deny(verb, &shown, reason, None, hinted(hint));
            }
            Refusal::Outside => {
                let hint = self
                    .flag_path(pre, &hint_target)
                    .map(|p| format!("{}={p}", need.op().flag()));
                self.deny(
                    verb,
                    &shown,
                    "outside every granted path".into(),
                    None,
                    hinted(hint),
                );
            }
        }
        if absent {
            return Err(FsErrorCode::NoEntry.into());
        }
        not_permitted()
    }

    /// Refuses a path that reached the guarded root: it lies outside every
    /// grant. The guest gets what it got before capsa saw such paths, "no
    /// such file"; the user gets the line.
    fn refuse_outside_root<T>(&self, verb: &str, guest: &str, need: Need) -> FsResult<T> {
        // Opening `/` is how a program lists it.
        let verb = if guest == "/" && verb == "read" {
            "list"
        } else {
            verb
        };
        let (shown, relative) = self.root_path_as_typed(guest);
        if names_code_without_a_file(&shown) {
            return Err(FsErrorCode::NoEntry.into());
        }
        // The hint names what was tried, or the directory where a name is
        // made, removed or renamed; never `/` itself (granting the whole machine
        // is not a narrow grant). Nothing on the host is looked at for it:
        // a lookup of a name the guest chose would carry that name out (to
        // a network file system, an automounter) and could block the run.
        let target = match need {
            // Writing may also make a new file, whose directory would have to
            // be granted; but nothing is looked up to know, and a program
            // must not be able to steer a hint to more than it tried.
            Need::Read | Need::Look | Need::Write | Need::ReadWrite => Some(shown.as_str()),
            Need::Name => match shown.rsplit_once('/') {
                Some(("", _)) => None,
                Some((d, _)) => Some(d),
                None => Some("."),
            },
        };
        // A relative name reaches `/` because the working directory is not
        // granted: it is granted as the same name at `/` (a directory below
        // the working directory is mounted there too, but a single file or
        // the directory itself is not). `~` is a name a shell would have
        // expanded: there is nothing to grant by it.
        let flag = need.op().flag();
        let hint = target
            .filter(|t| *t != "/" && !t.contains("::") && !t.contains(','))
            .filter(|t| !t.starts_with('~'))
            .and_then(|t| match (relative, t) {
                (false, t) => capsa_policy::default_host(t).map(|h| format!("{flag}={h}")),
                (true, ".") => Some(format!("{flag}=.::/")),
                (true, t) => Some(format!("{flag}={t}::/{t}")),
            });
        // wasi-libc (Rust, C) takes a relative path from `/`, whatever the
        // working directory: granting it does not make `in.txt` reach it.
        let reason = if relative && self.cwd_granted() {
            "the program looks a relative path up from /, not from the granted working directory"
        } else if relative && self.granted_from_cwd(&shown) {
            // `--allow-read=in.txt`: granted, but where the program does
            // not look.
            "the program looks a relative path up from /, not from the working directory, where it is granted"
        } else {
            "outside every granted path"
        };
        self.deny(verb, &shown, reason.to_string(), None, hint);
        Err(FsErrorCode::NoEntry.into())
    }

    /// A directory on the way to a grant (`/home` and `/home/me` for a grant
    /// of `/home/me/data`), reached through the guarded root: it is there
    /// for the program as the grant's own path says, so `stat` finds a
    /// directory, with nothing of the host's (no size, no times), and no
    /// denial is reported. (Python's `os.path.realpath` looks at each.)
    /// Through the guarded root, opening or listing it is still refused;
    /// below the working directory's view it opens to list the way (see
    /// `read_directory`). Returns the path's parts.
    fn on_the_way_to_a_grant(&self, fd: &Resource<Descriptor>, path: &str) -> Option<Vec<String>> {
        let t = self.tracker.descriptors.get(&fd.rep())?;
        let pre = &self.guard.preopens[t.preopen];
        if !pre.root_guard && !pre.workdir {
            return None;
        }
        let (guest, _) = join_guest_checked(&t.guest, path);
        let parts = |p: &str| -> Option<Vec<String>> {
            let mut v = Vec::new();
            for c in p.split('/') {
                match c {
                    "" | "." => {}
                    ".." => return None,
                    c => v.push(c.to_string()),
                }
            }
            Some(v)
        };
        let ours = parts(&guest)?;
        let below = self
            .guard
            .preopens
            .iter()
            .filter(|p| !p.root_guard)
            .any(|p| parts(&p.guest).is_some_and(|g| g.len() > ours.len() && g.starts_with(&ours)));
        below.then_some(ours)
    }

    /// Whether the working directory lies in a directory grant.
    fn cwd_granted(&self) -> bool {
        let Some(cwd) = self.guard.cwd.as_deref().and_then(|c| c.to_str()) else {
            return false;
        };
        self.guard.preopens.iter().any(|p| {
            !p.root_guard && p.only.is_none() && strip_guest_prefix(cwd, &p.guest).is_some()
        })
    }

    /// Whether the relative path `rel`, taken from the working directory,
    /// lies in a grant (a single file's included).
    fn granted_from_cwd(&self, rel: &str) -> bool {
        let Some(cwd) = self.guard.cwd.as_deref().and_then(|c| c.to_str()) else {
            return false;
        };
        let full = format!("{}/{rel}", cwd.trim_end_matches('/'));
        self.guard.preopens.iter().any(|p| {
            !p.root_guard
                && strip_guest_prefix(&full, &p.guest).is_some_and(|rest| match &p.only {
                    None => true,
                    Some(names) => names.iter().any(|n| {
                        strip_guest_prefix(&format!("/{rest}"), &format!("/{n}")).is_some()
                    }),
                })
        })
    }

    /// The guarded root's path `guest` as the user typed it, and whether it
    /// was relative.
    ///
    /// A program whose working directory is not granted resolves a relative
    /// name against `/` (grants below the working directory are mounted
    /// there): `/data.csv` was `data.csv` when the host's `/` has no
    /// `data.csv` (its entries are read once, when first needed).
    fn root_path_as_typed(&self, guest: &str) -> (String, bool) {
        let rel = guest.trim_start_matches('/');
        let first = rel.split('/').next().unwrap_or_default();
        let relative = !rel.is_empty()
            && self
                .guard
                .cwd
                .as_deref()
                .is_some_and(|c| c != std::path::Path::new("/"))
            && !self
                .guard
                .root_names
                .get_or_init(host_root_names)
                .contains(first);
        if relative {
            (rel.to_string(), true)
        } else {
            (guest.to_string(), false)
        }
    }

    /// Decides whether `need` may be done to what `r` found. A refusal
    /// says whether it was the directory that may not change (a name
    /// removed, renamed or made there), which is then what a hint names.
    fn decide(&self, r: &Resolved, need: Need) -> Result<(), (Refusal, Option<Domain>, bool)> {
        let a = self.areas();
        let parent = Some(r.parent.domain);
        let on = |res: Result<(), Refusal>| res.map_err(|w| (w, parent, false));
        match need {
            Need::Read => on(a.may_read(r.domain)),
            Need::Look if r.name.is_some() && r.target.is_some() => {
                // A neighbour of a granted file is not shown in a listing.
                match (r.parent.domain.base, a.may_read(r.domain)) {
                    (Base::Holder(_), Err(w)) => Err((w, parent, false)),
                    // In a directory on the way to a grant, what its
                    // listing shows.
                    (Base::Outside, _)
                        if a.is_way(r.parent.domain, r.parent.ident)
                            && r.target.is_some_and(|t| a.on_the_way(t.ident)) =>
                    {
                        Ok(())
                    }
                    _ => on(a.may_read(r.parent.domain)),
                }
            }
            Need::Look => on(a.may_read(r.domain)),
            Need::Write => on(a.may_write(r.domain)),
            Need::ReadWrite => {
                on(a.may_read(r.domain))?;
                on(a.may_write(r.domain))
            }
            Need::Name => {
                if r.name.is_some() {
                    a.may_write(r.parent.domain)
                        .map_err(|w| (w, parent, true))?;
                }
                on(a.may_write(r.domain))?;
                Ok(())
            }
        }
    }

    /// Walks `path` from the descriptor `fd` and checks `need` on what it
    /// reaches. A descriptor capsa did not see opened is refused.
    fn check(
        &mut self,
        fd: &Resource<Descriptor>,
        path: &str,
        follow: bool,
        need: Need,
        verb: &'static str,
    ) -> FsResult<Checked> {
        self.check_for(fd, path, follow, need, verb, false)
    }

    /// [`Self::check`], for an open of a directory to be listed (`lists`),
    /// which also reaches a directory on the way to a grant: its listing
    /// shows only the way (see `read_directory`), and it stats as a bare
    /// directory.
    fn check_for(
        &mut self,
        fd: &Resource<Descriptor>,
        path: &str,
        follow: bool,
        need: Need,
        verb: &'static str,
        lists: bool,
    ) -> FsResult<Checked> {
        // A limit is ending the process (see `ENDING`).
        if crate::ENDING.load(Ordering::SeqCst) {
            return Err(FsErrorCode::Io.into());
        }
        let Some(t) = self.tracker.descriptors.get(&fd.rep()) else {
            return not_permitted();
        };
        let preopen = t.preopen;
        let pre = &self.guard.preopens[preopen];
        let (guest, _) = join_guest_checked(&t.guest, path);
        if pre.root_guard {
            return self.refuse_outside_root(verb, &guest, need);
        }
        // A path that holds `..` is named as asked for, from where it was
        // asked (the working directory's view: as typed).
        let climbed = (!path.starts_with('/') && path.split('/').any(|c| c == "..")).then(|| {
            match pre.show(&t.guest) {
                here if here == "." => path.to_string(),
                here => format!("{}/{path}", here.trim_end_matches('/')),
            }
        });
        let dir = match self.inner.table.get(fd)? {
            HostDescriptorObj::Dir(d) => d.dir.clone(),
            HostDescriptorObj::File(_) => return Err(FsErrorCode::NotDirectory.into()),
        };
        let start = Start {
            dir,
            ident: t.ident,
            domain: t.domain,
            depth: t.depth,
        };
        let r = match fs_walk::resolve(self.areas(), start, path, follow) {
            Ok(r) => r,
            Err(Stop::Escape { via_link }) => {
                // An absolute path asked for from a directory is named as
                // it was asked for.
                let shown = if path.starts_with('/') {
                    guest.clone()
                } else {
                    climbed.clone().unwrap_or_else(|| pre.show(&guest))
                };
                // No hint: a grant of where `..` leads (any ancestor of a
                // grant, as the program chooses) would not serve this path
                // anyway while the grant it left is a preopen of its own,
                // nor a path from a descriptor below a grant's root.
                let below = strip_guest_prefix(&t.guest, &pre.guest).unwrap_or("");
                let leaves = climbs_out(&format!("{below}/{path}"));
                let reason = match (via_link, leaves) {
                    (true, _) => format!("a link leads outside {}", pre.shown),
                    // Zig's standard library opens an absolute path from
                    // the first preopen, as from a working directory.
                    (false, _) if path.starts_with('/') => format!(
                        "an absolute path, asked for from {}: WASI looks a path up only below the directory it starts from",
                        match pre.show(&t.guest) {
                            dot if dot == "." => "the working directory".to_string(),
                            dir => format!("the directory {dir}"),
                        }
                    ),
                    (false, true) if pre.workdir => {
                        "the path leaves the working directory by `..`".into()
                    }
                    (false, true) => format!(
                        "the path leaves the granted directory {} by `..`",
                        pre.shown
                    ),
                    (false, false) => "`..` climbs above the directory the path starts from, which no grant allows: each descriptor is a capability of its own".into(),
                };
                self.deny(verb, &shown, reason, None, None);
                return not_permitted();
            }
            Err(Stop::Missing {
                at,
                domain,
                not_dir,
            }) => {
                // The kernel would fail this; refuse first where even trying
                // is not granted, so a failure never tells what exists there.
                // It is not tried: the path as text could lead elsewhere by
                // then (another sandbox making the missing name a link).
                let a = self.areas();
                let res = match need {
                    Need::Read | Need::Look => a.may_read(domain),
                    _ => a.may_read(domain).and(a.may_write(domain)),
                };
                if let Err(w) = res {
                    let c = (verb, guest.as_str(), preopen, need);
                    return self.refuse_as(w, Some(at.domain), c, false, climbed);
                }
                let code = if not_dir {
                    FsErrorCode::NotDirectory
                } else {
                    FsErrorCode::NoEntry
                };
                return Err(code.into());
            }
            Err(Stop::Closed { at, domain }) => {
                let w = match self.areas().may_read(domain) {
                    Err(w) => w,
                    Ok(()) => Refusal::Outside,
                };
                let c = (verb, guest.as_str(), preopen, need);
                return self.refuse_as(w, Some(at.domain), c, true, climbed);
            }
            Err(Stop::Io(e)) => return Err(e.into()),
        };
        let way = lists
            && need == Need::Read
            && r.target
                .is_some_and(|t| t.is_dir && self.areas().is_way(r.domain, t.ident));
        let decided = if way { Ok(()) } else { self.decide(&r, need) };
        if let Err((w, parent, directory)) = decided {
            // What is renamed leaves its directory, which must change too:
            // granting the directory allows both.
            let directory = directory || verb == "rename";
            let exists = r.target.is_some() && !directory;
            let c = (verb, guest.as_str(), preopen, need);
            return self.refuse_as(w, parent, c, exists, climbed);
        }
        // `file/` names no directory, as the kernel says: the operation
        // itself names only `file`.
        if path.ends_with('/') && r.target.is_some_and(|t| !t.is_dir) {
            return Err(FsErrorCode::NotDirectory.into());
        }
        // A directory is never made over something that exists: the answer
        // is that it exists (`os.makedirs` of a granted folder expects it).
        if verb == "create directory" && r.target.is_some() {
            return Err(FsErrorCode::Exist.into());
        }
        if need == Need::Name
            && let Some(t) = r.target
            && let Some(what) = self.areas().pinned(t.ident)
        {
            let shown = pre.show(&guest);
            let reason = format!("it holds {what}, which must keep its name");
            self.deny(verb, &shown, reason, None, None);
            return not_permitted();
        }
        if self.guard.reporter.audits() {
            let rule = match r.domain.base {
                Base::Grant(g) => self.guard.policy.fs.grants[g].flag(),
                Base::Outside if way => "a directory on the way to a grant".into(),
                Base::Holder(p) if self.guard.preopens[p].workdir => {
                    "the working directory, showing only its grants".into()
                }
                _ => format!("a granted file is in {}", pre.shown),
            };
            let shown = pre.show(&guest);
            self.guard
                .reporter
                .verdict(Kind::Fs, verb, &shown, &Verdict::Allow { rule });
        }
        Ok(Checked {
            r,
            shown: pre.show(&guest),
            guest,
            preopen,
            need,
            verb,
        })
    }

    /// Refuses moving or linking `src` to `dst` when it would change which
    /// rules hold for it: out of a read-only or denied area, or into one.
    fn same_domain(&self, src: &Checked, dst: &Checked) -> FsResult<()> {
        let (s, d) = (&src.r, &dst.r);
        let Some(obj) = s.target else {
            return Ok(());
        };
        let there = match &d.name {
            Some(name) => self
                .areas()
                .enter(d.parent.domain, d.parent.ident, name, obj.ident),
            None => d.domain,
        };
        // Between two writable grants with no denial in force, the answer
        // is the system's for two file systems: EXDEV, which programs meet
        // by copying (each copy checked as usual). Nothing moves either way.
        let plain = |d: Domain| {
            d.deny_all.is_none()
                && d.deny_write.is_none()
                && matches!(d.base, Base::Grant(_))
                && self.areas().may_write(d).is_ok()
        };
        if there != s.domain && s.name.is_some() && plain(there) && plain(s.domain) {
            return Err(FsErrorCode::CrossDevice.into());
        }
        if there != s.domain || (obj.is_dir && s.name.is_none()) {
            let reason = "it would move between areas with different grants".to_string();
            self.deny(src.verb, &src.shown, reason, None, None);
            return not_permitted();
        }
        Ok(())
    }

    /// The checks of [`Need::Name`] on a source already checked for
    /// reading and writing: its directory changes, and a pinned object
    /// keeps its name.
    fn also_name(&self, c: Checked) -> FsResult<Checked> {
        let r = &c.r;
        if r.name.is_some()
            && let Err(w) = self.areas().may_write(r.parent.domain)
        {
            // The directory may not change: it is what a hint names.
            return self.refuse(w, None, (c.verb, &c.guest, c.preopen, Need::Name), false);
        }
        let pinned = r.target.and_then(|t| self.areas().pinned(t.ident));
        if r.name.is_none() || pinned.is_some() {
            let reason = match pinned {
                Some(what) => format!("it holds {what}, which must keep its name"),
                None => "a directory cannot be renamed through its own path".into(),
            };
            self.deny(c.verb, &c.shown, reason, None, None);
            return not_permitted();
        }
        Ok(c)
    }

    /// What a link that is about to be moved points to.
    fn link_target(&self, c: &Checked) -> FsResult<Option<String>> {
        let r = &c.r;
        match (&r.target, &r.name) {
            (Some(t), Some(name)) if t.is_link => {
                let target = crate::fs_host::read_link(r.parent.dir.fd(), name.as_ref())?;
                Ok(Some(target))
            }
            _ => Ok(None),
        }
    }

    /// Refuses a link whose target climbs out of the grant where it is made.
    fn link_stays_inside(&self, dst: &Checked, target: &str) -> FsResult<()> {
        let d = &dst.r;
        // The depth recorded when a descriptor was opened goes stale when
        // its directory is moved; the link is judged where it is now.
        let depth = fs_walk::depth_now(self.areas(), d.parent.dir.fd())?;
        if fs_walk::link_leaves_grant(target, depth) {
            let pre = &self.guard.preopens[dst.preopen];
            let reason = format!("the link would point outside {}", pre.shown);
            self.deny(dst.verb, &dst.shown, reason, None, None);
            return not_permitted();
        }
        Ok(())
    }

    /// The anchor of a checked operation on a path from the descriptor `fd`.
    fn anchor(&mut self, fd: &Resource<Descriptor>, c: &Checked) -> FsResult<Anchor> {
        let name = c.r.name.clone().unwrap_or_else(|| ".".into());
        let h = match &c.r.parent.dir {
            // The walk ended where it began: the guest's own descriptor.
            DirFd::Start(_) => {
                return Ok(Anchor {
                    dir: borrow(fd),
                    made: false,
                    name,
                });
            }
            DirFd::Owned(h) => h,
        };
        // With the rights of the descriptor the path started from, which
        // every descriptor opened below it has too.
        let (perms, open_mode) = match self.inner.table.get(fd)? {
            HostDescriptorObj::Dir(d) => (d.perms, d.open_mode),
            HostDescriptorObj::File(_) => return Err(FsErrorCode::NotDirectory.into()),
        };
        let file = crate::fs_host::handle_file(h)?;
        let dir = HostDescriptorObj::Dir(HostDir::new(file, perms, open_mode, true));
        Ok(Anchor {
            dir: self.inner.table.push(dir)?,
            made: true,
            name,
        })
    }

    /// Does `op` on the anchor of `c` (from `fd`), and reports a refusal
    /// wasmtime-wasi makes.
    fn anchored<T>(
        &mut self,
        fd: &Resource<Descriptor>,
        c: &Checked,
        op: impl FnOnce(&mut WasiFilesystemCtxView<'_>, Resource<Descriptor>, String) -> FsResult<T>,
    ) -> FsResult<T> {
        let a = self.anchor(fd, c)?;
        let r = op(&mut self.inner, borrow(&a.dir), a.name.clone());
        self.release(a);
        self.after(c, r)
    }

    /// [`Self::anchored`] for an operation on two paths (`src` from `fd`,
    /// `dst` from `new_fd`); a refusal is reported on `dst`.
    fn anchored_pair<T>(
        &mut self,
        (fd, src): (&Resource<Descriptor>, &Checked),
        (new_fd, dst): (&Resource<Descriptor>, &Checked),
        op: impl FnOnce(
            &mut WasiFilesystemCtxView<'_>,
            (Resource<Descriptor>, String),
            (Resource<Descriptor>, String),
        ) -> FsResult<T>,
    ) -> FsResult<T> {
        let from = self.anchor(fd, src)?;
        let to = match self.anchor(new_fd, dst) {
            Ok(a) => a,
            Err(e) => {
                self.release(from);
                return Err(e);
            }
        };
        let r = op(
            &mut self.inner,
            (borrow(&from.dir), from.name.clone()),
            (borrow(&to.dir), to.name.clone()),
        );
        self.release(from);
        self.release(to);
        self.after(dst, r)
    }

    /// Checks `path` from `fd` and does `act` on what the walk found,
    /// walking again while `act` says the name no longer leads there
    /// (`Ok(None)`, see [`Self::on_checked`]).
    fn checked_then<T>(
        &mut self,
        fd: &Resource<Descriptor>,
        (path, follow): (&str, bool),
        (need, verb): (Need, &'static str),
        mut act: impl FnMut(&mut Self, &Checked) -> FsResult<Option<T>>,
    ) -> FsResult<T> {
        let mut shown = String::new();
        for _ in 0..8 {
            let c = self.check(fd, path, follow, need, verb)?;
            if let Some(v) = act(self, &c)? {
                return Ok(v);
            }
            shown = c.shown;
        }
        let reason = "it changed while being checked".to_string();
        self.deny(verb, &shown, reason, None, None);
        not_permitted()
    }

    /// Does `on_object` on the object `c` checked, opened as it is now (a
    /// link not followed), once it is known to be that object: a host
    /// process swapping two names in a loop would otherwise have a call by
    /// name answer for, or change, one the check never saw. `Ok(None)`
    /// when the name no longer leads to it (the caller walks again), and
    /// nothing is done. The walk's own directory (`.`) is held open and
    /// acted on as such; where the system cannot open an object without
    /// reading it, `by_name` acts on the name, as wasmtime-wasi does.
    fn on_checked<T>(
        &mut self,
        fd: &Resource<Descriptor>,
        c: &Checked,
        on_object: impl FnOnce(&mut Self, fs_host::Object) -> FsResult<T>,
        by_name: impl FnOnce(
            &mut WasiFilesystemCtxView<'_>,
            Resource<Descriptor>,
            String,
        ) -> FsResult<T>,
    ) -> FsResult<Option<T>> {
        let (name, target) = match (&c.r.name, c.r.target) {
            (_, None) => return Err(FsErrorCode::NoEntry.into()),
            (None, Some(_)) => return self.anchored(fd, c, by_name).map(Some),
            (Some(name), Some(t)) => (name, t),
        };
        match fs_host::open_object(c.r.parent.dir.fd(), name) {
            Ok(Some((obj, f))) if f.ident == target.ident => {
                let r = on_object(self, obj);
                self.after(c, r).map(Some)
            }
            Ok(Some(_)) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => self.after(c, Err(e.into())),
            Ok(None) => self.anchored(fd, c, by_name).map(Some),
        }
    }

    /// Does `op` (a stat, a hash) on a descriptor open on `obj`, as
    /// wasmtime-wasi does it on any descriptor: from the open object.
    fn on_descriptor<T>(
        &mut self,
        obj: fs_host::Object,
        op: impl FnOnce(&mut WasiFilesystemCtxView<'_>, Resource<Descriptor>) -> FsResult<T>,
    ) -> FsResult<T> {
        let file = HostFile::new(obj, FsPerms::ReadOnly, OpenMode::empty(), true);
        let d = self.inner.table.push(HostDescriptorObj::File(file))?;
        let r = op(&mut self.inner, borrow(&d));
        let _ = self.inner.table.delete(d);
        r
    }

    /// Sets the times of `obj`, found from the directory `fd`, under
    /// wasmtime-wasi's rule for `set-times-at`: `fd` must allow changes.
    fn set_object_times(
        &mut self,
        fd: &Resource<Descriptor>,
        obj: &fs_host::Object,
        a: fs::NewTimestamp,
        m: fs::NewTimestamp,
    ) -> FsResult<()> {
        let read_only = match self.inner.table.get(fd)? {
            HostDescriptorObj::Dir(d) => d.perms.write_not_permitted(),
            HostDescriptorObj::File(_) => return Err(FsErrorCode::NotDirectory.into()),
        };
        let (a, m) = (new_time(a)?, new_time(m)?);
        if read_only {
            return not_permitted();
        }
        Ok(fs_host::set_times(obj, a, m)?)
    }

    fn release(&mut self, a: Anchor) {
        if a.made {
            let _ = self.inner.table.delete(a.dir);
        }
    }

    /// After a link was made, moved or linked to `dst`: it is judged where
    /// it now is, and removed if it would point outside the grant there.
    /// Only a guest racing this one can have made that so (a link put in
    /// the source's place, or the directory moved up meanwhile), and the
    /// link is a guest's.
    fn recheck_moved_link(&self, dst: &Checked) -> FsResult<()> {
        let Some(name) = &dst.r.name else {
            return Ok(());
        };
        let dir = dst.r.parent.dir.fd();
        let Ok(found) = crate::fs_host::look(dir, name) else {
            return Ok(());
        };
        if !found.is_link {
            return Ok(());
        }
        let target = crate::fs_host::read_link(dir, name.as_ref())?;
        let depth = fs_walk::depth_now(self.areas(), dir)?;
        if fs_walk::link_leaves_grant(&target, depth) {
            crate::fs_host::remove_link(dir, name.as_ref())?;
            let pre = &self.guard.preopens[dst.preopen];
            let reason = format!("the link would point outside {}", pre.shown);
            self.deny(dst.verb, &dst.shown, reason, None, None);
            return not_permitted();
        }
        Ok(())
    }

    /// The depths of a directory about to be renamed (below its grant's
    /// root): where it is now and where it will be. A directory moved
    /// nearer the root takes its links along, which then climb from higher.
    fn dir_depths(&self, src: &Checked, dst: &Checked) -> FsResult<Option<(usize, usize)>> {
        let (Some(t), Some(_), Some(_)) = (src.r.target, &src.r.name, &dst.r.name) else {
            return Ok(None);
        };
        if !t.is_dir || t.is_link {
            return Ok(None);
        }
        let old = fs_walk::depth_now(self.areas(), src.r.parent.dir.fd())? + 1;
        let new = fs_walk::depth_now(self.areas(), dst.r.parent.dir.fd())? + 1;
        Ok(Some((old, new)))
    }

    /// Refuses moving the directory `src` names from depth `old` to `new`
    /// when a link in its tree would then point outside the grant (as one
    /// made there would be refused).
    fn links_stay_inside_when_moved(&self, src: &Checked, old: usize, new: usize) -> FsResult<()> {
        let name = src.r.name.as_deref().unwrap_or(".");
        let limits = fs_walk::TreeLimits::BEFORE_A_MOVE;
        let reason = match fs_walk::escaping_link(src.r.parent.dir.fd(), name, old, new, limits) {
            Ok(None) => return Ok(()),
            Ok(Some((_, _, path))) => format!(
                "the link {path} in it would point outside {}",
                self.guard.preopens[src.preopen].shown
            ),
            Err(e) => format!("its links could not all be checked: {e}"),
        };
        self.deny(src.verb, &src.shown, reason, None, None);
        not_permitted()
    }

    /// After a directory was moved from depth `old`: where it landed may be
    /// nearer the root than was checked (another sandbox moved it, or its
    /// new parent, meanwhile), and another sandbox may have put links in
    /// it. Each link that points outside the grant there, and did not
    /// before, is removed; if the tree cannot be read to the end, the
    /// directory is moved back.
    fn after_a_directory_move(&self, src: &Checked, dst: &Checked, old: usize) -> FsResult<()> {
        let (Some(name), Some(src_name)) = (&dst.r.name, &src.r.name) else {
            return Ok(());
        };
        let dir = dst.r.parent.dir.fd();
        let now = fs_walk::depth_now(self.areas(), dir)? + 1;
        if now >= old {
            return Ok(());
        }
        let limits = fs_walk::TreeLimits::AFTER_A_MOVE;
        loop {
            match fs_walk::escaping_link(dir, name, old, now, limits) {
                Ok(None) => return Ok(()),
                Ok(Some((d, link, _))) => {
                    crate::fs_host::remove_link(crate::fs_host::handle_ref(&d), &link)?
                }
                Err(e) => {
                    let back = crate::fs_host::rename_noreplace(
                        dir,
                        name.as_ref(),
                        src.r.parent.dir.fd(),
                        src_name.as_ref(),
                    );
                    let reason = match back {
                        Ok(()) => format!("its links could not all be checked ({e}); moved back"),
                        Err(b) => format!(
                            "its links could not all be checked ({e}), and it could not be moved back ({b})"
                        ),
                    };
                    self.deny(src.verb, &src.shown, reason, None, None);
                    return not_permitted();
                }
            }
        }
    }

    /// Reports a refusal that wasmtime-wasi made after capsa's own checks passed.
    fn after<T>(&self, c: &Checked, result: FsResult<T>) -> FsResult<T> {
        if let Err(e) = &result
            && matches!(e.downcast_ref(), Some(FsErrorCode::NotPermitted))
        {
            let pre = &self.guard.preopens[c.preopen];
            let reason = format!("refused inside {}", pre.shown);
            let hint = (!c.shown.contains("::"))
                .then(|| capsa_policy::default_host(&c.shown))
                .flatten()
                .map(|h| format!("{}={h}", c.need.op().flag()));
            self.deny(c.verb, &c.shown, reason, None, hint);
        }
        result
    }

    /// The object a new descriptor is open on.
    fn opened_ident(&mut self, fd: &Resource<Descriptor>) -> FsResult<Ident> {
        let file = match self.inner.table.get(fd)? {
            HostDescriptorObj::Dir(d) => d.dir.clone(),
            HostDescriptorObj::File(f) => f.file.clone(),
        };
        Ok(ident_of_file(&file)?)
    }

    /// Empties a regular file just opened (`O_TRUNC`, which leaves
    /// anything else as it is).
    fn truncate(&mut self, fd: &Resource<Descriptor>) -> FsResult<()> {
        if let HostDescriptorObj::File(f) = self.inner.table.get(fd)? {
            let file = f.file.clone();
            if file.metadata()?.is_file() {
                file.set_len(0)?;
            }
        }
        Ok(())
    }

    /// The guest path's parts of a directory that is shown with nothing
    /// of the host's: the guarded root, and the working directory's view
    /// itself (not what is below it).
    fn bare_directory(&self, fd: &Resource<Descriptor>) -> Option<Vec<String>> {
        let t = self.tracker.descriptors.get(&fd.rep())?;
        if self.guard.preopens[t.preopen].root_guard {
            return Some(Vec::new());
        }
        if self.areas().is_way(t.domain, t.ident) {
            return Some(guest_parts(&t.guest));
        }
        self.workdir_parts(t.domain)
    }

    /// The guest path's parts of the working directory's view, when
    /// `domain` is the view itself, however it was reached (from the view,
    /// or by name from a grant around it): it is shown with nothing of the
    /// host's.
    fn workdir_parts(&self, domain: Domain) -> Option<Vec<String>> {
        let Base::Holder(p) = domain.base else {
            return None;
        };
        let pre = &self.guard.preopens[p];
        pre.workdir.then(|| guest_parts(&pre.guest))
    }

    /// Whether `fd` is the guarded root (see [`Preopen::root_guard`]).
    fn is_root_guard(&self, fd: &Resource<Descriptor>) -> bool {
        self.tracker
            .descriptors
            .get(&fd.rep())
            .is_some_and(|t| self.guard.preopens[t.preopen].root_guard)
    }

    fn tracked_domain(&self, fd: &Resource<Descriptor>) -> Option<(Domain, usize, String)> {
        self.tracker
            .descriptors
            .get(&fd.rep())
            .map(|t| (t.domain, t.preopen, t.guest.clone()))
    }
}

/// What `stat` tells of the guarded root and the directories on the way to
/// a grant: a directory, with nothing of the host's (no size, no times).
/// The parts of the guest path `guest`, for a made-up identity.
fn guest_parts(guest: &str) -> Vec<String> {
    guest
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// `<stdin>`, `<string>`, `<unknown>`: names Python gives code that has no
/// file, which a traceback may still try to open. Not a denial to report.
fn names_code_without_a_file(shown: &str) -> bool {
    shown.starts_with('<') && shown.ends_with('>')
}

fn made_up_dir_stat() -> fs::DescriptorStat {
    fs::DescriptorStat {
        type_: fs::DescriptorType::Directory,
        link_count: 1,
        size: 0,
        data_access_timestamp: None,
        data_modification_timestamp: None,
        status_change_timestamp: None,
    }
}

/// An identity (`st_ino`) for a directory of [`made_up_dir_stat`], from its
/// guest path's parts only.
fn made_up_hash(parts: &[String]) -> fs::MetadataHashValue {
    let (mut lower, mut upper) = (0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64);
    for b in parts.join("/").bytes() {
        lower = (lower ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        upper = (upper ^ u64::from(b)).wrapping_mul(0x100_0000_01b3 ^ 0x5555);
    }
    fs::MetadataHashValue { lower, upper }
}

/// The names in the host's `/`: a fixed place, never one the guest chose.
#[cfg(not(windows))]
fn host_root_names() -> std::collections::HashSet<String> {
    std::fs::read_dir("/")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

/// On Windows the guest's `/c` (or `/C`) is the drive `C:`: the drives there are.
#[cfg(windows)]
fn host_root_names() -> std::collections::HashSet<String> {
    ('a'..='z')
        .filter(|d| std::path::Path::new(&format!("{d}:\\")).is_dir())
        .flat_map(|d| [d.to_string(), d.to_ascii_uppercase().to_string()])
        .collect()
}

/// wasmtime-wasi's hash of an object's identity, which the preview 1
/// adapter gives as its inode number: on Linux a hash of its device and
/// inode, so it is taken from the object the walk checked, with nothing
/// looked up by name again (a listing asks it of every entry). `None`
/// elsewhere: there it is asked of the object by name.
fn identity_hash(ident: Ident) -> Option<fs::MetadataHashValue> {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return None;
    }
    use std::hash::{Hash, Hasher};
    // As wasmtime-wasi 48 (`MetadataHashValue::new`) makes it; a test
    // compares the two through a guest's `stat` and `fstat`.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ident.hash(&mut hasher);
    let lower = hasher.finish();
    let upper = lower ^ 4_614_256_656_552_045_848;
    Some(fs::MetadataHashValue { lower, upper })
}

/// A time to set, as wasmtime-wasi reads it: `None` leaves it as it is.
fn new_time(t: fs::NewTimestamp) -> FsResult<Option<std::time::SystemTime>> {
    let t = match t {
        fs::NewTimestamp::NoChange => return Ok(None),
        fs::NewTimestamp::Now => return Ok(Some(std::time::SystemTime::now())),
        fs::NewTimestamp::Timestamp(t) => t,
    };
    let overflow = || FsErrorCode::Overflow;
    let seconds = t
        .seconds
        .checked_add(u64::from(t.nanoseconds / 1_000_000_000))
        .ok_or_else(overflow)?;
    let since = std::time::Duration::new(seconds, t.nanoseconds % 1_000_000_000);
    let t = std::time::SystemTime::UNIX_EPOCH.checked_add(since);
    Ok(Some(t.ok_or_else(overflow)?))
}

fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

/// Whether `path`, walked from a grant's directory with `..` taken as
/// written, climbs above it (else it climbed above a descriptor's own
/// directory inside the grant, which no grant changes).
fn climbs_out(path: &str) -> bool {
    let mut depth = 0usize;
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." if depth == 0 => return true,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

impl preopens::Host for GuardedFs<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.inner)?;
        // wasmtime-wasi returns preopens in the order they were added, which
        // is the order of `Guard::preopens`.
        for (i, (fd, guest)) in dirs.iter().enumerate() {
            let Some(pre) = self.guard.preopens.get(i).filter(|p| &p.name == guest) else {
                continue;
            };
            let ident = self.opened_ident(fd).map_err(|e| {
                wasmtime::format_err!("cannot identify the granted directory {}: {e:?}", pre.shown)
            })?;
            let domain = self.guard.areas.domain_of_path(&pre.host);
            self.tracker.descriptors.insert(
                fd.rep(),
                Tracked {
                    guest: guest.clone(),
                    preopen: i,
                    ident,
                    domain,
                    depth: 0,
                },
            );
        }
        Ok(dirs)
    }
}

impl fs::Host for GuardedFs<'_> {
    fn convert_error_code(
        &mut self,
        err: wasmtime_wasi::p2::FsError,
    ) -> wasmtime::Result<ErrorCode> {
        fs::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<streams::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        fs::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl fs::HostDescriptor for GuardedFs<'_> {
    fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: u64,
        len: u64,
        advice: fs::Advice,
    ) -> FsResult<()> {
        fs::HostDescriptor::advise(&mut self.inner, fd, offset, len, advice)
    }

    fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync_data(&mut self.inner, fd)
    }

    fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorFlags> {
        fs::HostDescriptor::get_flags(&mut self.inner, fd)
    }

    fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<fs::DescriptorType> {
        fs::HostDescriptor::get_type(&mut self.inner, fd)
    }

    fn set_size(&mut self, fd: Resource<Descriptor>, size: u64) -> FsResult<()> {
        if !self.guard.written.limited() {
            return fs::HostDescriptor::set_size(&mut self.inner, fd, size);
        }
        // Growing a file counts as writing what it grows by.
        let now = match self.inner.table.get(&fd)? {
            HostDescriptorObj::File(f) => f.file.metadata().map(|m| m.len()).unwrap_or(0),
            HostDescriptorObj::Dir(_) => size,
        };
        let grows = size.saturating_sub(now);
        self.spend(grows)?;
        let r = fs::HostDescriptor::set_size(&mut self.inner, fd, size);
        if r.is_err() {
            self.guard.written.give_back(grows);
        }
        r
    }

    fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        a: fs::NewTimestamp,
        m: fs::NewTimestamp,
    ) -> FsResult<()> {
        // Changing times needs no write access to the open file, only to
        // where it is.
        let Some((domain, preopen, guest)) = self.tracked_domain(&fd) else {
            return not_permitted();
        };
        if self.guard.preopens[preopen].root_guard {
            return self.refuse_outside_root("change times of", &guest, Need::Write);
        }
        if let Err(w) = self.areas().may_write(domain) {
            return self.refuse(
                w,
                None,
                ("change times of", &guest, preopen, Need::Write),
                true,
            );
        }
        fs::HostDescriptor::set_times(&mut self.inner, fd, a, m)
    }

    fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: u64,
        offset: u64,
    ) -> FsResult<(Vec<u8>, bool)> {
        fs::HostDescriptor::read(&mut self.inner, fd, len, offset)
    }

    fn write(&mut self, fd: Resource<Descriptor>, buf: Vec<u8>, offset: u64) -> FsResult<u64> {
        if !self.guard.written.limited() || buf.is_empty() {
            return fs::HostDescriptor::write(&mut self.inner, fd, buf, offset);
        }
        // The bytes, and the gap a write past the end leaves.
        let n = match self.inner.table.get(&fd)? {
            HostDescriptorObj::File(f) => crate::fs_stream::write_cost(&f.file, offset, buf.len()),
            HostDescriptorObj::Dir(_) => buf.len() as u64,
        };
        let len = buf.len() as u64;
        self.spend(n)?;
        let r = fs::HostDescriptor::write(&mut self.inner, fd, buf, offset);
        // What was not written is given back (the gap too, if nothing was).
        self.guard.written.give_back(match &r {
            Ok(0) | Err(_) => n,
            Ok(w) => len - (*w).min(len),
        });
        r
    }

    fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DirectoryEntryStream>> {
        let Some((domain, preopen, guest)) = self.tracked_domain(&fd) else {
            return not_permitted();
        };
        if self.guard.preopens[preopen].root_guard {
            return self.refuse_outside_root("list", &guest, Need::Read);
        }
        // A directory on the way to a grant lists the way and the grant.
        let ident = self.tracker.descriptors.get(&fd.rep()).map(|t| t.ident);
        if let Some(ident) = ident
            && self.areas().is_way(domain, ident)
        {
            let dir = match self.inner.table.get(&fd)? {
                HostDescriptorObj::Dir(d) => d.dir.clone(),
                HostDescriptorObj::File(_) => return Err(FsErrorCode::NotDirectory.into()),
            };
            let stream = fs::HostDescriptor::read_directory(&mut self.inner, fd)?;
            self.tracker.way_streams.insert(stream.rep(), dir);
            return Ok(stream);
        }
        if let Err(w) = self.areas().may_read(domain) {
            return self.refuse(w, None, ("list", &guest, preopen, Need::Read), true);
        }
        // A directory holding granted files lists only them.
        let filtered = match domain.base {
            Base::Holder(p) => Some(p),
            _ => None,
        };
        let stream = fs::HostDescriptor::read_directory(&mut self.inner, fd)?;
        if let Some(p) = filtered {
            self.tracker.filtered_streams.insert(stream.rep(), p);
        }
        Ok(stream)
    }

    fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync(&mut self.inner, fd)
    }

    fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let c = self.check(&fd, &path, false, Need::Name, "create directory")?;
        self.making(|me| {
            me.anchored(&fd, &c, |inner, dir, name| {
                fs::HostDescriptor::create_directory_at(inner, dir, name)
            })
        })
    }

    fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<fs::DescriptorStat> {
        // The guarded root is a directory with nothing of the host's: its
        // inode, device and times would tell what else was made there. So
        // is the working directory's view (as `stat_at(".")` finds it).
        if self.bare_directory(&fd).is_some() {
            return Ok(made_up_dir_stat());
        }
        fs::HostDescriptor::stat(&mut self.inner, fd)
    }

    fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
    ) -> FsResult<fs::DescriptorStat> {
        if self.on_the_way_to_a_grant(&fd, &path).is_some() {
            return Ok(made_up_dir_stat());
        }
        let follow = pf.contains(PathFlags::SYMLINK_FOLLOW);
        self.checked_then(&fd, (&path, follow), (Need::Read, "stat"), |me, c| {
            if me.workdir_parts(c.r.domain).is_some() {
                return Ok(Some(made_up_dir_stat()));
            }
            me.on_checked(
                &fd,
                c,
                |me, obj| me.on_descriptor(obj, |inner, d| fs::HostDescriptor::stat(inner, d)),
                |inner, dir, name| fs::HostDescriptor::stat_at(inner, dir, no_follow(), name),
            )
        })
    }

    fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
        a: fs::NewTimestamp,
        m: fs::NewTimestamp,
    ) -> FsResult<()> {
        let follow = pf.contains(PathFlags::SYMLINK_FOLLOW);
        let change = (Need::Write, "change times of");
        self.checked_then(&fd, (&path, follow), change, |me, c| {
            me.on_checked(
                &fd,
                c,
                |me, obj| me.set_object_times(&fd, &obj, a, m),
                |inner, dir, name| {
                    fs::HostDescriptor::set_times_at(inner, dir, no_follow(), name, a, m)
                },
            )
        })
    }

    fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_pf: PathFlags,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // A hard link is a second name for the same file: the source is
        // read and written wherever the new name is, so it must be both
        // here, and stay under the same rules there.
        // wasmtime-wasi links the name itself, never what a link leads to.
        if old_pf.contains(PathFlags::SYMLINK_FOLLOW) {
            return Err(FsErrorCode::Invalid.into());
        }
        let src = self.check(&fd, &old_path, false, Need::ReadWrite, "link from")?;
        let dst = self.check(&new_fd, &new_path, false, Need::Name, "link to")?;
        // The anchor names no trailing `/`: what it would mean is said here.
        if new_path.ends_with('/') && dst.r.target.is_none() {
            return Err(FsErrorCode::NoEntry.into());
        }
        self.same_domain(&src, &dst)?;
        // A hard link to a symbolic link is that link at another depth.
        if let Some(target) = self.link_target(&src)? {
            self.link_stays_inside(&dst, &target)?;
        }
        self.making(|me| {
            me.anchored_pair((&fd, &src), (&new_fd, &dst), |inner, from, to| {
                fs::HostDescriptor::link_at(inner, from.0, no_follow(), from.1, to.0, to.1)
            })
        })?;
        self.recheck_moved_link(&dst)
    }

    fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let writes = flags.intersects(DescriptorFlags::WRITE | DescriptorFlags::MUTATE_DIRECTORY)
            || oflags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
        let reads = flags.contains(DescriptorFlags::READ) || !writes;
        let (need, verb) = match (reads, writes) {
            (true, true) => (Need::ReadWrite, "read and write"),
            (false, true) => (Need::Write, "write to"),
            _ => (Need::Read, "read"),
        };
        if oflags.contains(OpenFlags::DIRECTORY)
            && oflags.intersects(OpenFlags::CREATE | OpenFlags::EXCLUSIVE | OpenFlags::TRUNCATE)
        {
            return Err(FsErrorCode::Invalid.into());
        }
        let follow = pf.contains(PathFlags::SYMLINK_FOLLOW);
        let create = oflags.contains(OpenFlags::CREATE);
        let exclusive = create && oflags.contains(OpenFlags::EXCLUSIVE);
        // A file is truncated once it is known to be what the walk found,
        // never by the open: opened as wasmtime-wasi opens for `O_TRUNC`.
        let truncate = oflags.contains(OpenFlags::TRUNCATE);
        let mut open_flags = flags;
        if truncate && !flags.contains(DescriptorFlags::WRITE) {
            open_flags |= DescriptorFlags::WRITE | DescriptorFlags::READ;
        }
        // Another sandbox may make or remove the name between the walk and
        // the open: then the walk is done again.
        let mut tries = 0;
        let (c, new, ident) = loop {
            tries += 1;
            // A directory opened to be listed may be one on the way to a
            // grant (`os.walk` from the working directory's view).
            let lists = need == Need::Read && oflags.contains(OpenFlags::DIRECTORY);
            let c = self.check_for(&fd, &path, follow, need, verb, lists)?;
            let exists = c.r.target.is_some();
            let mut of = oflags & !OpenFlags::TRUNCATE;
            match c.r.target {
                Some(_) if exclusive => return Err(FsErrorCode::Exist.into()),
                Some(t) if create && t.is_dir => return Err(FsErrorCode::IsDirectory.into()),
                Some(_) => of &= !(OpenFlags::CREATE | OpenFlags::EXCLUSIVE),
                // `new/` names a directory, which `open` does not make.
                None if create && path.ends_with('/') => {
                    return Err(FsErrorCode::IsDirectory.into());
                }
                // Made here, or not at all: never a file that appeared.
                None if create => of |= OpenFlags::EXCLUSIVE,
                None => {}
            }
            let a = self.anchor(&fd, &c)?;
            // A file made here counts as a name made (see `making`), before
            // it is made; given back if it is not.
            let makes = create && !exists;
            if makes && let Err(e) = self.spend(capsa_policy::Limits::ENTRY_COST) {
                self.release(a);
                return Err(e);
            }
            let r = fs::HostDescriptor::open_at(
                &mut self.inner,
                borrow(&a.dir),
                no_follow(),
                a.name.clone(),
                of,
                open_flags,
            );
            self.release(a);
            if makes && r.is_err() {
                self.guard
                    .written
                    .give_back(capsa_policy::Limits::ENTRY_COST);
            }
            let raced = match &r {
                Ok(_) => !exists && !create,
                Err(e) => match e.downcast_ref() {
                    Some(FsErrorCode::NoEntry) => exists,
                    Some(FsErrorCode::Exist) => !exists && !exclusive,
                    _ => false,
                },
            };
            if raced && tries < 8 {
                if let Ok(new) = r {
                    let _ = fs::HostDescriptor::drop(&mut self.inner, new);
                }
                continue;
            }
            if raced && let Ok(new) = r {
                let _ = fs::HostDescriptor::drop(&mut self.inner, new);
                return Err(FsErrorCode::NoEntry.into());
            }
            let new = self.after(&c, r)?;
            // Decide on what was opened: it must be what the walk found (a
            // name replaced meanwhile is walked again).
            let ident = match self.opened_ident(&new) {
                Ok(i) => i,
                Err(e) => {
                    let _ = fs::HostDescriptor::drop(&mut self.inner, new);
                    return Err(e);
                }
            };
            if c.r.target.is_some_and(|t| t.ident != ident) {
                let _ = fs::HostDescriptor::drop(&mut self.inner, new);
                if tries < 8 {
                    continue;
                }
                self.deny(
                    verb,
                    &c.shown,
                    "it changed while being opened".into(),
                    None,
                    None,
                );
                return not_permitted();
            }
            break (c, new, ident);
        };
        let res = &c.r;
        if truncate
            && res.target.is_some()
            && let Err(e) = self.truncate(&new)
        {
            let _ = fs::HostDescriptor::drop(&mut self.inner, new);
            return Err(e);
        }
        let domain = match (res.target, &res.name) {
            (Some(_), _) | (None, None) => res.domain,
            (None, Some(name)) => {
                self.areas()
                    .enter(res.parent.domain, res.parent.ident, name, ident)
            }
        };
        let depth = match (&res.name, self.areas().is_grant_root(ident)) {
            (_, true) => 0,
            (None, false) => res.parent.depth,
            (Some(_), false) => res.parent.depth + 1,
        };
        self.tracker.descriptors.insert(
            new.rep(),
            Tracked {
                guest: c.guest.clone(),
                preopen: c.preopen,
                ident,
                domain,
                depth,
            },
        );
        Ok(new)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.tracker.descriptors.remove(&fd.rep());
        fs::HostDescriptor::drop(&mut self.inner, fd)
    }

    fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        let c = self.check(&fd, &path, false, Need::Read, "read link")?;
        self.anchored(&fd, &c, |inner, dir, name| {
            fs::HostDescriptor::readlink_at(inner, dir, name)
        })
    }

    fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        // `rmdir("dir/")` removes `dir`, as POSIX has it (wasmtime-wasi
        // refuses the trailing slash with EINVAL): a file or a link named
        // so still fails with ENOTDIR without it.
        let path = match path.trim_end_matches('/') {
            "" => path,
            trimmed => trimmed.to_string(),
        };
        let c = self.check(&fd, &path, false, Need::Name, "remove")?;
        self.anchored(&fd, &c, |inner, dir, name| {
            fs::HostDescriptor::remove_directory_at(inner, dir, name)
        })
    }

    fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old: String,
        new_fd: Resource<Descriptor>,
        new: String,
    ) -> FsResult<()> {
        // The source is read as well as written: what it holds goes on
        // being readable under its new name.
        let src = self.check(&fd, &old, false, Need::ReadWrite, "rename")?;
        let src = self.also_name(src)?;
        let dst = self.check(&new_fd, &new, false, Need::Name, "rename to")?;
        if new.ends_with('/') && src.r.target.is_some_and(|t| !t.is_dir) {
            return Err(FsErrorCode::NotDirectory.into());
        }
        self.same_domain(&src, &dst)?;
        if let Some(target) = self.link_target(&src)? {
            self.link_stays_inside(&dst, &target)?;
        }
        // A directory moved nearer its grant's root takes its links along:
        // each is judged where it will be, as when it was made.
        let depths = self.dir_depths(&src, &dst)?;
        if let Some((old, new)) = depths
            && new < old
        {
            self.links_stay_inside_when_moved(&src, old, new)?;
        }
        self.anchored_pair((&fd, &src), (&new_fd, &dst), |inner, from, to| {
            fs::HostDescriptor::rename_at(inner, from.0, from.1, to.0, to.1)
        })?;
        if let Some((old, _)) = depths {
            self.after_a_directory_move(&src, &dst, old)?;
        }
        self.recheck_moved_link(&dst)
    }

    fn symlink_at(&mut self, fd: Resource<Descriptor>, src: String, dest: String) -> FsResult<()> {
        let c = self.check(&fd, &dest, false, Need::Name, "create link")?;
        if dest.ends_with('/') && c.r.target.is_none() {
            return Err(FsErrorCode::NoEntry.into());
        }
        self.link_stays_inside(&c, &src)?;
        self.making(|me| {
            me.anchored(&fd, &c, |inner, dir, name| {
                fs::HostDescriptor::symlink_at(inner, dir, src, name)
            })
        })?;
        // Judged again where it is now: another sandbox may have moved its
        // directory nearer the grant's root meanwhile.
        self.recheck_moved_link(&c)
    }

    fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let c = self.check(&fd, &path, false, Need::Name, "remove")?;
        self.anchored(&fd, &c, |inner, dir, name| {
            fs::HostDescriptor::unlink_file_at(inner, dir, name)
        })
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<streams::InputStream>> {
        let file = match self.inner.table.get(&fd)? {
            HostDescriptorObj::File(f) => f.file.clone(),
            // A directory's error is wasmtime-wasi's.
            HostDescriptorObj::Dir(_) => {
                return fs::HostDescriptor::read_via_stream(&mut self.inner, fd, offset);
            }
        };
        let stream: wasmtime_wasi::p2::DynInputStream =
            Box::new(crate::fs_stream::FileReadStream::new(file, offset));
        Ok(self.inner.table.push(stream)?)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let file = match self.inner.table.get(&fd)? {
            HostDescriptorObj::File(f) if !f.perms.write_not_permitted() => f.file.clone(),
            // Refusals are wasmtime-wasi's.
            _ => return fs::HostDescriptor::write_via_stream(&mut self.inner, fd, offset),
        };
        let stream: wasmtime_wasi::p2::DynOutputStream = Box::new(
            crate::fs_stream::FileWriteStream::new(file, offset, self.guard.written.clone()),
        );
        Ok(self.inner.table.push(stream)?)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let stream = fs::HostDescriptor::append_via_stream(&mut self.inner, fd)?;
        self.counted(stream)
    }

    fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        // Nothing the guest can open is the guarded root but the root.
        match (self.is_root_guard(&a), self.is_root_guard(&b)) {
            (false, false) => fs::HostDescriptor::is_same_object(&mut self.inner, a, b),
            (x, y) => Ok(x && y),
        }
    }

    fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<fs::MetadataHashValue> {
        if let Some(parts) = self.bare_directory(&fd) {
            return Ok(made_up_hash(&parts));
        }
        fs::HostDescriptor::metadata_hash(&mut self.inner, fd)
    }

    fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
    ) -> FsResult<fs::MetadataHashValue> {
        // The preview 1 adapter asks this for every entry of a listing:
        // an entry's name is shown by its (readable) directory, so its
        // identity is not kept from the guest, or a `--deny-read` inside a
        // grant would make the grant's listing fail.
        if let Some(parts) = self.on_the_way_to_a_grant(&fd, &path) {
            return Ok(made_up_hash(&parts));
        }
        let follow = pf.contains(PathFlags::SYMLINK_FOLLOW);
        self.checked_then(&fd, (&path, follow), (Need::Look, "stat"), |me, c| {
            if let Some(parts) = me.workdir_parts(c.r.domain) {
                return Ok(Some(made_up_hash(&parts)));
            }
            if c.r
                .target
                .is_some_and(|t| me.areas().is_way(c.r.domain, t.ident))
            {
                return Ok(Some(made_up_hash(&guest_parts(&c.guest))));
            }
            if let Some(hash) = c.r.target.and_then(|t| identity_hash(t.ident)) {
                return Ok(Some(hash));
            }
            me.on_checked(
                &fd,
                c,
                |me, obj| {
                    me.on_descriptor(obj, |inner, d| fs::HostDescriptor::metadata_hash(inner, d))
                },
                |inner, dir, name| {
                    fs::HostDescriptor::metadata_hash_at(inner, dir, no_follow(), name)
                },
            )
        })
    }
}

impl fs::HostDirectoryEntryStream for GuardedFs<'_> {
    fn read_directory_entry(
        &mut self,
        stream: Resource<DirectoryEntryStream>,
    ) -> FsResult<Option<fs::DirectoryEntry>> {
        if let Some(dir) = self.tracker.way_streams.get(&stream.rep()).cloned() {
            // Decided on what each name is now, not on its text.
            loop {
                let entry = fs::HostDirectoryEntryStream::read_directory_entry(
                    &mut self.inner,
                    borrow(&stream),
                )?;
                match entry {
                    Some(e)
                        if !fs_host::look(fs_host::dir_ref(&dir), &e.name)
                            .is_ok_and(|f| self.areas().on_the_way(f.ident)) =>
                    {
                        continue;
                    }
                    other => return Ok(other),
                }
            }
        }
        let Some(&p) = self.tracker.filtered_streams.get(&stream.rep()) else {
            return fs::HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream);
        };
        // A file grant shows its own name in the listing, never a
        // neighbour's; a working directory that holds grants, the first
        // name of each.
        let names = self.guard.preopens[p].only.as_deref().unwrap_or_default();
        let shown = |name: &str| names.iter().any(|n| n.split('/').next() == Some(name));
        loop {
            let entry = fs::HostDirectoryEntryStream::read_directory_entry(
                &mut self.inner,
                borrow(&stream),
            )?;
            match entry {
                Some(e) if !shown(&e.name) => continue,
                other => return Ok(other),
            }
        }
    }

    fn drop(&mut self, stream: Resource<DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.tracker.filtered_streams.remove(&stream.rep());
        self.tracker.way_streams.remove(&stream.rep());
        fs::HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

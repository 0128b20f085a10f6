//! `wasi:filesystem` as the guest sees it: wasmtime-wasi's implementation,
//! with capsa's checks in front of every path operation.
//!
//! wasmtime-wasi confines each descriptor to its preopened directory and
//! enforces read-only preopens. What it lacks, and this adds: single-file
//! grants (the file's directory is preopened, but only the granted names are
//! reachable), `--deny-read`/`--deny-write` inside a grant, and a report of
//! every refusal the host sees, with the flag that would allow it.

use crate::Guard;
use crate::report::Kind;
use capsa_policy::{FsOp, Verdict, join_guest_checked, strip_guest_prefix};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::FsResult;
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode as FsErrorCode;
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{
    self as fs, Descriptor, DescriptorFlags, DirectoryEntryStream, ErrorCode, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::sync::io::streams;

/// A directory handed to the guest at start.
#[derive(Debug, Clone)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
    /// `Some`: only these names in the directory are granted (file grants).
    pub only: Option<Vec<String>>,
    /// The grant's own guest path, for messages: differs from `guest` for
    /// the alias of a grant below the working directory.
    pub shown: String,
}

impl Preopen {
    /// A path in this preopen as the user knows it.
    fn show(&self, guest: &str) -> String {
        match strip_guest_prefix(guest, &self.guest) {
            Some("") => self.shown.clone(),
            Some(rel) => format!("{}/{rel}", self.shown.trim_end_matches('/')),
            None => guest.to_string(),
        }
    }

    fn allows_name(&self, guest: &str) -> bool {
        match &self.only {
            None => true,
            Some(names) => strip_guest_prefix(guest, &self.guest)
                .is_some_and(|rel| names.iter().any(|n| n == rel)),
        }
    }
}

/// Which preopen, and which guest path, each open descriptor stands for.
#[derive(Default)]
pub struct FsTracker {
    descriptors: HashMap<u32, Tracked>,
    /// Directory listings of file-grant directories, with the names they may show.
    filtered_streams: HashMap<u32, usize>,
}

struct Tracked {
    guest: String,
    preopen: usize,
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

/// A path operation that passed capsa's checks.
struct Checked {
    guest: String,
    /// `guest` as the user knows it.
    shown: String,
    preopen: usize,
    op: FsOp,
    verb: &'static str,
}

fn not_permitted<T>() -> FsResult<T> {
    Err(FsErrorCode::NotPermitted.into())
}

/// Resolves links in `host` as far as it exists: the file itself, or its
/// directory plus the name for something about to be created.
fn resolve_host(host: &Path) -> (PathBuf, bool) {
    if let Ok(c) = std::fs::canonicalize(host) {
        return (c, true);
    }
    match (host.parent(), host.file_name()) {
        (Some(parent), Some(name)) => match std::fs::canonicalize(parent) {
            Ok(p) => (p.join(name), false),
            Err(_) => (host.to_path_buf(), false),
        },
        _ => (host.to_path_buf(), false),
    }
}

impl GuardedFs<'_> {
    fn deny(&self, verb: &str, target: &str, reason: String, hint: Option<String>) {
        let verdict = Verdict::Deny {
            rule: None,
            reason,
            hint,
        };
        self.guard
            .reporter
            .verdict(Kind::Fs, verb, target, &verdict);
    }

    /// Decides one path operation relative to the descriptor `dir`.
    /// `Ok(None)`: not a descriptor capsa knows; wasmtime-wasi alone decides.
    fn check(
        &mut self,
        dir: u32,
        path: &str,
        op: FsOp,
        verb: &'static str,
    ) -> FsResult<Option<Checked>> {
        let Some(t) = self.tracker.descriptors.get(&dir) else {
            return Ok(None);
        };
        let preopen_idx = t.preopen;
        let pre = &self.guard.preopens[preopen_idx];
        let (guest, escaped) = join_guest_checked(&t.guest, path);
        let shown = pre.show(&guest);
        if escaped {
            let reason = format!("the path leaves the granted directory {}", pre.shown);
            let hint = format!("{}={shown}", op.flag());
            self.deny(verb, &shown, reason, Some(hint));
            return not_permitted();
        }
        let rel = strip_guest_prefix(&guest, &pre.guest).unwrap_or("");
        let host = if rel.is_empty() {
            pre.host.clone()
        } else {
            pre.host.join(rel)
        };
        let denied_reading = |p: &Path| {
            self.guard
                .policy
                .fs
                .deny_read
                .iter()
                .any(|d| p.starts_with(d))
        };
        if rel.is_empty()
            && pre.only.is_some()
            && (verb == "stat" || verb == "read")
            && !denied_reading(&pre.host)
        {
            // The directory holding granted files may be stat'ed and opened
            // read-only: a listing of it shows only the granted names (see
            // `read_directory`), and paths through the new descriptor are
            // checked here again. An import system stats and lists a
            // script's directory before anything else.
            let verdict = Verdict::Allow {
                rule: format!("a granted file is in {}", pre.shown),
            };
            self.guard
                .reporter
                .verdict(Kind::Fs, verb, &shown, &verdict);
            return Ok(Some(Checked {
                guest,
                shown,
                preopen: preopen_idx,
                op,
                verb,
            }));
        }
        if !pre.allows_name(&guest) {
            let names = pre.only.as_deref().unwrap_or_default().join(", ");
            let reason = format!("only {names} is granted in {}", pre.shown);
            let hint = format!("{}={}", op.flag(), host.display());
            self.deny(verb, &shown, reason, Some(hint));
            return not_permitted();
        }
        let (canonical, exists) = resolve_host(&host);
        let mut verdict = self.guard.policy.fs.decide(&canonical, op, exists);
        if let Verdict::Deny {
            rule: None, reason, ..
        } = &mut verdict
            && !canonical.starts_with(&pre.host)
        {
            *reason = format!("a link leads outside {}", pre.shown);
        }
        self.guard
            .reporter
            .verdict(Kind::Fs, verb, &shown, &verdict);
        if !verdict.is_allowed() {
            return not_permitted();
        }
        Ok(Some(Checked {
            guest,
            shown,
            preopen: preopen_idx,
            op,
            verb,
        }))
    }

    /// Reports a refusal that wasmtime-wasi made after capsa's own checks passed.
    fn after<T>(&self, checked: &Option<Checked>, result: FsResult<T>) -> FsResult<T> {
        if let (Some(c), Err(e)) = (checked, &result)
            && matches!(e.downcast_ref(), Some(FsErrorCode::NotPermitted))
        {
            let pre = &self.guard.preopens[c.preopen];
            let reason = if c.op == FsOp::Write && !pre.writable {
                format!("{} is granted read-only", pre.shown)
            } else {
                format!("refused inside {}", pre.shown)
            };
            let hint = format!("{}={}", c.op.flag(), c.shown);
            self.deny(c.verb, &c.shown, reason, Some(hint));
        }
        result
    }
}

fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

impl preopens::Host for GuardedFs<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.inner)?;
        // wasmtime-wasi returns preopens in the order they were added, which
        // is the order of `Guard::preopens`.
        for (i, (fd, guest)) in dirs.iter().enumerate() {
            if self
                .guard
                .preopens
                .get(i)
                .is_some_and(|p| &p.guest == guest)
            {
                self.tracker.descriptors.insert(
                    fd.rep(),
                    Tracked {
                        guest: guest.clone(),
                        preopen: i,
                    },
                );
            }
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
        fs::HostDescriptor::set_size(&mut self.inner, fd, size)
    }

    fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        a: fs::NewTimestamp,
        m: fs::NewTimestamp,
    ) -> FsResult<()> {
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
        fs::HostDescriptor::write(&mut self.inner, fd, buf, offset)
    }

    fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DirectoryEntryStream>> {
        let filtered = self
            .tracker
            .descriptors
            .get(&fd.rep())
            .filter(|t| {
                let pre = &self.guard.preopens[t.preopen];
                pre.only.is_some() && t.guest == pre.guest
            })
            .map(|t| t.preopen);
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
        let c = self.check(fd.rep(), &path, FsOp::Write, "create directory")?;
        let r = fs::HostDescriptor::create_directory_at(&mut self.inner, fd, path);
        self.after(&c, r)
    }

    fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<fs::DescriptorStat> {
        fs::HostDescriptor::stat(&mut self.inner, fd)
    }

    fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
    ) -> FsResult<fs::DescriptorStat> {
        let c = self.check(fd.rep(), &path, FsOp::Read, "stat")?;
        let r = fs::HostDescriptor::stat_at(&mut self.inner, fd, pf, path);
        self.after(&c, r)
    }

    fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
        a: fs::NewTimestamp,
        m: fs::NewTimestamp,
    ) -> FsResult<()> {
        let c = self.check(fd.rep(), &path, FsOp::Write, "change times of")?;
        let r = fs::HostDescriptor::set_times_at(&mut self.inner, fd, pf, path, a, m);
        self.after(&c, r)
    }

    fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_pf: PathFlags,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // A hard link makes the file writable wherever the new name is, so
        // the source must be writable too.
        self.check(fd.rep(), &old_path, FsOp::Write, "link from")?;
        let c = self.check(new_fd.rep(), &new_path, FsOp::Write, "link to")?;
        let r =
            fs::HostDescriptor::link_at(&mut self.inner, fd, old_pf, old_path, new_fd, new_path);
        self.after(&c, r)
    }

    fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let writes = flags.contains(DescriptorFlags::WRITE)
            || oflags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE)
            || flags.contains(DescriptorFlags::MUTATE_DIRECTORY);
        let (op, verb) = if writes {
            (FsOp::Write, "write to")
        } else {
            (FsOp::Read, "read")
        };
        let c = self.check(fd.rep(), &path, op, verb)?;
        let r = fs::HostDescriptor::open_at(&mut self.inner, fd, pf, path, oflags, flags);
        let r = self.after(&c, r);
        if let (Ok(new), Some(c)) = (&r, c) {
            self.tracker.descriptors.insert(
                new.rep(),
                Tracked {
                    guest: c.guest,
                    preopen: c.preopen,
                },
            );
        }
        r
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.tracker.descriptors.remove(&fd.rep());
        fs::HostDescriptor::drop(&mut self.inner, fd)
    }

    fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        let c = self.check(fd.rep(), &path, FsOp::Read, "read link")?;
        let r = fs::HostDescriptor::readlink_at(&mut self.inner, fd, path);
        self.after(&c, r)
    }

    fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let c = self.check(fd.rep(), &path, FsOp::Write, "remove")?;
        let r = fs::HostDescriptor::remove_directory_at(&mut self.inner, fd, path);
        self.after(&c, r)
    }

    fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old: String,
        new_fd: Resource<Descriptor>,
        new: String,
    ) -> FsResult<()> {
        self.check(fd.rep(), &old, FsOp::Write, "rename")?;
        let c = self.check(new_fd.rep(), &new, FsOp::Write, "rename to")?;
        let r = fs::HostDescriptor::rename_at(&mut self.inner, fd, old, new_fd, new);
        self.after(&c, r)
    }

    fn symlink_at(&mut self, fd: Resource<Descriptor>, src: String, dest: String) -> FsResult<()> {
        let c = self.check(fd.rep(), &dest, FsOp::Write, "create link")?;
        let r = fs::HostDescriptor::symlink_at(&mut self.inner, fd, src, dest);
        self.after(&c, r)
    }

    fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let c = self.check(fd.rep(), &path, FsOp::Write, "remove")?;
        let r = fs::HostDescriptor::unlink_file_at(&mut self.inner, fd, path);
        self.after(&c, r)
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<streams::InputStream>> {
        fs::HostDescriptor::read_via_stream(&mut self.inner, fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<streams::OutputStream>> {
        fs::HostDescriptor::write_via_stream(&mut self.inner, fd, offset)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<streams::OutputStream>> {
        fs::HostDescriptor::append_via_stream(&mut self.inner, fd)
    }

    fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        fs::HostDescriptor::is_same_object(&mut self.inner, a, b)
    }

    fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<fs::MetadataHashValue> {
        fs::HostDescriptor::metadata_hash(&mut self.inner, fd)
    }

    fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        pf: PathFlags,
        path: String,
    ) -> FsResult<fs::MetadataHashValue> {
        let c = self.check(fd.rep(), &path, FsOp::Read, "stat")?;
        let r = fs::HostDescriptor::metadata_hash_at(&mut self.inner, fd, pf, path);
        self.after(&c, r)
    }
}

impl fs::HostDirectoryEntryStream for GuardedFs<'_> {
    fn read_directory_entry(
        &mut self,
        stream: Resource<DirectoryEntryStream>,
    ) -> FsResult<Option<fs::DirectoryEntry>> {
        let Some(&p) = self.tracker.filtered_streams.get(&stream.rep()) else {
            return fs::HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream);
        };
        // A file grant shows its own name in the listing, never a neighbour's.
        let names = self.guard.preopens[p].only.as_deref().unwrap_or_default();
        loop {
            let entry = fs::HostDirectoryEntryStream::read_directory_entry(
                &mut self.inner,
                borrow(&stream),
            )?;
            match entry {
                Some(e) if !names.contains(&e.name) => continue,
                other => return Ok(other),
            }
        }
    }

    fn drop(&mut self, stream: Resource<DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.tracker.filtered_streams.remove(&stream.rep());
        fs::HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

//! Copying, in a few calls, the pages of a memory snapshot that every run
//! writes.
//!
//! wasmtime maps a component's memory snapshot from its compiled file,
//! copy-on-write. A run of Python then writes about 340 of its pages (its
//! entry point and the objects whose reference counts it touches), and each
//! first write is a fault that copies one page; many of those pages were
//! mapped by an earlier read, so they fault twice. On this kind of machine
//! a fault costs 2 to 6 us; `MADV_POPULATE_WRITE` over a range makes the
//! same copies for about 1.1 us a page. (Populating the pages a run only
//! reads was measured too, when one read fault mapped 16 pages, and was
//! slower than the faults. Since then a read fault in the snapshot maps
//! only the page read, see [`map_only_pages_read`]; populating its pages
//! read saved 234 faults a run and no time, see the README.)
//!
//! Before a program's first run on a machine, the sandbox runs it once more
//! with minimal arguments and nothing granted, and reads from
//! `/proc/self/pagemap` which pages of the snapshot that run wrote (they are
//! private copies now). That profile lies beside the compiled file in
//! capsa's cache. Every later run copies those pages as soon as its
//! instance exists. A profile taken from a user's program would hold that
//! program's pages too: a first run that built 20,000 objects wrote 3,444
//! pages, and every later `print` would pay for them.
//!
//! None of this changes what a guest sees: a copied page holds what the
//! fault would have put there. Nothing here can fail a run; every range is
//! checked against the mapping it was found for.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// The system's page size: what `/proc/self/pagemap` counts in.
#[cfg(target_os = "linux")]
fn page() -> usize {
    rustix::param::page_size()
}

/// The pages of one memory snapshot a run wrote, by index from the start
/// of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// Where the snapshot lies in the compiled file, which tells it apart
    /// from the file's other snapshots.
    pub file_offset: u64,
    /// The snapshot's length in pages.
    pub pages: u32,
    pub written: Vec<Range<u32>>,
}

/// A snapshot mapped into this process, copy-on-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub len: usize,
    pub file_offset: u64,
}

/// The profile file for compiled code at `cwasm`.
pub fn profile_path(cwasm: &Path) -> PathBuf {
    cwasm.with_extension("pages")
}

impl Profile {
    /// Reads a profile file; `None` for anything malformed.
    pub fn parse(text: &str) -> Option<Profile> {
        let mut lines = text.lines();
        if lines.next()? != "capsa-pages 1" {
            return None;
        }
        let (offset, pages) = lines.next()?.split_once(' ')?;
        let (file_offset, pages): (u64, u32) = (offset.parse().ok()?, pages.parse().ok()?);
        let mut written: Vec<Range<u32>> = Vec::new();
        for r in lines.next()?.split(' ').filter(|s| !s.is_empty()) {
            let (a, b) = r.split_once('-')?;
            let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
            // Sorted, disjoint, inside the snapshot.
            if a >= b || b > pages || written.last().is_some_and(|l| l.end > a) {
                return None;
            }
            written.push(a..b);
        }
        lines.next().is_none().then_some(Profile {
            file_offset,
            pages,
            written,
        })
    }

    pub fn render(&self) -> String {
        let ranges: Vec<String> = self
            .written
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        format!(
            "capsa-pages 1\n{} {}\n{}\n",
            self.file_offset,
            self.pages,
            ranges.join(" ")
        )
    }

    /// From one flag per page: written or not.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn from_flags(file_offset: u64, written: &[bool]) -> Profile {
        let mut p = Profile {
            file_offset,
            pages: written.len() as u32,
            written: Vec::new(),
        };
        let mut i = 0;
        while i < written.len() {
            let mut j = i + 1;
            while j < written.len() && written[j] == written[i] {
                j += 1;
            }
            if written[i] {
                p.written.push(i as u32..j as u32);
            }
            i = j;
        }
        p
    }

    /// How many pages the profile holds.
    pub fn len(&self) -> u32 {
        self.written.iter().map(|r| r.end - r.start).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }
}

/// A compiled file as this process knows it: who it is (to find where it
/// is mapped) and the profile of its snapshot. A warm process reads this
/// once per program, not once per run: what it mapped stays the same file
/// (the same inode) even if its name is replaced meanwhile, and the profile
/// only ever changes speed.
#[derive(Debug, Default)]
pub struct Known {
    /// The file's inode and canonical path, as `/proc/self/maps` shows them.
    file: Option<(u64, String)>,
    profile: Option<Profile>,
    /// A profile file is there but cannot be used (malformed, not a small
    /// regular file).
    unusable: bool,
    /// Whether a run found the profile not to fit its snapshot.
    misfit: std::sync::atomic::AtomicBool,
}

impl Known {
    /// Who `cwasm` is, with no profile (for the minimal run, which records
    /// one).
    pub fn of(cwasm: &Path) -> Known {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let file = std::fs::metadata(cwasm)
                .ok()
                .zip(std::fs::canonicalize(cwasm).ok())
                .and_then(|(meta, path)| Some((meta.ino(), path.to_str()?.to_string())));
            Known {
                file,
                ..Known::default()
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = cwasm;
            Known::default()
        }
    }

    /// Who `cwasm` (in the cache at `root`) is, and its profile if there is
    /// a usable one.
    pub fn read(root: &Path, cwasm: &Path) -> Known {
        let mut k = Known::of(cwasm);
        if k.file.is_some() {
            let file = profile_path(cwasm);
            k.profile = read_profile(root, &file);
            k.unusable = k.profile.is_none() && std::fs::symlink_metadata(&file).is_ok();
        }
        k
    }

    /// After instantiation: the snapshot mapped from the file, the largest
    /// copy-on-write mapping of it. `None` if there is none, or if more
    /// than one mapping could be it.
    pub fn find(&self) -> Option<Mapping> {
        let (ino, path) = self.file.as_ref()?;
        let maps = mappings(*ino, path);
        let main = *maps.iter().max_by_key(|m| m.len)?;
        let alike = maps
            .iter()
            .filter(|m| m.file_offset == main.file_offset)
            .count();
        (alike == 1).then_some(main)
    }

    /// Copies the pages of `m` the profile holds, if there is one for it.
    /// `false` when there is a profile that cannot be used, or one for
    /// another layout of the snapshot (recorded with another page size,
    /// say): that only costs speed, until it is recorded again.
    pub fn populate(&self, m: &Mapping) -> bool {
        match &self.profile {
            Some(p) => populate(m, p),
            None => !self.unusable,
        }
    }

    /// `true` only the first time it is asked: for what is done once when
    /// the profile does not fit or cannot be used.
    pub fn first_misfit(&self) -> bool {
        !self.misfit.swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The copy-on-write mappings in this process of the file with inode `ino`
/// at canonical `path`: its memory snapshots (the code is mapped
/// read-only). Told by inode and path: the device `stat` gives differs from
/// the one the maps show on btrfs.
#[cfg(target_os = "linux")]
fn mappings(ino: u64, path: &str) -> Vec<Mapping> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(|line| {
            let mut f = line.splitn(6, ' ');
            let (range, perms, offset, _dev, inode, name) = (
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?.trim_start(),
            );
            // A file whose name was replaced since it was mapped shows as
            // deleted; its inode, pinned by the mapping, still tells it.
            let named = name == path || name.strip_suffix(" (deleted)") == Some(path);
            if perms != "rw-p" || !named || inode.parse::<u64>().ok()? != ino {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            Some(Mapping {
                start: a,
                len: b.checked_sub(a)?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
            })
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn mappings(_ino: u64, _path: &str) -> Vec<Mapping> {
    Vec::new()
}

#[cfg(target_os = "linux")]
const MADV_POPULATE_WRITE: i32 = 23;

impl Profile {
    /// Whether this profile is for the snapshot mapped as `m`.
    pub fn fits(&self, m: &Mapping) -> bool {
        #[cfg(target_os = "linux")]
        let page = page();
        #[cfg(not(target_os = "linux"))]
        let page = 4096;
        self.file_offset == m.file_offset && (self.pages as usize).checked_mul(page) == Some(m.len)
    }
}

/// Copies the pages `profile` holds, if it is for `m`; `false` if it is
/// not.
#[cfg(target_os = "linux")]
pub fn populate(m: &Mapping, profile: &Profile) -> bool {
    let page = page();
    if !profile.fits(m) {
        return false;
    }
    let ranges: Vec<libc::iovec> = profile
        .written
        .iter()
        .map(|r| (r.start as usize * page, r.end as usize * page))
        .filter(|&(a, b)| a < b && b <= m.len)
        .map(|(a, b)| libc::iovec {
            iov_base: (m.start + a) as *mut libc::c_void,
            iov_len: b - a,
        })
        .collect();
    for r in populate_at_once(&ranges) {
        // SAFETY: the range lies inside this private, writable mapping;
        // populating it makes the copies a write fault would make, with
        // the same contents. An older kernel refuses the advice.
        unsafe { libc::madvise(r.iov_base, r.iov_len, MADV_POPULATE_WRITE) };
    }
    true
}

/// Populates `ranges` with one `process_madvise` call per 1,024 of them
/// instead of a `madvise` each (a run of Python's profile holds over 200):
/// Linux 6.13 and later take any advice for the calling process itself.
/// Returns the ranges left to do one by one, all of them on a kernel that
/// refuses.
#[cfg(target_os = "linux")]
fn populate_at_once(ranges: &[libc::iovec]) -> &[libc::iovec] {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    static SELF: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    // A kernel that refused once (before 6.13, or a seccomp filter) is not
    // asked again.
    static REFUSED: AtomicBool = AtomicBool::new(false);
    const IOV_MAX: usize = 1024;
    if REFUSED.load(Ordering::Relaxed) {
        return ranges;
    }
    let me = SELF.get_or_init(|| {
        // SAFETY: a plain system call; a pidfd is opened close-on-exec.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        // SAFETY: a descriptor just opened, owned by nothing else.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    });
    let Some(me) = me else {
        return ranges;
    };
    let mut rest = ranges;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(IOV_MAX)];
        // SAFETY: as for `madvise` above, for each range; the kernel reads
        // `chunk` only.
        let done = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                me.as_raw_fd(),
                chunk.as_ptr(),
                chunk.len(),
                MADV_POPULATE_WRITE,
                0,
            )
        };
        let Ok(mut left) = usize::try_from(done) else {
            let refused = std::io::Error::last_os_error().raw_os_error();
            if matches!(refused, Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)) {
                REFUSED.store(true, Ordering::Relaxed);
            }
            break;
        };
        // The ranges wholly done; a short count stops at the first one not.
        let whole = chunk
            .iter()
            .take_while(|r| {
                let fits = left >= r.iov_len;
                left -= if fits { r.iov_len } else { 0 };
                fits
            })
            .count();
        rest = &rest[whole..];
        if whole < chunk.len() {
            break;
        }
    }
    rest
}

/// Makes a read fault in `m` map the page read and no more; `false` where
/// the kernel cannot (before Linux 6.7, or where `userfaultfd` is filtered
/// out, as in Docker's default seccomp profile), which only costs memory.
///
/// A read fault in a mapping of a file also maps every page around it that
/// is in the page cache: 64 KiB of "fault-around" (the system-wide
/// `fault_around_bytes`, which `MADV_RANDOM` does not change). Those pages
/// count in the process's resident set. A run of Python reads about 1 MiB
/// of its snapshot in scattered places, and fault-around made that 6 to 7
/// MiB: a third of the peak of a `hello.py`. Faulting around is left out
/// for a mapping registered with a `userfaultfd` for write protection, so
/// the snapshot's mapping is registered with one: asynchronous write
/// protection (Linux 6.7), which any kind of memory may be registered for
/// and in which the kernel resolves every fault itself. No page is ever
/// write-protected, so no fault is reported and nothing else changes: a
/// write copies the page as before, a read maps the file's page. It made
/// no difference to start-up (measured in the README). The descriptor is
/// opened once per process, close-on-exec, for faults from user space only
/// (which needs no privilege), and kept: closing it would undo the
/// registration.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn map_only_pages_read(m: &Mapping) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioRegister {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    // From <linux/userfaultfd.h>.
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    const UFFD_API: u64 = 0xaa;
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    const UFFDIO_API: libc::Ioctl = libc::_IOWR::<UffdioApi>(0xaa, 0x3f);
    const UFFDIO_REGISTER: libc::Ioctl = libc::_IOWR::<UffdioRegister>(0xaa, 0x00);
    static UFFD: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    let uffd = UFFD.get_or_init(|| {
        // SAFETY: a plain system call, opening a descriptor close-on-exec.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
        // SAFETY: a descriptor just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC,
            ioctls: 0,
        };
        // SAFETY: the kernel reads and writes `api`, which outlives the
        // call. A kernel without the feature refuses (EINVAL).
        let agreed = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) };
        (agreed == 0 && api.features & UFFD_FEATURE_WP_ASYNC != 0).then_some(fd)
    });
    let Some(uffd) = uffd else {
        return false;
    };
    let mut register = UffdioRegister {
        start: m.start as u64,
        len: m.len as u64,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: as above; registering only marks the mapping (no page is
    // write-protected by it), and fails on a range that is not one.
    unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut register) == 0 }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub fn map_only_pages_read(_m: &Mapping) -> bool {
    false
}

/// Whether this process may turn fault-around off (see
/// [`map_only_pages_read`]): a kernel of 6.7 or later that lets it open a
/// `userfaultfd` with asynchronous write protection, tried on a page
/// mapped for the purpose. For the tests, to tell a kernel that cannot
/// from a registration that does not work.
pub fn can_map_only_pages_read() -> bool {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};
        let len = page();
        // SAFETY: a new private mapping at an address the kernel picks,
        // unmapped below; nothing else refers to it.
        let Ok(at) = (unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE,
            )
        }) else {
            return false;
        };
        let can = map_only_pages_read(&Mapping {
            start: at as usize,
            len,
            file_offset: 0,
        });
        // SAFETY: the mapping made above.
        let _ = unsafe { munmap(at, len) };
        can
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    false
}

#[cfg(not(target_os = "linux"))]
pub fn populate(m: &Mapping, profile: &Profile) -> bool {
    profile.fits(m)
}

/// Which pages of `m` are written (private copies, no longer mapped from
/// the file), from `/proc/self/pagemap`.
#[cfg(target_os = "linux")]
pub fn written(m: &Mapping) -> Option<Profile> {
    let page = page();
    let flags: Vec<bool> = pagemap(m.start, m.len / page)
        .ok()?
        .iter()
        // Present, and not a page of the file: a private copy.
        .map(|e| e >> 63 & 1 == 1 && e >> 61 & 1 == 0)
        .collect();
    Some(Profile::from_flags(m.file_offset, &flags))
}

/// The `/proc/self/pagemap` entries of the `pages` pages from `start` (a
/// page-aligned address in this process): bit 63 present, 62 swapped out,
/// 61 a page of a file or shared.
#[cfg(target_os = "linux")]
pub(crate) fn pagemap(start: usize, pages: usize) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let page = page();
    let file = std::fs::File::open("/proc/self/pagemap")?;
    let mut raw = vec![0u8; pages * 8];
    file.read_exact_at(&mut raw, (start / page * 8) as u64)?;
    Ok(raw
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap_or_default()))
        .collect())
}

#[cfg(not(target_os = "linux"))]
pub fn written(_m: &Mapping) -> Option<Profile> {
    None
}

/// A profile file is small: a larger one is not capsa's.
const MAX_PROFILE: u64 = 256 << 10;

fn read_profile(root: &Path, file: &Path) -> Option<Profile> {
    if !crate::load::trusted(root, file) {
        return None;
    }
    let bytes = crate::load::read_small_file(file, MAX_PROFILE)?;
    Profile::parse(std::str::from_utf8(&bytes).ok()?)
}

/// After the minimal run: records the pages it wrote in `m` as the profile
/// for `cwasm`. Without a snapshot found, an empty profile is recorded, so
/// that later runs neither populate nor run the minimal run again.
pub fn learn(root: &Path, cwasm: &Path, m: Option<&Mapping>) {
    let profile = m.and_then(written).unwrap_or_default();
    let _ = crate::load::store(root, &profile_path(cwasm), profile.render().as_bytes());
}

/// Removes the profile for `cwasm` (in the cache at `root`): one that does
/// not fit its snapshot, so that the next process records it again.
pub fn forget(root: &Path, cwasm: &Path) {
    let file = profile_path(cwasm);
    if crate::load::trusted(root, &file) {
        let _ = std::fs::remove_file(&file);
    }
}

/// Whether a minimal run should record a profile for `cwasm`: on Linux,
/// when there is none and one can be stored.
pub fn wanted(root: &Path, cwasm: &Path) -> bool {
    let file = profile_path(cwasm);
    cfg!(target_os = "linux")
        && std::fs::symlink_metadata(&file).is_err()
        && crate::load::can_store(root, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh private, writable mapping of `len` bytes of `file` from
    /// `offset`, as wasmtime maps a snapshot; the caller unmaps it.
    #[cfg(target_os = "linux")]
    fn map_private(file: &std::fs::File, len: usize, offset: usize) -> *mut std::ffi::c_void {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        // SAFETY: a new mapping at an address the kernel picks, of a file
        // the test owns; nothing else refers to that memory.
        unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
                file,
                offset as u64,
            )
            .unwrap()
        }
    }

    /// The copy-on-write mappings of the file at `path`, as `Known` finds
    /// them.
    #[cfg(target_os = "linux")]
    fn mappings_of(path: &Path) -> Vec<Mapping> {
        let (ino, name) = Known::of(path).file.expect("the file is there");
        mappings(ino, &name)
    }

    #[test]
    fn a_profile_reads_back_what_it_wrote_and_refuses_ranges_outside() {
        let p = Profile::from_flags(4096, &[false, true, true, false, false, true, true, true]);
        assert_eq!(p.written, vec![1..3, 5..8]);
        assert_eq!(p.len(), 5);
        assert_eq!(Profile::parse(&p.render()), Some(p.clone()));
        let empty = Profile::from_flags(0, &[false; 3]);
        assert_eq!(Profile::parse(&empty.render()), Some(empty));
        for bad in [
            "capsa-pages 1\n0 8\n1-9\n",
            "capsa-pages 1\n0 8\n3-3\n",
            "capsa-pages 1\n0 8\n4-2\n",
            "capsa-pages 1\n0 8\n2-4 3-5\n",
            "capsa-pages 1\n0 8\n2-4 x\n",
            "capsa-pages 2\n0 8\n\n",
            "capsa-pages 1\n0\n\n",
            "capsa-pages 1\n0 8\n1-2\nmore\n",
            "capsa-pages 1\n0 8\n",
            "",
        ] {
            assert_eq!(Profile::parse(bad), None, "{bad:?}");
        }
    }

    /// Only a small regular file is read as a profile: a FIFO (which would
    /// block), a device, a directory, a link or a large file is passed over
    /// at once.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_a_small_regular_file_is_read_as_a_profile() {
        let root = std::env::temp_dir().join(format!("capsa-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("x.pages");
        let good = Profile::from_flags(0, &[true, false, true]);
        std::fs::write(&file, good.render()).unwrap();
        assert_eq!(read_profile(&root, &file), Some(good.clone()));
        std::fs::remove_file(&file).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &file,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(read_profile(&root, &file), None);
        std::fs::remove_file(&file).unwrap();
        let mut big = good.render();
        big.push_str(&" ".repeat(MAX_PROFILE as usize));
        std::fs::write(&file, big).unwrap();
        assert_eq!(read_profile(&root, &file), None);
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert_eq!(read_profile(&root, &file), None);
        std::fs::remove_dir(&file).unwrap();
        std::fs::write(root.join("real"), good.render()).unwrap();
        std::os::unix::fs::symlink(root.join("real"), &file).unwrap();
        assert_eq!(read_profile(&root, &file), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A private mapping of a file, as wasmtime maps a snapshot: the pages
    /// written are seen as written, and populating that profile in a fresh
    /// mapping copies exactly those pages, with the file's contents; the
    /// file itself is unchanged.
    #[cfg(target_os = "linux")]
    #[test]
    fn pages_written_are_seen_and_copied_with_the_files_contents() {
        use rustix::mm::munmap;
        let dir = std::env::temp_dir().join(format!("capsa-prefault-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image.cwasm");
        let page = page();
        let bytes: Vec<u8> = (0..16 * page).map(|i| (i / page) as u8 + 1).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map = |offset: usize| map_private(&file, 8 * page, offset);
        let base = map(4 * page);
        let found = mappings_of(&path);
        assert_eq!(
            found,
            vec![Mapping {
                start: base as usize,
                len: 8 * page,
                file_offset: (4 * page) as u64
            }]
        );
        let m = found[0];
        // SAFETY: `m` is the mapping made above, alive until unmapped.
        let mem = unsafe { std::slice::from_raw_parts_mut(m.start as *mut u8, m.len) };
        mem[page] = 0xaa;
        mem[6 * page + 9] = 0xbb;
        assert_eq!(std::hint::black_box(mem[3 * page]), 8);
        let seen = written(&m).unwrap();
        assert_eq!(seen.written, vec![1..2, 6..7]);
        unsafe { munmap(base, 8 * page).unwrap() };

        // A fresh mapping, populated from the profile: those pages are
        // copies before any write, holding the file's bytes.
        let base = map(4 * page);
        let m = mappings_of(&path)[0];
        assert!(written(&m).unwrap().is_empty());
        populate(&m, &seen);
        assert_eq!(written(&m).unwrap(), seen);
        let mem = unsafe { std::slice::from_raw_parts(m.start as *const u8, m.len) };
        assert_eq!((mem[page], mem[6 * page + 9], mem[7 * page]), (6, 11, 12));
        unsafe { munmap(base, 8 * page).unwrap() };

        // A profile for another part of the file copies nothing.
        let base = map(0);
        let m = mappings_of(&path)[0];
        populate(&m, &seen);
        assert!(written(&m).unwrap().is_empty());
        unsafe { munmap(base, 8 * page).unwrap() };
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Reads in a mapping made to map only the pages read map one page
    /// each, where the same reads in a plain mapping of the same file map
    /// the pages around them too (fault-around); writes and populating
    /// still copy the file's pages, and the file is unchanged.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn a_read_maps_only_the_page_read() {
        use rustix::mm::munmap;
        use std::io::Write;
        if !can_map_only_pages_read() {
            // CI runs on a kernel that can, and says so.
            assert!(
                std::env::var_os("CAPSA_TEST_FAULT_AROUND").is_none(),
                "userfaultfd with asynchronous write protection refused"
            );
            eprintln!("skipped: no userfaultfd with asynchronous write protection here");
            return;
        }
        let dir = std::env::temp_dir().join(format!("capsa-fault-around-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image.cwasm");
        let page = page();
        let pages = 64;
        let bytes: Vec<u8> = (0..pages * page).map(|i| (i / page) as u8 + 1).collect();
        // A page per write: the page cache holds it in single pages, so
        // that a plain read fault maps its neighbours and not a folio.
        let mut f = std::fs::File::create(&path).unwrap();
        for piece in bytes.chunks(page) {
            f.write_all(piece).unwrap();
        }
        f.sync_all().unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // Reads at pages 8, 24, 40, 56: each in the middle of 16.
        let read_some = |m: &Mapping| -> Vec<usize> {
            // SAFETY: `m` is a live mapping made by this test.
            let mem = unsafe { std::slice::from_raw_parts(m.start as *const u8, m.len) };
            for p in (8..pages).step_by(16) {
                assert_eq!(std::hint::black_box(mem[p * page + 5]), p as u8 + 1);
            }
            pagemap(m.start, pages)
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(_, e)| *e >> 63 & 1 == 1)
                .map(|(i, _)| i)
                .collect()
        };

        let base = map_private(&file, pages * page, 0);
        let plain = mappings_of(&path)[0];
        let around = read_some(&plain);
        unsafe { munmap(base, pages * page).unwrap() };
        if around.len() == 4 {
            eprintln!("this kernel does not fault around: only the registration is checked");
        }

        let base = map_private(&file, pages * page, 0);
        let m = mappings_of(&path)[0];
        assert!(
            map_only_pages_read(&m),
            "the kernel refused the registration"
        );
        assert!(map_only_pages_read(&m), "a second registration");
        assert_eq!(read_some(&m), vec![8, 24, 40, 56]);
        // Writes copy the file's page; populating copies too.
        // SAFETY: as above.
        let mem = unsafe { std::slice::from_raw_parts_mut(m.start as *mut u8, m.len) };
        mem[3 * page] ^= 0xff;
        populate(
            &m,
            &Profile::from_flags(0, &(0..pages).map(|p| p == 30).collect::<Vec<_>>()),
        );
        assert_eq!(written(&m).unwrap().written, vec![3..4, 30..31]);
        assert_eq!(
            (mem[3 * page], mem[30 * page], mem[31 * page]),
            (!4, 31, 32)
        );
        unsafe { munmap(base, pages * page).unwrap() };
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A profile recorded for another layout of the snapshot (another page
    /// size, another length) copies nothing and says so, once; `forget`
    /// then removes it from a private cache, and from nowhere else.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_profile_that_does_not_fit_is_forgotten() {
        use std::os::unix::fs::PermissionsExt;
        let page = page();
        let p = Profile::from_flags(4 * page as u64, &[false, true, true, false]);
        let at = |len| Mapping {
            start: 0,
            len,
            file_offset: 4 * page as u64,
        };
        assert!(p.fits(&at(4 * page)));
        let known = Known {
            file: None,
            profile: Some(p),
            ..Known::default()
        };
        // Nothing is mapped at 0: populating there would fail the test.
        assert!(!known.populate(&at(8 * page)));
        assert!(!known.populate(&Mapping {
            file_offset: 0,
            ..at(4 * page)
        }));
        assert!(known.first_misfit());
        assert!(!known.first_misfit());
        assert!(
            Known::default().populate(&at(4 * page)),
            "no profile: nothing to redo"
        );

        let root = std::env::temp_dir().join(format!("capsa-forget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("code")).unwrap();
        for d in [&root, &root.join("code")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let cwasm = root.join("code/x.cwasm");
        std::fs::write(profile_path(&cwasm), "capsa-pages 1\n0 1\n\n").unwrap();
        std::fs::set_permissions(root.join("code"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        forget(&root, &cwasm);
        assert!(
            profile_path(&cwasm).exists(),
            "a cache others may write is left alone"
        );
        std::fs::set_permissions(root.join("code"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        forget(&root, &cwasm);
        assert!(!profile_path(&cwasm).exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A file replaced under its name after it was mapped (the maps then
    /// show it as deleted) is still found by what was known of it before,
    /// and the new file by that name is not taken for it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_file_replaced_under_its_name_is_still_found() {
        use rustix::mm::munmap;
        let dir = std::env::temp_dir().join(format!("capsa-prefault-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image.cwasm");
        let page = page();
        std::fs::write(&path, vec![7u8; 4 * page]).unwrap();
        let known = Known::of(&path);
        let file = std::fs::File::open(&path).unwrap();
        let base = map_private(&file, 4 * page, 0);
        let replacement = dir.join("new");
        std::fs::write(&replacement, vec![9u8; 4 * page]).unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        let found = known.find();
        let fresh = Known::of(&path).find();
        unsafe { munmap(base, 4 * page).unwrap() };
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            Some(Mapping {
                start: base as usize,
                len: 4 * page,
                file_offset: 0
            })
        );
        assert_eq!(fresh, None, "the new file is not mapped");
    }

    /// Ranges go to the kernel 1,024 at a time; where one cannot be
    /// populated (here a page made inaccessible), the call stops there and
    /// hands back the ranges from that one on. A kernel before 6.13 hands
    /// them all back untouched, for `populate` to do one by one.
    #[cfg(target_os = "linux")]
    #[test]
    fn ranges_are_populated_in_batches_up_to_the_first_that_fails() {
        use rustix::mm::{MprotectFlags, mprotect, munmap};
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let page = page();
        let (pages, hole) = (2100, 1500);
        let dir = std::env::temp_dir().join(format!("capsa-batches-{}", std::process::id()));
        let _remove = Remove(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image.cwasm");
        std::fs::write(&path, vec![7u8; pages * page]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let base = map_private(&file, pages * page, 0);
        // SAFETY: one page of the mapping just made, made inaccessible
        // (still reserved: nothing else can be mapped there meanwhile).
        unsafe { mprotect(base.byte_add(hole * page), page, MprotectFlags::empty()).unwrap() };
        let ranges: Vec<libc::iovec> = (0..pages)
            .map(|i| libc::iovec {
                iov_base: base.wrapping_byte_add(i * page),
                iov_len: page,
            })
            .collect();
        let rest = populate_at_once(&ranges);
        let m = |start: usize, n: usize| Mapping {
            start: base as usize + start * page,
            len: n * page,
            file_offset: 0,
        };
        if !kernel_populates_by_process_madvise(&file) {
            eprintln!("this kernel takes no process_madvise(MADV_POPULATE_WRITE)");
            assert_eq!(rest.len(), pages);
        } else {
            assert_eq!(rest.len(), pages - hole);
            assert_eq!(rest[0].iov_base, ranges[hole].iov_base);
            assert_eq!(written(&m(0, hole)).unwrap().len(), hole as u32);
        }
        assert!(written(&m(hole + 1, pages - hole - 1)).unwrap().is_empty());
        // SAFETY: the mapping made above.
        unsafe { munmap(base, pages * page).unwrap() };
    }

    /// Whether this kernel populates a page of this process, asked
    /// directly on a mapping of its own.
    #[cfg(target_os = "linux")]
    fn kernel_populates_by_process_madvise(file: &std::fs::File) -> bool {
        use rustix::mm::munmap;
        let page = page();
        // SAFETY: a fresh one-page private mapping, unmapped below; the
        // calls only populate it.
        unsafe {
            let one = map_private(file, page, 0);
            let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
            let iov = libc::iovec {
                iov_base: one,
                iov_len: page,
            };
            let done = libc::syscall(
                libc::SYS_process_madvise,
                pidfd,
                &iov,
                1,
                MADV_POPULATE_WRITE,
                0,
            );
            libc::close(pidfd as i32);
            munmap(one, page).unwrap();
            done == page as i64
        }
    }
}

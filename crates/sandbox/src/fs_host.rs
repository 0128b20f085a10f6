//! The few calls the walk makes on the host, relative to a directory that is
//! open, on each system: look at a name without following it, open a
//! directory on the way as the object it is, read a link, go up one level,
//! and say what an open object is (its device and file number); and open
//! the object a name leads to without reading it, to stat it or set its
//! times once it is known to be the one checked.
//!
//! Unix does this with `openat(O_PATH|O_NOFOLLOW)` and `fstat`. Windows does
//! it with the same `cap-primitives` calls wasmtime-wasi makes there, and
//! identifies an object by its volume serial number and file index, read
//! from a handle that is open on it. On Windows a name holding `\` or `:` is
//! refused: the system would take it for a path or a stream, not one name.

use crate::fs_area::Ident;
use crate::fs_walk::Found;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;

/// What an entry of a listing is, a link not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Dir,
    Link,
    Other,
}

pub use imp::*;

/// Whether Windows reads `name` as exactly one name, spelled as it is
/// stored. Refused: `\` (a path), `:` (a stream, a drive), device names
/// (opening `CON` would write to the terminal past capsa's output checks),
/// and a name ending in `.` or a blank, which Windows' path functions strip
/// (`x.` is `x` to them but a missing name to the walk: a rename to `cfg.`
/// would replace a protected `cfg`). Pure, so it is tested everywhere.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn is_plain_windows_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\\', ':'])
        && !name.ends_with(['.', ' '])
        && !is_device_name(name)
}

/// A name Windows takes for a device in any directory: `CON`, `nul`,
/// `COM1.txt`, `lpt3 .log`, `CONOUT$` (before the first dot, blanks trimmed,
/// any case). Pure, so it is tested everywhere.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn is_device_name(name: &str) -> bool {
    let stem = name
        .split('.')
        .next()
        .unwrap_or_default()
        .trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" | "CLOCK$" => true,
        _ => upper
            .strip_prefix("COM")
            .or_else(|| upper.strip_prefix("LPT"))
            .is_some_and(|n| {
                matches!(
                    n,
                    "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_windows_names() {
        for n in ["data", ".git", "a.b", "x y", "é"] {
            assert!(super::is_plain_windows_name(n), "{n}");
        }
        for n in [
            "", "x.", "x ", "...", ". ", "a\\b", "f:s", "C:", "CON", "nul.txt",
        ] {
            assert!(!super::is_plain_windows_name(n), "{n}");
        }
    }

    #[test]
    fn device_names() {
        for n in [
            "CON",
            "con",
            "Nul",
            "nul.txt",
            "COM1",
            "com9.log",
            "LPT3 ",
            "lpt1 .x",
            "CONOUT$",
            "COM¹",
            "aux.tar.gz",
        ] {
            assert!(super::is_device_name(n), "{n}");
        }
        for n in [
            "CONSOLE", "con1", "COM", "COM10", "LPT", "nul_", "data", "", ".con", "x.CON", "¹¹",
            "é",
        ] {
            assert!(!super::is_device_name(n), "{n}");
        }
    }
}

#[cfg(unix)]
mod imp {
    use super::*;
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::SystemTime;

    /// An object opened to be looked at or to have its times set, not read.
    pub type Object = std::fs::File;

    /// A directory the walk holds open.
    pub type Handle = OwnedFd;
    /// A directory the walk reads from.
    pub type DirRef<'a> = std::os::fd::BorrowedFd<'a>;

    pub fn dir_ref(f: &std::fs::File) -> DirRef<'_> {
        f.as_fd()
    }

    pub fn handle_ref(h: &Handle) -> DirRef<'_> {
        h.as_fd()
    }

    /// A second handle on the same directory, as a file wasmtime-wasi can
    /// hold. On Linux it stays a path handle (`O_PATH`): enough for every
    /// `*at` call made from it.
    pub fn handle_file(h: &Handle) -> io::Result<std::fs::File> {
        Ok(std::fs::File::from(h.try_clone()?))
    }

    // `st_dev` and `st_ino` are not `u64` on every Unix (macOS: `i32`).
    #[allow(clippy::unnecessary_cast)]
    fn found(st: &rustix::fs::Stat) -> Found {
        let ft = FileType::from_raw_mode(st.st_mode);
        Found {
            ident: (st.st_dev as u64, st.st_ino as u64),
            is_dir: ft == FileType::Directory,
            is_link: ft == FileType::Symlink,
        }
    }

    /// What `name` in `dir` is, a link not followed.
    pub fn look(dir: DirRef<'_>, name: &str) -> io::Result<Found> {
        Ok(found(&rustix::fs::statat(
            dir,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    /// How a directory on the way is opened: as a path only where Linux
    /// allows it (`O_PATH` needs no read permission), else for reading.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const STEP: OFlags = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const STEP: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY);

    /// Opens `name` in `dir`, a link not followed, and says what was opened;
    /// the handle is `None` unless it is a directory.
    pub fn open_step(dir: DirRef<'_>, name: &str) -> io::Result<(Option<Handle>, Found)> {
        let fd = match rustix::fs::openat(
            dir,
            name,
            STEP | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Without `O_PATH` a link or a file is not opened as a
            // directory: said as what it is, never entered.
            Err(e) if !cfg!(any(target_os = "linux", target_os = "android")) => {
                return match look(dir, name) {
                    Ok(f) if !f.is_dir => Ok((None, f)),
                    _ => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let f = found(&rustix::fs::fstat(&fd)?);
        Ok((f.is_dir.then_some(fd), f))
    }

    /// Opens `name` in `dir` as the object it is (a link itself, not
    /// followed), without reading it or waiting on it, and says what was
    /// opened: to stat it or set its times once it is known to be the
    /// object that was checked, whatever its name is by then. `None` where
    /// no such open exists (`O_PATH` is Linux's): the caller acts by name.
    pub fn open_object(dir: DirRef<'_>, name: &str) -> io::Result<Option<(Object, Found)>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
            let f = found(&rustix::fs::fstat(&fd)?);
            Ok(Some((std::fs::File::from(fd), f)))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = (dir, name);
            Ok(None)
        }
    }

    /// Sets the access and modification times of an object [`open_object`]
    /// opened (a link's own times, if it is a link); `None` leaves one as
    /// it is.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn set_times(
        obj: &Object,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> io::Result<()> {
        let times = rustix::fs::Timestamps {
            last_access: timespec(atime)?,
            last_modification: timespec(mtime)?,
        };
        let flags = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
        match rustix::fs::utimensat(obj, "", &times, flags) {
            // Before Linux 5.8 `utimensat` takes no empty path: the same
            // object by its entry in `/proc`, which leads to it (a link
            // included) and no further.
            Err(rustix::io::Errno::INVAL) => {
                let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(obj));
                let cwd = rustix::fs::CWD;
                Ok(rustix::fs::utimensat(
                    cwd,
                    path.as_str(),
                    &times,
                    AtFlags::empty(),
                )?)
            }
            r => Ok(r?),
        }
    }

    /// Never reached: [`open_object`] opens nothing here.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub fn set_times(
        _obj: &Object,
        _atime: Option<SystemTime>,
        _mtime: Option<SystemTime>,
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// A time for `utimensat`, or "leave it" for `None`.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[allow(clippy::useless_conversion)]
    fn timespec(t: Option<SystemTime>) -> io::Result<rustix::fs::Timespec> {
        let Some(t) = t else {
            return Ok(rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT.into(),
            });
        };
        let since = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(rustix::fs::Timespec {
            tv_sec: since
                .as_secs()
                .try_into()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            tv_nsec: since.subsec_nanos().into(),
        })
    }

    /// The target of the link `name` in `dir`, `/`-separated.
    pub fn read_link(dir: DirRef<'_>, name: &OsStr) -> io::Result<String> {
        let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// Removes the link `name` in `dir`.
    pub fn remove_link(dir: DirRef<'_>, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
    }

    /// Renames `from` in `from_dir` to `to` in `to_dir`, unless `to` exists.
    pub fn rename_noreplace(
        from_dir: DirRef<'_>,
        from: &OsStr,
        to_dir: DirRef<'_>,
        to: &OsStr,
    ) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let flags = rustix::fs::RenameFlags::NOREPLACE;
            Ok(rustix::fs::renameat_with(
                from_dir, from, to_dir, to, flags,
            )?)
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            match rustix::fs::statat(to_dir, to, AtFlags::SYMLINK_NOFOLLOW) {
                Err(rustix::io::Errno::NOENT) => {}
                Ok(_) => return Err(io::ErrorKind::AlreadyExists.into()),
                Err(e) => return Err(e.into()),
            }
            Ok(rustix::fs::renameat(from_dir, from, to_dir, to)?)
        }
    }

    /// Opens the directory `name` in `dir` to list it, a link not followed.
    pub fn open_listing(dir: DirRef<'_>, name: &OsStr) -> io::Result<Handle> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
    }

    /// The entries of a directory open for listing, but `.` and `..`.
    pub fn entries(dir: &Handle) -> io::Result<Vec<(OsString, Entry)>> {
        use std::os::unix::ffi::OsStrExt;
        let mut out = Vec::new();
        let mut listing = rustix::fs::Dir::read_from(dir)?;
        while let Some(e) = listing.read() {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            let ft = match e.file_type() {
                FileType::Unknown => FileType::from_raw_mode(
                    rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
                ),
                ft => ft,
            };
            let kind = match ft {
                FileType::Directory => Entry::Dir,
                FileType::Symlink => Entry::Link,
                _ => Entry::Other,
            };
            out.push((name, kind));
        }
        Ok(out)
    }

    /// The directory above `dir`.
    pub fn parent(dir: DirRef<'_>) -> io::Result<Handle> {
        Ok(rustix::fs::openat(
            dir,
            "..",
            STEP | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    pub fn ident(dir: DirRef<'_>) -> io::Result<Ident> {
        Ok(found(&rustix::fs::fstat(dir)?).ident)
    }

    pub fn ident_of_file(f: &std::fs::File) -> io::Result<Ident> {
        ident(f.as_fd())
    }

    /// Too many links on the way, as the system says it.
    pub fn loop_error() -> io::Error {
        rustix::io::Errno::LOOP.into()
    }

    /// A name on the way is not a directory, as the system says it.
    pub fn not_dir_error() -> io::Error {
        rustix::io::Errno::NOTDIR.into()
    }

    /// An object kept open for the whole run, so that its identity cannot
    /// pass to another file: a file system gives a freed inode number to
    /// the next file made.
    pub type Held = OwnedFd;

    /// Opens the host path `path` (links followed) to hold it, without
    /// reading it or waiting (a FIFO is not waited on), and says what it is.
    pub fn hold(path: &Path) -> io::Result<(Held, Found)> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty())?;
        let f = found(&rustix::fs::fstat(&fd)?);
        Ok((fd, f))
    }

    /// Whether the directory `path` opens as a preopen is opened (for
    /// reading), so that mounting it cannot fail the run.
    pub fn can_open_dir(path: &Path) -> bool {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .is_ok()
    }

    /// Opens the absolute, resolved host path `path` to hold it as
    /// [`hold`] does, but follows no link anywhere on the way: a name
    /// replaced by a link since the path was resolved fails (`ELOOP` or
    /// `ENOTDIR`) instead of leading where the link points.
    pub fn hold_no_links(path: &Path) -> io::Result<(Held, Found)> {
        use std::path::Component;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let (flags, dir) = (
            OFlags::PATH | OFlags::CLOEXEC,
            OFlags::PATH | OFlags::CLOEXEC,
        );
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let (flags, dir) = (
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            OFlags::RDONLY | OFlags::CLOEXEC,
        );
        #[cfg(any(target_os = "linux", target_os = "android"))]
        match rustix::fs::openat2(
            rustix::fs::CWD,
            path,
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
            rustix::fs::ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(fd) => return checked(fd),
            // No openat2 (before Linux 5.6, or filtered): name by name.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
        let mut parts = path.components().peekable();
        if parts.next() != Some(Component::RootDir) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path",
            ));
        }
        let mut fd = rustix::fs::open("/", dir | OFlags::DIRECTORY, Mode::empty())?;
        while let Some(part) = parts.next() {
            let Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a resolved path",
                ));
            };
            let last = parts.peek().is_none();
            let f = if last { flags } else { dir | OFlags::DIRECTORY };
            fd = rustix::fs::openat(&fd, name, f | OFlags::NOFOLLOW, Mode::empty())?;
        }
        checked(fd)
    }

    /// Opens the regular file `name` in the directory at the absolute,
    /// resolved `dir` for reading and writing, made where it does not exist
    /// and never emptied here, following no link on the way nor at `name`:
    /// a name swapped for a link since it was checked fails instead of
    /// leading elsewhere. A FIFO or a device at `name` is refused, never
    /// waited on or written, and so is a file with another name.
    pub fn create_no_links(dir: &Path, name: &OsStr) -> io::Result<std::fs::File> {
        let (dir, found) = hold_no_links(dir)?;
        if !found.is_dir {
            return Err(not_dir_error());
        }
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        // Writing a file that has another name would change that one too:
        // a program may have linked a file of its choice there.
        if st.st_nlink > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the file has another name (a hard link); name a new file",
            ));
        }
        Ok(std::fs::File::from(fd))
    }

    /// What `fd` (opened without following a link) is; a link itself (which
    /// `O_PATH | O_NOFOLLOW` opens) is refused.
    fn checked(fd: OwnedFd) -> io::Result<(Held, Found)> {
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(loop_error());
        }
        Ok((fd, found(&st)))
    }

    /// What the host path `path` is; a link in its last name followed or not.
    pub fn stat_path(path: &Path, follow: bool) -> io::Result<Found> {
        let flags = if follow {
            AtFlags::empty()
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        Ok(found(&rustix::fs::statat(rustix::fs::CWD, path, flags)?))
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use cap_primitives::fs::{self as cp, _WindowsByHandle, FollowSymlinks};
    use std::os::windows::fs::OpenOptionsExt;

    const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
    const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;

    pub type Handle = std::fs::File;
    pub type DirRef<'a> = &'a std::fs::File;

    pub fn dir_ref(f: &std::fs::File) -> DirRef<'_> {
        f
    }

    pub fn handle_ref(h: &Handle) -> DirRef<'_> {
        h
    }

    pub fn handle_file(h: &Handle) -> io::Result<std::fs::File> {
        h.try_clone()
    }

    /// One name of a file, never a path, a stream, a device or another
    /// spelling of a name (see [`is_plain_windows_name`]).
    fn one_name(name: &str) -> io::Result<&Path> {
        if !crate::fs_host::is_plain_windows_name(name) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        Ok(Path::new(name))
    }

    fn found(m: &cp::Metadata) -> io::Result<Found> {
        let (Some(volume), Some(index)) = (m.volume_serial_number(), m.file_index()) else {
            return Err(io::Error::other("no file identity from the handle"));
        };
        Ok(Found {
            ident: (u64::from(volume), index),
            is_dir: m.is_dir(),
            is_link: m.file_type().is_symlink(),
        })
    }

    pub fn look(dir: DirRef<'_>, name: &str) -> io::Result<Found> {
        found(&cp::stat(dir, one_name(name)?, FollowSymlinks::No)?)
    }

    pub fn open_step(dir: DirRef<'_>, name: &str) -> io::Result<(Option<Handle>, Found)> {
        let path = one_name(name)?;
        match cp::open_dir_nofollow(dir, path) {
            // Judged by the handle: what was opened, not what the name was.
            Ok(h) => {
                let f = found(&cp::Metadata::from_file(&h)?)?;
                Ok((f.is_dir.then_some(h), f))
            }
            // A link or a file: said as such, never entered.
            Err(e) => match look(dir, name) {
                Ok(f) if !f.is_dir => Ok((None, f)),
                _ => Err(e),
            },
        }
    }

    pub type Object = std::fs::File;

    /// Not done on Windows yet (see [`hold_no_links`]): the caller acts by
    /// name, after its check.
    pub fn open_object(dir: DirRef<'_>, name: &str) -> io::Result<Option<(Object, Found)>> {
        let _ = (dir, name);
        Ok(None)
    }

    /// Never reached: [`open_object`] opens nothing here.
    pub fn set_times(
        _obj: &Object,
        _atime: Option<std::time::SystemTime>,
        _mtime: Option<std::time::SystemTime>,
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// One name, as [`one_name`] takes it.
    fn one_os_name(name: &OsStr) -> io::Result<&Path> {
        one_name(name.to_str().ok_or(io::ErrorKind::InvalidInput)?)
    }

    pub fn open_listing(dir: DirRef<'_>, name: &OsStr) -> io::Result<Handle> {
        cp::open_dir_nofollow(dir, one_os_name(name)?)
    }

    pub fn rename_noreplace(
        from_dir: DirRef<'_>,
        from: &OsStr,
        to_dir: DirRef<'_>,
        to: &OsStr,
    ) -> io::Result<()> {
        let to = one_os_name(to)?;
        match cp::stat(to_dir, to, FollowSymlinks::No) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(_) => return Err(io::ErrorKind::AlreadyExists.into()),
            Err(e) => return Err(e),
        }
        cp::rename(from_dir, one_os_name(from)?, to_dir, to)
    }

    pub fn entries(dir: &Handle) -> io::Result<Vec<(OsString, Entry)>> {
        let mut out = Vec::new();
        for e in cp::read_base_dir(dir)? {
            let e = e?;
            let ft = e.file_type()?;
            let kind = if ft.is_symlink() {
                Entry::Link
            } else if ft.is_dir() {
                Entry::Dir
            } else {
                Entry::Other
            };
            out.push((e.file_name(), kind));
        }
        Ok(out)
    }

    pub fn read_link(dir: DirRef<'_>, name: &OsStr) -> io::Result<String> {
        let target = cp::read_link_contents(dir, one_os_name(name)?)?;
        // An absolute target (`C:\x`, `\x`, `\\server\x`) is said with a
        // leading `/`, which the walk refuses as leaving the grant.
        if target.has_root()
            || target
                .components()
                .next()
                .is_some_and(|c| matches!(c, std::path::Component::Prefix(_)))
        {
            return Ok(format!("/{}", target.display()));
        }
        Ok(target.to_string_lossy().replace('\\', "/"))
    }

    /// Removes the link `name` in `dir`: a link to a directory is removed
    /// as a directory on Windows.
    pub fn remove_link(dir: DirRef<'_>, name: &OsStr) -> io::Result<()> {
        let path = one_os_name(name)?;
        cp::remove_file(dir, path).or_else(|_| cp::remove_dir(dir, path))
    }

    pub fn parent(dir: DirRef<'_>) -> io::Result<Handle> {
        cp::open_parent_dir(dir, cap_primitives::ambient_authority())
    }

    pub fn ident(dir: DirRef<'_>) -> io::Result<Ident> {
        Ok(found(&cp::Metadata::from_file(dir)?)?.ident)
    }

    pub fn ident_of_file(f: &std::fs::File) -> io::Result<Ident> {
        ident(f)
    }

    pub fn loop_error() -> io::Error {
        // ERROR_STOPPED_ON_SYMLINK
        io::Error::from_raw_os_error(681)
    }

    pub fn not_dir_error() -> io::Error {
        // ERROR_DIRECTORY
        io::Error::from_raw_os_error(267)
    }

    pub type Held = std::fs::File;

    pub fn hold(path: &Path) -> io::Result<(Held, Found)> {
        let mut o = std::fs::OpenOptions::new();
        o.access_mode(0).custom_flags(FILE_FLAG_BACKUP_SEMANTICS);
        let f = o.open(path)?;
        let found = found(&cp::Metadata::from_file(&f)?)?;
        Ok((f, found))
    }

    /// Whether the directory `path` opens as a preopen is opened (for
    /// reading), so that mounting it cannot fail the run.
    pub fn can_open_dir(path: &Path) -> bool {
        cp::open_ambient_dir(path, cap_primitives::ambient_authority()).is_ok()
    }

    /// As [`hold`]: grants are pinned by what is opened here, and the race
    /// this closes on Unix (a name swapped for a link after it was
    /// resolved) is not handled on Windows yet.
    pub fn hold_no_links(path: &Path) -> io::Result<(Held, Found)> {
        hold(path)
    }

    /// Opened for reading and writing, made where missing, not emptied;
    /// links followed (see [`hold_no_links`]).
    pub fn create_no_links(dir: &Path, name: &OsStr) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(name))
    }

    pub fn stat_path(path: &Path, follow: bool) -> io::Result<Found> {
        let mut o = std::fs::OpenOptions::new();
        let flags = if follow {
            FILE_FLAG_BACKUP_SEMANTICS
        } else {
            FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT
        };
        o.access_mode(0).custom_flags(flags);
        let f = o.open(path)?;
        found(&cp::Metadata::from_file(&f)?)
    }
}

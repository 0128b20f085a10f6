//! `capsa pip`: pip itself, run on capsa's CPython inside the sandbox.
//!
//! Installing a package runs its code (a build backend, `setup.py`). Here
//! that code gets what pip needs and nothing else of the user's: the package
//! index (read from the host's pip configuration, the environment and the
//! command line), the install target, a temporary directory that is also
//! pip's cache for this run only, and the files named on the command line.

mod args;
mod index;
pub mod inline;

use super::python::run_prepared;
use super::run::{SandboxArgs, describe_io, fail, prepare};
use capsa_policy::{Access, FsGrant, GrantKind};
use capsa_sandbox::{CodeCache, exit};
use clap::Args;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The pip capsa runs: a pinned release, fetched once from the index and
/// checked against this digest.
pub const PIP_VERSION: &str = "26.3";
const PIP_WHEEL: &str = "pip-26.3-py3-none-any.whl";
const PIP_WHEEL_SHA256: &str = "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13";

const LAUNCHER: &str = include_str!("_capsa_pip.py");
const FETCH: &str = include_str!("_capsa_pip_fetch.py");

const AFTER_HELP: &str = "\
capsa's options come before pip's command: `capsa pip --ca-cert=ca.pem install
--target=libs rich`. Everything from the command on is pip's.

pip runs in the sandbox, and so does every package's build (setup.py, build
backends). They may reach only the package index (pip's own configuration,
PIP_INDEX_URL, --index-url and --extra-index-url; for PyPI also
files.pythonhosted.org), write only the install target (--target, and -d/-w
of download and wheel) and a temporary directory that serves as pip's cache
for this run, and read only the files named on the command line
(requirements and constraints files, local archives and folders).

Only pure-Python packages install: pip picks py3-none-any wheels, builds
source distributions as pure Python (optional C speed-ups, as in markupsafe,
fall back), and says so when a package has only native wheels or needs a C
compiler. Use the packages with `capsa run --python-path=DIR`.

Not supported: --user, --prefix, --root, -e/--editable, --src, --cache-dir,
--log, --cert/--client-cert (use capsa's --ca-cert), --proxy, --python.";

#[derive(Args, Debug)]
#[command(
    about = "Run pip inside the sandbox: install pure-Python packages into a folder",
    after_help = AFTER_HELP,
    disable_version_flag = true
)]
pub struct PipArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// pip's command and its arguments: install --target DIR PACKAGE...
    #[arg(
        value_name = "PIP ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true
    )]
    args: Vec<String>,
}

pub fn run(args: PipArgs) -> i32 {
    let cwd = match super::run::working_dir() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = super::run::refuse_python_path_in_cache(&args.sandbox) {
        return code;
    }
    run_pip(args.sandbox, &args.args, &cwd)
}

/// pip with `argv` in the sandbox, `user`'s flags added to what it is granted.
pub fn run_pip(mut user: SandboxArgs, argv: &[String], cwd: &Path) -> i32 {
    if user.tmp {
        return fail(
            exit::USAGE,
            anyhow::anyhow!(
                "capsa pip: pip has a private temporary folder of its own; --tmp is for capsa run and capsa python"
            ),
        );
    }
    let cmd = match args::parse(argv, cwd) {
        Ok(c) => c,
        Err(e) => return fail(exit::USAGE, anyhow::anyhow!("capsa pip: {e}")),
    };
    let indexes = match index::configured(&cmd, cwd) {
        Ok(i) => i,
        Err(e) => return fail(exit::USAGE, anyhow::anyhow!("capsa pip: {e}")),
    };
    let root = match CodeCache::default_dir() {
        Some(r) => r,
        None => {
            return fail(
                exit::INTERNAL,
                anyhow::anyhow!("no cache directory for pip: set CAPSA_CACHE_DIR (or HOME)"),
            );
        }
    };
    let pip_dir = match ensure_pip(&root, &indexes, &user) {
        Ok(d) => d,
        Err(code) => return code,
    };
    // No folder pip writes may lie in capsa's cache (checked before any is
    // made); each is made, then granted by its real path.
    let cache = super::run::canonical_or(&root);
    for dir in &cmd.write_dirs {
        if dir.starts_with(&cache) || dir.starts_with(&root) {
            return fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "capsa pip: {} is inside capsa's own cache {}, which no program may reach",
                    dir.display(),
                    cache.display()
                ),
            );
        }
        if let Err(e) = make_dirs_nofollow(dir) {
            return fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "capsa pip: cannot create {}: {}",
                    dir.display(),
                    describe_io(&e)
                ),
            );
        }
    }
    // pip's home, temporary files and cache, for this run only: a cache
    // that one install's build code could write would let it plant files
    // for the next install.
    let (scratch, scratch_path) = match private_temp("capsa-pip-") {
        Ok(t) => t,
        Err(code) => return code,
    };
    let Some(scratch_guest) = capsa_policy::default_guest(&scratch_path) else {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!("the temporary directory's path is not UTF-8"),
        );
    };
    let sb = &mut user;
    sb.allow_net.extend(indexes.net_rules());
    for (k, v) in indexes.env() {
        sb.env.push(format!("{k}={v}"));
    }
    for (k, v) in [
        ("HOME", scratch_guest.as_str()),
        ("TMPDIR", scratch_guest.as_str()),
        // No program can be started, so none is looked for.
        ("PATH", ""),
        ("PIP_USE_FEATURE", "inprocess-build-deps"),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    ] {
        sb.env.push(format!("{k}={v}"));
    }
    sb.python_path.push(pip_dir);
    let (_, mut policy) = match prepare(sb) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Granted as typed grants, by real path: never as flag text, which a
    // comma or `::` in a path would split into more grants.
    let mut grants = vec![(scratch_path.clone(), Access::ReadWrite)];
    grants.extend(
        cmd.write_dirs
            .iter()
            .map(|d| (d.clone(), Access::ReadWrite)),
    );
    grants.extend(cmd.read_paths.iter().map(|f| (f.clone(), Access::Read)));
    for (path, access) in grants {
        let host = super::run::canonical_or(&path);
        // The path was checked for links, component by component: if it
        // resolves elsewhere now, something changed it meanwhile.
        if host != path {
            return fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "capsa pip: {} changed while capsa looked at it (it now leads to {}); nothing was granted",
                    path.display(),
                    host.display()
                ),
            );
        }
        if host.starts_with(&cache) {
            return fail(
                exit::USAGE,
                anyhow::anyhow!("capsa pip: {} is inside capsa's own cache", path.display()),
            );
        }
        let Some(guest) = capsa_policy::default_guest(&host) else {
            return fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "capsa pip: {} has no guest path (not UTF-8)",
                    path.display()
                ),
            );
        };
        let kind = if host.is_dir() {
            GrantKind::Dir
        } else {
            GrantKind::File
        };
        policy.fs.grants.push(FsGrant {
            host,
            guest,
            access,
            kind,
        });
    }
    let mut argv = vec!["-m".to_string(), "_capsa_pip".to_string()];
    argv.extend(cmd.args);
    let inv = match capsa_python::invocation::parse(&argv, false) {
        Ok(i) => i,
        Err(e) => return fail(exit::USAGE, anyhow::anyhow!("capsa pip: {e}")),
    };
    let code = run_prepared(&user, inv, scratch_path, policy, None);
    drop(scratch);
    code
}

/// The directory holding pip and capsa's launcher for it, on `sys.path`:
/// made once per launcher, from the pinned wheel, fetched once.
fn ensure_pip(root: &Path, indexes: &index::Indexes, user: &SandboxArgs) -> Result<PathBuf, i32> {
    let home = root.join("pip");
    let launcher_hash = hex(&Sha256::digest(LAUNCHER.as_bytes()))[..16].to_string();
    let dir = home.join(format!("{PIP_VERSION}-{launcher_hash}"));
    if dir.join(".complete").is_file() {
        return trusted(root, &dir).map(|()| dir);
    }
    let io = |what: &str, e: std::io::Error| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot {what}: {}", describe_io(&e)),
        )
    };
    capsa_sandbox::load::make_private_dir(&home)
        .map_err(|e| io(&format!("create {}", home.display()), e))?;
    let wheel = home.join(PIP_WHEEL);
    let staging = private_dir()
        .prefix(".pip-")
        .tempdir_in(&home)
        .map_err(|e| io("make a directory for pip", e))?;
    let unpacked = staging.path().join("pip");
    if !digest_matches(&wheel) {
        fetch_pip(indexes, user, &wheel, &unpacked)?;
    } else {
        // The wheel is here (an earlier launcher's); unpack it again.
        unpack_local(&wheel, user, &unpacked)?;
    }
    std::fs::write(unpacked.join("_capsa_pip.py"), LAUNCHER)
        .map_err(|e| io("write pip's launcher", e))?;
    std::fs::write(unpacked.join(".complete"), PIP_VERSION)
        .map_err(|e| io("finish pip's directory", e))?;
    match std::fs::rename(&unpacked, &dir) {
        Ok(()) => Ok(dir),
        // Another capsa made it meanwhile.
        Err(_) if dir.join(".complete").is_file() => trusted(root, &dir).map(|()| dir),
        Err(e) => Err(io(&format!("move pip into {}", dir.display()), e)),
    }
}

/// `create_dir_all`, but never through a link, even one made meanwhile:
/// each folder is made in, and opened from, the handle of its parent.
#[cfg(unix)]
fn make_dirs_nofollow(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
    use std::path::Component;
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut cur = openat(CWD, "/", dir_flags, Mode::empty())?;
    for c in dir.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        match mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        cur = openat(&cur, name, dir_flags | OFlags::NOFOLLOW, Mode::empty())?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_dirs_nofollow(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A builder of temporary folders only this user may enter (0700, whatever
/// the umask): another user must not plant a file in what capsa copies into
/// its cache or grants a program.
pub(crate) fn private_dir() -> tempfile::Builder<'static, 'static> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut b = tempfile::Builder::new();
        b.permissions(std::fs::Permissions::from_mode(0o700));
        b
    }
    #[cfg(not(unix))]
    tempfile::Builder::new()
}

/// A temporary folder, removed with everything in it when dropped, without
/// recursion: a guest (pip's build code) may have made a tree there deeper
/// than the stack (see `capsa_sandbox::load::remove_tree`).
pub(crate) struct TempTree(PathBuf);

impl TempTree {
    /// Keeps the folder (no longer removed on drop) and gives its path.
    pub(crate) fn keep(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = capsa_sandbox::load::remove_tree(&self.0);
        }
    }
}

/// A fresh private temporary folder (see [`private_dir`]) and its real path.
pub(crate) fn private_temp(prefix: &str) -> Result<(TempTree, PathBuf), i32> {
    let failed = |e: std::io::Error| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot make a temporary directory: {e}"),
        )
    };
    // An empty TMPDIR is no directory (Python and mktemp take /tmp then;
    // Rust's temp_dir would give the working directory).
    let base = std::env::temp_dir();
    let base = if base.as_os_str().is_empty() {
        std::path::PathBuf::from("/tmp")
    } else {
        base
    };
    let dir = private_dir()
        .prefix(prefix)
        .tempdir_in(base)
        .map_err(failed)?;
    let dir = TempTree(dir.keep());
    // Its mode is made under the umask: 0700 is set, so that a umask
    // without the owner's write bit leaves it usable.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(&dir.0, mode).map_err(failed)?;
    }
    let path = super::run::canonical_or(&dir.0);
    Ok((dir, path))
}

/// A folder of capsa's cache that it will put on `sys.path`: only if it and
/// every folder above it up to the cache are this user's alone (as every
/// cache entry, see `capsa_sandbox::load::trusted`).
pub(crate) fn trusted(root: &Path, dir: &Path) -> Result<(), i32> {
    if capsa_sandbox::load::trusted(root, dir) {
        return Ok(());
    }
    Err(fail(
        exit::INTERNAL,
        anyhow::anyhow!(
            "capsa will not use {}: it, or a folder above it, is a link or may be written by another user; remove it",
            dir.display()
        ),
    ))
}

/// Puts the checked wheel at `wheel`: written create-new beside it, never
/// through a link, then renamed over whatever was there.
fn keep_wheel(fetched: &Path, wheel: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = std::fs::read(fetched)?;
    let dir = wheel.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{PIP_WHEEL}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = capsa_sandbox::load::create_new_private(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, wheel)
}

fn digest_matches(file: &Path) -> bool {
    std::fs::read(file).is_ok_and(|b| hex(&Sha256::digest(&b)) == PIP_WHEEL_SHA256)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches the pinned wheel from the first index, in the sandbox (granted
/// the index and an empty directory), and unpacks it into `unpacked`.
fn fetch_pip(
    indexes: &index::Indexes,
    user: &SandboxArgs,
    wheel: &Path,
    unpacked: &Path,
) -> Result<(), i32> {
    let Some(index) = indexes.first_index() else {
        return Err(fail(
            exit::USAGE,
            anyhow::anyhow!(
                "capsa pip runs pip {PIP_VERSION}, which it fetches once from a package index; \
                 --no-index leaves none (run capsa pip once with an index)"
            ),
        ));
    };
    eprintln!("capsa: fetching pip {PIP_VERSION} from {index} (once)");
    let (_dest, dest_path) = private_temp("capsa-pip-fetch-")?;
    let mut sb = SandboxArgs::default();
    sb.allow_net.extend(indexes.net_rules());
    sb.allow_net.extend(user.allow_net.iter().cloned());
    sb.ca_cert = user.ca_cert.clone();
    sb.quiet = user.quiet;
    let code = run_helper(
        &sb,
        &dest_path,
        FETCH,
        &[
            index,
            PIP_WHEEL,
            PIP_WHEEL_SHA256,
            &dest_path.display().to_string(),
        ],
    )?;
    if code != 0 {
        return Err(code);
    }
    let fetched = dest_path.join(PIP_WHEEL);
    // Checked again here: the sandboxed step could only have written this
    // directory, but capsa trusts no file it did not check itself.
    if !digest_matches(&fetched) {
        return Err(fail(
            exit::INTERNAL,
            anyhow::anyhow!("pip's wheel did not arrive whole; try again"),
        ));
    }
    copy_tree(&dest_path.join("pip"), unpacked).map_err(|e| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot copy pip: {}", describe_io(&e)),
        )
    })?;
    keep_wheel(&fetched, wheel).map_err(|e| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot keep pip's wheel: {}", describe_io(&e)),
        )
    })?;
    Ok(())
}

/// Unpacks the kept wheel (already checked) into `unpacked`, in the sandbox.
fn unpack_local(wheel: &Path, user: &SandboxArgs, unpacked: &Path) -> Result<(), i32> {
    let (_dest, dest_path) = private_temp("capsa-pip-unpack-")?;
    let copy = dest_path.join(PIP_WHEEL);
    std::fs::copy(wheel, &copy).map_err(|e| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot copy pip's wheel: {}", describe_io(&e)),
        )
    })?;
    let mut sb = SandboxArgs::default();
    sb.quiet = user.quiet;
    let code = run_helper(
        &sb,
        &dest_path,
        "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        &[
            &copy.display().to_string(),
            &dest_path.join("pip").display().to_string(),
        ],
    )?;
    if code != 0 {
        return Err(code);
    }
    copy_tree(&dest_path.join("pip"), unpacked).map_err(|e| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot copy pip: {}", describe_io(&e)),
        )
    })
}

/// Runs capsa's own Python `code` with `args` under `sb`, granted `writable`
/// (a fresh temporary directory); its exit code.
fn run_helper(sb: &SandboxArgs, writable: &Path, code: &str, args: &[&str]) -> Result<i32, i32> {
    let (cwd, mut policy) = prepare(sb)?;
    let guest = capsa_policy::default_guest(writable).ok_or_else(|| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("the temporary directory's path is not UTF-8"),
        )
    })?;
    policy.fs.grants.push(FsGrant {
        host: writable.to_path_buf(),
        guest,
        access: Access::ReadWrite,
        kind: GrantKind::Dir,
    });
    let mut argv = vec!["-c".to_string(), code.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let inv = capsa_python::invocation::parse(&argv, false)
        .map_err(|e| fail(exit::INTERNAL, anyhow::anyhow!("{e}")))?;
    Ok(run_prepared(sb, inv, cwd, policy, None))
}

/// Copies regular files and directories (never links) from a directory a
/// sandboxed step wrote. One directory at a time and without recursion: the
/// step may have made a tree deeper than the stack or the open-file limit,
/// which then ends in an error (a path too long), never a crash. The caller
/// removes what was copied before an error (with
/// `capsa_sandbox::load::remove_tree`, which does not recurse either).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut todo = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((from, to)) = todo.pop() {
        capsa_sandbox::load::make_private_dir(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let dest = to.join(entry.file_name());
            if kind.is_dir() {
                todo.push((entry.path(), dest));
            } else if kind.is_file() {
                std::fs::copy(entry.path(), &dest)?;
            }
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
    use std::path::{Path, PathBuf};

    /// Makes `depth` directories named `d`, one inside the next, under
    /// `root` (through descriptors, so deeper than a path can name), with a
    /// file and a link to `outside` every `every` levels.
    fn deep(root: &Path, depth: usize, every: usize, outside: &Path) {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut cur = openat(CWD, root, flags, Mode::empty()).unwrap();
        for i in 0..depth {
            mkdirat(&cur, c"d", Mode::from_raw_mode(0o700)).unwrap();
            if i % every == 0 {
                let at = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&cur));
                std::fs::write(format!("{at}/f"), i.to_string()).unwrap();
                std::os::unix::fs::symlink(outside, format!("{at}/up")).unwrap();
            }
            cur = openat(&cur, c"d", flags, Mode::empty()).unwrap();
        }
    }

    /// A scratch folder holding the tree to copy (made), where the copy
    /// goes (not made) and a folder outside both (made).
    fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let base = tempfile::tempdir_in("/tmp").unwrap();
        let (from, to, outside) = (
            base.path().join("a"),
            base.path().join("b"),
            base.path().join("o"),
        );
        std::fs::create_dir(&from).unwrap();
        std::fs::create_dir(&outside).unwrap();
        (base, from, to, outside)
    }

    /// A thread with a small stack, so that copying by recursion would
    /// overflow it.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_deep_tree_is_copied_without_recursion_and_links_are_left_out() {
        let (_base, from, to, outside) = scratch();
        std::fs::write(outside.join("secret"), "host").unwrap();
        // Deep enough to overflow 128 KiB by recursion, short enough that
        // every path stays under PATH_MAX.
        let depth = 1_800;
        deep(&from, depth, 100, &outside);
        let (f, t) = (from.clone(), to.clone());
        on_small_stack(move || super::copy_tree(&f, &t)).unwrap();
        let mut at = to.clone();
        for i in 0..depth {
            if i % 100 == 0 {
                assert_eq!(
                    std::fs::read_to_string(at.join("f")).unwrap(),
                    i.to_string()
                );
                assert!(
                    std::fs::symlink_metadata(at.join("up")).is_err(),
                    "a link was copied at {i}"
                );
            }
            at.push("d");
        }
        assert!(at.is_dir());
        assert_eq!(std::fs::read_dir(&at).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        for dir in [from, to] {
            capsa_sandbox::load::remove_tree(&dir).unwrap();
        }
    }

    #[test]
    fn a_tree_too_deep_to_name_ends_in_an_error_and_the_copy_is_removed() {
        let (base, from, to, outside) = scratch();
        deep(&from, 3_000, 500, &outside);
        let (f, t) = (from.clone(), to.clone());
        let err = on_small_stack(move || super::copy_tree(&f, &t)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_enametoolong()), "{err}");
        assert!(
            to.join("f").is_file(),
            "nothing was copied before the error"
        );
        // What the caller does with a failed copy (a TempTree dropped).
        on_small_stack(move || drop(super::TempTree(to)));
        assert!(!base.path().join("b").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        capsa_sandbox::load::remove_tree(&from).unwrap();
    }

    fn libc_enametoolong() -> i32 {
        rustix::io::Errno::NAMETOOLONG.raw_os_error()
    }
}

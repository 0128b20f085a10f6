//! Bytecode for `--python-path` directories, so that their imports do not
//! compile every module from source on every run.
//!
//! The program may only read its packages, so it cannot write bytecode
//! beside them (and a cache it could write would let one run plant code for
//! the next). Instead capsa compiles a directory in a step of its own that
//! runs only CPython's compiler (`compileall`, no package code), in the same
//! sandbox, with write access to nothing but that directory's cache. The
//! files are checked-hash `.pyc`s: CPython compares each with its source's
//! hash on import, so a changed source is never served stale bytecode. Runs
//! see the cache read-only, through `sys.pycache_prefix`.

use capsa_policy::{Access, FsGrant, GrantKind, Policy};
use capsa_python::Runtime;
use capsa_sandbox::{CodeCache, Outcome, RunConfig};
use std::path::{Path, PathBuf};

/// Where the program sees the bytecode: `sys.pycache_prefix`.
pub const GUEST_PREFIX: &str = "/capsa-pycache";

/// Sources listed at most; a larger tree is not compiled (it still runs).
const MAX_SOURCES: usize = 100_000;

/// The bytecode of one directory, to grant read-only.
pub struct Bytecode {
    pub host: PathBuf,
    pub guest: String,
}

/// An empty directory for the prefix itself.
pub fn empty(root: &Path) -> Option<Bytecode> {
    let pycache = root.join("pycache");
    capsa_sandbox::load::make_private_dir(&pycache).ok()?;
    let host = pycache.join("empty");
    capsa_sandbox::load::make_private_dir(&host).ok()?;
    Some(Bytecode {
        host,
        guest: GUEST_PREFIX.to_string(),
    })
}

/// `.py` files below `dir` with their size and change time, sorted: the
/// stamp that says whether the cache must be refreshed. Links are not
/// followed (compileall does not follow linked directories either).
fn sources(dir: &Path) -> Option<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()? {
            let entry = entry.ok()?;
            let meta = entry.path().symlink_metadata().ok()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && entry.path().extension().is_some_and(|e| e == "py") {
                let changed = meta
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                // The inode's change time too, which no one can set back:
                // a source rewritten with its old size and time is
                // compiled again (CPython's hash check would catch it, but
                // compile it in memory on every run).
                #[cfg(unix)]
                let inode = {
                    use std::os::unix::fs::MetadataExt;
                    format!("{}.{}", meta.ctime(), meta.ctime_nsec())
                };
                #[cfg(not(unix))]
                let inode = String::new();
                out.push(format!(
                    "{}\t{}\t{changed}\t{inode}",
                    entry.path().strip_prefix(dir).ok()?.display(),
                    meta.len()
                ));
                if out.len() > MAX_SOURCES {
                    return None;
                }
            }
        }
    }
    out.sort();
    Some(out.join("\n"))
}

/// How the program's own policy bounds the compile step: it reads nothing
/// the program may not (`deny_read`), and it gets no more memory or time
/// than the program (and at most [`MAX_COMPILE_TIME`]).
pub struct Bounds<'a> {
    pub deny_read: &'a [PathBuf],
    pub memory: u64,
    pub timeout: Option<std::time::Duration>,
    /// When the run began: its compile steps share one deadline.
    pub started: std::time::Instant,
}

/// Time the compile steps of one run may take at most together; past it
/// the run goes on without (the rest of) its bytecode.
const MAX_COMPILE_TIME: std::time::Duration = std::time::Duration::from_secs(60);

impl Bounds<'_> {
    /// Compile time left: the run's time limit (and [`MAX_COMPILE_TIME`])
    /// covers every directory's step together.
    fn remaining(&self) -> std::time::Duration {
        self.budget().saturating_sub(self.started.elapsed())
    }

    /// Compile time of the run as a whole.
    fn budget(&self) -> std::time::Duration {
        self.timeout
            .map_or(MAX_COMPILE_TIME, |t| t.min(MAX_COMPILE_TIME))
    }
}

/// The cache of `src` (its host path, and its path in the guest), compiled
/// now if its sources changed since. `None` when there is no usable cache:
/// the run then compiles in memory, as before.
pub fn prepare(root: &Path, src: &Path, src_guest: &str, bounds: &Bounds<'_>) -> Option<Bytecode> {
    use sha2::{Digest, Sha256};
    // A directory denied as a whole (itself, or one above it) gets none.
    if bounds.deny_read.iter().any(|d| src.starts_with(d)) {
        return None;
    }
    // A cache per directory and per set of read denials in it: bytecode of
    // a file denied to one run is never shown to it.
    let mut denied: Vec<&PathBuf> = bounds
        .deny_read
        .iter()
        .filter(|d| d.starts_with(src))
        .collect();
    denied.sort();
    let mut key = Sha256::new();
    // The compile step's version: 2 writes bytecode over 64 KiB, which
    // version 1 silently left out (a cache it made is not reused).
    key.update(b"v2\0");
    key.update(src.as_os_str().as_encoded_bytes());
    for d in &denied {
        key.update(b"\0");
        key.update(d.as_os_str().as_encoded_bytes());
    }
    let key: String = key.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pycache = root.join("pycache");
    capsa_sandbox::load::make_private_dir(&pycache).ok()?;
    let host = pycache.join(&key);
    capsa_sandbox::load::make_private_dir(&host).ok()?;
    let guest = format!("{GUEST_PREFIX}{src_guest}");
    let stamp_file = pycache.join(format!("{key}.sources"));
    let failed_file = pycache.join(format!("{key}.failed"));
    let stamp = sources(src)?;
    // A compile that failed (a source too costly to compile) is tried again
    // only when a source changed, or with more memory or time than it had;
    // meanwhile the run uses what bytecode there is.
    let limits = format!("{}\t{}", bounds.memory, bounds.budget().as_millis());
    let failed_before = std::fs::read_to_string(&failed_file).ok().is_some_and(|f| {
        f.split_once('\n')
            .is_some_and(|(had, listing)| listing == stamp && !more_than(&limits, had))
    });
    let current = std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str());
    if !failed_before && !current {
        let job = Job {
            root: root.to_path_buf(),
            src: src.to_path_buf(),
            src_guest: src_guest.to_string(),
            cache: host.clone(),
            cache_guest: guest.clone(),
            deny_read: denied.into_iter().cloned().collect(),
            memory: bounds.memory,
            timeout_ms: bounds.remaining().as_millis() as u64,
        };
        let (file, text) = match compile_in_child(&job) {
            Some(()) => {
                let _ = std::fs::remove_file(&failed_file);
                (&stamp_file, stamp)
            }
            None => (&failed_file, format!("{limits}\n{stamp}")),
        };
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).ok()?;
        std::fs::rename(&tmp, file).ok()?;
    }
    Some(Bytecode { host, guest })
}

/// Whether limits `now` ("memory\tmillis") exceed `had` in either.
fn more_than(now: &str, had: &str) -> bool {
    let parse = |s: &str| -> Option<(u64, u128)> {
        let (m, t) = s.split_once('\t')?;
        Some((m.parse().ok()?, t.parse().ok()?))
    };
    match (parse(now), parse(had)) {
        (Some((m1, t1)), Some((m0, t0))) => m1 > m0 || t1 > t0,
        _ => true,
    }
}

/// What the compile step is given.
#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    root: PathBuf,
    src: PathBuf,
    src_guest: String,
    cache: PathBuf,
    cache_guest: String,
    deny_read: Vec<PathBuf>,
    memory: u64,
    timeout_ms: u64,
}

/// Runs the compile step in a process of its own (`capsa pycache-compile`),
/// whose time limit ends only it.
fn compile_in_child(job: &Job) -> Option<()> {
    use std::io::Write;
    let me = std::env::current_exe().ok()?;
    let mut cmd = std::process::Command::new(me);
    cmd.arg("pycache-compile")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // It ends with capsa, which may be ended first (a worker at its limit).
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs here.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().ok()?;
    let line = serde_json::to_string(job).ok()?;
    child.stdin.take()?.write_all(line.as_bytes()).ok()?;
    child.wait().ok()?.success().then_some(())
}

/// `capsa pycache-compile`: one compile step, its job on stdin.
pub fn compile_main() -> i32 {
    let mut line = String::new();
    if std::io::Read::read_to_string(&mut std::io::stdin(), &mut line).is_err() {
        return capsa_sandbox::exit::USAGE;
    }
    let Ok(job) = serde_json::from_str::<Job>(&line) else {
        return capsa_sandbox::exit::USAGE;
    };
    let Ok(rt) = capsa_python::ensure(
        &job.root,
        Some(&CodeCache::new(job.root.clone())),
        &mut |_| {},
    ) else {
        return capsa_sandbox::exit::INTERNAL;
    };
    match compile(&job, &rt) {
        Some(()) => 0,
        None => 1,
    }
}

/// Runs `compileall` over `src` in the sandbox: read access to `src` (less
/// the program's read denials) and the standard library, write access to
/// the cache alone, no network, no environment, the program's memory.
fn compile(job: &Job, rt: &Runtime) -> Option<()> {
    let grant = |host: &Path, guest: &str, access| FsGrant {
        host: host.to_path_buf(),
        guest: guest.to_string(),
        access,
        kind: GrantKind::Dir,
    };
    let stdlib = capsa_sandbox::load::canonical(&rt.stdlib).ok()?;
    let mut policy = Policy::default();
    policy.fs.grants = vec![
        grant(&stdlib, capsa_python::GUEST_STDLIB, Access::Read),
        grant(&job.src, &job.src_guest, Access::Read),
        grant(&job.cache, &job.cache_guest, Access::ReadWrite),
    ];
    policy.fs.deny_write = vec![stdlib, job.src.clone()];
    policy.fs.deny_read = job.deny_read.clone();
    policy.limits.memory = job.memory;
    policy.limits.timeout = Some(std::time::Duration::from_millis(job.timeout_ms.max(1)));
    // The mount point exists although the directories above it do not: a
    // top-level module's bytecode goes straight into it.
    let code = format!(
        "import compileall, os, py_compile, sys\n\
         _makedirs = os.makedirs\n\
         def _existing(name, *a, **k):\n\
         \x20   if os.path.isdir(name):\n\
         \x20       return\n\
         \x20   return _makedirs(name, *a, **k)\n\
         os.makedirs = _existing\n\
         sys.pycache_prefix = {prefix:?}\n\
         compileall.compile_dir({src:?}, quiet=2, workers=1,\n\
         \x20   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)\n",
        prefix = GUEST_PREFIX,
        src = job.src_guest,
    );
    let inv = capsa_python::invocation::parse(&["-c".into(), code], false).ok()?;
    let config = RunConfig {
        program: rt.component.clone(),
        argv0: "python3".into(),
        args: vec![inv.to_guest_json(None, None, &[])],
        policy,
        cwd: None,
        enters_cwd: false,
        quiet: true,
        audit: None,
        cache: Some(CodeCache::new(job.root.clone())),
        ca_certs: Vec::new(),
        stdin: Some(Vec::new()),
        teach_pages: None,
        suggest_tmp: false,
    };
    match capsa_sandbox::run(config) {
        Ok(Outcome::Exited(0)) => Some(()),
        _ => None,
    }
}

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
                out.push(format!(
                    "{}\t{}\t{changed}",
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

/// The cache of `src` (its host path, and its path in the guest), compiled
/// now if its sources changed since. `None` when there is no usable cache:
/// the run then compiles in memory, as before.
pub fn prepare(root: &Path, rt: &Runtime, src: &Path, src_guest: &str) -> Option<Bytecode> {
    use sha2::{Digest, Sha256};
    let key: String = Sha256::digest(src.as_os_str().as_encoded_bytes())[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pycache = root.join("pycache");
    capsa_sandbox::load::make_private_dir(&pycache).ok()?;
    let host = pycache.join(key);
    capsa_sandbox::load::make_private_dir(&host).ok()?;
    let guest = format!("{GUEST_PREFIX}{src_guest}");
    let stamp_file = pycache.join(format!("{}.sources", host.file_name()?.to_str()?));
    let stamp = sources(src)?;
    if std::fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str()) {
        compile(root, rt, src, src_guest, &host, &guest)?;
        let tmp = stamp_file.with_extension("tmp");
        std::fs::write(&tmp, &stamp).ok()?;
        std::fs::rename(&tmp, &stamp_file).ok()?;
    }
    Some(Bytecode { host, guest })
}

/// Runs `compileall` over `src` in the sandbox: read access to `src` and
/// the standard library, write access to `cache` alone, no network, no
/// environment.
fn compile(
    root: &Path,
    rt: &Runtime,
    src: &Path,
    src_guest: &str,
    cache: &Path,
    cache_guest: &str,
) -> Option<()> {
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
        grant(src, src_guest, Access::Read),
        grant(cache, cache_guest, Access::ReadWrite),
    ];
    policy.fs.deny_write = vec![stdlib, src.to_path_buf()];
    let code = format!(
        "import compileall, py_compile, sys\n\
         sys.pycache_prefix = {prefix:?}\n\
         compileall.compile_dir({src:?}, quiet=2, workers=1,\n\
             invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)\n",
        prefix = GUEST_PREFIX,
        src = src_guest,
    );
    let inv = capsa_python::invocation::parse(&["-c".into(), code], false).ok()?;
    let config = RunConfig {
        program: rt.component.clone(),
        argv0: "python3".into(),
        args: vec![inv.to_guest_json(None, None, &[])],
        policy,
        cwd: None,
        quiet: true,
        audit: None,
        cache: Some(CodeCache::new(root.to_path_buf())),
        ca_certs: Vec::new(),
        stdin: Some(Vec::new()),
    };
    match capsa_sandbox::run(config) {
        Ok(Outcome::Exited(0)) => Some(()),
        _ => None,
    }
}

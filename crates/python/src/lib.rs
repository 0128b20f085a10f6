//! CPython 3.14 for WASI, built on this machine.
//!
//! The `componentize-py` crate ships a wasm32-wasi CPython, its libc and
//! runtime, and links them with an application module into a
//! `wasi:cli/command` component, which it pre-initializes (a memory snapshot
//! taken after the application module was imported). capsa's application
//! module is `app.py`: an entry point that behaves like `python3`'s command
//! line. The snapshot holds the hash seed of the machine that took it, so it
//! is taken here, on first use (or `capsa python install`), never shipped.
//!
//! A built runtime lives in `<cache>/python/<key>/`: `python.wasm`, the
//! standard library unpacked in `lib/` (mounted read-only at
//! [`GUEST_STDLIB`]), and `manifest.json`, written last. The key covers every
//! embedded input and capsa's version. A build happens in a temporary
//! directory renamed into place, under a lock file, so two first runs at once
//! build once and a crash leaves no partial entry.

mod component;
pub mod fold;
pub mod image;
pub mod invocation;
pub mod merge;
pub mod optimize;
pub mod order;
pub mod prune;

use capsa_sandbox::CodeCache;
use capsa_sandbox::load::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use invocation::{Invocation, Mode};

/// Where the standard library appears in the guest: the path the snapshot's
/// `sys.path` and code objects were made with.
pub const GUEST_STDLIB: &str = "/python";

/// Bump when the layout of a runtime directory, or the way its component is
/// made, changes.
const FORMAT: u32 = 5;

const APP_PY: &str = include_str!("app.py");
const HTTP_PY: &str = include_str!("_capsa_http.py");
const STDLIB_TAR_ZST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/python-lib.tar.zst"));
include!(concat!(env!("OUT_DIR"), "/wit_files.rs"));

/// The root WIT package: the runtime's world and capsa's `process` interface.
const ROOT_WIT: &str = include_str!("capsa.wit");

/// A built runtime, ready to run.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The pre-initialized `wasi:cli/command` component.
    pub component: PathBuf,
    /// The unpacked standard library, to mount read-only at [`GUEST_STDLIB`].
    pub stdlib: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("cannot prepare Python in {}: {msg}", dir.display())]
    Io { dir: PathBuf, msg: String },
    #[error("cannot build the Python runtime: {0}")]
    Build(String),
    #[error(
        "no wasm-opt to optimize Python with ({0}): install binaryen (`apt install binaryen`, `brew install binaryen`, `npm install -g binaryen`) or name its wasm-opt in CAPSA_WASM_OPT"
    )]
    NoWasmOpt(String),
    #[error("cannot optimize Python (it is left as it was): {0}")]
    Optimize(String),
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    key: String,
    component_sha256: String,
    component_len: u64,
    built_in_ms: u64,
    /// The `wasm-opt` that optimized the component, if one did
    /// ([`optimize`]): its version line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimized: Option<String>,
    /// The component's file in the runtime directory: `python.wasm`, or
    /// [`OPTIMIZED_FILE`] once optimized (so that one rename of the manifest
    /// switches from one to the other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    component: Option<String>,
}

/// The optimized component's file name in the runtime directory.
const OPTIMIZED_FILE: &str = "python.opt.wasm";

impl Manifest {
    /// The component's file name: one of two, never a path from the file.
    fn component_file(&self) -> Option<&'static str> {
        match self.component.as_deref() {
            None | Some("python.wasm") => Some("python.wasm"),
            Some(OPTIMIZED_FILE) => Some(OPTIMIZED_FILE),
            Some(_) => None,
        }
    }
}

/// The cache key of this build's runtime.
fn key() -> String {
    let mut h = Sha256::new();
    h.update(env!("CAPSA_PYTHON_INPUTS").as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(FORMAT.to_le_bytes());
    hex(&h.finalize()[..10])
}

/// The runtime's directory under the cache root.
pub fn runtime_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("python").join(key())
}

/// The runtime, if a complete and intact one is in the cache.
pub fn cached(cache_root: &Path, code: Option<&CodeCache>) -> Option<Runtime> {
    let dir = runtime_dir(cache_root);
    // Every later run imports this standard library: only a tree that no
    // one else could have written is used.
    if !capsa_sandbox::load::trusted(cache_root, &dir.join("lib")) {
        return None;
    }
    let manifest = read_manifest(&dir)?;
    let rt = Runtime {
        component: dir.join(manifest.component_file()?),
        stdlib: dir.join("lib"),
    };
    let ok = manifest.key == key()
        && fs::metadata(&rt.component).is_ok_and(|m| m.len() == manifest.component_len)
        && rt.stdlib.join("os.py").is_file()
        && capsa_sandbox::load::Program::read(&rt.component, code)
            .is_ok_and(|p| hex(&p.digest) == manifest.component_sha256);
    ok.then_some(rt)
}

/// The runtime: from the cache, or built now (saying so through `progress`).
pub fn ensure(
    cache_root: &Path,
    code: Option<&CodeCache>,
    progress: &mut dyn FnMut(&str),
) -> Result<Runtime, PythonError> {
    if let Some(rt) = cached(cache_root, code) {
        return Ok(rt);
    }
    build(cache_root, code, false, progress)
}

/// Builds the runtime unless an intact one is cached (or `force`), holding
/// the build lock so that concurrent callers build it once.
pub fn build(
    cache_root: &Path,
    code: Option<&CodeCache>,
    force: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Runtime, PythonError> {
    let parent = cache_root.join("python");
    let io = |e: std::io::Error| PythonError::Io {
        dir: parent.clone(),
        msg: e.to_string(),
    };
    create_private_dir(&parent).map_err(io)?;
    if !capsa_sandbox::load::trusted(cache_root, &parent) {
        return Err(io(std::io::Error::other(
            "it or a directory above it (up to the cache root) belongs to another user, is a link, or others may write it",
        )));
    }
    let lock = build_lock(&parent, progress).map_err(io)?;
    if !force && let Some(rt) = cached(cache_root, code) {
        return Ok(rt);
    }
    progress("capsa: preparing Python 3.14 for this machine (once; takes about 15–30 s)...");
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&parent)
        .map_err(io)?;
    let component = tmp.path().join("python.wasm");
    generate(tmp.path(), &component)?;
    unpack_stdlib(&tmp.path().join("lib")).map_err(io)?;
    let program = capsa_sandbox::load::Program::read(&component, None)
        .map_err(|e| PythonError::Build(e.to_string()))?;
    if let Some(code) = code {
        capsa_sandbox::precompile(&program, code).map_err(|e| PythonError::Build(e.to_string()))?;
    }
    let manifest = Manifest {
        key: key(),
        component_sha256: hex(&program.digest),
        component_len: fs::metadata(&component).map_err(io)?.len(),
        built_in_ms: started.elapsed().as_millis() as u64,
        optimized: None,
        component: None,
    };
    for scratch in ["app", "wit"] {
        fs::remove_dir_all(tmp.path().join(scratch)).map_err(io)?;
    }
    write_synced(
        &tmp.path().join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .map_err(io)?;

    let dir = runtime_dir(cache_root);
    if dir.exists() {
        // Partial, corrupt or replaced on purpose: moved aside, then removed.
        let old = tempfile::Builder::new()
            .prefix(".old-")
            .tempdir_in(&parent)
            .map_err(io)?;
        fs::rename(&dir, old.path().join("runtime")).map_err(io)?;
    }
    fs::rename(tmp.keep(), &dir).map_err(io)?;
    remove_stale(&parent);
    progress(&format!(
        "capsa: Python is ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    drop(lock);
    cached(cache_root, code).ok_or_else(|| {
        PythonError::Build(
            "the runtime just built does not check out; is the cache directory shared?".into(),
        )
    })
}

/// The lock every change to the runtime directory holds (in `parent`, the
/// cache's `python/`), waited for if another capsa holds it.
fn build_lock(parent: &Path, progress: &mut dyn FnMut(&str)) -> std::io::Result<fs::File> {
    let lock_path = parent.join(format!("{}.lock", key()));
    let lock = capsa_sandbox::load::create_new_private(&lock_path)
        .or_else(|_| capsa_sandbox::load::open_nofollow(&lock_path))?;
    if lock.try_lock().is_err() {
        progress("capsa: waiting for another capsa to finish preparing Python...");
        lock.lock()?;
    }
    Ok(lock)
}

/// What optimized the cached runtime (`wasm-opt`'s version line), if
/// anything did.
pub fn optimized_with(cache_root: &Path) -> Option<String> {
    read_manifest(&runtime_dir(cache_root))?.optimized
}

/// The manifest of the runtime in `dir`, if it reads as one.
fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()
}

/// Optimizes the runtime (built first if needed) with binaryen's `wasm-opt`
/// (see [`optimize`](mod@optimize)); a runtime already optimized is left as
/// it is. `check` runs Python from the cache and gives what it printed: it
/// runs before, and again once the optimized component is in place, and
/// must print the same, else the runtime is put back as it was.
///
/// wasm-opt runs, and its output is validated and compiled, before the
/// build lock is taken; under the lock the component it started from must
/// still be the runtime's, and one rename of the manifest (naming the
/// optimized file, written and synced beside it) switches to it. A failure
/// at any step leaves the runtime as it was. Gives the runtime and what
/// optimized it.
pub fn optimize(
    cache_root: &Path,
    code: Option<&CodeCache>,
    progress: &mut dyn FnMut(&str),
    check: &mut dyn FnMut() -> Result<String, String>,
) -> Result<(Runtime, String), PythonError> {
    let wasm_opt = optimize::find_wasm_opt().map_err(PythonError::NoWasmOpt)?;
    ensure(cache_root, code, progress)?;
    let parent = cache_root.join("python");
    let dir = runtime_dir(cache_root);
    let io = |e: std::io::Error| PythonError::Io {
        dir: dir.clone(),
        msg: e.to_string(),
    };
    let unreadable = || PythonError::Optimize("the runtime's manifest cannot be read".into());
    // An earlier --optimize that stopped between its switch and its check
    // (killed, interrupted) is undone first.
    {
        let _lock = build_lock(&parent, progress).map_err(io)?;
        if switch_back(&dir).map_err(io)? {
            progress("capsa: an earlier --optimize stopped before its check; it is undone");
        }
    }
    let Some(rt) = cached(cache_root, code) else {
        return Err(PythonError::Optimize(
            "the Python runtime does not check out; `capsa python install --force` prepares it again".into(),
        ));
    };
    let manifest = read_manifest(&dir).ok_or_else(unreadable)?;
    if let Some(done) = manifest.optimized {
        return Ok((rt, done));
    }
    // What `cached` just checked the component against.
    let started_from = manifest.component_sha256.clone();
    let version = optimize::version(&wasm_opt).map_err(PythonError::Optimize)?;
    let before = check().map_err(|e| {
        PythonError::Optimize(format!(
            "Python does not run as prepared, before any change: {e}"
        ))
    })?;
    progress(&format!(
        "capsa: optimizing Python with {} ({}; about a minute on 2 cores)...",
        capsa_policy::escape_for_terminal(&wasm_opt.display().to_string()),
        capsa_policy::escape_for_terminal(&version),
    ));
    let started = Instant::now();
    let component = fs::read(&rt.component).map_err(io)?;
    let work = tempfile::Builder::new()
        .prefix(".build-optimize-")
        .tempdir_in(&parent)
        .map_err(io)?;
    let optimized = optimize::optimize_component(&component, &wasm_opt, work.path())
        .map_err(PythonError::Optimize)?;
    // wasm-opt keeps the order of the functions it keeps; whatever it did,
    // the start-up functions go first again.
    let optimized = order_startup(optimized);
    // `capsa serve` keeps Python's memory from run to run by taking the
    // snapshot out of the component: what it did before, it must still do.
    if image::split_image(&component).is_some() && image::split_image(&optimized).is_none() {
        return Err(PythonError::Optimize(
            "wasm-opt changed the snapshot's data in a way capsa serve cannot keep".into(),
        ));
    }
    let staged = work.path().join(OPTIMIZED_FILE);
    write_synced(&staged, &optimized).map_err(io)?;
    let program = capsa_sandbox::load::Program::read(&staged, None)
        .map_err(|e| PythonError::Optimize(e.to_string()))?;
    if let Some(code) = code {
        capsa_sandbox::precompile(&program, code)
            .map_err(|e| PythonError::Optimize(e.to_string()))?;
    }
    let new_manifest = Manifest {
        component_sha256: hex(&program.digest),
        component_len: optimized.len() as u64,
        optimized: Some(version.clone()),
        component: Some(OPTIMIZED_FILE.into()),
        ..manifest
    };

    let lock = build_lock(&parent, progress).map_err(io)?;
    let now = read_manifest(&dir).ok_or_else(unreadable)?;
    if now.component_sha256 != started_from || now.optimized.is_some() {
        return Err(PythonError::Optimize(
            "another capsa replaced the Python runtime meanwhile; run `capsa python install --optimize` again".into(),
        ));
    }
    switch_in(
        &dir,
        &staged,
        &serde_json::to_vec_pretty(&new_manifest).unwrap(),
    )
    .map_err(|e| {
        let _ = switch_back(&dir);
        io(e)
    })?;
    let undo = |why: String| -> PythonError {
        match switch_back(&dir) {
            Ok(_) => PythonError::Optimize(why),
            Err(e) => PythonError::Optimize(format!(
                "{why}; putting the runtime back failed too ({e}): `capsa python install --force` prepares it again"
            )),
        }
    };
    let after = match cached(cache_root, code) {
        None => return Err(undo("the optimized runtime does not check out".into())),
        Some(_) => check(),
    };
    match after {
        Ok(out) if out == before => {}
        Ok(out) => {
            return Err(undo(format!(
                "the optimized Python printed {out:?} where it printed {before:?}"
            )));
        }
        Err(e) => return Err(undo(format!("the optimized Python does not run: {e}"))),
    }
    switch_done(&dir);
    remove_stale(&parent);
    drop(lock);
    drop(work);
    progress(&format!(
        "capsa: Python is optimized ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    let rt = cached(cache_root, code).ok_or_else(|| {
        PythonError::Optimize(
            "the optimized runtime does not check out; is the cache directory shared?".into(),
        )
    })?;
    Ok((rt, version))
}

/// Where the manifest of the runtime as prepared waits while an optimized
/// component is checked ([`optimize`]): there, a switch not yet checked,
/// which the next `--optimize` undoes first.
const PREPARED_MANIFEST: &str = "manifest.prepared.json";

/// Switches the runtime in `dir` to the component `staged` (written and
/// synced) and its `manifest`: the manifest as prepared kept aside, the
/// component moved in beside the one as prepared, then one rename of the
/// manifest. A failure part way is undone by [`switch_back`].
fn switch_in(dir: &Path, staged: &Path, manifest: &[u8]) -> std::io::Result<()> {
    // Whole or not there: a partial copy here would be put back by an undo.
    let keep_new = dir.join(format!("{PREPARED_MANIFEST}.new"));
    let _ = fs::remove_file(&keep_new);
    write_synced(&keep_new, &fs::read(dir.join("manifest.json"))?)?;
    fs::rename(&keep_new, dir.join(PREPARED_MANIFEST))?;
    let target = dir.join(OPTIMIZED_FILE);
    let _ = fs::remove_file(&target);
    fs::rename(staged, &target)?;
    let new = dir.join("manifest.json.new");
    let _ = fs::remove_file(&new);
    write_synced(&new, manifest)?;
    fs::rename(&new, dir.join("manifest.json"))?;
    sync_dir(dir);
    Ok(())
}

/// Undoes a [`switch_in`] not yet made final: the manifest as prepared put
/// back (one rename), then the optimized component removed. Gives whether
/// there was one.
fn switch_back(dir: &Path) -> std::io::Result<bool> {
    let keep = dir.join(PREPARED_MANIFEST);
    if fs::symlink_metadata(&keep).is_err() {
        return Ok(false);
    }
    fs::rename(&keep, dir.join("manifest.json"))?;
    sync_dir(dir);
    let _ = fs::remove_file(dir.join(OPTIMIZED_FILE));
    Ok(true)
}

/// Makes a [`switch_in`] final: the manifest as prepared removed first (so
/// that nothing undoes it any more), then the component as prepared (a run
/// that opened it keeps it open).
fn switch_done(dir: &Path) {
    let _ = fs::remove_file(dir.join(PREPARED_MANIFEST));
    sync_dir(dir);
    let _ = fs::remove_file(dir.join("python.wasm"));
}

/// Makes the renames in `dir` durable where the platform allows it.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// `bytes` written to a new file at `path`, synced through the handle that
/// wrote them (Windows refuses to flush a file opened only for reading).
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = capsa_sandbox::load::create_new_private(path)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Runtimes of other capsa versions, and builds a crash left behind.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let current = key();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.starts_with(".old-") {
            let _ = fs::remove_dir_all(&path);
        } else if name.starts_with(".build-") {
            // A build in progress is minutes old at most; an older one crashed.
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600));
            if old {
                let _ = fs::remove_dir_all(&path);
            }
        } else if path.is_dir() && name != current {
            let lock = parent.join(format!("{name}.lock"));
            if let Ok(f) = fs::File::create(&lock)
                && f.try_lock().is_ok()
            {
                let _ = fs::remove_dir_all(&path);
                let _ = fs::remove_file(&lock);
            }
        }
    }
}

/// A new runtime component, snapshotted now with a hash seed of its own,
/// for a program that runs elsewhere (a browser page): never the cached one,
/// whose seed belongs to this machine. Takes as long as a first build.
pub fn generate_fresh() -> Result<Vec<u8>, PythonError> {
    let err = |e: std::io::Error| PythonError::Build(e.to_string());
    let work = tempfile::Builder::new()
        .prefix("capsa-python-")
        .tempdir()
        .map_err(err)?;
    let component = work.path().join("python.wasm");
    generate(work.path(), &component)?;
    fs::read(&component).map_err(err)
}

/// Directories of the standard library a program in a page has no use for
/// (tests, GUI toolkits, installers): left out of a site.
const STDLIB_UNUSED: [&str; 7] = [
    "test/",
    "idlelib/",
    "tkinter/",
    "turtledemo/",
    "ensurepip/",
    "lib2to3/",
    "__phello__/",
];

/// The standard library's `.py` files, by path below [`GUEST_STDLIB`], for
/// a site: without tests and GUI toolkits.
pub fn stdlib_sources() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let decoder = zstd::Decoder::new(STDLIB_TAR_ZST)?;
    let mut archive = tar::Archive::new(decoder);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if !path.ends_with(".py")
            || STDLIB_UNUSED
                .iter()
                .any(|d| path.starts_with(d) || path.contains(&format!("/{d}")))
        {
            continue;
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data)?;
        out.push((path, data));
    }
    Ok(out)
}

fn unpack_stdlib(dest: &Path) -> std::io::Result<()> {
    let decoder = zstd::Decoder::new(STDLIB_TAR_ZST)?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(false);
    fs::create_dir_all(dest)?;
    archive.unpack(dest)
}

fn generate(work: &Path, output: &Path) -> Result<(), PythonError> {
    let err = |e: std::io::Error| PythonError::Build(e.to_string());
    let app = work.join("app");
    fs::create_dir_all(&app).map_err(err)?;
    fs::write(app.join("app.py"), APP_PY).map_err(err)?;
    fs::write(app.join("_capsa_http.py"), HTTP_PY).map_err(err)?;
    fs::write(app.join("_capsa_warmup.py"), "pass\n").map_err(err)?;
    let wit = work.join("wit");
    for (rel, text) in WIT_FILES {
        let path = wit.join(rel);
        fs::create_dir_all(path.parent().unwrap()).map_err(err)?;
        fs::write(&path, text).map_err(err)?;
    }
    fs::write(wit.join("capsa.wit"), ROOT_WIT).map_err(err)?;

    let app = app
        .to_str()
        .ok_or_else(|| PythonError::Build("cache path is not UTF-8".into()))?
        .to_string();
    let out_path = output.to_path_buf();
    // componentize-py's generator is async and runs its own engine; keep its
    // runtime on a thread of its own, away from capsa's synchronous WASI.
    std::thread::spawn(move || -> Result<(), String> {
        let empty = std::collections::HashMap::new();
        // Both wasi:filesystem and wasi:http have a `types`.
        let imports = std::collections::HashMap::from([("wasi:http/types@0.2.0", "http_types")]);
        let generator = componentize_py::ComponentGenerator {
            wit_paths: &[&wit],
            worlds: &["capsa:python/command"],
            features: &[],
            all_features: false,
            world_module: None,
            python_path: &[&app],
            module_worlds: &[],
            app_name: "app",
            output_path: &out_path,
            add_to_linker: None,
            stub_wasi: false,
            import_interface_names: &imports,
            export_interface_names: &empty,
            full_names: false,
            intersect_world: None,
        };
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        rt.block_on(generator.generate())
            .map_err(|e| format!("{e:#}"))
    })
    .join()
    .map_err(|_| PythonError::Build("the generator panicked".into()))?
    .map_err(PythonError::Build)?;
    // Link addresses compiled in as constants, then fewer names for
    // wasmtime to read back on every start (folding leaves more unread),
    // then the libraries linked into one module, whose functions a start
    // goes through are then laid out first.
    let bytes = fs::read(output).map_err(err)?;
    let folded = fold::fold_link_globals(&bytes).map(|(b, _)| b);
    let bytes = folded.unwrap_or(bytes);
    let bytes = prune::prune_exports(&bytes).map_or(bytes, |(b, _)| b);
    let bytes = merge::merge_modules(&bytes).map_or(bytes, |(b, _)| b);
    let bytes = order_startup(bytes);
    fs::write(output, bytes).map_err(err)?;
    Ok(())
}

/// `component` with the functions a start goes through laid out first (see
/// [`order`](mod@order)), or as it was where that pass does not apply.
fn order_startup(component: Vec<u8>) -> Vec<u8> {
    let first = order::listed(order::STARTUP_FUNCTIONS);
    order::order_functions(&component, &first).map_or(component, |(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> Option<Vec<u8>> {
        fs::read(dir.join(name)).ok()
    }

    /// The optimized component switched in, undone, switched in again and
    /// made final: at every step the manifest names a component that is
    /// there, and an undo leaves exactly what was there before.
    #[test]
    fn switching_to_the_optimized_component_and_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        fs::write(dir.join("manifest.json"), b"prepared").unwrap();
        fs::write(dir.join("python.wasm"), b"A").unwrap();
        let stage = |bytes: &[u8]| {
            let p = dir.join("staged");
            fs::write(&p, bytes).unwrap();
            p
        };
        assert!(!switch_back(dir).unwrap(), "nothing to undo");

        switch_in(dir, &stage(b"B"), b"optimized").unwrap();
        assert_eq!(read(dir, "manifest.json").unwrap(), b"optimized");
        assert_eq!(read(dir, OPTIMIZED_FILE).unwrap(), b"B");
        assert_eq!(read(dir, PREPARED_MANIFEST).unwrap(), b"prepared");
        assert_eq!(read(dir, "python.wasm").unwrap(), b"A", "kept until final");
        assert!(read(dir, "manifest.prepared.json.new").is_none());

        assert!(switch_back(dir).unwrap());
        assert_eq!(read(dir, "manifest.json").unwrap(), b"prepared");
        assert_eq!(read(dir, "python.wasm").unwrap(), b"A");
        assert!(read(dir, OPTIMIZED_FILE).is_none());
        assert!(read(dir, PREPARED_MANIFEST).is_none());
        assert!(read(dir, "manifest.json.new").is_none());
        assert!(!switch_back(dir).unwrap(), "undone once");

        // Leftovers of an interrupted switch are written over.
        fs::write(dir.join(OPTIMIZED_FILE), b"stale").unwrap();
        fs::write(dir.join("manifest.json.new"), b"stale").unwrap();
        switch_in(dir, &stage(b"C"), b"optimized again").unwrap();
        assert_eq!(read(dir, OPTIMIZED_FILE).unwrap(), b"C");
        switch_done(dir);
        assert_eq!(read(dir, "manifest.json").unwrap(), b"optimized again");
        assert!(read(dir, "python.wasm").is_none());
        assert!(read(dir, PREPARED_MANIFEST).is_none());
        assert!(!switch_back(dir).unwrap(), "final: nothing undoes it");
    }

    #[test]
    fn a_manifest_names_one_of_two_files_only() {
        let m = |component: Option<&str>| Manifest {
            key: key(),
            component_sha256: String::new(),
            component_len: 0,
            built_in_ms: 0,
            optimized: None,
            component: component.map(Into::into),
        };
        assert_eq!(m(None).component_file(), Some("python.wasm"));
        assert_eq!(m(Some("python.wasm")).component_file(), Some("python.wasm"));
        assert_eq!(
            m(Some(OPTIMIZED_FILE)).component_file(),
            Some(OPTIMIZED_FILE)
        );
        for bad in ["../python.wasm", "/etc/passwd", "lib/os.py", ""] {
            assert_eq!(m(Some(bad)).component_file(), None, "{bad}");
        }
    }
}

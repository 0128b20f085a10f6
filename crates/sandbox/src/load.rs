//! Turning a file into a component the engine can run: telling a core module
//! from a component from text, adapting WASI preview 1 modules to preview 2,
//! and the per-machine cache of compiled code.

use capsa_policy::escape_for_terminal as escape;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Why a program cannot be run; each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("program not found: {0}")]
    NotFound(PathBuf),
    #[error("{0} is a directory, not a program")]
    IsDirectory(PathBuf),
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error(
        "{0} is not a WebAssembly program (no \\0asm header, and not WebAssembly text; a Python script needs a .py name or a #! line naming python)"
    )]
    NotWasm(PathBuf),
    #[error("{path} is not valid WebAssembly text: {msg}")]
    BadText { path: PathBuf, msg: String },
    // The program's own names reach these two (an import's, an export's),
    // escaped to one line: the caller keeps the message's line breaks as
    // capsa's own.
    #[error("{path} is not a valid WebAssembly program: {}", escape(msg))]
    Invalid { path: PathBuf, msg: String },
    #[error(
        "{path} imports {}, which capsa does not provide (capsa provides WASI preview 1 and WASI 0.2)",
        escape(import)
    )]
    UnknownImport { path: PathBuf, import: String },
    #[error("{path} is not a WASI command: {}", escape(msg))]
    NotCommand { path: PathBuf, msg: String },
}

/// The kind of binary, from the header's layer field.
enum Binary {
    Module,
    Component,
}

fn kind_of(bytes: &[u8]) -> Option<Binary> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return None;
    }
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    match [bytes[6], bytes[7]] {
        [0, 0] => Some(Binary::Module),
        [1, 0] => Some(Binary::Component),
        _ => None,
    }
}

/// A program file, fingerprinted, not yet compiled.
pub struct Program {
    pub path: PathBuf,
    /// The file's bytes; not read at all on a warm start (see [`CodeCache::digest_of`]).
    bytes: std::sync::OnceLock<Vec<u8>>,
    /// SHA-256 of the file as given: the cache key.
    pub digest: [u8; 32],
}

impl Program {
    /// Reads and hashes `path`, or, when `cache` remembers this exact file
    /// (same device, inode, size, and change time, which no user can set),
    /// takes its digest from there without reading it.
    pub fn read(path: &Path, cache: Option<&CodeCache>) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound(path.into()),
            _ => LoadError::Read {
                path: path.into(),
                err,
            },
        })?;
        if meta.is_dir() {
            return Err(LoadError::IsDirectory(path.into()));
        }
        let stamp = cache.and_then(|c| Some((c, file_stamp(path, &meta)?)));
        if let Some(digest) = stamp.as_ref().and_then(|(c, st)| c.remembered_digest(st)) {
            return Ok(Program {
                path: path.into(),
                bytes: std::sync::OnceLock::new(),
                digest,
            });
        }
        let bytes = read_checked(path)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some((c, st)) = &stamp {
            c.remember_digest(st, &digest);
        }
        Ok(Program {
            path: path.into(),
            bytes: bytes.into(),
            digest,
        })
    }

    fn bytes(&self) -> Result<&[u8], LoadError> {
        if let Some(b) = self.bytes.get() {
            return Ok(b);
        }
        let b = read_checked(&self.path)?;
        Ok(self.bytes.get_or_init(|| b))
    }

    /// The component to compile: text is parsed, a core module adapted.
    pub fn component_bytes(&self) -> Result<Vec<u8>, LoadError> {
        let path = self.path.as_path();
        let bytes = self.bytes()?;
        let binary = if bytes.starts_with(b"\0asm") {
            std::borrow::Cow::Borrowed(bytes)
        } else {
            wat::parse_bytes(bytes).map_err(|e| LoadError::BadText {
                path: path.into(),
                msg: e.to_string().lines().next().unwrap_or_default().to_string(),
            })?
        };
        match kind_of(&binary) {
            Some(Binary::Component) => Ok(binary.into_owned()),
            Some(Binary::Module) => adapt_module(path, &binary),
            None => Err(LoadError::Invalid {
                path: path.into(),
                msg: "unsupported WebAssembly version in the header".into(),
            }),
        }
    }
}

fn read_checked(path: &Path) -> Result<Vec<u8>, LoadError> {
    let bytes = std::fs::read(path).map_err(|err| LoadError::Read {
        path: path.into(),
        err,
    })?;
    if !bytes.starts_with(b"\0asm") && !looks_like_text(&bytes) {
        return Err(LoadError::NotWasm(path.into()));
    }
    Ok(bytes)
}

/// What identifies one version of one file: device, inode, size, and the
/// change time, which the kernel sets on every write and no user can set.
fn file_stamp(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let canonical = std::fs::canonicalize(path).ok()?;
        Some(format!(
            "{}\0{} {} {} {}.{}",
            canonical.display(),
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.ctime(),
            meta.ctime_nsec()
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, meta);
        None
    }
}

/// WebAssembly text: UTF-8 whose first token, after blanks and comments, is `(`.
fn looks_like_text(bytes: &[u8]) -> bool {
    let Ok(mut s) = std::str::from_utf8(bytes) else {
        return false;
    };
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix(";;") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("(;") {
            s = rest.split_once(";)").map_or("", |(_, r)| r);
        } else {
            return s.starts_with('(');
        }
    }
}

/// Wraps a WASI preview 1 module in the preview 1 → 0.2 adapter, so that one
/// host implementation (and one set of checks) serves both kinds.
fn adapt_module(path: &Path, module: &[u8]) -> Result<Vec<u8>, LoadError> {
    let invalid = |msg: String| LoadError::Invalid {
        path: path.into(),
        msg,
    };
    wasmparser::Validator::new()
        .validate_all(module)
        .map_err(|e| invalid(e.to_string()))?;
    let (mut has_start, mut has_memory) = (false, false);
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload.map_err(|e| invalid(e.to_string()))? {
            wasmparser::Payload::ImportSection(reader) => {
                for imp in reader.into_imports() {
                    let imp = imp.map_err(|e| invalid(e.to_string()))?;
                    if imp.module != "wasi_snapshot_preview1" {
                        return Err(LoadError::UnknownImport {
                            path: path.into(),
                            import: format!("{}::{}", imp.module, imp.name),
                        });
                    }
                }
            }
            wasmparser::Payload::ExportSection(reader) => {
                for exp in reader {
                    let exp = exp.map_err(|e| invalid(e.to_string()))?;
                    has_start |= exp.name == "_start";
                    has_memory |=
                        exp.name == "memory" && exp.kind == wasmparser::ExternalKind::Memory;
                }
            }
            _ => {}
        }
    }
    if !has_start {
        return Err(LoadError::NotCommand {
            path: path.into(),
            msg: "the module exports no _start function".into(),
        });
    }
    if !has_memory {
        return Err(LoadError::NotCommand {
            path: path.into(),
            msg: "the module exports no memory named `memory`, through which WASI passes its data"
                .into(),
        });
    }
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|e| e.adapter("wasi_snapshot_preview1", adapter()))
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| {
            // wit-component names an unknown WASI function in its chain.
            let msg = format!("{e:#}");
            match msg.find("wasi_snapshot_preview1") {
                Some(_) if msg.contains("not defined") || msg.contains("unknown") => {
                    LoadError::UnknownImport {
                        path: path.into(),
                        import: msg,
                    }
                }
                _ => invalid(msg),
            }
        })
}

/// The standard preview 1 adapter, with two fixes so that a preview 1
/// program behaves as on wasmtime's own preview 1:
///
/// - `proc_exit` passes its code through. The adapter as shipped maps every
///   non-zero code to 1: a native program's `exit(7)` must give 7. So an
///   import of `wasi:cli/exit.exit-with-code` (part of the world the adapter
///   declares) is added, and `proc_exit`'s body replaced by a call to it; the
///   canonical ABI keeps the low 8 bits, as a shell does.
/// - `fd_write` of no buffers checks its descriptor (BADF for a bad one):
///   the adapter returns success before looking it up. A wrapper passes one
///   empty buffer instead (wasi-testsuite `fd_write-to-invalid-fd`).
fn adapter() -> &'static [u8] {
    use std::sync::OnceLock;
    static PATCHED: OnceLock<Vec<u8>> = OnceLock::new();
    let original = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;
    PATCHED.get_or_init(|| patch_proc_exit(original).unwrap_or_else(|| original.to_vec()))
}

fn patch_proc_exit(adapter: &[u8]) -> Option<Vec<u8>> {
    use wasm_encoder::reencode::{Error, Reencode, utils};
    let mut func_imports = 0u32;
    let (mut exit_module, mut proc_exit, mut func_types) = (None, None, Vec::new());
    let (mut fd_write, mut stack_pointer) = (None, None);
    for payload in wasmparser::Parser::new(0).parse_all(adapter) {
        match payload.ok()? {
            wasmparser::Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.ok()?;
                    if matches!(imp.ty, wasmparser::TypeRef::Func(_)) {
                        if imp.module.starts_with("wasi:cli/exit@") {
                            exit_module = Some(imp.module.to_string());
                        }
                        func_imports += 1;
                    }
                }
            }
            wasmparser::Payload::FunctionSection(r) => {
                for t in r {
                    func_types.push(t.ok()?);
                }
            }
            wasmparser::Payload::ExportSection(r) => {
                for e in r {
                    let e = e.ok()?;
                    if e.name == "proc_exit" && e.kind == wasmparser::ExternalKind::Func {
                        proc_exit = Some(e.index);
                    }
                    if e.name == "fd_write" && e.kind == wasmparser::ExternalKind::Func {
                        fd_write = Some(e.index);
                    }
                }
            }
            wasmparser::Payload::CustomSection(c) => {
                if let wasmparser::KnownCustom::Name(names) = c.as_known() {
                    for n in names {
                        if let Ok(wasmparser::Name::Global(map)) = n {
                            for naming in map.into_iter().flatten() {
                                if naming.name == "__stack_pointer" {
                                    stack_pointer = Some(naming.index);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    struct Patch {
        /// Function imports before the one added, which becomes index `imports`.
        imports: u32,
        /// `proc_exit` among the defined functions.
        target: u32,
        ty: u32,
        module: String,
        seen: u32,
        /// `fd_write` (its index before the patch, its type) and the
        /// adapter's stack pointer, for the wrapper.
        fd_write: (u32, u32),
        stack_pointer: u32,
        /// Where the wrapper goes: after every defined function.
        wrapper: u32,
    }
    impl Patch {
        /// `fd_write(fd, iovs, len, nwritten)`: with no buffers, one empty
        /// buffer from the adapter's stack, so the descriptor is checked.
        fn fd_write_wrapper(&self) -> wasm_encoder::Function {
            use wasm_encoder::{BlockType, MemArg, ValType};
            let (sp, inner) = (self.stack_pointer, self.fd_write.0 + 1);
            let mut f = wasm_encoder::Function::new([(2, ValType::I32)]);
            f.instructions()
                .local_get(2)
                .global_get(sp)
                .i32_eqz()
                .i32_or()
                .if_(BlockType::Result(ValType::I32))
                .local_get(0)
                .local_get(1)
                .local_get(2)
                .local_get(3)
                .call(inner)
                .else_()
                .global_get(sp)
                .i32_const(16)
                .i32_sub()
                .local_tee(4)
                .global_set(sp)
                .local_get(4)
                .i64_const(0)
                .i64_store(MemArg {
                    offset: 0,
                    align: 3,
                    memory_index: 0,
                })
                .local_get(0)
                .local_get(4)
                .i32_const(1)
                .local_get(3)
                .call(inner)
                .local_set(5)
                .local_get(4)
                .i32_const(16)
                .i32_add()
                .global_set(sp)
                .local_get(5)
                .end()
                .end();
            f
        }
    }
    impl Reencode for Patch {
        type Error = std::convert::Infallible;
        fn function_index(&mut self, func: u32) -> Result<u32, Error<Self::Error>> {
            Ok(if func >= self.imports { func + 1 } else { func })
        }
        fn parse_import_section(
            &mut self,
            imports: &mut wasm_encoder::ImportSection,
            section: wasmparser::ImportSectionReader<'_>,
        ) -> Result<(), Error<Self::Error>> {
            utils::parse_import_section(self, imports, section)?;
            imports.import(
                &self.module,
                "exit-with-code",
                wasm_encoder::EntityType::Function(self.ty),
            );
            Ok(())
        }
        fn parse_function_body(
            &mut self,
            code: &mut wasm_encoder::CodeSection,
            func: wasmparser::FunctionBody<'_>,
        ) -> Result<(), Error<Self::Error>> {
            if self.seen == self.target {
                let mut f = wasm_encoder::Function::new([]);
                f.instructions()
                    .local_get(0)
                    .call(self.imports)
                    .unreachable()
                    .end();
                code.function(&f);
            } else {
                utils::parse_function_body(self, code, func)?;
            }
            self.seen += 1;
            Ok(())
        }
        fn parse_function_section(
            &mut self,
            functions: &mut wasm_encoder::FunctionSection,
            section: wasmparser::FunctionSectionReader<'_>,
        ) -> Result<(), Error<Self::Error>> {
            utils::parse_function_section(self, functions, section)?;
            functions.function(self.fd_write.1);
            Ok(())
        }
        fn parse_code_section(
            &mut self,
            code: &mut wasm_encoder::CodeSection,
            section: wasmparser::CodeSectionReader<'_>,
        ) -> Result<(), Error<Self::Error>> {
            utils::parse_code_section(self, code, section)?;
            code.function(&self.fd_write_wrapper());
            Ok(())
        }
        fn parse_export(
            &mut self,
            exports: &mut wasm_encoder::ExportSection,
            export: wasmparser::Export<'_>,
        ) -> Result<(), Error<Self::Error>> {
            if export.kind == wasmparser::ExternalKind::Func && export.index == self.fd_write.0 {
                exports.export(export.name, wasm_encoder::ExportKind::Func, self.wrapper);
                return Ok(());
            }
            utils::parse_export(self, exports, export)
        }
    }
    let target = proc_exit?.checked_sub(func_imports)?;
    let fd_write = fd_write?;
    let fd_write_ty = *func_types.get(fd_write.checked_sub(func_imports)? as usize)?;
    let mut patch = Patch {
        imports: func_imports,
        target,
        ty: *func_types.get(target as usize)?,
        module: exit_module?,
        seen: 0,
        fd_write: (fd_write, fd_write_ty),
        stack_pointer: stack_pointer?,
        wrapper: func_imports + 1 + u32::try_from(func_types.len()).ok()?,
    };
    let mut module = wasm_encoder::Module::new();
    patch
        .parse_core_module(&mut module, wasmparser::Parser::new(0), adapter)
        .ok()?;
    let patched = module.finish();
    wasmparser::Validator::new().validate_all(&patched).ok()?;
    Some(patched)
}

/// Bumped whenever what capsa compiles from the same input changes (the
/// adapter patch, say), so no stale entry is ever loaded.
const CACHE_FORMAT: u32 = 2;

/// Compiled code, cached per machine under `dir`, keyed by the program's
/// digest and everything about the engine that changes the code.
#[derive(Clone)]
pub struct CodeCache {
    dir: PathBuf,
}

impl CodeCache {
    pub fn new(dir: PathBuf) -> Self {
        CodeCache { dir }
    }

    /// The cache's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The default location: `$CAPSA_CACHE_DIR`, else (on Windows)
    /// `%LOCALAPPDATA%\capsa`, else `$XDG_CACHE_HOME/capsa`, else `~/.cache/capsa`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("CAPSA_CACHE_DIR") {
            return Some(d.into());
        }
        #[cfg(windows)]
        if let Some(d) = std::env::var_os("LOCALAPPDATA").filter(|d| !d.is_empty()) {
            return Some(Path::new(&d).join("capsa"));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(Path::new(&d).join("capsa"));
        }
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache").join("capsa"))
    }

    fn stamp_file(&self, stamp: &str) -> PathBuf {
        self.dir
            .join("digests")
            .join(hex(&Sha256::digest(stamp.as_bytes())[..20]))
    }

    /// The digest recorded for this exact file version, if any.
    fn remembered_digest(&self, stamp: &str) -> Option<[u8; 32]> {
        let file = self.stamp_file(stamp);
        if !trusted(&self.dir, &file) {
            return None;
        }
        let text = read_small_file(&file, 64 << 10)?;
        // The record holds the whole stamp, so a hash collision of stamps
        // cannot hand one file another's digest.
        let (recorded, digest) = text.split_at_checked(text.len().checked_sub(32)?)?;
        (recorded == stamp.as_bytes()).then(|| digest.try_into().ok())?
    }

    fn remember_digest(&self, stamp: &str, digest: &[u8; 32]) {
        let mut record = stamp.as_bytes().to_vec();
        record.extend_from_slice(digest);
        let _ = store(&self.dir, &self.stamp_file(stamp), &record);
    }

    pub(crate) fn entry(&self, engine: &Engine, digest: &[u8; 32]) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let mut key = Sha256::new();
        key.update(digest);
        key.update(h.finish().to_le_bytes());
        key.update(env!("CARGO_PKG_VERSION").as_bytes());
        key.update(CACHE_FORMAT.to_le_bytes());
        let name = hex(&key.finalize()[..20]);
        self.dir.join("code").join(format!("{name}.cwasm"))
    }

    /// Loads compiled code for `digest`, compiling `component` on a miss.
    pub fn load(&self, engine: &Engine, program: &Program) -> Result<Component, LoadError> {
        self.load_mapped(engine, program).map(|(c, _)| c)
    }

    /// [`load`](Self::load), and whether the code (and its memory
    /// snapshots) is mapped from the cache's file, not from bytes in memory.
    pub fn load_mapped(
        &self,
        engine: &Engine,
        program: &Program,
    ) -> Result<(Component, bool), LoadError> {
        let path = program.path.as_path();
        let entry = self.entry(engine, &program.digest);
        // Only a regular file: opening a FIFO put there would wait forever.
        // Anything else there is compiled over, and its profile made again.
        let regular = match std::fs::symlink_metadata(&entry) {
            Ok(m) if !m.is_file() => {
                let _ = std::fs::remove_file(crate::prefault::profile_path(&entry));
                false
            }
            found => found.is_ok(),
        };
        if regular && trusted(&self.dir, &entry) {
            #[cfg(target_os = "linux")]
            read_back_in_pages(&entry);
            // SAFETY: `trusted` checked that the file lies in a directory only
            // this user can write and was written by this user, which here
            // means by capsa through `store` below; wasmtime also checks the
            // header against this engine's version and configuration.
            if let Ok(c) = unsafe { Component::deserialize_file(engine, &entry) } {
                return Ok((c, true));
            }
            // Where the file cannot be mapped as code (wine maps no file
            // executable), its bytes are loaded instead: the same entry,
            // checked the same way.
            if let Ok(bytes) = std::fs::read(&entry)
                && let Ok(c) = unsafe { Component::deserialize(engine, &bytes) }
            {
                return Ok((c, false));
            }
            // Corrupt or from another engine: rebuilt below, and its page
            // profile made again.
            let _ = std::fs::remove_file(&entry);
            let _ = std::fs::remove_file(crate::prefault::profile_path(&entry));
        }
        let compiled = engine
            .precompile_component(&program.component_bytes()?)
            .map_err(|e| LoadError::Invalid {
                path: path.into(),
                msg: format!("{e:#}"),
            })?;
        // A cache that cannot be written only costs speed.
        let _ = store(&self.dir, &entry, &compiled);
        // SAFETY: these bytes were produced by `precompile_component` on this
        // same engine a moment ago.
        unsafe { Component::deserialize(engine, &compiled) }
            .map(|c| (c, false))
            .map_err(|e| LoadError::Invalid {
                path: path.into(),
                msg: format!("{e:#}"),
            })
    }
}

/// Has the kernel read the parts of a compiled file that are not in its page
/// cache a page to a folio, before wasmtime maps it. Left to faults, the
/// kernel's read-ahead grows its folios as it goes (up to 2 MiB), and this
/// kernel maps a whole folio at a fault: a run that uses a few pages of
/// one counts all of it (see `write_in_small_pieces`, which writes the
/// file in 16 KiB folios; a read cannot ask for those, so this asks for
/// pages). A file already cached is left as it is, at the cost of one
/// `mincore` per 2 MiB (about 40 us in all; one over every page of the
/// cached compiled Python took 0.4 ms and more). A piece whose sampled
/// page is cached counts as cached: pages the kernel dropped elsewhere in
/// it come back through faults. Nothing here can fail a run.
#[cfg(target_os = "linux")]
fn read_back_in_pages(path: &Path) {
    use rustix::fs::{Advice as FileAdvice, fadvise};
    use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};
    const PAGE: usize = 4096;
    const PIECE: usize = 2 << 20;
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let Ok(len) = file.metadata().map(|m| m.len() as usize) else {
        return;
    };
    if len == 0 || rustix::param::page_size() != PAGE {
        return;
    }
    // SAFETY: a fresh read-only shared mapping of the whole file, unmapped
    // below; only `mincore` looks at it (no page of it is touched).
    let missing: Vec<usize> = unsafe {
        let Ok(base) = mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::SHARED,
            &file,
            0,
        ) else {
            return;
        };
        // One page per piece says whether the piece is cached.
        let missing = (0..len)
            .step_by(PIECE)
            .filter(|&offset| {
                let mut resident = 0u8;
                libc::mincore(base.cast::<u8>().add(offset).cast(), PAGE, &mut resident) == 0
                    && resident & 1 == 0
            })
            .collect();
        let _ = munmap(base, len);
        missing
    };
    // `WILLNEED` reads the range asked for, with no read-ahead window to
    // grow, into folios of the file system's smallest order (a page on ext4
    // and XFS); pages already cached are skipped. One call reads no more
    // than the device's read-ahead or largest request (often 128 KiB and
    // 1,280 KiB; what a call asks past that is left out), so it is asked
    // 64 KiB at a time.
    const CALL: usize = 64 << 10;
    for offset in missing {
        for at in (offset..(offset + PIECE).min(len)).step_by(CALL) {
            let _ = fadvise(
                &file,
                at as u64,
                std::num::NonZeroU64::new(CALL as u64),
                FileAdvice::WillNeed,
            );
        }
    }
}

/// A cache file is used only if it, its directory and every directory from
/// the cache root down to it belong to this user, are not links, and nobody
/// else can write them: then only this user (through capsa, whose guests
/// never reach the cache) can have put it there.
pub fn trusted(root: &Path, entry: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(rel) = entry.strip_prefix(root) else {
            return false;
        };
        let uid = rustix::process::geteuid().as_raw();
        let ok = |p: &Path| {
            std::fs::symlink_metadata(p).is_ok_and(|m| {
                m.uid() == uid && m.mode() & 0o022 == 0 && !m.file_type().is_symlink()
            })
        };
        let mut cur = root.to_path_buf();
        if !ok(&cur) {
            return false;
        }
        for c in rel.components() {
            cur.push(c);
            if !ok(&cur) {
                return false;
            }
        }
        true
    }
    #[cfg(windows)]
    {
        let Ok(rel) = entry.strip_prefix(root) else {
            return false;
        };
        let mut cur = root.to_path_buf();
        if !crate::win_trust::private(&cur) {
            return false;
        }
        for c in rel.components() {
            cur.push(c);
            if !crate::win_trust::private(&cur) {
                return false;
            }
        }
        true
    }
}

/// `std::fs::canonicalize`, but a Windows path as a user types it: Windows
/// gives `\\?\C:\x` for `C:\x`.
pub fn canonical(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let c = std::fs::canonicalize(path)?;
    #[cfg(windows)]
    if let Some(s) = c.to_str() {
        return Ok(std::path::PathBuf::from(
            capsa_policy::winpath::strip_verbatim(s),
        ));
    }
    Ok(c)
}

/// Creates `dir` and its missing parents, readable and writable by this
/// user alone.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Opens the file `name` in the directory at the absolute, resolved path
/// `dir` for reading and writing, made where missing (not emptied), with no
/// link followed on the way or at `name` (on Unix), and only a regular file
/// with no other name: a file capsa writes where a program may have put a
/// link, or may swap one in while capsa opens it.
pub fn create_no_links(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<std::fs::File> {
    crate::fs_host::create_no_links(dir, name)
}

/// Creates a file that did not exist, never through a link: a link planted
/// at the name must not make capsa write somewhere else.
pub fn create_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    o.open(path)
}

/// Why [`read_regular_file`] read nothing.
#[derive(Debug)]
pub(crate) enum NotRead {
    Io(std::io::Error),
    /// A directory, FIFO, device or socket.
    NotAFile,
    TooLarge,
}

/// The bytes of `path` if it is a regular file of at most `max` bytes: never
/// a FIFO that would block or a device that would never end. A link is
/// followed only if `follow`.
pub(crate) fn read_regular_file(path: &Path, max: u64, follow: bool) -> Result<Vec<u8>, NotRead> {
    use std::io::Read;
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading waits for a writer without NONBLOCK.
        let nofollow = if follow {
            OFlags::empty()
        } else {
            OFlags::NOFOLLOW
        };
        o.custom_flags((nofollow | OFlags::NONBLOCK).bits() as i32);
    }
    #[cfg(not(unix))]
    let _ = follow;
    let f = o.open(path).map_err(NotRead::Io)?;
    let meta = f.metadata().map_err(NotRead::Io)?;
    if !meta.is_file() {
        return Err(NotRead::NotAFile);
    }
    if meta.len() > max {
        return Err(NotRead::TooLarge);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(max).read_to_end(&mut bytes).map_err(NotRead::Io)?;
    Ok(bytes)
}

/// `bytes` in lowercase hexadecimal, as the cache's file names spell digests.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `path` if it is a regular file (not a link, not a FIFO that
/// would block, not a device) of at most `max` bytes.
pub(crate) fn read_small_file(path: &Path, max: u64) -> Option<Vec<u8>> {
    read_regular_file(path, max, false).ok()
}

/// Opens an existing file for writing, never through a link.
pub fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    o.open(path)
}

/// Removes the directory `dir` and everything in it, never through a link,
/// and without recursion. A guest can make a tree deeper than any thread's
/// stack (20,000 levels in a few seconds: a short name renamed under the
/// next, again and again), and `std::fs::remove_dir_all` follows a tree by
/// recursion until the stack overflows and the process aborts. This keeps
/// one directory open at a time and the names still to remove at each
/// level. Going back up, it checks that `..` is the directory it came from
/// (its device and inode), so a tree moved while it is being removed never
/// leads it out of `dir`; going down, that it has not met the directory
/// already on its way, so a tree a running guest renames in a loop ends it
/// with an error instead of a walk without end.
#[cfg(unix)]
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, fstat, openat, statat, unlinkat};
    use rustix::io::Errno;
    use std::ffi::CString;
    use std::os::fd::OwnedFd;

    struct Level {
        /// Its name in the level above (none for `dir`).
        name: Option<CString>,
        id: (u64, u64),
        /// Names still to remove, and whether each is a directory.
        pending: Vec<(CString, bool)>,
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let id = |fd: &OwnedFd| -> std::io::Result<(u64, u64)> {
        let s = fstat(fd)?;
        Ok((s.st_dev as u64, s.st_ino as u64))
    };
    let level = |name: Option<CString>, fd: &OwnedFd| -> std::io::Result<Level> {
        let mut pending = Vec::new();
        for entry in Dir::read_from(fd)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
                _ => false,
            };
            pending.push((name.to_owned(), is_dir));
        }
        Ok(Level {
            name,
            id: id(fd)?,
            pending,
        })
    };
    let mut cur = openat(CWD, dir, flags, Mode::empty())?;
    let mut levels = vec![level(None, &cur)?];
    // The directories now open on the way down: one met again is a loop
    // that a guest still running made by renaming them (it never ends).
    let mut on_path = std::collections::HashSet::from([levels[0].id]);
    while let Some(top) = levels.last_mut() {
        if let Some((name, is_dir)) = top.pending.pop() {
            if !is_dir {
                match unlinkat(&cur, &name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => continue,
                    // Made a directory since it was listed.
                    Err(Errno::ISDIR | Errno::PERM) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match unlinkat(&cur, &name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => continue,
                Err(Errno::NOTEMPTY | Errno::EXIST) => {}
                // No longer a directory since it was listed.
                Err(Errno::NOTDIR) => match unlinkat(&cur, &name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            }
            let child = openat(&cur, &name, flags, Mode::empty())?;
            let next = level(Some(name), &child)?;
            if !on_path.insert(next.id) {
                return Err(std::io::Error::other(
                    "a directory was moved while it was being removed",
                ));
            }
            levels.push(next);
            cur = child;
            continue;
        }
        let done = levels.pop().and_then(|l| {
            on_path.remove(&l.id);
            l.name
        });
        let (Some(parent), Some(name)) = (levels.last(), done) else {
            break;
        };
        let up = openat(&cur, c"..", flags, Mode::empty())?;
        if id(&up)? != parent.id {
            return Err(std::io::Error::other(
                "a directory was moved while it was being removed",
            ));
        }
        cur = up;
        match unlinkat(&cur, &name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(cur);
    std::fs::remove_dir(dir)
}

/// Removes the directory `dir` and everything in it.
#[cfg(not(unix))]
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(dir)
}

/// Whether [`store`] could write `entry` now: its directory is private and
/// a file can be made there (made and removed at once).
pub(crate) fn can_store(root: &Path, entry: &Path) -> bool {
    let Some(dir) = entry.parent() else {
        return false;
    };
    if make_private_dir(dir).is_err() || !trusted(root, dir) {
        return false;
    }
    let probe = dir.join(format!(".tmp-{}-probe", std::process::id()));
    let ok = create_new_private(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Writes `bytes` 16 KiB at a time, so that the page cache holds them in
/// folios no larger. A file system with large folios (ext4, XFS) makes a
/// folio as large as the write, up to 2 MiB, and this kernel (Linux 6.18)
/// maps a whole folio at a fault: a compiled Python written in one call
/// counted 3.3 MiB more in every run's peak, for pages the run never used.
/// Smaller folios cost a start more faults: 16 KiB ones about 2% (4 KiB
/// ones 3.5%, 64 KiB ones saved only 1.4 MiB; see the README's notes on
/// memory). See `read_back_in_pages` for the same file read back from disk.
fn write_in_small_pieces(f: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    const PIECE: usize = 16 << 10;
    for piece in bytes.chunks(PIECE) {
        f.write_all(piece)?;
    }
    Ok(())
}

/// Writes `bytes` to `entry` atomically: a reader sees the whole file or none.
pub(crate) fn store(root: &Path, entry: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = entry
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent"))?;
    make_private_dir(dir)?;
    if !trusted(root, dir) {
        return Err(std::io::Error::other("the cache directory is not private"));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".tmp-{}-{nanos}-{}",
        std::process::id(),
        entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("entry")
    ));
    let result = (|| {
        let mut f = create_new_private(&tmp)?;
        write_in_small_pieces(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, entry)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    /// A tree deeper than any stack, with links out of it and odd entries,
    /// is removed on a thread with a small stack; what the links lead to is
    /// left as it was.
    #[cfg(unix)]
    #[test]
    fn a_tree_deeper_than_the_stack_is_removed_and_no_link_is_followed() {
        use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
        let base = std::env::temp_dir().join(format!("capsa-remove-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let outside = base.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep.txt"), "kept").unwrap();
        let root = base.join("tree");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep.txt"), root.join("file-out")).unwrap();
        std::fs::write(root.join("plain"), "x").unwrap();
        rustix::fs::mknodat(
            CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut cur = openat(CWD, &root, flags, Mode::empty()).unwrap();
        for i in 0..30_000 {
            mkdirat(&cur, c"d", Mode::from_raw_mode(0o700)).unwrap();
            if i % 1000 == 0 {
                std::fs::write(
                    format!("/proc/self/fd/{}/f", std::os::fd::AsRawFd::as_raw_fd(&cur)),
                    "x",
                )
                .unwrap();
                let link = format!("/proc/self/fd/{}/up", std::os::fd::AsRawFd::as_raw_fd(&cur));
                std::os::unix::fs::symlink(&outside, link).unwrap();
            }
            cur = openat(&cur, c"d", flags, Mode::empty()).unwrap();
        }
        drop(cur);
        let r = root.clone();
        let removed = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || super::remove_tree(&r))
            .unwrap()
            .join()
            .unwrap();
        removed.unwrap();
        assert!(!root.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep.txt")).unwrap(),
            "kept"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(
            super::remove_tree(&root).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// How many KiB of `file` one read of a byte at `offset` maps into this
    /// process: the whole folio holding it, or the kernel's fault-around
    /// (16 pages) when the file is cached in folios no larger.
    #[cfg(target_os = "linux")]
    fn mapped_by_one_read(file: &std::fs::File, offset: usize) -> u64 {
        use std::os::fd::AsRawFd;
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a read-only mapping of the file, unmapped here; one byte
        // inside it is read.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            std::ptr::read_volatile(base.cast::<u8>().add(offset));
            let head = format!("{:x}-", base as usize);
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let rss = smaps
                .lines()
                .skip_while(|l| !l.starts_with(&head))
                .find(|l| l.starts_with("Rss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .expect("the mapping is in smaps");
            libc::munmap(base, len);
            rss
        }
    }

    /// What capsa writes to its cache is held in small folios: one read
    /// maps no more than the kernel's fault-around (64 KiB), where a file
    /// written in one call (in 2 MiB folios on ext4) maps up to 2 MiB.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_stored_file_maps_a_few_pages_per_read() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("capsa-store-pages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let entry = root.join("code").join("x.cwasm");
        let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
        super::store(&root, &entry, &bytes).unwrap();
        let file = std::fs::File::open(&entry).unwrap();
        for offset in [(1 << 20) + 3 * 4096, (3 << 20) + 5 * 4096] {
            let kib = mapped_by_one_read(&file, offset);
            assert!(kib <= 64, "one read at {offset} mapped {kib} KiB");
        }
        assert_eq!(std::fs::read(&entry).unwrap(), bytes);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A file dropped from the page cache is read back by
    /// `read_back_in_pages`, a page to a folio; its bytes are untouched.
    #[cfg(target_os = "linux")]
    #[test]
    fn compiled_code_out_of_the_page_cache_is_read_back_in_pages() {
        use std::os::fd::AsRawFd;
        let path =
            std::env::temp_dir().join(format!("capsa-read-back-{}.cwasm", std::process::id()));
        let bytes: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        let resident = |offset: usize| -> bool {
            // SAFETY: a read-only mapping of one page of the file, unmapped here.
            unsafe {
                let base = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    offset as libc::off_t,
                );
                assert_ne!(base, libc::MAP_FAILED);
                let mut v = 0u8;
                assert_eq!(libc::mincore(base, 4096, &mut v), 0);
                libc::munmap(base, 4096);
                v & 1 == 1
            }
        };
        // SAFETY: advice only; the file is clean (synced) and mapped by no one.
        let dropped =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(dropped, 0);
        if resident(0) || resident(3 << 20) {
            eprintln!("the kernel kept the file cached; nothing to check here");
            let _ = std::fs::remove_file(&path);
            return;
        }
        super::read_back_in_pages(&path);
        // Every page of every piece, the last piece (1 MiB long) too, once
        // the reads the advice started have ended.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut missing: Vec<usize> = (0..bytes.len()).step_by(4096).collect();
        while !missing.is_empty() && std::time::Instant::now() < deadline {
            missing.retain(|&offset| !resident(offset));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(missing, [0usize; 0], "pages not read back");
        for offset in [(1 << 20) + 3 * 4096, (4 << 20) + 5 * 4096] {
            let kib = mapped_by_one_read(&file, offset);
            assert!(kib <= 64, "one read at {offset} mapped {kib} KiB");
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn adapter_proc_exit_is_patched() {
        let original =
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;
        let patched = super::patch_proc_exit(original).expect("the adapter can be patched");
        assert_ne!(patched, original);
        assert!(super::looks_like_text(b";; comment\n(module)"));
        assert!(super::looks_like_text(b"(; block ;) (component)"));
        assert!(!super::looks_like_text(b"hello"));
        assert!(!super::looks_like_text(b"\xff\xfe"));
    }
}

//! The wasmtime host: an engine, a store with a WASI context built from a
//! resolved [`Policy`], the limits of a run, and the report of every
//! capability decision.
//!
//! Every program runs as a WASI 0.2 component: a preview 1 module is wrapped
//! in the standard adapter first (see [`load`]), so one implementation of
//! WASI, with one set of checks in front of it, serves both.

mod fs_area;
mod fs_guard;
mod fs_host;
mod fs_stream;
mod fs_walk;
pub mod heap;
mod http_guard;
pub mod load;
mod net_guard;
mod output;
pub mod prefault;
pub mod report;
#[cfg(target_os = "linux")]
pub mod slots;
mod tcp_guard;
#[cfg(windows)]
mod win_trust;

use capsa_policy::{
    Access, GrantKind, Policy, Verdict, format_duration, format_size, strip_guest_prefix,
};
use fs_guard::{FsTracker, GuardedFs, GuardedFsData, Preopen};
use http_guard::{HttpClient, HttpHooks};
use net_guard::{GuardedSockets, GuardedSocketsData, LookupTracker};
use output::{LimitedOutput, Which};
use report::{AuditSink, Kind, Reporter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use load::{CodeCache, LoadError};
pub use output::{OutputBudget, line_start};

/// capsa's own exit codes. The guest's own code passes through unchanged;
/// these are chosen to match what shells and tools already mean by them.
pub mod exit {
    /// Bad flags, policy or bundle (as `docker run` uses 125).
    pub const USAGE: i32 = 125;
    /// The program cannot be loaded (as a shell's "cannot execute").
    pub const LOAD: i32 = 126;
    /// The wall-clock limit was reached (as `timeout(1)`).
    pub const TIMEOUT: i32 = 124;
    /// Memory, fuel or output limit reached (as a process the OOM killer ended: 128+9).
    pub const LIMIT: i32 = 137;
    /// The guest crashed: a WebAssembly trap (as a native abort: 128+6).
    pub const TRAP: i32 = 134;
    /// capsa itself failed (an I/O error on the host side).
    pub const INTERNAL: i32 = 70;
}

/// Everything the checks in front of WASI share for one run.
pub struct Guard {
    pub policy: Policy,
    pub reporter: Reporter,
    preopens: Vec<Preopen>,
    /// Which rules hold for which objects on the host.
    areas: fs_area::Areas,
    /// Addresses the host resolved for granted names in this run.
    resolved: Mutex<HashMap<IpAddr, Vec<String>>>,
    /// A UDP socket was bound under a listen grant: datagrams from anyone
    /// may be received. Until then, only replies from granted peers.
    udp_server: AtomicBool,
    /// Ephemeral loopback listeners the guest made without a grant: they
    /// take only the guest's own connections (see `tcp_guard`).
    private_listeners: Mutex<std::collections::HashSet<std::net::SocketAddr>>,
    /// The host's working directory, and the names in the host's `/` (read
    /// at the first refusal that needs them), for naming refused paths as
    /// typed.
    cwd: Option<PathBuf>,
    root_names: std::sync::OnceLock<std::collections::HashSet<String>>,
    /// What the program may still write to files (`--max-write`).
    written: Arc<OutputBudget>,
    /// Whether a refused temporary file is to be followed by a note naming
    /// `--tmp`, until it is (see [`RunConfig::suggest_tmp`]).
    suggest_tmp: AtomicBool,
}

/// What to run, and how.
pub struct RunConfig {
    pub program: PathBuf,
    /// `argv[0]` as the guest sees it.
    pub argv0: String,
    pub args: Vec<String>,
    pub policy: Policy,
    /// The guest's working directory (capsa's own, by default).
    pub cwd: Option<String>,
    /// The program changes to its working directory at start (Python's
    /// entry point does): the working directory is then there even when it
    /// holds no grant, empty (see `cwd_view`).
    pub enters_cwd: bool,
    pub quiet: bool,
    pub audit: Option<AuditSink>,
    pub cache: Option<CodeCache>,
    /// PEM files of CAs trusted for HTTPS besides the system's (`--ca-cert`).
    pub ca_certs: Vec<PathBuf>,
    /// The guest's stdin: these bytes, or (`None`) capsa's own stdin.
    pub stdin: Option<Vec<u8>>,
    /// Arguments for a minimal run of the same program, with nothing
    /// granted and no output, that shows which pages of its memory snapshot
    /// every run writes; made before the program's first run on this
    /// machine (see [`prefault`]). `None`: no profile is made.
    pub teach_pages: Option<Vec<String>>,
    /// A refused file made in the host's temporary directory (`/tmp`) is
    /// followed by a note naming `--tmp` (the command line's runs; not
    /// where the flag does not exist, nor once the program has a TMPDIR).
    pub suggest_tmp: bool,
}

/// How a run ended, when capsa itself did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited with this code.
    Exited(i32),
    /// A limit ended the run; the message names it and the flag that raises it.
    Limit { code: i32, message: String },
    /// The guest crashed: the trap, and what capsa knows of its cause.
    Trapped {
        message: String,
        note: Option<&'static str>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Grants that cannot be laid out in the guest together.
    #[error("{0}")]
    Policy(String),
    #[error("{0}")]
    Setup(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Load(_) => exit::LOAD,
            RunError::Policy(_) => exit::USAGE,
            RunError::Setup(_) => exit::INTERNAL,
        }
    }
}

struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for WasiState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

struct HostState {
    wasi: WasiState,
    fs: FsTracker,
    lookups: LookupTracker,
    tcp: tcp_guard::TcpTracker,
    guard: Arc<Guard>,
    limiter: MemoryLimiter,
    http: WasiHttpCtx,
    http_hooks: HttpHooks,
    /// The bytes given as stdin, read before the program starts: kept until
    /// its end, since freed once it read them they would be a credit in the
    /// count of what the host holds for it (see `heap::RunMemory`), as large
    /// as the input (a server's 64 MiB body).
    _stdin: Option<bytes::Bytes>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            // The same table as WASI's: bodies are wasi:io streams.
            table: &mut self.wasi.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// Caps the guest's linear memories, with what the host's heap holds for
/// it (see [`heap`]), together at `--memory`, its tables together at
/// [`MAX_TABLE_ELEMENTS`], and how many instances, memories and tables it
/// may make; remembers that the guest hit a cap, so the crash that usually
/// follows is reported as the limit it is.
struct MemoryLimiter {
    /// The limit, the bytes of every linear memory the guest holds and the
    /// host's part, shared with the run's watchdog.
    run: Arc<heap::RunMemory>,
    /// Elements of every table the guest holds.
    elements: usize,
    /// A cap was reached (memory or tables).
    hit: bool,
    /// Memory was refused: the program was told it ran out.
    memory_refused: bool,
}

/// Table elements a guest may hold in all; a table bomb costs host memory too.
const MAX_TABLE_ELEMENTS: usize = 4 << 20;

/// Instances, memories and tables one guest may make. CPython's component
/// uses a few dozen instances and a handful of memories; many more would
/// only serve to hold host memory outside the limits.
const MAX_INSTANCES: usize = 1000;
const MAX_MEMORIES: usize = 100;
const MAX_TABLES: usize = 1000;

/// Resources (descriptors, streams, HTTP fields...) a guest may hold at
/// once in the host's table: each costs host memory.
const MAX_RESOURCES: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own maximum wasmtime refuses the growth after
        // asking: not capsa's limit, and nothing to count.
        if max.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        use std::sync::atomic::Ordering::Relaxed;
        let total = (self.run.linear.load(Relaxed) + desired as u64).saturating_sub(current as u64);
        let ok = total.saturating_add(self.run.host()) <= self.run.limit;
        if ok {
            self.run.linear.store(total, Relaxed);
        }
        self.hit |= !ok;
        self.memory_refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.elements + desired).saturating_sub(current);
        let ok = total <= MAX_TABLE_ELEMENTS;
        if ok {
            self.elements = total;
        }
        self.hit |= !ok;
        Ok(ok)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// The guest's WebAssembly call stack. wasmtime's default (512 KiB) ends a
/// CPython recursing through C (an `lru_cache`d function) near depth 400
/// with a trap; with this much, CPython's own C-stack check fires first and
/// raises RecursionError, as natively.
pub const GUEST_STACK: usize = 32 << 20;

/// The host thread the guest runs on: its stack holds the guest's, plus
/// room for the host calls made from the deepest guest frame.
const HOST_STACK: usize = GUEST_STACK + (8 << 20);

fn engine(fuel: bool) -> Result<Engine, RunError> {
    engine_with(
        fuel,
        #[cfg(target_os = "linux")]
        None,
    )
}

/// [`engine`], whose memories (on Linux, with `image`) are made by
/// [`slots::Slots`].
fn engine_with(
    fuel: bool,
    #[cfg(target_os = "linux")] image: Option<Arc<slots::Image>>,
) -> Result<Engine, RunError> {
    let mut config = Config::new();
    #[cfg(target_os = "linux")]
    if let Some(image) = image {
        config.with_host_memory(Arc::new(slots::Slots::new(image)));
    }
    config.wasm_component_model(true);
    // No epoch interruption: its checks in every loop cost CPython a quarter
    // of its speed. The wall-clock limit is a watchdog thread that ends the
    // process (one guest per process), which also covers blocked host calls.
    config.max_wasm_stack(GUEST_STACK);
    // Never used (guests run synchronously), but must exceed the above.
    config.async_stack_size(GUEST_STACK + (1 << 20));
    config.consume_fuel(fuel);
    // The static build unwinds with LLVM's libunwind, with which wasmtime
    // registers each compiled function's unwind entry at every load (13,000
    // for Python: 150 page faults and a millisecond a run). Nothing of
    // wasmtime's needs them: its traps and backtraces walk frame pointers.
    #[cfg(target_env = "musl")]
    config.native_unwind_info(false);
    Engine::new(&config).map_err(|e| RunError::Setup(format!("cannot start the engine: {e:#}")))
}

/// Whether `policy`'s grants can be mounted as given (a single file keeps
/// its name; two host paths cannot share a guest path), for a caller that
/// checks a policy long before it runs one.
pub fn check_mounts(policy: &Policy) -> Result<(), RunError> {
    preopens(policy, None, false).map(drop)
}

/// One preopen per granted directory, and one per directory holding granted
/// files, which shows only those files.
///
/// wasi-libc resolves a relative path against `/` (it reads no initial
/// working directory), so a directory granted below the working directory
/// `cwd` is also mounted at its path relative to it: `out/result.txt` then
/// reaches the grant `$PWD/out` as it would natively.
///
/// `enters_cwd`: the program changes to `cwd` at start, which is then
/// there even when it holds no grant (see [`cwd_view`]).
fn preopens(
    policy: &Policy,
    cwd: Option<&str>,
    enters_cwd: bool,
) -> Result<Vec<Preopen>, RunError> {
    let mut out: Vec<Preopen> = Vec::new();
    for g in &policy.fs.grants {
        // A relative guest path is a preopen name wasi-libc takes from `/`.
        let absolute = g.guest_absolute().into_owned();
        let (host, guest, name) = match g.kind {
            GrantKind::Dir => (g.host.clone(), absolute.clone(), None),
            GrantKind::File => {
                let host = g
                    .host
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "/".into());
                let (dir, name) = absolute.rsplit_once('/').unwrap_or(("", &absolute));
                // The preopen is the host file's directory, so the guest must
                // reach the file by its own name there.
                if g.host.file_name().and_then(|n| n.to_str()) != Some(name) {
                    return Err(RunError::Policy(format!(
                        "{} is a single file: it keeps its name in the guest (use {}::{dir}/{})",
                        g.host.display(),
                        g.host.display(),
                        g.host
                            .file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default()
                    )));
                }
                let dir = if dir.is_empty() {
                    "/".to_string()
                } else {
                    dir.to_string()
                };
                (host, dir, Some(name.to_string()))
            }
        };
        let writable = g.access == Access::ReadWrite;
        if let Some(p) = out.iter_mut().find(|p| p.guest == guest) {
            if p.host != host {
                return Err(RunError::Policy(format!(
                    "{} and {} would both appear at {guest} in the guest; choose another guest path with HOST::GUEST",
                    p.host.display(),
                    host.display()
                )));
            }
            // The checks in front of WASI keep each grant to its own access.
            p.writable |= writable;
            p.only = match (p.only.take(), name) {
                (Some(mut names), Some(n)) => {
                    names.push(n);
                    Some(names)
                }
                _ => None,
            };
            continue;
        }
        out.push(Preopen {
            host,
            shown: guest.clone(),
            name: match (g.kind, g.guest.starts_with('/')) {
                (GrantKind::Dir, false) => g.guest.clone(),
                _ => guest.clone(),
            },
            guest,
            writable,
            only: name.map(|n| vec![n]),
            root_guard: false,
            workdir: false,
        });
    }
    if let Some(view) = cwd.and_then(|c| cwd_view(policy, &out, c, enters_cwd)) {
        match out.iter_mut().find(|p| p.guest == view.guest) {
            Some(holder) => {
                holder.only = view.only;
                holder.writable |= view.writable;
                holder.workdir = true;
            }
            None => out.push(view),
        }
    }
    let aliases: Vec<Preopen> = out
        .iter()
        .filter(|p| p.only.is_none())
        .filter_map(|p| {
            let rel = strip_guest_prefix(&p.guest, cwd.filter(|c| *c != "/")?)?;
            let alias = format!("/{rel}");
            // A real mount at that path wins; so does the grant of `cwd`
            // itself. An alias never appears inside a real mount either:
            // `python/json` below the working directory must not replace the
            // standard library's `json` at /python/json.
            let inside =
                |o: &Preopen| o.guest != "/" && strip_guest_prefix(&alias, &o.guest).is_some();
            (!rel.is_empty() && !out.iter().any(inside)).then(|| Preopen {
                name: alias.clone(),
                guest: alias,
                ..p.clone()
            })
        })
        .collect();
    out.extend(aliases);
    // The working directory is the first directory (descriptor 3), its
    // grant or its view, whatever order the flags came in: Zig's standard
    // library, and programs that take descriptor 3 as theirs, then find
    // their relative paths where they are natively, and never in another
    // grant. (wasi-libc picks a directory by its name, not its place.)
    if let Some(i) = out.iter().position(|p| Some(p.guest.as_str()) == cwd) {
        out[..=i].rotate_right(1);
    }
    Ok(out)
}

/// The working directory `cwd` (as the guest spells it) when it is not
/// granted but holds grants: the directory itself, showing and reaching
/// only those grants, as the directory of a granted file does (its other
/// names are outside every grant, and refused and reported as such).
///
/// Without it a program that opens relative paths from its working
/// directory's descriptor (Zig's standard library) was given the first
/// grant instead, and read `data/in.txt` when it asked for `in.txt`; and
/// Python, which changes to the working directory at start, stayed at `/`,
/// where `in.txt` granted with `--allow-read=in.txt` is not.
///
/// For a program that changes to its working directory at start
/// (`enters_cwd`: Python) the view is there even with no grant below it,
/// empty: Python then starts in its working directory as natively, and
/// `open("in.txt")` is refused as the working directory's `in.txt`, with
/// the hint `--allow-read=in.txt`, which is then the file it meant, not as
/// `/in.txt`. The guest learns nothing it did not have: the path is WASI's
/// `initial-cwd` already, and nothing in it is reachable. Other programs
/// get no empty view: Zig's standard library, which opens every path from
/// descriptor 3, keeps the first grant there, as with wasmtime's first
/// `--dir`, where an empty view would leave it nothing to reach.
///
/// `only` lists each grant's path below it: a file's name, or the path of
/// a directory; a listing shows their first names. `None` when the
/// working directory lies in a directory grant (it is that grant), when it
/// is `/` (the guarded root), when a grant of another host directory
/// already appears at its guest path, or when it holds no grant and the
/// program does not enter it, it is denied (`--deny-read`), or it cannot be
/// opened (removed, or not readable), which is no reason to refuse the run.
fn cwd_view(policy: &Policy, out: &[Preopen], cwd: &str, enters_cwd: bool) -> Option<Preopen> {
    let host = PathBuf::from(capsa_policy::default_host(cwd)?);
    if cwd == "/" || !host.is_absolute() {
        return None;
    }
    let in_grant = |p: &Preopen| p.only.is_none() && strip_guest_prefix(cwd, &p.guest).is_some();
    let granted = policy
        .fs
        .grants
        .iter()
        .any(|g| g.kind == GrantKind::Dir && host.starts_with(&g.host));
    if granted || out.iter().any(in_grant) {
        return None;
    }
    if out.iter().any(|p| p.guest == cwd && p.host != host) {
        return None;
    }
    let mut below: Vec<String> = Vec::new();
    // Grants at their own path only: one the guest finds elsewhere
    // (`HOST::GUEST`, and capsa's own, such as the standard library in
    // its cache) is not the working directory's to show.
    let at_own_path = |g: &&capsa_policy::FsGrant| {
        capsa_policy::default_guest(&g.host).as_deref() == Some(g.guest_absolute().as_ref())
    };
    for g in policy.fs.grants.iter().filter(at_own_path) {
        let Some(rel) = g.host.strip_prefix(&host).ok().and_then(|r| r.to_str()) else {
            continue;
        };
        let rel = rel.replace(std::path::MAIN_SEPARATOR, "/");
        if !rel.is_empty() && !below.contains(&rel) {
            below.push(rel);
        }
    }
    // Nor one under `--deny-read`, where even looking at `.` is refused.
    let denied = || policy.fs.deny_read.iter().any(|d| host.starts_with(d));
    if below.is_empty() && !(enters_cwd && !denied() && fs_host::can_open_dir(&host)) {
        return None;
    }
    Some(Preopen {
        writable: policy
            .fs
            .grants
            .iter()
            .any(|g| g.access == Access::ReadWrite && g.host.starts_with(&host)),
        host,
        guest: cwd.to_string(),
        name: cwd.to_string(),
        shown: cwd.to_string(),
        only: Some(below),
        root_guard: false,
        workdir: true,
    })
}

/// Whether a guest that changes to its working directory `cwd` (as it
/// spells it) at start finds it at its own path: granted there, or its view
/// (see [`cwd_view`]). Python's entry point changes to it then.
pub fn guest_sees_cwd(policy: &Policy, cwd: &str) -> bool {
    let Some(host) = capsa_policy::default_host(cwd).map(PathBuf::from) else {
        return false;
    };
    preopens(policy, Some(cwd), true)
        .is_ok_and(|out| out.iter().any(|p| p.guest == cwd && p.host == host))
}

/// Compiles `program` into `cache` now, as a run without `--fuel` would.
pub fn precompile(program: &load::Program, cache: &CodeCache) -> Result<(), RunError> {
    cache.load(&engine(false)?, program)?;
    Ok(())
}

/// Runs one program to its end under `config.policy`, on a thread whose
/// stack fits [`GUEST_STACK`].
///
/// Returns as soon as the outcome is known: the guest's memories and code
/// are unmapped on that thread afterwards, which a caller about to exit
/// need not wait for (it cost a run of Python about two milliseconds), and
/// which a caller that says so leaves to its exit (see [`exit_after_run`]).
pub fn run(config: RunConfig) -> Result<Outcome, RunError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let job: GuestJob = Box::new(move || {
        if let Err(e) = run_here(config, &tx) {
            let _ = tx.send(Err(e));
        }
    });
    if is_warm() {
        KEPT_GUEST.hand(job, |job, more| guest_thread(job, Some(more)))?;
    } else {
        guest_thread(job, None)?;
    }
    rx.recv()
        .unwrap_or_else(|_| Err(RunError::Setup("the guest thread panicked".into())))
}

/// A run, for the thread that runs its guest.
type GuestJob = Box<dyn FnOnce() + Send>;

/// Starts a thread for the guest's call stack that runs `job`, then each
/// job `more` brings.
fn guest_thread(
    job: GuestJob,
    more: Option<std::sync::mpsc::Receiver<GuestJob>>,
) -> Result<(), RunError> {
    std::thread::Builder::new()
        .name("guest".into())
        .stack_size(HOST_STACK)
        .spawn(move || {
            job();
            if let Some(more) = more {
                let stack = StackBounds::of_this_thread();
                stack.release_deep();
                for job in more {
                    job();
                    stack.release_deep();
                }
            }
        })
        .map(drop)
        .map_err(|e| RunError::Setup(format!("cannot start the guest thread: {e}")))
}

/// The stack of a kept guest thread. A run uses little of it (28 KiB for
/// Python's `print(1)`), but one recursing through C may touch most of its
/// 40 MiB, which would then stay resident in the worker for all its later
/// runs: between runs, the pages more than [`STACK_KEPT`] deep are given
/// back.
struct StackBounds {
    #[cfg(target_os = "linux")]
    low: usize,
}

/// How much of a kept guest thread's stack stays resident between runs.
#[cfg(target_os = "linux")]
const STACK_KEPT: usize = 1 << 20;

impl StackBounds {
    #[cfg(target_os = "linux")]
    fn of_this_thread() -> StackBounds {
        let mut low = 0;
        // SAFETY: reads this thread's own attributes into memory of ours,
        // and frees what pthread_getattr_np allocated for them.
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
            if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) == 0 {
                let mut addr = std::ptr::null_mut();
                let mut size = 0;
                if libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0 {
                    low = addr as usize;
                }
                libc::pthread_attr_destroy(attr.as_mut_ptr());
            }
        }
        StackBounds { low }
    }

    #[cfg(not(target_os = "linux"))]
    fn of_this_thread() -> StackBounds {
        StackBounds {}
    }

    /// Gives back the pages of the stack more than [`STACK_KEPT`] below
    /// this call, which no frame uses now (the stack grows down).
    #[cfg(target_os = "linux")]
    fn release_deep(&self) {
        let here = std::hint::black_box(&self.low) as *const usize as usize;
        let page = rustix::param::page_size();
        let end = here.saturating_sub(STACK_KEPT) & !(page - 1);
        if self.low != 0 && end > self.low {
            // SAFETY: [low, end) lies in this thread's stack, below every
            // frame in use: its pages read as zeros when next touched.
            unsafe {
                libc::madvise(
                    self.low as *mut libc::c_void,
                    end - self.low,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn release_deep(&self) {}
}

/// A warm process's guest thread, kept from run to run, as its time-limit
/// thread is (see [`KEPT_WATCHDOG`]): starting both for each run (stacks
/// and signal stacks mapped and unmapped, each unmapping interrupting the
/// other core to flush its TLB) cost a `capsa serve` worker 0.3 ms of its
/// 2.2 ms a run of `print(1)`. Runs take their turns on it, so the last
/// run's teardown ends before the next run starts: one snapshot mapped at a
/// time (see `prefault`). A job that panics ends the thread; the next run
/// starts another.
static KEPT_GUEST: Kept<GuestJob> = Kept::new();

/// A thread a warm process keeps from run to run, handed one item per run.
struct Kept<T>(Mutex<Option<std::sync::mpsc::Sender<T>>>);

impl<T> Kept<T> {
    const fn new() -> Self {
        Kept(Mutex::new(None))
    }

    /// Hands `item` to the kept thread, or has `start` start one that takes
    /// it first, then each item sent after it.
    fn hand(
        &self,
        item: T,
        start: impl FnOnce(T, std::sync::mpsc::Receiver<T>) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let item = match kept.as_ref() {
            Some(k) => match k.send(item) {
                Ok(()) => return Ok(()),
                // Its thread has ended (a run panicked): start another.
                Err(std::sync::mpsc::SendError(item)) => item,
            },
            None => item,
        };
        let (more_tx, more) = std::sync::mpsc::channel();
        start(item, more)?;
        *kept = Some(more_tx);
        Ok(())
    }
}

fn run_here(
    mut config: RunConfig,
    done: &std::sync::mpsc::Sender<Result<Outcome, RunError>>,
) -> Result<(), RunError> {
    // The time limit covers loading and compiling too: a program crafted to
    // compile slowly must not hold the host past it.
    let finished = Arc::new(Finished::default());
    // However this function ends, the watchdog stands down.
    struct Finish(Arc<Finished>);
    impl Drop for Finish {
        fn drop(&mut self) {
            self.0.set();
        }
    }
    let _finish = Finish(finished.clone());
    let early_reporter = Arc::new(std::sync::OnceLock::<Arc<Guard>>::new());
    let memory = Arc::new(heap::RunMemory::new(config.policy.limits.memory));
    start_watchdog(
        config.policy.limits.timeout,
        finished.clone(),
        early_reporter.clone(),
        memory.clone(),
    )?;
    let fuel = config.policy.limits.fuel.is_some();
    // Both are changed below on Linux only.
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut engine = engine_for(fuel)?;
    // Whether the memory is kept from run to run (see `reuse_for`): then
    // there is no snapshot in the compiled file to copy pages of.
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut kept_memory = false;
    #[cfg(target_os = "linux")]
    if is_warm()
        && let Some((e, program)) = reuse_for(&config.program, config.cache.as_ref(), fuel)
    {
        engine = e;
        config.program = program;
        config.teach_pages = None;
        kept_memory = true;
    }
    let load = Load {
        program: config.program.clone(),
        cache: config.cache.clone(),
        fuel,
    };
    // The minimal run that records the snapshot's page profile (see below).
    let teach = config.teach_pages.take().map(|args| {
        let mut policy = Policy::default();
        // An engine that counts fuel needs some to run at all.
        policy.limits.fuel = fuel.then_some(1 << 40);
        RunConfig {
            program: config.program.clone(),
            argv0: config.argv0.clone(),
            args,
            policy,
            cwd: None,
            enters_cwd: false,
            quiet: true,
            audit: None,
            cache: None,
            ca_certs: Vec::new(),
            stdin: Some(Vec::new()),
            teach_pages: None,
            suggest_tmp: false,
        }
    });
    // A process that runs one program and exits loads it while another
    // thread builds the linker and the run's side of the host (grants,
    // checks, WASI context): they do not depend on the program, and loading
    // takes longer. A warm process has the program ready and does both in
    // turn.
    let (pre, cwasm, host) = if is_warm() {
        let (pre, cwasm) = prepared(&load, &engine, || new_linker(&engine))?;
        (
            pre,
            cwasm,
            host_side(config, &engine, Some(&early_reporter), memory)?,
        )
    } else {
        let (linker_tx, linker) = std::sync::mpsc::channel();
        let (engine_ref, early) = (&engine, &*early_reporter);
        let (host, prepared) = side_by_side(
            move || {
                // The linker first: the loading thread waits for it (and
                // hears that it never comes if this panics).
                let _ = linker_tx.send(new_linker(engine_ref));
                host_side(config, engine_ref, Some(early), memory)
            },
            || {
                prepared(&load, &engine, || {
                    linker.recv().unwrap_or_else(|_| Err(panicked()))
                })
            },
        );
        // A program that cannot be loaded is reported before grants that
        // cannot be set up.
        let (pre, cwasm) = prepared?;
        (pre, cwasm, host.unwrap_or_else(|_| Err(panicked()))?)
    };
    let cwasm = cwasm.filter(|_| !kept_memory);
    let snapshot = cwasm.map(|c| {
        // The first run of a snapshot on this machine is preceded by a
        // minimal one that records which pages every run writes: a profile
        // taken from the user's own program would hold its pages too. A
        // warm process that read the profile already does not look again.
        if c.known.get().is_none()
            && let Some(teach) = teach
            && prefault::wanted(&c.root, &c.file)
            && let Ok(teach_host) = host_side(
                teach,
                &engine,
                None,
                Arc::new(heap::RunMemory::new(capsa_policy::Limits::DEFAULT_MEMORY)),
            )
        {
            let snapshot = Pages::Learn(c.root.clone(), c.file.clone());
            let _ = run_instance(teach_host, &pre, snapshot, &Finished::default(), |_| {});
        }
        Pages::Populate(c)
    });
    run_instance(
        host,
        &pre,
        snapshot.unwrap_or(Pages::None),
        &finished,
        |outcome| {
            let _ = done.send(Ok(outcome));
            if EXIT_AFTER_RUN.load(std::sync::atomic::Ordering::Relaxed) && !is_warm() {
                // The process exits now, and its exit unmaps all at once what
                // tearing the instance down here would unmap piece by piece.
                // This thread holds on to it until then.
                loop {
                    std::thread::park();
                }
            }
        },
    )
}

/// Set by a process that exits as soon as its one run ends (see
/// [`exit_after_run`]).
static EXIT_AFTER_RUN: AtomicBool = AtomicBool::new(false);

/// Called by a process that exits as soon as [`run`] returns: the run's
/// thread then leaves the instance, its memories and its code mapped for the
/// exit to remove, instead of tearing them down itself. Done on that
/// thread, the unmapping held the address space while the main thread was
/// printing the outcome and exiting, which then waited up to 1.5 ms for it.
/// A process that goes on after [`run`] must not call this: each run would
/// keep its memory until the process ends. A warm process (see
/// [`keep_warm`]) runs many programs, and tears each run down as before.
pub fn exit_after_run() {
    EXIT_AFTER_RUN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// What a run does with its snapshot's page profile (see [`prefault`]):
/// populates the pages it holds, or records it (the cache root and the
/// compiled file).
enum Pages {
    None,
    Populate(Cached),
    Learn(PathBuf, PathBuf),
}

/// One run's side of the host, ready for its program: the store, with the
/// WASI context, the checks in front of it and the limits, all built from
/// the run's configuration.
struct HostSide {
    store: Store<HostState>,
    guard: Arc<Guard>,
    budget: Arc<OutputBudget>,
    limits: capsa_policy::Limits,
}

/// Builds the host's side of a run of `config` (see [`HostSide`]).
fn host_side(
    mut config: RunConfig,
    engine: &Engine,
    early_reporter: Option<&std::sync::OnceLock<Arc<Guard>>>,
    memory: Arc<heap::RunMemory>,
) -> Result<HostSide, RunError> {
    let limits = config.policy.limits;
    let ca_certs = http_guard::read_ca_certs(&config.ca_certs).map_err(RunError::Policy)?;
    let mut preopens = preopens(&config.policy, config.cwd.as_deref(), config.enters_cwd)?;
    let own = own_dirs(&config)?;
    let areas = fs_area::Areas::build(&config.policy, &preopens, &own).map_err(|e| {
        let msg = format!("cannot look at the granted paths: {e}");
        // A grant's resolved path that now holds a link or a non-directory
        // on the way was changed since it was checked (see
        // `fs_host::hold_no_links`): the policy's failure, not capsa's.
        let changed = [fs_host::loop_error(), fs_host::not_dir_error()]
            .iter()
            .any(|c| c.raw_os_error().is_some() && c.raw_os_error() == e.raw_os_error());
        if changed {
            RunError::Policy(msg)
        } else {
            RunError::Setup(msg)
        }
    })?;
    let root = RootGuard::make(&preopens);
    if let Some(root) = &root {
        preopens.push(Preopen {
            host: root.host.clone(),
            name: "/".into(),
            guest: "/".into(),
            shown: "/".into(),
            writable: false,
            only: None,
            root_guard: true,
            workdir: false,
        });
    }
    let reporter = Reporter::new(config.quiet, config.audit);
    // A program told where its temporary files go (`--tmp`, `--env`) needs
    // no note of it.
    let suggest_tmp = config.suggest_tmp
        && !config
            .policy
            .env
            .set
            .iter()
            .any(|(name, _)| name == "TMPDIR");
    let guard = Arc::new(Guard {
        reporter,
        policy: config.policy,
        preopens,
        areas,
        resolved: Mutex::new(HashMap::new()),
        udp_server: AtomicBool::new(false),
        private_listeners: Mutex::new(Default::default()),
        cwd: config.cwd.as_deref().map(PathBuf::from),
        root_names: Default::default(),
        written: OutputBudget::new(limits.max_write),
        suggest_tmp: AtomicBool::new(suggest_tmp),
    });

    let budget = OutputBudget::new(limits.max_output);
    let mut b = WasiCtxBuilder::new();
    // The guest runs synchronously on a thread of its own: a file
    // operation may block that thread instead of hopping to tokio's pool and
    // back (a stat cost 150 us that way).
    b.allow_blocking_current_thread(true);
    let stdin = config.stdin.take().map(bytes::Bytes::from);
    match &stdin {
        Some(bytes) => b.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(bytes.clone())),
        None => b.inherit_stdin(),
    };
    b.stdout(LimitedOutput::new(Which::Stdout, budget.clone()))
        .stderr(LimitedOutput::new(Which::Stderr, budget.clone()))
        .arg(&config.argv0)
        .args(&config.args)
        .allow_ip_name_lookup(true)
        .allow_tcp(true)
        .allow_udp(true);
    let check_guard = guard.clone();
    b.socket_addr_check(move |addr, usage| {
        let ok = net_guard::check_addr(&check_guard, addr, usage);
        Box::pin(async move { ok })
    });
    for (k, v) in guest_env(&guard) {
        b.env(k, v);
    }
    if let Some(cwd) = &config.cwd {
        b.initial_cwd(cwd);
    }
    for p in &guard.preopens {
        // A read-only directory with a writable grant inside it is opened
        // for writing too, so that the grant holds when the program reaches
        // it from there (Zig opens every path from its working directory:
        // with `--allow-read=. --allow-write=out`, `out/x` was refused). What
        // the program may change there is decided by capsa's checks, which
        // refuse any change outside the writable grants as they do in a
        // read-only grant nested in a writable one.
        let holds_writable = || {
            p.only.is_none()
                && guard
                    .policy
                    .fs
                    .grants
                    .iter()
                    .any(|g| g.access == Access::ReadWrite && g.host.starts_with(&p.host))
        };
        let perms = if p.writable || (!p.root_guard && holds_writable()) {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        // A grant that is no longer what was checked is the policy's
        // failure (exit 125), not capsa's.
        let opened = mount_source(p, &guard.areas).map_err(|e| {
            RunError::Policy(format!(
                "cannot open granted directory {}: {e:#}",
                p.host.display()
            ))
        })?;
        b.preopened_dir(opened.path(&p.host), &p.name, perms)
            .map_err(|e| {
                RunError::Setup(format!(
                    "cannot open granted directory {}: {e:#}",
                    p.host.display()
                ))
            })?;
    }
    // Open now; removed, it can never hold anything.
    drop(root);

    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);

    let mut store = Store::new(
        engine,
        HostState {
            wasi: WasiState {
                ctx: b.build(),
                table,
            },
            fs: FsTracker::default(),
            lookups: LookupTracker::default(),
            tcp: tcp_guard::TcpTracker::default(),
            guard: guard.clone(),
            limiter: MemoryLimiter {
                run: memory,
                elements: 0,
                hit: false,
                memory_refused: false,
            },
            http: WasiHttpCtx::new(),
            http_hooks: HttpHooks(Arc::new(HttpClient::new(guard.clone(), ca_certs))),
            _stdin: stdin,
        },
    );
    store.limiter(|s| &mut s.limiter);
    // wasmtime copies at most 128 MiB into the host per call by default, and
    // a larger write to stdout (whose permit is `MAX_WRITE`, so that CPython
    // is not handed a short write it drops the rest of) crashed the run.
    // Such a write is the program's own data, held in its memory under
    // `--memory`, so a call may copy as much as that limit, no more: a list
    // whose items all point at the same bytes (a million header fields of
    // one 1 MB value) is copied once per item, and the host must not build
    // a gigabyte of it before the watchdog looks.
    store.set_hostcall_fuel(
        output::MAX_WRITE.min(usize::try_from(limits.memory).unwrap_or(usize::MAX)),
    );
    if let Some(fuel) = limits.fuel {
        store
            .set_fuel(fuel)
            .map_err(|e| RunError::Setup(format!("cannot set fuel: {e:#}")))?;
    }
    if let Some(r) = early_reporter {
        let _ = r.set(guard.clone());
    }
    Ok(HostSide {
        store,
        guard,
        budget,
        limits,
    })
}

/// Instantiates `pre` in `host` and runs it; hands the outcome to
/// `deliver`, then tears the instance down (unless `deliver` keeps the
/// thread: see [`exit_after_run`]).
fn run_instance(
    host: HostSide,
    pre: &wasmtime::component::InstancePre<HostState>,
    pages: Pages,
    finished: &Finished,
    deliver: impl FnOnce(Outcome),
) -> Result<(), RunError> {
    let HostSide {
        mut store,
        guard,
        budget,
        limits,
    } = host;
    // Said once the program is known to load.
    for rule in guard.areas.own_inside(&guard.policy) {
        guard.reporter.note(&format!(
            "{} stays out of the program's reach: it holds capsa's own files",
            rule.host.display()
        ));
    }
    // A preview 1 module has no sockets: network grants give it nothing,
    // and it would only fail with "unsupported" (no line: nothing was
    // asked of the host).
    let net = &guard.policy.net;
    if !(net.allow.is_empty() && net.listen.is_empty())
        && !pre
            .component()
            .component_type()
            .imports(store.engine())
            .any(|(name, _)| name.starts_with("wasi:sockets/") || name.starts_with("wasi:http/"))
    {
        guard.reporter.note(
            "the program imports no network interface (a WASI preview 1 module has none): --allow-net and --allow-listen give it nothing",
        );
    }
    let mut snapshot = None;
    // From here on the heap's growth is the program's, and so are the
    // lines on stdout and stderr.
    store.data().limiter.run.start();
    output::lines_start();
    let result = pre.instantiate(&mut store).and_then(|instance| {
        match &pages {
            Pages::None => {}
            Pages::Populate(c) => populate(c),
            Pages::Learn(_, file) => snapshot = prefault::Known::of(file).find(),
        }
        let command = wasmtime_wasi::p2::bindings::sync::Command::new(&mut store, &instance)?;
        command.wasi_cli_run().call_run(&mut store)
    });
    if let Pages::Learn(root, file) = &pages {
        prefault::learn(root, file, snapshot.as_ref());
    }
    finished.set();
    let outcome = outcome(result, &store, &budget, &limits);
    if let Outcome::Limit { message, .. } = &outcome {
        guard.reporter.limit(message);
    }
    guard.reporter.flush();
    // The program's descriptors are closed before a folder made for the
    // run is removed: one it kept open deep in a tree it made there pins
    // every directory above it in the kernel's cache, and each removal
    // then walks them all (a chain of 15,000 took 9.1 s to remove, 1.2 s
    // once closed).
    if !RUN_FOLDERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        drop(std::mem::take(&mut store.data_mut().wasi.table));
    }
    deliver(outcome);
    Ok(())
}

/// Engines, and programs ready to be instantiated, kept from run to run by
/// a process that runs many programs (see [`keep_warm`]).
#[derive(Default)]
struct Warm {
    /// Without fuel, and with.
    engines: [Option<Engine>; 2],
    /// Per program path, the engine whose memory keeps its image and its
    /// variant without its memory's data, where they are ready (see
    /// [`reuse_for`]).
    #[cfg(target_os = "linux")]
    reuse: Vec<(PathBuf, Option<(Engine, PathBuf)>)>,
    /// The newest last.
    programs: Vec<Ready>,
}

/// A program a warm process keeps ready to instantiate.
struct Ready {
    digest: [u8; 32],
    fuel: bool,
    pre: wasmtime::component::InstancePre<HostState>,
    /// Mapped from the cache's file (not compiled just now, in memory).
    mapped: bool,
    /// That file and its snapshot's profile, once a run has read them.
    known: Arc<std::sync::OnceLock<prefault::Known>>,
}

/// Programs a warm process keeps ready.
const WARM_PROGRAMS: usize = 4;

static WARM: Mutex<Option<Warm>> = Mutex::new(None);

/// Called first in `main`: the whole process allocates from glibc's main
/// arena. By default each new thread gets an arena of its own, which
/// grows a page at a time (an `mprotect` and a fault for each): the guest's
/// thread made about 140 such calls in a run of `hello.py`, about 0.7 ms
/// of its start-up. capsa has one busy thread at a time (the guest's, or
/// in a server one per core), and each thread still keeps a cache of small
/// blocks of its own.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sets one of malloc's tunables; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// From now on, this process keeps its engines and the programs it ran
/// compiled, linked and ready to instantiate, so that a later run of the
/// same program (a server's next run of Python) skips all of that. Each run
/// still gets its own store, memories, WASI context and checks.
pub fn keep_warm() {
    *WARM.lock().unwrap_or_else(|e| e.into_inner()) = Some(Warm::default());
}

/// Copies the pages of the snapshot mapped from `c` that its profile holds,
/// and makes later reads of it map only the pages read (see [`prefault`]).
fn populate(c: &Cached) {
    let known = c
        .known
        .get_or_init(|| prefault::Known::read(&c.root, &c.file));
    let Some(m) = known.find() else {
        return;
    };
    // A kernel that cannot only leaves more of the file mapped.
    let _ = prefault::map_only_pages_read(&m);
    if !known.populate(&m) && known.first_misfit() {
        // Unusable, or recorded for another layout (another page size): the
        // next process records it again.
        prefault::forget(&c.root, &c.file);
    }
}

/// Whether this process keeps programs ready from run to run (see
/// [`keep_warm`]).
fn is_warm() -> bool {
    WARM.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// The engine for runs with fuel or without: a warm process's own, or a
/// new one.
fn engine_for(fuel: bool) -> Result<Engine, RunError> {
    let mut warm = WARM.lock().unwrap_or_else(|e| e.into_inner());
    match warm.as_mut() {
        Some(w) => match &w.engines[usize::from(fuel)] {
            Some(e) => Ok(e.clone()),
            None => {
                let e = engine(fuel)?;
                w.engines[usize::from(fuel)] = Some(e.clone());
                Ok(e)
            }
        },
        None => engine(fuel),
    }
}

/// Runs `first` on a thread of its own while this thread runs `second`,
/// and returns both results (`Err` if `first` panicked). If no thread can be
/// made, runs `first` and then `second` here.
fn side_by_side<A: Send, B>(
    first: impl FnOnce() -> A + Send,
    second: impl FnOnce() -> B,
) -> (std::thread::Result<A>, B) {
    // Where the thread takes `first` from, or this one if there is none.
    let slot = Mutex::new(Some(first));
    let take = || slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    std::thread::scope(|s| {
        match std::thread::Builder::new().spawn_scoped(s, || take().map(|f| f())) {
            Ok(thread) => {
                let b = second();
                let a = thread.join().map(|a| a.expect("`first` is taken once"));
                (a, b)
            }
            Err(_) => {
                let a = take().map(|f| f()).expect("`first` is taken once");
                (Ok(a), second())
            }
        }
    })
}

fn panicked() -> RunError {
    RunError::Setup("the thread setting up the run panicked".into())
}

/// A linker with everything capsa gives a guest.
fn new_linker(engine: &Engine) -> Result<Linker<HostState>, RunError> {
    let mut linker = Linker::<HostState>::new(engine);
    link(&mut linker).map_err(|e| RunError::Setup(format!("cannot set up WASI: {e:#}")))?;
    Ok(linker)
}

/// The program to load, and from where.
struct Load {
    program: PathBuf,
    cache: Option<CodeCache>,
    /// Whether its engine counts fuel.
    fuel: bool,
}

/// `load.program` compiled, checked and linked for `engine`, with the
/// linker `linker` gives if the process does not have it ready.
fn prepared(
    load: &Load,
    engine: &Engine,
    linker: impl FnOnce() -> Result<Linker<HostState>, RunError>,
) -> Result<Prepared, RunError> {
    let fuel = load.fuel;
    let mut warm = WARM.lock().unwrap_or_else(|e| e.into_inner());
    let program = load::Program::read(&load.program, load.cache.as_ref())?;
    let cwasm = cwasm_of(load, engine, &program);
    if let Some(w) = warm.as_ref()
        && let Some(ready) = w
            .programs
            .iter()
            .find(|r| r.digest == program.digest && r.fuel == fuel)
    {
        let cwasm = cwasm.filter(|_| ready.mapped).map(|(root, file)| Cached {
            root,
            file,
            known: ready.known.clone(),
        });
        return Ok((ready.pre.clone(), cwasm));
    }
    let (component, mapped) = match &load.cache {
        Some(cache) => cache.load_mapped(engine, &program)?,
        None => (
            wasmtime::component::Component::new(engine, program.component_bytes()?).map_err(
                |e| LoadError::Invalid {
                    path: load.program.clone(),
                    msg: format!("{e:#}"),
                },
            )?,
            false,
        ),
    };
    check_world(engine, &component, &load.program)?;
    let linker = linker()?;
    // A program that imports what capsa lacks cannot be loaded (126); it
    // is not a crash.
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::UnknownImport {
            path: load.program.clone(),
            import: format!("{e:#}"),
        })?;
    let known = Arc::new(std::sync::OnceLock::new());
    if let Some(w) = warm.as_mut() {
        if w.programs.len() >= WARM_PROGRAMS {
            w.programs.remove(0);
        }
        w.programs.push(Ready {
            digest: program.digest,
            fuel,
            pre: pre.clone(),
            mapped,
            known: known.clone(),
        });
    }
    // Code compiled just now runs from memory: there is no file mapping to
    // populate or learn from until the next run.
    let cwasm = cwasm
        .filter(|_| mapped)
        .map(|(root, file)| Cached { root, file, known });
    Ok((pre, cwasm))
}

fn cwasm_of(load: &Load, engine: &Engine, program: &load::Program) -> Option<(PathBuf, PathBuf)> {
    let cache = load.cache.as_ref()?;
    Some((
        cache.dir().to_path_buf(),
        cache.entry(engine, &program.digest),
    ))
}

/// The program ready to instantiate, and the compiled file in capsa's
/// cache it may have been mapped from.
type Prepared = (wasmtime::component::InstancePre<HostState>, Option<Cached>);

/// A compiled file in capsa's cache that a program was mapped from.
struct Cached {
    /// The cache's root.
    root: PathBuf,
    file: PathBuf,
    /// What the process knows of the file (see [`prefault::Known`]); shared
    /// by the runs of a warm process.
    known: Arc<std::sync::OnceLock<prefault::Known>>,
}

/// What a preopen mounts: on Linux, the directory its resolved host path
/// names now, opened without following any link on the way and checked to
/// be the object the run's areas marked as granted, then mounted through
/// that descriptor (`/proc/self/fd/N`). A name swapped for a link since the
/// grant was resolved (by a program running meanwhile) then fails the run
/// instead of mounting wherever the link points.
enum MountSource {
    ByPath,
    #[cfg(target_os = "linux")]
    Held(std::os::fd::OwnedFd),
}

impl MountSource {
    fn path(&self, host: &Path) -> PathBuf {
        match self {
            MountSource::ByPath => host.to_path_buf(),
            #[cfg(target_os = "linux")]
            MountSource::Held(fd) => PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(fd)
            )),
        }
    }
}

fn mount_source(p: &Preopen, areas: &fs_area::Areas) -> std::io::Result<MountSource> {
    if p.root_guard {
        return Ok(MountSource::ByPath);
    }
    let (held, found) = fs_host::hold_no_links(&p.host)?;
    if !areas.is_granted_root(found.ident) {
        return Err(std::io::Error::other(
            "it changed while the run started; nothing ran",
        ));
    }
    #[cfg(target_os = "linux")]
    {
        let source = MountSource::Held(held);
        // Without /proc (some chroots), by its name, as just checked.
        if std::fs::metadata(source.path(&p.host)).is_ok() {
            return Ok(source);
        }
    }
    #[cfg(not(target_os = "linux"))]
    drop(held);
    Ok(MountSource::ByPath)
}

/// The directory behind the guarded root (see [`Preopen::root_guard`]):
/// made empty and private, opened as the guest's `/`, and removed once
/// open, so nothing can ever be made in it. Without it, wasi-libc fails a
/// path outside every preopen by itself and the host never hears of it.
struct RootGuard {
    /// Where it was made, until it is removed: on Linux as soon as it is
    /// held, so that a process ended at its time limit or killed leaves
    /// nothing behind.
    name: Option<PathBuf>,
    /// What the preopen opens: on Linux the directory capsa opened itself
    /// (`/proc/self/fd/N`), so that a name re-pointed after the check
    /// changes nothing.
    host: PathBuf,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl RootGuard {
    /// Opens the directory just made at `name`, without following a link,
    /// and checks that it is still what capsa made: a directory of this
    /// user that nobody may write in (a directory a guest makes through a
    /// grant is writable by its owner: WASI cannot change modes).
    #[cfg(target_os = "linux")]
    fn hold(name: PathBuf) -> Option<RootGuard> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            &name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let mine = st.st_uid == rustix::process::geteuid().as_raw();
        if !mine || st.st_mode & 0o222 != 0 {
            // Not left behind if the name still is what was opened (an
            // empty directory: nothing else is removed).
            if still_named(&fd, &name) {
                let _ = std::fs::remove_dir(&name);
            }
            return None;
        }
        let held = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        // Without /proc (some chroots), by its name, as checked just now,
        // and kept until the run ends. With it, the name goes now: the
        // preopen opens the directory through capsa's descriptor, and an
        // empty directory that no longer has a name can never hold one
        // (the kernel refuses to make anything in it).
        match rustix::fs::stat(&held) {
            Ok(s) if s.st_dev == st.st_dev && s.st_ino == st.st_ino => {
                let name = (!(still_named(&fd, &name) && std::fs::remove_dir(&name).is_ok()))
                    .then_some(name);
                Some(RootGuard {
                    name,
                    host: held,
                    fd,
                })
            }
            _ => Some(RootGuard {
                host: name.clone(),
                name: Some(name),
                fd,
            }),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn hold(name: PathBuf) -> Option<RootGuard> {
        Some(RootGuard {
            host: name.clone(),
            name: Some(name),
        })
    }

    /// `None` when a grant is mounted at `/` itself, or no temporary
    /// directory can be made.
    fn make(preopens: &[Preopen]) -> Option<RootGuard> {
        if preopens.iter().any(|p| p.guest == "/") {
            return None;
        }
        let mut tried = Vec::new();
        for base in [
            shared_memory_dir(),
            Some(std::env::temp_dir()),
            Some("/tmp".into()),
        ]
        .into_iter()
        .flatten()
        {
            if tried.contains(&base) {
                continue;
            }
            for attempt in 0..16u32 {
                let nonce: u64 = rand_u64() ^ u64::from(attempt);
                // No pid: whoever can list the directory learns nothing of
                // which process it is.
                let dir = base.join(format!(".capsa-root-{nonce:016x}"));
                #[cfg_attr(not(unix), allow(unused_mut))]
                let mut builder = std::fs::DirBuilder::new();
                // Nobody may make a name in it, the guest's view of `/`.
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o500);
                // Made and held (its name gone) before a time limit may end
                // the process: the watchdog waits for this lock.
                let _naming = NAMING.lock().unwrap_or_else(|e| e.into_inner());
                match builder.create(&dir) {
                    Ok(()) => match RootGuard::hold(dir) {
                        Some(g) => return Some(g),
                        // Renamed or replaced before it was opened (by
                        // another program granted this directory): another
                        // name.
                        None => continue,
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(_) => break,
                }
            }
            tried.push(base);
        }
        // Without it the run is as safe, only quieter: wasi-libc fails such
        // paths by itself.
        None
    }
}

/// Linux's `/dev/shm`, if it is the usual shared, sticky directory: made
/// and removed in memory, the guarded root costs 10 us a run instead of
/// 270 us on a disk's file system (ext4), where `/tmp` often is.
fn shared_memory_dir() -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from("/dev/shm");
        let m = std::fs::symlink_metadata(&dir).ok()?;
        // Sticky: nobody else can rename or remove what capsa makes there.
        (m.is_dir() && m.permissions().mode() & 0o1000 != 0).then_some(dir)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Whether `name` (not followed if a link) is the directory open as `fd`.
#[cfg(target_os = "linux")]
fn still_named(fd: &std::os::fd::OwnedFd, name: &std::path::Path) -> bool {
    match (rustix::fs::fstat(fd), rustix::fs::lstat(name)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        let Some(name) = &self.name else { return };
        // Only the directory capsa made: a name re-pointed since is left.
        #[cfg(target_os = "linux")]
        if !still_named(&self.fd, name) {
            return;
        }
        let _ = std::fs::remove_dir(name);
    }
}

/// Random bits for a file name nobody can guess in advance.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// capsa's own directories, which no grant reaches: the cache holds code
/// capsa runs natively and the Python that every later run imports. Made
/// now if a grant holds where it will be, so that it is marked as an object
/// and not only as a name.
fn own_dirs(config: &RunConfig) -> Result<Vec<PathBuf>, RunError> {
    let Some(cache) = &config.cache else {
        return Ok(Vec::new());
    };
    let dir = cache.dir();
    // Made now, so that it is marked as an object, not only as a name.
    let made = load::make_private_dir(dir);
    let real = load::canonical(dir).unwrap_or_else(|_| dir.to_path_buf());
    let inside_grant = config.policy.fs.grants.iter().any(|g| {
        g.kind == GrantKind::Dir && (dir.starts_with(&g.host) || real.starts_with(&g.host))
    });
    if let (true, Err(e)) = (inside_grant, made) {
        return Err(RunError::Setup(format!(
            "cannot create {}: {e}",
            dir.display()
        )));
    }
    // As given: the links on its way are pinned too (see `fs_area`).
    Ok(vec![dir.to_path_buf()])
}

fn guest_env(guard: &Guard) -> Vec<(String, String)> {
    let host = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let env = guard.policy.env.guest_env(host);
    for pattern in &guard.policy.env.allow {
        // Which grants found a value: the guest cannot be watched reading
        // its own environment, so this is the one decision there is to audit.
        let found: Vec<&str> = env
            .iter()
            .filter(|(k, _)| pattern.matches(k))
            .map(|(k, _)| k.as_str())
            .collect();
        let verdict = Verdict::Allow {
            rule: format!("--allow-env={pattern}"),
        };
        if found.is_empty() {
            // Granted, but the host has no such variable: said, as a
            // program that then finds none would otherwise leave the user
            // looking for a denial that never came.
            guard
                .reporter
                .verdict(Kind::Env, "pass (unset)", &pattern.to_string(), &verdict);
            let what = match pattern {
                capsa_policy::EnvPattern::Exact(_) => "no such variable",
                capsa_policy::EnvPattern::Prefix(_) => "no variable of that prefix",
            };
            guard.reporter.note(&format!(
                "--allow-env={pattern}: capsa's environment has {what}, so the program gets none"
            ));
        }
        for name in found {
            guard.reporter.verdict(Kind::Env, "pass", name, &verdict);
        }
    }
    env
}

fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::{
        filesystem::preopens, sockets::ip_name_lookup, sync::filesystem::types,
    };
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // Always linked: with no --allow-net it refuses every request.
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)?;
    // Replace the file system and name lookup with the guarded versions.
    linker.allow_shadowing(true);
    fn fs(s: &mut HostState) -> GuardedFs<'_> {
        GuardedFs {
            inner: s.wasi.filesystem(),
            tracker: &mut s.fs,
            guard: &s.guard,
        }
    }
    fn sockets(s: &mut HostState) -> GuardedSockets<'_> {
        GuardedSockets {
            inner: s.wasi.sockets(),
            lookups: &mut s.lookups,
            tcp: &mut s.tcp,
            guard: &s.guard,
        }
    }
    // CPython's entry point ends a run with an exit code through this
    // (`wasi:cli/exit@0.2.0` only has success or failure).
    linker.root().instance("capsa:python/process")?.func_wrap(
        "exit-with-code",
        |_, (code,): (u8,)| -> wasmtime::Result<()> { Err(I32Exit(i32::from(code)).into()) },
    )?;
    cap_http_request_texts(linker)?;
    wasmtime_wasi::p2::bindings::sync::sockets::tcp::add_to_linker::<HostState, GuardedSocketsData>(
        linker, sockets,
    )?;
    types::add_to_linker::<HostState, GuardedFsData>(linker, fs)?;
    preopens::add_to_linker::<HostState, GuardedFsData>(linker, fs)?;
    ip_name_lookup::add_to_linker::<HostState, GuardedSocketsData>(linker, sockets)?;
    Ok(())
}

/// The longest authority or method an outgoing request may be given
/// (its path is held to 64 KiB by the `http` crate already).
const MAX_HTTP_REQUEST_TEXT: usize = 64 << 10;

/// wasi:http keeps an outgoing request's authority and method as the
/// program gave them, of any length, for as long as the request lives: one
/// call of 60 MB made the host keep 60 MB, the largest block, not counted
/// as the copy of an argument it looks like (see `heap::LARGEST`), and a few
/// such calls took a run two and three times past `--memory` before the
/// watchdog looked. A longer one is refused as an invalid one is (a name of
/// at most 253 bytes is all a request needs).
fn cap_http_request_texts(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::p2::bindings::http::types::{HostOutgoingRequest as _, Method};
    use wasmtime_wasi_http::p2::types::HostOutgoingRequest;
    type Answer = wasmtime::Result<(Result<(), ()>,)>;
    let mut types = linker.instance("wasi:http/types@0.2.12")?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store, (req, authority): (Resource<HostOutgoingRequest>, Option<String>)| -> Answer {
            if authority
                .as_ref()
                .is_some_and(|a| a.len() > MAX_HTTP_REQUEST_TEXT)
            {
                return Ok((Err(()),));
            }
            let data: &mut HostState = store.data_mut();
            Ok((data.http().set_authority(req, authority)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store, (req, method): (Resource<HostOutgoingRequest>, Method)| -> Answer {
            if matches!(&method, Method::Other(m) if m.len() > MAX_HTTP_REQUEST_TEXT) {
                return Ok((Err(()),));
            }
            let data: &mut HostState = store.data_mut();
            Ok((data.http().set_method(req, method)?,))
        },
    )?;
    Ok(())
}

/// The component must be a `wasi:cli/command`: it exports `wasi:cli/run`.
fn check_world(
    engine: &Engine,
    component: &wasmtime::component::Component,
    path: &std::path::Path,
) -> Result<(), LoadError> {
    let ty = component.component_type();
    if ty
        .exports(engine)
        .any(|(name, _)| name.starts_with("wasi:cli/run@0.2"))
    {
        return Ok(());
    }
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    Err(LoadError::NotCommand {
        path: path.into(),
        msg: format!(
            "a component must export wasi:cli/run@0.2 to be run; this one exports {}",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        ),
    })
}

/// Held while a guarded root is made and its name removed (microseconds),
/// so that a process ended at its time limit leaves no directory behind.
static NAMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Folders made for this process's runs that go with it (`--tmp`).
static RUN_FOLDERS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Set when a limit ends the process while the guest may still run: from
/// then on every path of the guest's is refused, so that nothing more is
/// made in the folders [`remove_run_folders`] removes, and what it writes
/// to stdout and stderr is dropped.
pub(crate) static ENDING: AtomicBool = AtomicBool::new(false);

/// Has `dir` (a folder made for the process's runs, holding only what
/// they made) removed with everything in it when the process ends:
/// by [`remove_run_folders`], which the command calls once it has its exit
/// code, and which a limit that ends the process calls itself.
pub fn remove_with_process(dir: PathBuf) {
    RUN_FOLDERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir);
    #[cfg(target_os = "linux")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(remove_on_signals);
    }
}

/// The write end of the pipe a signal that ends the process is told on.
#[cfg(target_os = "linux")]
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Ctrl-C, `kill` and a closed terminal (SIGINT, SIGTERM, SIGHUP) end the
/// process as before, with the same status, once [`remove_run_folders`]
/// has run: the handler only writes the signal to a pipe (all it may do),
/// and a thread waiting on it removes them, then takes the signal's
/// default action. Installed with the first folder, so a run without one
/// handles no signal.
#[cfg(target_os = "linux")]
fn remove_on_signals() {
    static TOLD: AtomicBool = AtomicBool::new(false);
    extern "C" fn told(sig: libc::c_int) {
        // A second signal (Ctrl-C again while a large tree is removed)
        // ends the process at once, leaving what is left.
        if TOLD.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: signal(2) and raise(3) are async-signal-safe.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            return;
        }
        let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::SeqCst);
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe stays open.
        unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    SIGNAL_PIPE.store(fds[1], std::sync::atomic::Ordering::SeqCst);
    let read_end = fds[0];
    let waiter = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads one byte into `byte` from the pipe's read end.
                match unsafe { libc::read(read_end, (&raw mut byte).cast(), 1) } {
                    1 => break,
                    n if n < 0
                        && std::io::Error::last_os_error().kind()
                            == std::io::ErrorKind::Interrupted => {}
                    // Never closed, never failing: but not a spin if so.
                    _ => return,
                }
            }
            ENDING.store(true, std::sync::atomic::Ordering::SeqCst);
            remove_run_folders();
            let sig = libc::c_int::from(byte);
            // SAFETY: the default action, then the signal again: the
            // process ends as it would have without the handler.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        });
    if waiter.is_err() {
        return;
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `told` only loads an atomic and calls write(2); a signal
        // the process was started ignoring (`nohup`, a background job's
        // SIGINT) stays ignored.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = told as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Removes the folders given to [`remove_with_process`], links in them
/// removed, never followed. A name made by a path call that was checked
/// just before the end fails the first removal: it is tried again.
pub fn remove_run_folders() {
    let dirs = std::mem::take(&mut *RUN_FOLDERS.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        for _ in 0..5 {
            match load::remove_tree(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => break,
            }
        }
    }
}

/// Ends the process at the deadline, wherever the guest is: being
/// compiled, running WebAssembly or blocked in a host call (a read, a sleep).
/// Nothing here may fail or panic: the limit holds even when capsa's own
/// stderr is closed or full.
fn start_watchdog(
    timeout: Option<Duration>,
    finished: Arc<Finished>,
    guard: Arc<std::sync::OnceLock<Arc<Guard>>>,
    memory: Arc<heap::RunMemory>,
) -> Result<(), RunError> {
    let watch = Watch {
        deadline: timeout.map(|t| (std::time::Instant::now() + t, t)),
        memory,
        finished,
        guard,
    };
    if is_warm() {
        return KEPT_WATCHDOG.hand(watch, |watch, more| watchdog_thread(watch, Some(more)));
    }
    watchdog_thread(watch, None)
}

/// One run's time limit (its deadline and the limit it came from, unless
/// turned off) and its memory, for the thread that keeps them.
struct Watch {
    deadline: Option<(std::time::Instant, Duration)>,
    memory: Arc<heap::RunMemory>,
    finished: Arc<Finished>,
    guard: Arc<std::sync::OnceLock<Arc<Guard>>>,
}

/// How often a run's watchdog looks at what the host holds for it, and how
/// many looks in a row must find it over the limit. What the host held
/// counts at its most for the rest of the run (see `heap::HIGH`), but for
/// its largest copy of an argument (see `heap::LARGEST`); the looks in a
/// row are for the program's own memory, which may shrink between them
/// (a memory dropped). A guest making the host allocate as fast as it can
/// (128 KiB of HTTP header a call) gets some tens of megabytes past its
/// limit in that time.
const MEMORY_POLL: Duration = Duration::from_millis(10);
const MEMORY_LOOKS: u32 = 3;

impl Watch {
    /// Returns as soon as the run ends (a process that runs many programs
    /// must not keep a thread per past run); ends the process at the
    /// deadline, or once the heap's growth takes the run past its memory
    /// limit (the limiter sees only growing linear memories, and a guest
    /// can make the host hold memory without growing its own).
    fn keep(self) {
        let deadline = self.deadline.map(|(d, _)| d);
        let mut looks = 0;
        let over = || {
            looks = if self.memory.over() { looks + 1 } else { 0 };
            looks >= MEMORY_LOOKS
        };
        // The run's thread takes neither the reporter's lock nor NAMING
        // while it waits for `finished`'s.
        self.finished
            .wait_or_expire(deadline, MEMORY_POLL, over, |time| {
                let (message, code) = match self.deadline {
                    Some((_, t)) if time => (timeout_message(t), exit::TIMEOUT),
                    _ => (memory_message(self.memory.limit), exit::LIMIT),
                };
                if let Some(guard) = self.guard.get() {
                    guard.reporter.limit(&message);
                    guard.reporter.flush();
                }
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{}capsa: {message}", line_start());
                // Not while a guarded root has a name it would leave behind.
                let _naming = NAMING.lock().unwrap_or_else(|e| e.into_inner());
                ENDING.store(true, std::sync::atomic::Ordering::SeqCst);
                remove_run_folders();
                std::process::exit(code);
            });
    }
}

/// The name of the thread that keeps a run's time and memory limits, which
/// looks at the run every 10 ms: its CPU time is capsa's, not the guest's.
pub const WATCHDOG_THREAD: &str = "time limit";

/// Starts a thread that keeps `watch`, then each watch `more` brings.
fn watchdog_thread(
    watch: Watch,
    more: Option<std::sync::mpsc::Receiver<Watch>>,
) -> Result<(), RunError> {
    // A process out of threads (a limit on them) cannot time the run: it
    // does not run it untimed.
    std::thread::Builder::new()
        .name(WATCHDOG_THREAD.into())
        .spawn(move || {
            watch.keep();
            for watch in more.into_iter().flatten() {
                watch.keep();
            }
        })
        .map(drop)
        .map_err(|e| RunError::Setup(format!("cannot start the time limit's thread: {e}")))
}

/// A warm process's time-limit thread, kept from run to run as its guest
/// thread is (see [`KEPT_GUEST`]). Its runs take their turns, so it keeps
/// one run's limit at a time; a deadline is fixed when its run starts,
/// however late the thread gets to it.
static KEPT_WATCHDOG: Kept<Watch> = Kept::new();

/// Whether a run has ended, for its watchdog to wait on.
#[derive(Default)]
struct Finished {
    done: Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Finished {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Waits until the run ends, `deadline` passes or `over` (asked every
    /// `poll`) says so. In the latter cases calls `expire` (with whether the
    /// time ran out), which ends the process, still holding the lock that
    /// `set` takes: the run cannot end meanwhile, so no outcome of it is
    /// delivered and, in a process that runs many programs, no next run
    /// starts, for the exit to end instead of this one.
    fn wait_or_expire(
        &self,
        deadline: Option<std::time::Instant>,
        poll: Duration,
        mut over: impl FnMut() -> bool,
        expire: impl FnOnce(bool),
    ) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let now = std::time::Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                expire(true);
                return;
            }
            if over() {
                expire(false);
                return;
            }
            let wait = deadline.map_or(poll, |d| (d - now).min(poll));
            done = self
                .cond
                .wait_timeout(done, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// What a run that reached its time limit reports (without `capsa: `).
pub fn timeout_message(t: Duration) -> String {
    format!(
        "time limit of {} reached; raise it with --timeout=DURATION",
        format_duration(t)
    )
}

/// What a run that reached its output limit reports.
pub fn output_message(max: u64) -> String {
    format!(
        "output limit of {} reached; raise it with --max-output=SIZE",
        format_size(max)
    )
}

/// What a run that reached its memory limit reports.
pub fn memory_message(max: u64) -> String {
    format!(
        "memory limit of {} reached; raise it with --memory=SIZE",
        format_size(max)
    )
}

/// What a run that reached its file write limit reports.
pub fn write_message(max: u64) -> String {
    format!(
        "file write limit of {} reached; raise it with --max-write=SIZE",
        format_size(max)
    )
}

fn outcome(
    result: wasmtime::Result<Result<(), ()>>,
    store: &Store<HostState>,
    budget: &OutputBudget,
    limits: &capsa_policy::Limits,
) -> Outcome {
    let limit = |message: String| Outcome::Limit {
        code: exit::LIMIT,
        message,
    };
    // A program told that memory ran out may fail on its own (CPython's
    // MemoryError, exit 1): that failure is the limit's, and says so.
    let exited = |code: i32| {
        if code != 0 && store.data().limiter.memory_refused {
            limit(memory_message(limits.memory))
        } else {
            Outcome::Exited(code)
        }
    };
    let err = match result {
        Ok(Ok(())) => return Outcome::Exited(0),
        Ok(Err(())) => return exited(1),
        Err(e) => e,
    };
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return exited(exit.0);
    }
    if budget.was_hit() {
        return limit(output_message(limits.max_output.unwrap_or_default()));
    }
    if store.data().guard.written.was_hit() {
        return limit(write_message(limits.max_write.unwrap_or_default()));
    }
    if let Some(Trap::OutOfFuel) = err.downcast_ref::<Trap>() {
        let fuel = limits.fuel.unwrap_or_default();
        return limit(format!(
            "fuel limit of {fuel} reached; raise it with --fuel=N"
        ));
    }
    if store.data().limiter.hit || copied_past_the_limit(&err, limits.memory) {
        return limit(memory_message(limits.memory));
    }
    let msg = match err.downcast_ref::<Trap>() {
        Some(trap) => trap
            .to_string()
            .trim_start_matches("wasm trap: ")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        // A host call's error: its causes, less the backtrace wasmtime puts
        // first (a line that ends in `:`, the frames on lines of their own,
        // the cause after them).
        None => {
            let backtrace = err
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(ToString::to_string);
            err.chain()
                .map(|c| c.to_string())
                .filter(|c| Some(c) != backtrace.as_ref())
                .collect::<Vec<_>>()
                .join(": ")
        }
    };
    Outcome::Trapped {
        message: msg,
        note: adapter_overwritten(&err).then_some(ADAPTER_NOTE),
    }
}

/// Whether `err` is wasmtime refusing to copy more into the host in one
/// call than the memory limit (the most a call may copy, see
/// `set_hostcall_fuel`): the program asked the host to hold more than its
/// limit. wasmtime's error type is its own, so it is known by its words.
fn copied_past_the_limit(err: &wasmtime::Error, memory: u64) -> bool {
    memory < output::MAX_WRITE as u64
        && err.chain().any(|e| {
            e.to_string()
                .starts_with("too much data is being copied between the host and the guest")
        })
}

/// Said after a crash inside the preview 1 adapter of a module that
/// exports no `cabi_realloc`: worded as what is known (where it crashed,
/// what the module lacks), since the adapter also traps for other causes
/// (a preview 1 call it does not implement).
const ADAPTER_NOTE: &str = "the crash was inside the WASI preview 1 adapter capsa runs this module in; the module exports no `cabi_realloc`, so the adapter keeps its state in pages it adds to the module's memory, which an allocator that takes all of memory as its own (AssemblyScript's) hands out again: see \"Preview 1 programs\" in capsa's README";

/// Whether the trap `err` happened in the preview 1 adapter, called from a
/// module that exports no `cabi_realloc` (nor `cabi_realloc_adapter`). The
/// adapter then keeps its state and stack in pages it grows the module's
/// memory by, which an allocator that claims every page there is at its
/// first use (AssemblyScript's) takes too: the adapter's own check of its
/// state traps. The modules are told apart by what they export: the adapter
/// its allocator for imports, the program `_start`.
///
/// Only an `unreachable` trap: the adapter's checks end in one, and its
/// other failures (arguments beyond its room for them, which wasmtime
/// reports as "cannot leave component instance") are not this.
fn adapter_overwritten(err: &wasmtime::Error) -> bool {
    if err.downcast_ref::<Trap>() != Some(&Trap::UnreachableCodeReached) {
        return false;
    }
    let Some(trace) = err.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return false;
    };
    let exports =
        |f: &wasmtime::FrameInfo, name: &str| f.module().exports().any(|e| e.name() == name);
    let Some(innermost) = trace.frames().first() else {
        return false;
    };
    // The adapter is a module of its own: a program's module that exports
    // the same name is still the program.
    if !exports(innermost, "cabi_import_realloc") || exports(innermost, "_start") {
        return false;
    }
    trace.frames().iter().any(|f| {
        exports(f, "_start") && !exports(f, "cabi_realloc") && !exports(f, "cabi_realloc_adapter")
    })
}

/// The guarded root's checks against a directory replaced by someone else
/// (a guest granted the temporary directory, or another program of the
/// user) between capsa making it and opening it, or after.
#[cfg(all(test, target_os = "linux"))]
mod root_guard_tests {
    use super::RootGuard;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("capsa-rootguard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    fn made(path: &Path, mode: u32) {
        std::fs::DirBuilder::new().mode(mode).create(path).unwrap();
        // Whatever the umask took away, the mode asked for.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn cleanup(d: &Path) {
        // Directories left read-only by the test: writable again to remove.
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    /// What a guest can make through a grant is writable by its owner (WASI
    /// cannot change modes): refused, and the guest's files are left alone.
    #[test]
    fn a_writable_directory_in_its_place_is_refused() {
        let d = scratch("writable");
        let root = d.join(".capsa-root-x");
        made(&root, 0o755);
        std::fs::write(root.join("planted"), b"from the guest").unwrap();
        assert!(RootGuard::hold(root.clone()).is_none());
        assert_eq!(
            std::fs::read(root.join("planted")).unwrap(),
            b"from the guest"
        );
        // An empty one is taken away, so it is not left behind.
        let empty = d.join(".capsa-root-y");
        made(&empty, 0o700);
        assert!(RootGuard::hold(empty.clone()).is_none());
        assert!(!empty.exists());
        cleanup(&d);
    }

    /// A link in its place, even to a directory that would pass, is not
    /// followed.
    #[test]
    fn a_link_in_its_place_is_refused() {
        let d = scratch("link");
        let target = d.join("target");
        made(&target, 0o500);
        let root = d.join(".capsa-root-x");
        std::os::unix::fs::symlink(&target, &root).unwrap();
        assert!(RootGuard::hold(root.clone()).is_none());
        assert!(std::fs::symlink_metadata(&root).unwrap().is_symlink());
        assert!(target.is_dir(), "the link's target is left alone");
        cleanup(&d);
    }

    /// What capsa made is held by what was opened, and its name is gone as
    /// soon as it is held (nothing is left behind by a process killed
    /// during its run): a directory made in its place after leaves the
    /// host path leading to capsa's, which nothing can be made in, and
    /// dropping the guard removes neither the replacement nor what it
    /// holds.
    #[test]
    fn a_held_root_has_no_name_and_is_still_capsas() {
        use std::os::unix::fs::MetadataExt;
        let d = scratch("held");
        let root = d.join(".capsa-root-x");
        made(&root, 0o500);
        let ino = std::fs::metadata(&root).unwrap().ino();
        let guard = RootGuard::hold(root.clone()).expect("capsa's own directory is held");
        assert!(!root.exists(), "the name is removed once held");
        assert_eq!(std::fs::metadata(&guard.host).unwrap().ino(), ino);
        // Even its owner cannot make a name in a removed directory.
        let _ = std::fs::set_permissions(&guard.host, std::fs::Permissions::from_mode(0o700));
        assert!(std::fs::create_dir(guard.host.join("planted")).is_err());
        assert!(std::fs::write(guard.host.join("planted.txt"), b"x").is_err());
        // Empty, as capsa's was, and writable.
        made(&root, 0o755);
        std::fs::write(root.join("theirs"), b"kept").unwrap();
        drop(guard);
        assert_eq!(std::fs::read(root.join("theirs")).unwrap(), b"kept");
        cleanup(&d);
    }
}

/// Whether `program` is capsa's Python runtime by its file name:
/// `python.wasm`, or `python.opt.wasm` once optimized
/// (`capsa python install --optimize`).
#[cfg(target_os = "linux")]
fn keeps_memory(program: &Path) -> bool {
    program
        .file_name()
        .is_some_and(|n| n == "python.wasm" || n == "python.opt.wasm")
}

/// In a warm process, a component named `python.wasm` (or
/// `python.opt.wasm`: see [`keeps_memory`]) runs without its
/// memory's data segments, on an engine whose memory for it is the image
/// they made, kept from run to run and reset in place (see [`slots`]). The
/// split is made once per machine, when a server starts
/// ([`prepare_kept_memory`]), and kept in the code cache. `None` (nothing
/// changes) for a run with fuel (whose code the server does not prepare),
/// and when the split is not ready: a worker splits and compiles nothing
/// itself, within a run's time limit.
#[cfg(target_os = "linux")]
fn reuse_for(program: &Path, cache: Option<&CodeCache>, fuel: bool) -> Option<(Engine, PathBuf)> {
    if fuel
        || !keeps_memory(program)
        || std::env::var_os("CAPSA_NO_KEPT_MEMORY").is_some()
        || rustix::param::page_size() != slots::PAGE
    {
        return None;
    }
    let cache = cache?;
    let mut warm = WARM.lock().unwrap_or_else(|e| e.into_inner());
    let w = warm.as_mut()?;
    if let Some((_, ready)) = w.reuse.iter().find(|(p, _)| p == program) {
        return ready.clone();
    }
    // Looked for once per process: the split, and its code compiled.
    let ready = (|| {
        let (wasm, image) = split_in_cache(program, cache, None)?;
        let engine = engine_with(false, Some(image)).ok()?;
        let digest = load::Program::read(&wasm, Some(cache)).ok()?.digest;
        let entry = cache.entry(&engine, &digest);
        (entry.is_file() && load::trusted(cache.dir(), &entry)).then_some((engine, wasm))
    })();
    w.reuse.push((program.to_path_buf(), ready.clone()));
    ready
}

/// Takes a component's memory snapshot out of it: the component without
/// the memory's data, the image (from address 0) and the memory's minimum
/// size in bytes, or `None` (`capsa_python::image::split_image`).
pub type Split = fn(&[u8]) -> Option<(Vec<u8>, Vec<u8>, usize)>;

/// Makes, ahead of a server's first run, what its warm workers will run
/// Python with (see [`reuse_for`]): `program` split in the code cache and
/// compiled there, so that no run waits for it within its time limit.
/// Gives whether it is ready; a server whose split fails runs Python as
/// before.
pub fn prepare_kept_memory(program: &Path, cache: &CodeCache, split: Split) -> bool {
    #[cfg(target_os = "linux")]
    {
        if rustix::param::page_size() != slots::PAGE {
            return false;
        }
        let Some((wasm, image)) = split_in_cache(program, cache, Some(split)) else {
            return false;
        };
        let compiled = (|| {
            let engine = engine_with(false, Some(image)).ok()?;
            cache
                .load(&engine, &load::Program::read(&wasm, Some(cache)).ok()?)
                .ok()
        })();
        compiled.is_some()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (program, cache, split);
        false
    }
}

/// The split of `program` from the code cache, made there first if it is
/// not (or not whole, or for another component).
#[cfg(target_os = "linux")]
fn split_in_cache(
    program: &Path,
    cache: &CodeCache,
    split: Option<Split>,
) -> Option<(PathBuf, Arc<slots::Image>)> {
    let hex = load::hex(&load::Program::read(program, Some(cache)).ok()?.digest);
    let root = cache.dir();
    let base = root.join("code").join(format!("split-{}", &hex[..40]));
    let (wasm, image, record) = (
        base.with_extension("wasm"),
        base.with_extension("image"),
        base.with_extension("json"),
    );
    // The record: the digest of the component split, the memory's minimum
    // size, the image's length and the digest of the component without the
    // data (a file damaged since is made again).
    let read = || -> Option<(usize, u64)> {
        if ![&wasm, &image, &record]
            .iter()
            .all(|f| load::trusted(root, f))
        {
            return None;
        }
        let text = String::from_utf8(load::read_small_file(&record, 4096)?).ok()?;
        let [source, minimum, len, without] = text.split_whitespace().collect::<Vec<_>>()[..]
        else {
            return None;
        };
        let (minimum, len) = (minimum.parse().ok()?, len.parse().ok()?);
        let intact = source == hex
            && std::fs::symlink_metadata(&image).ok()?.len() == len
            && load::hex(&load::Program::read(&wasm, Some(cache)).ok()?.digest) == without;
        intact.then_some((minimum, len))
    };
    let (minimum, len) = match read() {
        Some(r) => r,
        None => {
            let split = split?;
            let bytes = std::fs::read(program).ok()?;
            let (nodata, mut bytes, minimum) = split(&bytes)?;
            bytes.resize(bytes.len().div_ceil(slots::PAGE) * slots::PAGE, 0);
            let len = bytes.len() as u64;
            let without = load::hex(&<sha2::Sha256 as sha2::Digest>::digest(&nodata));
            // The record last: whoever finds it finds both files whole.
            load::store(root, &image, &bytes).ok()?;
            load::store(root, &wasm, &nodata).ok()?;
            let text = format!("{hex} {minimum} {len} {without}\n");
            load::store(root, &record, text.as_bytes()).ok()?;
            (minimum, len)
        }
    };
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&image)
            .ok()?
    };
    let image = slots::Image::open(file, len, minimum).ok()?;
    Some((wasm, Arc::new(image)))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The runtime as prepared and as optimized keep their memory under
    /// `capsa serve`; nothing else does by its name.
    #[test]
    fn python_keeps_its_memory_optimized_or_not() {
        for yes in ["/c/python/k/python.wasm", "/c/python/k/python.opt.wasm"] {
            assert!(keeps_memory(Path::new(yes)), "{yes}");
        }
        for no in ["/c/app.wasm", "/c/python.opt.wasm.new", "/c/python", "/"] {
            assert!(!keeps_memory(Path::new(no)), "{no}");
        }
    }
}

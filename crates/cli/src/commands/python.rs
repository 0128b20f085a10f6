//! `capsa python` and Python scripts under `capsa run`: CPython 3.14 in the
//! same sandbox, with the standard library mounted read-only.

use super::run::{SandboxArgs, describe_io, execute, fail, prepare};
use capsa_policy::{Access, FsGrant, GrantKind, Policy};
use capsa_python::{GUEST_STDLIB, Invocation, Mode};
use capsa_sandbox::load::canonical;
use capsa_sandbox::{CodeCache, exit};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
Python's own options and arguments follow capsa's: `capsa python
--allow-read=data -c 'print(1)'`. Use `--` before them if one looks like a
capsa flag (`capsa python -- -q`). `capsa python -- -h` lists the Python
options capsa understands.

The script is visible to the program, the files beside it are not, unless
granted. The standard library is read-only at /python. --python-path=DIR
puts DIR on sys.path read-only (fill it with `capsa pip install --target
DIR PACKAGE`, pip in the sandbox; pure-Python packages only).

Not available in WASI: ssl, ctypes, threads (starting one), subprocess,
multiprocessing, signal handlers, bz2, lzma, mmap.

`capsa python install [--force] [--optimize]` prepares the runtime now (it
is otherwise prepared on first use, once per machine). `--optimize` then
runs it through binaryen's wasm-opt (yours: on PATH, or named in
CAPSA_WASM_OPT), once, for about 9% more speed; `--force` alone goes back
to the runtime as prepared.

Exit status: as python3 (sys.exit(n) gives n, an uncaught exception 1), or
one of capsa's (see `capsa run --help`).";

#[derive(Args, Debug)]
#[command(
    about = "Run Python 3.14 in the sandbox, with python3's command line",
    after_help = AFTER_HELP,
    disable_version_flag = true
)]
pub struct PythonArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// python3's arguments: [-c CODE | -m MODULE | SCRIPT | -] [ARGS]...
    #[arg(
        value_name = "PYTHON ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

pub fn run(args: PythonArgs) -> i32 {
    if let Err(code) = super::run::refuse_python_path_in_cache(&args.sandbox) {
        return code;
    }
    match args.args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["install"] => return install(false, false),
        ["install", "--force"] => return install(true, false),
        ["install", "--optimize"] => return install(false, true),
        ["install", "--force", "--optimize"] | ["install", "--optimize", "--force"] => {
            return install(true, true);
        }
        _ => {}
    }
    let inv = match capsa_python::invocation::parse(&args.args, std::io::stdin().is_terminal()) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("capsa python: {e}");
            eprintln!("{}", capsa_python::invocation::USAGE);
            return exit::USAGE;
        }
    };
    run_invocation(&args.sandbox, inv)
}

fn cache_root() -> Result<PathBuf, i32> {
    CodeCache::default_dir().ok_or_else(|| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("no cache directory for Python: set CAPSA_CACHE_DIR (or HOME, or on Windows LOCALAPPDATA)"),
        )
    })
}

/// Prepares the runtime now if it is not yet (for a server, before its
/// first request).
pub fn prepare_runtime() -> Result<(), i32> {
    let root = cache_root()?;
    let code = CodeCache::new(root.clone());
    capsa_python::ensure(&root, Some(&code), &mut |m| eprintln!("{m}"))
        .map_err(|e| fail(exit::INTERNAL, e.into()))?;
    // What warm workers run Python with (its memory kept from run to run),
    // made in a process of its own: compiling it here left the server's
    // heap 255 MB larger for its whole life. If it cannot be made, the
    // workers run Python as before.
    if let Ok(me) = std::env::current_exe() {
        let _ = std::process::Command::new(me)
            .arg("serve-prepare")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
    }
    Ok(())
}

/// `capsa serve-prepare` (started by `capsa serve` and `capsa mcp`): see
/// [`prepare_runtime`].
pub fn prepare_kept_main() -> i32 {
    let Ok(root) = cache_root() else {
        return exit::INTERNAL;
    };
    let code = CodeCache::new(root.clone());
    let Ok(rt) = capsa_python::ensure(&root, Some(&code), &mut |m| eprintln!("{m}")) else {
        return exit::INTERNAL;
    };
    if capsa_sandbox::prepare_kept_memory(&rt.component, &code, capsa_python::image::split_image) {
        0
    } else {
        1
    }
}

fn install(force: bool, optimize: bool) -> i32 {
    let root = match cache_root() {
        Ok(r) => r,
        Err(code) => return code,
    };
    // Said before anything is built.
    if optimize && let Err(why) = capsa_python::optimize::find_wasm_opt() {
        return fail(
            exit::USAGE,
            capsa_python::PythonError::NoWasmOpt(why).into(),
        );
    }
    let code = CodeCache::new(root.clone());
    let progress = &mut |m: &str| eprintln!("{m}");
    let mut result = if force {
        capsa_python::build(&root, Some(&code), true, progress)
    } else {
        capsa_python::ensure(&root, Some(&code), progress)
    };
    if optimize && result.is_ok() {
        let optimized =
            capsa_python::optimize(&root, Some(&code), progress, &mut || check_runtime(&root));
        result = optimized.map(|(rt, _)| rt);
    }
    match result {
        Ok(rt) => {
            let how = capsa_python::optimized_with(&root)
                .map(|v| format!(", optimized with {}", capsa_policy::escape_for_terminal(&v)))
                .unwrap_or_default();
            out!(
                "Python 3.14 is ready in {}{how}",
                rt.component.parent().unwrap_or(&root).display()
            );
            0
        }
        Err(e @ capsa_python::PythonError::NoWasmOpt(_)) => fail(exit::USAGE, e.into()),
        Err(e) => fail(exit::INTERNAL, e.into()),
    }
}

/// What Python from the cache at `root` prints for a little work across
/// the standard library (the interpreter, the hash seed, json, re, decimal,
/// hashlib, zlib), run by this capsa in a process of its own, with nothing
/// granted: the same before and after `--optimize`, or it is undone.
fn check_runtime(root: &Path) -> Result<String, String> {
    const CODE: &str = "import json, re, decimal, hashlib, zlib, sys\n\
        print(hash('capsa'), sum(i * i for i in range(100000)), json.dumps({'a': [1, 2.5, None]}))\n\
        print(re.sub(r'(\\w+)@(\\w+)', r'<\\2:\\1>', 'ann@x bob@y'), decimal.Decimal(1) / 7)\n\
        print(hashlib.sha256(b'capsa').hexdigest(), zlib.crc32(zlib.compress(b'capsa' * 99)))\n\
        print(sorted({3.5: 'f', 1: 'i'}.items()), f'{2 ** 100:_}', sys.version_info[:2])";
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(me)
        .args(["python", "--timeout=2m", "-c", CODE])
        .env("CAPSA_CACHE_DIR", root)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !stdout.is_empty() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{} ({})",
            stderr.trim().lines().last().unwrap_or("no message"),
            out.status
        ))
    }
}

/// The guest path of a host path granted at its own name.
fn utf8(path: &Path) -> Result<String, i32> {
    capsa_policy::default_guest(path).ok_or_else(|| {
        fail(
            exit::USAGE,
            anyhow::anyhow!(
                "{} has no guest path (not UTF-8, or a network path); WASI paths must be",
                path.display()
            ),
        )
    })
}

fn read_grant(host: PathBuf, guest: String, kind: GrantKind) -> FsGrant {
    FsGrant {
        host,
        guest,
        access: Access::Read,
        kind,
    }
}

/// Refuses a grant that would put other files where Python imports from:
/// at or below `/python` (the standard library) or `/capsa-pycache` (the
/// bytecode capsa compiled), which are capsa's own, or below one of the
/// other folders on `sys.path` (`imports`: the guest folder and how the
/// user knows it: a `--python-path` directory, the script's folder, the
/// working directory, a bundle's `/app`) under a host path other than its
/// own, so that nothing granted as data replaces a module or its bytecode,
/// and one run cannot plant code there for the next.
fn refuse_grants_in_imports(
    grants: &[FsGrant],
    imports: &[(String, String)],
) -> anyhow::Result<()> {
    use capsa_policy::{default_guest, strip_guest_prefix};
    for g in grants {
        let guest = g.guest_absolute();
        for own in [GUEST_STDLIB, super::pycache::GUEST_PREFIX] {
            if strip_guest_prefix(&guest, own).is_some() {
                anyhow::bail!(
                    "{guest} is inside {own}, where capsa mounts Python's {}: choose another guest path (HOST::GUEST)",
                    if own == GUEST_STDLIB {
                        "standard library"
                    } else {
                        "bytecode"
                    }
                );
            }
        }
        let own_path = default_guest(&g.host).is_some_and(|d| d == guest);
        for (dir, known_as) in imports {
            let inside = strip_guest_prefix(&guest, dir).is_some_and(|rest| !rest.is_empty());
            if inside && !own_path {
                anyhow::bail!(
                    "{guest} is inside {known_as}, which Python imports from: a grant there must be at its own path"
                );
            }
        }
    }
    Ok(())
}

/// The script's grant and its path in the guest.
fn grant_script(policy: &mut Policy, cwd: &Path, script: &str) -> Result<String, i32> {
    // Never through a link a program could have made (as for --allow-read).
    let arrived = super::run::refuse_links_in_writable_grants(&cwd.join(script), policy)
        .map_err(|e| fail(exit::USAGE, e))?;
    let host = canonical(Path::new(script)).map_err(|e| {
        fail(
            exit::LOAD,
            anyhow::anyhow!("cannot open the script {script}: {}", describe_io(&e)),
        )
    })?;
    super::run::same_as_checked(arrived, &host).map_err(|e| fail(exit::USAGE, e))?;
    if !host.is_file() {
        return Err(fail(
            exit::LOAD,
            anyhow::anyhow!("cannot run {script}: not a file"),
        ));
    }
    let guest = utf8(&host)?;
    policy
        .fs
        .grants
        .push(read_grant(host, guest.clone(), GrantKind::File));
    Ok(guest)
}

/// Runs CPython with `inv` under the flags' policy, plus read-only grants of
/// the standard library, the script and the `--python-path` directories.
pub fn run_invocation(sandbox: &SandboxArgs, inv: Invocation) -> i32 {
    let (cwd, policy) = match prepare(sandbox) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // The command's last run: capsa exits with its code.
    capsa_sandbox::exit_after_run();
    run_prepared(sandbox, inv, cwd, policy, None)
}

/// A script already granted (a bundle's): its guest path and the extra
/// `sys.path` entries it brings.
pub struct Granted {
    pub file: String,
    pub python_path: Vec<String>,
}

/// Runs CPython with `inv` under `policy` (the flags', plus whatever the
/// caller granted), adding the standard library, the script unless it is
/// `granted`, and the `--python-path` directories.
pub fn run_prepared(
    sandbox: &SandboxArgs,
    inv: Invocation,
    cwd: PathBuf,
    mut policy: Policy,
    granted: Option<Granted>,
) -> i32 {
    if inv.mode == Mode::Help {
        out!("{}", capsa_python::invocation::USAGE);
        return 0;
    }
    let mut path = Vec::new();
    // --python-path directories: (host, guest).
    let mut packages: Vec<(PathBuf, String)> = Vec::new();
    // The grants the caller chose (flags, policy file, bundle); the ones
    // below are capsa's own.
    let chosen = policy.fs.grants.len();
    let file = match (&inv.mode, granted) {
        (_, Some(g)) => {
            path.extend(g.python_path);
            Some(g.file)
        }
        (Mode::Script(s), None) => match grant_script(&mut policy, &cwd, s) {
            Ok(g) => Some(g),
            Err(code) => return code,
        },
        _ => None,
    };
    for dir in &sandbox.python_path {
        let arrived = match super::run::refuse_links_in_writable_grants(&cwd.join(dir), &policy) {
            Ok(a) => a,
            Err(e) => return fail(exit::USAGE, e),
        };
        let host = match canonical(dir) {
            Ok(h) if h.is_dir() => h,
            Ok(_) => {
                return fail(
                    exit::USAGE,
                    anyhow::anyhow!("--python-path={}: not a directory", dir.display()),
                );
            }
            Err(e) => {
                return fail(
                    exit::USAGE,
                    anyhow::anyhow!("--python-path={}: {}", dir.display(), describe_io(&e)),
                );
            }
        };
        if let Err(e) = super::run::same_as_checked(arrived, &host) {
            return fail(exit::USAGE, e);
        }
        let guest = match utf8(&host) {
            Ok(g) => g,
            Err(code) => return code,
        };
        path.push(guest.clone());
        packages.push((host.clone(), guest.clone()));
        policy
            .fs
            .grants
            .push(read_grant(host, guest, GrantKind::Dir));
    }

    // What else is on `sys.path`: a bundle's folders, the script's folder,
    // or for `-c`, `-m` and stdin the working directory when it is granted.
    let mut imports: Vec<(String, String)> = packages
        .iter()
        .map(|(host, guest)| (guest.clone(), format!("--python-path={}", host.display())))
        .collect();
    let real_cwd = canonical(&cwd).unwrap_or_else(|_| cwd.clone());
    let cwd_str = capsa_policy::default_guest(&real_cwd).filter(|_| {
        policy.fs.grant_for(&real_cwd).is_some_and(|g| {
            g.kind == GrantKind::Dir
                && capsa_policy::default_guest(&g.host).as_deref() == Some(g.guest.as_str())
        })
    });
    let beside = match &file {
        Some(f) => std::path::Path::new(f)
            .parent()
            .map(|p| p.to_string_lossy().into_owned()),
        None => cwd_str.clone(),
    };
    imports.extend(beside.map(|b| (b.clone(), b)));
    imports.extend(path.iter().map(|p| (p.clone(), p.clone())));
    // (Not `/`: every mapped grant is below it.)
    imports.retain(|(dir, _)| dir != "/");
    if let Err(e) = refuse_grants_in_imports(&policy.fs.grants[..chosen], &imports) {
        return fail(exit::USAGE, e);
    }

    let root = match cache_root() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let code = CodeCache::new(root.clone());
    let rt = match capsa_python::ensure(&root, Some(&code), &mut |m| eprintln!("{m}")) {
        Ok(rt) => rt,
        Err(e) => return fail(exit::INTERNAL, e.into()),
    };
    // Grants and denials hold canonical paths. The standard library is
    // also denied writing, so a denial there never suggests --allow-write.
    let stdlib = canonical(&rt.stdlib).unwrap_or_else(|_| rt.stdlib.clone());
    policy.fs.deny_write.push(stdlib.clone());
    policy.fs.grants.push(read_grant(
        stdlib.clone(),
        GUEST_STDLIB.into(),
        GrantKind::Dir,
    ));

    // Their bytecode and the standard library's, compiled by capsa,
    // read-only; the prefix itself is an empty directory, so that a module
    // elsewhere (beside the script) finds no bytecode without a denial.
    // Always set: without it CPython reads `__pycache__` beside the
    // script's modules, which a run granted that folder could fill for the
    // next run to import.
    let mut mounts = Vec::new();
    if !packages.is_empty() {
        packages.push((stdlib.clone(), GUEST_STDLIB.to_string()));
        let bounds = super::pycache::Bounds {
            deny_read: &policy.fs.deny_read,
            memory: policy.limits.memory,
            timeout: policy.limits.timeout,
            started: std::time::Instant::now(),
        };
        for (host, guest) in &packages {
            mounts.extend(super::pycache::prepare(&root, host, guest, &bounds));
        }
    }
    let Some(empty) = super::pycache::empty(&root) else {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!(
                "cannot make the empty bytecode folder in {}",
                root.join("pycache").display()
            ),
        );
    };
    mounts.push(empty);
    for b in mounts {
        let host = canonical(&b.host).unwrap_or(b.host);
        policy.fs.deny_write.push(host.clone());
        policy
            .fs
            .grants
            .push(read_grant(host, b.guest, GrantKind::Dir));
    }
    let pycache_prefix = Some(super::pycache::GUEST_PREFIX);

    // The entry point changes to the working directory when the guest
    // finds it at its own path: granted there as a directory (`cwd_str`,
    // above, which is also `-c`'s import directory), or its view, which
    // shows the grants it holds, or none (see `capsa_sandbox::guest_sees_cwd`):
    // `open("in.txt")` reaches `--allow-read=in.txt`, and what is not
    // granted there is refused as the working directory's, not looked up
    // from `/`. Not at `/`, nor where the directory cannot be opened: there
    // the attempt would only add a denial line.
    let chdir = cwd_str.clone().or_else(|| {
        capsa_policy::default_guest(&real_cwd).filter(|c| capsa_sandbox::guest_sees_cwd(&policy, c))
    });
    let config = inv.to_guest_json_with(
        file.as_deref(),
        chdir.as_deref(),
        cwd_str.as_deref(),
        &path,
        pycache_prefix,
    );
    execute(
        sandbox,
        cwd,
        policy,
        rt.component,
        "python3".into(),
        vec![config],
        Some(vec![capsa_python::invocation::minimal()]),
        chdir.is_some(),
    )
}

//! Builds the guest programs once per test binary and runs capsa on them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const P1: &str = "wasm32-wasip1";
pub const P2: &str = "wasm32-wasip2";

fn target_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf()
}

/// The `probe` guest built for `target` (wasm32-wasip1 or wasm32-wasip2).
pub fn probe(target: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_root().join("guests");
    BUILT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        for t in [P1, P2] {
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "capsa-test-programs",
                    "--target",
                    t,
                ])
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&dir)
                .env_remove("CARGO_TARGET_DIR")
                .status()
                .expect("cargo runs");
            assert!(
                status.success(),
                "building the guest for {t} failed (is the target installed? rustup target add {t})"
            );
        }
    });
    dir.join(target).join("release").join("probe.wasm")
}

/// A `.wat` file from `tests/wat`.
pub fn wat(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/wat")
        .join(name)
}

/// The cache every capsa of the tests shares.
pub fn cache_dir() -> PathBuf {
    target_root().join("capsa-cache")
}

/// `sh -c script` in namespaces of its own (`unshare FLAGS`, as root), with
/// `$CAPSA`, `$PROBE` (the WASI 0.2 probe) and the shared cache set.
pub fn unshared(flags: &[&str], script: &str) -> std::process::ExitStatus {
    Command::new("unshare")
        .args(flags)
        .args(["sh", "-c", script])
        .env("CAPSA", env!("CARGO_BIN_EXE_capsa"))
        .env("PROBE", probe(P2))
        .env("CAPSA_CACHE_DIR", cache_dir())
        .status()
        .expect("unshare runs")
}

/// `capsa` with a shared cache and a clean environment.
/// Runs `c` with its heap (RLIMIT_DATA) capped at `bytes`: an allocation
/// past it fails, so what capsa holds in memory is what the test sees.
#[cfg(unix)]
pub fn with_heap_limit(mut c: Command, bytes: u64) -> Run {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let limit = Some(bytes);
            rustix::process::setrlimit(
                rustix::process::Resource::Data,
                rustix::process::Rlimit {
                    current: limit,
                    maximum: limit,
                },
            )
            .map_err(std::io::Error::from)
        });
    }
    c.output().unwrap().into()
}

pub fn capsa() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsa"));
    c.env("CAPSA_CACHE_DIR", cache_dir());
    c.stdin(Stdio::null());
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Asserts that capsa refused the run before it started (exit 125), saying
/// each of `why`.
#[track_caller]
pub fn assert_refused(r: &Run, why: &[&str]) {
    assert_eq!(r.code, 125, "{}{}", r.stdout, r.stderr);
    for w in why {
        assert!(r.stderr.contains(w), "no {w:?} in: {}", r.stderr);
    }
}

/// Runs `capsa run FLAGS PROGRAM ARGS` and collects its outcome.
pub fn run(flags: &[&str], program: &Path, args: &[&str]) -> Run {
    let out = capsa()
        .arg("run")
        .args(flags)
        .arg(program)
        .args(args)
        .output()
        .expect("capsa runs");
    out.into()
}

/// The same, in `dir`.
pub fn run_in(dir: &Path, flags: &[&str], program: &Path, args: &[&str]) -> Run {
    capsa()
        .current_dir(dir)
        .arg("run")
        .args(flags)
        .arg(program)
        .args(args)
        .output()
        .expect("capsa runs")
        .into()
}

/// A scratch directory whose canonical path is used everywhere, so what the
/// guest prints and what the host checks agree.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let p = std::fs::canonicalize(t.path()).expect("canonical");
    (t, p)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Replaces a scratch path with `[DIR]` for snapshots.
pub fn redact(text: &str, dir: &Path) -> String {
    text.replace(s(dir), "[DIR]")
}

/// Every file below `dir` with its contents, to prove a failed attack changed nothing.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.push((
                    format!("{rel} -> {}", std::fs::read_link(&p).unwrap().display()),
                    vec![],
                ));
            } else if meta.is_dir() {
                out.push((format!("{rel}/"), vec![]));
                walk(base, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// The Python runtime, prepared once per test binary in the shared cache
/// (through `capsa python install`, whose output must say it is ready).
pub fn python_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let r: Run = capsa()
            .args(["python", "install"])
            .output()
            .expect("capsa runs")
            .into();
        assert_eq!(r.code, 0, "capsa python install failed: {}", r.stderr);
        assert!(r.stdout.contains("Python 3.14 is ready"), "{}", r.stdout);
    });
}

/// `/proc/PID/{file}` of a `capsa python` (shared cache, prepared) read
/// while it waits, idle, after its start; the run must then end well.
#[cfg(target_os = "linux")]
pub fn proc_file_of_waiting_python(file: &str) -> String {
    use std::io::BufRead;
    python_ready();
    let mut child = capsa()
        .args([
            "python",
            "-c",
            "import sys; print('ready', flush=True); sys.stdin.read()",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("capsa runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let text = std::fs::read_to_string(format!("/proc/{}/{file}", child.id())).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    text
}

/// `capsa python -c CODE` in `dir` with the cache at `cache` (not the
/// shared one, and not prepared first).
pub fn py_code_with_cache(cache: &Path, dir: &Path, code: &str) -> Run {
    capsa()
        .env("CAPSA_CACHE_DIR", cache)
        .current_dir(dir)
        .args(["python", "-c", code])
        .output()
        .expect("capsa runs")
        .into()
}

/// `capsa python FLAGS ARGS` in `dir`, with `stdin` piped in.
pub fn py_in(dir: &Path, flags: &[&str], args: &[&str], stdin: &str) -> Run {
    use std::io::Write;
    python_ready();
    let mut child = capsa()
        .current_dir(dir)
        .arg("python")
        .args(flags)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("capsa runs");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let out = child.wait_with_output().expect("capsa ends");
    writer.join().unwrap();
    out.into()
}

/// `capsa python FLAGS -c CODE` in `dir`.
pub fn py_code(dir: &Path, flags: &[&str], code: &str) -> Run {
    py_in(dir, flags, &["-c", code], "")
}

/// `capsa run FLAGS SCRIPT ARGS` for a script `name` written into `dir`.
pub fn py_script(dir: &Path, flags: &[&str], name: &str, source: &str, args: &[&str]) -> Run {
    python_ready();
    let script = dir.join(name);
    std::fs::write(&script, source).unwrap();
    run_in(dir, flags, &script, args)
}

/// `capsa ARGS` in `dir` on a real terminal (python3's pty module), with
/// `typed` typed ahead and `envs` set; the terminal's output is `stdout`.
pub fn on_terminal(dir: &Path, args: &[&str], typed: &str, envs: &[(&str, &str)]) -> Run {
    const DRIVER: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:-1])
os.write(fd, sys.argv[-1].encode())
out, end = b"", time.time() + 60
while time.time() < end:
    if select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    Command::new("python3")
        .args(["-c", DRIVER, env!("CARGO_BIN_EXE_capsa")])
        .args(args)
        .arg(typed)
        .env("CAPSA_CACHE_DIR", cache_dir())
        .envs(envs.iter().copied())
        .current_dir(dir)
        .output()
        .expect("python3 runs")
        .into()
}

/// `pip install --target` of pure-Python `packages` from PyPI (wheels for
/// any platform, as Python in capsa loads no native extensions), into a
/// directory of the test binary's scratch space, once per `name`.
pub fn pip_target(name: &str, packages: &[&str]) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DONE: OnceLock<Mutex<HashMap<String, ()>>> = OnceLock::new();
    let dir = target_root().join(name);
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains_key(name) {
        return dir;
    }
    let guest_only = [
        "--no-compile",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        "any",
        "--implementation",
        "py",
        "--python-version",
        "3.14",
    ];
    pip_install_once(&dir, &guest_only, packages);
    done.insert(name.to_string(), ());
    dir
}

/// Python tools the tests drive capsa with (the MCP SDK, pytest,
/// schemathesis, kubernetes-validate), installed from PyPI for the host's
/// own python3 with `pip install --target`, once per test binary; returns
/// the directory to put on PYTHONPATH.
pub fn host_tools() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        const PACKAGES: &[&str] = &[
            "mcp>=1.9,<2",
            "pytest>=8,<10",
            "schemathesis>=4,<5",
            "kubernetes-validate>=1.30,<2",
        ];
        let dir = target_root().join("host-tools");
        pip_install_once(&dir, &[], PACKAGES);
        dir
    })
    .clone()
}

/// `python3` with the host tools on its path.
pub fn host_python() -> Command {
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", host_tools())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    c
}

/// `python3 -m pip install --target DIR FLAGS PACKAGES`, unless DIR already
/// holds exactly these packages (a stamp in it says so).
fn pip_install_once(dir: &Path, flags: &[&str], packages: &[&str]) {
    let stamp = dir.join(".installed");
    let want = [flags, packages].concat().join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(flags)
        .arg("--target")
        .arg(dir)
        .args(packages)
        // Debian's pip refuses installs outside a venv unless told; a
        // --target directory touches nothing of the system's.
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .status()
        .expect("python3 -m pip runs");
    assert!(status.success(), "pip install {packages:?} failed");
    std::fs::write(&stamp, want).unwrap();
}

/// A static file server on loopback (Python's http.server, as the README
/// suggests, sending CORS headers so a page of another origin may read
/// it), logging each request it gets.
pub struct Static {
    child: std::process::Child,
    pub port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

const STATIC_SERVER: &str = r#"
import functools, http.server, sys
import urllib.parse
class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()
    def redirect(self):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self.send_response(int(q["code"][0]))
        self.send_header("Location", q["to"][0])
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        if self.path.startswith("/redirect?"):
            return self.redirect()
        super().do_GET()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/redirect?"):
            return self.redirect()
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
print("port", server.server_address[1], flush=True)
server.serve_forever()
"#;

impl Static {
    pub fn start(root: &Path) -> Static {
        // A log of its own: servers of parallel tests may share a root.
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("requests.log");
        let mut child = Command::new("python3")
            .args(["-c", STATIC_SERVER])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the server said {line:?}"));
        Static {
            child,
            port,
            log,
            _log_dir: log_dir,
        }
    }

    /// What the server logged: one line per request.
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Static {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the tests run as root (for `unshare`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// A thread that swaps two names (`renameat2` with `RENAME_EXCHANGE`) over
/// and over, as a process racing capsa would, until [`Swapper::stop`].
#[cfg(unix)]
pub struct Swapper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

#[cfg(unix)]
impl Swapper {
    pub fn start(a: PathBuf, b: PathBuf) -> Swapper {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !flag.load(Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        });
        Swapper { stop, thread }
    }

    /// Stops the swaps and says how many were made.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

//! `capsa pip`: pip inside the sandbox, against a package index served on
//! loopback by the test. The index holds real files from PyPI (fetched at
//! test time by the host's pip) and packages the tests make: a hostile sdist,
//! one that needs a C compiler, and one with only native wheels.

use crate::support::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Files from PyPI the index serves (the pip capsa pins, the setuptools that
/// builds sdists, a pure wheel and an sdist with an optional C speed-up).
const FROM_PYPI: &[&str] = &["pip==26.3", "six==1.17.0", "setuptools==80.9.0"];
const SDISTS_FROM_PYPI: &[&str] = &["markupsafe==3.0.3"];

fn index_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("pip-index")
}

/// `python3 -m pip download` into `dir`, unless a stamp says it is there.
fn download(dir: &Path, flags: &[&str], specs: &[&str]) {
    let stamp = dir.join(format!(".{}", specs.join("_")));
    if stamp.exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .args(flags)
        .args(specs)
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .status()
        .expect("python3 -m pip runs");
    assert!(status.success(), "pip download {specs:?} failed");
    std::fs::write(stamp, "").unwrap();
}

/// An sdist `NAME-1.0.tar.gz` in `dir` with these files (setuptools builds it).
fn sdist(dir: &Path, name: &str, setup_py: &str) {
    sdist_saying(dir, name, name, setup_py)
}

/// The same, its PKG-INFO giving `said` for its name.
fn sdist_saying(dir: &Path, name: &str, said: &str, setup_py: &str) {
    let pyproject = format!(
        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\
         [project]\nname = \"{name}\"\nversion = \"1.0\"\n"
    );
    let pkg_info = format!("Metadata-Version: 2.1\nName: {said}\nVersion: 1.0\n");
    let maker = r#"
import io, sys, tarfile
out, name = sys.argv[1], sys.argv[2]
files = dict(zip(sys.argv[3::2], sys.argv[4::2]))
with tarfile.open(out, "w:gz") as t:
    for path, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo(f"{name}-1.0/{path}")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("python3")
        .args(["-c", maker])
        .arg(dir.join(format!("{name}-1.0.tar.gz")))
        .args([
            name,
            "pyproject.toml",
            &pyproject,
            "PKG-INFO",
            &pkg_info,
            "setup.py",
            setup_py,
        ])
        .status()
        .expect("python3 runs");
    assert!(status.success());
}

/// The index's files, laid out as PEP 503 simple pages (a folder per
/// project; http.server lists it with a link per file).
fn files_from_pypi() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = index_root();
        let simple = root.join("simple");
        for spec in FROM_PYPI {
            let name = spec.split("==").next().unwrap();
            download(&simple.join(name), &["--only-binary=:all:"], &[spec]);
        }
        for spec in SDISTS_FROM_PYPI {
            let name = spec.split("==").next().unwrap();
            download(&simple.join(name), &["--no-binary=:all:"], &[spec]);
        }
        // A package whose only file is a wheel for Linux x86-64.
        let native = simple.join("nativeonly");
        std::fs::create_dir_all(&native).unwrap();
        std::fs::write(
            native.join("nativeonly-1.0-cp314-cp314-manylinux_2_17_x86_64.whl"),
            b"PK",
        )
        .unwrap();
        sdist(
            &simple.join("needsc"),
            "needsc",
            "from setuptools import setup, Extension\n\
             setup(ext_modules=[Extension('needsc._fast', ['fast.c'])])\n",
        );
        // One whose name, as its PKG-INFO gives it, would retitle a
        // terminal and clear it.
        sdist_saying(
            &simple.join("needsc2"),
            "needsc2",
            "needsc2\u{1b}]0;pwned\u{7}\u{1b}[2J",
            "from setuptools import setup, Extension\n\
             setup(ext_modules=[Extension('needsc2._fast', ['fast.c'])])\n",
        );
        root
    })
    .clone()
}

/// `capsa pip ARGS` in `dir`, with a home of its own, no pip configuration
/// of the host's, and `envs`.
fn pip_in(dir: &Path, home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut c = capsa();
    c.current_dir(dir)
        .arg("pip")
        .args(args)
        .env("HOME", home)
        .env("PIP_CONFIG_FILE", "/dev/null");
    for (k, _) in std::env::vars() {
        if k.starts_with("PIP_") && k != "PIP_CONFIG_FILE" {
            c.env_remove(k);
        }
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("capsa runs").into()
}

/// The shared index served on loopback, its URL, and a scratch folder.
fn served() -> (Static, String, tempfile::TempDir, PathBuf) {
    python_ready();
    let server = Static::start(&files_from_pypi());
    let index = format!("http://127.0.0.1:{}/simple/", server.port);
    let (t, dir) = scratch();
    (server, index, t, dir)
}

#[test]
fn pip_installs_pure_wheels_and_builds_sdists_as_pure_python_in_the_sandbox() {
    python_ready();
    let root = files_from_pypi();
    let server = Static::start(&root);
    let index = format!("http://127.0.0.1:{}/simple/", server.port);
    let (_t, dir) = scratch();
    let home = dir.join("home");
    std::fs::create_dir(&home).unwrap();
    let r = pip_in(
        &dir,
        &home,
        &[
            "install",
            "-i",
            &index,
            "--target",
            "libs",
            "six",
            "markupsafe",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Successfully installed"), "{}", r.stdout);
    assert!(!r.stderr.contains("denied"), "{}", r.stderr);
    let libs = dir.join("libs");
    assert!(libs.join("six.py").is_file());
    // markupsafe's C speed-up could not be built; its pure form is there.
    assert!(libs.join("markupsafe/__init__.py").is_file());
    let native: Vec<_> = walk(&libs)
        .into_iter()
        .filter(|p| p.ends_with(".so"))
        .collect();
    assert!(native.is_empty(), "{native:?}");
    // Nothing was written beside the target, and the home is untouched.
    let mut here: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    here.sort();
    assert_eq!(here, ["home", "libs"]);
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0);
    // Only the index was asked (each request names a path below /simple/).
    let log = server.requests();
    assert!(log.contains("GET /simple/six/"), "{log}");
    for line in log.lines().filter(|l| l.contains("\"GET ")) {
        assert!(line.contains("\"GET /simple/"), "{line}");
    }
    // And the packages work in capsa.
    let r = py_code(
        &dir,
        &["--python-path=libs"],
        "import six, markupsafe\nprint(six.PY3, markupsafe.escape('<a>'), markupsafe.Markup.__module__)",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "True &lt;a&gt; markupsafe\n");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn a_package_with_only_native_wheels_is_refused_by_name() {
    let (_server, index, _t, dir) = served();
    let r = pip_in(
        &dir,
        &dir,
        &["install", "-i", &index, "-t", "libs", "nativeonly"],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("capsa: nativeonly has only wheels built for other platforms")
            && r.stderr.contains("it is a C extension"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_dir(dir.join("libs")).unwrap().count(), 0);
}

#[test]
fn a_build_that_needs_a_c_compiler_fails_with_one_line_naming_the_package() {
    let (_server, index, _t, dir) = served();
    let r = pip_in(
        &dir,
        &dir,
        &["install", "-i", &index, "-t", "libs", "needsc"],
        &[],
    );
    assert_ne!(r.code, 0);
    let lines: Vec<_> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("capsa: needsc needs a C compiler"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    // A name a package chose reaches the terminal escaped.
    let r = pip_in(
        &dir,
        &dir,
        &["install", "-i", &index, "-t", "libs", "needsc2"],
        &[],
    );
    assert_ne!(r.code, 0);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("capsa: needsc2"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        line.contains("needsc2\\x1b]0;pwned\\x07\\x1b[2J needs a C compiler"),
        "{line}"
    );
    assert!(!r.stderr.contains('\u{1b}'), "{}", r.stderr);
}

#[test]
fn a_hostile_sdist_builds_and_gets_nothing_of_the_users() {
    python_ready();
    let root = files_from_pypi();
    let (_t, dir) = scratch();
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_rsa"), "SECRET-KEY-4711").unwrap();
    let before = tree(&home);
    // A port nothing grants, on this machine: it must never see a connection.
    let bait = TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let port = bait.local_addr().unwrap().port();
    // The evil package's index is a copy of the shared one plus it.
    let own = dir.join("index");
    copy_dir(&root, &own);
    let setup_py = format!(
        r#"import json, os, socket, urllib.request
from setuptools import setup
report = {{}}
def attempt(name, fn):
    try:
        report[name] = "ok: " + repr(fn())[:100]
    except BaseException as e:
        report[name] = "failed: " + type(e).__name__
attempt("read-ssh-key", lambda: open({key:?}).read())
attempt("list-home", lambda: os.listdir({home:?}))
attempt("write-home", lambda: open({home:?} + "/pwned", "w").write("x"))
attempt("read-env", lambda: os.environ["CAPSA_TEST_SECRET"])
attempt("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=3).close())
attempt("http", lambda: urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=3).read())
os.makedirs("evil", exist_ok=True)
with open("evil/__init__.py", "w") as f:
    f.write("REPORT = " + repr(json.dumps(report)) + "\n")
setup(packages=["evil"])
"#,
        key = s(&home.join(".ssh/id_rsa")),
        home = s(&home),
    );
    sdist(&own.join("simple/evil"), "evil", &setup_py);
    let server = Static::start(&own);
    let index = format!("http://127.0.0.1:{}/simple/", server.port);
    let r = pip_in(
        &dir,
        &home,
        &["install", "-i", &index, "-t", "libs", "evil"],
        &[("CAPSA_TEST_SECRET", "SECRET-ENV-0815")],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report = std::fs::read_to_string(dir.join("libs/evil/__init__.py")).unwrap();
    for name in [
        "read-ssh-key",
        "list-home",
        "write-home",
        "read-env",
        "connect",
        "http",
    ] {
        assert!(
            report.contains(&format!("\"{name}\": \"failed: ")),
            "{name}: {report}"
        );
    }
    // On the host: the home is as it was, the bait saw nobody, and neither
    // secret is anywhere the build could write or print.
    assert_eq!(tree(&home), before);
    assert!(
        bait.accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
    );
    for secret in ["SECRET-KEY-4711", "SECRET-ENV-0815"] {
        assert!(!r.stdout.contains(secret) && !r.stderr.contains(secret));
        for f in walk(&dir.join("libs")) {
            assert!(
                !std::fs::read_to_string(&f)
                    .unwrap_or_default()
                    .contains(secret),
                "{f}"
            );
        }
    }
    // capsa said what it refused.
    assert!(
        r.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        r.stderr
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn pip_refuses_what_would_write_outside_its_target_before_starting() {
    let (_t, dir) = scratch();
    for (args, says) in [
        (&["install", "six"][..], "install needs --target DIR"),
        (&["install", "--user", "six"], "--user is not supported"),
        (&["install", "-t", "x", "-e", "."], "-e is not supported"),
        (
            &["install", "-t", "x", "-r", "missing.txt"],
            "missing.txt: no such file",
        ),
        (&["download", "six"], "download needs -d DIR"),
    ] {
        let r = pip_in(&dir, &dir, args, &[]);
        assert_eq!(r.code, 125, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// `capsa ARGS` in `dir`, its index the loopback one (as the host's pip
/// would be told by PIP_INDEX_URL), no pip configuration of the host's.
fn capsa_with_index(dir: &Path, index: &str, args: &[&str]) -> Run {
    let mut c = capsa();
    c.current_dir(dir)
        .args(args)
        .env("PIP_CONFIG_FILE", "/dev/null");
    for (k, _) in std::env::vars() {
        if k.starts_with("PIP_") && k != "PIP_CONFIG_FILE" {
            c.env_remove(k);
        }
    }
    c.env("PIP_INDEX_URL", index);
    c.output().expect("capsa runs").into()
}

#[test]
fn a_scripts_inline_dependencies_install_once_and_the_script_never_gets_the_index() {
    let (server, index, _t, dir) = served();
    let script = format!(
        r##"# /// script
# requires-python = ">=3.11"
# dependencies = ["six"]
# ///
import six, urllib.request
print("six", six.PY3)
try:
    urllib.request.urlopen({index:?}, timeout=3)
    print("index reached")
except OSError as e:
    print("index refused")
try:
    open(six.__file__, "a").write("# planted")
    print("env written")
except OSError as e:
    print("env read-only")
"##
    );
    std::fs::write(dir.join("app.py"), &script).unwrap();
    let r = capsa_with_index(&dir, &index, &["run", "app.py"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "six True\nindex refused\nenv read-only\n");
    assert!(
        r.stderr
            .contains("capsa: installing the script's dependencies in the sandbox (once): six"),
        "{}",
        r.stderr
    );
    // The server logs each request after answering it: wait for the last.
    let settled = || {
        let mut n = server.requests().lines().count();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let m = server.requests().lines().count();
            if m == n {
                return n;
            }
            n = m;
        }
    };
    let asked = settled();
    // The second run installs nothing and asks the index for nothing.
    let r = capsa_with_index(&dir, &index, &["run", "app.py"]);
    assert_eq!(
        r.stdout, "six True\nindex refused\nenv read-only\n",
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("installing"), "{}", r.stderr);
    assert_eq!(settled(), asked);
    // --with adds one; an environment of its own.
    let r = capsa_with_index(&dir, &index, &["run", "--with", "markupsafe", "app.py"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("(once): markupsafe, six"), "{}", r.stderr);
}

#[test]
fn a_bundle_of_a_script_with_inline_dependencies_carries_them_and_runs_offline() {
    python_ready();
    let (_t, dir) = scratch();
    let proj = dir.join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(
        proj.join("main.py"),
        "# /// script\n# dependencies = [\"six==1.17.0\"]\n# ///\nimport six\nprint(six.__version__)\n",
    )
    .unwrap();
    {
        let server = Static::start(&files_from_pypi());
        let index = format!("http://127.0.0.1:{}/simple/", server.port);
        let r = capsa_with_index(&dir, &index, &["pack", "proj", "-o", "app.capsa"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    // The index is gone; the bundle has what it needs.
    let r = capsa_with_index(
        &dir,
        "http://127.0.0.1:9/simple/",
        &["run", "--grant-requested", "app.capsa"],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "1.17.0\n"), "{}", r.stderr);
}

#[test]
fn a_script_block_that_cannot_be_met_is_refused_before_anything_runs() {
    let (_t, dir) = scratch();
    for (block, says) in [
        (
            "# requires-python = \">=3.15\"\n",
            "requires Python >=3.15; capsa runs Python 3.14.0",
        ),
        (
            "# dependencies = [\"--index-url=http://127.0.0.1:9/\"]\n",
            "is not a requirement",
        ),
        ("# dependencies = \"six\"\n", "must be a list of strings"),
        (
            "# dependencies = [\"six @ file:///etc/passwd\"]\n",
            "not a path, a file: URL or an option",
        ),
        (
            "# dependencies = [\"./helper\"]\n",
            "not a path, a file: URL or an option",
        ),
    ] {
        std::fs::write(
            dir.join("app.py"),
            format!("# /// script\n{block}# ///\nopen('ran', 'w')\n"),
        )
        .unwrap();
        let r = capsa_with_index(
            &dir,
            "http://127.0.0.1:9/simple/",
            &["run", "--allow-write=.", "app.py"],
        );
        assert_eq!(r.code, 125, "{block}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{block}: {}", r.stderr);
        assert!(!dir.join("ran").exists());
    }
    let r = capsa_with_index(
        &dir,
        "http://127.0.0.1:9/simple/",
        &["run", "--with", "six", "prog.wasm"],
    );
    assert_eq!(r.code, 125);
    assert!(
        r.stderr.contains("--with is for Python scripts"),
        "{}",
        r.stderr
    );
}

#[test]
fn pip_paths_are_granted_as_they_are_never_split_or_followed() {
    let (_server, index, _t, dir) = served();
    let victim = dir.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep.txt"), "keep").unwrap();
    // A comma is part of the name, not a second grant.
    let target = format!("libs,{}", s(&victim));
    let r = pip_in(
        &dir,
        &dir,
        &["install", "-i", &index, "--target", &target, "six"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dir.join(&target).join("six.py").is_file());
    assert_eq!(
        tree(&victim),
        vec![("keep.txt".to_string(), b"keep".to_vec())]
    );
    // A target, requirements file or find-links folder reached through a
    // link is refused before anything runs.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&victim, dir.join("site-libs")).unwrap();
        std::fs::write(victim.join("req.txt"), "six\n").unwrap();
        for args in [
            &["install", "-i", &index, "-t", "site-libs", "six"][..],
            &[
                "install",
                "-i",
                &index,
                "-t",
                "x",
                "-r",
                "site-libs/req.txt",
            ],
            &["install", "-i", &index, "-t", "x", "-f", "site-libs", "six"],
        ] {
            let r = pip_in(&dir, &dir, args, &[]);
            assert_eq!(r.code, 125, "{args:?}: {}", r.stderr);
            assert!(r.stderr.contains("is a link"), "{args:?}: {}", r.stderr);
        }
        assert!(!victim.join("six.py").exists());
    }
    // An index whose host holds a comma grants nothing more.
    let r = pip_in(
        &dir,
        &dir,
        &[
            "install",
            "-i",
            "http://x,127.0.0.1:9/simple/",
            "-t",
            "y",
            "six",
        ],
        &[],
    );
    assert_eq!(r.code, 125, "{}", r.stderr);
    // pip takes whole option names only: an abbreviation of a refused one
    // is pip's usage error, not a cache kept across runs.
    let r = pip_in(
        &dir,
        &dir,
        &[
            "install",
            "-i",
            &index,
            "-t",
            "z",
            "--cache-di",
            "keep",
            "six",
        ],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no such option: --cache-di"),
        "{}",
        r.stderr
    );
    assert!(!dir.join("keep").exists());
}

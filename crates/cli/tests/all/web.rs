//! `capsa pack --web`: the site it writes, served on loopback and opened in
//! headless Chromium (playwright-core from web/'s npm packages, driven by
//! web/test/drive.mjs), as a user would. The guest tries to get out of what
//! its bundle asked for; the page and the server's log say it did not.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

fn pack_web(project: &Path, out: &Path, extra: &[&str]) -> Run {
    capsa()
        .args(["pack", "--web"])
        .args(extra)
        .arg(project)
        .arg("-o")
        .arg(out)
        .output()
        .expect("capsa runs")
        .into()
}

/// `root/NAME/main.py`, and a `capsa.toml` running it with `toml` after its
/// `[run]` table when given, packed with `--web` into `root/site`.
fn packed(root: &Path, name: &str, main_py: &str, toml: Option<&str>) -> PathBuf {
    let app = root.join(name);
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("main.py"), main_py).unwrap();
    if let Some(extra) = toml {
        std::fs::write(
            app.join("capsa.toml"),
            format!("version = 1\n[run]\nentry = \"main.py\"\n{extra}"),
        )
        .unwrap();
    }
    let site = root.join("site");
    let r = pack_web(&app, &site, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    site
}

/// Opens the page and does what `scenario` says (see drive.mjs).
fn drive(scenario: Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scenario.json");
    std::fs::write(&file, scenario.to_string()).unwrap();
    let out = Command::new("node")
        .arg(web_dir().join("test/drive.mjs"))
        .arg(&file)
        .current_dir(web_dir())
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "drive.mjs said {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(result.get("error").is_none(), "{result:#}");
    result
}

fn output(r: &Value) -> &str {
    r["output"].as_str().unwrap_or_default()
}

const MAIN_PY: &str = r##"
import os, sys, socket
ORIGINAL = open("/app/main.py").read()
greeting = "hello from the page"
print(greeting, sys.platform)
print("cwd", os.getcwd(), "scratch", sorted(os.listdir(".")))
print("env", sorted(os.environ.items()))
print("data", open("/data/in.txt").read())
open("/data/out.txt", "w").write("written by the program")

def attempt(label, fn):
    try:
        fn()
        print(label, "succeeded")
    except BaseException as e:
        print(label, "failed", type(e).__name__)

attempt("truncate /app", lambda: open("/app/main.py", "w"))
attempt("append /app", lambda: open("/app/main.py", "a").write("#"))
attempt("r+ /app", lambda: open("/app/main.py", "r+").write("#"))
attempt("create in /app", lambda: open("/app/new.py", "x"))
attempt("mkdir in /app", lambda: os.mkdir("/app/d"))
attempt("remove from /app", lambda: os.remove("/app/main.py"))
attempt("rename out of /app", lambda: os.rename("/app/main.py", "/scratch/moved.py"))
open("/scratch/planted.py", "w").write("print('planted')")
attempt("rename into /app", lambda: os.rename("/scratch/planted.py", "/app/planted.py"))
attempt("link out of /app", lambda: os.link("/app/main.py", "/scratch/linked.py"))
attempt("link into /app", lambda: os.link("/scratch/planted.py", "/app/linked.py"))
attempt("symlink in /app", lambda: os.symlink("main.py", "/app/s.py"))
attempt("utime /app", lambda: os.utime("/app/main.py", (0, 0)))
attempt("truncate() /app", lambda: os.truncate("/app/main.py", 0))
attempt("stdlib write", lambda: open("/python/os.py", "a").write("#"))
attempt("read /etc/passwd", lambda: open("/etc/passwd").read())
attempt("import js", lambda: __import__("js"))
attempt("import pyodide", lambda: __import__("pyodide"))
attempt("socket", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
os.remove("/scratch/planted.py")
print("app after", sorted(os.listdir("/app")), open("/app/main.py").read() == ORIGINAL)
import urllib.request
print("allowed", urllib.request.urlopen("http://127.0.0.1:PORT/site/app.bin").status)
print("allowed by name", urllib.request.urlopen("http://localhost:PORT/site/page.js").status)
try:
    # Chromium takes any *.localhost to loopback: were it let out, the
    # request would reach this test's server, whose log is checked.
    urllib.request.urlopen("http://sub.localhost:PORT/secret-by-name")
    print("denied request succeeded")
except Exception as e:
    print("denied request", type(e).__name__, e)
from wit_world.imports import http_types as ht, outgoing_handler as oh
def raw(authority, path):
    req = ht.OutgoingRequest(ht.Fields())
    req.set_scheme(ht.Scheme_Http())
    req.set_authority(authority)
    req.set_path_with_query(path)
    oh.handle(req, None)
# The path-with-query continues the authority's host when the two are
# joined into one URL: "localhost" + ".localhost:PORT/..".
attempt("host moved by the path", lambda: raw("localhost", ".localhost:PORT/secret-moved"))
try:
    urllib.request.urlopen("http://127.0.0.1:1/secret-by-port")
    print("other port succeeded")
except Exception as e:
    print("other port", type(e).__name__)
print("<img src=x onerror=document.title='pwned'>")
"##;

/// A Python project asking for the test server's own address, a variable
/// and a folder, in `root/project`; `root` is what the server serves.
fn python_project(root: &Path, port: u16) -> PathBuf {
    let app = root.join("project");
    std::fs::create_dir_all(&app).unwrap();
    let main = MAIN_PY.replace("PORT", &port.to_string());
    std::fs::write(app.join("main.py"), main).unwrap();
    std::fs::write(
        app.join("capsa.toml"),
        format!(
            r#"version = 1
[run]
entry = "main.py"
[[ask.net]]
rule = "127.0.0.1:{port}"
reason = "fetches from its own server"
[[ask.net]]
rule = "localhost"
reason = "the same server by name"
[[ask.env]]
name = "TOKEN"
reason = "signs the requests"
[ask.dirs.data]
access = "read-write"
guest = "/data"
reason = "reads in.txt, writes out.txt"
"#
        ),
    )
    .unwrap();
    app
}

#[test]
fn a_python_bundle_runs_in_the_page_with_only_what_it_asked_for() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    let project = python_project(root.path(), server.port);
    let site = root.path().join("site");
    let r = pack_web(&project, &site, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("wrote "), "{}", r.stdout);
    for f in [
        "index.html",
        "page.js",
        "worker.js",
        "component.js",
        "component.core.wasm",
        "app.bin",
        "stdlib.bin",
    ] {
        assert!(site.join(f).is_file(), "{f} missing");
    }
    let url = format!("http://127.0.0.1:{}/site/index.html", server.port);
    let r = drive(json!({
        "url": url,
        "consent": "allow",
        "env": {"TOKEN": "s3cret"},
        "files": {"data": [["in.txt", "uploaded by the user"]]},
        "lines": ["print('vars', greeting.upper())", "open('notes.txt', 'w').write('x'); print('listed', os.listdir('.'))"],
        "eof": true,
        "screenshot": root.path().join("page.png"),
    }));
    // Kept where a person can look at it: the page as the user saw it.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    std::fs::copy(root.path().join("page.png"), &shot).expect("the test took a screenshot");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    let out = output(&r);
    let digest = r["digest"].as_str().unwrap();
    assert!(
        digest.starts_with("bundle sha256 ") && digest.len() == 14 + 64,
        "{digest}"
    );
    let asks = r["asks"].as_str().unwrap();
    for asked in [
        "127.0.0.1:",
        "the same server by name",
        "fetches from its own server",
        "TOKEN",
        "/data",
        "reads in.txt",
    ] {
        assert!(
            asks.contains(asked),
            "the page did not show {asked}: {asks}"
        );
    }
    assert_eq!(r["state"], "exited", "{r:#}");
    assert_eq!(r["exitCode"], "0", "{out}");
    assert!(out.contains("hello from the page wasi"), "{out}");
    assert!(out.contains("cwd /scratch scratch []"), "{out}");
    assert!(out.contains("env [('TOKEN', 's3cret')]"), "{out}");
    assert!(out.contains("data uploaded by the user"), "{out}");
    for line in out.lines().filter(|l| {
        [
            "truncate",
            "append",
            "r+",
            "create",
            "mkdir",
            "remove",
            "rename",
            "link",
            "symlink",
            "utime",
            "stdlib",
            "read /etc",
            "import",
            "socket",
            "host moved",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    }) {
        assert!(line.contains(" failed "), "an escape worked: {line}\n{out}");
    }
    assert_eq!(out.matches(" failed ").count(), 19, "{out}");
    assert!(out.contains("app after ['main.py'] True"), "{out}");
    assert!(out.contains("allowed 200"), "{out}");
    assert!(out.contains("allowed by name 200"), "{out}");
    assert!(
        out.contains("capsa: denied: GET http://sub.localhost:"),
        "{out}"
    );
    assert!(
        out.contains(
            "/secret-by-name (sub.localhost is not granted)\n  hint: --allow-net=sub.localhost:"
        ),
        "{out}"
    );
    assert!(out.contains("denied request URLError"), "{out}");
    assert!(
        out.contains("capsa: denied: GET http://127.0.0.1:1/secret-by-port"),
        "{out}"
    );
    assert!(out.contains("other port URLError"), "{out}");
    // The REPL runs in the program's globals, as python3 -i.
    assert!(out.contains("vars HELLO FROM THE PAGE"), "{out}");
    assert!(out.contains("listed ['notes.txt']"), "{out}");
    // Guest text is text: no element was made of it.
    assert!(out.contains("<img src=x onerror="), "{out}");
    assert_eq!(r["elementsInOutput"], 0, "{r:#}");
    let files = r["files"].as_str().unwrap();
    assert!(
        files.contains("out.txt") && files.contains("notes.txt"),
        "{files}"
    );
    // Nothing the page refused reached the server.
    let log = server.requests();
    assert!(log.contains("GET /site/app.bin"), "{log}");
    assert!(!log.contains("secret"), "{log}");

    // A reload starts with an empty scratch directory again.
    let again = drive(
        json!({"url": url, "consent": "allow", "env": {"TOKEN": "t"}, "files": {"data": [["in.txt", "2"]]}, "eof": true}),
    );
    assert!(
        output(&again).contains("cwd /scratch scratch []"),
        "{again:#}"
    );
}

#[test]
fn declining_runs_nothing_and_fetches_no_program() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    let project = python_project(root.path(), server.port);
    let site = root.path().join("site");
    assert_eq!(pack_web(&project, &site, &[]).code, 0);
    let r =
        drive(json!({"url": format!("http://127.0.0.1:{}/site/", server.port), "consent": "deny"}));
    assert_eq!(r["state"], "declined", "{r:#}");
    assert!(output(&r).contains("capsa: not run"), "{r:#}");
    let log = server.requests();
    assert!(
        !log.contains(".wasm") && !log.contains("worker.js"),
        "{log}"
    );
}

#[test]
fn one_html_file_holds_the_whole_site() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    let app = root.path().join("hello");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("main.py"),
        "import json\nprint(json.dumps({'from': 'one file'}))\n",
    )
    .unwrap();
    let html = root.path().join("hello.html");
    let r = pack_web(&app, &html, &["--single-file"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(html.is_file());
    let r =
        drive(json!({"url": format!("http://127.0.0.1:{}/hello.html", server.port), "eof": true}));
    assert_eq!(r["state"], "exited", "{r:#}");
    assert!(output(&r).contains("{\"from\": \"one file\"}"), "{r:#}");
    // Everything came from the one file.
    let log = server.requests();
    assert_eq!(
        log.matches("GET /").count(),
        1 + log.matches("favicon").count(),
        "{log}"
    );
}

#[test]
fn a_wasi_program_runs_in_the_page_and_cannot_write_its_files() {
    for (target, args, want) in [
        (P2, r#"["hello"]"#, "ok: hello from wasm"),
        (P1, r#"["write", "/app/probe.wasm", "x"]"#, "err: "),
    ] {
        let root = tempfile::tempdir().unwrap();
        let server = Static::start(root.path());
        let app = root.path().join("probe");
        std::fs::create_dir(&app).unwrap();
        std::fs::copy(probe(target), app.join("probe.wasm")).unwrap();
        std::fs::write(
            app.join("capsa.toml"),
            format!("version = 1\n[run]\nentry = \"probe.wasm\"\nargs = {args}\n"),
        )
        .unwrap();
        let bundle = root.path().join("probe.capsa");
        let packed = capsa()
            .args(["pack"])
            .arg(&app)
            .arg("-o")
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(packed.status.success());
        // From the bundle file, as from the folder.
        let site = root.path().join("site");
        let r = pack_web(&bundle, &site, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = drive(json!({"url": format!("http://127.0.0.1:{}/site/", server.port)}));
        assert_eq!(r["state"], "exited", "{r:#}");
        assert!(output(&r).contains(want), "{target}: {r:#}");
        let code = if want.starts_with("ok") { "0" } else { "1" };
        assert_eq!(r["exitCode"], code, "{target}: {r:#}");
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let bogus = root.path().join("bogus.capsa");
    std::fs::write(&bogus, b"not a bundle").unwrap();
    let out = root.path().join("site");
    let r = pack_web(&bogus, &out, &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.starts_with("capsa: error: "), "{}", r.stderr);
    assert!(!out.exists());
    // A file of the user's at the output is never replaced by a site.
    let app = root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("prog.wat"),
        "(module (memory (export \"memory\") 1) (func (export \"_start\")))",
    )
    .unwrap();
    let precious = root.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("keep.txt"), "mine").unwrap();
    let r = pack_web(&app, &precious, &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(precious.join("keep.txt")).unwrap(),
        "mine"
    );
    // Not even a folder that looks like a site (index.html, worker.js)
    // unless capsa's marker says capsa wrote it.
    std::fs::write(precious.join("index.html"), "<p>my page</p>").unwrap();
    std::fs::write(precious.join("worker.js"), "// mine").unwrap();
    let r = pack_web(&app, &precious, &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("not an empty directory or a site capsa pack --web wrote"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(precious.join("keep.txt")).unwrap(),
        "mine"
    );
    // A user's file is not replaced by a one-file site, nor is the input.
    let notes = root.path().join("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let r = pack_web(&app, &notes, &["--single-file"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
    for inside in [app.clone(), app.join("site"), root.path().to_path_buf()] {
        let r = pack_web(&app, &inside, &[]);
        assert_eq!(r.code, 125, "{}: {}", inside.display(), r.stderr);
        assert!(app.join("prog.wat").is_file());
    }
    // What capsa wrote, it replaces: a site directory and a one-file site.
    let site = root.path().join("mysite");
    assert_eq!(pack_web(&app, &site, &[]).code, 0);
    assert!(site.join(".capsa-site").is_file());
    let r = pack_web(&app, &site, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // ... unless the user put something of theirs in it.
    std::fs::create_dir(site.join(".git")).unwrap();
    std::fs::write(site.join(".git").join("HEAD"), "ref: refs/heads/main").unwrap();
    let r = pack_web(&app, &site, &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("it holds .git, which capsa did not write"),
        "{}",
        r.stderr
    );
    assert!(site.join(".git").join("HEAD").is_file());
    std::fs::remove_dir_all(site.join(".git")).unwrap();
    // A file of the site that the user turned into a folder is theirs too.
    std::fs::remove_file(site.join("page.js")).unwrap();
    std::fs::create_dir(site.join("page.js")).unwrap();
    std::fs::write(site.join("page.js").join("user.txt"), "mine").unwrap();
    let r = pack_web(&app, &site, &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(site.join("page.js").join("user.txt").is_file());
    std::fs::remove_dir_all(site.join("page.js")).unwrap();
    assert_eq!(pack_web(&app, &site, &[]).code, 0);
    let one = root.path().join("one.html");
    assert_eq!(pack_web(&app, &one, &["--single-file"]).code, 0);
    let r = pack_web(&app, &one, &["--single-file"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A link at the output is not followed.
    #[cfg(unix)]
    {
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&site, &link).unwrap();
        let r = pack_web(&app, &link, &[]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(site.join(".capsa-site").is_file());
        std::fs::remove_file(&link).unwrap();
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".capsa-web"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A folder asked for where the page keeps its working directory.
    let clash = root.path().join("clash");
    std::fs::create_dir(&clash).unwrap();
    std::fs::write(clash.join("main.py"), "print(1)\n").unwrap();
    std::fs::write(
        clash.join("capsa.toml"),
        "version = 1\n[run]\nentry = \"main.py\"\n[ask.dirs.d]\naccess = \"read\"\nguest = \"/scratch\"\nreason = \"x\"\n",
    )
    .unwrap();
    let r = pack_web(&clash, &root.path().join("clash-site"), &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("/scratch is the page's working directory"),
        "{}",
        r.stderr
    );
    let r = capsa()
        .args(["pack", "--single-file"])
        .arg(&app)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--web"));
}

#[test]
fn the_time_limit_ends_the_program_and_the_page_says_so() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    let _site = packed(
        root.path(),
        "spin",
        "print('spinning')\nwhile True:\n    pass\n",
        Some("[limits]\ntimeout = \"2s\"\n"),
    );
    let started = std::time::Instant::now();
    let r = drive(json!({"url": format!("http://127.0.0.1:{}/site/", server.port)}));
    assert_eq!(r["state"], "exited", "{r:#}");
    assert_eq!(r["exitCode"], "124", "{r:#}");
    let out = output(&r);
    assert!(
        out.contains("spinning\ncapsa: time limit of 2s reached; raise it with --timeout=DURATION"),
        "{out}"
    );
    assert!(
        r["status"]
            .as_str()
            .unwrap()
            .contains("ended: time limit of 2s"),
        "{r:#}"
    );
    assert!(started.elapsed().as_secs() < 50);
}

#[test]
fn output_past_the_cap_ends_the_program() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    let _site = packed(
        root.path(),
        "flood",
        "import sys\nsys.stdout.write('Q' * 3_000_000 + '\\n')\nfor i in range(20):\n    sys.stdout.write(str(i % 10) * (1 << 20))\nprint('not reached')\n",
        None,
    );
    let r = drive(
        json!({"url": format!("http://127.0.0.1:{}/site/", server.port), "timeoutMs": 120000}),
    );
    assert_eq!(r["exitCode"], "137", "{}", r["status"]);
    let out = output(&r);
    // The page keeps the last 256 KiB in view and offers all of it.
    assert!(out.len() < 300 << 10, "{}", out.len());
    assert!(
        out.contains("earlier characters are not shown here"),
        "{}",
        &out[..200]
    );
    let whole = r["wholeOutput"]
        .as_str()
        .expect("the whole output is offered");
    assert!(whole.contains("capsa: output limit of 16M reached"));
    assert!(
        out.contains("capsa: output limit of 16M reached"),
        "{}",
        &out[out.len().saturating_sub(300)..]
    );
    assert!(!whole.contains("not reached"));
    // A large write arrives whole.
    assert_eq!(whole.matches('Q').count(), 3_000_000);
    assert!(whole.len() < (16 << 20) + 1000, "{}", whole.len());
    assert!(out.len() < (16 << 20) + 1000, "{}", out.len());
}

#[test]
fn a_redirect_from_a_granted_server_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    let other_root = tempfile::tempdir().unwrap();
    let other = Static::start(other_root.path());
    let main = format!(
        r#"import urllib.request
for code in (302, 307):
    try:
        r = urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:{port}/redirect?code=%d&to=http://127.0.0.1:{other}/leaked-%d" % (code, code),
            data=b"secret=hunter2", method="POST"))
        print(code, "followed", r.status, r.read())
    except Exception as e:
        print(code, "refused", type(e).__name__)
"#,
        port = server.port,
        other = other.port
    );
    let asks = format!(
        "[[ask.net]]\nrule = \"127.0.0.1:{}\"\nreason = \"its server\"\n",
        server.port
    );
    packed(root.path(), "redir", &main, Some(&asks));
    let r = drive(
        json!({"url": format!("http://127.0.0.1:{}/site/", server.port), "consent": "allow", "eof": true}),
    );
    let out = output(&r);
    assert!(
        out.contains("302 refused") && out.contains("307 refused"),
        "{out}"
    );
    assert!(
        out.contains("it answered with a redirect, which a page cannot check before following"),
        "{out}"
    );
    // The granted server was asked; the other never was.
    assert!(
        server.requests().contains("POST /redirect?code=307"),
        "{}",
        server.requests()
    );
    assert!(!other.requests().contains("leaked"), "{}", other.requests());
}

#[test]
fn a_flood_of_tiny_writes_does_not_stop_the_time_limit() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    let _site = packed(
        root.path(),
        "drip",
        "import os, urllib.request\nn = 0\nwhile True:\n    os.write(1, b'x')\n    os.write(2, b'y' * 150)\n    n += 1\n    if n % 50 == 0:\n        try:\n            urllib.request.urlopen('http://127.0.0.1:1/')\n        except Exception:\n            pass\n",
        Some("[limits]\ntimeout = \"8s\"\n"),
    );
    let started = std::time::Instant::now();
    let r = drive(json!({"url": format!("http://127.0.0.1:{}/site/", server.port)}));
    assert_eq!(r["exitCode"], "124", "{}", r["status"]);
    let out = output(&r);
    assert!(
        out.contains("xy") && out.contains("capsa: denied: GET http://127.0.0.1:1/"),
        "{}",
        &out[out.len().saturating_sub(500)..]
    );
    // Ended at its limit (the page loads in about 1 s): the flood of
    // stdout, stderr and denials never held the page's main thread.
    let ended = r["finalMs"].as_u64().unwrap();
    assert!(ended < 8_000 + 4_000, "ended after {ended} ms");
    assert!(started.elapsed().as_secs() < 40, "{:?}", started.elapsed());
}

#[test]
fn text_that_is_costly_to_lay_out_does_not_stop_the_time_limit() {
    let root = tempfile::tempdir().unwrap();
    let server = Static::start(root.path());
    // A large write whose end must stay in view, then one letter with
    // 200,000 combining accents (one cluster; it froze a page for 42 s).
    let _site = packed(
        root.path(),
        "accents",
        "import os, sys, time\nos.write(1, b'x' * 3_000_000 + b'TAIL\\n')\ntime.sleep(0.5)\nsys.stdout.write('a' + '\\u0301' * 200_000 + '\\n')\nsys.stdout.flush()\ntime.sleep(100)\n",
        Some("[limits]\ntimeout = \"4s\"\n"),
    );
    let r = drive(json!({"url": format!("http://127.0.0.1:{}/site/", server.port)}));
    assert_eq!(r["exitCode"], "124", "{}", r["status"]);
    let ended = r["finalMs"].as_u64().unwrap();
    assert!(ended < 4_000 + 4_000, "ended after {ended} ms");
    let out = output(&r);
    assert!(
        out.contains("xxxxTAIL\n"),
        "the end of the large write is not in view"
    );
    assert!(
        out.contains("\u{2026}[199968 combining marks]"),
        "{}",
        &out[out.len().saturating_sub(300)..]
    );
    // The download has every byte as written.
    let whole = r["wholeOutput"]
        .as_str()
        .expect("the whole output is offered");
    assert_eq!(whole.matches('\u{301}').count(), 200_000);
    assert_eq!(whole.matches('x').count(), 3_000_000);
}

//! `capsa serve`: the real server, spoken to over real HTTP on loopback.

use crate::support::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub addr: String,
    token: Option<String>,
}

impl Drop for Server {
    /// Ends the server as a service manager would (SIGTERM), so that it
    /// removes its files, then for sure.
    fn drop(&mut self) {
        if self.terminate() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Waits (15 s at most) until `dir` is empty; `left` says what was not.
fn until_empty(dir: &Path, left: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_dir(dir).unwrap().next().is_some() {
        assert!(Instant::now() < deadline, "left: {}", left());
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Server {
    /// Sends the server SIGTERM, as a service manager stops it; whether
    /// the signal was sent.
    fn terminate(&self) -> bool {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `capsa serve FLAGS` on an ephemeral loopback port, in `dir`.
    pub fn start_in(dir: &Path, flags: &[&str], token: Option<&str>) -> Server {
        python_ready();
        Server::spawn(capsa(), dir, flags, token)
    }

    /// `capsa serve FLAGS` with the cache at `cache` (its Python prepared
    /// already).
    pub fn start_with_cache(cache: &Path, flags: &[&str]) -> Server {
        let mut cmd = capsa();
        cmd.env("CAPSA_CACHE_DIR", cache);
        Server::spawn(cmd, Path::new("/"), flags, None)
    }

    fn spawn(mut cmd: Command, dir: &Path, flags: &[&str], token: Option<&str>) -> Server {
        cmd.current_dir(dir)
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .args(flags)
            // Nothing a test server does may reach a package index.
            .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("CAPSA_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("capsa serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server says where it listens");
        Server {
            child,
            addr,
            token: token.map(String::from),
        }
    }

    fn start(flags: &[&str]) -> Server {
        Server::start_in(Path::new("/"), flags, None)
    }

    /// One request on its own connection.
    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        if let Some(t) = self.token.as_ref().filter(|_| {
            !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        }) {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let headers = String::from_utf8_lossy(&all[..split]).to_lowercase();
        let status = headers[9..12].parse().unwrap();
        let mut body = all[split + 4..].to_vec();
        if headers.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    fn post(&self, path: &str, value: Value) -> Answer {
        self.raw(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            value.to_string().as_bytes(),
        )
    }

    fn run(&self, value: Value) -> Value {
        let a = self.post("/v1/run", value);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        a.json()
    }

    fn session(&self, asks: Value) -> String {
        let a = self.post("/v1/sessions", asks);
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        a.json()["id"].as_str().unwrap().to_string()
    }

    fn exec(&self, id: &str, code: &str) -> Value {
        let a = self.post(&format!("/v1/sessions/{id}/exec"), json!({ "code": code }));
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        a.json()
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

#[test]
fn a_run_answers_with_its_output_denials_and_exit_code() {
    let (_t, dir) = scratch();
    std::fs::write(dir.join("data.txt"), "granted data").unwrap();
    let server = Server::start(&[&format!("--allow-read={}", s(&dir))]);
    let code = format!(
        "import os, sys\n\
         print(open({:?}).read())\n\
         print(sorted(os.listdir('.')), open('in.txt').read(), sys.stdin.read(), sys.argv[1:])\n\
         open('out.txt', 'w').write('x')\n\
         try:\n    open('/etc/hostname')\nexcept OSError as e:\n    print(type(e).__name__)\n\
         sys.exit(3)",
        s(&dir.join("data.txt"))
    );
    let r = server.run(json!({
        "code": code, "stdin": "from stdin", "args": ["a", "b"],
        "files": {"in.txt": "from a file"},
    }));
    assert_eq!(r["exit_code"], 3, "{r}");
    assert_eq!(
        r["stdout"],
        "granted data\n['in.txt'] from a file from stdin ['a', 'b']\nFileNotFoundError\n",
        "{r}"
    );
    let denials = r["denials"].as_array().unwrap();
    assert!(
        denials.iter().any(|d| d
            .as_str()
            .unwrap()
            .starts_with("denied: read /etc/hostname")),
        "{r}"
    );
    assert_eq!(r["limit"], Value::Null);
    assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
    // Nothing of the run is left behind, and nothing reached the grant.
    assert_eq!(
        tree(&dir),
        vec![("data.txt".into(), b"granted data".to_vec())]
    );
}

/// A run's files: as many as the cap, in folders of their own, are there
/// for the program; one more, or names that clash, are refused before
/// anything is written.
#[test]
fn a_run_brings_up_to_a_thousand_files() {
    let server = Server::start(&[]);
    let mut files = serde_json::Map::new();
    for i in 0..1000 {
        files.insert(format!("d{}/f{i}.txt", i % 10), json!(i.to_string()));
    }
    let code = "import os\n\
                names = [os.path.join(d, f) for d in os.listdir('.') for f in os.listdir(d)]\n\
                print(len(names), sum(int(open(n).read()) for n in names))";
    let r = server.run(json!({"code": code, "files": files.clone()}));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "1000 499500\n", "{r}");

    files.insert("one-more.txt".into(), json!("x"));
    let over = server.post("/v1/run", json!({"code": "print(1)", "files": files}));
    assert_eq!(over.status, 400);
    assert!(
        over.json()["error"]
            .as_str()
            .unwrap()
            .contains("at most 1000 files"),
        "{}",
        String::from_utf8_lossy(&over.body)
    );
    for clash in [json!({"a": "1", "a/b": "2"}), json!({"a/b": "1", "a": "2"})] {
        let r = server.post("/v1/run", json!({"code": "print(1)", "files": clash}));
        assert_eq!(
            r.status,
            400,
            "{clash}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = server.run(json!({"code": "import os; print(os.listdir('.'))", "files": {"a": "1"}}));
    assert_eq!(r["stdout"], "['a']\n", "{r}");
}

#[test]
fn a_wasi_program_runs_from_base64() {
    use base64::Engine as _;
    let server = Server::start(&[]);
    let wasm = std::fs::read(probe(P1)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(wasm);
    let r = server.run(json!({"wasm": b64, "args": ["args", "hi there"]}));
    assert_eq!(r["exit_code"], 0, "{r}");
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("ok: ") && out.ends_with("program.wasm args hi there\n"),
        "{r}"
    );
    let r = server.run(json!({"wasm": b64, "args": ["trap"]}));
    assert_eq!(r["exit_code"], 134, "{r}");
    let bad = server.post("/v1/run", json!({"wasm": "not base64!"}));
    assert_eq!(bad.status, 400);
    let nul = server.post("/v1/run", json!({"wasm": b64, "args": ["a\u{0}b"]}));
    assert_eq!(nul.status, 400, "{}", String::from_utf8_lossy(&nul.body));
    assert!(nul.json()["error"].as_str().unwrap().contains("NUL"));
    let none = server.post("/v1/run", json!({"wasm": b64, "memory": "0"}));
    assert_eq!(none.status, 400, "{}", String::from_utf8_lossy(&none.body));
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("more than 0")
    );
    let neither = server.post("/v1/run", json!({"stdin": "x"}));
    assert_eq!(neither.status, 400);
    assert!(neither.json()["error"].as_str().unwrap().contains("code"));
    // Arguments and asks are bounded, as a system's ARG_MAX bounds
    // arguments. Regression: 60 MB bodies of empty arguments took the
    // server to 3.4 GB while they waited, and a warm worker kept 2.5 GB.
    let many = vec![""; 4097];
    let big = vec!["x".repeat(300 << 10); 4];
    let duplicates = vec!["CAPSA_TEST_X"; 1001];
    for body in [
        json!({"wasm": b64, "args": many}),
        json!({"wasm": b64, "args": big}),
        json!({"wasm": b64, "args": ["args", "x".repeat(128 << 10)]}),
        json!({"wasm": b64, "allow_env": duplicates}),
        // Refused before it is parsed (20 million would take 1.4 GB).
        json!({"wasm": b64, "args": vec![""; 60_000]}),
    ] {
        let a = server.post("/v1/run", body);
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
        let e = a.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains("at most"), "{e}");
    }
    // The longest argument Linux passes to a process (to a WASI 0.2
    // program: a preview 1 program's arguments must fit in the adapter's
    // room for them, about 58 KB).
    let p2 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(probe(P2)).unwrap());
    let r = server.run(json!({"wasm": p2, "args": ["args", "x".repeat((128 << 10) - 1)]}));
    assert_eq!(r["exit_code"], 0, "{r}");
    // What a request sent comes back cut short in an error.
    let a = server.post("/v1/run", json!({"wasm": b64, "k".repeat(1 << 20): 1}));
    assert_eq!(a.status, 400);
    assert!(a.body.len() < 8192, "{}", a.body.len());
    let mut most = vec!["a"; 4096];
    most[0] = "args";
    let r = server.run(json!({"wasm": b64, "args": most}));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(r["stdout"].as_str().unwrap().ends_with(" a a\n"), "{r}");
}

#[test]
fn a_request_may_ask_for_less_than_the_operator_granted_never_more() {
    let (_t, dir) = scratch();
    let (_o, other) = scratch();
    std::fs::write(dir.join("a.txt"), "a").unwrap();
    std::fs::write(other.join("secret.txt"), "secret").unwrap();
    // A link to the granted directory is not its name: names are compared
    // as text, never looked up on the host.
    let link = other.join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let server = Server::start(&[
        &format!("--allow-read={}", s(&dir)),
        "--allow-net=127.0.0.1:9",
        "--memory=256M",
        "--timeout=20s",
    ]);
    for (asks, why) in [
        (json!({"allow_read": [s(&other)]}), "--allow-read="),
        (json!({"allow_read": [s(&link)]}), "--allow-read="),
        (json!({"allow_write": [s(&dir)]}), "--allow-write="),
        (
            json!({"allow_net": ["127.0.0.1:10"]}),
            "--allow-net=127.0.0.1:10",
        ),
        (json!({"allow_env": ["HOME"]}), "--allow-env=HOME"),
        (json!({"memory": "1G"}), "--memory=256M"),
        (json!({"timeout": "1m"}), "--timeout=20s"),
        (json!({"max_write": "1G"}), "--max-write=256M"),
    ] {
        let mut req = asks.clone();
        req["code"] = json!(format!(
            "print(open({:?}).read())",
            s(&other.join("secret.txt"))
        ));
        let a = server.post("/v1/run", req);
        assert_eq!(
            a.status,
            403,
            "{asks}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let e = a.json()["error"].as_str().unwrap().to_string();
        assert!(e.starts_with("denied: ") && e.contains(why), "{asks}: {e}");
    }
    // A subset: the operator's own grant, the same rule, lower limits.
    let r = server.run(json!({
        "code": format!("print(open({:?}).read())", s(&dir.join("a.txt"))),
        "allow_read": [format!("{}/", s(&dir))], "allow_net": ["127.0.0.1:9"], "memory": "64M", "timeout": "5s",
    }));
    assert_eq!(r["stdout"], "a\n", "{r}");
    // Asking for no grants at all takes the operator's away.
    let r = server.run(json!({
        "code": format!("print(open({:?}).read())", s(&dir.join("a.txt"))),
        "allow_read": [],
    }));
    assert_eq!(r["exit_code"], 1, "{r}");
    assert!(
        r["stderr"].as_str().unwrap().contains("FileNotFoundError"),
        "{r}"
    );
    // Malformed asks are the client's error, not a denial.
    for asks in [
        json!({"allow_read": ["relative/path"]}),
        json!({"allow_read": [format!("{}::/x", s(&dir))]}),
        // `..` would have the server look the name up: whether the
        // directory before it exists would show in the answer.
        json!({"allow_read": [format!("{}/../{}", s(&other), s(&dir))]}),
        json!({"allow_read": [format!("{}/../{}", s(&other.join("nothing")), s(&dir))]}),
        json!({"allow_net": ["a.com,b.com"]}),
        json!({"memory": "lots"}),
        json!({"allow_everything": true}),
    ] {
        let mut req = asks.clone();
        req["code"] = json!("print(1)");
        let a = server.post("/v1/run", req);
        assert_eq!(
            a.status,
            400,
            "{asks}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
}

/// The operator keeps `sub/ref` read-only inside a writable directory. A
/// run or session that asks only for the writable directory must not get
/// what the operator kept back: no write in `sub/ref`, and no renaming its
/// way to it, which would re-point the grant for the runs after it.
#[test]
fn a_run_asking_for_a_directory_keeps_the_operators_grants_inside_it() {
    let (_t, dir) = scratch();
    let refd = dir.join("sub/ref");
    std::fs::create_dir_all(&refd).unwrap();
    std::fs::write(refd.join("a.txt"), "operator's").unwrap();
    let server = Server::start(&[
        &format!("--allow-write={}", s(&dir)),
        &format!("--allow-read={}", s(&refd)),
    ]);
    let moved = dir.join("moved");
    let attack = format!(
        r#"
import os
tries = [
    lambda: open({a:?}, "w").write("forged"),
    lambda: open({a:?}, "a").write("forged"),
    lambda: os.unlink({a:?}),
    lambda: os.rename({sub:?}, {moved:?}),
    lambda: os.rename({refd:?}, {moved:?}),
    lambda: os.rmdir({refd:?}),
    lambda: os.mkdir({inside:?}),
]
for t in tries:
    try:
        t()
        print("done")
    except OSError:
        print("refused")
_ = open({new:?}, "w").write("mine")
"#,
        a = s(&refd.join("a.txt")),
        sub = s(&dir.join("sub")),
        refd = s(&refd),
        inside = s(&refd.join("new")),
        moved = s(&moved),
        new = s(&dir.join("new.txt")),
    );
    for asks in [
        json!({"allow_write": [s(&dir)]}),
        json!({"allow_write": [s(&dir)], "allow_read": []}),
    ] {
        let mut req = asks.clone();
        req["code"] = json!(attack);
        let r = server.run(req);
        assert_eq!(r["exit_code"], 0, "{asks}: {r}");
        assert_eq!(r["stdout"], "refused\n".repeat(7), "{asks}: {r}");
        // What it was granted, it could do.
        assert_eq!(
            std::fs::read_to_string(dir.join("new.txt")).unwrap(),
            "mine"
        );
        std::fs::remove_file(dir.join("new.txt")).unwrap();
        assert_eq!(
            std::fs::read_to_string(refd.join("a.txt")).unwrap(),
            "operator's"
        );
        assert!(!moved.exists() && !refd.join("new").exists());
    }
    // The runs after it still get what the operator granted.
    let r = server.run(json!({
        "code": format!(
            "print(open({:?}).read())",
            s(&refd.join("a.txt"))
        ),
        "allow_read": [s(&refd)],
    }));
    assert_eq!(r["stdout"], "operator's\n", "{r}");
    // A session asking for the directory is held the same way.
    let id = server.session(json!({"allow_write": [s(&dir)]}));
    let r = server.exec(&id, &attack);
    assert_eq!(r["stdout"], "refused\n".repeat(7), "{r}");
    assert_eq!(
        std::fs::read_to_string(refd.join("a.txt")).unwrap(),
        "operator's"
    );
}

#[test]
fn a_hostile_run_ends_alone_and_the_good_one_beside_it_is_intact() {
    let server = std::sync::Arc::new(Server::start(&["--timeout=3s", "--memory=128M"]));
    let hostile = [
        (
            json!({"code": "while True: pass", "timeout": "1s"}),
            124,
            "time limit of 1s",
        ),
        (
            json!({"code": "import sys\nwhile True: sys.stdout.write('x' * 65536)", "max_output": "100K"}),
            137,
            "output limit of 100K",
        ),
        (
            json!({"code": "f = open('big', 'wb')\nwhile True: f.write(b'x' * 65536)", "max_write": "1M"}),
            137,
            "file write limit of 1M",
        ),
        // MemoryError, then exit 1: the limit's, and said so.
        (
            json!({"code": "a = []\nwhile True: a.append(bytearray(1 << 20))"}),
            137,
            "memory limit of 128M",
        ),
        (json!({"code": "def f(): f()\nf()"}), 1, ""),
    ];
    let mut handles = Vec::new();
    for (req, code, limit) in hostile {
        let server = server.clone();
        handles.push(std::thread::spawn(move || {
            let r = server.run(req.clone());
            assert_eq!(r["exit_code"], code, "{req}: {r}");
            if !limit.is_empty() {
                assert!(
                    r["limit"].as_str().unwrap_or_default().starts_with(limit),
                    "{req}: {r}"
                );
            }
        }));
    }
    for i in 0..6 {
        let r = server.run(json!({"code": format!("print({i} * 7)")}));
        assert_eq!(r["exit_code"], 0, "{r}");
        assert_eq!(r["stdout"], format!("{}\n", i * 7), "{r}");
        assert_eq!(r["stderr"], "", "{r}");
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_session_keeps_its_globals_and_shows_a_last_expression() {
    let server = Server::start(&[]);
    let id = server.session(json!({}));
    let r = server.exec(&id, "x = 41\nx += 1\nx");
    assert_eq!(r["stdout"], "42\n", "{r}");
    assert_eq!(r["exit_code"], 0);
    let r = server.exec(&id, "def f(y):\n    return x + y\nf(1)");
    assert_eq!(r["stdout"], "43\n", "{r}");
    let r = server.exec(&id, "1 / 0");
    assert_eq!(r["exit_code"], 1, "{r}");
    let err = r["stderr"].as_str().unwrap();
    assert!(
        err.contains("ZeroDivisionError") && err.contains("<cell>"),
        "{r}"
    );
    assert!(
        !err.contains("session.py"),
        "the loop's own frame is hidden: {r}"
    );
    let r = server.exec(&id, "import sys\nsys.exit(5)");
    assert_eq!(r["exit_code"], 5, "{r}");
    // The exit of a cell is not the end of the session.
    let r = server.exec(&id, "x");
    assert_eq!(r["stdout"], "42\n", "{r}");
    // Input for one call.
    let a = server.post(
        &format!("/v1/sessions/{id}/exec"),
        json!({"code": "input() + '!'", "stdin": "typed\n"}),
    );
    assert_eq!(a.json()["stdout"], "'typed!'\n");
    // Another session sees none of it.
    let other = server.session(json!({}));
    let r = server.exec(&other, "x");
    assert!(r["stderr"].as_str().unwrap().contains("NameError"), "{r}");
}

#[test]
fn session_files_go_in_and_out_of_its_scratch_directory() {
    let server = Server::start(&[]);
    let id = server.session(json!({}));
    let put = server.raw(
        "PUT",
        &format!("/v1/sessions/{id}/files/sub/in%20put.txt"),
        &[],
        b"uploaded",
    );
    assert_eq!(put.status, 204, "{}", String::from_utf8_lossy(&put.body));
    let r = server.exec(
        &id,
        "import os\nprint(open('sub/in put.txt').read())\nopen('out.bin', 'wb').write(bytes(range(256)))\nsorted(os.listdir('.'))",
    );
    assert_eq!(r["stdout"], "uploaded\n['out.bin', 'sub']\n", "{r}");
    let got = server.raw("GET", &format!("/v1/sessions/{id}/files/out.bin"), &[], b"");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, (0..=255u8).collect::<Vec<_>>());
    let list = server.raw("GET", &format!("/v1/sessions/{id}/files"), &[], b"");
    assert_eq!(
        list.json(),
        json!({"entries": [
            {"name": "out.bin", "type": "file", "size": 256},
            {"name": "sub", "type": "directory", "size": 0},
        ]})
    );
    for bad in ["../escape", "%2e%2e/escape", "/etc/passwd", "a%00b", "%ff"] {
        let a = server.raw("GET", &format!("/v1/sessions/{id}/files/{bad}"), &[], b"");
        assert!(a.status == 400 || a.status == 404, "{bad}: {}", a.status);
        let a = server.raw("PUT", &format!("/v1/sessions/{id}/files/{bad}"), &[], b"x");
        assert!(a.status == 400 || a.status == 404, "{bad}: {}", a.status);
    }
    let missing = server.raw("GET", &format!("/v1/sessions/{id}/files/nope"), &[], b"");
    assert_eq!(missing.status, 404);
    // A trailing / names a directory, as in a path: once ignored, so that
    // `out.bin/` read the file and a put to `new/` wrote a file `new`.
    let sub = server.raw("GET", &format!("/v1/sessions/{id}/files/sub/"), &[], b"");
    assert_eq!(sub.status, 200);
    assert_eq!(sub.json()["entries"][0]["name"], "in put.txt");
    let file_as_dir = server.raw(
        "GET",
        &format!("/v1/sessions/{id}/files/out.bin/"),
        &[],
        b"",
    );
    assert_eq!(file_as_dir.status, 400);
    for dir_name in ["new/", "new%2F", "new/.", "sub/new%2F"] {
        let put_dir = server.raw(
            "PUT",
            &format!("/v1/sessions/{id}/files/{dir_name}"),
            &[],
            b"x",
        );
        assert_eq!(put_dir.status, 400, "{dir_name}");
    }
    for file_as_dir in ["out.bin%2F", "out.bin/."] {
        let a = server.raw(
            "GET",
            &format!("/v1/sessions/{id}/files/{file_as_dir}"),
            &[],
            b"",
        );
        assert_eq!(a.status, 400, "{file_as_dir}");
    }
    let gone = server.raw("GET", &format!("/v1/sessions/{id}/files/new"), &[], b"");
    assert_eq!(gone.status, 404, "nothing was written");
    // A name the file system cannot take there is the request's fault.
    let long = "n".repeat(300);
    for bad in [long.as_str(), "sub", "sub/in%20put.txt/x"] {
        let a = server.raw("PUT", &format!("/v1/sessions/{id}/files/{bad}"), &[], b"x");
        assert_eq!(a.status, 400, "{bad}: {}", String::from_utf8_lossy(&a.body));
    }
}

/// Files put into a session count against its `--max-write`, as its
/// program's writes do, with 4 KiB for each name a put makes: once they
/// would pass it, a put is refused (413) and writes nothing; a put that
/// fails otherwise takes only what its names cost. (Without this, a client
/// could fill the server's disk 64 MiB at a time, or its inodes with empty
/// files under deep names.)
#[test]
fn files_put_into_a_session_count_against_its_write_limit() {
    let server = Server::start(&["--max-write=1M"]);
    let id = server.session(json!({}));
    let put = |name: &str, bytes: &[u8]| {
        server.raw(
            "PUT",
            &format!("/v1/sessions/{id}/files/{name}"),
            &[],
            bytes,
        )
    };
    let chunk = vec![b'x'; 400 << 10];
    // Refused for another reason: only its name counted (4 KiB).
    assert_eq!(put(&"n".repeat(300), &chunk).status, 400);
    for name in ["a", "b"] {
        let a = put(name, &chunk);
        assert_eq!(
            a.status,
            204,
            "{name}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    // 800 KiB and three names put; 400 more would pass 1 MiB, replacing a
    // file included.
    for name in ["c", "a"] {
        let a = put(name, &chunk);
        assert_eq!(
            a.status,
            413,
            "{name}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let msg = a.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains("write limit of 1M"), "{msg}");
    }
    let list = server.raw("GET", &format!("/v1/sessions/{id}/files"), &[], b"");
    assert_eq!(
        list.json(),
        json!({"entries": [
            {"name": "a", "type": "file", "size": 400 << 10},
            {"name": "b", "type": "file", "size": 400 << 10},
        ]})
    );
    // What is left can still be put: 200 KiB and a name.
    assert_eq!(put("d", &vec![b'y'; 200 << 10]).status, 204);
    assert_eq!(put("e", &vec![b'z'; 30 << 10]).status, 413);
    // Another session has its own. Empty files under deep names cost their
    // names: 300 of them pass 1 MiB, and nothing is made.
    let other = server.session(json!({}));
    let a = server.raw("PUT", &format!("/v1/sessions/{other}/files/a"), &[], &chunk);
    assert_eq!(a.status, 204);
    let deep = vec!["d"; 299].join("/") + "/f";
    let a = server.raw(
        "PUT",
        &format!("/v1/sessions/{other}/files/{deep}"),
        &[],
        b"",
    );
    assert_eq!(a.status, 413, "{}", String::from_utf8_lossy(&a.body));
    let list = server.raw("GET", &format!("/v1/sessions/{other}/files"), &[], b"");
    assert_eq!(
        list.json(),
        json!({"entries": [{"name": "a", "type": "file", "size": 400 << 10}]})
    );
    let a = server.raw(
        "PUT",
        &format!("/v1/sessions/{other}/files/d/d/f"),
        &[],
        b"",
    );
    assert_eq!(a.status, 204);
}

#[test]
fn the_server_never_follows_a_link_out_of_a_scratch_directory() {
    let (_t, outside) = scratch();
    std::fs::write(outside.join("victim.txt"), "host file").unwrap();
    let server = Server::start(&[]);
    let id = server.session(json!({}));
    let cwd = server.exec(&id, "import os\nprint(os.getcwd())");
    let scratch_dir = std::path::PathBuf::from(cwd["stdout"].as_str().unwrap().trim());
    assert!(scratch_dir.is_dir(), "{cwd}");
    // Links planted in the scratch directory (as a guest, or anyone, might).
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(outside.join("victim.txt"), scratch_dir.join("leak")).unwrap();
        std::os::unix::fs::symlink(&outside, scratch_dir.join("dirleak")).unwrap();
    }
    let before = tree(&outside);
    for path in ["leak", "dirleak", "dirleak/victim.txt"] {
        let a = server.raw("GET", &format!("/v1/sessions/{id}/files/{path}"), &[], b"");
        assert_eq!(
            a.status,
            404,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(!String::from_utf8_lossy(&a.body).contains("host file"));
    }
    let a = server.raw(
        "PUT",
        &format!("/v1/sessions/{id}/files/dirleak/new.txt"),
        &[],
        b"x",
    );
    assert_ne!(a.status, 204);
    // Writing at a link's name replaces the link; the file it named is untouched.
    let a = server.raw(
        "PUT",
        &format!("/v1/sessions/{id}/files/leak"),
        &[],
        b"replaced",
    );
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(tree(&outside), before);
    assert!(
        !std::fs::symlink_metadata(scratch_dir.join("leak"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read(scratch_dir.join("leak")).unwrap(),
        b"replaced"
    );
}

#[test]
fn a_call_past_its_limit_ends_only_its_own_session() {
    let server = Server::start(&["--memory=128M"]);
    let looping = server.session(json!({"timeout": "1s"}));
    let calm = server.session(json!({}));
    server.exec(&calm, "kept = 'still here'");
    let r = server.exec(&looping, "while True: pass");
    assert_eq!(r["exit_code"], 124, "{r}");
    assert_eq!(r["session_ended"], true, "{r}");
    assert!(
        r["limit"]
            .as_str()
            .unwrap()
            .starts_with("time limit of 1s reached"),
        "{r}"
    );
    let gone = server.post(
        &format!("/v1/sessions/{looping}/exec"),
        json!({"code": "1"}),
    );
    assert_eq!(gone.status, 404);
    assert!(
        gone.json()["error"]
            .as_str()
            .unwrap()
            .contains("time limit"),
        "{}",
        gone.json()
    );
    let flood = server.session(json!({"max_output": "64K"}));
    let r = server.exec(&flood, "while True: print('y' * 1000)");
    assert_eq!(r["exit_code"], 137, "{r}");
    assert!(r["stdout"].as_str().unwrap().len() <= 64 * 1024, "capped");
    assert_eq!(server.exec(&calm, "kept")["stdout"], "'still here'\n");
    // A call may ask for less time than its session has, not more.
    let a = server.post(
        &format!("/v1/sessions/{calm}/exec"),
        json!({"code": "1", "timeout": "2h"}),
    );
    assert_eq!(a.status, 403);
}

/// A session deleted during a call says it was deleted, not how the call
/// it was running ended.
#[test]
fn a_session_deleted_during_a_call_says_so() {
    let server = Server::start(&["--timeout=60s"]);
    let id = server.session(json!({}));
    let path = format!("/v1/sessions/{id}/exec");
    hang_up(
        &server,
        &path,
        &json!({"code": "import time\ntime.sleep(30)"}),
    );
    let del = server.raw("DELETE", &format!("/v1/sessions/{id}"), &[], b"");
    assert_eq!(del.status, 204);
    // The call ends with its process, shortly after.
    std::thread::sleep(Duration::from_millis(1500));
    let again = server.post(&path, json!({"code": "1"}));
    assert_eq!(again.status, 404);
    let e = again.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("it was deleted"), "{e}");
}

#[test]
fn sessions_end_when_deleted_idle_or_too_many() {
    let server = Server::start(&["--session-idle=1s", "--max-sessions=2"]);
    let a = server.session(json!({}));
    let b = server.session(json!({}));
    let third = server.post("/v1/sessions", json!({}));
    assert_eq!(
        third.status,
        429,
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    let del = server.raw("DELETE", &format!("/v1/sessions/{a}"), &[], b"");
    assert_eq!(del.status, 204);
    let again = server.post(&format!("/v1/sessions/{a}/exec"), json!({"code": "1"}));
    assert_eq!(again.status, 404);
    assert!(again.json()["error"].as_str().unwrap().contains("deleted"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.post(&format!("/v1/sessions/{b}/exec"), json!({"code": "1"}));
        if r.status == 404 {
            assert!(
                r.json()["error"].as_str().unwrap().contains("idle"),
                "{}",
                r.json()
            );
            break;
        }
        assert!(Instant::now() < deadline, "never ended for idleness");
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(server.post("/v1/sessions", json!({})).status, 201);
}

#[test]
fn output_streams_as_server_sent_events() {
    let server = Server::start(&[]);
    let code = "import sys\nprint('one', flush=True)\nprint('two', file=sys.stderr)\nsys.exit(2)";
    let a = server.raw(
        "POST",
        "/v1/run",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        ],
        json!({ "code": code }).to_string().as_bytes(),
    );
    assert_eq!(a.status, 200);
    assert!(
        a.headers.contains("content-type: text/event-stream"),
        "{}",
        a.headers
    );
    let text = String::from_utf8(a.body).unwrap();
    let events = parse_events(&text);
    assert_eq!(joined(&events, "stdout"), "one\n", "{text}");
    assert_eq!(joined(&events, "stderr"), "two\n", "{text}");
    let (last, result) = events.last().unwrap();
    assert_eq!(last, "result");
    assert_eq!(result["exit_code"], 2);
    assert_eq!(result["stdout"], "one\n");
    // The same from a session, where the end of a call is marked in-band.
    let id = server.session(json!({}));
    let a = server.raw(
        "POST",
        &format!("/v1/sessions/{id}/exec"),
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        ],
        json!({ "code": "print('a\\0b')\n6 * 7" })
            .to_string()
            .as_bytes(),
    );
    let text = String::from_utf8(a.body).unwrap();
    let events = parse_events(&text);
    assert_eq!(joined(&events, "stdout"), "a\0b\n42\n", "{text}");
    assert_eq!(events.last().unwrap().0, "result", "{text}");
}

fn parse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            (
                name.strip_prefix("event: ").unwrap().to_string(),
                serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
            )
        })
        .collect()
}

fn joined(events: &[(String, Value)], kind: &str) -> String {
    events
        .iter()
        .filter(|(n, _)| n == kind)
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn without_the_token_nothing_is_answered() {
    let (_t, dir) = scratch();
    let server = Server::start_in(&dir, &[], Some("s3cret-token"));
    let a = server.raw("GET", "/v1/openapi.json", &[], b"");
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["openapi"], "3.0.3");
    for auth in [
        "",
        "Bearer wrong",
        "Bearer s3cret-tokenX",
        "Basic s3cret-token",
    ] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![("Authorization", "")]
        } else {
            vec![("Authorization", auth)]
        };
        let a = server.raw(
            "POST",
            "/v1/run",
            &[headers[0], ("Content-Type", "application/json")],
            br#"{"code": "open('pwned', 'w')"}"#,
        );
        assert_eq!(a.status, 401, "{auth}");
    }
    assert!(tree(&dir).is_empty(), "nothing ran");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let server = Server::start_in(&dir, &[&format!("--token-file={}", s(&token_file))], None);
    let a = server.raw(
        "GET",
        "/v1/openapi.json",
        &[("Authorization", "Bearer from-a-file")],
        b"",
    );
    assert_eq!(a.status, 200);
    let a = server.raw("GET", "/v1/openapi.json", &[], b"");
    assert_eq!(a.status, 401);
}

#[test]
fn a_tokenless_server_stays_on_loopback_and_refuses_web_pages() {
    refused_start(&["--listen=0.0.0.0:0"], "not a loopback address");
    let server = Server::start(&[]);
    let body = br#"{"code": "print(1)"}"#;
    for headers in [
        vec![
            ("Origin", "https://evil.example"),
            ("Content-Type", "application/json"),
        ],
        vec![
            ("Host", "evil.example:80"),
            ("Content-Type", "application/json"),
        ],
    ] {
        let a = server.raw("POST", "/v1/run", &headers, body);
        assert_eq!(a.status, 403, "{headers:?}");
    }
    // A form a page could post without asking first is not JSON, even an
    // empty one, which once opened a session.
    let a = server.raw("POST", "/v1/run", &[("Content-Type", "text/plain")], body);
    assert_eq!(a.status, 415);
    for path in ["/v1/sessions", "/v1/run"] {
        for ctype in ["text/plain", "", "text/\u{e9}"] {
            let a = server.raw("POST", path, &[("Content-Type", ctype)], b"");
            assert_eq!(a.status, 415, "{path} {ctype:?}");
        }
    }
    let two = [
        ("Content-Type", "application/json"),
        ("Content-Type", "text/plain"),
    ];
    assert_eq!(server.raw("POST", "/v1/run", &two, body).status, 400);
    // The media type exactly (in any case, with parameters).
    let a = server.raw(
        "POST",
        "/v1/run",
        &[("Content-Type", "application/jsonx")],
        body,
    );
    assert_eq!(a.status, 415);
    let a = server.raw(
        "POST",
        "/v1/run",
        &[("Content-Type", "Application/JSON; charset=utf-8")],
        body,
    );
    assert_eq!(a.status, 200);
    // A request target in absolute form that names another host.
    let a = server.raw(
        "POST",
        "http://evil.example/v1/run",
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(a.status, 403);
    let own_target = format!("http://{}/v1/run", server.addr);
    let a = server.raw(
        "POST",
        &own_target,
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(a.status, 200);
    // Two Host headers, the server's own first: only the first was checked.
    let own = server.addr.clone();
    for hosts in [
        [own.as_str(), "evil.example:80"],
        ["evil.example:80", own.as_str()],
    ] {
        let headers = [
            ("Host", hosts[0]),
            ("Host", hosts[1]),
            ("Content-Type", "application/json"),
        ];
        let a = server.raw("POST", "/v1/run", &headers, body);
        assert_eq!(a.status, 400, "{hosts:?}");
    }
    assert_eq!(server.run(json!({"code": "print(1)"}))["stdout"], "1\n");
}

#[test]
fn the_operator_cannot_grant_the_servers_own_files() {
    let (_t, dir) = scratch();
    let work = dir.join("work");
    refused_start(
        &[
            &format!("--work-dir={}", s(&work)),
            &format!("--allow-read={}", s(&dir)),
        ],
        "holds the server's own files",
    );
}

#[test]
fn the_server_token_never_reaches_a_guest() {
    let (_t, dir) = scratch();
    let server = Server::start_in(&dir, &["--allow-env=CAPSA_*"], Some("hidden-token"));
    let r = server.run(json!({"code": "import os\nprint('CAPSA_CACHE_DIR' in os.environ, os.environ.get('CAPSA_TOKEN'))"}));
    // The grant works (the cache's variable passes); the token does not.
    assert_eq!(r["stdout"], "True None\n", "{r}");
}

#[test]
fn schemathesis_finds_no_server_error_or_answer_off_the_schema() {
    let (_t, dir) = scratch();
    let server = Server::start_in(
        &dir,
        &["--timeout=2s", "--max-sessions=64", "--session-idle=5s"],
        Some("schema-token"),
    );
    // What the schema cannot say (a duration's range, a name that is
    // already a file) the server answers 400 with a reason: the checks
    // of whether valid data is accepted and invalid data refused are off.
    let out = host_python()
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{}/v1/openapi.json", server.addr))
        .args(["-H", "Authorization: Bearer schema-token"])
        .args(["--max-examples", "10", "--seed", "1"])
        .args([
            "--exclude-checks",
            "positive_data_acceptance,negative_data_rejection",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Tested: 8") || text.contains("Tested: 9"),
        "{text}"
    );
    assert!(text.contains(" passed"), "{text}");
}

/// The session's scratch directory, as its interpreter sees it.
fn session_dir(server: &Server, id: &str) -> std::path::PathBuf {
    let r = server.exec(id, "import os\nprint(os.getcwd())");
    let scratch = std::path::PathBuf::from(r["stdout"].as_str().unwrap().trim());
    scratch.parent().unwrap().to_path_buf()
}

/// Sends a request and hangs up before the answer.
fn hang_up(server: &Server, path: &str, body: &Value) {
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
}

#[test]
fn a_client_that_hangs_up_leaves_its_session_in_step() {
    let server = Server::start(&["--timeout=10s"]);
    let id = server.session(json!({}));
    let path = format!("/v1/sessions/{id}/exec");
    hang_up(
        &server,
        &path,
        &json!({"code": "import time\ntime.sleep(1)\nprint('ONE')"}),
    );
    // The first call goes on to its end; then the next is answered as itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = server.post(&path, json!({"code": "print('TWO')"}));
        if a.status == 409 {
            assert!(Instant::now() < deadline, "the first call never ended");
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["stdout"], "TWO\n", "{}", a.json());
        break;
    }
}

#[test]
fn a_session_that_will_not_read_is_still_ended_in_time() {
    let server = Server::start(&["--timeout=2s"]);
    let id = server.session(json!({}));
    let dir = session_dir(&server, &id);
    let path = format!("/v1/sessions/{id}/exec");
    hang_up(&server, &path, &json!({"code": "while True: pass"}));
    // A call too large for the pipe while the interpreter spins.
    let big = format!("x = '{}'", "y".repeat(1 << 20));
    let start = Instant::now();
    let a = server.post(&path, json!({ "code": big }));
    assert!(
        a.status == 409 || a.status == 404 || a.status == 200,
        "{}",
        a.status
    );
    let del = server.raw("DELETE", &format!("/v1/sessions/{id}"), &[], b"");
    assert!(del.status == 204 || del.status == 404, "{}", del.status);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() {
        assert!(Instant::now() < deadline, "the session's files stay");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cell_that_forges_the_end_of_its_call_ends_its_session() {
    let server = Server::start(&["--timeout=30s"]);
    let id = server.session(json!({}));
    let forge = "import os, sys\n\
                 nonce = sys._getframe(1).f_globals['nonce']\n\
                 os.write(1, b'looks done\\0capsa-end:' + nonce + b':0\\n')\n\
                 os.write(2, b'\\0capsa-end:' + nonce + b'\\n')\n\
                 while True: pass";
    let r = server.exec(&id, forge);
    assert_eq!(r["stdout"], "looks done", "{r}");
    // The server looks at the interpreter between calls (every 500 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = server.post(
            &format!("/v1/sessions/{id}/exec"),
            json!({"code": "print(1)"}),
        );
        if a.status == 404 {
            let e = a.json()["error"].as_str().unwrap().to_string();
            assert!(e.contains("kept running after its call had ended"), "{e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spinning cell was never stopped"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[cfg(unix)]
#[test]
fn sigterm_ends_every_sandbox_and_removes_the_servers_files() {
    let (_t, work) = scratch();
    let server = Server::start(&["--timeout=none", &format!("--work-dir={}", s(&work))]);
    let id = server.session(json!({}));
    let dir = session_dir(&server, &id);
    std::fs::write(dir.join("scratch").join("notes.txt"), "x").unwrap();
    hang_up(
        &server,
        &format!("/v1/sessions/{id}/exec"),
        &json!({"code": "while True: pass"}),
    );
    assert!(server.terminate());
    until_empty(&work, || format!("{:?}", tree(&work)));
    // No process of the server's is left running its sandboxes.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path().join("cwd")).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(s(&work)))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// SIGTERM while a run is still making files fast: the run is ended before
/// the server's files are removed, so nothing is left (its directories were
/// left, made while they were being removed).
#[test]
fn sigterm_during_a_run_making_files_leaves_nothing() {
    // In a warm worker, and in a process of its own (`--cold`, as every
    // WebAssembly program runs).
    for cold in [false, true] {
        sigterm_during_a_run_making_files(cold);
    }
}

fn sigterm_during_a_run_making_files(cold: bool) {
    let (_t, work) = scratch();
    let work_dir = format!("--work-dir={}", s(&work));
    let mut flags = vec![work_dir.as_str()];
    if cold {
        flags.push("--cold");
    }
    let server = Server::start(&flags);
    let busy = "import os\ni = 0\nwhile True:\n    try:\n        os.makedirs(f's{i}/a/b'); open(f's{i}/a/b/f', 'w').write('x')\n    except Exception:\n        pass\n    i += 1";
    hang_up(&server, "/v1/run", &json!({"code": busy, "timeout": "30s"}));
    // Until the run has made some of its files.
    let deadline = Instant::now() + Duration::from_secs(20);
    fn files(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => files(&e.path()),
                Ok(_) => 1,
                Err(_) => 0,
            })
            .sum()
    }
    while files(&work) < 50 {
        assert!(Instant::now() < deadline, "no files made (cold: {cold})");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.terminate());
    until_empty(&work, || {
        let names: Vec<_> = tree(&work).into_iter().map(|(n, _)| n).collect();
        format!("cold: {cold}: {names:?}")
    });
}

/// A warm worker's runs write their program, policy, input and audit log
/// over the worker's own files: one run after another makes nothing but
/// its scratch directory. The program sees its own script there and
/// nothing else; a run hears nothing of the last one's input or denials.
#[test]
fn runs_in_a_worker_reuse_its_files_and_see_none_of_the_last_run() {
    let (_t, work) = scratch();
    let server = Server::start(&[&format!("--work-dir={}", s(&work))]);
    let code = "import os, sys\nprint(__file__)\nprint(os.getcwd())\nprint(sorted(os.listdir(os.path.dirname(__file__))))\nprint(sorted(os.listdir('.')))\nprint(repr(sys.stdin.read()))\nopen('made.txt', 'w').write('x')";
    let first = server.run(json!({
        "code": format!("{code}\ntry:\n    open('/etc/hostname')\nexcept OSError:\n    pass"),
        "stdin": "first input",
        "files": {"given.txt": "y"},
    }));
    assert_eq!(first["exit_code"], 0, "{first}");
    assert_eq!(first["denials"].as_array().unwrap().len(), 1, "{first}");
    let runs = std::fs::read_dir(&work)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("runs");
    let entries = || {
        let mut v: Vec<String> = std::fs::read_dir(&runs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let after_first = entries();
    // Nothing of the first client's stays in the worker's files, and a
    // hard link another program of the user makes to them (as a sandbox
    // granted the work directory's parent could) shows no later job.
    let worker = runs.join(&after_first[0]);
    for name in ["main.py", "policy.toml", "stdin", "audit.jsonl"] {
        assert_eq!(std::fs::read(worker.join(name)).unwrap(), b"", "{name}");
        std::fs::hard_link(worker.join(name), work.join(format!("loot-{name}"))).unwrap();
    }
    let second = server.run(json!({"code": code, "stdin": "second secret"}));
    assert_eq!(second["exit_code"], 0, "{second}");
    for r in [&first, &second] {
        let out: Vec<&str> = r["stdout"].as_str().unwrap().lines().collect();
        let script = Path::new(out[0]);
        assert!(script.starts_with(&runs), "{r}");
        // The scratch directory holds only what the client gave and the
        // program made; the script's directory shows only the script.
        assert!(out[1].starts_with(s(&runs)), "{r}");
        assert_eq!(out[2], "['main.py']", "{r}");
        assert!(!Path::new(out[1]).exists(), "{r}");
    }
    let out1: Vec<&str> = first["stdout"].as_str().unwrap().lines().collect();
    let out2: Vec<&str> = second["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(out1[3], "['given.txt']", "{first}");
    assert_eq!(out1[4], "'first input'", "{first}");
    assert_eq!(out2[3], "[]", "{second}");
    assert_eq!(out2[4], "'second secret'", "{second}");
    for name in ["main.py", "policy.toml", "stdin", "audit.jsonl"] {
        let loot = work.join(format!("loot-{name}"));
        assert_eq!(std::fs::read(&loot).unwrap(), b"", "{name}");
        std::fs::remove_file(loot).unwrap();
    }
    assert_eq!(second["denials"], json!([]), "{second}");
    // A shorter input over a longer one (the files are emptied only when
    // they hold something): none of the last run's bytes follow it.
    let third =
        server.run(json!({"code": "import sys\nprint(repr(sys.stdin.read()))", "stdin": "z"}));
    assert_eq!(third["stdout"], "'z'\n", "{third}");
    assert_eq!(third["denials"], json!([]), "{third}");
    // The same worker, the same files: nothing new was made for the
    // later runs, and nothing of any run is left.
    assert_eq!(out1[0], out2[0]);
    assert_eq!(entries(), after_first);
    assert_eq!(after_first.len(), 1, "{after_first:?}");
    assert!(server.terminate());
    until_empty(&work, || format!("{:?}", tree(&work)));
}

/// A run (or a session) that leaves a tree deeper than any stack (a short
/// name renamed under the next, again and again) has it removed, and the
/// server goes on: removing it by recursion overflowed the server's stack.
#[test]
fn a_tree_deeper_than_the_servers_stack_is_removed_and_the_server_goes_on() {
    let (_t, work) = scratch();
    let server = Server::start(&[&format!("--work-dir={}", s(&work))]);
    let deep = "import os\nos.mkdir('c')\nfor i in range(25000):\n    os.mkdir('t'); os.rename('c', 't/c'); os.rename('t', 'c')\nprint(os.getcwd())";
    let r = server.run(json!({ "code": deep, "timeout": "60s" }));
    assert_eq!(r["exit_code"], 0, "{r}");
    let cwd = r["stdout"].as_str().unwrap().trim().to_string();
    assert!(cwd.starts_with(s(&work)), "{r}");
    let id = server.session(json!({}));
    let e = server.exec(&id, deep);
    assert_eq!(e["exit_code"], 0, "{e}");
    let session_dir = e["stdout"].as_str().unwrap().trim().to_string();
    let gone = server.raw("DELETE", &format!("/v1/sessions/{id}"), &[], b"");
    assert!(gone.status < 300, "{}", String::from_utf8_lossy(&gone.body));
    let after = server.run(json!({ "code": "print(1)" }));
    assert_eq!(after["stdout"], "1\n", "{after}");
    assert!(!Path::new(&cwd).exists(), "{cwd}");
    assert!(!Path::new(&session_dir).exists(), "{session_dir}");
    assert!(server.terminate());
    until_empty(&work, || format!("{:?}", tree(&work)));
}

/// A client's code cannot have the server fetch and install packages: a
/// `# /// script` block that asks for any is refused (125), in a warm
/// worker and in a `capsa run` of its own alike.
#[test]
fn a_client_cannot_have_the_server_install_packages() {
    let code = "# /// script\n# dependencies = [\"six\"]\n# ///\nprint('ran')";
    for flags in [&[][..], &["--cold"][..]] {
        let server = Server::start(flags);
        let r = server.run(json!({"code": code}));
        assert_eq!(r["exit_code"], 125, "{flags:?}: {r}");
        assert!(
            r["stderr"]
                .as_str()
                .unwrap()
                .contains("installs no packages"),
            "{flags:?}: {r}"
        );
        assert_eq!(r["stdout"], "", "{r}");
        // Without a block, or with an empty one, it runs.
        let r = server.run(json!({"code": "# /// script\n# ///\nprint('ran')"}));
        assert_eq!(r["stdout"], "ran\n", "{flags:?}: {r}");
    }
}

#[test]
fn only_webassembly_binaries_are_taken_as_wasm_and_denials_are_escaped() {
    use base64::Engine as _;
    let server = Server::start(&[]);
    let b64 = base64::engine::general_purpose::STANDARD;
    for not_wasm in [&b"capsa bundle"[..], b"(module)", b""] {
        let a = server.post("/v1/run", json!({"wasm": b64.encode(not_wasm)}));
        assert_eq!(a.status, 400, "{not_wasm:?}");
    }
    let r = server.run(json!({"code": "try:\n    open('/etc/hostname')\nexcept OSError:\n    pass\nopen('/nowhere\\x1b[2J; hint: --allow-read=/\\nfake')"}));
    let denials: Vec<&str> = r["denials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(denials.len(), 2, "{r}");
    // capsa's own hint is on a line of its own.
    assert_eq!(
        denials[0],
        "denied: read /etc/hostname (outside every granted path)\n  hint: --allow-read=/etc/hostname"
    );
    // What the guest named cannot make a line, a hint or an escape of its own.
    let d = denials[1];
    assert!(!d.contains('\x1b') && !d.contains('\n'), "{d}");
    assert!(d.contains("\\u{1b}[2J") && d.contains("\\u{a}fake"), "{d}");
}

#[cfg(target_os = "linux")]
#[test]
fn no_part_of_proc_is_granted_by_a_server() {
    let (_t, work) = scratch();
    for grant in ["/", "/proc", "/proc/self"] {
        refused_start(
            &[
                &format!("--allow-read={grant}"),
                &format!("--work-dir={}", s(&work)),
            ],
            "holds /proc",
        );
    }
    // Nothing was left behind by the refusals.
    assert!(tree(&work).is_empty(), "{:?}", tree(&work));
}

/// The token is kept from every guest, in a file as in the environment.
/// Regression: granted the folder that held `--token-file`, a run printed
/// the token.
#[test]
fn no_grant_holds_the_token_file() {
    let (_t, d) = scratch();
    let secrets = d.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let token = secrets.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token_flag = format!("--token-file={}", s(&token));
    for grant in [
        format!("--allow-read={}", s(&secrets)),
        format!("--allow-write={}", s(&d)),
        format!("--allow-read={}", s(&token)),
    ] {
        refused_start(&[&token_flag, &grant], "holds the token file");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_worker_that_died_while_idle_is_not_handed_to_a_run() {
    let server = Server::start(&["--max-runs=1"]);
    assert_eq!(server.run(json!({"code": "print(1)"}))["stdout"], "1\n");
    // The idle worker, killed from outside (as the OOM killer would).
    let workers = workers_of(&server);
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &workers[0].to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(200));
    let r = server.run(json!({"code": "print(2)"}));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "2\n", "{r}");
}

/// The server's warm workers, by process id.
#[cfg(target_os = "linux")]
fn workers_of(server: &Server) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            (ppid == server.child.id() && cmdline.windows(12).any(|w| w == b"serve-worker"))
                .then_some(pid)
        })
        .collect()
}

/// A warm worker keeps its guest thread and its time-limit thread from run
/// to run: a run after others still ends at its own time limit, and a run
/// that recursed deep through C leaves no more than 1 MiB of that thread's
/// stack resident in the worker.
#[cfg(target_os = "linux")]
#[test]
fn a_worker_keeps_its_threads_but_not_a_deep_stack_nor_a_past_deadline() {
    let server = Server::start(&["--max-runs=1", "--timeout=20s"]);
    for i in 0..3 {
        let r = server.run(json!({"code": format!("print({i})")}));
        assert_eq!(r["stdout"], format!("{i}\n"), "{r}");
    }
    // Each call of an lru_cache'd function recurses through C: CPython
    // stops it with RecursionError once its stack check fires, about 3 MiB
    // of the host thread's stack deep.
    let r = server.run(json!({"code": "import functools, sys\n\
        sys.setrecursionlimit(1000000)\n\
        @functools.lru_cache(None)\n\
        def f(n): return n and f(n - 1) + 1\n\
        print(f(100000))"}));
    assert_eq!(r["exit_code"], 1, "{r}");
    assert!(
        r["stderr"].as_str().unwrap().contains("RecursionError"),
        "{r}"
    );
    // The worker answers as soon as a run's outcome is known and gives the
    // stack back after that, before it starts its next run: one more run
    // (which uses little stack) makes sure the release is done.
    let r = server.run(json!({"code": "print('next')"}));
    assert_eq!(r["stdout"], "next\n", "{r}");
    let workers = workers_of(&server);
    assert_eq!(workers.len(), 1, "{workers:?}");
    // The guest thread's stack: its 40 MiB mapping (GUEST_STACK and room
    // for host calls), the one anonymous mapping of that size (musl, in the
    // static build, puts the thread's TLS in it too: a page or a few more).
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", workers[0])).unwrap();
    let mut stacks = Vec::new();
    let mut size = None;
    for line in smaps.lines() {
        let head = line.split_whitespace().collect::<Vec<_>>();
        if head.len() >= 5 && head[0].contains('-') && head[1].len() == 4 {
            let (a, b) = head[0].split_once('-').unwrap();
            let len = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            let stack = (40 << 20..=(40 << 20) + (64 << 10)).contains(&len);
            size = (stack && head[1] == "rw-p" && head.len() == 5).then_some(len);
        } else if let (Some(_), Some(kb)) = (size, line.strip_prefix("Rss:")) {
            stacks.push(kb.trim().trim_end_matches(" kB").parse::<u64>().unwrap());
            size = None;
        }
    }
    assert_eq!(stacks.len(), 1, "{stacks:?}");
    assert!(stacks[0] <= 1100, "{} KiB of the stack kept", stacks[0]);
    // The same worker's next run ends at its own limit, not at one left
    // from the runs before; so does the next worker's first. The answer
    // carries the worker's last words on stderr, which came after its
    // stdout ended (once missing from about one answer in three), on a line
    // of their own but not after one a past run left unfinished.
    let r = server.run(json!({"code": "import sys\nsys.stderr.write('unfinished')"}));
    assert_eq!(r["stderr"], "unfinished", "{r}");
    for _ in 0..3 {
        let r = server.run(json!({"code": "print('looping')\nwhile True: pass", "timeout": "1s"}));
        assert_eq!(r["exit_code"], 124, "{r}");
        assert!(
            r["limit"]
                .as_str()
                .unwrap_or_default()
                .starts_with("time limit of 1s"),
            "{r}"
        );
        assert_eq!(r["stdout"], "looping\n", "{r}");
        assert!(
            r["stderr"]
                .as_str()
                .unwrap()
                .starts_with("capsa: time limit of 1s reached"),
            "{r}"
        );
    }
    let r = server.run(json!({"code": "print('after')"}));
    assert_eq!(r["stdout"], "after\n", "{r}");
}

/// A warm worker keeps its Python's memory from run to run and puts it
/// back as the snapshot made it: a run that changed the interpreter's state,
/// wrote over much of its memory and grew it leaves nothing the next run
/// can see, whether the memory was reset in place or made anew.
#[cfg(target_os = "linux")]
#[test]
fn a_worker_keeps_its_memory_but_no_run_sees_what_the_last_one_left() {
    let server = Server::start(&["--max-runs=1", "--timeout=20s", "--memory=512M"]);
    let look = "import sys, gc, json\n\
        print('/left' in sys.path, hasattr(json, 'left'), 'left' in globals())\n\
        print(len(sys.modules), len(gc.get_objects()))";
    // Small: a few of its pages are copied back. Large: it also fills the
    // heap with 60 MB and grows the memory by 64 MiB.
    let leaves = [
        "import sys, json\nsys.path.append('/left')\njson.left = left = 1\nprint('left')",
        "import sys, json\nsys.path.append('/left')\njson.left = left = 1\n\
         kept = [bytes([0xAA]) * 3000 for _ in range(20000)]\n\
         grown = bytearray(b'\\xAA') * (64 << 20)\nprint('left')",
    ];
    let first = server.run(json!({"code": look}));
    assert_eq!(first["exit_code"], 0, "{first}");
    let workers = workers_of(&server);
    assert_eq!(workers.len(), 1, "{workers:?}");
    for round in 0..2 {
        for leave in leaves {
            let r = server.run(json!({"code": leave}));
            assert_eq!(r["stdout"], "left\n", "{r}");
            let r = server.run(json!({"code": look}));
            assert_eq!(r["stdout"], first["stdout"], "round {round}: {r}");
            assert!(
                r["stdout"]
                    .as_str()
                    .unwrap()
                    .starts_with("False False False\n"),
                "{r}"
            );
        }
    }
    // All in the one worker.
    assert_eq!(workers_of(&server), workers);
}

/// Plain Python can read and write all of its linear memory (a code object
/// whose `LOAD_CONST` index points past its constants hands back a
/// `bytearray` over all of it). A run that writes a marker straight into
/// the snapshot's pages and into memory it grew, in a few pages (the reset
/// copies them back) or in thousands (the memory is made anew), leaves
/// nothing that the next run in the same worker finds by searching all of
/// its memory, grown as far as the last run's.
#[cfg(target_os = "linux")]
#[test]
fn a_run_that_searches_all_its_memory_finds_nothing_the_last_one_wrote() {
    let server = Server::start(&["--max-runs=1", "--timeout=30s", "--memory=512M"]);
    nothing_the_last_run_wrote_is_found(&server);
}

/// The runs of [`a_run_that_searches_all_its_memory_finds_nothing_the_last_one_wrote`]
/// on `server` (started with `--max-runs=1 --timeout=30s --memory=512M`).
#[cfg(target_os = "linux")]
pub fn nothing_the_last_run_wrote_is_found(server: &Server) {
    const MEMORY: &str = r#"import struct, dis, os, sys
def _memory():
    op = dis.opmap
    fake = struct.pack('<IIiiIIi', 0x50000000, id(bytearray), 0x7ffffff0, 0x7ffffff0, 0, 0, 0)
    keep = [fake]
    for _ in range(200):
        ptr = struct.pack('<II', id(fake) + 16, id(fake) + 16)
        keep.append(ptr)
        def g(): return None
        base = id(g.__code__.co_consts) + 12
        at = id(ptr) + 16
        if at > base and (at - base) % 4 == 0:
            i = (at - base) // 4
            g.__code__ = g.__code__.replace(co_code=bytes([op['RESUME'], 0,
                op['EXTENDED_ARG'], (i >> 24) & 255, op['EXTENDED_ARG'], (i >> 16) & 255,
                op['EXTENDED_ARG'], (i >> 8) & 255, op['LOAD_CONST'], i & 255, op['RETURN_VALUE'], 0]))
            keep.append(g)
            return g(), keep
    raise SystemExit('no layout')
MEM, KEEP = _memory()
# The marker, spelled so that no program's text holds it.
needle = bytes(c ^ 0x33 for c in b'prc`r\x1e\x7fvrx\x1e~r')
"#;
    // The marker goes straight into the snapshot's pages, from just below
    // its top (18 MiB) down: into whatever lies there, so the run must
    // neither allocate nor look at anything else once it has written.
    let write = |pages: usize| {
        format!(
            "{MEMORY}
grown = bytearray(needle) * (8 << 20)


def write(pages, mem=MEM, needle=needle, out=os.write, exit=__import__('posix')._exit):
    # The marker goes at one offset of each of `pages` pages of the
    # snapshot below its top, by one C loop per byte of it (an extended
    # slice), written out so that nothing is allocated or iterated while
    # memory is being written, at an offset where no object those loops use
    # (this frame, its code, the memory's fake object, the slices, their
    # bounds, the bytearrays) has a byte. Then the run ends at once: what
    # it wrote may be anything else Python would use.
    def rd(a):
        return int.from_bytes(mem[a:a + 4], 'little')
    code = write.__code__
    frame = rd(id(sys._getframe()) + 12)
    fixed = [(frame, 1024), (id(code), sys.getsizeof(code)), (id(KEEP[0]), sys.getsizeof(KEEP[0]))]
    top, kept = 18 << 8, []
    low = top - pages + 1
    for attempt in range(64):
        at = (3000 + attempt * 1237) % 4080
        s = [slice(low * 4096 + at + k, top * 4096 + at + k + 1, 4096) for k in range(13)]
        v = [bytearray(needle[k:k + 1] * pages) for k in range(13)]
        kept.append((s, v))
        objects = fixed + [(id(s), 64), (id(v), 64), (rd(id(s) + 12), 52), (rd(id(v) + 12), 52)]
        objects += [(id(o), 32) for o in s + v] + [(id(o.start), 16) for o in s] + [(id(o.stop), 16) for o in s]
        # Does a marker land in one of them?
        if not any(a < p * 4096 + at + 13 and p * 4096 + at < a + n
                   for a, n in objects
                   for p in range(max(low, (a - at - 13) // 4096), min(top, (a + n - at) // 4096) + 1)):
            break
    else:
        raise SystemExit('no room')
    out(1, b'written %d\\n' % pages)
    mem[s[0]] = v[0]
    mem[s[1]] = v[1]
    mem[s[2]] = v[2]
    mem[s[3]] = v[3]
    mem[s[4]] = v[4]
    mem[s[5]] = v[5]
    mem[s[6]] = v[6]
    mem[s[7]] = v[7]
    mem[s[8]] = v[8]
    mem[s[9]] = v[9]
    mem[s[10]] = v[10]
    mem[s[11]] = v[11]
    mem[s[12]] = v[12]
    exit(0)


write({pages})"
        )
    };
    let search = format!(
        "{MEMORY}
open('f', 'wb').write(b'x')
r = os.read(os.open('f', os.O_RDONLY), 300_000_000)
top, own, hits, at = id(r) + 300_000_000, id(needle) + 16, [], 0
while (at := MEM.find(needle, at, top)) >= 0:
    hits.append(at)
    at += 1
print('own', own in hits, 'others', len([h for h in hits if h != own]))"
    );
    // A first run sees its own copies of the marker (building it leaves
    // one behind); a later run must see exactly as many.
    let first = server.run(json!({"code": search}));
    let seen = first["stdout"].as_str().unwrap();
    let others: usize = seen
        .strip_prefix("own True others ")
        .and_then(|n| n.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("{first}"));
    assert!(others <= 2, "{first}");
    let workers = workers_of(server);
    for pages in [200, 3000] {
        let r = server.run(json!({"code": write(pages)}));
        assert_eq!(r["stdout"], format!("written {pages}\n"), "{r}");
        let r = server.run(json!({"code": search}));
        assert_eq!(r["stdout"], first["stdout"], "after {pages} pages: {r}");
    }
    assert_eq!(workers_of(server), workers);
}

/// A grant that no run could mount is refused when the server starts, not
/// by every run after.
#[test]
fn grants_no_run_could_mount_are_refused_at_start() {
    let (_t, dir) = scratch();
    std::fs::write(dir.join("r.txt"), "r").unwrap();
    std::fs::create_dir(dir.join("a")).unwrap();
    std::fs::create_dir(dir.join("b")).unwrap();
    refused_start(
        &[&format!(
            "--allow-read={}::/data/other.txt",
            s(&dir.join("r.txt"))
        )],
        "keeps its name",
    );
    refused_start(
        &[
            &format!("--allow-read={}::/data", s(&dir.join("a"))),
            &format!("--allow-read={}::/data", s(&dir.join("b"))),
        ],
        "is already granted from",
    );
}

#[cfg(target_os = "linux")]
#[test]
fn python_path_is_held_to_the_same_checks_as_grants() {
    let (_t, work) = scratch();
    refused_start(
        &["--python-path=/proc", &format!("--work-dir={}", s(&work))],
        "holds /proc",
    );
    refused_start(
        &[
            &format!("--python-path={}", s(&work)),
            &format!("--work-dir={}", s(&work.join("inner"))),
        ],
        "holds the server's own files",
    );
}

#[test]
fn a_stream_nobody_reads_gives_its_run_back() {
    let server = Server::start(&["--max-runs=1", "--timeout=3s"]);
    // A streamed run whose client sends and never reads a byte.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let body = json!({"code": "while True: print('x' * 60000)"}).to_string();
    write!(
        s,
        "POST /v1/run HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // The only run slot comes back: the next run is answered in time.
    answered_within(&server, Duration::from_secs(15));
    drop(s);
}

#[test]
fn an_mcp_client_that_went_away_is_forgotten() {
    let server = Server::start(&["--session-idle=1s"]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let a = server.post("/mcp", init);
    assert_eq!(a.status, 200);
    let id = a
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .unwrap()
        .trim()
        .to_string();
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}).to_string();
    let call = |id: &str| {
        server.raw(
            "POST",
            "/mcp",
            &[("Content-Type", "application/json"), ("Mcp-Session-Id", id)],
            ping.as_bytes(),
        )
    };
    assert_eq!(call(&id).status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(call(&id).status, 404);
}

#[test]
fn bodies_being_run_do_not_hold_the_budget_for_reading_bodies() {
    let server = Server::start(&["--max-runs=16", "--timeout=20s"]);
    // Chunked bodies were counted as the largest body, for as long as
    // their runs lasted: eight of them held every other body out.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        let body = json!({"code": "import time\ntime.sleep(8)"}).to_string();
        write!(
            s,
            "POST /v1/run HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            server.addr,
            body.len()
        )
        .unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    answered_within(&server, Duration::from_secs(5));
    drop(held);
}

#[test]
fn a_relative_python_path_is_the_operators() {
    let (_t, dir) = scratch();
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(dir.join("lib/rel_serve_probe.py"), "X = 'from lib'\n").unwrap();
    let server = Server::start_in(&dir, &["--python-path=lib"], None);
    let r = server.run(json!({"code": "import rel_serve_probe\nprint(rel_serve_probe.X)"}));
    assert_eq!(r["stdout"], "from lib\n", "{r}");
}

/// A run of `print('through')` is answered, and within `limit`.
fn answered_within(server: &Server, limit: Duration) {
    let start = Instant::now();
    let r = server.run(json!({"code": "print('through')"}));
    assert_eq!(r["stdout"], "through\n", "{r}");
    assert!(start.elapsed() < limit, "{:?}", start.elapsed());
}

/// `capsa serve FLAGS` (on an ephemeral loopback port unless FLAGS say
/// where) refuses to start (125), saying `why`.
fn refused_start(flags: &[&str], why: &str) {
    let listen =
        (!flags.iter().any(|f| f.starts_with("--listen"))).then_some("--listen=127.0.0.1:0");
    let mut child = capsa()
        .arg("serve")
        .args(listen)
        .args(flags)
        .env_remove("CAPSA_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A server that started does not end by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let r: Run = child.wait_with_output().unwrap().into();
            panic!("{flags:?}: the server started: {}", r.stderr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 125, "{flags:?}: {}", r.stderr);
    assert!(r.stderr.contains(why), "{flags:?}: {}", r.stderr);
}

#[test]
fn links_a_session_makes_itself_lead_the_server_nowhere() {
    let (_t, ro) = scratch();
    std::fs::write(ro.join("shared.txt"), "read-only data").unwrap();
    let server = Server::start(&[&format!("--allow-read={}", s(&ro))]);
    let id = server.session(json!({}));
    // The guest tries to reach the read-only file through names in its
    // own scratch directory, then asks the client to write "there".
    let code = format!(
        "import os\nfor make in (os.link, os.symlink):\n    try:\n        make({src:?}, make.__name__)\n        print(make.__name__, 'made')\n    except OSError as e:\n        print(make.__name__, type(e).__name__)\ntry:\n    os.symlink('/etc/hostname', 'out')\nexcept OSError as e:\n    print('out', type(e).__name__)",
        src = s(&ro.join("shared.txt"))
    );
    let r = server.exec(&id, &code);
    assert!(!r["stdout"].as_str().unwrap().contains("made"), "{r}");
    for name in ["link", "symlink", "out"] {
        let put = server.raw(
            "PUT",
            &format!("/v1/sessions/{id}/files/{name}"),
            &[],
            b"overwritten",
        );
        assert_eq!(put.status, 204, "{name}");
        let got = server.raw("GET", &format!("/v1/sessions/{id}/files/{name}"), &[], b"");
        assert_eq!(got.body, b"overwritten", "{name}");
    }
    assert_eq!(
        tree(&ro),
        vec![("shared.txt".into(), b"read-only data".to_vec())]
    );
}

//! HTTP and HTTPS from sandboxed Python through wasi:http: TLS by the host,
//! every request decided by the grants. All against servers on loopback
//! (`tests/support/http_server.py`), HTTPS with a CA made here.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// A test CA and a server certificate it signed, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A certificate for the same names from a CA nobody trusts.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let issue = |name: &str| {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("capsa test CA {name}"));
            let ca = params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(params, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
            let write = |file: &str, text: String| {
                let p = dir.join(format!("{name}-{file}"));
                std::fs::write(&p, text).unwrap();
                p
            };
            (
                write("ca.pem", ca.pem()),
                write("cert.pem", leaf.pem()),
                write("key.pem", key.serialize_pem()),
            )
        };
        let (ca, cert, key) = issue("trusted");
        let (_, rogue_cert, rogue_key) = issue("rogue");
        Pki {
            ca,
            cert,
            key,
            rogue_cert,
            rogue_key,
        }
    })
}

/// The `requests` package and its dependencies, from PyPI.
fn requests_dir() -> PathBuf {
    pip_target(
        "py-requests",
        &[
            "requests==2.34.2",
            "urllib3==2.8.0",
            "idna==3.20",
            "certifi==2026.10.18",
            "charset-normalizer==3.5.2",
        ],
    )
}

/// A loopback server that logs every request it gets.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

enum Tls {
    None,
    Trusted,
    Rogue,
}

impl Server {
    fn start(tls: Tls) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/http_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(&log);
        match tls {
            Tls::None => {}
            Tls::Trusted => {
                cmd.arg(&pki().cert).arg(&pki().key);
            }
            Tls::Rogue => {
                cmd.arg(&pki().rogue_cert).arg(&pki().rogue_key);
            }
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs the test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the test server did not start: {line:?}")
        });
        Server {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Every request the server got, as logged.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn paths(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ca_flag() -> String {
    format!("--ca-cert={}", s(&pki().ca))
}

fn grant(port: u16) -> String {
    format!("--allow-net=localhost:{port}")
}

/// Runs `code` with requests on `--python-path`, the test CA trusted, and
/// `port` granted on localhost, plus `extra` flags.
fn with_requests(port: u16, extra: &[&str], code: &str, args: &[&str]) -> Run {
    let (_g, d) = scratch();
    let mut flags = vec![
        grant(port),
        // Trusting the test CA does not make any other CA trusted.
        ca_flag(),
        format!("--python-path={}", s(&requests_dir())),
    ];
    flags.extend(extra.iter().map(|f| f.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    py_script(&d, &flags, "t.py", code, args)
}

const URLLIB: &str = r#"
import json, sys, urllib.request
base = sys.argv[1]
with urllib.request.urlopen(base + "/hello", timeout=10) as r:
    print("get", r.status, r.read().decode().strip())
req = urllib.request.Request(base + "/echo", data=b"a=1&b=2", method="POST")
with urllib.request.urlopen(req, timeout=10) as r:
    print("post", json.loads(r.read())["body"])
with urllib.request.urlopen(base + "/redirect?to=/json", timeout=10) as r:
    print("redirect", r.status, r.url.endswith("/json"), json.loads(r.read())["n"])
with urllib.request.urlopen(base + "/stream?n=4", timeout=10) as r:
    print("stream", [line.decode().strip() for line in r])
try:
    urllib.request.urlopen(base + "/status/404", timeout=10)
except urllib.error.HTTPError as e:
    print("status", e.code)
"#;

#[test]
fn urllib_https_get_post_redirect_stream() {
    let server = Server::start(Tls::Trusted);
    let (_g, d) = scratch();
    let base = format!("https://localhost:{}", server.port);
    let r = py_script(
        &d,
        &[&grant(server.port), &ca_flag()],
        "u.py",
        URLLIB,
        &[&base],
    );
    assert_eq!(
        r.stdout,
        "get 200 hello over http\n\
         post a=1&b=2\n\
         redirect 200 True 42\n\
         stream ['part 0', 'part 1', 'part 2', 'part 3']\n\
         status 404\n",
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 0);
    assert!(!r.stderr.contains("denied"), "{}", r.stderr);
    assert_eq!(
        server.paths(),
        [
            "/hello",
            "/echo",
            "/redirect?to=/json",
            "/json",
            "/stream?n=4",
            "/status/404"
        ]
    );
}

#[test]
fn plain_http_goes_the_same_way() {
    let server = Server::start(Tls::None);
    let (_g, d) = scratch();
    let base = format!("http://127.0.0.1:{}", server.port);
    let flag = format!("--allow-net=127.0.0.1:{}", server.port);
    let r = py_script(&d, &[&flag], "u.py", URLLIB, &[&base]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("get 200 hello over http\n"),
        "{}",
        r.stdout
    );
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn http_client_chunked_upload_and_streamed_read() {
    let server = Server::start(Tls::Trusted);
    let (_g, d) = scratch();
    let code = r#"
import http.client, json, sys
c = http.client.HTTPSConnection("localhost", int(sys.argv[1]), timeout=10)
def parts():
    for i in range(3):
        yield b"piece%d," % i
c.request("POST", "/echo", body=parts(), encode_chunked=True,
          headers={"content-type": "text/plain"})
r = c.getresponse()
print(json.loads(r.read()))
c.request("GET", "/stream?n=3")
r = c.getresponse()
print(r.getheader("transfer-encoding"), [r.read(7), r.read()])
c.request("HEAD", "/hello")
r = c.getresponse()
print(r.status, r.getheader("content-length"), r.read())
c.close()
"#;
    let port = server.port.to_string();
    let r = py_script(
        &d,
        &[&grant(server.port), &ca_flag()],
        "c.py",
        code,
        &[&port],
    );
    assert_eq!(
        r.stdout,
        "{'method': 'POST', 'body': 'piece0,piece1,piece2,', 'chunked': True, 'content_type': 'text/plain'}\n\
         chunked [b'part 0\\n', b'part 1\\npart 2\\n']\n\
         200 16 b''\n",
        "{}",
        r.stderr
    );
    let reqs = server.requests();
    assert_eq!(reqs[0]["chunked"], true, "{reqs:?}");
}

const REQUESTS: &str = r#"
import requests, sys
base = sys.argv[1]
s = requests.Session()
r = s.get(base + "/json", timeout=10)
print("get", r.status_code, r.json())
r = s.post(base + "/echo", json={"x": [1, 2]}, timeout=10)
print("json", r.json()["body"], r.json()["content_type"])
r = s.post(base + "/echo", data=(b"c%d" % i for i in range(3)), timeout=10)
print("chunked", r.json()["body"], r.json()["chunked"])
r = s.get(base + "/redirect?to=/hello", timeout=10)
print("redirect", r.status_code, [h.status_code for h in r.history], r.text.strip())
with s.get(base + "/stream?n=3", stream=True, timeout=10) as r:
    print("stream", [l for l in r.iter_lines()])
s.get(base + "/cookie/set", timeout=10)
print("cookie", s.get(base + "/cookie/get", timeout=10).text)
r = s.get(base + "/gzip", timeout=10)
print("gzip", r.headers["content-encoding"], r.json())
print("status", s.get(base + "/status/503", timeout=10).status_code)
"#;

#[test]
fn requests_https_session() {
    let server = Server::start(Tls::Trusted);
    let base = format!("https://localhost:{}", server.port);
    let r = with_requests(server.port, &[], REQUESTS, &[&base]);
    assert_eq!(
        r.stdout,
        "get 200 {'ok': True, 'n': 42}\n\
         json {\"x\": [1, 2]} application/json\n\
         chunked c0c1c2 True\n\
         redirect 200 [302] hello over http\n\
         stream [b'part 0', b'part 1', b'part 2']\n\
         cookie flavour=oat\n\
         gzip gzip {'zipped': True}\n\
         status 503\n",
        "{}",
        r.stderr
    );
    // Not a single denial but requests looking for ~/.netrc (a user's
    // credentials: with HOME unset it looks for the literal name), not even
    // urllib3's IPv6 probe at import; and no hint for a `~` name.
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.contains("stat ~/.netrc") && !l.contains("stat ~/_netrc"))
        .collect();
    assert!(lines.is_empty(), "{}", r.stderr);
    // Keep-alive: the host reused one connection for the whole session.
    let reqs = server.requests();
    let mut ports: Vec<u64> = reqs
        .iter()
        .map(|r| r["client_port"].as_u64().unwrap())
        .collect();
    ports.dedup();
    assert_eq!(ports.len(), 1, "{reqs:?}");
    let gzip = &reqs[8];
    assert!(
        gzip["headers"]["accept-encoding"]
            .as_str()
            .unwrap()
            .contains("gzip"),
        "{gzip}"
    );
}

const SEQUENTIAL: &str = r#"
import sys, urllib.request
base = sys.argv[1]
for i in range(300):
    path = "/stream?n=1" if i % 10 == 0 else "/hello"
    with urllib.request.urlopen(base + path, timeout=10) as r:
        r.read()
print("done")
"#;

/// Each request goes out as soon as the last response was read, and the
/// host's pool hands it the same connection even when the connection's own
/// task has not yet run since that response ended: here the machine is kept
/// busy on every core, which made every such run open a second connection.
#[test]
fn back_to_back_requests_keep_one_connection_on_a_busy_machine() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = Server::start(Tls::None);
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let (_g, d) = scratch();
    let base = format!("http://localhost:{}", server.port);
    let r = py_script(&d, &[&grant(server.port)], "seq.py", SEQUENTIAL, &[&base]);
    stop.store(true, Ordering::Relaxed);
    for t in spinners {
        t.join().unwrap();
    }
    assert_eq!((r.code, r.stdout.as_str()), (0, "done\n"), "{}", r.stderr);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 300);
    let mut ports: Vec<u64> = reqs
        .iter()
        .map(|r| r["client_port"].as_u64().unwrap())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 1, "connections used: {ports:?}");
}

const TRY_ALL: &str = r#"
import sys, urllib.request
for url in sys.argv[1:]:
    try:
        urllib.request.urlopen(url, timeout=10)
        print("fetched", url)
    except urllib.error.URLError as e:
        print("URLError", type(e.reason).__name__)
"#;

#[test]
fn ungranted_host_or_port_reaches_no_server() {
    let granted = Server::start(Tls::Trusted);
    let other = Server::start(Tls::Trusted);
    let (_g, d) = scratch();
    let audit = d.join("audit.jsonl");
    let r = py_script(
        &d,
        &[
            &grant(granted.port),
            &ca_flag(),
            &format!("--audit={}", s(&audit)),
        ],
        "t.py",
        TRY_ALL,
        &[
            // Another port on the granted host.
            &format!("https://localhost:{}/hello", other.port),
            // The same server by another name.
            &format!("https://127.0.0.1:{}/hello", granted.port),
            &format!("http://localhost:{}/hello", other.port),
            &format!("https://localhost:{}/hello", granted.port),
        ],
    );
    assert_eq!(
        r.stdout,
        format!(
            "URLError PermissionError\n\
             URLError PermissionError\n\
             URLError PermissionError\n\
             fetched https://localhost:{}/hello\n",
            granted.port
        ),
        "{}",
        r.stderr
    );
    assert!(other.requests().is_empty(), "{:?}", other.requests());
    assert_eq!(granted.paths(), ["/hello"]);
    let hint = format!("hint: --allow-net=localhost:{}\n", other.port);
    assert!(r.stderr.contains(&hint), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "capsa: denied: GET https://127.0.0.1:{}/hello (127.0.0.1:{} is a loopback address and is not granted)",
            granted.port, granted.port
        )),
        "{}",
        r.stderr
    );
    // Every request is in the audit, allowed or not.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["op"] == "GET")
        .collect();
    let decisions: Vec<&str> = lines
        .iter()
        .map(|v| v["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["deny", "deny", "deny", "allow"], "{lines:?}");
}

#[test]
fn no_grant_refuses_every_request() {
    let server = Server::start(Tls::None);
    let (_g, d) = scratch();
    let r = py_script(
        &d,
        &[],
        "t.py",
        TRY_ALL,
        &[&format!("http://127.0.0.1:{}/hello", server.port)],
    );
    assert_eq!(r.stdout, "URLError PermissionError\n", "{}", r.stderr);
    assert!(server.requests().is_empty());
}

#[test]
fn untrusted_certificate_is_refused() {
    let server = Server::start(Tls::Rogue);
    let code = r#"
import sys, urllib.request, requests
url = sys.argv[1]
try:
    urllib.request.urlopen(url, timeout=10)
except urllib.error.URLError as e:
    print("urllib", "CERTIFICATE_VERIFY_FAILED" in str(e))
try:
    requests.get(url, timeout=10)
except requests.exceptions.SSLError as e:
    print("requests SSLError", "CERTIFICATE_VERIFY_FAILED" in str(e))
try:
    requests.get(url, timeout=10, verify=False)
except requests.exceptions.SSLError as e:
    print("verify=False still verified")
"#;
    let r = with_requests(
        server.port,
        &[],
        code,
        &[&format!("https://localhost:{}/hello", server.port)],
    );
    assert_eq!(
        r.stdout, "urllib True\nrequests SSLError True\nverify=False still verified\n",
        "{}",
        r.stderr
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert!(
        r.stderr.contains("is not trusted: UnknownIssuer") && r.stderr.contains("--ca-cert=FILE"),
        "{}",
        r.stderr
    );
}

#[test]
fn redirect_to_an_ungranted_server_is_refused_at_the_hop() {
    let first = Server::start(Tls::Trusted);
    let second = Server::start(Tls::Trusted);
    let code = r#"
import sys, urllib.request, requests
url = sys.argv[1]
try:
    urllib.request.urlopen(url, timeout=10)
except urllib.error.URLError as e:
    print("urllib", type(e.reason).__name__)
try:
    requests.get(url, timeout=10)
except requests.exceptions.ConnectionError as e:
    print("requests ConnectionError")
"#;
    let target = format!("https://localhost:{}/hello", second.port);
    let r = with_requests(
        first.port,
        &[],
        code,
        &[&format!(
            "https://localhost:{}/redirect?to={target}",
            first.port
        )],
    );
    assert_eq!(
        r.stdout, "urllib PermissionError\nrequests ConnectionError\n",
        "{}",
        r.stderr
    );
    assert_eq!(first.requests().len(), 2);
    assert!(second.requests().is_empty(), "{:?}", second.requests());
    assert!(
        r.stderr
            .contains(&format!("--allow-net=localhost:{}", second.port)),
        "{}",
        r.stderr
    );
}

/// The machine's own name, if it resolves to loopback only (as in
/// /etc/hosts on most machines, and on the machines CI runs on).
fn loopback_name() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_string();
    let addrs: Vec<_> = (name.as_str(), 80).to_socket_addrs().ok()?.collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())).then_some(name)
}

#[test]
fn granted_name_resolving_to_a_private_address_needs_the_address() {
    let Some(name) = loopback_name() else {
        eprintln!("skipped: this machine's name does not resolve to loopback only");
        return;
    };
    let server = Server::start(Tls::None);
    let (_g, d) = scratch();
    let url = format!("http://{name}:{}/hello", server.port);
    let by_name = format!("--allow-net={name}:{}", server.port);
    let refused = py_script(&d, &[&by_name], "t.py", TRY_ALL, &[&url]);
    assert_eq!(
        refused.stdout, "URLError PermissionError\n",
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("resolved to a loopback address, which is reached only when granted by IP"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains(&format!("hint: --allow-net=127.0.0.1:{}", server.port)),
        "{}",
        refused.stderr
    );
    assert!(server.requests().is_empty());

    let with_ip = format!("--allow-net=127.0.0.1:{}", server.port);
    let ok = py_script(&d, &[&by_name, &with_ip], "t.py", TRY_ALL, &[&url]);
    assert_eq!(ok.stdout, format!("fetched {url}\n"), "{}", ok.stderr);
    assert_eq!(server.paths(), ["/hello"]);
}

#[test]
fn a_stalled_server_hits_the_timeout() {
    let server = Server::start(Tls::Trusted);
    let code = r#"
import socket, sys, urllib.request, requests
url = sys.argv[1]
try:
    urllib.request.urlopen(url, timeout=1)
except TimeoutError as e:
    print("urllib", type(e).__name__, isinstance(e, socket.timeout))
try:
    requests.get(url, timeout=1)
except requests.exceptions.ReadTimeout as e:
    print("requests ReadTimeout")
"#;
    let r = with_requests(
        server.port,
        &["--timeout=60s"],
        code,
        &[&format!("https://localhost:{}/stall", server.port)],
    );
    assert_eq!(
        r.stdout, "urllib TimeoutError True\nrequests ReadTimeout\n",
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 0);
}

#[test]
fn bad_ca_cert_files_are_usage_errors() {
    let (_g, d) = scratch();
    std::fs::write(d.join("not.pem"), "hello\n").unwrap();
    // Read, these would block the run before it starts, or never end.
    let fifo = std::process::Command::new("mkfifo")
        .arg(d.join("fifo.pem"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::fs::create_dir(d.join("dir.pem")).unwrap();
    for (file, want) in [
        ("missing.pem", "no such file"),
        ("not.pem", "no PEM certificate in the file"),
        ("fifo.pem", "not a regular file"),
        ("dir.pem", "not a regular file"),
    ] {
        let r = py_code(
            &d,
            &[&format!("--ca-cert={}", s(&d.join(file))), "--timeout=30s"],
            "pass",
        );
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(want), "{}", r.stderr);
    }
}

#[test]
fn a_rust_guest_uses_wasi_http_under_the_same_rules() {
    let server = Server::start(Tls::Trusted);
    let url = format!("https://localhost:{}/hello", server.port);
    let ok = run(
        &[&grant(server.port), &ca_flag()],
        &probe(P2),
        &["http", &url],
    );
    assert_eq!(ok.stdout, "ok: 200 hello over http\n", "{}", ok.stderr);
    let refused = run(&[&ca_flag()], &probe(P2), &["http", &url]);
    assert_eq!(
        refused.stdout, "err: Other: http error ErrorCode::HttpRequestDenied\n",
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains(&format!("hint: --allow-net=localhost:{}", server.port)),
        "{}",
        refused.stderr
    );
    assert_eq!(server.paths(), ["/hello"]);
}

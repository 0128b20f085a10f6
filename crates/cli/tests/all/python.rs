//! CPython 3.14 in the sandbox: real work with the standard library, the
//! escapes a script would try, limits, exit codes, and the runtime's cache.

use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;

/// The same deterministic work natively and in capsa must print the same.
#[test]
fn standard_library_matches_native_python() {
    let (_g, d) = scratch();
    let source = r#"
import json, re, datetime, zlib, decimal, hashlib, csv, io, unicodedata, statistics
from email.message import EmailMessage
from email import message_from_string
data = {"b": [1, 2.5, None, True], "a": "\u00e9t\u00e9"}
print(json.dumps(data, sort_keys=True), json.loads(json.dumps(data)) == data)
print(re.findall(r"(\w+)@(\w+)\.org", "ann@python.org, bob@wasi.org"))
d = datetime.date(2024, 2, 28) + datetime.timedelta(days=2)
print(d.isoformat(), d.strftime("%A %j"), datetime.datetime(2020, 1, 1, 12).timestamp())
blob = b"capsa " * 1000
z = zlib.compress(blob, 9)
print(len(z), zlib.decompress(z) == blob, zlib.crc32(blob))
decimal.getcontext().prec = 40
print(decimal.Decimal(1) / decimal.Decimal(7), decimal.Decimal("1.1") + decimal.Decimal("2.2"))
print(hashlib.sha256(b"abc").hexdigest(), hashlib.md5(b"abc").hexdigest())
out = io.StringIO()
w = csv.writer(out)
w.writerow(["name", "quote"]); w.writerow(["x", 'say "hi", then go'])
print(list(csv.reader(io.StringIO(out.getvalue()))))
print(unicodedata.name("\u00e9"), unicodedata.normalize("NFD", "\u00e9").encode())
m = EmailMessage(); m["Subject"] = "caf\u00e9"; m["To"] = "a@b.org"; m.set_content("body")
print(message_from_string(m.as_string())["To"], statistics.median([3, 1, 4, 1, 5]))
# Not imported while the snapshot was taken: read from the mounted library.
import xml.etree.ElementTree as ET, graphlib, colorsys
print(ET.fromstring("<a><b k='v'>t</b></a>").find("b").attrib)
print(list(graphlib.TopologicalSorter({"b": {"a"}, "c": {"b"}}).static_order()))
print(colorsys.rgb_to_hsv(0.2, 0.4, 0.4))
"#;
    std::fs::write(d.join("work.py"), source).unwrap();
    let native = std::process::Command::new("python3")
        .arg("work.py")
        .current_dir(&d)
        .output()
        .expect("python3 runs");
    assert!(
        native.status.success(),
        "{}",
        String::from_utf8_lossy(&native.stderr)
    );
    let r = run_in(&d, &[], &d.join("work.py"), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, String::from_utf8_lossy(&native.stdout));
    assert!(r.stdout.lines().count() >= 12);
}

#[test]
fn sqlite_database_persists_in_a_writable_grant() {
    let (_g, d) = scratch();
    std::fs::create_dir(d.join("db")).unwrap();
    let grant = format!("--allow-write={}", s(&d.join("db")));
    let first = py_code(
        &d,
        &[&grant],
        "import sqlite3\n\
         c = sqlite3.connect('db/notes.sqlite')\n\
         c.execute('create table t (id integer primary key, v text)')\n\
         c.executemany('insert into t (v) values (?)', [('one',), ('two',)])\n\
         c.commit(); c.close(); print('written')",
    );
    assert_eq!(first.stdout, "written\n", "{}", first.stderr);
    assert!(std::fs::metadata(d.join("db/notes.sqlite")).unwrap().len() > 0);
    let second = py_code(
        &d,
        &[&grant],
        "import sqlite3\n\
         c = sqlite3.connect('db/notes.sqlite')\n\
         print(c.execute('select group_concat(v) from t order by id').fetchone()[0])",
    );
    assert_eq!(second.stdout, "one,two\n", "{}", second.stderr);
}

#[test]
fn asyncio_client_and_server_over_loopback() {
    let (_g, d) = scratch();
    let code = r#"
import asyncio
async def handle(reader, writer):
    line = await reader.readline()
    writer.write(line.upper()); await writer.drain(); writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"echo me\n"); await writer.drain()
    print((await reader.readline()).decode().strip())
    writer.close(); server.close()
asyncio.run(main())
"#;
    let r = py_code(
        &d,
        &["--allow-listen=127.0.0.1:0", "--allow-net=127.0.0.1"],
        code,
    );
    assert_eq!(r.stdout, "ECHO ME\n", "{}", r.stderr);
    // Without grants, a server on a loopback port of its own still serves
    // the program itself (and only it: see the next test).
    let own = py_code(&d, &[], code);
    assert_eq!(own.stdout, "ECHO ME\n", "{}", own.stderr);
    assert_eq!(own.stderr, "");
    // A fixed port is a real server: it needs the grant.
    let fixed = py_code(
        &d,
        &[],
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 47011))",
    );
    assert_eq!(fixed.code, 1);
    assert!(
        fixed
            .stderr
            .contains("capsa: denied: bind to 127.0.0.1:47011"),
        "{}",
        fixed.stderr
    );
}

/// asyncio needs no grant: its event loop wakes itself through
/// `socket.socketpair()`, which CPython for WASI makes on loopback.
#[test]
fn asyncio_needs_no_grant() {
    let (_g, d) = scratch();
    let code = r#"
import asyncio, socket
async def worker(q, out):
    while True:
        item = await q.get()
        out.append(item * 2)
        q.task_done()
async def main():
    await asyncio.sleep(0.01)
    print(await asyncio.gather(*(asyncio.sleep(0.01, result=i) for i in range(3))))
    q, out = asyncio.Queue(), []
    w = asyncio.create_task(worker(q, out))
    for i in range(4):
        q.put_nowait(i)
    await q.join()
    w.cancel()
    print(out)
    async with asyncio.TaskGroup() as tg:
        a = tg.create_task(asyncio.sleep(0, result="a"))
        b = tg.create_task(asyncio.sleep(0, result="b"))
    print(a.result() + b.result())
    try:
        await asyncio.wait_for(asyncio.sleep(10), timeout=0.05)
    except TimeoutError:
        print("wait_for timed out")
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(10)
    except TimeoutError:
        print("timeout timed out")
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon_threadsafe(fut.set_result, "woken")
    print(await fut)
asyncio.run(main())
a, b = socket.socketpair()
a.sendall(b"ping"); print(b.recv(4).decode())
b.sendall(b"pong"); print(a.recv(4).decode())
"#;
    let r = py_code(&d, &[], code);
    assert_eq!(
        r.stdout,
        "[0, 1, 2]\n[0, 2, 4, 6]\nab\nwait_for timed out\ntimeout timed out\nwoken\nping\npong\n",
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr, "", "no denial, no hint");
    assert_eq!(r.code, 0);
}

/// What the program listens on without a grant takes only its own
/// connections: another process that connects is reset, unheard, also when
/// it connects from an address one of the program's sockets is bound to
/// (SO_REUSEADDR lets it share that address).
#[test]
fn a_private_listener_refuses_other_processes() {
    use std::process::Stdio;
    let (_g, d) = scratch();
    let code = r#"
import socket, sys
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
spare = socket.socket()                  # bound, never listening
spare.bind(("127.0.0.1", 0))
a, b = socket.socketpair()               # an established connection of its own
print(l.getsockname()[1], spare.getsockname()[1], b.getsockname()[1], flush=True)
sys.stdin.readline()                     # the host has tried to connect
l.setblocking(False)
try:
    c, peer = l.accept()
    print("accepted", peer, c.recv(16), flush=True)
except BlockingIOError:
    print("nothing accepted", flush=True)
"#;
    const ATTACKER: &str = r#"
import socket, sys
port, *sources = map(int, sys.argv[1:])
def send(src):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if src:
        s.bind(("127.0.0.1", src))
    s.connect(("127.0.0.1", port))
    s.sendall(b"from outside")
    return s
for src in [0] + sources:
    try:
        s = send(src)
        s.settimeout(1)
        print("answered", s.recv(16))
    except OSError as e:
        print("no answer", type(e).__name__)
    # Sent, and closed at once: nothing of it is left at that address.
    try:
        send(src).close()
    except OSError:
        pass
"#;
    python_ready();
    let mut child = capsa()
        .current_dir(&d)
        .args(["python", "-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut ports = String::new();
    out.read_line(&mut ports).unwrap();
    let ports: Vec<&str> = ports.split_whitespace().collect();
    assert_eq!(ports.len(), 3, "the guest prints its ports");
    let attack = std::process::Command::new("python3")
        .args(["-c", ATTACKER])
        .args(&ports)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&attack.stdout);
    assert!(!said.contains("answered b'"), "{said}");
    assert_eq!(
        said.matches("no answer").count() + said.matches("answered b''").count(),
        3,
        "{said}"
    );
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "nothing accepted\n");
    assert!(status.success());
}

/// asyncio accepts before its client has finished connecting: the
/// program's own connection is known by its address before then.
#[test]
fn a_private_listener_accepts_a_connection_still_being_made() {
    let (_g, d) = scratch();
    let code = r#"
import socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.socket(); c.setblocking(False)
try:
    c.connect(l.getsockname())
except BlockingIOError:
    pass
l.settimeout(5)
s, peer = l.accept()
print("accepted")
"#;
    let r = py_code(&d, &[], code);
    assert_eq!(r.stdout, "accepted\n", "{}", r.stderr);
    assert_eq!(r.stderr, "");
}

/// A private listener is the program's while it holds it: once closed, its
/// address needs a grant again (another process may take it). And the
/// program may hold only so many ungranted loopback sockets (each takes a
/// port of the machine's).
#[test]
fn private_sockets_are_bounded_and_end_with_their_listener() {
    let (_g, d) = scratch();
    let code = r#"
import socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
port = l.getsockname()[1]
l.close()
try:
    socket.create_connection(("127.0.0.1", port))
    print("connected")
except OSError as e:
    print("closed listener:", type(e).__name__)
held = []
try:
    for _ in range(300):
        s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s)
except OSError as e:
    print("held", len(held), type(e).__name__)
"#;
    let r = py_code(&d, &[], code);
    assert_eq!(
        r.stdout, "closed listener: PermissionError\nheld 256 PermissionError\n",
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("capsa: denied: connect to 127.0.0.1:"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("(the program holds 256 ungranted loopback sockets already)"),
        "{}",
        r.stderr
    );
}

/// A listen grant serves anyone, but connecting out still needs its own
/// grant, also to a port the program listens on as well (another process
/// may serve the same port on the other address family).
// Regression: the guest holds both ends of its private connections and
// need not read; the kernel grew each socket's buffers to megabytes, so
// 127 socket pairs kept 952 MiB of kernel memory under --memory=64M,
// outside every limit. Private sockets now have small, fixed buffers.
#[test]
fn private_sockets_hold_little_of_the_kernels_memory() {
    let (_g, d) = scratch();
    let code = "import socket\n\
                a, b = socket.socketpair()\n\
                a.setblocking(False)\n\
                a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 24)\n\
                sent = 0\n\
                try:\n\
                \x20   while sent < 64 << 20:\n\
                \x20       sent += a.send(b'x' * 65536)\n\
                except BlockingIOError:\n\
                \x20   pass\n\
                print(sent)\n\
                print(b.recv(10))\n";
    let r = py_in(&d, &[], &["-c", code], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut lines = r.stdout.lines();
    let sent: u64 = lines.next().unwrap().parse().unwrap();
    // The send buffer, the receive buffer and what is in flight between.
    assert!(sent > 0 && sent < 2 << 20, "{sent} bytes queued");
    assert_eq!(lines.next(), Some("b'xxxxxxxxxx'"));
}

#[test]
fn a_listen_grant_reaches_no_other_service() {
    let (_g, d) = scratch();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    service.set_nonblocking(true).unwrap();
    let code = format!(
        "import socket\n\
         l = socket.socket(socket.AF_INET6)\n\
         l.bind(('::', {port})); l.listen()\n\
         c = socket.socket()\n\
         c.connect(('127.0.0.1', {port}))\n\
         print(c.recv(16))"
    );
    let r = py_code(&d, &["--allow-listen=0"], &code);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr
            .contains(&format!("capsa: denied: connect to 127.0.0.1:{port}")),
        "{}",
        r.stderr
    );
    assert!(service.accept().is_err(), "the host's service was reached");
}

/// An asyncio client granted only its one outbound connection.
#[test]
fn asyncio_client_with_one_grant() {
    let (_g, d) = scratch();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            let _ = (&conn).write_all(line.to_uppercase().as_bytes());
        }
    });
    let code = format!(
        "import asyncio\n\
         async def main():\n    \
             r, w = await asyncio.open_connection('127.0.0.1', {port})\n    \
             w.write(b'shout\\n'); await w.drain()\n    \
             print((await r.readline()).decode().strip()); w.close()\n\
         asyncio.run(main())"
    );
    let r = py_code(&d, &[&format!("--allow-net=127.0.0.1:{port}")], &code);
    assert_eq!(r.stdout, "SHOUT\n", "{}", r.stderr);
    assert_eq!(r.stderr, "");
    // Without it, the one connection is refused with its line.
    let r = py_code(&d, &[], &code);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("capsa: denied: connect to 127.0.0.1:{port}")),
        "{}",
        r.stderr
    );
}

/// A one-shot HTTP server on loopback; returns its port and the requests it saw.
fn http_server(body: &'static str) -> (u16, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut reader = BufReader::new(&conn);
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let _ = tx.send(request.trim().to_string());
            let _ = (&conn).write_all(
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, rx)
}

#[test]
fn urllib_and_socket_against_a_loopback_http_server() {
    let (_g, d) = scratch();
    let (port, requests) = http_server("hello from the host");
    let code = format!(
        "import urllib.request, socket\n\
         print(urllib.request.urlopen('http://127.0.0.1:{port}/page').read().decode())\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'GET /raw HTTP/1.0\\r\\n\\r\\n')\n\
         print(s.recv(4096).split(b'\\r\\n')[0].decode())"
    );
    let r = py_code(&d, &[&format!("--allow-net=127.0.0.1:{port}")], &code);
    assert_eq!(
        r.stdout, "hello from the host\nHTTP/1.0 200 OK\n",
        "{}",
        r.stderr
    );
    assert_eq!(requests.recv().unwrap(), "GET /page HTTP/1.1");
    assert_eq!(requests.recv().unwrap(), "GET /raw HTTP/1.0");
}

#[test]
fn tempfile_in_a_granted_directory() {
    let (_g, d) = scratch();
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let r = py_code(
        &d,
        &[
            &format!("--allow-write={}", s(&tmp)),
            &format!("--env=TMPDIR={}", s(&tmp)),
        ],
        "import tempfile, os\n\
         print(tempfile.gettempdir())\n\
         with tempfile.NamedTemporaryFile('w+', delete=False, suffix='.txt') as f:\n \
         f.write('scratch'); f.seek(0); print(f.read())\n\
         print(os.path.dirname(f.name) == tempfile.gettempdir())",
    );
    assert_eq!(
        r.stdout,
        format!("{}\nscratch\nTrue\n", s(&tmp)),
        "{}",
        r.stderr
    );
    let files: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read_to_string(files[0].path()).unwrap(), "scratch");
}

/// tzdata from PyPI in a `--python-path` directory.
fn tzdata_dir() -> std::path::PathBuf {
    pip_target("py-tzdata", &["tzdata==2025.2"])
}

#[test]
fn zoneinfo_with_tzdata_on_python_path() {
    let (_g, d) = scratch();
    let pkgs = tzdata_dir();
    let code = "from zoneinfo import ZoneInfo\n\
                import datetime\n\
                t = datetime.datetime(2024, 7, 1, 12, tzinfo=ZoneInfo('Europe/Paris'))\n\
                print(t.utcoffset(), t.tzname())";
    let r = py_code(&d, &[&format!("--python-path={}", s(&pkgs))], code);
    assert_eq!(r.stdout, "2:00:00 CEST\n", "{}", r.stderr);
    // The packages directory is read-only.
    let w = py_code(
        &d,
        &[&format!("--python-path={}", s(&pkgs))],
        &format!("open('{}/evil.py', 'w')", s(&pkgs)),
    );
    assert_eq!(w.code, 1);
    assert!(w.stderr.contains("PermissionError"), "{}", w.stderr);
    assert!(!pkgs.join("evil.py").exists());
}

#[test]
fn escapes_fail_and_change_nothing() {
    let (_g, d) = scratch();
    std::fs::write(d.join(".env"), "SECRET=hunter2").unwrap();
    let before = tree(&d);
    let script = r#"
import os, socket, sys
def attempt(name, f):
    try:
        result = f()
        print(name, "ESCAPED", repr(result)[:60])
    except Exception as e:
        print(name, type(e).__name__)
attempt("passwd", lambda: open("/etc/passwd").read())
attempt("listdir-root", lambda: [n for n in os.listdir("/") if n not in ("python",)] or "empty")
attempt("neighbour", lambda: open(os.path.join(os.path.dirname(__file__), ".env")).read())
print("environ", len(os.environ))
print("listing", sorted(os.listdir(os.path.dirname(__file__))))
attempt("stdlib-write", lambda: open("/python/os.py", "a").write("pwned"))
attempt("stdlib-new", lambda: open("/python/evil.py", "w").write("pwned"))
attempt("socket", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
attempt("write-beside", lambda: open(os.path.join(os.path.dirname(__file__), "out.txt"), "w"))
attempt("lookup", lambda: socket.getaddrinfo("example.com", 443))
"#;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let r = py_script(&d, &[], "attack.py", script, &[&port.to_string()]);
    let before_with_script = {
        let mut b = before.clone();
        b.push(("attack.py".into(), script.as_bytes().to_vec()));
        b.sort();
        b
    };
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("ESCAPED"), "{}", r.stdout);
    for line in [
        "passwd FileNotFoundError",
        "listdir-root FileNotFoundError",
        // The script's folder is the working directory, which shows only
        // the script: a neighbour there is not found.
        "neighbour FileNotFoundError",
        "environ 0",
        "listing ['attack.py']",
        "stdlib-write PermissionError",
        "stdlib-new PermissionError",
        "socket PermissionError",
        "write-beside PermissionError",
        "lookup gaierror",
    ] {
        assert!(r.stdout.contains(line), "{line}: {}", r.stdout);
    }
    assert!(r.stderr.contains("capsa: denied:"), "{}", r.stderr);
    assert!(
        l.accept().is_err(),
        "the ungranted connection reached the server"
    );
    let mut after = tree(&d);
    after.sort();
    assert_eq!(after, before_with_script, "the host changed");
    let stdlib = capsa_stdlib();
    assert!(!stdlib.join("evil.py").exists());
    let mut os_py = String::new();
    std::fs::File::open(stdlib.join("os.py"))
        .unwrap()
        .read_to_string(&mut os_py)
        .unwrap();
    assert!(!os_py.contains("pwned"));
}

/// The guest's `/` (the guarded root) tells nothing of the host through
/// its descriptor: `fstat` of every descriptor the program starts with is
/// the same from run to run though the host makes directories in between
/// (a real directory's inode would count them), and the root's has no size
/// and no times; it is the same object only as itself.
#[test]
fn the_guarded_root_tells_nothing_through_its_descriptor() {
    let (_g, d) = scratch();
    let code = r#"
import os
# wasi-libc opens its preopens on the first use of a path.
root = os.stat("/")
seen = []
for fd in range(3, 32):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    seen.append((fd, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
print(seen)
print("root", root.st_size, root.st_mtime_ns)
"#;
    let first = py_code(&d, &[], code);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let root = first
        .stdout
        .lines()
        .next()
        .and_then(|l| l.split("), (").find(|e| e.contains(", 0, 0, 0")));
    assert!(
        root.is_some(),
        "no descriptor without size and times: {}",
        first.stdout
    );
    assert!(first.stdout.contains("root 0 0\n"), "{}", first.stdout);
    for base in [std::env::temp_dir(), "/dev/shm".into()] {
        for i in 0..3 {
            let _ = std::fs::create_dir(
                base.join(format!(".capsa-test-between-{}-{i}", std::process::id())),
            );
        }
    }
    let second = py_code(&d, &[], code);
    for base in [std::env::temp_dir(), "/dev/shm".into()] {
        for i in 0..3 {
            let _ = std::fs::remove_dir(
                base.join(format!(".capsa-test-between-{}-{i}", std::process::id())),
            );
        }
    }
    assert_eq!(first.stdout, second.stdout, "{}", second.stderr);
}

/// The standard library directory of the shared runtime.
fn capsa_stdlib() -> std::path::PathBuf {
    python_ready();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsa-cache/python");
    std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("lib/os.py").is_file())
        .expect("a runtime in the shared cache")
        .join("lib")
}

#[test]
fn environment_is_only_what_is_granted() {
    let (_g, d) = scratch();
    let code = "import os; print(sorted(os.environ.items()))";
    let r = py_code(&d, &[], code);
    assert_eq!(r.stdout, "[]\n", "{}", r.stderr);
    let r = capsa()
        .current_dir(&d)
        .env("CAPSA_TEST_VISIBLE", "yes")
        .env("CAPSA_TEST_HIDDEN", "no")
        .args([
            "python",
            "--allow-env=CAPSA_TEST_VISIBLE",
            "--env=MODE=test",
            "-c",
            code,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "[('CAPSA_TEST_VISIBLE', 'yes'), ('MODE', 'test')]\n"
    );
}

#[test]
fn limits_from_python() {
    let (_g, d) = scratch();
    let big = py_code(
        &d,
        &["--memory=256M"],
        "b = bytearray(8 * 2**30)\nprint('allocated')",
    );
    assert_ne!(big.code, 0);
    assert!(!big.stdout.contains("allocated"));
    assert!(
        big.stderr.contains("MemoryError") || big.stderr.contains("OverflowError"),
        "{}",
        big.stderr
    );

    let grow = py_code(
        &d,
        &["--memory=256M"],
        "chunks = []\nwhile True: chunks.append(bytearray(2**20))",
    );
    // Regression: CPython raised MemoryError and exited 1, and capsa said
    // nothing of the limit: the run that failed at its limit says so.
    assert_eq!(grow.code, 137, "{}", grow.stderr);
    assert!(
        grow.stderr
            .contains("capsa: memory limit of 256M reached; raise it with --memory=SIZE"),
        "{}",
        grow.stderr
    );
    // Output passing through the host is the program's own data, held in
    // its memory too: not counted twice. Regression: 60 MiB written at
    // once under --memory=128M ended with the memory limit.
    let big = py_code(
        &d,
        &["--memory=128M"],
        "import sys\nsys.stdout.buffer.write(b'x' * (60 << 20))",
    );
    assert_eq!(big.code, 0, "{}", big.stderr);
    assert_eq!(big.stdout.len(), 60 << 20);
    // Regression: one write of more than 128 MiB (wasmtime's default cap on
    // what one host call copies) crashed the run (134) with nothing written.
    let huge = py_code(
        &d,
        &[],
        "import os, sys\nn = os.write(1, b'x' * (200 << 20))\nprint(n, file=sys.stderr)",
    );
    assert_eq!(huge.code, 0, "{}", huge.stderr);
    assert_eq!(huge.stdout.len(), 200 << 20);
    assert_eq!(huge.stderr.trim(), (200 << 20).to_string());
    // A program that handles it goes on, and ends as it chooses.
    let caught = py_code(
        &d,
        &["--memory=256M"],
        "try:\n    b = bytearray(2**30)\nexcept MemoryError:\n    print('caught')",
    );
    assert_eq!(caught.code, 0, "{}", caught.stderr);
    assert_eq!(caught.stdout, "caught\n");

    let spin = py_code(&d, &["--timeout=1s"], "while True: pass");
    assert_eq!(spin.code, 124, "{}", spin.stderr);
    assert!(
        spin.stderr.contains("time limit of 1s reached"),
        "{}",
        spin.stderr
    );

    let flood = py_code(&d, &["--max-output=64K"], "while True: print('x' * 100)");
    assert_eq!(flood.code, 137, "{}", flood.stderr);
    assert!(flood.stdout.len() <= 64 * 1024);
    assert!(
        flood.stderr.contains("output limit of 64K reached"),
        "{}",
        flood.stderr
    );

    // os.pwrite far past a file's end counts the gap it leaves; within
    // the limit, and at the end, it is only the bytes.
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let grant = format!("--allow-write={}", s(&out));
    let code = "import os, sys\nfd = os.open('out/f', os.O_WRONLY | os.O_CREAT)\n\
        os.pwrite(fd, b'x', int(sys.argv[1]))\nprint('written')";
    let far = py_in(
        &d,
        &[&grant, "--max-write=1M"],
        &["-c", code, "1099511627776"],
        "",
    );
    assert_eq!(far.code, 137, "{}", far.stderr);
    assert!(
        far.stderr.contains("file write limit of 1M reached"),
        "{}",
        far.stderr
    );
    assert_eq!(std::fs::metadata(out.join("f")).unwrap().len(), 0);
    let near = py_in(&d, &[&grant, "--max-write=1M"], &["-c", code, "4096"], "");
    assert_eq!(near.stdout, "written\n", "{}", near.stderr);
    assert_eq!(std::fs::metadata(out.join("f")).unwrap().len(), 4097);

    // A hole the file had before the run counts a block for each byte
    // written into it a block apart.
    let sparse = out.join("sparse");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let fill = "import os\nfd = os.open('out/sparse', os.O_WRONLY)\n\
        for i in range(25600): os.pwrite(fd, b'x', i * 4096)\nprint('filled')";
    let r = py_code(&d, &[&grant, "--max-write=64K"], fill);
    assert_eq!(r.code, 137, "{}", r.stderr);
    use std::os::unix::fs::MetadataExt;
    let taken = std::fs::metadata(&sparse).unwrap().blocks() * 512;
    assert!(taken <= 128 << 10, "{taken} bytes taken");
}

#[test]
fn exit_codes_and_tracebacks() {
    let (_g, d) = scratch();
    let cases: &[(&str, i32)] = &[
        ("pass", 0),
        ("import sys; sys.exit(3)", 3),
        ("import sys; sys.exit(None)", 0),
        ("import sys; sys.exit(256 + 7)", 7),
        ("import os; print('flushed', end=''); os._exit(42)", 42),
        ("raise KeyboardInterrupt", 130),
        ("def f(): raise ValueError('bad value')\nf()", 1),
        ("import sys; sys.exit('fatal: message')", 1),
    ];
    for (code, want) in cases {
        let r = py_code(&d, &[], code);
        assert_eq!(r.code, *want, "{code}: {}", r.stderr);
        assert!(!r.stderr.contains("crashed"), "{code}: {}", r.stderr);
    }
    let r = py_code(&d, &[], "import os; print('flushed', end=''); os._exit(42)");
    assert_eq!(r.stdout, "flushed");
    let r = py_code(&d, &[], "def f(): raise ValueError('bad value')\nf()");
    assert!(
        r.stderr.starts_with("Traceback (most recent call last):\n"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("line 1, in f"), "{}", r.stderr);
    assert!(
        r.stderr.ends_with("ValueError: bad value\n"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("runpy") && !r.stderr.contains("app.py"),
        "{}",
        r.stderr
    );
    let r = py_code(&d, &[], "import sys; sys.exit('fatal: message')");
    assert_eq!(r.stderr, "fatal: message\n");

    let syntax = py_script(&d, &[], "broken.py", "print('unbalanced'\n", &[]);
    assert_eq!(syntax.code, 1);
    assert!(syntax.stderr.contains("SyntaxError"), "{}", syntax.stderr);
    assert!(syntax.stderr.contains("broken.py"), "{}", syntax.stderr);
    assert!(!syntax.stderr.contains("crashed"));
}

// Regression: a host call that failed (not a trap) was reported as
// "the program crashed: error while executing at wasm backtrace:" and no
// more: the cause came after the frames and was cut off.
#[test]
fn a_failed_host_call_says_why() {
    let (_g, d) = scratch();
    let code = "from wit_world.imports import http_types\n\
                http_types.Fields().append('x-h', b'A' * 500000)\n";
    let r = py_in(&d, &[], &["-c", code], "");
    assert_eq!(r.code, 134, "{}{}", r.stdout, r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("capsa: the program crashed: "))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(!line.contains("backtrace"), "{}", r.stderr);
    assert!(
        line.len() > "capsa: the program crashed: ".len() + 10,
        "{line}"
    );
    assert!(line.to_lowercase().contains("field"), "{line}");
}

// Regression: a traceback through capsa's own HTTP client looked for its
// source (`0/_capsa_http.py`, a folder of the snapshot's build) and printed
// two denial lines, with a hint, for a path the user never chose.
#[test]
fn a_traceback_through_capsas_own_modules_is_not_a_denial() {
    let (_g, d) = scratch();
    let code = "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')";
    let r = py_in(&d, &[], &["-c", code], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("URLError"), "{}", r.stderr);
    let denials: Vec<&str> = r.stderr.lines().filter(|l| l.contains("denied:")).collect();
    assert_eq!(denials.len(), 1, "{}", r.stderr);
    assert!(
        denials[0].contains("GET http://127.0.0.1:9/"),
        "{}",
        r.stderr
    );
}

#[test]
fn deep_recursion_raises_recursion_error() {
    let (_g, d) = scratch();
    let code = "import functools, sys\n\
                @functools.lru_cache(maxsize=None)\n\
                def f(n): return 0 if n == 0 else 1 + f(n - 1)\n\
                print(f(int(sys.argv[1])))";
    // Through C frames (lru_cache), as deep as native Python's limit allows.
    let r = py_in(&d, &[], &["-c", code, "900"], "");
    assert_eq!(r.stdout, "900\n", "{}", r.stderr);
    let r = py_in(&d, &[], &["-c", code, "100000"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("RecursionError"), "{}", r.stderr);
    let plain = "import sys\ndef g(n): return 0 if n == 0 else 1 + g(n - 1)\n\
                 sys.setrecursionlimit(20000); print(g(15000))";
    let r = py_code(&d, &[], plain);
    assert_eq!(r.stdout, "15000\n", "{}", r.stderr);
}

#[test]
fn command_line_like_python3() {
    let (_g, d) = scratch();
    let r = py_in(
        &d,
        &[],
        &["-c", "import sys; print(sys.argv)", "a", "-b"],
        "",
    );
    assert_eq!(r.stdout, "['-c', 'a', '-b']\n", "{}", r.stderr);
    let r = py_in(&d, &[], &["-", "x"], "import sys; print(sys.argv, 6 * 7)");
    assert_eq!(r.stdout, "['-', 'x'] 42\n", "{}", r.stderr);
    let r = py_in(&d, &[], &[], "print('from stdin')");
    assert_eq!(r.stdout, "from stdin\n", "{}", r.stderr);
    let r = py_in(&d, &[], &["-m", "json.tool"], "{\"b\": 1}");
    assert_eq!(r.stdout, "{\n    \"b\": 1\n}\n", "{}", r.stderr);
    // runpy's refusal names the command (python3 names its own path).
    let r = py_in(&d, &[], &["-m", "no_such_module"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr, "capsa python: No module named no_such_module\n");
    let r = py_in(&d, &[], &["-m", "email"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("capsa python: No module named email.__main__; 'email' is a package"),
        "{}",
        r.stderr
    );
    let r = py_in(&d, &[], &["-c", "import sys; sys.exit(': mine')"], "");
    assert_eq!((r.code, r.stderr.as_str()), (1, ": mine\n"));
    let r = py_in(&d, &[], &["-V"], "");
    assert!(r.stdout.starts_with("Python 3.14."), "{}", r.stdout);
    let r = py_in(&d, &[], &["-Z"], "");
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("unknown option -Z"), "{}", r.stderr);

    // A script sees its own argv, and the working directory is capsa's.
    std::fs::create_dir(d.join("out")).unwrap();
    let r = py_script(
        &d,
        &[&format!("--allow-write={}", s(&d.join("out")))],
        "args.py",
        "import sys, os\nprint(sys.argv)\nopen('out/result.txt', 'w').write('done')\nprint(__file__)",
        &["one", "two words"],
    );
    assert_eq!(
        r.stdout,
        format!(
            "['{}', 'one', 'two words']\n{}\n",
            s(&d.join("args.py")),
            s(&d.join("args.py"))
        ),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(d.join("out/result.txt")).unwrap(),
        "done"
    );

    let missing = run_in(&d, &[], &d.join("nope.py"), &[]);
    assert_eq!(missing.code, 126);
    assert!(
        missing.stderr.contains("cannot open the script"),
        "{}",
        missing.stderr
    );
}

#[test]
fn unsupported_modules_say_so() {
    let (_g, d) = scratch();
    for (code, want) in [
        ("import ssl", "ModuleNotFoundError"),
        ("import ctypes", "ModuleNotFoundError"),
        ("import subprocess; subprocess.run(['ls'])", "Error"),
        (
            "import threading; threading.Thread(target=print).start()",
            "RuntimeError",
        ),
    ] {
        let r = py_code(&d, &[], code);
        assert_eq!(r.code, 1, "{code}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{code}: {}", r.stderr);
        assert!(!r.stderr.contains("crashed"), "{code}: {}", r.stderr);
    }
}

/// The runtime's own cache: two first runs at once build it once; a
/// corrupt, partial or deleted entry is detected and rebuilt; the snapshot
/// (and its hash seed) is this cache's own.
#[test]
fn runtime_cache_races_corruption_and_deletion() {
    let (_c, cache) = scratch();
    let (_g, d) = scratch();
    let code = "print(hash('capsa'), 6 * 7)";
    let first_run = || {
        let (cache, d) = (cache.clone(), d.clone());
        std::thread::spawn(move || -> Run {
            capsa()
                .env("CAPSA_CACHE_DIR", &cache)
                .current_dir(&d)
                .args(["python", "-c", code])
                .output()
                .unwrap()
                .into()
        })
    };
    let (a, b) = (first_run(), first_run());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    for r in [&a, &b] {
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.ends_with(" 42\n"), "{}", r.stdout);
    }
    assert_eq!(a.stdout, b.stdout, "one snapshot serves both");
    let builds = [&a, &b]
        .iter()
        .filter(|r| r.stderr.contains("capsa: preparing Python"))
        .count();
    assert_eq!(builds, 1, "{}\n---\n{}", a.stderr, b.stderr);

    // Another cache (another machine) took another snapshot: another seed.
    let shared = py_code(&d, &[], code);
    assert_ne!(
        shared.stdout, a.stdout,
        "the hash seed is baked in per cache"
    );

    let runtime = std::fs::read_dir(cache.join("python"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("manifest.json").is_file())
        .expect("a runtime directory");
    let again = || py_code_with_cache(&cache, &d, code);
    let warm = again();
    assert_eq!(warm.stderr, "", "a warm run prints nothing of its own");
    assert_eq!(warm.stdout, a.stdout);

    // Each damage below is detected and the runtime rebuilt.
    let rebuilt = |what: &str| {
        let r = again();
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains("capsa: preparing Python"),
            "{what}: {}",
            r.stderr
        );
        assert!(r.stdout.ends_with(" 42\n"), "{what}: {}", r.stdout);
    };
    // The component corrupted in place (same length): caught by its digest.
    let wasm = runtime.join("python.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&wasm, &bytes).unwrap();
    rebuilt("corrupt component");
    // A partial entry: the manifest cut short; a library file missing.
    let manifest = runtime.join("manifest.json");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    rebuilt("truncated manifest");
    std::fs::remove_file(runtime.join("lib/os.py")).unwrap();
    rebuilt("missing library file");
    std::fs::remove_dir_all(cache.join("python")).unwrap();
    rebuilt("deleted cache");
    // Nothing left behind but the runtime and its lock.
    let names: Vec<String> = std::fs::read_dir(cache.join("python"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// With a terminal on stdin and no program, `capsa python` is the REPL.
#[test]
fn repl_on_a_terminal() {
    python_ready();
    let (_g, d) = scratch();
    let r = on_terminal(
        &d,
        &["python"],
        "x = 6 * 7\nprint('answer', x)\nimport sys; sys.exit(x - 37)\n",
        &[],
    );
    assert_eq!(r.code, 5, "{}", r.stdout);
    assert!(r.stdout.contains("Python 3.14"), "{}", r.stdout);
    assert!(r.stdout.contains(">>> "), "{}", r.stdout);
    assert!(r.stdout.contains("answer 42"), "{}", r.stdout);
}

// Regression: `/world` and `/bundled` stayed on sys.path from the snapshot,
// `-c` put "" (the guest's `/`) first, and a grant below the working
// directory at `python/json` appeared inside the standard library: each
// made a folder granted as data an import directory.
#[test]
fn granted_data_never_becomes_an_import_directory() {
    let (_g, d) = scratch();
    let evil = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("__init__.py"),
            "print('EVIL IMPORTED')\nloads = None\n",
        )
        .unwrap();
    };
    evil(&d.join("data/yaml"));
    evil(&d.join("python/json"));
    std::fs::create_dir_all(d.join("work")).unwrap();
    let flags = [
        format!("--allow-read={}::/world", s(&d.join("data"))),
        format!("--allow-read={}::/yaml", s(&d.join("data/yaml"))),
        format!("--allow-read={}", s(&d.join("python/json"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let code = "
try:
    import yaml
    print('yaml imported')
except ImportError:
    print('no yaml')
import json
print(json.dumps([1]))
";
    let r = py_in(&d, &flags, &["-c", code], "");
    assert!(!r.stdout.contains("EVIL"), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "no yaml\n[1]\n", "{}", r.stderr);
    let script = d.join("work/s.py");
    std::fs::write(&script, code).unwrap();
    let r = run_in(&d, &flags, &script, &[]);
    assert_eq!(r.stdout, "no yaml\n[1]\n", "{}", r.stderr);
}

// Regression: a grant mapped below `/python` (or `/capsa-pycache`, or
// into a --python-path directory from elsewhere) was accepted: one run
// wrote `/python/xmlrpc/__init__.py` into it, and the next, granted the
// same folder read-only, ran that code on `import xmlrpc`.
#[test]
fn a_grant_where_python_imports_from_is_refused() {
    let (_g, d) = scratch();
    let plant = d.join("g");
    std::fs::create_dir_all(&plant).unwrap();
    let pkgs = d.join("pkgs");
    std::fs::create_dir_all(pkgs.join("cache")).unwrap();
    std::fs::write(pkgs.join("good.py"), "print('good')\n").unwrap();
    let script = d.join("s.py");
    std::fs::write(
        &script,
        "import os\n\
         for p in ('/python/xmlrpc/__init__.py', '/capsa-pycache/x/__init__.py'):\n\
         \x20   try:\n\
         \x20       open(p, 'w').write(\"print('PLANTED')\")\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         import xmlrpc, good\n",
    )
    .unwrap();
    let g = s(&plant);
    let python_path = format!("--python-path={}", s(&pkgs));
    let own_mount = "choose another guest path";
    let cases = [
        (
            format!("--allow-write={g}::/python/xmlrpc"),
            "inside /python",
            own_mount,
        ),
        (
            format!("--allow-read={g}::/python/x/y"),
            "inside /python",
            own_mount,
        ),
        (
            format!("--allow-read={g}::/python"),
            "inside /python",
            own_mount,
        ),
        (
            format!("--allow-write={g}::/capsa-pycache/x"),
            "inside /capsa-pycache",
            own_mount,
        ),
        (
            format!("--allow-write={g}::{}/evil", s(&pkgs)),
            "inside --python-path=",
            "must be at its own path",
        ),
    ];
    for (flag, why, what) in &cases {
        let r = run_in(&d, &[flag, &python_path], &script, &[]);
        assert_refused(&r, &[why, what]);
        assert!(!r.stdout.contains("PLANTED"), "{flag}: {}", r.stdout);
        assert_eq!(
            std::fs::read_dir(&plant).unwrap().count(),
            0,
            "{flag} wrote into the grant"
        );
    }
    // The planted package, as a previous run would have left it, is never
    // imported in place of the standard library's.
    std::fs::write(plant.join("__init__.py"), "print('PLANTED')\n").unwrap();
    let r = run_in(
        &d,
        &[&format!("--allow-read={g}::/python/xmlrpc")],
        &script,
        &[],
    );
    assert_refused(&r, &["inside /python", "Python's standard library"]);
    assert!(!r.stdout.contains("PLANTED"), "{}", r.stdout);
    // The same for the script's folder and, for -c, the working directory
    // (both on sys.path). Regression: `scratch::$PWD/tools` let one run
    // leave a package there for the next to import.
    let tools = format!("--allow-write={g}::{}/tools", s(&d));
    let r = run_in(&d, &[&tools], &script, &[]);
    assert_refused(
        &r,
        &[&format!("inside {}", s(&d)), "must be at its own path"],
    );
    let r = py_in(&d, &["--allow-read=.", &tools], &["-c", "pass"], "");
    assert_refused(
        &r,
        &[&format!("inside {}", s(&d)), "must be at its own path"],
    );
    assert_eq!(std::fs::read_dir(&plant).unwrap().count(), 1);
    // A working directory not granted is not on sys.path: a grant mapped
    // below it is only data.
    let r = py_in(&d, &[&tools], &["-c", "pass"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A folder inside --python-path granted at its own path is the same
    // files as natively, and stays allowed.
    let own = format!("--allow-write={}", s(&pkgs.join("cache")));
    let r = run_in(&d, &[&own, &python_path], &script, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "good\n", "{}", r.stderr);
}

// Regression: without --python-path no pycache prefix was set, so CPython
// read `__pycache__` beside the script's modules: a run granted the
// script's folder wrote a `.pyc` matching `helper.py`'s time and size, and
// the next run, granted the folder read-only, ran it in its place.
#[test]
fn a_run_cannot_plant_bytecode_beside_the_script_for_the_next() {
    let (_g, d) = scratch();
    std::fs::write(d.join("helper.py"), "print('the real helper')\n").unwrap();
    let script = d.join("main.py");
    std::fs::write(
        &script,
        "import sys, os\n\
         if sys.argv[1:] == ['plant']:\n\
         \x20   import importlib._bootstrap_external as be\n\
         \x20   st = os.stat('helper.py')\n\
         \x20   code = compile(\"print('PLANTED')\", 'helper.py', 'exec')\n\
         \x20   os.makedirs('__pycache__', exist_ok=True)\n\
         \x20   data = be._code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size)\n\
         \x20   open('__pycache__/helper.' + sys.implementation.cache_tag + '.pyc', 'wb').write(data)\n\
         \x20   print('planted')\n\
         else:\n\
         \x20   import helper\n",
    )
    .unwrap();
    let r = run_in(&d, &["--allow-write=."], &script, &["plant"]);
    assert_eq!(r.stdout, "planted\n", "{}", r.stderr);
    // The planted file is there, as a native python3 would read it.
    assert!(d.join("__pycache__").read_dir().unwrap().count() == 1);
    for flags in [&["--allow-read=."][..], &["--allow-write=."]] {
        let r = run_in(&d, flags, &script, &[]);
        assert_eq!(r.stdout, "the real helper\n", "{flags:?}: {}", r.stderr);
    }
    let r = py_in(&d, &["--allow-read=."], &["-c", "import helper"], "");
    assert_eq!(r.stdout, "the real helper\n", "{}", r.stderr);
}

#[test]
fn large_writes_reach_stdout_whole() {
    let (_t, dir) = scratch();
    let r = py_code(
        &dir,
        &[],
        "import os, sys\n\
         print('x' * (1 << 20))\n\
         sys.stdout.flush()\n\
         n = os.write(1, b'y' * (3 << 20))\n\
         print(n, file=sys.stderr)",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.len(), (1 << 20) + 1 + (3 << 20));
    assert!(r.stdout.starts_with(&"x".repeat(1 << 20)));
    assert!(r.stdout.ends_with(&"y".repeat(3 << 20)));
    assert_eq!(r.stderr.trim(), (3 << 20).to_string());
}

/// The bytecode capsa keeps for `dir` (a `--python-path` directory).
fn bytecode_of(dir: &Path) -> Vec<std::path::PathBuf> {
    bytecode_named(dir, "capsa_bc_probe")
}

/// The bytecode capsa compiled for modules named `name`* from `dir`.
fn bytecode_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![cache_dir().join("pycache")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pyc")
                && p.to_string_lossy().contains(name)
                // Compiled from this test's own directory.
                && std::fs::read(&p)
                    .unwrap_or_default()
                    .windows(s(dir).len())
                    .any(|w| w == s(dir).as_bytes())
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn python_path_imports_use_bytecode_the_program_cannot_write_and_never_stale() {
    let (_t, dir) = scratch();
    let pkgs = dir.join("pkgs");
    std::fs::create_dir_all(pkgs.join("capsa_bc_probe")).unwrap();
    let module = pkgs.join("capsa_bc_probe/__init__.py");
    std::fs::write(&module, "VALUE = 'first'\n").unwrap();
    let flag = format!("--python-path={}", s(&pkgs));
    let code = "import capsa_bc_probe, sys\n\
                print(capsa_bc_probe.VALUE, capsa_bc_probe.__cached__.startswith(sys.pycache_prefix))";
    let r = py_code(&dir, &[&flag], code);
    assert_eq!(r.stdout, "first True\n", "{}", r.stderr);
    assert_eq!(r.stderr, "");
    let pycs = bytecode_of(&pkgs);
    assert_eq!(pycs.len(), 1, "{pycs:?}");
    let first = std::fs::read(&pycs[0]).unwrap();

    // The same size and the same modification time: the inode's change
    // time still tells capsa to compile again.
    let mtime = std::fs::metadata(&module).unwrap().modified().unwrap();
    std::fs::write(&module, "VALUE = 'other'\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&module)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let r = py_code(&dir, &[&flag], code);
    assert_eq!(r.stdout, "other True\n", "{}", r.stderr);
    // Bytecode of the old source where the new one's should be (a source
    // changed after it was compiled): CPython's hash check refuses it.
    let fresh = std::fs::read(&pycs[0]).unwrap();
    assert_ne!(first, fresh, "compiled again");
    std::fs::write(&pycs[0], &first).unwrap();
    let r = py_code(&dir, &[&flag], code);
    assert_eq!(r.stdout, "other True\n", "{}", r.stderr);
    std::fs::write(&pycs[0], &fresh).unwrap();
    let before: Vec<Vec<u8>> = pycs.iter().map(|p| std::fs::read(p).unwrap()).collect();

    // The program may read its bytecode, never write it.
    let attack = [
        "import capsa_bc_probe, os",
        "target = capsa_bc_probe.__cached__",
        "for f in (lambda: open(target, 'wb').write(b'planted'), lambda: os.remove(target),",
        "          lambda: os.rename(target, target + '.x')):",
        "    try:",
        "        f(); print('changed')",
        "    except OSError as e:",
        "        print(type(e).__name__)",
        "print(os.listdir('/capsa-pycache'))",
    ]
    .join("\n");
    let r = py_code(&dir, &[&flag], &attack);
    assert!(!r.stdout.contains("changed"), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.ends_with("[]\n"),
        "other directories' bytecode is not listed: {}{}",
        r.stdout,
        r.stderr
    );
    let after: Vec<Vec<u8>> = pycs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(before, after);
}

#[test]
fn bytecode_never_shows_a_file_denied_to_the_program() {
    let (_t, dir) = scratch();
    let pkgs = dir.join("pkgs");
    std::fs::create_dir_all(pkgs.join("lib")).unwrap();
    std::fs::write(
        pkgs.join("lib/secret_bc_probe.py"),
        "TOKEN = 'hunter2-bc'\n",
    )
    .unwrap();
    std::fs::write(pkgs.join("lib/open_bc_probe.py"), "X = 1\n").unwrap();
    let code = [
        "import os, sys, marshal",
        "import open_bc_probe",
        "base = sys.pycache_prefix + os.path.dirname(open_bc_probe.__file__)",
        "names = os.listdir(base)",
        "print(sorted(n.split('.')[0] for n in names))",
        "for n in names:",
        "    data = open(os.path.join(base, n), 'rb').read()",
        "    print(b'hunter2' in data)",
    ]
    .join("\n");
    let r = py_code(
        &dir,
        &[
            &format!("--python-path={}", s(&pkgs.join("lib"))),
            &format!("--deny-read={}", s(&pkgs.join("lib/secret_bc_probe.py"))),
        ],
        &code,
    );
    assert_eq!(r.stdout, "['open_bc_probe']\nFalse\n", "{}", r.stderr);
}

#[test]
fn a_package_too_costly_to_compile_holds_a_run_only_to_its_limit() {
    let (_t, dir) = scratch();
    let pkgs = dir.join("pkgs");
    std::fs::create_dir_all(&pkgs).unwrap();
    // CPython compiles each `finally` body twice: 2^depth.
    let mut src = String::from("def f():\n");
    for depth in 0..22 {
        let pad = "    ".repeat(depth + 1);
        src.push_str(&format!("{pad}try:\n"));
    }
    src.push_str(&format!("{}pass\n", "    ".repeat(23)));
    for depth in (0..22).rev() {
        let pad = "    ".repeat(depth + 1);
        src.push_str(&format!("{pad}finally:\n{pad}    x = {depth}\n"));
    }
    std::fs::write(pkgs.join("slow_bc_probe.py"), src).unwrap();
    let start = std::time::Instant::now();
    let r = py_code(
        &dir,
        &[&format!("--python-path={}", s(&pkgs)), "--timeout=3s"],
        "print('ran')",
    );
    assert_eq!(r.stdout, "ran\n", "{}", r.stderr);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    // The next run does not try again until a source changes.
    let start = std::time::Instant::now();
    let r = py_code(
        &dir,
        &[&format!("--python-path={}", s(&pkgs)), "--timeout=3s"],
        "print('again')",
    );
    assert_eq!(r.stdout, "again\n", "{}", r.stderr);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_denied_parent_of_a_python_path_directory_leaves_it_without_bytecode() {
    let (_t, dir) = scratch();
    let lib = dir.join("proj/lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("parent_bc_probe.py"), "TOKEN = 'hunter2-parent'\n").unwrap();
    let code = [
        "import os",
        "base = '/capsa-pycache' + os.environ.get('LIB', '')",
        "try:",
        "    print(sorted(os.listdir(base)))",
        "except OSError as e:",
        "    print(type(e).__name__)",
    ]
    .join("\n");
    let r = py_code(
        &dir,
        &[
            &format!("--python-path={}", s(&lib)),
            &format!("--deny-read={}", s(&dir.join("proj"))),
            "--env",
            &format!("LIB={}", s(&lib)),
        ],
        &code,
    );
    assert_eq!(r.stdout, "FileNotFoundError\n", "{}", r.stderr);
}

#[test]
fn bytecode_over_64_kib_is_written_and_used() {
    let (_t, dir) = scratch();
    let pkgs = dir.join("pkgs");
    std::fs::create_dir_all(&pkgs).unwrap();
    // A module whose bytecode is far over 64 KiB (WASI writes a file at
    // most 64 KiB per call; a short write must go on, not fail).
    let mut big = String::new();
    for i in 0..3000 {
        big.push_str(&format!(
            "def f{i}(x):\n    return x * {i} + len('{i:0>40}')\n"
        ));
    }
    big.push_str("VALUE = f2999(1)\n");
    std::fs::write(pkgs.join("capsa_big_probe.py"), &big).unwrap();
    let flag = format!("--python-path={}", s(&pkgs));
    let code = "import importlib._bootstrap_external as b, sys\n\
                compiled = []\n\
                real = b.SourceLoader.source_to_code\n\
                b.SourceLoader.source_to_code = lambda self, *a, **k: compiled.append(a[1]) or real(self, *a, **k)\n\
                import capsa_big_probe\n\
                print(capsa_big_probe.VALUE, compiled)";
    let r = py_code(&dir, &[&flag], code);
    assert_eq!(r.stdout, "3039 []\n", "{}", r.stderr);
    let pycs = bytecode_named(&pkgs, "capsa_big_probe");
    assert_eq!(pycs.len(), 1, "{pycs:?}");
    assert!(std::fs::metadata(&pycs[0]).unwrap().len() > 64 * 1024);
    // And py_compile in a program writes one whole into a granted folder.
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let code = format!(
        "import py_compile\nprint(py_compile.compile({src:?}, cfile={dst:?}, doraise=True) is not None)",
        src = s(&pkgs.join("capsa_big_probe.py")),
        dst = s(&out.join("big.pyc"))
    );
    let r = py_code(
        &dir,
        &[
            &format!("--allow-read={}", s(&pkgs)),
            &format!("--allow-write={}", s(&out)),
        ],
        &code,
    );
    assert_eq!(r.stdout, "True\n", "{}", r.stderr);
    assert!(std::fs::metadata(out.join("big.pyc")).unwrap().len() > 64 * 1024);
}

/// Reads and writes through file streams (`os.read`, `os.write`, buffered
/// files), which capsa does on the guest's own thread: whole large writes,
/// positions kept across seeks, appends, the end of a file, and a file
/// reopened read-only to read back exactly what was written.
#[test]
fn file_streams_read_and_write_as_natively() {
    let (_t, dir) = scratch();
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let code = "import os, sys\n\
         d = sys.argv[1]\n\
         fd = os.open(d + '/big.bin', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n\
         print(os.write(fd, bytes(range(256)) * (12 << 12)))\n\
         os.close(fd)\n\
         with open(d + '/t.txt', 'w') as f: f.write('one\\n')\n\
         with open(d + '/t.txt', 'a') as f: f.write('two\\n')\n\
         with open(d + '/t.txt', 'r+') as f:\n    f.seek(1); f.write('X'); f.seek(0); print(repr(f.read()))\n\
         fd = os.open(d + '/t.txt', os.O_RDONLY)\n\
         print(os.read(fd, 3), os.read(fd, 100), os.read(fd, 100))\n\
         os.lseek(fd, 4, 0); print(os.read(fd, 2))\n\
         os.close(fd)\n\
         data = open(d + '/big.bin', 'rb').read()\n\
         print(len(data), data == bytes(range(256)) * (12 << 12))";
    let script = dir.join("streams.py");
    std::fs::write(&script, code).unwrap();
    python_ready();
    let sandboxed = run(
        &[
            &format!("--allow-read={}", s(&dir)),
            &format!("--allow-write={}", s(&out)),
        ],
        &script,
        &[s(&out)],
    );
    let native: Run = std::process::Command::new("python3")
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap()
        .into();
    for r in [sandboxed, native] {
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            r.stdout, "12582912\n'oXe\\ntwo\\n'\nb'oXe' b'\\ntwo\\n' b''\nb'tw'\n12582912 True\n",
            "{}",
            r.stderr
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("t.txt")).unwrap(),
        "oXe\ntwo\n"
    );
}

/// In `dir`: `ro/` holding `a.txt` ("kept a"), granted read-only, and an
/// empty `rw/`, granted writable; with their grant flags.
fn read_only_and_writable(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, [String; 2]) {
    let ro = dir.join("ro");
    let rw = dir.join("rw");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("a.txt"), "kept a\n").unwrap();
    let grants = [
        format!("--allow-read={}", s(&ro)),
        format!("--allow-write={}", s(&rw)),
    ];
    (ro, rw, grants)
}

/// A write stream is only as writable as its descriptor: a file of a
/// read-only grant, and a file opened read-only inside a writable grant,
/// refuse `os.write` and stay as they were.
#[test]
fn file_streams_write_nothing_through_a_read_only_descriptor() {
    let (_t, dir) = scratch();
    let (ro, rw, grants) = read_only_and_writable(&dir);
    std::fs::write(rw.join("b.txt"), "kept b\n").unwrap();
    let r = py_code(
        &dir,
        &[&grants[0], &grants[1]],
        &format!(
            "import os\n\
             for p in ['{}/a.txt', '{}/b.txt']:\n    \
             fd = os.open(p, os.O_RDONLY)\n    \
             try:\n        os.write(fd, b'changed'); print('wrote', p)\n    \
             except OSError as e: print('refused')\n    \
             try:\n        os.lseek(fd, 0, 0); print(os.read(fd, 100))\n    \
             finally: os.close(fd)",
            s(&ro),
            s(&rw)
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout, "refused\nb'kept a\\n'\nrefused\nb'kept b\\n'\n",
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(ro.join("a.txt")).unwrap(),
        "kept a\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("b.txt")).unwrap(),
        "kept b\n"
    );
}

/// A write stream follows its descriptor, never its name: the guest opens
/// a file, moves it away and puts a link to a read-only granted file in
/// its place, then writes through the descriptor it kept. The data lands
/// in the moved file; the read-only file is unchanged.
#[test]
fn a_kept_write_stream_follows_its_file_not_a_name_pointed_elsewhere() {
    let (_t, dir) = scratch();
    let (ro, rw, grants) = read_only_and_writable(&dir);
    let r = py_code(
        &dir,
        &[&grants[0], &grants[1]],
        &format!(
            "import os\n\
             rw = '{}'\n\
             fd = os.open(rw + '/f.txt', os.O_WRONLY | os.O_CREAT)\n\
             os.rename(rw + '/f.txt', rw + '/g.txt')\n\
             try:\n    os.symlink('../ro/a.txt', rw + '/f.txt'); print('linked')\n\
             except OSError: print('no link')\n\
             print(os.write(fd, b'through the kept descriptor\\n' * 3000))\n\
             os.close(fd)",
            s(&rw)
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.ends_with("84000\n"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(ro.join("a.txt")).unwrap(),
        "kept a\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("g.txt")).unwrap(),
        "through the kept descriptor\n".repeat(3000)
    );
}

/// The runtime component is CPython's libraries linked into one core module
/// (beside the fixup that fills the shim's table), which exports only what
/// the component's wiring reads: a second pass of either finds nothing.
#[test]
fn the_runtime_component_is_one_linked_module() {
    python_ready();
    let component = capsa_python::runtime_dir(&cache_dir()).join("python.wasm");
    let bytes = std::fs::read(&component).expect("the runtime component");
    let modules = wasmparser::Parser::new(0)
        .parse_all(&bytes)
        .filter(|p| matches!(p, Ok(wasmparser::Payload::ModuleSection { .. })))
        .count();
    assert_eq!(modules, 2);
    assert!(capsa_python::merge::merge_modules(&bytes).is_none());
    let (_, again) = capsa_python::prune::prune_exports(&bytes).expect("the pass follows it");
    assert_eq!(again.exports_before, again.exports_after, "{again:?}");
    // And the runtime still runs, with the exports it kept.
    let (_g, d) = scratch();
    let r = py_code(
        &d,
        &[],
        "import json, re, sqlite3; print(json.dumps(re.findall('a+', 'caab')))",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "[\"aa\"]\n"),
        "{}",
        r.stderr
    );
}

/// A private copy (hard links) of the shared cache, with no page profile
/// in it, and the runtime's compiled file there.
fn cache_without_page_profiles(dir: &Path) -> std::path::PathBuf {
    python_ready();
    let cache = dir.join("cache");
    let ok = std::process::Command::new("cp")
        .arg("-al")
        .arg(cache_dir())
        .arg(&cache)
        .status()
        .unwrap();
    assert!(ok.success());
    for e in std::fs::read_dir(cache.join("code")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "pages") {
            std::fs::remove_file(p).unwrap();
        }
    }
    cache
}

fn page_profiles(cache: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache.join("code"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pages"))
        .collect()
}

/// Pages a profile holds; `None` if it is not one.
fn profile_pages(text: &str) -> Option<u32> {
    let mut lines = text.lines();
    (lines.next()? == "capsa-pages 1").then_some(())?;
    let (_, total) = lines.next()?.split_once(' ')?;
    let total: u32 = total.parse().ok()?;
    let mut n = 0;
    for r in lines.next()?.split_whitespace() {
        let (a, b) = r.split_once('-')?;
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        assert!(a < b && b <= total, "{r} in {total} pages");
        n += b - a;
    }
    Some(n)
}

/// Before the runtime's first run on a machine, capsa runs `pass` once and
/// records which pages of the memory snapshot it wrote; later runs copy
/// those at once (`prefault`). The profile never comes from the user's own
/// program: this one writes over 3,000 of the snapshot's pages, and a
/// profile holding them would make every later run copy them all. A
/// damaged profile, or one holding the whole snapshot, changes nothing a
/// program sees; a damaged one is recorded again.
#[test]
fn the_snapshot_page_profile_comes_from_a_minimal_run_and_a_bad_one_changes_nothing() {
    let (_g, d) = scratch();
    let cache = cache_without_page_profiles(&d);
    let run = |name: &str, source: &str| -> Run {
        std::fs::write(d.join(name), source).unwrap();
        capsa()
            .env("CAPSA_CACHE_DIR", &cache)
            .current_dir(&d)
            .arg("run")
            .arg(d.join(name))
            .output()
            .unwrap()
            .into()
    };
    let heavy = "import dataclasses, json\n\
                 @dataclasses.dataclass\n\
                 class P:\n    x: int\n    y: str\n\
                 d = [P(i, str(i)) for i in range(20000)]\n\
                 print(len(json.dumps([dataclasses.asdict(p) for p in d[:2000]])))\n";
    let r = run("heavy.py", heavy);
    assert_eq!((r.code, r.stdout.as_str()), (0, "49780\n"), "{}", r.stderr);
    let made = page_profiles(&cache);
    assert_eq!(made.len(), 1, "one profile, for the runtime: {made:?}");
    let profile = &made[0];
    let text = std::fs::read_to_string(profile).unwrap();
    let pages = profile_pages(&text).expect("a profile");
    assert!(
        (50..1500).contains(&pages),
        "{pages} pages: the profile of a minimal run, not of this program"
    );
    let whole = {
        let head = text.lines().nth(1).unwrap();
        let total = head.split_once(' ').unwrap().1;
        format!("capsa-pages 1\n{head}\n0-{total}\n")
    };
    // One that fits, however much it holds, is used and kept.
    std::fs::write(profile, &whole).unwrap();
    let r = run("hello.py", "print('hello', sum(range(10)))\n");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hello 45\n"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(profile).unwrap(), whole, "kept");
    // One that cannot be used, or is for another layout of the snapshot
    // (another page size), is removed by the run that finds it, and the
    // next run records it again.
    for bad in [
        "garbage".to_string(),
        "capsa-pages 1\n0 99999999\n0-99999999\n".to_string(),
    ] {
        std::fs::write(profile, &bad).unwrap();
        let r = run("hello.py", "print('hello', sum(range(10)))\n");
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "hello 45\n"),
            "{bad:?}: {}",
            r.stderr
        );
        assert!(!profile.exists(), "{bad:?}: removed");
        let r = run("hello.py", "print('hello')\n");
        assert_eq!(r.stdout, "hello\n", "{}", r.stderr);
        let again = std::fs::read_to_string(profile).expect("made again");
        assert!(
            profile_pages(&again).is_some_and(|n| (50..1500).contains(&n)),
            "{bad:?}: {again}"
        );
    }
    // Gone, it is made again.
    std::fs::remove_file(profile).unwrap();
    let r = run("hello.py", "print('hello')\n");
    assert_eq!(r.stdout, "hello\n", "{}", r.stderr);
    let again = std::fs::read_to_string(profile).expect("made again");
    assert!(
        profile_pages(&again).is_some_and(|n| (50..1500).contains(&n)),
        "{again}"
    );
}

/// A run of Python maps little more of its snapshot's file than it reads:
/// not the 64 KiB around every page read (fault-around), which made 6 to 7
/// MiB of file pages part of every run's resident set (see
/// `prefault::map_only_pages_read`). Read from `/proc` while the run waits.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[test]
fn a_run_maps_only_the_snapshot_pages_it_reads() {
    if !capsa_sandbox::prefault::can_map_only_pages_read() {
        // CI runs on a kernel that can, and says so.
        assert!(
            std::env::var_os("CAPSA_TEST_FAULT_AROUND").is_none(),
            "userfaultfd with asynchronous write protection refused"
        );
        eprintln!("skipped: no userfaultfd with asynchronous write protection here");
        return;
    }
    // Twice: the first run of a snapshot may be the one that records its
    // page profile; the second is a run like any later one.
    proc_file_of_waiting_python("status");
    let smaps = proc_file_of_waiting_python("smaps");
    // Per copy-on-write mapping of the compiled file: its length, resident
    // and anonymous (written, copied) KiB, and whether it is registered for
    // write protection (`uw` among its flags).
    let mut maps: Vec<([u64; 3], bool)> = Vec::new();
    let mut inside = false;
    for line in smaps.lines() {
        let head: Vec<&str> = line.split_whitespace().collect();
        if head.len() >= 5 && head[0].contains('-') && head[1].len() == 4 {
            inside = head[1] == "rw-p" && head.len() == 6 && head[5].ends_with(".cwasm");
            if inside {
                let (a, b) = head[0].split_once('-').unwrap();
                let len = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
                maps.push(([len >> 10, 0, 0], false));
            }
        } else if inside {
            let kb = |v: &str| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
            let (last, registered) = maps.last_mut().unwrap();
            if let Some(v) = line.strip_prefix("Rss:") {
                last[1] = kb(v);
            } else if let Some(v) = line.strip_prefix("Anonymous:") {
                last[2] = kb(v);
            } else if let Some(v) = line.strip_prefix("VmFlags:") {
                *registered = v.split_whitespace().any(|f| f == "uw");
            }
        }
    }
    let ([len, rss, anon], registered) = *maps
        .iter()
        .max_by_key(|(m, _)| m[0])
        .expect("the snapshot is mapped from the file");
    assert!(len > 16 << 10, "{len} KiB: not Python's snapshot");
    assert!(registered, "the snapshot's mapping is not registered");
    assert!(
        anon > 400,
        "{anon} KiB copied: the page profile was not used"
    );
    assert!(
        rss - anon < 3 << 10,
        "{} KiB of the snapshot's file mapped for a run that reads about 1 MiB",
        rss - anon
    );
}

/// `capsa python install --optimize`: binaryen's wasm-opt (Debian's
/// `binaryen`, which CI installs) rewrites the runtime's component once; the
/// snapshot (and its hash seed) is kept, a later run uses it without
/// preparing anything, a second `--optimize` does nothing, and `--force`
/// goes back to the runtime as prepared. A missing or broken wasm-opt
/// changes nothing, with a clear error whose tool output reaches the
/// terminal escaped.
#[cfg(unix)]
#[test]
fn install_optimize_with_binaryen() {
    use std::os::unix::fs::PermissionsExt;
    python_ready();
    let (_c, cache) = scratch();
    let (_g, d) = scratch();
    // The shared cache's prepared runtime, copied: no second 20 s build.
    let shared = capsa_python::runtime_dir(&cache_dir());
    std::fs::create_dir(cache.join("python")).unwrap();
    std::fs::set_permissions(cache.join("python"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let cp = std::process::Command::new("cp")
        .args(["-a", s(&shared), s(&cache.join("python"))])
        .status()
        .unwrap();
    assert!(cp.success());
    let runtime = cache.join("python").join(shared.file_name().unwrap());
    let code = "print(hash('capsa'), 6 * 7)";
    let py = || py_code_with_cache(&cache, &d, code);
    let install = |flags: &[&str], wasm_opt: Option<&Path>| -> Run {
        let mut c = capsa();
        c.env("CAPSA_CACHE_DIR", &cache)
            .args(["python", "install"])
            .args(flags);
        match wasm_opt {
            Some(p) => c.env("CAPSA_WASM_OPT", p),
            None => c.env_remove("CAPSA_WASM_OPT"),
        };
        c.output().unwrap().into()
    };
    let before = py();
    assert_eq!(before.code, 0, "{}", before.stderr);
    // The manifest, and the component it names.
    let state = || {
        let manifest = std::fs::read(runtime.join("manifest.json")).unwrap();
        let file = if String::from_utf8_lossy(&manifest).contains("python.opt.wasm") {
            "python.opt.wasm"
        } else {
            "python.wasm"
        };
        (manifest, std::fs::read(runtime.join(file)).unwrap())
    };
    let prepared = state();

    // No wasm-opt at all: a usage error that says what to install.
    let r: Run = capsa()
        .env("CAPSA_CACHE_DIR", &cache)
        .env_remove("CAPSA_WASM_OPT")
        .env("PATH", s(&d))
        .args(["python", "install", "--optimize"])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("apt install binaryen"), "{}", r.stderr);
    let r = install(&["--optimize"], Some(&d.join("no-such-wasm-opt")));
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("which is not a file"), "{}", r.stderr);
    // Looked for before anything is built or run.
    assert!(!r.stderr.contains("preparing"), "{}", r.stderr);
    // A file it names must be one this user may run, as PATH's must.
    let plain = d.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let r = install(&["--optimize"], Some(&plain));
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("not a file it may run"), "{}", r.stderr);
    assert!(state() == prepared, "nothing changed");

    // A wasm-opt that fails, printing a terminal escape, then one that
    // writes garbage, then one that writes a valid module but not the one
    // the component needs (an empty one): refused with exit 70, nothing
    // changed, the escape not passed on.
    let tool = d.join("wasm-opt");
    let fake = |then: &str, want: &str| -> Run {
        std::fs::write(
            &tool,
            format!(
                "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'wasm-opt version 1'; exit 0; }}\n{then}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = install(&["--optimize"], Some(&tool));
        assert_eq!(r.code, 70, "{}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        r
    };
    let output = "while [ \"$1\" != -o ]; do shift; done; ";
    let r = fake(
        "printf 'bad \\033[2J flag\\n' >&2; exit 3",
        "left as it was",
    );
    assert!(r.stderr.contains("bad \\u{1b}[2J flag"), "{}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}'), "{}", r.stderr);
    fake(
        &format!("{output}head -c 1000 /dev/urandom > \"$2\""),
        "not a valid WebAssembly module",
    );
    fake(
        &format!("{output}printf '\\000asm\\001\\000\\000\\000' > \"$2\""),
        "does not validate",
    );
    assert!(state() == prepared, "nothing changed");
    assert!(
        !std::fs::read_dir(cache.join("python"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".build-")),
        "no work directory left behind"
    );

    // The real one (binaryen's, on PATH).
    let r = install(&["--optimize"], None);
    assert_eq!(
        r.code, 0,
        "{}\n(this test needs binaryen's wasm-opt on PATH: apt install binaryen)",
        r.stderr
    );
    assert!(
        r.stdout.contains(", optimized with wasm-opt version"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("capsa: optimizing Python with"),
        "{}",
        r.stderr
    );
    let optimized = state();
    assert!(optimized.1 != prepared.1, "the component was rewritten");
    assert!(
        !runtime.join("python.wasm").exists(),
        "the component as prepared is gone: one file per runtime"
    );
    let after = py();
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert_eq!(after.stderr, "", "nothing prepared again");
    assert_eq!(
        after.stdout, before.stdout,
        "the same snapshot, hash seed included"
    );
    // Under `capsa serve`, which keeps this runtime's memory from run to
    // run too (by its file name: sandbox's `keeps_memory`, unit-tested), no
    // run finds what the last one wrote into its memory, searching all of
    // it; and the server made the optimized component's memory image.
    #[cfg(target_os = "linux")]
    {
        let server = crate::serve::Server::start_with_cache(
            &cache,
            &["--max-runs=1", "--timeout=30s", "--memory=512M"],
        );
        crate::serve::nothing_the_last_run_wrote_is_found(&server);
        drop(server);
        let manifest: serde_json::Value = serde_json::from_slice(&optimized.0).unwrap();
        let sha = manifest["component_sha256"].as_str().unwrap();
        assert!(
            cache
                .join("code")
                .join(format!("split-{}.image", &sha[..40]))
                .is_file(),
            "the optimized component's memory image"
        );
    }

    // Once is enough.
    let r = install(&["--optimize"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("optimizing"), "{}", r.stderr);
    assert!(state() == optimized);

    // An --optimize killed between its switch and its check left the
    // runtime as prepared beside it: the next --optimize undoes that first
    // (here with a wasm-opt that then fails).
    std::fs::write(runtime.join("manifest.prepared.json"), &prepared.0).unwrap();
    std::fs::write(runtime.join("python.wasm"), &prepared.1).unwrap();
    fake("exit 1", "stopped before its check; it is undone");
    assert!(state() == prepared, "back to the runtime as prepared");
    assert!(!runtime.join("python.opt.wasm").exists());
    assert!(!runtime.join("manifest.prepared.json").exists());
    let r = py();
    assert_eq!(r.stdout, before.stdout, "{}", r.stderr);

    // --force prepares the runtime again.
    let r = install(&["--force"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("optimized"), "{}", r.stdout);
    assert!(
        !String::from_utf8_lossy(&state().0).contains("optimized"),
        "the manifest no longer says so"
    );
    let r = py();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.ends_with(" 42\n"), "{}", r.stdout);
}

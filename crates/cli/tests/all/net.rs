//! Network grants against real servers on loopback: a connection that is not
//! granted must fail in the guest and never reach the server.

use crate::support::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A loopback server that answers `pong` to each connection and counts them.
struct Server {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn server() -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = (&conn).write_all(b"pong\n");
        }
    });
    Server { port, hits }
}

#[test]
fn connect_to_granted_address() {
    let srv = server();
    let addr = format!("127.0.0.1:{}", srv.port);
    let r = run(
        &[&format!("--allow-net={addr}")],
        &probe(P2),
        &["connect", &addr],
    );
    assert_eq!(r.stdout, "ok: reply pong\n", "{}", r.stderr);
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn connect_by_granted_name_localhost() {
    let srv = server();
    let r = run(
        &[&format!("--allow-net=localhost:{}", srv.port)],
        &probe(P2),
        &["connect", &format!("localhost:{}", srv.port)],
    );
    assert_eq!(r.stdout, "ok: reply pong\n", "{}", r.stderr);
}

#[test]
fn ungranted_port_of_a_listening_server() {
    let granted = server();
    let other = server();
    let r = run(
        &[&format!("--allow-net=127.0.0.1:{}", granted.port)],
        &probe(P2),
        &["connect", &format!("127.0.0.1:{}", other.port)],
    );
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    assert_eq!(r.code, 1);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        other.hits.load(Ordering::SeqCst),
        0,
        "the server must see nothing"
    );
    assert!(
        r.stderr
            .contains(&format!("hint: --allow-net=127.0.0.1:{}", other.port)),
        "{}",
        r.stderr
    );
}

#[test]
fn nothing_is_reachable_by_default() {
    let srv = server();
    let r = run(
        &[],
        &probe(P2),
        &["connect", &format!("127.0.0.1:{}", srv.port)],
    );
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
    insta::assert_snapshot!(r.stderr.replace(&srv.port.to_string(), "[PORT]"), @r"
    capsa: denied: connect to 127.0.0.1:[PORT] (127.0.0.1:[PORT] is a loopback address and is not granted)
      hint: --allow-net=127.0.0.1:[PORT]
    ");
}

#[test]
fn ungranted_name_is_not_looked_up() {
    let r = run(
        &["--allow-net=example.org:443"],
        &probe(P2),
        &["lookup", "example.com"],
    );
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("capsa: denied: look up example.com (example.com is not granted)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: --allow-net=example.com"),
        "{}",
        r.stderr
    );
}

/// A name that is granted, but resolves to loopback, must not become a way
/// to reach local services (DNS rebinding, or a hosts-file entry).
#[test]
fn granted_name_resolving_to_loopback_is_refused() {
    let host = std::fs::read_to_string("/etc/hostname")
        .unwrap()
        .trim()
        .to_string();
    let resolved: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 1))
            .unwrap()
            .collect();
    assert!(
        resolved.iter().any(|a| a.ip().is_loopback()),
        "this test needs the machine's name ({host}) to resolve to loopback, as Debian's /etc/hosts does"
    );
    let srv = server();
    let r = run(
        &[&format!("--allow-net={host}:{}", srv.port)],
        &probe(P2),
        &["connect", &format!("{host}:{}", srv.port)],
    );
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        0,
        "the server must see nothing"
    );
    assert!(
        r.stderr.contains("resolved to a loopback address"),
        "{}",
        r.stderr
    );
    // Named by IP, the same server is reachable.
    let r = run(
        &[&format!(
            "--allow-net={host}:{},127.0.0.1:{}",
            srv.port, srv.port
        )],
        &probe(P2),
        &["connect", &format!("{host}:{}", srv.port)],
    );
    assert_eq!(r.stdout, "ok: reply pong\n", "{}", r.stderr);
}

#[test]
fn deny_net_wins() {
    let srv = server();
    let r = run(
        &[
            "--allow-net=127.0.0.0/8",
            &format!("--deny-net=127.0.0.1:{}", srv.port),
        ],
        &probe(P2),
        &["connect", &format!("127.0.0.1:{}", srv.port)],
    );
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn listening_needs_a_grant() {
    // A fixed port, or any address but loopback, needs the grant; an
    // ephemeral loopback port is private (see python::a_private_listener_*).
    for addr in ["127.0.0.1:47012", "0.0.0.0:0"] {
        let r = run(&[], &probe(P2), &["listen", addr]);
        assert!(r.stdout.starts_with("err:"), "{addr}: {}", r.stdout);
        assert!(r.stderr.contains("hint: --allow-listen="), "{}", r.stderr);
    }
    let r = run(&[], &probe(P2), &["listen", "127.0.0.1:0"]);
    assert!(
        r.stdout.starts_with("ok: listening on 127.0.0.1:"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stderr, "");
    let r = run(
        &["--allow-listen=127.0.0.1:0"],
        &probe(P2),
        &["listen", "127.0.0.1:0"],
    );
    assert!(
        r.stdout.starts_with("ok: listening on 127.0.0.1:"),
        "{}",
        r.stderr
    );
}

#[test]
fn preview1_has_no_sockets() {
    let srv = server();
    let r = run(
        &[&format!("--allow-net=127.0.0.1:{}", srv.port)],
        &probe(P1),
        &["connect", &format!("127.0.0.1:{}", srv.port)],
    );
    assert!(r.stdout.starts_with("err: Unsupported"), "{}", r.stdout);
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
    // The user is told the grant gives it nothing; a program with sockets
    // is not.
    let note = "capsa: note: the program imports no network interface";
    assert!(r.stderr.contains(note), "{}", r.stderr);
    let r = run(
        &[&format!("--allow-net=127.0.0.1:{}", srv.port)],
        &probe(P2),
        &["connect", &format!("127.0.0.1:{}", srv.port)],
    );
    assert!(!r.stderr.contains(note), "{}", r.stderr);
    let r = run(&[], &probe(P1), &["hello"]);
    assert!(!r.stderr.contains(note), "{}", r.stderr);
}

#[test]
fn granted_name_is_looked_up_by_the_host() {
    let r = run(
        &["--allow-net=localhost:80"],
        &probe(P2),
        &["lookup", "localhost"],
    );
    assert!(
        r.stdout.starts_with("ok: ") && r.stdout.contains("127.0.0.1"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.stderr, "");
}

// Regression: a granted name that resolved to one of the machine's own
// (public) addresses was connected to, reaching services bound to every
// interface. Run in a network namespace the test makes (as root), with an
// address of its own (on its loopback interface) and a private /etc/hosts, so
// nothing can leave this machine whatever capsa does.
#[test]
fn granted_name_resolving_to_the_machines_own_address_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root for unshare -m -n");
        return;
    }
    let (_g, d) = scratch();
    std::fs::write(
        d.join("hosts"),
        "127.0.0.1 localhost\n45.45.45.45 own.test\n",
    )
    .unwrap();
    let server = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7777)); s.listen()
open(sys.argv[1], "w").write("ready")
n = 0
while True:
    c, _ = s.accept(); n += 1
    open(sys.argv[2], "w").write(str(n))
    c.sendall(b"pong\n"); c.close()
"#;
    std::fs::write(d.join("server.py"), server).unwrap();
    let script = format!(
        r#"set -e
ip link set lo up
ip addr add 45.45.45.45/32 dev lo
mount --bind {hosts} /etc/hosts
python3 {dir}/server.py {dir}/ready {dir}/hits &
server=$!
for i in $(seq 50); do [ -e {dir}/ready ] && break; sleep 0.1; done
"$CAPSA" run --allow-net=own.test:7777 "$PROBE" connect own.test:7777 >{dir}/by-name.out 2>{dir}/by-name.err || true
"$CAPSA" run --allow-net=own.test:7777,45.45.45.45:7777 "$PROBE" connect own.test:7777 >{dir}/by-ip.out 2>{dir}/by-ip.err || true
kill $server || true
"#,
        hosts = s(&d.join("hosts")),
        dir = s(&d),
    );
    let status = unshared(&["-m", "-n"], &script);
    assert!(status.success());
    let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
    assert!(
        read("by-name.out").starts_with("err:"),
        "{}",
        read("by-name.err")
    );
    assert!(
        read("by-name.err").contains("resolved to an address of this machine"),
        "{}",
        read("by-name.err")
    );
    // Named by IP, the same server is reachable; the refused run never got there.
    assert_eq!(
        read("by-ip.out"),
        "ok: reply pong\n",
        "{}",
        read("by-ip.err")
    );
    assert_eq!(read("hits"), "1");
}

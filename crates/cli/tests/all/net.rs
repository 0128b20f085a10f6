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
    let r = run(&[], &probe(P2), &["listen", "127.0.0.1:0"]);
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    assert!(r.stderr.contains("hint: --allow-listen="), "{}", r.stderr);
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

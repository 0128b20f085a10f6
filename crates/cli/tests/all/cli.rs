//! The command line itself: help, version, `--`.

use crate::support::*;

#[test]
fn run_help_documents_exit_codes() {
    let out = capsa()
        .args(["run", "--help"])
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

// Regression: `capsa cache info | head` (a reader that stops early, in a
// shell that ignores SIGPIPE) panicked with a backtrace and exit 101.
#[test]
fn a_closed_output_ends_capsa_quietly() {
    for args in [&["cache", "info"][..], &["python", "--", "-h"], &["--help"]] {
        // A pipe whose reader is gone before capsa starts.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = capsa().args(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if args != ["--help"] {
            assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
            assert_eq!(stderr, "", "{args:?}");
        }
    }
}

#[test]
fn version() {
    let out = capsa().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("capsa {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn double_dash_ends_capsa_options() {
    let r = run(&[], &probe(P2), &["args", "--", "--allow-read=/"]);
    assert!(
        r.stdout.ends_with("args -- --allow-read=/\n"),
        "{}",
        r.stdout
    );
    let out = capsa()
        .args(["run", "--"])
        .arg(probe(P2))
        .args(["args", "--quiet"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("args --quiet\n"));
}

/// A preview 1 write of no buffers to a descriptor that is not open fails
/// with BADF, as on wasmtime's own preview 1 (the adapter capsa wraps
/// modules in returned success without looking).
#[test]
fn fd_write_of_no_buffers_checks_the_descriptor() {
    let r = run(&[], &wat("fd-write-no-buffers.wat"), &[]);
    assert_eq!(
        r.code, 80,
        "BADF for fd 99, success for stdout: {}",
        r.stderr
    );
}

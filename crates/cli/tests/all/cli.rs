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

/// Everything after PROGRAM is the program's, even capsa's own flags right
/// after it: `capsa run x.wasm --allow-read=DIR` granted DIR, so a caller
/// passing a program untrusted arguments let them widen its grants.
#[test]
fn flags_right_after_the_program_are_the_programs() {
    let (_t, d) = scratch();
    std::fs::write(d.join("secret.txt"), "TOP SECRET").unwrap();
    let secret = d.join("secret.txt");
    let grant = format!("--allow-read={}", s(&d));
    for t in [P1, P2] {
        // The probe reads its second word; a grant taken by capsa would
        // let it.
        let r = run(&[], &probe(t), &["read", s(&secret), &grant]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
        assert!(!r.stdout.contains("SECRET"), "{t}: {}", r.stdout);
        let out = capsa()
            .arg("run")
            .arg(probe(t))
            .args([&grant, "--quiet", "-h"])
            .output()
            .unwrap();
        let r = Run::from(out);
        // The probe's own answer to a command it does not know, not
        // capsa's help.
        assert_eq!(r.code, 1, "{t}: {}", r.stderr);
        assert!(
            r.stdout.contains(&format!("unknown command {grant}")),
            "{t}: {}",
            r.stdout
        );
    }
    python_ready();
    std::fs::write(
        d.join("argv.py"),
        "import sys\nprint(sys.argv[1:])\nprint(open(sys.argv[2]).read())\n",
    )
    .unwrap();
    let r = run(
        &[],
        &d.join("argv.py"),
        &[&grant, s(&secret), "--help", "-V"],
    );
    assert!(
        r.stdout
            .starts_with(&format!("['{grant}', '{}', '--help', '-V']\n", s(&secret))),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("SECRET"), "{}", r.stdout);
    assert!(r.stderr.contains("denied: read"), "{}", r.stderr);
    // An option capsa does not know, before PROGRAM, is a usage error.
    let r = run(&["--alow-read=x"], &probe(P1), &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("unknown option --alow-read=x: capsa's options come before PROGRAM"),
        "{}",
        r.stderr
    );
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

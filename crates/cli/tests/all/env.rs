//! Environment: nothing from the host unless granted.

use crate::support::*;

#[test]
fn no_host_variable_by_default() {
    for t in [P1, P2] {
        let r = {
            let mut c = capsa();
            c.env("CAPSA_TEST_SECRET", "hunter2")
                .arg("run")
                .arg(probe(t))
                .arg("envall");
            Run::from(c.output().unwrap())
        };
        assert_eq!(r.stdout, "ok: \n", "{t}: the guest saw {}", r.stdout);
        assert!(!r.stdout.contains("hunter2"));
    }
}

#[test]
fn granted_variables_pass_and_others_do_not() {
    let mut c = capsa();
    c.env("APP_ONE", "1")
        .env("APP_TWO", "2")
        .env("OTHER_SECRET", "s")
        .env("CAPSA_X", "x");
    c.args(["run", "--allow-env=APP_*,CAPSA_X", "--env", "SET=here"])
        .arg(probe(P2))
        .arg("envall");
    let r = Run::from(c.output().unwrap());
    assert_eq!(
        r.stdout, "ok: APP_ONE=1;APP_TWO=2;CAPSA_X=x;SET=here\n",
        "{}",
        r.stderr
    );
}

#[test]
fn ungranted_variable_reads_as_unset() {
    let mut c = capsa();
    c.env("HOME_SECRET", "s")
        .args(["run", "--allow-env=HOME"])
        .arg(probe(P1))
        .args(["env", "HOME_SECRET"]);
    let r = Run::from(c.output().unwrap());
    assert_eq!(r.stdout, "ok: unset\n");
}

#[test]
fn arguments_and_stdin_reach_the_guest() {
    let r = run(&[], &probe(P2), &["args", "--flag", "two words"]);
    assert!(
        r.stdout.ends_with("probe.wasm args --flag two words\n"),
        "{}",
        r.stdout
    );
    let out = capsa()
        .arg("run")
        .arg(probe(P1))
        .arg("stdin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"shout\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok: SHOUT\n");
}

#[test]
fn audit_records_which_env_grants_passed_a_value() {
    let mut c = capsa();
    c.env("APP_KEY", "k")
        .args(["run", "--audit=-", "--allow-env=APP_*,NOPE"])
        .arg(probe(P2))
        .arg("hello");
    let r = Run::from(c.output().unwrap());
    let lines: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("capsa: note:"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "env" && l["target"] == "APP_KEY" && l["op"] == "pass"),
        "{}",
        r.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "env" && l["target"] == "NOPE" && l["op"] == "pass (unset)"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("\"k\""),
        "the audit never records a value"
    );
}

/// A granted name the host does not have is said at start (the program
/// only finds nothing, and no denial comes), a name and a prefix alike;
/// not under `--quiet`, nor for a name that is set.
#[test]
fn a_granted_variable_the_host_lacks_is_said() {
    let go = |quiet: bool| {
        let mut c = capsa();
        c.env_remove("CAPSA_TEST_UNSET")
            .env("CAPSA_TEST_SET", "v")
            .arg("run")
            .args(quiet.then_some("--quiet"))
            .args(["--allow-env=CAPSA_TEST_UNSET,CAPSA_NO_SUCH_*,CAPSA_TEST_SET"])
            .arg(probe(P1))
            .args(["env", "CAPSA_TEST_SET"]);
        Run::from(c.output().unwrap())
    };
    let r = go(false);
    assert_eq!(r.stdout, "ok: v\n", "{}", r.stderr);
    for line in [
        "capsa: note: --allow-env=CAPSA_TEST_UNSET: capsa's environment has no such variable, so the program gets none\n",
        "capsa: note: --allow-env=CAPSA_NO_SUCH_*: capsa's environment has no variable of that prefix, so the program gets none\n",
    ] {
        assert!(r.stderr.contains(line), "{line}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("CAPSA_TEST_SET"), "{}", r.stderr);
    let r = go(true);
    assert_eq!(r.stdout, "ok: v\n");
    assert_eq!(r.stderr, "");
}

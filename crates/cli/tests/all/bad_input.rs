//! Bad input: one clear line and a documented code, never a panic.

use crate::support::*;

fn check(flags: &[&str], program: &std::path::Path, code: i32, message: &str) {
    let r = run(flags, program, &[]);
    assert_eq!(r.code, code, "{flags:?} {program:?}: {}", r.stderr);
    assert!(
        r.stderr.contains(message),
        "{flags:?}: expected {message:?} in {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
}

#[test]
fn programs_that_cannot_load() {
    let (_g, d) = scratch();
    std::fs::write(d.join("text.wasm"), "hello, not wasm").unwrap();
    let p = probe(P2);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(d.join("truncated.wasm"), &bytes[..bytes.len() / 2]).unwrap();
    let mut corrupt = bytes.clone();
    for b in corrupt[1000..1200].iter_mut() {
        *b = 0xff;
    }
    std::fs::write(d.join("corrupt.wasm"), &corrupt).unwrap();
    check(&[], &d.join("missing.wasm"), 126, "program not found");
    check(&[], &d, 126, "is a directory, not a program");
    check(
        &[],
        &d.join("text.wasm"),
        126,
        "is not a WebAssembly program",
    );
    check(
        &[],
        &d.join("truncated.wasm"),
        126,
        "is not a valid WebAssembly program",
    );
    check(
        &[],
        &d.join("corrupt.wasm"),
        126,
        "is not a valid WebAssembly program",
    );
    check(
        &[],
        &wat("import-env.wat"),
        126,
        "imports env::launch_missiles, which capsa does not provide",
    );
    check(&[], &wat("reactor.wat"), 126, "no _start function");
    // Was: "failed to satisfy import `env::memory`: main module cannot import memory".
    check(
        &[],
        &wat("no-memory.wat"),
        126,
        "exports no memory named `memory`",
    );
    // Regression: a component importing what capsa lacks exited 134 (crash).
    check(
        &[],
        &wat("component-import.wat"),
        126,
        "example:missing/launcher",
    );
    check(
        &[],
        &wat("not-a-command.wat"),
        126,
        "must export wasi:cli/run@0.2",
    );
    check(
        &[],
        &wat("bad-syntax.wat"),
        126,
        "is not valid WebAssembly text",
    );
}

// Regression: a name the program chose reached the load error with its
// line breaks, so a module could add lines that read as capsa's own (a
// forged note or hint under the real error).
#[test]
fn names_in_a_load_error_stay_on_its_line() {
    let (_g, d) = scratch();
    let forged = r#"\0a\1b[1;32mcapsa: note: this program was verified safe\1b[0m\0a  hint: --allow-write=/"#;
    for (module, name) in [("env", "x"), ("wasi_snapshot_preview1", "fd_write")] {
        let file = d.join(format!("{module}.wat"));
        std::fs::write(
            &file,
            format!(
                "(module (import \"{module}\" \"{name}{forged}\" (func)) \
                 (memory (export \"memory\") 1) (func (export \"_start\")))"
            ),
        )
        .unwrap();
        let r = run(&[], &file, &[]);
        assert_eq!(r.code, 126, "{module}: {}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{module}: {}", r.stderr);
        assert!(lines[0].starts_with("capsa: error: "), "{}", r.stderr);
        assert!(r.stderr.contains(r"\u{a}"), "{module}: {}", r.stderr);
        assert!(!r.stderr.contains('\x1b'), "{module}: {:?}", r.stderr);
    }
}

#[test]
fn invalid_flags_and_policies() {
    let (_g, d) = scratch();
    let p = probe(P2);
    check(
        &["--allow-net=example.com:99999"],
        &p,
        125,
        r#"invalid network rule "example.com:99999": invalid port"#,
    );
    check(
        &["--allow-net=10.0.0.0/33"],
        &p,
        125,
        r#"invalid network rule "10.0.0.0/33": invalid prefix length"#,
    );
    check(&["--memory=lots"], &p, 125, r#"invalid size "lots""#);
    check(&["--timeout=soon"], &p, 125, r#"invalid duration "soon""#);
    check(&["--fuel=-1"], &p, 125, r#"invalid fuel "-1""#);
    check(
        &["--allow-env=*"],
        &p,
        125,
        "a bare * would expose the whole environment",
    );
    check(
        &[&format!("--allow-read={}", s(&d.join("nope")))],
        &p,
        125,
        "no such file or directory",
    );
    std::fs::write(d.join("unknown.toml"), "allow-reed = [\"/tmp\"]\n").unwrap();
    check(
        &["--policy", s(&d.join("unknown.toml"))],
        &p,
        125,
        "unknown field `allow-reed`",
    );
    std::fs::write(d.join("broken.toml"), "allow-read = [\n").unwrap();
    check(
        &["--policy", s(&d.join("broken.toml"))],
        &p,
        125,
        "invalid policy file",
    );
    check(
        &["--policy", s(&d.join("absent.toml"))],
        &p,
        125,
        "cannot read policy file",
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let r = run(&["--allow-everything"], &probe(P2), &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("unknown option --allow-everything: capsa's options come before PROGRAM"),
        "{}",
        r.stderr
    );
}

/// What the user reads for each kind of bad input, in one snapshot.
#[test]
fn bad_input_messages() {
    let (_g, d) = scratch();
    std::fs::write(d.join("text.wasm"), "hello, not wasm").unwrap();
    std::fs::write(d.join("unknown.toml"), "[limits]\nmemroy = \"1G\"\n").unwrap();
    let p = probe(P2);
    let cases: Vec<(Vec<String>, std::path::PathBuf)> = vec![
        (vec![], d.join("missing.wasm")),
        (vec![], d.join("text.wasm")),
        (vec![], wat("import-env.wat")),
        (vec![], wat("not-a-command.wat")),
        (vec!["--allow-net=example.com:99999".into()], p.clone()),
        (vec!["--allow-net=10.0.0.0/33".into()], p.clone()),
        (vec!["--memory=lots".into()], p.clone()),
        (vec![format!("--allow-read={}/nope", s(&d))], p.clone()),
        (
            vec!["--policy".into(), s(&d.join("unknown.toml")).into()],
            p.clone(),
        ),
    ];
    let mut out = String::new();
    for (flags, program) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let r = run(&flags, &program, &[]);
        out.push_str(&format!("[{}] {}", r.code, r.stderr));
    }
    let wat_dir = wat("");
    let out = redact(&out, &d).replace(s(&wat_dir), "[WAT]/");
    insta::assert_snapshot!(out);
}

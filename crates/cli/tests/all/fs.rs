//! File grants: every capability allowed when granted and refused when not,
//! and the escapes a hostile guest would try, on WASI preview 1 and 0.2.

use crate::support::*;
use std::path::Path;
use std::process::Stdio;

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let (t, d) = scratch();
    std::fs::create_dir_all(d.join("data/sub")).unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::write(d.join("data/a.txt"), "alpha").unwrap();
    std::fs::write(d.join("data/sub/b.txt"), "beta").unwrap();
    std::fs::write(d.join("secret.txt"), "TOP SECRET").unwrap();
    std::fs::write(d.join("notes.txt"), "notes").unwrap();
    std::fs::write(d.join("neighbour.txt"), "private").unwrap();
    (t, d)
}

fn both(f: impl Fn(&str)) {
    for t in [P1, P2] {
        f(t);
    }
}

#[test]
fn read_granted_directory() {
    both(|t| {
        let (_g, d) = setup();
        let r = run(
            &[&format!("--allow-read={}", s(&d.join("data")))],
            &probe(t),
            &["read", s(&d.join("data/sub/b.txt"))],
        );
        assert_eq!(r.stdout, "ok: beta\n", "{t}: {}", r.stderr);
        assert_eq!(r.code, 0);
    });
}

#[test]
fn read_without_grant_is_refused() {
    both(|t| {
        let (_g, d) = setup();
        let r = run(&[], &probe(t), &["read", s(&d.join("data/a.txt"))]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
        assert_eq!(r.code, 1);
    });
}

#[test]
fn write_granted_directory() {
    both(|t| {
        let (_g, d) = setup();
        let target = d.join("out/result.txt");
        let r = run(
            &[&format!("--allow-write={}", s(&d.join("out")))],
            &probe(t),
            &["write", s(&target), "42"],
        );
        assert_eq!(r.stdout, "ok: written\n", "{t}: {}", r.stderr);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "42");
    });
}

/// Every way of changing a read-only grant fails, reports the denial, and
/// leaves the host's files as they were.
#[test]
fn read_only_grant_cannot_be_changed() {
    both(|t| {
        let (_g, d) = setup();
        let data = d.join("data");
        let grant = format!("--allow-read={}", s(&data));
        let a = s(&data.join("a.txt")).to_string();
        let attempts: Vec<Vec<String>> = vec![
            vec!["write".into(), s(&data.join("new.txt")).into(), "x".into()],
            vec!["write".into(), a.clone(), "overwritten".into()],
            vec!["append".into(), a.clone(), "more".into()],
            vec!["truncate".into(), a.clone()],
            vec!["mkdir".into(), s(&data.join("newdir")).into()],
            vec!["rm".into(), a.clone()],
            vec!["rmdir".into(), s(&data.join("sub")).into()],
            vec![
                "rename".into(),
                a.clone(),
                s(&data.join("moved.txt")).into(),
            ],
        ];
        let before = tree(&d);
        for args in attempts {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = run(&[&grant], &probe(t), &args);
            assert!(
                r.stdout.starts_with("err: PermissionDenied"),
                "{t} {args:?}: {}",
                r.stdout
            );
            assert_eq!(r.code, 1, "{t} {args:?}");
            assert!(
                r.stderr.contains("capsa: denied:"),
                "{t} {args:?}: {}",
                r.stderr
            );
            assert!(
                r.stderr.contains("is granted read-only"),
                "{t} {args:?}: {}",
                r.stderr
            );
        }
        assert_eq!(tree(&d), before, "{t}: the host changed");
    });
}

#[test]
fn denial_message_names_the_narrowest_flag() {
    let (_g, d) = setup();
    let data = d.join("data");
    let r = run(
        &[&format!("--allow-read={}", s(&data))],
        &probe(P2),
        &["write", s(&data.join("out.csv")), "x"],
    );
    insta::assert_snapshot!(redact(&r.stderr, &d), @r"
    capsa: denied: write to [DIR]/data/out.csv ([DIR]/data is granted read-only)
      hint: --allow-write=[DIR]/data
    ");
}

#[test]
fn quiet_silences_denials() {
    let (_g, d) = setup();
    let data = d.join("data");
    let r = run(
        &["--quiet", &format!("--allow-read={}", s(&data))],
        &probe(P2),
        &["write", s(&data.join("x")), "x"],
    );
    assert!(
        r.stdout.starts_with("err: PermissionDenied"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stderr, "");
}

#[test]
fn dot_dot_cannot_leave_a_grant() {
    both(|t| {
        let (_g, d) = setup();
        let data = d.join("data");
        let before = tree(&d);
        let escape = format!("{}/../secret.txt", s(&data));
        let r = run(
            &[&format!("--allow-write={}", s(&data))],
            &probe(t),
            &["read", &escape],
        );
        assert!(r.stdout.starts_with("err:"), "{t}: {}", r.stdout);
        assert!(!r.stdout.contains("TOP SECRET"));
        assert!(
            r.stderr.contains("leaves the granted directory"),
            "{t}: {}",
            r.stderr
        );
        let escape = format!("{}/sub/../../secret.txt", s(&data));
        let r = run(
            &[&format!("--allow-write={}", s(&data))],
            &probe(t),
            &["write", &escape, "pwned"],
        );
        assert!(r.stdout.starts_with("err:"), "{t}: {}", r.stdout);
        assert_eq!(tree(&d), before, "{t}: the host changed");
    });
}

#[test]
fn absolute_paths_outside_every_grant() {
    both(|t| {
        let (_g, d) = setup();
        let grant = format!("--allow-write={}", s(&d.join("out")));
        for path in ["/etc/passwd", s(&d.join("secret.txt"))] {
            let r = run(&[&grant], &probe(t), &["read", path]);
            assert!(r.stdout.starts_with("err:"), "{t} {path}: {}", r.stdout);
            assert!(!r.stdout.contains("root:") && !r.stdout.contains("SECRET"));
        }
        let r = run(&[&grant], &probe(t), &["ls", "/"]);
        assert!(!r.stdout.contains("etc"), "{t}: {}", r.stdout);
    });
}

#[test]
fn symlink_pointing_outside_is_not_followed() {
    both(|t| {
        let (_g, d) = setup();
        let data = d.join("data");
        std::os::unix::fs::symlink(d.join("secret.txt"), data.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../secret.txt", data.join("rel-link")).unwrap();
        let before = tree(&d);
        let grant = format!("--allow-write={}", s(&data));
        for link in ["abs-link", "rel-link"] {
            let p = data.join(link);
            let r = run(&[&grant], &probe(t), &["read", s(&p)]);
            assert!(r.stdout.starts_with("err:"), "{t} {link}: {}", r.stdout);
            assert!(!r.stdout.contains("SECRET"));
            let r = run(&[&grant], &probe(t), &["write", s(&p), "pwned"]);
            assert!(r.stdout.starts_with("err:"), "{t} {link}: {}", r.stdout);
        }
        assert!(
            run(&[&grant], &probe(t), &["read", s(&data.join("abs-link"))])
                .stderr
                .contains("a link leads outside")
        );
        assert_eq!(tree(&d), before, "{t}: the host changed");
        assert_eq!(
            std::fs::read_to_string(d.join("secret.txt")).unwrap(),
            "TOP SECRET"
        );
    });
}

#[test]
fn hard_link_and_rename_across_a_read_only_grant() {
    both(|t| {
        let (_g, d) = setup();
        let ro = d.join("data");
        let rw = d.join("out");
        std::fs::write(rw.join("mine.txt"), "mine").unwrap();
        let flags = [
            format!("--allow-read={}", s(&ro)),
            format!("--allow-write={}", s(&rw)),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let before = tree(&d);
        let attempts = [
            // Out of the read-only grant: would make its file writable.
            ("link", ro.join("a.txt"), rw.join("a-link.txt")),
            ("rename", ro.join("a.txt"), rw.join("a-moved.txt")),
            // Into it: would change what it holds.
            ("link", rw.join("mine.txt"), ro.join("planted.txt")),
            ("rename", rw.join("mine.txt"), ro.join("planted.txt")),
        ];
        for (op, from, to) in &attempts {
            let r = run(&flags, &probe(t), &[op, s(from), s(to)]);
            assert!(
                r.stdout.starts_with("err:"),
                "{t} {op} {from:?} -> {to:?}: {}",
                r.stdout
            );
            assert!(
                r.stderr.contains("capsa: denied:"),
                "{t} {op}: {}",
                r.stderr
            );
        }
        assert_eq!(tree(&d), before, "{t}: the host changed");
    });
}

#[test]
fn single_file_grant_hides_its_neighbours() {
    both(|t| {
        let (_g, d) = setup();
        let grant = format!("--allow-read={}", s(&d.join("notes.txt")));
        let r = run(&[&grant], &probe(t), &["read", s(&d.join("notes.txt"))]);
        assert_eq!(r.stdout, "ok: notes\n", "{t}: {}", r.stderr);
        for other in ["neighbour.txt", "secret.txt"] {
            let r = run(&[&grant], &probe(t), &["read", s(&d.join(other))]);
            assert!(
                r.stdout.starts_with("err: PermissionDenied"),
                "{t} {other}: {}",
                r.stdout
            );
            assert!(
                r.stderr.contains("only notes.txt is granted"),
                "{t}: {}",
                r.stderr
            );
        }
        let r = run(&[&grant], &probe(t), &["ls", s(&d)]);
        assert!(!r.stdout.contains("neighbour"), "{t}: {}", r.stdout);
        let before = tree(&d);
        let r = run(
            &[&grant],
            &probe(t),
            &["write", s(&d.join("notes.txt")), "changed"],
        );
        assert!(
            r.stdout.starts_with("err: PermissionDenied"),
            "{t}: {}",
            r.stdout
        );
        assert_eq!(tree(&d), before);
    });
}

#[test]
fn single_file_write_grant() {
    let (_g, d) = setup();
    let grant = format!("--allow-write={}", s(&d.join("notes.txt")));
    let r = run(
        &[&grant],
        &probe(P2),
        &["append", s(&d.join("notes.txt")), "+more"],
    );
    assert_eq!(r.stdout, "ok: appended\n", "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        "notes+more"
    );
    let r = run(
        &[&grant],
        &probe(P2),
        &["write", s(&d.join("created.txt")), "x"],
    );
    assert!(
        r.stdout.starts_with("err: PermissionDenied"),
        "{}",
        r.stdout
    );
    assert!(!d.join("created.txt").exists());
}

#[test]
fn deny_wins_over_allow() {
    both(|t| {
        let (_g, d) = setup();
        std::fs::create_dir(d.join("out/keep")).unwrap();
        let flags = [
            format!("--allow-write={}", s(&d)),
            format!("--deny-read={}", s(&d.join("secret.txt"))),
            format!("--deny-write={}", s(&d.join("out/keep"))),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let r = run(&flags, &probe(t), &["read", s(&d.join("secret.txt"))]);
        assert!(
            r.stdout.starts_with("err: PermissionDenied"),
            "{t}: {}",
            r.stdout
        );
        assert!(
            r.stderr.contains("denied by --deny-read="),
            "{t}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("hint:"),
            "a --deny-* gets no hint: {}",
            r.stderr
        );
        let r = run(&flags, &probe(t), &["write", s(&d.join("out/keep/x")), "x"]);
        assert!(
            r.stdout.starts_with("err: PermissionDenied"),
            "{t}: {}",
            r.stdout
        );
        assert!(!d.join("out/keep/x").exists());
        // Everything else in the grant still works.
        let r = run(&flags, &probe(t), &["write", s(&d.join("out/y")), "y"]);
        assert_eq!(r.stdout, "ok: written\n", "{t}: {}", r.stderr);
    });
}

#[test]
fn host_guest_mapping() {
    let (_g, d) = setup();
    let grant = format!("--allow-read={}::/mnt/data", s(&d.join("data")));
    let r = run(&[&grant], &probe(P2), &["read", "/mnt/data/a.txt"]);
    assert_eq!(r.stdout, "ok: alpha\n", "{}", r.stderr);
    let r = run(&[&grant], &probe(P2), &["read", s(&d.join("data/a.txt"))]);
    assert!(
        r.stdout.starts_with("err:"),
        "the host path is not visible: {}",
        r.stdout
    );
}

#[test]
fn relative_grant_is_the_same_absolute_path() {
    let (_g, d) = setup();
    let r = run_in(
        &d,
        &["--allow-read=data"],
        &probe(P2),
        &["read", s(&d.join("data/a.txt"))],
    );
    assert_eq!(r.stdout, "ok: alpha\n", "{}", r.stderr);
}

#[test]
fn policy_file_grants() {
    let (_g, d) = setup();
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        "allow-read = [\"data\"]\n[limits]\nmemory = \"128M\"\n",
    )
    .unwrap();
    let r = run(
        &["--policy", s(&policy)],
        &probe(P2),
        &["read", s(&d.join("data/a.txt"))],
    );
    assert_eq!(
        r.stdout, "ok: alpha\n",
        "relative to the policy file's directory: {}",
        r.stderr
    );
    // Flags add to the file.
    let r = run(
        &[
            "--policy",
            s(&policy),
            &format!("--allow-write={}", s(&d.join("out"))),
        ],
        &probe(P2),
        &["write", s(&d.join("out/z")), "z"],
    );
    assert_eq!(r.stdout, "ok: written\n", "{}", r.stderr);
}

#[test]
fn audit_records_every_decision() {
    let (_g, d) = setup();
    let log = d.join("audit.jsonl");
    let data = d.join("data");
    let r = run(
        &[
            &format!("--allow-read={}", s(&data)),
            &format!("--audit={}", s(&log)),
        ],
        &probe(P2),
        &["write", s(&data.join("new")), "x"],
    );
    assert_eq!(r.code, 1);
    let _ = run(
        &[
            &format!("--allow-read={}", s(&data)),
            &format!("--audit={}", s(&d.join("audit2.jsonl"))),
        ],
        &probe(P2),
        &["read", s(&data.join("a.txt"))],
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .chain(
            std::fs::read_to_string(d.join("audit2.jsonl"))
                .unwrap()
                .lines(),
        )
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let deny = lines
        .iter()
        .find(|l| l["decision"] == "deny")
        .expect("a deny line");
    assert_eq!(deny["kind"], "fs");
    assert_eq!(deny["op"], "write to");
    assert_eq!(deny["target"], s(&data.join("new")));
    assert!(deny["time"].as_str().unwrap().ends_with('Z'));
    let allow = lines
        .iter()
        .find(|l| l["decision"] == "allow")
        .expect("an allow line");
    assert_eq!(allow["rule"], format!("--allow-read={}", s(&data)));
    assert_eq!(allow["target"], s(&data.join("a.txt")));
}

#[test]
fn wat_program_runs() {
    let r = run(&[], &wat("hello.wat"), &[]);
    assert_eq!(r.stdout, "hello from wat\n", "{}", r.stderr);
    assert_eq!(r.code, 0);
    assert!(Path::new(&wat("hello.wat")).exists());
}

/// A single file mapped to another name would have made the guest reach a
/// different file of that name in the host directory.
#[test]
fn single_file_keeps_its_name() {
    let (_g, d) = setup();
    let grant = format!("--allow-read={}::/mnt/secret.txt", s(&d.join("notes.txt")));
    let r = run(&[&grant], &probe(P2), &["read", "/mnt/secret.txt"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains("keeps its name in the guest"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("SECRET"));
    let grant = format!("--allow-read={}::/mnt/notes.txt", s(&d.join("notes.txt")));
    let r = run(&[&grant], &probe(P2), &["read", "/mnt/notes.txt"]);
    assert_eq!(r.stdout, "ok: notes\n", "{}", r.stderr);
}

/// Two grants that would both appear at one guest path are a policy error.
#[test]
fn conflicting_guest_paths() {
    let (_g, d) = setup();
    let r = run(
        &[
            &format!("--allow-read={}::/m", s(&d.join("data"))),
            &format!("--allow-read={}::/m", s(&d.join("out"))),
        ],
        &probe(P2),
        &["hello"],
    );
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains("choose another guest path"),
        "{}",
        r.stderr
    );
}

/// A relative path in the program means what it would natively, for a
/// directory granted below the working directory (wasi-libc resolves
/// relative paths against /, so capsa mounts such grants there too).
#[test]
fn relative_paths_below_the_working_directory() {
    both(|t| {
        let (_g, d) = setup();
        let r = run_in(
            &d,
            &["--allow-write=out"],
            &probe(t),
            &["write", "out/result.txt", "42"],
        );
        assert_eq!(r.stdout, "ok: written\n", "{t}: {}", r.stderr);
        assert_eq!(
            std::fs::read_to_string(d.join("out/result.txt")).unwrap(),
            "42"
        );
        let r = run_in(
            &d,
            &["--allow-read=data"],
            &probe(t),
            &["write", "data/new.txt", "x"],
        );
        assert!(
            r.stdout.starts_with("err: PermissionDenied"),
            "{t}: {}",
            r.stdout
        );
        assert!(
            r.stderr
                .contains(&format!("denied: write to {}/data/new.txt", s(&d))),
            "messages name the real path: {}",
            r.stderr
        );
        assert!(!d.join("data/new.txt").exists());
        let r = run_in(&d, &[], &probe(t), &["read", "data/a.txt"]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
    });
}

/// A path outside every grant reaches the host's guarded root: the guest
/// gets "not found" as before, the user the line that says what was tried.
#[test]
fn a_path_outside_every_grant_is_reported() {
    both(|t| {
        let (_g, d) = setup();
        let before = tree(&d);
        let grant = format!("--allow-read={}", s(&d.join("data")));
        let secret = d.join("secret.txt");
        let r = run(&[&grant], &probe(t), &["read", s(&secret)]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
        assert!(!r.stdout.contains("SECRET"));
        let line = format!(
            "capsa: denied: read {} (outside every granted path)\n  hint: --allow-read={}\n",
            s(&secret),
            s(&secret)
        );
        assert!(r.stderr.contains(&line), "{t}: {}", r.stderr);

        // A write to what is there: the hint names what was tried, never
        // more (nothing is looked up to know whether it exists).
        let old = d.join("data/a.txt");
        let r = run(&[], &probe(t), &["append", s(&old), "x"]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
        assert!(
            r.stderr
                .contains(&format!("hint: --allow-write={}\n", s(&old))),
            "{t}: {}",
            r.stderr
        );
        // So does an open that may make the file: a program must not be
        // able to steer a hint to its whole directory (`/home/me` for a
        // write of `.bashrc`). Followed while the file does not exist, the
        // grant is refused and names the directory instead.
        let new = d.join("new.txt");
        let r = run(&[&grant], &probe(t), &["write", s(&new), "x"]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
        assert!(
            r.stderr
                .contains(&format!("hint: --allow-write={}\n", s(&new))),
            "{t}: {}",
            r.stderr
        );
        let followed = format!("--allow-write={}", s(&new));
        let r = run(&[&grant, &followed], &probe(t), &["write", s(&new), "x"]);
        assert_eq!(r.code, 125, "{t}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "; a file the program is to make is granted by the directory it is in: {})",
                s(&d)
            )),
            "{t}: {}",
            r.stderr
        );
        let r = run(&[&grant], &probe(t), &["mkdir", s(&d.join("newdir"))]);
        assert!(
            r.stderr
                .contains(&format!("hint: --allow-write={}\n", s(&d))),
            "{t}: {}",
            r.stderr
        );
        // Nothing there: the same line, so that neither the line nor the
        // time it takes depends on what exists on the host (capsa looks at
        // nothing on the host for a name the guest chose).
        let missing = d.join("missing/x.txt");
        let r = run(&[&grant], &probe(t), &["read", s(&missing)]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!(
                "denied: read {} (outside every granted path)\n  hint: --allow-read={}\n",
                s(&missing),
                s(&missing)
            )),
            "{t}: {}",
            r.stderr
        );

        // Listing `/` shows nothing hidden, and never hints at granting it.
        let r = run(&[&grant], &probe(t), &["ls", "/"]);
        assert!(r.stdout.starts_with("err: NotFound"), "{t}: {}", r.stdout);
        assert!(
            r.stderr
                .contains("denied: list / (outside every granted path)"),
            "{t}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("--allow-read=/\n"), "{t}: {}", r.stderr);

        // The grant itself is as reachable as before, with no line.
        let r = run(&[&grant], &probe(t), &["read", s(&d.join("data/a.txt"))]);
        assert_eq!(r.stdout, "ok: alpha\n", "{t}: {}", r.stderr);
        assert_eq!(r.stderr, "", "{t}");
        assert_eq!(tree(&d), before, "{t}: the host changed");
    });
}

/// `..` out of a granted directory is named as such, with no hint: the
/// program could steer a hint of where it leads to any ancestor of a grant,
/// and that grant would not serve the path while the one it left is a
/// preopen of its own. Regression: the hint named the path as the guest
/// spelled it from `/` (`/neighbour.txt` for `data/../neighbour.txt` from
/// the working directory), a host path that had nothing to do with it.
#[test]
fn a_path_climbing_out_of_a_grant_is_named_with_no_hint() {
    let (_g, d) = setup();
    let code = "print(open('data/../neighbour.txt').read())";
    let r = py_in(&d, &["--allow-read=data"], &["-c", code], "");
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(!r.stdout.contains("private"), "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "(the path leaves the granted directory {}/data by `..`)",
            s(&d)
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("hint:"), "{}", r.stderr);
    // A climb above a descriptor's own directory that stays in its grant
    // is refused whatever is granted.
    let code = "import os\nfd = os.open('data/sub', os.O_RDONLY)\nos.open('../a.txt', os.O_RDONLY, dir_fd=fd)";
    let r = py_in(&d, &[&format!("--allow-read={}", s(&d))], &["-c", code], "");
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("capability of its own"), "{}", r.stderr);
    assert!(!r.stderr.contains("hint:"), "{}", r.stderr);
}

/// A relative name, as typed in the program, is named as the user knows
/// it: a program's working directory is `/` unless granted.
#[test]
fn a_relative_path_outside_every_grant_is_named_as_typed() {
    let (_g, d) = setup();
    let r = run_in(&d, &[], &probe(P2), &["read", "notes.txt"]);
    assert!(r.stdout.starts_with("err: NotFound"), "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "capsa: denied: read notes.txt (outside every granted path)\n  hint: --allow-read=notes.txt::/notes.txt\n"
        ),
        "{}",
        r.stderr
    );
    // And the hint works as printed.
    let r = run_in(
        &d,
        &["--allow-read=notes.txt::/notes.txt"],
        &probe(P2),
        &["read", "notes.txt"],
    );
    assert_eq!(r.stdout, "ok: notes\n", "{}", r.stderr);
    // A new directory in the working directory: the hint mounts it at `/`,
    // and works as printed.
    let r = run_in(&d, &[], &probe(P2), &["mkdir", "newdir"]);
    assert!(
        r.stderr.contains("hint: --allow-write=.::/\n"),
        "{}",
        r.stderr
    );
    let r = run_in(
        &d,
        &["--allow-write=.::/"],
        &probe(P2),
        &["mkdir", "newdir"],
    );
    assert_eq!(r.stdout, "ok: created\n", "{}", r.stderr);
    assert!(d.join("newdir").is_dir());

    // The working directory granted: the program still looks from `/`,
    // and the line says so rather than "outside every granted path".
    let r = run_in(&d, &["--allow-read=."], &probe(P2), &["read", "notes.txt"]);
    assert!(r.stdout.starts_with("err: NotFound"), "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "capsa: denied: read notes.txt (the program looks a relative path up from /, not from the granted working directory)\n  hint: --allow-read=notes.txt::/notes.txt\n"
        ),
        "{}",
        r.stderr
    );
    // The file itself granted: the same, and the line says it is granted
    // where the program does not look.
    let r = run_in(
        &d,
        &["--allow-read=notes.txt"],
        &probe(P2),
        &["read", "notes.txt"],
    );
    assert!(r.stdout.starts_with("err: NotFound"), "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "capsa: denied: read notes.txt (the program looks a relative path up from /, not from the working directory, where it is granted)\n  hint: --allow-read=notes.txt::/notes.txt\n"
        ),
        "{}",
        r.stderr
    );
    // Granted as `/` too, every relative path reaches it.
    let r = run_in(
        &d,
        &["--allow-read=.::/"],
        &probe(P2),
        &["read", "notes.txt"],
    );
    assert_eq!(r.stdout, "ok: notes\n", "{}", r.stderr);
}

/// An absolute path asked for from a directory (Zig's standard library
/// opens every path from the first preopen): WASI refuses it, and the line
/// says what happened, not that `..` was climbed.
#[test]
fn an_absolute_path_from_a_directory_is_named_as_such() {
    let (_g, d) = setup();
    let program = d.join("absolute.wat");
    std::fs::write(
        &program,
        format!(
            r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{notes}")
  (func (export "_start")
    (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const {len})
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))))"#,
            notes = s(&d.join("notes.txt")),
            len = s(&d.join("notes.txt")).len()
        ),
    )
    .unwrap();
    let grant = format!("--allow-read={}", s(&d));
    let r = run(&[&grant], &program, &[]);
    // EPERM (63) from preview 1, as wasmtime answers.
    assert_eq!(r.code, 63, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "denied: read {} (an absolute path, asked for from the directory {}: WASI looks a path up only below the directory it starts from)",
            s(&d.join("notes.txt")),
            s(&d)
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("`..`"), "{}", r.stderr);
    // From the working directory's view (descriptor 3 when only a file in
    // it is granted), named as that.
    let r = run_in(&d, &["--allow-read=neighbour.txt"], &program, &[]);
    assert_eq!(r.code, 63, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "denied: read {} (an absolute path, asked for from the working directory: WASI",
            s(&d.join("notes.txt"))
        )),
        "{}",
        r.stderr
    );
}

/// Under `--quiet` the guarded root says nothing, and the guest cannot
/// make anything in it (it is a removed directory).
#[test]
fn the_guarded_root_holds_nothing() {
    both(|t| {
        let (_g, d) = setup();
        for (op, path) in [("write", "/x.txt"), ("mkdir", "/newdir")] {
            let r = run(&["--quiet"], &probe(t), &[op, path, "x"]);
            assert!(r.stdout.starts_with("err:"), "{t} {op}: {}", r.stdout);
            assert_eq!(r.stderr, "", "{t} {op}");
        }
        // Nor can a file of a grant be moved or linked into it.
        let grant = format!("--allow-write={}", s(&d.join("out")));
        std::fs::write(d.join("out/f"), "kept").unwrap();
        let before_out = tree(&d);
        for (op, to) in [("rename", "/f"), ("link", "/g")] {
            let r = run(&[&grant], &probe(t), &[op, s(&d.join("out/f")), to]);
            assert!(r.stdout.starts_with("err:"), "{t} {op}: {}", r.stdout);
            assert!(
                r.stderr.contains("outside every granted path"),
                "{t} {op}: {}",
                r.stderr
            );
        }
        assert_eq!(tree(&d), before_out, "{t}: the host changed");
        // Where the guarded root is made (in memory on Linux).
        let leftovers: Vec<_> = [std::env::temp_dir(), "/dev/shm".into()]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".capsa-root-"))
            .filter(|e| std::fs::read_dir(e.path()).is_ok_and(|mut r| r.next().is_some()))
            .collect();
        assert!(leftovers.is_empty(), "{t}: {leftovers:?}");
        let _ = d;
    });
}

/// The guarded root has no name while the guest runs: capsa holds it by
/// its descriptor only, so a run killed (or ended at its time limit, which
/// exits at once) leaves nothing behind.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_run_leaves_no_guarded_root_behind() {
    both(|t| {
        let mut child = capsa()
            .args(["run", "--quiet", s(&probe(t)), "stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let fds = format!("/proc/{}/fd", child.id());
        // Held before the guest starts, which then waits on its stdin.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let held = loop {
            let roots: Vec<String> = std::fs::read_dir(&fds)
                .into_iter()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .filter(|p| p.contains(".capsa-root-"))
                .collect();
            if !roots.is_empty() {
                break roots;
            }
            assert!(std::time::Instant::now() < deadline, "{t}: no root held");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        for root in held {
            let name = root.strip_suffix(" (deleted)");
            assert!(name.is_some(), "{t}: {root} still has its name");
            assert!(!Path::new(name.unwrap()).exists(), "{t}: {root} left");
        }
    });
}

/// `HOST::name` without a leading `/` is a name, as WASI preopens are
/// (the WASI test suite maps its directories so): it is `/name`.
#[test]
fn a_relative_guest_path_is_taken_from_the_root() {
    let (_g, d) = setup();
    let grant = format!("--allow-read={}::data.dir", s(&d.join("data")));
    both(|t| {
        for path in ["data.dir/a.txt", "/data.dir/a.txt"] {
            let r = run(&[&grant], &probe(t), &["read", path]);
            assert_eq!(r.stdout, "ok: alpha\n", "{t} {path}: {}", r.stderr);
        }
    });
    // The guest is told the name as given, as programs look it up so.
    let r = run(&[&grant], &wat("preopen-name.wat"), &[]);
    assert_eq!(r.stdout, "data.dir\n", "{}", r.stderr);
    let abs = format!("--allow-read={}::/mnt/data", s(&d.join("data")));
    let r = run(&[&abs], &wat("preopen-name.wat"), &[]);
    assert_eq!(r.stdout, "/mnt/data\n", "{}", r.stderr);
    let r = run(
        &[&format!("--allow-read={}::", s(&d.join("data")))],
        &probe(P2),
        &["read", "/a.txt"],
    );
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("empty guest path"), "{}", r.stderr);
}

/// Descriptor 3, the directory Zig's standard library takes as its working
/// directory, is the working directory's grant whatever the flags' order;
/// without one, the working directory showing only the grants it holds.
#[test]
fn the_working_directory_is_the_first_directory() {
    let (_g, d) = setup();
    let name = wat("preopen-name.wat");
    for flags in [
        ["--allow-read=data", "--allow-write=."],
        ["--allow-read=data", "--allow-read=."],
        ["--allow-write=out", "--allow-write=."],
    ] {
        let r = run_in(&d, &flags, &name, &[]);
        assert_eq!(r.stdout, format!("{}\n", s(&d)), "{flags:?}: {}", r.stderr);
        // The other grant is still there, at its own path and relative one.
        let other = flags[0].split_once('=').unwrap().1;
        let r = run_in(&d, &flags, &probe(P1), &["ls", other]);
        assert_eq!(r.code, 0, "{flags:?}: {}", r.stderr);
    }
    let r = run_in(&d, &["--allow-write=out", "--allow-read=data"], &name, &[]);
    assert_eq!(r.stdout, format!("{}\n", s(&d)), "{}", r.stderr);
}

/// With the working directory not granted, a program that opens relative
/// paths from descriptor 3 (Zig) reaches the grants below it by their
/// paths, and nothing else: `a.txt` is not `data/a.txt` (it read that when
/// descriptor 3 was the first grant), and what it was refused is reported.
#[test]
fn from_descriptor_3_the_working_directory_shows_only_its_grants() {
    let (_g, d) = setup();
    std::fs::write(d.join("a.txt"), "cwd's own").unwrap();
    let flags = ["--allow-read=data", "--allow-read=notes.txt"];
    // Preview 1: Zig's target; wasi-libc for 0.2 numbers its directories
    // only once it first looks a path up.
    [P1].into_iter().for_each(|t| {
        for (path, want) in [("data/a.txt", "alpha"), ("notes.txt", "notes")] {
            let r = run_in(&d, &flags, &probe(t), &["read3", path]);
            assert_eq!(
                r.stdout,
                format!("ok: {want}\n"),
                "{t} {path}: {}",
                r.stderr
            );
        }
        // A folder below a folder that is not granted, through it.
        let r = run_in(&d, &["--allow-read=data/sub"], &probe(t), &["read3", "data/sub/b.txt"]);
        assert_eq!(r.stdout, "ok: beta\n", "{t}: {}", r.stderr);
        for path in ["data/a.txt", "data/x/../sub/b.txt", "data/sub/../a.txt"] {
            let r = run_in(&d, &["--allow-read=data/sub"], &probe(t), &["read3", path]);
            assert!(r.stdout.starts_with("err: NotFound"), "{t} {path}: {}", r.stdout);
            assert!(!r.stdout.contains("alpha") && !r.stdout.contains("beta"));
        }
        for path in ["a.txt", "secret.txt", "data/../secret.txt", "missing.txt"] {
            let r = run_in(&d, &flags, &probe(t), &["read3", path]);
            assert_eq!(r.code, 1, "{t} {path}: {}", r.stdout);
            assert!(
                r.stdout.starts_with("err: NotFound"),
                "{t} {path}: {}",
                r.stdout
            );
            assert!(!r.stdout.contains("alpha") && !r.stdout.contains("SECRET"));
            // A path with `..` is named as asked for, with no hint.
            assert!(
                r.stderr.contains(&format!(
                    "denied: read {path} (only data, notes.txt are granted in the working directory)"
                )),
                "{t} {path}: {}",
                r.stderr
            );
            assert_eq!(
                r.stderr.contains(&format!("hint: --allow-read={path}")),
                !path.contains(".."),
                "{t} {path}: {}",
                r.stderr
            );
        }
    });
}

/// `rmdir("dir/")` removes the directory, as POSIX has it (the WASI test
/// suite's `remove_directory_trailing_slashes`); a file so named is still
/// not a directory.
#[test]
fn remove_a_directory_named_with_a_trailing_slash() {
    both(|t| {
        let (_g, d) = setup();
        std::fs::create_dir(d.join("out/gone")).unwrap();
        let grant = format!("--allow-write={}", s(&d.join("out")));
        let path = format!("{}/", s(&d.join("out/gone")));
        let r = run(&[&grant], &probe(t), &["rmdir", &path]);
        assert_eq!(r.stdout, "ok: removed\n", "{t}: {}", r.stderr);
        assert!(!d.join("out/gone").exists());
        std::fs::write(d.join("out/file"), "x").unwrap();
        let path = format!("{}/", s(&d.join("out/file")));
        let r = run(&[&grant], &probe(t), &["rmdir", &path]);
        assert!(r.stdout.starts_with("err:"), "{t}: {}", r.stdout);
        assert!(d.join("out/file").exists());
    });
}

/// A guest's name may be megabytes long: its denial line is cut short
/// (with no hint, which would name another path), and capsa keeps no more.
#[test]
fn a_long_name_outside_every_grant_is_cut_short() {
    let (_g, d) = setup();
    let long = format!("/{}", "a".repeat(100_000));
    let r = run(&[], &probe(P2), &["read", &long]);
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    assert!(r.stderr.len() < 2000, "{} bytes", r.stderr.len());
    assert!(
        r.stderr.contains("aaa... (outside every granted path)"),
        "{}",
        &r.stderr[..200]
    );
    assert!(!r.stderr.contains("hint"));
    // Names that would move the terminal's cursor, or split a pasted hint
    // into two grants, reach it escaped and with no hint.
    for name in ["/\x1b[2Jx", "/a\nb", "/x,/root"] {
        let r = run(&[], &probe(P2), &["read", name]);
        assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
        assert!(!r.stderr.contains('\x1b'), "{:?}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
        assert!(!r.stderr.contains("hint"), "{:?}", r.stderr);
    }
    let _ = d;
}

/// The guarded root needs a temporary directory; without a usable
/// $TMPDIR, capsa uses /tmp, and the run goes on either way.
#[test]
fn an_unusable_tmpdir_does_not_stop_a_run() {
    let r: Run = capsa()
        .env("TMPDIR", "/nonexistent/tmp")
        .args(["run"])
        .arg(probe(P2))
        .arg("hello")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.stdout, "ok: hello from wasm\n", "{}", r.stderr);
    assert_eq!(r.code, 0);
}

/// A script run in its own folder, with a file there and a folder below
/// granted: relative names reach them as natively (Python changes to the
/// working directory, which shows only its grants), `os.getcwd()` is the
/// real one, and a name not granted there is not found, with the line
/// that names it and the flag that would allow it, as the user types it.
#[test]
fn python_reaches_files_granted_in_its_working_directory_by_their_names() {
    let (_t, d) = setup();
    std::fs::write(d.join("in.txt"), "input").unwrap();
    let source = r#"import os
print(os.getcwd() == os.environ.get("HERE", os.getcwd()), os.getcwd())
print(open("in.txt").read(), open("data/a.txt").read(), open("data/sub/b.txt").read())
print(sorted(os.listdir(".")))
fd = os.open(".", os.O_RDONLY)
print([(st.st_size, st.st_mtime) for st in (os.stat("."), os.fstat(fd))])
for name, fn in [("secret", lambda: open("secret.txt").read()),
                 ("missing", lambda: os.stat("missing.txt")),
                 ("climb", lambda: open("data/../secret.txt").read()),
                 ("write", lambda: open("new.txt", "w").write("x")),
                 ("sub", lambda: open("out/x.txt", "w").write("x"))]:
    try:
        fn()
        print(name, "reached")
    except OSError as e:
        print(name, type(e).__name__)
"#;
    let r = py_script(
        &d,
        &["--allow-read=in.txt", "--allow-read=data"],
        "main.py",
        source,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "True {}\ninput alpha beta\n['data', 'in.txt', 'main.py']\n[(0, 0.0), (0, 0.0)]\n\
             secret FileNotFoundError\nmissing FileNotFoundError\n\
             climb PermissionError\nwrite PermissionError\nsub PermissionError\n",
            s(&d)
        ),
        "{}",
        r.stderr
    );
    for line in [
        "denied: read secret.txt (only in.txt, data, main.py are granted in the working directory)\n  hint: --allow-read=secret.txt\n",
        "denied: stat missing.txt (only in.txt, data, main.py are granted in the working directory)\n  hint: --allow-read=missing.txt\n",
        "denied: write to new.txt (only in.txt, data, main.py are granted in the working directory)\n  hint: --allow-write=new.txt\n",
        "denied: write to out/x.txt (only in.txt, data, main.py are granted in the working directory)\n  hint: --allow-write=out/x.txt\n",
        // wasi-libc takes `data/..` from the grant `data`, which `..` leaves.
        "the path leaves the granted directory",
    ] {
        assert!(r.stderr.contains(line), "{line}: {}", r.stderr);
    }
    assert!(!d.join("new.txt").exists() && !d.join("out/x.txt").exists());
    assert_eq!(
        std::fs::read_to_string(d.join("secret.txt")).unwrap(),
        "TOP SECRET"
    );
}

/// A script run from a folder that holds no grant (a tool kept elsewhere,
/// given a file of the folder it is run in): Python starts in that folder,
/// empty, as natively, so that a relative name is refused as the working
/// directory's, with the flag that grants that very file, and reached once
/// it is given; nothing there is reached or changed before. A program
/// that does not change to its working directory keeps descriptor 3 as the
/// first grant (Zig's, as with wasmtime's first `--dir`).
#[test]
fn a_working_directory_holding_no_grant_is_there_empty_for_python() {
    let (_t, d) = setup();
    let (tools, work) = (d.join("tools"), d.join("work"));
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("in.txt"), "input").unwrap();
    std::fs::write(work.join("a.txt"), "work's own").unwrap();
    let script = tools.join("t.py");
    python_ready();
    std::fs::write(
        &script,
        r#"import os, sys
print(os.getcwd(), os.listdir(".") if os.getcwd() != "/" else None)
for name, fn in [("in", lambda: open("in.txt").read()),
                 ("stat", lambda: os.stat("a.txt").st_size),
                 ("write", lambda: open("new.txt", "w").write("x")),
                 ("climb", lambda: open("../data/a.txt").read()),
                 ("back", lambda: open("../work/in.txt").read()),
                 ("root", lambda: os.mkdir("nosub/../../../../.."))]:
    try:
        print(name, fn())
    except OSError as e:
        print(name, type(e).__name__)
"#,
    )
    .unwrap();
    let r = run_in(&work, &[], &script, &[]);
    assert_eq!(
        r.stdout,
        format!(
            "{} []\nin FileNotFoundError\nstat FileNotFoundError\nwrite PermissionError\n\
             climb PermissionError\nback PermissionError\nroot PermissionError\n",
            s(&work)
        ),
        "{}",
        r.stderr
    );
    for line in [
        "denied: read in.txt (nothing is granted in the working directory)\n  hint: --allow-read=in.txt\n",
        "denied: stat a.txt (nothing is granted in the working directory)\n  hint: --allow-read=a.txt\n",
        "denied: write to new.txt (nothing is granted in the working directory)\n  hint: --allow-write=new.txt\n",
        // Named as asked for, with no hint: its text folded is not where
        // the walk went (`/`, for the last).
        "denied: read ../data/a.txt (the path leaves the working directory by `..`)\n",
        "denied: read ../work/in.txt (the path leaves the working directory by `..`)\n",
        "denied: create directory nosub/../../../../.. (nothing is granted in the working directory)\n",
    ] {
        assert!(r.stderr.contains(line), "{line}: {}", r.stderr);
    }
    assert!(
        !r.stderr.contains("hint: --allow-write=/\n"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("hint:").count(), 3, "{}", r.stderr);
    assert!(!work.join("new.txt").exists());
    // Under `--deny-read`, not even `.` is looked at: Python stays at `/`.
    let r = run_in(&work, &["--deny-read=."], &script, &[]);
    assert!(r.stdout.starts_with("/ None\n"), "{}", r.stdout);
    assert!(!r.stderr.contains("denied: stat ."), "{}", r.stderr);
    // The hint, taken: the file the program meant.
    let r = run_in(&work, &["--allow-read=in.txt"], &script, &[]);
    assert!(r.stdout.contains("\nin input\n"), "{}", r.stderr);
    assert!(
        r.stdout.contains("\nstat FileNotFoundError\n"),
        "{}",
        r.stdout
    );
    // A WASI program's descriptor 3 is still the first grant.
    let grant = format!("--allow-read={}", s(&d.join("data")));
    let r = run_in(&work, &[&grant], &probe(P1), &["read3", "a.txt"]);
    assert_eq!(r.stdout, "ok: alpha\n", "{}", r.stderr);
}

/// A folder on the way to a deeper grant (`data` to `--allow-read=data/sub`)
/// lists the way and nothing else, decided on what each name is (a link
/// named like the way is not shown), so that `os.walk`, `glob("**")` and a
/// listing from the working directory find what is granted below it; it
/// stats as a bare directory, opened or not, and opening it gives nothing
/// more: not what is beside the way, not `..`, no change.
#[test]
fn a_folder_on_the_way_to_a_grant_lists_only_the_way() {
    let (_t, d) = setup();
    std::fs::create_dir(d.join("data/private")).unwrap();
    std::fs::write(d.join("data/private/p.txt"), "private").unwrap();
    std::os::unix::fs::symlink("sub", d.join("data/link")).unwrap();
    let grant = "--allow-read=data/sub";
    both(|t| {
        let r = run_in(&d, &[grant], &probe(t), &["ls", s(&d.join("data"))]);
        assert_eq!(r.stdout, "ok: sub\n", "{t}: {}", r.stderr);
        let r = run_in(&d, &[grant], &probe(t), &["ls", s(&d.join("data/private"))]);
        assert!(r.stdout.starts_with("err:"), "{t}: {}", r.stdout);
    });
    let source = r#"import os, glob
print(sorted(os.listdir("data")))
print(sorted((r, sorted(ds), sorted(fs)) for r, ds, fs in os.walk(".")))
print(sorted(glob.glob("**/*.txt", recursive=True)))
fd = os.open("data", os.O_RDONLY | os.O_DIRECTORY)
print([(st.st_size, st.st_mtime, st.st_nlink) for st in (os.fstat(fd), os.stat("data"))])
print(os.open("sub/b.txt", os.O_RDONLY, dir_fd=fd) > 0)
for name, fn in [("a", lambda: open("data/a.txt").read()),
                 ("from", lambda: os.open("a.txt", os.O_RDONLY, dir_fd=fd)),
                 ("up", lambda: os.open("../secret.txt", os.O_RDONLY, dir_fd=fd)),
                 ("private", lambda: os.listdir("data/private")),
                 ("mkdir", lambda: os.mkdir("new", dir_fd=fd)),
                 ("rw", lambda: os.open("data", os.O_RDWR | os.O_DIRECTORY))]:
    try:
        fn()
        print(name, "reached")
    except OSError as e:
        print(name, type(e).__name__)
"#;
    let r = py_script(&d, &[grant], "main.py", source, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "['sub']\n\
         [('.', ['data'], ['main.py']), ('./data', ['sub'], []), ('./data/sub', [], ['b.txt'])]\n\
         ['data/sub/b.txt']\n\
         [(0, 0.0, 1), (0, 0.0, 1)]\n\
         True\n\
         a FileNotFoundError\nfrom FileNotFoundError\nup PermissionError\n\
         private FileNotFoundError\nmkdir PermissionError\nrw PermissionError\n",
        "{}",
        r.stderr
    );
    assert!(!d.join("data/new").exists());
    assert!(!r.stderr.contains("private/p.txt") && !r.stdout.contains("p.txt"));
}

/// The way is decided on the objects found at start, not on names: the
/// host renames the grant `data/sub` to `data/gone` during the run and
/// makes a new `data/sub`; listing `data` then shows `gone` (the granted
/// folder) and not the new `sub`, which stays unreachable.
#[test]
fn a_folder_on_the_way_lists_what_is_granted_whatever_its_name_now() {
    python_ready();
    let (_t, d) = setup();
    std::fs::create_dir(d.join("sig")).unwrap();
    let script = d.join("main.py");
    std::fs::write(
        &script,
        r#"import os, time
print(sorted(os.listdir("data")))
open("sig/ready", "w").close()
end = time.time() + 60
while not os.path.exists("sig/go") and time.time() < end:
    time.sleep(0.01)
print(sorted(os.listdir("data")))
print(open("data/gone/b.txt").read())
try:
    print(open("data/sub/new.txt").read())
except OSError as e:
    print("new", type(e).__name__)
"#,
    )
    .unwrap();
    let child = run_until_ready(&d, &["--allow-read=data/sub", "--allow-write=sig"], &script);
    std::fs::rename(d.join("data/sub"), d.join("data/gone")).unwrap();
    std::fs::create_dir(d.join("data/sub")).unwrap();
    std::fs::write(d.join("data/sub/new.txt"), "not granted").unwrap();
    std::fs::write(d.join("sig/go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        stdout, "['sub']\n['gone']\nbeta\nnew FileNotFoundError\n",
        "{stderr}"
    );
}

/// `capsa run FLAGS script` from `d`, its output piped, once the script has
/// made `sig/ready` (or a minute has passed): the host changes things then.
fn run_until_ready(d: &Path, flags: &[&str], script: &Path) -> std::process::Child {
    let child = capsa()
        .current_dir(d)
        .arg("run")
        .args(flags)
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !d.join("sig/ready").exists() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child
}

/// A name the host re-points between capsa's check and the call is not
/// acted on: a host process swaps `data/pub` with `data/private` (read and
/// write denied) in a loop while the guest stats `data/pub` and sets its
/// times. Each answer and each change is on the object checked, so the
/// guest never sees the private file's times nor changes them (a stat or
/// `utime` done by name after the check reached it in the window).
#[test]
fn a_name_swapped_on_the_host_during_a_call_is_not_acted_on() {
    python_ready();
    let (_t, d) = setup();
    std::fs::create_dir(d.join("sig")).unwrap();
    let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    for (name, secs) in [("pub", 2_000_000), ("private", 1_000_000)] {
        std::fs::write(d.join("data").join(name), name).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("data").join(name))
            .unwrap();
        let t = at(secs);
        f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }
    let script = d.join("main.py");
    std::fs::write(
        &script,
        r#"import os, time
open("sig/ready", "w").close()
end = time.time() + 60
while not os.path.exists("sig/go") and time.time() < end:
    time.sleep(0.01)
seen = {"pub": 0, "private": 0}
for _ in range(1500):
    try:
        st = os.stat("data/pub")
        seen["private" if int(st.st_mtime) == 1000000 else "pub"] += 1
    except OSError:
        pass
    try:
        os.utime("data/pub", (5, 5))
    except OSError:
        pass
print(seen["private"], seen["pub"] > 0)
"#,
    )
    .unwrap();
    let flags = [
        "--allow-write=data",
        "--deny-read=data/private",
        "--deny-write=data/private",
        "--allow-write=sig",
    ];
    let child = run_until_ready(&d, &flags, &script);
    // The rules were taken at start, on the objects: now the names move.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, data) = (stop.clone(), d.join("data"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::rename(data.join("pub"), data.join("tmp")).unwrap();
                std::fs::rename(data.join("private"), data.join("pub")).unwrap();
                std::fs::rename(data.join("tmp"), data.join("private")).unwrap();
            }
        })
    };
    std::fs::write(d.join("sig/go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0 True\n", "{stderr}");
    // Found by what they hold, whichever name each has now.
    for name in ["pub", "private"] {
        let path = d.join("data").join(name);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        match std::fs::read_to_string(&path).unwrap().as_str() {
            "private" => assert_eq!(mtime, at(1_000_000), "{stderr}"),
            "pub" => assert_eq!(mtime, at(5), "{stderr}"),
            other => panic!("{other}"),
        }
    }
}

/// Times set and stats read through a granted folder are the host's, to
/// the nanosecond, as a native program sets and reads them: a file, a
/// directory, a link's own times (not its target's), "now", and the same
/// inode by name, by descriptor and in a listing.
#[test]
fn times_and_stats_by_name_are_the_objects_own() {
    python_ready();
    let (_t, d) = setup();
    let w = d.join("data");
    std::fs::write(w.join("f"), "12345").unwrap();
    std::fs::write(w.join("target"), "t").unwrap();
    std::os::unix::fs::symlink("target", w.join("l")).unwrap();
    let script = d.join("main.py");
    std::fs::write(
        &script,
        r#"import os, time
os.utime("data/f", ns=(1500000000123456789, 1600000000987654321))
os.utime("data/sub", ns=(1400000000000000001, 1400000000000000002))
os.utime("data/l", ns=(1300000000000000003, 1300000000000000004), follow_symlinks=False)
before = time.time()
os.utime("data/target")
st = os.stat("data/f")
fd = os.open("data/f", os.O_RDONLY)
listed = [e.inode() for e in os.scandir("data") if e.name == "f"]
print(st.st_size, st.st_atime_ns, st.st_mtime_ns, st.st_ino == os.fstat(fd).st_ino, listed == [st.st_ino])
print(os.lstat("data/l").st_mtime_ns, abs(os.stat("data/l").st_mtime - before) < 60)
try:
    os.utime("data/missing")
except OSError as e:
    print(type(e).__name__)
"#,
    )
    .unwrap();
    let r = run_in(&d, &["--allow-write=data"], &script, &[]);
    assert_eq!(
        r.stdout,
        "5 1500000000123456789 1600000000987654321 True True\n1300000000000000004 True\nFileNotFoundError\n",
        "{}",
        r.stderr
    );
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::metadata(w.join("f")).unwrap();
    assert_eq!((f.atime(), f.atime_nsec()), (1_500_000_000, 123_456_789));
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_600_000_000, 987_654_321));
    let sub = std::fs::metadata(w.join("sub")).unwrap();
    assert_eq!((sub.mtime(), sub.mtime_nsec()), (1_400_000_000, 2));
    let l = std::fs::symlink_metadata(w.join("l")).unwrap();
    // (Its access time is now: following it reads it.)
    assert_eq!((l.mtime(), l.mtime_nsec()), (1_300_000_000, 4));
    let t = std::fs::metadata(w.join("target")).unwrap();
    assert!(t.mtime() > 1_700_000_000, "{}", t.mtime());
}

/// The working directory's view tells nothing of the host however it is
/// reached: by its own path, from its descriptor, and by name from a grant
/// around it (the script's folder above it, spelled `/parent/./cwd` so that
/// wasi-libc takes it from there); and capsa's own grants inside it (its
/// cache) are not shown as the working directory's.
#[test]
fn the_working_directorys_view_tells_nothing_of_the_host_by_any_way() {
    let (_t, d) = setup();
    let cwd = d.join("data");
    let source = format!(
        r#"import os
for p in (".", {cwd:?}, {dotted:?}):
    st = os.stat(p)
    print(st.st_size, st.st_mtime, st.st_nlink)
"#,
        cwd = s(&cwd),
        dotted = format!("{}/./data", s(&d)),
    );
    let script = d.join("probe.py");
    std::fs::write(&script, source).unwrap();
    python_ready();
    let r = run_in(&cwd, &["--allow-read=sub"], &script, &[]);
    assert_eq!(r.stdout, "0 0.0 1\n".repeat(3), "{}", r.stderr);
    // capsa's cache inside the working directory (the tests' cache, in the
    // folder it is in): its grants of the standard library are not listed.
    let shared = cache_dir();
    let here = shared.parent().unwrap();
    let name = format!("view-{}.py", std::process::id());
    std::fs::write(here.join(&name), "import os\nprint(os.listdir('.'))\n").unwrap();
    let r = run_in(here, &[], &here.join(&name), &[]);
    std::fs::remove_file(here.join(&name)).unwrap();
    assert_eq!(r.stdout, format!("['{name}']\n"), "{}", r.stderr);
    assert!(!r.stderr.contains("capsa-cache"), "{}", r.stderr);
}

/// In a directory the walk goes through on the way to a grant, a name that
/// is there and one that is not fail alike, with the same line: the hint
/// names the path either way (it named the directory for a missing one).
#[test]
fn beside_the_way_to_a_grant_a_name_there_and_one_not_fail_alike() {
    let (_t, d) = setup();
    std::fs::create_dir(d.join("data/private")).unwrap();
    let source = r#"import os, sys
for p in sys.argv[1:]:
    for name, fn in [("write", lambda: open(p, "w")),
                     ("utime", lambda: os.utime(p, (1, 1))),
                     ("mkdir", lambda: os.mkdir(p + "/x")),
                     ("read", lambda: open(p + "/x").read())]:
        try:
            fn()
            print(name, p, "reached")
        except OSError as e:
            print(name, p, type(e).__name__, e.errno)
"#;
    let pairs = [
        ("data/a.txt", "data/none.txt"),
        ("data/private", "data/nodir"),
    ];
    for (there, not) in pairs {
        let r = py_script(
            &d,
            &["--allow-write=data/sub"],
            "main.py",
            source,
            &[there, not],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!r.stdout.contains("reached"), "{}", r.stdout);
        let same = |v: Vec<&str>, n: &str| v.join("\n").replace(n, "P");
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines.len(), 8, "{}", r.stdout);
        assert_eq!(
            same(lines[..4].to_vec(), there),
            same(lines[4..].to_vec(), not),
            "{}",
            r.stdout
        );
        // Each denial line and its hint, for one name and for the other.
        let stderr = r.stderr.replace("\n  hint:", " hint:");
        let (a, b): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| l.contains(there));
        assert_eq!(a.len(), 4, "{}", r.stderr);
        assert_eq!(same(a, there), same(b, not), "{}", r.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(d.join("data/a.txt")).unwrap(),
        "alpha"
    );
    assert!(!d.join("data/none.txt").exists() && !d.join("data/private/x").exists());
}

/// Through the working directory's view, with a writable folder granted
/// below a folder that is not: links the program makes there pointing up
/// out of it, renames of the folders on the way and of the grant, and
/// reads through such links all fail, and nothing on the host changes.
#[test]
fn a_link_or_rename_from_below_the_way_to_a_grant_changes_nothing() {
    let (_t, d) = setup();
    let source = r#"import os
def attempt(name, f):
    try:
        f()
        print(name, "reached")
    except OSError as e:
        print(name, type(e).__name__)
attempt("link-up", lambda: os.symlink("../a.txt", "data/sub/up"))
attempt("link-top", lambda: os.symlink("../../secret.txt", "data/sub/top"))
attempt("link-abs", lambda: os.symlink(os.getcwd() + "/secret.txt", "data/sub/abs"))
attempt("read-up", lambda: open("data/sub/up").read())
attempt("rename-way", lambda: os.rename("data", "moved"))
attempt("rename-grant", lambda: os.rename("data/sub", "data/sub2"))
attempt("rename-in", lambda: os.rename("secret.txt", "data/sub/s.txt"))
attempt("link-in", lambda: os.link("data/a.txt", "data/sub/a.txt"))
attempt("own", lambda: open("data/sub/b.txt", "w").write("mine"))
"#;
    let before: Vec<_> = tree(&d)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("data/sub/") && p != "main.py")
        .collect();
    let r = py_script(&d, &["--allow-write=data/sub"], "main.py", source, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in [
        "link-up PermissionError",
        "link-top PermissionError",
        "link-abs PermissionError",
        "read-up FileNotFoundError",
        "rename-way PermissionError",
        "rename-grant PermissionError",
        "rename-in PermissionError",
        "link-in PermissionError",
        "own reached",
    ] {
        assert!(
            r.stdout.contains(&format!("{line}\n")),
            "{line}: {}\n{}",
            r.stdout,
            r.stderr
        );
    }
    let after: Vec<_> = tree(&d)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("data/sub/") && p != "main.py")
        .collect();
    assert_eq!(before, after);
    let sub: Vec<String> = std::fs::read_dir(d.join("data/sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(sub, ["b.txt"]);
    assert_eq!(
        std::fs::read_to_string(d.join("data/sub/b.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn directories_on_the_way_to_a_grant_stat_as_bare_directories_and_nothing_more() {
    python_ready();
    let (_t, d) = setup();
    let grant = d.join("data/sub");
    let code = format!(
        r#"import os
D = {d:?}
print(os.path.isdir(D), os.path.isdir(D + "/data"), os.path.realpath(D + "/data/sub") == D + "/data/sub")
st = os.stat(D + "/data")
print(st.st_size, st.st_mtime, st.st_ino != os.stat(D).st_ino)
print(os.listdir(D + "/data"))
for name, fn in [("neighbour", lambda: open(D + "/data/a.txt").read()),
                 ("beside", lambda: os.stat(D + "/secret.txt"))]:
    try:
        fn()
        print(name, "reached")
    except OSError as e:
        print(name, type(e).__name__)
"#,
        d = s(&d)
    );
    let r = py_code(&d, &[&format!("--allow-read={}", s(&grant))], &code);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "True True True\n0 0.0 True\n['sub']\nneighbour FileNotFoundError\nbeside FileNotFoundError\n"
    );
    // Only the refusals are reported; the directories on the way are not.
    assert!(
        !r.stderr.contains(&format!("stat {} ", s(&d))),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains(&format!("stat {}/data ", s(&d))),
        "{}",
        r.stderr
    );
    // Through the working directory, which holds the grant: its paths are
    // shown from it, as a user types them.
    for line in [
        "denied: read data/a.txt (outside every granted path)\n",
        "denied: stat secret.txt (only data/sub is granted in the working directory)\n",
    ] {
        assert!(r.stderr.contains(line), "{line}: {}", r.stderr);
    }
}

#[test]
fn making_a_granted_folder_again_says_it_exists() {
    python_ready();
    let (_t, d) = setup();
    let code = format!(
        "import os\nos.makedirs({out:?}, exist_ok=True)\ntry:\n    os.makedirs({out:?})\nexcept FileExistsError:\n    print('exists')\n",
        out = s(&d.join("out"))
    );
    let r = py_code(
        &d,
        &[&format!("--allow-write={}", s(&d.join("out")))],
        &code,
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "exists\n"), "{}", r.stderr);
    assert!(!r.stderr.contains("denied"), "{}", r.stderr);
}

#[test]
fn a_rename_between_two_writable_grants_is_cross_device_and_moves_nothing() {
    python_ready();
    let (_t, d) = setup();
    std::fs::write(d.join("out/f.txt"), "mine").unwrap();
    let other = d.join("data/sub");
    let code = format!(
        r#"import errno, os, shutil
try:
    os.rename({src:?}, {dst:?})
    print("moved")
except OSError as e:
    print(errno.errorcode[e.errno])
print(os.path.exists({src:?}), os.path.exists({dst:?}))
shutil.move({src:?}, {dst:?})
print(open({dst:?}).read())
"#,
        src = s(&d.join("out/f.txt")),
        dst = s(&other.join("f.txt"))
    );
    let r = py_code(
        &d,
        &[&format!(
            "--allow-write={},{}",
            s(&d.join("out")),
            s(&other)
        )],
        &code,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "EXDEV\nTrue False\nmine\n");
    assert!(!r.stderr.contains("denied"), "{}", r.stderr);
    // shutil.move copied it, each step checked: it is where it was sent.
    assert!(!d.join("out/f.txt").exists());
    assert_eq!(
        std::fs::read_to_string(other.join("f.txt")).unwrap(),
        "mine"
    );
    // Out of a read-only grant, a rename is still refused and reported.
    let code = format!(
        "import os\ntry:\n    os.rename({a:?}, {b:?})\nexcept OSError as e:\n    print(type(e).__name__)\n",
        a = s(&d.join("data/a.txt")),
        b = s(&d.join("out/a.txt"))
    );
    let r = py_code(
        &d,
        &[
            &format!("--allow-read={}", s(&d.join("data"))),
            &format!("--allow-write={}", s(&d.join("out"))),
        ],
        &code,
    );
    assert_eq!(r.stdout, "PermissionError\n", "{}", r.stderr);
    assert!(r.stderr.contains("denied: rename"), "{}", r.stderr);
    assert!(d.join("data/a.txt").exists() && !d.join("out/a.txt").exists());
}

/// Removing or renaming a name changes its directory: the hint names the
/// directory, and works as printed. Regression: it named the file, whose
/// grant changed nothing, and following it gave the same line again.
#[test]
fn a_name_removed_in_a_read_only_directory_hints_the_directory() {
    let (_g, d) = setup();
    let data = d.join("data");
    let read = format!("--allow-read={}", s(&data));
    let file = data.join("a.txt");
    for (cmd, args) in [
        ("rm", vec![s(&file).to_string()]),
        (
            "rename",
            vec![s(&file).to_string(), s(&data.join("b.txt")).to_string()],
        ),
    ] {
        let mut argv = vec![cmd];
        argv.extend(args.iter().map(String::as_str));
        let r = run(&[&read], &probe(P2), &argv);
        assert!(r.stdout.starts_with("err:"), "{cmd}: {}", r.stdout);
        let hint = format!("hint: --allow-write={}\n", s(&data));
        assert!(r.stderr.contains(&hint), "{cmd}: {}", r.stderr);
        let followed = format!("--allow-write={}", s(&data));
        let r = run(&[&read, &followed], &probe(P2), &argv);
        assert!(
            r.stdout.starts_with("ok: re"),
            "{cmd}: {}{}",
            r.stdout,
            r.stderr
        );
        if cmd == "rm" {
            assert!(!file.exists());
            std::fs::write(&file, "alpha").unwrap();
        }
    }
}

/// `--tmp`: Python's `tempfile` finds a private, empty folder of the run's
/// own (its TMPDIR) with no denial; the folder is gone when capsa ends,
/// with a tree in it, after a time limit and after Ctrl-C or `kill` too.
/// Without the flag, the
/// first refused temporary file is followed by one note naming it (not
/// under `--quiet`, nor when the program has a TMPDIR). Commands that
/// cannot take it say so.
#[test]
fn a_private_temporary_folder_with_tmp() {
    python_ready();
    let (_t, d) = setup();
    let script = d.join("tmp.py");
    std::fs::write(
        &script,
        r#"import os, sys, tempfile
t = tempfile.gettempdir()
print(t == os.environ["TMPDIR"], os.listdir(t))
with tempfile.NamedTemporaryFile() as f:
    print(os.path.dirname(f.name) == t)
p = tempfile.mkdtemp()
for i in range(100):
    p = os.path.join(p, "d")
    os.mkdir(p)
open(os.path.join(p, "deep.txt"), "w").write("deep")
print(t)
sys.stdout.flush()
while len(sys.argv) > 1:
    pass
"#,
    )
    .unwrap();
    let folder = |r: &Run| -> std::path::PathBuf {
        let last = r.stdout.lines().last().unwrap_or_default();
        assert!(last.contains("capsa-tmp-"), "{}\n{}", r.stdout, r.stderr);
        std::path::PathBuf::from(last)
    };
    let r = run_in(&d, &["--tmp"], &script, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("True []\nTrue\n"), "{}", r.stdout);
    assert_eq!(r.stderr, "");
    let first = folder(&r);
    assert!(
        first.starts_with(std::env::temp_dir()),
        "{}",
        first.display()
    );
    assert!(!first.exists(), "{} is left", first.display());
    // Another run, another folder; a run ended by its time limit leaves
    // nothing either.
    let r = run_in(&d, &["--tmp", "--timeout=3s"], &script, &["spin"]);
    assert_eq!(r.code, 124, "{}", r.stderr);
    let second = folder(&r);
    assert_ne!(first, second);
    assert!(!second.exists(), "{} is left", second.display());

    // Ended by a signal (Ctrl-C, kill): the folder goes, and the status is
    // the signal's.
    for signal in ["INT", "TERM"] {
        let mut child = capsa()
            .current_dir(&d)
            .args(["run", "--tmp"])
            .arg(&script)
            .arg("spin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let mut out = child.stdout.take().unwrap();
        let mut text = Vec::new();
        let mut byte = [0u8];
        while !(text.ends_with(b"\n") && String::from_utf8_lossy(&text).contains("capsa-tmp-")) {
            let n = std::io::Read::read(&mut out, &mut byte).unwrap();
            assert_eq!(n, 1, "{}", String::from_utf8_lossy(&text));
            text.push(byte[0]);
        }
        let text = String::from_utf8(text).unwrap();
        let folder = std::path::PathBuf::from(text.lines().last().unwrap());
        assert!(folder.exists());
        let kill = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(if signal == "INT" { 2 } else { 15 })
        );
        assert!(
            !folder.exists(),
            "{} is left after SIG{signal}",
            folder.display()
        );
    }

    // Without it: the refused names, then the note, once.
    let note = "capsa: note: for temporary files, --tmp gives the program a private folder (its TMPDIR), removed when the run ends\n";
    let r = run_in(&d, &[], &script, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.matches(note).count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("FileNotFoundError"), "{}", r.stderr);
    let r = run_in(&d, &["--quiet"], &script, &[]);
    assert!(!r.stderr.contains("note"), "{}", r.stderr);
    let r = run_in(&d, &["--env", "TMPDIR=/nowhere"], &script, &[]);
    assert!(!r.stderr.contains("--tmp"), "{}", r.stderr);

    // What cannot go with it.
    let tmp = std::env::temp_dir();
    let deny = format!("--deny-write={}", s(&tmp));
    let r = run_in(&d, &["--tmp", &deny], &script, &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains("which --deny-write refuses"),
        "{}",
        r.stderr
    );
    let r = run_in(&d, &["--tmp", "--env", "TMPDIR=/x"], &script, &[]);
    assert_eq!(r.code, 125);
    assert!(
        r.stderr.contains("--tmp sets the program's TMPDIR"),
        "{}",
        r.stderr
    );
    let r: Run = capsa()
        .args(["pip", "--tmp", "install", "--target", "libs", "six"])
        .current_dir(&d)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("--tmp is for capsa run"), "{}", r.stderr);
    assert!(!d.join("libs").exists());
}

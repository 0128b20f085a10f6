//! The escapes an independent review found in the fine-grained file rules
//! (a read-only or denied area inside a writable grant, capsa's own cache
//! inside a grant), each made for real by a Python guest: every open flag,
//! hard links and renames, renames of an ancestor, links the guest makes
//! itself followed by `..`, a descriptor kept while its name is re-pointed.
//! Each test asserts the attempt failed and that nothing on the host changed.

use crate::support::*;
use std::path::Path;

/// Runs `body` as a Python guest with `attempt(label, fn)` defined: each
/// attempt prints `label: ok VALUE` or `label: err KIND`.
fn attack(d: &Path, flags: &[&str], body: &str) -> Run {
    let source = format!(
        r#"
import os, sys
D = sys.argv[1]
def attempt(label, fn):
    try:
        v = fn()
        print(f"{{label}}: ok {{v!r}}")
    except Exception as e:
        print(f"{{label}}: err {{type(e).__name__}}")
{body}
"#
    );
    let script_dir = d.join("script");
    std::fs::create_dir_all(&script_dir).unwrap();
    py_script(&script_dir, flags, "attack.py", &source, &[s(d)])
}

/// Every attempt named in `labels` failed.
fn all_failed(r: &Run, labels: &[&str]) {
    for l in labels {
        let line = r
            .stdout
            .lines()
            .find(|x| x.starts_with(&format!("{l}: ")))
            .unwrap_or_else(|| panic!("no attempt {l}: {}\n{}", r.stdout, r.stderr));
        assert!(line.contains(": err "), "{line}\n{}", r.stderr);
    }
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::symlink_metadata(p).unwrap().modified().unwrap()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let (t, d) = scratch();
    let w = d.join("w");
    std::fs::create_dir_all(w.join("ro/sub")).unwrap();
    std::fs::create_dir_all(w.join("proj/.git/hooks")).unwrap();
    std::fs::write(w.join("ro/victim"), "KEEP").unwrap();
    std::fs::write(w.join("secret.txt"), "TOP SECRET").unwrap();
    std::fs::write(w.join("proj/.git/hooks/README"), "hooks").unwrap();
    (t, d)
}

// Regression: --deny-read was not consulted for opens classed as writes
// (`r+` gave a readable descriptor), nor for hard links and renames.
#[test]
fn deny_read_holds_for_every_open_flag_link_and_rename() {
    let (_g, d) = setup();
    let w = d.join("w");
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--deny-read={}", s(&w.join("secret.txt"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let before = tree(&w);
    let r = attack(
        &d,
        &flags,
        r#"
S = D + "/w/secret.txt"
for mode in ["r", "r+", "w", "w+", "a", "a+", "rb", "x"]:
    attempt("open-" + mode, lambda: open(S, mode).read(5) if "r" in mode or "+" in mode else open(S, mode).close())
for name, fl in [("rdwr", os.O_RDWR), ("wronly", os.O_WRONLY), ("trunc", os.O_WRONLY | os.O_TRUNC), ("creat", os.O_RDWR | os.O_CREAT), ("append", os.O_WRONLY | os.O_APPEND)]:
    attempt("os-" + name, lambda: os.read(os.open(S, fl), 5) if fl & os.O_RDWR else os.open(S, fl))
attempt("link", lambda: os.link(S, D + "/w/copy"))
attempt("read-link", lambda: open(D + "/w/copy").read())
attempt("rename", lambda: os.rename(S, D + "/w/moved"))
attempt("read-moved", lambda: open(D + "/w/moved").read())
attempt("remove", lambda: os.remove(S))
attempt("stat", lambda: os.stat(S).st_size)
attempt("utime", lambda: os.utime(S, (0, 0)))
attempt("symlink-then-read", lambda: (os.symlink("secret.txt", D + "/w/alias"), open(D + "/w/alias").read()))
"#,
    );
    all_failed(
        &r,
        &[
            "open-r",
            "open-r+",
            "open-w",
            "open-w+",
            "open-a",
            "open-a+",
            "open-rb",
            "open-x",
            "os-rdwr",
            "os-wronly",
            "os-trunc",
            "os-creat",
            "os-append",
            "link",
            "read-link",
            "rename",
            "read-moved",
            "remove",
            "stat",
            "utime",
            "symlink-then-read",
        ],
    );
    assert!(!r.stdout.contains("TOP"), "{}", r.stdout);
    let after: Vec<_> = tree(&w)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("alias"))
        .collect();
    assert_eq!(after, before, "the host changed: {}", r.stdout);
}

// Regression: renaming an ancestor of a protected path was a write to the
// ancestor only, so `.git` could be moved away, its hooks written, and
// moved back; or replaced by a new `.git` the next `git` run would use.
#[test]
fn renaming_an_ancestor_does_not_lift_a_deny() {
    let (_g, d) = setup();
    let w = d.join("w");
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--deny-write={}", s(&w.join("proj/.git/hooks"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let before = tree(&w);
    let r = attack(
        &d,
        &flags,
        r#"
P = D + "/w/proj"
attempt("direct", lambda: open(P + "/.git/hooks/pre-commit", "w").write("pwned"))
attempt("rename-git", lambda: os.rename(P + "/.git", P + "/g2"))
attempt("via-renamed", lambda: open(P + "/g2/hooks/pre-commit", "w").write("pwned"))
attempt("rename-proj", lambda: os.rename(P, D + "/w/p2"))
attempt("rename-hooks", lambda: os.rename(P + "/.git/hooks", P + "/.git/h2"))
attempt("rmdir-git", lambda: os.rmdir(P + "/.git"))
attempt("replace-git", lambda: (os.mkdir(D + "/w/empty"), os.rename(D + "/w/empty", P + "/.git")))
attempt("rename-readme-out", lambda: os.rename(P + "/.git/hooks/README", P + "/README"))
attempt("link-in", lambda: (open(D + "/w/evil", "w").write("pwned"), os.link(D + "/w/evil", P + "/.git/hooks/pre-commit")))
attempt("rename-in", lambda: os.rename(D + "/w/evil", P + "/.git/hooks/pre-commit"))
"#,
    );
    all_failed(
        &r,
        &[
            "direct",
            "rename-git",
            "via-renamed",
            "rename-proj",
            "rename-hooks",
            "rmdir-git",
            "replace-git",
            "rename-readme-out",
            "link-in",
            "rename-in",
        ],
    );
    assert!(!w.join("proj/.git/hooks/pre-commit").exists());
    let after: Vec<_> = tree(&w)
        .into_iter()
        .filter(|(n, _)| n != "empty/" && n != "evil")
        .collect();
    assert_eq!(after, before, "the host changed: {}", r.stdout);
}

// Regression: with `l -> ro/sub` made by the guest in a writable grant,
// `l/../victim` was checked as `victim` and opened as `ro/victim`; and a
// directory descriptor was tracked by its name, so re-pointing the name
// after opening let writes through the descriptor land in `ro/`.
#[test]
fn links_the_guest_makes_and_kept_descriptors_stay_read_only() {
    let (_g, d) = setup();
    let w = d.join("w");
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--allow-read={}", s(&w.join("ro"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let before = tree(&w.join("ro"));
    let victim_time = mtime(&w.join("ro/victim"));
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
attempt("mklink", lambda: os.symlink("ro/sub", W + "/l"))
attempt("dotdot-write", lambda: open(W + "/l/../victim", "w").write("pwned"))
attempt("dotdot-trunc", lambda: os.open(W + "/l/../victim", os.O_WRONLY | os.O_TRUNC))
def via_fd():
    fd = os.open(W + "/l/..", os.O_RDONLY)
    return os.open("victim", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
attempt("dotdot-fd", via_fd)
def repoint():
    os.symlink("ro", W + "/l2")
    fd = os.open(W + "/l2", os.O_RDONLY)
    os.remove(W + "/l2")
    os.mkdir(W + "/l2")
    return os.open("victim", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
attempt("repoint", repoint)
attempt("new-in-ro", lambda: open(W + "/l/../planted", "w").write("x"))
attempt("utime", lambda: os.utime(W + "/ro/victim", (0, 0)))
def utime_fd():
    fd = os.open(W + "/ro/victim", os.O_RDONLY)
    os.utime(fd, (0, 0))
attempt("utime-fd", utime_fd)
attempt("rename-out", lambda: os.rename(W + "/ro/victim", W + "/mine"))
attempt("link-out", lambda: os.link(W + "/ro/victim", W + "/mine2"))
attempt("read-ok", lambda: open(W + "/l/../victim").read())
"#,
    );
    all_failed(
        &r,
        &[
            "dotdot-write",
            "dotdot-trunc",
            "dotdot-fd",
            "repoint",
            "new-in-ro",
            "utime",
            "utime-fd",
            "rename-out",
            "link-out",
        ],
    );
    // Reading through the same path is granted, and works.
    assert!(r.stdout.contains("read-ok: ok 'KEEP'"), "{}", r.stdout);
    assert_eq!(tree(&w.join("ro")), before, "ro/ changed: {}", r.stdout);
    assert_eq!(mtime(&w.join("ro/victim")), victim_time);
}

// Regression: a guest could leave a link whose relative target climbs out
// of its grant; the next run (or any host tool) then followed it.
#[test]
fn links_made_by_the_guest_stay_inside_its_grant() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::fs::create_dir_all(d.join("victim")).unwrap();
    std::fs::write(d.join("victim/config.json"), "{}").unwrap();
    let flags = [format!("--allow-write={}", s(&w))];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
attempt("up", lambda: os.symlink("../victim/config.json", W + "/config.json"))
attempt("abs", lambda: os.symlink("/etc/passwd", W + "/passwd"))
attempt("deep-up", lambda: os.symlink("../../../victim", W + "/ro/sub/x"))
attempt("dot-then-up", lambda: (os.symlink(".", W + "/self"), os.symlink("self/../victim", W + "/y")))
attempt("inside", lambda: os.symlink("ro/victim", W + "/fine"))
attempt("inside-up", lambda: os.symlink("../victim", W + "/proj/fine"))
def move_up():
    os.symlink("../secret.txt", W + "/proj/rel")
    os.rename(W + "/proj/rel", W + "/rel")
attempt("move-up", move_up)
"#,
    );
    all_failed(&r, &["up", "abs", "deep-up", "dot-then-up", "move-up"]);
    assert!(
        r.stdout.contains("inside: ok"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("inside-up: ok"), "{}", r.stdout);
    for name in ["config.json", "passwd", "y", "rel"] {
        assert!(
            std::fs::symlink_metadata(w.join(name)).is_err(),
            "{name} was made: {}",
            r.stdout
        );
    }
    assert_eq!(
        std::fs::read_to_string(d.join("victim/config.json")).unwrap(),
        "{}"
    );
}

// Regression: a --deny-* path that did not exist yet was kept as text and
// missed when an ancestor was a link; it could also simply be created.
#[test]
fn a_denied_path_that_does_not_exist_yet_cannot_be_made() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::fs::create_dir(w.join("real")).unwrap();
    std::os::unix::fs::symlink("real", w.join("alias")).unwrap();
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--deny-read={}", s(&w.join("alias/.env"))),
        format!("--deny-write={}", s(&w.join("later/deeper/file"))),
        format!("--deny-read={}", s(&w.join("real/caf\u{e9}.txt"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
attempt("accent-decomposed", lambda: open(W + "/real/cafe\u0301.txt", "w").write("x"))
attempt("accent-upper", lambda: open(W + "/real/CAF\u00c9.TXT", "w").write("x"))
attempt("accent-upper-decomposed", lambda: open(W + "/real/CAFE\u0301.txt", "w").write("x"))
attempt("env-real", lambda: open(W + "/real/.env", "w").write("x"))
attempt("env-alias", lambda: open(W + "/alias/.env", "w").write("x"))
attempt("later", lambda: os.makedirs(W + "/later/deeper"))
attempt("later-rename", lambda: (os.mkdir(W + "/tmpdir"), os.rename(W + "/tmpdir", W + "/later")))
attempt("later-case", lambda: os.mkdir(W + "/LATER"))
attempt("env-case", lambda: open(W + "/real/.ENV", "w").write("x"))
attempt("other-ok", lambda: open(W + "/real/other", "w").write("x"))
"#,
    );
    // Every spelling in case: a folder may ignore case on any system.
    all_failed(
        &r,
        &[
            "env-real",
            "env-alias",
            "later",
            "later-rename",
            "later-case",
            "env-case",
            "accent-decomposed",
            "accent-upper",
            "accent-upper-decomposed",
        ],
    );
    assert!(
        r.stdout.contains("other-ok: ok"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(!w.join("real/.env").exists());
    assert!(!w.join("later").exists());
    assert!(!w.join("LATER").exists());
    assert!(!w.join("real/.ENV").exists());
    // Nothing was made beside the one file allowed.
    let made: Vec<_> = std::fs::read_dir(w.join("real"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(made, ["other"], "{}", r.stdout);
}

// Regression: the lstat and readlink of a link answered differently when
// its target existed on the host outside the grant: a file-existence oracle.
#[test]
fn links_out_of_a_grant_tell_nothing_about_the_host() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::fs::write(d.join("exists.txt"), "x").unwrap();
    std::os::unix::fs::symlink("../exists.txt", w.join("a")).unwrap();
    std::os::unix::fs::symlink("../missing.txt", w.join("b")).unwrap();
    let flags = [format!("--allow-write={}", s(&w))];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
for n in "ab":
    attempt("stat-" + n, lambda: os.stat(W + "/" + n))
    attempt("lstat-" + n, lambda: os.lstat(W + "/" + n).st_size > 0)
    attempt("exists-" + n, lambda: os.path.exists(W + "/" + n))
"#,
    );
    let answer = |n: &str| -> Vec<String> {
        let tag = format!("-{n}: ");
        r.stdout
            .lines()
            .filter(|l| l.contains(&tag))
            .map(|l| l.replacen(&tag, ": ", 1))
            .collect()
    };
    assert_eq!(answer("a"), answer("b"), "{}", r.stdout);
    assert_eq!(answer("a").len(), 3, "{}", r.stdout);
}

// Regression: capsa's cache (native code it loads unchecked, the Python
// every later run imports) was writable by any guest granted $HOME.
#[test]
fn capsas_own_cache_is_out_of_reach_inside_a_grant() {
    let (_g, d) = scratch();
    let home = d.join("home");
    let cache = home.join(".cache/capsa");
    std::fs::create_dir_all(&home).unwrap();
    let grant = format!("--allow-write={}", s(&home));
    let with_cache = |args: &[&str]| -> Run {
        capsa()
            .env("CAPSA_CACHE_DIR", &cache)
            .arg("run")
            .arg(&grant)
            .arg(probe(P2))
            .args(args)
            .output()
            .expect("capsa runs")
            .into()
    };
    // The first run compiles the probe into the cache.
    let r = with_cache(&["hello"]);
    assert_eq!(r.stdout, "ok: hello from wasm\n", "{}", r.stderr);
    assert!(
        r.stderr.contains("stays out of the program's reach"),
        "{}",
        r.stderr
    );
    let before = tree(&cache);
    assert!(
        before.iter().any(|(n, _)| n.ends_with(".cwasm")),
        "{before:?}"
    );
    let code = before
        .iter()
        .find(|(n, _)| n.ends_with(".cwasm"))
        .map(|(n, _)| cache.join(n))
        .unwrap();
    let attempts: Vec<Vec<String>> = vec![
        vec!["write".into(), s(&code).into(), "pwned".into()],
        vec![
            "write".into(),
            s(&cache.join("code/new.cwasm")).into(),
            "x".into(),
        ],
        vec!["read".into(), s(&code).into()],
        vec!["ls".into(), s(&cache).into()],
        vec!["rm".into(), s(&code).into()],
        vec![
            "rename".into(),
            s(&cache).into(),
            s(&home.join("moved")).into(),
        ],
        vec![
            "rename".into(),
            s(&home.join(".cache")).into(),
            s(&home.join("c2")).into(),
        ],
        vec!["mkdir".into(), s(&cache.join("python")).into()],
    ];
    for a in &attempts {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let r = with_cache(&a);
        assert!(r.stdout.starts_with("err:"), "{a:?}: {}", r.stdout);
        assert!(
            r.stderr.contains("capsa's own files"),
            "{a:?}: {}",
            r.stderr
        );
    }
    assert_eq!(tree(&cache), before, "the cache changed");
    // A program that cannot be loaded gets its error alone: nothing is said
    // of a run that never starts.
    let bad = d.join("bad.wasm");
    std::fs::write(&bad, "not webassembly").unwrap();
    let r: Run = capsa()
        .env("CAPSA_CACHE_DIR", &cache)
        .arg("run")
        .arg(&grant)
        .arg(&bad)
        .output()
        .expect("capsa runs")
        .into();
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // A grant inside the cache is refused before anything runs.
    let r: Run = capsa()
        .env("CAPSA_CACHE_DIR", &cache)
        .arg("run")
        .arg(format!("--allow-read={}", s(&cache.join("code"))))
        .arg(probe(P2))
        .output()
        .expect("capsa runs")
        .into();
    assert_refused(&r, &["inside capsa's own cache"]);
}

// Regression: denial lines printed names the guest chose as they were, so
// escape sequences redrew the terminal, and a comma in a name made a hint
// that granted more than the name when pasted.
#[test]
fn denial_lines_escape_guest_names_and_hints_name_one_grant() {
    let (_g, d) = scratch();
    std::fs::write(d.join("granted.txt"), "g").unwrap();
    let grant = format!("--allow-read={}", s(&d.join("granted.txt")));
    let evil = format!("{}/x\u{1b}[2K\rcapsa: granted,/root", s(&d));
    let r = run(&[&grant], &probe(P2), &["read", &evil]);
    assert!(r.stdout.starts_with("err:"), "{}", r.stdout);
    assert!(
        !r.stderr.contains('\u{1b}') && !r.stderr.contains('\r'),
        "{:?}",
        r.stderr
    );
    assert!(r.stderr.contains("\\u{1b}"), "{}", r.stderr);
    assert!(!r.stderr.contains("hint:"), "{}", r.stderr);
    let spaced = format!("{}/my file.txt", s(&d));
    let r = run(&[&grant], &probe(P2), &["read", &spaced]);
    assert!(
        r.stderr.contains(&format!("hint: --allow-read='{spaced}'")),
        "{}",
        r.stderr
    );
}

// Regression: every distinct denial was printed and remembered for the
// whole run: a guest varying a name flooded the terminal and host memory.
#[test]
fn denial_lines_are_capped() {
    let (_g, d) = scratch();
    let r = attack(
        &d,
        &[],
        r#"
for i in range(2000):
    try:
        open(f"{D}/script/n{i}")
    except OSError:
        pass
print("done")
"#,
    );
    assert!(r.stdout.contains("done"), "{}", r.stderr);
    let lines = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("capsa: denied:"))
        .count();
    assert!((1..=100).contains(&lines), "{lines} denial lines");
    assert!(
        r.stderr.contains("further denials not shown"),
        "{}",
        r.stderr
    );
}

// Regression (found attacking a release build): rules were pinned only
// along their real paths, so a link on the way to a rule's path as given
// (`lnk -> p` in `--deny-write=W/lnk/.git/hooks`) could be replaced by a
// real directory with the attacker's hooks; a kept directory descriptor
// judged new links by the depth it had when opened; a name with `::` gave
// a hint that granted another, real path; and going through a denied
// directory told what it held (`secret/x/../..`).
#[test]
fn links_on_the_way_stale_depths_and_hints_found_by_the_red_team() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::fs::create_dir_all(w.join("p/.git/hooks")).unwrap();
    std::os::unix::fs::symlink("p", w.join("lnk")).unwrap();
    std::fs::create_dir_all(w.join("deny/inner")).unwrap();
    std::fs::create_dir_all(w.join("a/b/c")).unwrap();
    std::fs::create_dir_all(w.join("ro/keep")).unwrap();
    std::fs::write(w.join("plain"), "p").unwrap();
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--deny-write={}", s(&w.join("lnk/.git/hooks"))),
        format!("--deny-read={}", s(&w.join("deny"))),
        format!("--allow-read={}", s(&w.join("ro"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
attempt("unlink-link", lambda: os.unlink(W + "/lnk"))
attempt("rename-link", lambda: os.rename(W + "/lnk", W + "/lnk2"))
attempt("hook", lambda: open(W + "/lnk/.git/hooks/pre-commit", "w").write("x"))
def moved_fd():
    fd = os.open(W + "/a/b/c", os.O_RDONLY)
    os.rename(W + "/a/b/c", W + "/c")
    os.symlink("../../x", "esc", dir_fd=fd)
attempt("moved-fd", moved_fd)
attempt("oracle-yes", lambda: os.stat(W + "/deny/inner/../../plain").st_size)
attempt("oracle-no", lambda: os.stat(W + "/deny/nothing/../../plain").st_size)
attempt("colons", lambda: open(W + "/ro/keep::/data/out.txt", "w").write("x"))
attempt("list-up", lambda: os.listdir(W + "/.." * 40))
"#,
    );
    all_failed(
        &r,
        &[
            "unlink-link",
            "rename-link",
            "hook",
            "moved-fd",
            "oracle-yes",
            "oracle-no",
            "colons",
            "list-up",
        ],
    );
    // Climbing out of a grant to `/` is refused, named as asked for, with
    // no hint to grant `/`.
    assert!(
        r.stderr.contains(&format!(
            "denied: read {}{} (the path leaves",
            s(&w),
            "/..".repeat(40)
        )),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.lines().any(|l| l.trim_end().ends_with("=/")),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_link(w.join("lnk")).unwrap(), Path::new("p"));
    assert!(!w.join("p/.git/hooks/pre-commit").exists());
    assert!(
        std::fs::symlink_metadata(w.join("c/esc")).is_err(),
        "{}",
        r.stdout
    );
    let line = |l: &str| {
        r.stdout
            .lines()
            .find(|x| x.starts_with(l))
            .unwrap()
            .split(": ")
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(line("oracle-yes"), line("oracle-no"), "{}", r.stdout);
    let colons = r
        .stderr
        .lines()
        .skip_while(|l| !l.contains("keep::"))
        .nth(1)
        .unwrap_or("");
    assert!(!colons.contains("hint:"), "{}", r.stderr);
}

// Regression (found attacking a release build): with the cache reached
// through a link inside a writable grant (`~/.cache -> .dotcache`), the
// guest replaced the link with a cache of its own, whose native code a
// later run loaded.
#[test]
fn the_cache_cannot_be_swapped_through_a_link_on_its_way() {
    let (_g, d) = scratch();
    let home = d.join("home");
    std::fs::create_dir_all(home.join(".dotcache")).unwrap();
    std::os::unix::fs::symlink(".dotcache", home.join(".cache")).unwrap();
    let cache = home.join(".cache/capsa");
    let grant = format!("--allow-write={}", s(&home));
    let attempt = |args: &[&str]| -> Run {
        capsa()
            .env("CAPSA_CACHE_DIR", &cache)
            .arg("run")
            .arg(&grant)
            .arg(probe(P2))
            .args(args)
            .output()
            .expect("capsa runs")
            .into()
    };
    let link = home.join(".cache");
    for a in [
        vec!["rm", s(&link)],
        vec!["rename", s(&link), s(&home.join("old"))],
        vec!["rename", s(&home.join(".dotcache")), s(&home.join("old"))],
    ] {
        let r = attempt(&a);
        assert!(r.stdout.starts_with("err:"), "{a:?}: {}", r.stdout);
    }
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(".dotcache"));
    assert!(home.join(".dotcache/capsa").is_dir());
}

// Regression (second attack on a release build): only the links the path
// as given named were pinned, not every link of a chain, nor what a `..`
// in a link's target climbs through, nor the links on the way to a nested
// grant; and a neighbour of a granted file that is a link was followed,
// telling a loop or a link to a file from a missing name.
#[test]
fn every_link_on_the_way_to_a_rule_is_pinned_and_hidden_links_are_not_followed() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::fs::create_dir_all(w.join("p/.git/hooks")).unwrap();
    std::fs::create_dir_all(w.join("a")).unwrap();
    std::os::unix::fs::symlink("l2", w.join("lnk")).unwrap();
    std::os::unix::fs::symlink("p", w.join("l2")).unwrap();
    std::os::unix::fs::symlink("a/../p", w.join("lnk3")).unwrap();
    std::os::unix::fs::symlink("ro", w.join("rl")).unwrap();
    let h = d.join("h");
    std::fs::create_dir_all(&h).unwrap();
    std::fs::write(h.join("f"), "granted").unwrap();
    std::os::unix::fs::symlink("loop", h.join("loop")).unwrap();
    std::os::unix::fs::symlink("f", h.join("alias")).unwrap();
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--deny-write={}", s(&w.join("lnk/.git/hooks"))),
        format!("--deny-write={}", s(&w.join("lnk3/.git/hooks"))),
        format!("--allow-read={}", s(&h.join("f"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
attempt("chain", lambda: os.unlink(W + "/l2"))
attempt("climbed", lambda: os.rename(W + "/a", W + "/a_old"))
for n in ["loop", "alias", "missing"]:
    attempt("oracle-" + n, lambda: os.stat(D + "/h/" + n + "/.."))
"#,
    );
    all_failed(&r, &["chain", "climbed"]);
    assert_eq!(std::fs::read_link(w.join("l2")).unwrap(), Path::new("p"));
    assert!(w.join("a").is_dir() && !w.join("a_old").exists());
    // A grant is never resolved through a link in a writable grant: the
    // guest of this run or an earlier one may have put it there.
    let through = [
        format!("--allow-write={}", s(&w)),
        format!("--allow-read={}", s(&w.join("rl"))),
    ];
    let through: Vec<&str> = through.iter().map(String::as_str).collect();
    let r = run(&through, &probe(P2), &["hello"]);
    assert_refused(&r, &["is reached through the link"]);
    let answers: Vec<&str> = ["loop", "alias", "missing"]
        .iter()
        .map(|n| {
            r.stdout
                .lines()
                .find(|l| l.starts_with(&format!("oracle-{n}: ")))
                .map(|l| l.split_once(": ").unwrap().1)
                .unwrap_or("absent")
        })
        .collect();
    assert_eq!(answers[0], answers[2], "{}", r.stdout);
    assert_eq!(answers[1], answers[2], "{}", r.stdout);
}

// Regression (third attack on a release build): a --deny-* path through a
// dangling link was marked on the link's name, while a write through it
// creates the link's target: the denied file was written, and a denied
// hooks directory made under the link's target. And a --deny-read inside a
// grant made the grant's listing fail (the preview 1 adapter looks at every
// entry), which also told whether the denied path existed.
#[test]
fn denied_paths_through_dangling_links_and_listings() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::os::unix::fs::symlink("config.real", w.join("config")).unwrap();
    std::os::unix::fs::symlink("tgt", w.join("l")).unwrap();
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--deny-write={}", s(&w.join("config"))),
        format!("--deny-write={}", s(&w.join("l/hooks"))),
        format!("--deny-read={}", s(&w.join("secret.txt"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
attempt("through", lambda: open(W + "/config", "w").write("evil=1"))
attempt("target", lambda: open(W + "/config.real", "w").write("evil=1"))
attempt("hooks", lambda: os.makedirs(W + "/tgt/hooks"))
attempt("list", lambda: sorted(os.listdir(W)))
"#,
    );
    all_failed(&r, &["through", "target", "hooks"]);
    assert!(!w.join("config.real").exists() && !w.join("tgt").exists());
    assert!(r.stdout.contains("list: ok"), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("'secret.txt'"), "{}", r.stdout);
    for t in [P1, P2] {
        let r = run(&flags, &probe(t), &["ls", s(&w)]);
        assert!(
            r.stdout.starts_with("ok: "),
            "{t}: {}\n{}",
            r.stdout,
            r.stderr
        );
        assert!(!r.stdout.contains("TOP SECRET"));
    }
}

// Regression (third attack on a release build): capsa checked a path by
// walking it, then had wasmtime-wasi walk the same text again. A second
// sandbox sharing the tree turned a missing name into a link between the
// two (a missing name was also let through, "the kernel will fail it"):
// denied files were moved out and read, read-only files truncated and
// removed, files made in both, and with the cache inside a grant, compiled
// code swapped. Now the operation is done from the directory the walk
// opened, on the last name only, and a missing name is not tried.
#[test]
fn a_second_sandbox_re_pointing_a_link_cannot_race_the_checks() {
    python_ready();
    let (_g, d) = scratch();
    let w = d.join("w");
    std::fs::create_dir_all(w.join("private")).unwrap();
    std::fs::create_dir_all(w.join("ro")).unwrap();
    std::fs::write(w.join("private/key.txt"), "TOP SECRET").unwrap();
    std::fs::write(w.join("ro/victim.txt"), "KEEP").unwrap();
    std::fs::write(w.join("mine.txt"), "mine").unwrap();
    let victim_mtime = mtime(&w.join("ro/victim.txt"));
    let scripts = d.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    // Flips `x` between missing and a link (inside the grant, so allowed)
    // to the denied and to the read-only directory, until told to stop.
    std::fs::write(
        scripts.join("flip.py"),
        r#"
import os, sys, time
os.chdir(sys.argv[1])
end = time.monotonic() + 60
while time.monotonic() < end and not os.path.exists("done"):
    for t in ("private", "ro"):
        for op in (lambda: os.symlink(t, "x"), lambda: os.unlink("x")):
            try:
                op()
            except OSError:
                pass
"#,
    )
    .unwrap();
    std::fs::write(
        scripts.join("attack.py"),
        r#"
import os, sys, time
os.chdir(sys.argv[1])
won, kinds = set(), set()
def attempt(label, fn):
    try:
        fn()
        won.add(label)
    except OSError as e:
        kinds.add(type(e).__name__)
end = time.monotonic() + 3
tries = 0
while time.monotonic() < end:
    tries += 1
    attempt("rename-out", lambda: os.rename("x/key.txt", "loot"))
    attempt("hard-link", lambda: os.link("x/key.txt", "hl"))
    attempt("read", lambda: print(open("x/key.txt").read()))
    attempt("truncate", lambda: os.close(os.open("x/victim.txt", os.O_WRONLY | os.O_TRUNC)))
    attempt("create", lambda: os.close(os.open("x/planted", os.O_WRONLY | os.O_CREAT)))
    attempt("mkdir", lambda: os.mkdir("x/newdir"))
    attempt("remove", lambda: os.remove("x/victim.txt"))
    attempt("utime", lambda: os.utime("x/victim.txt", (0, 0)))
    attempt("rename-in", lambda: os.rename("mine.txt", "x/mine.txt"))
open("done", "w").close()
print("tries", tries)
print("won", sorted(won))
print("kinds", sorted(kinds))
"#,
    )
    .unwrap();
    let before = tree(&w);
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--deny-read={}", s(&w.join("private"))),
        format!("--allow-read={}", s(&w.join("ro"))),
        format!("--allow-read={}", s(&scripts)),
        "--quiet".to_string(),
    ];
    let flipper = capsa()
        .arg("run")
        .args(&flags)
        .arg(scripts.join("flip.py"))
        .arg(&w)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capsa runs");
    let r: Run = capsa()
        .arg("run")
        .args(&flags)
        .arg(scripts.join("attack.py"))
        .arg(&w)
        .output()
        .expect("capsa runs")
        .into();
    std::fs::write(w.join("done"), "").unwrap();
    let f: Run = flipper.wait_with_output().expect("capsa ends").into();
    assert_eq!(f.code, 0, "the flipper failed: {}", f.stderr);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("won []"), "{}", r.stdout);
    assert!(!r.stdout.contains("TOP SECRET"), "{}", r.stdout);
    // Both states were met: the link (refused) and the missing name.
    assert!(
        r.stdout.contains("FileNotFoundError") && r.stdout.contains("PermissionError"),
        "the race did not happen: {}",
        r.stdout
    );
    let after: Vec<_> = tree(&w)
        .into_iter()
        .filter(|(n, _)| n != "done" && !n.starts_with("x -> "))
        .collect();
    assert_eq!(after, before, "the host changed: {}", r.stdout);
    assert_eq!(mtime(&w.join("ro/victim.txt")), victim_mtime);
}

// Regression (third attack on a release build): a link was judged where it
// was made, but a directory holding it could then be moved nearer the
// grant's root: `a/b/l -> ../../x` points at the grant's own `x`, yet after
// `mv a/b b` it points beside the grant, for any program on the host that
// follows it later.
#[test]
fn moving_a_directory_up_keeps_its_links_inside_the_grant() {
    let (_g, d) = scratch();
    let w = d.join("w");
    std::fs::create_dir_all(w.join("a/b/c")).unwrap();
    std::fs::create_dir_all(w.join("a/ok")).unwrap();
    std::fs::create_dir_all(w.join("deep/er")).unwrap();
    // A link the host made that already points out (a virtual environment's
    // interpreter) is no concern of a move.
    std::fs::create_dir_all(w.join("a/venv/bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", w.join("a/venv/bin/python")).unwrap();
    let grant = format!("--allow-write={}", s(&w));
    let r = attack(
        &d,
        &[&grant],
        r#"
W = D + "/w"
os.symlink("../../x", W + "/a/b/l")
os.symlink("../../../y", W + "/a/b/c/l2")
os.symlink("../sibling", W + "/a/ok/k")
attempt("up-escapes", lambda: os.rename(W + "/a/b", W + "/b"))
attempt("up-nested", lambda: os.rename(W + "/a/b/c", W + "/a/c"))
attempt("up-inside", lambda: os.rename(W + "/a/ok", W + "/ok"))
attempt("down", lambda: os.rename(W + "/a/b", W + "/deep/er/b"))
attempt("up-host-link", lambda: os.rename(W + "/a/venv", W + "/venv"))
"#,
    );
    all_failed(&r, &["up-escapes", "up-nested"]);
    for ok in ["up-inside", "down", "up-host-link"] {
        assert!(
            r.stdout.contains(&format!("{ok}: ok")),
            "{ok}: {}\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert!(
        r.stderr.contains("in it would point outside"),
        "{}",
        r.stderr
    );
    // The refused trees stayed where they were, links and all; the others moved.
    assert!(!w.join("b").exists());
    assert!(!w.join("a/c").exists());
    assert_eq!(
        std::fs::read_link(w.join("deep/er/b/l")).unwrap(),
        Path::new("../../x")
    );
    assert_eq!(
        std::fs::read_link(w.join("deep/er/b/c/l2")).unwrap(),
        Path::new("../../../y")
    );
    assert_eq!(
        std::fs::read_link(w.join("ok/k")).unwrap(),
        Path::new("../sibling")
    );
    assert_eq!(
        std::fs::read_link(w.join("venv/bin/python")).unwrap(),
        Path::new("/usr/bin/python3")
    );
}

// Regression (fourth attack on a release build): a `--deny-*` rule marked
// only the object found at start (or, for a path missing then, the name
// for the guest to make). The host or another program making the path
// during the run, or saving a file by renaming a new one over it (as
// editors and git do), left it unprotected.
#[test]
fn a_denied_path_made_or_replaced_during_the_run_stays_denied() {
    python_ready();
    let (_g, d) = scratch();
    let w = d.join("w");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("envf"), "OLD SECRET").unwrap();
    // A Kubernetes secret volume: the name is a link into a dated
    // directory, re-pointed (through `..data`) on each update.
    std::fs::create_dir_all(w.join("k8s/..2024_01")).unwrap();
    std::fs::write(w.join("k8s/..2024_01/token"), "OLD SECRET").unwrap();
    std::os::unix::fs::symlink("..2024_01", w.join("k8s/..data")).unwrap();
    std::os::unix::fs::symlink("..data/token", w.join("k8s/token")).unwrap();
    // A link that leads nowhere at start, re-pointed by the host.
    std::os::unix::fs::symlink("cfg.real", w.join("cfg")).unwrap();
    std::fs::write(w.join("new.secret"), "NEW SECRET").unwrap();
    let scripts = d.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(
        scripts.join("wait.py"),
        r#"
import os, sys, time
W = sys.argv[1]
def attempt(label, fn):
    try:
        print(f"{label}: ok {fn()!r}")
    except Exception as e:
        print(f"{label}: err {type(e).__name__}")
open(W + "/started", "w").close()
end = time.monotonic() + 60
while not os.path.exists(W + "/ready") and time.monotonic() < end:
    time.sleep(0.01)
attempt("read-made", lambda: open(W + "/later/key").read())
attempt("list-made", lambda: os.listdir(W + "/later"))
attempt("rename-made", lambda: os.rename(W + "/later", W + "/moved"))
attempt("read-replaced", lambda: open(W + "/envf").read())
attempt("remove-replaced", lambda: os.remove(W + "/envf"))
attempt("over-replaced", lambda: (open(W + "/mine", "w").write("x"), os.rename(W + "/mine", W + "/envf")))
attempt("read-updated", lambda: open(W + "/k8s/token").read())
attempt("read-repointed", lambda: open(W + "/cfg").read())
"#,
    )
    .unwrap();
    let guest = capsa()
        .arg("run")
        .arg(format!("--allow-write={}", s(&w)))
        .arg(format!("--deny-read={}", s(&w.join("later"))))
        .arg(format!("--deny-read={}", s(&w.join("envf"))))
        .arg(format!("--deny-read={}", s(&w.join("k8s/token"))))
        .arg(format!("--deny-read={}", s(&w.join("cfg"))))
        .arg(format!("--allow-read={}", s(&scripts)))
        .arg(scripts.join("wait.py"))
        .arg(&w)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capsa runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !w.join("started").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The host makes the missing path, and saves the other one anew.
    std::fs::create_dir_all(w.join("later")).unwrap();
    std::fs::write(w.join("later/key"), "NEW SECRET").unwrap();
    std::fs::write(w.join(".envf.tmp"), "NEW SECRET").unwrap();
    std::fs::rename(w.join(".envf.tmp"), w.join("envf")).unwrap();
    std::fs::create_dir_all(w.join("k8s/..2024_02")).unwrap();
    std::fs::write(w.join("k8s/..2024_02/token"), "NEW SECRET").unwrap();
    std::os::unix::fs::symlink("..2024_02", w.join("k8s/..data_tmp")).unwrap();
    std::fs::rename(w.join("k8s/..data_tmp"), w.join("k8s/..data")).unwrap();
    std::fs::remove_dir_all(w.join("k8s/..2024_01")).unwrap();
    std::os::unix::fs::symlink("new.secret", w.join("cfg.tmp")).unwrap();
    std::fs::rename(w.join("cfg.tmp"), w.join("cfg")).unwrap();
    std::fs::write(w.join("ready"), "").unwrap();
    let r: Run = guest.wait_with_output().expect("capsa ends").into();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    all_failed(
        &r,
        &[
            "read-made",
            "list-made",
            "rename-made",
            "read-replaced",
            "remove-replaced",
            "over-replaced",
            "read-updated",
            "read-repointed",
        ],
    );
    assert!(!r.stdout.contains("SECRET"), "{}", r.stdout);
    // A file made after the old one went is not taken for it (the old
    // object is held for the run, so its inode number is not reused).
    assert!(!r.stderr.contains("/ready"), "{}", r.stderr);
    assert_eq!(std::fs::read(w.join("later/key")).unwrap(), b"NEW SECRET");
    assert_eq!(std::fs::read(w.join("envf")).unwrap(), b"NEW SECRET");
    assert!(!w.join("moved").exists());
}

// A grant is resolved with `..` folded as text; its link check walked the
// path as the host would, going on from where a link before the `..` led,
// and so never looked at the links the grant was really resolved through.
#[test]
fn the_link_check_walks_the_path_the_grant_is_resolved_on() {
    let (_g, d) = setup();
    let (w, ro, secret) = (d.join("w"), d.join("ro"), d.join("secret"));
    for dir in [&w, &ro, &secret, &d.join("elsewhere/sub")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(secret.join("key"), "HOST SECRET").unwrap();
    // A link an earlier run made in its writable grant, to the secret.
    std::os::unix::fs::symlink("../secret", w.join("y")).unwrap();
    // The user's own links, outside every writable grant.
    std::os::unix::fs::symlink("../w", ro.join("x")).unwrap();
    std::os::unix::fs::symlink("../elsewhere/sub", ro.join("link")).unwrap();
    let flags = [
        format!("--allow-write={}", s(&w)),
        format!("--allow-read={}/link/../x/y", s(&ro)),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = run(&flags, &probe(P2), &["hello"]);
    assert_refused(&r, &["is reached through the link", "/w/y"]);
    assert!(!r.stdout.contains("hello"), "the program ran: {}", r.stdout);
    assert_eq!(std::fs::read(secret.join("key")).unwrap(), b"HOST SECRET");
}

// Regression (attack on a release build): the link check followed a link
// outside every writable grant to where its whole chain led at once, so a
// user's own link into a writable grant, through a link a program had put
// there, was never looked at link by link.
#[test]
fn a_chain_of_links_is_checked_link_by_link() {
    let (_g, d) = setup();
    let (w, secret) = (d.join("w"), d.join("secret"));
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key"), "HOST SECRET").unwrap();
    std::fs::write(secret.join("s.py"), "print('ran the secret script')\n").unwrap();
    // Planted by an earlier run, then the user's own link to it.
    std::os::unix::fs::symlink("../secret", w.join("evil")).unwrap();
    std::os::unix::fs::symlink(w.join("evil"), d.join("latest")).unwrap();
    std::fs::create_dir_all(d.join("usr")).unwrap();
    std::os::unix::fs::symlink("../w/evil", d.join("usr/data")).unwrap();
    let write = format!("--allow-write={}", s(&w));
    for grant in [
        format!("--allow-read={}", s(&d.join("latest"))),
        format!("--allow-write={}", s(&d.join("latest"))),
        format!("--allow-read={}", s(&d.join("usr/data"))),
        format!("--allow-read={}::/data", s(&d.join("latest"))),
    ] {
        let r = run(&[&write, &grant], &probe(P2), &["hello"]);
        assert!(r.code == 125, "{grant}");
        assert_refused(&r, &["is reached through the link", "/w/evil"]);
    }
    // The same for a script, through the user's link.
    python_ready();
    let r = run(&[&write], &d.join("latest/s.py"), &[]);
    assert_eq!(r.code, 125, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("ran the secret"), "{}", r.stdout);
    // A chain of the user's own links outside writable grants is followed.
    std::os::unix::fs::symlink(&secret, d.join("mine")).unwrap();
    std::os::unix::fs::symlink(d.join("mine"), d.join("mine2")).unwrap();
    let grant = format!("--allow-read={}", s(&d.join("mine2")));
    let r = run(
        &[&write, &grant],
        &probe(P2),
        &["read", s(&d.join("mine2/key"))],
    );
    assert_eq!(r.stdout, "ok: HOST SECRET\n", "{}", r.stderr);
    assert_eq!(std::fs::read(secret.join("key")).unwrap(), b"HOST SECRET");
}

// Regression (attack on a release build): a grant was resolved, then its
// path checked; a program running meanwhile that swapped a directory in its
// writable grant with a link had the grant land where the link led.
#[test]
fn a_name_swapped_while_a_grant_is_checked_never_grants_where_the_link_led() {
    let (_g, d) = setup();
    let (w, secret) = (d.join("race"), d.join("secret"));
    std::fs::create_dir_all(w.join("x")).unwrap();
    std::fs::write(w.join("x/key"), "decoy").unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key"), "HOST SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, w.join("y")).unwrap();
    let swapper = Swapper::start(w.join("x"), w.join("y"));
    let write = format!("--allow-write={}", s(&w));
    let read = format!("--allow-read={}", s(&w.join("x")));
    let key_path = w.join("x/key");
    let key = s(&key_path);
    let (mut refused, mut ran) = (0, 0);
    for _ in 0..80 {
        let r = run(&[&write, &read, "-q"], &probe(P2), &["read", key]);
        assert!(
            !r.stdout.contains("HOST SECRET"),
            "{}{}",
            r.stdout,
            r.stderr
        );
        assert!(r.code == 0 || r.code == 125, "{}: {}", r.code, r.stderr);
        if r.code == 125 {
            refused += 1;
        } else {
            ran += 1;
        }
    }
    assert!(swapper.stop() > 0);
    assert!(refused > 0, "the race never happened ({ran} runs)");
    assert_eq!(std::fs::read(secret.join("key")).unwrap(), b"HOST SECRET");
}

// Regression (attack on a release build): `--audit=FILE` was created through
// whatever link was at FILE, also one a program had put in its writable
// grant, and the program could rewrite its own audit log while it ran.
#[test]
fn the_audit_log_is_never_written_through_a_planted_link_nor_by_the_program() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::fs::create_dir_all(d.join("secret")).unwrap();
    std::fs::write(d.join("secret/victim"), "KEEP").unwrap();
    std::os::unix::fs::symlink("../secret/victim", w.join("audit.log")).unwrap();
    let write = format!("--allow-write={}", s(&w));
    let audit = format!("--audit={}", s(&w.join("audit.log")));
    let r = run(&[&write, &audit], &probe(P2), &["hello"]);
    assert_refused(&r, &["reached through the link"]);
    assert_eq!(std::fs::read(d.join("secret/victim")).unwrap(), b"KEEP");
    // In the writable grant, but not the program's to change.
    let log = w.join("own.jsonl");
    let audit = format!("--audit={}", s(&log));
    let r = attack(
        &d,
        &[&write, &audit],
        r#"
L = D + "/w/own.jsonl"
attempt("truncate", lambda: open(L, "w").write("forged\n"))
attempt("append", lambda: open(L, "a").write("forged\n"))
attempt("unlink", lambda: os.unlink(L))
attempt("rename", lambda: os.rename(L, L + ".old"))
attempt("replace", lambda: (open(L + ".new", "w").write("forged\n"), os.replace(L + ".new", L)))
"#,
    );
    all_failed(&r, &["truncate", "append", "unlink", "rename", "replace"]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("forged"), "{text}");
    assert!(text.lines().count() >= 5, "{text}");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["kind"].is_string(), "{line}");
    }
    // Neither a FIFO (which would wait for a reader) nor a directory.
    let fifo = d.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Nor a file with another name (a program may have linked one of its
    // choice there), which emptying it would empty.
    std::fs::hard_link(d.join("secret/victim"), w.join("linked.log")).unwrap();
    for at in [fifo, d.join("secret"), w.join("linked.log")] {
        let audit = format!("--audit={}", s(&at));
        let r = run(&[&audit], &probe(P2), &["hello"]);
        assert_refused(&r, &["cannot create audit file"]);
    }
    assert_eq!(std::fs::read(d.join("secret/victim")).unwrap(), b"KEEP");
    // A file that is not an earlier audit log is never emptied (the script
    // named by mistake, say); an earlier log is.
    let script = d.join("script.py");
    std::fs::write(&script, "print('kept')\n").unwrap();
    let audit = format!("--audit={}", s(&script));
    let r = run(&[&audit], &probe(P2), &["hello"]);
    assert_refused(&r, &["not an audit log"]);
    assert_eq!(std::fs::read(&script).unwrap(), b"print('kept')\n");
    let audit = format!("--audit={}", s(&log));
    let r = run(&[&write, &audit], &probe(P2), &["hello"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The user's own link, outside every writable grant, is followed.
    let earlier = "{\"time\":\"t\",\"kind\":\"fs\",\"decision\":\"deny\",\"target\":\"EARLIER\"}\n";
    std::fs::write(d.join("real.log"), earlier).unwrap();
    std::os::unix::fs::symlink("real.log", d.join("mylog")).unwrap();
    let audit = format!("--audit={}", s(&d.join("mylog")));
    let r = run(&[&audit], &probe(P2), &["hello"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        std::fs::symlink_metadata(d.join("mylog"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        !std::fs::read_to_string(d.join("real.log"))
            .unwrap()
            .contains("EARLIER")
    );
}

// Regression (second attack on a release build): the audit file was opened
// by its name after its folder was checked, so a folder swapped for a link
// in between had capsa create or empty a file wherever the link led.
#[test]
fn the_audit_log_is_never_created_through_a_folder_swapped_for_a_link() {
    let (_g, d) = setup();
    let w = d.join("race");
    std::fs::create_dir_all(w.join("d")).unwrap();
    let victim = d.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("audit.log"), "IMPORTANT").unwrap();
    std::os::unix::fs::symlink(&victim, w.join("l")).unwrap();
    let swapper = Swapper::start(w.join("d"), w.join("l"));
    let write = format!("--allow-write={}", s(&w));
    let audit = format!("--audit={}", s(&w.join("d/audit.log")));
    let (mut refused, mut ran) = (0, 0);
    for _ in 0..100 {
        let r = run(&[&write, &audit, "-q"], &probe(P2), &["hello"]);
        assert_eq!(
            std::fs::read(victim.join("audit.log")).unwrap(),
            b"IMPORTANT",
            "run {}: {}",
            refused + ran,
            r.stderr
        );
        assert!(std::fs::read_dir(&victim).unwrap().count() == 1);
        if r.code == 0 {
            ran += 1;
        } else {
            assert_eq!(r.code, 125, "{}", r.stderr);
            refused += 1;
        }
    }
    assert!(swapper.stop() > 0);
    assert!(refused > 0 && ran > 0, "refused {refused}, ran {ran}");
}

// Regression (second attack on a release build): a link in a writable
// grant was recognised by its path only, so the same folder reached by
// another path (a bind mount of it) let a grant through the link.
#[test]
fn a_link_in_a_writable_grant_reached_by_another_path_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root for unshare -m");
        return;
    }
    let (_g, d) = setup();
    let (w, alias, secret) = (d.join("bw"), d.join("alias"), d.join("secret"));
    for dir in [&w, &alias, &secret] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(secret.join("key"), "HOST SECRET").unwrap();
    std::os::unix::fs::symlink("../secret", w.join("link")).unwrap();
    let script = format!(
        r#"set -e
mount --bind {w} {alias}
"$CAPSA" run --allow-write={w} --allow-read={alias}/link "$PROBE" read {alias}/link/key >{d}/out 2>{d}/err || echo $? >{d}/code
"#,
        w = s(&w),
        alias = s(&alias),
        d = s(&d),
    );
    let status = unshared(&["-m"], &script);
    assert!(status.success());
    let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
    assert!(!read("out").contains("HOST SECRET"), "{}", read("out"));
    assert_eq!(read("code").trim(), "125", "{}{}", read("out"), read("err"));
    assert!(
        read("err").contains("reached through the link") && read("err").contains(s(&w)),
        "{}",
        read("err")
    );
}

// Regression (attack on a release build): a policy file in a folder its
// own policy grants writable could be rewritten by the program, to widen
// the grants of every later run made with it.
#[test]
fn a_program_cannot_rewrite_its_own_policy_file() {
    let (_g, d) = setup();
    let proj = d.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::create_dir_all(d.join("secret")).unwrap();
    std::fs::write(d.join("secret/key"), "HOST SECRET").unwrap();
    let policy = proj.join("policy.toml");
    let text = "allow-write = [\".\"]\n";
    std::fs::write(&policy, text).unwrap();
    let flag = format!("--policy={}", s(&policy));
    let r = attack(
        &d,
        &[&flag],
        &format!(
            r#"
P = D + "/proj/policy.toml"
WIDER = 'allow-write = ["."]\nallow-read = ["{secret}"]\n'
attempt("truncate", lambda: open(P, "w").write(WIDER))
attempt("append", lambda: open(P, "a").write('allow-read = ["{secret}"]\n'))
attempt("replace", lambda: (open(P + ".new", "w").write(WIDER), os.replace(P + ".new", P)))
attempt("rename", lambda: os.rename(P, P + ".old"))
attempt("unlink", lambda: os.unlink(P))
attempt("scratch", lambda: open(D + "/proj/notes.txt", "w").write("mine"))
"#,
            secret = s(&d.join("secret"))
        ),
    );
    all_failed(&r, &["truncate", "append", "replace", "rename", "unlink"]);
    assert!(r.stdout.contains("scratch: ok"), "{}{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), text);
    assert!(r.stderr.contains("policy.toml"), "{}", r.stderr);
}

// Regression (fourth attack on a release build): `--python-path` and the
// script were granted wherever a link led, also a link inside a writable
// grant that a program could have made in an earlier run (as
// `--allow-read` already refused).
#[test]
fn python_path_and_script_are_never_reached_through_a_link_in_a_writable_grant() {
    python_ready();
    let (_g, d) = scratch();
    let w = d.join("w");
    let outside = d.join("hostonly");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("id_rsa"), "HOST PRIVATE").unwrap();
    std::fs::write(outside.join("tool.py"), "print('ran the outside tool')\n").unwrap();
    std::os::unix::fs::symlink("../hostonly", w.join("libs")).unwrap();
    std::os::unix::fs::symlink("../hostonly/tool.py", w.join("job.py")).unwrap();
    std::fs::write(
        w.join("main.py"),
        format!("print(open({:?}).read())\n", s(&outside.join("id_rsa"))),
    )
    .unwrap();
    let grant = format!("--allow-write={}", s(&w));
    let path = format!("--python-path={}", s(&w.join("libs")));
    let r = run(&[&grant, &path], &w.join("main.py"), &[]);
    assert_refused(&r, &["reached through the link"]);
    assert!(!r.stdout.contains("HOST PRIVATE"), "{}", r.stdout);
    let r = run(&[&grant], &w.join("job.py"), &[]);
    assert_refused(&r, &["reached through the link"]);
    assert!(!r.stdout.contains("outside tool"), "{}", r.stdout);
    // Without the writable grant, the user's own link is followed as before.
    let r = run(&[], &w.join("job.py"), &[]);
    assert_eq!(r.stdout, "ran the outside tool\n", "{}", r.stderr);
}

/// A writable grant inside a read-only one holds when the program reaches
/// it from the read-only one's descriptor (as Zig reaches every path from
/// its working directory), and nothing else there becomes writable: the
/// read-only directory is open for writing in wasmtime-wasi, and capsa's
/// checks alone keep it read-only, by every open flag, link and rename.
/// Regression: `out/x` from a descriptor of `.` was refused.
#[test]
fn a_writable_grant_inside_a_read_only_one_is_writable_from_it_and_nothing_else() {
    let (_g, d) = setup();
    let w = d.join("w");
    std::fs::create_dir_all(w.join("out")).unwrap();
    let flags = [
        format!("--allow-read={}", s(&w)),
        format!("--allow-write={}", s(&w.join("out"))),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Everything but what is inside `out` (`out` itself included).
    let outside_out = |p: &String| !p.starts_with("out/");
    let before: Vec<_> = tree(&w)
        .into_iter()
        .filter(|(p, _)| outside_out(p))
        .collect();
    let secret_time = mtime(&w.join("secret.txt"));
    let r = attack(
        &d,
        &flags,
        r#"
W = D + "/w"
fd = os.open(W, os.O_RDONLY)
def write_out():
    f = os.open("out/x", os.O_CREAT | os.O_WRONLY, dir_fd=fd)
    os.write(f, b"made")
    os.mkdir("out/nested", dir_fd=fd)
    return "made"
attempt("write-out", write_out)
for label, flags in [("wronly", os.O_WRONLY), ("rdwr", os.O_RDWR), ("trunc", os.O_RDONLY | os.O_TRUNC),
                     ("append", os.O_WRONLY | os.O_APPEND)]:
    attempt("fd-" + label, lambda flags=flags: os.open("secret.txt", flags, dir_fd=fd))
    attempt("abs-" + label, lambda flags=flags: os.open(W + "/secret.txt", flags))
attempt("fd-create", lambda: os.open("planted", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
attempt("abs-create", lambda: open(W + "/planted", "w"))
attempt("fd-mkdir", lambda: os.mkdir("newdir", dir_fd=fd))
attempt("fd-symlink", lambda: os.symlink("secret.txt", "lnk", dir_fd=fd))
attempt("fd-unlink", lambda: os.unlink("secret.txt", dir_fd=fd))
attempt("fd-rmdir", lambda: os.rmdir("ro/sub", dir_fd=fd))
attempt("rename-in", lambda: os.rename(W + "/out/x", W + "/planted2"))
attempt("rename-out", lambda: os.rename(W + "/secret.txt", W + "/out/stolen"))
attempt("rename-grant", lambda: os.rename(W + "/out", W + "/out2"))
attempt("link-out", lambda: os.link(W + "/secret.txt", W + "/out/hard"))
attempt("utime", lambda: os.utime(W + "/secret.txt", (0, 0)))
def link_back():
    os.symlink("../secret.txt", W + "/out/up")
    return os.open("out/up", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
attempt("via-link", link_back)
def ftrunc():
    f = os.open("secret.txt", os.O_RDONLY, dir_fd=fd)
    os.ftruncate(f, 0)
attempt("ftruncate", ftrunc)
attempt("read-ok", lambda: open("secret.txt", opener=lambda p, f: os.open(p, f, dir_fd=fd)).read())
"#,
    );
    assert!(
        r.stdout.contains("write-out: ok 'made'"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(w.join("out/x")).unwrap(), "made");
    assert!(w.join("out/nested").is_dir());
    all_failed(
        &r,
        &[
            "fd-wronly",
            "abs-wronly",
            "fd-rdwr",
            "abs-rdwr",
            "fd-trunc",
            "abs-trunc",
            "fd-append",
            "abs-append",
            "fd-create",
            "abs-create",
            "fd-mkdir",
            "fd-symlink",
            "fd-unlink",
            "fd-rmdir",
            "rename-in",
            "rename-out",
            "rename-grant",
            "link-out",
            "utime",
            "via-link",
            "ftruncate",
        ],
    );
    assert!(
        r.stdout.contains("read-ok: ok 'TOP SECRET'"),
        "{}",
        r.stdout
    );
    let after: Vec<_> = tree(&w)
        .into_iter()
        .filter(|(p, _)| outside_out(p))
        .collect();
    assert_eq!(after, before, "w/ changed: {}", r.stdout);
    assert_eq!(mtime(&w.join("secret.txt")), secret_time);
}

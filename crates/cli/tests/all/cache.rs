//! The per-machine cache of compiled code: a warm run uses it, and a corrupt
//! entry or a changed program is never used.

use crate::support::*;

fn hello(text: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{text}\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = text.len() + 1
    )
}

/// `capsa ARGS` with its cache at `cache`.
fn in_cache<S: AsRef<std::ffi::OsStr>>(cache: &std::path::Path, args: &[S]) -> Run {
    capsa()
        .env("CAPSA_CACHE_DIR", cache)
        .args(args)
        .output()
        .unwrap()
        .into()
}

fn run_cached(cache: &std::path::Path, program: &std::path::Path) -> Run {
    in_cache(cache, &[std::ffi::OsStr::new("run"), program.as_os_str()])
}

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn corrupt_entries_are_rebuilt() {
    let (_g, d) = scratch();
    let cache = d.join("cache");
    let program = d.join("p.wat");
    std::fs::write(&program, hello("first")).unwrap();
    assert_eq!(run_cached(&cache, &program).stdout, "first\n");
    let code = entries(&cache.join("code"));
    assert_eq!(code.len(), 1, "one compiled entry");
    for (i, garbage) in [b"not compiled code".to_vec(), vec![]]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&code[0], garbage).unwrap();
        let r = run_cached(&cache, &program);
        assert_eq!(r.stdout, "first\n", "attempt {i}: {}", r.stderr);
        assert!(
            std::fs::metadata(&code[0]).unwrap().len() > 100,
            "the entry was rebuilt"
        );
    }
    // Deleting the cache only costs a recompile.
    std::fs::remove_dir_all(&cache).unwrap();
    assert_eq!(run_cached(&cache, &program).stdout, "first\n");
}

#[test]
fn a_changed_program_is_recompiled() {
    let (_g, d) = scratch();
    let cache = d.join("cache");
    let program = d.join("p.wat");
    std::fs::write(&program, hello("first")).unwrap();
    assert_eq!(run_cached(&cache, &program).stdout, "first\n");
    // Same path and the same size, new content.
    std::fs::write(&program, hello("other")).unwrap();
    assert_eq!(run_cached(&cache, &program).stdout, "other\n");
}

#[test]
fn an_entry_others_can_write_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let (_g, d) = scratch();
    let cache = d.join("cache");
    let program = d.join("p.wat");
    std::fs::write(&program, hello("first")).unwrap();
    run_cached(&cache, &program);
    let code = entries(&cache.join("code"));
    // A planted entry: right name, writable by everyone, wrong content.
    std::fs::write(&code[0], b"planted").unwrap();
    std::fs::set_permissions(&code[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = run_cached(&cache, &program);
    assert_eq!(r.stdout, "first\n", "{}", r.stderr);
}

/// A FIFO where the compiled entry belongs (put there by the user, or by
/// any program of theirs) is not opened, which would wait forever for a
/// writer: the code is compiled again and the entry is a file once more.
#[cfg(target_os = "linux")]
#[test]
fn a_fifo_in_place_of_an_entry_is_replaced_not_waited_on() {
    let (_g, d) = scratch();
    let cache = d.join("cache");
    let program = d.join("p.wat");
    std::fs::write(&program, hello("piped")).unwrap();
    assert_eq!(run_cached(&cache, &program).stdout, "piped\n");
    let code = entries(&cache.join("code"));
    let entry = code
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a compiled entry")
        .clone();
    std::fs::remove_file(&entry).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &entry,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let mut child = capsa()
        .env("CAPSA_CACHE_DIR", &cache)
        .arg("run")
        .arg(&program)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("capsa waited on the FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.stdout, "piped\n", "{}", r.stderr);
    assert!(
        std::fs::symlink_metadata(&entry).unwrap().is_file(),
        "the entry is a compiled file again"
    );
}

fn cache_cmd(cache: &std::path::Path, args: &[&str]) -> Run {
    in_cache(cache, &[&["cache"], args].concat())
}

/// `capsa cache dir`, `info` and `clean` on a cache holding compiled code,
/// another version's Python runtime and a link to a file outside: `info`
/// counts each part, `clean` empties the cache, removes the link and not
/// what it points to, and the next run compiles its program again.
#[test]
fn the_cache_is_shown_and_emptied_never_through_a_link() {
    let (_g, d) = scratch();
    let cache = d.join("cache");
    let program = d.join("p.wat");
    std::fs::write(&program, hello("cached")).unwrap();
    assert_eq!(run_cached(&cache, &program).stdout, "cached\n");
    let old = cache.join("python").join("0123456789abcdef0123");
    std::fs::create_dir_all(old.join("lib")).unwrap();
    std::fs::write(old.join("python.wasm"), vec![0u8; 3 << 20]).unwrap();
    let outside = d.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), b"mine").unwrap();
    std::os::unix::fs::symlink(&outside, cache.join("python").join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("keep.txt"), old.join("lib").join("f")).unwrap();

    let r = cache_cmd(&cache, &["dir"]);
    assert_eq!((r.code, r.stdout.trim()), (0, s(&cache)), "{}", r.stderr);

    let r = cache_cmd(&cache, &["info"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = |part: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{part} ")))
            .unwrap_or_else(|| panic!("no {part} line in:\n{}", r.stdout))
            .to_string()
    };
    assert!(line("code").contains("1 program:"), "{}", r.stdout);
    assert!(
        line("python").contains("1 runtime (1 of other versions of capsa)"),
        "{}",
        r.stdout
    );
    assert!(line("python").contains(" 3.1 MB "), "{}", r.stdout);
    assert!(line("total").contains(" MB"), "{}", r.stdout);

    let r = cache_cmd(&cache, &["clean"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("removed"), "{}", r.stdout);
    assert_eq!(entries(&cache), Vec::<std::path::PathBuf>::new());
    assert_eq!(std::fs::read(outside.join("keep.txt")).unwrap(), b"mine");

    // Emptied, it fills again as needed.
    assert_eq!(run_cached(&cache, &program).stdout, "cached\n");
    assert!(!entries(&cache.join("code")).is_empty());
    let r = cache_cmd(&cache, &["info"]);
    assert!(r.stdout.contains("1 program:"), "{}", r.stdout);
}

/// A cache that is not there yet is empty; one whose path is a link is
/// neither used by capsa nor emptied through it.
#[test]
fn a_missing_cache_is_empty_and_a_linked_one_is_not_emptied() {
    let (_g, d) = scratch();
    let missing = d.join("none");
    let r = cache_cmd(&missing, &["info"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("empty (not made yet)"), "{}", r.stdout);
    let r = cache_cmd(&missing, &["clean"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("already empty"), "{}", r.stdout);
    assert!(!missing.exists());

    let real = d.join("real");
    std::fs::create_dir_all(real.join("code")).unwrap();
    std::fs::write(real.join("code").join("x.cwasm"), b"kept").unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // Named with a trailing `/` or `/.`, which the system would follow.
    for named in [link.clone(), d.join("link/"), d.join("link/.")] {
        let r = cache_cmd(&named, &["clean"]);
        assert_eq!(r.code, 70, "{named:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("not emptied"), "{}", r.stderr);
    }
    let r = cache_cmd(&d.join("link/code/.."), &["clean"]);
    assert_eq!(r.code, 70, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("holds `..`"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(real.join("code").join("x.cwasm")).unwrap(),
        b"kept"
    );
}

/// Control characters in the cache's path reach the terminal escaped.
#[test]
fn the_cache_path_is_printed_escaped() {
    let (_g, d) = scratch();
    let cache = d.join("c\x1b[2Jache");
    for args in [&["dir"][..], &["info"], &["clean"]] {
        let r = cache_cmd(&cache, args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(!r.stdout.contains('\x1b'), "{args:?}: {:?}", r.stdout);
        assert!(
            r.stdout.contains("c\\u{1b}[2Jache"),
            "{args:?}: {:?}",
            r.stdout
        );
    }
}

/// Usage errors: no action, an unknown one.
#[test]
fn cache_without_an_action_is_a_usage_error() {
    let (_g, d) = scratch();
    for args in [&[][..], &["purge"]] {
        let r = cache_cmd(&d, args);
        assert_eq!(r.code, 125, "{args:?}: {}{}", r.stdout, r.stderr);
    }
}

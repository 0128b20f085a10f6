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

fn run_cached(cache: &std::path::Path, program: &std::path::Path) -> Run {
    capsa()
        .env("CAPSA_CACHE_DIR", cache)
        .arg("run")
        .arg(program)
        .output()
        .unwrap()
        .into()
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

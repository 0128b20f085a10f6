//! Limits: each one ends the run with its own exit code and a message that
//! names it and the flag that raises it.

use crate::support::*;
use std::time::{Duration, Instant};

/// The run ended at `--memory=64M`, with its exit code and line.
fn ended_at_64m(r: &Run) {
    assert_eq!(r.code, 137, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("capsa: memory limit of 64M reached; raise it with --memory=SIZE"),
        "{}",
        r.stderr
    );
}

/// `args` of the WASI 0.2 probe under `--memory=64M`, with capsa's own
/// heap capped well above that (see `with_heap_limit`).
fn probe_with_heap_limit(args: &[&str]) -> Run {
    let mut c = capsa();
    c.args(["run", "--memory=64M"]).arg(probe(P2)).args(args);
    with_heap_limit(c, 512 << 20)
}

#[test]
fn memory_bomb() {
    for t in [P1, P2] {
        let r = run(&["--memory=64M"], &probe(t), &["alloc"]);
        ended_at_64m(&r);
        assert!(
            !r.stdout.contains("allocated 64 MiB"),
            "{t}: grew past the limit: {}",
            r.stdout
        );
    }
    let r = run(&["--memory=1M"], &wat("grow.wat"), &[]);
    assert_eq!(r.code, 137, "{}", r.stderr);
}

// Regression: a guest could make the host hold memory without growing its
// own: 100 KiB HTTP field lists, each made from the same bytes, 100,000 of
// them (the resource cap) would be 10 GB of host heap under --memory=64M.
// The host's part now counts against the limit. The heap is capped here
// (RLIMIT_DATA) well above the limit and well below what the guest asks
// for, so that a capsa that let it through fails its allocations instead.
#[test]
fn memory_the_host_holds_for_the_guest_counts() {
    let r = probe_with_heap_limit(&["hold", "1024"]);
    ended_at_64m(&r);
    assert!(!r.stdout.contains("holding"), "{}", r.stdout);
    // Under the limit, the same guest runs to its end.
    let r = run(&["--memory=256M"], &probe(P2), &["hold", "16"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "ok: holding 163 field lists");

    // Input read before the start and freed once the program read it is
    // no credit. Regression: with 60 MB of stdin read to its end, 100 MiB
    // of field lists fitted under --memory=64M.
    let (_g, d) = scratch();
    let input = d.join("input");
    std::fs::write(&input, vec![0u8; 60 << 20]).unwrap();
    let stdin = format!("--stdin-file={}", s(&input));
    let r = run(
        &["--memory=64M", &stdin],
        &probe(P2),
        &["drain-hold", "100"],
    );
    assert_eq!(r.code, 137, "{}{}", r.stdout, r.stderr);
    let r = run(&["--memory=64M", &stdin], &probe(P2), &["drain-hold", "16"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // What the host held for the program and freed is no room for it to
    // fill: the allocator keeps those pages while small blocks stay between
    // them. Regression: a reviewer's program held three times its limit so.
    let r = run(&["--memory=64M"], &probe(P2), &["churn", "40"]);
    assert_eq!(r.code, 137, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("grew"), "{}", r.stdout);
    let r = run(&["--memory=64M"], &probe(P2), &["churn", "16"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), "ok: grew by 16 MiB");

    // One call may not make the host copy more than the limit: a list whose
    // entries all point at the same MiB of the program's memory is copied
    // once per entry. Regression: 1,000 such entries had the host build a
    // GiB before the watchdog looked (here, past the heap's own limit).
    ended_at_64m(&probe_with_heap_limit(&["alias-fields", "1000"]));
    // Under the limit, the host copies the list and refuses it for its own
    // reason (fields that large), not the limit's.
    let r = run(&["--memory=64M"], &probe(P2), &["alias-fields", "8"]);
    assert_eq!(r.code, 134, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("total size of fields exceeds limit") && !r.stderr.contains("memory"),
        "{}",
        r.stderr
    );

    // An outgoing request keeps its authority and method: longer than any
    // request needs, they are refused, not kept. Regression: a reviewer's
    // 60 MB authorities took a run under --memory=64M to 179 MB.
    let r = run(
        &["--memory=64M"],
        &probe(P2),
        &["authority", "20000000", "100"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), "ok: authority refused at 0");
    let r = run(&["--memory=64M"], &probe(P2), &["authority", "1000", "3"]);
    assert_eq!(r.stdout.trim(), "ok: set 3 requests", "{}", r.stderr);
    let r = run(
        &[],
        &probe(P2),
        &["authority", &(64 << 10).to_string(), "1"],
    );
    assert_eq!(r.stdout.trim(), "ok: set 1 requests", "{}", r.stderr);
    let r = run(
        &[],
        &probe(P2),
        &["authority", &((64 << 10) + 1).to_string(), "1"],
    );
    assert_eq!(
        r.stdout.trim(),
        "ok: authority refused at 0",
        "{}",
        r.stderr
    );
}

#[test]
fn endless_loop_hits_the_timeout() {
    for program in [probe(P2), wat("spin.wat")] {
        let start = Instant::now();
        let r = run(&["--timeout=1s"], &program, &["spin"]);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(r.code, 124, "{}", r.stderr);
        assert!(
            r.stderr
                .contains("capsa: time limit of 1s reached; raise it with --timeout=DURATION"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_guest_blocked_in_the_host_hits_the_timeout() {
    let start = Instant::now();
    let r = run(&["--timeout=500ms"], &probe(P2), &["sleep", "30"]);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(r.code, 124, "{}", r.stderr);
}

/// A limit is named as given, not rounded down to whole milliseconds.
#[test]
fn a_fractional_timeout_is_named_as_given() {
    let r = run(&["--timeout=1.5ms"], &probe(P2), &["sleep", "30"]);
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(
        r.stderr.contains("time limit of 1.5ms reached"),
        "{}",
        r.stderr
    );
}

#[test]
fn fuel_runs_out() {
    let r = run(&["--fuel=100000"], &probe(P2), &["spin"]);
    assert_eq!(r.code, 137, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("fuel limit of 100000 reached; raise it with --fuel=N"),
        "{}",
        r.stderr
    );
}

#[test]
fn output_flood_is_cut_at_the_limit() {
    let r = run(&["--max-output=100K"], &probe(P2), &["flood"]);
    assert_eq!(r.code, 137, "{}", r.stderr);
    assert_eq!(r.stdout.len(), 100 << 10);
    assert!(
        r.stderr
            .contains("output limit of 100K reached; raise it with --max-output=SIZE"),
        "{}",
        r.stderr
    );
}

/// Files written past `--max-write` (data, names made, a file grown
/// without writing) end the run; what is on the disk stays under the limit.
#[test]
fn file_writes_end_at_the_limit() {
    for t in [P1, P2] {
        let (_g, d) = scratch();
        let grant = format!("--allow-write={}", s(&d));
        let limit = "capsa: file write limit of 256K reached; raise it with --max-write=SIZE";
        // A run of the probe that must end at the 256K limit.
        let ends = |args: &[&str]| {
            let r = run(&[&grant, "--max-write=256K"], &probe(t), args);
            assert_eq!(r.code, 137, "{t} {args:?}: {}", r.stderr);
            assert!(r.stderr.contains(limit), "{t} {args:?}: {}", r.stderr);
            assert!(!r.stdout.contains("ok:"), "{t} {args:?}: {}", r.stdout);
        };
        let big = d.join("big");
        ends(&["fill", s(&big), "64"]);
        let len = std::fs::metadata(&big).unwrap().len();
        assert!(len <= 256 << 10, "{t}: {len} bytes written");

        // 4K a name: 64 made, and none more.
        let many = d.join("many");
        std::fs::create_dir(&many).unwrap();
        ends(&["touch", s(&many), "1000"]);
        let names = std::fs::read_dir(&many).unwrap().count();
        assert_eq!(names, 64, "{t}: {names} names made");

        // A byte a block apart counts the gap it leaves.
        let stride = d.join("stride");
        ends(&["stride", s(&stride), "1000"]);
        let len = std::fs::metadata(&stride).unwrap().len();
        assert!(len <= 256 << 10, "{t}: {len} bytes of file");

        let sparse = d.join("sparse");
        ends(&["grow", s(&sparse), "1048576"]);
        assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 0, "{t}");

        // Within the limit, and without one, the same programs run.
        let r = run(
            &[&grant, "--max-write=1M"],
            &probe(t),
            &["fill", s(&big), "8"],
        );
        assert_eq!(r.stdout, "ok: filled\n", "{t}: {}", r.stderr);
        let r = run(&[&grant], &probe(t), &["fill", s(&big), "32"]);
        assert_eq!(r.stdout, "ok: filled\n", "{t}: {}", r.stderr);
        assert_eq!(std::fs::metadata(&big).unwrap().len(), 32 << 16);
    }
    // A write at the last offset a file could have is beyond any limit,
    // and without one it fails as the system says; the host holds.
    let (_g, d) = scratch();
    let grant = format!("--allow-write={}", s(&d));
    let r = run(&[&grant, "--max-write=1G"], &wat("pwrite-far.wat"), &[]);
    assert_eq!(r.code, 137, "{}", r.stderr);
    let r = run(&[&grant], &wat("pwrite-far.wat"), &[]);
    assert!(r.code > 10 && r.code < 125, "{}: {}", r.code, r.stderr);
    assert_eq!(std::fs::metadata(d.join("f")).unwrap().len(), 0);

    let r = run(&["--max-write=lots"], &probe(P2), &["hello"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
}

#[test]
fn trap_is_a_crash() {
    let r = run(&[], &probe(P2), &["trap"]);
    assert_eq!(r.code, 134);
    assert!(
        r.stderr
            .contains("capsa: the program crashed: wasm `unreachable` instruction executed"),
        "{}",
        r.stderr
    );
}

/// A preview 1 module that exports no `cabi_realloc` gets pages the adapter
/// adds to its memory for its state; an allocator that takes every page
/// there is (AssemblyScript's) writes over them, and the adapter's check of
/// its state traps. The crash then says where it was and what to do. These
/// modules do what such an allocator does: a WASI call (the adapter adds
/// its pages), a write over the last page of memory, a WASI call again.
#[test]
fn a_crash_in_the_preview1_adapter_says_why() {
    let (_g, d) = scratch();
    let module = |pages: u32, realloc: &str, overwrite: bool, end: &str| {
        let overwrite = if overwrite {
            "(memory.fill
      (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 65536))
      (i32.const 0) (i32.const 65536))"
        } else {
            ""
        };
        format!(
            r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  {realloc}
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    {overwrite}
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    {end}))"#
        )
    };
    let run_module = |name: &str, source: String| {
        let path = d.join(name);
        std::fs::write(&path, source).unwrap();
        run(&[], &path, &[])
    };
    let note = "note: the crash was inside the WASI preview 1 adapter capsa runs this module in; \
                the module exports no `cabi_realloc`";
    let r = run_module("overwrites.wat", module(1, "", true, ""));
    assert_eq!(r.code, 134, "{}", r.stderr);
    assert!(
        r.stderr.contains("\ncapsa: the program crashed: "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(note), "{}", r.stderr);

    // The same program exporting `cabi_realloc`: the adapter's pages are
    // the program's own allocations, below the page it writes over.
    let bump = r#"(global $next (mut i32) (i32.const 65536))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (global.get $next)
    (global.set $next (i32.add (global.get $next) (local.get 3))))"#;
    let r = run_module("exports.wat", module(4, bump, true, ""));
    assert_eq!(r.code, 0, "{}", r.stderr);

    // A crash in the program's own code is not the adapter's, also in a
    // module that exports what the adapter does.
    let forged = r#"(func (export "cabi_import_realloc") (param i32 i32 i32 i32) (result i32)
    (i32.const 0))"#;
    for (name, realloc) in [
        ("own.wat", bump),
        ("own-no-realloc.wat", ""),
        ("forged.wat", forged),
    ] {
        let r = run_module(name, module(4, realloc, false, "unreachable"));
        assert_eq!(r.code, 134, "{}", r.stderr);
        assert!(
            r.stderr.contains("capsa: the program crashed: "),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("note:"), "{}", r.stderr);
    }
}

/// capsa's own lines on stderr start a line of their own, also after a
/// program's unfinished one.
#[test]
fn capsa_lines_start_their_own_line() {
    let (_g, d) = scratch();
    let path = d.join("partial.wat");
    std::fs::write(
        &path,
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "partial")
  (data (i32.const 80) "etc/hostname")
  (data (i32.const 96) "more")
  (func $say (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $w (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $say (i32.const 64) (i32.const 7))
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 80) (i32.const 12)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
    (call $say (i32.const 96) (i32.const 4))
    unreachable))"#,
    )
    .unwrap();
    let r = run(&[], &path, &[]);
    assert_eq!(r.code, 134, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("partial\ncapsa: denied: read /etc/hostname"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("\nmore\ncapsa: the program crashed: "),
        "{}",
        r.stderr
    );
    // Also the line of a limit, which the run's watchdog prints.
    let path = d.join("partial-spin.wat");
    std::fs::write(
        &path,
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "partial")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 7))
    (drop (call $w (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))"#,
    )
    .unwrap();
    let r = run(&["--timeout=1s"], &path, &[]);
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("partial\ncapsa: time limit of 1s reached"),
        "{}",
        r.stderr
    );
}

#[test]
fn exit_codes_pass_through() {
    assert_eq!(run(&[], &probe(P2), &["exit", "0"]).code, 0);
    assert_eq!(run(&[], &probe(P2), &["exit", "1"]).code, 1);
    let r = run(&[], &probe(P1), &["exit", "7"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    // A component that exits through WASI 0.2's `exit-with-code` (which
    // newer toolchains call) loads, and its code is the run's.
    let r = run(&[], &wat("exit-with-code.wat"), &[]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(r.stderr, "");
}

// Regression: --memory was checked per linear memory, so a guest with many
// memories held many times the limit.
#[test]
fn memory_limit_is_the_total_of_every_memory() {
    // The second growth is refused (the module would exit 3 on its own);
    // a run that fails after reaching the limit is reported as the limit's.
    let r = run(&["--memory=64M"], &wat("two-memories.wat"), &[]);
    assert_eq!(
        r.code, 137,
        "the second memory grew past the total: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("capsa: memory limit of 64M reached"),
        "{}",
        r.stderr
    );
    let r = run(&["--memory=128M"], &wat("two-memories.wat"), &[]);
    assert_eq!(r.code, 0, "both fit under 128M: {}", r.stderr);
}

// Regression: a growth past a memory's own maximum, which the engine
// refuses after asking capsa, was counted as granted (40 such asks of 64
// MiB ended a tiny program at its limit); and a refused table growth the
// program handled turned its exit code into the memory limit's 137.
#[test]
fn only_refused_memory_is_the_memory_limit() {
    let r = run(&["--memory=64M"], &wat("own-maximum.wat"), &[]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(!r.stderr.contains("memory limit"), "{}", r.stderr);
}

// Regression: the watchdog panicked printing its message when stderr could
// not be written (`2>/dev/full`), and the guest spun on.
#[test]
fn timeout_holds_when_stderr_cannot_be_written() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return;
    };
    let start = Instant::now();
    let out = capsa()
        .args(["run", "--timeout=1s"])
        .arg(probe(P2))
        .arg("spin")
        .stderr(full)
        .output()
        .expect("capsa runs");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(124));
}

//! Limits: each one ends the run with its own exit code and a message that
//! names it and the flag that raises it.

use crate::support::*;
use std::time::{Duration, Instant};

#[test]
fn memory_bomb() {
    for t in [P1, P2] {
        let r = run(&["--memory=64M"], &probe(t), &["alloc"]);
        assert_eq!(r.code, 137, "{t}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("capsa: memory limit of 64M reached; raise it with --memory=SIZE"),
            "{}",
            r.stderr
        );
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
    let mut c = capsa();
    c.args(["run", "--memory=64M"])
        .arg(probe(P2))
        .args(["hold", "1024"]);
    let r = with_heap_limit(c, 512 << 20);
    assert_eq!(r.code, 137, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("capsa: memory limit of 64M reached; raise it with --memory=SIZE"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("holding"), "{}", r.stdout);
    // Under the limit, the same guest runs to its end.
    let r = run(&["--memory=256M"], &probe(P2), &["hold", "16"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "ok: holding 163 field lists");
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

#[test]
fn exit_codes_pass_through() {
    assert_eq!(run(&[], &probe(P2), &["exit", "0"]).code, 0);
    assert_eq!(run(&[], &probe(P2), &["exit", "1"]).code, 1);
    let r = run(&[], &probe(P1), &["exit", "7"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
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

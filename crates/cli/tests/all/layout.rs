//! capsa's binary on x86-64 Linux is linked with the functions a run goes
//! through laid out together (crates/cli/link/cc, from .cargo/config.toml),
//! and the Python it prepares has CPython's laid out first
//! (crates/python/src/order.rs). This checks the binary under test, which
//! was linked the same way (the static musl build too), and the code it
//! compiles for Python.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use crate::support::{cache_dir, py_code_with_cache, python_ready, s, scratch};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn link_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/link"))
}

/// What names.awk prints, given `args` and `input` on its standard input.
fn names_awk(args: &[&str], input: String) -> String {
    let mut awk = Command::new("awk")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .current_dir(link_dir())
        .spawn()
        .expect("awk runs");
    let mut stdin = awk.stdin.take().unwrap();
    let feed = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = awk.wait_with_output().expect("awk runs");
    feed.join().unwrap().expect("awk reads its input");
    assert!(out.status.success(), "awk {args:?} failed");
    String::from_utf8(out.stdout).expect("text")
}

/// `nm -P -t x --defined-only FILE`'s text.
fn nm(file: &Path) -> String {
    let nm = Command::new("nm")
        .args(["-P", "-t", "x", "--defined-only"])
        .arg(file)
        .output()
        .expect("nm runs");
    assert!(nm.status.success(), "nm {} failed", file.display());
    String::from_utf8(nm.stdout).expect("nm's output is text")
}

/// How many of the functions `placed` ((address, size)) lie within
/// `times` their size (and 64 KiB) from `first`, and that reach.
fn near_the_start(placed: &[(u64, u64)], first: u64, times: f64) -> (usize, u64) {
    let size: u64 = placed.iter().map(|f| f.1).sum();
    let reach = (times * size as f64) as u64 + (64 << 10);
    let near = placed.iter().filter(|f| f.0 + f.1 - first <= reach).count();
    (near, reach)
}

#[test]
fn the_functions_a_run_goes_through_are_laid_out_together() {
    let listed = std::fs::read_to_string(link_dir().join("startup-order.txt"))
        .expect("the list")
        .lines()
        .count();
    // The binary's functions: name -> (address, size).
    let text = nm(Path::new(env!("CARGO_BIN_EXE_capsa")));
    let functions: HashMap<&str, (u64, u64)> = text
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, "T" | "t" | "W" | "w", addr, size] => Some((
                name,
                (
                    u64::from_str_radix(addr, 16).ok()?,
                    u64::from_str_radix(size, 16).ok()?,
                ),
            )),
            _ => None,
        })
        .collect();
    // A stripped binary (`--release`) has no names to check; one built
    // without the project's config (RUSTFLAGS set, or cargo run from outside
    // the checkout) has legacy names and no ordering.
    if !functions
        .keys()
        .any(|n| n.starts_with("_R") && n.contains("5capsa"))
    {
        eprintln!(
            "skipped: the binary under test has no symbols, or was built without .cargo/config.toml"
        );
        return;
    }
    let first = functions.values().map(|f| f.0).min().unwrap();

    // The names the linker step gives lld, found the way it finds them.
    let chosen = names_awk(&["-f", "names.awk", "startup-order.txt", "-"], text.clone());
    let found: Vec<&str> = chosen
        .lines()
        .filter(|n| functions.contains_key(n))
        .collect();
    let placed: Vec<(u64, u64)> = found.iter().map(|n| functions[n]).collect();

    // Most of the list is still found (it goes stale as the code changes:
    // scripts/startup-order remakes it), counted by key, since one key may
    // name a function in each of several versions of a crate.
    let keys = names_awk(&["-v", "keys=1", "-f", "names.awk"], found.join("\n"));
    let keys = keys.lines().count();
    assert!(
        keys * 2 >= listed,
        "only {keys} of the {listed} functions listed are in the binary"
    );
    // They lie together at the start of the code, not over the whole of it:
    // nearly all within twice their size from its start. (A few of the
    // standard library's, in a build without LTO, come from its prebuilt
    // objects, which lld may not move.)
    let (near, reach) = near_the_start(&placed, first, 2.0);
    assert!(
        near * 5 >= placed.len() * 4,
        "only {near} of the {} listed functions lie within the first {} KiB of the code",
        placed.len(),
        reach >> 10
    );
}

/// The code capsa compiles for the Python it prepared has the functions a
/// start goes through (crates/python/startup-functions.txt) at the start of
/// its text: the component was renumbered (wasmtime lays out a module's
/// functions in index order), and the list still names most of CPython's.
#[test]
fn pythons_start_up_functions_are_compiled_first() {
    python_ready();
    let (_c, cache) = scratch();
    let (_d, dir) = scratch();
    // The shared runtime, copied into a cache with no compiled code yet: the
    // one .cwasm a run then writes is Python's.
    std::fs::create_dir(cache.join("python")).unwrap();
    std::fs::set_permissions(
        cache.join("python"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let shared = capsa_python::runtime_dir(&cache_dir());
    let cp = Command::new("cp")
        .args(["-a", s(&shared), s(&cache.join("python"))])
        .status()
        .unwrap();
    assert!(cp.success());
    let r = py_code_with_cache(&cache, &dir, "print(6 * 7)");
    assert_eq!((r.code, r.stdout.trim()), (0, "42"), "{}", r.stderr);
    let compiled: Vec<_> = std::fs::read_dir(cache.join("code"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");

    // Its wasm functions, `wasm[M]::function[N]::NAME`: name -> (address,
    // size to the next symbol), and where the code starts.
    let text = nm(&compiled[0]);
    let mut symbols: Vec<(u64, Option<&str>)> = text
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, "T" | "t", addr, ..] => {
                let addr = u64::from_str_radix(addr, 16).ok()?;
                let wasm = name
                    .strip_prefix("wasm[")
                    .and_then(|n| n.split_once("]::function["))
                    .and_then(|(_, n)| n.split_once("]::"))
                    .map(|(_, n)| n);
                Some((addr, wasm))
            }
            _ => None,
        })
        .collect();
    symbols.sort();
    let first = symbols.first().expect("symbols").0;
    let functions: HashMap<&str, (u64, u64)> = symbols
        .windows(2)
        .filter_map(|w| Some((w[0].1?, (w[0].0, w[1].0 - w[0].0))))
        .collect();
    assert!(functions.len() > 10_000, "{} functions", functions.len());

    let listed = capsa_python::order::listed(capsa_python::order::STARTUP_FUNCTIONS);
    let placed: Vec<(u64, u64)> = listed
        .iter()
        .filter_map(|n| functions.get(n).copied())
        .collect();
    assert!(
        placed.len() * 2 >= listed.len(),
        "only {} of the {} functions listed are in the compiled Python",
        placed.len(),
        listed.len()
    );
    // They are one stretch (a name had twice moves both: the slack), which
    // is a small part of the code.
    let (near, reach) = near_the_start(&placed, first, 1.1);
    assert!(
        near * 20 >= placed.len() * 19,
        "only {near} of the {} listed functions lie within the first {} KiB of the code",
        placed.len(),
        reach >> 10
    );
    let last = symbols.last().unwrap().0;
    assert!(reach * 3 < last - first, "{reach} of {}", last - first);
}

/// The binary's relocated data (vtables, function pointers, its global
/// offset table: `PT_GNU_RELRO`) is read-only while it runs, so that a
/// stray write in the host cannot redirect a call: glibc's loader makes it
/// so, and the static build does it itself (src/relro.rs).
#[test]
fn the_binarys_relocated_data_is_read_only_while_it_runs() {
    let exe = env!("CARGO_BIN_EXE_capsa");
    let out = Command::new("readelf")
        .args(["-lW", exe])
        .output()
        .expect("readelf runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let (vaddr, memsz) = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"GNU_RELRO"))
        .map(|f| (hex(f[2]), hex(f[5])))
        .expect("the binary has a GNU_RELRO segment");

    let maps = crate::support::proc_file_of_waiting_python("maps");

    // (start, end, permissions, file offset) of each mapping of the binary;
    // the one at offset 0 is where it was loaded (its first segment's link
    // address is 0).
    let exe = std::fs::canonicalize(exe).unwrap();
    let mine: Vec<(u64, u64, String, u64)> = maps
        .lines()
        .map(|l| {
            // The path is the rest of the line, spaces and all.
            let f: Vec<&str> = l.splitn(6, ' ').collect();
            let path = f.get(5).map_or("", |p| p.trim_start());
            (f, path)
        })
        .filter(|(f, path)| f.len() == 6 && Path::new(path) == exe)
        .map(|(f, _)| f)
        .map(|f| {
            let (a, b) = f[0].split_once('-').unwrap();
            (hex(a), hex(b), f[1].to_string(), hex(f[2]))
        })
        .collect();
    let base = mine
        .iter()
        .find(|m| m.3 == 0)
        .map(|m| m.0)
        .expect("the binary is mapped from its start");
    let (start, end) = ((base + vaddr) & !4095, (base + vaddr + memsz) & !4095);
    assert!(end > start, "{vaddr:x} {memsz:x}");
    for page in (start..end).step_by(4096) {
        let m = mine
            .iter()
            .find(|m| m.0 <= page && page < m.1)
            .unwrap_or_else(|| panic!("{page:x} is not mapped: {maps}"));
        assert_eq!(&m.2[..2], "r-", "{page:x} is {}: {maps}", m.2);
    }
}

/// The static build's `memcpy` and `memmove` are capsa's own (crates/mem),
/// not musl's (`rep movsq`, slow for a guest's many short `memory.copy`s),
/// and call nothing: not themselves, which the compiler could otherwise make
/// of their loads and loops.
#[cfg(target_env = "musl")]
#[test]
fn the_static_builds_memcpy_is_its_own_and_calls_nothing() {
    let exe = Path::new(env!("CARGO_BIN_EXE_capsa"));
    let symbols = nm(exe);
    for name in ["memcpy", "memmove"] {
        // `nm -P`: name, type, address, size (the two may share one body).
        let (at, size) = symbols
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 4 && f[0] == name)
            .map(|f| {
                let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
                (hex(f[2]), hex(f[3]))
            })
            .unwrap_or_else(|| panic!("no {name} in the binary"));
        let out = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(format!("--start-address={at:#x}"))
            .arg(format!("--stop-address={:#x}", at + size))
            .arg(exe)
            .output()
            .expect("objdump runs");
        assert!(out.status.success(), "objdump failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let body: Vec<&str> = text.lines().filter(|l| l.starts_with(' ')).collect();
        assert!(body.len() > 10, "{name} is too short to be a copy:\n{text}");
        for l in &body {
            let jumps_out = l.contains("jmp")
                && l.contains('<')
                && !l.contains("<memcpy")
                && !l.contains("<memmove");
            assert!(
                !l.contains("call") && !l.contains("rep movs") && !jumps_out,
                "{name} is not capsa's own, or calls out: {l}\n{text}"
            );
        }
    }
}

//! capsa's binary on x86-64 Linux is linked with the functions a run goes
//! through laid out together (crates/cli/link/cc, from .cargo/config.toml).
//! This checks the binary under test, which was linked the same way.

#![cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]

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

#[test]
fn the_functions_a_run_goes_through_are_laid_out_together() {
    let listed = std::fs::read_to_string(link_dir().join("startup-order.txt"))
        .expect("the list")
        .lines()
        .count();
    let nm = Command::new("nm")
        .args(["-P", "-t", "x", "--defined-only"])
        .arg(env!("CARGO_BIN_EXE_capsa"))
        .output()
        .expect("nm runs");
    assert!(nm.status.success(), "nm failed");
    // The binary's functions: name -> (address, size).
    let text = String::from_utf8(nm.stdout).expect("nm's output is text");
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
    let size: u64 = placed.iter().map(|f| f.1).sum();
    let reach = 2 * size + (64 << 10);
    let near = placed.iter().filter(|f| f.0 + f.1 - first <= reach).count();
    assert!(
        near * 5 >= placed.len() * 4,
        "only {near} of the {} listed functions ({} KiB of code) lie within the first {} KiB of the code",
        placed.len(),
        size >> 10,
        reach >> 10
    );
}

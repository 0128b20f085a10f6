//! capsa's binary on x86-64 Linux is linked with the functions a run goes
//! through laid out together (crates/cli/link/cc, from .cargo/config.toml).
//! This checks the binary under test, which was linked the same way.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn the_functions_a_run_goes_through_are_laid_out_together() {
    let link = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/link"));
    let list = link.join("startup-order.txt");
    let listed = std::fs::read_to_string(&list)
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
    let first = functions.values().map(|f| f.0).min().expect("functions");

    // The names the linker step gives lld, found the way it finds them.
    let mut awk = Command::new("awk")
        .arg("-f")
        .arg(link.join("names.awk"))
        .arg("-")
        .arg(&list)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("awk runs");
    let mut stdin = awk.stdin.take().unwrap();
    let input = text.clone();
    let feed = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = awk.wait_with_output().expect("awk runs");
    feed.join().unwrap().expect("awk reads nm's output");
    assert!(out.status.success(), "awk failed");
    let chosen = String::from_utf8(out.stdout).expect("text");
    let placed: Vec<(u64, u64)> = chosen
        .lines()
        .filter_map(|n| functions.get(n).copied())
        .collect();

    // Most of the list is still found (it goes stale as the code changes:
    // scripts/startup-order remakes it).
    assert!(
        placed.len() * 2 >= listed,
        "only {} of the {listed} functions listed are in the binary",
        placed.len()
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

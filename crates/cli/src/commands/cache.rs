//! `capsa cache`: where capsa's cache is, what it holds, and emptying it.
//!
//! Nothing in the cache is ever removed by capsa on its own: each version
//! of capsa prepares its own Python runtime (about 60 MB with its compiled
//! code) and each program its own compiled code, so a cache grows with
//! upgrades. `capsa cache info` says where the space goes; `capsa cache
//! clean` empties it, and everything is made again when next needed.

use super::run::fail;
use capsa_policy::escape_for_terminal;
use capsa_sandbox::{CodeCache, exit};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
The cache holds compiled code, the Python runtime prepared for this machine,
unpacked bundles, the packages of scripts' inline dependencies and pip's
own. It is $CAPSA_CACHE_DIR, else (on Windows) %LOCALAPPDATA%\\capsa, else
$XDG_CACHE_HOME/capsa, else ~/.cache/capsa. Nothing in it is removed on its
own: a new version of capsa prepares Python again beside the old one's.

`capsa cache clean` removes everything in it; what is needed again is made
again (Python: about 30 s on first use). Do not clean while capsa runs: a
run that is preparing something would fail.

Exit status: 0, or 70 for a cache that cannot be read or emptied (what
could not be removed is named; capsa checks every entry it reads, so one
left half-removed is made again).";

#[derive(Args, Debug)]
#[command(
    about = "Show where capsa's cache is and what it holds, or empty it",
    after_help = AFTER_HELP
)]
pub struct CacheArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Print the cache's directory.
    Dir,
    /// What the cache holds, part by part, and its size.
    Info,
    /// Remove everything the cache holds.
    Clean,
}

pub fn run(args: CacheArgs) -> i32 {
    let Some(root) = CodeCache::default_dir() else {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!(
                "no cache directory: set CAPSA_CACHE_DIR (or HOME, or on Windows LOCALAPPDATA)"
            ),
        );
    };
    if let Action::Dir = args.action {
        out!("{}", escape_for_terminal(&root.to_string_lossy()));
        return 0;
    }
    // `link/` and `link/.` are followed where `link` is not: without them,
    // a link at the end is seen as one. `..` could name anything.
    if root
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!(
                "the cache's path {} holds `..`: name it without",
                escape_for_terminal(&root.to_string_lossy())
            ),
        );
    }
    let root: PathBuf = root.components().collect();
    match args.action {
        Action::Info => info(&root),
        _ => clean(&root),
    }
}

/// The cache's parts, by the directory each lives in, and what one entry
/// of it is, and more than one.
const PARTS: &[(&str, &str, &str, &str)] = &[
    ("python", "Python runtimes", "runtime", "runtimes"),
    ("code", "compiled programs", "program", "programs"),
    ("bundles", "unpacked bundles", "bundle", "bundles"),
    (
        "envs",
        "scripts' inline dependencies",
        "environment",
        "environments",
    ),
    ("pip", "pip's own cache", "entry", "entries"),
    (
        "pycache",
        "bytecode of --python-path folders",
        "entry",
        "entries",
    ),
    ("digests", "file digests", "record", "records"),
];

fn info(root: &Path) -> i32 {
    out!("cache: {}", escape_for_terminal(&root.to_string_lossy()));
    let meta = std::fs::symlink_metadata(root);
    match &meta {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out!("empty (not made yet)");
            return 0;
        }
        Err(e) => {
            return fail(
                exit::INTERNAL,
                anyhow::anyhow!("cannot read the cache: {e}"),
            );
        }
        Ok(m) if !m.is_dir() => {
            return fail(
                exit::INTERNAL,
                anyhow::anyhow!("the cache's path is not a directory (capsa does not use it)"),
            );
        }
        Ok(_) => {}
    }
    let ours = capsa_python::runtime_dir(root);
    let mut total = 0;
    let mut known = Vec::new();
    for (dir, what, one, many) in PARTS {
        let path = root.join(dir);
        // A part that is not a directory (a link, say) is counted with the
        // rest, never read through.
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        known.push(*dir);
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        let mut size = 0;
        let mut count = 0;
        let mut others = 0;
        for e in entries.flatten() {
            let p = e.path();
            size += size_of(&p);
            // One entry per program: its code, not the page profile beside it.
            let counted = match *dir {
                "code" => p.extension().is_some_and(|x| x == "cwasm"),
                "python" => std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()),
                _ => true,
            };
            if counted {
                count += 1;
                if *dir == "python" && p != ours {
                    others += 1;
                }
            }
        }
        total += size;
        let noun = if count == 1 { one } else { many };
        let note = match (*dir, others) {
            ("python", 0) => String::new(),
            ("python", n) => format!(" ({n} of other versions of capsa)"),
            _ => String::new(),
        };
        out!(
            "{:<10} {:>9}  {count} {noun}{note}: {what}",
            dir,
            human(size)
        );
    }
    let mut other = 0;
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name();
            if !known.iter().any(|k| name == **k) {
                other += size_of(&e.path());
            }
        }
    }
    if other > 0 {
        out!(
            "{:<10} {:>9}  locks and work in progress",
            "other",
            human(other)
        );
        total += other;
    }
    out!("{:<10} {:>9}", "total", human(total));
    0
}

/// Bytes in the files under `path`, links not followed; without
/// recursion, as a tree may be deeper than the stack. What cannot be read
/// (a path too long for the system, say) counts nothing.
fn size_of(path: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !meta.is_dir() {
            total += meta.len();
        } else if let Ok(entries) = std::fs::read_dir(&p) {
            todo.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// Removes everything in the cache at `root`, never through a link: a link
/// in it is removed, not followed; the cache's own path being a link is
/// refused (capsa does not use such a cache either).
fn clean(root: &Path) -> i32 {
    let shown = escape_for_terminal(&root.to_string_lossy()).into_owned();
    let meta = match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out!("{shown}: already empty");
            return 0;
        }
        Err(e) => return fail(exit::INTERNAL, anyhow::anyhow!("cannot read {shown}: {e}")),
        Ok(m) => m,
    };
    if !meta.is_dir() {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!("{shown} is not a directory (a link, say): not emptied"),
        );
    }
    let before = size_of(root);
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) => return fail(exit::INTERNAL, anyhow::anyhow!("cannot read {shown}: {e}")),
    };
    let mut failed: Vec<(PathBuf, std::io::Error)> = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
        // Never through a link, and without recursion: a sandboxed `capsa
        // pip` writes in the cache, and a tree deeper than the stack is
        // quick to make.
        let r = if is_dir {
            capsa_sandbox::load::remove_tree(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(err) = r {
            failed.push((p, err));
        }
    }
    if let Some((p, err)) = failed.first() {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!(
                "could not remove {} ({err}){}",
                escape_for_terminal(&p.to_string_lossy()),
                match failed.len() {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                }
            ),
        );
    }
    out!("{shown}: removed {}", human(before));
    0
}

//! A project folder to a bundle's contents.

use crate::{MANIFEST, Manifest, check_entry_path};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A path in an error message, as a terminal may show it: a file name
/// holding a newline or an escape sequence cannot forge a line.
fn shown(p: &Path) -> String {
    shown_str(&p.display().to_string())
}

fn shown_str(s: &str) -> String {
    capsa_policy::escape_for_terminal(s).into_owned()
}

/// Where `--python-path` directories go inside a bundle.
pub const SITE_PACKAGES: &str = "site-packages";

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Manifest(#[from] crate::ManifestError),
}

/// The manifest and files of the folder `dir`, plus each of `python_path`
/// under `site-packages/`. Hidden entries, `__pycache__` and `*.pyc` are
/// left out; `skip` (the output file, when it is inside `dir`) too.
pub fn collect(
    dir: &Path,
    python_path: &[&Path],
    skip: Option<&Path>,
) -> Result<(Manifest, BTreeMap<String, Vec<u8>>), PackError> {
    if !dir.is_dir() {
        return Err(PackError::Input(format!(
            "{} is not a directory",
            shown(dir)
        )));
    }
    let mut files = BTreeMap::new();
    walk(dir, "", skip, &mut files)?;
    for p in python_path {
        if !p.is_dir() {
            return Err(PackError::Input(format!(
                "--python-path={}: not a directory",
                shown(p)
            )));
        }
        walk(p, SITE_PACKAGES, skip, &mut files)?;
    }
    let manifest = if let Some(m) = read_manifest(dir)? {
        m
    } else {
        Manifest::default_for(&default_entry(&files).ok_or_else(|| {
            PackError::Input(format!(
                "{} has no capsa.toml, no main.py and not exactly one .wasm file: nothing to run",
                shown(dir)
            ))
        })?)
    };
    if !files.contains_key(&manifest.run.entry) {
        return Err(PackError::Input(format!(
            "run.entry {:?} is not a file in {}",
            manifest.run.entry,
            shown(dir)
        )));
    }
    Ok((manifest, files))
}

/// The folder's `capsa.toml`, if it has one.
fn read_manifest(dir: &Path) -> Result<Option<Manifest>, PackError> {
    let manifest_path = dir.join(MANIFEST);
    match std::fs::symlink_metadata(&manifest_path) {
        // A link is refused, as for every other file of the folder: what it
        // names is not the folder's.
        Ok(m) if m.file_type().is_symlink() => {
            return Err(PackError::Input(format!(
                "{} is a symbolic link; bundles hold regular files only (copy the file in)",
                shown(&manifest_path)
            )));
        }
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(PackError::Input(format!(
                "{} is not a regular file",
                shown(&manifest_path)
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PackError::Input(format!("{}: {e}", shown(&manifest_path))));
        }
    }
    // Opened as checked: swapped for a link since, it is refused.
    let text = read_regular(&manifest_path)
        .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::other("not UTF-8 text")));
    let text = text.map_err(|e| PackError::Input(format!("{}: {e}", shown(&manifest_path))))?;
    Ok(Some(Manifest::from_toml(&text)?))
}

/// The entry [`collect`] would find when it is named (`capsa.toml`'s
/// `run.entry`) or is `main.py`, without reading the folder's files. A lone
/// `.wasm` is found only by collecting; any error is `collect`'s to report.
pub fn named_entry(dir: &Path) -> Option<String> {
    match read_manifest(dir) {
        Ok(Some(m)) => Some(m.run.entry),
        Ok(None) => dir.join("main.py").is_file().then(|| "main.py".into()),
        Err(_) => None,
    }
}

fn default_entry(files: &BTreeMap<String, Vec<u8>>) -> Option<String> {
    if files.contains_key("main.py") {
        return Some("main.py".into());
    }
    let mut wasm = files
        .keys()
        .filter(|k| !k.contains('/') && (k.ends_with(".wasm") || k.ends_with(".wat")));
    match (wasm.next(), wasm.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

/// Opens the folder `dir` (as the user named it) and collects it.
fn walk(
    dir: &Path,
    prefix: &str,
    skip: Option<&Path>,
    out: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), PackError> {
    let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| PackError::Input(format!("{}: {e}", shown(dir))))?;
    walk_in(&root, dir, prefix, skip, out)
}

/// Collects the folder `dir`, found at `path`, through its handle: each
/// subfolder and file is opened from its parent's handle without following
/// a link, so a folder swapped for a link while this runs is refused, not
/// followed out of the tree.
fn walk_in(
    dir: &cap_std::fs::Dir,
    path: &Path,
    prefix: &str,
    skip: Option<&Path>,
    out: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), PackError> {
    use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
    let io = |p: &Path, e: std::io::Error| PackError::Input(format!("{}: {e}", shown(p)));
    let mut entries: Vec<_> = dir
        .entries()
        .map_err(|e| io(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io(path, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let here = path.join(&name);
        let name = name
            .to_str()
            .ok_or_else(|| PackError::Input(format!("{}: the name is not UTF-8", shown(&here))))?;
        if name.starts_with('.') || name == "__pycache__" || name.ends_with(".pyc") {
            continue;
        }
        if prefix.is_empty() && name == MANIFEST {
            continue;
        }
        if skip.is_some_and(|s| same_file(s, &here)) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        check_entry_path(&rel)
            .map_err(|why| PackError::Input(format!("{}: {why}", shown_str(&rel))))?;
        let link = || {
            PackError::Input(format!(
                "{} is a symbolic link; bundles hold regular files only (copy the file in)",
                shown(&here)
            ))
        };
        // Swapped for a link since it was listed: said as such.
        let not_opened = |e| {
            if dir.symlink_metadata(name).is_ok_and(|m| m.is_symlink()) {
                link()
            } else {
                io(&here, e)
            }
        };
        let ty = entry.file_type().map_err(|e| io(&here, e))?;
        if ty.is_symlink() {
            return Err(link());
        } else if ty.is_dir() {
            let sub = dir.open_dir_nofollow(name).map_err(not_opened)?;
            walk_in(&sub, &here, &rel, skip, out)?;
        } else if ty.is_file() {
            let mut options = cap_std::fs::OpenOptions::new();
            options.read(true).follow(FollowSymlinks::No);
            #[cfg(unix)]
            {
                use cap_std::fs::OpenOptionsExt;
                // Nor waiting on a FIFO put there: refused below, once open.
                options.custom_flags(libc::O_NONBLOCK);
            }
            let mut file = dir.open_with(name, &options).map_err(not_opened)?;
            if !file.metadata().map_err(|e| io(&here, e))?.is_file() {
                return Err(PackError::Input(format!(
                    "{} is not a regular file",
                    shown(&here)
                )));
            }
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(|e| io(&here, e))?;
            out.insert(rel, data);
        } else {
            return Err(PackError::Input(format!(
                "{} is not a regular file",
                shown(&here)
            )));
        }
    }
    Ok(())
}

/// The bytes of the regular file at `path`, read from what was opened
/// (never through a link put there since the folder was listed).
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    crate::open_regular(path)?.read_to_end(&mut out)?;
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

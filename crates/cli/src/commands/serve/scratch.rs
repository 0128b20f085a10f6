//! A run's or a session's scratch directory, as the server reads and writes
//! it for the client. The guest may have made anything there (links out,
//! hard links to files it may only read, names that are not UTF-8), so the
//! server never follows a name out of it: every access goes through a
//! handle on the directory (cap-std), and a write replaces the name rather
//! than writing through what it points at.

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Bytes of one file the API reads or writes.
pub const MAX_FILE: u64 = 64 << 20;

#[derive(Debug)]
pub enum FileError {
    /// The name is not one the API takes (400).
    BadName(String),
    /// Nothing there, or not reachable from the scratch directory (404).
    NotFound(String),
    /// Larger than [`MAX_FILE`] (413).
    TooLarge(String),
    Io(String),
}

/// A relative name inside the scratch directory: plain components only.
pub fn check_name(name: &str) -> Result<PathBuf, FileError> {
    let bad = |why: &str| FileError::BadName(format!("{:?}: {why}", escape(name)));
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    if name
        .chars()
        .any(|c| c == '\0' || c == '\\' || c.is_control())
    {
        return Err(bad("control characters and backslashes are not taken"));
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(bad("must be a relative name below the scratch directory")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names the scratch directory itself"));
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    capsa_policy::escape_for_terminal(s).into_owned()
}

fn open(root: &Path) -> Result<Dir, FileError> {
    Dir::open_ambient_dir(root, ambient_authority()).map_err(|e| FileError::Io(e.to_string()))
}

fn not_found(name: &Path, e: std::io::Error) -> FileError {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => FileError::NotFound(
            format!("{}: no such file", escape(&name.display().to_string())),
        ),
        // cap-std refuses a link that leads out as an error of its own.
        _ if e.raw_os_error().is_none() => FileError::NotFound(format!(
            "{}: no such file",
            escape(&name.display().to_string())
        )),
        _ => written(name, e),
    }
}

/// An error writing `name`: the name's fault (a part too long, a folder
/// where a file goes or the other way round) is the request's (400).
fn written(name: &Path, e: std::io::Error) -> FileError {
    use std::io::ErrorKind::*;
    match e.kind() {
        InvalidFilename | IsADirectory | NotADirectory | DirectoryNotEmpty | AlreadyExists => {
            FileError::BadName(format!(
                "{}: cannot write there: {e}",
                escape(&name.display().to_string())
            ))
        }
        _ => FileError::Io(e.to_string()),
    }
}

/// What a read found.
pub enum Found {
    File(Vec<u8>),
    /// A directory's entries: (name, is_dir, size).
    Dir(Vec<(String, bool, u64)>),
}

/// Reads `name` (a file, or a directory's listing); `None` reads the root.
pub fn read(root: &Path, name: Option<&Path>) -> Result<Found, FileError> {
    let dir = open(root)?;
    let target = match name {
        None => return list(&dir),
        Some(n) => n,
    };
    let meta = dir.metadata(target).map_err(|e| not_found(target, e))?;
    if meta.is_dir() {
        let sub = dir.open_dir(target).map_err(|e| not_found(target, e))?;
        return list(&sub);
    }
    if !meta.is_file() {
        return Err(FileError::NotFound(format!(
            "{}: not a regular file",
            escape(&target.display().to_string())
        )));
    }
    let file = dir.open(target).map_err(|e| not_found(target, e))?;
    let mut bytes = Vec::new();
    use std::io::Read;
    let n = file
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::Io(e.to_string()))?;
    if n as u64 > MAX_FILE {
        return Err(FileError::TooLarge(format!(
            "{} is larger than {} MiB",
            escape(&target.display().to_string()),
            MAX_FILE >> 20
        )));
    }
    Ok(Found::File(bytes))
}

fn list(dir: &Dir) -> Result<Found, FileError> {
    let mut out = Vec::new();
    for entry in dir.entries().map_err(|e| FileError::Io(e.to_string()))? {
        let entry = entry.map_err(|e| FileError::Io(e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (is_dir, size) = match entry.metadata() {
            Ok(m) => (m.is_dir(), if m.is_file() { m.len() } else { 0 }),
            Err(_) => (false, 0),
        };
        out.push((name, is_dir, size));
    }
    out.sort();
    Ok(Found::Dir(out))
}

/// `Err` (413) for more than [`MAX_FILE`] bytes to write.
fn fits(bytes: &[u8]) -> Result<(), FileError> {
    if bytes.len() as u64 > MAX_FILE {
        return Err(FileError::TooLarge(format!(
            "a file may hold at most {} MiB",
            MAX_FILE >> 20
        )));
    }
    Ok(())
}

/// Writes `bytes` at `name`, making its directories; an existing name is
/// replaced (a link there is replaced, never followed).
pub fn write(root: &Path, name: &Path, bytes: &[u8]) -> Result<(), FileError> {
    fits(bytes)?;
    let dir = open(root)?;
    let parent = name.parent().filter(|p| !p.as_os_str().is_empty());
    let (dir, leaf) = match parent {
        Some(p) => {
            dir.create_dir_all(p).map_err(|e| not_found(p, e))?;
            (
                dir.open_dir(p).map_err(|e| not_found(p, e))?,
                name.file_name(),
            )
        }
        None => (dir, name.file_name()),
    };
    let leaf = Path::new(leaf.ok_or_else(|| FileError::BadName("no file name".into()))?);
    let tmp = PathBuf::from(format!(".capsa-upload-{:016x}", super::random_u64()));
    let mut f = dir.create(&tmp).map_err(|e| FileError::Io(e.to_string()))?;
    let done = f.write_all(bytes).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = done.and_then(|_| dir.rename(&tmp, &dir, leaf)) {
        let _ = dir.remove_file(&tmp);
        return Err(written(name, e));
    }
    Ok(())
}

/// Files one run's request may bring.
pub const MAX_FILES: usize = 1_000;

/// The relative paths of a request's files, checked before anything is
/// written.
pub fn check_files(
    files: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<PathBuf>, FileError> {
    if files.len() > MAX_FILES {
        return Err(FileError::BadName(format!(
            "files: at most {MAX_FILES} files a run ({} given)",
            files.len()
        )));
    }
    files.keys().map(|n| check_name(n)).collect()
}

/// Writes a request's files, named as [`check_files`] gave them, into a
/// fresh scratch directory that nothing else reads until the run starts:
/// each file written in place, not synced (the directory goes with the
/// run, and a fill that fails is removed with it).
pub fn fill(
    root: &Path,
    files: &std::collections::BTreeMap<String, String>,
    names: &[PathBuf],
) -> Result<(), FileError> {
    let dir = open(root)?;
    for ((given, content), name) in files.iter().zip(names) {
        fits(content.as_bytes())?;
        // Names that clash (`a` and `a/b`, or `a/b` and `a`) are the
        // request's error.
        let clash = |e: std::io::Error| {
            FileError::BadName(format!("files: cannot write {:?}: {e}", escape(given)))
        };
        if let Some(parent) = name.parent().filter(|p| !p.as_os_str().is_empty()) {
            dir.create_dir_all(parent).map_err(clash)?;
        }
        let mut options = cap_std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        dir.open_with(name, &options)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .map_err(clash)?;
    }
    Ok(())
}

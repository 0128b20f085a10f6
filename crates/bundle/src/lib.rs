//! The `.capsa` bundle: one file holding a program, the files it carries and
//! the permissions it asks for (its `capsa.toml`), that runs on any machine
//! capsa runs on. Precompiled code is never inside: it is cached per machine.
//!
//! ```text
//! capsa bundle 1\n                                  the magic line
//! sha256=<64 hex digits> size=<payload bytes>\n     the digest line
//! <payload>                                         zstd-compressed tar
//! ```
//!
//! The tar holds `capsa.toml` first, then every file sorted by path, all
//! regular files with fixed metadata (mode 0644, mtime 0, uid/gid 0), so the
//! same folder packs to the same bytes. The digest covers the whole payload
//! and is checked before anything is decompressed. A bundle is untrusted:
//! the reader refuses links, directories, absolute paths, `..`, duplicate
//! entries, more bytes than declared, and more unpacked bytes than
//! [`ReadLimits`] allow, each with one line.

pub mod manifest;
pub mod pack;

pub use manifest::{Manifest, ManifestError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;

pub const MAGIC: &[u8] = b"capsa bundle 1\n";
/// The manifest's name inside a bundle and in a project folder.
pub const MANIFEST: &str = "capsa.toml";
const ZSTD_LEVEL: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a capsa bundle (it does not start with \"capsa bundle 1\")")]
    NotBundle,
    #[error("damaged bundle: {0}")]
    Corrupt(String),
    #[error("the bundle was modified or damaged: its contents do not match its sha256 digest")]
    DigestMismatch,
    #[error("unsafe bundle entry {path:?}: {why}")]
    UnsafeEntry { path: String, why: String },
    #[error("the bundle unpacks to more than {0} bytes (a decompression bomb?)")]
    TooLarge(u64),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Caps on what reading one bundle may cost.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Unpacked bytes, all files together.
    pub max_unpacked: u64,
    pub max_entries: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_unpacked: 2 << 30,
            max_entries: 100_000,
        }
    }
}

/// A bundle's contents, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Every file but the manifest, by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// SHA-256 of the payload: the bundle's identity.
    pub digest: [u8; 32],
}

impl Bundle {
    pub fn digest_hex(&self) -> String {
        hex(&self.digest)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Does the file at `path` start like a bundle?
pub fn is_bundle_file(path: &std::path::Path) -> bool {
    let mut head = [0u8; MAGIC.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == MAGIC)
}

/// Is `path` acceptable as a path inside a bundle? Relative, `/`-separated,
/// no empty, `.` or `..` component, no backslash or NUL.
pub fn check_entry_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\\') || path.contains('\0') {
        return Err("backslash or NUL in the path".into());
    }
    if path.len() > 4096 {
        return Err("path longer than 4096 bytes".into());
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("empty, . or .. path component".into());
    }
    Ok(())
}

/// Packs `manifest` and `files` into bundle bytes, reproducibly.
pub fn write(
    manifest: &Manifest,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, BundleError> {
    manifest.validate()?;
    let unsafe_entry = |path: &str, why: String| BundleError::UnsafeEntry {
        path: path.to_string(),
        why,
    };
    if !files.contains_key(&manifest.run.entry) {
        return Err(ManifestError::Invalid(format!(
            "run.entry {:?} is not among the bundle's files",
            manifest.run.entry
        ))
        .into());
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |path: &str, data: &[u8]| -> Result<(), BundleError> {
        check_entry_path(path).map_err(|why| unsafe_entry(path, why))?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, path, data)
            .map_err(|e| BundleError::Corrupt(e.to_string()))
    };
    append(MANIFEST, manifest.to_toml().as_bytes())?;
    for (path, data) in files {
        if path == MANIFEST {
            return Err(unsafe_entry(
                path,
                "the manifest is written from the manifest".into(),
            ));
        }
        append(path, data)?;
    }
    let tar = tar
        .into_inner()
        .map_err(|e| BundleError::Corrupt(e.to_string()))?;
    let payload =
        zstd::bulk::compress(&tar, ZSTD_LEVEL).map_err(|e| BundleError::Corrupt(e.to_string()))?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(
        format!(
            "sha256={} size={}\n",
            hex(&Sha256::digest(&payload)),
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads and checks bundle bytes: digest first, then every entry.
pub fn read(bytes: &[u8], limits: ReadLimits) -> Result<Bundle, BundleError> {
    let (digest, payload) = verify(bytes)?;
    decode(digest, payload, limits)
}

/// Checks the magic, the digest line, the payload's length and its SHA-256,
/// without decompressing anything; returns the digest and the payload.
pub fn verify(bytes: &[u8]) -> Result<([u8; 32], &[u8]), BundleError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(BundleError::NotBundle)?;
    let end = rest
        .iter()
        .take(200)
        .position(|&b| b == b'\n')
        .ok_or_else(|| BundleError::Corrupt("no digest line".into()))?;
    let line = std::str::from_utf8(&rest[..end])
        .map_err(|_| BundleError::Corrupt("bad digest line".into()))?;
    let payload = &rest[end + 1..];
    let (digest, size) =
        parse_digest_line(line).ok_or_else(|| BundleError::Corrupt("bad digest line".into()))?;
    if payload.len() as u64 != size {
        return Err(BundleError::Corrupt(format!(
            "{} payload bytes where the bundle declares {size} (truncated?)",
            payload.len()
        )));
    }
    let actual: [u8; 32] = Sha256::digest(payload).into();
    if actual != digest {
        return Err(BundleError::DigestMismatch);
    }
    Ok((digest, payload))
}

/// The files of a verified payload, each entry checked.
fn decode(digest: [u8; 32], payload: &[u8], limits: ReadLimits) -> Result<Bundle, BundleError> {
    let decoder = zstd::Decoder::new(payload).map_err(|e| BundleError::Corrupt(e.to_string()))?;
    // One byte more than allowed tells a bomb from a bundle exactly at the cap.
    let capped = decoder.take(limits.max_unpacked + 1);
    let mut archive = tar::Archive::new(capped);
    let mut manifest = None;
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Corrupt(e.to_string()))?;
    for (i, entry) in entries.enumerate() {
        if i >= limits.max_entries {
            return Err(BundleError::Corrupt(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let mut entry = entry.map_err(|e| corrupt_or_bomb(e, limits))?;
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| BundleError::Corrupt("an entry path is not UTF-8".into()))?;
        check_entry_path(&path).map_err(|why| BundleError::UnsafeEntry {
            path: path.clone(),
            why,
        })?;
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(BundleError::UnsafeEntry {
                path,
                why: format!("a {kind:?} entry; bundles hold regular files only"),
            });
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| BundleError::Corrupt(e.to_string()))?;
        total = total.saturating_add(size);
        if total > limits.max_unpacked {
            return Err(BundleError::TooLarge(limits.max_unpacked));
        }
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| corrupt_or_bomb(e, limits))?;
        if data.len() as u64 != size {
            return Err(BundleError::Corrupt(format!(
                "{path}: shorter than declared"
            )));
        }
        if i == 0 {
            if path != MANIFEST {
                return Err(BundleError::Corrupt(format!(
                    "the first entry is {path:?}, not {MANIFEST}"
                )));
            }
            let text = String::from_utf8(data)
                .map_err(|_| BundleError::Corrupt("capsa.toml is not UTF-8".into()))?;
            manifest = Some(Manifest::from_toml(&text)?);
            continue;
        }
        if path == MANIFEST || files.insert(path.clone(), data).is_some() {
            return Err(BundleError::UnsafeEntry {
                path,
                why: "a duplicate entry".into(),
            });
        }
    }
    let manifest = manifest.ok_or_else(|| BundleError::Corrupt("empty bundle".into()))?;
    if !files.contains_key(&manifest.run.entry) {
        return Err(ManifestError::Invalid(format!(
            "run.entry {:?} is not among the bundle's files",
            manifest.run.entry
        ))
        .into());
    }
    Ok(Bundle {
        manifest,
        files,
        digest,
    })
}

fn corrupt_or_bomb(e: std::io::Error, limits: ReadLimits) -> BundleError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        // `take` ended the stream: the cap, or a truncated archive.
        return BundleError::TooLarge(limits.max_unpacked);
    }
    BundleError::Corrupt(e.to_string())
}

fn parse_digest_line(line: &str) -> Option<([u8; 32], u64)> {
    let (d, s) = line.split_once(' ')?;
    let d = d.strip_prefix("sha256=")?;
    let size = s.strip_prefix("size=")?.parse().ok()?;
    if d.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = u8::from_str_radix(d.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((digest, size))
}

/// Unpacks `bundle` into `<cache_root>/bundles/<digest>/` (once) and returns
/// that directory. The files are written to a temporary directory renamed
/// into place, so a half-written directory is never used.
pub fn extract(
    bundle: &Bundle,
    cache_root: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    let parent = cache_root.join("bundles");
    let dir = parent.join(bundle.digest_hex());
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&parent)?;
    for (path, data) in &bundle.files {
        // `read` checked every path: relative, no `..`, no links.
        let target = tmp.path().join(path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&target, data)?;
    }
    std::fs::write(tmp.path().join(".complete"), bundle.digest_hex())?;
    if dir.exists() {
        // Incomplete (no marker): replaced.
        let old = tempfile::Builder::new()
            .prefix(".old-")
            .tempdir_in(&parent)?;
        std::fs::rename(&dir, old.path().join("x"))?;
    }
    let kept = tmp.keep();
    match std::fs::rename(&kept, &dir) {
        Ok(()) => Ok(dir),
        // Another capsa unpacked the same bundle at the same moment.
        Err(_) if dir.join(".complete").is_file() => {
            let _ = std::fs::remove_dir_all(&kept);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&kept);
            Err(e)
        }
    }
}

/// The last 16 bytes of an executable carrying a bundle: the bundle's
/// length (u64, little-endian), then this magic.
pub const EXE_MAGIC: &[u8; 8] = b"CAPSAEX1";

/// `exe` (capsa itself) with `bundle` appended: a native executable that
/// runs the bundle.
pub fn embed(exe: &[u8], bundle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(exe.len() + bundle.len() + 16);
    out.extend_from_slice(exe);
    out.extend_from_slice(bundle);
    out.extend_from_slice(&(bundle.len() as u64).to_le_bytes());
    out.extend_from_slice(EXE_MAGIC);
    out
}

/// The bundle appended to the executable `path`, if it carries one.
pub fn embedded(path: &std::path::Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < 16 {
        return Ok(None);
    }
    f.seek(SeekFrom::End(-16))?;
    let mut tail = [0u8; 16];
    f.read_exact(&mut tail)?;
    if &tail[8..] != EXE_MAGIC {
        return Ok(None);
    }
    let size = u64::from_le_bytes(tail[..8].try_into().unwrap());
    if size > len - 16 {
        return Err(std::io::Error::other(
            "the appended bundle is longer than the file",
        ));
    }
    f.seek(SeekFrom::Start(len - 16 - size))?;
    let mut bytes = vec![0u8; size as usize];
    f.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

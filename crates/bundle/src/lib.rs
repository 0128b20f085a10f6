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
//! entries, more or fewer bytes than declared, a payload that is not exactly
//! one zstd frame, anything after the archive, and more unpacked bytes than
//! [`ReadLimits`] allow, each with one line.
//!
//! One file is one bundle: a payload of one frame and nothing after it
//! leaves no room for a second bundle to ride inside the first (in a zstd
//! skippable frame, or as bytes the tar reader never looks at) and be found
//! by something that searches the file differently.

pub mod manifest;
pub mod pack;

pub use manifest::{GUEST_APP, Manifest, ManifestError};
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
    #[error("the bundle's sha256 is {actual}, not the expected {expected}")]
    UnexpectedDigest { actual: String, expected: String },
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
    /// Writing an unpacked file failed (the disk, not the bundle).
    #[error("cannot unpack: {0}")]
    Unpack(std::io::Error),
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

/// A bundle's contents, read and checked. The files are listed, not held:
/// a small bundle may unpack to gigabytes, so their bytes are read again
/// from the payload to unpack them or to compare them ([`extract`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Every file but the manifest, by path, with its size in bytes.
    pub files: BTreeMap<String, u64>,
    /// SHA-256 of the payload: the bundle's identity.
    pub digest: [u8; 32],
    /// Where the bundle is unpacked already, exactly (see [`read_for_run`]).
    pub unpacked: Option<std::path::PathBuf>,
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

/// The longest path a bundle may hold, in bytes: room left for the cache
/// directory it is unpacked into within a system's 4096.
const MAX_PATH: usize = 3072;

/// The most all of a bundle's paths may take together, in bytes (100,000
/// long names of 3 KB each would hold 300 MB of paths in memory).
const MAX_PATHS_TOTAL: usize = 16 << 20;

/// The largest zstd window a bundle may need: `capsa pack` writes at most
/// 8 MiB (its level uses 4), and a larger one is memory taken to decode.
const MAX_WINDOW_LOG: u32 = 23;

/// Is `path` acceptable as a path inside a bundle? Relative, `/`-separated,
/// no empty, `.` or `..` component, no backslash, no control, bidirectional
/// or other invisible character (`capsa inspect` lists every path, and the
/// entry's is shown before anything runs: `main\u{200b}.py` must not pass
/// for `main.py`), no component longer than a file system takes (255
/// bytes), no space but U+0020 and none at either end of a component, and
/// not the name of capsa's own mark of an unpacked bundle.
pub fn check_entry_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\\') {
        return Err("backslash in the path".into());
    }
    if let Some(c) = path
        .chars()
        .find(|&c| capsa_policy::text::is_terminal_unsafe(c) || capsa_policy::text::is_invisible(c))
    {
        return Err(format!(
            "the control, bidirectional or invisible character {c:?} in the path"
        ));
    }
    // What reads as something else in a listing: `main.py ` beside
    // `main.py`, a no-break or ideographic space, a format character that
    // is not one of the invisible ones above (the Arabic number signs, the
    // hieroglyph format controls, the Khitan filler) or draws as nothing
    // (the null notehead U+1D159).
    if let Some(c) = path.chars().find(|&c| {
        (c.is_whitespace() && c != ' ')
            || matches!(
                c,
                '\u{0600}'..='\u{0605}'
                    | '\u{06DD}'
                    | '\u{070F}'
                    | '\u{0890}'..='\u{0891}'
                    | '\u{08E2}'
                    | '\u{110BD}'
                    | '\u{110CD}'
                    | '\u{13430}'..='\u{1343F}'
                    | '\u{16FE4}'
                    | '\u{1D159}'
            )
    }) {
        return Err(format!(
            "the space or format character {c:?} in the path (only U+0020 is taken)"
        ));
    }
    if path
        .split('/')
        .any(|c| c.starts_with(' ') || c.ends_with(' '))
    {
        return Err("a path component that starts or ends with a space".into());
    }
    if path.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    if path.split('/').any(|c| c.len() > 255) {
        return Err("a path component longer than 255 bytes".into());
    }
    if path.split('/').next() == Some(COMPLETE) {
        return Err(format!(
            "{COMPLETE} is the name of capsa's own mark of an unpacked bundle"
        ));
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
    Ok(wrap_payload(&payload))
}

/// The magic line and the digest line, then `payload`: the last step of
/// [`write`]. On its own it checks nothing, so tests use it to forge the
/// hostile bundles the reader must refuse.
pub fn wrap_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(
        format!(
            "sha256={} size={}\n",
            hex(&Sha256::digest(payload)),
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// A SHA-256 digest written as 64 hex digits (either case), as
/// `--expect-sha256` takes it.
pub fn parse_digest_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// Reads and checks bundle bytes: digest first, then every entry.
pub fn read(bytes: &[u8], limits: ReadLimits) -> Result<Bundle, BundleError> {
    read_expecting(bytes, limits, None)
}

/// [`read`], refusing the bundle unless its digest is `expected`. The digest
/// is compared before anything is decompressed or parsed, so a bundle that
/// is not the one the user meant never reaches the parsers.
pub fn read_expecting(
    bytes: &[u8],
    limits: ReadLimits,
    expected: Option<&[u8; 32]>,
) -> Result<Bundle, BundleError> {
    read_checked(bytes, limits, expected, None)
}

/// [`read_expecting`] for a run: in the same reading, each file is compared
/// with the directory [`extract`] unpacks the bundle to under `cache_root`,
/// so that a run of a bundle unpacked before costs one decompression and a
/// read of its files, no more. [`Bundle::unpacked`] is that directory if it
/// holds exactly the bundle's files ([`check_unpacked`]).
pub fn read_for_run(
    bytes: &[u8],
    limits: ReadLimits,
    expected: Option<&[u8; 32]>,
    cache_root: &std::path::Path,
) -> Result<Bundle, BundleError> {
    read_checked(bytes, limits, expected, Some(cache_root))
}

fn read_checked(
    bytes: &[u8],
    limits: ReadLimits,
    expected: Option<&[u8; 32]>,
    cache_root: Option<&std::path::Path>,
) -> Result<Bundle, BundleError> {
    let (digest, payload) = verify(bytes)?;
    if let Some(want) = expected
        && *want != digest
    {
        return Err(BundleError::UnexpectedDigest {
            actual: hex(&digest),
            expected: hex(want),
        });
    }
    let unpacked = cache_root.map(|root| unpack_dir(root, &digest));
    decode(digest, payload, limits, unpacked.as_deref())
}

fn unpack_dir(cache_root: &std::path::Path, digest: &[u8; 32]) -> std::path::PathBuf {
    cache_root.join("bundles").join(hex(digest))
}

/// The first bytes of a zstd frame (its magic number, little-endian). A
/// skippable frame starts with 0x184D2A5? instead and is refused.
const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Checks the magic, the digest line, the payload's length and its SHA-256,
/// and that the payload is exactly one zstd frame, without decompressing
/// anything; returns the digest and the payload.
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
    if (payload.len() as u64) < size {
        return Err(BundleError::Corrupt(format!(
            "{} payload bytes where the bundle declares {size} (truncated?)",
            payload.len()
        )));
    }
    if payload.len() as u64 > size {
        return Err(BundleError::Corrupt(format!(
            "{} bytes after the {size} the bundle declares (a bundle is one file with nothing appended)",
            payload.len() as u64 - size
        )));
    }
    let actual: [u8; 32] = Sha256::digest(payload).into();
    if actual != digest {
        return Err(BundleError::DigestMismatch);
    }
    if payload.get(..4) != Some(&ZSTD_FRAME_MAGIC[..]) {
        return Err(BundleError::Corrupt(
            "the payload does not start with a zstd frame (a skippable frame?)".into(),
        ));
    }
    // Reads the frame's header and block headers only: nothing is
    // decompressed yet.
    match zstd::zstd_safe::find_frame_compressed_size(payload) {
        Ok(n) if n == payload.len() => {}
        Ok(n) => {
            return Err(BundleError::Corrupt(format!(
                "{} bytes after the payload's zstd frame (a bundle's payload is exactly one frame)",
                payload.len() - n.min(payload.len())
            )));
        }
        Err(_) => {
            return Err(BundleError::Corrupt(
                "the payload is not a whole zstd frame".into(),
            ));
        }
    }
    Ok((digest, payload))
}

/// The files of a verified payload, each entry checked, listed (not
/// kept); with `unpacked`, compared with that directory as they are read.
fn decode(
    digest: [u8; 32],
    payload: &[u8],
    limits: ReadLimits,
    unpacked: Option<&std::path::Path>,
) -> Result<Bundle, BundleError> {
    let (manifest, files, unpacked) = match unpacked {
        Some(dir) => {
            let (manifest, files, holds) = walk_against(payload, limits, &digest, dir)?;
            (manifest, files, holds.ok().map(|()| dir.to_path_buf()))
        }
        None => {
            let (manifest, files) = walk(payload, limits, |path, size, data| {
                copy_file(path, data, size, &mut std::io::sink(), limits)
            })?;
            (manifest, files, None)
        }
    };
    Ok(Bundle {
        manifest,
        files,
        digest,
        unpacked,
    })
}

/// The most a bundle's `capsa.toml` may hold: its name and size are checked
/// before any of it is read, and it is read whole.
const MAX_MANIFEST: u64 = 1 << 20;

/// Reads a verified payload entry by entry and checks each. `each` gets
/// every file but the manifest (its path, its declared size, and a reader of
/// its bytes, which it reads to the end through [`copy_file`] or
/// [`compare_file`]); nothing of a file is read before its header is
/// checked. Returns the manifest and each file's size.
fn walk(
    payload: &[u8],
    limits: ReadLimits,
    mut each: impl FnMut(&str, u64, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<(Manifest, BTreeMap<String, u64>), BundleError> {
    // `verify` checked there is one frame; the decoder stops after it anyway.
    let mut decoder = zstd::Decoder::new(payload)
        .map_err(|e| BundleError::Corrupt(e.to_string()))?
        .single_frame();
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| BundleError::Corrupt(e.to_string()))?;
    // One byte more than allowed tells a bomb from a bundle exactly at the cap.
    let capped = decoder.take(limits.max_unpacked + 1);
    let mut archive = tar::Archive::new(capped);
    let mut manifest = None;
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    // Raw: the tar reader would read a GNU long name (or a PAX header) whole
    // into memory, up to the cap, before capsa saw its size. Long names
    // (which `write` makes for paths over 100 bytes) are read here, within
    // the longest path a bundle may hold; PAX headers and long link names
    // are refused as any entry that is not a regular file.
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Corrupt(e.to_string()))?
        .raw(true);
    let mut long_name: Option<Vec<u8>> = None;
    let mut paths_total = 0usize;
    let mut i = 0usize;
    for entry in entries {
        if i >= limits.max_entries {
            return Err(BundleError::Corrupt(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let mut entry = entry.map_err(|e| corrupt_or_bomb(e, limits))?;
        if entry.header().entry_type() == tar::EntryType::GNULongName {
            let size = entry
                .header()
                .size()
                .map_err(|e| BundleError::Corrupt(e.to_string()))?;
            if long_name.is_some() {
                return Err(BundleError::Corrupt("two long names for one entry".into()));
            }
            if size > MAX_PATH as u64 + 1 {
                return Err(BundleError::Corrupt(format!(
                    "a long name of {size} bytes (a path is at most {MAX_PATH})"
                )));
            }
            let mut name = Vec::with_capacity(size as usize);
            copy_file("a long name", &mut entry, size, &mut name, limits)?;
            // Ended by a NUL, as GNU tar writes it.
            while name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(name);
            continue;
        }
        let i_entry = i;
        i += 1;
        let raw_path = match long_name.take() {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        let path = String::from_utf8(raw_path)
            .map_err(|_| BundleError::Corrupt("an entry path is not UTF-8".into()))?;
        paths_total += path.len();
        if paths_total > MAX_PATHS_TOTAL {
            return Err(BundleError::Corrupt(format!(
                "more than {} MiB of paths",
                MAX_PATHS_TOTAL >> 20
            )));
        }
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
        if i_entry == 0 {
            if path != MANIFEST {
                return Err(BundleError::Corrupt(format!(
                    "the first entry is {path:?}, not {MANIFEST}"
                )));
            }
            if size > MAX_MANIFEST {
                return Err(BundleError::Corrupt(format!(
                    "{MANIFEST} is {size} bytes, more than the {MAX_MANIFEST} a manifest may be"
                )));
            }
            let mut data = Vec::with_capacity(size as usize);
            copy_file(MANIFEST, &mut entry, size, &mut data, limits)?;
            let text = String::from_utf8(data)
                .map_err(|_| BundleError::Corrupt("capsa.toml is not UTF-8".into()))?;
            manifest = Some(Manifest::from_toml(&text)?);
            continue;
        }
        if path == MANIFEST || files.contains_key(&path) {
            return Err(BundleError::UnsafeEntry {
                path,
                why: "a duplicate entry".into(),
            });
        }
        each(&path, size, &mut entry)?;
        files.insert(path, size);
    }
    if long_name.is_some() {
        return Err(BundleError::Corrupt(
            "a long name for no entry at the end of the archive".into(),
        ));
    }
    // Only the archive's zero padding may follow its last entry: a second
    // archive (or anything else) hidden there would be covered by the
    // digest yet never listed by `capsa inspect`.
    let mut rest = archive.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if buf[..n].iter().all(|&b| b == 0) => {}
            Ok(_) => {
                return Err(BundleError::Corrupt(
                    "data after the end of the archive".into(),
                ));
            }
            Err(e) => return Err(corrupt_or_bomb(e, limits)),
        }
    }
    let manifest = manifest.ok_or_else(|| BundleError::Corrupt("empty bundle".into()))?;
    // `a` and `a/b` cannot both be files once unpacked.
    for path in files.keys() {
        let below = format!("{path}/");
        if let Some((other, _)) = files.range(below.clone()..).next()
            && other.starts_with(&below)
        {
            return Err(BundleError::UnsafeEntry {
                path: other.clone(),
                why: format!("{path:?} is a file, so it cannot hold other files"),
            });
        }
    }
    if !files.contains_key(&manifest.run.entry) {
        return Err(ManifestError::Invalid(format!(
            "run.entry {:?} is not among the bundle's files",
            manifest.run.entry
        ))
        .into());
    }
    Ok((manifest, files))
}

/// Reads the entry `path`'s bytes from `data` (exactly `size` of them) in
/// pieces, giving each to `piece`. A read that fails or ends early is the
/// bundle's fault.
fn each_piece(
    path: &str,
    data: &mut dyn Read,
    size: u64,
    limits: ReadLimits,
    mut piece: impl FnMut(&[u8]) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut seen = 0u64;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt_or_bomb(e, limits)),
        };
        piece(&buf[..n])?;
        seen += n as u64;
    }
    if seen != size {
        return Err(BundleError::Corrupt(format!(
            "{path}: shorter than declared"
        )));
    }
    Ok(())
}

/// Copies the entry `path` to `out`; a write that fails is
/// [`BundleError::Unpack`].
fn copy_file(
    path: &str,
    data: &mut dyn Read,
    size: u64,
    out: &mut dyn std::io::Write,
    limits: ReadLimits,
) -> Result<(), BundleError> {
    each_piece(path, data, size, limits, |b| {
        out.write_all(b).map_err(BundleError::Unpack)
    })
}

/// Reads the entry `path` to its end, comparing it with the file at `disk`:
/// `Ok(Err(why))` if that is not a regular file with the same bytes.
fn compare_file(
    path: &str,
    data: &mut dyn Read,
    size: u64,
    disk: &std::path::Path,
    limits: ReadLimits,
) -> Result<Result<(), String>, BundleError> {
    let mut file = match open_regular(disk) {
        Ok(f)
            if f.metadata()
                .is_ok_and(|m| m.len() == size && single_link(&m)) =>
        {
            Some(f)
        }
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            copy_file(path, data, size, &mut std::io::sink(), limits)?;
            return Ok(Err(format!("{path} is missing")));
        }
        Err(e) => {
            copy_file(path, data, size, &mut std::io::sink(), limits)?;
            return Ok(Err(format!(
                "{path} is not a regular file capsa can read ({e})"
            )));
        }
    };
    let mut have = vec![0u8; 64 << 10];
    each_piece(path, data, size, limits, |want| {
        let same = file.as_mut().is_some_and(|f| {
            f.read_exact(&mut have[..want.len()]).is_ok() && have[..want.len()] == *want
        });
        if !same {
            file = None;
        }
        Ok(())
    })?;
    // Nothing more on disk than the bundle holds.
    let same = file.is_some_and(|mut f| matches!(f.read(&mut have[..1]), Ok(0)));
    Ok(if same {
        Ok(())
    } else {
        Err(format!("{path} differs from the bundle's"))
    })
}

/// The files of `bundle` as `write` would take them: every file's bytes,
/// read again from `bytes` (the bundle `bundle` was read from). For callers
/// that need the bytes themselves (`capsa web` puts them in a page).
pub fn contents(
    bundle: &Bundle,
    bytes: &[u8],
    limits: ReadLimits,
) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let payload = same_payload(bundle, bytes)?;
    let mut out = BTreeMap::new();
    walk(payload, limits, |path, size, data| {
        let mut buf = Vec::with_capacity(size.min(1 << 20) as usize);
        copy_file(path, data, size, &mut buf, limits)?;
        out.insert(path.to_string(), buf);
        Ok(())
    })?;
    Ok(out)
}

/// The payload of `bytes`, checked to be `bundle`'s.
fn same_payload<'a>(bundle: &Bundle, bytes: &'a [u8]) -> Result<&'a [u8], BundleError> {
    let (digest, payload) = verify(bytes)?;
    if digest != bundle.digest {
        return Err(BundleError::UnexpectedDigest {
            actual: hex(&digest),
            expected: bundle.digest_hex(),
        });
    }
    Ok(payload)
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
    Some((parse_digest_hex(d)?, size))
}

/// The marker written last into an unpacked bundle; holds the digest.
const COMPLETE: &str = ".complete";

/// Unpacks `bundle`, read from `bytes`, into `<cache_root>/bundles/<digest>/`
/// and returns that directory. The files are streamed from the payload to a
/// temporary directory renamed into place, so a half-written directory is
/// never used and no file is ever held in memory whole.
///
/// A directory already there is used only if it holds exactly the bundle's
/// files, byte for byte, and nothing else ([`check_unpacked`], done while
/// reading with [`read_for_run`]): the marker only says that an unpack
/// finished, not that nobody changed a file, added a `sitecustomize.py` or
/// swapped a file for a link since. Anything else is unpacked again.
pub fn extract(
    bundle: &Bundle,
    bytes: &[u8],
    cache_root: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    let dir = unpack_dir(cache_root, &bundle.digest);
    if bundle.unpacked.as_deref() == Some(&dir) {
        return Ok(dir);
    }
    let payload = same_payload(bundle, bytes).map_err(std::io::Error::other)?;
    if check_payload(bundle, payload, &dir).is_ok() {
        return Ok(dir);
    }
    let parent = cache_root.join("bundles");
    std::fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&parent)?;
    // Read as `bundle` was, with the same checks; the payload is the same,
    // so each file is the one listed, which is checked all the same (its
    // size before a byte of it is written). The caps `bundle` was read
    // under held for these bytes; what bounds this reading is the listing
    // (the tar's own headers and padding are not counted in it).
    let limits = ReadLimits {
        max_unpacked: u64::MAX / 2,
        max_entries: bundle.files.len() + 1,
    };
    walk(payload, limits, |path, size, data| {
        if bundle.files.get(path) != Some(&size) {
            return Err(BundleError::Corrupt(format!(
                "{path} is not as the bundle was read"
            )));
        }
        // `walk` checked the path: relative, no `..`, no links.
        let target = tmp.path().join(path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(BundleError::Unpack)?;
        }
        let mut file = std::fs::File::create_new(&target).map_err(BundleError::Unpack)?;
        copy_file(path, data, size, &mut file, limits)
    })
    .map_err(|e| match e {
        BundleError::Unpack(e) => e,
        e => std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(tmp.path().join(COMPLETE), bundle.digest_hex())?;
    if std::fs::symlink_metadata(&dir).is_ok() {
        // Incomplete or changed: moved aside and removed. Another capsa
        // may have moved it first.
        let old = tempfile::Builder::new()
            .prefix(".old-")
            .tempdir_in(&parent)?;
        match std::fs::rename(&dir, old.path().join("x")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let kept = tmp.keep();
    let placed = std::fs::rename(&kept, &dir);
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&kept);
    }
    // Checked even when freshly written: on a file system that folds case
    // (`A.py` and `a.py` one file), what landed is not what the bundle holds.
    match (placed, check_payload(bundle, payload, &dir)) {
        (_, Ok(())) => Ok(dir),
        // Another capsa unpacked the same bundle at the same moment.
        (Err(e), Err(_)) => Err(e),
        (Ok(()), Err(why)) => Err(std::io::Error::other(format!(
            "the unpacked bundle in {} does not match the bundle: {why}",
            dir.display()
        ))),
    }
}

/// Does `dir` hold exactly the files of `bundle` (read from `bytes`), as
/// regular files with the same bytes, the directories they need, and the
/// completion marker, and nothing else (no link, no extra file)? Says what
/// differs, if anything.
pub fn check_unpacked(bundle: &Bundle, bytes: &[u8], dir: &std::path::Path) -> Result<(), String> {
    let payload = same_payload(bundle, bytes).map_err(|e| e.to_string())?;
    check_payload(bundle, payload, dir)
}

/// [`check_unpacked`] on the payload, once it is known to be `bundle`'s.
fn check_payload(bundle: &Bundle, payload: &[u8], dir: &std::path::Path) -> Result<(), String> {
    // No marker, nothing to decompress.
    marked(dir, &bundle.digest)?;
    let limits = ReadLimits {
        max_unpacked: u64::MAX / 2,
        max_entries: bundle.files.len() + 1,
    };
    walk_against(payload, limits, &bundle.digest, dir)
        .map_err(|e| e.to_string())?
        .2
}

/// [`walk`], comparing each file with `dir` while they are the same (once
/// one differs, the rest is only read). Returns the listing and whether
/// `dir` holds exactly the bundle `digest`: its marker, its files byte for
/// byte, nothing else.
#[allow(clippy::type_complexity)]
fn walk_against(
    payload: &[u8],
    limits: ReadLimits,
    digest: &[u8; 32],
    dir: &std::path::Path,
) -> Result<(Manifest, BTreeMap<String, u64>, Result<(), String>), BundleError> {
    let mut holds = marked(dir, digest);
    let (manifest, files) = walk(payload, limits, |path, size, data| {
        if holds.is_ok() {
            holds = compare_file(path, data, size, &dir.join(path), limits)?;
            Ok(())
        } else {
            copy_file(path, data, size, &mut std::io::sink(), limits)
        }
    })?;
    let holds = holds.and_then(|()| nothing_else(&files, dir));
    Ok((manifest, files, holds))
}

/// Whether `dir` holds the completion marker of the bundle `digest`.
fn marked(dir: &std::path::Path, digest: &[u8; 32]) -> Result<(), String> {
    // The directory itself, never one a link there leads to.
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let marker = dir.join(COMPLETE);
    let mut text = Vec::new();
    open_regular(&marker)
        .and_then(|f| f.take(65).read_to_end(&mut text))
        .map_err(|e| format!("{COMPLETE}: {e}"))?;
    if text != hex(digest).as_bytes() {
        return Err(format!("{COMPLETE} is not this bundle's"));
    }
    Ok(())
}

/// Whether `dir` holds nothing but `files` (the regular files listed, the
/// directories they need and the marker), each file counted once: what the
/// files hold is [`compare_file`]'s.
fn nothing_else(files: &BTreeMap<String, u64>, dir: &std::path::Path) -> Result<(), String> {
    let mut found = 0usize;
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((host, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&host).map_err(|e| format!("{}: {e}", host.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", host.display()))?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| format!("{}: a name that is not UTF-8", host.display()))?;
            let path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            if path == COMPLETE {
                continue;
            }
            // The entry's own type: a link is never followed.
            let ty = entry.file_type().map_err(|e| format!("{path}: {e}"))?;
            if ty.is_dir() {
                let prefix = format!("{path}/");
                let needed = files
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&prefix));
                if !needed {
                    return Err(format!("{path}/ is not in the bundle"));
                }
                stack.push((entry.path(), path));
            } else if ty.is_file() {
                if !files.contains_key(&path) {
                    return Err(format!("{path} is not in the bundle"));
                }
                found += 1;
            } else {
                return Err(format!("{path} is not a regular file"));
            }
        }
    }
    if found != files.len() {
        return Err(format!(
            "{} of the bundle's {} files are missing",
            files.len() - found.min(files.len()),
            files.len()
        ));
    }
    Ok(())
}

/// Whether a file has no other name (a hard link elsewhere could be changed
/// from outside the directory). Unknown on other platforms: true.
fn single_link(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.nlink() == 1
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        true
    }
}

/// The file at `path`, opened for reading if it is a regular file: without
/// following a link where the platform allows (`O_NOFOLLOW`), and checked
/// once open, so that what is read is what was checked.
pub(crate) fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Nor waiting on a FIFO put there: refused below, once open.
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return std::io::Error::other("a symbolic link; bundles hold regular files only");
        }
        e
    })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
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

/// The bundle appended to the running executable (one `capsa pack --exe`
/// made), if it carries one.
///
/// Only capsa's own executable is ever searched for a trailer, never a file
/// named on the command line: a file that is one thing when read from the
/// front (a bundle, a program) must not become another when read from the
/// back.
pub fn own_bundle() -> std::io::Result<Option<Vec<u8>>> {
    let me = std::env::current_exe()?;
    let mut f = std::fs::File::open(me)?;
    Ok(trailer(&mut f)?.map(|(bundle, _)| bundle))
}

/// The running executable without the bundle it may carry: the capsa that
/// `capsa pack --exe` copies.
pub fn own_executable() -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(std::env::current_exe()?)?;
    let own = trailer(&mut f)?.map_or(0, |(_, appended)| appended);
    let mut exe = std::fs::read(std::env::current_exe()?)?;
    exe.truncate(exe.len().saturating_sub(own as usize));
    Ok(exe)
}

/// The bundle in `f`'s trailer, and how many bytes it and the trailer take.
fn trailer(f: &mut std::fs::File) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    use std::io::{Seek, SeekFrom};
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
    let mut size = [0u8; 8];
    size.copy_from_slice(&tail[..8]);
    let size = u64::from_le_bytes(size);
    if size > len - 16 {
        return Err(std::io::Error::other(
            "the appended bundle is longer than the file",
        ));
    }
    f.seek(SeekFrom::Start(len - 16 - size))?;
    let mut bytes = vec![0u8; size as usize];
    f.read_exact(&mut bytes)?;
    Ok(Some((bytes, size + 16)))
}

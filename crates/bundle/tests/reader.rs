//! The bundle reader on good bundles and on hostile ones: each hostile input
//! must be refused with its own one-line error, never a panic.

use capsa_bundle::{BundleError, Manifest, ReadLimits, read, write};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

fn files() -> BTreeMap<String, Vec<u8>> {
    let mut f = BTreeMap::new();
    f.insert("main.py".to_string(), b"print('hi')\n".to_vec());
    f.insert("data/cities.csv".to_string(), b"name\nParis\n".to_vec());
    f.insert(
        "site-packages/pkg/__init__.py".to_string(),
        b"VALUE = 1\n".to_vec(),
    );
    f
}

#[test]
fn round_trip_and_reproducible() {
    let m = Manifest::default_for("main.py");
    let a = write(&m, &files()).unwrap();
    let b = write(&m, &files()).unwrap();
    assert_eq!(a, b, "the same contents pack to the same bytes");
    let bundle = read(&a, ReadLimits::default()).unwrap();
    assert_eq!(bundle.manifest, m);
    assert_eq!(bundle.files, files());
    assert_eq!(bundle.digest_hex().len(), 64);
    let mut other = files();
    other.insert("extra.txt".into(), b"x".to_vec());
    assert_ne!(write(&m, &other).unwrap(), a);
}

/// Wraps a raw payload (zstd of a tar) in the magic and digest lines.
fn wrap(payload: &[u8]) -> Vec<u8> {
    let digest: String = Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut out = capsa_bundle::MAGIC.to_vec();
    out.extend_from_slice(format!("sha256={digest} size={}\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out
}

enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Dir(&'a str),
}

/// A tar built entry by entry, with raw names (the tar crate's own checks
/// would refuse some of these, which is the point).
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], &str) = match e {
            Entry::File(n, d) => (n, tar::EntryType::Regular, d, ""),
            Entry::Link(n, target) => (n, tar::EntryType::Symlink, b"", target),
            Entry::Dir(n) => (n, tar::EntryType::Directory, b"", ""),
        };
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

const MANIFEST: &[u8] = b"version = 1\n[run]\nentry = \"main.py\"\n";

fn bundle_of(entries: &[Entry]) -> Vec<u8> {
    wrap(&zstd::bulk::compress(&tar_of(entries), 3).unwrap())
}

fn refused(bytes: &[u8], want: &str) {
    refused_with(bytes, ReadLimits::default(), want);
}

fn refused_with(bytes: &[u8], limits: ReadLimits, want: &str) {
    let err = read(bytes, limits).expect_err(want).to_string();
    assert!(err.contains(want), "expected {want:?} in {err:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn not_a_bundle_truncated_or_modified() {
    let good = write(&Manifest::default_for("main.py"), &files()).unwrap();
    refused(b"", "not a capsa bundle");
    refused(b"PK\x03\x04 a zip file", "not a capsa bundle");
    refused(&good[..good.len() - 10], "truncated");
    refused(&good[..capsa_bundle::MAGIC.len() + 20], "digest line");
    let mut modified = good.clone();
    let last = modified.len() - 1;
    modified[last] ^= 1;
    refused(&modified, "modified or damaged");
    let mut longer = good.clone();
    longer.push(0);
    refused(&longer, "truncated");
}

#[test]
fn unsafe_entries() {
    let m = Entry::File("capsa.toml", MANIFEST);
    let main = Entry::File("main.py", b"print(1)");
    for (entries, want) in [
        (vec![m, main, Entry::File("../escape.py", b"x")], "unsafe bundle entry \"../escape.py\""),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File("/etc/cron.d/x", b"x")],
            "absolute path",
        ),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File("a/./b", b"x")],
            "component",
        ),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::Link("data", "/etc")],
            "regular files only",
        ),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::Dir("dir")],
            "regular files only",
        ),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File("main.py", b"evil")],
            "duplicate",
        ),
        (vec![Entry::File("main.py", b""), Entry::File("capsa.toml", MANIFEST)], "first entry"),
        (vec![Entry::File("capsa.toml", MANIFEST)], "not among the bundle's files"),
        (
            vec![Entry::File("capsa.toml", b"version = 1\n[run]\nentry = \"main.py\"\nhooks = 1\n"), Entry::File("main.py", b"")],
            "unknown field `hooks`",
        ),
        (
            vec![Entry::File("capsa.toml", b"version = 9\n[run]\nentry = \"main.py\"\n"), Entry::File("main.py", b"")],
            "version 9 is not supported",
        ),
        (
            vec![
                Entry::File("capsa.toml", b"version = 1\n[run]\nentry = \"main.py\"\n[[ask.net]]\nrule = \"*\"\nreason = \"all\"\n"),
                Entry::File("main.py", b""),
            ],
            "ask.net rule",
        ),
    ] {
        refused(&bundle_of(&entries), want);
    }
}

#[test]
fn decompression_bomb() {
    let zeros = vec![0u8; 8 << 20];
    let bomb = bundle_of(&[
        Entry::File("capsa.toml", MANIFEST),
        Entry::File("main.py", b""),
        Entry::File("zeros", &zeros),
    ]);
    assert!(bomb.len() < 64 << 10, "compresses well: {}", bomb.len());
    let limits = ReadLimits {
        max_unpacked: 1 << 20,
        max_entries: 100,
    };
    refused_with(&bomb, limits, "decompression bomb");
    // A bare zstd bomb that is not even a tar.
    refused_with(&wrap(&zstd::bulk::compress(&zeros, 3).unwrap()), limits, "");
    assert!(read(&bomb, ReadLimits::default()).is_ok());
}

#[test]
fn write_refuses_what_read_would() {
    let m = Manifest::default_for("missing.py");
    assert!(matches!(write(&m, &files()), Err(BundleError::Manifest(_))));
    let mut bad = files();
    bad.insert("../up".into(), vec![]);
    let e = write(&Manifest::default_for("main.py"), &bad).unwrap_err();
    assert!(e.to_string().contains("unsafe bundle entry"), "{e}");
}

proptest::proptest! {
    /// Whatever the bytes after a valid header, the reader returns an error
    /// or a bundle: it never panics.
    #[test]
    fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
        let _ = read(&wrap(&payload), ReadLimits::default());
        let _ = read(&payload, ReadLimits::default());
    }
}

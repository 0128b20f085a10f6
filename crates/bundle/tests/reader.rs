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
    // Paths over 100 bytes take a GNU long name entry, which the reader
    // reads itself (up to the longest path a bundle may hold).
    let long = format!("{}/deep.py", vec!["d".repeat(200); 15].join("/"));
    assert!(long.len() > 3000);
    let mut with_long = files();
    with_long.insert(long.clone(), b"X = 1\n".to_vec());
    let bundle = read(&write(&m, &with_long).unwrap(), ReadLimits::default()).unwrap();
    assert_eq!(bundle.files.get(&long), Some(&6));
    let a = write(&m, &files()).unwrap();
    let b = write(&m, &files()).unwrap();
    assert_eq!(a, b, "the same contents pack to the same bytes");
    let bundle = read(&a, ReadLimits::default()).unwrap();
    assert_eq!(bundle.manifest, m);
    let listed: BTreeMap<_, _> = files()
        .into_iter()
        .map(|(p, d)| (p, d.len() as u64))
        .collect();
    assert_eq!(bundle.files, listed);
    assert_eq!(
        capsa_bundle::contents(&bundle, &a, ReadLimits::default()).unwrap(),
        files()
    );
    // The bytes read again must be the bundle's own.
    let other_bytes = write(&Manifest::default_for("main.py"), &{
        let mut f = files();
        f.insert("main.py".into(), b"print('other')\n".to_vec());
        f
    })
    .unwrap();
    let e = capsa_bundle::contents(&bundle, &other_bytes, ReadLimits::default()).unwrap_err();
    assert!(matches!(e, BundleError::UnexpectedDigest { .. }), "{e}");
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
    refused(&longer, "1 bytes after the");
}

/// The payload of a bundle written by `write`.
fn payload_of(bundle: &[u8]) -> &[u8] {
    let (_, payload) = capsa_bundle::verify(bundle).unwrap();
    payload
}

/// A zstd skippable frame holding `data`.
fn skippable(data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x50, 0x2A, 0x4D, 0x18];
    f.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.extend_from_slice(data);
    f
}

/// A valid bundle A once could carry a bundle B in a skippable frame at
/// the end of its payload, with `capsa pack --exe`'s trailer after it: the
/// digest covered it, the zstd decoder skipped it, and the trailer search
/// ran B. A payload is now exactly one zstd frame.
#[test]
fn a_bundle_carries_nothing_but_itself() {
    let a = write(&Manifest::default_for("main.py"), &files()).unwrap();
    let mut b_files = BTreeMap::new();
    b_files.insert("main.py".to_string(), b"print('B')".to_vec());
    let b = write(&Manifest::default_for("main.py"), &b_files).unwrap();
    let mut hidden = b.clone();
    hidden.extend_from_slice(&(b.len() as u64).to_le_bytes());
    hidden.extend_from_slice(capsa_bundle::EXE_MAGIC);

    let mut after = payload_of(&a).to_vec();
    after.extend_from_slice(&skippable(&hidden));
    refused(
        &capsa_bundle::wrap_payload(&after),
        "bytes after the payload's zstd frame",
    );

    let mut before = skippable(&hidden);
    before.extend_from_slice(payload_of(&a));
    refused(
        &capsa_bundle::wrap_payload(&before),
        "does not start with a zstd frame",
    );

    // Two real frames: the second would decompress as more archive.
    let mut two = payload_of(&a).to_vec();
    two.extend_from_slice(payload_of(&b));
    refused(
        &capsa_bundle::wrap_payload(&two),
        "bytes after the payload's zstd frame",
    );

    let mut garbage = payload_of(&a).to_vec();
    garbage.extend_from_slice(b"\0\0\0\0");
    refused(
        &capsa_bundle::wrap_payload(&garbage),
        "bytes after the payload's zstd frame",
    );

    let cut = &payload_of(&a)[..payload_of(&a).len() - 5];
    refused(&capsa_bundle::wrap_payload(cut), "not a whole zstd frame");

    // A second archive after the first one's end, inside the one frame.
    let mut tars = tar_of(&[
        Entry::File("capsa.toml", MANIFEST),
        Entry::File("main.py", b""),
    ]);
    tars.extend_from_slice(&tar_of(&[Entry::File("evil.py", b"x")]));
    refused(
        &wrap(&zstd::bulk::compress(&tars, 3).unwrap()),
        "data after the end of the archive",
    );
    // Zero padding after the end is what tar writers add: accepted.
    let mut padded = tar_of(&[
        Entry::File("capsa.toml", MANIFEST),
        Entry::File("main.py", b""),
    ]);
    padded.resize(padded.len() + 10 * 512, 0);
    assert!(
        read(
            &wrap(&zstd::bulk::compress(&padded, 3).unwrap()),
            ReadLimits::default()
        )
        .is_ok()
    );
}

#[test]
fn expected_digest() {
    let good = write(&Manifest::default_for("main.py"), &files()).unwrap();
    let digest = read(&good, ReadLimits::default()).unwrap().digest;
    let hex = capsa_bundle::hex(&digest);
    assert_eq!(capsa_bundle::parse_digest_hex(&hex), Some(digest));
    assert_eq!(
        capsa_bundle::parse_digest_hex(&hex.to_uppercase()),
        Some(digest)
    );
    for bad in [
        "",
        "abc",
        &hex[1..],
        &format!("{hex}0"),
        &format!("g{}", &hex[1..]),
    ] {
        assert_eq!(capsa_bundle::parse_digest_hex(bad), None, "{bad:?}");
    }
    assert!(capsa_bundle::read_expecting(&good, ReadLimits::default(), Some(&digest)).is_ok());
    let mut other = digest;
    other[0] ^= 1;
    let e = capsa_bundle::read_expecting(&good, ReadLimits::default(), Some(&other))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "the bundle's sha256 is {hex}, not the expected {}",
            capsa_bundle::hex(&other)
        )
    );
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
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File("a\x1b[2K.py", b"")],
            "control, bidirectional or invisible character '\\u{1b}'",
        ),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File("main\u{200b}.py", b"evil")],
            "invisible character '\\u{200b}'",
        ),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File(".complete", b"x")],
            "capsa's own mark",
        ),

        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File("\u{202e}yp.a", b"")],
            "'\\u{202e}'",
        ),
        (
            vec![Entry::File("capsa.toml", MANIFEST), Entry::File("main.py", b""), Entry::File("lib", b""), Entry::File("lib/x.py", b"")],
            "\"lib\" is a file",
        ),
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
        (
            vec![
                Entry::File("capsa.toml", b"version = 1\n[run]\nentry = \"main.py\"\n[ask.dirs.out]\naccess = \"read\"\nguest = \"/out,/\"\nreason = \"r\"\n"),
                Entry::File("main.py", b""),
            ],
            "invalid guest path \"/out,/\"",
        ),
        (
            vec![
                Entry::File("capsa.toml", b"version = 1\n[run]\nentry = \"main.py\"\n[[ask.env]]\nname = \"A\"\nreason = \"ok\\r\\u001b[2K\"\n"),
                Entry::File("main.py", b""),
            ],
            "invalid reason",
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

/// An unpacked bundle in the cache was trusted because its `.complete`
/// marker existed: a changed file, a planted `sitecustomize.py` or a file
/// swapped for a link ran as the bundle's. Each run now checks the
/// directory against the bundle and unpacks again when anything differs.
#[test]
fn unpacked_bundles_are_checked_on_every_use() {
    let bytes = write(&Manifest::default_for("main.py"), &files()).unwrap();
    let bundle = read(&bytes, ReadLimits::default()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let dir = capsa_bundle::extract(&bundle, &bytes, cache.path()).unwrap();
    assert_eq!(dir, cache.path().join("bundles").join(bundle.digest_hex()));
    assert_eq!(capsa_bundle::check_unpacked(&bundle, &bytes, &dir), Ok(()));
    // A run's reading compares as it reads, and finds it unpacked.
    let for_run = |cache: &std::path::Path| {
        capsa_bundle::read_for_run(&bytes, ReadLimits::default(), None, cache)
            .unwrap()
            .unpacked
    };
    assert_eq!(for_run(cache.path()), Some(dir.clone()));
    let main = dir.join("main.py");

    type Tamper = fn(&std::path::Path);
    let tampering: &[(&str, Tamper, &str)] = &[
        (
            "changed",
            |d| std::fs::write(d.join("main.py"), "import evil").unwrap(),
            "main.py differs",
        ),
        (
            "same size",
            |d| std::fs::write(d.join("main.py"), "print('ho')\n").unwrap(),
            "main.py differs",
        ),
        (
            "longer",
            |d| std::fs::write(d.join("main.py"), "print('hi')\nimport evil\n").unwrap(),
            "main.py differs",
        ),
        (
            "fifo",
            |d| {
                std::fs::remove_file(d.join("data/cities.csv")).unwrap();
                let fifo = std::ffi::CString::new(
                    d.join("data/cities.csv")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .unwrap();
                assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
            },
            "data/cities.csv is not a regular file",
        ),
        (
            "hard link",
            |d| {
                let outside = d.parent().unwrap().parent().unwrap().join("outside.py");
                std::fs::write(&outside, "print('hi')\n").unwrap();
                std::fs::remove_file(d.join("main.py")).unwrap();
                std::fs::hard_link(&outside, d.join("main.py")).unwrap();
            },
            "main.py differs",
        ),
        (
            "planted",
            |d| std::fs::write(d.join("site-packages/sitecustomize.py"), "x").unwrap(),
            "sitecustomize.py is not in the bundle",
        ),
        (
            "extra dir",
            |d| std::fs::create_dir(d.join("extra")).unwrap(),
            "extra/ is not in the bundle",
        ),
        (
            "removed",
            |d| std::fs::remove_file(d.join("data/cities.csv")).unwrap(),
            "data/cities.csv is missing",
        ),
        (
            "linked",
            |d| {
                std::fs::remove_file(d.join("main.py")).unwrap();
                std::os::unix::fs::symlink("/etc/passwd", d.join("main.py")).unwrap();
            },
            "main.py is not a regular file",
        ),
        (
            "marker",
            |d| std::fs::write(d.join(".complete"), "0000").unwrap(),
            "not this bundle's",
        ),
        (
            "no marker",
            |d| std::fs::remove_file(d.join(".complete")).unwrap(),
            ".complete",
        ),
    ];
    for (what, tamper, why) in tampering {
        tamper(&dir);
        let e = capsa_bundle::check_unpacked(&bundle, &bytes, &dir).unwrap_err();
        assert!(e.contains(why), "{what}: {e}");
        assert_eq!(for_run(cache.path()), None, "{what}");
        assert_eq!(
            capsa_bundle::extract(&bundle, &bytes, cache.path()).unwrap(),
            dir,
            "{what}"
        );
        assert_eq!(
            capsa_bundle::check_unpacked(&bundle, &bytes, &dir),
            Ok(()),
            "{what}"
        );
        assert_eq!(std::fs::read(&main).unwrap(), b"print('hi')\n", "{what}");
    }
    // The directory a link to a copy elsewhere, however exact: not used.
    let elsewhere = cache.path().join("elsewhere");
    std::fs::rename(&dir, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let e = capsa_bundle::check_unpacked(&bundle, &bytes, &dir).unwrap_err();
    assert!(e.contains("is not a directory"), "{e}");
    assert_eq!(for_run(cache.path()), None);
    assert_eq!(
        capsa_bundle::extract(&bundle, &bytes, cache.path()).unwrap(),
        dir
    );
    assert!(std::fs::symlink_metadata(&dir).unwrap().is_dir());
    std::fs::remove_dir_all(&elsewhere).unwrap();
    // Nothing is left behind in the cache but the one directory.
    let left: Vec<_> = std::fs::read_dir(cache.path().join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from(bundle.digest_hex())]);
}

/// What a path inside a bundle may not be, beyond what a tar header can
/// carry in the tests above: a component no file system takes, capsa's own
/// mark, an invisible character anywhere (the zero-width joiner too).
#[test]
fn entry_paths_that_could_not_be_unpacked_or_would_mislead_are_refused() {
    use capsa_bundle::check_entry_path;
    let long = format!("dir/{}.py", "n".repeat(253));
    assert!(
        check_entry_path(&long)
            .unwrap_err()
            .contains("longer than 255 bytes")
    );
    assert!(check_entry_path(&format!("dir/{}.py", "n".repeat(252))).is_ok());
    assert!(
        check_entry_path(".complete")
            .unwrap_err()
            .contains("capsa's own mark")
    );
    assert!(
        check_entry_path(".complete/x")
            .unwrap_err()
            .contains("capsa's own mark")
    );
    assert!(check_entry_path("sub/.complete").is_ok());
    for c in [
        '\u{200b}',
        '\u{200d}',
        '\u{feff}',
        '\u{ad}',
        '\u{3164}',
        '\u{2800}',
        '\u{e0041}',
        '\u{fe0f}',
    ] {
        let path = format!("main{c}.py");
        let why = check_entry_path(&path).unwrap_err();
        assert!(why.contains("invisible"), "{path:?}: {why}");
    }
    assert!(check_entry_path("café/中文.py").is_ok());
    // Spaces that would make two names in a listing look alike.
    for path in [
        "main.py ",
        " main.py",
        "dir /main.py",
        "main\u{a0}.py",
        "main\u{3000}.py",
        "main\u{2007}.py",
        "main\u{205f}.py",
        "main.py\u{1680}",
        "main\u{fff9}.py",
        "main\u{600}.py",
    ] {
        assert!(check_entry_path(path).is_err(), "{path:?}");
    }
    assert!(check_entry_path("my files/main file.py").is_ok());
}

/// Unpacking reads the payload a second time, streaming each file to disk;
/// a bundle of many small files (whose tar headers and padding outweigh the
/// files themselves) unpacks whole, each file as listed.
#[test]
fn many_small_files_unpack_as_listed() {
    let mut many = BTreeMap::new();
    many.insert("main.py".to_string(), b"print('hi')\n".to_vec());
    for i in 0..3000 {
        many.insert(format!("pkg/m{i:04}.py"), format!("X = {i}\n").into_bytes());
    }
    let bytes = write(&Manifest::default_for("main.py"), &many).unwrap();
    let bundle = read(&bytes, ReadLimits::default()).unwrap();
    assert_eq!(bundle.files.len(), 3001);
    assert_eq!(bundle.files["pkg/m0042.py"], 7);
    let cache = tempfile::tempdir().unwrap();
    let dir = capsa_bundle::extract(&bundle, &bytes, cache.path()).unwrap();
    assert_eq!(
        std::fs::read(dir.join("pkg/m2999.py")).unwrap(),
        b"X = 2999\n"
    );
    assert_eq!(std::fs::read_dir(dir.join("pkg")).unwrap().count(), 3000);
    // Bytes of another bundle are refused, and nothing is unpacked from them.
    let other = write(&Manifest::default_for("main.py"), &files()).unwrap();
    let cache2 = tempfile::tempdir().unwrap();
    let e = capsa_bundle::extract(&bundle, &other, cache2.path()).unwrap_err();
    assert!(e.to_string().contains("sha256"), "{e}");
    assert!(!cache2.path().join("bundles").exists());
}

/// What reading a bundle holds besides its files: the paths (at most 16 MiB
/// of them, each at most 3072 bytes) and the decoder's window (at most 8
/// MiB). A 280 KB bundle of 100,000 long names of 4 KB took 550 MB; one
/// compressed with a 128 MiB window took 140 MB before a byte was read.
#[test]
fn paths_and_the_decoders_window_are_capped() {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data).unwrap();
    };
    add("capsa.toml", MANIFEST);
    add("main.py", b"");
    let dir = vec!["d".repeat(250); 12].join("/");
    for i in 0..6000 {
        add(&format!("{dir}/{i}"), b"");
    }
    let tar = tar.into_inner().unwrap();
    refused(
        &wrap(&zstd::bulk::compress(&tar, 3).unwrap()),
        "more than 16 MiB of paths",
    );
    // A path over 3072 bytes is refused from its long name.
    let long = format!("{}/x.py", vec!["p".repeat(250); 13].join("/"));
    assert!(
        capsa_bundle::check_entry_path(&long)
            .unwrap_err()
            .contains("longer than 3072")
    );

    // The same small bundle, with a window of 2^27 declared in its frame.
    let tar = tar_of(&[
        Entry::File("capsa.toml", MANIFEST),
        Entry::File("main.py", b""),
    ]);
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
        .unwrap();
    enc.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut enc, &tar).unwrap();
    let wide = enc.finish().unwrap();
    refused(&wrap(&wide), "too much memory");
    assert!(
        read(
            &bundle_of(&[
                Entry::File("capsa.toml", MANIFEST),
                Entry::File("main.py", b"")
            ]),
            ReadLimits::default()
        )
        .is_ok()
    );
}

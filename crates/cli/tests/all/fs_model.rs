//! A property test of the fine-grained file rules against a plain model:
//! random policies with read-only, write-protected and denied areas inside a
//! writable grant, and random sequences of what a hostile guest does (open
//! with every flag, `..`, links it makes itself, hard links, renames of
//! files and of ancestors, descriptors kept across renames). Whatever the
//! sequence, no protected file's content, name or times may change, and no
//! denied content may be read.

use crate::support::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The tree every case starts from, below the writable grant.
const DIRS: &[&str] = &["a", "a/b", "c", "c/d"];
const FILES: &[&str] = &["a/f", "a/b/g", "c/h", "c/d/i", "top"];

/// Paths a guest names: plain, through `..`, through links it may make.
const PATHS: &[&str] = &[
    "a",
    "a/b",
    "a/f",
    "a/b/g",
    "c",
    "c/h",
    "c/d",
    "c/d/i",
    "top",
    "new",
    "a/new",
    "c/new",
    "l",
    "l/..",
    "l/../f",
    "l/g",
    "l/new",
    "m",
    "m/h",
    "m/../top",
    "a/../c/h",
    "a/b/../f",
    "c/d/../../top",
    "x",
    "x/g",
    "x/new",
];
const LINK_TARGETS: &[&str] = &[
    "a", "a/b", "c", "c/d", ".", "a/f", "top", "c/h", "b", "d", "../a/b",
];
const MODES: &[&str] = &["r", "r+", "w", "w+", "a", "a+", "x"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Protect {
    DenyRead,
    DenyWrite,
    /// A read-only grant nested in the writable one.
    ReadOnly,
}

fn op() -> impl Strategy<Value = serde_json::Value> {
    let p = || prop::sample::select(PATHS);
    prop_oneof![
        (prop::sample::select(MODES), p()).prop_map(|(m, a)| serde_json::json!(["open", m, a])),
        (p(), p()).prop_map(|(a, b)| serde_json::json!(["rename", a, b])),
        (p(), p()).prop_map(|(a, b)| serde_json::json!(["link", a, b])),
        (
            prop::sample::select(LINK_TARGETS),
            prop::sample::select(&["l", "m", "x", "a/l", "c/d/l"][..])
        )
            .prop_map(|(t, a)| serde_json::json!(["symlink", t, a])),
        p().prop_map(|a| serde_json::json!(["unlink", a])),
        p().prop_map(|a| serde_json::json!(["rmdir", a])),
        p().prop_map(|a| serde_json::json!(["mkdir", a])),
        p().prop_map(|a| serde_json::json!(["utime", a])),
        (p(), p()).prop_map(|(a, b)| serde_json::json!(["fd-write", a, b])),
        (p(), p(), p()).prop_map(|(a, b, c)| serde_json::json!(["fd-after-rename", a, b, c])),
    ]
}

const GUEST: &str = r#"
import os, sys, json
W = sys.argv[1]
for op in json.loads(sys.argv[2]):
    kind, args = op[0], op[1:]
    try:
        if kind == "open":
            mode, p = args
            with open(os.path.join(W, p), mode) as f:
                if "r" in mode or "+" in mode:
                    print("READ", repr(f.read()))
                if mode != "r":
                    f.write("pwned")
        elif kind == "rename":
            os.rename(os.path.join(W, args[0]), os.path.join(W, args[1]))
        elif kind == "link":
            os.link(os.path.join(W, args[0]), os.path.join(W, args[1]))
        elif kind == "symlink":
            os.symlink(args[0], os.path.join(W, args[1]))
        elif kind == "unlink":
            os.unlink(os.path.join(W, args[0]))
        elif kind == "rmdir":
            os.rmdir(os.path.join(W, args[0]))
        elif kind == "mkdir":
            os.mkdir(os.path.join(W, args[0]))
        elif kind == "utime":
            os.utime(os.path.join(W, args[0]), (0, 0))
        elif kind == "fd-write":
            fd = os.open(os.path.join(W, args[0]), os.O_RDONLY)
            g = os.open(args[1].split("/")[-1], os.O_RDWR | os.O_TRUNC, dir_fd=fd)
            print("READ", repr(os.read(g, 100)))
            os.write(g, b"pwned")
        elif kind == "fd-after-rename":
            fd = os.open(os.path.join(W, args[0]), os.O_RDONLY)
            os.rename(os.path.join(W, args[0]), os.path.join(W, args[1]))
            g = os.open(args[2].split("/")[-1], os.O_RDWR | os.O_CREAT, dir_fd=fd)
            print("READ", repr(os.read(g, 100)))
            os.write(g, b"pwned")
        print("ok", op)
    except OSError as e:
        print("err", op, type(e).__name__)
"#;

/// Names, contents and modification times of everything below `p`
/// (or of `p` itself when it is a file).
fn snapshot(p: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return out;
    };
    let time = meta.modified().unwrap();
    if meta.is_dir() {
        out.insert(".".into(), (Vec::new(), time));
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            for (k, v) in snapshot(&e.path()) {
                out.insert(format!("{name}/{k}"), v);
            }
        }
    } else if meta.file_type().is_symlink() {
        out.insert(
            ".".into(),
            (
                std::fs::read_link(p)
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes()
                    .to_vec(),
                time,
            ),
        );
    } else {
        out.insert(".".into(), (std::fs::read(p).unwrap(), time));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn protected_areas_hold_against_any_sequence(
        areas in prop::collection::btree_map(
            prop::sample::select(&["a", "a/b", "c", "c/d", "a/f", "c/h", "top"][..]),
            prop::sample::select(&[Protect::DenyRead, Protect::DenyWrite, Protect::ReadOnly][..]),
            1..4,
        ),
        ops in prop::collection::vec(op(), 1..14),
    ) {
        let (_g, d) = scratch();
        let w = d.join("w");
        for dir in DIRS {
            std::fs::create_dir_all(w.join(dir)).unwrap();
        }
        for f in FILES {
            std::fs::write(w.join(f), format!("SECRET-{}", f.replace('/', "-"))).unwrap();
        }
        let mut flags = vec![format!("--allow-write={}", s(&w))];
        for (path, kind) in &areas {
            let host = w.join(path);
            flags.push(match kind {
                Protect::DenyRead => format!("--deny-read={}", s(&host)),
                Protect::DenyWrite => format!("--deny-write={}", s(&host)),
                Protect::ReadOnly => format!("--allow-read={}", s(&host)),
            });
        }
        let before: Vec<_> = areas.keys().map(|p| snapshot(&w.join(p))).collect();
        let script_dir = d.join("script");
        std::fs::create_dir_all(&script_dir).unwrap();
        let ops_json = serde_json::Value::Array(ops.clone()).to_string();
        let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let r = py_script(&script_dir, &flag_refs, "guest.py", GUEST, &[s(&w), &ops_json]);
        prop_assert_eq!(r.code, 0, "{}", r.stderr);
        for ((path, kind), before) in areas.iter().zip(&before) {
            let after = snapshot(&w.join(path));
            prop_assert_eq!(&after, before, "{} ({:?}) changed\n{}\n{}", path, kind, r.stdout, r.stderr);
            if *kind == Protect::DenyRead {
                for f in FILES.iter().filter(|f| w.join(f).starts_with(w.join(path))) {
                    let marker = format!("SECRET-{}", f.replace('/', "-"));
                    prop_assert!(!r.stdout.contains(&marker), "{} was read\n{}", marker, r.stdout);
                }
            }
        }
    }
}

//! Takes from the `componentize-py` package (a dependency, so already on
//! this machine) the two things its library API does not hand out: the
//! standard library archive, which capsa mounts read-only at run time, and
//! the WASI WIT files the component is generated against.
//!
//! The package is found in Cargo's registry sources (or where
//! `CAPSA_COMPONENTIZE_PY_DIR` points, for vendored builds).

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

const PACKAGE: &str = "componentize-py-0.25.1";
/// The WASI 0.2.0 packages `wasi:cli/command@0.2.0` and
/// `wasi:http/outgoing-handler@0.2.0` need.
const WIT_DEPS: &[&str] = &[
    "cli-0.2.0",
    "clocks-0.2.0",
    "filesystem-0.2.0",
    "http-0.2.0",
    "io-0.2.0",
    "random-0.2.0",
    "sockets-0.2.0",
];

fn main() {
    println!("cargo:rerun-if-env-changed=CAPSA_COMPONENTIZE_PY_DIR");
    let dir = find_package().unwrap_or_else(|| {
        panic!(
            "cannot find the {PACKAGE} package sources in Cargo's registry; \
             set CAPSA_COMPONENTIZE_PY_DIR to its directory"
        )
    });
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());

    let lib = dir.join("python-lib.tar.zst");
    println!("cargo:rerun-if-changed={}", lib.display());
    let bytes = fs::read(&lib).expect("read python-lib.tar.zst");
    fs::write(out.join("python-lib.tar.zst"), &bytes).unwrap();

    // Every embedded input goes into the runtime's cache key.
    let mut key = Sha256::new();
    key.update(&bytes);
    for source in [
        "src/app.py",
        "src/_capsa_http.py",
        "src/capsa.wit",
        "startup-functions.txt",
    ] {
        println!("cargo:rerun-if-changed={source}");
        let text = fs::read(source).unwrap_or_else(|e| panic!("read {source}: {e}"));
        key.update(text.len().to_le_bytes());
        key.update(&text);
    }

    let mut table = String::from("pub static WIT_FILES: &[(&str, &str)] = &[\n");
    for dep in WIT_DEPS {
        let mut files: Vec<PathBuf> = Vec::new();
        collect(&dir.join("wit/deps").join(dep), &mut files);
        files.sort();
        for file in files {
            let rel = file
                .strip_prefix(dir.join("wit"))
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/");
            let text = fs::read_to_string(&file).unwrap();
            key.update(rel.as_bytes());
            key.update(text.as_bytes());
            writeln!(table, "    ({rel:?}, {text:?}),").unwrap();
        }
    }
    table.push_str("];\n");
    fs::write(out.join("wit_files.rs"), table).unwrap();
    let key: String = key.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=CAPSA_PYTHON_INPUTS={key}");
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "wit") {
            out.push(path);
        }
    }
}

fn find_package() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("CAPSA_COMPONENTIZE_PY_DIR") {
        return Some(PathBuf::from(dir));
    }
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let src = home.join("registry/src");
    println!("cargo:rerun-if-env-changed=CARGO_HOME");
    fs::read_dir(&src)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join(PACKAGE)))
        .find(|p| p.join("python-lib.tar.zst").is_file())
}

//! Builds the page's JavaScript host from `web/` (capsa's own code and
//! preview2-shim from npm) with `npm ci` and esbuild, into OUT_DIR, where
//! `lib.rs` embeds it. Needs Node.js and npm, as `web/` says.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let web = manifest.join("../../web");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("web");
    for p in ["src", "build.mjs", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed={}", web.join(p).display());
    }
    let installed = web.join("node_modules/.package-lock.json");
    if stale(&installed, &web.join("package-lock.json")) {
        run(
            Command::new(npm())
                .arg("ci")
                .arg("--no-audit")
                .arg("--no-fund")
                .current_dir(&web),
            "npm ci",
        );
    }
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(&out)
            .current_dir(&web),
        "node build.mjs",
    );
    std::fs::copy(web.join("src/index.html"), out.join("index.html")).expect("copy index.html");
}

fn npm() -> &'static str {
    if cfg!(windows) { "npm.cmd" } else { "npm" }
}

fn stale(made: &Path, from: &Path) -> bool {
    let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (time(made), time(from)) {
        (Some(m), Some(f)) => m < f,
        _ => true,
    }
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            panic!("{what} in web/ failed ({s}); capsa's browser host needs Node.js 20+ and npm")
        }
        Err(e) => {
            panic!("cannot run {what} for capsa's browser host (it needs Node.js 20+ and npm): {e}")
        }
    }
}

//! `capsa python install --optimize`: the prepared component's largest core
//! module (CPython, its libc and runtime, linked into one by [`crate::merge`])
//! run through binaryen's `wasm-opt`, which inlines small functions across
//! what were library boundaries and optimizes what that exposes.
//!
//! binaryen is not built into capsa (a C++ build on every platform capsa is
//! built for, 15 MB more binary, and static constructors every start would
//! run): the user's own `wasm-opt` is used, `$CAPSA_WASM_OPT` or the first
//! on `PATH`. What it writes is not trusted: it must be one valid core
//! module, the component it goes back into must validate (and then compile,
//! which the caller does), or nothing changes.

use crate::component::{Wiring, rebuild};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// binaryen's options: `-O3` with more inlining than its defaults (functions
/// with loops, up to 40 instructions always, 150 when it looks worth it, and
/// the first `if`s of larger ones), names kept for profiles and traps, and
/// exactly the features the module may use. Chosen by measurement: see the
/// README's Python bench.
pub const FLAGS: &[&str] = &[
    "-O3",
    "--inline-functions-with-loops",
    "--always-inline-max-function-size",
    "40",
    "--flexible-inline-max-function-size",
    "150",
    "--partial-inlining-ifs",
    "4",
    "--debuginfo",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-simd",
    "--enable-bulk-memory",
    "--enable-reference-types",
    "--enable-multivalue",
    "--enable-extended-const",
];

/// The variable that names the `wasm-opt` to use.
pub const WASM_OPT_VAR: &str = "CAPSA_WASM_OPT";

/// `$CAPSA_WASM_OPT` if set, else the first `wasm-opt` on `PATH`; why
/// there is none, if not.
pub fn find_wasm_opt() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os(WASM_OPT_VAR).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return if runnable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "{WASM_OPT_VAR} names {}, which is not a file it may run",
                p.display()
            ))
        };
    }
    let names: &[&str] = if cfg!(windows) {
        &["wasm-opt.exe", "wasm-opt.cmd", "wasm-opt.bat"]
    } else {
        &["wasm-opt"]
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| runnable(p))
        .ok_or_else(|| "none on PATH".to_string())
}

/// A file this user may run, as a shell would find it.
fn runnable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    p.is_file()
}

/// What `wasm-opt --version` says, first line (for the manifest and the
/// user).
pub fn version(wasm_opt: &Path) -> Result<String, String> {
    let out = Command::new(wasm_opt)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", wasm_opt.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").trim();
    if !out.status.success() || line.is_empty() {
        return Err(format!(
            "{} --version failed ({}); is it binaryen's wasm-opt?",
            wasm_opt.display(),
            out.status
        ));
    }
    Ok(line.chars().take(200).collect())
}

/// The component with its largest core module replaced by what `wasm-opt`
/// makes of it, working in `work` (a private directory the caller removes).
pub fn optimize_component(
    component: &[u8],
    wasm_opt: &Path,
    work: &Path,
) -> Result<Vec<u8>, String> {
    let wiring = Wiring::read(component)
        .ok_or("the prepared component has a shape this step does not follow")?;
    let (largest, range) = wiring
        .modules
        .iter()
        .enumerate()
        .max_by_key(|(_, r)| r.len())
        .ok_or("the prepared component has no core module")?;
    let input = work.join("in.wasm");
    let output = work.join("out.wasm");
    std::fs::write(&input, &component[range.clone()])
        .map_err(|e| format!("cannot write {}: {e}", input.display()))?;
    let run = Command::new(wasm_opt)
        .args(FLAGS)
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", wasm_opt.display()))?;
    if !run.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            wasm_opt.display(),
            run.status,
            tail(&run.stderr)
        ));
    }
    let optimized = std::fs::read(&output)
        .map_err(|e| format!("{} wrote no module: {e}", wasm_opt.display()))?;
    let is_module = wasmparser::Parser::is_core_wasm(&optimized)
        && wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&optimized)
            .is_ok();
    if !is_module {
        return Err(format!(
            "{} wrote something that is not a valid WebAssembly module",
            wasm_opt.display()
        ));
    }
    let largest = u32::try_from(largest).map_err(|_| "too many modules")?;
    rebuild(component, &wiring, |i, _| {
        Some((i == largest).then(|| optimized.clone()))
    })
    .ok_or_else(|| {
        format!(
            "the component does not validate with the module {} wrote",
            wasm_opt.display()
        )
    })
}

/// The end of a tool's error output (at most 1,000 characters), each line
/// indented under the message that quotes it, so that none reads as one of
/// capsa's own.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.char_indices().rev().nth(999).map_or(0, |(i, _)| i);
    let out = &text[start..];
    if out.is_empty() {
        return "no message".into();
    }
    out.lines().map(|l| format!("\n  | {l}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_of_long_output() {
        let long = "x".repeat(5000) + "the error";
        let t = tail(long.as_bytes());
        assert!(t.ends_with("the error"));
        assert_eq!(t.chars().count(), 1000 + "\n  | ".len());
        assert_eq!(tail(b"  \n"), "no message");
        assert_eq!(
            tail(b"one\ncapsa: two\n"),
            "\n  | one\n  | capsa: two",
            "every line indented"
        );
    }

    #[test]
    fn a_module_that_is_not_one_is_refused() {
        let component = wat::parse_str(
            r#"(component (core module $m (func (export "f"))) (core instance (instantiate $m)))"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A "wasm-opt" that writes garbage where the module should be.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let tool = dir.path().join("wasm-opt");
            std::fs::write(
                &tool,
                "#!/bin/sh\nwhile [ \"$1\" != -o ]; do shift; done\necho junk > \"$2\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
            let err = optimize_component(&component, &tool, dir.path()).unwrap_err();
            assert!(err.contains("not a valid WebAssembly module"), "{err}");
            // One that fails says why.
            std::fs::write(&tool, "#!/bin/sh\necho 'bad flag' >&2\nexit 3\n").unwrap();
            let err = optimize_component(&component, &tool, dir.path()).unwrap_err();
            assert!(err.contains("bad flag"), "{err}");
        }
    }
}

//! `capsa mcp` and `capsa serve`'s /mcp, driven by the official MCP Python
//! SDK as an agent's client would.

use crate::support::*;
use serde_json::Value;
use std::path::Path;

fn client() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mcp_client.py")
}

fn check(out: &Value, secret_dir: &Path) {
    assert_eq!(out["server"], "capsa");
    assert!(out["instructions"].as_str().unwrap().contains("sandbox"));
    let tools = out["tools"].as_object().unwrap();
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["list_files", "read_file", "run_python", "write_file"]
    );
    assert_eq!(tools["run_python"], serde_json::json!(["code"]));
    let text = |k: &str| out[k]["text"].as_str().unwrap().to_string();
    assert_eq!(text("cell"), "stdout:\n42\nexit code: 0", "{out}");
    assert_eq!(out["cell"]["structured"]["stdout"], "42\n");
    assert_eq!(text("kept"), "stdout:\n7\nexit code: 0");
    assert_eq!(text("fresh"), "stdout:\nFalse\nexit code: 0");
    assert_eq!(out["write"]["is_error"], false, "{out}");
    assert_eq!(out["used"]["is_error"], false, "{out}");
    assert_eq!(text("read"), "HÉLLO");
    assert_eq!(text("list"), "in/\nout.txt (6 bytes)");
    assert_eq!(out["escape"]["is_error"], true);
    assert!(!text("escape").contains("root:"), "{out}");
    let widen = text("widen");
    assert_eq!(out["widen"]["is_error"], true, "{out}");
    assert!(widen.contains("FileNotFoundError"), "{widen}");
    assert!(
        widen.contains(&format!("denied: read {}", s(secret_dir))),
        "{widen}"
    );
    assert!(text("error").contains("ZeroDivisionError"));
    let limit = text("limit");
    assert!(limit.contains("limit reached: time limit of 2s"), "{limit}");
    assert!(limit.contains("the session has ended"), "{limit}");
    // The next call with the name starts a new interpreter.
    assert_eq!(text("after"), "stdout:\nFalse\nexit code: 0", "{out}");
    assert_eq!(out["no_session"]["is_error"], true);
    // Names a program chose are listed escaped, one line each; the
    // structured result has them as they are.
    assert_eq!(
        text("odd_names"),
        "\\u{1b}]0;T\\u{7}\\u{1b}[2Jx (0 bytes)\nn\\u{a}fake (0 bytes) (0 bytes)",
        "{out}"
    );
    let names: Vec<&str> = out["odd_names"]["structured"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["\x1b]0;T\x07\x1b[2Jx", "n\nfake (0 bytes)"]);
    assert_eq!(
        text("odd_write"),
        "wrote 1 bytes to w\\u{202e}x\\u{ad}.txt",
        "{out}"
    );
}

fn secret() -> (tempfile::TempDir, std::path::PathBuf) {
    let (t, dir) = scratch();
    std::fs::write(dir.join("secret.txt"), "secret").unwrap();
    (t, dir)
}

#[test]
fn an_agent_uses_the_tools_over_stdio() {
    python_ready();
    let (_t, dir) = secret();
    drive(
        &["stdio", env!("CARGO_BIN_EXE_capsa"), "--timeout=2s"],
        &dir,
    );
}

/// Runs the SDK client (`ARGS SECRET`) and checks all it saw.
fn drive(args: &[&str], secret_dir: &Path) {
    let out = host_python()
        .arg(client())
        .args(args)
        .arg(s(&secret_dir.join("secret.txt")))
        .env("CAPSA_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    check(&v, secret_dir);
}

#[test]
fn an_agent_uses_the_tools_over_streamable_http() {
    python_ready();
    let (_t, dir) = secret();
    let server =
        crate::serve::Server::start_in(Path::new("/"), &["--timeout=2s"], Some("mcp-test-token"));
    let mcp = format!("http://{}/mcp", server.addr);
    drive(&["http", &mcp, "mcp-test-token"], &dir);
}

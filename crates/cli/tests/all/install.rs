//! `pip install` of the wheel `scripts/build-wheels` writes gives a working
//! `capsa` in a fresh virtual environment, as a user would install it.

use std::path::Path;
use std::process::Command;

#[test]
fn wheel_installs_a_working_capsa_into_a_fresh_venv() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    let out = Command::new(root.join("scripts/build-wheels"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_capsa"),
            "--platform",
            "linux-x86_64",
        ])
        .arg("--out")
        .arg(&dist)
        .output()
        .expect("scripts/build-wheels runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wheels: Vec<_> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    let name = wheels[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("capsa-")
            && name.contains("-py3-none-manylinux_2_")
            && name.ends_with("_x86_64.whl"),
        "{name}"
    );

    let venv = tmp.path().join("venv");
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--no-index"])
        .arg(&wheels[0])
        .output()
        .expect("pip runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // On the environment's PATH, as an activated venv has it.
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("capsa")
        .arg("--version")
        .env("PATH", &path)
        .output()
        .expect("capsa is on the venv's PATH");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("capsa {}\n", env!("CARGO_PKG_VERSION"))
    );
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsa-cache");
    let out = Command::new("capsa")
        .arg("run")
        .arg(root.join("examples/hello.py"))
        .env("PATH", &path)
        .env("CAPSA_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("hello from Python 3.14"), "{stdout}");
    assert!(stdout.contains("and your keys stay yours"), "{stdout}");

    // The Python API in the same wheel finds the binary it came with,
    // with nothing on PATH.
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import capsa; r = capsa.run('print(6 * 7)'); print(r.exit_code, r.stdout, end='')",
        ])
        .env("PATH", "/nonexistent")
        .env_remove("CAPSA_BIN")
        .env("CAPSA_CACHE_DIR", &cache)
        .output()
        .expect("the venv's python runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 42\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

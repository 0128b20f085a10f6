//! The Python API (`python/capsa`), tested with pytest against this build
//! of capsa; and the deployment files, checked as CI can check them.

use crate::support::*;
use std::path::Path;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_python_api_passes_its_pytest_suite() {
    python_ready();
    let python = root().join("python");
    let tools = host_tools();
    let out = host_python()
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(python.join("tests"))
        .env(
            "PYTHONPATH",
            format!("{}:{}", python.display(), tools.display()),
        )
        .env("CAPSA_BIN", env!("CARGO_BIN_EXE_capsa"))
        .env("CAPSA_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed"), "{text}");
    assert!(!text.contains("skipped"), "{text}");
}

#[test]
fn the_kubernetes_manifests_are_valid_and_the_check_can_fail() {
    let manifest = root().join("deploy/kubernetes/capsa.yaml");
    let validate = |path: &Path| {
        host_python()
            .args(["-m", "kubernetes_validate", "--strict"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = validate(&manifest);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in ["deployment/capsa", "service/capsa", "secret/capsa-token"] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{text}"
        );
    }
    // The same check refuses a broken manifest.
    let (_t, dir) = scratch();
    let broken = dir.join("broken.yaml");
    let yaml = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("replicas: 3", "replicas: three");
    std::fs::write(&broken, yaml).unwrap();
    assert!(!validate(&broken).status.success());
    // What the container runs is what the manifests probe and mount.
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(&manifest).unwrap();
    assert!(docker.contains("--token-file=/run/secrets/capsa/token"));
    assert!(manifest.contains("mountPath: /run/secrets/capsa"));
    assert!(docker.contains("--work-dir=/work") && manifest.contains("mountPath: /work"));
    assert!(manifest.contains("path: /v1/health"));
}

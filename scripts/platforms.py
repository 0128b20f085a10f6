"""What scripts/test-platforms and scripts/build-wheels share: the
platforms capsa is built for, installing their tools, and building."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIPLES = {
    "linux-x86_64": None,  # this machine
    # The same machine's static build: musl, nothing loaded at start, runs on
    # any x86-64 Linux whatever its libc (README, "Platforms").
    "linux-x86_64-static": "x86_64-unknown-linux-musl",
    "linux-arm64": "aarch64-unknown-linux-gnu",
    "windows-x86_64": "x86_64-pc-windows-gnu",
}
ARM_ENV = {
    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER": "aarch64-linux-gnu-gcc",
    "CC_aarch64_unknown_linux_gnu": "aarch64-linux-gnu-gcc",
    "CXX_aarch64_unknown_linux_gnu": "aarch64-linux-gnu-g++",
    "AR_aarch64_unknown_linux_gnu": "aarch64-linux-gnu-ar",
}


def say(msg):
    print(msg, flush=True)


def run(cmd, **kw):
    say("+ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def target_dir():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return Path(json.loads(out)["target_directory"])


def install(platforms):
    targets = ["wasm32-wasip1", "wasm32-wasip2"]
    targets += [TRIPLES[p] for p in platforms if TRIPLES[p]]
    run(["rustup", "target", "add", *targets], stdout=subprocess.DEVNULL)
    need = {
        "linux-arm64": [("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
                        ("qemu-aarch64", "qemu-user")],
        "windows-x86_64": [("x86_64-w64-mingw32-gcc", "mingw-w64"), ("wine", "wine")],
        # C in capsa's dependencies (ring, zstd, mimalloc) built against musl.
        "linux-x86_64-static": [("musl-gcc", "musl-tools")],
    }
    missing = sorted({pkg for p in platforms for tool, pkg in need.get(p, [])
                      if not shutil.which(tool)})
    # arm64's own C library, installed as Debian installs it for arm64
    # (multiarch), so that qemu runs capsa as the system would: with
    # QEMU_LD_PREFIX instead, qemu would show the guest that prefix for every
    # path that exists there, `/` included.
    arm_libc = "linux-arm64" in platforms and not Path("/lib/ld-linux-aarch64.so.1").exists()
    if arm_libc:
        missing += ["libc6:arm64", "libgcc-s1:arm64"]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        if arm_libc:
            run([*sudo, "dpkg", "--add-architecture", "arm64"])
        run([*sudo, "apt-get", "update", "-qq"])
        run([*sudo, "apt-get", "install", "-y", "-qq", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def binary(name, tdir):
    """Where cargo puts capsa for the platform `name`."""
    triple = TRIPLES[name]
    exe = "capsa.exe" if name.startswith("windows") else "capsa"
    return (tdir / triple if triple else tdir) / "release" / exe


def build(platforms, guests=True, native=True):
    """Builds capsa for `platforms` (and this machine's glibc build first,
    which test-platforms compares the others with, when `native`)."""
    first = ["linux-x86_64"] if native or "linux-x86_64" in platforms else []
    for p in [*first, *[p for p in platforms if p != "linux-x86_64"]]:
        triple = TRIPLES[p]
        cmd = ["cargo", "build", "--release", "-p", "capsa"]
        if triple:
            cmd += ["--target", triple]
        started = time.monotonic()
        run(cmd, cwd=ROOT, env={**os.environ, **ARM_ENV})
        say(f"built {p} in {time.monotonic() - started:.0f} s")
    for t in ["wasm32-wasip1", "wasm32-wasip2"] if guests else []:
        run(["cargo", "build", "--release", "--quiet", "-p", "capsa-test-programs",
             "--target", t], cwd=ROOT)

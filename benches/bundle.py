#!/usr/bin/env python3
"""Time to a Python bundle's first output, against the unpacked script.

    python3 benches/bundle.py [--runs N]

Packs a hello-world folder, then times (whole process, which ends right
after the first line) `capsa run app.capsa` the first time on a machine
(its bundle cache emptied before each run; the Python runtime already
prepared), `capsa run app.capsa` warm, and `capsa run main.py` from the
folder, interleaved, N runs each. Prints medians and ratios.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    sh("cargo", "build", "--quiet", "-p", "capsa", cwd=ROOT)
    meta = sh("cargo", "metadata", "--format-version", "1", "--no-deps", cwd=ROOT, capture_output=True)
    capsa = Path(json.loads(meta.stdout)["target_directory"]) / "debug" / "capsa"
    work = Path(tempfile.mkdtemp(prefix="capsa-bundle-bench-"))
    env = dict(os.environ, CAPSA_CACHE_DIR=str(work / "cache"))
    try:
        app = work / "app"
        app.mkdir()
        (app / "main.py").write_text('print("hello")\n')
        bundle = work / "app.capsa"
        sh(str(capsa), "pack", str(app), "-o", str(bundle), capture_output=True)
        sh(str(capsa), "python", "install", env=env, capture_output=True)

        def first():
            shutil.rmtree(work / "cache" / "bundles", ignore_errors=True)
            return [str(capsa), "run", str(bundle)]

        peers = {
            "bundle, first run": first,
            "bundle, warm": lambda: [str(capsa), "run", str(bundle)],
            "main.py": lambda: [str(capsa), "run", str(app / "main.py")],
        }
        for make in peers.values():
            subprocess.run(make(), check=True, capture_output=True, env=env)
        samples = {name: [] for name in peers}
        for _ in range(args.runs):
            for name, make in peers.items():
                cmd = make()
                start = time.perf_counter()
                out = subprocess.run(cmd, check=True, capture_output=True, env=env)
                samples[name].append(time.perf_counter() - start)
                assert out.stdout == b"hello\n", out
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(samples["main.py"])
    print(f"time to first output, median of {args.runs} runs")
    for name, v in samples.items():
        m = statistics.median(v)
        print(f"  capsa run {name:<20} {m * 1000:7.1f} ms   ratio to main.py {m / base:5.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sandboxed Python against the machine's fastest python3, side by side.

    python3 benches/python.py [--runs N] [--rounds R] [--capsa BIN] [--peer PY]... [--optimize]

Peers: Debian's /usr/bin/python3 (built with PGO and LTO: usually the
fastest on the machine) and any other `python3` on PATH, each named with
its version. capsa is the release build (built here unless --capsa gives
one), its Python runtime prepared in a scratch cache first; with
--optimize, also capsa with its runtime optimized by binaryen's wasm-opt
(`capsa python install --optimize`, in a second scratch cache). Rows:

- start-up: `capsa run hello.py` against `PEER hello.py`, whole process,
  N runs each, interleaved so machine noise hits all alike; medians;
- memory, read from /proc while benches/python/idle.py runs: the peak
  resident set so far, the resident set, and the part of it that is
  private (anonymous: not pages of files, such as the compiled code and
  Python's snapshot, which every run shares);
- compute: seven benchmarks of pyperformance (nbody, richards, float,
  spectral_norm, fannkuch, json_dumps, regex_v8), the scripts of the
  `pyperformance` package from PyPI (downloaded into benches/.pyperformance
  with pip), run through benches/pyperf_shim (pyperf's API in one process);
  R rounds interleaved, the fastest per-loop time of each; the ratio
  capsa / peer and its geometric mean.
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
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "benches" / "python"
SHIM = ROOT / "benches" / "pyperf_shim"
STORE = ROOT / "benches" / ".pyperformance"
PYPERFORMANCE = "pyperformance==1.14.0"
BENCHMARKS = ["nbody", "richards", "float", "spectral_norm", "fannkuch", "json_dumps", "regex_v8"]


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def target_dir() -> Path:
    out = sh("cargo", "metadata", "--format-version", "1", "--no-deps", cwd=ROOT, capture_output=True)
    return Path(json.loads(out.stdout)["target_directory"])


def run_measured(cmd, env, cwd):
    """Wall time and stdout of one whole process."""
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    return elapsed, p.stdout


def resident(cmd, env, cwd) -> tuple:
    """Peak resident, resident and private (anonymous) memory in bytes of
    one run of idle.py, read from /proc once it says it is running. (Not
    wait4's maximum: it counts the pages of the forking parent too.)"""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    p.stdout.readline()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{p.pid}/status").read_text().splitlines() if ":" in line
    )
    p.communicate()
    kb = lambda key: int(status[key].split()[0]) * 1024  # noqa: E731
    return kb("VmHWM"), kb("VmRSS"), kb("RssAnon")


def benchmark_scripts() -> Path:
    """pyperformance's benchmark folders, from PyPI through pip."""
    root = STORE / "benchmarks"
    if not all((root / f"bm_{b}" / "run_benchmark.py").exists() for b in BENCHMARKS):
        STORE.mkdir(parents=True, exist_ok=True)
        sh(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PYPERFORMANCE, "-d", str(STORE))
        wheel = next(STORE.glob("pyperformance-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for b in BENCHMARKS:
                name = f"pyperformance/data-files/benchmarks/bm_{b}/run_benchmark.py"
                dest = root / f"bm_{b}" / "run_benchmark.py"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(name))
    return root


def peers(extra) -> list:
    found = []
    for p in ["/usr/bin/python3", shutil.which("python3"), *extra]:
        # A pyenv shim is a shell script: its start-up is not Python's.
        if not p or not Path(p).exists() or ("/shims/" in p and p not in extra):
            continue
        real = os.path.realpath(p)
        if any(os.path.realpath(q) == real for q, _ in found):
            continue
        version = sh(p, "-c", "import sys; print(sys.version.split()[0])", capture_output=True, text=True).stdout.strip()
        found.append((p, version))
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30, help="start-up runs per command")
    ap.add_argument("--rounds", type=int, default=3, help="runs per compute benchmark and command")
    ap.add_argument("--capsa", help="a capsa binary (default: build the release one)")
    ap.add_argument("--peer", action="append", default=[], help="another python3 to compare with")
    ap.add_argument("--optimize", action="store_true",
                    help="also measure capsa after `capsa python install --optimize` (needs binaryen's wasm-opt)")
    args = ap.parse_args()

    if args.optimize and not (os.environ.get("CAPSA_WASM_OPT") or shutil.which("wasm-opt")):
        sys.exit("--optimize needs binaryen's wasm-opt on PATH (apt install binaryen) or in CAPSA_WASM_OPT")
    if args.capsa:
        capsa = Path(args.capsa)
    else:
        sh("cargo", "build", "--quiet", "--release", "-p", "capsa", cwd=ROOT)
        capsa = target_dir() / "release" / "capsa"
    natives = peers(args.peer)
    bench_root = benchmark_scripts()
    # One scratch cache per capsa variant: as prepared, and (--optimize)
    # run through binaryen's wasm-opt by `capsa python install --optimize`.
    variants = [("capsa", [])] + ([("capsa -O", ["--optimize"])] if args.optimize else [])
    caches = {}
    envs = {}
    for name, flags in variants:
        caches[name] = Path(tempfile.mkdtemp(prefix="capsa-bench-cache-"))
        envs[name] = dict(os.environ, CAPSA_CACHE_DIR=str(caches[name]))
        envs[name].pop("PYTHONPATH", None)
    peer_env = dict(os.environ)
    peer_env.pop("PYTHONPATH", None)
    try:
        for name, flags in variants:
            sh(str(capsa), "python", "install", *flags, env=envs[name], capture_output=True)
        capsa_version = sh(str(capsa), "python", "-V", env=envs["capsa"], capture_output=True, text=True).stdout.strip()
        commands = [(n, [str(capsa), "run", "hello.py"], envs[n]) for n, _ in variants] + [
            (f"python3 {v}", [p, "hello.py"], peer_env) for p, v in natives
        ]
        for _, cmd, env in commands:  # warm every cache
            run_measured(cmd, env, HELLO)
        start = {name: [] for name, _, _ in commands}
        for _ in range(args.runs):
            for name, cmd, env in commands:
                start[name].append(run_measured(cmd, env, HELLO)[0])
        idle = {name: [] for name, _, _ in commands}
        for _ in range(5):
            for name, cmd, env in commands:
                idle[name].append(resident(cmd[:-1] + ["idle.py"], env, HELLO))

        compute = {}
        for b in BENCHMARKS:
            folder = bench_root / f"bm_{b}"
            cmds = [
                (n, [str(capsa), "run", f"--python-path={SHIM}", "run_benchmark.py"], envs[n])
                for n, _ in variants
            ] + [(f"python3 {v}", [p, "run_benchmark.py"], dict(peer_env, PYTHONPATH=str(SHIM))) for p, v in natives]
            best = {name: math.inf for name, _, _ in cmds}
            for _ in range(args.rounds):
                for name, cmd, env in cmds:
                    _, out = run_measured(cmd, env, folder)
                    line = json.loads(out.decode().strip().splitlines()[-1])
                    best[name] = min(best[name], min(line["seconds_per_loop"]))
            compute[b] = best
            print(f"  {b}: " + ", ".join(f"{n} {t * 1000:.2f} ms" for n, t in best.items()), file=sys.stderr)
    finally:
        for c in caches.values():
            shutil.rmtree(c, ignore_errors=True)

    names = [name for name, _, _ in commands]
    mine = [n for n, _ in variants]
    theirs = [n for n in names if n not in mine]
    pairs = [(m, t) for m in mine for t in theirs]
    print(f"capsa: {capsa_version} (WASI, sandboxed), {capsa}")
    if args.optimize:
        print("capsa -O: the same, after `capsa python install --optimize` (binaryen's wasm-opt)")
    for p, v in natives:
        print(f"python3 {v}: {p}")
    label = lambda m, t: f"{m[6:] or ''}{'/' if m[6:] else ''}{t[8:]}"  # noqa: E731
    width = max([14] + [len("ratio " + label(m, t)) + 2 for m, t in pairs])
    print(f"\n{'':<24}" + "".join(f"{n:>16}" for n in names) + "".join(f"{'ratio ' + label(m, t):>{width}}" for m, t in pairs))

    def row(label_, values, fmt):
        cells = "".join(f"{fmt(values[n]):>16}" for n in names)
        ratios = "".join(f"{values[m] / values[t]:>{width}.2f}" for m, t in pairs)
        print(f"{label_:<24}{cells}{ratios}")

    row(f"start-up (median of {args.runs})", {n: statistics.median(v) for n, v in start.items()},
        lambda s: f"{s * 1000:.1f} ms")
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    row("peak memory", {n: statistics.median(p for p, _, _ in v) for n, v in idle.items()}, mb)
    row("  resident, running", {n: statistics.median(r for _, r, _ in v) for n, v in idle.items()}, mb)
    row("  of it private", {n: statistics.median(a for _, _, a in v) for n, v in idle.items()}, mb)
    for b, best in compute.items():
        row(f"  {b}", best, lambda s: f"{s * 1000:.2f} ms")
    geo = {
        (m, t): math.exp(sum(math.log(compute[b][m] / compute[b][t]) for b in compute) / len(compute))
        for m, t in pairs
    }
    print(f"{'compute, geometric mean':<24}{'':>{16 * len(names)}}" + "".join(f"{geo[k]:>{width}.2f}" for k in pairs))


if __name__ == "__main__":
    main()

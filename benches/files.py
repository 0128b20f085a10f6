#!/usr/bin/env python3
"""File operations in a granted directory: capsa against native python3.

    python3 benches/files.py [--rounds N] [--ops M] [--capsa BIN ...]

A Python script stats, opens and reads, writes and lists files four levels
deep in a writable grant that holds a `--deny-write` area and a read-only
nested grant (so every operation walks past marked objects), and reports
microseconds per operation, timed inside the script (start-up excluded).
It runs under each `capsa run` given (default: this checkout's release
build) and under Debian's `/usr/bin/python3` (the fastest CPython on the
machine) on the same tree, interleaved, N rounds; prints medians and the
ratio of each capsa to python3. Give `--capsa` twice (an older build and
this one) to compare a change.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NATIVE = "/usr/bin/python3"

WORKLOAD = r'''
import os, sys, time, json
W, n = sys.argv[1], int(sys.argv[2])
deep = os.path.join(W, "a", "b", "c", "d")
files = [os.path.join(deep, f"f{i}.txt") for i in range(50)]
out = os.path.join(W, "out")
res = {}
def timed(name, fn):
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    res[name] = (time.perf_counter() - t) / n * 1e6
timed("stat", lambda i: os.stat(files[i % 50]))
timed("open+read", lambda i: open(files[i % 50]).read())
def write(i):
    with open(os.path.join(out, f"o{i % 50}.txt"), "w") as f:
        f.write("x" * 100)
timed("create+write", write)
timed("listdir", lambda i: os.listdir(deep))
print(json.dumps(res))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--capsa", action="append", help="a capsa binary (repeatable)")
    args = ap.parse_args()
    if not args.capsa:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "capsa"], cwd=ROOT, check=True)
        meta = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=ROOT, check=True, capture_output=True,
        )
        args.capsa = [str(Path(json.loads(meta.stdout)["target_directory"]) / "release" / "capsa")]
    work = Path(tempfile.mkdtemp(prefix="capsa-files-bench-"))
    try:
        w = work / "w"
        deep = w / "a" / "b" / "c" / "d"
        deep.mkdir(parents=True)
        (w / "out").mkdir()
        (w / "keep").mkdir()
        (w / "ro").mkdir()
        for i in range(50):
            (deep / f"f{i}.txt").write_text("y" * 1000)
        script = work / "workload.py"
        script.write_text(WORKLOAD)
        flags = [f"--allow-write={w}", f"--deny-write={w / 'keep'}", f"--allow-read={w / 'ro'}"]
        peers = {}
        for i, bin_ in enumerate(args.capsa):
            env = dict(os.environ, CAPSA_CACHE_DIR=str(work / f"cache{i}"))
            subprocess.run([bin_, "python", "install"], env=env, check=True, capture_output=True)
            name = f"capsa {bin_}" if len(args.capsa) > 1 else "capsa"
            peers[name] = ([bin_, "run", *flags, str(script)], env)
        peers["python3"] = ([NATIVE, str(script)], dict(os.environ))
        samples = {name: [] for name in peers}
        for _ in range(args.rounds):
            for name, (cmd, env) in peers.items():
                out = subprocess.run([*cmd, str(w), str(args.ops)], env=env, check=True, capture_output=True, text=True)
                samples[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        ops = list(samples["python3"][0])
        med = {name: {op: statistics.median(s[op] for s in runs) for op in ops} for name, runs in samples.items()}
        print(f"{args.rounds} rounds of {args.ops} operations each; microseconds per operation, medians")
        print(f"{'':28}" + "".join(f"{op:>14}" for op in ops))
        for name in peers:
            print(f"{name[-28:]:28}" + "".join(f"{med[name][op]:14.1f}" for op in ops))
            if name != "python3":
                print(f"{'  ratio to python3':28}" + "".join(f"{med[name][op] / med['python3'][op]:14.2f}" for op in ops))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""200 sequential HTTPS GETs with requests, sandboxed against native.

    python3 benches/https.py [--rounds N] [--requests M]

Starts the tests' loopback HTTPS server (tests/support/http_server.py) with
a CA made here by openssl, installs requests from PyPI into a scratch
directory, then runs the same client script N times each, interleaved:
`capsa run --allow-net=localhost:PORT --ca-cert=CA --python-path=SITE`
(CPython 3.14 in WASI; TLS by capsa's host, through wasi:http) and the
machine's `python3` with the same requests (TLS by its ssl module). The
client uses one requests.Session (keep-alive) and times each GET, body
read included. Prints medians of requests per second, per-request latency
(p50, p90), whole-process time and the connections the server saw, with
the ratios capsa / native.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "crates" / "cli" / "tests" / "support" / "http_server.py"
PACKAGES = ["requests==2.34.2", "urllib3==2.8.0", "idna==3.20",
            "certifi==2026.10.18", "charset-normalizer==3.5.2"]

CLIENT = r"""
import json, sys, time
t_import = time.perf_counter()
import requests
url, n = sys.argv[1], int(sys.argv[2])
verify = sys.argv[3] if len(sys.argv) > 3 else True
s = requests.Session()
lat = []
start = time.perf_counter()
for _ in range(n):
    a = time.perf_counter()
    r = s.get(url, verify=verify, timeout=30)
    body = r.content
    lat.append(time.perf_counter() - a)
    assert r.status_code == 200 and body == b"hello over http\n", (r.status_code, body)
total = time.perf_counter() - start
lat.sort()
print(json.dumps({"rps": n / total, "p50": lat[n // 2], "p90": lat[n * 9 // 10],
                  "import": start - t_import}))
"""


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def make_pki(d: Path):
    def ossl(*a):
        sh("openssl", *a, capture_output=True)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"),
         "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=capsa bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "srv.key"),
         "-out", str(d / "srv.csr"), "-subj", "/CN=localhost")
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", str(d / "srv.csr"), "-CA", str(d / "ca.pem"),
         "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "srv.pem"),
         "-days", "2", "-extfile", str(d / "ext"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    sh("cargo", "build", "--quiet", "-p", "capsa", cwd=ROOT)
    meta = sh("cargo", "metadata", "--format-version", "1", "--no-deps", cwd=ROOT, capture_output=True)
    capsa = Path(json.loads(meta.stdout)["target_directory"]) / "debug" / "capsa"
    work = Path(tempfile.mkdtemp(prefix="capsa-https-bench-"))
    env = dict(os.environ, CAPSA_CACHE_DIR=str(work / "cache"))
    make_pki(work)
    site = work / "site"
    sh(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
       "--no-deps", "--only-binary=:all:", "--platform", "any", "--implementation", "py",
       "--python-version", "3.14", "--target", str(site), *PACKAGES,
       env=dict(os.environ, PIP_BREAK_SYSTEM_PACKAGES="1"))
    (work / "client.py").write_text(CLIENT)
    log = work / "server.jsonl"
    server = subprocess.Popen([sys.executable, str(SERVER), str(log), str(work / "srv.pem"),
                               str(work / "srv.key")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        url = f"https://localhost:{port}/hello"
        n = str(args.requests)
        sh(str(capsa), "python", "install", env=env, capture_output=True)
        peers = {
            "capsa": [str(capsa), "run", f"--allow-net=localhost:{port}",
                      f"--ca-cert={work / 'ca.pem'}", f"--python-path={site}",
                      str(work / "client.py"), url, n],
            "native": ["python3", str(work / "client.py"), url, n, str(work / "ca.pem")],
        }
        native_env = dict(os.environ, PYTHONPATH=str(site))
        results = {name: [] for name in peers}
        for _ in range(args.rounds + 1):  # the first round warms caches
            for name, cmd in peers.items():
                log.write_text("")
                import time
                t0 = time.perf_counter()
                out = sh(*cmd, capture_output=True, text=True,
                         env=native_env if name == "native" else env)
                wall = time.perf_counter() - t0
                r = json.loads(out.stdout)
                lines = [json.loads(line) for line in log.read_text().splitlines()]
                r["wall"] = wall
                r["connections"] = len({x["client_port"] for x in lines})
                assert len(lines) == args.requests, len(lines)
                results[name].append(r)
        med = {name: {k: statistics.median(r[k] for r in rs[1:]) for k in rs[0]}
               for name, rs in results.items()}
        version = sh("python3", "--version", capture_output=True, text=True).stdout.strip()
        print(f"{args.requests} sequential HTTPS GETs, one requests.Session, loopback; "
              f"medians of {args.rounds} rounds")
        print(f"  capsa: CPython 3.14/WASI, TLS by the host (rustls); native: {version}, ssl module")
        print(f"{'':8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'process s':>10} {'conns':>6}")
        for name, m in med.items():
            print(f"{name:8} {m['rps']:8.0f} {m['p50'] * 1e3:8.2f} {m['p90'] * 1e3:8.2f} "
                  f"{m['wall']:10.3f} {m['connections']:6.0f}")
        c, nat = med["capsa"], med["native"]
        print(f"ratio capsa/native: req/s {c['rps'] / nat['rps']:.2f}, "
              f"p50 latency {c['p50'] / nat['p50']:.2f}, process {c['wall'] / nat['wall']:.2f}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()

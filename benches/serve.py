#!/usr/bin/env python3
"""`capsa serve` against a native server doing the same work, side by side.

    python3 benches/serve.py [--capsa BIN] [--seconds S] [--clients C] [--sessions N]

capsa is the release build (built here unless --capsa gives one). The peer
is benches/serve_peer.py: a small threaded HTTP server in Python that runs
each request's code with Debian's /usr/bin/python3 as a subprocess and
answers the same JSON, and whose sessions are the same interpreter loop
capsa's sessions use (crates/cli/src/commands/serve/session.py), run by
/usr/bin/python3 with no sandbox. Both listen on loopback. Rows:

- throughput of POST /v1/run {"code": "print(1)"}: C clients, each on one
  keep-alive connection, for S seconds; runs per second, and the CPU time
  the server and all its processes spent a run (which moves less than
  runs per second with what else the machine is doing);
- latency of a session call `x += 1`: 500 calls, p50 and p99;
- memory of N idle sessions: the proportional set size (PSS) of the server
  and all its processes, before and after, and per session;
- a load of L requests (--load, 1000) sent at once, each on its own
  connection, a quarter of them hostile (a loop past a 1 s limit, a memory
  bomb, an output flood, runaway recursion): every good one answered
  correctly, every hostile one by its limit, nothing lost, and the server's
  memory afterwards against before.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "benches" / "serve_peer.py"
NATIVE = "/usr/bin/python3"


def start(cmd, env):
    """Starts a server; returns (process, address) from its 'listening on' line."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    for line in p.stderr:
        if "listening on http://" in line:
            addr = line.split("listening on http://")[1].split()[0]
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, addr
    raise SystemExit(f"{cmd[0]} did not start")


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    p.wait()


class Client:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.addr = addr

    def post(self, path, body):
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None


def throughput(addr, seconds, clients):
    done = [0] * clients
    bad = []
    stop_at = time.perf_counter() + seconds

    def work(i):
        c = Client(addr)
        while time.perf_counter() < stop_at:
            status, r = c.post("/v1/run", {"code": "print(1)"})
            if status != 200 or r["stdout"] != "1\n":
                bad.append(r)
            done[i] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if bad:
        raise SystemExit(f"wrong answers: {bad[:3]}")
    return sum(done) / elapsed


def session_latency(addr, calls=500):
    c = Client(addr)
    status, s = c.post("/v1/sessions", {})
    assert status == 201, s
    sid = s["id"]
    c.post(f"/v1/sessions/{sid}/exec", {"code": "x = 0"})
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        status, r = c.post(f"/v1/sessions/{sid}/exec", {"code": "x += 1"})
        times.append(time.perf_counter() - t)
        assert status == 200 and r["exit_code"] == 0, r
    status, r = c.post(f"/v1/sessions/{sid}/exec", {"code": "x"})
    assert r["stdout"] == f"{calls}\n", r
    c.conn.request("DELETE", f"/v1/sessions/{sid}")
    c.conn.getresponse().read()
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def descendants(pid):
    out = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            out += descendants(int(c))
    return out


def tree_cpu(pid):
    """Seconds of CPU time used by process `pid` and its descendants,
    those they already waited for included."""
    ticks = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def pss_kib(pid):
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def idle_memory(server, addr, n):
    c = Client(addr)
    before = pss_kib(server.pid)
    ids = []
    for _ in range(n):
        status, s = c.post("/v1/sessions", {})
        assert status == 201, s
        ids.append(s["id"])
        c.post(f"/v1/sessions/{s['id']}/exec", {"code": "x = 1"})
    time.sleep(1)
    after = pss_kib(server.pid)
    for sid in ids:
        c.conn.request("DELETE", f"/v1/sessions/{sid}")
        c.conn.getresponse().read()
    return before / 1024, after / 1024, (after - before) / 1024 / n


HOSTILE = [
    ({"code": "while True: pass", "timeout": "1s"}, lambda r: r["exit_code"] == 124),
    ({"code": "a = []\nwhile True: a.append(bytearray(1 << 20))", "memory": "64M"},
     lambda r: r["exit_code"] in (1, 137)),
    ({"code": "while True: print('x' * 4096)", "max_output": "1M"}, lambda r: r["exit_code"] == 137),
    ({"code": "def f(): f()\nf()"}, lambda r: r["exit_code"] == 1 and "RecursionError" in r["stderr"]),
]


def load(server, addr, total):
    """`total` requests at once, each on its own connection; a quarter hostile."""
    jobs = []
    for i in range(total):
        if i % 4 == 3:
            jobs.append(random.choice(HOSTILE))
        else:
            n = random.randrange(1000)
            jobs.append(({"code": f"print({n} * 3)"}, lambda r, n=n: r["stdout"] == f"{n * 3}\n"))
    random.shuffle(jobs)
    before = pss_kib(server.pid)
    wrong = []
    go = threading.Barrier(total)

    def work(body, ok):
        c = Client(addr)
        c.conn.timeout = 600
        go.wait()
        try:
            status, r = c.post("/v1/run", body)
        except Exception as e:  # noqa: BLE001 - a lost request is a result
            status, r = None, repr(e)
        if status != 200 or not ok(r):
            wrong.append((body, status, r))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    time.sleep(2)
    return elapsed, len(wrong), before / 1024, pss_kib(server.pid) / 1024, wrong[:3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capsa")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--load", type=int, default=1000)
    args = ap.parse_args()
    capsa = args.capsa
    if not capsa:
        subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "capsa"], cwd=ROOT, check=True)
        meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                              capture_output=True, check=True)
        capsa = str(Path(json.loads(meta.stdout)["target_directory"]) / "release" / "capsa")
    scratch = Path(tempfile.mkdtemp(prefix="capsa-bench-serve-"))
    env = dict(os.environ, CAPSA_CACHE_DIR=str(scratch / "cache"))
    subprocess.run([capsa, "python", "install"], env=env, check=True, capture_output=True)
    servers = {
        "capsa serve": [capsa, "serve", "--listen=127.0.0.1:0", f"--max-runs={args.clients}",
                        f"--max-queue={args.load}",
                        f"--max-sessions={args.sessions + 8}", "--timeout=10s"],
        "native (python3 subprocesses)": [NATIVE, str(PEER), "--listen=127.0.0.1:0",
                                          f"--max-runs={args.clients}"],
    }
    results = {}
    try:
        for name, cmd in servers.items():
            p, addr = start(cmd, env)
            try:
                r = {}
                cpu, started = tree_cpu(p.pid), time.perf_counter()
                r["throughput"] = throughput(addr, args.seconds, args.clients)
                runs = r["throughput"] * (time.perf_counter() - started)
                r["cpu"] = (tree_cpu(p.pid) - cpu) * 1000 / runs
                r["p50"], r["p99"] = session_latency(addr)
                r["mem"] = idle_memory(p, addr, args.sessions)
                r["load"] = load(p, addr, args.load)
                results[name] = r
            finally:
                stop(p)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{'':34} {'runs/s':>8} {'CPU/run':>8} {'exec p50':>9} {'exec p99':>9} "
          f"{'idle PSS':>9} {f'+{args.sessions} sess.':>11} {'per sess.':>10} {f'load {args.load}':>10} {'wrong':>6} {'PSS after':>10}")
    for name, r in results.items():
        before, after, per = r["mem"]
        elapsed, wrong, lb, la, examples = r["load"]
        print(f"{name:34} {r['throughput']:8.0f} {r['cpu']:6.2f}ms {r['p50']:7.2f}ms {r['p99']:7.2f}ms "
              f"{before:7.1f}MB {after:9.1f}MB {per:8.2f}MB {elapsed:9.2f}s {wrong:6d} {la:8.1f}MB")
        for e in examples:
            print(f"   wrong: {e}")
    names = list(results)
    a, b = results[names[0]], results[names[1]]
    print(f"\nratio capsa / native: throughput {a['throughput'] / b['throughput']:.2f}, "
          f"CPU a run {a['cpu'] / b['cpu']:.2f}, "
          f"exec p50 {a['p50'] / b['p50']:.2f}, memory per session {a['mem'][2] / b['mem'][2]:.2f}")


if __name__ == "__main__":
    sys.exit(main())

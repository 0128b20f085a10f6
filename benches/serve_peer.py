#!/usr/bin/env python3
"""The native peer of benches/serve.py: the same HTTP API as `capsa serve`
(/v1/run, /v1/sessions, /v1/sessions/ID/exec, DELETE), doing the same work
without a sandbox. Each run is `python3 main.py` in a fresh directory, as a
subprocess, with the same limits (time by killing it, memory by
RLIMIT_AS, output by a cap); each session is the interpreter loop capsa's
sessions use, run by this python3.

    /usr/bin/python3 benches/serve_peer.py [--listen 127.0.0.1:0] [--max-runs N]
"""

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOOP = Path(__file__).resolve().parent.parent / "crates/cli/src/commands/serve/session.py"
MAX_OUTPUT = 16 << 20


def size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def seconds(text):
    return float(text[:-1]) if text.endswith("s") else float(text)


class Session:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="peer-session-")
        self.proc = subprocess.Popen([sys.executable, str(LOOP)], cwd=self.dir,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lock = threading.Lock()

    def exec(self, code):
        with self.lock:
            nonce = secrets.token_hex(16)
            self.proc.stdin.write((json.dumps({"code": code, "nonce": nonce}) + "\n").encode())
            self.proc.stdin.flush()
            out_mark = b"\0capsa-end:" + nonce.encode() + b":"
            err_mark = b"\0capsa-end:" + nonce.encode() + b"\n"
            out = b""
            while out_mark not in out or not out.endswith(b"\n"):
                out += os.read(self.proc.stdout.fileno(), 65536)
            err = b""
            while err_mark not in err:
                err += os.read(self.proc.stderr.fileno(), 65536)
            body, status = out.split(out_mark)
            return {"exit_code": int(status), "stdout": body.decode(), "stderr": err.split(err_mark)[0].decode(),
                    "denials": [], "limit": None, "duration_ms": 0}

    def end(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


SESSIONS = {}


def run(req, runs):
    with runs:
        d = tempfile.mkdtemp(prefix="peer-run-")
        try:
            Path(d, "main.py").write_text(req["code"])
            memory = size(req.get("memory", "512M"))
            timeout = seconds(req.get("timeout", "60s"))
            cap = size(req.get("max_output", "16M"))
            p = subprocess.Popen([sys.executable, "main.py"], cwd=d, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (memory + (64 << 20),) * 2))
            outs, over = {}, [False]

            def drain(name, f):
                buf = b""
                while chunk := f.read(65536):
                    if len(buf) < cap:
                        buf += chunk[: cap - len(buf)]
                    else:
                        over[0] = True
                        p.kill()
                outs[name] = buf

            ts = [threading.Thread(target=drain, args=(n, f)) for n, f in (("out", p.stdout), ("err", p.stderr))]
            for t in ts:
                t.start()
            limit = None
            try:
                code = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                code, limit = 124, f"time limit of {req.get('timeout', '60s')} reached"
            for t in ts:
                t.join()
            if over[0]:
                code, limit = 137, "output limit reached"
            return {"exit_code": code, "stdout": outs["out"].decode(errors="replace"),
                    "stderr": outs["err"].decode(errors="replace"), "denials": [], "limit": limit,
                    "duration_ms": 0}
        finally:
            shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--max-runs", type=int, default=8)
    args = ap.parse_args()
    runs = threading.BoundedSemaphore(args.max_runs)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in separate writes: without this, each
        # answer waits for the client's delayed ACK (40 ms).
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def answer(self, status, value=None):
            body = b"" if value is None else json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            req = json.loads(self.rfile.read(n) or b"{}")
            parts = self.path.strip("/").split("/")
            if parts == ["v1", "run"]:
                return self.answer(200, run(req, runs))
            if parts == ["v1", "sessions"]:
                sid = secrets.token_hex(16)
                SESSIONS[sid] = Session()
                return self.answer(201, {"id": sid})
            if len(parts) == 4 and parts[3] == "exec" and parts[2] in SESSIONS:
                return self.answer(200, SESSIONS[parts[2]].exec(req["code"]))
            self.answer(404, {"error": "no such endpoint"})

        def do_DELETE(self):
            s = SESSIONS.pop(self.path.strip("/").split("/")[-1], None)
            if s:
                s.end()
            self.answer(204 if s else 404)

    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer.request_queue_size = 4096
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"serve_peer: listening on http://{host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        for s in SESSIONS.values():
            s.end()


if __name__ == "__main__":
    main()

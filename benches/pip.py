#!/usr/bin/env python3
"""capsa pip against the host's pip, side by side, on a package index served
on loopback (files fetched from PyPI by the host's pip first).

    python3 benches/pip.py [--capsa BIN] [--runs N]

Rows: installing a wheel (six); installing six and building markupsafe from
its sdist; each as `capsa pip install -t DIR` and as Debian's
`/usr/bin/python3 -m pip install --no-cache-dir -t DIR` (capsa's pip cache
lives for one run, so the host's runs without its cache too), interleaved.
Then a script with a `# /// script` block: its first run (which installs)
and a later run, against the host's python3 with the packages on PYTHONPATH.
Last, a report script importing rich, jinja2 and markdown, from a folder
`capsa pip` filled (`--python-path`), first run and later runs, against
python3 with the same packages installed by the host's pip.
"""

import argparse
import functools
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST_PYTHON = "/usr/bin/python3"
WHEELS = [
    "pip==26.3", "six==1.17.0", "setuptools==80.9.0",
    # The report script's packages (issue 15's figure).
    "rich==15.0.0", "jinja2==3.1.6", "markdown==3.11.3", "pygments==2.21.0",
    "markdown-it-py==4.3.0", "mdurl==0.1.2",
]
SDISTS = ["markupsafe==3.0.3"]
REPORT = """import jinja2, markdown
from rich.console import Console
from rich.table import Table
t = Table(title="report")
t.add_column("name")
t.add_column("value")
for i in range(20):
    t.add_row(f"row {i}", str(i * i))
Console(width=60, force_terminal=False).print(t)
print(jinja2.Template("Hello {{ name }}: {% for x in xs %}{{ x }} {% endfor %}").render(name="w", xs=range(5)))
print(markdown.markdown("# Title\\n\\nSome *text* and a [link](https://example.org)."))
"""
SCRIPT = """# /// script
# dependencies = ["six", "markupsafe"]
# ///
import six, markupsafe
print(six.PY3, markupsafe.escape("<b>"))
"""


def fetch(root):
    simple = os.path.join(root, "simple")
    for specs, flag in ((WHEELS, "--only-binary=:all:"), (SDISTS, "--no-binary=:all:")):
        for spec in specs:
            dest = os.path.join(simple, spec.split("==")[0])
            subprocess.run(
                [HOST_PYTHON, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                 flag, "-d", dest, spec],
                check=True,
                env={**os.environ, "PIP_BREAK_SYSTEM_PACKAGES": "1"},
            )


def serve(root):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def timed(cmd, env, cwd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capsa", default=shutil.which("capsa") or "target/release/capsa")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    capsa = os.path.abspath(a.capsa)
    work = tempfile.mkdtemp(prefix="capsa-bench-pip-")
    try:
        root = os.path.join(work, "index")
        fetch(root)
        server = serve(root)
        index = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_BREAK_SYSTEM_PACKAGES="1")
        # Once: capsa fetches pip and compiles its bytecode on first use.
        timed([capsa, "pip", "--version"], env, work)
        timed([capsa, "pip", "install", "-q", "-i", index, "-t", os.path.join(work, "warm"), "six"], env, work)
        rows = {}
        for n in range(a.runs):
            for label, pkgs in (("wheel: six", ["six"]), ("sdist: six + markupsafe", ["six", "markupsafe"])):
                for who, cmd in (
                    ("capsa pip", [capsa, "pip", "install", "-q", "-i", index]),
                    ("host pip", [HOST_PYTHON, "-m", "pip", "install", "-q", "--no-cache-dir",
                                  "--disable-pip-version-check", "-i", index]),
                ):
                    target = os.path.join(work, f"t-{n}-{who}-{len(pkgs)}".replace(" ", "_"))
                    rows.setdefault((label, who), []).append(timed(cmd + ["-t", target] + pkgs, env, work))
        # A script with inline dependencies, in a folder of its own.
        sdir = os.path.join(work, "script")
        os.mkdir(sdir)
        with open(os.path.join(sdir, "app.py"), "w") as f:
            f.write(SCRIPT)
        senv = {**env, "PIP_INDEX_URL": index}
        # The environment is keyed by the requirements and the index, whose
        # port is new each time: the first run installs.
        first = timed([capsa, "run", "app.py"], senv, sdir)
        later = [timed([capsa, "run", "app.py"], senv, sdir) for _ in range(a.runs)]
        pyenv = {**env, "PYTHONPATH": os.path.join(work, "t-0-host_pip-2")}
        native = [timed([HOST_PYTHON, "app.py"], pyenv, sdir) for _ in range(a.runs)]
        print(f"capsa pip against {HOST_PYTHON} -m pip, loopback index, medians of {a.runs}")
        for label in ("wheel: six", "sdist: six + markupsafe"):
            c = statistics.median(rows[(label, "capsa pip")])
            h = statistics.median(rows[(label, "host pip")])
            print(f"  {label:26} capsa {c:6.2f} s   host {h:6.2f} s   ratio {c / h:4.2f}")
        # The report script: packages from --python-path against the same
        # packages for python3 (the host's pip compiled their bytecode).
        rdir = os.path.join(work, "report")
        os.mkdir(rdir)
        with open(os.path.join(rdir, "report.py"), "w") as f:
            f.write(REPORT)
        pkgs = ["rich", "jinja2", "markdown"]
        timed([capsa, "pip", "install", "-q", "-i", index, "-t", os.path.join(rdir, "libs")] + pkgs, env, rdir)
        timed([HOST_PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-i", index,
               "-t", os.path.join(rdir, "native")] + pkgs, env, rdir)
        renv = {**env, "PYTHONPATH": os.path.join(rdir, "native")}
        report_first = timed([capsa, "run", "--python-path=libs", "report.py"], env, rdir)
        report_capsa, report_native = [], []
        for _ in range(a.runs):
            report_capsa.append(timed([capsa, "run", "--python-path=libs", "report.py"], env, rdir))
            report_native.append(timed([HOST_PYTHON, "report.py"], renv, rdir))
        ln = statistics.median(later)
        nn = statistics.median(native)
        print(f"  inline deps, first run     capsa {first:6.2f} s (installs)")
        print(f"  inline deps, later runs    capsa {ln:6.3f} s   python3 {nn:6.3f} s   ratio {ln / nn:4.2f}")
        rc, rn = statistics.median(report_capsa), statistics.median(report_native)
        print(f"  rich+jinja2+markdown, 1st  capsa {report_first:6.3f} s (compiles bytecode)")
        print(f"  rich+jinja2+markdown       capsa {rc:6.3f} s   python3 {rn:6.3f} s   ratio {rc / rn:4.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Run code you do not trust with exactly the access it needs, from Python.

    import capsa

    r = capsa.run("print(6 * 7)")
    r.stdout                      # '42\\n'

    with capsa.Session(allow_read=["/data"]) as s:
        s.write_file("in.csv", "a,b\\n1,2\\n")
        s.exec("import csv; rows = list(csv.reader(open('in.csv')))")
        s.exec("len(rows)").stdout  # '2\\n'

Each call runs in capsa's sandbox (CPython 3.14 on WebAssembly): nothing is
granted unless named here. Without ``url``, the ``capsa`` binary installed
with this package does the work on this machine; with ``url`` (and
``token``), a ``capsa serve`` elsewhere does, and what it was started with is
the ceiling of what a call may ask for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ["CapsaError", "Result", "Session", "binary", "run"]


class CapsaError(Exception):
    """capsa refused a call (a grant beyond the server's, a bad argument) or
    could not make it. ``status`` is the HTTP status, when there was one."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Result:
    """How a run or a session call ended."""

    exit_code: int
    stdout: str
    stderr: str
    #: What the sandbox refused, each with the flag that would allow it.
    denials: List[str] = field(default_factory=list)
    #: The limit that ended the run (time, memory, output), as capsa words it.
    limit: Optional[str] = None
    duration_ms: float = 0.0
    #: True when this call ended its session (a limit was reached).
    session_ended: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def _from(cls, v: Mapping[str, Any]) -> "Result":
        return cls(
            exit_code=int(v["exit_code"]),
            stdout=v.get("stdout", ""),
            stderr=v.get("stderr", ""),
            denials=list(v.get("denials", [])),
            limit=v.get("limit"),
            duration_ms=float(v.get("duration_ms", 0.0)),
            session_ended=bool(v.get("session_ended", False)),
        )


def binary() -> str:
    """The capsa executable: ``$CAPSA_BIN``, the one this package installed,
    or the first on PATH."""
    given = os.environ.get("CAPSA_BIN")
    if given:
        return given
    exe = "capsa.exe" if sys.platform == "win32" else "capsa"
    here = Path(sysconfig.get_path("scripts")) / exe
    if here.is_file():
        return str(here)
    found = shutil.which("capsa")
    if found:
        return found
    raise CapsaError("no capsa binary: install the capsa wheel, or set CAPSA_BIN")


def _asks(
    allow_read: Sequence[str],
    allow_write: Sequence[str],
    allow_net: Sequence[str],
    allow_env: Sequence[str],
    timeout: Optional[str],
    memory: Optional[str],
    max_output: Optional[str],
    max_write: Optional[str] = None,
) -> Dict[str, Any]:
    asks: Dict[str, Any] = {}
    for key, value in (
        ("allow_read", allow_read),
        ("allow_write", allow_write),
        ("allow_net", allow_net),
        ("allow_env", allow_env),
    ):
        if value:
            asks[key] = [str(v) for v in value]
    for key, value in (
        ("timeout", timeout),
        ("memory", memory),
        ("max_output", max_output),
        ("max_write", max_write),
    ):
        if value is not None:
            asks[key] = str(value)
    return asks


def _flags(asks: Mapping[str, Any]) -> List[str]:
    """The same asks as the flags of a local ``capsa serve``, its ceiling.
    One flag per item, so no item is split at a comma."""
    flags = []
    for key in ("allow_read", "allow_write", "allow_net", "allow_env"):
        for item in asks.get(key, []):
            if "," in item:
                raise CapsaError(f"{key}: one path or rule per item, not {item!r}")
            flags.append(f"--{key.replace('_', '-')}={item}")
    for key in ("timeout", "memory", "max_output", "max_write"):
        if key in asks:
            flags.append(f"--{key.replace('_', '-')}={asks[key]}")
    return flags


class _Remote:
    """A ``capsa serve`` at ``url``."""

    def __init__(self, url: str, token: Optional[str]) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: Optional[Union[bytes, Mapping[str, Any]]] = None,
                timeout: float = 3600) -> bytes:
        headers = {}
        data = None
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            headers["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                text = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise CapsaError(text, e.code) from None
        except urllib.error.URLError as e:
            raise CapsaError(f"cannot reach {self.url}: {e.reason}") from None


class _Local(_Remote):
    """A ``capsa serve`` of this process's own, on a loopback port, with a
    token nobody else knows; its flags are the given asks."""

    def __init__(self, flags: Sequence[str]) -> None:
        token = os.urandom(24).hex()
        env = dict(os.environ, CAPSA_TOKEN=token)
        self.proc = subprocess.Popen(
            [binary(), "serve", "--listen=127.0.0.1:0", "--max-sessions=1", *flags],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        lines = []
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if "listening on http://" in line:
                super().__init__(line.split("listening on ")[1].split()[0], token)
                return
        self.proc.wait()
        raise CapsaError("capsa serve did not start: " + "".join(lines).strip())

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def _audit(path: Path) -> "tuple[List[str], Optional[str], bool]":
    """Denials and the limit from a run's audit log, worded as capsa serve
    words them, and whether it holds any record (a run that started has at
    least the reading of its script)."""
    denials: List[str] = []
    limit = None
    started = False
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return denials, limit, started
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        started = started or isinstance(d, dict)
        if not isinstance(d, dict) or d.get("decision") != "deny":
            continue
        if d.get("kind") == "limit":
            limit = limit or d.get("target")
            continue
        text = f"denied: {d.get('op')} {d.get('target')}"
        if d.get("reason"):
            text += f" ({d['reason']})"
        if d.get("hint"):
            text += f"; hint: {d['hint']}"
        if text not in denials and len(denials) < 100:
            denials.append(text)
    return denials, limit, started


def run(
    code: str,
    *,
    stdin: str = "",
    args: Sequence[str] = (),
    files: Optional[Mapping[str, str]] = None,
    allow_read: Sequence[str] = (),
    allow_write: Sequence[str] = (),
    allow_net: Sequence[str] = (),
    allow_env: Sequence[str] = (),
    timeout: Optional[str] = None,
    memory: Optional[str] = None,
    max_output: Optional[str] = None,
    max_write: Optional[str] = None,
    url: Optional[str] = None,
    token: Optional[str] = None,
) -> Result:
    """Runs Python ``code`` in a fresh sandbox and returns how it ended.

    ``files`` are put in a scratch directory, the program's working
    directory. Grants name host paths, network rules (``host:port``) and
    variable names, as ``capsa run``'s flags do; limits are texts such as
    ``"5s"`` and ``"256M"``. With ``url``, a ``capsa serve`` there runs it.
    """
    asks = _asks(
        allow_read, allow_write, allow_net, allow_env, timeout, memory, max_output, max_write
    )
    if url is not None:
        body = dict(asks, code=code, stdin=stdin, args=list(args), files=dict(files or {}))
        return Result._from(json.loads(_Remote(url, token).request("POST", "/v1/run", body)))
    with tempfile.TemporaryDirectory(prefix="capsa-run-") as tmp:
        base = Path(tmp)
        scratch = base / "scratch"
        scratch.mkdir()
        for name, content in (files or {}).items():
            target = (scratch / name).resolve()
            if scratch.resolve() not in target.parents:
                raise CapsaError(f"files: {name!r} is not a name below the working directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        script = base / "main.py"
        script.write_text(code)
        audit = base / "audit.jsonl"
        flags = _flags(dict(asks, allow_write=[*asks.get("allow_write", []), str(scratch)]))
        cmd = [binary(), "run", "--quiet", f"--audit={audit}", *flags, "--", str(script), *args]
        p = subprocess.run(cmd, cwd=scratch, input=stdin.encode(), capture_output=True)
        denials, limit, started = _audit(audit)
        # 125 is capsa refusing the grants before anything ran, or the
        # program's own `sys.exit(125)`: only a run that started has records.
        if p.returncode == 125 and not started:
            raise CapsaError(p.stderr.decode(errors="replace").strip())
        return Result(
            exit_code=p.returncode,
            stdout=p.stdout.decode(errors="replace"),
            stderr=p.stderr.decode(errors="replace"),
            denials=denials,
            limit=limit,
        )


class Session:
    """A persistent Python interpreter in the sandbox, with its own scratch
    directory: the globals of one :meth:`exec` are there for the next.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        allow_read: Sequence[str] = (),
        allow_write: Sequence[str] = (),
        allow_net: Sequence[str] = (),
        allow_env: Sequence[str] = (),
        timeout: Optional[str] = None,
        memory: Optional[str] = None,
        max_output: Optional[str] = None,
        max_write: Optional[str] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        asks = _asks(
            allow_read, allow_write, allow_net, allow_env, timeout, memory, max_output, max_write
        )
        self._local: Optional[_Local] = None
        if url is None:
            self._local = _Local(_flags(asks))
            self._server: _Remote = self._local
            asks = {}
        else:
            self._server = _Remote(url, token)
        try:
            self.id: str = json.loads(self._server.request("POST", "/v1/sessions", asks))["id"]
        except BaseException:
            self.close()
            raise

    def exec(self, code: str, *, stdin: str = "", timeout: Optional[str] = None) -> Result:
        """Runs ``code`` in the session; a last expression's value is printed,
        as in the REPL."""
        body: Dict[str, Any] = {"code": code, "stdin": stdin}
        if timeout is not None:
            body["timeout"] = timeout
        return Result._from(json.loads(self._server.request("POST", self._path("/exec"), body)))

    def write_file(self, path: str, data: Union[str, bytes]) -> None:
        """Writes a file in the session's scratch directory."""
        if isinstance(data, str):
            data = data.encode()
        self._server.request("PUT", self._path("/files/" + urllib.parse.quote(path)), data)

    def read_file(self, path: str) -> bytes:
        """A file from the session's scratch directory."""
        return self._server.request("GET", self._path("/files/" + urllib.parse.quote(path)))

    def list_files(self, path: str = "") -> List[Dict[str, Any]]:
        """Entries of the scratch directory (or a directory in it): name,
        type ("file" or "directory") and size."""
        suffix = "/files/" + urllib.parse.quote(path) if path else "/files"
        return list(json.loads(self._server.request("GET", self._path(suffix)))["entries"])

    def close(self) -> None:
        """Ends the session and removes its files."""
        try:
            if getattr(self, "id", None) and self._local is None:
                try:
                    self._server.request("DELETE", self._path(""))
                except CapsaError:
                    pass
        finally:
            if self._local is not None:
                self._local.close()
                self._local = None

    def _path(self, suffix: str) -> str:
        return f"/v1/sessions/{urllib.parse.quote(self.id)}{suffix}"

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""capsa's entry point for CPython in WASI.

This module is imported while the memory snapshot is taken (on the user's
machine, once), so everything imported here is already loaded when a run
starts. `Run.run` is called once per run: it takes the invocation capsa
parsed from the python3-style command line (argv[1], JSON), restores the
per-run state the snapshot froze (environment, working directory, random
seed), runs the script, and turns every way out of it into an exit code.
Nothing may escape `run`: an exception there would trap the component.
"""

import sys

# Files never written next to the read-only standard library.
sys.dont_write_bytecode = True

import os
import builtins
import importlib.machinery
import importlib.util
import io
import json
import runpy
import traceback
import types

from wit_world import exports
from wit_world.imports import environment
from wit_world.imports import process

# HTTP and HTTPS through the host (wasi:http); before urllib.request is
# imported, which looks for http.client.HTTPSConnection.
import _capsa_http  # noqa: F401

# The commonly used standard library, loaded into the snapshot. Everything
# else is imported lazily from the read-only library mounted at /python.
import abc, argparse, array, ast, asyncio, base64, binascii, bisect  # noqa: E401,F401
import calendar, codecs, code, collections, collections.abc, contextlib  # noqa: E401,F401
import copy, csv, dataclasses, datetime, decimal, difflib, dis, enum  # noqa: E401,F401
import email, email.message, email.parser, email.policy, email.utils  # noqa: E401,F401
import fnmatch, fractions, functools, gettext, glob, gzip, hashlib, heapq  # noqa: E401,F401
import hmac, html, html.parser, http, http.client, inspect, ipaddress  # noqa: E401,F401
import itertools, keyword, linecache, locale, logging, math, numbers  # noqa: E401,F401
import operator, pathlib, pickle, platform, pprint, queue, random, re  # noqa: E401,F401
import secrets, selectors, shlex, shutil, socket, sqlite3, statistics  # noqa: E401,F401
import string, struct, sysconfig, tempfile, textwrap, threading, time, tokenize  # noqa: E401,F401
import tomllib, typing, unicodedata, urllib, urllib.error, urllib.parse  # noqa: E401,F401
import urllib.request, uuid, warnings, weakref, zipfile, zlib  # noqa: E401,F401

_SNAPSHOT_PATH = list(sys.path)


# asyncio's event loop wakes itself from other threads and signal handlers
# through a socket pair; WASI has neither, and the pair would be loopback
# sockets. The loop needs none.
def _no_self_pipe(self):
    self._ssock = self._csock = None


import asyncio.selector_events  # noqa: E402

asyncio.selector_events.BaseSelectorEventLoop._make_self_pipe = _no_self_pipe
asyncio.selector_events.BaseSelectorEventLoop._close_self_pipe = lambda self: None


def _socketpair(family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0):
    """socket.socketpair() as CPython emulates it where the platform has
    none, but with a blocking connect: wasi-libc leaves a socket whose
    non-blocking connect was never finished unusable. capsa lets the listener
    take only this program's own connection."""
    if family == socket.AF_INET:
        host = "127.0.0.1"
    elif family == socket.AF_INET6:
        host = "::1"
    else:
        raise ValueError("Only AF_INET and AF_INET6 socket address families are supported")
    if type != socket.SOCK_STREAM:
        raise ValueError("Only SOCK_STREAM socket type is supported")
    if proto != 0:
        raise ValueError("Only protocol zero is supported")
    lsock = socket.socket(family, type, proto)
    try:
        lsock.bind((host, 0))
        lsock.listen()
        addr, port = lsock.getsockname()[:2]
        csock = socket.socket(family, type, proto)
        try:
            csock.connect((addr, port))
            ssock, _ = lsock.accept()
        except BaseException:
            csock.close()
            raise
    finally:
        lsock.close()
    if ssock.getsockname() != csock.getpeername() or csock.getsockname() != ssock.getpeername():
        ssock.close()
        csock.close()
        raise ConnectionError("Unexpected peer connection")
    return ssock, csock


socket.socketpair = _socketpair


import importlib._bootstrap_external as _bootstrap_external  # noqa: E402


def _write_atomic(path, data, mode=0o666):
    """importlib's own, but a short write goes on where it stopped: WASI
    writes a file at most 64 KiB per call, and the original took any short
    write for a failure, so bytecode over 64 KiB (py_compile, compileall,
    capsa's --python-path step) was never written."""
    path_tmp = f"{path}.{id(path)}"
    fd = os.open(path_tmp, os.O_EXCL | os.O_CREAT | os.O_WRONLY, mode & 0o666)
    try:
        with io.FileIO(fd, "wb") as file:
            view = memoryview(data)
            while view:
                n = file.write(view)
                if not n:
                    raise OSError("os.write() didn't write the full pyc file")
                view = view[n:]
        os.replace(path_tmp, path)
    except OSError:
        try:
            os.unlink(path_tmp)
        except OSError:
            pass
        raise


_bootstrap_external._write_atomic = _write_atomic


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or broken stream
            pass


def _hard_exit(code):
    """os._exit: end the run now with this code, as natively."""
    _flush()
    process.exit_with_code(int(code) & 0xFF)


def _user_traceback(exc):
    """The traceback without the frames of this entry point and runpy."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _INTERNAL:
        tb = tb.tb_next
    return tb


def _report(exc):
    exc.__traceback__ = _user_traceback(exc)
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException:  # noqa: BLE001 - a broken excepthook
        traceback.print_exception(type(exc), exc, _user_traceback(exc))


def _exit_code(exc):
    """What python3 exits with for this SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, bool) or not isinstance(code, int):
        try:
            print(code, file=sys.stderr)
        except BaseException:  # noqa: BLE001
            pass
        return 1
    return code & 0xFF


def _restore_run_state(inv):
    # The snapshot holds the environment, random state and working directory
    # of the machine that took it: replace them with this run's.
    os.environ.clear()
    os.environ.update(dict(environment.get_environment()))
    random.seed()
    cwd = inv.get("cwd")
    if cwd:
        try:
            os.chdir(cwd)
        except OSError:
            # The working directory is not granted; relative paths still
            # reach the directories granted below it (capsa mounts them).
            pass
    # Bytecode capsa compiled for the program's packages, read-only; None
    # keeps CPython's own place (which it may read, but not write).
    sys.pycache_prefix = inv.get("pycache_prefix")
    os._exit = _hard_exit
    if inv.get("unbuffered"):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(write_through=True)
            except (AttributeError, io.UnsupportedOperation):
                pass
    for spec in inv.get("warnings", []):
        sys.warnoptions.append(spec)
        warnings._processoptions([spec])  # noqa: SLF001 - what -W does natively


def _fresh_main():
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return main


def _run_script(path):
    """Runs the script at `path` as `python3 path` does: read once, compiled
    and run in a fresh `__main__` module. (runpy.run_path opened it twice,
    once to ask whether it is a zip archive: 0.7 ms a run against 0.3 ms.)
    A zip archive or bytecode file, which python3 also runs, still goes
    through runpy. Returns the module's globals."""
    with io.open_code(path) as f:
        source = f.read()
    if source[:4] == importlib.util.MAGIC_NUMBER or b"PK\x05\x06" in source[-65557:]:
        return runpy.run_path(path, run_name="__main__")
    main = _fresh_main()
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    code = compile(source, path, "exec", dont_inherit=True)
    exec(code, main.__dict__)
    return main.__dict__


def _interact(main, quiet):
    banner = (
        ""
        if quiet
        else f"Python {sys.version} on {sys.platform}\n"
        'Type "help", "copyright", "credits" or "license" for more information.'
    )
    code.interact(banner=banner, local=main.__dict__, exitmsg="")


def _run_module(name):
    """What `-m` does. runpy names the interpreter in its own refusal
    (`/usr/bin/python3: No module named x`) by `sys.executable`, which is
    empty under WASI: that refusal names capsa's command instead."""
    try:
        runpy._run_module_as_main(name, alter_argv=True)  # noqa: SLF001 - what -m does
    except SystemExit as e:
        tb = e.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        prefix = f"{sys.executable}: "
        if (
            tb.tb_frame.f_code is runpy._run_module_as_main.__code__  # noqa: SLF001
            and isinstance(e.code, str)
            and e.code.startswith(prefix)
        ):
            raise SystemExit(f"capsa python: {e.code[len(prefix):]}") from None
        raise


def _main(inv):
    mode = inv["mode"]
    sys.argv[:] = inv["argv"]
    path0 = inv.get("path0")
    # Only the standard library is kept from the snapshot's path: its other
    # entries (/0, /world, /bundled) would make a granted data folder of that
    # name an import directory.
    sys.path[:] = ([path0] if path0 is not None else []) + inv.get("path", []) + [
        p for p in _SNAPSHOT_PATH if p == "/python"
    ]
    namespace = None
    if mode == "version":
        print(f"Python {platform.python_version()}")
    elif mode == "script":
        namespace = _run_script(inv["file"])
    elif mode == "module":
        _run_module(inv["target"])
    elif mode == "code":
        main = _fresh_main()
        exec(compile(inv["target"], "<string>", "exec"), main.__dict__)
    elif mode == "stdin":
        main = _fresh_main()
        source = sys.stdin.read()
        exec(compile(source, "<stdin>", "exec"), main.__dict__)
    elif mode == "repl":
        _interact(_fresh_main(), inv.get("quiet", False))
        return
    else:
        raise RuntimeError(f"capsa: unknown mode {mode!r}")
    if inv.get("inspect"):
        main = sys.modules.get("__main__") or _fresh_main()
        if namespace is not None:
            main.__dict__.update(namespace)
        _interact(main, True)


_UNAVAILABLE = {
    "_ssl": "CPython for WASI is built without OpenSSL",
    "_hashlib": "CPython for WASI is built without OpenSSL (hashlib still works)",
    "_ctypes": "WebAssembly cannot load or call native code",
    "_bz2": "CPython for WASI is built without libbz2",
    "_lzma": "CPython for WASI is built without liblzma",
    "mmap": "WASI has no memory mapping",
    "pwd": "WASI has no user database",
    "grp": "WASI has no user database",
}


class _UnavailableFinder:
    """First on sys.meta_path: says why a module that WASI lacks is missing,
    at once. (These are built into a native CPython, so no directory on
    sys.path can hold them; searching each for them on every attempt cost
    ~1 ms per `os.path.expanduser`, which tries `import pwd` without $HOME.)"""

    @staticmethod
    def find_spec(name, path=None, target=None):
        why = _UNAVAILABLE.get(name)
        if why:
            raise ModuleNotFoundError(
                f"No module named {name!r}: {why}; capsa runs CPython in WASI", name=name
            )
        return None


sys.meta_path.insert(0, _UnavailableFinder)


def _warm_up():
    """Runs once, while the snapshot is taken: the paths a run takes
    (runpy, compile, a traceback) import what they import lazily now."""
    import pkgutil  # noqa: F401 - runpy.run_path imports it on first use

    warm = os.path.join(os.path.dirname(__file__), "_capsa_warmup.py")
    if os.path.exists(warm):
        main = sys.modules.get("__main__")
        _run_script(warm)
        if main is not None:
            sys.modules["__main__"] = main
    compile("x = 1", "<string>", "exec")
    try:
        raise ValueError("warm-up")
    except ValueError as exc:
        traceback.format_exception(exc)


_warm_up()

# Frames of this module and runpy are not the user's: tracebacks skip them.
_INTERNAL = {_main.__code__.co_filename, runpy.run_path.__code__.co_filename}

# capsa's own modules (this entry point, its HTTP client, the WIT bindings)
# were loaded from folders of the snapshot's build (`/0`, `/world`), which
# are not there when a program runs: a traceback through them (urllib
# refused a host) must not look for their source, each look a denial line
# for a path the user never chose. Every module loaded so far that is not
# the standard library's is one of them; an entry without a time is one
# linecache never checks on disk.
_STDLIB = os.path.dirname(os.__file__) + "/"
for _module in list(sys.modules.values()):
    _file = getattr(_module, "__file__", None)
    if isinstance(_file, str) and not _file.startswith(_STDLIB):
        linecache.cache[_file] = (0, None, [], _file)


class Run(exports.Run):
    def run(self) -> None:
        code = 0
        try:
            args = environment.get_arguments()
            inv = json.loads(args[1])
            _restore_run_state(inv)
            _main(inv)
        except SystemExit as exc:
            code = _exit_code(exc)
        except KeyboardInterrupt as exc:
            _report(exc)
            code = 130
        except BaseException as exc:  # noqa: BLE001 - nothing may escape
            _report(exc)
            code = 1
        try:
            threading._shutdown()  # noqa: SLF001 - as the interpreter does at exit
        except BaseException:  # noqa: BLE001
            pass
        try:
            import atexit

            atexit._run_exitfuncs()  # noqa: SLF001 - as the interpreter does at exit
        except BaseException:  # noqa: BLE001
            pass
        _flush()
        if code:
            process.exit_with_code(code)

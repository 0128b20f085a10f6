"""pip, run by `capsa pip` inside capsa's sandbox, on CPython 3.14 for WASI.

pip's own files are used unchanged; this module fills in what WASI lacks
before pip is imported, and runs build backends in this process, since WASI
cannot start one:

- `os.getuid`, `os.geteuid` and `os.umask`: WASI has no users and no umask.
  pip asks for them (platformdirs, the install's file modes).
- `mmap`: pip's cache wrapper and rich import it. Only reading a whole file
  is needed, and the stand-in does that.
- TLS: capsa's host does it for every request (`_capsa_http`), so pip is
  told HTTPS works, and its vendored urllib3 goes through the host.
- Build backends (PEP 517): pip runs each hook as `python _in_process.py
  HOOK DIR`; here that script runs in this interpreter, in the build
  environment pip made, with the modules it imported dropped afterwards.
  Anything else pip would start (git, a compiler) fails with one line, and
  a build that wanted a compiler says so, naming the package.
- Threads: rich's live displays refresh as pip reports, not from a thread.
- Configuration: capsa read the host's and passes the index in `PIP_*`;
  no file is read here. Options are taken by whole names only.
- A package with only native wheels is named as such when pip finds none.
"""

import contextlib
import errno
import io
import logging
import os
import runpy
import subprocess
import sys
import sysconfig
import traceback
import types

_NO_USER = 65534  # "nobody": WASI has no users, and pip must not think it is root.


def _fill_os():
    subprocess.Popen = _NoProcess
    os.getuid = os.geteuid = os.getgid = os.getegid = lambda: _NO_USER
    os.umask = lambda mask: 0o022


class _ReadOnlyMap:
    """mmap.mmap(fd, length, access=ACCESS_READ), as a copy of the file's
    bytes (WASI has no memory mapping)."""

    def __init__(self, fileno, length, *args, access=1, offset=0, **kwargs):
        if access != 1:
            raise OSError(errno.ENOTSUP, "WASI has no memory mapping; capsa reads files only")
        pos = os.lseek(fileno, 0, os.SEEK_CUR)
        try:
            os.lseek(fileno, offset, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fileno, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.lseek(fileno, pos, os.SEEK_SET)
        data = b"".join(chunks)
        self._data = data[:length] if length else data

    def __buffer__(self, flags):
        return memoryview(self._data)

    def __len__(self):
        return len(self._data)

    def __getitem__(self, key):
        return self._data[key]

    def close(self):
        self._data = b""


def _fill_mmap():
    mod = types.ModuleType("mmap", "capsa's stand-in: reads a file's bytes; WASI has no memory mapping")
    mod.ACCESS_DEFAULT, mod.ACCESS_READ, mod.ACCESS_WRITE, mod.ACCESS_COPY = 0, 1, 2, 3
    mod.mmap = _ReadOnlyMap
    sys.modules["mmap"] = mod


def _route_pip_urllib3():
    import _capsa_http

    _capsa_http._PATCHES["pip._vendor.urllib3.connection"] = _capsa_http._patch_urllib3
    _capsa_http._PATCHES["pip._vendor.urllib3.util.connection"] = _capsa_http._quiet_ipv6_probe


# --- build backends, in this process

_HOOK_SCRIPT = "_in_process.py"
_STDLIB = [p for p in sys.path if p == "/python" or p.startswith("/python/")]


# Programs a build tried to start, in order (argv[0] of each).
started = []
_COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "clang++", "ccache", "icc", "cl", "rustc", "cargo", "gfortran")


class _NoProcess:
    """subprocess.Popen: WASI cannot start a program. The attempt is noted,
    so a failed build can say it wanted a compiler."""

    def __init__(self, args, *a, **kw):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        name = os.fsdecode(argv[0]) if argv else "?"
        if kw.get("shell") and isinstance(args, str):
            name = args.split()[0] if args.split() else "?"
        started.append(name)
        raise OSError(errno.ENOSYS, f"WASI cannot start programs ({name}); capsa runs pip in WASI")


def _wanted_compiler():
    for name in started:
        base = os.path.basename(name)
        if base in _COMPILERS or base.endswith(("-gcc", "-clang", "-cc")) or "wasi-sdk" in name:
            return base
    return None


def _package_name(cwd):
    try:
        with open(os.path.join(cwd or ".", "PKG-INFO"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("name:"):
                    return line.split(":", 1)[1].strip()
                if not line.strip():
                    break
    except OSError:
        pass
    return os.path.basename(os.path.normpath(cwd or ".")).rsplit("_", 1)[0]


def _local_config_paths():
    """sysconfig names the directories of the machine CPython was built on
    (/home/..., for headers and libraries); here they are below /python, where
    a backend that looks finds nothing, as on a Python without headers."""
    cfg = sysconfig.get_config_vars()
    libdir = cfg.get("LIBDIR")
    if not isinstance(libdir, str) or libdir.startswith(sys.prefix + "/"):
        return
    built = os.path.dirname(libdir)
    for key, value in list(cfg.items()):
        if isinstance(value, str) and built in value:
            cfg[key] = value.replace(built, sys.prefix)


def _run_hook(cmd, cwd, env):
    """`python _in_process.py HOOK DIR` from pyproject_hooks, here. Returns
    (exit code, what it printed)."""
    script = cmd[1]
    saved = (
        dict(os.environ),
        os.getcwd(),
        sys.argv,
        list(sys.path),
        dict(sys.modules),
        list(sys.meta_path),
        list(sys.path_hooks),
        dict(sys.path_importer_cache),
        sys.dont_write_bytecode,
    )
    out = io.StringIO()
    code = 0
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    started.clear()
    try:
        # What the backend logs goes where a child's stderr would: into
        # `out`, shown only if the hook fails.
        root.handlers[:] = [logging.StreamHandler(out)]
        root.setLevel(logging.INFO)
        os.environ.clear()
        os.environ.update(env)
        if cwd:
            os.chdir(cwd)
        sys.argv = [script, *cmd[2:]]
        # As a new interpreter would start: the script's directory, then
        # PYTHONPATH (pip's build environment puts its sitecustomize there,
        # which adds the build requirements), then the standard library.
        pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.path.dirname(script), *pythonpath, *_STDLIB]
        sys.path_importer_cache.clear()
        sys.dont_write_bytecode = True
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                for d in pythonpath:
                    custom = os.path.join(d, "sitecustomize.py")
                    if os.path.isfile(custom):
                        runpy.run_path(custom, run_name="sitecustomize")
                        break
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                if exc.code is None or exc.code == 0:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: BLE001 - as the child's traceback
                traceback.print_exc()
                code = 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        env_, cwd_, sys.argv, path, modules, meta, hooks, cache, sys.dont_write_bytecode = saved
        os.environ.clear()
        os.environ.update(env_)
        os.chdir(cwd_)
        sys.path[:] = path
        sys.meta_path[:] = meta
        sys.path_hooks[:] = hooks
        sys.path_importer_cache.clear()
        sys.path_importer_cache.update(cache)
        for name in [n for n in sys.modules if n not in modules]:
            del sys.modules[name]
        sys.modules.update(modules)
    return code, out.getvalue()


def _install_runner():
    import pip._internal.utils.subprocess as sp
    from pip._internal.exceptions import InstallationError, InstallationSubprocessError

    def call_subprocess(cmd, show_stdout=False, cwd=None, on_returncode="raise",
                        extra_ok_returncodes=None, extra_environ=None, unset_environ=None,
                        spinner=None, log_failed_cmd=True, stdout_only=False, *, command_desc):
        args = sp.reveal_command_args(cmd)
        if len(args) < 2 or os.path.basename(args[1]) != _HOOK_SCRIPT:
            raise InstallationError(
                f"{command_desc}: pip would start {args[0] if args else 'a program'!r}, "
                "and WASI cannot start programs (capsa runs pip in WASI)"
            )
        env = dict(os.environ)
        env.update(extra_environ or {})
        for name in unset_environ or ():
            env.pop(name, None)
        code, output = _run_hook(args, cwd, env)
        compiler = _wanted_compiler() if code else None
        if show_stdout or code not in (0, *(extra_ok_returncodes or ())):
            if code and on_returncode == "raise":
                sys.stderr.write(output)
            elif show_stdout:
                sys.stdout.write(output)
        if spinner is not None:
            spinner.finish("error" if code else "done")
        if compiler:
            sys.stderr.write(
                f"capsa: {_shown(_package_name(cwd))} needs a C compiler to build ({_shown(compiler)}); "
                "capsa runs pip in WASI, which has none, and a C extension could not "
                "run there either: only pure-Python packages install\n"
            )
        if code and code not in (extra_ok_returncodes or ()) and on_returncode == "raise":
            raise InstallationSubprocessError(
                command_description=command_desc, exit_code=code, output_lines=None
            )
        return output

    sp.call_subprocess = call_subprocess


def _quiet_index_paths():
    """pip asks whether each index URL is a local path; the name is a URL, so
    the answer is no, without a lookup that capsa would report as denied."""
    import pip._internal.index.sources as sources

    real = sources.os

    class _Path:
        def __getattr__(self, name):
            return getattr(real.path, name)

        @staticmethod
        def exists(p):
            if isinstance(p, str) and "://" in p:
                return False
            return real.path.exists(p)

    class _Os:
        path = _Path()

        def __getattr__(self, name):
            return getattr(real, name)

    sources.os = _Os()


def _tls_by_host():
    # The host makes and verifies every TLS connection.
    import pip._internal.cli.index_command as index_command
    import pip._internal.models.search_scope as search_scope

    search_scope.has_tls = lambda: True
    index_command._create_truststore_ssl_context = lambda: None


def _no_threads():
    """rich's live displays (pip's spinners and progress bars) refresh from a
    thread, and WASI cannot start one: they refresh as pip reports instead."""
    from pip._vendor.rich import live

    init = live.Live.__init__

    def __init__(self, *args, **kwargs):
        kwargs["auto_refresh"] = False
        init(self, *args, **kwargs)

    live.Live.__init__ = __init__


def _script_shebang():
    """Console scripts (`--target DIR/bin`) start with `#!python3`: WASI has no
    interpreter path to name, and `capsa run` runs such a file as Python."""
    from pip._vendor.distlib import scripts

    scripts.ScriptMaker.executable = "python3"
    scripts.ScriptMaker._is_shell = lambda self, executable: False


def _no_config_files():
    """capsa read the host's pip configuration and passed what it allows
    (the index) in PIP_* variables; no file is read in the sandbox."""
    from pip._internal.configuration import Configuration, Kind

    # pip's own way to load no file: os.devnull as PIP_CONFIG_FILE.
    Configuration.iter_config_files = lambda self: iter([(Kind.ENV, [os.devnull])])


# Per project: how many of its files suited this Python, and the names of
# those that were built for another platform.
_suited = {}
_foreign = {}


def _note_platforms():
    from pip._internal.index.package_finder import LinkEvaluator, LinkType

    evaluate = LinkEvaluator.evaluate_link

    def evaluate_link(self, link):
        result = evaluate(self, link)
        name = str(self.project_name)
        if result[0] == LinkType.candidate:
            _suited[name] = _suited.get(name, 0) + 1
        elif result[0] == LinkType.platform_mismatch:
            _foreign.setdefault(name, []).append(link.filename)
        return result

    LinkEvaluator.evaluate_link = evaluate_link


def _shown(text):
    """Text from an index or a package, safe on a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _exact_options():
    """pip takes any unique prefix of a long option (`--cache-di`); capsa read
    the command line by full names, so pip must too."""
    import optparse

    def _match_long_opt(self, opt):
        if opt in self._long_opt:
            return opt
        raise optparse.BadOptionError(opt)

    optparse.OptionParser._match_long_opt = _match_long_opt


def _say_why_not_found():
    for name, files in sorted(_foreign.items()):
        if _suited.get(name):
            continue
        sys.stderr.write(
            f"capsa: {_shown(name)} has only wheels built for other platforms ({_shown(files[0])}"
            f"{' and others' if len(files) > 1 else ''}) and no source or pure-Python wheel: "
            "it is a C extension, which cannot run in CPython for WASI, where capsa runs "
            "Python; only pure-Python packages install\n"
        )


def main(argv):
    _exact_options()
    _fill_os()
    _fill_mmap()
    _local_config_paths()
    _route_pip_urllib3()
    _install_runner()
    _quiet_index_paths()
    _tls_by_host()
    _no_threads()
    _no_config_files()
    _script_shebang()
    _note_platforms()
    from pip._internal.cli.main import main as pip_main

    code = pip_main(argv)
    if code:
        _say_why_not_found()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

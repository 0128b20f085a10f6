"""wasi-testsuite runtime adapter for capsa (see scripts/wasi-testsuite/run).

Maps each test's directories with capsa's own flags, as the suite's
wasmtime adapter does with `--dir HOST::GUEST`: `--allow-write=HOST::GUEST`.
The binary is $CAPSA (default: `capsa` on PATH).
"""

import os
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

CAPSA = shlex.split(os.getenv("CAPSA", "capsa"))


def get_name() -> str:
    return "capsa"


def get_version() -> str:
    out = subprocess.run(CAPSA[:1] + ["--version"], encoding="UTF-8", capture_output=True, check=True)
    return out.stdout.split()[1]


def get_wasi_versions() -> List[str]:
    return ["wasm32-wasip1"]


def get_wasi_worlds() -> List[str]:
    return ["wasi:cli/command"]


def compute_argv(test_path: str,
                 args_env_dirs: Tuple[List[str], Dict[str, str], List[Tuple[Path, str]]],
                 proposals: List[str],
                 wasi_world: str,
                 wasi_version: str) -> List[str]:
    args, env, dirs = args_env_dirs
    argv = CAPSA + ["run"]
    for k, v in env.items():
        argv += ["--env", f"{k}={v}"]
    for host, guest in dirs:
        argv += [f"--allow-write={host}::{guest}"]
    return argv + [test_path] + args

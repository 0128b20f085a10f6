# capsa serve: the loop of a session's interpreter. Each request is one JSON
# line on the real stdin, {"code": ..., "stdin": ..., "nonce": ...}; the cell
# runs in one namespace kept from call to call, and its end is marked on
# stdout and stderr with the call's nonce, which the server reads up to.
# (A cell can read the nonce and mark an end early; the server then sees the
# interpreter using the CPU between calls, and ends the session.)
import ast
import io
import json
import os
import sys
import traceback

_requests = sys.stdin.buffer
sys.argv = [""]
_ns = {"__name__": "__main__", "__builtins__": __builtins__}


def _run(source):
    """Runs one cell; the value of a last bare expression is shown, as in
    the REPL. Returns the cell's exit status."""
    try:
        tree = ast.parse(source, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Interactive([tree.body.pop()])
        exec(compile(tree, "<cell>", "exec"), _ns)
        if last is not None:
            exec(compile(last, "<cell>", "single"), _ns)
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code & 0xFF
        print(e.code, file=sys.stderr)
        return 1
    except BaseException as e:
        # The loop's own frame is not the user's.
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        return 1


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


while True:
    line = _requests.readline()
    if not line:
        break
    request = json.loads(line)
    nonce = request["nonce"].encode()
    sys.stdin = io.StringIO(request.get("stdin", ""))
    status = _run(request["code"])
    _flush()
    sys.stdout = sys.__stdout__
    sys.stderr = sys.__stderr__
    os.write(1, b"\0capsa-end:" + nonce + b":" + str(status).encode() + b"\n")
    os.write(2, b"\0capsa-end:" + nonce + b"\n")

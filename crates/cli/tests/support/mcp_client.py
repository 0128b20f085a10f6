"""Drives `capsa mcp` (stdio) or `capsa serve`'s /mcp (streamable HTTP) with
the official MCP Python SDK, as an agent would, and prints what it saw as
one JSON object for the Rust test to check.

    python3 mcp_client.py stdio CAPSA [FLAGS...]
    python3 mcp_client.py http URL TOKEN
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


def seen(r):
    return {
        "text": "".join(c.text for c in r.content if c.type == "text"),
        "is_error": bool(r.isError),
        "structured": r.structuredContent,
    }


async def scenario(session, secret):
    out = {}
    init = await session.initialize()
    out["server"] = init.serverInfo.name
    out["instructions"] = init.instructions or ""
    tools = await session.list_tools()
    out["tools"] = {t.name: t.inputSchema.get("required", []) for t in tools.tools}
    call = session.call_tool
    out["cell"] = seen(await call("run_python", {"code": "x = 6\nx * 7", "session": "a"}))
    out["kept"] = seen(await call("run_python", {"code": "print(x + 1)", "session": "a"}))
    out["fresh"] = seen(await call("run_python", {"code": "print('x' in globals())"}))
    out["write"] = seen(await call("write_file", {"session": "a", "path": "in/data.txt", "content": "héllo"}))
    out["used"] = seen(await call("run_python", {
        "code": "open('out.txt', 'w').write(open('in/data.txt').read().upper())", "session": "a"}))
    out["read"] = seen(await call("read_file", {"session": "a", "path": "out.txt"}))
    out["list"] = seen(await call("list_files", {"session": "a"}))
    out["escape"] = seen(await call("read_file", {"session": "a", "path": "../../../etc/passwd"}))
    # A model cannot widen what the operator fixed, whatever it sends.
    out["widen"] = seen(await call("run_python", {
        "code": f"print(open({secret!r}).read())", "allow_read": ["/"], "session": "b"}))
    out["error"] = seen(await call("run_python", {"code": "1/0", "session": "a"}))
    out["limit"] = seen(await call("run_python", {"code": "while True: pass", "session": "a"}))
    out["after"] = seen(await call("run_python", {"code": "print('x' in globals())", "session": "a"}))
    out["no_session"] = seen(await call("read_file", {"session": "never", "path": "x"}))
    # Names the program chose, with a terminal's escapes and a newline.
    await call("run_python", {"code": "open('\\x1b]0;T\\x07\\x1b[2Jx', 'w'); open('n\\nfake (0 bytes)', 'w')",
                              "session": "c"})
    out["odd_names"] = seen(await call("list_files", {"session": "c"}))
    out["odd_write"] = seen(await call("write_file", {"session": "c", "path": "w\u202ex\u00ad.txt", "content": "1"}))
    return out


async def main():
    mode = sys.argv[1]
    secret = sys.argv[-1]
    if mode == "stdio":
        # The SDK gives the server only a few of its own variables (HOME,
        # PATH...) unless told: without CAPSA_CACHE_DIR, capsa would prepare
        # and compile Python in the user's cache, not the tests' own.
        params = StdioServerParameters(
            command=sys.argv[2], args=["mcp", *sys.argv[3:-1]], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                out = await scenario(session, secret)
    else:
        url, token = sys.argv[2], sys.argv[3]
        headers = {"Authorization": f"Bearer {token}"}
        async with streamablehttp_client(url, headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                out = await scenario(session, secret)
    print(json.dumps(out))


asyncio.run(main())

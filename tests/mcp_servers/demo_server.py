"""A small MCP server written with the `mcp` SDK's own server API (MCPServer, formerly FastMCP).

Run as a subprocess it serves stdio (`python tests/mcp_servers/demo_server.py`); tests/test_mcp.py
also serves the same `server` object over streamable HTTP under uvicorn.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("asynclm-demo")

# calls in flight per group (this process's), and the groups whose rendezvous happened
_in_flight: Counter[str] = Counter()
_met: set[str] = set()


@server.tool()
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def weather(city: str) -> str:
    """The weather in a city."""
    await anyio.lowlevel.checkpoint()
    return f"sunny in {city}"


@server.tool()
async def rendezvous(group: str, n: int, timeout: float = 30.0) -> str:
    """Wait until `n` calls of `group` are in flight at once (fails after `timeout` seconds)."""
    _in_flight[group] += 1
    try:
        with anyio.fail_after(timeout):
            while group not in _met:
                if _in_flight[group] >= n:
                    _met.add(group)
                    break
                await anyio.sleep(0.005)
        return f"{n} calls met"
    finally:
        _in_flight[group] -= 1


@server.tool()
async def hang(group: str) -> str:
    """Never returns (until cancelled)."""
    _in_flight[group] += 1
    try:
        await anyio.sleep_forever()
    finally:
        _in_flight[group] -= 1
    return "unreachable"


@server.tool()
def in_flight(group: str) -> int:
    """How many calls of `group` are in flight."""
    return _in_flight[group]


@server.tool()
def fail(message: str) -> str:
    """Always fails with `message`."""
    raise ToolError(message)


@server.tool()
def crash() -> str:
    """Fails with an unexpected exception (the server hides its text)."""
    raise ValueError("internal detail")


@server.tool()
def info() -> dict[str, Any]:
    """Facts about the server process."""
    return {"pid": os.getpid(), "cwd": os.getcwd(), "var": os.environ.get("ASYNCLM_MCP_DEMO_VAR")}


@server.tool()
def pieces() -> list[str]:
    """Returns a list (text parts and structured content)."""
    return ["one", "two"]


if __name__ == "__main__":
    server.run()

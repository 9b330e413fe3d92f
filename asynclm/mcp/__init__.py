"""MCP (Model Context Protocol) tools for asynclm programs, on the official ``mcp`` SDK.

``async with asynclm.mcp.connect(command=[...]) as tools:`` (a server run as a subprocess, over
stdio) or ``connect(url=..., headers=...)`` (streamable HTTP) gives the server's tools as a list
of ``asynclm.Tool``, usable by ``ReAct`` (or called directly); ``connect.sync(...)`` is the same
for plain ``with`` in sync code. Needs ``pip install 'asynclm[mcp]'``; importing this package does
not import the SDK (``connect`` does). See docs/modules-react.md.
"""

from asynclm.modules import MCPToolError

from ._connect import MCPConnectionClosedError, MCPConnectionError, connect

__all__ = ["MCPConnectionClosedError", "MCPConnectionError", "MCPToolError", "connect"]

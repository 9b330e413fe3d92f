"""MCP tools as ``Tool`` objects: the part of MCP support that needs no MCP SDK.

``tool_from_mcp`` wraps one tool of an open MCP session (any object with an async
``call_tool(name, arguments)``) and turns its ``CallToolResult`` into a plain value. It reads the
result by attribute only (the SDK's 2.x snake_case names, or 1.x camelCase), so this module
imports nothing from the ``mcp`` package; ``asynclm.mcp`` opens the sessions.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._tool import Tool

__all__ = ["MCPToolError", "mcp_result_value", "tool_from_mcp", "wraps_result"]


class MCPToolError(RuntimeError):
    """An MCP server answered a tool call with an error result (``isError``); the message is
    the server's text. In ``ReAct`` it becomes the step's observation."""

    def __init__(self, tool: str, text: str) -> None:
        super().__init__(f"MCP tool {tool!r} failed: {text}" if text else f"MCP tool {tool!r} failed (no message)")
        self.tool = tool
        self.text = text


def _field(obj: Any, snake: str, camel: str, default: Any = None) -> Any:
    value = getattr(obj, snake, None)
    return getattr(obj, camel, default) if value is None else value


def _describe_part(part: Any) -> str:
    """A non-text content part as a line of text (its text where it has one)."""
    kind = getattr(part, "type", None) or type(part).__name__
    resource = getattr(part, "resource", None)
    if resource is not None and isinstance(getattr(resource, "text", None), str):
        return str(resource.text)
    mime = _field(part, "mime_type", "mimeType") or _field(resource, "mime_type", "mimeType")
    where = getattr(part, "uri", None) or getattr(resource, "uri", None)
    details = ", ".join(str(x) for x in (mime, where) if x)
    return f"[{kind} content{': ' + details if details else ''}]"


def wraps_result(output_schema: Any) -> bool:
    """Whether a tool's output schema is the ``{"result": ...}`` wrapper that MCP servers
    (the SDK's ``MCPServer``, FastMCP) put around a return value that is not an object."""
    if not isinstance(output_schema, dict):
        return False
    properties = output_schema.get("properties")
    return isinstance(properties, dict) and set(properties) == {"result"}


def mcp_result_value(tool: str, result: Any, *, unwrap: bool = False, text_only: bool = False) -> Any:
    """The value of an MCP ``CallToolResult``: its structured content when present (with
    ``unwrap``, the value inside a lone ``{"result": ...}``) unless ``text_only``, else its text
    parts joined by newlines (other parts as a ``[image content: image/png]`` line, or their text
    for embedded text resources). Raises ``MCPToolError`` for an ``isError`` result."""
    parts = list(getattr(result, "content", None) or [])
    lines = [part.text if getattr(part, "type", None) == "text" else _describe_part(part) for part in parts]
    text = "\n".join(str(line) for line in lines)
    if _field(result, "is_error", "isError", False):
        raise MCPToolError(tool, text)
    structured = _field(result, "structured_content", "structuredContent")
    if structured is not None and not text_only:
        if unwrap and isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]
        return structured
    return text


_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def tool_from_mcp(
    cls: type[Tool],
    call_tool: Callable[[str, dict[str, Any]], Awaitable[Any]],
    mcp_tool: Any,
    *,
    name: str | None = None,
    result_mode: str = "structured",
) -> Tool:
    """A ``cls`` (``Tool``) that calls ``mcp_tool`` through ``call_tool(name, arguments)``."""
    if result_mode not in ("structured", "text"):
        raise ValueError(f"Tool.from_mcp(result_mode={result_mode!r}): use 'structured' or 'text'")
    text_only = result_mode == "text"
    remote = getattr(mcp_tool, "name", None)
    if not isinstance(remote, str) or not remote:
        raise TypeError(f"Tool.from_mcp() needs an MCP tool (an entry of list_tools().tools), got {mcp_tool!r}")
    schema = _field(mcp_tool, "input_schema", "inputSchema")
    if schema is None:
        schema = {"type": "object", "properties": {}}
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ValueError(f"MCP tool {remote!r}: its input schema is not a JSON object schema: {schema!r}")
    schema = {"type": "object", **schema}
    local = name or _INVALID_NAME_CHARS.sub("_", remote)
    unwrap = wraps_result(_field(mcp_tool, "output_schema", "outputSchema"))

    async def call(**arguments: Any) -> Any:
        return mcp_result_value(remote, await call_tool(remote, arguments), unwrap=unwrap, text_only=text_only)

    call.__name__ = call.__qualname__ = local
    desc = getattr(mcp_tool, "description", None) or getattr(mcp_tool, "title", None)
    return cls(call, name=local, desc=desc, args=schema)

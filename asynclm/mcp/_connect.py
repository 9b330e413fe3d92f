"""``connect``: open an MCP session (stdio subprocess or streamable HTTP) and give its tools.

Built on the official SDK's ``mcp.Client`` (AnyIO-based: its stdio and streamable HTTP clients run
on asyncio and on trio). The session lives on the loop that entered ``connect`` (a ``home_loop``):
its tools may be awaited from that loop by many tasks at once (each call is one JSON-RPC request
on the shared session), and from any other loop or thread, where the call hops to the session's
loop. Leaving the block closes the session and stops the server process (or ends the HTTP
session and closes its connections), also when the block is cancelled or raises: the SDK's stdio
shutdown runs shielded and bounded; our HTTP client is closed shielded (the SDK's closing DELETE
of the HTTP session is sent on a normal exit only; a cancelled exit just closes the connections).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from os import PathLike
from typing import Any, Literal
from urllib.parse import urlsplit

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

import anyio

from asynclm.modules import Tool
from asynclm.runtime import HomeLoop, HomeLoopClosedError, enter_sync, home_loop

__all__ = ["MCPConnectionClosedError", "MCPConnectionError", "connect"]

_EXTRA_HINT = "asynclm.mcp needs the MCP SDK (mcp>=2.3, on Python 3.11+): pip install 'asynclm[mcp]'"
#: The most seconds closing a session may take (the SDK bounds each of its own steps too).
_CLOSE_TIMEOUT = 15.0
#: Read timeouts of the HTTP client: server-sent event streams may stay open long.
_HTTP_TIMEOUT = 30.0
_HTTP_READ_TIMEOUT = 300.0
_MAX_PAGES = 1000


class MCPConnectionError(ConnectionError):
    """``asynclm.mcp.connect`` could not open the session (server not started or not reachable,
    handshake or tool listing failed); the message names the server and the causes, and
    ``__cause__`` is the SDK's exception."""


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _reasons(exc: BaseException, url: str | None) -> str:
    """The leaf exceptions as ``Type: message``, with the URL's credentials (userinfo, query) cut out."""
    replacements: list[tuple[str, str]] = []
    if url is not None:
        parts = urlsplit(url)
        replacements = [(url, _safe_url(url))]
        replacements += [(s, "***") for s in (parts.query, parts.password, parts.username) if s]
    seen: list[str] = []
    for leaf in _leaves(exc):
        text = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
        for secret, shown in replacements:
            text = text.replace(secret, shown)
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


class MCPConnectionClosedError(RuntimeError):
    """A tool of ``asynclm.mcp.connect(...)`` was called after its block ended (the session is closed)."""


def _sdk() -> Any:
    try:
        import mcp
    except ImportError as exc:
        raise ImportError(f"{_EXTRA_HINT} ({exc})") from exc
    if not hasattr(mcp, "Client"):
        raise ImportError(f"{_EXTRA_HINT}; the installed mcp {getattr(mcp, '__version__', '')} is too old")
    return mcp


def _safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment (they may carry credentials): for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _Session:
    """What the tools call: the SDK client, reached on its home loop, with a clear error once closed."""

    def __init__(self, client: Any, home: HomeLoop, where: str) -> None:
        self._client = client
        self._home = home
        self._where = where
        self.closed = False

    def _closed_error(self) -> MCPConnectionClosedError:
        return MCPConnectionClosedError(
            f"the MCP session with {self._where} is closed: call its tools inside the "
            "`async with asynclm.mcp.connect(...)` (or `with asynclm.mcp.connect.sync(...)`) block"
        )

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        if self.closed:
            raise self._closed_error()
        try:
            return await self._home.run(self._client.call_tool, name, arguments)
        except HomeLoopClosedError as exc:
            raise self._closed_error() from exc


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise RuntimeError(f"the MCP server listed more than {_MAX_PAGES} pages of tools; stopped reading")


def _argv(command: str | Sequence[str]) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        raise ValueError("asynclm.mcp.connect(command=...): give the server's command, e.g. ['python', 'server.py']")
    return argv


@contextlib.asynccontextmanager
async def _connect(
    command: str | Sequence[str] | None,
    url: str | None,
    headers: Mapping[str, str] | None,
    env: Mapping[str, str] | None,
    cwd: str | PathLike[str] | None,
    timeout: float | None,
    prefix: str,
    result_mode: Literal["structured", "text"],
) -> AsyncIterator[list[Tool]]:
    if (command is None) == (url is None):
        raise ValueError(
            "asynclm.mcp.connect(): give either command=[...] (a server run as a subprocess, over stdio) "
            "or url='http://.../mcp' (streamable HTTP), not both"
        )
    if url is not None and (env is not None or cwd is not None):
        raise ValueError("asynclm.mcp.connect(url=...): env= and cwd= apply to a subprocess (command=...) only")
    if command is not None and headers is not None:
        raise ValueError("asynclm.mcp.connect(command=...): headers= apply to an HTTP server (url=...) only")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError(f"asynclm.mcp.connect(url=...): expected an http:// or https:// URL, got {_safe_url(url)!r}")
    if result_mode not in ("structured", "text"):
        raise ValueError(f"asynclm.mcp.connect(result_mode={result_mode!r}): use 'structured' or 'text'")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"asynclm.mcp.connect(timeout={timeout!r}): use a number of seconds > 0, or None")
    mcp = _sdk()

    http: Any = None  # our own HTTP client: closed shielded, whatever happens to the SDK's shutdown
    failure: Exception | None = None  # raised as it is once the SDK's task groups are left
    where = _safe_url(url) if url is not None else ""
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                if command is not None:
                    argv = _argv(command)
                    where = f"the server `{shlex.join(argv)}`"
                    server: Any = mcp.StdioServerParameters(
                        command=argv[0], args=argv[1:], env=dict(env) if env is not None else None, cwd=cwd
                    )
                else:
                    import httpx2
                    from mcp.client.streamable_http import streamable_http_client

                    assert url is not None
                    http = httpx2.AsyncClient(
                        headers=dict(headers or {}), timeout=httpx2.Timeout(_HTTP_TIMEOUT, read=_HTTP_READ_TIMEOUT)
                    )
                    server = streamable_http_client(url, http_client=http)
                # The SDK's stdio shutdown (stdin closed, SIGTERM, SIGKILL) runs shielded and bounded by itself.
                client = await stack.enter_async_context(mcp.Client(server, read_timeout_seconds=timeout, cache=None))
                listed = await _list_tools(client)
            except Exception as exc:  # the SDK's errors come wrapped in ExceptionGroups: say what happened
                failure = MCPConnectionError(f"could not open an MCP session with {where}: {_reasons(exc, url)}")
                failure.__cause__ = exc
            if failure is None:
                async with home_loop() as home:
                    session = _Session(client, home, where)
                    try:
                        yield [
                            Tool.from_mcp(
                                session, t, name=prefix + t.name if prefix else None, result_mode=result_mode
                            )
                            for t in listed
                        ]
                    except Exception as exc:
                        # The block's own error: leave the SDK's task groups cleanly (they would wrap
                        # it in an ExceptionGroup), then raise it as it is. Cancellation passes through.
                        failure = exc
                    finally:
                        session.closed = True
    finally:
        if http is not None:
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _CLOSE_TIMEOUT):
                await http.aclose()
    if failure is not None:
        raise failure


class _Connect:
    """``asynclm.mcp.connect``: see ``__call__``; ``connect.sync(...)`` for plain ``with``."""

    def __call__(
        self,
        command: str | Sequence[str] | None = None,
        *,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | PathLike[str] | None = None,
        timeout: float | None = None,
        prefix: str = "",
        result_mode: Literal["structured", "text"] = "structured",
    ) -> AbstractAsyncContextManager[list[Tool]]:
        """Connect to an MCP server: ``async with asynclm.mcp.connect(...) as tools:``.

        ``tools`` is a list of ``asynclm.Tool``, one per server tool, each with the server's
        name, description and JSON input schema as given (``required`` included); give them to
        ``asynclm.ReAct`` or await them (``await tool(city="Oslo")``, see ``Tool.from_mcp`` for
        what a call returns). Many calls may run at once over the one session.

        Args:
            command: run the server as a subprocess and talk to it over stdin/stdout: a list
                (``["python", "server.py"]``) or a string split like a shell does.
            url: or connect to a streamable HTTP server (``"http://host:8000/mcp"``).
            headers: HTTP headers sent with every request (``url=`` only), e.g. an
                ``Authorization`` header. They never appear in errors.
            env: environment variables for the subprocess (``command=`` only), added to the
                few the SDK passes on (``PATH``, ``HOME``, ...); the rest of this process's
                environment is not inherited.
            cwd: the subprocess's working directory (``command=`` only).
            timeout: the most seconds to wait for each answer of the server (default: no limit).
            prefix: put before every tool name (``prefix="gh_"``), to tell apart the tools of
                several servers.
            result_mode: ``"structured"`` (default): a call returns the structured content when
                the server sent some, else the text; ``"text"`` (DSPy's default): always the text.

        The session is closed when the block exits, also on an error or a cancellation: the
        subprocess is stopped (stdin closed, then terminated, then killed), the HTTP session
        ended and its connections closed. A tool called after that raises
        ``MCPConnectionClosedError``.

        Raises:
            ImportError: the ``mcp`` package is missing (``pip install 'asynclm[mcp]'``).
            ValueError: neither or both of ``command`` and ``url``, or options for the other transport.
            MCPConnectionError: the server could not be started or reached, or the handshake failed.
        """
        return _connect(command, url, headers, env, cwd, timeout, prefix, result_mode)

    def sync(
        self,
        command: str | Sequence[str] | None = None,
        *,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | PathLike[str] | None = None,
        timeout: float | None = None,
        prefix: str = "",
        result_mode: Literal["structured", "text"] = "structured",
    ) -> AbstractContextManager[list[Tool]]:
        """The same from synchronous code: ``with asynclm.mcp.connect.sync(...) as tools:``.

        The session lives on the calling thread's portal (the event loop its ``.sync()`` calls
        run on) until the block exits; call the tools with ``tool.sync(**args)`` or run a
        program over them with ``program.sync(...)``. Same arguments as ``connect``.
        """
        return enter_sync(lambda: _connect(command, url, headers, env, cwd, timeout, prefix, result_mode))

    def __repr__(self) -> str:
        return "<function asynclm.mcp.connect (with .sync)>"


connect = _Connect()
"""``connect(command=None, *, url=None, headers=None, env=None, cwd=None, timeout=None, prefix="",
result_mode="structured")``: connect to an MCP server, ``async with asynclm.mcp.connect(...) as
tools:``; ``connect.sync(...)`` (same arguments) for plain ``with`` in sync code.

``tools`` is a list of ``asynclm.Tool``, one per server tool, with the server's name, description
and JSON input schema as given (``required`` included), for ``asynclm.ReAct`` or to await.

- ``command``: run the server as a subprocess and talk over stdio (``["python", "server.py"]``,
  or a string split like a shell does); ``env`` (added to the few variables the SDK passes on)
  and ``cwd`` apply to it.
- ``url``: or a streamable HTTP server (``"http://host:8000/mcp"``), with ``headers`` sent on
  every request (never shown in errors).
- ``timeout``: the most seconds to wait for each answer of the server (default: no limit).
- ``prefix``: put before every tool name, to tell apart the tools of several servers.
- ``result_mode``: ``"structured"`` (default): calls return the structured content when the server
  sent some, else the text; ``"text"``: always the text (DSPy's default).

Leaving the block closes the session (subprocess stopped, HTTP connections closed), also on an
error or a cancellation; a tool called after that raises ``MCPConnectionClosedError``. Raises
``ImportError`` naming ``asynclm[mcp]`` when the ``mcp`` package is missing.
"""

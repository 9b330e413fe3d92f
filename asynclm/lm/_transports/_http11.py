"""asynclm's own HTTP/1.1 keep-alive client for asyncio and trio (one pool, one parser).

The wire is parsed by llhttp through ``httptools`` (``_parser``); connections are bare non-blocking
sockets driven by each event loop directly (``_asyncio_conn``, ``_trio_conn``): with 10 000 calls
in flight this transport holds ~10 KB per call (the caller's task included) and needs about a
third of the CPU per call of a client on anyio's socket streams (``bench/bench_transport.py``).

Why not httpx: httpx 0.28's connection pool does O(requests × connections) bookkeeping per request
(~9 ms of CPU per call at concurrency 64 on the reference box); aiohttp is fast but asyncio-only.
An LM client needs one thing from HTTP — POST a JSON body, read a JSON or SSE body — so this module
does exactly that, with an O(1) pool: one deque of idle connections per origin, taken from the
right (most recently used, least likely to be stale) and pruned from the left.

Semantics:

* One transport per event loop (see ``get_transport``); using it from another loop raises.
* A connection goes back to the pool only after a complete response that allows keep-alive, with
  nothing received beyond it (TLS records included), and only if the whole request was sent.
* A keep-alive connection the server closed while idle is detected before reuse (a zero-timeout
  ``poll`` of its socket). A request is re-sent on a fresh connection only when writing it to a
  reused connection failed before all of it was written; once every byte is written it is never
  re-sent here — the server may have acted on it. Retrying is the LM's policy (``max_retries``).
* A complete response that arrives before the upload finished (a ``413`` from a gateway) is
  returned; the connection is then closed.
* Idle connections close at their keep-alive expiry, checked at every request whatever its origin.
* Cancelling a caller mid-request closes that connection: the server sees the disconnect.
* ``timeout`` bounds each operation (connect, write, each read), not the whole call;
  ``post(..., deadline=)`` bounds the whole request (waiting for a connection slot included) and
  raises ``DeadlineExceeded``.
* Bodies: Content-Length, chunked, or read-until-close; ``gzip``/``deflate`` content encodings
  are decoded; the decoded body is capped (``max_response_bytes``, ``ResponseTooLarge``).
  Interim 1xx responses are skipped.
* Every failure is a ``TransportError`` whose ``phase`` (DNS, connect, TLS handshake, send,
  receive) and message say what happened, with the OS's or TLS library's reason.
* Not supported: proxies (bring an httpx client, ``HttpxTransport``; ``default_transport`` does
  so when proxy environment variables are set), HTTP/2, pipelining, request bodies other than
  one ``bytes`` object, methods other than POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Union, cast

import anyio

from ...runtime._backends import current_loop_key
from ._asyncio_conn import AsyncioConnection, open_connection as open_asyncio_connection
from ._base import ClosingStreamMixin, DeadlineExceeded, Response, TransportError, TransportTimeout
from ._parser import ResponseParser, keep_alive_timeout
from ._ssl import load_default_ssl_context
from ._urls import Target, check_header_value

if TYPE_CHECKING:  # trio is optional: _trio_conn is imported on first use
    from ._trio_conn import TrioConnection

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "HTTP11Transport"]

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_USER_AGENT = "asynclm/0.1"
# Framing headers are ours to write: a caller-supplied Content-Length could desynchronise the
# connection (request smuggling), and keep-alive is managed here.
_OURS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALID_NAMES: set[str] = set()


def _valid_name(name: str) -> bool:
    if _TOKEN.fullmatch(name) is None:
        return False
    if len(_VALID_NAMES) < 1024:
        _VALID_NAMES.add(name)
    return True


_NETWORK_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,  # includes ssl.SSLError, ConnectionResetError, BrokenPipeError
)

_Conn = Union[AsyncioConnection, "TrioConnection"]
_NO_SCOPE = contextlib.nullcontext()


class _Stale(Exception):
    """Writing the request to a reused connection failed before all of it was written."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, anyio.EndOfStream):
        return "the server closed the connection"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _located(exc: TransportError, target: Target, phase: str) -> TransportError:
    """``exc`` with the URL and phase it happened in (errors from the parser know neither)."""
    if exc.phase is None:
        exc.phase = phase
    if not str(exc).startswith(target.safe_url):
        exc.args = (f"{target.safe_url}: {exc}",)
    return exc


class _StreamingResponse(ClosingStreamMixin):
    """A response whose body is read incrementally; it owns its connection until closed."""

    def __init__(
        self, transport: HTTP11Transport, conn: _Conn, reusable: bool, timeout: float | None, target: Target
    ) -> None:
        parser = conn.parser
        self.status = parser.status
        self.headers: Mapping[str, str] = parser.headers
        self._transport = transport
        self._conn: _Conn | None = conn
        self._parser = parser
        # ours even after the connection goes back to the pool (its next request gets a new list)
        self._parts = parser.body
        self._reusable = reusable
        self._timeout = timeout
        self._target = target

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status} {self._target.safe_url}>"

    def aiter_bytes(self) -> _StreamingResponse:
        return self

    def __aiter__(self) -> _StreamingResponse:
        return self

    async def __anext__(self) -> bytes:
        parser = self._parser
        parts = self._parts
        while True:
            if parts:
                data = b"".join(parts) if len(parts) > 1 else parts[0]
                parts.clear()
                return data
            conn = self._conn
            if conn is None:
                raise StopAsyncIteration
            if parser.done:
                self._finish()
                continue
            try:
                if conn.buf:
                    parser.feed(conn.buf)
                    conn.buf.clear()
                else:
                    await self._fill(conn)
            except TransportError as exc:
                self._abort()
                raise _located(exc, self._target, "receive") from None
            except _NETWORK_ERRORS as exc:
                self._abort()
                raise TransportError(
                    f"{self._target.safe_url}: receive failed: {_reason(exc)}", phase="receive"
                ) from exc
            except BaseException:  # cancelled: the connection is half-used, close it
                self._abort()
                raise

    async def _fill(self, conn: _Conn) -> None:
        t = self._timeout
        try:
            if t is None:
                await conn.fill(None, None)
                return
            with anyio.CancelScope(deadline=anyio.current_time() + t):
                await conn.fill(None, None)
                return
            raise TransportTimeout(
                f"{self._target.safe_url}: no body data for {t:g} s (read timeout)", phase="receive"
            )
        except anyio.EndOfStream:
            self._parser.feed_eof()

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._release(conn, self._reusable)

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._discard(conn)

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        self._abort()


class HTTP11Transport:
    """asynclm's default transport: HTTP/1.1 keep-alive, on asyncio and trio.

    Args:
        connect_timeout: seconds to establish a connection (DNS + TCP + TLS) when a call gives
            no ``timeout``.
        read_timeout: seconds to wait for each write and each read when a call gives no
            ``timeout``; ``None`` waits as long as the server takes (the LM's total deadline
            bounds the call).
        keepalive_expiry: seconds an idle connection is kept for reuse (shortened by a
            server's ``Keep-Alive: timeout=N``).
        ssl_context: for https; default: the operating system's trust store, TLS >= 1.2
            (``asynclm.lm._transports.default_ssl_context()``).
        max_idle_per_origin: idle connections kept per origin; extra ones are closed.
        max_connections: open connections (idle or in use, all origins) at most; a request
            beyond it waits for one to be returned or closed (an idle connection to another
            origin is closed to make room). ``None``: no cap — concurrency is then bounded by
            the caller (``LM(max_concurrency=...)``, ``batch(concurrency=...)``).
        max_response_bytes: the largest response body accepted, after decompression, when a
            call gives no ``max_response_bytes`` (default 64 MiB); beyond it the call raises
            ``ResponseTooLarge`` and the connection is closed.
        user_agent: the ``User-Agent`` sent unless the caller's headers give one.

    Bound to the event loop of its first use; use ``get_transport`` to get the running loop's.
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = 10.0,
        read_timeout: float | None = None,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 1024,
        max_connections: int | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        user_agent: str = _USER_AGENT,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 (or None), got {max_connections}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be at least 1, got {max_response_bytes}")
        check_header_value("User-Agent", user_agent)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_expiry = keepalive_expiry
        self.max_idle_per_origin = max_idle_per_origin
        self.max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        self._user_agent = f"User-Agent: {user_agent}\r\n"
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._next_prune = math.inf  # the earliest keep-alive expiry among idle connections
        self._targets: dict[str, Target] = {}
        self._loop: Any = None
        self._asyncio = False  # the loop is asyncio's: use AsyncioConnection
        self._deadline_scope: Callable[..., Any] = anyio.CancelScope
        self._closed = False
        self.max_connections = max_connections
        self._open = 0  # connections open or being opened
        self._slot_waiters: deque[anyio.Event] = deque()

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        return f"<HTTP11Transport open={self._open} idle={idle}{' closed' if self._closed else ''}>"

    # -- public API --------------------------------------------------------------------------

    # post() and post_stream() take deadline= and max_response_bytes= (see Transport)
    accepts_call_limits = True

    def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        max_response_bytes: int | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """POST and read the whole response (``await transport.post(...)``).

        ``deadline`` (``anyio.current_time()`` clock) bounds everything — waiting for a pooled
        connection, connecting, sending, reading — and raises ``DeadlineExceeded``. On
        asyncio one timer on the connection enforces it; elsewhere (or with a read timeout, which
        needs a scope anyway) a cancel scope does. A plain ``def`` returning the coroutine: no
        frame of its own stays alive while the response is awaited.
        """
        target, head, connect_t, read_t = self._prepare(url, body, headers, timeout)
        limit = self.max_response_bytes if max_response_bytes is None else max_response_bytes
        return self._post(target, head, body, connect_t, read_t, deadline, limit, False)

    async def post_stream(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        max_response_bytes: int | None = None,
    ) -> _StreamingResponse:
        """POST and return once the status line and headers are read; the caller must aclose().
        ``max_response_bytes`` caps the whole (decoded) stream."""
        target, head, connect_t, read_t = self._prepare(url, body, headers, timeout)
        limit = self.max_response_bytes if max_response_bytes is None else max_response_bytes
        return cast(_StreamingResponse, await self._post(target, head, body, connect_t, read_t, None, limit, True))

    async def aclose(self) -> None:
        """Close all idle connections; connections in use are closed when their call ends."""
        self._closed = True
        conns = [c for d in self._idle.values() for c in d]
        self._idle.clear()
        for conn in conns:
            self._discard(conn)

    # -- internals ---------------------------------------------------------------------------

    async def _post(
        self,
        target: Target,
        head: bytes,
        body: bytes,
        connect_t: float | None,
        read_t: float | None,
        deadline: float | None,
        limit: int,
        stream: bool,
    ) -> Any:
        """The request on a pooled or new connection, within ``deadline``.

        On asyncio (without a read timeout) the connection's timer enforces the deadline; elsewhere
        one cancel scope per call does, and serves as the connect timeout too (trio keeps a
        deadline scope referenced until its deadline passes, so a second one per call would
        hold memory long after the call)."""
        scope = None
        if deadline is not None and not (self._asyncio and read_t is None):
            scope = self._deadline_scope(deadline=deadline)
        with scope or _NO_SCOPE:
            for attempt in (0, 1):
                conn = await self._acquire(target, connect_t, deadline, scope, fresh=bool(attempt))
                try:
                    if read_t is None:
                        return await self._exchange(
                            conn, target, head, body, None, None, None if scope else deadline, limit, stream
                        )
                    with anyio.CancelScope(deadline=anyio.current_time() + read_t) as read_scope:
                        return await self._exchange(conn, target, head, body, read_scope, read_t, None, limit, stream)
                    what = "response headers" if stream else "response data"
                    raise TransportTimeout(
                        f"{target.safe_url}: no {what} for {read_t:g} s (read timeout)", phase="receive"
                    )
                except _Stale:
                    continue  # closed already; nothing reached the server: once more on a fresh one
        assert scope is not None and deadline is not None  # only a deadline scope gets here
        if anyio.current_time() < deadline:  # the scope's deadline was the connect timeout's
            raise TransportTimeout(f"{target.safe_url}: connect timed out after {connect_t} s", phase="connect")
        raise DeadlineExceeded(f"{target.safe_url}: no complete response before the call's deadline")

    def _prepare(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> tuple[Target, bytes, float | None, float | None]:
        """(target, encoded request head, connect timeout, read timeout); validates the headers."""
        if self._closed:
            raise TransportError("this transport is closed")
        loop = current_loop_key()
        if loop is not self._loop:
            if self._loop is not None:
                raise RuntimeError(
                    "this HTTP11Transport belongs to another event loop; get one per loop with "
                    "asynclm.lm._transports.get_transport()"
                )
            self._loop = loop
            self._asyncio = isinstance(loop, asyncio.AbstractEventLoop)
            if not self._asyncio:
                from ._trio_conn import deadline_scope

                self._deadline_scope = deadline_scope
        target = self._targets.get(url)
        if target is None:
            target = Target(url)
            if len(self._targets) >= 256:
                self._targets.clear()
            self._targets[url] = target
        head = [target.request_line]
        ua = True
        for name, value in headers.items():
            lname = name.lower()
            if lname in _OURS or lname == "host":
                continue
            if lname == "user-agent":
                ua = False
            if not isinstance(value, str):
                raise TypeError(f"HTTP header {name!r} must be a str, not {type(value).__name__}")
            if name not in _VALID_NAMES and not _valid_name(name):
                raise ValueError(f"invalid HTTP header name {name!r}: names must be tokens (letters, digits, -)")
            if not value.isprintable():  # the usual value is: one C call instead of a regex search
                check_header_value(name, value)
            head.append(f"{name}: {value}\r\n")
        if ua:
            head.append(self._user_agent)
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        try:
            # The head and the body are sent together but kept apart until then: a call holds
            # no second copy of its body while it waits for the response.
            encoded = "".join(head).encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"HTTP header values must be latin-1 text; {exc.object[exc.start : exc.end]!r} is not"
            ) from None
        if timeout is None:
            return target, encoded, self.connect_timeout, self.read_timeout
        return target, encoded, timeout, timeout

    async def _acquire(
        self,
        target: Target,
        connect_t: float | None,
        deadline: float | None,
        scope: anyio.CancelScope | None,
        *,
        fresh: bool,
    ) -> _Conn:
        now = time.monotonic()
        if now >= self._next_prune:
            self._prune(now)
        while True:
            if not fresh:
                idle = self._idle.get(target.origin)
                while idle:
                    conn = idle.pop()
                    if conn.looks_alive():
                        conn.reused = True
                        return conn
                    self._discard(conn)
            if self.max_connections is None or self._open < self.max_connections:
                break
            if deadline is None or scope is not None:
                await self._wait_for_slot()
            else:
                with anyio.CancelScope(deadline=deadline) as scope:
                    await self._wait_for_slot()
                if scope.cancelled_caught:
                    raise DeadlineExceeded(f"{target.safe_url}: no free connection before the call's deadline")
        self._open += 1
        try:
            return await self._connect(target, connect_t, deadline, scope)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _prune(self, now: float) -> None:
        """Close the idle connections, to any origin, whose keep-alive expiry has passed."""
        earliest = math.inf
        for origin in list(self._idle):
            idle = self._idle[origin]
            while idle and idle[0].expires <= now:
                self._discard(idle.popleft())
            if idle:
                earliest = min(earliest, idle[0].expires)
            else:
                del self._idle[origin]
        self._next_prune = earliest

    async def _wait_for_slot(self) -> None:
        """At the connection cap: free an idle connection to another origin, or wait."""
        for idle in self._idle.values():
            if idle:
                self._discard(idle.popleft())
                return
        event = anyio.Event()
        self._slot_waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self._wake_one()  # we were handed a slot but are leaving: pass it on
            else:
                self._slot_waiters.remove(event)
            raise

    def _wake_one(self) -> None:
        if self._slot_waiters:
            self._slot_waiters.popleft().set()

    def _discard(self, conn: _Conn) -> None:
        """Close a connection for good (never reused) and free its slot."""
        if not conn.closed:  # a second discard is a no-op
            conn.closed = True
            self._open -= 1
            self._wake_one()
            conn.close()

    async def _connect(
        self, target: Target, connect_t: float | None, deadline: float | None, scope: anyio.CancelScope | None
    ) -> _Conn:
        """A new connection within the connect timeout. ``scope``: the call's deadline scope, which
        then also enforces the connect timeout (``_post`` tells which one expired)."""
        limit = math.inf if connect_t is None else anyio.current_time() + connect_t
        if deadline is not None and deadline < limit:
            limit = deadline
        ctx = None
        if target.tls:
            ctx = self._ssl_context
            if ctx is None:
                ctx = self._ssl_context = await load_default_ssl_context()
        if scope is not None:
            scope.deadline = limit
            try:
                return await self._open_connection(target, ctx)
            finally:
                scope.deadline = cast(float, deadline)
        try:
            with anyio.fail_after(max(0.0, limit - anyio.current_time()) if limit != math.inf else None):
                return await self._open_connection(target, ctx)
        except TimeoutError as exc:
            if deadline is not None and limit == deadline:
                raise DeadlineExceeded(f"cannot connect to {target.safe_url} before the call's deadline") from exc
            after = f" after {connect_t:g} s" if connect_t is not None else ""
            raise TransportTimeout(f"{target.safe_url}: connect timed out{after}", phase="connect") from exc

    def _open_connection(self, target: Target, ctx: ssl.SSLContext | None) -> Coroutine[Any, Any, _Conn]:
        if self._asyncio:
            return open_asyncio_connection(target.host, target.port, target.origin, ctx, target.safe_url)
        from ._trio_conn import open_connection as open_trio_connection

        return open_trio_connection(target.host, target.port, target.origin, ctx, target.safe_url)

    async def _exchange(
        self,
        conn: _Conn,
        target: Target,
        head: bytes,
        body: bytes,
        scope: anyio.CancelScope | None,
        read_t: float | None,
        deadline: float | None,
        limit: int,
        stream: bool,
    ) -> Any:
        """Send the request and read the response (head only if ``stream``) on ``conn``.

        ``deadline``: only with an ``AsyncioConnection``, which enforces it with a timer."""
        parser: ResponseParser = conn.parser
        parser.start(limit)
        buf = conn.buf
        if deadline is not None:
            cast(AsyncioConnection, conn).arm(deadline)
        phase = "send"
        sent = False
        try:
            sent = await conn.send(head, body)
            while True:
                if buf:
                    parser.feed(buf)
                    buf.clear()
                    if parser.done or (stream and parser.head_done):
                        break
                if not sent and not parser.head_done:
                    sent = await conn.send_more()
                    continue
                # (not sent: the final response began before the upload ended; read it and give
                # up the upload)
                if phase == "send":
                    phase = "receive"
                    if scope is not None:
                        scope.deadline = anyio.current_time() + read_t  # type: ignore[operator]
                try:
                    await conn.fill(scope, read_t)
                except anyio.EndOfStream:
                    parser.feed_eof()
                    break
        except TransportError as exc:
            self._discard(conn)
            raise _located(exc, target, phase) from None
        except _NETWORK_ERRORS as exc:
            self._discard(conn)
            if phase == "send" and not sent and conn.reused and not parser.status:
                raise _Stale from exc
            raise TransportError(f"{target.safe_url}: {phase} failed: {_reason(exc)}", phase=phase) from exc
        except BaseException:  # cancelled, timed out: never reuse
            self._discard(conn)
            raise
        if deadline is not None:
            cast(AsyncioConnection, conn).disarm()
        if stream:
            resp = _StreamingResponse(self, conn, sent, read_t, target)
            if parser.done:
                resp._finish()
            return resp
        parts = parser.body
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self._release(conn, sent)
        return Response(parser.status, parser.headers, data)

    def _release(self, conn: _Conn, sent: bool) -> None:
        """After a complete response: pool the connection if it can carry another request, else
        close it. It cannot after a partial upload, without keep-alive, or with anything received
        beyond the response."""
        parser = conn.parser
        if self._closed or not sent or not parser.keep_alive or parser.extra or conn.buf:
            self._discard(conn)
            return
        expiry = self.keepalive_expiry
        server_timeout = keep_alive_timeout(parser.headers)
        if server_timeout is not None:  # close a little before the server does
            expiry = min(expiry, server_timeout - 0.5)
        if expiry <= 0:
            self._discard(conn)
            return
        conn.expires = expires = time.monotonic() + expiry
        if expires < self._next_prune:
            self._next_prune = expires
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        idle.append(conn)
        if len(idle) > self.max_idle_per_origin:
            self._discard(idle.popleft())
        elif self._slot_waiters:
            self._wake_one()  # a waiter for this origin can take it

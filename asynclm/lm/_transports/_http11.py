"""asynclm's own HTTP/1.1 keep-alive client for asyncio and trio (one parser, one pool).

Sockets: on asyncio the event loop drives each connection directly (``_asyncio_conn``: a bare
non-blocking socket for plain HTTP, an ``asyncio.Protocol`` for TLS): with 10 000 calls in flight
this transport takes ~10 KB per call (the caller's task included) against ~22.6 KB on anyio's
socket stream, and about a third of the CPU per call (measured with ``bench``). On trio, an anyio
byte stream.

Why not httpx: httpx 0.28's connection pool does O(requests × connections) bookkeeping per request
(~9 ms of CPU per call at concurrency 64 on the reference box); aiohttp is fast but asyncio-only;
h11 costs ~130 µs per exchange against ~9 µs for the parser here. An LM client needs one thing
from HTTP — POST a JSON body, read a JSON or SSE body — so this module does exactly that, with an
O(1) pool: one deque of idle connections per origin, taken from the right (most recently used,
least likely to be stale) and pruned from the left. See ``bench/bench_transport.py``.

Semantics:

* One transport per event loop (see ``get_transport``); using it from another loop raises.
* Cancelling a caller mid-request closes that connection: a half-used connection never goes
  back to the pool, and the server sees the disconnect.
* A keep-alive connection the server closed while idle is detected before reuse (a zero-timeout
  ``poll`` of its socket); if the server closes it during the request *before any byte of the
  response arrived*, the request is retried once on a fresh connection — the rule urllib3 and
  httpcore follow.
* ``timeout`` bounds each operation (connect, write, each read), not the whole call;
  ``post(..., deadline=)`` bounds the whole request (waiting for a connection slot included) and
  raises ``DeadlineExceeded``.
* Bodies: Content-Length, chunked, or read-until-close; ``gzip``/``deflate`` content encodings
  are decoded. Interim 1xx responses are skipped.
* Not supported: proxies (bring an httpx client, ``HttpxTransport``; ``default_transport`` does
  so when proxy environment variables are set), HTTP/2, pipelining, request bodies other than
  one ``bytes`` object, methods other than POST.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
import zlib
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any, Union, cast
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from ...runtime._backends import current_loop_key
from ._asyncio_conn import AsyncioConnection, open_connection, readable as _readable
from ._base import ClosingStreamMixin, DeadlineExceeded, Response, TransportError, TransportTimeout

__all__ = ["HTTP11Transport"]

_MAX_HEAD = 64 * 1024  # bytes of status line + headers we accept
_MAX_CHUNK_LINE = 4096
_RECV = 65536
_USER_AGENT = "asynclm/0.1"
_CLOSED_EARLY = "the server closed the connection before the response was complete"
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


_KEEPALIVE_TIMEOUT = re.compile(r"timeout\s*=\s*(\d+)")

_NETWORK_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,  # includes ssl.SSLError, ConnectionResetError, BrokenPipeError
)

# Body framing kinds.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2, 3


class _Stale(Exception):
    """A reused connection failed before any response byte arrived: safe to retry once."""


class _Target:
    """A parsed request URL (cached per URL string)."""

    __slots__ = ("host", "origin", "port", "request_line", "safe_url", "tls")

    def __init__(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid URL {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}: use http:// or https://")
        host = parts.hostname
        if not host:
            raise ValueError(f"URL {url!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the URL are not supported (they would end up in logs); "
                "send an Authorization header instead"
            )
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        default_port = 443 if scheme == "https" else 80
        port = port or default_port
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if any(c in target for c in " \r\n\t\x00"):
            raise ValueError(f"URL path contains whitespace or control characters: {url!r}")
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        self.host = host
        self.port = port
        self.tls = scheme == "https"
        self.origin = (scheme, host, port)
        # The query may hold secrets (some providers take ?key=...): never put it in messages.
        self.safe_url = f"{scheme}://{host_header}{parts.path or '/'}"
        self.request_line = f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\n"


class _Connection:
    __slots__ = ("buf", "closed", "expires", "fd", "origin", "received", "reused", "stream")

    def __init__(self, stream: ByteStream, origin: tuple[str, str, int]) -> None:
        self.stream = stream
        self.origin = origin
        self.buf = bytearray()
        self.reused = False
        self.received = False  # any byte of the current response arrived
        self.expires = 0.0
        self.closed = False
        self.fd = -1
        try:
            self.fd = stream.extra(anyio.abc.SocketAttribute.raw_socket).fileno()
        except Exception:  # pragma: no cover - every anyio TCP stream exposes its socket
            pass

    def looks_alive(self) -> bool:
        """False when the idle peer has closed (EOF), reset, or sent unsolicited bytes.

        An idle HTTP/1.1 connection must have nothing to read; anything readable means it is
        unusable. Checked with a zero-timeout poll (asyncio wraps the socket object, so only
        its file descriptor is usable here).
        """
        if self.buf:
            return False
        if self.fd < 0:  # pragma: no cover - every anyio TCP stream exposes its socket
            return True
        try:
            return not _readable(self.fd)
        except (OSError, ValueError):
            return False

    async def fill(self, scope: anyio.CancelScope | None, timeout: float | None) -> None:
        """Append at least one received byte to ``buf``; EOF raises ``anyio.EndOfStream``."""
        self.buf += await self.stream.receive(_RECV)
        self.received = True
        if scope is not None and timeout is not None:
            scope.deadline = anyio.current_time() + timeout

    async def send(self, head: bytes, body: bytes) -> None:
        await self.stream.send(head + body if body else head)

    async def aclose(self) -> None:
        await _close_stream(self.stream)


# On asyncio the connection is driven by the loop itself (``_asyncio_conn``: less memory and CPU
# per call); on trio an anyio stream. Both offer the same attributes and methods.
_Conn = Union[_Connection, AsyncioConnection]


async def _close_stream(stream: ByteStream) -> None:
    # Shielded: we are often closing *because* the caller was cancelled or timed out.
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except Exception:
            pass


def _parse_head(head: bytes) -> tuple[int, bool, dict[str, str]]:
    """(status, is HTTP/1.1, lower-cased headers) from the bytes before the blank line."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not (code.isascii() and code.isdigit()):
        raise TransportError(f"malformed HTTP status line: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t":
            if line[:1] in (" ", "\t") and last:  # obsolete line folding: continue the last header
                headers[last] += " " + line.strip(" \t")
                continue
            raise TransportError(f"malformed HTTP header line: {line[:100]!r}")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            headers[name] += ", " + value
        else:
            headers[name] = value
        last = name
    return int(code), version == "HTTP/1.1", headers


def _framing(status: int, headers: dict[str, str]) -> tuple[int, int]:
    """How the body is delimited (RFC 9112 §6.3): (kind, content length)."""
    if status < 200 or status in (204, 304):
        return _NONE, 0
    te = headers.get("transfer-encoding")
    if te is not None:
        if te.rpartition(",")[2].strip().lower() == "chunked":
            return _CHUNKED, 0
        return _UNTIL_CLOSE, 0
    cl = headers.get("content-length")
    if cl is not None:
        if "," in cl:  # repeated identical values are allowed
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1:
                raise TransportError(f"conflicting Content-Length headers: {cl!r}")
            cl = values.pop()
        if not (cl.isascii() and cl.isdigit()):
            raise TransportError(f"malformed Content-Length header: {cl!r}")
        n = int(cl)
        return (_LENGTH, n) if n else (_NONE, 0)
    return _UNTIL_CLOSE, 0


def _keep_alive(is_11: bool, kind: int, headers: dict[str, str]) -> bool:
    if kind == _UNTIL_CLOSE:
        return False
    conn = headers.get("connection")
    if conn is None:
        return is_11
    tokens = {t.strip().lower() for t in conn.split(",")}
    return "close" not in tokens and (is_11 or "keep-alive" in tokens)


class _Decoder:
    """Incremental gzip/deflate decoding of a response body."""

    def __init__(self, encoding: str) -> None:
        self._deflate = encoding == "deflate"
        wbits = zlib.MAX_WBITS if self._deflate else 16 + zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)
        self._first = True

    def feed(self, data: bytes) -> bytes:
        try:
            if self._first and self._deflate and data:
                self._first = False
                try:
                    return self._z.decompress(data)
                except zlib.error:  # "deflate" sent as a raw stream, as some servers do
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._z.decompress(data)
        except zlib.error as exc:
            raise TransportError(f"cannot decode the response body: {exc}") from None

    def flush(self) -> bytes:
        return self._z.flush()


class _BodyReader:
    """Reads one response body off a connection, chunk by chunk."""

    __slots__ = ("chunk_left", "conn", "done", "kind", "left", "need_crlf")

    def __init__(self, conn: _Conn, kind: int, length: int) -> None:
        self.conn = conn
        self.kind = kind
        self.left = length
        self.chunk_left = 0
        self.need_crlf = False
        self.done = kind == _NONE

    async def read_some(self, scope: anyio.CancelScope | None, timeout: float | None) -> bytes:
        """The next piece of the raw body; ``b""`` once it is complete."""
        if self.done:
            return b""
        conn = self.conn
        buf = conn.buf
        if self.kind == _LENGTH:
            if not buf:
                await self._fill(scope, timeout)
            n = min(len(buf), self.left)
            data = bytes(buf[:n])
            del buf[:n]
            self.left -= n
            self.done = not self.left
            return data
        if self.kind == _UNTIL_CLOSE:
            if not buf:
                try:
                    await conn.fill(scope, timeout)
                except anyio.EndOfStream:
                    self.done = True
                    return b""
            data = bytes(buf)
            buf.clear()
            return data
        # chunked
        while True:
            if self.chunk_left:
                if not buf:
                    await self._fill(scope, timeout)
                n = min(len(buf), self.chunk_left)
                data = bytes(buf[:n])
                del buf[:n]
                self.chunk_left -= n
                self.need_crlf = not self.chunk_left
                return data
            if self.need_crlf:
                while len(buf) < 2:
                    await self._fill(scope, timeout)
                if buf[:2] != b"\r\n":
                    raise TransportError("malformed chunked body: missing CRLF after a chunk")
                del buf[:2]
                self.need_crlf = False
            line = await self._line(scope, timeout)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
                if size < 0 or not size_text.isalnum():
                    raise ValueError
            except ValueError:
                raise TransportError(f"malformed chunk size line: {line[:100]!r}") from None
            if size == 0:
                while await self._line(scope, timeout):  # trailers, ignored, up to the blank line
                    pass
                self.done = True
                return b""
            self.chunk_left = size

    async def _line(self, scope: anyio.CancelScope | None, timeout: float | None) -> bytes:
        buf = self.conn.buf
        idx = buf.find(b"\r\n")
        while idx < 0:
            if len(buf) > _MAX_CHUNK_LINE:
                raise TransportError("malformed chunked body: chunk header line too long")
            await self._fill(scope, timeout)
            idx = buf.find(b"\r\n")
        line = bytes(buf[:idx])
        del buf[: idx + 2]
        return line

    async def _fill(self, scope: anyio.CancelScope | None, timeout: float | None) -> None:
        try:
            await self.conn.fill(scope, timeout)
        except anyio.EndOfStream:
            raise TransportError(_CLOSED_EARLY) from None


class _StreamingResponse(ClosingStreamMixin):
    """A response whose body is read incrementally; it owns its connection until closed."""

    def __init__(
        self,
        transport: HTTP11Transport,
        conn: _Conn,
        status: int,
        headers: dict[str, str],
        reader: _BodyReader,
        keep_alive: bool,
        timeout: float | None,
        target: _Target,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers
        self._transport = transport
        self._conn: _Conn | None = conn
        self._reader = reader
        self._keep_alive = keep_alive
        self._timeout = timeout
        self._target = target
        enc = headers.get("content-encoding", "").strip().lower()
        self._decoder = _Decoder(enc) if enc in ("gzip", "deflate") else None

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status} {self._target.safe_url}>"

    def aiter_bytes(self) -> _StreamingResponse:
        return self

    def __aiter__(self) -> _StreamingResponse:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._conn is None:
                raise StopAsyncIteration
            data = await self._read_some()  # b"" only once the body is complete
            done = self._reader.done
            if self._decoder is not None:
                data = self._decoder.feed(data) if data else b""
                if done:
                    data += self._decoder.flush()
            if done:
                await self._finish()
                if not data:
                    raise StopAsyncIteration
            if data:
                return data

    async def _read_some(self) -> bytes:
        conn = self._conn
        assert conn is not None
        t = self._timeout
        try:
            if t is None:
                return await self._reader.read_some(None, None)
            with anyio.CancelScope(deadline=anyio.current_time() + t):
                return await self._reader.read_some(None, None)
            raise TransportTimeout(f"{self._target.safe_url}: no body data for {t:g} s (read timeout)")
        except TransportError:
            await self._abort()
            raise
        except _NETWORK_ERRORS as exc:
            await self._abort()
            raise TransportError(f"{self._target.safe_url}: connection failed while reading: {exc!r}") from exc
        except BaseException:  # cancelled: the connection is half-used, close it
            await self._abort()
            raise

    async def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not (self._keep_alive and self._transport._release(conn, self.headers)):
            await self._transport._discard(conn)

    async def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._transport._discard(conn)

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        await self._abort()


class HTTP11Transport:
    """asynclm's default transport: HTTP/1.1 keep-alive, on asyncio and trio.

    Args:
        connect_timeout: seconds to establish a connection (TCP + TLS) when a call gives no
            ``timeout``.
        read_timeout: seconds to wait for each write and each read when a call gives no
            ``timeout``; ``None`` waits as long as the server takes (the LM's total deadline
            bounds the call).
        keepalive_expiry: seconds an idle connection is kept for reuse (shortened by a
            server's ``Keep-Alive: timeout=N``).
        ssl_context: for https; defaults to ``ssl.create_default_context()`` (system CAs).
        max_idle_per_origin: idle connections kept per origin; extra ones are closed.
        max_connections: open connections (idle or in use, all origins) at most; a request
            beyond it waits for one to be returned or closed (an idle connection to another
            origin is closed to make room). ``None``: no cap — concurrency is then bounded by
            the caller (``LM(max_concurrency=...)``, ``batch(concurrency=...)``).
        user_agent: the ``User-Agent`` sent unless the caller's headers give one.

    Bound to the event loop of its first use; use :func:`get_transport` to get the running loop's.
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
        user_agent: str = _USER_AGENT,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 (or None), got {max_connections}")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_expiry = keepalive_expiry
        self.max_idle_per_origin = max_idle_per_origin
        self._ssl_context = ssl_context
        self._user_agent = f"User-Agent: {user_agent}\r\n"
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._targets: dict[str, _Target] = {}
        self._loop: Any = None
        self._asyncio = False  # the loop is asyncio's: use AsyncioConnection
        self._closed = False
        self._to_close: list[_Conn] = []
        self.max_connections = max_connections
        self._open = 0  # connections open or being opened
        self._slot_waiters: deque[anyio.Event] = deque()

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        return f"<HTTP11Transport open={self._open} idle={idle}{' closed' if self._closed else ''}>"

    # -- public API --------------------------------------------------------------------------

    accepts_deadline = True

    def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """POST and read the whole response (``await transport.post(...)``).

        ``deadline`` (``anyio.current_time()`` clock) bounds everything — waiting for a pooled
        connection, connecting, sending, reading — and raises :class:`DeadlineExceeded`. On
        asyncio one timer on the connection enforces it; elsewhere (or with a read timeout, which
        needs a scope anyway) a cancel scope does. A plain ``def`` returning the coroutine: no
        frame of its own stays alive while the response is awaited.
        """
        target, head, connect_t, read_t = self._prepare(url, body, headers, timeout)
        if deadline is None or (self._asyncio and read_t is None):
            return self._post(target, head, body, connect_t, read_t, deadline)
        return self._post_scoped(target, head, body, connect_t, read_t, deadline)

    async def _post_scoped(
        self, target: _Target, head: bytes, body: bytes, connect_t: float | None, read_t: float | None, deadline: float
    ) -> Response:
        with anyio.CancelScope(deadline=deadline):
            return await self._post(target, head, body, connect_t, read_t, None)
        raise DeadlineExceeded(f"{target.safe_url}: no complete response before the call's deadline")

    async def _post(
        self,
        target: _Target,
        head: bytes,
        body: bytes,
        connect_t: float | None,
        read_t: float | None,
        deadline: float | None,
    ) -> Response:
        """The request on a pooled or new connection; ``deadline`` only on the asyncio timer path."""
        for attempt in (0, 1):
            conn = await self._acquire(target, connect_t, deadline, fresh=bool(attempt))
            try:
                if read_t is None:
                    return cast(Response, await self._exchange(conn, target, head, body, None, None, deadline))
                with anyio.CancelScope(deadline=anyio.current_time() + read_t) as scope:
                    return cast(Response, await self._exchange(conn, target, head, body, scope, read_t, None))
                raise TransportTimeout(f"{target.safe_url}: no response data for {read_t:g} s (read timeout)")
            except _Stale:
                continue  # the connection is already closed; retry once on a fresh one
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None = None
    ) -> _StreamingResponse:
        target, head, connect_t, read_t = self._prepare(url, body, headers, timeout)
        for attempt in (0, 1):
            conn = await self._acquire(target, connect_t, None, fresh=bool(attempt))
            try:
                if read_t is None:
                    resp = await self._exchange(conn, target, head, body, None, None, None, stream=True)
                    return cast(_StreamingResponse, resp)
                with anyio.CancelScope(deadline=anyio.current_time() + read_t) as scope:
                    return cast(
                        _StreamingResponse,
                        await self._exchange(conn, target, head, body, scope, read_t, None, stream=True),
                    )
                raise TransportTimeout(f"{target.safe_url}: no response headers for {read_t:g} s (read timeout)")
            except _Stale:
                continue
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close all idle connections; connections in use are closed when their call ends."""
        self._closed = True
        conns = [c for d in self._idle.values() for c in d] + self._to_close
        self._idle.clear()
        self._to_close = []
        for conn in conns:
            await self._discard(conn)

    # -- internals ---------------------------------------------------------------------------

    def _prepare(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> tuple[_Target, bytes, float | None, float | None]:
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
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
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
            if "\r" in value or "\n" in value or (name not in _VALID_NAMES and not _valid_name(name)):
                raise ValueError(f"invalid HTTP header {name!r}: names must be tokens, values one line")
            head.append(f"{name}: {value}\r\n")
        if ua:
            head.append(self._user_agent)
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        try:
            # The head and the body are sent together but kept apart until then: a call holds
            # no second copy of its body while it waits for the response.
            encoded = "".join(head).encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("HTTP header values must be latin-1 text") from None
        if timeout is None:
            return target, encoded, self.connect_timeout, self.read_timeout
        return target, encoded, timeout, timeout

    async def _acquire(self, target: _Target, connect_t: float | None, deadline: float | None, *, fresh: bool) -> _Conn:
        if self._to_close:
            pending, self._to_close = self._to_close, []
            for conn in pending:
                await self._discard(conn)
        while True:
            if not fresh:
                idle = self._idle.get(target.origin)
                if idle:
                    now = time.monotonic()
                    while idle and idle[0].expires < now:  # prune the oldest
                        await self._discard(idle.popleft())
                    while idle:
                        conn = idle.pop()
                        if conn.looks_alive():
                            conn.reused = True
                            return conn
                        await self._discard(conn)
            if self.max_connections is None or self._open < self.max_connections:
                break
            if deadline is None:
                await self._wait_for_slot()
            else:
                with anyio.CancelScope(deadline=deadline) as scope:
                    await self._wait_for_slot()
                if scope.cancelled_caught:
                    raise DeadlineExceeded(f"{target.safe_url}: no free connection before the call's deadline")
        self._open += 1
        try:
            return await self._connect(target, connect_t, deadline)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _wait_for_slot(self) -> None:
        """At the connection cap: free an idle connection to another origin, or wait."""
        for idle in self._idle.values():
            if idle:
                await self._discard(idle.popleft())
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

    async def _discard(self, conn: _Conn) -> None:
        """Close a connection for good (never reused) and free its slot."""
        if not conn.closed:  # a second discard is a no-op
            conn.closed = True
            self._open -= 1
            self._wake_one()
            await conn.aclose()

    async def _connect(self, target: _Target, connect_t: float | None, deadline: float | None) -> _Conn:
        stream: ByteStream
        limit = math.inf if connect_t is None else anyio.current_time() + connect_t
        if deadline is not None and deadline < limit:
            limit = deadline
        try:
            with anyio.fail_after(max(0.0, limit - anyio.current_time()) if limit != math.inf else None):
                if self._asyncio:
                    ctx = None
                    if target.tls:
                        if self._ssl_context is None:
                            self._ssl_context = ssl.create_default_context()
                        ctx = self._ssl_context
                    return await open_connection(target.host, target.port, target.origin, ctx)
                stream = await anyio.connect_tcp(target.host, target.port)
                if target.tls:
                    if self._ssl_context is None:
                        self._ssl_context = ssl.create_default_context()
                    try:
                        stream = await TLSStream.wrap(
                            stream,
                            hostname=target.host,
                            ssl_context=self._ssl_context,
                            standard_compatible=False,
                        )
                    except BaseException:
                        await _close_stream(stream)
                        raise
        except TimeoutError as exc:
            if deadline is not None and limit == deadline:
                raise DeadlineExceeded(f"cannot connect to {target.safe_url} before the call's deadline") from exc
            after = f" after {connect_t:g} s" if connect_t is not None else ""
            raise TransportTimeout(f"cannot connect to {target.safe_url}: timed out{after}") from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise TransportError(f"cannot connect to {target.safe_url}: {exc}") from exc
        return _Connection(stream, target.origin)

    async def _exchange(
        self,
        conn: _Conn,
        target: _Target,
        head: bytes,
        body: bytes,
        scope: anyio.CancelScope | None,
        read_t: float | None,
        deadline: float | None,
        *,
        stream: bool = False,
    ) -> Any:
        """Send the request and read the response (head only if ``stream``) on ``conn``.

        ``deadline``: only with an ``AsyncioConnection``, which enforces it with a timer."""
        conn.received = False
        if deadline is not None:
            cast(AsyncioConnection, conn).arm(deadline)
        try:
            await conn.send(head, body)
            if scope is not None:
                scope.deadline = anyio.current_time() + read_t  # type: ignore[operator]
            buf = conn.buf
            while True:  # skip interim 1xx responses
                idx = buf.find(b"\r\n\r\n")
                while idx < 0:
                    if len(buf) > _MAX_HEAD:
                        raise TransportError(f"{target.safe_url}: response headers exceed {_MAX_HEAD} bytes")
                    start = len(buf)
                    await conn.fill(scope, read_t)  # may append more than _RECV bytes
                    idx = buf.find(b"\r\n\r\n", max(0, start - 3))
                status, is_11, headers = _parse_head(bytes(buf[:idx]))
                del buf[: idx + 4]
                if status >= 200:
                    break
                if status == 101:
                    raise TransportError(f"{target.safe_url}: unexpected protocol switch (101)")
            kind, length = _framing(status, headers)
            keep_alive = _keep_alive(is_11, kind, headers)
            reader = _BodyReader(conn, kind, length)
            if stream:
                resp = _StreamingResponse(self, conn, status, headers, reader, keep_alive, read_t, target)
                if reader.done:
                    await resp._finish()
                return resp
            if kind == _LENGTH and len(buf) >= length:  # fast path: the whole body is here
                body = bytes(buf[:length])
                del buf[:length]
            else:
                parts = []
                while not reader.done:
                    parts.append(await reader.read_some(scope, read_t))
                body = b"".join(parts)
            enc = headers.get("content-encoding")
            if enc is not None and body:
                enc = enc.strip().lower()
                if enc in ("gzip", "deflate"):
                    decoder = _Decoder(enc)
                    body = decoder.feed(body) + decoder.flush()
        except TransportError:
            await self._discard(conn)
            raise
        except _NETWORK_ERRORS as exc:
            await self._discard(conn)
            if conn.reused and not conn.received:
                raise _Stale from exc
            if isinstance(exc, anyio.EndOfStream):
                msg = _CLOSED_EARLY
            else:
                msg = f"connection failed: {exc!r}"
            raise TransportError(f"{target.safe_url}: {msg}") from exc
        except BaseException:  # cancelled, timed out, malformed response: never reuse
            await self._discard(conn)
            raise
        if deadline is not None:
            cast(AsyncioConnection, conn).disarm()
        if not (keep_alive and self._release(conn, headers)):
            await self._discard(conn)
        return Response(status, headers, body)

    def _release(self, conn: _Conn, headers: Mapping[str, str]) -> bool:
        """Put a connection whose response was fully read in the idle pool; False: close it."""
        if self._closed or conn.buf:  # unsolicited bytes after the response: unusable
            return False
        expiry = self.keepalive_expiry
        ka = headers.get("keep-alive")
        if ka is not None:
            m = _KEEPALIVE_TIMEOUT.search(ka)
            if m:  # close a little before the server does
                expiry = min(expiry, int(m.group(1)) - 0.5)
        if expiry <= 0:
            return False
        conn.expires = time.monotonic() + expiry
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        idle.append(conn)
        if len(idle) > self.max_idle_per_origin:
            # Called from synchronous code: the close happens at the next acquire or aclose.
            self._to_close.append(idle.popleft())
        elif self._slot_waiters:
            self._wake_one()  # a waiter for this origin can take it
        return True

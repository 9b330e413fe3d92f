"""An HTTP/1.1 connection built directly on ``asyncio.Protocol`` (the asyncio side of ``_http11``).

Why: on asyncio, anyio's ``SocketStream`` puts a stream object, a read queue, two
``asyncio.Event`` objects and a future per ``receive`` on top of asyncio's own transport and
protocol; with 10 000 calls in flight that is several KB and tens of µs per call. Here the
connection *is* the protocol: ``data_received`` appends to the buffer the response parser in
``_http11`` reads, and a read waits on one future. The same object is what ``_http11`` pools.
Trio keeps the anyio stream path (``_http11._Connection``).

The interface mirrors ``_http11._Connection``: ``buf``, ``received``, ``reused``, ``expires``,
``closed``, ``origin``, ``looks_alive()``, ``fill()``, ``send()``, ``aclose()``. ``fill`` raises
``anyio.EndOfStream`` on a clean EOF and an ``OSError`` (or ``anyio.BrokenResourceError``) when
the connection broke, exactly as the anyio stream does, so the parser's error handling is shared.
Waiting is a plain ``await`` on an asyncio future, so anyio cancel scopes (timeouts, caller
cancellation) apply as to any asyncio await.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import select
import ssl
from typing import Any

import anyio

from ._base import DeadlineExceeded

__all__ = ["AsyncioConnection", "open_connection", "readable"]

if hasattr(select, "poll"):

    def readable(fd: int) -> bool:
        """Whether ``fd`` has something to read (data, EOF or an error), without waiting."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

else:  # pragma: no cover - Windows

    def readable(fd: int) -> bool:
        """Whether ``fd`` has something to read (data, EOF or an error), without waiting."""
        return bool(select.select([fd], [], [], 0)[0])


_NO_CONTEXT = contextvars.Context()

# Stop reading from the socket while this much response data waits unread (a slow stream reader).
_HIGH_WATER = 256 * 1024


class AsyncioConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; its own ``asyncio.Protocol``."""

    __slots__ = (
        "_drain",
        "_eof",
        "_exc",
        "_expired",
        "_fd",
        "_loop",
        "_reading_paused",
        "_timer",
        "_transport",
        "_waiter",
        "_write_paused",
        "buf",
        "closed",
        "expires",
        "origin",
        "received",
        "reused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.buf = bytearray()
        self.reused = False
        self.received = False  # any byte of the current response arrived
        self.expires = 0.0
        self.closed = False
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None  # a pending fill()
        self._drain: asyncio.Future[None] | None = None  # a send() waiting for the write buffer
        self._eof = False  # no more data will arrive (EOF or connection lost)
        self._exc: BaseException | None = None  # why the connection was lost, if it broke
        self._write_paused = False
        self._reading_paused = False
        self._fd = -1
        self._timer: asyncio.TimerHandle | None = None  # the armed deadline
        self._expired = False

    # -- asyncio.Protocol callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.received = True
        if len(self.buf) > _HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and not isinstance(exc, ssl.SSLEOFError):  # a ragged TLS EOF is an EOF
            self._exc = exc
        self._fd = -1
        self._wake()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _deadline_passed(self) -> None:
        self._timer = None
        self._expired = True
        self._wake()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the interface _http11 uses ------------------------------------------------------------

    def looks_alive(self) -> bool:
        """False when the idle peer has closed, reset, or sent unsolicited bytes.

        Also polls the socket (zero timeout): an EOF the event loop has not dispatched yet
        still counts.
        """
        if self.buf or self._eof or self._transport is None or self._transport.is_closing():
            return False
        if self._fd < 0:
            return True
        try:
            return not readable(self._fd)
        except (OSError, ValueError):
            return False

    # -- the caller's deadline --------------------------------------------------------------------

    def arm(self, deadline: float) -> None:
        """Until :meth:`disarm`, ``fill`` and ``send`` raise ``DeadlineExceeded`` once the loop's
        clock reaches ``deadline``. One timer per request instead of a cancel scope: a scope costs
        ~1 KB per request in flight, this ~0.2 KB."""
        self._expired = False
        # an empty context: the callback needs none, and copying the caller's would keep its
        # context variables alive as long as the timer
        self._timer = self._loop.call_at(deadline, self._deadline_passed, context=_NO_CONTEXT)

    def disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _raise_expired(self) -> None:
        raise DeadlineExceeded("no complete response before the call's deadline")

    def _raise_eof(self) -> None:
        exc = self._exc
        if exc is None:
            raise anyio.EndOfStream
        if isinstance(exc, OSError):
            raise exc  # ConnectionResetError, ssl.SSLError, ...: what the anyio stream raises
        raise anyio.BrokenResourceError(repr(exc)) from exc

    async def fill(self, scope: anyio.CancelScope | None, timeout: float | None) -> None:
        """Wait until at least one more byte is in ``buf``; EOF raises ``anyio.EndOfStream``."""
        buf = self.buf
        n = len(buf)
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        while len(buf) == n:
            if self._expired:
                self._raise_expired()
            if self._eof:
                self._raise_eof()
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if scope is not None and timeout is not None:
            scope.deadline = anyio.current_time() + timeout

    async def send(self, head: bytes, body: bytes) -> None:
        """Write the request; waits only while the kernel and transport buffers are full."""
        transport = self._transport
        if transport is None or self._eof or transport.is_closing():
            self._raise_eof_on_send()
        assert transport is not None
        # One write, one syscall: the joined copy is short-lived (the transport keeps only what
        # the kernel did not take).
        transport.write(head + body if body else head)
        while self._write_paused:
            if self._expired:
                self._raise_expired()
            if self._eof:
                self._raise_eof_on_send()
            drain = self._drain = self._loop.create_future()
            await drain

    def _raise_eof_on_send(self) -> None:
        if self._exc is not None:
            self._raise_eof()
        raise anyio.BrokenResourceError("the connection is closed")

    async def aclose(self) -> None:
        """Close now. Unsent data (a half-written request) is dropped: the peer sees a reset."""
        self.disarm()
        transport = self._transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        self._eof = True
        self._wake()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def open_connection(
    host: str,
    port: int,
    origin: tuple[str, str, int],
    ssl_context: ssl.SSLContext | None,
) -> AsyncioConnection:
    """Connect (and TLS-handshake when ``ssl_context`` is given) on the running asyncio loop.

    A host name may resolve to several addresses: they are raced Happy-Eyeballs style (RFC 8305,
    250 ms apart), as anyio's ``connect_tcp`` does; an IP literal skips that machinery.
    """
    loop = asyncio.get_running_loop()
    conn = AsyncioConnection(loop, origin)
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs["ssl"] = ssl_context
        kwargs["server_hostname"] = host
    if not _is_ip(host):
        kwargs["happy_eyeballs_delay"] = 0.25
    await loop.create_connection(lambda: conn, host, port, **kwargs)
    return conn

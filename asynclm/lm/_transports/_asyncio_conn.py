"""HTTP/1.1 connections driven directly by the asyncio event loop (the asyncio side of ``_http11``).

Why: on asyncio, anyio's ``SocketStream`` puts a stream object, a read queue, two
``asyncio.Event`` objects and a future per ``receive`` on top of asyncio's own transport and
protocol; with 10 000 calls in flight that is several KB and tens of µs per call. Here a
connection appends what arrives to ``buf``, which ``_http11`` feeds to the response parser, and a
read waits on one future. The same object is what ``_http11`` pools. Two kinds:

* ``SocketConnection`` — plain TCP: a non-blocking socket registered with the loop's
  selector (``add_reader``), no asyncio transport at all (the lightest; see its docstring);
* ``ProtocolConnection`` — TLS, or a loop without ``add_reader``: its own
  ``asyncio.Protocol`` on an asyncio transport (asyncio's TLS decrypts every record as it
  arrives, so nothing the server sent stays hidden from ``buf``).

The interface is the one ``_http11`` uses on trio too (``_trio_conn``): ``buf``, ``reused``,
``expires``, ``closed``, ``origin``, ``parser``, ``looks_alive()``, ``fill()``, ``send()``,
``send_more()``, ``close()``. ``fill`` raises ``anyio.EndOfStream`` on a clean EOF and an
``OSError`` (or ``anyio.BrokenResourceError``) when the connection broke. Waiting is a plain
``await`` on an asyncio future, so anyio cancel scopes (timeouts, caller cancellation) apply as to
any asyncio await; the caller's whole deadline is one timer (``arm``/``disarm``).
"""
from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
from typing import Any, NoReturn

import anyio

from ._base import DeadlineExceeded, TransportError
from ._connect import connect_socket, readable
from ._parser import ResponseParser
from ._ssl import describe_tls_error

__all__ = ["AsyncioConnection", "ProtocolConnection", "SocketConnection", "open_connection"]

# Stop reading from the socket while this much response data waits unread (a slow stream reader).
_HIGH_WATER = 256 * 1024
_RECV = 65536  # bytes asked of the kernel per read


class AsyncioConnection:
    """What both asyncio connection kinds share: the buffer, waiting, EOF and deadline handling.

    Subclasses provide the I/O: ``_pause_reading``, ``_resume_reading``, ``_closing``,
    ``_write`` and ``close``.
    """

    __slots__ = (
        "_context",
        "_drain",
        "_eof",
        "_exc",
        "_expired",
        "_fd",
        "_loop",
        "_reading_paused",
        "_timer",
        "_waiter",
        "_write_paused",
        "buf",
        "closed",
        "expires",
        "origin",
        "parser",
        "reused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.buf = bytearray()
        self.reused = False
        self.expires = 0.0
        self.closed = False
        self.parser = ResponseParser()
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None  # a pending fill()
        self._drain: asyncio.Future[None] | None = None  # a send() waiting for the write buffer
        self._eof = False  # no more data will arrive (EOF or connection lost)
        self._exc: BaseException | None = None  # why the connection was lost, if it broke
        self._write_paused = False
        self._reading_paused = False
        self._fd = -1
        self._timer: asyncio.TimerHandle | None = None  # the armed deadline
        self._expired = False
        # The loop runs our callbacks in this empty context, not in a copy of the caller's: a
        # copy would keep the context variables of whichever call opened the connection (call
        # ids, usage trackers, settings) alive as long as the pooled connection. One per
        # connection: a context can be entered by one thread at a time, and loops run in many.
        self._context = contextvars.Context()

    # -- the I/O, per subclass -----------------------------------------------------------------

    def _pause_reading(self) -> None:
        raise NotImplementedError

    def _resume_reading(self) -> None:
        raise NotImplementedError

    def _closing(self) -> bool:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        """Write without waiting; sets ``_write_paused`` while too much is buffered."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- events ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._pause_reading()
        self._wake()
        self._wake_drain()  # a response that arrives during the upload ends the wait for it

    def _lost(self, exc: BaseException | None) -> None:
        """The connection ended: EOF (``exc`` None) or broke."""
        self._eof = True
        if exc is not None and not isinstance(exc, ssl.SSLEOFError):  # a ragged TLS EOF is an EOF
            self._exc = exc
        self._fd = -1
        self._wake()
        self._wake_drain()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the caller's deadline -------------------------------------------------------------------

    def arm(self, deadline: float) -> None:
        """Until ``disarm``, ``fill`` and ``send`` raise ``DeadlineExceeded`` once the loop's
        clock reaches ``deadline``. One timer per request instead of a cancel scope: a scope costs
        ~1 KB per request in flight, this ~0.2 KB."""
        self._expired = False
        self._timer = self._loop.call_at(deadline, self._deadline_passed, context=self._context)

    def disarm(self) -> None:
        self._expired = False  # it may have passed after the last read: not the next request's
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _deadline_passed(self) -> None:
        self._timer = None
        self._expired = True
        self._wake()
        self._wake_drain()

    # -- the interface _http11 uses --------------------------------------------------------------

    def looks_alive(self) -> bool:
        """False when the idle peer has closed, reset, or sent unsolicited bytes.

        Also polls the socket (zero timeout): an EOF the event loop has not dispatched yet
        still counts.
        """
        if self.buf or self._eof or self._closing():
            return False
        if self._fd < 0:
            return True
        try:
            return not readable(self._fd)
        except (OSError, ValueError):
            return False

    def _raise_eof(self) -> NoReturn:
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
        if self._reading_paused:
            self._reading_paused = False
            self._resume_reading()
        while len(buf) == n:
            if self._expired:
                raise DeadlineExceeded("no complete response before the call's deadline")
            if self._eof:
                self._raise_eof()
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if scope is not None and timeout is not None:
            scope.deadline = anyio.current_time() + timeout

    async def send(self, head: bytes, body: bytes) -> bool:
        """Write the request. Returns ``False`` if response bytes arrived before all of it was
        written (``send_more`` waits on), ``True`` once the kernel has taken all of it."""
        if self._eof or self._closing():
            self._raise_eof_on_send()
        # One write, one syscall: the joined copy is short-lived (only what the kernel did not
        # take is kept).
        self._write(head + body if body else head)
        return await self.send_more()

    async def send_more(self) -> bool:
        while self._write_paused:
            if self._expired:
                raise DeadlineExceeded("no complete response before the call's deadline")
            if self.buf:
                return False
            if self._eof:
                self._raise_eof_on_send()
            drain = self._drain = self._loop.create_future()
            await drain
        return True

    def _raise_eof_on_send(self) -> NoReturn:
        if self._exc is not None:
            self._raise_eof()
        raise anyio.BrokenResourceError("the connection is closed")


class ProtocolConnection(AsyncioConnection, asyncio.Protocol):
    """A connection that is its own ``asyncio.Protocol`` on an asyncio transport: for TLS, and
    for event loops without ``add_reader`` (Windows' proactor). (Its transport's callbacks run in
    a copy of the opening call's context: asyncio offers no way to choose it.)"""

    __slots__ = ("_transport",)

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int]) -> None:
        super().__init__(loop, origin)
        self._transport: asyncio.Transport | None = None

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        self._wake_drain()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # the I/O

    def _pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def _closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def close(self) -> None:
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


class SocketConnection(AsyncioConnection):
    """A plain-TCP connection driven straight off the event loop's selector (``add_reader`` /
    ``add_writer`` on a non-blocking socket).

    Why not an asyncio transport: measured here, an asyncio socket transport with its protocol
    holds ~1.7 KB per open connection (its attribute dict, the ``extra`` dict with both socket
    addresses, a weak-value registry entry, a socket wrapper, two bound callbacks); this holds
    ~0.8 KB. That is ~1 KB less per call in flight, with one Python call per read instead of three.
    """

    __slots__ = ("_sock", "_wbuf")

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int], sock: socket.socket) -> None:
        super().__init__(loop, origin)
        self._sock: socket.socket | None = sock
        self._wbuf = bytearray()  # what the kernel did not take yet
        self._fd = sock.fileno()
        self._context.run(loop.add_reader, self._fd, self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:  # pragma: no cover - the reader is removed before the socket closes
            return
        try:
            data = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._shut(exc)
            return
        if data:
            self.data_received(data)
        else:
            self._shut(None)  # EOF: HTTP/1.1 never writes after it, so close now

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:  # pragma: no cover
            return
        try:
            n = sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._shut(exc)
            return
        del self._wbuf[:n]
        if not self._wbuf:
            self._loop.remove_writer(self._fd)
            self._write_paused = False
            self._wake_drain()

    def _shut(self, exc: BaseException | None) -> None:
        """Unregister and close the socket; then it counts as lost (EOF when ``exc`` is None)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            if exc is not None:  # broke while writing: keep what the peer sent before (a 413)
                _read_what_is_left(sock, self.buf)
            fd = self._fd
            self._loop.remove_reader(fd)
            if self._wbuf:
                self._loop.remove_writer(fd)
                self._wbuf.clear()
            sock.close()
        self._lost(exc)

    def _pause_reading(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._fd)

    def _resume_reading(self) -> None:
        if self._sock is not None:
            self._context.run(self._loop.add_reader, self._fd, self._on_readable)

    def _closing(self) -> bool:
        return self._sock is None

    def _write(self, data: bytes) -> None:
        sock = self._sock
        assert sock is not None
        if self._wbuf:  # still draining: keep the order
            self._wbuf += data
            return
        try:
            n = sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._write_paused = True  # send_more reports it, or the response that came first
            self._shut(exc)
            return
        if n < len(data):
            self._wbuf += memoryview(data)[n:]
            self._write_paused = True
            self._context.run(self._loop.add_writer, self._fd, self._on_writable)

    def close(self) -> None:
        """Close now; unsent data is dropped."""
        self.disarm()
        self._shut(None)


def _read_what_is_left(sock: socket.socket, buf: bytearray) -> None:
    """Append what the kernel still holds for ``sock`` (it is readable before a reset's error)."""
    while True:
        try:
            data = sock.recv(_RECV)
        except OSError:
            return
        if not data:
            return
        buf += data


async def open_connection(
    host: str,
    port: int,
    origin: tuple[str, str, int],
    ssl_context: ssl.SSLContext | None,
    where: str,
) -> AsyncioConnection:
    """Connect (and TLS-handshake when ``ssl_context`` is given) on the running asyncio loop.

    Plain TCP on a loop with ``add_reader`` gives a ``SocketConnection``; TLS (or a proactor
    loop) a ``ProtocolConnection`` on the socket connected here. ``where`` names the
    destination in error messages.
    """
    loop = asyncio.get_running_loop()
    if _is_proactor(loop):  # pragma: no cover - Windows: no add_reader, asyncio connects
        kwargs: dict[str, Any] = {"ssl": ssl_context, "server_hostname": host} if ssl_context is not None else {}
        conn = ProtocolConnection(loop, origin)
        try:
            await loop.create_connection(lambda: conn, host, port, **kwargs)
        except OSError as exc:
            raise TransportError(f"{where}: connect failed: {describe_tls_error(exc)}", phase="connect") from exc
        return conn
    sock = await connect_socket(host, port, where)
    if ssl_context is None:
        return SocketConnection(loop, origin, sock)
    conn = ProtocolConnection(loop, origin)
    try:
        await loop.create_connection(lambda: conn, sock=sock, ssl=ssl_context, server_hostname=host)
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        raise TransportError(
            f"{where}: TLS handshake failed: {describe_tls_error(exc)}", phase="TLS handshake"
        ) from exc
    except BaseException:
        sock.close()
        raise
    return conn


_PROACTOR = getattr(asyncio, "ProactorEventLoop", None)


def _is_proactor(loop: asyncio.AbstractEventLoop) -> bool:
    return _PROACTOR is not None and isinstance(loop, _PROACTOR)

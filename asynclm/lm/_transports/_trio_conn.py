"""HTTP/1.1 connections on trio: a bare non-blocking socket waited on with ``trio.lowlevel``
(the trio side of ``_http11``, as ``_asyncio_conn`` is the asyncio side).

Why not anyio's (or trio's) socket stream: with 10 000 calls in flight every layer is held once
per call — anyio's stream wrapper, trio's ``SocketStream``, its ``SocketType`` — and every read goes
through all of them. Here a read is ``sock.recv`` and, only when nothing is there yet,
``wait_readable``.

TLS is a ``ssl.SSLObject`` on memory buffers driven here, not a TLS stream: every decrypted byte
is moved to ``buf`` as soon as its record arrives, so bytes the server sent beyond its response
are seen (an unsolicited response cannot hide, still encrypted, inside a TLS layer and be read as
the answer to the next request).

The interface is the one ``_http11`` uses on asyncio too: ``buf``, ``reused``, ``expires``,
``closed``, ``origin``, ``parser``, ``looks_alive()``, ``fill()``, ``send()``, ``send_more()``,
``close()``. ``fill`` raises ``anyio.EndOfStream`` at the end of the connection and ``OSError``
when it broke.
"""

from __future__ import annotations

import socket
import ssl

import anyio
import trio

from ._base import TransportError
from ._connect import connect_socket, readable
from ._parser import ResponseParser
from ._ssl import describe_tls_error

__all__ = ["TrioConnection", "deadline_scope", "open_connection"]

_RECV = 65536  # bytes asked of the kernel per read
_NOTHING = memoryview(b"")
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
# The call's deadline scope: trio's own, not anyio's wrapper around it (one per call; measured here
# a trio scope costs ~13 µs to enter and leave, anyio's wrapper ~5 µs more).
deadline_scope = trio.CancelScope


class TrioConnection:
    """One HTTP/1.1 connection on trio: a non-blocking socket, with TLS on memory buffers when
    ``tls`` is given (its handshake already done by ``open_connection``)."""

    __slots__ = (
        "_eof",
        "_in",
        "_out",
        "_pending",
        "_sock",
        "_tls",
        "_waiting_for_answer",
        "buf",
        "closed",
        "expires",
        "origin",
        "parser",
        "reused",
    )

    def __init__(
        self,
        sock: socket.socket,
        origin: tuple[str, str, int],
        tls: ssl.SSLObject | None = None,
        incoming: ssl.MemoryBIO | None = None,
        outgoing: ssl.MemoryBIO | None = None,
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._in = incoming
        self._out = outgoing
        self._pending = _NOTHING  # request bytes not yet taken by the kernel
        self._waiting_for_answer = False  # a request was just sent: nothing can be there yet
        self._eof = False
        self.origin = origin
        self.buf = bytearray()
        self.reused = False
        self.expires = 0.0
        self.closed = False
        self.parser = ResponseParser()

    def looks_alive(self) -> bool:
        """False when the idle peer has closed, reset, or sent anything (TLS records included)."""
        if self.buf or self._eof:
            return False
        if self._in is not None and (self._in.pending or self._tls.pending()):  # type: ignore[union-attr]
            return False
        try:
            return not readable(self._sock.fileno())
        except (OSError, ValueError):
            return False

    async def fill(self, scope: anyio.CancelScope | None, timeout: float | None) -> None:
        """Wait until at least one more response byte is in ``buf``."""
        sock = self._sock
        buf = self.buf
        n = len(buf)
        waited = False
        if self._waiting_for_answer:  # skip a recv that would fail (one syscall and an exception)
            self._waiting_for_answer = False
            await _wait_readable(sock)
            waited = True
        while len(buf) == n:
            if self._eof:
                raise anyio.EndOfStream
            try:
                data = sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                data = None  # wait outside the except block: it would hold the exception meanwhile
            if data is None:
                await _wait_readable(sock)
                waited = True
                continue
            if not data:
                self._eof = True
                if self._in is not None:
                    self._in.write_eof()
                    self._decrypt()
                continue
            if self._tls is None:
                buf += data
            else:
                self._in.write(data)  # type: ignore[union-attr]
                self._decrypt()
        if not waited:
            await _checkpoint_if_cancelled()  # data was already there: still honour cancellation
        if scope is not None and timeout is not None:
            scope.deadline = anyio.current_time() + timeout

    def _decrypt(self) -> None:
        """Move every complete TLS record's plaintext into ``buf``."""
        tls = self._tls
        assert tls is not None
        buf = self.buf
        try:
            while True:
                chunk = tls.read(_RECV)
                if not chunk:
                    break
                buf += chunk
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or a ragged EOF
            self._eof = True
        out = self._out
        if out is not None and out.pending:  # a post-handshake reply (key update): best effort
            try:
                self._sock.send(out.read())
            except OSError:
                pass

    async def send(self, head: bytes, body: bytes) -> bool:
        """Write the request. Returns ``False`` if response bytes arrived before all of it was
        written (``send_more`` continues), ``True`` once the kernel has taken all of it."""
        data = head + body if body else head
        if self._tls is not None:
            self._tls.write(data)
            data = self._out.read()  # type: ignore[union-attr]
        self._pending = memoryview(data)
        return await self.send_more()

    async def send_more(self) -> bool:
        sock = self._sock
        pending = self._pending
        while pending:
            try:
                n = sock.send(pending)
            except (BlockingIOError, InterruptedError):
                n = -1  # wait outside the except block: it would hold the exception meanwhile
            except OSError:
                # the peer may have answered before it closed (a 413 before the upload ended)
                while self._receive_nowait():
                    pass
                if not self.buf:
                    raise
                self._pending = _NOTHING
                self._eof = True
                return False
            if n < 0:
                if await self._wait_writable_or_readable():
                    self._receive_nowait()
                    if self.buf or self._eof:
                        return False
                continue
            pending = self._pending = pending[n:]
        self._pending = _NOTHING  # an empty slice still holds the whole request
        self._waiting_for_answer = True
        return True

    async def _wait_writable_or_readable(self) -> bool:
        """Wait until the socket can take more, or has something to read (``True``)."""
        sock = self._sock
        got_data = False
        async with trio.open_nursery() as nursery:

            async def watch_reads() -> None:
                nonlocal got_data
                await _wait_readable(sock)
                got_data = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_reads)
            await _wait_writable(sock)
            nursery.cancel_scope.cancel()
        return got_data

    def _receive_nowait(self) -> bool:
        """Move what is readable now into ``buf``; ``False`` if there was nothing (or an error:
        the next send or read reports it)."""
        try:
            data = self._sock.recv(_RECV)
        except OSError:
            return False
        if not data:
            self._eof = True
            return False
        if self._tls is None:
            self.buf += data
        else:
            self._in.write(data)  # type: ignore[union-attr]
            self._decrypt()
        return True

    def close(self) -> None:
        """Close now; unsent data is dropped."""
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        self._eof = True


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            n = -1
        if n < 0:
            await _wait_writable(sock)
        else:
            view = view[n:]


async def _recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            pass
        await _wait_readable(sock)


async def open_connection(
    host: str, port: int, origin: tuple[str, str, int], ssl_context: ssl.SSLContext | None, where: str
) -> TrioConnection:
    """Connect (and TLS-handshake when ``ssl_context`` is given) on the running trio loop."""
    sock = await connect_socket(host, port, where)
    if ssl_context is None:
        return TrioConnection(sock, origin)
    try:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ssl_context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=host)
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if outgoing.pending:
                await _send_all(sock, outgoing.read())
            if done:
                break
            data = await _recv(sock)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        reason = describe_tls_error(exc)
        raise TransportError(f"{where}: TLS handshake failed: {reason}", phase="TLS handshake") from exc
    except BaseException:
        sock.close()
        raise
    return TrioConnection(sock, origin, tls, incoming, outgoing)

"""A minimal HTTP/1.1 server protocol on ``asyncio.Protocol``: request parsing (keep-alive,
``Content-Length`` and chunked bodies, ``Expect: 100-continue``) and response writing."""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._types import Headers

if TYPE_CHECKING:
    from ._core import ServerCore

try:  # orjson is optional: about 3x faster for the JSON this server builds and parses.
    import orjson  # type: ignore[import-not-found, unused-ignore]

    dumps: Callable[[Any], bytes] = orjson.dumps
    loads: Callable[[bytes], Any] = orjson.loads
    JSONDecodeError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - depends on the environment
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def dumps(obj: Any) -> bytes:
        return _encoder.encode(obj).encode()

    loads = json.loads
    JSONDecodeError = ValueError


_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024

_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}})


def frame_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------
# The protocol: one instance per TCP connection
# --------------------------------------------------------------------------------------------------


@dataclass
class RawRequest:
    method: str
    path: str
    headers: Headers
    body: bytes
    keep_alive: bool


class Exchange:
    """One request/response in progress on a connection."""

    __slots__ = ("api", "conn", "counted", "finished", "keep_alive", "request_id", "task", "timer")

    def __init__(self, conn: Connection, keep_alive: bool, request_id: str, api: str = "openai") -> None:
        self.api = api  # "openai" or "anthropic": the format of error bodies and the request-id header
        self.conn = conn
        self.keep_alive = keep_alive
        self.request_id = request_id
        self.counted = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def finish(self, *, disconnected: bool = False) -> None:
        """Mark the exchange over (exactly once): update counters, stop its timer/task."""
        if self.finished:
            return
        self.finished = True
        core = self.conn.core
        if self.counted:
            core.in_flight -= 1
        if disconnected:
            core.client_disconnects += 1
        if self.timer is not None:
            self.timer.cancel()
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # -- writing ---------------------------------------------------------------------------------

    def base_headers(self, content_type: str) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", content_type),
            ("request-id" if self.api == "anthropic" else "x-request-id", self.request_id),
        ]
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        return headers

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        if self.finished:
            return
        headers = self.base_headers(content_type)
        headers.extend(extra)
        headers.append(("Content-Length", str(len(body))))
        # Counters first: the client may see the response (and a test read the counters) before
        # this thread runs another line.
        self.finish()
        self.conn.write(response_head(status, headers) + body)
        self.conn.response_done(self.keep_alive)

    def send_error(self, status: int, message: str, error_type: str, code: str | None = None) -> None:
        if self.api == "anthropic":
            from ._anthropic import ERRORS, error_body as anthropic_error_body

            kind = ERRORS.get(status, ("api_error" if status >= 500 else "invalid_request_error", ""))[0]
            self.send(status, anthropic_error_body(message, kind, self.request_id))
            return
        self.send(status, error_body(message, error_type, code))

    def chunked_head(self, status: int, content_type: str) -> bytes:
        """The head of a ``Transfer-Encoding: chunked`` response (to be written by the caller)."""
        headers = self.base_headers(content_type)
        headers += [("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")]
        return response_head(status, headers)

    def end_chunked(self, last: bytes = b"") -> None:
        """Write ``last`` (already framed) and the final empty chunk: the response is complete."""
        if self.finished:
            return
        self.finish()  # before the last write, as in send()
        self.conn.write(last + b"0\r\n\r\n")
        self.conn.response_done(self.keep_alive)

    def abort(self, reset: bool) -> None:
        """Close the connection without finishing the response (not a client disconnect)."""
        self.finish()
        self.conn.close(reset=reset)


class Connection(asyncio.Protocol):
    """One TCP connection: parses requests one at a time (a pipelined request waits in the buffer
    until the previous response is complete) and hands each to ``ServerCore.dispatch``."""

    __slots__ = (
        "buf",
        "busy",
        "closed",
        "continued",
        "core",
        "exchange",
        "head",
        "processing",
        "scheduled",
        "transport",
    )

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.processing = False
        self.closed = False
        self.exchange: Exchange | None = None
        # The parsed head of a request whose body is still arriving.
        self.head: tuple[str, str, str, Headers, int] | None = None
        self.continued = False
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.core.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def eof_received(self) -> None:
        # The client closed its side. Noticed here, synchronously, rather than in connection_lost
        # (one loop iteration later): see data_received.
        self._peer_gone()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.core.connections.discard(self)
        self._peer_gone()

    def _peer_gone(self) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            # The peer went away before the response was complete.
            exchange.finish(disconnected=True)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy and not self.scheduled:
            # Dispatch on the next loop iteration, after every event of this one: a client that
            # abandons a request and sends its next one on another connection must not be seen
            # with both in flight just because the new request came first in the same poll.
            self.scheduled = True
            self.core.call_soon(self._scheduled_process)

    def _scheduled_process(self) -> None:
        self.scheduled = False
        self.process()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self, *, reset: bool = False, now: bool = False) -> None:
        """Close the connection: gracefully (after pending writes), or ``now`` (pending writes are
        dropped), or with ``reset`` (now, and with a TCP RST)."""
        if self.closed or self.transport is None:
            return
        self.closed = True
        if now and not reset:
            self.transport.abort()
        elif reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()

    def response_done(self, keep_alive: bool) -> None:
        if not keep_alive:
            self.close()
            return
        self.busy = False
        self.exchange = None
        if not self.processing and self.buf:
            self.process()

    def process(self) -> None:
        """Parse and dispatch complete requests, one at a time (responses stay in order)."""
        self.processing = True
        try:
            while not self.busy and not self.closed and self.buf:
                try:
                    raw = self._parse()
                except BadRequest as exc:
                    self.busy = True
                    exchange = Exchange(self, False, "req_fake_bad")
                    self.exchange = exchange
                    exchange.send_error(exc.status, exc.message, "invalid_request_error")
                    return
                if raw is None:
                    return
                self.busy = True
                self.core.dispatch(self, raw)
        finally:
            self.processing = False

    def _parse(self) -> RawRequest | None:
        buf = self.buf
        head = self.head
        if head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise BadRequest(431, "request headers too large")
                return None
            head = self.head = self._parse_head(end)
        method, path, version, headers, start = head
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = self._dechunk(start)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise BadRequest(400, "invalid Content-Length header") from None
            if length < 0 or length > _MAX_BODY:
                raise BadRequest(413, f"request body of {length} bytes is too large")
            consumed = start + length
            if len(buf) < consumed:
                if not self.continued and headers.get("expect", "").lower() == "100-continue":
                    self.continued = True
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return None
            body = bytes(buf[start:consumed])
        del buf[:consumed]
        self.head = None
        self.continued = False
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        return RawRequest(method, path, headers, body, keep_alive)

    def _parse_head(self, end: int) -> tuple[str, str, str, Headers, int]:
        request_line, _, rest = self.buf[:end].decode("latin-1").partition("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, f"malformed HTTP request line {request_line[:100]!r}")
        raw: list[tuple[str, str]] = []
        mapping: dict[str, str] = {}
        if rest:
            for line in rest.split("\r\n"):
                name, sep, value = line.partition(":")
                if not sep:
                    raise BadRequest(400, f"malformed header line {line[:100]!r}")
                name = name.strip()
                value = value.strip()
                raw.append((name, value))
                key = name.lower()
                mapping[key] = f"{mapping[key]}, {value}" if key in mapping else value
        return parts[0], parts[1], parts[2], Headers._build(raw, mapping), end + 4

    def _dechunk(self, pos: int) -> tuple[bytes, int] | None:
        buf = self.buf
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size_field = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            if not size_field or size_field.strip(b"0123456789abcdefABCDEF"):
                raise BadRequest(400, f"malformed chunk size {size_field[:20]!r} in chunked request body")
            size = int(size_field, 16)
            pos = eol + 2
            if size == 0:
                # Skip trailers up to the blank line.
                end = buf.find(b"\r\n\r\n", pos - 2)
                if end < 0:
                    return None
                return bytes(body), end + 4
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos : pos + size]
            if len(body) > _MAX_BODY:
                raise BadRequest(413, "request body too large")
            pos += size + 2

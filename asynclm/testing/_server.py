"""``FakeOpenAIServer``: a real OpenAI-compatible HTTP/1.1 server on loopback, for tests and benchmarks.

It is deliberately small and fast: a raw :class:`asyncio.Protocol` with a minimal HTTP/1.1 parser
(keep-alive, ``Content-Length`` and chunked request bodies, no pipelining surprises), one event loop
in a daemon thread (or the main thread of a separate process, see :mod:`asynclm.testing.server`).
Non-streaming responses are sent from timer callbacks, without a task per request, so that a
benchmark can push thousands of requests per second through it on a small machine.

Endpoints (any path prefix is accepted, so ``base_url`` with or without ``/v1`` works):

- ``POST .../chat/completions`` — JSON response, or server-sent events when ``"stream": true``
  (``data: {chunk}`` lines, a final usage chunk when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``).
- ``GET .../models`` — the configured model list.
- ``GET /_fake/stats`` — the counters and the server process's CPU time, as JSON (used by
  :meth:`FakeOpenAIServer.spawn` handles; not counted as a request).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import inspect
import json
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from asynclm.runtime import sync_twin

try:  # orjson is optional: about 3x faster for the JSON this server builds and parses.
    import orjson  # type: ignore[import-not-found, unused-ignore]

    _dumps: Callable[[Any], bytes] = orjson.dumps
    _loads: Callable[[bytes], Any] = orjson.loads
    _JSONDecodeError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - depends on the environment
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def _dumps(obj: Any) -> bytes:
        return _encoder.encode(obj).encode()

    _loads = json.loads
    _JSONDecodeError = ValueError


__all__ = [
    "DEFAULT_FAULTS",
    "FakeOpenAIServer",
    "FakeRequest",
    "Fault",
    "Headers",
    "Reply",
    "SpawnedFakeServer",
]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024

FaultKind = Literal["status", "reset", "hang", "malformed_json", "truncated"]


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """Request headers: a case-insensitive read-only mapping that keeps the raw header list.

    ``headers["authorization"]`` and ``headers["Authorization"]`` are the same; a repeated header
    maps to its values joined by ``", "``. :attr:`raw` is the list of ``(name, value)`` pairs as
    received, in order, with their original spelling.
    """

    __slots__ = ("_map", "raw")

    def __init__(self, raw: Iterable[tuple[str, str]] = ()) -> None:
        self.raw: list[tuple[str, str]] = list(raw)
        self._map: dict[str, str] = {}
        for name, value in self.raw:
            key = name.lower()
            self._map[key] = f"{self._map[key]}, {value}" if key in self._map else value

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    @classmethod
    def _build(cls, raw: list[tuple[str, str]], mapping: dict[str, str]) -> Headers:
        headers = cls.__new__(cls)
        headers.raw = raw
        headers._map = mapping
        return headers

    def get(self, name: str, default: Any = None) -> Any:  # faster than Mapping.get's try/except
        return self._map.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def get_all(self, name: str) -> list[str]:
        """Every value received for ``name`` (case-insensitive), in order."""
        key = name.lower()
        return [value for n, value in self.raw if n.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


class FakeRequest:
    """One request received by :class:`FakeOpenAIServer` (what response functions get and what
    :attr:`FakeOpenAIServer.request_log` keeps). Read-only by convention.

    Attributes:
        index: 1-based number of this chat-completion request since the server started (or since
            :meth:`FakeOpenAIServer.reset_counters`).
        method, path: from the request line (``path`` includes any query string).
        headers: every header as received, including ``Authorization`` (tests assert it was sent).
        body: the raw request body.
        json: the parsed JSON body (``None`` when the body was not valid JSON).
        messages: the ``messages`` list (``[]`` when absent or not a list).
        model: the ``model`` asked for (``None`` when absent).
        stream: whether ``"stream": true`` was asked for.
        n: the number of choices asked for (``1`` when absent or invalid).
    """

    __slots__ = ("body", "headers", "index", "json", "messages", "method", "model", "n", "path", "stream")

    def __init__(self, index: int, method: str, path: str, headers: Headers, body: bytes, json: Any) -> None:
        self.index = index
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.json = json
        obj: dict[str, Any] = json if isinstance(json, dict) else {}
        messages = obj.get("messages")
        self.messages: list[Any] = messages if isinstance(messages, list) else []
        model = obj.get("model")
        self.model: str | None = model if isinstance(model, str) else None
        self.stream: bool = obj.get("stream") is True
        n = obj.get("n")
        self.n: int = n if type(n) is int and n >= 1 else 1

    def __repr__(self) -> str:
        return (
            f"<FakeRequest #{self.index} {self.method} {self.path} model={self.model!r} "
            f"messages={len(self.messages)} stream={self.stream} n={self.n}>"
        )

    @property
    def last_user_message(self) -> str:
        """The text of the last ``user`` message (text parts joined), or ``""``."""
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""


@dataclass(frozen=True)
class Reply:
    """A scripted successful completion.

    Args:
        text: the assistant text of every choice (when ``texts`` is not given).
        texts: one text per choice; the client's ``n`` must then be at most ``len(texts)`` (the
            first ``n`` are used).
        prompt_tokens, completion_tokens: the usage to report; ``None`` means a cheap estimate
            (about one token per 4 characters, at least 1 for non-empty text).
        finish_reason: reported on every choice (``"stop"``, ``"length"``, ...).
        latency: seconds before the response (and between stream chunks); ``None`` means the
            server's ``latency`` / ``chunk_delay``.
    """

    text: str = "ok"
    texts: Sequence[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = "stop"
    latency: float | None = None


_DEFAULT_ERRORS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, message) modelled on OpenAI's error bodies
    400: ("invalid_request_error", None, "Bad request (injected by FakeOpenAIServer)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key (injected by FakeOpenAIServer)."),
    403: ("permission_error", None, "You are not allowed to do this (injected by FakeOpenAIServer)."),
    404: ("invalid_request_error", "model_not_found", "No such model (injected by FakeOpenAIServer)."),
    408: ("timeout", None, "Request timed out (injected by FakeOpenAIServer)."),
    409: ("conflict", None, "Conflict (injected by FakeOpenAIServer)."),
    422: ("invalid_request_error", None, "Unprocessable request (injected by FakeOpenAIServer)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by FakeOpenAIServer)."),
}


@dataclass(frozen=True)
class Fault:
    """A fault to inject instead of a normal response. Build one with the class methods.

    - :meth:`error` / :meth:`rate_limit` / :meth:`server_error` / :meth:`context_window_exceeded`:
      an HTTP error status with an OpenAI-style body ``{"error": {"message", "type", "param",
      "code"}}`` and optional ``Retry-After`` / ``retry-after-ms`` headers.
    - :meth:`connection_reset`: the connection is reset (TCP RST) without any response.
    - :meth:`hang`: no (further) response at all, until the client disconnects or the server stops.
    - :meth:`malformed_json`: status 200 with a body (or, when streaming, a first event) that is
      not valid JSON.
    - :meth:`truncated`: the body is cut mid-way: a stream stops after ``after_chunks`` events
      without ``data: [DONE]``; a JSON body stops half-way through its declared length. The
      connection is then closed (``clean=True`` instead ends a stream's HTTP body properly, just
      without the final events and ``[DONE]``).

    ``delay`` is the number of seconds before the fault acts (default 0: at once).
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | str | None = None
    retry_after_ms: int | None = None
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    param: str | None = None
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    after_chunks: int = 0
    clean: bool = False
    delay: float = 0.0

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """An HTTP error response with ``status``.

        ``retry_after`` (seconds, or an HTTP date string) is sent as ``Retry-After``;
        ``retry_after_ms`` as ``retry-after-ms``. ``body`` (a dict, str or bytes) replaces the
        OpenAI-style error JSON entirely; otherwise ``message``/``error_type``/``code``/``param``
        fill it, with defaults that match OpenAI's for the status.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"Fault.error() needs an HTTP error status (400-599), got {status}")
        return cls(
            "status",
            status=status,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            message=message,
            error_type=error_type,
            code=code,
            param=param,
            body=body,
            headers=tuple((headers or {}).items()),
            delay=delay,
        )

    @classmethod
    def rate_limit(
        cls,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
        message: str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """A 429 with OpenAI's ``rate_limit_exceeded`` body and optional retry-after headers."""
        return cls.error(429, retry_after=retry_after, retry_after_ms=retry_after_ms, message=message, delay=delay)

    @classmethod
    def server_error(
        cls, status: int = 500, *, retry_after: float | str | None = None, message: str | None = None
    ) -> Fault:
        """A 5xx (default 500) with a ``server_error`` body."""
        if not 500 <= status <= 599:
            raise ValueError(f"Fault.server_error() needs a 5xx status, got {status}")
        return cls.error(status, retry_after=retry_after, message=message)

    @classmethod
    def context_window_exceeded(cls, max_tokens: int = 8192, requested: int | None = None) -> Fault:
        """A 400 with OpenAI's ``context_length_exceeded`` body."""
        requested = requested if requested is not None else max_tokens + 1000
        return cls.error(
            400,
            message=(
                f"This model's maximum context length is {max_tokens} tokens. However, your messages "
                f"resulted in {requested} tokens. Please reduce the length of the messages."
            ),
            error_type="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
        )

    @classmethod
    def connection_reset(cls, *, delay: float = 0.0) -> Fault:
        """Reset the connection (TCP RST) without sending any response."""
        return cls("reset", delay=delay)

    @classmethod
    def hang(cls, *, after_chunks: int = 0) -> Fault:
        """Never respond (a stream: stall after ``after_chunks`` events), until the client
        disconnects (counted in :attr:`FakeOpenAIServer.client_disconnects`) or the server stops."""
        return cls("hang", after_chunks=after_chunks)

    @classmethod
    def malformed_json(cls, *, delay: float = 0.0) -> Fault:
        """Status 200 whose JSON body (or first stream event) is not valid JSON."""
        return cls("malformed_json", delay=delay)

    @classmethod
    def truncated(cls, *, after_chunks: int = 1, clean: bool = False) -> Fault:
        """Cut the response mid-way: see the class docstring."""
        return cls("truncated", after_chunks=after_chunks, clean=clean)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Build a fault from a short text spec (used by the command line).

        ``"429"`` or ``"429:0.5"`` (status, optional Retry-After seconds), ``"500"``,
        ``"context"`` (context window exceeded), ``"reset"``, ``"hang"``, ``"malformed"``,
        ``"truncate"`` or ``"truncate:3"`` (stream events before the cut).
        """
        name, _, arg = spec.strip().partition(":")
        try:
            if name.isdigit():
                status = int(name)
                if status == 429 and arg:
                    seconds = float(arg)
                    return cls.rate_limit(retry_after=arg, retry_after_ms=round(seconds * 1000))
                return cls.error(status, retry_after=arg or None)
            if name == "context":
                return cls.context_window_exceeded()
            if name == "reset":
                return cls.connection_reset()
            if name == "hang":
                return cls.hang(after_chunks=int(arg or 0))
            if name == "malformed":
                return cls.malformed_json()
            if name == "truncate":
                return cls.truncated(after_chunks=int(arg or 1))
        except ValueError as exc:
            raise ValueError(f"invalid fault spec {spec!r}: {exc}") from None
        raise ValueError(
            f"invalid fault spec {spec!r}: expected a status such as '429' or '429:0.5' (Retry-After "
            "seconds), or one of 'context', 'reset', 'hang', 'malformed', 'truncate', 'truncate:N'"
        )


#: The fault mix used when ``fault_rate`` is set without ``faults``: 429 (retry after 50 ms),
#: 500, 503, connection reset, malformed JSON, truncated body/stream. Hangs are not included
#: (a hang only ends when the client gives up): add ``Fault.hang()`` explicitly.
DEFAULT_FAULTS: tuple[Fault, ...] = (
    Fault.rate_limit(retry_after_ms=50),
    Fault.server_error(500),
    Fault.server_error(503),
    Fault.connection_reset(),
    Fault.malformed_json(),
    Fault.truncated(),
)

# What a faulty stream or body carries before it breaks: several words, so several stream events.
_FAULT_REPLY = Reply("this response is broken on purpose by FakeOpenAIServer")

ResponseItem = Union[str, Reply, Fault, dict[str, Any]]
ResponseFunction = Callable[[FakeRequest], Union[ResponseItem, Awaitable[ResponseItem]]]
Responses = Union[ResponseItem, Sequence[ResponseItem], ResponseFunction]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part)
    return ""


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


_WORDS = re.compile(r"\s*\S+|\s+")


def _split_stream(text: str) -> list[str]:
    # Word-sized pieces with their leading whitespace, like the deltas real servers send.
    return _WORDS.findall(text) or [""]


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}})


def _chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------
# The protocol: one instance per TCP connection
# --------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    method: str
    path: str
    headers: Headers
    body: bytes
    keep_alive: bool


class _Exchange:
    """One request/response in progress on a connection."""

    __slots__ = ("conn", "counted", "finished", "keep_alive", "request_id", "task", "timer")

    def __init__(self, conn: _Conn, keep_alive: bool, request_id: str) -> None:
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
        headers = [("Content-Type", content_type), ("x-request-id", self.request_id)]
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
        self.conn.write(_head(status, headers) + body)
        self.conn.response_done(self.keep_alive)

    def send_error(self, status: int, message: str, error_type: str, code: str | None = None) -> None:
        self.send(status, _error_body(message, error_type, code))

    def chunked_head(self, status: int, content_type: str) -> bytes:
        """The head of a ``Transfer-Encoding: chunked`` response (to be written by the caller)."""
        headers = self.base_headers(content_type)
        headers += [("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")]
        return _head(status, headers)

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


class _Conn(asyncio.Protocol):
    __slots__ = ("buf", "busy", "closed", "continued", "core", "exchange", "head", "processing", "transport")

    def __init__(self, core: _Core) -> None:
        self.core = core
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.processing = False
        self.closed = False
        self.exchange: _Exchange | None = None
        # The parsed head of a request whose body is still arriving.
        self.head: tuple[str, str, str, Headers, int] | None = None
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.core.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.core.connections.discard(self)
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            # The peer went away before the response was complete.
            exchange.finish(disconnected=True)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self, *, reset: bool = False) -> None:
        if self.closed or self.transport is None:
            return
        self.closed = True
        if reset:
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
                except _BadRequest as exc:
                    self.busy = True
                    exchange = _Exchange(self, False, "req_fake_bad")
                    self.exchange = exchange
                    exchange.send_error(exc.status, exc.message, "invalid_request_error")
                    return
                if raw is None:
                    return
                self.busy = True
                self.core.dispatch(self, raw)
        finally:
            self.processing = False

    def _parse(self) -> _Raw | None:
        buf = self.buf
        head = self.head
        if head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise _BadRequest(431, "request headers too large")
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
                raise _BadRequest(400, "invalid Content-Length header") from None
            if length < 0 or length > _MAX_BODY:
                raise _BadRequest(413, f"request body of {length} bytes is too large")
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
        return _Raw(method, path, headers, body, keep_alive)

    def _parse_head(self, end: int) -> tuple[str, str, str, Headers, int]:
        request_line, _, rest = self.buf[:end].decode("latin-1").partition("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, f"malformed HTTP request line {request_line[:100]!r}")
        raw: list[tuple[str, str]] = []
        mapping: dict[str, str] = {}
        if rest:
            for line in rest.split("\r\n"):
                name, sep, value = line.partition(":")
                if not sep:
                    raise _BadRequest(400, f"malformed header line {line[:100]!r}")
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
            try:
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            except ValueError:
                raise _BadRequest(400, "malformed chunk size in chunked request body") from None
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
                raise _BadRequest(413, "request body too large")
            pos += size + 2


# --------------------------------------------------------------------------------------------------
# The server core: lives on one event loop
# --------------------------------------------------------------------------------------------------


class _Core:
    def __init__(
        self,
        responses: Responses,
        *,
        latency: float,
        chunk_delay: float | None,
        model: str,
        models: Sequence[str] | None,
        support_n: bool,
        api_key: str | None,
        fault_rate: float,
        faults: Sequence[Fault] | None,
        seed: int | None,
        log_size: int,
    ) -> None:
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.model = model
        self.models = list(models) if models is not None else [model]
        self.support_n = support_n
        self.api_key = api_key
        self.fault_rate = fault_rate
        self.faults: tuple[Fault, ...] = tuple(faults) if faults is not None else DEFAULT_FAULTS
        self.rng = random.Random(seed)
        self.injected: deque[Fault] = deque()
        self.request_log: deque[FakeRequest] = deque(maxlen=log_size)
        self.errors: list[BaseException] = []
        self.connections: set[_Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.fifo: deque[tuple[float, Callable[..., None], tuple[Any, ...]]] = deque()
        self.fifo_timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.Server | None = None
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.client_disconnects = 0
        self.set_responses(responses)

    # -- configuration -----------------------------------------------------------------------------

    def set_responses(self, responses: Responses) -> None:
        function: ResponseFunction | None = None
        items: deque[ResponseItem] | None = None
        static: ResponseItem | None = None
        if isinstance(responses, (str, Reply, Fault, dict)):
            static = responses
        elif callable(responses):
            function = responses
        elif isinstance(responses, Sequence):
            items = deque(responses)
        else:
            raise TypeError(
                "responses must be a str, Reply, Fault or response dict, a list of those (one per "
                f"request, in order), or a function of the FakeRequest; got {type(responses).__name__}"
            )
        self.script_function = function
        self.script_list = items
        self.script_static = static
        self.script_size = len(items) if items is not None else 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(lambda: _Conn(self), host, port, backlog=2048, reuse_address=True)
        sockname = self.server.sockets[0].getsockname()
        return int(sockname[1])

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.fifo_timer is not None:
            self.fifo_timer.cancel()
        self.fifo.clear()
        for conn in list(self.connections):
            if conn.exchange is not None:
                conn.exchange.finish()  # the server stops: not a client disconnect
            conn.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    def reset_counters(self) -> None:
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.client_disconnects = 0
        self.request_log.clear()
        self.errors.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "client_disconnects": self.client_disconnects,
            "cpu_time": time.process_time(),
        }

    # -- request handling ------------------------------------------------------------------------

    def dispatch(self, conn: _Conn, raw: _Raw) -> None:
        route = raw.path.split("?", 1)[0].rstrip("/")
        if route.endswith("/chat/completions"):
            if raw.method != "POST":
                self._simple(
                    conn,
                    raw,
                    405,
                    _error_body(f"{raw.method} is not allowed on {route}; use POST", "invalid_request_error"),
                )
            else:
                self._chat(conn, raw)
        elif route.endswith("/models") and raw.method == "GET":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "asynclm"} for m in self.models]
            self._simple(conn, raw, 200, _dumps({"object": "list", "data": data}))
        elif route == "/_fake/stats" and raw.method == "GET":
            self._simple(conn, raw, 200, _dumps(self.stats()))
        else:
            self._simple(
                conn,
                raw,
                404,
                _error_body(
                    f"FakeOpenAIServer has no route {raw.method} {route}; it serves POST "
                    "/v1/chat/completions "
                    "and GET /v1/models",
                    "invalid_request_error",
                    "unknown_url",
                ),
            )

    def _simple(self, conn: _Conn, raw: _Raw, status: int, body: bytes) -> None:
        exchange = _Exchange(conn, raw.keep_alive, "req_fake_0")
        conn.exchange = exchange
        exchange.send(status, body)

    def _chat(self, conn: _Conn, raw: _Raw) -> None:
        self.requests += 1
        index = self.requests
        exchange = _Exchange(conn, raw.keep_alive, f"req_fake_{index}")
        conn.exchange = exchange
        exchange.counted = True
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            body = _loads(raw.body)
        except _JSONDecodeError as exc:
            body = None
            error: str | None = f"the request body is not valid JSON ({exc})"
        else:
            error = None
        request = FakeRequest(index, raw.method, raw.path, raw.headers, raw.body, body)
        self.request_log.append(request)
        if error is None:
            error = self._validate(body)
        if error is not None:
            exchange.send_error(400, error, "invalid_request_error")
            return
        if self.api_key is not None and raw.headers.get("authorization") != f"Bearer {self.api_key}":
            exchange.send(
                401,
                _error_body(
                    "Incorrect API key provided (FakeOpenAIServer expects 'Authorization: Bearer <api_key>' "
                    "with the api_key it was given).",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
            return
        if request.n > 1 and not self.support_n:
            exchange.send(
                400,
                _error_body(
                    f"n={request.n} is not supported by this server (FakeOpenAIServer(support_n=False)); "
                    "only n=1 is accepted",
                    "invalid_request_error",
                    "unsupported_parameter",
                    "n",
                ),
            )
            return
        item: ResponseItem | Awaitable[ResponseItem]
        if self.injected:
            item = self.injected.popleft()
        elif self.fault_rate > 0 and self.faults and self.rng.random() < self.fault_rate:
            item = self.rng.choice(self.faults)
        else:
            try:
                item = self._scripted(request)
            except Exception as exc:
                self._function_failed(exchange, exc)
                return
        if inspect.isawaitable(item):
            self._spawn(exchange, self._await_then_respond(exchange, request, item))
        else:
            self._respond(exchange, request, item)

    @staticmethod
    def _validate(body: Any) -> str | None:
        if not isinstance(body, dict):
            return f"the request body must be a JSON object, got {type(body).__name__}"
        if not isinstance(body.get("messages"), list):
            return "'messages' is a required property and must be a list of message objects"
        n = body.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            return f"'n' must be a positive integer, got {n!r}"
        return None

    def _scripted(self, request: FakeRequest) -> ResponseItem | Awaitable[ResponseItem]:
        if self.script_function is not None:
            return self.script_function(request)
        if self.script_list is not None:
            if not self.script_list:
                return Fault.error(
                    400,
                    message=(
                        f"FakeOpenAIServer: the scripted responses are exhausted ({self.script_size} "
                        f"given, this is chat request #{request.index}); pass more responses, a "
                        "function, or call set_responses()"
                    ),
                    error_type="invalid_request_error",
                    code="fake_server_script_exhausted",
                )
            return self.script_list.popleft()
        assert self.script_static is not None
        return self.script_static

    def _function_failed(self, exchange: _Exchange, exc: BaseException) -> None:
        self.errors.append(exc)
        exchange.send_error(
            500,
            f"FakeOpenAIServer: the response function raised {exc!r} (see server.errors)",
            "server_error",
            "fake_server_function_error",
        )

    def _spawn(self, exchange: _Exchange, coro: Any) -> None:
        assert self.loop is not None
        task: asyncio.Task[None] = self.loop.create_task(coro)
        exchange.task = task
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, exchange))

    def _task_done(self, exchange: _Exchange, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug in a response path: keep it for the test to see, and never leave the client hanging.
            self.errors.append(exc)
            if not exchange.finished:
                exchange.abort(False)

    async def _await_then_respond(
        self, exchange: _Exchange, request: FakeRequest, item: Awaitable[ResponseItem]
    ) -> None:
        try:
            result = await item
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._function_failed(exchange, exc)
            return
        exchange.task = None  # the response below may start its own task
        self._respond(exchange, request, result)

    def _respond(self, exchange: _Exchange, request: FakeRequest, item: Any) -> None:
        if exchange.finished:
            return
        if isinstance(item, str):
            item = Reply(item)
        if isinstance(item, Reply):
            texts = list(item.texts) if item.texts is not None else None
            if texts is not None and len(texts) < request.n:
                self._function_failed(
                    exchange,
                    ValueError(f"Reply.texts has {len(texts)} texts but the request asked for n={request.n}"),
                )
                return
            if request.stream:
                self._spawn(exchange, self._stream(exchange, request, item, None))
            else:
                self._later(exchange, item.latency, exchange.send, 200, self._completion(request, item))
        elif isinstance(item, Fault):
            self._fault(exchange, request, item)
        elif isinstance(item, dict):
            if request.stream:
                self._spawn(exchange, self._stream_raw(exchange, item))
            else:
                self._later(exchange, None, exchange.send, 200, _dumps(item))
        else:
            self._function_failed(
                exchange,
                TypeError(
                    "a scripted response must be a str, Reply, Fault or response dict (or an awaitable of "
                    f"one), got {type(item).__name__}"
                ),
            )

    def _later(self, exchange: _Exchange, delay: float | None, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` after ``delay`` seconds (``None``: the server's latency).

        With a constant latency, deadlines arrive in order, so they wait in a FIFO served by a
        single timer: far cheaper than one heap-ordered ``TimerHandle`` per request at thousands
        of requests per second. An out-of-order deadline gets its own timer. ``fn`` must do
        nothing once the exchange is finished (a client disconnect does not unqueue it).
        """
        delay = self.latency if delay is None else delay
        if delay <= 0:
            fn(*args)
            return
        loop = self.loop
        assert loop is not None
        when = loop.time() + delay
        fifo = self.fifo
        if fifo and when < fifo[-1][0]:
            exchange.timer = loop.call_at(when, fn, *args)
            return
        fifo.append((when, fn, args))
        if self.fifo_timer is None:
            self.fifo_timer = loop.call_at(when, self._drain)

    def _drain(self) -> None:
        assert self.loop is not None
        self.fifo_timer = None
        fifo = self.fifo
        now = self.loop.time() + 1e-4  # the loop may wake a hair early
        while fifo and fifo[0][0] <= now:
            _, fn, args = fifo.popleft()
            fn(*args)
        if fifo:
            self.fifo_timer = self.loop.call_at(fifo[0][0], self._drain)

    # -- building responses ------------------------------------------------------------------------

    def _texts(self, request: FakeRequest, reply: Reply) -> list[str]:
        if reply.texts is not None:
            return list(reply.texts[: request.n])
        return [reply.text] * request.n

    def _usage(self, request: FakeRequest, reply: Reply, texts: list[str]) -> dict[str, int]:
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = max(
                1,
                sum(_estimate_tokens(_content_text(m.get("content"))) for m in request.messages if isinstance(m, dict)),
            )
        completion = reply.completion_tokens
        if completion is None:
            completion = sum(_estimate_tokens(t) for t in texts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion(self, request: FakeRequest, reply: Reply) -> bytes:
        texts = self._texts(request, reply)
        return _dumps(
            {
                "id": f"chatcmpl-fake-{request.index}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.model or self.model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": reply.finish_reason,
                    }
                    for i, text in enumerate(texts)
                ],
                "usage": self._usage(request, reply, texts),
            }
        )

    def _stream_events(self, request: FakeRequest, reply: Reply) -> list[bytes]:
        texts = self._texts(request, reply)
        include_usage = bool(
            isinstance(request.json.get("stream_options"), dict) and request.json["stream_options"].get("include_usage")
        )
        base = {
            "id": f"chatcmpl-fake-{request.index}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model or self.model,
        }

        def event(choices: list[dict[str, Any]]) -> bytes:
            chunk = {**base, "choices": choices}
            if include_usage:
                chunk["usage"] = None
            return _dumps(chunk)

        events = [
            event(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for i in range(len(texts))
                ]
            )
        ]
        for i, text in enumerate(texts):
            for piece in _split_stream(text):
                if piece:
                    events.append(
                        event(
                            [
                                {
                                    "index": i,
                                    "delta": {"content": piece},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    )
        events.append(
            event(
                [
                    {"index": i, "delta": {}, "logprobs": None, "finish_reason": reply.finish_reason}
                    for i in range(len(texts))
                ]
            )
        )
        if include_usage:
            events.append(_dumps({**base, "choices": [], "usage": self._usage(request, reply, texts)}))
        return events

    async def _stream(self, exchange: _Exchange, request: FakeRequest, reply: Reply, fault: Fault | None) -> None:
        delay = self.latency if reply.latency is None else reply.latency
        chunk_delay = reply.latency if reply.latency is not None else self.chunk_delay
        if chunk_delay is None:
            chunk_delay = self.latency
        if delay > 0:
            await asyncio.sleep(delay)
        events = self._stream_events(request, reply)
        kind = fault.kind if fault is not None else None
        cut = fault.after_chunks if fault is not None and kind in ("hang", "truncated") else len(events)
        if kind == "hang" and cut <= 0:
            await asyncio.Event().wait()  # until cancelled by a disconnect or the server stopping
        if kind == "malformed_json":
            events[0] = events[0][: len(events[0]) // 2]
        # Events due at the same time go out in one write (one syscall).
        out = [exchange.chunked_head(200, "text/event-stream")]
        for i, data in enumerate(events[:cut]):
            if i and chunk_delay > 0:
                exchange.conn.write(b"".join(out))
                out.clear()
                await asyncio.sleep(chunk_delay)
            out.append(_chunk(b"data: %b\n\n" % data))
        if kind == "hang":
            exchange.conn.write(b"".join(out))
            await asyncio.Event().wait()
        if kind == "truncated":
            exchange.conn.write(b"".join(out))
            if fault is not None and fault.clean:
                exchange.end_chunked()
            else:
                exchange.abort(False)
            return
        out.append(_chunk(b"data: [DONE]\n\n"))
        exchange.end_chunked(b"".join(out))

    async def _stream_raw(self, exchange: _Exchange, chunk: dict[str, Any]) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        head = exchange.chunked_head(200, "text/event-stream")
        exchange.end_chunked(head + _chunk(b"data: %b\n\ndata: [DONE]\n\n" % _dumps(chunk)))

    def _fault(self, exchange: _Exchange, request: FakeRequest, fault: Fault) -> None:
        kind = fault.kind
        if kind == "status":
            body = fault.body
            if body is None:
                default_type, default_code, default_message = _DEFAULT_ERRORS.get(
                    fault.status,
                    (
                        "server_error",
                        None,
                        "The server had an error while processing your request (injected by FakeOpenAIServer).",
                    ),
                )
                data = _error_body(
                    fault.message or default_message,
                    fault.error_type or default_type,
                    fault.code if fault.code is not None else default_code,
                    fault.param,
                )
            elif isinstance(body, bytes):
                data = body
            elif isinstance(body, str):
                data = body.encode()
            else:
                data = _dumps(body)
            extra = list(fault.headers)
            if fault.retry_after is not None:
                value = fault.retry_after
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                extra.append(("Retry-After", str(value)))
            if fault.retry_after_ms is not None:
                extra.append(("retry-after-ms", str(fault.retry_after_ms)))
            self._later(exchange, fault.delay, exchange.send, fault.status, data, "application/json", extra)
        elif kind == "reset":
            self._later(exchange, fault.delay, exchange.abort, True)
        elif kind == "hang":
            if request.stream and fault.after_chunks > 0:
                self._spawn(exchange, self._stream(exchange, request, _FAULT_REPLY, fault))
            # else: nothing at all; the exchange stays open until a disconnect or stop()
        elif kind == "malformed_json":
            if request.stream:
                self._spawn(exchange, self._stream(exchange, request, _FAULT_REPLY, fault))
            else:
                data = self._completion(request, _FAULT_REPLY)
                self._later(exchange, fault.delay, exchange.send, 200, data[: len(data) // 2])
        elif kind == "truncated":
            if request.stream:
                self._spawn(exchange, self._stream(exchange, request, _FAULT_REPLY, fault))
            else:
                data = self._completion(request, _FAULT_REPLY)
                self._later(exchange, None, self._send_truncated, exchange, data)

    @staticmethod
    def _send_truncated(exchange: _Exchange, data: bytes) -> None:
        if exchange.finished:
            return
        headers = exchange.base_headers("application/json")
        headers.append(("Content-Length", str(len(data))))
        exchange.finish()  # before the write, as in send()
        exchange.conn.write(_head(200, headers) + data[: len(data) // 2])
        exchange.abort(False)


# --------------------------------------------------------------------------------------------------
# The public server: its own event loop in a daemon thread
# --------------------------------------------------------------------------------------------------


class FakeOpenAIServer:
    """A real OpenAI-compatible HTTP/1.1 server on 127.0.0.1, with scripted responses and faults.

    It runs its own asyncio event loop in a daemon thread, so it behaves the same from sync tests,
    asyncio tests and trio tests::

        with FakeOpenAIServer(responses=["first", "second"]) as server:
            httpx.post(f"{server.base_url}/chat/completions", json={...})

        async with FakeOpenAIServer(latency=0.05) as server:
            ...

    Args:
        responses: what successful chat completions answer. One of

            - a ``str`` (every choice's text), a :class:`Reply` (text, usage, finish reason,
              latency), a :class:`Fault`, or a ``dict`` sent verbatim as the JSON response (as the
              single ``data:`` event of a stream);
            - a list of those, consumed one per request in order (a request after the last one gets
              a 400 whose message says the script is exhausted);
            - a function of the :class:`FakeRequest` returning one of those (or an awaitable of
              one; it runs on the server's loop, so it must not block). If it raises, the client
              gets a 500 and the exception is kept in :attr:`errors`.
        latency: seconds before each response (and each stream's first event).
        chunk_delay: seconds between stream events (default: ``latency``).
        model: the model reported in responses when the request has none, and listed by
            ``GET /v1/models``.
        models: the list ``GET /v1/models`` returns (default ``[model]``).
        support_n: if false, a request with ``n > 1`` gets a 400 (like servers that only do n=1);
            otherwise ``n`` choices are returned.
        api_key: if given, chat requests without ``Authorization: Bearer <api_key>`` get a 401
            (``code: "invalid_api_key"``); by default any key, or none, is accepted.
        fault_rate: the fraction of chat requests (0..1) answered by a fault drawn from ``faults``
            instead of the script (faulted requests do not consume scripted responses).
        faults: the faults to draw from (default :data:`DEFAULT_FAULTS`).
        seed: seeds the fault draw, so a run with the same requests in the same order faults the
            same requests.
        log_size: how many recent requests :attr:`request_log` keeps.
        host, port: where to listen (default 127.0.0.1, an ephemeral port).

    Counters (plain attributes, updated on the server's loop; read them from any thread):
    :attr:`requests`, :attr:`in_flight`, :attr:`max_in_flight`, :attr:`client_disconnects`;
    :meth:`reset_counters` zeroes them. Only chat-completion requests are counted.
    """

    def __init__(
        self,
        responses: Responses = "ok",
        *,
        latency: float = 0.0,
        chunk_delay: float | None = None,
        model: str = "fake-model",
        models: Sequence[str] | None = None,
        support_n: bool = True,
        api_key: str | None = None,
        fault_rate: float = 0.0,
        faults: Sequence[Fault] | None = None,
        seed: int | None = None,
        log_size: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if latency < 0 or (chunk_delay is not None and chunk_delay < 0):
            raise ValueError("latency and chunk_delay must be >= 0 seconds")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        self._core = _Core(
            responses,
            latency=latency,
            chunk_delay=chunk_delay,
            model=model,
            models=models,
            support_n=support_n,
            api_key=api_key,
            fault_rate=fault_rate,
            faults=faults,
            seed=seed,
            log_size=log_size,
        )
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifecycle = threading.Lock()
        self.port: int | None = None

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the server must be started)."""
        if self.port is None:
            raise RuntimeError("FakeOpenAIServer is not started: use `with FakeOpenAIServer() as server:`")
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the ``base_url`` to give an OpenAI-compatible client."""
        return f"{self.url}/v1"

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        """Start listening (blocks the calling thread for a few milliseconds). Idempotent."""
        with self._lifecycle:
            if self._thread is not None:
                return self
            started = threading.Event()
            failure: list[BaseException] = []

            def run() -> None:
                loop = asyncio.new_event_loop()
                self._loop = loop
                try:
                    try:
                        self.port = loop.run_until_complete(self._core.start(self._host, self._port))
                    except BaseException as exc:
                        failure.append(exc)
                        return
                    finally:
                        started.set()
                    loop.run_forever()
                    loop.run_until_complete(self._core.aclose())
                finally:
                    loop.close()

            thread = threading.Thread(target=run, name="FakeOpenAIServer", daemon=True)
            thread.start()
            started.wait()
            if failure:
                thread.join()
                self._loop = None
                raise failure[0]
            self._thread = thread
            return self

    def stop(self) -> None:
        """Stop the server: open connections are closed (hanging requests end), the thread exits.
        Idempotent. The counters keep their values."""
        with self._lifecycle:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError(
                    "FakeOpenAIServer.stop() was called from the server's own thread (e.g. in a response "
                    "function); call it from the test instead"
                )
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(loop.stop)
            thread.join()
            self._thread = None
            self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeOpenAIServer:
        import anyio.to_thread

        # start()/stop() block for a moment (thread start/join): keep them off the event loop.
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        where = f"{self.url}" if self.port is not None else "not started"
        return f"<FakeOpenAIServer {where} requests={self.requests}>"

    # -- configuration at run time ---------------------------------------------------------------

    def set_responses(self, responses: Responses) -> None:
        """Replace the response script (same forms as the constructor's ``responses``)."""
        self._call_on_loop(self._core.set_responses, responses)

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` chat requests with ``fault``, before the script and any random
        faults (these requests do not consume scripted responses)."""
        if times < 0:
            raise ValueError("times must be >= 0")
        self._call_on_loop(self._core.injected.extend, [fault] * times)

    def reset_counters(self) -> None:
        """Zero :attr:`requests` and :attr:`client_disconnects`, set :attr:`max_in_flight` to the
        current :attr:`in_flight`, and clear :attr:`request_log` and :attr:`errors`."""
        self._call_on_loop(self._core.reset_counters)

    def _call_on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        # Counters and scripts belong to the server's loop: mutate them there, in order with the
        # requests already received, unless the server is not running or we are on its thread.
        loop = self._loop
        if loop is None or self._thread is None or threading.current_thread() is self._thread:
            fn(*args)
            return
        done = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop has just closed
            fn(*args)
            return
        while not done.wait(0.05):
            if not self._thread_alive():  # stopped before running our callback
                fn(*args)
                return
        if failure:
            raise failure[0]

    def _thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    latency = property(
        lambda self: self._core.latency,
        lambda self, value: setattr(self._core, "latency", float(value)),
        doc="Seconds before each response; settable while running.",
    )
    chunk_delay = property(
        lambda self: self._core.chunk_delay,
        lambda self, value: setattr(self._core, "chunk_delay", value),
        doc="Seconds between stream events (None: ``latency``); settable while running.",
    )
    support_n = property(
        lambda self: self._core.support_n,
        lambda self, value: setattr(self._core, "support_n", bool(value)),
        doc="Whether n > 1 is accepted; settable while running.",
    )
    fault_rate = property(
        lambda self: self._core.fault_rate,
        lambda self, value: setattr(self._core, "fault_rate", float(value)),
        doc="Fraction of chat requests answered by a random fault; settable while running.",
    )

    # -- counters ------------------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Chat-completion requests received (including faulted and invalid ones)."""
        return self._core.requests

    @property
    def in_flight(self) -> int:
        """Chat-completion requests received whose response is not complete yet."""
        return self._core.in_flight

    @property
    def max_in_flight(self) -> int:
        """The largest :attr:`in_flight` seen: the client's effective concurrency."""
        return self._core.max_in_flight

    @property
    def client_disconnects(self) -> int:
        """Requests whose client closed the connection before the response was complete (e.g. a
        cancelled call, a client timeout on a hang, a stream the client stopped reading)."""
        return self._core.client_disconnects

    @property
    def request_log(self) -> list[FakeRequest]:
        """The most recent chat requests (up to ``log_size``), oldest first, with raw headers."""
        return list(self._core.request_log)

    @property
    def last_request(self) -> FakeRequest:
        """The most recent chat request; raises ``LookupError`` when there is none."""
        try:
            return self._core.request_log[-1]
        except IndexError:
            raise LookupError("FakeOpenAIServer has received no chat-completion request yet") from None

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by a response function (each was answered with a 500)."""
        return list(self._core.errors)

    @sync_twin
    async def wait_until(self, predicate: Callable[[FakeOpenAIServer], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate(server)`` is true (polled every millisecond), e.g.
        ``await server.wait_until(lambda s: s.client_disconnects == 1)``; ``.sync(...)`` from sync
        code. Raises ``TimeoutError`` after ``timeout`` seconds."""
        import anyio

        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"FakeOpenAIServer.wait_until: condition still false after {timeout} s "
                    f"(requests={self.requests}, in_flight={self.in_flight}, "
                    f"max_in_flight={self.max_in_flight}, client_disconnects={self.client_disconnects})"
                )
            await anyio.sleep(0.001)

    # -- separate process ------------------------------------------------------------------------

    @classmethod
    def spawn(
        cls,
        *,
        text: str = "ok",
        latency: float = 0.0,
        chunk_delay: float | None = None,
        model: str = "fake-model",
        support_n: bool = True,
        fault_rate: float = 0.0,
        faults: Sequence[str] | None = None,
        seed: int | None = None,
        python: str | None = None,
        startup_timeout: float = 30.0,
    ) -> SpawnedFakeServer:
        """Run a server in a separate Python process (``python -m asynclm.testing.server``), so a
        benchmark does not share its interpreter (and GIL) with the client under test.

        Responses are the static ``text``; ``faults`` are specs as accepted by :meth:`Fault.parse`
        (e.g. ``["429:0.05", "500", "reset"]``). Returns a :class:`SpawnedFakeServer` handle (also
        a context manager) once the server listens.
        """
        args = [
            python or sys.executable,
            "-m",
            "asynclm.testing.server",
            "--port",
            "0",
            f"--latency={latency!r}",
            f"--text={text}",  # the --opt=value form: a value starting with "-" stays a value
            f"--model={model}",
        ]
        if chunk_delay is not None:
            args.append(f"--chunk-delay={chunk_delay!r}")
        if not support_n:
            args.append("--no-n")
        if fault_rate:
            args.append(f"--fault-rate={fault_rate!r}")
        if faults:
            for spec in faults:
                Fault.parse(spec)  # fail here, with a clear message, rather than in the child
            args.append("--faults=" + ",".join(faults))
        if seed is not None:
            args.append(f"--seed={seed}")
        return SpawnedFakeServer(args, startup_timeout)


class SpawnedFakeServer:
    """A :class:`FakeOpenAIServer` running in a child process (see :meth:`FakeOpenAIServer.spawn`).

    Attributes: :attr:`port`, :attr:`url`, :attr:`base_url`, :attr:`pid`. :meth:`stats` fetches the
    counters and the child's CPU time; :meth:`stop` ends the child and returns its last stats.
    """

    def __init__(self, args: list[str], startup_timeout: float) -> None:
        # stderr goes to a file, not a pipe: nobody reads it while the child runs, and a full pipe
        # would block the child.
        self._stderr = tempfile.TemporaryFile()
        self._stderr_text = ""
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.final_stats: dict[str, Any] | None = None
        port: list[int] = []
        reader = threading.Thread(target=lambda: port.append(self._read_port()), daemon=True)
        reader.start()
        reader.join(startup_timeout)
        if not port or port[0] <= 0:
            self.process.kill()
            self.process.wait()
            err = self.stderr_output()
            self._close_files()
            raise RuntimeError(
                f"the FakeOpenAIServer child process ({' '.join(args)}) did not report its port within "
                f"{startup_timeout} s; its stderr:\n{err}"
            )
        self.port = port[0]
        self.pid = self.process.pid

    def stderr_output(self) -> str:
        """What the child wrote on stderr so far (tracebacks, asyncio warnings)."""
        if self._stderr.closed:
            return self._stderr_text
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _close_files(self) -> None:
        if not self._stderr.closed:
            self._stderr_text = self.stderr_output()
            self._stderr.close()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        try:
            return int(line.strip())
        except ValueError:
            return -1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        """The child's counters (``requests``, ``in_flight``, ``max_in_flight``,
        ``client_disconnects``) and ``cpu_time`` (seconds of CPU the child process has used)."""
        if self.final_stats is not None:
            return dict(self.final_stats)
        import urllib.request  # only here: it is slow to import

        with urllib.request.urlopen(f"{self.url}/_fake/stats", timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    @property
    def cpu_time(self) -> float:
        """Seconds of CPU used by the child process so far (or at :meth:`stop`)."""
        return float(self.stats()["cpu_time"])

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``); returns its final :meth:`stats`."""
        if self.final_stats is None:
            try:
                self.final_stats = self.stats()
            except OSError:
                self.final_stats = {}
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self._close_files()
        return dict(self.final_stats)

    def __enter__(self) -> SpawnedFakeServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SpawnedFakeServer pid={self.pid} {self.url}>"


async def serve(server: FakeOpenAIServer, stop: asyncio.Event) -> None:
    """Run ``server``'s core on the current asyncio loop until ``stop`` is set (the command line
    uses this instead of the daemon thread)."""
    core = server._core
    server.port = await core.start(server._host, server._port)
    print(server.port, flush=True)
    try:
        await stop.wait()
    finally:
        await core.aclose()

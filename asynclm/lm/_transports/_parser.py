"""The response side of HTTP/1.1, sans-I/O: bytes in, one response (or a typed error) out.

The wire is parsed by llhttp — Node.js's parser, also uvicorn's and aiohttp's — through
``httptools``, in llhttp's strict mode: bare-LF line endings, control characters in header
values, spaces in header names, ``Content-Length`` next to ``Transfer-Encoding``, malformed chunk
sizes and status lines are all rejected. On top of it this module adds what llhttp leaves to its
caller:

* only HTTP/1.x is accepted, and only ``Transfer-Encoding: chunked`` (another coding would mean a
  body delimited by the end of the connection on a connection we meant to keep; h11 refuses it
  for the same reason);
* interim 1xx responses are skipped; ``101`` is an error (we never ask to switch protocols);
* ``gzip``/``deflate`` bodies are decoded as they arrive, never to more than ``max_body`` bytes
  (a compressed body of 1 MB can inflate to gigabytes);
* ``extra`` records that bytes arrived beyond the final response — such a connection must not be
  reused, because those bytes would be read as the answer to the next request. (llhttp itself
  skips CR/LF between messages; they cannot be mistaken for a response, so they are ignored.)

No I/O and no event loop here: ``ResponseParser`` is fed what the connection received.
"""

from __future__ import annotations

import re
import threading
import zlib
from typing import Any

import httptools

from ._base import ResponseTooLarge, TransportError

__all__ = ["ResponseParser", "keep_alive_timeout"]

_MAX_HEAD = 64 * 1024  # bytes of status line + headers we accept
_KEEPALIVE_TIMEOUT = re.compile(r"timeout\s*=\s*(\d+)")


class _Stop(Exception):
    """Raised from a parser callback to carry one of our errors out of llhttp."""

    def __init__(self, error: TransportError) -> None:
        self.error = error


class _Decoder:
    """Incremental gzip/deflate decoding that never produces more than ``limit`` bytes in all."""

    __slots__ = ("_deflate", "_first", "_z", "left", "limit")

    def __init__(self, encoding: str, limit: int) -> None:
        self._deflate = encoding == "deflate"
        self._z = zlib.decompressobj(zlib.MAX_WBITS if self._deflate else 16 + zlib.MAX_WBITS)
        self._first = True
        self.limit = self.left = limit

    def feed(self, data: bytes) -> bytes:
        try:
            if self._first and self._deflate:
                self._first = False
                try:
                    return self._take(data)
                except zlib.error:  # "deflate" sent as a raw stream, as some servers do
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._take(data)
        except zlib.error as exc:
            raise TransportError(f"cannot decode the response body: {exc}") from None

    def _take(self, data: bytes) -> bytes:
        # max_length caps what one call may allocate; anything left over means the cap is crossed
        out = self._z.decompress(data, self.left + 1)
        self.left -= len(out)
        if self.left < 0 or self._z.unconsumed_tail:
            raise ResponseTooLarge(self.limit)
        return out

    def flush(self) -> bytes:
        out = self._z.flush()
        self.left -= len(out)
        if self.left < 0:
            raise ResponseTooLarge(self.limit)
        return out


class ResponseParser:
    """Parses the responses arriving on one connection, one request at a time.

    Call ``start`` before each request, then ``feed`` what arrives (and ``feed_eof``
    at the end of the connection). The parsed response is in ``status``, ``headers`` (names
    lower-cased, repeats joined by ``", "``), and ``body`` — a list of decoded pieces that the
    caller takes as it goes. ``head_done`` is set once a final (>= 200) response's headers are
    complete, ``done`` once its body is. Errors are ``TransportError`` (a protocol
    violation) or ``ResponseTooLarge``.
    """

    __slots__ = (
        "_callbacks",
        "_decoder",
        "_head_bytes",
        "_llhttp",
        "body",
        "done",
        "extra",
        "head_done",
        "headers",
        "keep_alive",
        "left",
        "max_body",
        "status",
        "until_close",
    )

    def __init__(self) -> None:
        self._callbacks = _thread_callbacks()
        self._llhttp = httptools.HttpResponseParser(self._callbacks)
        self.max_body = 0
        self.start(0)

    def start(self, max_body: int) -> None:
        """Expect the response to a new request; its decoded body may hold ``max_body`` bytes."""
        self.max_body = max_body
        self.left = max_body  # raw body bytes still allowed
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.head_done = False
        self.done = False
        self.extra = False
        self.keep_alive = False
        self.until_close = False
        self._decoder: _Decoder | None = None
        self._head_bytes = 0

    # -- input -----------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> None:
        """Parse ``data``. Bytes after a complete response set ``extra`` (never an error)."""
        if self.done:
            self.extra = True
            return
        if not self.head_done:
            self._head_bytes += len(data)
        callbacks = self._callbacks
        callbacks.target = self
        try:
            self._llhttp.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if self.done:  # the extra bytes began a message our callbacks refused
                self.extra = True
                return
            cause = exc.__context__
            if isinstance(cause, _Stop):
                raise cause.error from None
            raise TransportError(f"malformed HTTP response: {exc}") from None
        except httptools.HttpParserUpgrade:
            if self.done:
                self.extra = True
                return
            raise TransportError("the server switched protocols (101), which was not asked for") from None
        except httptools.HttpParserError as exc:
            if self.done:  # garbage after a complete response: keep the response, not the connection
                self.extra = True
                return
            raise TransportError(f"malformed HTTP response: {exc}") from None
        finally:
            callbacks.target = None
        if not self.head_done and self._head_bytes > _MAX_HEAD:
            raise TransportError(f"the response headers exceed {_MAX_HEAD} bytes")

    def feed_eof(self) -> None:
        """The connection ended: completes a body delimited by the end of the connection; any other
        incomplete response raises ``TransportError``."""
        if self.done:
            return
        if not (self.head_done and self.until_close):
            raise TransportError("the server closed the connection before the response was complete")
        if self._decoder is not None:
            self.body.append(self._decoder.flush())
        self.done = True

    # -- llhttp callbacks (through _Callbacks) -------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head_done:  # a second response began while we read the first
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        if key in headers:
            headers[key] += ", " + text
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        if self.head_done:  # a response after the one we read: leave it unparsed
            self.extra = True
            raise _Stop(TransportError("unsolicited response"))
        parser = self._llhttp
        status = parser.get_status_code()
        if parser.get_http_version()[:2] != "1.":
            raise _Stop(TransportError(f"unsupported HTTP version {parser.get_http_version()} in the response"))
        if status < 200:
            if status == 101:
                raise _Stop(TransportError("the server switched protocols (101), which was not asked for"))
            self.headers = {}  # interim response (100 Continue, 103 Early Hints): wait for the final one
            return
        headers = self.headers
        te = headers.get("transfer-encoding")
        if te is not None and te.strip().lower() != "chunked":
            raise _Stop(TransportError(f"unsupported Transfer-Encoding {te!r} (only chunked is)"))
        self.status = status
        self.head_done = True
        self.keep_alive = parser.should_keep_alive()
        self.until_close = (
            te is None and "content-length" not in headers and status not in (204, 304)
        )
        encoding = headers.get("content-encoding")
        if encoding is not None:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "deflate", "x-gzip"):
                self._decoder = _Decoder("deflate" if encoding == "deflate" else "gzip", self.max_body)

    def on_body(self, data: bytes) -> None:
        self.left -= len(data)
        try:
            if self.left < 0:
                raise ResponseTooLarge(self.max_body)
            decoder = self._decoder
            if decoder is not None:
                data = decoder.feed(data)
        except TransportError as exc:
            raise _Stop(exc) from None
        if data:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if not self.head_done:  # the end of an interim response
            return
        if self.done:
            self.extra = True
            return
        decoder = self._decoder
        if decoder is not None:
            try:
                tail = decoder.flush()
            except TransportError as exc:
                raise _Stop(exc) from None
            if tail:
                self.body.append(tail)
        self.done = True


class _Callbacks:
    """What llhttp calls, shared by every parser of one thread, relayed to the parser being fed.

    httptools looks each callback up on its protocol object once per parser: on the parser itself
    they would be five bound-method objects (~0.4 KB) held by every connection. These plain
    functions are made once per thread; ``ResponseParser.feed`` points ``target`` at itself
    while it feeds (feeding is synchronous, and a thread feeds one parser at a time).
    """

    __slots__ = ("on_body", "on_header", "on_headers_complete", "on_message_begin", "on_message_complete", "target")

    def __init__(self) -> None:
        self.target: Any = None

        def on_message_begin() -> None:
            self.target.on_message_begin()

        def on_header(name: bytes, value: bytes) -> None:
            self.target.on_header(name, value)

        def on_headers_complete() -> None:
            self.target.on_headers_complete()

        def on_body(data: bytes) -> None:
            self.target.on_body(data)

        def on_message_complete() -> None:
            self.target.on_message_complete()

        self.on_message_begin = on_message_begin
        self.on_header = on_header
        self.on_headers_complete = on_headers_complete
        self.on_body = on_body
        self.on_message_complete = on_message_complete


_local = threading.local()


def _thread_callbacks() -> _Callbacks:
    try:
        callbacks: _Callbacks = _local.callbacks
    except AttributeError:
        callbacks = _local.callbacks = _Callbacks()
    return callbacks


def keep_alive_timeout(headers: dict[str, str]) -> float | None:
    """The ``timeout=N`` of a ``Keep-Alive`` header, in seconds."""
    value = headers.get("keep-alive")
    if value is None:
        return None
    m = _KEEPALIVE_TIMEOUT.search(value)
    return float(m.group(1)) if m else None

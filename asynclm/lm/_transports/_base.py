"""The HTTP transport seam: everything the LM client needs from an HTTP library.

The LM client speaks only this interface; concrete transports (our anyio HTTP/1.1 client, aiohttp,
any httpx-compatible client a user brings) live beside it. One transport object per event loop,
created inside it (``asynclm.runtime.loop_resource``) and closed with it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class TransportError(Exception):
    """A connection-level failure (refused, reset, closed mid-response, malformed HTTP).

    ``phase`` says where it happened when the transport knows: ``"DNS"``, ``"connect"``,
    ``"TLS handshake"``, ``"send"`` or ``"receive"``.
    """

    def __init__(self, message: str, *, phase: str | None = None) -> None:
        super().__init__(message)
        self.phase = phase


class TransportTimeout(TransportError, TimeoutError):
    """A connect/read/write operation timed out (per operation; whole-call deadlines are the LM's)."""


class ResponseTooLarge(TransportError):
    """The response body (after decompression) is larger than the caller allows; never retried."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the response body is larger than {limit} bytes (max_response_bytes) and was not read further",
            phase="receive",
        )
        self.limit = limit


class DeadlineExceeded(TransportTimeout):
    """The caller's deadline (``post(..., deadline=...)``) passed before the response was complete."""


@dataclass
class Response:
    """A complete HTTP response. Header names are lower-cased; repeated headers are joined by ", "."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class StreamingResponse(Protocol):
    """An HTTP response whose body is read incrementally (server-sent events).

    Use it as ``async with await transport.post_stream(...) as resp:`` or call ``aclose``.
    """

    status: int
    headers: Mapping[str, str]

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The (decoded) body in chunks as they arrive; each read is subject to the read timeout."""
        ...

    async def aread(self) -> bytes:
        """The rest of the body, at once."""
        ...

    async def aclose(self) -> None:
        """Stop reading; the connection is closed (not returned to the pool) if the body is unread."""
        ...

    async def __aenter__(self) -> StreamingResponse: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Transport(Protocol):
    """An HTTP client bound to one event loop.

    ``timeout`` (seconds) bounds each operation — connecting, writing the request, each read —
    not the whole call; ``None`` keeps the transport's defaults. Errors are only
    ``TransportError`` / ``TransportTimeout`` (and ``ValueError`` for a malformed
    URL or header). HTTP error statuses are *not* errors here: they come back as responses.
    """

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None = None
    ) -> Response:
        """POST ``body`` and return the whole response. Raises TransportError / TransportTimeout.

        Cancelling the caller closes the connection (the server sees the disconnect).

        A transport whose ``accepts_call_limits`` attribute is true also takes ``deadline=`` (an
        ``anyio.current_time()`` value, or ``None``), raising ``DeadlineExceeded`` when it
        passes, and ``max_response_bytes=``, raising ``ResponseTooLarge`` as soon as the
        (decoded) body grows beyond it. Around any other transport the LM client puts a cancel
        scope and checks the body's size once it has arrived."""
        ...

    async def post_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None = None
    ) -> StreamingResponse:
        """POST and return once the status line and headers are read; the caller must aclose().
        With ``accepts_call_limits``, also takes ``max_response_bytes=`` (the whole stream)."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection. Idempotent."""
        ...


class LimitingTransport(Transport, Protocol):
    """A ``Transport`` that enforces the call's deadline and body-size limit itself
    (``accepts_call_limits = True``)."""

    accepts_call_limits: bool

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        max_response_bytes: int | None = None,
    ) -> Response: ...

    async def post_stream(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        max_response_bytes: int | None = None,
    ) -> StreamingResponse: ...


class ClosingStreamMixin:
    """``async with response: ...`` for the concrete streaming responses: ``aclose()`` on exit."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

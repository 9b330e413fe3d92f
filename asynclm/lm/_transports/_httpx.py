"""Adapter for any httpx-compatible ``AsyncClient`` (httpx, httpx2, …): proxies, mTLS, custom CAs.

This is what ``LM(http_client_factory=...)`` uses: the factory returns such a client, once per
event loop, and this adapter owns and closes it. Exceptions are translated by class name
(``TimeoutException``, ``TransportError``) so that forks with the same API work unchanged.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import anyio

from ._base import ClosingStreamMixin, DeadlineExceeded, Response, ResponseTooLarge, TransportError, TransportTimeout
from ._ssl import describe_tls_error

__all__ = ["HttpxTransport", "describe_httpx_error"]

_TRANSPORT_ERRORS = frozenset(
    {
        "TransportError",
        "NetworkError",
        "ProtocolError",
        "ConnectError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "LocalProtocolError",
        "ProxyError",
        "StreamError",
        "DecodingError",
    }
)


def describe_httpx_error(exc: BaseException) -> str:
    """``Type: reason`` for an httpx-style error. httpx often raises one with no text of its own
    (``ConnectError()`` for a refused certificate): the reason then comes from its innermost cause."""
    inner = exc
    for _ in range(8):
        cause = inner.__cause__ or inner.__context__
        if cause is None:
            break
        inner = cause
    if isinstance(inner, ssl.SSLError):
        reason = describe_tls_error(inner)
    else:
        reason = str(exc) or (str(inner) if inner is not exc else "") or type(inner).__name__
    return f"{type(exc).__name__}: {reason}"


def _raise_translated(exc: BaseException, url: str) -> NoReturn:
    if isinstance(exc, TransportError):  # ours (ResponseTooLarge): already typed
        raise exc
    names = {cls.__name__ for cls in type(exc).__mro__}
    where = url.split("?", 1)[0]  # the query may carry a key
    if "TimeoutException" in names:
        raise TransportTimeout(f"{where}: {describe_httpx_error(exc)}") from exc
    if names & _TRANSPORT_ERRORS:
        raise TransportError(f"{where}: {describe_httpx_error(exc)}") from exc
    raise exc


def _headers(raw: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw.multi_items() if hasattr(raw, "multi_items") else raw.items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def _capped(chunks: AsyncIterator[bytes], limit: int | None) -> AsyncIterator[bytes]:
    """``chunks`` (decoded by httpx), raising ResponseTooLarge once they add up to more than ``limit``."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if limit is not None and size > limit:
            raise ResponseTooLarge(limit)
        yield chunk


class _HttpxStreamingResponse(ClosingStreamMixin):
    def __init__(self, response: Any, url: str, limit: int | None) -> None:
        self._response = response
        self._url = url
        self._limit = limit
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = _headers(response.headers)

    async def _iter(self) -> Any:
        try:
            async for chunk in _capped(self._response.aiter_bytes(), self._limit):
                yield chunk
        except Exception as exc:
            await self._response.aclose()
            _raise_translated(exc, self._url)

    def aiter_bytes(self) -> Any:
        return self._iter()

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self._iter()])

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxTransport:
    """A ``Transport`` over an httpx-compatible ``AsyncClient``, which it owns and closes.

    Per-call ``timeout`` is passed to httpx as its (per-operation) timeout; ``None`` keeps the
    client's own. ``deadline`` bounds the whole call; ``max_response_bytes`` is checked as httpx
    hands over the decoded body, chunk by chunk. The client must have been created in the event
    loop that uses it.
    """

    accepts_call_limits = True

    def __init__(self, client: Any) -> None:
        for attr in ("post", "build_request", "send", "aclose"):
            if not callable(getattr(client, attr, None)):
                raise TypeError(
                    f"http_client_factory must return an httpx-compatible AsyncClient (or a Transport); "
                    f"got {type(client).__name__}, which has no {attr}()"
                )
        self.client = client

    def __repr__(self) -> str:
        return f"<HttpxTransport {type(self.client).__module__}.{type(self.client).__name__}>"

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        max_response_bytes: int | None = None,
    ) -> Response:
        if deadline is None:
            return await self._post(url, body, headers, timeout, max_response_bytes)
        with anyio.CancelScope(deadline=deadline):
            return await self._post(url, body, headers, timeout, max_response_bytes)
        raise DeadlineExceeded(f"{url.split('?', 1)[0]}: no complete response before the call's deadline")

    async def _post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None, limit: int | None
    ) -> Response:
        response = await self.post_stream(url, body, headers, timeout=timeout, max_response_bytes=limit)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return Response(response.status, response.headers, content)

    async def post_stream(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        max_response_bytes: int | None = None,
    ) -> _HttpxStreamingResponse:
        kwargs = {} if timeout is None else {"timeout": timeout}
        try:
            request = self.client.build_request("POST", url, content=body, headers=headers, **kwargs)
            response = await self.client.send(request, stream=True)
        except Exception as exc:
            _raise_translated(exc, url)
        return _HttpxStreamingResponse(response, url, max_response_bytes)

    async def aclose(self) -> None:
        await self.client.aclose()

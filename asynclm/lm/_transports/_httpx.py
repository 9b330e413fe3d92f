"""Adapter for any httpx-compatible ``AsyncClient`` (httpx, httpx2, …): proxies, mTLS, custom CAs.

This is what ``LM(http_client_factory=...)`` uses: the factory returns such a client, once per
event loop, and this adapter owns and closes it. Exceptions are translated by class name
(``TimeoutException``, ``TransportError``) so that forks with the same API work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from ._base import ClosingStreamMixin, Response, TransportError, TransportTimeout

__all__ = ["HttpxTransport"]

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


def _raise_translated(exc: BaseException, url: str) -> NoReturn:
    names = {cls.__name__ for cls in type(exc).__mro__}
    where = url.split("?", 1)[0]  # the query may carry a key
    if "TimeoutException" in names:
        raise TransportTimeout(f"{where}: {type(exc).__name__}: {exc}") from exc
    if names & _TRANSPORT_ERRORS:
        raise TransportError(f"{where}: {type(exc).__name__}: {exc}") from exc
    raise exc


def _headers(raw: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw.multi_items() if hasattr(raw, "multi_items") else raw.items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class _HttpxStreamingResponse(ClosingStreamMixin):
    def __init__(self, response: Any, url: str) -> None:
        self._response = response
        self._url = url
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = _headers(response.headers)

    async def _iter(self) -> Any:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except Exception as exc:
            await self._response.aclose()
            _raise_translated(exc, self._url)

    def aiter_bytes(self) -> Any:
        return self._iter()

    async def aread(self) -> bytes:
        try:
            return bytes(await self._response.aread())
        except Exception as exc:
            await self._response.aclose()
            _raise_translated(exc, self._url)

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxTransport:
    """A :class:`Transport` over an httpx-compatible ``AsyncClient``, which it owns and closes.

    Per-call ``timeout`` is passed to httpx as its (per-operation) timeout; ``None`` keeps the
    client's own. The client must have been created in the event loop that uses it.
    """

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
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None = None
    ) -> Response:
        kwargs = {} if timeout is None else {"timeout": timeout}
        try:
            response = await self.client.post(url, content=body, headers=headers, **kwargs)
        except Exception as exc:
            _raise_translated(exc, url)
        return Response(response.status_code, _headers(response.headers), bytes(response.content))

    async def post_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None = None
    ) -> _HttpxStreamingResponse:
        kwargs = {} if timeout is None else {"timeout": timeout}
        try:
            request = self.client.build_request("POST", url, content=body, headers=headers, **kwargs)
            response = await self.client.send(request, stream=True)
        except Exception as exc:
            _raise_translated(exc, url)
        return _HttpxStreamingResponse(response, url)

    async def aclose(self) -> None:
        await self.client.aclose()

"""aiohttp as a transport (asyncio only; ``pip install 'asynclm[fast]'``)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from ._base import ClosingStreamMixin, Response, TransportError, TransportTimeout

__all__ = ["AiohttpTransport"]


def _import_aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:
        raise ImportError("AiohttpTransport needs aiohttp: install it with  pip install 'asynclm[fast]'") from None
    return aiohttp


def _headers(raw: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw.items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class _AiohttpStreamingResponse(ClosingStreamMixin):
    def __init__(self, response: Any, url: str, aiohttp: Any) -> None:
        self._response = response
        self._url = url
        self._aiohttp = aiohttp
        self.status: int = response.status
        self.headers: Mapping[str, str] = _headers(response.headers)

    async def _iter(self) -> Any:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except BaseException as exc:
            self._response.close()
            _translate(exc, self._url, self._aiohttp)
            raise
        self._response.release()

    def aiter_bytes(self) -> Any:
        return self._iter()

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self._iter()])

    async def aclose(self) -> None:
        if not self._response.content.is_eof():
            self._response.close()  # half-read: never back to the pool
        else:
            self._response.release()


def _translate(exc: BaseException, url: str, aiohttp: Any) -> None:
    where = url.split("?", 1)[0]
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        raise TransportTimeout(f"{where}: timed out ({type(exc).__name__})") from exc
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        raise TransportError(f"{where}: {type(exc).__name__}: {exc}") from exc


class AiohttpTransport:
    """A ``Transport`` on an ``aiohttp.ClientSession`` (asyncio only).

    Args mirror ``HTTP11Transport``: ``connect_timeout``/``read_timeout`` are the defaults for
    calls without ``timeout``; ``limit`` caps simultaneous connections (0: no cap — concurrency
    is the LM's to limit).
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = 10.0,
        read_timeout: float | None = None,
        limit: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        aiohttp = _import_aiohttp()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AiohttpTransport runs on asyncio only, and must be created inside the running loop"
            ) from None
        self._aiohttp = aiohttp
        self._default_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=ssl_context if ssl_context is not None else True),
            timeout=self._default_timeout,
        )

    def _timeout(self, timeout: float | None) -> Any:
        if timeout is None:
            return self._default_timeout
        return self._aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None = None
    ) -> Response:
        response = None
        try:
            response = await self._session.post(url, data=body, headers=headers, timeout=self._timeout(timeout))
            data = await response.read()
        except BaseException as exc:
            if response is not None:
                response.close()
            _translate(exc, url, self._aiohttp)
            raise
        response.release()
        return Response(response.status, _headers(response.headers), data)

    async def post_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None = None
    ) -> _AiohttpStreamingResponse:
        try:
            response = await self._session.post(url, data=body, headers=headers, timeout=self._timeout(timeout))
        except BaseException as exc:
            _translate(exc, url, self._aiohttp)
            raise
        return _AiohttpStreamingResponse(response, url, self._aiohttp)

    async def aclose(self) -> None:
        await self._session.close()

"""HTTP transports: the seam between the LM client and HTTP libraries.

* ``HTTP11Transport`` — the default: asynclm's own HTTP/1.1 keep-alive client, one pool on
  asyncio and trio. Its parts: ``_parser`` (responses, parsed by llhttp through ``httptools``;
  sans-I/O), ``_urls`` (URL encoding and header checks; sans-I/O), ``_ssl`` (the one default TLS
  context: the system trust store), ``_connect`` (DNS and TCP connect on either backend), and one
  connection module per backend, ``_asyncio_conn`` and ``_trio_conn``.
* ``AiohttpTransport`` — aiohttp (asyncio only, ``asynclm[fast]``).
* ``HttpxTransport`` — wraps any httpx-compatible ``AsyncClient`` (proxies, mTLS, custom CA).

``get_transport`` returns the running event loop's transport: created inside that loop on
first use, closed when the loop's run ends, never shared with another loop or backend.
"""

from __future__ import annotations

import os
import ssl
import threading
import urllib.request
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from ...runtime import loop_resource
from ...runtime._backends import running_loop_name
from ._aiohttp import AiohttpTransport
from ._base import (
    DeadlineExceeded,
    Response,
    ResponseTooLarge,
    StreamingResponse,
    Transport,
    TransportError,
    TransportTimeout,
)
from ._http11 import DEFAULT_MAX_RESPONSE_BYTES, HTTP11Transport
from ._httpx import HttpxTransport
from ._ssl import default_ssl_context
from ._urls import Target, check_header_value

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AiohttpTransport",
    "DeadlineExceeded",
    "HTTP11Transport",
    "HttpxTransport",
    "Response",
    "ResponseTooLarge",
    "StreamingResponse",
    "Transport",
    "TransportError",
    "TransportTimeout",
    "check_header_value",
    "check_url",
    "default_ssl_context",
    "default_transport",
    "get_transport",
    "ssl_transport_factory",
    "transport_factory",
]

_DEFAULT = "asynclm.lm.transport:default"


def check_url(url: str) -> None:
    """Raise ``ValueError`` (saying what is wrong) if ``url`` cannot be requested."""
    Target(url)


def default_transport(ssl_context: ssl.SSLContext | None = None) -> Transport:
    """The transport asynclm uses when none is configured, for the running loop.

    ``HTTP11Transport``, unless ``ASYNCLM_HTTP_TRANSPORT`` says ``aiohttp`` / ``httpx``, or
    proxy environment variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``) are set: our
    client does not speak to proxies, so then an ``httpx.AsyncClient`` honouring them is used —
    with the same TLS context (``ssl_context``, default ``default_ssl_context``: the
    operating system's trust store), so trust never changes with a proxy.
    """
    choice = os.environ.get("ASYNCLM_HTTP_TRANSPORT", "").strip().lower()
    if choice == "aiohttp":
        if running_loop_name() == "asyncio":
            return AiohttpTransport()
        choice = ""  # aiohttp cannot run on trio: fall back to the default
    if choice == "httpx" or (not choice and _proxies_configured()):
        try:
            import httpx
        except ImportError:
            if choice == "httpx":
                raise ImportError("ASYNCLM_HTTP_TRANSPORT=httpx needs httpx: pip install httpx") from None
            warnings.warn(
                "proxy environment variables are set but httpx is not installed; asynclm's default "
                "HTTP client connects directly. Install httpx to go through the proxy.",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            return HttpxTransport(
                httpx.AsyncClient(
                    trust_env=True,
                    verify=ssl_context or default_ssl_context(),
                    timeout=httpx.Timeout(connect=10.0, read=None, write=None, pool=None),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
                )
            )
    elif choice not in ("", "http11", "default"):
        raise ValueError(f"ASYNCLM_HTTP_TRANSPORT={choice!r} is not one of: http11 (default), aiohttp, httpx")
    return HTTP11Transport(ssl_context=ssl_context)


_ssl_factories: weakref.WeakKeyDictionary[ssl.SSLContext, Callable[[], Transport]] = weakref.WeakKeyDictionary()
_ssl_factories_lock = threading.Lock()


def ssl_transport_factory(ssl_context: ssl.SSLContext) -> Callable[[], Transport]:
    """The transport factory for ``LM(ssl_context=...)``: the default transport with that context.

    One factory per context object, so every LM given the same context shares each loop's
    connection pool (the factory is the per-loop cache key).
    """
    with _ssl_factories_lock:
        factory = _ssl_factories.get(ssl_context)
        if factory is None:
            ref = weakref.ref(ssl_context)

            def factory() -> Transport:
                ctx = ref()
                if ctx is None:  # pragma: no cover - the LM holding it keeps it alive
                    raise RuntimeError("the LM's ssl_context was garbage-collected")
                return default_transport(ctx)

            _ssl_factories[ssl_context] = factory
        return factory


def _proxies_configured() -> bool:
    proxies = urllib.request.getproxies_environment()
    return any(k in proxies for k in ("http", "https", "all"))


def transport_factory(http_client_factory: Callable[[], Any]) -> Callable[[], Transport]:
    """Turn ``LM(http_client_factory=...)`` into a transport factory for ``get_transport``.

    The user's factory may return an httpx-compatible ``AsyncClient`` (wrapped in
    ``HttpxTransport``, which then owns and closes it) or a ``Transport`` itself.
    Make this once per LM and pass the same object every time: it is the per-loop cache key.
    """

    def make() -> Transport:
        client = http_client_factory()
        if callable(getattr(client, "post_stream", None)):
            return client  # type: ignore[no-any-return]
        return HttpxTransport(client)

    name = getattr(http_client_factory, "__qualname__", repr(http_client_factory))
    make.__qualname__ = f"transport_factory({name})"
    return make


async def _aclose(transport: Transport) -> None:
    await transport.aclose()


def get_transport(factory: Callable[[], Transport] | None = None) -> Transport:
    """The running event loop's transport made by ``factory`` (default: ``default_transport``).

    One transport per (loop, factory object): created by ``factory()`` inside the loop on first
    use, closed when that loop's run ends. Call from inside a running asyncio or trio loop.
    """
    if factory is None:
        return loop_resource(_DEFAULT, default_transport, _aclose)
    return loop_resource(("asynclm.lm.transport", factory), factory, _aclose)
